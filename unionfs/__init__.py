"""unionfs: a union filesystem with the semantics of Linux overlayfs, in pure Python.

`Union` is the engine (no FUSE needed); `pyunionfs` (unionfs.cli) mounts it through pyfuse3.
"""
__version__ = "0.1.0"

from .engine import Caller, Union  # noqa: E402

from .api import DaemonDied, MountError, UnionMount, mount  # noqa: E402  (mount from Python)
from .paths import UnionFS  # noqa: E402  (path-based engine API, no FUSE)

__all__ = ["Union", "Caller", "UnionFS", "mount", "UnionMount", "MountError", "DaemonDied", "__version__"]

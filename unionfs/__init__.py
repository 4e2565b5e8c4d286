"""unionfs: a union filesystem with the semantics of Linux overlayfs, in pure Python.

`Union` is the engine (no FUSE needed); `pyunionfs` (unionfs.cli) mounts it through pyfuse3.
"""
__version__ = "0.1.0"

from .engine import Caller, Union  # noqa: E402

__all__ = ["Union", "Caller", "__version__"]

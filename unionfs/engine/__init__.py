"""The union engine: kernel-overlayfs semantics over layer directories; it knows nothing of FUSE.

Everything the mount shows is decided here, on nodes of the merged view; callers (the FUSE request
layer in `unionfs.fuse`, the path API in `unionfs.embed.paths`) only translate.
"""

from .stack import LayerInUse
from .union import Caller, Union

__all__ = ["Caller", "LayerInUse", "Union"]

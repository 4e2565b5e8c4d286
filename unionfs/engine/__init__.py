"""The union engine: kernel-overlayfs semantics over layer directories; it knows nothing of FUSE.

Everything the mount shows is decided here, on nodes of the merged view; callers (the FUSE request
layer in `unionfs.fuse`, the path API in `unionfs.embed.paths`) only translate.

How the parts fit. `UnionEngine` (union.py) is the front: it opens a `Stack` and a `NodeTable`, makes one
object of each part below, and hands every public call to the part whose job it is. The parts share
the stack and the node table, and reach each other as attributes set by `connect(union)` (each part's
`connect` names the parts it uses):

    stack.py        Stack: the layers opened (upper at 0, lowers below), the work dir, the locks, the
                    options that say how layers are read and written, the marker forms (whiteout.Markers)
    nodes.py        NodeTable: the merged view's nodes, their names and st_ino (held by callers)
    resolution.py   Resolution: a name looked up through the layers, its node; a node's path per layer
    listings.py     Listings: merged readdir, names resolved in one pass, the kept listings
    copyup.py       CopyUp: a lower entry brought into the upper (begin, copy_data, commit, abort)
    namespace.py    Namespace: create, mkdir, mknod, symlink, link, unlink, rmdir and their whiteouts
    renames.py      Renames: rename and RENAME_EXCHANGE, directory redirects (redirect_dir=on)
    files.py        Files: file handles, read, write, fsync, directory handles, readlink
    attributes.py   Attributes: stat as shown (ownership records), setattr, xattrs, owners of new entries
    index.py        Index: origin records (st_ino kept across copy-up) and everything index=on changes

Below the parts: layers.py (symlink-proof paths under one layer's root fd), layermounts.py (mount
points inside layers), whiteout.py (the on-disk markers), xattrs.py (private xattr names),
ownership.py (the records' format), idmap.py (uid/gid mappings, used by the FUSE adapter), _sys.py.

`UnionEngine`, `Caller` and `LayerInUse` are loaded on first use (PEP 562): `pyunionfs` imports
`unionfs.engine.idmap` for option parsing on every exec, and that must not pull in the whole engine.
"""

__all__ = ["Caller", "LayerInUse", "UnionEngine"]


def __getattr__(name):
    # Plain imports, not importlib.import_module: importlib (with warnings) would be ~0.7 ms of the
    # daemon's start for three names.
    if name == "UnionEngine":
        from .union import UnionEngine as value
    elif name == "Caller":
        from .namespace import Caller as value
    elif name == "LayerInUse":
        from .stack import LayerInUse as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value

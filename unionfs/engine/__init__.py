"""The union engine: kernel-overlayfs semantics over layer directories; it knows nothing of FUSE.

Everything the mount shows is decided here, on nodes of the merged view; callers (the FUSE request
layer in `unionfs.fuse`, the path API in `unionfs.embed.paths`) only translate.

`Union`, `Caller` and `LayerInUse` are loaded on first use (PEP 562): `pyunionfs` imports
`unionfs.engine.idmap` for option parsing on every exec, and that must not pull in the whole engine.
"""

__all__ = ["Caller", "LayerInUse", "Union"]


def __getattr__(name):
    if name in __all__:
        from . import union

        value = getattr(union, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

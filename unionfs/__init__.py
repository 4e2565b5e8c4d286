"""unionfs: a union filesystem with the semantics of Linux overlayfs, in pure Python.

`UnionEngine` is the engine (no FUSE needed); `pyunionfs` (unionfs.cli) mounts it with its own FUSE session
(unionfs.protocol; pyfuse3 is the optional second backend).

The names below are imported on first use (module __getattr__, PEP 562), not with the package:
`pyunionfs` imports this package for __version__ on every exec (a container engine execs it for every
container), and it never needs unionfs.embed.api (subprocess, tempfile, threading, weakref, pathlib) or
unionfs.embed.paths. Imported eagerly they cost 47 million of the 807 million instructions from exec to the
mount without cached bytecode (they were compiled on every start), 2 of 561 million with it (callgrind).
The engine is imported by unionfs.fuse.daemon, which needs it.
`from unionfs import mount, UnionEngine, ...` and `unionfs.mount` work as before.
"""

__version__ = "0.1.0"

# name -> the submodule defining it
_LAZY = {
    "UnionEngine": "engine",
    "Caller": "engine",
    "mount": "embed.api",
    "UnionMount": "embed.api",
    "MountError": "errors",
    "DaemonDied": "embed.api",
    "UnionFS": "embed.paths",
}

__all__ = ["UnionEngine", "Caller", "UnionFS", "mount", "UnionMount", "MountError", "DaemonDied", "__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    from importlib import import_module

    value = getattr(import_module("." + module, __name__), name)
    globals()[name] = value  # later look-ups find it without coming here
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

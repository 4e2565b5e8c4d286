"""C library functions that Python's os module lacks, called through `_ctypes`, the C core of ctypes.

The project needs a handful: mount(2) and umount2(2) (protocol.mount), statfs(2) for a filesystem's type
(the native backend's passthrough), statx(2) for the mount's device (its readahead), the openat2 system
call, renameat2(2) and fallocate(2) (engine._sys).
Their arguments are ints, byte strings and one writable buffer, which the core converts by itself.

Not the ctypes package: importing it costs ~1.5 ms more than its core (its module body, struct, types), on
the path of a mount program that a container engine execs for every mount, before the mount is made.
The few C types defined here are the package's own definitions (a `_type_` code on `_SimpleCData`).
Loaded only where a call is made: importing the engine or the protocol does not load it.
"""

import _ctypes
import os


class c_int(_ctypes._SimpleCData):
    _type_ = "i"


class c_uint(_ctypes._SimpleCData):
    _type_ = "I"


class c_long(_ctypes._SimpleCData):
    _type_ = "l"


class c_ulong(_ctypes._SimpleCData):  # also size_t: LP64 and ILP32 Linux alike
    _type_ = "L"


class c_int64(_ctypes._SimpleCData):
    _type_ = "q"


class c_char_p(_ctypes._SimpleCData):  # bytes, None (NULL) or a `buffer`
    _type_ = "z"


class _char(_ctypes._SimpleCData):
    _type_ = "c"


c_size_t = c_ulong


class _Function(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO  # errno saved for get_errno()
    _restype_ = c_int


class _Process:
    """The symbols of this process (dlopen(NULL)): the libc it runs on, with no library search."""

    _handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)  # type: ignore[arg-type]  # NULL: this process


get_errno = _ctypes.get_errno


def function(name: str, argtypes=None, restype=c_int):
    """libc's function *name* (None where this libc lacks it). With *argtypes* (a tuple of the types
    above) each call converts and checks its arguments; without, ints pass as C ints and bytes as
    pointers."""
    try:
        fn = _Function((name, _Process))  # type: ignore[arg-type]  # any object with a _handle
    except AttributeError:
        return None
    if argtypes is not None:
        fn.argtypes = argtypes
    fn.restype = restype
    return fn


def buffer(size: int):
    """A zeroed, writable C buffer of *size* bytes, passed as a pointer; `.raw` is its contents."""

    class Buffer(_ctypes.Array):
        _type_ = _char
        _length_ = size

    return Buffer()


def error(path=None) -> OSError:
    """The OSError of the errno the last call here left."""
    err = get_errno()
    return OSError(err, os.strerror(err)) if path is None else OSError(err, os.strerror(err), path)

"""The FUSE side: the request layer over the engine (no binding), the two backends that translate for
it (native_backend.py over unionfs.protocol, the default; pyfuse3_backend.py with its request loop), and
the daemon's lifecycle.

Imports go one way: `unionfs.fuse` uses `unionfs.engine`, never the reverse.
"""

"""The FUSE side: the request layer over the engine (no binding), the pyfuse3 backend with its request
loop, and the daemon's lifecycle.

Imports go one way: `unionfs.fuse` uses `unionfs.engine`, never the reverse.
"""

"""The FUSE side: the request layer over the engine, the request loop and the daemon's lifecycle.

Imports go one way: `unionfs.fuse` uses `unionfs.engine`, never the reverse.
"""

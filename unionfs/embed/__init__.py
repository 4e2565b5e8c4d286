"""Using unionfs from Python: mount a union from a program (`api`), the pytest plugin, and the
FUSE-free path API (`paths.UnionFS`).
"""

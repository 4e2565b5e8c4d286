"""What the command-line tests share (tests/mount/test_cli.py, test_bad_input.py): the command, the
layers they mount, -o strings built from them, and hashes of every path a refused mount must leave
alone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.helpers.layers import DIR
from tests.helpers.mounting import escape_layer_path
from tests.helpers.snapshots import hash_tree

PYTHON_M = [sys.executable, "-m", "unionfs"]

SPEC = {
    "lower0": {"f": "lower f\n", "file": "a file\n", "sub": DIR, "sub/x": "x\n", "wdir": DIR},
    "lower1": {"g": "lower g\n"},
    "upper": {"u": "upper u\n", "usub": DIR},
}


def opts(L, **kw) -> str:
    """The -o string of layers `L`; keyword arguments replace or add options (True: a flag, None: left out)."""
    d = {
        "lowerdir": ":".join(escape_layer_path(l) for l in L.lowers),
        "upperdir": escape_layer_path(L.upper),
        "workdir": escape_layer_path(L.work),
    }
    d.update(kw)
    return ",".join(f"{k}={v}" if v is not True else k for k, v in d.items() if v is not None)


def hash_paths(paths) -> dict:
    """{path: tree hash, (mode, content) or None} for each path: equal before and after = untouched."""
    out = {}
    for p in paths:
        p = Path(p)
        if p.is_dir() and not p.is_symlink():
            out[str(p)] = hash_tree(p)
        elif os.path.lexists(p):
            out[str(p)] = (os.lstat(p).st_mode, p.read_bytes() if p.is_file() else None)
        else:
            out[str(p)] = None
    return out

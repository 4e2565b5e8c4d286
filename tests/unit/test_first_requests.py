"""What a native daemon's first requests import: nothing.

A container engine's first requests reach the daemon right after the mount program returns, answered
before the event loop exists (protocol.session.Session.serve_before_loop). A module imported on the way
is paid in that wait: `threading` (with functools, collections, reprlib, ...) taken by the first lookup
put 5-8 ms on every `podman diff` mount's first answer. The modules heavier than a few hundred us
come later, with the event loop (trio, logging) or never.
"""

import subprocess
import sys

# Runs in a fresh interpreter: imports what the daemon has loaded by its first answer, then makes the
# requests a container engine's first look at a mount makes (and a first write), and names every
# module they loaded.
_SCRIPT = r"""
import os, sys
from unionfs.cli import parse_argv
from unionfs.options import validate
from unionfs.fuse import daemon, native_backend, native_operations
from unionfs.protocol import session
from unionfs import libc  # the mount (protocol/mount.py) was made with it
from unionfs.fuse.requests import Context, SetAttr

d = sys.argv[1]
for name in ("l", "u", "w", "m", "l/dir"):
    os.mkdir(os.path.join(d, name))
for name in ("l/f", "l/dir/g", "l/gone"):
    with open(os.path.join(d, name), "w") as f:
        f.write("x")
opts = validate(parse_argv(["-o", f"lowerdir={d}/l,upperdir={d}/u,workdir={d}/w", f"{d}/m"]))
layers = daemon.Layers(opts)
r = daemon.request_layer(layers.engine(), opts)
before = set(sys.modules)

def done(coro):
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("a request waited")

ctx = Context(0, 0, 1, 0o022)
f = r.lookup_now(1, b"f")
r.getattr_now(f.node_id)
r.listxattr_now(f.node_id)
try:
    r.getxattr_now(f.node_id, b"security.capability")
except OSError:
    pass
opened = r.open_now(f.node_id, os.O_RDONLY)
assert r.read_now(opened.fh, 0, 4096) == b"x"
r.release_now(opened.fh)
sub = r.lookup_now(1, b"dir")
fh = r.opendir_now(sub.node_id)
names = []
r.readdir_now(fh, 0, lambda name, *rest: names.append(name) or True)
r.releasedir_now(fh)
assert b"g" in names, names
made, entry = done(r.create(1, b"new", 0o644, os.O_WRONLY, ctx))
done(r.write(made.fh, 0, b"data"))
r.release_now(made.fh)
done(r.setattr(f.node_id, SetAttr(mode=0o600)))  # a copy-up
done(r.unlink(1, b"gone"))  # a whiteout
done(r.mkdir(1, b"newdir", 0o755, ctx))
loaded = sorted(set(sys.modules) - before)
print(",".join(loaded))
layers.engine().close()
"""


def test_the_first_requests_import_no_module(tmp_path):
    res = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", "the first requests imported: " + res.stdout.strip()
    assert (tmp_path / "u" / "new").read_bytes() == b"data"
    assert (tmp_path / "u" / "f").stat().st_mode & 0o777 == 0o600


# The daemon's own start, in a fresh interpreter: what the mount program had loaded when it forked, then
# what the daemon loads before its first answer (the session, the engine and the request layer, and
# the descriptor limit raised). Standard modules it takes on the way are named.
_DAEMON_START = r"""
import os, sys
from unionfs.cli import parse_argv
from unionfs.options import validate
from unionfs.fuse import daemon, native_backend
from unionfs import libc
from unionfs.protocol import abi, mount

d = sys.argv[1]
for name in ("l", "u", "w", "m"):
    os.mkdir(os.path.join(d, name))
opts = validate(parse_argv(["-o", f"lowerdir={d}/l,upperdir={d}/u,workdir={d}/w", f"{d}/m"]))
layers = daemon.Layers(opts)
before = set(sys.modules)
from unionfs.protocol.session import Session
from unionfs.fuse.native_operations import NativeOperations
daemon._raise_fd_limit()
NativeOperations(daemon.request_layer(layers.engine(), opts))
print(",".join(sorted(m for m in set(sys.modules) - before if not m.startswith("unionfs"))))
layers.engine().close()
"""


def test_the_daemon_loads_no_heavy_standard_module_before_its_first_answer(tmp_path):
    # `types` (for types.coroutine and MappingProxyType) and `resource` (a shared object of its own, for
    # the descriptor limit) were ~1 ms of every mount's wait for its first answer.
    res = subprocess.run(
        [sys.executable, "-c", _DAEMON_START, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().split(",") == ["_operator"]  # built into the interpreter

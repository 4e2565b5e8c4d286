"""Without root, for real: a throwaway unprivileged user that the test creates mounts pyunionfs.

On these machines /dev/fuse is mode 0600, so libfuse cannot mount for an ordinary user as the host stands.
The test does not change the host: it starts a private mount namespace (`unshare -m`), mounts a small
tmpfs there, makes a 0666 character device 10/229 in it and bind-mounts that over /dev/fuse -- visible
only inside the namespace -- and then drops to the user (`setpriv`). Inside, the user mounts through the
setuid-root fusermount3 with `unionfs.mount` and checks what the daemon wrote on disk: a char 0/0 whiteout
(Linux >= 5.8 lets an unprivileged user make one) and `user.overlay.opaque` on a directory made over a
whiteout.

Then, mounted by root (allow_other, default_permissions), the same user must not read, change or delete
through the mount what it could not on a plain filesystem, and what it creates belongs to it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from tests.util import mount_entry, mount_pyunionfs, mounts_under

pytestmark = pytest.mark.timeout(120)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _skip_reason():
    if os.geteuid() != 0:
        return "creating a test user and a mount namespace needs root"
    for tool in ("useradd", "userdel", "setpriv", "unshare", "mount", "fusermount3"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    fm = os.stat(shutil.which("fusermount3"))
    if not (fm.st_mode & stat.S_ISUID and fm.st_uid == 0):
        return "fusermount3 is not setuid root (Debian's fuse3 package installs it so)"
    release = tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit())
    if release < (5, 8):
        return "unprivileged whiteouts need Linux 5.8"
    return None


@pytest.fixture(scope="module")
def user():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"i4u{os.getpid() % 100000}"
    res = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if res.returncode != 0:
        pytest.skip(f"useradd failed: {res.stderr.strip()}")
    try:
        pw = pwd.getpwnam(name)
        yield pw
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=60)


@pytest.fixture
def workspace(user):
    # Under /tmp, not pytest's 0700 base temp: the user must be able to reach it.
    w = tempfile.mkdtemp(prefix="i4-rootless-", dir="/tmp")
    os.chmod(w, 0o755)
    try:
        yield w
    finally:
        for m in reversed(mounts_under(w)):
            subprocess.run(["umount", "-l", m.mountpoint], capture_output=True, timeout=30)
        shutil.rmtree(w, ignore_errors=True)


def _unreachable_ancestor(user, path):
    """(A, C): the topmost ancestor A of `path` the user cannot traverse, and the child C of A on the way
    to `path`; None when the user can reach `path`."""
    parts = os.path.realpath(path).split("/")[1:]
    cur = "/"
    for part in parts[:-1]:
        st = os.stat(cur)
        ok = (
            st.st_mode & 0o001
            or (st.st_uid == user.pw_uid and st.st_mode & 0o100)
            or (st.st_gid == user.pw_gid and st.st_mode & 0o010)
        )
        if not ok:
            return cur, part
        cur = os.path.join(cur, part)
    return None


def _as_user(user, argv, *, namespace: bool = True, fuse_node: bool = True, timeout=90):
    """Run argv as `user` (no capabilities, no supplementary groups).

    With `namespace`, inside a private mount namespace (nothing done there is seen by the host):
    - `fuse_node`: /dev/fuse is covered by a 0666 node 10/229 made on a namespace-private tmpfs;
    - when this Python lives below a directory the user cannot enter (here: /root, mode 0700), that
      directory is covered by a 0755 tmpfs holding a bind mount of just the subtree on the way, so the
      user can start this interpreter (the daemon is `sys.executable -m unionfs`).
    """
    env = dict(os.environ, PYTHONPATH=REPO, HOME="/nonexistent")
    drop = [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--inh-caps=-all",
    ]  # (the bounding set stays: setuid fusermount3 needs CAP_SYS_ADMIN)
    if not namespace:
        return subprocess.run(
            [*drop, *argv], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        )
    script = ['set -e', 'd=$(mktemp -d /tmp/i4-ns.XXXXXX)', 'mount -t tmpfs -o size=16k,mode=755 i4-ns "$d"']
    if fuse_node:
        script += ['mknod "$d/fuse" c 10 229', 'chmod 666 "$d/fuse"', 'mount --bind "$d/fuse" /dev/fuse']
    fixes = {
        _unreachable_ancestor(user, p)
        for p in (sys.executable, os.path.realpath(sys.executable), sys.base_prefix, sys.prefix, REPO)
    }
    for i, fix in enumerate(sorted(f for f in fixes if f)):
        a, c = fix
        script += [
            f'mkdir "$d/keep{i}"',
            f'mount --bind "{a}" "$d/keep{i}"',
            f'mount -t tmpfs -o size=16k,mode=755 i4-ns "{a}"',
            f'mkdir "{a}/{c}"',
            f'mount --bind "$d/keep{i}/{c}" "{a}/{c}"',
        ]
    script += ['umount -l "$d"', 'rmdir "$d"', 'exec "$@"']
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", "; ".join(script), "sh", *drop, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def _chown_tree(path, uid, gid):
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for n in dirs + files:
            os.chown(os.path.join(root, n), uid, gid, follow_symlinks=False)


INNER_ROOTLESS = r'''
import json, os, stat, sys
import unionfs
from unionfs.engine.layermounts import read_mountinfo
w = sys.argv[1]
low, up, work, mnt = (os.path.join(w, n) for n in ("lower", "upper", "work", "mnt"))
res = {"uid": os.getuid(), "dev_fuse": oct(os.stat("/dev/fuse").st_mode)}

def lst(p):
    st = os.lstat(p)
    return {"mode": oct(st.st_mode), "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)],
            "uid": st.st_uid, "xattrs": {n: os.getxattr(p, n, follow_symlinks=False).decode()
                                         for n in os.listxattr(p, follow_symlinks=False)}}
try:
    with unionfs.mount([low], up, work, mountpoint=mnt, timeout=30) as m:
        res["fstype"] = [e.fstype.decode() for e in read_mountinfo() if e.mountpoint == os.fsencode(mnt)]
        res["listing"] = sorted(os.listdir(mnt))
        # big reads, spliced by a daemon without privileges (pipes of its own user's size)
        with open(os.path.join(low, "big"), "rb") as f:
            big = f.read()
        with open(os.path.join(mnt, "big"), "rb") as f:
            res["big read"] = f.read() == big and len(big)
        os.unlink(os.path.join(mnt, "big"))
        os.unlink(os.path.join(mnt, "f2"))
        res["f2 whiteout"] = lst(os.path.join(up, "f2"))
        os.mkdir(os.path.join(mnt, "f2"))
        res["f2 dir"] = lst(os.path.join(up, "f2"))
        os.unlink(os.path.join(mnt, "d", "x"))
        os.rmdir(os.path.join(mnt, "d"))
        res["d whiteout"] = lst(os.path.join(up, "d"))
        os.mkdir(os.path.join(mnt, "d"))
        res["d opaque"] = lst(os.path.join(up, "d"))
        res["d listing"] = os.listdir(os.path.join(mnt, "d"))
        with open(os.path.join(mnt, "f1"), "a") as f:
            f.write("+user")
        res["f1"] = open(os.path.join(up, "f1")).read()
        os.rename(os.path.join(mnt, "f3"), os.path.join(mnt, "f3b"))
        res["f3 whiteout"] = lst(os.path.join(up, "f3"))
        with open(os.path.join(mnt, "new"), "w") as f:
            f.write("n")
        res["new"] = lst(os.path.join(up, "new"))
        res["listing after"] = sorted(os.listdir(mnt))
    res["log"] = m.log_text()
except unionfs.MountError as exc:
    res["mount_error"] = exc.message
    res["log"] = exc.log
print(json.dumps(res))
'''


def test_rootless_mount_by_unprivileged_user(user, workspace):
    w = workspace
    for d in ("lower", "upper", "work", "mnt", "lower/d"):
        os.mkdir(os.path.join(w, d))
    for f in ("f1", "f2", "f3", "d/x"):
        with open(os.path.join(w, "lower", f), "w") as fh:
            fh.write(f"lower {f}")
    with open(os.path.join(w, "lower", "big"), "wb") as fh:
        fh.write(os.urandom(3 * 1024 * 1024 + 12345))
    with open(os.path.join(w, "inner.py"), "w") as fh:
        fh.write(INNER_ROOTLESS)
    _chown_tree(w, user.pw_uid, user.pw_gid)
    os.chown(w, 0, 0)

    probe = _as_user(
        user,
        [
            sys.executable,
            "-c",
            "import subprocess, sys; import unionfs, pyfuse3; "
            "subprocess.run([sys.executable, '-c', 'import pyfuse3'], check=True)",
        ],
        fuse_node=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"user {user.pw_name} cannot run {sys.executable} with unionfs: {probe.stderr.strip()[-300:]}")
    # Without the 0666 node the host's /dev/fuse (0600 here) refuses the user: the daemon's one line says so.
    plain = _as_user(user, [sys.executable, os.path.join(w, "inner.py"), w], fuse_node=False)
    assert plain.returncode == 0, plain.stderr
    plain_res = json.loads(plain.stdout)
    if stat.S_IMODE(os.stat("/dev/fuse").st_mode) & 0o006 == 0:
        assert "mount_error" in plain_res, plain_res
        assert "failed to open /dev/fuse" in plain_res["log"], plain_res
    assert not mounts_under(w)

    run = _as_user(user, [sys.executable, os.path.join(w, "inner.py"), w])
    assert run.returncode == 0, f"stdout: {run.stdout}\nstderr: {run.stderr}"
    res = json.loads(run.stdout)
    assert "mount_error" not in res, f"the daemon refused as {user.pw_name}: {res['mount_error']}\n{res['log']}"
    assert res["uid"] == user.pw_uid and res["dev_fuse"] == "0o20666"
    assert res["fstype"] == ["fuse.pyunionfs"]
    assert res["listing"] == ["big", "d", "f1", "f2", "f3"]
    assert res["big read"] == 3 * 1024 * 1024 + 12345
    for key in ("f2 whiteout", "d whiteout", "f3 whiteout"):
        e = res[key]
        assert stat.S_ISCHR(int(e["mode"], 8)) and e["rdev"] == [0, 0], (key, e)
        assert e["uid"] == user.pw_uid
    for key in ("f2 dir", "d opaque"):
        assert res[key]["xattrs"] == {"user.overlay.opaque": "y"}, (key, res[key])
    assert res["d listing"] == []
    assert res["f1"] == "lower f1+user"
    assert res["new"]["uid"] == user.pw_uid
    assert res["listing after"] == ["d", "f1", "f2", "f3b", "new"]
    assert " ERROR " not in res["log"] and "Traceback" not in res["log"], res["log"]
    # nothing is mounted on the host, the host's /dev/fuse is as it was
    assert not mounts_under(w)
    assert stat.S_IMODE(os.stat("/dev/fuse").st_mode) == stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    # the kernel's userxattr format: what the user wrote is in the upper
    assert os.getxattr(os.path.join(w, "upper", "d"), "user.overlay.opaque") == b"y"


def test_refusal_line_names_dev_fuse(user, workspace):
    """As an ordinary user with the host's 0600 /dev/fuse, MountError.message (the daemon's one line)
    should say why: libfuse opens /dev/fuse itself and gives up (EACCES) before trying fusermount3."""
    if stat.S_IMODE(os.stat("/dev/fuse").st_mode) & 0o006:
        pytest.skip("/dev/fuse is usable by everybody here")
    w = workspace
    for d in ("lower", "upper", "work", "mnt"):
        os.mkdir(os.path.join(w, d))
    with open(os.path.join(w, "inner.py"), "w") as fh:
        fh.write(INNER_ROOTLESS)
    _chown_tree(w, user.pw_uid, user.pw_gid)
    os.chown(w, 0, 0)
    run = _as_user(user, [sys.executable, os.path.join(w, "inner.py"), w], fuse_node=False)
    res = json.loads(run.stdout)
    assert "/dev/fuse" in res["mount_error"], res


INNER_ALLOW_OTHER = r'''
import errno, json, os, sys
mnt = sys.argv[1]
res = {}
def t(name, fn, *a, **kw):
    try:
        out = fn(*a, **kw)
        res[name] = "ok"
        return out
    except OSError as e:
        res[name] = errno.errorcode[e.errno]
t("read secret", lambda: open(os.path.join(mnt, "secret")).read())
t("chmod secret", os.chmod, os.path.join(mnt, "secret"), 0o644)
t("unlink secret", os.unlink, os.path.join(mnt, "secret"))
t("create in rootdir", lambda: open(os.path.join(mnt, "rootdir", "x"), "w").close())
t("mkdir in rootdir", os.mkdir, os.path.join(mnt, "rootdir", "d"))
t("write rootdir/file", lambda: open(os.path.join(mnt, "rootdir", "file"), "a").close())
t("unlink rootdir/file", os.unlink, os.path.join(mnt, "rootdir", "file"))
t("rename rootdir/file", os.rename, os.path.join(mnt, "rootdir", "file"), os.path.join(mnt, "sticky", "stolen"))
t("unlink others in sticky", os.unlink, os.path.join(mnt, "sticky", "others"))
t("rename others in sticky", os.rename, os.path.join(mnt, "sticky", "others"), os.path.join(mnt, "sticky", "o2"))
t("read others", lambda: open(os.path.join(mnt, "sticky", "others")).read())
t("create in sticky", lambda: open(os.path.join(mnt, "sticky", "mine"), "w").write("m"))
t("mkdir in sticky", os.mkdir, os.path.join(mnt, "sticky", "mydir"))
st = os.stat(os.path.join(mnt, "sticky", "mine"))
res["mine owner"] = [st.st_uid, st.st_gid]
st = os.stat(os.path.join(mnt, "sticky", "mydir"))
res["mydir owner"] = [st.st_uid, st.st_gid]
t("unlink mine", os.unlink, os.path.join(mnt, "sticky", "mine"))
print(json.dumps(res))
'''


def test_allow_other_permissions(user, workspace):
    w = workspace
    low, up, work, mnt = (os.path.join(w, n) for n in ("lower", "upper", "work", "mnt"))
    for d in (low, up, work, mnt):
        os.mkdir(d)
    with open(os.path.join(low, "secret"), "w") as f:
        f.write("s3cret")
    os.chmod(os.path.join(low, "secret"), 0o600)
    os.mkdir(os.path.join(low, "rootdir"))
    with open(os.path.join(low, "rootdir", "file"), "w") as f:
        f.write("root's")
    os.mkdir(os.path.join(low, "sticky"))
    os.chmod(os.path.join(low, "sticky"), 0o1777)
    with open(os.path.join(low, "sticky", "others"), "w") as f:
        f.write("another user's")
    os.chmod(os.path.join(low, "sticky", "others"), 0o644)
    os.chown(os.path.join(low, "sticky", "others"), 65534, 65534)  # nobody's
    with open(os.path.join(w, "inner.py"), "w") as fh:
        fh.write(INNER_ALLOW_OTHER)
    before = {
        p: (os.lstat(p).st_mode, open(p, "rb").read())
        for p in (
            os.path.join(low, "secret"),
            os.path.join(low, "rootdir", "file"),
            os.path.join(low, "sticky", "others"),
        )
    }

    with mount_pyunionfs(mnt, [low], up, work) as d:
        assert "allow_other" in mount_entry(mnt).options.split(",")
        run = _as_user(user, [sys.executable, os.path.join(w, "inner.py"), mnt], namespace=False)
        assert run.returncode == 0, run.stderr
        res = json.loads(run.stdout)
    assert res == {
        "read secret": "EACCES",
        "chmod secret": "EPERM",
        "unlink secret": "EACCES",
        "create in rootdir": "EACCES",
        "mkdir in rootdir": "EACCES",
        "write rootdir/file": "EACCES",
        "unlink rootdir/file": "EACCES",
        "rename rootdir/file": "EACCES",
        "unlink others in sticky": "EPERM",
        "rename others in sticky": "EPERM",
        "read others": "ok",
        "create in sticky": "ok",
        "mkdir in sticky": "ok",
        "mine owner": [user.pw_uid, user.pw_gid],
        "mydir owner": [user.pw_uid, user.pw_gid],
        "unlink mine": "ok",
    }, res
    for p, (mode, data) in before.items():
        assert os.lstat(p).st_mode == mode and open(p, "rb").read() == data
    # what the user made is the user's on disk too; nothing of root's was copied up or whited out
    st = os.stat(os.path.join(up, "sticky", "mydir"))
    assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid)
    assert stat.S_IMODE(os.stat(os.path.join(up, "sticky")).st_mode) == 0o1777
    assert sorted(os.listdir(up)) == ["sticky"] and sorted(os.listdir(os.path.join(up, "sticky"))) == ["mydir"]


INNER_USERNS = r"""
import errno, json, os, subprocess, sys
import unionfs
w, who, options = sys.argv[1], sys.argv[2], sys.argv[3].split(",") if sys.argv[3] else []
low, up, work, mnt = (os.path.join(w, who, n) for n in ("lower", "upper", "work", "mnt"))
res = {"uid_map": open("/proc/self/uid_map").read().split(), "euid": os.geteuid()}

def owner(p):
    st = os.lstat(p)
    return [st.st_uid, st.st_gid]

def t(name, fn, *a):
    try:
        fn(*a)
        res[name] = "ok"
    except OSError as e:
        res[name] = errno.errorcode[e.errno]

def changes():
    res["owners"] = {n: owner(os.path.join(mnt, n)) for n in ("mine", "roots", "d", "shared")}
    t("append mine", lambda: open(os.path.join(mnt, "mine"), "a").write("+"))
    t("append roots", lambda: open(os.path.join(mnt, "roots"), "a").write("+"))
    t("create in shared", lambda: open(os.path.join(mnt, "shared", "x"), "w").write("x"))
    t("chown mine", os.chown, os.path.join(mnt, "mine"), 0, 0)
    os.unlink(os.path.join(mnt, "d", "x"))
    os.rmdir(os.path.join(mnt, "d"))
    os.mkdir(os.path.join(mnt, "d"))
    with open(os.path.join(mnt, "new"), "w") as f:
        f.write("n")
    res["owners after"] = {n: owner(os.path.join(mnt, n)) for n in ("mine", "roots", "d", "new", "shared")}
    res["listing"] = sorted(os.listdir(mnt))

res["log"] = ""
if who == "kernel":
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"userxattr,lowerdir={low},upperdir={up},workdir={work}", mnt], check=True)
    try:
        changes()
    finally:
        subprocess.run(["umount", mnt], check=True)
else:
    try:
        with unionfs.mount([low], up, work, mountpoint=mnt, options=options, timeout=30) as m:
            changes()
        res["log"] = m.log_text()
    except unionfs.MountError as exc:
        res["mount_error"] = exc.message
        res["log"] = exc.log
res["upper"] = {n: {"owner": owner(os.path.join(up, n)),
                    "xattrs": sorted(x for x in os.listxattr(os.path.join(up, n), follow_symlinks=False)
                                     if x.startswith("user.overlay.opaque"))}
                for n in sorted(os.listdir(up))}
print(json.dumps(res))
"""


@pytest.mark.parametrize("options", ["", "squash_to_root"])
def test_inside_a_user_namespace(user, workspace, options):
    """What rootless container tools do: the user makes a user namespace (`unshare -r`: the user is uid 0
    inside, every other id is unmapped) and mounts there as its root, directly, without fusermount3.
    trusted.* xattrs are the initial namespace's root's only, so markers are user.overlay.*; whiteouts
    are char 0/0 (allowed unprivileged since Linux 5.8). The kernel overlay mounted in the same namespace
    (with userxattr) is the reference. Entries of ids the namespace does not map show as 65534 and cannot
    be changed. With squash_to_root (what rootless tools pass to ignore chown errors) everything shows as
    the namespace's root, and copies of such entries are the namespace root's."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not found")
    w = workspace
    with open(os.path.join(w, "inner.py"), "w") as fh:
        fh.write(INNER_USERNS)
    for who in ("kernel", "pyunionfs"):
        for d in ("lower", "upper", "work", "mnt", "lower/d", "lower/shared"):
            os.makedirs(os.path.join(w, who, d))
        for f in ("mine", "roots", "d/x"):
            with open(os.path.join(w, who, "lower", f), "w") as fh:
                fh.write(f)
        _chown_tree(os.path.join(w, who), user.pw_uid, user.pw_gid)
        os.chown(os.path.join(w, who, "lower", "roots"), 0, 0)  # unmapped inside the namespace
        os.chown(os.path.join(w, who, "lower", "shared"), 0, 0)
        os.chmod(os.path.join(w, who, "lower", "shared"), 0o1777)
    probe = _as_user(user, ["unshare", "-r", "-m", "true"])
    if probe.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are not available: {probe.stderr.strip()}")
    results = {}
    for who in ("kernel", "pyunionfs"):
        run = _as_user(user, ["unshare", "-r", "-m", sys.executable, os.path.join(w, "inner.py"), w, who, options])
        if who == "kernel" and run.returncode != 0 and "mount" in run.stderr:
            pytest.skip(f"the kernel cannot mount overlayfs in a user namespace here: {run.stderr[-300:]}")
        assert run.returncode == 0, f"{who}\nstdout: {run.stdout}\nstderr: {run.stderr}"
        results[who] = res = json.loads(run.stdout)
        assert "mount_error" not in res, f"{res['mount_error']}\n{res['log']}"
        assert res["uid_map"] == ["0", str(user.pw_uid), "1"] and res["euid"] == 0
        assert " ERROR " not in res["log"] and "Traceback" not in res["log"], res["log"]
    assert not mounts_under(w)
    kernel, ours = results["kernel"], results["pyunionfs"]
    nobody = [65534, 65534]  # the overflow ids: how unmapped ids show inside the namespace
    assert kernel["owners"] == {"mine": [0, 0], "roots": nobody, "d": [0, 0], "shared": nobody}
    assert (kernel["append roots"], kernel["create in shared"]) == ("EACCES", "EOVERFLOW")
    if not options:
        for key in ("owners", "owners after", "append mine", "append roots", "chown mine", "listing", "upper"):
            assert ours[key] == kernel[key], (key, ours[key], kernel[key])
        # FUSE shows an id the namespace cannot map as an invalid one, and the VFS refuses any write to
        # such an inode (EACCES) before the daemon hears of it; the kernel overlay gets as far as the
        # copy-up, which fails (EOVERFLOW). fuse-overlayfs is in the same place as pyunionfs.
        assert ours["create in shared"] == "EACCES"
    else:
        assert all(o == [0, 0] for o in ours["owners"].values())
        assert all(o == [0, 0] for o in ours["owners after"].values())
        assert (ours["append roots"], ours["create in shared"], ours["chown mine"]) == ("ok", "ok", "ok")
        assert ours["upper"]["roots"]["owner"] == [0, 0] and ours["upper"]["shared"]["owner"] == [0, 0]
    assert ours["upper"]["d"]["xattrs"] == ["user.overlay.opaque"]
    # seen from the host: the user's own ids, the kernel's userxattr format, an opaque empty directory
    up = os.path.join(w, "pyunionfs", "upper")
    assert os.stat(os.path.join(up, "new")).st_uid == user.pw_uid
    assert os.getxattr(os.path.join(up, "d"), "user.overlay.opaque") == b"y"
    assert os.listdir(os.path.join(up, "d")) == []

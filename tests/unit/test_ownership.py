"""Ownership records (fuse-overlayfs's override_stat xattrs): read from any layer that uses them, written
to the upper with xattr_permissions=1|2, never through the mount."""

import errno
import os
import stat

import pytest

from tests.unit import test_engine
from tests.unit.test_engine import by_path, write
from unionfs.engine import Caller, ownership

stack = test_engine.stack
C = b"user.containers.override_stat"


@pytest.mark.parametrize(
    "value,expected",
    [
        (b"0:0:755", (0, 0, 0o755, None, None)),
        (b"1000:1001:100644", (1000, 1001, 0o644, None, None)),  # fuse-overlayfs may store the type bits
        (b"5:6:4755:dir", (5, 6, 0o4755, stat.S_IFDIR, None)),
        (b"0:0:666:char-1-3", (0, 0, 0o666, stat.S_IFCHR, os.makedev(1, 3))),
        (b"1:2", None),
        (b"a:b:755", None),
        (b"1:2:9", None),
        (b"1:2:755:weird", None),
        (b"-1:0:755", None),
        (b"0:0:644:block-x", None),
    ],
)
def test_parse(value, expected):
    assert ownership.parse(value) == expected


def test_records_in_a_lower_show_as_owner_and_mode(stack):
    d = stack.dirs
    write(f"{d['lower1']}/etc/shadow", b"s", mode=0o644)
    os.setxattr(d["lower1"], C, b"0:0:755")
    os.setxattr(f"{d['lower1']}/etc/shadow", C, b"0:42:640")
    os.setxattr(f"{d['lower1']}/etc", C, b"12:34:700")
    write(f"{d['lower0']}/plain", b"p", mode=0o600)
    os.setxattr(f"{d['lower0']}/plain", C, b"7:7:777")  # lower0 has no record on its root: not one
    u = stack()
    node, st = u.lookup(by_path(u, b"etc"), b"shadow")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), stat.S_ISREG(st.st_mode)) == (0, 42, 0o640, True)
    etc = u.getattr(by_path(u, b"etc"))
    assert (etc.st_uid, etc.st_gid, stat.S_IMODE(etc.st_mode), stat.S_ISDIR(etc.st_mode)) == (12, 34, 0o700, True)
    plain = u.getattr(by_path(u, b"plain"))
    assert (plain.st_uid, stat.S_IMODE(plain.st_mode)) == (os.geteuid(), 0o600)
    scanned = {e[0]: e[2] for e in u.scan(by_path(u, b"etc"))}
    assert (scanned[b"shadow"].st_gid, stat.S_IMODE(scanned[b"shadow"].st_mode)) == (42, 0o640)
    # the records are the daemon's: not listed, not readable, not settable
    assert C not in u.listxattr(node)
    with pytest.raises(OSError) as exc:
        u.getxattr(node, C)
    assert exc.value.errno == errno.ENODATA
    with pytest.raises(OSError) as exc:
        u.setxattr(node, C, b"0:0:777")
    assert exc.value.errno == errno.EPERM
    # copy-up without records in the upper: the copy gets the owner and mode the user saw
    fh = u.open(node, os.O_WRONLY)
    u.release(fh)
    up = os.stat(f"{d['upper']}/etc/shadow")
    if os.geteuid() == 0:
        assert (up.st_uid, up.st_gid) == (0, 42)
    assert stat.S_IMODE(up.st_mode) == 0o640 and C not in [n.encode() for n in os.listxattr(f"{d['upper']}/etc/shadow")]


@pytest.mark.parametrize("level,name", [(2, C), (1, ownership.PRIVILEGED)])
def test_xattr_permissions_writes_records_not_owners(stack, level, name):
    if name == ownership.PRIVILEGED and os.geteuid() != 0:
        pytest.skip("security.* xattrs need root")
    d = stack.dirs
    write(f"{d['lower0']}/f", b"f", mode=0o644)
    u = stack(xattr_permissions=level)
    assert os.getxattr(d["upper"], name).startswith(b"%d:%d:" % (os.geteuid(), os.getegid()))
    caller = Caller(1234, 5678)
    node, fh, st = u.create(u.root, b"new", 0o600, os.O_WRONLY, caller)
    u.release(fh)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o600)
    real = os.stat(f"{d['upper']}/new")
    assert real.st_uid == os.geteuid() and stat.S_IMODE(real.st_mode) == 0o755  # 0600 | 0755
    assert os.getxattr(f"{d['upper']}/new", name) == b"1234:5678:600"
    dnode, dst = u.mkdir(u.root, b"dir", 0o2750, caller)
    assert os.getxattr(f"{d['upper']}/dir", name) == b"1234:5678:2750"
    # the real root's mount takes no setgid bit from a user.* record (see the next test)
    sgid = 0 if u.strict_records and name == C else 0o2000
    assert (dst.st_uid, dst.st_gid, stat.S_IMODE(dst.st_mode)) == (1234, 5678, 0o750 | sgid)
    # chown and chmod change the record only; a copy-up records what the lower showed
    f = by_path(u, b"f")
    st = u.setattr(f, uid=99)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (99, os.getegid(), 0o644)
    st = u.setattr(f, mode=0o400)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (99, 0o400)
    assert os.getxattr(f"{d['upper']}/f", name) == b"99:%d:400" % os.getegid()
    assert os.stat(f"{d['upper']}/f").st_uid == os.geteuid()
    u.close()
    # remounted without the option the records still show (the upper's root says it uses them)
    again = stack()
    st = again.getattr(by_path(again, b"new"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o600)


def test_fuse_overlayfs_opaque_marker_is_read_and_cannot_be_forged(stack):
    # fuse-overlayfs marks opaque directories with user.fuseoverlayfs.opaque where trusted.* is refused
    d = stack.dirs
    write(f"{d['lower1']}/op/hidden", b"h")
    write(f"{d['lower0']}/op/shown", b"s")
    os.setxattr(f"{d['lower0']}/op", "user.fuseoverlayfs.opaque", b"y")
    write(f"{d['lower1']}/open/below", b"b")
    u = stack()
    assert u.listdir(by_path(u, b"op")) == [b"shown"]
    opened = by_path(u, b"open")
    u.setxattr(opened, b"user.fuseoverlayfs.opaque", b"y")  # stored escaped: no marker
    assert os.getxattr(f"{d['upper']}/open", "user.fuseoverlayfs.overlay.opaque") == b"y"
    assert u.getxattr(opened, b"user.fuseoverlayfs.opaque") == b"y"
    u.close()
    again = stack()
    assert again.listdir(by_path(again, b"open")) == [b"below"]


def test_user_records_grant_no_setuid_and_no_devices_to_the_real_root(stack):
    """Anyone may set user.* xattrs on their own files: a forged record must not turn a user's file into
    a setuid-root program or a device node on a mount the real root made (suid, dev)."""
    d = stack.dirs
    write(f"{d['lower0']}/evil", b"#!/bin/sh\n", mode=0o755)
    os.setxattr(d["lower0"], C, b"0:0:755")
    os.setxattr(f"{d['lower0']}/evil", C, b"0:0:4755")
    write(f"{d['lower0']}/mem", b"", mode=0o644)
    os.setxattr(f"{d['lower0']}/mem", C, b"0:0:666:char-1-1")
    u = stack()
    evil, mem = u.getattr(by_path(u, b"evil")), u.getattr(by_path(u, b"mem"))
    if u.strict_records:
        assert (evil.st_uid, stat.S_IMODE(evil.st_mode)) == (0, 0o755)
        assert stat.S_ISREG(mem.st_mode) and mem.st_rdev == 0
    else:  # an unprivileged daemon's mount is nosuid,nodev: the record is taken whole
        assert stat.S_IMODE(evil.st_mode) == 0o4755
        assert stat.S_ISCHR(mem.st_mode) and mem.st_rdev == os.makedev(1, 1)

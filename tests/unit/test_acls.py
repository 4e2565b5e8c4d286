"""engine/acls.py against the filesystem it stands in for: an entry made in a directory with a default
ACL on the test's own filesystem gets what `acls.new_entry` predicts (mode, access ACL, default ACL),
for random ACLs, modes and umasks; and the engine applies it to entries it makes through the work dir."""

import os
import stat
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unionfs.engine import acls

_UNDEF = 0xFFFFFFFF


def _acl(base, users, groups, mask) -> bytes:
    """A default ACL in the kernel's order: owner, named users, owning group, named groups, mask, other."""
    owner, group, other = base
    entries = [(0x01, owner, _UNDEF)]
    entries += [(0x02, perm, uid) for uid, perm in sorted(users.items())]
    entries.append((0x04, group, _UNDEF))
    entries += [(0x08, perm, gid) for gid, perm in sorted(groups.items())]
    if users or groups or mask is not None:
        entries.append((0x10, 7 if mask is None else mask, _UNDEF))
    entries.append((0x20, other, _UNDEF))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


perms = st.integers(0, 7)
acl_values = st.builds(
    _acl,
    st.tuples(perms, perms, perms),
    st.dictionaries(st.integers(1000, 1010), perms, max_size=2),
    st.dictionaries(st.integers(2000, 2010), perms, max_size=2),
    st.one_of(st.none(), perms),
)


def _supports_acls(path) -> bool:
    try:
        os.setxattr(path, acls.DEFAULT, _acl((7, 5, 5), {}, {}, None))
        os.removexattr(path, acls.DEFAULT)
        return True
    except OSError:
        return False


def _xattr(path, name):
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


@pytest.fixture(scope="module")
def acl_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("acls")
    if not _supports_acls(d):
        pytest.skip("the test's filesystem holds no POSIX ACLs")
    return d


@settings(max_examples=150, deadline=None)
@given(default=acl_values, mode=st.integers(0, 0o7777), umask=st.integers(0, 0o777), is_dir=st.booleans())
def test_new_entry_is_what_the_filesystem_makes(acl_dir, default, mode, umask, is_dir):
    parent = acl_dir / "parent"
    child = parent / "child"
    parent.mkdir()
    try:
        os.setxattr(parent, acls.DEFAULT, default)
        old = os.umask(umask)
        try:
            if is_dir:
                os.mkdir(child, mode)
            else:
                os.close(os.open(child, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
        finally:
            os.umask(old)
        made = (stat.S_IMODE(os.lstat(child).st_mode), _xattr(child, acls.ACCESS), _xattr(child, acls.DEFAULT))
        want_mode, access, inherited = acls.new_entry(default, mode, umask, is_dir)
        # mkdir(2) keeps only the permission bits and the sticky bit of the mode asked for
        kept = 0o1777 if is_dir else 0o7777
        assert made == (stat.S_IMODE(want_mode) & kept, access, inherited)
    finally:
        if child.is_dir():
            child.rmdir()
        elif child.exists():
            child.unlink()
        parent.rmdir()


def test_no_default_acl_means_the_umask():
    assert acls.new_entry(None, 0o40777, 0o022, True) == (0o40755, None, None)
    assert acls.new_entry(None, 0o104777, 0o077, False) == (0o104700, None, None)


def test_read_default_of_a_directory_without_one(tmp_path):
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        assert acls.read_default(fd) is None
    finally:
        os.close(fd)

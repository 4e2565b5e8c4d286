"""The xattrs a file shows after the changes that rewrite them behind the daemon's back, as on the kernel.

The daemon keeps a file's xattr names once it has listed them (every xattr change goes through it), so
it must notice the changes the upper filesystem makes by itself: a new file inherits an access ACL from
its directory's default ACL, chmod rewrites that ACL's mask, chown and truncate drop a file capability,
and times change nothing. The same steps run on a kernel overlay and on pyunionfs; the names and values
read through the mount after each step must agree.
"""

import os

import pytest

from tests.helpers.mounting import on_kernel_and_pyunionfs
from tests.helpers.xattrvalues import ACL, CAP, CAP_NET_RAW
from tests.util import FUSE_SKIP_REASON

pytestmark = [
    pytest.mark.mount,
    pytest.mark.kernel,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (capabilities, chown)"),
]

ACL_DEFAULT = "system.posix_acl_default"


def _layers(root):
    lower, upper, work = root / "lower", root / "upper", root / "work"
    for d in (lower / "acl", upper, work, root / "mnt"):
        d.mkdir(parents=True)
    os.setxattr(lower / "acl", ACL_DEFAULT, ACL)
    (lower / "capped").write_bytes(b"x" * 100)
    os.setxattr(lower / "capped", CAP, CAP_NET_RAW)
    return lower, upper, work


def _xattrs(path) -> dict:
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(os.listxattr(path, follow_symlinks=False))}


def _steps(mnt, upper):
    out = []
    new = mnt / "acl" / "new"
    # It inherits an access ACL from the default one. (umask 0: on the pyfuse3 backend the FUSE module
    # applies the umask before the daemon hears of the create; test_default_acls.py is about that.)
    old_umask = os.umask(0)
    try:
        fd = os.open(new, os.O_CREAT | os.O_WRONLY, 0o664)
    finally:
        os.umask(old_umask)
    os.write(fd, b"data")
    os.close(fd)
    out.append(("created", _xattrs(new)))
    os.utime(new, ns=(10**18, 10**18))
    out.append(("after utime", _xattrs(new)))
    os.chmod(new, 0o640)  # rewrites the access ACL's mask
    out.append(("after chmod", _xattrs(new)))
    os.setxattr(new, CAP, CAP_NET_RAW)
    out.append(("capability set", _xattrs(new)))
    os.chown(new, 1, 1)  # drops it
    out.append(("after chown", _xattrs(new)))
    capped = mnt / "capped"
    out.append(("lower file", _xattrs(capped)))
    os.utime(capped, ns=(10**18, 10**18))  # copied up, capability kept
    out.append(("after utime (copied up)", _xattrs(capped)))
    os.truncate(capped, 10)  # drops it
    out.append(("after truncate", _xattrs(capped)))
    return out


def test_xattrs_after_changes_as_on_the_kernel(tmp_path):
    runs = on_kernel_and_pyunionfs(tmp_path, _layers, _steps)
    for kernel, ours in zip(runs["kernel"][0], runs["pyunionfs"][0], strict=True):
        assert ours == kernel

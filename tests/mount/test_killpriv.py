"""Set-user-ID, set-group-ID and file capabilities cleared by writes, truncation, chown and ACLs, as on
the kernel overlay.

pyunionfs negotiates HANDLE_KILLPRIV_V2 (the kernel then stops asking for security.capability before
every write and leaves the clearing to the daemon, flagging the requests of callers without CAP_FSETID)
and SETXATTR_EXT (an access ACL set by a caller outside the file's group clears set-group-ID). The same
steps run on a kernel overlay and on pyunionfs, with and without passthrough, over identical layers:
unprivileged writers (a forked child that drops to uid 65534 after opening the mount's root) append to,
truncate and open with O_TRUNC files in the upper and in the lower layer; root appends and changes
groups; a file owner outside the file's group sets an access ACL. The modes and capability xattrs seen
through the mount afterwards must agree.
"""

import os
import stat

import pytest

from tests.helpers.fuserequests import requests_counted
from tests.helpers.mounting import on_kernel_and_pyunionfs
from tests.helpers.xattrvalues import ACL, CAP, CAP_NET_RAW
from tests.util import FUSE_SKIP_REASON, mount_pyunionfs
from unionfs.options import default_backend
from unionfs.protocol import abi

pytestmark = [
    pytest.mark.mount,
    pytest.mark.kernel,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FUSE_SKIP_REASON is not None, reason=FUSE_SKIP_REASON or ""),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (file modes of other users, capabilities)"),
]

NOBODY = 65534

# name: (mode, uid, gid)
FILES = {
    "w_suid": (0o6777, 0, 0),  # appended to by nobody
    "w_sgidx": (0o2777, 0, 0),
    "w_sgid": (0o2767, 0, 0),  # set-group-ID without group execute: cleared for a writer outside the group
    "w_sgid_member": (0o2767, 0, NOBODY),  # ... and kept for one in it
    "t_suid": (0o6777, 0, 0),  # ftruncate by nobody
    "o_suid": (0o6777, 0, 0),  # open(O_TRUNC) by nobody
    "r_suid": (0o6777, 0, 0),  # appended to by root: kept
    "c_suid": (0o6755, 0, 0),  # chgrp by root
    "c_sgid": (0o2745, 0, 0),
    "c_sgidx": (0o2755, 0, 0),
    "cap": (0o777, 0, 0),  # with security.capability, appended to by nobody
    "cap_root": (0o777, 0, 0),  # ... by root
    "acl": (0o2775, NOBODY, 0),  # its owner, outside its group, sets an access ACL
}


def _make(layer, prefix):
    for name, (mode, uid, gid) in FILES.items():
        p = layer / (prefix + name)
        p.write_bytes(b"data\n")
        os.chown(p, uid, gid)
        os.chmod(p, mode)
        if name.startswith("cap"):
            os.setxattr(p, CAP, CAP_NET_RAW)


def _layers(root):
    lower, upper, work, mnt = root / "lower", root / "upper", root / "work", root / "mnt"
    for d in (lower, upper, work, mnt):
        d.mkdir(parents=True)
        os.chmod(d, 0o755)
    _make(upper, "")
    _make(lower, "l")
    return lower, upper, work, mnt


def _layers3(root):
    return _layers(root)[:3]


def _as_nobody(mnt, names):
    """In a child that drops to uid/gid 65534 after opening the mount's root: append to w_* and cap,
    ftruncate t_*, open o_* with O_TRUNC, set the access ACL of acl (each under every prefix)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            root = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            for name in names:
                base = name.lstrip("l") if name.startswith("l") else name
                if base.startswith(("w_", "cap")) and base != "cap_root":
                    fd = os.open(name, os.O_WRONLY | os.O_APPEND, dir_fd=root)
                    os.write(fd, b"more\n")
                    os.close(fd)
                elif base.startswith("t_"):
                    fd = os.open(name, os.O_WRONLY, dir_fd=root)
                    os.ftruncate(fd, 2)
                    os.close(fd)
                elif base.startswith("o_"):
                    os.close(os.open(name, os.O_WRONLY | os.O_TRUNC, dir_fd=root))
                elif base == "acl":
                    fd = os.open(name, os.O_RDONLY, dir_fd=root)
                    os.setxattr(fd, "system.posix_acl_access", ACL)
                    os.close(fd)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _steps(mnt):
    names = [prefix + name for prefix in ("", "l") for name in FILES]
    _as_nobody(mnt, names)
    for name in names:
        base = name[1:] if name.startswith("l") else name
        if base in ("r_suid", "cap_root"):
            with open(mnt / name, "ab") as f:
                f.write(b"root\n")
        elif base.startswith("c_"):
            os.chown(mnt / name, -1, 100)
    out = {}
    for name in names:
        st = os.stat(mnt / name)
        out[name] = (stat.filemode(st.st_mode), st.st_size, CAP in os.listxattr(mnt / name))
    return out


@pytest.mark.xfail(
    default_backend() == "pyfuse3",
    strict=True,
    reason="known difference (README): pyfuse3 negotiates neither HANDLE_KILLPRIV_V2 nor SETXATTR_EXT, so "
    "the FUSE module clears the bits itself, by its older rule: set-group-ID without group execute stays "
    "on a write by a caller outside the group, an O_TRUNC open clears nothing (the truncation is the "
    "daemon's open, atomic O_TRUNC), and an access ACL never clears set-group-ID",
)
@pytest.mark.parametrize("passthrough", ["on", "off"])
def test_privileges_cleared_as_on_the_kernel(tmp_path, passthrough):
    options = [f"passthrough={passthrough}"] if default_backend() == "native" else []
    runs = on_kernel_and_pyunionfs(tmp_path, _layers3, lambda mnt, upper: _steps(mnt), options)
    results = {side: result for side, (result, _) in runs.items()}
    # the test's own check: on the kernel, the unprivileged writes cleared what they should
    k = results["kernel"]
    assert k["w_suid"][0] == "-rwxrwxrwx" and k["w_sgid_member"][0] == "-rwxrwSrwx" and not k["cap"][2]
    assert results["pyunionfs"] == k


@pytest.mark.skipif(default_backend() != "native", reason="the native backend's negotiation")
@pytest.mark.parametrize("passthrough", ["on", "off"])
def test_writes_ask_for_no_capability(tmp_path, passthrough):
    """With HANDLE_KILLPRIV_V2 the kernel marks a file without privileges to clear once (S_NOSEC) and
    stops sending GETXATTR(security.capability) before each write(2): 64 writes, at most one request."""
    lower, upper, work, mnt = _layers(tmp_path)
    with mount_pyunionfs(mnt, [lower], upper, work, [f"passthrough={passthrough}"]):
        with requests_counted(tmp_path, mnt, (abi.GETXATTR,)) as counter:
            with open(mnt / "new", "wb", buffering=0) as f:
                for _ in range(64):
                    f.write(b"x" * 4096)
            count = counter.count()
    assert count <= 1

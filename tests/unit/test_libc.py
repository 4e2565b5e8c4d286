"""unionfs.libc: the C library calls the os module lacks, through ctypes's C core alone."""

import errno
import os
import subprocess
import sys

import pytest

from tests.helpers.mounting import kernel_overlay_skip_reason, mount_kernel_overlay
from unionfs import libc
from unionfs.engine import _sys
from unionfs.fuse.native_backend import _OVERLAYFS_MAGIC, _stack_depth, _statfs_type
from unionfs.protocol import mount as fuse_mount

PROC_SUPER_MAGIC = 0x9FA0


def test_importing_it_does_not_import_the_ctypes_package():
    code = "import sys, unionfs.libc; print('ctypes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "False"


def test_a_function_this_libc_lacks_is_none():
    assert libc.function("no_such_function_in_any_libc") is None
    assert libc.function("getpid", ())() == os.getpid()


def test_buffer_is_zeroed_and_writable_by_a_call():
    buf = libc.buffer(120)
    assert buf.raw == bytes(120)
    assert _statfs_type("/proc") == PROC_SUPER_MAGIC  # the kernel wrote f_type into it


def test_a_failed_call_raises_its_errno():
    with pytest.raises(OSError) as exc:
        _statfs_type("/no/such/path")
    assert exc.value.errno == errno.ENOENT and exc.value.filename == "/no/such/path"
    with pytest.raises(fuse_mount.MountError, match="unmount /no/such/path: No such file or directory"):
        fuse_mount.unmount("/no/such/path", method="syscall")


def test_stack_depth_of_a_kernel_overlay(tmp_path):
    reason = kernel_overlay_skip_reason()
    if reason:
        pytest.skip(reason)
    for d in ("l", "u", "w", "m"):
        (tmp_path / d).mkdir()
    assert _stack_depth(tmp_path) == 0
    with mount_kernel_overlay(tmp_path / "m", [tmp_path / "l"], tmp_path / "u", tmp_path / "w"):
        assert _statfs_type(tmp_path / "m") == _OVERLAYFS_MAGIC
        assert _stack_depth(tmp_path / "m") == 1
        # several layers: the deepest counts; one that cannot be looked at counts as 0
        assert _stack_depth(tmp_path, "/no/such/path", tmp_path / "m") == 1
    assert _stack_depth(tmp_path, "/no/such/path", "/proc") == 0


def test_openat2_stays_beneath_and_refuses_symlinks(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_bytes(b"x")
    os.symlink("f", tmp_path / "d/link")
    dfd = os.open(tmp_path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _sys.openat2(dfd, b"f", os.O_RDONLY)
        assert os.read(fd, 2) == b"x"
        assert os.get_inheritable(fd) is False  # O_CLOEXEC always
        os.close(fd)
        with pytest.raises(OSError) as exc:
            _sys.openat2(dfd, b"link", os.O_RDONLY)
        assert exc.value.errno == errno.ELOOP
        with pytest.raises(OSError) as exc:
            _sys.openat2(dfd, b"../d/f", os.O_RDONLY)
        assert exc.value.errno == errno.EXDEV
    finally:
        os.close(dfd)


def test_renameat2_and_fallocate_flags(tmp_path):
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "a").write_bytes(b"a")
        (tmp_path / "b").write_bytes(b"b")
        with pytest.raises(FileExistsError):
            _sys.renameat2(dfd, b"a", dfd, b"b", _sys.RENAME_NOREPLACE)
        _sys.renameat2(dfd, b"a", dfd, b"b", _sys.RENAME_EXCHANGE)
        assert (tmp_path / "a").read_bytes() == b"b" and (tmp_path / "b").read_bytes() == b"a"
        fd = os.open(tmp_path / "a", os.O_RDWR)
        try:
            _sys.fallocate(fd, 1, 0, 1 << 16)  # FALLOC_FL_KEEP_SIZE: blocks, no size
            st = os.fstat(fd)
            assert st.st_size == 1 and st.st_blocks * 512 >= 1 << 16
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def test_listxattrat_lists_a_name_through_its_directory(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(b"")
    os.setxattr(tmp_path / "f", "user.a", b"1")
    os.setxattr(tmp_path / "f", "user.long." + "x" * 200, b"2")
    (tmp_path / "plain").write_bytes(b"")
    os.symlink("f", tmp_path / "link")
    d = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        try:
            _sys.listxattrat(d, b"plain")
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                pytest.skip("listxattrat needs Linux 6.13")
            raise
        assert sorted(_sys.listxattrat(d, b"f")) == sorted(os.fsencode(n) for n in os.listxattr(tmp_path / "f"))
        assert _sys.listxattrat(d, b"plain") == []
        assert _sys.listxattrat(d, b"link") == []  # the symlink's own (none), not its target's
        with pytest.raises(OSError) as exc:
            _sys.listxattrat(d, b"missing")
        assert exc.value.errno == errno.ENOENT
        monkeypatch.setattr(_sys, "_have_listxattrat", False)  # an older kernel: the callers fall back
        with pytest.raises(OSError) as exc:
            _sys.listxattrat(d, b"f")
        assert exc.value.errno == errno.ENOSYS
    finally:
        os.close(d)

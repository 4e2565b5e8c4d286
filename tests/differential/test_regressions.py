"""Fixed replays of the differences the differential test (test_vs_kernel.py) found.

Each test replays exact steps on a kernel overlay mount and a pyunionfs mount of copies of the same
layers (diffkit.FIXTURE), compares every step's normalised result, then the merged trees, the upper
layers left on disk, and checks the lowers untouched: the same comparisons as the state machine.

A difference kept on purpose is marked xfail(strict=True) with the reason (README, "Where pyunionfs
differs from the kernel"): strict, so that the day the daemon matches the kernel the marker fails and
goes. The markers do not apply with DIFF_SELF_CHECK=1 (both sides kernel), where every replay passes.
"""

import os

import pytest

from tests.differential import diffkit
from tests.differential.diffkit import BIG, SELF_CHECK
from unionfs.options import BACKENDS, default_backend

pytestmark = [pytest.mark.kernel, pytest.mark.mount]


def known_difference(reason, backends=BACKENDS):
    """xfail(strict) where the daemon runs on one of *backends* (the default backend, or
    PYUNIONFS_BACKEND: the test's daemons inherit the environment)."""
    return pytest.mark.xfail(
        not SELF_CHECK and default_backend() in backends, strict=True, reason="known difference: " + reason
    )


SETXATTR_FLAGS = (
    "pyfuse3 checks XATTR_CREATE/XATTR_REPLACE itself (by calling getxattr) and never calls "
    "the daemon's setxattr when the check fails, so the daemon cannot copy up first "
    "(the native backend passes the flags on): "
)


def _replaying(diff_template, diff_base, options=()):
    """A fixture's body: run(*steps) replays the steps with the mount *options* on both sides."""
    old_umask = os.umask(0o022)

    def run(*steps):
        diffkit.replay(diff_template, diff_base, steps, options=list(options))

    try:
        yield run
    finally:
        os.umask(old_umask)


@pytest.fixture
def replay(diff_template, diff_base):
    yield from _replaying(diff_template, diff_base)


@known_difference(
    SETXATTR_FLAGS + "a setxattr that fails (XATTR_REPLACE of a missing name) leaves the lower file not "
    "copied up; the kernel copies up first, then fails with ENODATA",
    backends=("pyfuse3",),
)
def test_failed_setxattr_replace_copies_up(replay):
    replay(("setxattr", "a", "user.a", b"", "replace", False))


@known_difference(
    SETXATTR_FLAGS + "seen on a lower hard link: the kernel's copy-up splits the pair "
    "(lstat nlink 1 after the failed setxattr), pyunionfs still reports nlink 2",
    backends=("pyfuse3",),
)
def test_failed_setxattr_replace_splits_hardlink(replay):
    replay(("setxattr", "hl_a", "user.new", b"other value", "replace", True))


# Fixed (was: a setattr that changes nothing was taken for the write-back cache's ctime flush and
# ignored; with the write-back cache off it is a chown(-1, -1), which the kernel overlay passes to the
# copied-up file: a new ctime, set-user-ID and a file capability dropped).
def test_noop_chown_copies_up(replay):
    replay(("chown", "a", -1, -1, False))


def test_noop_chown_of_a_setuid_file_a_directory_and_a_symlink(replay):
    replay(
        ("chown", "suid", -1, -1, False),
        ("chown", "dm/sub", -1, -1, False),
        ("chown", "lnk_rel", -1, -1, False),
        ("chown", "owned", -1, -1, True),
        ("listxattr", "owned", False),
    )


# Fixed (was: lchown of a symlink from a lower copied the link up but left its gid at 0; the kernel
# reports gid 1002).
def test_lchown_lower_symlink(replay):
    replay(("chown", "lnk_abs", -1, 1002, False))


@known_difference(
    SETXATTR_FLAGS + "setxattr XATTR_CREATE of a name a lower file already has fails EEXIST on both, but the "
    "kernel has copied the file up first (and its parent dir for a dir entry)",
    backends=("pyfuse3",),
)
def test_failed_setxattr_create_copies_up(replay):
    replay(("setxattr", "xf", "user.a", b"v", "create", False))


@known_difference(
    SETXATTR_FLAGS + "failed setxattr on a lower-only directory: the kernel copies up dm/sub (and its parent "
    "chain) before failing with ENODATA",
    backends=("pyfuse3",),
)
def test_failed_setxattr_replace_copies_up_dir(replay):
    replay(("setxattr", "dm/sub", "user.new", b"v", "replace", False))


# Fixed (was: a rename of an upper-only directory into a merged parent that fails with ENOTEMPTY
# left no trace in pyunionfs; the kernel has already marked the source opaque).
def test_failed_rename_of_upper_dir_marks_opaque(replay):
    replay(("rename", "du", "ñdir"))


# Fixed (was: after this 70000-byte append copied up dop/new1 and its opaque parent dop, and
# dm/sub/deep was renamed over it, the upper root's mtime had changed in pyunionfs; the kernel
# restores a parent's times after copy-up. A stat of the root served from the attribute cache still
# showed the old mtime; a readdir refreshed it).
def test_root_mtime_after_big_copyup_and_rename(replay):
    replay(("write", "dop/new1", "append", 0, BIG), ("rename", "dm/sub/deep", "dop/new1"))


def test_root_mtime_after_a_failed_rename_that_leaves_a_whiteout(replay):
    # Found by exploring with fresh seeds: the opaque upper dup_op (over a lower dup_op) renamed onto the
    # non-empty upper ñdir fails ENOTEMPTY after the upper's renameat2(RENAME_WHITEOUT) has changed the
    # root's times, in both. pyunionfs showed the root's old mtime: the kernel keeps the attributes it
    # caches of a rename's parents when the rename fails, so the daemon has to say they changed.
    replay(("rename", "dup_op", "ñdir"), ("unlink", ""))


# ---- redirect_dir=on on both sides: lower and merged directories rename by redirect.


@pytest.fixture
def replay_redirect(diff_template, diff_base):
    yield from _replaying(diff_template, diff_base, ["redirect_dir=on"])


@pytest.fixture
def replay_index(diff_template, diff_base):
    yield from _replaying(diff_template, diff_base, ["index=on"])


def test_fstat_of_an_indexed_file_open_after_its_last_name_goes(replay_index):
    # Found by exploring with fresh seeds (index=on): both names of a lower hard link unlinked, each
    # through a descriptor opened before; fstat of the last one showed the index entry's link (1), the
    # kernel shows 0.
    replay_index(
        ("fd_across", "hl_a", "unlink", "x1", b""),
        ("fd_across", "hl_b", "unlink", "a", b"N\xaa"),
    )


def test_redirect_merged_dir_in_place_then_away(replay_redirect):
    # "name" redirect, then an absolute one, then the old place reused
    replay_redirect(
        ("rename", "dm", "dm2"),
        ("listdir", "dm2"),
        ("listdir", "dm2/sub"),
        ("rename", "dm2", "du/dm3"),
        ("listdir", "du/dm3"),
        ("read", "du/dm3/x2"),
        ("mkdir", "dm", 0o755),
        ("listdir", "dm"),
        ("create", "dm/n1", 0o644, b"new"),
    )


def test_redirect_nested_moves(replay_redirect):
    # a child moved within its redirected parent, the parent moved, the child moved out again
    replay_redirect(
        ("rename", "dm/sub", "dm/sub2"),
        ("rename", "dm", "dlow/e/dm"),
        ("listdir", "dlow/e/dm/sub2"),
        ("rename", "dlow/e/dm/sub2", "newsub"),
        ("read", "newsub/deep"),
        ("listdir", "dlow/e/dm"),
        ("stat", "dlow/e/dm/sub2", False),
    )


def test_redirect_into_pure_upper_and_opaque_dirs(replay_redirect):
    replay_redirect(
        ("rename", "dlow", "du/sub/dl"),
        ("listdir", "du/sub/dl"),
        ("rename", "du", "dup_op/du"),
        ("read", "dup_op/du/sub/dl/f"),
        ("getxattr", "dup_op/du/sub/dl/f", "user.x", True),
        ("rename", "dop", "dup_op/dop"),
        ("listdir", "dup_op/dop"),
    )


def test_redirect_changes_inside_moved_dirs(replay_redirect):
    # copy-up, whiteouts and removal below a directory that merges another path
    replay_redirect(
        ("rename", "dm", "moved"),
        ("write", "moved/x3", "append", 0, b"+"),
        ("unlink", "moved/z1"),
        ("unlink", "moved/x2"),
        ("rmdir", "moved"),
        ("rename", "moved/sub", "moved/sub"),
        ("chmod", "moved/sub", 0o700),
        ("unlink", "moved/sub/deep"),
        ("rmdir", "moved/sub"),
        ("unlink", "moved/xu"),
        ("unlink", "moved/x3"),
        ("listdir", "moved"),
        ("rmdir", "moved"),
        ("listdir", ""),
    )


def test_redirect_over_existing_dirs_and_back(replay_redirect):
    replay_redirect(
        ("rename", "emptyd", "dm/sub2"),
        ("rename", "dlow/e", "emptyd"),
        ("rename", "dop", "ftodir/inner2"),
        ("rename", "ftodir", "dop"),
        ("listdir", "dop"),
        ("rename", "dop/inner2", "dop"),
        ("listdir", ""),
        ("rename", "dm/sub", "dlow"),
        ("rename", "dlow", "dm/sub"),
        ("listdir", "dm/sub"),
    )


ONE_INODE = (
    "names of one lower file are one FUSE inode on pyfuse3 (its node id is st_ino, and the kernel "
    "overlay shows such names with one st_ino), so the VFS finds source and target the same inode "
    "and returns before the daemon hears of the call; the kernel overlay (index=off) gives them "
    "separate inodes with one st_ino, as the native backend does, copies the source up and "
)


# Found by exploring with fresh seeds. The engine (UnionFS) does what the kernel does; through pyfuse3
# the call never reaches it (fixed on the native backend: node ids apart from st_ino).
@known_difference(ONE_INODE + "renames it over the other name, leaving a whiteout at the source", backends=("pyfuse3",))
def test_rename_between_two_names_of_a_lower_hard_link(replay):
    replay(("rename", "hl_b", "hl_a"), ("stat", "hl_a", False), ("stat", "hl_b", False), ("listdir", ""))


@known_difference(ONE_INODE + "exchanges two copies", backends=("pyfuse3",))
def test_exchange_of_two_names_of_a_lower_hard_link(replay):
    replay(("exchange", "hl_a", "hl_b"), ("stat", "hl_a", False), ("read", "hl_b"), ("listdir", ""))


def test_refused_exchange_copies_nothing_up(replay):
    # Found when RENAME_EXCHANGE joined the state machine: the adapter copied the file up before the
    # engine refused the exchange with a lower directory (EXDEV); the kernel checks first.
    replay(("rename2", "a", "dm/sub", "exchange"), ("rename2", "dm/sub", "a", "exchange"))


def test_redirect_failed_rename_onto_a_full_upper_dir_records_a_redirect(replay_redirect):
    # Found by exploring with fresh seeds: a merged directory renamed onto a non-empty pure-upper one
    # fails ENOTEMPTY in the upper's rename(2); the kernel has recorded the redirect by then, and had
    # pyunionfs marked it opaque instead, the kernel reading that upper listed whiteouts as names.
    replay_redirect(("rename", "dm", "dup_op"), ("listdir", "dm"), ("rename", "dlow", "dup_op"), ("listdir", "dlow"))


def test_fstat_of_an_open_fifo_after_its_last_name_goes(replay):
    # Found by exploring with fresh seeds: the kernel opens a fifo itself (the daemon gets no handle), so
    # after the unlink pyunionfs had nothing to answer fstat with (ENOENT); it keeps the last attributes.
    replay(
        ("fd_across", "fifo_l", "unlink", "n1", b"xy"),
        ("mkfifo", "n2", 0o644),
        ("fd_across", "n2", "rename", "n1", b""),
        ("fd_across", "n1", "unlink", "a", b"z"),
    )


# Fixed (was: a char 0/0 device made through the mount was created and then vanished as a whiteout,
# copying up its parent; the kernel refuses it with EPERM and writes nothing).
def test_mknod_of_a_whiteout_device_is_refused(replay):
    replay(
        ("mknod_whiteout", "n1", 0o644),
        ("mknod_whiteout", "dm/sub/n2", 0o000),
        ("mknod_whiteout", "a", 0o644),
        ("listdir", ""),
        ("listdir", "dm/sub"),
    )


# Fixed (was: user.overlay.* names set through a mount without userxattr were stored escaped as
# user.overlay.overlay.*; the kernel treats only its own namespace, trusted.overlay.*, as private).
def test_user_overlay_xattrs_are_ordinary_without_userxattr(replay):
    replay(
        ("setxattr", "a", "user.overlay.x", b"v", "any", False),
        ("getxattr", "a", "user.overlay.x", False),
        ("listxattr", "a", False),
        ("setxattr", "dm", "user.overlay.opaque", b"y", "any", False),
        ("listdir", "dm"),
        ("setxattr", "dm/sub", "trusted.overlay.x", b"t", "any", False),
        ("getxattr", "dm/sub", "trusted.overlay.x", False),
        ("removexattr", "a", "user.overlay.x", False),
        ("listxattr", "a", False),
    )


def test_exchange_with_a_name_of_a_lower_hard_link_looked_up_before_the_other(replay_redirect):
    # Found by exploring with fresh seeds once each name of a lower hard link was a node id of its own:
    # the exchange copied up the name looked up last (hl_a) instead of the one exchanged (hl_b) and
    # failed with ENOENT; the kernel exchanges hl_b's copy.
    replay_redirect(
        ("fd_across", "fifo_l", "rename", "a", b"\x1b"),
        ("rename2", "fifo_l", "hl_b", "exchange"),
        ("rename2", "", "hl_a", "noreplace"),
        ("rename2", "emptyd", "hl_b", "exchange"),
    )


# Fixed on the native backend (was: the FUSE module applied the umask before the daemon heard of a
# create, and entries made in the work dir, directories among them, inherited no default ACL at all).
@known_difference(
    "default ACLs on create: pyfuse3 does not agree DONT_MASK, so the FUSE module applies the umask "
    "before the daemon hears of a create, where the kernel overlay lets the default ACL replace it",
    backends=("pyfuse3",),
)
def test_new_entries_under_a_default_acl(replay):
    replay(
        ("create", "dacl/n1", 0o666, b"x"),
        ("mkdir", "dacl/n2", 0o777),
        ("create", "dacl/n2/n1", 0o640, b""),
        ("mkfifo", "dacl/f2", 0o666),
        ("unlink", "dacl/f"),
        ("create", "dacl/f", 0o664, b"over a whiteout"),
        ("getxattr", "dacl/n2", "system.posix_acl_default", False),
        ("listxattr", "dacl/n1", False),
    )

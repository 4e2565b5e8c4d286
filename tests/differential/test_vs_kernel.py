"""Differential test: hypothesis generates operation sequences and runs each step on a kernel
overlayfs mount and on a pyunionfs mount of identical copies of the same layers (diffkit.FIXTURE:
three lowers with whiteouts, opaque dirs, hard links, foreign owners, a setgid dir, long and unicode
names, symlinks; an upper with whiteouts and an opaque dir). Each step's normalised result must be
equal; at the end the merged trees, then (after unmounting) the upper layers are compared and every
lower is checked untouched.

Knobs (environment):
  DIFF_SELF_CHECK=1    both sides are kernel overlay mounts: proves the comparator has no false
                       positives (run it with many seeds after changing diffkit).
  DIFF_MAX_EXAMPLES, DIFF_STEPS   more exploration than the CI budget (HYPOTHESIS_PROFILE=dev).
  DIFF_NO_SHRINK=1     skip shrinking (each example mounts twice, so shrinking is slow); cut the
                       printed "replay steps" down with `python -m tests.differential.diffkit STEPS`.
"""

import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from tests.differential import diffkit
from tests.differential.diffkit import ABS_TARGET, LONG, OLD, PATHS
from unionfs.options import default_backend

pytestmark = [pytest.mark.kernel, pytest.mark.mount]

paths = st.sampled_from(PATHS)
dirs = st.sampled_from(diffkit.DIRS)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o000, 0o4755, 0o2755, 0o2644, 0o1777, 0o7777])
uids = st.sampled_from([-1, 0, 1001, 65534])
gids = st.sampled_from([-1, 0, 1002, 65534])
times = st.sampled_from([OLD + 123_456_789, 1_000_000_000_987_654_321, 0, OLD - 1])
targets = st.sampled_from(["a", "../a", ABS_TARGET, "nowhere", "dm", "n1", LONG])
# user.overlay.* is an ordinary namespace for a mount without userxattr; trusted.overlay.* is its own
xnames = st.sampled_from(
    ["user.a", "user.b", "user.tag", "user.new", "user.overlay.x", "user.overlay.opaque", "trusted.overlay.x"]
)
xvalues = st.sampled_from([b"", b"v", b"other value", b"x" * 300])
data = st.one_of(st.binary(max_size=24), st.just(diffkit.BIG))
booleans = st.booleans()


class DiffMachine(RuleBasedStateMachine):
    template: Path = None  # set by the test
    base: Path = None
    options = ()

    def __init__(self):
        super().__init__()
        self.failed = False
        self.pair = None
        self.pair = diffkit.Pair(self.template, Path(tempfile.mkdtemp(dir=self.base)), self.options)

    def _check(self, name, *args):
        if name in ("rename", "rename2") and self._names_of_one_lower_file(args[0], args[1]):
            return  # a known difference on pyfuse3 (test_regressions.py, ONE_INODE): kept out of its random runs
        try:
            self.pair.check(name, *args)
        except BaseException:
            self.failed = True
            raise

    def _names_of_one_lower_file(self, src, dst):
        """Two different names that the kernel side shows as one non-directory (a lower hard link).
        Only pyfuse3 differs there (one node id per st_ino); the native backend is checked too."""
        if default_backend() != "pyfuse3":
            return False
        if os.path.normpath(src) == os.path.normpath(dst):
            return False
        kernel = self.pair.roots[0]
        try:
            a = os.lstat(os.path.join(kernel, src))
            b = os.lstat(os.path.join(kernel, dst))
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and not stat.S_ISDIR(a.st_mode)

    def teardown(self):
        if self.pair is None:
            return
        try:
            self.pair.finish(compare=not self.failed)
        finally:
            self.pair.cleanup()

    # ---- reads
    @rule(path=paths, follow=booleans)
    def stat(self, path, follow):
        self._check("stat", path, follow)

    @rule(path=paths)
    def read(self, path):
        self._check("read", path)

    @rule(path=paths)
    def readlink(self, path):
        self._check("readlink", path)

    @rule(path=paths)
    def listdir(self, path):
        self._check("listdir", path)

    @rule(path=paths, name=xnames, follow=booleans)
    def getxattr(self, path, name, follow):
        self._check("getxattr", path, name, follow)

    @rule(path=paths, follow=booleans)
    def listxattr(self, path, follow):
        self._check("listxattr", path, follow)

    # ---- data
    @rule(path=paths, mode=st.sampled_from(sorted(diffkit.WRITE_MODES)), offset=st.sampled_from([0, 5, 100]), data=data)
    def write(self, path, mode, offset, data):
        self._check("write", path, mode, offset, data)

    @rule(path=paths, mode=modes, data=data)
    def create(self, path, mode, data):
        self._check("create", path, mode, data)

    @rule(path=paths, size=st.sampled_from([0, 3, 100, 70_000]))
    def truncate(self, path, size):
        self._check("truncate", path, size)

    @rule(path=paths, data=data)
    def read_during_copyup(self, path, data):
        self._check("read_during_copyup", path, data)

    # ---- metadata
    @rule(path=paths, mode=modes)
    def chmod(self, path, mode):
        self._check("chmod", path, mode)

    @rule(path=paths, uid=uids, gid=gids, follow=booleans)
    def chown(self, path, uid, gid, follow):
        if uid == -1 and gid == -1 and not diffkit.SELF_CHECK:
            # Known difference (test_regressions.py): FUSE does not pass a chown that changes nothing
            # to the daemon, while the kernel's overlay copies the file up for it.
            return
        self._check("chown", path, uid, gid, follow)

    @rule(path=paths, atime_ns=times, mtime_ns=times, follow=booleans)
    def utime(self, path, atime_ns, mtime_ns, follow):
        self._check("utime", path, atime_ns, mtime_ns, follow)

    @rule(path=paths, name=xnames, value=xvalues, flags=st.sampled_from(sorted(diffkit.XATTR_FLAGS)), follow=booleans)
    def setxattr(self, path, name, value, flags, follow):
        if flags != "any" and self.pair is not None and not diffkit.SELF_CHECK:
            # A flag check that fails is a known difference (test_regressions.py, README): pyfuse3
            # makes it before the daemon hears of the call, so the daemon cannot copy up first as
            # the kernel does. Such calls are replayed there; here they become plain setxattrs.
            present = diffkit.op_getxattr(self.pair.roots[0], path, name, follow)
            if isinstance(present, bytes) != (flags == "replace"):
                flags = "any"
        self._check("setxattr", path, name, value, flags, follow)

    @rule(path=paths, name=xnames, follow=booleans)
    def removexattr(self, path, name, follow):
        self._check("removexattr", path, name, follow)

    # ---- namespace
    @rule(path=paths, mode=modes)
    def mkdir(self, path, mode):
        self._check("mkdir", path, mode)

    @rule(path=st.one_of(paths, dirs))
    def rmdir(self, path):
        self._check("rmdir", path)

    @rule(path=paths)
    def unlink(self, path):
        self._check("unlink", path)

    @rule(linkto=targets, path=paths)
    def symlink(self, linkto, path):
        self._check("symlink", linkto, path)

    @rule(src=paths, dst=paths)
    def rename(self, src, dst):
        self._check("rename", src, dst)

    @rule(src=paths, dst=paths)
    def link(self, src, dst):
        self._check("link", src, dst)

    # Two paths drawn independently rarely make a valid rename/link; these keep the source's name
    # or its directory so that most of them succeed.
    @rule(src=paths, dstdir=dirs, link=booleans)
    def rename_into(self, src, dstdir, link):
        dst = os.path.join(dstdir, os.path.basename(src)) if src else dstdir
        self._check("link" if link else "rename", src, dst)

    @rule(src=paths, name=st.sampled_from(["n1", "n2", "a", "x1"]), link=booleans)
    def rename_sibling(self, src, name, link):
        self._check("link" if link else "rename", src, os.path.join(os.path.dirname(src), name))

    @rule(src=paths, dst=paths, flag=st.sampled_from(sorted(diffkit.RENAME_FLAGS)))
    def rename2(self, src, dst, flag):
        self._check("rename2", src, dst, flag)

    @rule(
        src=paths,
        name=st.sampled_from(["n1", "hl_a", "hl_b", "a", "xf"]),
        flag=st.sampled_from(sorted(diffkit.RENAME_FLAGS)),
    )
    def rename2_sibling(self, src, name, flag):
        self._check("rename2", src, os.path.join(os.path.dirname(src), name), flag)

    @rule(path=paths, action=st.sampled_from(["rename", "unlink"]), name=st.sampled_from(["n1", "x1", "a"]), data=data)
    def fd_across(self, path, action, name, data):
        other = os.path.join(os.path.dirname(path), name)
        if action == "rename" and self._names_of_one_lower_file(path, other):
            return  # the known difference (see _check)
        self._check("fd_across", path, action, other, data)

    @rule(path=paths, mode=modes)
    def mkfifo(self, path, mode):
        self._check("mkfifo", path, mode)

    @rule(path=paths, mode=st.sampled_from([0o644, 0o000]))
    def mknod_whiteout(self, path, mode):
        self._check("mknod_whiteout", path, mode)


# Passing runs take well under 3 minutes; the larger budget is for shrinking a failure (hypothesis
# gives up shrinking after 5 minutes), so that a failing run ends with a report, not a timeout.
# Three configurations: the kernel's defaults; redirect_dir=on (lower and merged directories rename by
# recording a redirect) on both sides; index=on (lower hard links stay whole across copy-up) on both.
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "options,examples",
    [((), 40), (("redirect_dir=on",), 25), (("index=on",), 25)],
    ids=["defaults", "redirect_dir=on", "index=on"],
)
def test_differential_vs_kernel(diff_template, diff_base, options, examples):
    # On pyfuse3 the FUSE module applies the umask before the daemon hears of a create, so a default
    # ACL (the fixture's dacl) would differ by it (README, "Where pyunionfs differs"): umask 0 there.
    old_umask = os.umask(0 if default_backend() == "pyfuse3" else 0o022)
    try:
        machine = type(
            "DiffMachine", (DiffMachine,), {"template": diff_template, "base": diff_base, "options": options}
        )
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=int(os.environ.get("DIFF_MAX_EXAMPLES", examples)),
                stateful_step_count=int(os.environ.get("DIFF_STEPS", 40)),
                deadline=None,
                suppress_health_check=list(HealthCheck),
                # DIFF_NO_SHRINK=1: report the first failing sequence as found (its "replay steps"
                # can then be cut down with `python -m tests.differential.diffkit STEPS`)
                **(
                    {"phases": [Phase.explicit, Phase.reuse, Phase.generate]}
                    if os.environ.get("DIFF_NO_SHRINK")
                    else {}
                ),
            ),
        )
    finally:
        os.umask(old_umask)

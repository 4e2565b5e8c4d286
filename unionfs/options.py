"""Mount options: fuse-overlayfs's command line turned into a MountOptions, and its validation.

Everything here is checked before anything is created, so a refused invocation writes nothing.
"""

from __future__ import annotations

import os

from .engine.idmap import IdMap, IdMapError
from .engine.layermounts import read_mountinfo
from .engine.whiteout import REDIRECT_MODES

MAX_LOWERS = 500  # the kernel's limit
# The readahead of the mount, in KiB: a FUSE mount starts with the kernel's 128 KiB, so a sequential read
# comes to the daemon as 128 KiB READs; at 1020 (the most one request carries: 255 pages, see
# fuse/native_backend.py) an eighth of them (benchmarks/README.md, "Readahead and spliced reads"). Only
# root may set it (sysfs).
READAHEAD_KIB = 1020
MAX_READAHEAD_KIB = 1 << 20
# How long, in microseconds, the native backend's reader polls the device without sleeping after an
# answer (protocol/session.py, SPIN_DEFAULT says why); 0: it sleeps at once, as before.
SPIN_US = 50
MAX_SPIN_US = 10_000

# Generic mount(8) options that mount.fuse3 forwards. The ones libfuse takes are passed on; the rest
# are accepted and ignored (atime handling is the kernel's: libfuse refuses relatime, lazytime, ...).
PASSED_TO_FUSE = {
    "allow_other",
    "allow_root",
    "default_permissions",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "noatime",
    "nodiratime",
    "norelatime",
    "nostrictatime",
    "sync",
    "async",
    "dirsync",
    "symfollow",
    "nosymfollow",
}
IGNORED = {
    "rw",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "defaults",
    "x-systemd",
    "silent",
    "loud",
    "atime",
    "diratime",
    "relatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "iversion",
    "noiversion",
    "mand",
    "nomand",
}
# Kernel overlay options whose default we implement; other values are refused, not silently ignored.
KERNEL_DEFAULTS = {"metacopy": {"off"}, "xino": {"off", "auto"}, "nfs_export": {"off"}}


# FUSE backends: "native" speaks /dev/fuse itself (unionfs.protocol; needs nothing but Python and trio),
# "pyfuse3" goes through libfuse (pyfuse3 is an optional dependency: a C build against libfuse3).
BACKENDS = ("native", "pyfuse3")
# The backend when -o backend= is not given; PYUNIONFS_BACKEND in the environment overrides it (so a
# test run or a container engine's mount program can switch without changing command lines).
DEFAULT_BACKEND = "native"


def default_backend() -> str:
    value = os.environ.get("PYUNIONFS_BACKEND", "")
    return value if value in BACKENDS else DEFAULT_BACKEND


class OptionError(Exception):
    """Bad invocation; the message is one line for the user."""


class MountOptions:
    """What a command line asks for. A plain class, not a dataclass: `dataclasses` imports `inspect`,
    10 ms of every pyunionfs start (a container engine execs it for every mount)."""

    def __init__(self, lowers: list, **given):
        self.lowers = lowers
        self.upper: str | None = None
        self.work: str | None = None
        self.mountpoint: str | None = None
        self.foreground = False
        self.debug = False
        self.readonly = False
        self.userxattr = False
        self.whiteout_files = True  # read .wh. markers, as fuse-overlayfs; off: kernel-exact
        self.redirect_dir = "off"
        self.xattr_permissions = 0
        self.index = False
        self.passthrough = True  # the kernel reads and writes upper files itself (native backend, root)
        self.volatile = False  # fsync is a no-op (the kernel's and fuse-overlayfs's volatile)
        self.readahead = READAHEAD_KIB  # the mount's readahead (native backend, root; see the README)
        self.spin = SPIN_US  # microseconds the native backend polls for the next request before it sleeps
        self.logfile: str | None = None
        self.timeout = 300.0
        self.fsname = "overlay"
        self.fuse_options: list = []
        self.uid_map = IdMap()
        self.gid_map = IdMap()
        self.backend = default_backend()
        for name, value in given.items():
            if not hasattr(self, name):
                raise TypeError(f"MountOptions has no option {name!r}")
            setattr(self, name, value)

    def __eq__(self, other):
        return isinstance(other, MountOptions) and vars(self) == vars(other)

    def __repr__(self):
        return "MountOptions(%s)" % ", ".join(f"{k}={v!r}" for k, v in vars(self).items())


def _count(key: str, value, unit: str, most: int) -> int:
    """The whole number from 0 to *most* that option *key* gives, or a one-line OptionError."""
    try:
        number = int(value if value is not True else "")  # a bare `key` is no number
    except (TypeError, ValueError):
        raise OptionError(f"{key} needs a number of {unit}") from None
    if not 0 <= number <= most:
        raise OptionError(f"{key} needs a number of {unit} from 0 to {most}")
    return number


def split_escaped(text: str, sep: str) -> list:
    """Split on *sep* not preceded by a backslash; `\\x` stands for x."""
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                raise OptionError("unbalanced escape at the end of %r" % text)
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_o(opts: list) -> dict:
    """Merge every -o string into {key: value or True}. A flag may repeat; an option given twice with
    different values is refused (which one was meant?)."""
    result = {}
    for text in opts:
        for item in split_escaped(text, ","):
            if not item:
                continue
            key, eq, value = item.partition("=")
            value = value if eq else True
            if key in result and result[key] != value and not key.startswith("x-"):
                raise OptionError("option %s given twice with different values" % key)
            result[key] = value
    return result


def build(o: dict) -> MountOptions:
    if "lowerdir" not in o or o["lowerdir"] is True or not o["lowerdir"]:
        raise OptionError("no lowerdir given (use -o lowerdir=DIR[:DIR...])")
    raw = split_escaped(o.pop("lowerdir"), ":")
    if any(not part for part in raw):
        raise OptionError("lowerdir has an empty component")
    lowers = [unescape(part) for part in raw]
    if len(lowers) > MAX_LOWERS:
        raise OptionError("too many lower layers: %d (at most %d)" % (len(lowers), MAX_LOWERS))
    opts = MountOptions(lowers=lowers)
    for key in ("upperdir", "workdir"):
        value = o.pop(key, None)
        if value is True or value == "":
            raise OptionError("%s needs a directory" % key)
        setattr(opts, key[:-3] if key == "upperdir" else "work", unescape(value) if value else None)
    if (opts.upper is None) != (opts.work is None):
        raise OptionError("upperdir and workdir must be given together")
    squash_root, squash = False, {}
    for key, value in o.items():
        if key in ("ro",):
            opts.readonly = True
        elif key == "userxattr":
            opts.userxattr = True
        elif key == "whiteout_files":
            if value not in (True, "on", "off"):
                raise OptionError("whiteout_files needs on or off")
            opts.whiteout_files = value != "off"
        elif key == "volatile":
            opts.volatile = True
        elif key == "backend":
            if value not in BACKENDS:
                raise OptionError("backend needs one of %s" % "/".join(BACKENDS))
            opts.backend = value
        elif key == "nowhiteout_files":
            opts.whiteout_files = False
        elif key == "index":
            if value not in ("on", "off"):
                raise OptionError("index needs on or off")
            opts.index = value == "on"
        elif key == "passthrough":
            if value not in ("on", "off"):
                raise OptionError("passthrough needs on or off")
            opts.passthrough = value == "on"
        elif key == "readahead":
            opts.readahead = _count(key, value, "KiB", MAX_READAHEAD_KIB)
        elif key == "spin":
            opts.spin = _count(key, value, "microseconds", MAX_SPIN_US)
        elif key == "xattr_permissions":
            if value not in ("0", "1", "2"):
                raise OptionError("xattr_permissions needs 0, 1 or 2")
            opts.xattr_permissions = int(value)
        elif key == "redirect_dir":
            if value not in REDIRECT_MODES:
                raise OptionError("redirect_dir needs one of %s" % "/".join(REDIRECT_MODES))
            opts.redirect_dir = value
        elif key == "logfile":
            if value is True or not value:
                raise OptionError("logfile needs a path")
            opts.logfile = os.path.abspath(unescape(value))
        elif key == "timeout":
            try:
                opts.timeout = float(value)
            except (TypeError, ValueError):
                raise OptionError("timeout needs a number of seconds") from None
            if opts.timeout < 0:
                raise OptionError("timeout needs a number of seconds")
        elif key in ("uidmapping", "gidmapping"):
            if value is True:
                raise OptionError("%s needs HOST:TO:LEN triples" % key)
            try:
                parsed = IdMap.parse(value, key)
            except IdMapError as exc:
                raise OptionError(str(exc)) from None
            (opts.uid_map if key == "uidmapping" else opts.gid_map).ranges = parsed.ranges
        elif key == "squash_to_root":
            squash_root = True
        elif key in ("squash_to_uid", "squash_to_gid"):
            if value is True or not value.isdigit():
                raise OptionError("%s needs a numeric id" % key)
            squash[key] = int(value)
        elif key == "fsname":
            opts.fsname = str(value)
        elif key == "subtype":
            pass
        elif key in KERNEL_DEFAULTS:
            if value not in KERNEL_DEFAULTS[key]:
                raise OptionError(
                    "option %s=%s is not supported (only %s)" % (key, value, "/".join(sorted(KERNEL_DEFAULTS[key])))
                )
        elif key in PASSED_TO_FUSE and value is True:
            opts.fuse_options.append(key)
        elif key in IGNORED or key.startswith("x-") or key == "context" or key.endswith("context"):
            pass
        else:
            raise OptionError("unknown option: %s" % (key if value is True else "%s=%s" % (key, value)))
    # As fuse-overlayfs: squash_to_uid/gid take precedence over squash_to_root.
    opts.uid_map.squash = squash.get("squash_to_uid", 0 if squash_root else None)
    opts.gid_map.squash = squash.get("squash_to_gid", 0 if squash_root else None)
    return opts


def _real(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise OptionError("%s %s does not exist" % (what, path))
    if not os.path.isdir(path):
        raise OptionError("%s %s is not a directory" % (what, path))
    if not os.access(path, os.R_OK | os.X_OK):
        raise OptionError("%s %s is not readable" % (what, path))
    return os.path.realpath(path)


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _mount_points() -> set:
    try:
        return {os.fsdecode(e.mountpoint) for e in read_mountinfo()}
    except OSError:
        return set()


def validate(opts: MountOptions) -> MountOptions:
    """Check every path; returns opts with absolute, real paths. Raises OptionError."""
    lowers = [_real(p, "lowerdir") for p in opts.lowers]
    layers = [("lowerdir", p) for p in lowers]
    if opts.upper is not None:
        if opts.work is None:  # build() refuses this already; a MountOptions made by hand may not
            raise OptionError("upperdir and workdir must be given together")
        upper = _real(opts.upper, "upperdir")
        work = _real(opts.work, "workdir")
        if not os.access(upper, os.W_OK):
            raise OptionError("upperdir %s is not writable" % upper)
        if os.stat(upper).st_dev != os.stat(work).st_dev:
            raise OptionError("workdir %s is not on the same filesystem as upperdir %s" % (work, upper))
        leftovers = sorted(set(os.listdir(work)) - {"work", "index", "pyunionfs-index"})
        if leftovers:
            raise OptionError("workdir %s is not empty (holds %s)" % (work, leftovers[0]))
        for name in ("work", "index", "pyunionfs-index"):
            path = os.path.join(work, name)
            if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
                raise OptionError("workdir %s holds a %s that is not a directory" % (work, name))
        for what, path in layers:
            if _inside(upper, path) or _inside(path, upper):
                raise OptionError("upperdir %s and %s %s overlap" % (upper, what, path))
            if _inside(work, path) or _inside(path, work):
                raise OptionError("workdir %s and %s %s overlap" % (work, what, path))
        if _inside(work, upper) or _inside(upper, work):
            raise OptionError("workdir %s and upperdir %s overlap" % (work, upper))
        opts.upper, opts.work = upper, work
        layers.append(("upperdir", upper))
    opts.lowers = lowers
    if opts.mountpoint is None:
        raise OptionError("no mountpoint given")
    if not os.path.exists(opts.mountpoint):
        raise OptionError("mountpoint %s does not exist" % opts.mountpoint)
    if not os.path.isdir(opts.mountpoint):
        raise OptionError("mountpoint %s is not a directory" % opts.mountpoint)
    mnt = os.path.realpath(opts.mountpoint)
    if mnt in _mount_points():
        raise OptionError("mountpoint %s is already a mount point" % mnt)
    if opts.work is not None:
        layers.append(("workdir", opts.work))
    for what, path in layers:
        if _inside(mnt, path):
            # The daemon would reach its own mount through the layer and deadlock.
            raise OptionError("mountpoint %s is inside %s %s" % (mnt, what, path))
    opts.mountpoint = mnt
    if opts.logfile is not None:
        where = os.path.dirname(opts.logfile)
        if os.path.isdir(opts.logfile) or not os.path.isdir(where) or not os.access(where, os.W_OK):
            raise OptionError("cannot write the log file %s" % opts.logfile)
    return opts

"""`pyunionfs`: fuse-overlayfs's command line.

    pyunionfs [-f] [-d] [-o OPTS]... [SOURCE] MOUNTPOINT

Exit status: 0 once the mount is live (or, in the foreground, after a clean unmount); 1 when the layers
or the mountpoint are refused; 2 for a malformed command line. Every refusal is one line on stderr.

Start-up time counts: container engines exec the mount program for every container. So this module
imports only the option parser; the engine and the FUSE backend come with unionfs.fuse.daemon,
imported by main() only when a mount is to be made (trio later still: see fuse/native_backend.py), and
the collector is off until the mount is made (see main).
"""

import gc
import os
import sys

from . import __version__
from .options import OptionError, build, parse_o, validate

USAGE = "usage: pyunionfs [-f] [-d] [-o lowerdir=L1:L2,upperdir=U,workdir=W[,OPT...]] [SOURCE] MOUNTPOINT"

HELP = (
    USAGE
    + """

Mount the directories L1:L2:... (L1 on top) as one merged view at MOUNTPOINT, with the semantics of
the kernel's overlayfs: names resolve top-down; the upper layer U takes every change; a lower file is
copied up before it is changed; deleting a lower entry leaves a character device 0/0 (a whiteout) in U;
a directory marked opaque hides what lies below it. W is an empty directory on U's filesystem where
new entries are prepared before they are renamed into U. Without upperdir and workdir the union is
read-only. The layers written are the kernel's format: the kernel can mount them too.

OPTIONS
  -f                 stay in the foreground and log to stderr (SIGINT/SIGTERM unmount)
  -d                 debug log (implies -f)
  -o OPT[,OPT...]    mount options; several -o are merged:
       lowerdir=DIRS   lower layers, topmost first, separated by ':' (escape ':' and ',' with '\\')
       upperdir=DIR    the layer that takes every change
       workdir=DIR     staging directory on upperdir's filesystem, empty or left by an earlier mount
       userxattr       write opaque markers as user.overlay.opaque (default when not root:
                       trusted.overlay.opaque otherwise); both forms are always read
       whiteout_files=on|off
                       on (default, as fuse-overlayfs): .wh.NAME files and .wh..wh..opq in
                       every layer are whiteouts and opaque markers (containers-storage writes
                       them for mount programs), such names are hidden and cannot be made
                       (EINVAL); off: kernel-exact, they are ordinary names
       timeout=SECS    how long the kernel caches names and attributes (default 300)
       ro              read-only union, the upper shown as the topmost layer
       fsname=NAME     the source column of /proc/mounts (default: SOURCE, or overlay)
       logfile=PATH    where a background daemon logs (default: syslog through /dev/log)
       uidmapping=HOST:TO:LEN[:HOST:TO:LEN...], gidmapping=...
                       fuse-overlayfs's mapping: an id HOST+k in the layers shows as TO+k and a
                       caller TO+k writes HOST+k; ids outside every range are 65534
       squash_to_root, squash_to_uid=N, squash_to_gid=N
                       every entry shows as owned by 0 (or N); stored owners do not change
       redirect_dir=on|follow|off|nofollow
                       on: lower and merged directories rename by recording a redirect (the
                       kernel's format); off (default) and follow: follow the redirects a layer
                       holds (with user xattrs, off does not); nofollow: ignore them
       xattr_permissions=0|1|2
                       fuse-overlayfs's ownership records: 1 or 2 keep owners and modes in
                       security.fuseoverlayfs.override_stat (1) or user.containers.override_stat
                       (2) instead of chown/chmod; records in any layer are always read
       index=on|off    on: names of one lower file stay one file across copy-up, and files keep
                       their st_ino across copy-up and remount (pyunionfs's own index in
                       WORKDIR/pyunionfs-index)
       readahead=KIB   the mount's readahead (default 1020; as root, native backend); 128 is the
                       kernel's
       spin=US         native backend: how long the daemon polls for the next request before it
                       sleeps (default 50 microseconds; 0: it sleeps at once)
       metacopy=off, xino=off|auto
                       accepted: they are what pyunionfs does; other values are refused
       rw, noatime, nodev, nosuid, noexec, sync, lazytime, ...
                       generic mount options (mount.fuse3 forwards them) are accepted
  -h, --help         show this help
  -V, --version      show the version

  Started by root, the mount is made with allow_other,default_permissions: every user reaches it and
  the kernel checks permissions; new entries belong to the calling user.

EXIT STATUS
  0  the mount is live (the daemon went to the background), or a foreground daemon ended cleanly
  1  the layers, the mountpoint or the options were refused (one line on stderr; nothing written)
  2  a malformed command line

EXAMPLES
  pyunionfs -o lowerdir=lower,upperdir=upper,workdir=work merged
  mount -t fuse.pyunionfs overlay merged -o lowerdir=l1:l2,upperdir=upper,workdir=work
  fusermount3 -u merged

SEE ALSO
  pyunionfs-layer(diff, export, import), fuse-overlayfs(1), the kernel's overlayfs documentation.
"""
)


class UsageError(Exception):
    pass


def _say(text: str):
    """Print and exit 0; a reader that stops early (`pyunionfs --help | head`) is no error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(0)


def parse_argv(argv):
    """-> (MountOptions before validation). Raises UsageError or OptionError."""
    o_strings, positional = [], []
    foreground = debug = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            _say(HELP)
        if arg in ("-V", "--version"):
            _say("pyunionfs %s" % __version__)
        if arg == "-f":
            foreground = True
        elif arg == "-d":
            debug = foreground = True
        elif arg == "-o":
            if i + 1 >= len(args):
                raise UsageError("-o needs an argument")
            o_strings.append(args[i + 1])
            i += 1
        elif arg.startswith("-o"):
            o_strings.append(arg[2:])
        elif arg == "--":
            positional.extend(args[i + 1 :])
            break
        elif arg.startswith("-") and len(arg) > 1:
            raise UsageError("unknown flag %s" % arg)
        else:
            positional.append(arg)
        i += 1
    if not positional:
        raise UsageError("no mountpoint given")
    if len(positional) > 2:
        raise UsageError("too many arguments: %s" % " ".join(positional))
    opts = build(parse_o(o_strings))
    opts.mountpoint = positional[-1]  # a first positional is mount(8)'s SOURCE, shown as fsname
    if len(positional) == 2 and "fsname=" not in ",".join(o_strings):
        opts.fsname = positional[0]
    opts.foreground, opts.debug = foreground, debug
    return opts


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = validate(parse_argv(argv))
    except UsageError as exc:
        print("pyunionfs: %s (see pyunionfs --help)" % exc, file=sys.stderr)
        return 2
    except OptionError as exc:
        print("pyunionfs: %s" % exc, file=sys.stderr)
        return 1
    # The imports (the engine, the backend and what they take) make a few hundred thousand objects and hardly any
    # garbage: the collections they set off are all waste, 3% of the instructions up to the mount
    # (measured with callgrind). Off until the mount is made; daemon.run turns it back on before serving.
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        from .errors import MountError
        from .fuse.daemon import run  # the backend is imported only when mounting

        try:
            code = run(opts, gc_after_mount=gc_enabled)
        except MountError as exc:
            print("pyunionfs: %s" % exc, file=sys.stderr)
            return 1
    finally:
        if gc_enabled:
            gc.enable()
    _leave(code)


def _leave(code: int):
    """End the daemon once it has served: what it has to say is written, and it leaves without the
    interpreter's teardown (freeing every object one by one, ~4 ms of CPU after a container's unmount,
    when the container engine is still at work). Everything it wrote went to the layers unbuffered and
    its files and layers are closed by then; its worker threads are idle (no request is left)."""
    from . import logger

    logger.flush()
    if "logging" in sys.modules:
        import logging

        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())

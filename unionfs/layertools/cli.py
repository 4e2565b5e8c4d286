"""`pyunionfs-layer`: inspect and ship overlay layers (diff, export to an OCI layer tarball, import).

    pyunionfs-layer diff [--json] UPPER [LOWER...]
    pyunionfs-layer export [--gzip] [--names] [-q] UPPER OUT.tar[.gz]|-
    pyunionfs-layer import [--userxattr] [-q] IN.tar[.gz]|- LAYERDIR

Exit status: 0 on success, 1 on refused or bad input (one line on stderr), 2 for a malformed command line.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from typing import List, Optional, Tuple

from .. import __version__
from . import layerfs
from .layerfs import join
from .ocilayer import LayerError, Progress, export_layer, import_layer, open_output

PROG = "pyunionfs-layer"

DESCRIPTION = """\
Tools for the layers a union is made of, with the habits of the container ecosystem.

  diff    what an upper layer changes against its lowers, as `docker diff` prints it
  export  an upper layer as an OCI image layer tarball
  import  apply an OCI image layer tarball to a layer directory

Long work shows a progress line when stderr is a terminal; in scripts the tools stay quiet.
Run `pyunionfs-layer COMMAND --help` for each command's manual."""

DIFF_HELP = """\
Print what the upper layer UPPER changes against the lower layers LOWER... (topmost first, as in
lowerdir=), one line per path, sorted, `docker diff` style:

  A /path   added: the path does not exist in the lowers
  C /path   changed: the path exists in the lowers and UPPER has its own copy (this includes the
            directories above a change, which the union copied up, exactly as `docker diff` shows them)
  D /path   deleted: a whiteout (char 0/0 device or `.wh.NAME` file) hides it, or an opaque directory
            (trusted.overlay.opaque, user.overlay.opaque or `.wh..wh..opq`) hides it and UPPER does
            not add it again

Lowers may use any whiteout and opaque format (kernel, fuse-overlayfs, OCI `.wh.` files).

Without LOWER, only UPPER is read and the answer is a best guess: whiteouts are D; directories are C
(in an upper they are nearly always the copied-up parents of a change, or an opaque directory over a
lower one); a non-directory is C when it carries the kernel's copy-up record (trusted.overlay.origin
or user.overlay.origin), else A. Pass the lowers for an exact answer.

--json prints a JSON list of {"path", "change" (A/C/D), "kind" (docker's: 0 changed, 1 added,
2 deleted)} instead."""

EXPORT_HELP = """\
Write the upper layer UPPER as an OCI image layer tarball (PAX format) to OUT, or to stdout with `-`.
OUT is written beside itself and renamed into place, so it never exists half-written.

  whiteouts (char 0/0, or `.wh.NAME` already there)  ->  empty `.wh.NAME` files
  opaque directories                                ->  DIR/.wh..wh..opq right after DIR/
  owner (numeric), mode with setuid/setgid/sticky, mtime (nanoseconds in a PAX record when needed)
  xattrs                                            ->  SCHILY.xattr.NAME records, but never the
                                                        overlay's own trusted.overlay.* / user.overlay.*
  hard links                                        ->  tar hard links to the first name
  symlinks, fifos, block and character devices; sockets are left out with a warning

The output is reproducible: the same layer gives the same bytes (sorted entries, the layer root `./`
first, no atime/ctime, no user or group names unless --names, gzip header without time or name)."""

IMPORT_HELP = """\
Apply the OCI image layer tarball IN (plain, gzip, bzip2 or xz; `-` for stdin) to the layer directory
LAYERDIR, created if missing (usually new or empty). The result is a layer in the overlay's format:

  `.wh.NAME`      ->  NAME as a whiteout, character device 0/0 (as the kernel writes it)
  `.wh..wh..opq`  ->  the directory gets trusted.overlay.opaque=y (user.overlay.opaque=y with
                      --userxattr or when not run as root)

Refused, with one line on stderr and exit status 1: absolute names, `..` components, a whiteout name
used as a directory, hard links whose target is outside or missing, and any entry that would be written
through a symlink (from the tarball or already in LAYERDIR: symlinks are never followed; every
directory is opened relative to its parent with O_NOFOLLOW). Nothing is ever written outside LAYERDIR;
when LAYERDIR was new or empty, a failed import leaves it as it was. Owners are applied when run as
root; xattrs the filesystem refuses are skipped with a warning."""


def _fs(b: bytes) -> str:
    return os.fsdecode(b)


# --------------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------------

KIND_NUMBER = {"C": 0, "A": 1, "D": 2}
ORIGIN_XATTRS = (b"trusted.overlay.origin", b"user.overlay.origin")


def _has_origin(dir_fd: int, name: bytes) -> bool:
    path = layerfs.node_path(dir_fd, name)
    for x in ORIGIN_XATTRS:
        try:
            os.getxattr(path, x, follow_symlinks=False)
            return True
        except OSError:
            pass
    return False


def layer_diff(upper: str, lowers: List[str]) -> List[Tuple[str, bytes]]:
    """[(change, relpath)] sorted by path: what `upper` changes over the union of `lowers`."""
    out: List[Tuple[str, bytes]] = []
    ufd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        lfds = layerfs.lower_roots(lowers)
        try:
            # The merge of the root itself stops at the first opaque lower root.
            merged = []
            for fd in lfds:
                merged.append(fd)
                if layerfs.is_opaque(fd):
                    break
            _diff_dir(ufd, merged, b"", False, bool(lowers), out)
        finally:
            for fd in lfds:
                os.close(fd)
    finally:
        os.close(ufd)
    return out


def _diff_dir(ufd: int, lfds: List[int], rel: bytes, hidden: bool, known: bool, out: list) -> None:
    scan = layerfs.DirScan(ufd)
    hidden = hidden or scan.opaque  # the lowers' content of this directory no longer shows
    old = layerfs.merged_children(lfds) if lfds else {}
    try:
        names = set(scan.entries) | set(scan.whiteouts)
        if hidden:
            names |= set(old)
        for n in sorted(names):
            p = join(rel, n)
            st = scan.entries.get(n)
            o = old.get(n)
            if st is not None:
                is_dir = stat.S_ISDIR(st.st_mode)
                if known:
                    change = "C" if o is not None else "A"
                else:
                    change = "C" if is_dir or _has_origin(ufd, n) else "A"
                out.append((change, p))
                if is_dir:
                    cfd = layerfs.open_dir(n, ufd)
                    try:
                        child_lfds = o.fds if (o is not None and o.is_dir) else []
                        _diff_dir(cfd, child_lfds, p, hidden, known, out)
                    finally:
                        os.close(cfd)
            elif n in scan.whiteouts:
                if o is not None or not known:
                    out.append(("D", p))
            else:  # hidden by an opaque directory, not added again
                out.append(("D", p))
    finally:
        layerfs.close_all(old)


def cmd_diff(args) -> int:
    for d in [args.upper, *args.lowers]:
        if not os.path.isdir(d):
            raise LayerError(f"{d}: not a directory")
    changes = layer_diff(args.upper, args.lowers)
    if args.json:
        doc = [{"path": "/" + _fs(p), "change": c, "kind": KIND_NUMBER[c]} for c, p in changes]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        w = sys.stdout.buffer
        for c, p in changes:
            w.write(c.encode() + b" /" + p + b"\n")
        w.flush()
    return 0


# --------------------------------------------------------------------------------------------------
# export / import
# --------------------------------------------------------------------------------------------------


def cmd_export(args) -> int:
    if not os.path.isdir(args.upper):
        raise LayerError(f"{args.upper}: not a directory")
    gz = args.gzip or args.out.endswith((".gz", ".tgz"))
    if args.out != "-":
        up = os.path.realpath(args.upper)
        outdir = os.path.realpath(os.path.dirname(os.path.abspath(args.out)))
        if outdir == up or outdir.startswith(up.rstrip("/") + "/"):
            raise LayerError(f"{args.out}: the tarball must not be written inside the layer it exports")
    elif sys.stdout.isatty():
        raise LayerError("refusing to write a tarball to a terminal (redirect stdout or give OUT)")
    progress = Progress("export", enabled=False if args.quiet else None)
    out, commit, abort = open_output(args.out)
    try:
        export_layer(args.upper, out, gzip_out=gz, names=args.names, progress=progress)
        commit()
    except BaseException:
        abort()
        raise
    return 0


def cmd_import(args) -> int:
    progress = Progress("import", enabled=False if args.quiet else None)
    if args.tarball == "-":
        import_layer(sys.stdin.buffer, args.layerdir, userxattr=args.userxattr, progress=progress)
        return 0
    try:
        f = open(args.tarball, "rb")
    except OSError as exc:
        raise LayerError(f"{args.tarball}: {exc.strerror}") from None
    with f:
        import_layer(f, args.layerdir, userxattr=args.userxattr, progress=progress)
    return 0


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, formatter_class=fmt)
    p.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser(
        "diff", help="what an upper changes against its lowers", description=DIFF_HELP, formatter_class=fmt
    )
    d.add_argument("--json", action="store_true", help="print a JSON list")
    d.add_argument("upper", metavar="UPPER")
    d.add_argument("lowers", metavar="LOWER", nargs="*", help="lower layers, topmost first")
    d.set_defaults(func=cmd_diff)

    e = sub.add_parser("export", help="an upper as an OCI layer tarball", description=EXPORT_HELP, formatter_class=fmt)
    e.add_argument("--gzip", "-z", action="store_true", help="gzip the tarball (implied by a .gz/.tgz name)")
    e.add_argument("--names", action="store_true", help="also record user and group names")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress line even on a terminal")
    e.add_argument("upper", metavar="UPPER")
    e.add_argument("out", metavar="OUT", help="OUT.tar, OUT.tar.gz, or - for stdout")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser(
        "import", help="apply an OCI layer tarball to a layer directory", description=IMPORT_HELP, formatter_class=fmt
    )
    i.add_argument(
        "--userxattr",
        action="store_true",
        help="mark opaque directories with user.overlay.opaque (default when not root)",
    )
    i.add_argument("--quiet", "-q", action="store_true", help="no progress line even on a terminal")
    i.add_argument("tarball", metavar="IN", help="IN.tar[.gz], or - for stdin")
    i.add_argument("layerdir", metavar="LAYERDIR")
    i.set_defaults(func=cmd_import)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LayerError as exc:
        sys.stderr.write(f"{PROG}: {args.command}: {exc}\n")
        return 1
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        where = f": {os.fsdecode(exc.filename)}" if getattr(exc, "filename", None) else ""
        sys.stderr.write(f"{PROG}: {args.command}: {exc.strerror or exc}{where}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())

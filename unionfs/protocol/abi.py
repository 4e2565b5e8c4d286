"""The kernel's FUSE ABI: opcodes, flags and the byte layout of requests and replies.

Facts from linux/fuse.h (ABI 7.38 as linux-libc-dev ships it, and the kernel's own header for 7.39 to
7.43). Little-endian, as on every machine this runs on. Structures are precompiled `struct.Struct`s; the
packers here build whole reply bodies (fuse_attr, fuse_entry_out, dirents ...) from plain integers.
Imports nothing but `struct`, `os` and `stat`: a mount program loads this module before its first
request.
"""

import os
import struct

# The version we speak. The kernel offers its own in INIT; both then use the smaller minor.
KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 41

ROOT_ID = 1

# ------------------------------------------------------------------ opcodes

LOOKUP = 1
FORGET = 2  # no reply
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
GETLK = 31
SETLK = 32
SETLKW = 33
ACCESS = 34
CREATE = 35
INTERRUPT = 36
BMAP = 37
DESTROY = 38
IOCTL = 39
POLL = 40
NOTIFY_REPLY = 41
BATCH_FORGET = 42  # no reply
FALLOCATE = 43
READDIRPLUS = 44
RENAME2 = 45
LSEEK = 46
COPY_FILE_RANGE = 47
SETUPMAPPING = 48
REMOVEMAPPING = 49
SYNCFS = 50
TMPFILE = 51
STATX = 52  # 7.39
CUSE_INIT = 4096

_OPCODES = (
    "LOOKUP FORGET GETATTR SETATTR READLINK SYMLINK MKNOD MKDIR UNLINK RMDIR RENAME LINK OPEN READ WRITE STATFS "
    "RELEASE FSYNC SETXATTR GETXATTR LISTXATTR REMOVEXATTR FLUSH INIT OPENDIR READDIR RELEASEDIR FSYNCDIR GETLK "
    "SETLK SETLKW ACCESS CREATE INTERRUPT BMAP DESTROY IOCTL POLL NOTIFY_REPLY BATCH_FORGET FALLOCATE READDIRPLUS "
    "RENAME2 LSEEK COPY_FILE_RANGE SETUPMAPPING REMOVEMAPPING SYNCFS TMPFILE STATX CUSE_INIT"
)
OPCODE_NAMES = {globals()[name]: name for name in _OPCODES.split()}


def opcode_name(opcode: int) -> str:
    return OPCODE_NAMES.get(opcode, f"opcode {opcode}")


# Notification codes (fuse_out_header.error of a message with unique 0)
NOTIFY_POLL = 1
NOTIFY_INVAL_INODE = 2
NOTIFY_INVAL_ENTRY = 3
NOTIFY_STORE = 4
NOTIFY_RETRIEVE = 5
NOTIFY_DELETE = 6
NOTIFY_RESEND = 7  # 7.40

# ------------------------------------------------------------------ INIT flags (64 bits; 32..63 travel in flags2)

ASYNC_READ = 1 << 0
POSIX_LOCKS = 1 << 1
FILE_OPS = 1 << 2
ATOMIC_O_TRUNC = 1 << 3
EXPORT_SUPPORT = 1 << 4
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6
SPLICE_WRITE = 1 << 7
SPLICE_MOVE = 1 << 8
SPLICE_READ = 1 << 9
FLOCK_LOCKS = 1 << 10
HAS_IOCTL_DIR = 1 << 11
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
NO_OPEN_SUPPORT = 1 << 17
PARALLEL_DIROPS = 1 << 18
HANDLE_KILLPRIV = 1 << 19
POSIX_ACL = 1 << 20
ABORT_ERROR = 1 << 21
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24
EXPLICIT_INVAL_DATA = 1 << 25
MAP_ALIGNMENT = 1 << 26
SUBMOUNTS = 1 << 27
HANDLE_KILLPRIV_V2 = 1 << 28
SETXATTR_EXT = 1 << 29
INIT_EXT = 1 << 30
INIT_RESERVED = 1 << 31
SECURITY_CTX = 1 << 32
HAS_INODE_DAX = 1 << 33
CREATE_SUPP_GROUP = 1 << 34
HAS_EXPIRE_ONLY = 1 << 35
DIRECT_IO_ALLOW_MMAP = 1 << 36  # 7.39
PASSTHROUGH = 1 << 37  # 7.40
NO_EXPORT_SUPPORT = 1 << 38  # 7.40
HAS_RESEND = 1 << 39  # 7.40
ALLOW_IDMAP = 1 << 40  # 7.41
OVER_IO_URING = 1 << 41  # 7.42
REQUEST_TIMEOUT = 1 << 42  # 7.43

INIT_FLAG_NAMES = {
    1 << bit: name
    for name, bit in (
        ("ASYNC_READ", 0),
        ("POSIX_LOCKS", 1),
        ("FILE_OPS", 2),
        ("ATOMIC_O_TRUNC", 3),
        ("EXPORT_SUPPORT", 4),
        ("BIG_WRITES", 5),
        ("DONT_MASK", 6),
        ("SPLICE_WRITE", 7),
        ("SPLICE_MOVE", 8),
        ("SPLICE_READ", 9),
        ("FLOCK_LOCKS", 10),
        ("HAS_IOCTL_DIR", 11),
        ("AUTO_INVAL_DATA", 12),
        ("DO_READDIRPLUS", 13),
        ("READDIRPLUS_AUTO", 14),
        ("ASYNC_DIO", 15),
        ("WRITEBACK_CACHE", 16),
        ("NO_OPEN_SUPPORT", 17),
        ("PARALLEL_DIROPS", 18),
        ("HANDLE_KILLPRIV", 19),
        ("POSIX_ACL", 20),
        ("ABORT_ERROR", 21),
        ("MAX_PAGES", 22),
        ("CACHE_SYMLINKS", 23),
        ("NO_OPENDIR_SUPPORT", 24),
        ("EXPLICIT_INVAL_DATA", 25),
        ("MAP_ALIGNMENT", 26),
        ("SUBMOUNTS", 27),
        ("HANDLE_KILLPRIV_V2", 28),
        ("SETXATTR_EXT", 29),
        ("INIT_EXT", 30),
        ("INIT_RESERVED", 31),
        ("SECURITY_CTX", 32),
        ("HAS_INODE_DAX", 33),
        ("CREATE_SUPP_GROUP", 34),
        ("HAS_EXPIRE_ONLY", 35),
        ("DIRECT_IO_ALLOW_MMAP", 36),
        ("PASSTHROUGH", 37),
        ("NO_EXPORT_SUPPORT", 38),
        ("HAS_RESEND", 39),
        ("ALLOW_IDMAP", 40),
        ("OVER_IO_URING", 41),
        ("REQUEST_TIMEOUT", 42),
    )
}

# The minor that introduced each flag: a flag is never agreed below it (a kernel never offers one
# early, but a fake or buggy peer could offer bits it cannot mean).
FLAG_MINOR = {
    ASYNC_READ: 6,
    POSIX_LOCKS: 7,
    ATOMIC_O_TRUNC: 9,
    EXPORT_SUPPORT: 10,
    BIG_WRITES: 9,
    DONT_MASK: 12,
    SPLICE_WRITE: 14,
    SPLICE_MOVE: 14,
    SPLICE_READ: 14,
    FLOCK_LOCKS: 17,
    HAS_IOCTL_DIR: 18,
    AUTO_INVAL_DATA: 20,
    DO_READDIRPLUS: 21,
    READDIRPLUS_AUTO: 21,
    ASYNC_DIO: 22,
    WRITEBACK_CACHE: 23,
    NO_OPEN_SUPPORT: 23,
    PARALLEL_DIROPS: 25,
    HANDLE_KILLPRIV: 26,
    POSIX_ACL: 26,
    ABORT_ERROR: 27,
    MAX_PAGES: 28,
    CACHE_SYMLINKS: 28,
    NO_OPENDIR_SUPPORT: 29,
    EXPLICIT_INVAL_DATA: 30,
    MAP_ALIGNMENT: 31,
    SUBMOUNTS: 32,
    HANDLE_KILLPRIV_V2: 33,
    SETXATTR_EXT: 33,
    INIT_EXT: 36,
    SECURITY_CTX: 38,  # 7.36 and 7.37 sent the context as an argument of its own; 7.38 as an extension
    HAS_INODE_DAX: 36,
    CREATE_SUPP_GROUP: 38,
    HAS_EXPIRE_ONLY: 38,
    DIRECT_IO_ALLOW_MMAP: 39,
    PASSTHROUGH: 40,
    NO_EXPORT_SUPPORT: 40,
    HAS_RESEND: 40,
    ALLOW_IDMAP: 41,
    OVER_IO_URING: 42,
    REQUEST_TIMEOUT: 43,
}

# What a session asks for unless told otherwise: only flags whose meaning needs nothing more from the
# filesystem than the Operations methods it has (see session.Session).
DEFAULT_INIT_FLAGS = (
    ASYNC_READ
    | ATOMIC_O_TRUNC
    | BIG_WRITES
    | AUTO_INVAL_DATA
    | DO_READDIRPLUS
    | READDIRPLUS_AUTO
    | ASYNC_DIO
    | PARALLEL_DIROPS
    | MAX_PAGES
)


def flag_names(flags: int) -> str:
    """'ASYNC_READ|BIG_WRITES|...' for a log line."""
    names = [INIT_FLAG_NAMES.get(1 << b, f"bit{b}") for b in range(64) if flags >> b & 1]
    return "|".join(names) or "0"


# ------------------------------------------------------------------ other flag words

# fuse_setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_STREAM = 1 << 4
FOPEN_NOFLUSH = 1 << 5
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6
FOPEN_PASSTHROUGH = 1 << 7

# fuse_open_in.open_flags / fuse_create_in.open_flags (7.33)
OPEN_KILL_SUIDGID = 1 << 0
# fuse_setxattr_in.setxattr_flags (7.33, with SETXATTR_EXT)
SETXATTR_ACL_KILL_SGID = 1 << 0
# fuse_release_in.release_flags
RELEASE_FLUSH = 1 << 0
RELEASE_FLOCK_UNLOCK = 1 << 1
# fuse_getattr_in.getattr_flags
GETATTR_FH = 1 << 0
# fuse_write_in.write_flags
WRITE_CACHE = 1 << 0
WRITE_LOCKOWNER = 1 << 1
WRITE_KILL_SUIDGID = 1 << 2
# fuse_read_in.read_flags
READ_LOCKOWNER = 1 << 1
# fuse_fsync_in.fsync_flags
FSYNC_FDATASYNC = 1 << 0
# fuse_attr.flags
ATTR_SUBMOUNT = 1 << 0
ATTR_DAX = 1 << 1
# fuse_notify_inval_entry_out.flags (7.38)
EXPIRE_ONLY = 1 << 0

# ioctls on the /dev/fuse fd (7.40, root only): register a backing file for FOPEN_PASSTHROUGH, by
# struct fuse_backing_map {s32 fd; u32 flags; u64 padding} -> a backing id; close one by its id (u32).
DEV_IOC_BACKING_OPEN = (1 << 30) | (16 << 16) | (229 << 8) | 1  # _IOW(229, 1, struct fuse_backing_map)
DEV_IOC_BACKING_CLOSE = (1 << 30) | (4 << 16) | (229 << 8) | 2  # _IOW(229, 2, uint32_t)
BACKING_MAP = struct.Struct("<iIQ")
# The deepest stack a kernel lets a filesystem make (FILESYSTEM_MAX_STACK_DEPTH)
MAX_STACK_DEPTH = 2

# The kernel refuses a read buffer smaller than this, and than header + write_in + max_write.
MIN_READ_BUFFER = 8192

# ------------------------------------------------------------------ structures

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
IN_HEAD = struct.Struct("<IIQQ12xH2x")  # the same header's len opcode unique nodeid total_extlen
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
assert IN_HEADER.size == IN_HEAD.size == 40 and OUT_HEADER.size == 16

# fuse_attr: ino size blocks atime mtime ctime (u64; times signed in practice), atimensec mtimensec
# ctimensec mode nlink uid gid rdev blksize flags (u32)
ATTR_FMT = "QQQqqqIIIIIIIIII"
ATTR = struct.Struct("<" + ATTR_FMT)
assert ATTR.size == 88
COMPAT_ATTR_SIZE = 80  # before 7.9: no blksize, and padding where flags is
ENTRY_OUT = struct.Struct("<QQQQII" + ATTR_FMT)  # nodeid generation entry_valid attr_valid (+nsecs) attr
ATTR_OUT = struct.Struct("<QII" + ATTR_FMT)  # attr_valid attr_valid_nsec dummy attr
assert ENTRY_OUT.size == 128 and ATTR_OUT.size == 104
COMPAT_ENTRY_OUT_SIZE = 120
COMPAT_ATTR_OUT_SIZE = 96
OPEN_OUT = struct.Struct("<QII")  # fh open_flags backing_id (padding before 7.40)
KSTATFS = struct.Struct("<QQQQQIIII24x")  # blocks bfree bavail files ffree bsize namelen frsize padding spare
assert KSTATFS.size == 80
COMPAT_STATFS_SIZE = 48
WRITE_OUT = struct.Struct("<II")
GETXATTR_OUT = struct.Struct("<II")
LSEEK_OUT = struct.Struct("<Q")
DIRENT = struct.Struct("<QQII")  # ino off namelen type, then the name, padded to 8
DIRENT_SIZE = DIRENT.size  # 24
DIRENTPLUS = struct.Struct("<QQQQII" + ATTR_FMT + "QQII")  # entry_out and dirent, packed at once
DIRENT_PADS = tuple(b"\0" * n for n in range(8))  # the zeros after a name, by their count

INIT_IN = struct.Struct("<IIIII44x")  # major minor max_readahead flags flags2 unused[11]
INIT_IN_MIN = 8  # major and minor: every kernel sends them
# major minor max_readahead flags max_background congestion_threshold max_write time_gran max_pages
# map_alignment flags2 max_stack_depth request_timeout unused[11]
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")
assert INIT_IN.size == 64 and INIT_OUT.size == 64
COMPAT_INIT_OUT_SIZE = 8  # before 7.5
COMPAT_22_INIT_OUT_SIZE = 24  # before 7.23

FORGET_IN = struct.Struct("<Q")
FORGET_ONE = struct.Struct("<QQ")
BATCH_FORGET_IN = struct.Struct("<II")
GETATTR_IN = struct.Struct("<IIQ")  # getattr_flags dummy fh (7.9)
# valid padding fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec mode unused4 uid gid unused5
SETATTR_IN = struct.Struct("<IIQQQqqqIIIIIIII")
assert SETATTR_IN.size == 88
MKNOD_IN = struct.Struct("<IIII")  # mode rdev umask padding
COMPAT_MKNOD_IN = struct.Struct("<II")  # mode rdev: before 7.12
MKDIR_IN = struct.Struct("<II")  # mode umask
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")  # newdir flags padding
LINK_IN = struct.Struct("<Q")
OPEN_IN = struct.Struct("<II")  # flags open_flags
CREATE_IN = struct.Struct("<IIII")  # flags mode umask open_flags
RELEASE_IN = struct.Struct("<QIIQ")  # fh flags release_flags lock_owner
FLUSH_IN = struct.Struct("<QIIQ")  # fh unused padding lock_owner
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
COMPAT_READ_IN_SIZE = 24
WRITE_IN = struct.Struct("<QQIIQII")  # fh offset size write_flags lock_owner flags padding
COMPAT_WRITE_IN_SIZE = 24
FSYNC_IN = struct.Struct("<QII")  # fh fsync_flags padding
SETXATTR_IN = struct.Struct("<IIII")  # size flags setxattr_flags padding (SETXATTR_EXT)
COMPAT_SETXATTR_IN = struct.Struct("<II")  # size flags: without SETXATTR_EXT
GETXATTR_IN = struct.Struct("<II")  # size padding
ACCESS_IN = struct.Struct("<II")  # mask padding
INTERRUPT_IN = struct.Struct("<Q")
FALLOCATE_IN = struct.Struct("<QQQII")  # fh offset length mode padding
LSEEK_IN = struct.Struct("<QQII")  # fh offset whence padding
COPY_FILE_RANGE_IN = struct.Struct("<QQQQQQQ")  # fh_in off_in nodeid_out fh_out off_out len flags

NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")  # ino off len
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("<QII")  # parent namelen flags
NOTIFY_DELETE_OUT = struct.Struct("<QQII")  # parent child namelen padding
NOTIFY_STORE_OUT = struct.Struct("<QQII")  # nodeid offset size padding

# Reply header and fixed body in one pack: one call, one bytes object, one write(2)
ENTRY_REPLY = struct.Struct("<IiQQQQQII" + ATTR_FMT)
ATTR_REPLY = struct.Struct("<IiQQII" + ATTR_FMT)
OPEN_REPLY = struct.Struct("<IiQQII")
WRITE_REPLY = struct.Struct("<IiQII")
GETXATTR_REPLY = struct.Struct("<IiQII")
LSEEK_REPLY = struct.Struct("<IiQQ")
STATFS_REPLY = struct.Struct("<IiQQQQQQIIII24x")
assert ENTRY_REPLY.size == 16 + 128 and ATTR_REPLY.size == 16 + 104 and STATFS_REPLY.size == 16 + 80

_NS = 1_000_000_000


def split_ns(ns: int):
    """(seconds, nanoseconds) of a time in ns; negative times floor, as a timespec does."""
    return divmod(ns, _NS)


_timeouts = {}


def split_timeout(seconds: float):
    """A cache timeout in seconds as fuse's (u64 seconds, u32 ns); negative counts as 0."""
    try:
        return _timeouts[seconds]
    except (KeyError, TypeError):
        pass
    if seconds is None or seconds <= 0:
        pair = (0, 0)
    else:
        whole = int(seconds)
        pair = (whole, min(int(round((seconds - whole) * _NS)), _NS - 1))
    if len(_timeouts) < 64:
        _timeouts[seconds] = pair
    return pair


def encode_dev(dev: int) -> int:
    """A dev_t as the kernel's 32-bit new_encode_dev (fuse_attr.rdev)."""
    if dev < (1 << 20):  # glibc's and the kernel's encodings agree for major < 4096, minor < 256
        return dev
    major, minor = os.major(dev), os.minor(dev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def decode_dev(dev: int) -> int:
    """The kernel's 32-bit new_encode_dev (fuse_mknod_in.rdev) as this system's dev_t."""
    return os.makedev((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))


def attr_fields(e) -> tuple:
    """The fuse_attr fields of an Entry-like object (ino mode nlink uid gid rdev size blocks blksize
    atime_ns mtime_ns ctime_ns attr_flags), in struct order."""
    a_s, a_n = divmod(e.atime_ns, _NS)
    m_s, m_n = divmod(e.mtime_ns, _NS)
    c_s, c_n = divmod(e.ctime_ns, _NS)
    rdev = e.rdev
    if rdev >= (1 << 20):
        rdev = encode_dev(rdev)
    return (
        e.ino,
        e.size,
        e.blocks,
        a_s,
        m_s,
        c_s,
        a_n,
        m_n,
        c_n,
        e.mode,
        e.nlink,
        e.uid,
        e.gid,
        rdev,
        e.blksize,
        e.attr_flags,
    )


def pack_attr(e) -> bytes:
    """struct fuse_attr of an Entry-like object."""
    return ATTR.pack(*attr_fields(e))


def pack_entry_out(e) -> bytes:
    """struct fuse_entry_out of an Entry-like object (node, generation, entry/attr timeouts, attr)."""
    ev, evn = split_timeout(e.entry_timeout)
    av, avn = split_timeout(e.attr_timeout)
    return ENTRY_OUT.pack(e.node, e.generation, ev, av, evn, avn, *attr_fields(e))


def pack_attr_out(e) -> bytes:
    """struct fuse_attr_out of an Entry-like object."""
    av, avn = split_timeout(e.attr_timeout)
    return ATTR_OUT.pack(av, avn, 0, *attr_fields(e))


def pack_open_out(fh: int, open_flags: int = 0, backing_id: int = 0) -> bytes:
    return OPEN_OUT.pack(fh, open_flags, backing_id)


def dirent_size(namelen: int) -> int:
    return (DIRENT_SIZE + namelen + 7) & ~7


def direntplus_size(namelen: int) -> int:
    return (ENTRY_OUT.size + DIRENT_SIZE + namelen + 7) & ~7


def pack_dirent(ino: int, off: int, name: bytes, mode: int) -> bytes:
    """struct fuse_dirent with its name and the padding to 8 bytes; the type is the mode's S_IFMT >> 12."""
    n = len(name)
    return DIRENT.pack(ino, off, n, (mode & 0o170000) >> 12) + name + b"\0" * (-(DIRENT_SIZE + n) & 7)


def pack_direntplus(e, off: int, name: bytes) -> bytes:
    """struct fuse_direntplus: the entry_out of *e*, then the dirent (ino and type from e)."""
    n = len(name)
    return (
        pack_entry_out(e)
        + DIRENT.pack(e.ino, off, n, (e.mode & 0o170000) >> 12)
        + name
        + b"\0" * (-(DIRENT_SIZE + n) & 7)
    )


def pack_in_header(length, opcode, unique, nodeid, uid=0, gid=0, pid=0, total_extlen=0) -> bytes:
    return IN_HEADER.pack(length, opcode, unique, nodeid, uid, gid, pid, total_extlen, 0)


def request(opcode: int, unique: int, nodeid: int, body: bytes = b"", uid=0, gid=0, pid=0) -> bytes:
    """A whole request as the kernel writes it (for tests and fakes of the device)."""
    return pack_in_header(IN_HEADER.size + len(body), opcode, unique, nodeid, uid, gid, pid) + body


def reply_header(error: int, unique: int, body_len: int = 0) -> bytes:
    """fuse_out_header; *error* is 0 or a negative errno."""
    return OUT_HEADER.pack(OUT_HEADER.size + body_len, error, unique)

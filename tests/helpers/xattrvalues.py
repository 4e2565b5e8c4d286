"""Binary xattr values the tests set: an ACL and a file capability, in the kernel's formats."""

import struct

CAP = "security.capability"
# struct vfs_cap_data, revision 2: magic|effective, then permitted and inheritable (low, high)
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
# An access or default ACL (system.posix_acl_*): version 2, then (tag, perm, id):
# user::rwx user:1234:rwx group::r-x mask::rwx other::r-x
ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, ident)
    for tag, perm, ident in (
        (1, 7, 0xFFFFFFFF),
        (2, 7, 1234),
        (4, 5, 0xFFFFFFFF),
        (16, 7, 0xFFFFFFFF),
        (32, 5, 0xFFFFFFFF),
    )
)

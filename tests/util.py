"""The test helpers' names in one place (`from tests.util import ...`); each lives in a module of
tests/helpers with one job:

- mounting: skip reasons; pyunionfs, kernel overlayfs and fuse-overlayfs mounted for a block;
- mounttable: the mount table, mounts under a directory, unmounting;
- layers: layer directories from a layer description (unionfs.embed.layerspec), copies of them;
- snapshots: tree snapshots, tree hashes, their differences;
- processes: the daemons a test started (by their mount point under its directory), and only those;
- cli: what the command-line tests share.
"""

from tests.helpers.layers import (
    DIR,
    WHITEOUT,
    Dir,
    Fifo,
    File,
    Hardlink,
    Layers,
    Opaque,
    Symlink,
    copy_layers,
    make_layers,
)
from tests.helpers.mounting import (
    FUSE_SKIP_REASON,
    Daemon,
    KernelMount,
    escape_layer_path,
    kernel_overlay_skip_reason,
    mount_fuse_overlayfs,
    mount_kernel_overlay,
    mount_pyunionfs,
    overlay_options,
)
from tests.helpers.mounttable import (
    FUSERMOUNT,
    MountEntry,
    is_mountpoint,
    mount_entry,
    mount_table,
    mounts_under,
    unmount,
)
from tests.helpers.snapshots import (
    KERNEL_BOOKKEEPING_XATTRS,
    Entry,
    diff_snapshots,
    entry_of,
    hash_tree,
    tree_snapshot,
)

__all__ = [
    "FUSE_SKIP_REASON",
    "kernel_overlay_skip_reason",
    "mount_pyunionfs",
    "mount_kernel_overlay",
    "mount_fuse_overlayfs",
    "Daemon",
    "KernelMount",
    "FUSERMOUNT",
    "MountEntry",
    "mount_table",
    "mount_entry",
    "mounts_under",
    "is_mountpoint",
    "unmount",
    "escape_layer_path",
    "overlay_options",
    "tree_snapshot",
    "entry_of",
    "hash_tree",
    "diff_snapshots",
    "Entry",
    "KERNEL_BOOKKEEPING_XATTRS",
    "make_layers",
    "copy_layers",
    "Layers",
    "DIR",
    "WHITEOUT",
    "File",
    "Dir",
    "Symlink",
    "Opaque",
    "Fifo",
    "Hardlink",
]

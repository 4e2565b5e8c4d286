"""The request layer (unionfs/fuse/requests.py) called directly on plain directories: no FUSE, no mount."""

import errno
import logging
import os
import stat
import threading

import pytest
import trio
import trio.testing

from unionfs.engine import UnionEngine
from unionfs.engine.copyup import CopyUpJob
from unionfs.engine.idmap import IdMap
from unionfs.fuse import requests as requests_mod
from unionfs.fuse.requests import Context, Entry, Opened, SetAttr, Statfs, UnionRequests

ROOT_ID = 1
ROOT = Context(0, 0, 1, 0o022)


def write(path, data=b"", mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


@pytest.fixture
def layers(tmp_path):
    """lower (read-only), upper, work; returns a function that opens a UnionRequests over them."""
    dirs = {name: str(tmp_path / name) for name in ("lower", "upper", "work")}
    for d in dirs.values():
        os.mkdir(d)
    opened = []

    def open_requests(timeout=300.0, **kw):
        union = UnionEngine([dirs["lower"]], dirs["upper"], dirs["work"])
        opened.append(union)
        return UnionRequests(union, timeout=timeout, **kw)

    open_requests.dirs = dirs
    yield open_requests
    for union in opened:
        union.close()


def run(fn, *args):
    return trio.run(fn, *args)


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as exc:
        run(fn, *args)
    return exc.value.errno


def test_lookup_and_getattr_give_plain_records(layers):
    write(f"{layers.dirs['lower']}/f", b"hello", mode=0o640)
    os.chown(f"{layers.dirs['lower']}/f", 1000, 1001)
    r = layers(timeout=7.0)
    entry = run(r.lookup, ROOT_ID, b"f")
    st = os.lstat(f"{layers.dirs['lower']}/f")
    assert isinstance(entry, Entry)
    # node ids are the table's own (separate_ids, the native backend's), st_ino the backing file's
    assert entry.node_id not in (0, ROOT_ID) and entry.st_ino == st.st_ino
    assert entry.generation == 0
    assert (entry.mode, entry.nlink, entry.uid, entry.gid, entry.size) == (stat.S_IFREG | 0o640, 1, 1000, 1001, 5)
    assert (entry.atime_ns, entry.mtime_ns, entry.ctime_ns) == (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
    assert (entry.blksize, entry.blocks, entry.rdev) == (st.st_blksize, st.st_blocks, 0)
    assert (entry.entry_timeout, entry.attr_timeout) == (7.0, 7.0)
    assert run(r.getattr, entry.node_id) == entry
    with pytest.raises(AttributeError):
        entry.size = 0  # frozen
    root = run(r.getattr, ROOT_ID)
    assert root.node_id == ROOT_ID and stat.S_ISDIR(root.mode)


def test_negative_lookup_is_an_entry_with_no_node(layers):
    r = layers(timeout=9.0)
    entry = run(r.lookup, ROOT_ID, b"absent")
    assert entry.node_id == 0 and entry.st_ino == 0 and entry.mode == 0
    assert entry.entry_timeout == 9.0  # the absence is cached as long as a name


def test_names_of_a_lower_hard_link_are_separate_node_ids_sharing_one_st_ino(layers):
    lower = layers.dirs["lower"]
    write(f"{lower}/a", b"linked")
    os.link(f"{lower}/a", f"{lower}/b")
    r = layers()

    async def scenario():
        a, b = await r.lookup(ROOT_ID, b"a"), await r.lookup(ROOT_ID, b"b")
        assert a.node_id != b.node_id and a.st_ino == b.st_ino == os.lstat(f"{lower}/a").st_ino
        assert a.nlink == 2 and a.entry_timeout == b.entry_timeout == 300.0 and a.attr_timeout == 0
        assert (await r.lookup(ROOT_ID, b"b")).node_id == b.node_id  # a name keeps its node id
        # a change through b copies b up (not the name looked up last), as the kernel
        opened = await r.open(b.node_id, os.O_WRONLY | os.O_TRUNC)
        await r.write(opened.fh, 0, b"mine")
        await r.release(opened.fh)
        # split: b shows its upper copy's number, a its lower file's, under their node ids
        b2, a2 = await r.getattr(b.node_id), await r.getattr(a.node_id)
        assert b2.st_ino == os.lstat(f"{layers.dirs['upper']}/b").st_ino and b2.size == 4 and b2.nlink == 1
        assert a2.st_ino == a.st_ino and a2.size == 6
        assert (await r.lookup(ROOT_ID, b"a")).node_id == a.node_id
        # a rename between two names of one lower file reaches the union: the source is copied up
        write(f"{lower}/c", b"c")
        os.link(f"{lower}/c", f"{lower}/d")
        c, d = await r.lookup(ROOT_ID, b"c"), await r.lookup(ROOT_ID, b"d")
        await r.rename(ROOT_ID, b"d", ROOT_ID, b"c", 0)
        assert (await r.lookup(ROOT_ID, b"d")).node_id == 0
        assert (await r.getattr(d.node_id)).st_ino == os.lstat(f"{layers.dirs['upper']}/c").st_ino
        assert (await r.lookup(ROOT_ID, b"c")).node_id == d.node_id  # the moved inode has the name now
        await r.forget([(c.node_id, 1)])

    run(scenario)


def test_without_separate_ids_names_of_a_lower_hard_link_share_a_node_id(layers):
    # pyfuse3's way: st_ino is the node id; a zero entry timeout makes the kernel ask for each name
    # every time, so the daemon knows which name is being changed.
    lower = layers.dirs["lower"]
    write(f"{lower}/a", b"linked")
    os.link(f"{lower}/a", f"{lower}/b")
    write(f"{lower}/single", b"s")
    r = layers()
    r.nodes.separate_ids = False
    a = run(r.lookup, ROOT_ID, b"a")
    assert a.nlink == 2 and a.node_id == a.st_ino == run(r.lookup, ROOT_ID, b"b").node_id
    assert a.entry_timeout == 0 and a.attr_timeout == 300.0
    assert run(r.lookup, ROOT_ID, b"single").entry_timeout == 300.0


def test_ids_are_shown_and_stored_through_the_maps(layers):
    write(f"{layers.dirs['lower']}/f", b"x")
    os.chown(f"{layers.dirs['lower']}/f", 100000, 100000)
    r = layers(uid_map=IdMap.parse("100000:0:65536", "uidmapping"), gid_map=IdMap.parse("100000:0:65536", "gidmapping"))
    entry = run(r.lookup, ROOT_ID, b"f")
    assert (entry.uid, entry.gid) == (0, 0)
    created = run(r.mkdir, ROOT_ID, b"d", 0o755, Context(5, 6))
    assert (created.uid, created.gid) == (5, 6)
    st = os.lstat(f"{layers.dirs['upper']}/d")
    assert (st.st_uid, st.st_gid) == (100005, 100006)  # stored as the host ids
    after = run(r.setattr, entry.node_id, SetAttr(uid=7), None)
    assert after.uid == 7 and os.lstat(f"{layers.dirs['upper']}/f").st_uid == 100007


def test_create_write_read_release(layers):
    r = layers()

    async def scenario():
        opened, entry = await r.create(ROOT_ID, b"new", stat.S_IFREG | 0o644, os.O_RDWR | os.O_CREAT, ROOT)
        assert isinstance(opened, Opened) and opened.fh > 0 and opened.keep_cache and not opened.direct_io
        assert stat.S_ISREG(entry.mode) and entry.size == 0
        assert await r.write(opened.fh, 0, b"hello world") == 11
        assert await r.read(opened.fh, 6, 100) == b"world"
        await r.fsync(opened.fh, False)
        await r.release(opened.fh)
        again = await r.lookup(ROOT_ID, b"new")
        assert again.node_id == entry.node_id and again.size == 11
        reopened = await r.open(entry.node_id, os.O_RDONLY)
        assert reopened.fh != opened.fh
        assert await r.read(reopened.fh, 0, 5) == b"hello"
        await r.release(reopened.fh)

    run(scenario)
    with open(f"{layers.dirs['upper']}/new", "rb") as f:
        assert f.read() == b"hello world"


def test_unlink_of_a_lower_file_leaves_a_whiteout(layers):
    write(f"{layers.dirs['lower']}/f", b"lower")
    r = layers()

    async def scenario():
        await r.lookup(ROOT_ID, b"f")
        await r.unlink(ROOT_ID, b"f")
        assert (await r.lookup(ROOT_ID, b"f")).node_id == 0

    run(scenario)
    st = os.lstat(f"{layers.dirs['upper']}/f")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.path.exists(f"{layers.dirs['lower']}/f")  # the lower layer is never written


def test_open_for_writing_copies_up_a_big_file_in_a_thread(layers):
    size = requests_mod.THREAD_COPY_MIN + 4096
    write(f"{layers.dirs['lower']}/big", b"b" * size)
    r = layers()
    waits = []
    r.before_wait = lambda: waits.append(trio.lowlevel.current_task().name)

    async def scenario():
        entry = await r.lookup(ROOT_ID, b"big")
        opened = await r.open(entry.node_id, os.O_WRONLY)
        assert await r.write(opened.fh, size, b"!") == 1
        await r.release(opened.fh)

    run(scenario)
    assert len(waits) == 1  # the backend was told before the copy thread ran
    assert os.path.getsize(f"{layers.dirs['upper']}/big") == size + 1
    assert os.path.getsize(f"{layers.dirs['lower']}/big") == size
    assert r._copy_locks == {}


def test_two_writers_of_a_big_file_share_one_copy_up_and_a_reader_does_not_wait(layers, monkeypatch):
    size = requests_mod.THREAD_COPY_MIN + 4096
    gate = threading.Event()  # the byte copy waits until the reader is through
    copy_data = CopyUpJob.copy_data
    monkeypatch.setattr(CopyUpJob, "copy_data", lambda job: (gate.wait(10), copy_data(job))[1])
    write(f"{layers.dirs['lower']}/big", b"b" * size)
    r = layers()
    union = r.union
    begun, aborted = [], []
    real_begin, real_abort = union.copyup.begin, union.copyup.abort
    union.copyup.begin = lambda *a: begun.append(a) or real_begin(*a)
    union.copyup.abort = lambda job: aborted.append(job) or real_abort(job)
    order = []

    async def opener(node_id, flags, tag):
        opened = await r.open(node_id, flags)
        order.append(tag)
        if tag == "reader":
            gate.set()
        await r.release(opened.fh)

    async def scenario():
        entry = await r.lookup(ROOT_ID, b"big")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(opener, entry.node_id, os.O_WRONLY, "writer 1")
            await trio.testing.wait_all_tasks_blocked()  # writer 1 copies in its thread
            nursery.start_soon(opener, entry.node_id, os.O_RDWR, "writer 2")
            nursery.start_soon(opener, entry.node_id, os.O_RDONLY, "reader")

    run(scenario)
    assert len(begun) == 1  # the engine handed the second writer the job in flight, not a new one
    assert order[0] == "reader"  # a read-only open needs no copy-up and does not wait for one
    assert sorted(order[1:]) == ["writer 1", "writer 2"]
    assert aborted == []  # abort is for failures only
    assert r._copy_locks == {} and union.copyup.in_flight == {}
    assert os.path.getsize(f"{layers.dirs['upper']}/big") == size


def test_before_the_loop_a_big_copy_up_parks_its_request_and_a_second_one_on_that_file_needs_the_loop(
    layers, monkeypatch
):
    """The native backend's ThreadsBeforeLoop: the byte copy runs in a thread of its own while the
    request is parked on a descriptor; another request that would wait for that copy raises LoopNeeded
    before it changes anything; one that needs no copy-up is answered meanwhile."""
    from unionfs.fuse.native_backend import ThreadsBeforeLoop, _loop_needed
    from unionfs.protocol.operations import LoopNeeded
    from unionfs.protocol.session import _Readable

    size = requests_mod.THREAD_COPY_MIN + 4096
    gate = threading.Event()  # the byte copy waits until the other requests are through
    copy_data = CopyUpJob.copy_data
    monkeypatch.setattr(CopyUpJob, "copy_data", lambda job: (gate.wait(10), copy_data(job))[1])
    write(f"{layers.dirs['lower']}/big", b"b" * size)
    r = layers()
    r.threads, r.before_wait = ThreadsBeforeLoop(), _loop_needed
    entry = run(r.lookup, ROOT_ID, b"big")
    node = r._node(entry.node_id)
    try:
        writer = r.open(entry.node_id, os.O_WRONLY)
        trap = writer.send(None)
        assert type(trap) is _Readable and r._copy_locks[node].locked()
        with pytest.raises(LoopNeeded):
            r.open(entry.node_id, os.O_RDWR).send(None)
        with pytest.raises(StopIteration) as read_only:
            r.open(entry.node_id, os.O_RDONLY).send(None)
        run(r.release, read_only.value.value.fh)
        assert not os.path.exists(f"{layers.dirs['upper']}/big")
    finally:
        gate.set()
    select_readable(trap.fd)
    with pytest.raises(StopIteration) as written:
        writer.send(None)
    run(r.release, written.value.value.fh)
    assert os.path.getsize(f"{layers.dirs['upper']}/big") == size
    assert r._copy_locks == {} and r.threads.running == 0 and r.union.copyup.in_flight == {}


def select_readable(fd, timeout=10):
    import select

    assert select.select([fd], [], [], timeout)[0] == [fd]


def drive(fn, *args):
    """Run a request as the native backend does before its loop: a parked request (a copy-up in a
    thread of its own) is resumed when its descriptor turns readable."""
    coro = fn(*args)
    try:
        trap = coro.send(None)
        while True:
            select_readable(trap.fd)
            trap = coro.send(None)
    except StopIteration as stop:
        return stop.value


def test_a_failed_copy_up_is_aborted_and_leaves_nothing(layers):
    write(f"{layers.dirs['lower']}/f", b"data")
    r = layers()
    union = r.union
    aborted = []
    real_abort = union.copyup.abort
    union.copyup.abort = lambda job: aborted.append(job) or real_abort(job)

    def failing_commit(job):
        raise OSError(errno.ENOSPC, "no room")

    union.copyup.commit = failing_commit
    entry = run(r.lookup, ROOT_ID, b"f")
    assert errno_of(r.open, entry.node_id, os.O_WRONLY) == errno.ENOSPC
    assert len(aborted) == 1 and union.copyup.in_flight == {} and r._copy_locks == {}
    assert os.listdir(f"{layers.dirs['upper']}") == []
    assert os.listdir(f"{layers.dirs['work']}/work") == []


def test_the_engine_says_what_a_change_copies_up(layers):
    write(f"{layers.dirs['lower']}/f", b"data")
    write(f"{layers.dirs['lower']}/d/g", b"g")
    r = layers()
    union = r.union
    f, _ = union.lookup(union.root, b"f")
    d, _ = union.lookup(union.root, b"d")
    assert union.copy_up_for_open(f, os.O_RDONLY) is None
    assert union.copy_up_for_setattr(d, None) is None  # a directory is copied up there and then
    assert os.path.isdir(f"{layers.dirs['upper']}/d")
    with pytest.raises(OSError) as exc:
        union.copy_up_for_link(d, b"x")
    assert exc.value.errno == errno.EPERM
    with pytest.raises(OSError) as exc:
        union.copy_up_for_xattr(f, b"user.none", removing=True)
    assert exc.value.errno == errno.ENODATA and not os.path.exists(f"{layers.dirs['upper']}/f")
    job = union.copy_up_for_open(f, os.O_WRONLY | os.O_TRUNC)
    assert job is not None and job.data_size == 0  # O_TRUNC copies no data
    assert union.copy_up_for_open(f, os.O_WRONLY) is job  # the job in flight
    job.copy_data()
    union.copy_up_commit(job)
    assert union.copy_up_for_open(f, os.O_WRONLY) is None and union.copyup.in_flight == {}
    assert os.path.getsize(f"{layers.dirs['upper']}/f") == 0


def test_setattr_truncate_copies_up_and_so_does_a_chown_that_changes_nothing(layers):
    write(f"{layers.dirs['lower']}/f", b"0123456789")
    os.chmod(f"{layers.dirs['lower']}/f", 0o4755)
    r = layers()
    entry = run(r.lookup, ROOT_ID, b"f")
    # chown(-1, -1), the only setattr that changes nothing with the write-back cache off: copied up, as
    # on the kernel's overlay, and set-user-ID dropped by the upper file's own chown
    same = run(r.setattr, entry.node_id, SetAttr(), None)
    assert (same.size, stat.S_IMODE(same.mode)) == (10, 0o755)
    assert stat.S_IMODE(os.stat(f"{layers.dirs['upper']}/f").st_mode) == 0o755
    after = run(r.setattr, entry.node_id, SetAttr(size=4, mode=0o600, mtime_ns=10**18), None)
    assert (after.size, stat.S_IMODE(after.mode), after.mtime_ns) == (4, 0o600, 10**18)
    with open(f"{layers.dirs['upper']}/f", "rb") as f:
        assert f.read() == b"0123"


def test_readdir_offsets_and_a_full_reply(layers):
    for name in ("a", "b", "c"):
        write(f"{layers.dirs['lower']}/{name}", name.encode())
    r = layers()
    union = r.union
    r.bare_entries = True

    async def scenario():
        fh = await r.opendir(ROOT_ID)
        seen = []

        def take_three(name, ino, ftype, entry, next_offset):
            if len(seen) == 3:
                return False  # full: this entry is not sent
            seen.append((name, ino, ftype, entry, next_offset))
            return True

        await r.readdir(fh, 0, take_three)
        assert [(s[0], s[4]) for s in seen] == [(b".", 1), (b"..", 2), (seen[2][0], 3)]
        # the root's number is the upper root's, as the kernel overlay shows it
        assert seen[0][1] == os.stat(layers.dirs["upper"]).st_ino
        assert seen[0][2] == stat.S_IFDIR and seen[0][3] is None
        first = seen[2]
        assert first[3] is not None and first[3].st_ino == first[1] and first[2] == stat.S_IFREG  # d_ino
        rejected = [n for n in (b"a", b"b", b"c") if n != first[0]][0]
        # the entry the reply refused took no reference
        child = union.root.children.get(rejected)
        assert child is None or not r.nodes.holds(child)

        rest = []
        await r.readdir(fh, 3, lambda *e: rest.append(e) or True)
        assert [e[4] for e in rest] == [4, 5]
        assert sorted([first[0]] + [e[0] for e in rest]) == [b"a", b"b", b"c"]
        assert all(e[3] is not None for e in rest)

        # again from 0: the kernel holds every file now, so they go bare (d_ino and d_type only)
        again = []
        await r.readdir(fh, 0, lambda *e: again.append(e) or True)
        assert [e[0] for e in again[2:]] == [first[0]] + [e[0] for e in rest]
        assert all(e[3] is None for e in again)
        assert [e[1] for e in again[2:]] == [first[3].st_ino] + [e[3].st_ino for e in rest]
        await r.releasedir(fh)
        for entry in [first[3]] + [e[3] for e in rest]:
            node = r.nodes.node(entry.node_id)
            assert r.nodes.holds(node)
            r.nodes.forget(entry.node_id, 1)
            assert not r.nodes.holds(node)  # one reference each

    run(scenario)


def test_readdir_of_handle_0_keeps_a_snapshot_a_reader_until_its_end(layers, monkeypatch):
    """Directories the kernel opened without an opendir (handle 0): each listing from offset 0 is a
    snapshot of its own, named by the offsets it gives; it is let go at its end, and a reader whose
    snapshot was let go goes on at its position in a fresh listing."""
    from unionfs.fuse import directories

    for name in ("a", "b", "c", "d"):
        write(f"{layers.dirs['lower']}/{name}", name.encode())
    r = layers()

    def read(offset, most):
        got = []

        def take(name, ino, ftype, entry, next_offset):
            if len(got) == most:
                return False
            got.append((name, next_offset))
            if entry is not None:
                r.nodes.forget(entry.node_id, 1)
            return True

        r.readdir_now(0, offset, take, plus=True, node_id=ROOT_ID)
        return got

    one = read(0, 4)  # ".", "..", two names
    two = read(0, 4)  # another reader: a snapshot of its own
    tag1, tag2 = one[0][1] & ~0xFFFFFF, two[0][1] & ~0xFFFFFF
    assert tag1 and tag2 and tag1 != tag2 and [o for _, o in one] == [tag1 | i for i in range(1, 5)]
    assert all(o < 2**31 for _, o in one + two)
    write(f"{layers.dirs['upper']}/e", b"e")  # a name made behind both snapshots
    rest1 = read(one[-1][1], 10)
    assert sorted(n for n, _ in one[2:] + rest1) == [b"a", b"b", b"c", b"d"]  # its own snapshot: no "e"
    assert len(r._snapshots) == 2
    assert read(rest1[-1][1], 10) == [] and len(r._snapshots) == 1  # read to its end: let go
    # a reader whose snapshot was let go goes on where it was, in a fresh listing (with "e" now)
    monkeypatch.setattr(directories, "_SNAPSHOTS", 1)
    read(0, 1)  # a third reader's snapshot pushes the second's out
    rest2 = read(two[-1][1], 10)
    fresh = {o & ~0xFFFFFF for _, o in rest2}
    assert len(rest2) == 3 and len(fresh) == 1 and fresh != {tag2}  # positions 5-7 of the fresh one
    (number,) = r._snapshots
    assert number << 24 in fresh and b"e" in [e[0] for e in r._snapshots[number][1]]


def test_readdir_without_plus_takes_no_references(layers):
    write(f"{layers.dirs['lower']}/f", b"x")
    os.mkdir(f"{layers.dirs['lower']}/d")
    r = layers()

    async def scenario():
        fh = await r.opendir(ROOT_ID)
        got = []
        await r.readdir(fh, 0, lambda *e: got.append(e) or True, plus=False)
        await r.releasedir(fh)
        for name in (b"d", b"f"):
            child = r.union.root.children.get(name)
            assert child is None or not r.nodes.holds(child)
        return got

    got = run(scenario)
    assert sorted((e[0], e[2]) for e in got[2:]) == [(b"d", stat.S_IFDIR), (b"f", stat.S_IFREG)]
    assert all(e[3] is None for e in got)
    # d_ino is the st_ino a lookup reports
    for name, ino, *_ in got[2:]:
        assert run(r.lookup, ROOT_ID, name).st_ino == ino


def test_names_xattrs_and_statfs(layers):
    write(f"{layers.dirs['lower']}/f", b"x")
    r = layers()

    async def scenario():
        f = await r.lookup(ROOT_ID, b"f")
        link = await r.link(f.node_id, ROOT_ID, b"g")
        assert link.node_id == f.node_id and link.nlink == 2
        await r.rename(ROOT_ID, b"g", ROOT_ID, b"h", 0)
        sym = await r.symlink(ROOT_ID, b"s", b"h", ROOT)
        assert stat.S_ISLNK(sym.mode) and await r.readlink(sym.node_id) == b"h"
        fifo = await r.mknod(ROOT_ID, b"p", stat.S_IFIFO | 0o600, 0, ROOT)
        assert stat.S_ISFIFO(fifo.mode)
        d = await r.mkdir(ROOT_ID, b"d", 0o700, ROOT)
        await r.rmdir(ROOT_ID, b"d")
        assert (await r.lookup(ROOT_ID, b"d")).node_id == 0
        await r.setxattr(f.node_id, b"user.k", b"v")
        assert await r.getxattr(f.node_id, b"user.k") == b"v"
        assert b"user.k" in await r.listxattr(f.node_id)
        await r.removexattr(f.node_id, b"user.k")
        vfs = await r.statfs()
        assert isinstance(vfs, Statfs) and vfs.bsize > 0 and vfs.namemax > 0
        await r.forget([(d.node_id, 1), (fifo.node_id, 1), (123456789, 1)])

    run(scenario)
    assert sorted(os.listdir(layers.dirs["upper"])) == ["f", "h", "p", "s"]


def test_failed_operations_give_their_errno(layers):
    write(f"{layers.dirs['lower']}/f", b"x")
    os.mkdir(f"{layers.dirs['lower']}/d")
    write(f"{layers.dirs['lower']}/d/inside", b"y")
    r = layers()
    f = run(r.lookup, ROOT_ID, b"f")
    assert errno_of(r.mkdir, ROOT_ID, b"f", 0o755, ROOT) == errno.EEXIST
    assert errno_of(r.rmdir, ROOT_ID, b"d") == errno.ENOTEMPTY
    assert errno_of(r.unlink, ROOT_ID, b"absent") == errno.ENOENT
    assert errno_of(r.getattr, 987654321) == errno.ESTALE
    assert errno_of(r.lookup, f.node_id, b"x") == errno.ENOTDIR
    # ENODATA before any copy-up, as the kernel
    assert errno_of(r.removexattr, f.node_id, b"user.none") == errno.ENODATA
    assert not os.path.exists(f"{layers.dirs['upper']}/f")
    assert errno_of(r.rename, ROOT_ID, b"f", ROOT_ID, b"g", 0xFF) == errno.EINVAL


def test_error_boundary_turns_a_bug_into_eio_and_an_error_line(layers, caplog, monkeypatch):
    write(f"{layers.dirs['lower']}/f", b"x")
    r = layers()
    f = run(r.lookup, ROOT_ID, b"f")

    def broken(node):
        raise ValueError("a bug in the engine")

    monkeypatch.setattr(r.union, "getattr", broken)
    with caplog.at_level(logging.DEBUG, logger="unionfs"):
        assert errno_of(r.getattr, f.node_id) == errno.EIO
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage() == "ERROR in getattr(%d,)" % f.node_id
    assert errors[0].exc_info[0] is ValueError  # the traceback goes to the log
    assert "a bug in the engine" in caplog.text
    monkeypatch.undo()

    # an unknown handle is a bug too (the kernel only sends handles it was given)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="unionfs"):
        assert errno_of(r.read, 4242, 0, 10) == errno.EIO
    assert [rec.getMessage() for rec in caplog.records] == ["ERROR in read(4242, 0, 10)"]


def test_error_boundary_passes_oserror_without_an_error_line(layers, caplog, monkeypatch):
    r = layers()

    def denied(node):
        raise PermissionError(errno.EACCES, "denied")

    def no_errno(node):
        raise OSError("no errno")

    with caplog.at_level(logging.INFO, logger="unionfs"):
        monkeypatch.setattr(r.union, "getattr", denied)
        assert errno_of(r.getattr, ROOT_ID) == errno.EACCES
        monkeypatch.setattr(r.union, "getattr", no_errno)
        assert errno_of(r.getattr, ROOT_ID) == errno.EIO
    assert caplog.records == []


class FakeBacking:
    """Stands in for the session's FUSE_DEV_IOC_BACKING_OPEN/CLOSE: ids from 1, or an error."""

    def __init__(self, error=None):
        self.error = error
        self.opened = {}  # backing id -> st_ino of the registered file
        self.closed = []
        self.next = 1

    def open(self, fd):
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        self.opened[self.next] = os.fstat(fd).st_ino
        self.next += 1
        return self.next - 1

    def close(self, backing_id):
        self.closed.append(backing_id)


def passing(r, backing):
    r.backing_open, r.backing_close = backing.open, backing.close
    return r


def test_passthrough_only_for_upper_files_one_backing_id_a_node(layers):
    write(f"{layers.dirs['lower']}/lo", b"lower")
    write(f"{layers.dirs['upper']}/up", b"upper")
    backing = FakeBacking()
    r = passing(layers(), backing)

    async def scenario():
        up = await r.lookup(ROOT_ID, b"up")
        a = await r.open(up.node_id, os.O_RDONLY)
        b = await r.open(up.node_id, os.O_RDWR)
        assert a.backing_id == b.backing_id == 1 and not a.keep_cache
        assert backing.opened == {1: os.stat(f"{layers.dirs['upper']}/up").st_ino}
        await r.release(a.fh)
        assert backing.closed == []  # still open through b
        await r.release(b.fh)
        assert backing.closed == [1]
        # a lower file read-only: never (a copy-up must change what it reads)
        lo = await r.lookup(ROOT_ID, b"lo")
        ro = await r.open(lo.node_id, os.O_RDONLY)
        assert ro.backing_id == 0 and ro.keep_cache
        # copied up while that fd is open: the kernel wants all opens of the node alike
        rw = await r.open(lo.node_id, os.O_RDWR)
        assert rw.backing_id == 0 and not rw.keep_cache
        await r.release(ro.fh)
        await r.release(rw.fh)
        again = await r.open(lo.node_id, os.O_RDONLY)  # now an upper file, opened alone
        assert again.backing_id == 2
        await r.release(again.fh)
        created, _ = await r.create(ROOT_ID, b"new", stat.S_IFREG | 0o644, os.O_RDWR | os.O_CREAT, ROOT)
        assert created.backing_id == 3
        await r.release(created.fh)

    run(scenario)
    assert backing.closed == [1, 2, 3]


def test_lookups_start_reading_files_only_while_opens_follow_them(layers):
    """A read-only open earns a credit, a lookup of a non-empty regular file spends one on starting to
    read it (`UnionEngine.prefetch`): files opened one after another are read ahead of their opens, and
    lookups that no open follows (a tree walk) soon read nothing."""
    lower = layers.dirs["lower"]
    for i in range(12):
        write(f"{lower}/f{i}", b"x" * 5000)
    write(f"{lower}/empty")
    os.mkdir(f"{lower}/d")
    r = layers()
    fetched = []
    real_prefetch = r.union.prefetch
    r.union.prefetch = lambda node, size: fetched.append(node.names[0][1]) or real_prefetch(node, size)
    fds = len(os.listdir("/proc/self/fd"))

    async def opens(node_id, n):
        for _ in range(n):
            opened = r.open_now(node_id, os.O_RDONLY)  # (the native backend's read-only open)
            assert await r.read(opened.fh, 0, 10) == b"x" * 10
            await r.release(opened.fh)

    async def scenario():
        await r.lookup(ROOT_ID, b"f0")  # no credit yet: nothing read
        f1 = await r.lookup(ROOT_ID, b"f1")
        await opens(f1.node_id, 3)  # three credits
        await r.lookup(ROOT_ID, b"empty")  # nothing to read
        await r.lookup(ROOT_ID, b"d")  # not a file
        for i in range(2, 12):  # lookups alone: three are read ahead, then none
            await r.lookup(ROOT_ID, b"f%d" % i)
        assert r._read_credit == 0
        await opens(f1.node_id, requests_mod.READ_CREDIT_MAX + 5)
        assert r._read_credit == requests_mod.READ_CREDIT_MAX  # capped

    run(scenario)
    assert fetched == [b"f2", b"f3", b"f4"]
    assert len(os.listdir("/proc/self/fd")) == fds  # the prefetch's descriptor is closed at once


def test_without_an_upper_layer_lower_files_pass_through(tmp_path):
    """Nothing is ever copied up on a mount without an upper layer, so a lower file's backing never
    changes: its opens pass through (the lower file, opened for it now), none keeps the cache."""
    lowers = [tmp_path / "top", tmp_path / "bottom"]
    for d in lowers:
        d.mkdir()
    write(f"{lowers[0]}/a", b"top file")
    write(f"{lowers[1]}/b", b"bottom file")
    backing = FakeBacking()
    union = UnionEngine([str(d) for d in lowers], None, None)
    try:
        r = passing(UnionRequests(union), backing)

        async def scenario():
            for name, layer in ((b"a", 0), (b"b", 1)):
                entry = await r.lookup(ROOT_ID, name)
                one = await r.open(entry.node_id, os.O_RDONLY)
                two = await r.open(entry.node_id, os.O_RDONLY)
                assert one.backing_id == two.backing_id != 0 and not one.keep_cache and not two.keep_cache
                assert backing.opened[one.backing_id] == os.stat(f"{lowers[layer]}/{name.decode()}").st_ino
                await r.release(one.fh)
                await r.release(two.fh)
                assert backing.closed[-1] == one.backing_id

        run(scenario)
        assert len(backing.closed) == 2
        r.backing_open = None  # without passthrough: the cache is kept, the lower file opened later

        async def without():
            entry = await r.lookup(ROOT_ID, b"a")
            opened = await r.open(entry.node_id, os.O_RDONLY)
            assert opened.backing_id == 0 and opened.keep_cache
            await r.release(opened.fh)

        run(without)
    finally:
        union.close()


@pytest.mark.parametrize("before_loop", [False, True])
def test_a_big_copy_up_for_a_passed_through_open_drops_the_cached_pages_while_it_copies(
    layers, monkeypatch, before_loop
):
    """The kernel drops a node's cached pages at an open passed through (it refuses KEEP_CACHE with a
    backing file); asked for during the byte copy, that is done when the open comes. Never while another
    open file of the node may have a READ in flight (its pages locked until it is answered), never
    without passthrough (the open keeps the cache), and not for a copy done in place (small)."""
    from unionfs.fuse.native_backend import ThreadsBeforeLoop

    size = requests_mod.THREAD_COPY_MIN + 4096
    for name in (b"big", b"big2", b"big3"):
        write(f"{layers.dirs['lower']}/{name.decode()}", b"b" * size)
    write(f"{layers.dirs['lower']}/small", b"s")
    r = passing(layers(), FakeBacking())
    if before_loop:
        r.threads = ThreadsBeforeLoop()
    dropped, expect = [], {}
    copy_data = CopyUpJob.copy_data

    def copy_waiting_for_the_drop(job):  # a drop made only after the copy would leave this waiting
        gate = expect.get(job.node)
        if gate is not None:
            assert gate.wait(10), "the byte copy ended before the cached pages were dropped"
            del expect[job.node]
        return copy_data(job)

    monkeypatch.setattr(CopyUpJob, "copy_data", copy_waiting_for_the_drop)

    def drop(node_id):
        dropped.append(node_id)
        for gate in expect.values():
            gate.set()
        return True

    r.drop_data = drop

    call = drive if before_loop else run

    def open_release(node_id, flags):
        opened = call(r.open, node_id, flags)
        call(r.release, opened.fh)
        return opened

    big = call(r.lookup, ROOT_ID, b"big")
    expect[r._node(big.node_id)] = threading.Event()
    opened = open_release(big.node_id, os.O_WRONLY | os.O_APPEND)
    assert opened.backing_id and not opened.keep_cache
    assert dropped == [big.node_id] and not expect
    dropped.clear()
    # another open file of the node: not dropped (the kernel drops them at the open, as before)
    big2 = call(r.lookup, ROOT_ID, b"big2")
    reader = call(r.open, big2.node_id, os.O_RDONLY)
    open_release(big2.node_id, os.O_RDWR)
    call(r.release, reader.fh)
    small = call(r.lookup, ROOT_ID, b"small")
    open_release(small.node_id, os.O_WRONLY)
    assert dropped == []
    r.backing_open = None  # without passthrough the open keeps the cache: nothing to drop
    big3 = call(r.lookup, ROOT_ID, b"big3")
    open_release(big3.node_id, os.O_WRONLY)
    assert dropped == []
    for name in ("big", "big2", "big3"):
        assert os.path.getsize(f"{layers.dirs['upper']}/{name}") == size


@pytest.mark.parametrize("error, stops", [(errno.EPERM, True), (errno.ELOOP, False)])
def test_passthrough_refused_falls_back(layers, error, stops):
    write(f"{layers.dirs['upper']}/up", b"upper")
    r = passing(layers(), FakeBacking(error))

    async def scenario():
        up = await r.lookup(ROOT_ID, b"up")
        opened = await r.open(up.node_id, os.O_RDWR)
        assert opened.backing_id == 0
        assert await r.read(opened.fh, 0, 5) == b"upper"
        await r.release(opened.fh)

    run(scenario)
    # not privileged: no more asking; a file the kernel refused (stacked too deep): the next may pass
    assert (r.backing_open is None) == stops


def test_no_passthrough_for_setuid_files_when_the_daemon_clears_them(layers):
    write(f"{layers.dirs['upper']}/suid", b"x", mode=0o4755)
    r = passing(layers(), FakeBacking())
    r.kill_privs = True

    async def scenario():
        node = await r.lookup(ROOT_ID, b"suid")
        opened = await r.open(node.node_id, os.O_RDWR)
        assert opened.backing_id == 0
        # a write of a caller without CAP_FSETID clears the bit, and the kernel is told
        told = []
        r.attributes_changed = told.append
        await r.write(opened.fh, 0, b"y", Context(1000, 1000, os.getpid()))
        assert stat.S_IMODE((await r.getattr(node.node_id)).mode) == 0o755 and told == [node.node_id]
        await r.release(opened.fh)
        # A create knows the new file's mode: it is not looked up again to decide
        r._mode_of = lambda handle: pytest.fail("the mode of a new file was looked up")
        made, _ = await r.create(ROOT_ID, b"new-suid", 0o4755, os.O_WRONLY | os.O_CREAT, ROOT)
        plain, _ = await r.create(ROOT_ID, b"new-plain", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
        assert (made.backing_id, plain.backing_id != 0) == (0, True)
        await r.release(made.fh)
        await r.release(plain.fh)

    run(scenario)


def test_a_copied_up_file_keeps_its_st_ino_after_the_kernel_forgets_it(layers):
    # As the kernel overlay (samefs): the copy records its origin, so a fresh node shows the lower's number.
    write(f"{layers.dirs['lower']}/f", b"x")
    lower_ino = os.lstat(f"{layers.dirs['lower']}/f").st_ino
    r = layers()

    async def scenario():
        f = await r.lookup(ROOT_ID, b"f")
        assert f.st_ino == lower_ino
        opened = await r.open(f.node_id, os.O_WRONLY)
        await r.write(opened.fh, 1, b"y")
        await r.release(opened.fh)
        await r.forget([(f.node_id, 1)])
        assert len(r.union.nodes) == 1  # nobody holds it: gone
        again = await r.lookup(ROOT_ID, b"f")
        assert again.st_ino == lower_ino and again.size == 2

    run(scenario)
    assert os.lstat(f"{layers.dirs['upper']}/f").st_ino != lower_ino

"""Mount tests/protocol/memfs.py on a directory and serve it with unionfs.protocol (a test helper).

    python -m tests.protocol.serve_memfs MNT [--method auto|syscall|fusermount] [--flags N] [--option O]...
        [--fsname NAME]

Prints "ready" on stdout once mounted (requests wait in the kernel until INIT is answered). SIGTERM or
SIGINT unmounts (by MNT) and ends; unmounting from outside ends it too (the device reports ENODEV).
"""

import argparse
import logging
import signal
import sys

import trio

from tests.protocol.memfs import MemFS
from unionfs.protocol import abi
from unionfs.protocol.mount import MountError, mount, unmount
from unionfs.protocol.session import Session


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("mountpoint")
    p.add_argument("--method", default="auto")
    p.add_argument("--flags", type=lambda s: int(s, 0), default=abi.DEFAULT_INIT_FLAGS)
    p.add_argument("--option", "-o", action="append", default=[])
    p.add_argument("--fsname", default="memfs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="serve_memfs: %(levelname)s %(message)s")
    try:
        fd = mount(args.mountpoint, fsname=args.fsname, subtype="memfs", options=args.option, method=args.method)
    except MountError as exc:
        print(f"serve_memfs: {exc}", file=sys.stderr)
        return 1
    session = Session(MemFS(), fd, flags=args.flags)
    unmounted = []

    async def serve():
        # the signal handlers are in place before "ready": a SIGTERM right after it unmounts too
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            print("ready", flush=True)
            async with trio.open_nursery() as nursery:

                async def on_signal():
                    async for _ in signals:
                        if not unmounted:
                            unmounted.append(True)
                            unmount(args.mountpoint, method=args.method)
                        return

                nursery.start_soon(on_signal)
                await session.run()
                nursery.cancel_scope.cancel()

    trio.run(serve)
    conn = session.conn
    print(f"served {session.requests} requests; {conn!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

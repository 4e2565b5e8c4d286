"""Run as an ordinary user (by tests/protocol/test_mount.py): mount memfs, use it, SIGTERM the server
(which unmounts the way it mounted), and print what was seen as JSON.

    python -m tests.protocol.user_inner MNT METHOD

METHOD "fusermount": through fusermount3 (unmounted with `fusermount3 -u -z`); "syscall": mount(2) and
umount2(2), as root of a user namespace.
"""

import json
import os
import signal
import subprocess
import sys
import time


def main():
    mnt, method = sys.argv[1], sys.argv[2]
    res = {"uid": os.getuid()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.protocol.serve_memfs", mnt, "--method", method, "--fsname", "mem,fs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        res["ready"] = proc.stdout.readline().decode().strip()
        if res["ready"] == "ready":
            with open("/proc/self/mountinfo") as f:
                res["mountinfo"] = [line.strip() for line in f if f" {mnt} " in line]
            os.mkdir(mnt + "/d")
            with open(mnt + "/d/f", "wb") as f:
                f.write(b"by the user")
            os.setxattr(mnt + "/d/f", "user.k", b"v")
            st = os.stat(mnt + "/d/f")
            with open(mnt + "/d/f", "rb") as f:
                res["data"] = f.read().decode()
            res["owner"] = [st.st_uid, st.st_gid]
            res["xattr"] = os.getxattr(mnt + "/d/f", "user.k").decode()
            res["listing"] = sorted(os.listdir(mnt + "/d"))
            proc.send_signal(signal.SIGTERM)
        res["exit"] = proc.wait(timeout=15)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open("/proc/self/mountinfo") as f:
                res["mounted_after"] = any(f" {mnt} " in line for line in f)
            if not res["mounted_after"]:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        res["stderr"] = proc.stderr.read().decode(errors="replace")
    print(json.dumps(res))


if __name__ == "__main__":
    main()

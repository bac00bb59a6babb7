#!/usr/bin/env python3
"""Ships whole lines of an msbfs merged.log to OUT exactly once, across restarts of
msbfs and of this shipper (SIGKILL included).

usage: ship.py MERGED_LOG OUT STATE [POLL_SECONDS]

STATE holds "inode offset out_size": the file shipped, the offset of its next line and
OUT's size then. OUT is cut back to out_size at start, so what was written after the
last saved state is written again, once. msbfs keeps inode numbers and offsets across
its restarts; st_dev is not compared (a new mount may have another). Any error (the
mount went away: ENOENT, ENOTCONN) closes the file and opens the path again.
"""
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

src, out, state = sys.argv[1:4]
poll = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
try:
    with open(state) as f:
        ino, off, size = map(int, f.read().split())
except FileNotFoundError:
    ino, off, size = 0, 0, 0
o = open(out, "ab")
o.truncate(size)
fd = None
while True:
    try:
        if fd is None:
            fd = os.open(src, os.O_RDONLY)
            if os.fstat(fd).st_ino != ino:  # another file (a new sandbox): from its start
                ino, off = os.fstat(fd).st_ino, 0
        data = os.pread(fd, 1 << 20, off)
    except OSError:
        if fd is not None:
            os.close(fd)
        fd = None
        time.sleep(poll)
        continue
    end = data.rfind(b"\n") + 1
    if end == 0:
        time.sleep(poll)  # at the end: poll again later (msbfs parks only readers that retry at once)
        continue
    o.write(data[:end])
    o.flush()
    os.fsync(o.fileno())
    off, size = off + end, size + end
    with open(state + ".tmp", "w") as f:
        f.write(f"{ino} {off} {size}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(state + ".tmp", state)

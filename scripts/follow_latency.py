#!/usr/bin/env python3
"""Follow latency of msbfs: a reader blocked at the end of merged.log, and a producer in
another process appending exec.log lines (at 4,000 lines/s by default) that carry their
send time. Prints p50, p99 and max in milliseconds.

Usage: follow_latency.py MERGED_LOG EXEC_LOG [LINES] [RATE]
"""
import json
import os
import subprocess
import sys
import time

merged, exec_log = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
RATE = float(sys.argv[4]) if len(sys.argv) > 4 else 4000.0

WRITER = f"""
import json, time
with open({exec_log!r}, "a") as f:
    start = time.monotonic()
    for i in range({N}):
        target = start + i / {RATE}
        while time.monotonic() < target:
            pass
        d = "latency-probe %.9f\\n" % time.monotonic()
        f.write(json.dumps({{"t": "2026-05-01T00:00:00.000Z", "s": "stdout", "d": d, "id": 999}}) + "\\n")
        f.flush()
"""

fd = os.open(merged, os.O_RDONLY)
while os.read(fd, 1 << 20):
    pass
writer = subprocess.Popen([sys.executable, "-c", WRITER])
samples, buf = [], b""
while len(samples) < N:
    buf += os.read(fd, 1 << 16)
    now = time.monotonic()
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        if b"latency-probe" in line:
            samples.append((now - float(line.rsplit(b" ", 1)[1])) * 1000)
writer.wait()
samples.sort()
print(f"{samples[len(samples) // 2]:.2f} {samples[int(len(samples) * 0.99) - 1]:.2f} {samples[-1]:.2f}")

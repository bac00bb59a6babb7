#!/usr/bin/env bash
# Benchmarks msbfs (release build) on a simulated ~50 MiB history and prints one table
# (also written to target/bench/bench.json). Reads and restarts are the median of 5.
# Runs as root (it mounts a fresh ext4 filesystem to work on).
#
#   full read    dd bs=1M of merged.log, against cat of the raw source files and
#                against the FUSE ceiling (a file the same daemon serves from memory,
#                --bench-ceiling) in the same run
#   first sight  mount to correct st_size with nothing saved (ingest of the history)
#   restart      mount to correct st_size with the 50 MiB history saved
#   tail, dd     tail -n 10; dd of 4 x 64 KiB from the middle
#   store cost   bytes of state per MiB of merged.log; daemon CPU of the first-sight and
#                of a live ingest per 100 MB; the store's own write path per 100 MB;
#                peak RSS
#   follow       producer write -> blocked reader returns, at 4,000 lines/s
#   live ingest  daemon CPU (utime + stime) per 100 MB of merged.log while the
#                simulator writes another sandbox unpaced (300,000 lines) and paced at
#                1,000 lines/s (20,000 lines), no reader open; the unpaced producer's
#                lines/s with the mount and without it (a home nothing watches)
#   1,000        1,000 sandboxes of 1 MiB each: mount until every one is listed with
#                its size right (first sight of 1 GiB)
#   2,000        2,000 small sandboxes under `ulimit -n 1024`: mount (first sight and
#                restart) until every one is listed with its size right; then RSS,
#                descriptors and CPU over 10 s while nothing changes
#
# Usage: scripts/bench.sh [LINES]     (default 330000 lines, about 50 MiB of sources)
#        MSBFS_BIN=/path/to/msbfs scripts/bench.sh   (benchmark another build)
#        BENCH_OUT=file.json scripts/bench.sh   (write the figures there instead)
# The table shows each figure beside the one in scripts/bench-baseline.json (the same
# script run on the build before issue 10, with MSBFS_BIN and BENCH_OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-330000}
if [[ -z ${MSBFS_BIN:-} ]]; then
  cargo build --release --quiet --bin msbfs --example render_bench
fi
BIN=${MSBFS_BIN:-$PWD/target/release/msbfs}
WORK=$(mktemp -d /tmp/msbfs-bench.XXXXXX)
# Everything on a fresh ext4 filesystem (a loop device), as on a new machine: on a
# filesystem where many files were just deleted, ext4 takes far longer to create one
# (it skips recently freed inodes), and back-to-back runs would measure that.
FRESH_FS=
if truncate -s 8G "$WORK.img" && mkfs.ext4 -q -F "$WORK.img" && mount -o loop "$WORK.img" "$WORK"; then
  FRESH_FS=1
else
  echo "no loop device: measuring on $(df --output=source /tmp | tail -n 1) instead of a fresh ext4" >&2
fi
HOME_DIR=$WORK/home MNT=$WORK/mnt STATE=$WORK/state
mkdir -p "$HOME_DIR/sandboxes" "$MNT" target/bench
PID=
cleanup() {
  [[ -n $PID ]] && kill -INT "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  umount -l "$MNT" 2>/dev/null || true
  umount -l "$WORK/many/mnt" 2>/dev/null || true
  umount -l "$WORK/thousand/mnt" 2>/dev/null || true
  [[ -n $FRESH_FS ]] && umount "$WORK" 2>/dev/null
  rm -rf "$WORK" "$WORK.img"
}
trap cleanup EXIT

now() { date +%s.%N; }
py() { python3 -c "$@"; }
median() { py "import sys,statistics; print(f'{statistics.median(float(x) for x in sys.argv[1:]):.4f}')" "$@"; }
cpu_of() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
# dd bs=1M of $1, prints seconds
dd_secs() { dd if="$1" of=/dev/null bs=1M 2>&1 | awk '/copied/ {print $(NF-3)}'; }

"$BIN" simulate --home "$HOME_DIR" --name bench --lines "$LINES" --seed 7 >/dev/null
LOGS=$HOME_DIR/sandboxes/bench/logs
SRC_BYTES=$(cat "$LOGS"/* | wc -c)
echo "history: $(ls "$LOGS" | tr '\n' ' ')($((SRC_BYTES / 1048576)) MiB of source files)"

mount_daemon() { # $@: extra arguments; sets PID, waits until merged.log has size $WANT (if set)
  "$BIN" mount "$MNT" --home "$HOME_DIR" --state-dir "$STATE" "$@" 2>>"$WORK/daemon.log" &
  PID=$!
  until [[ -e $MNT/bench/merged.log ]]; do sleep 0.002; done
  if [[ -n ${WANT:-} ]]; then
    until [[ $(stat -c %s "$MNT/bench/merged.log") == "$WANT" ]]; do sleep 0.002; done
  fi
}
stop_daemon() { kill -INT "$PID"; wait "$PID" || true; PID=; }

t0=$(now)
mount_daemon --bench-ceiling "$SRC_BYTES"
SIZE=$(stat -c %s "$MNT/bench/merged.log")
t1=$(now)
FIRST=$(py "print(f'{$t1 - $t0:.3f}')")
FIRST_CPU=$(cpu_of "$PID")
echo "first sight: $FIRST s, $FIRST_CPU s CPU for $((SIZE / 1048576)) MiB of merged.log"

cat "$LOGS"/* >/dev/null # page cache warm for every contender
raw=() merged=() ceiling=()
for _ in 1 2 3 4 5; do
  t0=$(now); cat "$LOGS"/* >/dev/null; t1=$(now); raw+=("$(py "print($t1 - $t0)")")
  merged+=("$(dd_secs "$MNT/bench/merged.log")")
  ceiling+=("$(dd_secs "$MNT/.bench-ceiling")")
done
RAW=$(median "${raw[@]}") MERGED=$(median "${merged[@]}") CEIL=$(median "${ceiling[@]}")
READ_GBS=$(py "print(f'{$SIZE / $MERGED / 1e9:.2f}')")
RAW_GBS=$(py "print(f'{$SRC_BYTES / $RAW / 1e9:.2f}')")
CEIL_GBS=$(py "print(f'{$SRC_BYTES / $CEIL / 1e9:.2f}')")
OF_CEIL=$(py "print(f'{100 * $READ_GBS / $CEIL_GBS:.0f}')")
echo "full read: merged.log $READ_GBS GB/s, FUSE ceiling $CEIL_GBS GB/s ($OF_CEIL %), cat of raw files $RAW_GBS GB/s"

t0=$(now); tail -n 10 "$MNT/bench/merged.log" >/dev/null; t1=$(now)
TAIL=$(py "print(f'{($t1 - $t0) * 1000:.1f}')")
MID=$((SIZE / 2 / 65536))
t0=$(now); dd if="$MNT/bench/merged.log" of=/dev/null bs=64k skip="$MID" count=4 status=none; t1=$(now)
SEEK=$(py "print(f'{($t1 - $t0) * 1000:.1f}')")
echo "tail -n 10: $TAIL ms; dd of 4 x 64 KiB from the middle: $SEEK ms"
PROGRAM_GBS=$(py "print(f'{$(stat -c %s "$MNT/bench/program.log") / $(dd_secs "$MNT/bench/program.log") / 1e9:.2f}')")
JSONL_GBS=$(py "print(f'{$(stat -c %s "$MNT/bench/merged.jsonl") / $(dd_secs "$MNT/bench/merged.jsonl") / 1e9:.2f}')")
echo "full read of program.log $PROGRAM_GBS GB/s, of merged.jsonl $JSONL_GBS GB/s"

# Follow latency at 4,000 lines/s (scripts/follow_latency.py), each figure the median
# of 3 runs (a p99 of 2,000 samples varies from run to run).
p50s=() p99s=() pmaxs=()
for _ in 1 2 3; do
  read -r a b c <<<"$(python3 scripts/follow_latency.py "$MNT/bench/merged.log" "$LOGS/exec.log")"
  p50s+=("$a") p99s+=("$b") pmaxs+=("$c")
done
P50=$(median "${p50s[@]}") P99=$(median "${p99s[@]}") PMAX=$(median "${pmaxs[@]}")
echo "follow latency (4,000 lines/s): p50 $P50 ms, p99 $P99 ms, max $PMAX ms"

# Live ingest: a producer on another sandbox while mounted, unpaced then paced.
live_cpu() { # $1: name, then simulate options; sets LIVE_CPU (CPU-s per 100 MB) and PRODUCER (lines/s)
  local name=$1 cpu0 t0 t1 prev=-1 cur size
  shift
  mkdir -p "$HOME_DIR/sandboxes/$name/logs"
  until [[ -e $MNT/$name/merged.log ]]; do sleep 0.01; done
  cpu0=$(cpu_of "$PID")
  t0=$(now)
  "$BIN" simulate --home "$HOME_DIR" --name "$name" --rotate-bytes 10485760 --seed 9 "$@" >/dev/null
  t1=$(now)
  while true; do # until merged.log stops growing
    cur=$(stat -c %s "$MNT/$name/merged.log")
    [[ $cur == "$prev" && $cur -gt 0 ]] && break
    prev=$cur
    sleep 0.5
  done
  size=$(stat -c %s "$MNT/$name/merged.log")
  LIVE_CPU=$(py "print(f'{($(cpu_of "$PID") - $cpu0) * 1e8 / $size:.2f}')")
  PRODUCER=$(py "print(round($2 / ($t1 - $t0)))")
}
sleep 2 # the follow probe's reader counts as waiting for a second after it last parked
live_cpu live --lines 300000
LIVE_UNPACED=$LIVE_CPU PRODUCER_MOUNTED=$PRODUCER
live_cpu paced --lines 20000 --rate 1000
LIVE_PACED=$LIVE_CPU
mkdir -p "$WORK/unwatched/sandboxes/live/logs"
t0=$(now)
"$BIN" simulate --home "$WORK/unwatched" --name live --lines 300000 --rotate-bytes 10485760 --seed 9 >/dev/null
PRODUCER_ALONE=$(py "print(round(300000 / ($(now) - $t0)))")
rm -rf "$WORK/unwatched"
FIRST_CPU_100=$(py "print(f'{$FIRST_CPU * 1e8 / $SIZE:.2f}')")
FIRST_MBS=$(py "print(round($SRC_BYTES / $FIRST / 1e6))")
echo "daemon CPU per 100 MB of merged.log: first sight $FIRST_CPU_100 s ($FIRST_MBS MB/s of sources); live $LIVE_UNPACED s unpaced, $LIVE_PACED s at 1,000 lines/s"
echo "unpaced producer: $PRODUCER_MOUNTED lines/s with the mount, $PRODUCER_ALONE lines/s without"
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
rm -rf "$HOME_DIR/sandboxes/live" "$HOME_DIR/sandboxes/paced"
sleep 1 # the live sandbox is gone, its state retired (kept for all.log)
SAVED=$(stat -c %s "$MNT/bench/merged.log") # the follow probe added lines
stop_daemon

restarts=()
for _ in 1 2 3 4 5; do
  t0=$(now); WANT=$SAVED mount_daemon; t1=$(now)
  restarts+=("$(py "print($t1 - $t0)")")
  RSS=$(py "print(max($RSS, $(awk '/VmHWM/ {print $2}' "/proc/$PID/status")))")
  stop_daemon
done
RESTART=$(median "${restarts[@]}")
echo "restart to correct st_size: $RESTART s (median of 5)"
# The bench sandbox's own state (the live one's is retired) and the views' share of it:
# the journal holds the entries merged.jsonl is rendered from, view-* the run indexes
# of the text views, all/ the runs of all.log and all.jsonl (over both sandboxes).
EPOCH=$(for d in "$STATE"/*/epochs/*; do [[ -e $d/retired ]] || echo "$d"; done | head -n 1)
per_mib() { py "print(f'{$1 * 1048576 / $SAVED:.0f}')"; }
JOURNAL_PER_MIB=$(per_mib "$(du -sb "$EPOCH/journal" "$EPOCH/segments" | awk '{s += $1} END {print s}')")
VIEWS_PER_MIB=$(per_mib "$(du -cb "$EPOCH"/view-* | tail -n 1 | cut -f1)")
ALL_PER_MIB=$(per_mib "$(du -sb "$STATE"/*/all | cut -f1)")
STATE_PER_MIB=$(py "print($JOURNAL_PER_MIB + $VIEWS_PER_MIB + $ALL_PER_MIB)")
VIEWS_RATIO=$(py "print(f'{$STATE_PER_MIB / 1048576:.2f}')")
echo "state beyond merged.log, per MiB of it: journal and segment index $JOURNAL_PER_MIB B, view indexes $VIEWS_PER_MIB B, all.* $ALL_PER_MIB B ($VIEWS_RATIO x)"
WRITE_PATH=$(target/release/examples/render_bench "$HOME_DIR" bench 1 | sed -n 's/^store write path:.*(\([0-9.]*\) s per 100 MB)$/\1/p')
echo "store: $STATE_PER_MIB bytes of journal and index per MiB of merged.log; write path $WRITE_PATH s CPU per 100 MB; peak RSS $((RSS / 1024)) MiB"

# 2,000 small sandboxes under `ulimit -n 1024`.
MANY=$WORK/many
python3 - "$MANY/home" <<'PY'
import os, sys
for i in range(2000):
    d = os.path.join(sys.argv[1], "sandboxes", f"sb{i:04d}", "logs")
    os.makedirs(d)
    line = '{"t":"2026-04-30T20:32:59.%03dZ","s":"stdout","d":"hello from %d\\n","id":1}\n' % (i % 1000, i)
    open(os.path.join(d, "exec.log"), "w").write(line * 40)
    open(os.path.join(d, "runtime.log"), "w").write("2026-04-30T20:32:59.000000Z  INFO microsandbox: started\n")
    open(os.path.join(d, "kernel.log"), "w").write("[    0.000000] Linux version 6.1\n")
PY
mkdir -p "$MANY/mnt"
# Mounts $1 (home $1/home, state $1/state, mountpoint $1/mnt) with the command prefix
# $3.. and sets MOUNT_SECS: from start until all $2 sandboxes (sb0000…) are listed,
# the last one's st_size right.
timed_mount() {
  local dir=$1 count=$2 t0 last
  shift 2
  last=$(printf 'sb%04d' $((count - 1)))
  t0=$(now)
  "$@" "$BIN" mount "$dir/mnt" --home "$dir/home" --state-dir "$dir/state" </dev/null >/dev/null 2>>"$dir.log" &
  PID=$!
  until [[ -e $dir/mnt/$last/merged.log ]]; do sleep 0.01; done
  [[ $(find "$dir/mnt" -mindepth 1 -maxdepth 1 -type d | wc -l) == "$count" ]] || { echo "not all $count listed" >&2; exit 1; }
  [[ $(stat -c %s "$dir/mnt/$last/merged.log") == $(wc -c <"$dir/mnt/$last/merged.log") ]] || { echo "st_size wrong" >&2; exit 1; }
  MOUNT_SECS=$(py "print(f'{$(now) - $t0:.2f}')")
}
many_mount() { timed_mount "$MANY" 2000 prlimit --nofile=1024:1024 --; MANY_SECS=$MOUNT_SECS; }
many_mount
MANY_FIRST=$MANY_SECS
stop_daemon
many_mount
MANY_RESTART=$MANY_SECS
sleep 12 # idle files close after 10 s
cpu0=$(cpu_of "$PID")
sleep 10
MANY_CPU=$(py "print(f'{($(cpu_of "$PID") - $cpu0) * 10:.1f}')") # percent of one core
MANY_RSS=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$PID/status")
MANY_FDS=$(ls "/proc/$PID/fd" | wc -l)
stop_daemon
echo "2,000 sandboxes (ulimit -n 1024): mount $MANY_FIRST s, restart $MANY_RESTART s; idle: $MANY_RSS MiB RSS, $MANY_FDS descriptors, $MANY_CPU % of a core"

# 1,000 sandboxes of 1 MiB each (1 GiB of history seen for the first time).
THOUSAND=$WORK/thousand
python3 - "$THOUSAND/home" <<'PY'
import os, sys
for i in range(1000):
    d = os.path.join(sys.argv[1], "sandboxes", f"sb{i:04d}", "logs")
    os.makedirs(d)
    line = '{"t":"2026-04-30T20:32:59.%03dZ","s":"stdout","d":"line of sandbox %04d: %s\\n","id":%d}\n' % (i % 1000, i, "x" * 60, 1 + i % 7)
    with open(os.path.join(d, "exec.log"), "w") as f:
        f.write(line * (1048576 // len(line)))
PY
mkdir -p "$THOUSAND/mnt"
timed_mount "$THOUSAND" 1000 env
THOUSAND_SECS=$MOUNT_SECS
stop_daemon
umount -l "$THOUSAND/mnt" 2>/dev/null || true
rm -rf "$THOUSAND"
echo "1,000 sandboxes of 1 MiB: mounted with their sizes right in $THOUSAND_SECS s"

OUT=${BENCH_OUT:-target/bench/bench.json}
cat >"$OUT" <<JSON
{
  "merged_mib": $(py "print(round($SIZE / 1048576, 1))"),
  "source_mib": $(py "print(round($SRC_BYTES / 1048576, 1))"),
  "first_sight_s": $FIRST,
  "first_sight_mb_s": $FIRST_MBS,
  "full_read_gb_s": $READ_GBS,
  "fuse_ceiling_gb_s": $CEIL_GBS,
  "full_read_of_ceiling_pct": $OF_CEIL,
  "cat_raw_gb_s": $RAW_GBS,
  "tail_n10_ms": $TAIL,
  "dd_middle_ms": $SEEK,
  "restart_s": $RESTART,
  "state_bytes_per_mib": $STATE_PER_MIB,
  "journal_bytes_per_mib": $JOURNAL_PER_MIB,
  "view_index_bytes_per_mib": $VIEWS_PER_MIB,
  "all_index_bytes_per_mib": $ALL_PER_MIB,
  "views_state_ratio": $VIEWS_RATIO,
  "program_log_read_gb_s": $PROGRAM_GBS,
  "merged_jsonl_read_gb_s": $JSONL_GBS,
  "first_sight_cpu_s_per_100mb": $FIRST_CPU_100,
  "live_ingest_cpu_s_per_100mb": $LIVE_UNPACED,
  "live_paced_cpu_s_per_100mb": $LIVE_PACED,
  "producer_lines_s_mounted": $PRODUCER_MOUNTED,
  "producer_lines_s_alone": $PRODUCER_ALONE,
  "thousand_1mib_mount_s": $THOUSAND_SECS,
  "store_write_path_cpu_s_per_100mb": $WRITE_PATH,
  "peak_rss_mib": $((RSS / 1024)),
  "follow_p50_ms": $P50,
  "follow_p99_ms": $P99,
  "follow_max_ms": $PMAX,
  "many_mount_s": $MANY_FIRST,
  "many_restart_s": $MANY_RESTART,
  "many_idle_rss_mib": $MANY_RSS,
  "many_idle_fds": $MANY_FDS,
  "many_idle_cpu_pct": $MANY_CPU
}
JSON

echo
python3 - "$OUT" scripts/bench-baseline.json <<'PY'
import json, os, sys
now = json.load(open(sys.argv[1]))
before = json.load(open(sys.argv[2])) if os.path.exists(sys.argv[2]) else {}
rows = [
    ("full read of merged.log (dd bs=1M), GB/s", "full_read_gb_s", ">= 1"),
    ("FUSE ceiling, same daemon and run, GB/s", "fuse_ceiling_gb_s", ""),
    ("merged.log / ceiling, %", "full_read_of_ceiling_pct", ">= 50"),
    ("cat of the raw source files, GB/s", "cat_raw_gb_s", ""),
    ("first sight, 50 MiB (mount to st_size, nothing saved), s", "first_sight_s", ""),
    ("first sight, MB/s of source bytes", "first_sight_mb_s", ">= 400"),
    ("restart (mount to st_size, history saved), s", "restart_s", "< 0.2"),
    ("tail -n 10, ms", "tail_n10_ms", ""),
    ("dd 4 x 64 KiB from the middle, ms", "dd_middle_ms", ""),
    ("state beyond the bytes, x merged.log", "views_state_ratio", "<= 1.5"),
    ("full read of program.log, GB/s", "program_log_read_gb_s", ""),
    ("full read of merged.jsonl, GB/s", "merged_jsonl_read_gb_s", ""),
    ("daemon CPU per 100 MB, first sight, s", "first_sight_cpu_s_per_100mb", ""),
    ("daemon CPU per 100 MB, live unpaced, s", "live_ingest_cpu_s_per_100mb", "<= 1"),
    ("daemon CPU per 100 MB, live at 1,000 lines/s, s", "live_paced_cpu_s_per_100mb", "<= 1"),
    ("unpaced producer with the mount, lines/s", "producer_lines_s_mounted", "= without"),
    ("unpaced producer without the mount, lines/s", "producer_lines_s_alone", ""),
    ("store write path CPU per 100 MB, s", "store_write_path_cpu_s_per_100mb", ""),
    ("peak RSS, MiB", "peak_rss_mib", "<= 64"),
    ("follow latency at 4,000 lines/s p50, ms", "follow_p50_ms", "no regression"),
    ("follow latency at 4,000 lines/s p99, ms", "follow_p99_ms", "no regression"),
    ("follow latency at 4,000 lines/s max, ms", "follow_max_ms", ""),
    ("1,000 sandboxes of 1 MiB: mount with sizes right, s", "thousand_1mib_mount_s", "< 2"),
    ("2,000 small sandboxes (ulimit -n 1024): mount, s", "many_mount_s", "< 2"),
    ("2,000 small sandboxes: restart, s", "many_restart_s", "< 2"),
    ("2,000 idle sandboxes: RSS, MiB", "many_idle_rss_mib", "< 256"),
    ("2,000 idle sandboxes: descriptors", "many_idle_fds", "< 1024"),
    ("2,000 idle sandboxes: CPU, % of a core", "many_idle_cpu_pct", "< 2"),
]
print("| measure | before (issue 9) | now | target |")
print("| --- | --- | --- | --- |")
for label, key, target in rows:
    print(f"| {label} | {before.get(key, '')} | {now.get(key, '')} | {target} |")
print(f"(written to {sys.argv[1]})")
PY

#!/usr/bin/env bash
# Benchmarks msbfs (release build) on a simulated ~50 MiB history and prints one table
# (also written to target/bench/bench.json). Reads and restarts are the median of 5.
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
#   2,000        2,000 small sandboxes under `ulimit -n 1024`: mount (first sight and
#                restart) until every one is listed with its size right; then RSS,
#                descriptors and CPU over 10 s while nothing changes
#
# Usage: scripts/bench.sh [LINES]     (default 330000 lines, about 50 MiB of sources)
#        MSBFS_BIN=/path/to/msbfs scripts/bench.sh   (benchmark another build)
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-330000}
if [[ -z ${MSBFS_BIN:-} ]]; then
  cargo build --release --quiet --bin msbfs --example render_bench
fi
BIN=${MSBFS_BIN:-$PWD/target/release/msbfs}
WORK=$(mktemp -d /tmp/msbfs-bench.XXXXXX)
HOME_DIR=$WORK/home MNT=$WORK/mnt STATE=$WORK/state
mkdir -p "$HOME_DIR/sandboxes" "$MNT" target/bench
PID=
cleanup() {
  [[ -n $PID ]] && kill -INT "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  umount -l "$MNT" 2>/dev/null || true
  umount -l "$WORK/many/mnt" 2>/dev/null || true
  rm -rf "$WORK"
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

# Follow latency at 4,000 lines/s (scripts/follow_latency.py).
FOLLOW=$(python3 scripts/follow_latency.py "$MNT/bench/merged.log" "$LOGS/exec.log")
read -r P50 P99 PMAX <<<"$FOLLOW"
echo "follow latency (4,000 lines/s): p50 $P50 ms, p99 $P99 ms, max $PMAX ms"

# Live ingest: an unpaced producer on another sandbox while mounted.
mkdir -p "$HOME_DIR/sandboxes/live/logs"
until [[ -e $MNT/live/merged.log ]]; do sleep 0.01; done
cpu0=$(cpu_of "$PID")
"$BIN" simulate --home "$HOME_DIR" --name live --lines 300000 --rotate-bytes 10485760 --seed 9 >/dev/null
prev=-1
while true; do # until merged.log stops growing
  cur=$(stat -c %s "$MNT/live/merged.log")
  [[ $cur == "$prev" && $cur -gt 0 ]] && break
  prev=$cur
  sleep 0.5
done
LIVE_SIZE=$(stat -c %s "$MNT/live/merged.log")
LIVE_CPU=$(py "print(f'{($(cpu_of "$PID") - $cpu0) * 1e8 / $LIVE_SIZE:.2f}')")
FIRST_CPU_100=$(py "print(f'{$FIRST_CPU * 1e8 / $SIZE:.2f}')")
echo "daemon CPU per 100 MB of merged.log: first sight $FIRST_CPU_100 s, live (unpaced producer) $LIVE_CPU s"
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
rm -rf "$HOME_DIR/sandboxes/live"
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
many_mount() { # sets MANY_SECS: from start until all 2,000 are listed with their sizes right
  local t0; t0=$(now)
  prlimit --nofile=1024:1024 -- "$BIN" mount "$MANY/mnt" --home "$MANY/home" --state-dir "$MANY/state" \
    </dev/null >/dev/null 2>>"$WORK/many.log" &
  PID=$!
  until [[ -e $MANY/mnt/sb1999/merged.log ]]; do sleep 0.01; done
  [[ $(find "$MANY/mnt" -mindepth 1 -maxdepth 1 -type d | wc -l) == 2000 ]] || { echo "not all 2,000 listed" >&2; exit 1; }
  [[ $(stat -c %s "$MANY/mnt/sb1999/merged.log") == $(wc -c <"$MANY/mnt/sb1999/merged.log") ]] || { echo "st_size wrong" >&2; exit 1; }
  MANY_SECS=$(py "print(f'{$(now) - $t0:.2f}')")
}
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

cat >target/bench/bench.json <<JSON
{
  "merged_mib": $(py "print(round($SIZE / 1048576, 1))"),
  "source_mib": $(py "print(round($SRC_BYTES / 1048576, 1))"),
  "first_sight_s": $FIRST,
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
  "live_ingest_cpu_s_per_100mb": $LIVE_CPU,
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
echo "| measure | value | target |"
echo "| --- | --- | --- |"
echo "| full read of merged.log (dd bs=1M, median of 5) | $READ_GBS GB/s | >= 1 GB/s |"
echo "| FUSE ceiling, same daemon and run | $CEIL_GBS GB/s | |"
echo "| merged.log / ceiling | $OF_CEIL % | >= 50 % |"
echo "| cat of the raw source files | $RAW_GBS GB/s | |"
echo "| first sight (mount to st_size, nothing saved) | $FIRST s | |"
echo "| restart (mount to st_size, history saved, median of 5) | $RESTART s | < 0.2 s |"
echo "| tail -n 10 / dd 4 x 64 KiB from the middle | $TAIL ms / $SEEK ms | |"
echo "| state beyond the bytes, per MiB of merged.log: journal and index / view indexes / all.* | $JOURNAL_PER_MIB / $VIEWS_PER_MIB / $ALL_PER_MIB B ($VIEWS_RATIO x) | <= 1.5 x |"
echo "| full read of program.log / merged.jsonl | $PROGRAM_GBS / $JSONL_GBS GB/s | |"
echo "| daemon CPU per 100 MB: first sight / live ingest | $FIRST_CPU_100 s / $LIVE_CPU s | |"
echo "| store write path CPU per 100 MB | $WRITE_PATH s | |"
echo "| peak RSS | $((RSS / 1024)) MiB | <= 64 MiB |"
echo "| follow latency at 4,000 lines/s: p50 / p99 / max | $P50 / $P99 / $PMAX ms | p50 0.07, p99 0.66 before |"
echo "| 2,000 sandboxes (ulimit -n 1024): mount / restart | $MANY_FIRST s / $MANY_RESTART s | < 2 s |"
echo "| 2,000 idle sandboxes: RSS / descriptors / CPU | $MANY_RSS MiB / $MANY_FDS / $MANY_CPU % | < 256 MiB, < 1024, < 2 % |"
echo "(written to target/bench/bench.json)"

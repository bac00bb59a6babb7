//! Rotation stress against a real mount: an unpaced producer rotating every 256 KiB
//! (so old generations are deleted), a live blocking reader, and a cold re-read.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const LINES: u64 = 200_000;
const ROTATE: u64 = 262_144;

/// Parses `N bytes before offset H are no longer retained` into (N, H).
fn retention(notice: &str) -> (u64, u64) {
    let words: Vec<&str> = notice.split(' ').collect();
    assert_eq!(words.len(), 9, "{notice}");
    assert_eq!(&words[1..4], ["bytes", "before", "offset"], "{notice}");
    assert_eq!(&words[5..], ["are", "no", "longer", "retained"], "{notice}");
    (words[0].parse().unwrap(), words[4].parse().unwrap())
}

/// Byte length of the first rendered line.
fn first_line_len(bytes: &[u8]) -> usize {
    bytes.iter().position(|&b| b == b'\n').expect("a line") + 1
}

/// The first few `msbfs` notice lines of `bytes`, with their offsets.
fn first_notices(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut off = 0usize;
    for l in bytes.split(|&b| b == b'\n') {
        if contains(l, b" msbfs ") && out.len() < 5 {
            out.push(format!("@{off}: {}", String::from_utf8_lossy(l)));
        }
        off += l.len() + 1;
    }
    out.join("; ")
}

/// Case 10: The mount is up before the producer starts; a live reader sees everything once,
/// in order; a cold read from 0 gets one retention notice then a contiguous suffix.
#[test]
fn unpaced_rotation_stress_live_and_cold() {
    for round in 0..3u64 {
        let t0 = Instant::now();
        let env = Env::new();
        let logs = env.logs_dir("stress");
        let _m = env.mount();
        let merged = env.merged("stress");
        let reader = LiveReader::start(&merged);
        wait_until(Duration::from_secs(5), "reader thread started", || reader.tid.load(Ordering::SeqCst) != 0);
        wait_parked_in_read(reader.tid.load(Ordering::SeqCst), Duration::from_secs(5));

        let s = Sim::new("stress", LINES).rotate(ROTATE).seed(100 + round).run_bin(&env.home);
        assert!(s.exec_rotations > 4, "old exec generations were deleted: {}", s.exec_rotations);
        assert!(s.runtime_rotations > 4, "old runtime generations were deleted: {}", s.runtime_rotations);
        assert_eq!(s.exec_total(), LINES);
        wait_caught_up(&logs, &merged, Duration::from_secs(60));
        let live = reader.finish(Duration::from_secs(10));
        assert!(live.eofs >= 2, "the reader reached end of file and parked");

        // Live: every marker exactly once, in order, nothing lost, no notice.
        if let Some(dir) = std::env::var_os("MSBFS_IT_DUMP") {
            // Diagnostics: keep what the live reader got and the producer's summary.
            let dir = std::path::PathBuf::from(dir);
            fs::write(dir.join(format!("live-{round}.log")), &live.bytes).unwrap();
            fs::write(dir.join(format!("mount-{round}.stderr")), _m.stderr()).unwrap();
        }
        let notices = count_lines_with(&live.bytes, b" msbfs ");
        assert_eq!(notices, 0, "live reader got {notices} msbfs notice(s): {}", first_notices(&live.bytes));
        check(&live.bytes, &s, Expect::Complete);
        assert_eq!(live.bytes.len() as u64, fs::metadata(&merged).unwrap().len());

        // Cold: one retention notice, then exactly the retained suffix of the live bytes.
        let cold = read_all(&merged);
        let rep = check(&cold, &s, Expect::Suffix { notice_required: true });
        let (lost, horizon) = retention(&rep.notices[0]);
        assert_eq!(lost, horizon, "reading from 0: everything below the horizon is gone");
        let rest = &cold[first_line_len(&cold)..];
        assert_eq!(horizon + rest.len() as u64, live.bytes.len() as u64, "suffix starts at the horizon");
        assert!(live.bytes[horizon as usize..] == *rest, "retained bytes identical to what the live reader got");
        assert!(rep.first_exec.values().any(|&n| n > 0), "the suffix really starts late");
        eprintln!(
            "round {round}: {} bytes, horizon {horizon}, {} exec rotations, {:?}",
            live.bytes.len(),
            s.exec_rotations,
            t0.elapsed()
        );
    }
}

/// Case 11: The mount starts while an unpaced producer is rotating; a live reader from 0.
#[test]
fn mount_in_the_middle_of_rotating_writes() {
    let env = Env::new();
    let logs = env.logs_dir("mid");
    let merged = env.merged("mid");
    let done_lines = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let writer = {
        let (home, done_lines, finished) = (env.home.clone(), done_lines.clone(), finished.clone());
        std::thread::spawn(move || {
            let mut cfg = msbfs::simulate::SimConfig::new(&home, "mid");
            cfg.lines = LINES;
            cfg.rotate_bytes = ROTATE;
            cfg.seed = 77;
            let mut sim = msbfs::simulate::Simulator::new(cfg).unwrap();
            for i in 0..LINES {
                sim.step().unwrap();
                done_lines.store(i + 1, Ordering::Relaxed);
            }
            sim.finish().unwrap();
            finished.store(true, Ordering::SeqCst);
            sim.summary().clone()
        })
    };
    // Mount once the producer has rotated a few times (about 40k lines in).
    wait_until(Duration::from_secs(60), "producer 40k lines in", || done_lines.load(Ordering::Relaxed) >= 40_000);
    let m = env.mount();
    let at_mount = done_lines.load(Ordering::Relaxed);
    let reader = LiveReader::start(&merged);
    let s = writer.join().expect("writer");
    assert!(s.exec_rotations > 4);
    wait_caught_up(&logs, &merged, Duration::from_secs(60));
    let live = reader.finish(Duration::from_secs(10));
    eprintln!(
        "mounted after {at_mount} of {LINES} lines (producer still writing: {}); live reader got {} bytes",
        at_mount < LINES,
        live.bytes.len()
    );
    // Maybe a leading retention notice; then every source contiguous to its end, and
    // no other notice (in particular no `were lost before msbfs could read them`).
    let notices = count_lines_with(&live.bytes, b" msbfs ");
    assert!(notices <= 1, "live reader got {notices} msbfs notices: {}", first_notices(&live.bytes));
    let rep = check(&live.bytes, &s, Expect::Suffix { notice_required: false });
    for n in &rep.notices {
        assert!(!n.contains("were lost"), "gap notice: {n}");
    }
    let cold = read_all(&merged);
    let rep2 = check(&cold, &s, Expect::Suffix { notice_required: false });
    for n in &rep2.notices {
        assert!(!n.contains("were lost"), "gap notice: {n}");
    }
    assert!(m.is_mounted());
}

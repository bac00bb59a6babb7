//! Rotation stress against a real mount: an unpaced producer rotating every 256 KiB
//! (so old generations are destroyed within milliseconds), a live blocking reader, and
//! cold re-reads. Every line must appear exactly once, or its loss must be announced
//! where it happened with a lower-bound count; the store keeps everything, so a cold
//! read gives exactly the bytes the live reader got.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const LINES: u64 = 200_000;
const ROTATE: u64 = 262_144;

/// The mount is up before the producer starts; a live reader sees every line once (or an
/// announced loss), in order; a cold read from 0 gives the very same bytes.
#[test]
fn unpaced_rotation_stress_live_and_cold() {
    require_mount!();
    for round in 0..3u64 {
        let t0 = Instant::now();
        let env = Env::new();
        let logs = env.logs_dir("stress");
        let m = env.mount();
        let merged = env.merged("stress");
        let reader = LiveReader::start(&merged);
        wait_until(Duration::from_secs(5), "reader thread started", || reader.tid.load(Ordering::SeqCst) != 0);
        wait_parked_in_read(reader.tid.load(Ordering::SeqCst), Duration::from_secs(5));

        let s = Sim::new("stress", LINES).rotate(ROTATE).seed(100 + round).run_bin(&env.home);
        assert!(s.exec_rotations > 4, "old exec generations were destroyed: {}", s.exec_rotations);
        assert!(s.runtime_rotations > 4, "old runtime generations were destroyed: {}", s.runtime_rotations);
        assert_eq!(s.exec_total(), LINES);
        wait_caught_up(&logs, &merged, Duration::from_secs(60));
        let live = reader.finish(Duration::from_secs(10));
        assert!(live.eofs >= 2, "the reader reached end of file and parked");
        if let Some(dir) = std::env::var_os("MSBFS_IT_DUMP") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::write(dir.join(format!("live-{round}.log")), &live.bytes).unwrap();
            std::fs::write(dir.join(format!("mount-{round}.stderr")), m.stderr()).unwrap();
        }
        let rep = check(&live.bytes, &s, Expect::Announced);
        assert_eq!(live.bytes.len() as u64, std::fs::metadata(&merged).unwrap().len());
        let cold = read_all(&merged);
        assert!(cold == live.bytes, "a cold read gives exactly what the live reader got");
        eprintln!(
            "round {round}: {} bytes, {} exec rotations, {} lines missing under {} notice(s) {:?}, {:?}",
            live.bytes.len(),
            s.exec_rotations,
            rep.missing,
            rep.notices.len(),
            rep.lost_generations,
            t0.elapsed()
        );
    }
}

/// The mount starts while an unpaced producer is rotating; a live reader from 0 gets what
/// was on disk at first sight and everything after it (or an announced loss).
#[test]
fn mount_in_the_middle_of_rotating_writes() {
    require_mount!();
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
    let rep = check(&live.bytes, &s, Expect::Tail);
    assert!(rep.first_exec.values().any(|&n| n > 0), "history from before the mount is gone, as it should be");
    eprintln!(
        "mounted after {at_mount} of {LINES} lines (producer still writing: {}); live reader got {} bytes, {} missing under notices",
        at_mount < LINES,
        live.bytes.len(),
        rep.missing
    );
    assert!(read_all(&merged) == live.bytes, "a cold read gives exactly what the live reader got");
    assert!(m.is_mounted());
}

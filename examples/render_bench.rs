//! Ingest and replay throughput without FUSE: ingest a sandbox's whole history into a
//! fresh store (the first-sight batch), then render every retained segment again from
//! its checkpoint (the verification path). Reports thread CPU time, so a busy machine
//! disturbs it less than wall time, and the bytes of state per MiB of `merged.log`.
//!
//! Usage: cargo run --release --example render_bench -- <HOME> <SANDBOX> [ROUNDS]

use std::path::PathBuf;

use msbfs::ingest::sandbox::SandboxIngest;
use msbfs::source::find_generation;
use msbfs::store::Store;
use msbfs::timeline::replay::replay_segment;

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.blocks() * 512 };
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (home, name) = match (args.get(1), args.get(2)) {
        (Some(h), Some(n)) => (PathBuf::from(h), n.clone()),
        _ => {
            eprintln!("usage: render_bench <HOME> <SANDBOX> [ROUNDS]");
            std::process::exit(2);
        }
    };
    let rounds: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(5);
    let logs = home.join("sandboxes").join(&name).join("logs");
    if !logs.is_dir() {
        eprintln!("render_bench: {} is not a directory", logs.display());
        std::process::exit(2);
    }
    let mut ingest_best = f64::MAX;
    let mut replay_best = f64::MAX;
    let (mut size, mut state) = (0, 0);
    for _ in 0..rounds {
        let state_dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(state_dir.path(), &home, Some(1 << 40)).expect("store");
        let t0 = cpu_seconds();
        let mut sb = SandboxIngest::create(&name, &logs, store.create_epoch(&name, b"bench").expect("epoch"));
        sb.poll(true);
        sb.finish(true);
        let t1 = cpu_seconds();
        let epoch = sb.timeline().store().clone();
        size = epoch.size();
        epoch.sync().expect("sync");
        let resolve = |kind, rec: &_| find_generation(kind, &logs, rec);
        let mut replayed = 0u64;
        for seg in epoch.retained_segments() {
            replayed += replay_segment(&epoch, &seg, &resolve).expect("replays").len() as u64;
        }
        let t2 = cpu_seconds();
        assert!(replayed + (2 << 20) > size, "replayed {replayed} of {size}");
        ingest_best = ingest_best.min(t1 - t0);
        replay_best = replay_best.min((t2 - t1) * size as f64 / replayed.max(1) as f64);
        state = dir_bytes(state_dir.path());
    }
    // The store's own share: appending the same bytes in 1 MiB commits to a fresh epoch.
    let state_dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(state_dir.path(), &home, Some(1 << 40)).expect("store");
    let epoch = store.create_epoch("append", b"bench").expect("epoch");
    let chunk = vec![b'x'; 1 << 20];
    let t0 = cpu_seconds();
    let mut appended = 0u64;
    while appended < size {
        let cut = msbfs::store::Cut { out: appended, payload_at: 0, boundary: true };
        let commit =
            msbfs::store::Commit { bytes: &chunk, payload: b"p", extra: &[], cuts: &[cut], ts_range: Some((0, 1)) };
        epoch.append(&commit).expect("append");
        appended += chunk.len() as u64;
    }
    epoch.sync().expect("sync");
    let append_cpu = cpu_seconds() - t0;
    let mib = size as f64 / 1048576.0;
    println!(
        "store write path: {append_cpu:.3} s CPU for {:.1} MiB ({:.3} s per 100 MB)",
        appended as f64 / 1048576.0,
        append_cpu * 1e8 / appended as f64
    );
    println!(
        "{mib:.1} MiB merged: ingest into the store {ingest_best:.3} s CPU ({:.0} MiB/s), replay of every segment {replay_best:.3} s CPU ({:.0} MiB/s), best of {rounds}",
        mib / ingest_best,
        mib / replay_best
    );
    println!(
        "state on disk: {state} bytes for {size} bytes of merged.log ({:.0} bytes of journal and index per MiB)",
        (state.saturating_sub(size)) as f64 / mib
    );
}

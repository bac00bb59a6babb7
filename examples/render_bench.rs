//! Rendering throughput without FUSE: ingest a sandbox's whole history (first-sight
//! batch), then render every closed segment again from its checkpoint. Reports thread
//! CPU time, so a busy machine disturbs it less than wall time.
//!
//! Usage: cargo run --release --example render_bench -- <HOME> <SANDBOX> [ROUNDS]

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use msbfs::ingest::sandbox::SandboxIngest;
use msbfs::source::generation::FileId;

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
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
    let meta = std::fs::metadata(&logs).unwrap_or_else(|e| {
        eprintln!("render_bench: {}: {e}", logs.display());
        std::process::exit(2);
    });
    let id = FileId { dev: meta.dev(), ino: meta.ino() };
    let mut ingest_best = f64::MAX;
    let mut render_best = f64::MAX;
    let mut size = 0;
    let mut index = (0, 0);
    for _ in 0..rounds {
        let t0 = cpu_seconds();
        let mut sb = SandboxIngest::new(&name, &logs, id, 1);
        sb.poll();
        let t1 = cpu_seconds();
        let timeline = sb.timeline().clone();
        size = timeline.size();
        index = timeline.index_stats();
        let segments = timeline.checkpoint_offsets().len() - 1;
        let mut rendered = 0u64;
        for k in 0..segments {
            rendered += timeline.rerender_segment(k).expect("closed segment").expect("renders").len() as u64;
        }
        let t2 = cpu_seconds();
        assert!(rendered + (64 << 20) > size, "rendered {rendered} of {size}");
        ingest_best = ingest_best.min(t1 - t0);
        render_best = render_best.min((t2 - t1) * size as f64 / rendered as f64);
    }
    let mib = size as f64 / 1048576.0;
    let checkpoint_bytes = index.0 * std::mem::size_of::<msbfs::timeline::Checkpoint>();
    println!(
        "index: {} checkpoints ({checkpoint_bytes} bytes) + {} bytes of ops = {:.0} bytes per 64 KiB of output",
        index.0,
        index.1,
        (checkpoint_bytes + index.1) as f64 / (size as f64 / 65536.0)
    );
    println!(
        "{mib:.1} MiB merged: ingest {ingest_best:.3} s CPU ({:.0} MiB/s), re-render {render_best:.3} s CPU ({:.0} MiB/s), best of {rounds}",
        mib / ingest_best,
        mib / render_best
    );
}

//! `msbfs demo`: a simulated sandbox that keeps writing, mounted, so that a newcomer
//! sees within half a minute what msbfs is for: bursts, several sessions, a line split
//! across chunks, and rotations of `exec.log` that `merged.log` goes through without a
//! gap. The terminal shows only what the demo says (each burst and rotation as it
//! happens); the daemon's own log goes to a file.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mount::{self, MountError, MountOptions};
use crate::simulate::{SimConfig, Simulator};

/// `exec.log` and `runtime.log` rotate past this size in the demo.
const ROTATE_BYTES: u64 = 64 << 10;
/// Lines per second between bursts.
const STEADY_RATE: u32 = 4;
/// A burst comes this often, the first one after [`FIRST_BURST`].
const BURST_EVERY: Duration = Duration::from_secs(10);
/// When the first burst comes.
const FIRST_BURST: Duration = Duration::from_secs(2);
/// Lines written at once in a burst (about 64 KiB of `exec.log`: one rotation).
const BURST_LINES: u32 = 600;

/// Runs the demo on `mountpoint` (default `./msb`) until Ctrl-C, then unmounts and
/// removes everything it created.
pub fn run(mountpoint: Option<PathBuf>) -> Result<(), MountError> {
    let mountpoint = mountpoint.unwrap_or_else(|| PathBuf::from("msb"));
    let created_mountpoint = !mountpoint.exists();
    if created_mountpoint {
        std::fs::create_dir_all(&mountpoint)?;
    }
    let home = std::env::temp_dir().join(format!("msbfs-demo-{}", std::process::id()));
    std::fs::create_dir_all(home.join("sandboxes"))?;
    let daemon_log = home.join("msbfs.log");
    let terminal = divert_stderr(&daemon_log)?;
    let mut cfg = SimConfig::new(&home, "demo");
    cfg.rate = f64::from(STEADY_RATE);
    cfg.rotate_bytes = ROTATE_BYTES;
    cfg.start_ms = crate::time::now_ms();
    cfg.seed = cfg.start_ms as u64;
    cfg.wall_clock = true;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let stop = stop.clone();
        std::thread::spawn(move || produce(cfg, &stop))
    };
    let opts = MountOptions {
        mountpoint: mountpoint.clone(),
        home: home.clone(),
        allow_other: false,
        state_dir: home.join("msbfs-state"),
        max_store: None,
        bench_ceiling: None,
        nonempty: false,
    };
    let result = mount::serve(&opts, || print_welcome(&mountpoint, &home, &daemon_log));
    stop.store(true, Ordering::Relaxed);
    let produced = producer.join();
    let _ = std::fs::remove_dir_all(&home);
    if created_mountpoint {
        let _ = std::fs::remove_dir(&mountpoint);
    }
    // Errors go to the terminal again, not to the removed log file.
    // SAFETY: dup2 of a descriptor this process owns onto stderr.
    unsafe { libc::dup2(terminal.as_raw_fd(), 2) };
    if let Ok(Err(e)) = produced {
        eprintln!("msbfs: simulated producer: {e}");
    }
    result
}

/// Points stderr (where the daemon logs) at `log`, returning the terminal's stderr.
fn divert_stderr(log: &Path) -> std::io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    // SAFETY: dup and dup2 on descriptors this process owns; the duplicate is owned
    // by the returned value.
    unsafe {
        let saved = libc::dup(2);
        if saved < 0 || libc::dup2(file.as_raw_fd(), 2) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(saved))
    }
}

/// How to name this program in a command the user can paste: `msbfs` when it is the
/// one on `$PATH`, else its path (relative to here when below it).
fn program() -> String {
    let Ok(exe) = std::env::current_exe() else { return "msbfs".into() };
    if crate::mounter::find_program("msbfs").and_then(|p| p.canonicalize().ok()) == exe.canonicalize().ok() {
        return "msbfs".into();
    }
    let here = std::env::current_dir().ok();
    here.and_then(|h| exe.strip_prefix(h).ok().map(|p| p.display().to_string())).unwrap_or(exe.display().to_string())
}

fn print_welcome(mountpoint: &Path, home: &Path, daemon_log: &Path) {
    let file = mountpoint.join("demo").join("merged.log");
    let f = file.display();
    let logs = home.join("sandboxes/demo/logs");
    println!("msbfs demo: the simulated sandbox 'demo' is mounted on {}.", mountpoint.display());
    println!("Its producer writes {} and rotates it past 64 KiB.", logs.join("exec.log").display());
    println!();
    println!("Try, in another terminal:");
    println!("  tail -f {f}");
    println!("  less +F {f}                  (Ctrl-C stops following, q quits)");
    println!("  grep -c stderr {f}");
    println!("  {} cursor decode {f}   (where a reader would resume)", program());
    if crate::mounter::find_program("getfattr").is_some() {
        println!("  getfattr -n user.cursor {f}");
    } else {
        println!("  getfattr -n user.cursor {f}   (needs the attr package: apt install attr)");
    }
    println!();
    println!("Every {}s a burst of {BURST_LINES} lines rotates exec.log; tail -f sees no gap.", BURST_EVERY.as_secs());
    println!("The daemon's own log: {}. Ctrl-C here unmounts and removes everything.", daemon_log.display());
    println!();
}

/// Writes [`STEADY_RATE`] lines a second with a burst every [`BURST_EVERY`], and says
/// on stdout when a burst or a rotation happens.
fn produce(cfg: SimConfig, stop: &AtomicBool) -> std::io::Result<()> {
    let mut sim = Simulator::new(cfg)?;
    let start = Instant::now();
    let mut next_burst = FIRST_BURST;
    let mut rotations = (0, 0);
    let mut sessions = 0;
    let tick = Duration::from_secs(1) / STEADY_RATE;
    while !stop.load(Ordering::Relaxed) {
        let burst = start.elapsed() >= next_burst;
        let lines = if burst { BURST_LINES } else { 1 };
        for _ in 0..lines {
            sim.step()?;
        }
        sim.flush_runtime()?;
        let summary = sim.summary();
        let at = start.elapsed().as_secs();
        let stamp = format!("[{:02}:{:02}]", at / 60, at % 60);
        if burst {
            println!("{stamp} burst: {BURST_LINES} lines at once");
            next_burst += BURST_EVERY;
        }
        let now_sessions = summary.sessions();
        if now_sessions != sessions {
            if sessions > 0 {
                println!("{stamp} session {now_sessions} started");
            }
            sessions = now_sessions;
        }
        if summary.exec_rotations != rotations.0 {
            println!(
                "{stamp} exec.log rotated (rotation {}): exec.log became exec.log.1; merged.log goes on",
                summary.exec_rotations
            );
        }
        if summary.runtime_rotations != rotations.1 {
            println!("{stamp} runtime.log rotated (rotation {})", summary.runtime_rotations);
        }
        rotations = (summary.exec_rotations, summary.runtime_rotations);
        std::thread::sleep(tick);
    }
    sim.finish()
}

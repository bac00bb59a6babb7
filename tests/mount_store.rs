//! The store against a real mount: restarts keep the inode number and every byte,
//! SIGKILL at random moments loses or changes nothing a reader was given, torn or
//! corrupt state files are repaired, a tiny budget drops the oldest bytes as notice text
//! of their exact length (and real tools still treat the file as text), a late reader
//! gets the whole history after many fast rotations, no descriptor to a deleted file is
//! kept without need, and a bad or shared state directory is refused.

#[macro_use]
mod common;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The one epoch directory of the state of `env`.
fn epoch_dir(env: &Env) -> PathBuf {
    let homes: Vec<PathBuf> = fs::read_dir(env.state()).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(homes.len(), 1, "one home in the state root: {homes:?}");
    let epochs: Vec<PathBuf> = fs::read_dir(homes[0].join("epochs")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    epochs[0].clone()
}

/// A restart keeps the inode number and every byte; what was written meanwhile
/// follows, and a loss is announced only where generations really vanished.
#[test]
fn restarts_keep_the_inode_and_every_byte() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("web");
    let merged = env.merged("web");
    // 128 KiB rotations, about 3 while mounted first: no generation lost before then.
    let mut sim = simulator(&env, "web", 128 << 10, 3);
    steps(&mut sim, 1500);
    let m = env.mount();
    wait_caught_up(&logs, &merged, Duration::from_secs(20));
    let ino = fs::metadata(&merged).unwrap().ino();
    let first = read_all(&merged);
    m.stop();

    // Two rotations while stopped: every generation is still there.
    steps(&mut sim, 1500);
    let m = env.mount();
    wait_caught_up(&logs, &merged, Duration::from_secs(20));
    assert_eq!(fs::metadata(&merged).unwrap().ino(), ino, "the same file after a restart");
    let second = read_all(&merged);
    assert!(second.starts_with(&first), "every old byte unchanged");
    check(&second, sim.summary(), Expect::Complete);
    m.stop();

    // Many rotations while stopped: the generations msbfs stood in are gone.
    steps(&mut sim, 8000);
    let m = env.mount();
    wait_caught_up(&logs, &merged, Duration::from_secs(20));
    assert_eq!(fs::metadata(&merged).unwrap().ino(), ino);
    let third = read_all(&merged);
    assert!(third.starts_with(&second), "every old byte unchanged");
    let rep = check(&third, sim.summary(), Expect::Announced);
    let after: Vec<&String> = rep.notices.iter().collect();
    assert!(
        after.iter().any(|n| n.starts_with("exec.log: bytes written while msbfs was not running were rotated away")),
        "{after:?}"
    );
    let notice_at = memchr::memmem::find(&third, b"were rotated away").unwrap();
    assert!(notice_at > second.len(), "announced where the loss happened, after the old bytes");
    assert!(rep.missing > 0);
    assert!(m.stderr().contains("while msbfs was not running"), "logged too");
    drop(m);
}

/// A shipper that remembers its offset, reopening and seeking there whenever the
/// mount goes away: every line exactly once, in order, across SIGKILLs at random
/// moments.
#[test]
fn sigkill_at_random_moments_loses_and_changes_nothing() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("crash");
    let merged = env.merged("crash");
    let producer = Sim::new("crash", 16_000).rate(1000.0).rotate(64 << 10).seed(21).spawn_bin(&env.home);
    let mut daemon = env.mount();
    wait_until(Duration::from_secs(10), "merged.log appears", || merged.exists());

    let stop = Arc::new(AtomicBool::new(false));
    let reopens = Arc::new(AtomicU64::new(0));
    let shipper = {
        let (merged, stop, reopens) = (merged.clone(), stop.clone(), reopens.clone());
        std::thread::spawn(move || {
            let mut got: Vec<u8> = Vec::new();
            let mut ino = None;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let Ok(mut f) = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&merged) else {
                    if stop.load(Ordering::SeqCst) {
                        return got;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let this = f.metadata().map(|m| m.ino()).ok();
                assert!(
                    ino.is_none() || this.is_none() || this == ino,
                    "the inode number changed: {ino:?} -> {this:?}"
                );
                ino = ino.or(this);
                reopens.fetch_add(1, Ordering::SeqCst);
                if f.seek(SeekFrom::Start(got.len() as u64)).is_err() {
                    continue;
                }
                loop {
                    match f.read(&mut buf) {
                        Ok(0) if stop.load(Ordering::SeqCst) => return got,
                        Ok(0) => std::thread::sleep(Duration::from_millis(5)),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => break,
                    }
                }
            }
        })
    };

    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    let t0 = Instant::now();
    while kills < 12 || t0.elapsed() < Duration::from_secs(6) {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(150 + (rng >> 33) % 900));
        daemon.kill9();
        kills += 1;
        daemon = env.mount();
        if kills >= 30 {
            break;
        }
    }
    let summary = finish_bin(producer, Duration::from_secs(60));
    wait_caught_up(&logs, &merged, Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    let got = shipper.join().expect("shipper");
    eprintln!(
        "{kills} kills, {} reopens, {} lines, {} bytes",
        reopens.load(Ordering::SeqCst),
        got.iter().filter(|&&b| b == b'\n').count(),
        got.len()
    );
    assert!(kills >= 10);
    check(&got, &summary, Expect::Complete);
    assert!(read_all(&merged) == got, "what the shipper got is byte for byte the file");
    drop(daemon);
}

/// Each state file in turn truncated or corrupted at its end: the mount comes up, logs
/// what it repaired, and serves the same consistent file.
#[test]
fn torn_or_corrupt_state_files_are_repaired() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("torn");
    let merged = env.merged("torn");
    let mut sim = simulator(&env, "torn", 10 << 20, 5);
    steps(&mut sim, 8000);
    let m = env.mount();
    wait_caught_up(&logs, &merged, Duration::from_secs(20));
    let good = read_all(&merged);
    m.stop();
    let dir = epoch_dir(&env);
    for (file, damage) in [
        ("data", "truncate"),
        ("data", "corrupt"),
        ("segments", "truncate"),
        ("segments", "corrupt"),
        ("journal", "truncate"),
        ("journal", "corrupt"),
    ] {
        let path = dir.join(file);
        let len = fs::metadata(&path).unwrap().len();
        // The end of what was written (the journal may carry preallocated zeros).
        let raw = fs::read(&path).unwrap();
        let end = raw.iter().rposition(|&b| b != 0).map_or(len, |i| i as u64 + 1);
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        match damage {
            "truncate" => f.set_len(end - 7).unwrap(),
            _ => {
                use std::os::unix::fs::FileExt;
                f.write_all_at(b"\xde\xad\xbe\xef\xde\xad", end - 12).unwrap();
            }
        }
        drop(f);
        let m = env.mount();
        wait_caught_up(&logs, &merged, Duration::from_secs(20));
        let now = read_all(&merged);
        check(&now, sim.summary(), Expect::Complete);
        assert!(now == good, "{file} {damage}: the file is served as before");
        let log = m.stderr();
        assert!(log.contains("store recovery:"), "{file} {damage}: the repair is logged:\n{log}");
        m.stop();
    }
}

/// A tiny budget: the oldest bytes read as notice text of exactly their length, through
/// every handle; `st_size` is unchanged; grep and ripgrep count the surviving lines and
/// see text, not a binary file; `SEEK_HOLE` is the end of the file.
#[test]
fn a_tiny_budget_drops_the_oldest_bytes_as_notices_of_their_length() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("tiny");
    let merged = env.merged("tiny");
    let m = env.mount_with(&["--max-store", "2M"]);
    let s = Sim::new("tiny", 60_000).rotate(1 << 20).seed(8).run_bin(&env.home);
    wait_caught_up(&logs, &merged, Duration::from_secs(30));
    // The budget may still drop a segment just after the last commit (a fallback poll's
    // record tips the journal over it): wait until what is served stays the same.
    let mut all = read_all(&merged);
    wait_until(Duration::from_secs(20), "the store settled within its budget", || {
        std::thread::sleep(Duration::from_millis(1500));
        let again = read_all(&merged);
        std::mem::replace(&mut all, again) == all
    });
    let size = fs::metadata(&merged).unwrap().len();
    assert_eq!(all.len() as u64, size, "every offset is there");
    let rep = check(&all, &s, Expect::Dropped);
    assert!(rep.dropped_lines > 100, "a large prefix was dropped: {} notice lines", rep.dropped_lines);
    let dropped_end = all.split(|&b| b == b'\n').take(rep.dropped_lines).map(|l| l.len() + 1).sum::<usize>();
    let surviving = all[dropped_end..].split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    assert!(size as usize - dropped_end < 3 << 20, "within the budget (plus the open segment)");
    // Another handle, another offset: the same bytes.
    let mut f = File::open(&merged).unwrap();
    f.seek(SeekFrom::Start(dropped_end as u64 - 100)).unwrap();
    let mut part = vec![0u8; 300];
    f.read_exact(&mut part).unwrap();
    assert_eq!(part, &all[dropped_end - 100..dropped_end + 200]);
    // Real tools see text: they count the surviving marker lines.
    let patterns = ["-e", MARKERS[0], "-e", MARKERS[1], "-e", MARKERS[2]];
    let grep = Command::new("grep").arg("-cF").args(patterns).arg(&merged).output().unwrap();
    let grep_out = String::from_utf8_lossy(&grep.stdout).trim().to_string();
    let expected = all[dropped_end..].split(|&b| b == b'\n').filter(|l| has_marker(l)).count();
    assert_eq!(grep_out, expected.to_string(), "grep -c: {}", String::from_utf8_lossy(&grep.stderr));
    assert!(!String::from_utf8_lossy(&grep.stderr).contains("binary"));
    let rg = Command::new("rg").arg("-cF").args(patterns).arg(&merged).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&rg.stdout).trim(), expected.to_string(), "rg -c");
    // cp, tail -c +N and dd skip= see the very same bytes.
    let copy = env.root().join("copy.log");
    assert!(Command::new("cp").arg(&merged).arg(&copy).status().unwrap().success());
    assert!(fs::read(&copy).unwrap() == all, "cp");
    let from = dropped_end - 1000;
    let tail = Command::new("tail").arg("-c").arg(format!("+{}", from + 1)).arg(&merged).output().unwrap();
    assert!(tail.stdout == all[from..], "tail -c +N");
    let dd = Command::new("dd")
        .arg(format!("if={}", merged.display()))
        .args(["bs=4096", "skip=100", "count=300", "status=none"])
        .output()
        .unwrap();
    assert!(dd.stdout == all[100 * 4096..(400 * 4096).min(all.len())], "dd skip=");
    let hole = {
        use std::os::fd::AsRawFd;
        // SAFETY: lseek on a descriptor we own.
        unsafe { libc::lseek(f.as_raw_fd(), 4096, libc::SEEK_HOLE) }
    };
    assert_eq!(hole as u64, size, "no hole before the end");
    assert!(surviving > 1000);
    eprintln!("{size} bytes, {dropped_end} dropped in {} notice lines, {surviving} lines kept", rep.dropped_lines);
    drop(m);
}

/// What a marker line of the stdout, stderr and output streams holds.
const MARKERS: [&str; 3] = ["] stdout s=", "] stderr s=", "] output s="];

/// True for a marker line (what `grep -F` with [`MARKERS`] matches).
fn has_marker(line: &[u8]) -> bool {
    MARKERS.iter().any(|k| memchr::memmem::find(line, k.as_bytes()).is_some())
}

/// A reader that opens after many fast rotations reads the whole history, kernel and
/// runtime lines included, although the generations are long gone from disk.
#[test]
fn a_late_reader_gets_the_whole_history_after_fast_rotations() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("late");
    let merged = env.merged("late");
    let _m = env.mount();
    let s = Sim::new("late", 120_000).rotate(256 << 10).seed(31).run_bin(&env.home);
    assert!(s.exec_rotations > 20);
    wait_caught_up(&logs, &merged, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    let all = read_all(&merged);
    let rep = check(&all, &s, Expect::Announced);
    assert_eq!(rep.first_runtime, Some(0), "the first runtime lines are there");
    assert!(rep.per_tag.get("kernel").copied().unwrap_or(0) as u64 == s.kernel_lines, "every kernel line");
    eprintln!("{} bytes, {} missing under {} notices", all.len(), rep.missing, rep.notices.len());
}

/// A long rotating run with no reader: at any moment at most one descriptor per source
/// points at a deleted file.
#[test]
fn deleted_generations_are_not_held_without_need() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("fds");
    let merged = env.merged("fds");
    let m = env.mount();
    let producer = Sim::new("fds", 12_000).rate(2000.0).rotate(64 << 10).seed(4).spawn_bin(&env.home);
    let t0 = Instant::now();
    let (mut samples, mut worst) = (0, Vec::new());
    while t0.elapsed() < Duration::from_secs(5) {
        let deleted = m.deleted_fds_under(&logs);
        for source in ["exec.log", "runtime.log", "kernel.log"] {
            let n = deleted.iter().filter(|f| f.starts_with(source)).count();
            assert!(n <= 1, "{n} descriptors to deleted {source} generations: {deleted:?}");
        }
        if deleted.len() > worst.len() {
            worst = deleted;
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = finish_bin(producer, Duration::from_secs(30));
    assert!(s.exec_rotations > 10);
    wait_caught_up(&logs, &merged, Duration::from_secs(20));
    eprintln!("{samples} samples, at most {} deleted-file descriptors: {worst:?}", worst.len());
    assert!(m.deleted_fds_under(&logs).is_empty(), "none once caught up");
    check(&read_all(&merged), &s, Expect::Announced);
}

fn msbfs(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("MSBFS_LOG", "warn").output().unwrap()
}

/// A state directory that cannot be created is a one-line error with exit code 2; a
/// second daemon on the same home and state directory is refused with a clear message.
#[test]
fn bad_or_shared_state_directories_are_refused() {
    require_mount!();
    let env = Env::new();
    env.logs_dir("one");
    let home = env.home.to_str().unwrap();
    let mnt = env.mnt.to_str().unwrap();
    let out = msbfs(&["mount", mnt, "--home", home, "--state-dir", "/proc/msbfs-cannot-be-here"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("state directory") && err.contains("/proc/msbfs-cannot-be-here"), "{err}");

    let _first = env.mount();
    let other = env.root().join("mnt2");
    fs::create_dir_all(&other).unwrap();
    let state = env.state();
    let out = msbfs(&["mount", other.to_str().unwrap(), "--home", home, "--state-dir", state.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("in use by another msbfs"), "{err}");
    assert!(mounts_at(&other).is_empty(), "nothing mounted");
    // Another home may share the state root.
    let home2 = env.root().join("home2");
    fs::create_dir_all(home2.join("sandboxes/two/logs")).unwrap();
    let second = Mounted::start_with(&home2, &other, &env.root().join("second.stderr"), &[]);
    assert!(second.is_mounted());
    assert!(Path::new(&other).join("two/merged.log").exists());
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The state filesystem fills up (with something else's file): msbfs drops its own
/// oldest bytes to make room, keeps the mount and the live end, warns once, and
/// announces at its place each range it could not keep; once there is room again it
/// stores what comes next, and a restart finds those ranges again.
#[test]
fn a_full_state_filesystem_keeps_the_mount_and_announces_what_it_could_not_keep() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("full");
    let merged = env.merged("full");
    let state = Tmpfs::mount(&env.state(), "6m");
    let mut sim = simulator(&env, "full", 10 << 20, 12);
    steps(&mut sim, 40_000);
    // Less room than one first-sight batch (1 MiB), and nothing old to drop yet.
    let free = {
        let st = nix::sys::statvfs::statvfs(&state.0).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    };
    let filler = state.0.join("filler");
    fs::write(&filler, vec![b'x'; (free - (400 << 10)) as usize]).unwrap();
    let m = env.mount_with(&["--max-store", "1G"]);
    wait_caught_up(&logs, &merged, Duration::from_secs(30));
    let all = read_all(&merged);
    assert_eq!(all.len() as u64, fs::metadata(&merged).unwrap().len());
    assert!(!all.contains(&0), "no byte is served that was never written");
    assert!(memchr::memmem::find(&all, b"could not be stored (the msbfs state filesystem was full)").is_some());
    assert!(m.is_mounted());
    // Room again: what comes next is stored.
    fs::remove_file(&filler).unwrap();
    steps(&mut sim, 2000);
    wait_caught_up(&logs, &merged, Duration::from_secs(30));
    let after = read_all(&merged);
    assert!(after.starts_with(&all), "nothing served before changed");
    let rep = check(&after, sim.summary(), Expect::Tail);
    let log = m.stderr();
    assert_eq!(log.matches("state filesystem is full").count(), 1, "one warning:\n{log}");
    assert!(log.contains("accepts writes again"), "{log}");
    eprintln!(
        "{} bytes, {} dropped-notice lines, {} lines missing under {} notices",
        after.len(),
        rep.dropped_lines,
        rep.missing,
        rep.notices.len()
    );
    // A restart recovers where those ranges are: they read as the same notices.
    m.stop();
    let m = env.mount_with(&["--max-store", "1G"]);
    wait_caught_up(&logs, &merged, Duration::from_secs(30));
    assert_eq!(read_all(&merged), after, "the same bytes after a restart");
    drop(m);
}

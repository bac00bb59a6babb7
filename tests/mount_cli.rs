//! The `msbfs mount` command line: argument errors, stale mountpoints, clean unmount,
//! and the stop after a panic of the ingest thread.

#[macro_use]
mod common;

use std::fs::{self, File};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;

/// Runs `msbfs mount` expecting a usage error: exit 2 within 5 s, one stderr line.
fn mount_fails(mnt: &std::path::Path, home: &std::path::Path, expect: &str) {
    let mounted_before = mounts_at(mnt).len();
    let t = Instant::now();
    let mut child = ChildGuard::new(
        "msbfs mount",
        Command::new(BIN)
            .arg("mount")
            .arg(mnt)
            .arg("--home")
            .arg(home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let st = child.wait_exit(Duration::from_secs(5)).expect("exits within 5 s");
    assert!(t.elapsed() < Duration::from_secs(5));
    let mut err = String::new();
    child.child().stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let mut out = String::new();
    child.child().stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(st.code(), Some(2), "exit code; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    assert!(err.contains(expect), "stderr {err:?} should mention {expect:?}");
    assert_eq!(out, "");
    assert_eq!(mounts_at(mnt).len(), mounted_before, "nothing mounted");
}

/// Case 12: Usage errors: exit code 2 and a one-line message.
#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    mount_fails(&env.root().join("missing"), &env.home, "No such file or directory");
    let file = env.root().join("a-file");
    File::create(&file).unwrap();
    mount_fails(&file, &env.home, "not a directory");
    let bare = env.root().join("bare-home");
    fs::create_dir(&bare).unwrap();
    mount_fails(&env.mnt, &bare, "sandboxes");
    mount_fails(&env.mnt, &env.root().join("no-such-home"), "sandboxes");
}

/// Every problem before mounting is reported, not only the first; a mountpoint that
/// is not empty or is a live msbfs mount already is refused unless --nonempty.
#[test]
fn every_argument_problem_is_reported_and_nothing_is_stacked() {
    let env = Env::new();
    let out = Command::new(BIN)
        .arg("mount")
        .arg(env.root().join("no-mnt"))
        .arg("--home")
        .arg(env.root().join("no-home"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("msbfs: ") && lines[0].contains("no-home has no sandboxes/ directory"), "{err}");
    assert!(lines[1].starts_with("msbfs: mountpoint ") && lines[1].contains("No such file or directory"), "{err}");

    File::create(env.mnt.join("something")).unwrap();
    mount_fails(&env.mnt, &env.home, "is not empty; pass --nonempty");
    fs::remove_file(env.mnt.join("something")).unwrap();

    let out = Command::new(BIN).arg("unmount").arg(&env.mnt).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an msbfs mount"));
}

/// A live msbfs mount is not stacked over unless asked; `msbfs unmount` ends it.
#[test]
fn a_live_mount_is_not_stacked_over_and_msbfs_unmount_ends_it() {
    require_mount!();
    let env = Env::new();
    env.logs_dir("box");
    let mut m = env.mount();
    mount_fails(&env.mnt, &env.home, "is already an msbfs mount; unmount it first");
    assert_eq!(mounts_at(&env.mnt).len(), 1, "still one mount");
    let out = Command::new(BIN).arg("unmount").arg(&env.mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = m.wait_exit(Duration::from_secs(10)).expect("the daemon exits after an unmount");
    assert!(st.success(), "{st}:\n{}", m.stderr());
    assert!(mounts_at(&env.mnt).is_empty());

    // Asked with --nonempty, it mounts over what is there, and leaves it be.
    File::create(env.mnt.join("hidden")).unwrap();
    let m = env.mount_with(&["--nonempty"]);
    assert_eq!(sandboxes_in(&env.mnt), ["box"]);
    m.stop();
    assert!(env.mnt.join("hidden").exists());
}

/// Case 13: A mountpoint left stale by a SIGKILLed daemon is detached and reused.
#[test]
fn stale_mountpoint_is_recovered() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("box");
    let s = Sim::new("box", 500).seed(9).run_lib(&env.home);
    let mut first = env.mount();
    wait_caught_up(&logs, &env.merged("box"), Duration::from_secs(10));
    first.kill9();
    // The root's attributes may be cached for their TTL (1 s); then stat fails.
    wait_until(Duration::from_secs(5), "stat on the mountpoint fails with ENOTCONN", || {
        fs::metadata(&env.mnt).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
    });
    let err = fs::read_dir(&env.mnt).expect_err("stale mount");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    assert_eq!(mounts_at(&env.mnt).len(), 1, "the stale entry is still in the mount table");

    let second = Mounted::start(&env.home, &env.mnt, &env.root().join("second.stderr"));
    assert_eq!(mounts_at(&env.mnt).len(), 1, "stale mount detached, one live mount");
    assert_eq!(sandboxes_in(&env.mnt), ["box"]);
    wait_caught_up(&logs, &env.merged("box"), Duration::from_secs(10));
    check(&read_all(&env.merged("box")), &s, Expect::Complete);
    let stderr = second.stderr();
    assert!(stderr.to_lowercase().contains("stale"), "stderr mentions the stale mount: {stderr}");
    drop(second);
    assert!(mounts_at(&env.mnt).is_empty());
    drop(first);
}

/// Case 14: SIGINT unmounts cleanly (exit 0) even while a reader is parked in a blocking read.
#[test]
fn sigint_unmounts_with_a_parked_reader() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("box");
    Sim::new("box", 200).seed(10).run_lib(&env.home);
    let mut m = env.mount();
    let merged = env.merged("box");
    wait_caught_up(&logs, &merged, Duration::from_secs(10));
    let size = fs::metadata(&merged).unwrap().len();

    let tid = Arc::new(AtomicU32::new(0));
    let (tx, rx) = mpsc::channel();
    {
        let (tid, merged) = (tid.clone(), merged.clone());
        std::thread::spawn(move || {
            tid.store(gettid(), Ordering::SeqCst);
            let mut f = File::open(&merged).unwrap();
            let mut all = Vec::new();
            f.read_to_end(&mut all).unwrap(); // first end of file
            let mut buf = [0u8; 4096];
            let second = f.read(&mut buf).unwrap();
            let third = f.read(&mut buf); // parks
            let _ = tx.send((all.len() as u64, second, third.map_err(|e| e.raw_os_error())));
        });
    }
    wait_until(Duration::from_secs(5), "reader started", || tid.load(Ordering::SeqCst) != 0);
    wait_parked_in_read(tid.load(Ordering::SeqCst), Duration::from_secs(10));

    let t = Instant::now();
    m.signal(libc::SIGINT);
    let st = m.wait_exit(Duration::from_secs(5)).expect("daemon exits within 5 s of SIGINT");
    assert!(st.success(), "exit status {st}; stderr:\n{}", m.stderr());
    assert!(mounts_at(&env.mnt).is_empty(), "mount entry gone");
    let (read, second, third) = rx.recv_timeout(Duration::from_secs(5)).expect("parked reader released");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(read, size);
    assert_eq!(second, 0);
    match third {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("parked read returned {n} bytes after unmount"),
    }
}

/// Case 15: A panic of the ingest thread stops the mount instead of leaving files that
/// silently stopped growing: unmounted, exit 1, a one-line message. The panic is the
/// test hook `MSBFS_TEST_INGEST_PANIC` (at the thread's first wake-up).
#[test]
fn a_panic_in_ingest_unmounts_and_exits_non_zero() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("box");
    Sim::new("box", 100).seed(15).run_lib(&env.home);
    let mut m = env.mount_env(&[(msbfs::ingest::TEST_PANIC_ENV, "1")]);
    let merged = env.merged("box");
    wait_caught_up(&logs, &merged, Duration::from_secs(10));
    append_exec(&logs, "stdout", 1, "wakes ingest\n");
    let st = m.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("still running:\n{}", m.stderr()));
    let stderr = m.stderr();
    assert_eq!(st.code(), Some(1), "exit status {st}; stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("msbfs: ingest failed (") && last.ends_with("); unmounted"), "last line: {last}");
    assert!(last.contains("MSBFS_TEST_INGEST_PANIC"), "the message names the panic: {last}");
    assert!(stderr.contains("the ingest thread panicked"), "{stderr}");
    assert!(!m.is_mounted(), "unmounted");
    assert!(fs::read_dir(&env.mnt).unwrap().next().is_none(), "the mountpoint is an empty directory again");
}

/// Case 16: Without root, a mount test is skipped: it passes, and says so on stderr
/// even though the harness captures a passing test's output. (This very test binary,
/// copied where nobody can read it, run as nobody.)
#[test]
fn mount_tests_are_skipped_with_a_reason_without_root() {
    require_mount!();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let exe = dir.path().join("mount_cli");
    fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::os::unix::fs::chown(&exe, Some(65534), Some(65534)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["--exact", "sigint_unmounts_with_a_parked_reader", "--test-threads=1"])
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("setpriv");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("test result: ok. 1 passed"), "stdout:\n{stdout}");
    assert_eq!(
        stderr.lines().filter(|l| l.contains(SKIP_MARKER)).collect::<Vec<_>>(),
        [format!("{SKIP_MARKER}: sigint_unmounts_with_a_parked_reader: not root (msbfs mounts with mount(2))")],
        "stderr:\n{stderr}"
    );
}

/// The demo: rotations within its first 30 s (said as they happen), a resumable cursor,
/// nothing but its own messages on the terminal, and nothing left after Ctrl-C.
#[test]
fn the_demo_rotates_early_says_so_and_cleans_up() {
    require_mount!();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("msb");
    /// A demo killed by a failing assertion leaves its mount stale: detach it.
    struct Detach<'a>(&'a std::path::Path);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            force_unmount(self.0);
        }
    }
    let _detach = Detach(&mnt);
    let mut demo = ChildGuard::new(
        "msbfs demo",
        Command::new(BIN).arg("demo").arg(&mnt).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    );
    let pid = demo.pid();
    let lines = Lines::new(demo.child().stdout.take().unwrap());
    let mut stderr = demo.child().stderr.take().unwrap();
    let mut said = Vec::new();
    let start = Instant::now();
    while !said.iter().any(|l: &String| l.contains("exec.log rotated")) {
        let left = Duration::from_secs(30).saturating_sub(start.elapsed());
        said.push(lines.next(left, "an exec.log rotation said within 30 s"));
    }
    let merged = mnt.join("demo").join("merged.log");
    wait_until(Duration::from_secs(5), "the rotated history is in merged.log", || {
        fs::metadata(&merged).is_ok_and(|m| m.len() > 64 << 10)
    });
    let text = String::from_utf8_lossy(&read_all(&merged)).into_owned();
    assert!(text.contains(" system --- exec session 1 started ---"), "{}", &text[..200]);
    let out = Command::new(BIN).args(["cursor", "decode"]).arg(&merged).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("merged.log   offset"));
    let all = said.join("\n");
    assert!(all.contains(&format!("cursor decode {}", merged.display())), "the demo shows how to decode:\n{all}");
    assert!(all.contains("getfattr -n user.cursor"), "{all}");
    assert!(!all.contains("WARN") && !all.contains("INFO"), "no daemon log on the terminal:\n{all}");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let st = demo.wait_exit(Duration::from_secs(10)).expect("the demo stops on Ctrl-C");
    assert!(st.success(), "{st}");
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    assert_eq!(err, "", "nothing on stderr");
    assert!(!mnt.exists(), "the mountpoint it made is removed");
    assert!(!std::env::temp_dir().join(format!("msbfs-demo-{pid}")).exists(), "its home is removed");
}

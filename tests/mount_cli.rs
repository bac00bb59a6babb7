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
    assert!(mounts_at(mnt).is_empty(), "nothing mounted");
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
    let names: Vec<String> =
        fs::read_dir(&env.mnt).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["box".to_string()]);
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

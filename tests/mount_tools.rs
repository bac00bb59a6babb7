//! Real tools against a real mount: cat, grep, GNU and busybox tail -f, less +F under
//! tmux, a Python follower, getfattr, O_NONBLOCK, EROFS, and a daemon log free of
//! warnings about what ordinary readers ask (isatty, poll, lseek).

#[macro_use]
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn sh(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Case 1: cat and grep -c on a rotated (but not yet pruned) history.
#[test]
fn cat_and_grep_on_rotated_history() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("box");
    let s = Sim::new("box", 6000).rotate(200_000).seed(11).run_bin(&env.home);
    assert!((1..=4).contains(&s.exec_rotations), "rotated, nothing pushed out: {}", s.exec_rotations);
    let files = log_files(&logs);
    assert!(files.contains(&"exec.log.1".to_string()), "{files:?}");
    assert!(!files.contains(&"exec.log.4".to_string()) || s.exec_rotations == 4, "{files:?}");

    let _m = env.mount();
    let merged = env.merged("box");
    wait_caught_up(&logs, &merged, Duration::from_secs(10));

    let out = sh(Command::new("cat").arg(&merged));
    assert!(out.status.success());
    let bytes = out.stdout;
    let rep = check(&bytes, &s, Expect::Complete);
    assert_eq!(fs::metadata(&merged).unwrap().len(), bytes.len() as u64, "st_size == bytes cat read");

    let grep = sh(Command::new("grep").env("LC_ALL", "C").args(["-c", "stdout\\["]).arg(&merged));
    assert!(grep.status.success(), "{}", String::from_utf8_lossy(&grep.stderr));
    let n: usize = String::from_utf8(grep.stdout).unwrap().trim().parse().unwrap();
    assert_eq!(n, count_lines_with(&bytes, b"stdout["));
    let stdout_lines: usize = rep.per_tag.iter().filter(|(k, _)| k.starts_with("stdout[")).map(|(_, v)| v).sum();
    assert_eq!(n, stdout_lines);
    assert!(n as u64 >= s.exec_lines.iter().filter(|(k, _)| k.starts_with("stdout[")).map(|(_, v)| v).sum::<u64>());

    let md5 =
        |p: &std::path::Path| String::from_utf8(sh(Command::new("md5sum").arg(p)).stdout).unwrap()[..32].to_string();
    let first = md5(&merged);
    let second = md5(&merged);
    assert_eq!(first, second, "two cats, same bytes");
    let again = sh(Command::new("cat").arg(&merged)).stdout;
    assert!(again == bytes, "second cat identical");
}

/// Starts `tool` following merged.log, runs a paced rotating simulator while it
/// follows, and checks the tool's output is exactly merged.log, complete.
fn follow_with(argv: &[&str], name: &str) {
    let env = Env::new();
    let logs = env.logs_dir(name);
    let _m = env.mount();
    let merged = env.merged(name);
    wait_until(Duration::from_secs(5), "merged.log visible", || merged.exists());

    // ~400 KB of exec at 131072-byte rotation: 2-3 rotations, nothing deleted.
    let sim = Sim::new(name, 3000).rate(2000.0).rotate(131_072).seed(5).spawn_bin(&env.home);
    wait_until(Duration::from_secs(10), "first bytes in merged.log", || {
        fs::metadata(&merged).is_ok_and(|m| m.len() > 0)
    });
    let out_path = env.root().join("tool.out");
    let out = File::create(&out_path).unwrap();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).arg(&merged).stdin(Stdio::null()).stdout(out).stderr(Stdio::piped());
    let mut tool = ChildGuard::new(argv[0], cmd.spawn().expect("spawn follower"));

    let s = finish_bin(sim, Duration::from_secs(60));
    assert!(s.exec_rotations >= 2, "rotations during follow: {}", s.exec_rotations);
    assert!(!log_files(&logs).contains(&"exec.log.4".to_string()));
    wait_caught_up(&logs, &merged, Duration::from_secs(10));
    let size = fs::metadata(&merged).unwrap().len();
    wait_until(Duration::from_secs(15), "follower printed everything", || {
        fs::metadata(&out_path).is_ok_and(|m| m.len() >= size)
    });
    assert!(tool.is_running(), "follower still following");
    let printed = fs::read(&out_path).unwrap();
    let expect = read_all(&merged);
    assert_eq!(printed.len(), expect.len());
    assert!(printed == expect, "follower output == merged.log");
    check(&printed, &s, Expect::Complete);
}

/// Case 2: GNU tail -f across rotations.
#[test]
fn gnu_tail_follows_across_rotation() {
    require_mount!();
    follow_with(&["tail", "-n", "+1", "-f"], "gnu");
}

/// Case 3: busybox tail -f across rotations.
#[test]
fn busybox_tail_follows_across_rotation() {
    require_mount!();
    follow_with(&["busybox", "tail", "-n", "+1", "-f"], "bb");
}

/// Case 3b: busybox tail -f on an idle and a live merged.log together: busybox reads
/// each file at its end once a second, so a read at the end of the idle file must never
/// wait for data; every new line of the live one is shown within 2 s.
#[test]
fn busybox_tail_of_an_idle_and_a_live_file() {
    require_mount!();
    let env = Env::new();
    let (idle, live) = (env.logs_dir("idle"), env.logs_dir("live"));
    Sim::new("idle", 50).seed(12).run_lib(&env.home);
    Sim::new("live", 50).seed(13).run_lib(&env.home);
    let _m = env.mount();
    wait_caught_up(&idle, &env.merged("idle"), Duration::from_secs(10));
    wait_caught_up(&live, &env.merged("live"), Duration::from_secs(10));
    let mut tail = ChildGuard::new(
        "busybox tail",
        Command::new("busybox")
            .args(["tail", "-f"])
            .arg(env.merged("idle"))
            .arg(env.merged("live"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox"),
    );
    let lines = Lines::new(tail.child().stdout.take().unwrap());
    // Several rounds of busybox's one-second loop (the first used to park 30 s on idle).
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(700));
        let marker = format!("BB-TWO-FILES-{i}");
        let t = Instant::now();
        append_exec(&live, "stdout", 3, &format!("{marker}\n"));
        let deadline = Duration::from_secs(2);
        loop {
            let line = lines.next(deadline.saturating_sub(t.elapsed()), &format!("{marker} within {deadline:?}"));
            if line.ends_with(&format!(" stdout[3] {marker}")) {
                break;
            }
        }
    }
    assert!(tail.is_running());
}

/// Case 4: less +F under tmux: follows, Ctrl-C stops following, q quits.
#[test]
fn less_follow_mode_under_tmux() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("lessbox");
    Sim::new("lessbox", 200).seed(3).run_lib(&env.home);
    let _m = env.mount();
    let merged = env.merged("lessbox");
    wait_caught_up(&logs, &merged, Duration::from_secs(10));

    let tmux = Tmux::new("less");
    let st = sh(tmux
        .cmd()
        .args(["new-session", "-d", "-s", "t", "-x", "200", "-y", "50"])
        .arg(format!("env -u LESS LESSHISTFILE=- less +F {}", merged.display())));
    assert!(st.status.success(), "tmux: {}", String::from_utf8_lossy(&st.stderr));
    tmux.wait_for_screen(Duration::from_secs(10), "less shows Waiting for data", |s| s.contains("Waiting for data"));

    let marker = "UNIQUE-LESS-MARKER-7f3a9";
    append_exec(&logs, "stdout", 99, &format!("{marker}\n"));
    tmux.wait_for_screen(Duration::from_secs(10), "less shows the appended line", |s| s.contains(marker));

    sh(tmux.cmd().args(["send-keys", "-t", "t", "C-c"]));
    tmux.wait_for_screen(Duration::from_secs(5), "less stops following after Ctrl-C", |s| {
        !s.contains("Waiting for data") && s.contains(marker)
    });
    assert!(tmux.alive(), "less survives Ctrl-C");
    let cmdname = String::from_utf8_lossy(
        &sh(tmux.cmd().args(["list-panes", "-t", "t", "-F", "#{pane_dead} #{pane_current_command}"])).stdout,
    )
    .trim()
    .to_string();
    assert_eq!(cmdname, "0 less");

    sh(tmux.cmd().args(["send-keys", "-t", "t", "q"]));
    wait_until(Duration::from_secs(5), "less quits on q", || !tmux.alive());
}

const PY_FOLLOWER: &str = r#"
import signal, sys
# Whoever started the tests may have left SIGINT ignored (a background job of a
# non-interactive shell); Python then installs no KeyboardInterrupt handler.
signal.signal(signal.SIGINT, signal.default_int_handler)
f = open(sys.argv[1], 'rb', buffering=0)
n = 0
while True:
    b = f.read(65536)
    if not b:
        break
    n += len(b)
assert f.read(65536) == b''          # second end of file: still 0
print("READY", n, flush=True)
b = f.read(65536)                    # third: blocks until data
print("GOT", b.decode('utf-8', 'replace').rstrip('\n'), flush=True)
assert f.read(65536) == b''          # data resets the count: 0, 0, then block
assert f.read(65536) == b''
print("BLOCKING", flush=True)
f.read(65536)                        # blocks; SIGINT -> KeyboardInterrupt
print("NOT INTERRUPTED", flush=True)
"#;

/// Case 5: A Python follower: woken by an append, interrupted by SIGINT while blocked.
#[test]
fn python_follower_wakes_and_is_interruptible() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("py");
    Sim::new("py", 300).seed(4).run_lib(&env.home);
    let _m = env.mount();
    let merged = env.merged("py");
    wait_caught_up(&logs, &merged, Duration::from_secs(10));
    let size = fs::metadata(&merged).unwrap().len();

    let mut py = ChildGuard::new(
        "python3",
        Command::new("python3")
            .arg("-c")
            .arg(PY_FOLLOWER)
            .arg(&merged)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let lines = Lines::new(py.child().stdout.take().unwrap());
    let ready = lines.next(Duration::from_secs(10), "READY");
    assert_eq!(ready, format!("READY {size}"));
    wait_parked_in_read(py.pid(), Duration::from_secs(5));

    let marker = "PY-WAKE-MARKER-51c2";
    let t = Instant::now();
    append_exec(&logs, "stderr", 77, &format!("{marker}\n"));
    let got = lines.next(Duration::from_secs(5), "GOT (woken by the append)");
    assert!(got.starts_with("GOT ") && got.ends_with(&format!(" stderr[77] {marker}")), "{got}");
    assert!(t.elapsed() < Duration::from_secs(5));

    assert_eq!(lines.next(Duration::from_secs(5), "BLOCKING"), "BLOCKING");
    wait_parked_in_read(py.pid(), Duration::from_secs(5));
    let t = Instant::now();
    py.signal(libc::SIGINT);
    let Some(st) = py.wait_exit(Duration::from_secs(2)) else {
        panic!("python not interrupted within 2 s; python:\n{}msbfs:\n{}", threads_of(py.pid()), threads_of(_m.pid()));
    };
    assert!(t.elapsed() < Duration::from_secs(2));
    let mut err = String::new();
    py.child().stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!st.success());
    assert!(err.contains("KeyboardInterrupt"), "stderr: {err}");
    assert_eq!(lines.rest(Duration::from_secs(5)), Vec::<String>::new(), "nothing after the interrupted read");
}

/// Case 6: getfattr user.cursor: 4 positions, exec at (inode, size) of exec.log once caught up.
#[test]
fn cursor_xattr_via_getfattr() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("cur");
    let s = Sim::new("cur", 4000).rotate(150_000).seed(6).run_bin(&env.home);
    assert!(s.exec_rotations >= 1);
    let _m = env.mount();
    let merged = env.merged("cur");
    // Fully caught up: exec, runtime and kernel at (inode, size), merged offset == st_size.
    wait_caught_up(&logs, &merged, Duration::from_secs(10));
    let c = cursor(&merged);
    assert_eq!(c.len(), 4);
    assert_eq!(c[0], ino_size(&logs.join("exec.log")));
    assert_eq!(c[1], ino_size(&logs.join("runtime.log")));
    assert_eq!(c[2], ino_size(&logs.join("kernel.log")));
    assert_eq!(c[3].offset, fs::metadata(&merged).unwrap().len());
    assert_eq!(c[3].offset, read_all(&merged).len() as u64);

    // Appending moves the exec position and the merged offset.
    append_exec(&logs, "stdout", 5, "cursor moves\n");
    wait_caught_up(&logs, &merged, Duration::from_secs(5));
    let c2 = cursor(&merged);
    assert_eq!(c2[0].generation, c[0].generation);
    assert!(c2[0].offset > c[0].offset);
    assert_eq!(c2[3].generation, c[3].generation, "same epoch");
    assert!(c2[3].offset > c[3].offset);

    // A name other than user.cursor does not exist.
    let out = sh(Command::new("getfattr").args(["-n", "user.nope"]).arg(&merged));
    assert!(!out.status.success());
}

/// Case 7: A sandbox appears while mounted and disappears when deleted.
#[test]
fn sandbox_appears_and_disappears() {
    require_mount!();
    let env = Env::new();
    env.logs_dir("old");
    let _m = env.mount();
    let names = || sandboxes_in(&env.mnt);
    assert_eq!(names(), vec!["old".to_string()]);

    let logs = env.logs_dir("fresh");
    let s = Sim::new("fresh", 500).seed(7).run_bin(&env.home);
    wait_until(Duration::from_secs(3), "fresh listed", || names() == vec!["fresh".to_string(), "old".to_string()]);
    let merged = env.merged("fresh");
    wait_caught_up(&logs, &merged, Duration::from_secs(5));
    check(&read_all(&merged), &s, Expect::Complete);

    fs::remove_dir_all(env.home.join("sandboxes").join("fresh")).unwrap();
    wait_until(Duration::from_secs(3), "fresh gone", || names() == vec!["old".to_string()]);
    assert!(!merged.exists());
}

/// Case 8: O_NONBLOCK reads at end of file return 0 at once, every time.
#[test]
fn nonblocking_reads_never_block() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("nb");
    let s = Sim::new("nb", 300).seed(8).run_lib(&env.home);
    let _m = env.mount();
    let merged = env.merged("nb");
    wait_caught_up(&logs, &merged, Duration::from_secs(10));

    let mut f = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&merged).unwrap();
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    check(&all, &s, Expect::Complete);
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    for i in 0..10 {
        assert_eq!(f.read(&mut buf).unwrap(), 0, "read {i} at EOF");
    }
    assert!(t.elapsed() < Duration::from_secs(2), "10 EOF reads took {:?}", t.elapsed());

    // A blocking handle switched to O_NONBLOCK with fcntl after two EOFs: still 0.
    let mut g = File::open(&merged).unwrap();
    let mut sink = Vec::new();
    g.read_to_end(&mut sink).unwrap(); // one EOF
    assert_eq!(g.read(&mut buf).unwrap(), 0); // two
                                              // SAFETY: fcntl on an fd we own.
    unsafe {
        use std::os::fd::AsRawFd;
        let fl = libc::fcntl(g.as_raw_fd(), libc::F_GETFL);
        assert_eq!(libc::fcntl(g.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK), 0);
    }
    let t = Instant::now();
    for _ in 0..5 {
        assert_eq!(g.read(&mut buf).unwrap(), 0);
    }
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// Case 9: Every write-type operation fails with EROFS.
#[test]
fn write_operations_fail_with_erofs() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("ro");
    Sim::new("ro", 50).run_lib(&env.home);
    let _m = env.mount();
    let merged = env.merged("ro");
    wait_caught_up(&logs, &merged, Duration::from_secs(10));
    let before = read_all(&merged);
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(File::create(env.mnt.join("ro").join("new.txt")).map(drop), "create new file");
    erofs(File::create(env.mnt.join("new-top")).map(drop), "create in root");
    erofs(OpenOptions::new().write(true).open(&merged).map(drop), "open merged.log O_WRONLY");
    erofs(OpenOptions::new().read(true).write(true).open(&merged).map(drop), "open O_RDWR");
    erofs(OpenOptions::new().append(true).open(&merged).map(drop), "open O_APPEND");
    erofs(fs::create_dir(env.mnt.join("newdir")), "mkdir");
    erofs(fs::remove_file(&merged), "rm merged.log");
    erofs(fs::remove_dir_all(env.mnt.join("ro")), "rm -r sandbox dir");
    erofs(fs::rename(&merged, env.mnt.join("ro").join("x.log")), "rename");
    erofs(std::os::unix::fs::symlink("x", env.mnt.join("ro").join("lnk")), "symlink");
    erofs(fs::hard_link(&merged, env.mnt.join("ro").join("hl")), "link");
    erofs(fs::set_permissions(&merged, std::os::unix::fs::PermissionsExt::from_mode(0o777)), "chmod");

    let touch = sh(Command::new("touch").arg(env.mnt.join("ro").join("t")));
    assert!(!touch.status.success());
    assert!(String::from_utf8_lossy(&touch.stderr).contains("Read-only file system"));
    let touch = sh(Command::new("touch").arg(&merged));
    assert!(!touch.status.success());
    assert!(String::from_utf8_lossy(&touch.stderr).contains("Read-only file system"));
    let sf = sh(Command::new("setfattr").args(["-n", "user.x", "-v", "1"]).arg(&merged));
    assert!(!sf.status.success());
    assert!(
        String::from_utf8_lossy(&sf.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&sf.stderr)
    );
    let sf = sh(Command::new("setfattr").args(["-x", "user.cursor"]).arg(&merged));
    assert!(!sf.status.success());
    assert!(String::from_utf8_lossy(&sf.stderr).contains("Read-only file system"));
    let tr = sh(Command::new("truncate").args(["-s", "0"]).arg(&merged));
    assert!(!tr.status.success());
    assert!(String::from_utf8_lossy(&tr.stderr).contains("Read-only file system"));

    assert!(read_all(&merged) == before, "content unchanged");
}

const PY_PROBES: &str = r#"
import os, select, sys
f = open(sys.argv[1], "rb")          # isatty: an ioctl
print("isatty", f.isatty(), f.readline().endswith(b"\n"))
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
print("lseek", os.lseek(fd, 0, os.SEEK_END) == size, os.lseek(fd, 0, os.SEEK_DATA) == 0,
      os.lseek(fd, 0, os.SEEK_HOLE) == size)
p = select.poll()
p.register(fd, select.POLLIN)
print("poll", p.poll(0) == [(fd, select.POLLIN)])
"#;

const PY_PARKED: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
while os.read(fd, 1 << 20):
    pass
os.read(fd, 4096)                    # the second end of file
print("PARKING", flush=True)
os.read(fd, 4096)                    # parks until killed
"#;

/// Case 10: What ordinary readers ask besides reads (bash `read` and Python `open` call
/// isatty; poll; lseek with SEEK_END/DATA/HOLE) is answered as for a regular file, and
/// a reader killed while its read is parked is no error: none of it leaves a warning or
/// an error in the daemon's log (the debug lines show it all happened).
#[test]
fn readers_leave_no_warnings_in_the_log() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("quiet");
    Sim::new("quiet", 100).seed(14).run_lib(&env.home);
    // The daemon's default filter, plus debug lines of the adapter and of fuser's replies.
    let m = env.mount_logging("info,fuser=warn,fuser::reply=debug,msbfs::fuse=debug");
    let merged = env.merged("quiet");
    wait_caught_up(&logs, &merged, Duration::from_secs(10));

    let first = String::from_utf8_lossy(&read_all(&merged)).lines().next().unwrap().to_string();
    let bash =
        sh(Command::new("bash").args(["-c", r#"read -r line < "$1" && printf '%s\n' "$line""#, "_"]).arg(&merged));
    assert!(bash.status.success(), "{}", String::from_utf8_lossy(&bash.stderr));
    assert_eq!(String::from_utf8_lossy(&bash.stdout).trim_end(), first);
    let py = sh(Command::new("python3").arg("-c").arg(PY_PROBES).arg(&merged));
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    assert_eq!(String::from_utf8_lossy(&py.stdout), "isatty False True\nlseek True True True\npoll True\n");

    let mut parked = ChildGuard::new(
        "python3",
        Command::new("python3")
            .arg("-c")
            .arg(PY_PARKED)
            .arg(&merged)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let lines = Lines::new(parked.child().stdout.take().unwrap());
    assert_eq!(lines.next(Duration::from_secs(10), "PARKING"), "PARKING");
    wait_parked_in_read(parked.pid(), Duration::from_secs(5));
    parked.signal(libc::SIGKILL);
    parked.wait_exit(Duration::from_secs(5)).expect("the killed reader exits");
    // The watchdog answers the killed reader with EINTR. Usually the kernel has dropped
    // the request by then (fuser logs "Failed to send FUSE reply", demoted to debug);
    // on a busy machine the answer may come first and be taken. Both are fine.
    wait_until(Duration::from_secs(5), "the answer to the killed reader is logged", || {
        m.stderr().contains("request failed: Interrupted op=\"read\"")
    });

    let log = m.stderr();
    assert!(log.contains("op=\"ioctl\""), "the isatty requests were answered through the failure helper:\n{log}");
    for line in log.lines().filter(|l| l.contains("Failed to send FUSE reply")) {
        assert!(line.contains(" DEBUG fuser::reply: "), "a reply to a vanished reader is debug: {line}");
    }
    let noisy: Vec<&str> =
        log.lines().filter(|l| ["WARN", "ERROR", "Not Implemented"].iter().any(|w| l.contains(w))).collect();
    assert!(noisy.is_empty(), "warnings in the daemon's log:\n{}", noisy.join("\n"));
}

/// The README's follow loops: a shell loop and a Python loop that read again after end
/// of file follow the file, parked in the kernel between lines instead of spinning.
#[test]
fn readme_retry_loops_follow_and_park() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("loops");
    Sim::new("loops", 50).seed(17).run_lib(&env.home);
    let _m = env.mount();
    let merged = env.merged("loops");
    wait_caught_up(&logs, &merged, Duration::from_secs(10));
    let shell = r#"exec 3< "$1"
while :; do IFS= read -r line <&3 && printf '%s\n' "$line"; done"#;
    let python = r#"import sys
f = open(sys.argv[1])
while True:
    line = f.readline()
    if line:
        print(line, end="", flush=True)"#;
    let (shell_args, python_args) = (["-c", shell, "_"], ["-c", python]);
    let loops = [("bash", shell_args.as_slice()), ("python3", python_args.as_slice())];
    for (i, (program, args)) in loops.into_iter().enumerate() {
        let mut child = ChildGuard::new(
            program,
            Command::new(program).args(args).arg(&merged).stdout(Stdio::piped()).spawn().expect(program),
        );
        let lines = Lines::new(child.child().stdout.take().unwrap());
        wait_parked_in_read(child.pid(), Duration::from_secs(5));
        let marker = format!("LOOP-MARKER-{i}");
        append_exec(&logs, "stdout", 4, &format!("{marker}\n"));
        loop {
            let line = lines.next(Duration::from_secs(5), &format!("{program} shows {marker}"));
            if line.ends_with(&format!(" stdout[4] {marker}")) {
                break;
            }
        }
        wait_parked_in_read(child.pid(), Duration::from_secs(5));
    }
}

//! msbfs as a systemd service, without systemd (it is not PID 1 here):
//!
//! - `sd_notify`: `READY=1` arrives only when the mount already answers (its root lists
//!   the sandboxes), from the main PID (what `NotifyAccess=main` checks), then
//!   `STOPPING=1` as soon as a stop begins (SIGTERM, or an external unmount), through a
//!   socket path and an abstract socket; an unusable `$NOTIFY_SOCKET` is only a warning.
//! - The daemon log: no escape code when stderr is a file (at debug level, with a
//!   hostile sandbox name), and `<N>` priority prefixes without timestamps when
//!   `$JOURNAL_STREAM` names stderr.
//! - `contrib/msbfs@.service`: `systemd-analyze verify` finds nothing to say (and does
//!   complain about a broken copy); no setting gives the unit a mount namespace of its
//!   own (a FUSE mount made in a slave namespace is invisible to the host, shown here
//!   with `unshare`); its ExecStart, expanded as systemd would, run under its capability
//!   bounding set and no-new-privileges, mounts, notifies, serves a sandbox of another
//!   user and stops, and strace shows only system calls its SystemCallFilter allows,
//!   only AF_UNIX sockets, no device but /dev/fuse, no writable+executable memory.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/msbfs@.service");
const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/msbfs.conf");

// ---------------------------------------------------------------------------
// A service manager's notification socket

/// One notification: its text and the PID the kernel vouches for (`SCM_CREDENTIALS`).
#[derive(Debug)]
struct Note {
    text: String,
    pid: u32,
}

/// The receiving end of `$NOTIFY_SOCKET`, as systemd binds it (with `SO_PASSCRED`).
struct Listener {
    socket: UnixDatagram,
    /// What `$NOTIFY_SOCKET` is set to.
    value: String,
}

impl Listener {
    fn bind_path(path: &Path) -> Listener {
        Listener::passcred(UnixDatagram::bind(path).expect("bind notify socket"), path.display().to_string())
    }

    fn bind_abstract(name: &str) -> Listener {
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        Listener::passcred(UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket"), format!("@{name}"))
    }

    fn passcred(socket: UnixDatagram, value: String) -> Listener {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_PASSCRED: {}", std::io::Error::last_os_error());
        Listener { socket, value }
    }

    /// The next notification, or `None` after `timeout`.
    fn recv(&self, timeout: Duration) -> Option<Note> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let mut control = [0u64; 16];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: a zeroed msghdr is valid; it points at buffers that outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = loop {
            // SAFETY: recvmsg into the buffers above.
            let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, 0) };
            if n >= 0 {
                break n;
            }
            let e = std::io::Error::last_os_error();
            // A signal to the test process (a child's end) interrupts the wait: wait on.
            if e.kind() != std::io::ErrorKind::Interrupted {
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "recvmsg: {e}");
                return None;
            }
        };
        let mut pid = 0;
        // SAFETY: walking the control messages the kernel wrote into `control`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                    let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    pid = cred.pid as u32;
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Some(Note { text: String::from_utf8(buf[..n as usize].to_vec()).expect("utf-8"), pid })
    }

    fn expect(&self, timeout: Duration, what: &str) -> Note {
        self.recv(timeout).unwrap_or_else(|| panic!("no {what} notification within {timeout:?}"))
    }
}

/// An abstract socket name no other test uses.
fn abstract_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("msbfs-it/{tag}/{}/{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------
// A daemon started by hand (so the test sees the moment it notifies)

/// Lazily detaches whatever is still mounted at its path when dropped: declared before
/// the daemon's guard, it runs after the daemon was killed.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

/// Kills the children of a tracer when dropped, then the tracer (its `ChildGuard`):
/// strace 6.1 detaches its tracees when it is killed instead of killing them.
struct KillChildrenOnDrop(u32);

impl Drop for KillChildrenOnDrop {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir("/proc") else { return };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(self.0) {
                send_signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// On a failing test, prints the daemon's log and the end of its system call trace.
struct ShowOnPanic {
    stderr: PathBuf,
    trace: PathBuf,
}

impl Drop for ShowOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.stderr).unwrap_or_default();
            let trace = fs::read_to_string(&self.trace).unwrap_or_default();
            let tail: Vec<&str> = trace.lines().rev().take(80).collect();
            eprintln!(
                "daemon log:\n{log}\nlast traced calls:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Spawns `command` with stdin and stdout closed and stderr to `stderr_path`.
fn spawn(mut command: Command, stderr_path: &Path) -> ChildGuard {
    let stderr = File::options().create(true).append(true).open(stderr_path).unwrap();
    let child: Child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn().expect("spawn");
    ChildGuard::new("msbfs mount", child)
}

fn send_signal(pid: u32, sig: i32) {
    // SAFETY: signalling a process of this test.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Waits for `READY=1` from `daemon` and checks that the mount answers at that very
/// moment: a live msbfs mount, whose root lists `name` and whose `merged.log` holds
/// `line`. Returns the time from `since` to the notification.
fn expect_ready_and_answering(listener: &Listener, env: &Env, pid: u32, name: &str, line: &str, since: Instant) -> f64 {
    let note = listener.expect(READY_DEADLINE, "READY=1");
    let elapsed = since.elapsed().as_secs_f64();
    // Nothing may be retried here: the mount must already answer.
    assert!(mounts_at(&env.mnt).iter().any(|m| m.is_msbfs()), "READY=1 before the mount exists");
    assert_eq!(sandboxes_in(&env.mnt), vec![name.to_string()], "READY=1 before the root lists the sandbox");
    let merged = fs::read_to_string(env.merged(name)).expect("merged.log readable at READY=1");
    assert!(merged.contains(line), "merged.log at READY=1: {merged:?}");
    assert_eq!(note.text, format!("READY=1\nSTATUS=Serving {}\n", env.mnt.display()));
    assert_eq!(note.pid, pid, "sent by the main process (NotifyAccess=main)");
    elapsed
}

fn expect_stopping(listener: &Listener, pid: u32) {
    let note = listener.expect(Duration::from_secs(10), "STOPPING=1");
    assert_eq!(note.text, "STOPPING=1\nSTATUS=Stopping: unmounting\n");
    assert_eq!(note.pid, pid);
}

/// Mounts with `$NOTIFY_SOCKET` = the listener's, expects READY=1 while answering,
/// stops it with `stop` and expects STOPPING=1, exit 0, no mount, nothing more.
fn notify_round(env: &Env, listener: &Listener, stop: impl FnOnce(u32)) {
    let logs = env.logs_dir("web");
    append_exec(&logs, "stdout", 1, "hello from web\n");
    let envs = [("NOTIFY_SOCKET", listener.value.as_str())];
    let _unmount = UnmountOnDrop(env.mnt.clone());
    let t = Instant::now();
    let stderr_path = env.root().join("daemon.stderr");
    let mut daemon = spawn(Mounted::command(&[], &env.home, &env.mnt, &[], None, &envs), &stderr_path);
    let stderr = || fs::read_to_string(&stderr_path).unwrap_or_default();
    let pid = daemon.pid();
    let ready = expect_ready_and_answering(listener, env, pid, "web", "stdout[1] hello from web", t);
    eprintln!("READY=1 {ready:.3} s after spawn ({})", listener.value);
    let t = Instant::now();
    stop(pid);
    expect_stopping(listener, pid);
    let st = daemon.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("no exit; stderr:\n{}", stderr()));
    eprintln!("STOPPING=1 and exit {:.3} s after the stop began", t.elapsed().as_secs_f64());
    assert!(st.success(), "exit status {st}; stderr:\n{}", stderr());
    assert!(mounts_at(&env.mnt).is_empty(), "unmounted");
    assert!(listener.recv(Duration::from_millis(200)).is_none(), "nothing after STOPPING=1");
    assert!(!stderr().contains("WARN"), "no warning: {}", stderr());
}

#[test]
fn ready_once_the_mount_answers_and_stopping_on_sigterm_through_a_socket_path() {
    require_mount!();
    let env = Env::new();
    let listener = Listener::bind_path(&env.root().join("notify.sock"));
    notify_round(&env, &listener, |pid| send_signal(pid, libc::SIGTERM));
}

#[test]
fn ready_and_stopping_through_an_abstract_socket() {
    require_mount!();
    let env = Env::new();
    let listener = Listener::bind_abstract(&abstract_name("abstract"));
    assert!(listener.value.starts_with('@'));
    notify_round(&env, &listener, |pid| send_signal(pid, libc::SIGTERM));
}

#[test]
fn an_external_unmount_is_a_stop_too() {
    require_mount!();
    let env = Env::new();
    let listener = Listener::bind_path(&env.root().join("notify.sock"));
    let mnt = env.mnt.clone();
    notify_round(&env, &listener, |_| {
        let st = Command::new("umount").arg(&mnt).status().expect("umount");
        assert!(st.success(), "umount {}", mnt.display());
    });
}

#[test]
fn an_unusable_notify_socket_is_only_a_warning() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("web");
    append_exec(&logs, "stdout", 1, "still served\n");
    let nobody = env.root().join("nobody-listens.sock");
    let m = env.mount_env(&[("NOTIFY_SOCKET", nobody.to_str().unwrap())]);
    wait_until(Duration::from_secs(10), "served", || {
        fs::read_to_string(env.merged("web")).is_ok_and(|t| t.contains("still served"))
    });
    wait_until(Duration::from_secs(5), "the warning", || m.stderr().contains("cannot notify the service manager"));
    let stderr = m.stderr();
    m.stop();
    assert!(stderr.contains("READY=1"), "{stderr}");

    let m = env.mount_env(&[("NOTIFY_SOCKET", "relative/notify")]);
    assert_eq!(sandboxes_in(&env.mnt), vec!["web".to_string()]);
    let stderr = m.stderr();
    m.stop();
    assert!(stderr.contains("$NOTIFY_SOCKET is not usable"), "{stderr}");
}

// ---------------------------------------------------------------------------
// The daemon log

/// A sandbox whose directory is a symlink (skipped with a warning) and whose name holds
/// an escape sequence: the warning must show the name, not execute it.
fn hostile_sandbox(env: &Env) {
    let elsewhere = env.root().join("elsewhere");
    fs::create_dir_all(elsewhere.join("logs")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, env.home.join("sandboxes").join("evil\u{1b}[2J\u{1b}[31m")).unwrap();
}

#[test]
fn the_daemon_log_in_a_file_has_no_escape_codes() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("web");
    append_exec(&logs, "stdout", 1, "one\n");
    hostile_sandbox(&env);
    let m = env.mount_logging("debug");
    let _ = fs::read(env.merged("web")).unwrap();
    let stderr_path = m.stderr_path.clone();
    m.stop();
    let bytes = fs::read(&stderr_path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!bytes.contains(&0x1b), "an ESC byte in the log:\n{text}");
    assert!(text.lines().count() > 10, "debug lines logged:\n{text}");
    assert!(text.contains(" INFO msbfs::mount: mounted mountpoint="), "{text}");
    assert!(text.lines().any(|l| l.contains(" WARN ") && l.contains("evil")), "the symlink warning:\n{text}");
    assert!(text.lines().any(|l| l.contains("DEBUG fuser")), "fuser's records:\n{text}");
}

#[test]
fn the_daemon_log_to_the_journal_has_priorities_and_no_timestamps() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("web");
    append_exec(&logs, "stdout", 1, "one\n");
    hostile_sandbox(&env);
    // systemd sets $JOURNAL_STREAM to the device and inode of the stream it gives the
    // service as stdout and stderr; a file stands for it here.
    let stderr_path = env.root().join("journal.stderr");
    File::create(&stderr_path).unwrap();
    let meta = fs::metadata(&stderr_path).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let m = Mounted::spawn(&env.home, &env.mnt, &stderr_path, &[], Some("debug"), &[("JOURNAL_STREAM", &stream)]);
    let _ = fs::read(env.merged("web")).unwrap();
    m.stop();
    let text = fs::read_to_string(&stderr_path).unwrap();
    assert!(!text.contains('\u{1b}'), "{text}");
    let levels = BTreeMap::from([("ERROR", "3"), ("WARN", "4"), ("INFO", "6"), ("DEBUG", "7"), ("TRACE", "7")]);
    let mut previous = None;
    for line in text.lines() {
        let (prio, rest) = line.strip_prefix('<').and_then(|l| l.split_once('>')).unwrap_or_else(|| {
            panic!("no <N> prefix: {line:?} in\n{text}");
        });
        match levels.get(rest.split(' ').next().unwrap()) {
            Some(level_prio) => assert_eq!(level_prio, &prio, "priority of {line:?}"),
            // The continuation of a multi-line event keeps its priority.
            None => assert_eq!(previous, Some(prio), "continuation {line:?}"),
        }
        previous = Some(prio);
    }
    assert!(text.lines().any(|l| l.starts_with("<7>DEBUG ")), "{text}");
    let mounted = format!("<6>INFO msbfs::mount: mounted mountpoint={} home=", env.mnt.display());
    assert!(text.lines().any(|l| l.starts_with(&mounted)), "{text}");
    assert!(text.lines().any(|l| l.starts_with("<4>WARN ") && l.contains("evil")), "{text}");
    assert!(text.contains("<6>INFO msbfs::mount: unmounted"), "{text}");

    // Inherited by a process whose stderr went elsewhere, the variable names another
    // file: plain lines with timestamps.
    let other = env.root().join("other.stderr");
    let m = Mounted::spawn(&env.home, &env.mnt, &other, &[], None, &[("JOURNAL_STREAM", &stream)]);
    m.stop();
    let text = fs::read_to_string(&other).unwrap();
    assert!(text.lines().all(|l| l.as_bytes()[..4].iter().all(u8::is_ascii_digit)), "{text}");

    // The last words of a failed start are errors in the journal too.
    let failed = Command::new(BIN)
        .arg("mount")
        .arg(env.root().join("no-such-mountpoint"))
        .arg("--home")
        .arg(&env.home)
        .env("JOURNAL_STREAM", &stream)
        .stderr(File::options().append(true).open(&stderr_path).unwrap())
        .status()
        .unwrap();
    assert_eq!(failed.code(), Some(2));
    let text = fs::read_to_string(&stderr_path).unwrap();
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("<3>msbfs: mountpoint ") && last.contains("No such file"), "{last}");
}

// ---------------------------------------------------------------------------
// The unit

/// The `[Service]` and `[Unit]` settings of a unit file, in order (keys repeat).
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect()
}

fn setting<'a>(all: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    all.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

fn one_setting<'a>(all: &'a [(String, String)], key: &str) -> &'a str {
    let values = setting(all, key);
    assert_eq!(values.len(), 1, "{key}= once in the unit: {values:?}");
    values[0]
}

/// A copy of the unit in `dir` as instance `instance`, its msbfs the built binary
/// (`systemd-analyze verify` checks that every command exists).
fn unit_copy(dir: &Path, instance: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let text = fs::read_to_string(UNIT).unwrap().replace("/usr/bin/msbfs", BIN);
    let path = dir.join(format!("msbfs@{instance}.service"));
    fs::write(&path, edit(&text)).unwrap();
    path
}

/// `systemd-analyze verify` of `unit`: its exit status and everything it said.
fn verify(unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(unit).output().expect("systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, said) = verify(&unit_copy(dir.path(), "mnt-msb", str::to_string));
    // verify exits 0 after many complaints (an unknown key, a bad value), so anything
    // it says fails the test.
    assert!(ok && said.trim().is_empty(), "systemd-analyze verify:\n{said}");

    // The check catches a broken unit: a bad value, an unknown key, a missing binary.
    let (_, said) = verify(&unit_copy(dir.path(), "bad-type", |t| t.replace("Type=notify", "Type=notifyy")));
    assert!(said.contains("notifyy"), "{said}");
    let (_, said) = verify(&unit_copy(dir.path(), "bad-key", |t| t.replace("NoNewPrivileges=", "NoNewPrivilege=")));
    assert!(said.contains("NoNewPrivilege"), "{said}");
    let (ok, said) = verify(&unit_copy(dir.path(), "no-binary", |t| t.replace(BIN, "/nonexistent/msbfs")));
    assert!(!ok && said.contains("/nonexistent/msbfs"), "{said}");
}

/// Settings that give a unit its own mount namespace (systemd's
/// `exec_needs_mount_namespace`), which systemd makes a slave of the host's: a FUSE
/// mount made inside it is seen by nobody else.
const MOUNT_NAMESPACE_SETTINGS: &[&str] = &[
    "RootDirectory",
    "RootImage",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "PrivateNetwork",
    "PrivateIPC",
    "IPCNamespacePath",
    "NetworkNamespacePath",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "BindPaths",
    "BindReadOnlyPaths",
    "TemporaryFileSystem",
    "MountImages",
    "ExtensionImages",
    "ExtensionDirectories",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "LogNamespace",
    "MountAPIVFS",
    "DynamicUser",
    "PrivateUsers",
];

#[test]
fn the_sample_environment_file_sets_only_what_the_unit_or_msbfs_reads() {
    let unit = fs::read_to_string(UNIT).unwrap();
    let conf = fs::read_to_string(CONF).unwrap();
    let mut names = 0;
    for line in conf.lines().map(|l| l.trim_start_matches('#')) {
        let Some((name, _)) = line.split_once('=') else { continue };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            continue;
        }
        names += 1;
        let read_by_unit = unit.contains(&format!("${name}")) || unit.contains(&format!("${{{name}}}"));
        assert!(read_by_unit || name == "MSBFS_LOG", "{name} is read by nobody");
    }
    assert_eq!(names, 3);
    assert!(unit.contains("EnvironmentFile=-/etc/msbfs/%i.conf"));
}

#[test]
fn the_unit_has_no_mount_namespace_of_its_own() {
    let all = settings(&fs::read_to_string(UNIT).unwrap());
    for (key, value) in &all {
        let off = ["no", "false", "0", "off", ""].contains(&value.as_str());
        assert!(!MOUNT_NAMESPACE_SETTINGS.contains(&key.as_str()) || off, "{key}={value} hides the mount");
        if key == "MountFlags" {
            assert_eq!(value, "shared", "MountFlags={value} hides the mount");
        }
    }
    assert_eq!(one_setting(&all, "Type"), "notify");
    assert!(one_setting(&all, "ExecStart").starts_with("/usr/bin/msbfs mount %f "));
}

#[test]
fn a_mount_made_in_a_slave_mount_namespace_is_not_seen_by_the_host() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("web");
    append_exec(&logs, "stdout", 1, "only inside\n");
    let listener = Listener::bind_path(&env.root().join("notify.sock"));
    let _unmount = UnmountOnDrop(env.mnt.clone());
    // What systemd does for a unit with ProtectSystem= and the like: a new mount
    // namespace whose mounts do not propagate back (unshare execs msbfs, same PID).
    let command = Mounted::command(
        &["unshare", "--mount", "--propagation", "slave"],
        &env.home,
        &env.mnt,
        &[],
        None,
        &[("NOTIFY_SOCKET", &listener.value)],
    );
    let mut daemon = spawn(command, &env.root().join("daemon.stderr"));
    let note = listener.expect(READY_DEADLINE, "READY=1");
    assert!(note.text.starts_with("READY=1\n"));
    let inside = fs::read_to_string(format!("/proc/{}/mountinfo", daemon.pid())).unwrap();
    let mnt = env.mnt.display().to_string();
    assert!(inside.lines().any(|l| l.contains(&format!(" {mnt} ")) && l.contains("fuse.msbfs")), "{inside}");
    assert!(mounts_at(&env.mnt).is_empty(), "the host sees no mount at {mnt}");
    assert!(sandboxes_in(&env.mnt).is_empty(), "the host sees the empty mountpoint");
    daemon.signal(libc::SIGTERM);
    expect_stopping(&listener, daemon.pid());
    assert!(daemon.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
}

/// The systemd specifier escaping of a path (`systemd-escape --path`).
fn escape_path(path: &Path) -> String {
    let out = Command::new("systemd-escape").arg("--path").arg(path).output().expect("systemd-escape");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Expands a command line of the unit the way systemd does for what it uses: the
/// specifiers `%f`, `%i`, `%S`, `${VAR}` (one word) and `$VAR` (split into words).
fn expand(line: &str, specifiers: &[(&str, String)], vars: &BTreeMap<String, String>) -> Vec<String> {
    assert!(!line.contains(['"', '\'', '\\']), "no quoting to emulate: {line}");
    let mut words = Vec::new();
    for word in line.split_whitespace() {
        let mut word = word.to_string();
        for (spec, value) in specifiers {
            word = word.replace(spec, value);
        }
        if let Some(name) = word.strip_prefix('$').filter(|w| !w.starts_with('{')) {
            words.extend(vars.get(name).map(String::as_str).unwrap_or("").split_whitespace().map(str::to_string));
            continue;
        }
        for (name, value) in vars {
            word = word.replace(&format!("${{{name}}}"), value);
        }
        assert!(!word.contains('$') && !word.contains('%'), "unexpanded: {word}");
        words.push(word);
    }
    words
}

/// The system call names of the groups `filter` names (`@system-service @mount`),
/// expanded with the group definitions of the installed systemd.
fn allowed_syscalls(filter: &str) -> BTreeSet<String> {
    let out = Command::new("systemd-analyze").arg("syscall-filter").output().expect("systemd-analyze syscall-filter");
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        if line.starts_with('@') {
            current = Some(line.split_whitespace().next().unwrap().to_string());
        } else if let Some(group) = &current {
            let member = line.trim();
            if !member.is_empty() && !member.starts_with('#') {
                groups.entry(group.clone()).or_default().push(member.to_string());
            }
        }
    }
    fn add(name: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        match groups.get(name) {
            Some(members) => members.iter().for_each(|m| add(m, groups, out)),
            None => assert!(!name.starts_with('@'), "unknown group {name}"),
        }
        if !name.starts_with('@') {
            out.insert(name.to_string());
        }
    }
    let mut allowed = BTreeSet::new();
    filter.split_whitespace().for_each(|g| add(g, &groups, &mut allowed));
    assert!(allowed.len() > 100, "{filter} expands to {} calls", allowed.len());
    allowed
}

/// Appends `count` numbered lines to exec.log, rotating it like microsandbox (X.3→X.4 …
/// X→X.1) after every `every` lines.
fn append_rotating(logs: &Path, prefix: &str, count: usize, every: usize) {
    for i in 0..count {
        append_exec(logs, "stdout", 1, &format!("{prefix}-{i:04}\n"));
        if (i + 1) % every == 0 {
            for n in (1..4).rev() {
                let _ = fs::rename(logs.join(format!("exec.log.{n}")), logs.join(format!("exec.log.{}", n + 1)));
            }
            fs::rename(logs.join("exec.log"), logs.join("exec.log.1")).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").arg(flag).arg(user).output().expect("id");
    assert!(out.status.success(), "user {user} exists (scripts/test.sh creates it)");
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

/// Capability names of the unit (`CAP_SYS_ADMIN`) as setpriv wants them (`+sys_admin`).
fn setpriv_caps(bounding: &str) -> String {
    let caps: Vec<String> =
        bounding.split_whitespace().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    format!("-all,{}", caps.join(","))
}

/// The capability mask of the unit's bounding set (as /proc/<pid>/status shows it).
fn cap_mask(bounding: &str) -> u64 {
    let number = |name: &str| match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_NICE" => 23,
        other => panic!("add {other} to the test's table"),
    };
    bounding.split_whitespace().map(|c| 1u64 << number(c)).sum()
}

fn status_field(pid: u32, key: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_default().trim().to_string()
}

#[test]
fn the_units_command_line_serves_within_the_units_privileges_and_system_calls() {
    require_mount!();
    let env = Env::new();
    let unit = settings(&fs::read_to_string(UNIT).unwrap());
    let web = env.logs_dir("web");
    append_exec(&web, "stdout", 1, "public line\n");
    // A sandbox of another user, unreadable but to its owner: CAP_DAC_READ_SEARCH
    // lets msbfs read it without CAP_DAC_OVERRIDE.
    let private = env.logs_dir("private");
    append_exec(&private, "stdout", 2, "private line\n");
    let (uid, gid) = (id_of("msbfs-test", "-u"), id_of("msbfs-test", "-g"));
    for path in [private.join("exec.log"), private.clone(), private.parent().unwrap().to_path_buf()] {
        chown(&path, uid, gid);
        fs::set_permissions(&path, fs::Permissions::from_mode(if path.is_dir() { 0o700 } else { 0o600 })).unwrap();
    }

    // The unit's environment and specifiers, for an instance named after the mountpoint.
    let instance = escape_path(&env.mnt);
    let state_root = env.root().join("var-lib");
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for assignment in setting(&unit, "Environment") {
        let (k, v) = assignment.split_once('=').unwrap();
        vars.insert(k.to_string(), v.to_string());
    }
    assert!(vars.contains_key("MSB_HOME") && vars.contains_key("MSBFS_OPTIONS"), "{vars:?}");
    // Then the sample environment file's, with this test's home.
    for (k, v) in settings(&fs::read_to_string(CONF).unwrap()) {
        vars.insert(k, v);
    }
    vars.insert("MSB_HOME".into(), env.home.display().to_string());
    let specifiers =
        [("%f", env.mnt.display().to_string()), ("%i", instance.clone()), ("%S", state_root.display().to_string())];
    // StateDirectory=: systemd creates it (StateDirectoryMode=) before starting.
    let state_dir = expand(one_setting(&unit, "StateDirectory"), &specifiers, &vars);
    let state_dir = state_root.join(&state_dir[0]);
    fs::create_dir_all(&state_dir).unwrap();
    let mode = u32::from_str_radix(one_setting(&unit, "StateDirectoryMode"), 8).unwrap();
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(mode)).unwrap();
    for pre in setting(&unit, "ExecStartPre") {
        let argv = expand(pre.trim_start_matches('-'), &specifiers, &vars);
        assert!(Command::new(&argv[0]).args(&argv[1..]).status().unwrap().success(), "{argv:?}");
    }
    let mut argv = expand(one_setting(&unit, "ExecStart"), &specifiers, &vars);
    assert_eq!(argv[0], "/usr/bin/msbfs");
    argv[0] = BIN.to_string();
    assert!(
        argv.contains(&format!("--state-dir={}", state_dir.display()))
            || argv.contains(&state_dir.display().to_string())
    );

    // Its privileges: the capability bounding set, no new privileges, no inheritable
    // capabilities (systemd's for a root service with CapabilityBoundingSet=).
    let bounding = one_setting(&unit, "CapabilityBoundingSet");
    assert_eq!(one_setting(&unit, "NoNewPrivileges"), "yes");
    let trace = env.root().join("strace.out");
    let listener = Listener::bind_path(&env.root().join("notify.sock"));
    let mut command = Command::new("strace");
    command
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .args(["setpriv", "--bounding-set", &setpriv_caps(bounding), "--inh-caps", "-all", "--no-new-privs", "--"])
        .args(&argv)
        .env("NOTIFY_SOCKET", &listener.value)
        .env_remove("MSBFS_LOG");
    let _unmount = UnmountOnDrop(env.mnt.clone());
    let stderr_path = env.root().join("daemon.stderr");
    let t = Instant::now();
    let mut strace = spawn(command, &stderr_path);
    let _daemon = KillChildrenOnDrop(strace.pid());
    let _show = ShowOnPanic { stderr: stderr_path.clone(), trace: trace.clone() };
    let stderr = || fs::read_to_string(&stderr_path).unwrap_or_default();
    let note = listener.recv(READY_DEADLINE).unwrap_or_else(|| panic!("no READY=1; stderr:\n{}", stderr()));
    eprintln!("READY=1 under strace {:.3} s after spawn", t.elapsed().as_secs_f64());
    assert!(note.text.starts_with("READY=1\n"), "{note:?}");
    let pid = note.pid;
    assert_eq!(sandboxes_in(&env.mnt), vec!["private".to_string(), "web".to_string()]);
    // $MSBFS_OPTIONS of the sample file, split into words: --allow-other took effect.
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours = mountinfo.lines().find(|l| l.contains(&format!(" {} ", env.mnt.display()))).unwrap();
    assert!(ours.contains("allow_other"), "{ours}");
    assert_eq!(u64::from_str_radix(&status_field(pid, "CapBnd:"), 16).unwrap(), cap_mask(bounding));
    assert_eq!(u64::from_str_radix(&status_field(pid, "CapEff:"), 16).unwrap(), cap_mask(bounding));
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");

    // Serve: the other user's sandbox, a follower across rotations, the cursor.
    let private_text = fs::read_to_string(env.merged("private")).unwrap();
    assert!(private_text.contains("stdout[2] private line"), "{private_text:?}\n{}", stderr());
    let reader = LiveReader::start(&env.merged("web"));
    append_rotating(&web, "live", 60, 20);
    wait_until(Duration::from_secs(20), "all lines in merged.log", || {
        fs::read_to_string(env.merged("web")).is_ok_and(|t| t.contains("live-0059"))
    });
    let _ = cursor(&env.merged("web"));
    let followed = reader.finish(Duration::from_secs(10));
    assert_eq!(followed.bytes, fs::read(env.merged("web")).unwrap());

    send_signal(pid, libc::SIGTERM);
    expect_stopping(&listener, pid);
    let st = strace.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("no exit; stderr:\n{}", stderr()));
    assert!(st.success(), "exit status {st}; stderr:\n{}", stderr());
    assert!(mounts_at(&env.mnt).is_empty());
    let log = stderr();
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "no warning or error:\n{log}");

    // What the daemon did, against what the unit allows.
    let trace = fs::read_to_string(&trace).unwrap();
    let allowed = allowed_syscalls(one_setting(&unit, "SystemCallFilter"));
    let mut used = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let families = one_setting(&unit, "RestrictAddressFamilies");
    let devices: BTreeSet<&str> = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]
        .into_iter()
        .chain(setting(&unit, "DeviceAllow").into_iter().map(|d| d.split_whitespace().next().unwrap()))
        .collect();
    // Only the daemon: from its exec on (setpriv ran before it, and is not the unit's).
    let daemon_lines = trace.lines().skip_while(|l| !(l.contains("execve(\"") && l.contains(BIN)));
    for line in daemon_lines {
        let Some((_pid, call)) = line.split_once(' ') else { continue };
        let call = call.trim_start();
        let Some(name) = call
            .split('(')
            .next()
            .filter(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        else {
            continue;
        };
        if name.is_empty() || !call.contains('(') {
            continue;
        }
        used.insert(name.to_string());
        if !allowed.contains(name) {
            refused.insert(name.to_string());
        }
        if name == "socket" {
            let family = call["socket(".len()..].split(',').next().unwrap();
            assert!(families.split_whitespace().any(|f| f == family), "{line}");
        }
        if (name == "openat" || name == "open") && call.contains("\"/dev/") {
            let path = call.split('"').nth(1).unwrap();
            assert!(devices.contains(path), "opens device {path}: {line}");
        }
        if (name == "mmap" || name == "mprotect") && call.contains("PROT_WRITE|PROT_EXEC") {
            panic!("writable and executable memory (MemoryDenyWriteExecute=): {line}");
        }
    }
    assert!(used.contains("mount") && used.contains("umount2") && used.contains("sendto"), "traced: {used:?}");
    assert!(refused.is_empty(), "system calls outside SystemCallFilter: {refused:?}");
    eprintln!("{} distinct system calls, all within the unit's filter", used.len());
}

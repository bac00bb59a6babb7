//! The mount bound read-only into containers, with the real `bwrap` (bubblewrap): new
//! mount, PID and user namespaces, a root of nothing but busybox and its libraries.
//!
//! - As root (the uid that mounted): `ls`, `cat` (the host's bytes), the bind is
//!   read-only, and `busybox tail -f` follows across producer rotations (every line
//!   once, in order) until Ctrl-C (SIGINT to its process group) ends it and bwrap
//!   within a few seconds, leaving no process behind.
//! - As another uid (`msbfs-test`, root inside its user namespace) on a mount made with
//!   `--allow-other`: the same, while merged.log's mode still applies to it.
//! - Without `--allow-other` that uid is refused (EACCES) both when its bwrap binds
//!   the mount (a rootless runtime) and inside a container that got it through a bind of
//!   the parent directory, while a container whose user maps to the mounting uid reads
//!   it whatever uid it has inside: FUSE checks the kernel uid, not the namespace's.
//! - A restart of msbfs (a new mount) reaches a container through an rslave bind of the
//!   mountpoint's parent, while a bind of the mount itself (plain or rslave) keeps the
//!   dead one (ENOTCONN).

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BUSYBOX: &str = "/usr/bin/busybox";
/// How fast Ctrl-C must end the container.
const CTRL_C_DEADLINE: Duration = Duration::from_secs(3);

/// bwrap arguments of a minimal container: new user and PID namespaces (and, as
/// always with bwrap, a new mount namespace on an empty tmpfs root), holding busybox at
/// /bin/busybox, the libraries it links (read-only, at their paths), /proc and /dev.
fn busybox_container() -> Vec<String> {
    let mut args: Vec<String> = ["--unshare-user", "--unshare-pid", "--die-with-parent"].map(String::from).into();
    args.extend(["--ro-bind", BUSYBOX, "/bin/busybox"].map(String::from));
    let ldd = Command::new("ldd").arg(BUSYBOX).output().expect("ldd");
    for lib in String::from_utf8(ldd.stdout).unwrap().split_whitespace().filter(|w| w.starts_with('/')) {
        args.extend(["--ro-bind", lib, lib].map(String::from));
    }
    args.extend(["--proc", "/proc", "--dev", "/dev", "--setenv", "PATH", "/bin"].map(String::from));
    args
}

/// Who runs the container: root (the mounter) or `msbfs-test` (another uid), and the
/// uid and gid its user has inside (`None`: the same as outside).
#[derive(Clone, Copy)]
struct Runner {
    user: Option<&'static str>,
    inside: Option<u32>,
}

const ROOT: Runner = Runner { user: None, inside: None };
/// Root inside a user namespace of another uid: a rootless or userns-remapped container.
const OTHER: Runner = Runner { user: Some("msbfs-test"), inside: Some(0) };

impl Runner {
    /// `argv` in a container where `binds` (host path, container path) are bound
    /// read-only.
    fn command(&self, binds: &[(&Path, &str)], argv: &[&str]) -> Command {
        let mut command = match self.user {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", user, "--regid", user, "--clear-groups", "bwrap"]);
                c
            }
            None => Command::new("bwrap"),
        };
        command.args(busybox_container());
        if let Some(id) = self.inside {
            command.args(["--uid", &id.to_string(), "--gid", &id.to_string()]);
        }
        for (host, inside) in binds {
            command.arg("--ro-bind").arg(host).arg(inside);
        }
        command.arg("--").args(argv).stdin(Stdio::null());
        command
    }

    fn run(&self, binds: &[(&Path, &str)], argv: &[&str]) -> Output {
        let out = self.command(binds, argv).output().expect("bwrap");
        eprintln!(
            "container {:?} {argv:?}: {}, stderr {:?}",
            self.user.unwrap_or("root"),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Like [`Runner::run`], panicking unless it succeeds; its stdout.
    fn output(&self, binds: &[(&Path, &str)], argv: &[&str]) -> Vec<u8> {
        let out = self.run(binds, argv);
        assert!(out.status.success(), "{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// An environment other users may traverse, with a sandbox `web` of world-readable
/// logs (so `merged.log` is 0444).
fn open_env() -> (Env, PathBuf) {
    let env = Env::new();
    let logs = env.logs_dir("web");
    append_exec(&logs, "stdout", 1, "hello from the host\n");
    for dir in [env.root(), env.home.clone(), env.home.join("sandboxes"), logs.parent().unwrap().into(), logs.clone()] {
        chmod(&dir, 0o755);
    }
    chmod(&env.mnt, 0o755);
    chmod(&logs.join("exec.log"), 0o644);
    (env, logs)
}

fn wait_merged_contains(env: &Env, text: &str) {
    wait_until(Duration::from_secs(10), &format!("merged.log holds {text:?}"), || {
        fs::read_to_string(env.merged("web")).is_ok_and(|t| t.contains(text))
    });
}

/// Rotates exec.log like microsandbox: X.3→X.4, X.2→X.3, X.1→X.2, X→X.1.
fn rotate(logs: &Path) {
    for n in (1..4).rev() {
        let _ = fs::rename(logs.join(format!("exec.log.{n}")), logs.join(format!("exec.log.{}", n + 1)));
    }
    fs::rename(logs.join("exec.log"), logs.join("exec.log.1")).unwrap();
}

/// Pids of every descendant of `pid` (from the ppid field of /proc/*/stat).
fn descendants(pid: u32) -> BTreeSet<u32> {
    let mut parents = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // The command name may hold spaces and parentheses: fields follow the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|f| f.parse::<u32>().ok()) {
            parents.push((p, ppid));
        }
    }
    let mut found = BTreeSet::from([pid]);
    loop {
        let before = found.len();
        for (p, ppid) in &parents {
            if found.contains(ppid) {
                found.insert(*p);
            }
        }
        if found.len() == before {
            found.remove(&pid);
            return found;
        }
    }
}

/// In a container of `runner` with the mount at /logs: `id`, `ls`, the read-only bind,
/// `cat`, and `busybox tail -f` across rotations until Ctrl-C.
fn read_and_follow(env: &Env, logs: &Path, runner: Runner) {
    let logs_bind = [(env.mnt.as_path(), "/logs")];
    if let Some(id) = runner.inside {
        let out = runner.output(&logs_bind, &["/bin/busybox", "id", "-u"]);
        assert_eq!(String::from_utf8(out).unwrap().trim(), id.to_string(), "the uid inside");
    }
    assert_eq!(runner.output(&logs_bind, &["/bin/busybox", "ls", "/logs"]), b"all.jsonl\nall.log\nweb\n");
    let mountinfo =
        String::from_utf8(runner.output(&logs_bind, &["/bin/busybox", "cat", "/proc/self/mountinfo"])).unwrap();
    let line = mountinfo.lines().find(|l| l.split(' ').nth(4) == Some("/logs")).expect("/logs in the container");
    assert!(line.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"), "read-only bind: {line}");
    assert!(line.contains(" - fuse.msbfs msbfs "), "{line}");
    let host = fs::read(env.merged("web")).unwrap();
    assert_eq!(
        runner.output(&logs_bind, &["/bin/busybox", "cat", "/logs/web/merged.log"]),
        host,
        "cat in the container"
    );

    // busybox tail -f, in its own process group as a shell job in a terminal is.
    let mut command = runner.command(&logs_bind, &["/bin/busybox", "tail", "-n", "+1", "-f", "/logs/web/merged.log"]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // A job started from a terminal takes Ctrl-C; one inherited from a background job
    // of a non-interactive shell (a test loop, some CI runners) has SIGINT ignored.
    // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut tail = ChildGuard::new("bwrap tail -f", command.spawn().expect("bwrap"));
    let lines = Lines::new(tail.child().stdout.take().unwrap());
    assert!(lines.next(Duration::from_secs(10), "first line").ends_with("stdout[1] hello from the host"));
    let t = Instant::now();
    let count = 40;
    for i in 0..count {
        append_exec(logs, "stdout", 1, &format!("follow-{i:04}\n"));
        if i % 5 == 4 {
            rotate(logs);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seen = Vec::new();
    while seen.last().is_none_or(|l: &String| !l.ends_with("follow-0039")) {
        seen.push(lines.next(Duration::from_secs(15), "followed lines"));
    }
    let follow_time = t.elapsed();
    let markers: Vec<String> = seen.iter().filter_map(|l| l.split("] ").nth(1)).map(String::from).collect();
    let expected: Vec<String> = (0..count).map(|i| format!("follow-{i:04}")).collect();
    assert_eq!(markers, expected, "each line once, in order");
    assert!(logs.join("exec.log.4").exists(), "the producer rotated past four generations");
    let mut shown = String::from_utf8(host).unwrap();
    for line in &seen {
        shown.push_str(line);
        shown.push('\n');
    }
    assert_eq!(shown.into_bytes(), fs::read(env.merged("web")).unwrap(), "tail -f shows merged.log's bytes");

    // Ctrl-C: SIGINT to the job's process group.
    let inside = descendants(tail.pid());
    assert!(!inside.is_empty(), "the container's processes");
    let t_int = Instant::now();
    // SAFETY: signalling the process group of our own child.
    unsafe {
        libc::kill(-(tail.pid() as i32), libc::SIGINT);
    }
    let st = tail
        .wait_exit(CTRL_C_DEADLINE)
        .unwrap_or_else(|| panic!("bwrap still running {CTRL_C_DEADLINE:?} after Ctrl-C"));
    let ctrl_c = t_int.elapsed();
    wait_until(Duration::from_secs(2), "no process of the container left", || {
        inside.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists())
    });
    eprintln!(
        "{}: tail -f showed {count} lines across {} rotations in {:.2} s; Ctrl-C ended bwrap ({st}) in {:.3} s",
        runner.user.unwrap_or("root"),
        count / 5,
        follow_time.as_secs_f64(),
        ctrl_c.as_secs_f64()
    );
}

#[test]
fn a_busybox_container_reads_and_follows_the_mount_bound_read_only() {
    require_mount!();
    let (env, logs) = open_env();
    let m = env.mount();
    wait_merged_contains(&env, "hello from the host");
    read_and_follow(&env, &logs, ROOT);
    m.stop();
}

#[test]
fn with_allow_other_a_container_of_another_uid_reads_and_follows_it() {
    require_mount!();
    let (env, logs) = open_env();
    // A sandbox only root may read: merged.log 0400, which --allow-other does not lift.
    let secret = env.logs_dir("secret");
    append_exec(&secret, "stdout", 1, "root only\n");
    chmod(secret.parent().unwrap(), 0o755);
    chmod(&secret, 0o755);
    chmod(&secret.join("exec.log"), 0o600);
    let m = env.mount_with(&["--allow-other"]);
    wait_merged_contains(&env, "hello from the host");
    // Once checked, the secret sandbox goes: read_and_follow expects `web` alone.
    let out = OTHER.run(&[(env.mnt.as_path(), "/logs")], &["/bin/busybox", "cat", "/logs/secret/merged.log"]);
    assert!(!out.status.success(), "container root is not root on the host");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    fs::remove_dir_all(secret.parent().unwrap()).unwrap();
    wait_until(Duration::from_secs(10), "secret gone", || !env.mnt.join("secret").exists());
    read_and_follow(&env, &logs, OTHER);
    m.stop();
}

#[test]
fn without_allow_other_only_the_mounting_uid_gets_in_whatever_its_uid_inside() {
    require_mount!();
    let (env, _logs) = open_env();
    let m = env.mount();
    wait_merged_contains(&env, "hello from the host");
    let cat = ["/bin/busybox", "cat", "/logs/web/merged.log"];

    // A rootless runtime (bwrap as msbfs-test) cannot even bind the mount.
    let out = OTHER.run(&[(env.mnt.as_path(), "/logs")], &cat);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&env.mnt.display().to_string()) && err.contains("Permission denied"), "{err}");

    // Given the mount inside a bind of its parent, its processes are refused.
    let parent = [(env.root(), "/host")];
    let parent: Vec<(&Path, &str)> = parent.iter().map(|(p, c)| (p.as_path(), *c)).collect();
    for argv in [&["/bin/busybox", "ls", "/host/mnt"][..], &["/bin/busybox", "cat", "/host/mnt/web/merged.log"]] {
        let out = OTHER.run(&parent, argv);
        assert!(!out.status.success(), "{argv:?} succeeded");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{argv:?}: {out:?}");
    }
    // The uid inside does not matter, the kernel uid does: root's container whose user
    // is uid 1000 inside is uid 0 (the mounter) outside, and reads.
    let mapped = Runner { user: None, inside: Some(1000) };
    let out = mapped.output(&[(env.mnt.as_path(), "/logs")], &["/bin/busybox", "id", "-u"]);
    assert_eq!(out, b"1000\n");
    assert_eq!(mapped.output(&[(env.mnt.as_path(), "/logs")], &cat), fs::read(env.merged("web")).unwrap());
    m.stop();
}

/// Lazily unmounts its path when dropped (declared before what is mounted below it).
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

fn mount_cmd(args: &[&Path]) {
    let st = Command::new("mount").args(args).status().expect("mount");
    assert!(st.success(), "mount {args:?}");
}

/// `cat path` inside the mount namespace of `pid`: its stdout, or its stderr as `Err`.
fn cat_in(pid: u32, path: &Path) -> Result<Vec<u8>, String> {
    let out = Command::new("nsenter").args(["-t", &pid.to_string(), "-m", "cat"]).arg(path).output().expect("nsenter");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// What `-v /parent:/parent:ro,rslave` (docker's `bind-propagation=rslave`) is for: a
/// container given a recursive slave bind of the mountpoint's parent sees msbfs
/// unmounted and mounted again (a restart is a new mount); a container given a bind of
/// the mount itself, plain or rslave, keeps the dead one (ENOTCONN). The container is a mount namespace
/// made by `unshare` in which the binds are made as a runtime makes them (`mount
/// --rbind` + `--make-rslave`, `mount --bind`); the host's parent is made a shared
/// mount first (here `/` is private; on a systemd host it is shared already).
#[test]
fn a_restart_reaches_a_container_only_through_an_rslave_bind_of_the_parent() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("web");
    append_exec(&logs, "stdout", 1, "before the restart\n");
    let parent = env.root().join("parent");
    let mnt = parent.join("msb");
    let (rslave, plain) = (env.root().join("c-rslave"), env.root().join("c-plain"));
    let mount_rslave = env.root().join("c-mount-rslave");
    for dir in [&mnt, &rslave, &plain, &mount_rslave] {
        fs::create_dir_all(dir).unwrap();
    }
    mount_cmd(&[Path::new("--bind"), &parent, &parent]);
    let _parent = UnmountOnDrop(parent.clone());
    mount_cmd(&[Path::new("--make-shared"), &parent]);
    let first = Mounted::start(&env.home, &mnt, &env.root().join("first.stderr"));
    wait_until(Duration::from_secs(10), "first mount serves", || {
        fs::read_to_string(mnt.join("web/merged.log")).is_ok_and(|t| t.contains("before the restart"))
    });

    let script = format!(
        "mount --rbind {p} {r} && mount --make-rslave {r} && mount --bind {m} {c} && \
         mount --rbind {m} {s} && mount --make-rslave {s} && echo ready && exec sleep 600",
        p = parent.display(),
        r = rslave.display(),
        m = mnt.display(),
        c = plain.display(),
        s = mount_rslave.display(),
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "slave", "--", "sh", "-c", &script]).stdout(Stdio::piped());
    let mut container = ChildGuard::new("container namespace", command.spawn().expect("unshare"));
    let ready = Lines::new(container.child().stdout.take().unwrap());
    assert_eq!(ready.next(Duration::from_secs(10), "container ready"), "ready");
    let pid = container.pid();
    let in_rslave = rslave.join("msb/web/merged.log");
    let in_plain = plain.join("web/merged.log");
    let in_mount_rslave = mount_rslave.join("web/merged.log");
    let host = fs::read(mnt.join("web/merged.log")).unwrap();
    for path in [&in_rslave, &in_plain, &in_mount_rslave] {
        assert_eq!(cat_in(pid, path).as_deref(), Ok(&host[..]), "{}", path.display());
    }
    assert!(mounts_at(&rslave).is_empty() && mounts_at(&plain).is_empty(), "the container's mounts are its own");

    let t = Instant::now();
    first.stop();
    // The plain binds keep the old connection until the daemon gives up waiting for it.
    eprintln!("stop with the container's binds of the mount: {:.2} s", t.elapsed().as_secs_f64());
    append_exec(&logs, "stdout", 1, "after the restart\n");
    let second = Mounted::start(&env.home, &mnt, &env.root().join("second.stderr"));
    wait_until(Duration::from_secs(10), "second mount serves", || {
        fs::read_to_string(mnt.join("web/merged.log")).is_ok_and(|t| t.contains("after the restart"))
    });
    let host = fs::read(mnt.join("web/merged.log")).unwrap();
    assert_eq!(cat_in(pid, &in_rslave).as_deref(), Ok(&host[..]), "the rslave bind sees the new mount");
    for path in [&in_plain, &in_mount_rslave] {
        let stale = cat_in(pid, path).expect_err("a bind of the mount itself still holds the old one");
        assert!(stale.contains("Transport endpoint is not connected"), "{}: {stale}", path.display());
    }
    second.stop();
    drop(container);
}

//! `msbfs mount` as an ordinary user (the `msbfs-test` user that `scripts/test.sh`
//! creates), through fusermount3: mount, read, follow, unmount; `--allow-other`
//! without `user_allow_other`; sources the daemon may not read.

#[macro_use]
mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const USER: &str = "msbfs-test";

/// The uid and gid of [`USER`] (created by `scripts/test.sh`).
fn user_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).arg(USER).output().expect("id");
        assert!(out.status.success(), "user {USER} is missing (scripts/test.sh creates it)");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a number")
    };
    (id("-u"), id("-g"))
}

/// `setpriv` as [`USER`], then `program`.
fn as_user(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", USER, "--regid", USER, "--clear-groups", program]);
    c
}

/// The whole environment handed to [`USER`]: the tempdir searchable, everything in
/// it owned by the user.
fn give_to_user(env: &Env) {
    let (uid, gid) = user_ids();
    fs::set_permissions(env.root(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(env.root()).output().unwrap();
    assert!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
}

/// `msbfs mount` run by [`USER`], with `args`, once the user sees a sandbox in it.
/// Root cannot tell a live mount of another user from a stale one (both refuse it),
/// and between the detach of a stale mount and the new mount the bare directory lists.
fn mount_as_user(env: &Env, args: &[&str]) -> Mounted {
    let mut command = Mounted::command(
        &["setpriv", "--reuid", USER, "--regid", USER, "--clear-groups"],
        &env.home,
        &env.mnt,
        args,
        None,
        &[],
    );
    command.env("HOME", env.root());
    let m = Mounted::launch(command, &env.mnt, &env.root().join("msbfs-mount.stderr"));
    wait_until(Duration::from_secs(10), "the user sees a sandbox in the mount", || {
        as_user("ls")
            .arg(&env.mnt)
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    });
    m
}

fn read_as_user(path: &Path) -> Vec<u8> {
    let out = as_user("cat").arg(path).output().unwrap();
    assert!(out.status.success(), "cat as {USER}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn an_ordinary_user_mounts_reads_follows_and_unmounts() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("box");
    let s = Sim::new("box", 300).rotate(8 << 10).seed(81).run_lib(&env.home);
    give_to_user(&env);
    let mut m = mount_as_user(&env, &[]);
    let (uid, _) = user_ids();
    let entry = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = entry.lines().find(|l| l.contains(&format!(" {} ", env.mnt.display()))).expect("mounted");
    assert!(line.contains(" - fuse.msbfs msbfs ") && line.contains(&format!("user_id={uid}")), "{line}");

    // Root is not the user: without allow_other the kernel refuses it.
    let err = fs::read_dir(&env.mnt).expect_err("root is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");

    let merged = env.merged("box");
    let mut last = Vec::new();
    wait_until(Duration::from_secs(10), "the user reads the whole history", || {
        let now = read_as_user(&merged);
        let settled = !now.is_empty() && now == last;
        last = now;
        settled || {
            std::thread::sleep(Duration::from_millis(200));
            false
        }
    });
    check(&last, &s, Expect::Complete);

    let mut tail = ChildGuard::new(
        "tail -f",
        as_user("tail").args(["-n", "0", "-f"]).arg(&merged).stdout(Stdio::piped()).spawn().unwrap(),
    );
    let lines = Lines::new(tail.child().stdout.take().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    append_exec(&logs, "stdout", 5, "FOLLOWED-BY-THE-USER\n");
    let line = lines.next(Duration::from_secs(5), "the appended line in tail -f");
    assert!(line.ends_with(" stdout[5] FOLLOWED-BY-THE-USER"), "{line}");
    drop(tail);

    let out = as_user(BIN).arg("unmount").arg(&env.mnt).output().unwrap();
    assert!(out.status.success(), "msbfs unmount as the user: {}", String::from_utf8_lossy(&out.stderr));
    let st = m.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("daemon still running:\n{}", m.stderr()));
    assert!(st.success(), "{st}; stderr:\n{}", m.stderr());
    assert!(mounts_at(&env.mnt).is_empty(), "unmounted");
}

#[test]
fn allow_other_without_user_allow_other_is_a_one_line_usage_error() {
    require_mount!();
    let env = Env::new();
    env.logs_dir("box");
    give_to_user(&env);
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    let allowed = conf.lines().any(|l| l.split('#').next().unwrap_or_default().trim() == "user_allow_other");
    if allowed {
        // This machine allows it: the mount must then work, and root may read it.
        let m = mount_as_user(&env, &["--allow-other"]);
        assert!(fs::read_dir(&env.mnt).is_ok(), "allow_other lets root in");
        m.stop();
        return;
    }
    let mut child = ChildGuard::new(
        "msbfs mount",
        as_user(BIN)
            .arg("mount")
            .arg(&env.mnt)
            .arg("--home")
            .arg(&env.home)
            .arg("--state-dir")
            .arg(env.state())
            .arg("--allow-other")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let st = child.wait_exit(Duration::from_secs(5)).expect("exits at once");
    let mut err = String::new();
    child.child().stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(st.code(), Some(2), "{err}");
    assert_eq!(
        err,
        "msbfs: --allow-other as an ordinary user needs the line user_allow_other in /etc/fuse.conf (add it as root)\n"
    );
    assert!(mounts_at(&env.mnt).is_empty());
}

#[test]
fn a_source_the_daemon_may_not_read_is_a_warning_naming_it() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("box");
    Sim::new("box", 200).rotate(8 << 10).seed(82).run_lib(&env.home);
    give_to_user(&env);
    // One rotated generation and kernel.log are root's, mode 0600.
    for name in ["exec.log.1", "kernel.log"] {
        let path = logs.join(name);
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let m = mount_as_user(&env, &[]);
    append_exec(&logs, "stdout", 9, "AFTER-THE-REFUSAL\n");
    let merged = env.merged("box");
    wait_until(Duration::from_secs(10), "the readable sources are served", || {
        contains(&read_as_user(&merged), b"AFTER-THE-REFUSAL")
    });
    let stderr = m.stderr();
    for name in ["exec.log.1", "kernel.log"] {
        assert!(
            stderr.lines().any(|l| l.contains(" WARN ") && l.contains(name) && l.contains("Permission denied")),
            "a warning names {name}:\n{stderr}"
        );
    }
    m.stop();
}

#[test]
fn a_stale_mount_of_the_user_is_detached_by_the_next_mount() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("box");
    append_exec(&logs, "stdout", 1, "BEFORE-THE-CRASH\n");
    give_to_user(&env);
    let mut first = mount_as_user(&env, &[]);
    first.kill9();
    wait_until(Duration::from_secs(5), "the user's mount is stale", || {
        as_user("ls")
            .arg(&env.mnt)
            .stderr(Stdio::piped())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stderr).contains("Transport endpoint is not connected"))
    });
    let second = mount_as_user(&env, &[]);
    assert_eq!(mounts_at(&env.mnt).len(), 1, "the stale mount was detached (fusermount3 -uz), one live mount");
    let merged = env.merged("box");
    wait_until(Duration::from_secs(10), "served again", || contains(&read_as_user(&merged), b"BEFORE-THE-CRASH"));
    assert!(second.stderr().contains("stale mount"), "{}", second.stderr());
    second.stop();
}

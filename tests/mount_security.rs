//! Hostile trees and other users against a real mount: `merged.log` is readable by a
//! user only if that user could read every file it renders from (checked as user
//! nobody through `--allow-other`), symlinks below `sandboxes/` are never followed,
//! 2,000 sandboxes fit under `ulimit -n 1024`, an unlistable `sandboxes/` keeps every
//! sandbox, and many readers of huge lines cannot push the daemon's memory up.

#[macro_use]
mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const NOBODY: &str = "65534";

/// `cat path` as user nobody (no groups): its output, or `None` when it could not.
fn cat_as_nobody(path: &Path) -> Option<Vec<u8>> {
    let out = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "cat"])
        .arg(path)
        .output()
        .expect("setpriv");
    out.status.success().then_some(out.stdout)
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// An environment whose directories everyone may search (the tempdir is 0700).
fn open_env() -> Env {
    let env = Env::new();
    for dir in [env.root(), env.home.clone(), env.home.join("sandboxes"), env.mnt.clone()] {
        chmod(&dir, 0o755);
    }
    env
}

/// A sandbox `name` whose exec.log (0644) says `text`, with its directories 0755.
fn sandbox(env: &Env, name: &str, text: &str) -> std::path::PathBuf {
    let logs = env.logs_dir(name);
    chmod(logs.parent().unwrap(), 0o755);
    chmod(&logs, 0o755);
    append_exec(&logs, "stdout", 1, &format!("{text}\n"));
    chmod(&logs.join("exec.log"), 0o644);
    logs
}

fn wait_nobody(env: &Env, name: &str, readable: bool) {
    let merged = env.merged(name);
    wait_until(Duration::from_secs(5), &format!("{name} readable by nobody: {readable}"), || {
        cat_as_nobody(&merged).is_some() == readable
    });
}

#[test]
fn merged_log_is_readable_only_by_who_could_read_every_file_it_renders_from() {
    require_mount!();
    let env = open_env();
    sandbox(&env, "open", "anyone may read this");
    // A rotated generation only its owner may read.
    let rotated = sandbox(&env, "rotated", "public");
    fs::write(
        rotated.join("exec.log.1"),
        "{\"t\":\"2026-04-30T20:00:00.000Z\",\"s\":\"stdout\",\"d\":\"private\\n\",\"id\":1}\n",
    )
    .unwrap();
    chmod(&rotated.join("exec.log.1"), 0o600);
    // A hard link to a file nobody may read (what a link to /etc/shadow is).
    let linked = sandbox(&env, "linked", "public");
    let secret = env.root().join("secret");
    fs::write(&secret, "root:SECRET-HASH:19000:0:99999:7:::\n").unwrap();
    chmod(&secret, 0o640);
    fs::hard_link(&secret, linked.join("exec.log.1")).unwrap();
    // A logs directory, and a sandbox directory, only their owner may search.
    let closed_logs = sandbox(&env, "closed-logs", "public");
    chmod(&closed_logs, 0o700);
    let closed_dir = sandbox(&env, "closed-dir", "public");
    chmod(closed_dir.parent().unwrap(), 0o700);

    let m = env.mount_with(&["--allow-other"]);
    wait_until(Duration::from_secs(5), "every sandbox listed", || sandboxes_in(&env.mnt).len() == 5);
    let open = cat_as_nobody(&env.merged("open")).expect("nobody reads a sandbox whose every file it may read");
    assert!(String::from_utf8_lossy(&open).contains("anyone may read this"));
    // One file cannot show different bytes to different readers: all.log and
    // all.jsonl are for who may read every sandbox.
    for file in ["all.log", "all.jsonl"] {
        assert_eq!(cat_as_nobody(&env.mnt.join(file)), None, "{file}: nobody must not read it");
        assert!(!fs::read(env.mnt.join(file)).unwrap().is_empty(), "root reads {file}");
    }
    let open_dir = env.mnt.join("open");
    for view in ["program.log", "stdout.log", "merged.jsonl", "sessions/1.log"] {
        assert!(cat_as_nobody(&open_dir.join(view)).is_some(), "open/{view}: nobody may read it");
    }
    for name in ["rotated", "linked", "closed-logs", "closed-dir"] {
        assert_eq!(cat_as_nobody(&env.merged(name)), None, "{name}: nobody must not read it");
        // Nor any view of it.
        for view in ["program.log", "stdout.log", "merged.jsonl", "sessions/1.log"] {
            assert_eq!(cat_as_nobody(&env.mnt.join(name).join(view)), None, "{name}/{view}: nobody must not read it");
        }
        let mode = fs::metadata(env.merged(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o004, 0, "{name}: mode {mode:o}");
        // Root still reads everything.
        assert!(!fs::read(env.merged(name)).unwrap().is_empty());
    }
    assert!(String::from_utf8_lossy(&fs::read(env.merged("linked")).unwrap()).contains("SECRET-HASH"));

    // Opened up again, each becomes readable within the fallback poll.
    chmod(&rotated.join("exec.log.1"), 0o644);
    chmod(&closed_logs, 0o755);
    chmod(closed_dir.parent().unwrap(), 0o755);
    for name in ["rotated", "closed-logs", "closed-dir"] {
        wait_nobody(&env, name, true);
    }
    // And closed again.
    chmod(&closed_logs, 0o711);
    chmod(&rotated.join("exec.log"), 0o600);
    wait_nobody(&env, "rotated", false);
    wait_nobody(&env, "closed-logs", true);
    chmod(&closed_logs, 0o700);
    wait_nobody(&env, "closed-logs", false);
    m.stop();
}

#[test]
fn symlinks_below_sandboxes_are_not_followed() {
    require_mount!();
    let env = open_env();
    // Content outside the home, in a directory only root may enter.
    let outside = env.root().join("outside");
    let outside_logs = outside.join("box/logs");
    fs::create_dir_all(&outside_logs).unwrap();
    append_exec(&outside_logs, "stdout", 1, "OUTSIDE-SECRET\n");
    chmod(&outside_logs.join("exec.log"), 0o644);
    chmod(&outside, 0o700);
    let sandboxes = env.home.join("sandboxes");
    // The sandbox directory is a symlink; a sandbox's logs/ is a symlink.
    std::os::unix::fs::symlink(outside.join("box"), sandboxes.join("linked-dir")).unwrap();
    fs::create_dir_all(sandboxes.join("linked-logs")).unwrap();
    std::os::unix::fs::symlink(&outside_logs, sandboxes.join("linked-logs/logs")).unwrap();
    sandbox(&env, "real", "inside");

    let m = env.mount_with(&["--allow-other"]);
    wait_until(Duration::from_secs(5), "the real sandbox listed", || env.merged("real").exists());
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(sandboxes_in(&env.mnt), ["real"], "symlinked sandboxes are skipped");
    assert!(!fs::read_to_string(env.merged("real")).unwrap().contains("OUTSIDE"));

    // A logs/ swapped for a symlink while mounted: nothing from outside is read.
    let real_logs = env.logs_dir("real");
    fs::rename(&real_logs, env.home.join("sandboxes/real/logs.old")).unwrap();
    std::os::unix::fs::symlink(&outside_logs, &real_logs).unwrap();
    append_exec(&outside_logs, "stdout", 1, "OUTSIDE-LATER\n");
    std::thread::sleep(Duration::from_millis(1500));
    let merged = fs::read_to_string(env.merged("real")).unwrap_or_default();
    assert!(!merged.contains("OUTSIDE"), "{merged}");
    let log = m.stderr();
    assert!(log.contains("symlink"), "the skip is warned about: {log}");
    let warnings = log.lines().filter(|l| l.contains("linked-dir")).count();
    assert_eq!(warnings, 1, "warned once: {log}");
    m.stop();
}

/// 2,000 sandboxes of a few lines each.
fn many_sandboxes(env: &Env, n: usize) {
    for i in 0..n {
        let logs = env.logs_dir(&format!("sb{i:04}"));
        let line =
            format!("{{\"t\":\"2026-04-30T20:32:59.000Z\",\"s\":\"stdout\",\"d\":\"hello from {i}\\n\",\"id\":1}}\n");
        fs::write(logs.join("exec.log"), line.repeat(3)).unwrap();
        fs::write(logs.join("runtime.log"), "2026-04-30T20:32:59.000000Z  INFO microsandbox: started\n").unwrap();
        fs::write(logs.join("kernel.log"), "[    0.000000] Linux version 6.1\n").unwrap();
    }
}

#[test]
fn two_thousand_sandboxes_mount_list_and_read_under_ulimit_1024() {
    require_mount!();
    let env = Env::new();
    many_sandboxes(&env, 2000);
    let command = Mounted::command(&["prlimit", "--nofile=1024:1024", "--"], &env.home, &env.mnt, &[], None, &[]);
    let m = Mounted::launch(command, &env.mnt, &env.root().join("msbfs-mount.stderr"));
    assert_eq!(sandboxes_in(&env.mnt).len(), 2000, "every sandbox is listed at once");
    for i in [0, 777, 1999] {
        let text = fs::read_to_string(env.merged(&format!("sb{i:04}"))).unwrap();
        assert_eq!(text.matches(&format!("hello from {i}\n")).count(), 3, "{text}");
        assert_eq!(fs::metadata(env.merged(&format!("sb{i:04}"))).unwrap().len(), text.len() as u64);
    }
    // New lines still arrive, in a sandbox whose files were closed while idle too.
    append_exec(&env.logs_dir("sb0001"), "stdout", 1, "later\n");
    wait_until(Duration::from_secs(5), "the new line", || {
        fs::read_to_string(env.merged("sb0001")).unwrap().contains("later")
    });
    let fds = fs::read_dir(format!("/proc/{}/fd", m.pid())).unwrap().count();
    assert!(fds < 1024, "{fds} descriptors");
    let log = m.stderr();
    assert!(!log.contains("Too many open files"), "{log}");
    m.stop();
    // A restart resumes all 2,000 saved epochs under the same limit.
    let command = Mounted::command(&["prlimit", "--nofile=1024:1024", "--"], &env.home, &env.mnt, &[], None, &[]);
    let m = Mounted::launch(command, &env.mnt, &env.root().join("msbfs-restart.stderr"));
    assert_eq!(sandboxes_in(&env.mnt).len(), 2000, "every sandbox is listed again");
    let text = fs::read_to_string(env.merged("sb0001")).unwrap();
    assert!(text.contains("later") && text.matches("hello from 1\n").count() == 3, "{text}");
    let log = m.stderr();
    assert!(!log.contains("Too many open files") && !log.contains("new epoch"), "{log}");
    m.stop();
}

#[test]
fn an_unlistable_sandboxes_directory_keeps_every_sandbox() {
    require_mount!();
    let env = open_env();
    for name in ["a", "b"] {
        sandbox(&env, name, name);
    }
    // A daemon without the capabilities that let root ignore permissions.
    let wrapper = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all", "--"];
    let command = Mounted::command(&wrapper, &env.home, &env.mnt, &[], None, &[]);
    let m = Mounted::launch(command, &env.mnt, &env.root().join("msbfs-mount.stderr"));
    wait_until(Duration::from_secs(5), "both listed", || sandboxes_in(&env.mnt).len() == 2);
    let ino = |name: &str| std::os::unix::fs::MetadataExt::ino(&fs::metadata(env.merged(name)).unwrap());
    let before = (ino("a"), ino("b"));
    let sandboxes = env.home.join("sandboxes");
    chmod(&sandboxes, 0o000);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sandboxes_in(&env.mnt).len(), 2, "still both");
    assert_eq!((ino("a"), ino("b")), before, "same files");
    chmod(&sandboxes, 0o755);
    append_exec(&env.logs_dir("a"), "stdout", 1, "after\n");
    wait_until(Duration::from_secs(5), "a grows again", || {
        fs::read_to_string(env.merged("a")).unwrap().contains("after")
    });
    assert_eq!((ino("a"), ino("b")), before, "same files, offsets kept");
    let log = m.stderr();
    assert!(!log.contains("sandbox gone"), "{log}");
    assert_eq!(log.matches("cannot list").count(), 1, "warned once: {log}");
    m.stop();
}

/// The daemon's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn many_readers_of_huge_lines_cannot_push_memory_past_the_bound() {
    require_mount!();
    let env = open_env();
    let logs = sandbox(&env, "huge", "start");
    // Eight 15 MiB lines (each one exec chunk), as a program printing huge lines writes.
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(logs.join("exec.log")).unwrap();
        for i in 0..8 {
            let body = format!("{i}").repeat(15 << 20);
            writeln!(f, "{{\"t\":\"2026-04-30T20:33:0{i}.000Z\",\"s\":\"stdout\",\"d\":\"{body}\\n\",\"id\":1}}")
                .unwrap();
        }
    }
    let m = env.mount_with(&["--allow-other"]);
    let merged = env.merged("huge");
    wait_until(Duration::from_secs(30), "all ingested", || fs::metadata(&merged).unwrap().len() > 8 * (15 << 20));
    let size = fs::metadata(&merged).unwrap().len();
    // 120 handles of user nobody, each reading one byte at a different offset, all
    // open at once.
    let script = format!(
        "import os\nfds=[os.open('{}', os.O_RDONLY) for _ in range(120)]\n\
         got=[os.pread(fd, 1, i * {} // 120) for i, fd in enumerate(fds)]\n\
         assert all(len(g) == 1 for g in got), got\nprint('ok')\n",
        merged.display(),
        size
    );
    let out = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "/usr/bin/python3", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let peak = peak_rss_kib(m.pid());
    assert!(peak < 256 << 10, "peak RSS {peak} KiB");
    m.stop();
}

#[test]
fn a_sandbox_name_cannot_forge_or_flood_the_daemon_log() {
    require_mount!();
    let env = Env::new();
    let forged = "evil\n1999-01-01T00:00:00.000000Z  WARN msbfs: FORGED\x1b]0;title\x07";
    sandbox(&env, forged, "x");
    // A name msbfs skips (not UTF-8), seen by every fallback poll.
    let bad = std::ffi::OsStr::from_bytes(b"bad\xff\n FORGED-TOO");
    fs::create_dir_all(env.home.join("sandboxes").join(bad).join("logs")).unwrap();
    let m = env.mount();
    wait_until(Duration::from_secs(5), "the sandbox listed", || env.merged(forged).exists());
    std::thread::sleep(Duration::from_millis(2500));
    let log = m.stderr();
    assert!(!log.lines().any(|l| l.starts_with("1999-01-01") || l.trim_start().starts_with("FORGED")), "{log}");
    assert!(!log.contains('\x1b') && !log.contains('\x07'), "raw control characters in the log: {log:?}");
    assert_eq!(log.matches("FORGED-TOO").count(), 1, "the skipped name is warned about once: {log}");
    m.stop();
}

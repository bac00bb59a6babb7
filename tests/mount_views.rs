//! The views against a real mount: `program.log`, one file per source,
//! `sessions/<id>.log` and `merged.jsonl`, checked against what the producer wrote
//! (the simulator's markers and exec.log itself, not msbfs's renderer), across
//! rotations, a restart and a sandbox recreated; followed by GNU and busybox `tail -f`;
//! read by `jq`; resumed by offset from xattrs with `getfattr` and `tail -c`.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use msbfs::simulate::Summary;

/// The tag of a rendered line (`stdout[7]`), or "" when it has none.
fn tag(line: &[u8]) -> &str {
    let rest = line.get(25..).unwrap_or(&[]);
    std::str::from_utf8(&rest[..rest.iter().position(|&b| b == b' ').unwrap_or(0)]).unwrap_or("")
}

fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&b| b == b'\n').collect()
}

/// Checks a view of captured output: every line's stream is one of `streams` (and its
/// session `session`, if given), and each stream's markers `n=…` run from 0 to the
/// count the simulator wrote, each exactly once, in order.
fn check_output_view(name: &str, bytes: &[u8], s: &Summary, streams: &[&str], session: Option<u64>) {
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines(bytes) {
        let tag = tag(line);
        let (stream, id) = tag.split_once('[').unwrap_or_else(|| panic!("{name}: a line without a session: {tag:?}"));
        let id: u64 = id.trim_end_matches(']').parse().unwrap();
        assert!(streams.contains(&stream), "{name}: a {stream} line");
        assert!(session.is_none_or(|want| want == id), "{name}: a line of session {id}");
        let n = next.entry(tag.to_string()).or_insert(0);
        let marker = format!("{stream} s={id} n={:08} ", *n);
        let text = &line[25 + tag.len() + 1..];
        assert!(
            text.starts_with(marker.as_bytes()),
            "{name}: expected {marker:?}, got {:?}",
            String::from_utf8_lossy(text)
        );
        *n += 1;
    }
    let want: BTreeMap<String, u64> = s
        .exec_lines
        .iter()
        .filter(|(k, _)| {
            k.split_once('[').is_some_and(|(stream, id)| {
                streams.contains(&stream) && session.is_none_or(|want| id.trim_end_matches(']') == want.to_string())
            })
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(next, want, "{name}: every line of every stream once");
}

/// The lines of `merged` whose tag's stream is one of `streams`.
fn pick(merged: &[u8], streams: &[&str]) -> Vec<u8> {
    lines(merged)
        .into_iter()
        .filter(|l| streams.contains(&tag(l).split('[').next().unwrap()))
        .flatten()
        .copied()
        .collect()
}

/// Reads every view of sandbox `dir` and checks it against the producer's summary.
fn check_views(dir: &Path, s: &Summary) -> BTreeMap<String, Vec<u8>> {
    let merged = read_all(&dir.join("merged.log"));
    check(&merged, s, Expect::Complete);
    let mut out = BTreeMap::new();
    for (file, streams) in [
        ("program.log", &["stdout", "stderr", "output"][..]),
        ("stdout.log", &["stdout"]),
        ("stderr.log", &["stderr"]),
        ("output.log", &["output"]),
    ] {
        let bytes = read_all(&dir.join(file));
        check_output_view(file, &bytes, s, streams, None);
        out.insert(file.to_string(), bytes);
    }
    for (file, stream) in [("system.log", "system"), ("runtime.log", "runtime"), ("kernel.log", "kernel")] {
        let bytes = read_all(&dir.join(file));
        assert_eq!(bytes, pick(&merged, &[stream]), "{file}: the {stream} lines of merged.log");
        assert!(!bytes.is_empty(), "{file}");
        out.insert(file.to_string(), bytes);
    }
    let mut sessions: Vec<u64> = fs::read_dir(dir.join("sessions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".log").parse().unwrap())
        .collect();
    sessions.sort();
    let mut want: Vec<u64> = s
        .exec_lines
        .keys()
        .filter_map(|k| k.split_once('['))
        .map(|(_, id)| id.trim_end_matches(']').parse().unwrap())
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(sessions, want, "sessions/ lists every session");
    for id in sessions {
        let file = format!("sessions/{id}.log");
        let bytes = read_all(&dir.join(&file));
        check_output_view(&file, &bytes, s, &["stdout", "stderr", "output"], Some(id));
        out.insert(file, bytes);
    }
    let jsonl = read_all(&dir.join("merged.jsonl"));
    let mut exec_entries = 0u64;
    for line in lines(&jsonl) {
        let v: serde_json::Value = serde_json::from_slice(line).expect("a JSON line");
        if ["stdout", "stderr", "output"].contains(&v["s"].as_str().unwrap()) {
            exec_entries += 1;
        }
    }
    assert!(exec_entries > 0);
    out.insert("merged.jsonl".into(), jsonl);
    out
}

#[test]
fn every_view_holds_its_lines_once_in_order_across_rotations_a_restart_and_a_new_epoch() {
    require_mount!();
    let env = Env::new();
    let mut sim = simulator(&env, "web", 256 << 10, 21);
    steps(&mut sim, 3000);
    let m = env.mount();
    let logs = env.logs_dir("web");
    let dir = env.mnt.join("web");
    wait_caught_up(&logs, &dir.join("merged.log"), Duration::from_secs(30));
    let before = check_views(&dir, sim.summary());
    // Live lines while mounted, then more while msbfs is stopped.
    steps(&mut sim, 1500);
    wait_caught_up(&logs, &dir.join("merged.log"), Duration::from_secs(30));
    m.stop();
    steps(&mut sim, 1500);
    let m = env.mount();
    wait_caught_up(&logs, &dir.join("merged.log"), Duration::from_secs(30));
    let after = check_views(&dir, sim.summary());
    for (file, old) in &before {
        let new = &after[file];
        assert!(new.len() > old.len() || file.starts_with("sessions/"), "{file} grew");
        assert!(new.starts_with(old), "{file}: every byte served before is served again at its offset");
    }
    // The sandbox is removed and created again: a new epoch, views from nothing.
    fs::remove_dir_all(env.home.join("sandboxes/web")).unwrap();
    wait_until(Duration::from_secs(10), "web gone", || !dir.exists());
    fs::create_dir_all(&logs).unwrap();
    append_exec(&logs, "stdout", 3, "reborn\n");
    wait_until(Duration::from_secs(10), "web back", || fs::read(dir.join("program.log")).is_ok_and(|b| !b.is_empty()));
    let program = String::from_utf8(read_all(&dir.join("program.log"))).unwrap();
    assert_eq!(program, "2026-04-30T21:00:00.000Z stdout[3] reborn\n");
    assert_eq!(read_all(&dir.join("sessions/3.log")), program.as_bytes());
    m.stop();
}

/// Spawns `tail -f` (GNU, or busybox's) on `path`, its output to a file.
fn tail_f(busybox: bool, path: &Path, out: &Path) -> ChildGuard {
    let mut cmd = if busybox {
        let mut c = Command::new("busybox");
        c.arg("tail");
        c
    } else {
        Command::new("tail")
    };
    let child = cmd
        .args(["-n", "0", "-f"])
        .arg(path)
        .stdout(fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard::new("tail -f", child)
}

#[test]
fn tail_f_follows_program_log_and_a_session_file() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("app");
    append_exec(&logs, "stdout", 7, "first\n");
    let m = env.mount();
    let dir = env.mnt.join("app");
    wait_until(Duration::from_secs(5), "the session is listed", || dir.join("sessions/7.log").exists());
    let (gnu_out, busybox_out) = (env.root().join("gnu.out"), env.root().join("busybox.out"));
    let _gnu = tail_f(false, &dir.join("program.log"), &gnu_out);
    let _busybox = tail_f(true, &dir.join("sessions/7.log"), &busybox_out);
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        append_exec(&logs, "stderr", 7, &format!("live {i}\n"));
        append_exec(&logs, "stdout", 8, &format!("other session {i}\n"));
        let want = format!("stderr[7] live {i}\n");
        for out in [&gnu_out, &busybox_out] {
            wait_until(Duration::from_secs(2), &format!("{want:?} in {}", out.display()), || {
                fs::read_to_string(out).unwrap_or_default().contains(&want)
            });
        }
    }
    let busybox = fs::read_to_string(&busybox_out).unwrap();
    assert!(!busybox.contains("other session"), "a session file shows only its session:\n{busybox}");
    assert_eq!(busybox.lines().count(), 5, "each line once:\n{busybox}");
    wait_until(Duration::from_secs(2), "GNU tail shows the other session", || {
        fs::read_to_string(&gnu_out).unwrap_or_default().matches("other session").count() == 5
    });
    m.stop();
}

fn getfattr(path: &Path, name: &str) -> Result<String, String> {
    let out = Command::new("getfattr").args(["-n", name, "--only-values"]).arg(path).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The output of shell `script`, which must succeed.
fn sh(script: &str) -> Vec<u8> {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn sh_text(script: &str) -> String {
    String::from_utf8(sh(script)).unwrap()
}

#[test]
fn jq_getfattr_and_tail_resume_by_time_and_by_cursor() {
    require_mount!();
    let env = Env::new();
    let mut sim = simulator(&env, "api", 10 << 20, 5);
    steps(&mut sim, 1500);
    let m = env.mount();
    let dir = env.mnt.join("api");
    wait_caught_up(&env.logs_dir("api"), &dir.join("merged.log"), Duration::from_secs(30));
    let jsonl = dir.join("merged.jsonl");
    let q = |filter: &str| sh_text(&format!("jq -j '{filter}' '{}'", jsonl.display()));
    // jq sees every stderr entry; their text is exec.log's, exactly.
    let stderr_entries: usize =
        sim.summary().exec_lines.iter().filter(|(k, _)| k.starts_with("stderr[")).map(|(_, v)| *v as usize).sum();
    let from_jq = q(r#"select(.s=="stderr") | if .e == "b64" then .d | @base64d else .d end"#);
    assert_eq!(from_jq.matches("stderr s=").count(), stderr_entries);
    // The msb logs --json shape: t, s, id, d.
    let first = q(r#"select(.s=="stdout") | {t, s, id, d} | tojson + "\n""#);
    let v: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 4);
    // Resume from the cursor of the 100th entry: exactly the entries after it.
    let all: Vec<String> = fs::read_to_string(&jsonl).unwrap().lines().map(str::to_string).collect();
    let cursor = serde_json::from_str::<serde_json::Value>(&all[99]).unwrap()["cursor"].as_str().unwrap().to_string();
    let at: u64 = getfattr(&jsonl, &format!("user.offset.of.{cursor}")).unwrap().parse().unwrap();
    let rest = sh_text(&format!("tail -c +{} '{}'", at + 1, jsonl.display()));
    assert_eq!(rest, all[100..].iter().map(|l| format!("{l}\n")).collect::<String>());
    // In merged.log the same cursor resumes just after that entry's lines.
    let merged_at: u64 =
        getfattr(&dir.join("merged.log"), &format!("user.offset.of.{cursor}")).unwrap().parse().unwrap();
    let offset_101 = serde_json::from_str::<serde_json::Value>(&all[100]).unwrap()["offset"].as_u64().unwrap();
    assert!(merged_at <= offset_101);
    // --since: the first line at or after a time (that of the middle line), then tail -c.
    let program = dir.join("program.log");
    let bytes = read_all(&program);
    let middle = lines(&bytes)[lines(&bytes).len() / 2];
    let since = std::str::from_utf8(&middle[..24]).unwrap().to_string();
    let n: u64 = getfattr(&program, &format!("user.offset.at.{since}")).unwrap().parse().unwrap();
    let tail = sh(&format!("tail -c +{} '{}'", n + 1, program.display()));
    let want: Vec<&[u8]> = lines(&bytes).into_iter().skip_while(|l| l[..24] < *since.as_bytes()).collect();
    assert_eq!(tail, want.concat());
    assert!(!tail.is_empty() && tail.len() < bytes.len());
    // A foreign cursor is ESTALE, a malformed one EINVAL.
    let stale = getfattr(
        &program,
        "user.offset.of.BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    )
    .unwrap_err();
    assert!(stale.contains("Stale file handle"), "{stale}");
    let bad = getfattr(&program, "user.offset.of.nonsense").unwrap_err();
    assert!(bad.contains("Invalid argument"), "{bad}");
    m.stop();
}

#[test]
fn a_boot_error_is_shown_once_per_record() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("broken");
    append_exec(&logs, "system", 0, "--- sandbox starting ---\n");
    let record = r#"{"t":"2026-04-30T21:00:01.000Z","stage":"mount","errno":2,"message":"rootfs not found"}"#;
    fs::write(logs.join("boot-error.json"), record).unwrap();
    let m = env.mount();
    let dir = env.mnt.join("broken");
    let line = "2026-04-30T21:00:01.000Z system boot error (stage mount, errno 2): rootfs not found\n";
    wait_until(Duration::from_secs(5), "the boot error", || {
        fs::read_to_string(dir.join("system.log")).is_ok_and(|t| t.contains(line))
    });
    let jq = sh_text(&format!("jq -r 'select(.s==\"boot-error\") | .d' '{}'", dir.join("merged.jsonl").display()));
    assert_eq!(jq, format!("{record}\n"));
    // Rewritten (a new start failed again): a second line; deleted: nothing retracted.
    let tmp = logs.join("boot-error.json.tmp");
    fs::write(&tmp, record.replace("rootfs not found", "no kernel")).unwrap();
    fs::rename(&tmp, logs.join("boot-error.json")).unwrap();
    wait_until(Duration::from_secs(5), "the second boot error", || {
        fs::read_to_string(dir.join("merged.log")).is_ok_and(|t| t.contains("errno 2): no kernel"))
    });
    fs::remove_file(logs.join("boot-error.json")).unwrap();
    append_exec(&logs, "system", 0, "--- sandbox started ---\n");
    wait_until(Duration::from_secs(5), "the good start", || {
        fs::read_to_string(dir.join("system.log")).is_ok_and(|t| t.contains("sandbox started"))
    });
    let system = fs::read_to_string(dir.join("system.log")).unwrap();
    assert_eq!(system.matches("boot error").count(), 2, "{system}");
    m.stop();
}

/// Appends exec entry `i` of sandbox `name` (a line that names both).
fn append_numbered(logs: &Path, name: &str, i: u64) {
    append_exec(logs, "stdout", 1, &format!("{name} line {i:04}\n"));
}

/// The (name, text) of each line of `all.log`, checking its shape.
fn all_lines(bytes: &[u8]) -> Vec<(String, String)> {
    lines(bytes)
        .into_iter()
        .map(|l| {
            let text = std::str::from_utf8(l).unwrap();
            let mut parts = text[25..].splitn(3, ' ');
            let (name, tag, rest) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or(""));
            assert_eq!(tag, "stdout[1]", "{text:?}");
            (name.to_string(), rest.trim_end().to_string())
        })
        .collect()
}

#[test]
fn all_log_holds_every_sandbox_line_once_with_its_name_across_removal_and_restart() {
    require_mount!();
    let env = Env::new();
    let names: Vec<String> = (0..50).map(|i| format!("sb{i:02}")).collect();
    for name in &names {
        append_numbered(&env.logs_dir(name), name, 0);
    }
    let m = env.mount();
    let all = env.mnt.join("all.log");
    wait_until(Duration::from_secs(10), "every sandbox in all.log", || {
        fs::read(&all).is_ok_and(|b| lines(&b).len() == names.len())
    });
    // 50 sandboxes writing at once.
    std::thread::scope(|scope| {
        for name in &names {
            let logs = env.logs_dir(name);
            scope.spawn(move || {
                for i in 1..20 {
                    append_numbered(&logs, name, i);
                }
            });
        }
    });
    wait_until(Duration::from_secs(10), "every line in all.log", || {
        fs::read(&all).is_ok_and(|b| lines(&b).len() == names.len() * 20)
    });
    let check_all = |bytes: &[u8], want: &dyn Fn(&str) -> Vec<String>| {
        let mut per: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, text) in all_lines(bytes) {
            assert!(text.starts_with(&format!("{name} line ")), "{name}: {text}");
            per.entry(name).or_default().push(text);
        }
        for name in &names {
            assert_eq!(per.get(name).cloned().unwrap_or_default(), want(name), "{name}");
        }
    };
    let numbered =
        |name: &str, range: std::ops::Range<u64>| range.map(|i| format!("{name} line {i:04}")).collect::<Vec<_>>();
    let first = read_all(&all);
    check_all(&first, &|n| numbered(n, 0..20));
    // all.jsonl: the same entries, each with its sandbox.
    let jsonl = read_all(&env.mnt.join("all.jsonl"));
    let entries: Vec<serde_json::Value> = lines(&jsonl).iter().map(|l| serde_json::from_slice(l).unwrap()).collect();
    assert_eq!(entries.len(), names.len() * 20);
    for e in &entries {
        let name = e["sandbox"].as_str().unwrap();
        assert!(e["d"].as_str().unwrap().starts_with(&format!("{name} line ")), "{e}");
    }
    // A sandbox removed and created again: its old lines stay, new ones follow.
    fs::remove_dir_all(env.home.join("sandboxes/sb07")).unwrap();
    wait_until(Duration::from_secs(10), "sb07 gone", || !env.mnt.join("sb07").exists());
    let logs = env.logs_dir("sb07");
    for i in 20..25 {
        append_numbered(&logs, "sb07", i);
    }
    wait_until(Duration::from_secs(10), "sb07's new lines", || {
        fs::read(&all).is_ok_and(|b| lines(&b).len() == names.len() * 20 + 5)
    });
    let second = read_all(&all);
    assert!(second.starts_with(&first), "all.log only grows");
    let want = |n: &str| if n == "sb07" { numbered(n, 0..25) } else { numbered(n, 0..20) };
    check_all(&second, &want);
    // Restarted: the same bytes, and what comes next follows them.
    m.stop();
    append_numbered(&env.logs_dir("sb00"), "sb00", 20);
    let m = env.mount();
    wait_until(Duration::from_secs(10), "the line written while stopped", || {
        fs::read(&all).is_ok_and(|b| lines(&b).len() == names.len() * 20 + 6)
    });
    let third = read_all(&all);
    assert!(third.starts_with(&second), "all.log is the same after a restart");
    check_all(&third, &|n| match n {
        "sb07" => numbered(n, 0..25),
        "sb00" => numbered(n, 0..21),
        _ => numbered(n, 0..20),
    });
    let jsonl_again = read_all(&env.mnt.join("all.jsonl"));
    assert!(jsonl_again.starts_with(&jsonl), "all.jsonl too");
    // By time: every line here is of 21:00:00.000.
    for (file, size) in [("all.log", third.len()), ("all.jsonl", jsonl_again.len())] {
        let path = env.mnt.join(file);
        assert_eq!(getfattr(&path, "user.offset.at.2026-04-30T21:00:00Z").unwrap(), "0", "{file}");
        assert_eq!(getfattr(&path, "user.offset.at.2026-04-30T21:00:00.001Z").unwrap(), size.to_string(), "{file}");
    }
    m.stop();
}

//! The command line outside of mounting: version, help, completions, man page, cursor
//! decoding, the simulator's summary.

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run msbfs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8");
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[test]
fn version_help_completions_and_man_page_come_from_one_definition() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!((code, out.as_str()), (0, concat!("msbfs ", env!("CARGO_PKG_VERSION"), "\n")));
    let (code, out, _) = run(&["help", "mount"]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage: msbfs mount [OPTIONS] <MOUNTPOINT>") && out.contains("--allow-other"), "{out}");
    assert!(out.contains("fusermount3"), "help says how ordinary users mount: {out}");
    for (shell, sign) in [("bash", "complete -F _msbfs"), ("zsh", "#compdef msbfs"), ("fish", "complete -c msbfs")] {
        let (code, out, err) = run(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(sign), "{shell} completions: {}", &out[..out.len().min(200)]);
        assert!(out.contains("unmount") && out.contains("demo"), "{shell}: every subcommand");
    }
    let (code, out, _) = run(&["man"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(".ie") && out.contains(".TH msbfs 1") && out.contains("mount"), "{}", &out[..200]);
}

#[test]
fn cursor_decode_names_each_position() {
    // exec.log at byte 345 of generation 12, runtime.log and kernel.log at 0,
    // merged.log at 4096 of epoch 0xdeadbeef.
    let mut raw = vec![4u8];
    for (g, o) in [(12u64, 345u64), (13, 0), (0, 0), (0xdead_beef, 4096)] {
        raw.extend_from_slice(&g.to_le_bytes());
        raw.extend_from_slice(&o.to_le_bytes());
    }
    let cursor = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw);
    let (code, out, err) = run(&["cursor", "decode", &cursor]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("cursor       {cursor}"));
    assert_eq!(lines[1], "exec.log     byte            345   (generation 0xc)");
    assert_eq!(lines[4], "merged.log   offset         4096   (epoch 0xdeadbeef)");
    let (code, out, err) = run(&["cursor", "decode", "--json", &cursor]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["cursor"], cursor);
    assert_eq!(json["exec"], serde_json::json!({"generation": 12, "offset": 345}));
    assert_eq!(json["runtime"]["generation"], 13);
    assert_eq!((json["epoch"].as_u64(), json["merged_offset"].as_u64()), (Some(0xdead_beef), Some(4096)));
    let (code, _, err) = run(&["cursor", "decode", "not-a-cursor"]);
    assert_eq!(code, 2);
    assert_eq!(err, "msbfs: \"not-a-cursor\" is neither a cursor nor a file\n");
}

#[test]
fn simulate_prints_a_sentence_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_str().unwrap();
    let (code, out, err) = run(&["simulate", "--home", home, "--name", "a", "--lines", "100", "--seed", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1);
    assert!(out.starts_with("wrote 100 exec lines in "), "{out}");
    assert!(out.len() < 300, "short: {out}");
    let (code, out, _) = run(&["simulate", "--home", home, "--name", "b", "--lines", "100", "--seed", "3", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(parse_summary(&out).exec_total(), 100);
}

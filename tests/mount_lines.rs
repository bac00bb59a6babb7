//! Lines against a real mount: a prompt without newline reaches a parked follower as
//! its own line within a second; block-buffered producers (chunks cut at 4 KiB or random
//! boundaries) followed by GNU `tail -f` show every logical line exactly once, whole;
//! and what a terminal would execute (escape sequences other than SGR colours, control
//! characters) reads as visible text, with blank source lines kept.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;

// ---------------------------------------------------------------------------
// A follower thread that reports each read's bytes with the time they arrived.

enum Event {
    /// Read to the end, got end of file twice; the next read is the third (it parks).
    Ready(Vec<u8>),
    Data(Instant, Vec<u8>),
}

struct Follower {
    rx: Receiver<Event>,
    stop: Arc<AtomicBool>,
    tid: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    fn start(path: &Path) -> Follower {
        install_sigusr1();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU32::new(0));
        let (path, s2, t2) = (path.to_path_buf(), stop.clone(), tid.clone());
        let thread = std::thread::spawn(move || {
            t2.store(gettid(), Ordering::SeqCst);
            let mut f = File::open(&path).expect("open merged.log");
            let mut buf = vec![0u8; 256 << 10];
            let mut initial = Vec::new();
            let mut eofs = 0;
            while eofs < 2 {
                match f.read(&mut buf) {
                    Ok(0) => eofs += 1,
                    Ok(n) => {
                        initial.extend_from_slice(&buf[..n]);
                        eofs = 0;
                    }
                    Err(e) => panic!("initial read: {e}"),
                }
            }
            if tx.send(Event::Ready(initial)).is_err() {
                return;
            }
            loop {
                match f.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        if tx.send(Event::Data(Instant::now(), buf[..n].to_vec())).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
                if s2.load(Ordering::SeqCst) {
                    return;
                }
            }
        });
        Follower { rx, stop, tid, thread: Some(thread) }
    }

    fn ready(&self, deadline: Duration) -> Vec<u8> {
        match self.rx.recv_timeout(deadline) {
            Ok(Event::Ready(b)) => b,
            Ok(Event::Data(..)) => panic!("data before ready"),
            Err(e) => panic!("follower not ready within {deadline:?}: {e}"),
        }
    }

    /// Bytes up to and including the next `\n`, with the time the last of them arrived.
    fn line(&self, deadline: Duration) -> (Instant, Vec<u8>) {
        let start = Instant::now();
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(Event::Data(at, b)) => {
                    got.extend_from_slice(&b);
                    if got.ends_with(b"\n") {
                        return (at, got);
                    }
                }
                Ok(Event::Ready(_)) => unreachable!(),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no complete line within {deadline:?}; got {:?}", String::from_utf8_lossy(&got))
                }
                Err(e) => panic!("follower ended: {e}"),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let start = Instant::now();
            while !t.is_finished() && start.elapsed() < Duration::from_secs(3) {
                use std::os::unix::thread::JoinHandleExt;
                // SAFETY: the thread is not yet joined, so its pthread_t is valid.
                unsafe {
                    libc::pthread_kill(t.as_pthread_t(), libc::SIGUSR1);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Case 7: a prompt without newline reaches a parked follower as its own line in < 1 s;
/// the answer typed after it is a new line.
#[test]
fn prompt_without_newline_reaches_a_parked_follower_within_a_second() {
    require_mount!();
    let env = Env::new();
    let logs = env.logs_dir("pw");
    append_exec(&logs, "stdout", 5, "ready\n");
    let _m = env.mount();
    let merged = env.merged("pw");
    wait_until(Duration::from_secs(10), "first line in merged.log", || {
        fs::read(&merged).is_ok_and(|b| contains(&b, b"stdout[5] ready\n"))
    });

    let follower = Follower::start(&merged);
    let initial = follower.ready(Duration::from_secs(10));
    assert_eq!(initial, read_all(&merged), "the follower read everything");
    wait_parked_in_read(follower.tid.load(Ordering::SeqCst), Duration::from_secs(5));

    let t = Instant::now();
    append_exec(&logs, "stdout", 5, "Password: ");
    let (at, line) = follower.line(Duration::from_secs(5));
    let latency = at - t;
    assert_eq!(String::from_utf8_lossy(&line), "2026-04-30T21:00:00.000Z stdout[5] Password: \n");
    assert!(latency < Duration::from_secs(1), "the prompt took {latency:?}");
    assert!(latency >= Duration::from_millis(200), "the fragment was held (about 250 ms) first: {latency:?}");
    eprintln!("prompt latency {latency:?}");

    let t = Instant::now();
    append_exec(&logs, "stdout", 5, "secret\n");
    let (at, line) = follower.line(Duration::from_secs(5));
    assert_eq!(String::from_utf8_lossy(&line), "2026-04-30T21:00:00.000Z stdout[5] secret\n", "a new line");
    assert!(at - t < Duration::from_secs(1), "a complete line is not held: {:?}", at - t);
    let all = read_all(&merged);
    assert!(all.ends_with(b"stdout[5] Password: \n2026-04-30T21:00:00.000Z stdout[5] secret\n"));
}

// ---------------------------------------------------------------------------
// Block-buffered producers followed by GNU tail -f

const MARKER: &str = r"(stdout|stderr|output)\[[0-9]+\] (stdout|stderr|output) s=[0-9]+ n=[0-9]{8}";
const EXEC_LINE: &str = r"^[-0-9T:.Z]{24} (stdout|stderr|output)(\[[0-9]+\])? ";

/// `grep -c -E pattern file` with LC_ALL=C.
fn grep_count(pattern: &str, file: &Path) -> u64 {
    let out = Command::new("grep").env("LC_ALL", "C").args(["-c", "-E", pattern]).arg(file).output().expect("grep");
    assert!(out.status.code().is_some_and(|c| c <= 1), "grep: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().parse().expect("a count")
}

/// The exec.log generations of `logs`, oldest first.
fn exec_generations(logs: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        (1..=4).rev().map(|n| logs.join(format!("exec.log.{n}"))).filter(|p| p.exists()).collect();
    v.push(logs.join("exec.log"));
    v
}

/// On the producer's clock: the longest gap between a chunk that ended mid-line and the
/// next chunk of the same stream (the scenario must keep it well below 250 ms, so no
/// fragment is legitimately flushed by time), and the longest time a stream held some
/// fragment without interruption (from a chunk ending mid-line to one ending with `\n`).
fn fragment_times_ms(logs: &Path) -> (i64, i64) {
    let mut last: HashMap<(String, u64), (i64, bool)> = HashMap::new();
    let mut since: HashMap<(String, u64), i64> = HashMap::new();
    let (mut gap, mut hold) = (0, 0);
    for p in exec_generations(logs) {
        for l in fs::read(&p).unwrap().split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(l).expect("exec.log JSON");
            let Some(id) = v["id"].as_u64() else { continue };
            let t = msbfs::time::parse_rfc3339(v["t"].as_str().unwrap()).unwrap();
            let d = v["d"].as_str().unwrap();
            let ends = if v["e"] == "b64" {
                base64::engine::general_purpose::STANDARD.decode(d).unwrap().ends_with(b"\n")
            } else {
                d.ends_with('\n')
            };
            let key = (v["s"].as_str().unwrap().to_string(), id);
            if let Some((t0, false)) = last.get(&key) {
                gap = gap.max(t - t0);
            }
            if ends {
                if let Some(t0) = since.remove(&key) {
                    hold = hold.max(t - t0);
                }
            } else {
                since.entry(key.clone()).or_insert(t);
            }
            last.insert(key, (t, ends));
        }
    }
    (gap, hold)
}

/// Case 8: a paced block-buffered producer followed live by GNU `tail -f`: every
/// logical exec line exactly once, carrying its marker; no fragment lines.
/// `min_hold_ms`: the scenario must have a stream hold fragments that long.
fn block_buffered_producer_with_gnu_tail(chunking: &'static str, lines: u64, rate: f64, seed: u64, min_hold_ms: i64) {
    let name = format!("bb-{chunking}-{lines}");
    let env = Env::new();
    let logs = env.logs_dir(&name);
    let _m = env.mount();
    let merged = env.merged(&name);
    wait_until(Duration::from_secs(5), "merged.log visible", || merged.exists());

    let out_path = env.root().join("tail.out");
    let out = File::create(&out_path).unwrap();
    let mut tail = ChildGuard::new(
        "tail",
        Command::new("tail")
            .args(["-n", "+1", "-f"])
            .arg(&merged)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tail"),
    );
    let sim = Sim::new(&name, lines).rate(rate).rotate(2 << 20).seed(seed).chunking(chunking).spawn_bin(&env.home);
    let s = finish_bin(sim, Duration::from_secs(60));
    let (gap, hold) = fragment_times_ms(&logs);
    wait_caught_up(&logs, &merged, Duration::from_secs(30));
    let size = fs::metadata(&merged).unwrap().len();
    wait_until(Duration::from_secs(20), "tail printed everything", || {
        fs::metadata(&out_path).is_ok_and(|m| m.len() >= size)
    });
    assert!(tail.is_running(), "tail still following");

    let printed = fs::read(&out_path).unwrap();
    let markers = grep_count(MARKER, &out_path);
    let exec_lines = grep_count(EXEC_LINE, &out_path);
    let fragments: Vec<String> = parse_lines(&printed)
        .iter()
        .filter(|l| {
            let tag = l.tag;
            (tag.starts_with(b"stdout") || tag.starts_with(b"stderr") || tag.starts_with(b"output"))
                && !l.text.starts_with(&tag[..6])
        })
        .take(5)
        .map(|l| {
            format!(
                "{} {} {:?}",
                String::from_utf8_lossy(l.ts),
                String::from_utf8_lossy(l.tag),
                String::from_utf8_lossy(&l.text[..l.text.len().min(60)])
            )
        })
        .collect();
    eprintln!(
        "{chunking} at {rate} lines/s: {} exec lines written, {markers} markers, {exec_lines} exec lines rendered, {} rotations, \
         longest producer gap after a mid-line chunk {gap} ms, longest uninterrupted hold {hold} ms",
        s.exec_total(),
        s.exec_rotations
    );
    assert!(gap < 125, "scenario precondition: the producer's chunks of a stream follow within {gap} ms");
    assert!(hold >= min_hold_ms, "scenario precondition: a stream holds fragments for {hold} ms (>= {min_hold_ms})");
    assert_eq!(exec_lines, markers, "every rendered exec line carries a marker; fragments: {fragments:?}");
    assert_eq!(markers, s.exec_total(), "one rendered line per logical exec line");
    assert_eq!(printed.len() as u64, size);
    assert!(printed == read_all(&merged), "tail's output is merged.log");
    check(&printed, &s, Expect::Complete);
}

// At 50,000 lines/s a stream's next chunk follows its mid-line chunk within a few tens
// of ms; the sessions are short (a stream rarely holds text for long).

#[test]
fn fixed4k_producer_followed_by_gnu_tail_shows_whole_lines() {
    require_mount!();
    block_buffered_producer_with_gnu_tail("fixed4k", 50_000, 50_000.0, 21, 0);
}

#[test]
fn random_chunk_producer_followed_by_gnu_tail_shows_whole_lines() {
    require_mount!();
    block_buffered_producer_with_gnu_tail("random", 50_000, 50_000.0, 22, 0);
}

// At 3,000 lines/s (seed 34, 1.7 s) the chunks of a stream still follow within ~110 ms
// of each other, but a busy stream holds some fragment without interruption for ~460
// ms: each fragment must get its own 250 ms, not the stream's first.
#[test]
fn slow_fixed4k_producer_followed_by_gnu_tail_shows_whole_lines() {
    require_mount!();
    block_buffered_producer_with_gnu_tail("fixed4k", 5_000, 3_000.0, 34, 300);
}

// ---------------------------------------------------------------------------
// Control characters and blank lines

/// What a program wrote to take over a terminal reads as visible text in merged.log,
/// through `cat -v` too: only SGR colours stay escape sequences. Blank runtime and
/// kernel lines are lines.
#[test]
fn terminal_escapes_read_as_visible_text_and_blank_lines_stay() {
    let env = Env::new();
    let logs = env.logs_dir("esc");
    // A title, a clear screen, colours, an OSC 52 clipboard write, a carriage return
    // hiding text; then (base64) raw and UTF-8 C1 CSI, a private mode, DEL, NUL.
    append_exec(&logs, "stdout", 1, "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m \x1b]52;c;aGk=\x07 50%\r100%\n");
    let raw = b"\x9b2J \xc2\x9b2J \x1b[?1049h\x7f\x00 end\n";
    let entry = serde_json::json!({"t": "2026-04-30T21:00:00.000Z", "s": "stdout", "id": 1, "e": "b64",
        "d": base64::engine::general_purpose::STANDARD.encode(raw)});
    let mut exec = fs::OpenOptions::new().append(true).open(logs.join("exec.log")).unwrap();
    use std::io::Write;
    writeln!(exec, "{entry}").unwrap();
    exec.write_all(b"{\x1b]0;corrupt\x07 not json\n").unwrap();
    fs::write(
        logs.join("runtime.log"),
        b"2026-04-30T21:00:01.000Z \x1b[33m WARN\x1b[0m x: \x1b]0;rt\x07bell\x07 cr\rhidden\n\n2026-04-30T21:00:02.000Z\n",
    )
    .unwrap();
    fs::write(logs.join("kernel.log"), b"[    0.000000] Linux\n\n\x1b[1mbold\x1b[0m \x1b[2J\n[    0.100000] end\n")
        .unwrap();
    let _m = env.mount();
    let merged = env.merged("esc");
    wait_until(Duration::from_secs(10), "10 lines in merged.log", || {
        fs::read(&merged).is_ok_and(|b| b.iter().filter(|&&c| c == b'\n').count() == 10)
    });
    let bytes = read_all(&merged);
    let texts = |tag: &[u8]| -> Vec<String> {
        parse_lines(&bytes)
            .iter()
            .filter(|l| l.tag == tag)
            .map(|l| String::from_utf8_lossy(l.text).into_owned())
            .collect()
    };
    assert_eq!(
        texts(b"stdout[1]"),
        [
            "\\x1b]0;pwned\\x07\\x1b[2J\x1b[31mred\x1b[0m \\x1b]52;c;aGk=\\x07 50%\\x0d100%",
            "\\x9b2J \\u009b2J \\x1b[?1049h\\x7f\\x00 end",
        ]
    );
    assert_eq!(texts(b"msbfs").len(), 1);
    assert!(texts(b"msbfs")[0].ends_with(": {\\x1b]0;corrupt\\x07 not json"), "{:?}", texts(b"msbfs"));
    assert_eq!(texts(b"runtime"), ["WARN x: bell\\x07 cr\\x0dhidden", "", ""]);
    assert!(contains(&bytes, b"2026-04-30T21:00:02.000Z runtime \n"), "a runtime line of only a timestamp");
    assert_eq!(texts(b"kernel"), ["[    0.000000] Linux", "", "bold ", "[    0.100000] end"]);
    // Byte by byte: no control character but the line ends, every ESC an SGR colour.
    for (i, &b) in bytes.iter().enumerate() {
        assert!(b == b'\n' || (0x20..0x7f).contains(&b) || b == 0x1b, "byte {b:#04x} at {i}");
        if b == 0x1b {
            let sgr = [&b"\x1b[31m"[..], b"\x1b[0m"].iter().any(|s| bytes[i..].starts_with(s));
            assert!(sgr, "an ESC that is not SGR at {i}: {:?}", String::from_utf8_lossy(&bytes[i..i + 10]));
        }
    }
    // And as `cat -v` shows it: carets only for the colours' ESC, no M- (bytes >= 0x80).
    let out = Command::new("cat").arg("-v").arg(&merged).output().expect("cat -v");
    assert!(out.status.success());
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("^[[31mred^[[0m"), "{shown}");
    let rest = shown.replace("^[[31m", "").replace("^[[0m", "");
    assert!(!rest.contains('^') && !rest.contains("M-"), "cat -v shows a control character:\n{shown}");
}

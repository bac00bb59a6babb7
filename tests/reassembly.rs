//! Whole-line reassembly of exec streams, through the public library API with a real
//! logs directory and no FUSE.
//!
//! Per exec stream `(stdout|stderr|output, session id)` a chunk's trailing text without
//! `\n` is held and continued by the next chunk of the same stream; the line carries the
//! time of the chunk that began it and appears where it was completed. A held fragment
//! becomes a line of its own after 250 ms, at 64 KiB, when the sandbox stops, when more
//! than 1,024 streams hold text (oldest first), or when a checkpoint must be forced
//! (segment past 1 MiB). Checkpoints are placed only where nothing is held, so every
//! closed segment renders again byte for byte.
//!
//! Scenarios that must see no 250 ms flush poll without sleeping; if one fails after
//! more than [`QUICK`] passed between its polls (a flush may then legitimately have been
//! due on a slow machine), it is run again, at most three times.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use base64::Engine as _;
use msbfs::source::find_generation;
use msbfs::timeline::replay::replay_segment;
use msbfs::timeline::Timeline;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use support::{segment_starts, Harness};

// The contract (DESIGN §2.1 and the reassembly brief), spelled out rather than imported.
/// A held fragment waiting this long is rendered as a line of its own.
const FLUSH_AFTER: Duration = Duration::from_millis(250);
/// Longest rendered text; a fragment reaching it is rendered in pieces of this size.
const MAX_TEXT: usize = 64 << 10;
/// Most streams holding text at once.
const MAX_HELD: usize = 1024;
/// Segment length past which held fragments are flushed to place a checkpoint.
const FORCED_FLUSH_AT: usize = 1 << 20;
/// Wall time between the first and last poll of a scenario below which no 250 ms flush
/// can have been due.
const QUICK: Duration = Duration::from_millis(200);

/// Polls per random case, about (an unoptimized build polls about ten times slower).
const POLL_BUDGET: usize = if cfg!(debug_assertions) { 40 } else { 600 };
/// Lines per stream of a random case, at most (fewer in an unoptimized build, so that a
/// case still fits well within 250 ms).
const MAX_LINES: usize = if cfg!(debug_assertions) { 40 } else { 120 };

/// 2026-04-30T20:32:59.688Z
const T0: i64 = 1_777_581_179_688;

// The rendered timestamp form (unit-tested against literal strings in src/time.rs).
use msbfs::time::format_timestamp as fmt_ts;

// ---------------------------------------------------------------------------
// A sandbox logs directory, its ingest and what was rendered so far

thread_local! {
    /// Longest wall time between the first poll and any later poll of the running scenario.
    static SPAN: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Runs `f`; if it panics after polls more than [`QUICK`] apart, runs it again (three
/// attempts), since a 250 ms flush may then have been due.
fn quickly<T>(what: &str, f: impl Fn() -> T) -> T {
    let mut attempt = 1;
    loop {
        SPAN.set(Duration::ZERO);
        match catch_unwind(AssertUnwindSafe(&f)) {
            Ok(v) => return v,
            Err(e) => {
                let span = SPAN.get();
                if span < QUICK || attempt == 3 {
                    if span >= QUICK {
                        eprintln!("{what}: attempt {attempt} still slow ({span:?} between polls); giving up");
                    }
                    resume_unwind(e);
                }
                eprintln!(
                    "{what}: attempt {attempt} failed after {span:?} between polls (a flush may have been due); again"
                );
                attempt += 1;
            }
        }
    }
}

/// One rendered line of merged.log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rendered {
    /// Offset of the line in merged.log.
    off: usize,
    ts: String,
    tag: String,
    text: Vec<u8>,
}

impl Rendered {
    fn show(&self) -> String {
        format!("@{} {} {} {:?}", self.off, self.ts, self.tag, String::from_utf8_lossy(&self.text))
    }
}

fn parse(bytes: &[u8]) -> Vec<Rendered> {
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "merged.log ends in the middle of a line");
    let mut out = Vec::new();
    let mut off = 0;
    for l in bytes.split_inclusive(|&b| b == b'\n') {
        let l = &l[..l.len() - 1];
        let show = String::from_utf8_lossy(&l[..l.len().min(200)]).into_owned();
        assert!(l.len() >= 26 && l[24] == b' ', "malformed line @{off}: {show:?}");
        let ts = std::str::from_utf8(&l[..24]).expect("ascii timestamp").to_string();
        let rest = &l[25..];
        let sp =
            rest.iter().position(|&b| b == b' ').unwrap_or_else(|| panic!("no space after the tag @{off}: {show:?}"));
        let tag = String::from_utf8(rest[..sp].to_vec()).expect("ascii tag");
        out.push(Rendered { off, ts, tag, text: rest[sp + 1..].to_vec() });
        off += l.len() + 1;
    }
    out
}

fn exec_tag(stream: &str, id: u64) -> String {
    format!("{stream}[{id}]")
}

struct Sb {
    _tmp: tempfile::TempDir,
    logs: PathBuf,
    exec: File,
    h: Harness,
    tl: Arc<Timeline>,
    live: Vec<u8>,
    /// `t` of the next chunk (ms); every chunk gets its own.
    next_t: i64,
    first_poll: Option<Instant>,
}

impl Sb {
    fn new() -> Sb {
        let tmp = tempfile::Builder::new().prefix("msbfs-reassembly-").tempdir().unwrap();
        let logs = tmp.path().join("sandboxes/sb/logs");
        fs::create_dir_all(&logs).unwrap();
        let exec = OpenOptions::new().create(true).append(true).open(logs.join("exec.log")).unwrap();
        let mut h = Harness::new(&logs, 64 << 10);
        let tl = h.timeline();
        Sb { _tmp: tmp, logs, exec, h, tl, live: Vec::new(), next_t: T0, first_poll: None }
    }

    /// Appends one exec.log entry (one write, like the producer) with the next `t`;
    /// returns that `t`. Bodies that are not UTF-8 are written as base64.
    fn chunk(&mut self, stream: &str, id: Option<u64>, data: &[u8]) -> i64 {
        let t = self.next_t;
        self.next_t += 1;
        let mut v = serde_json::json!({"t": fmt_ts(t), "s": stream});
        match std::str::from_utf8(data) {
            Ok(s) => v["d"] = s.into(),
            Err(_) => {
                v["d"] = base64::engine::general_purpose::STANDARD.encode(data).into();
                v["e"] = "b64".into();
            }
        }
        if let Some(id) = id {
            v["id"] = id.into();
        }
        let mut line = serde_json::to_vec(&v).unwrap();
        line.push(b'\n');
        self.exec.write_all(&line).unwrap();
        t
    }

    /// Appends raw bytes to another log file of the sandbox.
    fn append(&self, file: &str, bytes: &[u8]) {
        OpenOptions::new().create(true).append(true).open(self.logs.join(file)).unwrap().write_all(bytes).unwrap();
    }

    /// Polls ingest and reads the new bytes (as a sequential reader would).
    fn poll(&mut self) -> Vec<u8> {
        let now = Instant::now();
        let first = *self.first_poll.get_or_insert(now);
        SPAN.set(SPAN.get().max(now - first));
        self.h.poll();
        self.read_new()
    }

    fn read_new(&mut self) -> Vec<u8> {
        let size = self.tl.size();
        let from = self.live.len() as u64;
        let mut new = Vec::new();
        while from + (new.len() as u64) < size {
            let part = self.tl.read(from + new.len() as u64, 1 << 20).expect("stored bytes are readable");
            assert!(!part.is_empty(), "read returned nothing inside the file");
            new.extend_from_slice(&part);
        }
        self.live.extend_from_slice(&new);
        new
    }

    fn lines(&self) -> Vec<Rendered> {
        parse(&self.live)
    }

    /// Rendered lines of one tag.
    fn lines_of(&self, tag: &str) -> Vec<Rendered> {
        self.lines().into_iter().filter(|l| l.tag == tag).collect()
    }

    /// Every closed segment renders again to exactly the live bytes, every checkpoint
    /// sits at a line boundary, and reads at pseudo-random offsets with fresh memos
    /// equal the live bytes. Returns the number of closed segments.
    fn verify_segments(&self, seed: u64) -> usize {
        let cps = segment_starts(&self.tl);
        assert_eq!(cps[0], 0);
        assert_eq!(self.tl.size(), self.live.len() as u64);
        for k in 0..cps.len() - 1 {
            let (a, b) = (cps[k] as usize, cps[k + 1] as usize);
            assert!(a < b && b <= self.live.len(), "checkpoints {a}, {b} within {}", self.live.len());
            assert_eq!(self.live[b - 1], b'\n', "checkpoint {b} is not at a line boundary");
            let store = self.tl.store();
            let seg = store.retained_segments()[k];
            let resolve = |kind, rec: &_| find_generation(kind, &self.logs, rec);
            let again = replay_segment(store, &seg, &resolve)
                .unwrap_or_else(|e| panic!("segment {k} [{a}, {b}) cannot be rendered again: {e}"));
            if again != self.live[a..b] {
                let first =
                    again.iter().zip(&self.live[a..b]).position(|(x, y)| x != y).unwrap_or(again.len().min(b - a));
                panic!(
                    "segment {k} [{a}, {b}) rendered again differs at +{first} (lengths {} vs {}): {:?} vs {:?}",
                    again.len(),
                    b - a,
                    String::from_utf8_lossy(&again[first.saturating_sub(40)..(first + 80).min(again.len())]),
                    String::from_utf8_lossy(&self.live[a + first.saturating_sub(40)..(a + first + 80).min(b)]),
                );
            }
        }
        if !self.live.is_empty() {
            let mut rng = Lcg(seed ^ 0x5eed);
            for _ in 0..24 {
                let off = rng.below(self.live.len() as u64) as usize;
                let limit = if rng.below(2) == 0 { 300 } else { 200_000 };
                let max = 1 + rng.below(limit) as usize;
                let got = self.tl.read(off as u64, max).expect("stored bytes are readable");
                let want = &self.live[off..(off + max).min(self.live.len())];
                assert!(got == want, "read({off}, {max}) with a fresh memo differs from the live bytes");
            }
        }
        cps.len() - 1
    }
}

/// A tiny deterministic generator for interleaving decisions.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------
// 1. Property: random lines, cut anywhere, interleaved, polled at random

const STREAMS: [&str; 3] = ["stdout", "stderr", "output"];

/// One logical line: its text and whether it ends with `\r\n`.
#[derive(Debug, Clone)]
struct Line {
    text: String,
    crlf: bool,
}

#[derive(Debug, Clone)]
struct StreamCase {
    lines: Vec<Line>,
    /// Chunk sizes, used cyclically.
    cuts: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Case {
    /// Stream `i` is `STREAMS[i % 3]` of session `i / 3 + 1`.
    streams: Vec<StreamCase>,
    seed: u64,
}

fn line() -> impl Strategy<Value = Line> {
    let ch = prop_oneof![
        24 => (0x20u8..0x7f).prop_map(char::from),
        1 => Just('\r'),
        1 => Just('\t'),
        3 => prop::sample::select(vec!['é', 'ß', '日', '本', '€', '😀', '"', '\\', '\u{7f}']),
    ];
    (prop::collection::vec(ch, 0..300), prop::bool::weighted(0.2)).prop_map(|(chars, crlf)| {
        let mut text: String = chars.into_iter().collect();
        while text.len() > 300 {
            text.pop();
        }
        Line { text, crlf }
    })
}

fn case() -> impl Strategy<Value = Case> {
    let cut = prop_oneof![4 => 1usize..16, 3 => 1usize..400, 2 => 1usize..8192];
    let stream = (prop::collection::vec(line(), 0..MAX_LINES), prop::collection::vec(cut, 1..24))
        .prop_map(|(lines, cuts)| StreamCase { lines, cuts });
    (prop::collection::vec(stream, 1..=12), any::<u64>()).prop_map(|(streams, seed)| Case { streams, seed })
}

/// The rendered text of a line: without its `\n` and without one trailing `\r`, and
/// with the control characters the lines hold shown escaped (`\r` as `\x0d`, DEL as
/// `\x7f`; tab stays).
fn rendered_text(l: &Line) -> Vec<u8> {
    let mut t = l.text.as_bytes().to_vec();
    if l.crlf {
        t.push(b'\r');
    }
    if t.last() == Some(&b'\r') {
        t.pop();
    }
    let mut shown = Vec::with_capacity(t.len());
    for b in t {
        match b {
            b'\r' => shown.extend_from_slice(b"\\x0d"),
            0x7f => shown.extend_from_slice(b"\\x7f"),
            b => shown.push(b),
        }
    }
    shown
}

/// Writes the case and checks it; returns the number of closed segments.
fn run_case(c: &Case) -> usize {
    let mut sb = Sb::new();
    // Per stream: its bytes, where each line starts, and the chunk ranges.
    struct S {
        tag: String,
        stream: &'static str,
        id: u64,
        bytes: Vec<u8>,
        starts: Vec<usize>,
        texts: Vec<Vec<u8>>,
        chunks: Vec<(usize, usize)>,
        next_chunk: usize,
        /// Global index of each written chunk.
        chunk_index: Vec<usize>,
    }
    let mut streams: Vec<S> = c
        .streams
        .iter()
        .enumerate()
        .map(|(i, sc)| {
            let (stream, id) = (STREAMS[i % 3], i as u64 / 3 + 1);
            let mut bytes = Vec::new();
            let mut starts = Vec::new();
            for l in &sc.lines {
                starts.push(bytes.len());
                bytes.extend_from_slice(l.text.as_bytes());
                bytes.extend_from_slice(if l.crlf { b"\r\n" } else { b"\n" });
            }
            let mut chunks = Vec::new();
            let mut at = 0;
            for &n in sc.cuts.iter().cycle() {
                if at >= bytes.len() {
                    break;
                }
                let end = (at + n).min(bytes.len());
                chunks.push((at, end));
                at = end;
            }
            S {
                tag: exec_tag(stream, id),
                stream,
                id,
                texts: sc.lines.iter().map(rendered_text).collect(),
                bytes,
                starts,
                chunks,
                next_chunk: 0,
                chunk_index: Vec::new(),
            }
        })
        .collect();

    // Interleave: each step writes the next chunk of a random unfinished stream (now
    // and then a `system` entry instead), then maybe polls.
    let mut rng = Lcg(c.seed);
    // Poll after about 3 writes in 8, but at most about POLL_BUDGET times per case (a poll
    // of an unoptimized build is slow, and all polls must fit well within 250 ms).
    let chunks: usize = streams.iter().map(|s| s.chunks.len()).sum();
    let poll_per_2_20 = ((POLL_BUDGET << 20) / chunks.max(1)).min(3 << 17) as u64;
    let mut written = 0usize; // chunks written so far (global index of the next)
    let mut system: Vec<(usize, String)> = Vec::new();
    loop {
        let open: Vec<usize> =
            (0..streams.len()).filter(|&i| streams[i].next_chunk < streams[i].chunks.len()).collect();
        if open.is_empty() {
            break;
        }
        if rng.below(30) == 0 {
            let text = format!("--- marker {} ---", system.len());
            sb.chunk("system", None, format!("{text}\n").as_bytes());
            system.push((written, text));
        } else {
            let i = open[rng.below(open.len() as u64) as usize];
            let s = &mut streams[i];
            let (a, b) = s.chunks[s.next_chunk];
            sb.chunk(s.stream, Some(s.id), &s.bytes[a..b]);
            s.chunk_index.push(written);
            s.next_chunk += 1;
        }
        written += 1;
        if rng.below(1 << 20) < poll_per_2_20 {
            sb.poll();
            if rng.below(3) == 0 {
                sb.poll();
            }
        }
    }
    sb.poll();
    sb.poll();

    // The expected bytes: chunk by chunk, the lines each chunk completes, stamped with
    // the time of the chunk that began them.
    let chunk_of = |s: &S, byte: usize| s.chunks.partition_point(|&(_, end)| end <= byte);
    let mut completed: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new(); // global chunk -> (stream, line)
    let mut begun: Vec<Vec<usize>> = Vec::new(); // per stream, per line: global chunk that began it
    for (i, s) in streams.iter().enumerate() {
        let mut b = Vec::new();
        for (j, &start) in s.starts.iter().enumerate() {
            let end = s.starts.get(j + 1).copied().unwrap_or(s.bytes.len()) - 1;
            assert_eq!(s.bytes[end], b'\n');
            b.push(s.chunk_index[chunk_of(s, start)]);
            completed.entry(s.chunk_index[chunk_of(s, end)]).or_default().push((i, j));
        }
        begun.push(b);
    }
    let mut want = Vec::new();
    let mut sys = system.iter().peekable();
    for g in 0..written {
        if let Some((_, text)) = sys.next_if(|(at, _)| *at == g) {
            want.extend_from_slice(format!("{} system {text}\n", fmt_ts(T0 + g as i64)).as_bytes());
        }
        for &(i, j) in completed.get(&g).map_or(&[][..], |v| v.as_slice()) {
            let s = &streams[i];
            want.extend_from_slice(format!("{} {} ", fmt_ts(T0 + begun[i][j] as i64), s.tag).as_bytes());
            want.extend_from_slice(&s.texts[j]);
            want.push(b'\n');
        }
    }

    // Per stream first (the clearest message), then the whole file.
    let got = sb.lines();
    for (i, s) in streams.iter().enumerate() {
        let mine: Vec<&Rendered> = got.iter().filter(|l| l.tag == s.tag).collect();
        let texts: Vec<&[u8]> = mine.iter().map(|l| l.text.as_slice()).collect();
        let expect: Vec<&[u8]> = s.texts.iter().map(|t| t.as_slice()).collect();
        if texts != expect {
            let k = texts.iter().zip(&expect).position(|(a, b)| a != b).unwrap_or(texts.len().min(expect.len()));
            panic!(
                "{}: {} rendered lines, {} written; first difference at line {k}: got {:?}, want {:?}",
                s.tag,
                texts.len(),
                expect.len(),
                mine.get(k).map(|l| l.show()),
                expect.get(k).map(|t| String::from_utf8_lossy(t).into_owned()),
            );
        }
        for (j, l) in mine.iter().enumerate() {
            assert_eq!(
                l.ts,
                fmt_ts(T0 + begun[i][j] as i64),
                "{}: line {j} carries the time of its first chunk",
                l.show()
            );
        }
    }
    let sys_got: Vec<String> =
        got.iter().filter(|l| l.tag == "system").map(|l| String::from_utf8_lossy(&l.text).into_owned()).collect();
    assert_eq!(sys_got, system.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(), "system lines pass through");
    if sb.live != want {
        let (g, w) = (parse(&sb.live), parse(&want));
        let k = g.iter().zip(&w).position(|(a, b)| a != b).unwrap_or(g.len().min(w.len()));
        panic!("merged order: line {k} is {:?}, want {:?}", g.get(k).map(|l| l.show()), w.get(k).map(|l| l.show()));
    }
    sb.verify_segments(c.seed)
}

#[test]
fn random_chunking_reassembles_every_line_once() {
    let mut runner = TestRunner::new(Config {
        cases: 96,
        rng_seed: RngSeed::Fixed(0x7265_6173_736d),
        failure_persistence: None,
        ..Config::default()
    });
    let segments = Cell::new(0usize);
    let with_segments = Cell::new(0usize);
    let slowest = Cell::new(Duration::ZERO);
    runner
        .run(&case(), |c| {
            let n = quickly("random case", || run_case(&c));
            slowest.set(slowest.get().max(SPAN.get()));
            segments.set(segments.get() + n);
            with_segments.set(with_segments.get() + usize::from(n > 0));
            Ok::<(), TestCaseError>(())
        })
        .unwrap();
    eprintln!(
        "{} closed segments verified in {} cases; slowest case {:?} between its polls",
        segments.get(),
        with_segments.get(),
        slowest.get()
    );
    if !cfg!(debug_assertions) {
        assert!(with_segments.get() >= 20, "too few cases placed a checkpoint: {}", with_segments.get());
    }
}

// ---------------------------------------------------------------------------
// 2. A fragment left waiting 250 ms becomes a line of its own

#[test]
fn fragment_is_flushed_after_250ms_and_the_answer_starts_a_new_line() {
    let mut sb = Sb::new();
    sb.chunk("stdout", Some(5), b"Enter your name\n");
    let t = sb.chunk("stdout", Some(5), b"Password: ");
    assert_eq!(fmt_ts(t), "2026-04-30T20:32:59.689Z");
    sb.poll();
    assert_eq!(sb.lines_of("stdout[5]").len(), 1);
    sb.poll();
    assert!(
        !contains(&sb.live, b"Password"),
        "a fragment is held, not rendered: {:?}",
        String::from_utf8_lossy(&sb.live)
    );

    std::thread::sleep(FLUSH_AFTER + Duration::from_millis(50));
    sb.poll();
    let lines = sb.lines_of("stdout[5]");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1].text, b"Password: ", "the fragment as a line of its own, byte for byte");
    assert_eq!(lines[1].ts, "2026-04-30T20:32:59.689Z", "the time of its chunk");
    assert!(sb.live.ends_with(b"2026-04-30T20:32:59.689Z stdout[5] Password: \n"));

    let t2 = sb.chunk("stdout", Some(5), b"secret\n");
    sb.poll();
    let lines = sb.lines_of("stdout[5]");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!((lines[2].ts.clone(), lines[2].text.clone()), (fmt_ts(t2), b"secret".to_vec()), "a new line");

    // The flush is a recorded decision: a segment holding it renders again identically.
    let filler = format!("{}\n", "f".repeat(200)).repeat(40);
    for _ in 0..10 {
        sb.chunk("stderr", Some(5), filler.as_bytes());
    }
    sb.poll();
    assert!(sb.verify_segments(2) >= 1, "a checkpoint after the flushed fragment");
}

/// The 250 ms are counted per fragment: a fragment begun by the chunk that completed the
/// stream's previous fragment waits its own 250 ms.
#[test]
fn each_fragment_waits_its_own_250ms() {
    for attempt in 1..=3 {
        let mut sb = Sb::new();
        sb.chunk("stdout", Some(6), b"first ");
        sb.poll();
        std::thread::sleep(Duration::from_millis(180));
        let t_second = sb.chunk("stdout", Some(6), b"line\nsecond ");
        let start2 = Instant::now();
        sb.poll();
        assert_eq!(line_texts(&sb, "stdout[6]"), ["first line"]);
        std::thread::sleep(Duration::from_millis(120));
        sb.poll();
        // `second ` was first seen during the second poll: it has waited at most this long.
        let waited = start2.elapsed();
        if waited >= FLUSH_AFTER - Duration::from_millis(10) {
            eprintln!("attempt {attempt}: too slow ({waited:?}), again");
            continue;
        }
        assert_eq!(
            line_texts(&sb, "stdout[6]"),
            ["first line"],
            "`second ` was flushed after waiting at most {waited:?} (< 250 ms): its clock is the previous fragment's"
        );
        std::thread::sleep(FLUSH_AFTER + Duration::from_millis(50));
        sb.poll();
        let lines = sb.lines_of("stdout[6]");
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[1].text.as_slice(), lines[1].ts.clone()), (&b"second "[..], fmt_ts(t_second)));
        return;
    }
    panic!("three attempts too slow to tell");
}

// ---------------------------------------------------------------------------
// 3. Streams are independent

#[test]
fn streams_are_independent() {
    quickly("independent streams", || {
        let mut sb = Sb::new();
        let t_held = sb.chunk("stdout", Some(7), b"partial ");
        sb.poll();
        assert!(sb.live.is_empty());
        let t_err = sb.chunk("stderr", Some(7), b"err line\n");
        let t_other = sb.chunk("stdout", Some(8), b"other line\n");
        let t_out = sb.chunk("output", Some(7), b"pty line\n");
        sb.poll();
        let lines = sb.lines();
        let seen: Vec<(&str, &[u8], &str)> =
            lines.iter().map(|l| (l.tag.as_str(), l.text.as_slice(), l.ts.as_str())).collect();
        assert_eq!(
            seen,
            [
                ("stderr[7]", &b"err line"[..], fmt_ts(t_err).as_str()),
                ("stdout[8]", &b"other line"[..], fmt_ts(t_other).as_str()),
                ("output[7]", &b"pty line"[..], fmt_ts(t_out).as_str()),
            ],
            "other streams' lines appear at once, the held one does not"
        );

        // Two streams holding at once complete independently.
        let t8 = sb.chunk("stdout", Some(8), b"eight ");
        sb.chunk("stdout", Some(7), b"rest\n");
        sb.poll();
        let last = sb.lines().pop().unwrap();
        assert_eq!((last.tag.as_str(), last.text.as_slice()), ("stdout[7]", &b"partial rest"[..]));
        assert_eq!(last.ts, fmt_ts(t_held), "the time of the chunk that began it");
        sb.chunk("stdout", Some(8), b"done\n");
        sb.poll();
        let last = sb.lines().pop().unwrap();
        assert_eq!(
            (last.tag.as_str(), last.text.as_slice(), last.ts.clone()),
            ("stdout[8]", &b"eight done"[..], fmt_ts(t8))
        );
        assert_eq!(sb.lines().len(), 5);
        sb.verify_segments(3);
    })
}

// ---------------------------------------------------------------------------
// 4. Fragments reaching 64 KiB

/// Byte `i` of the long line.
fn long_byte(i: usize) -> u8 {
    b'a' + (i % 23) as u8
}

/// Writes a `total`-byte line without newline in `chunk`-byte chunks, polling after
/// each; checks that every 64 KiB piece appears as soon as it is complete and that at
/// most 64 KiB + one chunk is ever held. Returns the chunk times.
fn long_line(sb: &mut Sb, total: usize, chunk: usize) -> Vec<i64> {
    let text: Vec<u8> = (0..total).map(long_byte).collect();
    let mut ts = Vec::new();
    let (mut lines, mut rendered) = (0, 0);
    for (k, piece) in text.chunks(chunk).enumerate() {
        ts.push(sb.chunk("stdout", Some(1), piece));
        for l in parse(&sb.poll()) {
            assert_eq!(l.tag, "stdout[1]");
            lines += 1;
            rendered += l.text.len();
        }
        let written = (k * chunk + piece.len()).min(total);
        // A complete 64 KiB piece is rendered as soon as more of the line arrives; the
        // last piece (up to 64 KiB) stays held until the line ends or continues.
        assert_eq!(lines, (written.max(1) - 1) / MAX_TEXT, "after {written} bytes: one line per 64 KiB piece");
        assert!(written - rendered <= MAX_TEXT, "held {} bytes after {written}", written - rendered);
    }
    let lines = sb.lines_of("stdout[1]");
    for (p, l) in lines.iter().enumerate() {
        assert_eq!(l.text.len(), MAX_TEXT, "piece {p}");
        assert!(l.text == text[p * MAX_TEXT..(p + 1) * MAX_TEXT], "piece {p} content");
        // The piece carries the time of the chunk that began the line or of the one
        // holding its first byte.
        let first_chunk = p * MAX_TEXT / chunk;
        assert!(l.ts == fmt_ts(ts[0]) || l.ts == fmt_ts(ts[first_chunk]), "piece {p}: {}", l.ts);
    }
    ts
}

#[test]
fn megabyte_line_in_4k_chunks_renders_as_16_pieces_progressively() {
    quickly("1 MiB line", || {
        let mut sb = Sb::new();
        long_line(&mut sb, 1 << 20, 4096);
        // The last 64 KiB piece waits for more of the line, then is flushed by time.
        assert_eq!(sb.lines().len(), 15);
        std::thread::sleep(std::time::Duration::from_millis(300));
        sb.poll();
        let lines = sb.lines();
        assert_eq!(lines.len(), 16);
        assert!(lines.iter().all(|l| l.tag == "stdout[1]" && l.text.len() == MAX_TEXT));
        sb.verify_segments(4);
    })
}

#[test]
fn long_line_in_unaligned_chunks_keeps_its_remainder() {
    quickly("unaligned long line", || {
        let mut sb = Sb::new();
        let total = 3 * MAX_TEXT + 1234;
        long_line(&mut sb, total, 5000);
        sb.chunk("stdout", Some(1), b"\n");
        sb.poll();
        let lines = sb.lines_of("stdout[1]");
        assert_eq!(lines.len(), 4);
        let tail: Vec<u8> = (3 * MAX_TEXT..total).map(long_byte).collect();
        assert!(lines[3].text == tail, "the remainder is completed by the newline");
        sb.verify_segments(5);
    })
}

/// A line of exactly k × 64 KiB followed by its `\n` in a later chunk is k lines; the
/// newline must not add an empty one.
#[test]
fn newline_after_exact_multiple_of_64k_adds_no_empty_line() {
    quickly("newline after k x 64 KiB", || {
        let mut sb = Sb::new();
        long_line(&mut sb, 1 << 20, 4096);
        sb.chunk("stdout", Some(1), b"\n");
        sb.poll();
        let lines = sb.lines_of("stdout[1]");
        let empty: Vec<String> = lines.iter().filter(|l| l.text.is_empty()).map(Rendered::show).collect();
        assert_eq!(lines.len(), 16, "the final newline added a line: {empty:?}");

        // The same with one 64 KiB chunk, then the newline with the next line.
        let mut sb = Sb::new();
        sb.chunk("stderr", Some(2), &vec![b'y'; MAX_TEXT]);
        sb.poll();
        sb.chunk("stderr", Some(2), b"\nnext\n");
        sb.poll();
        let texts: Vec<usize> = sb.lines_of("stderr[2]").iter().map(|l| l.text.len()).collect();
        assert_eq!(texts, [MAX_TEXT, 4], "64 KiB line, then `next`");
    })
}

// ---------------------------------------------------------------------------
// 5. At most 1,024 streams hold text; the oldest fragment goes first

#[test]
fn beyond_1024_held_streams_the_oldest_is_flushed_first() {
    quickly("1024 streams", || {
        let mut sb = Sb::new();
        let mut t = BTreeMap::new();
        for id in 1..=MAX_HELD as u64 {
            t.insert(id, sb.chunk("stdout", Some(id), format!("frag-{id}").as_bytes()));
            if id % 256 == 0 {
                sb.poll();
            }
        }
        sb.poll();
        assert!(sb.live.is_empty(), "1,024 held fragments: nothing rendered yet");

        let flushed = |sb: &Sb| -> Vec<(String, String, String)> {
            sb.lines()
                .iter()
                .map(|l| (l.tag.clone(), String::from_utf8_lossy(&l.text).into_owned(), l.ts.clone()))
                .collect()
        };
        let line = |id: u64, text: &str, ts: i64| (format!("stdout[{id}]"), text.to_string(), fmt_ts(ts));

        t.insert(1025, sb.chunk("stdout", Some(1025), b"frag-1025"));
        sb.poll();
        assert_eq!(flushed(&sb), [line(1, "frag-1", t[&1])], "the 1,025th stream flushes the oldest");
        t.insert(1026, sb.chunk("stdout", Some(1026), b"frag-1026"));
        sb.poll();
        assert_eq!(flushed(&sb), [line(1, "frag-1", t[&1]), line(2, "frag-2", t[&2])]);

        // Growing a held fragment does not make it younger, and adds no stream.
        sb.chunk("stdout", Some(3), b"-more");
        sb.poll();
        assert_eq!(flushed(&sb).len(), 2);
        t.insert(1027, sb.chunk("stdout", Some(1027), b"frag-1027"));
        sb.poll();
        assert_eq!(flushed(&sb)[2], line(3, "frag-3-more", t[&3]));

        // A flushed stream starts a new line; a held one is still continued.
        let t_tail = sb.chunk("stdout", Some(1), b"tail-1\n");
        sb.chunk("stdout", Some(4), b"-end\n");
        sb.poll();
        assert_eq!(flushed(&sb)[3..], [line(1, "tail-1", t_tail), line(4, "frag-4-end", t[&4])]);

        // The sandbox stops: every held fragment, oldest first.
        sb.h.ingest().finish(false);
        sb.read_new();
        let rest = flushed(&sb)[5..].to_vec();
        let want: Vec<_> = (5..=1027u64).map(|id| line(id, &format!("frag-{id}"), t[&id])).collect();
        assert_eq!(rest.len(), want.len());
        assert!(rest == want, "flushed at stop, oldest first");
        assert!(sb.tl.is_closed());
        sb.verify_segments(6);
    })
}

// ---------------------------------------------------------------------------
// 6. Other sources pass through; checkpoints only where nothing is held

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn line_texts(sb: &Sb, tag: &str) -> Vec<String> {
    sb.lines_of(tag).iter().map(|l| String::from_utf8_lossy(&l.text).into_owned()).collect()
}

#[test]
fn other_sources_pass_through_and_a_checkpoint_forces_a_flush() {
    // Timing-independent: the 250 ms clock of a fragment starts at the first poll that
    // holds it and is consulted only after a poll has taken every record, so the forced
    // flush inside the second poll always comes first.
    {
        let mut sb = Sb::new();
        let t_hold = sb.chunk("stdout", Some(1), b"held fragment ");
        // system, runtime, kernel and other exec lines pass through unchanged while held.
        sb.chunk("system", None, b"--- sandbox started ---\n");
        sb.chunk("system", None, b"--- exec session 1 started ---");
        sb.append("runtime.log", format!("{}  INFO microsandbox_runtime::vm: booting\n", fmt_ts(T0 + 10)).as_bytes());
        sb.append("runtime.log", b"    at frame 0 continuation\n");
        sb.append("kernel.log", b"[    0.000000] Linux version 6.1.0\n[    0.004000] Command line: console=hvc0\n");
        sb.chunk("stderr", Some(1), b"a complete stderr line\n");
        sb.poll();
        assert_eq!(line_texts(&sb, "system"), ["--- sandbox started ---", "--- exec session 1 started ---"]);
        assert_eq!(
            line_texts(&sb, "runtime"),
            ["INFO microsandbox_runtime::vm: booting", "    at frame 0 continuation"]
        );
        assert_eq!(sb.lines_of("runtime")[0].ts, fmt_ts(T0 + 10));
        assert_eq!(
            line_texts(&sb, "kernel"),
            ["[    0.000000] Linux version 6.1.0", "[    0.004000] Command line: console=hvc0"]
        );
        assert_eq!(line_texts(&sb, "stderr[1]"), ["a complete stderr line"]);
        assert!(!contains(&sb.live, b"held fragment"), "the fragment is still held");
        assert_eq!(sb.lines().len(), 7);

        // Over 1 MiB of complete lines of another stream while stdout[1] holds.
        let payload = "p".repeat(200);
        let mut n = 0;
        while n < 5200 {
            let mut chunk = String::new();
            for _ in 0..8 {
                chunk.push_str(&format!("big {n:06} {payload}\n"));
                n += 1;
            }
            sb.chunk("stdout", Some(2), chunk.as_bytes());
        }
        sb.poll();
        assert!(sb.live.len() > FORCED_FLUSH_AT + 2 * MAX_TEXT, "{} bytes", sb.live.len());
        let held: Vec<Rendered> = sb.lines_of("stdout[1]");
        assert_eq!(
            held.len(),
            1,
            "the fragment was flushed once: {:?}",
            held.iter().map(Rendered::show).collect::<Vec<_>>()
        );
        assert_eq!((held[0].text.as_slice(), held[0].ts.clone()), (&b"held fragment "[..], fmt_ts(t_hold)));
        let end = held[0].off + sb.live[held[0].off..].iter().position(|&b| b == b'\n').unwrap() + 1;
        assert!(
            (FORCED_FLUSH_AT..FORCED_FLUSH_AT + 4096).contains(&held[0].off),
            "flushed by the checkpoint past 1 MiB (not by time): at {}",
            held[0].off
        );
        let cps = segment_starts(&sb.tl);
        assert_eq!(
            cps.get(1),
            Some(&(end as u64)),
            "no checkpoint while held; the first right after the flush: {cps:?}"
        );
        assert!(cps.len() >= 4, "checkpoints resume after the flush: {cps:?}");
        let big = line_texts(&sb, "stdout[2]");
        assert_eq!(big.len(), 5200);
        assert!(big.iter().enumerate().all(|(i, t)| *t == format!("big {i:06} {payload}")));

        // The stream continues with a new line.
        let t_end = sb.chunk("stdout", Some(1), b"next\n");
        sb.poll();
        let l = sb.lines_of("stdout[1]");
        assert_eq!((l.len(), l[1].text.as_slice(), l[1].ts.clone()), (2, &b"next"[..], fmt_ts(t_end)));
        sb.verify_segments(7);
    }
}

#[test]
fn blank_runtime_and_kernel_lines_are_rendered_as_lines() {
    // One rendered line per source line: a blank line is a line with empty text (the
    // space after the tag stays), with the time rules of any line without a stamp.
    let mut sb = Sb::new();
    sb.append("kernel.log", b"[    0.000000] Linux version 6.1.0\n\n\r\n[    0.004000] Command line\n\n");
    let ts = fmt_ts(T0 + 10);
    sb.append("runtime.log", format!("{ts}  INFO booting\n\n{ts}\n\x1b[0m\n").as_bytes());
    sb.poll();
    assert_eq!(
        line_texts(&sb, "kernel"),
        ["[    0.000000] Linux version 6.1.0", "", "", "[    0.004000] Command line", ""]
    );
    assert_eq!(line_texts(&sb, "runtime"), ["INFO booting", "", "", ""]);
    assert!(sb.lines_of("runtime").iter().all(|l| l.ts == ts), "blank lines take the previous line's time");
    assert!(contains(&sb.live, format!("{ts} runtime \n").as_bytes()));
    sb.verify_segments(8);
}

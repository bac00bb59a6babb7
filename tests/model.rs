//! Model and property tests of ingest, timeline and store through the public library
//! API, with a real logs directory and no FUSE:
//!
//! - a reference model driven by random write / rotate / truncate / delete / poll /
//!   stop (clean or killed) actions: every source line appears once, in order, and
//!   nothing goes missing unannounced (and nothing at all when the scenario loses no
//!   data); bytes already read never change across restarts; the stored bytes of
//!   every segment equal the renderer's replay from its checkpoint;
//! - rendering from every checkpoint equals the stored bytes on simulator runs;
//! - the history present at first sight is merged by `(timestamp, source)`.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

mod support;

use msbfs::simulate::{Chunking, SimConfig, Simulator};
use msbfs::source::generation::{birth_time_ms, FileIdentity};
use msbfs::source::SourceKind;
use msbfs::time::{format_timestamp, parse_rfc3339};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use support::{read_new, Harness};

const T0: i64 = 1_777_581_178_000;
/// Small segments, so short scenarios close many and replay checks them.
const SEGMENT: u64 = 2048;

fn config(cases: u32) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(0x006d_7362_6673), failure_persistence: None, ..Config::default() }
}

/// One rendered line: timestamp, tag, text.
#[derive(Debug, Clone)]
struct Rendered {
    ts: i64,
    tag: String,
    text: Vec<u8>,
}

fn parse_rendered(content: &[u8]) -> Vec<Rendered> {
    if content.is_empty() {
        return Vec::new();
    }
    assert_eq!(content.last(), Some(&b'\n'), "the file ends in the middle of a line");
    content[..content.len() - 1]
        .split(|b| *b == b'\n')
        .map(|l| {
            let shown = String::from_utf8_lossy(l);
            assert!(l.len() > 25 && l[24] == b' ', "malformed rendered line {shown:?}");
            let ts = parse_rfc3339(std::str::from_utf8(&l[..24]).unwrap()).expect("timestamp");
            assert_eq!(format_timestamp(ts).as_bytes(), &l[..24]);
            let rest = &l[25..];
            let sp = rest.iter().position(|b| *b == b' ').unwrap_or_else(|| panic!("no tag end in {shown:?}"));
            let tag = String::from_utf8(rest[..sp].to_vec()).unwrap();
            let ok = ["system", "runtime", "kernel", "msbfs"].contains(&tag.as_str())
                || ["stdout", "stderr", "output"].iter().any(|s| {
                    tag == *s
                        || tag
                            .strip_prefix(s)
                            .and_then(|t| t.strip_prefix('['))
                            .and_then(|t| t.strip_suffix(']'))
                            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
                });
            assert!(ok, "unknown tag in {shown:?}");
            Rendered { ts, tag, text: rest[sp + 1..].to_vec() }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The reference model

const EXEC: usize = 0;
const RUNTIME: usize = 1;
const KERNEL: usize = 2;
const FILE_NAMES: [&str; 3] = ["exec.log", "runtime.log", "kernel.log"];

#[derive(Debug, Clone)]
enum Action {
    Exec {
        entries: usize,
        len: usize,
        multi: bool,
        newline: bool,
    },
    Runtime {
        lines: usize,
        len: usize,
        cont: bool,
        partial: Option<usize>,
    },
    Kernel {
        lines: usize,
        len: usize,
        stamp: bool,
    },
    Rotate {
        exec: bool,
        delay: bool,
    },
    Truncate {
        exec: bool,
    },
    DeleteOldest,
    Poll,
    /// msbfs stops (cleanly, or killed); the next poll starts it again.
    Stop {
        clean: bool,
    },
}

fn action(lossy: bool) -> BoxedStrategy<Action> {
    // Every chunk ends with `\n`: how a chunk ending mid-line is shown is not fixed here.
    let exec = (1..5usize, 0..60usize, any::<bool>(), Just(true))
        .prop_map(|(entries, len, multi, newline)| Action::Exec { entries, len, multi, newline });
    let runtime = (1..5usize, 0..60usize, prop::bool::weighted(0.3), prop::option::weighted(0.4, 1..200usize))
        .prop_map(|(lines, len, cont, partial)| Action::Runtime { lines, len, cont, partial });
    let kernel = (1..5usize, 0..60usize, prop::bool::weighted(0.8)).prop_map(|(lines, len, stamp)| Action::Kernel {
        lines,
        len,
        stamp,
    });
    let rotate = (any::<bool>(), any::<bool>()).prop_map(|(exec, delay)| Action::Rotate { exec, delay });
    let stop = any::<bool>().prop_map(|clean| Action::Stop { clean });
    if lossy {
        prop_oneof![
            3 => exec,
            2 => runtime,
            2 => kernel,
            3 => rotate,
            1 => any::<bool>().prop_map(|exec| Action::Truncate { exec }),
            1 => Just(Action::DeleteOldest),
            3 => Just(Action::Poll),
            1 => stop,
        ]
        .boxed()
    } else {
        prop_oneof![3 => exec, 2 => runtime, 2 => kernel, 3 => rotate, 3 => Just(Action::Poll), 1 => stop].boxed()
    }
}

/// A physical file of the producer.
#[derive(Debug, Default)]
struct FileRec {
    /// Created since the last poll (msbfs has never seen it).
    fresh: bool,
    /// Created while msbfs watched (its creation was counted).
    watched: bool,
    /// Lines (indices into the source's list) written since the last poll.
    unpolled: Vec<usize>,
    len: u64,
}

/// One expected rendered line.
#[derive(Debug)]
struct Expected {
    /// `tag text`, unique thanks to the marker.
    key: Vec<u8>,
    /// Exact timestamp when the source carries one.
    ts: Option<i64>,
    /// False while a runtime line's tail is not written yet.
    complete: bool,
}

struct Model {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// Per source, chain index (0 = live) → file; kernel uses only index 0.
    chains: [Vec<Option<FileRec>>; 3],
    pending_create: [bool; 3],
    /// The rest of a runtime line whose head was written: (line index, bytes).
    partial: Option<(usize, Vec<u8>)>,
    rotations_since_poll: [u32; 3],
    lines: [Vec<Expected>; 3],
    excused: [HashSet<usize>; 3],
    clock: i64,
    marker: u64,
    h: Harness,
    content: Vec<u8>,
    lossy: bool,
    polls: usize,
    /// Generations destroyed before msbfs ever saw them, per source.
    unseen_destroyed: [u64; 3],
    /// Unread lines of deleted files msbfs still holds open (read at the next poll,
    /// lost if msbfs stops first).
    held_deleted: Vec<(usize, usize)>,
    /// msbfs is stopped.
    down: bool,
}

fn payload(seed: u64, len: usize) -> String {
    (0..len).map(|i| (b'a' + ((seed + i as u64 * 7) % 26) as u8) as char).collect()
}

impl Model {
    fn new(lossy: bool) -> Model {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs");
        fs::create_dir(&dir).unwrap();
        for name in FILE_NAMES {
            File::create(dir.join(name)).unwrap();
        }
        // Files born before msbfs starts exist before it: let the coarse clock that
        // birth times use tick past them, so none is counted as created later.
        std::thread::sleep(std::time::Duration::from_millis(10));
        let h = Harness::new(&dir, SEGMENT);
        let chain = || {
            let mut v: Vec<Option<FileRec>> = (0..5).map(|_| None).collect();
            v[0] = Some(FileRec { fresh: true, ..FileRec::default() });
            v
        };
        Model {
            _tmp: tmp,
            dir,
            chains: [chain(), chain(), chain()],
            pending_create: [false; 3],
            partial: None,
            rotations_since_poll: [0; 3],
            lines: Default::default(),
            excused: Default::default(),
            clock: T0,
            marker: 0,
            h,
            content: Vec::new(),
            lossy,
            polls: 0,
            unseen_destroyed: [0; 3],
            held_deleted: Vec::new(),
            down: false,
        }
    }

    fn path(&self, src: usize, index: usize) -> PathBuf {
        if index == 0 {
            self.dir.join(FILE_NAMES[src])
        } else {
            self.dir.join(format!("{}.{index}", FILE_NAMES[src]))
        }
    }

    fn tick(&mut self) -> (i64, u64) {
        self.clock += 7;
        self.marker += 1;
        (self.clock, self.marker)
    }

    fn create_live(&mut self, src: usize) {
        if self.pending_create[src] {
            self.pending_create[src] = false;
            OpenOptions::new().write(true).create_new(true).open(self.path(src, 0)).unwrap();
            let watched = !self.down;
            self.chains[src][0] = Some(FileRec { fresh: true, watched, ..FileRec::default() });
            if watched {
                self.h.created(SourceKind::ALL[src]);
            }
        }
    }

    /// Appends `bytes` to the live file of `src`, holding lines `idx`.
    fn write(&mut self, src: usize, bytes: &[u8], idx: &[usize]) {
        self.create_live(src);
        let mut f = OpenOptions::new().append(true).open(self.path(src, 0)).unwrap();
        f.write_all(bytes).unwrap();
        let rec = self.chains[src][0].as_mut().unwrap();
        rec.len += bytes.len() as u64;
        rec.unpolled.extend_from_slice(idx);
    }

    fn push_line(&mut self, src: usize, key: String, ts: Option<i64>) -> usize {
        self.lines[src].push(Expected { key: key.into_bytes(), ts, complete: true });
        self.lines[src].len() - 1
    }

    /// Forgets lines of a file destroyed or truncated before msbfs could read them
    /// (msbfs holds the files it saw until it has read them, unless it is stopped).
    fn lose(&mut self, src: usize, rec: &FileRec, destroyed: bool) {
        if !destroyed || rec.fresh || self.down {
            self.excused[src].extend(rec.unpolled.iter().copied());
        } else {
            self.held_deleted.extend(rec.unpolled.iter().map(|&i| (src, i)));
        }
        if destroyed && rec.fresh && rec.watched && !self.down {
            self.unseen_destroyed[src] += 1;
        }
    }

    fn finish_partial(&mut self) {
        if let Some((i, rest)) = self.partial.take() {
            self.write(RUNTIME, &rest, &[]);
            self.lines[RUNTIME][i].complete = true;
        }
    }

    fn apply(&mut self, a: &Action) {
        let mut pending_before = self.pending_create;
        match *a {
            Action::Exec { entries, len, multi, newline } => {
                for e in 0..entries {
                    let (ts, m) = self.tick();
                    let (stream, id) =
                        [("stdout", Some(1)), ("stderr", Some(2)), ("output", Some(3)), ("system", None)]
                            [(m % 4) as usize];
                    let count = if multi { 1 + (m % 3) as usize } else { 1 };
                    let mut d = String::new();
                    let mut idx = Vec::new();
                    for k in 0..count {
                        let text = format!("{stream} n={m:08}.{k} {}", payload(m + k as u64, (len + e * 13) % 70));
                        let tag = match id {
                            Some(id) => format!("{stream}[{id}]"),
                            None => stream.to_string(),
                        };
                        idx.push(self.push_line(EXEC, format!("{tag} {text}"), Some(ts)));
                        d.push_str(&text);
                        if k + 1 < count || newline {
                            d.push('\n');
                        }
                    }
                    let mut obj = serde_json::json!({"t": format_timestamp(ts), "s": stream, "d": d});
                    if let Some(id) = id {
                        obj["id"] = id.into();
                    }
                    let line = format!("{obj}\n");
                    self.write(EXEC, line.as_bytes(), &idx);
                }
            }
            Action::Runtime { lines, len, cont, partial } => {
                self.finish_partial();
                let mut text = Vec::new();
                let mut idx = Vec::new();
                let mut last_start = 0;
                for l in 0..lines {
                    let (ts, m) = self.tick();
                    last_start = text.len();
                    let body = format!("INFO msb::vm: runtime n={m:08} {}", payload(m, (len + l * 5) % 70));
                    text.extend_from_slice(format!("{}  {body}\n", format_timestamp(ts)).as_bytes());
                    idx.push(self.push_line(RUNTIME, format!("runtime {body}"), Some(ts)));
                    if cont && l % 2 == 0 {
                        let (_, m) = self.tick();
                        last_start = text.len();
                        let body = format!("    at frame runtime-cont n={m:08}");
                        text.extend_from_slice(format!("{body}\n").as_bytes());
                        idx.push(self.push_line(RUNTIME, format!("runtime {body}"), None));
                    }
                }
                match partial {
                    Some(cut) => {
                        // Write the last line only up to a cut inside it.
                        let last_len = text.len() - last_start;
                        let cut = last_start + 1 + cut % (last_len - 1);
                        let rest = text.split_off(cut);
                        let last = *idx.last().unwrap();
                        self.lines[RUNTIME][last].complete = false;
                        self.write(RUNTIME, &text, &idx);
                        self.partial = Some((last, rest));
                    }
                    None => self.write(RUNTIME, &text, &idx),
                }
            }
            Action::Kernel { lines, len, stamp } => {
                let mut text = String::new();
                let mut idx = Vec::new();
                for l in 0..lines {
                    let (ts, m) = self.tick();
                    let up = ts - T0;
                    let body = if stamp || l > 0 && l % 2 == 0 {
                        format!("[{:5}.{:06}] kernel n={m:08} {}", up / 1000, (up % 1000) * 1000, payload(m, len))
                    } else {
                        format!("kernel n={m:08} console: {}", payload(m, len))
                    };
                    text.push_str(&body);
                    text.push('\n');
                    idx.push(self.push_line(KERNEL, format!("kernel {body}"), None));
                }
                self.write(KERNEL, text.as_bytes(), &idx);
            }
            Action::Rotate { exec, delay } => {
                let src = if exec { EXEC } else { RUNTIME };
                let cap = if exec && self.lossy { 6 } else { 4 };
                self.create_live(src);
                let live_len = self.chains[src][0].as_ref().map_or(0, |r| r.len);
                if live_len > 0 && self.rotations_since_poll[src] < cap {
                    self.rotations_since_poll[src] += 1;
                    if let Some(old) = self.chains[src][4].take() {
                        self.lose(src, &old, true);
                    }
                    for n in (1..4).rev() {
                        if self.chains[src][n].is_some() {
                            fs::rename(self.path(src, n), self.path(src, n + 1)).unwrap();
                            self.chains[src][n + 1] = self.chains[src][n].take();
                        }
                    }
                    fs::rename(self.path(src, 0), self.path(src, 1)).unwrap();
                    self.chains[src][1] = self.chains[src][0].take();
                    self.pending_create[src] = true;
                    if !delay {
                        self.create_live(src);
                    }
                    // A delayed creation waits for the next action.
                    pending_before[src] = false;
                }
            }
            Action::Truncate { exec } => {
                let src = if exec { EXEC } else { KERNEL };
                self.create_live(src);
                OpenOptions::new().write(true).open(self.path(src, 0)).unwrap().set_len(0).unwrap();
                let rec = self.chains[src][0].as_mut().unwrap();
                rec.len = 0;
                let lost = std::mem::take(rec);
                let fresh = lost.fresh;
                self.lose(src, &lost, false);
                self.chains[src][0].as_mut().unwrap().fresh = fresh;
            }
            Action::DeleteOldest => {
                if let Some(n) = (1..5).rev().find(|&n| self.chains[EXEC][n].is_some()) {
                    fs::remove_file(self.path(EXEC, n)).unwrap();
                    let old = self.chains[EXEC][n].take().unwrap();
                    self.lose(EXEC, &old, true);
                }
            }
            Action::Poll => self.poll(),
            Action::Stop { clean } => {
                if !self.down {
                    self.h.stop(clean);
                    self.down = true;
                    for (src, i) in std::mem::take(&mut self.held_deleted) {
                        self.excused[src].insert(i);
                    }
                }
            }
        }
        for (src, pending) in pending_before.into_iter().enumerate() {
            if pending {
                self.create_live(src);
            }
        }
    }

    fn poll(&mut self) {
        if self.down {
            // Started again: every byte read before is still there, unchanged.
            self.down = false;
            let tl = self.h.timeline();
            assert_eq!(tl.size(), self.content.len() as u64, "size after a restart");
            assert!(read_new(&tl, 0) == self.content, "bytes changed across a restart");
        }
        let tl = self.h.timeline();
        let before = tl.size();
        self.h.poll();
        assert!(tl.size() >= before, "size shrank");
        assert_eq!(before, self.content.len() as u64);
        let new = read_new(&tl, before);
        self.content.extend_from_slice(&new);
        self.polls += 1;
        self.held_deleted.clear();
        for chain in &mut self.chains {
            for rec in chain.iter_mut().flatten() {
                rec.fresh = false;
                rec.unpolled.clear();
            }
        }
        self.rotations_since_poll = [0; 3];
        self.check();
    }

    fn check(&self) {
        let rendered = parse_rendered(&self.content);
        let index: Vec<HashMap<&[u8], usize>> =
            self.lines.iter().map(|ls| ls.iter().enumerate().map(|(i, e)| (e.key.as_slice(), i)).collect()).collect();
        // Per source: (position in the output, line index), and the positions of gap notices.
        let mut seen: [Vec<(usize, usize)>; 3] = Default::default();
        let mut gaps: [Vec<usize>; 3] = Default::default();
        let mut last_runtime_ts = None;
        for (at, r) in rendered.iter().enumerate() {
            if r.tag == "msbfs" {
                let text = String::from_utf8_lossy(&r.text);
                let src = FILE_NAMES
                    .iter()
                    .position(|n| {
                        text.ends_with(&format!(" bytes of {n} were lost before msbfs could read them"))
                            || text.ends_with(&format!(" of {n} were rotated away before msbfs could open them"))
                            || text == format!("{n}: bytes written while msbfs was not running were rotated away")
                    })
                    .unwrap_or_else(|| panic!("unexpected notice {text:?}"));
                gaps[src].push(at);
                continue;
            }
            let src = match r.tag.as_str() {
                "runtime" => RUNTIME,
                "kernel" => KERNEL,
                _ => EXEC,
            };
            let mut key = r.tag.as_bytes().to_vec();
            key.push(b' ');
            key.extend_from_slice(&r.text);
            let Some(&i) = index[src].get(key.as_slice()) else {
                panic!("line never written (or garbled): {:?}\n{}", String::from_utf8_lossy(&key), self.tail());
            };
            let e = &self.lines[src][i];
            assert!(e.complete, "an incomplete line was rendered: {:?}", String::from_utf8_lossy(&key));
            match e.ts {
                Some(ts) => assert_eq!(r.ts, ts, "timestamp of {:?}", String::from_utf8_lossy(&key)),
                None if src == RUNTIME => {
                    assert_eq!(Some(r.ts), last_runtime_ts, "continuation takes the previous runtime time")
                }
                None => {}
            }
            if src == RUNTIME {
                last_runtime_ts = Some(r.ts);
            }
            assert!(!self.excused[src].contains(&i), "model: an excused line was seen");
            seen[src].push((at, i));
        }
        for src in 0..3 {
            let s = &seen[src];
            for w in s.windows(2) {
                assert!(
                    w[0].1 < w[1].1,
                    "{}: line {} rendered after line {} (duplicate or out of order)\n{}",
                    FILE_NAMES[src],
                    w[1].1,
                    w[0].1,
                    self.tail()
                );
            }
            let seen_set: HashSet<usize> = s.iter().map(|x| x.1).collect();
            for (i, e) in self.lines[src].iter().enumerate() {
                if !e.complete || seen_set.contains(&i) || self.excused[src].contains(&i) {
                    continue;
                }
                // Missing without excuse: a gap notice must sit between its neighbours.
                let prev = s.iter().rev().find(|x| x.1 < i).map_or(0, |x| x.0);
                let next = s.iter().find(|x| x.1 > i).map_or(usize::MAX, |x| x.0);
                assert!(
                    gaps[src].iter().any(|&g| g >= prev && g <= next),
                    "{}: line {i} {:?} is missing and no gap was announced (polls: {})\n{}",
                    FILE_NAMES[src],
                    String::from_utf8_lossy(&e.key),
                    self.polls,
                    self.tail()
                );
            }
        }
    }

    fn tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.content);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn finish(&mut self) {
        self.finish_partial();
        for src in 0..3 {
            self.create_live(src);
        }
        self.poll();
        // Everything not excused was rendered.
        let total: usize = self.lines.iter().map(Vec::len).sum();
        let excused: usize = self.excused.iter().map(HashSet::len).sum();
        let rendered = parse_rendered(&self.content).iter().filter(|r| r.tag != "msbfs").count();
        assert_eq!(rendered, total - excused);
        // Every generation destroyed unseen was announced, with its exact count.
        let text = String::from_utf8_lossy(&self.content).into_owned();
        for src in [EXEC, RUNTIME] {
            let announced: u64 = text
                .lines()
                .filter_map(|l| {
                    l.strip_suffix(&format!(" of {} were rotated away before msbfs could open them", FILE_NAMES[src]))
                })
                .map(|l| l.rsplit(" at least ").next().unwrap().split(' ').next().unwrap().parse::<u64>().unwrap())
                .sum();
            assert_eq!(announced, self.unseen_destroyed[src], "{}: generations lost unseen", FILE_NAMES[src]);
        }
        // Offsets are stable: the whole file read again from 0 is what was served.
        let tl = self.h.timeline();
        let again = read_new(&tl, 0);
        assert!(again == self.content, "bytes changed when read again");
        // And every segment still renders the same from its checkpoint.
        self.h.verify_replay();
    }
}

fn run_model(actions: &[Action], lossy: bool) {
    let mut m = Model::new(lossy);
    for a in actions {
        m.apply(a);
    }
    m.finish();
    if !lossy {
        assert!(m.excused.iter().all(HashSet::is_empty), "model: a lossless scenario lost lines");
    }
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn model_with_truncation_and_deletion(actions in prop::collection::vec(action(true), 1..60)) {
        run_model(&actions, true);
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn model_without_data_loss_misses_nothing(actions in prop::collection::vec(action(false), 1..60)) {
        run_model(&actions, false);
    }
}

#[test]
fn model_regressions() {
    use Action::*;
    // Rotation with the live file missing during a poll, a runtime line split across the
    // rotation, and a copytruncate right after a poll.
    let script = [
        Runtime { lines: 2, len: 10, cont: true, partial: Some(15) },
        Exec { entries: 2, len: 5, multi: true, newline: true },
        Poll,
        Rotate { exec: false, delay: true },
        Poll,
        Runtime { lines: 1, len: 3, cont: false, partial: None },
        Rotate { exec: true, delay: false },
        Exec { entries: 3, len: 20, multi: false, newline: true },
        Kernel { lines: 3, len: 9, stamp: true },
        Poll,
        Truncate { exec: false },
        Kernel { lines: 2, len: 4, stamp: false },
        Poll,
    ];
    run_model(&script, true);
    // Five exec rotations and a delete between polls.
    let mut script = vec![Exec { entries: 1, len: 1, multi: false, newline: true }, Poll];
    for _ in 0..6 {
        script.push(Exec { entries: 2, len: 30, multi: false, newline: true });
        script.push(Rotate { exec: true, delay: false });
    }
    script.push(DeleteOldest);
    script.push(Poll);
    run_model(&script, true);
}

#[test]
fn model_truncate_then_rotate_between_polls() {
    use Action::*;
    // The shrunk counterexample of `model_with_truncation_and_deletion`: exec.log is
    // copytruncated and rewritten, then rotated, before msbfs looks again.
    let script = [
        Exec { entries: 1, len: 0, multi: false, newline: true },
        Poll,
        Truncate { exec: true },
        Exec { entries: 1, len: 0, multi: false, newline: true },
        Rotate { exec: true, delay: false },
    ];
    run_model(&script, true);
}

// ---------------------------------------------------------------------------
// Rendering from every checkpoint equals the live bytes

#[derive(Debug, Clone)]
struct SimCase {
    seed: u64,
    rotate_bytes: u64,
    chunking: Chunking,
    steps: u64,
}

fn sim_case() -> impl Strategy<Value = SimCase> {
    (
        any::<u64>(),
        8_200u64..80_000,
        prop_oneof![Just(Chunking::Lines), Just(Chunking::Fixed4k), Just(Chunking::Random)],
        2_000u64..4_000,
    )
        .prop_map(|(seed, rotate_bytes, chunking, steps)| SimCase { seed, rotate_bytes, chunking, steps })
}

/// Counts occurrences of each `prefix` + 8-digit number in `content`.
fn markers(content: &str, prefix: &str) -> HashMap<u64, usize> {
    let mut out = HashMap::new();
    for (at, _) in content.match_indices(prefix) {
        let digits = content.as_bytes().get(at + prefix.len()..at + prefix.len() + 8);
        if let Some(n) = digits.and_then(|d| std::str::from_utf8(d).ok()).and_then(|d| d.parse::<u64>().ok()) {
            *out.entry(n).or_insert(0) += 1;
        }
    }
    out
}

fn check_sim(case: &SimCase) {
    let home = tempfile::tempdir().unwrap();
    let mut cfg = SimConfig::new(home.path(), "sb");
    cfg.seed = case.seed;
    cfg.rotate_bytes = case.rotate_bytes;
    cfg.chunking = case.chunking;
    cfg.lines = case.steps;
    let mut sim = Simulator::new(cfg).unwrap();
    let logs = home.path().join("sandboxes/sb/logs");
    let mut h = Harness::new(&logs, SEGMENT);
    let tl = h.timeline();
    let mut live = Vec::new();
    let mut rng = case.seed | 1;
    let per_poll = (case.rotate_bytes / 400).max(2);
    let mut done = 0;
    while done < case.steps {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let n = 1 + (rng >> 33) % per_poll;
        for _ in 0..n.min(case.steps - done) {
            sim.step().unwrap();
        }
        done += n;
        h.poll();
        let new = read_new(&tl, live.len() as u64);
        live.extend_from_slice(&new);
    }
    sim.finish().unwrap();
    h.poll();
    let new = read_new(&tl, live.len() as u64);
    live.extend_from_slice(&new);
    assert_eq!(tl.size(), live.len() as u64);
    parse_rendered(&live);

    let segments = tl.store().retained_segments();
    if case.chunking == Chunking::Lines {
        // Line-aligned chunks: a checkpoint about every segment.
        assert!(segments.len() as u64 >= live.len() as u64 / (2 * SEGMENT), "{} segments", segments.len());
    }
    let replayed = h.verify_replay();
    if case.chunking == Chunking::Lines {
        // The last segments' generations are still on disk.
        assert!(replayed > 0, "no segment could be replayed");
    }
    // Random reads agree with what was served live.
    for i in 0..40u64 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let off = (rng >> 20) % live.len() as u64;
        let max = 1 + ((rng >> 7) % 150_000) as usize + (i as usize % 3) * 65_536;
        let bytes = tl.read(off, max).unwrap();
        let end = (off as usize + max).min(live.len());
        assert!(bytes == live[off as usize..end], "read({off}, {max}) differs");
    }
    // Nothing was lost: every runtime and kernel line exactly once, and (line-chunked)
    // every exec line exactly once.
    let text = String::from_utf8_lossy(&live);
    let summary = sim.summary().clone();
    let rt = markers(&text, " runtime n=");
    assert_eq!(rt.len() as u64, summary.runtime_lines, "runtime lines");
    assert!(rt.values().all(|c| *c == 1), "a runtime line appears twice");
    assert_eq!(text.matches("runtime-cont n=").count() as u64, summary.runtime_continuations);
    let kernel = markers(&text, "kernel n=");
    assert_eq!(kernel.len() as u64, summary.kernel_lines, "kernel lines");
    assert!(kernel.values().all(|c| *c == 1), "a kernel line appears twice");
    if case.chunking == Chunking::Lines {
        for (key, count) in &summary.exec_lines {
            if key == "system" {
                assert_eq!(text.lines().filter(|l| l[25..].starts_with("system ")).count() as u64, *count);
                continue;
            }
            let (stream, id) = key.trim_end_matches(']').split_once('[').unwrap();
            let lines: Vec<&str> = text.lines().filter(|l| l[25..].starts_with(&format!("{key} "))).collect();
            let m = markers(&lines.join("\n"), &format!("{stream} s={id} n="));
            assert_eq!(m.len() as u64, *count, "{key}");
            assert!(m.values().all(|c| *c == 1), "{key}: a line appears twice");
        }
    }
}

proptest! {
    #![proptest_config(config(12))]

    #[test]
    fn rendering_from_every_checkpoint_equals_the_live_bytes(case in sim_case()) {
        check_sim(&case);
    }
}

// ---------------------------------------------------------------------------
// Merge order of the history present at first sight

#[derive(Debug, Clone)]
struct History {
    /// Per exec record: ms delta, stream index, lines in the chunk.
    exec: Vec<(i64, u8, u8)>,
    /// Per runtime record: ms delta, is a continuation line.
    runtime: Vec<(i64, bool)>,
    /// Per kernel record: ms delta, has an uptime stamp.
    kernel: Vec<(i64, bool)>,
    /// Where exec.log.2 / exec.log.1 / exec.log are cut.
    exec_cuts: (usize, usize),
}

fn history() -> impl Strategy<Value = History> {
    let delta = prop_oneof![3 => Just(0i64), 5 => 1i64..4, 1 => 10i64..200];
    (
        prop::collection::vec((delta.clone(), 0u8..4, 1u8..3), 0..120),
        prop::collection::vec((delta.clone(), prop::bool::weighted(0.2)), 0..80),
        prop::collection::vec((delta, prop::bool::weighted(0.8)), 0..80),
        (0usize..200, 0usize..200),
    )
        .prop_map(|(exec, runtime, kernel, exec_cuts)| History { exec, runtime, kernel, exec_cuts })
}

fn check_merge(h: &History) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    // kernel.log first: its birth time anchors every other timestamp, so ties happen.
    // Expected (ts, text) per source, in file order.
    let mut expected: [Vec<(i64, Vec<u8>)>; 3] = Default::default();
    let kpath = dir.join("kernel.log");
    let mut up = 0i64;
    let mut kt = String::new();
    let mut stamps = Vec::new();
    for (n, &(d, stamp)) in h.kernel.iter().enumerate() {
        up += d;
        let text = if stamp {
            stamps.push(Some(up));
            format!("[{:5}.{:06}] k{n}", up / 1000, (up % 1000) * 1000)
        } else {
            stamps.push(None);
            format!("k{n} console")
        };
        kt.push_str(&format!("{text}\n"));
        expected[KERNEL].push((0, format!("kernel {text}").into_bytes()));
    }
    fs::write(&kpath, kt).unwrap();
    let kfile = File::open(&kpath).unwrap();
    let birth = birth_time_ms(&kfile, &FileIdentity::of_file(&kfile).unwrap());
    let mut prev_k = birth;
    for (e, stamp) in expected[KERNEL].iter_mut().zip(stamps) {
        if let Some(up) = stamp {
            prev_k = birth + up;
        }
        e.0 = prev_k;
    }

    let mut t = birth;
    let mut exec_lines = Vec::new();
    for (n, &(d, stream, count)) in h.exec.iter().enumerate() {
        t += d;
        let (s, tag) =
            [("stdout", "stdout[4]"), ("stderr", "stderr[4]"), ("output", "output[5]"), ("system", "system")]
                [stream as usize];
        let mut data = String::new();
        for k in 0..count {
            let text = format!("e{n}.{k}");
            data.push_str(&text);
            data.push('\n');
            expected[EXEC].push((t, format!("{tag} {text}").into_bytes()));
        }
        let mut obj = serde_json::json!({"t": format_timestamp(t), "s": s, "d": data});
        if s != "system" {
            obj["id"] = (if s == "output" { 5 } else { 4 }).into();
        }
        exec_lines.push(format!("{obj}\n"));
    }
    let len = exec_lines.len();
    let (a, b) = (h.exec_cuts.0.min(len), h.exec_cuts.1.min(len));
    let (a, b) = (a.min(b), a.max(b));
    for (name, part) in
        [("exec.log.2", &exec_lines[..a]), ("exec.log.1", &exec_lines[a..b]), ("exec.log", &exec_lines[b..])]
    {
        fs::write(dir.join(name), part.concat()).unwrap();
    }

    let mut t = birth;
    let mut rt = String::new();
    let mut prev: Option<i64> = None;
    for (n, &(d, cont)) in h.runtime.iter().enumerate() {
        t += d;
        if let (true, Some(prev)) = (cont, prev) {
            let text = format!("    at r{n}");
            rt.push_str(&format!("{text}\n"));
            expected[RUNTIME].push((prev, format!("runtime {text}").into_bytes()));
        } else {
            rt.push_str(&format!("{} INFO r{n}\n", format_timestamp(t)));
            expected[RUNTIME].push((t, format!("runtime INFO r{n}").into_bytes()));
            prev = Some(t);
        }
    }
    fs::write(dir.join("runtime.log"), rt).unwrap();

    let mut h = Harness::new(&dir, SEGMENT);
    h.poll();
    let tl = h.timeline();
    let content = read_new(&tl, 0);
    let rendered = parse_rendered(&content);
    let rank = |r: &Rendered| match r.tag.as_str() {
        "runtime" => RUNTIME,
        "kernel" => KERNEL,
        _ => EXEC,
    };
    // Per source: exactly the expected lines, in file order, with their timestamps.
    for src in 0..3 {
        let got: Vec<(i64, Vec<u8>)> = rendered
            .iter()
            .filter(|r| rank(r) == src)
            .map(|r| {
                let mut key = r.tag.as_bytes().to_vec();
                key.push(b' ');
                key.extend_from_slice(&r.text);
                (r.ts, key)
            })
            .collect();
        assert_eq!(got, expected[src], "{}", FILE_NAMES[src]);
    }
    // The published cursor: per source, the file holding the last record taken and the
    // offset just after it; then the merged size.
    let (cursor, size) = tl.cursor();
    assert_eq!(size, content.len() as u64);
    use std::os::unix::fs::MetadataExt;
    for (src, names) in [
        (EXEC, &["exec.log", "exec.log.1", "exec.log.2"][..]),
        (RUNTIME, &["runtime.log"][..]),
        (KERNEL, &["kernel.log"][..]),
    ] {
        if expected[src].is_empty() {
            continue;
        }
        let newest = names.iter().map(|n| fs::metadata(dir.join(n)).unwrap()).find(|m| m.len() > 0).unwrap();
        assert_eq!((cursor[src].generation, cursor[src].offset), (newest.ino(), newest.len()), "{}", FILE_NAMES[src]);
    }
    // Globally: ordered by (timestamp, source).
    for w in rendered.windows(2) {
        assert!((w[0].ts, rank(&w[0])) <= (w[1].ts, rank(&w[1])), "out of merge order: {:?} before {:?}", w[0], w[1]);
    }
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn history_at_first_sight_is_merged_by_time_then_source(h in history()) {
        check_merge(&h);
    }
}

#[test]
fn model_restart_regressions() {
    use Action::*;
    let e = Exec { entries: 1, len: 0, multi: false, newline: true };
    let k = Kernel { lines: 1, len: 0, stamp: false };
    // Killed before anything was committed: the empty epoch resumes.
    run_model(&[Stop { clean: false }, e.clone(), Poll], false);
    // A generation adopted while empty, truncated, then rewritten while msbfs is down:
    // its recorded fingerprint grew with it, so the new content is not taken for it.
    run_model(&[Poll, k.clone(), Poll, Truncate { exec: false }, Stop { clean: false }, k, DeleteOldest], true);
    // A copytruncated file is two generations of one inode: after a restart the
    // newer is recognised, not read again as new.
    run_model(&[e.clone(), Poll, Truncate { exec: true }, Poll, Stop { clean: false }, e.clone()], true);
    // Generations read already but still on disk are recognised after a restart that
    // had to skip what vanished meanwhile.
    let rot = Rotate { exec: true, delay: false };
    run_model(&[e.clone(), rot.clone(), e.clone(), Poll, Stop { clean: false }, Truncate { exec: true }, Poll], true);
    // A deleted file msbfs held but had not read yet is lost when msbfs is killed.
    run_model(&[Poll, e.clone(), rot.clone(), DeleteOldest, Stop { clean: false }], true);
    // A generation lost unseen with no later one seen yet is announced after the
    // newest one seen (the shrunk counterexample that found it).
    let (ex, rt) = (
        |entries, len, multi| Exec { entries, len, multi, newline: true },
        |lines, len, cont, partial| Runtime { lines, len, cont, partial },
    );
    let script = [
        rot.clone(),
        ex(1, 44, true),
        Rotate { exec: true, delay: true },
        Poll,
        ex(3, 0, false),
        rt(1, 18, false, None),
        Rotate { exec: true, delay: true },
        rt(2, 38, false, Some(197)),
        ex(3, 17, false),
        DeleteOldest,
        rt(2, 47, true, None),
        rt(2, 44, true, None),
        rt(4, 33, true, None),
        ex(4, 9, true),
        DeleteOldest,
        ex(3, 5, false),
        rt(2, 43, true, None),
        Poll,
    ];
    run_model(&script, true);
}

// ---------------------------------------------------------------------------
// Runtime lines whose start is gone

/// Renames the runtime.log chain one step (`runtime.log.3` onto `.4`, …, the live file
/// to `.1`; the old `.4` is gone) and creates a new `runtime.log` holding `text`.
fn rotate_runtime(h: &mut Harness, dir: &std::path::Path, text: &str) {
    for n in (1..4).rev() {
        let from = dir.join(format!("runtime.log.{n}"));
        if from.exists() {
            fs::rename(from, dir.join(format!("runtime.log.{}", n + 1))).unwrap();
        }
    }
    fs::rename(dir.join("runtime.log"), dir.join("runtime.log.1")).unwrap();
    fs::write(dir.join("runtime.log"), text).unwrap();
    h.created(SourceKind::Runtime);
}

fn birth_of(path: PathBuf) -> i64 {
    let file = File::open(path).unwrap();
    birth_time_ms(&file, &FileIdentity::of_file(&file).unwrap())
}

/// `(time, tag text)` of the runtime lines and notices rendered.
fn runtime_lines(content: &[u8]) -> Vec<(i64, String)> {
    let rendered = parse_rendered(content);
    let runtime = rendered.iter().filter(|r| r.tag == "runtime" || r.tag == "msbfs");
    runtime.map(|r| (r.ts, format!("{} {}", r.tag, String::from_utf8_lossy(&r.text)))).collect()
}

#[test]
fn the_oldest_runtime_generation_at_first_sight_can_begin_mid_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    fs::create_dir(&dir).unwrap();
    let t = |ms| format_timestamp(T0 + ms);
    let oldest = format!("ntime::vm: the tail\n{}  INFO a\n    at frame 0\n{}  INFO split hea", t(1), t(2));
    fs::write(dir.join("runtime.log.1"), oldest).unwrap();
    fs::write(dir.join("runtime.log"), format!("d tail\n{}  INFO b\n", t(3))).unwrap();
    let birth = birth_of(dir.join("runtime.log.1"));
    // A checkpoint after every line: each one is rendered again from its own.
    let mut h = Harness::new(&dir, 1);
    h.poll();
    let content = read_new(&h.timeline(), 0);
    assert_eq!(
        runtime_lines(&content),
        [
            (birth, "runtime [start of line lost] ntime::vm: the tail".to_string()),
            (T0 + 1, "runtime INFO a".into()),
            (T0 + 1, "runtime     at frame 0".into()),
            (T0 + 2, "runtime INFO split head tail".into()),
            (T0 + 3, "runtime INFO b".into()),
        ]
    );
    let segments = h.timeline().store().retained_segments().len();
    assert!(segments >= 4, "{segments} segments");
    assert_eq!(h.verify_replay(), segments, "every segment renders again to the same bytes");
}

#[test]
fn a_runtime_generation_after_one_rotated_away_unseen_can_begin_mid_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    fs::create_dir(&dir).unwrap();
    let t = |ms| format_timestamp(T0 + ms);
    fs::write(dir.join("runtime.log"), format!("{}  INFO a\n", t(0))).unwrap();
    // Born before the watch began (losses are counted against files born after).
    msbfs::source::tracker::wait_past_coarse_tick();
    let mut h = Harness::new(&dir, 1);
    h.poll();
    // Six rotations before msbfs looks again: the first new generation is gone unseen,
    // and the next one begins with the tail of its last line.
    rotate_runtime(&mut h, &dir, &format!("{}  INFO c1\n{}  INFO p1 hea", t(10), t(11)));
    for i in 2..=6 {
        rotate_runtime(
            &mut h,
            &dir,
            &format!("d tail {i}\n{}  INFO c{i}\n{}  INFO p{i} hea", t(10 * i), t(10 * i + 1)),
        );
    }
    let birth = birth_of(dir.join("runtime.log.4"));
    // The segment after the first line holds the notice and the tail, so rendering it
    // again from its checkpoint (standing before the loss) must mark the tail as well.
    h.timeline().set_segment_target(150);
    h.poll();
    let content = read_new(&h.timeline(), 0);
    let mut want = vec![
        (T0, "runtime INFO a".to_string()),
        (T0, "msbfs at least 1 generation of runtime.log were rotated away before msbfs could open them".into()),
        (birth, "runtime [start of line lost] d tail 2".into()),
    ];
    for i in 2..=6 {
        want.push((T0 + 10 * i, format!("runtime INFO c{i}")));
        if i < 6 {
            want.push((T0 + 10 * i + 1, format!("runtime INFO p{i} head tail {}", i + 1)));
        }
    }
    assert_eq!(runtime_lines(&content), want);
    // Every segment but the first (its generation is gone) renders again the same.
    let segments = h.timeline().store().retained_segments().len();
    assert!(segments >= 3, "{segments} segments");
    assert_eq!(h.verify_replay(), segments - 1);
}

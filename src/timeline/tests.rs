//! Unit tests of the timeline: batches committed over chains backed by temp files, the
//! checkpoints they place, reading any range, re-rendering closed segments, the
//! horizon and the published cursor.

use super::*;
use crate::source::generation::{FileId, Generation};
use crate::source::reader::{LineReader, Next};
use crate::source::record::parse_line;
use crate::time::format_timestamp;
use render::{apply_base, Assembler};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

const T0: i64 = 1_777_581_178_000;

/// A minimal ingest: one reader per source, taking lines in the order asked for.
struct Feeder {
    readers: Vec<LineReader>,
    chains: [Arc<Chain>; 3],
    based: [Option<u32>; 3],
    marks: [SourceMark; 3],
    assembler: Assembler,
    /// Rendered offset after every record, and that record's timestamp.
    ends: Vec<(u64, i64)>,
}

impl Feeder {
    fn new(chains: &[Arc<Chain>; 3]) -> Feeder {
        Feeder {
            readers: chains.iter().map(|c| LineReader::new(c.clone(), Pos::default())).collect(),
            chains: chains.clone(),
            based: [None; 3],
            marks: [SourceMark::START; 3],
            assembler: Assembler::default(),
            ends: Vec::new(),
        }
    }

    /// Takes the next line (or gap) of `source` into `batch`; false when none is ready.
    fn take(&mut self, source: SourceKind, batch: &mut Batch, out_base: u64) -> bool {
        let i = source.index();
        let mut state = self.marks[i].state;
        let (record, end, gap) = match self.readers[i].next_line().unwrap() {
            Next::Line(raw, start, end) => {
                if self.based[i] != Some(start.gen) {
                    let birth = self.chains[i].get(start.gen).unwrap().birth_ms;
                    batch.base(source, start.gen, birth);
                    apply_base(source, birth, &mut state);
                    self.based[i] = Some(start.gen);
                }
                (parse_line(source, raw, &mut state), end, None)
            }
            Next::Gap { bytes } => (gap_notice(source, bytes, &state), self.readers[i].pos(), Some(bytes)),
            Next::Pending => return false,
        };
        self.marks[i] = SourceMark { pos: end, state };
        let marks = self.marks;
        match gap {
            Some(bytes) => batch.gap(source, bytes, &state, &mut self.assembler, &marks),
            None => batch.take(source, &record, &mut self.assembler, &marks),
        }
        self.ends.push((out_base + batch.len() as u64, record.ts));
        true
    }
}

fn append(path: &Path, bytes: &[u8]) {
    OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(bytes).unwrap();
}

fn gen_of(chain: &Chain, path: &Path, birth: i64) -> Arc<Generation> {
    let file = File::open(path).unwrap();
    let id = FileId::of(&file.metadata().unwrap());
    chain.push(id, birth, Arc::new(file))
}

fn meta() -> FileMeta {
    FileMeta { uid: 0, gid: 0, mode: 0o400, mtime_ms: 0 }
}

use crate::simulate::Rng;

/// Source files: exec in two generations (whole lines), runtime in two generations with a line split across the rotation, kernel in
/// one. Returns the chains and the number of lines per source.
struct World {
    _dir: tempfile::TempDir,
    chains: [Arc<Chain>; 3],
    lines: [usize; 3],
}

fn world(seed: u64, exec_lines: usize) -> World {
    world_with(seed, exec_lines, true)
}

fn world_with(seed: u64, exec_lines: usize, long_lines: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed, 0);
    let chains: [Arc<Chain>; 3] = Default::default();
    // exec: two generations.
    let mut n = 0;
    for (g, count) in [exec_lines / 3, exec_lines - exec_lines / 3].into_iter().enumerate() {
        let p = dir.path().join(format!("exec{g}"));
        let mut buf = Vec::new();
        for _ in 0..count {
            let len =
                if long_lines && rng.below(200) == 0 { 70_000 + rng.below(70_000) } else { rng.below(150) } as usize;
            let payload: String = (0..len).map(|k| (b'a' + ((k as u64 + n as u64) % 26) as u8) as char).collect();
            let stream = ["stdout", "stderr", "output"][rng.below(3) as usize];
            let multi = if rng.below(10) == 0 { "\\nsecond line" } else { "" };
            buf.extend_from_slice(
                format!(
                    "{{\"t\":\"{}\",\"s\":\"{stream}\",\"d\":\"{stream} n={n:08} {payload}{multi}\\n\",\"id\":{}}}\n",
                    format_timestamp(T0 + n as i64 * 3),
                    rng.below(4)
                )
                .as_bytes(),
            );
            n += 1;
        }
        append(&p, &buf);
        let gen = gen_of(&chains[0], &p, T0);
        if g == 0 {
            gen.seal(buf.len() as u64, true);
        }
    }
    // runtime: a line split across two generations.
    let (r0, r1) = (dir.path().join("rt0"), dir.path().join("rt1"));
    let mut text = Vec::new();
    let rt_lines = exec_lines / 4 + 2;
    for k in 0..rt_lines {
        text.extend_from_slice(
            format!("{}  INFO vm: runtime n={k:08} x\n", format_timestamp(T0 + k as i64 * 11)).as_bytes(),
        );
        if k % 5 == 0 {
            text.extend_from_slice(format!("    at frame runtime-cont n={k:08}\n").as_bytes());
        }
    }
    let split = text.len() / 2 + 3;
    append(&r0, &text[..split]);
    append(&r1, &text[split..]);
    gen_of(&chains[1], &r0, T0 + 1).seal(split as u64, true);
    gen_of(&chains[1], &r1, T0 + 2);
    let rt_total = text.iter().filter(|b| **b == b'\n').count();
    // kernel: uptime stamps relative to the birth.
    let k0 = dir.path().join("k0");
    let mut ktext = Vec::new();
    let k_lines = exec_lines / 8 + 1;
    for k in 0..k_lines {
        if k % 7 == 3 {
            ktext.extend_from_slice(format!("kernel n={k:08} console\n").as_bytes());
        } else {
            ktext.extend_from_slice(format!("[{:5}.{:06}] kernel n={k:08}\n", k / 10, (k % 10) * 1000).as_bytes());
        }
    }
    append(&k0, &ktext);
    gen_of(&chains[2], &k0, T0 - 500);
    World { _dir: dir, chains, lines: [n, rt_total, k_lines] }
}

/// Feeds every line of `w` into `tl` in batches of random sizes, taking sources in a
/// pseudo-random interleaving; returns the live bytes and the feeder.
fn feed_all(tl: &Timeline, w: &World, seed: u64) -> (Vec<u8>, Feeder) {
    let mut rng = Rng::new(seed, 0x55);
    let mut f = Feeder::new(&w.chains);
    let mut live = Vec::new();
    let mut done = [false; 3];
    while done.iter().any(|d| !d) {
        let base = tl.size();
        let mut batch = tl.begin_batch();
        let n = 1 + rng.below(400);
        for _ in 0..n {
            let s = SourceKind::ALL[rng.below(3) as usize];
            if !done[s.index()] && !f.take(s, &mut batch, base) {
                done[s.index()] = true;
            }
        }
        live.extend_from_slice(&batch.bytes);
        let expect = base + batch.len() as u64;
        tl.commit(batch);
        assert_eq!(tl.size(), expect);
    }
    (live, f)
}

fn setup(seed: u64, exec_lines: usize) -> (World, Timeline, Vec<u8>, Feeder) {
    let w = world(seed, exec_lines);
    let tl = Timeline::new(1, w.chains.clone(), meta());
    let (live, f) = feed_all(&tl, &w, seed);
    (w, tl, live, f)
}

#[test]
fn size_and_reads_equal_the_concatenation() {
    let (w, tl, live, f) = setup(1, 6000);
    assert_eq!(tl.size(), live.len() as u64);
    assert_eq!(f.ends.len(), w.lines.iter().sum::<usize>(), "every line was taken");
    assert!(live.ends_with(b"\n"));
    // Sequential read with one memo, in odd-sized requests.
    let mut memo = SegmentMemo::default();
    let mut got = Vec::new();
    while (got.len() as u64) < tl.size() {
        let part = tl.read(got.len() as u64, 10_007, &mut memo).unwrap();
        assert!(!part.is_empty());
        got.extend_from_slice(&part);
    }
    assert!(got == live, "sequential read differs from the live bytes");
    assert_eq!(tl.read(tl.size(), 100, &mut memo).unwrap(), b"");
    assert_eq!(tl.read(tl.size() + 5, 100, &mut memo).unwrap(), b"");
    // Random offsets with fresh memos (older segments are no longer in the recent ring).
    let mut rng = Rng::new(7, 0);
    for _ in 0..60 {
        let off = rng.below(tl.size());
        let max = 1 + rng.below(200_000) as usize;
        let part = tl.read(off, max, &mut SegmentMemo::default()).unwrap();
        let end = (off as usize + max).min(live.len());
        assert!(part == live[off as usize..end], "read({off}, {max}) differs");
    }
}

#[test]
fn checkpoints_are_placed_about_every_segment_at_record_boundaries() {
    let (_w, tl, live, f) = setup(2, 6000);
    let cps = tl.checkpoint_offsets();
    assert_eq!(cps[0], 0);
    assert!(cps.len() > 10, "{} checkpoints for {} bytes", cps.len(), live.len());
    let ends: std::collections::BTreeSet<u64> = f.ends.iter().map(|e| e.0).collect();
    let mut prev_end = 0u64;
    let mut longest = 0u64;
    for &(e, _) in &f.ends {
        longest = longest.max(e - prev_end);
        prev_end = e;
    }
    for w in cps.windows(2) {
        let len = w[1] - w[0];
        assert!(len >= SEGMENT_TARGET, "segment [{}, {}) shorter than the target", w[0], w[1]);
        assert!(len < SEGMENT_TARGET + longest, "segment [{}, {}) overshoots", w[0], w[1]);
    }
    for &cp in &cps[1..] {
        assert!(ends.contains(&cp), "checkpoint {cp} is not at a record boundary");
        assert_eq!(live[cp as usize - 1], b'\n');
    }
    // The open segment is shorter than the target.
    assert!(tl.size() - cps.last().unwrap() < SEGMENT_TARGET + longest);
    // Each checkpoint's marks are the sources' marks after the record that ends there.
    let s = tl.shared.lock();
    assert_eq!(s.checkpoints.len(), cps.len());
    for cp in &s.checkpoints[1..] {
        assert!(cp.sources.iter().any(|m| m.pos != Pos::default()));
    }
}

#[test]
fn rerendering_each_closed_segment_equals_the_live_bytes() {
    for seed in [3, 4, 5] {
        let (_w, tl, live, _f) = setup(seed, 5000);
        let cps = tl.checkpoint_offsets();
        for k in 0..cps.len() - 1 {
            let bytes = tl.rerender_segment(k).expect("closed segment").unwrap_or_else(|e| panic!("segment {k}: {e}"));
            assert!(bytes == live[cps[k] as usize..cps[k + 1] as usize], "seed {seed}: segment {k} differs");
        }
        assert!(tl.rerender_segment(cps.len() - 1).is_none(), "the open segment has no end yet");
        assert!(tl.rerender_segment(cps.len() + 3).is_none());
    }
}

#[test]
fn a_changed_source_is_detected_when_rendering_again() {
    let (w, tl, _live, _f) = setup(6, 3000);
    let cps = tl.checkpoint_offsets();
    assert!(cps.len() > 3);
    // Overwrite the kernel log in place with different bytes of the same length.
    let path = w._dir.path().join("k0");
    // Same length, same line structure, different text: only the checksum can tell.
    let old = std::fs::read(&path).unwrap();
    let new: Vec<u8> = old.iter().map(|b| if b.is_ascii_alphabetic() { b'Q' } else { *b }).collect();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &new, 0).unwrap();
    let mut errors = 0;
    for k in 0..cps.len() - 1 {
        if let Err(e) = tl.rerender_segment(k).unwrap() {
            assert!(matches!(e, replay::ReplayError::Mismatch), "{e}");
            errors += 1;
        }
    }
    assert!(errors > 0, "no segment noticed the rewritten kernel log");
}

#[test]
fn retire_until_moves_the_horizon_to_the_next_checkpoint() {
    let (_w, tl, live, f) = setup(8, 5000);
    let cps = tl.checkpoint_offsets();
    assert!(cps.len() > 12, "need segments beyond the recent ring");
    assert_eq!(tl.horizon(), 0);
    let target = cps[2] + 1;
    tl.retire_until(target);
    assert_eq!(tl.horizon(), cps[3]);
    tl.retire_until(cps[1]);
    assert_eq!(tl.horizon(), cps[3], "the horizon never moves back");
    // Below the horizon: the oldest segments are no longer in the recent ring.
    let err = tl.read(10, 100, &mut SegmentMemo::default()).unwrap_err();
    assert_eq!(err.horizon, cps[3]);
    let latest_before = f.ends.iter().filter(|e| e.0 <= cps[3]).map(|e| e.1).max().unwrap();
    assert_eq!(err.ts, latest_before);
    // At and above it: fine.
    let at = tl.read(cps[3], 50, &mut SegmentMemo::default()).unwrap();
    assert!(at == live[cps[3] as usize..cps[3] as usize + 50]);
    // A read that starts above stops... a read that starts below and crosses is refused.
    assert!(tl.read(cps[3] - 1, 50, &mut SegmentMemo::default()).is_err());
}

#[test]
fn retire_until_past_the_last_checkpoint_waits_for_the_next_one() {
    let w = world_with(9, 4000, false);
    let tl = Timeline::new(1, w.chains.clone(), meta());
    let mut f = Feeder::new(&w.chains);
    // Commit a little less than one segment.
    let mut batch = tl.begin_batch();
    while (batch.len() as u64) < SEGMENT_TARGET / 2 {
        assert!(f.take(SourceKind::Exec, &mut batch, 0));
    }
    tl.commit(batch);
    assert_eq!(tl.checkpoint_offsets(), [0]);
    let retire = tl.size();
    tl.retire_until(retire);
    assert_eq!(tl.horizon(), 0, "no checkpoint at or after it yet");
    // Grow past one segment: the new checkpoint becomes the horizon.
    while tl.checkpoint_offsets().len() < 2 {
        let base = tl.size();
        let mut batch = tl.begin_batch();
        assert!(f.take(SourceKind::Exec, &mut batch, base));
        tl.commit(batch);
    }
    let cps = tl.checkpoint_offsets();
    assert!(cps[1] >= retire);
    assert_eq!(tl.horizon(), cps[1]);
}

#[test]
fn cursor_is_published_with_the_batch_and_listeners_run() {
    let w = world(10, 200);
    let tl = Timeline::new(42, w.chains.clone(), meta());
    assert_eq!(tl.epoch(), 42);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    tl.subscribe(Arc::new(move || {
        c.fetch_add(1, Ordering::SeqCst);
    }));
    assert_eq!(tl.cursor(), ([CursorPos::default(); 3], 0));
    // An empty batch without a cursor changes nothing and wakes no one.
    tl.commit(tl.begin_batch());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let mut f = Feeder::new(&w.chains);
    let mut batch = tl.begin_batch();
    for _ in 0..5 {
        assert!(f.take(SourceKind::Exec, &mut batch, 0));
    }
    let cur = [
        CursorPos { generation: 11, offset: 500 },
        CursorPos { generation: 12, offset: 0 },
        CursorPos { generation: 0, offset: 0 },
    ];
    batch.set_cursor(cur);
    tl.commit(batch);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let size = tl.size();
    assert!(size > 0);
    assert_eq!(tl.cursor(), (cur, size));
    // A batch with only a cursor still publishes it.
    let mut batch = tl.begin_batch();
    let cur2 = [CursorPos { generation: 11, offset: 600 }, cur[1], cur[2]];
    batch.set_cursor(cur2);
    tl.commit(batch);
    assert_eq!(tl.cursor(), (cur2, size));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A batch without a cursor keeps the last one.
    let mut batch = tl.begin_batch();
    assert!(f.take(SourceKind::Runtime, &mut batch, size));
    tl.commit(batch);
    assert_eq!(tl.cursor().0, cur2);
    assert!(tl.cursor().1 > size);
    tl.close();
    assert!(tl.is_closed());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[test]
fn gaps_are_rendered_and_rendered_again() {
    // A released generation with unread bytes in the middle of the exec chain.
    let dir = tempfile::tempdir().unwrap();
    let chains: [Arc<Chain>; 3] = Default::default();
    let mut expect_gap = 0;
    for g in 0..3 {
        let p = dir.path().join(format!("e{g}"));
        let mut buf = Vec::new();
        for n in 0..1500 {
            buf.extend_from_slice(
                format!(
                    "{{\"t\":\"{}\",\"s\":\"stdout\",\"d\":\"g{g} n={n:08} {}\\n\",\"id\":1}}\n",
                    format_timestamp(T0 + g * 10_000 + n),
                    "p".repeat((n % 90) as usize)
                )
                .as_bytes(),
            );
        }
        append(&p, &buf);
        let gen = gen_of(&chains[0], &p, T0);
        if g < 2 {
            gen.seal(buf.len() as u64, true);
        }
        if g == 1 {
            gen.release();
            expect_gap = buf.len() as u64;
        }
    }
    let tl = Timeline::new(1, chains.clone(), meta());
    let mut f = Feeder::new(&chains);
    let mut live = Vec::new();
    loop {
        let base = tl.size();
        let mut batch = tl.begin_batch();
        let mut any = false;
        for _ in 0..97 {
            any |= f.take(SourceKind::Exec, &mut batch, base);
        }
        live.extend_from_slice(&batch.bytes);
        tl.commit(batch);
        if !any {
            break;
        }
    }
    let text = String::from_utf8_lossy(&live);
    let notices: Vec<&str> = text.lines().filter(|l| l[25..].starts_with("msbfs ")).collect();
    assert_eq!(
        notices,
        [format!(
            "{} msbfs {expect_gap} bytes of exec.log were lost before msbfs could read them",
            format_timestamp(T0 + 1499)
        )]
    );
    assert_eq!(text.lines().filter(|l| l.contains(" g1 n=")).count(), 0);
    assert_eq!(text.lines().filter(|l| l.contains(" g2 n=")).count(), 1500);
    let cps = tl.checkpoint_offsets();
    assert!(cps.len() > 2);
    for k in 0..cps.len() - 1 {
        let bytes = tl.rerender_segment(k).unwrap().unwrap_or_else(|e| panic!("segment {k}: {e}"));
        assert!(bytes == live[cps[k] as usize..cps[k + 1] as usize], "segment {k} differs");
    }
}

#[test]
fn readers_keep_generations_until_past_them_and_nobody_is_past_an_open_segment() {
    let (_w, tl, _live, _f) = setup(11, 5000);
    let cps = tl.checkpoint_offsets();
    assert!(cps.len() > 4);
    let end = cps[2] + 1;
    assert!(tl.readers_past(end), "no reader: nothing is needed");
    tl.track_reader(7, 0);
    assert!(!tl.readers_past(end), "a reader at 0 needs the segment holding `end`");
    tl.track_reader(7, cps[3] - 1);
    assert!(!tl.readers_past(end), "still inside that segment");
    tl.track_reader(7, cps[3]);
    assert!(tl.readers_past(end), "at the first checkpoint past it");
    // Lines ending in the open segment: even a reader at the very end still needs them.
    tl.track_reader(7, tl.size());
    assert!(!tl.readers_past(tl.size()));
    tl.untrack_reader(7);
    assert!(tl.readers_past(tl.size()));
}

#[test]
fn a_pending_retirement_moves_the_horizon_with_the_open_segment() {
    let w = world_with(12, 8000, false);
    let tl = Timeline::new(1, w.chains.clone(), meta());
    let mut f = Feeder::new(&w.chains);
    let commit_until = |f: &mut Feeder, checkpoints: usize| {
        while tl.checkpoint_offsets().len() < checkpoints {
            let base = tl.size();
            let mut batch = tl.begin_batch();
            assert!(f.take(SourceKind::Exec, &mut batch, base));
            tl.commit(batch);
        }
    };
    commit_until(&mut f, 2);
    // A generation whose last line ends three segments ahead of the open segment.
    let open_start = *tl.checkpoint_offsets().last().unwrap();
    let retired_end = tl.size() + 3 * SEGMENT_TARGET;
    tl.retire_until(retired_end);
    assert_eq!(tl.horizon(), open_start, "closed segments holding its lines cannot be rendered");
    commit_until(&mut f, 3);
    let cps = tl.checkpoint_offsets();
    assert!(cps[2] < retired_end);
    assert_eq!(tl.horizon(), cps[2], "the horizon follows the open segment while pending");
    while *tl.checkpoint_offsets().last().unwrap() < retired_end {
        let n = tl.checkpoint_offsets().len();
        commit_until(&mut f, n + 1);
    }
    let past = *tl.checkpoint_offsets().last().unwrap();
    assert_eq!(tl.horizon(), past, "the first checkpoint past the retired lines");
    let n = tl.checkpoint_offsets().len();
    commit_until(&mut f, n + 1);
    assert_eq!(tl.horizon(), past, "then it stays");
}

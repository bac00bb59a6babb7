//! Unit tests of the timeline: batches committed to an epoch store over real source
//! files, the checkpoints they place, re-rendering retained segments from them, and
//! what is published (size, cursor, listeners).

use super::*;
use crate::source::feed::Step;
use crate::source::generation::GenRecord;
use crate::source::record::{Record, Tag};
use crate::source::{find_generation, PerSource, Source, SourceKind};
use crate::store::pool::FilePool;
use crate::store::EpochStore;
use crate::time::format_timestamp;
use batch::{FORCED_FLUSH_AT, SEGMENT_TARGET};
use journal::{decode_entries, Entry};
use ops::Op;
use render::Assembler;
use replay::{replay_segment, ReplayError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

const T0: i64 = 1_777_581_178_000;

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(bytes).unwrap();
}

/// A logs directory with its sources and a timeline over a fresh store.
struct World {
    _tmp: tempfile::TempDir,
    logs: PathBuf,
    sources: PerSource<Source>,
    timeline: Timeline,
    assembler: Assembler,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let header =
            crate::store::Header { epoch: 9, ino_base: 1 << 24, created_ms: 0, name: "t".into(), owner: vec![] };
        let store = Arc::new(
            EpochStore::create(&tmp.path().join("epoch"), header, Arc::default(), &FilePool::new(16)).unwrap(),
        );
        let meta = FileMeta { uid: 0, gid: 0, mode: 0o444, mtime_ms: 0 };
        World {
            sources: PerSource::from_fn(|kind| Source::new(kind, &logs)),
            logs,
            timeline: Timeline::new(store, 0, meta),
            assembler: Assembler::default(),
            _tmp: tmp,
        }
    }

    fn runtime_lines(&self, from: u64, n: u64, len: usize) {
        let mut text = String::new();
        for i in from..from + n {
            let body: String = std::iter::repeat_n('r', len).collect();
            text.push_str(&format!("{} INFO msb: runtime n={i:08} {body}\n", format_timestamp(T0 + i as i64 * 3)));
        }
        append(&self.logs.join("runtime.log"), text.as_bytes());
    }

    fn kernel_lines(&self, from: u64, n: u64) {
        let mut text = String::new();
        for i in from..from + n {
            text.push_str(&format!("[{:5}.{:06}] kernel n={i:08}\n", i / 100, (i % 100) * 10_000));
        }
        append(&self.logs.join("kernel.log"), text.as_bytes());
    }

    /// What ingest does, minimally: refresh, merge every ready step by time, place
    /// segment checkpoints, commit one batch (a boundary checkpoint first when empty).
    fn ingest(&mut self) {
        let mut batch = self.timeline.begin_batch([CursorPos::default(); 3]);
        if self.timeline.size() == 0 {
            batch.checkpoint(self.checkpoint(), true);
        }
        for kind in SourceKind::ALL {
            self.sources[kind].refresh(true);
            for event in self.sources[kind].take_events() {
                batch.chain_event(kind, event);
            }
        }
        loop {
            let next = SourceKind::ALL
                .into_iter()
                .filter_map(|k| self.sources[k].peek().unwrap().map(|h| (h.step.record().ts, k)))
                .min();
            let Some((_, kind)) = next else { break };
            let head = self.sources[kind].take().unwrap();
            match head.step {
                Step::Record(r) => batch.take(kind, &r, CursorPos::default(), &mut self.assembler),
                Step::Gap { bytes, notice } => {
                    batch.gap(kind, bytes, &notice, CursorPos::default(), &mut self.assembler)
                }
                Step::Lost { generations, notice } => {
                    batch.lost(kind, generations, &notice, CursorPos::default(), &mut self.assembler)
                }
            }
            batch.moved(kind, head.next);
            if batch.segment_due(&mut self.assembler) {
                batch.checkpoint(self.checkpoint(), true);
            }
        }
        let cursor = [CursorPos { generation: 1, offset: 2 }; 3];
        self.timeline.commit(batch, !self.assembler.is_empty(), cursor).unwrap();
    }

    fn checkpoint(&self) -> journal::Checkpoint {
        journal::Checkpoint {
            marks: self.sources.map(|_, s| s.mark()),
            gens: self.sources.map(|_, s| s.records_known()),
            next_seq: self.sources.map(|_, s| s.next_seq()),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.timeline.read(0, usize::MAX).unwrap()
    }

    fn rotate_runtime(&self) {
        for n in (1..4).rev() {
            let _ = std::fs::rename(
                self.logs.join(format!("runtime.log.{n}")),
                self.logs.join(format!("runtime.log.{}", n + 1)),
            );
        }
        std::fs::rename(self.logs.join("runtime.log"), self.logs.join("runtime.log.1")).unwrap();
    }
}

#[test]
fn commits_are_stored_before_they_are_published_and_wake_listeners() {
    let mut w = World::new();
    let woken = Arc::new(AtomicUsize::new(0));
    let counter = woken.clone();
    w.timeline.subscribe(Arc::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    w.runtime_lines(0, 10, 5);
    w.ingest();
    let bytes = w.bytes();
    assert_eq!(w.timeline.size(), bytes.len() as u64);
    assert_eq!(w.timeline.store().size(), bytes.len() as u64);
    assert_eq!(String::from_utf8_lossy(&bytes).lines().count(), 10);
    assert_eq!(w.timeline.cursor(), ([CursorPos { generation: 1, offset: 2 }; 3], bytes.len() as u64));
    assert_eq!(woken.load(Ordering::SeqCst), 1);
    // Nothing new: no append, no wake-up.
    w.ingest();
    assert_eq!(w.timeline.size(), bytes.len() as u64);
    assert_eq!(woken.load(Ordering::SeqCst), 1);
    w.timeline.close();
    assert!(w.timeline.is_closed());
    assert_eq!(woken.load(Ordering::SeqCst), 2);
}

#[test]
fn segments_close_at_record_boundaries() {
    let mut w = World::new();
    w.runtime_lines(0, 12_000, 60);
    w.kernel_lines(0, 3_000);
    w.ingest();
    let bytes = w.bytes();
    let segs = w.timeline.store().retained_segments();
    assert!(segs.len() as u64 >= bytes.len() as u64 / (2 * SEGMENT_TARGET), "{} segments", segs.len());
    for s in &segs {
        assert!(s.start == 0 || bytes[s.start as usize - 1] == b'\n', "segment at {} starts mid-line", s.start);
        assert!(s.end - s.start >= SEGMENT_TARGET && s.end - s.start < SEGMENT_TARGET + (64 << 10));
        assert!(s.min_ts <= s.max_ts && s.min_ts >= T0);
    }
}

#[test]
fn every_retained_segment_renders_again_from_its_checkpoint() {
    let mut w = World::new();
    // Four rotations: every generation is still on disk.
    for round in 0..5u64 {
        w.runtime_lines(round * 4000, 4000, 80);
        w.kernel_lines(round * 500, 500);
        w.ingest();
        if round < 4 {
            w.rotate_runtime();
        }
    }
    w.runtime_lines(99_000, 10, 3);
    w.ingest();
    let logs = w.logs.clone();
    let resolve = |kind: SourceKind, rec: &GenRecord| find_generation(kind, &logs, rec);
    let store = w.timeline.store().clone();
    let segs = store.retained_segments();
    assert!(segs.len() > 6, "{} segments", segs.len());
    for seg in &segs {
        let again = replay_segment(&store, seg, &resolve).unwrap_or_else(|e| panic!("segment at {}: {e}", seg.start));
        assert_eq!(again.len() as u64, seg.end - seg.start);
    }
    // A source rewritten in place is caught: the sources no longer give those bytes.
    let kernel = w.logs.join("kernel.log");
    let text = std::fs::read(&kernel).unwrap();
    let mut changed = text.clone();
    changed[20] = b'X';
    std::fs::write(&kernel, &changed).unwrap();
    let failures = segs.iter().filter(|s| replay_segment(&store, s, &resolve).is_err()).count();
    assert!(failures > 0);
    // A generation that is gone is reported as missing.
    std::fs::remove_file(w.logs.join("runtime.log.4")).unwrap();
    let missing = segs
        .iter()
        .filter(|s| matches!(replay_segment(&store, s, &resolve), Err(ReplayError::Missing(SourceKind::Runtime))))
        .count();
    assert!(missing > 0);
}

#[test]
fn takes_coalesce_and_held_fragments_delay_a_checkpoint_until_forced() {
    let mut w = World::new();
    let mut batch = w.timeline.begin_batch([CursorPos::default(); 3]);
    let line = |i: u64| Record { ts: T0, tag: Tag::Kernel, text: format!("k{i}").into_bytes() };
    for i in 0..3 {
        batch.take(SourceKind::Kernel, &line(i), CursorPos::default(), &mut w.assembler);
    }
    batch.take(
        SourceKind::Exec,
        &Record { ts: T0, tag: Tag::Stdout(Some(1)), text: b"prompt> ".to_vec() },
        CursorPos::default(),
        &mut w.assembler,
    );
    let fin = batch.finish(true);
    let ops: Vec<Entry> =
        decode_entries(&fin.payload).unwrap().into_iter().filter(|e| matches!(e, Entry::Op(_))).collect();
    assert_eq!(
        ops,
        [
            Entry::Op(Op::Take { source: SourceKind::Kernel, count: 3 }),
            Entry::Op(Op::Take { source: SourceKind::Exec, count: 1 })
        ]
    );
    assert_eq!(fin.span, Some((T0, T0)));
    // A fragment is held: no checkpoint until the segment is overdue, then a forced flush.
    let mut batch = Batch::new(0, 0, SEGMENT_TARGET, [CursorPos::default(); 3]);
    let big = Record { ts: T0, tag: Tag::Kernel, text: vec![b'k'; 60_000] };
    let mut due_at = None;
    for i in 0..40 {
        batch.take(SourceKind::Kernel, &big, CursorPos::default(), &mut w.assembler);
        if batch.segment_due(&mut w.assembler) {
            due_at = Some(i);
            break;
        }
    }
    let due_at = due_at.expect("a checkpoint falls due");
    assert!((due_at + 1) as u64 * 60_000 >= FORCED_FLUSH_AT, "due only once overdue");
    assert!(w.assembler.is_empty(), "the held fragment was flushed");
}

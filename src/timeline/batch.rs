//! One ingest batch, built outside any lock: the rendered bytes, the timeline's record
//! of them (the store commit's payload: ops, chain events, checkpoints) and the
//! checkpoint cuts. [`super::Timeline::commit`] appends it to the store in one step.

use crate::source::feed::SourceMark;
use crate::source::record::{Record, Tag};
use crate::source::{ChainEvent, PerSource, SourceKind};
use crate::store::Cut;

use super::journal::{self, Checkpoint, Entry};
use super::json::{json_len, EntryKind, LogEntry};
use super::ops::Op;
use super::render::Assembler;
use super::CursorPos;

/// Output bytes between segment checkpoints: a segment ends at the first record
/// boundary after this many bytes at which no fragment is held. Segments are the unit
/// the store drops when over its budget.
pub const SEGMENT_TARGET: u64 = 256 << 10;
/// Segment length past which held fragments are flushed to place a checkpoint (so at
/// most one forced flush per this many bytes of output).
pub const FORCED_FLUSH_AT: u64 = 1 << 20;

/// Largest buffer kept for the next batch; larger ones (a batch with a huge line) are
/// freed.
const KEEP_BUFFER: usize = 4 << 20;

thread_local! {
    /// The buffers of the last finished batch of this thread, for the next one: a
    /// batch of a long history grows to a MiB or more, and growing fresh buffers every
    /// time costs copies and page faults. One set per ingest thread, not per sandbox.
    static SPARE: std::cell::RefCell<[Vec<u8>; 3]> = const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Hands the buffers of a stored batch back for the next batch of this thread.
pub fn recycle(buffers: [Vec<u8>; 3]) {
    SPARE.with_borrow_mut(|spare| {
        for (kept, mut buffer) in spare.iter_mut().zip(buffers) {
            if buffer.capacity() <= KEEP_BUFFER && buffer.capacity() > kept.capacity() {
                buffer.clear();
                *kept = buffer;
            }
        }
    });
}

/// A batch being built.
#[derive(Debug)]
pub struct Batch {
    start: u64,
    bytes: Vec<u8>,
    payload: Vec<u8>,
    cuts: Vec<Cut>,
    span: Option<(i64, i64)>,
    segment_len: u64,
    segment_target: u64,
    /// The last op, when it is a `Take` that may still grow: where its encoding starts,
    /// its source and count.
    open_take: Option<(usize, SourceKind, u64)>,
    moved: PerSource<Option<SourceMark>>,
    log: LogState,
}

/// What the batch needs to record source entries for `merged.jsonl`.
#[derive(Debug)]
struct LogState {
    /// Source positions after the last entry.
    positions: [CursorPos; 3],
    /// True once the positions before the first entry are recorded.
    recorded: bool,
    /// JSON bytes of the entries so far.
    json_len: u64,
    /// Entries so far.
    entries: u64,
    /// Latest timestamp of an entry so far.
    max_ts: Option<i64>,
    /// The entries' records, appended to the payload at the end of the batch (after
    /// the ops, so `Take`s of one source still coalesce).
    payload: Vec<u8>,
}

/// A finished batch, ready for the store.
#[derive(Debug)]
pub struct Finished {
    /// Rendered bytes.
    pub bytes: Vec<u8>,
    /// The record of the batch.
    pub payload: Vec<u8>,
    /// Its source entries ([`Entry::LogState`] and [`Entry::Logged`]), which the store
    /// leaves out when its filesystem is full.
    pub entries_payload: Vec<u8>,
    /// Checkpoints placed in it.
    pub cuts: Vec<Cut>,
    /// Earliest and latest timestamp rendered.
    pub span: Option<(i64, i64)>,
    /// Bytes since the last segment checkpoint, at its end.
    pub segment_len: u64,
    /// Bytes the batch adds to `merged.jsonl`.
    pub json_len: u64,
    /// Source entries it records.
    pub entries: u64,
    /// Latest timestamp of those entries.
    pub entries_max_ts: Option<i64>,
}

impl Batch {
    /// A batch starting at merged offset `start`, `segment_len` bytes into a segment
    /// that closes past `segment_target` bytes, with the sources at `positions`.
    pub fn new(start: u64, segment_len: u64, segment_target: u64, positions: [CursorPos; 3]) -> Batch {
        let [bytes, payload, entries] = SPARE.with_borrow_mut(std::mem::take);
        Batch {
            start,
            bytes,
            payload,
            cuts: Vec::new(),
            span: None,
            segment_len,
            segment_target,
            open_take: None,
            moved: PerSource([None; 3]),
            log: LogState { positions, recorded: false, json_len: 0, entries: 0, max_ts: None, payload: entries },
        }
    }

    /// Renders `record` and records it as a source entry that moved `moved` (a source
    /// and its cursor position after the record).
    fn render_entry(
        &mut self,
        kind: EntryKind,
        record: &Record,
        moved: Option<(SourceKind, CursorPos)>,
        assembler: &mut Assembler,
    ) {
        self.render_entry_as(kind, record, &record.text, moved, assembler);
    }

    /// Like [`Batch::render_entry`], with `exact` as the entry's text.
    fn render_entry_as(
        &mut self,
        kind: EntryKind,
        record: &Record,
        exact: &[u8],
        moved: Option<(SourceKind, CursorPos)>,
        assembler: &mut Assembler,
    ) {
        let start = self.start + self.bytes.len() as u64;
        self.render(record, assembler);
        if !self.log.recorded {
            self.log.recorded = true;
            Entry::LogState(self.log.positions).encode(&mut self.log.payload);
        }
        let mut entry = LogEntry {
            kind,
            ts: record.ts,
            text: exact,
            start,
            end: self.start + self.bytes.len() as u64,
            moved,
            json_len: 0,
        };
        entry.apply(&mut self.log.positions);
        let log = &mut self.log;
        entry.json_len = json_len(&entry, None);
        log.json_len += entry.json_len;
        log.entries += 1;
        log.max_ts = Some(log.max_ts.map_or(entry.ts, |m| m.max(entry.ts)));
        log.payload.push(journal::E_LOGGED);
        entry.encode(&mut log.payload);
    }

    fn entry(&mut self, entry: &Entry) {
        self.open_take = None;
        entry.encode(&mut self.payload);
    }

    fn op(&mut self, op: Op) {
        if let (Op::Take { source, count }, Some((at, open, n))) = (op, self.open_take) {
            if open == source {
                self.payload.truncate(at);
                let merged = Entry::Op(Op::Take { source, count: n + count });
                merged.encode(&mut self.payload);
                self.open_take = Some((at, source, n + count));
                return;
            }
        }
        let at = self.payload.len();
        self.entry(&Entry::Op(op));
        if let Op::Take { source, count } = op {
            self.open_take = Some((at, source, count));
        }
    }

    fn render(&mut self, record: &Record, assembler: &mut Assembler) {
        let before = self.bytes.len();
        assembler.render(record, &mut self.bytes);
        self.rendered(before, assembler);
    }

    fn rendered(&mut self, before: usize, assembler: &mut Assembler) {
        self.segment_len += (self.bytes.len() - before) as u64;
        if let Some((lo, hi)) = assembler.take_span() {
            self.span = Some(self.span.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
    }

    /// Takes one line of `source`, already parsed into `record`, rendering it through
    /// the live `assembler`; `after` is the source's cursor position after it.
    pub fn take(&mut self, source: SourceKind, record: &Record, after: CursorPos, assembler: &mut Assembler) {
        self.op(Op::Take { source, count: 1 });
        self.render_entry(EntryKind::Record(record.tag), record, Some((source, after)), assembler);
    }

    /// Records that `bytes` unread bytes of `source` vanished, rendering `notice`.
    pub fn gap(
        &mut self,
        source: SourceKind,
        bytes: u64,
        notice: &Record,
        after: CursorPos,
        assembler: &mut Assembler,
    ) {
        self.op(Op::Gap { source, bytes });
        self.render_entry(EntryKind::Record(notice.tag), notice, Some((source, after)), assembler);
    }

    /// Records that `generations` generations of `source` were lost unseen.
    pub fn lost(
        &mut self,
        source: SourceKind,
        generations: u64,
        notice: &Record,
        after: CursorPos,
        assembler: &mut Assembler,
    ) {
        self.op(Op::Lost { source, generations });
        self.render_entry(EntryKind::Record(notice.tag), notice, Some((source, after)), assembler);
    }

    /// Records that what `source` wrote while msbfs was not running is gone.
    pub fn missed(&mut self, source: SourceKind, bytes: Option<u64>, notice: &Record, assembler: &mut Assembler) {
        self.op(Op::Missed { source, bytes: bytes.unwrap_or(0) });
        self.render_entry(EntryKind::Record(notice.tag), notice, None, assembler);
    }

    /// Renders a `boot-error.json` record as its `system` line; `raw` is the file's text.
    pub fn boot_error(&mut self, record: &Record, raw: &[u8], assembler: &mut Assembler) {
        self.entry(&Entry::Boot { ts: record.ts, text: record.text.clone() });
        self.render_entry_as(EntryKind::BootError, record, raw, None, assembler);
    }

    /// Records that fragments held before a restart could not be rebuilt.
    pub fn fragments_lost(&mut self, notice: &Record, assembler: &mut Assembler) {
        self.op(Op::FragmentsLost);
        self.render_entry(EntryKind::Record(notice.tag), notice, None, assembler);
    }

    /// Flushes the fragment held for `stream` (it waited too long), or every held
    /// fragment when `stream` is `None` (the sandbox stopped, msbfs stops, or a
    /// checkpoint is overdue).
    pub fn flush(&mut self, stream: Option<Tag>, assembler: &mut Assembler) {
        let before = self.bytes.len();
        match stream {
            Some(stream) => {
                self.op(Op::Flush { stream });
                assembler.flush(stream, &mut self.bytes);
            }
            None => {
                self.op(Op::FlushAll);
                assembler.flush_all(&mut self.bytes);
            }
        }
        self.rendered(before, assembler);
    }

    /// Records a generation adopted or sealed by `source`.
    pub fn chain_event(&mut self, source: SourceKind, event: ChainEvent) {
        let entry = match event {
            ChainEvent::Adopted(rec) => Entry::Adopted(source, rec),
            ChainEvent::Updated(rec) => Entry::Updated(source, rec),
        };
        self.entry(&entry);
    }

    /// Notes where `source` stands now (recorded at the end of the batch).
    pub fn moved(&mut self, source: SourceKind, mark: SourceMark) {
        self.moved[source] = Some(mark);
    }

    /// True when a segment checkpoint should be placed now: the segment is long enough
    /// and nothing is held (past [`FORCED_FLUSH_AT`], held fragments are flushed).
    pub fn segment_due(&mut self, assembler: &mut Assembler) -> bool {
        if self.segment_len < self.segment_target {
            return false;
        }
        if !assembler.is_empty() {
            if self.segment_len < FORCED_FLUSH_AT.max(self.segment_target) {
                return false;
            }
            self.flush(None, assembler);
        }
        true
    }

    /// Places `checkpoint` here: a segment boundary, or only a resume point.
    pub fn checkpoint(&mut self, checkpoint: Checkpoint, boundary: bool) {
        let out = self.start + self.bytes.len() as u64;
        self.cuts.push(Cut { out, payload_at: self.payload.len() as u32, boundary });
        self.entry(&Entry::Checkpoint(Box::new(checkpoint)));
        if boundary {
            self.segment_len = 0;
        }
    }

    /// Rendered bytes so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when the batch records nothing.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.payload.is_empty() && self.moved.iter().all(|(_, p)| p.is_none())
    }

    /// Ends the batch; `held` says whether fragments are held after it.
    pub fn finish(mut self, held: bool) -> Finished {
        if self.moved.iter().any(|(_, p)| p.is_some()) {
            let moved = self.moved;
            self.entry(&Entry::End { moved, held });
        }
        Finished {
            bytes: self.bytes,
            payload: self.payload,
            entries_payload: self.log.payload,
            cuts: self.cuts,
            span: self.span,
            segment_len: self.segment_len,
            json_len: self.log.json_len,
            entries: self.log.entries,
            entries_max_ts: self.log.max_ts,
        }
    }
}

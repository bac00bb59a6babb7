//! The merged stream of one sandbox epoch: the op log, checkpoints, `size`, and
//! rendering any byte range.
//!
//! Ingest renders the live end and hands over a [`Batch`] (ops, bytes, checkpoint
//! cuts); the timeline stores the decisions (ops) and a checkpoint every ~64 KiB of
//! output, plus the bytes of the open segment and a few recent segments. Any older
//! range is rendered again from its checkpoint by [`replay`], so offsets are stable
//! without copying the logs. No FUSE, no wall-clock time here.

pub mod ops;
pub mod render;
pub mod replay;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::source::generation::{Chain, Pos};
use crate::source::record::{Record, SourceState, Tag};
use crate::source::SourceKind;
use ops::{Op, OpLog, OpPos};
use render::{gap_notice, Assembler};

/// Output bytes between checkpoints (a segment ends at the first record boundary
/// after this many bytes at which no fragment is held).
pub const SEGMENT_TARGET: u64 = 64 << 10;
/// Segment length past which held fragments are flushed to place a checkpoint (so at
/// most one forced flush per this many bytes of output).
pub const FORCED_FLUSH_AT: u64 = 1 << 20;
/// Closed segments kept in memory for readers near the live end.
const RECENT_SEGMENTS: usize = 8;
/// Encoded length bound of one op, for copying the ops a segment needs.
const MAX_OP_LEN: u64 = 32;

/// Where one source stands: the start of its next line and its parse state there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceMark {
    /// Start of the next line to render.
    pub pos: Pos,
    /// Parse state before that line.
    pub state: SourceState,
}

impl SourceMark {
    /// Before anything was read.
    pub const START: SourceMark = SourceMark { pos: Pos { gen: 0, off: 0 }, state: SourceState::INITIAL };
}

/// Everything needed to render from `out` on without any earlier state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in `merged.log`.
    pub out: u64,
    /// Next op to apply.
    pub at: OpPos,
    /// Each source's position and parse state, by [`SourceKind::index`].
    pub sources: [SourceMark; 3],
    /// CRC-32 of the segment starting here (set when the next checkpoint is placed).
    pub crc: u32,
}

/// Resume position of one source for the `user.cursor` xattr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CursorPos {
    /// Inode number of the file holding the position (0 before any file was seen).
    pub generation: u64,
    /// Byte just after the last record taken from it.
    pub offset: u64,
}

/// What `stat` shows of `merged.log`, derived by ingest from the source files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Owner (of `exec.log`).
    pub uid: u32,
    /// Group (of `exec.log`).
    pub gid: u32,
    /// Permission bits, never more permissive than the sources'.
    pub mode: u16,
    /// Latest modification time of the sources, Unix milliseconds.
    pub mtime_ms: i64,
}

/// A read that asked for bytes no longer renderable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BelowHorizon {
    /// Oldest offset still renderable.
    pub horizon: u64,
    /// Timestamp for the notice announcing it (latest record time before it).
    pub ts: i64,
}

/// A reader's memo of the last segment it rendered, so sequential reads never search
/// or render twice.
#[derive(Debug, Default)]
pub struct SegmentMemo {
    seg: Option<(u64, Arc<[u8]>)>,
}

/// Called after every append or close.
pub type Listener = Arc<dyn Fn() + Send + Sync>;

#[derive(Debug)]
struct Shared {
    ops: OpLog,
    checkpoints: Vec<Checkpoint>,
    size: u64,
    open: Vec<u8>,
    open_crc: crc32fast::Hasher,
    recent: VecDeque<(usize, Arc<[u8]>)>,
    horizon: u64,
    retire_pending: Option<u64>,
    cursor: [CursorPos; 3],
    meta: FileMeta,
    closed: bool,
    /// Next offset each open reader needs, by reader id.
    readers: HashMap<u64, u64>,
}

/// The merged stream of one sandbox epoch.
pub struct Timeline {
    epoch: u64,
    chains: [Arc<Chain>; 3],
    shared: Mutex<Shared>,
    listeners: Mutex<Vec<Listener>>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline").field("epoch", &self.epoch).field("size", &self.size()).finish()
    }
}

/// A checkpoint request inside a batch.
#[derive(Debug)]
struct Cut {
    at_byte: usize,
    ops: usize,
    sources: [SourceMark; 3],
}

/// Ops and rendered bytes produced by ingest outside the timeline lock, committed in
/// one step by [`Timeline::commit`].
#[derive(Debug)]
pub struct Batch {
    ops: Vec<Op>,
    bytes: Vec<u8>,
    cuts: Vec<Cut>,
    segment_len: u64,
    cursor: Option<[CursorPos; 3]>,
}

impl Batch {
    fn push_op(&mut self, op: Op) {
        // Never coalesce into an op a cut already points past.
        let open = self.cuts.last().map_or(0, |c| c.ops) < self.ops.len();
        if let (true, Some(Op::Take { source, count }), Op::Take { source: s, count: more }) =
            (open, self.ops.last_mut(), op)
        {
            if *source == s {
                *count += more;
                return;
            }
        }
        self.ops.push(op);
    }

    /// Accounts for bytes rendered since `before` and places a checkpoint when the
    /// segment is long enough and nothing is held (forcing a flush past
    /// [`FORCED_FLUSH_AT`]).
    fn rendered(&mut self, before: usize, assembler: &mut Assembler, marks: &[SourceMark; 3]) {
        self.segment_len += (self.bytes.len() - before) as u64;
        if self.segment_len < SEGMENT_TARGET {
            return;
        }
        if !assembler.is_empty() {
            if self.segment_len < FORCED_FLUSH_AT {
                return;
            }
            self.push_op(Op::FlushAll);
            let before = self.bytes.len();
            assembler.flush_all(&mut self.bytes);
            self.segment_len += (self.bytes.len() - before) as u64;
        }
        self.cuts.push(Cut { at_byte: self.bytes.len(), ops: self.ops.len(), sources: *marks });
        self.segment_len = 0;
    }

    /// Records `Base` for `gen` of `source`.
    pub fn base(&mut self, source: SourceKind, gen: u32, birth: i64) {
        self.push_op(Op::Base { source, gen, birth });
    }

    /// Takes one line of `source`, already parsed into `record`, rendering it through
    /// the live `assembler`; `marks` are every source's marks after it (where a
    /// checkpoint placed here would resume).
    pub fn take(&mut self, source: SourceKind, record: &Record, assembler: &mut Assembler, marks: &[SourceMark; 3]) {
        self.push_op(Op::Take { source, count: 1 });
        let before = self.bytes.len();
        assembler.render(record, &mut self.bytes);
        self.rendered(before, assembler, marks);
    }

    /// Records a gap of `bytes` lost bytes of `source` and renders its notice;
    /// `state` is the source's parse state at the gap.
    pub fn gap(
        &mut self,
        source: SourceKind,
        bytes: u64,
        state: &SourceState,
        assembler: &mut Assembler,
        marks: &[SourceMark; 3],
    ) {
        self.push_op(Op::Gap { source, bytes });
        let before = self.bytes.len();
        assembler.render(&gap_notice(source, bytes, state), &mut self.bytes);
        self.rendered(before, assembler, marks);
    }

    /// Flushes the fragment held for `stream` (it waited too long), or every held
    /// fragment when `stream` is `None` (the sandbox stopped).
    pub fn flush(&mut self, stream: Option<Tag>, assembler: &mut Assembler, marks: &[SourceMark; 3]) {
        let before = self.bytes.len();
        match stream {
            Some(stream) => {
                self.push_op(Op::Flush { stream });
                assembler.flush(stream, &mut self.bytes);
            }
            None => {
                self.push_op(Op::FlushAll);
                assembler.flush_all(&mut self.bytes);
            }
        }
        self.rendered(before, assembler, marks);
    }

    /// Sets the cursor positions to publish with this batch.
    pub fn set_cursor(&mut self, cursor: [CursorPos; 3]) {
        self.cursor = Some(cursor);
    }

    /// Rendered bytes so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when the batch holds neither ops nor bytes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.bytes.is_empty()
    }
}

impl Timeline {
    /// An empty timeline for epoch `epoch` over the given source chains.
    pub fn new(epoch: u64, chains: [Arc<Chain>; 3], meta: FileMeta) -> Timeline {
        let first = Checkpoint { out: 0, at: OpPos::default(), sources: [SourceMark::START; 3], crc: 0 };
        Timeline {
            epoch,
            chains,
            shared: Mutex::new(Shared {
                ops: OpLog::default(),
                checkpoints: vec![first],
                size: 0,
                open: Vec::new(),
                open_crc: crc32fast::Hasher::new(),
                recent: VecDeque::new(),
                horizon: 0,
                retire_pending: None,
                cursor: [CursorPos::default(); 3],
                meta,
                closed: false,
                readers: HashMap::new(),
            }),
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// The epoch id (new when a sandbox is recreated under the same name).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes in `merged.log`; only grows.
    pub fn size(&self) -> u64 {
        self.shared.lock().size
    }

    /// Oldest offset that can still be rendered.
    pub fn horizon(&self) -> u64 {
        self.shared.lock().horizon
    }

    /// Resume positions at the current end: per source, then the merged size.
    pub fn cursor(&self) -> ([CursorPos; 3], u64) {
        let s = self.shared.lock();
        (s.cursor, s.size)
    }

    /// Current file attributes.
    pub fn meta(&self) -> FileMeta {
        self.shared.lock().meta
    }

    /// Replaces the file attributes.
    pub fn set_meta(&self, meta: FileMeta) {
        self.shared.lock().meta = meta;
    }

    /// Number of checkpoints and encoded op bytes (index memory accounting).
    pub fn index_stats(&self) -> (usize, usize) {
        let s = self.shared.lock();
        (s.checkpoints.len(), s.ops.len())
    }

    /// Registers `listener` to run after every commit and on close.
    pub fn subscribe(&self, listener: Listener) {
        self.listeners.lock().push(listener);
    }

    fn notify(&self) {
        let listeners: Vec<Listener> = self.listeners.lock().clone();
        for listener in listeners {
            listener();
        }
    }

    /// Marks the epoch ended (sandbox removed or filesystem stopping) and wakes readers.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.notify();
    }

    /// True once [`Timeline::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Starts a batch continuing the current open segment.
    pub fn begin_batch(&self) -> Batch {
        let s = self.shared.lock();
        Batch { ops: Vec::new(), bytes: Vec::new(), cuts: Vec::new(), segment_len: s.open.len() as u64, cursor: None }
    }

    /// Appends a batch: its ops to the op log, its bytes to the end, a checkpoint at
    /// each cut. Then wakes listeners.
    pub fn commit(&self, batch: Batch) {
        if batch.is_empty() && batch.cursor.is_none() {
            return;
        }
        {
            let mut s = self.shared.lock();
            let base = s.size;
            let (mut op_i, mut byte_i) = (0, 0);
            for cut in &batch.cuts {
                for op in &batch.ops[op_i..cut.ops] {
                    s.ops.push(*op);
                }
                op_i = cut.ops;
                s.append_open(&batch.bytes[byte_i..cut.at_byte]);
                byte_i = cut.at_byte;
                s.close_segment(base + cut.at_byte as u64, cut.sources);
            }
            for op in &batch.ops[op_i..] {
                s.ops.push(*op);
            }
            s.append_open(&batch.bytes[byte_i..]);
            s.size = base + batch.bytes.len() as u64;
            if let Some(cursor) = batch.cursor {
                s.cursor = cursor;
            }
        }
        self.notify();
    }

    /// Records that reader `id` needs the bytes from `offset` on (so the generations
    /// they come from stay open).
    pub fn track_reader(&self, id: u64, offset: u64) {
        self.shared.lock().readers.insert(id, offset);
    }

    /// Forgets reader `id` (its file was closed).
    pub fn untrack_reader(&self, id: u64) {
        self.shared.lock().readers.remove(&id);
    }

    /// True when no reader needs a segment that a generation whose last line ended at
    /// `out_end` contributes to: every reader is at or past the first checkpoint at or
    /// after `out_end`. While that checkpoint does not exist yet, every reader still
    /// needs it (no reader is past a segment that is still open).
    pub fn readers_past(&self, out_end: u64) -> bool {
        let s = self.shared.lock();
        let i = s.checkpoints.partition_point(|c| c.out < out_end);
        let first_clean = s.checkpoints.get(i).map_or(u64::MAX, |c| c.out);
        s.readers.values().all(|&p| p >= first_clean)
    }

    /// The bytes of a source generation whose last line ended at merged offset
    /// `out_end` can no longer be read: move the horizon to the first checkpoint at or
    /// after it.
    pub fn retire_until(&self, out_end: u64) {
        let mut s = self.shared.lock();
        let i = s.checkpoints.partition_point(|c| c.out < out_end);
        match s.checkpoints.get(i) {
            Some(cp) => s.horizon = s.horizon.max(cp.out),
            None => {
                // Its last lines are in the open segment (or a batch not yet
                // committed): closed segments holding its lines cannot be rendered
                // again, the open one is in memory, and the first checkpoint placed
                // past `out_end` becomes the horizon.
                let open_start = s.checkpoints.last().map_or(0, |c| c.out);
                s.horizon = s.horizon.max(open_start);
                s.retire_pending = Some(s.retire_pending.unwrap_or(0).max(out_end));
            }
        }
    }

    /// Offsets of every checkpoint, ascending (the first is 0).
    pub fn checkpoint_offsets(&self) -> Vec<u64> {
        self.shared.lock().checkpoints.iter().map(|c| c.out).collect()
    }

    /// Renders closed segment `k` again from its checkpoint, bypassing every cache
    /// (verification and tests). `None` for the open segment, which has no end yet.
    pub fn rerender_segment(&self, k: usize) -> Option<Result<Vec<u8>, replay::ReplayError>> {
        let (_, cp, ops, len) = {
            let s = self.shared.lock();
            if k + 1 >= s.checkpoints.len() {
                return None;
            }
            s.replay_job(k)
        };
        Some(replay::render_segment(&self.chains, &cp, &ops, len))
    }

    /// Reads up to `max` bytes at `offset`. Returns fewer at the end of the file (none
    /// at or past it), or `BelowHorizon` when `offset` can no longer be rendered.
    pub fn read(&self, offset: u64, max: usize, memo: &mut SegmentMemo) -> Result<Vec<u8>, BelowHorizon> {
        let mut out = Vec::new();
        let mut off = offset;
        while out.len() < max {
            if let Some((start, seg)) = &memo.seg {
                if *start <= off && off < start + seg.len() as u64 {
                    let from = (off - start) as usize;
                    let n = (seg.len() - from).min(max - out.len());
                    out.extend_from_slice(&seg[from..from + n]);
                    off += n as u64;
                    continue;
                }
            }
            let job = {
                let s = self.shared.lock();
                if off >= s.size {
                    break;
                }
                let k = s.checkpoints.partition_point(|c| c.out <= off) - 1;
                if k + 1 == s.checkpoints.len() {
                    let from = (off - s.checkpoints[k].out) as usize;
                    let n = (s.open.len() - from).min(max - out.len());
                    out.extend_from_slice(&s.open[from..from + n]);
                    break;
                }
                if let Some((_, seg)) = s.recent.iter().find(|(i, _)| *i == k) {
                    memo.seg = Some((s.checkpoints[k].out, seg.clone()));
                    continue;
                }
                if s.checkpoints[k].out < s.horizon {
                    if out.is_empty() {
                        return Err(s.below_horizon());
                    }
                    break;
                }
                s.replay_job(k)
            };
            let (k, cp, ops, len) = job;
            match replay::render_segment(&self.chains, &cp, &ops, len) {
                Ok(bytes) => {
                    let seg: Arc<[u8]> = bytes.into();
                    self.shared.lock().remember(k, seg.clone());
                    memo.seg = Some((cp.out, seg));
                }
                Err(e) => {
                    tracing::warn!(epoch = self.epoch, offset = cp.out, "cannot render again: {e}");
                    let mut s = self.shared.lock();
                    s.horizon = s.horizon.max(cp.out + len);
                    if out.is_empty() {
                        return Err(s.below_horizon());
                    }
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl Shared {
    fn append_open(&mut self, bytes: &[u8]) {
        self.open.extend_from_slice(bytes);
        self.open_crc.update(bytes);
    }

    fn close_segment(&mut self, out: u64, sources: [SourceMark; 3]) {
        let k = self.checkpoints.len() - 1;
        let crc = std::mem::replace(&mut self.open_crc, crc32fast::Hasher::new()).finalize();
        self.checkpoints[k].crc = crc;
        let seg: Arc<[u8]> = std::mem::take(&mut self.open).into();
        self.remember(k, seg);
        self.checkpoints.push(Checkpoint { out, at: self.ops.end(), sources, crc: 0 });
        if let Some(pending) = self.retire_pending {
            // The segment just closed may hold lines of a retired generation: until a
            // checkpoint lands past them, the horizon follows the open segment.
            self.horizon = self.horizon.max(out);
            if pending <= out {
                self.retire_pending = None;
            }
        }
    }

    fn remember(&mut self, k: usize, seg: Arc<[u8]>) {
        if self.recent.iter().any(|(i, _)| *i == k) {
            return;
        }
        if self.recent.len() >= RECENT_SEGMENTS {
            self.recent.pop_front();
        }
        self.recent.push_back((k, seg));
    }

    /// What replaying closed segment `k` needs: its checkpoint, the ops from there on,
    /// and its length.
    fn replay_job(&self, k: usize) -> (usize, Checkpoint, Vec<u8>, u64) {
        let cp = self.checkpoints[k];
        let next = self.checkpoints[k + 1];
        let ops = self.ops.bytes_from(cp.at.op);
        let needed = (next.at.op + MAX_OP_LEN - cp.at.op) as usize;
        (k, cp, ops[..ops.len().min(needed)].to_vec(), next.out - cp.out)
    }

    fn below_horizon(&self) -> BelowHorizon {
        let i = self.checkpoints.partition_point(|c| c.out < self.horizon);
        let ts = self
            .checkpoints
            .get(i)
            .map(|c| c.sources.iter().filter_map(|m| m.state.last_ts).max().unwrap_or(0))
            .unwrap_or(0);
        BelowHorizon { horizon: self.horizon, ts }
    }
}

#[cfg(test)]
mod tests;

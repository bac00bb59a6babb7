//! The merged stream of one sandbox epoch: batches of rendered bytes and the record of
//! how they were made, committed to the epoch's store, then published (size, cursor)
//! and announced to whoever waits for them.
//!
//! Ingest builds a [`batch::Batch`] outside any lock, rendering through
//! [`render::Assembler`] (the only code that produces `merged.log` bytes); the timeline
//! appends it to the store before anyone can see it. Reads are a `pread` of the store.
//! No FUSE and no wall-clock time here.

pub mod batch;
pub mod cursor;
pub mod escape;
pub mod journal;
pub mod json;
pub mod ops;
pub mod render;
pub mod replay;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::store::{Commit, EpochStore};
use batch::{Batch, Finished};

pub use crate::source::CursorPos;

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

/// Called after every commit and on close.
pub type Listener = Arc<dyn Fn() + Send + Sync>;

/// A commit as it was stored, for what derives views from it.
#[derive(Clone, Copy, Debug)]
pub struct Committed<'a> {
    /// Logical journal offset of its record.
    pub journal_off: u64,
    /// `merged.log` offset of its first byte.
    pub start: u64,
    /// Its rendered bytes (whole lines).
    pub bytes: &'a [u8],
    /// Bytes it adds to `merged.jsonl`.
    pub json_len: u64,
    /// Source entries it records.
    pub entries: u64,
    /// Latest timestamp of those entries.
    pub entries_max_ts: Option<i64>,
    /// Latest timestamp of its lines.
    pub lines_max_ts: Option<i64>,
}

/// Called with every commit before anyone is told of it.
pub type Observer = Arc<dyn Fn(&Committed<'_>) + Send + Sync>;

#[derive(Debug)]
struct Published {
    cursor: [CursorPos; 3],
    /// Size the cursor belongs to.
    size: u64,
    meta: FileMeta,
}

/// The merged stream of one sandbox epoch.
pub struct Timeline {
    store: Arc<EpochStore>,
    published: Mutex<Published>,
    /// Bytes since the last segment checkpoint (ingest's running count).
    segment_len: Mutex<u64>,
    segment_target: AtomicU64,
    closed: AtomicBool,
    observer: Mutex<Option<Observer>>,
    listeners: Mutex<Vec<Listener>>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline").field("epoch", &self.epoch()).field("size", &self.size()).finish()
    }
}

impl Timeline {
    /// The timeline of the epoch kept in `store`, `segment_len` bytes into its open
    /// segment.
    pub fn new(store: Arc<EpochStore>, segment_len: u64, meta: FileMeta) -> Timeline {
        let size = store.size();
        Timeline {
            store,
            published: Mutex::new(Published { cursor: [CursorPos::default(); 3], size, meta }),
            segment_len: Mutex::new(segment_len),
            segment_target: AtomicU64::new(batch::SEGMENT_TARGET),
            closed: AtomicBool::new(false),
            observer: Mutex::new(None),
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// The epoch id (new when a sandbox is recreated under the same name).
    pub fn epoch(&self) -> u64 {
        self.store.header().epoch
    }

    /// First inode number of the epoch's block (stable across restarts).
    pub fn ino_base(&self) -> u64 {
        self.store.header().ino_base
    }

    /// The epoch's store.
    pub fn store(&self) -> &Arc<EpochStore> {
        &self.store
    }

    /// Bytes in `merged.log`; only grows.
    pub fn size(&self) -> u64 {
        self.store.size()
    }

    /// Reads up to `max` bytes at `offset` (fewer at the end of the file, none past it).
    pub fn read(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        self.store.read(offset, max)
    }

    /// Resume positions at the current end: per source, then the merged size they
    /// belong to.
    pub fn cursor(&self) -> ([CursorPos; 3], u64) {
        let p = self.published.lock();
        (p.cursor, p.size)
    }

    /// Current file attributes.
    pub fn meta(&self) -> FileMeta {
        self.published.lock().meta
    }

    /// Replaces the file attributes.
    pub fn set_meta(&self, meta: FileMeta) {
        self.published.lock().meta = meta;
    }

    /// Sets what sees every commit (the views) before listeners are told of it.
    pub fn set_observer(&self, observer: Observer) {
        *self.observer.lock() = Some(observer);
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
        self.closed.store(true, Ordering::Release);
        self.notify();
    }

    /// True once [`Timeline::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sets the segment length at which checkpoints are placed (the store's unit of
    /// eviction; [`batch::SEGMENT_TARGET`] unless tuned, e.g. by tests that want many).
    pub fn set_segment_target(&self, bytes: u64) {
        self.segment_target.store(bytes.max(1), Ordering::Relaxed);
    }

    /// Starts a batch at the current end, with the sources at `positions`.
    pub fn begin_batch(&self, positions: [CursorPos; 3]) -> Batch {
        let target = self.segment_target.load(Ordering::Relaxed);
        Batch::new(self.size(), *self.segment_len.lock(), target, positions)
    }

    /// Appends a batch to the store (before anyone can see it), publishes the new size
    /// with `cursor`, and wakes listeners. `held` says whether fragments are held.
    pub fn commit(&self, batch: Batch, held: bool, cursor: [CursorPos; 3]) -> io::Result<()> {
        if batch.is_empty() {
            self.published.lock().cursor = cursor;
            return Ok(());
        }
        let Finished { bytes, payload, entries_payload, cuts, span, segment_len, json_len, entries, entries_max_ts } =
            batch.finish(held);
        let start = self.store.size();
        let commit = Commit { bytes: &bytes, payload: &payload, extra: &entries_payload, cuts: &cuts, ts_range: span };
        let (journal_off, kept) = self.store.append(&commit)?;
        // Entries the store could not keep are not in merged.jsonl.
        let (json_len, entries) = if kept { (json_len, entries) } else { (0, 0) };
        *self.segment_len.lock() = segment_len;
        let observer = self.observer.lock().clone();
        if let Some(observer) = observer {
            let lines_max_ts = span.map(|(_, hi)| hi);
            observer(&Committed { journal_off, start, bytes: &bytes, json_len, entries, entries_max_ts, lines_max_ts });
        }
        {
            let mut p = self.published.lock();
            p.cursor = cursor;
            p.size = self.store.size();
        }
        self.notify();
        batch::recycle([bytes, payload, entries_payload]);
        Ok(())
    }
}

#[cfg(test)]
mod tests;

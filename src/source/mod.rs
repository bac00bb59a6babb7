//! One logical log of a sandbox (exec, runtime or kernel): its generation chain
//! `X`, `X.1` … `X.4`, rotation and truncation detection, and the ingest cursor.
//!
//! Knows nothing about merging or FUSE. The chain on disk is followed by a
//! [`tracker::ChainTracker`] (shared with the watcher thread); a [`Source`] adopts the
//! generations it finds, reads them through [`reader::LineReader`], and releases each
//! generation's descriptor as soon as ingest has read it to its end: the store, not
//! held descriptors, keeps history.

pub mod boot;
pub mod dir;
pub mod exec_json;
pub mod feed;
pub mod generation;
pub mod reader;
pub mod record;
pub mod tracker;

use std::fs::File;
use std::io;
use std::ops::{Index, IndexMut};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use feed::{Head, SourceFeed, SourceMark};
use generation::{Chain, FileIdentity, GenRecord, Generation, Pos};
use reader::LineReader;
pub use record::SourceKind;
use tracker::{ChainTracker, Place};

/// Resume position of one source for the `user.cursor` xattr (DESIGN §2.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CursorPos {
    /// Inode number of the file holding the position (0 before any file was seen).
    pub generation: u64,
    /// Byte just after the last record taken from it.
    pub offset: u64,
}

/// One value per source, indexed by [`SourceKind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerSource<T>(pub [T; 3]);

impl<T> PerSource<T> {
    /// A value for each source, in merge order.
    pub fn from_fn(mut f: impl FnMut(SourceKind) -> T) -> PerSource<T> {
        PerSource(SourceKind::ALL.map(&mut f))
    }

    /// Each source with its value, in merge order.
    pub fn iter(&self) -> impl Iterator<Item = (SourceKind, &T)> {
        SourceKind::ALL.into_iter().zip(self.0.iter())
    }

    /// Applies `f` to every value.
    pub fn map<U>(&self, mut f: impl FnMut(SourceKind, &T) -> U) -> PerSource<U> {
        PerSource::from_fn(|kind| f(kind, &self[kind]))
    }
}

impl<T> Index<SourceKind> for PerSource<T> {
    type Output = T;
    fn index(&self, kind: SourceKind) -> &T {
        &self.0[kind.index()]
    }
}

impl<T> IndexMut<SourceKind> for PerSource<T> {
    fn index_mut(&mut self, kind: SourceKind) -> &mut T {
        &mut self.0[kind.index()]
    }
}

/// What happened to the chain, for the journal: every generation adopted or sealed
/// is recorded so a replay or a restart reads exactly what ingest read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainEvent {
    /// A generation was adopted.
    Adopted(GenRecord),
    /// A generation's record changed: it became final (the record says how long it
    /// is), or its fingerprint grew with the file.
    Updated(GenRecord),
}

/// One logical log and the ingest cursor over it.
#[derive(Debug)]
pub struct Source {
    kind: SourceKind,
    chain: Arc<Chain>,
    reader: LineReader,
    feed: SourceFeed,
    tracker: Arc<Mutex<ChainTracker>>,
    events: Vec<ChainEvent>,
    /// When the live file last changed size.
    grew_at: Instant,
    /// Nothing more was complete at the last peek, and no refresh came since.
    drained: bool,
}

/// A live file that has not grown for this long has its descriptor closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(10);

impl Source {
    /// A source reading `dir/<kind file>` and its rotated siblings from their first
    /// generation; nothing is opened until the first [`Source::refresh`].
    pub fn new(kind: SourceKind, dir: &Path) -> Source {
        let chain = Arc::new(Chain::starting_at(0));
        let tracker = ChainTracker::new(kind, dir, Vec::new());
        Source::assemble(kind, chain, SourceMark::START, tracker)
    }

    /// A source resuming at `mark` over generations restored from the journal (files
    /// found again by identity, or released), continuing with sequence number
    /// `next_seq`. Generations before the mark were read already: they are only
    /// recognised when found on disk again.
    pub fn restored(
        kind: SourceKind,
        dir: &Path,
        gens: Vec<Arc<Generation>>,
        mark: SourceMark,
        next_seq: u32,
    ) -> Source {
        let chain = Arc::new(Chain::starting_at(next_seq));
        for gen in gens.iter().filter(|g| g.seq() >= mark.pos.gen) {
            if gen.seq() == mark.pos.gen {
                gen.note_seen(mark.pos.off);
            }
            chain.adopt(gen.clone());
        }
        for gen in gens.iter().filter(|g| g.seq() < mark.pos.gen) {
            gen.release();
        }
        let tracker = ChainTracker::new(kind, dir, gens);
        Source::assemble(kind, chain, mark, tracker)
    }

    fn assemble(kind: SourceKind, chain: Arc<Chain>, mark: SourceMark, tracker: ChainTracker) -> Source {
        Source {
            kind,
            reader: LineReader::new(chain.clone(), mark.pos),
            feed: SourceFeed::new(kind, mark),
            chain,
            tracker: Arc::new(Mutex::new(tracker)),
            events: Vec::new(),
            grew_at: Instant::now(),
            drained: false,
        }
    }

    /// Which log this is.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// The generation chain, shared with replays.
    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    /// The tracker of the chain on disk (the watcher thread takes snapshots with it).
    pub fn tracker(&self) -> &Arc<Mutex<ChainTracker>> {
        &self.tracker
    }

    /// Where ingest stands: the start of the first step not taken, and the parse state.
    pub fn mark(&self) -> SourceMark {
        self.feed.mark()
    }

    /// The next step (loaded once, until taken); `None` when nothing new is complete.
    /// Once `None`, the files are not read again until the next [`Source::refresh`]
    /// (the merge peeks at every source after every line it takes: an idle source
    /// would cost a `pread` each time).
    pub fn peek(&mut self) -> io::Result<Option<&Head>> {
        if self.drained {
            return Ok(None);
        }
        let head = self.feed.peek(&mut self.reader, &self.chain)?;
        self.drained = head.is_none();
        Ok(head)
    }

    /// Takes the loaded step.
    pub fn take(&mut self) -> Option<Head> {
        self.feed.take()
    }

    /// The cursor position (DESIGN §2.5) of `mark`: the inode number of the file holding
    /// it and the offset in it, or zeros before any file was seen.
    pub fn cursor_at(&self, mark: &SourceMark) -> CursorPos {
        match self.chain.get(mark.pos.gen).map(|g| g.identity.id.ino) {
            Some(generation) if generation != 0 => CursorPos { generation, offset: mark.pos.off },
            _ => CursorPos::default(),
        }
    }

    /// What happened to the chain since the last call, in order.
    pub fn take_events(&mut self) -> Vec<ChainEvent> {
        std::mem::take(&mut self.events)
    }

    /// Records of every generation whose file may still be on disk, oldest first: the
    /// ones from the ingest position on, to read, and the ones read already, to
    /// recognise. A checkpoint carries them, so it can be resumed from without the
    /// journal before it.
    pub fn records_known(&self) -> Vec<GenRecord> {
        let from = self.mark().pos.gen;
        let mut gens: Vec<Arc<Generation>> = self.tracker.lock().known();
        gens.extend(self.chain.all().into_iter().filter(|g| g.seq() >= from));
        let mut records: Vec<GenRecord> =
            gens.iter().map(|g| g.record()).filter(|r| r.seq < self.chain.next_seq()).collect();
        records.sort_by_key(|r| r.seq);
        records.dedup_by_key(|r| r.seq);
        records
    }

    /// Sequence number the next generation gets.
    pub fn next_seq(&self) -> u32 {
        self.chain.next_seq()
    }

    /// Brings the chain up to date: with `scan`, takes a snapshot of the files on disk
    /// first (the watcher does this after every change it sees; the fallback poll asks
    /// for it). Adopts new generations, detects truncation of the live one, and
    /// releases generations ingest has read to their end.
    pub fn refresh(&mut self, scan: bool) {
        let arrivals = {
            let mut tracker = self.tracker.lock();
            if scan {
                tracker.snapshot();
            }
            tracker.take_arrivals()
        };
        self.drained = false;
        self.wake_live();
        // The live generation first: a truncation in place makes a generation that
        // comes before anything found since.
        self.check_live();
        for gen in arrivals {
            self.seal_live();
            if let Some(file) = gen.file() {
                if let Ok(meta) = file.metadata() {
                    gen.observe(&file, meta.len());
                }
            }
            self.chain.adopt(gen.clone());
            tracing::debug!(file = self.kind.file_name(), seq = gen.seq(), ino = gen.identity.id.ino, "new generation");
            self.events.push(ChainEvent::Adopted(gen.record()));
        }
        self.release_consumed();
    }

    /// Seals the live generation (the producer moved on to a newer one). A trailing
    /// partial line continues in the next generation only when it was rotated (renamed
    /// into the chain), not when it was deleted or replaced.
    fn seal_live(&mut self) {
        let Some(live) = self.chain.last().filter(|g| g.sealed_len().is_none()) else { return };
        let len = live.file().and_then(|f| f.metadata().ok()).map_or(live.seen_len(), |m| m.len());
        let rotated = matches!(self.tracker.lock().place_of(&live), Some(Place::At(k)) if k > 0);
        live.seal(len, rotated && self.kind.rotated_siblings() > 0);
        self.events.push(ChainEvent::Updated(live.record()));
    }

    /// Reopens the live generation if its descriptor was closed while idle and its file
    /// changed; seals it if its file is gone.
    fn wake_live(&mut self) {
        let Some(live) = self.chain.last().filter(|g| g.sealed_len().is_none() && g.file().is_none()) else { return };
        if live.is_released() || self.tracker.lock().wake_closed(&live) {
            return;
        }
        // Gone while closed: what it held past the last size seen was never there to read.
        live.seal(live.seen_len(), false);
        live.release();
        self.events.push(ChainEvent::Updated(live.record()));
    }

    /// Closes the live generation's descriptor when ingest has read all of it and it
    /// has not grown for [`IDLE_CLOSE`], or at once when more than `budget` producer
    /// files are held. It is reopened by identity when it grows ([`Source::refresh`]).
    pub fn close_if_idle(&mut self, budget: usize) {
        let Some(live) = self.chain.last().filter(|g| g.sealed_len().is_none()) else { return };
        let Some(file) = live.file() else { return };
        // The cheap tests first: an active source costs no `fstat` here.
        let idle = self.grew_at.elapsed() >= IDLE_CLOSE || generation::held_descriptors() > budget;
        if !idle || self.reader.read_to() != (Pos { gen: live.seq(), off: live.seen_len() }) {
            return;
        }
        if file.metadata().is_ok_and(|m| m.len() == live.seen_len()) {
            live.close_idle();
        }
    }

    /// Checks the live generation: growth, truncation in place, rotation or deletion.
    fn check_live(&mut self) {
        let Some(live) = self.chain.last().filter(|g| g.sealed_len().is_none()) else { return };
        let Some(file) = live.file() else { return };
        let Ok(meta) = file.metadata() else { return };
        let fingerprint_len = live.fingerprint_len();
        if meta.len() != live.seen_len() {
            self.grew_at = Instant::now();
        }
        if !live.observe(&file, meta.len()) {
            // Truncated or rewritten in place (copytruncate), whatever its name is now:
            // the old content is gone; the same descriptor reads a new generation,
            // born at the truncation (its modification time is the closest record).
            tracing::info!(file = self.kind.file_name(), "truncated in place; new generation");
            live.seal(live.seen_len(), false);
            live.release();
            self.events.push(ChainEvent::Updated(live.record()));
            let truncated_ms = generation::mtime_ms(&meta);
            let identity = FileIdentity::of_file(&file).unwrap_or(live.identity);
            let gen = Arc::new(Generation::new(identity, truncated_ms, Some(file.clone())));
            gen.observe(&file, meta.len());
            self.chain.adopt(gen.clone());
            self.tracker.lock().adopt(gen.clone());
            self.events.push(ChainEvent::Adopted(gen.record()));
            return;
        }
        if live.fingerprint_len() > fingerprint_len {
            // A restart must recognise the file by more than its first bytes seen empty.
            self.events.push(ChainEvent::Updated(live.record()));
        }
        let Some(place) = self.tracker.lock().place_of(&live).filter(|p| *p != Place::At(0)) else { return };
        // Its size read after its place: once renamed or deleted the producer writes no
        // more to it, so only a size read after that is final.
        let Ok(meta) = file.metadata() else { return };
        let joins_next = match place {
            // Renamed into the chain: rotation.
            Place::At(_) => self.kind.rotated_siblings() > 0,
            // Deleted, or replaced by a file that is not a rotation of it.
            Place::Gone if meta.nlink() == 0 => false,
            Place::Gone => return,
        };
        live.seal(meta.len(), joins_next);
        self.events.push(ChainEvent::Updated(live.record()));
    }

    /// Closes the descriptors of generations the ingest position has moved past.
    fn release_consumed(&mut self) {
        let reading = self.mark().pos.gen;
        for gen in self.chain.all() {
            if gen.seq() < reading && !gen.is_released() {
                gen.release();
            }
        }
        self.chain.prune_before(reading);
    }
}

/// Finds the file of a recorded generation among `dir`'s chain paths by identity and
/// first bytes; `None` when it is no longer there.
pub fn find_generation(kind: SourceKind, dir: &Path, rec: &GenRecord) -> Option<File> {
    let probe = Generation::from_record(rec, None);
    let logs = dir::LogsDir::open(dir).ok()?;
    for index in 0..=kind.rotated_siblings() {
        let name = tracker::chain_name(kind, index);
        let Some(found) = logs.entry(&name).filter(|e| e.regular) else { continue };
        if !found.identity.same_as(&rec.identity) {
            continue;
        }
        if let Ok(Some(file)) = logs.open_file(&name) {
            if probe.is_file(&file) {
                return Some(file);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;

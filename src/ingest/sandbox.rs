//! Ingest of one sandbox epoch: keep the three sources up to date, merge their new
//! lines by `(timestamp, source, position)` (DESIGN §2.2), and commit each batch to the
//! timeline, which stores it before anyone can see it.
//!
//! A new epoch starts at every source's first byte. A resumed one replays the store's
//! journal from its last checkpoint, so it stands exactly where it stood (positions,
//! parse state, held fragments), renders any damaged bytes again, and announces what
//! the producer rotated away while msbfs was not running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::access;
use crate::source::boot::{self, BootError, BootId};
use crate::source::dir::Access;
use crate::source::feed::{SourceMark, Step};
use crate::source::generation::{GenRecord, Pos};
use crate::source::record::{fragments_lost_notice, missed_notice, Tag};
use crate::source::tracker::ChainTracker;
use crate::source::{find_generation, PerSource, Source, SourceKind};
use crate::store::{EpochStore, Recovered};
use crate::timeline::batch::Batch;
use crate::timeline::journal::{decode_entries, Checkpoint};
use crate::timeline::render::Assembler;
use crate::timeline::replay::{entries_at, start_checkpoint, ReplayError, Replayer};
use crate::timeline::{CursorPos, FileMeta, Timeline};

/// Rendered bytes after which a batch is committed even while more lines are ready,
/// so a large history becomes visible progressively and batch memory stays bounded.
const COMMIT_BYTES: usize = 1 << 20;
/// A line fragment waiting this long for the rest of its line is rendered as a line of
/// its own (a prompt, a progress bar).
pub const FLUSH_AFTER: Duration = Duration::from_millis(250);
/// Rendered bytes after which new generations are adopted within one poll, so a long
/// catch-up reads a fast producer's files while they are still there.
const REFRESH_BYTES: usize = 256 << 10;

/// What the first batch of an epoch records before anything else.
#[derive(Debug)]
enum Prelude {
    /// A new epoch: a segment checkpoint at offset 0.
    Start,
    /// A resumed epoch that could not continue exactly where it stood.
    Resume {
        /// Held fragments to flush before the sources jump.
        flush_first: bool,
        /// The sources jumped (a resume checkpoint records where to).
        jumped: bool,
        /// Sources whose producer rotated away what it wrote meanwhile.
        missed: Vec<SourceKind>,
        /// Fragments held before the stop could not be rebuilt.
        fragments_lost: bool,
    },
}

/// The ingest side of one sandbox epoch.
pub struct SandboxIngest {
    name: String,
    logs: PathBuf,
    timeline: Arc<Timeline>,
    sources: PerSource<Source>,
    /// The live end's line reassembly.
    assembler: Assembler,
    /// When ingest first saw each held fragment (wall clock; decisions taken from it
    /// are recorded as `Flush` ops, so replay never consults the clock).
    held_since: HashMap<(Tag, u64), Instant>,
    prelude: Option<Prelude>,
    warned_read: PerSource<bool>,
    /// Owner and mode of the directories from `/` to `sandboxes/`.
    context: Vec<Access>,
    /// The owner and mode of `merged.log` must be computed again.
    access_stale: bool,
    /// The last `boot-error.json` record taken (kept in the epoch's directory).
    boot_seen: Option<BootId>,
    /// When `boot-error.json` was last looked at.
    boot_checked: Instant,
}

/// Longest time between two looks at `boot-error.json` while the sandbox writes (the
/// fallback poll looks too): not at every poll of a busy sandbox.
const BOOT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The file in an epoch's directory that names the last boot-error record taken.
const BOOT_SEEN: &str = "boot-error.seen";

const NO_META: FileMeta = FileMeta { uid: 0, gid: 0, mode: 0o400, mtime_ms: 0 };

impl SandboxIngest {
    /// Starts a new epoch, kept in `store`, for the logs directory `logs`.
    pub fn create(name: &str, logs: &Path, store: Arc<EpochStore>) -> SandboxIngest {
        let sources = PerSource::from_fn(|kind| Source::new(kind, logs));
        SandboxIngest::assemble(
            name,
            logs,
            Timeline::new(store, 0, NO_META),
            sources,
            Assembler::default(),
            Prelude::Start,
        )
    }

    fn assemble(
        name: &str,
        logs: &Path,
        timeline: Timeline,
        sources: PerSource<Source>,
        assembler: Assembler,
        prelude: Prelude,
    ) -> SandboxIngest {
        let ingest = SandboxIngest {
            name: name.to_string(),
            logs: logs.to_path_buf(),
            timeline: Arc::new(timeline),
            sources,
            assembler,
            held_since: HashMap::new(),
            prelude: Some(prelude),
            warned_read: PerSource::default(),
            context: Vec::new(),
            access_stale: true,
            boot_seen: None,
            boot_checked: Instant::now(),
        };
        let seen = std::fs::read(ingest.timeline.store().dir().join(BOOT_SEEN)).ok();
        let ingest = SandboxIngest { boot_seen: seen.as_deref().and_then(BootId::decode), ..ingest };
        ingest.timeline.set_meta(ingest.file_meta());
        ingest
    }

    /// Resumes the epoch kept in `store` from what recovery found. Fails (and the
    /// caller starts a new epoch) only when the journal's checkpoint is unreadable.
    pub fn resume(
        name: &str,
        logs: &Path,
        store: Arc<EpochStore>,
        recovered: Recovered,
    ) -> Result<SandboxIngest, String> {
        for repair in &recovered.repairs {
            tracing::warn!(sandbox = ?name, "store recovery: {repair}");
        }
        let Some(first) = recovered.commits.first() else {
            // Nothing was committed: the epoch starts at every source's first byte.
            return Ok(SandboxIngest::create(name, logs, store));
        };
        let cut = *first.cuts.get(recovered.resume_cut).ok_or("no checkpoint to resume from")?;
        let (checkpoint, rest) = entries_at(&first.payload, cut.payload_at).map_err(|e| e.to_string())?;
        let resolve = |kind: SourceKind, rec: &GenRecord| find_generation(kind, logs, rec);
        let mut replayer = Replayer::new(&checkpoint, &resolve);
        let mut expect_from = cut.out;
        for (i, commit) in recovered.commits.iter().enumerate() {
            let entries = if i == 0 { Some(rest.clone()) } else { decode_entries(&commit.payload) };
            match entries {
                Some(entries) => entries.iter().for_each(|e| replayer.apply(e)),
                None => replayer.stop_rendering(ReplayError::Malformed),
            }
            let out = replayer.take_output();
            let damaged = recovered.damaged.contains(&i);
            if replayer.failure().is_none() && !commit.is_unstored() {
                let verdict = if expect_from > commit.data_start {
                    // The commit holding the checkpoint: only its bytes from the cut on.
                    let len = (commit.data_end - expect_from) as usize;
                    store.read(expect_from, len).is_ok_and(|stored| stored == out)
                } else if damaged {
                    store.repair(commit, &out).unwrap_or(false)
                } else {
                    commit.matches(&out)
                };
                if !verdict {
                    replayer.stop_rendering(ReplayError::Mismatch);
                } else if damaged {
                    tracing::info!(sandbox = ?name, from = commit.data_start, "damaged bytes rendered again from the sources");
                }
            }
            if damaged && replayer.failure().is_some() {
                tracing::warn!(sandbox = ?name, from = commit.data_start, to = commit.data_end,
                    "damaged bytes cannot be rendered again; they now read as a notice");
                if let Err(e) = store.give_up(commit) {
                    tracing::warn!(sandbox = ?name, "cannot write the notice: {e}");
                }
            }
            expect_from = commit.data_end;
        }
        if let Some(why) = replayer.failure() {
            tracing::info!(sandbox = ?name, "resuming from the recorded positions ({why})");
        }
        let state = replayer.into_state();
        let mut flush_first = false;
        let mut assembler = state.assembler;
        let mut missed = Vec::new();
        let sources = PerSource::from_fn(|kind| {
            let gens = state.gens[kind].clone();
            let mut mark = state.marks[kind];
            let at_mark = gens.iter().find(|g| g.seq() == mark.pos.gen);
            if at_mark.is_some_and(|g| g.is_released()) {
                // What the producer wrote after this point was rotated away meanwhile:
                // continue at the next generation still on disk.
                missed.push(kind);
                let next = gens.iter().find(|g| g.seq() > mark.pos.gen && !g.is_released());
                let gen = next.map_or(state.next_seq[kind], |g| g.seq());
                mark = SourceMark { pos: Pos { gen, off: 0 }, based_gen: None, ..mark };
            }
            Source::restored(kind, logs, gens, mark, state.next_seq[kind])
        });
        if !missed.is_empty() && !assembler.is_empty() {
            flush_first = true;
        }
        if state.fragments_lost {
            assembler = Assembler::default();
        }
        let segment_len = store.size() - store.open_segment().0;
        let prelude =
            Prelude::Resume { flush_first, jumped: !missed.is_empty(), missed, fragments_lost: state.fragments_lost };
        let timeline = Timeline::new(store, segment_len, NO_META);
        Ok(SandboxIngest::assemble(name, logs, timeline, sources, assembler, prelude))
    }

    /// The sandbox name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The logs directory read.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// The timeline this ingest appends to.
    pub fn timeline(&self) -> &Arc<Timeline> {
        &self.timeline
    }

    /// The chain trackers of the sources, for the watcher thread.
    pub fn trackers(&self) -> PerSource<Arc<Mutex<ChainTracker>>> {
        self.sources.map(|_, s| s.tracker().clone())
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            marks: self.sources.map(|_, s| s.mark()),
            gens: self.sources.map(|_, s| s.records_known()),
            next_seq: self.sources.map(|_, s| s.next_seq()),
        }
    }

    fn cursor(&self) -> [CursorPos; 3] {
        self.sources.map(|_, s| s.cursor_at(&s.mark())).0
    }

    /// Brings every source's chain up to date and records what changed in `batch`.
    fn refresh(&mut self, batch: &mut Batch, scan: bool) {
        for kind in SourceKind::ALL {
            let source = &mut self.sources[kind];
            source.refresh(scan);
            for event in source.take_events() {
                batch.chain_event(kind, event);
            }
        }
    }

    fn write_prelude(&mut self, batch: &mut Batch) {
        match self.prelude.take() {
            None => {}
            Some(Prelude::Start) => batch.checkpoint(start_checkpoint(), true),
            Some(Prelude::Resume { flush_first, jumped, missed, fragments_lost }) => {
                if flush_first {
                    batch.flush(None, &mut self.assembler);
                }
                if jumped {
                    batch.checkpoint(self.checkpoint(), false);
                }
                for kind in missed {
                    let notice = missed_notice(kind, None, &self.sources[kind].mark().state);
                    tracing::warn!(sandbox = ?self.name, file = kind.file_name(),
                        "what the producer wrote while msbfs was not running was rotated away");
                    batch.missed(kind, None, &notice, &mut self.assembler);
                }
                if fragments_lost {
                    let notice = fragments_lost_notice(&self.sources[SourceKind::Exec].mark().state);
                    batch.fragments_lost(&notice, &mut self.assembler);
                }
            }
        }
    }

    fn commit(&mut self, batch: Batch) {
        let held = !self.assembler.is_empty();
        let cursor = self.cursor();
        if let Err(e) = self.timeline.commit(batch, held, cursor) {
            tracing::warn!(sandbox = ?self.name, "cannot store what was rendered: {e}");
        }
    }

    /// Reads everything new from the sources and commits it. With `scan`, the chains
    /// on disk are scanned first (the fallback poll; otherwise the watcher did it).
    pub fn poll(&mut self, scan: bool) {
        let mut batch = self.timeline.begin_batch(self.cursor());
        self.write_prelude(&mut batch);
        self.refresh(&mut batch, scan);
        let mut boot = if scan || self.boot_checked.elapsed() >= BOOT_CHECK_EVERY {
            self.boot_checked = Instant::now();
            self.new_boot_error()
        } else {
            None
        };
        let boot_id = boot.as_ref().map(|b| b.id);
        let mut refreshed_at = 0;
        loop {
            let mut best: Option<(i64, SourceKind)> = None;
            for kind in SourceKind::ALL {
                match self.sources[kind].peek() {
                    Ok(Some(head)) => {
                        let ts = head.step.record().ts;
                        if best.is_none_or(|(b, _)| ts < b) {
                            best = Some((ts, kind));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if !std::mem::replace(&mut self.warned_read[kind], true) {
                            tracing::warn!(sandbox = ?self.name, file = kind.file_name(), "read failed: {e}");
                        }
                    }
                }
            }
            // A new boot error takes its place in the merge by its time.
            if boot.as_ref().is_some_and(|b| best.is_none_or(|(ts, _)| b.record.ts < ts)) {
                let b = boot.take().expect("a boot error");
                batch.boot_error(&b.record, &b.raw, &mut self.assembler);
                continue;
            }
            let Some((_, kind)) = best else { break };
            let head = self.sources[kind].take().expect("a loaded head");
            let after = self.sources[kind].cursor_at(&head.next);
            match head.step {
                Step::Record(record) => batch.take(kind, &record, after, &mut self.assembler),
                Step::Gap { bytes, notice } => batch.gap(kind, bytes, &notice, after, &mut self.assembler),
                Step::Lost { generations, notice } => {
                    batch.lost(kind, generations, &notice, after, &mut self.assembler)
                }
            }
            batch.moved(kind, head.next);
            if batch.segment_due(&mut self.assembler) {
                let checkpoint = self.checkpoint();
                batch.checkpoint(checkpoint, true);
            }
            if batch.len() >= COMMIT_BYTES {
                self.commit(batch);
                batch = self.timeline.begin_batch(self.cursor());
                self.refresh(&mut batch, false);
                refreshed_at = 0;
            } else if batch.len() - refreshed_at >= REFRESH_BYTES {
                self.refresh(&mut batch, false);
                refreshed_at = batch.len();
            }
        }
        self.flush_due(&mut batch, Instant::now());
        self.commit(batch);
        if let Some(id) = boot_id {
            self.boot_seen = Some(id);
            let path = self.timeline.store().dir().join(BOOT_SEEN);
            if let Err(e) = std::fs::write(&path, id.encode()) {
                tracing::warn!(sandbox = ?self.name, "cannot record the boot error taken: {e}");
            }
        }
        for kind in SourceKind::ALL {
            self.access_stale |= self.sources[kind].tracker().lock().take_accesses_changed();
        }
        if std::mem::take(&mut self.access_stale) || scan {
            self.timeline.set_meta(self.file_meta());
        }
        let budget = crate::limits::cached_budget().sources;
        for kind in SourceKind::ALL {
            self.sources[kind].close_if_idle(budget);
        }
    }

    /// A `boot-error.json` record not taken yet, if there is one.
    fn new_boot_error(&self) -> Option<BootError> {
        let logs = crate::source::dir::LogsDir::open(&self.logs).ok()?;
        let fallback = self.timeline.meta().mtime_ms;
        boot::read(&logs, fallback).filter(|b| Some(b.id) != self.boot_seen)
    }

    /// Flushes fragments that waited [`FLUSH_AFTER`] and starts the clock of new ones.
    /// Each fragment has its own clock: one completed and another begun in the same
    /// stream between two polls do not share one.
    fn flush_due(&mut self, batch: &mut Batch, now: Instant) {
        let held: Vec<(Tag, u64)> = self.assembler.held_fragments().collect();
        self.held_since.retain(|fragment, _| held.contains(fragment));
        for fragment in held {
            let since = *self.held_since.entry(fragment).or_insert(now);
            if now.duration_since(since) >= FLUSH_AFTER {
                batch.flush(Some(fragment.0), &mut self.assembler);
                self.held_since.remove(&fragment);
            }
        }
    }

    /// When the oldest held fragment falls due, if any is held.
    pub fn next_flush(&self) -> Option<Instant> {
        self.held_since.values().min().map(|since| *since + FLUSH_AFTER)
    }

    /// Flushes every held fragment and closes the timeline. When msbfs is stopping
    /// (`resume_later`), a checkpoint at the end lets the next start continue there
    /// without replaying anything.
    pub fn finish(&mut self, resume_later: bool) {
        let mut batch = self.timeline.begin_batch(self.cursor());
        self.write_prelude(&mut batch);
        if !self.assembler.is_empty() {
            batch.flush(None, &mut self.assembler);
        }
        self.held_since.clear();
        if resume_later {
            let checkpoint = self.checkpoint();
            batch.checkpoint(checkpoint, false);
        }
        self.commit(batch);
        self.timeline.close();
    }

    /// The owner and mode of `merged.log`, from every file it renders from and every
    /// directory on the way ([`access::merged_access`]), and the newest modification
    /// time of the sources seen.
    fn file_meta(&self) -> FileMeta {
        let mut inputs = self.context.clone();
        let sandbox_dir = self.logs.parent().map(std::fs::symlink_metadata);
        let logs = crate::source::dir::LogsDir::open(&self.logs).and_then(|d| d.access());
        match (sandbox_dir, logs) {
            (Some(Ok(sandbox)), Ok(logs)) => {
                inputs.push(Access::of(&sandbox));
                inputs.push(logs);
            }
            // Cannot tell who may read: only root.
            _ => return FileMeta { mode: 0, ..self.timeline.meta() },
        }
        let mut mtime_ms = self.timeline.meta().mtime_ms;
        for kind in SourceKind::ALL {
            inputs.extend_from_slice(self.sources[kind].tracker().lock().accesses());
            let held = self.sources[kind].chain().all().into_iter().filter_map(|g| g.file());
            for meta in held.filter_map(|f| f.metadata().ok()) {
                inputs.push(Access::of(&meta));
                mtime_ms = mtime_ms.max(crate::source::generation::mtime_ms(&meta));
            }
        }
        let (uid, gid, mode) = access::merged_access(&inputs);
        FileMeta { uid, gid, mode, mtime_ms }
    }

    /// Sets the owner and mode of the directories above the sandbox directory (from `/`
    /// to `sandboxes/`), which `merged.log` must respect too.
    pub fn set_context(&mut self, context: &[Access]) {
        if self.context != context {
            self.context = context.to_vec();
            self.access_stale = true;
        }
    }

    /// The sandbox's directory entry or its `logs/` changed: its owner and mode are
    /// looked at again with the next poll.
    pub fn note_attrs_changed(&mut self) {
        self.access_stale = true;
    }
}

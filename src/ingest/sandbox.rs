//! Ingest of one sandbox epoch: refresh the three sources, merge their new lines by
//! `(timestamp, source, position)` and append the decisions and rendered bytes to the
//! timeline.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::source::generation::{FileId, Pos};
use crate::source::reader::Next;
use crate::source::record::{parse_line, Record, SourceState, Tag};
use crate::source::{Arrivals, Source, SourceKind};
use crate::timeline::render::{apply_base, Assembler};
use crate::timeline::{CursorPos, FileMeta, SourceMark, Timeline};

/// Rendered bytes after which a batch is committed even while more lines are ready,
/// so a large history becomes visible progressively and batch memory stays bounded.
const COMMIT_BYTES: usize = 1 << 20;
/// A line fragment waiting this long for the rest of its line is rendered as a line of
/// its own (a prompt, a progress bar).
pub const FLUSH_AFTER: Duration = Duration::from_millis(250);
/// Bytes of deleted generations per source kept open for readers that still need
/// them; beyond this the oldest is released anyway, so a reader that never moves
/// cannot pin deleted files (and their disk space) forever.
const MAX_PINNED_DELETED_BYTES: u64 = 128 << 20;
/// Rendered bytes after which the chains are scanned again within one poll, so a
/// long catch-up cannot let a fast producer rotate generations away unseen.
const REFRESH_BYTES: usize = 256 << 10;

/// A parsed line waiting to be merged.
#[derive(Debug)]
struct Head {
    record: Record,
    /// Generation the line starts in (the one whose bytes it needs first).
    start_gen: u32,
    end: Pos,
    state_after: SourceState,
    /// `Base` op to record before the line (first line of a generation).
    base: Option<(u32, i64)>,
    /// Set when this head is a gap notice rather than a line.
    gap: Option<u64>,
}

/// One source with its merge state.
#[derive(Debug)]
struct Feed {
    source: Source,
    taken: SourceMark,
    based_gen: Option<u32>,
    head: Option<Head>,
}

impl Feed {
    fn load_head(&mut self) -> std::io::Result<()> {
        if self.head.is_some() {
            return Ok(());
        }
        let kind = self.source.kind();
        let chain = self.source.chain().clone();
        let taken = self.taken;
        let based_gen = self.based_gen;
        self.head = match self.source.next_line()? {
            Next::Line(raw, start, end) => {
                let mut state = taken.state;
                let base = if based_gen != Some(start.gen) {
                    chain.get(start.gen).map(|gen| {
                        apply_base(kind, gen.birth_ms, &mut state);
                        (start.gen, gen.birth_ms)
                    })
                } else {
                    None
                };
                let record = parse_line(kind, raw, &mut state);
                Some(Head { record, start_gen: start.gen, end, state_after: state, base, gap: None })
            }
            Next::Gap { bytes } => {
                let record = crate::timeline::render::gap_notice(kind, bytes, &taken.state);
                let end = self.source.pos();
                Some(Head { record, start_gen: end.gen, end, state_after: taken.state, base: None, gap: Some(bytes) })
            }
            Next::Pending => None,
        };
        Ok(())
    }
}

/// The ingest side of one sandbox epoch.
pub struct SandboxIngest {
    name: String,
    logs: PathBuf,
    logs_id: FileId,
    timeline: Arc<Timeline>,
    feeds: [Feed; 3],
    /// Per source: merged offset where the last line of each generation ended.
    gen_ends: [BTreeMap<u32, u64>; 3],
    /// The live end's line reassembly.
    assembler: Assembler,
    /// When ingest first saw each held fragment (wall clock; decisions taken from it
    /// are recorded as `Flush` ops, so replay never consults the clock).
    held_since: HashMap<(Tag, u64), Instant>,
}

impl SandboxIngest {
    /// Starts a new epoch for the logs directory `logs` (identified by `logs_id`).
    pub fn new(name: &str, logs: &Path, logs_id: FileId, epoch: u64) -> SandboxIngest {
        SandboxIngest::with_arrivals(name, logs, logs_id, epoch, Arc::default())
    }

    /// Like [`SandboxIngest::new`], adopting files the watcher opened on arrival.
    pub fn with_arrivals(
        name: &str,
        logs: &Path,
        logs_id: FileId,
        epoch: u64,
        arrivals: Arc<Arrivals>,
    ) -> SandboxIngest {
        let feeds = SourceKind::ALL.map(|kind| Feed {
            source: Source::with_arrivals(kind, logs, arrivals.clone()),
            taken: SourceMark::START,
            based_gen: None,
            head: None,
        });
        let chains = [0, 1, 2].map(|i| feeds[i].source.chain().clone());
        let meta = FileMeta { uid: 0, gid: 0, mode: 0o400, mtime_ms: 0 };
        SandboxIngest {
            name: name.to_string(),
            logs: logs.to_path_buf(),
            logs_id,
            timeline: Arc::new(Timeline::new(epoch, chains, meta)),
            feeds,
            gen_ends: Default::default(),
            assembler: Assembler::default(),
            held_since: HashMap::new(),
        }
    }

    /// The sandbox name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Identity of the logs directory this epoch reads.
    pub fn logs_id(&self) -> FileId {
        self.logs_id
    }

    /// The timeline this ingest appends to.
    pub fn timeline(&self) -> &Arc<Timeline> {
        &self.timeline
    }

    fn marks(&self) -> [SourceMark; 3] {
        [0, 1, 2].map(|i| self.feeds[i].taken)
    }

    fn cursor(&self) -> [CursorPos; 3] {
        [0, 1, 2].map(|i| {
            let feed = &self.feeds[i];
            let pos = feed.taken.pos;
            let generation = feed.source.chain().get(pos.gen).map_or(0, |g| g.id.ino);
            CursorPos { generation, offset: if generation == 0 { 0 } else { pos.off } }
        })
    }

    /// Brings every source's chain up to date (new generations opened, so a fast
    /// producer cannot rotate them away unseen) and releases deleted generations that
    /// no reader needs any more, moving the horizon past their bytes.
    fn refresh_sources(&mut self) {
        for i in 0..3 {
            let report = self.feeds[i].source.refresh();
            let chain = self.feeds[i].source.chain().clone();
            let len_of = |seq: u32| chain.get(seq).and_then(|g| g.sealed_len()).unwrap_or(0);
            let mut pinned: u64 = report.deleted.iter().map(|&seq| len_of(seq)).sum();
            for seq in report.deleted {
                let end = self.gen_ends[i].get(&seq).copied().unwrap_or(0);
                if !self.timeline.readers_past(end) && pinned <= MAX_PINNED_DELETED_BYTES {
                    break;
                }
                pinned -= len_of(seq);
                self.feeds[i].source.release(seq);
                self.gen_ends[i].remove(&seq);
                self.timeline.retire_until(end);
            }
        }
    }

    /// Reads everything new from the sources and appends it to the timeline.
    pub fn poll(&mut self) {
        self.refresh_sources();
        let mut batch = self.timeline.begin_batch();
        let mut out = self.timeline.size();
        let mut took_any = false;
        let mut refreshed_at = 0;
        loop {
            for i in 0..3 {
                if let Err(e) = self.feeds[i].load_head() {
                    tracing::warn!(sandbox = %self.name, source = SourceKind::ALL[i].file_name(), "read failed: {e}");
                }
            }
            let next = (0..3).filter_map(|i| self.feeds[i].head.as_ref().map(|h| (h.record.ts, i))).min();
            let Some((_, i)) = next else { break };
            let head = self.feeds[i].head.take().expect("chosen head exists");
            let kind = SourceKind::ALL[i];
            if let Some((gen, birth)) = head.base {
                batch.base(kind, gen, birth);
                self.feeds[i].based_gen = Some(gen);
            }
            self.feeds[i].taken = SourceMark { pos: head.end, state: head.state_after };
            let marks = self.marks();
            let before = batch.len();
            match head.gap {
                Some(bytes) => batch.gap(kind, bytes, &head.state_after, &mut self.assembler, &marks),
                None => batch.take(kind, &head.record, &mut self.assembler, &marks),
            }
            out += (batch.len() - before) as u64;
            self.gen_ends[i].insert(head.start_gen, out);
            took_any = true;
            if batch.len() >= COMMIT_BYTES {
                batch.set_cursor(self.cursor());
                self.timeline.commit(batch);
                self.refresh_sources();
                batch = self.timeline.begin_batch();
                refreshed_at = 0;
            } else if batch.len() - refreshed_at >= REFRESH_BYTES {
                self.refresh_sources();
                refreshed_at = batch.len();
            }
        }
        self.flush_due(&mut batch, Instant::now());
        if took_any {
            batch.set_cursor(self.cursor());
        }
        self.timeline.commit(batch);
        self.timeline.set_meta(self.file_meta());
    }

    /// Flushes fragments that waited [`FLUSH_AFTER`] and starts the clock of new ones.
    /// Each fragment has its own clock: one completed and another begun in the same
    /// stream between two polls do not share one.
    fn flush_due(&mut self, batch: &mut crate::timeline::Batch, now: Instant) {
        let held: Vec<(Tag, u64)> = self.assembler.held_fragments().collect();
        self.held_since.retain(|fragment, _| held.contains(fragment));
        for fragment in held {
            let since = *self.held_since.entry(fragment).or_insert(now);
            if now.duration_since(since) >= FLUSH_AFTER {
                let marks = self.marks();
                batch.flush(Some(fragment.0), &mut self.assembler, &marks);
                self.held_since.remove(&fragment);
            }
        }
    }

    /// When the oldest held fragment falls due, if any is held.
    pub fn next_flush(&self) -> Option<Instant> {
        self.held_since.values().min().map(|since| *since + FLUSH_AFTER)
    }

    /// Flushes every held fragment (the sandbox stopped or msbfs is stopping) and
    /// closes the timeline.
    pub fn finish(&mut self) {
        if !self.assembler.is_empty() {
            let mut batch = self.timeline.begin_batch();
            let marks = self.marks();
            batch.flush(None, &mut self.assembler, &marks);
            self.timeline.commit(batch);
        }
        self.timeline.close();
    }

    /// Owner of `exec.log`, permissions no more permissive than any source's.
    fn file_meta(&self) -> FileMeta {
        let metas: Vec<std::fs::Metadata> = self
            .feeds
            .iter()
            .filter_map(|f| f.source.chain().last().and_then(|g| g.file()).and_then(|f| f.metadata().ok()))
            .collect();
        let dir = std::fs::metadata(&self.logs).ok();
        let owner = metas.first().or(dir.as_ref());
        let (uid, gid) = owner.map_or((0, 0), |m| (m.uid(), m.gid()));
        let mut mode = 0o444u32;
        for m in &metas {
            let readable = m.mode();
            let owner_bit = if m.uid() == uid {
                readable & 0o400
            } else if m.gid() == gid {
                (readable & 0o040) << 3
            } else {
                (readable & 0o004) << 6
            };
            let group_bit = if m.gid() == gid { readable & 0o040 } else { (readable & 0o004) << 3 };
            mode &= owner_bit | group_bit | (readable & 0o004);
        }
        if metas.is_empty() {
            mode = 0o400;
        }
        let mtime_ms = metas.iter().map(|m| m.mtime() * 1000 + m.mtime_nsec() / 1_000_000).max().unwrap_or(0);
        FileMeta { uid, gid, mode: mode as u16, mtime_ms }
    }
}

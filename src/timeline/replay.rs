//! Rendering again from a checkpoint, by the same feeds and renderer ingest used:
//!
//! - the verification path: re-rendering any retained segment from its checkpoint
//!   must give the stored bytes ([`replay_segment`]);
//! - how a restart rebuilds the exact state at the end of the store (source
//!   positions, parse state, held fragments) and renders damaged bytes again
//!   ([`Replayer`]). Where the sources no longer hold what a replay needs, it goes on
//!   following only the positions the journal recorded.

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::journal::{decode_entries, Checkpoint, Entry};
use super::ops::Op;
use super::render::Assembler;
use crate::source::feed::{SourceFeed, SourceMark, Step};
use crate::source::generation::{Chain, GenRecord, Generation};
use crate::source::reader::LineReader;
use crate::source::record::{fragments_lost_notice, missed_notice, Record, Tag};
use crate::source::{PerSource, SourceKind};
use crate::store::{EpochStore, Segment};

/// Finds the file of a recorded generation (by identity and first bytes).
pub type Resolve<'a> = &'a dyn Fn(SourceKind, &GenRecord) -> Option<File>;

/// Why a replay could not render.
#[derive(Debug)]
pub enum ReplayError {
    /// A source or the store could not be read.
    Io(io::Error),
    /// Source bytes the ops refer to are gone (the generation is no longer on disk).
    Missing(SourceKind),
    /// The journal record is malformed or does not start where expected.
    Malformed,
    /// The bytes differ from what was rendered live.
    Mismatch,
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Io(e) => write!(f, "reading failed: {e}"),
            ReplayError::Missing(s) => write!(f, "bytes of {} are no longer on disk", s.file_name()),
            ReplayError::Malformed => f.write_str("the journal record is malformed"),
            ReplayError::Mismatch => f.write_str("the sources no longer give the bytes rendered live"),
        }
    }
}

impl From<io::Error> for ReplayError {
    fn from(e: io::Error) -> Self {
        ReplayError::Io(e)
    }
}

/// Where a replay ended: what ingest needs to continue from there.
#[derive(Debug)]
pub struct ReplayState {
    /// Each source's mark.
    pub marks: PerSource<SourceMark>,
    /// Each source's generations that may still be on disk, oldest first (those from
    /// its position on with their files if found, the ones before it released).
    pub gens: PerSource<Vec<Arc<Generation>>>,
    /// Each source's next generation sequence number.
    pub next_seq: PerSource<u32>,
    /// The held line fragments (empty unless the replay rendered to the end).
    pub assembler: Assembler,
    /// True when the replay rendered every op, so the state is exact; false when it
    /// fell back to the positions the journal recorded.
    pub exact: bool,
    /// True when fragments were held at the end but could not be rebuilt.
    pub fragments_lost: bool,
}

/// Re-renders from a checkpoint, entry by entry.
pub struct Replayer<'a> {
    resolve: Resolve<'a>,
    /// Generations read before the checkpoint, still to be recognised on disk.
    older: PerSource<Vec<Arc<Generation>>>,
    chains: PerSource<Arc<Chain>>,
    readers: PerSource<LineReader>,
    feeds: PerSource<SourceFeed>,
    next_seq: PerSource<u32>,
    assembler: Assembler,
    out: Vec<u8>,
    rendering: bool,
    failure: Option<ReplayError>,
    held: bool,
}

impl<'a> Replayer<'a> {
    /// A replayer standing at `cp`, with each generation's file found by `resolve`.
    pub fn new(cp: &Checkpoint, resolve: Resolve<'a>) -> Replayer<'a> {
        let chains = PerSource::from_fn(|kind| Replayer::chain_of(kind, cp, resolve));
        Replayer {
            resolve,
            older: Replayer::older_of(cp),
            readers: PerSource::from_fn(|kind| LineReader::new(chains[kind].clone(), cp.marks[kind].pos)),
            feeds: PerSource::from_fn(|kind| SourceFeed::new(kind, cp.marks[kind])),
            next_seq: cp.next_seq,
            chains,
            assembler: Assembler::default(),
            out: Vec::new(),
            rendering: true,
            failure: None,
            held: false,
        }
    }

    fn chain_of(kind: SourceKind, cp: &Checkpoint, resolve: Resolve<'_>) -> Arc<Chain> {
        let from = cp.marks[kind].pos.gen;
        let chain = Arc::new(Chain::starting_at(from));
        for rec in cp.gens[kind].iter().filter(|r| r.seq >= from) {
            let file = resolve(kind, rec).map(Arc::new);
            chain.adopt(Arc::new(Generation::from_record(rec, file)));
        }
        chain
    }

    fn older_of(cp: &Checkpoint) -> PerSource<Vec<Arc<Generation>>> {
        PerSource::from_fn(|kind| {
            let from = cp.marks[kind].pos.gen;
            cp.gens[kind].iter().filter(|r| r.seq < from).map(|r| Arc::new(Generation::from_record(r, None))).collect()
        })
    }

    /// The marks reached so far.
    pub fn marks(&self) -> PerSource<SourceMark> {
        self.feeds.map(|_, f| f.mark())
    }

    /// Why rendering stopped, if it did.
    pub fn failure(&self) -> Option<&ReplayError> {
        self.failure.as_ref()
    }

    /// The bytes rendered since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Stops rendering (the rendered bytes stopped matching); from now on only chain
    /// events and recorded positions are followed.
    pub fn stop_rendering(&mut self, why: ReplayError) {
        if self.rendering {
            self.rendering = false;
            self.failure = Some(why);
        }
    }

    /// Applies one entry of the journal.
    pub fn apply(&mut self, entry: &Entry) {
        if let Err(e) = self.try_apply(entry) {
            self.stop_rendering(e);
        }
    }

    fn try_apply(&mut self, entry: &Entry) -> Result<(), ReplayError> {
        match entry {
            Entry::Adopted(kind, rec) => {
                let chain = &self.chains[*kind];
                if rec.seq >= chain.next_seq() {
                    let file = (self.resolve)(*kind, rec).map(Arc::new);
                    chain.adopt(Arc::new(Generation::from_record(rec, file)));
                }
                self.next_seq[*kind] = self.next_seq[*kind].max(rec.seq + 1);
            }
            Entry::Updated(kind, rec) => {
                if let Some(gen) = self.chains[*kind].get(rec.seq) {
                    if let Some((len, joins)) = rec.sealed {
                        gen.seal(len, joins);
                    }
                    gen.refine_fingerprint(&rec.fingerprint);
                }
            }
            Entry::End { moved, held } => {
                self.held = *held;
                if !self.rendering {
                    for (kind, mark) in moved.iter() {
                        if let Some(mark) = mark {
                            self.feeds[kind].reset(*mark);
                        }
                    }
                }
            }
            Entry::Checkpoint(cp) => {
                if cp.marks != self.marks() {
                    // A restart jumped past what vanished meanwhile: continue from there.
                    let resolve = self.resolve;
                    self.older = Replayer::older_of(cp);
                    self.chains = PerSource::from_fn(|kind| Replayer::chain_of(kind, cp, resolve));
                    let chains = &self.chains;
                    self.readers = PerSource::from_fn(|kind| LineReader::new(chains[kind].clone(), cp.marks[kind].pos));
                    self.feeds = PerSource::from_fn(|kind| SourceFeed::new(kind, cp.marks[kind]));
                    self.next_seq = cp.next_seq;
                    self.assembler = Assembler::default();
                }
            }
            Entry::LogState(_) | Entry::Logged(_) => {}
            Entry::Boot { ts, text } => {
                if self.rendering {
                    self.assembler.render(&Record { ts: *ts, tag: Tag::System, text: text.clone() }, &mut self.out);
                }
            }
            Entry::Op(_) if !self.rendering => {}
            Entry::Op(op) => self.apply_op(*op)?,
        }
        Ok(())
    }

    fn apply_op(&mut self, op: Op) -> Result<(), ReplayError> {
        match op {
            Op::Take { source, count } => {
                for _ in 0..count {
                    let head = self.feeds[source].next(&mut self.readers[source], &self.chains[source])?;
                    match head.map(|h| h.step) {
                        Some(Step::Record(record)) => self.assembler.render(&record, &mut self.out),
                        // The generation's file was not found again (or is shorter).
                        Some(Step::Gap { .. }) | None => return Err(ReplayError::Missing(source)),
                        Some(Step::Lost { .. }) => return Err(ReplayError::Mismatch),
                    }
                }
            }
            Op::Gap { source, bytes } => {
                let notice = self.feeds[source].repeat_gap(&mut self.readers[source], bytes);
                self.assembler.render(&notice, &mut self.out);
            }
            Op::Lost { source, generations } => {
                let notice = self.feeds[source].repeat_lost(generations);
                self.assembler.render(&notice, &mut self.out);
            }
            Op::Missed { source, bytes } => {
                let notice = missed_notice(source, (bytes > 0).then_some(bytes), &self.feeds[source].mark().state);
                self.assembler.render(&notice, &mut self.out);
            }
            Op::Flush { stream } => self.assembler.flush(stream, &mut self.out),
            Op::FlushAll => self.assembler.flush_all(&mut self.out),
            Op::FragmentsLost => {
                let notice = fragments_lost_notice(&self.feeds[SourceKind::Exec].mark().state);
                self.assembler.render(&notice, &mut self.out);
            }
        }
        Ok(())
    }

    /// Where the replay ended.
    pub fn into_state(self) -> ReplayState {
        let exact = self.rendering;
        let marks = self.marks();
        let gens = PerSource::from_fn(|kind| {
            let mut all = self.older[kind].clone();
            all.extend(self.chains[kind].all());
            all
        });
        ReplayState {
            marks,
            gens,
            next_seq: self.next_seq,
            assembler: if exact { self.assembler } else { Assembler::default() },
            exact,
            fragments_lost: !exact && self.held,
        }
    }
}

/// The checkpoint a cut's payload starts with, and the entries after it.
pub fn entries_at(payload: &[u8], payload_at: u32) -> Result<(Checkpoint, Vec<Entry>), ReplayError> {
    let mut entries = decode_entries(payload.get(payload_at as usize..).ok_or(ReplayError::Malformed)?)
        .ok_or(ReplayError::Malformed)?;
    if entries.is_empty() {
        return Err(ReplayError::Malformed);
    }
    match entries.remove(0) {
        Entry::Checkpoint(cp) => Ok((*cp, entries)),
        _ => Err(ReplayError::Malformed),
    }
}

/// Renders retained segment `seg` of `store` again from its checkpoint and checks the
/// bytes against the stored ones. Returns the re-rendered bytes.
pub fn replay_segment(store: &EpochStore, seg: &Segment, resolve: Resolve<'_>) -> Result<Vec<u8>, ReplayError> {
    let len = (seg.end - seg.start) as usize;
    let mut replayer: Option<Replayer<'_>> = None;
    let mut rendered = Vec::with_capacity(len);
    let mut failure = None;
    store.commits_from(seg.journal_off, |commit| {
        let entries = match &replayer {
            None => match commit.cuts.get(seg.cut as usize).map(|cut| entries_at(&commit.payload, cut.payload_at)) {
                Some(Ok((cp, entries))) => {
                    replayer = Some(Replayer::new(&cp, resolve));
                    entries
                }
                Some(Err(e)) => {
                    failure = Some(e);
                    return false;
                }
                None => {
                    failure = Some(ReplayError::Malformed);
                    return false;
                }
            },
            Some(_) => match decode_entries(&commit.payload) {
                Some(entries) => entries,
                None => {
                    failure = Some(ReplayError::Malformed);
                    return false;
                }
            },
        };
        let r = replayer.as_mut().expect("set above");
        for entry in &entries {
            r.apply(entry);
            if rendered.len() + r.out.len() >= len {
                break;
            }
        }
        rendered.extend(r.take_output());
        if let Some(e) = r.failure.take() {
            failure = Some(e);
            return false;
        }
        rendered.len() < len
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    rendered.truncate(len);
    let stored = store.read(seg.start, len)?;
    if rendered != stored {
        return Err(ReplayError::Mismatch);
    }
    Ok(rendered)
}

/// Positions a replay resumes from when nothing else is known (a new epoch).
pub fn start_checkpoint() -> Checkpoint {
    Checkpoint { marks: PerSource([SourceMark::START; 3]), gens: PerSource::default(), next_seq: PerSource([0; 3]) }
}

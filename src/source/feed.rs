//! One step of a source at a time: its next line parsed into a record with the parse
//! state it leaves behind, or a notice for bytes or whole generations that are gone.
//! Ingest and replay both read sources through a [`SourceFeed`], so "replay does
//! exactly what ingest did" holds by construction.

use std::io;

use super::generation::{Chain, Pos};
use super::reader::{LineReader, Next};
use super::record::{gap_notice, lost_notice, parse_line, Before, Record, SourceState};
use super::SourceKind;

/// Where one source stands: the start of its next line, its parse state there, and the
/// generation whose birth time that state carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceMark {
    /// Start of the next line to take.
    pub pos: Pos,
    /// Parse state before that line.
    pub state: SourceState,
    /// The generation whose birth `state.birth` is; `None` while what came just before
    /// the next line was never read: before the first line, and after bytes or whole
    /// generations were lost (or rotated away while msbfs was not running), so the next
    /// line, if it begins a generation, may begin mid-line ([`Before::Unread`]).
    pub based_gen: Option<u32>,
}

impl SourceMark {
    /// Before anything was read.
    pub const START: SourceMark =
        SourceMark { pos: Pos { gen: 0, off: 0 }, state: SourceState::INITIAL, based_gen: None };

    /// This mark after a loss before the next line: what comes next follows unread bytes.
    pub fn after_loss(self) -> SourceMark {
        SourceMark { based_gen: None, ..self }
    }
}

/// What the next step of a source is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A line, parsed (a corrupt one is a notice record carrying it).
    Record(Record),
    /// `bytes` unread bytes of a generation vanished; the source continues at the next.
    Gap {
        /// How many bytes.
        bytes: u64,
        /// The notice announcing them.
        notice: Record,
    },
    /// `generations` whole generations were rotated away before msbfs opened them.
    Lost {
        /// How many (at least).
        generations: u64,
        /// The notice announcing them.
        notice: Record,
    },
}

impl Step {
    /// The record this step renders.
    pub fn record(&self) -> &Record {
        match self {
            Step::Record(r) | Step::Gap { notice: r, .. } | Step::Lost { notice: r, .. } => r,
        }
    }
}

/// A step read but not yet taken, with the mark it leaves.
#[derive(Clone, Debug)]
pub struct Head {
    /// The step.
    pub step: Step,
    /// Where the source stands after it.
    pub next: SourceMark,
}

/// Applies the birth time of a new generation: kernel uptime stamps restart with it, so
/// the previous kernel time is forgotten.
pub fn apply_base(kind: SourceKind, birth: i64, state: &mut SourceState) {
    state.birth = birth;
    if kind == SourceKind::Kernel {
        state.last_ts = None;
    }
}

/// Reads one source step by step.
#[derive(Debug)]
pub struct SourceFeed {
    kind: SourceKind,
    taken: SourceMark,
    head: Option<Head>,
}

impl SourceFeed {
    /// A feed standing at `mark`.
    pub fn new(kind: SourceKind, mark: SourceMark) -> SourceFeed {
        SourceFeed { kind, taken: mark, head: None }
    }

    /// Where the source stands after the last step taken.
    pub fn mark(&self) -> SourceMark {
        self.taken
    }

    /// The loaded step, if any.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// Loads the next step from `reader` (over `chain`) unless one is loaded; `None`
    /// when nothing more is complete yet.
    pub fn peek(&mut self, reader: &mut LineReader, chain: &Chain) -> io::Result<Option<&Head>> {
        if self.head.is_none() {
            self.head = self.read(reader, chain)?;
        }
        Ok(self.head.as_ref())
    }

    fn read(&self, reader: &mut LineReader, chain: &Chain) -> io::Result<Option<Head>> {
        let kind = self.kind;
        let taken = self.taken;
        Ok(match reader.next_line()? {
            Next::Line(raw, start, end) => {
                // Only a line that begins a generation can follow unread bytes; one that
                // starts inside a generation (a rotated line joined) follows what was read.
                let before = if taken.based_gen.is_none() && start.off == 0 { Before::Unread } else { Before::Read };
                let mut state = taken.state;
                let mut based_gen = taken.based_gen;
                if based_gen != Some(start.gen) {
                    if let Some(gen) = chain.get(start.gen) {
                        apply_base(kind, gen.birth_ms, &mut state);
                        based_gen = Some(start.gen);
                    }
                }
                let record = parse_line(kind, raw, before, &mut state);
                Some(Head { step: Step::Record(record), next: SourceMark { pos: end, state, based_gen } })
            }
            Next::Gap { bytes } => {
                let notice = gap_notice(kind, bytes, &taken.state);
                let next = SourceMark { pos: reader.pos(), ..taken }.after_loss();
                Some(Head { step: Step::Gap { bytes, notice }, next })
            }
            Next::Lost { generations } => {
                let notice = lost_notice(kind, generations, &taken.state);
                Some(Head { step: Step::Lost { generations, notice }, next: taken.after_loss() })
            }
            Next::Pending => None,
        })
    }

    /// Takes the loaded step: the source's mark moves past it.
    pub fn take(&mut self) -> Option<Head> {
        let head = self.head.take()?;
        self.taken = head.next;
        Some(head)
    }

    /// Reads and takes the next step at once (replay).
    pub fn next(&mut self, reader: &mut LineReader, chain: &Chain) -> io::Result<Option<Head>> {
        self.peek(reader, chain)?;
        Ok(self.take())
    }

    /// Repeats a gap ingest recorded: the reader skips the rest of its generation and
    /// the notice is rendered from the recorded count (replay).
    pub fn repeat_gap(&mut self, reader: &mut LineReader, bytes: u64) -> Record {
        self.head = None;
        let notice = gap_notice(self.kind, bytes, &self.taken.state);
        reader.skip_to_next_generation();
        self.taken = SourceMark { pos: reader.pos(), ..self.taken }.after_loss();
        notice
    }

    /// Repeats a loss of whole generations ingest recorded: the notice is rendered from
    /// the recorded count, and the next line follows unread bytes (replay).
    pub fn repeat_lost(&mut self, generations: u64) -> Record {
        self.head = None;
        let notice = lost_notice(self.kind, generations, &self.taken.state);
        self.taken = self.taken.after_loss();
        notice
    }

    /// Sets the mark (a restart jumps past generations that vanished meanwhile).
    pub fn reset(&mut self, mark: SourceMark) {
        self.head = None;
        self.taken = mark;
    }
}

//! The timeline's record of a batch, the payload of a store commit: the ops in order,
//! the generations adopted and sealed (so a replay or restart reads exactly what
//! ingest read), checkpoints, and where each source stood at the end.
//!
//! A checkpoint is self-contained: it carries the records of every generation from
//! each source's position on, so resuming from it needs nothing earlier in the journal
//! (which lets the store compact away everything before its oldest retained segment).

use crate::codec::{push_bytes, push_varint, push_zigzag, Decoder};
use crate::source::feed::SourceMark;
use crate::source::generation::{FileId, FileIdentity, GenRecord, Pos, FINGERPRINT_LEN};
use crate::source::record::SourceState;
use crate::source::{PerSource, SourceKind};

use super::json::LogEntry;
use super::ops::Op;
use super::CursorPos;

/// Everything needed to render from a checkpoint on without any earlier state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Each source's position and parse state.
    pub marks: PerSource<SourceMark>,
    /// Each source's generations whose files may still be on disk, oldest first: from
    /// its position on to read, and before it to recognise.
    pub gens: PerSource<Vec<GenRecord>>,
    /// Each source's next generation sequence number.
    pub next_seq: PerSource<u32>,
}

/// One entry of a batch record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// An op, in order.
    Op(Op),
    /// A generation of a source was adopted.
    Adopted(SourceKind, GenRecord),
    /// A generation's record changed (sealed, or a longer fingerprint).
    Updated(SourceKind, GenRecord),
    /// A checkpoint at this point of the op stream.
    Checkpoint(Box<Checkpoint>),
    /// Where the sources that moved stand at the end of the batch, and whether line
    /// fragments are held there (for a restart whose sources no longer allow replay).
    End {
        /// New marks of the sources that moved.
        moved: PerSource<Option<SourceMark>>,
        /// True when the assembler holds fragments after the batch.
        held: bool,
    },
    /// The source positions before the batch's first [`Entry::Logged`] (what its
    /// cursor is built from).
    LogState([CursorPos; 3]),
    /// A source entry as `merged.jsonl` shows it.
    Logged(Box<LogEntry>),
    /// A `boot-error.json` record rendered as a `system` line at this point of the op
    /// stream (the file itself may be gone by the time anything is rendered again).
    Boot {
        /// Its time.
        ts: i64,
        /// The line's text.
        text: Vec<u8>,
    },
}

const E_OP: u8 = 0;
const E_ADOPTED: u8 = 1;
const E_UPDATED: u8 = 2;
const E_CHECKPOINT: u8 = 3;
const E_END: u8 = 4;
const E_LOG_STATE: u8 = 5;
/// The tag of an [`Entry::Logged`] (which the batch encodes from a borrowed entry).
pub(crate) const E_LOGGED: u8 = 6;
const E_BOOT: u8 = 7;
/// Longest boot-error line kept.
const MAX_BOOT_TEXT: usize = 1 << 20;

fn push_gen(out: &mut Vec<u8>, rec: &GenRecord) {
    let flags = u8::from(rec.identity.igen.is_some())
        | u8::from(rec.identity.btime_ns.is_some()) << 1
        | u8::from(rec.sealed.is_some()) << 2
        | u8::from(rec.sealed.is_some_and(|(_, joins)| joins)) << 3;
    out.push(flags);
    push_varint(out, u64::from(rec.seq));
    push_varint(out, rec.identity.id.dev);
    push_varint(out, rec.identity.id.ino);
    if let Some(igen) = rec.identity.igen {
        push_varint(out, u64::from(igen));
    }
    if let Some(btime) = rec.identity.btime_ns {
        push_zigzag(out, btime);
    }
    push_zigzag(out, rec.birth_ms);
    push_bytes(out, &rec.fingerprint);
    if let Some((len, _)) = rec.sealed {
        push_varint(out, len);
    }
}

fn read_gen(d: &mut Decoder<'_>) -> Option<GenRecord> {
    let flags = d.u8()?;
    let seq = d.varint_u32()?;
    let id = FileId { dev: d.varint()?, ino: d.varint()? };
    let igen = if flags & 1 != 0 { Some(d.varint_u32()?) } else { None };
    let btime_ns = if flags & 2 != 0 { Some(d.zigzag()?) } else { None };
    let birth_ms = d.zigzag()?;
    let fingerprint = d.bytes(FINGERPRINT_LEN)?.to_vec();
    let sealed = if flags & 4 != 0 { Some((d.varint()?, flags & 8 != 0)) } else { None };
    Some(GenRecord { seq, identity: FileIdentity { id, igen, btime_ns }, birth_ms, fingerprint, sealed })
}

fn push_mark(out: &mut Vec<u8>, m: &SourceMark) {
    out.push(u8::from(m.state.last_ts.is_some()) | u8::from(m.based_gen.is_some()) << 1);
    push_varint(out, u64::from(m.pos.gen));
    push_varint(out, m.pos.off);
    if let Some(ts) = m.state.last_ts {
        push_zigzag(out, ts);
    }
    push_zigzag(out, m.state.birth);
    if let Some(gen) = m.based_gen {
        push_varint(out, u64::from(gen));
    }
}

fn read_mark(d: &mut Decoder<'_>) -> Option<SourceMark> {
    let flags = d.u8()?;
    let pos = Pos { gen: d.varint_u32()?, off: d.varint()? };
    let last_ts = if flags & 1 != 0 { Some(d.zigzag()?) } else { None };
    let birth = d.zigzag()?;
    let based_gen = if flags & 2 != 0 { Some(d.varint_u32()?) } else { None };
    Some(SourceMark { pos, state: SourceState { last_ts, birth }, based_gen })
}

/// Most generation records a checkpoint holds per source (a source has at most a
/// chain's length of generations pending, plus the ones the watcher opened early).
const MAX_CHECKPOINT_GENS: usize = 4096;

impl Entry {
    /// Appends this entry's encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Entry::Op(op) => {
                out.push(E_OP);
                op.encode(out);
            }
            Entry::Adopted(kind, rec) | Entry::Updated(kind, rec) => {
                out.push(if matches!(self, Entry::Adopted(..)) { E_ADOPTED } else { E_UPDATED });
                out.push(kind.index() as u8);
                push_gen(out, rec);
            }
            Entry::Checkpoint(cp) => {
                out.push(E_CHECKPOINT);
                for kind in SourceKind::ALL {
                    push_mark(out, &cp.marks[kind]);
                    push_varint(out, u64::from(cp.next_seq[kind]));
                    push_varint(out, cp.gens[kind].len() as u64);
                    for rec in &cp.gens[kind] {
                        push_gen(out, rec);
                    }
                }
            }
            Entry::End { moved, held } => {
                out.push(E_END);
                let mut mask = u8::from(*held) << 3;
                for (kind, pos) in moved.iter() {
                    mask |= u8::from(pos.is_some()) << kind.index();
                }
                out.push(mask);
                for (_, mark) in moved.iter() {
                    if let Some(mark) = mark {
                        push_mark(out, mark);
                    }
                }
            }
            Entry::LogState(state) => {
                out.push(E_LOG_STATE);
                for pos in state {
                    push_varint(out, pos.generation);
                    push_varint(out, pos.offset);
                }
            }
            Entry::Logged(entry) => {
                out.push(E_LOGGED);
                entry.encode(out);
            }
            Entry::Boot { ts, text } => {
                out.push(E_BOOT);
                push_zigzag(out, *ts);
                push_bytes(out, text);
            }
        }
    }

    /// Decodes one entry; `None` on malformed input.
    pub fn decode(d: &mut Decoder<'_>) -> Option<Entry> {
        match d.u8()? {
            E_OP => Some(Entry::Op(Op::decode(d)?)),
            tag @ (E_ADOPTED | E_UPDATED) => {
                let kind = SourceKind::from_index(usize::from(d.u8()?))?;
                let rec = read_gen(d)?;
                Some(if tag == E_ADOPTED { Entry::Adopted(kind, rec) } else { Entry::Updated(kind, rec) })
            }
            E_CHECKPOINT => {
                let mut marks = PerSource([SourceMark::START; 3]);
                let mut next_seq = PerSource([0u32; 3]);
                let mut gens: PerSource<Vec<GenRecord>> = PerSource::default();
                for kind in SourceKind::ALL {
                    marks[kind] = read_mark(d)?;
                    next_seq[kind] = d.varint_u32()?;
                    let n = usize::try_from(d.varint()?).ok().filter(|n| *n <= MAX_CHECKPOINT_GENS)?;
                    for _ in 0..n {
                        gens[kind].push(read_gen(d)?);
                    }
                }
                Some(Entry::Checkpoint(Box::new(Checkpoint { marks, gens, next_seq })))
            }
            E_END => {
                let mask = d.u8()?;
                let mut moved = PerSource([None; 3]);
                for kind in SourceKind::ALL {
                    if mask & (1 << kind.index()) != 0 {
                        moved[kind] = Some(read_mark(d)?);
                    }
                }
                Some(Entry::End { moved, held: mask & 8 != 0 })
            }
            E_LOG_STATE => {
                let mut state = [CursorPos::default(); 3];
                for pos in &mut state {
                    *pos = CursorPos { generation: d.varint()?, offset: d.varint()? };
                }
                Some(Entry::LogState(state))
            }
            E_LOGGED => Some(Entry::Logged(Box::new(LogEntry::decode(d)?))),
            E_BOOT => Some(Entry::Boot { ts: d.zigzag()?, text: d.bytes(MAX_BOOT_TEXT)?.to_vec() }),
            _ => None,
        }
    }
}

/// What [`visit_log`] meets in a payload.
#[derive(Debug)]
pub enum LogItem<'a> {
    /// The source positions before the entries that follow.
    State([CursorPos; 3]),
    /// A source entry, its text borrowed from the payload.
    Entry(LogEntry<&'a [u8]>),
}

/// Visits the source entries of a payload in order, without copying their text, until
/// `visit` breaks; other entries are skipped. False when the payload is malformed.
pub fn visit_log<'a>(payload: &'a [u8], mut visit: impl FnMut(LogItem<'a>) -> std::ops::ControlFlow<()>) -> bool {
    let mut d = Decoder::new(payload);
    while !d.is_empty() {
        let item = match d.rest().first() {
            Some(&E_LOGGED) => {
                d.u8();
                match LogEntry::decode_ref(&mut d) {
                    Some(e) => LogItem::Entry(e),
                    None => return false,
                }
            }
            _ => match Entry::decode(&mut d) {
                Some(Entry::LogState(state)) => LogItem::State(state),
                Some(_) => continue,
                None => return false,
            },
        };
        if visit(item).is_break() {
            break;
        }
    }
    true
}

/// Decodes every entry of a payload (from a cut's position, or from its start).
pub fn decode_entries(payload: &[u8]) -> Option<Vec<Entry>> {
    let mut d = Decoder::new(payload);
    let mut out = Vec::new();
    while !d.is_empty() {
        out.push(Entry::decode(&mut d)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::record::Tag;

    fn gen(seq: u32, sealed: Option<(u64, bool)>) -> GenRecord {
        GenRecord {
            seq,
            identity: FileIdentity { id: FileId { dev: 2049, ino: 10_010_744 }, igen: Some(7), btime_ns: Some(-3) },
            birth_ms: 1_777_581_178_000,
            fingerprint: b"{\"t\":\"2026".to_vec(),
            sealed,
        }
    }

    #[test]
    fn entries_round_trip_and_truncation_is_rejected() {
        let mark = SourceMark {
            pos: Pos { gen: 3, off: 12_345 },
            state: SourceState { last_ts: Some(5), birth: -9 },
            based_gen: Some(3),
        };
        let entries = vec![
            Entry::Op(Op::Take { source: SourceKind::Exec, count: 9 }),
            Entry::Op(Op::Flush { stream: Tag::Stdout(Some(1)) }),
            Entry::Adopted(SourceKind::Runtime, gen(4, None)),
            Entry::Updated(SourceKind::Exec, gen(3, Some((10 << 20, true)))),
            Entry::Checkpoint(Box::new(Checkpoint {
                marks: PerSource([mark, SourceMark::START, mark]),
                gens: PerSource([vec![gen(3, Some((1, false))), gen(4, None)], vec![], vec![gen(0, None)]]),
                next_seq: PerSource([5, 0, 1]),
            })),
            Entry::End { moved: PerSource([Some(mark), None, Some(SourceMark::START)]), held: true },
        ];
        let mut bytes = Vec::new();
        for e in &entries {
            e.encode(&mut bytes);
        }
        assert_eq!(decode_entries(&bytes).unwrap(), entries);
        for cut in 1..bytes.len() {
            let ok = decode_entries(&bytes[..cut]).is_some_and(|got| entries.starts_with(&got));
            assert!(ok || decode_entries(&bytes[..cut]).is_none(), "cut {cut}");
        }
        assert!(decode_entries(&[9]).is_none());
    }
}

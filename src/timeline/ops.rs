//! Ops: every decision about which bytes `merged.log` holds, encoded compactly (a tag
//! byte and LEB128 varints). Consecutive `Take`s of one source in a batch coalesce, so
//! a steady stream costs a few bytes per batch.

use crate::codec::{push_varint, Decoder};
use crate::source::record::Tag;
use crate::source::SourceKind;

/// One decision of ingest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Render the next `count` steps of `source` (lines, each parsed as it comes).
    Take {
        /// Which source.
        source: SourceKind,
        /// How many lines.
        count: u64,
    },
    /// `bytes` bytes of `source` vanished unread; it continues at its next generation.
    Gap {
        /// Which source.
        source: SourceKind,
        /// How many bytes were lost.
        bytes: u64,
    },
    /// At least `generations` generations of `source` were rotated away before msbfs
    /// could open them.
    Lost {
        /// Which source.
        source: SourceKind,
        /// How many.
        generations: u64,
    },
    /// What `source`'s producer wrote while msbfs was not running was rotated away
    /// (`bytes` when known, else 0).
    Missed {
        /// Which source.
        source: SourceKind,
        /// How many bytes, 0 when unknown.
        bytes: u64,
    },
    /// Render the held fragment of exec stream `stream` (a stdout, stderr or output
    /// tag with its session id) as a line of its own.
    Flush {
        /// The stream.
        stream: Tag,
    },
    /// Render every held fragment as a line of its own, oldest first.
    FlushAll,
    /// Line fragments held when msbfs stopped could not be rebuilt after a restart
    /// (announced once).
    FragmentsLost,
}

const TAKE: u8 = 0;
const GAP: u8 = 1;
const LOST: u8 = 2;
const MISSED: u8 = 3;
const FLUSH: u8 = 4;
const FLUSH_ALL: u8 = 5;
const FRAGMENTS_LOST: u8 = 6;

fn stream_code(tag: Tag) -> Option<(u8, Option<u64>)> {
    match tag {
        Tag::Stdout(id) => Some((0, id)),
        Tag::Stderr(id) => Some((1, id)),
        Tag::Output(id) => Some((2, id)),
        _ => None,
    }
}

impl Op {
    /// Appends the encoding of this op: `tag << 2 | source` (for flushes, the stream
    /// and whether a session id follows), then its varints.
    pub fn encode(self, out: &mut Vec<u8>) {
        let mut with_source = |tag: u8, source: SourceKind, value: u64| {
            out.push(tag << 2 | source.index() as u8);
            push_varint(out, value);
        };
        match self {
            Op::Take { source, count } => with_source(TAKE, source, count),
            Op::Gap { source, bytes } => with_source(GAP, source, bytes),
            Op::Lost { source, generations } => with_source(LOST, source, generations),
            Op::Missed { source, bytes } => with_source(MISSED, source, bytes),
            Op::Flush { stream } => match stream_code(stream) {
                Some((which, id)) => {
                    out.push(FLUSH << 2 | which);
                    out.push(u8::from(id.is_some()));
                    if let Some(id) = id {
                        push_varint(out, id);
                    }
                }
                // Only captured-output streams hold fragments.
                None => out.push(FLUSH_ALL << 2),
            },
            Op::FlushAll => out.push(FLUSH_ALL << 2),
            Op::FragmentsLost => out.push(FRAGMENTS_LOST << 2),
        }
    }

    /// Decodes one op; `None` on malformed input.
    pub fn decode(d: &mut Decoder<'_>) -> Option<Op> {
        let tag = d.u8()?;
        let low = tag & 3;
        match tag >> 2 {
            FLUSH => {
                let id = match d.u8()? {
                    0 => None,
                    1 => Some(d.varint()?),
                    _ => return None,
                };
                let stream = match low {
                    0 => Tag::Stdout(id),
                    1 => Tag::Stderr(id),
                    2 => Tag::Output(id),
                    _ => return None,
                };
                Some(Op::Flush { stream })
            }
            FLUSH_ALL => (low == 0).then_some(Op::FlushAll),
            FRAGMENTS_LOST => (low == 0).then_some(Op::FragmentsLost),
            kind => {
                let source = SourceKind::from_index(usize::from(low))?;
                let value = d.varint()?;
                match kind {
                    TAKE => Some(Op::Take { source, count: value }),
                    GAP => Some(Op::Gap { source, bytes: value }),
                    LOST => Some(Op::Lost { source, generations: value }),
                    MISSED => Some(Op::Missed { source, bytes: value }),
                    _ => None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_garbage_is_rejected() {
        let ops = [
            Op::Take { source: SourceKind::Exec, count: 1 },
            Op::Take { source: SourceKind::Kernel, count: 300_000 },
            Op::Gap { source: SourceKind::Exec, bytes: u64::MAX },
            Op::Lost { source: SourceKind::Runtime, generations: 3 },
            Op::Missed { source: SourceKind::Kernel, bytes: 0 },
            Op::Flush { stream: Tag::Stdout(Some(7)) },
            Op::Flush { stream: Tag::Stderr(None) },
            Op::Flush { stream: Tag::Output(Some(u64::MAX)) },
            Op::FlushAll,
            Op::FragmentsLost,
        ];
        let mut bytes = Vec::new();
        for op in ops {
            op.encode(&mut bytes);
        }
        let mut d = Decoder::new(&bytes);
        for op in ops {
            assert_eq!(Op::decode(&mut d), Some(op));
        }
        assert!(d.is_empty());
        for bad in [&[0xffu8][..], &[0x00, 0x80], &[FLUSH << 2 | 3, 0], &[FLUSH << 2, 2], &[TAKE << 2 | 3, 1]] {
            assert_eq!(Op::decode(&mut Decoder::new(bad)), None, "{bad:?}");
        }
    }
}

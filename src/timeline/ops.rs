//! The op log: every decision about which bytes `merged.log` holds, encoded compactly.
//!
//! An op costs a few bytes (a tag byte and LEB128 varints) and consecutive `Take`s of
//! the same source coalesce, so a steady stream costs a few bytes per ingest batch.
//! Op positions are byte offsets into the encoded log; the log only grows, except that
//! the last `Take` may be re-encoded in place with a larger count.

use crate::source::record::Tag;
use crate::source::SourceKind;

/// One decision of ingest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Render the next `count` lines of `source`.
    Take {
        /// Which source.
        source: SourceKind,
        /// How many lines.
        count: u64,
    },
    /// The lines of generation `gen` of `source` that follow have birth time `birth`.
    Base {
        /// Which source.
        source: SourceKind,
        /// Generation sequence number.
        gen: u32,
        /// Unix milliseconds.
        birth: i64,
    },
    /// `bytes` bytes of `source` vanished unread; it continues at its next generation.
    Gap {
        /// Which source.
        source: SourceKind,
        /// How many bytes were lost.
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
}

const TAKE: u8 = 0;
const BASE: u8 = 1;
const GAP: u8 = 2;
const FLUSH: u8 = 3;
/// Low bits of a `FLUSH` tag byte: which stream, or all of them.
const FLUSH_STDOUT: u8 = 0;
const FLUSH_STDERR: u8 = 1;
const FLUSH_OUTPUT: u8 = 2;
const FLUSH_ALL: u8 = 3;
/// Bit of a `FLUSH` tag byte set when a session id follows.
const FLUSH_HAS_ID: u8 = 4;

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

impl Op {
    /// Appends the encoding of this op.
    pub fn encode(self, out: &mut Vec<u8>) {
        let source = match self {
            Op::Take { source, .. } | Op::Base { source, .. } | Op::Gap { source, .. } => source.index() as u8,
            Op::Flush { .. } | Op::FlushAll => 0,
        };
        match self {
            Op::Take { count, .. } => {
                out.push(TAKE << 2 | source);
                push_varint(out, count);
            }
            Op::Base { gen, birth, .. } => {
                out.push(BASE << 2 | source);
                push_varint(out, u64::from(gen));
                push_varint(out, ((birth << 1) ^ (birth >> 63)) as u64);
            }
            Op::Gap { bytes, .. } => {
                out.push(GAP << 2 | source);
                push_varint(out, bytes);
            }
            Op::Flush { stream } => {
                let (which, id) = match stream {
                    Tag::Stdout(id) => (FLUSH_STDOUT, id),
                    Tag::Stderr(id) => (FLUSH_STDERR, id),
                    Tag::Output(id) => (FLUSH_OUTPUT, id),
                    // Only captured-output streams hold fragments.
                    _ => return Op::FlushAll.encode(out),
                };
                out.push(FLUSH << 2 | which | u8::from(id.is_some()) << FLUSH_HAS_ID);
                if let Some(id) = id {
                    push_varint(out, id);
                }
            }
            Op::FlushAll => out.push(FLUSH << 2 | FLUSH_ALL),
        }
    }

    /// Decodes the op at `*at`, advancing `*at` past it.
    pub fn decode(bytes: &[u8], at: &mut usize) -> Option<Op> {
        let tag = *bytes.get(*at)?;
        *at += 1;
        if (tag >> 2) & 3 == FLUSH {
            if tag & 3 == FLUSH_ALL {
                return (tag >> FLUSH_HAS_ID == 0).then_some(Op::FlushAll);
            }
            let id = match tag >> FLUSH_HAS_ID {
                0 => None,
                1 => Some(read_varint(bytes, at)?),
                _ => return None,
            };
            let stream = match tag & 3 {
                FLUSH_STDOUT => Tag::Stdout(id),
                FLUSH_STDERR => Tag::Stderr(id),
                _ => Tag::Output(id),
            };
            return Some(Op::Flush { stream });
        }
        let source = SourceKind::from_index(usize::from(tag & 3))?;
        match tag >> 2 {
            TAKE => Some(Op::Take { source, count: read_varint(bytes, at)? }),
            BASE => {
                let gen = u32::try_from(read_varint(bytes, at)?).ok()?;
                let z = read_varint(bytes, at)?;
                Some(Op::Base { source, gen, birth: ((z >> 1) as i64) ^ -((z & 1) as i64) })
            }
            GAP => Some(Op::Gap { source, bytes: read_varint(bytes, at)? }),
            _ => None,
        }
    }
}

/// Where replay resumes: the op at byte `op` of the log, after its first `within`
/// lines (non-zero only inside a `Take`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpPos {
    /// Byte offset of the op in the encoded log.
    pub op: u64,
    /// Lines of that op already rendered.
    pub within: u64,
}

/// The encoded, append-only op log of one sandbox epoch.
#[derive(Clone, Debug, Default)]
pub struct OpLog {
    bytes: Vec<u8>,
    last: Option<(usize, Op)>,
}

impl OpLog {
    /// Appends `op`, merging it into the previous `Take` of the same source.
    pub fn push(&mut self, op: Op) {
        if let (Some((start, Op::Take { source, count })), Op::Take { source: s, count: more }) = (self.last, op) {
            if source == s {
                let merged = Op::Take { source, count: count + more };
                self.bytes.truncate(start);
                merged.encode(&mut self.bytes);
                self.last = Some((start, merged));
                return;
            }
        }
        let start = self.bytes.len();
        op.encode(&mut self.bytes);
        self.last = Some((start, op));
    }

    /// The position just after everything pushed so far. A later `Take` coalescing
    /// into the last op keeps this position valid.
    pub fn end(&self) -> OpPos {
        match self.last {
            Some((start, Op::Take { count, .. })) => OpPos { op: start as u64, within: count },
            _ => OpPos { op: self.bytes.len() as u64, within: 0 },
        }
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The encoded bytes from `from` on.
    pub fn bytes_from(&self, from: u64) -> &[u8] {
        &self.bytes[(from as usize).min(self.bytes.len())..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Op> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            out.push(Op::decode(bytes, &mut at).expect("valid op"));
        }
        out
    }

    #[test]
    fn ops_round_trip() {
        let ops = [
            Op::Take { source: SourceKind::Exec, count: 1 },
            Op::Take { source: SourceKind::Kernel, count: 300_000 },
            Op::Base { source: SourceKind::Runtime, gen: 7, birth: 1_777_581_178_000 },
            Op::Base { source: SourceKind::Kernel, gen: 0, birth: -5 },
            Op::Gap { source: SourceKind::Exec, bytes: u64::MAX },
            Op::Flush { stream: Tag::Stdout(Some(7)) },
            Op::Flush { stream: Tag::Stderr(None) },
            Op::Flush { stream: Tag::Output(Some(u64::MAX)) },
            Op::FlushAll,
        ];
        let mut bytes = Vec::new();
        for op in ops {
            op.encode(&mut bytes);
        }
        assert_eq!(decode_all(&bytes), ops);
        assert_eq!(Op::decode(&[0xff], &mut 0), None);
        assert_eq!(Op::decode(&[0x00, 0x80], &mut 0), None);
    }

    #[test]
    fn takes_coalesce_and_end_stays_valid() {
        let mut log = OpLog::default();
        assert_eq!(log.end(), OpPos { op: 0, within: 0 });
        log.push(Op::Take { source: SourceKind::Exec, count: 100 });
        let mark = log.end();
        assert_eq!(mark, OpPos { op: 0, within: 100 });
        log.push(Op::Take { source: SourceKind::Exec, count: 100 });
        log.push(Op::Take { source: SourceKind::Runtime, count: 1 });
        log.push(Op::Gap { source: SourceKind::Exec, bytes: 10 });
        assert_eq!(log.end(), OpPos { op: log.len() as u64, within: 0 });
        log.push(Op::Take { source: SourceKind::Exec, count: 1 });
        assert_eq!(
            decode_all(log.bytes_from(0)),
            [
                Op::Take { source: SourceKind::Exec, count: 200 },
                Op::Take { source: SourceKind::Runtime, count: 1 },
                Op::Gap { source: SourceKind::Exec, bytes: 10 },
                Op::Take { source: SourceKind::Exec, count: 1 },
            ]
        );
        // The mark taken after the first 100 still points into the coalesced op.
        assert_eq!(mark.op, 0);
        // Take 200 needs a two-byte varint.
        assert_eq!(log.len(), 3 + 2 + 2 + 2);
    }
}

//! Re-rendering one closed segment from its checkpoint: position each source where the
//! checkpoint says, run the renderer over the ops that follow, stop at the segment's end.

use std::sync::Arc;

use super::ops::Op;
use super::render::{apply_base, gap_notice, Assembler};
use super::Checkpoint;
use crate::source::generation::Chain;
use crate::source::reader::{LineReader, Next};
use crate::source::record::parse_line;
use crate::source::SourceKind;

/// Why a segment could not be rendered again.
#[derive(Debug)]
pub enum ReplayError {
    /// A source file could not be read.
    Io(std::io::Error),
    /// Source bytes the ops refer to are gone (released or truncated generation).
    Missing(SourceKind),
    /// The op log ended before the segment did.
    OpsEnded,
    /// The bytes differ from what was rendered live (length or checksum).
    Mismatch,
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Io(e) => write!(f, "reading a source failed: {e}"),
            ReplayError::Missing(s) => write!(f, "bytes of {} are no longer available", s.file_name()),
            ReplayError::OpsEnded => write!(f, "the op log ends inside the segment"),
            ReplayError::Mismatch => write!(f, "the source bytes changed since they were rendered"),
        }
    }
}

/// Renders the `len` bytes that start at checkpoint `cp`, given the encoded ops from
/// `cp.at.op` on, and checks them against `cp.crc` (the checksum of the live bytes).
pub fn render_segment(chains: &[Arc<Chain>; 3], cp: &Checkpoint, ops: &[u8], len: u64) -> Result<Vec<u8>, ReplayError> {
    let mut readers: Vec<LineReader> =
        SourceKind::ALL.iter().map(|s| LineReader::new(chains[s.index()].clone(), cp.sources[s.index()].pos)).collect();
    let mut states = cp.sources.map(|m| m.state);
    let mut out = Vec::with_capacity(len as usize);
    // Checkpoints are placed only where no fragment is held.
    let mut assembler = Assembler::default();
    let mut at = 0usize;
    let mut skip = cp.at.within;
    while (out.len() as u64) < len {
        let op = Op::decode(ops, &mut at).ok_or(ReplayError::OpsEnded)?;
        match op {
            Op::Take { source, count } => {
                let i = source.index();
                for _ in skip..count {
                    if out.len() as u64 >= len {
                        break;
                    }
                    match readers[i].next_line().map_err(ReplayError::Io)? {
                        Next::Line(raw, _, _) => {
                            let record = parse_line(source, raw, &mut states[i]);
                            assembler.render(&record, &mut out);
                        }
                        Next::Gap { .. } | Next::Pending => return Err(ReplayError::Missing(source)),
                    }
                }
            }
            Op::Base { source, birth, .. } => apply_base(source, birth, &mut states[source.index()]),
            Op::Gap { source, bytes } => {
                // The reader meets the lost generation again, exactly as ingest did.
                let i = source.index();
                match readers[i].next_line().map_err(ReplayError::Io)? {
                    Next::Gap { .. } => assembler.render(&gap_notice(source, bytes, &states[i]), &mut out),
                    Next::Line(..) | Next::Pending => return Err(ReplayError::Mismatch),
                }
            }
            Op::Flush { stream } => assembler.flush(stream, &mut out),
            Op::FlushAll => assembler.flush_all(&mut out),
        }
        skip = 0;
    }
    if out.len() as u64 != len || crc32fast::hash(&out) != cp.crc {
        return Err(ReplayError::Mismatch);
    }
    Ok(out)
}

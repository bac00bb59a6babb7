//! `boot-error.json`: one JSON object `{t, stage, errno, message}` the runtime writes
//! atomically in `logs/` when a sandbox fails before it is ready (and deletes on the
//! next good start). Each new record becomes one `system` line,
//! `boot error (stage mount, errno 2): <message>`, and one `boot-error` entry whose
//! text is the file's exact bytes. A record is new when its file's inode or content
//! differ from the last one taken; a deleted or rewritten record is never retracted.

use std::io::Read;

use super::dir::LogsDir;
use super::record::{Record, Tag};
use crate::time::parse_rfc3339;

/// Its name in `logs/`.
pub const FILE_NAME: &str = "boot-error.json";
/// Largest record read; a longer file is read this far.
const MAX_LEN: u64 = 64 << 10;

/// What tells one record from the next: the file's inode number and a checksum of its
/// bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootId {
    /// Inode number.
    pub ino: u64,
    /// CRC-32 of the bytes.
    pub crc: u32,
}

impl BootId {
    /// Its 12-byte encoding (for the epoch's record of the last one taken).
    pub fn encode(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.ino.to_le_bytes());
        out[8..].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// Decodes [`BootId::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Option<BootId> {
        let bytes: [u8; 12] = bytes.try_into().ok()?;
        Some(BootId {
            ino: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            crc: u32::from_le_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// A record read from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootError {
    /// Which record.
    pub id: BootId,
    /// Its `system` line.
    pub record: Record,
    /// The file's bytes (the JSON entry's text).
    pub raw: Vec<u8>,
}

/// Reads the record in `logs`, if there is one (`fallback_ts` is its time when `t` is
/// missing or malformed). A file that is not a regular file, or cannot be read, counts as
/// none.
pub fn read(logs: &LogsDir, fallback_ts: i64) -> Option<BootError> {
    let file = logs.open_file(FILE_NAME).ok()??;
    let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().ok()?);
    let mut raw = Vec::new();
    file.take(MAX_LEN).read_to_end(&mut raw).ok()?;
    if raw.is_empty() {
        // Being written (a writer that is not atomic): look again at the next change.
        return None;
    }
    let id = BootId { ino, crc: crc32fast::hash(&raw) };
    let trimmed = raw.strip_suffix(b"\n").unwrap_or(&raw).to_vec();
    Some(BootError { id, record: line(&trimmed, fallback_ts), raw: trimmed })
}

/// The `system` line of a record: `boot error (stage S, errno N): message`, or the raw
/// text when it is not such an object.
pub fn line(raw: &[u8], fallback_ts: i64) -> Record {
    let parsed: Option<serde_json::Value> =
        serde_json::from_slice(raw).ok().filter(|v: &serde_json::Value| v.is_object());
    let text = match &parsed {
        Some(v) => {
            let stage = v.get("stage").and_then(|s| s.as_str()).unwrap_or("unknown");
            let errno = v.get("errno").and_then(|e| e.as_i64()).map_or("unknown".into(), |e| e.to_string());
            let message = v.get("message").and_then(|m| m.as_str()).unwrap_or("");
            format!("boot error (stage {stage}, errno {errno}): {message}")
        }
        None => format!("boot error (unreadable boot-error.json): {}", String::from_utf8_lossy(raw)),
    };
    let ts = parsed
        .as_ref()
        .and_then(|v| v.get("t"))
        .and_then(|t| t.as_str())
        .and_then(parse_rfc3339)
        .unwrap_or(fallback_ts);
    // One line: a newline in the message is shown as a space.
    let text = text.replace(['\n', '\r'], " ").into_bytes();
    Record { ts, tag: Tag::System, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_system_line_with_its_time() {
        let raw = br#"{"t":"2026-04-30T20:33:00.001Z","stage":"mount","errno":2,"message":"no such file\nor dir"}"#;
        let rec = line(raw, 5);
        assert_eq!(rec.ts, parse_rfc3339("2026-04-30T20:33:00.001Z").unwrap());
        assert_eq!(rec.tag, Tag::System);
        assert_eq!(rec.text, b"boot error (stage mount, errno 2): no such file or dir");
        let odd = line(b"not json", 5);
        assert_eq!(odd.ts, 5);
        assert_eq!(odd.text, b"boot error (unreadable boot-error.json): not json");
        assert_eq!(line(br#"{"message":"m"}"#, 7).text, b"boot error (stage unknown, errno unknown): m");
        let id = BootId { ino: 9, crc: 3 };
        assert_eq!(BootId::decode(&id.encode()), Some(id));
    }
}

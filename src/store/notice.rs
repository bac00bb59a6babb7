//! The text that stands in for a range of `merged.log` the store no longer has (DESIGN
//! §2.3): `msbfs` notice lines of exactly the range's length, so offsets never shift
//! and no tool sees a hole.
//!
//! The text of a range depends only on the range (`start`, `end`), its timestamp and
//! why it is missing, so every read of it gives the same bytes. Lines are at most
//! [`LINE_MAX`] bytes: full lines of that length, then the rest; a rest too short for a
//! line is shared with the line before it, so the last line ends exactly at `end`.

use crate::time::{push_timestamp, TIMESTAMP_LEN};

/// Longest notice line, newline included.
pub const LINE_MAX: usize = 4096;
/// Shortest notice line: a timestamp, ` msbfs `, a newline.
pub const LINE_MIN: usize = TIMESTAMP_LEN + PREFIX.len() + 1;
const PREFIX: &[u8] = b" msbfs ";

/// Why a range is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Dropped, oldest first, to keep the store within its budget.
    Dropped,
    /// Never stored: the state filesystem was full when it was rendered.
    Unstored,
    /// Stored, then damaged (a torn or corrupt state file), and the sources no longer
    /// hold it.
    Damaged,
}

/// A missing range of `merged.log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingRange {
    /// First offset.
    pub start: u64,
    /// Offset just past the range; `end - start >= LINE_MIN`.
    pub end: u64,
    /// Timestamp printed on every line (the earliest time the range held).
    pub ts: i64,
    /// Why it is missing.
    pub why: Missing,
}

impl MissingRange {
    fn message(&self) -> String {
        let len = self.end - self.start;
        match self.why {
            Missing::Dropped => format!(
                "{len} bytes from offset {} were dropped to keep the msbfs store within its budget (--max-store)",
                self.start
            ),
            Missing::Unstored => format!(
                "{len} bytes from offset {} could not be stored (the msbfs state filesystem was full)",
                self.start
            ),
            Missing::Damaged => format!(
                "{len} bytes from offset {} were damaged in the msbfs store and the sources no longer hold them",
                self.start
            ),
        }
    }

    /// Start and length of the line holding range-relative offset `rel`. Every line
    /// is long enough for the whole message, unless the range itself is shorter.
    fn line_at(&self, rel: u64, message_len: usize) -> (u64, u64) {
        let len = self.end - self.start;
        let full = LINE_MAX as u64;
        let rest = len % full;
        let min = (LINE_MIN + message_len) as u64;
        // Where the regular full lines stop: the last one shares with a short rest.
        let shared_from = if rest != 0 && rest < min && len > full { len - rest - full } else { len };
        if rel < shared_from {
            let start = rel / full * full;
            return (start, full.min(len - start));
        }
        let pair = len - shared_from;
        let first = pair / 2;
        if rel < shared_from + first {
            (shared_from, first)
        } else {
            (shared_from + first, pair - first)
        }
    }

    /// Appends the bytes `[from, to)` of the notice text (offsets relative to `start`).
    pub fn render(&self, from: u64, to: u64, out: &mut Vec<u8>) {
        let message = self.message();
        let mut rel = from;
        let mut line = Vec::with_capacity(LINE_MAX);
        while rel < to {
            let (line_start, line_len) = self.line_at(rel, message.len());
            line.clear();
            push_timestamp(&mut line, self.ts);
            line.extend_from_slice(PREFIX);
            let room = line_len as usize - LINE_MIN;
            line.extend_from_slice(&message.as_bytes()[..message.len().min(room)]);
            line.resize(line_len as usize - 1, b' ');
            line.push(b'\n');
            let a = (rel - line_start) as usize;
            let b = ((to - line_start) as usize).min(line.len());
            out.extend_from_slice(&line[a..b]);
            rel = line_start + b as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(range: &MissingRange) -> Vec<u8> {
        let mut out = Vec::new();
        range.render(0, range.end - range.start, &mut out);
        out
    }

    #[test]
    fn text_has_exactly_the_range_length_in_short_lines_ending_at_the_end() {
        for len in
            [LINE_MIN as u64, 100, 4095, 4096, 4097, 4096 + 31, 4096 + 32, 4096 + 150, 8192 + 5, 262_144, 1_000_003]
        {
            let range = MissingRange { start: 1000, end: 1000 + len, ts: 0, why: Missing::Dropped };
            let text = whole(&range);
            assert_eq!(text.len() as u64, len, "len {len}");
            assert!(text.ends_with(b"\n"));
            let message = range.message();
            for line in text[..text.len() - 1].split(|&b| b == b'\n') {
                assert!(line.len() < LINE_MAX && line.len() + 1 >= LINE_MIN, "len {len}: line of {}", line.len());
                if len >= 4096 {
                    assert!(
                        line.windows(message.len()).any(|w| w == message.as_bytes()),
                        "len {len}: every line says it all"
                    );
                }
                assert!(line.starts_with(b"1970-01-01T00:00:00.000Z msbfs "), "{}", String::from_utf8_lossy(line));
            }
        }
    }

    #[test]
    fn any_slice_equals_the_same_slice_of_the_whole_text() {
        let range = MissingRange { start: 77, end: 77 + 12_345, ts: 1_777_581_178_000, why: Missing::Unstored };
        let text = whole(&range);
        assert!(String::from_utf8_lossy(&text).starts_with(
            "2026-04-30T20:32:58.000Z msbfs 12345 bytes from offset 77 could not be stored (the msbfs state filesystem was full)"
        ));
        for (from, to) in [(0, 1), (4095, 4097), (4000, 9000), (12_000, 12_345), (5, 5)] {
            let mut part = Vec::new();
            range.render(from, to, &mut part);
            assert_eq!(part, &text[from as usize..to as usize], "{from}..{to}");
        }
    }
}

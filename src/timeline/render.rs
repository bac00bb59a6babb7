//! The renderer: the only code that produces `merged.log` bytes, for the live end and
//! for re-rendering old ranges alike.
//!
//! A rendered line is `<24-byte timestamp> <tag> <text>\n`; text longer than 64 KiB is
//! cut into 64 KiB pieces, each its own line, and a trailing `\r` is dropped. The text
//! of every rendered line is shown through one display step, [`push_escaped`]: control
//! characters other than tab and SGR colours are written as visible text, so a terminal
//! showing `merged.log` executes nothing a program wrote (an exact view skips the step).
//! (The store renders the one other kind of text, the notice standing for a range it
//! no longer has.)
//!
//! Captured program output arrives in chunks cut wherever the pipe read ended, so the
//! [`Assembler`] holds the trailing fragment of each exec stream until the next chunk
//! of the same stream completes it; the line carries the time of the chunk that began
//! it and appears where it was completed. Holding depends only on the records; the
//! decisions that depend on time (a fragment left waiting) arrive as `Flush` ops.

use std::collections::HashMap;

use super::escape::push_escaped;
use crate::source::record::{Record, Tag};
use crate::time::push_timestamp;

/// Longest text of one rendered line; longer text is cut into pieces of this size.
pub const MAX_LINE_TEXT: usize = 64 << 10;
/// Most exec streams holding a fragment at once; beyond it the oldest is flushed.
pub const MAX_HELD_STREAMS: usize = 1024;

/// True for the tags whose records are one source line each (a runtime or kernel line,
/// a notice), as opposed to exec chunks, which hold any number of lines.
fn is_one_line(tag: Tag) -> bool {
    matches!(tag, Tag::Runtime | Tag::Kernel | Tag::Notice)
}

/// Appends the rendered lines of `record`. A runtime or kernel line or a notice is one
/// rendered line, also when its text is empty (a blank source line is a line). Exec
/// text is split at `\n`: a final `\n` does not start another line, and empty text
/// renders nothing. No fragment is held.
pub fn render_record(record: &Record, out: &mut Vec<u8>) {
    if is_one_line(record.tag) {
        return render_line(record.ts, record.tag, &record.text, out);
    }
    let mut text = record.text.as_slice();
    while !text.is_empty() {
        let (line, rest) = match memchr::memchr(b'\n', text) {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, &text[text.len()..]),
        };
        render_line(record.ts, record.tag, line.strip_suffix(b"\r").unwrap_or(line), out);
        text = rest;
    }
}

/// A fragment of a line waiting for the rest of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    /// Time of the chunk that began the line.
    ts: i64,
    /// Order of arrival, for flushing the oldest first.
    seq: u64,
    /// Never empty, at most 64 KiB once a chunk is taken.
    text: Vec<u8>,
}

/// Reassembles lines of exec streams split across chunks. Empty at every checkpoint,
/// so rendering from a checkpoint needs no hidden state.
#[derive(Clone, Debug, Default)]
pub struct Assembler {
    held: HashMap<Tag, Held>,
    next_seq: u64,
    /// Earliest and latest timestamp of the lines rendered since the last
    /// [`Assembler::take_span`].
    span: Option<(i64, i64)>,
}

impl Assembler {
    /// True when no fragment is held (a checkpoint may be placed).
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn note(&mut self, ts: i64) {
        self.span = Some(self.span.map_or((ts, ts), |(lo, hi)| (lo.min(ts), hi.max(ts))));
    }

    /// The earliest and latest timestamp rendered since the last call.
    pub fn take_span(&mut self) -> Option<(i64, i64)> {
        self.span.take()
    }

    /// The fragments held now: their stream and arrival number (a new fragment of the
    /// same stream gets a new number).
    pub fn held_fragments(&self) -> impl Iterator<Item = (Tag, u64)> + '_ {
        self.held.iter().map(|(tag, held)| (*tag, held.seq))
    }

    /// Renders `record`: for exec output streams, completed lines (a held fragment
    /// first joined with the start of this chunk) and holds the trailing fragment;
    /// every other record renders whole.
    pub fn render(&mut self, record: &Record, out: &mut Vec<u8>) {
        let whole = !matches!(record.tag, Tag::Stdout(_) | Tag::Stderr(_) | Tag::Output(_))
            // The common case: whole lines, nothing to continue.
            || record.text.ends_with(b"\n") && (self.held.is_empty() || !self.held.contains_key(&record.tag));
        if whole {
            let before = out.len();
            render_record(record, out);
            if out.len() > before {
                self.note(record.ts);
            }
            return;
        }
        let tag = record.tag;
        let mut text = record.text.as_slice();
        while let Some(i) = memchr::memchr(b'\n', text) {
            let line = &text[..i];
            text = &text[i + 1..];
            match self.held.remove(&tag) {
                Some(mut held) => {
                    held.text.extend_from_slice(line);
                    self.note(held.ts);
                    render_line(held.ts, tag, held.text.strip_suffix(b"\r").unwrap_or(&held.text), out);
                }
                None => {
                    self.note(record.ts);
                    render_line(record.ts, tag, line.strip_suffix(b"\r").unwrap_or(line), out)
                }
            }
        }
        if text.is_empty() {
            return;
        }
        let seq = self.next_seq;
        let held = self.held.entry(tag).or_insert_with(|| Held { ts: record.ts, seq, text: Vec::new() });
        if held.seq == seq {
            self.next_seq += 1;
        }
        held.text.extend_from_slice(text);
        // A fragment past 64 KiB is cut into 64 KiB lines; the last piece (1 byte to
        // 64 KiB) stays held, so a line of exactly k x 64 KiB ends without an extra
        // empty line when its newline comes in the next chunk.
        if held.text.len() > MAX_LINE_TEXT {
            let whole = (held.text.len() - 1) / MAX_LINE_TEXT * MAX_LINE_TEXT;
            render_line(held.ts, tag, &held.text[..whole], out);
            held.text.drain(..whole);
            let ts = held.ts;
            self.note(ts);
        }
        if self.held.len() > MAX_HELD_STREAMS {
            if let Some(oldest) = self.held.iter().min_by_key(|(_, h)| h.seq).map(|(t, _)| *t) {
                self.flush(oldest, out);
            }
        }
    }

    /// Renders the fragment held for `stream`, if any, as a line of its own.
    pub fn flush(&mut self, stream: Tag, out: &mut Vec<u8>) {
        if let Some(held) = self.held.remove(&stream) {
            self.note(held.ts);
            render_line(held.ts, stream, &held.text, out);
        }
    }

    /// Renders every held fragment as a line of its own, oldest first.
    pub fn flush_all(&mut self, out: &mut Vec<u8>) {
        let mut all: Vec<(Tag, Held)> = self.held.drain().collect();
        all.sort_by_key(|(_, h)| h.seq);
        for (tag, held) in all {
            self.note(held.ts);
            render_line(held.ts, tag, &held.text, out);
        }
    }
}

/// Appends `text` (no `\n` inside) as one or more rendered lines: pieces of at most
/// [`MAX_LINE_TEXT`] bytes of `text` (one line when it is empty), each escaped on its own
/// by [`push_escaped`], so no rendered line leaves a terminal inside an escape sequence.
pub fn render_line(ts: i64, tag: Tag, text: &[u8], out: &mut Vec<u8>) {
    let mut pieces = text.chunks(MAX_LINE_TEXT);
    let first = pieces.next().unwrap_or(&[]);
    for piece in std::iter::once(first).chain(pieces) {
        push_timestamp(out, ts);
        out.push(b' ');
        tag.push_to(out);
        out.push(b' ');
        push_escaped(piece, out);
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn ts() -> i64 {
        parse_rfc3339("2026-04-30T20:32:59.688Z").unwrap()
    }

    fn render(tag: Tag, text: &[u8]) -> String {
        let mut out = Vec::new();
        render_record(&Record { ts: ts(), tag, text: text.to_vec() }, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn renders_every_tag() {
        assert_eq!(render(Tag::Stdout(Some(7)), b"hello world\n"), "2026-04-30T20:32:59.688Z stdout[7] hello world\n");
        assert_eq!(render(Tag::Stderr(Some(7)), b"x\n"), "2026-04-30T20:32:59.688Z stderr[7] x\n");
        assert_eq!(render(Tag::Output(None), b"x\n"), "2026-04-30T20:32:59.688Z output x\n");
        assert_eq!(
            render(Tag::System, b"--- sandbox started ---\n"),
            "2026-04-30T20:32:59.688Z system --- sandbox started ---\n"
        );
        assert_eq!(render(Tag::Runtime, b"INFO a: b"), "2026-04-30T20:32:59.688Z runtime INFO a: b\n");
        assert_eq!(
            render(Tag::Kernel, b"[    0.000000] Linux"),
            "2026-04-30T20:32:59.688Z kernel [    0.000000] Linux\n"
        );
        assert_eq!(render(Tag::Notice, b"gap"), "2026-04-30T20:32:59.688Z msbfs gap\n");
    }

    #[test]
    fn blank_runtime_and_kernel_lines_are_lines() {
        assert_eq!(render(Tag::Runtime, b""), "2026-04-30T20:32:59.688Z runtime \n");
        assert_eq!(render(Tag::Kernel, b""), "2026-04-30T20:32:59.688Z kernel \n");
        // Through the assembler too, with the time span noted.
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        asm.render(&Record { ts: ts(), tag: Tag::Kernel, text: Vec::new() }, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "2026-04-30T20:32:59.688Z kernel \n");
        assert_eq!(asm.take_span(), Some((ts(), ts())));
        // An empty exec chunk holds no line.
        assert_eq!(render(Tag::Stdout(Some(1)), b""), "");
    }

    #[test]
    fn splits_chunks_into_lines_drops_a_final_cr_and_escapes_a_lone_one() {
        assert_eq!(
            render(Tag::Stdout(Some(1)), b"a\r\nb\n\nc\rd\r"),
            "2026-04-30T20:32:59.688Z stdout[1] a\n2026-04-30T20:32:59.688Z stdout[1] b\n\
             2026-04-30T20:32:59.688Z stdout[1] \n2026-04-30T20:32:59.688Z stdout[1] c\\x0dd\n"
        );
        assert_eq!(render(Tag::Stdout(Some(1)), b"no newline"), "2026-04-30T20:32:59.688Z stdout[1] no newline\n");
        assert_eq!(render(Tag::Stdout(Some(1)), b""), "");
    }

    #[test]
    fn cuts_long_lines_into_64k_pieces() {
        let text = vec![b'x'; MAX_LINE_TEXT * 2 + 5];
        let out = render(Tag::Stdout(Some(1)), &text);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        let prefix = "2026-04-30T20:32:59.688Z stdout[1] ".len();
        assert_eq!(lines.iter().map(|l| l.len() - prefix).collect::<Vec<_>>(), [MAX_LINE_TEXT, MAX_LINE_TEXT, 5]);
    }

    #[test]
    fn non_utf8_passes_through() {
        let mut out = Vec::new();
        render_record(&Record { ts: ts(), tag: Tag::Stdout(Some(1)), text: b"\xff\xfe\n".to_vec() }, &mut out);
        assert!(out.ends_with(b"stdout[1] \xff\xfe\n"));
    }

    fn chunk(ts: i64, tag: Tag, text: &[u8]) -> Record {
        Record { ts, tag, text: text.to_vec() }
    }

    fn lines(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out).lines().map(str::to_string).collect()
    }

    #[test]
    fn fragments_join_with_the_time_of_the_chunk_that_began_them() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        asm.render(&chunk(1000, Tag::Stdout(Some(7)), b"hel"), &mut out);
        asm.render(&chunk(2000, Tag::Stdout(Some(7)), b"lo wor"), &mut out);
        assert!(out.is_empty() && !asm.is_empty());
        asm.render(&chunk(3000, Tag::Stdout(Some(7)), b"ld\r\nnext\n"), &mut out);
        assert_eq!(
            lines(&out),
            ["1970-01-01T00:00:01.000Z stdout[7] hello world", "1970-01-01T00:00:03.000Z stdout[7] next"]
        );
        assert!(asm.is_empty());
    }

    #[test]
    fn crlf_split_across_chunks_ends_the_line_and_a_lone_cr_is_escaped() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        asm.render(&chunk(0, Tag::Output(Some(1)), b"a\rb\r"), &mut out);
        asm.render(&chunk(0, Tag::Output(Some(1)), b"\n"), &mut out);
        assert_eq!(lines(&out), ["1970-01-01T00:00:00.000Z output[1] a\\x0db"]);
    }

    #[test]
    fn every_source_and_notice_is_escaped_and_sgr_kept() {
        let evil = b"\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m\x1b]52;c;eA==\x07";
        let shown = "\\x1b]0;pwned\\x07\\x1b[2J\x1b[31mred\x1b[0m\\x1b]52;c;eA==\\x07";
        for tag in [Tag::Stdout(Some(1)), Tag::System, Tag::Runtime, Tag::Kernel, Tag::Notice] {
            let got = render(tag, evil);
            assert!(got.ends_with(&format!(" {shown}\n")), "{tag:?}: {got:?}");
        }
    }

    #[test]
    fn a_sequence_split_across_chunks_of_one_line_is_judged_whole() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        // An SGR sequence whose ESC ends one chunk: kept once the line is whole.
        asm.render(&chunk(0, Tag::Stdout(Some(1)), b"a\x1b"), &mut out);
        asm.render(&chunk(1, Tag::Stdout(Some(1)), b"[3"), &mut out);
        asm.render(&chunk(2, Tag::Stdout(Some(1)), b"1mred\x1b[0m\n"), &mut out);
        // A title sequence split the same way is escaped whole.
        asm.render(&chunk(3, Tag::Stdout(Some(1)), b"b\x1b"), &mut out);
        asm.render(&chunk(4, Tag::Stdout(Some(1)), b"]0;t\x07\n"), &mut out);
        assert_eq!(
            lines(&out),
            [
                "1970-01-01T00:00:00.000Z stdout[1] a\x1b[31mred\x1b[0m",
                "1970-01-01T00:00:00.003Z stdout[1] b\\x1b]0;t\\x07"
            ]
        );
        // A fragment flushed before the rest arrives is a line of its own: its trailing
        // ESC is escaped, and the rest is plain text on the next line.
        out.clear();
        asm.render(&chunk(5, Tag::Stdout(Some(1)), b"c\x1b"), &mut out);
        asm.flush(Tag::Stdout(Some(1)), &mut out);
        asm.render(&chunk(6, Tag::Stdout(Some(1)), b"[2J\n"), &mut out);
        assert_eq!(
            lines(&out),
            ["1970-01-01T00:00:00.005Z stdout[1] c\\x1b", "1970-01-01T00:00:00.006Z stdout[1] [2J"]
        );
    }

    #[test]
    fn a_sequence_cut_by_the_64k_limit_is_escaped_on_both_pieces() {
        let mut text = vec![b'x'; MAX_LINE_TEXT - 3];
        text.extend_from_slice(b"\x1b[31mred\n");
        let out = render(Tag::Stdout(Some(1)), &text);
        let got = lines(out.as_bytes());
        assert_eq!(got.len(), 2);
        assert!(got[0].ends_with("xxx\\x1b[3"), "{:?}", &got[0][got[0].len() - 20..]);
        assert!(got[1].ends_with("stdout[1] 1mred"), "{:?}", got[1]);
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn streams_are_independent_and_other_sources_pass_through() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        asm.render(&chunk(0, Tag::Stdout(Some(7)), b"held "), &mut out);
        asm.render(&chunk(0, Tag::Stderr(Some(7)), b"err\n"), &mut out);
        asm.render(&chunk(0, Tag::Stdout(Some(8)), b"other\n"), &mut out);
        asm.render(&chunk(0, Tag::System, b"--- sandbox started ---\n"), &mut out);
        asm.render(&chunk(0, Tag::Runtime, b"INFO x"), &mut out);
        asm.render(&chunk(0, Tag::Kernel, b"[ 0.1] k"), &mut out);
        let got = lines(&out);
        assert_eq!(got.len(), 5);
        assert!(got[0].ends_with("stderr[7] err") && got[1].ends_with("stdout[8] other"));
        assert!(got[2].ends_with("system --- sandbox started ---") && got[3].ends_with("runtime INFO x"));
        asm.render(&chunk(0, Tag::Stdout(Some(7)), b"done\n"), &mut out);
        assert!(lines(&out)[5].ends_with("stdout[7] held done"));
    }

    #[test]
    fn a_megabyte_without_newline_becomes_64k_lines_and_memory_stays_bounded() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        for _ in 0..256 {
            asm.render(&chunk(0, Tag::Stdout(Some(1)), &[b'x'; 4096]), &mut out);
            assert!(asm.held.values().all(|h| h.text.len() <= MAX_LINE_TEXT));
        }
        asm.render(&chunk(0, Tag::Stdout(Some(1)), b"\n"), &mut out);
        let got = lines(&out);
        assert_eq!(got.len(), 16, "no empty line after a line of exactly 16 x 64 KiB");
        let prefix = "1970-01-01T00:00:00.000Z stdout[1] ".len();
        assert!(got.iter().all(|l| l.len() - prefix == MAX_LINE_TEXT));
        assert!(asm.is_empty());
    }

    #[test]
    fn flushes_render_fragments_as_lines_of_their_own() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        asm.render(&chunk(1000, Tag::Stdout(Some(1)), b"Password: "), &mut out);
        asm.render(&chunk(2000, Tag::Stderr(None), b"50%"), &mut out);
        asm.render(&chunk(3000, Tag::Output(Some(2)), b"$ "), &mut out);
        asm.flush(Tag::Stdout(Some(1)), &mut out);
        asm.flush(Tag::Stdout(Some(1)), &mut out);
        assert_eq!(lines(&out), ["1970-01-01T00:00:01.000Z stdout[1] Password: "]);
        out.clear();
        asm.flush_all(&mut out);
        assert_eq!(lines(&out), ["1970-01-01T00:00:02.000Z stderr 50%", "1970-01-01T00:00:03.000Z output[2] $ "]);
        assert!(asm.is_empty());
        // The answer typed after a flushed prompt starts a new line.
        out.clear();
        asm.render(&chunk(4000, Tag::Stdout(Some(1)), b"secret\n"), &mut out);
        assert_eq!(lines(&out), ["1970-01-01T00:00:04.000Z stdout[1] secret"]);
    }

    #[test]
    fn beyond_1024_held_streams_the_oldest_is_flushed() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        for id in 0..=MAX_HELD_STREAMS as u64 {
            asm.render(&chunk(id as i64, Tag::Stdout(Some(id)), b"frag"), &mut out);
        }
        assert_eq!(lines(&out), ["1970-01-01T00:00:00.000Z stdout[0] frag"]);
        assert_eq!(asm.held_fragments().count(), MAX_HELD_STREAMS);
    }
}

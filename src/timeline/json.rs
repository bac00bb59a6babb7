//! The JSON renderer: every source entry (an exec chunk, a runtime or kernel line, a
//! boot error, an msbfs notice) as one line of `merged.jsonl` (the views issue):
//!
//! `{"t":"…Z","s":"stdout","id":7,"d":"text","cursor":"…","offset":123}`
//!
//! `d` is exact: the bytes the program wrote, escaped only as JSON requires, or their
//! standard base64 with `"e":"b64"` when they are not valid UTF-8. `cursor` is the
//! `user.cursor` value just after the entry, `offset` the `merged.log` offset of the
//! first line it produced (for a fragment, where its output goes). All sandboxes'
//! `all.jsonl` adds `"sandbox"`.
//!
//! The timeline records each entry compactly in its commit ([`LogEntry`], in the
//! journal); the JSON line is rendered from it, the same bytes every time, so the
//! JSON view's offsets are as stable as `merged.log`'s.

use base64::Engine as _;

use super::CursorPos;
use crate::codec::{push_bytes, push_varint, push_zigzag, Decoder};
use crate::source::record::Tag;
use crate::source::SourceKind;
use crate::time::push_timestamp;

/// Largest text an entry records (a chunk is at most what the parser accepts).
const MAX_ENTRY_TEXT: usize = 64 << 20;

/// What kind of entry, as the `s` field names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A record of one of the sources, or an msbfs notice.
    Record(Tag),
    /// A `boot-error.json` record.
    BootError,
}

impl EntryKind {
    /// The `s` field.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Record(tag) => tag.name(),
            EntryKind::BootError => "boot-error",
        }
    }

    fn code(self) -> (u8, Option<u64>) {
        match self {
            EntryKind::Record(Tag::Stdout(id)) => (0, id),
            EntryKind::Record(Tag::Stderr(id)) => (1, id),
            EntryKind::Record(Tag::Output(id)) => (2, id),
            EntryKind::Record(Tag::System) => (3, None),
            EntryKind::Record(Tag::Runtime) => (4, None),
            EntryKind::Record(Tag::Kernel) => (5, None),
            EntryKind::Record(Tag::Notice) => (6, None),
            EntryKind::BootError => (7, None),
        }
    }

    fn from_code(code: u8, id: Option<u64>) -> Option<EntryKind> {
        Some(match code {
            0 => EntryKind::Record(Tag::Stdout(id)),
            1 => EntryKind::Record(Tag::Stderr(id)),
            2 => EntryKind::Record(Tag::Output(id)),
            3 => EntryKind::Record(Tag::System),
            4 => EntryKind::Record(Tag::Runtime),
            5 => EntryKind::Record(Tag::Kernel),
            6 => EntryKind::Record(Tag::Notice),
            7 => EntryKind::BootError,
            _ => return None,
        })
    }
}

/// One source entry as the timeline records it; `T` holds its text (owned, or
/// borrowed from a journal payload when read back: [`LogEntry::decode_ref`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry<T = Vec<u8>> {
    /// Its kind (and session id).
    pub kind: EntryKind,
    /// Its timestamp, Unix milliseconds.
    pub ts: i64,
    /// The exact bytes.
    pub text: T,
    /// `merged.log` offset where its output starts.
    pub start: u64,
    /// `merged.log` size just after it was taken (its output, or nothing yet for a
    /// fragment, ends there).
    pub end: u64,
    /// The source position it moved, if any: the cursor position of that source after it.
    pub moved: Option<(SourceKind, CursorPos)>,
    /// Length of its JSON line in `merged.jsonl`, newline included.
    pub json_len: u64,
}

impl<T: AsRef<[u8]>> LogEntry<T> {
    /// Appends the compact encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (code, id) = self.kind.code();
        let moved = self.moved.map_or(3, |(kind, _)| kind.index() as u8);
        out.push(code | u8::from(id.is_some()) << 3 | moved << 4);
        if let Some(id) = id {
            push_varint(out, id);
        }
        push_zigzag(out, self.ts);
        push_varint(out, self.start);
        push_varint(out, self.end - self.start);
        push_varint(out, self.json_len);
        if let Some((_, pos)) = self.moved {
            push_varint(out, pos.generation);
            push_varint(out, pos.offset);
        }
        push_bytes(out, self.text.as_ref());
    }

    /// The source positions after this entry, given those before it.
    pub fn apply(&self, state: &mut [CursorPos; 3]) {
        if let Some((kind, pos)) = self.moved {
            state[kind.index()] = pos;
        }
    }
}

impl LogEntry {
    /// Decodes one entry; `None` on malformed input.
    pub fn decode(d: &mut Decoder<'_>) -> Option<LogEntry> {
        let LogEntry { kind, ts, text, start, end, moved, json_len } = LogEntry::decode_ref(d)?;
        Some(LogEntry { kind, ts, text: text.to_vec(), start, end, moved, json_len })
    }
}

impl<'a> LogEntry<&'a [u8]> {
    /// Decodes one entry, its text borrowed from the payload; `None` on malformed input.
    pub fn decode_ref(d: &mut Decoder<'a>) -> Option<LogEntry<&'a [u8]>> {
        let head = d.u8()?;
        let id = if head & 8 != 0 { Some(d.varint()?) } else { None };
        let kind = EntryKind::from_code(head & 7, id)?;
        let ts = d.zigzag()?;
        let start = d.varint()?;
        let end = start.checked_add(d.varint()?)?;
        let json_len = d.varint()?;
        let moved = match head >> 4 {
            3 => None,
            i => {
                let kind = SourceKind::from_index(usize::from(i))?;
                Some((kind, CursorPos { generation: d.varint()?, offset: d.varint()? }))
            }
        };
        let text = d.bytes(MAX_ENTRY_TEXT)?;
        Some(LogEntry { kind, ts, text, start, end, moved, json_len })
    }
}

/// What a JSON line says beside the entry itself.
#[derive(Clone, Copy, Debug)]
pub struct JsonContext<'a> {
    /// The epoch (in the cursor).
    pub epoch: u64,
    /// Source positions after the entry.
    pub after: &'a [CursorPos; 3],
    /// The sandbox name, for `all.jsonl`.
    pub sandbox: Option<&'a str>,
}

/// Appends the JSON line of `entry`.
pub fn render_json<T: AsRef<[u8]>>(entry: &LogEntry<T>, cx: JsonContext<'_>, out: &mut Vec<u8>) {
    let text = entry.text.as_ref();
    out.extend_from_slice(b"{\"t\":\"");
    push_timestamp(out, entry.ts);
    out.extend_from_slice(b"\"");
    if let Some(name) = cx.sandbox {
        out.extend_from_slice(b",\"sandbox\":");
        push_json_string(name.as_bytes(), out);
    }
    out.extend_from_slice(b",\"s\":\"");
    out.extend_from_slice(entry.kind.name().as_bytes());
    out.push(b'"');
    if let (code, Some(id)) = entry.kind.code() {
        debug_assert!(code <= 2);
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.extend_from_slice(b",\"d\":");
    match std::str::from_utf8(text) {
        Ok(_) => push_json_string(text, out),
        Err(_) => {
            out.push(b'"');
            out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(text).as_bytes());
            out.extend_from_slice(b"\",\"e\":\"b64\"");
        }
    }
    out.extend_from_slice(b",\"cursor\":\"");
    out.extend_from_slice(super::cursor::encode(cx.after, cx.epoch, entry.end).as_bytes());
    out.extend_from_slice(b"\",\"offset\":");
    out.extend_from_slice(entry.start.to_string().as_bytes());
    out.extend_from_slice(b"}\n");
}

/// Length of the line [`render_json`] appends for `entry` (`sandbox` as in its
/// context), computed without rendering it.
pub fn json_len<T: AsRef<[u8]>>(entry: &LogEntry<T>, sandbox: Option<&str>) -> u64 {
    let text = entry.text.as_ref();
    const CURSOR_LEN: u64 = 88; // base64 of 1 + 4 x 16 bytes
    let digits = |mut v: u64| {
        let mut n = 1;
        while v >= 10 {
            v /= 10;
            n += 1;
        }
        n
    };
    let mut len = 6 + 24 + 1; // {"t":"…"
    if let Some(name) = sandbox {
        len += 11 + json_string_len(name.as_bytes()); // ,"sandbox":…
    }
    len += 6 + entry.kind.name().len() as u64 + 1; // ,"s":"…"
    if let (_, Some(id)) = entry.kind.code() {
        len += 6 + digits(id); // ,"id":…
    }
    len += 5; // ,"d":
              // ASCII (the common case) is valid UTF-8 without a second look.
    len += if text.is_ascii() || std::str::from_utf8(text).is_ok() {
        json_string_len(text)
    } else {
        1 + (text.len() as u64).div_ceil(3) * 4 + 11 // "…","e":"b64"
    };
    len + 11 + CURSOR_LEN + 11 + digits(entry.start) + 2 // ,"cursor":"…","offset":…}\n
}

/// Length of `text` as [`push_json_string`] writes it.
fn json_string_len(text: &[u8]) -> u64 {
    // Extra bytes per escaped byte: 1 for `\"`, `\\`, `\n`, `\t`, `\r`, 5 for `\u00XX`.
    // Branch-free, so it is counted many bytes at a time.
    let extra = |b: u8| {
        let short = u8::from(b == b'"' || b == b'\\' || b == b'\n' || b == b'\t' || b == b'\r');
        short + 5 * u8::from(b < 0x20) * (1 - short)
    };
    let escapes: u64 = text.chunks(32).map(|c| u64::from(c.iter().fold(0u8, |n, &b| n + extra(b)))).sum();
    text.len() as u64 + 2 + escapes
}

/// Appends `text` (valid UTF-8) as a JSON string: `"` and `\` escaped, control
/// characters as `\n`, `\t`, `\r` or `\u00XX`, everything else as it is.
pub fn push_json_string(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut from = 0;
    for (i, &b) in text.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\t' => b"\\t",
            b'\r' => b"\\r",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&text[from..i]);
        if escaped.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        } else {
            out.extend_from_slice(escaped);
        }
        from = i + 1;
    }
    out.extend_from_slice(&text[from..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind, text: &[u8]) -> LogEntry {
        LogEntry {
            kind,
            ts: 1_777_581_179_688,
            text: text.to_vec(),
            start: 100,
            end: 140,
            moved: Some((SourceKind::Exec, CursorPos { generation: 12, offset: 345 })),
            json_len: 0,
        }
    }

    fn json(e: &LogEntry, sandbox: Option<&str>) -> serde_json::Value {
        let mut out = Vec::new();
        let after = [CursorPos { generation: 12, offset: 345 }, CursorPos::default(), CursorPos::default()];
        render_json(e, JsonContext { epoch: 9, after: &after, sandbox }, &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(out.ends_with(b"}\n"));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn renders_exact_text_with_every_field() {
        let text = b"tab\there \"q\" \\ \x1b[2J\x00 caf\xc3\xa9\n";
        let v = json(&entry(EntryKind::Record(Tag::Stdout(Some(7))), text), None);
        assert_eq!(v["t"], "2026-04-30T20:32:59.688Z");
        assert_eq!(v["s"], "stdout");
        assert_eq!(v["id"], 7);
        assert_eq!(v["d"].as_str().unwrap().as_bytes(), text);
        assert!(v.get("e").is_none() && v.get("sandbox").is_none());
        assert_eq!(v["offset"], 100);
        let cursor = crate::timeline::cursor::decode(v["cursor"].as_str().unwrap()).unwrap();
        assert_eq!(cursor[0], CursorPos { generation: 12, offset: 345 });
        assert_eq!(cursor[3], CursorPos { generation: 9, offset: 140 });
    }

    #[test]
    fn invalid_utf8_is_base64_and_other_kinds_have_no_id() {
        let v = json(&entry(EntryKind::Record(Tag::Stderr(Some(1))), b"\xff\xfe"), Some("web"));
        assert_eq!(v["e"], "b64");
        assert_eq!(v["d"], "//4=");
        assert_eq!(v["sandbox"], "web");
        let v = json(&entry(EntryKind::BootError, b"boom"), None);
        assert_eq!(v["s"], "boot-error");
        assert!(v.get("id").is_none());
        assert_eq!(json(&entry(EntryKind::Record(Tag::Notice), b""), None)["s"], "msbfs");
    }

    #[test]
    fn the_computed_length_is_the_rendered_length() {
        let texts: [&[u8]; 7] = [
            b"",
            b"plain\n",
            b"\"q\" \\ \t\r\n\x00\x1b\x7f",
            b"\xff",
            b"\xff\xfe\xfd\xfc",
            "日本\u{1}".as_bytes(),
            &[b'x'; 70_000],
        ];
        let kinds = [
            EntryKind::Record(Tag::Stdout(Some(0))),
            EntryKind::Record(Tag::Stderr(Some(9))),
            EntryKind::Record(Tag::Output(Some(u64::MAX))),
            EntryKind::Record(Tag::Stdout(None)),
            EntryKind::Record(Tag::Kernel),
            EntryKind::Record(Tag::Notice),
            EntryKind::BootError,
        ];
        let after = [CursorPos { generation: u64::MAX, offset: 3 }, CursorPos::default(), CursorPos::default()];
        for text in texts {
            for kind in kinds {
                for (start, sandbox) in [(0, None), (9, Some("web")), (123_456_789_012, Some("a \"b\"\n"))] {
                    let mut e = entry(kind, text);
                    e.start = start;
                    e.end = start + 5;
                    let mut out = Vec::new();
                    render_json(&e, JsonContext { epoch: u64::MAX, after: &after, sandbox }, &mut out);
                    assert_eq!(
                        json_len(&e, sandbox),
                        out.len() as u64,
                        "{kind:?} {sandbox:?} {:?}",
                        &text[..text.len().min(20)]
                    );
                }
            }
        }
    }

    #[test]
    fn entries_round_trip() {
        for kind in [
            EntryKind::Record(Tag::Stdout(None)),
            EntryKind::Record(Tag::Output(Some(u64::MAX))),
            EntryKind::Record(Tag::Kernel),
            EntryKind::BootError,
        ] {
            let mut e = entry(kind, b"x\ny\n");
            e.json_len = 77;
            let mut bytes = Vec::new();
            e.encode(&mut bytes);
            e.moved = None;
            e.encode(&mut bytes);
            let mut d = Decoder::new(&bytes);
            let first = LogEntry::decode(&mut d).unwrap();
            assert_eq!(first.moved, Some((SourceKind::Exec, CursorPos { generation: 12, offset: 345 })));
            assert_eq!(LogEntry::decode(&mut d).unwrap(), e);
            assert!(d.is_empty());
        }
    }
}

//! Decoding one `exec.log` line (`{"t":"…","s":"…","d":"…","id":7}`) into its fields.
//!
//! The producer writes every line in one shape: `t`, `s`, `d`, then optionally `e` and
//! `id`, in that order, with no whitespace. [`decode`] reads that shape directly (no
//! allocation unless `d` holds escapes), and hands anything else, valid or not, to
//! `serde_json`, which decides it and words the error. The fast path only ever accepts
//! what `serde_json` accepts, with the same fields (a property test holds it to that).

use std::borrow::Cow;

use serde::Deserialize;

/// The fields of an exec line. Unknown fields are ignored, as `serde_json` does.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct ExecEntry<'a> {
    /// Timestamp text.
    #[serde(borrow)]
    pub t: Cow<'a, str>,
    /// Stream name.
    #[serde(borrow)]
    pub s: Cow<'a, str>,
    /// Data: the text, or its encoding named by `e`.
    #[serde(borrow)]
    pub d: Cow<'a, str>,
    /// Encoding of `d` (`b64`), when not plain text.
    #[serde(borrow, default)]
    pub e: Option<Cow<'a, str>>,
    /// Exec session id.
    #[serde(default)]
    pub id: Option<u64>,
}

/// Decodes the line `bytes` (without its `\n`); the error is `serde_json`'s message
/// without its position.
pub fn decode(bytes: &[u8]) -> Result<ExecEntry<'_>, String> {
    if let Some(entry) = fast(bytes) {
        return Ok(entry);
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        text.split(" at line").next().unwrap_or(&text).to_string()
    })
}

/// The producer's shape, or `None` for anything else.
fn fast(bytes: &[u8]) -> Option<ExecEntry<'_>> {
    let mut p = Parser { bytes, at: 0 };
    p.literal(b"{\"t\":")?;
    let t = p.string()?;
    p.literal(b",\"s\":")?;
    let s = p.string()?;
    p.literal(b",\"d\":")?;
    let d = p.string()?;
    let e = if p.literal(b",\"e\":").is_some() { Some(p.string()?) } else { None };
    let id = if p.literal(b",\"id\":").is_some() { Some(p.number()?) } else { None };
    p.literal(b"}")?;
    (p.at == bytes.len()).then_some(ExecEntry { t, s, d, e, id })
}

/// True when `bytes` holds a byte below 0x20, checked 16 bytes at a time.
fn any_control(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    let found = chunks.by_ref().any(|c| c.iter().fold(0u8, |m, &b| m | u8::from(b < 0x20)) != 0);
    found || chunks.remainder().iter().any(|&b| b < 0x20)
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn literal(&mut self, text: &[u8]) -> Option<()> {
        self.bytes[self.at..].starts_with(text).then(|| self.at += text.len())
    }

    /// A JSON string at the cursor: borrowed when it holds no escape.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.literal(b"\"")?;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let rest = &self.bytes[self.at..];
            let stop = memchr::memchr2(b'"', b'\\', rest)?;
            // A raw control character is not valid JSON: serde_json words that error.
            if any_control(&rest[..stop]) {
                return None;
            }
            self.at += stop + 1;
            if rest[stop] == b'"' {
                return match owned {
                    None => std::str::from_utf8(&rest[..stop]).ok().map(Cow::Borrowed),
                    Some(mut out) => {
                        out.extend_from_slice(&rest[..stop]);
                        String::from_utf8(out).ok().map(Cow::Owned)
                    }
                };
            }
            let out = owned.get_or_insert_with(|| Vec::with_capacity(rest.len()));
            out.extend_from_slice(&rest[..stop]);
            let escaped = *self.bytes.get(self.at)?;
            self.at += 1;
            let plain = match escaped {
                b'"' | b'\\' | b'/' => escaped,
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    let c = self.unicode_escape()?;
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    continue;
                }
                _ => return None,
            };
            out.push(plain);
        }
    }

    /// The character of a `\u` escape whose `\u` was read (a surrogate pair as one).
    fn unicode_escape(&mut self) -> Option<char> {
        let high = self.hex4()?;
        if !(0xd800..0xdc00).contains(&high) {
            return char::from_u32(high);
        }
        self.literal(b"\\u")?;
        let low = self.hex4()?;
        if !(0xdc00..0xe000).contains(&low) {
            return None;
        }
        char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        self.at += 4;
        digits.iter().try_fold(0u32, |acc, &b| Some(acc * 16 + char::from(b).to_digit(16)?))
    }

    /// A non-negative integer without leading zeros that fits in 64 bits.
    fn number(&mut self) -> Option<u64> {
        let digits = self.bytes[self.at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let text = &self.bytes[self.at..self.at + digits];
        if digits == 0 || digits > 1 && text[0] == b'0' {
            return None;
        }
        self.at += digits;
        text.iter().try_fold(0u64, |acc, &b| acc.checked_mul(10)?.checked_add(u64::from(b - b'0')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_producers_shape_is_read_without_serde() {
        let line = br#"{"t":"2026-04-30T20:32:59.688Z","s":"stdout","d":"a\"b\\c\n\u00e9\ud83e\udd80","id":7}"#;
        let entry = fast(line).expect("the producer's shape");
        assert_eq!(entry.d, "a\"b\\c\né🦀");
        assert_eq!(entry.id, Some(7));
        assert_eq!(Ok(entry), serde_json::from_slice::<ExecEntry<'_>>(line).map_err(|e| e.to_string()));
        let plain = fast(br#"{"t":"x","s":"system","d":"hi"}"#).expect("no id");
        assert!(matches!(plain.d, Cow::Borrowed("hi")), "no escape: borrowed");
        assert_eq!(fast(br#"{"t":"x","s":"stdout","d":"/w==","e":"b64","id":0}"#).unwrap().e.as_deref(), Some("b64"));
    }

    #[test]
    fn other_shapes_go_to_serde_which_decides() {
        // Valid JSON in another order or with spaces: serde reads it.
        let other = br#"{ "s":"stdout", "t":"x", "d":"hi", "extra":[1] }"#;
        assert!(fast(other).is_none());
        assert_eq!(decode(other).unwrap().s, "stdout");
        // What serde rejects, the fast path does not accept either.
        for bad in [
            &br#"{"t":"x","s":"stdout","d":"a\qb"}"#[..],
            br#"{"t":"x","s":"stdout","d":"\ud800"}"#,
            br#"{"t":"x","s":"stdout","d":"a","id":01}"#,
            br#"{"t":"x","s":"stdout","d":"a","id":18446744073709551616}"#,
            b"{\"t\":\"x\",\"s\":\"stdout\",\"d\":\"a\tb\"}",
            b"{\"t\":\"x\",\"s\":\"stdout\",\"d\":\"\xff\"}",
            br#"{"t":"x","s":"stdout","d":"a"}}"#,
        ] {
            assert!(fast(bad).is_none(), "{}", String::from_utf8_lossy(bad));
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// Pieces of exec lines, valid and not, joined at random.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        let text = prop::collection::vec(
            prop_oneof![
                Just(&b"a"[..]),
                Just(&b"\\\""[..]),
                Just(&b"\\\\"[..]),
                Just(&b"\\n"[..]),
                Just(&b"\\u00e9"[..]),
                Just(&b"\\ud83e\\udd80"[..]),
                Just(&b"\\ud83e"[..]),
                Just(&b"\\udd80"[..]),
                Just(&b"\\x"[..]),
                Just(&b"\\u12"[..]),
                Just("é".as_bytes()),
                Just(&b"\xff"[..]),
                Just(&b"\t"[..]),
                Just(&b"\""[..]),
            ],
            0..6,
        )
        .prop_map(|pieces| pieces.concat());
        let id = prop_oneof![
            Just(String::new()),
            (0u64..1000).prop_map(|n| format!(",\"id\":{n}")),
            Just(",\"id\":007".into())
        ];
        let e = prop_oneof![Just(""), Just(",\"e\":\"b64\""), Just(",\"e\":1")];
        (text, e, id, 0usize..3, any::<u8>()).prop_map(|(d, e, id, damage, byte)| {
            let mut line = br#"{"t":"2026-04-30T20:32:59.688Z","s":"stdout","d":""#.to_vec();
            line.extend_from_slice(&d);
            line.push(b'"');
            line.extend_from_slice(e.as_bytes());
            line.extend_from_slice(id.as_bytes());
            line.push(b'}');
            match damage {
                1 => line.truncate(usize::from(byte) % line.len()),
                2 => line.insert(usize::from(byte) % line.len(), byte),
                _ => {}
            }
            line
        })
    }

    proptest! {
        #[test]
        fn the_fast_path_agrees_with_serde(line in line()) {
            let by_serde = serde_json::from_slice::<ExecEntry<'_>>(&line).ok();
            if let Some(entry) = fast(&line) {
                prop_assert_eq!(Some(entry), by_serde);
            }
        }
    }
}

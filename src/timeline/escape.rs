//! What `merged.log` shows of control characters: the display step of the renderer.
//!
//! `merged.log` is read on terminals (`cat`, `tail -f`, `less -R`), so text that a
//! program in the sandbox printed must never make the terminal do something: set its
//! title, clear the screen, write the clipboard (OSC 52), move the cursor, or hide text
//! with a carriage return. [`push_escaped`] keeps what only colours and arranges text
//! and writes every other control character as visible text:
//!
//! - kept as written: tab, SGR colour sequences (`ESC [`, parameters made only of
//!   digits, `;` and `:`, then `m`, complete within the line's text), and all other
//!   text: valid UTF-8 that is not a control character, and bytes from 0xA0 up that are
//!   not valid UTF-8;
//! - every other byte below 0x20 (carriage return included), DEL and every `ESC` that
//!   does not begin such an SGR sequence: `\xHH` with two lowercase hex digits
//!   (`\x1b`, `\x07`, `\x0d`, `\x7f`); what follows an escaped `ESC` (the rest of an
//!   OSC, DCS, APC, PM, SOS or other CSI sequence) is then plain text;
//! - C1 controls written as UTF-8 (U+0080 to U+009F): `\u0080` to `\u009f`;
//! - a byte from 0x80 to 0x9F that is not part of valid UTF-8 (an 8-bit C1 control):
//!   `\x80` to `\x9f`.
//!
//! A backslash is not escaped, so `\x1b` in `merged.log` is either an escaped `ESC` or
//! those four characters as written: this text is for people and `grep`; the exact
//! bytes belong to an exact view (the JSON view), which skips this step.
//!
//! The unit is the text of one rendered line, after line reassembly and after the cut
//! into 64 KiB pieces: each rendered line is safe on its own, so a sequence cut by a
//! piece boundary is escaped rather than completed by what follows it.

/// Hex digits of the `\xHH` and `\u00HH` forms.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// What the bytes at a position are, for display.
enum Unit {
    /// `n` bytes shown as they are.
    Keep(usize),
    /// One byte shown as `\xHH`.
    Byte(u8),
    /// A C1 control written as UTF-8 (two bytes), shown as `\u00HH`.
    C1(u8),
}

/// Length of the SGR sequence (`ESC [` digits, `;`, `:` then `m`) at the start of
/// `bytes`, if one is complete there.
fn sgr_len(bytes: &[u8]) -> Option<usize> {
    let params = bytes.strip_prefix(b"\x1b[")?;
    let n = params.iter().take_while(|b| b.is_ascii_digit() || **b == b';' || **b == b':').count();
    (params.get(n) == Some(&b'm')).then_some(n + 3)
}

/// Length of the valid UTF-8 sequence of more than one byte at the start of `bytes`.
fn utf8_len(bytes: &[u8]) -> Option<usize> {
    let n = match bytes.first()? {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return None,
    };
    std::str::from_utf8(bytes.get(..n)?).ok().map(|_| n)
}

/// Classifies the bytes at the start of `bytes` (not empty).
fn unit(bytes: &[u8]) -> Unit {
    match bytes[0] {
        b'\t' | 0x20..=0x7e => Unit::Keep(1),
        0x1b => sgr_len(bytes).map_or(Unit::Byte(0x1b), Unit::Keep),
        b @ (0x00..=0x1f | 0x7f) => Unit::Byte(b),
        b @ 0x80.. => match utf8_len(bytes) {
            Some(2) if b == 0xc2 && bytes[1] <= 0x9f => Unit::C1(bytes[1]),
            Some(n) => Unit::Keep(n),
            None if b <= 0x9f => Unit::Byte(b),
            None => Unit::Keep(1),
        },
    }
}

/// Length of the longest prefix of `bytes` made of printable ASCII and tab, which
/// every display step keeps as it is. Checked 16 bytes at a time without a branch per
/// byte, so plain text costs a fraction of a cycle per byte.
pub fn printable_ascii_prefix(bytes: &[u8]) -> usize {
    let plain = |b: u8| (0x20..0x7f).contains(&b) || b == b'\t';
    let mut n = 0;
    for chunk in bytes.chunks_exact(16) {
        if chunk.iter().fold(true, |all, &b| all & plain(b)) {
            n += 16;
        } else {
            break;
        }
    }
    n + bytes[n..].iter().take_while(|&&b| plain(b)).count()
}

/// Appends `text`, the text of one rendered line, to `out` with every control
/// character but tab and complete SGR colour sequences written as visible text (the
/// rule of the module documentation).
///
/// Invariant: what it appends holds no byte below 0x20 but tab, no DEL, no `ESC` that
/// does not begin a complete SGR sequence, no C1 control as UTF-8 and no byte from 0x80
/// to 0x9F outside valid UTF-8, whatever `text` holds (a `\n` too is escaped).
pub fn push_escaped(text: &[u8], out: &mut Vec<u8>) {
    // Runs of kept bytes are copied at once.
    let mut copied = 0;
    let mut at = 0;
    while at < text.len() {
        at += printable_ascii_prefix(&text[at..]);
        if at == text.len() {
            break;
        }
        let (form, b, len) = match unit(&text[at..]) {
            Unit::Keep(n) => {
                at += n;
                continue;
            }
            Unit::Byte(b) => (&b"\\x"[..], b, 1),
            Unit::C1(b) => (&b"\\u00"[..], b, 2),
        };
        out.extend_from_slice(&text[copied..at]);
        out.extend_from_slice(form);
        out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        at += len;
        copied = at;
    }
    out.extend_from_slice(&text[copied..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &[u8]) -> String {
        let mut out = Vec::new();
        push_escaped(text, &mut out);
        String::from_utf8(out).expect("escaped valid UTF-8 stays valid UTF-8")
    }

    #[test]
    fn plain_text_tabs_and_utf8_pass_through() {
        assert_eq!(shown(b"hello\tworld \\x1b"), "hello\tworld \\x1b");
        assert_eq!(shown("é 日本 🦀 \u{a0}\u{ff}".as_bytes()), "é 日本 🦀 \u{a0}\u{ff}");
        assert_eq!(shown(b""), "");
    }

    #[test]
    fn sgr_colours_are_kept() {
        for sgr in ["\x1b[m", "\x1b[0m", "\x1b[1;31m", "\x1b[38;5;208m", "\x1b[38:2::255:0:0m", "\x1b[;m"] {
            let text = format!("a{sgr}b\x1b[0m");
            assert_eq!(shown(text.as_bytes()), text, "{sgr:?}");
        }
    }

    #[test]
    fn other_escape_sequences_lose_their_esc() {
        let cases: [(&[u8], &str); 9] = [
            // OSC: window title (BEL and ST terminated), clipboard write, hyperlink.
            (b"\x1b]0;title\x07x", "\\x1b]0;title\\x07x"),
            (b"\x1b]2;title\x1b\\x", "\\x1b]2;title\\x1b\\x"),
            (b"\x1b]52;c;aGVsbG8=\x07", "\\x1b]52;c;aGVsbG8=\\x07"),
            // CSI other than SGR: clear screen, cursor moves, private modes, keyboard.
            (b"\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
            (b"\x1b[?1049h\x1b[5A", "\\x1b[?1049h\\x1b[5A"),
            (b"\x1b[>4;2m", "\\x1b[>4;2m"),
            // DCS, APC, PM, SOS (ST terminated), and two-byte escapes.
            (b"\x1bPq#0\x1b\\\x1b_app\x1b\\", "\\x1bPq#0\\x1b\\\\x1b_app\\x1b\\"),
            (b"\x1b^pm\x1b\\\x1bXsos\x1b\\", "\\x1b^pm\\x1b\\\\x1bXsos\\x1b\\"),
            (b"\x1bc\x1b(B\x1b7", "\\x1bc\\x1b(B\\x1b7"),
        ];
        for (text, want) in cases {
            assert_eq!(shown(text), want, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn partial_and_unterminated_sequences_are_escaped() {
        assert_eq!(shown(b"a\x1b"), "a\\x1b", "an ESC at the end");
        assert_eq!(shown(b"a\x1b["), "a\\x1b[");
        assert_eq!(shown(b"a\x1b[31"), "a\\x1b[31", "an SGR cut before its m");
        assert_eq!(shown(b"\x1b[31\x1b[0m"), "\\x1b[31\x1b[0m", "the next sequence is judged on its own");
        assert_eq!(shown(b"\x1b]0;never ends"), "\\x1b]0;never ends");
        assert_eq!(shown(b"\x1b\x1b[1m"), "\\x1b\x1b[1m");
    }

    #[test]
    fn c0_controls_del_and_carriage_returns_are_escaped() {
        assert_eq!(shown(b"\x00\x01\x07\x08\x0b\x0c\x0e\x1f\x7f"), "\\x00\\x01\\x07\\x08\\x0b\\x0c\\x0e\\x1f\\x7f");
        assert_eq!(shown(b"50%\r60%\rdone"), "50%\\x0d60%\\x0ddone", "a line cannot overwrite itself");
        assert_eq!(shown(b"a\nb"), "a\\x0ab", "a newline cannot end the rendered line early");
    }

    #[test]
    fn c1_controls_are_escaped_as_utf8_and_as_raw_bytes() {
        assert_eq!(
            shown("\u{9b}2J \u{9d}0;t\u{9c} \u{85} \u{80}\u{9f}".as_bytes()),
            "\\u009b2J \\u009d0;t\\u009c \\u0085 \\u0080\\u009f"
        );
        // Raw 8-bit controls outside UTF-8 are escaped; other invalid bytes stay as
        // written, and continuation bytes inside valid UTF-8 are left alone.
        let mut out = Vec::new();
        push_escaped(b"\x9b2J \x80 \xff\xfe \xc3 \xe6\x97\xa5 \xe6\x97 \xed\xa0\x80", &mut out);
        assert_eq!(out, b"\\x9b2J \\x80 \xff\xfe \xc3 \xe6\x97\xa5 \xe6\\x97 \xed\xa0\\x80");
    }

    #[test]
    fn nothing_executable_survives_any_byte_pair() {
        let mut text = Vec::new();
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                text.extend_from_slice(&[a, b, b' ']);
            }
        }
        let mut out = Vec::new();
        push_escaped(&text, &mut out);
        for (i, &b) in out.iter().enumerate() {
            assert!(b == b'\t' || b >= 0x20 && b != 0x7f, "control byte {b:#04x} at {i}");
            if b == 0x1b {
                assert!(sgr_len(&out[i..]).is_some(), "an ESC that is not SGR at {i}");
            }
        }
        for chunk in out.utf8_chunks() {
            assert!(!chunk.valid().chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)), "a C1 control as UTF-8");
            assert!(chunk.invalid().iter().all(|b| !(0x80..=0x9f).contains(b)), "a raw 8-bit control");
        }
    }
}

//! Parsing one source line into a [`Record`]: its timestamp, tag and text.
//!
//! Parsing is a pure function of the line bytes and the source's [`SourceState`], so
//! ingest (deciding the merge order) and replay (re-rendering an old range) agree on
//! every record. A line that cannot be parsed becomes a `Notice` record carrying the
//! raw line; nothing is dropped.

use std::borrow::Cow;

use base64::Engine as _;

use crate::time::parse_rfc3339_prefix;

/// Raw lines quoted in notices are cut to this many bytes.
pub const NOTICE_QUOTE_MAX: usize = 4096;

/// One of the three logical logs of a sandbox. The declaration order is the merge
/// tie-break of DESIGN §2.2 (`exec < runtime < kernel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    /// `exec.log`: JSON Lines of captured output, rotated.
    Exec = 0,
    /// `runtime.log`: the runtime's tracing text, rotated.
    Runtime = 1,
    /// `kernel.log`: guest console text, not rotated.
    Kernel = 2,
}

impl SourceKind {
    /// All sources, in merge order.
    pub const ALL: [SourceKind; 3] = [SourceKind::Exec, SourceKind::Runtime, SourceKind::Kernel];

    /// The live file name inside the logs directory.
    pub fn file_name(self) -> &'static str {
        match self {
            SourceKind::Exec => "exec.log",
            SourceKind::Runtime => "runtime.log",
            SourceKind::Kernel => "kernel.log",
        }
    }

    /// Position of this source in per-source arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The source at `index` (inverse of [`SourceKind::index`]).
    pub fn from_index(index: usize) -> Option<SourceKind> {
        SourceKind::ALL.get(index).copied()
    }

    /// How many rotated siblings (`X.1` … `X.N`) the producer keeps.
    pub fn rotated_siblings(self) -> u32 {
        match self {
            SourceKind::Exec | SourceKind::Runtime => 4,
            SourceKind::Kernel => 0,
        }
    }
}

/// Parse state that carries from one line of a source to the next. Checkpoints store
/// it, so rendering from a checkpoint needs nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceState {
    /// Timestamp of the previous record (`None` before the first).
    pub last_ts: Option<i64>,
    /// Birth time of the current generation, set by a `Base` op; kernel uptime stamps
    /// are relative to it, and it is the fallback for lines with no time of their own.
    pub birth: i64,
}

impl SourceState {
    /// State before anything was read: no previous line, birth at the epoch.
    pub const INITIAL: SourceState = SourceState { last_ts: None, birth: 0 };

    fn fallback_ts(&self) -> i64 {
        self.last_ts.unwrap_or(self.birth)
    }
}

/// Which stream of an exec session, or which other source, a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tag {
    /// Captured stdout of an exec session.
    Stdout(Option<u64>),
    /// Captured stderr of an exec session.
    Stderr(Option<u64>),
    /// Captured pty output (both streams merged).
    Output(Option<u64>),
    /// A lifecycle marker from exec.log.
    System,
    /// A runtime.log line.
    Runtime,
    /// A kernel.log line.
    Kernel,
    /// A line msbfs writes itself (gap, corrupt source line, retention).
    Notice,
}

impl Tag {
    /// The tag's name without the session id: `stdout`, …, `msbfs` for notices.
    pub fn name(self) -> &'static str {
        match self {
            Tag::Stdout(_) => "stdout",
            Tag::Stderr(_) => "stderr",
            Tag::Output(_) => "output",
            Tag::System => "system",
            Tag::Runtime => "runtime",
            Tag::Kernel => "kernel",
            Tag::Notice => "msbfs",
        }
    }

    /// The exec session id of a captured-output tag.
    pub fn session(self) -> Option<u64> {
        match self {
            Tag::Stdout(id) | Tag::Stderr(id) | Tag::Output(id) => id,
            _ => None,
        }
    }

    /// Appends the rendered tag, e.g. `stdout[7]`.
    pub fn push_to(self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.name().as_bytes());
        if let Some(mut id) = self.session() {
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (id % 10) as u8;
                id /= 10;
                if id == 0 {
                    break;
                }
            }
            out.push(b'[');
            out.extend_from_slice(&digits[at..]);
            out.push(b']');
        }
    }
}

/// A parsed source line. `text` holds no `\n` except for exec chunks, which may hold
/// several lines (and may end mid-line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the Unix epoch, UTC.
    pub ts: i64,
    /// Rendered tag.
    pub tag: Tag,
    /// Text without the timestamp prefix.
    pub text: Vec<u8>,
}

impl Record {
    /// An msbfs notice at `ts`.
    pub fn notice(ts: i64, text: String) -> Record {
        Record { ts, tag: Tag::Notice, text: text.into_bytes() }
    }
}

/// The notice for `bytes` unread bytes of `source` that vanished.
pub fn gap_notice(source: SourceKind, bytes: u64, state: &SourceState) -> Record {
    Record::notice(
        state.fallback_ts(),
        format!("{bytes} bytes of {} were lost before msbfs could read them", source.file_name()),
    )
}

/// The notice for `generations` whole generations of `source` rotated away before
/// msbfs could open them (a lower bound).
pub fn lost_notice(source: SourceKind, generations: u64, state: &SourceState) -> Record {
    let what = if generations == 1 { "generation".to_string() } else { "generations".to_string() };
    Record::notice(
        state.fallback_ts(),
        format!(
            "at least {generations} {what} of {} were rotated away before msbfs could open them",
            source.file_name()
        ),
    )
}

/// The notice for what `source`'s producer wrote and rotated away while msbfs was not
/// running (`bytes` when known).
pub fn missed_notice(source: SourceKind, bytes: Option<u64>, state: &SourceState) -> Record {
    let text = match bytes {
        Some(n) => format!("{}: {n} bytes written while msbfs was not running were rotated away", source.file_name()),
        None => format!("{}: bytes written while msbfs was not running were rotated away", source.file_name()),
    };
    Record::notice(state.fallback_ts(), text)
}

/// The notice for line fragments of exec streams that were held when msbfs stopped
/// and could not be rebuilt after it restarted.
pub fn fragments_lost_notice(state: &SourceState) -> Record {
    Record::notice(
        state.fallback_ts(),
        "partial exec.log lines held when msbfs stopped could not be rebuilt; their first part is missing".into(),
    )
}

/// Text put before a runtime line that may be the tail of a line whose start is gone
/// (see [`Before::Unread`]).
pub const START_LOST: &str = "[start of line lost] ";

/// Whether msbfs read what came just before a line in its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Before {
    /// The line follows bytes msbfs read: it begins where a line begins.
    Read,
    /// The line begins a generation and what came before it was never read: the source's
    /// first generation when msbfs first looked (the oldest on disk at first sight), or
    /// the one after bytes or whole generations that were lost. The producer writes
    /// `runtime.log` in raw pieces and rotation can cut a line, so such a line may be
    /// the tail of a line whose start is gone.
    Unread,
}

/// What the line reader hands to the parser.
#[derive(Clone, Copy, Debug)]
pub enum RawLine<'a> {
    /// A whole line without its `\n`.
    Complete(&'a [u8]),
    /// A line longer than the reader's limit, skipped up to its `\n`.
    TooLong {
        /// Its full length in bytes.
        len: u64,
        /// Its first bytes (at most 4 KiB), to quote.
        head: &'a [u8],
    },
}

/// The raw line of `kind` quoted in a notice: its first [`NOTICE_QUOTE_MAX`] bytes as
/// lossy UTF-8, with ANSI escapes stripped for runtime and kernel lines like their
/// text. (The renderer's display step escapes what control characters remain, as in
/// any line.)
fn quote(kind: SourceKind, raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(NOTICE_QUOTE_MAX)];
    match kind {
        SourceKind::Exec => String::from_utf8_lossy(cut).into_owned(),
        SourceKind::Runtime | SourceKind::Kernel => String::from_utf8_lossy(&strip_ansi(cut)).into_owned(),
    }
}

/// Parses one line of `kind`, updating `state` (the previous timestamp); `before` says
/// whether what came before it was read.
pub fn parse_line(kind: SourceKind, line: RawLine<'_>, before: Before, state: &mut SourceState) -> Record {
    let record = match line {
        RawLine::TooLong { len, head } => Record::notice(
            state.fallback_ts(),
            format!(
                "skipped a {} line of {len} bytes (longer than the 16 MiB limit): {}",
                kind.file_name(),
                quote(kind, head)
            ),
        ),
        RawLine::Complete(bytes) => match kind {
            SourceKind::Exec => parse_exec(bytes, state),
            SourceKind::Runtime => parse_runtime(bytes, before, state),
            SourceKind::Kernel => parse_kernel(bytes, state),
        },
    };
    state.last_ts = Some(record.ts);
    record
}

fn parse_exec(bytes: &[u8], state: &SourceState) -> Record {
    match decode_exec(bytes) {
        Ok(record) => record,
        Err(reason) => Record::notice(
            state.fallback_ts(),
            format!("corrupt exec.log line ({reason}): {}", quote(SourceKind::Exec, bytes)),
        ),
    }
}

fn decode_exec(bytes: &[u8]) -> Result<Record, String> {
    let entry = super::exec_json::decode(bytes)?;
    let (ts, used) = parse_rfc3339_prefix(entry.t.as_bytes()).ok_or("bad timestamp")?;
    if used != entry.t.len() {
        return Err("bad timestamp".into());
    }
    let tag = match entry.s.as_ref() {
        "stdout" => Tag::Stdout(entry.id),
        "stderr" => Tag::Stderr(entry.id),
        "output" => Tag::Output(entry.id),
        "system" => Tag::System,
        other => return Err(format!("unknown stream {other:?}")),
    };
    let text = match entry.e.as_deref() {
        None => entry.d.into_owned().into_bytes(),
        Some("b64") => {
            base64::engine::general_purpose::STANDARD.decode(entry.d.as_bytes()).map_err(|_| "bad base64 body")?
        }
        Some(other) => return Err(format!("unknown encoding {other:?}")),
    };
    Ok(Record { ts, tag, text })
}

fn strip_cr(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// Removes ANSI escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ESC \`, and
/// `ESC [intermediates] final`).
pub fn strip_ansi(bytes: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(0x1b, bytes).is_none() {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != 0x1b {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'[') => {
                i += 2;
                while i < bytes.len() && !(0x40..=0x7e).contains(&bytes[i]) {
                    i += 1;
                }
                i += 1;
            }
            Some(b']') => {
                i += 2;
                while i < bytes.len() {
                    if bytes[i] == 0x07 {
                        i += 1;
                        break;
                    }
                    if bytes[i] == 0x1b && bytes.get(i + 1) == Some(&b'\\') {
                        i += 2;
                        break;
                    }
                    i += 1;
                }
            }
            Some(_) => {
                // ESC, intermediate bytes (0x20..=0x2f), one final byte.
                i += 1;
                while i < bytes.len() && (0x20..=0x2f).contains(&bytes[i]) {
                    i += 1;
                }
                i += 1;
            }
            None => i += 1,
        }
    }
    Cow::Owned(out)
}

/// A runtime line: its leading timestamp moves into the record. A line without one is a
/// continuation line with the previous line's time, unless what came before it was
/// never read ([`Before::Unread`]): then it may be the tail of a line whose start is
/// gone, so it is marked with [`START_LOST`] and takes the birth time of its
/// generation (recorded, so a replay gives the same time).
fn parse_runtime(bytes: &[u8], before: Before, state: &SourceState) -> Record {
    let clean = strip_ansi(strip_cr(bytes));
    match parse_rfc3339_prefix(&clean) {
        Some((ts, used)) if clean.get(used).is_none_or(|b| *b == b' ' || *b == b'\t') => {
            let rest = &clean[used..];
            let start = rest.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(rest.len());
            Record { ts, tag: Tag::Runtime, text: rest[start..].to_vec() }
        }
        _ if before == Before::Unread => {
            let mut text = START_LOST.as_bytes().to_vec();
            text.extend_from_slice(&clean);
            Record { ts: state.birth, tag: Tag::Runtime, text }
        }
        _ => Record { ts: state.fallback_ts(), tag: Tag::Runtime, text: clean.into_owned() },
    }
}

/// Parses a kernel uptime stamp `[    1.234567]` at the start of `line` into milliseconds.
fn parse_uptime(line: &[u8]) -> Option<i64> {
    let rest = line.strip_prefix(b"[")?;
    let close = memchr::memchr(b']', rest)?;
    let inner = std::str::from_utf8(&rest[..close]).ok()?.trim_start();
    let (secs, frac) = inner.split_once('.')?;
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut millis = 0i64;
    for (n, b) in frac.bytes().take(3).enumerate() {
        millis += i64::from(b - b'0') * [100, 10, 1][n];
    }
    secs.checked_mul(1000)?.checked_add(millis)
}

fn parse_kernel(bytes: &[u8], state: &SourceState) -> Record {
    let clean = strip_ansi(strip_cr(bytes));
    let ts = match parse_uptime(&clean) {
        Some(uptime) => state.birth.saturating_add(uptime),
        None => state.fallback_ts(),
    };
    Record { ts, tag: Tag::Kernel, text: clean.into_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{format_timestamp, parse_rfc3339};

    fn parse(kind: SourceKind, line: &[u8], state: &mut SourceState) -> Record {
        parse_line(kind, RawLine::Complete(line), Before::Read, state)
    }

    fn ts(text: &str) -> i64 {
        parse_rfc3339(text).unwrap()
    }

    #[test]
    fn exec_tags_and_ids() {
        let mut st = SourceState::INITIAL;
        let cases: [(&str, Tag); 5] = [
            (r#"{"t":"2026-04-30T20:32:59.688Z","s":"stdout","d":"hi\n","id":7}"#, Tag::Stdout(Some(7))),
            (r#"{"t":"2026-04-30T20:32:59.688Z","s":"stderr","d":"hi\n","id":8}"#, Tag::Stderr(Some(8))),
            (r#"{"t":"2026-04-30T20:32:59.688Z","s":"output","d":"hi\n","id":9}"#, Tag::Output(Some(9))),
            (r#"{"t":"2026-04-30T20:32:59.688Z","s":"output","d":"hi\n"}"#, Tag::Output(None)),
            (r#"{"t":"2026-04-30T20:32:59.688Z","s":"system","d":"hi\n"}"#, Tag::System),
        ];
        for (line, tag) in cases {
            let rec = parse(SourceKind::Exec, line.as_bytes(), &mut st);
            assert_eq!(rec, Record { ts: ts("2026-04-30T20:32:59.688Z"), tag, text: b"hi\n".to_vec() });
        }
        let mut out = Vec::new();
        Tag::Stderr(Some(12)).push_to(&mut out);
        Tag::Notice.push_to(&mut out);
        assert_eq!(out, b"stderr[12]msbfs");
    }

    #[test]
    fn exec_base64_and_escapes() {
        let mut st = SourceState::INITIAL;
        let rec = parse(
            SourceKind::Exec,
            br#"{"t":"2026-04-30T20:32:59.688Z","s":"stdout","d":"/2hpCg==","e":"b64","id":1}"#,
            &mut st,
        );
        assert_eq!(rec.text, b"\xffhi\n");
        let rec = parse(
            SourceKind::Exec,
            br#"{"t":"2026-04-30T20:32:59.688Z","s":"stdout","d":"a\tb\u00e9\ufffd\r\n","id":1}"#,
            &mut st,
        );
        assert_eq!(rec.text, "a\tbé\u{fffd}\r\n".as_bytes());
    }

    #[test]
    fn corrupt_exec_lines_become_notices_with_previous_time() {
        let mut st = SourceState::INITIAL;
        parse(SourceKind::Exec, br#"{"t":"2026-04-30T20:32:59.688Z","s":"stdout","d":"x","id":1}"#, &mut st);
        let bad: [&[u8]; 8] = [
            b"{not json",
            br#"{"s":"stdout","d":"x"}"#,
            br#"{"t":"2026-04-30T20:32:59.688Z","d":"x"}"#,
            br#"{"t":"yesterday","s":"stdout","d":"x"}"#,
            br#"{"t":"2026-04-30T20:32:59.688+99:99","s":"stdout","d":"x"}"#,
            br#"{"t":"2026-04-30T20:32:59.688Z","s":"telepathy","d":"x"}"#,
            br#"{"t":"2026-04-30T20:32:59.688Z","s":"stdout","d":"!!","e":"b64"}"#,
            b"\xff\xfe garbage",
        ];
        for line in bad {
            let rec = parse(SourceKind::Exec, line, &mut st);
            assert_eq!(rec.tag, Tag::Notice, "{}", String::from_utf8_lossy(line));
            assert_eq!(rec.ts, ts("2026-04-30T20:32:59.688Z"));
            let text = String::from_utf8(rec.text).unwrap();
            assert!(text.starts_with("corrupt exec.log line ("), "{text}");
            assert!(text.ends_with(&*String::from_utf8_lossy(line)), "{text}");
        }
    }

    #[test]
    fn notice_quotes_are_cut_at_4k() {
        let mut st = SourceState::INITIAL;
        let line = vec![b'x'; 10_000];
        let rec = parse(SourceKind::Exec, &line, &mut st);
        assert!(rec.text.len() < NOTICE_QUOTE_MAX + 100);
        let rec =
            parse_line(SourceKind::Runtime, RawLine::TooLong { len: 20_000_000, head: &line }, Before::Read, &mut st);
        assert_eq!(rec.tag, Tag::Notice);
        assert!(String::from_utf8(rec.text).unwrap().contains("20000000 bytes"));
    }

    #[test]
    fn quotes_of_runtime_and_kernel_lines_are_stripped_like_their_text() {
        let mut st = SourceState::INITIAL;
        let head = b"2026-04-30T20:32:59.690Z \x1b[32m INFO\x1b[0m \x1b]0;t\x07x";
        for kind in [SourceKind::Runtime, SourceKind::Kernel] {
            let rec = parse_line(kind, RawLine::TooLong { len: 20_000_000, head }, Before::Read, &mut st);
            let text = String::from_utf8(rec.text).unwrap();
            assert!(text.ends_with(": 2026-04-30T20:32:59.690Z  INFO x"), "{text:?}");
        }
        // An exec line's quote keeps what it holds; the renderer shows it like exec text.
        let rec = parse(SourceKind::Exec, b"{\x1b[31mnot json\x1b]0;t\x07", &mut st);
        assert!(rec.text.ends_with(b": {\x1b[31mnot json\x1b]0;t\x07"), "{:?}", String::from_utf8_lossy(&rec.text));
    }

    #[test]
    fn runtime_moves_timestamp_strips_ansi_and_inherits_time() {
        let mut st = SourceState { last_ts: None, birth: 5 };
        let cont = parse(SourceKind::Runtime, b"    at frame 0", &mut st);
        assert_eq!((cont.ts, cont.text.as_slice()), (5, &b"    at frame 0"[..]));
        let rec = parse(
            SourceKind::Runtime,
            b"2026-04-30T20:32:59.690123Z \x1b[32m INFO\x1b[0m microsandbox_runtime::vm: booting\r",
            &mut st,
        );
        assert_eq!(format_timestamp(rec.ts), "2026-04-30T20:32:59.690Z");
        assert_eq!(rec.text, b"INFO microsandbox_runtime::vm: booting");
        let cont = parse(SourceKind::Runtime, b"   0: std::backtrace", &mut st);
        assert_eq!(cont.ts, rec.ts);
        assert_eq!(cont.text, b"   0: std::backtrace");
        // An offset beyond 23:59 is no timestamp: the line keeps it and the previous time.
        let odd = parse(SourceKind::Runtime, b"2026-04-30T20:33:00.000+99:99 INFO x", &mut st);
        assert_eq!((odd.ts, odd.text.as_slice()), (rec.ts, &b"2026-04-30T20:33:00.000+99:99 INFO x"[..]));
    }

    #[test]
    fn a_runtime_line_after_unread_bytes_without_a_timestamp_is_a_tail() {
        let birth = ts("2026-04-30T20:30:00.000Z");
        let mut st = SourceState { last_ts: Some(ts("2026-04-30T20:00:00.000Z")), birth };
        let unread = |line: &[u8], st: &mut SourceState| {
            parse_line(SourceKind::Runtime, RawLine::Complete(line), Before::Unread, st)
        };
        let tail = unread(b"14Z \x1b[33m WARN\x1b[0m microsandbox_runtime::vm: x\r", &mut st);
        assert_eq!(tail.ts, birth, "the generation's birth time, not the previous line's");
        assert_eq!(String::from_utf8(tail.text).unwrap(), "[start of line lost] 14Z  WARN microsandbox_runtime::vm: x");
        assert_eq!(st.last_ts, Some(birth), "the lines after it inherit that time");
        let empty = unread(b"", &mut st);
        assert_eq!((empty.ts, empty.text.as_slice()), (birth, START_LOST.as_bytes()));
        // A whole line is a whole line whatever came before it.
        let whole = unread(b"2026-04-30T20:32:59.690Z  INFO a", &mut st);
        assert_eq!(
            (format_timestamp(whole.ts).as_str(), whole.text.as_slice()),
            ("2026-04-30T20:32:59.690Z", &b"INFO a"[..])
        );
        // Exec and kernel lines are judged on their own.
        let kernel = parse_line(SourceKind::Kernel, RawLine::Complete(b"console: x"), Before::Unread, &mut st);
        assert_eq!(kernel.text, b"console: x");
    }

    #[test]
    fn kernel_uptime_is_relative_to_birth() {
        let birth = ts("2026-04-30T20:32:58.100Z");
        let mut st = SourceState { last_ts: None, birth };
        let rec = parse(SourceKind::Kernel, b"[    1.234567] Linux version 6.1.0", &mut st);
        assert_eq!(format_timestamp(rec.ts), "2026-04-30T20:32:59.334Z");
        assert_eq!(rec.text, b"[    1.234567] Linux version 6.1.0");
        let plain = parse(SourceKind::Kernel, b"\x1b[1mWelcome\x1b[0m", &mut st);
        assert_eq!((plain.ts, plain.text.as_slice()), (rec.ts, &b"Welcome"[..]));
        let odd = parse(SourceKind::Kernel, b"[ x.1] not a stamp", &mut st);
        assert_eq!(odd.ts, rec.ts);
    }

    #[test]
    fn ansi_stripping_handles_csi_osc_and_truncation() {
        assert_eq!(&*strip_ansi(b"a\x1b[1;31mb\x1b[0mc"), b"abc");
        assert_eq!(&*strip_ansi(b"a\x1b]0;title\x07b\x1b]8;;x\x1b\\c"), b"abc");
        assert_eq!(&*strip_ansi(b"a\x1b(Bb\x1b"), b"ab");
        assert_eq!(&*strip_ansi(b"a\x1b[12"), b"a");
    }
}

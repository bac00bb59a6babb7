//! UTC timestamps as milliseconds since the Unix epoch: the one 24-byte text form
//! `merged.log` prints, and a tolerant RFC 3339 parser for what producers write.

/// Length of every rendered timestamp, `2026-04-30T20:32:59.688Z`.
pub const TIMESTAMP_LEN: usize = 24;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: `(year, month, day)`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The wall clock in Unix milliseconds (0 before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Appends `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (always [`TIMESTAMP_LEN`] bytes; years are
/// clamped to 0000..=9999 so the width never changes).
pub fn push_timestamp(out: &mut Vec<u8>, ms: i64) {
    // Lines come in runs of the same millisecond: the last one formatted is kept.
    thread_local! {
        static LAST: std::cell::Cell<(i64, [u8; TIMESTAMP_LEN])> = const { std::cell::Cell::new((i64::MIN, [0; TIMESTAMP_LEN])) };
    }
    let ms = ms.clamp(MIN_MS, MAX_MS);
    let (last, text) = LAST.get();
    if last == ms {
        return out.extend_from_slice(&text);
    }
    let text = format_into(ms);
    LAST.set((ms, text));
    out.extend_from_slice(&text);
}

const MIN_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z

/// `ms` (within `MIN_MS..=MAX_MS`) as a rendered timestamp.
fn format_into(ms: i64) -> [u8; TIMESTAMP_LEN] {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let fields = [(y, 4), (mo, 2), (d, 2), (in_day / 3_600_000, 2), (in_day / 60_000 % 60, 2), (in_day / 1000 % 60, 2)];
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let ends = [4, 7, 10, 13, 16, 19];
    for ((value, width), end) in fields.into_iter().zip(ends) {
        push_digits(&mut text[end - width..end], value);
    }
    push_digits(&mut text[20..23], in_day % 1000);
    text
}

/// Writes `value` as zero-padded decimal digits filling `slot`.
fn push_digits(slot: &mut [u8], mut value: i64) {
    for b in slot.iter_mut().rev() {
        *b = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Formats `ms` as a rendered timestamp string.
pub fn format_timestamp(ms: i64) -> String {
    let mut out = Vec::with_capacity(TIMESTAMP_LEN);
    push_timestamp(&mut out, ms);
    String::from_utf8(out).expect("timestamps are ASCII")
}

fn digits(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0')))
}

/// Parses an RFC 3339 timestamp at the start of `text` (`2026-04-30T20:32:59.690Z`,
/// any number of fraction digits, `Z` or `±hh:mm` with `hh` at most 23 and `mm` at most
/// 59, `T` or space as separator); anything else is not a timestamp.
/// Returns the time truncated to milliseconds and the number of bytes it occupied.
pub fn parse_rfc3339_prefix(text: &[u8]) -> Option<(i64, usize)> {
    if text.len() < 20 {
        return None;
    }
    let sep_ok = text[4] == b'-'
        && text[7] == b'-'
        && matches!(text[10], b'T' | b't' | b' ')
        && text[13] == b':'
        && text[16] == b':';
    if !sep_ok {
        return None;
    }
    let year = digits(&text[0..4])?;
    let month = digits(&text[5..7])?;
    let day = digits(&text[8..10])?;
    let hour = digits(&text[11..13])?;
    let minute = digits(&text[14..16])?;
    let second = digits(&text[17..19])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i64;
    if text.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while at < text.len() && text[at].is_ascii_digit() {
            if at - start < 3 {
                millis = millis * 10 + i64::from(text[at] - b'0');
            }
            at += 1;
        }
        let n = at - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min = match text.get(at)? {
        b'Z' | b'z' => {
            at += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            let tz = text.get(at + 1..at + 6)?;
            if tz[2] != b':' {
                return None;
            }
            let (hours, minutes) = (digits(&tz[0..2])?, digits(&tz[3..5])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let minutes = hours * 60 + minutes;
            at += 6;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some((secs * 1000 + millis, at))
}

/// Parses a whole string as an RFC 3339 timestamp (nothing may follow it).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    match parse_rfc3339_prefix(text.as_bytes()) {
        Some((ms, used)) if used == text.len() => Some(ms),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_millisecond_timestamps() {
        for text in ["2026-04-30T20:32:59.688Z", "1970-01-01T00:00:00.000Z", "2000-02-29T23:59:59.999Z"] {
            let ms = parse_rfc3339(text).unwrap();
            assert_eq!(format_timestamp(ms), text);
        }
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.000Z"), Some(1000));
    }

    #[test]
    fn parses_fractions_offsets_and_prefixes() {
        assert_eq!(parse_rfc3339("2026-04-30T20:32:59Z"), parse_rfc3339("2026-04-30T20:32:59.000Z"));
        assert_eq!(parse_rfc3339("2026-04-30T20:32:59.6889999Z"), parse_rfc3339("2026-04-30T20:32:59.688Z"));
        assert_eq!(parse_rfc3339("2026-04-30T22:32:59.5+02:00"), parse_rfc3339("2026-04-30T20:32:59.500Z"));
        let (ms, used) = parse_rfc3339_prefix(b"2026-04-30T20:32:59.690Z  INFO x").unwrap();
        assert_eq!((format_timestamp(ms).as_str(), used), ("2026-04-30T20:32:59.690Z", 24));
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "2026-04-30",
            "2026-13-30T20:32:59Z",
            "2026-04-30T20:32:59",
            "2026-04-30T20:32:59.Z",
            "x026-04-30T20:32:59Z",
        ] {
            assert_eq!(parse_rfc3339(text), None, "{text}");
        }
    }

    #[test]
    fn offsets_are_at_most_23_59() {
        assert_eq!(parse_rfc3339("2026-04-30T20:32:59+23:59"), parse_rfc3339("2026-04-29T20:33:59Z"));
        assert_eq!(parse_rfc3339("2026-04-30T20:32:59-23:59"), parse_rfc3339("2026-05-01T20:31:59Z"));
        for text in [
            "2026-04-30T20:32:59+99:99",
            "2026-04-30T20:32:59+24:00",
            "2026-04-30T20:32:59-24:00",
            "2026-04-30T20:32:59+05:60",
            "2026-04-30T20:32:59.5-00:99",
        ] {
            assert_eq!(parse_rfc3339(text), None, "{text}");
        }
    }

    #[test]
    fn width_is_constant_even_when_clamped() {
        for ms in [i64::MIN, -1, 0, i64::MAX] {
            assert_eq!(format_timestamp(ms).len(), TIMESTAMP_LEN);
        }
    }
}

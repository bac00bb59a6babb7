//! The xattrs of every file of a sandbox (DESIGN §2.5 and the views issue):
//!
//! - `user.cursor`: the cursor at the current end;
//! - `user.offset.at.<time>`: the offset of the first line (in file order) at or after
//!   `<time>`, an RFC 3339 time (`2026-04-30T20:33:00Z`, `2026-04-30T20:33:00.5+02:00`)
//!   or one relative to now (`-5m`, `-90s`, `-2h`, `-1d`);
//! - `user.cursor.at.<offset>`: the cursor just after the last entry that ends at or
//!   before `<offset>`;
//! - `user.offset.of.<cursor>`: where to resume after `<cursor>` (msbfs's or the SDK's):
//!   `ESTALE` for another epoch or a generation never seen, `EINVAL` for a malformed one.
//!
//! Values are ASCII: offsets in decimal, cursors in base64.

use super::{FsError, SandboxNode};
use crate::time::{now_ms, parse_rfc3339};
use crate::timeline::cursor;
use crate::view::all::AllViews;
use crate::view::{CursorError, View};

/// The cursor at the end.
pub const CURSOR: &str = "user.cursor";
const OFFSET_AT: &str = "user.offset.at.";
const CURSOR_AT: &str = "user.cursor.at.";
const OFFSET_OF: &str = "user.offset.of.";

/// Parses `<time>` of `user.offset.at.<time>`, relative to `now` (Unix milliseconds).
pub fn parse_time(text: &str, now: i64) -> Option<i64> {
    if let Some(ago) = text.strip_prefix('-') {
        let split = ago.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = ago.split_at(split);
        let n: i64 = n.parse().ok()?;
        let unit_ms = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        return Some(now - n.checked_mul(unit_ms)?);
    }
    parse_rfc3339(text)
}

/// The value of xattr `name` of `view` of `node`.
pub fn get(node: &SandboxNode, view: View, name: &str) -> Result<Vec<u8>, FsError> {
    let io = |e: std::io::Error| {
        tracing::warn!(sandbox = ?node.name, "cannot read a view index: {e}");
        FsError::Io
    };
    if name == CURSOR {
        let (sources, size) = node.timeline.cursor();
        return Ok(cursor::encode(&sources, node.timeline.epoch(), size).into_bytes());
    }
    let Some(views) = &node.views else { return Err(FsError::NoAttr) };
    if let Some(time) = name.strip_prefix(OFFSET_AT) {
        let ts = parse_time(time, now_ms()).ok_or(FsError::Invalid)?;
        return Ok(views.offset_at(view, ts).map_err(io)?.to_string().into_bytes());
    }
    if let Some(offset) = name.strip_prefix(CURSOR_AT) {
        let offset: u64 = offset.parse().map_err(|_| FsError::Invalid)?;
        return Ok(views.cursor_at(view, offset).map_err(io)?.into_bytes());
    }
    if let Some(text) = name.strip_prefix(OFFSET_OF) {
        return match views.offset_of(view, text) {
            Ok(offset) => Ok(offset.to_string().into_bytes()),
            Err(CursorError::Malformed) => Err(FsError::Invalid),
            Err(CursorError::Stale) => Err(FsError::Stale),
            Err(CursorError::Io) => Err(FsError::Io),
        };
    }
    Err(FsError::NoAttr)
}

/// The value of xattr `name` of `all.log` (`all.jsonl` when `json`): only
/// `user.offset.at.<time>` (a cursor is per sandbox).
pub fn get_all(all: &AllViews, json: bool, name: &str) -> Result<Vec<u8>, FsError> {
    let Some(time) = name.strip_prefix(OFFSET_AT) else { return Err(FsError::NoAttr) };
    let ts = parse_time(time, now_ms()).ok_or(FsError::Invalid)?;
    match all.offset_at(json, ts) {
        Ok(offset) => Ok(offset.to_string().into_bytes()),
        Err(e) => {
            tracing::warn!("cannot read the all.log index: {e}");
            Err(FsError::Io)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_absolute_and_relative() {
        let now = parse_rfc3339("2026-04-30T20:33:00Z").unwrap();
        assert_eq!(parse_time("-5m", now), Some(now - 300_000));
        assert_eq!(parse_time("-90s", now), Some(now - 90_000));
        assert_eq!(parse_time("-1d", now), Some(now - 86_400_000));
        assert_eq!(parse_time("2026-04-30T20:33:00Z", 0), Some(now));
        assert_eq!(parse_time("-5y", now), None);
        assert_eq!(parse_time("-m", now), None);
        assert_eq!(parse_time("yesterday", now), None);
    }
}

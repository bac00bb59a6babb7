//! `merged.jsonl`: every source entry as one JSON line (the views issue). The entries
//! live in the store's journal, recorded by the timeline with each commit
//! ([`LogEntry`]), so they are as durable as `merged.log` and are retained with it; the
//! JSON line is rendered from the entry on read ([`render_json`]), always the same bytes.
//!
//! A sparse index of points (one per 64 KiB of JSON, at a commit) maps JSON offsets,
//! `merged.log` offsets, entry numbers and times to the journal: a point records where
//! its commit starts in each, and the latest entry time before it, so lookups by any of
//! them are a binary search and a short scan of the journal.

use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::store::pool::PooledFile;
use crate::store::EpochStore;
use crate::timeline::journal::{visit_log, LogItem};
use crate::timeline::json::{render_json, JsonContext, LogEntry};
use crate::timeline::{Committed, CursorPos};

/// JSON bytes between two index points.
const POINT_EVERY: u64 = 64 << 10;
const POINT_LEN: u64 = 48;
/// Longest notice line standing for JSON the store no longer has.
const NOTICE_LINE: u64 = 4096;

/// Where a commit starts in every coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    /// Offset in `merged.jsonl`.
    pub json: u64,
    /// Logical journal offset of the commit.
    pub journal: u64,
    /// Offset in `merged.log`.
    pub merged: u64,
    /// Entries before it.
    pub entry: u64,
    /// Latest entry time before it (`i64::MIN` when none).
    pub max_ts: i64,
}

impl Point {
    fn encode(&self) -> [u8; POINT_LEN as usize] {
        let mut e = [0u8; POINT_LEN as usize];
        for (i, v) in [self.json, self.journal, self.merged, self.entry, self.max_ts as u64].into_iter().enumerate() {
            e[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&e[..40]);
        e[40..44].copy_from_slice(&crc.to_le_bytes());
        e
    }

    fn decode(e: &[u8]) -> Option<Point> {
        if crc32fast::hash(&e[..40]).to_le_bytes() != e[40..44] {
            return None;
        }
        let w = |i: usize| u64::from_le_bytes(e[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Some(Point { json: w(0), journal: w(1), merged: w(2), entry: w(3), max_ts: w(4) as i64 })
    }
}

/// One entry met by a scan, with where it is.
#[derive(Debug)]
pub struct Visit<'a> {
    /// The entry (its text borrowed from the journal).
    pub entry: &'a LogEntry<&'a [u8]>,
    /// Offset of its JSON line.
    pub json: u64,
    /// Its number in the epoch (0 for the first).
    pub index: u64,
    /// Source positions after it.
    pub after: &'a [CursorPos; 3],
}

/// The JSON view of one epoch.
#[derive(Debug)]
pub struct JsonIndex {
    store: Arc<EpochStore>,
    points: Arc<PooledFile>,
    count: u64,
    last: Option<Point>,
    size: u64,
    entries: u64,
    max_ts: i64,
    /// Logical journal offset of the last commit counted.
    seen: Option<u64>,
}

impl JsonIndex {
    /// Opens the index kept in `points` (created with its first point when it does not
    /// `exist`) and brings it up to the end of the journal.
    pub fn open(store: Arc<EpochStore>, points: Arc<PooledFile>, exists: bool) -> io::Result<JsonIndex> {
        let mut index =
            JsonIndex { store, points, count: 0, last: None, size: 0, entries: 0, max_ts: i64::MIN, seen: None };
        if !exists && index.store.size() == 0 {
            return Ok(index);
        }
        let file = index.points.get()?;
        let total = file.metadata()?.len() / POINT_LEN;
        let mut e = [0u8; POINT_LEN as usize];
        // The valid prefix (a point is written whole before anything that depends on it).
        let mut lo = 0;
        while lo < total {
            file.read_exact_at(&mut e, lo * POINT_LEN)?;
            match Point::decode(&e) {
                Some(p) if index.last.is_none_or(|l| p.json >= l.json && p.journal > l.journal) => index.last = Some(p),
                _ => break,
            }
            lo += 1;
        }
        file.set_len(lo * POINT_LEN)?;
        index.count = lo;
        let from = match index.last {
            Some(p) => {
                (index.size, index.entries, index.max_ts) = (p.json, p.entry, p.max_ts);
                p.journal
            }
            None => index.store.journal_base(),
        };
        let mut commits = Vec::new();
        index.store.commits_from(from, |c| {
            let mut count = (0, 0, None::<i64>);
            visit_log(&c.payload, |item| {
                if let LogItem::Entry(e) = item {
                    count.0 += e.json_len;
                    count.1 += 1;
                    count.2 = Some(count.2.map_or(e.ts, |m| m.max(e.ts)));
                }
                ControlFlow::Continue(())
            });
            commits.push((c.journal_off, c.data_start, count));
            true
        })?;
        for (journal_off, start, (json_len, entries, entries_max_ts)) in commits {
            if index.last.is_some_and(|p| p.journal == journal_off) {
                // The point's own commit: counted from the point, not placed again.
                index.count_commit(journal_off, json_len, entries, entries_max_ts);
                continue;
            }
            let lines_max_ts = None;
            index.add(&Committed {
                journal_off,
                start,
                bytes: &[],
                json_len,
                entries,
                entries_max_ts,
                lines_max_ts,
            })?;
        }
        Ok(index)
    }

    /// Bytes in `merged.jsonl`.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Counts a new commit, placing a point at it when one is due.
    pub fn add(&mut self, c: &Committed<'_>) -> io::Result<()> {
        if self.seen.is_some_and(|s| c.journal_off <= s) || c.entries == 0 {
            return Ok(());
        }
        if self.last.is_none_or(|p| self.size - p.json >= POINT_EVERY) {
            let point = Point {
                json: self.size,
                journal: c.journal_off,
                merged: c.start,
                entry: self.entries,
                max_ts: self.max_ts,
            };
            self.points.get()?.write_all_at(&point.encode(), self.count * POINT_LEN)?;
            self.count += 1;
            self.last = Some(point);
        }
        self.count_commit(c.journal_off, c.json_len, c.entries, c.entries_max_ts);
        Ok(())
    }

    fn count_commit(&mut self, journal_off: u64, json_len: u64, entries: u64, max_ts: Option<i64>) {
        self.size += json_len;
        self.entries += entries;
        self.max_ts = self.max_ts.max(max_ts.unwrap_or(i64::MIN));
        self.seen = Some(journal_off);
    }

    fn point(&self, i: u64) -> io::Result<Point> {
        let mut e = [0u8; POINT_LEN as usize];
        self.points.get()?.read_exact_at(&mut e, i * POINT_LEN)?;
        Point::decode(&e).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a corrupt JSON index point"))
    }

    /// Index of the last point for which `before` holds (a prefix of the points).
    fn last_point_where(&self, before: impl Fn(&Point) -> bool) -> io::Result<Option<u64>> {
        super::last_index_where(self.count, |i| self.point(i), before)
    }

    /// The span of JSON from point `i` to the next one (or the end).
    fn span(&self, i: u64) -> io::Result<(u64, u64)> {
        let start = self.point(i)?.json;
        let end = if i + 1 < self.count { self.point(i + 1)?.json } else { self.size };
        Ok((start, end))
    }

    /// Visits the entries from point `i` on, in order, until `visit` breaks. Entries
    /// past [`JsonIndex::size`] are not visited. Fails with `NotFound` when the store no
    /// longer has that part of the journal.
    pub fn scan(&self, i: u64, mut visit: impl FnMut(&Visit<'_>) -> ControlFlow<()>) -> io::Result<()> {
        let Ok(p) = self.point(i) else { return Ok(()) };
        let (mut json, mut index, end) = (p.json, p.entry, self.size);
        let mut state = [CursorPos::default(); 3];
        self.store.commits_from(p.journal, |c| {
            let mut more = true;
            visit_log(&c.payload, |item| {
                match item {
                    LogItem::State(s) => state = s,
                    LogItem::Entry(e) => {
                        if json >= end {
                            more = false;
                            return ControlFlow::Break(());
                        }
                        e.apply(&mut state);
                        if visit(&Visit { entry: &e, json, index, after: &state }).is_break() {
                            more = false;
                            return ControlFlow::Break(());
                        }
                        json += e.json_len;
                        index += 1;
                    }
                }
                ControlFlow::Continue(())
            });
            more
        })
    }

    /// Reads up to `max` bytes of `merged.jsonl` at `offset`.
    pub fn read(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        let end = self.size.min(offset.saturating_add(max as u64));
        let mut out = Vec::new();
        let Some(mut i) = self.last_point_where(|p| p.json <= offset)? else { return Ok(out) };
        let epoch = self.store.header().epoch;
        let mut line = Vec::new();
        let mut at = offset;
        while at < end && i < self.count {
            let scanned = self.scan(i, |v| {
                let (from, to) = (v.json, v.json + v.entry.json_len);
                if to <= at {
                    return ControlFlow::Continue(());
                }
                line.clear();
                render_json(v.entry, JsonContext { epoch, after: v.after, sandbox: None }, &mut line);
                let (skip, upto) = ((at - from) as usize, (end.min(to) - from) as usize);
                out.extend_from_slice(&line[skip..upto.min(line.len())]);
                at = end.min(to);
                if at >= end {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            match scanned {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // The journal no longer holds this span: a notice of its length.
                    let (start, span_end) = self.span(i)?;
                    let to = span_end.min(end);
                    push_notice(start, span_end, at, to, &mut out);
                    at = to;
                    i += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The first point at or before `merged.log` offset `merged`.
    pub fn point_at_merged(&self, merged: u64) -> io::Result<Option<u64>> {
        self.last_point_where(|p| p.merged <= merged)
    }

    /// The first point at or before JSON offset `json`.
    pub fn point_at_json(&self, json: u64) -> io::Result<Option<u64>> {
        self.last_point_where(|p| p.json <= json)
    }

    /// The point from which to scan for the first entry at or after `ts`: the last one
    /// before which every entry is earlier than `ts`.
    pub fn point_before_time(&self, ts: i64) -> io::Result<Option<u64>> {
        self.last_point_where(|p| p.max_ts < ts)
    }

    /// Points in the index.
    pub fn points(&self) -> u64 {
        self.count
    }

    /// Entries counted.
    pub fn entries(&self) -> u64 {
        self.entries
    }
}

/// Appends bytes `[from, to)` of the notice standing for JSON span `[start, end)`: lines
/// of at most 4 KiB, each a JSON object padded with spaces, ending exactly at `end`.
pub(crate) fn push_notice(start: u64, end: u64, from: u64, to: u64, out: &mut Vec<u8>) {
    const HEAD: &[u8] = b"{\"s\":\"msbfs\",\"d\":\"this range of merged.jsonl is no longer kept\"";
    let min = HEAD.len() as u64 + 2;
    let line_at = |rel: u64| -> (u64, u64) {
        let len = end - start;
        let full = len / NOTICE_LINE;
        let line = (rel / NOTICE_LINE).min(full.saturating_sub(1));
        let line_start = line * NOTICE_LINE;
        // The last line takes the rest; a rest too short for a line joins the one before.
        let line_len = if line + 1 >= full { len - line_start } else { NOTICE_LINE };
        (line_start, line_len)
    };
    let mut rel = from - start;
    while rel < to - start {
        let (line_start, line_len) = line_at(rel);
        let mut line = Vec::with_capacity(line_len as usize);
        if line_len >= min {
            line.extend_from_slice(HEAD);
        }
        line.resize(line_len as usize - 1 - usize::from(line_len >= min), b' ');
        if line_len >= min {
            line.push(b'}');
        }
        line.push(b'\n');
        let a = (rel - line_start) as usize;
        let b = ((to - start - line_start) as usize).min(line.len());
        out.extend_from_slice(&line[a..b]);
        rel = line_start + b as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_have_the_exact_length_and_parse_as_json() {
        for len in [1, 40, 60, 4095, 4096, 4097, 4096 * 3 + 10] {
            let mut whole = Vec::new();
            push_notice(1000, 1000 + len, 1000, 1000 + len, &mut whole);
            assert_eq!(whole.len() as u64, len);
            assert!(whole.ends_with(b"\n"));
            for line in whole.split(|&b| b == b'\n').filter(|l| l.iter().any(|&b| b != b' ')) {
                let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                assert_eq!(v["s"], "msbfs");
            }
            // Any slice reads the same bytes.
            let mut piece = Vec::new();
            push_notice(1000, 1000 + len, 1000 + len / 3, 1000 + len / 2, &mut piece);
            assert_eq!(piece, whole[(len / 3) as usize..(len / 2) as usize]);
        }
    }
}

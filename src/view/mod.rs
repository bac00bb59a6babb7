//! Views (DESIGN §2.6): every slice of a sandbox's logs that `msb logs` offers, as a
//! file with the `merged.log` contract (stable offsets, only growing, follow, restart-
//! proof). Derived from what the store holds, so they add little on disk:
//!
//! - text views (`program.log`, one per source, `sessions/<id>.log`) are `merged.log`
//!   lines chosen by their tag, indexed as runs ([`runs`]) while commits arrive and
//!   read as `pread`s of the store;
//! - `merged.jsonl` is rendered from the entries the timeline records in the journal
//!   ([`jsonl`]).
//!
//! Lookups by time and by cursor (the `user.offset.at.`, `user.cursor.at.` and
//! `user.offset.of.` xattrs) are here too, answered from the indexes without reading
//! a file from its start.

pub mod all;
pub mod jsonl;
pub mod runs;

use std::collections::BTreeMap;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::notice::MissingRange;
use crate::store::pool::PooledFile;
use crate::store::EpochStore;
use crate::time::{parse_rfc3339_prefix, TIMESTAMP_LEN};
use crate::timeline::{cursor, Committed, CursorPos, FileMeta};
use jsonl::JsonIndex;
use runs::RunIndex;

/// One file of a sandbox directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum View {
    /// `merged.log`: every source.
    Merged,
    /// `merged.jsonl`: every entry as JSON.
    Jsonl,
    /// A text view of chosen lines.
    Text(TextView),
}

/// A view of `merged.log` lines chosen by their tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TextView {
    /// `program.log`: stdout, stderr and output, what `msb logs` shows by default.
    Program,
    /// `stdout.log`.
    Stdout,
    /// `stderr.log`.
    Stderr,
    /// `output.log`.
    Output,
    /// `system.log`: lifecycle markers and boot errors.
    System,
    /// `runtime.log`.
    Runtime,
    /// `kernel.log`.
    Kernel,
    /// `sessions/<id>.log`: one exec session's stdout, stderr and output.
    Session(u64),
}

impl TextView {
    /// The views with a fixed name, in directory order.
    pub const FIXED: [TextView; 7] = [
        TextView::Program,
        TextView::Stdout,
        TextView::Stderr,
        TextView::Output,
        TextView::System,
        TextView::Runtime,
        TextView::Kernel,
    ];

    /// Its file name in the sandbox directory (a session's is in `sessions/`).
    pub fn file_name(self) -> String {
        match self {
            TextView::Program => "program.log".into(),
            TextView::Stdout => "stdout.log".into(),
            TextView::Stderr => "stderr.log".into(),
            TextView::Output => "output.log".into(),
            TextView::System => "system.log".into(),
            TextView::Runtime => "runtime.log".into(),
            TextView::Kernel => "kernel.log".into(),
            TextView::Session(id) => format!("{id}.log"),
        }
    }

    fn fixed_index(self) -> Option<usize> {
        TextView::FIXED.iter().position(|v| *v == self)
    }
}

/// The last of entries `0..count` for which `before` holds, where `before` holds for a
/// prefix of them (a binary search over an index read with `get`).
fn last_index_where<T>(
    count: u64,
    get: impl Fn(u64) -> io::Result<T>,
    before: impl Fn(&T) -> bool,
) -> io::Result<Option<u64>> {
    let (mut lo, mut hi) = (0, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(&get(mid)?) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo.checked_sub(1))
}

/// The offset of the first line in `[start, end)` of a file read with `read` (up to a
/// MiB at a time) for which `found` holds; `None` when there is none.
pub(crate) fn first_line_where(
    start: u64,
    end: u64,
    read: impl Fn(u64, usize) -> io::Result<Vec<u8>>,
    found: impl Fn(&[u8]) -> bool,
) -> io::Result<Option<u64>> {
    let mut at = start;
    let mut carry = Vec::new();
    while at < end {
        let chunk = read(at, (end - at).min(1 << 20) as usize)?;
        if chunk.is_empty() {
            break;
        }
        let chunk_start = at - carry.len() as u64;
        at += chunk.len() as u64;
        carry.extend_from_slice(&chunk);
        let mut pos = 0;
        while let Some(nl) = memchr::memchr(b'\n', &carry[pos..]) {
            if found(&carry[pos..pos + nl + 1]) {
                return Ok(Some(chunk_start + pos as u64));
            }
            pos += nl + 1;
        }
        carry.drain(..pos);
    }
    Ok(None)
}

/// The tag of a rendered line: its name and session id (`stdout[7]` → `stdout`, 7).
fn line_tag(line: &[u8]) -> Option<(&[u8], Option<u64>)> {
    let tag = line.get(TIMESTAMP_LEN + 1..)?;
    let tag = &tag[..memchr::memchr(b' ', tag)?];
    match memchr::memchr(b'[', tag) {
        Some(i) => {
            let id = std::str::from_utf8(tag[i + 1..].strip_suffix(b"]")?).ok()?.parse().ok()?;
            Some((&tag[..i], Some(id)))
        }
        None => Some((tag, None)),
    }
}

/// The text views a rendered line belongs to.
fn views_of(line: &[u8]) -> ([Option<TextView>; 3], usize) {
    let mut out = [None; 3];
    let Some((name, id)) = line_tag(line) else { return (out, 0) };
    let source = match name {
        b"stdout" => TextView::Stdout,
        b"stderr" => TextView::Stderr,
        b"output" => TextView::Output,
        b"system" => TextView::System,
        b"runtime" => TextView::Runtime,
        b"kernel" => TextView::Kernel,
        _ => return (out, 0),
    };
    out[0] = Some(source);
    if matches!(source, TextView::Stdout | TextView::Stderr | TextView::Output) {
        out[1] = Some(TextView::Program);
        out[2] = id.map(TextView::Session);
    }
    (out, 1 + usize::from(out[1].is_some()) + usize::from(out[2].is_some()))
}

/// Why a cursor does not resolve.
#[derive(Debug, PartialEq, Eq)]
pub enum CursorError {
    /// Not a cursor (EINVAL).
    Malformed,
    /// A cursor of another epoch, or of a generation this epoch never had (ESTALE).
    Stale,
    /// The store could not be read (EIO).
    Io,
}

/// The prefix of the views' files in an epoch's directory.
const VIEW_PREFIX: &str = "view-";
/// Most sessions with a view of their own per epoch (inode numbers are per epoch).
pub const MAX_SESSIONS: u64 = (1 << 24) - 64;
/// Longest time runs stay in memory before they are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Runs in memory past which they are written.
const FLUSH_RUNS: usize = 4096;
/// `merged.log` bytes past the written mark below which the runs are not written: a
/// restart indexes that much again instead (milliseconds).
const CHEAP_TO_INDEX_AGAIN: u64 = 4 << 20;

#[derive(Debug)]
struct TextState {
    /// `merged.log` bytes indexed.
    scanned: u64,
    /// The `scanned` mark last written.
    flushed: u64,
    fixed: Vec<RunIndex>,
    /// Sessions by id, with the number of their view in order of appearance.
    sessions: BTreeMap<u64, (u64, RunIndex)>,
    last_flush: Instant,
    /// True once "too many sessions" was warned about.
    warned_sessions: bool,
}

/// The views of one sandbox epoch.
pub struct EpochViews {
    store: Arc<EpochStore>,
    dir: PathBuf,
    text: Mutex<TextState>,
    json: Mutex<JsonIndex>,
}

impl std::fmt::Debug for EpochViews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochViews").field("dir", &self.dir).finish()
    }
}

impl EpochViews {
    /// Opens the views of the epoch kept in `store` (files `view-*` in its directory)
    /// and indexes what the store holds beyond what they had indexed.
    pub fn open(store: Arc<EpochStore>) -> io::Result<Arc<EpochViews>> {
        let dir = store.dir().to_path_buf();
        // A new epoch's index files are created when there is something to write (no
        // directory of their own: creating one per epoch is what costs most on ext4).
        let fresh = store.size() == 0;
        let file = |name: &str| {
            let path = dir.join(format!("{VIEW_PREFIX}{name}"));
            let exists = !fresh && path.exists();
            (PooledFile::creating(store.pool(), path), exists)
        };
        let scanned = std::fs::read(dir.join(format!("{VIEW_PREFIX}scanned")))
            .ok()
            .filter(|b| b.len() == 12 && crc32fast::hash(&b[..8]).to_le_bytes() == b[8..12])
            .map_or(0, |b| u64::from_le_bytes(b[..8].try_into().expect("8 bytes")))
            .min(store.size());
        let mut fixed = Vec::new();
        for view in TextView::FIXED {
            let (runs, exists) = file(&view.file_name().replace(".log", ".runs"));
            fixed.push(RunIndex::open(runs, scanned, exists)?);
        }
        let mut sessions = BTreeMap::new();
        let listed = if fresh { Vec::new() } else { std::fs::read_dir(&dir)?.flatten().collect() };
        for entry in listed {
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = name
                .strip_prefix(VIEW_PREFIX)
                .and_then(|n| n.strip_prefix("session-"))
                .and_then(|n| n.strip_suffix(".runs"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(number, id)| Some((number.parse::<u64>().ok()?, id.parse::<u64>().ok()?)));
            if let Some((number, id)) = parsed {
                let runs = RunIndex::open(PooledFile::creating(store.pool(), entry.path()), scanned, true)?;
                sessions.insert(id, (number, runs));
            }
        }
        // Entries without output (a prompt) may exist while merged.log is still empty.
        let points = dir.join(format!("{VIEW_PREFIX}jsonl.points"));
        let exists = points.exists();
        let points = PooledFile::creating(store.pool(), points);
        let json = JsonIndex::open(store.clone(), points, exists)?;
        let text = TextState {
            scanned,
            flushed: scanned,
            fixed,
            sessions,
            last_flush: Instant::now(),
            warned_sessions: false,
        };
        let views = Arc::new(EpochViews { store, dir, text: Mutex::new(text), json: Mutex::new(json) });
        views.catch_up(&mut views.text.lock())?;
        Ok(views)
    }

    /// Indexes `merged.log` from what was indexed to the store's end.
    fn catch_up(&self, text: &mut TextState) -> io::Result<()> {
        let end = self.store.size();
        let mut carry = Vec::new();
        let mut at = text.scanned;
        while at < end {
            let chunk = self.store.read(at, 1 << 20)?;
            if chunk.is_empty() {
                break;
            }
            at += chunk.len() as u64;
            carry.extend_from_slice(&chunk);
            let whole = memchr::memrchr(b'\n', &carry).map_or(0, |i| i + 1);
            self.index_lines(text, &carry[..whole])?;
            carry.drain(..whole);
        }
        Ok(())
    }

    /// Indexes whole lines that start at `text.scanned`.
    fn index_lines(&self, text: &mut TextState, bytes: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            let len = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len() - at, |i| i + 1);
            let line = &bytes[at..at + len];
            let merged = text.scanned + at as u64;
            let (views, n) = views_of(line);
            for view in views[..n].iter().flatten() {
                self.runs_for(text, *view)?.map(|r| r.push(merged, len as u64)).transpose()?;
            }
            at += len;
        }
        text.scanned += bytes.len() as u64;
        Ok(())
    }

    fn runs_for<'a>(&self, text: &'a mut TextState, view: TextView) -> io::Result<Option<&'a mut RunIndex>> {
        if let Some(i) = view.fixed_index() {
            return Ok(Some(&mut text.fixed[i]));
        }
        let TextView::Session(id) = view else { return Ok(None) };
        if !text.sessions.contains_key(&id) {
            let number = text.sessions.len() as u64;
            if number >= MAX_SESSIONS {
                if !std::mem::replace(&mut text.warned_sessions, true) {
                    tracing::warn!(dir = %self.dir.display(), "too many sessions for a view of their own each");
                }
                return Ok(None);
            }
            let path = self.dir.join(format!("{VIEW_PREFIX}session-{number}-{id}.runs"));
            let runs = RunIndex::open(PooledFile::creating(self.store.pool(), path), 0, false)?;
            text.sessions.insert(id, (number, runs));
        }
        Ok(text.sessions.get_mut(&id).map(|(_, r)| r))
    }

    /// Takes in a commit (called by the timeline before readers are told of it).
    pub fn on_commit(&self, c: &Committed<'_>) {
        let mut text = self.text.lock();
        let indexed =
            if c.start == text.scanned { self.index_lines(&mut text, c.bytes) } else { self.catch_up(&mut text) };
        if let Err(e) = indexed.and_then(|()| self.json.lock().add(c)) {
            tracing::warn!(dir = %self.dir.display(), "cannot index a view: {e}");
        }
        let unflushed = text.fixed.iter().chain(text.sessions.values().map(|(_, r)| r)).map(RunIndex::unflushed);
        if unflushed.sum::<usize>() >= FLUSH_RUNS
            || text.last_flush.elapsed() >= FLUSH_EVERY && text.scanned - text.flushed >= CHEAP_TO_INDEX_AGAIN
        {
            self.flush_locked(&mut text);
        }
    }

    fn flush_locked(&self, text: &mut TextState) {
        text.last_flush = Instant::now();
        text.flushed = text.scanned;
        let mut result = Ok(());
        for runs in text.fixed.iter_mut().chain(text.sessions.values_mut().map(|(_, r)| r)) {
            result = result.and(runs.flush());
        }
        let mut mark = text.scanned.to_le_bytes().to_vec();
        mark.extend_from_slice(&crc32fast::hash(&mark).to_le_bytes());
        let written = result.and_then(|()| {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.dir.join(format!("{VIEW_PREFIX}scanned")))?;
            file.write_all_at(&mark, 0)
        });
        if let Err(e) = written {
            tracing::warn!(dir = %self.dir.display(), "cannot write a view index: {e}");
        }
    }

    /// Writes what is indexed in memory, unless indexing it again at the next start is
    /// cheap (at shutdown; while commits come, at most once a second): a small sandbox
    /// writes no index files at all, which keeps a stop of thousands quick.
    pub fn flush(&self) {
        let mut text = self.text.lock();
        if text.scanned - text.flushed >= CHEAP_TO_INDEX_AGAIN {
            self.flush_locked(&mut text);
        }
    }

    /// The epoch's store.
    pub fn store(&self) -> &Arc<EpochStore> {
        &self.store
    }

    /// Visits the JSON entries from JSON offset `from` on (an entry's start), in order,
    /// until `visit` breaks. `NotFound` when the store no longer has them.
    pub fn scan_json(&self, from: u64, mut visit: impl FnMut(&jsonl::Visit<'_>) -> ControlFlow<()>) -> io::Result<()> {
        let json = self.json.lock();
        let Some(point) = json.point_at_json(from)? else { return Ok(()) };
        json.scan(point, |v| if v.json < from { ControlFlow::Continue(()) } else { visit(v) })
    }

    /// The number of entries before JSON offset `json` (an entry's start or the end).
    pub fn entries_before(&self, json: u64) -> io::Result<u64> {
        let mut found = None;
        self.scan_json(json, |v| {
            found = Some(v.index);
            ControlFlow::Break(())
        })?;
        Ok(found.unwrap_or_else(|| self.json.lock().entries()))
    }

    /// Records the attributes `merged.log` had when its sandbox went away (who may read
    /// what `all.log` keeps of it).
    pub fn save_meta(&self, meta: &FileMeta) {
        let text = format!("{} {} {}\n", meta.uid, meta.gid, meta.mode);
        if let Err(e) = std::fs::write(self.dir.join(format!("{VIEW_PREFIX}meta")), text) {
            tracing::warn!(dir = %self.dir.display(), "cannot record who may read an ended sandbox: {e}");
        }
    }

    /// What [`EpochViews::save_meta`] recorded.
    pub fn saved_meta(&self) -> Option<FileMeta> {
        let text = std::fs::read_to_string(self.dir.join(format!("{VIEW_PREFIX}meta"))).ok()?;
        let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().ok());
        let (uid, gid, mode) = (parts.next()??, parts.next()??, parts.next()??);
        Some(FileMeta { uid, gid, mode: mode as u16, mtime_ms: 0 })
    }

    /// Sessions seen so far: id and number in order of appearance, by id.
    pub fn sessions(&self) -> Vec<(u64, u64)> {
        self.text.lock().sessions.iter().map(|(id, (number, _))| (*id, *number)).collect()
    }

    /// Bytes in `view`.
    pub fn size(&self, view: View) -> u64 {
        match view {
            View::Merged => self.store.size(),
            View::Jsonl => self.json.lock().size(),
            View::Text(view) => self.with_runs(view, |r| Ok(r.size())).unwrap_or(0),
        }
    }

    fn with_runs<T>(&self, view: TextView, f: impl FnOnce(&mut RunIndex) -> io::Result<T>) -> io::Result<T> {
        let mut text = self.text.lock();
        let runs = match view.fixed_index() {
            Some(i) => Some(&mut text.fixed[i]),
            None => match view {
                TextView::Session(id) => text.sessions.get_mut(&id).map(|(_, r)| r),
                _ => None,
            },
        };
        match runs {
            Some(runs) => f(runs),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such view")),
        }
    }

    /// Reads up to `max` bytes of `view` at `offset` (fewer at the end, none past it).
    pub fn read(&self, view: View, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        let view = match view {
            View::Merged => return self.store.read(offset, max),
            View::Jsonl => return self.json.lock().read(offset, max),
            View::Text(view) => view,
        };
        // The pieces, and for those the store dropped, the view range of the drop.
        let dropped = self.store.dropped();
        let pieces = self.with_runs(view, |runs| {
            let mut out = Vec::new();
            for piece in runs.pieces(offset, max as u64)? {
                let mut piece = piece;
                while piece.len > 0 {
                    let missing = self.store.dropped_at(piece.merged).filter(|_| piece.merged < dropped);
                    let Some(range) = missing else {
                        out.push((piece, None));
                        break;
                    };
                    let (start, end) = (runs.view_of_merged(range.start)?, runs.view_of_merged(range.end)?);
                    if end <= piece.view {
                        out.push((piece, None));
                        break;
                    }
                    let len = piece.len.min(end - piece.view);
                    let shown = MissingRange { start, end, ..range };
                    out.push((runs::Run { len, ..piece }, Some(shown)));
                    piece = runs::Run { view: piece.view + len, merged: piece.merged + len, len: piece.len - len };
                }
            }
            Ok(out)
        })?;
        let mut out = Vec::with_capacity(max.min(1 << 20));
        for (piece, missing) in pieces {
            match missing {
                Some(range) => range.render(piece.view - range.start, piece.view + piece.len - range.start, &mut out),
                None => out.extend_from_slice(&self.store.read(piece.merged, piece.len as usize)?),
            }
        }
        Ok(out)
    }

    /// The offset in `view` of the first line (in file order) whose time is at or after
    /// `ts`; the end of the view when there is none.
    pub fn offset_at(&self, view: View, ts: i64) -> io::Result<u64> {
        if view == View::Jsonl {
            let json = self.json.lock();
            let Some(point) = json.point_before_time(ts)?.or(if json.points() > 0 { Some(0) } else { None }) else {
                return Ok(json.size());
            };
            let mut found = None;
            json.scan(point, |v| {
                if v.entry.ts >= ts {
                    found = Some(v.json);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })?;
            return Ok(found.unwrap_or(json.size()));
        }
        // Segments whose latest time is earlier hold no such line; the open one is read.
        let mut ranges: Vec<(u64, u64)> = self
            .store
            .retained_segments()
            .into_iter()
            .filter(|s| s.max_ts >= ts && !s.unstored)
            .map(|s| (s.start, s.end))
            .collect();
        let (open_start, _, _) = self.store.open_segment();
        ranges.push((open_start.max(self.store.dropped()), self.store.size()));
        let wanted = |line: &[u8]| match view {
            View::Text(v) => views_of(line).0.contains(&Some(v)),
            _ => true,
        };
        for (start, end) in ranges {
            let read = |at: u64, max: usize| self.store.read(at, max);
            let found = |line: &[u8]| parse_rfc3339_prefix(line).is_some_and(|(t, _)| t >= ts) && wanted(line);
            if let Some(merged) = first_line_where(start, end, read, found)? {
                return match view {
                    View::Text(v) => self.with_runs(v, |r| r.view_of_merged(merged)),
                    _ => Ok(merged),
                };
            }
        }
        Ok(self.size(view))
    }

    /// The `merged.log` offset that view offset `offset` stands for (the end of what
    /// is indexed at or past the view's end).
    fn merged_of(&self, view: View, offset: u64) -> io::Result<u64> {
        match view {
            View::Merged => Ok(offset.min(self.store.size())),
            View::Text(v) => {
                let scanned = self.text.lock().scanned;
                Ok(self.with_runs(v, |r| r.merged_of_view(offset))?.unwrap_or(scanned))
            }
            View::Jsonl => unreachable!("JSON offsets are resolved by entry"),
        }
    }

    /// The cursor just after the last entry that ends at or before `offset` of `view`.
    pub fn cursor_at(&self, view: View, offset: u64) -> io::Result<String> {
        let epoch = self.store.header().epoch;
        let json = self.json.lock();
        // An entry ends before the offset when its JSON line does (in merged.jsonl) or
        // its output does (in the text files).
        let (point, bound, in_json) = if view == View::Jsonl {
            (json.point_at_json(offset)?, offset, true)
        } else {
            let merged = self.merged_of(view, offset)?;
            (json.point_at_merged(merged)?, merged, false)
        };
        let ends_before =
            |v: &jsonl::Visit<'_>| if in_json { v.json + v.entry.json_len <= bound } else { v.entry.end <= bound };
        let mut last = ([CursorPos::default(); 3], 0);
        if let Some(point) = point {
            json.scan(point, |v| {
                if !ends_before(v) {
                    return ControlFlow::Break(());
                }
                last = (*v.after, v.entry.end);
                ControlFlow::Continue(())
            })?;
        }
        Ok(cursor::encode(&last.0, epoch, last.1))
    }

    /// The offset of `view` at which to resume after `text`, a cursor of msbfs (with
    /// its epoch and `merged.log` offset) or of the SDK (the three source positions).
    pub fn offset_of(&self, view: View, text: &str) -> Result<u64, CursorError> {
        let positions = cursor::decode(text).filter(|p| p.len() >= 3).ok_or(CursorError::Malformed)?;
        let wanted: [CursorPos; 3] = [positions[0], positions[1], positions[2]];
        let io = |_: io::Error| CursorError::Io;
        let json = self.json.lock();
        // The first entry not covered by the cursor: its JSON and merged offsets.
        let mut first: Option<(u64, u64)> = None;
        if let Some(merged_pos) = positions.get(3) {
            if merged_pos.generation != self.store.header().epoch {
                return Err(CursorError::Stale);
            }
            let merged = merged_pos.offset;
            if merged > self.store.size() {
                return Err(CursorError::Malformed);
            }
            if view != View::Jsonl {
                return self.view_offset_of_merged(view, merged).map_err(io);
            }
            // The entry after the first one whose state is the cursor's, or the first
            // that ends past it.
            let point = json.point_at_merged(merged.saturating_sub(1)).map_err(io)?;
            if let Some(point) = point.or((json.points() > 0).then_some(0)) {
                let mut matched = false;
                json.scan(point, |v| {
                    if matched || v.entry.end > merged {
                        first = Some((v.json, v.entry.start));
                        return ControlFlow::Break(());
                    }
                    matched = v.entry.end == merged && *v.after == wanted;
                    ControlFlow::Continue(())
                })
                .map_err(io)?;
            }
        } else {
            first = self.first_uncovered(&json, &wanted)?;
        }
        let (json_off, merged) = first.unwrap_or((json.size(), self.store.size()));
        match view {
            View::Jsonl => Ok(json_off),
            _ => self.view_offset_of_merged(view, merged).map_err(io),
        }
    }

    fn view_offset_of_merged(&self, view: View, merged: u64) -> io::Result<u64> {
        match view {
            View::Text(v) => self.with_runs(v, |r| r.view_of_merged(merged)),
            _ => Ok(merged),
        }
    }

    /// For an SDK cursor (positions only): the first entry, in merged order, of a
    /// source past the cursor's position in it. Generations are inode numbers, so
    /// their order is the order the entries met them in; a scan of the history.
    fn first_uncovered(&self, json: &JsonIndex, wanted: &[CursorPos; 3]) -> Result<Option<(u64, u64)>, CursorError> {
        let mut met = [false; 3];
        let mut first: Option<(u64, u64)> = None;
        if json.points() > 0 {
            json.scan(0, |v| {
                let Some((kind, pos)) = v.entry.moved else { return ControlFlow::Continue(()) };
                let i = kind.index();
                let want = wanted[i];
                let covered = if pos.generation == want.generation && want.generation != 0 {
                    met[i] = true;
                    pos.offset <= want.offset
                } else {
                    want.generation != 0 && !met[i]
                };
                if !covered && first.is_none() {
                    first = Some((v.json, v.entry.start));
                }
                let all_met = (0..3).all(|s| met[s] || wanted[s].generation == 0);
                if first.is_some() && all_met {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(|_| CursorError::Io)?;
        }
        if (0..3).any(|s| wanted[s].generation != 0 && !met[s]) {
            return Err(CursorError::Stale);
        }
        Ok(first)
    }
}

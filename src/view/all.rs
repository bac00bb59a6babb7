//! `all.log` and `all.jsonl` at the root of the mount: every sandbox's lines and
//! entries in the order they were committed, each line with the sandbox name after
//! its timestamp (`2026-04-30T20:32:59.688Z web stdout[7] hello`), each JSON entry with
//! `"sandbox"`.
//!
//! Derived, like the other views: an index of runs (`all/runs` in the state
//! directory), each a commit (or consecutive commits) of one epoch: its range of that
//! epoch's `merged.log` and `merged.jsonl`, and its lengths in `all.log` and
//! `all.jsonl` (each line gains the name, each entry the field), known without reading
//! the run. A run is
//! written before the commit is announced, so no reader sees bytes a crash could move.
//! The epochs of sandboxes that went away are kept (retired) until the store's budget
//! drops them; a run whose bytes the store no longer has reads as a notice of its length.
//!
//! After a crash, `all/progress` (written once a second) and the runs after it tell how
//! far each epoch was taken in; what an epoch committed beyond that is appended again.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{jsonl, EpochViews};
use crate::store::notice::{Missing, MissingRange};
use crate::time::parse_rfc3339_prefix;
use crate::timeline::json::{push_json_string, render_json, JsonContext};
use crate::timeline::{Committed, FileMeta, Timeline};

const RUN_LEN: u64 = 88;
/// Longest run in `merged.log` bytes: a read in the middle of a run walks its lines
/// from its start.
const MAX_RUN: u64 = 256 << 10;
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A range of one epoch's files, consecutive in `all.log` and `all.jsonl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    /// Offset in `all.log`, and length there.
    all: u64,
    all_len: u64,
    /// Offset in `all.jsonl`, and length there.
    all_json: u64,
    all_json_len: u64,
    /// The epoch (its inode block).
    epoch: u64,
    /// Its range of `merged.log`.
    merged: u64,
    merged_len: u64,
    /// Its range of `merged.jsonl`.
    json: u64,
    json_len: u64,
    /// Time of its first line (for a notice standing for it).
    ts: i64,
    /// The latest time of a line (an entry) in it or any run before it: what a search
    /// by time skips by.
    max_ts: i64,
    json_max_ts: i64,
}

impl Run {
    fn encode(&self) -> [u8; RUN_LEN as usize] {
        let mut e = [0u8; RUN_LEN as usize];
        let words = [
            self.all,
            self.all_json,
            self.epoch,
            self.merged,
            self.json,
            self.ts as u64,
            self.max_ts as u64,
            self.json_max_ts as u64,
        ];
        for (i, v) in words.into_iter().enumerate() {
            e[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        for (i, v) in [self.merged_len, self.json_len, self.all_len, self.all_json_len].into_iter().enumerate() {
            e[64 + i * 4..68 + i * 4].copy_from_slice(&(v as u32).to_le_bytes());
        }
        let crc = crc32fast::hash(&e[..80]);
        e[80..84].copy_from_slice(&crc.to_le_bytes());
        e
    }

    fn decode(e: &[u8]) -> Option<Run> {
        if crc32fast::hash(&e[..80]).to_le_bytes() != e[80..84] {
            return None;
        }
        let w = |i: usize| u64::from_le_bytes(e[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let h = |i: usize| u64::from(u32::from_le_bytes(e[64 + i * 4..68 + i * 4].try_into().expect("4 bytes")));
        Some(Run {
            all: w(0),
            all_json: w(1),
            epoch: w(2),
            merged: w(3),
            json: w(4),
            ts: w(5) as i64,
            max_ts: w(6) as i64,
            json_max_ts: w(7) as i64,
            merged_len: h(0),
            json_len: h(1),
            all_len: h(2),
            all_json_len: h(3),
        })
    }
}

/// Longest run in any file (so each length fits 32 bits).
const MAX_RUN_BYTES: u64 = 1 << 30;

/// An epoch taken into `all.*`.
struct Member {
    views: Arc<EpochViews>,
    /// The name as `all.log` shows it (no space or control character in it).
    name: String,
    /// The name itself (`all.jsonl` escapes it as JSON does).
    json_name: String,
    /// What a line gains in `all.log` (the name and a space) and an entry in
    /// `all.jsonl` (`,"sandbox":"name"`).
    line_extra: u64,
    entry_extra: u64,
    /// How far its files are taken in.
    merged_end: u64,
    json_end: u64,
    /// The live sandbox's timeline (its attributes), or what they were when it went away.
    timeline: Option<Arc<Timeline>>,
    meta: Option<FileMeta>,
}

struct State {
    file: File,
    count: u64,
    last: Option<Run>,
    size: u64,
    json_size: u64,
    members: HashMap<u64, Member>,
    /// The latest time of a line, and of an entry, taken in.
    max_ts: i64,
    json_max_ts: i64,
    /// How far each epoch was taken in, from the last progress record (for epochs not
    /// added yet).
    recorded: HashMap<u64, (u64, u64)>,
    last_progress: Instant,
}

/// `all.log` and `all.jsonl`.
pub struct AllViews {
    dir: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for AllViews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllViews").field("dir", &self.dir).finish()
    }
}

/// What `all.*` shows of one piece of a run.
enum Piece {
    Lines { views: Arc<EpochViews>, name: String, run: Run },
    Missing { run: Run, end: u64 },
}

impl AllViews {
    /// Opens (creating) the index in `dir` (`<state directory>/all`).
    pub fn open(dir: PathBuf) -> io::Result<Arc<AllViews>> {
        std::fs::create_dir_all(&dir)?;
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("runs"))?;
        let progress = read_progress(&dir.join("progress")).unwrap_or(serde_json::Value::Null);
        let mut recorded: HashMap<u64, (u64, u64)> = HashMap::new();
        if let Some(epochs) = progress["epochs"].as_object() {
            for (k, v) in epochs {
                if let (Ok(k), Some(m), Some(j)) = (k.parse(), v[0].as_u64(), v[1].as_u64()) {
                    recorded.insert(k, (m, j));
                }
            }
        }
        let total = file.metadata()?.len() / RUN_LEN;
        // Runs after the progress record: their epochs were taken in further.
        let mut count = progress["runs"].as_u64().unwrap_or(0).min(total);
        if progress.is_null() {
            count = 0;
            recorded.clear();
        }
        let mut last = if count > 0 { read_run(&file, count - 1) } else { None };
        if count > 0 && last.is_none() {
            // The progress record names a run that is not there: start again.
            count = 0;
            recorded.clear();
        }
        let mut e = [0u8; RUN_LEN as usize];
        while count < total {
            file.read_exact_at(&mut e, count * RUN_LEN)?;
            let Some(run) = Run::decode(&e) else { break };
            if last.is_some_and(|l| run.all < l.all || run.all_json < l.all_json) {
                break;
            }
            let end = recorded.entry(run.epoch).or_insert((0, 0));
            *end = (end.0.max(run.merged + run.merged_len), end.1.max(run.json + run.json_len));
            last = Some(run);
            count += 1;
        }
        file.set_len(count * RUN_LEN)?;
        let (size, json_size) = last.map_or((0, 0), |r| (r.all + r.all_len, r.all_json + r.all_json_len));
        let state = State {
            file,
            count,
            last,
            size,
            json_size,
            members: HashMap::new(),
            max_ts: last.map_or(i64::MIN, |r| r.max_ts),
            json_max_ts: last.map_or(i64::MIN, |r| r.json_max_ts),
            recorded,
            last_progress: Instant::now(),
        };
        Ok(Arc::new(AllViews { dir, state: Mutex::new(state) }))
    }

    /// Takes in epoch `views` of sandbox `name` (live with `timeline`, or retired), and
    /// appends what it committed beyond what `all.*` holds of it.
    pub fn add(&self, name: &str, views: Arc<EpochViews>, timeline: Option<Arc<Timeline>>) {
        let epoch = views.store().header().ino_base;
        let mut st = self.state.lock();
        let (merged_end, json_end) = st.recorded.remove(&epoch).unwrap_or((0, 0));
        let shown = display_name(name);
        let mut name_json = Vec::new();
        push_json_string(name.as_bytes(), &mut name_json);
        let meta = if timeline.is_none() { views.saved_meta() } else { None };
        let member = Member {
            views: views.clone(),
            line_extra: shown.len() as u64 + 1,
            name: shown,
            json_name: name.to_string(),
            entry_extra: (b",\"sandbox\":".len() + name_json.len()) as u64,
            merged_end,
            json_end,
            timeline,
            meta,
        };
        st.members.insert(epoch, member);
        if let Err(e) = self.catch_up(&mut st, epoch) {
            tracing::warn!(sandbox = ?name, "cannot take the sandbox into all.log: {e}");
        }
    }

    /// The sandbox of epoch `epoch` went away: what may read its lines is what could when
    /// it went.
    pub fn retire(&self, epoch: u64) {
        let mut st = self.state.lock();
        if let Some(m) = st.members.get_mut(&epoch) {
            if let Some(timeline) = m.timeline.take() {
                m.meta = Some(timeline.meta());
            }
        }
    }

    /// Appends runs for what epoch `epoch` committed beyond what is taken in.
    fn catch_up(&self, st: &mut State, epoch: u64) -> io::Result<()> {
        let Some(m) = st.members.get(&epoch) else { return Ok(()) };
        let views = m.views.clone();
        let (mut merged, json) = (m.merged_end, m.json_end);
        let (size, json_size) = (views.store().size(), views.size(super::View::Jsonl));
        if merged >= size && json >= json_size {
            return Ok(());
        }
        let (mut entries, mut entries_max_ts) = (0, None::<i64>);
        views.scan_json(json, |v| {
            entries += 1;
            entries_max_ts = Some(entries_max_ts.map_or(v.entry.ts, |m| m.max(v.entry.ts)));
            ControlFlow::Continue(())
        })?;
        let mut json_part = Some((json, json_size - json, entries, entries_max_ts));
        while merged < size || json_part.is_some() {
            let len = (size - merged).min(MAX_RUN);
            let bytes = views.store().read(merged, len as usize)?;
            let whole = memchr::memrchr(b'\n', &bytes).map_or(bytes.len(), |i| i + 1);
            let bytes = &bytes[..whole];
            let (json_start, json_len, entries, max_ts) = json_part.take().unwrap_or((json_size, 0, 0, None));
            let lines_max_ts =
                bytes.split(|&b| b == b'\n').filter_map(|l| parse_rfc3339_prefix(l).map(|(t, _)| t)).max();
            self.append(st, epoch, (merged, bytes, lines_max_ts), (json_start, json_len, entries, max_ts))?;
            merged += bytes.len() as u64;
            if bytes.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Takes in a commit of epoch `epoch` (before its readers are told of it).
    pub fn on_commit(&self, epoch: u64, c: &Committed<'_>) {
        let mut st = self.state.lock();
        let Some(m) = st.members.get(&epoch) else { return };
        let result = if m.merged_end != c.start {
            self.catch_up(&mut st, epoch)
        } else {
            let json = (m.json_end, c.json_len, c.entries, c.entries_max_ts);
            self.append(&mut st, epoch, (c.start, c.bytes, c.lines_max_ts), json)
        };
        if let Err(e) = result {
            tracing::warn!("cannot index all.log: {e}");
        }
        if st.last_progress.elapsed() >= PROGRESS_EVERY {
            self.write_progress(&mut st);
        }
    }

    /// Appends `lines` of epoch `epoch`: its `merged.log` offset, the bytes and their
    /// latest time; and `json`: its `merged.jsonl` range (start, length), the entries in
    /// it and their latest time.
    fn append(
        &self,
        st: &mut State,
        epoch: u64,
        lines: (u64, &[u8], Option<i64>),
        json: (u64, u64, u64, Option<i64>),
    ) -> io::Result<()> {
        let ((merged, bytes, lines_max_ts), (json, json_len, entries, entries_max_ts)) = (lines, json);
        if bytes.is_empty() && json_len == 0 {
            return Ok(());
        }
        let m = st.members.get_mut(&epoch).expect("a member");
        let lines = memchr::memchr_iter(b'\n', bytes).count() as u64;
        st.max_ts = st.max_ts.max(lines_max_ts.unwrap_or(i64::MIN));
        st.json_max_ts = st.json_max_ts.max(entries_max_ts.unwrap_or(i64::MIN));
        let (line_extra, entry_extra) = (m.line_extra, m.entry_extra);
        m.merged_end = merged + bytes.len() as u64;
        m.json_end = json + json_len;
        let ts = parse_rfc3339_prefix(bytes).map_or(0, |(t, _)| t);
        let (all_len, all_json_len) = (bytes.len() as u64 + lines * line_extra, json_len + entries * entry_extra);
        let fits = |r: &Run| {
            r.epoch == epoch
                && r.merged + r.merged_len == merged
                && r.json + r.json_len == json
                && r.merged_len + bytes.len() as u64 <= MAX_RUN
                && r.all_json_len + all_json_len <= MAX_RUN_BYTES
        };
        let run = match st.last.filter(fits) {
            Some(mut r) => {
                (r.max_ts, r.json_max_ts) = (st.max_ts, st.json_max_ts);
                r.merged_len += bytes.len() as u64;
                r.json_len += json_len;
                r.all_len += all_len;
                r.all_json_len += all_json_len;
                st.count -= 1;
                r
            }
            None => Run {
                all: st.size,
                all_len,
                all_json: st.json_size,
                all_json_len,
                epoch,
                merged,
                merged_len: bytes.len() as u64,
                json,
                json_len,
                ts,
                max_ts: st.max_ts,
                json_max_ts: st.json_max_ts,
            },
        };
        st.file.write_all_at(&run.encode(), st.count * RUN_LEN)?;
        st.count += 1;
        st.last = Some(run);
        st.size += all_len;
        st.json_size += all_json_len;
        Ok(())
    }

    fn write_progress(&self, st: &mut State) {
        st.last_progress = Instant::now();
        // An epoch the budget removed reads as notices: nothing of it is needed.
        st.members.retain(|_, m| !m.views.store().is_removed());
        let mut epochs = serde_json::Map::new();
        for (k, (m, j)) in &st.recorded {
            epochs.insert(k.to_string(), serde_json::json!([m, j]));
        }
        for (k, m) in &st.members {
            epochs.insert(k.to_string(), serde_json::json!([m.merged_end, m.json_end]));
        }
        let progress = serde_json::json!({"runs": st.count, "epochs": epochs}).to_string();
        // Written in place (length, checksum, text), never renamed or truncated: a torn
        // record fails its checksum and the index is read from its start instead.
        let mut record = (progress.len() as u32).to_le_bytes().to_vec();
        record.extend_from_slice(&crc32fast::hash(progress.as_bytes()).to_le_bytes());
        record.extend_from_slice(progress.as_bytes());
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join("progress"))
            .and_then(|f| f.write_all_at(&record, 0));
        if let Err(e) = written {
            tracing::warn!("cannot record how far all.log is indexed: {e}");
        }
    }

    /// Writes the progress record (at shutdown).
    pub fn flush(&self) {
        let mut st = self.state.lock();
        self.write_progress(&mut st);
    }

    /// Bytes in `all.log` (`json`: in `all.jsonl`).
    pub fn size(&self, json: bool) -> u64 {
        let st = self.state.lock();
        if json {
            st.json_size
        } else {
            st.size
        }
    }

    /// Who may read `all.*`: only who may read every sandbox's files (one file cannot
    /// show different bytes to different readers).
    pub fn meta(&self) -> FileMeta {
        let st = self.state.lock();
        let metas: Vec<FileMeta> = st
            .members
            .values()
            .map(|m| match &m.timeline {
                Some(t) => t.meta(),
                // Nothing known of an ended sandbox's files: only root.
                None => m.meta.unwrap_or(FileMeta { uid: 0, gid: 0, mode: 0, mtime_ms: 0 }),
            })
            .collect();
        let inputs: Vec<crate::source::dir::Access> = metas
            .iter()
            .map(|m| crate::source::dir::Access { uid: m.uid, gid: m.gid, mode: u32::from(m.mode) | libc::S_IFREG })
            .collect();
        let mtime_ms = metas.iter().map(|m| m.mtime_ms).max().unwrap_or(0);
        if inputs.is_empty() {
            return FileMeta { uid: 0, gid: 0, mode: 0o444, mtime_ms };
        }
        let (uid, gid, mode) = crate::ingest::access::merged_access(&inputs);
        FileMeta { uid, gid, mode, mtime_ms }
    }

    fn run(&self, st: &State, i: u64) -> io::Result<Run> {
        read_run(&st.file, i).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a corrupt all.log index entry"))
    }

    /// The pieces of `all.*` bytes `[offset, offset + max)`.
    fn pieces(&self, json: bool, offset: u64, max: u64) -> io::Result<(Vec<Piece>, u64)> {
        let st = self.state.lock();
        let size = if json { st.json_size } else { st.size };
        let end = size.min(offset.saturating_add(max));
        let key = |r: &Run| if json { r.all_json } else { r.all };
        let len = |r: &Run| if json { r.all_json_len } else { r.all_len };
        let first = super::last_index_where(st.count, |i| self.run(&st, i), |r| key(r) <= offset)?;
        let mut out = Vec::new();
        let mut i = first.unwrap_or(0);
        while i < st.count {
            let run = self.run(&st, i)?;
            if key(&run) >= end {
                break;
            }
            let run_end = key(&run) + len(&run);
            i += 1;
            if run_end <= offset || len(&run) == 0 {
                continue;
            }
            let member = st.members.get(&run.epoch).filter(|m| !m.views.store().is_removed());
            let kept = member.filter(|m| json || m.views.store().dropped() <= run.merged);
            out.push(match kept {
                Some(m) => Piece::Lines {
                    views: m.views.clone(),
                    name: if json { m.json_name.clone() } else { m.name.clone() },
                    run,
                },
                None => Piece::Missing { run, end: run_end },
            });
        }
        Ok((out, end))
    }

    /// The offset in `all.log` (`json`: `all.jsonl`) of the first line at or after `ts`,
    /// the size when there is none: the runs before the first whose latest time reaches
    /// `ts` are skipped, the rest read line by line.
    pub fn offset_at(&self, json: bool, ts: i64) -> io::Result<u64> {
        let (start, size) = {
            let st = self.state.lock();
            let key = |r: &Run| if json { r.json_max_ts } else { r.max_ts };
            let before = super::last_index_where(st.count, |i| self.run(&st, i), |r| key(r) < ts)?;
            let first = before.map_or(0, |i| i + 1);
            if first >= st.count {
                return Ok(if json { st.json_size } else { st.size });
            }
            let run = self.run(&st, first)?;
            (if json { run.all_json } else { run.all }, if json { st.json_size } else { st.size })
        };
        // A line's time: its first 24 bytes, or in JSON the "t" that comes first.
        let time_of = |line: &[u8]| {
            let text = if json { line.get(6..).unwrap_or(&[]) } else { line };
            parse_rfc3339_prefix(text).map(|(t, _)| t)
        };
        let read = |at: u64, max: usize| if json { self.read_jsonl(at, max) } else { self.read_log(at, max) };
        let found = |line: &[u8]| time_of(line).is_some_and(|t| t >= ts);
        Ok(super::first_line_where(start, size, read, found)?.unwrap_or(size))
    }

    /// Reads up to `max` bytes of `all.log` at `offset`.
    pub fn read_log(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        let (pieces, end) = self.pieces(false, offset, max as u64)?;
        let mut out = Vec::new();
        let mut at = offset;
        for piece in pieces {
            match piece {
                Piece::Missing { run, end: run_end } => {
                    let range = MissingRange { start: run.all, end: run_end, ts: run.ts, why: Missing::Dropped };
                    let to = end.min(run_end);
                    range.render(at - run.all, to - run.all, &mut out);
                    at = to;
                }
                Piece::Lines { views, name, run } => {
                    let bytes = views.store().read(run.merged, run.merged_len as usize)?;
                    let mut pos = run.all;
                    for line in bytes.split_inclusive(|&b| b == b'\n') {
                        let cut = line.len().min(25);
                        let len = (line.len() + name.len() + 1) as u64;
                        if pos + len > at && pos < end {
                            let mut shown = Vec::with_capacity(len as usize);
                            shown.extend_from_slice(&line[..cut]);
                            shown.extend_from_slice(name.as_bytes());
                            shown.push(b' ');
                            shown.extend_from_slice(&line[cut..]);
                            let from = (at.max(pos) - pos) as usize;
                            let to = ((end - pos) as usize).min(shown.len());
                            out.extend_from_slice(&shown[from..to]);
                            at = pos + to as u64;
                        }
                        pos += len;
                        if pos >= end {
                            break;
                        }
                    }
                }
            }
            if at >= end {
                break;
            }
        }
        Ok(out)
    }

    /// Reads up to `max` bytes of `all.jsonl` at `offset`.
    pub fn read_jsonl(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        let (pieces, end) = self.pieces(true, offset, max as u64)?;
        let mut out = Vec::new();
        let mut at = offset;
        let mut line = Vec::new();
        for piece in pieces {
            let (views, name, run) = match piece {
                Piece::Lines { views, name, run } => (views, name, run),
                Piece::Missing { run, end: run_end } => {
                    let to = end.min(run_end);
                    jsonl::push_notice(run.all_json, run_end, at, to, &mut out);
                    at = to;
                    continue;
                }
            };
            let epoch = views.store().header().epoch;
            let mut pos = run.all_json;
            let run_json_end = run.json + run.json_len;
            let scanned = views.scan_json(run.json, |v| {
                if v.json >= run_json_end || pos >= end {
                    return ControlFlow::Break(());
                }
                line.clear();
                render_json(v.entry, JsonContext { epoch, after: v.after, sandbox: Some(&name) }, &mut line);
                let len = line.len() as u64;
                if pos + len > at {
                    let from = (at - pos) as usize;
                    let to = ((end - pos) as usize).min(line.len());
                    out.extend_from_slice(&line[from..to]);
                    at = pos + to as u64;
                }
                pos += len;
                ControlFlow::Continue(())
            });
            match scanned {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let run_end = run.all_json + run.all_json_len;
                    let to = end.min(run_end);
                    jsonl::push_notice(run.all_json, run_end, at, to, &mut out);
                    at = to;
                }
                Err(e) => return Err(e),
            }
            if at >= end {
                break;
            }
        }
        Ok(out)
    }
}

/// A sandbox name as `all.log` shows it between the timestamp and the tag: spaces,
/// control characters and backslashes as `\xHH`, so the line keeps its shape.
fn display_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c == ' ' || c == '\\' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The progress record written by [`AllViews::write_progress`], if it is whole.
fn read_progress(path: &std::path::Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(path).ok()?;
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let text = bytes.get(8..8 + len)?;
    (crc32fast::hash(text) == crc).then(|| serde_json::from_slice(text).ok()).flatten()
}

fn read_run(file: &File, i: u64) -> Option<Run> {
    let mut e = [0u8; RUN_LEN as usize];
    file.read_exact_at(&mut e, i * RUN_LEN).ok()?;
    Run::decode(&e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_a_torn_one_is_refused() {
        let run = Run {
            all: 1 << 40,
            all_len: 70_000,
            all_json: 3,
            all_json_len: 90_000,
            epoch: 5 << 24,
            merged: 77,
            merged_len: 65_000,
            json: 99,
            json_len: 80_000,
            ts: -5,
            max_ts: 1_777_582_800_000,
            json_max_ts: 1_777_582_800_001,
        };
        let mut e = run.encode();
        assert_eq!(Run::decode(&e), Some(run));
        e[70] ^= 1;
        assert_eq!(Run::decode(&e), None);
        assert_eq!(display_name("web 1\n\\"), "web\\x201\\x0a\\x5c");
    }
}

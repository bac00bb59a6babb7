//! One sandbox epoch on disk, in its own directory:
//!
//! - `data`: the rendered bytes; byte N of `data` is byte N of `merged.log`. Dropped
//!   ranges are holes punched into it (`fallocate(PUNCH_HOLE)`), so no offset moves.
//! - `journal`: framed records ([`super::frame`]): a header, then one commit per ingest
//!   batch, carrying where the batch's bytes end, their checksum, the checkpoints placed
//!   in them, and the timeline's own payload (ops, generations, checkpoints), which the
//!   store never interprets.
//! - `segments`: an index of closed segments (the bytes between two segment
//!   checkpoints, the unit of eviction): their range, time range, when they closed, and
//!   where their starting checkpoint is in the journal. Its header holds the dropped
//!   prefix.
//!
//! Order of writes for one commit: data, then journal, then the size is published. So a
//! byte a reader was given is always covered by a complete journal record, and a crash
//! at any moment leaves at most an unpublished tail, which recovery cuts.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::frame::{frame_header, push_frame, write_all_vectored_at, FrameReader};
use super::notice::{Missing, MissingRange, LINE_MIN};
use super::pool::{self, FilePool, PooledFile};
use crate::codec::{push_bytes, push_varint, push_zigzag, Decoder};
use crate::time::now_ms;

/// Version of the on-disk format; state of another version starts a new epoch.
pub const FORMAT_VERSION: u32 = 2;

const HEADER_TAG: u8 = b'H';
const COMMIT_TAG: u8 = b'C';
const COMMIT_HAS_TS: u8 = 1;
const COMMIT_UNSTORED: u8 = 2;

const SEGMENTS_MAGIC: &[u8; 8] = b"MSBSEG01";
const SEGMENTS_HEADER: u64 = 32;
const ENTRY_LEN: u64 = 56;
const ENTRY_UNSTORED: u32 = 1 << 31;

/// Journal space kept preallocated ahead of its end, so a full state filesystem still
/// lets msbfs record which ranges it could not keep.
const JOURNAL_RESERVE: u64 = 64 << 10;
/// Index entries kept preallocated ahead.
const SEGMENTS_RESERVE: u64 = 64;
/// Segments dropped to make room for one batch before it is given up.
const MAX_RECLAIM: usize = 64;

/// Frees disk space for a full state filesystem; true when it freed something.
pub type Reclaim = Arc<dyn Fn() -> bool + Send + Sync>;

/// Dead journal bytes (before the oldest retained segment) that trigger a rewrite.
const COMPACT_AT: u64 = 256 << 10;

/// Identity and bookkeeping of an epoch, the journal's first record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Random epoch id (in the `user.cursor` xattr).
    pub epoch: u64,
    /// First inode number of the epoch's block.
    pub ino_base: u64,
    /// When the epoch started, Unix milliseconds.
    pub created_ms: i64,
    /// Sandbox name.
    pub name: String,
    /// Identity of the sandbox directory (opaque to the store), to recognise it again.
    pub owner: Vec<u8>,
}

/// A checkpoint placed inside a commit's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Offset in `merged.log` (within the commit's bytes, or at their end).
    pub out: u64,
    /// Where the checkpoint's record starts in the commit's payload.
    pub payload_at: u32,
    /// True when it starts a new segment (a unit of eviction); false for a resume
    /// point only (placed at shutdown or restart).
    pub boundary: bool,
}

/// One batch to append.
#[derive(Clone, Copy, Debug)]
pub struct Commit<'a> {
    /// Rendered bytes, appended at the current end.
    pub bytes: &'a [u8],
    /// The timeline's record of the batch (opaque here).
    pub payload: &'a [u8],
    /// More of the record, appended to the payload unless the state filesystem is full
    /// (then only what ingest needs to continue is kept).
    pub extra: &'a [u8],
    /// Checkpoints placed in the batch, ascending.
    pub cuts: &'a [Cut],
    /// Earliest and latest timestamp of the rendered lines, if any.
    pub ts_range: Option<(i64, i64)>,
}

/// A commit read back from the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCommit {
    /// Logical journal offset of its frame.
    pub journal_off: u64,
    /// Offset of its first byte in `merged.log`.
    pub data_start: u64,
    /// Offset just past its bytes.
    pub data_end: u64,
    crc: u32,
    committed_ms: i64,
    ts_range: Option<(i64, i64)>,
    unstored: bool,
    /// Checkpoints placed in it.
    pub cuts: Vec<Cut>,
    /// The timeline's payload.
    pub payload: Vec<u8>,
}

impl StoredCommit {
    /// True when `bytes` are exactly this commit's bytes (length and checksum).
    pub fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.data_end - self.data_start && crc32fast::hash(bytes) == self.crc
    }

    /// True when its bytes were never stored (the state filesystem was full).
    pub fn is_unstored(&self) -> bool {
        self.unstored
    }
}

/// A closed segment, as indexed in `segments`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First offset (a segment checkpoint).
    pub start: u64,
    /// Offset just past it (the next segment checkpoint).
    pub end: u64,
    /// Earliest timestamp in it.
    pub min_ts: i64,
    /// Latest timestamp in it.
    pub max_ts: i64,
    /// When it closed, Unix milliseconds (its age for eviction).
    pub closed_ms: i64,
    /// Logical journal offset of the commit holding its starting checkpoint.
    pub journal_off: u64,
    /// Index of that checkpoint among the commit's cuts.
    pub cut: u32,
    /// True when a range in it could not be stored.
    pub unstored: bool,
}

impl Segment {
    fn encode(&self) -> [u8; ENTRY_LEN as usize] {
        let mut e = [0u8; ENTRY_LEN as usize];
        for (i, v) in
            [self.start, self.end, self.min_ts as u64, self.max_ts as u64, self.closed_ms as u64, self.journal_off]
                .into_iter()
                .enumerate()
        {
            e[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let cut = self.cut | if self.unstored { ENTRY_UNSTORED } else { 0 };
        e[48..52].copy_from_slice(&cut.to_le_bytes());
        let crc = crc32fast::hash(&e[..52]);
        e[52..].copy_from_slice(&crc.to_le_bytes());
        e
    }

    fn decode(e: &[u8]) -> Option<Segment> {
        if e.len() != ENTRY_LEN as usize || crc32fast::hash(&e[..52]).to_le_bytes() != e[52..56] {
            return None;
        }
        let w = |i: usize| u64::from_le_bytes(e[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let cut = u32::from_le_bytes(e[48..52].try_into().expect("4 bytes"));
        let seg = Segment {
            start: w(0),
            end: w(1),
            min_ts: w(2) as i64,
            max_ts: w(3) as i64,
            closed_ms: w(4) as i64,
            journal_off: w(5),
            cut: cut & !ENTRY_UNSTORED,
            unstored: cut & ENTRY_UNSTORED != 0,
        };
        (seg.start < seg.end).then_some(seg)
    }
}

/// Where ingest resumes after a restart: a checkpoint and every commit from it on.
#[derive(Debug)]
pub struct Recovered {
    /// Commits from the one holding the checkpoint to the end, in order; empty when
    /// nothing was committed yet.
    pub commits: Vec<StoredCommit>,
    /// Index in the first commit's cuts of the checkpoint: the last one, or the last
    /// one before any damaged data.
    pub resume_cut: usize,
    /// Indices into `commits` whose data is missing or fails its checksum although
    /// their journal record is intact: to be rendered again from the sources
    /// ([`EpochStore::repair`]) or replaced by a notice ([`EpochStore::give_up`]).
    pub damaged: Vec<usize>,
    /// What recovery cut or found damaged, one line each (for the log).
    pub repairs: Vec<String>,
}

/// Why a saved epoch cannot be resumed (a new epoch starts instead).
#[derive(Debug)]
pub struct Unreadable(pub String);

/// The segment being filled.
#[derive(Clone, Copy, Debug)]
struct OpenSegment {
    start: u64,
    journal_off: u64,
    cut: u32,
    min_ts: i64,
    max_ts: i64,
    unstored: bool,
}

impl OpenSegment {
    fn at(start: u64, journal_off: u64, cut: u32) -> OpenSegment {
        OpenSegment { start, journal_off, cut, min_ts: i64::MAX, max_ts: i64::MIN, unstored: false }
    }

    fn close(&self, end: u64, closed_ms: i64) -> Segment {
        Segment {
            start: self.start,
            end,
            min_ts: self.min_ts,
            max_ts: self.max_ts,
            closed_ms,
            journal_off: self.journal_off,
            cut: self.cut,
            unstored: self.unstored,
        }
    }

    fn widen(&mut self, ts: Option<(i64, i64)>) {
        if let Some((lo, hi)) = ts {
            self.min_ts = self.min_ts.min(lo);
            self.max_ts = self.max_ts.max(hi);
        }
    }
}

/// Everything the appender changes, under one lock.
#[derive(Debug)]
struct Writer {
    journal: Arc<PooledFile>,
    /// Logical offset of the first byte after the header frame.
    base: u64,
    /// Physical length of the header frame.
    header_len: u64,
    /// Physical end of the valid journal.
    journal_end: u64,
    /// Physical length preallocated.
    journal_reserved: u64,
    /// Length of `segments` preallocated (zeros past the last entry read as torn).
    segments_reserved: u64,
    closed: u64,
    /// Index of the first closed segment not dropped.
    first_retained: u64,
    open: OpenSegment,
    /// When a write failure was last warned about (at most one warning a minute).
    last_warning: Option<std::time::Instant>,
    /// Batches that could not be stored since writes last succeeded.
    not_kept: u64,
}

/// Shortest time between two warnings about writes failing.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Writer {
    /// True when a write failure may be warned about now (once a minute at most).
    fn may_warn(&mut self) -> bool {
        let due = self.last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            self.last_warning = Some(std::time::Instant::now());
        }
        due
    }

    fn logical(&self, physical: u64) -> u64 {
        physical - self.header_len + self.base
    }

    fn physical(&self, logical: u64) -> Option<u64> {
        logical.checked_sub(self.base).map(|l| l + self.header_len)
    }
}

/// One sandbox epoch's store. Reads are lock-free `pread`s of `data` (or notice text
/// for missing ranges); appends are serialised by ingest.
pub struct EpochStore {
    header: Header,
    dir: PathBuf,
    data: Arc<PooledFile>,
    /// The index of closed segments; never replaced, so read without the writer lock.
    segments: Arc<PooledFile>,
    size: AtomicU64,
    dropped: AtomicU64,
    /// Closed segments indexed (readable without the writer lock).
    closed: AtomicU64,
    /// Age of the oldest segment that can be dropped, `i64::MAX` when none.
    oldest_closed_ms: AtomicI64,
    has_unstored: AtomicBool,
    unstored: RwLock<Vec<MissingRange>>,
    writer: Mutex<Writer>,
    /// Called when the state filesystem is full: drops the store's oldest segment
    /// (of any epoch) and says whether it did.
    reclaim: Mutex<Option<Reclaim>>,
    /// Bytes this epoch occupies (retained data, journal, index).
    footprint: AtomicU64,
    /// The store-wide total the footprint is part of.
    usage: Arc<AtomicU64>,
    dirty: AtomicBool,
    /// Created since the last sync: its directory entries are not durable yet.
    fresh: AtomicBool,
    /// When its sandbox went away (Unix milliseconds), `i64::MAX` while it is live: a
    /// retired epoch is kept for `all.log` until the budget drops it.
    retired_ms: AtomicI64,
    /// Its state was deleted: nothing can be read from it any more.
    removed: AtomicBool,
}

impl std::fmt::Debug for EpochStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochStore").field("header", &self.header).field("size", &self.size()).finish()
    }
}

fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(create).custom_flags(libc::O_CLOEXEC).open(path)
}

fn encode_header(h: &Header, base: u64) -> Vec<u8> {
    let mut p = vec![HEADER_TAG];
    push_varint(&mut p, u64::from(FORMAT_VERSION));
    push_varint(&mut p, h.epoch);
    push_varint(&mut p, h.ino_base);
    push_zigzag(&mut p, h.created_ms);
    push_varint(&mut p, base);
    push_bytes(&mut p, h.name.as_bytes());
    push_bytes(&mut p, &h.owner);
    let mut frame = Vec::new();
    push_frame(&mut frame, &p);
    frame
}

fn decode_header(p: &[u8]) -> Result<(Header, u64), String> {
    let mut d = Decoder::new(p);
    if d.u8() != Some(HEADER_TAG) {
        return Err("the journal does not start with a header".into());
    }
    let version = d.varint().ok_or("truncated header")?;
    if version != u64::from(FORMAT_VERSION) {
        return Err(format!("format version {version}, this msbfs reads version {FORMAT_VERSION}"));
    }
    let bad = || "malformed header".to_string();
    let epoch = d.varint().ok_or_else(bad)?;
    let ino_base = d.varint().ok_or_else(bad)?;
    let created_ms = d.zigzag().ok_or_else(bad)?;
    let base = d.varint().ok_or_else(bad)?;
    let name = String::from_utf8(d.bytes(4096).ok_or_else(bad)?.to_vec()).map_err(|_| bad())?;
    let owner = d.bytes(4096).ok_or_else(bad)?.to_vec();
    Ok((Header { epoch, ino_base, created_ms, name, owner }, base))
}

/// Decodes a journal header payload (for listing saved epochs).
pub(crate) fn decode_header_payload(p: &[u8]) -> Result<Header, String> {
    decode_header(p).map(|(h, _)| h)
}

/// The journal frame of commit `c`, in the pieces written one after the other: the
/// frame header, the commit's own header, its payload, and (unless `unstored`) its
/// extra payload.
fn encode_commit<'c>(
    c: &Commit<'c>,
    data_start: u64,
    committed_ms: i64,
    unstored: bool,
) -> ([u8; 8], Vec<u8>, &'c [u8], &'c [u8]) {
    let extra = if unstored { &[][..] } else { c.extra };
    let mut p = Vec::with_capacity(32 + c.cuts.len() * 8);
    p.push(COMMIT_TAG);
    push_varint(&mut p, data_start);
    push_varint(&mut p, c.bytes.len() as u64);
    p.extend_from_slice(&crc32fast::hash(c.bytes).to_le_bytes());
    push_zigzag(&mut p, committed_ms);
    let flags = if c.ts_range.is_some() { COMMIT_HAS_TS } else { 0 } | if unstored { COMMIT_UNSTORED } else { 0 };
    p.push(flags);
    if let Some((lo, hi)) = c.ts_range {
        push_zigzag(&mut p, lo);
        push_zigzag(&mut p, hi.wrapping_sub(lo));
    }
    push_varint(&mut p, c.cuts.len() as u64);
    for cut in c.cuts {
        push_varint(&mut p, cut.out - data_start);
        push_varint(&mut p, u64::from(cut.payload_at));
        p.push(u8::from(cut.boundary));
    }
    (frame_header(&[&p, c.payload, extra]), p, c.payload, extra)
}

fn decode_commit(journal_off: u64, p: &[u8]) -> Option<StoredCommit> {
    let mut d = Decoder::new(p);
    if d.u8()? != COMMIT_TAG {
        return None;
    }
    let data_start = d.varint()?;
    let data_end = data_start.checked_add(d.varint()?)?;
    let crc = u32::from_le_bytes(d.take(4)?.try_into().ok()?);
    let committed_ms = d.zigzag()?;
    let flags = d.u8()?;
    let ts_range = if flags & COMMIT_HAS_TS != 0 {
        let lo = d.zigzag()?;
        Some((lo, lo.wrapping_add(d.zigzag()?)))
    } else {
        None
    };
    let count = usize::try_from(d.varint()?).ok()?;
    let mut cuts = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let out = data_start.checked_add(d.varint()?)?;
        let payload_at = d.varint_u32()?;
        let boundary = d.u8()? != 0;
        if out > data_end || cuts.last().is_some_and(|c: &Cut| c.out > out) {
            return None;
        }
        cuts.push(Cut { out, payload_at, boundary });
    }
    let payload = d.rest().to_vec();
    if cuts.iter().any(|c| c.payload_at as usize > payload.len()) {
        return None;
    }
    Some(StoredCommit {
        journal_off,
        data_start,
        data_end,
        crc,
        committed_ms,
        ts_range,
        unstored: flags & COMMIT_UNSTORED != 0,
        cuts,
        payload,
    })
}

fn segments_header(dropped: u64) -> [u8; SEGMENTS_HEADER as usize] {
    let mut h = [0u8; SEGMENTS_HEADER as usize];
    h[..8].copy_from_slice(SEGMENTS_MAGIC);
    h[8..16].copy_from_slice(&dropped.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

fn read_dropped(segments: &File) -> Option<u64> {
    let mut h = [0u8; SEGMENTS_HEADER as usize];
    segments.read_exact_at(&mut h, 0).ok()?;
    (h[..8] == *SEGMENTS_MAGIC && crc32fast::hash(&h[..24]).to_le_bytes() == h[24..28])
        .then(|| u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")))
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Appends exactly `len` bytes of `file` at `pos` to `out`, reading straight into its
/// spare capacity (no zero-filling: this is the read path of every FUSE read).
fn pread_append(file: &File, out: &mut Vec<u8>, len: usize, pos: u64) -> io::Result<()> {
    out.reserve(len);
    let mut done = 0;
    while done < len {
        let spare = out.spare_capacity_mut();
        // SAFETY: pread writes at most `len - done` bytes (within the reserved spare
        // capacity) into memory we own; only the bytes it reports written are then
        // marked initialised.
        let n = unsafe {
            libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), len - done, (pos + done as u64) as libc::off_t)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the store's data file ends early"));
        }
        // SAFETY: the kernel initialised these `n` bytes.
        unsafe { out.set_len(out.len() + n as usize) };
        done += n as usize;
    }
    Ok(())
}

/// Frees the disk blocks of `[start, end)` of `file`, keeping its size.
fn punch_hole(file: &File, start: u64, end: u64) -> io::Result<()> {
    // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            start as libc::off_t,
            (end - start) as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reserves `[start, end)` of `file` on disk (extending it), so later writes there
/// cannot fail for lack of space.
fn preallocate(file: &File, start: u64, end: u64) -> io::Result<()> {
    // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, start as libc::off_t, (end - start) as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl EpochStore {
    /// Creates a new, empty epoch in `dir` (which must not hold one). Nothing is
    /// synced here: the syncer makes the new files and their directory entries durable
    /// with the first data (a crash before that loses an epoch nobody has read much of,
    /// and recovery removes what is left of it).
    pub fn create(dir: &Path, header: Header, usage: Arc<AtomicU64>, pool: &Arc<FilePool>) -> io::Result<EpochStore> {
        std::fs::create_dir_all(dir)?;
        let (data, _) = pool::create(pool, dir.join("data"))?;
        let (segments, segments_file) = pool::create(pool, dir.join("segments"))?;
        segments_file.write_all_at(&segments_header(0), 0)?;
        let frame = encode_header(&header, 0);
        let (journal, journal_file) = pool::create(pool, dir.join("journal"))?;
        journal_file.write_all_at(&frame, 0)?;
        let header_len = frame.len() as u64;
        // Room to record what cannot be stored, should the filesystem fill up.
        let reserved = preallocate(&journal_file, header_len, header_len + JOURNAL_RESERVE)
            .map_or(header_len, |()| header_len + JOURNAL_RESERVE);
        let open = OpenSegment::at(0, 0, 0);
        let writer = Writer {
            journal,
            base: 0,
            header_len,
            journal_end: header_len,
            journal_reserved: reserved,
            segments_reserved: SEGMENTS_HEADER,
            closed: 0,
            first_retained: 0,
            open,
            last_warning: None,
            not_kept: 0,
        };
        let store = EpochStore::assemble(dir, header, data, segments, writer, 0, 0, Vec::new(), usage);
        store.fresh.store(true, Ordering::Release);
        store.dirty.store(true, Ordering::Release);
        Ok(store)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: &Path,
        header: Header,
        data: Arc<PooledFile>,
        segments: Arc<PooledFile>,
        writer: Writer,
        size: u64,
        dropped: u64,
        unstored: Vec<MissingRange>,
        usage: Arc<AtomicU64>,
    ) -> EpochStore {
        let closed = writer.closed;
        let store = EpochStore {
            header,
            dir: dir.to_path_buf(),
            data,
            segments,
            size: AtomicU64::new(size),
            dropped: AtomicU64::new(dropped),
            closed: AtomicU64::new(closed),
            oldest_closed_ms: AtomicI64::new(i64::MAX),
            has_unstored: AtomicBool::new(!unstored.is_empty()),
            unstored: RwLock::new(unstored),
            writer: Mutex::new(writer),
            reclaim: Mutex::new(None),
            footprint: AtomicU64::new(0),
            usage,
            dirty: AtomicBool::new(false),
            fresh: AtomicBool::new(false),
            retired_ms: AtomicI64::new(i64::MAX),
            removed: AtomicBool::new(false),
        };
        let w = store.writer.lock();
        store.account(&w);
        store.refresh_oldest(&w);
        drop(w);
        store
    }

    /// Writes back the bytes of damaged commit `commit` (re-rendered from the sources by
    /// the caller). Returns false, writing nothing, unless they match its checksum.
    pub fn repair(&self, commit: &StoredCommit, bytes: &[u8]) -> io::Result<bool> {
        if !commit.matches(bytes) {
            return Ok(false);
        }
        self.data.get()?.write_all_at(bytes, commit.data_start)?;
        self.dirty.store(true, Ordering::Release);
        Ok(true)
    }

    /// Replaces the bytes of damaged commit `commit`, which cannot be rendered again,
    /// by a notice of the same length. The journal keeps the original checksum, so a
    /// later start tries the sources again first.
    pub fn give_up(&self, commit: &StoredCommit) -> io::Result<()> {
        let range = MissingRange {
            start: commit.data_start,
            end: commit.data_end,
            ts: commit.ts_range.map_or(commit.committed_ms, |(lo, _)| lo),
            why: Missing::Damaged,
        };
        let mut text = Vec::new();
        if commit.data_end - commit.data_start >= LINE_MIN as u64 {
            range.render(0, commit.data_end - commit.data_start, &mut text);
        } else {
            text.resize((commit.data_end - commit.data_start) as usize, b'\n');
        }
        self.data.get()?.write_all_at(&text, commit.data_start)?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// The epoch's identity.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// When its sandbox went away, if it did ([`super::Store::retire_epoch`]).
    pub fn retired_ms(&self) -> Option<i64> {
        Some(self.retired_ms.load(Ordering::Relaxed)).filter(|ms| *ms != i64::MAX)
    }

    /// Marks it retired at `ms` (in memory; the store records it on disk).
    pub(crate) fn set_retired(&self, ms: i64) {
        self.retired_ms.store(ms, Ordering::Relaxed);
    }

    /// True once its state was deleted.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Its state is being deleted.
    pub(crate) fn set_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in `merged.log`; only grows.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Offsets below this read as a dropped-range notice.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    /// Bytes this epoch occupies on disk (retained data, journal, index).
    pub fn footprint(&self) -> u64 {
        self.footprint.load(Ordering::Relaxed)
    }

    /// Age of its oldest droppable segment (Unix ms), `None` when nothing can be dropped.
    pub fn oldest_droppable_ms(&self) -> Option<i64> {
        Some(self.oldest_closed_ms.load(Ordering::Relaxed)).filter(|ms| *ms != i64::MAX)
    }

    /// Brings the footprint (and the store-wide total) up to date; `w` is the locked writer.
    fn account(&self, w: &Writer) {
        let journal = w.journal_reserved.max(w.journal_end);
        let segments = SEGMENTS_HEADER + w.closed * ENTRY_LEN;
        let now = self.size().saturating_sub(self.dropped()) + journal + segments;
        let before = self.footprint.swap(now, Ordering::Relaxed);
        if now >= before {
            self.usage.fetch_add(now - before, Ordering::Relaxed);
        } else {
            self.usage.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    /// Removes this epoch's footprint from the store-wide total (its files are deleted).
    pub fn forget_footprint(&self) {
        let before = self.footprint.swap(0, Ordering::Relaxed);
        self.usage.fetch_sub(before, Ordering::Relaxed);
    }

    /// Reads the age of the first retained segment again (after a drop or recovery).
    fn refresh_oldest(&self, w: &Writer) {
        let ms = if w.first_retained < w.closed {
            self.entry(w.first_retained).map_or(i64::MAX, |s| s.closed_ms)
        } else {
            i64::MAX
        };
        self.oldest_closed_ms.store(ms, Ordering::Relaxed);
    }

    /// Sets what to call when the state filesystem is full.
    pub fn set_reclaim(&self, reclaim: Reclaim) {
        *self.reclaim.lock() = Some(reclaim);
    }

    /// Appends a batch: its bytes to `data`, its record to the journal, then publishes the
    /// new size. When the state filesystem is full the bytes are recorded as a range
    /// that could not be stored (read as a notice), and the size still grows, and the
    /// commit's `extra` is left out. Returns the logical journal offset of the commit's
    /// record and whether `extra` was kept.
    pub fn append(&self, commit: &Commit<'_>) -> io::Result<(u64, bool)> {
        let start = self.size();
        let end = start + commit.bytes.len() as u64;
        let mut unstored = false;
        if !commit.bytes.is_empty() {
            let data = self.data.get()?;
            let mut attempts = 0;
            while let Err(e) = data.write_all_at(commit.bytes, start) {
                if !is_no_space(&e) {
                    return Err(e);
                }
                // Full: make room by dropping the oldest segments of the whole store
                // (beyond its budget), and only then give up on this batch.
                // Give back what the failed write took, for the journal's sake.
                let _ = data.set_len(start);
                let reclaim = self.reclaim.lock().clone();
                attempts += 1;
                if attempts > MAX_RECLAIM || !reclaim.is_some_and(|reclaim| reclaim()) {
                    unstored = true;
                    break;
                }
            }
        }
        let mut w = self.writer.lock();
        let now = now_ms();
        let (frame, head, payload, extra) = encode_commit(commit, start, now, unstored);
        let parts = [&frame[..], &head, payload, extra];
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let at = w.journal_end;
        let logical = w.logical(at);
        self.reserve_journal(&mut w, len);
        match w.journal.get().and_then(|journal| write_all_vectored_at(&journal, &parts, at)) {
            Ok(()) => w.journal_end += len,
            Err(e) => {
                if w.may_warn() {
                    tracing::warn!(
                        sandbox = ?self.header.name,
                        "cannot write the store's journal ({e}); what msbfs shows now may not survive a restart"
                    );
                }
            }
        }
        // Close the segment at each boundary checkpoint; the next one starts there.
        for (k, cut) in commit.cuts.iter().enumerate() {
            if !cut.boundary {
                continue;
            }
            if cut.out > w.open.start {
                w.open.widen(commit.ts_range);
                let seg = w.open.close(cut.out, now);
                let at = SEGMENTS_HEADER + w.closed * ENTRY_LEN;
                self.reserve_segments(&mut w);
                if self.segments.get().and_then(|f| f.write_all_at(&seg.encode(), at)).is_err() {
                    // No room for the index entry: the segment stays open and closes at
                    // a later boundary, so the index never has a hole.
                    continue;
                }
                if w.first_retained == w.closed {
                    self.oldest_closed_ms.store(seg.closed_ms, Ordering::Relaxed);
                }
                w.closed += 1;
                self.closed.store(w.closed, Ordering::Release);
            }
            w.open = OpenSegment::at(cut.out, logical, k as u32);
        }
        w.open.widen(commit.ts_range);
        if unstored {
            w.open.unstored = true;
            let ts = commit.ts_range.map_or(now, |(lo, _)| lo);
            let range = MissingRange { start, end, ts, why: Missing::Unstored };
            self.unstored.write().push(range);
            self.has_unstored.store(true, Ordering::Release);
            w.not_kept += 1;
            if w.may_warn() {
                tracing::warn!(
                    sandbox = ?self.header.name,
                    "the msbfs state filesystem is full: {} bytes at offset {start} could not be stored and read as a notice",
                    commit.bytes.len()
                );
            }
        } else if w.not_kept > 0 {
            tracing::info!(
                sandbox = ?self.header.name,
                "the store accepts writes again ({} batch(es) could not be stored and read as notices)",
                w.not_kept
            );
            w.not_kept = 0;
        }
        self.size.store(end, Ordering::Release);
        self.dirty.store(true, Ordering::Release);
        self.account(&w);
        Ok((logical, !unstored))
    }

    /// Keeps room for [`SEGMENTS_RESERVE`] more index entries preallocated.
    fn reserve_segments(&self, w: &mut Writer) {
        let end = SEGMENTS_HEADER + (w.closed + 1) * ENTRY_LEN;
        if end <= w.segments_reserved {
            return;
        }
        let target = end + SEGMENTS_RESERVE * ENTRY_LEN;
        if self.segments.get().and_then(|f| preallocate(&f, end - ENTRY_LEN, target)).is_ok() {
            w.segments_reserved = target;
        }
    }

    /// Keeps [`JOURNAL_RESERVE`] bytes preallocated past the journal's end.
    fn reserve_journal(&self, w: &mut Writer, need: u64) {
        let want = w.journal_end + need;
        if want + JOURNAL_RESERVE / 4 <= w.journal_reserved {
            return;
        }
        let target = want + JOURNAL_RESERVE;
        let from = w.journal_reserved.max(w.journal_end);
        if w.journal.get().and_then(|f| preallocate(&f, from, target)).is_ok() {
            w.journal_reserved = target;
        }
    }

    /// Reads up to `max` bytes at `offset` (fewer at the end, none past it). Missing
    /// ranges read as their notice text; every handle sees the same byte at the same
    /// offset.
    pub fn read(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        let size = self.size();
        if offset >= size || max == 0 {
            return Ok(Vec::new());
        }
        let end = size.min(offset.saturating_add(max as u64));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let dropped = self.dropped();
            if pos < dropped {
                let range = self.dropped_range_at(pos);
                let to = end.min(range.end);
                range.render(pos - range.start, to - range.start, &mut out);
                pos = to;
                continue;
            }
            let mut to = end;
            if self.has_unstored.load(Ordering::Acquire) {
                let ranges = self.unstored.read();
                let i = ranges.partition_point(|r| r.end <= pos);
                if let Some(r) = ranges.get(i).filter(|r| r.start < end) {
                    // What the dropped prefix left of it is a range of its own, so its
                    // lines start where the drop ends.
                    let r = MissingRange { start: r.start.max(dropped), ..*r };
                    if r.start <= pos {
                        let to = end.min(r.end);
                        r.render(pos - r.start, to - r.start, &mut out);
                        pos = to;
                        continue;
                    }
                    to = r.start;
                }
            }
            let at = out.len();
            pread_append(&*self.data.get()?, &mut out, (to - pos) as usize, pos)?;
            if self.dropped() > pos {
                // Dropped while we read (the hole may have been punched): read it
                // again as the notice.
                out.truncate(at);
                continue;
            }
            pos = to;
        }
        Ok(out)
    }

    /// The missing range holding `pos`, when `pos` is below the dropped prefix (views
    /// show a dropped range of `merged.log` as a notice of their own).
    pub fn dropped_at(&self, pos: u64) -> Option<MissingRange> {
        (pos < self.dropped()).then(|| self.dropped_range_at(pos))
    }

    /// The descriptor pool its files are opened through (derived files use it too).
    pub fn pool(&self) -> &Arc<FilePool> {
        self.data.pool()
    }

    /// The logical journal offset of the oldest commit still kept.
    pub fn journal_base(&self) -> u64 {
        self.writer.lock().base
    }

    /// The dropped segment holding `pos` (below the dropped prefix), as a notice range.
    fn dropped_range_at(&self, pos: u64) -> MissingRange {
        let closed = self.closed.load(Ordering::Acquire);
        // The gap between the entries around `pos`, should an entry be unreadable.
        let (mut gap_start, mut gap_end) = (0, self.dropped().max(pos + LINE_MIN as u64));
        let (mut lo, mut hi) = (0u64, closed);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.entry(mid) {
                Some(seg) if seg.end <= pos => {
                    gap_start = seg.end;
                    lo = mid + 1;
                }
                Some(seg) if seg.start > pos => {
                    gap_end = seg.start;
                    hi = mid;
                }
                Some(seg) => {
                    return MissingRange { start: seg.start, end: seg.end, ts: seg.min_ts, why: Missing::Dropped }
                }
                None => break,
            }
        }
        MissingRange { start: gap_start, end: gap_end.max(gap_start + LINE_MIN as u64), ts: 0, why: Missing::Dropped }
    }

    /// Drops the oldest retained closed segment: its range reads as a notice from now on
    /// and its disk blocks are freed. Returns the bytes freed, `None` if only the open
    /// segment is left.
    pub fn drop_oldest(&self) -> Option<u64> {
        let mut w = self.writer.lock();
        if w.first_retained >= w.closed {
            return None;
        }
        let seg = self.entry(w.first_retained)?;
        if let Err(e) = self.segments.get().and_then(|f| f.write_all_at(&segments_header(seg.end), 0)) {
            tracing::warn!(sandbox = ?self.header.name, "cannot record a dropped range: {e}");
            return None;
        }
        self.dropped.store(seg.end, Ordering::Release);
        if let Err(e) = self.data.get().and_then(|f| punch_hole(&f, seg.start, seg.end)) {
            tracing::debug!(sandbox = ?self.header.name, "cannot free disk blocks of a dropped range: {e}");
        }
        w.first_retained += 1;
        self.compact_journal(&mut w);
        self.refresh_oldest(&w);
        self.account(&w);
        Some(seg.end - seg.start)
    }

    /// Rewrites the journal without the records of dropped segments, once they are
    /// many. Offsets recorded in the index are logical, so they stay valid.
    fn compact_journal(&self, w: &mut Writer) {
        let keep_from = if w.first_retained < w.closed {
            match self.entry(w.first_retained) {
                Some(seg) => seg.journal_off,
                None => return,
            }
        } else {
            w.open.journal_off
        };
        let Some(keep_phys) = w.physical(keep_from) else { return };
        if keep_phys - w.header_len < COMPACT_AT.max(w.journal_end - keep_phys) {
            return;
        }
        let result = (|| -> io::Result<(File, u64)> {
            let frame = encode_header(&self.header, keep_from);
            let tmp = self.dir.join("journal.tmp");
            let file = open_rw(&tmp, true)?;
            file.set_len(0)?;
            file.write_all_at(&frame, 0)?;
            let journal = w.journal.get()?;
            let mut buf = vec![0u8; 1 << 20];
            let mut from = keep_phys;
            let mut to = frame.len() as u64;
            while from < w.journal_end {
                let n = buf.len().min((w.journal_end - from) as usize);
                journal.read_exact_at(&mut buf[..n], from)?;
                file.write_all_at(&buf[..n], to)?;
                from += n as u64;
                to += n as u64;
            }
            file.sync_data()?;
            std::fs::rename(&tmp, self.dir.join("journal"))?;
            File::open(&self.dir)?.sync_all()?;
            Ok((file, frame.len() as u64))
        })();
        match result {
            Ok((file, header_len)) => {
                w.journal_end = w.journal_end - keep_phys + header_len;
                w.journal_reserved = w.journal_end;
                w.journal.replace(file);
                w.base = keep_from;
                w.header_len = header_len;
            }
            Err(e) => tracing::warn!(sandbox = ?self.header.name, "cannot compact the journal: {e}"),
        }
    }

    /// Makes everything appended so far durable (`fdatasync` of data, index, journal,
    /// and the directory entries of a new epoch).
    pub fn sync(&self) -> io::Result<()> {
        if !self.begin_sync() {
            return Ok(());
        }
        self.finish_sync()
    }

    /// Syncs the files of a sync begun with [`EpochStore::begin_sync`] and ends it.
    pub fn finish_sync(&self) -> io::Result<()> {
        let journal = self.writer.lock().journal.clone();
        let synced = (|| {
            self.data.get()?.sync_data()?;
            self.segments.get()?.sync_data()?;
            journal.get()?.sync_data()?;
            if self.fresh.load(Ordering::Acquire) {
                File::open(&self.dir)?.sync_all()?;
                if let Some(parent) = self.dir.parent() {
                    File::open(parent)?.sync_all()?;
                }
            }
            Ok(())
        })();
        self.end_sync(synced.is_ok());
        synced
    }

    /// Starts a sync of this epoch (by [`EpochStore::sync`] or a sync of the whole
    /// filesystem): false when nothing was appended since the last one.
    pub fn begin_sync(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Ends a sync begun with [`EpochStore::begin_sync`]; a failed one is retried later.
    pub fn end_sync(&self, ok: bool) {
        if ok {
            self.fresh.store(false, Ordering::Release);
        } else {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Every closed segment not dropped, oldest first (for verification and views).
    pub fn retained_segments(&self) -> Vec<Segment> {
        let w = self.writer.lock();
        (w.first_retained..w.closed).filter_map(|i| self.entry(i)).collect()
    }

    /// The segment being filled: its start and where its checkpoint is in the journal
    /// (logical offset of the commit, index of the cut).
    pub fn open_segment(&self) -> (u64, u64, u32) {
        let w = self.writer.lock();
        (w.open.start, w.open.journal_off, w.open.cut)
    }

    /// Commits from logical journal offset `from` on, in order, while `more` says so
    /// (replay of a segment reads only as far as it needs).
    pub fn commits_from(&self, from: u64, mut more: impl FnMut(&StoredCommit) -> bool) -> io::Result<()> {
        let (journal, header_len, base, end) = {
            let w = self.writer.lock();
            (w.journal.clone(), w.header_len, w.base, w.journal_end)
        };
        let Some(phys) = from.checked_sub(base).map(|l| l + header_len) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "that part of the journal was compacted away"));
        };
        let journal = journal.get()?;
        let mut reader = FrameReader::new(&journal, phys);
        while let Some((at, p)) = reader.next_frame()? {
            if at >= end {
                break;
            }
            let commit = decode_commit(at - header_len + base, p)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed commit record"))?;
            if !more(&commit) {
                break;
            }
        }
        Ok(())
    }
}

impl EpochStore {
    /// Index entry `index`, `None` when unreadable.
    fn entry(&self, index: u64) -> Option<Segment> {
        read_entry(&*self.segments.get().ok()?, index)
    }
}

fn read_entry(segments: &File, index: u64) -> Option<Segment> {
    let mut e = [0u8; ENTRY_LEN as usize];
    segments.read_exact_at(&mut e, SEGMENTS_HEADER + index * ENTRY_LEN).ok()?;
    Segment::decode(&e)
}

fn unstored_range(c: &StoredCommit) -> Option<MissingRange> {
    (c.data_end - c.data_start >= LINE_MIN as u64).then(|| MissingRange {
        start: c.data_start,
        end: c.data_end,
        ts: c.ts_range.map_or(c.committed_ms, |(lo, _)| lo),
        why: Missing::Unstored,
    })
}

mod recover;

#[cfg(test)]
mod tests;

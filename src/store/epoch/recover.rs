//! Opening a saved epoch: reading its header, cutting a torn or corrupt tail of any of
//! its files, rebuilding what the segment index misses from the journal, and finding
//! the checkpoint ingest resumes from (the last one before any damaged data).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::*;

impl EpochStore {
    /// Opens the epoch saved in `dir`, cutting any torn or inconsistent tail, and
    /// returns it with what ingest needs to resume (and to repair damaged data).
    pub fn open(
        dir: &Path,
        usage: Arc<AtomicU64>,
        pool: &Arc<FilePool>,
    ) -> Result<(EpochStore, Recovered), Unreadable> {
        let io_err = |what: &str, e: io::Error| Unreadable(format!("{what}: {e}"));
        let journal = open_rw(&dir.join("journal"), false).map_err(|e| io_err("journal", e))?;
        let data = open_rw(&dir.join("data"), false).map_err(|e| io_err("data", e))?;
        let segments = open_rw(&dir.join("segments"), true).map_err(|e| io_err("segments", e))?;
        let mut repairs = Vec::new();

        let mut frames = FrameReader::new(&journal, 0);
        let (header, base, header_len) = match frames.next_frame().map_err(|e| io_err("journal", e))? {
            Some((_, p)) => {
                let (h, base) = decode_header(p).map_err(Unreadable)?;
                (h, base, frames.position())
            }
            None => return Err(Unreadable("the journal header is torn or corrupt".into())),
        };

        // The segment index: cut a torn or corrupt tail.
        let seg_len = segments.metadata().map_err(|e| io_err("segments", e))?.len();
        let entries = seg_len.saturating_sub(SEGMENTS_HEADER) / ENTRY_LEN;
        let mut closed = entries;
        while closed > 0 && read_entry(&segments, closed - 1).is_none() {
            closed -= 1;
        }
        if seg_len > SEGMENTS_HEADER + closed * ENTRY_LEN {
            let mut tail = vec![0u8; (seg_len - SEGMENTS_HEADER - closed * ENTRY_LEN) as usize];
            // Preallocated room reads as zeros: only anything else is damage.
            if segments.read_exact_at(&mut tail, SEGMENTS_HEADER + closed * ENTRY_LEN).is_err()
                || tail.iter().any(|&b| b != 0)
            {
                repairs.push(format!("segments: cut {} bytes of torn or corrupt index at the end", tail.len()));
            }
        }
        let data_len = data.metadata().map_err(|e| io_err("data", e))?.len();
        let dropped_saved = read_dropped(&segments);

        // Scan the journal from the last indexed segment's checkpoint (re-deriving that
        // entry); if no usable checkpoint is found there, from the one before, and so on.
        let (mut commits, (resume_commit, resume_cut), damaged, journal_cut_at) = loop {
            let anchor = closed.checked_sub(1).and_then(|i| read_entry(&segments, i)).filter(|s| s.journal_off >= base);
            let scan_from = anchor.map_or(header_len, |s| s.journal_off - base + header_len);
            let dropped = dropped_saved.unwrap_or_else(|| dropped_from_holes(&data, &segments, closed, 0));
            let scan = scan_commits(&journal, &data, scan_from, header_len, base, data_len, dropped)
                .map_err(|e| io_err("journal", e))?;
            if let Some(found) = scan {
                if anchor.is_some() {
                    closed -= 1;
                }
                break found;
            }
            if anchor.is_none() {
                return Err(Unreadable("the journal holds no checkpoint to resume from".into()));
            }
            repairs.push(format!("segments: entry {} points at no usable checkpoint; rebuilt", closed - 1));
            closed -= 1;
        };
        let journal_len = journal.metadata().map_err(|e| io_err("journal", e))?.len();
        if journal_cut_at < journal_len {
            let mut probe = vec![0u8; (journal_len - journal_cut_at).min(4096) as usize];
            // Preallocated zeros look like a torn tail; only report real damage.
            if journal.read_exact_at(&mut probe, journal_cut_at).is_ok() && probe.iter().any(|&b| b != 0) {
                repairs.push(format!("journal: cut a torn or corrupt record at offset {journal_cut_at}"));
            }
            journal.set_len(journal_cut_at).map_err(|e| io_err("journal", e))?;
        }
        let size = commits.last().map_or(0, |c| c.data_end);
        if data_len > size {
            data.set_len(size).map_err(|e| io_err("data", e))?;
            repairs.push(format!("data: cut {} unpublished bytes after offset {size}", data_len - size));
        }
        for &i in &damaged {
            let c: &StoredCommit = &commits[i];
            repairs.push(format!("data: bytes {}..{} are missing or damaged", c.data_start, c.data_end));
        }

        // Rebuild the index entries the scanned commits close, and find the open segment.
        let last = closed.checked_sub(1).and_then(|i| read_entry(&segments, i));
        let mut open = OpenSegment {
            start: last.map_or(0, |s| s.end),
            journal_off: commits.first().map_or(base, |c| c.journal_off),
            cut: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            unstored: false,
        };
        let mut unstored = Vec::new();
        for c in &commits {
            for (k, cut) in c.cuts.iter().enumerate() {
                if !cut.boundary || cut.out < open.start {
                    continue;
                }
                if cut.out > open.start {
                    open.widen(c.ts_range);
                    let seg = open.close(cut.out, c.committed_ms);
                    segments
                        .write_all_at(&seg.encode(), SEGMENTS_HEADER + closed * ENTRY_LEN)
                        .map_err(|e| io_err("segments", e))?;
                    closed += 1;
                }
                open = OpenSegment::at(cut.out, c.journal_off, k as u32);
            }
            open.widen(c.ts_range);
            if c.unstored {
                open.unstored = true;
                unstored.extend(unstored_range(c));
            }
        }
        segments.set_len(SEGMENTS_HEADER + closed * ENTRY_LEN).map_err(|e| io_err("segments", e))?;
        if closed > entries {
            repairs.push(format!("segments: rebuilt {} index entries from the journal", closed - entries));
        }
        let dropped = match dropped_saved {
            Some(d) => d,
            None => {
                let d = dropped_from_holes(&data, &segments, closed, open.start);
                repairs.push(format!("segments: header unreadable; dropped prefix taken from the data file: {d}"));
                segments.write_all_at(&segments_header(d), 0).map_err(|e| io_err("segments", e))?;
                d
            }
        };
        let first_retained = first_retained_index(&segments, closed, dropped);
        let tail_from = commits.first().map_or(base, |c| c.journal_off);
        let retained = first_retained..closed;
        unstored.extend(collect_unstored(&segments, retained, &journal, header_len, base, tail_from));
        unstored.sort_by_key(|r| r.start);
        unstored.dedup();
        let journal_end = journal.metadata().map_err(|e| io_err("journal", e))?.len();
        let pooled = |path: &str, file: File| {
            let pooled = PooledFile::new(pool, dir.join(path));
            pooled.replace(file);
            pooled
        };
        let writer = Writer {
            journal: pooled("journal", journal),
            base,
            header_len,
            journal_end,
            journal_reserved: journal_end,
            segments_reserved: SEGMENTS_HEADER + closed * ENTRY_LEN,
            closed,
            first_retained,
            open,
            last_warning: None,
            not_kept: 0,
        };
        let (data, segments) = (pooled("data", data), pooled("segments", segments));
        let store = EpochStore::assemble(dir, header, data, segments, writer, size, dropped, unstored, usage);
        let commits = commits.split_off(resume_commit);
        let damaged = damaged.into_iter().map(|i| i - resume_commit).collect();
        Ok((store, Recovered { commits, resume_cut, damaged, repairs }))
    }
}

/// What a scan of the journal found: the commits, the chosen checkpoint (commit index,
/// cut index), the damaged commits, and the physical offset where the valid journal
/// ends.
type Scan = (Vec<StoredCommit>, (usize, usize), Vec<usize>, u64);

/// Reads the commits from physical offset `from`, checks that they chain and that
/// their data is present with the recorded checksum (below `dropped` it was punched
/// out on purpose), and picks the last checkpoint before any damage. `None` when no
/// usable checkpoint is there.
fn scan_commits(
    journal: &File,
    data: &File,
    from: u64,
    header_len: u64,
    base: u64,
    data_len: u64,
    dropped: u64,
) -> io::Result<Option<Scan>> {
    let mut reader = FrameReader::new(journal, from);
    let mut commits: Vec<StoredCommit> = Vec::new();
    let valid_end = loop {
        match reader.next_frame()? {
            Some((at, p)) => match decode_commit(at - header_len + base, p) {
                Some(c) if commits.last().is_none_or(|l| l.data_end == c.data_start) => commits.push(c),
                _ => break at,
            },
            None => break reader.position(),
        }
    };
    if commits.is_empty() {
        // Nothing was committed yet: an empty epoch.
        return Ok((from == header_len).then_some((commits, (0, 0), Vec::new(), valid_end)));
    }
    let mut damaged = Vec::new();
    let mut buf = Vec::new();
    for (i, c) in commits.iter().enumerate() {
        if c.unstored || c.data_start < dropped {
            continue;
        }
        let intact = c.data_end <= data_len && {
            buf.resize((c.data_end - c.data_start) as usize, 0);
            data.read_exact_at(&mut buf, c.data_start).is_ok() && crc32fast::hash(&buf) == c.crc
        };
        if !intact {
            damaged.push(i);
        }
    }
    let limit = damaged.first().map_or(u64::MAX, |&i| commits[i].data_start);
    let choice = commits
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| c.cuts.iter().enumerate().map(move |(k, cut)| (ci, k, cut.out)))
        .rfind(|&(_, _, out)| out <= limit);
    let Some((ci, k, _)) = choice else { return Ok(None) };
    Ok(Some((commits, (ci, k), damaged, valid_end)))
}

/// Unstored ranges of the `retained` closed segments older than the journal tail
/// recovery read (each indexed segment says whether it holds one).
fn collect_unstored(
    segments: &File,
    retained: std::ops::Range<u64>,
    journal: &File,
    header_len: u64,
    base: u64,
    tail_from: u64,
) -> Vec<MissingRange> {
    let mut out = Vec::new();
    let Some(first) = retained.filter_map(|i| read_entry(segments, i)).find(|s| s.unstored) else {
        return out;
    };
    let Some(phys) = first.journal_off.checked_sub(base).map(|l| l + header_len) else { return out };
    let mut reader = FrameReader::new(journal, phys);
    while let Ok(Some((at, p))) = reader.next_frame() {
        let logical = at - header_len + base;
        if logical >= tail_from {
            break;
        }
        if let Some(c) = decode_commit(logical, p).filter(|c| c.unstored) {
            out.extend(unstored_range(&c));
        }
    }
    out
}

/// The dropped prefix when the index header is unreadable: the first segment start at
/// or after the first byte of data that is not a hole.
fn dropped_from_holes(data: &File, segments: &File, closed: u64, open_start: u64) -> u64 {
    // SAFETY: lseek on a descriptor we own.
    let first_data = unsafe { libc::lseek(data.as_raw_fd(), 0, libc::SEEK_DATA) };
    if first_data <= 0 {
        return if first_data == 0 { 0 } else { open_start };
    }
    let first_data = first_data as u64;
    (0..closed)
        .filter_map(|i| read_entry(segments, i))
        .map(|s| s.start)
        .find(|&s| s >= first_data)
        .unwrap_or(open_start)
}

/// Index of the first closed segment at or after the dropped prefix (binary search:
/// entries are in offset order; an unreadable one counts as dropped).
fn first_retained_index(segments: &File, closed: u64, dropped: u64) -> u64 {
    let (mut lo, mut hi) = (0, closed);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if read_entry(segments, mid).is_some_and(|s| s.start >= dropped) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

//! The index of one text view: the view's bytes are `merged.log` lines chosen by tag,
//! so the view is a list of runs, each a range of `merged.log` that is consecutive in
//! the view. A run is 24 bytes on disk (`view offset, merged offset, length, crc`);
//! lines that follow each other in `merged.log` extend one run, so a stream of one
//! source costs a few bytes per batch, and interleaved sources one run per line.
//!
//! Runs are ascending in both offsets, so any offset of either file is found by a
//! binary search. New runs are kept in memory until [`RunIndex::flush`].

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::store::pool::PooledFile;

const RUN_LEN: u64 = 24;
/// Longest run, so a length fits its 32 bits.
const MAX_RUN: u64 = 1 << 30;

/// A range of `merged.log` that is consecutive in the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Offset in the view.
    pub view: u64,
    /// Offset in `merged.log`.
    pub merged: u64,
    /// Length.
    pub len: u64,
}

impl Run {
    fn encode(&self) -> [u8; RUN_LEN as usize] {
        let mut e = [0u8; RUN_LEN as usize];
        e[..8].copy_from_slice(&self.view.to_le_bytes());
        e[8..16].copy_from_slice(&self.merged.to_le_bytes());
        e[16..20].copy_from_slice(&(self.len as u32).to_le_bytes());
        let crc = crc32fast::hash(&e[..20]);
        e[20..].copy_from_slice(&crc.to_le_bytes());
        e
    }

    fn decode(e: &[u8]) -> Option<Run> {
        if crc32fast::hash(&e[..20]).to_le_bytes() != e[20..24] {
            return None;
        }
        let w = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().expect("8 bytes"));
        let len = u64::from(u32::from_le_bytes(e[16..20].try_into().expect("4 bytes")));
        (len > 0).then_some(Run { view: w(0), merged: w(8), len })
    }

    fn merged_end(&self) -> u64 {
        self.merged + self.len
    }
}

/// The runs of one text view.
#[derive(Debug)]
pub struct RunIndex {
    file: Arc<PooledFile>,
    /// Runs on disk.
    flushed: u64,
    /// Runs after them, not written yet.
    tail: Vec<Run>,
    size: u64,
}

impl RunIndex {
    /// The index kept in `file` (created at the first flush when it does not `exist`),
    /// cut to the runs that lie below `merged_end` (what was indexed before a crash
    /// past it is indexed again by the caller).
    pub fn open(file: Arc<PooledFile>, merged_end: u64, exists: bool) -> io::Result<RunIndex> {
        if !exists {
            return Ok(RunIndex { file, flushed: 0, tail: Vec::new(), size: 0 });
        }
        let handle = file.get()?;
        let entries = handle.metadata()?.len() / RUN_LEN;
        let mut index = RunIndex { file, flushed: 0, tail: Vec::new(), size: 0 };
        // The valid prefix: runs that decode, ascend, and start below `merged_end`.
        let mut good = 0;
        let mut last: Option<Run> = None;
        let mut buf = vec![0u8; (RUN_LEN * 4096) as usize];
        'read: while good < entries {
            let n = (entries - good).min(4096);
            let bytes = &mut buf[..(n * RUN_LEN) as usize];
            handle.read_exact_at(bytes, good * RUN_LEN)?;
            for e in bytes.chunks_exact(RUN_LEN as usize) {
                let Some(run) = Run::decode(e) else { break 'read };
                let ascends = last.is_none_or(|l| run.view == l.view + l.len && run.merged >= l.merged_end());
                if !ascends || run.merged >= merged_end {
                    break 'read;
                }
                good += 1;
                last = Some(run);
            }
        }
        handle.set_len(good * RUN_LEN)?;
        index.flushed = good;
        if let Some(mut run) = last {
            if run.merged_end() > merged_end {
                run.len = merged_end - run.merged;
                index.flushed -= 1;
                index.tail.push(run);
            }
            index.size = run.view + run.len;
        }
        Ok(index)
    }

    /// Bytes in the view.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn count(&self) -> u64 {
        self.flushed + self.tail.len() as u64
    }

    fn get(&self, i: u64) -> io::Result<Run> {
        if i >= self.flushed {
            return Ok(self.tail[(i - self.flushed) as usize]);
        }
        let mut e = [0u8; RUN_LEN as usize];
        self.file.get()?.read_exact_at(&mut e, i * RUN_LEN)?;
        Run::decode(&e).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a corrupt view index entry"))
    }

    /// Index of the last run for which `before` is true (`before` is true for a prefix
    /// of the runs), or `None`.
    fn last_where(&self, before: impl Fn(&Run) -> bool) -> io::Result<Option<u64>> {
        super::last_index_where(self.count(), |i| self.get(i), before)
    }

    /// Adds the line `[merged, merged + len)` at the end of the view.
    pub fn push(&mut self, merged: u64, len: u64) -> io::Result<()> {
        if self.tail.is_empty() && self.flushed > 0 {
            let last = self.get(self.flushed - 1)?;
            if last.merged_end() == merged && last.len + len <= MAX_RUN {
                self.flushed -= 1;
                self.tail.push(last);
            }
        }
        match self.tail.last_mut() {
            Some(run) if run.merged_end() == merged && run.len + len <= MAX_RUN => run.len += len,
            _ => self.tail.push(Run { view: self.size, merged, len }),
        }
        self.size += len;
        Ok(())
    }

    /// Writes the runs kept in memory.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.tail.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(self.tail.len() * RUN_LEN as usize);
        for run in &self.tail {
            bytes.extend_from_slice(&run.encode());
        }
        self.file.get()?.write_all_at(&bytes, self.flushed * RUN_LEN)?;
        self.flushed += self.tail.len() as u64;
        self.tail.clear();
        Ok(())
    }

    /// Runs not written yet.
    pub fn unflushed(&self) -> usize {
        self.tail.len()
    }

    /// The pieces of `merged.log` that make up view bytes `[offset, offset + max)`.
    pub fn pieces(&self, offset: u64, max: u64) -> io::Result<Vec<Run>> {
        let end = self.size.min(offset.saturating_add(max));
        let mut out = Vec::new();
        let Some(mut i) = self.last_where(|r| r.view <= offset)? else { return Ok(out) };
        let mut at = offset;
        while at < end && i < self.count() {
            let run = self.get(i)?;
            let skip = at - run.view;
            let len = (run.len - skip).min(end - at);
            out.push(Run { view: at, merged: run.merged + skip, len });
            at += len;
            i += 1;
        }
        Ok(out)
    }

    /// The view offset of the first view byte at or after `merged.log` offset
    /// `merged` (the view's size when there is none).
    pub fn view_of_merged(&self, merged: u64) -> io::Result<u64> {
        match self.last_where(|r| r.merged <= merged)? {
            Some(i) => {
                let run = self.get(i)?;
                Ok(if merged < run.merged_end() { run.view + (merged - run.merged) } else { run.view + run.len })
            }
            None => Ok(0),
        }
    }

    /// The `merged.log` offset of view byte `offset` (`None` at or past the end).
    pub fn merged_of_view(&self, offset: u64) -> io::Result<Option<u64>> {
        if offset >= self.size {
            return Ok(None);
        }
        let i = self.last_where(|r| r.view <= offset)?.expect("a run holds every byte of the view");
        let run = self.get(i)?;
        Ok(Some(run.merged + (offset - run.view)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pool::FilePool;

    fn index(dir: &std::path::Path, merged_end: u64) -> RunIndex {
        let pool = FilePool::new(8);
        let path = dir.join("v.runs");
        let exists = path.exists();
        RunIndex::open(PooledFile::creating(&pool, path), merged_end, exists).unwrap()
    }

    #[test]
    fn adjacent_lines_share_a_run_and_offsets_map_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = index(dir.path(), 0);
        runs.push(0, 10).unwrap();
        runs.push(10, 5).unwrap();
        runs.push(30, 7).unwrap();
        runs.flush().unwrap();
        runs.push(37, 3).unwrap();
        runs.push(50, 10).unwrap();
        assert_eq!(runs.size(), 35);
        assert_eq!(runs.count(), 3, "adjacent lines extend a run, also one already written");
        assert_eq!(
            runs.pieces(12, 10).unwrap(),
            [Run { view: 12, merged: 12, len: 3 }, Run { view: 15, merged: 30, len: 7 }]
        );
        assert_eq!(runs.view_of_merged(20).unwrap(), 15);
        assert_eq!(runs.view_of_merged(33).unwrap(), 18);
        assert_eq!(runs.view_of_merged(99).unwrap(), 35);
        assert_eq!(runs.merged_of_view(25).unwrap(), Some(50));
        assert_eq!(runs.merged_of_view(35).unwrap(), None);
        runs.flush().unwrap();
        // Reopened below the last line: cut there, the rest is indexed again.
        drop(runs);
        let runs = index(dir.path(), 52);
        assert_eq!(runs.size(), 27);
        assert_eq!(runs.merged_of_view(26).unwrap(), Some(51));
        let runs = index(dir.path(), 35);
        assert_eq!(runs.size(), 20);
    }
}

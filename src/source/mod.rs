//! One logical log of a sandbox (exec, runtime or kernel): its generation chain
//! `X`, `X.1` … `X.4`, rotation and truncation detection, and the ingest cursor.
//!
//! Knows nothing about merging or FUSE. The chain is shared (read-only) with replays
//! through [`Source::chain`].

pub mod generation;
pub mod reader;
pub mod record;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use generation::{birth_time_ms, open_regular, Chain, FileId, Generation, Pos};
use reader::{LineReader, Next};
pub use record::SourceKind;

/// What a [`Source::refresh`] changed, for logging and for the horizon.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    /// Generations that appeared (sequence numbers).
    pub added: Vec<u32>,
    /// Generations whose files the producer deleted and that ingest has read to their
    /// end, oldest first: still held, to be released once no reader needs them.
    pub deleted: Vec<u32>,
}

/// Files opened the moment they appeared at a live-file path (from the watcher's
/// thread), waiting in creation order for their source to adopt them. A producer that
/// rotates faster than ingest scans cannot destroy a generation msbfs never held.
#[derive(Debug, Default)]
pub struct Arrivals {
    files: Mutex<HashMap<PathBuf, Vec<(File, std::fs::Metadata)>>>,
}

impl Arrivals {
    /// Opens `path` if it names a source's live file (`exec.log`, `runtime.log`,
    /// `kernel.log`) and is a regular file, and keeps it for its source.
    pub fn record(&self, path: &Path) {
        let is_live = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| SourceKind::ALL.iter().any(|k| k.file_name() == n));
        if !is_live {
            return;
        }
        if let Ok(Some(opened)) = open_regular(path) {
            self.files.lock().entry(path.to_path_buf()).or_default().push(opened);
        }
    }

    /// Takes the files that arrived at `path`, oldest first.
    fn take(&self, path: &Path) -> Vec<(File, std::fs::Metadata)> {
        self.files.lock().remove(path).unwrap_or_default()
    }

    /// Puts back files taken from `path` and not used, before any that arrived since.
    fn restore(&self, path: &Path, mut files: Vec<(File, std::fs::Metadata)>) {
        if files.is_empty() {
            return;
        }
        let mut all = self.files.lock();
        let later = all.remove(path).unwrap_or_default();
        files.extend(later);
        all.insert(path.to_path_buf(), files);
    }

    /// Drops whatever arrived under directory `dir` (its sandbox is gone).
    pub fn forget_dir(&self, dir: &Path) {
        self.files.lock().retain(|path, _| !path.starts_with(dir));
    }
}

/// Consistent scans tried before a refresh gives up until the next one.
const SCAN_ATTEMPTS: usize = 64;

/// A file found at one path of the chain during a scan.
struct Found {
    /// 0 for `X`, k for `X.k`.
    index: u32,
    id: FileId,
    file: Option<(File, std::fs::Metadata)>,
}

/// One logical log and the ingest cursor over it.
#[derive(Debug)]
pub struct Source {
    kind: SourceKind,
    dir: PathBuf,
    chain: Arc<Chain>,
    reader: LineReader,
    warned: HashSet<(PathBuf, Option<FileId>)>,
    arrivals: Arc<Arrivals>,
}

impl Source {
    /// A source reading `dir/<kind file>` and its rotated siblings; nothing is opened
    /// until the first [`Source::refresh`].
    pub fn new(kind: SourceKind, dir: &Path) -> Source {
        Source::with_arrivals(kind, dir, Arc::default())
    }

    /// Like [`Source::new`], also adopting files the watcher opened on arrival.
    pub fn with_arrivals(kind: SourceKind, dir: &Path, arrivals: Arc<Arrivals>) -> Source {
        let chain = Arc::new(Chain::default());
        Source {
            kind,
            dir: dir.to_path_buf(),
            reader: LineReader::new(chain.clone(), Pos::default()),
            chain,
            warned: HashSet::new(),
            arrivals,
        }
    }

    /// Seals the live generation (the producer moved on) and appends `file` as the
    /// new live one.
    fn push_generation(&mut self, file: File, meta: &std::fs::Metadata, report: &mut Refresh) {
        if let Some(prev) = self.chain.last().filter(|g| g.sealed_len().is_none()) {
            let len = prev.file().and_then(|f| f.metadata().ok()).map_or(prev.seen_len(), |m| m.len());
            prev.seal(len, self.kind.rotated_siblings() > 0);
        }
        let birth = birth_time_ms(&file, meta);
        let gen = self.chain.push(FileId::of(meta), birth, Arc::new(file));
        tracing::debug!(
            file = self.kind.file_name(),
            seq = gen.seq,
            ino = gen.id.ino,
            len = meta.len(),
            "new generation"
        );
        gen.observe(&gen.file().expect("just opened"), meta.len());
        report.added.push(gen.seq);
    }

    /// Which log this is.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// The generation chain, shared with replays.
    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    /// Position of the first line ingest has not taken yet.
    pub fn pos(&self) -> Pos {
        self.reader.pos()
    }

    /// The next complete line (or gap) after the ingest cursor.
    pub fn next_line(&mut self) -> io::Result<Next<'_>> {
        self.reader.next_line()
    }

    fn path(&self, index: u32) -> PathBuf {
        let name = self.kind.file_name();
        if index == 0 {
            self.dir.join(name)
        } else {
            self.dir.join(format!("{name}.{index}"))
        }
    }

    fn warn_once(&mut self, path: &Path, id: Option<FileId>, what: &str) {
        if self.warned.insert((path.to_path_buf(), id)) {
            tracing::warn!(path = %path.display(), "{what}; skipped");
        }
    }

    /// `lstat` of every chain path, newest first: `(index, id)` of regular files.
    fn stat_paths(&mut self) -> Vec<(u32, FileId)> {
        let mut out = Vec::new();
        for index in 0..=self.kind.rotated_siblings() {
            let path = self.path(index);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_file() => out.push((index, FileId::of(&meta))),
                Ok(meta) => {
                    let id = Some(FileId::of(&meta));
                    self.warn_once(&path, id, "not a regular file (symlink, FIFO or device)");
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), "cannot stat: {e}"),
            }
        }
        out
    }

    /// A consistent picture of the chain paths: the files found, newest first, with
    /// new (not yet held) ones opened. Retried while a rotation moves files under it.
    fn scan(&mut self, held: &HashSet<FileId>) -> Option<Vec<Found>> {
        let mut found = Vec::new();
        for _attempt in 0..SCAN_ATTEMPTS {
            let before = self.stat_paths();
            found.clear();
            let mut consistent = true;
            for &(index, id) in &before {
                if held.contains(&id) {
                    found.push(Found { index, id, file: None });
                    continue;
                }
                let path = self.path(index);
                match open_regular(&path) {
                    Ok(Some((file, meta))) if FileId::of(&meta) == id => {
                        found.push(Found { index, id, file: Some((file, meta)) })
                    }
                    Ok(_) => consistent = false,
                    Err(e) => {
                        self.warn_once(&path, Some(id), &format!("cannot open: {e}"));
                    }
                }
            }
            if consistent && self.stat_paths() == before {
                return Some(found);
            }
        }
        // Acting on an inconsistent picture could order generations wrongly; the
        // next refresh tries again (arrivals keep new files open meanwhile).
        tracing::debug!(file = self.kind.file_name(), "chain kept moving during the scan");
        None
    }

    /// Brings the chain up to date with the files on disk: detects rotation (the live
    /// file renamed into the chain), replacement and truncation, opens new generations
    /// and releases deleted ones ingest no longer needs.
    pub fn refresh(&mut self) -> Refresh {
        let mut report = Refresh::default();
        // Taken before the scan: an arrival the scan does not find was rotated out of
        // the chain before it, so it is older than every file the scan finds.
        let path = self.path(0);
        let arrived = self.arrivals.take(&path);
        let gens = self.chain.all();
        let held: HashSet<FileId> = gens.iter().filter(|g| !g.is_released()).map(|g| g.id).collect();
        let Some(found) = self.scan(&held) else {
            self.arrivals.restore(&path, arrived);
            self.find_deleted(&mut report);
            return report;
        };
        if let Some(live) = gens.last().filter(|g| g.sealed_len().is_none()) {
            self.check_live(live, &found, &mut report);
        }
        let scanned_ids: HashSet<FileId> = found.iter().map(|f| f.id).collect();
        // The unheld files the scan found newer than the newest held one, oldest first.
        let newest_held = found.iter().filter(|f| f.file.is_none()).map(|f| f.index).min();
        let mut scanned: Vec<Found> =
            found.into_iter().filter(|f| f.file.is_some() && newest_held.is_none_or(|h| f.index < h)).collect();
        scanned.sort_by_key(|f| std::cmp::Reverse(f.index));
        let mut scanned = std::collections::VecDeque::from(scanned);
        // Arrivals are in creation order: one the scan also found anchors the scanned
        // files up to it; one it did not find (rotated out already) goes in its place.
        let mut fresh: Vec<(File, std::fs::Metadata)> = Vec::new();
        let mut taken: HashSet<FileId> = HashSet::new();
        for (file, meta) in arrived {
            let id = FileId::of(&meta);
            // The watcher may open the same file several times (create, then renames
            // next to it); and an arrival can wait in the queue longer than its
            // generation lives (read and released already).
            let known = gens.iter().any(|g| g.id == id && (!g.is_released() || g.same_content(&file)));
            if known || !taken.insert(id) {
                continue;
            }
            match scanned.iter().position(|f| f.id == id) {
                Some(at) => fresh.extend(scanned.drain(..=at).filter_map(|f| f.file)),
                None if scanned_ids.contains(&id) => {}
                None => fresh.push((file, meta)),
            }
        }
        fresh.extend(scanned.into_iter().filter_map(|f| f.file));
        // Each push seals the one before it: the producer has moved on from it.
        for (file, meta) in fresh {
            self.push_generation(file, &meta, &mut report);
        }
        self.find_deleted(&mut report);
        report
    }

    /// Checks the live generation against what the paths now show.
    fn check_live(&mut self, live: &Arc<Generation>, found: &[Found], report: &mut Refresh) {
        let Some(file) = live.file() else { return };
        let Ok(meta) = file.metadata() else { return };
        let mut live = live.clone();
        if !live.observe(&file, meta.len()) {
            // Truncated or rewritten in place (copytruncate), whatever its name is now:
            // the old content is gone; the same descriptor reads a new generation.
            // It was born at the truncation; the modification time is the closest
            // record of that (the inode's birth time belongs to the old content).
            tracing::info!(file = self.kind.file_name(), "truncated in place; new generation");
            live.seal(live.seen_len(), false);
            live.release();
            let truncated_ms = meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000;
            live = self.chain.push(live.id, truncated_ms, file.clone());
            live.observe(&file, meta.len());
            report.added.push(live.seq);
        }
        match found.iter().find(|f| f.id == live.id) {
            Some(f) if f.index == 0 => {}
            // Renamed into the chain: rotation. The producer writes no more to it.
            Some(f) => {
                tracing::debug!(
                    file = self.kind.file_name(),
                    seq = live.seq,
                    index = f.index,
                    len = meta.len(),
                    "rotated"
                );
                live.seal(meta.len(), true)
            }
            None if meta.nlink() == 0 || found.iter().any(|f| f.index == 0) => {
                // Deleted, or replaced by a file that is not a rotation of it.
                live.seal(meta.len(), false);
            }
            None => {}
        }
    }

    /// Lists generations that the producer deleted and ingest has read past.
    fn find_deleted(&mut self, report: &mut Refresh) {
        let reading = self.reader.pos().gen;
        for gen in self.chain.all() {
            if gen.seq >= reading || gen.is_released() {
                continue;
            }
            let deleted = gen.file().and_then(|f| f.metadata().ok()).is_none_or(|m| m.nlink() == 0);
            if deleted {
                report.deleted.push(gen.seq);
            }
        }
    }

    /// Closes generation `seq` (its bytes can no longer be rendered).
    pub fn release(&self, seq: u32) {
        if let Some(gen) = self.chain.get(seq) {
            gen.release();
        }
    }
}

#[cfg(test)]
mod tests;

//! One logical log of a sandbox (exec, runtime or kernel): its generation chain
//! `X`, `X.1` … `X.4`, rotation and truncation detection, and the ingest cursor.
//!
//! Knows nothing about merging or FUSE. The chain is shared (read-only) with replays
//! through [`Source::chain`].

pub mod generation;
pub mod reader;
pub mod record;

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use generation::{birth_time_ms, open_regular, Chain, FileId, Generation, Pos};
use reader::{LineReader, Next};
pub use record::SourceKind;

/// What a [`Source::refresh`] changed, for logging and for the horizon.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    /// Generations that appeared (sequence numbers).
    pub added: Vec<u32>,
    /// Generations whose files the producer deleted and that msbfs closed.
    pub released: Vec<u32>,
}

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
}

impl Source {
    /// A source reading `dir/<kind file>` and its rotated siblings; nothing is opened
    /// until the first [`Source::refresh`].
    pub fn new(kind: SourceKind, dir: &Path) -> Source {
        let chain = Arc::new(Chain::default());
        Source {
            kind,
            dir: dir.to_path_buf(),
            reader: LineReader::new(chain.clone(), Pos::default()),
            chain,
            warned: HashSet::new(),
        }
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
    fn scan(&mut self, held: &HashSet<FileId>) -> Vec<Found> {
        let mut found = Vec::new();
        for _attempt in 0..16 {
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
                return found;
            }
        }
        found
    }

    /// Brings the chain up to date with the files on disk: detects rotation (the live
    /// file renamed into the chain), replacement and truncation, opens new generations
    /// and releases deleted ones ingest no longer needs.
    pub fn refresh(&mut self) -> Refresh {
        let mut report = Refresh::default();
        let gens = self.chain.all();
        let held: HashSet<FileId> = gens.iter().filter(|g| !g.is_released()).map(|g| g.id).collect();
        let found = self.scan(&held);
        let live = gens.last().filter(|g| g.sealed_len().is_none()).cloned();
        if let Some(live) = &live {
            self.check_live(live, &found, &mut report);
        }
        // New generations are the unheld files newer than the newest held one.
        let newest_held = found.iter().filter(|f| f.file.is_none()).map(|f| f.index).min();
        let mut fresh: Vec<Found> =
            found.into_iter().filter(|f| f.file.is_some() && newest_held.is_none_or(|h| f.index < h)).collect();
        fresh.sort_by_key(|f| std::cmp::Reverse(f.index));
        let count = fresh.len();
        for (n, f) in fresh.into_iter().enumerate() {
            let (file, meta) = f.file.expect("fresh files are open");
            if let Some(prev) = self.chain.last().filter(|g| g.sealed_len().is_none()) {
                let len = prev.file().and_then(|f| f.metadata().ok()).map_or(prev.seen_len(), |m| m.len());
                prev.seal(len, true);
            }
            let birth = birth_time_ms(&file, &meta);
            let gen = self.chain.push(f.id, birth, Arc::new(file));
            if n + 1 < count {
                // Older than the live file: the producer is done with it.
                gen.seal(meta.len(), true);
            }
            gen.observe(&gen.file().expect("just opened"), meta.len());
            report.added.push(gen.seq);
        }
        self.release_deleted(&mut report);
        report
    }

    /// Checks the live generation against what the paths now show.
    fn check_live(&mut self, live: &Arc<Generation>, found: &[Found], report: &mut Refresh) {
        let Some(file) = live.file() else { return };
        let Ok(meta) = file.metadata() else { return };
        match found.iter().find(|f| f.id == live.id) {
            Some(f) if f.index == 0 && live.observe(&file, meta.len()) => {}
            Some(f) if f.index == 0 => {
                // Truncated or rewritten in place (copytruncate): the old content is
                // gone; the same descriptor now reads a new generation.
                tracing::info!(file = self.kind.file_name(), "truncated in place; new generation");
                live.seal(live.seen_len(), false);
                live.release();
                let birth = birth_time_ms(&file, &meta);
                let gen = self.chain.push(live.id, birth, file.clone());
                gen.observe(&file, meta.len());
                report.added.push(gen.seq);
            }
            // Renamed into the chain: rotation. The producer writes no more to it.
            Some(_) => live.seal(meta.len(), true),
            None if meta.nlink() == 0 || found.iter().any(|f| f.index == 0) => {
                // Deleted, or replaced by a file that is not a rotation of it.
                live.seal(meta.len(), false);
            }
            None => {}
        }
    }

    /// Closes generations that the producer deleted and ingest has read past.
    fn release_deleted(&mut self, report: &mut Refresh) {
        let reading = self.reader.pos().gen;
        for gen in self.chain.all() {
            if gen.seq >= reading || gen.is_released() {
                continue;
            }
            let deleted = gen.file().and_then(|f| f.metadata().ok()).is_none_or(|m| m.nlink() == 0);
            if deleted {
                gen.release();
                report.released.push(gen.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests;

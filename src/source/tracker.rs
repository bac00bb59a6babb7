//! Following one source's chain on disk (`X`, `X.1` … `X.4`): which files are new
//! generations, in creation order, and how many generations were rotated away before
//! msbfs could open them.
//!
//! A snapshot `lstat`s every chain path (twice, until both passes agree, so a rotation
//! in progress is never acted on), opens every file it does not know, and appends the
//! files newer than the newest known one, oldest first. The watcher thread takes a
//! snapshot after every create, rename or delete in the logs directory, so a producer
//! has to rotate a whole chain's length between two snapshots to destroy a generation
//! unseen.
//!
//! Such a loss is counted, never guessed: every creation of the live file is an
//! inotify event ([`ChainTracker::note_create`]), and every generation born after the
//! watch began is seen at most once. `creations − seen` is then a lower bound of the
//! generations lost at any moment (an event may still be queued, a file may be seen
//! before its event), exact once things settle; each increase is announced before the
//! first generation seen after the loss.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dir::{Access, LogsDir};
use super::generation::{birth_time_ms, FileId, FileIdentity, Generation};
use super::SourceKind;

/// Scan attempts before a snapshot gives up until the next one.
const SCAN_ATTEMPTS: usize = 32;

/// Where a known generation was in the last snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// At chain index `k` (0 = the live path).
    At(u32),
    /// Not in the chain any more (rotated out, deleted or replaced).
    Gone,
}

/// The realtime clock at its coarse (filesystem timestamp) granularity, in ns.
pub fn coarse_now_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Waits until the coarse clock has moved on, so that a file created before the call
/// is born strictly before a tracker created after it (for tests of loss counting).
pub fn wait_past_coarse_tick() {
    let now = coarse_now_ns();
    while coarse_now_ns() <= now {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The file name of chain index `index` of `kind` (`exec.log`, `exec.log.1` …).
pub fn chain_name(kind: SourceKind, index: u32) -> String {
    let name = kind.file_name();
    if index == 0 {
        name.to_string()
    } else {
        format!("{name}.{index}")
    }
}

/// One file found by a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    index: u32,
    identity: FileIdentity,
    access: Access,
}

/// The chain of one source as seen on disk, shared by the watcher thread (which takes
/// snapshots) and the source (which adopts the generations it found).
#[derive(Debug)]
pub struct ChainTracker {
    kind: SourceKind,
    dir: PathBuf,
    /// Generations found, oldest first, while their files may still be in the chain.
    known: VecDeque<(Arc<Generation>, Place)>,
    /// Found and not yet adopted by the source.
    arrivals: Vec<Arc<Generation>>,
    creations: u64,
    seen: u64,
    reported: u64,
    /// Lost generations counted with no later generation seen yet to announce them at.
    unattached: u64,
    /// Files born before this (coarse realtime, ns) existed before the watch began.
    watch_since_ns: i64,
    warned: HashSet<(u32, FileId)>,
    /// Owner and mode of every file in the chain at the last consistent snapshot.
    accesses: Vec<Access>,
    /// `accesses` changed since [`ChainTracker::take_accesses_changed`] last said so.
    accesses_changed: bool,
    /// Why the logs directory could not be opened, once warned about.
    dir_warned: Option<io::ErrorKind>,
}

impl ChainTracker {
    /// A tracker of `kind` in `dir`, already knowing `known` (generations restored
    /// after a restart). Call it before the directory's inotify watch is added.
    pub fn new(kind: SourceKind, dir: &Path, known: Vec<Arc<Generation>>) -> ChainTracker {
        ChainTracker {
            kind,
            dir: dir.to_path_buf(),
            known: known.into_iter().map(|g| (g, Place::Gone)).collect(),
            arrivals: Vec::new(),
            creations: 0,
            seen: 0,
            reported: 0,
            unattached: 0,
            watch_since_ns: coarse_now_ns(),
            warned: HashSet::new(),
            accesses: Vec::new(),
            accesses_changed: true,
            dir_warned: None,
        }
    }

    /// Owner and mode of every file of the chain at the last snapshot that msbfs could
    /// open (the files `merged.log` renders from, for its permissions).
    pub fn accesses(&self) -> &[Access] {
        &self.accesses
    }

    /// True once after the accesses changed (or the directory could not be opened).
    pub fn take_accesses_changed(&mut self) -> bool {
        std::mem::take(&mut self.accesses_changed)
    }

    /// The file name of chain index `index`.
    pub fn name(&self, index: u32) -> String {
        chain_name(self.kind, index)
    }

    /// The path of chain index `index`.
    pub fn path(&self, index: u32) -> PathBuf {
        self.dir.join(self.name(index))
    }

    /// Opens the logs directory (no symlink on the way), warning once per cause.
    fn open_dir(&mut self) -> Option<LogsDir> {
        match LogsDir::open(&self.dir) {
            Ok(dir) => {
                self.dir_warned = None;
                Some(dir)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound && self.dir_warned.replace(e.kind()) != Some(e.kind()) {
                    tracing::warn!(dir = ?self.dir, "cannot open the logs directory: {e}; skipped");
                }
                None
            }
        }
    }

    /// The live file was created (or a file moved onto its name): one generation more
    /// exists than before.
    pub fn note_create(&mut self) {
        self.creations += 1;
    }

    /// Events were lost (inotify queue overflow): creations can no longer be counted,
    /// so the count restarts from what was seen (nothing is announced for the gap).
    pub fn resync(&mut self) {
        self.snapshot();
        self.creations = self.seen + self.reported;
    }

    /// Generations known lost so far (a lower bound).
    pub fn lost(&self) -> u64 {
        self.reported
    }

    /// Every generation found whose file may still be in the chain, oldest first.
    pub fn known(&self) -> Vec<Arc<Generation>> {
        self.known.iter().map(|(g, _)| g.clone()).collect()
    }

    /// Where generation `gen` was in the last snapshot.
    pub fn place_of(&self, gen: &Arc<Generation>) -> Option<Place> {
        self.known.iter().find(|(g, _)| Arc::ptr_eq(g, gen)).map(|(_, p)| *p)
    }

    /// Makes `gen` the known generation of its file (after a truncation in place, the
    /// file's new content), so no snapshot reports it again.
    pub fn adopt(&mut self, gen: Arc<Generation>) {
        let place = match self.known.iter().position(|(g, _)| g.identity.same_as(&gen.identity)) {
            Some(i) => self.known.remove(i).map_or(Place::Gone, |(_, p)| p),
            None => Place::At(0),
        };
        self.known.push_back((gen, place));
    }

    /// Reopens `gen`, a generation whose descriptor was closed while idle, if its file
    /// may hold something new: it grew, or it is no longer at the live path. Returns
    /// false when its file is known gone (not in the chain at the last snapshot).
    pub fn wake_closed(&self, gen: &Arc<Generation>) -> bool {
        let index = match self.place_of(gen) {
            Some(Place::At(index)) => index,
            Some(Place::Gone) => return false,
            None => 0,
        };
        let Ok(dir) = LogsDir::open(&self.dir) else { return true };
        let name = self.name(index);
        let Some(entry) = dir.entry(&name) else { return true };
        if index == 0 && entry.identity.same_as(&gen.identity) && entry.size == gen.seen_len() {
            return true;
        }
        if let Ok(Some(file)) = dir.open_file(&name) {
            if gen.is_file(&file) {
                gen.reopen(Arc::new(file));
            }
        }
        true
    }

    /// Takes the generations found since the last call, oldest first.
    pub fn take_arrivals(&mut self) -> Vec<Arc<Generation>> {
        std::mem::take(&mut self.arrivals)
    }

    /// `lstat` of every chain path, oldest first.
    fn stat_chain(&mut self, dir: &LogsDir) -> Vec<Found> {
        let mut out = Vec::new();
        for index in (0..=self.kind.rotated_siblings()).rev() {
            let Some(entry) = dir.entry(&self.name(index)) else { continue };
            if entry.regular {
                out.push(Found { index, identity: entry.identity, access: entry.access });
            } else if self.warned.insert((index, entry.identity.id)) {
                tracing::warn!(path = ?self.path(index), "not a regular file (symlink, FIFO or device); skipped");
            }
        }
        out
    }

    /// The known generation `found` is, if any (opening the file where only its
    /// content can tell a reused inode number apart). A known generation whose
    /// descriptor was closed while idle takes the file it is found in again.
    fn known_index(&self, dir: &LogsDir, found: &Found) -> Option<usize> {
        // Newest first: a file truncated in place is two generations of one inode.
        let mut opened = None;
        for (i, (gen, _)) in self.known.iter().enumerate().rev() {
            if !gen.identity.same_as(&found.identity) {
                continue;
            }
            if gen.file().is_some() {
                // Held open, so its inode number cannot have been reused.
                return Some(i);
            }
            let file = opened.get_or_insert_with(|| dir.open_file(&self.name(found.index)).map(|f| f.map(Arc::new)));
            match file {
                Ok(Some(file)) if gen.is_file(file) => {
                    gen.reopen(file.clone());
                    return Some(i);
                }
                // It cannot be opened now (out of descriptors): a generation closed
                // while idle is trusted to be the file its identity says.
                Err(_) if !gen.is_released() => return Some(i),
                _ => {}
            }
        }
        None
    }

    /// Takes a consistent snapshot of the chain and records new generations. Returns
    /// false when the chain kept moving (the next snapshot tries again).
    pub fn snapshot(&mut self) -> bool {
        let Some(dir) = self.open_dir() else {
            self.accesses.clear();
            self.accesses_changed = true;
            return false;
        };
        for _ in 0..SCAN_ATTEMPTS {
            let before = self.stat_chain(&dir);
            match self.classify(&dir, &before) {
                Some(opened) if self.stat_chain(&dir) == before => {
                    // A file msbfs cannot open renders nothing, so it restricts nothing.
                    let readable = before.iter().zip(&opened).filter(|(_, o)| !matches!(o, Ok(usize::MAX)));
                    let accesses: Vec<Access> = readable.map(|(f, _)| f.access).collect();
                    if accesses != self.accesses {
                        self.accesses = accesses;
                        self.accesses_changed = true;
                    }
                    self.record(&before, opened);
                    return true;
                }
                _ => continue,
            }
        }
        tracing::debug!(file = self.kind.file_name(), "the chain kept moving during a snapshot");
        false
    }

    /// For each file of a scan, the known generation it is, or its newly opened file;
    /// `None` when a file changed under the scan.
    fn classify(&mut self, dir: &LogsDir, scan: &[Found]) -> Option<Vec<Result<usize, (std::fs::File, FileIdentity)>>> {
        let mut out = Vec::with_capacity(scan.len());
        for found in scan {
            if let Some(i) = self.known_index(dir, found) {
                out.push(Ok(i));
                continue;
            }
            match dir.open_file(&self.name(found.index)) {
                Ok(Some(file)) => {
                    let identity = FileIdentity::of_file(&file).ok()?;
                    if identity.id != found.identity.id {
                        return None;
                    }
                    out.push(Err((file, identity)));
                }
                Ok(None) => return None,
                Err(e) => {
                    if self.warned.insert((found.index, found.identity.id)) {
                        tracing::warn!(path = ?self.path(found.index), "cannot open: {e}; skipped");
                    }
                    out.push(Ok(usize::MAX));
                }
            }
        }
        Some(out)
    }

    fn record(&mut self, scan: &[Found], classified: Vec<Result<usize, (std::fs::File, FileIdentity)>>) {
        for (_, place) in self.known.iter_mut() {
            *place = Place::Gone;
        }
        let newest_known =
            classified.iter().filter_map(|c| c.as_ref().ok()).filter(|&&i| i != usize::MAX).max().copied();
        let mut newest_found_at = None;
        for (found, c) in scan.iter().zip(&classified) {
            if let Ok(i) = c {
                if let Some((_, place)) = self.known.get_mut(*i) {
                    *place = Place::At(found.index);
                    if Some(*i) == newest_known {
                        newest_found_at = Some(found.index);
                    }
                }
            }
        }
        let mut fresh = Vec::new();
        for (found, c) in scan.iter().zip(classified) {
            let Err((file, identity)) = c else { continue };
            if newest_found_at.is_some_and(|at| found.index >= at) {
                // Older than a generation already known: not part of the sequence.
                if self.warned.insert((found.index, identity.id)) {
                    tracing::warn!(path = ?self.path(found.index), "a file older than a known generation appeared; skipped");
                }
                continue;
            }
            let birth = birth_time_ms(&file, &identity);
            let gen = Arc::new(Generation::new(identity, birth, Some(Arc::new(file))));
            if identity.btime_ns.is_none_or(|b| b >= self.watch_since_ns) {
                self.seen += 1;
            }
            fresh.push((gen, found.index));
        }
        let lost = self.creations.saturating_sub(self.seen);
        if lost > self.reported {
            self.unattached += lost - self.reported;
            self.reported = lost;
        }
        if self.unattached > 0 {
            tracing::warn!(
                file = self.kind.file_name(),
                lost = self.unattached,
                "generations were rotated away before msbfs could open them"
            );
            // Announced before the first generation seen after them, or else right
            // after the newest one seen before them.
            match (fresh.first(), self.known.back()) {
                (Some((first, _)), _) => first.add_lost_before(std::mem::take(&mut self.unattached)),
                (None, Some((newest, _))) => newest.add_lost_after(std::mem::take(&mut self.unattached)),
                (None, None) => {}
            }
        }
        for (gen, index) in fresh {
            self.known.push_back((gen.clone(), Place::At(index)));
            self.arrivals.push(gen);
        }
        // Files gone from the chain never come back: forget them once released.
        while self.known.len() > 1 && self.known.front().is_some_and(|(g, p)| *p == Place::Gone && g.is_released()) {
            self.known.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(bytes).unwrap();
    }

    fn rotate(dir: &Path) {
        for i in (1..4).rev() {
            let _ = std::fs::rename(dir.join(format!("exec.log.{i}")), dir.join(format!("exec.log.{}", i + 1)));
        }
        let _ = std::fs::rename(dir.join("exec.log"), dir.join("exec.log.1"));
    }

    /// A producer step: rotate, create the live file (counted as inotify would) and
    /// write one line into it.
    fn produce(dir: &Path, t: &mut ChainTracker, n: usize) {
        rotate(dir);
        append(&dir.join("exec.log"), format!("generation {n}\n").as_bytes());
        t.note_create();
    }

    fn texts(gens: &[Arc<Generation>]) -> Vec<String> {
        gens.iter().map(|g| String::from_utf8_lossy(&g.record().fingerprint).into_owned()).collect()
    }

    #[test]
    fn the_first_snapshot_finds_the_chain_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        for i in [3, 2, 1] {
            append(&dir.path().join(format!("exec.log.{i}")), format!("old {i}\n").as_bytes());
        }
        append(&dir.path().join("exec.log"), b"live\n");
        let mut t = ChainTracker::new(SourceKind::Exec, dir.path(), Vec::new());
        assert!(t.snapshot());
        let got = t.take_arrivals();
        assert_eq!(texts(&got), ["old 3\n", "old 2\n", "old 1\n", "live\n"]);
        assert_eq!(t.place_of(&got[0]), Some(Place::At(3)));
        assert_eq!(t.place_of(&got[3]), Some(Place::At(0)));
        assert!(t.snapshot());
        assert!(t.take_arrivals().is_empty(), "nothing new the second time");
        assert_eq!(t.lost(), 0, "pre-existing files are not counted as created");
    }

    #[test]
    fn rotations_between_snapshots_are_found_in_order_and_nothing_is_counted_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = ChainTracker::new(SourceKind::Exec, dir.path(), Vec::new());
        produce(dir.path(), &mut t, 0);
        t.snapshot();
        let mut all = t.take_arrivals();
        for n in 1..=4 {
            produce(dir.path(), &mut t, n);
        }
        t.snapshot();
        all.extend(t.take_arrivals());
        assert_eq!(texts(&all), (0..5).map(|n| format!("generation {n}\n")).collect::<Vec<_>>());
        assert_eq!(t.lost(), 0);
        assert!(all.iter().all(|g| g.take_lost_before() == 0));
    }

    #[test]
    fn generations_rotated_away_unseen_are_counted_and_announced_before_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = ChainTracker::new(SourceKind::Exec, dir.path(), Vec::new());
        produce(dir.path(), &mut t, 0);
        t.snapshot();
        let first = t.take_arrivals();
        // Released, as ingest does once it has read a generation.
        first[0].release();
        // Seven rotations: the first two new generations are destroyed unseen.
        for n in 1..=7 {
            produce(dir.path(), &mut t, n);
        }
        t.snapshot();
        let next = t.take_arrivals();
        assert_eq!(next.len(), 5);
        assert_eq!(t.lost(), 2);
        assert_eq!(next[0].take_lost_before(), 2, "announced before the oldest generation seen after the loss");
        assert!(next[1..].iter().all(|g| g.take_lost_before() == 0));
    }

    #[test]
    fn a_reused_inode_number_is_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("exec.log");
        append(&live, b"first\n");
        let mut t = ChainTracker::new(SourceKind::Exec, dir.path(), Vec::new());
        t.snapshot();
        let first = t.take_arrivals().remove(0);
        first.release();
        let old = first.identity.id;
        let mut reused = false;
        for _ in 0..50 {
            std::fs::remove_file(&live).unwrap();
            append(&live, b"first\n");
            t.note_create();
            if LogsDir::open(dir.path()).unwrap().entry("exec.log").map(|e| e.identity.id) == Some(old) {
                reused = true;
                break;
            }
        }
        t.snapshot();
        let got = t.take_arrivals();
        assert_eq!(
            got.len(),
            1,
            "the new file, same name, same first bytes{}",
            if reused { ", reused inode" } else { "" }
        );
    }

    #[test]
    fn symlinks_and_fifos_named_like_the_chain_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("secret");
        std::fs::write(&outside, b"secret\n").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("exec.log.1")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("exec.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut t = ChainTracker::new(SourceKind::Exec, dir.path(), Vec::new());
        assert!(t.snapshot());
        assert!(t.take_arrivals().is_empty());
    }
}

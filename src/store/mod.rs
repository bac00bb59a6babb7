//! The durable store of rendered bytes (DESIGN §3): for each sandbox epoch, byte N of
//! the store is byte N of `merged.log`, kept on disk with what ingest needs to continue
//! after a restart or a crash. Reads are `pread`s; nothing is rendered on the read path.
//!
//! The store owns retention: a total budget across sandboxes (like journald's
//! `SystemMaxUse`), enforced by dropping the oldest closed segments first; a dropped
//! range reads as notice text of its exact length ([`notice`]), so offsets never move.
//! It decides nothing about content: the timeline's record of each batch is an opaque
//! payload here.
//!
//! Layout of a state directory (one per microsandbox home, under the state root):
//! `lock` (held by the running daemon), `home` (the home it belongs to), `inodes` (the
//! next free inode block), `epochs/<epoch id>/` ([`epoch`]).

pub mod epoch;
pub mod frame;
pub mod notice;
pub mod pool;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::time::now_ms;
use parking_lot::Mutex;

pub use epoch::{Commit, Cut, EpochStore, Header, Recovered, Segment, StoredCommit, Unreadable};

/// Inode numbers of one epoch: `ino_base .. ino_base + INODE_BLOCK`.
pub const INODE_BLOCK: u64 = 1 << 24;
/// Inode blocks the persistent counter reserves at a time.
const INODE_BLOCKS_RESERVED: u64 = 256;
/// Dirty epochs from which one `syncfs` replaces their `fdatasync`s.
const SYNCFS_FROM: usize = 8;
/// Largest default budget.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// Most retired epochs kept (the oldest beyond are deleted whole).
pub const MAX_RETIRED: usize = 1024;
/// The file in an epoch's directory that marks it retired (its sandbox went away).
const RETIRED_FILE: &str = "retired";

/// Why the store cannot be used: a one-line message (exit code 2 at start).
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The default state root: `$MSBFS_STATE_DIR`, else `$XDG_STATE_HOME/msbfs`, else
/// `~/.local/state/msbfs`.
pub fn default_state_root() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("MSBFS_STATE_DIR") {
        return dir;
    }
    if let Some(dir) = var("XDG_STATE_HOME") {
        return dir.join("msbfs");
    }
    var("HOME").unwrap_or_else(|| PathBuf::from("/root")).join(".local/state/msbfs")
}

/// Parses a size such as `512M`, `4G`, `1048576` or `64KiB`.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let num: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    num.checked_mul(1 << shift)
}

/// 64-bit FNV-1a, a stable name for a home's state directory.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The state directory of `home` under `root`: one per microsandbox home, so two
/// mounts of different homes never mix.
pub fn home_state_dir(root: &Path, home: &Path) -> PathBuf {
    let canonical = home.canonicalize().unwrap_or_else(|_| home.to_path_buf());
    let tail: String = canonical
        .file_name()
        .map(|n| n.to_string_lossy().chars().filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c)).collect())
        .unwrap_or_default();
    let key = fnv1a(canonical.as_os_str().as_encoded_bytes());
    root.join(format!("{}-{key:016x}", if tail.is_empty() { "home" } else { &tail }))
}

/// A saved epoch found at start.
#[derive(Clone, Debug)]
pub struct SavedEpoch {
    /// Its header.
    pub header: Header,
    /// Its directory.
    pub dir: PathBuf,
    /// When its sandbox went away, for a retired epoch (never resumed; kept for
    /// `all.log` until the budget drops it).
    pub retired_ms: Option<i64>,
}

/// The state directory of one mounted home: the epochs, the lock, the budget.
pub struct Store {
    me: Weak<Store>,
    dir: PathBuf,
    lock: File,
    budget: u64,
    usage: Arc<AtomicU64>,
    epochs: Mutex<Vec<Arc<EpochStore>>>,
    /// Inode blocks reserved on disk and not handed out yet: `(next, end)`.
    inodes: Mutex<(u64, u64)>,
    files: Arc<pool::FilePool>,
    warned_over: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).field("budget", &self.budget).finish()
    }
}

fn statvfs_total(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stat.blocks() as u64 * stat.fragment_size() as u64)
}

impl Store {
    /// Opens (creating it if needed) the state directory of `home` under `root` and
    /// takes its lock. `max_bytes` is the budget; `None` means 10 % of the state
    /// filesystem, at most [`DEFAULT_MAX_BYTES`].
    pub fn open(root: &Path, home: &Path, max_bytes: Option<u64>) -> Result<Arc<Store>, StoreError> {
        let dir = home_state_dir(root, home);
        let fail = |what: &str, e: io::Error| StoreError(format!("state directory {}: {what}: {e}", dir.display()));
        std::fs::create_dir_all(dir.join("epochs")).map_err(|e| fail("cannot create it", e))?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_CLOEXEC)
            .open(dir.join("lock"))
            .map_err(|e| fail("cannot write to it", e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = std::fs::read_to_string(dir.join("lock")).unwrap_or_default();
            let holder = holder.trim();
            return Err(StoreError(format!(
                "state directory {} is in use by another msbfs{} (one daemon per home and state directory)",
                dir.display(),
                if holder.is_empty() { String::new() } else { format!(" (pid {holder})") }
            )));
        }
        lock.set_len(0).map_err(|e| fail("cannot write to it", e))?;
        lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
            .map_err(|e| fail("cannot write to it", e))?;
        let canonical = home.canonicalize().unwrap_or_else(|_| home.to_path_buf());
        let home_file = dir.join("home");
        match std::fs::read(&home_file) {
            Ok(saved) if saved != canonical.as_os_str().as_encoded_bytes() => {
                return Err(StoreError(format!(
                    "state directory {} belongs to another home ({})",
                    dir.display(),
                    String::from_utf8_lossy(&saved)
                )))
            }
            Ok(_) => {}
            Err(_) => std::fs::write(&home_file, canonical.as_os_str().as_encoded_bytes())
                .map_err(|e| fail("cannot write to it", e))?,
        }
        let budget = max_bytes
            .unwrap_or_else(|| statvfs_total(&dir).map_or(DEFAULT_MAX_BYTES, |t| t / 10).min(DEFAULT_MAX_BYTES));
        Ok(Arc::new_cyclic(|me| Store {
            me: me.clone(),
            dir,
            lock,
            budget,
            usage: Arc::new(AtomicU64::new(0)),
            epochs: Mutex::new(Vec::new()),
            inodes: Mutex::new((0, 0)),
            files: pool::FilePool::new(crate::limits::descriptor_budget().store),
            warned_over: AtomicBool::new(false),
        }))
    }

    /// The state directory of this home.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes the open epochs occupy.
    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    /// Every saved epoch whose header can be read; unreadable ones are removed (with
    /// the reason logged).
    pub fn saved_epochs(&self) -> Vec<SavedEpoch> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("epochs")) else { return out };
        for entry in entries.flatten() {
            let dir = entry.path();
            match read_saved_header(&dir) {
                Ok(header) => {
                    let retired_ms =
                        std::fs::read_to_string(dir.join(RETIRED_FILE)).ok().map(|t| t.trim().parse().unwrap_or(0));
                    out.push(SavedEpoch { header, dir, retired_ms })
                }
                Err(reason) => {
                    tracing::warn!(dir = %dir.display(), "saved state unreadable ({reason}); removed");
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        // Inode blocks are handed out in creation order.
        out.sort_by_key(|s| s.header.ino_base);
        out
    }

    /// Hands out the next inode block. The persistent counter is advanced
    /// [`INODE_BLOCKS_RESERVED`] blocks at a time (one `fsync` per that many epochs);
    /// blocks reserved and not used before a crash are skipped, never reused.
    fn allocate_inode_block(&self) -> io::Result<u64> {
        let mut reserved = self.inodes.lock();
        if reserved.0 == reserved.1 {
            let path = self.dir.join("inodes");
            let next = std::fs::read(&path)
                .ok()
                .filter(|b| b.len() == 12 && crc32fast::hash(&b[..8]).to_le_bytes() == b[8..12])
                .map(|b| u64::from_le_bytes(b[..8].try_into().expect("8 bytes")));
            // Without a readable counter, start past every saved epoch's block.
            let next = next.unwrap_or_else(|| {
                self.saved_epochs().iter().map(|s| s.header.ino_base / INODE_BLOCK + 1).max().unwrap_or(1)
            });
            let end = next + INODE_BLOCKS_RESERVED;
            let mut bytes = end.to_le_bytes().to_vec();
            bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
            let tmp = self.dir.join("inodes.tmp");
            std::fs::write(&tmp, &bytes)?;
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()?;
            *reserved = (next, end);
        }
        let block = reserved.0;
        reserved.0 += 1;
        Ok(block * INODE_BLOCK)
    }

    /// Starts a new epoch for sandbox `name` whose directory has identity `owner`.
    pub fn create_epoch(&self, name: &str, owner: &[u8]) -> io::Result<Arc<EpochStore>> {
        let ino_base = self.allocate_inode_block()?;
        let epoch = new_epoch_id();
        let header = Header { epoch, ino_base, created_ms: now_ms(), name: name.to_string(), owner: owner.to_vec() };
        let dir = self.dir.join("epochs").join(format!("{epoch:016x}"));
        let store = Arc::new(EpochStore::create(&dir, header, self.usage.clone(), &self.files)?);
        self.register(&store);
        Ok(store)
    }

    /// Opens a saved epoch for resuming it; on failure its state is removed and the
    /// reason returned (the caller starts a new epoch).
    pub fn open_epoch(&self, saved: &SavedEpoch) -> Result<(Arc<EpochStore>, Recovered), Unreadable> {
        match EpochStore::open(&saved.dir, self.usage.clone(), &self.files) {
            Ok((store, recovered)) => {
                let store = Arc::new(store);
                self.register(&store);
                Ok((store, recovered))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&saved.dir);
                Err(e)
            }
        }
    }

    fn register(&self, epoch: &Arc<EpochStore>) {
        let me = self.me.clone();
        epoch.set_reclaim(Arc::new(move || me.upgrade().is_some_and(|store| store.drop_oldest_segment())));
        self.epochs.lock().push(epoch.clone());
    }

    /// Drops the oldest droppable segment of the whole store; false when none is left.
    fn drop_oldest_segment(&self) -> bool {
        self.drop_one(self.oldest_droppable())
    }

    /// Deletes an epoch's state (its sandbox is gone, or a new epoch replaces it).
    /// Readers with the file open keep reading through the open descriptors.
    pub fn remove_epoch(&self, epoch: &Arc<EpochStore>) {
        self.epochs.lock().retain(|e| !Arc::ptr_eq(e, epoch));
        epoch.set_removed();
        epoch.forget_footprint();
        if let Err(e) = std::fs::remove_dir_all(epoch.dir()) {
            tracing::warn!(dir = %epoch.dir().display(), "cannot remove the state of an ended epoch: {e}");
        }
    }

    /// Deletes a saved epoch that will not be resumed.
    pub fn remove_saved(&self, saved: &SavedEpoch) {
        let _ = std::fs::remove_dir_all(&saved.dir);
    }

    /// Retires an epoch whose sandbox went away: it is never resumed, and is kept (for
    /// `all.log`) until the budget drops it, oldest first, or more than
    /// [`MAX_RETIRED`] epochs are retired.
    pub fn retire_epoch(&self, epoch: &Arc<EpochStore>) {
        let now = now_ms();
        if let Err(e) = std::fs::write(epoch.dir().join(RETIRED_FILE), now.to_string()) {
            tracing::warn!(dir = %epoch.dir().display(), "cannot mark an ended epoch retired ({e}); removed");
            return self.remove_epoch(epoch);
        }
        epoch.set_retired(now);
        let mut retired: Vec<Arc<EpochStore>> =
            self.epochs.lock().iter().filter(|e| e.retired_ms().is_some()).cloned().collect();
        if retired.len() > MAX_RETIRED {
            retired.sort_by_key(|e| e.retired_ms());
            for old in &retired[..retired.len() - MAX_RETIRED] {
                self.remove_epoch(old);
            }
        }
    }

    /// Opens the retired epochs found at start (for reading); unreadable ones are removed.
    pub fn open_retired(&self, saved: &[SavedEpoch]) -> Vec<Arc<EpochStore>> {
        let mut out = Vec::new();
        for s in saved.iter().filter(|s| s.retired_ms.is_some()) {
            match self.open_epoch(s) {
                Ok((epoch, _)) => {
                    epoch.set_retired(s.retired_ms.unwrap_or(0));
                    out.push(epoch);
                }
                Err(e) => tracing::warn!(dir = %s.dir.display(), "a retired epoch is unreadable ({}); removed", e.0),
            }
        }
        out
    }

    /// The oldest thing the budget can drop: a segment of an epoch, or a retired
    /// epoch that has only its open segment left (dropped whole).
    fn oldest_droppable(&self) -> Option<(i64, Arc<EpochStore>)> {
        let epochs = self.epochs.lock();
        epochs
            .iter()
            .filter_map(|e| e.oldest_droppable_ms().or_else(|| e.retired_ms()).map(|ms| (ms, e.clone())))
            .min_by_key(|(ms, _)| *ms)
    }

    /// Drops what [`Store::oldest_droppable`] found; false when nothing could be.
    fn drop_one(&self, found: Option<(i64, Arc<EpochStore>)>) -> bool {
        let Some((_, epoch)) = found else { return false };
        if epoch.drop_oldest().is_some() {
            return true;
        }
        if epoch.retired_ms().is_some() {
            self.remove_epoch(&epoch);
            return true;
        }
        false
    }

    /// Drops the oldest closed segments across every epoch until the store is within
    /// its budget (or nothing more can be dropped, which is warned about once).
    pub fn enforce_budget(&self) {
        while self.usage() > self.budget {
            match self.drop_one(self.oldest_droppable()) {
                true => self.warned_over.store(false, Ordering::Relaxed),
                false => {
                    if !self.warned_over.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            usage = self.usage(),
                            budget = self.budget,
                            "the store is over its budget and only the segments being written are left"
                        );
                    }
                    return;
                }
            }
        }
    }

    /// Makes every epoch durable (called once a second and at shutdown).
    pub fn sync_all(&self) {
        let epochs: Vec<Arc<EpochStore>> = self.epochs.lock().clone();
        let dirty: Vec<Arc<EpochStore>> = epochs.into_iter().filter(|e| e.begin_sync()).collect();
        if dirty.len() >= SYNCFS_FROM {
            // One sync of the state filesystem instead of several per epoch.
            // SAFETY: syncfs on the lock file's descriptor, which we own.
            let ok = unsafe { libc::syncfs(self.lock.as_raw_fd()) } == 0;
            if !ok {
                tracing::warn!("cannot sync the store: {}", io::Error::last_os_error());
            }
            dirty.iter().for_each(|e| e.end_sync(ok));
            return;
        }
        for epoch in dirty {
            if let Err(e) = epoch.finish_sync() {
                tracing::warn!(sandbox = ?epoch.header().name, "cannot sync the store: {e}");
            }
        }
    }
}

fn read_saved_header(dir: &Path) -> Result<Header, String> {
    let journal = File::open(dir.join("journal")).map_err(|e| format!("journal: {e}"))?;
    let mut frames = frame::FrameReader::new(&journal, 0);
    match frames.next_frame() {
        Ok(Some((_, payload))) => epoch::decode_header_payload(payload),
        Ok(None) => Err("the journal header is torn or corrupt".into()),
        Err(e) => Err(format!("journal: {e}")),
    }
}

/// A fresh random epoch id.
fn new_epoch_id() -> u64 {
    let mut id = [0u8; 8];
    if File::open("/dev/urandom").and_then(|f| f.read_exact_at(&mut id, 0)).is_err() {
        id = (now_ms() as u64 ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(id)
}

/// A thread that syncs the store once a second until stopped (and once more then).
pub struct Syncer {
    stop: Arc<(Mutex<bool>, parking_lot::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    /// Starts syncing `store` every `every`.
    pub fn start(store: Arc<Store>, every: std::time::Duration) -> io::Result<Syncer> {
        let stop = Arc::new((Mutex::new(false), parking_lot::Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("msbfs-sync".into()).spawn(move || {
            let (lock, cv) = &*flag;
            let mut stopped = lock.lock();
            while !*stopped {
                cv.wait_for(&mut stopped, every);
                drop(stopped);
                store.sync_all();
                stopped = lock.lock();
            }
        })?;
        Ok(Syncer { stop, thread: Some(thread) })
    }

    /// Stops the thread after a last sync.
    pub fn stop(mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("12 mb"), Some(12 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5Q"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn homes_get_separate_directories_and_a_second_daemon_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        assert_ne!(home_state_dir(root.path(), &a), home_state_dir(root.path(), &b));
        let first = Store::open(&root.path().join("state"), &a, None).unwrap();
        let other_home = Store::open(&root.path().join("state"), &b, None).unwrap();
        let err = Store::open(&root.path().join("state"), &a, None).unwrap_err();
        assert!(err.0.contains("in use by another msbfs"), "{err}");
        assert!(err.0.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        Store::open(&root.path().join("state"), &a, None).unwrap();
        assert!(other_home.budget() > 0 && other_home.budget() <= DEFAULT_MAX_BYTES);
    }

    /// Appends `n` segments of 64 KiB (a boundary checkpoint at each start) to `epoch`.
    fn fill(epoch: &EpochStore, n: u64) {
        let bytes = vec![b'x'; 64 << 10];
        for _ in 0..n {
            let cut = Cut { out: epoch.size(), payload_at: 0, boundary: true };
            epoch
                .append(&Commit { bytes: &bytes, payload: b"p", extra: &[], cuts: &[cut], ts_range: Some((1, 2)) })
                .unwrap();
        }
    }

    #[test]
    fn the_budget_drops_the_oldest_segments_of_the_whole_store_first() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path(), root.path(), Some(1 << 20)).unwrap();
        let old = store.create_epoch("old", b"1").unwrap();
        fill(&old, 8);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let new = store.create_epoch("new", b"2").unwrap();
        fill(&new, 8);
        assert!(store.usage() > store.budget());
        store.enforce_budget();
        assert!(store.usage() <= store.budget(), "{} > {}", store.usage(), store.budget());
        // The older sandbox's segments go first, oldest first; the newer one keeps all.
        assert!(old.dropped() > 0);
        assert_eq!(old.dropped(), old.retained_segments().first().map_or(old.size(), |s| s.start));
        assert_eq!(new.dropped(), 0, "nothing of the newer sandbox is dropped while older bytes exist");
        // Removing an epoch gives its footprint back.
        let before = store.usage();
        store.remove_epoch(&new);
        assert!(store.usage() < before);
        assert!(!new.dir().exists());
    }

    #[test]
    fn a_retired_epoch_is_kept_until_the_budget_drops_it_whole_and_is_never_resumed() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path(), root.path(), Some(1 << 20)).unwrap();
        let gone = store.create_epoch("gone", b"1").unwrap();
        fill(&gone, 2);
        store.retire_epoch(&gone);
        assert!(gone.retired_ms().is_some());
        let saved = store.saved_epochs();
        assert_eq!(saved.iter().filter(|s| s.retired_ms.is_some()).count(), 1, "marked on disk");
        // Within the budget it stays; past it, its segments go first, then it whole.
        store.enforce_budget();
        assert!(gone.dir().exists());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let live = store.create_epoch("live", b"2").unwrap();
        while !gone.is_removed() {
            fill(&live, 1);
            store.enforce_budget();
            assert!(store.usage() <= store.budget());
        }
        assert!(!gone.dir().exists(), "the retired epoch went first, whole");
        assert_eq!(live.dropped(), 0, "before anything of the live one");
    }

    #[test]
    fn inode_blocks_are_never_reused() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path(), root.path(), Some(1 << 30)).unwrap();
        let a = store.create_epoch("a", b"1").unwrap();
        let b = store.create_epoch("b", b"2").unwrap();
        assert_ne!(a.header().ino_base, b.header().ino_base);
        assert!(a.header().ino_base >= INODE_BLOCK);
        store.remove_epoch(&b);
        let c = store.create_epoch("b", b"3").unwrap();
        assert!(c.header().ino_base > b.header().ino_base);
        let names: Vec<String> = store.saved_epochs().into_iter().map(|s| s.header.name).collect();
        assert_eq!(names, ["a", "b"]);
    }
}

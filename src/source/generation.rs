//! One file of a source's generation chain, and the chain itself.
//!
//! A generation is identified by its place in the chain (`seq`) and, on disk, by a
//! [`FileIdentity`]: `(dev, ino)` plus what tells a reused inode number apart (ext4
//! hands a deleted file's inode number to the next `exec.log`, often within the same
//! rotation): the inode generation and the birth time, where the filesystem has them,
//! and a fingerprint of the first bytes. msbfs holds a generation's descriptor only
//! while ingest still has bytes of it to read; the store keeps what it rendered.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// How many leading bytes identify a generation's content.
pub const FINGERPRINT_LEN: usize = 64;

/// `sealed_len` value of a generation the producer may still append to.
const LIVE: u64 = u64::MAX;

/// `(st_dev, st_ino)` of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The id of a metadata record.
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId { dev: meta.dev(), ino: meta.ino() }
    }
}

/// Who a file is, as far as the filesystem can tell: `(dev, ino)`, the inode
/// generation (`FS_IOC_GETVERSION`: ext4, xfs, btrfs; changes when an inode number is
/// reused) and the birth time in nanoseconds, each `None` where unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// Device and inode number.
    pub id: FileId,
    /// Inode generation, read through an open descriptor.
    pub igen: Option<u32>,
    /// Birth time, Unix nanoseconds.
    pub btime_ns: Option<i64>,
}

/// `FS_IOC_GETVERSION`: `_IOR('v', 1, long)`.
const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;

impl FileIdentity {
    /// The identity of an open file (all parts the filesystem knows).
    pub fn of_file(file: &File) -> io::Result<FileIdentity> {
        let stx = super::dir::statx_at(file.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?;
        let mut igen: libc::c_long = 0;
        // SAFETY: FS_IOC_GETVERSION writes one long into the variable we own.
        let igen = (unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETVERSION, &mut igen) } == 0).then_some(igen as u32);
        Ok(FileIdentity { igen, ..super::dir::identity_of(&stx) })
    }

    /// True unless a part both sides know differs.
    pub fn same_as(&self, other: &FileIdentity) -> bool {
        let agree = |a: Option<i64>, b: Option<i64>| a.zip(b).is_none_or(|(a, b)| a == b);
        self.id == other.id
            && agree(self.igen.map(i64::from), other.igen.map(i64::from))
            && agree(self.btime_ns, other.btime_ns)
    }
}

/// A position in a source: byte `off` of generation `gen`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Generation sequence number within the chain (0 = oldest ever seen).
    pub gen: u32,
    /// Byte offset inside that generation.
    pub off: u64,
}

/// What the journal records of a generation: enough to find it again after a restart
/// and to read it exactly as ingest did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenRecord {
    /// Place in the chain.
    pub seq: u32,
    /// Identity of its file.
    pub identity: FileIdentity,
    /// Birth time in Unix milliseconds (kernel uptime stamps count from it).
    pub birth_ms: i64,
    /// Its first bytes (up to [`FINGERPRINT_LEN`]) when last observed.
    pub fingerprint: Vec<u8>,
    /// Final length and whether a trailing partial line continues in the next
    /// generation, once the producer moved on.
    pub sealed: Option<(u64, bool)>,
}

/// One file of a chain: its identity, its descriptor while needed, and whether the
/// producer has moved on from it.
#[derive(Debug)]
pub struct Generation {
    /// Place in the chain, assigned when the chain adopts it.
    seq: AtomicU32,
    /// Identity of the file when it was first seen.
    pub identity: FileIdentity,
    /// Birth time in Unix milliseconds (statx btime, else mtime when first seen).
    pub birth_ms: i64,
    file: RwLock<Slot>,
    /// Ingest is done with it (read to its end, or it cannot be read): its descriptor
    /// is closed for good. A generation not released whose slot is empty was closed
    /// while idle and is reopened by identity when it grows.
    released: AtomicBool,
    sealed_len: AtomicU64,
    joins_next: AtomicBool,
    seen_len: AtomicU64,
    fingerprint: Mutex<Vec<u8>>,
    /// Generations known to have been rotated away unseen just before this one.
    lost_before: AtomicU64,
    /// Generations known to have been rotated away unseen right after this one (the
    /// loss was counted before any later generation was seen).
    lost_after: AtomicU64,
}

/// `seq` of a generation no chain has adopted yet.
const UNASSIGNED: u32 = u32::MAX;

/// Why a generation cannot be read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// msbfs released its descriptor for good: what was not read is lost.
    Released,
    /// Its descriptor was closed while idle; it is reopened when it grows.
    Closed,
}

/// Producer descriptors held by every generation of the process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many producer files msbfs holds open right now.
pub fn held_descriptors() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// A generation's descriptor, counted in [`held_descriptors`] while held.
#[derive(Debug, Default)]
struct Slot(Option<Arc<File>>);

impl Slot {
    fn set(&mut self, file: Arc<File>) {
        if self.0.replace(file).is_none() {
            HELD.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take(&mut self) {
        if self.0.take().is_some() {
            HELD.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.take();
    }
}

impl Generation {
    /// A live generation reading through `file`, not yet in a chain (its sequence
    /// number comes with [`Chain::adopt`]).
    pub fn new(identity: FileIdentity, birth_ms: i64, file: Option<Arc<File>>) -> Generation {
        let fingerprint = file.as_deref().and_then(|f| read_prefix(f, FINGERPRINT_LEN).ok()).unwrap_or_default();
        let released = AtomicBool::new(file.is_none());
        let mut slot = Slot::default();
        if let Some(file) = file {
            slot.set(file);
        }
        Generation {
            seq: AtomicU32::new(UNASSIGNED),
            identity,
            birth_ms,
            file: RwLock::new(slot),
            released,
            sealed_len: AtomicU64::new(LIVE),
            joins_next: AtomicBool::new(false),
            seen_len: AtomicU64::new(0),
            fingerprint: Mutex::new(fingerprint),
            lost_before: AtomicU64::new(0),
            lost_after: AtomicU64::new(0),
        }
    }

    /// A generation as the journal recorded it, reading through `file` if found.
    pub fn from_record(rec: &GenRecord, file: Option<Arc<File>>) -> Generation {
        let gen = Generation::new(rec.identity, rec.birth_ms, None);
        gen.seq.store(rec.seq, Ordering::Release);
        *gen.fingerprint.lock() = rec.fingerprint.clone();
        gen.seen_len.store(rec.sealed.map_or(0, |(len, _)| len), Ordering::Release);
        if let Some((len, joins)) = rec.sealed {
            gen.seal(len, joins);
        }
        if let Some(file) = file {
            gen.file.write().set(file);
            gen.released.store(false, Ordering::Release);
        }
        gen
    }

    /// Its place in the chain (`u32::MAX` until adopted).
    pub fn seq(&self) -> u32 {
        self.seq.load(Ordering::Acquire)
    }

    /// What the journal records of it now.
    pub fn record(&self) -> GenRecord {
        GenRecord {
            seq: self.seq(),
            identity: self.identity,
            birth_ms: self.birth_ms,
            fingerprint: self.fingerprint.lock().clone(),
            sealed: self.sealed_len().map(|len| (len, self.joins_next())),
        }
    }

    /// Reads at `off` into `buf`, unless the descriptor is not held.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<io::Result<usize>, Unavailable> {
        let guard = self.file.read();
        let Some(file) = guard.0.as_ref() else {
            return Err(if self.is_released() { Unavailable::Released } else { Unavailable::Closed });
        };
        let limit = self.sealed_len().unwrap_or(u64::MAX);
        if off >= limit {
            return Ok(Ok(0));
        }
        let want = (buf.len() as u64).min(limit - off) as usize;
        Ok(file.read_at(&mut buf[..want], off))
    }

    /// The descriptor, while held.
    pub fn file(&self) -> Option<Arc<File>> {
        self.file.read().0.clone()
    }

    /// Final length once the producer has moved to a newer generation.
    pub fn sealed_len(&self) -> Option<u64> {
        match self.sealed_len.load(Ordering::Acquire) {
            LIVE => None,
            len => Some(len),
        }
    }

    /// True when a trailing partial line continues in the next generation (rotation);
    /// false when the partial is a line of its own (truncation, replacement).
    pub fn joins_next(&self) -> bool {
        self.joins_next.load(Ordering::Acquire)
    }

    /// Marks the generation final at `len` bytes.
    pub fn seal(&self, len: u64, joins_next: bool) {
        self.joins_next.store(joins_next, Ordering::Release);
        self.sealed_len.store(len, Ordering::Release);
    }

    /// Closes the descriptor for good (ingest read it to its end, or it cannot be read).
    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
        self.file.write().take();
    }

    /// True once [`Generation::release`] ran (or it was never opened).
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Closes the descriptor of a generation ingest has caught up with, to be reopened
    /// by identity ([`Generation::reopen`]) when the file grows.
    pub fn close_idle(&self) {
        self.file.write().take();
    }

    /// Takes `file` (checked by the caller to be this generation) as its descriptor
    /// again, unless it was released meanwhile or holds one.
    pub fn reopen(&self, file: Arc<File>) {
        let mut slot = self.file.write();
        if slot.0.is_none() && !self.is_released() {
            slot.set(file);
        }
    }

    /// Largest size observed so far.
    pub fn seen_len(&self) -> u64 {
        self.seen_len.load(Ordering::Acquire)
    }

    /// Length of the fingerprint recorded so far.
    pub fn fingerprint_len(&self) -> usize {
        self.fingerprint.lock().len()
    }

    /// Takes a longer fingerprint recorded later (the file grew); if the file held
    /// does not start with it, it is not this generation after all and is released.
    pub fn refine_fingerprint(&self, fingerprint: &[u8]) {
        {
            let mut fp = self.fingerprint.lock();
            if fingerprint.len() <= fp.len() {
                return;
            }
            *fp = fingerprint.to_vec();
        }
        if let Some(file) = self.file() {
            if !self.is_file(&file) {
                self.release();
            }
        }
    }

    /// Records that at least `len` bytes of it were seen (a restart knows where ingest
    /// stood), so a later, shorter file is recognised as truncated.
    pub fn note_seen(&self, len: u64) {
        self.seen_len.fetch_max(len, Ordering::AcqRel);
    }

    /// Adds `n` generations rotated away unseen just before this one.
    pub fn add_lost_before(&self, n: u64) {
        self.lost_before.fetch_add(n, Ordering::AcqRel);
    }

    /// Takes the count of generations lost before this one (the reader announces
    /// them once).
    pub fn take_lost_before(&self) -> u64 {
        self.lost_before.swap(0, Ordering::AcqRel)
    }

    /// Adds `n` generations rotated away unseen right after this one.
    pub fn add_lost_after(&self, n: u64) {
        self.lost_after.fetch_add(n, Ordering::AcqRel);
    }

    /// Takes the count of generations lost after this one (announced once it has
    /// been read to its end).
    pub fn take_lost_after(&self) -> u64 {
        self.lost_after.swap(0, Ordering::AcqRel)
    }

    /// True when `file` is this generation: the same identity, starting with the bytes
    /// it started with.
    pub fn is_file(&self, file: &File) -> bool {
        let Ok(identity) = FileIdentity::of_file(file) else { return false };
        if !self.identity.same_as(&identity) {
            return false;
        }
        let fp = self.fingerprint.lock();
        read_prefix(file, fp.len()).is_ok_and(|prefix| prefix == *fp)
    }

    /// Records the current size and checks that the leading bytes are still the ones
    /// first seen. Returns false when the content was replaced or truncated in place.
    pub fn observe(&self, file: &File, len: u64) -> bool {
        if len < self.seen_len() {
            return false;
        }
        let mut fp = self.fingerprint.lock();
        if len > 0 {
            let want = (len as usize).min(FINGERPRINT_LEN);
            match read_prefix(file, want) {
                Ok(now) if now.len() >= fp.len() && now[..fp.len()] == fp[..] => *fp = now,
                Ok(_) => return false,
                Err(_) => {}
            }
        }
        self.seen_len.fetch_max(len, Ordering::AcqRel);
        true
    }
}

fn read_prefix(file: &File, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// The generations of one source that ingest may still need, oldest first. Shared by
/// ingest (which appends, seals and prunes) and by replays (which read).
#[derive(Debug, Default)]
pub struct Chain {
    gens: RwLock<VecDeque<Arc<Generation>>>,
    /// Sequence number of the first generation held (earlier ones were pruned).
    first_seq: AtomicU64,
}

impl Chain {
    /// A chain whose next generation gets sequence number `next_seq`.
    pub fn starting_at(next_seq: u32) -> Chain {
        Chain { gens: RwLock::default(), first_seq: AtomicU64::new(u64::from(next_seq)) }
    }

    /// Generation `seq`, if held.
    pub fn get(&self, seq: u32) -> Option<Arc<Generation>> {
        let first = self.first_seq.load(Ordering::Acquire);
        let index = u64::from(seq).checked_sub(first)?;
        self.gens.read().get(index as usize).cloned()
    }

    /// The newest generation.
    pub fn last(&self) -> Option<Arc<Generation>> {
        self.gens.read().back().cloned()
    }

    /// Sequence number the next generation gets.
    pub fn next_seq(&self) -> u32 {
        let gens = self.gens.read();
        (self.first_seq.load(Ordering::Acquire) + gens.len() as u64) as u32
    }

    /// Appends a live generation reading through `file`; returns it.
    pub fn push(&self, identity: FileIdentity, birth_ms: i64, file: Arc<File>) -> Arc<Generation> {
        let gen = Arc::new(Generation::new(identity, birth_ms, Some(file)));
        self.adopt(gen.clone());
        gen
    }

    /// Appends a generation: a new one gets the next sequence number; one restored
    /// from the journal keeps its own (an empty chain starts at it).
    pub fn adopt(&self, gen: Arc<Generation>) {
        let mut gens = self.gens.write();
        let next = (self.first_seq.load(Ordering::Acquire) + gens.len() as u64) as u32;
        match gen.seq() {
            UNASSIGNED => gen.seq.store(next, Ordering::Release),
            seq if gens.is_empty() => self.first_seq.store(u64::from(seq), Ordering::Release),
            seq => debug_assert_eq!(seq, next),
        }
        gens.push_back(gen);
    }

    /// Every generation held, oldest first.
    pub fn all(&self) -> Vec<Arc<Generation>> {
        self.gens.read().iter().cloned().collect()
    }

    /// Forgets released generations before `seq` (ingest no longer needs them).
    pub fn prune_before(&self, seq: u32) {
        let mut gens = self.gens.write();
        while gens.front().is_some_and(|g| g.seq() < seq && g.is_released()) {
            gens.pop_front();
            self.first_seq.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Birth time of an open file in Unix milliseconds: statx btime where the filesystem
/// records it, else its modification time.
pub fn birth_time_ms(file: &File, identity: &FileIdentity) -> i64 {
    if let Some(ns) = identity.btime_ns {
        return ns.div_euclid(1_000_000);
    }
    file.metadata().map_or(0, |m| mtime_ms(&m))
}

/// A file's modification time in Unix milliseconds.
pub fn mtime_ms(meta: &std::fs::Metadata) -> i64 {
    meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::dir::LogsDir;

    #[test]
    fn a_reused_inode_number_is_another_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"one").unwrap();
        let first = FileIdentity::of_file(&File::open(&path).unwrap()).unwrap();
        let at = |name: &str| LogsDir::open(dir.path()).unwrap().entry(name);
        assert_eq!(at("f").map(|e| e.identity.id), Some(first.id));
        let mut reused = None;
        for _ in 0..50 {
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, b"one").unwrap();
            let now = FileIdentity::of_file(&File::open(&path).unwrap()).unwrap();
            if now.id == first.id {
                reused = Some(now);
                break;
            }
        }
        // Where the filesystem reused the number, something else tells them apart.
        if let Some(now) = reused {
            assert!(now.igen.is_some() || now.btime_ns.is_some(), "no way to tell a reused inode apart here");
            assert!(!now.same_as(&first), "{now:?} vs {first:?}");
        }
        assert!(first.same_as(&first));
        assert!(at("missing").is_none());
    }
}

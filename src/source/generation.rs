//! One file of a source's generation chain, and the chain itself.
//!
//! A generation is identified by its place in the chain (`seq`), never by inode number
//! alone: ext4 hands a deleted file's inode number to the next `exec.log`. msbfs keeps
//! the descriptor of every generation it still needs, which also pins the inode so it
//! cannot be reused while held.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// How many leading bytes identify a generation's content.
pub const FINGERPRINT_LEN: usize = 64;

/// `sealed_len` value of a generation the producer may still append to.
const LIVE: u64 = u64::MAX;

/// `(st_dev, st_ino)` of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The id of an open file or a metadata record.
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId { dev: meta.dev(), ino: meta.ino() }
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

/// One file of a chain: its identity, its descriptor while needed, and whether the
/// producer has moved on from it.
#[derive(Debug)]
pub struct Generation {
    /// Place in the chain.
    pub seq: u32,
    /// Identity of the file when it was first seen.
    pub id: FileId,
    /// Birth time in Unix milliseconds (statx btime, else mtime when first seen).
    pub birth_ms: i64,
    file: RwLock<Option<Arc<File>>>,
    sealed_len: AtomicU64,
    joins_next: AtomicBool,
    seen_len: AtomicU64,
    fingerprint: Mutex<Vec<u8>>,
}

/// Reading from a generation whose descriptor msbfs has already released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released;

impl Generation {
    /// A live generation reading through `file`.
    pub fn new(seq: u32, id: FileId, birth_ms: i64, file: Arc<File>) -> Generation {
        let fingerprint = read_prefix(&file, FINGERPRINT_LEN).unwrap_or_default();
        Generation {
            seq,
            id,
            birth_ms,
            file: RwLock::new(Some(file)),
            sealed_len: AtomicU64::new(LIVE),
            joins_next: AtomicBool::new(false),
            seen_len: AtomicU64::new(0),
            fingerprint: Mutex::new(fingerprint),
        }
    }

    /// Reads at `off` into `buf`; `Err(Released)` once the descriptor is gone.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<io::Result<usize>, Released> {
        let guard = self.file.read();
        let file = guard.as_ref().ok_or(Released)?;
        let limit = self.sealed_len().unwrap_or(u64::MAX);
        if off >= limit {
            return Ok(Ok(0));
        }
        let want = (buf.len() as u64).min(limit - off) as usize;
        Ok(file.read_at(&mut buf[..want], off))
    }

    /// The descriptor, unless released.
    pub fn file(&self) -> Option<Arc<File>> {
        self.file.read().clone()
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

    /// Closes the descriptor; the generation's bytes can no longer be read.
    pub fn release(&self) {
        self.file.write().take();
    }

    /// True once [`Generation::release`] ran.
    pub fn is_released(&self) -> bool {
        self.file.read().is_none()
    }

    /// Largest size observed so far.
    pub fn seen_len(&self) -> u64 {
        self.seen_len.load(Ordering::Acquire)
    }

    /// True when `file` starts with the bytes this generation started with: the same
    /// file, even after msbfs released its descriptor (a reused inode number holds
    /// other bytes).
    pub fn same_content(&self, file: &File) -> bool {
        let fp = self.fingerprint.lock();
        match read_prefix(file, fp.len()) {
            Ok(prefix) => prefix == *fp,
            Err(_) => false,
        }
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

/// The generations of one source, oldest first. Shared by ingest (which appends and
/// seals) and by every replay (which reads).
#[derive(Debug, Default)]
pub struct Chain {
    gens: RwLock<Vec<Arc<Generation>>>,
}

impl Chain {
    /// Generation `seq`, if it exists.
    pub fn get(&self, seq: u32) -> Option<Arc<Generation>> {
        self.gens.read().get(seq as usize).cloned()
    }

    /// The newest generation.
    pub fn last(&self) -> Option<Arc<Generation>> {
        self.gens.read().last().cloned()
    }

    /// Number of generations ever seen.
    pub fn len(&self) -> u32 {
        self.gens.read().len() as u32
    }

    /// True before the first generation appears.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a live generation reading through `file`; returns it.
    pub fn push(&self, id: FileId, birth_ms: i64, file: Arc<File>) -> Arc<Generation> {
        let mut gens = self.gens.write();
        let gen = Arc::new(Generation::new(gens.len() as u32, id, birth_ms, file));
        gens.push(gen.clone());
        gen
    }

    /// Every generation, oldest first.
    pub fn all(&self) -> Vec<Arc<Generation>> {
        self.gens.read().clone()
    }
}

/// Opens `path` for reading only if it is a regular file, without following a symlink
/// and without blocking on a FIFO. `Ok(None)` when it does not exist or is not regular.
pub fn open_regular(path: &Path) -> io::Result<Option<(File, std::fs::Metadata)>> {
    let before = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !before.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(Some((file, meta)))
}

/// Birth time of an open file in Unix milliseconds: statx btime where the filesystem
/// records it, else its modification time.
pub fn birth_time_ms(file: &File, meta: &std::fs::Metadata) -> i64 {
    use std::os::fd::AsRawFd;
    // SAFETY: statx writes into the zeroed struct we own; the fd is valid for the call.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    let rc = unsafe { libc::statx(file.as_raw_fd(), empty.as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_BTIME, &mut stx) };
    if rc == 0 && stx.stx_mask & libc::STATX_BTIME != 0 {
        return stx.stx_btime.tv_sec * 1000 + i64::from(stx.stx_btime.tv_nsec) / 1_000_000;
    }
    meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000
}

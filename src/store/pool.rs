//! Descriptors of the store's files, opened on demand and closed least recently used
//! first, so the daemon holds at most a fixed number of them however many epochs
//! exist (2,000 idle sandboxes must fit under `ulimit -n 1024`).
//!
//! A [`PooledFile`] is a path plus, while open, a descriptor. Callers take an
//! `Arc<File>` for the duration of one operation; closing a file the pool evicted only
//! drops the pool's reference, so an operation in progress keeps its descriptor.
//! Lock order: the pool's list, then a file's slot; a slot is never held while the
//! list is locked by the same thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// The set of open store files and its capacity.
#[derive(Debug)]
pub struct FilePool {
    capacity: usize,
    open: Mutex<Vec<Weak<PooledFile>>>,
    tick: AtomicU64,
}

impl FilePool {
    /// A pool holding at most `capacity` descriptors open (at least 4).
    pub fn new(capacity: usize) -> Arc<FilePool> {
        Arc::new(FilePool { capacity: capacity.max(4), open: Mutex::new(Vec::new()), tick: AtomicU64::new(0) })
    }

    /// Store files open right now (for tests and diagnostics).
    pub fn open_count(&self) -> usize {
        self.open.lock().iter().filter(|f| f.upgrade().is_some_and(|f| f.slot.lock().is_some())).count()
    }

    /// Records that `file` was opened. Beyond the capacity, the least recently used
    /// eighth is closed at once, so admitting costs O(log n) amortised.
    fn admit(&self, file: &Arc<PooledFile>) {
        let mut open = self.open.lock();
        open.push(Arc::downgrade(file));
        if open.len() > self.capacity {
            Self::close_oldest(&mut open, self.capacity - self.capacity / 8);
        }
    }

    /// Closes the least recently used half of the open files (the process ran out of
    /// descriptors).
    fn shed(&self) {
        let mut open = self.open.lock();
        let keep = open.len() / 2;
        Self::close_oldest(&mut open, keep);
    }

    /// Closes all but the `keep` most recently used files of `open`.
    fn close_oldest(open: &mut Vec<Weak<PooledFile>>, keep: usize) {
        let mut files: Vec<Arc<PooledFile>> = open.iter().filter_map(Weak::upgrade).collect();
        files.sort_by_key(|f| f.used.load(Ordering::Relaxed));
        let kept = files.split_off(files.len().saturating_sub(keep));
        for victim in files {
            victim.slot.lock().take();
        }
        *open = kept.iter().map(Arc::downgrade).collect();
    }
}

/// One file of the store: its path, and its descriptor while the pool keeps it open.
#[derive(Debug)]
pub struct PooledFile {
    path: PathBuf,
    slot: Mutex<Option<Arc<File>>>,
    /// Created when first opened, if missing.
    create: bool,
    used: AtomicU64,
    pool: Arc<FilePool>,
    me: Weak<PooledFile>,
}

fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(create).custom_flags(libc::O_CLOEXEC).open(path)
}

impl PooledFile {
    /// The file at `path`, opened (read-write) when first used. Created now when
    /// `create`, which returns its descriptor too.
    pub fn new(pool: &Arc<FilePool>, path: PathBuf) -> Arc<PooledFile> {
        PooledFile::with_create(pool, path, false)
    }

    /// The file at `path`, created (empty) when it is first opened if it is missing:
    /// for files that exist only once there is something to write.
    pub fn creating(pool: &Arc<FilePool>, path: PathBuf) -> Arc<PooledFile> {
        PooledFile::with_create(pool, path, true)
    }

    fn with_create(pool: &Arc<FilePool>, path: PathBuf, create: bool) -> Arc<PooledFile> {
        Arc::new_cyclic(|me| PooledFile {
            path,
            slot: Mutex::new(None),
            create,
            used: AtomicU64::new(0),
            pool: pool.clone(),
            me: me.clone(),
        })
    }

    /// The pool it belongs to.
    pub fn pool(&self) -> &Arc<FilePool> {
        &self.pool
    }

    /// Marks it the most recently used.
    fn touch(&self) {
        self.used.store(self.pool.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The open descriptor, reopening the file if the pool closed it. Running out of
    /// descriptors closes half of the pool and tries once more.
    pub fn get(&self) -> io::Result<Arc<File>> {
        self.touch();
        let file = {
            let mut slot = self.slot.lock();
            if let Some(file) = slot.as_ref() {
                return Ok(file.clone());
            }
            let file = match open_rw(&self.path, self.create) {
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                    drop(slot);
                    self.pool.shed();
                    slot = self.slot.lock();
                    open_rw(&self.path, self.create)?
                }
                other => other?,
            };
            let file = Arc::new(file);
            *slot = Some(file.clone());
            file
        };
        if let Some(me) = self.me.upgrade() {
            self.pool.admit(&me);
        }
        Ok(file)
    }

    /// Makes `file` its descriptor (the file at its path was just replaced by it).
    pub fn replace(&self, file: File) -> Arc<File> {
        self.touch();
        let file = Arc::new(file);
        let was_open = self.slot.lock().replace(file.clone()).is_some();
        if !was_open {
            if let Some(me) = self.me.upgrade() {
                self.pool.admit(&me);
            }
        }
        file
    }
}

/// Creates (or truncates) the file at `path` and returns it as a pooled file.
pub fn create(pool: &Arc<FilePool>, path: PathBuf) -> io::Result<(Arc<PooledFile>, Arc<File>)> {
    let file = open_rw(&path, true)?;
    file.set_len(0)?;
    let pooled = PooledFile::new(pool, path);
    let file = pooled.replace(file);
    Ok((pooled, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn the_pool_keeps_at_most_its_capacity_open_and_reopens_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let files: Vec<Arc<PooledFile>> = (0..10)
            .map(|i| {
                let (pooled, file) = create(&pool, dir.path().join(format!("f{i}"))).unwrap();
                file.write_all_at(format!("file {i}").as_bytes(), 0).unwrap();
                pooled
            })
            .collect();
        assert_eq!(pool.open_count(), 4);
        for (i, f) in files.iter().enumerate() {
            let mut buf = vec![0u8; 6];
            f.get().unwrap().read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(buf, format!("file {i}").as_bytes()[..6]);
            assert!(pool.open_count() <= 4);
        }
        // The most recently used stay open.
        assert!(files[9].slot.lock().is_some() && files[0].slot.lock().is_none());
    }

    #[test]
    fn an_evicted_descriptor_in_use_stays_valid() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(4);
        let (first, held) = create(&pool, dir.path().join("first")).unwrap();
        held.write_all_at(b"kept", 0).unwrap();
        let _others: Vec<_> = (0..8).map(|i| create(&pool, dir.path().join(format!("o{i}"))).unwrap()).collect();
        assert!(first.slot.lock().is_none(), "evicted");
        let mut buf = [0u8; 4];
        held.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"kept");
    }
}

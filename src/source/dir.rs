//! Reaching the producer's files without following a symlink anywhere.
//!
//! Everything under `<home>/sandboxes/` is written by programs in sandboxes, so a
//! `logs/` directory, a sandbox directory or a chain file may be a symlink to anything
//! on the host. A [`LogsDir`] is opened with `openat2(RESOLVE_NO_SYMLINKS)` on the
//! canonical path, so no component of it may be a symlink, and the chain files are
//! then reached relative to it, one name at a time, never following a final symlink.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

use super::generation::{FileId, FileIdentity};

/// Who may read (or search) a file or directory: its owner, group and mode bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
}

impl Access {
    /// The access of a metadata record.
    pub fn of(meta: &std::fs::Metadata) -> Access {
        use std::os::unix::fs::MetadataExt;
        Access { uid: meta.uid(), gid: meta.gid(), mode: meta.mode() }
    }

    /// True for a directory (its search bits count, not its read bits).
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// What `lstat` says of one name in a logs directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The identity of what is there (without the inode generation).
    pub identity: FileIdentity,
    /// True for a regular file (not a symlink, FIFO, device or directory).
    pub regular: bool,
    /// Its owner and mode.
    pub access: Access,
    /// Its size.
    pub size: u64,
}

/// An open `logs/` directory (an `O_PATH` descriptor; held only for one scan).
#[derive(Debug)]
pub struct LogsDir {
    fd: OwnedFd,
}

/// The error of a path with a symlink in it (a final one is `ENOTDIR` with `O_PATH`).
fn is_symlink_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV) | Some(libc::ENOTDIR))
}

impl LogsDir {
    /// Opens directory `path` (made absolute), refusing a symlink in any component:
    /// the error then is `InvalidInput`.
    pub fn open(path: &Path) -> io::Result<LogsDir> {
        let path = std::path::absolute(path)?;
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path.as_path(), how) {
            Ok(fd) => Ok(LogsDir { fd }),
            Err(e) => {
                let e = io::Error::from(e);
                if is_symlink_error(&e) {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a symlink (or not a directory) is on the way to it; not followed",
                    ))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The directory's own owner and mode.
    pub fn access(&self) -> io::Result<Access> {
        let stx = statx_at(self.fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?;
        Ok(access_of(&stx))
    }

    /// `lstat` of `name` in it; `None` when nothing is there (or it cannot be read).
    pub fn entry(&self, name: &str) -> Option<Entry> {
        let c = CString::new(name).ok()?;
        let stx = statx_at(self.fd.as_raw_fd(), &c, libc::AT_SYMLINK_NOFOLLOW).ok()?;
        let access = access_of(&stx);
        let regular = access.mode & libc::S_IFMT == libc::S_IFREG;
        let identity = identity_of(&stx);
        Some(Entry { identity, regular, access, size: stx.stx_size })
    }

    /// Opens `name` for reading if it is a regular file, not following a symlink and
    /// not blocking on a FIFO. `Ok(None)` when it does not exist.
    pub fn open_file(&self, name: &str) -> io::Result<Option<File>> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let fd = match nix::fcntl::openat(self.fd.as_fd(), name, flags, nix::sys::stat::Mode::empty()) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(nix::errno::Errno::ELOOP) => return Err(io::Error::new(io::ErrorKind::InvalidInput, "a symlink")),
            Err(e) => return Err(e.into()),
        };
        let file = File::from(fd);
        if !file.metadata()?.file_type().is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok(Some(file))
    }
}

/// `statx` of `name` relative to `dirfd` (basic stats and birth time).
pub(crate) fn statx_at(dirfd: libc::c_int, name: &std::ffi::CStr, flags: libc::c_int) -> io::Result<libc::statx> {
    // SAFETY: statx writes into the zeroed struct we own; dirfd and name are valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let mask = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
    if unsafe { libc::statx(dirfd, name.as_ptr(), flags, mask, &mut stx) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stx)
}

/// The identity a `statx` record tells (no inode generation).
pub(crate) fn identity_of(stx: &libc::statx) -> FileIdentity {
    FileIdentity {
        id: FileId { dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor), ino: stx.stx_ino },
        igen: None,
        btime_ns: (stx.stx_mask & libc::STATX_BTIME != 0)
            .then(|| stx.stx_btime.tv_sec * 1_000_000_000 + i64::from(stx.stx_btime.tv_nsec)),
    }
}

fn access_of(stx: &libc::statx) -> Access {
    Access { uid: stx.stx_uid, gid: stx.stx_gid, mode: u32::from(stx.stx_mode) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_anywhere_on_the_way_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real/logs");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("exec.log"), b"x\n").unwrap();
        std::os::unix::fs::symlink(root.path().join("real"), root.path().join("sandbox")).unwrap();
        std::os::unix::fs::symlink(&real, root.path().join("logs")).unwrap();
        for path in [root.path().join("sandbox/logs"), root.path().join("logs")] {
            let err = LogsDir::open(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{path:?}: {err}");
        }
        let dir = LogsDir::open(&real).unwrap();
        assert_eq!(dir.entry("exec.log").unwrap().size, 2);
        assert!(dir.entry("exec.log").unwrap().regular);
        assert!(dir.access().unwrap().is_dir());
        std::os::unix::fs::symlink("/etc/passwd", real.join("exec.log.1")).unwrap();
        assert!(!dir.entry("exec.log.1").unwrap().regular, "a symlink is not a regular file");
        assert_eq!(dir.open_file("exec.log.1").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert!(dir.open_file("missing").unwrap().is_none());
    }
}

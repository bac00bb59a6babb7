//! A thin adapter from fuser's `Filesystem` trait to [`crate::fs::Fs`], with errno
//! mapping in one place ([`errno`]) and every failed request answered and logged (at
//! debug, with its operation) by one helper, `fail`. No logic lives here.
//!
//! Operations msbfs does not serve are refused quietly by one table (`refuse!`):
//! every write-type operation with `EROFS`; `ioctl` with `ENOTTY` (each `isatty` of a
//! reader asks); `poll` and `lseek` with `ENOSYS`, after which the kernel stops asking
//! and does them itself: `poll` reports the file always readable, as for any regular
//! file (a follower then blocks in `read`, DESIGN §2.4), and `lseek` is the generic one
//! over `st_size` (`SEEK_END`, `SEEK_DATA` at 0, `SEEK_HOLE` at the size).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation,
    INodeNo, IoctlFlags, LockOwner, OpenFlags, PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, Fs, FsError, NodeKind, ReadReply};

/// Attribute TTL of `merged.log`: zero, so `fstat` always sees the growing size.
const FILE_TTL: Duration = Duration::ZERO;
/// Attribute and entry TTL of directories: short, so sandboxes appear and vanish soon.
const DIR_TTL: Duration = Duration::from_secs(1);

/// The one errno mapping of the filesystem.
pub fn errno(err: FsError) -> Errno {
    match err {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::ReadOnly => Errno::EROFS,
        FsError::NoAttr => Errno::ENODATA,
        FsError::BadHandle => Errno::EBADF,
        FsError::Interrupted => Errno::EINTR,
        FsError::Io => Errno::EIO,
        FsError::BufferTooSmall => Errno::ERANGE,
        FsError::NotTty => Errno::ENOTTY,
        FsError::Unsupported => Errno::ENOSYS,
        FsError::Invalid => Errno::EINVAL,
        FsError::Stale => Errno::ESTALE,
    }
}

/// A fuser reply that can carry an errno (each reply type has its own `error`).
trait ErrorReply {
    fn error(self, errno: Errno);
}

macro_rules! error_reply {
    ($($reply:ty),*) => {
        $(impl ErrorReply for $reply {
            fn error(self, errno: Errno) {
                <$reply>::error(self, errno);
            }
        })*
    };
}

error_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyEmpty,
    ReplyEntry,
    ReplyIoctl,
    ReplyLseek,
    ReplyOpen,
    ReplyPoll,
    ReplyWrite,
    ReplyXattr
);

/// The one way a request fails: logged at debug with its operation, answered with the
/// errno of `err`.
fn fail(op: &'static str, err: FsError, reply: impl ErrorReply) {
    let errno = errno(err);
    tracing::debug!(op, errno = errno.code(), "request failed: {err:?}");
    reply.error(errno);
}

/// Implements operations msbfs refuses, each answered through [`fail`] with its error.
macro_rules! refuse {
    ($($err:ident: fn $op:ident(&self, $($arg:ident: $ty:ty),* $(,)?) -> $reply:ty;)*) => {
        $(fn $op(&self, $($arg: $ty,)* reply: $reply) {
            fail(stringify!($op), FsError::$err, reply);
        })*
    };
}

fn ttl(attr: &Attr) -> Duration {
    match attr.kind {
        NodeKind::Dir => DIR_TTL,
        NodeKind::File => FILE_TTL,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    let mtime = if attr.mtime_ms >= 0 { UNIX_EPOCH + Duration::from_millis(attr.mtime_ms as u64) } else { UNIX_EPOCH };
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: match attr.kind {
            NodeKind::Dir => FileType::Directory,
            NodeKind::File => FileType::RegularFile,
        },
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Answers a read through fuser's `ReplyData`, possibly later and from another thread.
struct FuseRead(ReplyData);

impl ReadReply for FuseRead {
    fn data(self: Box<Self>, bytes: &[u8]) {
        self.0.data(bytes);
    }
    fn error(self: Box<Self>, err: FsError) {
        fail("read", err, self.0);
    }
}

fn reply_xattr(op: &'static str, result: Result<Vec<u8>, FsError>, size: u32, reply: ReplyXattr) {
    match result {
        Err(e) => fail(op, e, reply),
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() > size as usize => fail(op, FsError::BufferTooSmall, reply),
        Ok(value) => reply.data(&value),
    }
}

/// The fuser filesystem: every method forwards to [`Fs`].
pub struct FuseAdapter {
    fs: Arc<Fs>,
}

impl FuseAdapter {
    /// Wraps `fs`.
    pub fn new(fs: Arc<Fs>) -> FuseAdapter {
        FuseAdapter { fs }
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn destroy(&mut self) {
        self.fs.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else { return fail("lookup", FsError::NotFound, reply) };
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&ttl(&attr), &file_attr(&attr), Generation(0)),
            Err(e) => fail("lookup", e, reply),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&ttl(&attr), &file_attr(&attr)),
            Err(e) => fail("getattr", e, reply),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => fail("open", e, reply),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.fs.read(fh.0, offset, size, flags.0, req.pid(), Box::new(FuseRead(reply)));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => fail("opendir", e, reply),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.fs.readdir(ino.0) {
            Ok(entries) => {
                for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
                    let kind = match entry.kind {
                        NodeKind::Dir => FileType::Directory,
                        NodeKind::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(entry.ino), i as u64 + 1, kind, &entry.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => fail("readdir", e, reply),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = name.to_str().ok_or(FsError::NoAttr).and_then(|n| self.fs.getxattr(ino.0, n));
        reply_xattr("getxattr", value, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr("listxattr", self.fs.listxattr(ino.0), size, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.getattr(ino.0) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => fail("access", FsError::ReadOnly, reply),
            Ok(_) => reply.ok(),
            Err(e) => fail("access", e, reply),
        }
    }

    refuse! {
        ReadOnly: fn setattr(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _mode: Option<u32>,
            _uid: Option<u32>,
            _gid: Option<u32>,
            _size: Option<u64>,
            _atime: Option<TimeOrNow>,
            _mtime: Option<TimeOrNow>,
            _ctime: Option<SystemTime>,
            _fh: Option<FileHandle>,
            _crtime: Option<SystemTime>,
            _chgtime: Option<SystemTime>,
            _bkuptime: Option<SystemTime>,
            _flags: Option<BsdFileFlags>,
        ) -> ReplyAttr;
        ReadOnly: fn mknod(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _mode: u32, _umask: u32, _rdev: u32)
            -> ReplyEntry;
        ReadOnly: fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _mode: u32, _umask: u32) -> ReplyEntry;
        ReadOnly: fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr) -> ReplyEmpty;
        ReadOnly: fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr) -> ReplyEmpty;
        ReadOnly: fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _target: &Path) -> ReplyEntry;
        ReadOnly: fn rename(
            &self,
            _req: &Request,
            _p: INodeNo,
            _n: &OsStr,
            _np: INodeNo,
            _nn: &OsStr,
            _flags: RenameFlags,
        ) -> ReplyEmpty;
        ReadOnly: fn link(&self, _req: &Request, _ino: INodeNo, _np: INodeNo, _nn: &OsStr) -> ReplyEntry;
        ReadOnly: fn write(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _fh: FileHandle,
            _offset: u64,
            _data: &[u8],
            _write_flags: WriteFlags,
            _flags: OpenFlags,
            _lock_owner: Option<LockOwner>,
        ) -> ReplyWrite;
        ReadOnly: fn create(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _mode: u32, _umask: u32, _flags: i32)
            -> ReplyCreate;
        ReadOnly: fn setxattr(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _name: &OsStr,
            _value: &[u8],
            _flags: i32,
            _position: u32,
        ) -> ReplyEmpty;
        ReadOnly: fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr) -> ReplyEmpty;
        ReadOnly: fn fallocate(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _o: u64, _l: u64, _m: i32)
            -> ReplyEmpty;
        ReadOnly: fn copy_file_range(
            &self,
            _req: &Request,
            _ino_in: INodeNo,
            _fh_in: FileHandle,
            _offset_in: u64,
            _ino_out: INodeNo,
            _fh_out: FileHandle,
            _offset_out: u64,
            _len: u64,
            _flags: CopyFileRangeFlags,
        ) -> ReplyWrite;
        NotTty: fn ioctl(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _fh: FileHandle,
            _flags: IoctlFlags,
            _cmd: u32,
            _in_data: &[u8],
            _out_size: u32,
        ) -> ReplyIoctl;
        Unsupported: fn poll(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _fh: FileHandle,
            _ph: PollNotifier,
            _events: PollEvents,
            _flags: PollFlags,
        ) -> ReplyPoll;
        Unsupported: fn lseek(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _offset: i64, _whence: i32)
            -> ReplyLseek;
    }
}

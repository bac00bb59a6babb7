//! The filesystem model: inodes, directories, attributes, open handles, follow-mode
//! reads, xattrs. Callable and testable without a kernel; the `fuse` module only
//! translates.
//!
//! Layout: the root (inode 1) holds one directory per sandbox, each holding
//! `merged.log`, its views ([`crate::view`]: `merged.jsonl`, `program.log`, one file
//! per source) and `sessions/<id>.log`. Inode numbers come from the epoch's block in
//! the store (the directory at its base, then fixed offsets; sessions in order of
//! appearance), so they are the same after a restart, and a sandbox recreated under
//! the same name (a new epoch) is new files with offsets from 0. Every handle reads
//! the same bytes at the same offsets: a read is a read of the store.

pub mod ceiling;
pub mod follow;
pub mod xattr;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::ingest::demand::Demand;
use crate::ingest::Catalog;
use crate::store::INODE_BLOCK;
use crate::time::now_ms;
use crate::timeline::Timeline;
use crate::view::all::AllViews;
use crate::view::{EpochViews, TextView, View};
use follow::{EofStreak, Follow, Parked};

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;
/// Name of the merged file inside each sandbox directory.
pub const MERGED_NAME: &str = "merged.log";
pub use follow::{EOF_REPLIES_BEFORE_BLOCKING, QUICK_RETRY};

/// Errors of filesystem operations; `fuse` maps each to one errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsError {
    /// No such entry (ENOENT).
    NotFound,
    /// Not a directory (ENOTDIR).
    NotDir,
    /// Is a directory (EISDIR).
    IsDir,
    /// Read-only filesystem (EROFS).
    ReadOnly,
    /// No such attribute (ENODATA).
    NoAttr,
    /// Unknown file handle (EBADF).
    BadHandle,
    /// A blocked read was interrupted by a signal (EINTR).
    Interrupted,
    /// The store could not be read (EIO).
    Io,
    /// The caller's buffer is too small for the value (ERANGE).
    BufferTooSmall,
    /// Not a terminal: no `ioctl` is served (ENOTTY).
    NotTty,
    /// Not implemented, so the kernel does it itself (ENOSYS: `poll`, `lseek`).
    Unsupported,
    /// A malformed argument, such as a cursor that is not one (EINVAL).
    Invalid,
    /// A cursor of another epoch or of a generation no longer known (ESTALE).
    Stale,
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
}

/// Attributes of a node, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Directory or file.
    pub kind: NodeKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, Unix milliseconds.
    pub mtime_ms: i64,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Kind of the entry.
    pub kind: NodeKind,
    /// Name.
    pub name: String,
}

/// Where the answer of a read goes: a FUSE reply in production, a channel in tests.
/// May be answered from any thread, exactly once.
pub trait ReadReply: Send {
    /// Answers with bytes (empty = end of file).
    fn data(self: Box<Self>, bytes: &[u8]);
    /// Answers with an error.
    fn error(self: Box<Self>, err: FsError);
}

/// One sandbox epoch as the filesystem shows it.
#[derive(Debug)]
pub struct SandboxNode {
    /// Sandbox name (directory name).
    pub name: String,
    /// Inode of the sandbox directory, the base of the epoch's block.
    pub dir_ino: u64,
    /// Inode of its `merged.log`.
    pub file_ino: u64,
    /// The merged stream.
    pub timeline: Arc<Timeline>,
    /// Its views; `None` when their indexes could not be opened (only `merged.log`).
    pub views: Option<Arc<EpochViews>>,
}

/// Inode offsets inside an epoch's block.
const MERGED_REL: u64 = 1;
const JSONL_REL: u64 = 2;
const FIXED_REL: u64 = 3;
const SESSIONS_REL: u64 = 10;
const SESSION_REL: u64 = 64;

/// What an inode of a sandbox's block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Dir,
    Sessions,
    File(View),
}

impl SandboxNode {
    fn place(&self, ino: u64) -> Option<Place> {
        let rel = ino.checked_sub(self.dir_ino)?;
        let has_views = self.views.is_some();
        match rel {
            0 => Some(Place::Dir),
            MERGED_REL => Some(Place::File(View::Merged)),
            JSONL_REL if has_views => Some(Place::File(View::Jsonl)),
            r if has_views && (FIXED_REL..FIXED_REL + 7).contains(&r) => {
                Some(Place::File(View::Text(TextView::FIXED[(r - FIXED_REL) as usize])))
            }
            SESSIONS_REL if has_views => Some(Place::Sessions),
            r if r >= SESSION_REL => {
                let number = r - SESSION_REL;
                let views = self.views.as_ref()?;
                let id = views.sessions().into_iter().find(|(_, n)| *n == number)?.0;
                Some(Place::File(View::Text(TextView::Session(id))))
            }
            _ => None,
        }
    }

    fn ino_of(&self, place: Place) -> u64 {
        self.dir_ino
            + match place {
                Place::Dir => 0,
                Place::Sessions => SESSIONS_REL,
                Place::File(View::Merged) => MERGED_REL,
                Place::File(View::Jsonl) => JSONL_REL,
                Place::File(View::Text(TextView::Session(id))) => {
                    let sessions = self.views.as_ref().map(|v| v.sessions()).unwrap_or_default();
                    SESSION_REL + sessions.iter().find(|(i, _)| *i == id).map_or(0, |(_, n)| *n)
                }
                Place::File(View::Text(v)) => {
                    FIXED_REL + TextView::FIXED.iter().position(|f| *f == v).unwrap_or(0) as u64
                }
            }
    }

    /// The files of the sandbox directory, in listing order.
    fn files(&self) -> Vec<(String, View)> {
        let mut out = vec![(MERGED_NAME.to_string(), View::Merged)];
        if self.views.is_some() {
            out.push(("merged.jsonl".into(), View::Jsonl));
            out.extend(TextView::FIXED.iter().map(|v| (v.file_name(), View::Text(*v))));
        }
        out
    }

    /// Bytes in `view`; only grows.
    pub fn size(&self, view: View) -> u64 {
        match &self.views {
            Some(views) => views.size(view),
            None => self.timeline.size(),
        }
    }

    /// Reads up to `max` bytes of `view` at `offset`.
    pub fn read(&self, view: View, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        match &self.views {
            Some(views) => views.read(view, offset, max),
            None => self.timeline.read(offset, max),
        }
    }
}

/// Inode numbers of `all.log` and `all.jsonl` (below every epoch's block).
const ALL_LOG_INO: u64 = 3;
const ALL_JSONL_INO: u64 = 4;
/// The key of reads parked on `all.*` (no epoch's block starts at 0).
pub const ALL_KEY: u64 = 0;

/// What an open file reads.
#[derive(Clone)]
enum Target {
    /// A file of a sandbox.
    Sandbox(Arc<SandboxNode>, View),
    /// `all.log` (`false`) or `all.jsonl` (`true`).
    All(Arc<AllViews>, bool),
}

impl Target {
    fn read(&self, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        match self {
            Target::Sandbox(node, view) => node.read(*view, offset, max),
            Target::All(all, false) => all.read_log(offset, max),
            Target::All(all, true) => all.read_jsonl(offset, max),
        }
    }

    /// True when no more bytes will come (a sandbox that went away).
    fn is_closed(&self) -> bool {
        match self {
            Target::Sandbox(node, _) => node.timeline.is_closed(),
            Target::All(..) => false,
        }
    }

    fn key(&self) -> u64 {
        match self {
            Target::Sandbox(node, _) => node.dir_ino,
            Target::All(..) => ALL_KEY,
        }
    }

    fn name(&self) -> &str {
        match self {
            Target::Sandbox(node, _) => &node.name,
            Target::All(..) => "all",
        }
    }
}

/// An open file.
struct Handle {
    target: Target,
    nonblock: bool,
    /// End-of-file answers since the last data: when a read at the end parks.
    eofs: EofStreak,
}

/// What a read attempt found.
enum Attempt {
    Data(Vec<u8>),
    Eof,
    Park,
    Failed(FsError),
}

#[derive(Default)]
struct Nodes {
    by_name: BTreeMap<String, Arc<SandboxNode>>,
    /// By the base of their inode block.
    by_block: HashMap<u64, Arc<SandboxNode>>,
}

/// The filesystem model.
pub struct Fs {
    nodes: RwLock<Nodes>,
    handles: RwLock<HashMap<u64, Arc<Mutex<Handle>>>>,
    next_fh: AtomicU64,
    follow: Arc<Follow>,
    /// How many reads are parked, for ingest.
    demand: Arc<Demand>,
    /// Appends announced so far: a wake-up that took reads out of the list to try them
    /// sees whether one came meanwhile.
    appends: AtomicU64,
    owner: (u32, u32),
    started_ms: i64,
    /// Size of the benchmark-only [`ceiling`] file, when enabled.
    ceiling: Option<u64>,
    /// The time the follow rule goes by: the monotonic clock, or a test's.
    clock: Clock,
    /// `all.log` and `all.jsonl`, once set ([`Fs::set_all_views`]).
    all: RwLock<Option<Arc<AllViews>>>,
    me: Weak<Fs>,
}

/// A source of monotonic time.
type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

impl Fs {
    /// An empty filesystem; the root is owned by `owner` (uid, gid).
    pub fn new(owner: (u32, u32)) -> Arc<Fs> {
        Fs::with_ceiling(owner, None)
    }

    /// Like [`Fs::new`], with the benchmark-only [`ceiling`] file of `ceiling` bytes.
    pub fn with_ceiling(owner: (u32, u32), ceiling: Option<u64>) -> Arc<Fs> {
        Fs::with_clock(owner, ceiling, Box::new(Instant::now))
    }

    /// Like [`Fs::with_ceiling`], with the clock the follow rule reads (tests inject theirs).
    fn with_clock(owner: (u32, u32), ceiling: Option<u64>, clock: Clock) -> Arc<Fs> {
        let demand = Demand::new();
        Arc::new_cyclic(|me| Fs {
            nodes: RwLock::new(Nodes::default()),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            follow: Follow::new(demand.clone()),
            demand,
            appends: AtomicU64::new(0),
            owner,
            started_ms: now_ms(),
            ceiling,
            clock,
            all: RwLock::new(None),
            me: me.clone(),
        })
    }

    /// Whether a read waits for data now, for ingest to take writes in at once.
    pub fn demand(&self) -> Arc<Demand> {
        self.demand.clone()
    }

    /// Shows `all.log` and `all.jsonl` at the root, fed by every sandbox added from now on.
    pub fn set_all_views(&self, all: Arc<AllViews>) {
        *self.all.write() = Some(all);
    }

    fn all_views(&self) -> Option<Arc<AllViews>> {
        self.all.read().clone()
    }

    fn all_attr(&self, ino: u64) -> Option<Attr> {
        let all = self.all_views()?;
        let meta = all.meta();
        let size = all.size(ino == ALL_JSONL_INO);
        Some(Attr {
            ino,
            kind: NodeKind::File,
            size,
            perm: meta.mode,
            nlink: 1,
            uid: meta.uid,
            gid: meta.gid,
            mtime_ms: meta.mtime_ms,
        })
    }

    fn ceiling_attr(&self, size: u64) -> Attr {
        Attr {
            ino: ceiling::INO,
            kind: NodeKind::File,
            size,
            perm: 0o444,
            nlink: 1,
            uid: self.owner.0,
            gid: self.owner.1,
            mtime_ms: self.started_ms,
        }
    }

    fn root_attr(&self) -> Attr {
        let count = self.nodes.read().by_name.len() as u32;
        Attr {
            ino: ROOT_INO,
            kind: NodeKind::Dir,
            size: 0,
            perm: 0o555,
            nlink: 2 + count,
            uid: self.owner.0,
            gid: self.owner.1,
            mtime_ms: self.started_ms,
        }
    }

    fn dir_attr(node: &SandboxNode, ino: u64) -> Attr {
        let meta = node.timeline.meta();
        Attr {
            ino,
            kind: NodeKind::Dir,
            size: 0,
            perm: 0o555,
            nlink: 2,
            uid: meta.uid,
            gid: meta.gid,
            mtime_ms: meta.mtime_ms,
        }
    }

    /// A view's attributes: the owner and mode of `merged.log` (never more open than
    /// any source: a view renders from a subset of its files).
    fn file_attr(node: &SandboxNode, view: View) -> Attr {
        let meta = node.timeline.meta();
        Attr {
            ino: node.ino_of(Place::File(view)),
            kind: NodeKind::File,
            size: node.size(view),
            perm: meta.mode,
            nlink: 1,
            uid: meta.uid,
            gid: meta.gid,
            mtime_ms: meta.mtime_ms,
        }
    }

    fn attr_of(node: &SandboxNode, ino: u64, place: Place) -> Attr {
        match place {
            Place::Dir | Place::Sessions => Self::dir_attr(node, ino),
            Place::File(view) => Self::file_attr(node, view),
        }
    }

    /// The sandbox whose block holds `ino`, and what `ino` is in it.
    fn node(&self, ino: u64) -> Option<(Arc<SandboxNode>, Place)> {
        let node = self.nodes.read().by_block.get(&(ino / INODE_BLOCK * INODE_BLOCK)).cloned()?;
        let place = node.place(ino)?;
        Some((node, place))
    }

    /// Looks up `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        if parent == ROOT_INO {
            if let (Some(size), ceiling::NAME) = (self.ceiling, name) {
                return Ok(self.ceiling_attr(size));
            }
            let all = match name {
                "all.log" => self.all_attr(ALL_LOG_INO),
                "all.jsonl" => self.all_attr(ALL_JSONL_INO),
                _ => None,
            };
            if let Some(attr) = all {
                return Ok(attr);
            }
            let node = self.nodes.read().by_name.get(name).cloned().ok_or(FsError::NotFound)?;
            return Ok(Self::dir_attr(&node, node.dir_ino));
        }
        let (node, place) = self.node(parent).ok_or(FsError::NotFound)?;
        match place {
            Place::File(_) => Err(FsError::NotDir),
            Place::Dir if name == "sessions" && node.views.is_some() => {
                Ok(Self::dir_attr(&node, node.ino_of(Place::Sessions)))
            }
            Place::Dir => {
                let (_, view) = node.files().into_iter().find(|(n, _)| n == name).ok_or(FsError::NotFound)?;
                Ok(Self::file_attr(&node, view))
            }
            Place::Sessions => {
                let id: u64 = name.strip_suffix(".log").and_then(|n| n.parse().ok()).ok_or(FsError::NotFound)?;
                let views = node.views.as_ref().ok_or(FsError::NotFound)?;
                views.sessions().iter().find(|(i, _)| *i == id).ok_or(FsError::NotFound)?;
                Ok(Self::file_attr(&node, View::Text(TextView::Session(id))))
            }
        }
    }

    /// Attributes of `ino` (the same through every handle).
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT_INO {
            return Ok(self.root_attr());
        }
        if let (Some(size), ceiling::INO) = (self.ceiling, ino) {
            return Ok(self.ceiling_attr(size));
        }
        if let Some(attr) = (ino == ALL_LOG_INO || ino == ALL_JSONL_INO).then(|| self.all_attr(ino)).flatten() {
            return Ok(attr);
        }
        let (node, place) = self.node(ino).ok_or(FsError::NotFound)?;
        Ok(Self::attr_of(&node, ino, place))
    }

    /// Entries of directory `ino`, including `.` and `..`.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let dot = |ino| DirEntry { ino, kind: NodeKind::Dir, name: ".".into() };
        let dotdot = |ino| DirEntry { ino, kind: NodeKind::Dir, name: "..".into() };
        if ino == ROOT_INO {
            let nodes = self.nodes.read();
            let mut out = vec![dot(ROOT_INO), dotdot(ROOT_INO)];
            out.extend(nodes.by_name.values().map(|n| DirEntry {
                ino: n.dir_ino,
                kind: NodeKind::Dir,
                name: n.name.clone(),
            }));
            if self.ceiling.is_some() {
                out.push(DirEntry { ino: ceiling::INO, kind: NodeKind::File, name: ceiling::NAME.into() });
            }
            if self.all_views().is_some() {
                out.push(DirEntry { ino: ALL_LOG_INO, kind: NodeKind::File, name: "all.log".into() });
                out.push(DirEntry { ino: ALL_JSONL_INO, kind: NodeKind::File, name: "all.jsonl".into() });
            }
            return Ok(out);
        }
        let (node, place) = self.node(ino).ok_or(FsError::NotFound)?;
        let file =
            |name: String, view: View| DirEntry { ino: node.ino_of(Place::File(view)), kind: NodeKind::File, name };
        match place {
            Place::File(_) => Err(FsError::NotDir),
            Place::Dir => {
                let mut out = vec![dot(ino), dotdot(ROOT_INO)];
                out.extend(node.files().into_iter().map(|(name, view)| file(name, view)));
                if node.views.is_some() {
                    out.push(DirEntry {
                        ino: node.ino_of(Place::Sessions),
                        kind: NodeKind::Dir,
                        name: "sessions".into(),
                    });
                }
                Ok(out)
            }
            Place::Sessions => {
                let mut out = vec![dot(ino), dotdot(node.dir_ino)];
                let sessions = node.views.as_ref().map(|v| v.sessions()).unwrap_or_default();
                out.extend(sessions.into_iter().map(|(id, n)| DirEntry {
                    ino: node.dir_ino + SESSION_REL + n,
                    kind: NodeKind::File,
                    name: TextView::Session(id).file_name(),
                }));
                Ok(out)
            }
        }
    }

    /// Checks that `ino` is a directory that can be listed.
    pub fn opendir(&self, ino: u64) -> Result<(), FsError> {
        match self.getattr(ino)?.kind {
            NodeKind::Dir => Ok(()),
            NodeKind::File => Err(FsError::NotDir),
        }
    }

    /// Opens `merged.log` for reading; `flags` are the open(2) flags.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(FsError::ReadOnly);
        }
        if self.ceiling.is_some() && ino == ceiling::INO {
            return Ok(ceiling::FH);
        }
        let target = match (ino, self.all_views()) {
            (ALL_LOG_INO, Some(all)) => Target::All(all, false),
            (ALL_JSONL_INO, Some(all)) => Target::All(all, true),
            _ => {
                let (node, place) = self.node(ino).ok_or(FsError::NotFound)?;
                let Place::File(view) = place else { return Err(FsError::IsDir) };
                Target::Sandbox(node, view)
            }
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Handle { target, nonblock: flags & libc::O_NONBLOCK != 0, eofs: EofStreak::default() };
        self.handles.write().insert(fh, Arc::new(Mutex::new(handle)));
        Ok(fh)
    }

    /// Closes handle `fh`.
    pub fn release(&self, fh: u64) {
        self.handles.write().remove(&fh);
    }

    /// Reads up to `size` bytes at `offset` of handle `fh`. `flags` are the file's
    /// current flags (for `O_NONBLOCK`), `pid` the reading thread (for the signal
    /// watchdog). The reply may come later, from another thread (follow mode).
    pub fn read(&self, fh: u64, offset: u64, size: u32, flags: i32, pid: u32, reply: Box<dyn ReadReply>) {
        if let (Some(total), ceiling::FH) = (self.ceiling, fh) {
            return reply.data(ceiling::read(total, offset, size as usize));
        }
        let Some(handle) = self.handles.read().get(&fh).cloned() else {
            return reply.error(FsError::BadHandle);
        };
        let (attempt, key) = {
            let mut h = handle.lock();
            h.nonblock = flags & libc::O_NONBLOCK != 0;
            (Self::attempt(&mut h, offset, size, Some((self.clock)())), h.target.key())
        };
        match attempt {
            Attempt::Data(bytes) => reply.data(&bytes),
            Attempt::Eof => reply.data(&[]),
            Attempt::Failed(e) => reply.error(e),
            Attempt::Park => {
                self.follow.park(Parked { fh, offset, size, pid, key, since: Instant::now(), reply });
                // An append between the attempt and the park would otherwise be missed.
                self.wake(key);
            }
        }
    }

    /// One read attempt on a locked handle. `arrived` is when a new read arrived, `None`
    /// when a parked read is retried (it does not count as another end-of-file read).
    fn attempt(h: &mut Handle, offset: u64, size: u32, arrived: Option<Instant>) -> Attempt {
        let out = match h.target.read(offset, size as usize) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(sandbox = ?h.target.name(), offset, "cannot read the store: {e}");
                return Attempt::Failed(FsError::Io);
            }
        };
        if !out.is_empty() {
            h.eofs.reset();
            return Attempt::Data(out);
        }
        if h.target.is_closed() {
            return Attempt::Eof;
        }
        match arrived {
            None => Attempt::Park,
            Some(now) if !h.nonblock && h.eofs.park(now) => Attempt::Park,
            Some(_) => Attempt::Eof,
        }
    }

    /// Answers the parked reads on `key` that can now be answered. Reads that must wait
    /// on are out of the list while they are tried: the wake-up of an append in that
    /// window would miss them, so they are tried again until no append came meanwhile.
    fn wake(&self, key: u64) {
        loop {
            let seen = self.appends.load(Ordering::Acquire);
            if self.wake_once(key) == 0 || self.appends.load(Ordering::Acquire) == seen {
                return;
            }
        }
    }

    /// Something was appended to what readers on `key` read: wakes them.
    fn appended(&self, key: u64) {
        self.appends.fetch_add(1, Ordering::AcqRel);
        self.wake(key);
    }

    /// One round of [`Fs::wake`]; returns how many reads still wait.
    fn wake_once(&self, key: u64) -> usize {
        let mut still = Vec::new();
        for read in self.follow.take_for(key) {
            let handle = self.handles.read().get(&read.fh).cloned();
            let Some(handle) = handle else {
                read.reply.data(&[]);
                continue;
            };
            let attempt = Self::attempt(&mut handle.lock(), read.offset, read.size, None);
            match attempt {
                Attempt::Data(bytes) => read.reply.data(&bytes),
                Attempt::Eof => read.reply.data(&[]),
                Attempt::Failed(e) => read.reply.error(e),
                Attempt::Park => still.push(read),
            }
        }
        let waiting = still.len();
        self.follow.put_back(still);
        waiting
    }

    /// Reads parked right now (for tests and diagnostics).
    pub fn parked_reads(&self) -> usize {
        self.follow.parked_count()
    }

    /// Value of xattr `name` of `ino` ([`xattr`]).
    pub fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        self.getattr(ino)?;
        if let (ALL_LOG_INO | ALL_JSONL_INO, Some(all)) = (ino, self.all_views()) {
            return xattr::get_all(&all, ino == ALL_JSONL_INO, name);
        }
        let Some((node, Place::File(view))) = self.node(ino) else { return Err(FsError::NoAttr) };
        xattr::get(&node, view, name)
    }

    /// NUL-separated xattr names of `ino`.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.getattr(ino)?;
        match self.node(ino) {
            Some((_, Place::File(_))) => Ok(format!("{}\0", xattr::CURSOR).into_bytes()),
            _ => Ok(Vec::new()),
        }
    }

    /// Ends every parked read with end of file (unmount).
    pub fn shutdown(&self) {
        if let Some(all) = self.all_views() {
            all.flush();
        }
        self.follow.stop();
    }
}

impl Catalog for Fs {
    fn sandbox_added(&self, name: &str, timeline: Arc<Timeline>) {
        let dir_ino = timeline.ino_base();
        let views = match EpochViews::open(timeline.store().clone()) {
            Ok(views) => {
                let all = self.all_views();
                if let Some(all) = &all {
                    all.add(name, views.clone(), Some(timeline.clone()));
                }
                let observer = views.clone();
                timeline.set_observer(Arc::new(move |c| {
                    observer.on_commit(c);
                    if let Some(all) = &all {
                        all.on_commit(dir_ino, c);
                    }
                }));
                Some(views)
            }
            Err(e) => {
                tracing::warn!(sandbox = ?name, "cannot open the views (only merged.log is shown): {e}");
                None
            }
        };
        let node = Arc::new(SandboxNode {
            name: name.to_string(),
            dir_ino,
            file_ino: dir_ino + MERGED_REL,
            timeline: timeline.clone(),
            views,
        });
        let me = self.me.clone();
        let weak = Arc::downgrade(&node);
        timeline.subscribe(Arc::new(move || {
            if let (Some(fs), Some(node)) = (me.upgrade(), weak.upgrade()) {
                if node.timeline.is_closed() {
                    if let Some(views) = &node.views {
                        views.flush();
                    }
                }
                fs.appended(node.dir_ino);
                fs.appended(ALL_KEY);
            }
        }));
        let mut nodes = self.nodes.write();
        if let Some(old) = nodes.by_name.insert(name.to_string(), node.clone()) {
            nodes.by_block.remove(&old.dir_ino);
        }
        nodes.by_block.insert(node.dir_ino, node);
    }

    fn sandbox_removed(&self, name: &str) {
        let old = {
            let mut nodes = self.nodes.write();
            let old = nodes.by_name.remove(name);
            if let Some(old) = &old {
                nodes.by_block.remove(&old.dir_ino);
            }
            old
        };
        if let Some(old) = old {
            if let Some(views) = &old.views {
                views.save_meta(&old.timeline.meta());
            }
            if let Some(all) = self.all_views() {
                all.retire(old.dir_ino);
            }
        }
    }

    fn epoch_kept(&self, store: Arc<crate::store::EpochStore>) {
        let Some(all) = self.all_views() else { return };
        let name = store.header().name.clone();
        match EpochViews::open(store) {
            Ok(views) => all.add(&name, views, None),
            Err(e) => tracing::warn!(sandbox = ?name, "cannot open what all.log keeps of an ended sandbox: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;

//! Mounting: argument checks, stale-mountpoint recovery, the FUSE session, and a clean
//! unmount on SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use crate::fs::Fs;
use crate::fuse::FuseAdapter;
use crate::ingest;
use crate::mounter;
use crate::store::{Store, Syncer};

/// Worker threads of the FUSE session.
const FUSE_THREADS: usize = 4;

/// What `msbfs mount` needs.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The microsandbox home (holding `sandboxes/`).
    pub home: PathBuf,
    /// Let other users see the mount (`allow_other`).
    pub allow_other: bool,
    /// The state root; the store of this home lives in a subdirectory of it.
    pub state_dir: PathBuf,
    /// The store's budget in bytes (`None`: 10 % of the state filesystem, at most 4 GiB).
    pub max_store: Option<u64>,
    /// Size of the benchmark-only `/.bench-ceiling` file, if wanted.
    pub bench_ceiling: Option<u64>,
    /// Mount over a directory that is not empty (or is an msbfs mount already).
    pub nonempty: bool,
}

/// How often the store is made durable.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Why mounting failed.
#[derive(Debug)]
pub enum MountError {
    /// Bad arguments: a one-line message, exit code 2.
    Usage(String),
    /// Anything else.
    Io(std::io::Error),
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountError::Usage(m) => f.write_str(m),
            MountError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<std::io::Error> for MountError {
    fn from(e: std::io::Error) -> Self {
        MountError::Io(e)
    }
}

/// `$MSB_HOME`, else `~/.microsandbox`.
pub fn default_home() -> PathBuf {
    if let Some(home) = std::env::var_os("MSB_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let user_home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    user_home.join(".microsandbox")
}

/// Most stale mounts detached from one mountpoint (they can be stacked).
const MAX_STALE: usize = 8;

/// Checks the mountpoint, detaching mounts left stale by crashed daemons. A directory
/// that is not empty, or that is a live msbfs mount already, is refused unless
/// `nonempty`: mounting there would hide what is there.
fn prepare_mountpoint(mountpoint: &Path, nonempty: bool) -> Result<(), String> {
    let at = mountpoint.display();
    for _ in 0..MAX_STALE {
        // A dead FUSE mount may still answer `stat` from its attribute cache for a
        // while, but never `readdir`.
        let listing = std::fs::read_dir(mountpoint);
        let stale = listing.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
            || std::fs::metadata(mountpoint).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
        if !stale {
            match std::fs::metadata(mountpoint) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(format!("mountpoint {at} is not a directory")),
                Err(e) => return Err(format!("mountpoint {at}: {e}")),
            }
            if nonempty {
                return Ok(());
            }
            if is_msbfs_mount(mountpoint) {
                return Err(format!(
                    "{at} is already an msbfs mount; unmount it first (msbfs unmount {at}), or pass --nonempty to mount over it"
                ));
            }
            return match listing.map(|mut entries| entries.next().is_some()) {
                Ok(false) => Ok(()),
                Ok(true) => Err(format!("mountpoint {at} is not empty; pass --nonempty to mount over what is there")),
                Err(e) => Err(format!("mountpoint {at}: {e}")),
            };
        }
        tracing::warn!(mountpoint = %at, "stale mount (transport endpoint is not connected); detaching it");
        mounter::detach(mountpoint).map_err(|e| format!("cannot detach the stale mount on {at}: {e}"))?;
    }
    Err(format!("mountpoint {at}: {}", std::io::Error::from_raw_os_error(libc::ENOTCONN)))
}

/// True when `path` is the mount point of an msbfs mount (`/proc/self/mountinfo`).
pub fn is_msbfs_mount(path: &Path) -> bool {
    // A stale mount cannot be resolved (ENOTCONN): then the path as given, made absolute.
    let Ok(path) = path.canonicalize().or_else(|_| std::path::absolute(path)) else { return false };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    table.lines().any(|line| {
        let (mount, fstype) = match line.split_once(" - ") {
            Some((before, after)) => (before.split(' ').nth(4), after.split(' ').next()),
            None => (None, None),
        };
        fstype == Some("fuse.msbfs") && mount.map(unescape_mountinfo) == Some(path.clone())
    })
}

/// A mount point as `/proc/self/mountinfo` writes it: space, tab, newline and
/// backslash as three octal digits after a backslash.
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Checks that `home` holds a `sandboxes/` directory.
pub fn check_home(home: &Path) -> Result<(), String> {
    if home.join("sandboxes").is_dir() {
        Ok(())
    } else {
        Err(format!("{} has no sandboxes/ directory (is --home or $MSB_HOME a microsandbox home?)", home.display()))
    }
}

/// Every check that can fail before mounting, each reported (home and mountpoint
/// both, not only the first): the usage error lists one problem per line.
fn check_arguments(opts: &MountOptions) -> Result<(), MountError> {
    let mut problems = Vec::new();
    problems.extend(check_home(&opts.home).err());
    problems.extend(prepare_mountpoint(&opts.mountpoint, opts.nonempty).err());
    if opts.allow_other && !mounter::privileged() && !mounter::user_allow_other() {
        problems.push(format!(
            "--allow-other as an ordinary user needs the line user_allow_other in {} (add it as root)",
            mounter::FUSE_CONF
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(MountError::Usage(problems.join("\n")))
    }
}

fn fuse_config() -> fuser::Config {
    let mut config = fuser::Config::default();
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    config
}

enum Event {
    Signal(Signal),
    Ended(std::io::Result<()>),
    IngestPanicked(String),
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and returns them as a set
/// to wait on. Call it before any thread starts (threads inherit the mask), so no
/// thread dies of a stop signal and only a `sigwait` receives it.
pub fn block_stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    // Blocking signals of the own thread cannot fail with a valid set.
    let _ = set.thread_block();
    set
}

/// Mounts and serves until SIGINT/SIGTERM/SIGHUP, an external unmount, or a panic of
/// the ingest thread (then it unmounts and returns an error). `ready` runs once the
/// filesystem is mounted. The stop signals must already be blocked in every
/// thread ([`block_stop_signals`] first thing in `main`).
pub fn serve(opts: &MountOptions, ready: impl FnOnce()) -> Result<(), MountError> {
    check_arguments(opts)?;
    let limit = crate::limits::raise_nofile_limit();
    tracing::debug!(limit, "descriptor limit");
    let store = Store::open(&opts.state_dir, &opts.home, opts.max_store).map_err(|e| MountError::Usage(e.0))?;
    let stop_signals = block_stop_signals();

    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let owner = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = Fs::with_ceiling(owner, opts.bench_ceiling);
    let all = crate::view::all::AllViews::open(store.dir().join("all")).map_err(|e| {
        MountError::Usage(format!("state directory {}: cannot open all.log: {e}", store.dir().display()))
    })?;
    fs.set_all_views(all);
    let syncer = Syncer::start(store.clone(), SYNC_EVERY)?;
    let ingest = ingest::spawn(&opts.home, store.clone(), fs.clone(), fs.demand())?;
    let (tx, rx) = mpsc::channel();
    let panicked = tx.clone();
    ingest.on_panic(move |message| {
        let _ = panicked.send(Event::IngestPanicked(message));
    });
    let acl = if opts.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    let fd = match mounter::mount(&opts.mountpoint, opts.allow_other) {
        Ok(fd) => fd,
        Err(e) => {
            ingest.stop();
            syncer.stop();
            return Err(MountError::Io(e));
        }
    };
    let session = match fuser::Session::from_fd(FuseAdapter::new(fs.clone()), fd, acl, fuse_config()) {
        Ok(s) => s,
        Err(e) => {
            ingest.stop();
            syncer.stop();
            unmount(&opts.mountpoint);
            return Err(MountError::Io(e));
        }
    };
    let ended = tx.clone();
    std::thread::Builder::new().name("msbfs-fuse".into()).spawn(move || {
        let _ = ended.send(Event::Ended(session.run()));
    })?;
    std::thread::Builder::new().name("msbfs-signals".into()).spawn(move || {
        if let Ok(sig) = stop_signals.wait() {
            let _ = tx.send(Event::Signal(sig));
        }
    })?;
    tracing::info!(
        mountpoint = %opts.mountpoint.display(),
        home = %opts.home.display(),
        state = %store.dir().display(),
        budget = store.budget(),
        "mounted"
    );
    let mut service = crate::notify::Service::start(&opts.mountpoint);
    ready();
    let unmount_now = || {
        fs.shutdown();
        unmount(&opts.mountpoint);
        // The worker threads see the connection go away in different ways once we
        // unmounted; none of that is a failure of the stop we asked for.
        if let Ok(Event::Ended(Err(e))) = rx.recv_timeout(Duration::from_secs(3)) {
            tracing::debug!("session ended after unmount: {e}");
        }
    };
    let event = rx.recv();
    service.stopping();
    let result = match event {
        Ok(Event::Signal(sig)) => {
            tracing::info!("{sig}: unmounting");
            unmount_now();
            Ok(())
        }
        Ok(Event::IngestPanicked(message)) => {
            // The files would silently stop growing: better no mount than a stale one.
            tracing::error!("the ingest thread panicked: {message}; unmounting");
            unmount_now();
            let first_line = message.lines().next().unwrap_or_default();
            Err(MountError::Io(std::io::Error::other(format!("ingest failed ({first_line}); unmounted"))))
        }
        Ok(Event::Ended(r)) => r.map_err(MountError::Io),
        Err(_) => Ok(()),
    };
    fs.shutdown();
    ingest.stop();
    syncer.stop();
    tracing::info!("unmounted");
    result
}

/// `msbfs unmount`: unmounts an msbfs mount (umount(2) as root, fusermount3 -u
/// otherwise); the daemon serving it then exits. Anything else is refused.
pub fn unmount_command(mountpoint: &Path) -> Result<(), MountError> {
    if !is_msbfs_mount(mountpoint) {
        return Err(MountError::Usage(format!("{} is not an msbfs mount", mountpoint.display())));
    }
    mounter::unmount(mountpoint).map_err(MountError::Io)
}

fn unmount(mountpoint: &Path) {
    if let Err(e) = mounter::unmount(mountpoint) {
        tracing::warn!("unmount failed: {e}");
    }
}

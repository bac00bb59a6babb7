//! Watching the producer's directories and turning new lines into stored, published
//! bytes.
//!
//! One ingest thread per mounted filesystem, woken by the watcher thread
//! ([`watch::Watcher`], inotify on `sandboxes/`, each sandbox directory and each
//! `logs/` directory), by held fragments falling due, and at least every
//! [`FALLBACK_POLL`] for a full rescan. Each sandbox found resumes its saved epoch when
//! the store has one for the same sandbox directory, else starts a new one. Sandboxes
//! that appear or disappear are reported to a [`Catalog`]; ingest knows nothing of
//! files handles or FUSE.

pub mod access;
pub mod demand;
pub mod sandbox;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::codec::{push_varint, push_zigzag, Decoder};
use crate::source::dir::Access;
use crate::source::generation::{FileId, FileIdentity};
use crate::store::{SavedEpoch, Store};
use crate::timeline::Timeline;
use demand::Demand;
use sandbox::SandboxIngest;
use watch::{Wake, Watcher};

/// Longest wait between two full rescans of every sandbox, whatever inotify says.
pub const FALLBACK_POLL: Duration = Duration::from_millis(500);
/// Live sandboxes polled with a full scan per fallback tick: each is checked at least
/// every `n / SWEEP_PER_TICK` ticks, and 2,000 idle sandboxes cost little.
pub const SWEEP_PER_TICK: usize = 32;
/// How long after its last change a directory's mtime is trusted to say "unchanged"
/// (a change in the same clock tick as a listing leaves the mtime as it was).
const LISTING_SETTLES: Duration = Duration::from_secs(1);
/// Shortest time between two warnings about the same thing.
pub const WARN_REPEATS_EVERY: Duration = Duration::from_secs(600);
/// Longest sandbox name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Receives sandbox epochs as they appear and disappear.
pub trait Catalog: Send + Sync {
    /// A sandbox epoch started (first sight, resumed, or recreated under the same name).
    fn sandbox_added(&self, name: &str, timeline: Arc<Timeline>);
    /// The sandbox's epoch ended (its directory is gone or was replaced).
    fn sandbox_removed(&self, name: &str);
    /// An epoch whose sandbox is gone, kept (retired) for `all.log` until the budget
    /// drops it: found at start, or retired while msbfs was not running.
    fn epoch_kept(&self, epoch: Arc<crate::store::EpochStore>);
}

/// Set to anything in the environment of `msbfs mount`, makes the ingest thread panic
/// at its first wake-up (a change under `sandboxes/`): how the tests check that a
/// failing ingest stops the mount. Read once, by [`spawn`]; nothing else looks at it.
pub const TEST_PANIC_ENV: &str = "MSBFS_TEST_INGEST_PANIC";

/// A panic of the ingest thread on its way to whoever listens: the message or the
/// listener, whichever comes first, waits here for the other.
#[derive(Default)]
struct PanicSlot {
    message: Option<String>,
    listener: Option<Box<dyn FnOnce(String) + Send>>,
}

impl PanicSlot {
    /// Hands the message of a caught panic to the listener, or keeps it for one.
    fn report(slot: &Mutex<PanicSlot>, payload: Box<dyn std::any::Any + Send>) {
        let message = match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
            (Some(text), _) => text.to_string(),
            (_, Some(text)) => text.clone(),
            _ => "a panic without a message".to_string(),
        };
        let mut slot = slot.lock();
        match slot.listener.take() {
            Some(listener) => {
                drop(slot);
                listener(message);
            }
            None => slot.message = Some(message),
        }
    }
}

/// The running ingest thread; dropping it does not stop it, [`IngestHandle::stop`] does.
pub struct IngestHandle {
    wake: Sender<Wake>,
    thread: Option<JoinHandle<()>>,
    panic: Arc<Mutex<PanicSlot>>,
}

impl IngestHandle {
    /// Calls `listener` with the panic message if the ingest thread panics (at once if
    /// it already has). The files stop growing then, so the listener should end the mount.
    pub fn on_panic(&self, listener: impl FnOnce(String) + Send + 'static) {
        let mut slot = self.panic.lock();
        match slot.message.take() {
            Some(message) => {
                drop(slot);
                listener(message);
            }
            None => slot.listener = Some(Box::new(listener)),
        }
    }

    /// Stops the thread and waits for it; every epoch is checkpointed and closed first.
    pub fn stop(mut self) {
        let _ = self.wake.send(Wake::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The identity of a sandbox directory as the store records it (an epoch belongs to
/// one directory: recreated under the same name, it is a new epoch).
fn owner_bytes(identity: &FileIdentity) -> Vec<u8> {
    let mut out = Vec::new();
    push_varint(&mut out, identity.id.dev);
    push_varint(&mut out, identity.id.ino);
    push_varint(&mut out, identity.igen.map_or(0, |g| u64::from(g) + 1));
    push_zigzag(&mut out, identity.btime_ns.unwrap_or(i64::MIN));
    out
}

fn owner_of(bytes: &[u8]) -> Option<FileIdentity> {
    let mut d = Decoder::new(bytes);
    let id = FileId { dev: d.varint()?, ino: d.varint()? };
    let igen = d.varint()?.checked_sub(1).map(|g| g as u32);
    let btime_ns = Some(d.zigzag()?).filter(|b| *b != i64::MIN);
    Some(FileIdentity { id, igen, btime_ns })
}

/// The identity of directory `path`, not following a symlink.
fn dir_identity(path: &Path) -> std::io::Result<FileIdentity> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    FileIdentity::of_file(&dir)
}

/// Starts watching `home/sandboxes`, keeping what is rendered in `store` and reporting
/// epochs to `catalog`; writes are taken in at once while `demand` says a reader
/// waits. The first full scan and ingest of every sandbox completes before this
/// returns. A panic of the thread is caught and reported to the listener
/// of [`IngestHandle::on_panic`].
pub fn spawn(
    home: &Path,
    store: Arc<Store>,
    catalog: Arc<dyn Catalog>,
    demand: Arc<Demand>,
) -> std::io::Result<IngestHandle> {
    // Canonical, so that no component of a path below it may be a symlink.
    let sandboxes = home.join("sandboxes");
    let sandboxes = sandboxes.canonicalize().unwrap_or(sandboxes);
    let (tx, rx) = mpsc::channel();
    let watcher = Watcher::start(tx.clone(), demand, watch::LAZY_CONTENT)?;
    watcher.watch_sandboxes(&sandboxes);
    let (retired, saved): (Vec<SavedEpoch>, Vec<SavedEpoch>) =
        store.saved_epochs().into_iter().partition(|s| s.retired_ms.is_some());
    for epoch in store.open_retired(&retired) {
        catalog.epoch_kept(epoch);
    }
    let saved = saved.into_iter().map(|s| (s.header.name.clone(), s)).collect();
    let mut ingest = Ingest {
        sandboxes,
        store,
        catalog,
        watcher: Some(watcher),
        live: BTreeMap::new(),
        saved,
        warned: HashMap::new(),
        waiting: BTreeSet::new(),
        sweep_after: String::new(),
        sweep_waiting_after: String::new(),
        context: Vec::new(),
        listed: None,
        unpolled: BTreeSet::new(),
    };
    ingest.refresh_context();
    if ingest.rescan() {
        // Saved state of sandboxes that no longer exist is removed.
        for (name, saved) in std::mem::take(&mut ingest.saved) {
            tracing::info!(sandbox = ?name, "the sandbox no longer exists; its saved state is kept for all.log");
            ingest.keep_saved(&saved);
        }
    }
    let panic_for_test = std::env::var_os(TEST_PANIC_ENV).is_some();
    let panic = Arc::new(Mutex::new(PanicSlot::default()));
    let slot = panic.clone();
    let thread = std::thread::Builder::new().name("msbfs-ingest".into()).spawn(move || {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            if panic_for_test {
                let _ = rx.recv();
                panic!("{TEST_PANIC_ENV} is set: the ingest thread panics at its first wake-up");
            }
            ingest.run(rx)
        }));
        if let Err(payload) = ran {
            PanicSlot::report(&slot, payload);
        }
    })?;
    Ok(IngestHandle { wake: tx, thread: Some(thread), panic })
}

/// The next [`SWEEP_PER_TICK`] of the sorted `names` after `after`, wrapping around
/// to the start: every name comes in turn, each at most once per call.
fn in_turn<'a>(names: impl Iterator<Item = &'a String> + Clone, after: &str) -> Vec<String> {
    let later = names.clone().skip_while(|n| n.as_str() <= after);
    let earlier = names.take_while(|n| n.as_str() <= after);
    later.chain(earlier).take(SWEEP_PER_TICK).cloned().collect()
}

/// One sandbox being ingested.
struct Live {
    ingest: SandboxIngest,
    dir: PathBuf,
    identity: FileIdentity,
}

struct Ingest {
    sandboxes: PathBuf,
    store: Arc<Store>,
    catalog: Arc<dyn Catalog>,
    watcher: Option<Watcher>,
    live: BTreeMap<String, Live>,
    saved: HashMap<String, SavedEpoch>,
    warned: HashMap<String, (Instant, u64)>,
    /// Sandbox directories without a `logs/` yet (watched for it).
    waiting: BTreeSet<String>,
    /// The sweep of live sandboxes continues after this one.
    sweep_after: String,
    /// The sweep of waiting sandboxes continues after this one.
    sweep_waiting_after: String,
    /// Owner and mode of the directories from `/` to `sandboxes/`.
    context: Vec<Access>,
    /// `sandboxes/`'s (inode, mtime) at the last complete listing, and when that was.
    listed: Option<((u64, std::time::SystemTime), std::time::SystemTime)>,
    /// Sandboxes started whose history is not taken in yet ([`Ingest::poll_started`]).
    unpolled: BTreeSet<String>,
}

/// Most threads taking in the histories of sandboxes seen for the first time.
const FIRST_POLL_THREADS: usize = 4;
/// Sandboxes started before their first polls run (each holds descriptors until its
/// first poll closes what the budget cannot keep).
const FIRST_POLL_BATCH: usize = 16;

/// What a sandbox directory looks like.
enum Probe {
    /// A real directory with a real `logs/` directory.
    Ready(FileIdentity),
    /// A real directory without `logs/` yet.
    Waiting(FileIdentity),
    /// Confirmed gone (`ENOENT`, or no longer a directory).
    Gone,
    /// Something msbfs does not read: a symlink, or a `logs` that is not a directory.
    Skipped(&'static str),
}

/// Looks at `dir` without following a symlink. An error is neither there nor gone.
fn probe_sandbox(dir: &Path) -> std::io::Result<Probe> {
    let identity = match dir_identity(dir) {
        Ok(identity) => identity,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Probe::Gone),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Probe::Skipped("a symlink, not followed")),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            let link = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
            return Ok(if link { Probe::Skipped("a symlink, not followed") } else { Probe::Gone });
        }
        Err(e) => return Err(e),
    };
    match std::fs::symlink_metadata(dir.join("logs")) {
        Ok(meta) if meta.is_dir() => Ok(Probe::Ready(identity)),
        Ok(meta) if meta.file_type().is_symlink() => Ok(Probe::Skipped("its logs/ is a symlink, not followed")),
        Ok(_) => Ok(Probe::Skipped("its logs is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Probe::Waiting(identity)),
        Err(e) => Err(e),
    }
}

impl Ingest {
    fn watcher(&self) -> &Watcher {
        self.watcher.as_ref().expect("the watcher runs until shutdown")
    }

    fn run(mut self, rx: Receiver<Wake>) {
        let mut last_tick = Instant::now();
        loop {
            let next_flush = self.live.values().filter_map(|l| l.ingest.next_flush()).min();
            let until_flush = next_flush.map_or(FALLBACK_POLL, |at| at.saturating_duration_since(Instant::now()));
            let timeout = FALLBACK_POLL.saturating_sub(last_tick.elapsed()).min(until_flush);
            let first = match rx.recv_timeout(timeout) {
                Ok(wake) => Some(wake),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let now = Instant::now();
            let mut dirty: BTreeSet<String> = self
                .live
                .iter()
                .filter(|(_, l)| l.ingest.next_flush().is_some_and(|at| at <= now))
                .map(|(n, _)| n.clone())
                .collect();
            let mut listed = BTreeSet::new();
            let mut rescan = false;
            for wake in first.into_iter().chain(rx.try_iter()) {
                match wake {
                    Wake::Stop => return self.shutdown(),
                    Wake::Rescan => rescan = true,
                    Wake::Listed(name) => {
                        listed.insert(name);
                    }
                    Wake::Changed(name) => {
                        dirty.insert(name);
                    }
                }
            }
            for name in &listed {
                self.probe(name);
            }
            self.poll_started();
            if rescan || last_tick.elapsed() >= FALLBACK_POLL {
                self.refresh_context();
                self.rescan();
                self.sweep();
                last_tick = Instant::now();
            }
            for name in dirty {
                if let Some(live) = self.live.get_mut(&name) {
                    live.ingest.poll(false);
                }
            }
            self.store.enforce_budget();
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for (name, mut live) in std::mem::take(&mut self.live) {
            live.ingest.finish(true);
            self.catalog.sandbox_removed(&name);
        }
        if let Some(watcher) = self.watcher.take() {
            watcher.stop();
        }
        self.store.sync_all();
    }

    /// Warns about `key` once, then at most every [`WARN_REPEATS_EVERY`] with the
    /// count of repeats since (a bad name seen by every poll does not flood the log).
    fn warn_once(&mut self, key: String, message: impl FnOnce() -> String) {
        match self.warned.get_mut(&key) {
            None => {
                tracing::warn!("{}", message());
                self.warned.insert(key, (Instant::now(), 0));
            }
            Some((since, repeats)) => {
                *repeats += 1;
                if since.elapsed() >= WARN_REPEATS_EVERY {
                    tracing::warn!("{} (again {} times since the last warning)", message(), repeats);
                    *since = Instant::now();
                    *repeats = 0;
                }
            }
        }
    }

    /// Lists `sandboxes/`: starts the sandboxes not seen before, and ends the ones
    /// missing whose directory is confirmed gone. Live sandboxes still listed are not
    /// probed (inotify names the ones that change, and [`Ingest::sweep`] checks them
    /// all in turn, waiting ones too). Returns false when the listing failed: nothing
    /// changes then.
    fn rescan(&mut self) -> bool {
        // Unchanged since a listing that came well after its last change: nothing to do
        // (the entries of a directory cannot change without its mtime changing).
        let stamp = std::fs::symlink_metadata(&self.sandboxes).ok().and_then(|m| Some((m.ino(), m.modified().ok()?)));
        if let (Some(now), Some((then, listed_at))) = (stamp, self.listed) {
            if now == then && listed_at > now.1 + LISTING_SETTLES {
                return true;
            }
        }
        let listed_at = std::time::SystemTime::now();
        let mut names = BTreeSet::new();
        let listing = std::fs::read_dir(&self.sandboxes).and_then(|entries| {
            for entry in entries {
                names.insert(entry?.file_name());
            }
            Ok(())
        });
        if let Err(e) = listing {
            let dir = self.sandboxes.clone();
            self.warn_once(format!("list {}", e.kind()), || {
                format!("cannot list {}: {e}; what is known is kept, and listing is retried", dir.display())
            });
            return false;
        }
        let names: BTreeSet<String> = names
            .into_iter()
            .filter_map(|os_name| match os_name.to_str().filter(|n| n.len() <= MAX_NAME_LEN) {
                Some(name) => Some(name.to_string()),
                None => {
                    self.warn_once(format!("name {os_name:?}"), || {
                        format!("sandbox name {os_name:?} is not UTF-8 or longer than 128 bytes; skipped")
                    });
                    None
                }
            })
            .collect();
        // Both sorted: one merge finds the live ones missing and the names not live.
        let (mut missing, mut fresh) = (Vec::new(), Vec::new());
        let mut live = self.live.keys().peekable();
        for name in &names {
            while let Some(gone) = live.next_if(|l| *l < name) {
                missing.push(gone.clone());
            }
            if live.next_if(|l| *l == name).is_none() && !self.waiting.contains(name) {
                fresh.push(name.clone());
            }
        }
        missing.extend(live.cloned());
        for name in missing.iter().chain(&fresh) {
            self.probe(name);
        }
        self.poll_started();
        self.listed = stamp.map(|s| (s, listed_at));
        true
    }

    /// Reads the owner and mode of every directory from `/` to `sandboxes/` again, and
    /// hands them to every sandbox when they changed.
    fn refresh_context(&mut self) {
        let context: Vec<Access> = self
            .sandboxes
            .ancestors()
            .filter_map(|d| std::fs::symlink_metadata(d).ok())
            .map(|m| Access::of(&m))
            .collect();
        if context != self.context {
            self.context = context;
            for live in self.live.values_mut() {
                live.ingest.set_context(&self.context);
            }
        }
    }

    /// Looks at sandbox `name` again: starts it, ends it (only when its directory is
    /// confirmed gone, or replaced), or leaves it as it is when it cannot tell.
    fn probe(&mut self, name: &str) {
        let dir = self.sandboxes.join(name);
        let found = match probe_sandbox(&dir) {
            Ok(found) => found,
            Err(e) => {
                // Neither there nor confirmed gone: keep what is known.
                self.warn_once(format!("probe {name} {}", e.kind()), || {
                    format!("sandbox {name:?}: {e}; what is known is kept, and it is looked at again later")
                });
                return;
            }
        };
        let replaced = match (&found, self.live.get(name)) {
            (Probe::Ready(identity) | Probe::Waiting(identity), Some(live)) => !identity.same_as(&live.identity),
            (Probe::Gone, Some(_)) => true,
            _ => false,
        };
        if replaced {
            self.end(name);
        } else if let Some(live) = self.live.get_mut(name) {
            live.ingest.note_attrs_changed();
        }
        self.waiting.remove(name);
        match found {
            Probe::Ready(identity) if !self.live.contains_key(name) => self.start(name, &dir.join("logs"), identity),
            Probe::Waiting(_) if !self.live.contains_key(name) => {
                // Seen again when `logs/` appears; looked at once more after the watch
                // is in place, for a `logs/` made in between.
                self.watcher().watch_sandbox(name, &dir);
                self.waiting.insert(name.to_string());
                if let Ok(Probe::Ready(identity)) = probe_sandbox(&dir) {
                    self.waiting.remove(name);
                    self.start(name, &dir.join("logs"), identity);
                }
            }
            Probe::Skipped(why) => self.warn_once(format!("skip {name} {why}"), || format!("{dir:?}: {why}; skipped")),
            _ => {}
        }
    }

    /// Polls the next [`SWEEP_PER_TICK`] live sandboxes in turn with a full scan of
    /// their chains, checking that each is still there, and looks at the next
    /// [`SWEEP_PER_TICK`] waiting ones: the fallback for anything inotify did not
    /// report (a watch that could not be added, a lost event).
    fn sweep(&mut self) {
        for name in in_turn(self.live.keys(), &self.sweep_after) {
            self.probe(&name);
            if let Some(live) = self.live.get_mut(&name) {
                live.ingest.poll(true);
            }
            self.sweep_after = name;
        }
        for name in in_turn(self.waiting.iter(), &self.sweep_waiting_after) {
            self.probe(&name);
            self.sweep_waiting_after = name;
        }
        self.poll_started();
    }

    fn end(&mut self, name: &str) {
        let Some(mut live) = self.live.remove(name) else { return };
        tracing::info!(sandbox = ?name, "sandbox gone");
        live.ingest.finish(false);
        self.catalog.sandbox_removed(name);
        self.watcher().unwatch(live.ingest.logs());
        self.watcher().unwatch(&live.dir);
        self.store.retire_epoch(live.ingest.timeline().store());
    }

    /// Retires a saved epoch that will not be resumed (its sandbox is gone or was
    /// recreated) and hands it to the catalog for `all.log`.
    fn keep_saved(&mut self, saved: &SavedEpoch) {
        match self.store.open_epoch(saved) {
            Ok((epoch, _)) => {
                self.store.retire_epoch(&epoch);
                self.catalog.epoch_kept(epoch);
            }
            Err(reason) => tracing::warn!(dir = %saved.dir.display(), "saved state unreadable ({}); removed", reason.0),
        }
    }

    /// Resumes the saved epoch of `name` if it belongs to this very directory, else
    /// starts a new one.
    fn start(&mut self, name: &str, logs: &Path, identity: FileIdentity) {
        let dir = logs.parent().unwrap_or(logs).to_path_buf();
        let mut resumed = None;
        if let Some(saved) = self.saved.remove(name) {
            if owner_of(&saved.header.owner).is_some_and(|owner| owner.same_as(&identity)) {
                match self.store.open_epoch(&saved) {
                    Ok((epoch, recovered)) => match SandboxIngest::resume(name, logs, epoch.clone(), recovered) {
                        Ok(ingest) => resumed = Some(ingest),
                        Err(reason) => {
                            tracing::warn!(sandbox = ?name, "cannot resume the saved state ({reason}); new epoch");
                            self.store.remove_epoch(&epoch);
                        }
                    },
                    Err(reason) => tracing::warn!(sandbox = ?name, "saved state unreadable ({}); new epoch", reason.0),
                }
            } else {
                tracing::info!(sandbox = ?name, "the sandbox directory was recreated; new epoch");
                self.keep_saved(&saved);
            }
        }
        let ingest = match resumed {
            Some(ingest) => {
                tracing::info!(sandbox = ?name, size = ingest.timeline().size(), "sandbox resumed");
                ingest
            }
            None => match self.store.create_epoch(name, &owner_bytes(&identity)) {
                Ok(epoch) => {
                    tracing::info!(sandbox = ?name, "sandbox found");
                    SandboxIngest::create(name, logs, epoch)
                }
                Err(e) => {
                    self.warn_once(format!("create {name}"), || {
                        format!("sandbox {name:?}: cannot create its state: {e}")
                    });
                    return;
                }
            },
        };
        self.watcher().watch_logs(name, logs, ingest.trackers());
        self.watcher().watch_sandbox(name, &dir);
        let mut live = Live { ingest, dir, identity };
        live.ingest.set_context(&self.context);
        // Added before the first poll, so what derives views from each commit sees the
        // history commit by commit instead of reading it all back.
        self.catalog.sandbox_added(name, live.ingest.timeline().clone());
        self.live.insert(name.to_string(), live);
        self.unpolled.insert(name.to_string());
        // Each first poll ends by closing what the descriptor budget cannot keep: only a
        // few sandboxes wait for theirs at a time.
        if self.unpolled.len() >= FIRST_POLL_BATCH {
            self.poll_started();
        }
    }

    /// Gives every sandbox started since the last call its first poll, which takes in
    /// its whole history: several at a time, one per core (up to
    /// [`FIRST_POLL_THREADS`]), as sandboxes share nothing but the store.
    fn poll_started(&mut self) {
        let names = std::mem::take(&mut self.unpolled);
        let started: Vec<Mutex<&mut Live>> =
            self.live.iter_mut().filter(|(n, _)| names.contains(*n)).map(|(_, l)| Mutex::new(l)).collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cores.min(FIRST_POLL_THREADS).min(started.len());
        if threads <= 1 {
            started.into_iter().for_each(|l| l.into_inner().ingest.poll(true));
            return;
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    while let Some(live) = started.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        live.lock().ingest.poll(true);
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests;

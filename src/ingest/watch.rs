//! The watcher thread: inotify on `sandboxes/`, on each sandbox directory and on each
//! `logs/` directory. It only notices: after draining every queued event it takes a
//! snapshot of each chain that changed (opening new files at once, so a fast producer
//! cannot rotate a generation away before msbfs holds it), counts creations of live
//! files (so a generation lost anyway is announced), and tells the ingest loop which
//! sandboxes changed. It runs at a raised priority where allowed, so ingest or CPU load
//! does not starve it.
//!
//! Two inotify queues: one for names and attributes (creations, renames, removals,
//! owner and mode), always read at once, and one for writes to the files. The second
//! is read at once while a reader waits for data ([`Demand`]); otherwise at most once
//! per [`LAZY_CONTENT`], so a producer writing a line at a time wakes msbfs a few
//! times a second instead of at every write (the first write after a quiet spell is
//! still handed on at once). The kernel merges the repeated writes queued meanwhile.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use parking_lot::Mutex;

use super::demand::Demand;
use crate::source::tracker::ChainTracker;
use crate::source::{PerSource, SourceKind};

/// What the watcher tells the ingest loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Files of this sandbox changed.
    Changed(String),
    /// The entry of this sandbox in `sandboxes/` (or its `logs/`) changed: look at it.
    Listed(String),
    /// Events were lost or `sandboxes/` itself changed: list everything again.
    Rescan,
    /// The filesystem is stopping.
    Stop,
}

/// What a watch descriptor watches.
#[derive(Clone)]
enum Target {
    Sandboxes,
    Sandbox(String),
    Logs { name: String, trackers: PerSource<Arc<Mutex<ChainTracker>>> },
}

/// One of the two inotify queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Queue {
    /// Names and attributes: read at once.
    Names,
    /// Writes to files: read at once only while a reader waits.
    Writes,
}

#[derive(Default)]
struct Registry {
    targets: HashMap<(Queue, i32), Target>,
    by_path: HashMap<PathBuf, Vec<(Queue, WatchDescriptor)>>,
}

/// The running watcher.
pub struct Watcher {
    names: Mutex<Watches>,
    writes: Mutex<Watches>,
    registry: Arc<Mutex<Registry>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long the thread waits for events before checking whether it should stop.
const POLL_MS: i32 = 250;
/// While no reader waits, writes to a sandbox's files are handed on at most this
/// often (the first after a quiet spell at once).
pub const LAZY_CONTENT: Duration = Duration::from_millis(100);

/// The chain file `name` is: its source and chain index.
fn chain_file(name: &OsStr) -> Option<(SourceKind, u32)> {
    let name = name.to_str()?;
    SourceKind::ALL.into_iter().find_map(|kind| {
        let base = kind.file_name();
        if name == base {
            return Some((kind, 0));
        }
        let index: u32 = name.strip_prefix(base)?.strip_prefix('.')?.parse().ok()?;
        (1..=kind.rotated_siblings()).contains(&index).then_some((kind, index))
    })
}

impl Watcher {
    /// Starts the watcher thread, which reports to `wake` and reads writes eagerly
    /// while `demand` says a reader waits, otherwise at most once per `lazy`
    /// ([`LAZY_CONTENT`]).
    pub fn start(wake: Sender<Wake>, demand: Arc<Demand>, lazy: Duration) -> std::io::Result<Watcher> {
        let names = Inotify::init()?;
        let writes = Inotify::init()?;
        let watches = (names.watches(), writes.watches());
        let registry = Arc::new(Mutex::new(Registry::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (registry, stop) = (registry.clone(), stop.clone());
            std::thread::Builder::new()
                .name("msbfs-watch".into())
                .spawn(move || run([names, writes], &registry, &stop, &wake, &demand, lazy))?
        };
        Ok(Watcher {
            names: Mutex::new(watches.0),
            writes: Mutex::new(watches.1),
            registry,
            stop,
            thread: Some(thread),
        })
    }

    fn watches(&self, queue: Queue) -> &Mutex<Watches> {
        match queue {
            Queue::Names => &self.names,
            Queue::Writes => &self.writes,
        }
    }

    fn add(&self, path: &Path, queue: Queue, mask: WatchMask, target: Target) {
        let mask = mask | WatchMask::ONLYDIR | WatchMask::DONT_FOLLOW;
        match self.watches(queue).lock().add(path, mask) {
            Ok(wd) => {
                let mut reg = self.registry.lock();
                reg.targets.insert((queue, wd.get_watch_descriptor_id()), target);
                let wds = reg.by_path.entry(path.to_path_buf()).or_default();
                wds.retain(|(q, _)| *q != queue);
                wds.push((queue, wd));
            }
            Err(e) => tracing::debug!(path = ?path, "cannot watch: {e}"),
        }
    }

    /// Watches `sandboxes/` for sandboxes appearing and disappearing.
    pub fn watch_sandboxes(&self, path: &Path) {
        let mask =
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM | WatchMask::MOVED_TO | WatchMask::ATTRIB;
        self.add(path, Queue::Names, mask | WatchMask::DELETE_SELF | WatchMask::MOVE_SELF, Target::Sandboxes);
    }

    /// Watches a sandbox directory for its `logs/` appearing.
    pub fn watch_sandbox(&self, name: &str, path: &Path) {
        if self.registry.lock().by_path.contains_key(path) {
            return;
        }
        let mask =
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM | WatchMask::MOVED_TO | WatchMask::ATTRIB;
        self.add(path, Queue::Names, mask, Target::Sandbox(name.to_string()));
    }

    /// Watches a `logs/` directory, keeping `trackers` up to date with its chains.
    pub fn watch_logs(&self, name: &str, path: &Path, trackers: PerSource<Arc<Mutex<ChainTracker>>>) {
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::ATTRIB
            | WatchMask::EXCL_UNLINK;
        let target = Target::Logs { name: name.to_string(), trackers };
        self.add(path, Queue::Names, mask, target.clone());
        self.add(path, Queue::Writes, WatchMask::MODIFY | WatchMask::EXCL_UNLINK, target);
    }

    /// Stops watching `path`.
    pub fn unwatch(&self, path: &Path) {
        let wds = {
            let mut reg = self.registry.lock();
            let Some(wds) = reg.by_path.remove(path) else { return };
            for (queue, wd) in &wds {
                reg.targets.remove(&(*queue, wd.get_watch_descriptor_id()));
            }
            wds
        };
        for (queue, wd) in wds {
            let _ = self.watches(queue).lock().remove(wd);
        }
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Raises the calling thread's priority where allowed (root); otherwise no-op.
fn raise_priority() {
    // SAFETY: gettid and setpriority on the calling thread touch no memory of ours.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, -10);
    }
}

/// What draining the queues found.
#[derive(Default)]
struct Found {
    changed: BTreeSet<String>,
    listed: BTreeSet<String>,
    chains: Vec<Arc<Mutex<ChainTracker>>>,
    rescan: bool,
    overflow: bool,
}

/// Reads every event queued on `inotify` (the queue `queue`) into `found`.
fn drain(inotify: &mut Inotify, queue: Queue, buf: &mut [u8], registry: &Mutex<Registry>, found: &mut Found) {
    loop {
        let events = match inotify.read_events(buf) {
            Ok(events) => events,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!("reading inotify events failed: {e}");
                found.rescan = true;
                return;
            }
        };
        let reg = registry.lock();
        for event in events {
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                found.overflow = true;
                continue;
            }
            match reg.targets.get(&(queue, event.wd.get_watch_descriptor_id())) {
                Some(Target::Sandboxes) => match event.name.and_then(|n| n.to_str()) {
                    Some(name) => {
                        found.listed.insert(name.to_string());
                    }
                    None => found.rescan = true,
                },
                Some(Target::Sandbox(name)) => {
                    found.changed.insert(name.clone());
                    if event.name.is_none_or(|n| n == "logs") {
                        found.listed.insert(name.clone());
                    }
                }
                Some(Target::Logs { name, trackers }) => {
                    found.changed.insert(name.clone());
                    if event.name.is_none() {
                        // The logs directory itself (its owner or mode).
                        found.listed.insert(name.clone());
                    }
                    let Some((kind, index)) = event.name.and_then(chain_file) else { continue };
                    // A change of owner or mode is taken in by a snapshot too.
                    let moved = EventMask::CREATE
                        | EventMask::MOVED_TO
                        | EventMask::MOVED_FROM
                        | EventMask::DELETE
                        | EventMask::ATTRIB;
                    if !event.mask.intersects(moved) {
                        continue;
                    }
                    let tracker = &trackers[kind];
                    if index == 0 && event.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                        tracker.lock().note_create();
                    }
                    if !found.chains.iter().any(|t| Arc::ptr_eq(t, tracker)) {
                        found.chains.push(tracker.clone());
                    }
                }
                None => {}
            }
        }
    }
}

fn pollfd(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

fn run(
    mut queues: [Inotify; 2],
    registry: &Mutex<Registry>,
    stop: &AtomicBool,
    wake: &Sender<Wake>,
    demand: &Demand,
    lazy: Duration,
) {
    raise_priority();
    let mut buf = vec![0u8; 64 << 10];
    let [names, writes] = &mut queues;
    // While no reader waits: when the writes queue is read again (`None`: at once).
    let mut writes_from: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let writes_due = demand.eager() || writes_from.is_none_or(|at| now >= at);
        let mut fds = [pollfd(names.as_raw_fd()), pollfd(demand.fd()), pollfd(writes.as_raw_fd())];
        let (count, timeout) = match writes_from.filter(|_| !writes_due) {
            None => (3, POLL_MS),
            Some(at) => (2, ((at - now).as_micros().div_ceil(1000) as i32).min(POLL_MS)),
        };
        // SAFETY: poll on `count` pollfds of a live array.
        if unsafe { libc::poll(fds.as_mut_ptr(), count, timeout) } <= 0 {
            continue;
        }
        if fds[1].revents != 0 {
            // A reader began to wait: the writes queue is read now (next round).
            demand.clear();
            writes_from = None;
        }
        // Drain everything queued, then act once per chain and sandbox.
        let mut found = Found::default();
        if fds[0].revents != 0 {
            drain(names, Queue::Names, &mut buf, registry, &mut found);
        }
        if count == 3 && fds[2].revents != 0 {
            drain(writes, Queue::Writes, &mut buf, registry, &mut found);
            writes_from = (!demand.eager()).then(|| Instant::now() + lazy);
        }
        act(found, registry, wake);
    }
}

/// Takes the snapshots and sends the wake-ups that `found` calls for.
fn act(found: Found, registry: &Mutex<Registry>, wake: &Sender<Wake>) {
    let Found { changed, listed, chains, mut rescan, overflow } = found;
    if overflow {
        tracing::warn!("inotify events were lost (queue overflow); rescanning everything");
        let all: Vec<Arc<Mutex<ChainTracker>>> = registry
            .lock()
            .targets
            .values()
            .filter_map(|t| match t {
                Target::Logs { trackers, .. } => Some(trackers.0.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        for tracker in all {
            tracker.lock().resync();
        }
        rescan = true;
    }
    for tracker in chains {
        tracker.lock().snapshot();
    }
    for name in listed {
        let _ = wake.send(Wake::Listed(name));
    }
    for name in changed {
        let _ = wake.send(Wake::Changed(name));
    }
    if rescan {
        let _ = wake.send(Wake::Rescan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writes_wait_for_the_lazy_interval_unless_a_reader_waits() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let exec = logs.join("exec.log");
        let append =
            || std::fs::OpenOptions::new().create(true).append(true).open(&exec).unwrap().write_all(b"x\n").unwrap();
        append();
        let (tx, rx) = std::sync::mpsc::channel();
        let demand = Demand::new();
        let lazy = Duration::from_secs(2);
        let watcher = Watcher::start(tx, demand.clone(), lazy).unwrap();
        let trackers = PerSource::from_fn(|kind| Arc::new(Mutex::new(ChainTracker::new(kind, &logs, Vec::new()))));
        watcher.watch_logs("sb", &logs, trackers);
        let changed = || loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(Wake::Changed(name)) => return name,
                Ok(_) => continue,
                Err(e) => panic!("no change reported: {e}"),
            }
        };
        // The first write after a quiet spell is handed on at once; the ones that follow
        // within the interval wait for its end, together.
        append();
        assert_eq!(changed(), "sb");
        let first = Instant::now();
        append();
        append();
        assert_eq!(changed(), "sb");
        assert!(first.elapsed() >= lazy / 2, "handed on after {:?}, before the interval ended", first.elapsed());
        assert!(rx.try_recv().is_err(), "two writes, one wake-up");
        // A reader parks: what was written meanwhile is handed on at once.
        append();
        let parked = Instant::now();
        demand.set_parked(1);
        assert_eq!(changed(), "sb");
        assert!(parked.elapsed() < lazy / 2, "a waiting reader waited {:?}", parked.elapsed());
        watcher.stop();
    }

    #[test]
    fn chain_file_names_are_recognised_and_others_are_not() {
        assert_eq!(chain_file(OsStr::new("exec.log")), Some((SourceKind::Exec, 0)));
        assert_eq!(chain_file(OsStr::new("runtime.log.4")), Some((SourceKind::Runtime, 4)));
        assert_eq!(chain_file(OsStr::new("kernel.log")), Some((SourceKind::Kernel, 0)));
        for other in ["exec.log.5", "exec.log.0", "kernel.log.1", "exec.log.x", "exec.log.1.gz", "boot-error.json"] {
            assert_eq!(chain_file(OsStr::new(other)), None, "{other}");
        }
    }
}

//! The watcher thread: inotify on `sandboxes/`, on each sandbox directory and on each
//! `logs/` directory. It only notices: after draining every queued event it takes a
//! snapshot of each chain that changed (opening new files at once, so a fast producer
//! cannot rotate a generation away before msbfs holds it), counts creations of live
//! files (so a generation lost anyway is announced), and tells the ingest loop which
//! sandboxes changed. It runs at a raised priority where allowed, so ingest or CPU load
//! does not starve it.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use parking_lot::Mutex;

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
enum Target {
    Sandboxes,
    Sandbox(String),
    Logs { name: String, trackers: PerSource<Arc<Mutex<ChainTracker>>> },
}

#[derive(Default)]
struct Registry {
    targets: HashMap<i32, Target>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
}

/// The running watcher.
pub struct Watcher {
    watches: Mutex<Watches>,
    registry: Arc<Mutex<Registry>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long the thread waits for events before checking whether it should stop.
const POLL_MS: i32 = 250;

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
    /// Starts the watcher thread, which reports to `wake`.
    pub fn start(wake: Sender<Wake>) -> std::io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let watches = inotify.watches();
        let registry = Arc::new(Mutex::new(Registry::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (registry, stop) = (registry.clone(), stop.clone());
            std::thread::Builder::new()
                .name("msbfs-watch".into())
                .spawn(move || run(inotify, &registry, &stop, &wake))?
        };
        Ok(Watcher { watches: Mutex::new(watches), registry, stop, thread: Some(thread) })
    }

    fn add(&self, path: &Path, mask: WatchMask, target: Target) {
        let mask = mask | WatchMask::ONLYDIR | WatchMask::DONT_FOLLOW;
        match self.watches.lock().add(path, mask) {
            Ok(wd) => {
                let mut reg = self.registry.lock();
                reg.targets.insert(wd.get_watch_descriptor_id(), target);
                reg.by_path.insert(path.to_path_buf(), wd);
            }
            Err(e) => tracing::debug!(path = ?path, "cannot watch: {e}"),
        }
    }

    /// Watches `sandboxes/` for sandboxes appearing and disappearing.
    pub fn watch_sandboxes(&self, path: &Path) {
        let mask =
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM | WatchMask::MOVED_TO | WatchMask::ATTRIB;
        self.add(path, mask | WatchMask::DELETE_SELF | WatchMask::MOVE_SELF, Target::Sandboxes);
    }

    /// Watches a sandbox directory for its `logs/` appearing.
    pub fn watch_sandbox(&self, name: &str, path: &Path) {
        if self.registry.lock().by_path.contains_key(path) {
            return;
        }
        let mask =
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM | WatchMask::MOVED_TO | WatchMask::ATTRIB;
        self.add(path, mask, Target::Sandbox(name.to_string()));
    }

    /// Watches a `logs/` directory, keeping `trackers` up to date with its chains.
    pub fn watch_logs(&self, name: &str, path: &Path, trackers: PerSource<Arc<Mutex<ChainTracker>>>) {
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::MODIFY
            | WatchMask::ATTRIB
            | WatchMask::EXCL_UNLINK;
        self.add(path, mask, Target::Logs { name: name.to_string(), trackers });
    }

    /// Stops watching `path`.
    pub fn unwatch(&self, path: &Path) {
        let wd = {
            let mut reg = self.registry.lock();
            let Some(wd) = reg.by_path.remove(path) else { return };
            reg.targets.remove(&wd.get_watch_descriptor_id());
            wd
        };
        let _ = self.watches.lock().remove(wd);
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

fn run(mut inotify: Inotify, registry: &Mutex<Registry>, stop: &AtomicBool, wake: &Sender<Wake>) {
    raise_priority();
    let mut buf = vec![0u8; 64 << 10];
    let fd = inotify.as_raw_fd();
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, POLL_MS) } <= 0 {
            continue;
        }
        let mut changed = BTreeSet::new();
        let mut listed = BTreeSet::new();
        let mut chains: Vec<Arc<Mutex<ChainTracker>>> = Vec::new();
        let mut rescan = false;
        let mut overflow = false;
        // Drain everything queued, then act once per chain and sandbox.
        loop {
            let events = match inotify.read_events(&mut buf) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("reading inotify events failed: {e}");
                    rescan = true;
                    break;
                }
            };
            let reg = registry.lock();
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    overflow = true;
                    continue;
                }
                match reg.targets.get(&event.wd.get_watch_descriptor_id()) {
                    Some(Target::Sandboxes) => match event.name.and_then(|n| n.to_str()) {
                        Some(name) => {
                            listed.insert(name.to_string());
                        }
                        None => rescan = true,
                    },
                    Some(Target::Sandbox(name)) => {
                        changed.insert(name.clone());
                        if event.name.is_none_or(|n| n == "logs") {
                            listed.insert(name.clone());
                        }
                    }
                    Some(Target::Logs { name, trackers }) => {
                        changed.insert(name.clone());
                        if event.name.is_none() {
                            // The logs directory itself (its owner or mode).
                            listed.insert(name.clone());
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
                        if !chains.iter().any(|t| Arc::ptr_eq(t, tracker)) {
                            chains.push(tracker.clone());
                        }
                    }
                    None => {}
                }
            }
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! Watching the producer's directories and turning new lines into timeline appends.
//!
//! One thread per mounted filesystem: inotify (through `notify`) on `sandboxes/`, on
//! each sandbox directory and on each `logs/` directory feeds a channel; events are
//! coalesced and the affected sandboxes polled at once, with a full rescan at least
//! every [`FALLBACK_POLL`] for missed events. Sandboxes that appear or disappear are
//! reported to a [`Catalog`]; ingest knows nothing of files or FUSE.

pub mod sandbox;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};

use crate::source::generation::FileId;
use crate::source::Arrivals;
use crate::timeline::Timeline;
use sandbox::SandboxIngest;

/// Longest wait between two polls of every sandbox, whatever inotify says.
pub const FALLBACK_POLL: Duration = Duration::from_millis(500);
/// Longest sandbox name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Receives sandbox epochs as they appear and disappear.
pub trait Catalog: Send + Sync {
    /// A sandbox epoch started (first sight, or recreated under the same name).
    fn sandbox_added(&self, name: &str, timeline: Arc<Timeline>);
    /// The sandbox's epoch ended (its logs directory is gone or was replaced).
    fn sandbox_removed(&self, name: &str);
}

enum Wake {
    Changed(PathBuf),
    Rescan,
    Stop,
}

/// The running ingest thread; dropping it does not stop it, [`IngestHandle::stop`] does.
pub struct IngestHandle {
    wake: Sender<Wake>,
    thread: Option<JoinHandle<()>>,
}

impl IngestHandle {
    /// Stops the thread and waits for it; every epoch is closed first.
    pub fn stop(mut self) {
        let _ = self.wake.send(Wake::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Fresh epoch ids: unique across restarts with overwhelming probability.
fn new_epoch_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// Starts watching `home/sandboxes`, reporting epochs to `catalog`. The first full
/// scan and ingest of every sandbox completes before this returns.
pub fn spawn(home: &Path, catalog: Arc<dyn Catalog>) -> std::io::Result<IngestHandle> {
    let sandboxes = home.join("sandboxes");
    let (tx, rx) = mpsc::channel();
    let events = tx.clone();
    let arrivals = Arc::new(Arrivals::default());
    let opener = arrivals.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        // Opens and reads (msbfs's own among them) say nothing new.
        Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
        Ok(event) => {
            if matches!(event.kind, EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))) {
                // Hold every new live file at once, before a fast producer can
                // rotate it away while ingest is busy.
                for path in &event.paths {
                    opener.record(path);
                }
            }
            for path in event.paths {
                let _ = events.send(Wake::Changed(path));
            }
        }
        Err(_) => {
            let _ = events.send(Wake::Rescan);
        }
    })
    .map_err(std::io::Error::other)?;
    let mut ingest = Ingest { sandboxes, arrivals, catalog, watcher, live: BTreeMap::new(), watched: BTreeSet::new() };
    ingest.watch(&ingest.sandboxes.clone());
    ingest.rescan();
    let thread = std::thread::Builder::new().name("msbfs-ingest".into()).spawn(move || ingest.run(rx))?;
    Ok(IngestHandle { wake: tx, thread: Some(thread) })
}

struct Ingest {
    sandboxes: PathBuf,
    arrivals: Arc<Arrivals>,
    catalog: Arc<dyn Catalog>,
    watcher: notify::RecommendedWatcher,
    live: BTreeMap<String, SandboxIngest>,
    watched: BTreeSet<PathBuf>,
}

impl Ingest {
    fn watch(&mut self, path: &Path) {
        if self.watched.contains(path) {
            return;
        }
        match self.watcher.watch(path, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(path.to_path_buf());
            }
            Err(e) => tracing::debug!(path = %path.display(), "cannot watch: {e}"),
        }
    }

    fn unwatch(&mut self, path: &Path) {
        if self.watched.remove(path) {
            let _ = self.watcher.unwatch(path);
        }
    }

    fn run(mut self, rx: Receiver<Wake>) {
        let mut last_full = Instant::now();
        loop {
            let next_flush = self.live.values().filter_map(|sb| sb.next_flush()).min();
            let until_flush = next_flush.map_or(FALLBACK_POLL, |at| at.saturating_duration_since(Instant::now()));
            let timeout = FALLBACK_POLL.saturating_sub(last_full.elapsed()).min(until_flush);
            let first = match rx.recv_timeout(timeout) {
                Ok(wake) => Some(wake),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut dirty = BTreeSet::new();
            let now = Instant::now();
            dirty.extend(
                self.live.iter().filter(|(_, sb)| sb.next_flush().is_some_and(|at| at <= now)).map(|(n, _)| n.clone()),
            );
            let mut rescan = first.is_none() && last_full.elapsed() >= FALLBACK_POLL;
            for wake in first.into_iter().chain(rx.try_iter()) {
                match wake {
                    Wake::Stop => return self.shutdown(),
                    Wake::Rescan => rescan = true,
                    Wake::Changed(path) => match self.sandbox_of(&path) {
                        Some((name, true)) => {
                            dirty.insert(name);
                        }
                        _ => rescan = true,
                    },
                }
            }
            if rescan || last_full.elapsed() >= FALLBACK_POLL {
                self.rescan();
                last_full = Instant::now();
            } else {
                for name in dirty {
                    if let Some(sb) = self.live.get_mut(&name) {
                        sb.poll();
                    }
                }
            }
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for (name, mut sb) in std::mem::take(&mut self.live) {
            sb.finish();
            self.catalog.sandbox_removed(&name);
        }
    }

    /// For a path under `sandboxes/`: the sandbox name and whether it lies in `logs/`.
    fn sandbox_of(&self, path: &Path) -> Option<(String, bool)> {
        let rel = path.strip_prefix(&self.sandboxes).ok()?;
        let mut parts = rel.components();
        let name = parts.next()?.as_os_str().to_str()?.to_string();
        let in_logs = parts.next().is_some_and(|c| c.as_os_str() == "logs") && parts.next().is_some();
        Some((name, in_logs))
    }

    /// Lists `sandboxes/`, starts and ends epochs, and polls every live sandbox.
    fn rescan(&mut self) {
        let mut seen: BTreeMap<String, (PathBuf, FileId)> = BTreeMap::new();
        match std::fs::read_dir(&self.sandboxes) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let os_name = entry.file_name();
                    let Some(name) = os_name.to_str().filter(|n| n.len() <= MAX_NAME_LEN) else {
                        tracing::warn!(name = ?os_name, "sandbox name is not UTF-8 or longer than 128 bytes; skipped");
                        continue;
                    };
                    let dir = entry.path();
                    let logs = dir.join("logs");
                    match std::fs::metadata(&logs) {
                        Ok(meta) if meta.is_dir() => {
                            seen.insert(name.to_string(), (logs, FileId::of(&meta)));
                        }
                        _ => {
                            if dir.is_dir() {
                                self.watch(&dir);
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(dir = %self.sandboxes.display(), "cannot list sandboxes: {e}"),
        }
        let gone: Vec<String> = self
            .live
            .iter()
            .filter(|(name, sb)| seen.get(*name).is_none_or(|(_, id)| *id != sb.logs_id()))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(mut sb) = self.live.remove(&name) {
                tracing::info!(sandbox = %name, "sandbox gone");
                sb.finish();
                self.catalog.sandbox_removed(&name);
                let logs = self.sandboxes.join(&name).join("logs");
                self.unwatch(&logs);
                self.arrivals.forget_dir(&logs);
            }
        }
        for (name, (logs, id)) in seen {
            if !self.live.contains_key(&name) {
                tracing::info!(sandbox = %name, "sandbox found");
                self.watch(&logs);
                self.watch(&self.sandboxes.join(&name));
                let mut sb = SandboxIngest::with_arrivals(&name, &logs, id, new_epoch_id(), self.arrivals.clone());
                sb.poll();
                self.catalog.sandbox_added(&name, sb.timeline().clone());
                self.live.insert(name, sb);
            }
        }
        for sb in self.live.values_mut() {
            sb.poll();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::os::unix::ffi::OsStrExt;

    /// Records what ingest reports.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Catalog for Recorder {
        fn sandbox_added(&self, name: &str, _timeline: Arc<Timeline>) {
            self.0.lock().push(format!("+{name}"));
        }
        fn sandbox_removed(&self, name: &str) {
            self.0.lock().push(format!("-{name}"));
        }
    }

    fn wait_for(recorder: &Recorder, entry: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !recorder.0.lock().iter().any(|e| e == entry) {
            assert!(Instant::now() < deadline, "never saw {entry}: {:?}", recorder.0.lock());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn only_sandboxes_with_valid_names_and_logs_appear() {
        let home = tempfile::tempdir().unwrap();
        let sandboxes = home.path().join("sandboxes");
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let max = "y".repeat(MAX_NAME_LEN);
        for name in ["web", long.as_str(), max.as_str()] {
            std::fs::create_dir_all(sandboxes.join(name).join("logs")).unwrap();
        }
        std::fs::create_dir_all(sandboxes.join(std::ffi::OsStr::from_bytes(b"bad\xff")).join("logs")).unwrap();
        std::fs::create_dir_all(sandboxes.join("no-logs-yet")).unwrap();
        let recorder = Arc::new(Recorder::default());
        let handle = spawn(home.path(), recorder.clone()).unwrap();
        let mut seen = recorder.0.lock().clone();
        seen.sort();
        assert_eq!(seen, ["+web".to_string(), format!("+{max}")]);
        // A sandbox whose logs/ appears later is found; one that vanishes is removed.
        std::fs::create_dir(sandboxes.join("no-logs-yet").join("logs")).unwrap();
        wait_for(&recorder, "+no-logs-yet");
        std::fs::remove_dir_all(sandboxes.join("web")).unwrap();
        wait_for(&recorder, "-web");
        handle.stop();
    }
}

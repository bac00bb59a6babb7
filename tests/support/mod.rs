//! Shared harness of the kernel-free tests: a store and one sandbox's ingest over a real
//! logs directory, which can be stopped (cleanly or as if killed) and resumed, and the
//! replay check of every retained segment.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use msbfs::ingest::sandbox::SandboxIngest;
use msbfs::source::generation::GenRecord;
use msbfs::source::{find_generation, SourceKind};
use msbfs::store::Store;
use msbfs::timeline::replay::{replay_segment, ReplayError};
use msbfs::timeline::Timeline;

/// A store and one sandbox's ingest, which can be stopped and resumed.
pub struct Harness {
    state: tempfile::TempDir,
    logs: PathBuf,
    segment: u64,
    store: Option<Arc<Store>>,
    ingest: Option<SandboxIngest>,
}

impl Harness {
    /// A new epoch of sandbox `sb` reading `logs`, placing a segment checkpoint every
    /// `segment` bytes.
    pub fn new(logs: &Path, segment: u64) -> Harness {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path(), logs, Some(1 << 40)).unwrap();
        let ingest = SandboxIngest::create("sb", logs, store.create_epoch("sb", b"model").unwrap());
        ingest.timeline().set_segment_target(segment);
        Harness { state, logs: logs.to_path_buf(), segment, store: Some(store), ingest: Some(ingest) }
    }

    pub fn ingest(&mut self) -> &mut SandboxIngest {
        if self.ingest.is_none() {
            let store = Store::open(self.state.path(), &self.logs, Some(1 << 40)).unwrap();
            let saved = store.saved_epochs();
            assert_eq!(saved.len(), 1);
            let (epoch, recovered) = store.open_epoch(&saved[0]).unwrap_or_else(|e| panic!("reopen: {}", e.0));
            let ingest = SandboxIngest::resume("sb", &self.logs, epoch, recovered).unwrap();
            ingest.timeline().set_segment_target(self.segment);
            self.store = Some(store);
            self.ingest = Some(ingest);
        }
        self.ingest.as_mut().unwrap()
    }

    /// Stops ingest: cleanly (a final checkpoint), or as if killed (nothing more).
    pub fn stop(&mut self, clean: bool) {
        if let Some(mut ingest) = self.ingest.take() {
            if clean {
                ingest.finish(true);
            }
        }
        self.store = None;
    }

    pub fn timeline(&mut self) -> Arc<Timeline> {
        self.ingest().timeline().clone()
    }

    pub fn poll(&mut self) {
        self.ingest().poll(true);
    }

    /// Counts a creation of `kind`'s live file, as the watcher would.
    pub fn created(&mut self, kind: SourceKind) {
        if let Some(ingest) = self.ingest.as_ref() {
            ingest.trackers()[kind].lock().note_create();
        }
    }

    /// Checks every retained segment against its replay: equal, or a generation of
    /// it is no longer on disk.
    pub fn verify_replay(&mut self) -> usize {
        let logs = self.logs.clone();
        let resolve = |kind: SourceKind, rec: &GenRecord| find_generation(kind, &logs, rec);
        let store = self.timeline().store().clone();
        let mut replayed = 0;
        for seg in store.retained_segments() {
            match replay_segment(&store, &seg, &resolve) {
                Ok(_) => replayed += 1,
                Err(ReplayError::Missing(_)) => {}
                Err(e) => panic!("segment {}..{} does not replay: {e}", seg.start, seg.end),
            }
        }
        replayed
    }
}

/// Reads `[from, size)` of the timeline.
pub fn read_new(tl: &Timeline, from: u64) -> Vec<u8> {
    let size = tl.size();
    let mut out = Vec::new();
    while from + (out.len() as u64) < size {
        let part = tl.read(from + out.len() as u64, 1 << 20).expect("stored bytes are readable");
        assert!(!part.is_empty(), "read returned nothing inside the file");
        out.extend_from_slice(&part);
    }
    assert_eq!(out.len() as u64, size - from);
    out
}

/// Offsets of every segment checkpoint, ascending (the first is 0, the last starts the
/// open segment).
pub fn segment_starts(tl: &Timeline) -> Vec<u64> {
    let store = tl.store();
    let mut out: Vec<u64> = store.retained_segments().iter().map(|s| s.start).collect();
    out.push(store.open_segment().0);
    out
}

//! Parked reads: a read past the end that must wait (DESIGN §2.4) is stored here with
//! its reply instead of occupying a FUSE worker. It is answered by whoever appends
//! (through [`Follow::take_for`]), or by the watchdog thread: `EINTR` as soon as the
//! reader has a pending unblocked signal, end of file after [`PARK_LIMIT`].

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{FsError, ReadReply, SandboxNode};

/// How often the watchdog checks parked readers for signals.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(10);
/// Longest a read stays parked before it returns end of file.
pub const PARK_LIMIT: Duration = Duration::from_secs(30);

/// A read waiting for bytes past the end.
pub struct Parked {
    /// File handle it was issued on.
    pub fh: u64,
    /// Offset in the handle's view.
    pub offset: u64,
    /// Bytes requested.
    pub size: u32,
    /// Thread id of the reader (FUSE request pid).
    pub pid: u32,
    /// The sandbox the handle reads.
    pub node: Arc<SandboxNode>,
    /// When it parked.
    pub since: Instant,
    /// Where the answer goes.
    pub reply: Box<dyn ReadReply>,
}

/// Why the watchdog ended a parked read.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Interrupted,
    Expired,
}

#[derive(Default)]
struct State {
    parked: Vec<Parked>,
    stopping: bool,
}

/// The set of parked reads and the watchdog that polices them.
#[derive(Default)]
pub struct Follow {
    state: Mutex<State>,
    wake: Condvar,
    watchdog: Mutex<Option<JoinHandle<()>>>,
}

/// Pending, unblocked signals of thread `pid`, from `/proc/<pid>/status`
/// (`(SigPnd | ShdPnd) & !SigBlk`). `None` when the thread no longer exists.
pub fn pending_signals(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    Some((field("SigPnd:") | field("ShdPnd:")) & !field("SigBlk:"))
}

impl Follow {
    /// A hub whose watchdog thread starts with the first parked read.
    pub fn new() -> Arc<Follow> {
        Arc::new(Follow::default())
    }

    /// Parks `read`, starting the watchdog if needed.
    pub fn park(self: &Arc<Self>, read: Parked) {
        let mut state = self.state.lock();
        if state.stopping {
            drop(state);
            read.reply.data(&[]);
            return;
        }
        state.parked.push(read);
        drop(state);
        self.wake.notify_one();
        let mut watchdog = self.watchdog.lock();
        if watchdog.is_none() {
            let me = self.clone();
            *watchdog = std::thread::Builder::new().name("msbfs-watchdog".into()).spawn(move || me.watch()).ok();
        }
    }

    /// Removes and returns the reads parked on `node`.
    pub fn take_for(&self, node: &Arc<SandboxNode>) -> Vec<Parked> {
        let mut state = self.state.lock();
        let (mine, rest) = std::mem::take(&mut state.parked).into_iter().partition(|p| Arc::ptr_eq(&p.node, node));
        state.parked = rest;
        mine
    }

    /// Puts back reads that are still waiting.
    pub fn put_back(&self, reads: Vec<Parked>) {
        if reads.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        if state.stopping {
            drop(state);
            for read in reads {
                read.reply.data(&[]);
            }
            return;
        }
        state.parked.extend(reads);
    }

    /// Number of reads parked now.
    pub fn parked_count(&self) -> usize {
        self.state.lock().parked.len()
    }

    /// Answers every parked read with end of file and stops the watchdog.
    pub fn stop(&self) {
        let parked = {
            let mut state = self.state.lock();
            state.stopping = true;
            std::mem::take(&mut state.parked)
        };
        self.wake.notify_all();
        for read in parked {
            read.reply.data(&[]);
        }
        if let Some(thread) = self.watchdog.lock().take() {
            let _ = thread.join();
        }
    }

    fn verdict(read: &Parked) -> Verdict {
        match pending_signals(read.pid) {
            None => Verdict::Expired,
            Some(sigs) if sigs != 0 => Verdict::Interrupted,
            Some(_) if read.since.elapsed() >= PARK_LIMIT => Verdict::Expired,
            Some(_) => Verdict::Keep,
        }
    }

    fn watch(&self) {
        let mut state = self.state.lock();
        loop {
            if state.stopping {
                return;
            }
            if state.parked.is_empty() {
                self.wake.wait(&mut state);
                continue;
            }
            self.wake.wait_for(&mut state, WATCH_INTERVAL);
            // Verdicts are taken under the lock so an append never misses a read that
            // is momentarily out of the list.
            let mut done = Vec::new();
            let mut i = 0;
            while i < state.parked.len() {
                match Self::verdict(&state.parked[i]) {
                    Verdict::Keep => i += 1,
                    verdict => done.push((state.parked.swap_remove(i), verdict)),
                }
            }
            if done.is_empty() {
                continue;
            }
            drop(state);
            for (read, verdict) in done {
                match verdict {
                    Verdict::Interrupted => read.reply.error(FsError::Interrupted),
                    _ => read.reply.data(&[]),
                }
            }
            state = self.state.lock();
        }
    }
}

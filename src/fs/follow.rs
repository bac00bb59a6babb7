//! Follow mode (DESIGN §2.4): which reads at the end of the file wait (`EofStreak`),
//! and the reads waiting. A parked read is stored here with its reply instead of
//! occupying a FUSE worker. It is answered by whoever appends (through
//! [`Follow::take_for`]), or by the watchdog thread: `EINTR` as soon as the reader has a
//! pending unblocked signal, end of file after [`PARK_LIMIT`].

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{FsError, ReadReply};
use crate::ingest::demand::Demand;

/// How often the watchdog checks parked readers for signals.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(10);
/// Longest a read stays parked before it returns end of file.
pub const PARK_LIMIT: Duration = Duration::from_secs(30);
/// End-of-file answers in a row, each retried at once, before a read parks.
pub const EOF_REPLIES_BEFORE_BLOCKING: u32 = 2;
/// A read at the end arriving sooner than this after the handle's previous end-of-file
/// answer is a retry at once (`less +F` retries after 2 ms, a `while read` loop or a
/// blocking follower after microseconds); later, it is a reader that polls (busybox
/// `tail -f` and rsyslog `imfile` sleep a second or more between rounds).
pub const QUICK_RETRY: Duration = Duration::from_millis(20);

/// The end-of-file answers of one handle since it last returned data, deciding when
/// a read at the end parks: only a reader that retries at once, several times in a
/// row, waits for data. A reader that polls is answered at once every time, so one
/// handle never holds a reader of several files (`tail -f a b`) away from the others.
#[derive(Debug, Default)]
pub(super) struct EofStreak {
    /// End-of-file answers in the current run: each came within [`QUICK_RETRY`] of the
    /// one before.
    run: u32,
    /// When the last end-of-file answer was given.
    last: Option<Instant>,
}

impl EofStreak {
    /// A read at the end arriving at `now`: true when it should park. Otherwise it is
    /// answered with end of file at once, and counted.
    pub(super) fn park(&mut self, now: Instant) -> bool {
        let quick = self.last.is_some_and(|at| now.saturating_duration_since(at) < QUICK_RETRY);
        if quick && self.run >= EOF_REPLIES_BEFORE_BLOCKING {
            return true;
        }
        self.run = if quick { self.run + 1 } else { 1 };
        self.last = Some(now);
        false
    }

    /// The handle returned data: the next read at the end starts a new run.
    pub(super) fn reset(&mut self) {
        *self = EofStreak::default();
    }
}

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
    /// What growth can answer it: the inode block of the sandbox the handle reads, or
    /// [`super::ALL_KEY`] for `all.*`.
    pub key: u64,
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
    /// The watchdog waits for a park with no timeout (the list was empty).
    watchdog_idle: bool,
}

/// The set of parked reads and the watchdog that polices them.
pub struct Follow {
    state: Mutex<State>,
    wake: Condvar,
    watchdog: Mutex<Option<JoinHandle<()>>>,
    /// Told how many reads are parked after every change (ingest takes writes in at
    /// once while any is).
    demand: Arc<Demand>,
}

/// Pending, unblocked signals of thread `pid`, from `/proc/<pid>/status`
/// (`(SigPnd | ShdPnd) & !SigBlk`). `None` when the thread no longer exists; when its
/// status cannot be read for another reason (no descriptor left, say), none.
pub fn pending_signals(pid: u32) -> Option<u64> {
    let status = match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => return None,
        Err(_) => return Some(0),
    };
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
    /// A hub whose watchdog thread starts with the first parked read, telling `demand`
    /// how many reads are parked.
    pub fn new(demand: Arc<Demand>) -> Arc<Follow> {
        Arc::new(Follow { state: Mutex::default(), wake: Condvar::new(), watchdog: Mutex::new(None), demand })
    }

    /// Tells the demand how many reads are parked (called with the lock held, after
    /// every change of the list).
    fn counted(&self, state: &State) {
        self.demand.set_parked(state.parked.len());
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
        self.counted(&state);
        let idle = state.watchdog_idle;
        drop(state);
        if idle {
            self.wake.notify_one();
        }
        let mut watchdog = self.watchdog.lock();
        if watchdog.is_none() {
            let me = self.clone();
            *watchdog = std::thread::Builder::new().name("msbfs-watchdog".into()).spawn(move || me.watch()).ok();
        }
    }

    /// Removes and returns the reads parked on `key`.
    pub fn take_for(&self, key: u64) -> Vec<Parked> {
        let mut state = self.state.lock();
        let (mine, rest) = std::mem::take(&mut state.parked).into_iter().partition(|p| p.key == key);
        state.parked = rest;
        self.counted(&state);
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
        self.counted(&state);
        // The watchdog may have seen the list empty while they were out of it, and wait
        // for a park that never comes.
        let idle = state.watchdog_idle;
        drop(state);
        if idle {
            self.wake.notify_one();
        }
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
            let parked = std::mem::take(&mut state.parked);
            self.counted(&state);
            parked
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
                state.watchdog_idle = true;
                self.wake.wait(&mut state);
                state.watchdog_idle = false;
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
            self.counted(&state);
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

//! Whether a reader waits for new bytes right now, which decides how eagerly the
//! watcher hands on changes of file contents (DESIGN §3, ingest cost).
//!
//! While a read is parked at the end of a file (follow mode), and for a second after
//! the last one (a follower reads what woke it, then parks again), every change is
//! taken in at once: the reader is woken within a fraction of a millisecond of the producer's
//! write. While none is, a burst of writes is taken in at most once per
//! [`super::watch::LAZY_CONTENT`]: the first write after a quiet spell at once, the
//! rest together. Nobody can tell the difference (a reader that polls looks once a
//! second or so), and a busy sandbox costs a tenth of the CPU. Changes of the
//! directories (rotation, a new file) are always taken in at once.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The number of reads parked, and an eventfd that becomes readable when a read parks
/// while none was waiting, so the watcher's `poll` wakes to hand on what it was
/// collecting.
/// Without the eventfd (none could be created), every change is handed on at once.
#[derive(Debug)]
pub struct Demand {
    parked: AtomicUsize,
    /// When the last read was parked, in nanoseconds since `base`: a follower between
    /// two parked reads (it reads what woke it, then comes back) still counts.
    last_parked_ns: AtomicU64,
    base: Instant,
    event: Option<OwnedFd>,
}

/// How long after its last parked read a reader still counts as waiting.
pub const STILL_WAITING: Duration = Duration::from_secs(1);

impl Demand {
    /// No read parked.
    pub fn new() -> Arc<Demand> {
        // SAFETY: eventfd takes no pointer; the descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        let event = if fd < 0 {
            tracing::warn!(
                "no eventfd ({}): changes are taken in at once, at a higher CPU cost",
                std::io::Error::last_os_error()
            );
            None
        } else {
            // SAFETY: `fd` was just created and is owned by nothing else.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        Arc::new(Demand { parked: AtomicUsize::new(0), last_parked_ns: AtomicU64::new(0), base: Instant::now(), event })
    }

    /// Sets the number of reads parked now (called by follow mode under its lock, after
    /// every change of its list).
    pub fn set_parked(&self, parked: usize) {
        let was_eager = self.eager();
        self.parked.store(parked, Ordering::Release);
        if was_eager || parked > 0 {
            self.last_parked_ns.store(self.base.elapsed().as_nanos() as u64 + 1, Ordering::Release);
        }
        // Only a reader that finds the watcher collecting wakes it: a follower parking
        // again after each wake-up costs no write.
        if let (false, 1.., Some(event)) = (was_eager, parked, &self.event) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to a descriptor we own. A full
            // counter (EAGAIN) is as good as a write: the fd is readable either way.
            unsafe { libc::write(event.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// True while a read is parked, and for [`STILL_WAITING`] after the last one
    /// (always, without the eventfd).
    pub fn eager(&self) -> bool {
        if self.event.is_none() || self.parked.load(Ordering::Acquire) > 0 {
            return true;
        }
        let last = self.last_parked_ns.load(Ordering::Acquire);
        last > 0 && self.base.elapsed().as_nanos() as u64 + 1 - last < STILL_WAITING.as_nanos() as u64
    }

    /// The descriptor to poll, readable after reads began to wait (-1, which `poll`
    /// ignores, without one).
    pub(super) fn fd(&self) -> RawFd {
        self.event.as_ref().map_or(-1, |e| e.as_raw_fd())
    }

    /// Clears the descriptor's readiness.
    pub(super) fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer from a descriptor we own (or
        // fails on -1).
        unsafe { libc::read(self.fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(demand: &Demand) -> bool {
        let mut pfd = libc::pollfd { fd: demand.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one pollfd we own, without waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    #[test]
    fn the_first_parked_read_makes_the_descriptor_readable() {
        let demand = Demand::new();
        assert!(!demand.eager() && !readable(&demand));
        demand.set_parked(1);
        assert!(demand.eager() && readable(&demand));
        demand.clear();
        demand.set_parked(2);
        assert!(!readable(&demand), "only the rise from none signals");
        demand.set_parked(0);
        assert!(demand.eager(), "a follower between two parked reads still waits");
        demand.set_parked(1);
        assert!(!readable(&demand), "nor does a follower parking again");
        demand.set_parked(0);
        std::thread::sleep(STILL_WAITING);
        assert!(!demand.eager());
        demand.set_parked(1);
        assert!(readable(&demand), "a reader parking after a quiet spell signals");
    }
}

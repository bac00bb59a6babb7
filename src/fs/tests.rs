//! Kernel-free tests of the filesystem model: layout, attributes, follow-mode reads
//! (on a test clock: time only moves when a test moves it), the signal watchdog,
//! xattrs, and dropped ranges through every handle.

use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::ingest::sandbox::SandboxIngest;
use crate::simulate::{SimConfig, Simulator};
use crate::store::Store;

/// A reply that sends its answer down a channel.
struct ChanReply(mpsc::Sender<Result<Vec<u8>, FsError>>);

impl ReadReply for ChanReply {
    fn data(self: Box<Self>, bytes: &[u8]) {
        let _ = self.0.send(Ok(bytes.to_vec()));
    }
    fn error(self: Box<Self>, err: FsError) {
        let _ = self.0.send(Err(err));
    }
}

/// The clock of a test's [`Fs`]: stands still until [`TestClock::advance`].
#[derive(Clone)]
struct TestClock(Arc<Mutex<Instant>>);

impl TestClock {
    fn new() -> TestClock {
        TestClock(Arc::new(Mutex::new(Instant::now())))
    }

    fn advance(&self, by: Duration) {
        *self.0.lock() += by;
    }

    fn source(&self) -> Clock {
        let now = self.0.clone();
        Box::new(move || *now.lock())
    }
}

struct World {
    _dir: tempfile::TempDir,
    sim: Simulator,
    store: Arc<Store>,
    ingest: SandboxIngest,
    fs: Arc<Fs>,
    clock: TestClock,
}

impl World {
    fn new(rotate_bytes: u64) -> World {
        World::with_budget(rotate_bytes, 1 << 30)
    }

    fn with_budget(rotate_bytes: u64, budget: u64) -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SimConfig::new(dir.path(), "web");
        cfg.rotate_bytes = rotate_bytes;
        let sim = Simulator::new(cfg).unwrap();
        let logs = dir.path().join("sandboxes/web/logs");
        let store = Store::open(&dir.path().join("state"), dir.path(), Some(budget)).unwrap();
        let ingest = SandboxIngest::create("web", &logs, store.create_epoch("web", b"id").unwrap());
        let clock = TestClock::new();
        let fs = Fs::with_clock((0, 0), None, clock.source());
        fs.sandbox_added("web", ingest.timeline().clone());
        World { _dir: dir, sim, store, ingest, fs, clock }
    }

    fn poll(&mut self) {
        self.ingest.poll(true);
        self.store.enforce_budget();
    }

    fn write(&mut self, lines: usize) {
        for _ in 0..lines {
            self.sim.step().unwrap();
        }
        self.sim.finish().unwrap();
    }

    /// A small history, a handle that read two end-of-file answers at its end (so its
    /// next read there parks), and the size.
    fn at_end_after_two_eofs() -> (World, u64, u64) {
        let mut w = World::new(10 << 20);
        w.write(5);
        w.poll();
        let fh = w.open(libc::O_RDONLY);
        let size = w.ingest.timeline().size();
        for _ in 0..EOF_REPLIES_BEFORE_BLOCKING {
            assert_eq!(read_now(&w.fs, fh, size, 10).unwrap(), b"");
        }
        (w, fh, size)
    }

    fn file_ino(&self) -> u64 {
        let dir = self.fs.lookup(ROOT_INO, "web").unwrap();
        self.fs.lookup(dir.ino, MERGED_NAME).unwrap().ino
    }

    fn open(&self, flags: i32) -> u64 {
        self.fs.open(self.file_ino(), flags).unwrap()
    }
}

/// Issues a read and returns the channel its answer arrives on.
fn start_read(fs: &Fs, fh: u64, offset: u64, size: u32, flags: i32) -> mpsc::Receiver<Result<Vec<u8>, FsError>> {
    let (tx, rx) = mpsc::channel();
    fs.read(fh, offset, size, flags, std::process::id(), Box::new(ChanReply(tx)));
    rx
}

fn read_now(fs: &Fs, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
    start_read(fs, fh, offset, size, 0).recv_timeout(Duration::from_secs(5)).expect("read answered at once")
}

fn read_all(fs: &Fs, fh: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = read_now(fs, fh, out.len() as u64, 128 << 10).unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

#[test]
fn layout_and_attributes() {
    let mut w = World::new(10 << 20);
    w.write(50);
    w.poll();
    let root = w.fs.readdir(ROOT_INO).unwrap();
    assert_eq!(root.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), [".", "..", "web"]);
    let dir = w.fs.lookup(ROOT_INO, "web").unwrap();
    assert_eq!((dir.kind, dir.perm), (NodeKind::Dir, 0o555));
    let names: Vec<String> = w.fs.readdir(dir.ino).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, [".", "..", "merged.log"]);
    let file = w.fs.getattr(w.file_ino()).unwrap();
    assert_eq!(file.kind, NodeKind::File);
    assert_eq!(file.size, w.ingest.timeline().size());
    assert!(file.size > 0);
    // The simulator's files are 0644: merged.log is readable by all, writable by none.
    assert_eq!(file.perm, 0o444);
    assert_eq!(w.fs.lookup(ROOT_INO, "nope"), Err(FsError::NotFound));
    assert_eq!(w.fs.lookup(dir.ino, "exec.log"), Err(FsError::NotFound));
    assert_eq!(w.fs.open(dir.ino, libc::O_RDONLY), Err(FsError::IsDir));
}

#[test]
fn mode_is_never_more_permissive_than_a_source() {
    use std::os::unix::fs::PermissionsExt;
    let mut w = World::new(10 << 20);
    w.write(20);
    let logs = w._dir.path().join("sandboxes/web/logs");
    std::fs::set_permissions(logs.join("kernel.log"), std::fs::Permissions::from_mode(0o640)).unwrap();
    w.poll();
    assert_eq!(w.fs.getattr(w.file_ino()).unwrap().perm, 0o440);
}

#[test]
fn write_opens_are_refused() {
    let mut w = World::new(10 << 20);
    w.write(5);
    w.poll();
    let ino = w.file_ino();
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(w.fs.open(ino, flags), Err(FsError::ReadOnly));
    }
}

#[test]
fn sequential_read_returns_every_byte_then_end_of_file() {
    let mut w = World::new(16 << 10);
    w.write(3000);
    w.poll();
    let fh = w.open(libc::O_RDONLY);
    let bytes = read_all(&w.fs, fh);
    assert_eq!(bytes.len() as u64, w.ingest.timeline().size());
    let fh2 = w.open(libc::O_RDONLY);
    assert_eq!(read_all(&w.fs, fh2), bytes);
    // Reads inside the file are answered even when they start mid-segment.
    let mid = read_now(&w.fs, fh2, 100_000, 10).unwrap();
    assert_eq!(mid, &bytes[100_000..100_010]);
}

#[test]
fn two_end_of_file_reads_then_the_read_parks_until_data_arrives() {
    let mut w = World::new(10 << 20);
    w.write(10);
    w.poll();
    let fh = w.open(libc::O_RDONLY);
    let size = w.ingest.timeline().size();
    assert_eq!(read_now(&w.fs, fh, 0, 1 << 20).unwrap().len() as u64, size);
    assert_eq!(read_now(&w.fs, fh, size, 4096).unwrap(), b"");
    assert_eq!(read_now(&w.fs, fh, size, 4096).unwrap(), b"");
    let parked = start_read(&w.fs, fh, size, 4096, 0);
    assert!(parked.recv_timeout(Duration::from_millis(100)).is_err(), "third read at the end blocks");
    assert_eq!(w.fs.parked_reads(), 1);
    w.write(1);
    w.poll();
    let woken = parked.recv_timeout(Duration::from_secs(2)).expect("append wakes the read").unwrap();
    assert!(!woken.is_empty());
    assert_eq!(woken, w.ingest.timeline().read(size, 4096).unwrap());
    // Data reset the count: the next end-of-file read answers at once again.
    let end = size + woken.len() as u64;
    assert_eq!(read_now(&w.fs, fh, end, 4096).unwrap(), b"");
}

#[test]
fn a_reader_that_polls_is_answered_at_once_every_time() {
    let (w, fh, size) = World::at_end_after_two_eofs();
    // busybox tail -f and rsyslog imfile: a read at the end, a sleep, a read again.
    for pause in [QUICK_RETRY, Duration::from_millis(500), Duration::from_secs(1), Duration::from_secs(60)] {
        w.clock.advance(pause);
        let rx = start_read(&w.fs, fh, size, 4096, 0);
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)).expect("answered at once").unwrap(), b"");
    }
    assert_eq!(w.fs.parked_reads(), 0);
    // A reader of several files reads each at its end once per round: never parked.
    let other = w.open(libc::O_RDONLY);
    for _ in 0..5 {
        w.clock.advance(Duration::from_secs(1));
        for handle in [fh, other] {
            assert_eq!(read_now(&w.fs, handle, size, 4096).unwrap(), b"");
        }
    }
    assert_eq!(w.fs.parked_reads(), 0);
}

#[test]
fn only_end_of_file_reads_retried_at_once_several_times_in_a_row_park() {
    let (w, fh, size) = World::at_end_after_two_eofs();
    // A pause breaks the run: this read starts a new one and is answered at once.
    w.clock.advance(QUICK_RETRY);
    assert_eq!(read_now(&w.fs, fh, size, 10).unwrap(), b"");
    // Retried within QUICK_RETRY: the second answer of the run is end of file too, ...
    w.clock.advance(QUICK_RETRY - Duration::from_millis(1));
    assert_eq!(read_now(&w.fs, fh, size, 10).unwrap(), b"");
    // ... the third parks (less +F retries 2 ms after each end of file).
    w.clock.advance(Duration::from_millis(2));
    let parked = start_read(&w.fs, fh, size, 10, 0);
    assert!(parked.recv_timeout(Duration::from_millis(100)).is_err(), "the third quick retry parks");
    assert_eq!(w.fs.parked_reads(), 1);
    w.fs.shutdown();
    assert_eq!(parked.recv_timeout(Duration::from_secs(2)).unwrap().unwrap(), b"");
}

#[test]
fn nonblocking_handles_never_park() {
    let mut w = World::new(10 << 20);
    w.write(5);
    w.poll();
    let fh = w.open(libc::O_RDONLY | libc::O_NONBLOCK);
    let size = w.ingest.timeline().size();
    for _ in 0..5 {
        let rx = start_read(&w.fs, fh, size, 4096, libc::O_NONBLOCK);
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap().unwrap(), b"");
    }
    // fcntl(O_NONBLOCK) after open is honoured too: the read flags carry it.
    let blocking = w.open(libc::O_RDONLY);
    for _ in 0..5 {
        let rx = start_read(&w.fs, blocking, size, 4096, libc::O_NONBLOCK);
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap().unwrap(), b"");
    }
    assert_eq!(w.fs.parked_reads(), 0);
}

#[test]
fn parked_reads_end_with_eof_when_the_sandbox_goes_away() {
    let (w, fh, size) = World::at_end_after_two_eofs();
    let parked = start_read(&w.fs, fh, size, 10, 0);
    assert!(parked.recv_timeout(Duration::from_millis(50)).is_err());
    w.fs.sandbox_removed("web");
    w.ingest.timeline().close();
    assert_eq!(parked.recv_timeout(Duration::from_secs(2)).unwrap().unwrap(), b"");
    assert_eq!(w.fs.lookup(ROOT_INO, "web"), Err(FsError::NotFound));
    // The open handle still reads what exists, then end of file without blocking.
    assert_eq!(read_now(&w.fs, fh, 0, 10).unwrap().len(), 10);
    for _ in 0..3 {
        assert_eq!(read_now(&w.fs, fh, size, 10).unwrap(), b"");
    }
}

#[test]
fn shutdown_answers_parked_reads() {
    let (w, fh, size) = World::at_end_after_two_eofs();
    let parked = start_read(&w.fs, fh, size, 10, 0);
    w.fs.shutdown();
    assert_eq!(parked.recv_timeout(Duration::from_secs(2)).unwrap().unwrap(), b"");
}

/// A stopped child with SIGUSR1 pending: the state of a reader stuck in a FUSE read
/// when a signal arrives.
struct StoppedChild(std::process::Child);

impl StoppedChild {
    fn with_pending_signal() -> StoppedChild {
        let child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Until it has exec'd, the child runs with every signal blocked (posix_spawn),
        // and a signal sent then is pending but not deliverable.
        while std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap().trim() != "sleep" {
            assert!(std::time::Instant::now() < deadline, "child did not exec");
            std::thread::sleep(Duration::from_millis(1));
        }
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        while !std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap().contains(") T ") {
            assert!(std::time::Instant::now() < deadline, "child did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
        StoppedChild(child)
    }
}

impl Drop for StoppedChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watchdog_interrupts_a_reader_with_a_pending_signal() {
    let (w, fh, size) = World::at_end_after_two_eofs();
    // Our own thread has nothing pending: its read stays parked.
    let quiet = start_read(&w.fs, fh, size, 10, 0);
    let child = StoppedChild::with_pending_signal();
    assert_ne!(follow::pending_signals(child.0.id()), Some(0));
    let (tx, rx) = mpsc::channel();
    w.fs.read(fh, size, 10, 0, child.0.id(), Box::new(ChanReply(tx)));
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), Err(FsError::Interrupted));
    assert!(quiet.recv_timeout(Duration::from_millis(100)).is_err());
    w.fs.shutdown();
}

#[test]
fn watchdog_ends_reads_of_vanished_threads() {
    let (w, fh, size) = World::at_end_after_two_eofs();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let (tx, rx) = mpsc::channel();
    w.fs.read(fh, size, 10, 0, pid, Box::new(ChanReply(tx)));
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), Ok(Vec::new()));
}

#[test]
fn cursor_xattr_names_the_exec_file_and_merged_size() {
    use std::os::unix::fs::MetadataExt;
    let mut w = World::new(10 << 20);
    w.write(100);
    w.poll();
    let ino = w.file_ino();
    assert_eq!(w.fs.listxattr(ino).unwrap(), b"user.cursor\0");
    assert_eq!(w.fs.getxattr(ino, "user.other"), Err(FsError::NoAttr));
    let text = String::from_utf8(w.fs.getxattr(ino, "user.cursor").unwrap()).unwrap();
    let positions = cursor::decode(&text).unwrap();
    let exec = std::fs::metadata(w._dir.path().join("sandboxes/web/logs/exec.log")).unwrap();
    assert_eq!(positions.len(), 4);
    assert_eq!((positions[0].generation, positions[0].offset), (exec.ino(), exec.len()));
    assert_eq!(
        (positions[3].generation, positions[3].offset),
        (w.ingest.timeline().epoch(), w.ingest.timeline().size())
    );
}

#[test]
fn dropped_ranges_read_as_notices_through_every_handle_and_nothing_shifts() {
    let mut w = World::with_budget(10 << 20, 1 << 20);
    for _ in 0..100 {
        w.write(200);
        w.poll();
    }
    let timeline = w.ingest.timeline().clone();
    let dropped = timeline.store().dropped();
    assert!(dropped > 0, "the budget dropped the oldest segments");
    let size = timeline.size();
    let fh = w.open(libc::O_RDONLY);
    let bytes = read_all(&w.fs, fh);
    assert_eq!(bytes.len() as u64, size, "every offset is still there");
    assert_eq!(w.fs.getattr(w.file_ino()).unwrap().size, size);
    let text = String::from_utf8_lossy(&bytes[..dropped as usize]);
    assert!(text.lines().all(|l| l.contains(" msbfs ") && l.len() < 4096), "the dropped range is notice text");
    assert!(text.contains("were dropped to keep the msbfs store within its budget"));
    // Another handle sees the very same bytes at the very same offsets.
    let fh2 = w.open(libc::O_RDONLY);
    assert_eq!(read_now(&w.fs, fh2, dropped - 50, 100).unwrap(), &bytes[dropped as usize - 50..dropped as usize + 50]);
    assert_eq!(read_all(&w.fs, fh2), bytes);
}

//! Kernel-free tests of the filesystem model: layout, attributes, follow-mode reads
//! (on a test clock: time only moves when a test moves it), the signal watchdog,
//! xattrs, and dropped ranges through every handle.

use std::io::Write;
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
    assert_eq!(
        names,
        [
            ".",
            "..",
            "merged.log",
            "merged.jsonl",
            "program.log",
            "stdout.log",
            "stderr.log",
            "output.log",
            "system.log",
            "runtime.log",
            "kernel.log",
            "sessions"
        ]
    );
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
fn a_read_put_back_after_a_retry_is_still_watched_for_signals() {
    let follow = follow::Follow::new(crate::ingest::demand::Demand::new());
    let parked = |pid: u32, reply: ChanReply| follow::Parked {
        fh: 1,
        offset: 0,
        size: 10,
        pid,
        key: 7,
        since: std::time::Instant::now(),
        reply: Box::new(reply),
    };
    // A read of this thread starts the watchdog; taken out to be retried, it leaves the
    // list empty, and the watchdog waits for the next park.
    let (own, _own_rx) = mpsc::channel();
    // SAFETY: gettid has no arguments and touches no memory.
    follow.park(parked(unsafe { libc::gettid() } as u32, ChanReply(own)));
    assert_eq!(follow.take_for(7).len(), 1);
    std::thread::sleep(Duration::from_millis(100));
    // Put back after a retry that found nothing: its reader's signal still ends it.
    let child = StoppedChild::with_pending_signal();
    let (tx, rx) = mpsc::channel();
    follow.put_back(vec![parked(child.0.id(), ChanReply(tx))]);
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), Err(FsError::Interrupted));
    follow.stop();
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
    let positions = crate::timeline::cursor::decode(&text).unwrap();
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

/// The inode of `path` (`merged.log`, `sessions/7.log`) in sandbox `web`.
fn view_ino(w: &World, path: &str) -> u64 {
    let mut ino = w.fs.lookup(ROOT_INO, "web").unwrap().ino;
    for part in path.split('/') {
        ino = w.fs.lookup(ino, part).unwrap().ino;
    }
    ino
}

fn read_view(w: &World, path: &str) -> Vec<u8> {
    let fh = w.fs.open(view_ino(w, path), libc::O_RDONLY).unwrap();
    let bytes = read_all(&w.fs, fh);
    w.fs.release(fh);
    bytes
}

fn xattr(w: &World, path: &str, name: &str) -> Result<String, FsError> {
    w.fs.getxattr(view_ino(w, path), name).map(|v| String::from_utf8(v).unwrap())
}

/// The lines of `bytes`, each with its newline.
fn lines_of(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&b| b == b'\n').collect()
}

/// The tag of a rendered line (`stdout[7]`).
fn tag_of(line: &[u8]) -> &str {
    let rest = &line[25..];
    std::str::from_utf8(&rest[..rest.iter().position(|&b| b == b' ').unwrap_or(0)]).unwrap()
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

/// The records of exec.log as the producer wrote them, oldest file first: (s, id, d).
fn exec_records(logs: &std::path::Path) -> Vec<(String, Option<u64>, Vec<u8>)> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for name in ["exec.log.4", "exec.log.3", "exec.log.2", "exec.log.1", "exec.log"] {
        let Ok(text) = std::fs::read(logs.join(name)) else { continue };
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            let d = v["d"].as_str().unwrap();
            let d = if v["e"] == "b64" {
                base64::engine::general_purpose::STANDARD.decode(d).unwrap()
            } else {
                d.as_bytes().to_vec()
            };
            out.push((v["s"].as_str().unwrap().to_string(), v["id"].as_u64(), d));
        }
    }
    out
}

/// A history with rotations of exec.log and runtime.log, all still on disk.
fn views_world() -> World {
    let mut w = World::new(256 << 10);
    for _ in 0..30 {
        w.write(100);
        w.poll();
    }
    w.sim.finish().unwrap();
    w.poll();
    w
}

#[test]
fn text_views_hold_exactly_their_lines_of_merged_log_in_order() {
    let w = views_world();
    let merged = read_view(&w, "merged.log");
    let merged_lines = lines_of(&merged);
    let pick = |keep: &dyn Fn(&str) -> bool| -> Vec<u8> {
        merged_lines.iter().filter(|l| keep(tag_of(l))).flat_map(|l| l.iter().copied()).collect()
    };
    let base = |t: &str| t.split('[').next().unwrap().to_string();
    for (file, tags) in [
        ("program.log", &["stdout", "stderr", "output"][..]),
        ("stdout.log", &["stdout"]),
        ("stderr.log", &["stderr"]),
        ("output.log", &["output"]),
        ("system.log", &["system"]),
        ("runtime.log", &["runtime"]),
        ("kernel.log", &["kernel"]),
    ] {
        let view = read_view(&w, file);
        let want = pick(&|t| tags.contains(&base(t).as_str()));
        if view != want {
            let (v, m) = (lines_of(&view), lines_of(&want));
            let i = v.iter().zip(&m).position(|(a, b)| a != b).unwrap_or(v.len().min(m.len()));
            panic!(
                "{file}: {} lines, want {}; first difference at line {i}: {:?} vs {:?}",
                v.len(),
                m.len(),
                v.get(i).map(|l| String::from_utf8_lossy(l)),
                m.get(i).map(|l| String::from_utf8_lossy(l))
            );
        }
        assert_eq!(w.fs.getattr(view_ino(&w, file)).unwrap().size, view.len() as u64);
        assert!(!view.is_empty() || file == "output.log", "{file} is not empty");
    }
    // Sessions: every id seen, each with its own lines.
    let listed: Vec<String> = w.fs.readdir(view_ino(&w, "sessions")).unwrap().into_iter().map(|e| e.name).collect();
    let records = exec_records(&w._dir.path().join("sandboxes/web/logs"));
    let ids: std::collections::BTreeSet<u64> = records.iter().filter_map(|r| r.1).collect();
    assert!(ids.len() > 1, "the simulator runs several sessions");
    let mut expected: Vec<String> = vec![".".into(), "..".into()];
    expected.extend(ids.iter().map(|id| format!("{id}.log")));
    assert_eq!(listed, expected);
    for id in &ids {
        let view = read_view(&w, &format!("sessions/{id}.log"));
        assert_eq!(view, pick(&|t| t.ends_with(&format!("[{id}]"))), "session {id}");
    }
    // Independently of the renderer: each stream's text is exec.log's, line for line.
    for (stream, id) in records
        .iter()
        .filter(|r| r.0 != "system")
        .map(|r| (r.0.clone(), r.1))
        .collect::<std::collections::BTreeSet<_>>()
    {
        let data: Vec<u8> =
            records.iter().filter(|r| r.0 == stream && r.1 == id).flat_map(|r| r.2.iter().copied()).collect();
        // A line is its text without the newline and a carriage return before it.
        let want: Vec<&[u8]> = data
            .split_inclusive(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\n").unwrap_or(l))
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect();
        let tag = match id {
            Some(id) => format!("{stream}[{id}]"),
            None => stream.clone(),
        };
        let view = read_view(&w, &format!("{stream}.log"));
        let got: Vec<&[u8]> = lines_of(&view)
            .into_iter()
            .filter(|l| tag_of(l) == tag)
            .map(|l| &l[25 + tag.len() + 1..l.len() - 1])
            .collect();
        if got != want {
            let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            let show = |l: Option<&&[u8]>| l.map(|l| String::from_utf8_lossy(l).into_owned());
            panic!(
                "{tag}: {} lines, want {}; at {i}: {:?} vs {:?}",
                got.len(),
                want.len(),
                show(got.get(i)),
                show(want.get(i))
            );
        }
    }
}

#[test]
fn jsonl_has_every_entry_exactly_with_cursors_that_resume_after_it() {
    let w = views_world();
    let records = exec_records(&w._dir.path().join("sandboxes/web/logs"));
    let jsonl = read_view(&w, "merged.jsonl");
    let merged = read_view(&w, "merged.log");
    let mut exec_seen = Vec::new();
    let mut entries = Vec::new();
    let mut at = 0u64;
    for line in lines_of(&jsonl) {
        let v: serde_json::Value =
            serde_json::from_slice(line).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
        let s = v["s"].as_str().unwrap().to_string();
        if ["stdout", "stderr", "output", "system"].contains(&s.as_str()) {
            let d = v["d"].as_str().unwrap();
            let d = if v["e"] == "b64" { base64_decode(d) } else { d.as_bytes().to_vec() };
            exec_seen.push((s.clone(), v["id"].as_u64(), d));
        }
        let offset = v["offset"].as_u64().unwrap();
        let ts = v["t"].as_str().unwrap();
        // Where its output starts in merged.log: a line (its own, unless it only began one).
        assert!(offset == 0 || merged[offset as usize - 1] == b'\n', "offset {offset} starts a line");
        if s == "runtime" || s == "kernel" {
            assert!(merged[offset as usize..].starts_with(ts.as_bytes()), "{ts} at {offset}");
        }
        entries.push((at, v["cursor"].as_str().unwrap().to_string()));
        at += line.len() as u64;
    }
    assert_eq!(exec_seen, records, "every exec.log record once, in order, exact");
    assert!(entries.len() > records.len(), "runtime and kernel entries too");
    // Resuming from any entry's cursor lands just after it, in every view.
    let mut rng = 12345u64;
    for _ in 0..40 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let i = (rng >> 33) as usize % entries.len();
        let next = entries.get(i + 1).map_or(jsonl.len() as u64, |e| e.0);
        let of =
            |path: &str| xattr(&w, path, &format!("user.offset.of.{}", entries[i].1)).unwrap().parse::<u64>().unwrap();
        assert_eq!(of("merged.jsonl"), next, "entry {i}");
        let m = of("merged.log");
        assert!(m == 0 || merged[m as usize - 1] == b'\n');
        // The SDK's cursor (the three source positions) resumes at the same entry.
        let positions = crate::timeline::cursor::decode(&entries[i].1).unwrap();
        let sdk = crate::timeline::cursor::encode_positions(&positions[..3]);
        assert_eq!(xattr(&w, "merged.jsonl", &format!("user.offset.of.{sdk}")).unwrap().parse::<u64>().unwrap(), next);
    }
    // The end: user.cursor resumes at the end of every view.
    let end = xattr(&w, "merged.log", "user.cursor").unwrap();
    for path in ["merged.log", "merged.jsonl", "program.log", "kernel.log"] {
        let size = w.fs.getattr(view_ino(&w, path)).unwrap().size;
        assert_eq!(xattr(&w, path, &format!("user.offset.of.{end}")).unwrap(), size.to_string(), "{path}");
        assert_eq!(xattr(&w, path, "user.cursor").unwrap(), end);
    }
    // Malformed and foreign cursors.
    assert_eq!(xattr(&w, "merged.log", "user.offset.of.!!"), Err(FsError::Invalid));
    let mut foreign = crate::timeline::cursor::decode(&end).unwrap();
    foreign[3].generation ^= 1;
    let foreign = crate::timeline::cursor::encode_positions(&foreign);
    assert_eq!(xattr(&w, "merged.jsonl", &format!("user.offset.of.{foreign}")), Err(FsError::Stale));
    let unknown = crate::timeline::cursor::encode_positions(
        &[crate::timeline::CursorPos { generation: 999_999_999, offset: 5 }; 3],
    );
    assert_eq!(xattr(&w, "program.log", &format!("user.offset.of.{unknown}")), Err(FsError::Stale));
}

#[test]
fn offset_at_a_time_equals_a_linear_scan_in_every_view() {
    let w = views_world();
    for path in ["merged.log", "program.log", "kernel.log", "runtime.log", "sessions/1.log", "merged.jsonl"] {
        let bytes = read_view(&w, path);
        let mut times = Vec::new();
        let mut at = 0u64;
        for line in lines_of(&bytes) {
            let ts = if path.ends_with(".jsonl") {
                let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                crate::time::parse_rfc3339(v["t"].as_str().unwrap()).unwrap()
            } else {
                crate::time::parse_rfc3339(std::str::from_utf8(&line[..24]).unwrap()).unwrap()
            };
            times.push((at, ts));
            at += line.len() as u64;
        }
        let (lo, hi) = (times.iter().map(|t| t.1).min().unwrap(), times.iter().map(|t| t.1).max().unwrap());
        let mut rng = 99u64;
        for k in 0..30 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let t = if k == 0 { hi + 1 } else { lo - 5 + (rng >> 33) as i64 % (hi - lo + 10) };
            let want = times.iter().find(|(_, ts)| *ts >= t).map_or(bytes.len() as u64, |(at, _)| *at);
            let name = format!("user.offset.at.{}", crate::time::format_timestamp(t));
            assert_eq!(xattr(&w, path, &name).unwrap(), want.to_string(), "{path} at {t}");
        }
    }
    assert_eq!(xattr(&w, "merged.log", "user.offset.at.yesterday"), Err(FsError::Invalid));
    // Relative to now: ten days ago is before the kernel lines (their generation was
    // born just now) and after everything else.
    let merged = read_view(&w, "merged.log");
    let since = crate::time::now_ms() - 10 * 86_400_000;
    let mut want = merged.len();
    let mut at = 0;
    for line in lines_of(&merged) {
        if crate::time::parse_rfc3339(std::str::from_utf8(&line[..24]).unwrap()).unwrap() >= since {
            want = at;
            break;
        }
        at += line.len();
    }
    assert!(want < merged.len());
    assert_eq!(xattr(&w, "merged.log", "user.offset.at.-10d").unwrap(), want.to_string());
}

#[test]
fn cursor_at_an_offset_is_the_cursor_of_the_last_entry_before_it() {
    let w = views_world();
    let jsonl = read_view(&w, "merged.jsonl");
    let lines = lines_of(&jsonl);
    let mut at = 0u64;
    for (i, line) in lines.iter().enumerate().step_by(97) {
        at = lines[..i].iter().map(|l| l.len() as u64).sum();
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        // Just past this line: its own cursor; one byte short: the one before.
        let end = at + line.len() as u64;
        assert_eq!(xattr(&w, "merged.jsonl", &format!("user.cursor.at.{end}")).unwrap(), v["cursor"]);
        if i > 0 {
            let prev: serde_json::Value = serde_json::from_slice(lines[i - 1]).unwrap();
            assert_eq!(xattr(&w, "merged.jsonl", &format!("user.cursor.at.{}", end - 1)).unwrap(), prev["cursor"]);
        }
    }
    assert!(at > 0);
    // On merged.log, the cursor at the end is user.cursor; one at 0 resumes at 0.
    let size = w.fs.getattr(view_ino(&w, "merged.log")).unwrap().size;
    let end = xattr(&w, "merged.log", &format!("user.cursor.at.{size}")).unwrap();
    assert_eq!(end, xattr(&w, "merged.log", "user.cursor").unwrap());
    let start = xattr(&w, "merged.log", "user.cursor.at.0").unwrap();
    assert_eq!(xattr(&w, "merged.log", &format!("user.offset.of.{start}")).unwrap(), "0");
    assert_eq!(xattr(&w, "merged.jsonl", &format!("user.offset.of.{start}")).unwrap(), "0");
    // The first line of program.log comes after the first entries of merged.log.
    let start = xattr(&w, "program.log", "user.cursor.at.0").unwrap();
    assert_eq!(xattr(&w, "program.log", &format!("user.offset.of.{start}")).unwrap(), "0");
    assert_ne!(xattr(&w, "merged.log", &format!("user.offset.of.{start}")).unwrap(), "0");
}

#[test]
fn jsonl_keeps_exact_bytes_and_views_follow_and_grow() {
    use base64::Engine as _;
    let mut w = World::new(10 << 20);
    w.write(20);
    w.poll();
    let exec = w._dir.path().join("sandboxes/web/logs/exec.log");
    let big = vec![b'x'; 1 << 20];
    let chunks: Vec<Vec<u8>> = vec![b"\xff\xfeinvalid\n".to_vec(), b"nul\x00 esc\x1b]0;t\x07 bell\n".to_vec(), big];
    let mut text = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let d = base64::engine::general_purpose::STANDARD.encode(chunk);
        text.push_str(&format!(
            "{{\"t\":\"2026-04-30T20:40:0{i}.000Z\",\"s\":\"stdout\",\"d\":\"{d}\",\"e\":\"b64\",\"id\":900}}\n"
        ));
    }
    let before = w.fs.getattr(view_ino(&w, "merged.jsonl")).unwrap().size;
    std::fs::OpenOptions::new().append(true).open(&exec).unwrap().write_all(text.as_bytes()).unwrap();
    w.poll();
    let jsonl = read_view(&w, "merged.jsonl");
    assert!(jsonl.len() as u64 > before, "the view grew");
    let mine: Vec<serde_json::Value> = lines_of(&jsonl[before as usize..])
        .into_iter()
        .map(|l| serde_json::from_slice::<serde_json::Value>(l).unwrap())
        .filter(|v| v["id"] == 900)
        .collect();
    assert_eq!(mine.len(), 3);
    for (v, chunk) in mine.iter().zip(&chunks) {
        let d = v["d"].as_str().unwrap();
        let bytes = if v["e"] == "b64" {
            base64::engine::general_purpose::STANDARD.decode(d).unwrap()
        } else {
            d.as_bytes().to_vec()
        };
        assert_eq!(&bytes, chunk);
    }
    assert_eq!(mine[0]["e"], "b64", "invalid UTF-8 stays base64");
    assert!(mine[1].get("e").is_none(), "valid UTF-8 is text, NUL and ESC included");
    // The session appeared, and merged.log shows the escaped text.
    assert!(read_view(&w, "sessions/900.log").windows(8).any(|s| s == b"\\x1b]0;t"));
}

#[test]
fn a_boot_error_is_one_system_line_and_a_new_record_is_another() {
    let mut w = World::new(10 << 20);
    w.write(10);
    w.poll();
    let logs = w._dir.path().join("sandboxes/web/logs");
    let write_record = |message: &str| {
        let tmp = logs.join("boot-error.json.tmp");
        let raw = format!(r#"{{"t":"2026-04-30T20:32:58.004Z","stage":"mount","errno":2,"message":"{message}"}}"#);
        std::fs::write(&tmp, &raw).unwrap();
        std::fs::rename(&tmp, logs.join("boot-error.json")).unwrap();
        raw
    };
    let raw = write_record("no such device");
    w.poll();
    w.poll();
    let count = |w: &World, path: &str, text: &str| {
        let bytes = read_view(w, path);
        lines_of(&bytes).iter().filter(|l| memchr::memmem::find(l, text.as_bytes()).is_some()).count()
    };
    let line = "system boot error (stage mount, errno 2): no such device";
    assert_eq!(count(&w, "merged.log", line), 1);
    assert_eq!(count(&w, "system.log", line), 1);
    assert_eq!(count(&w, "program.log", line), 0);
    let entries: Vec<serde_json::Value> = lines_of(&read_view(&w, "merged.jsonl"))
        .iter()
        .map(|l| serde_json::from_slice::<serde_json::Value>(l).unwrap())
        .filter(|v| v["s"] == "boot-error")
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["d"], raw, "the record's exact bytes");
    assert_eq!(entries[0]["t"], "2026-04-30T20:32:58.004Z");
    // Deleted: nothing is retracted. Written again: a second line.
    std::fs::remove_file(logs.join("boot-error.json")).unwrap();
    w.poll();
    assert_eq!(count(&w, "merged.log", "boot error"), 1);
    write_record("again");
    w.poll();
    assert_eq!(count(&w, "merged.log", "boot error"), 2);
    assert_eq!(count(&w, "system.log", "errno 2): again"), 1);
}

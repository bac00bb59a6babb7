//! Shared harness of the integration tests that mount msbfs for real.
//!
//! - [`Env`]: a fresh tempdir holding `home/sandboxes/` and `mnt/`, plus helpers.
//! - [`Mounted`]: a running `msbfs mount` (stderr captured to a file); on drop it is
//!   stopped with SIGTERM (SIGKILL + `umount -l` after 5 s) and no mount is left behind.
//! - [`ChildGuard`]: any spawned tool, SIGKILLed and reaped on drop.
//! - Simulator helpers (binary and library), parsing of rendered lines, marker checks,
//!   poll-with-deadline helpers.
//! - [`require_mount!`]: the first line of every test that mounts. Without root or
//!   `/dev/fuse` the test returns at once, passing, after a line starting with
//!   [`SKIP_MARKER`] on the real stderr (not captured by the test harness, so it shows
//!   in every run); `scripts/test.sh` fails a run that printed one.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

pub const BIN: &str = env!("CARGO_BIN_EXE_msbfs");
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Skipping where nothing can be mounted

/// How the line of a skipped mount test starts (`scripts/test.sh` greps for it).
pub const SKIP_MARKER: &str = "msbfs-test SKIPPED";

/// Why nothing can be mounted here, if so: msbfs mounts with mount(2), which needs
/// root, and serves through `/dev/fuse`.
pub fn mount_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (msbfs mounts with mount(2))".into());
    }
    match fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => None,
        Err(e) => Some(format!("cannot open /dev/fuse: {e}")),
    }
}

/// True when the calling test must be skipped; it then wrote why to stderr, with one
/// write to the process's stderr itself, which the test harness does not capture (it
/// captures only `print!` and `eprint!`).
pub fn skip_without_mount() -> bool {
    let Some(reason) = mount_unavailable() else { return false };
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = std::io::stderr().write_all(format!("{SKIP_MARKER}: {test}: {reason}\n").as_bytes());
    true
}

/// Returns from the calling test when nothing can be mounted here
/// ([`skip_without_mount`]).
#[allow(unused_macros)] // tests without a mount (tests/cli.rs) share this harness
macro_rules! require_mount {
    () => {
        if $crate::common::skip_without_mount() {
            return;
        }
    };
}

// ---------------------------------------------------------------------------
// Polling

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `deadline`.
pub fn wait_for<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`wait_for`] for a boolean condition.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    wait_for(deadline, what, || f().then_some(()))
}

/// Waits for `child` to exit, at most `deadline`; `None` if it is still running.
pub fn wait_exit(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True when thread/process `tid` is inside a `read(2)` (x86_64 syscall 0, aarch64 63).
pub fn in_read_syscall(tid: u32) -> bool {
    let nr = if cfg!(target_arch = "aarch64") { "63 " } else { "0 " };
    fs::read_to_string(format!("/proc/{tid}/syscall")).is_ok_and(|s| s.starts_with(nr))
}

/// Waits until `tid` has been sitting in `read(2)` for 200 ms in a row (a parked read).
pub fn wait_parked_in_read(tid: u32, deadline: Duration) {
    let mut since: Option<Instant> = None;
    wait_until(deadline, &format!("thread {tid} blocked in read(2)"), || {
        if in_read_syscall(tid) {
            let s = *since.get_or_insert_with(Instant::now);
            s.elapsed() >= Duration::from_millis(200)
        } else {
            since = None;
            false
        }
    })
}

/// One line per thread of process `pid`: name, state, kernel wait channel, kernel
/// stack and pending/blocked signals (diagnostics for tests that time out).
pub fn threads_of(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return format!("(no process {pid})\n") };
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
        let status = read("status");
        let field =
            |key: &str| status.lines().find(|l| l.starts_with(key)).map(|l| l.trim().to_string()).unwrap_or_default();
        let stack = read("stack").lines().take(6).collect::<Vec<_>>().join(" < ");
        out.push_str(&format!(
            "  {} {} {} wchan={} {} {} {} stack={stack}\n",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            field("State:"),
            read("wchan"),
            field("SigPnd:"),
            field("ShdPnd:"),
            field("SigBlk:"),
        ));
    }
    out
}

pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

// ---------------------------------------------------------------------------
// Mount table

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub id: u64,
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// An msbfs mount: fstype `fuse.msbfs`, or plain `fuse` with source `msbfs` (what
    /// fuser's direct mount(2) produces; the subtype is then not recorded).
    pub fn is_msbfs(&self) -> bool {
        self.fstype == "fuse.msbfs" || (self.fstype == "fuse" && self.source == "msbfs")
    }
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

pub fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                id: fields[0].parse().ok()?,
                mountpoint: PathBuf::from(unescape_mountinfo(fields[4])),
                fstype: fields.get(sep + 1)?.to_string(),
                source: fields.get(sep + 2)?.to_string(),
            })
        })
        .collect()
}

/// Mount entries at `mnt` (any fstype).
pub fn mounts_at(mnt: &Path) -> Vec<MountEntry> {
    mounts().into_iter().filter(|m| m.mountpoint == mnt).collect()
}

/// Lazily detaches every mount at `mnt` (bounded).
pub fn force_unmount(mnt: &Path) {
    for _ in 0..8 {
        if mounts_at(mnt).is_empty() {
            return;
        }
        let _ = Command::new("umount").arg("-l").arg(mnt).stderr(Stdio::null()).status();
    }
}

// ---------------------------------------------------------------------------
// Processes

/// A spawned process, SIGKILLed and reaped on drop.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub name: String,
}

impl ChildGuard {
    pub fn new(name: &str, child: Child) -> ChildGuard {
        ChildGuard { child: Some(child), name: name.to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to a child we own and have not reaped.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        wait_exit(self.child(), deadline)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = wait_exit(&mut c, Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------------------
// Test environment

/// A tempdir with `home/sandboxes/` and `mnt/` (both canonical paths).
pub struct Env {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub mnt: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new().prefix("msbfs-it-").tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonicalize");
        let home = root.join("home");
        let mnt = root.join("mnt");
        fs::create_dir_all(home.join("sandboxes")).unwrap();
        fs::create_dir_all(&mnt).unwrap();
        Env { dir, home, mnt }
    }

    pub fn root(&self) -> PathBuf {
        self.home.parent().unwrap().to_path_buf()
    }

    /// `home/sandboxes/<name>/logs` (created).
    pub fn logs_dir(&self, name: &str) -> PathBuf {
        let d = self.home.join("sandboxes").join(name).join("logs");
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// `mnt/<name>/merged.log`.
    pub fn merged(&self, name: &str) -> PathBuf {
        self.mnt.join(name).join("merged.log")
    }

    pub fn mount(&self) -> Mounted {
        Mounted::start(&self.home, &self.mnt, &self.root().join("msbfs-mount.stderr"))
    }

    /// Mounts with extra arguments (`--max-store 2M`, …).
    pub fn mount_with(&self, args: &[&str]) -> Mounted {
        Mounted::start_with(&self.home, &self.mnt, &self.root().join("msbfs-mount.stderr"), args)
    }

    /// Mounts logging with the `MSBFS_LOG` filter `log`.
    pub fn mount_logging(&self, log: &str) -> Mounted {
        Mounted::spawn(&self.home, &self.mnt, &self.root().join("msbfs-mount.stderr"), &[], Some(log), &[])
    }

    /// Mounts with `envs` added to the daemon's environment.
    pub fn mount_env(&self, envs: &[(&str, &str)]) -> Mounted {
        Mounted::spawn(&self.home, &self.mnt, &self.root().join("msbfs-mount.stderr"), &[], None, envs)
    }

    /// The state directory the mounts of this environment share (under the root).
    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }
}

/// A running `msbfs mount`.
pub struct Mounted {
    pub child: Option<Child>,
    pub mnt: PathBuf,
    pub stderr_path: PathBuf,
    /// Set by [`Mounted::kill9`]: the stale mount is left for the next daemon (dropping
    /// this must not detach whatever is mounted there by then).
    killed: bool,
}

impl Mounted {
    /// Spawns `msbfs mount mnt --home home --state-dir <home's parent>/state` and waits
    /// until a live `fuse.msbfs` mount is at `mnt` (deadline 20 s).
    pub fn start(home: &Path, mnt: &Path, stderr_path: &Path) -> Mounted {
        Mounted::start_with(home, mnt, stderr_path, &[])
    }

    /// Like [`Mounted::start`] with extra arguments.
    /// The daemon logs with its default filter, or `$MSBFS_IT_LOG` when set.
    pub fn start_with(home: &Path, mnt: &Path, stderr_path: &Path, args: &[&str]) -> Mounted {
        Mounted::spawn(home, mnt, stderr_path, args, std::env::var("MSBFS_IT_LOG").ok().as_deref(), &[])
    }

    /// Like [`Mounted::start_with`], logging with the `MSBFS_LOG` filter `log` (`None`:
    /// the daemon's default), with `envs` added to its environment.
    pub fn spawn(
        home: &Path,
        mnt: &Path,
        stderr_path: &Path,
        args: &[&str],
        log: Option<&str>,
        envs: &[(&str, &str)],
    ) -> Mounted {
        Mounted::launch(Mounted::command(&[], home, mnt, args, log, envs), mnt, stderr_path)
    }

    /// The `msbfs mount` command [`Mounted::spawn`] runs, behind the command line
    /// `wrapper` (`prlimit …`, `setpriv …`) when it is not empty.
    pub fn command(
        wrapper: &[&str],
        home: &Path,
        mnt: &Path,
        args: &[&str],
        log: Option<&str>,
        envs: &[(&str, &str)],
    ) -> Command {
        let state = home.parent().expect("home has a parent").join("state");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        command.arg("mount").arg(mnt).arg("--home").arg(home).arg("--state-dir").arg(&state).args(args);
        match log {
            Some(log) => command.env("MSBFS_LOG", log),
            None => command.env_remove("MSBFS_LOG"),
        };
        command.envs(envs.iter().copied());
        command
    }

    /// Runs `command` (an `msbfs mount` of `mnt`) and waits until it serves.
    pub fn launch(mut command: Command, mnt: &Path, stderr_path: &Path) -> Mounted {
        let stderr = File::options().create(true).append(true).open(stderr_path).expect("stderr file");
        let child =
            command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn().expect("spawn msbfs mount");
        let mut m = Mounted {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            stderr_path: stderr_path.to_path_buf(),
            killed: false,
        };
        let start = Instant::now();
        loop {
            // A live msbfs mount answers readdir; a stale one (whose mount id the new
            // mount may even reuse, and whose attributes may still be cached) fails
            // with ENOTCONN. One of another user, without allow_other, refuses us.
            let answers = fs::read_dir(mnt).map_or_else(|e| e.kind() == std::io::ErrorKind::PermissionDenied, |_| true);
            if mounts_at(mnt).iter().any(|e| e.is_msbfs()) && answers {
                return m;
            }
            if let Ok(Some(st)) = m.child.as_mut().unwrap().try_wait() {
                panic!("msbfs mount exited early ({st}); stderr:\n{}", m.stderr());
            }
            if start.elapsed() >= READY_DEADLINE {
                let threads = threads_of(m.pid());
                panic!("msbfs mount not ready after {READY_DEADLINE:?}; threads:\n{threads}stderr:\n{}", m.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon").id()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own, unreaped child.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for the daemon to exit (after a signal sent by the test).
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        wait_exit(self.child.as_mut().expect("daemon"), deadline)
    }

    /// SIGKILLs the daemon and reaps it, leaving its (now stale) mount in place.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_exit(&mut c, Duration::from_secs(10));
        }
        self.killed = true;
    }

    pub fn is_mounted(&self) -> bool {
        mounts_at(&self.mnt).iter().any(|e| e.is_msbfs())
    }

    /// Stops the daemon cleanly (SIGTERM) and waits for it; panics unless it exits 0
    /// within 10 s and leaves no mount behind.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let st = self
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", self.stderr()));
        assert!(st.success(), "exit status {st}; stderr:\n{}", self.stderr());
        self.child = None;
        assert!(!self.is_mounted(), "unmounted");
    }

    /// Descriptors of the daemon pointing at deleted files under `dir`, by file name.
    pub fn deleted_fds_under(&self, dir: &Path) -> Vec<String> {
        let Ok(fds) = fs::read_dir(format!("/proc/{}/fd", self.pid())) else { return Vec::new() };
        let prefix = dir.to_string_lossy().into_owned();
        fds.flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .filter(|t| t.starts_with(&prefix) && t.ends_with(" (deleted)"))
            .map(|t| t.rsplit('/').next().unwrap_or_default().trim_end_matches(" (deleted)").to_string())
            .collect()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: signalling our own, unreaped child.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGTERM);
                }
                if wait_exit(&mut c, Duration::from_secs(5)).is_none() {
                    let _ = c.kill();
                    let _ = wait_exit(&mut c, Duration::from_secs(5));
                }
            }
        }
        if !self.killed {
            force_unmount(&self.mnt);
        }
    }
}

// ---------------------------------------------------------------------------
// tmux

/// A tmux server on a socket of this test process (`tag` tells tests apart), with one
/// session `t` started by the test; killed on drop.
pub struct Tmux {
    sock: String,
}

impl Tmux {
    pub fn new(tag: &str) -> Tmux {
        Tmux { sock: format!("msbfs-it-{tag}-{}", std::process::id()) }
    }
    /// `tmux` on this server, in a terminal every tool knows.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.env("TERM", "xterm-256color").args(["-f", "/dev/null", "-L", &self.sock]);
        c
    }
    pub fn capture(&self) -> String {
        let out = self.cmd().args(["capture-pane", "-p", "-t", "t"]).output().expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    pub fn alive(&self) -> bool {
        self.cmd().args(["has-session", "-t", "t"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }
    /// Polls the screen until `shown` holds; on a timeout the panic shows the screen.
    pub fn wait_for_screen(&self, deadline: Duration, what: &str, shown: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if shown(&screen) {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for: {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

// ---------------------------------------------------------------------------
// Simulator

/// The simulator's summary (the JSON line it prints, or the library struct).
pub use msbfs::simulate::Summary;

/// Parses the summary line `msbfs simulate` printed.
pub fn parse_summary(line: &str) -> Summary {
    Summary::from_json(line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
}

/// Arguments of one `msbfs simulate` run.
#[derive(Debug, Clone)]
pub struct Sim {
    pub name: String,
    pub lines: u64,
    pub rate: f64,
    pub rotate_bytes: u64,
    pub seed: u64,
    /// `--chunking lines|fixed4k|random` (`None`: the simulator's default, lines).
    pub chunking: Option<&'static str>,
}

impl Sim {
    pub fn new(name: &str, lines: u64) -> Sim {
        Sim { name: name.into(), lines, rate: 0.0, rotate_bytes: 10 << 20, seed: 1, chunking: None }
    }
    /// How exec output is cut into chunks: `lines`, `fixed4k` or `random`.
    pub fn chunking(mut self, c: &'static str) -> Sim {
        self.chunking = Some(c);
        self
    }
    pub fn rate(mut self, r: f64) -> Sim {
        self.rate = r;
        self
    }
    pub fn rotate(mut self, b: u64) -> Sim {
        self.rotate_bytes = b;
        self
    }
    pub fn seed(mut self, s: u64) -> Sim {
        self.seed = s;
        self
    }

    pub fn command(&self, home: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.arg("simulate")
            .arg("--home")
            .arg(home)
            .arg("--name")
            .arg(&self.name)
            .arg("--lines")
            .arg(self.lines.to_string())
            .arg("--rate")
            .arg(self.rate.to_string())
            .arg("--rotate-bytes")
            .arg(self.rotate_bytes.to_string())
            .arg("--seed")
            .arg(self.seed.to_string())
            .args(self.chunking.iter().flat_map(|c| ["--chunking", c]))
            .arg("--start")
            .arg(msbfs::simulate::DEFAULT_START_MS.to_string())
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs the binary to completion and parses its summary.
    pub fn run_bin(&self, home: &Path) -> Summary {
        let out = self.command(home).output().expect("run msbfs simulate");
        assert!(out.status.success(), "simulate failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "one summary line: {stdout:?}");
        parse_summary(&stdout)
    }

    /// Spawns the binary (use [`finish_bin`] to collect the summary).
    pub fn spawn_bin(&self, home: &Path) -> ChildGuard {
        ChildGuard::new("simulate", self.command(home).spawn().expect("spawn simulate"))
    }

    /// Runs the library simulator in this process.
    pub fn run_lib(&self, home: &Path) -> Summary {
        let mut cfg = msbfs::simulate::SimConfig::new(home, &self.name);
        cfg.lines = self.lines;
        cfg.rate = self.rate;
        cfg.rotate_bytes = self.rotate_bytes;
        cfg.seed = self.seed;
        if let Some(c) = self.chunking {
            cfg.chunking = match c {
                "lines" => msbfs::simulate::Chunking::Lines,
                "fixed4k" => msbfs::simulate::Chunking::Fixed4k,
                "random" => msbfs::simulate::Chunking::Random,
                other => panic!("unknown chunking {other:?}"),
            };
        }
        msbfs::simulate::run(cfg, &AtomicBool::new(false)).expect("simulate")
    }
}

/// A library simulator writing sandbox `name` of `env` step by step ([`steps`]),
/// rotating `exec.log` and `runtime.log` at `rotate` bytes.
pub fn simulator(env: &Env, name: &str, rotate: u64, seed: u64) -> msbfs::simulate::Simulator {
    let mut cfg = msbfs::simulate::SimConfig::new(&env.home, name);
    cfg.rotate_bytes = rotate;
    cfg.seed = seed;
    cfg.lines = 0;
    msbfs::simulate::Simulator::new(cfg).unwrap()
}

/// `n` more logical lines of `sim`, then everything it holds back written out.
pub fn steps(sim: &mut msbfs::simulate::Simulator, n: u64) {
    for _ in 0..n {
        sim.step().unwrap();
    }
    sim.finish().unwrap();
}

/// Waits (deadline) for a spawned simulator and parses its summary.
pub fn finish_bin(mut g: ChildGuard, deadline: Duration) -> Summary {
    let st = g.wait_exit(deadline).unwrap_or_else(|| panic!("simulate still running after {deadline:?}"));
    let mut out = String::new();
    g.child().stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    g.child().stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(st.success(), "simulate failed ({st}): {err}");
    assert_eq!(out.lines().count(), 1, "one summary line: {out:?}");
    parse_summary(&out)
}

/// Appends one exec.log entry (one write, like the producer).
pub fn append_exec(logs: &Path, stream: &str, id: u64, text: &str) {
    let line = serde_json::json!({"t": "2026-04-30T21:00:00.000Z", "s": stream, "d": text, "id": id}).to_string();
    let mut f = fs::OpenOptions::new().create(true).append(true).open(logs.join("exec.log")).unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// The sandboxes a mount lists (its directories; `all.log` and `all.jsonl` are files),
/// sorted.
pub fn sandboxes_in(mnt: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Names of files in `logs`, sorted.
pub fn log_files(logs: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(logs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Cursor xattr

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub generation: u64,
    pub offset: u64,
}

/// `user.cursor` of `path`, via getfattr, decoded.
pub fn cursor(path: &Path) -> Vec<Pos> {
    let out =
        Command::new("getfattr").args(["-n", "user.cursor", "--only-values"]).arg(path).output().expect("getfattr");
    assert!(out.status.success(), "getfattr: {}", String::from_utf8_lossy(&out.stderr));
    decode_cursor(std::str::from_utf8(&out.stdout).expect("ascii").trim())
}

pub fn decode_cursor(text: &str) -> Vec<Pos> {
    let raw = base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(!raw.is_empty());
    let count = raw[0] as usize;
    assert_eq!(raw.len(), 1 + 16 * count, "cursor length");
    raw[1..]
        .chunks_exact(16)
        .map(|c| Pos {
            generation: u64::from_le_bytes(c[..8].try_into().unwrap()),
            offset: u64::from_le_bytes(c[8..].try_into().unwrap()),
        })
        .collect()
}

/// (inode, size) of a file.
pub fn ino_size(path: &Path) -> Pos {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Pos { generation: m.ino(), offset: m.size() }
}

/// True when the cursor of `merged` shows every source of `logs` fully read
/// (exec.log, runtime.log, kernel.log at (inode, size)) and its merged offset equals
/// `st_size` of `merged`.
pub fn caught_up(logs: &Path, merged: &Path) -> bool {
    let Ok(c) = std::panic::catch_unwind(|| cursor(merged)) else { return false };
    if c.len() != 4 {
        return false;
    }
    let files = ["exec.log", "runtime.log", "kernel.log"];
    for (i, f) in files.iter().enumerate() {
        let Ok(m) = fs::metadata(logs.join(f)) else { return false };
        if c[i] != (Pos { generation: m.ino(), offset: m.size() }) {
            return false;
        }
    }
    fs::metadata(merged).is_ok_and(|m| m.size() == c[3].offset)
}

pub fn wait_caught_up(logs: &Path, merged: &Path, deadline: Duration) {
    wait_until(deadline, &format!("{} caught up with {}", merged.display(), logs.display()), || caught_up(logs, merged))
}

// ---------------------------------------------------------------------------
// Rendered lines and marker checks

/// One rendered line of merged.log.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    pub ts: &'a [u8],
    pub tag: &'a [u8],
    pub text: &'a [u8],
}

/// Splits merged.log bytes into rendered lines, checking the `<ts> <tag> <text>` frame.
/// The bytes must end with `\n`.
pub fn parse_lines(bytes: &[u8]) -> Vec<Line<'_>> {
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "merged bytes end with a newline");
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes[..bytes.len() - 1]
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| {
            let show = || String::from_utf8_lossy(l).into_owned();
            assert!(l.len() >= 26, "line {i} too short: {:?}", show());
            let ts = &l[..24];
            assert!(ts[23] == b'Z' && ts[10] == b'T' && l[24] == b' ', "line {i} timestamp: {:?}", show());
            let rest = &l[25..];
            let sp = rest.iter().position(|&b| b == b' ');
            let (tag, text) = match sp {
                Some(p) => (&rest[..p], &rest[p + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            Line { ts, tag, text }
        })
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// The 8-digit number after `key` in `text`, if `key` occurs.
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(text, key)? + key.len();
    let digits = text.get(at..at + 8)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What a check expects of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The whole history: every marker from 0, no `msbfs` line at all.
    Complete,
    /// The store dropped its oldest bytes: a leading run of dropped-range notice lines,
    /// then for every source a contiguous run of markers ending at the last one.
    Dropped,
    /// Every line exactly once, except where a loss of that source is announced by an
    /// `msbfs` notice placed between the lines around it (generations rotated away
    /// unseen, bytes vanished, or rotated away while msbfs was not running).
    Announced,
    /// Like `Announced`, but every source may begin late: history rotated away before
    /// msbfs first looked (a mount in the middle of a run) is not a loss.
    Tail,
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: usize,
    pub per_tag: BTreeMap<String, usize>,
    pub notices: Vec<String>,
    /// First exec marker seen per key (0 for a complete history).
    pub first_exec: BTreeMap<String, u64>,
    pub first_runtime: Option<u64>,
    /// Dropped-range notice lines at the start.
    pub dropped_lines: usize,
    /// Lines missing in total (where announced).
    pub missing: u64,
    /// Generations announced lost, per source file (the "at least N" of the notices).
    pub lost_generations: BTreeMap<String, u64>,
}

const FILES: [&str; 3] = ["exec.log", "runtime.log", "kernel.log"];

/// The source files a loss notice is about, and the generations it announces (0 when
/// it counts bytes or cannot count). A range that could not be stored held lines of
/// any source.
fn loss_notice(text: &str) -> Option<(&'static [&'static str], u64)> {
    if text.contains(" could not be stored (the msbfs state filesystem was full)") {
        return Some((&FILES, 0));
    }
    for (i, file) in FILES.iter().enumerate() {
        let one = &FILES[i..i + 1];
        if let Some(rest) = text.strip_prefix("at least ") {
            if text.ends_with(&format!(" of {file} were rotated away before msbfs could open them")) {
                return Some((one, rest.split(' ').next()?.parse().ok()?));
            }
        }
        if text.ends_with(&format!(" bytes of {file} were lost before msbfs could read them"))
            || text.starts_with(&format!("{file}: "))
                && text.ends_with(" while msbfs was not running were rotated away")
        {
            return Some((one, 0));
        }
    }
    None
}

/// Checks merged.log bytes against a simulator summary (per-source order, exact
/// counts); panics with a precise message on the first violation.
pub fn check(bytes: &[u8], s: &Summary, expect: Expect) -> Report {
    let lines = parse_lines(bytes);
    let mut rep = Report { lines: lines.len(), ..Report::default() };
    let mut next_exec: BTreeMap<String, u64> = BTreeMap::new();
    let mut next_runtime: Option<u64> = None;
    let mut next_kernel: Option<u64> = None;
    let mut conts = 0u64;
    let mut system = 0u64;
    let complete = expect == Expect::Complete;
    // Per source file: index of the last loss notice; per stream: index of its last line.
    let mut last_loss: BTreeMap<&str, usize> = BTreeMap::new();
    let mut last_line: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_dropped_prefix = expect != Expect::Complete;
    // A marker `n` where `want` was expected: a jump must be announced between the
    // stream's previous line and this one.
    let announced_losses = matches!(expect, Expect::Announced | Expect::Tail);
    let late_start = matches!(expect, Expect::Dropped | Expect::Tail);
    let advance = |what: &str,
                   file: &str,
                   want: u64,
                   n: u64,
                   i: usize,
                   last_loss: &BTreeMap<&str, usize>,
                   last_line: &mut BTreeMap<String, usize>,
                   missing: &mut u64,
                   show: &dyn Fn() -> String| {
        if n != want {
            let announced = announced_losses
                && n > want
                && last_loss.get(file).is_some_and(|&q| last_line.get(what).is_none_or(|&p| q > p));
            assert!(
                announced,
                "{what} marker {n} where {want} was expected (duplicate or unannounced loss): {}",
                show()
            );
            *missing += n - want;
        }
        last_line.insert(what.to_string(), i);
    };
    for (i, l) in lines.iter().enumerate() {
        let tag = String::from_utf8_lossy(l.tag).into_owned();
        *rep.per_tag.entry(tag.clone()).or_default() += 1;
        let show =
            || format!("line {i}: {} {} {}", String::from_utf8_lossy(l.ts), tag, String::from_utf8_lossy(l.text));
        if l.tag != b"msbfs" {
            in_dropped_prefix = false;
        }
        match l.tag {
            b"msbfs" => {
                let text = String::from_utf8_lossy(l.text).trim_end().to_string();
                let text = text.as_str();
                if in_dropped_prefix && text.contains(" were dropped to keep the msbfs store within its budget") {
                    rep.dropped_lines += 1;
                    continue;
                }
                match (announced_losses, loss_notice(text)) {
                    (true, Some((files, generations))) => {
                        for file in files {
                            last_loss.insert(file, i);
                        }
                        *rep.lost_generations.entry(files.join("+")).or_default() += generations;
                    }
                    _ => panic!("unexpected msbfs notice ({expect:?}): {}", show()),
                }
                rep.notices.push(text.to_string());
            }
            b"system" => {
                assert!(l.text.starts_with(b"--- ") && l.text.ends_with(b" ---"), "{}", show());
                system += 1;
            }
            b"runtime" => {
                // The tail of a line whose start is gone: only where history may begin
                // late or after an announced loss of runtime.log; it counts as its line
                // if its marker survived.
                let (text, tail) = match l.text.strip_prefix(b"[start of line lost] ") {
                    Some(rest) => (rest, true),
                    None => (l.text, false),
                };
                assert!(
                    !tail || late_start || announced_losses && last_loss.contains_key("runtime.log"),
                    "a tail without a loss before it: {}",
                    show()
                );
                if let Some(n) = number_after(text, b"runtime-cont n=") {
                    assert!(tail || text.starts_with(b"    at frame "), "{}", show());
                    match next_runtime {
                        Some(next) => assert!(
                            n + 1 == next || announced_losses && last_loss.contains_key("runtime.log"),
                            "continuation of the wrong line: {}",
                            show()
                        ),
                        None => assert!(!complete, "continuation before any runtime line: {}", show()),
                    }
                    conts += 1;
                } else if let Some(n) = number_after(text, b"runtime n=") {
                    let want = match next_runtime {
                        Some(want) => want,
                        None if late_start => n,
                        None => 0,
                    };
                    rep.first_runtime.get_or_insert(n);
                    advance("runtime", "runtime.log", want, n, i, &last_loss, &mut last_line, &mut rep.missing, &show);
                    next_runtime = Some(n + 1);
                } else {
                    assert!(tail, "runtime line without marker: {}", show());
                }
            }
            b"kernel" => {
                let n =
                    number_after(l.text, b"kernel n=").unwrap_or_else(|| panic!("kernel without marker: {}", show()));
                let want = next_kernel.unwrap_or(if late_start { n } else { 0 });
                advance("kernel", "kernel.log", want, n, i, &last_loss, &mut last_line, &mut rep.missing, &show);
                next_kernel = Some(n + 1);
            }
            _ => {
                let (stream, id) = tag
                    .strip_suffix(']')
                    .and_then(|t| t.split_once('['))
                    .unwrap_or_else(|| panic!("unknown tag: {}", show()));
                assert!(["stdout", "stderr", "output"].contains(&stream), "unknown tag: {}", show());
                assert!(s.exec_lines.contains_key(&tag), "tag not in summary: {}", show());
                let key = format!("{stream} s={id} n=");
                if l.text.starts_with(key.as_bytes()) {
                    let n = number_after(l.text, key.as_bytes()).unwrap_or_else(|| panic!("bad marker: {}", show()));
                    let want = match next_exec.get(&tag) {
                        Some(&want) => want,
                        None if late_start => n,
                        None => 0,
                    };
                    rep.first_exec.entry(tag.clone()).or_insert(n);
                    advance(&tag, "exec.log", want, n, i, &last_loss, &mut last_line, &mut rep.missing, &show);
                    next_exec.insert(tag, n + 1);
                } else {
                    // The tail piece of a chunk split mid-line: same tag, no marker.
                    assert!(next_exec.contains_key(&tag) || !complete, "piece before any marker: {}", show());
                }
            }
        }
    }
    if expect == Expect::Dropped {
        assert!(rep.dropped_lines > 0, "a dropped range was expected at the start");
    }
    // Every source ends at its last marker (unless its last lines are under a loss
    // announced after them); a complete history holds every key.
    let ends_in_loss = |what: &str, file: &str| {
        announced_losses && last_loss.get(file).is_some_and(|&q| last_line.get(what).is_none_or(|&p| q > p))
    };
    for (key, &count) in &s.exec_lines {
        if key == "system" {
            if complete {
                assert_eq!(system, count, "system entries");
            }
            continue;
        }
        match next_exec.get(key) {
            Some(&next) if next < count && ends_in_loss(key, "exec.log") => rep.missing += count - next,
            Some(&next) => assert_eq!(next, count, "{key}: last marker must be {} (count {count})", count - 1),
            None => assert!(
                late_start || announced_losses && last_loss.contains_key("exec.log"),
                "{key}: no line at all (count {count})"
            ),
        }
    }
    if !ends_in_loss("runtime", "runtime.log") {
        assert_eq!(next_runtime.unwrap_or(0), s.runtime_lines, "runtime lines end at runtime_lines-1");
    }
    if !ends_in_loss("kernel", "kernel.log") {
        assert_eq!(next_kernel.unwrap_or(0), s.kernel_lines, "kernel lines end at kernel_lines-1");
    }
    if complete {
        assert_eq!(conts, s.runtime_continuations, "runtime continuation lines");
        assert_eq!(rep.first_runtime.unwrap_or(0), 0);
    }
    // Counts are lower bounds: a lost generation holds at least one line.
    let announced: u64 = rep.lost_generations.values().sum();
    assert!(
        announced <= rep.missing,
        "{announced} generations announced lost, but only {} lines are missing",
        rep.missing
    );
    rep
}

/// Reads a whole file (a `cat`-equivalent: stops at the first end of file).
pub fn read_all(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Counts lines of `bytes` containing `needle`.
pub fn count_lines_with(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.split(|&b| b == b'\n').filter(|l| find(l, needle).is_some()).count()
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

pub fn count_occurrences(hay: &[u8], needle: &[u8]) -> usize {
    memchr::memmem::find_iter(hay, needle).count()
}

// ---------------------------------------------------------------------------
// A live reader: a thread that follows merged.log with plain blocking reads.

static SIGUSR1_HANDLER: std::sync::Once = std::sync::Once::new();

extern "C" fn noop_handler(_: libc::c_int) {}

/// Installs a no-op SIGUSR1 handler without SA_RESTART, so a signalled blocked read
/// returns EINTR.
pub fn install_sigusr1() {
    SIGUSR1_HANDLER.call_once(|| {
        // SAFETY: installing a handler that does nothing is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop_handler as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        }
    });
}

/// What a live reader saw.
#[derive(Debug, Default)]
pub struct LiveResult {
    pub bytes: Vec<u8>,
    /// Reads that returned 0.
    pub eofs: u64,
    /// Reads that ended with EINTR.
    pub interrupted: u64,
}

pub struct LiveReader {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<LiveResult>>,
    pub tid: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Bytes read so far, end-of-file reads, EINTRs (for diagnostics).
    pub progress: std::sync::Arc<[std::sync::atomic::AtomicU64; 3]>,
}

impl LiveReader {
    /// Opens `path` (waits up to 10 s for it to exist) and follows it in a thread.
    pub fn start(path: &Path) -> LiveReader {
        install_sigusr1();
        let path = path.to_path_buf();
        wait_until(Duration::from_secs(10), &format!("{} exists", path.display()), || path.exists());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let tid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let progress: std::sync::Arc<[std::sync::atomic::AtomicU64; 3]> = std::sync::Arc::new(Default::default());
        let (s2, t2, p2) = (stop.clone(), tid.clone(), progress.clone());
        let thread = std::thread::spawn(move || {
            t2.store(gettid(), Ordering::SeqCst);
            let mut f = File::open(&path).expect("open merged.log");
            let mut res = LiveResult::default();
            let mut buf = vec![0u8; 128 << 10];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => {
                        res.eofs += 1;
                        p2[1].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(n) => {
                        res.bytes.extend_from_slice(&buf[..n]);
                        p2[0].fetch_add(n as u64, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                        res.interrupted += 1;
                        p2[2].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("live read: {e}"),
                }
                if s2.load(Ordering::SeqCst) {
                    // Everything is ingested (the caller waited for that): switch the
                    // handle to O_NONBLOCK, so reads never park, and drain to its end.
                    // (fstat cannot tell the end: after a retention notice the handle's
                    // view is shorter than st_size.)
                    use std::os::fd::AsRawFd;
                    // SAFETY: fcntl on an fd we own.
                    unsafe {
                        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                        assert_eq!(libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK), 0);
                    }
                    loop {
                        match f.read(&mut buf) {
                            Ok(0) => return res,
                            Ok(n) => {
                                res.bytes.extend_from_slice(&buf[..n]);
                                p2[0].fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => panic!("live read: {e}"),
                        }
                    }
                }
            }
        });
        LiveReader { stop, thread: Some(thread), tid, progress }
    }

    /// Call once everything is ingested: sets the stop flag and pokes the thread with
    /// SIGUSR1 (a parked read ends with EINTR) until it has drained its handle (deadline).
    pub fn finish(mut self, deadline: Duration) -> LiveResult {
        self.stop.store(true, Ordering::SeqCst);
        let t = self.thread.take().unwrap();
        let start = Instant::now();
        while !t.is_finished() {
            if start.elapsed() >= deadline {
                let p: Vec<u64> = self.progress.iter().map(|a| a.load(Ordering::Relaxed)).collect();
                let tid = self.tid.load(Ordering::SeqCst);
                let sc = fs::read_to_string(format!("/proc/{tid}/syscall")).unwrap_or_default();
                panic!(
                    "live reader did not finish within {deadline:?}: read {} bytes, {} EOFs, {} EINTRs; syscall: {}",
                    p[0],
                    p[1],
                    p[2],
                    sc.trim()
                );
            }
            {
                use std::os::unix::thread::JoinHandleExt;
                // SAFETY: the thread is not yet joined, so its pthread_t is valid.
                unsafe {
                    libc::pthread_kill(t.as_pthread_t(), libc::SIGUSR1);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        t.join().expect("live reader panicked")
    }
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        // On a failing test: stop and unblock the thread, don't wait for long.
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let start = Instant::now();
            while !t.is_finished() && start.elapsed() < Duration::from_secs(3) {
                use std::os::unix::thread::JoinHandleExt;
                // SAFETY: not yet joined.
                unsafe {
                    libc::pthread_kill(t.as_pthread_t(), libc::SIGUSR1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Line-by-line output of a child, with deadlines.

/// Lines of a child's stdout (or any reader), delivered through a channel.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    pub fn new(r: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The next line, or panic after `deadline`.
    pub fn next(&self, deadline: Duration, what: &str) -> String {
        self.rx.recv_timeout(deadline).unwrap_or_else(|e| panic!("no line ({what}) within {deadline:?}: {e}"))
    }

    /// Every remaining line until the writer closes (panics after `deadline`).
    pub fn rest(&self, deadline: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return out,
                Err(e) => panic!("output not closed within {deadline:?}: {e}"),
            }
        }
    }
}

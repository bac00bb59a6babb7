//! Deterministic producer of microsandbox-style sandbox logs.
//!
//! [`Simulator`] writes `exec.log` (JSON Lines), `runtime.log` (tracing text
//! written in arbitrary raw pieces) and `kernel.log` (guest console) into
//! `<home>/sandboxes/<name>/logs/`, rotating `exec.log` and `runtime.log` the
//! way microsandbox does (`X.3→X.4`, …, `X→X.1`, then a fresh `X`).
//!
//! The bytes written are a pure function of the [`SimConfig`]: all randomness
//! comes from a seeded splitmix64 generator and all timestamps from a virtual
//! clock. Every logical line carries a marker (`n=00000042`, counted per
//! stream and session for exec lines) so consumers can check that each line
//! appears exactly once and in order.
//!
//! Three independent random streams are used — content, exec chunking and
//! runtime piece sizes — so the logical content (and `runtime.log` /
//! `kernel.log`) is identical across [`Chunking`] modes and rotation sizes for
//! a given seed; only how exec output is cut into entries differs.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Default virtual-clock start: 2026-04-30T20:32:58.000Z in Unix milliseconds.
pub const DEFAULT_START_MS: i64 = 1_777_581_178_000;

/// How captured exec output is cut into `exec.log` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunking {
    /// Mostly one line per entry; sometimes 2–5 lines of one stream+session
    /// in one entry, sometimes one line split in two entries after its marker.
    Lines,
    /// Per stream+session, entries of exactly 4096 bytes cut anywhere (even
    /// mid-UTF-8 character); the remainder is flushed at session end/finish.
    Fixed4k,
    /// Like [`Chunking::Fixed4k`] but each entry size is random in 1..=8192.
    Random,
}

/// Configuration of one simulated sandbox. The produced bytes depend only on it.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// microsandbox home; logs go to `<home>/sandboxes/<name>/logs/`.
    pub home: PathBuf,
    /// Sandbox name.
    pub name: String,
    /// Total logical exec lines to produce (system entries excluded); 0 = unbounded.
    pub lines: u64,
    /// Logical exec lines per second for [`run`] pacing and the virtual clock; 0 = unpaced.
    pub rate: f64,
    /// Rotate `exec.log` / `runtime.log` when a write would take them past this size.
    pub rotate_bytes: u64,
    /// PRNG seed.
    pub seed: u64,
    /// Virtual clock start in Unix milliseconds.
    pub start_ms: i64,
    /// How exec output is chunked into entries.
    pub chunking: Chunking,
    /// Date every line from the wall clock instead of the virtual clock (for the
    /// demo, whose bursts would run a virtual clock ahead); the bytes then depend on
    /// when they were written, too.
    pub wall_clock: bool,
}

impl SimConfig {
    /// Config with defaults: 1000 lines, unpaced, 10 MiB rotation, seed 1,
    /// [`DEFAULT_START_MS`], [`Chunking::Lines`].
    pub fn new(home: impl Into<PathBuf>, name: &str) -> Self {
        SimConfig {
            home: home.into(),
            name: name.to_string(),
            lines: 1000,
            rate: 0.0,
            rotate_bytes: 10 * 1024 * 1024,
            seed: 1,
            start_ms: DEFAULT_START_MS,
            chunking: Chunking::Lines,
            wall_clock: false,
        }
    }

    /// The directory the simulator writes into.
    fn log_dir(&self) -> PathBuf {
        self.home.join("sandboxes").join(&self.name).join("logs")
    }
}

/// Counts of what has been written so far (logical lines, not entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Logical exec lines per `"stdout[3]"` / `"stderr[1]"` / `"output[2]"`
    /// key (stream and session id) plus `"system"` for lifecycle markers.
    pub exec_lines: BTreeMap<String, u64>,
    /// `runtime.log` lines that start with a timestamp.
    pub runtime_lines: u64,
    /// `runtime.log` continuation lines (no timestamp).
    pub runtime_continuations: u64,
    /// `kernel.log` lines (stamped or not).
    pub kernel_lines: u64,
    /// Number of `exec.log` rotations performed.
    pub exec_rotations: u64,
    /// Number of `runtime.log` rotations performed.
    pub runtime_rotations: u64,
    /// Total bytes written to all three logs.
    pub bytes_written: u64,
}

impl Summary {
    /// The summary as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a summary always serializes")
    }

    /// Parses the line [`Summary::to_json`] prints (what `msbfs simulate` writes).
    pub fn from_json(text: &str) -> serde_json::Result<Summary> {
        serde_json::from_str(text.trim())
    }

    /// A short summary for people: lines per source, sessions, rotations, bytes.
    pub fn human(&self) -> String {
        let per_stream = |stream: &str| -> u64 {
            self.exec_lines.iter().filter(|(k, _)| k.starts_with(&format!("{stream}["))).map(|(_, v)| v).sum()
        };
        let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        format!(
            "wrote {} exec lines in {} (stdout {}, stderr {}, output {}), {} runtime lines, {} kernel lines; \
             exec.log rotated {}, runtime.log {}; {} bytes",
            self.exec_total(),
            plural(self.sessions() as u64, "session", "sessions"),
            per_stream("stdout"),
            per_stream("stderr"),
            per_stream("output"),
            self.runtime_lines + self.runtime_continuations,
            self.kernel_lines,
            plural(self.exec_rotations, "time", "times"),
            plural(self.runtime_rotations, "time", "times"),
            self.bytes_written
        )
    }

    /// Exec sessions that wrote at least one line.
    pub fn sessions(&self) -> usize {
        let ids: std::collections::BTreeSet<&str> =
            self.exec_lines.keys().filter_map(|k| k.split_once('[')).map(|(_, id)| id).collect();
        ids.len()
    }

    /// Logical exec output lines (stdout, stderr, output), without `system` lines.
    pub fn exec_total(&self) -> u64 {
        self.exec_lines.iter().filter(|(k, _)| *k != "system").map(|(_, v)| v).sum()
    }
}

// ---------------------------------------------------------------------------
// PRNG

/// splitmix64: tiny, fast, good enough and fully deterministic.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `stream` of `seed` (independent streams of one seed).
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next();
        r
    }

    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `1/n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

// ---------------------------------------------------------------------------
// Time formatting

/// RFC 3339 UTC with exactly three millisecond digits and `Z`.
use crate::time::format_timestamp as fmt_ts;

// ---------------------------------------------------------------------------
// Rotating append-only file

/// An O_APPEND log file rotated like microsandbox: `X.3→X.4 … X→X.1`, new `X`.
struct RotFile {
    path: PathBuf,
    /// `None` only after a failed re-creation during rotation.
    file: Option<File>,
    size: u64,
    limit: u64,
    rotations: u64,
    bytes: u64,
}

fn gen_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl RotFile {
    fn open(path: PathBuf, limit: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotFile { path, file: Some(file), size, limit, rotations: 0, bytes: 0 })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        for n in (1..4).rev() {
            rename_if_exists(&gen_path(&self.path, n), &gen_path(&self.path, n + 1))?;
        }
        rename_if_exists(&self.path, &gen_path(&self.path, 1))?;
        self.size = 0;
        self.rotations += 1;
        self.file = Some(OpenOptions::new().create_new(true).append(true).open(&self.path)?);
        Ok(())
    }

    /// Append `buf` with one `write_all`, rotating first if it would overflow.
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.size > 0 && self.size + buf.len() as u64 > self.limit {
            self.rotate()?;
        }
        if self.file.is_none() {
            let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(buf)?;
        }
        self.size += buf.len() as u64;
        self.bytes += buf.len() as u64;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// exec.log entries

const STREAMS: [&str; 3] = ["stdout", "stderr", "output"];

/// Write one exec.log JSON line (`id` absent for system entries).
fn write_exec_entry(out: &mut RotFile, ts: i64, stream: &str, id: Option<u64>, data: &[u8]) -> io::Result<()> {
    let mut line = Vec::with_capacity(data.len() * 2 + 64);
    line.extend_from_slice(b"{\"t\":\"");
    line.extend_from_slice(fmt_ts(ts).as_bytes());
    line.extend_from_slice(b"\",\"s\":\"");
    line.extend_from_slice(stream.as_bytes());
    line.extend_from_slice(b"\",\"d\":");
    match std::str::from_utf8(data) {
        Ok(s) => serde_json::to_writer(&mut line, s).map_err(io::Error::other)?,
        Err(_) => {
            line.push(b'"');
            line.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(data).as_bytes());
            line.extend_from_slice(b"\",\"e\":\"b64\"");
        }
    }
    if let Some(id) = id {
        line.extend_from_slice(format!(",\"id\":{id}").as_bytes());
    }
    line.extend_from_slice(b"}\n");
    out.write(&line)
}

/// Held exec output of one (stream, session).
#[derive(Default)]
struct ChunkBuf {
    buf: Vec<u8>,
    /// Lines mode: lines still to join into the pending group.
    remaining: u64,
    /// Fixed/Random mode: size of the next entry.
    next_size: usize,
}

fn next_chunk_size(mode: Chunking, rng: &mut Rng) -> usize {
    match mode {
        Chunking::Random => rng.range(1, 8192) as usize,
        _ => 4096,
    }
}

// ---------------------------------------------------------------------------
// Simulator

struct Session {
    id: u64,
    seq: [u64; 3],
}

/// Writes one sandbox's logs step by step; see the module docs.
///
/// Invariant: every byte written is determined by the config alone.
pub struct Simulator {
    cfg: SimConfig,
    step_ms: f64,
    content: Rng,
    chunk_rng: Rng,
    piece_rng: Rng,
    exec: RotFile,
    runtime: RotFile,
    runtime_pending: Vec<u8>,
    runtime_next_piece: usize,
    kernel: File,
    kernel_bytes: u64,
    started: bool,
    exec_count: u64,
    sessions: Vec<Session>,
    next_session_id: u64,
    next_session_at: u64,
    chunkers: BTreeMap<(u64, usize), ChunkBuf>,
    runtime_seq: u64,
    next_runtime_at: u64,
    kernel_seq: u64,
    next_kernel_at: u64,
    summary: Summary,
}

fn push_printable(rng: &mut Rng, out: &mut Vec<u8>, max_len: u64) {
    let len = rng.range(0, max_len);
    for _ in 0..len {
        out.push(0x20 + rng.below(95) as u8);
    }
}

impl Simulator {
    /// Create the log directory and open (append to) the three log files.
    /// Nothing is written until [`Simulator::step`] or [`Simulator::finish`].
    pub fn new(cfg: SimConfig) -> io::Result<Self> {
        let dir = cfg.log_dir();
        fs::create_dir_all(&dir)?;
        let exec = RotFile::open(dir.join("exec.log"), cfg.rotate_bytes)?;
        let runtime = RotFile::open(dir.join("runtime.log"), cfg.rotate_bytes)?;
        let kernel = OpenOptions::new().create(true).append(true).open(dir.join("kernel.log"))?;
        let step_ms = if cfg.rate > 0.0 && cfg.rate.is_finite() { 1000.0 / cfg.rate } else { 1.0 };
        let mut piece_rng = Rng::new(cfg.seed, 3);
        let runtime_next_piece = piece_rng.range(1, 4096) as usize;
        Ok(Simulator {
            content: Rng::new(cfg.seed, 1),
            chunk_rng: Rng::new(cfg.seed, 2),
            piece_rng,
            step_ms,
            exec,
            runtime,
            runtime_pending: Vec::new(),
            runtime_next_piece,
            kernel,
            kernel_bytes: 0,
            started: false,
            exec_count: 0,
            sessions: Vec::new(),
            next_session_id: 1,
            next_session_at: 0,
            chunkers: BTreeMap::new(),
            runtime_seq: 0,
            next_runtime_at: 0,
            kernel_seq: 0,
            next_kernel_at: 0,
            summary: Summary::default(),
            cfg,
        })
    }

    /// Counts of everything written so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    fn now_ms(&self) -> i64 {
        if self.cfg.wall_clock {
            return crate::time::now_ms();
        }
        self.cfg.start_ms + (self.exec_count as f64 * self.step_ms) as i64
    }

    fn sync_summary(&mut self) {
        self.summary.exec_rotations = self.exec.rotations;
        self.summary.runtime_rotations = self.runtime.rotations;
        self.summary.bytes_written = self.exec.bytes + self.runtime.bytes + self.kernel_bytes;
    }

    fn system(&mut self, text: &str) -> io::Result<()> {
        let ts = self.now_ms();
        write_exec_entry(&mut self.exec, ts, "system", None, text.as_bytes())?;
        *self.summary.exec_lines.entry("system".into()).or_insert(0) += 1;
        Ok(())
    }

    fn kernel_write(&mut self, line: &[u8]) -> io::Result<()> {
        self.kernel.write_all(line)?;
        self.kernel_bytes += line.len() as u64;
        self.summary.kernel_lines += 1;
        self.kernel_seq += 1;
        Ok(())
    }

    fn ensure_started(&mut self) -> io::Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let boot = self.content.range(16, 24);
        for k in 0..boot {
            let secs = (k as f64 + self.content.below(900) as f64 / 1000.0) * 0.5 / boot as f64;
            let line = format!("[{secs:>12.6}] kernel n={:08} boot message\n", self.kernel_seq);
            self.kernel_write(line.as_bytes())?;
        }
        self.next_kernel_at = self.content.range(25, 75);
        self.next_runtime_at = self.content.range(5, 15);
        self.system("--- sandbox started ---\n")
    }

    /// Emit the held output of one chunk buffer (session end / finish).
    fn flush_chunker(&mut self, key: (u64, usize)) -> io::Result<()> {
        if let Some(cb) = self.chunkers.remove(&key) {
            if !cb.buf.is_empty() {
                let ts = self.now_ms();
                write_exec_entry(&mut self.exec, ts, STREAMS[key.1], Some(key.0), &cb.buf)?;
            }
        }
        Ok(())
    }

    fn start_session(&mut self) -> io::Result<()> {
        let keep = self.content.range(1, 3) as usize;
        while self.sessions.len() + 1 > keep {
            let old = self.sessions.remove(0);
            for s in 0..STREAMS.len() {
                self.flush_chunker((old.id, s))?;
            }
        }
        let id = self.next_session_id;
        self.next_session_id += 1;
        self.sessions.push(Session { id, seq: [0; 3] });
        self.next_session_at = self.exec_count + self.content.range(200, 1000);
        self.system(&format!("--- exec session {id} started ---\n"))
    }

    /// Feed one logical line to the (stream, session) chunker.
    fn feed(&mut self, key: (u64, usize), line: Vec<u8>, prefix_len: usize) -> io::Result<()> {
        let ts = self.now_ms();
        let stream = STREAMS[key.1];
        let mode = self.cfg.chunking;
        let cb = self.chunkers.entry(key).or_default();
        match mode {
            Chunking::Lines => {
                if cb.remaining > 0 {
                    cb.buf.extend_from_slice(&line);
                    cb.remaining -= 1;
                    if cb.remaining == 0 {
                        let data = std::mem::take(&mut cb.buf);
                        write_exec_entry(&mut self.exec, ts, stream, Some(key.0), &data)?;
                    }
                    return Ok(());
                }
                let r = self.chunk_rng.below(100);
                if r < 70 {
                    write_exec_entry(&mut self.exec, ts, stream, Some(key.0), &line)?;
                } else if r < 90 {
                    cb.remaining = self.chunk_rng.range(2, 5) - 1;
                    cb.buf = line;
                } else {
                    // Split after the marker, at a UTF-8 boundary so only
                    // payloads holding 0xff ever need b64 in this mode.
                    let last = line.len() - 1;
                    let mut pos = self.chunk_rng.range(prefix_len as u64, last as u64) as usize;
                    while pos < last && (line[pos] & 0xC0) == 0x80 {
                        pos += 1;
                    }
                    write_exec_entry(&mut self.exec, ts, stream, Some(key.0), &line[..pos])?;
                    write_exec_entry(&mut self.exec, ts, stream, Some(key.0), &line[pos..])?;
                }
            }
            Chunking::Fixed4k | Chunking::Random => {
                if cb.next_size == 0 {
                    cb.next_size = next_chunk_size(mode, &mut self.chunk_rng);
                }
                cb.buf.extend_from_slice(&line);
                while cb.buf.len() >= cb.next_size {
                    let rest = cb.buf.split_off(cb.next_size);
                    let data = std::mem::replace(&mut cb.buf, rest);
                    write_exec_entry(&mut self.exec, ts, stream, Some(key.0), &data)?;
                    cb.next_size = next_chunk_size(mode, &mut self.chunk_rng);
                }
            }
        }
        Ok(())
    }

    /// Queue runtime text; it is written in raw pieces of 1..=4096 bytes.
    fn runtime_text(&mut self, text: &[u8]) -> io::Result<()> {
        self.runtime_pending.extend_from_slice(text);
        while self.runtime_pending.len() >= self.runtime_next_piece {
            let rest = self.runtime_pending.split_off(self.runtime_next_piece);
            let piece = std::mem::replace(&mut self.runtime_pending, rest);
            self.runtime.write(&piece)?;
            self.runtime_next_piece = self.piece_rng.range(1, 4096) as usize;
        }
        Ok(())
    }

    /// Writes out all held runtime text as one piece (≤ 4096 bytes), so that what a
    /// paced producer wrote so far is on disk.
    pub fn flush_runtime(&mut self) -> io::Result<()> {
        if !self.runtime_pending.is_empty() {
            let piece = std::mem::take(&mut self.runtime_pending);
            self.runtime.write(&piece)?;
            self.runtime_next_piece = self.piece_rng.range(1, 4096) as usize;
        }
        self.sync_summary();
        Ok(())
    }

    fn runtime_line(&mut self) -> io::Result<()> {
        let seq = self.runtime_seq;
        self.runtime_seq += 1;
        let r = self.content.below(100);
        let (level, colour) = if r < 80 {
            (" INFO", "32")
        } else if r < 92 {
            (" WARN", "33")
        } else {
            ("DEBUG", "34")
        };
        let level = if self.content.one_in(5) { format!("\x1b[{colour}m{level}\x1b[0m") } else { level.to_string() };
        let mut text =
            format!("{} {level} microsandbox_runtime::vm: runtime n={seq:08} ", fmt_ts(self.now_ms())).into_bytes();
        push_printable(&mut self.content, &mut text, 120);
        if self.content.one_in(50) {
            text.extend_from_slice("ünïcödé".as_bytes());
        }
        text.push(b'\n');
        self.summary.runtime_lines += 1;
        if self.content.one_in(5) {
            let n = self.content.range(1, 3);
            for k in 1..=n {
                text.extend_from_slice(format!("    at frame {k} runtime-cont n={seq:08}\n").as_bytes());
                self.summary.runtime_continuations += 1;
            }
        }
        self.runtime_text(&text)
    }

    fn kernel_line(&mut self) -> io::Result<()> {
        let mut line = if self.content.one_in(10) {
            format!("kernel n={:08} console: ", self.kernel_seq)
        } else {
            let secs = (self.now_ms() - self.cfg.start_ms) as f64 / 1000.0 + 0.5;
            format!("[{secs:>12.6}] kernel n={:08} ", self.kernel_seq)
        }
        .into_bytes();
        push_printable(&mut self.content, &mut line, 80);
        line.push(b'\n');
        self.kernel_write(&line)
    }

    /// Produce one logical exec line plus whatever runtime/kernel lines fall
    /// due; never sleeps. The first call also writes the boot kernel lines and
    /// the `--- sandbox started ---` system entry.
    pub fn step(&mut self) -> io::Result<()> {
        let r = self.step_inner();
        self.sync_summary();
        r
    }

    fn step_inner(&mut self) -> io::Result<()> {
        self.ensure_started()?;
        if self.sessions.is_empty() || self.exec_count >= self.next_session_at {
            self.start_session()?;
        }
        let si = self.content.below(self.sessions.len() as u64) as usize;
        let r = self.content.below(100);
        let stream = if r < 70 {
            0
        } else if r < 95 {
            1
        } else {
            2
        };
        let sess = &mut self.sessions[si];
        let id = sess.id;
        let seq = sess.seq[stream];
        sess.seq[stream] += 1;

        let mut line = format!("{} s={id} n={seq:08} ", STREAMS[stream]).into_bytes();
        let prefix_len = line.len();
        push_printable(&mut self.content, &mut line, 120);
        if self.content.one_in(50) {
            let at = self.content.range(prefix_len as u64, line.len() as u64) as usize;
            let s: &[u8] = if self.content.one_in(2) { "é".as_bytes() } else { "日本".as_bytes() };
            line.splice(at..at, s.iter().copied());
        }
        if self.content.one_in(200) {
            let at = self.content.range(prefix_len as u64, line.len() as u64) as usize;
            line.insert(at, 0xff);
        }
        if self.content.one_in(100) {
            line.extend_from_slice(b"\r\n");
        } else {
            line.push(b'\n');
        }
        *self.summary.exec_lines.entry(format!("{}[{id}]", STREAMS[stream])).or_insert(0) += 1;
        self.feed((id, stream), line, prefix_len)?;
        self.exec_count += 1;

        if self.exec_count >= self.next_runtime_at {
            self.runtime_line()?;
            self.next_runtime_at = self.exec_count + self.content.range(5, 15);
        }
        if self.exec_count >= self.next_kernel_at {
            self.kernel_line()?;
            self.next_kernel_at = self.exec_count + self.content.range(25, 75);
        }
        Ok(())
    }

    /// Flush held runtime text and every chunker remainder (sessions in
    /// start order, streams stdout/stderr/output). Safe to call repeatedly.
    pub fn finish(&mut self) -> io::Result<()> {
        let r = (|| {
            self.ensure_started()?;
            let keys: Vec<(u64, usize)> =
                self.sessions.iter().flat_map(|s| (0..STREAMS.len()).map(move |k| (s.id, k))).collect();
            for key in keys {
                self.flush_chunker(key)?;
            }
            self.flush_runtime()
        })();
        self.sync_summary();
        r
    }
}

/// Runs to `cfg.lines` (or until `stop` becomes true), pacing with sleeps at
/// `cfg.rate` (sleep in batches so high rates are accurate), then finish().
/// Returns the summary.
///
/// Batches are a fixed number of lines (about 10 ms of virtual time), and held
/// runtime text is flushed at each batch boundary, so the bytes written stay a
/// function of the config even when paced.
pub fn run(cfg: SimConfig, stop: &AtomicBool) -> io::Result<Summary> {
    let rate = cfg.rate;
    let total = cfg.lines;
    let paced = rate > 0.0 && rate.is_finite();
    let batch = if paced { (rate / 100.0).ceil().max(1.0) as u64 } else { u64::MAX };
    let mut sim = Simulator::new(cfg)?;
    let t0 = Instant::now();
    let mut done = 0u64;
    while (total == 0 || done < total) && !stop.load(Ordering::Relaxed) {
        sim.step()?;
        done += 1;
        if paced && done.is_multiple_of(batch) {
            sim.flush_runtime()?;
            let target = Duration::from_secs_f64(done as f64 / rate);
            loop {
                let elapsed = t0.elapsed();
                if elapsed >= target || stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep((target - elapsed).min(Duration::from_millis(100)));
            }
        }
    }
    sim.finish()?;
    Ok(sim.summary().clone())
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(home: &Path, name: &str) -> PathBuf {
        home.join("sandboxes").join(name).join("logs")
    }

    fn read_dir_map(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap())
            })
            .collect()
    }

    fn sim(home: &Path, f: impl FnOnce(&mut SimConfig)) -> Summary {
        let mut cfg = SimConfig::new(home, "box");
        f(&mut cfg);
        run(cfg, &AtomicBool::new(false)).unwrap()
    }

    /// Concatenate generations oldest → newest.
    fn concat_gens(dir: &Path, base: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for n in (1..=4).rev() {
            if let Ok(b) = fs::read(dir.join(format!("{base}.{n}"))) {
                out.extend(b);
            }
        }
        out.extend(fs::read(dir.join(base)).unwrap());
        out
    }

    /// Validate every exec JSON line; return decoded data per key and the
    /// b64-decoded chunks.
    fn parse_exec(bytes: &[u8]) -> (BTreeMap<String, Vec<u8>>, Vec<Vec<u8>>) {
        assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
        let mut per_key: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut b64s = Vec::new();
        let mut last_t = String::new();
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            let t = v["t"].as_str().unwrap().to_string();
            assert_eq!(t.len(), 24, "{t}");
            assert!(t.ends_with('Z'));
            assert!(t >= last_t, "timestamps non-decreasing");
            last_t = t;
            let s = v["s"].as_str().unwrap();
            assert!(["stdout", "stderr", "output", "system"].contains(&s));
            let d = v["d"].as_str().unwrap();
            let data = match v.get("e") {
                Some(e) => {
                    assert_eq!(e, "b64");
                    let raw = base64::engine::general_purpose::STANDARD.decode(d).unwrap();
                    assert!(std::str::from_utf8(&raw).is_err());
                    b64s.push(raw.clone());
                    raw
                }
                None => d.as_bytes().to_vec(),
            };
            let key = if s == "system" {
                assert!(v.get("id").is_none());
                "system".to_string()
            } else {
                format!("{s}[{}]", v["id"].as_u64().unwrap())
            };
            per_key.entry(key).or_default().extend(data);
        }
        (per_key, b64s)
    }

    /// Check markers n=0,1,2… per key and the counts against the summary.
    fn check_markers(per_key: &BTreeMap<String, Vec<u8>>, summary: &Summary) {
        assert_eq!(per_key.len(), summary.exec_lines.len());
        for (key, data) in per_key {
            assert!(data.ends_with(b"\n"), "{key}");
            let lines: Vec<&[u8]> = data[..data.len() - 1].split(|&b| b == b'\n').collect();
            assert_eq!(lines.len() as u64, summary.exec_lines[key], "{key}");
            if key == "system" {
                assert_eq!(lines[0], b"--- sandbox started ---");
                continue;
            }
            let (stream, id) = key.trim_end_matches(']').split_once('[').unwrap();
            for (i, l) in lines.iter().enumerate() {
                let prefix = format!("{stream} s={id} n={i:08} ");
                assert!(l.starts_with(prefix.as_bytes()), "{key}: {}", String::from_utf8_lossy(l));
            }
        }
    }

    #[test]
    fn timestamp_format() {
        assert_eq!(fmt_ts(DEFAULT_START_MS), "2026-04-30T20:32:58.000Z");
        assert_eq!(fmt_ts(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt_ts(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn determinism() {
        let homes: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        for (i, h) in homes.iter().enumerate() {
            sim(h.path(), |c| {
                c.lines = 3000;
                c.rotate_bytes = 64 * 1024;
                c.seed = if i == 2 { 8 } else { 7 };
                c.chunking = Chunking::Random;
            });
        }
        let a = read_dir_map(&logs(homes[0].path(), "box"));
        let b = read_dir_map(&logs(homes[1].path(), "box"));
        let c = read_dir_map(&logs(homes[2].path(), "box"));
        assert!(a.contains_key("exec.log.1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn rotation() {
        let rot = tempfile::tempdir().unwrap();
        let flat = tempfile::tempdir().unwrap();
        let s = sim(rot.path(), |c| {
            c.lines = 4000;
            c.rotate_bytes = 4096;
        });
        sim(flat.path(), |c| c.lines = 4000);
        assert!(s.exec_rotations > 4, "{s:?}");
        assert!(s.runtime_rotations > 4, "{s:?}");
        let dir = logs(rot.path(), "box");
        let mut names: Vec<String> = read_dir_map(&dir).into_keys().collect();
        names.sort();
        let mut expect = vec!["kernel.log".to_string()];
        for base in ["exec.log", "runtime.log"] {
            expect.push(base.to_string());
            expect.extend((1..=4).map(|n| format!("{base}.{n}")));
        }
        expect.sort();
        assert_eq!(names, expect);
        for (name, bytes) in read_dir_map(&dir) {
            if name.starts_with("exec") {
                assert!(bytes.len() <= 4096 || bytes.iter().filter(|&&b| b == b'\n').count() == 1);
                assert!(bytes.ends_with(b"\n"));
            } else if name.starts_with("runtime") {
                assert!(bytes.len() <= 4096, "{name}");
            }
        }
        let fdir = logs(flat.path(), "box");
        let exec = concat_gens(&dir, "exec.log");
        parse_exec(&exec);
        assert!(fs::read(fdir.join("exec.log")).unwrap().ends_with(&exec));
        let runtime = concat_gens(&dir, "runtime.log");
        assert!(fs::read(fdir.join("runtime.log")).unwrap().ends_with(&runtime));
        assert_eq!(fs::read(dir.join("kernel.log")).unwrap(), fs::read(fdir.join("kernel.log")).unwrap());
    }

    #[test]
    fn rotation_fixed4k_single_big_entries() {
        let home = tempfile::tempdir().unwrap();
        let s = sim(home.path(), |c| {
            c.lines = 3000;
            c.rotate_bytes = 4096;
            c.chunking = Chunking::Fixed4k;
        });
        assert!(s.exec_rotations > 4);
        let dir = logs(home.path(), "box");
        for n in 1..=4 {
            let b = fs::read(dir.join(format!("exec.log.{n}"))).unwrap();
            assert!(b.len() <= 4096 || b.iter().filter(|&&c| c == b'\n').count() == 1);
        }
        parse_exec(&concat_gens(&dir, "exec.log"));
    }

    #[test]
    fn exec_entries_and_markers() {
        let home = tempfile::tempdir().unwrap();
        let s = sim(home.path(), |c| c.lines = 20_000);
        let dir = logs(home.path(), "box");
        let exec = fs::read(dir.join("exec.log")).unwrap();
        let (per_key, b64s) = parse_exec(&exec);
        assert!(!b64s.is_empty());
        for raw in &b64s {
            assert!(raw.contains(&0xff));
        }
        check_markers(&per_key, &s);
        let total: u64 = s.exec_lines.iter().filter(|(k, _)| *k != "system").map(|(_, v)| v).sum();
        assert_eq!(total, 20_000);
        assert!(s.exec_lines.keys().any(|k| k.starts_with("output[")));
        assert!(s.exec_lines["system"] > 20);
        let text = String::from_utf8_lossy(&exec);
        assert!(text.contains("\\r\\n"));
        assert!(text.contains('日'));

        // runtime.log: stamped lines == summary, markers in order.
        let rt = fs::read(dir.join("runtime.log")).unwrap();
        assert!(rt.ends_with(b"\n"));
        let rt = String::from_utf8(rt).unwrap();
        let mut stamped = 0u64;
        let mut conts = 0u64;
        for l in rt.lines() {
            if l.starts_with("2026-") {
                assert_eq!(&l[24..25], " ");
                assert!(l.contains(&format!(" runtime n={stamped:08} ")), "{l}");
                stamped += 1;
            } else {
                assert!(l.starts_with("    at frame "));
                assert!(l.ends_with(&format!("runtime-cont n={:08}", stamped - 1)));
                conts += 1;
            }
        }
        assert_eq!(stamped, s.runtime_lines);
        assert_eq!(conts, s.runtime_continuations);
        assert!(rt.contains("\x1b[32m INFO\x1b[0m"));
        assert!(rt.contains("Z  INFO microsandbox_runtime::vm: runtime n=00000000 "));

        let k = String::from_utf8(fs::read(dir.join("kernel.log")).unwrap()).unwrap();
        let mut n = 0u64;
        for l in k.lines() {
            assert!(l.contains(&format!("kernel n={n:08} ")), "{l}");
            assert!(l.starts_with('[') || l.starts_with("kernel n="));
            if l.starts_with('[') {
                assert_eq!(&l[13..14], "]");
            }
            n += 1;
        }
        assert_eq!(n, s.kernel_lines);
        assert!(k.starts_with("[    0.0"));
        let written: u64 = read_dir_map(&dir).values().map(|v| v.len() as u64).sum();
        assert_eq!(written, s.bytes_written);
    }

    #[test]
    fn chunking_modes_preserve_content() {
        let mut results = Vec::new();
        for mode in [Chunking::Lines, Chunking::Fixed4k, Chunking::Random] {
            let home = tempfile::tempdir().unwrap();
            let s = sim(home.path(), |c| {
                c.lines = 5000;
                c.chunking = mode;
                c.seed = 42;
            });
            let dir = logs(home.path(), "box");
            let (per_key, _) = parse_exec(&fs::read(dir.join("exec.log")).unwrap());
            check_markers(&per_key, &s);
            results.push((
                per_key,
                fs::read(dir.join("runtime.log")).unwrap(),
                fs::read(dir.join("kernel.log")).unwrap(),
                s.exec_lines.clone(),
            ));
        }
        assert_eq!(results[0], results[1]);
        assert_eq!(results[0], results[2]);
    }

    #[test]
    fn appends_to_existing_and_summary_json() {
        let home = tempfile::tempdir().unwrap();
        let s1 = sim(home.path(), |c| c.lines = 100);
        let dir = logs(home.path(), "box");
        let len1 = fs::metadata(dir.join("exec.log")).unwrap().len();
        sim(home.path(), |c| c.lines = 100);
        assert_eq!(fs::metadata(dir.join("exec.log")).unwrap().len(), 2 * len1);
        let j: serde_json::Value = serde_json::from_str(&s1.to_json()).unwrap();
        assert_eq!(j["exec_lines"]["system"], 2);
        assert_eq!(j["bytes_written"], s1.bytes_written);
        assert!(!s1.to_json().contains('\n'));
    }

    #[test]
    fn paced_run_and_stop() {
        let home = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let s = sim(home.path(), |c| {
            c.lines = 2000;
            c.rate = 10_000.0;
        });
        let el = t.elapsed();
        assert!(el >= Duration::from_millis(190), "{el:?}");
        assert!(el < Duration::from_secs(5), "{el:?}");
        assert!(s.runtime_lines > 0);
        let exec = fs::read(logs(home.path(), "box").join("exec.log")).unwrap();
        assert!(String::from_utf8_lossy(&exec).contains("\"t\":\"2026-04-30T20:32:58.1"));

        let stop = AtomicBool::new(true);
        let mut cfg = SimConfig::new(home.path(), "stopped");
        cfg.lines = 0;
        let s = run(cfg, &stop).unwrap();
        assert_eq!(s.exec_lines.get("system"), Some(&1));
    }
}

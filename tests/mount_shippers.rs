//! Log shippers and viewers against a real mount, each the real program:
//!
//! - rsyslog `imfile` (polling), syslog-ng `file()` and `contrib/ship.py` ship every
//!   line of `merged.log` exactly once, in order, across producer rotations and a
//!   restart of msbfs (same state directory: same inode, same offsets), with the
//!   settings the README gives; ship.py also across SIGKILLs of itself;
//! - lnav with `contrib/lnav/msbfs.json` recognises every line, with its time and level;
//! - multitail follows.
//!
//! What a restart of msbfs does to a shipper: the kernel ends the FUSE connection when
//! the daemon exits, so every descriptor open on the old mount fails from then on with
//! `ENOTCONN`, even once the file is back at its path. ship.py reopens on any error;
//! rsyslog and syslog-ng keep the dead descriptor (rsyslog drops it only when the path
//! stays missing for more than 5 s), so the tests do what the README says to do after a
//! restart of msbfs: restart rsyslog, reload syslog-ng.
//!
//! rsyslog is not installed (its Debian package conflicts with syslog-ng's) but
//! unpacked into `target/tools/rsyslog` by `scripts/install-rsyslog.sh`.

#[macro_use]
mod common;

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use msbfs::simulate::Simulator;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const DEADLINE: Duration = Duration::from_secs(60);
/// The simulated producers rotate `exec.log` and `runtime.log` every 64 KiB (about 330
/// exec lines).
const ROTATE: u64 = 64 << 10;
/// The exec session id of the lines [`append_extras`] writes (not one of the simulator's).
const EXTRA_ID: u64 = 99_999;

// ---------------------------------------------------------------------------
// Producer

/// Lines the simulator does not write: a tab, quotes and a backslash, a line longer than
/// 64 KiB (two lines in merged.log), and 70,000 control characters (a first line of
/// 256 KiB). Tagged with [`EXTRA_ID`].
fn append_extras(logs: &Path, round: u32) {
    append_exec(logs, "stdout", EXTRA_ID, &format!("extra {round}: a\ttab, \"quotes\" and a back\\slash\n"));
    append_exec(logs, "stderr", EXTRA_ID, &format!("extra {round}: long {}\n", "x".repeat(100_000)));
    // Control characters are shown as `\xHH`: a 64 KiB piece of them is a 256 KiB line.
    append_exec(logs, "stdout", EXTRA_ID, &format!("extra {round}: control {}\n", "\u{1}".repeat(70_000)));
}

/// `bytes` without the lines of [`append_extras`] (what [`check`] knows nothing of).
fn without_extras(bytes: &[u8]) -> Vec<u8> {
    let stdout = format!(" stdout[{EXTRA_ID}] ");
    let stderr = format!(" stderr[{EXTRA_ID}] ");
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| {
            let head = &l[24..l.len().min(24 + stdout.len())];
            head != stdout.as_bytes() && head != stderr.as_bytes()
        })
        .flatten()
        .copied()
        .collect()
}

/// Checks that `got` (a shipper's output) is every line of merged.log exactly once, in
/// order, and that merged.log holds every line the simulator wrote, `rounds` rounds of
/// extras included.
fn check_shipped(got: &[u8], merged: &[u8], sim: &Simulator, rounds: usize) {
    assert!(got == merged, "the shipper's output is byte for byte merged.log");
    let extras = count_occurrences(merged, format!("[{EXTRA_ID}] extra ").as_bytes());
    assert_eq!(extras, 3 * rounds, "every extra line once");
    check(&without_extras(merged), sim.summary(), Expect::Complete);
}

// ---------------------------------------------------------------------------
// Shipped output

/// The first difference between `got` and `want`, for a failure message.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let line_start = |b: &[u8]| b[..at.min(b.len())].iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
    let show = |b: &[u8]| {
        let s = line_start(b);
        let e = b[s..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| s + p);
        String::from_utf8_lossy(&b[s..e.min(s + 300)]).into_owned()
    };
    format!(
        "{} bytes shipped, {} in merged.log; first difference at byte {at} (line {}):\n  shipped: {}\n  merged:  {}",
        got.len(),
        want.len(),
        want[..at.min(want.len())].iter().filter(|&&c| c == b'\n').count() + 1,
        show(got),
        show(want)
    )
}

/// Waits until merged.log has taken in everything the producer wrote and `out` holds
/// exactly its bytes; returns them. Panics at once when `out` grows past them or
/// differs (a duplicate or a loss), with `diag` (the shipper's own log) on any failure.
fn wait_shipped(logs: &Path, merged: &Path, out: &Path, diag: &dyn Fn() -> String) -> Vec<u8> {
    wait_caught_up(logs, merged, DEADLINE);
    let want = read_all(merged);
    let start = Instant::now();
    loop {
        let got = fs::read(out).unwrap_or_default();
        if got.len() >= want.len() || !want.starts_with(&got) {
            assert!(got == want, "{}\n{}", first_difference(&got, &want), diag());
            return want;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?}: {}\n{}",
            first_difference(&got, &want),
            diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After the last check: nothing more arrives within `settle` (no late duplicates).
fn assert_settled(out: &Path, len: usize, settle: Duration) {
    std::thread::sleep(settle);
    assert_eq!(fs::metadata(out).unwrap().len(), len as u64, "nothing arrived after everything was shipped");
}

// ---------------------------------------------------------------------------
// Processes

/// Pids of processes other than this one whose command line mentions `root`.
fn procs_mentioning(root: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = root.as_os_str().as_encoded_bytes().to_vec();
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| contains(&c, &needle)))
        .collect()
}

/// Dropped last: SIGKILLs, by pid, every process still mentioning the test's tempdir
/// (a tool that outlived its guard, like the `tail` multitail runs).
struct Strays(PathBuf);

impl Drop for Strays {
    fn drop(&mut self) {
        for pid in procs_mentioning(&self.0) {
            // SAFETY: kill has no memory effects; the pid mentions our private tempdir.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Asserts that no process but `allowed` mentions `root` any more.
fn assert_no_strays(root: &Path, allowed: &[u32]) {
    wait_until(Duration::from_secs(10), "every tool of the test has exited", || {
        procs_mentioning(root).iter().all(|p| allowed.contains(&(*p as u32)))
    });
}

/// Stops a shipper with SIGTERM and waits for a clean exit.
fn stop(mut g: ChildGuard, diag: &dyn Fn() -> String) {
    g.signal(libc::SIGTERM);
    let st = g.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("{} ignored SIGTERM\n{}", g.name, diag()));
    assert!(st.success(), "{} exited with {st}\n{}", g.name, diag());
}

fn spawn(name: &str, cmd: &mut Command, log: &Path) -> ChildGuard {
    let out = File::options().create(true).append(true).open(log).unwrap();
    let err = out.try_clone().unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
    ChildGuard::new(name, child)
}

fn tail_of(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("--- {} (last lines):\n{}", path.display(), lines[lines.len().saturating_sub(30)..].join("\n"))
}

/// Stops msbfs (SIGTERM; the shippers keep running), lets the producer write `down`
/// steps, mounts again with the same state directory, and checks that merged.log is the
/// same file: same inode number, every old byte unchanged.
fn restart_msbfs(env: &Env, m: Mounted, name: &str, sim: &mut Simulator, down: u64) -> Mounted {
    let (logs, merged) = (env.logs_dir(name), env.merged(name));
    wait_caught_up(&logs, &merged, DEADLINE);
    let before = read_all(&merged);
    let meta = fs::metadata(&merged).unwrap();
    m.stop();
    steps(sim, down);
    let m = env.mount();
    wait_until(Duration::from_secs(20), "merged.log is back", || merged.exists());
    let after = fs::metadata(&merged).unwrap();
    assert_eq!(after.ino(), meta.ino(), "the same inode number after the restart");
    eprintln!("st_dev before / after the restart: {} / {}", meta.dev(), after.dev());
    wait_caught_up(&logs, &merged, DEADLINE);
    assert!(read_all(&merged).starts_with(&before), "every old byte unchanged");
    m
}

// ---------------------------------------------------------------------------
// rsyslog

struct Rsyslog {
    bin: PathBuf,
    modules: PathBuf,
    conf: PathBuf,
    work: PathBuf,
    out: PathBuf,
    log: PathBuf,
}

impl Rsyslog {
    /// Writes the configuration: imfile in polling mode on `merged`, every line as read
    /// (`%rawmsg%`) to `out`, rsyslog's own messages to a file of its work directory.
    fn new(env: &Env, merged: &Path) -> Rsyslog {
        let root = PathBuf::from(REPO).join("target/tools/rsyslog");
        let bin = root.join("usr/sbin/rsyslogd");
        let modules = find_file(&root.join("usr/lib"), "imfile.so")
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|_| bin.exists())
            .unwrap_or_else(|| panic!("{} is missing: run scripts/install-rsyslog.sh", bin.display()));
        let work = env.root().join("rsyslog");
        fs::create_dir_all(&work).unwrap();
        let (conf, out, log) = (work.join("rsyslog.conf"), env.root().join("rsyslog.out"), work.join("rsyslogd.log"));
        let text = format!(
            r#"global(workDirectory="{work}" maxMessageSize="1m")
module(load="{modules}/imfile.so" mode="polling" PollingInterval="1")
template(name="line" type="string" string="%rawmsg%\n")
# rsyslog's own messages (nothing else reaches the default ruleset)
*.* action(type="omfile" file="{work}/internal.log")
input(type="imfile" File="{merged}" Tag="msbfs" ruleset="ship"
      freshStartTail="off" reopenOnTruncate="off" deleteStateOnFileDelete="off")
ruleset(name="ship") {{
    action(type="omfile" file="{out}" template="line")
}}
"#,
            work = work.display(),
            modules = modules.display(),
            merged = merged.display(),
            out = out.display(),
        );
        fs::write(&conf, text).unwrap();
        Rsyslog { bin, modules, conf, work, out, log }
    }

    fn start(&self) -> ChildGuard {
        spawn(
            "rsyslogd",
            Command::new(&self.bin)
                .arg("-n")
                .arg("-f")
                .arg(&self.conf)
                .arg("-i")
                .arg(self.work.join("rsyslogd.pid"))
                .arg("-M")
                .arg(&self.modules),
            &self.log,
        )
    }

    fn diag(&self) -> String {
        let state: Vec<String> = fs::read_dir(&self.work)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("imfile-state"))
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.file_name().to_string_lossy(),
                            fs::read_to_string(e.path()).unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        format!("{}\n{}\nstate files: {state:?}", tail_of(&self.log), tail_of(&self.work.join("internal.log")))
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(found) = find_file(&p, name) {
                return Some(found);
            }
        } else if e.file_name() == name {
            return Some(p);
        }
    }
    None
}

/// rsyslog imfile (polling) ships every line once: history from the head, live lines
/// across rotations, and across a restart of msbfs followed by a restart of rsyslogd.
#[test]
fn rsyslog_imfile_ships_every_line_once_across_a_restart() {
    require_mount!();
    let env = Env::new();
    let _strays = Strays(env.root());
    let (logs, merged) = (env.logs_dir("rs"), env.merged("rs"));
    let mut sim = simulator(&env, "rs", ROTATE, 41);
    steps(&mut sim, 700);
    append_extras(&logs, 0);
    let m = env.mount();
    wait_caught_up(&logs, &merged, DEADLINE);

    let rs = Rsyslog::new(&env, &merged);
    let diag = || rs.diag();
    let mut rsyslogd = rs.start();
    // History from the head, then live lines with rotations.
    wait_shipped(&logs, &merged, &rs.out, &diag);
    steps(&mut sim, 700);
    append_extras(&logs, 1);
    wait_shipped(&logs, &merged, &rs.out, &diag);

    // msbfs restarts under rsyslogd; lines written while it is down and after.
    let m = restart_msbfs(&env, m, "rs", &mut sim, 700);
    steps(&mut sim, 300);
    append_extras(&logs, 2);
    let shipped = fs::metadata(&rs.out).unwrap().len();
    eprintln!("rsyslog before its restart: {shipped} of {} bytes", fs::metadata(&merged).unwrap().len());
    // The recipe after a restart of msbfs: restart rsyslogd (it resumes from its state
    // file, found by inode number).
    stop(rsyslogd, &diag);
    rsyslogd = rs.start();
    steps(&mut sim, 300);
    let want = wait_shipped(&logs, &merged, &rs.out, &diag);
    check_shipped(&fs::read(&rs.out).unwrap(), &want, &sim, 3);
    assert_settled(&rs.out, want.len(), Duration::from_millis(2500));
    stop(rsyslogd, &diag);
    assert_no_strays(&env.root(), &[m.pid()]);
    drop(m);
}

// ---------------------------------------------------------------------------
// syslog-ng

struct SyslogNg {
    conf: PathBuf,
    work: PathBuf,
    out: PathBuf,
    log: PathBuf,
}

impl SyslogNg {
    /// Writes the configuration: a `file()` source polling `merged`, the line as it is
    /// (`flags(no-parse)`, `${MESSAGE}`) to `out` with flow control, syslog-ng's own
    /// messages to a file of its work directory.
    fn new(env: &Env, merged: &Path) -> SyslogNg {
        let work = env.root().join("syslog-ng");
        fs::create_dir_all(&work).unwrap();
        let (conf, out, log) =
            (work.join("syslog-ng.conf"), env.root().join("syslog-ng.out"), work.join("syslog-ng.stderr"));
        let text = format!(
            r#"@version: {version}
options {{ stats-freq(0); }};
source s_self {{ internal(); }};
destination d_self {{ file("{work}/internal.log"); }};
log {{ source(s_self); destination(d_self); }};
source s_msbfs {{ file("{merged}" follow-freq(0.5) flags(no-parse) log-msg-size(1048576)); }};
destination d_ship {{ file("{out}" template("${{MESSAGE}}\n")); }};
log {{ source(s_msbfs); destination(d_ship); flags(flow-control); }};
"#,
            version = syslog_ng_config_version(),
            work = work.display(),
            merged = merged.display(),
            out = out.display(),
        );
        fs::write(&conf, text).unwrap();
        SyslogNg { conf, work, out, log }
    }

    fn ctl(&self) -> PathBuf {
        self.work.join("syslog-ng.ctl")
    }

    fn start(&self) -> ChildGuard {
        let g = spawn(
            "syslog-ng",
            Command::new("syslog-ng")
                .arg("-F")
                .arg("--no-caps")
                .arg("-f")
                .arg(&self.conf)
                .arg(format!("--persist-file={}", self.work.join("syslog-ng.persist").display()))
                .arg(format!("--control={}", self.ctl().display()))
                .arg(format!("--pidfile={}", self.work.join("syslog-ng.pid").display())),
            &self.log,
        );
        wait_until(Duration::from_secs(20), "syslog-ng's control socket", || self.ctl().exists());
        g
    }

    fn reload(&self) {
        let out =
            Command::new("syslog-ng-ctl").arg("reload").arg(format!("--control={}", self.ctl().display())).output();
        let out = out.expect("syslog-ng-ctl");
        assert!(
            out.status.success(),
            "syslog-ng-ctl reload: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diag()
        );
    }

    fn diag(&self) -> String {
        format!("{}\n{}", tail_of(&self.log), tail_of(&self.work.join("internal.log")))
    }
}

/// `Config version: 3.35` of `syslog-ng --version`.
fn syslog_ng_config_version() -> String {
    let out = Command::new("syslog-ng").arg("--version").output().expect("syslog-ng --version");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Config version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no config version in: {text}"))
}

/// syslog-ng `file()` ships every line once: history from the head, live lines across
/// rotations, across a restart of msbfs followed by a reload of syslog-ng, and across a
/// restart of syslog-ng itself (its persist file, matched by path and inode number).
#[test]
fn syslog_ng_file_source_ships_every_line_once_across_restarts() {
    require_mount!();
    let env = Env::new();
    let _strays = Strays(env.root());
    let (logs, merged) = (env.logs_dir("sng"), env.merged("sng"));
    let mut sim = simulator(&env, "sng", ROTATE, 42);
    steps(&mut sim, 700);
    append_extras(&logs, 0);
    let m = env.mount();
    wait_caught_up(&logs, &merged, DEADLINE);

    let sng = SyslogNg::new(&env, &merged);
    let diag = || sng.diag();
    let mut daemon = sng.start();
    wait_shipped(&logs, &merged, &sng.out, &diag);
    steps(&mut sim, 700);
    append_extras(&logs, 1);
    wait_shipped(&logs, &merged, &sng.out, &diag);

    // msbfs restarts under syslog-ng; then the recipe: reload syslog-ng.
    let m = restart_msbfs(&env, m, "sng", &mut sim, 700);
    steps(&mut sim, 300);
    append_extras(&logs, 2);
    eprintln!(
        "syslog-ng before its reload: {} of {} bytes",
        fs::metadata(&sng.out).unwrap().len(),
        fs::metadata(&merged).unwrap().len()
    );
    sng.reload();
    steps(&mut sim, 300);
    wait_shipped(&logs, &merged, &sng.out, &diag);

    // syslog-ng itself restarts; lines written while it is down and after.
    stop(daemon, &diag);
    steps(&mut sim, 300);
    daemon = sng.start();
    steps(&mut sim, 300);
    append_extras(&logs, 3);
    let want = wait_shipped(&logs, &merged, &sng.out, &diag);
    check_shipped(&fs::read(&sng.out).unwrap(), &want, &sim, 4);
    assert_settled(&sng.out, want.len(), Duration::from_millis(1500));
    stop(daemon, &diag);
    assert_no_strays(&env.root(), &[m.pid()]);
    drop(m);
}

// ---------------------------------------------------------------------------
// contrib/ship.py

struct Ship {
    merged: PathBuf,
    out: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Ship {
    fn start(&self) -> ChildGuard {
        spawn(
            "ship.py",
            Command::new("/usr/bin/python3")
                .arg(PathBuf::from(REPO).join("contrib/ship.py"))
                .arg(&self.merged)
                .arg(&self.out)
                .arg(&self.state)
                .arg("0.2"),
            &self.log,
        )
    }

    fn diag(&self) -> String {
        format!("{}\nstate: {:?}", tail_of(&self.log), fs::read_to_string(&self.state).unwrap_or_default())
    }
}

/// contrib/ship.py ships every line once across SIGKILLs of itself at random moments
/// while the producer writes and rotates, and across a restart of msbfs, which it rides
/// out on its own (it reopens the path after any error).
#[test]
fn python_shipper_ships_every_line_once_across_kills_and_a_restart() {
    require_mount!();
    let env = Env::new();
    let _strays = Strays(env.root());
    let (logs, merged) = (env.logs_dir("py"), env.merged("py"));
    let mut sim = simulator(&env, "py", ROTATE, 43);
    steps(&mut sim, 700);
    append_extras(&logs, 0);
    let m = env.mount();
    wait_caught_up(&logs, &merged, DEADLINE);

    let ship = Ship {
        merged: merged.clone(),
        out: env.root().join("ship.out"),
        state: env.root().join("ship.state"),
        log: env.root().join("ship.log"),
    };
    let diag = || ship.diag();
    let mut shipper = ship.start();

    // The producer writes and rotates in a thread while the shipper is SIGKILLed every
    // 100-400 ms and started again.
    let producer = std::thread::spawn(move || {
        for i in 0..1500 {
            sim.step().unwrap();
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(12));
            }
        }
        sim.finish().unwrap();
        sim
    });
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    while !producer.is_finished() || kills < 5 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(100 + rng % 300));
        shipper.signal(libc::SIGKILL);
        let _ = shipper.wait_exit(Duration::from_secs(5));
        kills += 1;
        shipper = ship.start();
    }
    let mut sim = producer.join().expect("producer");
    eprintln!("ship.py: {kills} SIGKILLs");
    append_extras(&logs, 1);
    wait_shipped(&logs, &merged, &ship.out, &diag);

    // msbfs restarts under the shipper, which is killed once more while it is down.
    let m = {
        let (logs, merged) = (logs.clone(), merged.clone());
        wait_caught_up(&logs, &merged, DEADLINE);
        let ino = fs::metadata(&merged).unwrap().ino();
        let before = read_all(&merged);
        m.stop();
        steps(&mut sim, 400);
        shipper.signal(libc::SIGKILL);
        let _ = shipper.wait_exit(Duration::from_secs(5));
        shipper = ship.start();
        steps(&mut sim, 300);
        let m = env.mount();
        wait_until(Duration::from_secs(20), "merged.log is back", || merged.exists());
        assert_eq!(fs::metadata(&merged).unwrap().ino(), ino, "the same inode number after the restart");
        wait_caught_up(&logs, &merged, DEADLINE);
        assert!(read_all(&merged).starts_with(&before), "every old byte unchanged");
        m
    };
    steps(&mut sim, 300);
    append_extras(&logs, 2);
    let want = wait_shipped(&logs, &merged, &ship.out, &diag);
    check_shipped(&fs::read(&ship.out).unwrap(), &want, &sim, 3);
    assert_settled(&ship.out, want.len(), Duration::from_millis(800));
    stop(shipper, &diag);
    assert_no_strays(&env.root(), &[m.pid()]);
    drop(m);
}

// ---------------------------------------------------------------------------
// lnav

/// The level `contrib/lnav/msbfs.json` gives a rendered line.
fn expected_level(tag: &[u8], text: &[u8]) -> &'static str {
    let starts = |p: &str| text.starts_with(p.as_bytes());
    match tag {
        b"runtime" => match text.split(|&b| b == b' ').next().unwrap_or_default() {
            b"TRACE" if text.len() > 5 => "trace",
            b"DEBUG" if text.len() > 5 => "debug",
            b"WARN" if text.len() > 4 => "warning",
            b"ERROR" if text.len() > 5 => "error",
            _ => "info",
        },
        b"msbfs" => {
            let dropped = {
                let t = String::from_utf8_lossy(text);
                let mut w = t.split(' ');
                w.next().is_some_and(|n| n.parse::<u64>().is_ok())
                    && w.next() == Some("bytes")
                    && w.next() == Some("from")
                    && w.next() == Some("offset")
                    && w.next().is_some_and(|n| n.parse::<u64>().is_ok())
                    && w.next() == Some("were")
                    && w.next() == Some("dropped")
            };
            if starts("corrupt ") || starts("skipped ") || dropped {
                "warning"
            } else {
                "error"
            }
        }
        t if t.starts_with(b"stderr") => "warning",
        _ => "info",
    }
}

/// lnav's time of a rendered timestamp: `2026-04-30T20:32:59.688Z` -> `2026-04-30 20:32:59.688`.
fn lnav_time(ts: &[u8]) -> String {
    let ts = String::from_utf8_lossy(ts);
    format!("{} {}", &ts[..10], &ts[11..23])
}

/// Runs lnav headless on `file` with the format installed in `home`: the rows of `sql`
/// as JSON objects.
fn lnav_query(home: &Path, file: &Path, sql: &str) -> Vec<serde_json::Value> {
    let out = Command::new("lnav")
        .env("HOME", home)
        .env("TZ", "UTC")
        .arg("-n")
        .arg("-c")
        .arg(format!(";{sql}"))
        .arg("-c")
        .arg(":write-json-to -")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("lnav");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("error"), "lnav failed ({}): {stderr}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str::<Vec<serde_json::Value>>(&text).unwrap_or_else(|e| panic!("lnav output ({e}): {text}"))
}

/// lnav with contrib/lnav/msbfs.json installed recognises every line of a mounted
/// merged.log (a simulated history, and one line of every kind), with the right time
/// and level.
#[test]
fn lnav_format_recognises_every_line_with_time_and_level() {
    require_mount!();
    let env = Env::new();
    let _strays = Strays(env.root());
    let home = env.root().join("lnav-home");
    fs::create_dir_all(&home).unwrap();
    let install = Command::new("lnav")
        .env("HOME", &home)
        .arg("-i")
        .arg(PathBuf::from(REPO).join("contrib/lnav/msbfs.json"))
        .stdin(Stdio::null())
        .output()
        .expect("lnav -i");
    let said = format!("{}{}", String::from_utf8_lossy(&install.stdout), String::from_utf8_lossy(&install.stderr));
    assert!(install.status.success() && said.contains("installed") && !said.contains("error"), "lnav -i: {said}");

    // One line of every kind, known text.
    let known = env.logs_dir("known");
    let exec = [
        r#"{"t":"2026-04-30T20:32:59.001Z","s":"system","d":"--- sandbox started ---\n"}"#,
        r#"{"t":"2026-04-30T20:32:59.002Z","s":"stdout","d":"hello, world\n","id":7}"#,
        r#"{"t":"2026-04-30T20:32:59.003Z","s":"stderr","d":"Traceback (most recent call last):\n","id":7}"#,
        r#"{"t":"2026-04-30T20:32:59.004Z","s":"output","d":"pty text\n","id":8}"#,
        r#"{"t":"2026-04-30T20:32:59.005Z","s":"output","d":"pty text without a session id\n"}"#,
        "{not json",
    ];
    fs::write(known.join("exec.log"), exec.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let runtime = [
        "2026-04-30T20:33:00.001Z TRACE msb::vm: trace line",
        "2026-04-30T20:33:00.002Z DEBUG msb::vm: debug line",
        "2026-04-30T20:33:00.003Z  INFO msb::vm: booting",
        "2026-04-30T20:33:00.004Z  WARN msb::vm: warn line",
        "2026-04-30T20:33:00.005Z \x1b[31mERROR\x1b[0m msb::vm: error line",
        "   0: std::backtrace::capture",
    ];
    fs::write(known.join("runtime.log"), runtime.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    fs::write(known.join("kernel.log"), "[    0.000000] Linux version 6.1.0\n[    0.250000] console up\n").unwrap();
    // A simulated history: every kind of line, many times, with rotations.
    let sim_logs = env.logs_dir("sim");
    let mut sim = simulator(&env, "sim", ROTATE, 44);
    steps(&mut sim, 1500);

    let _m = env.mount();
    for (logs, name) in [(&known, "known"), (&sim_logs, "sim")] {
        wait_caught_up(logs, &env.merged(name), DEADLINE);
    }

    // Every line recognised, time and level as the format says.
    for name in ["known", "sim"] {
        let merged = env.merged(name);
        let bytes = read_all(&merged);
        let lines = parse_lines(&bytes);
        let formats = lnav_query(&home, &merged, "SELECT log_format, count(*) AS n FROM all_logs GROUP BY log_format");
        assert_eq!(
            formats,
            vec![serde_json::json!({"log_format": "msbfs_merged", "n": lines.len()})],
            "{name}: every line in the msbfs format"
        );
        let rows = lnav_query(&home, &merged, "SELECT log_time, log_level, tag FROM msbfs_merged");
        let mut got: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("{k} in {r}")).to_string();
                (s("log_time"), s("log_level"), s("tag"))
            })
            .collect();
        let mut want: Vec<(String, String, String)> = lines
            .iter()
            .map(|l| {
                (
                    lnav_time(l.ts),
                    expected_level(l.tag, l.text).to_string(),
                    String::from_utf8_lossy(l.tag).into_owned(),
                )
            })
            .collect();
        got.sort();
        want.sort();
        assert!(got == want, "{name}: lnav's (time, level, tag) of every line");
        let levels: std::collections::BTreeSet<&str> = want.iter().map(|w| w.1.as_str()).collect();
        eprintln!("{name}: {} lines, levels {levels:?}", lines.len());
    }

    // The known lines, one by one.
    let rows =
        lnav_query(&home, &env.merged("known"), "SELECT log_time, log_level, tag, session, log_body FROM msbfs_merged");
    let row = |body: &str| {
        rows.iter()
            .find(|r| r["log_body"].as_str().is_some_and(|b| b.contains(body)))
            .unwrap_or_else(|| panic!("no row with {body:?}: {rows:?}"))
    };
    for (body, time, level, tag) in [
        ("--- sandbox started ---", "2026-04-30 20:32:59.001", "info", "system"),
        ("hello, world", "2026-04-30 20:32:59.002", "info", "stdout[7]"),
        ("Traceback", "2026-04-30 20:32:59.003", "warning", "stderr[7]"),
        ("pty text without", "2026-04-30 20:32:59.005", "info", "output"),
        ("corrupt exec.log line", "2026-04-30 20:32:59.005", "warning", "msbfs"),
        ("trace line", "2026-04-30 20:33:00.001", "trace", "runtime"),
        ("debug line", "2026-04-30 20:33:00.002", "debug", "runtime"),
        ("booting", "2026-04-30 20:33:00.003", "info", "runtime"),
        ("warn line", "2026-04-30 20:33:00.004", "warning", "runtime"),
        ("error line", "2026-04-30 20:33:00.005", "error", "runtime"),
        ("std::backtrace::capture", "2026-04-30 20:33:00.005", "info", "runtime"),
        ("console up", "", "info", "kernel"),
    ] {
        let r = row(body);
        assert!(r["log_time"].as_str().unwrap().starts_with(time), "{body}: time {r}");
        assert_eq!(r["log_level"], level, "{body}: level {r}");
        assert_eq!(r["tag"], tag, "{body}: tag {r}");
    }
    assert_eq!(row("hello, world")["session"], "7");
    assert_eq!(row("pty text without")["session"], serde_json::Value::Null);
    // The runtime line's own body is the text after the level.
    assert_eq!(row("booting")["log_body"], "msb::vm: booting");
}

// ---------------------------------------------------------------------------
// multitail

/// multitail shows merged.log and every line appended to it, also after a producer
/// rotation.
#[test]
fn multitail_follows() {
    require_mount!();
    let env = Env::new();
    let _strays = Strays(env.root());
    let logs = env.logs_dir("mt");
    let mut sim = simulator(&env, "mt", ROTATE, 45);
    steps(&mut sim, 200);
    append_exec(&logs, "stdout", 5, "MT-BEFORE-1d7e\n");
    let m = env.mount();
    let merged = env.merged("mt");
    wait_caught_up(&logs, &merged, DEADLINE);

    let home = env.root().join("mt-home");
    fs::create_dir_all(&home).unwrap();
    let tmux = Tmux::new("multitail");
    let st = tmux
        .cmd()
        .env("HOME", &home)
        .args(["new-session", "-d", "-s", "t", "-x", "200", "-y", "50"])
        .arg(format!("multitail {}", merged.display()))
        .output()
        .expect("tmux");
    assert!(st.status.success(), "tmux: {}", String::from_utf8_lossy(&st.stderr));
    tmux.wait_for_screen(Duration::from_secs(15), "multitail shows the file", |s| s.contains("MT-BEFORE-1d7e"));
    for i in 0..3 {
        let marker = format!("MT-AFTER-{i}-5b9c");
        if i == 2 {
            steps(&mut sim, 400); // a rotation of exec.log in between
        }
        append_exec(&logs, "stdout", 5, &format!("{marker}\n"));
        tmux.wait_for_screen(Duration::from_secs(15), &format!("multitail shows {marker}"), |s| s.contains(&marker));
    }
    assert!(sim.summary().exec_rotations >= 1, "a rotation while multitail followed");
    drop(tmux);
    assert_no_strays(&env.root(), &[m.pid()]);
}

//! The `msbfs` command line: `mount`, `unmount`, `demo`, `cursor`, `simulate`,
//! `completions`, `man`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use msbfs::mount::{self, MountError, MountOptions};
use msbfs::simulate::{self, Chunking, SimConfig};

#[derive(Parser)]
#[command(
    name = "msbfs",
    version,
    about = "Mount microsandbox logs as followable merged.log files",
    long_about = "msbfs is a read-only FUSE filesystem that shows every microsandbox sandbox as a directory \
                  whose merged.log is one rotation-transparent, ever-growing file of all its logs merged: \
                  tail -f, less +F, grep and log shippers just work."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ChunkingArg {
    /// Whole lines, some multi-line chunks, some lines split in two.
    Lines,
    /// Output cut at fixed 4 KiB boundaries (a block-buffered program).
    Fixed4k,
    /// Output cut at random points.
    Random,
}

#[derive(Subcommand)]
enum CursorCommand {
    /// Print the positions a cursor holds: give the cursor, or a file to read its
    /// user.cursor attribute from.
    Decode {
        /// A cursor (base64), or the path of a file of the mount.
        cursor: String,
        /// Print one JSON object instead of a line per position.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Mount the sandboxes of a microsandbox home (runs in the foreground).
    ///
    /// As root, msbfs mounts with mount(2); as an ordinary user, through fusermount3
    /// (package fuse3) on a mountpoint that user owns. Stops and unmounts on SIGINT,
    /// SIGTERM or SIGHUP, or when unmounted from outside.
    Mount {
        /// Directory to mount on (must be empty, unless --nonempty).
        mountpoint: PathBuf,
        /// microsandbox home [default: $MSB_HOME, else ~/.microsandbox].
        #[arg(long)]
        home: Option<PathBuf>,
        /// Let other users read the mount (as an ordinary user this needs
        /// user_allow_other in /etc/fuse.conf).
        #[arg(long)]
        allow_other: bool,
        /// Mount over a directory that is not empty, or over another msbfs mount.
        #[arg(long)]
        nonempty: bool,
        /// Where msbfs keeps what it rendered [default: $MSBFS_STATE_DIR, else
        /// $XDG_STATE_HOME/msbfs, else ~/.local/state/msbfs]; one subdirectory per home.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Budget of the store, e.g. 512M or 4G [default: 10% of the state filesystem,
        /// at most 4G]; the oldest bytes beyond it read as a notice of the same length.
        #[arg(long, value_parser = parse_size_arg)]
        max_store: Option<u64>,
        /// Benchmark only: serve a /.bench-ceiling file of this size from memory.
        #[arg(long, hide = true, value_parser = parse_size_arg)]
        bench_ceiling: Option<u64>,
    },
    /// Unmount an msbfs mount (the daemon then exits); works for the user who mounted it.
    Unmount {
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Mount a simulated sandbox that keeps writing (the embedded default).
    Demo {
        /// Where to mount [default: ./msb].
        mountpoint: Option<PathBuf>,
    },
    /// Resume positions (the user.cursor attribute of merged.log).
    #[command(subcommand)]
    Cursor(CursorCommand),
    /// Write logs exactly like microsandbox does, for tests, demos and benchmarks.
    Simulate {
        /// microsandbox home to write into.
        #[arg(long)]
        home: PathBuf,
        /// Sandbox name.
        #[arg(long)]
        name: String,
        /// Logical exec lines to write (0 = until interrupted).
        #[arg(long, default_value_t = 1000)]
        lines: u64,
        /// Lines per second (0 = as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Rotate exec.log and runtime.log past this many bytes.
        #[arg(long, default_value_t = 10 << 20)]
        rotate_bytes: u64,
        /// Seed of the deterministic content.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How exec output is cut into chunks.
        #[arg(long, value_enum, default_value_t = ChunkingArg::Lines)]
        chunking: ChunkingArg,
        /// Start of the virtual clock, Unix ms [default: now]. msbfs dates kernel lines
        /// from kernel.log's birth plus their uptime stamp, so a start in the past puts
        /// kernel lines on another clock than the rest.
        #[arg(long)]
        start: Option<i64>,
        /// Print the summary as one line of JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `msbfs man > msbfs.1`.
    Man,
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    msbfs::store::parse_size(text).ok_or_else(|| format!("{text:?} is not a size (e.g. 512M, 4G, 1048576)"))
}

/// Exit code 2 for usage errors (each problem on a line of its own), 1 for the rest.
/// In the journal the lines carry the error priority (`<3>`), like the log's.
fn exit_for(result: Result<(), MountError>) -> ExitCode {
    let prefix = if msbfs::logging::stderr_style() == msbfs::logging::Style::Journal { "<3>" } else { "" };
    let (message, code) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(MountError::Usage(msg)) => (msg, ExitCode::from(2)),
        Err(MountError::Io(e)) => (e.to_string(), ExitCode::FAILURE),
    };
    for line in message.lines() {
        eprintln!("{prefix}msbfs: {line}");
    }
    code
}

/// The value of extended attribute `name` of `path` (at most 4 KiB).
fn read_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let c_name = std::ffi::CString::new(name)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and buf is valid for buf.len() bytes.
    let n = unsafe { libc::getxattr(c_path.as_ptr(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `msbfs cursor decode`: a cursor given, or read from a file's `user.cursor`.
fn cursor_decode(arg: &str, json: bool) -> Result<(), MountError> {
    let path = Path::new(arg);
    let text = if path.exists() {
        let value = read_xattr(path, msbfs::timeline::cursor::CURSOR_XATTR)
            .map_err(|e| MountError::Usage(format!("{arg}: cannot read user.cursor: {e}")))?;
        String::from_utf8_lossy(&value).into_owned()
    } else {
        arg.to_string()
    };
    let positions = msbfs::timeline::cursor::decode(&text)
        .ok_or_else(|| MountError::Usage(format!("{arg:?} is neither a cursor nor a file")))?;
    if json {
        println!("{}", msbfs::timeline::cursor::to_json(text.trim(), &positions));
    } else {
        println!("cursor       {}", text.trim());
        print!("{}", msbfs::timeline::cursor::describe(&positions));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn simulate_cmd(
    home: PathBuf,
    name: &str,
    lines: u64,
    rate: f64,
    rotate_bytes: u64,
    seed: u64,
    chunking: ChunkingArg,
    start: Option<i64>,
    json: bool,
    stop_signals: nix::sys::signal::SigSet,
) -> ExitCode {
    let mut cfg = SimConfig::new(&home, name);
    cfg.lines = lines;
    cfg.rate = rate;
    cfg.rotate_bytes = rotate_bytes;
    cfg.seed = seed;
    cfg.start_ms = start.unwrap_or_else(msbfs::time::now_ms);
    cfg.chunking = match chunking {
        ChunkingArg::Lines => Chunking::Lines,
        ChunkingArg::Fixed4k => Chunking::Fixed4k,
        ChunkingArg::Random => Chunking::Random,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if stop_signals.wait().is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    match simulate::run(cfg, &stop) {
        Ok(summary) if json => {
            println!("{}", summary.to_json());
            ExitCode::SUCCESS
        }
        Ok(summary) => {
            println!("{}", summary.human());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("msbfs simulate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let stop_signals = mount::block_stop_signals();
    msbfs::logging::init();
    match Cli::parse().command {
        Command::Mount { mountpoint, home, allow_other, nonempty, state_dir, max_store, bench_ceiling } => {
            let home = home.unwrap_or_else(mount::default_home);
            let state_dir = state_dir.unwrap_or_else(msbfs::store::default_state_root);
            let opts = MountOptions { mountpoint, home, allow_other, state_dir, max_store, bench_ceiling, nonempty };
            exit_for(mount::serve(&opts, || {}))
        }
        Command::Unmount { mountpoint } => exit_for(mount::unmount_command(&mountpoint)),
        Command::Demo { mountpoint } => exit_for(msbfs::demo::run(mountpoint)),
        Command::Cursor(CursorCommand::Decode { cursor, json }) => exit_for(cursor_decode(&cursor, json)),
        Command::Simulate { home, name, lines, rate, rotate_bytes, seed, chunking, start, json } => {
            simulate_cmd(home, &name, lines, rate, rotate_bytes, seed, chunking, start, json, stop_signals)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "msbfs", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => exit_for(Err(MountError::Io(e))),
            _ => ExitCode::SUCCESS,
        },
    }
}

//! The `msbfs` command line: `mount`, `simulate`, `demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use msbfs::mount::{self, MountError, MountOptions};
use msbfs::simulate::{self, Chunking, SimConfig};

#[derive(Parser)]
#[command(name = "msbfs", version, about = "Mount microsandbox logs as followable merged.log files")]
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
enum Command {
    /// Mount the sandboxes of a microsandbox home (runs in the foreground).
    Mount {
        /// Directory to mount on.
        mountpoint: PathBuf,
        /// microsandbox home [default: $MSB_HOME, else ~/.microsandbox].
        #[arg(long)]
        home: Option<PathBuf>,
        /// Let other users read the mount.
        #[arg(long)]
        allow_other: bool,
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
        /// Virtual clock start, Unix ms [default: 2026-04-30T20:32:58Z]; `now` for the wall clock.
        #[arg(long)]
        start: Option<String>,
    },
    /// Mount a simulated sandbox that keeps writing (the embedded default).
    Demo {
        /// Where to mount [default: ./msb].
        mountpoint: Option<PathBuf>,
    },
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    msbfs::store::parse_size(text).ok_or_else(|| format!("{text:?} is not a size (e.g. 512M, 4G, 1048576)"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn exit_for(result: Result<(), MountError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(MountError::Usage(msg)) => {
            eprintln!("msbfs: {msg}");
            ExitCode::from(2)
        }
        Err(MountError::Io(e)) => {
            eprintln!("msbfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(mountpoint: Option<PathBuf>) -> Result<(), MountError> {
    let mountpoint = mountpoint.unwrap_or_else(|| PathBuf::from("msb"));
    let created_mountpoint = !mountpoint.exists();
    if created_mountpoint {
        std::fs::create_dir_all(&mountpoint)?;
    }
    let home = std::env::temp_dir().join(format!("msbfs-demo-{}", std::process::id()));
    std::fs::create_dir_all(home.join("sandboxes"))?;
    let mut cfg = SimConfig::new(&home, "demo");
    cfg.lines = 0;
    cfg.rate = 4.0;
    cfg.rotate_bytes = 256 << 10;
    cfg.start_ms = now_ms();
    cfg.seed = now_ms() as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let stop = stop.clone();
        std::thread::spawn(move || simulate::run(cfg, &stop))
    };
    let opts = MountOptions {
        mountpoint: mountpoint.clone(),
        home: home.clone(),
        allow_other: false,
        state_dir: home.join("msbfs-state"),
        max_store: None,
        bench_ceiling: None,
    };
    let file = mountpoint.join("demo").join("merged.log");
    let result = mount::serve(&opts, || {
        let f = file.display();
        println!(
            "msbfs demo: a simulated sandbox 'demo' (logs in {}) is mounted on {}.",
            home.display(),
            mountpoint.display()
        );
        println!("Try, in another terminal:");
        println!("  tail -f {f}");
        println!("  less +F {f}");
        println!("  grep -c stderr {f}");
        println!("  getfattr -n user.cursor {f}");
        println!("It rotates every 256 KiB; Ctrl-C here unmounts and removes everything.");
    });
    stop.store(true, Ordering::Relaxed);
    if let Ok(Err(e)) = producer.join() {
        eprintln!("msbfs: simulated producer: {e}");
    }
    let _ = std::fs::remove_dir_all(&home);
    if created_mountpoint {
        let _ = std::fs::remove_dir(&mountpoint);
    }
    result
}

fn main() -> ExitCode {
    let stop_signals = mount::block_stop_signals();
    msbfs::logging::init();
    match Cli::parse().command {
        Command::Mount { mountpoint, home, allow_other, state_dir, max_store, bench_ceiling } => {
            let home = home.unwrap_or_else(mount::default_home);
            let state_dir = state_dir.unwrap_or_else(msbfs::store::default_state_root);
            let opts = MountOptions { mountpoint, home, allow_other, state_dir, max_store, bench_ceiling };
            exit_for(mount::serve(&opts, || {}))
        }
        Command::Simulate { home, name, lines, rate, rotate_bytes, seed, chunking, start } => {
            let start_ms = match start.as_deref() {
                None => simulate::DEFAULT_START_MS,
                Some("now") => now_ms(),
                Some(ms) => match ms.parse() {
                    Ok(ms) => ms,
                    Err(_) => {
                        return exit_for(Err(MountError::Usage(format!("--start {ms}: not a number of ms or `now`"))))
                    }
                },
            };
            let mut cfg = SimConfig::new(&home, &name);
            cfg.lines = lines;
            cfg.rate = rate;
            cfg.rotate_bytes = rotate_bytes;
            cfg.seed = seed;
            cfg.start_ms = start_ms;
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
                Ok(summary) => {
                    println!("{}", summary.to_json());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("msbfs simulate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { mountpoint } => exit_for(demo(mountpoint)),
    }
}

//! The daemon's log: `tracing` events to stderr, filtered by `$MSBFS_LOG` (an
//! `EnvFilter`, default [`DEFAULT_FILTER`]), with the `log` records of fuser bridged in
//! under their own targets (`fuser`, `fuser::reply`, …).
//!
//! One fuser record changes level on the way: `ERROR fuser::reply: Failed to send FUSE
//! reply` with `ENOENT` or `ENODEV`. It means the request was gone when its answer came:
//! the reader was killed while its read was parked, or the filesystem was being
//! unmounted. A reply nobody waits for any more is not an error, so it is logged at
//! `DEBUG` (target `fuser::reply`). Every other fuser record keeps its level, such as
//! `WARN fuser::reply: Reply not sent for operation N`, which would be a bug of msbfs.

use tracing::level_filters::LevelFilter;
use tracing_log::{AsLog, LogTracer};

/// The filter when `$MSBFS_LOG` is unset or invalid: msbfs at `info`, fuser's own
/// records from `warn`.
pub const DEFAULT_FILTER: &str = "info,fuser=warn";

/// Errors of a FUSE reply that mean its request no longer exists: `ENOENT` (the kernel
/// dropped it: the reader died) and `ENODEV` (the connection is going away).
const GONE: [&str; 2] = ["(os error 2)", "(os error 19)"];

/// True for fuser's record of a reply to a request that no longer exists.
fn reply_to_vanished_request(record: &log::Record<'_>) -> bool {
    if record.target() != "fuser::reply" || record.level() != log::Level::Error {
        return false;
    }
    let message = record.args().to_string();
    message.starts_with("Failed to send FUSE reply") && GONE.iter().any(|gone| message.ends_with(gone))
}

/// Forwards `log` records to `tracing`, demoting replies to vanished requests.
struct Bridge(LogTracer);

impl log::Log for Bridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if reply_to_vanished_request(record) {
            let demoted = log::Record::builder()
                .level(log::Level::Debug)
                .target(record.target())
                .args(*record.args())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            self.0.log(&demoted);
        } else {
            self.0.log(record);
        }
    }

    fn flush(&self) {}
}

/// Installs the log of the process: stderr (colours only on a terminal), `$MSBFS_LOG`
/// or [`DEFAULT_FILTER`], fuser's `log` records included. Call once, first thing.
pub fn init() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MSBFS_LOG").unwrap_or_else(|_| DEFAULT_FILTER.into());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish();
    // Both fail only when a logger is already installed; the first one then stays.
    let _ = tracing::subscriber::set_global_default(subscriber);
    if log::set_boxed_logger(Box::new(Bridge(LogTracer::new()))).is_ok() {
        log::set_max_level(LevelFilter::current().as_log());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vanished(target: &str, level: log::Level, message: &str) -> bool {
        reply_to_vanished_request(
            &log::Record::builder().target(target).level(level).args(format_args!("{message}")).build(),
        )
    }

    #[test]
    fn only_replies_to_requests_that_are_gone_are_demoted() {
        let failed = |errno| format!("Failed to send FUSE reply: {}", std::io::Error::from_raw_os_error(errno));
        assert!(vanished("fuser::reply", log::Level::Error, &failed(libc::ENOENT)));
        assert!(vanished("fuser::reply", log::Level::Error, &failed(libc::ENODEV)));
        // A reply the kernel refused for another reason is still an error.
        assert!(!vanished("fuser::reply", log::Level::Error, &failed(libc::EINVAL)));
        // A reply msbfs forgot to send is still a warning.
        assert!(!vanished("fuser::reply", log::Level::Warn, "Reply not sent for operation 7, replying with I/O error"));
        assert!(!vanished("fuser::session", log::Level::Error, &failed(libc::ENOENT)));
    }
}

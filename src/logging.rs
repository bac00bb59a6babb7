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
//!
//! Three styles, chosen from where stderr goes ([`Style`]): on a terminal, timestamps
//! and colours; elsewhere (a file, a pipe) the same lines without any escape code,
//! fields included; and when stderr is the journal (`$JOURNAL_STREAM` names the
//! device and inode of stderr, as systemd sets it for a service), each line starts
//! with its sd-daemon priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug
//! and trace) instead of a timestamp, which journald adds itself:
//! `<6>INFO msbfs::mount: mounted mountpoint=/mnt/msb …`.

use std::fmt;

use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_log::{AsLog, LogTracer};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

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

/// What the log lines look like, from where stderr goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A terminal: timestamps and colours.
    Terminal,
    /// A file or a pipe: timestamps, no escape codes at all.
    Plain,
    /// The journal: `<N>` priority prefixes, no timestamps, no escape codes.
    Journal,
}

/// The style for the process's stderr: [`Style::Journal`] when `$JOURNAL_STREAM`
/// names the device and inode of descriptor 2, else [`Style::Terminal`] or
/// [`Style::Plain`].
pub fn stderr_style() -> Style {
    use std::io::IsTerminal;
    if let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) {
        let journal = std::env::var("JOURNAL_STREAM").ok();
        if journal.is_some_and(|v| journal_stream_is(&v, stat.st_dev, stat.st_ino)) {
            return Style::Journal;
        }
    }
    if std::io::stderr().is_terminal() {
        Style::Terminal
    } else {
        Style::Plain
    }
}

/// True when a `$JOURNAL_STREAM` value (`<device>:<inode>`, both decimal) names the
/// file with device `dev` and inode `ino`. systemd sets it for a service whose stderr
/// is connected to the journal; a descendant whose stderr went elsewhere inherits the
/// variable, which then names another file, so only a match counts.
pub fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else { return false };
    d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
}

/// The sd-daemon (syslog) priority of a level: 3 error, 4 warning, 6 info, 7 debug
/// and trace.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The line format for the journal: the usual line (level, spans, target, message,
/// fields) without a timestamp, preceded by `<N>`, the priority of its level. Every
/// line of a multi-line event carries the prefix (journald reads each line as one
/// entry), and nothing is ever coloured.
pub struct JournalFormat {
    inner: format::Format<format::Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> Self {
        JournalFormat { inner: format::Format::default().without_time().with_ansi(false) }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut text = String::new();
        self.inner.format_event(ctx, Writer::new(&mut text), event)?;
        let prio = priority(*event.metadata().level());
        // The level is padded to five columns for alignment after a timestamp.
        let text = text.trim_start_matches(' ');
        for line in text.strip_suffix('\n').unwrap_or(text).split('\n') {
            writeln!(writer, "<{prio}>{line}")?;
        }
        Ok(())
    }
}

/// The subscriber of a [`Style`]: `filter` decides what is logged, `writer` where.
pub fn subscriber<W>(
    style: Style,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match style {
        Style::Journal => Box::new(builder.with_ansi(false).event_format(JournalFormat::default()).finish()),
        style => Box::new(builder.with_ansi(style == Style::Terminal).finish()),
    }
}

/// Installs the log of the process: stderr in the [`stderr_style`], `$MSBFS_LOG` or
/// [`DEFAULT_FILTER`], fuser's `log` records included. Call once, first thing.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MSBFS_LOG").unwrap_or_else(|_| DEFAULT_FILTER.into());
    // Both fail only when a logger is already installed; the first one then stays.
    let _ = tracing::subscriber::set_global_default(subscriber(stderr_style(), filter, std::io::stderr));
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

    #[test]
    fn journal_stream_must_name_stderr_exactly() {
        assert!(journal_stream_is("64769:1234567", 64769, 1234567));
        assert!(!journal_stream_is("64769:1234568", 64769, 1234567));
        assert!(!journal_stream_is("64770:1234567", 64769, 1234567));
        for bad in ["", ":", "64769", "64769:", ":1234567", "x:1", "64769:1234567:0", " 64769:1234567"] {
            assert!(!journal_stream_is(bad, 64769, 1234567), "{bad:?}");
        }
    }

    #[test]
    fn priorities_of_levels() {
        assert_eq!([Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE].map(priority), [3, 4, 6, 7, 7]);
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `emit` logs in `style`, everything from trace up.
    fn logged(style: Style, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = subscriber(style, tracing_subscriber::EnvFilter::new("trace"), move || sink.clone());
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn journal_lines(emit: impl FnOnce()) -> String {
        logged(Style::Journal, emit)
    }

    /// Events of every level, a hostile field value and a span with fields.
    fn sample_events() {
        tracing::error!(target: "msbfs::mount", "the ingest thread panicked: boom; unmounting");
        tracing::warn!(target: "msbfs::ingest", sandbox = ?"a\u{1b}[31mb", "skipped");
        tracing::info!(target: "msbfs::mount", mountpoint = %"/mnt/msb", budget = 42u64, "mounted");
        tracing::debug!(target: "fuser::reply", "Failed to send FUSE reply");
        tracing::trace!(target: "msbfs::fs", ino = 2u64, "read");
        let span = tracing::info_span!("sandbox", name = "web");
        span.in_scope(|| tracing::info!(target: "msbfs::ingest", "caught up"));
    }

    #[test]
    fn plain_lines_have_timestamps_and_no_escape_codes() {
        let text = logged(Style::Plain, sample_events);
        assert!(!text.contains('\u{1b}'), "{text:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        for line in &lines {
            assert!(line.len() > 28 && line.as_bytes()[..4].iter().all(u8::is_ascii_digit), "{line:?}");
        }
        assert!(lines[5].ends_with("INFO sandbox{name=\"web\"}: msbfs::ingest: caught up"), "{}", lines[5]);
        // On a terminal the same lines are coloured.
        assert!(logged(Style::Terminal, sample_events).contains('\u{1b}'));
    }

    #[test]
    fn journal_lines_carry_the_priority_level_target_and_fields_but_no_time() {
        let text = journal_lines(sample_events);
        assert_eq!(
            text,
            "<3>ERROR msbfs::mount: the ingest thread panicked: boom; unmounting\n\
             <4>WARN msbfs::ingest: skipped sandbox=\"a\\u{1b}[31mb\"\n\
             <6>INFO msbfs::mount: mounted mountpoint=/mnt/msb budget=42\n\
             <7>DEBUG fuser::reply: Failed to send FUSE reply\n\
             <7>TRACE msbfs::fs: read ino=2\n\
             <6>INFO sandbox{name=\"web\"}: msbfs::ingest: caught up\n"
        );
    }

    #[test]
    fn every_line_of_a_multi_line_event_has_the_prefix() {
        let text = journal_lines(|| tracing::error!(target: "msbfs::mount", "panicked:\n  0: frame\n  1: frame"));
        assert_eq!(text, "<3>ERROR msbfs::mount: panicked:\n<3>  0: frame\n<3>  1: frame\n");
    }
}

//! The service manager protocol (`sd_notify`): `READY=1` once the mount answers,
//! `STOPPING=1` as soon as a stop begins, each with a `STATUS=` line.
//!
//! A message is one datagram to the `AF_UNIX` socket named by `$NOTIFY_SOCKET`: a path
//! (`/run/systemd/notify`) or, when the value starts with `@`, an abstract socket name.
//! With the variable unset nothing is sent (msbfs runs outside a `Type=notify` unit);
//! a message that cannot be sent is a warning, never a reason to stop serving.
//!
//! Readiness means that the mount answers, not that mount(2) returned: a thread stats
//! the mountpoint until it sees msbfs's root there (a FUSE filesystem whose root inode
//! is 1, on another device than the mountpoint's parent, whose root directory lists).
//! The kernel holds every request until the daemon has answered FUSE `INIT`, so that
//! stat is answered by msbfs itself. Only then is `READY=1` sent, so a unit ordered
//! `After=` this one (a container that binds the mount, a log shipper) finds the
//! sandboxes there. `READY=1` is never sent after `STOPPING=1`.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// How often the readiness probe looks at the mountpoint again.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// How long a stop waits for a readiness probe still inside a stat of the mount.
const PROBE_JOIN: Duration = Duration::from_secs(1);

/// Where the service manager listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket in the filesystem (`/run/systemd/notify`).
    Path(PathBuf),
    /// An abstract socket: the name after the `@`, without it.
    Abstract(Vec<u8>),
}

impl NotifyAddr {
    /// Parses a `$NOTIFY_SOCKET` value: an absolute path, or `@name` for an abstract
    /// socket. `Err` says why anything else is not usable (relative paths, `vsock:`
    /// addresses, an empty name).
    pub fn parse(value: &OsStr) -> Result<NotifyAddr, String> {
        let bytes = value.as_bytes();
        match bytes.first() {
            Some(b'/') => Ok(NotifyAddr::Path(PathBuf::from(value))),
            Some(b'@') if bytes.len() > 1 => Ok(NotifyAddr::Abstract(bytes[1..].to_vec())),
            Some(b'@') => Err("an abstract socket name is empty".into()),
            Some(_) => Err(format!("{value:?} is neither an absolute path nor an @abstract name")),
            None => Err("it is empty".into()),
        }
    }

    fn socket_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            NotifyAddr::Path(path) => SocketAddr::from_pathname(path),
            NotifyAddr::Abstract(name) => SocketAddr::from_abstract_name(name),
        }
    }
}

/// Builds one notification: `KEY=value` lines (newline-terminated). A newline inside a
/// value would start a new assignment, so it becomes a space.
pub fn message(assignments: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (key, value) in assignments {
        out.push_str(key);
        out.push('=');
        out.extend(value.chars().map(|c| if c == '\n' { ' ' } else { c }));
        out.push('\n');
    }
    out
}

/// Sends notifications to one service manager socket (or nowhere).
#[derive(Debug)]
pub struct Notifier {
    addr: Option<NotifyAddr>,
}

impl Notifier {
    /// The notifier of `$NOTIFY_SOCKET`: none when it is unset; an unusable value is
    /// warned about once and then ignored.
    pub fn from_env() -> Notifier {
        let Some(value) = std::env::var_os(NOTIFY_SOCKET_ENV) else { return Notifier { addr: None } };
        match NotifyAddr::parse(&value) {
            Ok(addr) => Notifier { addr: Some(addr) },
            Err(why) => {
                tracing::warn!("${NOTIFY_SOCKET_ENV} is not usable ({why}); not notifying the service manager");
                Notifier { addr: None }
            }
        }
    }

    /// A notifier that sends to `addr`.
    pub fn to(addr: NotifyAddr) -> Notifier {
        Notifier { addr: Some(addr) }
    }

    /// True when there is somewhere to send to.
    pub fn is_active(&self) -> bool {
        self.addr.is_some()
    }

    /// Sends `text` as one datagram. A failure is returned, for [`Notifier::notify`] to warn.
    pub fn send(&self, text: &str) -> std::io::Result<()> {
        let Some(addr) = &self.addr else { return Ok(()) };
        let socket = UnixDatagram::unbound()?;
        let sent = socket.send_to_addr(text.as_bytes(), &addr.socket_addr()?)?;
        if sent != text.len() {
            return Err(std::io::Error::other(format!("sent {sent} of {} bytes", text.len())));
        }
        Ok(())
    }

    /// Sends `text`, logging it at debug level, and a failure as a warning.
    pub fn notify(&self, text: &str) {
        if !self.is_active() {
            return;
        }
        match self.send(text) {
            Ok(()) => tracing::debug!(message = text.trim_end(), "notified the service manager"),
            Err(e) => tracing::warn!("cannot notify the service manager ({:?}): {e}", text.trim_end()),
        }
    }
}

/// True when `mountpoint` is answered by a FUSE filesystem's root: inode 1
/// (`FUSE_ROOT_ID`), another device than the mountpoint's parent, and its directory
/// lists. The first stat blocks until the daemon has answered FUSE `INIT`.
pub fn answers_as_fuse_root(mountpoint: &Path) -> bool {
    let Ok(root) = std::fs::metadata(mountpoint) else { return false };
    let Ok(parent) = std::fs::metadata(mountpoint.join("..")) else { return false };
    let fuse =
        nix::sys::statfs::statfs(mountpoint).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC);
    fuse && root.is_dir() && root.ino() == 1 && root.dev() != parent.dev() && std::fs::read_dir(mountpoint).is_ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Stopping,
}

/// What the service manager is told about one mount: `READY=1` from a probe thread once
/// the mount answers, `STOPPING=1` from [`Service::stopping`]. The phase only moves
/// forward (starting → ready → stopping, or starting → stopping), under one lock, so
/// `READY=1` never follows `STOPPING=1`.
pub struct Service {
    notifier: Arc<Notifier>,
    phase: Arc<Mutex<Phase>>,
    probe_done: Option<mpsc::Receiver<()>>,
}

impl Service {
    /// Starts telling the service manager of `$NOTIFY_SOCKET` about the mount at
    /// `mountpoint` (already mounted, its session running): a probe thread sends
    /// `READY=1` once it answers. Without `$NOTIFY_SOCKET` this does nothing.
    pub fn start(mountpoint: &Path) -> Service {
        Service::start_with(Notifier::from_env(), mountpoint)
    }

    /// Like [`Service::start`], sending through `notifier`.
    pub fn start_with(notifier: Notifier, mountpoint: &Path) -> Service {
        let notifier = Arc::new(notifier);
        let phase = Arc::new(Mutex::new(Phase::Starting));
        let mut service = Service { notifier: notifier.clone(), phase: phase.clone(), probe_done: None };
        if !notifier.is_active() {
            return service;
        }
        let (done, probe_done) = mpsc::channel();
        let mountpoint = mountpoint.to_path_buf();
        let spawned = std::thread::Builder::new().name("msbfs-ready".into()).spawn(move || {
            let status = format!("Serving {}", mountpoint.display());
            let ready = message(&[("READY", "1"), ("STATUS", &status)]);
            loop {
                if *lock(&phase) != Phase::Starting {
                    break;
                }
                if answers_as_fuse_root(&mountpoint) {
                    let mut phase = lock(&phase);
                    if *phase == Phase::Starting {
                        notifier.notify(&ready);
                        *phase = Phase::Ready;
                    }
                    break;
                }
                std::thread::sleep(PROBE_EVERY);
            }
            let _ = done.send(());
        });
        match spawned {
            Ok(_) => service.probe_done = Some(probe_done),
            Err(e) => tracing::warn!("cannot start the readiness probe: {e}; the service manager is not told READY=1"),
        }
        service
    }

    /// A stop begins (a stop signal, an external unmount, a failure): sends
    /// `STOPPING=1` once, and waits briefly for the readiness probe to leave the mount
    /// alone, so that it holds no request of the mount being unmounted.
    pub fn stopping(&mut self) {
        {
            let mut phase = lock(&self.phase);
            if *phase == Phase::Stopping {
                return;
            }
            *phase = Phase::Stopping;
            self.notifier.notify(&message(&[("STOPPING", "1"), ("STATUS", "Stopping: unmounting")]));
        }
        if let Some(done) = self.probe_done.take() {
            let _ = done.recv_timeout(PROBE_JOIN);
        }
    }
}

fn lock(phase: &Mutex<Phase>) -> std::sync::MutexGuard<'_, Phase> {
    phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_values() {
        assert_eq!(
            NotifyAddr::parse(OsStr::new("/run/systemd/notify")),
            Ok(NotifyAddr::Path("/run/systemd/notify".into()))
        );
        assert_eq!(NotifyAddr::parse(OsStr::new("@sd-notify/1")), Ok(NotifyAddr::Abstract(b"sd-notify/1".to_vec())));
        assert!(NotifyAddr::parse(OsStr::new("@")).is_err());
        assert!(NotifyAddr::parse(OsStr::new("")).is_err());
        assert!(NotifyAddr::parse(OsStr::new("run/notify")).is_err());
        assert!(NotifyAddr::parse(OsStr::new("vsock:2:1234")).is_err());
    }

    #[test]
    fn messages_are_newline_terminated_assignments() {
        assert_eq!(message(&[("READY", "1"), ("STATUS", "Serving /mnt/msb")]), "READY=1\nSTATUS=Serving /mnt/msb\n");
        // A newline in a value (a mountpoint may hold one) cannot forge an assignment.
        assert_eq!(message(&[("STATUS", "Serving /mnt/a\nREADY=1")]), "STATUS=Serving /mnt/a READY=1\n");
    }

    fn recv(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notifier::to(NotifyAddr::Path(path)).send("READY=1\n").unwrap();
        assert_eq!(recv(&socket), "READY=1\n");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("msbfs-unit-{}-{:?}", std::process::id(), std::thread::current().id());
        let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let addr = NotifyAddr::parse(OsStr::new(&format!("@{name}"))).unwrap();
        Notifier::to(addr).send("STOPPING=1\n").unwrap();
        assert_eq!(recv(&socket), "STOPPING=1\n");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic_and_nowhere_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let gone = Notifier::to(NotifyAddr::Path(dir.path().join("nobody-listens")));
        assert!(gone.send("READY=1\n").is_err());
        gone.notify("READY=1\n");
        let nowhere = Notifier { addr: None };
        assert!(!nowhere.is_active());
        assert!(nowhere.send("READY=1\n").is_ok());
    }

    #[test]
    fn stopping_before_the_mount_answers_never_sends_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        // A plain directory never answers as a FUSE root: the probe keeps looking.
        let mut service = Service::start_with(Notifier::to(NotifyAddr::Path(path)), dir.path());
        std::thread::sleep(Duration::from_millis(50));
        service.stopping();
        service.stopping();
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=Stopping: unmounting\n");
        std::thread::sleep(Duration::from_millis(50));
        socket.set_nonblocking(true).unwrap();
        assert!(socket.recv(&mut [0u8; 64]).is_err(), "one message only");
    }
}

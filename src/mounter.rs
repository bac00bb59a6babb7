//! Attaching and detaching the FUSE mount, with or without root.
//!
//! As root, msbfs calls mount(2) itself (type `fuse.msbfs`, source `msbfs`). As an
//! ordinary user it runs `fusermount3` (Debian `fuse3`, setuid root) the way libfuse,
//! sshfs and rclone do: fusermount3 opens `/dev/fuse`, mounts it on a directory the
//! user owns, and passes the descriptor back over a socket named by `_FUSE_COMMFD`.
//! Unmounting is umount(2) as root and `fusermount3 -u` otherwise.

use std::ffi::OsString;
use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::socket::{self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};

/// The file that lets ordinary users mount with `allow_other`.
pub const FUSE_CONF: &str = "/etc/fuse.conf";

/// The helper programs tried, in order, for a mount without root.
const FUSERMOUNT: [&str; 2] = ["fusermount3", "fusermount"];

/// Mount flags shared by both ways of mounting.
const FLAGS: &str = "ro,nosuid,nodev,noexec,noatime,default_permissions";

/// True when this process may call mount(2) itself.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when `/etc/fuse.conf` has an active `user_allow_other` line.
pub fn user_allow_other() -> bool {
    std::fs::read_to_string(FUSE_CONF).is_ok_and(|text| allows_other(&text))
}

/// True when the text of a `fuse.conf` has an uncommented `user_allow_other` line.
fn allows_other(text: &str) -> bool {
    text.lines().any(|line| line.split('#').next().unwrap_or_default().trim() == "user_allow_other")
}

/// The program `name` in a directory of `$PATH`, else in `/usr/bin` or `/bin` (where
/// a setuid helper lives even when `$PATH` is bare).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut dirs = std::env::split_paths(&path).chain(["/usr/bin".into(), "/bin".into()]);
    dirs.find_map(|dir| Some(dir.join(name)).filter(|p| p.is_file()))
}

/// The first `fusermount3` (or `fusermount`) found by [`find_program`].
fn fusermount() -> Option<PathBuf> {
    FUSERMOUNT.iter().find_map(|name| find_program(name))
}

/// Mounts msbfs read-only on `mountpoint` and returns the `/dev/fuse` descriptor that
/// serves it: with mount(2) as root, else through fusermount3. Errors are one line
/// naming the cause and the fix.
pub fn mount(mountpoint: &Path, allow_other: bool) -> std::io::Result<OwnedFd> {
    if privileged() {
        mount_directly(mountpoint, allow_other)
    } else {
        mount_with_fusermount(mountpoint, allow_other)
    }
}

/// mount(2) by hand (fuser's own mount ignores the subtype).
fn mount_directly(mountpoint: &Path, allow_other: bool) -> std::io::Result<OwnedFd> {
    use nix::mount::MsFlags;
    let fd: OwnedFd =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(dev_fuse_error)?.into();
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!("fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions", fd.as_raw_fd());
    if allow_other {
        data.push_str(",allow_other");
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME;
    nix::mount::mount(Some("msbfs"), mountpoint, Some("fuse.msbfs"), flags, Some(data.as_str()))
        .map_err(|e| std::io::Error::other(format!("mount {}: {e}", mountpoint.display())))?;
    Ok(fd)
}

fn dev_fuse_error(e: std::io::Error) -> std::io::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => {
            "load the fuse module (modprobe fuse), or in a container pass --device /dev/fuse"
        }
        std::io::ErrorKind::PermissionDenied => "/dev/fuse must be readable and writable (mode 0666 is usual)",
        _ => "is FUSE available here?",
    };
    std::io::Error::new(e.kind(), format!("cannot open /dev/fuse: {e}; {hint}"))
}

/// Runs `fusermount3 -o … -- mountpoint` with one end of a socket pair as
/// `_FUSE_COMMFD`, and receives the `/dev/fuse` descriptor it sends back.
fn mount_with_fusermount(mountpoint: &Path, allow_other: bool) -> std::io::Result<OwnedFd> {
    let Some(helper) = fusermount() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "mounting as an ordinary user needs fusermount3 (Debian and Ubuntu: apt install fuse3); or run msbfs as root",
        ));
    };
    let (ours, theirs) = socket::socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut options = format!("{FLAGS},fsname=msbfs,subtype=msbfs");
    if allow_other {
        options.push_str(",allow_other");
    }
    let child_end = theirs.as_raw_fd();
    let mut command = Command::new(&helper);
    command
        .arg("-o")
        .arg(&options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", child_end.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure only clears FD_CLOEXEC on a descriptor we own, which is
    // async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            if libc::fcntl(child_end, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", helper.display())))?;
    drop(theirs);
    let received = receive_fd(&ours);
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = child.wait()?;
    match received {
        Ok(Some(fd)) if status.success() => Ok(fd),
        _ => {
            let said = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no descriptor came back").trim();
            let hint = if said.contains("allow_other") {
                format!("; add the line user_allow_other to {FUSE_CONF}")
            } else if said.contains("/dev/fuse") {
                "; is /dev/fuse there and readable and writable by you?".to_string()
            } else {
                String::new()
            };
            Err(std::io::Error::other(format!("{}: {said}{hint}", helper.display())))
        }
    }
}

/// Receives one descriptor sent with `SCM_RIGHTS` on `socket`; `None` when the other
/// end closed without sending one.
fn receive_fd(socket: &OwnedFd) -> std::io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let msg = socket::recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            let mut fds = fds.into_iter();
            // SAFETY: the kernel just installed these descriptors in this process for us.
            let first = fds.next().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            for extra in fds {
                // SAFETY: as above; descriptors beyond the first are not wanted.
                drop(unsafe { OwnedFd::from_raw_fd(extra) });
            }
            return Ok(first);
        }
    }
    Ok(None)
}

/// Unmounts `mountpoint`: umount(2) as root (lazily if it is busy), `fusermount3 -u`
/// (then `-uz`) otherwise.
pub fn unmount(mountpoint: &Path) -> std::io::Result<()> {
    if privileged() {
        return match nix::mount::umount(mountpoint) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!("unmount {}: {e}; detaching lazily", mountpoint.display());
                nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from)
            }
        };
    }
    fusermount_unmount(mountpoint, false).or_else(|e| {
        tracing::warn!("{e}; detaching lazily");
        fusermount_unmount(mountpoint, true)
    })
}

/// Detaches `mountpoint` at once even if it is in use (a stale mount).
pub fn detach(mountpoint: &Path) -> std::io::Result<()> {
    if privileged() {
        nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from)
    } else {
        fusermount_unmount(mountpoint, true)
    }
}

fn fusermount_unmount(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    let helper = fusermount().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "unmounting as an ordinary user needs fusermount3 (apt install fuse3)",
        )
    })?;
    let out = Command::new(&helper)
        .arg(if lazy { "-uz" } else { "-u" })
        .arg("--")
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(std::io::Error::other(format!("{}: {}", helper.display(), said.lines().next().unwrap_or("failed").trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_allow_other_must_be_an_uncommented_line() {
        assert!(allows_other("user_allow_other\n"));
        assert!(allows_other("# comment\nmount_max = 1000\n  user_allow_other  # yes\n"));
        assert!(!allows_other("#user_allow_other\n"));
        assert!(!allows_other("# user_allow_other\nmount_max = 1000\n"));
        assert!(!allows_other("user_allow_other_not\n"));
        assert!(!allows_other(""));
    }
}

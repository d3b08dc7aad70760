//! The listening socket: its directory (0700, refused when another user could tamper with it),
//! the bind that refuses to take over a live daemon's socket, and the signals the control loop
//! waits for. Runs on the main thread at startup. RT: no.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{bail, Context};
use log::info;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

/// Creates the socket's directory (0700), refuses a directory another user could tamper with
/// ([`check_socket_dir`]), refuses a path where another daemon answers, removes a stale socket
/// file.
///
/// # Errors
/// The directory is not safe, another daemon answers, or a filesystem call fails.
pub fn check_socket_path(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating socket directory {}", dir.display()))?;
        }
        let md = std::fs::metadata(dir).with_context(|| format!("checking socket directory {}", dir.display()))?;
        // SAFETY: geteuid cannot fail.
        check_socket_dir(dir, md.uid(), md.mode(), unsafe { libc::geteuid() })?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
        Ok(md) => {
            if !md.file_type().is_socket() {
                bail!("{} exists and is not a socket; refusing to replace it", path.display());
            }
            let probe = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
            let addr = UnixAddr::new(path)?;
            if socket::connect(probe.as_raw_fd(), &addr).is_ok() {
                bail!("another shmixd is already serving {}", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
            info!("removed stale socket {}", path.display());
            Ok(())
        }
    }
}

/// A socket directory must belong to the daemon's user or root and be writable by nobody else
/// (no group or other write bit, sticky or not): whoever can write there can replace the socket
/// with their own and receive every client's audio and shared memory (`/tmp/shmix-$UID` made
/// first by another user, a `--socket` in a shared directory). A root-owned 0755 `/run/shmix`
/// and the 0750 directory `--system` creates pass.
///
/// # Errors
/// Says who owns the directory, its mode, and what is expected.
pub fn check_socket_dir(dir: &Path, owner: u32, mode: u32, euid: u32) -> anyhow::Result<()> {
    if owner != euid && owner != 0 {
        bail!(
            "socket directory {} belongs to uid {owner}, not to this daemon's uid {euid} or root: another user \
             could replace the socket; refusing to listen there (use a directory of your own, or remove it)",
            dir.display()
        );
    }
    if mode & 0o022 != 0 {
        bail!(
            "socket directory {} is writable by others (mode {:04o}): anyone who can write there could replace \
             the socket; refusing to listen there (chmod go-w it, or use a directory of your own)",
            dir.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// Binds and listens (non-blocking).
///
/// # Errors
/// The failing socket call.
pub fn listen(path: &Path) -> anyhow::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    socket::bind(fd.as_raw_fd(), &addr).with_context(|| format!("binding {}", path.display()))?;
    socket::listen(&fd, socket::Backlog::new(64)?).context("listen")?;
    Ok(fd)
}

/// Blocks SIGTERM/SIGINT in this thread (threads spawned later inherit the mask) and returns a
/// signalfd for them. Call before spawning the mix thread.
///
/// # Errors
/// The failing call.
pub fn signal_fd() -> anyhow::Result<SignalFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking signals")?;
    Ok(SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_directories_others_could_write_are_refused() {
        let d = Path::new("/x");
        assert!(check_socket_dir(d, 1000, 0o40700, 1000).is_ok());
        assert!(check_socket_dir(d, 0, 0o40755, 1000).is_ok(), "root's /run/shmix");
        assert!(check_socket_dir(d, 0, 0o40750, 0).is_ok(), "--system's own directory");
        let e = check_socket_dir(d, 1001, 0o40700, 1000).unwrap_err().to_string();
        assert!(e.contains("uid 1001") && e.contains("uid 1000"), "{e}");
        for mode in [0o40777, 0o41777, 0o40770, 0o40702] {
            let e = check_socket_dir(d, 1000, mode, 1000).unwrap_err().to_string();
            assert!(e.contains("writable by others"), "{mode:o}: {e}");
        }
        assert!(check_socket_dir(Path::new("/tmp"), 0, 0o41777, 0).is_err(), "/tmp itself");
    }
}

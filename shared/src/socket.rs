//! The unix socket: where it lives, and sending/receiving one [`SocketMsg`] per `SOCK_SEQPACKET`
//! packet with file descriptors attached by `SCM_RIGHTS`. Runs in both processes. RT: no.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::msg::{SocketMsg, MAX_PACKET_BYTES};

/// Environment variable that overrides every other choice of socket path.
pub const SOCKET_ENV: &str = "SHMIX_SOCKET";

/// Most descriptors one packet may carry.
pub const MAX_FDS: usize = 3;

/// Environment variable that moves the system-wide socket (`shmixd --system`, and where clients
/// look when no user socket exists): for tests and unusual layouts.
pub const SYSTEM_SOCKET_ENV: &str = "SHMIX_SYSTEM_SOCKET";

/// Where `shmixd --system` listens unless told otherwise.
pub const SYSTEM_SOCKET_PATH: &str = "/run/shmix/socket";

/// The socket path when nothing is configured: `$XDG_RUNTIME_DIR/shmix/socket`, or
/// `/tmp/shmix-$UID/socket` when `XDG_RUNTIME_DIR` is unset.
#[must_use]
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("shmix").join("socket"),
        // SAFETY: getuid cannot fail.
        _ => PathBuf::from(format!("/tmp/shmix-{}", unsafe { libc::getuid() })).join("socket"),
    }
}

/// The system-wide socket: `SHMIX_SYSTEM_SOCKET` if set, else `/run/shmix/socket`.
#[must_use]
pub fn system_socket_path() -> PathBuf {
    match std::env::var_os(SYSTEM_SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(SYSTEM_SOCKET_PATH),
    }
}

/// Where a user-mode daemon listens when not given `--socket`: `SHMIX_SOCKET` if set, else the
/// user default. (Never the system socket: a user daemon must not take another daemon's place.)
#[must_use]
pub fn user_socket_path() -> PathBuf {
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_socket_path(),
    }
}

/// Resolves the socket path a client (the plugin, shmixctl) connects to: `SHMIX_SOCKET` if set,
/// else `configured` (the `socket` key or `--socket`), else the user default when a socket exists
/// there, else the system socket when one exists there, else the user default (so the error
/// names the path a user daemon would use).
#[must_use]
pub fn resolve_socket_path(configured: Option<&str>) -> PathBuf {
    let env = std::env::var_os(SOCKET_ENV).map(PathBuf::from);
    // A socket we may not even look at (a `--system` directory closed to us) counts as there:
    // connecting then says "Permission denied" about it, not "no such file" about another path.
    resolve_from(env, configured, default_socket_path(), system_socket_path(), |p| match p.symlink_metadata() {
        Ok(m) => std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()),
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    })
}

/// [`resolve_socket_path`] with its inputs spelled out: `is_socket` says whether a socket file
/// exists at a path.
#[must_use]
pub fn resolve_from(
    env: Option<PathBuf>,
    configured: Option<&str>,
    user: PathBuf,
    system: PathBuf,
    is_socket: impl Fn(&std::path::Path) -> bool,
) -> PathBuf {
    if let Some(env) = env.filter(|v| !v.as_os_str().is_empty()) {
        return env;
    }
    match configured {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ if is_socket(&user) => user,
        _ if is_socket(&system) => system,
        _ => user,
    }
}

/// Sends `msg` as one packet with `fds` attached.
///
/// # Errors
/// The `sendmsg` error.
pub fn send(sock: BorrowedFd<'_>, msg: &SocketMsg, fds: &[RawFd]) -> io::Result<()> {
    let bytes = msg.encode();
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// A received packet: its bytes (not yet decoded) and the descriptors that came with it.
#[derive(Debug)]
pub struct Packet {
    /// The packet's bytes; empty means the peer closed the connection.
    pub bytes: Vec<u8>,
    /// Descriptors received, owned now (closed on drop).
    pub fds: Vec<OwnedFd>,
    /// The packet was longer than [`MAX_PACKET_BYTES`] or its control data was cut.
    pub truncated: bool,
}

/// Receives one packet (blocking or not, as the socket is set). Descriptors arrive close-on-exec.
/// More than [`MAX_FDS`] descriptors mark the packet truncated; all received ones are closed
/// when it drops.
///
/// # Errors
/// The `recvmsg` error (`WouldBlock` on a non-blocking socket with nothing to read).
pub fn recv(sock: BorrowedFd<'_>) -> io::Result<Packet> {
    let mut buf = vec![0u8; MAX_PACKET_BYTES + 1];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg_buf), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(list) = c {
            for fd in list {
                // SAFETY: the kernel just installed this descriptor for us; we own it now.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let n = msg.bytes;
    let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || n > MAX_PACKET_BYTES;
    buf.truncate(n);
    Ok(Packet { bytes: buf, fds, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Direction, PROTOCOL_VERSION};
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    #[test]
    fn message_and_fds_cross_a_seqpacket_pair() {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let msg =
            SocketMsg::Hello { version: PROTOCOL_VERSION, direction: Direction::Playback, pid: 1, name: "t".into() };
        send(a.as_fd(), &msg, &[a.as_raw_fd()]).unwrap();
        let p = recv(b.as_fd()).unwrap();
        assert!(!p.truncated);
        assert_eq!(SocketMsg::decode(&p.bytes).unwrap(), msg);
        assert_eq!(p.fds.len(), 1);
    }

    #[test]
    fn resolution_order_env_config_user_system() {
        let (u, s) = (PathBuf::from("/u/socket"), PathBuf::from("/s/socket"));
        let env = Some(PathBuf::from("/e/socket"));
        let both = |_: &std::path::Path| true;
        let none = |_: &std::path::Path| false;
        let only_system = |p: &std::path::Path| p == std::path::Path::new("/s/socket");
        assert_eq!(resolve_from(env.clone(), Some("/c"), u.clone(), s.clone(), both), PathBuf::from("/e/socket"));
        assert_eq!(resolve_from(Some(PathBuf::new()), Some("/c"), u.clone(), s.clone(), both), PathBuf::from("/c"));
        assert_eq!(resolve_from(None, Some("/c"), u.clone(), s.clone(), only_system), PathBuf::from("/c"));
        assert_eq!(resolve_from(None, Some(""), u.clone(), s.clone(), both), u);
        assert_eq!(resolve_from(None, None, u.clone(), s.clone(), both), u);
        assert_eq!(resolve_from(None, None, u.clone(), s.clone(), only_system), s);
        assert_eq!(resolve_from(None, None, u.clone(), s, none), u);
    }

    #[test]
    fn env_overrides_config() {
        // Not touching the process environment (tests run in parallel): only the config path.
        if std::env::var_os(SOCKET_ENV).is_none() {
            assert_eq!(resolve_socket_path(Some("/x/y")), PathBuf::from("/x/y"));
        }
    }
}

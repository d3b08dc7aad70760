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

/// Resolves the socket path: `SHMIX_SOCKET` if set, else `configured`, else the default.
#[must_use]
pub fn resolve_socket_path(configured: Option<&str>) -> PathBuf {
    if let Some(env) = std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(env);
    }
    match configured {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_socket_path(),
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
    fn env_overrides_config() {
        // Not touching the process environment (tests run in parallel): only the config path.
        if std::env::var_os(SOCKET_ENV).is_none() {
            assert_eq!(resolve_socket_path(Some("/x/y")), PathBuf::from("/x/y"));
        }
    }
}

//! The control connection to shmixd: connect + handshake at open, stream setup/teardown at
//! hw_params/hw_free, and the cheap "did the daemon go away" check. Setup and teardown only: no
//! socket traffic in steady state. Runs in the host program's calling thread. RT: no.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{self, MsgFlags};
use shmix_shared::msg::{AudioParams, Direction, SocketMsg, PROTOCOL_VERSION};
use shmix_shared::socket as wire;
use shmix_shared::{ChannelMap, ResampleQuality};

use crate::Errno;

/// Timeout on every blocking send/recv of the socket (handshake, stream setup/teardown).
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

/// A connected, welcomed control socket.
#[derive(Debug)]
pub struct Conn {
    sock: OwnedFd,
    path: PathBuf,
    /// The device's parameters from `Welcome`.
    pub device: AudioParams,
}

/// Why `connect` failed: the errno to return and the user-facing message.
#[derive(Debug)]
pub struct OpenError {
    /// Positive errno.
    pub errno: i32,
    /// Message for stderr (without the `shmix:` prefix).
    pub message: String,
}

fn io_errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// The program name the daemon lists: `/proc/self/comm`.
#[must_use]
pub fn program_name() -> String {
    std::fs::read_to_string("/proc/self/comm").map(|s| s.trim_end().to_owned()).unwrap_or_else(|_| "?".into())
}

impl Conn {
    /// Connects to `path` (blocking, 2 s timeouts), checks the daemon's credentials before
    /// sending anything, and does the handshake for `direction` on `device` (a PCM name the
    /// daemon serves; empty: its default device) (`shmix_shared::connect`).
    ///
    /// # Errors
    /// An [`OpenError`] with the errno and the message to print.
    pub fn connect(path: &Path, direction: Direction, device: &str) -> Result<Self, OpenError> {
        let hello = SocketMsg::Hello {
            version: PROTOCOL_VERSION,
            direction,
            pid: std::process::id(),
            name: program_name(),
            device: device.to_owned(),
        };
        match shmix_shared::connect::connect(path, &hello, SOCKET_TIMEOUT) {
            Ok(c) => Ok(Self { sock: c.sock, path: path.to_owned(), device: c.device }),
            Err(e) => Err(OpenError { errno: e.errno(), message: e.to_string() }),
        }
    }

    /// The socket path this connection was made to.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket descriptor (polled for POLLIN/POLLHUP: the daemon went away).
    #[must_use]
    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Sends `CreateStream` (with the stream's channel map and resampling quality) and fds
    /// `[memfd, client_wake, daemon_wake]`, and waits for the answer.
    ///
    /// # Errors
    /// `Err((errno, message))`: a refusal (with the daemon's reason) or a socket failure.
    pub fn create_stream(
        &self,
        params: AudioParams,
        msg_records: u32,
        memfd_bytes: u64,
        chmap: ChannelMap,
        quality: ResampleQuality,
        fds: [RawFd; 3],
    ) -> Result<u32, (i32, String)> {
        let msg = SocketMsg::CreateStream { params, msg_records, memfd_bytes, chmap, quality };
        wire::send(self.sock.as_fd(), &msg, &fds).map_err(|e| (io_errno(&e), format!("sending CreateStream: {e}")))?;
        match recv_msg(self.sock.as_fd()) {
            Ok(SocketMsg::StreamReady { stream_id }) => Ok(stream_id),
            Ok(SocketMsg::Refused { errno, reason }) => {
                Err((errno_or(errno, libc::EINVAL), format!("shmixd refused the stream: {reason}")))
            }
            Ok(other) => Err((libc::EPROTO, format!("unexpected answer to CreateStream: {other:?}"))),
            Err(e) => Err((e.0, format!("waiting for StreamReady: {}", describe(e)))),
        }
    }

    /// Sends `DestroyStream` and waits for `StreamDestroyed`.
    ///
    /// # Errors
    /// The errno of a socket failure or an unexpected answer.
    pub fn destroy_stream(&self) -> Result<(), Errno> {
        wire::send(self.sock.as_fd(), &SocketMsg::DestroyStream, &[]).map_err(|e| Errno(io_errno(&e)))?;
        match recv_msg(self.sock.as_fd()) {
            Ok(SocketMsg::StreamDestroyed) => Ok(()),
            Ok(_) => Err(Errno(libc::EPROTO)),
            Err(e) => Err(e),
        }
    }

    /// Called only when poll reported the socket readable/hung up: true when the daemon is gone
    /// (EOF or error). One non-blocking `recv`; an unexpected packet is consumed and ignored.
    #[must_use]
    pub fn peer_gone(&self) -> bool {
        let mut buf = [0u8; 64];
        match socket::recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => true,
            Ok(_) => false,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => false,
            Err(_) => true,
        }
    }
}

fn errno_or(errno: u32, fallback: i32) -> i32 {
    match i32::try_from(errno) {
        Ok(e) if e > 0 => e,
        _ => fallback,
    }
}

fn describe(e: Errno) -> String {
    match e.0 {
        libc::EAGAIN => format!("no answer within {} s", SOCKET_TIMEOUT.as_secs()),
        libc::ECONNRESET => "the daemon closed the connection".into(),
        libc::EPROTO => "the answer does not decode".into(),
        n => nix::errno::Errno::from_raw(n).desc().to_string(),
    }
}

fn recv_msg(sock: std::os::fd::BorrowedFd<'_>) -> Result<SocketMsg, Errno> {
    let p = wire::recv(sock).map_err(|e| Errno(io_errno(&e)))?;
    if p.bytes.is_empty() {
        return Err(Errno(libc::ECONNRESET));
    }
    if p.truncated {
        return Err(Errno(libc::EPROTO));
    }
    SocketMsg::decode(&p.bytes).map_err(|_| Errno(libc::EPROTO))
}

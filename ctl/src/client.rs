//! A control connection to shmixd: connect, `ControlHello`, then one request and one reply at a
//! time. Runs in `shmixctl`. RT: no.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use shmix_shared::control::{self, Reply, Request};
use shmix_shared::socket as wire;
use shmix_shared::{SocketMsg, PROTOCOL_VERSION};

/// An open control connection.
#[derive(Debug)]
pub struct Client {
    fd: OwnedFd,
}

/// The socket `shmixctl` talks to: `--socket`, else `SHMIX_SOCKET`, else the default.
#[must_use]
pub fn socket_path(cli: Option<&Path>) -> PathBuf {
    match cli {
        Some(p) => p.to_path_buf(),
        None => wire::resolve_socket_path(None),
    }
}

impl Client {
    /// Connects and shakes hands.
    ///
    /// # Errors
    /// The daemon is not there, refuses, or answers nonsense.
    pub fn connect(path: &Path) -> anyhow::Result<Self> {
        let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
        // A daemon that hangs makes shmixctl fail after 5 s, never hang.
        let tv = nix::sys::time::TimeVal::new(5, 0);
        socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv).context("SO_RCVTIMEO")?;
        socket::setsockopt(&fd, socket::sockopt::SendTimeout, &tv).context("SO_SNDTIMEO")?;
        let addr = UnixAddr::new(path)?;
        socket::connect(fd.as_raw_fd(), &addr)
            .with_context(|| format!("cannot reach shmixd at {} (is it running?)", path.display()))?;
        let hello = SocketMsg::ControlHello { version: PROTOCOL_VERSION, name: "shmixctl".into() };
        // A daemon that refuses at accept (the peer's uid or group, a limit) sends `Refused` and
        // closes at once: the Hello may then fail with EPIPE, or the first recv with ECONNRESET,
        // while the refusal with its reason is still queued for us (as in the plugin's conn.rs).
        let sent = wire::send(fd.as_fd(), &hello, &[]);
        let pkt = match wire::recv(fd.as_fd()) {
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ECONNRESET as i32) => wire::recv(fd.as_fd()),
            r => r,
        };
        let answer = pkt.map(|p| (!p.bytes.is_empty()).then(|| SocketMsg::decode(&p.bytes)));
        match (sent, answer) {
            (_, Ok(Some(Ok(SocketMsg::Refused { reason, .. })))) => bail!("shmixd refused: {reason}"),
            (Err(e), _) => Err(e).context("sending ControlHello"),
            (Ok(()), Err(e)) => Err(e).context("waiting for Welcome"),
            (Ok(()), Ok(None)) => bail!("shmixd at {} closed the connection", path.display()),
            (Ok(()), Ok(Some(Ok(SocketMsg::Welcome { .. })))) => Ok(Self { fd }),
            (Ok(()), Ok(Some(Ok(other)))) => bail!("unexpected answer from shmixd: {other:?}"),
            (Ok(()), Ok(Some(Err(e)))) => Err(anyhow!("bad answer from shmixd: {e}")),
        }
    }

    /// Sends `req` and waits for its reply (`Reply::Error` becomes an error).
    ///
    /// # Errors
    /// I/O, a reply that does not decode, or the daemon's refusal.
    pub fn call(&self, req: Request) -> anyhow::Result<Reply> {
        control::send_packet(self.fd.as_fd(), &req.encode()).context("sending request")?;
        let r = self.recv()?;
        if let Reply::Error { reason, .. } = r {
            bail!("{reason}");
        }
        Ok(r)
    }

    /// Receives one packet (a reply or, subscribed, an event).
    ///
    /// # Errors
    /// I/O, EOF, or a packet that does not decode.
    pub fn recv(&self) -> anyhow::Result<Reply> {
        let bytes = control::recv_packet(self.fd.as_fd()).context("waiting for shmixd")?;
        if bytes.is_empty() {
            bail!("shmixd closed the connection");
        }
        Reply::decode(&bytes).map_err(|e| anyhow!("bad reply from shmixd: {e}"))
    }
}

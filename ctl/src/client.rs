//! A control connection to shmixd: connect, `ControlHello`, then one request and one reply at a
//! time. Runs in `shmixctl`. RT: no.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
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
    /// Connects, checks the daemon's credentials before sending anything, and shakes hands
    /// (`shmix_shared::connect`). A daemon that hangs makes shmixctl fail after 5 s, never hang.
    ///
    /// # Errors
    /// The daemon is not there, is not to be trusted, refuses, or answers nonsense.
    pub fn connect(path: &Path) -> anyhow::Result<Self> {
        let hello = SocketMsg::ControlHello { version: PROTOCOL_VERSION, name: "shmixctl".into() };
        let c = shmix_shared::connect::connect(path, &hello, Duration::from_secs(5))?;
        Ok(Self { fd: c.sock })
    }

    /// Sends `req` and waits for its reply (`Reply::Error` becomes an error).
    ///
    /// # Errors
    /// I/O, a reply that does not decode, or the daemon's refusal.
    pub fn call(&self, req: Request) -> anyhow::Result<Reply> {
        control::send_packet(self.fd.as_fd(), &req.encode()).context("sending request")?;
        let r = self.recv()?;
        if let Reply::Error { reason, .. } = r {
            bail!("{}", shmix_shared::text::escape_controls(&reason));
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

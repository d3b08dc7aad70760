//! Connecting to the daemon, for every client (the PCM plugin, the ctl plugin, `shmixctl`): the
//! socket with send/receive timeouts, the check that the process serving it may be trusted, and
//! the `Hello`/`Welcome` handshake with the daemon's refusal read even when it hung up first.
//!
//! Trust: the listening process's credentials (`SO_PEERCRED`, recorded by the kernel when it
//! called `listen()`) are read right after `connect()`, before a byte is sent. A daemon is
//! trusted when it runs as this process's effective uid, as root, or, for the system socket
//! only, as the owner of that socket file (`shmixd --system` under its own account; the system
//! directory is root's, so nobody else can bind there). Anyone else may have bound the path
//! (a `/tmp/shmix-$UID` made by another user first, a `socket` key pointing at a shared
//! directory) to collect the program's audio and shared memory: such a peer gets nothing.
//! Runs in the client's calling thread. RT: no.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::time::TimeVal;

use crate::msg::{AudioParams, SocketMsg, PROTOCOL_VERSION};
use crate::socket as wire;
use crate::text::escape_controls;

/// A connected, trusted, welcomed socket.
#[derive(Debug)]
pub struct Connected {
    /// The socket (blocking, with the timeouts it was connected with).
    pub sock: OwnedFd,
    /// The device's parameters from `Welcome`.
    pub device: AudioParams,
}

/// Which uids may serve a connection to a socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// This process's effective uid.
    pub euid: u32,
    /// The system socket's owner, when the path is the system socket.
    pub system_owner: Option<u32>,
}

impl Trust {
    /// Who may serve `path`: this process's euid, root, and, when `path` is the system socket
    /// ([`wire::system_socket_path`]), the uid owning that socket file.
    #[must_use]
    pub fn for_path(path: &Path) -> Self {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        let system_owner = (path == wire::system_socket_path())
            .then(|| std::fs::symlink_metadata(path).ok().map(|m| m.uid()))
            .flatten();
        Self { euid, system_owner }
    }

    /// Whether a daemon running as `uid` may be trusted.
    #[must_use]
    pub fn admits(&self, uid: u32) -> bool {
        uid == self.euid || uid == 0 || Some(uid) == self.system_owner
    }

    /// The trusted uids, for an error message.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut who = vec![if self.euid == 0 {
            "uid 0 (root: this program's)".to_string()
        } else {
            format!("uid {} (this program's) or 0 (root)", self.euid)
        }];
        if let Some(o) = self.system_owner.filter(|&o| o != self.euid && o != 0) {
            who.push(format!("{o} (the system socket's owner)"));
        }
        who.join(" or ")
    }
}

/// Why connecting failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    /// The socket path.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: ConnectErrorKind,
}

/// What went wrong while connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectErrorKind {
    /// `socket()`/`connect()` failed (positive errno): no daemon there, or no permission.
    Connect(i32),
    /// The process serving the socket runs as an untrusted uid; nothing was sent to it.
    Untrusted {
        /// The peer's uid (`SO_PEERCRED`).
        peer_uid: u32,
        /// Who would have been trusted.
        trust: Trust,
    },
    /// Sending `Hello` or receiving the answer failed (positive errno; `EAGAIN`: no answer
    /// within `timeout`, `ECONNRESET`: the daemon hung up, `EPROTO`: it does not decode).
    Handshake {
        /// Positive errno.
        errno: i32,
        /// The socket's receive timeout.
        timeout: Duration,
    },
    /// The daemon refused, with its reason (as sent: escape before printing).
    Refused {
        /// Positive errno (EPERM when the daemon sent none).
        errno: i32,
        /// The daemon's reason.
        reason: String,
    },
    /// The daemon speaks another protocol version.
    Version(u32),
    /// An answer other than `Welcome` or `Refused`.
    Unexpected(String),
}

impl ConnectError {
    /// The positive errno a plugin callback returns for this failure.
    #[must_use]
    pub fn errno(&self) -> i32 {
        match &self.kind {
            ConnectErrorKind::Connect(e) | ConnectErrorKind::Handshake { errno: e, .. } => *e,
            ConnectErrorKind::Untrusted { .. } => libc::EPERM,
            ConnectErrorKind::Refused { errno, .. } => *errno,
            ConnectErrorKind::Version(_) | ConnectErrorKind::Unexpected(_) => libc::EPROTO,
        }
    }
}

fn errno_text(e: i32) -> &'static str {
    nix::errno::Errno::from_raw(e).desc()
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.kind {
            ConnectErrorKind::Connect(e) => {
                let hint = if *e == libc::EACCES {
                    "The socket is not yours: run the program as the daemon's user, or, for a system-wide \
                     'shmixd --system', as a member of its group (usually audio; see README: Troubleshooting)."
                } else {
                    "Is shmixd running? Start it with 'shmixd' (see README: Troubleshooting)."
                };
                write!(f, "cannot connect to shmixd at {p}: {}. {hint}", errno_text(*e))
            }
            ConnectErrorKind::Untrusted { peer_uid, trust } => write!(
                f,
                "refusing the daemon at {p}: it runs as uid {peer_uid}, expected {}. Another user may be \
                 impersonating shmixd; nothing was sent to it (see README: Troubleshooting)",
                trust.describe()
            ),
            ConnectErrorKind::Handshake { errno, timeout } => {
                let what = match *errno {
                    libc::EAGAIN => format!("no answer within {} s", timeout.as_secs_f64()),
                    libc::ECONNRESET => "the daemon closed the connection".into(),
                    libc::EPROTO => "the answer does not decode".into(),
                    n => errno_text(n).to_string(),
                };
                write!(f, "handshake with shmixd at {p} failed: {what}")
            }
            ConnectErrorKind::Refused { reason, .. } => {
                write!(f, "shmixd at {p} refused the connection: {}", escape_controls(reason))
            }
            ConnectErrorKind::Version(v) => write!(
                f,
                "handshake with shmixd at {p} failed: protocol version {v}, this client speaks {PROTOCOL_VERSION} \
                 (update the plugin, shmixctl or the daemon)"
            ),
            ConnectErrorKind::Unexpected(what) => {
                write!(f, "handshake with shmixd at {p} failed: unexpected answer {}", escape_controls(what))
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Reads the credentials of the process serving `sock` and checks them against `trust`.
///
/// # Errors
/// [`ConnectErrorKind::Untrusted`], or [`ConnectErrorKind::Connect`] when they cannot be read.
pub fn check_peer(sock: BorrowedFd<'_>, trust: &Trust) -> Result<(), ConnectErrorKind> {
    let cred = socket::getsockopt(&sock, sockopt::PeerCredentials).map_err(|e| ConnectErrorKind::Connect(e as i32))?;
    if trust.admits(cred.uid()) {
        Ok(())
    } else {
        Err(ConnectErrorKind::Untrusted { peer_uid: cred.uid(), trust: trust.clone() })
    }
}

/// Connects to `path` (blocking; every send and receive times out after `timeout`), checks
/// that the daemon may be trusted ([`Trust::for_path`]) before sending anything, sends `hello`
/// (`Hello` or `ControlHello`) and waits for `Welcome`.
///
/// # Errors
/// A [`ConnectError`] naming the path and what failed.
pub fn connect(path: &Path, hello: &SocketMsg, timeout: Duration) -> Result<Connected, ConnectError> {
    connect_trusting(path, hello, timeout, &Trust::for_path(path))
}

/// [`connect`] with the trusted uids given.
///
/// # Errors
/// As [`connect`].
pub fn connect_trusting(
    path: &Path,
    hello: &SocketMsg,
    timeout: Duration,
    trust: &Trust,
) -> Result<Connected, ConnectError> {
    let err = |kind| ConnectError { path: path.to_owned(), kind };
    let sys = |e: nix::errno::Errno| err(ConnectErrorKind::Connect(e as i32));
    let sock = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(sys)?;
    let tv = TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
    socket::setsockopt(&sock, sockopt::SendTimeout, &tv).map_err(sys)?;
    socket::setsockopt(&sock, sockopt::ReceiveTimeout, &tv).map_err(sys)?;
    let addr = UnixAddr::new(path).map_err(sys)?;
    socket::connect(sock.as_raw_fd(), &addr).map_err(sys)?;
    check_peer(sock.as_fd(), trust).map_err(err)?;

    let handshake = |errno| err(ConnectErrorKind::Handshake { errno, timeout });
    // A daemon that refuses at accept (a limit, the peer's uid) sends `Refused` and closes at
    // once: our Hello then fails with EPIPE, but the refusal with its reason is still queued.
    // If our Hello reached it before it closed, the first recv reports ECONNRESET and the next
    // one returns the queued refusal.
    let sent = wire::send(sock.as_fd(), hello, &[]);
    let answer = match recv_msg(sock.as_fd()) {
        Err(libc::ECONNRESET) => recv_msg(sock.as_fd()),
        a => a,
    };
    if let Err(e) = sent {
        if !matches!(answer, Ok(SocketMsg::Refused { .. })) {
            return Err(handshake(e.raw_os_error().unwrap_or(libc::EIO)));
        }
    }
    match answer {
        Ok(SocketMsg::Welcome { version, device }) if version == PROTOCOL_VERSION => Ok(Connected { sock, device }),
        Ok(SocketMsg::Welcome { version, .. }) => Err(err(ConnectErrorKind::Version(version))),
        Ok(SocketMsg::Refused { errno, reason }) => {
            let errno = i32::try_from(errno).ok().filter(|&e| e > 0).unwrap_or(libc::EPERM);
            Err(err(ConnectErrorKind::Refused { errno, reason }))
        }
        Ok(other) => Err(err(ConnectErrorKind::Unexpected(format!("{other:?}")))),
        Err(e) => Err(handshake(e)),
    }
}

/// One message; `Err(errno)`: `ECONNRESET` for a hang-up, `EPROTO` for a cut or undecodable one.
fn recv_msg(sock: BorrowedFd<'_>) -> Result<SocketMsg, i32> {
    let p = wire::recv(sock).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    if p.bytes.is_empty() {
        return Err(libc::ECONNRESET);
    }
    if p.truncated || !p.fds.is_empty() {
        return Err(libc::EPROTO);
    }
    SocketMsg::decode(&p.bytes).map_err(|_| libc::EPROTO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::SampleFormat;
    use crate::msg::Direction;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn seqpacket_listener(path: &Path) -> OwnedFd {
        let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
        socket::listen(&fd, socket::Backlog::new(4).unwrap()).unwrap();
        fd
    }

    fn dir() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("shmix-connect-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn hello() -> SocketMsg {
        SocketMsg::Hello {
            version: PROTOCOL_VERSION,
            direction: Direction::Playback,
            pid: 1,
            name: "t".into(),
            device: "card_b".into(),
        }
    }

    #[test]
    fn trust_admits_own_uid_root_and_the_system_owner_only() {
        let t = Trust { euid: 1000, system_owner: None };
        assert!(t.admits(1000) && t.admits(0) && !t.admits(1001));
        let s = Trust { euid: 1000, system_owner: Some(999) };
        assert!(s.admits(999) && !s.admits(998));
        assert!(s.describe().contains("999 (the system socket's owner)"), "{}", s.describe());
    }

    /// The refusal itself needs an impostor of another uid: the integration tests run one
    /// (`security::a_fake_daemon_of_another_user_gets_nothing`). Here: what the user reads.
    #[test]
    fn an_untrusted_daemon_is_named_with_its_uid_and_who_was_expected() {
        let trust = Trust { euid: 1000, system_owner: None };
        let e = ConnectError {
            path: PathBuf::from("/tmp/shmix-1000/socket"),
            kind: ConnectErrorKind::Untrusted { peer_uid: 4242, trust },
        };
        assert_eq!(
            e.to_string(),
            "refusing the daemon at /tmp/shmix-1000/socket: it runs as uid 4242, expected uid 1000 (this \
             program's) or 0 (root). Another user may be impersonating shmixd; nothing was sent to it (see \
             README: Troubleshooting)"
        );
        assert_eq!(e.errno(), libc::EPERM);
    }

    fn unsafe_owned(fd: std::os::fd::RawFd) -> OwnedFd {
        // SAFETY: accept4 returned a fresh descriptor nothing else owns.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
    }

    #[test]
    fn a_refusal_is_read_even_after_the_daemon_hung_up() {
        let d = dir();
        let path = d.join("s");
        let listener = seqpacket_listener(&path);
        let t = std::thread::spawn(move || {
            let c = unsafe_owned(socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).unwrap());
            let reason = "full\u{1b}[2J".to_string();
            wire::send(c.as_fd(), &SocketMsg::Refused { errno: libc::EUSERS as u32, reason }, &[]).unwrap();
        });
        std::thread::sleep(Duration::from_millis(50));
        let e = connect(&path, &hello(), Duration::from_secs(2)).unwrap_err();
        t.join().unwrap();
        assert_eq!(e.errno(), libc::EUSERS);
        assert!(e.to_string().ends_with("refused the connection: full\\u{1b}[2J"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn welcome_carries_the_device() {
        let d = dir();
        let path = d.join("s");
        let listener = seqpacket_listener(&path);
        let device = AudioParams {
            format: SampleFormat::S16Le,
            rate: 48000,
            channels: 2,
            period_frames: 256,
            buffer_frames: 1024,
        };
        let t = std::thread::spawn(move || {
            let c = unsafe_owned(socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).unwrap());
            let p = wire::recv(c.as_fd()).unwrap();
            assert!(matches!(SocketMsg::decode(&p.bytes), Ok(SocketMsg::Hello { .. })));
            wire::send(c.as_fd(), &SocketMsg::Welcome { version: PROTOCOL_VERSION, device }, &[]).unwrap();
        });
        let c = connect(&path, &hello(), Duration::from_secs(2)).unwrap();
        t.join().unwrap();
        assert_eq!(c.device, device);
        let _ = std::fs::remove_dir_all(&d);
    }
}

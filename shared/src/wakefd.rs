//! The descriptors that carry wakeups between plugin and daemon: the two ends of a unix
//! `SOCK_STREAM` socket pair, one byte per wake (a stream, so that one `recv` drains every
//! pending wake, as one eventfd `read` did).
//!
//! Why not eventfds: a descriptor passed to the peer shares its open file, and `O_NONBLOCK`
//! belongs to the open file, so a peer can clear it after any check and fill an eventfd's counter
//! to its maximum: the next `write` then blocks forever (the audit reproduced a frozen mix thread
//! that way). Here every call says `MSG_DONTWAIT` itself, which no peer can take back: a send into
//! a full queue or a receive from an empty one returns `EAGAIN` whatever the file's flags. A full
//! queue means the sleeper has wakes pending, so nothing is lost by dropping ours.
//!
//! Runs in both processes. RT: yes (`signal` and `drain` are one or a few non-blocking syscalls).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `recv` calls [`WakeFd::drain`] makes at most (each takes up to [`DRAIN_CHUNK`] wakes). Honest
/// peers queue one or two wakes per sleep; a flooding peer keeps the descriptor readable, which
/// only costs it its own wakes.
pub const DRAIN_MAX_CALLS: u32 = 4;

/// Bytes (wakes) one `recv` of [`WakeFd::drain`] takes.
pub const DRAIN_CHUNK: usize = 64;

/// One end of a wake channel (see the module documentation).
#[derive(Debug)]
pub struct WakeFd(OwnedFd);

impl WakeFd {
    /// A connected pair, non-blocking and close-on-exec: what one end signals, the other polls.
    ///
    /// # Errors
    /// The `socketpair` error (descriptor limits).
    pub fn pair() -> io::Result<(Self, Self)> {
        let mut fds = [-1; 2];
        let ty = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
        if unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socketpair succeeded: both descriptors are fresh and ours.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Self(a), Self(b)))
    }

    /// Adopts a descriptor a peer passed, after checking that it is one end of a unix
    /// `SOCK_STREAM` pair made by a process of `uid` (so signalling it reaches that peer and
    /// no third party). What the peer may still do to it (clear `O_NONBLOCK`, fill its queue, shut
    /// it down, read from its own copy) cannot block or break [`Self::signal`] or [`Self::drain`].
    ///
    /// # Errors
    /// What is wrong with the descriptor, for the log.
    pub fn adopt(fd: OwnedFd, uid: u32) -> Result<Self, &'static str> {
        let raw = fd.as_raw_fd();
        if sockopt_int(raw, libc::SO_DOMAIN) != Some(libc::AF_UNIX) {
            return Err("not a unix socket");
        }
        if sockopt_int(raw, libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
            return Err("not a SOCK_STREAM socket");
        }
        let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid out pointers of the sizes given.
        let r = unsafe { libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len) };
        if r != 0 || cred.pid == 0 {
            return Err("not connected");
        }
        if cred.uid != uid {
            return Err("connected to a process of another user");
        }
        Ok(Self(fd))
    }

    /// Sends one wake. Never blocks; a full queue (`EAGAIN`: the peer has wakes pending) or a
    /// peer that is gone is not an error worth reporting. Returns whether a packet was queued.
    pub fn signal(&self) -> bool {
        // SAFETY: send(2) of one byte from a static buffer on our descriptor; MSG_NOSIGNAL keeps
        // a vanished peer from raising SIGPIPE in a host program.
        let n =
            unsafe { libc::send(self.0.as_raw_fd(), b"w".as_ptr().cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        n == 1
    }

    /// Reads pending wakes without blocking (one `recv` unless more than [`DRAIN_CHUNK`] are
    /// queued; at most [`DRAIN_MAX_CALLS`]); returns how many it took.
    pub fn drain(&self) -> u32 {
        let mut n = 0;
        let mut buf = [0u8; DRAIN_CHUNK];
        for _ in 0..DRAIN_MAX_CALLS {
            // SAFETY: recv(2) into a local buffer of the length given.
            let r = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if r <= 0 {
                break;
            }
            n += r as u32;
            if (r as usize) < DRAIN_CHUNK {
                break;
            }
        }
        n
    }
}

/// A sleeper's own wake descriptor as [`crate::wake::Sleeper`] drives it: the end it polls, and
/// a copy of the other end (the one the peer signals). Signalling itself goes through the other
/// end, so the polled end turns readable; draining reads the polled end.
#[derive(Debug, Clone, Copy)]
pub struct OwnWake<'a> {
    /// The end that is polled (readable while a wake is pending).
    pub polled: &'a WakeFd,
    /// The other end of its pair.
    pub other: &'a WakeFd,
}

impl crate::wake::WakeSignal for OwnWake<'_> {
    fn signal(&self) {
        self.other.signal();
    }

    fn drain(&self) {
        self.polled.drain();
    }
}

impl AsFd for WakeFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn sockopt_int(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid out pointers of the sizes given.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut len) };
    (r == 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid() -> u32 {
        // SAFETY: getuid cannot fail.
        unsafe { libc::getuid() }
    }

    #[test]
    fn a_signal_crosses_and_drains() {
        let (a, b) = WakeFd::pair().unwrap();
        assert_eq!(a.drain(), 0);
        assert!(b.signal());
        assert!(b.signal());
        assert_eq!(a.drain(), 2);
        assert_eq!(a.drain(), 0);
    }

    #[test]
    fn never_blocks_when_the_peer_clears_nonblock_and_fills_the_queue() {
        let (a, b) = WakeFd::pair().unwrap();
        for fd in [&a, &b] {
            // SAFETY: fcntl(2) on our own descriptors.
            unsafe {
                let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
        let mut sent = 0;
        while b.signal() {
            sent += 1;
            assert!(sent < 1_000_000, "the queue never filled");
        }
        assert!(!b.signal(), "a full queue must refuse, not block");
        let mut drained = 0u32;
        loop {
            let n = a.drain();
            if n == 0 {
                break;
            }
            drained += n;
        }
        assert_eq!(drained, sent);
        assert_eq!(a.drain(), 0, "an empty queue must return, not block");
    }

    #[test]
    fn adopt_checks_kind_and_owner() {
        let (a, _b) = WakeFd::pair().unwrap();
        let a = WakeFd::adopt(a.0, uid()).unwrap();
        let (c, _d) = WakeFd::pair().unwrap();
        assert_eq!(WakeFd::adopt(c.0, uid().wrapping_add(1)).unwrap_err(), "connected to a process of another user");
        // SAFETY: plain eventfd(2); the descriptor is ours.
        let efd = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
        assert_eq!(WakeFd::adopt(efd, uid()).unwrap_err(), "not a unix socket");
        // SAFETY: plain socket(2); the descriptor is ours.
        let lone = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)) };
        assert_eq!(WakeFd::adopt(lone, uid()).unwrap_err(), "not connected");
        // SAFETY: as above.
        let dgram = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0)) };
        assert_eq!(WakeFd::adopt(dgram, uid()).unwrap_err(), "not a SOCK_STREAM socket");
        drop(a);
    }

    #[test]
    fn a_gone_peer_neither_blocks_nor_signals() {
        let (a, b) = WakeFd::pair().unwrap();
        drop(a);
        assert!(!b.signal());
        assert_eq!(b.drain(), 0);
    }
}

//! An eventfd for wakeups between threads of one process (the daemon's command queue, its event
//! queue, the device manager). Never passed to another process: a peer would share its open
//! file and could make it block (see `wakefd` for what crosses processes).
//! Runs in both processes. RT: yes (`signal` and `drain` are one non-blocking syscall).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking, close-on-exec eventfd.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A fresh eventfd with a zero count.
    ///
    /// # Errors
    /// The `eventfd` error (descriptor limits).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd(2) with constant flags.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Another handle on the same eventfd (for the thread at the other end).
    ///
    /// # Errors
    /// The `dup` error.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }

    /// Adds one to the count: the descriptor turns readable. A saturated count (never reached
    /// here) would return EAGAIN, and the reader is signalled anyway.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes from a local u64 to our own eventfd.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Resets the count (EAGAIN when it was zero: fine).
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: read(2) of 8 bytes into a local u64 from our own eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&raw mut v).cast(), 8) };
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_makes_it_readable_and_drain_resets_it() {
        let e = EventFd::new().unwrap();
        let readable = |e: &EventFd| {
            let mut p = libc::pollfd { fd: e.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, no wait.
            unsafe { libc::poll(&mut p, 1, 0) };
            p.revents & libc::POLLIN != 0
        };
        assert!(!readable(&e));
        e.try_clone().unwrap().signal();
        e.signal();
        assert!(readable(&e));
        e.drain();
        assert!(!readable(&e));
        e.drain();
    }
}

//! The card's poll fd: a non-blocking CLOCK_MONOTONIC timerfd armed (absolute time) for the moment
//! `avail` reaches `avail_min`, plus the monotonic clock it is compared with.
//! Runs in: whichever application thread calls the PCM. RT: yes (syscalls only, no allocation).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Nanoseconds of CLOCK_MONOTONIC (the clock the timerfd uses).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(r, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An owned timerfd on CLOCK_MONOTONIC.
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    /// Creates a disarmed, non-blocking, close-on-exec timerfd.
    ///
    /// # Errors
    /// `timerfd_create` failing (fd limit).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant flags; no pointers involved.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by timerfd_create and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The fd to hand to alsa-lib as `poll_fd`.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn set(&self, abs_ns: u64) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (abs_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (abs_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: the fd is our open timerfd; `spec` is a valid itimerspec; old value not wanted.
        let r =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        debug_assert_eq!(r, 0, "timerfd_settime: {}", io::Error::last_os_error());
    }

    /// Arms the timer to expire at `abs_ns` of CLOCK_MONOTONIC; a time in the past (or 0) makes
    /// the fd readable at once.
    pub fn arm_at(&self, abs_ns: u64) {
        // An all-zero it_value would disarm; 1 ns is long past and fires immediately.
        self.set(abs_ns.max(1));
    }

    /// Makes the fd readable now (and until [`TimerFd::clear`]).
    pub fn fire_now(&self) {
        self.set(1);
    }

    /// Disarms the timer (a pending expiration stays readable until cleared).
    pub fn disarm(&self) {
        self.set(0);
    }

    /// Consumes a pending expiration so the fd stops polling readable.
    pub fn clear(&self) {
        let mut count = 0u64;
        // SAFETY: reading 8 bytes into a u64 we own from our non-blocking timerfd; EAGAIN (nothing
        // pending) is the expected failure and is ignored.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut count as *mut u64).cast(), std::mem::size_of::<u64>()) };
    }
}

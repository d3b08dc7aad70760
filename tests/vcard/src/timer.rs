//! The card's poll fd: a non-blocking CLOCK_MONOTONIC timerfd armed (absolute time) for the moment
//! `avail` reaches `avail_min`, plus the monotonic clock it is compared with.
//! Runs in: whichever application thread calls the PCM. RT: yes (syscalls only, no allocation).

use std::cell::Cell;
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

/// An owned timerfd on CLOCK_MONOTONIC, remembering what it was last set to so that the card
/// makes one `timerfd_settime` per period rather than one per callback: setting the value it
/// already has, or "expire now" while an expiration is already pending, is skipped. The card
/// does not read expirations in steady state (only [`TimerFd::clear`] does, when stopping):
/// every `timerfd_settime` discards pending expirations itself, so arming a future deadline
/// stops the fd polling readable.
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
    /// The absolute expiry last set; [`DISARMED`]; or [`UNKNOWN`] after a read.
    armed: Cell<u64>,
}

/// `armed`: disarmed (not readable unless an expiration is pending from before: see `clear`).
const DISARMED: u64 = 0;
/// `armed`: pending expirations were consumed by a read; the next set always happens.
const UNKNOWN: u64 = u64::MAX;

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
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) }, armed: Cell::new(UNKNOWN) })
    }

    /// The fd to hand to alsa-lib as `poll_fd`.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn set(&self, abs_ns: u64) {
        if self.armed.get() == abs_ns {
            return;
        }
        self.armed.set(abs_ns);
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (abs_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (abs_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: the fd is our open timerfd; `spec` is a valid itimerspec; old value not wanted.
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        debug_assert_eq!(r, 0, "timerfd_settime: {}", io::Error::last_os_error());
    }

    /// Arms the timer to expire at `abs_ns` of CLOCK_MONOTONIC; a time in the past (or 0) makes
    /// the fd readable at once. `now_ns`: the caller's clock reading.
    pub fn arm_at(&self, abs_ns: u64, now_ns: u64) {
        let cur = self.armed.get();
        if abs_ns <= now_ns && cur != DISARMED && cur != UNKNOWN && cur <= now_ns {
            // Already expired (or expiring this instant) and nothing read it: readable as asked.
            return;
        }
        // An all-zero it_value would disarm; 1 ns is long past and fires immediately.
        self.set(abs_ns.max(1));
    }

    /// Makes the fd readable now (and until [`TimerFd::clear`]).
    pub fn fire_now(&self) {
        self.set(1);
    }

    /// Disarms the timer (and discards a pending expiration, like every set).
    pub fn disarm(&self) {
        self.set(0);
    }

    /// Consumes a pending expiration so the fd stops polling readable.
    pub fn clear(&self) {
        let mut count = 0u64;
        // SAFETY: reading 8 bytes into a u64 we own from our non-blocking timerfd; EAGAIN (nothing
        // pending) is the expected failure and is ignored.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), std::mem::size_of::<u64>()) };
        self.armed.set(UNKNOWN);
    }
}

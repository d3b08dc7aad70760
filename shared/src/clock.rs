//! The one clock both sides use: CLOCK_MONOTONIC in nanoseconds. Timing snapshots in shared
//! memory are stamped with it, so plugin and daemon must read the same clock.
//! Runs in both processes. RT: yes (the vDSO, no syscall).

/// CLOCK_MONOTONIC in nanoseconds.
#[must_use]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

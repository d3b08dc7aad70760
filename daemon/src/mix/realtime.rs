//! Real-time setup: the mix thread's scheduling (RLIMIT_RTPRIO raised where the hard limit
//! allows, SCHED_FIFO, else rtkit over the D-Bus system bus), its stack touched and locked before
//! the loop, and the daemon's memory locked once its threads exist, so the mix thread takes no
//! major page fault. Each step is best effort and logs one line.
//! Runs on the mix thread before its loop, and on the main thread (`lock_memory`). RT: no.

use std::time::Duration;

use log::{info, warn};

/// rtkit's D-Bus name, object and interface.
const RTKIT_NAME: &str = "org.freedesktop.RealtimeKit1";
const RTKIT_PATH: &str = "/org/freedesktop/RealtimeKit1";
/// rtkit refuses a process whose RLIMIT_RTTIME is unset or above its `RTTimeUSecMax` (200 ms by
/// default); PulseAudio sets 200 ms too. A real-time thread that runs this long without
/// sleeping gets SIGXCPU: the mix thread sleeps in poll every period.
const RTTIME_US: u64 = 200_000;
/// How long a call to rtkit may take (it is started on demand by the bus).
const RTKIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Stack the mix thread touches (and locks) before its loop: far more than a cycle uses.
const STACK_TOUCH_BYTES: usize = 256 * 1024;

/// How the mix thread's scheduling ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sched {
    /// SCHED_FIFO at this priority, set by the thread itself.
    Fifo(i32),
    /// SCHED_RR at this priority, granted by rtkit.
    Rtkit(u32),
    /// Normal scheduling; why.
    Normal(String),
}

/// The soft RLIMIT_RTPRIO to set so that `want` is allowed, given the current soft and hard
/// limits: `None` when the soft limit already allows it (or cannot be raised at all).
#[must_use]
pub fn rtprio_soft_target(soft: u64, hard: u64, want: u64) -> Option<u64> {
    if soft >= want {
        return None;
    }
    let target = want.min(hard);
    (target > soft).then_some(target)
}

fn getrlimit(res: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid out pointer.
    (unsafe { libc::getrlimit(res, &mut rl) } == 0).then_some(rl)
}

fn setrlimit(res: libc::__rlimit_resource_t, rl: libc::rlimit) -> std::io::Result<()> {
    // SAFETY: `rl` is a valid rlimit passed by pointer.
    if unsafe { libc::setrlimit(res, &rl) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raises the soft RLIMIT_RTPRIO towards `want` (up to the hard limit); logs what it did.
fn raise_rtprio(want: i32) {
    let Some(rl) = getrlimit(libc::RLIMIT_RTPRIO) else { return };
    let want = u64::try_from(want).unwrap_or(0);
    let Some(target) = rtprio_soft_target(rl.rlim_cur, rl.rlim_max, want) else {
        if rl.rlim_cur < want {
            info!("RLIMIT_RTPRIO is {} (hard limit {}), below the {want} asked for", rl.rlim_cur, rl.rlim_max);
        }
        return;
    };
    match setrlimit(libc::RLIMIT_RTPRIO, libc::rlimit { rlim_cur: target, rlim_max: rl.rlim_max }) {
        Ok(()) => info!("RLIMIT_RTPRIO raised from {} to {target} (hard limit {})", rl.rlim_cur, rl.rlim_max),
        Err(e) => info!("RLIMIT_RTPRIO could not be raised from {} to {target}: {e}", rl.rlim_cur),
    }
}

/// Makes the calling thread real-time at `prio`: raises RLIMIT_RTPRIO where it may, asks for
/// SCHED_FIFO, and when that is not permitted asks rtkit. Logs one line with the result.
pub fn make_thread_realtime(prio: i32) -> Sched {
    raise_rtprio(prio);
    let param = libc::sched_param { sched_priority: prio };
    // SAFETY: `param` is a valid sched_param; pthread_self is this thread.
    let r = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    let sched = if r == 0 {
        Sched::Fifo(prio)
    } else if r == libc::EPERM {
        match rtkit(prio) {
            Ok(p) => Sched::Rtkit(p),
            Err(why) => Sched::Normal(format!("{}; rtkit: {why}", std::io::Error::from_raw_os_error(r))),
        }
    } else {
        Sched::Normal(std::io::Error::from_raw_os_error(r).to_string())
    };
    match &sched {
        Sched::Fifo(p) => info!("mix thread runs SCHED_FIFO priority {p}"),
        Sched::Rtkit(p) => info!("mix thread runs SCHED_RR priority {p}, granted by rtkit"),
        Sched::Normal(why) => {
            info!("mix thread could not get SCHED_FIFO priority {prio} ({why}); running with normal priority");
        }
    }
    sched
}

/// Asks rtkit (`org.freedesktop.RealtimeKit1` on the system bus) to make this thread
/// real-time; returns the priority granted. No bus or no rtkit is an `Err` with the reason.
fn rtkit(want: i32) -> Result<u32, String> {
    use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;

    let conn = dbus::blocking::Connection::new_system().map_err(|e| format!("no D-Bus system bus ({e})"))?;
    let proxy = conn.with_proxy(RTKIT_NAME, RTKIT_PATH, RTKIT_TIMEOUT);
    let max: i32 = proxy.get(RTKIT_NAME, "MaxRealtimePriority").map_err(|e| format!("not reachable ({e})"))?;
    let rttime_max: i64 = proxy.get(RTKIT_NAME, "RTTimeUSecMax").unwrap_or(RTTIME_US as i64);
    let prio = u32::try_from(want.min(max)).map_err(|_| format!("allows no priority (max {max})"))?;
    if prio == 0 {
        return Err(format!("allows no priority (max {max})"));
    }
    let rttime = RTTIME_US.min(u64::try_from(rttime_max).unwrap_or(RTTIME_US));
    setrlimit(libc::RLIMIT_RTTIME, libc::rlimit { rlim_cur: rttime, rlim_max: rttime })
        .map_err(|e| format!("RLIMIT_RTTIME {rttime} us could not be set ({e})"))?;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let tid = u64::try_from(tid).map_err(|_| "bad thread id".to_string())?;
    proxy
        .method_call::<(), _, _, _>(RTKIT_NAME, "MakeThreadRealtime", (tid, prio))
        .map_err(|e| format!("refused priority {prio} ({e})"))?;
    Ok(prio)
}

/// Touches `STACK_TOUCH_BYTES` of the calling thread's stack below the caller's frame and locks
/// them, so the cycles that run there later find the pages present. Must not be inlined: the
/// array has to lie where the deeper frames of the loop will be.
#[inline(never)]
pub fn touch_stack() {
    let mut area = [0u8; STACK_TOUCH_BYTES];
    for b in area.iter_mut().step_by(4096) {
        *b = 1;
    }
    let area = std::hint::black_box(&mut area);
    // SAFETY: the range is this frame's own array, valid for its whole length. The lock outlives
    // the frame on purpose: it is on pages, and these stay mapped in the thread's stack.
    let r = unsafe { libc::mlock(area.as_ptr().cast(), area.len()) };
    if r != 0 {
        // Touched already; locking is the extra mile (RLIMIT_MEMLOCK may forbid it).
        log::debug!("mix thread stack not locked: {}", std::io::Error::last_os_error());
    }
}

/// Locks every page mapped now (code, libraries, heap, thread stacks, the device's buffer) with
/// `mlockall(MCL_CURRENT)`; logs one line. Not `MCL_FUTURE`: that would count each later mapping
/// of a client's memfd against RLIMIT_MEMLOCK and make it fail once the limit is reached (the
/// client rings are locked one by one, best effort, as they are mapped).
pub fn lock_memory() {
    // SAFETY: plain syscall, no pointers.
    if unsafe { libc::mlockall(libc::MCL_CURRENT) } == 0 {
        info!("memory locked (mlockall; {} KiB locked)", locked_kib().unwrap_or(0));
    } else {
        let e = std::io::Error::last_os_error();
        let lim = getrlimit(libc::RLIMIT_MEMLOCK).map_or(0, |r| r.rlim_cur / 1024);
        warn!(
            "memory not locked (mlockall: {e}; RLIMIT_MEMLOCK {lim} KiB): the mix thread may take page faults \
             under memory pressure (LimitMEMLOCK= in the service raises it)"
        );
    }
}

/// `VmLck` of this process, from /proc.
#[must_use]
pub fn locked_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmLck:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtprio_soft_limit_rises_to_the_wanted_priority_within_the_hard_limit() {
        assert_eq!(rtprio_soft_target(0, 95, 20), Some(20));
        assert_eq!(rtprio_soft_target(0, 10, 20), Some(10));
        assert_eq!(rtprio_soft_target(0, 0, 20), None);
        assert_eq!(rtprio_soft_target(20, 95, 20), None);
        assert_eq!(rtprio_soft_target(50, 95, 20), None);
        assert_eq!(rtprio_soft_target(5, libc::RLIM_INFINITY, 20), Some(20));
    }
}

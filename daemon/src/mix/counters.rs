//! The mix thread's counters: cycles, frames, xruns, wakeups and the rest, bumped with relaxed
//! atomics on the mix thread and read by the control thread for its stats line and `shmixctl
//! stats`. RT: yes (atomics only).

use std::sync::atomic::{AtomicU64, Ordering};

/// Real-time counters, written by the mix thread (Relaxed: statistics only), read by the control
/// thread for its once-a-second and exit reports.
#[derive(Debug, Default)]
pub struct Counters {
    /// Mix cycles (poll wakeups handled).
    pub cycles: AtomicU64,
    /// Device xruns (-EPIPE) recovered.
    pub device_xruns: AtomicU64,
    /// Device suspends (-ESTRPIPE) recovered.
    pub device_suspends: AtomicU64,
    /// Times the device vanished (-ENODEV) and the streams were put to wait.
    pub device_lost: AtomicU64,
    /// Times a vanished device was reopened and the streams played on.
    pub device_reopened: AtomicU64,
    /// The playback device is open (false while it is gone and the streams wait). Set by the
    /// mix thread when it loses or gets back the device (and by startup).
    pub device_present: std::sync::atomic::AtomicBool,
    /// Stream underruns (a running stream ran dry).
    pub stream_underruns: AtomicU64,
    /// Client wake signals (the client was asleep).
    pub wakeups_sent: AtomicU64,
    /// Wake points where the client was awake, so no write was needed.
    pub wakeups_skipped: AtomicU64,
    /// Frames written into the device (all paths, silence included).
    pub frames_mixed: AtomicU64,
    /// Frames copied straight from one stream's ring into the device (bit-exact fast path).
    pub fastpath_frames: AtomicU64,
    /// Daemon -> client records dropped because the client's ring was full.
    pub records_dropped: AtomicU64,
    /// Device frames read from the capture device.
    pub captured_frames: AtomicU64,
    /// Device frames of the playback mix copied to monitor streams (once per frame).
    pub monitor_frames: AtomicU64,
    /// Recorders that overran (ring full: STOPPED + Xrun).
    pub capture_overruns: AtomicU64,
    /// Capture device xruns (-EPIPE) recovered.
    pub capture_xruns: AtomicU64,
    /// Times the capture device vanished (-ENODEV) while recorders ran (they waited).
    pub capture_lost: AtomicU64,
    /// Times a vanished capture device was reopened and the recorders went on.
    pub capture_reopened: AtomicU64,
    /// Times the playback device was stopped after `--idle-stop` without streams.
    pub idle_stops: AtomicU64,
    /// The playback device is stopped for idleness now (the mix thread does not wake).
    pub idle_now: std::sync::atomic::AtomicBool,
    /// Allocations seen on the mix thread while in the cycle (feature `rt-audit`).
    pub rt_allocations: AtomicU64,
    /// Timer scheduling: the device queue's fill level after the last wake, in frames.
    pub queue_frames: AtomicU64,
    /// Timer scheduling: the wake level after the last wake, in frames.
    pub wake_level_frames: AtomicU64,
    /// Timer scheduling: wakes that found less than half the margin left (the margin grew).
    pub late_wakes: AtomicU64,
    /// Timer scheduling: the card clock's estimated skew against CLOCK_MONOTONIC, in ppm,
    /// stored as `i64` bits.
    pub skew_ppm: AtomicU64,
    /// Frames taken back from the device and mixed again (rewinds).
    pub rewound_frames: AtomicU64,
    /// Times a stream's wakeups were muted until the next device period (it woke the mix thread,
    /// or flooded a full ring of records in one cycle).
    pub wakes_muted: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

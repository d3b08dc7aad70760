//! What the control thread and the mix thread share, through atomics only: volume and mute in,
//! levels and per-stream figures out ([`StreamCtl`] per stream, [`DeviceCtl`] per device). No
//! lock, no allocation, no syscall on the mix thread's side. RT: yes (atomics).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use shmix_shared::control::MAX_VOLUME;
use shmix_shared::msg::MAX_CHANNELS;

use crate::dsp::gain::GAIN_RAMP_MS;

/// Length of the metering window (peaks are the largest sample of the last window).
pub const METER_WINDOW_MS: u32 = 50;

/// A linear volume and a mute flag, written by the control thread, read by the mix thread
/// (Relaxed: each is one independent value; the mix thread picks them up on its next cycle).
#[derive(Debug)]
pub struct Volume {
    bits: AtomicU32,
    muted: AtomicBool,
}

impl Default for Volume {
    fn default() -> Self {
        Self { bits: AtomicU32::new(1.0f32.to_bits()), muted: AtomicBool::new(false) }
    }
}

impl Volume {
    /// The linear volume.
    #[must_use]
    pub fn volume(&self) -> f32 {
        f32::from_bits(self.bits.load(Ordering::Relaxed))
    }

    /// Muted.
    #[must_use]
    pub fn muted(&self) -> bool {
        self.muted.load(Ordering::Relaxed)
    }

    /// The gain to apply: 0 when muted, else the volume. RT: yes.
    #[must_use]
    pub fn gain(&self) -> f32 {
        if self.muted() {
            0.0
        } else {
            self.volume()
        }
    }

    /// Sets the linear volume (clamped to `0..=MAX_VOLUME`).
    pub fn set_volume(&self, v: f32) {
        let v = if v.is_finite() { v.clamp(0.0, MAX_VOLUME) } else { 0.0 };
        self.bits.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Sets the mute flag.
    pub fn set_muted(&self, m: bool) {
        self.muted.store(m, Ordering::Relaxed);
    }
}

/// An f32 level written by the mix thread and read by the control thread.
#[derive(Debug, Default)]
pub struct Level(AtomicU32);

impl Level {
    /// Stores a level. RT: yes.
    pub fn set(&self, v: f32) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// The level.
    #[must_use]
    pub fn get(&self) -> f32 {
        let v = f32::from_bits(self.0.load(Ordering::Relaxed));
        if v.is_finite() {
            v.max(0.0)
        } else {
            0.0
        }
    }
}

/// One stream's shared figures. Built on the control thread with the stream; the mix thread
/// holds a clone of the `Arc` inside the `Stream`.
#[derive(Debug, Default)]
pub struct StreamCtl {
    /// Volume and mute (control -> mix).
    pub volume: Volume,
    /// Peak of the last metering window, after the stream's gain (mix -> control).
    pub peak: Level,
    /// `StreamState` code (mix -> control).
    pub state: AtomicU32,
    /// Frames between the client and the speaker at the last cycle (mix -> control).
    pub latency_frames: AtomicU32,
    /// Underruns / overruns (mix -> control).
    pub xruns: AtomicU64,
    /// The plugin's copy counter as read from its shared memory (untrusted; display only).
    pub copied_frames: AtomicU64,
    /// The plugin's zero-copy counter as read from its shared memory (untrusted; display only).
    pub zero_copy_frames: AtomicU64,
}

/// The device's shared figures.
#[derive(Debug)]
pub struct DeviceCtl {
    /// Playback mix volume and mute (control -> mix).
    pub master: Volume,
    /// Capture path volume and mute (control -> mix).
    pub capture: Volume,
    /// Peak per device channel of the last metering window, after the master volume.
    pub peaks: [Level; MAX_CHANNELS as usize],
    /// Device channels.
    pub channels: u32,
    /// Frames per metering window.
    pub window_frames: u32,
    /// Frames of a gain ramp.
    pub ramp_frames: u32,
    /// The mix thread's kernel thread id (0 until it runs), for its CPU time.
    pub mix_tid: AtomicI32,
}

impl DeviceCtl {
    /// For a device of `channels` at `rate`.
    #[must_use]
    pub fn new(channels: u32, rate: u32) -> Self {
        Self {
            master: Volume::default(),
            capture: Volume::default(),
            peaks: std::array::from_fn(|_| Level::default()),
            channels: channels.min(MAX_CHANNELS),
            window_frames: (u64::from(rate) * u64::from(METER_WINDOW_MS) / 1000).max(1) as u32,
            ramp_frames: (u64::from(rate) * u64::from(GAIN_RAMP_MS) / 1000) as u32,
            mix_tid: AtomicI32::new(0),
        }
    }

    /// Called once by the mix thread before its loop: records its thread id.
    pub fn note_mix_thread(&self) {
        self.mix_tid.store(nix::unistd::gettid().as_raw(), Ordering::Relaxed);
    }

    /// CPU time the mix thread has used (ns), from `/proc/self/task/TID/schedstat`.
    #[must_use]
    pub fn mix_cpu_ns(&self) -> u64 {
        let tid = self.mix_tid.load(Ordering::Relaxed);
        if tid <= 0 {
            return 0;
        }
        std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    }
}

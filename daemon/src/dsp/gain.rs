//! A stream's gain with a short linear ramp on change (no zipper noise). Mix thread. RT: yes.

/// Length of the gain ramp on a gain change, in milliseconds of device time.
pub const GAIN_RAMP_MS: u32 = 5;

/// A gain with a linear ramp on change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gain {
    pub(super) now: f32,
    target: f32,
    step: f32,
    pub(super) ramp_left: usize,
    ramp_frames: usize,
}

impl Gain {
    /// Unity gain; ramps last `ramp_frames` frames.
    #[must_use]
    pub fn new(ramp_frames: usize) -> Self {
        Self { now: 1.0, target: 1.0, step: 0.0, ramp_left: 0, ramp_frames: ramp_frames.max(1) }
    }

    /// Moves to `target` over the ramp. RT: yes.
    pub fn set(&mut self, target: f32) {
        let target = if target.is_finite() { target.max(0.0) } else { 0.0 };
        if target == self.target {
            return;
        }
        self.target = target;
        self.ramp_left = self.ramp_frames;
        self.step = (target - self.now) / self.ramp_frames as f32;
    }

    /// The gain aimed at.
    #[must_use]
    pub fn target(&self) -> f32 {
        self.target
    }

    /// Jumps to `target` without a ramp (a stream that has not played yet). RT: yes.
    pub fn jump(&mut self, target: f32) {
        let target = if target.is_finite() { target.max(0.0) } else { 0.0 };
        *self = Self { now: target, target, step: 0.0, ramp_left: 0, ramp_frames: self.ramp_frames };
    }

    /// The larger of the gain now and the gain aimed at (for metering). RT: yes.
    #[must_use]
    pub fn level(&self) -> f32 {
        self.now.max(self.target)
    }

    /// Moves the ramp on by `frames` frames without applying it (nothing was playing). RT: yes.
    pub fn advance(&mut self, frames: usize) {
        let n = self.ramp_left.min(frames);
        for _ in 0..n {
            self.step();
        }
    }

    /// Scales `frames` interleaved frames of `channels` samples in place, ramping. RT: yes.
    pub fn apply(&mut self, buf: &mut [f32], channels: usize) {
        let mut frames = buf.chunks_exact_mut(channels.max(1));
        while self.ramp_left > 0 {
            let Some(f) = frames.next() else { return };
            let g = self.step();
            for x in f {
                *x *= g;
            }
        }
        let g = self.now;
        if g != 1.0 {
            for x in frames.flatten() {
                *x *= g;
            }
        }
    }

    /// True at exactly 1.0 and not ramping.
    #[must_use]
    pub fn is_unity(&self) -> bool {
        self.now == 1.0 && self.ramp_left == 0
    }

    #[inline]
    pub(super) fn step(&mut self) -> f32 {
        let g = self.now;
        self.ramp_left -= 1;
        self.now = if self.ramp_left == 0 { self.target } else { self.now + self.step };
        g
    }
}

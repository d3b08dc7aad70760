//! Timer scheduling of the playback queue: how deep the device is kept filled and when the mix
//! thread wakes to refill it, from the latency the running streams ask for and from an estimate
//! of the card's clock. With `--period` the device wakes the thread once per period instead and
//! none of this runs.
//!
//! The queue: a stream asks for the latency of its period (its wakeup interval, in device
//! frames); the smallest ask of any running stream (playback, capture or monitor), within
//! [floor, cap], is the step `T`. The thread wakes when the device holds only the wake level
//! `W` (a safety margin, plus what the device fetches ahead or hides behind a BATCH pointer)
//! and fills it up to `W + T`, so it wakes once per `T` and a stream's frames reach the card
//! within `W + T`. The margin is learnt (it rises after an underrun or a late wake and falls
//! slowly while all is well) and never less than half the ask up to 20 ms: a long ask buys
//! safety for free. Without a stream the queue is as deep as the cap (few wakeups).
//!
//! The clock: the card's rate against CLOCK_MONOTONIC, from the frames it has played over time
//! (a first-order loop with a one-second time constant: the card's crystal is off by up to a
//! few hundred ppm and drifts slowly), so a wake is timed for the moment the queue reaches `W`.
//! Runs on the mix thread. RT: yes (arithmetic only).

/// Smallest queue step at 48 kHz (scaled with the rate): 0.67 ms.
pub const FLOOR_FRAMES_48K: u32 = 32;
/// Deepest queue on a device that cannot be rewound, in ms: a sound that starts (or a volume
/// change) waits behind what is queued, so this bounds how late it can be.
pub const NO_REWIND_CAP_MS: u32 = 40;
/// Safety margin to begin with, in us.
const MARGIN_START_US: u64 = 1000;
/// Smallest margin, in us.
const MARGIN_MIN_US: u64 = 500;
/// Largest margin, in ms.
const MARGIN_MAX_MS: u64 = 20;
/// The margin falls by an eighth after this long without trouble.
const CALM_NS: u64 = 5_000_000_000;
/// The clock loop's time constant.
const CLOCK_TAU_NS: f64 = 1e9;

/// The queue step a device of `rate` Hz starts from (the quantum clients are told).
#[must_use]
pub fn floor_frames(rate: u32) -> u32 {
    (u64::from(FLOOR_FRAMES_48K) * u64::from(rate)).div_ceil(48_000).max(8) as u32
}

/// The card's rate as seen from CLOCK_MONOTONIC: measured over a window of 0.5 to 4 s (so the
/// pointer's granularity, a frame or a BATCH period, is a small error) and filtered by a first-
/// order loop.
#[derive(Debug, Clone, Copy)]
pub struct CardClock {
    /// Frames per ns (nominal until measured).
    rate: f64,
    nominal: f64,
    /// The window's start, and the sample that will replace it.
    anchor: Option<(u64, u64)>,
    next_anchor: Option<(u64, u64)>,
    last_t: u64,
}

impl CardClock {
    /// A clock of `rate` Hz until measured.
    #[must_use]
    pub fn new(rate: u32) -> Self {
        let nominal = f64::from(rate) / 1e9;
        Self { rate: nominal, nominal, anchor: None, next_anchor: None, last_t: 0 }
    }

    /// Forgets the history (the device was restarted; its position begins again).
    pub fn reset(&mut self) {
        self.anchor = None;
        self.next_anchor = None;
    }

    /// At `t` ns the card had played `played` frames since it was opened.
    pub fn update(&mut self, t: u64, played: u64) {
        let Some((t0, p0)) = self.anchor else {
            self.anchor = Some((t, played));
            self.last_t = t;
            return;
        };
        if played < p0 || t <= t0 {
            // The position went back: a restart we were not told of.
            self.reset();
            self.anchor = Some((t, played));
            self.last_t = t;
            return;
        }
        let span = t - t0;
        if span >= 500_000_000 {
            let measured = (played - p0) as f64 / span as f64;
            // A wild window (a stall) is not believed.
            if (measured / self.nominal - 1.0).abs() < 0.01 {
                let k = ((t.saturating_sub(self.last_t)) as f64 / CLOCK_TAU_NS).min(1.0);
                self.rate += k * (measured - self.rate);
            }
        }
        self.last_t = t;
        if span >= 2_000_000_000 && self.next_anchor.is_none() {
            self.next_anchor = Some((t, played));
        }
        if span >= 4_000_000_000 {
            self.anchor = self.next_anchor.take();
        }
    }

    /// ns the card takes to play `frames`.
    #[must_use]
    pub fn ns_for(&self, frames: u64) -> u64 {
        (frames as f64 / self.rate) as u64
    }

    /// The card's rate against the nominal one, in ppm.
    #[must_use]
    pub fn skew_ppm(&self) -> f64 {
        (self.rate / self.nominal - 1.0) * 1e6
    }
}

/// The playback queue's depth and wake level.
#[derive(Debug, Clone)]
pub struct Schedule {
    rate: u32,
    floor: u32,
    cap: u32,
    /// What the margin must cover besides scheduling jitter: a BATCH pointer's period and
    /// the device's FIFO.
    grain: u32,
    margin: u32,
    margin_min: u32,
    margin_max: u32,
    calm_since_ns: u64,
    /// The card's clock.
    pub clock: CardClock,
}

impl Schedule {
    /// For a device of `rate` Hz and `buffer` frames; `rewind`: queued frames may be rewritten
    /// (else the queue stays within [`NO_REWIND_CAP_MS`]); `grain`: frames the wake level must
    /// cover besides jitter (BATCH period, FIFO).
    #[must_use]
    pub fn new(rate: u32, buffer: u32, rewind: bool, grain: u32) -> Self {
        let us = |v: u64| (v * u64::from(rate) / 1_000_000) as u32;
        let floor = floor_frames(rate);
        let margin_min = us(MARGIN_MIN_US).max(floor / 2);
        let margin_max = us(MARGIN_MAX_MS * 1000);
        // Keep a quarter of the buffer free of our queue: room to notice trouble before it
        // runs dry at the other end.
        let deepest = buffer.saturating_sub(buffer / 4).max(2 * floor);
        let cap = if rewind { deepest } else { us(u64::from(NO_REWIND_CAP_MS) * 1000).min(deepest) };
        Self {
            rate,
            floor,
            cap: cap.max(grain + margin_max + floor),
            grain,
            margin: us(MARGIN_START_US).max(margin_min),
            margin_min,
            margin_max,
            calm_since_ns: 0,
            clock: CardClock::new(rate),
        }
    }

    /// The device's rate.
    #[must_use]
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Deepest queue.
    #[must_use]
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// The safety margin for the smallest ask `asked`: the learnt margin, and at least half the
    /// ask up to the largest margin (a stream that asks for a long latency loses nothing by a
    /// deep margin, and a stall of the thread costs it nothing); the largest margin when
    /// nothing runs.
    #[must_use]
    pub fn margin_for(&self, asked: Option<u32>) -> u32 {
        let relative = asked.map_or(self.margin_max, |a| (a / 2).min(self.margin_max));
        self.margin.max(relative)
    }

    /// The wake level: the device never holds less than this when all goes well.
    #[must_use]
    pub fn wake_level(&self, asked: Option<u32>) -> u32 {
        self.margin_for(asked) + self.grain
    }

    /// The learnt margin, in frames.
    #[must_use]
    pub fn margin(&self) -> u32 {
        self.margin
    }

    /// The queue step for the smallest ask of the running streams (`None`: nothing runs).
    #[must_use]
    pub fn step(&self, asked: Option<u32>) -> u32 {
        let room = self.cap.saturating_sub(self.wake_level(asked)).max(self.floor);
        asked.map_or(room, |a| a.clamp(self.floor, room))
    }

    /// How full the device is kept: the wake level plus one step.
    #[must_use]
    pub fn fill_level(&self, asked: Option<u32>) -> u32 {
        self.wake_level(asked) + self.step(asked)
    }

    /// ns until a queue of `queued` frames falls to the wake level (0: now).
    #[must_use]
    pub fn sleep_ns(&self, queued: u32, asked: Option<u32>) -> u64 {
        self.clock.ns_for(u64::from(queued.saturating_sub(self.wake_level(asked))))
    }

    /// The device ran dry: a larger margin from now on.
    pub fn underrun(&mut self, now: u64) {
        self.margin = (self.margin * 2).clamp(self.margin_min, self.margin_max);
        self.calm_since_ns = now;
    }

    /// A wake found `queued` frames left: below half the margin it came late (the learnt
    /// margin grows by half; returns true); otherwise, after [`CALM_NS`] of calm, it falls by
    /// an eighth.
    pub fn woke_with(&mut self, queued: u32, asked: Option<u32>, now: u64) -> bool {
        if self.calm_since_ns == 0 {
            self.calm_since_ns = now;
        }
        if queued < self.grain + self.margin_for(asked) / 2 {
            self.margin = (self.margin + self.margin / 2).clamp(self.margin_min, self.margin_max);
            self.calm_since_ns = now;
            return true;
        }
        if now.saturating_sub(self.calm_since_ns) > CALM_NS {
            self.margin = (self.margin - self.margin / 8).max(self.margin_min);
            self.calm_since_ns = now;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_follows_the_smallest_ask_within_floor_and_cap() {
        let s = Schedule::new(48_000, 65_536, true, 0);
        assert_eq!(s.step(Some(64)), 64);
        assert_eq!(s.step(Some(12_000)), 12_000);
        assert_eq!(s.step(Some(4)), 32);
        assert_eq!(s.step(None), s.cap() - s.wake_level(None));
        assert!(s.fill_level(Some(1 << 30)) <= s.cap());
        // A low-latency ask keeps the learnt margin (1 ms); a long one gets half its ask.
        assert_eq!(s.fill_level(Some(64)), 48 + 64);
        assert_eq!(s.wake_level(Some(256)), 128);
        assert_eq!(s.wake_level(Some(12_000)), 960);
    }

    #[test]
    fn without_rewinds_the_queue_stays_short() {
        let s = Schedule::new(48_000, 65_536, false, 0);
        assert!(s.cap() <= 48 * NO_REWIND_CAP_MS, "{}", s.cap());
        assert!(s.fill_level(Some(12_000)) <= s.cap());
    }

    #[test]
    fn the_margin_rises_on_trouble_and_falls_when_calm() {
        let mut s = Schedule::new(48_000, 65_536, true, 0);
        let m0 = s.margin();
        s.underrun(0);
        assert_eq!(s.margin(), 2 * m0);
        s.woke_with(0, Some(64), 1);
        assert_eq!(s.margin(), 3 * m0);
        let high = s.margin();
        s.woke_with(high, Some(64), 2 + CALM_NS);
        assert!(s.margin() < high);
        for i in 0..200 {
            s.woke_with(10_000, Some(64), (i + 3) * (CALM_NS + 1));
        }
        assert_eq!(s.margin(), s.margin_min);
    }

    #[test]
    fn the_clock_learns_the_cards_rate() {
        let mut c = CardClock::new(48_000);
        // A card 200 ppm fast, sampled every 20 ms for 10 s.
        let fast = 48_000.0 * (1.0 + 200e-6) / 1e9;
        for i in 0..500u64 {
            let t = i * 20_000_000;
            c.update(t, (t as f64 * fast) as u64);
        }
        assert!((c.skew_ppm() - 200.0).abs() < 5.0, "{}", c.skew_ppm());
        // A position that goes back starts the window over and keeps the rate.
        c.update(10_020_000_000, 0);
        assert!((c.skew_ppm() - 200.0).abs() < 5.0, "{}", c.skew_ppm());
        // So does a stall (no progress over a whole window).
        for i in 0..100u64 {
            c.update(10_040_000_000 + i * 20_000_000, 5);
        }
        assert!((c.skew_ppm() - 200.0).abs() < 5.0, "{}", c.skew_ppm());
    }

    #[test]
    fn the_wake_comes_when_the_queue_reaches_the_wake_level() {
        let s = Schedule::new(48_000, 65_536, true, 0);
        let q = s.wake_level(Some(64)) + 480;
        assert_eq!(s.sleep_ns(q, Some(64)), 10_000_000);
        assert_eq!(s.sleep_ns(s.wake_level(Some(64)) / 2, Some(64)), 0);
    }
}

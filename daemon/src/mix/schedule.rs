//! Timer scheduling of the playback queue: how deep the device is kept filled and when the mix
//! thread wakes to refill it, from the latency the running streams ask for and from an estimate
//! of the card's clock. With `--period` the device wakes the thread once per period instead and
//! none of this runs.
//!
//! The queue: a stream asks for the latency of its period (its wakeup interval, in device
//! frames); half the smallest ask of any running stream (playback, capture or monitor), within
//! [floor, cap], is the step `T`. The thread wakes when the device holds only the wake level
//! `W` (a safety margin, plus what the device fetches ahead or hides behind a BATCH pointer)
//! and fills it up to `W + T`, so it wakes once per `T` and a stream's frames reach the card
//! within `W + T`. The margin is learnt (it rises after an underrun or a late wake and falls
//! slowly while all is well) and never less than the streams' slack (half the period, or an
//! eighth of the buffer) up to 20 ms: a stream that tolerates latency buys safety for free. Without a stream the queue is as deep as the cap (few wakeups).
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
/// Safety margin to begin with, in us: on the safe side until the machine has shown what it
/// does (it falls by an eighth per calm second down to the smallest).
const MARGIN_START_US: u64 = 1500;
/// What a rewind leaves queued in front of the card's play position (besides the FIFO or
/// BATCH grain), in us.
const REWIND_KEEP_US: u64 = 1333;
/// Smallest margin, in us.
const MARGIN_MIN_US: u64 = 500;
/// Largest margin, in ms.
const MARGIN_MAX_MS: u64 = 20;
/// The margin falls by an eighth after this long without trouble.
const CALM_NS: u64 = 1_000_000_000;
/// The clock loop's time constant.
const CLOCK_TAU_NS: f64 = 1e9;

/// What the running streams ask of the queue, in device frames: the smallest period (how
/// often the quickest client wants its frames taken), the smallest slack (how much extra
/// latency the most demanding one tolerates: half its period, or an eighth of its buffer if
/// that is more) and the smallest limit (half a buffer: a learnt margin never goes past it, or
/// the queue would hold more than that client can ever have written ahead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The smallest period.
    pub period: u32,
    /// The smallest slack.
    pub slack: u32,
    /// The smallest limit.
    pub limit: u32,
}

impl Ask {
    /// The ask of one stream of `period` and `buffer` frames (device frames).
    #[must_use]
    pub fn of(period: u32, buffer: u32) -> Self {
        Self { period: period.max(1), slack: (period / 2).max(buffer / 8), limit: buffer / 2 }
    }

    /// Both asks at once: the smaller of each.
    #[must_use]
    pub fn min(self, other: Self) -> Self {
        Self {
            period: self.period.min(other.period),
            slack: self.slack.min(other.slack),
            limit: self.limit.min(other.limit),
        }
    }
}

/// The deepest queue on a rewindable device of `buffer` frames (what a stream's history must
/// hold): three quarters of it, a quarter kept free to notice trouble before it runs dry.
#[must_use]
pub fn deepest_queue(buffer: u32) -> u32 {
    buffer.saturating_sub(buffer / 4)
}

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
    /// The wake level the last sleep aimed at (what a wake is judged against).
    planned: u32,
    /// Queued frames may be rewritten.
    rewinds: bool,
    /// Frames a rewind leaves in front of the card's play position.
    keep: u32,
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
        let deepest = deepest_queue(buffer).max(2 * floor);
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
            planned: 0,
            rewinds: rewind,
            keep: grain + us(REWIND_KEEP_US),
            clock: CardClock::new(rate),
        }
    }

    /// True when `other` was made for a device like this one's (same rate, buffer and
    /// capabilities): a restart of the same device keeps what was learnt (margin, clock).
    #[must_use]
    pub fn same_device(&self, other: &Self) -> bool {
        (self.rate, self.cap, self.grain, self.rewinds, self.keep)
            == (other.rate, other.cap, other.grain, other.rewinds, other.keep)
    }

    /// How deep a rewind may go: it leaves this many frames queued.
    #[must_use]
    pub fn rewind_keep(&self) -> u32 {
        self.keep
    }

    /// The queue to rewind to at a wake that found `queued` frames: the frames a rewind leaves
    /// when the queue is out of date (`stale`), the fill level when the queue is much deeper
    /// than the streams now ask for; `None`: no rewind.
    #[must_use]
    pub fn rewind_to(&self, queued: u32, asked: Option<Ask>, stale: bool) -> Option<u32> {
        if !self.rewinds {
            return None;
        }
        let to = if stale { self.keep } else { self.fill_level(asked) };
        let slack = if stale { 0 } else { self.step(asked) + self.wake_level(asked) };
        (queued > to + slack).then_some(to)
    }

    /// Deepest queue.
    #[must_use]
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// The safety margin for the streams' ask: the learnt margin, and at least their slack up
    /// to the largest margin (a stream that tolerates a long latency loses nothing by a deep
    /// margin, and a stall of the thread costs it nothing); the largest margin without streams.
    #[must_use]
    pub fn margin_for(&self, asked: Option<Ask>) -> u32 {
        match asked {
            None => self.margin.max(self.margin_max),
            Some(a) => {
                let m = self.margin.max(a.slack.min(self.margin_max));
                m.min(a.limit.max(self.margin_min))
            }
        }
    }

    /// The wake level the last sleep aimed at.
    #[must_use]
    pub fn planned(&self) -> u32 {
        self.planned
    }

    /// The wake level: the device never holds less than this when all goes well.
    #[must_use]
    pub fn wake_level(&self, asked: Option<Ask>) -> u32 {
        self.margin_for(asked) + self.grain
    }

    /// The learnt margin, in frames.
    #[must_use]
    pub fn margin(&self) -> u32 {
        self.margin
    }

    /// The queue step for the smallest ask of the running streams (`None`: nothing runs): half
    /// the ask, so that the stream's frames reach the card by the time it has written the next
    /// period.
    #[must_use]
    pub fn step(&self, asked: Option<Ask>) -> u32 {
        let room = self.cap.saturating_sub(self.wake_level(asked)).max(self.floor);
        asked.map_or(room, |a| (a.period / 2).clamp(self.floor, room))
    }

    /// How full the device is kept: the wake level plus one step.
    #[must_use]
    pub fn fill_level(&self, asked: Option<Ask>) -> u32 {
        self.wake_level(asked) + self.step(asked)
    }

    /// ns until a queue of `queued` frames falls to the wake level (0: now); the next wake is
    /// judged against that level.
    pub fn sleep_ns(&mut self, queued: u32, asked: Option<Ask>) -> u64 {
        self.planned = self.wake_level(asked);
        self.clock.ns_for(u64::from(queued.saturating_sub(self.planned)))
    }

    /// The device ran dry: a larger margin from now on.
    pub fn underrun(&mut self, now: u64) {
        self.margin = (self.margin * 2).clamp(self.margin_min, self.margin_max);
        self.calm_since_ns = now;
    }

    /// A timed wake found `queued` frames left: below half the margin it aimed at it came late
    /// (the learnt margin grows by half; returns true); otherwise, after a calm second,
    /// the margin falls by an eighth.
    pub fn woke_with(&mut self, queued: u32, now: u64) -> bool {
        if self.calm_since_ns == 0 {
            self.calm_since_ns = now;
        }
        let aimed = self.planned.saturating_sub(self.grain);
        if queued < self.grain + aimed / 2 {
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
        let a = |p, b| Some(Ask::of(p, b));
        assert_eq!(s.step(a(64, 256)), 32);
        assert_eq!(s.step(a(12_000, 24_000)), 6_000);
        assert_eq!(s.step(a(4, 8)), 32);
        assert_eq!(s.step(None), s.cap() - s.wake_level(None));
        assert!(s.fill_level(a(1 << 30, 1 << 31)) <= s.cap());
        // A low-latency ask keeps the learnt margin (1.5 ms at first); one that tolerates more
        // gets its slack as margin, up to 20 ms.
        assert_eq!(s.fill_level(a(64, 256)), 72 + 32);
        assert_eq!(s.wake_level(a(256, 512)), 128);
        assert_eq!(s.wake_level(a(256, 4096)), 512);
        assert_eq!(s.wake_level(a(12_000, 24_000)), 960);
        // Two streams: the smaller of each.
        assert_eq!(Ask::of(64, 4096).min(Ask::of(1024, 1024)), Ask { period: 64, slack: 512, limit: 512 });
    }

    #[test]
    fn rewinds_go_to_the_keep_or_the_fill_level() {
        let s = Schedule::new(48_000, 65_536, true, 0);
        let a = Some(Ask::of(64, 256));
        assert_eq!(s.rewind_to(40_000, a, true), Some(s.rewind_keep()));
        assert_eq!(s.rewind_to(40_000, a, false), Some(s.fill_level(a)));
        assert_eq!(s.rewind_to(s.fill_level(a), a, false), None);
        assert_eq!(s.rewind_to(10, a, true), None);
        let no = Schedule::new(48_000, 65_536, false, 0);
        assert_eq!(no.rewind_to(40_000, a, true), None);
    }

    #[test]
    fn without_rewinds_the_queue_stays_short() {
        let s = Schedule::new(48_000, 65_536, false, 0);
        assert!(s.cap() <= 48 * NO_REWIND_CAP_MS, "{}", s.cap());
        assert!(s.fill_level(Some(Ask::of(12_000, 24_000))) <= s.cap());
    }

    #[test]
    fn a_learnt_margin_never_passes_half_the_smallest_buffer() {
        let mut s = Schedule::new(48_000, 65_536, true, 0);
        for _ in 0..20 {
            s.underrun(0);
        }
        assert_eq!(s.margin(), s.margin_max);
        assert_eq!(s.wake_level(Some(Ask::of(64, 256))), 128);
        assert_eq!(s.wake_level(Some(Ask::of(64, 256).min(Ask::of(1024, 8192)))), 128);
        assert_eq!(s.wake_level(Some(Ask::of(6000, 24_000))), s.margin_max);
    }

    #[test]
    fn the_margin_rises_on_trouble_and_falls_when_calm() {
        let mut s = Schedule::new(48_000, 65_536, true, 0);
        let m0 = s.margin();
        s.underrun(0);
        assert_eq!(s.margin(), 2 * m0);
        let _ = s.sleep_ns(1000, Some(Ask::of(64, 256)));
        s.woke_with(0, 1);
        assert_eq!(s.margin(), 3 * m0);
        let high = s.margin();
        let _ = s.sleep_ns(1000, Some(Ask::of(64, 256)));
        s.woke_with(high, 2 + CALM_NS);
        assert!(s.margin() < high);
        for i in 0..200 {
            s.woke_with(10_000, (i + 3) * (CALM_NS + 1));
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
        let mut s = Schedule::new(48_000, 65_536, true, 0);
        let a = Some(Ask::of(64, 256));
        let q = s.wake_level(a) + 480;
        assert_eq!(s.sleep_ns(q, a), 10_000_000);
        assert_eq!(s.sleep_ns(s.wake_level(a) / 2, a), 0);
    }
}

//! One stream's conversion pipeline, built on the control thread when the stream is set up and
//! run by the mix thread without allocating: ring bytes in the stream's format -> f32 (one tight
//! loop per format, `convert::decoder`) -> resample to the device rate with rubato when the rates
//! differ (fixed output = the device period, `process_into_buffer` only) -> remap channels by
//! channel map into the device's layout ([`Remap`]) -> the stream's gain with a short linear ramp
//! -> added into the f32 mix bus.
//! Built on the control thread (RT: no); `Pipeline::mix` and friends run on the mix thread
//! (RT: yes — no allocation, no locks, no logging, no syscalls).

use std::f32::consts::FRAC_1_SQRT_2;
use std::fmt;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Indexing, PolynomialDegree, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};
use shmix_shared::chmap::{self, ChannelMap, Position};
use shmix_shared::cursor;
use shmix_shared::shm::StreamShm;
use shmix_shared::ResampleQuality;
use shmix_shared::{AudioParams, SampleFormat};

use crate::convert::{self, DecodeFn};

/// Length of the gain ramp on a gain change, in milliseconds of device time.
pub const GAIN_RAMP_MS: u32 = 5;

/// The quality `--resample-quality` defaults to: the cheapest with an anti-alias filter that
/// reaches THD+N <= -100 dB on a 997 Hz sine at -6 dBFS, 44100 -> 48000 Hz, in f32 (see the
/// tests below; `Fast` passes that test too, but aliases high frequencies).
pub const DEFAULT_QUALITY: ResampleQuality = ResampleQuality::Medium;

/// What a stream is mixed into: the device's parameters and channel map, and the daemon's
/// default resampling quality (never `Default`).
#[derive(Debug, Clone, Copy)]
pub struct DeviceSpec {
    /// The device's format, rate, channels, period and buffer.
    pub params: AudioParams,
    /// The device's channel map (`snd_pcm_get_chmap`, else the standard map).
    pub chmap: ChannelMap,
    /// `--resample-quality`.
    pub quality: ResampleQuality,
}

/// What a client asked for.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    /// Sample format.
    pub format: SampleFormat,
    /// Frames per second.
    pub rate: u32,
    /// Channel map (its length is the channel count).
    pub chmap: ChannelMap,
    /// Requested resampling quality (`Default`: the daemon's).
    pub quality: ResampleQuality,
}

/// The smallest stream buffer the daemon accepts: two device periods' worth of stream frames,
/// `2 * ceil(device_period * stream_rate / device_rate)`.
#[must_use]
pub fn min_buffer_frames(device_period: u32, device_rate: u32, stream_rate: u32) -> u32 {
    let per = (u64::from(device_period) * u64::from(stream_rate)).div_ceil(u64::from(device_rate.max(1)));
    u32::try_from(2 * per).unwrap_or(u32::MAX)
}

/// The quality a stream gets: its own unless `Default`, then the daemon's (itself `Default`
/// means [`DEFAULT_QUALITY`]).
#[must_use]
pub fn resolve_quality(stream: ResampleQuality, daemon: ResampleQuality) -> ResampleQuality {
    match (stream, daemon) {
        (ResampleQuality::Default, ResampleQuality::Default) => DEFAULT_QUALITY,
        (ResampleQuality::Default, d) => d,
        (s, _) => s,
    }
}

/// Builds the resampler of a quality: fixed output of `chunk` frames, `channels` interleaved.
///
/// - `Fast`: cubic polynomial interpolation (no anti-alias filter).
/// - `Medium`: windowed sinc of 64 taps (Blackman-Harris²), 128x oversampled, linear
///   interpolation between the sinc's points.
/// - `High`: windowed sinc of 256 taps (Blackman-Harris²), 256x oversampled, cubic interpolation.
///
/// # Errors
/// rubato refuses the ratio or the chunk (reason as text).
pub fn build_resampler(
    quality: ResampleQuality,
    stream_rate: u32,
    device_rate: u32,
    chunk: usize,
    channels: usize,
) -> Result<Async<f32>, String> {
    build_resampler_fixed(quality, stream_rate, device_rate, chunk, channels, FixedAsync::Output)
}

/// As [`build_resampler`] from `from` Hz to `to` Hz, with the chunk fixed on the given side
/// (`FixedAsync::Input` for recording: the device period in, what it makes out).
///
/// # Errors
/// rubato refuses the ratio or the chunk (reason as text).
pub fn build_resampler_fixed(
    quality: ResampleQuality,
    stream_rate: u32,
    device_rate: u32,
    chunk: usize,
    channels: usize,
    fixed: FixedAsync,
) -> Result<Async<f32>, String> {
    let ratio = f64::from(device_rate) / f64::from(stream_rate);
    let sinc = |len: usize, over: usize, interp| {
        let p = SincInterpolationParameters::new(len, WindowFunction::BlackmanHarris2)
            .oversampling_factor(over)
            .interpolation(interp);
        Async::<f32>::new_sinc(ratio, 1.0, &p, chunk, channels, fixed)
    };
    let r = match resolve_quality(quality, DEFAULT_QUALITY) {
        ResampleQuality::Fast => Async::<f32>::new_poly(ratio, 1.0, PolynomialDegree::Cubic, chunk, channels, fixed),
        ResampleQuality::Medium => sinc(64, 128, SincInterpolationType::Linear),
        ResampleQuality::High | ResampleQuality::Default => sinc(256, 256, SincInterpolationType::Cubic),
    };
    r.map_err(|e| format!("resampler {stream_rate} -> {device_rate} Hz: {e}"))
}

/// One non-zero entry of a remap matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    src: usize,
    dst: usize,
    coef: f32,
}

/// A channel remap matrix (device channels x stream channels), kept as its non-zero taps.
///
/// Rules, per stream channel: a position the device has goes there at 1.0; `NA` is silent;
/// `UNKNOWN` maps by index (modulo the device's channels); a one-channel stream of `UNKNOWN`
/// position counts as `MONO`. A position the device lacks is folded in (never dropped): `MONO` to
/// FL and FR at 1.0 (else FC); front left/right-ish positions to FL/FR; centre-ish to FL and FR at
/// -3 dB (0.7071); rear/side to the other of rear/side at 1.0, else the front of its side at
/// -3 dB; rear centre to both rears (sides, fronts) at -3 dB; LFE to FL and FR at -3 dB (folded,
/// not dropped), else FC. A one-channel device takes every channel (fronts at 1.0, others at -3
/// dB). Anything still unplaced maps by index. Finally each device row whose coefficients sum
/// above 1 is divided by that sum, so a full-scale input on every channel cannot clip
/// (stereo -> mono becomes the average).
#[derive(Clone, PartialEq)]
pub struct Remap {
    sc: usize,
    dc: usize,
    identity: bool,
    taps: Vec<Tap>,
}

impl fmt::Debug for Remap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Remap({}->{}", self.sc, self.dc)?;
        if self.identity {
            return f.write_str(", identity)");
        }
        for t in &self.taps {
            write!(f, ", {}<-{}:{:.4}", t.dst, t.src, t.coef)?;
        }
        f.write_str(")")
    }
}

const M3: f32 = FRAC_1_SQRT_2;

/// Fallback target sets for a position the device lacks, best first.
fn fallbacks(p: Position) -> &'static [&'static [(Position, f32)]] {
    use chmap::*;
    // Codes above RC (alsa-lib's SND_CHMAP_*): 12 FLC, 13 FRC, 14 RLC, 15 RRC, 16 FLW, 17 FRW,
    // 18 FLH, 19 FCH, 20 FRH, 21 TC, 22 TFL, 23 TFR, 24 TFC, 25 TRL, 26 TRR, 27 TRC, 28 TFLC,
    // 29 TFRC, 30 TSL, 31 TSR, 32 LLFE, 33 RLFE, 34 BC, 35 BLC, 36 BRC.
    const FRONT_L: &[&[(Position, f32)]] = &[&[(FL, 1.0)], &[(FC, 1.0)], &[(MONO, 1.0)]];
    const FRONT_R: &[&[(Position, f32)]] = &[&[(FR, 1.0)], &[(FC, 1.0)], &[(MONO, 1.0)]];
    const CENTRE: &[&[(Position, f32)]] = &[&[(FC, 1.0)], &[(FL, M3), (FR, M3)], &[(MONO, 1.0)]];
    const REAR_L: &[&[(Position, f32)]] = &[&[(RL, 1.0)], &[(SL, 1.0)], &[(FL, M3)], &[(FC, M3)], &[(MONO, M3)]];
    const REAR_R: &[&[(Position, f32)]] = &[&[(RR, 1.0)], &[(SR, 1.0)], &[(FR, M3)], &[(FC, M3)], &[(MONO, M3)]];
    const SIDE_L: &[&[(Position, f32)]] = &[&[(SL, 1.0)], &[(RL, 1.0)], &[(FL, M3)], &[(FC, M3)], &[(MONO, M3)]];
    const SIDE_R: &[&[(Position, f32)]] = &[&[(SR, 1.0)], &[(RR, 1.0)], &[(FR, M3)], &[(FC, M3)], &[(MONO, M3)]];
    const REAR_C: &[&[(Position, f32)]] = &[
        &[(RC, 1.0)],
        &[(RL, M3), (RR, M3)],
        &[(SL, M3), (SR, M3)],
        &[(FL, M3), (FR, M3)],
        &[(FC, M3)],
        &[(MONO, M3)],
    ];
    const LFE_: &[&[(Position, f32)]] = &[&[(LFE, 1.0)], &[(FL, M3), (FR, M3)], &[(FC, M3)], &[(MONO, M3)]];
    const MONO_: &[&[(Position, f32)]] = &[&[(MONO, 1.0)], &[(FL, 1.0), (FR, 1.0)], &[(FC, 1.0)]];
    match p {
        MONO => MONO_,
        FL | 12 | 16 | 18 | 22 | 28 | 35 => FRONT_L,
        FR | 13 | 17 | 20 | 23 | 29 | 36 => FRONT_R,
        FC | 19 | 21 | 24 | 34 => CENTRE,
        RL | 14 | 25 => REAR_L,
        RR | 15 | 26 => REAR_R,
        SL | 30 => SIDE_L,
        SR | 31 => SIDE_R,
        RC | 27 => REAR_C,
        LFE | 32 | 33 => LFE_,
        _ => &[],
    }
}

/// Weight of a stream position on a one-channel device (before normalisation).
fn mono_weight(p: Position) -> f32 {
    use chmap::*;
    match fallbacks(p).first().and_then(|s| s.first()).map(|t| t.0) {
        Some(MONO | FL | FR | FC) | None => 1.0,
        Some(_) => M3,
    }
}

impl Remap {
    /// The matrix from `stream` into `device` (see the type's rules).
    #[must_use]
    pub fn new(stream: &ChannelMap, device: &ChannelMap) -> Self {
        let sc = stream.channels() as usize;
        let dc = device.channels() as usize;
        let dpos = device.positions();
        let find = |p: Position| (p != chmap::UNKNOWN && p != chmap::NA).then(|| dpos.iter().position(|d| *d == p))?;
        let mut m = vec![0.0f32; dc * sc];
        for (i, &p0) in stream.positions().iter().enumerate() {
            let p = if sc == 1 && p0 == chmap::UNKNOWN { chmap::MONO } else { p0 };
            let mut put = |d: usize, c: f32| m[d * sc + i] += c;
            if p == chmap::NA {
                continue;
            }
            if dc == 1 {
                put(0, mono_weight(p));
                continue;
            }
            if let Some(d) = find(p) {
                put(d, 1.0);
                continue;
            }
            if p == chmap::MONO && find(chmap::FL).is_none() && find(chmap::FR).is_none() && find(chmap::FC).is_none() {
                // A device of unknown positions: mono to its first two channels.
                put(0, 1.0);
                put(1, 1.0);
                continue;
            }
            let set = fallbacks(p).iter().find(|set| set.iter().all(|(q, _)| find(*q).is_some()));
            match set {
                Some(set) => {
                    for (q, c) in set.iter() {
                        if let Some(d) = find(*q) {
                            put(d, *c);
                        }
                    }
                }
                None => put(i % dc, 1.0),
            }
        }
        for row in m.chunks_exact_mut(sc) {
            let sum: f32 = row.iter().map(|c| c.abs()).sum();
            if sum > 1.0 {
                row.iter_mut().for_each(|c| *c /= sum);
            }
        }
        let identity = sc == dc && (0..dc).all(|d| (0..sc).all(|s| m[d * sc + s] == if d == s { 1.0 } else { 0.0 }));
        let mut taps = Vec::new();
        for s in 0..sc {
            for d in 0..dc {
                let coef = m[d * sc + s];
                if coef != 0.0 {
                    taps.push(Tap { src: s, dst: d, coef });
                }
            }
        }
        Self { sc, dc, identity, taps }
    }

    /// The coefficient from stream channel `src` into device channel `dst`.
    #[must_use]
    pub fn coef(&self, dst: usize, src: usize) -> f32 {
        self.taps.iter().filter(|t| t.dst == dst && t.src == src).map(|t| t.coef).sum()
    }

    /// True when every stream channel goes to the device channel of its index at 1.0.
    #[must_use]
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// Adds `frames` frames of `src` (stream channels) times the gain into `bus` (device
    /// channels). RT: yes.
    pub fn add(&self, src: &[f32], bus: &mut [f32], frames: usize, gain: &mut Gain) {
        let (sc, dc) = (self.sc, self.dc);
        let src = &src[..frames * sc];
        let bus = &mut bus[..frames * dc];
        let ramp = gain.ramp_left.min(frames);
        for f in 0..ramp {
            let g = gain.step();
            let s = &src[f * sc..(f + 1) * sc];
            let b = &mut bus[f * dc..(f + 1) * dc];
            for t in &self.taps {
                b[t.dst] += t.coef * g * s[t.src];
            }
        }
        let g = gain.now;
        let (src, bus) = (&src[ramp * sc..], &mut bus[ramp * dc..]);
        if self.identity {
            for (b, x) in bus.iter_mut().zip(src) {
                *b += x * g;
            }
        } else if sc == 1 && dc == 2 && self.taps.len() == 2 && self.taps[0].dst == 0 && self.taps[1].dst == 1 {
            let (c0, c1) = (self.taps[0].coef * g, self.taps[1].coef * g);
            for (b, x) in bus.chunks_exact_mut(2).zip(src) {
                b[0] += c0 * x;
                b[1] += c1 * x;
            }
        } else {
            for (b, s) in bus.chunks_exact_mut(dc).zip(src.chunks_exact(sc)) {
                for t in &self.taps {
                    b[t.dst] += t.coef * g * s[t.src];
                }
            }
        }
    }
}

/// A gain with a linear ramp on change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gain {
    now: f32,
    target: f32,
    step: f32,
    ramp_left: usize,
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
    fn step(&mut self) -> f32 {
        let g = self.now;
        self.ramp_left -= 1;
        self.now = if self.ramp_left == 0 { self.target } else { self.now + self.step };
        g
    }
}

/// What one [`Pipeline::mix`] took and gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Stream frames consumed from the ring.
    pub consumed: u32,
    /// Device frames added into the bus (the rest of the run stays silent).
    pub emitted: usize,
    /// The ring held less than this run needed (an underrun when running).
    pub short: bool,
    /// Draining: the ring is empty and the resampler's tail is out.
    pub tail_done: bool,
}

/// One stream's conversion state. Every buffer is sized at construction.
pub struct Pipeline {
    format: SampleFormat,
    sc: usize,
    dc: usize,
    frame_bytes: usize,
    decode: DecodeFn,
    remap: Remap,
    passthrough: bool,
    quality: ResampleQuality,
    resampler: Option<Box<Async<f32>>>,
    /// Device rate / stream rate.
    ratio: f64,
    /// The resampler's delay in device frames.
    delay: usize,
    period: usize,
    raw: Vec<u8>,
    dec: Vec<f32>,
    rs_out: Vec<f32>,
    rs_pos: usize,
    rs_len: usize,
    /// Device frames emitted since the last restart.
    out_total: u64,
    /// The device's rate (Hz).
    dev_rate: u32,
    gain: Gain,
    /// Peak absolute sample added into the bus since the last `take_peak` (after the gain).
    peak: f32,
}

/// Lanes of the peak kernels: independent accumulators (no dependency chain), so the loops
/// vectorise.
const PEAK_LANES: usize = 16;

/// `max` without NaN handling (one `maxss`/`maxps`; a NaN sample is simply not a peak).
#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// Largest absolute sample of `x`. RT: yes.
#[must_use]
pub fn peak_of(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; PEAK_LANES];
    let mut blocks = x.chunks_exact(PEAK_LANES);
    for b in &mut blocks {
        for (a, v) in acc.iter_mut().zip(b) {
            *a = fmax(*a, v.abs());
        }
    }
    let tail = blocks.remainder().iter().fold(0.0f32, |m, v| fmax(m, v.abs()));
    acc.iter().fold(tail, |m, &v| fmax(m, v))
}

/// Folds the largest absolute sample per channel of interleaved `x` (`peaks.len()` channels)
/// into `peaks`. RT: yes.
pub fn channel_peaks(x: &[f32], peaks: &mut [f32]) {
    let ch = peaks.len();
    if ch == 0 {
        return;
    }
    let mut frames = x.chunks_exact(ch);
    if PEAK_LANES.is_multiple_of(ch) {
        // Whole frames per block: lane j always holds channel j % ch.
        let mut acc = [0.0f32; PEAK_LANES];
        let mut blocks = x.chunks_exact(PEAK_LANES);
        for b in &mut blocks {
            for (a, v) in acc.iter_mut().zip(b) {
                *a = fmax(*a, v.abs());
            }
        }
        // Lane j holds channel j % ch, and ch divides the (power of two) lane count: halve
        // the lanes until ch are left (lanes j and j + w/2 hold the same channel). A per-lane
        // `j % ch` was a division each, most of a 64-frame period's scan.
        let mut w = PEAK_LANES;
        while w > ch {
            w /= 2;
            let (lo, hi) = acc.split_at_mut(w);
            for (a, &b) in lo.iter_mut().zip(&hi[..w]) {
                *a = fmax(*a, b);
            }
        }
        for (p, &a) in peaks.iter_mut().zip(&acc[..ch]) {
            *p = fmax(*p, a);
        }
        frames = blocks.remainder().chunks_exact(ch);
    }
    for f in frames {
        for (p, v) in peaks.iter_mut().zip(f) {
            *p = fmax(*p, v.abs());
        }
    }
}

/// Which way a stage converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// A playback stream into the device (the device period fixes the resampler's output).
    ToDevice,
    /// The device (capture side, or the playback mix for a monitor) into a recording stream (the
    /// device period fixes the resampler's input).
    FromDevice,
}

/// What [`Pipeline`] and [`RecordPipe`] build alike: the channel remap, the resolved quality
/// and the resampler (none when the rates match) with its ratio (output rate over input rate)
/// and delay. Control thread.
struct Stage {
    remap: Remap,
    passthrough: bool,
    quality: ResampleQuality,
    resampler: Option<Box<Async<f32>>>,
    ratio: f64,
    delay: usize,
}

impl Stage {
    fn new(s: &StreamSpec, dev: &DeviceSpec, flow: Flow) -> Result<Self, String> {
        let d = dev.params;
        if dev.chmap.channels() != d.channels {
            return Err(format!("device map has {} channels, device {}", dev.chmap.channels(), d.channels));
        }
        let (remap, from, to, fixed) = match flow {
            Flow::ToDevice => (Remap::new(&s.chmap, &dev.chmap), s.rate, d.rate, FixedAsync::Output),
            Flow::FromDevice => (Remap::new(&dev.chmap, &s.chmap), d.rate, s.rate, FixedAsync::Input),
        };
        let quality = resolve_quality(s.quality, dev.quality);
        let (resampler, ratio, delay) = if from == to {
            (None, 1.0, 0)
        } else {
            let channels = s.chmap.channels() as usize;
            let r = build_resampler_fixed(quality, from, to, d.period_frames as usize, channels, fixed)?;
            let delay = r.output_delay();
            (Some(Box::new(r)), f64::from(to) / f64::from(from), delay)
        };
        let passthrough = s.format == d.format && s.rate == d.rate && remap.is_identity();
        Ok(Self { remap, passthrough, quality, resampler, ratio, delay })
    }
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("format", &self.format)
            .field("channels", &self.sc)
            .field("ratio", &self.ratio)
            .field("quality", &self.quality)
            .field("remap", &self.remap)
            .field("passthrough", &self.passthrough)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Builds everything the stream needs to be mixed into `dev`. Control thread.
    ///
    /// # Errors
    /// A parameter the daemon cannot serve (reason as text).
    pub fn new(s: &StreamSpec, dev: &DeviceSpec) -> Result<Self, String> {
        let d = dev.params;
        let sc = s.chmap.channels() as usize;
        let dc = d.channels as usize;
        let period = d.period_frames as usize;
        let Stage { remap, passthrough, quality, resampler, ratio, delay } = Stage::new(s, dev, Flow::ToDevice)?;
        let max_in = resampler.as_ref().map_or(period, |r| r.input_frames_max().max(period));
        let frame_bytes = s.format.sample_bytes() as usize * sc;
        let ramp = (u64::from(d.rate) * u64::from(GAIN_RAMP_MS) / 1000) as usize;
        Ok(Self {
            format: s.format,
            sc,
            dc,
            frame_bytes,
            decode: convert::decoder(s.format),
            passthrough,
            remap,
            quality,
            ratio,
            delay,
            period,
            raw: vec![0; max_in * frame_bytes],
            dec: vec![0.0; max_in * sc],
            rs_out: vec![0.0; if resampler.is_some() { period * sc } else { 0 }],
            resampler,
            rs_pos: 0,
            rs_len: 0,
            out_total: 0,
            dev_rate: d.rate,
            gain: Gain::new(ramp),
            peak: 0.0,
        })
    }

    /// The stream's peak since the last call (after its gain), and restarts the window. RT: yes.
    pub fn take_peak(&mut self) -> f32 {
        std::mem::take(&mut self.peak)
    }

    /// Folds `p` into the stream's peak (the fast path meters the device's bytes). RT: yes.
    pub fn note_peak(&mut self, p: f32) {
        self.peak = fmax(self.peak, p);
    }

    /// Sets the gain without a ramp (before the stream first plays). RT: yes.
    pub fn jump_gain(&mut self, g: f32) {
        self.gain.jump(g);
    }

    /// Device channels this pipeline writes.
    #[must_use]
    pub fn device_channels(&self) -> usize {
        self.dc
    }

    /// Largest run it can mix at once (the device period).
    #[must_use]
    pub fn max_frames(&self) -> usize {
        self.period
    }

    /// Bytes per stream frame.
    #[must_use]
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    /// The resolved resampling quality.
    #[must_use]
    pub fn quality(&self) -> ResampleQuality {
        self.quality
    }

    /// True when resampling.
    #[must_use]
    pub fn resamples(&self) -> bool {
        self.resampler.is_some()
    }

    /// The channel remap.
    #[must_use]
    pub fn remap(&self) -> &Remap {
        &self.remap
    }

    /// The resampler's delay in device frames (0 without one).
    #[must_use]
    pub fn delay_frames(&self) -> usize {
        self.delay
    }

    /// Sets the stream's gain (ramped). RT: yes.
    pub fn set_gain(&mut self, g: f32) {
        self.gain.set(g);
    }

    /// The gain aimed at.
    #[must_use]
    pub fn gain(&self) -> f32 {
        self.gain.target()
    }

    /// True when the ring's bytes may go to the device unchanged: same format, rate and layout,
    /// unity gain.
    #[must_use]
    pub fn is_passthrough(&self) -> bool {
        self.passthrough && self.gain.is_unity()
    }

    /// Forgets everything in flight (a new start). RT: yes.
    pub fn restart(&mut self) {
        if let Some(r) = self.resampler.as_mut() {
            r.reset();
        }
        self.rs_pos = 0;
        self.rs_len = 0;
        self.out_total = 0;
    }

    /// Fast path bookkeeping: `k` frames went to the device by plain copy.
    pub fn note_copied(&mut self, k: usize) {
        self.out_total += k as u64;
    }

    /// Device frame index (since restart) just after the last input frame's output.
    fn tail_end(&self, consumed_total: u64) -> u64 {
        (consumed_total as f64 * self.ratio).ceil() as u64 + self.delay as u64
    }

    /// Stream frames consumed but not yet heard, given that `device_queued` of the frames
    /// handed to the device are still queued there: the device's share converted to the stream
    /// rate plus the resampler's delay. RT: yes.
    #[must_use]
    pub fn queued_stream_frames(&self, consumed_total: u64, device_queued: u64) -> u64 {
        if self.resampler.is_none() {
            return device_queued.min(consumed_total);
        }
        let dq = device_queued.min(self.out_total);
        let heard_out = (self.out_total - dq) as f64 - self.delay as f64;
        let heard_in = (heard_out.max(0.0) / self.ratio).floor() as u64;
        consumed_total.saturating_sub(heard_in)
    }

    /// How long after now the device starts playing what this stream gave it: the device frames
    /// queued ahead of all of them (what the device held when the stream started: silence or
    /// other material), in nanoseconds; 0 once the stream's frames reach the head of the device
    /// queue. Until then the stream's delay does not shrink. RT: yes.
    #[must_use]
    pub fn lead_ns(&self, device_queued: u64) -> u64 {
        let ahead = device_queued.saturating_sub(self.out_total);
        ahead.saturating_mul(1_000_000_000) / u64::from(self.dev_rate.max(1))
    }

    /// Device frames -> stream frames (rounded up).
    #[must_use]
    pub fn to_stream_frames(&self, device_frames: u64) -> u64 {
        if self.resampler.is_none() {
            device_frames
        } else {
            (device_frames as f64 / self.ratio).ceil() as u64
        }
    }

    /// Reads `k` frames at ring frame `at` and decodes them into `dec`.
    fn load(&mut self, shm: &StreamShm, at: u64, k: usize) {
        let buffer = shm.layout().buffer_frames;
        let bytes = &mut self.raw[..k * self.frame_bytes];
        shm.read_audio(cursor::ring_index(at, buffer), bytes);
        (self.decode)(bytes, &mut self.dec[..k * self.sc]);
    }

    /// Adds up to `n` device frames (n <= the device period) of this stream into `bus`
    /// (`n` x device channels), taking stream frames from the ring at `read_count`, of which
    /// `fill` are there. `draining`: the end of the stream is in the ring (a short ring is not an
    /// underrun; the resampler's tail is flushed). RT: yes.
    pub fn mix(
        &mut self,
        shm: &StreamShm,
        read_count: u64,
        fill: u32,
        n: usize,
        bus: &mut [f32],
        draining: bool,
    ) -> Taken {
        let (sc, dc) = (self.sc, self.dc);
        let fill = fill as usize;
        let n = n.min(self.period);
        if self.resampler.is_none() {
            let k = fill.min(n);
            if k > 0 {
                self.load(shm, read_count, k);
                self.remap.add(&self.dec, bus, k, &mut self.gain);
                self.peak = fmax(self.peak, peak_of(&self.dec[..k * sc]) * self.gain.level());
            }
            self.out_total += k as u64;
            return Taken { consumed: k as u32, emitted: k, short: k < n, tail_done: k == fill };
        }
        let mut produced = 0;
        let mut consumed = 0usize;
        let mut short = false;
        while produced < n {
            if self.rs_pos == self.rs_len {
                if short {
                    break;
                }
                let Some(rs) = self.resampler.as_deref() else { break };
                let need = rs.input_frames_next();
                let k = (fill - consumed).min(need);
                if k < need {
                    if !draining {
                        short = true;
                    } else if k == 0 && self.out_total >= self.tail_end(read_count + consumed as u64) {
                        break;
                    }
                }
                if k > 0 {
                    self.load(shm, read_count + consumed as u64, k);
                }
                consumed += k;
                let Some(rs) = self.resampler.as_deref_mut() else { break };
                let input = InterleavedSlice::new(&self.dec[..k * sc], sc, k);
                let output = InterleavedSlice::new_mut(&mut self.rs_out[..], sc, self.period);
                let (Ok(input), Ok(mut output)) = (input, output) else { break };
                let idx = Indexing { partial_len: (k < need).then_some(k), ..Indexing::default() };
                self.rs_pos = 0;
                self.rs_len = match rs.process_into_buffer(&input, &mut output, Some(&idx)) {
                    Ok((_, out)) => out.min(self.period),
                    Err(_) => 0,
                };
                if self.rs_len == 0 {
                    break;
                }
            }
            let mut m = (n - produced).min(self.rs_len - self.rs_pos);
            if draining && consumed == fill {
                let left = self.tail_end(read_count + consumed as u64).saturating_sub(self.out_total);
                m = m.min(usize::try_from(left).unwrap_or(usize::MAX));
                if m == 0 {
                    break;
                }
            }
            let src = &self.rs_out[self.rs_pos * sc..(self.rs_pos + m) * sc];
            self.remap.add(src, &mut bus[produced * dc..], m, &mut self.gain);
            self.peak = fmax(self.peak, peak_of(src) * self.gain.level());
            self.rs_pos += m;
            produced += m;
            self.out_total += m as u64;
        }
        let tail_done = consumed == fill && self.out_total >= self.tail_end(read_count + consumed as u64);
        Taken { consumed: consumed as u32, emitted: produced, short, tail_done }
    }
}

/// A recording stream's conversion (capture and monitor): device bytes -> f32 -> remap from the
/// device's layout to the stream's channel map -> resample device rate -> stream rate (rubato,
/// fixed input = the device period, `process_into_buffer` only) -> the stream's format. A stream
/// in the device's format, rate and layout gets the device's bytes unchanged (bit-exact).
/// Built on the control thread; [`RecordPipe::convert`] runs on the mix thread (RT: yes — no
/// allocation, no locks, no syscalls).
pub struct RecordPipe {
    dc: usize,
    sc: usize,
    dev_frame_bytes: usize,
    frame_bytes: usize,
    decode: DecodeFn,
    encode: convert::EncodeFn,
    remap: Remap,
    passthrough: bool,
    quality: ResampleQuality,
    resampler: Option<Box<Async<f32>>>,
    /// Stream rate / device rate.
    ratio: f64,
    /// The resampler's delay in stream frames.
    delay: usize,
    period: usize,
    dec: Vec<f32>,
    /// Remapped input waiting for a whole device period (resampling only).
    pend: Vec<f32>,
    pend_len: usize,
    rs_out: Vec<f32>,
    out: Vec<u8>,
    gain: Gain,
    /// Peak absolute sample delivered since the last `take_peak` (after the gain).
    peak: f32,
}

impl fmt::Debug for RecordPipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordPipe")
            .field("channels", &self.sc)
            .field("ratio", &self.ratio)
            .field("quality", &self.quality)
            .field("remap", &self.remap)
            .field("passthrough", &self.passthrough)
            .finish_non_exhaustive()
    }
}

impl RecordPipe {
    /// Builds the conversion from `dev` (the capture device, or the playback device for a
    /// monitor) into the stream `s`. Control thread.
    ///
    /// # Errors
    /// A parameter the daemon cannot serve (reason as text).
    pub fn new(s: &StreamSpec, dev: &DeviceSpec) -> Result<Self, String> {
        let d = dev.params;
        let sc = s.chmap.channels() as usize;
        let dc = d.channels as usize;
        let period = d.period_frames as usize;
        let Stage { remap, passthrough, quality, resampler, ratio, delay } = Stage::new(s, dev, Flow::FromDevice)?;
        let max_out = resampler.as_ref().map_or(period, |r| r.output_frames_max().max(period));
        let frame_bytes = s.format.sample_bytes() as usize * sc;
        Ok(Self {
            dc,
            sc,
            dev_frame_bytes: d.frame_bytes() as usize,
            frame_bytes,
            decode: convert::decoder(d.format),
            encode: convert::encoder(s.format),
            passthrough,
            remap,
            quality,
            resampler,
            ratio,
            delay,
            period,
            dec: vec![0.0; period * dc],
            pend: vec![0.0; period * sc],
            pend_len: 0,
            rs_out: vec![0.0; max_out * sc],
            out: vec![0; max_out * frame_bytes],
            gain: Gain::new((u64::from(d.rate) * u64::from(GAIN_RAMP_MS) / 1000) as usize),
            peak: 0.0,
        })
    }

    /// The recording's peak since the last call (after its gain), and restarts the window.
    /// RT: yes.
    pub fn take_peak(&mut self) -> f32 {
        std::mem::take(&mut self.peak)
    }

    /// Sets the recording's gain (stream volume x capture volume; ramped). RT: yes.
    pub fn set_gain(&mut self, g: f32) {
        self.gain.set(g);
    }

    /// The gain aimed at.
    #[must_use]
    pub fn gain(&self) -> f32 {
        self.gain.target()
    }

    /// Sets the gain without a ramp (before the stream first records). RT: yes.
    pub fn jump_gain(&mut self, g: f32) {
        self.gain.jump(g);
    }

    /// True when the device's bytes go to the ring unchanged.
    #[must_use]
    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    /// True when the rates differ.
    #[must_use]
    pub fn resamples(&self) -> bool {
        self.resampler.is_some()
    }

    /// The resolved resampling quality.
    #[must_use]
    pub fn quality(&self) -> ResampleQuality {
        self.quality
    }

    /// Bytes per stream frame.
    #[must_use]
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    /// Forgets everything in flight (a new start). RT: yes.
    pub fn restart(&mut self) {
        if let Some(r) = self.resampler.as_mut() {
            r.reset();
        }
        self.pend_len = 0;
    }

    /// Stream frames captured by the device but not yet delivered, given `device_queued` device
    /// frames still in the device: those converted to the stream rate, plus what waits for a
    /// whole period and the resampler's delay. RT: yes.
    #[must_use]
    pub fn queued_stream_frames(&self, device_queued: u64) -> u64 {
        if self.resampler.is_none() {
            return device_queued;
        }
        ((device_queued + self.pend_len as u64) as f64 * self.ratio).ceil() as u64 + self.delay as u64
    }

    /// Converts one run of device frames (`src`, whole device frames, at most one device period)
    /// into the stream's format; returns the stream frames ready (possibly none while the
    /// resampler waits for a whole period). RT: yes.
    pub fn convert<'a>(&'a mut self, src: &'a [u8]) -> &'a [u8] {
        let (dc, sc) = (self.dc, self.sc);
        let k = (src.len() / self.dev_frame_bytes).min(self.period);
        if self.passthrough && self.gain.is_unity() {
            // Metering only: the bytes go out unchanged.
            (self.decode)(&src[..k * self.dev_frame_bytes], &mut self.dec[..k * dc]);
            self.peak = fmax(self.peak, peak_of(&self.dec[..k * dc]));
            return &src[..k * self.dev_frame_bytes];
        }
        if self.resampler.is_none() {
            (self.decode)(&src[..k * self.dev_frame_bytes], &mut self.dec[..k * dc]);
            let dst = &mut self.pend[..k * sc];
            dst.fill(0.0);
            self.remap.add(&self.dec, dst, k, &mut self.gain);
            self.peak = fmax(self.peak, peak_of(dst));
            (self.encode)(&self.pend[..k * sc], &mut self.out[..k * self.frame_bytes]);
            return &self.out[..k * self.frame_bytes];
        }
        let mut out_len = 0;
        let mut i = 0;
        while i < k {
            let m = (k - i).min(self.period - self.pend_len);
            let bytes = &src[i * self.dev_frame_bytes..(i + m) * self.dev_frame_bytes];
            (self.decode)(bytes, &mut self.dec[..m * dc]);
            let dst = &mut self.pend[self.pend_len * sc..(self.pend_len + m) * sc];
            dst.fill(0.0);
            self.remap.add(&self.dec, dst, m, &mut self.gain);
            self.peak = fmax(self.peak, peak_of(dst));
            self.pend_len += m;
            i += m;
            if self.pend_len == self.period {
                self.pend_len = 0;
                let Some(rs) = self.resampler.as_deref_mut() else { break };
                let room = self.rs_out.len() / sc - out_len;
                let input = InterleavedSlice::new(&self.pend[..], sc, self.period);
                let output = InterleavedSlice::new_mut(&mut self.rs_out[out_len * sc..], sc, room);
                let (Ok(input), Ok(mut output)) = (input, output) else { break };
                if let Ok((_, n)) = rs.process_into_buffer(&input, &mut output, None) {
                    let n = n.min(room);
                    let fb = self.frame_bytes;
                    (self.encode)(
                        &self.rs_out[out_len * sc..(out_len + n) * sc],
                        &mut self.out[out_len * fb..(out_len + n) * fb],
                    );
                    out_len += n;
                }
            }
        }
        &self.out[..out_len * self.frame_bytes]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_kernels_match_a_plain_loop() {
        for ch in [1usize, 2, 3, 4, 6, 8] {
            for frames in [0usize, 1, 7, 8, 33, 1024] {
                let x: Vec<f32> = (0..frames * ch).map(|i| ((i * 7919) % 1001) as f32 / 1000.0 - 0.5).collect();
                let mut want = vec![0.0f32; ch];
                for f in x.chunks_exact(ch) {
                    for (w, v) in want.iter_mut().zip(f) {
                        *w = w.max(v.abs());
                    }
                }
                let mut got = vec![0.0f32; ch];
                channel_peaks(&x, &mut got);
                assert_eq!(got, want, "{ch} ch, {frames} frames");
                assert_eq!(peak_of(&x), want.iter().fold(0.0f32, |a, &b| a.max(b)));
            }
        }
    }
    use chmap::*;

    fn map(p: &[Position]) -> ChannelMap {
        ChannelMap::new(p).unwrap()
    }

    fn matrix(r: &Remap) -> Vec<Vec<f32>> {
        (0..r.dc).map(|d| (0..r.sc).map(|s| r.coef(d, s)).collect()).collect()
    }

    #[test]
    fn mono_to_stereo_is_full_level_on_both() {
        let r = Remap::new(&ChannelMap::standard(1), &ChannelMap::standard(2));
        assert_eq!(matrix(&r), vec![vec![1.0], vec![1.0]]);
        // An unknown-position mono stream too.
        let r = Remap::new(&map(&[UNKNOWN]), &ChannelMap::standard(2));
        assert_eq!(matrix(&r), vec![vec![1.0], vec![1.0]]);
    }

    #[test]
    fn stereo_to_mono_is_the_average() {
        let r = Remap::new(&ChannelMap::standard(2), &ChannelMap::standard(1));
        assert_eq!(matrix(&r), vec![vec![0.5, 0.5]]);
    }

    #[test]
    fn identity_and_unknown_by_index() {
        for ch in 1..=8 {
            assert!(Remap::new(&ChannelMap::standard(ch), &ChannelMap::standard(ch)).is_identity(), "{ch}");
        }
        let r = Remap::new(&map(&[UNKNOWN, UNKNOWN]), &ChannelMap::standard(2));
        assert!(r.is_identity());
        // Unknown positions beyond the device's channels wrap, never vanish.
        let r = Remap::new(&map(&[UNKNOWN, UNKNOWN, UNKNOWN]), &ChannelMap::standard(2));
        assert_eq!(matrix(&r), vec![vec![0.5, 0.0, 0.5], vec![0.0, 1.0, 0.0]]);
        // NA stays silent; swapped channels swap.
        let r = Remap::new(&map(&[FR, FL, NA]), &ChannelMap::standard(2));
        assert_eq!(matrix(&r), vec![vec![0.0, 1.0, 0.0], vec![1.0, 0.0, 0.0]]);
    }

    #[test]
    fn surround_to_stereo_folds_at_minus_3_db_without_clipping() {
        for ch in [6, 8] {
            let r = Remap::new(&ChannelMap::standard(ch), &ChannelMap::standard(2));
            let m = matrix(&r);
            eprintln!("{ch} ch -> stereo: {r:?}");
            for (d, row) in m.iter().enumerate() {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-6, "row {d} sums to {sum}");
            }
            let pos = ChannelMap::standard(ch);
            for (s, p) in pos.positions().iter().enumerate() {
                let (l, rr) = (m[0][s], m[1][s]);
                match *p {
                    FL | RL | SL => assert!(l > 0.0 && rr == 0.0),
                    FR | RR | SR => assert!(rr > 0.0 && l == 0.0),
                    FC | LFE => assert!(l > 0.0 && (l - rr).abs() < 1e-7),
                    _ => unreachable!(),
                }
                // -3 dB relative to the front channel of its side.
                if matches!(*p, RL | SL | FC | LFE) {
                    assert!((l / m[0][0] - M3).abs() < 1e-6);
                }
            }
            // Full scale on every channel does not clip.
            let src = vec![1.0f32; ch as usize * 4];
            let mut bus = vec![0.0f32; 8];
            r.add(&src, &mut bus, 4, &mut Gain::new(1));
            assert!(bus.iter().all(|v| *v <= 1.0 + 1e-6 && *v > 0.99), "{bus:?}");
        }
        // Stereo into 5.1: no invented surround.
        let r = Remap::new(&ChannelMap::standard(2), &ChannelMap::standard(6));
        assert_eq!(r.taps.len(), 2);
        // Channels the device lacks are folded, never dropped.
        for ch in 1..=32 {
            for dch in 1..=8 {
                let r = Remap::new(&ChannelMap::standard(ch), &ChannelMap::standard(dch));
                for s in 0..ch as usize {
                    assert!((0..dch as usize).any(|d| r.coef(d, s) > 0.0), "{ch} -> {dch}: channel {s} dropped");
                }
            }
        }
    }

    #[test]
    fn gain_ramps_linearly_then_holds() {
        let r = Remap::new(&ChannelMap::standard(1), &ChannelMap::standard(1));
        let mut g = Gain::new(4);
        g.set(0.0);
        let mut bus = vec![0.0f32; 6];
        r.add(&[1.0; 6], &mut bus, 6, &mut g);
        assert_eq!(bus, vec![1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
        assert!(!g.is_unity());
    }

    #[test]
    fn buffer_rule() {
        assert_eq!(min_buffer_frames(256, 48000, 48000), 512);
        assert_eq!(min_buffer_frames(256, 48000, 44100), 2 * 236);
        assert_eq!(min_buffer_frames(256, 48000, 8000), 2 * 43);
        assert_eq!(min_buffer_frames(256, 48000, 384_000), 4096);
    }

    /// THD+N in dB of `x` (a sine of frequency `f` in cycles per sample) by a least-squares fit
    /// of the sine (amplitude, phase, offset) at the known frequency, refined over frequency;
    /// the residual is everything else (distortion and noise).
    #[allow(clippy::needless_range_loop)]
    fn thd_n_db(x: &[f64], f: f64) -> f64 {
        let fit = |f: f64| {
            // Normal equations for [sin, cos, 1].
            let mut a = [[0.0f64; 3]; 3];
            let mut b = [0.0f64; 3];
            for (i, v) in x.iter().enumerate() {
                let w = 2.0 * std::f64::consts::PI * f * i as f64;
                let basis = [w.sin(), w.cos(), 1.0];
                for r in 0..3 {
                    for c in 0..3 {
                        a[r][c] += basis[r] * basis[c];
                    }
                    b[r] += basis[r] * v;
                }
            }
            // Gaussian elimination.
            for p in 0..3 {
                for r in p + 1..3 {
                    let k = a[r][p] / a[p][p];
                    for c in p..3 {
                        a[r][c] -= k * a[p][c];
                    }
                    b[r] -= k * b[p];
                }
            }
            let mut s = [0.0f64; 3];
            for r in (0..3).rev() {
                s[r] = (b[r] - (r + 1..3).map(|c| a[r][c] * s[c]).sum::<f64>()) / a[r][r];
            }
            let (mut res, mut sig) = (0.0, 0.0);
            for (i, v) in x.iter().enumerate() {
                let w = 2.0 * std::f64::consts::PI * f * i as f64;
                let fitted = s[0] * w.sin() + s[1] * w.cos();
                sig += fitted * fitted;
                res += (v - fitted - s[2]).powi(2);
            }
            (res, sig)
        };
        // Golden-section refinement of the frequency (the ratio is exact, this only guards
        // against a fit that is off by rounding).
        let (mut lo, mut hi) = (f * (1.0 - 1e-6), f * (1.0 + 1e-6));
        for _ in 0..40 {
            let m1 = lo + (hi - lo) * 0.382;
            let m2 = lo + (hi - lo) * 0.618;
            if fit(m1).0 < fit(m2).0 {
                hi = m2;
            } else {
                lo = m1;
            }
        }
        let (res, sig) = fit(0.5 * (lo + hi));
        10.0 * (res / sig).log10()
    }

    fn resample_sine(q: ResampleQuality, from: u32, to: u32, freq: f64, seconds: f64) -> Vec<f64> {
        let period = 256;
        let mut rs = build_resampler(q, from, to, period, 1).unwrap();
        let amp = 0.5f64; // -6 dBFS
        let n_in = (f64::from(from) * seconds) as usize;
        let input: Vec<f32> = (0..n_in)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(from)).sin()) as f32)
            .collect();
        let mut out = Vec::new();
        let mut buf = vec![0.0f32; period];
        let mut pos = 0;
        while pos + rs.input_frames_next() <= input.len() {
            let k = rs.input_frames_next();
            let i = InterleavedSlice::new(&input[pos..pos + k], 1, k).unwrap();
            let mut o = InterleavedSlice::new_mut(&mut buf[..], 1, period).unwrap();
            let (_, m) = rs.process_into_buffer(&i, &mut o, None).unwrap();
            out.extend(buf[..m].iter().map(|v| f64::from(*v)));
            pos += k;
        }
        // Skip the start (delay and filter settling) and the end.
        let skip = rs.output_delay() + 2048;
        out[skip..out.len() - 1024].to_vec()
    }

    #[test]
    fn resampler_thd_n_at_each_quality() {
        let mut default_db = 0.0;
        for q in [ResampleQuality::Fast, ResampleQuality::Medium, ResampleQuality::High] {
            let y = resample_sine(q, 44_100, 48_000, 997.0, 1.0);
            let db = thd_n_db(&y, 997.0 / 48_000.0);
            // Not asserted: how each setting handles a high tone (images and aliases).
            let y = resample_sine(q, 44_100, 48_000, 18_000.0, 0.5);
            let hi = thd_n_db(&y, 18_000.0 / 48_000.0);
            let y = resample_sine(q, 88_200, 48_000, 20_000.0, 0.5);
            let down = thd_n_db(&y, 20_000.0 / 48_000.0);
            eprintln!(
                "THD+N -6 dBFS, f32, {:>6}: 997 Hz 44100->48000 {db:.1} dB | 18 kHz 44100->48000 {hi:.1} dB | \
                 20 kHz 88200->48000 {down:.1} dB",
                q.name()
            );
            if q == DEFAULT_QUALITY {
                default_db = db;
            }
        }
        assert!(default_db <= -100.0, "default quality reaches only {default_db:.1} dB");
    }
}

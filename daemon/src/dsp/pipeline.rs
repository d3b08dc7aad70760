//! One playback stream's conversion pipeline, built on the control thread when the stream is set
//! up and run by the mix thread without allocating: ring bytes in the stream's format -> f32 (one
//! tight loop per format, `convert::decoder`) -> resample to the device rate with rubato when the
//! rates differ (fixed output = one chunk of device frames, `process_into_buffer` only) -> remap channels
//! by channel map into the device's layout -> the stream's gain with a short linear ramp -> added
//! into the f32 mix bus.
//! Built on the control thread (RT: no); `Pipeline::mix` and friends run on the mix thread
//! (RT: yes — no allocation, no locks, no logging, no syscalls).

use std::fmt;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, Indexing, Resampler};
use shmix_shared::cursor;
use shmix_shared::shm::AudioReader;
use shmix_shared::{ResampleQuality, SampleFormat};

use super::carry::{Carry, InputLog};
use super::convert::{self, DecodeFn};
use super::gain::{Gain, GAIN_RAMP_MS};
use super::meter::{fmax, peak_of};
use super::remap::Remap;
use super::spec::{DeviceSpec, StreamSpec};
use super::stage::{Flow, Stage};

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
    /// Device frames the resampler makes per call (its fixed output chunk).
    chunk: usize,
    /// Most device frames one [`Pipeline::mix`] call handles (the mix core's run).
    run: usize,
    raw: Vec<u8>,
    dec: Vec<f32>,
    rs_out: Vec<f32>,
    rs_pos: usize,
    rs_len: usize,
    /// Device frames emitted since the last restart (moved back by [`Pipeline::unrender`]).
    out_total: u64,
    /// The furthest `out_total` has been: frames in `[out_total, rendered)` were taken back
    /// from the device and are played again from the history before anything new.
    rendered: u64,
    /// History capacity in device frames (0: the device is never rewound).
    hist_frames: usize,
    /// What the stream gave the device, frame by frame at `out_total % hist_frames`: the ring's
    /// bytes without a resampler, the resampler's output (stream channels) with one.
    hist_raw: Vec<u8>,
    hist_out: Vec<f32>,
    /// The device's rate (Hz).
    dev_rate: u32,
    /// Stream frames read before this pipeline's first input (a stream that moved here from
    /// another device): consumed counts passed in include them, the output does not.
    base: u64,
    /// A resampling pipeline's last raw inputs (what a move hands over is found here).
    inputs: InputLog,
    /// Frames handed over by the device the stream moved from, played before the ring.
    carry: Carry,
    gain: Gain,
    /// Peak absolute sample added into the bus since the last `take_peak` (after the gain).
    peak: f32,
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

/// Writes one element of every 4 KiB of `v` (control thread), so its pages exist before the
/// mix thread uses them.
fn touch_pages<T: Copy + Default>(v: &mut [T]) {
    let step = (4096 / std::mem::size_of::<T>().max(1)).max(1);
    for i in (0..v.len()).step_by(step) {
        v[i] = std::hint::black_box(T::default());
    }
}

impl Pipeline {
    /// Builds everything the stream needs to be mixed into `dev`, the resampler making one
    /// device quantum per call. Control thread.
    ///
    /// # Errors
    /// A parameter the daemon cannot serve (reason as text).
    pub fn new(s: &StreamSpec, dev: &DeviceSpec) -> Result<Self, String> {
        Self::with_chunk(s, dev, dev.params.period_frames as usize)
    }

    /// As [`Pipeline::new`], the resampler making `chunk` device frames per call (clamped to
    /// the device quantum and the mix run): a stream with long periods resamples in long chunks.
    ///
    /// # Errors
    /// A parameter the daemon cannot serve (reason as text).
    pub fn with_chunk(s: &StreamSpec, dev: &DeviceSpec, chunk: usize) -> Result<Self, String> {
        let d = dev.params;
        let sc = s.chmap.channels() as usize;
        let dc = d.channels as usize;
        let run = dev.run_frames.max(d.period_frames).max(1) as usize;
        let chunk = chunk.clamp(d.period_frames.max(1) as usize, run);
        let Stage { remap, passthrough, quality, resampler, ratio, delay } = Stage::new(s, dev, Flow::ToDevice, chunk)?;
        let max_in = resampler.as_ref().map_or(run, |r| r.input_frames_max().max(run));
        let frame_bytes = s.format.sample_bytes() as usize * sc;
        let ramp = (u64::from(d.rate) * u64::from(GAIN_RAMP_MS) / 1000) as usize;
        let resampler_none = resampler.is_none();
        let hist = dev.history_frames as usize;
        let mut hist_raw = vec![0u8; if resampler_none { hist * frame_bytes } else { 0 }];
        let mut hist_out = vec![0.0f32; if resampler_none { 0 } else { hist * sc }];
        // Zeroed allocations are not backed by memory until written: write every page here, so
        // the mix thread takes no page fault when it fills the history.
        touch_pages(&mut hist_raw);
        touch_pages(&mut hist_out);
        // A resampling pipeline logs its inputs as far back as its output history reaches,
        // plus what the resampler holds.
        let inputs = if resampler_none {
            InputLog::default()
        } else {
            let back = (hist as f64 / ratio).ceil() as usize + (delay as f64 / ratio).ceil() as usize;
            InputLog::new(back + max_in + 64, frame_bytes)
        };
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
            chunk,
            run,
            raw: vec![0; max_in * frame_bytes],
            dec: vec![0.0; max_in * sc],
            rs_out: vec![0.0; if resampler.is_some() { chunk * sc } else { 0 }],
            resampler,
            rs_pos: 0,
            rs_len: 0,
            out_total: 0,
            rendered: 0,
            hist_frames: hist,
            hist_raw,
            hist_out,
            dev_rate: d.rate,
            base: 0,
            inputs,
            carry: Carry::default(),
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

    /// Largest run it can mix at once (the mix core's run).
    #[must_use]
    pub fn max_frames(&self) -> usize {
        self.run
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
        self.rendered = 0;
        self.base = 0;
        self.inputs.reset();
        self.carry.clear();
    }

    /// The stream moves here from another device, having read `consumed` frames from its ring:
    /// `carry` (raw frames, oldest first) are those of them the other device never played,
    /// played here before the ring. Control thread.
    pub fn set_carry(&mut self, carry: Vec<u8>, consumed: u64) {
        let frames = (carry.len() / self.frame_bytes.max(1)) as u64;
        self.base = consumed.saturating_sub(frames);
        self.carry = Carry::new(carry);
    }

    /// Frames handed over by another device still to be played.
    #[must_use]
    pub fn carry_left(&self) -> usize {
        self.carry.left(self.frame_bytes)
    }

    /// The raw frames the stream read that this device has not played (taken back by a rewind
    /// and not played again, inside the resampler, or handed over and not played yet), oldest
    /// first: what the stream takes along when it moves. Control thread.
    #[must_use]
    pub fn unheard(&self) -> Vec<u8> {
        let fb = self.frame_bytes;
        let mut out = if self.resampler.is_none() {
            let h = self.hist_frames as u64;
            let mut v = Vec::with_capacity(self.replay_pending() as usize * fb);
            for f in self.out_total..self.rendered {
                let i = (f % h.max(1)) as usize;
                v.extend_from_slice(&self.hist_raw[i * fb..(i + 1) * fb]);
            }
            v
        } else {
            let heard_out = (self.out_total as f64 - self.delay as f64).max(0.0);
            let heard_in = (heard_out / self.ratio).floor() as u64;
            self.inputs.last(self.inputs.total().saturating_sub(heard_in))
        };
        out.extend_from_slice(self.carry.rest());
        out
    }

    /// Frames taken back and not yet played again.
    #[must_use]
    pub fn replay_pending(&self) -> u64 {
        self.rendered - self.out_total
    }

    /// How many more of the frames it gave the device could be taken back (history held).
    #[must_use]
    pub fn replayable(&self) -> u64 {
        let held = (self.hist_frames as u64).saturating_sub(self.replay_pending());
        held.min(self.out_total)
    }

    /// The device took back the last `u` frames this stream gave it (a rewind): they are played
    /// again from the history, at the gain of the moment. Returns the frames taken back (at most
    /// [`Pipeline::replayable`]). RT: yes.
    pub fn unrender(&mut self, u: u64) -> u64 {
        let u = u.min(self.replayable());
        self.out_total -= u;
        u
    }

    /// Forgets what was taken back (the stream was dropped). RT: yes.
    pub fn forget_replay(&mut self) {
        self.rendered = self.out_total;
    }

    /// Keeps `k` frames given to the device (fresh, at `rendered`) in the history: `bytes`
    /// (ring bytes) without a resampler, `out` (resampler output) with one.
    fn keep(&mut self, k: usize, bytes: Option<&[u8]>, out: Option<&[f32]>) {
        let h = self.hist_frames;
        if h > 0 {
            let start = (self.rendered % h as u64) as usize;
            let first = k.min(h - start);
            if let Some(b) = bytes {
                let fb = self.frame_bytes;
                self.hist_raw[start * fb..(start + first) * fb].copy_from_slice(&b[..first * fb]);
                self.hist_raw[..(k - first) * fb].copy_from_slice(&b[first * fb..k * fb]);
            }
            if let Some(o) = out {
                let sc = self.sc;
                self.hist_out[start * sc..(start + first) * sc].copy_from_slice(&o[..first * sc]);
                self.hist_out[..(k - first) * sc].copy_from_slice(&o[first * sc..k * sc]);
            }
        }
        self.out_total += k as u64;
        self.rendered = self.out_total;
    }

    /// Adds up to `n` frames taken back earlier into `bus`, from the history; returns them.
    fn replay(&mut self, n: usize, bus: &mut [f32]) -> usize {
        let m = usize::try_from(self.replay_pending()).unwrap_or(usize::MAX).min(n);
        let h = self.hist_frames;
        let (sc, dc) = (self.sc, self.dc);
        let mut done = 0;
        while done < m {
            let start = (self.out_total % h as u64) as usize;
            let k = (m - done).min(h - start);
            if self.resampler.is_none() {
                let fb = self.frame_bytes;
                let bytes = &self.hist_raw[start * fb..(start + k) * fb];
                (self.decode)(bytes, &mut self.dec[..k * sc]);
                self.remap.add(&self.dec, &mut bus[done * dc..], k, &mut self.gain);
                self.peak = fmax(self.peak, peak_of(&self.dec[..k * sc]) * self.gain.level());
            } else {
                let src = &self.hist_out[start * sc..(start + k) * sc];
                self.remap.add(src, &mut bus[done * dc..], k, &mut self.gain);
                self.peak = fmax(self.peak, peak_of(src) * self.gain.level());
            }
            self.out_total += k as u64;
            done += k;
        }
        m
    }

    /// Fast path bookkeeping: `bytes` (whole frames, the ring's format) went to the device by
    /// plain copy; kept in the history.
    pub fn note_copied(&mut self, bytes: &[u8]) {
        let k = bytes.len() / self.frame_bytes.max(1);
        self.keep(k, Some(bytes), None);
    }

    /// Device frame index (since restart) just after the last input frame's output.
    fn tail_end(&self, consumed_total: u64) -> u64 {
        let consumed = consumed_total.saturating_sub(self.base);
        (consumed as f64 * self.ratio).ceil() as u64 + self.delay as u64
    }

    /// Stream frames consumed but not yet heard, given that `device_queued` of the frames
    /// handed to the device are still queued there: the device's share converted to the stream
    /// rate plus the resampler's delay. RT: yes.
    #[must_use]
    pub fn queued_stream_frames(&self, consumed_total: u64, device_queued: u64) -> u64 {
        let consumed_total = consumed_total.saturating_sub(self.base);
        if self.resampler.is_none() {
            return (device_queued + self.replay_pending()).min(consumed_total);
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

    /// Stream frames -> device frames (rounded down; a resampler's pending output counts).
    #[must_use]
    pub fn to_device_frames(&self, stream_frames: u64) -> u64 {
        if self.resampler.is_none() {
            stream_frames
        } else {
            (stream_frames as f64 * self.ratio).floor() as u64 + (self.rs_len - self.rs_pos) as u64
        }
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

    /// Takes `k` input frames, those handed over by another device first, then the ring's at
    /// ring frame `at`, and decodes them into `dec` (a resampling pipeline logs them). Returns
    /// how many came from the ring.
    fn take_input(&mut self, audio: &AudioReader, at: u64, k: usize) -> usize {
        let fb = self.frame_bytes;
        let bytes = &mut self.raw[..k * fb];
        let carried = self.carry.take(bytes);
        let from_ring = k - carried / fb.max(1);
        if from_ring > 0 {
            let buffer = audio.layout().buffer_frames;
            audio.read(cursor::ring_index(at, buffer), &mut bytes[carried..]);
        }
        (self.decode)(bytes, &mut self.dec[..k * self.sc]);
        if self.resampler.is_some() {
            self.inputs.keep(bytes);
        }
        from_ring
    }

    /// Adds up to `n` device frames (n <= the mix run) of this stream into `bus`
    /// (`n` x device channels), taking stream frames from the ring at `read_count`, of which
    /// `fill` are there. `draining`: the end of the stream is in the ring (a short ring is not an
    /// underrun; the resampler's tail is flushed). RT: yes.
    pub fn mix(
        &mut self,
        audio: &AudioReader,
        read_count: u64,
        fill: u32,
        n: usize,
        bus: &mut [f32],
        draining: bool,
    ) -> Taken {
        let n = n.min(self.run);
        // What the device gave back comes first.
        let again = if self.replay_pending() > 0 { self.replay(n, bus) } else { 0 };
        if again == n {
            return Taken { consumed: 0, emitted: n, short: false, tail_done: false };
        }
        let dc = self.dc;
        let t = self.mix_fresh(audio, read_count, fill, n - again, &mut bus[again * dc..], draining);
        Taken { emitted: again + t.emitted, ..t }
    }

    /// [`Pipeline::mix`] of frames not played before.
    fn mix_fresh(
        &mut self,
        audio: &AudioReader,
        read_count: u64,
        fill: u32,
        n: usize,
        bus: &mut [f32],
        draining: bool,
    ) -> Taken {
        let (sc, dc) = (self.sc, self.dc);
        let fill = fill as usize;
        let fb = self.frame_bytes;
        if self.resampler.is_none() {
            let avail = self.carry.left(fb) + fill;
            let k = avail.min(n);
            let mut from_ring = 0;
            if k > 0 {
                from_ring = self.take_input(audio, read_count, k);
                self.remap.add(&self.dec, bus, k, &mut self.gain);
                self.peak = fmax(self.peak, peak_of(&self.dec[..k * sc]) * self.gain.level());
                if self.hist_frames > 0 {
                    let raw = std::mem::take(&mut self.raw);
                    self.keep(k, Some(&raw[..k * self.frame_bytes]), None);
                    self.raw = raw;
                } else {
                    self.out_total += k as u64;
                    self.rendered = self.out_total;
                }
            }
            return Taken { consumed: from_ring as u32, emitted: k, short: k < n, tail_done: k == avail };
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
                let k = (self.carry.left(fb) + fill - consumed).min(need);
                if k < need {
                    if !draining {
                        short = true;
                    } else if k == 0 && self.out_total >= self.tail_end(read_count + consumed as u64) {
                        break;
                    }
                }
                if k > 0 {
                    consumed += self.take_input(audio, read_count + consumed as u64, k);
                }
                let Some(rs) = self.resampler.as_deref_mut() else { break };
                let input = InterleavedSlice::new(&self.dec[..k * sc], sc, k);
                let output = InterleavedSlice::new_mut(&mut self.rs_out[..], sc, self.chunk);
                let (Ok(input), Ok(mut output)) = (input, output) else { break };
                let idx = Indexing { partial_len: (k < need).then_some(k), ..Indexing::default() };
                self.rs_pos = 0;
                self.rs_len = match rs.process_into_buffer(&input, &mut output, Some(&idx)) {
                    Ok((_, out)) => out.min(self.chunk),
                    Err(_) => 0,
                };
                if self.rs_len == 0 {
                    break;
                }
            }
            let mut m = (n - produced).min(self.rs_len - self.rs_pos);
            if draining && consumed == fill && self.carry.left(fb) == 0 {
                let left = self.tail_end(read_count + consumed as u64).saturating_sub(self.out_total);
                m = m.min(usize::try_from(left).unwrap_or(usize::MAX));
                if m == 0 {
                    break;
                }
            }
            let src = &self.rs_out[self.rs_pos * sc..(self.rs_pos + m) * sc];
            self.remap.add(src, &mut bus[produced * dc..], m, &mut self.gain);
            self.peak = fmax(self.peak, peak_of(src) * self.gain.level());
            if self.hist_frames > 0 {
                let out = std::mem::take(&mut self.rs_out);
                self.keep(m, None, Some(&out[self.rs_pos * sc..(self.rs_pos + m) * sc]));
                self.rs_out = out;
            } else {
                self.out_total += m as u64;
                self.rendered = self.out_total;
            }
            self.rs_pos += m;
            produced += m;
        }
        let tail_done = consumed == fill
            && self.carry.left(fb) == 0
            && self.out_total >= self.tail_end(read_count + consumed as u64);
        Taken { consumed: consumed as u32, emitted: produced, short, tail_done }
    }
}

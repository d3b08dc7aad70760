//! A recording stream's conversion (capture and monitor): device bytes -> f32 -> remap from the
//! device's layout to the stream's channel map -> resample device rate -> stream rate (rubato,
//! fixed input = one quantum of device frames, `process_into_buffer` only) -> the stream's format. A stream
//! in the device's format, rate and layout gets the device's bytes unchanged (bit-exact).
//! Built on the control thread; [`RecordPipe::convert`] runs on the mix thread (RT: yes — no
//! allocation, no locks, no syscalls).

use std::fmt;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, Resampler};
use shmix_shared::ResampleQuality;

use super::convert::{self, DecodeFn};
use super::gain::{Gain, GAIN_RAMP_MS};
use super::meter::{fmax, peak_of};
use super::remap::Remap;
use super::spec::{DeviceSpec, StreamSpec};
use super::stage::{Flow, Stage};

/// A recording stream's conversion (capture and monitor): device bytes -> f32 -> remap from the
/// device's layout to the stream's channel map -> resample device rate -> stream rate (rubato,
/// fixed input = one quantum of device frames, `process_into_buffer` only) -> the stream's format. A stream
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
    /// Device frames the resampler takes per call (its fixed input chunk).
    chunk: usize,
    /// Most device frames one [`RecordPipe::convert`] call takes.
    run: usize,
    dec: Vec<f32>,
    /// Remapped input waiting for a whole chunk (resampling only).
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
        let run = dev.run_frames.max(d.period_frames).max(1) as usize;
        let chunk = d.period_frames.max(1) as usize;
        let Stage { remap, passthrough, quality, resampler, ratio, delay } =
            Stage::new(s, dev, Flow::FromDevice, chunk)?;
        // One call may complete a chunk per `chunk` frames of input, plus the one pending.
        let calls = run.div_ceil(chunk) + 1;
        let max_out = resampler.as_ref().map_or(run, |r| (r.output_frames_max() * calls).max(run));
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
            chunk,
            run,
            dec: vec![0.0; run.max(chunk) * dc],
            pend: vec![0.0; run.max(chunk) * sc],
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

    /// Converts one run of device frames (`src`, whole device frames, at most the mix run)
    /// into the stream's format; returns the stream frames ready (possibly none while the
    /// resampler waits for a whole period). RT: yes.
    pub fn convert<'a>(&'a mut self, src: &'a [u8]) -> &'a [u8] {
        let (dc, sc) = (self.dc, self.sc);
        let k = (src.len() / self.dev_frame_bytes).min(self.run);
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
            let m = (k - i).min(self.chunk - self.pend_len);
            let bytes = &src[i * self.dev_frame_bytes..(i + m) * self.dev_frame_bytes];
            (self.decode)(bytes, &mut self.dec[..m * dc]);
            let dst = &mut self.pend[self.pend_len * sc..(self.pend_len + m) * sc];
            dst.fill(0.0);
            self.remap.add(&self.dec, dst, m, &mut self.gain);
            self.peak = fmax(self.peak, peak_of(dst));
            self.pend_len += m;
            i += m;
            if self.pend_len == self.chunk {
                self.pend_len = 0;
                let Some(rs) = self.resampler.as_deref_mut() else { break };
                let room = self.rs_out.len() / sc - out_len;
                let input = InterleavedSlice::new(&self.pend[..self.chunk * sc], sc, self.chunk);
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

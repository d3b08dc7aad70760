//! The resampler factory: rubato at one of three qualities, built on the control thread with
//! its chunk fixed (the device period on the output side for playback, the input side for
//! recording), so the mix thread only calls `process_into_buffer`. RT: no (construction).

use rubato::{Async, FixedAsync, PolynomialDegree, SincInterpolationParameters, SincInterpolationType, WindowFunction};
use shmix_shared::ResampleQuality;

use super::spec::{resolve_quality, DEFAULT_QUALITY};

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

#[cfg(test)]
mod tests {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::Resampler;

    use super::*;

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

//! Hardware constraints. ioplug's constraints are static and in bytes (`snd_pcm_ioplug_set_param_*`
//! has no time or frame-count parameter and no hook at refine time), but the real limits depend on
//! the negotiated rate and frame size: the daemon takes device-period steps, so a stream needs at
//! least two device periods' worth of its own frames, and `max_buffer_ms` is a ceiling in time.
//! So: [`static_limits`] offers a superset (every format, 1..=32 channels, 8..384 kHz, byte ranges
//! that contain every exact range), and at hw_params [`exact_bounds`] gives the real range for the
//! chosen rate and frame size; [`fit`] says what to move the buffer/period to when the program's
//! choice lies outside it (`ioplug.rs` rewrites the hw_params, which alsa-lib 1.2.8 re-reads after
//! the callback: pcm_ioplug.c `snd_pcm_ioplug_hw_params`, pcm_params.c `_snd_pcm_hw_params_internal`).
//! Runs in the host program at open/hw_params. RT: no.

use shmix_shared::layout::{MAX_BUFFER_FRAMES, MAX_POOL_BYTES};
use shmix_shared::limits::min_buffer_frames;
use shmix_shared::msg::{AudioParams, MAX_CHANNELS, MAX_RATE, MIN_RATE};
use shmix_shared::SampleFormat;

/// Smallest period the plugin offers, in frames.
pub const MIN_PERIOD_FRAMES: u32 = 16;
/// Most periods per buffer.
pub const MAX_PERIODS: u32 = 1024;
/// Room kept in the memfd for the header and the message rings.
const HEADER_ROOM: u64 = 65536;
/// Largest frame: 32 channels of FLOAT64.
const MAX_FRAME_BYTES: u64 = 8 * MAX_CHANNELS as u64;

/// The static constraints handed to ioplug at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticLimits {
    /// Every format offered.
    pub formats: Vec<SampleFormat>,
    /// Channels range.
    pub channels: (u32, u32),
    /// Rate range (continuous).
    pub rate: (u32, u32),
    /// Period bytes range.
    pub period_bytes: (u32, u32),
    /// Periods range.
    pub periods: (u32, u32),
    /// Buffer bytes range.
    pub buffer_bytes: (u32, u32),
}

/// The exact range for one negotiated rate and frame size, in frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Smallest buffer: two device periods at the stream's rate (and two minimal periods).
    pub min_buffer: u32,
    /// Largest buffer: `max_buffer_ms` at the stream's rate, within the ring and memfd limits
    /// (never below `min_buffer`).
    pub max_buffer: u32,
    /// Smallest period.
    pub min_period: u32,
}

/// The exact buffer range for a stream of `rate` Hz and `frame_bytes`-byte frames on `device`.
#[must_use]
pub fn exact_bounds(device: &AudioParams, max_buffer_ms: u32, rate: u32, frame_bytes: u32) -> Bounds {
    let fb = u64::from(frame_bytes.max(1));
    // The daemon's rule (it refuses less), and never below two of the smallest periods.
    let min =
        u64::from(min_buffer_frames(device.period_frames, device.rate, rate)).max(2 * u64::from(MIN_PERIOD_FRAMES));
    let pool_frames = (MAX_POOL_BYTES - HEADER_ROOM) / fb;
    let max =
        (u64::from(max_buffer_ms) * u64::from(rate) / 1000).min(u64::from(MAX_BUFFER_FRAMES)).min(pool_frames).max(min);
    let to_u32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Bounds { min_buffer: to_u32(min), max_buffer: to_u32(max), min_period: MIN_PERIOD_FRAMES }
}

/// Byte ranges that contain the exact range of every rate (8000..=384000) and frame size (1 to
/// 256 bytes): the minimum is the smallest exact minimum (8 kHz, 1-byte frames), the maximum the
/// largest exact maximum. The exact range is enforced at hw_params.
#[must_use]
pub fn static_limits(device: &AudioParams, max_buffer_ms: u32) -> StaticLimits {
    let lo = exact_bounds(device, max_buffer_ms, MIN_RATE, 1);
    let hi_frames = u64::from(max_buffer_ms) * u64::from(MAX_RATE) / 1000;
    let hi_bytes = (hi_frames.min(u64::from(MAX_BUFFER_FRAMES)) * MAX_FRAME_BYTES)
        .min(MAX_POOL_BYTES - HEADER_ROOM)
        // A ceiling below the minimum still leaves the minimum (as exact_bounds does).
        .max(
            u64::from(exact_bounds(device, max_buffer_ms, MAX_RATE, MAX_FRAME_BYTES as u32).min_buffer)
                * MAX_FRAME_BYTES,
        )
        .min(u64::from(u32::MAX));
    let hi_bytes = hi_bytes as u32;
    StaticLimits {
        formats: SampleFormat::ALL.to_vec(),
        channels: (1, MAX_CHANNELS),
        rate: (MIN_RATE, MAX_RATE),
        period_bytes: (MIN_PERIOD_FRAMES, hi_bytes / 2),
        periods: (2, MAX_PERIODS),
        buffer_bytes: (lo.min_buffer, hi_bytes),
    }
}

/// Where to move a negotiated `(period, buffer)` (frames) so that it lies within `b`; `None` when
/// it already does. The buffer is clamped into range; the period kept unless it is below the
/// minimum or above half the new buffer, in which case the program's number of periods is kept.
#[must_use]
pub fn fit(b: &Bounds, period: u32, buffer: u32) -> Option<(u32, u32)> {
    let ok = (b.min_buffer..=b.max_buffer).contains(&buffer) && period >= b.min_period && period <= buffer / 2;
    if ok {
        return None;
    }
    let periods = (buffer / period.max(1)).clamp(2, MAX_PERIODS);
    let new_buffer = buffer.clamp(b.min_buffer, b.max_buffer);
    let period = if period > new_buffer / 2 { new_buffer / periods } else { period };
    Some((period.clamp(b.min_period, (new_buffer / 2).max(b.min_period)), new_buffer))
}

/// Checks what alsa-lib negotiated (it only offers what `static_limits` allows, but a broken or
/// hand-made hw_params may still arrive). The message names the bad value and what is allowed.
///
/// # Errors
/// A user-facing message.
pub fn check_params(format_code: i64, rate: u32, channels: u32) -> Result<SampleFormat, String> {
    let format = u32::try_from(format_code).ok().and_then(SampleFormat::from_code).ok_or_else(|| {
        format!(
            "sample format code {format_code} is not supported (supported: {})",
            SampleFormat::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
        )
    })?;
    if !(1..=MAX_CHANNELS).contains(&channels) {
        return Err(format!("{channels} channels is not supported (1 to {MAX_CHANNELS})"));
    }
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(format!("a rate of {rate} Hz is not supported ({MIN_RATE} to {MAX_RATE} Hz)"));
    }
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(format: SampleFormat, rate: u32, channels: u32, period: u32) -> AudioParams {
        AudioParams { format, rate, channels, period_frames: period, buffer_frames: period * 4 }
    }

    #[test]
    fn minimum_is_two_device_periods_at_the_stream_rate() {
        let d = dev(SampleFormat::S32Le, 48000, 2, 256);
        // Same rate: exactly two device periods.
        assert_eq!(exact_bounds(&d, 500, 48000, 4).min_buffer, 512);
        // 44.1 kHz: ceil(256 * 44100 / 48000) = ceil(235.2) = 236 per device period.
        assert_eq!(exact_bounds(&d, 500, 44100, 2).min_buffer, 472);
        // 8 kHz: ceil(42.67) = 43; 192 kHz: 1024.
        assert_eq!(exact_bounds(&d, 500, 8000, 1).min_buffer, 86);
        assert_eq!(exact_bounds(&d, 500, 192_000, 8).min_buffer, 2048);
        // Never below two minimal periods.
        assert_eq!(exact_bounds(&dev(SampleFormat::S16Le, 48000, 2, 8), 500, 8000, 2).min_buffer, 32);
    }

    #[test]
    fn ceiling_applies_in_time_at_every_rate() {
        let d = dev(SampleFormat::S16Le, 48000, 2, 256);
        assert_eq!(exact_bounds(&d, 500, 48000, 4).max_buffer, 24000);
        assert_eq!(exact_bounds(&d, 500, 8000, 1).max_buffer, 4000);
        assert_eq!(exact_bounds(&d, 500, 384_000, 4).max_buffer, 192_000);
        assert_eq!(exact_bounds(&d, 200, 44100, 2).max_buffer, 8820);
        // A ceiling below the minimum still leaves the minimum.
        let b = exact_bounds(&dev(SampleFormat::F32Le, 48000, 8, 1024), 1, 96000, 32);
        assert_eq!((b.min_buffer, b.max_buffer), (4096, 4096));
        // The memfd limit caps huge frames: 32 ch FLOAT64 at 384 kHz for 60 s.
        let b = exact_bounds(&d, 60_000, 384_000, 256);
        assert!(u64::from(b.max_buffer) * 256 <= MAX_POOL_BYTES - HEADER_ROOM);
        assert!(b.max_buffer <= MAX_BUFFER_FRAMES);
    }

    #[test]
    fn static_limits_contain_every_exact_range() {
        for (d, ms) in [
            (dev(SampleFormat::S16Le, 48000, 2, 256), 500),
            (dev(SampleFormat::F32Le, 44100, 6, 1024), 2000),
            (dev(SampleFormat::S32Le, 8000, 1, 4096), 1),
            (dev(SampleFormat::S16Le, 384_000, 2, 16), 60_000),
        ] {
            let s = static_limits(&d, ms);
            assert_eq!(s.formats.len(), 14);
            assert_eq!((s.channels, s.rate, s.periods), ((1, 32), (8000, 384_000), (2, MAX_PERIODS)));
            for rate in [8000, 11025, 22050, 44100, 48000, 96000, 192_000, 384_000] {
                for fb in [1u32, 2, 3, 4, 8, 24, 32, 48, 128, 256] {
                    let b = exact_bounds(&d, ms, rate, fb);
                    let (lo, hi) = (u64::from(b.min_buffer) * u64::from(fb), u64::from(b.max_buffer) * u64::from(fb));
                    assert!(u64::from(s.buffer_bytes.0) <= lo, "{d:?} {ms} {rate} {fb}: min");
                    assert!(u64::from(s.buffer_bytes.1) >= hi, "{d:?} {ms} {rate} {fb}: max {hi} > {:?}", s);
                    assert!(u64::from(s.period_bytes.1) >= hi / 2);
                    assert!(u64::from(s.period_bytes.0) <= u64::from(b.min_period) * u64::from(fb));
                }
            }
        }
    }

    #[test]
    fn fit_clamps_only_what_is_out_of_range() {
        let b = Bounds { min_buffer: 512, max_buffer: 24000, min_period: 16 };
        assert_eq!(fit(&b, 1024, 4096), None);
        assert_eq!(fit(&b, 12000, 24000), None);
        // speaker-test asks for the largest buffer: cut to the ceiling, a small period kept...
        assert_eq!(fit(&b, 1024, 1_000_000), Some((1024, 24000)));
        // ... a period above half of it shrinks with it, keeping the number of periods.
        assert_eq!(fit(&b, 250_000, 1_000_000), Some((6000, 24000)));
        assert_eq!(fit(&b, 500_000, 1_000_000), Some((12000, 24000)));
        // Too small a buffer grows to the minimum.
        assert_eq!(fit(&b, 64, 128), Some((64, 512)));
        assert_eq!(fit(&b, 4, 1024), Some((16, 1024)));
    }

    #[test]
    fn bad_params_get_clear_messages() {
        assert_eq!(check_params(2, 48000, 2), Ok(SampleFormat::S16Le));
        let e = check_params(4, 48000, 2).unwrap_err(); // S24? no: code 4 is U16_LE
        assert!(e.contains("code 4") && e.contains("S16_LE"), "{e}");
        assert!(check_params(-1, 48000, 2).unwrap_err().contains("-1"));
        assert!(check_params(2, 48000, 0).unwrap_err().contains("0 channels"));
        assert!(check_params(2, 48000, 33).unwrap_err().contains("33 channels"));
        assert!(check_params(2, 0, 2).unwrap_err().contains("rate of 0 Hz"));
        for f in SampleFormat::ALL {
            assert_eq!(check_params(i64::from(f.code()), 8000, 32), Ok(f));
        }
    }
}

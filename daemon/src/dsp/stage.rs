//! What a playback [`super::pipeline::Pipeline`] and a [`super::record::RecordPipe`] build alike:
//! the channel remap, the resolved quality and the resampler (none when the rates match) with
//! its ratio and delay. Control thread. RT: no.

use rubato::{Async, FixedAsync, Resampler};
use shmix_shared::ResampleQuality;

use super::remap::Remap;
use super::resample::build_resampler_fixed;
use super::spec::{resolve_quality, DeviceSpec, StreamSpec};

/// Which way a stage converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// A playback stream into the device (the device period fixes the resampler's output).
    ToDevice,
    /// The device (capture side, or the playback mix for a monitor) into a recording stream (the
    /// device period fixes the resampler's input).
    FromDevice,
}

/// What [`Pipeline`] and [`RecordPipe`] build alike: the channel remap, the resolved quality
/// and the resampler (none when the rates match) with its ratio (output rate over input rate)
/// and delay. Control thread.
pub(super) struct Stage {
    pub(super) remap: Remap,
    pub(super) passthrough: bool,
    pub(super) quality: ResampleQuality,
    pub(super) resampler: Option<Box<Async<f32>>>,
    pub(super) ratio: f64,
    pub(super) delay: usize,
}

impl Stage {
    pub(super) fn new(s: &StreamSpec, dev: &DeviceSpec, flow: Flow, chunk: usize) -> Result<Self, String> {
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
            let r = build_resampler_fixed(quality, from, to, chunk, channels, fixed)?;
            let delay = r.output_delay();
            (Some(Box::new(r)), f64::from(to) / f64::from(from), delay)
        };
        let passthrough = s.format == d.format && s.rate == d.rate && remap.is_identity();
        Ok(Self { remap, passthrough, quality, resampler, ratio, delay })
    }
}

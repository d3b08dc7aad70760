//! Signal processing, no ALSA and no threads of its own: sample format conversion (`convert`),
//! what streams and the device are (`spec`), resampling (`resample`), channel remapping
//! (`remap`), gain ramps (`gain`), peak metering (`meter`), and the per-stream pipelines built
//! from them: playback into the mix bus (`pipeline`), the device into a recorder (`record`).
//! Built on the control thread; the pipelines run on the mix thread (RT: yes there).

pub mod carry;
pub mod convert;
pub mod gain;
pub mod meter;
pub mod pipeline;
pub mod record;
pub mod remap;
pub mod resample;
pub mod spec;
mod stage;

pub use gain::{Gain, GAIN_RAMP_MS};
pub use meter::{channel_peaks, peak_of};
pub use pipeline::{Pipeline, Taken};
pub use record::RecordPipe;
pub use remap::Remap;
pub use resample::{build_resampler, build_resampler_fixed};
pub use spec::{resolve_quality, DeviceSpec, StreamSpec, DEFAULT_QUALITY};

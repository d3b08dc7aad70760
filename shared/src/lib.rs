//! shmix-shared: the one contract between the ALSA plugin and the daemon. The wire messages, the
//! shared-memory stream layout, the SPSC message rings, the audio ring cursor arithmetic, the
//! sleeping-flag wake protocol and the sample formats. No ALSA, no threads.

pub mod sync;
pub mod wake;

#[cfg(not(loom))]
pub mod chmap;
#[cfg(not(loom))]
pub mod clock;
#[cfg(not(loom))]
mod codec;
#[cfg(not(loom))]
pub mod connect;
#[cfg(not(loom))]
pub mod control;
#[cfg(not(loom))]
pub mod cursor;
#[cfg(not(loom))]
pub mod error;
#[cfg(not(loom))]
pub mod eventfd;
#[cfg(not(loom))]
pub mod format;
#[cfg(not(loom))]
pub mod layout;
#[cfg(not(loom))]
pub mod limits;
#[cfg(not(loom))]
pub mod msg;
#[cfg(not(loom))]
pub mod quality;
#[cfg(not(loom))]
pub mod shm;
#[cfg(not(loom))]
pub mod socket;
#[cfg(not(loom))]
pub mod text;
#[cfg(not(loom))]
pub mod wakefd;

#[cfg(not(loom))]
pub use chmap::ChannelMap;
#[cfg(not(loom))]
pub use error::{DecodeError, Violation};
#[cfg(not(loom))]
pub use format::SampleFormat;
#[cfg(not(loom))]
pub use msg::{AudioParams, Direction, Record, SocketMsg, PROTOCOL_VERSION};
#[cfg(not(loom))]
pub use quality::ResampleQuality;
#[cfg(not(loom))]
pub use wakefd::WakeFd;

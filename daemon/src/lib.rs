//! shmixd, the shmix sound server, as a library: the binary (`main.rs`) wires these modules
//! together; tests drive the mixing core (`mix`) without ALSA.
//!
//! By role: `control` (the main thread: listener, sessions, access, limits, registry), `mix`
//! (the real-time thread: its cycle, the mixing core, streams), `dsp` (conversion, resampling,
//! remapping, gain, metering: no ALSA, no threads), `io` (the ALSA device and the device manager),
//! `audit` (the real-time allocation audit).

pub mod audit;
pub mod control;
pub mod dsp;
pub mod io;
pub mod mix;

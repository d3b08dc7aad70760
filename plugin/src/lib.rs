//! libasound_module_pcm_shmix.so: the ALSA ioplug PCM `type shmix` (playback). Programs write into
//! a shared-memory ring that shmixd mixes from; see DESIGN.md §3 and shared/PROTOCOL.md.
//! Also the control plugin `ctl.shmix` (`ctl.rs`, its FFI in `ctl_ffi.rs`).
//! `ioplug.rs` and `ctl_ffi.rs` hold every `extern "C"`; `pcm.rs` the stream logic; `conn.rs` the socket;
//! `config.rs` the PCM block; `limits.rs` the hw constraints; `chmap.rs` the channel-map API data. Runs inside someone else's program, in whatever thread calls
//! alsa-lib; no threads of its own. RT: transfer/pointer yes.

mod chmap;
mod config;
mod conn;
mod ctl;
mod ctl_ffi;
mod fork;
mod ioplug;
mod limits;
mod pcm;
mod sys;

/// A positive errno; callbacks return it negated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

/// A user-facing error line on stderr (open/hw_params/prepare/drain only, never transfer/pointer).
pub(crate) fn user_error(msg: &str) {
    // Messages may carry text the daemon sent (a refusal's reason): no control characters reach
    // the user's terminal.
    let clean: String = msg.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    eprintln!("shmix: {clean}");
}

pub use ctl_ffi::{__snd_ctl_shmix_open_dlsym_control_001, _snd_ctl_shmix_open};
pub use ioplug::{__snd_pcm_shmix_open_dlsym_pcm_001, _snd_pcm_shmix_open};

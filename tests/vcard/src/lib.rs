//! `shmix_vcard`: a virtual ALSA sound card for tests, built as the ioplug PCM plugin
//! `libasound_module_pcm_shmix_vcard.so` (`pcm.NAME { type shmix_vcard ... }`).
//!
//! Unlike alsa-lib's `null` and `file` PCMs, it keeps real time like hardware: the hardware pointer
//! follows CLOCK_MONOTONIC from the moment of start, the poll fd is a timerfd armed for the moment
//! `avail` reaches `avail_min`, and the stream goes to XRUN when the application falls behind.
//! Playback appends every frame the card plays to `playback_file`; capture reads `capture_file`.
//! Faults can be injected (`xrun_at_ms`, `disconnect_at_ms`, `suspend_at_ms` + `suspend_ms`) and the
//! clock skewed (`skew_ppm`).
//! No threads: everything happens in the application's calls.
//!
//! Modules: `sys` (bindgen), `ioplug` (all `extern "C"`), `card` (the model), `config`, `timer`.

mod card;
mod config;
mod ioplug;
mod sys;
mod timer;

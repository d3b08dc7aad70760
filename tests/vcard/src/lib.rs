//! `shmix_vcard`: a virtual ALSA sound card for tests, built as the ioplug PCM plugin
//! `libasound_module_pcm_shmix_vcard.so` (`pcm.NAME { type shmix_vcard ... }`).
//!
//! Unlike alsa-lib's `null` and `file` PCMs, it keeps real time like hardware: the hardware pointer
//! follows CLOCK_MONOTONIC from the moment of start, the poll fd is a timerfd armed for the moment
//! `avail` reaches `avail_min`, and the stream goes to XRUN when the application falls behind.
//! Playback appends every frame the card plays to `playback_file`; capture reads `capture_file`.
//! Faults can be injected (`xrun_at_ms`, `disconnect_at_ms`, `suspend_at_ms` + `suspend_ms`) and the
//! clock skewed (`skew_ppm`).
//!
//! What real hardware does to a timer-scheduled writer that rewinds (all off by default, except
//! that rewinds are not allowed unless the config says so):
//! - `fifo N` (frames, `0..=buffer_max`, default 0): the card has fetched N frames ahead of its
//!   play position, like a DMA FIFO, and plays that copy. A fetched frame rewritten before it
//!   plays, and an application pointer moved back below play position + N, are FIFO violations.
//! - `batch true|false` (default false): the pointer alsa-lib sees moves in whole periods; the
//!   card plays, and detects xruns, on the real clock.
//! - `rewind true|false` (default false): without `rewind true`, every backward move of the
//!   application pointer (`snd_pcm_rewind`, which ioplug does not tell the plugin about: the card
//!   sees appl_ptr go back between its callbacks, including the `transfer` call of each mmap
//!   commit) is a rewind violation.
//! - `stats_file "PATH"`: `key value` lines `fifo_violations`, `fifo_violation_frames`,
//!   `rewinds`, `rewind_violations`, `frames_played`, rewritten at close and soon after each
//!   violation; counts add up over every card that uses the path (starting from the file's).
//!
//! Violations print `shmix_vcard: FIFO violation: ...` / `shmix_vcard: rewind violation: ...` on
//! stderr (at most one line a second) and a total at close.
//! No threads: everything happens in the application's calls.
//!
//! Modules: `sys` (bindgen), `ioplug` (all `extern "C"`), `card` (the model), `config`, `timer`.

mod card;
mod config;
mod ioplug;
mod sys;
mod timer;

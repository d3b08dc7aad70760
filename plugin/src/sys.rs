//! bindgen output for `<alsa/asoundlib.h>` + `<alsa/pcm_external.h>` (see `build.rs`: allowlist
//! `snd_pcm_.*`, `snd_config_.*`, `SND_PCM_.*`; `pollfd` is `libc::pollfd`). Nothing else lives here.
//! Runs in: the host program. RT: n/a.

#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unused_imports,
    unsafe_op_in_unsafe_fn,
    missing_debug_implementations,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

include!(concat!(env!("OUT_DIR"), "/alsa_sys.rs"));

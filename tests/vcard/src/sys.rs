//! bindgen output for alsa-lib's `<alsa/asoundlib.h>` + `<alsa/pcm_external.h>` (ioplug SDK), generated
//! by `build.rs` (allowlist `snd_pcm_.*`, `snd_config_.*`, `SND_.*`; `pollfd` is `libc::pollfd`).
//! Nothing but the generated code lives here. Runs in: the host process of the plugin. RT: n/a.

#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unsafe_op_in_unsafe_fn,
    unused_imports,
    missing_debug_implementations,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

include!(concat!(env!("OUT_DIR"), "/alsa_bindings.rs"));

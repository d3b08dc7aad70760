//! Generates `sys.rs`'s alsa-lib bindings (asoundlib + the external PCM SDK) with bindgen.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-lib=asound");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindgen::Builder::default()
        .header_contents(
            "shmix_alsa.h",
            "#include <alsa/asoundlib.h>\n#include <alsa/pcm_external.h>\n#include <alsa/control_external.h>\n",
        )
        .allowlist_function("snd_pcm_.*")
        .allowlist_function("snd_config_.*")
        .allowlist_function("snd_lib_error")
        .allowlist_function("snd_ctl_ext_.*")
        .allowlist_function("snd_ctl_elem_id_.*")
        .allowlist_type("snd_ctl_ext.*")
        .allowlist_type("snd_ctl_elem_type_t")
        .allowlist_var("SND_CTL_.*")
        .allowlist_type("snd_pcm_.*")
        .allowlist_type("snd_config_.*")
        .allowlist_var("SND_PCM_.*")
        // alsa-lib's `struct pollfd` is the libc one; blocklisting it lets callbacks take `libc::pollfd`.
        .blocklist_type("pollfd")
        .raw_line("use libc::pollfd;")
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen over <alsa/pcm_external.h> failed (needs libasound2-dev and libclang-dev)")
        .write_to_file(out.join("alsa_sys.rs"))
        .expect("write alsa_sys.rs");
}

//! Generates the alsa-lib FFI bindings (`sys.rs`) for the ioplug SDK with bindgen.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-lib=asound");

    let bindings = bindgen::Builder::default()
        .header_contents("vcard_wrapper.h", "#include <alsa/asoundlib.h>\n#include <alsa/pcm_external.h>\n")
        .allowlist_function("snd_pcm_.*")
        .allowlist_function("snd_config_.*")
        .allowlist_type("snd_pcm_.*")
        .allowlist_type("snd_config_.*")
        .allowlist_var("SND_.*")
        // alsa-lib's `struct pollfd` is libc's: use that type so callbacks type-check against it.
        .blocklist_type("pollfd")
        .raw_line("use libc::pollfd;")
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen failed on <alsa/pcm_external.h> (install libasound2-dev and libclang-dev)");

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    bindings.write_to_file(out.join("alsa_bindings.rs")).expect("cannot write alsa_bindings.rs");
}

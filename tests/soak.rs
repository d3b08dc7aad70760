//! The soak, as CI runs it: `scripts/soak.sh 30` (32 clients opening, playing, pausing, stalling,
//! draining, dropping and closing at random for 30 s next to one reference stream, on a private
//! daemon, ALSA config and temp dir). It passes when the reference is bit-exact on the card, no
//! client saw an unexpected error, the daemon's open fds are back to their count before the soak
//! and its RSS is back within the script's slack, and the daemon exits 0. Longer runs: call the
//! script by hand (README, "Reliability and security").

use std::path::Path;
use std::time::Duration;

use crate::common::*;

#[test]
fn soak_30s_reference_bit_exact_and_no_leaks() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/soak.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script).arg("30").env("SHMIX_ARTIFACTS", artifacts_dir());
    let r = run(cmd, Duration::from_secs(180));
    eprintln!("{}{}", r.stdout, r.stderr);
    r.assert_ok("scripts/soak.sh 30");
    assert!(r.stdout.contains("soak: PASS"), "no PASS line:\n{}", r.stdout);
    assert!(r.stdout.contains("soak check ok reference"), "{}", r.stdout);
}

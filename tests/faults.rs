//! Device faults under a playing client, injected by the virtual card: a suspend (the card sleeps
//! and is resumed by the daemon, invisibly to clients) and an unplug (the daemon fails and says
//! so; clients get an error at once).
//!
//! The card's fault times count from its first start, which the daemon makes right after it
//! creates its socket, so from just after `Rig::new` returns; `aplay` starts right after that.

use std::time::{Duration, Instant};

use crate::common::*;

const RATE: u32 = 48000;

/// `secs` of stereo noise, written to `name` in the rig's dir.
fn noise_wav(rig: &Rig, name: &str, secs: f64, seed: u32) -> (std::path::PathBuf, Vec<i16>) {
    let n = (secs * f64::from(RATE)) as usize;
    let sound = interleave(&[noise(seed, n, 30000), noise(seed + 1, n, 30000)]);
    let wav = rig.path(name);
    write_wav(&wav, 2, RATE, &sound);
    (wav, sound)
}

/// The value of `key N` in the daemon's final stats line (the one after the signal).
fn final_stat(log: &str, key: &str) -> u64 {
    let after_signal = log.split("received: shutting down").nth(1).unwrap_or_else(|| panic!("no shutdown in:\n{log}"));
    let line =
        after_signal.lines().find(|l| l.contains(" | cycles ")).unwrap_or_else(|| panic!("no stats line:\n{log}"));
    let pat = format!(" {key} ");
    let at = line.find(&pat).unwrap_or_else(|| panic!("no '{key}' in: {line}")) + pat.len();
    line[at..].split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad '{key}': {line}"))
}

/// Waits until `pid` (our child) has exited on its own: it is a zombie, not yet reaped.
fn exited_by_itself(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "pid (comm) S ...": the state follows the last ')'.
        if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The card sleeps from 1.0 s to 1.2 s after its start, in the middle of 3 s of noise.
///
/// What a resumed card plays: it stops where its clock was when it fell asleep and keeps its
/// buffer, so the frames the daemon had queued in it play right after the wake (delayed by
/// 200 ms, not lost); the daemon resumes rather than re-preparing, so it drops nothing either, and
/// the client's frames wait in its stream ring meanwhile. The card records nothing while asleep.
/// So the recording is exactly the sound, bit-exact and contiguous (no frame lost, reordered or
/// duplicated, no silence inserted), with only silence around it; the sleep shows as 200 ms more
/// wall time for aplay, and as `suspends 1` in the daemon's stats.
#[test]
fn suspend_is_resumed_by_the_daemon_and_invisible_to_clients() {
    let card = Card { extra: vec!["suspend_at_ms 1000".into(), "suspend_ms 200".into()], ..Default::default() };
    let mut rig = Rig::new(card, &[]);
    let secs = 3.0;
    let (wav, sound) = noise_wav(&rig, "noise.wav", secs, 31);
    let mut cmd = rig.cmd("aplay");
    cmd.args(["-D", "shmix"]).arg(&wav);
    let r = run(cmd, Duration::from_secs(30));
    r.assert_ok("aplay");
    // Not -q: aplay would report a suspend or an underrun it saw.
    for word in ["Suspended", "underrun", "xrun"] {
        assert!(!r.stderr.contains(word), "aplay saw '{word}': {}", r.stderr);
    }
    let wall = r.wall.as_secs_f64();
    assert!(
        wall >= secs + 0.2 - 0.05 && wall <= secs * 1.1 + 0.2 + 0.5,
        "aplay took {wall:.3} s for {secs} s of audio and a 200 ms sleep of the card"
    );

    let status = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert!(status.success(), "shmixd exited with {status}:\n{log}");
    assert_eq!(final_stat(&log, "suspends"), 1, "{log}");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "played through a suspend");
}

/// The card vanishes 1 s after its start: the daemon's device fails (ENODEV), every client
/// gets Fatal, aplay fails with "No such device" within 1.5 s, and the daemon logs the failure
/// and exits with status 1 by itself (for now; it is to wait for the card to come back).
#[test]
fn unplug_fails_clients_fast_and_the_daemon_exits_nonzero() {
    // The card starts after this instant, so it vanishes at `before + 1 s` or later.
    let before = Instant::now();
    let mut rig = Rig::new(Card { extra: vec!["disconnect_at_ms 1000".into()], ..Default::default() }, &[]);
    let (wav, sound) = noise_wav(&rig, "noise.wav", 3.0, 41);
    let mut cmd = rig.cmd("aplay");
    cmd.args(["-D", "shmix"]).arg(&wav);
    let r = run(cmd, Duration::from_secs(30));
    let failed_after = before.elapsed();
    assert!(!r.status.success(), "aplay survived the unplug:\nstdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("No such device"), "aplay's error: {}", r.stderr);
    // Not before the unplug, and within 1.5 s of it (the unplug is at `before + 1 s` or later,
    // so `before + 2.5 s` is a bound at least as strict).
    assert!(
        failed_after >= Duration::from_millis(1000) && failed_after <= Duration::from_millis(2500),
        "aplay failed {failed_after:?} after the daemon was started (card gone at 1 s)"
    );

    let pid = rig.daemon_pid();
    assert!(
        exited_by_itself(pid, Duration::from_secs(5)),
        "shmixd still runs after its card vanished:\n{}",
        rig.daemon_log()
    );
    // The daemon is a zombie: the signal finds it dead and the status is its own.
    let status = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert_eq!(status.code(), Some(1), "shmixd exited with {status}:\n{log}");
    assert!(log.contains("ERROR: device failed:") && log.contains("No such device"), "{log}");
    // What was played before the unplug is a prefix of the sound.
    let rec = rig.recording_s16();
    let start = rec.iter().position(|&s| s != 0).unwrap_or(rec.len());
    let played = &rec[start..];
    let played = &played[..played.len() - played.iter().rev().take_while(|&&s| s == 0).count()];
    assert!(!played.is_empty() && sound.starts_with(played), "the card played something else than the sound's start");
}

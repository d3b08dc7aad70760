//! Playback through shmix into the virtual card, compared bit for bit with what was sent.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

const RATE: u32 = 48000;

fn aplay(rig: &Rig, extra: &[&str], wav: &std::path::Path) -> std::process::Command {
    let mut c = rig.cmd("aplay");
    c.args(["-q", "-D", "shmix"]).args(extra).arg(wav);
    c
}

fn plays_bit_exact(extra: &[&str]) {
    let rig = Rig::new(Card::default(), &[]);
    let secs = 3.0;
    let n = (secs * f64::from(RATE)) as usize;
    let sound = interleave(&[noise(1, n, 30000), noise(2, n, 30000)]);
    let wav = rig.path("noise.wav");
    write_wav(&wav, 2, RATE, &sound);
    let r = run(aplay(&rig, extra, &wav), Duration::from_secs(30));
    r.assert_ok("aplay");
    // The card keeps real time: playing 3 s cannot take less than that. The upper bound only
    // catches a stream that did not keep up: aplay's start-up (process, ALSA configuration,
    // daemon connection) is not real-time work and takes whatever a loaded machine gives it.
    let wall = r.wall.as_secs_f64();
    assert!(wall >= secs * 0.9 && wall <= secs + 3.0, "aplay took {wall:.3} s for {secs} s of audio");
    let rec = rig.recording_s16();
    assert_contiguous(&rec, &sound, 2, "aplay");
}

#[test]
fn aplay_rw_is_bit_exact() {
    plays_bit_exact(&[]);
}

#[test]
fn aplay_mmap_is_bit_exact() {
    plays_bit_exact(&["--mmap"]);
}

#[test]
fn aplay_small_periods_is_bit_exact() {
    // Period 256 (5.3 ms) as in the test's name; the buffer (16 periods, 85 ms) leaves aplay, not
    // a real-time program, room for scheduling delays: with 4 periods (21 ms) it underran now
    // and then on the loaded 2-core CI machine.
    plays_bit_exact(&["--period-size=256", "--buffer-size=4096"]);
}

/// `--idle-stop`: with no stream left the daemon stops the device and sleeps (its mix cycles
/// stand still), and the next client starts it again: both sounds reach the card bit-exact, in
/// order, with only silence around them.
#[test]
fn idle_stop_sleeps_and_the_next_client_starts_the_device() {
    let rig = Rig::new(Card::default(), &["--idle-stop", "0.5"]);
    let n = RATE as usize / 2;
    let (a, b) = (
        interleave(&[noise(71, n, 30000), noise(72, n, 30000)]),
        interleave(&[noise(73, n, 30000), noise(74, n, 30000)]),
    );
    let (wa, wb) = (rig.path("a.wav"), rig.path("b.wav"));
    write_wav(&wa, 2, RATE, &a);
    write_wav(&wb, 2, RATE, &b);
    run(aplay(&rig, &[], &wa), Duration::from_secs(30)).assert_ok("aplay (first)");
    wait_for_text(&rig.log, "idle stops 1", Duration::from_secs(10));
    // Two stats lines apart while stopped: the mix thread did not wake (a running device
    // wakes it 187.5 times a second at 256-frame periods).
    let c0 = rig.daemon_cycles();
    std::thread::sleep(Duration::from_millis(2200));
    let c1 = rig.daemon_cycles();
    eprintln!("idle: mix cycles {c0} -> {c1} in 2.2 s");
    assert!(c1 - c0 <= 2, "the idle daemon kept waking: {} cycles in 2.2 s", c1 - c0);
    run(aplay(&rig, &[], &wb), Duration::from_secs(30)).assert_ok("aplay (second)");
    let both: Vec<i16> = a.iter().chain(&b).copied().collect();
    let p = pieces_of(&rig.recording_s16(), &both, 2, "idle stop");
    let got: Vec<(usize, usize)> = p.iter().map(|x| (x.sound_at, x.len)).collect();
    assert_eq!(got, vec![(0, n), (n, n)], "both sounds whole and in order: {p:?}");
}

#[test]
fn two_clients_one_per_channel_are_each_bit_exact() {
    let rig = Rig::new(Card::default(), &[]);
    let n = 2 * RATE as usize;
    let left = noise(11, n, 20000);
    let right = noise(12, n, 20000);
    let silent = vec![0i16; n];
    let (wl, wr) = (rig.path("left.wav"), rig.path("right.wav"));
    write_wav(&wl, 2, RATE, &interleave(&[left.clone(), silent.clone()]));
    write_wav(&wr, 2, RATE, &interleave(&[silent, right.clone()]));
    let start = Instant::now();
    let mut a = aplay(&rig, &[], &wl).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut b = aplay(&rig, &["--mmap"], &wr).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    finish(&mut a, start, Duration::from_secs(30)).assert_ok("aplay left");
    finish(&mut b, start, Duration::from_secs(30)).assert_ok("aplay right");
    let rec = rig.recording_s16();
    assert_contiguous(&channel(&rec, 2, 0), &left, 1, "left client");
    assert_contiguous(&channel(&rec, 2, 1), &right, 1, "right client");
}

/// A square wave of +-amp, flipping every `half` frames, on the left channel only.
fn square(n: usize, amp: i16, half: usize) -> Vec<i16> {
    let left: Vec<i16> = (0..n).map(|i| if (i / half).is_multiple_of(2) { amp } else { -amp }).collect();
    interleave(&[left, vec![0; n]])
}

#[test]
fn three_clients_on_one_channel_sum_with_saturation() {
    let rig = Rig::new(Card::default(), &[]);
    let n = 2 * RATE as usize;
    let amps = [10000i16, 20000, 15000];
    let start = Instant::now();
    let mut kids = Vec::new();
    for (i, amp) in amps.iter().enumerate() {
        let w = rig.path(&format!("sq{i}.wav"));
        write_wav(&w, 2, RATE, &square(n, *amp, 97 + 31 * i));
        kids.push(aplay(&rig, &[], &w).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    }
    for k in &mut kids {
        finish(k, start, Duration::from_secs(30)).assert_ok("aplay");
    }
    let rec = rig.recording_s16();
    // Every recorded sample is a saturated sum of each client's 0 or +-amp.
    let mut allowed = std::collections::BTreeSet::new();
    for a in [-1i32, 0, 1] {
        for b in [-1i32, 0, 1] {
            for c in [-1i32, 0, 1] {
                let s = a * i32::from(amps[0]) + b * i32::from(amps[1]) + c * i32::from(amps[2]);
                allowed.insert(s.clamp(-32768, 32767) as i16);
            }
        }
    }
    let left = channel(&rec, 2, 0);
    for (i, s) in left.iter().enumerate() {
        assert!(allowed.contains(s), "frame {i}: {s} is not a saturated sum of the clients' samples");
    }
    assert!(channel(&rec, 2, 1).iter().all(|s| *s == 0), "right channel must stay silent");
    // The three overlap for most of their 2 s, so both rails are hit many times.
    let hi = left.iter().filter(|s| **s == 32767).count();
    let lo = left.iter().filter(|s| **s == -32768).count();
    assert!(hi > 1000 && lo > 1000, "saturation seen {hi} times high, {lo} low");
}

#[test]
fn starving_client_gets_an_xrun_and_the_other_stays_bit_exact() {
    let rig = Rig::new(Card::default(), &[]);
    let n = 4 * RATE as usize;
    let left = noise(21, n, 20000);
    let silent = vec![0i16; n];
    let (wl, wr) = (rig.path("left.wav"), rig.path("right.wav"));
    write_wav(&wl, 2, RATE, &interleave(&[left.clone(), silent.clone()]));
    write_wav(&wr, 2, RATE, &interleave(&[silent, noise(22, n, 20000)]));
    let start = Instant::now();
    let mut good = aplay(&rig, &[], &wl).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut starving = rig
        .cmd("aplay")
        .args(["-D", "shmix", "--buffer-time=100000"])
        .arg(&wr)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once its sound is on the card it runs (a fixed sleep assumed aplay starts within 1 s).
    rig.wait_for_sound(2, 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    // Stop feeding for 0.7 s: the daemon plays silence for it and reports an xrun.
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(starving.id() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: as above.
    unsafe { libc::kill(starving.id() as i32, libc::SIGCONT) };
    finish(&mut good, start, Duration::from_secs(30)).assert_ok("steady aplay");
    let r = finish(&mut starving, start, Duration::from_secs(30));
    r.assert_ok("starving aplay");
    let line = r.stderr.lines().find(|l| l.contains("underrun")).unwrap_or_else(|| {
        panic!("the starving aplay reported no underrun:\n{}", r.stderr);
    });
    // "underrun!!! (at least 512.345 ms long)": a sane duration, not years.
    let ms: f64 = line
        .split("at least ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line:?}"));
    assert!((0.0..5000.0).contains(&ms), "underrun duration {ms} ms is not sane: {line}");
    let rec = rig.recording_s16();
    assert_contiguous(&channel(&rec, 2, 0), &left, 1, "steady client");
}

#[test]
fn killed_client_is_freed_and_others_stay_bit_exact() {
    let rig = Rig::new(Card::default(), &[]);
    let n = 3 * RATE as usize;
    let left = noise(31, n, 20000);
    let silent = vec![0i16; n];
    let (wl, wr) = (rig.path("left.wav"), rig.path("right.wav"));
    write_wav(&wl, 2, RATE, &interleave(&[left.clone(), silent.clone()]));
    write_wav(&wr, 2, RATE, &interleave(&[silent, noise(32, n, 20000)]));
    let start = Instant::now();
    let mut good = aplay(&rig, &[], &wl).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut victim = aplay(&rig, &["--mmap"], &wr).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Killed while it streams: its sound is on the card (not a fixed 1 s after the spawn).
    rig.wait_for_sound(2, 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    victim.kill().unwrap();
    victim.wait().unwrap();
    finish(&mut good, start, Duration::from_secs(30)).assert_ok("steady aplay");
    let rec = rig.recording_s16();
    assert_contiguous(&channel(&rec, 2, 0), &left, 1, "steady client");
    let log = rig.daemon_log();
    assert!(
        log.lines().filter(|l| l.contains("stream") && (l.contains("closed") || l.contains("removed"))).count() >= 2,
        "daemon did not log freeing both streams:\n{log}"
    );
}

fn daemon_death_fails_the_client(sig: i32) {
    let mut rig = Rig::new(Card::default(), &[]);
    let n = 10 * RATE as usize;
    let wav = rig.path("long.wav");
    write_wav(&wav, 2, RATE, &interleave(&[noise(41, n, 20000), noise(42, n, 20000)]));
    let start = Instant::now();
    let mut a = aplay(&rig, &[], &wav).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    rig.wait_for_sound(2, 0, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    rig.signal_daemon(sig);
    let r = finish(&mut a, start, Duration::from_secs(10));
    let after = killed.elapsed();
    assert!(!r.status.success(), "aplay succeeded although the daemon died:\n{}", r.stderr);
    assert!(after < Duration::from_millis(1500), "aplay took {after:?} to notice the daemon's death");
}

#[test]
fn daemon_killed_client_errors_within_a_second() {
    daemon_death_fails_the_client(libc::SIGKILL);
}

#[test]
fn daemon_sigterm_is_clean_and_clients_get_an_error() {
    let mut rig = Rig::new(Card::default(), &[]);
    let n = 10 * RATE as usize;
    let wav = rig.path("long.wav");
    write_wav(&wav, 2, RATE, &interleave(&[noise(51, n, 20000), noise(52, n, 20000)]));
    let start = Instant::now();
    let mut a = aplay(&rig, &[], &wav).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    rig.wait_for_sound(2, 0, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let st = rig.signal_daemon(libc::SIGTERM);
    let daemon_took = t.elapsed();
    assert!(st.success(), "shmixd exited with {st} on SIGTERM:\n{}", rig.daemon_log());
    assert!(daemon_took < Duration::from_secs(1), "shmixd took {daemon_took:?} to exit on SIGTERM");
    assert!(!rig.sock.exists(), "shmixd left its socket behind");
    let r = finish(&mut a, start, Duration::from_secs(5));
    let client_took = t.elapsed();
    assert!(!r.status.success(), "aplay succeeded although the daemon stopped");
    assert!(client_took < Duration::from_millis(1500), "aplay took {client_took:?} to notice the daemon's exit");
}

#[test]
fn no_daemon_gives_a_clear_message() {
    let mut rig = Rig::new(Card::default(), &[]);
    rig.signal_daemon(libc::SIGTERM);
    let wav = rig.path("short.wav");
    write_wav(&wav, 2, RATE, &interleave(&[noise(61, 4800, 1000), noise(62, 4800, 1000)]));
    let r = run(aplay(&rig, &[], &wav), Duration::from_secs(10));
    assert!(!r.status.success());
    assert!(
        r.stderr.contains("cannot connect to shmixd at") && r.stderr.contains("Is shmixd running?"),
        "unclear message:\n{}",
        r.stderr
    );
}

//! Control: `shmixctl` (list, volume, mute, stats, top) and the ALSA ctl plugin against a
//! running daemon, checked on what the virtual card recorded.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const RATE: u32 = 48000;
/// The daemon's default device period (frames) and the gain ramp (5 ms at 48 kHz).
const PERIOD: usize = 256;
const RAMP: usize = 240;

fn shmixctl(rig: &Rig, args: &[&str]) -> Command {
    let mut c = rig.cmd(artifacts_dir().join("shmixctl"));
    c.arg("--socket").arg(&rig.sock).args(args);
    c
}

fn ctl_ok(rig: &Rig, args: &[&str]) -> String {
    let r = run(shmixctl(rig, args), Duration::from_secs(10));
    r.assert_ok(&format!("shmixctl {}", args.join(" ")));
    r.stdout
}

fn ctl_json(rig: &Rig, args: &[&str]) -> Value {
    let out = ctl_ok(rig, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("shmixctl {args:?} printed no JSON ({e}):\n{out}"))
}

/// The running playback streams of the listing.
fn running(rig: &Rig) -> Vec<Value> {
    let v = ctl_json(rig, &["list", "--json"]);
    v["streams"].as_array().expect("streams array").iter().filter(|s| s["state"] == "running").cloned().collect()
}

/// Waits until `n` streams run (at most 10 s).
fn wait_running(rig: &Rig, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = running(rig);
        if r.len() >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "{n} running streams expected, got {r:?}\n{}", rig.daemon_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn aplay(rig: &Rig, wav: &std::path::Path) -> Child {
    rig.cmd("aplay")
        .args(["-q", "-D", "shmix"])
        .arg(wav)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aplay")
}

fn wait_ok(mut c: Child, what: &str) {
    let r = finish(&mut c, Instant::now(), Duration::from_secs(30));
    r.assert_ok(what);
}

/// A constant stereo signal: every left sample `l`, every right sample `r`.
fn dc(secs: f64, l: i16, r: i16) -> Vec<i16> {
    let n = (secs * f64::from(RATE)) as usize;
    interleave(&[vec![l; n], vec![r; n]])
}

/// Indices where the left channel leaves `from` for good, and the run that follows.
fn first_index(v: &[i16], from: usize, pred: impl Fn(i16) -> bool) -> Option<usize> {
    v[from..].iter().position(|&x| pred(x)).map(|i| i + from)
}

/// The largest step between neighbouring samples over `v[a..b]`.
fn max_step(v: &[i16], a: usize, b: usize) -> i32 {
    v[a..b].windows(2).map(|w| (i32::from(w[1]) - i32::from(w[0])).abs()).max().unwrap_or(0)
}

/// `shmixctl volume ID -6.02dB` halves a playing stream's samples on the card (within rounding),
/// ramped; `mute ID on` silences it over one ramp, shorter than a device period, with no step
/// larger than the ramp allows.
#[test]
fn volume_halves_and_mute_ramps_to_silence() {
    let rig = Rig::new(Card::default(), &[]);
    let (l, r) = (16000i16, -12000i16);
    let wav = rig.path("dc.wav");
    write_wav(&wav, 2, RATE, &dc(4.0, l, r));
    let child = aplay(&rig, &wav);
    let s = wait_running(&rig, 1);
    let id = s[0]["id"].to_string();
    std::thread::sleep(Duration::from_millis(700));
    let out = ctl_json(&rig, &["volume", &id, "-6.02dB", "--json"]);
    assert!((out["volume"].as_f64().unwrap() - 0.5).abs() < 1e-3, "{out}");
    assert_eq!(out["volume_db"].as_f64().unwrap(), -6.02, "{out}");
    std::thread::sleep(Duration::from_millis(1000));
    let listed = running(&rig);
    assert!((listed[0]["volume"].as_f64().unwrap() - 0.5).abs() < 1e-3, "{listed:?}");
    let out = ctl_json(&rig, &["mute", &id, "on", "--json"]);
    assert_eq!(out["muted"], true, "{out}");
    wait_ok(child, "aplay");

    let rec = rig.recording_s16();
    let left = channel(&rec, 2, 0);
    let right = channel(&rec, 2, 1);
    let start = first_index(&left, 0, |x| x == l).expect("the stream reached the card");
    // Full level, then the volume ramp down to half.
    let ramp1 = first_index(&left, start, |x| x != l).expect("the volume changed");
    let half = first_index(&left, ramp1, |x| (i32::from(x) - 8000).abs() <= 1).expect("reached half level");
    assert!(half - ramp1 <= RAMP + 1, "volume ramp took {} frames (ramp {RAMP})", half - ramp1);
    assert!(half - ramp1 >= RAMP / 2, "volume change of {} frames is not ramped", half - ramp1);
    // Half level, within rounding, on both channels, until the mute.
    let mute = first_index(&left, half, |x| (i32::from(x) - 8000).abs() > 1).expect("the mute took effect");
    assert!(mute - half > RATE as usize / 2, "half level held only {} frames", mute - half);
    for i in half..mute {
        assert!((i32::from(left[i]) - 8000).abs() <= 1, "left[{i}] = {} at -6.02 dB", left[i]);
        assert!((i32::from(right[i]) + 6000).abs() <= 1, "right[{i}] = {} at -6.02 dB", right[i]);
    }
    // The mute: silence within one device period, ramped, silent to the end.
    let silent = first_index(&left, mute, |x| x == 0).expect("the mute silenced the stream");
    assert!(silent - mute <= PERIOD, "mute took {} frames (device period {PERIOD})", silent - mute);
    assert!(silent - mute >= RAMP / 2, "mute of {} frames is not ramped", silent - mute);
    let allowed = (8000.0 / RAMP as f64 * 1.05) as i32 + 2;
    let step = max_step(&left, start, silent + 1).max(max_step(&right, start, silent + 1));
    assert!(step <= allowed, "a step of {step} while ramping (allowed {allowed})");
    assert!(left[silent..].iter().chain(&right[silent..]).all(|&x| x == 0), "audio after the mute");
    // The stream's xruns, the daemon's stats.
    let st = ctl_json(&rig, &["stats", "--json"]);
    assert!(st["cycles"].as_u64().unwrap() > 100, "{st}");
    assert!(st["copied_frames"].as_u64().unwrap() >= 4 * u64::from(RATE), "{st}");
    assert!(st["mix_cpu_ns"].as_u64().unwrap() > 0, "{st}");
}

/// `shmixctl list --json` shows two playing aplays with their pids, programs and formats; their
/// peaks follow what they play; `stats` counts the daemon's work.
#[test]
fn list_shows_two_aplays_with_pids_and_formats() {
    let rig = Rig::new(Card::default(), &[]);
    let a_wav = rig.path("a.wav");
    let n = 4 * RATE as usize;
    write_wav(&a_wav, 2, RATE, &interleave(&[vec![16384; n], vec![16384; n]]));
    let b_wav = rig.path("b.wav");
    let nb = 4 * 44100;
    write_wav(&b_wav, 1, 44100, &vec![8192; nb]);
    let a = aplay(&rig, &a_wav);
    let b = aplay(&rig, &b_wav);
    wait_running(&rig, 2);
    std::thread::sleep(Duration::from_millis(500));
    let list = running(&rig);
    let by_pid = |pid: u32| {
        list.iter().find(|s| s["pid"] == pid).unwrap_or_else(|| panic!("pid {pid} not listed: {list:?}")).clone()
    };
    let sa = by_pid(a.id());
    let sb = by_pid(b.id());
    for (s, rate, ch) in [(&sa, 48000, 2), (&sb, 44100, 1)] {
        assert_eq!(s["name"], "aplay", "{s}");
        assert_eq!(s["direction"], "playback", "{s}");
        assert_eq!(s["format"], "S16_LE", "{s}");
        assert_eq!(s["rate"], rate, "{s}");
        assert_eq!(s["channels"], ch, "{s}");
        assert_eq!(s["volume"], 1.0, "{s}");
        assert_eq!(s["muted"], false, "{s}");
        assert!(s["buffer_frames"].as_u64().unwrap() >= s["period_frames"].as_u64().unwrap() * 2, "{s}");
        assert!(s["latency_frames"].as_u64().unwrap() > 0, "{s}");
        assert!(s["xruns"].is_u64(), "{s}");
    }
    // Peaks: 16384 = -6.02 dBFS, 8192 = -12.04 dBFS (the 44.1 kHz one is resampled: +-0.5 dB).
    assert!((sa["peak_db"].as_f64().unwrap() + 6.02).abs() < 0.1, "{sa}");
    assert!((sb["peak_db"].as_f64().unwrap() + 12.04).abs() < 0.5, "{sb}");
    let text = ctl_ok(&rig, &["list"]);
    assert!(text.contains(&format!("{}", a.id())) && text.contains("aplay"), "{text}");
    let st = ctl_json(&rig, &["stats", "--json"]);
    assert_eq!(st["streams"], 2, "{st}");
    assert_eq!(st["device"]["rate"], 48000, "{st}");
    // Both constant signals summed on the left: 16384 + 8192 = -3.5 dBFS.
    let p0 = st["peaks"][0].as_f64().unwrap();
    assert!((p0 - 0.75).abs() < 0.02, "device peak {p0}: {st}");
    wait_ok(a, "aplay a");
    wait_ok(b, "aplay b");
}

/// A program that comes back gets the volume it had: the second aplay's first samples on the
/// card are already at its remembered level.
#[test]
fn volume_is_remembered_per_program() {
    let rig = Rig::new(Card::default(), &[]);
    let wav = rig.path("dc.wav");
    write_wav(&wav, 2, RATE, &dc(1.5, 16000, 16000));
    let a = aplay(&rig, &wav);
    let s = wait_running(&rig, 1);
    ctl_ok(&rig, &["volume", &s[0]["id"].to_string(), "25%"]);
    wait_ok(a, "first aplay");
    let first_len = rig.recording_s16().len();
    let b = aplay(&rig, &wav);
    let s = wait_running(&rig, 1);
    assert_eq!(s[0]["volume"], 0.25, "{s:?}");
    wait_ok(b, "second aplay");
    let rec = rig.recording_s16();
    let second = &rec[first_len..];
    let loud = second.iter().filter(|&&x| x != 0).count();
    assert!(loud > RATE as usize, "the second aplay was not heard");
    assert!(second.iter().all(|&x| x == 0 || (i32::from(x) - 4000).abs() <= 1), "second aplay not at 25% throughout");
}

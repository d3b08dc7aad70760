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
    // Timer scheduling: aplay's 125 ms periods cost the daemon about 17 wakeups a second.
    assert!(st["cycles"].as_u64().unwrap() > 20, "{st}");
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

fn amixer(rig: &Rig, args: &[&str]) -> String {
    let r = run(
        {
            let mut c = rig.cmd("amixer");
            c.args(["-D", "shmix"]).args(args);
            c
        },
        Duration::from_secs(10),
    );
    r.assert_ok(&format!("amixer {}", args.join(" ")));
    r.stdout
}

/// The value amixer's `cget` prints (`: values=N`).
fn cget(rig: &Rig, name: &str) -> String {
    let out = amixer(rig, &["cget", &format!("name={name}")]);
    out.lines()
        .find_map(|l| l.trim().strip_prefix(": values="))
        .unwrap_or_else(|| panic!("no values in amixer cget output:\n{out}"))
        .to_string()
}

/// `amixer -D shmix sset Master 50%` and `amixer cget` round-trip with `shmixctl --json`, both
/// ways, for the playback mix and the capture path; and the master volume halves what the card
/// plays.
#[test]
fn amixer_and_shmixctl_round_trip() {
    let rig = Rig::new(Card::default(), &[]);
    let controls = amixer(&rig, &["controls"]);
    for name in ["Master Playback Volume", "Master Playback Switch", "Capture Volume", "Capture Switch"] {
        assert!(controls.contains(&format!("name='{name}'")), "{name} missing:\n{controls}");
    }
    amixer(&rig, &["sset", "Master", "50%"]);
    let st = ctl_json(&rig, &["stats", "--json"]);
    assert_eq!(st["master"]["volume"], 0.5, "{st}");
    assert_eq!(st["master"]["volume_db"], -6.02, "{st}");
    assert_eq!(cget(&rig, "Master Playback Volume"), "32768");
    amixer(&rig, &["sset", "Master", "mute"]);
    assert_eq!(ctl_json(&rig, &["stats", "--json"])["master"]["muted"], true);
    assert_eq!(cget(&rig, "Master Playback Switch"), "off");
    // And the other way round.
    ctl_ok(&rig, &["mute", "master", "off"]);
    assert_eq!(cget(&rig, "Master Playback Switch"), "on");
    ctl_ok(&rig, &["volume", "master", "25%"]);
    assert_eq!(cget(&rig, "Master Playback Volume"), "16384");
    ctl_ok(&rig, &["volume", "capture", "-6.02dB"]);
    assert_eq!(cget(&rig, "Capture Volume"), "32770");
    amixer(&rig, &["cset", "name=Capture Switch", "off"]);
    assert_eq!(ctl_json(&rig, &["stats", "--json"])["capture"]["muted"], true);
    let sget = amixer(&rig, &["sget", "Master"]);
    assert!(sget.contains("[25%]") && sget.contains("[on]"), "{sget}");

    // The master volume on the card: 50% halves a constant signal exactly (within rounding).
    ctl_ok(&rig, &["volume", "master", "50%"]);
    let wav = rig.path("dc.wav");
    write_wav(&wav, 2, RATE, &dc(1.0, 20000, -20000));
    wait_ok(aplay(&rig, &wav), "aplay");
    let rec = rig.recording_s16();
    let left = channel(&rec, 2, 0);
    let right = channel(&rec, 2, 1);
    let heard = left.iter().filter(|&&x| x != 0).count();
    assert!(heard >= RATE as usize * 99 / 100, "only {heard} frames heard");
    assert!(left.iter().all(|&x| x == 0 || x == 10000), "left not at half: {:?}", &left[..16]);
    assert!(right.iter().all(|&x| x == 0 || x == -10000), "right not at half");
}

/// Changes made with `shmixctl` reach a running ALSA control client as events (what makes a
/// running alsamixer redraw): `amixer events` prints them.
#[test]
fn shmixctl_changes_are_alsa_control_events() {
    let rig = Rig::new(Card::default(), &[]);
    let events = rig.path("events.txt");
    let mut ev = rig
        .cmd("stdbuf")
        .args(["-oL", "amixer", "-D", "shmix", "events"])
        .stdout(std::fs::File::create(&events).expect("events file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn amixer events");
    // amixer prints this once it has subscribed (a fixed 500 ms assumed it starts that fast).
    wait_for_text(&events, "Ready to listen", Duration::from_secs(20));
    ctl_ok(&rig, &["volume", "master", "30%"]);
    ctl_ok(&rig, &["mute", "capture", "on"]);
    // Wait for the last event rather than a fixed time; the asserts below say what is missing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let has_value_event = |name: &str| {
        let out = std::fs::read_to_string(&events).unwrap_or_default();
        out.lines().any(|l| l.starts_with("event value:") && l.contains(&format!("'{name}'")))
    };
    while !has_value_event("Capture Switch") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(ev.id() as i32, libc::SIGINT) };
    let r = finish(&mut ev, Instant::now(), Duration::from_secs(10));
    let out = std::fs::read_to_string(&events).unwrap_or_default();
    // `event add` lines come from the element list at start; value changes are `event value`.
    let value_event =
        |name: &str| out.lines().any(|l| l.starts_with("event value:") && l.contains(&format!("'{name}'")));
    assert!(value_event("Master Playback Volume"), "no event for the master volume:\n{out}\n{}", r.stderr);
    assert!(value_event("Capture Switch"), "no event for the capture switch:\n{out}");
}

fn tmux(sock: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("tmux").arg("-S").arg(sock).args(args).output().expect("tmux (in DEB_PACKAGES) must be installed")
}

/// `shmixctl top` in a real terminal (tmux): it shows the playing streams with level meters and
/// the device channels, refreshes, and quits cleanly on `q`.
#[test]
fn top_shows_streams_and_quits_on_q() {
    let rig = Rig::new(Card::default(), &[]);
    let wav = rig.path("dc.wav");
    write_wav(&wav, 2, RATE, &dc(6.0, 16384, 16384));
    let child = aplay(&rig, &wav);
    let s = wait_running(&rig, 1);
    let tsock = rig.path("tmux.sock");
    let done = rig.path("top.exit");
    let cmd = format!(
        "ALSA_CONFIG_PATH='{}' '{}' --socket '{}' top --interval-ms 100; echo $? > '{}'",
        rig.alsa_config_path(),
        artifacts_dir().join("shmixctl").display(),
        rig.sock.display(),
        done.display()
    );
    let o = tmux(&tsock, &["new-session", "-d", "-x", "150", "-y", "40", "sh", "-c", &format!("{cmd}; sleep 30")]);
    assert!(o.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&o.stderr));
    let capture = || String::from_utf8_lossy(&tmux(&tsock, &["capture-pane", "-p"]).stdout).to_string();
    // The stream shows with its pid, program and a meter at -6 dB.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut screen = capture();
    while !(screen.contains(&format!("{}", child.id())) && screen.contains("-6.0 dB")) {
        assert!(Instant::now() < deadline, "top never showed the stream {s:?}:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
        screen = capture();
    }
    assert!(screen.contains("aplay") && screen.contains("running"), "{screen}");
    assert!(screen.contains("ch0") && screen.contains("ch1") && screen.contains('#'), "no device meters:\n{screen}");
    // It refreshes: the cycle count moves.
    let cycles = |s: &str| s.split("cycles ").nth(1).and_then(|t| t.split_whitespace().next()).map(str::to_owned);
    let before = cycles(&screen);
    std::thread::sleep(Duration::from_millis(400));
    let after = capture();
    assert_ne!(before, cycles(&after), "top did not refresh:\n{after}");
    // `q` quits with status 0 and gives the terminal back.
    tmux(&tsock, &["send-keys", "q"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done.exists() {
        assert!(Instant::now() < deadline, "top did not quit on q:\n{}", capture());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read_to_string(&done).unwrap().trim(), "0", "top's exit status");
    let _ = tmux(&tsock, &["kill-server"]);
    wait_ok(child, "aplay");
}

/// `Capture Volume` at 50% (set through the ALSA control) halves what `arecord -D shmix`
/// records from the card; `Capture Switch` off records silence.
#[test]
fn capture_volume_and_switch_apply_to_recordings() {
    let n = 6 * RATE as usize;
    let src = interleave(&[vec![20000i16; n], vec![-16000i16; n]]);
    let bytes: Vec<u8> = src.iter().flat_map(|v| v.to_le_bytes()).collect();
    let rig = Rig::with_capture(Card::default(), &[], Some(&bytes));
    amixer(&rig, &["cset", "name=Capture Volume", "32768"]);
    assert_eq!(ctl_json(&rig, &["stats", "--json"])["capture"]["volume"], 0.5);
    let rec = |name: &str| {
        let out = rig.path(name);
        let mut c = rig.cmd("arecord");
        c.args(["-q", "-D", "shmix", "-t", "raw", "-f", "S16_LE", "-r", "48000", "-c", "2", "-d", "1"]).arg(&out);
        run(c, Duration::from_secs(20)).assert_ok("arecord");
        let b = std::fs::read(&out).unwrap();
        b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect::<Vec<i16>>()
    };
    // While recording, the stream is listed with its level after the capture volume:
    // 20000 * 0.5 = 10000 = -10.31 dBFS.
    let mut c = rig.cmd("arecord");
    c.args(["-q", "-D", "shmix", "-t", "raw", "-f", "S16_LE", "-r", "48000", "-c", "2", "-d", "2"])
        .arg(rig.path("listed.raw"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let listed = c.spawn().expect("spawn arecord");
    let s = wait_running(&rig, 1);
    assert_eq!(s[0]["direction"], "capture", "{s:?}");
    assert_eq!(s[0]["pid"], listed.id(), "{s:?}");
    std::thread::sleep(Duration::from_millis(300));
    let s = running(&rig);
    assert!((s[0]["peak_db"].as_f64().unwrap() + 10.31).abs() < 0.05, "{s:?}");
    wait_ok(listed, "arecord");
    let half = rec("half.raw");
    let (l, r) = (channel(&half, 2, 0), channel(&half, 2, 1));
    let heard = l.iter().filter(|&&x| x != 0).count();
    assert!(heard > RATE as usize * 8 / 10, "only {heard} frames recorded");
    assert!(l.iter().all(|&x| x == 0 || x == 10000), "left not halved: {:?}", &l[..8]);
    assert!(r.iter().all(|&x| x == 0 || x == -8000), "right not halved: {:?}", &r[..8]);
    amixer(&rig, &["cset", "name=Capture Switch", "off"]);
    let muted = rec("muted.raw");
    assert!(muted.len() >= RATE as usize, "short recording");
    assert!(muted.iter().all(|&x| x == 0), "sound recorded with the capture switch off");
}

/// A running `alsamixer -D shmix` (in tmux) redraws when `shmixctl` changes the master volume:
/// the control events reach it through the plugin's poll descriptor.
#[test]
fn running_alsamixer_follows_shmixctl() {
    let rig = Rig::new(Card::default(), &[]);
    ctl_ok(&rig, &["volume", "master", "50%"]);
    let tsock = rig.path("tmux.sock");
    let cmd = format!("ALSA_CONFIG_PATH='{}' alsamixer -D shmix", rig.alsa_config_path());
    let o = tmux(&tsock, &["new-session", "-d", "-x", "80", "-y", "24", "sh", "-c", &cmd]);
    assert!(o.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&o.stderr));
    let capture = || String::from_utf8_lossy(&tmux(&tsock, &["capture-pane", "-p"]).stdout).to_string();
    // The volume's number sits on the line above "< Master >".
    let shown = |screen: &str| -> Option<String> {
        let lines: Vec<&str> = screen.lines().collect();
        let i = lines.iter().position(|l| l.contains("< Master >"))?;
        Some(lines[i.checked_sub(1)?].trim_matches(|c: char| !c.is_ascii_digit()).to_string())
    };
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = capture();
            if shown(&screen).as_deref() == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "alsamixer never showed {want}:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("50");
    ctl_ok(&rig, &["volume", "master", "20%"]);
    wait_for("20");
    let _ = tmux(&tsock, &["send-keys", "Escape"]);
    std::thread::sleep(Duration::from_millis(200));
    let _ = tmux(&tsock, &["kill-server"]);
}

/// A control client that sends garbage (unknown tag, NaN or out-of-range volume, truncated,
/// trailing bytes, an oversized packet, a stream message) is disconnected with a logged reason;
/// the daemon and its volumes are unaffected.
#[test]
fn bad_control_requests_disconnect_only_that_client() {
    use shmix_shared::control::{self, Request, Target};
    use shmix_shared::socket as wire;
    use shmix_shared::{SocketMsg, PROTOCOL_VERSION};
    use std::os::fd::AsFd;

    let rig = Rig::new(Card::default(), &[]);
    let hello = || {
        let fd = crate::hostile::seqpacket(&rig.sock);
        let msg = SocketMsg::ControlHello { version: PROTOCOL_VERSION, name: "hostile".into() };
        wire::send(fd.as_fd(), &msg, &[]).unwrap();
        let p = wire::recv(fd.as_fd()).unwrap();
        assert!(matches!(SocketMsg::decode(&p.bytes), Ok(SocketMsg::Welcome { .. })), "{p:?}");
        fd
    };
    let vol = |bits: u32| {
        let mut b = Request::SetVolume { target: Target::Master, volume: 0.5 }.encode();
        b[12..16].copy_from_slice(&bits.to_le_bytes());
        b
    };
    let mut trailing = Request::List.encode();
    trailing.push(7);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown tag", 0xdead_u32.to_le_bytes().to_vec()),
        ("NaN volume", vol(f32::NAN.to_bits())),
        ("volume 2.0", vol(2.0f32.to_bits())),
        ("negative volume", vol((-0.5f32).to_bits())),
        ("truncated", Request::SetVolume { target: Target::Master, volume: 0.5 }.encode()[..6].to_vec()),
        ("trailing bytes", trailing),
        ("oversized", vec![0u8; control::MAX_CONTROL_PACKET_BYTES + 100]),
        ("stream message", SocketMsg::DestroyStream.encode()),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        let fd = hello();
        control::send_packet(fd.as_fd(), &bytes).unwrap();
        let r = control::recv_packet(fd.as_fd());
        assert!(matches!(&r, Ok(b) if b.is_empty()) || r.is_err(), "{what}: still connected, got {r:?}");
        let st = ctl_json(&rig, &["stats", "--json"]);
        assert_eq!(st["master"]["volume"], 1.0, "{what}: {st}");
    }
    let log = rig.daemon_log();
    assert!(log.contains("bad control packet"), "no reason logged:\n{log}");
    // A well-behaved control client on the same daemon still works.
    ctl_ok(&rig, &["volume", "master", "50%"]);
    assert_eq!(ctl_json(&rig, &["stats", "--json"])["master"]["volume"], 0.5);
}

#[test]
fn a_reader_that_goes_away_ends_shmixctl_quietly() {
    let rig = Rig::new(Card::default(), &[]);
    // stdout is a pipe whose reader is already gone: every write meets EPIPE (Rust ignores
    // SIGPIPE), as when `shmixctl list | head -1` has read its line.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    for args in [&["stats", "--json"][..], &["list"], &["volume", "master", "100%"]] {
        let start = Instant::now();
        let mut c = shmixctl(&rig, args)
            .stdout(writer.try_clone().expect("pipe writer"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shmixctl");
        let r = finish(&mut c, start, Duration::from_secs(10));
        r.assert_ok(&format!("shmixctl {} into a closed pipe", args.join(" ")));
        assert!(!r.stderr.contains("panicked"), "shmixctl {args:?} panicked: {}", r.stderr);
    }
}

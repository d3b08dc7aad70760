//! The ALSA programs people use, unchanged, on shmix (issue 5): each test drives one program
//! against the virtual card and checks that the card recorded the right audio (bit-exact where
//! the path is lossless, else the right tone at the right level), that the run took real time,
//! that the program slept (CPU well under wall time) and exited 0. Every test prints one
//! `compat-figure` line (program and daemon CPU per audio second) that
//! `scripts/compat-figures.sh` collects for the README's table.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::analysis::*;
use crate::common::*;

const RATE: u32 = 48000;

/// CPU ticks (user + system, all threads) of a live process, from /proc/PID/stat.
fn proc_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based, whole line).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU seconds of all live threads of a process, in nanoseconds resolution (schedstat).
fn proc_cpu_ns(pid: i32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    dir.filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

fn ticks_to_secs(t: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    t as f64 / hz as f64
}

/// A finished program with its costs.
#[derive(Debug)]
struct Measured {
    run: Run,
    /// The program's CPU seconds (rusage: user + system, all threads).
    cpu: f64,
    /// CPU share of wall time after its first 0.5 s (start-up excluded: loading GStreamer or
    /// ffmpeg costs a fixed 50-100 ms), as a fraction.
    steady_share: f64,
    /// The daemon's CPU seconds over the run.
    daemon_cpu: f64,
}

/// Runs `cmd` to the end (at most `limit`), measuring its CPU (wait4) and the daemon's.
fn measure(rig: &Rig, cmd: Command, limit: Duration) -> Measured {
    let dpid = rig.daemon_pid();
    let d0 = proc_cpu_ns(dpid);
    // The program's CPU at its first tick after 0.5 s (start-up), with the time of that sample.
    let mut early: Option<(f64, Duration)> = None;
    let (run, ru) = run_rusage(cmd, limit, |pid, elapsed| {
        if early.is_none() && elapsed >= Duration::from_millis(500) {
            early = proc_ticks(pid).map(|t| (ticks_to_secs(t), elapsed));
        }
    });
    let wall = run.wall;
    let daemon_cpu = proc_cpu_ns(dpid).saturating_sub(d0) as f64 / 1e9;
    let cpu = cpu_secs(&ru);
    let steady_share = match early {
        Some((c0, t0)) if wall > t0 + Duration::from_millis(300) => (cpu - c0).max(0.0) / (wall - t0).as_secs_f64(),
        _ => cpu / wall.as_secs_f64(),
    };
    Measured { run, cpu, steady_share, daemon_cpu }
}

/// The common checks: exit 0, real time (at least 90 % of the audio, at most audio + 3 s),
/// steady CPU under `max_share` of wall; prints the figures line.
fn check_run(name: &str, m: &Measured, audio_secs: f64, max_share: f64) {
    m.run.assert_ok(name);
    let wall = m.run.wall.as_secs_f64();
    eprintln!(
        "compat-figure: {name}: audio {audio_secs:.2} s, wall {wall:.3} s, program cpu {:.1} ms per audio s (steady {:.2} \
         % of wall), daemon cpu {:.1} ms per audio s",
        1000.0 * m.cpu / audio_secs,
        100.0 * m.steady_share,
        1000.0 * m.daemon_cpu / audio_secs
    );
    assert!(
        wall >= 0.9 * audio_secs && wall <= audio_secs + 3.0,
        "{name}: took {wall:.3} s for {audio_secs} s of audio (real time?)\nstderr: {}",
        m.run.stderr
    );
    assert!(
        m.steady_share < max_share,
        "{name}: used {:.1} % of wall time in CPU (limit {:.0} %): a busy loop?",
        100.0 * m.steady_share,
        100.0 * max_share
    );
    assert!(m.cpu < 0.5 * wall, "{name}: {:.3} s CPU in {wall:.3} s", m.cpu);
}

/// The 5 % of the issue, for programs at 1024-frame periods or larger.
const CPU_SHARE: f64 = 0.05;
/// Small periods mean more wake-ups; still far from a busy loop.
const CPU_SHARE_SMALL_PERIODS: f64 = 0.20;

fn read_s16(path: &Path) -> Vec<i16> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
}

/// Appends text to the rig's ALSA configuration (programs started later see it).
fn add_conf(rig: &Rig, text: &str) {
    let mut conf = std::fs::read_to_string(&rig.conf).unwrap();
    conf.push_str(text);
    std::fs::write(&rig.conf, conf).unwrap();
}

/// `frames copied C, zero-copy Z, xruns X` from the plugin's close line(s), summed.
fn counters(stderr: &str) -> (u64, u64, u64) {
    let mut sum = (0, 0, 0);
    let mut found = false;
    for line in stderr.lines().filter(|l| l.starts_with("shmix: frames copied ")) {
        let n: Vec<u64> =
            line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
        sum = (sum.0 + n[0], sum.1 + n[1], sum.2 + n[2]);
        found = true;
    }
    assert!(found, "no counters line from the plugin (SHMIX_DEBUG=1):\n{stderr}");
    sum
}

/// Plays `sound` (S16 stereo 48 kHz) with `cmd_for(wav, raw)` and checks the card recorded it
/// bit-exact; returns the measurement.
fn plays_bit_exact(
    rig: &Rig,
    name: &str,
    seed: u32,
    secs: f64,
    max_share: f64,
    cmd_for: impl FnOnce(&Path, &Path) -> Command,
) -> Measured {
    let sound = stereo_noise(seed, secs);
    let (wav, raw) = (rig.path("sound.wav"), rig.path("sound.raw"));
    write_wav(&wav, 2, RATE, &sound);
    write_raw(&raw, &sound);
    let m = measure(rig, cmd_for(&wav, &raw), Duration::from_secs(30));
    check_run(name, &m, secs, max_share);
    assert_contiguous(&rig.recording_s16(), &sound, 2, name);
    m
}

// ----- aplay / arecord ------------------------------------------------------------------------

fn aplay_case(name: &str, extra: &[&str], max_share: f64) {
    let rig = Rig::new(Card::default(), &[]);
    plays_bit_exact(&rig, name, 11, 1.5, max_share, |wav, _| {
        let mut c = rig.cmd("aplay");
        c.args(["-q", "-D", "shmix"]).args(extra).arg(wav);
        c
    });
}

#[test]
fn aplay_defaults_rw() {
    aplay_case("aplay (defaults, RW)", &[], CPU_SHARE);
}

#[test]
fn aplay_defaults_mmap_nonblocking() {
    aplay_case("aplay -N --mmap (defaults)", &["-N", "--mmap"], CPU_SHARE);
}

#[test]
fn aplay_period_64_rw() {
    aplay_case("aplay --period-size=64", &["--period-size=64"], CPU_SHARE_SMALL_PERIODS);
}

#[test]
fn aplay_period_104_mmap_nonblocking() {
    aplay_case("aplay --period-size=104 --mmap -N", &["--period-size=104", "--mmap", "-N"], CPU_SHARE_SMALL_PERIODS);
}

#[test]
fn aplay_period_256_rw_nonblocking() {
    aplay_case("aplay --period-size=256 -N", &["--period-size=256", "-N"], CPU_SHARE_SMALL_PERIODS);
}

#[test]
fn aplay_period_940_mmap() {
    aplay_case("aplay --period-size=940 --mmap", &["--period-size=940", "--mmap"], CPU_SHARE);
}

#[test]
fn aplay_period_1024_rw() {
    aplay_case("aplay --period-size=1024", &["--period-size=1024"], CPU_SHARE);
}

#[test]
fn aplay_period_4096_mmap_nonblocking() {
    aplay_case("aplay --period-size=4096 --mmap -N", &["--period-size=4096", "--mmap", "-N"], CPU_SHARE);
}

/// `secs` of stereo noise fed to the card's capture side; `name` records with `cmd_for(out)`
/// (raw S16 stereo 48 kHz); the recording is a contiguous bit-exact run of the noise.
fn records_bit_exact(name: &str, secs: f64, max_share: f64, cmd_for: impl FnOnce(&Rig, &Path) -> Command) {
    let source = stereo_noise(21, secs + 3.0);
    let bytes: Vec<u8> = source.iter().flat_map(|s| s.to_le_bytes()).collect();
    let rig = Rig::with_capture(Card::default(), &[], Some(&bytes));
    let out = rig.path("rec.raw");
    let m = measure(&rig, cmd_for(&rig, &out), Duration::from_secs(30));
    check_run(name, &m, secs, max_share);
    let rec = read_s16(&out);
    assert!(
        rec.len() >= (secs * 0.95 * f64::from(RATE)) as usize * 2,
        "{name}: only {} frames recorded",
        rec.len() / 2
    );
    let run = crate::capture::run_of(&rec, &source, 2, name);
    assert!(
        run.frames as f64 >= (secs - 0.5) * f64::from(RATE),
        "{name}: only {} frames of sound: {run:?}",
        run.frames
    );
}

fn arecord(rig: &Rig, out: &Path, extra: &[&str]) -> Command {
    let mut c = rig.cmd("arecord");
    c.args(["-q", "-D", "shmix", "-t", "raw", "-f", "S16_LE", "-r", "48000", "-c", "2", "-d", "2"])
        .args(extra)
        .arg(out);
    c
}

#[test]
fn arecord_defaults_rw() {
    records_bit_exact("arecord (defaults, RW)", 2.0, CPU_SHARE, |rig, out| arecord(rig, out, &[]));
}

#[test]
fn arecord_mmap_nonblocking() {
    records_bit_exact("arecord -N --mmap", 2.0, CPU_SHARE, |rig, out| arecord(rig, out, &["-N", "--mmap"]));
}

#[test]
fn arecord_period_104_rw_nonblocking() {
    records_bit_exact("arecord --period-size=104 -N", 2.0, CPU_SHARE_SMALL_PERIODS, |rig, out| {
        arecord(rig, out, &["--period-size=104", "-N"])
    });
}

#[test]
fn arecord_period_64_mmap() {
    records_bit_exact("arecord --period-size=64 --mmap", 2.0, CPU_SHARE_SMALL_PERIODS, |rig, out| {
        arecord(rig, out, &["--period-size=64", "--mmap"])
    });
}

#[test]
fn arecord_period_256_rw() {
    records_bit_exact("arecord --period-size=256", 2.0, CPU_SHARE_SMALL_PERIODS, |rig, out| {
        arecord(rig, out, &["--period-size=256"])
    });
}

#[test]
fn arecord_period_940_mmap_nonblocking() {
    records_bit_exact("arecord --period-size=940 --mmap -N", 2.0, CPU_SHARE, |rig, out| {
        arecord(rig, out, &["--period-size=940", "--mmap", "-N"])
    });
}

#[test]
fn arecord_period_4096_rw() {
    records_bit_exact("arecord --period-size=4096", 2.0, CPU_SHARE, |rig, out| {
        arecord(rig, out, &["--period-size=4096"])
    });
}

// ----- speaker-test ---------------------------------------------------------------------------

/// `speaker-test -c CH -s SPK -t wav -w noise.wav` (mono noise): the card records the noise on
/// the channel of the speaker speaker-test names, bit-exact, and silence on all the others.
fn speaker_test(channels: u32, speaker: u32, extra: &[&str]) {
    let rig = Rig::new(Card { channels, ..Default::default() }, &[]);
    let secs = 1.0;
    let mono = noise(31, (secs * f64::from(RATE)) as usize, 30000);
    let wav = rig.path("mono.wav");
    write_wav(&wav, 1, RATE, &mono);
    let mut c = rig.cmd("speaker-test");
    c.args(["-D", "shmix", "-c", &channels.to_string(), "-s", &speaker.to_string(), "-t", "wav", "-w"])
        .arg(&wav)
        .args(extra);
    let name = format!("speaker-test -c {channels} -s {speaker} {}", extra.join(" "));
    let m = measure(&rig, c, Duration::from_secs(30));
    check_run(name.trim(), &m, secs, CPU_SHARE);
    // speaker-test numbers speakers in its own order (6 channels: FL FC FR RR RL LFE) and names
    // the one it plays; the card's channels are in ALSA's standard order.
    let order = ["Front Left", "Front Right", "Rear Left", "Rear Right", "Front Center", "LFE"];
    let said = m.run.stdout.lines().find_map(|l| l.trim().strip_prefix("- ")).unwrap_or_else(|| {
        panic!("{name}: speaker-test named no speaker:\n{}", m.run.stdout);
    });
    let target = order.iter().position(|n| *n == said.trim()).unwrap_or_else(|| panic!("{name}: speaker {said:?}"));
    eprintln!("{name}: speaker-test played {said:?}, the card's channel {target}");
    let rec = rig.recording_s16();
    let ch = channels as usize;
    for c in 0..ch {
        let chan = channel(&rec, ch, c);
        if c == target {
            // speaker-test itself drops the last frames of the WAV at 6 channels (47998 of 48000
            // straight into the card, without shmix): the sound up to there, bit-exact.
            let played = chan.iter().rposition(|s| *s != 0).map_or(0, |l| l + 1)
                - chan.iter().position(|s| *s != 0).unwrap_or(0);
            assert!(played + 16 >= mono.len(), "{name}: only {played} of {} frames", mono.len());
            assert_contiguous(&chan, &mono[..played.min(mono.len())], 1, &name);
        } else {
            assert!(chan.iter().all(|s| *s == 0), "{name}: channel {c} is not silent");
        }
    }
}

/// speaker-test's own generators (`-t sine`, `-t pink`; about 5 s on one speaker) are
/// deterministic whatever the buffer: the same command straight into a second virtual card is
/// the reference. Through shmix the named speaker's channel is that reference bit-exact (over
/// the length both played: speaker-test's length follows its buffer choice), the other silent.
fn speaker_test_generator(kind: &[&str], speaker: u32) {
    let rig = Rig::new(Card::default(), &[]);
    let name = format!("speaker-test -c 2 -s {speaker} -t {}", kind.join(" "));
    let bare_rec = rig.path("bare.raw");
    let bare_conf = rig.path("bare.conf");
    std::fs::write(
        &bare_conf,
        format!(
            "pcm_type.shmix_vcard {{ lib \"{}\" }}\npcm.bare {{ type shmix_vcard format S16_LE rate {RATE} channels 2 \
             playback_file \"{}\" }}\n",
            artifacts_dir().join("libasound_module_pcm_shmix_vcard.so").display(),
            bare_rec.display()
        ),
    )
    .unwrap();
    let args = |dev: &str| -> Vec<String> {
        let mut a: Vec<String> =
            ["-D", dev, "-c", "2", "-s", &speaker.to_string(), "-l", "1", "-t"].map(String::from).into();
        a.extend(kind.iter().map(|s| s.to_string()));
        a
    };
    let mut bare = Command::new("speaker-test");
    bare.args(args("bare")).env("ALSA_CONFIG_PATH", format!("/usr/share/alsa/alsa.conf:{}", bare_conf.display()));
    run(bare, Duration::from_secs(30)).assert_ok(&format!("{name} on the bare card"));
    let target = speaker as usize - 1;
    let raw = std::fs::read(&bare_rec).unwrap();
    let bare_s16: Vec<i16> = raw.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    let reference = channel(&bare_s16, 2, target);
    let span = |c: &[i16]| {
        let first = c.iter().position(|s| *s != 0).unwrap_or(c.len());
        let last = c.iter().rposition(|s| *s != 0).map_or(first, |l| l + 1);
        (first, last)
    };
    let (r0, r1) = span(&reference);
    assert!(r1 - r0 > 4 * RATE as usize, "{name}: the bare card got only {} frames", r1 - r0);
    let mut c = rig.cmd("speaker-test");
    c.args(args("shmix"));
    let m = measure(&rig, c, Duration::from_secs(30));
    let rec = rig.recording_s16();
    let chan = channel(&rec, 2, target);
    let (s0, s1) = span(&chan);
    check_run(&name, &m, (s1 - s0) as f64 / f64::from(RATE), CPU_SHARE);
    assert!(channel(&rec, 2, 1 - target).iter().all(|s| *s == 0), "{name}: the other channel is not silent");
    // Both runs are speaker-test's nperiods times its period: compare what both played.
    let n = (r1 - r0).min(s1 - s0);
    assert!(n * 10 >= (r1 - r0) * 9, "{name}: {} frames through shmix, {} on the bare card", s1 - s0, r1 - r0);
    if let Some(i) = (0..n).find(|&i| chan[s0 + i] != reference[r0 + i]) {
        panic!(
            "{name}: frame {i} of {n} differs: {} through shmix, {} on the bare card; {}",
            chan[s0 + i],
            reference[r0 + i],
            describe_gap(&chan, &reference[r0..r1], 1, s0 + i, i)
        );
    }
    let peak = reference[r0..r1].iter().map(|s| i32::from(*s).abs()).max().unwrap_or(0);
    eprintln!("{name}: {n} frames bit-exact against the bare card (peak {peak})");
}

#[test]
fn speaker_test_sine_is_the_bare_cards() {
    speaker_test_generator(&["sine", "-f", "997"], 1);
}

#[test]
fn speaker_test_pink_noise_is_the_bare_cards() {
    speaker_test_generator(&["pink"], 2);
}

#[test]
fn speaker_test_2ch_default_buffer() {
    speaker_test(2, 2, &[]);
}

#[test]
fn speaker_test_2ch_buffer_100ms() {
    speaker_test(2, 1, &["-b", "100000"]);
}

#[test]
fn speaker_test_6ch_default_buffer() {
    speaker_test(6, 5, &[]);
}

#[test]
fn speaker_test_6ch_buffer_50ms() {
    speaker_test(6, 3, &["-b", "50000"]);
}

// ----- sox ------------------------------------------------------------------------------------

#[test]
fn sox_play_alsa() {
    let rig = Rig::new(Card::default(), &[]);
    plays_bit_exact(&rig, "sox play -t alsa", 41, 1.5, CPU_SHARE, |wav, _| {
        let mut c = rig.cmd("play");
        c.args(["-q", "-V1"]).arg(wav).env("AUDIODRIVER", "alsa").env("AUDIODEV", "shmix");
        c
    });
}

#[test]
fn sox_rec_alsa() {
    records_bit_exact("sox rec -t alsa", 2.0, CPU_SHARE, |rig, out| {
        let mut c = rig.cmd("rec");
        c.args(["-q", "-V1", "-r", "48000", "-c", "2", "-b", "16", "-e", "signed-integer", "-t", "raw"])
            .arg(out)
            .args(["trim", "0", "2"])
            .env("AUDIODRIVER", "alsa")
            .env("AUDIODEV", "shmix");
        c
    });
}

// ----- tones ----------------------------------------------------------------------------------

/// The card's recording (S16 card) has a tone of `freq` Hz at `level_db` dBFS on every channel
/// (+-0.5 dB, +-0.1 %), over at least 80 % of `secs`.
fn assert_tone(rig: &Rig, name: &str, secs: f64, freq: f64, level_db: f64) {
    let bytes = std::fs::read(&rig.rec).unwrap_or_default();
    let chans = decode_channels(&bytes, Fmt::S16Le, rig.card.channels as usize);
    let (a, b) = active_region(&chans, 0.01).unwrap_or_else(|| panic!("{name}: the card recorded only silence"));
    let len = b - a;
    assert!(
        len as f64 >= 0.8 * secs * f64::from(RATE),
        "{name}: sound lasts {:.3} s of {secs} s",
        len as f64 / f64::from(RATE)
    );
    // The middle, away from fades and start-up.
    let (s, e) = (a + len / 5, b - len / 5);
    for (c, x) in chans.iter().enumerate() {
        let t = fit_tone(&x[s..e], f64::from(RATE));
        eprintln!("{name}: channel {c}: {:.3} Hz at {:.2} dBFS, THD+N {:.1} dB", t.freq, t.level_db, t.thdn_db);
        assert!((t.freq - freq).abs() < freq * 1e-3, "{name}: channel {c} at {:.3} Hz, not {freq}", t.freq);
        assert!((t.level_db - level_db).abs() < 0.5, "{name}: channel {c} at {:.2} dBFS, not {level_db}", t.level_db);
        assert!(t.thdn_db < -40.0, "{name}: channel {c} THD+N {:.1} dB", t.thdn_db);
    }
}

// ----- GStreamer --------------------------------------------------------------------------------

fn gst_sink(format: &str, rate: u32) {
    let rig = Rig::new(Card::default(), &[]);
    let secs = 1.5;
    let buffers = (secs * f64::from(rate) / 1024.0).round() as u64;
    let audio = buffers as f64 * 1024.0 / f64::from(rate);
    let name = format!("gst alsasink {format} {rate} Hz");
    let mut c = rig.cmd("gst-launch-1.0");
    c.args(["-q", "audiotestsrc", "freq=997", "volume=0.5", "samplesperbuffer=1024"])
        .arg(format!("num-buffers={buffers}"))
        .arg("!")
        .arg(format!("audio/x-raw,format={format},rate={rate},channels=2"))
        .args(["!", "alsasink", "device=shmix"]);
    let m = measure(&rig, c, Duration::from_secs(30));
    check_run(&name, &m, audio, CPU_SHARE);
    assert_tone(&rig, &name, audio, 997.0, db20(0.5));
}

#[test]
fn gst_alsasink_s16_44100() {
    gst_sink("S16LE", 44100);
}

#[test]
fn gst_alsasink_f32_48000() {
    gst_sink("F32LE", 48000);
}

#[test]
fn gst_alsasink_f32_96000() {
    gst_sink("F32LE", 96000);
}

#[test]
fn gst_alsasrc_s16_48000() {
    records_bit_exact("gst alsasrc S16 48000", 2.0, CPU_SHARE, |rig, out| {
        let mut c = rig.cmd("gst-launch-1.0");
        c.args(["-q", "alsasrc", "device=shmix", "num-buffers=100", "blocksize=3840"])
            .args(["!", "audio/x-raw,format=S16LE,rate=48000,channels=2", "!", "filesink"])
            .arg(format!("location={}", out.display()));
        c
    });
}

#[test]
fn gst_alsasrc_f32_44100_tone() {
    // The card's capture side plays a 997 Hz sine at half scale (48 kHz S16 stereo); GStreamer
    // records F32 at 44100 Hz (the daemon resamples and converts).
    let n = 5 * RATE as usize;
    let x: Vec<i16> = (0..n)
        .map(|i| (16384.0 * (2.0 * std::f64::consts::PI * 997.0 * i as f64 / f64::from(RATE)).sin()).round() as i16)
        .collect();
    let bytes: Vec<u8> = interleave(&[x.clone(), x]).iter().flat_map(|s| s.to_le_bytes()).collect();
    let rig = Rig::with_capture(Card::default(), &[], Some(&bytes));
    let out = rig.path("rec.f32");
    let name = "gst alsasrc F32 44100";
    let mut c = rig.cmd("gst-launch-1.0");
    // 2 s: 86 buffers of 1024 frames.
    c.args(["-q", "alsasrc", "device=shmix", "num-buffers=86", "blocksize=8192"])
        .args(["!", "audio/x-raw,format=F32LE,rate=44100,channels=2", "!", "filesink"])
        .arg(format!("location={}", out.display()));
    let m = measure(&rig, c, Duration::from_secs(30));
    check_run(name, &m, 2.0, CPU_SHARE);
    let chans = decode_channels(&std::fs::read(&out).unwrap(), Fmt::F32Le, 2);
    let (a, b) = active_region(&chans, 0.01).unwrap_or_else(|| panic!("{name}: recorded only silence"));
    assert!(b - a >= 44100 * 3 / 2, "{name}: only {} frames of sound", b - a);
    let len = b - a;
    for (ch, x) in chans.iter().enumerate() {
        let t = fit_tone(&x[a + len / 5..b - len / 5], 44100.0);
        eprintln!("{name}: channel {ch}: {:.3} Hz at {:.2} dBFS, THD+N {:.1} dB", t.freq, t.level_db, t.thdn_db);
        assert!((t.freq - 997.0).abs() < 1.0, "{name}: {:.3} Hz", t.freq);
        assert!((t.level_db - db20(0.5)).abs() < 0.5, "{name}: {:.2} dBFS", t.level_db);
        assert!(t.thdn_db < -40.0, "{name}: THD+N {:.1} dB", t.thdn_db);
    }
}

// ----- C programs on PortAudio, SDL2, OpenAL Soft -------------------------------------------------

fn portaudio(mode: &str) {
    let rig = Rig::new(Card::default(), &[]);
    let exe = compile_c_with(&rig, "pa_play", &["-lportaudio"]);
    let name = format!("PortAudio {mode}");
    let m = plays_bit_exact(&rig, &name, 51, 1.5, CPU_SHARE, |_, raw| {
        let mut c = rig.cmd(&exe);
        c.args([mode, "shmix"]).arg(raw).env("SHMIX_DEBUG", "1");
        c
    });
    let (copied, zero, xruns) = counters(&m.run.stderr);
    eprintln!("{name}: frames copied {copied}, zero-copy {zero}, xruns {xruns}");
    assert!(m.run.stderr.contains("shmix: prepare: mmap areas point at shared memory"), "{name}: not mmap");
    assert!(copied == 0 && zero >= 72000, "{name}: copied {copied}, zero-copy {zero}: zero-copy not in effect");
    assert_eq!(xruns, 0, "{name}: xruns");
}

#[test]
fn portaudio_blocking() {
    portaudio("blocking");
}

#[test]
fn portaudio_callback() {
    portaudio("callback");
}

#[test]
fn sdl2_callback() {
    let rig = Rig::new(Card::default(), &[]);
    let exe = compile_c_with(&rig, "sdl_play", &["-I/usr/include/SDL2", "-lSDL2"]);
    let m = plays_bit_exact(&rig, "SDL2 (alsa)", 61, 1.5, CPU_SHARE, |_, raw| {
        let mut c = rig.cmd(&exe);
        c.arg(raw).env("SDL_AUDIODRIVER", "alsa").env("AUDIODEV", "shmix").env("SHMIX_DEBUG", "1");
        c
    });
    assert!(m.run.stdout.contains("driver alsa"), "SDL2 did not use its ALSA driver:\n{}", m.run.stdout);
    // SDL2 stops feeding, then waits two buffers before it closes (no drain): the daemon reports
    // that underrun (`xruns 1`), after the sound, which is whole (checked above).
    let (copied, zero, xruns) = counters(&m.run.stderr);
    eprintln!("SDL2: frames copied {copied}, zero-copy {zero}, xruns {xruns}");
    assert!(copied >= 72000 && zero == 0, "SDL2 writes (RW): copied {copied}, zero-copy {zero}");
}

#[test]
fn openal_soft_mmap() {
    let rig = Rig::new(Card::default(), &[]);
    let exe = compile_c_with(&rig, "openal_play", &["-lopenal"]);
    let conf = rig.path("alsoft.conf");
    std::fs::write(
        &conf,
        "[general]\ndrivers = alsa\nchannels = stereo\nsample-type = int16\nfrequency = 48000\nperiod_size = \
         1024\nperiods = 3\ndither = false\noutput-limiter = false\n[alsa]\ndevice = shmix\nmmap = true\n",
    )
    .unwrap();
    let m = plays_bit_exact(&rig, "OpenAL Soft", 71, 1.5, CPU_SHARE, |_, raw| {
        let mut c = rig.cmd(&exe);
        c.arg(raw).env("ALSOFT_CONF", &conf).env("SHMIX_DEBUG", "1");
        c
    });
    let (copied, zero, xruns) = counters(&m.run.stderr);
    eprintln!("OpenAL Soft: frames copied {copied}, zero-copy {zero}, xruns {xruns}");
    assert!(copied == 0 && zero >= 72000, "OpenAL Soft: copied {copied}, zero-copy {zero}: zero-copy not in effect");
    assert_eq!(xruns, 0, "OpenAL Soft: xruns");
}

// ----- ffmpeg ---------------------------------------------------------------------------------

#[test]
fn ffmpeg_alsa_playback() {
    let rig = Rig::new(Card::default(), &[]);
    plays_bit_exact(&rig, "ffmpeg -f alsa (playback)", 81, 1.5, CPU_SHARE, |wav, _| {
        let mut c = rig.cmd("ffmpeg");
        c.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"]).arg(wav).args(["-f", "alsa", "shmix"]);
        c
    });
}

#[test]
fn ffmpeg_alsa_capture() {
    records_bit_exact("ffmpeg -f alsa (capture)", 2.0, CPU_SHARE, |rig, out| {
        let mut c = rig.cmd("ffmpeg");
        c.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-f", "alsa", "-ar", "48000", "-ac", "2"])
            .args(["-i", "shmix", "-t", "2", "-y", "-f", "s16le"])
            .arg(out);
        c
    });
}

// ----- plug and rate in front of shmix --------------------------------------------------------

#[test]
fn plug_shmix_passthrough_is_bit_exact() {
    let rig = Rig::new(Card::default(), &[]);
    plays_bit_exact(&rig, "aplay -D plug:shmix", 91, 1.5, CPU_SHARE, |wav, _| {
        let mut c = rig.cmd("aplay");
        c.args(["-q", "-D", "plug:shmix"]).arg(wav);
        c
    });
}

/// A tone WAV at `rate` Hz, `channels` channels, `secs` long, at half scale.
fn tone_wav(path: &Path, rate: u32, channels: u16, secs: f64, freq: f64) {
    let n = (secs * f64::from(rate)) as usize;
    let x: Vec<i16> = (0..n)
        .map(|i| (16384.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()).round() as i16)
        .collect();
    let chans: Vec<Vec<i16>> = (0..channels).map(|_| x.clone()).collect();
    write_wav(path, channels, rate, &interleave(&chans));
}

#[test]
fn plug_shmix_converts_22050_mono() {
    let rig = Rig::new(Card::default(), &[]);
    let wav = rig.path("tone.wav");
    tone_wav(&wav, 22050, 1, 1.5, 997.0);
    let mut c = rig.cmd("aplay");
    c.args(["-q", "-D", "plug:shmix"]).arg(&wav);
    let m = measure(&rig, c, Duration::from_secs(30));
    check_run("aplay -D plug:shmix (22050 mono)", &m, 1.5, CPU_SHARE);
    // Mono to stereo: the same tone on both channels (shmix or plug duplicates it).
    assert_tone(&rig, "plug:shmix 22050 mono", 1.5, 997.0, db20(0.5));
}

#[test]
fn rate_converter_in_front_of_shmix() {
    let rig = Rig::new(Card::default(), &[]);
    add_conf(&rig, "pcm.ratecv {\n    type rate\n    slave { pcm \"shmix\" rate 48000 }\n}\n");
    let wav = rig.path("tone.wav");
    tone_wav(&wav, 44100, 2, 1.5, 997.0);
    let mut c = rig.cmd("aplay");
    c.args(["-q", "-D", "ratecv"]).arg(&wav);
    let m = measure(&rig, c, Duration::from_secs(30));
    check_run("aplay -D ratecv (rate 44100 -> 48000 -> shmix)", &m, 1.5, CPU_SHARE);
    assert_tone(&rig, "rate in front of shmix", 1.5, 997.0, db20(0.5));
}

//! PCM semantics through shmix, checked with numbers and samples: which copy path ran (the
//! plugin's counters), non-blocking programs neither busy-loop nor lose frames, odd period
//! sizes, delay/pause/drop/drain/abort/status/wait from a C program on alsa-lib's API, no
//! descriptor leaks over many open/close cycles, and the daemon's recovery from a device xrun.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

const RATE: u32 = 48000;
const CH: usize = 2;

fn aplay(rig: &Rig, extra: &[&str], wav: &Path) -> Command {
    let mut c = rig.cmd("aplay");
    c.args(["-D", "shmix"]).args(extra).arg(wav);
    c
}

/// A `key : value` number from `aplay -v`'s setup dump.
fn aplay_setup_value(out: &str, key: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The recording as pieces of `sound` (stereo frames): see [`pieces_of`].
fn pieces(rec: &[i16], sound: &[i16], what: &str) -> Vec<Piece> {
    pieces_of(rec, sound, CH, what)
}

/// A C run that wrote part of `first` (`written1` frames), then all of `second` (`written2`),
/// and the recording split into pieces of the two sounds one after the other.
struct Bursts {
    w1: usize,
    w2: usize,
    /// Frames of `first`: where `second` starts in the pieces' `sound_at`.
    n1: usize,
    p: Vec<Piece>,
}

fn two_bursts(rig: &Rig, rep: &CReport, first: &[i16], second: &[i16], what: &str) -> Bursts {
    let (w1, w2) = (rep.number("written1"), rep.number("written2"));
    assert_eq!(w2, second.len() / CH);
    let both: Vec<i16> = first.iter().chain(second).copied().collect();
    Bursts { w1, w2, n1: first.len() / CH, p: pieces(&rig.recording_s16(), &both, what) }
}

/// Asserts the recording is exactly `sound[..frames]`, contiguous, with silence around it.
fn assert_prefix_played(rig: &Rig, sound: &[i16], frames: usize, what: &str) {
    assert!(frames > 0 && frames * CH <= sound.len(), "{what}: {frames} frames written");
    assert_contiguous(&rig.recording_s16(), &sound[..frames * CH], CH, what);
}

// ----- 1. the plugin's counters prove which copy path ran ------------------------------------

/// `frames copied C, zero-copy Z, xruns X` from the plugin's close line.
fn counters(stderr: &str) -> (u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("shmix: frames copied "))
        .unwrap_or_else(|| panic!("no counters line from the plugin (SHMIX_DEBUG=1):\n{stderr}"));
    let nums: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    assert_eq!(nums.len(), 3, "unexpected counters line {line:?}");
    (nums[0], nums[1], nums[2])
}

fn counters_for(mmap: bool) {
    let rig = Rig::new(Card::default(), &[]);
    let sound = stereo_noise(101, 1.0);
    let frames = (sound.len() / CH) as u64;
    let wav = rig.path("noise.wav");
    write_wav(&wav, 2, RATE, &sound);
    let extra: &[&str] = if mmap { &["-v", "--mmap"] } else { &["-v"] };
    let mut c = aplay(&rig, extra, &wav);
    c.env("SHMIX_DEBUG", "1");
    let r = run(c, Duration::from_secs(30));
    r.assert_ok("aplay");
    let all = format!("{}\n{}", r.stdout, r.stderr);
    // aplay pads its last chunk (one period) with silence: that is written too.
    let period = aplay_setup_value(&all, "period_size").expect("period_size in aplay -v");
    let sent = frames.div_ceil(period) * period;
    let (copied, zero, xruns) = counters(&r.stderr);
    eprintln!("mmap={mmap}: period {period}, sent {sent}: copied {copied}, zero-copy {zero}, xruns {xruns}");
    if mmap {
        assert!(
            r.stderr.contains("shmix: prepare: mmap areas point at shared memory"),
            "mmap areas were not re-pointed:\n{}",
            r.stderr
        );
        assert_eq!((copied, zero), (0, sent), "aplay --mmap: copied/zero-copy frames");
    } else {
        assert_eq!((copied, zero), (sent, 0), "aplay (RW): copied/zero-copy frames");
    }
    assert_eq!(xruns, 0, "xruns during a plain aplay");
    assert_contiguous(&rig.recording_s16(), &sound, CH, if mmap { "aplay --mmap" } else { "aplay" });
}

#[test]
fn counters_rw_copies_every_frame() {
    counters_for(false);
}

#[test]
fn counters_mmap_copies_no_frame() {
    counters_for(true);
}

// ----- 2. non-blocking programs: bit-exact, and they sleep ---------------------------------

fn nonblocking(extra: &[&str]) {
    let rig = Rig::new(Card::default(), &[]);
    let secs = 2.0;
    let sound = stereo_noise(201, secs);
    let wav = rig.path("noise.wav");
    write_wav(&wav, 2, RATE, &sound);
    let (r, ru) = run_rusage(aplay(&rig, extra, &wav), Duration::from_secs(30), |_, _| {});
    r.assert_ok("aplay -N");
    let wall = r.wall.as_secs_f64();
    let cpu = cpu_secs(&ru);
    eprintln!("aplay {extra:?}: wall {wall:.3} s, cpu {cpu:.3} s ({:.1} %)", 100.0 * cpu / wall);
    assert!(wall >= secs * 0.9 && wall <= secs * 1.1 + 1.0, "aplay took {wall:.3} s for {secs} s of audio");
    assert!(cpu < 0.2 * wall, "aplay {extra:?} used {cpu:.3} s CPU in {wall:.3} s: a busy loop");
    assert_contiguous(&rig.recording_s16(), &sound, CH, &format!("aplay {extra:?}"));
}

#[test]
fn nonblocking_rw_is_bit_exact_and_sleeps() {
    nonblocking(&["-q", "-N"]);
}

#[test]
fn nonblocking_mmap_is_bit_exact_and_sleeps() {
    nonblocking(&["-q", "-N", "--mmap"]);
}

// ----- 3. period sizes ----------------------------------------------------------------------

/// `aplay --period-size=P --buffer-size=B` on a daemon with `daemon_args`: negotiated exactly,
/// bit-exact.
fn period_size(p: u64, buffer: u64, daemon_args: &[&str]) {
    let rig = Rig::new(Card::default(), daemon_args);
    let sound = stereo_noise(300 + p as u32, 1.0);
    let wav = rig.path("noise.wav");
    write_wav(&wav, 2, RATE, &sound);
    let (ps, bs) = (format!("--period-size={p}"), format!("--buffer-size={buffer}"));
    let r = run(aplay(&rig, &["-v", &ps, &bs], &wav), Duration::from_secs(30));
    r.assert_ok("aplay");
    let all = format!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(aplay_setup_value(&all, "period_size"), Some(p), "negotiated period:\n{all}");
    assert_eq!(aplay_setup_value(&all, "buffer_size"), Some(buffer), "negotiated buffer:\n{all}");
    assert!(!all.contains("underrun"), "underrun with period {p}:\n{all}");
    assert_contiguous(&rig.recording_s16(), &sound, CH, &format!("period {p} buffer {buffer}"));
}

/// The plugin's minimum buffer is two device periods (512 frames at the default --period 256);
/// keep the buffer a multiple of the period, and at least 8192 frames (171 ms): aplay is not a
/// real-time program, and with 512 (11 ms), later 2048 (43 ms), it underran now and then while
/// the whole suite loaded the 2-core machine (period 104 at load 9). The period under test, and
/// so the transfer and wake-up pattern, stays P; only the slack for scheduling grows.
fn buffer_for(p: u64) -> u64 {
    p * 4u64.max(8192u64.div_ceil(p))
}

#[test]
fn period_64_is_bit_exact() {
    period_size(64, buffer_for(64), &[]);
}

#[test]
fn period_104_is_bit_exact() {
    period_size(104, buffer_for(104), &[]);
}

#[test]
fn period_940_is_bit_exact() {
    period_size(940, buffer_for(940), &[]);
}

#[test]
fn period_4096_is_bit_exact() {
    period_size(4096, buffer_for(4096), &[]);
}

// ----- 4. the C program -----------------------------------------------------------------------

/// What the C program reported.
#[derive(Debug)]
pub(crate) struct CReport {
    out: String,
}

impl CReport {
    /// The `sample T0 T1 WRITTEN DELAY` lines of the `truth` command: CLOCK_MONOTONIC ns around
    /// the `snd_pcm_delay` call, frames written, the delay it gave.
    pub(crate) fn samples(&self) -> Vec<(u64, u64, u64, i64)> {
        self.out
            .lines()
            .filter_map(|l| l.strip_prefix("sample "))
            .map(|l| {
                let v: Vec<&str> = l.split_whitespace().collect();
                (v[0].parse().unwrap(), v[1].parse().unwrap(), v[2].parse().unwrap(), v[3].parse().unwrap())
            })
            .collect()
    }

    fn number(&self, key: &str) -> usize {
        self.out
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no `{key}` line:\n{}", self.out))
    }

    fn value(&self, name: &str) -> f64 {
        let key = format!("value {name} ");
        self.out
            .lines()
            .find_map(|l| l.strip_prefix(&key).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no value {name}:\n{}", self.out))
    }
}

/// Runs the C program with `args`; every `check` line must say ok and the named checks must
/// all be there.
pub(crate) fn run_c(rig: &Rig, args: &[&str], expect_checks: &[&str]) -> CReport {
    let exe = compile_c(rig, "pcm_semantics");
    let mut c = rig.cmd(&exe);
    c.args(args);
    let r = run(c, Duration::from_secs(60));
    let out = r.stdout.clone();
    eprintln!("pcm_semantics {args:?}:\n{out}{}", r.stderr);
    let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("check ") && !l.contains(" ok")).collect();
    assert!(
        failed.is_empty(),
        "pcm_semantics {args:?}: failed checks:\n{}\n\nfull output:\n{out}\n{}",
        failed.join("\n"),
        r.stderr
    );
    for name in expect_checks {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("check {name} ok"))),
            "pcm_semantics {args:?}: check {name} missing:\n{out}\n{}\ndaemon log:\n{}",
            r.stderr,
            rig.daemon_log()
        );
    }
    r.assert_ok(&format!("pcm_semantics {args:?}"));
    CReport { out }
}

#[test]
fn c_delay_status_wait_and_drain() {
    let rig = Rig::new(Card::default(), &[]);
    let sound = stereo_noise(401, 3.0);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    let rep = run_c(
        &rig,
        &["basic", raw.to_str().unwrap()],
        &[
            "delay_after_prepare",
            "delay_before_start",
            "delay_full_before_start",
            "status_after_start",
            "delay_while_running",
            "wait_full_buffer_times_out",
            "drain",
        ],
    );
    eprintln!(
        "delay min {} max {} over {} samples; drain {:.1} ms for {:.1} ms queued; wait(10) {:.1} ms",
        rep.value("delay_min_frames"),
        rep.value("delay_max_frames"),
        rep.value("delay_samples"),
        rep.value("drain_ms"),
        rep.value("drain_queued_ms"),
        rep.value("wait_ms")
    );
    // Everything written, including the two periods written before start, was heard once.
    assert_prefix_played(&rig, &sound, rep.number("written"), "C basic");
}

/// The daemon's device period in frames, from its startup line ("... period N frames").
pub fn daemon_period(rig: &Rig) -> u64 {
    let log = rig.daemon_log();
    log.lines()
        .find_map(|l| {
            l.split(", period ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no device period in the daemon log:\n{log}"))
}

/// The card's clock starts (`clock_file` lines `start NS FRAMES`): frames of the recording the
/// card has played at CLOCK_MONOTONIC `ns`.
pub fn card_played_at(starts: &[(u64, u64)], rate: u32, ns: u64) -> f64 {
    let (s_ns, f0) = starts.iter().rev().find(|(s, _)| *s <= ns).copied().unwrap_or((ns, 0));
    f0 as f64 + (ns - s_ns) as f64 * f64::from(rate) / 1e9
}

pub fn read_clock_file(path: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(path).expect("clock_file");
    text.lines()
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
            (v[0], v[1])
        })
        .collect()
}

/// How far `delay` lies outside the truth over its sample's interval: `hi` at its start, `lo` at
/// its end (the truth only shrinks meanwhile); 0 within, signed (+ over, - under) outside.
pub fn off_the_truth(delay: i64, hi: f64, lo: f64) -> f64 {
    let d = delay as f64;
    if d > hi {
        d - hi
    } else if d < lo {
        d - lo
    } else {
        0.0
    }
}

/// The largest and the mean signed error (frames) of `(t0 ns, t1 ns, written, delay)` samples
/// against the truth: written minus what the card has played of the stream, whose first frame
/// is recorded at frame `first`. A delay anywhere within the truth over `[t0, t1]` is exact.
pub fn delay_errors(samples: &[(u64, u64, u64, i64)], starts: &[(u64, u64)], rate: u32, first: usize) -> (f64, f64) {
    let truth = |ns: u64, w: u64| {
        let played = (card_played_at(starts, rate, ns) - first as f64).clamp(0.0, w as f64);
        w as f64 - played
    };
    let errs: Vec<f64> = samples.iter().map(|&(t0, t1, w, d)| off_the_truth(d, truth(t0, w), truth(t1, w))).collect();
    let max = errs.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    // The worst samples, for a failure's story (when in the run, what was written and said).
    let mut worst: Vec<usize> = (0..errs.len()).collect();
    worst.sort_by(|&a, &b| errs[b].abs().total_cmp(&errs[a].abs()));
    for &i in worst.iter().take(3) {
        let (t0, t1, w, d) = samples[i];
        eprintln!(
            "sample {i} of {}: {:.1} ms after the first, written {w}, delay {d}, truth {:.1}..{:.1}, error {:+.1}",
            samples.len(),
            (t0 - samples[0].0) as f64 / 1e6,
            truth(t1, w),
            truth(t0, w),
            errs[i]
        );
    }
    let mut abs: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
    abs.sort_by(f64::total_cmp);
    let pct = |q: f64| abs[((abs.len() - 1) as f64 * q) as usize];
    eprintln!(
        "delay |error| percentiles: 50 % {:.0}, 90 % {:.0}, 99 % {:.0} frames; signed: {} under, {} over the truth",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        errs.iter().filter(|e| **e < 0.0).count(),
        errs.iter().filter(|e| **e > 0.0).count()
    );
    (max, errs.iter().sum::<f64>() / errs.len() as f64)
}

/// `pcm_semantics truth` with `args` (none: period 1024, buffer 4096, RW): every delay sample
/// within a device period + 1 ms of the truth; returns (max |error|, mean error) in frames.
fn delay_against_truth(seed: u32, args: &[&str]) -> (f64, f64) {
    delay_against_truth_joined(seed, args, false)
}

/// As [`delay_against_truth`]; with `join`, a second program (aplay playing silence, so the
/// card's recording stays the measured sound) starts while the measured one plays: on the
/// rewindable test card the daemon takes its queue back and mixes it again, and the delay must
/// stay true across that.
fn delay_against_truth_joined(seed: u32, args: &[&str], join: bool) -> (f64, f64) {
    let card = Card { extra: vec!["clock_file \"@DIR@/clock.txt\"".into()], ..Default::default() };
    let rig = Rig::new(card, &[]);
    let sound = stereo_noise(seed, 2.0);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    let mut a = vec!["truth", raw.to_str().unwrap()];
    a.extend_from_slice(args);
    let joiner = join.then(|| {
        let wav = rig.path("silence.wav");
        write_wav(&wav, 2, RATE, &vec![0i16; RATE as usize * 2]);
        let mut c = rig.cmd("aplay");
        c.args(["-q", "-D", "shmix", "--period-size=256", "--buffer-size=1024"]).arg(&wav);
        // It starts while the measured program plays (its first second of two).
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            run(c, Duration::from_secs(30))
        })
    });
    let rep = run_c(&rig, &a, &["truth_drain"]);
    if let Some(j) = joiner {
        j.join().expect("joiner thread").assert_ok("aplay (joining)");
        let rewound =
            rig.daemon_log().lines().rev().find_map(|l| {
                l.split(" rewound ").nth(1).and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            });
        eprintln!("joined: the daemon took back {rewound:?} frames in all");
    }
    let samples = rep.samples();
    let first = assert_contiguous(&rig.recording_s16(), &sound, CH, "C truth");
    let starts = read_clock_file(&rig.path("clock.txt"));
    assert!(!starts.is_empty(), "the card logged no clock start");
    let (max, mean) = delay_errors(&samples, &starts, RATE, first);
    let period = daemon_period(&rig);
    let bound = period as f64 + f64::from(RATE) / 1000.0;
    eprintln!(
        "delay vs card clock {args:?}: {} samples, max |error| {max:.1} frames ({:.2} ms), mean {mean:+.1} frames; \
         bound {bound} (device period {period} + 1 ms)",
        samples.len(),
        max * 1000.0 / f64::from(RATE)
    );
    assert!(samples.iter().all(|s| s.3 >= 0), "negative delay");
    assert!(max <= bound, "delay off the truth by {max:.1} frames (bound {bound})");
    // Measured: about 3 frames. The errors are against timestamps taken around each call, so
    // scheduling does not enter; a stream's start behind the device's queue once cost up to a
    // device period (see the daemon's publish_timing): keep that from coming back.
    let tight = 2.0 * f64::from(RATE) / 1000.0;
    assert!(max <= tight, "delay off the truth by {max:.1} frames, more than 2 ms ({tight} frames)");
    (max, mean)
}

#[test]
fn c_delay_matches_the_card_clock() {
    delay_against_truth(451, &[]);
}

#[test]
fn c_delay_matches_the_card_clock_mmap_period_64() {
    // 128 periods (171 ms): the sampling loop sleeps 3 ms between looks, which a loaded machine
    // stretches; with 32 (43 ms) the non-real-time client underran now and then. The bound is a
    // device period + 1 ms whatever the buffer, and the period under test stays 64.
    delay_against_truth(452, &["64", "8192", "mmap"]);
}

#[test]
fn c_delay_matches_the_card_clock_period_940() {
    delay_against_truth(453, &["940", "3760", "rw"]);
}

/// A big queue: 125 ms periods keep the device about 80 ms deep with timer scheduling.
#[test]
fn c_delay_matches_the_card_clock_big_queue() {
    delay_against_truth(454, &["6000", "24000", "rw"]);
}

/// A program joining halfway: the daemon rewinds the queue and mixes it again.
#[test]
fn c_delay_matches_the_card_clock_across_a_join() {
    delay_against_truth_joined(455, &["6000", "24000", "rw"], true);
}

#[test]
fn c_status_timestamps_after_an_underrun_are_sane() {
    let rig = Rig::new(Card::default(), &[]);
    let sound = stereo_noise(461, 2.0);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    let rep = run_c(&rig, &["xrun_status", raw.to_str().unwrap()], &["xrun_status", "restart_trigger"]);
    // alsa-lib's ioplug keeps the trigger timestamp to itself and sets it only at start, pause
    // and drop, so an underrun's length reads as the time since the start: bounded, not the
    // time since the underrun (a kernel driver's trigger moves to the xrun).
    eprintln!(
        "underrun: status says {:.1} ms, the last write was {:.1} ms before",
        rep.value("xrun_underrun_ms"),
        rep.value("xrun_since_last_write_ms")
    );
}

#[test]
fn c_pause_loses_and_repeats_nothing() {
    let rig = Rig::new(Card::default(), &[]);
    let sound = stereo_noise(501, 1.5);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    let rep = run_c(&rig, &["pause", raw.to_str().unwrap()], &["can_pause", "paused_holds", "pause_drain"]);
    let written = rep.number("written");
    assert_eq!(written, sound.len() / CH);
    let paused_ms = rep.value("paused_ms");
    let p = pieces(&rig.recording_s16(), &sound, "pause");
    // Exactly: sound[..k], a silent gap while paused, sound[k..]: nothing lost, nothing twice.
    assert_eq!(p.len(), 2, "expected the sound in two pieces around the pause, got {p:?}");
    assert_eq!(p[0].sound_at, 0, "{p:?}");
    assert_eq!(p[1].sound_at, p[0].len, "pause lost or repeated frames: {p:?}");
    assert_eq!(p[1].sound_at + p[1].len, written, "the end of the sound is missing: {p:?}");
    let gap = p[1].rec_at - (p[0].rec_at + p[0].len);
    let gap_ms = gap as f64 * 1000.0 / f64::from(RATE);
    eprintln!("pause: {paused_ms:.1} ms paused, recording gap {gap_ms:.1} ms after {} frames", p[0].len);
    // The device keeps playing what it already had (its buffer is 1024 frames, 21 ms), so the
    // gap is the pause less at most that, plus scheduling.
    assert!(
        gap_ms > paused_ms - 60.0 && gap_ms < paused_ms + 200.0,
        "gap {gap_ms:.1} ms for a {paused_ms:.1} ms pause"
    );
}

#[test]
fn c_drop_then_second_burst_is_bit_exact() {
    let rig = Rig::new(Card::default(), &[]);
    let first = stereo_noise(601, 1.0);
    let second = stereo_noise(602, 0.5);
    let (r1, r2) = (rig.path("first.raw"), rig.path("second.raw"));
    write_raw(&r1, &first);
    write_raw(&r2, &second);
    let rep = run_c(
        &rig,
        &["drop", r1.to_str().unwrap(), r2.to_str().unwrap()],
        &["drop", "drop_again", "prepared_after_drop", "drop_second_burst_drain"],
    );
    let Bursts { w1, w2, n1, p } = two_bursts(&rig, &rep, &first, &second, "drop");
    eprintln!("drop: wrote {w1} frames of the first burst, recording pieces {p:?}");
    // A prefix of the first burst (dropped mid-stream), then the whole second burst.
    assert_eq!(p.len(), 2, "expected a prefix of burst 1 and all of burst 2, got {p:?}");
    assert_eq!(p[0].sound_at, 0, "{p:?}");
    assert!(p[0].len > 0, "nothing of the first burst played before the drop: {p:?}");
    // The drop discarded what was queued: at most the device's buffer (1024) of the client's
    // full 4096-frame buffer may still have played.
    assert!(p[0].len + 2048 <= w1, "drop played {} of {w1} written frames: it did not discard the queue", p[0].len);
    assert_eq!((p[1].sound_at, p[1].len), (n1, w2), "second burst not complete: {p:?}");
}

#[test]
fn c_nonblocking_drain_says_eagain_then_completes() {
    let rig = Rig::new(Card::default(), &[]);
    let sound = stereo_noise(701, 0.5);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    let rep = run_c(&rig, &["nonblock", raw.to_str().unwrap()], &["nonblock_drain_eagain", "nonblock_drain_completes"]);
    eprintln!("nonblocking drain: {} wait+drain rounds", rep.value("nonblock_drain_loops"));
    assert_prefix_played(&rig, &sound, rep.number("written"), "C nonblock");
}

#[test]
fn c_abort_interrupts_a_blocking_drain() {
    let rig = Rig::new(Card::default(), &[]);
    let sound = stereo_noise(801, 2.0);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    let rep = run_c(&rig, &["abort", raw.to_str().unwrap()], &["abort_drain", "drop_after_abort"]);
    eprintln!("abort: drain returned after {:.1} ms", rep.value("abort_drain_ms"));
    // What played is a clean prefix of the sound.
    let p = pieces(&rig.recording_s16(), &sound, "abort");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].sound_at, 0, "{p:?}");
}

#[test]
fn c_abort_from_another_thread_interrupts_a_blocking_drain() {
    let rig = Rig::new(Card::default(), &[]);
    let sound = stereo_noise(811, 2.0);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    let rep = run_c(&rig, &["abort_thread", raw.to_str().unwrap()], &["abort_thread_drain", "drop_after_abort_thread"]);
    eprintln!("abort from a thread: drain returned after {:.1} ms", rep.value("abort_thread_drain_ms"));
    let p = pieces(&rig.recording_s16(), &sound, "abort from a thread");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].sound_at, 0, "{p:?}");
}

// ----- 5. open/close cycles leak nothing ----------------------------------------------------

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/pid/fd").count()
}

fn memfd_maps(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps").lines().filter(|l| l.contains("memfd:")).count()
}

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .expect("VmRSS")
}

#[test]
fn open_close_cycles_leak_no_descriptor() {
    let rig = Rig::new(Card::default(), &[]);
    let pid = rig.daemon_pid();
    // Let the mix thread start the device, and warm the daemon's allocations with 100 cycles,
    // before counting.
    std::thread::sleep(Duration::from_millis(200));
    run_c(&rig, &["cycles", "100"], &["cycles_client_fds"]);
    std::thread::sleep(Duration::from_millis(200));
    let (fds0, maps0, rss0) = (fd_count(pid), memfd_maps(pid), rss_kb(pid));
    let n = 1000;
    let rep = run_c(&rig, &["cycles", &n.to_string()], &["cycles_client_fds", "cycles_client_memory"]);
    // The daemon retires closed streams asynchronously: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut fds1, mut maps1) = (fd_count(pid), memfd_maps(pid));
    while (fds1 > fds0 + 2 || maps1 > maps0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        (fds1, maps1) = (fd_count(pid), memfd_maps(pid));
    }
    let rss1 = rss_kb(pid);
    eprintln!(
        "{n} cycles: daemon fds {fds0} -> {fds1}, memfd mappings {maps0} -> {maps1}, RSS {rss0} -> {rss1} kB; client \
         heap in use +{} bytes, RSS +{} kB",
        rep.value("cycles_heap_growth_bytes"),
        rep.value("cycles_rss_growth_kb")
    );
    assert!(fds1 <= fds0 + 2, "daemon fds grew from {fds0} to {fds1} over {n} open/close cycles");
    assert_eq!(maps1, maps0, "daemon keeps stream mappings after {n} open/close cycles");
    // A leak of even 1 kB per stream would be 1000 kB here.
    assert!(rss1 <= rss0 + 512, "daemon RSS grew from {rss0} to {rss1} kB over {n} open/close cycles");
    let log = rig.daemon_log();
    let bad: Vec<&str> =
        log.lines().filter(|l| l.starts_with("shmixd WARN") || l.starts_with("shmixd ERROR")).collect();
    assert!(bad.is_empty(), "daemon warned during open/close cycles:\n{}", bad.join("\n"));
}

// ----- 6. device xrun recovery ----------------------------------------------------------------

#[test]
fn device_xrun_loses_at_most_the_device_buffer() {
    // The xrun comes 1.5 s after the card's first start; aplay's start-up is measured (the
    // silence the card played before the sound), not assumed.
    const XRUN_MS: usize = 1500;
    let mut rig = Rig::new(Card { extra: vec![format!("xrun_at_ms {XRUN_MS}")], ..Default::default() }, &[]);
    let sound = stereo_noise(901, 3.0);
    let wav = rig.path("noise.wav");
    write_wav(&wav, 2, RATE, &sound);
    let mut c = aplay(&rig, &["-q"], &wav);
    c.env("SHMIX_DEBUG", "1");
    let r = run(c, Duration::from_secs(30));
    r.assert_ok("aplay");
    assert!(!r.stderr.contains("underrun"), "the client saw an xrun for the device's:\n{}", r.stderr);
    assert_eq!(counters(&r.stderr).2, 0, "plugin counted xruns");
    let st = rig.signal_daemon(libc::SIGTERM);
    assert!(st.success(), "shmixd exited with {st}");
    let log = rig.daemon_log();
    let stats =
        log.lines().rev().find(|l| l.contains("device xruns")).unwrap_or_else(|| panic!("no stats line:\n{log}"));
    assert!(stats.contains("device xruns 1 "), "expected exactly one device xrun: {stats}");
    // The device buffer, from the daemon's startup line ("... buffer N frames").
    let dev_buffer: usize = log
        .lines()
        .find_map(|l| l.split("buffer ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no device buffer in the log:\n{log}"));
    let n = sound.len() / CH;
    let p = pieces(&rig.recording_s16(), &sound, "device xrun");
    eprintln!("device xrun: device buffer {dev_buffer}, recording pieces {p:?}");
    // Like a real card: what it had played stays; what sat in its buffer at the xrun is lost
    // (never more than that buffer); after the restart (silence prefill) the stream continues
    // where the daemon had read to, up to the sound's end.
    assert!(!p.is_empty() && p[0].sound_at == 0, "{p:?}");
    // The card's timeline: frame `rec` of the recording was played `rec / RATE` s after its start.
    let xrun_frame = XRUN_MS * RATE as usize / 1000;
    let slack = RATE as usize / 5; // 200 ms: the device buffer and the xrun's own timing
    assert!(
        p[0].rec_at + slack <= xrun_frame,
        "aplay's sound began {} ms after the card started, too late for the xrun at {XRUN_MS} ms: {p:?}",
        p[0].rec_at * 1000 / RATE as usize
    );
    let last = p.last().unwrap();
    assert_eq!(last.sound_at + last.len, n, "the sound's end is missing: {p:?}");
    assert!(p.len() <= 2, "more than one discontinuity: {p:?}");
    if let [a, b] = p[..] {
        let lost = b.sound_at.checked_sub(a.len).unwrap_or_else(|| panic!("frames repeated: {p:?}"));
        assert!(lost <= dev_buffer, "lost {lost} frames, more than the device buffer {dev_buffer}: {p:?}");
        // What the card played before the xrun stays: the bit-exact prefix reaches to within
        // 200 ms of the xrun on the card's timeline, wherever aplay's start put its beginning.
        assert!(
            a.rec_at + a.len + slack >= xrun_frame,
            "the bit-exact prefix ends at card frame {}, more than 200 ms before the xrun at {xrun_frame}: {p:?}",
            a.rec_at + a.len
        );
        eprintln!("device xrun: prefix {} frames, lost {lost}, gap {} frames", a.len, b.rec_at - (a.rec_at + a.len));
    }
}

#[test]
fn c_short_sound_below_start_threshold_plays_on_drain() {
    let rig = Rig::new(Card::default(), &[]);
    // 700 frames: less than a period (1024) and far below the start threshold.
    let n = 700;
    let sound = interleave(&[noise(1001, n, 30000), noise(1002, n, 30000)]);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    let rep = run_c(&rig, &["short", raw.to_str().unwrap()], &["short_not_started", "short_drain"]);
    assert_eq!(rep.number("written"), n);
    assert_prefix_played(&rig, &sound, n, "C short");
}

#[test]
fn c_delay_holds_while_the_daemon_stalls() {
    let rig = Rig::new(Card::default(), &[]);
    let sound = stereo_noise(1101, 1.5);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    // The C program SIGSTOPs the daemon for 60 ms (less than its 171 ms buffer, 8192 frames: with
    // 4096 the non-real-time client itself underran now and then on the loaded machine) and
    // samples the delay meanwhile: nothing is consumed, so it must stay at least the buffer's fill.
    let pid = rig.daemon_pid().to_string();
    let rep = run_c(&rig, &["stall", raw.to_str().unwrap(), &pid], &["stall_delay_holds", "stall_drain"]);
    eprintln!("stall: minimum delay {} frames", rep.value("stall_min_delay_frames"));
    // The device xruns during the stall (its buffer is 21 ms): what it held is lost, nothing else.
    let p = pieces(&rig.recording_s16(), &sound, "stall");
    let n = rep.number("written");
    assert!(p.len() <= 2 && p[0].sound_at == 0, "{p:?}");
    let last = p.last().unwrap();
    assert_eq!(last.sound_at + last.len, n, "{p:?}");
    if let [a, b] = p[..] {
        assert!(b.sound_at >= a.len && b.sound_at - a.len <= 1024, "lost more than the device buffer: {p:?}");
    }
}

// ----- 7. snd_pcm_reset ---------------------------------------------------------------------

/// `pcm_semantics reset S1 S2 running|prepared [mmap]`: S1's queued frames are discarded at the
/// reset (never played), positions restart (avail = buffer, delay 0, checked in C), and S2
/// written afterwards plays completely, bit-exact, right after what S1 had played.
fn reset_playback(seed: u32, running: bool, mmap: bool) {
    let rig = Rig::new(Card::default(), &[]);
    let first = stereo_noise(seed, 1.0);
    let second = stereo_noise(seed + 1, 0.5);
    let (r1, r2) = (rig.path("first.raw"), rig.path("second.raw"));
    write_raw(&r1, &first);
    write_raw(&r2, &second);
    let mut args = vec!["reset", r1.to_str().unwrap(), r2.to_str().unwrap()];
    args.push(if running { "running" } else { "prepared" });
    if mmap {
        args.push("mmap");
    }
    let check = if running { "reset_running" } else { "reset_prepared" };
    let rep = run_c(&rig, &args, &[check, "reset_again", "reset_drain"]);
    let Bursts { w1, w2, n1, p } = two_bursts(&rig, &rep, &first, &second, "reset");
    eprintln!("reset {args:?}: wrote {w1} frames of the first sound, recording pieces {p:?}");
    let last = p.last().unwrap_or_else(|| panic!("nothing played"));
    assert_eq!((last.sound_at, last.len), (n1, w2), "the sound written after the reset is not complete: {p:?}");
    if running {
        // A prefix of S1 (it ran 400 ms), then all of S2: the reset discarded the queue, of
        // which at most the device's buffer (1024) may have played (as for a drop).
        assert_eq!(p.len(), 2, "expected a prefix of the first sound and all of the second, got {p:?}");
        assert_eq!(p[0].sound_at, 0, "{p:?}");
        assert!(p[0].len > 0, "nothing of the first sound played before the reset: {p:?}");
        assert!(
            p[0].len + 2048 <= w1,
            "{} of {w1} frames written before the reset played: it did not discard the queue",
            p[0].len
        );
    } else {
        // Never started: nothing of S1 may play.
        assert_eq!(p.len(), 1, "frames written before the reset played: {p:?}");
    }
}

#[test]
fn c_reset_while_running_discards_the_queue() {
    reset_playback(701, true, false);
}

#[test]
fn c_reset_while_running_discards_the_queue_mmap() {
    reset_playback(703, true, true);
}

#[test]
fn c_reset_while_prepared_discards_what_was_written() {
    reset_playback(705, false, false);
}

#[test]
fn c_reset_capture_discards_the_unread_frames() {
    let n = 5 * RATE as usize;
    let source = interleave(&[noise(711, n, 30000), noise(712, n, 30000)]);
    let bytes: Vec<u8> = source.iter().flat_map(|v| v.to_le_bytes()).collect();
    // The reset stops and restarts the daemon side of the stream; with it the only recorder,
    // the daemon would close the card in between and the virtual card's capture file would
    // start over. Keep the card running so that the source's frame numbers are a timeline.
    let rig = Rig::with_capture(Card::default(), &["--keep-capture-open"], Some(&bytes));
    let (pre, post) = (rig.path("pre.raw"), rig.path("post.raw"));
    let rep = run_c(&rig, &["reset_capture", pre.to_str().unwrap(), post.to_str().unwrap()], &["reset_capture"]);
    let unread = rep.number("unread_before_reset");
    let read = |p: &Path| -> Vec<i16> {
        std::fs::read(p).unwrap().chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
    };
    let (a, b) = (read(&pre), read(&post));
    let ra = crate::capture::run_of(&a, &source, CH, "before the reset");
    let rb = crate::capture::run_of(&b, &source, CH, "after the reset");
    eprintln!("reset capture: {unread} frames unread at the reset; before {ra:?}, after {rb:?}");
    // What was read before ends where the recording ends (nothing after it was silent).
    assert_eq!(ra.rec_start + ra.frames, a.len() / CH, "silence inside the capture before the reset: {ra:?}");
    let end_a = ra.src_start + ra.frames;
    // The frames unread at the reset are never read: the next frame read after it is at least
    // that far behind the last one read before. And nothing repeats.
    let gap = rb.src_start.checked_sub(end_a).unwrap_or_else(|| panic!("frames read twice: {ra:?} {rb:?}"));
    assert!(gap >= unread, "only {gap} frames skipped, but {unread} were unread at the reset: they were delivered");
    // ...and not much more (the reset takes about a daemon period; a loaded machine more).
    assert!(gap <= unread + RATE as usize / 2, "{gap} frames skipped at the reset ({unread} unread then)");
}

/// A child forked while the stream plays writes to its copy of the PCM (refused), closes it and
/// exits; the parent plays on and the card has the whole sound, bit-exact (audit finding 7:
/// without the fork check the child's close stopped and destroyed the parent's stream).
#[test]
fn c_fork_child_leaves_the_parents_stream_alone() {
    let rig = Rig::new(Card::default(), &[]);
    let sound = stereo_noise(721, 1.5);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    run_c(&rig, &["fork", raw.to_str().unwrap()], &["fork_child_refused", "fork_drain"]);
    assert_contiguous(&rig.recording_s16(), &sound, CH, "the parent's stream across the child's close");
}

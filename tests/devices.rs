//! Several devices (issue 14): one shmixd serving several virtual cards (`--device` each), checked
//! on what reached each card. Streams pinned to a card (plugin key `device`, `SHMIX_DEVICE`)
//! play there bit-exact; `shmixctl devices` lists the cards; `shmixctl move` moves a playing
//! stream or a recorder to another card, losing and repeating nothing (also across a format and
//! rate change, and 1000 times in a row); `shmixctl default` moves the streams that follow the
//! default and leaves the pinned ones; a default card that vanishes (`gone_file`) hands its
//! following streams to the next card and takes them back when it returns, while its pinned
//! streams wait; each device stops on its own when idle.
//!
//! What may split a sound without losing anything: a device xrun (a stall of the machine; the
//! card plays silence, the daemon counts it, nothing is lost). What may lose frames: only a card
//! that vanishes (what sat in its buffer goes with it). Every other discontinuity is a failure.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shmix_shared::control::{self, DeviceInfo, Reply, Request};
use shmix_shared::{SocketMsg, PROTOCOL_VERSION};

use crate::common::analysis::*;
use crate::common::*;

const RATE: u32 = 48000;
const CH: usize = 2;
/// How long a listing may take to show what a command did (a move, an unplug, a return).
const SETTLE: Duration = Duration::from_secs(10);
/// Most frames a vanished card may take with it: what sat in its buffer (the daemon's queue,
/// at most a music player's step, 270 ms on a card that may be rewound); the streams' rings in
/// these tests hold at least 750 ms (aplay `-B 1000000`), so losing a ring is caught.
const MAX_UNPLUG_LOSS: usize = 24000;

// ----- programs ---------------------------------------------------------------------------------

/// `aplay -q -D PCM EXTRA... WAV` in the background (output piped).
fn spawn_aplay(rig: &Rig, pcm: &str, extra: &[&str], wav: &Path) -> Child {
    let mut c = rig.cmd("aplay");
    c.args(["-q", "-D", pcm]).args(extra).arg(wav);
    spawn(c)
}

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")
}

fn wait_ok(child: &mut Child, what: &str) {
    finish(child, Instant::now(), Duration::from_secs(60)).assert_ok(what);
}

/// `secs` of stereo noise from `seed` at 48 kHz, written to `name`.
fn noise_wav(rig: &Rig, name: &str, secs: f64, seed: u32) -> (PathBuf, Vec<i16>) {
    let sound = stereo_noise(seed, secs);
    let wav = rig.path(name);
    write_wav(&wav, 2, RATE, &sound);
    (wav, sound)
}

/// A stereo 48 kHz WAV of one sine per channel (`(frequency, amplitude)`, `None`: silent).
fn tone_wav(rig: &Rig, name: &str, secs: f64, tones: &[Option<(f64, f64)>]) -> PathBuf {
    let frames = (secs * f64::from(RATE)) as usize;
    let bytes = tone_bytes(Fmt::S16Le, RATE, frames, tones);
    let samples: Vec<i16> = bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    let wav = rig.path(name);
    write_wav(&wav, 2, RATE, &samples);
    wav
}

// ----- listings -----------------------------------------------------------------------------------

/// Waits until the stream of `pid` is listed on `device` with `pinned`; returns its listing.
fn wait_stream_on(rig: &Rig, pid: u32, device: &str, pinned: bool) -> Value {
    wait_until(SETTLE, &format!("the stream of pid {pid} listed on {device} (pinned {pinned})"), || {
        let s = rig.streams().into_iter().find(|s| s["pid"] == pid)?;
        (s["device"] == device && s["pinned"] == pinned).then_some(s)
    })
}

/// Waits until `n` streams are listed running.
fn wait_running(rig: &Rig, n: usize) -> Vec<Value> {
    wait_until(SETTLE, &format!("{n} streams running"), || {
        let r: Vec<Value> = rig.streams().into_iter().filter(|s| s["state"] == "running").collect();
        (r.len() >= n).then_some(r)
    })
}

/// Device xruns the daemon counted on card `name` so far (`shmixctl devices`).
fn device_xruns(rig: &Rig, name: &str) -> u64 {
    let d = rig.device(name);
    d["xruns"].as_u64().unwrap_or_else(|| panic!("device {name}: no xruns count: {d}"))
}

/// Waits until card `name` has played `frames` frames past the first non-zero one on `channel`
/// (an S16_LE stereo card): the stream on it has been playing that long.
fn wait_played_on(rig: &Rig, name: &str, channel: usize, frames: usize) {
    wait_until(Duration::from_secs(20), &format!("card {name} playing {frames} frames on channel {channel}"), || {
        let rec = rig.recording_s16_of(name);
        let first = rec.chunks_exact(CH).position(|f| f[channel] != 0)?;
        (rec.len() / CH - first >= frames).then_some(())
    })
}

// ----- checks on what the cards recorded ---------------------------------------------------------------

/// `rec` holds all of `sound` in order, nothing lost or repeated, with silence around it; split
/// only where the daemon counted device xruns on that card (at most `xruns + 1` pieces).
fn assert_whole(rec: &[i16], sound: &[i16], ch: usize, xruns: u64, what: &str) {
    let p = pieces_of(rec, sound, ch, what);
    assert_eq!(p.first().map(|x| x.sound_at), Some(0), "{what}: the start is missing: {p:?}");
    assert!(p.windows(2).all(|w| w[1].sound_at == w[0].sound_at + w[0].len), "{what}: frames lost or repeated: {p:?}");
    assert_eq!(p.last().map(|x| x.sound_at + x.len), Some(sound.len() / ch), "{what}: the end is missing: {p:?}");
    assert!(p.len() as u64 <= xruns + 1, "{what}: {} pieces but {xruns} device xruns: {p:?}", p.len());
}

/// A piece of a sound on a card.
#[derive(Debug, Clone, Copy)]
struct OnCard<'a> {
    card: &'a str,
    piece: Piece,
}

/// The pieces of `sound` on each of `cards` (`(name, recording)`), each card's in its recording's
/// order, which must be the sound's order (nothing played out of order or twice on one card).
/// Returns all of them sorted by their place in the sound.
fn pieces_across<'a>(cards: &[(&'a str, Vec<i16>)], sound: &[i16], ch: usize, what: &str) -> Vec<OnCard<'a>> {
    let mut all = Vec::new();
    for (card, rec) in cards {
        let p = pieces_of(rec, sound, ch, &format!("{what} on card {card}"));
        assert!(
            p.windows(2).all(|w| w[1].sound_at >= w[0].sound_at + w[0].len),
            "{what}: card {card} played the sound out of order or twice: {p:?}"
        );
        all.extend(p.into_iter().map(|piece| OnCard { card, piece }));
    }
    all.sort_by_key(|x| x.piece.sound_at);
    all
}

/// Where the pieces across cards leave a gap in the sound or overlap: `(before, after, gap)` for
/// each neighbouring pair whose second does not start where the first ends (gap < 0: overlap).
fn discontinuities<'a>(all: &[OnCard<'a>]) -> Vec<(OnCard<'a>, OnCard<'a>, i64)> {
    all.windows(2)
        .filter_map(|w| {
            let gap = w[1].piece.sound_at as i64 - (w[0].piece.sound_at + w[0].piece.len) as i64;
            (gap != 0).then_some((w[0], w[1], gap))
        })
        .collect()
}

// ----- an in-process control connection ------------------------------------------------------------

/// One control connection to the daemon, as `shmixctl` makes it (`ctl/src/client.rs`), for
/// requests in a tight loop (1000 moves) and the raw device counters.
#[derive(Debug)]
struct Ctl {
    fd: OwnedFd,
}

impl Ctl {
    fn connect(rig: &Rig) -> Self {
        let hello = SocketMsg::ControlHello { version: PROTOCOL_VERSION, name: "devices-test".into() };
        let c = shmix_shared::connect::connect(&rig.sock, &hello, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("control connection: {e}"));
        Self { fd: c.sock }
    }

    fn call(&self, req: Request) -> Reply {
        control::send_packet(self.fd.as_fd(), &req.encode()).expect("sending a control request");
        let bytes = control::recv_packet(self.fd.as_fd()).expect("waiting for the reply");
        assert!(!bytes.is_empty(), "shmixd closed the control connection after {req:?}");
        let r = Reply::decode(&bytes).unwrap_or_else(|e| panic!("bad reply to {req:?}: {e}"));
        if let Reply::Error { .. } = r {
            panic!("shmixd refused {req:?}: {r:?}");
        }
        r
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        match self.call(Request::Devices) {
            Reply::Devices(d) => d,
            other => panic!("Devices answered {other:?}"),
        }
    }

    fn device_id(&self, name: &str) -> u32 {
        let all = self.devices();
        all.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("no device {name}: {all:?}")).id
    }
}

// ----- 1. several cards at once -----------------------------------------------------------------------

/// Two S16_LE 48 kHz cards, the second's clock 300 ppm fast. Card a: `aplay -D shmix_a` (plugin
/// key `device`) plays stereo noise; card b: `aplay -D shmix_b` plays noise on the left and
/// `SHMIX_DEVICE=b aplay -D shmix` (the environment, no key) on the right; `arecord -D
/// shmix_monitor_b` records card b's mix. Each card has its own sounds bit-exact and nothing of
/// the other's; the monitor has card b's sounds only, in order; `shmixctl list` shows each
/// stream on its card and pinned; `shmixctl devices` lists both, a the default and preferred.
#[test]
fn two_cards_play_their_own_streams_bit_exact() {
    let skewed = Card { extra: vec!["skew_ppm 300".into()], ..Default::default() };
    let rig = Rig::with_cards(&[("a", Card::default()), ("b", skewed)], &[]);
    let (wa, sa) = noise_wav(&rig, "a.wav", 3.0, 1401);
    let (wl, left) = side_wav(&rig, "bl.wav", 3.0, 1402, true);
    let (wr, right) = side_wav(&rig, "br.wav", 3.0, 1403, false);
    let mut pa = spawn_aplay(&rig, "shmix_a", &[], &wa);
    let mut pl = spawn_aplay(&rig, "shmix_b", &[], &wl);
    let mut env = rig.cmd("aplay");
    env.env("SHMIX_DEVICE", "b").args(["-q", "-D", "shmix"]).arg(&wr);
    let mut pr = spawn(env);
    wait_running(&rig, 3);
    let mon_out = rig.path("monitor_b.raw");
    let mut mon = rig.cmd("arecord");
    mon.args(["-q", "-D", "shmix_monitor_b", "-t", "raw", "-f", "S16_LE", "-r", "48000", "-c", "2", "-d", "2"])
        .arg(&mon_out);
    let mut mon = spawn(mon);
    for (pid, dev) in [(pa.id(), "a"), (pl.id(), "b"), (pr.id(), "b")] {
        let s = wait_stream_on(&rig, pid, dev, true);
        assert_eq!(s["direction"], "playback", "{s}");
    }
    let m = wait_until(SETTLE, "the monitor listed", || {
        rig.streams().into_iter().find(|s| s["pid"] == mon.id() && s["direction"] == "monitor")
    });
    assert_eq!((&m["device"], &m["pinned"]), (&Value::from("b"), &Value::from(true)), "{m}");
    let devs = rig.devices();
    assert_eq!(devs.len(), 2, "{devs:?}");
    assert_eq!(devs[0]["name"], "a", "in --device order: {devs:?}");
    assert_eq!(devs[1]["name"], "b", "in --device order: {devs:?}");
    for (d, streams, default) in [(&devs[0], 1, true), (&devs[1], 3, false)] {
        assert_eq!(d["format"], "S16_LE", "{d}");
        assert_eq!((d["rate"].as_u64(), d["channels"].as_u64()), (Some(48000), Some(2)), "{d}");
        assert_eq!(d["state"], "running", "{d}");
        assert_eq!(d["streams"].as_u64(), Some(streams), "streams (playback and monitor): {d}");
        assert_eq!((d["default"].as_bool(), d["preferred"].as_bool()), (Some(default), Some(default)), "{d}");
        assert!(d["capture"].is_boolean() && d["latency_ms"].is_number() && d["queue_frames"].is_number(), "{d}");
        assert!(d["wakeups_per_s"].is_number() && d["cpu_percent"].is_number(), "{d}");
    }
    wait_ok(&mut pa, "aplay -D shmix_a");
    wait_ok(&mut pl, "aplay -D shmix_b");
    wait_ok(&mut pr, "SHMIX_DEVICE=b aplay -D shmix");
    wait_ok(&mut mon, "arecord -D shmix_monitor_b");
    let (xa, xb) = (device_xruns(&rig, "a"), device_xruns(&rig, "b"));
    let (ra, rb) = (rig.recording_s16_of("a"), rig.recording_s16_of("b"));
    assert_whole(&ra, &sa, CH, xa, "card a");
    assert_whole(&channel(&rb, CH, 0), &left, 1, xb, "card b left (shmix_b)");
    assert_whole(&channel(&rb, CH, 1), &right, 1, xb, "card b right (SHMIX_DEVICE=b)");
    // The monitor of card b: card b's sounds (pieces_of refuses anything else, card a's noise
    // too), in order, none twice, 2 s of them.
    let mon: Vec<i16> =
        std::fs::read(&mon_out).unwrap().chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(mon.len(), 2 * RATE as usize * CH, "arecord -d 2 recorded {} samples", mon.len());
    for (c, sound, side) in [(0, &left, "left"), (1, &right, "right")] {
        let p = pieces_of(&channel(&mon, CH, c), sound, 1, &format!("monitor of b, {side}"));
        assert!(p.windows(2).all(|w| w[1].sound_at >= w[0].sound_at + w[0].len), "monitor {side}: {p:?}");
        let heard: usize = p.iter().map(|x| x.len).sum();
        assert!(heard >= RATE as usize, "the monitor of b heard only {heard} frames of its {side} sound: {p:?}");
    }
}

/// Three cards of different setups at once: a S16_LE 48 kHz, b S16_LE 48 kHz with its clock
/// 500 ppm fast, c S32_LE 44.1 kHz with its clock 300 ppm slow. The same 48 kHz S16 program on
/// each (`aplay -D shmix_NAME`): a and b get their noise bit-exact; c gets the tone (997 Hz left,
/// 1499 Hz right, half scale) at its frequency and level, as long as the sound (converted to
/// 44.1 kHz). While they play, `shmixctl devices` lists each card's format, rate, one stream
/// and the default (a).
#[test]
fn three_cards_of_different_formats_play_at_once() {
    let cards = [
        ("a", Card::default()),
        ("b", Card { extra: vec!["skew_ppm 500".into()], ..Default::default() }),
        ("c", Card { format: "S32_LE", rate: 44100, channels: 2, extra: vec!["skew_ppm -300".into()] }),
    ];
    let rig = Rig::with_cards(&cards, &[]);
    let secs = 3.0;
    let (wa, sa) = noise_wav(&rig, "a.wav", secs, 1411);
    let (wb, sb) = noise_wav(&rig, "b.wav", secs, 1413);
    let (fl, fr) = (997.0, 1499.0);
    let wc = tone_wav(&rig, "c.wav", secs, &[Some((fl, 0.5)), Some((fr, 0.5))]);
    let mut players: Vec<Child> = [("shmix_a", &wa), ("shmix_b", &wb), ("shmix_c", &wc)]
        .iter()
        .map(|(pcm, wav)| spawn_aplay(&rig, pcm, &[], wav))
        .collect();
    wait_running(&rig, 3);
    for (p, dev) in players.iter().zip(["a", "b", "c"]) {
        wait_stream_on(&rig, p.id(), dev, true);
    }
    let devs = rig.devices();
    assert_eq!(devs.iter().map(|d| d["name"].clone()).collect::<Vec<_>>(), ["a", "b", "c"], "{devs:?}");
    for (d, (name, card)) in devs.iter().zip(&cards) {
        assert_eq!(d["format"], card.format, "{d}");
        assert_eq!(d["rate"].as_u64(), Some(u64::from(card.rate)), "{d}");
        assert_eq!(d["channels"].as_u64(), Some(u64::from(card.channels)), "{d}");
        assert_eq!(d["streams"].as_u64(), Some(1), "{d}");
        assert_eq!(d["state"], "running", "{d}");
        assert_eq!(d["default"].as_bool(), Some(*name == "a"), "{d}");
    }
    for (p, what) in players.iter_mut().zip(["aplay -D shmix_a", "aplay -D shmix_b", "aplay -D shmix_c"]) {
        wait_ok(p, what);
    }
    assert_whole(&rig.recording_s16_of("a"), &sa, CH, device_xruns(&rig, "a"), "card a");
    assert_whole(&rig.recording_s16_of("b"), &sb, CH, device_xruns(&rig, "b"), "card b (skewed)");

    let chans = decode_channels(&rig.recording_of("c"), Fmt::S32Le, CH);
    let (s, e) = active_region(&chans, 1e-3).expect("card c recorded only silence");
    let expect = secs * 44100.0;
    let got = (e - s) as f64;
    // The start may ring ahead by a few frames; a resampler may still hold its delay at the end
    // of a drain (not this test's question).
    assert!(got <= expect + 64.0 && got >= expect - 256.0, "card c: {got} frames of sound, {expect} expected");
    let skip = 2000;
    for (c, f) in [(0, fl), (1, fr)] {
        let t = fit_tone(&chans[c][s + skip..e - skip], 44100.0);
        eprintln!("card c channel {c}: {t:?}");
        assert!((t.freq - f).abs() < 0.2, "card c channel {c}: {:.3} Hz, {f} Hz expected", t.freq);
        assert!((t.level_db - db20(0.5)).abs() < 0.3, "card c channel {c}: {:.2} dBFS", t.level_db);
        assert!(t.thdn_db < -50.0, "card c channel {c}: THD+N {:.1} dB", t.thdn_db);
    }
}

// ----- 2. moving a playing stream ----------------------------------------------------------------------

/// Linear interpolation of `x` at `p` (`None` outside it).
fn interp(x: &[f64], p: f64) -> Option<f64> {
    if p < 0.0 {
        return None;
    }
    let i = p.floor() as usize;
    let fr = p - i as f64;
    Some(x.get(i)? * (1.0 - fr) + x.get(i + 1)? * fr)
}

/// Normalised correlation of `y[at..at + len]` with `x` at positions `p0 + (j - at) * ratio`.
fn corr_at(y: &[f64], x: &[f64], at: usize, len: usize, p0: f64, ratio: f64) -> f64 {
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for (k, v) in y[at..at + len].iter().enumerate() {
        let Some(s) = interp(x, p0 + k as f64 * ratio) else { return 0.0 };
        xy += v * s;
        xx += s * s;
        yy += v * v;
    }
    if xx == 0.0 || yy == 0.0 {
        0.0
    } else {
        xy / (xx * yy).sqrt()
    }
}

/// The best `p0` in `[from, to]` (in steps of `step` frames) for [`corr_at`], and its correlation.
#[allow(clippy::too_many_arguments)]
fn best_alignment(
    y: &[f64],
    x: &[f64],
    at: usize,
    len: usize,
    ratio: f64,
    step: f64,
    from: f64,
    to: f64,
) -> (f64, f64) {
    let mut best = (from, f64::MIN);
    let mut p = from;
    while p <= to {
        let c = corr_at(y, x, at, len, p, ratio);
        if c > best.1 {
            best = (p, c);
        }
        p += step;
    }
    best
}

/// A stream playing on an S16_LE 48 kHz card (the default, a) is moved with `shmixctl move` to
/// an S32_LE 44.1 kHz card (b) after about 1 s. Its sound: a 300 Hz half-scale sine on the
/// left, noise on the right (which makes every frame identifiable).
/// - card a: the sound from its first frame, bit-exact and in order, up to some frame E (split
///   only at counted device xruns), then silence;
/// - card b: the sound from frame E on, converted: its right channel, matched to the noise
///   (correlation of the card's samples with the noise at 48000/44100 steps), starts loud within
///   8 frames of E and follows the noise without a jump (every 4096-frame window correlates at
///   the same alignment: nothing lost or repeated on b), to the sound's end (the resampler's
///   tail aside); the frames on a plus those on b (in 48 kHz frames) are the sound's length; the
///   left channel is the 300 Hz tone at its level;
/// - the stream is listed on b, pinned; aplay exits 0.
#[test]
fn a_stream_moved_to_a_card_of_another_format_loses_and_repeats_nothing() {
    let b = Card { format: "S32_LE", rate: 44100, channels: 2, extra: Vec::new() };
    let rig = Rig::with_cards(&[("a", Card::default()), ("b", b)], &[]);
    let secs = 4.0;
    let n = (secs * f64::from(RATE)) as usize;
    let f = 300.0;
    let sine: Vec<i16> = (0..n)
        .map(|i| (0.5 * 32767.0 * (2.0 * std::f64::consts::PI * f * i as f64 / f64::from(RATE)).cos()).round() as i16)
        .collect();
    let noise_r = noise(1421, n, 30000);
    let sound = interleave(&[sine, noise_r.clone()]);
    let wav = rig.path("move.wav");
    write_wav(&wav, 2, RATE, &sound);
    // Silence in short periods on b: its mix thread then calls into the card every few ms, so
    // the card's recording (written as the card's clock passes, at each call) is current when
    // the move is asked for; it adds nothing audible.
    let hush = rig.path("silence.wav");
    write_wav(&hush, 2, RATE, &vec![0i16; 2 * (secs as usize + 2) * RATE as usize]);
    let mut quiet = spawn_aplay(&rig, "shmix_b", &["--period-size=256", "--buffer-size=1024"], &hush);
    wait_stream_on(&rig, quiet.id(), "b", true);
    let mut p = spawn_aplay(&rig, "shmix", &[], &wav);
    let s = wait_stream_on(&rig, p.id(), "a", false);
    wait_played_on(&rig, "a", 1, RATE as usize);
    // How far card b had played when the move was asked for.
    let b_before = rig.recorded_frames("b");
    rig.ctl_ok(&["move", &s["id"].to_string(), "b"]);
    wait_stream_on(&rig, p.id(), "b", true);
    wait_ok(&mut p, "aplay moved from a to b");
    let _ = quiet.kill();
    let _ = quiet.wait();
    let xa = device_xruns(&rig, "a");

    // Card a: the sound from its start up to E, whole, then nothing of it.
    let ra = rig.recording_s16_of("a");
    let pa = pieces_of(&ra, &sound, CH, "card a");
    assert_eq!(pa.first().map(|x| x.sound_at), Some(0), "card a: the start is missing: {pa:?}");
    assert!(pa.windows(2).all(|w| w[1].sound_at == w[0].sound_at + w[0].len), "card a: lost or repeated: {pa:?}");
    assert!(pa.len() as u64 <= xa + 1, "card a: {} pieces, {xa} device xruns: {pa:?}", pa.len());
    let last = pa.last().unwrap();
    let e = last.sound_at + last.len;
    assert!(e >= RATE as usize && e < n - RATE as usize, "card a played up to frame {e} of {n}: moved when?");

    // Card b: its non-silent frames (a device xrun's silence removed), as floats.
    let chans = decode_channels(&rig.recording_of("b"), Fmt::S32Le, CH);
    let keep: Vec<usize> = (0..chans[0].len()).filter(|&i| chans[0][i] != 0.0 || chans[1][i] != 0.0).collect();
    assert!(!keep.is_empty(), "card b recorded only silence");
    let (left, right): (Vec<f64>, Vec<f64>) = keep.iter().map(|&i| (chans[0][i], chans[1][i])).unzip();
    let src: Vec<f64> = noise_r.iter().map(|&v| f64::from(v) / 32768.0).collect();
    let ratio = f64::from(RATE) / 44100.0;
    let loud = |v: &f64| v.abs() > 0.3;
    let first = right.iter().position(loud).unwrap();
    // From the command (shmixctl's start included) to the stream's first frame played on b, in
    // b's own frames (a figure for the closing note, not asserted: the machine is noisy).
    let heard_at = (0..chans[0].len()).find(|&i| chans[0][i] != 0.0 || chans[1][i] != 0.0).unwrap_or(0);
    eprintln!(
        "move: asked when card b had played {b_before} frames; its first frame of the stream is frame {heard_at}: \
         {:.2} ms after the command",
        (heard_at as f64 - b_before as f64) * 1000.0 / 44100.0
    );
    let lastb = right.iter().rposition(loud).unwrap();
    // Where card b's frames lie in the sound: found well inside, searched +-0.5 s around E.
    let w = 2048;
    let at = first + 1000;
    assert!(at + w < lastb, "card b played too little: {} frames", lastb - first);
    let guess = e as f64 + 1000.0 * ratio;
    let coarse = best_alignment(&right, &src, at, 512, ratio, 0.5, guess - 4800.0, guess + 4800.0).0;
    let (p_at, c) = best_alignment(&right, &src, at, w, ratio, 0.25, coarse - 1.0, coarse + 1.0);
    assert!(c > 0.5, "card b's right channel is not the noise within 0.1 s of frame {e} (best correlation {c:.3})");
    let p_of = |j: usize| p_at + (j as f64 - at as f64) * ratio;
    eprintln!(
        "move: card a played frames 0..{e} ({} pieces); card b starts loud at sound frame {:.2}, ends at {:.2} of {n} \
         (correlation {c:.3})",
        pa.len(),
        p_of(first),
        p_of(lastb)
    );
    assert!(
        (p_of(first) - e as f64).abs() <= 8.0,
        "card b begins at sound frame {:.2}, card a ended at {e}: {} frames {}",
        p_of(first),
        (p_of(first) - e as f64).abs().round(),
        if p_of(first) > e as f64 { "lost" } else { "repeated" }
    );
    // The end: the stream's last frames, less what a resampler may still hold at a drain.
    assert!(
        p_of(lastb) <= n as f64 + 2.0 && p_of(lastb) >= n as f64 - 256.0,
        "card b ends at sound frame {:.2} of {n}",
        p_of(lastb)
    );
    let total = e as f64 + (lastb - first + 1) as f64 * ratio;
    assert!((total - n as f64).abs() <= 256.0, "a: {e} + b: {} frames (48 kHz) = {total:.1} of {n}", lastb - first + 1);
    // Nothing lost or repeated on b: every window still correlates at the same alignment.
    let mut j = first + 64;
    while j + w < lastb.saturating_sub(64) {
        let (p, c) = best_alignment(&right, &src, j, w, ratio, 0.25, p_of(j) - 1.0, p_of(j) + 1.0);
        assert!(
            c > 0.5,
            "card b: the noise does not go on at sound frame {:.1} (card b frame {j}; best correlation {c:.3} at \
             {p:.2}): frames lost or repeated",
            p_of(j)
        );
        j += 4096;
    }
    let t = fit_tone(&left[first + 2000..lastb - 2000], 44100.0);
    eprintln!("move: card b's left channel {t:?}");
    assert!((t.freq - f).abs() < 0.1, "card b: {:.3} Hz, {f} Hz expected", t.freq);
    assert!((t.level_db - db20(0.5)).abs() < 0.3, "card b: {:.2} dBFS", t.level_db);
}

// ----- 3. the default device --------------------------------------------------------------------------

/// Amplitudes of `freqs` in each 0.1 s window of `x` (48 kHz) over `[s, e)`.
fn tone_windows(x: &[f64], s: usize, e: usize, freqs: &[f64]) -> Vec<Vec<f64>> {
    let w = RATE as usize / 10;
    (s..e.saturating_sub(w)).step_by(w).map(|i| fit_tones(&x[i..i + w], f64::from(RATE), freqs).0).collect()
}

/// Three streams following the default (`aplay -D shmix`: 300, 500 and 700 Hz on both
/// channels, 0.2 each) and one pinned to a (`-D shmix_a`: 1100 Hz) play on a; `shmixctl default
/// b` moves the three to b and leaves the pinned one. Listed: the three on b, not pinned; the
/// pinned one on a; b the default and preferred; `default-device` in the state dir says b. On
/// the cards (tone amplitudes per 0.1 s): a has the four tones, then 1100 Hz alone; b has 300,
/// 500 and 700 Hz and never 1100 Hz. A daemon started again on the same state dir has b as
/// its default.
#[test]
fn switching_the_default_moves_following_streams_but_not_pinned_ones() {
    let mut rig = Rig::with_cards(&[("a", Card::default()), ("b", Card::default())], &[]);
    let freqs = [300.0, 500.0, 700.0, 1100.0];
    let amp = 0.2;
    let mut following = Vec::new();
    for f in &freqs[..3] {
        let wav = tone_wav(&rig, &format!("f{f}.wav"), 4.0, &[Some((*f, amp)), Some((*f, amp))]);
        following.push(spawn_aplay(&rig, "shmix", &[], &wav));
    }
    let wav = tone_wav(&rig, "pinned.wav", 4.0, &[Some((freqs[3], amp)), Some((freqs[3], amp))]);
    let mut pinned = spawn_aplay(&rig, "shmix_a", &[], &wav);
    wait_running(&rig, 4);
    for p in &following {
        wait_stream_on(&rig, p.id(), "a", false);
    }
    wait_stream_on(&rig, pinned.id(), "a", true);
    std::thread::sleep(Duration::from_millis(800));
    rig.ctl_ok(&["default", "b"]);
    for p in &following {
        wait_stream_on(&rig, p.id(), "b", false);
    }
    let s = rig.stream_of(pinned.id());
    assert_eq!((&s["device"], &s["pinned"]), (&Value::from("a"), &Value::from(true)), "the pinned stream: {s}");
    let (da, db) = (rig.device("a"), rig.device("b"));
    assert_eq!((da["default"].as_bool(), db["default"].as_bool()), (Some(false), Some(true)), "{da}\n{db}");
    assert_eq!(db["preferred"].as_bool(), Some(true), "shmixctl default makes it the preferred one: {db}");
    assert_eq!((da["streams"].as_u64(), db["streams"].as_u64()), (Some(1), Some(3)), "{da}\n{db}");
    let state = rig.state_dir.clone().unwrap().join("default-device");
    let remembered = std::fs::read_to_string(&state).unwrap_or_else(|e| panic!("{}: {e}", state.display()));
    assert_eq!(remembered.trim(), "b", "{}", state.display());
    for p in &mut following {
        wait_ok(p, "aplay -D shmix (following)");
    }
    wait_ok(&mut pinned, "aplay -D shmix_a (pinned)");

    let present = |a: &[f64], k: usize| (a[k] - amp).abs() < 0.02;
    let absent = |a: &[f64], k: usize| a[k].abs() < 0.01;
    let decode = |name: &str| decode_channels(&rig.recording_of(name), Fmt::S16Le, CH);
    let ca = decode("a");
    let (s, e) = active_region(&ca, 1e-3).expect("card a recorded only silence");
    let wa = tone_windows(&ca[0], s, e, &freqs);
    // Each window: all four, the pinned one alone, or something else (a stream starting,
    // stopping or moving within it).
    let kind: Vec<char> = wa
        .iter()
        .map(|a| {
            if (0..4).all(|k| present(a, k)) {
                '4'
            } else if present(a, 3) && (0..3).all(|k| absent(a, k)) {
                'p'
            } else {
                '.'
            }
        })
        .collect();
    let pattern: String = kind.iter().collect();
    eprintln!("card a windows (4: all, p: pinned alone): {pattern}");
    let last4 = kind.iter().rposition(|k| *k == '4').unwrap_or_else(|| panic!("card a never had all four: {pattern}"));
    let firstp =
        kind.iter().position(|k| *k == 'p').unwrap_or_else(|| panic!("card a never had the pinned alone: {pattern}"));
    assert!(kind.iter().filter(|k| **k == '4').count() >= 3, "card a: too little of all four: {pattern}");
    assert!(kind.iter().filter(|k| **k == 'p').count() >= 10, "card a: too little of the pinned alone: {pattern}");
    assert!(last4 < firstp && firstp - last4 <= 3, "card a: not all four, then the pinned alone: {pattern}");
    assert!(kind[firstp..].iter().all(|k| *k != '4'), "card a: the following streams came back: {pattern}");
    let cb = decode("b");
    let (s, e) = active_region(&cb, 1e-3).expect("card b recorded only silence");
    let wb = tone_windows(&cb[0], s, e, &freqs);
    let three = wb.iter().filter(|a| (0..3).all(|k| present(a, k))).count();
    assert!(three >= 15, "card b: the three following tones in only {three} of {} windows: {wb:?}", wb.len());
    assert!(wb.iter().all(|a| a[3].abs() < 0.01), "card b: the pinned stream's 1100 Hz was heard there: {wb:?}");

    // The choice is remembered: a daemon started again on the same state dir defaults to b.
    let st = rig.signal_daemon(libc::SIGTERM);
    assert!(st.success(), "shmixd exited with {st}");
    let _ = std::fs::remove_file(&rig.sock);
    rig.start_daemon(&[]);
    let (da, db) = (rig.device("a"), rig.device("b"));
    assert_eq!(
        (da["default"].as_bool(), db["default"].as_bool()),
        (Some(false), Some(true)),
        "after a restart: {da}\n{db}"
    );
}

// ----- 4. a card that vanishes and returns ----------------------------------------------------------

/// Plays a 7 s left-only and a 7 s right-only noise (1 s buffers, following the default) and,
/// if `pinned_right`, the right one pinned to `home` instead. `home` (the default, pluggable) is
/// pulled out once both play, and put back 1 s after the following streams play on `refuge`.
/// Returns the rig's recordings by channel for the checks.
fn unplug_and_return(rig: &Rig, home: &str, refuge: &str, pinned_right: bool) -> (Vec<i16>, Vec<i16>) {
    let (wl, left) = side_wav(rig, "left.wav", 7.0, 1431, true);
    let (wr, right) = side_wav(rig, "right.wav", 7.0, 1432, false);
    let right_pcm = if pinned_right { format!("shmix_{home}") } else { "shmix".to_owned() };
    let big = ["-B", "1000000"];
    let mut pl = spawn_aplay(rig, "shmix", &big, &wl);
    let mut pr = spawn_aplay(rig, &right_pcm, &big, &wr);
    wait_stream_on(rig, pl.id(), home, false);
    wait_stream_on(rig, pr.id(), home, pinned_right);
    wait_played_on(rig, home, 0, RATE as usize / 2);
    wait_played_on(rig, home, 1, RATE as usize / 2);
    rig.unplug(home);
    wait_until(SETTLE, &format!("{home} listed absent"), || (rig.device(home)["state"] == "absent").then_some(()));
    let d = rig.device(refuge);
    assert_eq!(d["default"].as_bool(), Some(true), "{refuge} is the default while {home} is gone: {d}");
    wait_stream_on(rig, pl.id(), refuge, false);
    if pinned_right {
        // A pinned stream waits for its card.
        let s = rig.stream_of(pr.id());
        assert_eq!((&s["device"], &s["pinned"]), (&Value::from(home), &Value::from(true)), "{s}");
    } else {
        wait_stream_on(rig, pr.id(), refuge, false);
    }
    wait_played_on(rig, refuge, 0, RATE as usize / 2);
    std::thread::sleep(Duration::from_millis(500));
    assert!(pl.try_wait().unwrap().is_none() && pr.try_wait().unwrap().is_none(), "a player ended early");
    rig.plug_back(home);
    // Preferred: it is the default again and the following streams come back.
    wait_stream_on(rig, pl.id(), home, false);
    if !pinned_right {
        wait_stream_on(rig, pr.id(), home, false);
    }
    let d = rig.device(home);
    assert_eq!((d["default"].as_bool(), d["state"].as_str()), (Some(true), Some("running")), "{home} back: {d}");
    wait_ok(&mut pl, "aplay (left, following)");
    wait_ok(&mut pr, &format!("aplay -D {right_pcm} (right)"));
    (left, right)
}

/// The pieces of `sound` (channel `c`) across `cards`: the whole sound, each card in order, no
/// frame twice, and exactly one gap of at most [`MAX_UNPLUG_LOSS`] frames where `home` vanished
/// (from a piece on `home` to one on `refuge`), or none. Returns the pieces.
fn assert_through_unplug<'a>(
    rig: &Rig,
    cards: &[&'a str],
    c: usize,
    sound: &[i16],
    home: &str,
    refuge: &str,
    what: &str,
) -> Vec<OnCard<'a>> {
    let recs: Vec<(&str, Vec<i16>)> = cards.iter().map(|n| (*n, channel(&rig.recording_s16_of(n), CH, c))).collect();
    let all = pieces_across(&recs, sound, 1, what);
    let summary: Vec<String> = all.iter().map(|x| format!("{}:{}+{}", x.card, x.piece.sound_at, x.piece.len)).collect();
    eprintln!("{what}: {}", summary.join(" "));
    assert_eq!(all.first().map(|x| x.piece.sound_at), Some(0), "{what}: the start is missing: {summary:?}");
    let end = all.last().map(|x| x.piece.sound_at + x.piece.len);
    assert_eq!(end, Some(sound.len()), "{what}: the end is missing: {summary:?}");
    let d = discontinuities(&all);
    assert!(d.iter().all(|(_, _, gap)| *gap > 0), "{what}: frames played twice: {summary:?}");
    assert!(d.len() <= 1, "{what}: lost frames at {} places: {summary:?}", d.len());
    if let Some((before, after, gap)) = d.first() {
        assert!(
            before.card == home && after.card == refuge && *gap as usize <= MAX_UNPLUG_LOSS,
            "{what}: {gap} frames lost from {} to {}, more than the unplugged card held: {summary:?}",
            before.card,
            after.card
        );
    }
    all
}

/// Three cards, a first (the default and preferred, pluggable). Two streams follow the default
/// (noise left, noise right). a is pulled out: both move to b, the next present card (not c),
/// which becomes the default; a is put back: it is the default again and both move back. Each
/// sound is whole across the cards (a, then b, then a), each card's part in order, nothing
/// twice, and only what sat in a's buffer when it vanished may be lost; c played nothing.
#[test]
fn an_unplugged_default_hands_its_streams_to_the_next_card_and_takes_them_back() {
    let specs = vec![
        CardSpec::new("a", Card::default()).pluggable(),
        CardSpec::new("b", Card::default()),
        CardSpec::new("c", Card::default()),
    ];
    let rig = Rig::with_card_specs(specs, &[]);
    let (left, right) = unplug_and_return(&rig, "a", "b", false);
    for (c, sound, what) in [(0, &left, "left"), (1, &right, "right")] {
        let all = assert_through_unplug(&rig, &["a", "b", "c"], c, sound, "a", "b", what);
        assert!(all.iter().any(|x| x.card == "b"), "{what}: nothing played on b");
        assert!(all.last().unwrap().card == "a", "{what}: it did not come back to a");
    }
    assert!(rig.recording_of("c").iter().all(|b| *b == 0), "card c played something");
}

/// Two cards, b preferred (`--prefer b`, pluggable) and so the default. Noise on the left follows
/// the default; noise on the right is pinned to b (`-D shmix_b`). b is pulled out: the left
/// stream moves to a, the right one waits (listed on b); b returns: the left stream moves back.
/// The left sound is whole across the cards (b, a, b) but for what b's buffer held; the right
/// sound is on b only, in order, the same loss at most; a's right channel stays silent.
#[test]
fn an_unplugged_preferred_card_takes_its_following_streams_back_and_its_pinned_stream_waits() {
    let specs = vec![CardSpec::new("a", Card::default()), CardSpec::new("b", Card::default()).pluggable()];
    let rig = Rig::with_card_specs(specs, &["--prefer", "b"]);
    let (da, db) = (rig.device("a"), rig.device("b"));
    assert_eq!((da["default"].as_bool(), db["default"].as_bool()), (Some(false), Some(true)), "{da}\n{db}");
    assert_eq!((da["preferred"].as_bool(), db["preferred"].as_bool()), (Some(false), Some(true)), "{da}\n{db}");
    let (left, right) = unplug_and_return(&rig, "b", "a", true);
    let all = assert_through_unplug(&rig, &["a", "b"], 0, &left, "b", "a", "left (following)");
    assert!(all.iter().any(|x| x.card == "a") && all.last().unwrap().card == "b", "left: not b, a, b");
    let pr = assert_through_unplug(&rig, &["b"], 1, &right, "b", "b", "right (pinned to b)");
    assert!(
        pr.len() <= 2 + device_xruns(&rig, "b") as usize,
        "right: more pieces than the unplug and xruns make: {pr:?}"
    );
    assert!(channel(&rig.recording_s16_of("a"), CH, 1).iter().all(|s| *s == 0), "the pinned stream played on a");
}

// ----- 5. a recorder moved ------------------------------------------------------------------------------

/// Pieces of any of `sources` in `rec`: `(source index, piece)` in the recording's order. Every
/// frame of `rec` is silence or part of a maximal run equal to a stretch of one source (found as
/// [`pieces_of`] finds them); panics on a frame that is neither.
fn pieces_of_sources(rec: &[i16], sources: &[&[i16]], ch: usize, what: &str) -> Vec<(usize, Piece)> {
    let frames = rec.len() / ch;
    let key = 8usize;
    let mut out = Vec::new();
    let mut i = 0;
    while i < frames {
        if rec[i * ch..(i + 1) * ch].iter().all(|s| *s == 0) {
            i += 1;
            continue;
        }
        let k = key.min(frames - i);
        let probe = &rec[i * ch..(i + k) * ch];
        let found = sources.iter().enumerate().find_map(|(s, src)| {
            let n = src.len() / ch;
            (0..=n.saturating_sub(k)).find(|&j| &src[j * ch..(j + k) * ch] == probe).map(|j| (s, j))
        });
        let Some((s, at)) = found else {
            panic!(
                "{what}: recorded frame {i} ({:?}...) is in none of the sources; pieces so far: {out:?}",
                &probe[..ch]
            )
        };
        let src = sources[s];
        let n = src.len() / ch;
        let mut len = 0;
        while i + len < frames
            && at + len < n
            && rec[(i + len) * ch..(i + len + 1) * ch] == src[(at + len) * ch..(at + len + 1) * ch]
        {
            len += 1;
        }
        out.push((s, Piece { rec_at: i, sound_at: at, len }));
        i += len;
    }
    out
}

/// Two cards fed different capture noise (S16_LE 48 kHz). `arecord -D shmix` (following the
/// default, a) records 4 s; after about 1.5 s `shmixctl move` sends it to b. arecord exits 0
/// with exactly 4 s; the recording is a's capture in order, then b's in order (a silent gap of
/// at most 1 s at the move; inside either only at counted device xruns), at least 0.5 s of
/// each; listed on b, pinned.
#[test]
fn a_recorder_moved_between_cards_records_one_then_the_other() {
    let n = 12 * RATE as usize;
    let cap_a = interleave(&[noise(1441, n, 30000), noise(1442, n, 30000)]);
    let cap_b = interleave(&[noise(1443, n, 30000), noise(1444, n, 30000)]);
    let bytes = |s: &[i16]| s.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let specs = vec![
        CardSpec::new("a", Card::default()).with_capture(bytes(&cap_a)),
        CardSpec::new("b", Card::default()).with_capture(bytes(&cap_b)),
    ];
    let rig = Rig::with_card_specs(specs, &[]);
    let out = rig.path("rec.raw");
    let mut c = rig.cmd("arecord");
    c.args(["-q", "-D", "shmix", "-t", "raw", "-f", "S16_LE", "-r", "48000", "-c", "2", "-d", "4"]).arg(&out);
    let mut rec = spawn(c);
    let s = wait_until(SETTLE, "the recorder listed", || {
        rig.streams().into_iter().find(|s| s["pid"] == rec.id() && s["direction"] == "capture")
    });
    assert_eq!((&s["device"], &s["pinned"]), (&Value::from("a"), &Value::from(false)), "{s}");
    wait_until(SETTLE, "arecord wrote 1.5 s", || {
        (std::fs::metadata(&out).map_or(0, |m| m.len()) >= 3 * u64::from(RATE) * 2).then_some(())
    });
    rig.ctl_ok(&["move", &s["id"].to_string(), "b"]);
    wait_stream_on(&rig, rec.id(), "b", true);
    wait_ok(&mut rec, "arecord moved from a to b");
    let xruns = device_xruns(&rig, "a") + device_xruns(&rig, "b");
    let got: Vec<i16> =
        std::fs::read(&out).unwrap().chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(got.len(), 4 * RATE as usize * CH, "arecord -d 4 recorded {} samples", got.len());
    let p = pieces_of_sources(&got, &[&cap_a, &cap_b], CH, "moved recorder");
    eprintln!("moved recorder: pieces (0: a, 1: b) {p:?}");
    let switch = p.iter().position(|(k, _)| *k == 1).unwrap_or_else(|| panic!("nothing of b's capture: {p:?}"));
    assert!(switch > 0, "nothing of a's capture: {p:?}");
    assert!(p[switch..].iter().all(|(k, _)| *k == 1), "a's capture after b's: {p:?}");
    // Inside one card's capture: in order, nothing twice, and a discontinuity only where the
    // daemon counted a device xrun (a stall of the machine overran the card).
    let mut breaks = 0;
    for part in [&p[..switch], &p[switch..]] {
        for w in part.windows(2) {
            let (x, y) = (w[0].1, w[1].1);
            assert!(y.sound_at >= x.sound_at + x.len, "a card's capture repeated or out of order: {p:?}");
            breaks += usize::from(y.sound_at != x.sound_at + x.len || y.rec_at != x.rec_at + x.len);
        }
    }
    assert!(breaks as u64 <= xruns, "{breaks} discontinuities inside the cards' captures, {xruns} device xruns: {p:?}");
    let (last_a, first_b) = (p[switch - 1].1, p[switch].1);
    let gap = first_b.rec_at - (last_a.rec_at + last_a.len);
    assert!(gap <= RATE as usize, "{gap} silent frames at the move: {p:?}");
    let (fa, fb): (usize, usize) =
        (p[..switch].iter().map(|x| x.1.len).sum(), p[switch..].iter().map(|x| x.1.len).sum());
    assert!(fa >= RATE as usize / 2 && fb >= RATE as usize / 2, "a: {fa} frames, b: {fb} frames: {p:?}");
}

// ----- 6. a thousand moves ---------------------------------------------------------------------------

/// Frame `i` of the counting sound: left `1 + i % 32000`, right `1 + i / 32000` (never zero).
fn counting(frames: usize) -> Vec<i16> {
    (0..frames).flat_map(|i| [1 + (i % 32000) as i16, 1 + (i / 32000) as i16]).collect()
}

/// The frame numbers of a recording of [`counting`] (`None`: silence); panics on a frame that
/// is neither (garbage, a mix).
fn frame_numbers(rec: &[i16], frames: usize, what: &str) -> Vec<Option<usize>> {
    rec.chunks_exact(2)
        .enumerate()
        .map(|(k, f)| {
            if f == [0, 0] {
                return None;
            }
            let (l, r) = (i64::from(f[0]) - 1, i64::from(f[1]) - 1);
            let i = r * 32000 + l;
            assert!(
                (0..32000).contains(&l) && r >= 0 && (i as usize) < frames,
                "{what}: recorded frame {k} {f:?} is not a frame of the sound"
            );
            Some(i as usize)
        })
        .collect()
}

/// One stream of 40 s whose every frame says its own number, playing on the default of two
/// S16_LE 48 kHz cards, is moved 1000 times (b, a, b, ...; ending on a) through one control
/// connection, each move sent as soon as the last one was answered, all while it plays. Then
/// it plays on a for 0.5 s more and the player is killed (the test need not wait out 40 s).
/// Each card played its frames in increasing order; together the two cards played frames
/// 0..m for some m past the moves, every one of them exactly once; both cards played some.
#[test]
fn a_thousand_moves_under_play_lose_and_repeat_nothing() {
    let rig = Rig::with_cards(&[("a", Card::default()), ("b", Card::default())], &[]);
    let frames = 40 * RATE as usize;
    let wav = rig.path("count.wav");
    write_wav(&wav, 2, RATE, &counting(frames));
    let mut p = spawn_aplay(&rig, "shmix", &[], &wav);
    let s = wait_stream_on(&rig, p.id(), "a", false);
    let id: u32 = s["id"].as_u64().expect("stream id").try_into().unwrap();
    wait_played_on(&rig, "a", 0, RATE as usize / 4);
    let ctl = Ctl::connect(&rig);
    let ids = [ctl.device_id("a"), ctl.device_id("b")];
    let t = Instant::now();
    let names = ["a", "b"];
    let mut polls = 0;
    for k in 0..1000 {
        let device = ids[(k + 1) % 2];
        match ctl.call(Request::Move { stream: id, device }) {
            Reply::Moved { stream, device: d } => assert_eq!((stream, d), (id, device), "move {k}"),
            other => panic!("move {k} answered {other:?}"),
        }
        // Each move is made, not only asked for (moves asked for in a burst go straight to the
        // last one): the list shows the stream on its new device once it is handed over.
        let want = names[(k + 1) % 2];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            polls += 1;
            let Reply::Streams(list) = ctl.call(Request::List) else { panic!("List answered something else") };
            if list.iter().any(|s| s.id == id && s.device == want) {
                break;
            }
            assert!(Instant::now() < deadline, "move {k} to {want} not made within 5 s");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    eprintln!("1000 moves made ({polls} listings)");
    let took = t.elapsed();
    eprintln!("1000 moves took {took:?}");
    assert!(p.try_wait().unwrap().is_none(), "aplay ended during the moves ({took:?})");
    wait_stream_on(&rig, p.id(), "a", true);
    // Played on a after the last move: the frames after the moves are on the cards too.
    let on_a = rig.recorded_frames("a");
    wait_until(SETTLE, "card a playing on after the moves", || {
        (rig.recorded_frames("a") >= on_a + RATE as usize / 2).then_some(())
    });
    assert!(p.try_wait().unwrap().is_none(), "the 40 s sound ended after {took:?} of moves: they took too long");
    p.kill().expect("kill aplay");
    let _ = p.wait();
    // Whatever the daemon still plays of the dropped stream lands within a moment.
    std::thread::sleep(Duration::from_millis(500));
    let mut seen = vec![0u32; frames];
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let nums = frame_numbers(&rig.recording_s16_of(name), frames, &format!("card {name}"));
        let played: Vec<usize> = nums.iter().flatten().copied().collect();
        if let Some(w) = played.windows(2).find(|w| w[1] <= w[0]) {
            panic!("card {name} played frame {} after frame {}", w[1], w[0]);
        }
        runs.push(played.windows(2).filter(|w| w[1] != w[0] + 1).count() + usize::from(!played.is_empty()));
        for i in played {
            seen[i] += 1;
        }
    }
    // The player was killed: the cards played a prefix of the sound, 0..m.
    let m = seen.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
    let missing: Vec<usize> = (0..m).filter(|&i| seen[i] == 0).collect();
    let twice: Vec<usize> = (0..m).filter(|&i| seen[i] > 1).collect();
    eprintln!("1000 moves: frames 0..{m} played; runs of frames on a {}, on b {}", runs[0], runs[1]);
    assert!(m >= RATE as usize, "only {m} frames played");
    assert!(
        missing.is_empty(),
        "{} of frames 0..{m} never played, the first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "{} frames played on both cards, the first {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    // 500 stays on each card, fewer only where two stays on a card joined up (the card played
    // nothing between them: a stay on the other card that took no frame).
    assert!(runs[0] + runs[1] >= 500, "the moves did not move the sound: runs on a {}, on b {}", runs[0], runs[1]);
}

// ----- 7. idle stop per device ---------------------------------------------------------------------------

/// `--idle-stop 1` with two cards: a plays 4 s of noise (`-D shmix_a`), b has no stream. Once a
/// has played 1.5 s, b is listed idle with no wakeups while a runs; over the next second b's
/// mix cycles (the daemon's counters) stand still and its recording does not grow while a's
/// cycles go on. a's sound is bit-exact; after it, a goes idle too.
#[test]
fn each_device_stops_when_idle_on_its_own() {
    let rig = Rig::with_cards(&[("a", Card::default()), ("b", Card::default())], &["--idle-stop", "1"]);
    let (wav, sound) = noise_wav(&rig, "a.wav", 4.0, 1461);
    let mut p = spawn_aplay(&rig, "shmix_a", &[], &wav);
    wait_played_on(&rig, "a", 0, RATE as usize * 3 / 2);
    let b = wait_until(SETTLE, "b listed idle", || Some(rig.device("b")).filter(|d| d["state"] == "idle"));
    let a = rig.device("a");
    assert_eq!(a["state"], "running", "{a}");
    let wakeups = b["wakeups_per_s"].as_f64().unwrap_or_else(|| panic!("no wakeups_per_s: {b}"));
    assert!(wakeups < 2.0, "idle b wakes {wakeups} times a second: {b}");
    let ctl = Ctl::connect(&rig);
    let cycles = |d: &[DeviceInfo], name: &str| d.iter().find(|x| x.name == name).map(|x| x.cycles).unwrap();
    let (d0, rec_b0) = (ctl.devices(), rig.recorded_frames("b"));
    std::thread::sleep(Duration::from_secs(1));
    let (d1, rec_b1) = (ctl.devices(), rig.recorded_frames("b"));
    assert!(p.try_wait().unwrap().is_none(), "a's sound ended before b was seen idle");
    eprintln!(
        "idle b: cycles {} -> {}, recording {rec_b0} -> {rec_b1} frames; a: cycles {} -> {}",
        cycles(&d0, "b"),
        cycles(&d1, "b"),
        cycles(&d0, "a"),
        cycles(&d1, "a")
    );
    assert_eq!(cycles(&d0, "b"), cycles(&d1, "b"), "idle b's mix thread still cycles");
    assert_eq!(rec_b0, rec_b1, "idle b's card still plays");
    assert!(cycles(&d1, "a") > cycles(&d0, "a"), "a's mix thread stood still while a played");
    wait_ok(&mut p, "aplay -D shmix_a");
    assert_whole(&rig.recording_s16_of("a"), &sound, CH, device_xruns(&rig, "a"), "card a");
    wait_until(SETTLE, "a listed idle after its stream", || (rig.device("a")["state"] == "idle").then_some(()));
}

// ----- 8. snd_pcm_delay across a move ----------------------------------------------------------------

/// `snd_pcm_delay` stays true across a move (tests/c/pcm_semantics.c `truth`: a stream of 125 ms
/// periods, its delay sampled between timestamps after every write): against each card's own
/// clock (`clock_file`), a delay is right when it is the frames until the card that plays the
/// last written frame plays it: before the move card a; after it card a up to where a stopped
/// (E), card b beyond. Before the move and once it has settled (50 ms after the command), every
/// sample is within 2 ms of that truth, as on one card; the largest error in between is
/// reported.
#[test]
fn the_delay_stays_true_across_a_move() {
    let clocked = |name: &str| Card { extra: vec![format!("clock_file \"@DIR@/{name}.clock\"")], ..Card::default() };
    let rig = Rig::with_cards(&[("a", clocked("a")), ("b", clocked("b"))], &[]);
    let sound = stereo_noise(1471, 3.0);
    let raw = rig.path("sound.raw");
    write_raw(&raw, &sound);
    let mut moved_ns = 0;
    let rep = std::thread::scope(|scope| {
        let c = scope.spawn(|| {
            crate::semantics::run_c(&rig, &["truth", raw.to_str().unwrap(), "6000", "24000", "rw"], &["truth_drain"])
        });
        let id = wait_until(SETTLE, "the C program's stream listed", || {
            rig.streams().iter().find(|s| s["direction"] == "playback").map(|s| s["id"].to_string())
        });
        wait_played_on(&rig, "a", 0, RATE as usize);
        moved_ns = shmix_shared::clock::now_ns();
        rig.ctl_ok(&["move", &id, "b"]);
        c.join().expect("the C program's thread")
    });
    let samples = rep.samples();
    let pa = pieces_of(&rig.recording_s16_of("a"), &sound, 2, "card a");
    let pb = pieces_of(&rig.recording_s16_of("b"), &sound, 2, "card b");
    assert!(pa.len() == 1 && pa[0].sound_at == 0, "card a: {pa:?}");
    let e = pa[0].len;
    assert!(pb.len() == 1 && pb[0].sound_at == e, "card b does not go on where a stopped ({e}): {pb:?}");
    let (first_a, first_b) = (pa[0].rec_at as f64, pb[0].rec_at as f64);
    let (clock_a, clock_b) = (
        crate::semantics::read_clock_file(&rig.path("a.clock")),
        crate::semantics::read_clock_file(&rig.path("b.clock")),
    );
    // Frames until the card holding frame w - 1 has played it, at `ns`. Before the move the
    // frames the program had written all go to card a (what it would have played had it stayed).
    let truth = |ns: u64, w: u64| {
        let w = w as f64;
        let left = if w <= e as f64 || ns < moved_ns {
            first_a + w - crate::semantics::card_played_at(&clock_a, RATE, ns)
        } else {
            first_b + (w - e as f64) - crate::semantics::card_played_at(&clock_b, RATE, ns)
        };
        left.max(0.0)
    };
    let err = |&(t0, t1, w, d): &(u64, u64, u64, i64)| crate::semantics::off_the_truth(d, truth(t0, w), truth(t1, w));
    let settle = moved_ns + 50_000_000;
    let (mut before, mut during, mut after) = (0.0f64, 0.0f64, 0.0f64);
    let mut n_after = 0;
    // The last sample off by more than 2 ms, in ms after the command.
    let mut off_until = 0.0f64;
    for s in &samples {
        let x = err(s).abs();
        if x > 2.0 * f64::from(RATE) / 1000.0 && s.0 >= moved_ns {
            off_until = off_until.max((s.1 - moved_ns) as f64 / 1e6);
        }
        if s.1 < moved_ns {
            before = before.max(x);
        } else if s.0 < settle {
            during = during.max(x);
        } else {
            after = after.max(x);
            n_after += 1;
        }
    }
    let ms = |f: f64| f * 1000.0 / f64::from(RATE);
    eprintln!(
        "delay across a move (card a frames 0..{e}): max |error| before {:.2} ms, in the 50 ms after the command \
         {:.2} ms (off by more than 2 ms until {off_until:.1} ms after it), after {:.2} ms ({n_after} of {} samples \
         after)",
        ms(before),
        ms(during),
        ms(after),
        samples.len()
    );
    assert!(samples.iter().all(|s| s.3 >= 0), "negative delay");
    assert!(n_after >= 20, "only {n_after} samples after the move");
    let tight = 2.0 * f64::from(RATE) / 1000.0;
    assert!(before <= tight, "before the move the delay is off by {before:.1} frames");
    assert!(after <= tight, "after the move the delay is off by {after:.1} frames (2 ms: {tight})");
}

// ----- 9. the ALSA control per device ----------------------------------------------------------------

/// `ctl.shmix` with `device "b"` sets b's master volume and mute (amixer), and only b's; without
/// the key it is the default device's; a name shmixd does not serve fails the open, naming the
/// devices it serves. The volume is heard: b's noise at 50 % is half the amplitude on card b.
#[test]
fn the_alsa_control_takes_a_device() {
    let rig = Rig::with_cards(&[("a", Card::default()), ("b", Card::default())], &[]);
    let ctl = Ctl::connect(&rig);
    let volumes = || -> Vec<(String, f32, bool)> {
        ctl.devices().into_iter().map(|d| (d.name, d.master_volume, d.master_muted)).collect()
    };
    let amixer = |dev: &str, args: &[&str]| {
        let mut c = rig.cmd("amixer");
        c.args(["-D", dev]).args(args);
        run(c, Duration::from_secs(10))
    };
    amixer("shmix_b", &["sset", "Master", "50%"]).assert_ok("amixer -D shmix_b sset Master 50%");
    let v = volumes();
    assert_eq!(v[0], ("a".to_string(), 1.0, false), "{v:?}");
    assert!(v[1].0 == "b" && (v[1].1 - 0.5).abs() < 0.001 && !v[1].2, "{v:?}");
    amixer("shmix", &["sset", "Master", "25%"]).assert_ok("amixer -D shmix sset Master 25%");
    amixer("shmix_b", &["sset", "Master", "mute"]).assert_ok("amixer -D shmix_b sset Master mute");
    let v = volumes();
    assert!((v[0].1 - 0.25).abs() < 0.001 && !v[0].2, "the default device's master: {v:?}");
    assert!((v[1].1 - 0.5).abs() < 0.001 && v[1].2, "b muted, its volume kept: {v:?}");
    let got = amixer("shmix_b", &["sget", "Master"]);
    got.assert_ok("amixer -D shmix_b sget Master");
    assert!(got.stdout.contains("[50%]") && got.stdout.contains("[off]"), "{}", got.stdout);
    // An unknown device fails the open with its reason.
    let mut c = rig.cmd("amixer");
    c.args(["-D", "shmix_b", "sget", "Master"]).env("SHMIX_DEVICE", "nosuch");
    let ok_with_key = run(c, Duration::from_secs(10));
    ok_with_key.assert_ok("the key wins over SHMIX_DEVICE");
    let mut c = rig.cmd("amixer");
    c.args(["-D", "shmix", "sget", "Master"]).env("SHMIX_DEVICE", "nosuch");
    let bad = run(c, Duration::from_secs(10));
    assert!(!bad.status.success(), "amixer opened a control of a device shmixd does not serve");
    assert!(bad.stderr.contains("nosuch") && bad.stderr.contains("'a'"), "{}", bad.stderr);
    // Heard: b unmuted at 50 % plays the noise at half its amplitude.
    amixer("shmix_b", &["sset", "Master", "unmute"]).assert_ok("amixer unmute");
    let (wav, sound) = noise_wav(&rig, "b.wav", 1.0, 1481);
    let mut p = spawn_aplay(&rig, "shmix_b", &[], &wav);
    wait_ok(&mut p, "aplay on b at 50 %");
    let rec = rig.recording_s16_of("b");
    let peak = |x: &[i16]| x.iter().map(|v| i32::from(*v).abs()).max().unwrap_or(0);
    let (pr, ps) = (peak(&rec), peak(&sound));
    eprintln!("card b's peak {pr} for the sound's {ps} at 50 %");
    assert!((f64::from(pr) / f64::from(ps) - 0.5).abs() < 0.01, "card b's peak {pr}, the sound's {ps}");
}

// ----- 10. a card that is gone costs nothing ---------------------------------------------------------

/// While a card is gone and its pinned stream waits, its mix thread sleeps: in a whole second it
/// wakes a handful of times (the device manager's retries), not in a loop (it spun 580,000 times
/// a second: a timer deadline left in the past when the card vanished). The other card and its
/// stream go on; the waiting stream plays on when the card is back.
#[test]
fn a_gone_card_does_not_keep_its_mix_thread_busy() {
    let rig = Rig::with_card_specs(
        vec![CardSpec::new("a", Card::default()).pluggable(), CardSpec::new("b", Card::default())],
        &[],
    );
    let (wav, sound) = noise_wav(&rig, "a.wav", 3.0, 1491);
    let mut p = spawn_aplay(&rig, "shmix_a", &[], &wav);
    wait_played_on(&rig, "a", 0, RATE as usize / 2);
    rig.unplug("a");
    wait_until(SETTLE, "card a listed absent", || Some(rig.device("a")).filter(|d| d["state"] == "absent"));
    let ctl = Ctl::connect(&rig);
    let cycles = || ctl.devices().iter().find(|d| d.name == "a").map(|d| d.cycles).unwrap();
    let c0 = cycles();
    std::thread::sleep(Duration::from_secs(1));
    let woke = cycles() - c0;
    eprintln!("card a gone: its mix thread woke {woke} times in 1 s");
    assert!(woke < 100, "the mix thread of a gone card woke {woke} times in a second");
    rig.plug_back("a");
    wait_ok(&mut p, "aplay on a, which came back");
    let pieces = pieces_of(&rig.recording_s16_of("a"), &sound, 2, "card a");
    assert!(pieces.windows(2).all(|w| w[1].sound_at > w[0].sound_at), "card a repeated: {pieces:?}");
    let last = pieces.last().expect("card a played the sound");
    assert_eq!(last.sound_at + last.len, sound.len() / 2, "the end of the sound is missing: {pieces:?}");
}

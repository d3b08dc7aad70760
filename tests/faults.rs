//! Faults under playing clients. Injected by the virtual card: a suspend (the card sleeps and is
//! resumed by the daemon, invisibly to clients), an xrun storm (the daemon recovers every time),
//! an unplug (`gone_file`: the card vanishes, clients wait, the daemon reopens it when it comes
//! back and they play on; SIGTERM while it is gone still exits at once). Made by the test: a
//! client stopped with SIGSTOP (delays no one else), and a daemon killed with SIGKILL and started
//! again on the same socket (old clients fail at once, new ones play bit-exact).
//!
//! The card's fault times count from its first start, which the daemon makes right after it
//! creates its socket, so from just after `Rig::new` returns; `aplay` starts right after that.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
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

/// `aplay -D shmix WAV` started in the background, output piped.
fn spawn_aplay(rig: &Rig, extra: &[&str], wav: &Path) -> Child {
    let mut c = rig.cmd("aplay");
    c.args(["-D", "shmix"]).args(extra).arg(wav).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().expect("spawn aplay")
}

/// The device buffer in frames, from the daemon's startup line ("... buffer N frames").
fn device_buffer(log: &str) -> usize {
    log.lines()
        .find(|l| l.contains("listening on"))
        .and_then(|l| l.split("buffer ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no device buffer in the log:\n{log}"))
}

/// Checks that the pieces of a recording are the whole sound (`n` frames) in order: it starts at
/// the sound's start and ends at its end, nothing is repeated, and each discontinuity (the end
/// included) loses at most `max_loss` frames (what sat in the device's buffer) and is filled
/// with silence. Returns the frames lost.
fn assert_in_order(p: &[Piece], n: usize, max_loss: usize, what: &str) -> usize {
    assert!(!p.is_empty() && p[0].sound_at == 0, "{what}: does not start with the sound's start: {p:?}");
    // The end may be cut by a fault while the last frames sit in the device buffer (a drain
    // waiting for them): that counts as one more loss of at most `max_loss`.
    let last = p.last().unwrap();
    let mut lost = n.checked_sub(last.sound_at + last.len).unwrap_or_else(|| panic!("{what}: past the end: {p:?}"));
    assert!(lost <= max_loss, "{what}: the sound's last {lost} frames are missing: {p:?}");
    for w in p.windows(2) {
        let (a, b) = (w[0], w[1]);
        let gap =
            b.sound_at.checked_sub(a.sound_at + a.len).unwrap_or_else(|| panic!("{what}: frames repeated: {p:?}"));
        assert!(gap <= max_loss, "{what}: lost {gap} frames at once, more than {max_loss}: {p:?}");
        lost += gap;
    }
    lost
}

/// An xrun storm: the card forces an xrun every 250 ms during 3 s of noise. The daemon recovers
/// each time (prepare, silence prefill, start) and the client never notices. Each xrun loses
/// what sat in the card's buffer at that moment (as on a card whose DMA stopped) and inserts
/// silence; nothing else is lost, nothing is repeated, the order is kept.
#[test]
fn xrun_storm_is_recovered_every_time() {
    let card = Card { extra: vec!["xrun_every_ms 250".into()], ..Default::default() };
    let mut rig = Rig::new(card, &[]);
    let secs = 3.0;
    let (wav, sound) = noise_wav(&rig, "noise.wav", secs, 51);
    let mut cmd = rig.cmd("aplay");
    cmd.args(["-D", "shmix"]).arg(&wav);
    let r = run(cmd, Duration::from_secs(30));
    r.assert_ok("aplay");
    assert!(!r.stderr.contains("underrun"), "the client saw the device's xruns: {}", r.stderr);
    let wall = r.wall.as_secs_f64();
    assert!(wall >= secs * 0.9 && wall <= secs + 3.0, "aplay took {wall:.3} s for {secs} s of audio");

    let status = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert!(status.success(), "shmixd exited with {status}:\n{log}");
    let xruns = final_stat(&log, "xruns");
    // One every 250 ms while the card runs: about 12 in 3 s (more while the daemon idles after).
    assert!(xruns >= 8, "only {xruns} device xruns in a 250 ms storm:\n{log}");
    let dev_buffer = device_buffer(&log);
    let n = sound.len() / 2;
    let p = pieces_of(&rig.recording_s16(), &sound, 2, "xrun storm");
    let lost = assert_in_order(&p, n, dev_buffer, "xrun storm");
    assert!(p.len() as u64 <= xruns + 1, "{} pieces for {xruns} xruns: {p:?}", p.len());
    eprintln!(
        "xrun storm: {xruns} device xruns survived, sound in {} pieces, {lost} of {n} frames lost (device buffer {dev_buffer})",
        p.len()
    );
}

/// Waits until the daemon's log holds `needle` (at least `count` times).
fn wait_for_log(rig: &Rig, needle: &str, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while rig.daemon_log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "no '{needle}' (x{count}) in the log within {limit:?}:\n{}",
            rig.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The card's plug: a `gone_file` marker in a temp dir of its own; while the file exists the card
/// is gone (open and the running device fail with ENODEV).
struct Plug {
    _dir: tempfile::TempDir,
    marker: PathBuf,
}

impl Plug {
    fn new() -> Self {
        let dir = scratch_dir("shmix-plug-");
        let marker = dir.path().join("unplugged");
        Self { _dir: dir, marker }
    }

    /// The vcard key that ties the card to this plug.
    fn key(&self) -> String {
        format!("gone_file \"{}\"", self.marker.display())
    }

    /// A default card on this plug.
    fn card(&self) -> Card {
        Card { extra: vec![self.key()], ..Default::default() }
    }

    /// Pulls the card.
    fn pull(&self) {
        std::fs::write(&self.marker, b"").unwrap();
    }

    /// Pulls the card and waits until the daemon has logged that it vanished.
    fn pull_and_wait(&self, rig: &Rig) {
        self.pull();
        wait_for_log(rig, "vanished", 1, Duration::from_secs(2));
    }

    /// Puts the card back.
    fn put_back(&self) {
        std::fs::remove_file(&self.marker).unwrap();
    }
}

/// The card is pulled out for 2 s in the middle of a 4 s sound (its `gone_file` appears), and a
/// second client starts while it is gone. The daemon keeps both clients connected: their streams
/// hold still (aplay just waits in its blocking write), it retries opening the card, reopens it
/// with the same setup when it is back, and both play on: aplay exits 0 for each. Left channel:
/// the first sound, whole and in order except what sat in the card's buffer when it vanished
/// (lost with the card, as with a real unplug). Right channel: the second sound, whole and
/// contiguous (it waited in its ring).
#[test]
fn vanished_card_comes_back_and_clients_play_on() {
    let plug = Plug::new();
    let card = plug.card();
    let mut rig = Rig::new(card, &[]);
    let (wa, sa) = side_wav(&rig, "a.wav", 4.0, 61, true);
    let (wb, sb) = side_wav(&rig, "b.wav", 1.0, 62, false);
    let start = Instant::now();
    let mut a = spawn_aplay(&rig, &[], &wa);
    rig.wait_for_sound(2, 0, Duration::from_secs(20)); // streaming, not merely spawned
    std::thread::sleep(Duration::from_millis(300));
    plug.pull_and_wait(&rig);
    let gone_at = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let mut b = spawn_aplay(&rig, &["--mmap"], &wb);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(a.try_wait().unwrap().is_none(), "the first aplay ended while the card was gone");
    assert!(b.try_wait().unwrap().is_none(), "the second aplay ended while the card was gone");
    plug.put_back();
    let gone_for = gone_at.elapsed();
    let ra = finish(&mut a, start, Duration::from_secs(30));
    let rb = finish(&mut b, start, Duration::from_secs(30));
    ra.assert_ok("aplay (playing when the card vanished)");
    rb.assert_ok("aplay (started while the card was gone)");
    // 4 s of sound plus the time the card was gone, plus what the daemon took to notice both.
    let wall = ra.wall.as_secs_f64();
    let expect = 4.0 + gone_for.as_secs_f64();
    assert!(wall >= expect - 0.3 && wall <= expect + 2.5, "aplay took {wall:.3} s, expected about {expect:.3} s");

    let status = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert!(status.success(), "shmixd exited with {status}:\n{log}");
    assert!(log.contains("is back after"), "{log}");
    assert_eq!((final_stat(&log, "lost"), final_stat(&log, "reopened")), (1, 1), "{log}");
    let dev_buffer = device_buffer(&log);
    let rec = rig.recording_s16();
    let pa = pieces_of(&channel(&rec, 2, 0), &sa, 1, "left: playing through the unplug");
    let lost = assert_in_order(&pa, sa.len(), dev_buffer, "left: playing through the unplug");
    assert!(pa.len() <= 2, "more than one discontinuity: {pa:?}");
    assert_contiguous(&channel(&rec, 2, 1), &sb, 1, "right: started while the card was gone");
    let back = log.lines().find(|l| l.contains("is back after")).unwrap_or_default();
    eprintln!("unplug: gone for {gone_for:?}; left pieces {pa:?}, {lost} frames lost; log: {back}");
}

/// The card vanishes for good while a client plays: the client waits (aplay does not give up),
/// and SIGTERM to the daemon still ends everything at once: the daemon exits 0 within a second,
/// the client fails within a second.
#[test]
fn sigterm_while_the_card_is_gone_exits_at_once() {
    let plug = Plug::new();
    let card = plug.card();
    let mut rig = Rig::new(card, &[]);
    let (wav, _) = noise_wav(&rig, "noise.wav", 5.0, 71);
    let start = Instant::now();
    let mut a = spawn_aplay(&rig, &[], &wav);
    rig.wait_for_sound(2, 0, Duration::from_secs(20)); // streaming, not merely spawned
    std::thread::sleep(Duration::from_millis(300));
    plug.pull_and_wait(&rig);
    // Gone for 2.5 s: aplay's blocking write keeps waiting (alsa-lib's poll timeouts just loop).
    std::thread::sleep(Duration::from_millis(2500));
    assert!(a.try_wait().unwrap().is_none(), "aplay gave up while the card was gone");
    let t = Instant::now();
    let status = rig.signal_daemon(libc::SIGTERM);
    let daemon_took = t.elapsed();
    let r = finish(&mut a, start, Duration::from_secs(10));
    let client_took = t.elapsed();
    let log = rig.daemon_log();
    assert!(status.success(), "shmixd exited with {status}:\n{log}");
    assert!(daemon_took < Duration::from_secs(1), "shmixd took {daemon_took:?} to exit:\n{log}");
    assert!(!r.status.success(), "aplay succeeded although the daemon stopped:\n{}", r.stderr);
    assert!(client_took < Duration::from_millis(1500), "aplay took {client_took:?} to notice the daemon's exit");
    assert!(log.contains("still gone at shutdown"), "{log}");
    assert_eq!((final_stat(&log, "lost"), final_stat(&log, "reopened")), (1, 0), "{log}");
}

/// `disconnect_at_ms`: the card's handle dies 1 s after it started (`-ENODEV`), but a new open
/// works at once: the daemon notices, closes the dead handle, reopens the card within its
/// first retry (100 ms), and the client plays on: aplay exits 0, the sound is in order with
/// at most the device's buffer lost at each unplug.
#[test]
fn replugged_card_is_reopened_within_a_retry() {
    let mut rig = Rig::new(Card { extra: vec!["disconnect_at_ms 1000".into()], ..Default::default() }, &[]);
    let (wav, sound) = noise_wav(&rig, "noise.wav", 2.0, 41);
    let mut cmd = rig.cmd("aplay");
    cmd.args(["-D", "shmix"]).arg(&wav);
    let r = run(cmd, Duration::from_secs(30));
    r.assert_ok("aplay");
    let status = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert!(status.success(), "shmixd exited with {status}:\n{log}");
    let backs = log.matches("is back after").count();
    assert!(backs >= 1, "{log}");
    assert!(final_stat(&log, "lost") >= 1 && final_stat(&log, "reopened") == backs as u64, "{log}");
    let dev_buffer = device_buffer(&log);
    let p = pieces_of(&rig.recording_s16(), &sound, 2, "replug");
    let lost = assert_in_order(&p, sound.len() / 2, dev_buffer, "replug");
    eprintln!("replug: reopened {backs} times, pieces {p:?}, {lost} frames lost");
}

/// A client stopped with SIGSTOP for 1.5 s in the middle of its stream delays no one: the other
/// client (left channel) stays bit-exact, contiguous and on time. The stopped one (right)
/// underruns while stopped and continues after SIGCONT, losing nothing.
#[test]
fn sigstopped_client_does_not_delay_the_others() {
    let rig = Rig::new(Card::default(), &[]);
    let (wa, sa) = side_wav(&rig, "a.wav", 4.0, 81, true);
    let (wb, sb) = side_wav(&rig, "b.wav", 3.0, 82, false);
    let start = Instant::now();
    let mut a = spawn_aplay(&rig, &[], &wa);
    let mut b = spawn_aplay(&rig, &[], &wb);
    rig.wait_for_sound(2, 1, Duration::from_secs(20)); // streaming, not merely spawned
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(b.id() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: as above.
    unsafe { libc::kill(b.id() as i32, libc::SIGCONT) };
    let ra = finish(&mut a, start, Duration::from_secs(30));
    let rb = finish(&mut b, start, Duration::from_secs(30));
    ra.assert_ok("aplay (never stopped)");
    rb.assert_ok("aplay (stopped for 1.5 s)");
    let wall = ra.wall.as_secs_f64();
    assert!((3.6..=4.0 + 2.0).contains(&wall), "the running aplay took {wall:.3} s for 4 s of audio");
    let rec = rig.recording_s16();
    let at = assert_contiguous(&channel(&rec, 2, 0), &sa, 1, "left: the client that kept running");
    let pb = pieces_of(&channel(&rec, 2, 1), &sb, 1, "right: the stopped client");
    let lost = assert_in_order(&pb, sb.len(), 0, "right: the stopped client");
    assert_eq!(lost, 0);
    assert!(pb.len() >= 2, "the stopped client left no gap: {pb:?}");
    eprintln!("sigstop: running client contiguous from frame {at}; stopped client's pieces {pb:?}");
}

/// SIGKILL while a stream plays: the client fails within a second and a half; a new daemon
/// started on the same socket path (the dead one's socket file is still there: it is found
/// stale and replaced) serves new clients bit-exact.
#[test]
fn killed_daemon_restarts_on_the_same_socket() {
    let mut rig = Rig::new(Card::default(), &[]);
    let (wav, _) = noise_wav(&rig, "long.wav", 10.0, 91);
    let start = Instant::now();
    let mut old = spawn_aplay(&rig, &[], &wav);
    rig.wait_for_sound(2, 0, Duration::from_secs(20)); // streaming, not merely spawned
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    rig.signal_daemon(libc::SIGKILL);
    assert!(rig.sock.exists(), "the killed daemon's socket file is gone: the stale-socket case is not tested");
    let r = finish(&mut old, start, Duration::from_secs(10));
    let after = killed.elapsed();
    assert!(!r.status.success(), "aplay succeeded although the daemon was killed:\n{}", r.stderr);
    assert!(after < Duration::from_millis(1500), "aplay took {after:?} to notice the daemon's death");

    let played_before = rig.recording_s16().len();
    rig.start_daemon(&[]);
    wait_for_log(&rig, "listening on", 2, Duration::from_secs(10));
    let log = rig.daemon_log();
    assert!(log.contains("removed stale socket"), "{log}");
    let (wav2, sound2) = noise_wav(&rig, "new.wav", 2.0, 92);
    let mut cmd = rig.cmd("aplay");
    cmd.args(["-D", "shmix"]).arg(&wav2);
    run(cmd, Duration::from_secs(30)).assert_ok("aplay on the restarted daemon");
    let status = rig.signal_daemon(libc::SIGTERM);
    assert!(status.success(), "the restarted shmixd exited with {status}:\n{}", rig.daemon_log());
    assert_contiguous(&rig.recording_s16()[played_before..], &sound2, 2, "after the restart");
}

/// A `key value` number from a line of a C probe's output.
fn probe_value(line: &str, key: &str) -> i64 {
    let mut it = line.split_whitespace();
    while let Some(k) = it.next() {
        if k == key {
            return it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad '{key}' in: {line}"));
        }
    }
    panic!("no '{key}' in: {line}")
}

/// What a client sees while the card is gone (tests/c/wait_probe.c: non-blocking writes from a
/// poll loop with a 50 ms timeout, sampling snd_pcm_avail and snd_pcm_delay on every turn). Once
/// the card has been gone for 400 ms: avail and delay do not move at all (nothing is consumed;
/// delay has settled on the frames in the ring), poll never reports POLLOUT or an error (it just
/// times out: no busy loop), no frame is accepted. When the card is back the program plays on and
/// drains; the card has its sound in order with at most the device's buffer lost at the unplug.
#[test]
fn clients_hold_still_while_the_card_is_gone() {
    let plug = Plug::new();
    let card = plug.card();
    let mut rig = Rig::new(card, &[]);
    let exe = compile_c(&rig, "wait_probe");
    let secs = 3.0;
    let start = Instant::now();
    let mut cmd = rig.cmd(&exe);
    cmd.arg(secs.to_string()).arg(&plug.marker).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn wait_probe");
    std::thread::sleep(Duration::from_millis(1000));
    plug.pull();
    std::thread::sleep(Duration::from_millis(2000));
    plug.put_back();
    let r = finish(&mut child, start, Duration::from_secs(30));
    r.assert_ok("wait_probe");
    let line =
        r.stdout.lines().find(|l| l.starts_with("wait ")).unwrap_or_else(|| panic!("no wait line:\n{}", r.stdout));
    eprintln!("while gone: {line}");
    let v = |k| probe_value(line, k);
    assert!(v("samples") >= 10, "too few samples while the card was gone: {line}");
    assert_eq!(v("avail_min"), v("avail_max"), "avail moved while the card was gone: {line}");
    assert_eq!(v("delay_min"), v("delay_max"), "delay moved while the card was gone: {line}");
    assert!(v("delay_min") >= v("buffer") - v("avail_max"), "delay below the ring's fill: {line}");
    assert_eq!(v("written_while_gone"), 0, "frames accepted while the card was gone: {line}");
    assert_eq!(v("pollerr"), 0, "poll reported an error while the card was gone: {line}");
    assert!(v("pollout") <= 1, "poll kept reporting room while the card was gone: {line}");
    assert!(v("timeouts") >= 15, "poll did not just wait (50 ms timeouts) while the card was gone: {line}");

    let status = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert!(status.success(), "shmixd exited with {status}:\n{log}");
    let n = (secs * f64::from(RATE)) as usize;
    let sound = noise(77, n, 20000);
    let p = pieces_of(&channel(&rig.recording_s16(), 2, 0), &sound, 1, "probe through the unplug");
    assert_in_order(&p, n, device_buffer(&log), "probe through the unplug");
}

/// The card comes back with another setup (its config now says 44100 Hz): the streams were built
/// for 48000 Hz, so the daemon closes it again, says why, and keeps the clients waiting; when the
/// card comes back as before (config restored), it is reopened and the client plays on.
#[test]
fn card_back_with_another_setup_is_not_used() {
    let plug = Plug::new();
    let card = plug.card();
    let mut rig = Rig::new(card, &[]);
    let (wav, sound) = noise_wav(&rig, "noise.wav", 3.0, 101);
    let start = Instant::now();
    let mut a = spawn_aplay(&rig, &[], &wav);
    rig.wait_for_sound(2, 0, Duration::from_secs(20)); // streaming, not merely spawned
    std::thread::sleep(Duration::from_millis(300));
    plug.pull_and_wait(&rig);
    // alsa-lib rereads a config file at the next open when its inode or mtime (in whole
    // seconds) changed: replace it by a new file.
    let conf = std::fs::read_to_string(&rig.conf).unwrap();
    assert!(conf.contains("rate 48000"), "{conf}");
    let replace_conf = |text: &str| {
        let tmp = rig.path("asound.conf.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &rig.conf).unwrap();
    };
    replace_conf(&conf.replace("rate 48000", "rate 44100"));
    plug.put_back();
    wait_for_log(&rig, "it came back as", 1, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(700));
    assert!(a.try_wait().unwrap().is_none(), "aplay ended while the card had the wrong setup");
    assert!(!rig.daemon_log().contains("is back after"), "{}", rig.daemon_log());
    replace_conf(&conf);
    let r = finish(&mut a, start, Duration::from_secs(30));
    r.assert_ok("aplay");
    let status = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert!(status.success(), "shmixd exited with {status}:\n{log}");
    assert!(log.contains("is back after"), "{log}");
    assert_eq!((final_stat(&log, "lost"), final_stat(&log, "reopened")), (1, 1), "{log}");
    let why = log.lines().find(|l| l.contains("it came back as")).unwrap_or_default();
    eprintln!("wrong setup: {why}");
    let p = pieces_of(&rig.recording_s16(), &sound, 2, "through a wrong comeback");
    assert_in_order(&p, sound.len() / 2, device_buffer(&log), "through a wrong comeback");
}

/// `shmixctl --socket S stats --json`.
fn stats_json(rig: &Rig) -> serde_json::Value {
    let mut c = rig.cmd(artifacts_dir().join("shmixctl"));
    c.arg("--socket").arg(&rig.sock).args(["stats", "--json"]);
    let r = run(c, Duration::from_secs(10));
    r.assert_ok("shmixctl stats --json");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("no JSON ({e}):\n{}", r.stdout))
}

/// The (present, lost, reopened) device fields of `shmixctl stats --json`.
fn device_state(rig: &Rig) -> (bool, u64, u64) {
    let v = stats_json(rig);
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no '{k}' in {v}"));
    (
        v["device_present"].as_bool().unwrap_or_else(|| panic!("no device_present in {v}")),
        n("device_lost"),
        n("device_reopened"),
    )
}

/// Checks that the pieces of a recording are stretches of its source in order: each starts at
/// or after the previous one's end (nothing repeated or reordered) and skips at most `max_loss`
/// frames of it. Returns the frames skipped in all.
fn assert_ordered(p: &[Piece], max_loss: usize, what: &str) -> usize {
    assert!(!p.is_empty(), "{what}: nothing recorded");
    let mut lost = 0;
    for w in p.windows(2) {
        let end = w[0].sound_at + w[0].len;
        assert!(w[1].sound_at >= end, "{what}: a stretch is repeated or out of order: {p:?}");
        let gap = w[1].sound_at - end;
        assert!(gap <= max_loss, "{what}: {gap} frames lost at one discontinuity (max {max_loss}): {p:?}");
        lost += gap;
    }
    lost
}

/// The card is pulled out for about 2 s while `arecord -D shmix` records its capture side
/// (`capture_file`, which the card continues where it was when it comes back:
/// `capture_continue`) and `arecord -D shmix_monitor` records what `aplay -D shmix` plays. All
/// three wait while it is gone and go on when it is back; all exit 0. The capture recording is
/// the capture file in order (no stretch repeated, no garbage), at most the device's buffer
/// skipped at the unplug; the monitor recording is the played sound in order, likewise; `shmixctl
/// stats --json` says `device_present` false, `device_lost` 1 while the card is gone, and
/// `device_present` true, `device_reopened` 1 after.
#[test]
fn recorders_wait_for_a_vanished_card_and_continue() {
    let plug = Plug::new();
    let n_cap = 10 * RATE as usize;
    let cap_sound = interleave(&[noise(111, n_cap, 30000), noise(112, n_cap, 30000)]);
    let cap_bytes: Vec<u8> = cap_sound.iter().flat_map(|v| v.to_le_bytes()).collect();
    let card = Card { extra: vec![plug.key(), "capture_continue true".into()], ..Default::default() };
    let mut rig = Rig::with_capture(card, &[], Some(&cap_bytes));
    let (wav, sound) = noise_wav(&rig, "noise.wav", 4.0, 113);
    let cap_out = rig.path("capture.out");
    let mon_out = rig.path("monitor.out");
    let arecord = |dev: &str, out: &Path| {
        let mut c = rig.cmd("arecord");
        c.args(["-D", dev, "-t", "raw", "-f", "S16_LE", "-r", "48000", "-c", "2", "-d", "3"]).arg(out);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().expect("spawn arecord")
    };
    let start = Instant::now();
    let mut play = spawn_aplay(&rig, &[], &wav);
    let mut cap = arecord("shmix", &cap_out);
    let mut mon = arecord("shmix_monitor", &mon_out);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(device_state(&rig), (true, 0, 0));
    plug.pull_and_wait(&rig);
    let gone_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let during = device_state(&rig);
    std::thread::sleep(Duration::from_millis(1000));
    for (c, what) in [(&mut play, "aplay"), (&mut cap, "arecord"), (&mut mon, "arecord (monitor)")] {
        assert!(c.try_wait().unwrap().is_none(), "{what} ended while the card was gone");
    }
    plug.put_back();
    let gone_for = gone_at.elapsed().as_secs_f64();
    let rc = finish(&mut cap, start, Duration::from_secs(30));
    let rm = finish(&mut mon, start, Duration::from_secs(30));
    let rp = finish(&mut play, start, Duration::from_secs(30));
    rc.assert_ok("arecord -D shmix through the unplug");
    rm.assert_ok("arecord -D shmix_monitor through the unplug");
    rp.assert_ok("aplay through the unplug");
    let after = device_state(&rig);
    assert_eq!(during, (false, 1, 0), "shmixctl stats while the card was gone");
    assert_eq!(after, (true, 1, 1), "shmixctl stats after the card came back");
    let wall = rc.wall.as_secs_f64();
    assert!(
        wall >= 3.0 + gone_for - 0.5 && wall <= 3.0 + gone_for + 3.0,
        "arecord took {wall:.3} s, gone {gone_for:.3} s"
    );

    let status = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert!(status.success(), "shmixd exited with {status}:\n{log}");
    assert!(log.contains("capture device 'card' is back"), "{log}");
    assert_eq!((final_stat(&log, "capture-lost"), final_stat(&log, "capture-reopened")), (1, 1), "{log}");
    let dev_buffer = device_buffer(&log);
    let rec = std::fs::read(&cap_out).unwrap();
    let rec: Vec<i16> = rec.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(rec.len(), 3 * RATE as usize * 2, "arecord -d 3 recorded {} samples", rec.len());
    let pc = pieces_of(&rec, &cap_sound, 2, "capture through the unplug");
    let lost_c = assert_ordered(&pc, dev_buffer, "capture through the unplug");
    assert!(pc.len() <= 2, "more than one discontinuity in the capture: {pc:?}");
    let recorded: usize = pc.iter().map(|p| p.len).sum();
    assert!(
        recorded + dev_buffer * 2 >= 3 * RATE as usize,
        "only {recorded} frames of the capture file recorded: {pc:?}"
    );
    let mon = std::fs::read(&mon_out).unwrap();
    let mon: Vec<i16> = mon.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    let pm = pieces_of(&mon, &sound, 2, "monitor through the unplug");
    let lost_m = assert_ordered(&pm, dev_buffer, "monitor through the unplug");
    eprintln!(
        "recorders through an unplug of {gone_for:.2} s: capture pieces {pc:?} ({lost_c} frames skipped), monitor pieces \
         {pm:?} ({lost_m} skipped); stats while gone {during:?}, after {after:?}"
    );
}

/// aplay's end coincides with an outage: the card is pulled out as soon as `shmixctl list` shows
/// aplay's stream draining (its last 500 ms buffer queued) and stays out for 2.5 s, longer than
/// the drain's own bound (the queued audio plus 1 s). While the daemon says the device is gone
/// (`DEVICE_WAITING` in the stream's timing flags) the plugin's drain does not count the time:
/// it waits, the card comes back, the end plays. aplay exits 0 without a drain timeout, took
/// about the sound plus the outage, and the whole sound is on the card in order with at most
/// the device's buffer lost at the unplug.
#[test]
fn drain_waits_for_a_vanished_card() {
    let plug = Plug::new();
    let card = plug.card();
    let mut rig = Rig::new(card, &[]);
    let secs = 2.0;
    let (wav, sound) = noise_wav(&rig, "noise.wav", secs, 121);
    let start = Instant::now();
    let mut a = spawn_aplay(&rig, &["-B", "500000"], &wav);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = rig.cmd(artifacts_dir().join("shmixctl"));
        c.arg("--socket").arg(&rig.sock).args(["list", "--json"]);
        let out = run(c, Duration::from_secs(10)).stdout;
        if out.contains("\"draining\"") {
            break;
        }
        assert!(Instant::now() < deadline, "aplay's stream never showed draining: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain_seen = start.elapsed().as_secs_f64();
    plug.pull_and_wait(&rig);
    let gone_at = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(a.try_wait().unwrap().is_none(), "aplay ended while the card was gone");
    plug.put_back();
    let gone_for = gone_at.elapsed().as_secs_f64();
    let r = finish(&mut a, start, Duration::from_secs(30));
    r.assert_ok("aplay draining through an unplug");
    assert!(!r.stderr.contains("timed out"), "the drain timed out: {}", r.stderr);
    let wall = r.wall.as_secs_f64();
    assert!(
        wall >= secs + gone_for - 0.5 && wall <= secs + gone_for + 3.0,
        "aplay took {wall:.3} s, gone {gone_for:.3} s"
    );

    let status = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert!(status.success(), "shmixd exited with {status}:\n{log}");
    assert_eq!((final_stat(&log, "lost"), final_stat(&log, "reopened")), (1, 1), "{log}");
    let dev_buffer = device_buffer(&log);
    let p = pieces_of(&rig.recording_s16(), &sound, 2, "drain through an unplug");
    let lost = assert_in_order(&p, sound.len() / 2, dev_buffer, "drain through an unplug");
    eprintln!(
        "drain through an unplug of {gone_for:.2} s (draining seen at {drain_seen:.2} s): aplay took {wall:.3} s, pieces \
         {p:?}, {lost} frames lost"
    );
}

/// `--wait-for-device`: the card is absent when the daemon starts. Without the flag shmixd exits
/// with an error; with it, it listens, `shmixctl stats` says `device_present` false, a player and
/// a recorder that start meanwhile wait, and when the card appears it is opened and they go on:
/// aplay exits 0 and the card has its sound bit-exact and contiguous; arecord exits 0 with the
/// card's capture file from its start, contiguous.
#[test]
fn daemon_waits_for_an_absent_card() {
    let plug = Plug::new();
    plug.pull();
    let n_cap = 5 * RATE as usize;
    let cap_sound = interleave(&[noise(132, n_cap, 30000), noise(133, n_cap, 30000)]);
    let cap_bytes: Vec<u8> = cap_sound.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut rig = Rig::with_capture(plug.card(), &["--wait-for-device"], Some(&cap_bytes));
    // The default is unchanged: a second daemon without the flag gives up.
    let mut plain = rig.cmd(artifacts_dir().join("shmixd"));
    plain.arg("--socket").arg(rig.path("other.sock")).args(["--device", "card"]);
    let r = run(plain, Duration::from_secs(10));
    assert!(!r.status.success(), "shmixd without --wait-for-device started on an absent card:\n{}", r.stderr);
    assert!(r.stderr.contains("opening device 'card'"), "{}", r.stderr);

    assert_eq!(device_state(&rig), (false, 0, 0), "stats while the card is absent");
    let (wav, sound) = noise_wav(&rig, "noise.wav", 1.5, 131);
    let start = Instant::now();
    let mut a = spawn_aplay(&rig, &[], &wav);
    let cap_out = rig.path("capture.out");
    let mut c = rig.cmd("arecord");
    c.args(["-D", "shmix", "-t", "raw", "-f", "S16_LE", "-r", "48000", "-c", "2", "-d", "1"]).arg(&cap_out);
    let mut rec = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn arecord");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(a.try_wait().unwrap().is_none(), "aplay ended while the card was absent");
    assert!(rec.try_wait().unwrap().is_none(), "arecord ended while the card was absent");
    plug.put_back();
    let waited = start.elapsed().as_secs_f64();
    let r = finish(&mut a, start, Duration::from_secs(30));
    r.assert_ok("aplay started before the card appeared");
    finish(&mut rec, start, Duration::from_secs(30)).assert_ok("arecord started before the card appeared");
    let wall = r.wall.as_secs_f64();
    assert!(wall >= waited + 1.5 - 0.3 && wall <= waited + 1.5 + 3.0, "aplay took {wall:.3} s, waited {waited:.3} s");
    assert_eq!(device_state(&rig), (true, 0, 1), "stats after the card appeared");

    let status = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert!(status.success(), "shmixd exited with {status}:\n{log}");
    assert!(log.contains("is absent at startup") && log.contains("is back after"), "{log}");
    let at = assert_contiguous(&rig.recording_s16(), &sound, 2, "played once the card appeared");
    let got = std::fs::read(&cap_out).unwrap();
    let got: Vec<i16> = got.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(got.len(), RATE as usize * 2, "arecord -d 1 recorded {} samples", got.len());
    let pc = pieces_of(&got, &cap_sound, 2, "recorded once the card appeared");
    assert!(pc.len() == 1 && pc[0].sound_at == 0, "not the capture file from its start: {pc:?}");
    let back = log.lines().find(|l| l.contains("is back after")).unwrap_or_default();
    eprintln!(
        "absent at startup: aplay waited {waited:.2} s, took {wall:.3} s, sound contiguous from frame {at}; {back}"
    );
}

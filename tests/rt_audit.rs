//! Allocation audit of the whole mix cycle (security audit, issue 15): shmixd built with the
//! feature `rt-audit` (its own target dir, `make build`) counts every allocation and free made
//! on the mix thread inside `MixThread::cycle`, and prints the count in its final stats line.
//! Two daemons are driven through everything the cycle handles besides plain mixing: streams
//! added and removed, capture and monitor (the capture device opened and closed), stream and
//! master volume and mute, hostile clients (a cursor beyond the ring, garbage records, a flood
//! of records and wake signals, bad descriptors), the card vanishing and coming back, the idle
//! stop and the restart after it, and an xrun storm with a suspend. Both must end with
//! `rt allocations 0`; the first stream beside the hostile clients stays bit-exact.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shmix_shared::layout::DEFAULT_MSG_RECORDS;
use shmix_shared::msg::{AudioParams, Record, SocketMsg};
use shmix_shared::shm::Ring;
use shmix_shared::socket;
use shmix_shared::sync::Ordering;
use shmix_shared::{ChannelMap, ResampleQuality};

use crate::common::*;
use crate::hostile::{scribble, Raw};

/// The rt-audit shmixd, built by `make build` beside the normal target dir.
fn audit_shmixd() -> PathBuf {
    let target = artifacts_dir().parent().expect("target dir").to_path_buf();
    let p = target.join("rt-audit/debug/shmixd");
    assert!(
        p.exists(),
        "{} is missing: run `make build` (it builds shmixd with --features rt-audit into target/rt-audit)",
        p.display()
    );
    p
}

/// A rig whose daemon is the rt-audit build.
fn audit_rig(card: Card, capture: Option<&[u8]>, args: &[&str]) -> Rig {
    let mut rig = Rig::without_daemon(card, capture);
    let cmd = rig.cmd(audit_shmixd());
    rig.start_daemon_cmd(cmd, args);
    rig
}

/// Stops the daemon and returns the `rt allocations` count of its final stats line, after
/// checking the counters named in `exercised` are not zero (the paths really ran).
fn final_rt_allocations(rig: &mut Rig, exercised: &[&str]) -> u64 {
    let st = rig.signal_daemon(libc::SIGTERM);
    let log = rig.daemon_log();
    assert!(st.success(), "shmixd exited with {st}:\n{log}");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(" | cycles "))
        .unwrap_or_else(|| panic!("no stats line:\n{log}"))
        .to_string();
    eprintln!("final stats: {line}");
    let stat = |key: &str| -> u64 {
        let pat = format!(" {key} ");
        let at = line.find(&pat).unwrap_or_else(|| panic!("no '{key}' in: {line}")) + pat.len();
        line[at..].split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad {key}: {line}"))
    };
    for key in exercised {
        assert!(stat(key) > 0, "the run did not exercise '{key}': {line}");
    }
    stat("rt allocations")
}

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")
}

fn aplay(rig: &Rig, wav: &Path) -> Child {
    let mut c = rig.cmd("aplay");
    c.args(["-q", "-D", "shmix"]).arg(wav);
    spawn(c)
}

fn arecord(rig: &Rig, dev: &str, secs: u32, out: &Path) -> Child {
    let mut c = rig.cmd("arecord");
    c.args(["-q", "-D", dev, "-f", "S16_LE", "-r", "48000", "-c", "2", "-t", "raw", "-d", &secs.to_string()]).arg(out);
    spawn(c)
}

fn done(mut c: Child, what: &str) {
    finish(&mut c, Instant::now(), Duration::from_secs(40)).assert_ok(what);
}

fn shmixctl(rig: &Rig, args: &[&str]) -> String {
    let mut c = rig.cmd(artifacts_dir().join("shmixctl"));
    c.arg("--socket").arg(&rig.sock).args(args);
    let r = run(c, Duration::from_secs(10));
    r.assert_ok(&format!("shmixctl {}", args.join(" ")));
    r.stdout
}

/// Waits until the daemon's log holds `needle` `count` times.
fn wait_log(rig: &Rig, needle: &str, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while rig.daemon_log().matches(needle).count() < count {
        assert!(Instant::now() < deadline, "no '{needle}' (x{count}) within {limit:?}:\n{}", rig.daemon_log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stream that keeps its ring full of silence and its record ring full of `Resume`, and
/// signals its wake descriptor in a loop, until `stop`.
fn flooder(rig: &Rig, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let c = Raw::connect(rig);
    std::thread::spawn(move || {
        let params = AudioParams { period_frames: 256, buffer_frames: 1024, ..c.device };
        let (fd, mut shm, wakes) = c.ready_stream_with_records(params, 1024, "flood");
        let _ = shm.c2d.push(Record::Start { seq: 0 });
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let read = shm.audio_read().pos.load(Ordering::Acquire);
            shm.audio_write().pos.store(read.wrapping_add(params.buffer_frames), Ordering::Release);
            shm.audio_write().sleeping.store(1, Ordering::Release);
            while shm.c2d.push(Record::Resume { seq: n as u32 }).unwrap_or(false) {
                n += 1;
            }
            wakes.daemon.signal();
            std::thread::sleep(Duration::from_micros(200));
        }
        drop((fd, shm, wakes, c));
        n
    })
}

/// Hostile clients the mix thread has to retire (a cursor beyond the ring, garbage records) and
/// the control thread has to refuse (an unsealed memfd, no descriptors, a socket in place of the
/// memfd). Returns once each was refused or disconnected.
fn hostile_round(rig: &Rig) {
    let c = Raw::connect(rig);
    let params = c.params();
    let (_fd, mut shm, _w) = c.ready_stream(params, "beyond");
    shm.audio_write().pos.store(params.buffer_frames * 3, Ordering::Release);
    shm.c2d.push(Record::Start { seq: 1 }).unwrap();
    c.assert_disconnected("cursor beyond the ring");

    let c = Raw::connect(rig);
    let (fd, shm, _w) = c.ready_stream(params, "garbage");
    let garbage: Vec<u8> = noise(99, 4 * 8, 32767).iter().flat_map(|s| s.to_le_bytes()).collect();
    scribble(&fd, shm.layout().total_bytes as usize, shm.layout().c2d_offset as usize, &garbage);
    shm.ring_write_cursor(Ring::ClientToDaemon).pos.store(4, Ordering::Release);
    c.assert_disconnected("garbage records");

    let c = Raw::connect(rig);
    let layout = c.layout();
    // SAFETY: memfd_create with a valid C string; the fd is fresh and ours.
    let unsealed = unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"x".as_ptr(), libc::MFD_CLOEXEC)) };
    // SAFETY: ftruncate on our own fd.
    unsafe { libc::ftruncate(unsealed.as_raw_fd(), layout.total_bytes as libc::off_t) };
    let w = c.create_with(params, unsealed.as_raw_fd(), layout.total_bytes);
    assert!(matches!(c.answer(), Some(SocketMsg::Refused { .. }) | None), "unsealed memfd accepted");
    drop(w);

    let msg = |p: AudioParams| SocketMsg::CreateStream {
        params: p,
        msg_records: DEFAULT_MSG_RECORDS,
        memfd_bytes: layout.total_bytes,
        chmap: ChannelMap::standard(p.channels),
        quality: ResampleQuality::Default,
    };
    let c = Raw::connect(rig);
    socket::send(c.sock.as_fd(), &msg(params), &[]).unwrap();
    assert!(matches!(c.answer(), Some(SocketMsg::Refused { .. }) | None), "CreateStream without fds accepted");
    let c = Raw::connect(rig);
    let s = c.sock.as_raw_fd();
    socket::send(c.sock.as_fd(), &msg(params), &[s, s, s]).unwrap();
    assert!(matches!(c.answer(), Some(SocketMsg::Refused { .. }) | None), "sockets as memfd accepted");
}

/// Playback (two streams, one with its volume and mute changed), capture and monitor, hostile
/// clients and a flood beside them, then the card vanishing and coming back under a stream and
/// a recorder, master volume and capture mute, the idle stop and the restart after it: no
/// allocation on the mix thread, and the first stream bit-exact on the card's left channel.
#[test]
fn the_mix_cycle_allocates_nothing_through_faults_commands_and_hostile_clients() {
    let plug = scratch_dir("shmix-plug-");
    let marker = plug.path().join("unplugged");
    let card = Card { extra: vec![format!("gone_file \"{}\"", marker.display())], ..Default::default() };
    let capture: Vec<u8> = stereo_noise(7, 20.0).iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut rig = audit_rig(card, Some(&capture), &["--idle-stop", "1", "--periods", "8"]);

    // 1. The reference stream (left), a second one (right) whose volume and mute change.
    let (wa, sa) = side_wav(&rig, "a.wav", 5.0, 41, true);
    let (wb, _) = side_wav(&rig, "b.wav", 4.0, 42, false);
    let a = aplay(&rig, &wa);
    rig.wait_for_sound(2, 0, Duration::from_secs(10));
    let b = aplay(&rig, &wb);
    rig.wait_for_sound(2, 1, Duration::from_secs(10));
    // 2. A recorder and a monitor: the capture device is opened, then closed after them.
    let rec = arecord(&rig, "shmix", 1, &rig.path("cap.raw"));
    let mon = arecord(&rig, "shmix_monitor", 1, &rig.path("mon.raw"));
    // 3. Commands to the second stream.
    let list: Value = serde_json::from_str(&shmixctl(&rig, &["list", "--json"])).unwrap();
    let ids: Vec<String> = list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["direction"] == "playback")
        .map(|s| s["id"].to_string())
        .collect();
    let id_b = ids.last().expect("the second stream is listed").clone();
    shmixctl(&rig, &["volume", &id_b, "-6dB"]);
    shmixctl(&rig, &["mute", &id_b, "on"]);
    shmixctl(&rig, &["mute", &id_b, "off"]);
    // 4. Hostile clients, and a flood of records and wake signals beside the streams.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = flooder(&rig, Arc::clone(&stop));
    hostile_round(&rig);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let records = flood.join().unwrap();
    eprintln!("the flooder pushed {records} records");
    done(rec, "arecord");
    done(mon, "arecord -D shmix_monitor");
    done(a, "aplay a");
    done(b, "aplay b");
    let left = channel(&rig.recording_s16(), 2, 0);
    assert_contiguous(&left, &sa, 1, "the reference stream beside commands and hostile clients");

    // 5. The card vanishes under a stream and a recorder, and comes back; master volume and
    // capture mute change meanwhile.
    let (wc, _) = side_wav(&rig, "c.wav", 3.0, 43, false);
    let c = aplay(&rig, &wc);
    rig.wait_for_sound(2, 1, Duration::from_secs(10));
    let rec = arecord(&rig, "shmix", 3, &rig.path("cap2.raw"));
    std::thread::sleep(Duration::from_millis(400));
    std::fs::write(&marker, b"").unwrap();
    wait_log(&rig, "vanished", 1, Duration::from_secs(5));
    shmixctl(&rig, &["volume", "master", "-3dB"]);
    shmixctl(&rig, &["mute", "capture", "on"]);
    std::thread::sleep(Duration::from_millis(600));
    std::fs::remove_file(&marker).unwrap();
    shmixctl(&rig, &["mute", "capture", "off"]);
    shmixctl(&rig, &["volume", "master", "0dB"]);
    done(c, "aplay through the card's absence");
    done(rec, "arecord through the card's absence");

    // 6. Idle: the device stops after 1 s without streams; a new stream starts it again.
    wait_log(&rig, "idle stops 1", 1, Duration::from_secs(10));
    let (wd, _) = side_wav(&rig, "d.wav", 0.5, 44, false);
    done(aplay(&rig, &wd), "aplay after the idle stop");

    let n = final_rt_allocations(&mut rig, &["captured", "monitored", "lost", "reopened", "idle stops", "muted"]);
    assert_eq!(n, 0, "the mix thread allocated or freed {n} times inside its cycle");
}

/// An xrun every 150 ms and a 200 ms suspend under a stream and a recorder: the recoveries
/// (prepare, prefill, start; resume) of both directions allocate nothing on the mix thread.
#[test]
fn device_recovery_allocates_nothing() {
    let card = Card {
        extra: vec!["xrun_every_ms 150".into(), "suspend_at_ms 1000".into(), "suspend_ms 200".into()],
        ..Default::default()
    };
    let capture: Vec<u8> = stereo_noise(9, 10.0).iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut rig = audit_rig(card, Some(&capture), &[]);
    let (wa, _) = side_wav(&rig, "a.wav", 3.0, 45, true);
    let a = aplay(&rig, &wa);
    let rec = arecord(&rig, "shmix", 2, &rig.path("cap.raw"));
    done(rec, "arecord in an xrun storm");
    done(a, "aplay in an xrun storm");
    let n = final_rt_allocations(&mut rig, &["xruns", "suspends", "captured"]);
    assert_eq!(n, 0, "the mix thread allocated or freed {n} times inside its cycle");
}

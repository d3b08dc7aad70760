//! Reliability and security: clients that race the daemon over their shared memory, floods of
//! idle or dribbling connections, descriptor exhaustion, and the per-client limits. Every test
//! plays a reference stream through the real plugin next to the abuse and compares what the card
//! recorded sample for sample.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmix_shared::layout::DEFAULT_MSG_RECORDS;
use shmix_shared::msg::{AudioParams, Direction, Record, SocketMsg};
use shmix_shared::shm::{Ring, StreamShm};
use shmix_shared::socket;
use shmix_shared::sync::Ordering;

use crate::common::*;
use crate::hostile::{scribble, seqpacket, Raw};

fn daemon_alive(rig: &Rig) -> bool {
    std::fs::metadata(format!("/proc/{}/stat", rig.daemon_pid())).is_ok()
        && !std::fs::read_to_string(format!("/proc/{}/stat", rig.daemon_pid())).unwrap_or_default().contains(") Z ")
}

/// Raises this process's descriptor soft limit to its hard limit (floods need a thousand sockets).
fn raise_own_nofile(need: u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_cur = r.rlim_max;
    // SAFETY: valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    assert!(r.rlim_cur >= need, "the hard descriptor limit {} is below the {need} this test needs", r.rlim_max);
}

/// xorshift64 for the racing threads.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Hostile clients race the daemon over their own shared memory from other threads in tight
/// loops (cursors jumping inside and outside their window, wrapping near 2^32, records rewritten
/// while the daemon copies them, sleeping flags and avail_min flipped, a monitor stream whose read
/// cursor runs ahead of the daemon's writes). Their audio is silence, so the card must record the
/// reference stream bit-exact; the daemon must stay up and name a reason for each disconnect.
#[test]
fn racing_clients_never_disturb_another_stream() {
    let rig = hostile_load_rig(&[]);
    let (mut good, start, sound) = reference(&rig, 301, 6);
    // The reference is streaming (its sound is on the card) before anything hostile starts.
    rig.wait_for_sound(2, 0, Duration::from_secs(20));
    let stop = Arc::new(AtomicBool::new(false));
    let disconnects = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    // mode 0: write cursor jumps anywhere in [read, read + buffer] (legal, racy) plus records;
    // 1: write cursor anywhere (wraps, goes backwards); 2: message ring cursor and slots rewritten
    // while read; 3: a monitor stream's read cursor races the daemon's writes; 4: everything at
    // once, restarting after each disconnect.
    for mode in 0..5u64 {
        let stop = Arc::clone(&stop);
        let disconnects = Arc::clone(&disconnects);
        let sock = rig.sock.clone();
        threads.push(std::thread::spawn(move || {
            // Niced: the racing loops must not starve the reference player of CPU (the daemon's
            // mix thread is real-time and preempts them anyway).
            // SAFETY: plain syscalls on this thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
            let mut x = 0x9e37_79b9_7f4a_7c15 ^ (mode + 1);
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rounds += 1;
                let dir = if mode == 3 { Direction::Monitor } else { Direction::Playback };
                let Ok(c) = RawAt::connect(&sock, dir) else { continue };
                let params = AudioParams { period_frames: 512, buffer_frames: 2048, ..c.0.device };
                let (answer, fd, mut shm) = c.0.try_stream(params);
                if !matches!(answer, Some(SocketMsg::StreamReady { .. })) {
                    continue;
                }
                let buffer = params.buffer_frames;
                let total = shm.layout().total_bytes as usize;
                let c2d = shm.layout().c2d_offset as usize;
                let _ = shm.c2d.push(Record::Start { seq: 1 });
                let until = Instant::now() + Duration::from_millis(if mode == 0 { 4000 } else { 700 });
                let mut i = 0u64;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = next(&mut x);
                    match mode {
                        0 => {
                            let read = shm.audio_read().pos.load(Ordering::Acquire);
                            let jump = (r % u64::from(buffer + 1)) as u32;
                            shm.audio_write().pos.store(read.wrapping_add(jump), Ordering::Release);
                            shm.avail_min().value.store((r >> 32) as u32, Ordering::Relaxed);
                            shm.audio_write().sleeping.store((r >> 40) as u32 & 1, Ordering::Relaxed);
                            if i.is_multiple_of(64) {
                                let rec = match (r >> 48) % 4 {
                                    0 => Record::Pause { seq: i as u32 },
                                    1 => Record::Resume { seq: i as u32 },
                                    2 => Record::Start { seq: i as u32 },
                                    _ => Record::Drain { seq: i as u32 },
                                };
                                let _ = shm.c2d.push(rec);
                            }
                        }
                        1 => {
                            let near_wrap = u32::MAX - (r as u32 % 4096);
                            let v = if r & 1 == 0 { r as u32 } else { near_wrap };
                            shm.audio_write().pos.store(v, Ordering::Release);
                        }
                        2 => {
                            let slot = (r % u64::from(DEFAULT_MSG_RECORDS)) as usize * 16;
                            scribble(&fd, total, c2d + slot, &r.to_le_bytes());
                            shm.ring_write_cursor(Ring::ClientToDaemon).pos.store((r >> 32) as u32, Ordering::Release);
                        }
                        3 => {
                            let w = shm.audio_write().pos.load(Ordering::Acquire);
                            let ahead = (r % u64::from(2 * buffer)) as u32;
                            shm.audio_read().pos.store(w.wrapping_add(ahead), Ordering::Release);
                        }
                        _ => {
                            shm.audio_write().pos.store(r as u32, Ordering::Release);
                            shm.audio_read().pos.store((r >> 32) as u32, Ordering::Release);
                            shm.ring_write_cursor(Ring::ClientToDaemon).pos.store((r >> 16) as u32, Ordering::Release);
                            shm.ring_read_cursor(Ring::DaemonToClient).pos.store((r >> 8) as u32, Ordering::Release);
                            shm.avail_min().value.store(r as u32, Ordering::Relaxed);
                        }
                    }
                }
                if c.hung_up() {
                    disconnects.fetch_add(1, Ordering::Relaxed);
                }
                drop((fd, shm));
            }
            rounds
        }));
    }
    let r = finish(&mut good, start, Duration::from_secs(40));
    stop.store(true, Ordering::Relaxed);
    let rounds: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    r.assert_ok("aplay next to racing clients");
    assert!(daemon_alive(&rig), "the daemon died:\n{}", rig.daemon_log());
    assert_contiguous(&rig.recording_s16(), &sound, 2, "stream next to racing clients");
    let log = rig.daemon_log();
    assert!(!log.contains("panicked"), "daemon panicked:\n{log}");
    let n = disconnects.load(Ordering::Relaxed);
    eprintln!("racing clients: {rounds} hostile streams, {n} disconnected by the daemon");
    let mut reasons: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("disconnecting"))
        .filter_map(|l| l.split("): ").nth(1)?.split(" (value").next())
        .collect();
    reasons.sort_unstable();
    for r in reasons.chunk_by(|a, b| a == b) {
        eprintln!("  {} x {}", r.len(), r[0]);
    }
    assert!(n >= 4, "the daemon disconnected only {n} of {rounds} hostile streams");
    assert!(log.contains("fill beyond ring capacity") || log.contains("cursor"), "no cursor violation logged:\n{log}");
}

/// A raw client on a socket path (the racing threads have no `Rig`).
pub(crate) struct RawAt(pub(crate) Raw);

impl RawAt {
    pub(crate) fn connect(path: &std::path::Path, direction: Direction) -> Result<Self, ()> {
        let sock = seqpacket(path);
        let hello = SocketMsg::Hello {
            version: shmix_shared::PROTOCOL_VERSION,
            direction,
            pid: 0,
            name: "racer".into(),
            device: String::new(),
        };
        socket::send(sock.as_fd(), &hello, &[]).map_err(|_| ())?;
        let p = socket::recv(sock.as_fd()).map_err(|_| ())?;
        match SocketMsg::decode(&p.bytes) {
            Ok(SocketMsg::Welcome { device, .. }) => Ok(Self(Raw { sock, device })),
            _ => Err(()),
        }
    }

    /// True when the daemon closed the connection (within a short wait).
    fn hung_up(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.0.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 300) };
        pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
            || (pfd.revents & libc::POLLIN != 0 && self.0.answer().is_none())
    }
}

fn count_closed(socks: &[OwnedFd]) -> usize {
    let mut pfds: Vec<libc::pollfd> =
        socks.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `pfds` holds `len` valid entries.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 0) };
    pfds.iter().filter(|p| p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLIN) != 0).count()
}

/// 1000 connections opened at once and left idle, and 50 more dribbling their handshake one byte
/// per packet, next to a playing stream: the stream stays bit-exact, the dribblers are dropped at
/// their first packet (it does not decode), and the idle ones exactly after the handshake timeout
/// (not before); the daemon's descriptors return to where they were.
#[test]
fn a_thousand_idle_connections_do_not_disturb_a_stream() {
    raise_own_nofile(1200);
    let rig = hostile_load_rig(&["--max-clients", "1100", "--handshake-timeout", "3"]);
    let (mut good, start, sound) = reference(&rig, 311, 7);
    // The reference is streaming (its sound is on the card) before anything hostile starts.
    rig.wait_for_sound(2, 0, Duration::from_secs(20));
    let fds_before = daemon_fds(&rig);
    let t0 = Instant::now();
    let idle: Vec<OwnedFd> = (0..1000).map(|_| seqpacket(&rig.sock)).collect();
    let opened = t0.elapsed();
    let dribblers: Vec<OwnedFd> = (0..50).map(|_| seqpacket(&rig.sock)).collect();
    let hello = SocketMsg::Hello {
        version: shmix_shared::PROTOCOL_VERSION,
        direction: Direction::Playback,
        pid: 0,
        name: "dribble".into(),
        device: String::new(),
    }
    .encode();
    for (k, b) in hello.iter().enumerate().take(20) {
        for s in &dribblers {
            // SAFETY: send(2) of one byte from a valid buffer on our socket.
            unsafe { libc::send(s.as_raw_fd(), std::ptr::from_ref(b).cast(), 1, libc::MSG_NOSIGNAL) };
        }
        if k == 0 {
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(count_closed(&dribblers), dribblers.len(), "a dribbler was not dropped at its first packet");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(t0.elapsed()));
    let held = daemon_fds(&rig);
    let early = count_closed(&idle);
    assert_eq!(early, 0, "{early} idle connections dropped before the handshake timeout");
    let deadline = t0 + Duration::from_secs(3 + 4);
    while count_closed(&idle) < idle.len() {
        assert!(
            Instant::now() < deadline,
            "{} of 1000 idle connections still open 7 s after they were opened",
            idle.len() - count_closed(&idle)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dropped_after = t0.elapsed();
    drop(idle);
    drop(dribblers);
    let r = finish(&mut good, start, Duration::from_secs(40));
    r.assert_ok("aplay next to 1000 idle connections");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "stream next to 1000 idle connections");
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = daemon_fds(&rig);
    let log = rig.daemon_log();
    let timeouts = log.matches("no Hello within 3 s").count();
    eprintln!(
        "1000 idle connections opened in {opened:?}; daemon fds {fds_before} before, {held} while held, \
         {fds_after} after; all dropped {dropped_after:?} after opening; {timeouts} handshake timeouts logged"
    );
    assert!(held >= fds_before + 1000, "the daemon did not hold the connections ({held} fds)");
    assert_eq!(timeouts, 1000, "handshake timeouts logged");
    assert!(fds_after <= fds_before, "daemon fds {fds_before} -> {fds_after}");
    assert!(daemon_alive(&rig));
}

pub(crate) fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// The daemon's mix cycles per second and CPU share of one core over the next `secs` seconds
/// (from its once-a-second stats line and /proc), for the tests that load it with hostile clients.
pub(crate) fn mix_thread_load(rig: &Rig, secs: u64) -> (f64, f64) {
    let pid = rig.daemon_pid();
    let (cyc0, cpu0, t0) = (rig.daemon_cycles(), cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (cyc1, cpu1, dt) = (rig.daemon_cycles(), cpu_ticks(pid), t0.elapsed());
    // SAFETY: sysconf is always safe.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu = (cpu1 - cpu0) as f64 / hz as f64 / dt.as_secs_f64();
    ((cyc1 - cyc0) as f64 / dt.as_secs_f64(), cpu)
}

/// The daemon runs out of descriptors (its limit lowered under it): accept fails with EMFILE,
/// the daemon logs it once, rests instead of spinning, keeps the playing stream bit-exact, and
/// accepts again once the idle connections were dropped.
#[test]
fn descriptor_exhaustion_is_logged_once_and_survived() {
    raise_own_nofile(400);
    let rig = hostile_load_rig(&["--handshake-timeout", "2"]);
    let (mut good, start, sound) = reference(&rig, 321, 7);
    // The reference is streaming (its sound is on the card) before anything hostile starts.
    rig.wait_for_sound(2, 0, Duration::from_secs(20));
    let pid = rig.daemon_pid();
    let limit = daemon_fds(&rig) as u64 + 20;
    let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: prlimit(2) on our child with a valid rlimit; no old value wanted.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    // 20 fit under the limit, the rest wait in the listen backlog (64): connect does not block.
    let flood: Vec<OwnedFd> = (0..80).map(|_| seqpacket(&rig.sock)).collect();
    let cpu0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let cpu1 = cpu_ticks(pid);
    // SAFETY: sysconf is always safe.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let busy = (cpu1 - cpu0) as f64 / hz as f64;
    let log = rig.daemon_log();
    assert_eq!(log.matches("pausing new connections").count(), 1, "EMFILE not logged exactly once:\n{log}");
    assert!(busy < 0.6, "the daemon used {busy:.2} s of CPU in 1 s while out of descriptors (spinning?)");
    // After the timeout the accepted ones are dropped, descriptors free up, the backlog drains.
    std::thread::sleep(Duration::from_secs(4));
    drop(flood);
    let r = finish(&mut good, start, Duration::from_secs(40));
    r.assert_ok("aplay while the daemon was out of descriptors");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "stream while the daemon was out of descriptors");
    let c = Raw::connect(&rig);
    drop(c);
    let log = rig.daemon_log();
    assert!(log.contains("accepting connections again"), "no recovery logged:\n{log}");
    eprintln!("EMFILE episode: daemon CPU {busy:.2} s in 1 s while exhausted; recovered");
}

/// `--max-clients`, `--max-streams-per-client` and `--max-client-shm` refuse with a reason that
/// names the limit; the plugin prints it; freed resources can be used again.
#[test]
fn limits_refuse_with_a_reason_the_plugin_prints() {
    let rig =
        Rig::new(Card::default(), &["--max-clients", "4", "--max-streams-per-client", "2", "--max-client-shm", "1"]);
    let a = Raw::connect(&rig);
    let small = AudioParams { period_frames: 1024, buffer_frames: 4096, ..a.device };
    let big = AudioParams { period_frames: 1024, buffer_frames: 200_000, ..a.device };
    let (ans, _fa, _sa) = a.try_stream(small);
    assert!(matches!(ans, Some(SocketMsg::StreamReady { .. })), "{ans:?}");
    let b = Raw::connect(&rig);
    let (ans, _fb, _sb) = b.try_stream(big);
    assert!(matches!(ans, Some(SocketMsg::StreamReady { .. })), "{ans:?}");
    // Third stream of this process: refused by count.
    let c = Raw::connect(&rig);
    let (ans, _fc, _sc) = c.try_stream(small);
    let Some(SocketMsg::Refused { reason, .. }) = ans else { panic!("third stream not refused: {ans:?}") };
    assert!(reason.contains("--max-streams-per-client 2"), "{reason}");
    // Free the small one; a second big one is refused by memory, a small one fits.
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    let (ans, _fc, _sc) = c.try_stream(big);
    let Some(SocketMsg::Refused { reason, .. }) = ans else { panic!("over the memory limit, not refused: {ans:?}") };
    assert!(reason.contains("--max-client-shm 1 MiB"), "{reason}");
    let (ans, _fc2, _sc2) = c.try_stream(small);
    assert!(matches!(ans, Some(SocketMsg::StreamReady { .. })), "small stream after a free: {ans:?}");
    // Connections: b, c held; two more fit, the fifth is refused and aplay prints why.
    let _d = Raw::connect(&rig);
    let _e = Raw::connect(&rig);
    match Raw::connect_as(&rig, Direction::Playback) {
        Err(Some(SocketMsg::Refused { reason, .. })) => assert!(reason.contains("--max-clients 4"), "{reason}"),
        other => panic!("fifth connection not refused: {:?}", other.map(|_| ())),
    }
    let wav = rig.path("short.wav");
    write_wav(&wav, 2, 48000, &interleave(&[noise(5, 4800, 1000), noise(6, 4800, 1000)]));
    let mut cmd = rig.cmd("aplay");
    cmd.args(["-q", "-D", "shmix"]).arg(&wav);
    let r = run(cmd, Duration::from_secs(20));
    assert!(!r.status.success(), "aplay played past --max-clients");
    assert!(r.stderr.contains("too many clients") && r.stderr.contains("--max-clients 4"), "aplay said: {}", r.stderr);
    eprintln!("aplay past --max-clients:\n{}", r.stderr.trim_end());
    let log = rig.daemon_log();
    for what in ["--max-clients 4", "--max-streams-per-client 2", "--max-client-shm 1 MiB"] {
        assert!(log.contains(what), "daemon log does not name {what}:\n{log}");
    }
    assert!(log.contains("limits: 4 clients, 2 streams and 1 MiB per client process"), "{log}");
    for l in log.lines().filter(|l| l.contains("limits:") || l.contains("refused")) {
        eprintln!("{l}");
    }
}

/// Streams of the same process are counted together even over separate connections (the plugin
/// opens one connection per PCM); a stream of 2 MiB alone is over a 1 MiB limit.
#[test]
fn one_stream_over_the_memory_limit_is_refused() {
    let rig = Rig::new(Card::default(), &["--max-client-shm", "1"]);
    let a = Raw::connect(&rig);
    let huge = AudioParams { period_frames: 1024, buffer_frames: 600_000, ..a.device };
    let (ans, _f, _s) = a.try_stream(huge);
    let Some(SocketMsg::Refused { errno, reason }) = ans else { panic!("not refused: {ans:?}") };
    assert_eq!(errno, libc::ENOMEM as u32);
    assert!(reason.contains("this stream needs"), "{reason}");
    // The connection stays usable.
    let small = AudioParams { period_frames: 1024, buffer_frames: 4096, ..a.device };
    let (ans, _f2, shm) = a.try_stream(small);
    assert!(matches!(ans, Some(SocketMsg::StreamReady { .. })), "{ans:?}");
    let _: &StreamShm = &shm.shm;
}

/// How the fake daemon lies once the plugin's stream is set up.
#[derive(Debug, Clone, Copy)]
enum Lie {
    /// Playback: the read cursor runs past what the program wrote.
    ReadBeyondWritten,
    /// Playback: the read cursor goes backwards (wraps below zero).
    ReadBackwards,
    /// Records that do not decode.
    GarbageRecords,
    /// The d2c write cursor far beyond the ring.
    RecordCursorBeyondRing,
    /// A record only a client may send.
    ClientRecord,
    /// Capture: the write cursor more than a buffer ahead of the program's reads.
    CaptureWriteBeyondBuffer,
    /// A refusal whose reason holds terminal escape sequences.
    RefusalWithEscapes,
}

fn fake_listen(path: &std::path::Path) -> OwnedFd {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: fresh fd we own.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: all-zero sockaddr_un is valid; family and path set below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_encoded_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: valid sockaddr_un of the given size; then listen on our socket.
    unsafe {
        assert_eq!(
            libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_un>() as u32),
            0
        );
        assert_eq!(libc::listen(fd.as_raw_fd(), 8), 0);
    }
    fd
}

/// A fake daemon that speaks the real protocol (shmix-shared) to one client, sets its stream up,
/// then lies as `lie` says and wakes the client. Returns once the client hung up (or 15 s).
fn fake_daemon(listen: &OwnedFd, lie: Lie) {
    // SAFETY: accept(2) on our listening socket.
    let c =
        unsafe { libc::accept4(listen.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    assert!(c >= 0);
    // SAFETY: fresh fd we own.
    let c = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(c) };
    let hello = socket::recv(c.as_fd()).unwrap();
    let Ok(SocketMsg::Hello { direction, .. }) = SocketMsg::decode(&hello.bytes) else { panic!("no hello") };
    if let Lie::RefusalWithEscapes = lie {
        let reason = "go away\u{1b}[2J\u{1b}]0;owned\u{7}\r\nshmix: fake line".to_string();
        socket::send(c.as_fd(), &SocketMsg::Refused { errno: libc::EPERM as u32, reason }, &[]).unwrap();
        return;
    }
    let device = AudioParams {
        format: shmix_shared::SampleFormat::S16Le,
        rate: 48000,
        channels: 2,
        period_frames: 256,
        buffer_frames: 1024,
    };
    let welcome = SocketMsg::Welcome { version: shmix_shared::PROTOCOL_VERSION, device };
    socket::send(c.as_fd(), &welcome, &[]).unwrap();
    let p = socket::recv(c.as_fd()).unwrap();
    let Ok(SocketMsg::CreateStream { params, msg_records, .. }) = SocketMsg::decode(&p.bytes) else {
        panic!("no CreateStream")
    };
    let [memfd, client_wake, _daemon_wake]: [OwnedFd; 3] = p.fds.try_into().expect("3 fds");
    let layout = shmix_shared::layout::Layout::new(params.frame_bytes(), params.buffer_frames, msg_records).unwrap();
    // We play the daemon: its halves (a lying daemon sends what only a client may).
    let mut shm = StreamShm::map_peer(&memfd, layout).unwrap().into_daemon(direction);
    socket::send(c.as_fd(), &SocketMsg::StreamReady { stream_id: 1 }, &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lied = false;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let written = shm.audio_write().pos.load(Ordering::Acquire);
        // Lie once the program is under way (playback: it wrote something).
        if !lied && (direction != Direction::Playback || written > 0) {
            lied = true;
            match lie {
                Lie::ReadBeyondWritten => shm.audio_read().pos.store(written.wrapping_add(5000), Ordering::Release),
                Lie::ReadBackwards => shm.audio_read().pos.store(u32::MAX - 5, Ordering::Release),
                Lie::GarbageRecords => {
                    let junk: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
                    scribble(&memfd, layout.total_bytes as usize, layout.d2c_offset as usize, &junk);
                    shm.ring_write_cursor(Ring::DaemonToClient).pos.store(4, Ordering::Release);
                }
                Lie::RecordCursorBeyondRing => {
                    shm.ring_write_cursor(Ring::DaemonToClient).pos.store(1_000_000, Ordering::Release)
                }
                Lie::ClientRecord => {
                    let _ = shm.d2c.push(Record::Start { seq: 1 });
                }
                Lie::CaptureWriteBeyondBuffer => {
                    shm.audio_write().pos.store(params.buffer_frames * 3 + 17, Ordering::Release)
                }
                Lie::RefusalWithEscapes => unreachable!(),
            }
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) of 8 bytes to the client's wake socket (one packet; non-blocking).
        unsafe { libc::write(client_wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        let mut pfd = libc::pollfd { fd: c.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 0) };
        if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return;
        }
        if pfd.revents & libc::POLLIN != 0 && socket::recv(c.as_fd()).map(|p| p.bytes.is_empty()).unwrap_or(true) {
            return;
        }
    }
}

/// The plugin trusts the daemon no more than the daemon trusts it: a fake daemon speaking the
/// real protocol sets up the stream, then writes cursors and records that break the contract.
/// Real programs (aplay with read/write and with mmap access, arecord) get an error promptly,
/// never a crash (signal) or a hang; a refusal's reason reaches the terminal without its escape
/// sequences.
#[test]
fn the_plugin_survives_a_lying_daemon() {
    let dir = scratch_dir("shmix-fake-");
    let art = artifacts_dir();
    let sock = dir.path().join("fake.sock");
    let conf = dir.path().join("asound.conf");
    std::fs::write(
        &conf,
        format!(
            "pcm_type.shmix {{ lib \"{}\" }}\npcm.shmix {{ type shmix socket \"{}\" }}\n",
            art.join("libasound_module_pcm_shmix.so").display(),
            sock.display()
        ),
    )
    .unwrap();
    let wav = dir.path().join("tone.wav");
    write_wav(&wav, 2, 48000, &interleave(&[noise(9, 96000, 8000), noise(10, 96000, 8000)]));
    let listen = fake_listen(&sock);
    let cases: [(Lie, &[&str]); 9] = [
        (Lie::ReadBeyondWritten, &["aplay"]),
        (Lie::ReadBeyondWritten, &["aplay", "-M"]),
        (Lie::ReadBackwards, &["aplay"]),
        (Lie::GarbageRecords, &["aplay"]),
        (Lie::GarbageRecords, &["arecord", "-f", "S16_LE", "-r", "48000", "-c", "2", "-d", "3"]),
        (Lie::RecordCursorBeyondRing, &["aplay", "-M"]),
        (Lie::ClientRecord, &["aplay"]),
        (Lie::CaptureWriteBeyondBuffer, &["arecord", "-f", "S16_LE", "-r", "48000", "-c", "2", "-d", "3"]),
        (Lie::RefusalWithEscapes, &["aplay"]),
    ];
    let out = dir.path().join("rec.wav");
    for (lie, argv) in cases {
        let mut cmd = std::process::Command::new(argv[0]);
        cmd.env("ALSA_CONFIG_PATH", format!("/usr/share/alsa/alsa.conf:{}", conf.display()))
            .env_remove("SHMIX_SOCKET")
            .env("SHMIX_DEBUG", "1")
            .args(&argv[1..])
            .args(["-q", "-D", "shmix"])
            .arg(if argv[0] == "aplay" { &wav } else { &out });
        let start = Instant::now();
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::scope(|sc| {
            sc.spawn(|| fake_daemon(&listen, lie));
            let r = finish(&mut child, start, Duration::from_secs(20));
            use std::os::unix::process::ExitStatusExt;
            assert!(
                r.status.signal().is_none(),
                "{lie:?} {argv:?}: killed by signal {:?}: {}",
                r.status.signal(),
                r.stderr
            );
            assert!(!r.status.success(), "{lie:?} {argv:?}: the program did not notice the lie: {}", r.stderr);
            assert!(r.wall < Duration::from_secs(10), "{lie:?} {argv:?}: took {:?}", r.wall);
            assert!(!r.stderr.contains('\u{1b}') && !r.stderr.contains('\u{7}'), "escape reached the terminal");
            if let Lie::RefusalWithEscapes = lie {
                assert!(r.stderr.contains("refused the connection: go away"), "{}", r.stderr);
            }
            let refusal = matches!(lie, Lie::RefusalWithEscapes);
            assert!(
                refusal || r.stderr.contains("protocol violation by shmixd"),
                "{lie:?} {argv:?}: no violation seen: {}",
                r.stderr
            );
            let what = r.stderr.lines().find(|l| l.contains("protocol violation")).unwrap_or("").to_string();
            eprintln!(
                "{lie:?} {argv:?}: exit {:?} in {:?}: {what} / {}",
                r.status.code(),
                r.wall,
                r.stderr.lines().last().unwrap_or("")
            );
        });
    }
}

/// Clients that try to keep the real-time mix thread busy: one signals its daemon_wake in
/// a tight loop, one floods valid records as fast as it can, one makes its message ring look
/// non-empty forever by rewriting the daemon's read cursor in its memory. The mix thread still
/// cycles about once per device period (it mutes a flooding stream's wakes until the next period),
/// its CPU stays low, and the reference stream stays bit-exact.
#[test]
fn flooding_clients_cannot_spin_the_mix_thread() {
    let rig = hostile_load_rig(&[]);
    let (mut good, start, sound) = reference(&rig, 331, 7);
    std::thread::sleep(Duration::from_millis(1500));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for mode in 0..3u32 {
        let stop = Arc::clone(&stop);
        let sock = rig.sock.clone();
        threads.push(std::thread::spawn(move || {
            // SAFETY: plain syscall on this thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
            let c = RawAt::connect(&sock, Direction::Playback).expect("connect");
            let params = AudioParams { period_frames: 512, buffer_frames: 2048, ..c.0.device };
            let (fd, mut shm, wakes) = c.0.ready_stream(params, "flood");
            let _ = shm.c2d.push(Record::Start { seq: 0 });
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match mode {
                    0 => {
                        wakes.daemon.signal();
                    }
                    1 => {
                        let _ = shm.c2d.push(Record::Resume { seq: n as u32 });
                        wakes.daemon.signal();
                    }
                    _ => {
                        let w = shm.ring_write_cursor(Ring::ClientToDaemon).pos.load(Ordering::Relaxed);
                        shm.ring_read_cursor(Ring::ClientToDaemon).pos.store(w.wrapping_add(1), Ordering::Release);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            drop((fd, shm, c));
            n
        }));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let (rate, cpu) = mix_thread_load(&rig, 3);
    stop.store(true, Ordering::Relaxed);
    let ops: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let r = finish(&mut good, start, Duration::from_secs(40));
    eprintln!(
        "flooders did {ops:?} writes/records; daemon: {rate:.0} mix cycles/s (device periods: 187.5/s), \
         CPU {:.0} % of a core",
        cpu * 100.0
    );
    r.assert_ok("aplay next to flooding clients");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "stream next to flooding clients");
    assert!(rate < 3000.0, "the mix thread cycled {rate:.0} times a second under the flood");
    assert!(cpu < 0.5, "the daemon used {:.0} % of a core under the flood", cpu * 100.0);
}

/// A stream muted for waking the mix thread is heard again within a few milliseconds even when
/// no device period comes (the card is gone): two records in a row while the card is unplugged
/// are both answered at once.
#[test]
fn records_are_answered_while_the_card_is_gone() {
    let marker_dir = scratch_dir("shmix-plug-");
    let marker = marker_dir.path().join("unplugged");
    let card = Card { extra: vec![format!("gone_file \"{}\"", marker.display())], ..Default::default() };
    let rig = Rig::new(card, &[]);
    let c = Raw::connect(&rig);
    let (fd, mut shm, wakes) = c.ready_stream(c.params(), "gone");
    std::fs::write(&marker, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !rig.daemon_log().contains("vanished") {
        assert!(Instant::now() < deadline, "the card did not vanish:\n{}", rig.daemon_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    for seq in 1..=3u32 {
        let t = Instant::now();
        assert!(shm.c2d.push(Record::Pause { seq }).unwrap());
        wakes.daemon.signal();
        loop {
            if let Some(Ok(Record::Stopped { seq: s, .. })) = shm.d2c.pop().unwrap() {
                assert_eq!(s, seq);
                break;
            }
            assert!(t.elapsed() < Duration::from_millis(500), "Pause {seq} unanswered while the card is gone");
            std::thread::sleep(Duration::from_millis(1));
        }
        eprintln!("card gone: Pause {seq} answered in {:?}", t.elapsed());
    }
    drop((fd, shm, c));
}

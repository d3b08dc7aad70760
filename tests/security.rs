//! Findings of the security audit (issue 15), each as the attack that showed it: descriptors
//! smuggled past the daemon's control buffer, a fake daemon of another user, idle connections
//! that never create a stream, and what a shared socket directory allows.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use shmix_shared::layout::DEFAULT_MSG_RECORDS;
use shmix_shared::msg::{Direction, SocketMsg, PROTOCOL_VERSION};
use shmix_shared::socket;
use shmix_shared::{ChannelMap, ResampleQuality};

use crate::common::*;
use crate::hostile::{seqpacket, Raw};

/// Entries of /proc/PID/fd of the rig's daemon.
fn daemon_fds(rig: &Rig) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", rig.daemon_pid())).map(|d| d.count()).unwrap_or(0)
}

/// A reference stream: `secs` of stereo noise played by aplay through the plugin.
fn reference(rig: &Rig, seed: u32, secs: usize) -> (Child, Instant, Vec<i16>) {
    let n = secs * 48000;
    let sound = interleave(&[noise(seed, n, 30000), noise(seed + 1, n, 30000)]);
    let wav = rig.path(&format!("ref{seed}.wav"));
    write_wav(&wav, 2, 48000, &sound);
    let start = Instant::now();
    let child = rig
        .cmd("aplay")
        .args(["-q", "-D", "shmix"])
        .arg(&wav)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, start, sound)
}

/// Waits until the daemon hangs up on `sock` (the connection is then gone on its side).
fn wait_hangup(sock: &OwnedFd, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return;
        }
        if pfd.revents & libc::POLLIN != 0 {
            // Drain what the daemon sent (a refusal) and look again.
            if socket::recv(sock.as_fd()).map(|p| p.bytes.is_empty()).unwrap_or(true) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what}: the daemon did not hang up");
    }
}

/// A pipe `(read, write)`, the read end non-blocking: copies of the write end are what the
/// hostile packets carry, and the read end says whether any copy is still open anywhere.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
    // SAFETY: two fresh descriptors we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// True when no write end of the pipe is open anywhere: reading gives EOF.
fn writers_gone(r: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: read(2) into a valid one-byte buffer.
    unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 0 }
}

/// Packets with more descriptors than the control buffer holds (5, 8, and the kernel's maximum
/// of 253), over a hundred connections, before and after `Hello`: the daemon closes every
/// descriptor the kernel installed for it, its descriptor count returns to where it was, and a
/// stream playing meanwhile stays bit-exact.
#[test]
fn oversized_descriptor_lists_leave_nothing_open_in_the_daemon() {
    let rig = Rig::new(Card::default(), &[]);
    let (mut good, start, sound) = reference(&rig, 151, 4);
    rig.wait_for_sound(2, 0, Duration::from_secs(10));
    let before = daemon_fds(&rig);
    let (r, w) = pipe();
    let hello =
        SocketMsg::Hello { version: PROTOCOL_VERSION, direction: Direction::Playback, pid: 0, name: "fds".into() };
    let mut socks = Vec::new();
    // Before Hello: the Hello itself carries 5 descriptors.
    for _ in 0..50 {
        let s = seqpacket(&rig.sock);
        socket::send(s.as_fd(), &hello, &[w.as_raw_fd(); 5]).unwrap();
        socks.push(s);
    }
    // After Hello: a CreateStream with 8.
    for _ in 0..50 {
        let c = Raw::connect(&rig);
        let msg = SocketMsg::CreateStream {
            params: c.params(),
            msg_records: DEFAULT_MSG_RECORDS,
            memfd_bytes: c.layout().total_bytes,
            chmap: ChannelMap::standard(c.params().channels),
            quality: ResampleQuality::Default,
        };
        socket::send(c.sock.as_fd(), &msg, &[w.as_raw_fd(); 8]).unwrap();
        socks.push(c.sock);
    }
    // The most one packet can carry (SCM_MAX_FD).
    let s = seqpacket(&rig.sock);
    socket::send(s.as_fd(), &hello, &[w.as_raw_fd(); 253]).unwrap();
    socks.push(s);
    drop(w);
    for s in &socks {
        wait_hangup(s, "a packet with too many descriptors");
    }
    drop(socks);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = daemon_fds(&rig);
    while after > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = daemon_fds(&rig);
    }
    let eof = writers_gone(&r);
    eprintln!("daemon descriptors: {before} before, {after} after 101 hostile packets; pipe writers gone: {eof}");
    assert!(after <= before, "the daemon's descriptors grew from {before} to {after}");
    assert!(eof, "the daemon still holds a descriptor it received in a cut packet");
    let log = rig.daemon_log();
    assert!(log.contains("too many fds"), "the daemon logged no reason:\n{log}");

    let res = finish(&mut good, start, Duration::from_secs(30));
    res.assert_ok("aplay next to descriptor floods");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "stream next to descriptor floods");
}

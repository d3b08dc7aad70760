//! Clients that speak the protocol wrongly on purpose. Each is refused or disconnected with a
//! logged reason, and a concurrent stream stays bit-exact throughout.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use shmix_shared::layout::{Layout, DEFAULT_MSG_RECORDS};
use shmix_shared::msg::{AudioParams, Direction, Record, SocketMsg, PROTOCOL_VERSION};
use shmix_shared::shm::{ClientHalves, Ring, StreamShm};
use shmix_shared::socket;
use shmix_shared::sync::Ordering;
use shmix_shared::{ChannelMap, ResampleQuality, WakeFd};

use crate::common::*;

/// A raw protocol client: connected, greeted, with the device's parameters.
pub(crate) struct Raw {
    pub(crate) sock: OwnedFd,
    pub(crate) device: AudioParams,
}

pub(crate) fn seqpacket(path: &std::path::Path) -> OwnedFd {
    // std has no SOCK_SEQPACKET client: connect by hand.
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero sockaddr_un is valid; we fill family and path below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let p = path.as_os_str().as_encoded_bytes();
    for (d, s) in addr.sun_path.iter_mut().zip(p) {
        *d = *s as libc::c_char;
    }
    // SAFETY: addr is a valid sockaddr_un of the given size.
    let r = unsafe {
        libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_un>() as u32)
    };
    assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: valid option value pointer and size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

impl Raw {
    pub(crate) fn connect(rig: &Rig) -> Self {
        Self::connect_as(rig, Direction::Playback).unwrap_or_else(|a| panic!("no welcome: {a:?}"))
    }

    /// Connects and says hello for `direction`; `Err` with the daemon's answer (None: it hung up)
    /// when that is not `Welcome`.
    pub(crate) fn connect_as(rig: &Rig, direction: Direction) -> Result<Self, Option<SocketMsg>> {
        let sock = seqpacket(&rig.sock);
        let hello = SocketMsg::Hello {
            version: PROTOCOL_VERSION,
            direction,
            pid: 0,
            name: "hostile".into(),
            device: String::new(),
        };
        // A refused connection may be closed before our Hello arrives: the answer is still queued.
        // If the Hello reached it before it closed, the first recv says ECONNRESET, the next one
        // returns the queued answer.
        let _ = socket::send(sock.as_fd(), &hello, &[]);
        let first = socket::recv(sock.as_fd());
        let answer = if first.is_err() { socket::recv(sock.as_fd()) } else { first };
        match answer {
            Ok(p) if !p.bytes.is_empty() => match SocketMsg::decode(&p.bytes).expect("daemon sent garbage") {
                SocketMsg::Welcome { device, .. } => Ok(Self { sock, device }),
                other => Err(Some(other)),
            },
            _ => Err(None),
        }
    }

    pub(crate) fn params(&self) -> AudioParams {
        AudioParams { period_frames: 1024, buffer_frames: 4096, ..self.device }
    }

    pub(crate) fn layout(&self) -> Layout {
        let p = self.params();
        Layout::new(p.frame_bytes(), p.buffer_frames, DEFAULT_MSG_RECORDS).unwrap()
    }

    fn create(&self, memfd: RawFd, memfd_bytes: u64) {
        let _ = self.create_with(self.params(), memfd, memfd_bytes);
    }

    /// Sends `CreateStream` for `memfd` with fresh wake channels; returns every wake
    /// descriptor the client holds.
    pub(crate) fn create_with(&self, params: AudioParams, memfd: RawFd, memfd_bytes: u64) -> Wakes {
        self.create_with_records(params, DEFAULT_MSG_RECORDS, memfd, memfd_bytes)
    }

    /// [`Self::create_with`] with message rings of `msg_records` records.
    pub(crate) fn create_with_records(
        &self,
        params: AudioParams,
        msg_records: u32,
        memfd: RawFd,
        memfd_bytes: u64,
    ) -> Wakes {
        let (client, client_peer) = WakeFd::pair().unwrap();
        let (daemon, daemon_peer) = WakeFd::pair().unwrap();
        let msg = SocketMsg::CreateStream {
            params,
            msg_records,
            memfd_bytes,
            chmap: ChannelMap::standard(params.channels),
            quality: ResampleQuality::Default,
        };
        socket::send(self.sock.as_fd(), &msg, &[memfd, client_peer.as_raw_fd(), daemon_peer.as_raw_fd()]).unwrap();
        Wakes { client, client_peer, daemon, daemon_peer }
    }

    /// A valid stream of `params`, ready: its memfd, mapping, and wake descriptors.
    pub(crate) fn ready_stream(&self, params: AudioParams, name: &str) -> (OwnedFd, ClientHalves, Wakes) {
        self.ready_stream_with_records(params, DEFAULT_MSG_RECORDS, name)
    }

    /// [`Self::ready_stream`] with message rings of `msg_records` records.
    pub(crate) fn ready_stream_with_records(
        &self,
        params: AudioParams,
        msg_records: u32,
        name: &str,
    ) -> (OwnedFd, ClientHalves, Wakes) {
        let layout = Layout::new(params.frame_bytes(), params.buffer_frames, msg_records).unwrap();
        let (fd, shm) = StreamShm::create(layout, name).unwrap();
        let wakes = self.create_with_records(params, msg_records, fd.as_raw_fd(), layout.total_bytes);
        assert!(matches!(self.answer(), Some(SocketMsg::StreamReady { .. })), "valid stream refused");
        (fd, client_halves(shm), wakes)
    }

    /// Asks for a stream of `params` on a fresh memfd; the daemon's answer and the mapping.
    pub(crate) fn try_stream(&self, params: AudioParams) -> (Option<SocketMsg>, OwnedFd, ClientHalves) {
        let layout = Layout::new(params.frame_bytes(), params.buffer_frames, DEFAULT_MSG_RECORDS).unwrap();
        let (fd, shm) = StreamShm::create(layout, "hostile").unwrap();
        let _ = self.create_with(params, fd.as_raw_fd(), layout.total_bytes);
        (self.answer(), fd, client_halves(shm))
    }

    /// The daemon's next answer; None when it closed the connection.
    pub(crate) fn answer(&self) -> Option<SocketMsg> {
        match socket::recv(self.sock.as_fd()) {
            Ok(p) if p.bytes.is_empty() => None,
            Ok(p) => Some(SocketMsg::decode(&p.bytes).expect("daemon sent garbage")),
            Err(_) => None,
        }
    }

    /// A valid stream, ready, and its memfd.
    pub(crate) fn stream(&self) -> (OwnedFd, ClientHalves) {
        let (fd, shm) = StreamShm::create(self.layout(), "hostile").unwrap();
        self.create(fd.as_raw_fd(), self.layout().total_bytes);
        assert!(matches!(self.answer(), Some(SocketMsg::StreamReady { .. })), "valid stream refused");
        (fd, client_halves(shm))
    }

    /// Waits until the daemon hangs up on us.
    pub(crate) fn assert_disconnected(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut pfd = libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                return;
            }
            if pfd.revents & libc::POLLIN != 0 && self.answer().is_none() {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: the daemon did not disconnect the client");
        }
    }
}

/// A raw client's halves of its mapping: its record sender is what it pushes with; its audio half
/// (a playback writer, whatever it asked for) goes unused: these clients store into the cursors
/// themselves, as a hostile client may.
fn client_halves(shm: StreamShm) -> ClientHalves {
    shm.into_client(Direction::Playback)
}

/// Writes `bytes` at `offset` of the memfd through a mapping of our own (what a hostile client
/// can always do), bypassing every check of `StreamShm`.
pub(crate) fn scribble(fd: &OwnedFd, len: usize, offset: usize, bytes: &[u8]) {
    // SAFETY: a fresh shared mapping of our own memfd of `len` bytes.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    assert_ne!(p, libc::MAP_FAILED);
    assert!(offset + bytes.len() <= len);
    // SAFETY: the range lies inside the mapping; unmapped right after.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>().add(offset), bytes.len());
        libc::munmap(p, len);
    }
}

/// A raw stream's wake descriptors: the client's own ends, and the copies of the two it passed
/// to the daemon (a hostile client keeps them: it shares their open files with the daemon).
pub(crate) struct Wakes {
    /// Signalled by the daemon (the client polls it).
    pub(crate) client: WakeFd,
    /// The daemon's copy signals `client` through it.
    pub(crate) client_peer: WakeFd,
    /// Signalled by the client to wake the daemon.
    pub(crate) daemon: WakeFd,
    /// The daemon polls its copy.
    pub(crate) daemon_peer: WakeFd,
}

fn memfd(bytes: u64, seals: libc::c_int) -> OwnedFd {
    // SAFETY: valid C string literal.
    let fd = unsafe { libc::memfd_create(c"hostile".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    // SAFETY: fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscalls on our fd.
    unsafe {
        libc::ftruncate(fd.as_raw_fd(), bytes as libc::off_t);
        if seals != 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals);
        }
    }
    fd
}

#[test]
fn hostile_clients_are_refused_and_a_stream_stays_bit_exact() {
    let rig = Rig::new(Card::default(), &[]);
    let (mut good, start, sound) = reference(&rig, 71, 5);
    std::thread::sleep(Duration::from_millis(500));
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

    // 1. An unsealed memfd.
    let c = Raw::connect(&rig);
    let total = c.layout().total_bytes;
    let fd = memfd(total, 0);
    c.create(fd.as_raw_fd(), total);
    assert!(matches!(c.answer(), Some(SocketMsg::Refused { .. }) | None), "unsealed memfd accepted");

    // 2. A memfd smaller than it claims.
    let c = Raw::connect(&rig);
    let fd = memfd(4096, seals);
    c.create(fd.as_raw_fd(), total);
    assert!(matches!(c.answer(), Some(SocketMsg::Refused { .. }) | None), "short memfd accepted");

    // 3. A cursor beyond the ring.
    let c = Raw::connect(&rig);
    let (_fd, mut shm) = c.stream();
    shm.audio_write().pos.store(c.params().buffer_frames * 3, Ordering::Release);
    shm.c2d.push(Record::Start { seq: 1 }).unwrap();
    c.assert_disconnected("cursor beyond the ring");

    // 4. Garbage message records.
    let c = Raw::connect(&rig);
    let (fd, shm) = c.stream();
    let garbage: Vec<u8> = noise(99, 4 * 8, 32767).iter().flat_map(|s| s.to_le_bytes()).collect();
    scribble(&fd, shm.layout().total_bytes as usize, shm.layout().c2d_offset as usize, &garbage);
    shm.ring_write_cursor(Ring::ClientToDaemon).pos.store(4, Ordering::Release);
    c.assert_disconnected("garbage records");

    // 5. A record only the daemon may send.
    let c = Raw::connect(&rig);
    let (_fd, mut shm) = c.stream();
    shm.c2d.push(Record::Drained { seq: 0, pos: 0 }).unwrap();
    c.assert_disconnected("daemon-only record");

    // 6. Disconnect in the middle of the handshake, and a packet of garbage.
    let s = seqpacket(&rig.sock);
    drop(s);
    let s = seqpacket(&rig.sock);
    // SAFETY: send(2) of a valid buffer on our socket.
    unsafe { libc::send(s.as_raw_fd(), b"\xff\xff\xff\xffgarbage".as_ptr().cast(), 11, 0) };
    let c = Raw { sock: s, device: c.device };
    c.assert_disconnected("garbage hello");

    // 7. Wrong fd count.
    let c = Raw::connect(&rig);
    let msg = SocketMsg::CreateStream {
        params: c.params(),
        msg_records: DEFAULT_MSG_RECORDS,
        memfd_bytes: total,
        chmap: ChannelMap::standard(c.params().channels),
        quality: ResampleQuality::Default,
    };
    socket::send(c.sock.as_fd(), &msg, &[]).unwrap();
    assert!(matches!(c.answer(), Some(SocketMsg::Refused { .. }) | None), "CreateStream without fds accepted");

    // 8. A sealed memfd of the right size on hugetlbfs (a hole punched in it would SIGBUS the
    //    mix thread once the huge page pool is empty).
    let c = Raw::connect(&rig);
    let huge = 2u64 << 20;
    let probe = Layout::new(4, 1, DEFAULT_MSG_RECORDS).unwrap();
    let params = AudioParams { buffer_frames: ((huge - u64::from(probe.audio_offset)) / 4) as u32, ..c.params() };
    // SAFETY: valid C string literal; flags are constants.
    let raw = unsafe {
        libc::memfd_create(c"hostile-huge".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | libc::MFD_HUGETLB)
    };
    assert!(raw >= 0, "memfd_create(MFD_HUGETLB): {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd we own; plain syscalls on it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: as above.
    unsafe {
        libc::ftruncate(fd.as_raw_fd(), huge as libc::off_t);
        libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals);
    }
    let _wakes = c.create_with(params, fd.as_raw_fd(), huge);
    assert!(matches!(c.answer(), Some(SocketMsg::Refused { .. }) | None), "hugetlb memfd accepted");

    let r = finish(&mut good, start, Duration::from_secs(30));
    r.assert_ok("aplay next to hostile clients");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "stream next to hostile clients");
    let log = rig.daemon_log();
    for reason in ["seal", "size", "fill", "record", "fd", "tmpfs"] {
        assert!(log.to_lowercase().contains(reason), "daemon log names no reason with '{reason}':\n{log}");
    }
}

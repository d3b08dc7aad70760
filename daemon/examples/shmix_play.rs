//! A minimal protocol client for trying shmixd without the ALSA plugin: plays a raw file in the
//! device's format through one stream, following PROTOCOL.md (handshake, memfd + eventfds,
//! Start, the sleeping-flag wake protocol, Drain, DestroyStream).
//! `cargo run -p shmix-daemon --example shmix_play -- SOCKET FILE.raw [--hostile MODE]`
//! MODE: `unsealed` (memfd without seals), `cursor` (audio write cursor beyond the ring),
//! `record` (sends a daemon record), `silent` (connects and never says Hello).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use shmix_shared::layout::{Layout, DEFAULT_MSG_RECORDS};
use shmix_shared::shm::{Ring, RingEnd, StreamShm};
use shmix_shared::socket as wire;
use shmix_shared::{wake, AudioParams, Direction, Record, SocketMsg, PROTOCOL_VERSION};

fn eventfd() -> OwnedFd {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd");
    // SAFETY: fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn efd_rw(fd: &OwnedFd, write: bool) {
    let mut v: u64 = 1;
    // SAFETY: 8 bytes to/from a local u64 on an open eventfd.
    unsafe {
        if write {
            libc::write(fd.as_raw_fd(), (&raw const v).cast(), 8);
        } else {
            libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8);
        }
    }
}

fn recv(sock: &OwnedFd) -> SocketMsg {
    match wire::recv(sock.as_fd()) {
        Ok(p) if !p.bytes.is_empty() => SocketMsg::decode(&p.bytes).expect("decode"),
        other => {
            println!("daemon closed the connection ({:?})", other.map(|p| p.bytes.len()));
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (sock_path, file) = (&args[1], &args[2]);
    let hostile = args.iter().position(|a| a == "--hostile").map(|i| args[i + 1].clone());
    let sock = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
    socket::connect(sock.as_raw_fd(), &UnixAddr::new(sock_path.as_str()).unwrap()).expect("connect");
    if hostile.as_deref() == Some("silent") {
        let p = wire::recv(sock.as_fd());
        println!("silent client: daemon closed after handshake timeout: {:?}", p.map(|p| p.bytes.len()));
        return;
    }
    let hello = SocketMsg::Hello {
        version: PROTOCOL_VERSION,
        direction: Direction::Playback,
        pid: std::process::id(),
        name: "shmix_play".into(),
    };
    wire::send(sock.as_fd(), &hello, &[]).unwrap();
    let SocketMsg::Welcome { device, .. } = recv(&sock) else { panic!("no welcome") };
    let buffer = device.period_frames * 4;
    let params = AudioParams { buffer_frames: buffer, ..device };
    let fb = params.frame_bytes();
    let layout = Layout::new(fb, buffer, DEFAULT_MSG_RECORDS).unwrap();
    let (memfd, shm) = if hostile.as_deref() == Some("unsealed") {
        // SAFETY: valid C string; fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"bad".as_ptr(), libc::MFD_CLOEXEC)) };
        // SAFETY: our own fd.
        unsafe { libc::ftruncate(fd.as_raw_fd(), layout.total_bytes as libc::off_t) };
        let (_, shm) = StreamShm::create(layout, "x").unwrap();
        (fd, shm)
    } else {
        StreamShm::create(layout, "shmix_play").unwrap()
    };
    let (client_wake, daemon_wake) = (eventfd(), eventfd());
    let create = SocketMsg::CreateStream { params, msg_records: DEFAULT_MSG_RECORDS, memfd_bytes: layout.total_bytes };
    wire::send(sock.as_fd(), &create, &[memfd.as_raw_fd(), client_wake.as_raw_fd(), daemon_wake.as_raw_fd()]).unwrap();
    match recv(&sock) {
        SocketMsg::StreamReady { stream_id } => eprintln!("stream {stream_id} ready"),
        other => {
            eprintln!("refused: {other:?}");
            return;
        }
    }
    shm.avail_min().value.store(device.period_frames, Ordering::Relaxed);

    let mut data = Vec::new();
    std::fs::File::open(file).unwrap().read_to_end(&mut data).unwrap();
    let total_frames = (data.len() / fb as usize) as u64;
    let (mut c2d, mut d2c) = (RingEnd::default(), RingEnd::default());
    let mut written: u64 = 0;
    let mut started = false;
    let mut seq = 0;
    let post = |shm: &StreamShm, c2d: &mut RingEnd, r: Record| {
        assert!(shm.push_record(Ring::ClientToDaemon, c2d, r).unwrap());
        if wake::wake_if_sleeping(&shm.ring_read_cursor(Ring::ClientToDaemon).sleeping) {
            efd_rw(&daemon_wake, true);
        }
    };
    if hostile.as_deref() == Some("record") {
        post(&shm, &mut c2d, Record::Fatal { errno: 1 });
    }
    if hostile.as_deref() == Some("cursor") {
        shm.audio_write().pos.store(buffer * 3, Ordering::Release);
        post(&shm, &mut c2d, Record::Start { seq: 1 });
    }
    if hostile.is_some() {
        let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 2000) };
        println!("hostile client: socket revents {:#x} (0x10 = HUP: disconnected)", pfd.revents);
        return;
    }
    let mut drained = false;
    let mut drain_sent = false;
    loop {
        let read = shm.audio_read().pos.load(Ordering::Acquire);
        let fill = (written as u32).wrapping_sub(read);
        let avail = buffer - fill;
        while let Some(r) = shm.pop_record(Ring::DaemonToClient, &mut d2c).unwrap() {
            match r.unwrap() {
                Record::Drained { .. } => drained = true,
                Record::Xrun { pos, .. } => {
                    eprintln!("xrun at {pos}; restarting");
                    seq += 1;
                    post(&shm, &mut c2d, Record::Start { seq });
                }
                other => eprintln!("daemon says {other:?}"),
            }
        }
        if drained {
            break;
        }
        if written < total_frames && avail >= device.period_frames.min(buffer) {
            let n = u64::from(avail).min(total_frames - written);
            let idx = (written % u64::from(buffer)) as u32;
            let off = written as usize * fb as usize;
            shm.write_audio(idx, &data[off..off + n as usize * fb as usize]);
            written += n;
            shm.audio_write().pos.store(written as u32, Ordering::Release);
            if !started {
                seq += 1;
                post(&shm, &mut c2d, Record::Start { seq });
                started = true;
            }
            continue;
        }
        if written == total_frames && !drain_sent {
            seq += 1;
            post(&shm, &mut c2d, Record::Drain { seq });
            drain_sent = true;
        }
        // Wait: drain the eventfd, flag, fence, recheck (room, or a record for us).
        efd_rw(&client_wake, false);
        let d = wake::prepare_sleep(&shm.audio_write().sleeping, || {
            let f = (written as u32).wrapping_sub(shm.audio_read().pos.load(Ordering::Acquire));
            (written < total_frames && buffer - f >= device.period_frames)
                || shm.ring_write_cursor(Ring::DaemonToClient).pos.load(Ordering::Acquire)
                    != shm.ring_read_cursor(Ring::DaemonToClient).pos.load(Ordering::Relaxed)
        });
        if d == wake::SleepDecision::Sleep {
            let mut pfds = [
                libc::pollfd { fd: client_wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: two valid pollfds.
            unsafe { libc::poll(pfds.as_mut_ptr(), 2, 2000) };
            if pfds[1].revents != 0 {
                eprintln!("daemon hung up");
                break;
            }
        }
        shm.audio_write().sleeping.store(0, Ordering::Relaxed);
    }
    if wire::send(sock.as_fd(), &SocketMsg::DestroyStream, &[]).is_err() {
        return;
    }
    eprintln!("{:?}", recv(&sock));
}

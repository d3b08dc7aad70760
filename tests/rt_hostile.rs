//! Hostile clients aimed at the real-time mix thread (security audit, issue 15): wake
//! descriptors a client turns blocking and fills, and a steady trickle of records. Each runs next
//! to a reference stream played by aplay through the plugin, compared sample for sample with what
//! the card recorded; the daemon must still stop on SIGTERM.

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmix_shared::msg::{AudioParams, Direction, Record};
use shmix_shared::sync::Ordering;

use crate::common::*;
use crate::hostile::Raw;
use crate::reliability::{mix_thread_load, RawAt};

/// What kind of file `fd` is, as /proc names it (`anon_inode:[eventfd]`, `socket:[N]`).
fn fd_kind(fd: &impl AsRawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Makes every write to `fd` block: an eventfd's counter goes to its maximum, a socket's queue
/// is filled to the brim. Then clears O_NONBLOCK, which belongs to the open file and so also to
/// any copy the daemon holds. Returns what was done, for the log.
fn freeze(fd: &impl AsRawFd) -> String {
    let kind = fd_kind(fd);
    let raw = fd.as_raw_fd();
    let mut filled = 0u64;
    if kind.contains("eventfd") {
        let max = 0xffff_ffff_ffff_fffeu64.to_ne_bytes();
        // SAFETY: write(2) of 8 bytes from a local array to our own descriptor.
        if unsafe { libc::write(raw, max.as_ptr().cast(), 8) } == 8 {
            filled = 0xffff_ffff_ffff_fffe;
        }
    } else {
        // SAFETY: send(2) of one byte from a static buffer; MSG_DONTWAIT so the fill stops at EAGAIN.
        while unsafe { libc::send(raw, b"x".as_ptr().cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) } == 1 {
            filled += 1;
        }
    }
    // SAFETY: fcntl(2) on our own descriptor.
    unsafe {
        let fl = libc::fcntl(raw, libc::F_GETFL);
        libc::fcntl(raw, libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    format!("{kind}: filled {filled}, O_NONBLOCK cleared")
}

/// The audit's first finding: a client clears O_NONBLOCK on the wake descriptors it shares with
/// the daemon and makes them block (counter at its maximum, queue full), then sleeps with its
/// `sleeping` flag set so the daemon writes to it. The mix thread must not block: the reference
/// stream beside it stays bit-exact, and the daemon still stops on SIGTERM.
#[test]
fn frozen_wake_descriptors_do_not_block_the_mix_thread() {
    let mut rig = hostile_load_rig(&[]);
    let (mut good, start, sound) = reference(&rig, 151, 4);
    rig.wait_for_sound(2, 0, Duration::from_secs(10));
    let c = Raw::connect(&rig);
    let params = AudioParams { period_frames: 256, buffer_frames: 1024, ..c.device };
    let (fd, mut shm, wakes) = c.ready_stream(params, "freezer");
    let done = [&wakes.client, &wakes.client_peer, &wakes.daemon, &wakes.daemon_peer].map(freeze);
    eprintln!("hostile wake descriptors: {done:?}");
    // A full ring of silence, started; then ask for a wake after every period it consumes.
    shm.audio_write().pos.store(params.buffer_frames, Ordering::Release);
    assert!(shm.c2d.push(Record::Start { seq: 1 }).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let asker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                shm.audio_write().sleeping.store(1, Ordering::Release);
                // Refill what was consumed, so the stream keeps running and keeps being woken.
                let read = shm.audio_read().pos.load(Ordering::Acquire);
                shm.audio_write().pos.store(read.wrapping_add(params.buffer_frames), Ordering::Release);
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };
    let r = finish(&mut good, start, Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    let asks = asker.join().unwrap();
    eprintln!("the hostile client asked to be woken {asks} times");
    r.assert_ok("aplay next to frozen wake descriptors");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "stream next to frozen wake descriptors");
    let t = Instant::now();
    let st = rig.signal_daemon(libc::SIGTERM);
    eprintln!("shmixd stopped on SIGTERM in {:?} ({st})", t.elapsed());
    drop((fd, wakes, c));
}

/// The audit's third finding: a client with a 1024-record message ring pushes one valid record
/// every microsecond and never signals its wake descriptor. The daemon's pre-sleep recheck finds
/// a record every time; unless the stream is then muted like one that signalled, the real-time
/// thread never blocks. The mix thread's cycles and CPU stay bounded, the reference bit-exact.
#[test]
fn a_trickle_of_records_cannot_spin_the_mix_thread() {
    let rig = hostile_load_rig(&[]);
    let (mut good, start, sound) = reference(&rig, 161, 6);
    rig.wait_for_sound(2, 0, Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let stop = Arc::clone(&stop);
        let sock = rig.sock.clone();
        std::thread::spawn(move || {
            let c = RawAt::connect(&sock, Direction::Playback).expect("connect");
            let params = AudioParams { period_frames: 512, buffer_frames: 2048, ..c.0.device };
            let (fd, mut shm, wakes) = c.0.ready_stream_with_records(params, 1024, "trickle");
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if shm.c2d.push(Record::Resume { seq: n }).unwrap_or(false) {
                    n = n.wrapping_add(1);
                }
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(1) {
                    std::hint::spin_loop();
                }
            }
            drop((fd, shm, wakes, c));
            n
        })
    };
    std::thread::sleep(Duration::from_millis(1200));
    let (rate, cpu) = mix_thread_load(&rig, 3);
    stop.store(true, Ordering::Relaxed);
    let records = trickler.join().unwrap();
    let r = finish(&mut good, start, Duration::from_secs(40));
    eprintln!(
        "trickler pushed {records} records; daemon: {rate:.0} mix cycles/s (device periods: 187.5/s), CPU {:.0} % of a core",
        cpu * 100.0
    );
    r.assert_ok("aplay next to a record trickle");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "stream next to a record trickle");
    assert!(rate < 3000.0, "the mix thread cycled {rate:.0} times a second under the trickle");
    assert!(cpu < 0.5, "the daemon used {:.0} % of a core under the trickle", cpu * 100.0);
}

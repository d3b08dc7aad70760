//! The stream memfd's rings against `rtrb` (the daemon's own in-process queue crate) in the same
//! criterion groups, and the wake protocol's cost with the peer awake (no syscall) and asleep
//! (one eventfd write).
//!
//! - `ring_audio/*`: one producer step (check the consumer's cursor, copy a period into the audio
//!   ring, publish the cursor with Release) then one consumer step (the same, reading out), for
//!   64- and 1024-frame periods of S16 stereo; `rtrb` does the same with `write_chunk_uninit` /
//!   `read_chunk` on a byte ring of the same size. Throughput in bytes.
//! - `ring_records/*`: push then pop of one 16-byte control record, against `rtrb` push/pop of
//!   the same `Record` value.
//! - `wake/*`: [`wake_if_sleeping`] when the peer is awake (a fence and a load), when it sleeps
//!   (the swap plus the eventfd `write` the caller then makes), and the sleeper's own
//!   [`prepare_sleep`] recheck.
//!
//! Run: `cargo bench -p shmix-shared --bench ring -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shmix_shared::cursor;
use shmix_shared::layout::{Layout, DEFAULT_MSG_RECORDS};
use shmix_shared::shm::{AudioHalf, AudioReader, AudioWriter, ClientHalves, DaemonHalves, StreamShm};
use shmix_shared::wake::{prepare_sleep, wake_if_sleeping, SleepDecision};
use shmix_shared::{Direction, Record};

const FRAME_BYTES: usize = 4; // S16 stereo
const BUFFER_FRAMES: u32 = 4096;

/// Both ends of one stream memfd, mapped twice as the client and the daemon map it.
struct Shm {
    client: ClientHalves,
    daemon: DaemonHalves,
    // client (producer) and daemon (consumer) private positions, as frame counts
    written: u64,
    read: u64,
}

impl Shm {
    fn new() -> Self {
        let layout = Layout::new(FRAME_BYTES as u32, BUFFER_FRAMES, DEFAULT_MSG_RECORDS).unwrap();
        let (fd, client) = StreamShm::create(layout, "bench").unwrap();
        let daemon = StreamShm::map_peer(&fd, layout).unwrap().into_daemon(Direction::Playback);
        Self { client: client.into_client(Direction::Playback), daemon, written: 0, read: 0 }
    }

    fn writer(&mut self) -> &mut AudioWriter {
        match &mut self.client.audio {
            AudioHalf::Writer(w) => w,
            AudioHalf::Reader(_) => unreachable!("a playback client writes"),
        }
    }

    fn reader(&mut self) -> &mut AudioReader {
        match &mut self.daemon.audio {
            AudioHalf::Reader(r) => r,
            AudioHalf::Writer(_) => unreachable!("the daemon reads playback"),
        }
    }

    /// Producer: room check against the consumer's cursor, copy, publish.
    fn push(&mut self, src: &[u8]) -> bool {
        let frames = (src.len() / FRAME_BYTES) as u32;
        let read = self.client.shm.audio_read().pos.load(Ordering::Acquire);
        let fill = cursor::fill(self.written as u32, read, BUFFER_FRAMES).unwrap();
        if BUFFER_FRAMES - fill < frames {
            return false;
        }
        let index = cursor::ring_index(self.written, BUFFER_FRAMES);
        self.writer().write(index, src);
        self.written += u64::from(frames);
        let pos = self.written as u32;
        self.writer().publish(pos);
        true
    }

    /// Consumer: fill check against the producer's cursor, copy out, publish.
    fn pop(&mut self, dst: &mut [u8]) -> bool {
        let frames = (dst.len() / FRAME_BYTES) as u32;
        let write = self.daemon.shm.audio_write().pos.load(Ordering::Acquire);
        if cursor::fill(write, self.read as u32, BUFFER_FRAMES).unwrap() < frames {
            return false;
        }
        let index = cursor::ring_index(self.read, BUFFER_FRAMES);
        self.reader().read(index, dst);
        self.read += u64::from(frames);
        let pos = self.read as u32;
        self.reader().consume(pos);
        true
    }
}

fn audio_ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_audio");
    for period in [64usize, 1024] {
        let bytes = period * FRAME_BYTES;
        let src: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
        let mut dst = vec![0u8; bytes];
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut shm = Shm::new();
        g.bench_function(BenchmarkId::new("shmix", period), |b| {
            b.iter(|| {
                assert!(shm.push(black_box(&src)));
                assert!(shm.pop(black_box(&mut dst)));
            });
        });
        let (mut p, mut q) = rtrb::RingBuffer::<u8>::new(BUFFER_FRAMES as usize * FRAME_BYTES);
        g.bench_function(BenchmarkId::new("rtrb", period), |b| {
            b.iter(|| {
                let chunk = p.write_chunk_uninit(bytes).unwrap();
                let n = chunk.fill_from_iter(black_box(&src).iter().copied());
                assert_eq!(n, bytes);
                let chunk = q.read_chunk(bytes).unwrap();
                let (a, b2) = chunk.as_slices();
                dst[..a.len()].copy_from_slice(a);
                dst[a.len()..].copy_from_slice(b2);
                chunk.commit_all();
                black_box(&mut dst);
            });
        });
    }
    g.finish();
}

fn record_ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_records");
    g.throughput(Throughput::Elements(1));
    let mut shm = Shm::new();
    g.bench_function("shmix", |b| {
        b.iter(|| {
            assert!(shm.client.c2d.push(black_box(Record::Start { seq: 7 })).unwrap());
            black_box(shm.daemon.c2d.pop().unwrap());
        });
    });
    let (mut p, mut q) = rtrb::RingBuffer::<Record>::new(DEFAULT_MSG_RECORDS as usize);
    g.bench_function("rtrb", |b| {
        b.iter(|| {
            p.push(black_box(Record::Start { seq: 7 })).unwrap();
            black_box(q.pop().unwrap());
        });
    });
    g.finish();
}

fn eventfd() -> OwnedFd {
    // SAFETY: plain syscall with constant flags.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn wake(c: &mut Criterion) {
    let mut g = c.benchmark_group("wake");
    let flag = AtomicU32::new(0);
    let efd = eventfd();
    let signal = |fd: &OwnedFd| {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let r = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        assert_eq!(r, 8);
    };
    g.bench_function("peer_awake", |b| {
        b.iter(|| {
            if wake_if_sleeping(black_box(&flag)) {
                signal(&efd);
            }
        });
    });
    // The eventfd counter only grows here (nobody reads it); it holds 2^64 - 2 writes.
    g.bench_function("peer_asleep", |b| {
        b.iter(|| {
            flag.store(1, Ordering::Relaxed); // the peer went to sleep
            assert!(wake_if_sleeping(black_box(&flag)));
            signal(&efd);
        });
    });
    g.bench_function("prepare_sleep", |b| {
        b.iter(|| {
            let d = prepare_sleep(black_box(&flag), || false);
            assert_eq!(d, SleepDecision::Sleep);
        });
    });
    g.finish();
}

criterion_group!(benches, audio_ring, record_ring, wake);
criterion_main!(benches);

//! The daemon's real mixing core (`MixCore` with `Stream`s over real memfds, as shmixd's mix
//! thread runs it) while a hostile client rewrites its stream's cursors, records and control
//! fields between cycles. The core never panics, never emits more than asked, and a stream that
//! broke the contract is retired with a violation (never mixed again).
#![no_main]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shmix_daemon::mix::ctl::DeviceCtl;
use shmix_daemon::mix::{Counters, MixCore, Stream};
use shmix_daemon::dsp::{self, DeviceSpec, Pipeline, StreamSpec};
use shmix_shared::chmap::ChannelMap;
use shmix_shared::ResampleQuality;
use shmix_shared::layout::{Layout, DEFAULT_MSG_RECORDS};
use shmix_shared::shm::{Ring, StreamShm};
use shmix_shared::{AudioParams, Direction, Record, SampleFormat, WakeFd};

const PERIOD: u32 = 64;

#[derive(Debug, Arbitrary)]
enum Op {
    /// A record pushed through the ring (any kind, any value: the client may lie).
    Push { kind: u8, seq: u32 },
    /// Raw 16 bytes written into the next c2d slot and the write cursor bumped.
    RawRecord { bytes: [u8; 16] },
    /// The audio write cursor set to `read + delta` (delta may be anything).
    Write { delta: u32 },
    /// Any cursor or flag of the header stored directly.
    Store { which: u8, value: u32 },
    /// One mix cycle of `frames` device frames.
    Mix { frames: u8 },
    /// Publish timing.
    Timing { queued: u16 },
    /// The wait: recheck before sleeping, then the stream's eventfd fired (or not), or a timeout
    /// that ends the mutes.
    Wait { fired: bool, timeout: bool },
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// 0: S16 stereo 48 kHz (passthrough); 1: S16 mono (remap); 2: FLOAT stereo 44.1 kHz (resampled).
    kind: u8,
    buffer: u16,
    ops: Vec<Op>,
}

/// The daemon's end of a wake channel (the client's end is dropped: the target never polls).
fn wake() -> WakeFd {
    WakeFd::pair().unwrap().0
}

fuzz_target!(|inp: Input| {
    let dev = DeviceSpec {
        params: AudioParams {
            format: SampleFormat::S16Le,
            rate: 48_000,
            channels: 2,
            period_frames: PERIOD,
            buffer_frames: 4 * PERIOD,
        },
        chmap: ChannelMap::standard(2),
        quality: dsp::DEFAULT_QUALITY,
        run_frames: PERIOD,
        history_frames: 0,
    };
    let (format, rate, channels) = match inp.kind % 3 {
        0 => (SampleFormat::S16Le, 48_000, 2),
        1 => (SampleFormat::S16Le, 48_000, 1),
        _ => (SampleFormat::F32Le, 44_100, 2),
    };
    let spec = StreamSpec { format, rate, chmap: ChannelMap::standard(channels), quality: ResampleQuality::Fast };
    let min = shmix_shared::limits::min_buffer_frames(PERIOD, 48_000, rate);
    let buffer = (u32::from(inp.buffer) % 4096).max(min);
    let fb = format.sample_bytes() * channels;
    let layout = Layout::new(fb, buffer, DEFAULT_MSG_RECORDS).expect("layout");
    let (memfd, client) = StreamShm::create(layout, "fuzz").expect("memfd");
    let shm = StreamShm::map_peer(&memfd, layout).expect("map");
    let pipe = Pipeline::new(&spec, &dev).expect("pipeline");
    let counters = Arc::new(Counters::default());
    let mut core = MixCore::new(SampleFormat::S16Le, Arc::new(DeviceCtl::new(2, 48_000)), PERIOD as usize, Arc::clone(&counters));
    if core.add(Box::new(Stream::new(1, shm, wake(), wake(), pipe))).is_err() {
        return;
    }
    let mut client = client.into_client(Direction::Playback);
    let mut out = vec![0u8; PERIOD as usize * 4];
    let mut retired = false;
    for op in inp.ops.iter().take(200) {
        match *op {
            Op::Push { kind, seq } => {
                let r = match kind % 9 {
                    0 => Record::Start { seq },
                    1 => Record::Stop { seq },
                    2 => Record::Pause { seq },
                    3 => Record::Resume { seq },
                    4 => Record::Drain { seq },
                    5 => Record::Stopped { seq, pos: seq },
                    6 => Record::Xrun { pos: seq, at_ns: 1 },
                    7 => Record::Drained { seq, pos: 0 },
                    _ => Record::Fatal { errno: seq },
                };
                let _ = client.c2d.push(r);
            }
            Op::RawRecord { bytes } => {
                let w = client.shm.ring_write_cursor(Ring::ClientToDaemon);
                let pos = w.pos.load(Ordering::Relaxed);
                let slot = (pos & (DEFAULT_MSG_RECORDS - 1)) as usize * 16;
                let base = client.shm.audio_ptr().wrapping_sub(layout.audio_offset as usize);
                for (i, b) in bytes.iter().enumerate() {
                    // SAFETY: c2d_offset + slot + 16 lies inside the client's own mapping.
                    unsafe { std::ptr::write_volatile(base.add(layout.c2d_offset as usize + slot + i), *b) };
                }
                w.pos.store(pos.wrapping_add(1), Ordering::Release);
            }
            Op::Write { delta } => {
                let read = client.shm.audio_read().pos.load(Ordering::Acquire);
                client.shm.audio_write().pos.store(read.wrapping_add(delta), Ordering::Release);
            }
            Op::Store { which, value } => {
                let c = match which % 6 {
                    0 => client.shm.audio_write(),
                    1 => client.shm.audio_read(),
                    2 => client.shm.ring_write_cursor(Ring::ClientToDaemon),
                    3 => client.shm.ring_read_cursor(Ring::ClientToDaemon),
                    4 => client.shm.ring_write_cursor(Ring::DaemonToClient),
                    _ => client.shm.ring_read_cursor(Ring::DaemonToClient),
                };
                match which / 6 % 3 {
                    0 => c.pos.store(value, Ordering::Release),
                    1 => c.sleeping.store(value, Ordering::Release),
                    _ => client.shm.avail_min().value.store(value, Ordering::Release),
                }
            }
            Op::Mix { frames } => {
                core.process_records();
                let n = (usize::from(frames) % PERIOD as usize) + 1;
                let got = core.mix(&mut out[..n * 4], 1);
                assert!(got <= n);
                if let Some(s) = core.take_violated() {
                    assert!(s.violation().is_some());
                    assert!(!retired);
                    retired = true;
                }
            }
            Op::Timing { queued } => core.publish_timing(u32::from(queued), 2),
            Op::Wait { fired, timeout } => {
                let _ = core.prepare_sleep();
                core.after_wake(|_| if fired { libc::POLLIN } else { 0 });
                if timeout {
                    core.unmute_all();
                }
                core.process_records();
                // A stream that woke us is muted until the next period or the timeout.
                if fired && !core.streams().is_empty() {
                    assert!(core.any_muted());
                }
            }
        }
    }
    let _ = core.prepare_sleep();
});

//! Real-time proof for the mixing core: drives `MixCore` in-process with real stream memfds (made
//! the way the plugin makes them) for thousands of periods with 1, 2 and several streams —
//! starts, stops, pauses, drains and underruns included — and asserts that the mix cycle never
//! allocates, that one stream reaches the output bit for bit, and that several give their exact
//! saturated sum. Built with `--features rt-audit` the daemon's own counting allocator is used;
//! without it this binary installs the same allocator itself, so plain `cargo test` runs it too.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use shmix_daemon::audit;
use shmix_daemon::dsp::convert::{self, EncodeFn};
use shmix_daemon::dsp::{self, DeviceSpec, Pipeline, RecordPipe, StreamSpec};
use shmix_daemon::mix::ctl::DeviceCtl;
use shmix_daemon::mix::{Counters, MixCore, Stream};
use shmix_shared::chmap::ChannelMap;
use shmix_shared::layout::{Layout, DEFAULT_MSG_RECORDS};
use shmix_shared::shm::{AudioHalf, AudioReader, AudioWriter, RecordReceiver, RecordSender, StreamShm};
use shmix_shared::ResampleQuality;
use shmix_shared::{wake, AudioParams, Direction, Record, SampleFormat, WakeFd};

#[cfg(not(feature = "rt-audit"))]
#[global_allocator]
static GLOBAL: audit::CountingAlloc = audit::CountingAlloc;

const CHANNELS: u32 = 2;
const PERIOD: usize = 256;

/// The device's shared volume and level state for a 48 kHz device of `CHANNELS`.
fn device_ctl() -> Arc<DeviceCtl> {
    Arc::new(DeviceCtl::new(CHANNELS, 48_000))
}

/// A wake channel: the end the daemon's stream holds, and the client's end.
fn wake_pair() -> (WakeFd, WakeFd) {
    WakeFd::pair().unwrap()
}

/// Deterministic xorshift.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CState {
    /// Daemon side stopped; the client may reset and start.
    Idle,
    Running,
    /// Pause sent; waiting for `Stopped`.
    Pausing,
    Paused(u32),
    /// Stop or drain sent; waiting for the answer.
    Stopping,
    /// Deliberately not writing (forces an underrun).
    Starving,
}

/// The plugin's side of one stream, as the test plays it.
struct Client {
    shm: Arc<StreamShm>,
    c2d: RecordSender,
    d2c: RecordReceiver,
    audio: AudioWriter,
    /// A third mapping of the ring, for the oracle to read what the daemon was given.
    observer: AudioReader,
    buffer: u32,
    written: u64,
    seq: u32,
    state: CState,
    client_wake: WakeFd,
    /// The client's end of the stream's daemon_wake (kept open: a closed end reads as a hang-up).
    _daemon_wake: WakeFd,
    frame: Vec<u8>,
    /// Test-side encoder of the stream's format (random full-scale values).
    encode: EncodeFn,
    samples: Vec<f32>,
    got: Counts,
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    xruns: u32,
    drained: u32,
    stopped: u32,
}

impl Client {
    fn fill(&self) -> u32 {
        (self.written as u32).wrapping_sub(self.shm.audio_read().pos.load(Ordering::Acquire))
    }
    /// The daemon's read count since start, seen from here.
    fn read_count(&self) -> u64 {
        self.written - u64::from(self.fill())
    }
    fn write(&mut self, frames: u32, rng: &mut Rng) {
        let fb = self.frame.len();
        for _ in 0..frames {
            for v in &mut self.samples {
                // Full-scale values so three streams saturate often (S16: every value exact).
                *v = f32::from(rng.next() as i16) / 32768.0;
            }
            (self.encode)(&self.samples, &mut self.frame);
            let idx = (self.written % u64::from(self.buffer)) as u32;
            self.audio.write(idx, &self.frame[..fb]);
            self.written += 1;
        }
        self.audio.publish(self.written as u32);
    }
    fn send(&mut self, make: impl FnOnce(u32) -> Record) {
        self.seq += 1;
        let r = make(self.seq);
        assert!(self.c2d.push(r).unwrap());
        // Takes the daemon's sleeping flag as a client would before signalling (the test does not poll).
        let _ = wake::wake_if_sleeping(&self.c2d.read_cursor().sleeping);
    }
    fn reset_and_start(&mut self, rng: &mut Rng) {
        self.audio.reset();
        self.written = 0;
        let pre = (rng.next() % u64::from(self.buffer)) as u32 + 1;
        self.write(pre, rng);
        self.send(|seq| Record::Start { seq });
        self.state = CState::Running;
    }
    /// Reads the daemon's records and the client's eventfd; advances the client's state machine.
    fn step(&mut self, rng: &mut Rng) {
        self.client_wake.drain();
        while let Some(r) = self.d2c.pop().unwrap() {
            match r.unwrap() {
                Record::Xrun { .. } => {
                    self.got.xruns += 1;
                    self.state = CState::Idle;
                }
                Record::Drained { .. } => {
                    self.got.drained += 1;
                    self.state = CState::Idle;
                }
                Record::Stopped { .. } => {
                    self.got.stopped += 1;
                    self.state = if self.state == CState::Pausing {
                        CState::Paused(rng.next() as u32 % 20)
                    } else {
                        CState::Idle
                    };
                }
                other => panic!("unexpected daemon record {other:?}"),
            }
        }
        match self.state {
            CState::Idle => {
                if rng.chance(3) {
                    self.reset_and_start(rng);
                }
            }
            CState::Running => {
                let avail = self.buffer - self.fill();
                let n = if rng.chance(4) { avail / 2 } else { avail };
                self.write(n, rng);
                match rng.next() % 200 {
                    0 => {
                        self.send(|seq| Record::Stop { seq });
                        self.state = CState::Stopping;
                    }
                    1 => {
                        self.send(|seq| Record::Drain { seq });
                        self.state = CState::Stopping;
                    }
                    2 => {
                        self.send(|seq| Record::Pause { seq });
                        self.state = CState::Pausing;
                    }
                    3 | 4 => self.state = CState::Starving,
                    _ => {
                        if self.buffer - self.fill() < PERIOD as u32 {
                            // Wait for room like the plugin: flag, fence, recheck.
                            let _ = wake::prepare_sleep(&self.shm.audio_write().sleeping, || false);
                        }
                    }
                }
            }
            CState::Paused(0) => {
                self.send(|seq| Record::Resume { seq });
                self.state = CState::Running;
            }
            CState::Paused(n) => self.state = CState::Paused(n - 1),
            CState::Pausing | CState::Stopping | CState::Starving => {}
        }
    }
}

/// The device every test mixes into: `format` stereo 48 kHz, period `PERIOD`.
fn device(format: SampleFormat) -> DeviceSpec {
    DeviceSpec {
        params: AudioParams {
            format,
            rate: 48_000,
            channels: CHANNELS,
            period_frames: PERIOD as u32,
            buffer_frames: 4 * PERIOD as u32,
        },
        chmap: ChannelMap::standard(CHANNELS),
        quality: dsp::DEFAULT_QUALITY,
        run_frames: PERIOD as u32,
        history_frames: 0,
    }
}

/// S16 stereo at the device's rate (the bit-exact oracle's streams).
fn s16_stereo() -> StreamSpec {
    StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        chmap: ChannelMap::standard(CHANNELS),
        quality: ResampleQuality::Default,
    }
}

fn make_stream(id: u32, buffer: u32, rng: &mut Rng) -> (Client, Box<Stream>) {
    make_stream_as(id, buffer, rng, &s16_stereo(), &device(SampleFormat::S16Le))
}

fn make_stream_as(id: u32, buffer: u32, rng: &mut Rng, spec: &StreamSpec, dev: &DeviceSpec) -> (Client, Box<Stream>) {
    let fb = spec.format.sample_bytes() * spec.chmap.channels();
    let layout = Layout::new(fb, buffer, DEFAULT_MSG_RECORDS).unwrap();
    let (memfd, client_shm) = StreamShm::create(layout, "rt-test").unwrap();
    let daemon_shm = StreamShm::map_peer(&memfd, layout).unwrap();
    let AudioHalf::Reader(observer) =
        StreamShm::map_peer(&memfd, layout).unwrap().into_daemon(Direction::Playback).audio
    else {
        unreachable!("the daemon reads playback")
    };
    client_shm.avail_min().value.store(PERIOD as u32, Ordering::Relaxed);
    let client_shm = client_shm.into_client(Direction::Playback);
    let AudioHalf::Writer(audio) = client_shm.audio else { unreachable!("a playback client writes") };
    let (client_wake_daemon, client_wake) = wake_pair();
    let (daemon_wake, daemon_wake_client) = wake_pair();
    let pipe = Pipeline::new(spec, dev).unwrap();
    let stream = Box::new(Stream::new(id, daemon_shm, client_wake_daemon, daemon_wake, pipe));
    let mut c = Client {
        shm: client_shm.shm,
        c2d: client_shm.c2d,
        d2c: client_shm.d2c,
        audio,
        observer,
        buffer,
        written: 0,
        seq: 0,
        state: CState::Idle,
        client_wake,
        _daemon_wake: daemon_wake_client,
        frame: vec![0; fb as usize],
        encode: convert::encoder(spec.format),
        samples: vec![0.0; spec.chmap.channels() as usize],
        got: Counts::default(),
    };
    c.reset_and_start(rng);
    (c, stream)
}

/// Runs `periods` cycles of `nstreams` streams; checks every output sample and the allocation count.
fn run(nstreams: usize, periods: usize, seed: u64) -> (Counts, u64) {
    let mut rng = Rng(seed);
    let counters = Arc::new(Counters::default());
    let mut core = MixCore::new(SampleFormat::S16Le, device_ctl(), PERIOD, Arc::clone(&counters));
    let mut clients = Vec::new();
    for i in 0..nstreams {
        let buffer = [1024, 600, 4096, 777][i % 4];
        let (c, s) = make_stream(i as u32 + 1, buffer, &mut rng);
        core.add(s).unwrap();
        clients.push(c);
    }
    let fb = (2 * CHANNELS) as usize;
    let mut out = vec![0u8; PERIOD * fb];
    let mut expect = vec![0i32; PERIOD * CHANNELS as usize];
    let mut scratch = vec![0u8; PERIOD * fb];
    let mut r0 = vec![0u64; nstreams];
    let allocs_before = audit::thread_rt_allocations();
    let mut checked_samples = 0u64;
    for p in 0..periods {
        for c in &mut clients {
            c.step(&mut rng);
            // Starving ends after a while (the daemon will have reported the underrun).
            if c.state == CState::Starving && rng.chance(8) {
                c.state = CState::Running;
            }
        }
        // A short period now and then (the device's run at the end of its buffer).
        let frames = if p % 7 == 3 { PERIOD - 100 } else { PERIOD };

        audit::set_in_rt(true);
        let _ = core.prepare_sleep();
        core.after_wake(|_| 0);
        core.process_records();
        audit::set_in_rt(false);

        for (i, c) in clients.iter().enumerate() {
            r0[i] = c.read_count();
        }

        audit::set_in_rt(true);
        let n = core.mix(&mut out[..frames * fb], p as u64);
        core.publish_timing(512, p as u64);
        let violated = core.take_violated();
        audit::set_in_rt(false);
        assert!(violated.is_none(), "no stream may be violated: {violated:?}");
        assert_eq!(n, frames);

        // Oracle: what each stream gave is [r0, r1) of its ring, at the start of the period.
        expect[..frames * CHANNELS as usize].fill(0);
        for (i, c) in clients.iter().enumerate() {
            let k = (c.read_count() - r0[i]) as usize;
            assert!(k <= frames);
            if k == 0 {
                continue;
            }
            let idx = (r0[i] % u64::from(c.buffer)) as u32;
            c.observer.read(idx, &mut scratch[..k * fb]);
            for (e, s) in expect.iter_mut().zip(scratch[..k * fb].chunks_exact(2)) {
                *e += i32::from(i16::from_le_bytes([s[0], s[1]]));
            }
        }
        for (j, (e, o)) in expect[..frames * CHANNELS as usize].iter().zip(out.chunks_exact(2)).enumerate() {
            let want = (*e).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
            let got = i16::from_le_bytes([o[0], o[1]]);
            assert_eq!(got, want, "period {p} sample {j} ({nstreams} streams)");
            checked_samples += 1;
        }
    }
    let allocs = audit::thread_rt_allocations() - allocs_before;
    assert_eq!(allocs, 0, "the mix cycle allocated {allocs} times");
    let mut total = Counts::default();
    for c in &clients {
        total.xruns += c.got.xruns;
        total.drained += c.got.drained;
        total.stopped += c.got.stopped;
    }
    let fast = counters.fastpath_frames.load(Ordering::Relaxed);
    if nstreams == 1 {
        assert!(fast > 0, "one stream must take the fast path");
    }
    eprintln!(
        "{nstreams} streams, {periods} periods: {checked_samples} samples checked, {total:?}, fast-path frames {fast}, \
         wakeups sent {} skipped {}",
        counters.wakeups_sent.load(Ordering::Relaxed),
        counters.wakeups_skipped.load(Ordering::Relaxed)
    );
    // Retire everything off the RT section (drops unmap here).
    while core.pop_any().is_some() {}
    (total, fast)
}

#[test]
fn counting_allocator_sees_allocations_in_rt() {
    // The audit must be able to fail: an allocation with the flag set is counted.
    let before = audit::thread_rt_allocations();
    audit::set_in_rt(true);
    let v = std::hint::black_box(vec![1u8; 64]);
    audit::set_in_rt(false);
    drop(v);
    assert!(audit::thread_rt_allocations() > before);
}

#[test]
fn one_stream_is_bit_exact_without_allocating() {
    let (c, _) = run(1, 6000, 0x1234_5678_9abc_def1);
    assert!(c.xruns > 0 && c.drained > 0 && c.stopped > 0, "scenario must cover xrun/drain/stop: {c:?}");
}

#[test]
fn two_streams_sum_without_allocating() {
    let (c, _) = run(2, 4000, 0x0fed_cba9_8765_4321);
    assert!(c.xruns > 0 && c.drained > 0 && c.stopped > 0, "{c:?}");
}

#[test]
fn several_streams_saturate_without_allocating() {
    let (c, _) = run(5, 4000, 0x5555_aaaa_1234_4321);
    assert!(c.xruns > 0 && c.drained > 0 && c.stopped > 0, "{c:?}");
}

#[test]
fn three_streams_constant_saturated_sum() {
    // Deterministic values: 3 x 20000 saturates to 32767, 3 x -20000 to -32768, 3 x 5 = 15.
    let counters = Arc::new(Counters::default());
    let mut core = MixCore::new(SampleFormat::S16Le, device_ctl(), PERIOD, Arc::clone(&counters));
    let mut rng = Rng(1);
    let mut clients = Vec::new();
    for id in 1..=3 {
        let (mut c, s) = make_stream(id, 1024, &mut rng);
        // Replace the random prefill by a known pattern.
        c.audio.publish(0);
        c.written = 0;
        let pat: Vec<u8> = (0..PERIOD * 2).flat_map(|i| [20000i16, -20000, 5][i % 3].to_le_bytes()).collect();
        c.audio.write(0, &pat);
        c.written = PERIOD as u64;
        c.audio.publish(PERIOD as u32);
        core.add(s).unwrap();
        clients.push(c);
    }
    core.process_records();
    let mut out = vec![0u8; PERIOD * 4];
    audit::set_in_rt(true);
    core.mix(&mut out, 0);
    audit::set_in_rt(false);
    let got: Vec<i16> = out.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(*g, [i16::MAX, i16::MIN, 15][i % 3], "sample {i}");
    }
    assert_eq!(counters.fastpath_frames.load(Ordering::Relaxed), 0);
}

/// Streams in other formats, rates and layouts (resampling at every quality, 5.1 and 7.1 folded
/// to stereo, mono spread to both sides, G.711, packed 24 bit, big endian, doubles) mixed into
/// an S32 and a float device for thousands of periods, starts, stops, pauses, drains and
/// underruns included: the cycle never allocates and the output is not silent.
#[test]
fn converted_streams_mix_without_allocating() {
    use SampleFormat as F;
    let specs = [
        (F::S16Le, 44_100, 2, ResampleQuality::Default),
        (F::F32Le, 48_000, 6, ResampleQuality::Default),
        (F::U8, 22_050, 1, ResampleQuality::Fast),
        (F::S24_3Be, 96_000, 6, ResampleQuality::Medium),
        (F::MuLaw, 8_000, 1, ResampleQuality::High),
        (F::F64Le, 192_000, 8, ResampleQuality::Default),
        (F::S32Be, 11_025, 2, ResampleQuality::Fast),
        (F::ALaw, 48_000, 1, ResampleQuality::Default),
    ];
    for (dev_format, seed) in [(F::S32Le, 0x1357_9bdf_2468_ace0u64), (F::F32Le, 0x0bad_cafe_dead_beef)] {
        let dev = device(dev_format);
        let mut rng = Rng(seed);
        let counters = Arc::new(Counters::default());
        let mut core = MixCore::new(dev_format, device_ctl(), PERIOD, Arc::clone(&counters));
        let mut clients = Vec::new();
        for (i, (format, rate, ch, quality)) in specs.iter().enumerate() {
            let spec = StreamSpec { format: *format, rate: *rate, chmap: ChannelMap::standard(*ch), quality: *quality };
            let min = shmix_shared::limits::min_buffer_frames(PERIOD as u32, 48_000, *rate);
            let (c, s) = make_stream_as(i as u32 + 1, min + (i as u32 * 97) % min, &mut rng, &spec, &dev);
            assert_eq!(s.pipeline().unwrap().resamples(), *rate != 48_000);
            core.add(s).unwrap();
            clients.push(c);
        }
        let fb = core.frame_bytes();
        let mut out = vec![0u8; PERIOD * fb];
        let mut loud = 0u64;
        let allocs_before = audit::thread_rt_allocations();
        for p in 0..2000usize {
            for c in &mut clients {
                c.step(&mut rng);
                if c.state == CState::Starving && rng.chance(8) {
                    c.state = CState::Running;
                }
            }
            let frames = if p % 7 == 3 { PERIOD - 100 } else { PERIOD };
            audit::set_in_rt(true);
            let _ = core.prepare_sleep();
            core.after_wake(|_| 0);
            core.process_records();
            let n = core.mix(&mut out[..frames * fb], p as u64);
            core.publish_timing(512, p as u64);
            let violated = core.take_violated();
            audit::set_in_rt(false);
            assert!(violated.is_none(), "no stream may be violated: {violated:?}");
            assert_eq!(n, frames);
            loud += u64::from(out[..frames * fb].iter().any(|b| *b != 0));
            for c in &clients {
                // The timing snapshot stays within what the stream has consumed.
                if let Some((pos, queued, _)) = c.shm.read_timing() {
                    assert!(u64::from(queued) <= u64::from(pos).max(c.read_count()) + 1 || pos == 0);
                }
            }
        }
        let allocs = audit::thread_rt_allocations() - allocs_before;
        assert_eq!(allocs, 0, "the mix cycle allocated {allocs} times ({dev_format})");
        assert!(loud > 500, "output mostly silent: {loud} loud periods");
        let mut total = Counts::default();
        for c in &clients {
            total.xruns += c.got.xruns;
            total.drained += c.got.drained;
            total.stopped += c.got.stopped;
        }
        assert!(total.xruns > 0 && total.drained > 0 && total.stopped > 0, "{total:?}");
        eprintln!("{dev_format}: {} streams converted, {total:?}, {loud} loud periods", specs.len());
        while core.pop_any().is_some() {}
    }
}

/// One stream alone that needs converting (mono S16 at 48 kHz into a stereo S16 device) does not
/// take the fast path, and comes out exact: both sides carry the mono sample at full level.
#[test]
fn mono_stream_reaches_both_sides_exactly() {
    let dev = device(SampleFormat::S16Le);
    let spec = StreamSpec { chmap: ChannelMap::standard(1), ..s16_stereo() };
    let counters = Arc::new(Counters::default());
    let mut core = MixCore::new(SampleFormat::S16Le, device_ctl(), PERIOD, Arc::clone(&counters));
    let mut rng = Rng(7);
    let (mut c, s) = make_stream_as(1, 1024, &mut rng, &spec, &dev);
    c.audio.publish(0);
    let vals: Vec<i16> = (0..PERIOD).map(|i| [i16::MIN, -1, 0, 1, 12345, i16::MAX][i % 6]).collect();
    let pat: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    c.audio.write(0, &pat);
    c.audio.publish(PERIOD as u32);
    core.add(s).unwrap();
    core.process_records();
    let mut out = vec![0u8; PERIOD * 4];
    audit::set_in_rt(true);
    core.mix(&mut out, 0);
    audit::set_in_rt(false);
    let got: Vec<i16> = out.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    for (i, v) in vals.iter().enumerate() {
        assert_eq!((got[2 * i], got[2 * i + 1]), (*v, *v), "frame {i}");
    }
    assert_eq!(counters.fastpath_frames.load(Ordering::Relaxed), 0);
}

/// The client side of one recording stream (capture or monitor) as the test plays it.
struct Recorder {
    shm: Arc<StreamShm>,
    c2d: RecordSender,
    d2c: RecordReceiver,
    audio: AudioReader,
    buffer: u32,
    fb: usize,
    read: u64,
    seq: u32,
    /// Everything read since start, in order.
    got: Vec<u8>,
    xruns: u32,
}

impl Recorder {
    fn fill(&self) -> u32 {
        self.shm.audio_write().pos.load(Ordering::Acquire).wrapping_sub(self.read as u32)
    }
    /// Reads everything queued (into `got` when `keep`).
    fn read_all(&mut self, keep: bool) {
        let n = self.fill() as usize;
        let mut buf = vec![0u8; n * self.fb];
        self.audio.read((self.read % u64::from(self.buffer)) as u32, &mut buf);
        if keep {
            self.got.extend_from_slice(&buf);
        }
        self.read += n as u64;
        self.audio.consume(self.read as u32);
    }
    fn send(&mut self, make: impl FnOnce(u32) -> Record) {
        self.seq += 1;
        let r = make(self.seq);
        assert!(self.c2d.push(r).unwrap());
    }
    fn records(&mut self) -> Vec<Record> {
        let mut v = Vec::new();
        while let Some(r) = self.d2c.pop().unwrap() {
            v.push(r.unwrap());
        }
        v
    }
    fn start(&mut self) {
        self.audio.reset();
        self.read = 0;
        self.send(|seq| Record::Start { seq });
    }
}

fn make_recorder(id: u32, dir: Direction, buffer: u32, spec: &StreamSpec, dev: &DeviceSpec) -> (Recorder, Box<Stream>) {
    let fb = spec.format.sample_bytes() * spec.chmap.channels();
    let layout = Layout::new(fb, buffer, DEFAULT_MSG_RECORDS).unwrap();
    let (memfd, client_shm) = StreamShm::create(layout, "rt-rec").unwrap();
    let daemon_shm = StreamShm::map_peer(&memfd, layout).unwrap();
    client_shm.avail_min().value.store(PERIOD as u32, Ordering::Relaxed);
    let client_shm = client_shm.into_client(dir);
    let AudioHalf::Reader(audio) = client_shm.audio else { unreachable!("a recording client reads") };
    let (client_wake, _client_end) = wake_pair();
    let (daemon_wake, _daemon_end) = wake_pair();
    let rec = RecordPipe::new(spec, dev).unwrap();
    let stream = Box::new(Stream::new_recorder(id, daemon_shm, client_wake, daemon_wake, dir, rec));
    let mut r = Recorder {
        shm: client_shm.shm,
        c2d: client_shm.c2d,
        d2c: client_shm.d2c,
        audio,
        buffer,
        fb: fb as usize,
        read: 0,
        seq: 0,
        got: Vec::new(),
        xruns: 0,
    };
    r.start();
    (r, stream)
}

/// Capture and monitor streams in the cycle: a playback stream plays noise, two bit-exact
/// monitors and two bit-exact capture streams (different buffers) get exactly the device's
/// bytes, converted recorders (F32 mono 44.1 kHz, S32 stereo 96 kHz) run alongside, a recorder
/// that stops reading overruns alone and recovers — and the cycle never allocates.
#[test]
fn capture_and_monitor_streams_without_allocating() {
    let dev = device(SampleFormat::S16Le);
    let counters = Arc::new(Counters::default());
    let mut core = MixCore::new(SampleFormat::S16Le, device_ctl(), PERIOD, Arc::clone(&counters));
    let mut rng = Rng(0xfeed);
    let (mut player, s) = make_stream(1, 4096, &mut rng);
    core.add(s).unwrap();
    let conv_a = StreamSpec {
        format: SampleFormat::F32Le,
        rate: 44_100,
        chmap: ChannelMap::standard(1),
        quality: ResampleQuality::Default,
    };
    let conv_b = StreamSpec { format: SampleFormat::S32Le, rate: 96_000, ..s16_stereo() };
    let plan = [
        (Direction::Monitor, 1024, s16_stereo()),
        (Direction::Monitor, 700, s16_stereo()),
        (Direction::Capture, 1024, s16_stereo()),
        (Direction::Capture, 513, s16_stereo()),
        (Direction::Monitor, 2048, conv_a),
        (Direction::Capture, 2048, conv_b),
        (Direction::Capture, 1024, s16_stereo()),
    ];
    let mut recs = Vec::new();
    for (i, (dir, buffer, spec)) in plan.iter().enumerate() {
        let (r, s) = make_recorder(10 + i as u32, *dir, *buffer, spec, &dev);
        core.add(s).unwrap();
        recs.push(r);
    }
    let (mut played, mut captured) = (Vec::new(), Vec::new());
    let mut out = vec![0u8; PERIOD * 4];
    let mut cap = vec![0u8; PERIOD * 4];
    let periods = 3000;
    let before = audit::thread_rt_allocations();
    for p in 0..periods {
        player.write(PERIOD as u32, &mut rng);
        for b in cap.iter_mut() {
            *b = rng.next() as u8;
        }
        audit::set_in_rt(true);
        core.process_records();
        // A run split in two, as at the end of the device's buffer.
        let cut = if p % 7 == 0 { 100 * 4 } else { PERIOD * 4 };
        core.mix(&mut out[..cut], 0);
        if cut < out.len() {
            core.mix(&mut out[cut..], 0);
        }
        core.capture(&cap[..cut], 4, 0);
        if cut < cap.len() {
            core.capture(&cap[cut..], 4, 0);
        }
        core.publish_timing(PERIOD as u32, 0);
        core.publish_capture_timing(0, 0);
        audit::set_in_rt(false);
        played.extend_from_slice(&out);
        captured.extend_from_slice(&cap);
        for (i, r) in recs.iter_mut().enumerate() {
            // The last one stops reading for a while: it must overrun, alone.
            if i == plan.len() - 1 && (1000..1100).contains(&p) {
                continue;
            }
            r.read_all(i < 4);
            for rec in r.records() {
                if let Record::Xrun { .. } = rec {
                    r.xruns += 1;
                    r.start();
                }
            }
        }
    }
    assert_eq!(audit::thread_rt_allocations() - before, 0, "the cycle allocated");
    for (i, r) in recs.iter().enumerate().take(4) {
        let want = if i < 2 { &played } else { &captured };
        assert_eq!(r.xruns, 0, "recorder {i} overran");
        assert!(r.got == *want, "recorder {i}: {} bytes, want {} bit-exact", r.got.len(), want.len());
    }
    assert!(recs[4].xruns == 0 && recs[5].xruns == 0, "converted recorders overran");
    assert!(recs[6].xruns >= 1, "the recorder that stopped reading did not overrun");
    assert_eq!(counters.capture_overruns.load(Ordering::Relaxed), u64::from(recs[6].xruns));
    assert_eq!(counters.captured_frames.load(Ordering::Relaxed), (periods * PERIOD) as u64);
    assert_eq!(counters.monitor_frames.load(Ordering::Relaxed), (periods * PERIOD) as u64);
    // 44.1 kHz out of 48 kHz: the converted monitor got the right number of frames (within
    // what waits in the resampler).
    let want = (periods * PERIOD) as f64 * 44_100.0 / 48_000.0;
    assert!((recs[4].read as f64 - want).abs() < 2.0 * PERIOD as f64, "{} vs {want}", recs[4].read);
}

/// Volume and mute changes (per stream, master, capture) and peak metering while streams play,
/// start, stop, drain and underrun: the cycle never allocates; a muted master gives exact
/// silence one ramp after the change; the meters see the streams and go quiet with them.
#[test]
fn volume_mute_and_metering_do_not_allocate() {
    let mut rng = Rng(0x7777_1234_abcd_0001);
    let counters = Arc::new(Counters::default());
    let dctl = Arc::new(DeviceCtl::new(CHANNELS, 48000));
    let mut core = MixCore::new(SampleFormat::S16Le, Arc::clone(&dctl), PERIOD, Arc::clone(&counters));
    let mut clients = Vec::new();
    let mut ctls = Vec::new();
    for id in 1..=3u32 {
        let (c, s) = make_stream(id, [1024, 600, 4096][id as usize - 1], &mut rng);
        ctls.push(Arc::clone(s.ctl()));
        core.add(s).unwrap();
        clients.push(c);
    }
    // Recorders: a bit-exact capture stream, a converted one and a monitor, under capture
    // volume and mute changes.
    let dev = device(SampleFormat::S16Le);
    let conv = StreamSpec { format: SampleFormat::S32Le, rate: 96_000, ..s16_stereo() };
    let mut recs = Vec::new();
    for (i, (dir, spec)) in
        [(Direction::Capture, s16_stereo()), (Direction::Capture, conv), (Direction::Monitor, s16_stereo())]
            .into_iter()
            .enumerate()
    {
        let (r, s) = make_recorder(20 + i as u32, dir, 2048, &spec, &dev);
        ctls.push(Arc::clone(s.ctl()));
        core.add(s).unwrap();
        recs.push(r);
    }
    let mut cap = vec![0u8; PERIOD * 4];
    let fb = (2 * CHANNELS) as usize;
    let mut out = vec![0u8; PERIOD * fb];
    let allocs_before = audit::thread_rt_allocations();
    let (mut saw_peak, mut saw_stream_peak, mut silent_periods) = (false, false, 0);
    let mut muted_for = 0;
    for p in 0..4000usize {
        for c in &mut clients {
            c.step(&mut rng);
            if c.state == CState::Starving && rng.chance(8) {
                c.state = CState::Running;
            }
        }
        // The control thread's side: volume and mute changes at random moments.
        for b in cap.iter_mut() {
            *b = rng.next() as u8;
        }
        if rng.chance(35) {
            dctl.capture.set_muted(!dctl.capture.muted());
        }
        if rng.chance(20) {
            let s = &ctls[(rng.next() % ctls.len() as u64) as usize];
            s.volume.set_volume((rng.next() % 101) as f32 / 100.0);
        }
        if rng.chance(40) {
            let s = &ctls[(rng.next() % 3) as usize];
            s.volume.set_muted(!s.volume.muted());
        }
        if rng.chance(30) {
            dctl.master.set_volume((rng.next() % 101) as f32 / 100.0);
        }
        if rng.chance(25) {
            dctl.master.set_muted(!dctl.master.muted());
            muted_for = 0;
        }
        if rng.chance(50) {
            dctl.capture.set_volume((rng.next() % 101) as f32 / 100.0);
        }
        audit::set_in_rt(true);
        let _ = core.prepare_sleep();
        core.after_wake(|_| 0);
        core.process_records();
        let n = core.mix(&mut out, p as u64);
        core.capture(&cap, 4, p as u64);
        core.publish_timing(512, p as u64);
        core.publish_capture_timing(0, p as u64);
        let violated = core.take_violated();
        audit::set_in_rt(false);
        assert!(violated.is_none());
        for r in &mut recs {
            r.read_all(false);
            if r.records().iter().any(|rec| matches!(rec, Record::Xrun { .. })) {
                r.start();
            }
        }
        assert_eq!(n, PERIOD);
        if dctl.master.muted() {
            muted_for += 1;
            // The ramp (240 frames) fits in the first muted period: exact silence after it.
            if muted_for >= 2 {
                assert!(out.iter().all(|&b| b == 0), "period {p}: sound with the master muted");
                silent_periods += 1;
            }
        }
        saw_peak |= dctl.peaks[0].get() > 0.0;
        saw_stream_peak |= ctls.iter().any(|c| c.peak.get() > 0.0);
        for c in &ctls {
            assert!(c.peak.get() <= 1.0, "a stream's peak above full scale: {}", c.peak.get());
        }
    }
    let allocs = audit::thread_rt_allocations() - allocs_before;
    assert_eq!(allocs, 0, "the mix cycle allocated {allocs} times with volume changes and metering");
    assert!(saw_peak && saw_stream_peak, "the meters never saw the streams");
    assert!(silent_periods > 100, "the scenario must mute the master for a while ({silent_periods})");
    while core.pop_any().is_some() {}
}

/// A vanished device (`set_device_waiting(true)`, what the mix thread does when it hands the
/// device to the device manager) tells every stream through its timing flags, streams added
/// meanwhile get the flag too, and the device's return clears it everywhere, all without
/// allocating; a stream's timing snapshot is untouched by the flag.
#[test]
fn device_waiting_flag_reaches_every_stream_without_allocating() {
    let mut rng = Rng(7);
    let counters = Arc::new(Counters::default());
    let mut core = MixCore::new(SampleFormat::S16Le, device_ctl(), PERIOD, Arc::clone(&counters));
    let (a, sa) = make_stream(1, 1024, &mut rng);
    let (b, sb) = make_stream(2, 1024, &mut rng);
    core.add(sa).unwrap();
    core.publish_timing(512, 1);
    let timing = a.shm.read_timing();
    let before = audit::thread_rt_allocations();
    audit::set_in_rt(true);
    core.set_device_waiting(true);
    let added = core.add(sb).is_ok();
    let waiting_both = a.shm.device_waiting() && b.shm.device_waiting();
    core.set_device_waiting(false);
    let waiting_any = a.shm.device_waiting() || b.shm.device_waiting();
    audit::set_in_rt(false);
    assert_eq!(audit::thread_rt_allocations() - before, 0, "the device-waiting flag allocated");
    assert!(added && waiting_both && !waiting_any, "added {added}, waiting {waiting_both}, after {waiting_any}");
    assert_eq!(a.shm.read_timing(), timing, "the flag changed the timing snapshot");
    while core.pop_any().is_some() {}
}

/// Plays `streams` (spec, ring buffer) for `iters` runs of `PERIOD` frames into a simulated
/// card, the clients keeping their rings full; with `rewinds`, every few runs the last frames
/// (up to what the streams' histories allow) are taken back and mixed again. Returns the card's
/// frames and the frames taken back. Checks that the mix cycle never allocates.
fn rewind_run(rewinds: bool, streams: &[(StreamSpec, u32)], iters: usize) -> (Vec<u8>, u64) {
    let mut dev = device(SampleFormat::S16Le);
    dev.history_frames = 2048;
    let counters = Arc::new(Counters::default());
    let mut core = MixCore::new(SampleFormat::S16Le, device_ctl(), PERIOD, Arc::clone(&counters));
    let mut clients = Vec::new();
    for (i, (spec, buffer)) in streams.iter().enumerate() {
        // Each client's data comes from its own generator: the same frames in both runs.
        let mut data = Rng(0x5eed_0000 + i as u64);
        let (c, s) = make_stream_as(i as u32 + 1, *buffer, &mut data, spec, &dev);
        core.add(s).unwrap();
        clients.push((c, data));
    }
    let fb = (2 * CHANNELS) as usize;
    let mut card = vec![0u8; (iters + 1) * PERIOD * fb];
    let mut pos = 0usize;
    let mut decide = Rng(0xdec1_de00);
    let mut taken_back = 0u64;
    let allocs_before = audit::thread_rt_allocations();
    for p in 0..iters {
        for (c, data) in &mut clients {
            // A client that only keeps its ring full (no stop, pause or drain here).
            c.client_wake.drain();
            while let Some(r) = c.d2c.pop().unwrap() {
                assert!(!matches!(r.unwrap(), Record::Xrun { .. }), "the client kept its ring full");
            }
            let room = c.buffer - c.fill();
            c.write(room, data);
        }
        audit::set_in_rt(true);
        let _ = core.prepare_sleep();
        core.after_wake(|_| 0);
        core.process_records();
        let n = core.mix(&mut card[pos * fb..(pos + PERIOD) * fb], p as u64);
        audit::set_in_rt(false);
        pos += n;
        if rewinds && decide.chance(3) {
            let want = decide.next() % 700;
            audit::set_in_rt(true);
            let r = core.rewind_limit(want.min(pos as u64));
            core.rewound(r);
            audit::set_in_rt(false);
            assert!(r <= want);
            pos -= r as usize;
            taken_back += r;
        }
    }
    let allocs = audit::thread_rt_allocations() - allocs_before;
    assert_eq!(allocs, 0, "the mix cycle or a rewind allocated {allocs} times");
    while core.pop_any().is_some() {}
    card.truncate(pos * fb);
    (card, taken_back)
}

/// After rewinds the card holds exactly what it holds without them: every frame taken back is
/// played again from the stream's history, none lost, none twice; for a stream copied as is
/// (the fast path), a converted one and a resampled one mixed together.
#[test]
fn rewinds_play_again_what_was_taken_back_without_allocating() {
    let mono_44k = StreamSpec {
        format: SampleFormat::S16Le,
        rate: 44_100,
        chmap: ChannelMap::standard(1),
        quality: ResampleQuality::Default,
    };
    let f32_stereo = StreamSpec { format: SampleFormat::F32Le, ..s16_stereo() };
    for streams in [vec![(s16_stereo(), 1024)], vec![(s16_stereo(), 4096), (mono_44k, 2048), (f32_stereo, 777)]] {
        let (plain, _) = rewind_run(false, &streams, 400);
        let (rewound, back) = rewind_run(true, &streams, 400);
        assert!(back > 10_000, "the run must take back many frames ({back})");
        let n = rewound.len().min(plain.len());
        assert!(n >= 200 * PERIOD * 4, "{n} bytes compared");
        if let Some(i) = (0..n).find(|&i| rewound[i] != plain[i]) {
            let f = i / 4 * 4;
            panic!(
                "{} streams: the card differs at frame {} after {back} frames taken back: {:?} vs {:?}",
                streams.len(),
                i / 4,
                &rewound[f..f + 16],
                &plain[f..f + 16]
            );
        }
        eprintln!(
            "{} streams: {} frames identical with {back} frames taken back and mixed again",
            streams.len(),
            n / 4
        );
    }
}

/// Writes `frames` frames that tell their index: the frame written k-th (since the start) holds
/// k + 1 as a 32-bit number, low half on the left.
fn write_counting(c: &mut Client, frames: u32) {
    for _ in 0..frames {
        let v = (c.written + 1) as u32;
        let mut frame = [0u8; 4];
        frame[..2].copy_from_slice(&(v as u16).to_le_bytes());
        frame[2..].copy_from_slice(&((v >> 16) as u16).to_le_bytes());
        c.audio.write((c.written % u64::from(c.buffer)) as u32, &frame);
        c.written += 1;
    }
    c.audio.publish(c.written as u32);
}

/// A stream moved back and forth between two devices (two mixing cores, as two mix threads
/// hold them), with rewinds on both and pauses: every frame the daemon took from the ring is on
/// exactly one card, once, and each card has them in order: nothing lost, nothing twice. A
/// playing stream leaves once it has played again what a rewind took back; a paused one takes
/// what its pause took back along to the new device; what a stream gave the old device is never
/// taken back afterwards. No allocation on the mix side.
#[test]
fn a_stream_moved_between_devices_loses_and_repeats_nothing() {
    let mut dev = device(SampleFormat::S16Le);
    dev.history_frames = 2048;
    let fb = (2 * CHANNELS) as usize;
    let iters = 600;
    let mut cores: Vec<MixCore> = (0..2)
        .map(|_| MixCore::new(SampleFormat::S16Le, device_ctl(), PERIOD, Arc::new(Counters::default())))
        .collect();
    let mut cards = vec![vec![0u8; 2 * (iters + 8) * PERIOD * fb]; 2];
    let mut pos = [0usize; 2];
    // The stream starts with a few random frames (the rig's start), then counts.
    let (mut c, s) = make_stream_as(1, 1024, &mut Rng(0x0dd_ba11), &s16_stereo(), &dev);
    cores[0].add(s).unwrap();
    let mut on = 0usize;
    let mut decide = Rng(0x0fee_d000);
    let (mut moves, mut taken_back, mut waited) = (0, 0u64, 0);
    let (mut paused, mut pauses) = (false, 0);
    let mix_into = |core: &mut MixCore, card: &mut [u8], pos: &mut usize, n: usize, t: u64| {
        *pos += core.mix(&mut card[*pos * fb..(*pos + n) * fb], t);
    };
    let allocs_before = audit::thread_rt_allocations();
    let mut written = Vec::new();
    for p in 0..iters {
        c.client_wake.drain();
        while let Some(r) = c.d2c.pop().unwrap() {
            assert!(!matches!(r.unwrap(), Record::Xrun { .. }), "the client kept its ring full");
        }
        // Now and then the player pauses (the pause takes its frames back from the device,
        // as a rewind would) and resumes; a paused stream may move too.
        if decide.chance(9) {
            paused = !paused;
            if paused {
                c.send(|seq| Record::Pause { seq });
                pauses += 1;
            } else {
                c.send(|seq| Record::Resume { seq });
            }
        }
        // What the ring holds before the daemon takes it (the oracle's copy).
        let room = c.buffer - c.fill();
        write_counting(&mut c, room);
        let mut frame = [0u8; 4];
        for f in written.len() as u64 / fb as u64..c.written {
            c.observer.read((f % u64::from(c.buffer)) as u32, &mut frame);
            written.extend_from_slice(&frame);
        }
        audit::set_in_rt(true);
        for (i, core) in cores.iter_mut().enumerate() {
            let _ = core.prepare_sleep();
            core.after_wake(|_| 0);
            core.process_records();
            mix_into(core, &mut cards[i], &mut pos[i], PERIOD, p as u64);
        }
        for (i, core) in cores.iter_mut().enumerate() {
            if decide.chance(3) {
                let want = decide.next() % 700;
                let r = core.rewind_limit(want.min(pos[i] as u64));
                core.rewound(r);
                pos[i] -= r as usize;
                taken_back += r;
            }
        }
        audit::set_in_rt(false);
        if decide.chance(5) {
            let to = 1 - on;
            audit::set_in_rt(true);
            cores[on].mark_leaving(1);
            let mut s = cores[on].take_left(false);
            let mut extra = 0;
            if s.is_none() {
                // What the last rewind took back is played here first (the mix thread's next
                // fill goes that far), then it leaves.
                extra = cores[on].leaving_replay() as usize;
                let mut left = extra;
                while left > 0 {
                    let n = left.min(PERIOD);
                    mix_into(&mut cores[on], &mut cards[on], &mut pos[on], n, p as u64);
                    left -= n;
                }
                waited += 1;
                s = cores[on].take_left(false);
            }
            audit::set_in_rt(false);
            let mut s = s.unwrap_or_else(|| panic!("the stream did not leave after replaying {extra} frames"));
            // The control thread's half: a conversion built for the new device.
            let pipe = Pipeline::new(&s16_stereo(), &dev).unwrap();
            s.move_to(shmix_daemon::mix::stream::Kind::Play(Box::new(pipe))).unwrap();
            cores[to].add(s).unwrap();
            on = to;
            moves += 1;
        }
    }
    let allocs = audit::thread_rt_allocations() - allocs_before;
    assert_eq!(allocs, 0, "the mix cycle, a rewind or a move allocated {allocs} times");
    assert!(moves > 50 && taken_back > 10_000, "{moves} moves, {taken_back} frames taken back");
    assert!(waited > 10, "{waited} moves waited for a replay");
    assert!(pauses > 20, "{pauses} pauses");
    // Taken, less what the last rewind took back and the stream has not played again yet.
    let pending = cores[on].streams()[0].pipeline().map_or(0, Pipeline::replay_pending) as usize;
    let consumed = c.read_count() as usize - pending;
    for core in &mut cores {
        while core.pop_any().is_some() {}
    }
    // Every frame written is told apart by its bytes (the random ones at the start included).
    let index: std::collections::HashMap<&[u8], usize> = written.chunks(fb).enumerate().map(|(i, f)| (f, i)).collect();
    assert_eq!(index.len(), written.len() / fb, "the frames written are all different");
    let mut seen = vec![0u32; consumed];
    for (d, card) in cards.iter().enumerate() {
        let mut last = None;
        for (at, f) in card[..pos[d] * fb].chunks(fb).enumerate() {
            if f.iter().all(|&b| b == 0) {
                continue;
            }
            let k = *index.get(f).unwrap_or_else(|| panic!("card {d} frame {at}: not a frame of the stream"));
            assert!(last.is_none_or(|l| k > l), "card {d} frame {at}: stream frame {k} after {last:?}");
            assert!(k < consumed, "card {d}: frame {k} was taken back ({consumed} are played)");
            seen[k] += 1;
            last = Some(k);
        }
    }
    if let Some(k) = seen.iter().position(|&n| n != 1) {
        let run = seen[k..].iter().take_while(|&&n| n == seen[k]).count();
        panic!(
            "stream frames {k}..{} are on the cards {} times, after {moves} moves ({consumed} taken)",
            k + run,
            seen[k]
        );
    }
    eprintln!(
        "{moves} moves ({waited} after a replay), {taken_back} frames taken back: {consumed} frames heard once each, in order"
    );
}

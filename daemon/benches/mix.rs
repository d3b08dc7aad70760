//! Convert-and-mix cost per output frame for 1, 8 and 32 streams, each group beside a plain
//! memcpy of the same stream bytes (the physical floor), throughput in device frames so the ratio
//! reads straight off; and the resampler's cost per stream-second, 44100 -> 48000 Hz stereo, at
//! each quality. Run: `cargo bench -p shmix-daemon -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::Resampler;
use shmix_daemon::dsp::{self, DeviceSpec, Pipeline, StreamSpec};
use shmix_daemon::mix::ctl::DeviceCtl;
use shmix_daemon::mix::{Counters, MixCore, Stream};
use shmix_shared::chmap::ChannelMap;
use shmix_shared::layout::{Layout, DEFAULT_MSG_RECORDS};
use shmix_shared::shm::{AudioHalf, ClientHalves, StreamShm};
use shmix_shared::ResampleQuality;
use shmix_shared::{AudioParams, Direction, Record, SampleFormat, WakeFd};

const PERIOD: usize = 1024;
const RATE: u32 = 48_000;

/// The daemon's end of a wake channel (the client's end is dropped: the bench never polls).
fn wake() -> WakeFd {
    WakeFd::pair().unwrap().0
}

fn device(format: SampleFormat) -> DeviceSpec {
    DeviceSpec {
        params: AudioParams {
            format,
            rate: RATE,
            channels: 2,
            period_frames: PERIOD as u32,
            buffer_frames: 4 * PERIOD as u32,
        },
        chmap: ChannelMap::standard(2),
        quality: dsp::DEFAULT_QUALITY,
        run_frames: PERIOD as u32,
        history_frames: 0,
    }
}

/// A mix core with `n` running streams of `spec`, whose rings always hold enough: the client's
/// write position is pushed ahead before every period (the ring holds a sine).
struct Rig {
    core: MixCore,
    clients: Vec<ClientHalves>,
    written: Vec<u32>,
    out: Vec<u8>,
    src: Vec<u8>,
    dst: Vec<u8>,
    stream_frames: usize,
}

impl Rig {
    fn new(n: usize, spec: &StreamSpec, dev_format: SampleFormat) -> Self {
        let dev = device(dev_format);
        let mut core =
            MixCore::new(dev_format, Arc::new(DeviceCtl::new(2, RATE)), PERIOD, Arc::new(Counters::default()));
        let fb = spec.format.sample_bytes() * spec.chmap.channels();
        let stream_frames = (PERIOD as u64 * u64::from(spec.rate)).div_ceil(u64::from(RATE)) as usize;
        let buffer = 8 * PERIOD as u32;
        let mut clients = Vec::new();
        for id in 0..n {
            let layout = Layout::new(fb, buffer, DEFAULT_MSG_RECORDS).unwrap();
            let (memfd, client) = StreamShm::create(layout, "bench").unwrap();
            let mut client = client.into_client(Direction::Playback);
            let daemon = StreamShm::map_peer(&memfd, layout).unwrap();
            let sine: Vec<f32> =
                (0..buffer as usize * spec.chmap.channels() as usize).map(|i| 0.3 * (i as f32 * 0.01).sin()).collect();
            let mut bytes = vec![0u8; buffer as usize * fb as usize];
            shmix_daemon::dsp::convert::encoder(spec.format)(&sine, &mut bytes);
            if let AudioHalf::Writer(audio) = &mut client.audio {
                audio.write(0, &bytes);
            }
            client.c2d.push(Record::Start { seq: 1 }).unwrap();
            let pipe = Pipeline::new(spec, &dev).unwrap();
            core.add(Box::new(Stream::new(id as u32 + 1, daemon, wake(), wake(), pipe))).unwrap();
            clients.push(client);
        }
        core.process_records();
        let bytes = n * stream_frames * fb as usize;
        Self {
            out: vec![0; PERIOD * core.frame_bytes()],
            core,
            written: vec![0; clients.len()],
            clients,
            src: vec![1; bytes],
            dst: vec![0; bytes],
            stream_frames,
        }
    }

    fn period(&mut self) {
        for (c, w) in self.clients.iter_mut().zip(&mut self.written) {
            // Keep the ring full: the daemon consumes about `stream_frames` per period.
            let read = c.shm.audio_read().pos.load(Ordering::Acquire);
            *w = read.wrapping_add(4 * PERIOD as u32);
            if let AudioHalf::Writer(audio) = &mut c.audio {
                audio.publish(*w);
            }
        }
        let n = self.core.mix(&mut self.out, 0);
        debug_assert_eq!(n, PERIOD);
        black_box(&self.out);
    }

    fn memcpy(&mut self) {
        self.dst.copy_from_slice(black_box(&self.src));
        black_box(&self.dst);
    }
}

fn spec(format: SampleFormat, rate: u32, quality: ResampleQuality) -> StreamSpec {
    StreamSpec { format, rate, chmap: ChannelMap::standard(2), quality }
}

fn mix_groups(c: &mut Criterion) {
    let cases = [
        ("s16_48k_into_s32", spec(SampleFormat::S16Le, 48_000, ResampleQuality::Default)),
        ("s16_44k1_resampled_into_s32", spec(SampleFormat::S16Le, 44_100, ResampleQuality::Default)),
    ];
    for (name, spec) in cases {
        let mut g = c.benchmark_group(format!("mix_{name}"));
        g.throughput(Throughput::Elements(PERIOD as u64));
        for n in [1usize, 8, 32] {
            let mut rig = Rig::new(n, &spec, SampleFormat::S32Le);
            assert!(rig.stream_frames > 0);
            g.bench_function(BenchmarkId::new("memcpy", n), |b| b.iter(|| rig.memcpy()));
            g.bench_function(BenchmarkId::new("mix", n), |b| b.iter(|| rig.period()));
        }
        if name == "s16_48k_into_s32" {
            // The fast path: one S32 stereo stream into the S32 device is a plain copy.
            let mut rig = Rig::new(1, &StreamSpec { format: SampleFormat::S32Le, ..spec }, SampleFormat::S32Le);
            g.bench_function(BenchmarkId::new("fastpath_s32", 1), |b| b.iter(|| rig.period()));
        }
        g.finish();
    }
}

fn resample_cost(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample_44k1_to_48k_stereo_per_stream_second");
    g.throughput(Throughput::Elements(44_100));
    let input: Vec<f32> = (0..2 * 44_100 + 8192).map(|i| 0.5 * (i as f32 * 0.0712).sin()).collect();
    for q in [ResampleQuality::Fast, ResampleQuality::Medium, ResampleQuality::High] {
        let mut rs = dsp::build_resampler(q, 44_100, 48_000, PERIOD, 2).unwrap();
        let mut out = vec![0.0f32; PERIOD * 2];
        g.bench_function(q.name(), |b| {
            b.iter(|| {
                // One second of input, in device periods.
                let mut pos = 0;
                while pos < 44_100 {
                    let k = rs.input_frames_next();
                    let i = InterleavedSlice::new(&input[2 * pos..2 * (pos + k)], 2, k).unwrap();
                    let mut o = InterleavedSlice::new_mut(&mut out[..], 2, PERIOD).unwrap();
                    rs.process_into_buffer(&i, &mut o, None).unwrap();
                    pos += k;
                }
                black_box(&out);
            });
        });
    }
    g.finish();
}

criterion_group!(benches, mix_groups, resample_cost);
criterion_main!(benches);

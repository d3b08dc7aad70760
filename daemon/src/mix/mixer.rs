//! The mixing core: the stream slots and one device cycle mixed into a byte slice (the device's
//! mmap area in the daemon, a plain buffer in tests): each active stream's
//! [`crate::dsp::pipeline::Pipeline`] adds into an f32 bus, which is then encoded into the
//! device's format, saturating; one stream already in the device's format, rate and layout at
//! unity gain is copied straight from its ring instead (the fast path). Recorders get the
//! device's capture (or, for monitors, the mix) through their [`crate::dsp::record::RecordPipe`].
//! No ALSA here, so it runs in tests without a card.
//! Runs on the mix thread (built on the control thread). RT: yes — no allocation, no locks, no
//! logging; the only syscalls are wake signals to sleeping clients (`shmix_shared::wakefd`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use shmix_shared::shm::AudioHalf;
use shmix_shared::wake;
use shmix_shared::{cursor, Direction, Record, SampleFormat};

use super::counters::Counters;
use super::ctl::DeviceCtl;
use super::schedule::Ask;
use super::stream::{Kind, State, Stream};
use crate::dsp::convert::{self, DecodeFn, EncodeFn};
use crate::dsp::gain::Gain;
use crate::dsp::meter::channel_peaks;
use crate::dsp::pipeline::Taken;

mod queue;

/// Most streams the mix thread carries at once.
pub const MAX_STREAMS: usize = 64;

/// Longest a muted stream waits when no device period comes (idle, suspended or vanished
/// device): the mix thread's wait ends by then and unmutes it.
pub const MUTE_MAX_MS: i32 = 5;

/// The mix state: stream slots and preallocated buffers for one device.
#[derive(Debug)]
pub struct MixCore {
    format: SampleFormat,
    encode: EncodeFn,
    channels: u32,
    frame_bytes: usize,
    max_frames: usize,
    // Boxed: streams move through the queues as one pointer, never copied on the RT thread.
    #[allow(clippy::vec_box)]
    streams: Vec<Box<Stream>>,
    /// Frames handed to the device since it was opened (mixed and silence prefill).
    device_pos: u64,
    /// The f32 mix bus, device channels interleaved.
    bus: Vec<f32>,
    counters: Arc<Counters>,
    /// Device format -> f32 (metering the fast path's bytes).
    decode: DecodeFn,
    /// Master volume and mute, levels (shared with the control thread; atomics only).
    dctl: Arc<DeviceCtl>,
    /// The master gain (ramped), applied to the bus.
    master: Gain,
    /// Peak per device channel in the current metering window.
    meter: [f32; shmix_shared::msg::MAX_CHANNELS as usize],
    /// Frames in the current metering window.
    meter_frames: u32,
    /// The playback device is gone and the streams wait for it (told to each stream's timing
    /// flags, so its plugin waits longer in a drain).
    device_waiting: bool,
    /// What is queued on the device is out of date (see [`MixCore::take_rewind_wanted`]).
    rewind_wanted: bool,
    /// Device position before which nothing may be taken back: the end of what streams that
    /// moved to another device gave this one (they continue there after it; taken back here,
    /// it would be lost).
    keep_until: u64,
}

impl MixCore {
    /// Preallocates for cycles of at most `max_frames` frames of `format` x the device's
    /// channels, sharing `dctl` (master and capture volume, device levels) with the control
    /// thread.
    #[must_use]
    pub fn new(format: SampleFormat, dctl: Arc<DeviceCtl>, max_frames: usize, counters: Arc<Counters>) -> Self {
        let channels = dctl.channels;
        let mut master = Gain::new(dctl.ramp_frames as usize);
        master.jump(dctl.master.gain());
        let frame_bytes = (format.sample_bytes() * channels) as usize;
        Self {
            format,
            encode: convert::encoder(format),
            channels,
            frame_bytes,
            max_frames,
            streams: Vec::with_capacity(MAX_STREAMS),
            device_pos: 0,
            bus: vec![0.0; max_frames * channels as usize],
            counters,
            decode: convert::decoder(format),
            dctl,
            master,
            meter: [0.0; shmix_shared::msg::MAX_CHANNELS as usize],
            meter_frames: 0,
            device_waiting: false,
            rewind_wanted: false,
            keep_until: 0,
        }
    }

    /// The device state shared with the control thread.
    #[must_use]
    pub fn device_ctl(&self) -> &Arc<DeviceCtl> {
        &self.dctl
    }

    /// Picks up volume and mute changes from the control thread (ramped from here). RT: yes
    /// (atomic loads only).
    fn apply_controls(&mut self) {
        let master = self.dctl.master.gain();
        if master != self.master.target() {
            // What is queued on the device was mixed at the old volume: mix it again.
            self.rewind_wanted = true;
        }
        self.master.set(master);
        let capture = self.dctl.capture.gain();
        for s in &mut self.streams {
            // A stream that is not playing or recording takes the new gain at once (nothing to
            // click); one that is ramps to it.
            let dir = s.direction();
            let live = s.active() || s.recording(dir);
            let g = match dir {
                Direction::Capture => s.ctl.volume.gain() * capture,
                _ => s.ctl.volume.gain(),
            };
            if let Kind::Play(p) = &s.kind {
                if p.gain() != g && (live || s.state == State::DrainingDevice) {
                    self.rewind_wanted = true;
                }
            }
            s.gain_to(g, live);
        }
    }

    /// Folds one run of the bus (`samples` interleaved device samples, final levels) into the
    /// meter and publishes the window when it is full. RT: yes.
    fn meter_run(&mut self, samples: usize, frames: usize) {
        let ch = (self.channels as usize).min(self.meter.len());
        if samples > 0 && ch == self.channels as usize {
            channel_peaks(&self.bus[..samples], &mut self.meter[..ch]);
        }
        self.meter_frames += frames as u32;
        if self.meter_frames >= self.dctl.window_frames {
            self.meter_frames = 0;
            for (m, l) in self.meter[..ch].iter_mut().zip(&self.dctl.peaks) {
                l.set(std::mem::take(m));
            }
            for s in &mut self.streams {
                let p = s.take_peak();
                s.ctl.peak.set(p);
            }
        }
    }

    /// The counters this core bumps.
    #[must_use]
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Most frames one [`MixCore::mix`] call writes.
    #[must_use]
    pub fn max_frames(&self) -> usize {
        self.max_frames
    }

    /// Bytes per device frame.
    #[must_use]
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    /// Streams attached.
    #[must_use]
    pub fn streams(&self) -> &[Box<Stream>] {
        &self.streams
    }

    /// Attaches a stream; gives it back when all slots are taken. RT: no allocation (the slot
    /// vector has its capacity from `new`).
    ///
    /// # Errors
    /// The stream itself when [`MAX_STREAMS`] are attached or its pipeline was built for
    /// another device.
    pub fn add(&mut self, mut s: Box<Stream>) -> Result<(), Box<Stream>> {
        // A playback pipeline must have been built for this device's layout and period; a
        // recorder's conversion was built for the device it records (capture may differ).
        let fits = s
            .pipeline()
            .is_none_or(|p| p.device_channels() == self.channels as usize && p.max_frames() >= self.max_frames);
        if self.streams.len() >= MAX_STREAMS || !fits {
            return Err(s);
        }
        s.timing.set_device_waiting(self.device_waiting);
        // A stream that arrives playing (moved here) is heard as soon as the queue allows.
        if s.active() {
            self.rewind_wanted = true;
        }
        self.streams.push(s);
        Ok(())
    }

    /// Detaches the stream `id`, if attached.
    pub fn remove(&mut self, id: u32) -> Option<Box<Stream>> {
        let i = self.streams.iter().position(|s| s.id == id)?;
        Some(self.streams.swap_remove(i))
    }

    /// Detaches one stream that violated the protocol, if any.
    pub fn take_violated(&mut self) -> Option<Box<Stream>> {
        let i = self.streams.iter().position(|s| s.violation.is_some())?;
        Some(self.streams.swap_remove(i))
    }

    /// Detaches any stream (shutdown).
    pub fn pop_any(&mut self) -> Option<Box<Stream>> {
        self.streams.pop()
    }

    /// Before the wait: marks every stream's c2d reader as sleeping, fences and rechecks. Returns
    /// true when some stream already has a record queued (do not block in poll). A stream found
    /// with a record counts as having woken the mix thread, so it is muted after its records are
    /// handled: a client that trickles records without ever signalling gets the same one extra
    /// cycle per period as one that signals, instead of keeping the thread from blocking.
    pub fn prepare_sleep(&mut self) -> bool {
        let mut ready = false;
        // Muted streams are not rechecked (their records wait for the next period).
        for s in self.streams.iter_mut().filter(|s| s.violation.is_none() && !s.muted) {
            let flag = &s.c2d.read_cursor().sleeping;
            let ours = s.c2d.pos();
            let d = wake::prepare_sleep(flag, || {
                // Pairs with the client's Release store in push_record. Compared with our private
                // read position: the copy in the header is client-writable (a client that
                // rewrote it would otherwise keep us from ever sleeping).
                s.c2d.write_cursor().pos.load(Ordering::Acquire) != ours
            });
            if matches!(d, wake::SleepDecision::Ready { .. }) {
                s.woke = true;
                ready = true;
            }
        }
        ready
    }

    /// After the wait: clears the sleeping flags (we are awake: clients need not signal) and
    /// drains the daemon_wake descriptors that fired (`revents(i)`: poll's answer for stream
    /// index `i`). One that hung up is not polled again.
    pub fn after_wake(&mut self, revents: impl Fn(usize) -> i16) {
        for (i, s) in self.streams.iter_mut().enumerate() {
            s.c2d.read_cursor().sleeping.store(0, Ordering::Relaxed);
            let r = revents(i);
            if r & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                s.wake_closed = true;
            }
            if r != 0 {
                s.daemon_wake.drain();
                s.woke = true;
            }
        }
    }

    /// The smallest latency a stream asks for, in device frames, whatever its state: one that
    /// is set up but stopped, paused or between two runs is about to play, and must find the
    /// queue short when it does; `None` without streams. RT: yes.
    #[must_use]
    pub fn asked(&self) -> Option<Ask> {
        self.streams.iter().filter(|s| s.violation.is_none()).map(|s| s.ask).reduce(Ask::min)
    }

    /// Device frames every running playback stream can give now (its ring's fill at the
    /// device's rate, rounded down; `None`: no stream plays). A fill takes no more than this
    /// unless the device would otherwise run low: a stream's client refills its ring as it is
    /// consumed, and taking more than it holds would be an underrun of our making. RT: yes.
    #[must_use]
    pub fn supply(&mut self) -> Option<u64> {
        self.streams
            .iter_mut()
            .filter(|s| s.violation.is_none() && s.state == State::Running && !s.is_recorder())
            .filter_map(|s| {
                let fill = u64::from(s.fill()?);
                let Kind::Play(pipe) = &s.kind else { return None };
                Some(pipe.to_device_frames(fill + pipe.carry_left() as u64))
            })
            .min()
    }

    /// Frames handed to the playback device since it was opened (mixed and silence).
    #[must_use]
    pub fn device_pos(&self) -> u64 {
        self.device_pos
    }

    /// Device frames until the earliest draining stream's last frame is played, given that
    /// `device_queued` are queued (`None`: no stream waits for that). RT: yes.
    #[must_use]
    pub fn drain_wait_frames(&self, device_queued: u64) -> Option<u64> {
        let played = self.device_pos.saturating_sub(device_queued);
        self.streams
            .iter()
            .filter(|s| s.violation.is_none() && s.state == State::DrainingDevice)
            .map(|s| s.drain_until.saturating_sub(played))
            .min()
    }

    /// True when some stream is muted (the wait must then end within [`MUTE_MAX_MS`]).
    #[must_use]
    pub fn any_muted(&self) -> bool {
        self.streams.iter().any(|s| s.muted)
    }

    /// Ends every stream's mute (a new device period, or [`MUTE_MAX_MS`] passed without one:
    /// an idle, suspended or vanished device must not hold a client's records).
    pub fn unmute_all(&mut self) {
        for s in &mut self.streams {
            s.muted = false;
        }
    }

    /// Handles every stream's queued control records (after picking up volume changes, so a
    /// stream that starts now starts at its gain).
    pub fn process_records(&mut self) {
        self.apply_controls();
        for s in &mut self.streams {
            let before = s.state;
            s.process_records(&self.counters);
            // A start, resume, pause or drop changes what the device should be playing.
            if s.state != before && !s.is_recorder() && !matches!(s.state, State::Draining | State::DrainingDevice) {
                self.rewind_wanted = true;
            }
        }
    }

    /// Mixes one contiguous run of `out.len() / frame_bytes` frames (at most `max_frames`) of all
    /// active streams into `out`, device format. Returns the frames written.
    pub fn mix(&mut self, out: &mut [u8], now_ns: u64) -> usize {
        // A new period: muted streams are heard again (their records are taken this cycle).
        self.unmute_all();
        let fb = self.frame_bytes;
        let frames = (out.len() / fb).min(self.max_frames);
        let out = &mut out[..frames * fb];
        self.apply_controls();
        let samples = frames * self.channels as usize;
        let mut metered = 0;
        let active = self.streams.iter().filter(|s| s.active()).count();
        let counters = &*self.counters;
        let device_pos = self.device_pos;
        let single = if active == 1 { self.streams.iter_mut().find(|s| s.active()) } else { None };
        match single {
            None if active == 0 => {
                convert::silence(self.format, out);
                self.master.advance(frames);
            }
            // Fast path: the ring's bytes are already what the device wants.
            Some(s)
                if s.pipeline()
                    .is_some_and(|p| p.is_passthrough() && p.replay_pending() == 0 && p.carry_left() == 0)
                    && self.master.is_unity() =>
            {
                let fill = s.fill().unwrap_or(0) as usize;
                let (Kind::Play(pipe), AudioHalf::Reader(audio)) = (&mut s.kind, &s.audio) else {
                    unreachable!("active streams play")
                };
                let k = fill.min(frames);
                let bytes = k * fb;
                if k > 0 {
                    let idx = cursor::ring_index(s.read_count, s.buffer_frames);
                    audio.read(idx, &mut out[..bytes]);
                    pipe.note_copied(&out[..bytes]);
                    Counters::bump(&counters.fastpath_frames, k as u64);
                }
                convert::silence(self.format, &mut out[bytes..]);
                // Metering: the device's bytes back to f32 (the bus is free on this path).
                let n = k * self.channels as usize;
                (self.decode)(&out[..bytes], &mut self.bus[..n]);
                let ch = (self.channels as usize).min(self.meter.len());
                let mut run = [0.0f32; shmix_shared::msg::MAX_CHANNELS as usize];
                if ch == self.channels as usize {
                    channel_peaks(&self.bus[..n], &mut run[..ch]);
                }
                for (m, r) in self.meter.iter_mut().zip(&run[..ch]) {
                    *m = m.max(*r);
                }
                pipe.note_peak(run[..ch].iter().fold(0.0, |a: f32, &b| a.max(b)));
                let t = Taken { consumed: k as u32, emitted: k, short: k < frames, tail_done: k == fill };
                finish(s, t, now_ns, device_pos, counters);
            }
            _ => {
                let bus = &mut self.bus[..samples];
                bus.fill(0.0);
                for s in self.streams.iter_mut().filter(|s| s.active()) {
                    let s = &mut **s;
                    let Some(fill) = s.fill() else { continue };
                    let draining = s.state == State::Draining;
                    let (Kind::Play(pipe), AudioHalf::Reader(audio)) = (&mut s.kind, &s.audio) else { continue };
                    let t = pipe.mix(audio, s.read_count, fill, frames, bus, draining);
                    finish(s, t, now_ns, device_pos, counters);
                }
                self.master.apply(bus, self.channels as usize);
                (self.encode)(bus, out);
                metered = samples;
            }
        }
        // Monitors: exactly the bytes that went to the device.
        Counters::bump(&counters.frames_mixed, frames as u64);
        self.meter_run(metered, frames);
        if self.streams.iter().any(|s| s.recording(Direction::Monitor)) {
            self.record(Direction::Monitor, out, now_ns);
            Counters::bump(&self.counters.monitor_frames, frames as u64);
        }
        self.device_pos += frames as u64;
        frames
    }

    /// Hands one run of device frames (`area`, device format, at most one device period) to every
    /// running recorder of `dir`, each converted into its own ring. RT: yes.
    fn record(&mut self, dir: Direction, area: &[u8], now_ns: u64) {
        let counters = &*self.counters;
        for s in self.streams.iter_mut().filter(|s| s.recording(dir)) {
            // Moved out and back (a pointer move): `deliver` needs the stream mutably.
            let Kind::Record(_, slot) = &mut s.kind else { continue };
            let Some(mut rec) = slot.take() else { continue };
            let bytes = rec.convert(area);
            s.deliver(bytes, now_ns, counters);
            if let Kind::Record(_, slot) = &mut s.kind {
                *slot = Some(rec);
            }
        }
    }

    /// Capture: one run of frames read from the capture device's mmap area (`area`, the capture
    /// device's format, at most one of its periods) into every running capture stream. RT: yes.
    pub fn capture(&mut self, area: &[u8], capture_frame_bytes: usize, now_ns: u64) {
        self.apply_controls();
        Counters::bump(&self.counters.captured_frames, (area.len() / capture_frame_bytes.max(1)) as u64);
        self.record(Direction::Capture, area, now_ns);
    }

    /// True when some capture stream is running (the capture device is wanted).
    #[must_use]
    pub fn wants_capture(&self) -> bool {
        self.streams.iter().any(|s| s.recording(Direction::Capture))
    }

    /// After a read from the capture device: publishes each running capture stream's timing,
    /// `device_queued` = frames the device holds that were not read yet (its delay).
    pub fn publish_capture_timing(&mut self, device_queued: u32, now_ns: u64) {
        self.publish_recorder_timing(Direction::Capture, device_queued, now_ns);
    }

    fn publish_recorder_timing(&mut self, dir: Direction, device_queued: u32, now_ns: u64) {
        for s in self.streams.iter_mut().filter(|s| s.direction() == dir && s.violation.is_none()) {
            let Kind::Record(_, Some(rec)) = &s.kind else { continue };
            let queued = rec.queued_stream_frames(u64::from(device_queued));
            let queued = u32::try_from(queued).unwrap_or(u32::MAX);
            if s.recording(dir) {
                let pos = s.pos();
                s.timing.publish(pos, queued, now_ns);
            }
            // Figures for shmixctl: the client's unread frames plus what the device holds.
            let read = s.shm.audio_read().pos.load(Ordering::Relaxed);
            let unread = (s.write_count as u32).wrapping_sub(read).min(s.buffer_frames);
            let running = s.state == State::Running;
            s.publish_figures(if running { unread.saturating_add(queued) } else { unread });
        }
    }

    /// Posts `Fatal{errno}` to every stream of `dir` (the capture device is gone).
    pub fn fatal_dir(&mut self, dir: Direction, errno: i32) {
        for s in self.streams.iter_mut().filter(|s| s.direction() == dir && s.violation.is_none()) {
            s.post(Record::Fatal { errno: errno as u32 }, &self.counters);
        }
    }

    /// After the device commit: publishes each consuming stream's timing snapshot. `device_queued`
    /// is the device's filled buffer (buffer_size - avail). `queued_frames` is in stream frames:
    /// the device's share converted to the stream's rate plus the resampler's delay.
    /// Streams whose last frame the device has now played get `Drained`.
    pub fn publish_timing(&mut self, device_queued: u32, now_ns: u64) {
        self.publish_recorder_timing(Direction::Monitor, 0, now_ns);
        for s in self.streams.iter().filter(|s| s.violation.is_none()) {
            let Kind::Play(pipe) = &s.kind else { continue };
            // Figures for shmixctl: frames written by the client and not yet heard.
            let write = s.shm.audio_write().pos.load(Ordering::Relaxed);
            let unread = write.wrapping_sub(s.read_pos()).min(s.buffer_frames);
            let queued = match s.state {
                State::Running | State::Draining => pipe.queued_stream_frames(s.read_count, u64::from(device_queued)),
                _ => 0,
            };
            s.publish_figures(unread.saturating_add(u32::try_from(queued).unwrap_or(u32::MAX)));
        }
        let played = self.device_pos.saturating_sub(u64::from(device_queued));
        for s in self.streams.iter_mut().filter(|s| s.violation.is_none()) {
            let Kind::Play(pipe) = &s.kind else { continue };
            match s.state {
                State::Running | State::Draining => {
                    let queued = pipe.queued_stream_frames(s.read_count, u64::from(device_queued));
                    // A stream that just started sits behind what the device already held: its
                    // queued frames start to play (and its delay to shrink) only after that.
                    let ts = now_ns.saturating_add(pipe.lead_ns(u64::from(device_queued)));
                    let pos = s.read_pos();
                    s.timing.publish(pos, u32::try_from(queued).unwrap_or(u32::MAX), ts);
                }
                State::DrainingDevice => {
                    let left = s.drain_until.saturating_sub(played);
                    let queued = pipe.to_stream_frames(left).min(s.read_count);
                    let pos = s.read_pos();
                    s.timing.publish(pos, u32::try_from(queued).unwrap_or(u32::MAX), now_ns);
                    if left == 0 {
                        s.finish_drain(&self.counters);
                    }
                }
                State::Stopped | State::Paused => {}
            }
        }
    }

    /// The playback device vanished (`true`) or is back: tells every stream (its timing flags).
    /// RT: yes (one store per stream).
    pub fn set_device_waiting(&mut self, waiting: bool) {
        self.device_waiting = waiting;
        for s in &mut self.streams {
            s.timing.set_device_waiting(waiting);
        }
    }

    /// The device was (re)started with `prefill_frames` of silence queued: what it held is gone
    /// (played or dropped), so pending drains complete.
    pub fn device_restarted(&mut self, prefill_frames: usize) {
        self.device_pos += prefill_frames as u64;
        self.keep_until = 0;
        for s in self.streams.iter_mut().filter(|s| s.violation.is_none() && s.state == State::DrainingDevice) {
            s.finish_drain(&self.counters);
        }
    }

    /// Posts `Fatal{errno}` to every stream and wakes it.
    pub fn fatal_all(&mut self, errno: i32) {
        for s in &mut self.streams {
            if s.violation.is_none() {
                s.post(Record::Fatal { errno: errno as u32 }, &self.counters);
            }
        }
    }
}

/// Bookkeeping after a run that took `t` from `s`: publish the read position, detect underrun /
/// end of drain, wake the client when its avail reached avail_min.
fn finish(s: &mut Stream, t: Taken, now_ns: u64, device_pos: u64, counters: &Counters) {
    if s.violation.is_some() {
        return;
    }
    s.read_count += u64::from(t.consumed);
    s.publish_read();
    if t.emitted > 0 {
        if device_pos != s.end_pos {
            // A new run, after a gap.
            s.prev_end = s.end_pos;
            s.run_start = device_pos;
        }
        s.end_pos = device_pos + t.emitted as u64;
    }
    let fill = s.fill().unwrap_or(0);
    if s.violation.is_some() {
        return;
    }
    let mut posted = false;
    if t.short && s.state == State::Running {
        s.state = State::Stopped;
        Counters::bump(&counters.stream_underruns, 1);
        s.ctl.xruns.fetch_add(1, Ordering::Relaxed);
        let pos = s.read_pos();
        s.post(Record::Xrun { pos, at_ns: now_ns }, counters);
        posted = true;
    } else if s.state == State::Draining && fill == 0 && t.tail_done {
        // Everything is in the device; `Drained` once it has played up to here.
        s.state = State::DrainingDevice;
        s.drain_until = device_pos + t.emitted as u64;
    }
    if !posted && t.consumed > 0 {
        let avail = s.buffer_frames - fill;
        let avail_min = s.shm.avail_min().value.load(Ordering::Relaxed).clamp(1, s.buffer_frames);
        if avail >= avail_min {
            s.wake_client(counters);
        }
    }
}

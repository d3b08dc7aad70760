//! One client stream on the mix thread: its mapped memory, wake sockets and conversion, the
//! control records it sends and the state machine they drive (start, stop, pause, drain), its
//! audio cursors, and the wake protocol's daemon side.
//! Runs on the mix thread (built on the control thread). RT: yes — no allocation, no locks, no
//! logging; the only syscalls are wake signals to sleeping clients (`shmix_shared::wakefd`).

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use shmix_shared::cursor;
use shmix_shared::shm::{AudioHalf, RecordReceiver, RecordSender, StreamShm, TimingWriter};
use shmix_shared::wake;
use shmix_shared::{Direction, Record, Violation, WakeFd};

use super::counters::Counters;
use super::ctl::StreamCtl;
use super::schedule::Ask;
use crate::dsp::pipeline::Pipeline;
use crate::dsp::record::RecordPipe;

/// Daemon-side state of a playback stream (PROTOCOL.md "Stream lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not consuming; the client owns both audio cursors.
    Stopped,
    /// Consuming one device cycle at a time.
    Running,
    /// Not consuming, queued audio kept.
    Paused,
    /// Consuming until empty.
    Draining,
    /// Ring empty; waiting until the device has played the stream's last frame, then `Drained`
    /// (ALSA's drain returns when the audio is out, not when it was handed on).
    DrainingDevice,
}

/// One stream as the mix thread holds it. Built on the control thread, moved in through the
/// command queue, moved back out to be dropped (munmap, close) off the real-time thread.
#[derive(Debug)]
pub struct Stream {
    /// Daemon-wide id.
    pub id: u32,
    /// The mapping, for what the daemon reads (the client's cursors, avail_min, counters).
    pub(super) shm: Arc<StreamShm>,
    /// Our half of the audio ring: the reader for playback, the writer for recorders.
    pub(super) audio: AudioHalf,
    /// The timing snapshot and flags (we are their only writer).
    pub(super) timing: TimingWriter,
    /// We signal it when the client sleeps and has something to do.
    pub(super) client_wake: WakeFd,
    /// The client signals it when it posted a record while we slept.
    pub(super) daemon_wake: WakeFd,
    /// `daemon_wake` hung up or failed (the client closed its end): never polled again; its
    /// records are still read every device period.
    pub(super) wake_closed: bool,
    pub(super) state: State,
    /// Frames consumed since the last Start (ring index = this % buffer_frames).
    pub(super) read_count: u64,
    /// Records from the client (we consume).
    pub(super) c2d: RecordReceiver,
    /// Records to the client (we produce).
    pub(super) d2c: RecordSender,
    pub(super) buffer_frames: u32,
    /// Playback or recording, with the conversion that goes with it.
    pub(super) kind: Kind,
    pub(super) drain_seq: u32,
    /// Device position (frames handed to the device) just after this stream's last frame.
    pub(super) drain_until: u64,
    pub(super) violation: Option<Violation>,
    /// Recorders: frames written since the last Start (ring index = this % buffer_frames).
    pub(super) write_count: u64,
    /// Its daemon_wake fired in this cycle, or the pre-sleep recheck found a record.
    pub(super) woke: bool,
    /// Until the next device period: its daemon_wake is not polled and its ring not rechecked
    /// before the wait (a client cannot make the mix thread spin).
    pub(super) muted: bool,
    /// Volume in, levels and figures out (shared with the control thread; atomics only).
    pub(super) ctl: Arc<StreamCtl>,
    /// What it asks of the device queue, in device frames (its period and its slack).
    pub(super) ask: Ask,
    /// Device position just after the last frame it gave the device.
    pub(super) end_pos: u64,
    /// Device position of the first frame of its current run: from here to `end_pos` the
    /// device holds its frames one after the other, with no gap (a pause, an underrun, a late
    /// start leave silence between two runs).
    pub(super) run_start: u64,
    /// `end_pos` when its current run began: the end of its earlier frames on the device. A
    /// rewind never goes further back (those frames and the gap after them cannot be played
    /// again as they were).
    pub(super) prev_end: u64,
    /// Stopped by the client's Stop (drop): what it had queued on the device may be taken
    /// back and forgotten.
    pub(super) dropped: bool,
    /// Moving to another device: detached as soon as it has given this one everything it
    /// consumed (frames taken back by a rewind are played again here first); nothing it gave
    /// is taken back from now on.
    pub(super) leaving: bool,
}

/// What a stream does, and the conversion that goes with it.
#[derive(Debug)]
pub enum Kind {
    /// Playback: the conversion from the stream's format, rate and layout into the mix bus.
    Play(Box<Pipeline>),
    /// A recorder of the capture device (`Capture`) or of the mix (`Monitor`): the conversion
    /// from the device into the stream's ring. `None` only while `MixCore` has lent it out
    /// (its output is borrowed while the stream takes it in).
    Record(Direction, Option<Box<RecordPipe>>),
}

impl Stream {
    /// Wraps a mapped playback stream, its two wake descriptors and its conversion pipeline.
    #[must_use]
    pub fn new(id: u32, shm: StreamShm, client_wake: WakeFd, daemon_wake: WakeFd, pipe: Pipeline) -> Self {
        Self::with_kind(id, shm, client_wake, daemon_wake, Direction::Playback, Kind::Play(Box::new(pipe)))
    }

    /// Wraps a recording stream (`Capture` or `Monitor`; `Playback` counts as `Capture`): the
    /// daemon writes its ring through `rec`.
    #[must_use]
    pub fn new_recorder(
        id: u32,
        shm: StreamShm,
        client_wake: WakeFd,
        daemon_wake: WakeFd,
        dir: Direction,
        rec: RecordPipe,
    ) -> Self {
        let dir = if dir == Direction::Playback { Direction::Capture } else { dir };
        Self::with_kind(id, shm, client_wake, daemon_wake, dir, Kind::Record(dir, Some(Box::new(rec))))
    }

    fn with_kind(
        id: u32,
        shm: StreamShm,
        client_wake: WakeFd,
        daemon_wake: WakeFd,
        dir: Direction,
        kind: Kind,
    ) -> Self {
        let l = *shm.layout();
        let halves = shm.into_daemon(dir);
        Self {
            id,
            shm: halves.shm,
            audio: halves.audio,
            timing: halves.timing,
            client_wake,
            daemon_wake,
            wake_closed: false,
            state: State::Stopped,
            read_count: 0,
            c2d: halves.c2d,
            d2c: halves.d2c,
            buffer_frames: l.buffer_frames,
            kind,
            drain_seq: 0,
            drain_until: 0,
            violation: None,
            write_count: 0,
            woke: false,
            muted: false,
            ctl: Arc::new(StreamCtl::default()),
            ask: Ask { period: u32::MAX, slack: u32::MAX, limit: u32::MAX },
            end_pos: 0,
            run_start: 0,
            prev_end: 0,
            dropped: false,
            leaving: false,
        }
    }

    /// What the stream asks of the device queue: its period of `period_frames` and its buffer
    /// of `buffer_frames` at `stream_rate`, on a device of `device_rate` (control thread, before
    /// the stream is added).
    pub fn set_ask(&mut self, period_frames: u32, buffer_frames: u32, stream_rate: u32, device_rate: u32) {
        let dev = |f: u32| {
            let d = u64::from(f) * u64::from(device_rate) / u64::from(stream_rate.max(1));
            u32::try_from(d).unwrap_or(u32::MAX)
        };
        self.ask = Ask::of(dev(period_frames), dev(buffer_frames));
    }

    /// Gives the stream the conversion `kind`, built for the device it moves to, after it was
    /// detached from its old one (control thread). It goes on from where it is: its ring
    /// positions and state are kept; what it gave the old device stays there; a stream whose
    /// last frames were waiting to be heard there is drained again on the new device.
    ///
    /// # Errors
    /// `kind` is not the stream's kind (a playback conversion for a recorder, or the reverse).
    pub fn move_to(&mut self, kind: Kind) -> Result<(), Kind> {
        let fits = match (&self.kind, &kind) {
            (Kind::Play(_), Kind::Play(_)) => true,
            (Kind::Record(a, _), Kind::Record(b, Some(_))) => a == b,
            _ => false,
        };
        if !fits {
            return Err(kind);
        }
        // What the old device never played of what the stream read goes along, first.
        let carry = match &self.kind {
            Kind::Play(p) => p.unheard(),
            Kind::Record(..) => Vec::new(),
        };
        self.kind = kind;
        if let Kind::Play(p) = &mut self.kind {
            p.set_carry(carry, self.read_count);
        }
        if self.state == State::DrainingDevice {
            self.state = State::Draining;
        }
        self.end_pos = 0;
        self.run_start = 0;
        self.prev_end = 0;
        self.drain_until = 0;
        self.dropped = false;
        self.leaving = false;
        self.muted = false;
        self.woke = false;
        let g = self.ctl.volume.gain();
        self.gain_to(g, false);
        Ok(())
    }

    /// Shares `ctl` with the control thread and starts at its volume without a ramp (control
    /// thread, before the stream is added).
    pub fn attach_ctl(&mut self, ctl: Arc<StreamCtl>) {
        self.gain_to(ctl.volume.gain(), false);
        self.ctl = ctl;
    }

    /// The figures shared with the control thread.
    #[must_use]
    pub fn ctl(&self) -> &Arc<StreamCtl> {
        &self.ctl
    }

    /// The stream's direction.
    #[must_use]
    pub fn direction(&self) -> Direction {
        match self.kind {
            Kind::Play(_) => Direction::Playback,
            Kind::Record(dir, _) => dir,
        }
    }

    pub(super) fn is_recorder(&self) -> bool {
        matches!(self.kind, Kind::Record(..))
    }

    pub(super) fn recording(&self, dir: Direction) -> bool {
        self.direction() == dir && self.violation.is_none() && self.state == State::Running
    }

    /// Sets the conversion's gain: ramped (`ramp`) or at once. RT: yes.
    pub(super) fn gain_to(&mut self, g: f32, ramp: bool) {
        match &mut self.kind {
            Kind::Play(p) if ramp => p.set_gain(g),
            Kind::Play(p) => p.jump_gain(g),
            Kind::Record(_, Some(r)) if ramp => r.set_gain(g),
            Kind::Record(_, Some(r)) => r.jump_gain(g),
            Kind::Record(_, None) => {}
        }
    }

    /// The conversion's peak since the last call. RT: yes.
    pub(super) fn take_peak(&mut self) -> f32 {
        match &mut self.kind {
            Kind::Play(p) => p.take_peak(),
            Kind::Record(_, r) => r.as_mut().map_or(0.0, |r| r.take_peak()),
        }
    }

    /// The position reported in answers: read position (playback), write position (recorders).
    pub(super) fn pos(&self) -> u32 {
        if self.is_recorder() {
            self.write_count as u32
        } else {
            self.read_pos()
        }
    }

    /// Recorders: the client's read position against our write position.
    pub(super) fn rec_fill(&mut self) -> Option<u32> {
        // Pairs with the client's Release store of `audio_read.pos` after it copied the frames out.
        let read = self.shm.audio_read().pos.load(Ordering::Acquire);
        match cursor::fill(self.write_count as u32, read, self.buffer_frames) {
            Ok(f) => Some(f),
            Err(v) => {
                self.violate(v);
                None
            }
        }
    }

    /// Recorders: writes `bytes` (whole stream frames) into the ring at the write position;
    /// what does not fit is an overrun (STOPPED + Xrun). Wakes the client when its fill reached
    /// its avail_min. RT: yes.
    pub(super) fn deliver(&mut self, bytes: &[u8], now_ns: u64, counters: &Counters) {
        let fb = self.shm.layout().frame_bytes as usize;
        let n = bytes.len() / fb;
        if n == 0 {
            return;
        }
        let Some(fill) = self.rec_fill() else { return };
        let room = (self.buffer_frames - fill) as usize;
        let k = n.min(room);
        if k > 0 {
            let idx = cursor::ring_index(self.write_count, self.buffer_frames);
            // Recorders always hold the writer (`into_daemon` of a capture or monitor stream).
            let AudioHalf::Writer(audio) = &mut self.audio else { return };
            audio.write(idx, &bytes[..k * fb]);
            self.write_count += k as u64;
            // Pairs with the client's Acquire load of `audio_write.pos` before it reads.
            audio.publish(self.write_count as u32);
        }
        if k < n {
            self.state = State::Stopped;
            Counters::bump(&counters.capture_overruns, 1);
            self.ctl.xruns.fetch_add(1, Ordering::Relaxed);
            let pos = self.pos();
            self.post(Record::Xrun { pos, at_ns: now_ns }, counters);
            return;
        }
        let fill = fill + k as u32;
        let avail_min = self.shm.avail_min().value.load(Ordering::Relaxed).clamp(1, self.buffer_frames);
        if fill >= avail_min {
            self.wake_client(counters);
        }
    }

    /// Publishes state, latency and the plugin's copy counters for the control thread. RT: yes.
    pub(super) fn publish_figures(&self, latency_frames: u32) {
        let state = match self.state {
            State::Stopped => 0,
            State::Running => 1,
            State::Paused => 2,
            State::Draining | State::DrainingDevice => 3,
        };
        self.ctl.state.store(state, Ordering::Relaxed);
        self.ctl.latency_frames.store(latency_frames, Ordering::Relaxed);
        // Untrusted numbers from the client's memory, shown as they are.
        let line = self.shm.avail_min();
        self.ctl.copied_frames.store(line.copied_frames.load(Ordering::Relaxed), Ordering::Relaxed);
        self.ctl.zero_copy_frames.store(line.zero_copy_frames.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The descriptor the client signals when it posted a record while we slept; -1 (not
    /// polled) while the stream is muted or after the client closed its end.
    #[must_use]
    pub fn daemon_wake_fd(&self) -> i32 {
        if self.muted || self.wake_closed {
            -1
        } else {
            self.daemon_wake.as_raw_fd()
        }
    }

    /// Current daemon-side state.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// A playback stream's conversion pipeline.
    #[must_use]
    pub fn pipeline(&self) -> Option<&Pipeline> {
        match &self.kind {
            Kind::Play(p) => Some(&**p),
            Kind::Record(..) => None,
        }
    }

    /// Sets the stream's gain (applied with a short linear ramp). RT: yes.
    pub fn set_gain(&mut self, gain: f32) {
        self.gain_to(gain, true);
    }

    /// The violation that retired this stream, if any.
    #[must_use]
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    pub(super) fn active(&self) -> bool {
        matches!(self.kind, Kind::Play(_))
            && self.violation.is_none()
            && matches!(self.state, State::Running | State::Draining)
    }

    pub(super) fn read_pos(&self) -> u32 {
        self.read_count as u32
    }

    pub(super) fn violate(&mut self, v: Violation) {
        if self.violation.is_none() {
            self.violation = Some(v);
        }
    }

    /// Signals the client if it sleeps; counts either way.
    pub(super) fn wake_client(&self, counters: &Counters) {
        // Pairs with the client's prepare_sleep on `audio_write.sleeping` (playback) or
        // `audio_read.sleeping` (recorders: the client waits for data).
        let flag = if self.is_recorder() { &self.shm.audio_read().sleeping } else { &self.shm.audio_write().sleeping };
        if wake::wake_if_sleeping(flag) {
            self.client_wake.signal();
            Counters::bump(&counters.wakeups_sent, 1);
        } else {
            Counters::bump(&counters.wakeups_skipped, 1);
        }
    }

    /// Posts a record to the client and wakes it if it sleeps.
    pub(super) fn post(&mut self, rec: Record, counters: &Counters) {
        match self.d2c.push(rec) {
            Ok(true) => {}
            // The client does not read its ring: it only starves itself.
            Ok(false) => Counters::bump(&counters.records_dropped, 1),
            Err(v) => {
                self.violate(v);
                return;
            }
        }
        self.wake_client(counters);
    }

    /// The client's published write position, checked against our read position.
    pub(super) fn fill(&mut self) -> Option<u32> {
        // Pairs with the client's Release store of `audio_write.pos` after its copy.
        let write = self.shm.audio_write().pos.load(Ordering::Acquire);
        match cursor::fill(write, self.read_pos(), self.buffer_frames) {
            Ok(f) => Some(f),
            Err(v) => {
                self.violate(v);
                None
            }
        }
    }

    pub(super) fn publish_read(&mut self) {
        let pos = self.read_pos();
        if let AudioHalf::Reader(audio) = &mut self.audio {
            // Pairs with the client's Acquire load of `audio_read.pos` (it reuses the space).
            audio.consume(pos);
        }
    }

    pub(super) fn finish_drain(&mut self, counters: &Counters) {
        self.state = State::Stopped;
        let pos = self.read_pos();
        self.post(Record::Drained { seq: self.drain_seq, pos }, counters);
    }

    /// Handles the queued client records, at most one ring's worth per cycle (a client pushing
    /// records as fast as we take them cannot hold the mix thread here). A stream that woke the
    /// mix thread, or used its whole budget, is muted until the next period: each stream wakes
    /// it at most once a period, whatever it writes.
    pub(super) fn process_records(&mut self, counters: &Counters) {
        let budget = self.shm.layout().msg_records;
        let mut taken = 0;
        while taken < budget {
            if !self.process_one_record(counters) {
                break;
            }
            taken += 1;
        }
        if self.woke || taken == budget {
            if !self.muted {
                Counters::bump(&counters.wakes_muted, 1);
            }
            self.muted = true;
        }
        self.woke = false;
    }

    /// Takes and handles one client record; false when there was none (or the stream broke the
    /// contract).
    pub(super) fn process_one_record(&mut self, counters: &Counters) -> bool {
        if self.violation.is_some() {
            return false;
        }
        let rec = match self.c2d.pop() {
            Ok(None) => return false,
            Ok(Some(Ok(r))) => r,
            Ok(Some(Err(e))) => {
                self.violate(e.into());
                return false;
            }
            Err(v) => {
                self.violate(v);
                return false;
            }
        };
        match rec {
            Record::Start { .. } => {
                if self.state == State::Stopped {
                    self.state = State::Running;
                    self.dropped = false;
                    self.read_count = 0;
                    self.write_count = 0;
                    match &mut self.kind {
                        Kind::Play(p) => p.restart(),
                        Kind::Record(_, r) => r.as_mut().map_or((), |r| r.restart()),
                    }
                }
            }
            // Recorders: what was captured stays readable; Drain is Stop answered Drained.
            Record::Stop { seq } | Record::Drain { seq } if self.is_recorder() => {
                self.state = State::Stopped;
                let pos = self.pos();
                let rec = if matches!(rec, Record::Stop { .. }) {
                    Record::Stopped { seq, pos }
                } else {
                    Record::Drained { seq, pos }
                };
                self.post(rec, counters);
            }
            Record::Stop { seq } => {
                // Discard what is queued: the read position jumps to the write position.
                let Some(fill) = self.fill() else { return false };
                if self.state != State::Stopped {
                    self.read_count += u64::from(fill);
                    self.publish_read();
                    self.dropped = true;
                }
                self.state = State::Stopped;
                let pos = self.read_pos();
                self.post(Record::Stopped { seq, pos }, counters);
            }
            Record::Pause { seq } => {
                if matches!(self.state, State::Running | State::Draining) {
                    self.state = State::Paused;
                }
                let pos = self.pos();
                self.post(Record::Stopped { seq, pos }, counters);
            }
            Record::Resume { .. } => {
                if self.state == State::Paused {
                    self.state = State::Running;
                }
            }
            Record::Drain { seq } => match self.state {
                State::Running => {
                    self.state = State::Draining;
                    self.drain_seq = seq;
                }
                State::Draining | State::DrainingDevice => self.drain_seq = seq,
                State::Stopped | State::Paused => {
                    self.state = State::Stopped;
                    let pos = self.read_pos();
                    self.post(Record::Drained { seq, pos }, counters);
                }
            },
            Record::Stopped { .. } | Record::Xrun { .. } | Record::Drained { .. } | Record::Fatal { .. } => {
                self.violate(Violation::new("daemon record sent by the client", u64::from(rec.encode()[0]), 0));
            }
        }
        self.violation.is_none()
    }
}

//! A PCM's life: hw_params (the daemon creates the stream) and hw_free, channel maps, sw_params,
//! prepare, start, stop, pause, reset, and drain. Runs in the host program's calling thread(s),
//! under the PCM's mutex except drain's waits. RT: no (setup and state changes).

use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shmix_shared::layout::{Layout, DEFAULT_MSG_RECORDS};
use shmix_shared::msg::{AudioParams, Direction, Record};
use shmix_shared::shm::{AudioHalf, StreamShm};
use shmix_shared::sync::Ordering;
use shmix_shared::wakefd::OwnWake;
use shmix_shared::ChannelMap;

use super::{
    now_ns, poll_two, Daemon, Drain, Pcm, State, Stream, DRAIN_GONE_MAX, DRAIN_MARGIN, DRAIN_RECHECK, STOP_WAIT,
};
use crate::Errno;

impl Pcm {
    /// hw_params: (re)creates the stream for the negotiated parameters. User-facing failures are
    /// printed here.
    ///
    /// # Errors
    /// The daemon refused, or a system call failed.
    pub fn hw_params(&mut self, params: AudioParams) -> Result<(), Errno> {
        self.check_alive()?;
        self.hw_free()?;
        let fail = |errno: i32, msg: String| {
            crate::user_error(&msg);
            Errno(errno)
        };
        let layout = Layout::new(params.frame_bytes(), params.buffer_frames, DEFAULT_MSG_RECORDS)
            .map_err(|v| fail(libc::EINVAL, format!("cannot lay out a {}-frame buffer: {v}", params.buffer_frames)))?;
        let (memfd, shm) = StreamShm::create(layout, &crate::conn::program_name())
            .map_err(|e| fail(libc::ENOMEM, format!("cannot create the stream memory: {e}")))?;
        shm.avail_min().value.store(self.avail_min, Ordering::Release);
        // A stale wake from an earlier stream would make poll lie.
        let own = OwnWake { polled: &self.client_wake, other: &self.client_wake_peer };
        self.sleeper.reset(&own);
        let fds = [memfd.as_raw_fd(), self.client_wake_peer.as_raw_fd(), self.daemon_wake_peer.as_raw_fd()];
        if self.chmap.is_some_and(|m| m.channels() != params.channels) {
            self.chmap = None; // set for another channel count
        }
        let chmap = self.chmap(params.channels);
        let id = self
            .conn
            .create_stream(params, layout.msg_records, layout.total_bytes, chmap, self.quality, fds)
            .map_err(|(errno, msg)| {
                if errno == libc::EAGAIN || errno == libc::ECONNRESET || errno == libc::EPIPE {
                    self.dead = Some(libc::ENODEV);
                }
                fail(errno, msg)
            })?;
        drop(memfd); // the daemon holds its own copy; the mapping keeps the memory
        self.debug_line(format_args!(
            "stream {id}: {} {} Hz {} ch, period {} buffer {} frames, memfd {} bytes, chmap {:?}, quality {}",
            params.format,
            params.rate,
            params.channels,
            params.period_frames,
            params.buffer_frames,
            layout.total_bytes,
            chmap.positions(),
            self.quality.name()
        ));
        // Monitor streams take the same reader half as capture.
        let dir = if self.capture { Direction::Capture } else { Direction::Playback };
        let halves = shm.into_client(dir);
        self.stream = Some(Stream {
            shm: halves.shm,
            audio: halves.audio,
            params,
            c2d: halves.c2d,
            d2c: halves.d2c,
            d2c_pos: 0,
            seq: 0,
            write_total: 0,
            read_total: 0,
            peer_seen: 0,
            state: State::Setup,
            daemon: Daemon::Idle,
            started_ns: 0,
            last_delay: None,
            reported_hw: 0,
            last_snapshot: None,
            counters_base: self.counters,
        });
        Ok(())
    }

    /// hw_free: destroys the stream (DestroyStream, wait StreamDestroyed).
    ///
    /// # Errors
    /// The daemon did not answer.
    pub fn hw_free(&mut self) -> Result<(), Errno> {
        if self.stream.take().is_none() {
            return Ok(());
        }
        if self.dead.is_some() {
            return Ok(());
        }
        self.conn.destroy_stream().inspect_err(|e| {
            self.debug_line(format_args!("DestroyStream failed: errno {}", e.0));
            self.dead = Some(libc::ENODEV);
        })
    }

    /// The channel map in use for `channels`: the one set, else the standard layout.
    ///
    /// # Panics
    /// `channels` outside 1..=32 (never: hw_params checked it).
    #[must_use]
    pub fn chmap(&self, channels: u32) -> ChannelMap {
        self.chmap.filter(|m| m.channels() == channels).unwrap_or_else(|| ChannelMap::standard(channels))
    }

    /// The negotiated parameters, once hw_params has run.
    #[must_use]
    pub fn params(&self) -> Option<AudioParams> {
        self.stream.as_ref().map(|s| s.params)
    }

    /// set_chmap: takes `map` (its length already checked against the channel count) for this
    /// stream. The daemon learns a stream's map in `CreateStream`, so a different map re-creates
    /// the stream on the spot, keeping what a prepared stream was already given. Legal while set
    /// up or prepared (not started); returns whether the ring moved (the caller re-points mmap
    /// areas).
    ///
    /// # Errors
    /// EBADFD (no stream), EBUSY (started), or the re-creation failed.
    pub fn set_chmap(&mut self, map: ChannelMap) -> Result<bool, Errno> {
        self.refresh();
        self.check_alive()?;
        let s = self.stream.as_ref().ok_or(Errno(libc::EBADFD))?;
        if map.channels() != s.params.channels {
            return Err(Errno(libc::EINVAL));
        }
        if map == self.chmap(s.params.channels) {
            self.chmap = Some(map);
            return Ok(false);
        }
        if !matches!(s.state, State::Setup | State::Prepared | State::Xrun { dropped: true, .. }) {
            crate::user_error("the channel map can only be changed while the stream is stopped");
            return Err(Errno(libc::EBUSY));
        }
        let (params, prepared) = (s.params, s.state == State::Prepared);
        let fb = params.frame_bytes() as usize;
        let queued = if prepared && !self.capture {
            // Not started: nothing consumed, the frames written so far sit at ring index 0.
            let frames = s.write_total.min(u64::from(params.buffer_frames)) as usize;
            let mut buf = vec![0u8; frames * fb];
            if let AudioHalf::Writer(audio) = &s.audio {
                audio.read_back(0, &mut buf);
            }
            buf
        } else {
            Vec::new()
        };
        let old = self.chmap.replace(map);
        if let Err(e) = self.hw_params(params) {
            self.chmap = old;
            return Err(e);
        }
        self.debug_line(format_args!("channel map changed: stream re-created"));
        if prepared {
            let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
            s.state = State::Prepared;
            if !queued.is_empty() {
                s.write_total = (queued.len() / fb) as u64;
                if let AudioHalf::Writer(audio) = &mut s.audio {
                    audio.write(0, &queued);
                    // Publish: pairs with the daemon's Acquire load of audio_write.
                    audio.publish(s.write_total as u32);
                }
            }
            self.sync_readiness();
        }
        Ok(true)
    }

    /// sw_params: remembers `avail_min` (published in the header) and the boundary.
    pub fn sw_params(&mut self, avail_min: u64, boundary: u64) {
        let buffer = self.stream.as_ref().map_or(u32::MAX, |s| s.params.buffer_frames);
        self.avail_min = u32::try_from(avail_min).unwrap_or(u32::MAX).clamp(1, buffer.max(1));
        self.boundary = boundary;
        if let Some(s) = &self.stream {
            // Pairs with the daemon's Acquire load when it decides whether to wake us.
            s.shm.avail_min().value.store(self.avail_min, Ordering::Release);
        }
        self.sync_readiness();
    }

    /// start: `Start{seq}`.
    ///
    /// # Errors
    /// Dead daemon, no stream, or the record ring is full.
    pub fn start(&mut self) -> Result<(), Errno> {
        self.refresh();
        self.check_alive()?;
        self.push(|seq| Record::Start { seq })?;
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        s.daemon = s.daemon.started();
        s.state = match s.state {
            // Still EPIPE until prepare.
            State::Xrun { drain, .. } => State::Xrun { dropped: false, drain },
            _ => State::Running,
        };
        s.started_ns = now_ns();
        s.last_delay = None;
        self.sync_readiness();
        Ok(())
    }

    /// stop (drop; alsa-lib calls it twice on drain + close): `Stop{seq}` if the daemon side may
    /// be running. Idempotent. Wakes a drain waiting in another thread.
    pub fn stop(&mut self) {
        self.refresh();
        let Some(s) = self.stream.as_mut() else { return };
        let had_drain = s.state.drain_seq().is_some();
        s.state = match s.state {
            // Still EPIPE until prepare; a drain begun since is over.
            State::Xrun { .. } => State::Xrun { dropped: true, drain: Drain::default() },
            _ => State::Setup,
        };
        if s.daemon == Daemon::Active && self.dead.is_none() {
            match self.push(|seq| Record::Stop { seq }) {
                Ok(seq) => {
                    if let Some(s) = self.stream.as_mut() {
                        s.daemon = Daemon::Stopping { seq };
                    }
                }
                Err(e) => self.debug_line(format_args!("cannot post Stop: errno {}", e.0)),
            }
        }
        if had_drain {
            // A drain polling in another thread wakes, sees its drain gone and returns.
            let own = OwnWake { polled: &self.client_wake, other: &self.client_wake_peer };
            self.sleeper.signal_self(&own);
        }
    }

    /// pause(enable): `Pause{seq}` / `Resume{seq}`.
    ///
    /// # Errors
    /// Dead daemon or no stream.
    pub fn pause(&mut self, enable: bool) -> Result<(), Errno> {
        self.refresh();
        self.check_alive()?;
        if self.stream.as_ref().is_some_and(|s| matches!(s.state, State::Restarting { .. })) {
            // Reset while running or paused: the daemon side is stopped; resuming starts it again.
            if !enable {
                return self.start();
            }
        } else if enable {
            self.push(|seq| Record::Pause { seq })?;
        } else {
            self.push(|seq| Record::Resume { seq })?;
        }
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        s.state = match s.state {
            State::Restarting { .. } => State::Restarting { paused: true },
            // Still EPIPE until prepare.
            State::Xrun { drain, .. } => State::Xrun { dropped: false, drain },
            _ if enable => State::Paused,
            _ => State::Running,
        };
        self.sync_readiness();
        Ok(())
    }

    /// prepare: stops the daemon side if it may run and waits (bounded) for its answer, then
    /// resets both audio cursors and the private counts. The caller re-points mmap areas.
    ///
    /// # Errors
    /// Dead daemon, no stream, or no `Stopped` within [`STOP_WAIT`] (EIO).
    pub fn prepare(&mut self) -> Result<(), Errno> {
        self.refresh();
        self.check_alive()?;
        self.stop_and_wait()?;
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        Self::zero_positions(s);
        s.state = State::Prepared;
        self.sync_readiness();
        Ok(())
    }

    /// Stops the daemon side if it may run and waits (bounded by [`STOP_WAIT`]) for its
    /// `Stopped`: afterwards it does not touch the audio cursors (PROTOCOL.md).
    pub(super) fn stop_and_wait(&mut self) -> Result<(), Errno> {
        let s = self.stream.as_ref().ok_or(Errno(libc::EBADFD))?;
        if s.daemon.active() {
            self.stop();
        }
        let deadline = Instant::now() + STOP_WAIT;
        while self.stream.as_ref().is_some_and(|s| s.daemon.stop_seq().is_some()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                crate::user_error("shmixd did not confirm Stop within 1 s");
                return Err(Errno(libc::EIO));
            }
            self.wait_once(left)?;
            self.refresh();
            self.check_alive()?;
        }
        Ok(())
    }

    /// Both audio cursors and our counts back to 0 (the daemon side must be STOPPED).
    pub(super) fn zero_positions(s: &mut Stream) {
        s.audio.reset();
        s.write_total = 0;
        s.read_total = 0;
        s.peer_seen = 0;
        s.reported_hw = 0;
        s.last_delay = None;
    }

    /// `snd_pcm_reset` detection. alsa-lib's ioplug reset sets `appl_ptr`, `hw_ptr` and its
    /// private `last_hw` to 0 without calling the plugin (pcm_ioplug.c, snd_pcm_ioplug_reset),
    /// so every callback that can see both pointers calls this first: both 0 while we had
    /// reported progress or hold frames means a reset. Like hardware, a reset discards what is
    /// queued (playback: the daemon drops it; capture: the unread frames go) and positions
    /// restart from alsa-lib's zeros. The daemon side is stopped (a bounded wait for `Stopped`,
    /// about one daemon period) and started again: capture at once, playback with the first
    /// frames written afterwards (so a program that resets and then writes never meets an
    /// empty running stream; a paused one starts at resume). Returns whether it was a reset.
    ///
    /// # Errors
    /// Dead daemon, or no `Stopped` within [`STOP_WAIT`].
    pub fn check_reset(&mut self, appl_ptr: u64, hw_ptr: u64) -> Result<bool, Errno> {
        let capture = self.capture;
        let boundary = self.boundary;
        let Some(s) = self.stream.as_ref() else { return Ok(false) };
        if appl_ptr != 0 || hw_ptr != 0 {
            return Ok(false);
        }
        // Not after an xrun (prepare recovers), not while draining.
        if !matches!(s.state, State::Prepared | State::Running | State::Paused | State::Restarting { .. }) {
            return Ok(false);
        }
        let own = if capture { s.read_total } else { s.write_total };
        let own = if boundary == 0 { own } else { own % boundary };
        if s.reported_hw == 0 && own == 0 {
            return Ok(false); // nothing happened since prepare (or the last reset)
        }
        let state = s.state;
        self.stop_and_wait()?;
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        Self::zero_positions(s);
        // Timing snapshots from before the reset describe the old positions.
        s.started_ns = now_ns();
        s.state = match state {
            State::Running | State::Paused if !capture => State::Restarting { paused: state == State::Paused },
            _ => state,
        };
        if capture && state == State::Running {
            self.start()?;
        }
        self.debug_line(format_args!("snd_pcm_reset detected: queue discarded, positions restart at 0"));
        self.sync_readiness();
        Ok(true)
    }

    /// drain: `Drain{seq}` (starting first if never started), then waits for `Drained`, bounded
    /// by the queued audio plus [`DRAIN_MARGIN`], without holding the mutex (so a drop from
    /// another thread aborts it). `nonblock()` is polled: non-blocking or aborted -> EAGAIN.
    ///
    /// # Errors
    /// EAGAIN (non-blocking / aborted), ETIMEDOUT, EPIPE (xrun), or the daemon died.
    pub fn drain(m: &Mutex<Pcm>, nonblock: &dyn Fn() -> bool) -> Result<(), Errno> {
        let lock = || Self::lock(m);
        let (seq, deadline) = {
            let mut p = lock()?;
            p.refresh();
            p.check_alive()?;
            let capture = p.capture;
            let s = p.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
            let seq = match s.state.drain_seq() {
                Some(seq) => seq,
                None => {
                    // Capture: a drain stops the daemon side (answered Drained); what was
                    // captured stays readable. Nothing to do when it is not running.
                    let active = s.daemon.active();
                    if !active && (capture || s.write_total == s.read_total) {
                        return Ok(()); // nothing queued, never started
                    }
                    s.state = match s.state {
                        // Restarted below, but still EPIPE until prepare.
                        State::Xrun { .. } => State::Xrun { dropped: false, drain: Drain::default() },
                        _ => State::Draining(Drain::default()),
                    };
                    if !active {
                        p.push(|seq| Record::Start { seq })?;
                        let s = p.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
                        s.daemon = s.daemon.started();
                        s.started_ns = now_ns();
                    }
                    let seq = p.push(|seq| Record::Drain { seq })?;
                    let s = p.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
                    if let State::Draining(drain) | State::Xrun { drain, .. } = &mut s.state {
                        drain.seq = Some(seq);
                    }
                    seq
                }
            };
            let s = p.stream.as_ref().ok_or(Errno(libc::EBADFD))?;
            let queued = if capture { 0 } else { s.write_total.saturating_sub(s.read_total) };
            let rate = u64::from(s.params.rate.max(1));
            let expect = Duration::from_nanos(queued.saturating_mul(1_000_000_000) / rate);
            (seq, Instant::now() + expect + DRAIN_MARGIN)
        };
        let mut deadline = deadline;
        let mut last_look = Instant::now();
        let mut was_waiting = false;
        let mut extended = Duration::ZERO;
        let mut sock_revents = 0i16;
        loop {
            let fds = {
                let mut p = lock()?;
                if sock_revents != 0 && p.dead.is_none() && p.conn.peer_gone() {
                    p.dead = Some(libc::ENODEV);
                }
                p.refresh();
                p.check_alive()?;
                let s = p.stream.as_ref().ok_or(Errno(libc::EBADFD))?;
                if s.state.drain_seq() != Some(seq) {
                    return Ok(()); // dropped meanwhile (abort by snd_pcm_drop)
                }
                if s.state.drain().is_some_and(|d| d.drained) {
                    let s = p.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
                    if let State::Draining(drain) | State::Xrun { drain, .. } = &mut s.state {
                        drain.seq = None;
                    }
                    p.sync_readiness();
                    return Ok(());
                }
                if matches!(s.state, State::Xrun { .. }) {
                    p.sync_readiness();
                    return Err(Errno(libc::EPIPE));
                }
                if nonblock() {
                    p.sync_readiness();
                    return Err(Errno(libc::EAGAIN));
                }
                // Time the device was gone (at either end of the last wait) does not count.
                let waiting = s.shm.device_waiting();
                let now = Instant::now();
                if waiting || was_waiting {
                    let add = (now - last_look).min(DRAIN_GONE_MAX.saturating_sub(extended));
                    deadline += add;
                    extended += add;
                }
                (last_look, was_waiting) = (now, waiting);
                if now >= deadline {
                    crate::user_error("drain timed out: shmixd did not report the stream drained");
                    p.sync_readiness();
                    return Err(Errno(libc::ETIMEDOUT));
                }
                if !p.arm_for_records() {
                    continue;
                }
                p.poll_fds()
            };
            // Unlocked: another thread may drop (abort) meanwhile; it signals client_wake.
            let left = deadline.saturating_duration_since(Instant::now()).min(DRAIN_RECHECK);
            sock_revents = poll_two(fds, left)[1];
        }
    }
}

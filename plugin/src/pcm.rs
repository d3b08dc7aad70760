//! One shmix PCM, playback or capture: the stream's shared memory, its cursors, the control
//! records, the wake readiness mirror, delay. One code path for both directions: `capture`
//! decides which audio cursor is ours (playback: `audio_write`, we produce; capture and monitor:
//! `audio_read`, we consume) and which one the daemon moves. Plain Rust: `ioplug.rs` translates alsa-lib's callbacks into
//! these methods (under this PCM's mutex). Runs in the host program's calling thread(s).
//! RT: `transfer`, `pointer`, `revents`, `delay` yes (no allocation, no syscall in steady state
//! except the one wake read per period and clock_gettime through the vDSO).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shmix_shared::cursor;
use shmix_shared::layout::{Cursor, Layout, DEFAULT_MSG_RECORDS};
use shmix_shared::msg::{AudioParams, Record};
use shmix_shared::shm::{Ring, RingEnd, StreamShm};
use shmix_shared::sync::Ordering;
use shmix_shared::wake::{self, SleepDecision};
use shmix_shared::{ChannelMap, ResampleQuality, WakeFd};

use crate::conn::Conn;
use crate::Errno;

/// How long `prepare` waits for the daemon to confirm a `Stop`.
pub const STOP_WAIT: Duration = Duration::from_secs(1);
/// Margin added to a drain's expected duration.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(1);
/// While the daemon says the device is gone (`DEVICE_WAITING`), a drain's deadline moves on with
/// the clock (that time does not count), for at most this long in all: a card replugged within
/// it plays the drain's end; one gone for longer ends the drain with ETIMEDOUT as before (a
/// program at its end does not hang for good; a dead daemon ends it at once anyway).
pub const DRAIN_GONE_MAX: Duration = Duration::from_secs(60);
/// Longest single wait of a drain: how often it looks at the daemon's device-waiting flag.
const DRAIN_RECHECK: Duration = Duration::from_millis(200);

/// Frame counters, reported at close under `SHMIX_DEBUG=1`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Frames copied between the application's buffer and shared memory (either direction).
    pub copied_frames: u64,
    /// Frames the application wrote into / read out of shared memory directly (mmap, published
    /// only).
    pub zero_copy_frames: u64,
    /// Xruns the daemon reported.
    pub xruns: u64,
}

/// What the stream is doing, as the plugin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Set up, not prepared (after hw_params or a drop).
    Setup,
    /// Prepared, not started.
    Prepared,
    /// Started.
    Running,
    /// Paused.
    Paused,
    /// Draining: waiting for `Drained`.
    Draining,
}

/// Where `transfer`'s frames are.
#[derive(Debug)]
pub enum Source<'a> {
    /// Already in the ring where they belong (an mmap client writes or reads through the
    /// re-pointed areas).
    InPlace,
    /// Playback: interleaved frames to copy into the ring.
    Frames(&'a [u8]),
    /// Capture: room for interleaved frames to copy out of the ring.
    Dest(&'a mut [u8]),
}

#[derive(Debug)]
struct Stream {
    shm: StreamShm,
    params: AudioParams,
    c2d: RingEnd,
    d2c: RingEnd,
    d2c_pos: u32,
    seq: u32,
    /// Frames produced since prepare (ours for playback, the daemon's for capture).
    write_total: u64,
    /// Frames consumed since prepare (the daemon's for playback, ours for capture).
    read_total: u64,
    /// Our last view of the daemon's published cursor (`audio_read` / `audio_write`).
    peer_seen: u32,
    phase: Phase,
    /// The daemon may be consuming (Start/Resume/Drain sent, no Stopped/Drained/Xrun since).
    daemon_active: bool,
    stop_pending: Option<u32>,
    drain_pending: Option<u32>,
    drained: bool,
    xrun: bool,
    started_ns: u64,
    /// Last delay reported and the write position then (delay never grows between writes).
    last_delay: Option<(i64, u64)>,
    /// The PCM's copy counters when this stream was created (the stream publishes its share).
    counters_base: Counters,
    /// The last position `pointer` returned (alsa-lib's `hw_ptr` equals it until a
    /// `snd_pcm_reset` zeroes it behind our back).
    reported_hw: u64,
    /// The last timing snapshot read whole. `read_timing` gives up when the daemon is inside
    /// its write on every try, which happens when the daemon thread is preempted there (a loaded
    /// machine, no real-time priority): the last snapshot, extrapolated, is still right, while
    /// falling back to the ring's fill would leave out the device's queue (up to its buffer).
    last_snapshot: Option<(u32, u32, u64)>,
    /// Playback reset while running: the daemon side was stopped and the queue discarded;
    /// `Start` goes out with the first frames written afterwards (or at resume / drain).
    restart_pending: bool,
}

/// One PCM handle's state. Lives behind a mutex in `ioplug.rs`.
#[derive(Debug)]
pub struct Pcm {
    conn: Conn,
    /// Capture or monitor: the daemon produces, we consume (`audio_read` is ours).
    capture: bool,
    /// The access is MMAP_INTERLEAVED (set at prepare).
    mmap: bool,
    /// alsa-lib's mmap areas point at the ring (set at prepare).
    in_place: bool,
    /// Polled by the program: readable while the stream is ready (the readiness mirror).
    client_wake: WakeFd,
    /// The other end of `client_wake`: the daemon signals it (it gets a copy at each
    /// CreateStream), and so do we to make `client_wake` readable ourselves.
    client_wake_peer: WakeFd,
    /// We signal it when we posted a record while the daemon sleeps.
    daemon_wake: WakeFd,
    /// The other end of `daemon_wake`, handed to the daemon at each CreateStream.
    daemon_wake_peer: WakeFd,
    debug: bool,
    /// Sent in every `CreateStream` (the `resample_quality` key).
    quality: ResampleQuality,
    /// The map set by `set_chmap` for the current channel count (None: the standard one).
    chmap: Option<ChannelMap>,
    stream: Option<Stream>,
    counters: Counters,
    boundary: u64,
    avail_min: u32,
    /// Set once the daemon is gone or reported `Fatal` (positive errno).
    dead: Option<i32>,
    /// We believe `client_wake` has a wake queued (signalled by us or the daemon).
    efd_signalled: bool,
    /// We set our cursor's `sleeping` and have not looked at it since.
    armed: bool,
    /// The process generation this PCM was opened in ([`crate::fork`]).
    born: u32,
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO, no syscall).
#[must_use]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Delay math (PROTOCOL.md "Timing"): `write - pos + queued - elapsed*rate`, never negative.
/// `snapshot` is `(pos, queued_frames, ts_ns)`; `elapsed` is not counted while paused.
#[must_use]
pub fn raw_delay(
    write: u32,
    snapshot: (u32, u32, u64),
    now_ns: u64,
    rate: u32,
    buffer: u32,
    paused: bool,
) -> Option<i64> {
    let (pos, queued, ts) = snapshot;
    let fill = write.wrapping_sub(pos);
    // The daemon publishes its read position before the snapshot (the same cycle, after the
    // device commit): in between we may see the new position and fill the space it freed, so
    // an honest snapshot can be up to one daemon cycle (less than a buffer) behind a full ring.
    // The formula still holds then: frames taken since the snapshot went to the device queue,
    // not to the speaker. (Refusing it fell back to the ring fill, one device buffer short.)
    if fill > buffer.saturating_mul(2) {
        return None;
    }
    let elapsed_frames =
        if paused { 0 } else { (u128::from(now_ns.saturating_sub(ts)) * u128::from(rate) / 1_000_000_000) as i64 };
    Some((i64::from(fill) + i64::from(queued) - elapsed_frames).max(0))
}

/// Capture delay (PROTOCOL.md "Capture and monitor streams"): `(pos - read) + queued +
/// elapsed*rate`, frames captured but not yet read. `snapshot` is `(daemon write pos, queued,
/// ts_ns)`; `read` our read position (both wrap at 2^32; the snapshot may be older than frames
/// already read). `elapsed` is not counted while paused and at most one buffer (a stalled daemon
/// captures nothing). Never negative.
#[must_use]
pub fn capture_delay(read: u32, snapshot: (u32, u32, u64), now_ns: u64, rate: u32, buffer: u32, paused: bool) -> i64 {
    let (pos, queued, ts) = snapshot;
    let unread = i64::from(pos.wrapping_sub(read) as i32);
    let elapsed = if paused {
        0
    } else {
        (u128::from(now_ns.saturating_sub(ts)) * u128::from(rate) / 1_000_000_000).min(u128::from(buffer)) as i64
    };
    (unread + i64::from(queued) + elapsed).max(0)
}

/// Capture with MMAP access: how many frames after `appl_ptr` the frame at mmap `offset` (an
/// index in a buffer of `buffer` frames) is. alsa-lib's avail_update fills the mmap buffer from
/// `appl_ptr` on, the part after the buffer's end in a second call at offset 0.
#[must_use]
pub fn mmap_skip(offset: u64, appl_ptr: u64, buffer: u64) -> u64 {
    if buffer == 0 {
        return 0;
    }
    (offset % buffer + buffer - appl_ptr % buffer) % buffer
}

/// Caps `delay` so that it never grows between writes: at most the last report plus what was
/// written since.
#[must_use]
pub fn monotonic_delay(delay: i64, last: Option<(i64, u64)>, write_total: u64) -> i64 {
    match last {
        Some((d, w)) => delay.min(d.saturating_add(write_total.saturating_sub(w) as i64)),
        None => delay,
    }
}

impl Pcm {
    /// A PCM on a connected daemon. Creates the two wake channels that every stream of this
    /// handle uses (so poll descriptors stay valid across hw_params).
    ///
    /// # Errors
    /// socketpair failed.
    pub fn new(conn: Conn, debug: bool, quality: ResampleQuality, capture: bool) -> Result<Self, Errno> {
        let errno = |e: std::io::Error| Errno(e.raw_os_error().unwrap_or(libc::EIO));
        let (client_wake, client_wake_peer) = WakeFd::pair().map_err(errno)?;
        let (daemon_wake, daemon_wake_peer) = WakeFd::pair().map_err(errno)?;
        Ok(Self {
            conn,
            capture,
            mmap: false,
            in_place: false,
            client_wake,
            client_wake_peer,
            daemon_wake,
            daemon_wake_peer,
            debug,
            quality,
            chmap: None,
            stream: None,
            counters: Counters::default(),
            boundary: 0,
            avail_min: 1,
            dead: None,
            efd_signalled: false,
            armed: false,
            born: crate::fork::generation(),
        })
    }

    /// Locks `m`; in a forked child, orphans the PCM first and refuses (see [`crate::fork`]).
    ///
    /// # Errors
    /// `EIO` for a poisoned mutex, `EBADFD` in a forked child.
    pub fn lock(m: &Mutex<Pcm>) -> Result<MutexGuard<'_, Pcm>, Errno> {
        let mut p = m.lock().map_err(|_| Errno(libc::EIO))?;
        if p.born != crate::fork::generation() {
            p.orphan();
            return Err(Errno(libc::EBADFD));
        }
        Ok(p)
    }

    /// In a forked child: never touches the parent's stream again. The shared memory is
    /// replaced by private memory at the same address (alsa-lib's mmap areas may point into it),
    /// and the PCM counts as dead, so no record, wake or socket message goes out.
    fn orphan(&mut self) {
        if self.dead == Some(libc::EBADFD) {
            return;
        }
        self.dead = Some(libc::EBADFD);
        if let Some(s) = &self.stream {
            if let Err(e) = s.shm.detach() {
                // Cannot detach: drop the mapping instead (the program's mmap pointers then
                // fault rather than write into the parent's stream).
                self.debug_line(format_args!("forked child: cannot detach the stream memory: {e}"));
                self.stream = None;
            }
        }
        self.debug_line(format_args!("forked child: this PCM belongs to the parent; closed here only"));
    }

    /// Whether `SHMIX_DEBUG` is on.
    #[must_use]
    pub fn debug(&self) -> bool {
        self.debug
    }

    /// The poll descriptors: `client_wake` and the control socket, both POLLIN.
    #[must_use]
    pub fn poll_fds(&self) -> [RawFd; 2] {
        [self.client_wake.as_raw_fd(), self.conn.raw_fd()]
    }

    /// Whether this is a capture (or monitor) PCM.
    #[must_use]
    pub fn is_capture(&self) -> bool {
        self.capture
    }

    /// prepare: the access in use and whether alsa-lib's mmap areas now point at the ring.
    pub fn set_access(&mut self, mmap: bool, in_place: bool) {
        self.mmap = mmap;
        self.in_place = mmap && in_place;
    }

    /// Whether the daemon is known to be gone (or the stream dead).
    #[must_use]
    pub fn dead(&self) -> Option<i32> {
        self.dead
    }

    /// Whether the daemon reported an xrun that the next prepare has not cleared yet.
    pub fn in_xrun(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.xrun)
    }

    /// The audio ring's base address and length in bytes, if a stream exists (for re-pointing
    /// mmap areas and for refusing sources that overlap it).
    #[must_use]
    pub fn ring_region(&self) -> Option<(*mut u8, usize)> {
        self.stream.as_ref().map(|s| (s.shm.audio_ptr(), s.shm.layout().audio_bytes as usize))
    }

    /// Bytes per frame of the stream, if one exists.
    #[must_use]
    pub fn frame_bytes(&self) -> Option<u32> {
        self.stream.as_ref().map(|s| s.params.frame_bytes())
    }

    fn check_alive(&self) -> Result<(), Errno> {
        match self.dead {
            Some(e) => Err(Errno(e)),
            None => Ok(()),
        }
    }

    // ----- setup ---------------------------------------------------------------------------

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
        self.client_wake.drain();
        self.efd_signalled = false;
        self.armed = false;
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
        self.stream = Some(Stream {
            shm,
            params,
            c2d: RingEnd::default(),
            d2c: RingEnd::default(),
            d2c_pos: 0,
            seq: 0,
            write_total: 0,
            read_total: 0,
            peer_seen: 0,
            phase: Phase::Setup,
            daemon_active: false,
            stop_pending: None,
            drain_pending: None,
            drained: false,
            xrun: false,
            started_ns: 0,
            last_delay: None,
            reported_hw: 0,
            restart_pending: false,
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
        if !matches!(s.phase, Phase::Setup | Phase::Prepared) {
            crate::user_error("the channel map can only be changed while the stream is stopped");
            return Err(Errno(libc::EBUSY));
        }
        let (params, phase) = (s.params, s.phase);
        let fb = params.frame_bytes() as usize;
        let queued = if phase == Phase::Prepared && !self.capture {
            // Not started: nothing consumed, the frames written so far sit at ring index 0.
            let frames = s.write_total.min(u64::from(params.buffer_frames)) as usize;
            let mut buf = vec![0u8; frames * fb];
            s.shm.read_audio(0, &mut buf);
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
        if phase == Phase::Prepared {
            let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
            s.phase = Phase::Prepared;
            if !queued.is_empty() {
                s.shm.write_audio(0, &queued);
                s.write_total = (queued.len() / fb) as u64;
                // Publish: pairs with the daemon's Acquire load of audio_write.
                s.shm.audio_write().pos.store(s.write_total as u32, Ordering::Release);
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

    // ----- control -------------------------------------------------------------------------

    fn push(&mut self, make: impl FnOnce(u32) -> Record) -> Result<u32, Errno> {
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        s.seq = s.seq.wrapping_add(1);
        let seq = s.seq;
        let ok = s.shm.push_record(Ring::ClientToDaemon, &mut s.c2d, make(seq)).map_err(|_| Errno(libc::EPROTO))?;
        if !ok {
            // 64 records unread: the daemon is not serving this stream.
            return Err(Errno(libc::EIO));
        }
        if wake::wake_if_sleeping(&s.shm.ring_read_cursor(Ring::ClientToDaemon).sleeping) {
            self.daemon_wake.signal();
        }
        Ok(seq)
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
        s.daemon_active = true;
        s.restart_pending = false;
        s.phase = Phase::Running;
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
        let had_drain = s.drain_pending.take().is_some();
        s.phase = Phase::Setup;
        s.restart_pending = false;
        if s.daemon_active && s.stop_pending.is_none() && self.dead.is_none() {
            match self.push(|seq| Record::Stop { seq }) {
                Ok(seq) => {
                    if let Some(s) = self.stream.as_mut() {
                        s.stop_pending = Some(seq);
                        s.daemon_active = false;
                    }
                }
                Err(e) => self.debug_line(format_args!("cannot post Stop: errno {}", e.0)),
            }
        }
        if had_drain && !self.efd_signalled {
            // A drain polling in another thread wakes, sees its drain gone and returns.
            self.client_wake_peer.signal();
            self.efd_signalled = true;
        }
    }

    /// pause(enable): `Pause{seq}` / `Resume{seq}`.
    ///
    /// # Errors
    /// Dead daemon or no stream.
    pub fn pause(&mut self, enable: bool) -> Result<(), Errno> {
        self.refresh();
        self.check_alive()?;
        if self.stream.as_ref().is_some_and(|s| s.restart_pending) {
            // Reset while paused: the daemon side is stopped; resuming starts it again.
            if !enable {
                return self.start();
            }
        } else if enable {
            self.push(|seq| Record::Pause { seq })?;
        } else {
            self.push(|seq| Record::Resume { seq })?;
        }
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        s.phase = if enable { Phase::Paused } else { Phase::Running };
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
        s.phase = Phase::Prepared;
        s.drain_pending = None;
        s.drained = false;
        s.xrun = false;
        self.sync_readiness();
        Ok(())
    }

    /// Stops the daemon side if it may run and waits (bounded by [`STOP_WAIT`]) for its
    /// `Stopped`: afterwards it does not touch the audio cursors (PROTOCOL.md).
    fn stop_and_wait(&mut self) -> Result<(), Errno> {
        let s = self.stream.as_ref().ok_or(Errno(libc::EBADFD))?;
        if s.daemon_active {
            self.stop();
        }
        let deadline = Instant::now() + STOP_WAIT;
        while self.stream.as_ref().is_some_and(|s| s.stop_pending.is_some()) {
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
    fn zero_positions(s: &mut Stream) {
        s.shm.audio_write().pos.store(0, Ordering::Release);
        s.shm.audio_read().pos.store(0, Ordering::Release);
        s.write_total = 0;
        s.read_total = 0;
        s.peer_seen = 0;
        s.reported_hw = 0;
        s.last_delay = None;
        s.restart_pending = false;
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
        if appl_ptr != 0 || hw_ptr != 0 || s.xrun || s.drain_pending.is_some() {
            return Ok(false);
        }
        if !matches!(s.phase, Phase::Prepared | Phase::Running | Phase::Paused) {
            return Ok(false);
        }
        let own = if capture { s.read_total } else { s.write_total };
        let own = if boundary == 0 { own } else { own % boundary };
        if s.reported_hw == 0 && own == 0 {
            return Ok(false); // nothing happened since prepare (or the last reset)
        }
        let phase = s.phase;
        self.stop_and_wait()?;
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        Self::zero_positions(s);
        s.phase = phase;
        // Timing snapshots from before the reset describe the old positions.
        s.started_ns = now_ns();
        match phase {
            Phase::Running if capture => self.start()?,
            Phase::Running | Phase::Paused => s.restart_pending = true,
            _ => {}
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
            let seq = match s.drain_pending {
                Some(seq) => seq,
                None => {
                    // Capture: a drain stops the daemon side (answered Drained); what was
                    // captured stays readable. Nothing to do when it is not running.
                    if !s.daemon_active && (capture || s.write_total == s.read_total) {
                        return Ok(()); // nothing queued, never started
                    }
                    let need_start = !s.daemon_active;
                    s.phase = Phase::Draining;
                    s.drained = false;
                    if need_start {
                        p.push(|seq| Record::Start { seq })?;
                        let s = p.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
                        s.daemon_active = true;
                        s.restart_pending = false;
                        s.started_ns = now_ns();
                    }
                    let seq = p.push(|seq| Record::Drain { seq })?;
                    let s = p.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
                    s.drain_pending = Some(seq);
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
                if s.drain_pending != Some(seq) {
                    return Ok(()); // dropped meanwhile (abort by snd_pcm_drop)
                }
                if s.drained {
                    p.stream.as_mut().ok_or(Errno(libc::EBADFD))?.drain_pending = None;
                    p.sync_readiness();
                    return Ok(());
                }
                if s.xrun {
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

    // ----- data path ----------------------------------------------------------------------

    /// Our cursor's count since prepare: what we produced (playback) or consumed (capture).
    fn own_total(&self, s: &Stream) -> u64 {
        if self.capture {
            s.read_total
        } else {
            s.write_total
        }
    }

    /// Where the frame `skip` frames after alsa-lib's `appl_ptr` lives in the ring, and the count
    /// since prepare of the one at `appl_ptr`.
    fn target(&self, appl_ptr: u64, skip: u32) -> Result<(u64, *mut u8), Errno> {
        let s = self.stream.as_ref().ok_or(Errno(libc::EBADFD))?;
        let own = self.own_total(s);
        // appl_ptr wraps at the boundary; our count does not: move by the signed difference
        // (handles rewind/forward, which alsa-lib does without telling us).
        let start = if self.boundary == 0 {
            appl_ptr
        } else {
            // Both below the boundary in practice (it is near 2^62): conditional subtractions
            // instead of three 64-bit divisions per callback.
            let ours = wrap(own, self.boundary);
            let diff = wrap(wrap(appl_ptr, self.boundary) + (self.boundary - ours), self.boundary);
            if diff <= self.boundary / 2 {
                own + diff
            } else {
                own.saturating_sub(self.boundary - diff)
            }
        };
        let buffer = s.params.buffer_frames;
        let index = cursor::ring_index(start + u64::from(skip), buffer);
        let addr = s.shm.audio_ptr().wrapping_add(index as usize * s.params.frame_bytes() as usize);
        Ok((start, addr))
    }

    /// The ring address the frame `skip` after `appl_ptr` belongs at (transfer compares the
    /// application's area with it).
    ///
    /// # Errors
    /// No stream.
    pub fn transfer_target(&self, appl_ptr: u64, skip: u32) -> Result<*mut u8, Errno> {
        self.target(appl_ptr, skip).map(|(_, a)| a)
    }

    /// transfer. Playback: copies (or, in place, only publishes) `frames` frames starting at
    /// `appl_ptr`, then publishes the write position. Capture: copies `frames` frames starting
    /// `skip` frames after `appl_ptr` out of the ring (in place: nothing to copy), then publishes
    /// the read position: `appl_ptr + frames` for RW access (the frames are in the program's
    /// buffer now), only `appl_ptr` for MMAP access (alsa-lib calls transfer from avail_update
    /// before the program has read anything; the program's commit moves `appl_ptr` later).
    ///
    /// # Errors
    /// Dead daemon, no stream, or a source that does not match `frames`.
    pub fn transfer(&mut self, appl_ptr: u64, skip: u32, frames: u32, src: Source<'_>) -> Result<u32, Errno> {
        self.check_alive()?;
        let (start, _) = self.target(appl_ptr, skip)?;
        if self.capture {
            return self.transfer_capture(start, skip, frames, src);
        }
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        let buffer = s.params.buffer_frames;
        if frames > buffer {
            return Err(Errno(libc::EINVAL));
        }
        let end = start + u64::from(frames);
        if end.saturating_sub(s.read_total) > u64::from(buffer) {
            return Err(Errno(libc::EPIPE)); // would overwrite what the daemon has not read
        }
        match src {
            Source::InPlace => self.counters.zero_copy_frames += u64::from(frames),
            Source::Frames(bytes) => {
                if bytes.len() != frames as usize * s.params.frame_bytes() as usize {
                    return Err(Errno(libc::EINVAL));
                }
                s.shm.write_audio(cursor::ring_index(start, buffer), bytes);
                self.counters.copied_frames += u64::from(frames);
            }
            Source::Dest(_) => return Err(Errno(libc::EINVAL)),
        }
        if end > s.write_total {
            s.write_total = end;
            // Publish: pairs with the daemon's Acquire load of audio_write.
            s.shm.audio_write().pos.store(end as u32, Ordering::Release);
        }
        if s.restart_pending && s.phase == Phase::Running {
            self.start()?; // the first frames after a reset while running
        }
        self.sync_readiness();
        Ok(frames)
    }

    fn transfer_capture(&mut self, start: u64, skip: u32, frames: u32, dst: Source<'_>) -> Result<u32, Errno> {
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        let buffer = s.params.buffer_frames;
        if frames > buffer {
            return Err(Errno(libc::EINVAL));
        }
        let first = start + u64::from(skip);
        let end = first + u64::from(frames);
        if end > s.write_total || s.write_total - first > u64::from(buffer) {
            return Err(Errno(libc::EIO)); // not captured yet, or already overwritten: never expected
        }
        match dst {
            Source::InPlace => {}
            Source::Dest(bytes) => {
                if bytes.len() != frames as usize * s.params.frame_bytes() as usize {
                    return Err(Errno(libc::EINVAL));
                }
                s.shm.read_audio(cursor::ring_index(first, buffer), bytes);
                self.counters.copied_frames += u64::from(frames);
            }
            Source::Frames(_) => return Err(Errno(libc::EINVAL)),
        }
        if self.mmap {
            self.consume_to(start);
        } else {
            self.consume_to(end);
        }
        self.sync_readiness();
        Ok(frames)
    }

    /// Capture: publishes that the program has read everything before `pos` (a count since
    /// prepare). Never moves backwards nor past what the daemon wrote.
    fn consume_to(&mut self, pos: u64) {
        let Some(s) = self.stream.as_mut() else { return };
        if pos <= s.read_total || pos > s.write_total {
            return;
        }
        if self.in_place {
            self.counters.zero_copy_frames += pos - s.read_total;
        }
        s.read_total = pos;
        // Publish: pairs with the daemon's Acquire load of audio_read (the frames before `pos`
        // are free for it to overwrite).
        s.shm.audio_read().pos.store(pos as u32, Ordering::Release);
    }

    /// Capture with MMAP access: the program commits (moves `appl_ptr`) without a callback, so
    /// every callback that sees `appl_ptr` publishes it.
    fn consume_committed(&mut self, appl_ptr: Option<u64>) {
        if !(self.capture && self.mmap) {
            return;
        }
        if let Some((start, _)) = appl_ptr.and_then(|a| self.target(a, 0).ok()) {
            self.consume_to(start);
        }
    }

    /// pointer: the daemon's position as an absolute frame count since prepare, wrapped at the
    /// boundary (`SND_PCM_IOPLUG_FLAG_BOUNDARY_WA`: pcm_ioplug.c computes the delta from the
    /// previous value modulo the boundary): its read position for playback, its write position
    /// for capture. EPIPE after an xrun; the errno once dead. `appl_ptr` is alsa-lib's (capture
    /// with MMAP access publishes it as our read position).
    ///
    /// # Errors
    /// EPIPE (xrun), ENODEV/ESHUTDOWN (daemon gone), EBADFD (no stream).
    pub fn pointer(&mut self, appl_ptr: Option<u64>) -> Result<u64, Errno> {
        self.refresh();
        self.consume_committed(appl_ptr);
        self.sync_readiness();
        self.check_alive()?;
        let s = self.stream.as_ref().ok_or(Errno(libc::EBADFD))?;
        if s.xrun {
            return Err(Errno(libc::EPIPE));
        }
        let hw = if self.capture { s.write_total } else { s.read_total };
        let hw = if self.boundary == 0 { hw } else { wrap(hw, self.boundary) };
        if let Some(s) = self.stream.as_mut() {
            s.reported_hw = hw;
        }
        Ok(hw)
    }

    /// poll_revents: `sock_revents` are the socket's returned events (checked for EOF only when
    /// set). Returns POLLOUT (playback: avail >= avail_min) or POLLIN (capture: fill >=
    /// avail_min), POLLERR on xrun/disconnect/fatal. `appl_ptr` as for [`Self::pointer`].
    pub fn revents(&mut self, sock_revents: i16, efd_revents: i16, appl_ptr: Option<u64>) -> u16 {
        if sock_revents != 0 && self.dead.is_none() && self.conn.peer_gone() {
            self.debug_line(format_args!("shmixd closed the connection"));
            self.dead = Some(libc::ENODEV);
        }
        if efd_revents & libc::POLLIN != 0 && self.armed {
            // A late write of the daemon for an earlier sleep (it took the flag, we woke by
            // other means, drained and armed again, then its write landed): the fd is signalled
            // while we wait. Believe poll, so sync_readiness drains it instead of letting the
            // program spin in poll until the daemon's next wake.
            self.efd_signalled = true;
        }
        self.refresh();
        self.consume_committed(appl_ptr);
        self.sync_readiness();
        if self.dead.is_some() || self.stream.as_ref().is_some_and(|s| s.xrun) {
            return libc::POLLERR as u16;
        }
        match (self.want_ready(), self.capture) {
            (false, _) => 0,
            (true, false) => libc::POLLOUT as u16,
            (true, true) => libc::POLLIN as u16,
        }
    }

    /// delay: frames until a frame written now is heard. Valid from prepare, never negative, does
    /// not grow between writes.
    ///
    /// # Errors
    /// EPIPE after an xrun, the errno once dead.
    pub fn delay(&mut self) -> Result<i64, Errno> {
        self.refresh();
        self.check_alive()?;
        let capture = self.capture;
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        if s.xrun {
            return Err(Errno(libc::EPIPE));
        }
        let fill = s.write_total.saturating_sub(s.read_total) as i64;
        let running = matches!(s.phase, Phase::Running | Phase::Paused | Phase::Draining);
        if capture {
            // Frames captured but not yet read: those in the ring, those the device and the
            // resampler hold (queued), and those captured since the snapshot.
            let snap = if running { Self::snapshot(s) } else { None };
            return Ok(snap.map_or(fill, |snap| {
                capture_delay(
                    s.read_total as u32,
                    snap,
                    now_ns(),
                    s.params.rate,
                    s.params.buffer_frames,
                    s.phase == Phase::Paused,
                )
                .max(fill)
            }));
        }
        let from_snapshot = if running {
            Self::snapshot(s).and_then(|snap| {
                raw_delay(
                    s.write_total as u32,
                    snap,
                    now_ns(),
                    s.params.rate,
                    s.params.buffer_frames,
                    s.phase == Phase::Paused,
                )
            })
        } else {
            None
        };
        // The frames still in our ring have not been played whatever the clock says: when the
        // daemon stalls, the snapshot ages but nothing is consumed. (Applied before the
        // monotonic cap, which then cannot go below it either: the fill never grows without a
        // write.)
        let d = monotonic_delay(from_snapshot.unwrap_or(fill).max(fill), s.last_delay, s.write_total);
        if running {
            s.last_delay = Some((d, s.write_total));
        }
        Ok(d)
    }

    // ----- internals ----------------------------------------------------------------------

    /// The daemon's timing snapshot of this run (taken since the last start): a fresh one, or
    /// the last one read whole when the daemon is inside its write (see `last_snapshot`).
    fn snapshot(s: &mut Stream) -> Option<(u32, u32, u64)> {
        if let Some(snap) = s.shm.read_timing() {
            s.last_snapshot = Some(snap);
        }
        s.last_snapshot.filter(|&(_, _, ts)| ts >= s.started_ns)
    }

    /// Takes the daemon's records and its read position into private state. No syscall.
    fn refresh(&mut self) {
        let capture = self.capture;
        let Some(s) = self.stream.as_mut() else { return };
        let mut violation: Option<&'static str> = None;
        // At most one ring's worth per call: a daemon that keeps writing records cannot hold the
        // program's thread here.
        for _ in 0..s.shm.layout().msg_records {
            match s.shm.pop_record(Ring::DaemonToClient, &mut s.d2c) {
                Ok(None) => break,
                Ok(Some(Ok(rec))) => {
                    s.d2c_pos = s.d2c_pos.wrapping_add(1);
                    match rec {
                        Record::Stopped { seq, .. } => {
                            if s.stop_pending == Some(seq) {
                                s.stop_pending = None;
                            }
                        }
                        Record::Xrun { .. } => {
                            if s.stop_pending.is_none() && s.daemon_active {
                                s.xrun = true;
                                s.daemon_active = false;
                                self.counters.xruns += 1;
                            }
                        }
                        Record::Drained { seq, .. } => {
                            if s.drain_pending == Some(seq) {
                                s.drained = true;
                                s.daemon_active = false;
                            }
                        }
                        Record::Fatal { errno } => {
                            self.dead = Some(match errno as i32 {
                                libc::ESHUTDOWN => libc::ESHUTDOWN,
                                _ => libc::ENODEV,
                            });
                        }
                        _ => violation = Some("daemon sent a client request record"),
                    }
                }
                Ok(Some(Err(_))) => {
                    s.d2c_pos = s.d2c_pos.wrapping_add(1);
                    violation = Some("record does not decode");
                }
                Err(_) => {
                    violation = Some("d2c ring cursor out of range");
                    break;
                }
            }
        }
        if capture {
            // Pairs with the daemon's Release store after it produced frames; it never writes
            // more than one buffer ahead of our read position.
            let new = s.shm.audio_write().pos.load(Ordering::Acquire);
            let limit = (s.read_total + u64::from(s.params.buffer_frames)) as u32;
            match cursor::advance(s.peer_seen, new, limit) {
                Ok(moved) => {
                    s.write_total += u64::from(moved);
                    s.peer_seen = new;
                }
                Err(_) => violation = Some("audio write cursor out of range"),
            }
        } else {
            // Pairs with the daemon's Release store after it consumed frames.
            let new = s.shm.audio_read().pos.load(Ordering::Acquire);
            match cursor::advance(s.peer_seen, new, s.write_total as u32) {
                Ok(moved) => {
                    s.read_total += u64::from(moved);
                    s.peer_seen = new;
                }
                Err(_) => violation = Some("audio read cursor out of range"),
            }
        }
        if let Some(what) = violation {
            if self.dead.is_none() {
                self.debug_line(format_args!("protocol violation by shmixd: {what}"));
            }
            self.dead = Some(libc::EPROTO);
        }
    }

    /// What the program may transfer now: free room (playback) or captured frames (capture).
    fn avail(&self, s: &Stream) -> u64 {
        let fill = s.write_total.saturating_sub(s.read_total);
        if self.capture {
            fill
        } else {
            u64::from(s.params.buffer_frames).saturating_sub(fill)
        }
    }

    /// Our audio cursor (its `sleeping` flag is the one we sleep on).
    fn own_cursor(capture: bool, s: &Stream) -> &Cursor {
        if capture {
            s.shm.audio_read()
        } else {
            s.shm.audio_write()
        }
    }

    /// Whether poll should report the stream ready (POLLOUT/POLLIN or POLLERR).
    fn want_ready(&self) -> bool {
        if self.dead.is_some() {
            return true;
        }
        let Some(s) = &self.stream else { return false };
        if s.xrun {
            return true;
        }
        match s.phase {
            Phase::Prepared | Phase::Running => self.avail(s) >= u64::from(self.avail_min),
            Phase::Draining => s.drained,
            Phase::Setup | Phase::Paused => false,
        }
    }

    /// The recheck after setting `sleeping`: a fresh look at the read cursor and the d2c ring.
    fn fresh_ready(capture: bool, s: &Stream, avail_min: u32) -> bool {
        // Pairs with the daemon's Release stores of its cursors.
        let d2c_write = s.shm.ring_write_cursor(Ring::DaemonToClient).pos.load(Ordering::Acquire);
        if d2c_write != s.d2c_pos {
            return true;
        }
        if matches!(s.phase, Phase::Prepared | Phase::Running) && capture {
            let write = s.shm.audio_write().pos.load(Ordering::Acquire);
            let fill = write.wrapping_sub(s.read_total as u32);
            return fill > s.params.buffer_frames || fill >= avail_min;
        }
        if matches!(s.phase, Phase::Prepared | Phase::Running) {
            let read = s.shm.audio_read().pos.load(Ordering::Acquire);
            let fill = (s.write_total as u32).wrapping_sub(read);
            return fill > s.params.buffer_frames || s.params.buffer_frames - fill >= avail_min;
        }
        false
    }

    /// Makes `client_wake`'s readiness mirror [`Self::want_ready`] (PROTOCOL.md "Wakeups").
    /// Syscalls only on a change: an eventfd read when becoming not ready, a write when we must
    /// signal ourselves.
    fn sync_readiness(&mut self) {
        let want = self.want_ready();
        let capture = self.capture;
        let Some(s) = &self.stream else { return };
        // Statistics for `shmixctl stats` (the daemon treats them as untrusted numbers).
        let line = s.shm.avail_min();
        let c = self.counters;
        line.copied_frames.store(c.copied_frames - s.counters_base.copied_frames, Ordering::Relaxed);
        line.zero_copy_frames.store(c.zero_copy_frames - s.counters_base.zero_copy_frames, Ordering::Relaxed);
        let sleeping = &Self::own_cursor(capture, s).sleeping;
        if self.armed {
            if want {
                // Take the flag back; if the daemon already took it, it writes (or wrote) the fd.
                let we_took_it = sleeping.swap(0, Ordering::Relaxed) == 1;
                self.armed = false;
                self.efd_signalled = !we_took_it;
            } else if sleeping.load(Ordering::Relaxed) == 1 {
                if self.efd_signalled {
                    // We signalled it ourselves meanwhile (stop waking a drain): take it back.
                    self.client_wake.drain();
                    self.efd_signalled = false;
                }
                return; // still waiting, fd drained: the steady state costs nothing here
            } else {
                self.armed = false;
                self.efd_signalled = true;
            }
        }
        if want {
            if !self.efd_signalled {
                self.client_wake_peer.signal();
                self.efd_signalled = true;
            }
            return;
        }
        if self.efd_signalled {
            self.client_wake.drain(); // nothing there when the daemon has not signalled yet: fine
            self.efd_signalled = false;
        }
        if matches!(s.phase, Phase::Setup) {
            return; // nothing will change until prepare; nobody needs waking
        }
        match wake::prepare_sleep(sleeping, || Self::fresh_ready(capture, s, self.avail_min)) {
            SleepDecision::Sleep => self.armed = true,
            SleepDecision::Ready { peer_signals: true } => self.efd_signalled = true,
            SleepDecision::Ready { peer_signals: false } => {
                self.client_wake_peer.signal();
                self.efd_signalled = true;
            }
        }
    }

    /// For the bounded waits: arms `sleeping` so the daemon's next record wakes us. Returns false
    /// when something is already there (do not sleep).
    fn arm_for_records(&mut self) -> bool {
        let capture = self.capture;
        let Some(s) = &self.stream else { return false };
        if self.armed && Self::own_cursor(capture, s).sleeping.load(Ordering::Relaxed) == 1 {
            return true;
        }
        if self.armed {
            self.armed = false;
            self.efd_signalled = true;
            return false;
        }
        self.client_wake.drain();
        self.efd_signalled = false;
        let d2c_pos = s.d2c_pos;
        let sleeping = &Self::own_cursor(capture, s).sleeping;
        let ring = s.shm.ring_write_cursor(Ring::DaemonToClient);
        match wake::prepare_sleep(sleeping, || ring.pos.load(Ordering::Acquire) != d2c_pos) {
            SleepDecision::Sleep => {
                self.armed = true;
                true
            }
            SleepDecision::Ready { peer_signals } => {
                self.efd_signalled = peer_signals;
                false
            }
        }
    }

    /// One bounded wait on client_wake + socket (mutex held by the caller: prepare only).
    fn wait_once(&mut self, left: Duration) -> Result<(), Errno> {
        if !self.arm_for_records() {
            return Ok(());
        }
        let revents = poll_two(self.poll_fds(), left);
        if revents[1] != 0 && self.conn.peer_gone() {
            self.dead = Some(libc::ENODEV);
        }
        Ok(())
    }

    fn debug_line(&self, args: std::fmt::Arguments<'_>) {
        if self.debug {
            eprintln!("shmix: {args}");
        }
    }

    /// Close: the counters line under `SHMIX_DEBUG`. Everything else closes on drop (closing the
    /// socket destroys the stream on the daemon side).
    pub fn close(&self) {
        let c = self.counters;
        self.debug_line(format_args!(
            "frames copied {}, zero-copy {}, xruns {}",
            c.copied_frames, c.zero_copy_frames, c.xruns
        ));
    }
}

/// `poll` on two descriptors for POLLIN, at most `left`; returns each one's revents (EINTR and
/// timeouts return zeros).
/// `x % boundary` (`boundary > 0`) without a division when `x` is below twice the boundary,
/// which the callers' values are (counts since prepare, sums of two wrapped values).
#[inline]
fn wrap(x: u64, boundary: u64) -> u64 {
    if x < boundary {
        x
    } else if x - boundary < boundary {
        x - boundary
    } else {
        x % boundary
    }
}

fn poll_two(fds: [RawFd; 2], left: Duration) -> [i16; 2] {
    let mut pfds = fds.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: `pfds` is a valid array of 2 pollfds that outlives the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
    if n <= 0 {
        return [0, 0];
    }
    [pfds[0].revents, pfds[1].revents]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_is_modulo() {
        for b in [1u64, 2, 3, 1024, 1 << 62, u64::MAX / 2 + 1, u64::MAX] {
            for x in
                [0u64, 1, 2, b - 1, b, b.wrapping_add(1), b.wrapping_mul(2).wrapping_sub(1), u64::MAX - 1, u64::MAX]
            {
                assert_eq!(wrap(x, b), x % b, "x {x} b {b}");
            }
        }
    }

    #[test]
    fn delay_counts_queue_and_elapsed_and_never_goes_negative() {
        // 1000 frames in the ring, 480 in the device, snapshot 5 ms old at 48 kHz: -240.
        let d = raw_delay(2000, (1000, 480, 1_000_000), 6_000_000, 48000, 4096, false).unwrap();
        assert_eq!(d, 1000 + 480 - 240);
        assert_eq!(raw_delay(2000, (1000, 480, 1_000_000), 6_000_000, 48000, 4096, true), Some(1480));
        assert_eq!(raw_delay(2000, (1000, 0, 0), 10_000_000_000, 48000, 4096, false), Some(0));
        // Across the u32 wrap.
        assert_eq!(raw_delay(5, (u32::MAX - 4, 0, 0), 0, 48000, 4096, false), Some(10));
        // The stream's rate counts, not the device's: a 44.1 kHz stream on a 48 kHz device,
        // snapshot 10 ms old, 441 stream frames elapsed (queued is in stream frames too).
        assert_eq!(raw_delay(2000, (1000, 441, 1_000_000), 11_000_000, 44100, 4096, false), Some(1000));
        // A snapshot beyond our write position is ignored.
        assert_eq!(raw_delay(5, (10, 0, 0), 0, 48000, 4096, false), None);
        // A snapshot taken just before the daemon's last take, the ring refilled since: the
        // frames taken since are in the device queue, still counted.
        assert_eq!(raw_delay(4096 + 256, (0, 1024, 1_000_000), 1_000_000, 48000, 4096, false), Some(4096 + 256 + 1024));
        // More than two buffers behind our writes is not a snapshot of this ring.
        assert_eq!(raw_delay(8193, (0, 0, 0), 0, 48000, 4096, false), None);
    }

    #[test]
    fn capture_delay_counts_unread_queue_and_elapsed() {
        // Snapshot: daemon at 3000, 480 queued, 5 ms ago at 48 kHz (+240); we read up to 1000.
        assert_eq!(capture_delay(1000, (3000, 480, 1_000_000), 6_000_000, 48000, 4096, false), 2000 + 480 + 240);
        assert_eq!(capture_delay(1000, (3000, 480, 1_000_000), 6_000_000, 48000, 4096, true), 2480);
        // We already read past the (older) snapshot position.
        assert_eq!(capture_delay(3100, (3000, 0, 1_000_000), 1_000_000, 48000, 4096, false), 0);
        assert_eq!(capture_delay(3100, (3000, 300, 1_000_000), 1_000_000, 48000, 4096, false), 200);
        // Across the u32 wrap; a stalled daemon adds at most one buffer.
        assert_eq!(capture_delay(u32::MAX - 4, (5, 0, 0), 0, 48000, 4096, false), 10);
        assert_eq!(capture_delay(0, (0, 0, 0), 60_000_000_000, 48000, 4096, false), 4096);
    }

    #[test]
    fn mmap_skip_finds_the_wrapped_part() {
        // appl_ptr at ring index 900 of 1024: the first call at 900 (skip 0), the wrapped part
        // at offset 0 is 124 frames further.
        assert_eq!(mmap_skip(900, 900, 1024), 0);
        assert_eq!(mmap_skip(0, 900, 1024), 124);
        assert_eq!(mmap_skip(0, 5 * 1024 + 900, 1024), 124);
        assert_eq!(mmap_skip(7, 7, 0), 0);
    }

    #[test]
    fn delay_does_not_grow_between_writes() {
        assert_eq!(monotonic_delay(900, Some((800, 5000)), 5000), 800);
        assert_eq!(monotonic_delay(900, Some((800, 5000)), 5256), 900);
        assert_eq!(monotonic_delay(700, Some((800, 5000)), 5000), 700);
        assert_eq!(monotonic_delay(700, None, 5000), 700);
    }
}

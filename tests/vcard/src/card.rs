//! The virtual card's model: a hardware pointer that follows CLOCK_MONOTONIC from the moment of
//! start, playback frames copied from alsa-lib's buffer to `playback_file`, capture frames copied
//! from `capture_file` into it, xrun and fault injection (xrun, unplug, suspend/resume), and the
//! timerfd deadline.
//! `ioplug.rs` owns the FFI; this module sees alsa-lib only through [`IoView`] and [`Area`].
//! Runs in: whichever application thread calls the PCM (under the plugin's mutex). RT: yes (no
//! allocation; syscalls: write/pread on the files, timerfd_settime/read).

use std::fs::File;
use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;

use crate::config::Config;
use crate::sys;
use crate::timer::TimerFd;

/// A positive errno that leaves a callback as `-errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub libc::c_int);

/// Stream direction of this PCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The card plays what the application writes.
    Playback,
    /// The card records what the application reads.
    Capture,
}

/// What a callback sees of alsa-lib's side at the moment of the call.
#[derive(Debug, Clone, Copy)]
pub struct IoView {
    /// `io->appl_ptr`: the application pointer, wrapped at the boundary.
    pub appl: u64,
    /// `io->state == SND_PCM_STATE_DRAINING`.
    pub draining: bool,
    /// `io->state` itself (what a suspend saves and `resume` restores).
    pub state: sys::snd_pcm_state_t,
}

impl IoView {
    /// A view of a stream in `state` with the application at `appl`.
    pub fn new(appl: u64, state: sys::snd_pcm_state_t) -> Self {
        Self { appl, draining: state == sys::SND_PCM_STATE_DRAINING, state }
    }
}

/// alsa-lib's interleaved ring buffer (`mmap_rw = 1`: its own `malloc`), checked at prepare.
#[derive(Debug, Clone, Copy)]
pub struct Area {
    /// First byte of frame 0.
    pub base: *mut u8,
    /// Buffer size in frames (the ring wraps there).
    pub frames: u64,
}

/// Why `pointer` reports no position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointerError {
    /// The writer fell behind (playback) or the reader did (capture), or an injected xrun.
    Xrun,
    /// `disconnect_at_ms` has passed: the card is unplugged.
    Gone,
    /// The card is asleep (`suspend_at_ms`) until a successful `resume` (or a prepare).
    Suspended,
}

/// What `poll_revents` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Nothing to do yet.
    Wait,
    /// avail reached avail_min, or an xrun the application finds out about from `pointer`.
    Ready,
    /// The card is suspended: ready with POLLERR, as the kernel reports a SUSPENDED stream.
    Error,
}

/// One sleep of the card (`suspend_at_ms` for `suspend_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sleep {
    /// The moment the card fell asleep (the scheduled one, not when a callback noticed).
    pub since_ns: u64,
    /// The first moment `resume` succeeds.
    pub wake_ns: u64,
    /// alsa-lib's state when the card fell asleep, which `resume` restores.
    pub host_state: sys::snd_pcm_state_t,
    /// Whether the clock ran (it continues at resume).
    pub was_running: bool,
}

/// Host states the kernel suspends (`snd_pcm_pre_suspend` skips OPEN, SETUP, DISCONNECTED).
fn suspendable(state: sys::snd_pcm_state_t) -> bool {
    matches!(
        state,
        sys::SND_PCM_STATE_PREPARED
            | sys::SND_PCM_STATE_RUNNING
            | sys::SND_PCM_STATE_XRUN
            | sys::SND_PCM_STATE_DRAINING
            | sys::SND_PCM_STATE_PAUSED
    )
}

/// The card's sample clock: frames elapsed for nanoseconds elapsed, with skew.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    frames_per_ns: f64,
}

impl Clock {
    /// A clock of `rate` frames per second, off by `skew_ppm` parts per million.
    pub fn new(rate: u32, skew_ppm: f64) -> Self {
        Self { frames_per_ns: f64::from(rate) * (1.0 + skew_ppm / 1e6) / 1e9 }
    }

    /// Whole frames elapsed after `ns` nanoseconds (monotonic in `ns`).
    pub fn frames(&self, ns: u64) -> u64 {
        (ns as f64 * self.frames_per_ns) as u64
    }

    /// The first nanosecond at which `frames(ns) >= frames`.
    pub fn ns_for(&self, frames: u64) -> u64 {
        let mut ns = (frames as f64 / self.frames_per_ns).ceil() as u64;
        // f64 rounding may be off by a little either way: settle on the exact first nanosecond.
        for _ in 0..64 {
            if self.frames(ns) >= frames {
                break;
            }
            ns += 1;
        }
        for _ in 0..64 {
            if ns == 0 || self.frames(ns - 1) < frames {
                break;
            }
            ns -= 1;
        }
        ns
    }
}

/// One virtual card (one open PCM). Positions are unwrapped `u64` frames since prepare;
/// alsa-lib's are wrapped at `boundary`.
#[derive(Debug)]
pub struct Card {
    cfg: Config,
    dir: Direction,
    frame_bytes: u64,
    clock: Clock,
    timer: TimerFd,
    playback_file: Option<File>,
    capture_file: Option<File>,
    /// Frames of `capture_file` consumed since open (the file is a signal that goes on in time).
    capture_pos_frames: u64,
    capture_eof: bool,
    /// `loopback`: byte offset in `playback_file` (read through `capture_file`) of the next frame
    /// to capture; set to the file's end at the first start.
    loopback_pos: Option<u64>,
    write_failed: bool,
    // From hw/sw params and prepare.
    avail_min: u64,
    stop_threshold: u64,
    boundary: u64,
    area: Option<Area>,
    // Run state.
    running: bool,
    seg_start_ns: u64,
    base_frames: u64,
    hw_frames: u64,
    xrun: bool,
    first_start_ns: Option<u64>,
    xrun_injected: bool,
    /// `xrun_every_ms`: when the next storm xrun is due (set at the first start).
    next_storm_xrun_ns: Option<u64>,
    gone: bool,
    /// The one suspend has happened (or passed while the stream was not suspendable).
    suspend_injected: bool,
    asleep: Option<Sleep>,
    /// `clock_file`, opened for appending (playback only).
    clock_file: Option<File>,
}

const ENODEV: Errno = Errno(libc::ENODEV);

/// `capture_continue`: where the last capture card closed on each `capture_file` (frames).
static CAPTURE_POSITIONS: std::sync::Mutex<Vec<(std::path::PathBuf, u64)>> = std::sync::Mutex::new(Vec::new());

impl Drop for Card {
    fn drop(&mut self) {
        if let Some(path) = self.continue_path() {
            let mut all = CAPTURE_POSITIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            all.retain(|(p, _)| *p != path);
            all.push((path, self.capture_pos_frames));
        }
    }
}

impl Card {
    /// A stopped card; `playback_file`/`capture_file` are already open (or `None`).
    pub fn new(
        cfg: Config,
        dir: Direction,
        timer: TimerFd,
        playback_file: Option<File>,
        capture_file: Option<File>,
    ) -> Self {
        Self {
            frame_bytes: u64::from(cfg.frame_bytes()),
            clock: Clock::new(cfg.rate, cfg.skew_ppm),
            cfg,
            dir,
            timer,
            playback_file,
            capture_file,
            capture_pos_frames: 0,
            capture_eof: false,
            loopback_pos: None,
            write_failed: false,
            avail_min: 1,
            stop_threshold: u64::MAX,
            boundary: 0,
            area: None,
            running: false,
            seg_start_ns: 0,
            base_frames: 0,
            hw_frames: 0,
            xrun: false,
            first_start_ns: None,
            xrun_injected: false,
            next_storm_xrun_ns: None,
            gone: false,
            suspend_injected: false,
            asleep: None,
            clock_file: None,
        }
        .continued()
    }

    /// `capture_continue`: starts where the last card on the same capture file stopped.
    fn continued(mut self) -> Self {
        if let Some(path) = self.continue_path() {
            let all = CAPTURE_POSITIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, pos)) = all.iter().find(|(p, _)| *p == path) {
                self.capture_pos_frames = *pos;
            }
        }
        self
    }

    /// `capture_continue` on a capture card with a `capture_file`: that file's path.
    fn continue_path(&self) -> Option<std::path::PathBuf> {
        let on = self.cfg.capture_continue && self.dir == Direction::Capture && !self.cfg.loopback;
        self.cfg.capture_file.clone().filter(|_| on)
    }

    /// Adds the `clock_file` (see [`Config::clock_file`]).
    #[must_use]
    pub fn with_clock_file(mut self, f: Option<File>) -> Self {
        self.clock_file = f;
        self
    }

    /// `clock_file`: the clock (re)starts at `now_ns` with the frame the file has next.
    fn log_clock_start(&mut self, now_ns: u64) {
        let Some(f) = self.clock_file.as_mut() else { return };
        let frames =
            self.playback_file.as_ref().and_then(|p| p.metadata().ok()).map_or(0, |m| m.len()) / self.frame_bytes;
        if let Err(e) = writeln!(f, "start {now_ns} {frames}") {
            if !self.write_failed {
                eprintln!("shmix_vcard: writing clock_file failed: {e}");
                self.write_failed = true;
            }
        }
    }

    /// The configuration the card was opened with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The stream direction.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// The timerfd to poll.
    pub fn poll_fd(&self) -> RawFd {
        self.timer.raw()
    }

    fn ms_after_first_start(&self, ms: Option<u64>) -> Option<u64> {
        Some(self.first_start_ns? + ms? * 1_000_000)
    }

    /// Marks the card gone once `disconnect_at_ms` has passed or `gone_file` exists (one stat
    /// per call while the card is there).
    ///
    /// # Errors
    /// `ENODEV` from then on.
    pub fn check_gone(&mut self, now_ns: u64) -> Result<(), Errno> {
        if !self.gone {
            if let Some(t) = self.ms_after_first_start(self.cfg.disconnect_at_ms) {
                self.gone = now_ns >= t;
            }
        }
        if !self.gone && self.cfg.gone_file.as_deref().is_some_and(|p| std::fs::symlink_metadata(p).is_ok()) {
            self.gone = true;
        }
        if self.gone {
            Err(ENODEV)
        } else {
            Ok(())
        }
    }

    /// The current sleep, if the card is suspended.
    pub fn asleep(&self) -> Option<Sleep> {
        self.asleep
    }

    /// `suspend_at_ms` has come and the stream is in a state the kernel would suspend.
    fn suspend_due(&self, now_ns: u64, view: IoView) -> bool {
        !self.suspend_injected
            && !self.gone
            && suspendable(view.state)
            && self.ms_after_first_start(self.cfg.suspend_at_ms).is_some_and(|t| now_ns >= t)
    }

    /// The suspend time passed without a callback seeing a suspendable stream (stopped or being
    /// set up): like the kernel, that stream is not suspended.
    fn skip_due_suspend(&mut self, now_ns: u64) {
        if self.ms_after_first_start(self.cfg.suspend_at_ms).is_some_and(|t| now_ns >= t) {
            self.suspend_injected = true;
        }
    }

    /// Falls asleep at the scheduled moment: the hardware stops where the clock was then
    /// (playback: at most at the last written frame, so an underrun the writer had not noticed
    /// yet is forgiven; the frames still in the buffer stay there and play after the resume).
    fn fall_asleep(&mut self, now_ns: u64, view: IoView) {
        let since_ns = self.ms_after_first_start(self.cfg.suspend_at_ms).unwrap_or(now_ns).min(now_ns);
        if self.running {
            let clock = self.clock_frames(since_ns.max(self.seg_start_ns));
            match self.dir {
                Direction::Playback => {
                    let appl = self.appl_frames(view.appl);
                    self.play_until(clock.min(appl), appl);
                }
                Direction::Capture => self.capture_until(clock.max(self.hw_frames)),
            }
        }
        self.asleep = Some(Sleep {
            since_ns,
            wake_ns: since_ns.saturating_add(self.cfg.suspend_ms.saturating_mul(1_000_000)),
            host_state: view.state,
            was_running: self.running,
        });
        self.suspend_injected = true;
        self.running = false;
        self.base_frames = self.hw_frames;
        self.timer.fire_now();
    }

    /// The `resume` callback's model: fails with `EAGAIN` until `suspend_ms` after the card fell
    /// asleep; then the clock continues from where it stopped (frames still in the buffer play
    /// next) and the state alsa-lib had at the suspend is returned for it to be restored.
    ///
    /// # Errors
    /// `EAGAIN` while asleep, `EBADFD` when not suspended, `ENODEV` once the card is gone.
    pub fn resume(&mut self, now_ns: u64, view: IoView) -> Result<sys::snd_pcm_state_t, Errno> {
        self.check_gone(now_ns)?;
        let Some(sleep) = self.asleep else {
            return Err(Errno(libc::EBADFD));
        };
        if now_ns < sleep.wake_ns {
            return Err(Errno(libc::EAGAIN));
        }
        self.asleep = None;
        if sleep.was_running {
            self.running = true;
            self.seg_start_ns = now_ns;
            self.base_frames = self.hw_frames;
            self.log_clock_start(now_ns);
        }
        self.arm(now_ns, IoView::new(view.appl, sleep.host_state));
        Ok(sleep.host_state)
    }

    fn forced_xrun_due(&self, now_ns: u64) -> bool {
        self.running
            && ((!self.xrun_injected && self.ms_after_first_start(self.cfg.xrun_at_ms).is_some_and(|t| now_ns >= t))
                || self.next_storm_xrun_ns.is_some_and(|t| now_ns >= t))
    }

    /// Books a forced xrun at `now_ns`: the one-shot one if it is due, else the storm's, whose
    /// next one is then `xrun_every_ms` later.
    fn take_forced_xrun(&mut self, now_ns: u64) {
        if !self.xrun_injected && self.ms_after_first_start(self.cfg.xrun_at_ms).is_some_and(|t| now_ns >= t) {
            self.xrun_injected = true;
        } else if let (Some(_), Some(every)) = (self.next_storm_xrun_ns, self.cfg.xrun_every_ms) {
            self.next_storm_xrun_ns = Some(now_ns + every * 1_000_000);
        }
    }

    /// The card's position at `now_ns` (frames since prepare; frozen unless running).
    fn clock_frames(&self, now_ns: u64) -> u64 {
        if self.running {
            self.base_frames + self.clock.frames(now_ns.saturating_sub(self.seg_start_ns))
        } else {
            self.base_frames
        }
    }

    /// alsa-lib's wrapped appl_ptr as an unwrapped position near `hw_frames`.
    fn appl_frames(&self, appl_wrapped: u64) -> u64 {
        if self.boundary == 0 {
            return appl_wrapped;
        }
        let b = i128::from(self.boundary);
        let hw_wrapped = i128::from(self.hw_frames % self.boundary);
        let mut diff = (i128::from(appl_wrapped) - hw_wrapped).rem_euclid(b);
        if diff > b / 2 {
            diff -= b;
        }
        (i128::from(self.hw_frames) + diff).max(0) as u64
    }

    fn buffer_frames(&self) -> u64 {
        self.area.map_or(0, |a| a.frames)
    }

    /// Frames available to the application if the hardware were at `pos`.
    fn avail_at(&self, pos: u64, appl: u64) -> i128 {
        match self.dir {
            Direction::Playback => i128::from(self.buffer_frames()) + i128::from(pos) - i128::from(appl),
            Direction::Capture => i128::from(pos) - i128::from(appl),
        }
    }

    fn wrapped(&self, pos: u64) -> u64 {
        if self.boundary == 0 {
            pos
        } else {
            pos % self.boundary
        }
    }

    /// Records from the sw_params callback.
    ///
    /// # Errors
    /// `ENODEV` once the card is gone.
    pub fn sw_params(&mut self, now_ns: u64, avail_min: u64, stop_threshold: u64, boundary: u64) -> Result<(), Errno> {
        self.check_gone(now_ns)?;
        self.avail_min = avail_min.max(1);
        self.stop_threshold = stop_threshold;
        self.boundary = boundary;
        Ok(())
    }

    /// Resets positions (alsa-lib has just set appl and hw to 0) and takes the new buffer.
    ///
    /// # Errors
    /// `ENODEV` once the card is gone.
    pub fn prepare(&mut self, now_ns: u64, area: Area, view: IoView) -> Result<(), Errno> {
        self.check_gone(now_ns)?;
        // Prepare is also how a caller gives up on a suspended card (the kernel allows it).
        if self.asleep.take().is_none() && !suspendable(view.state) {
            self.skip_due_suspend(now_ns);
        }
        self.area = Some(area);
        self.running = false;
        self.base_frames = 0;
        self.hw_frames = 0;
        self.xrun = false;
        self.arm(now_ns, view);
        Ok(())
    }

    /// Starts the clock at the current hw position.
    ///
    /// # Errors
    /// `ENODEV` once the card is gone, `ESTRPIPE` while suspended.
    pub fn start(&mut self, now_ns: u64, view: IoView) -> Result<(), Errno> {
        self.check_gone(now_ns)?;
        if self.asleep.is_some() {
            return Err(Errno(libc::ESTRPIPE));
        }
        self.first_start_ns.get_or_insert(now_ns);
        if self.next_storm_xrun_ns.is_none() {
            self.next_storm_xrun_ns = self.ms_after_first_start(self.cfg.xrun_every_ms);
        }
        if self.cfg.loopback && self.loopback_pos.is_none() {
            let len = self.capture_file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
            self.loopback_pos = Some(len - len % self.frame_bytes);
        }
        self.running = true;
        self.seg_start_ns = now_ns;
        self.base_frames = self.hw_frames;
        self.log_clock_start(now_ns);
        self.arm(now_ns, view);
        Ok(())
    }

    /// Stops the clock; playback records what was played since the last pointer update.
    /// Idempotent (alsa-lib calls it at drain end and again at close). Ends a suspension (drop
    /// from SUSPENDED goes to SETUP); a suspend still to come for a stopped stream is skipped.
    pub fn stop(&mut self, now_ns: u64, view: IoView) {
        let _ = self.check_gone(now_ns);
        if self.asleep.take().is_none() {
            self.skip_due_suspend(now_ns);
        }
        if self.running && !self.xrun && !self.gone && self.dir == Direction::Playback {
            let appl = self.appl_frames(view.appl);
            let clock = self.clock_frames(now_ns);
            self.play_until(clock.min(appl), appl);
        }
        self.running = false;
        self.base_frames = self.hw_frames;
        self.timer.disarm();
        self.timer.clear();
    }

    /// Freezes (`enable`) or resumes the clock.
    ///
    /// # Errors
    /// `ENODEV` once the card is gone, `ESTRPIPE` while suspended.
    pub fn pause(&mut self, now_ns: u64, enable: bool, view: IoView) -> Result<(), Errno> {
        self.check_gone(now_ns)?;
        if self.asleep.is_some() {
            return Err(Errno(libc::ESTRPIPE));
        }
        if enable && self.running {
            self.base_frames = self.clock_frames(now_ns);
            self.running = false;
        } else if !enable && !self.running {
            self.seg_start_ns = now_ns;
            self.running = true;
            self.log_clock_start(now_ns);
        }
        self.arm(now_ns, view);
        Ok(())
    }

    /// The `pointer` callback: moves the hw position to the clock, plays/records the frames in
    /// between, re-arms the timer and returns the position wrapped at the boundary
    /// (`SND_PCM_IOPLUG_FLAG_BOUNDARY_WA` wants absolute positions).
    ///
    /// # Errors
    /// [`PointerError::Xrun`] when the clock passed the writer (playback: `avail >= stop_threshold`,
    /// that is, past appl_ptr by default) or the reader (capture), or at `xrun_at_ms` (once);
    /// it stays until the next prepare. [`PointerError::Gone`] after `disconnect_at_ms`.
    /// [`PointerError::Suspended`] from `suspend_at_ms` until a resume or prepare (the position
    /// stays where the clock was at that moment).
    pub fn pointer(&mut self, now_ns: u64, view: IoView) -> Result<u64, PointerError> {
        if self.check_gone(now_ns).is_err() {
            self.timer.fire_now();
            return Err(PointerError::Gone);
        }
        if self.asleep.is_none() && self.suspend_due(now_ns, view) {
            self.fall_asleep(now_ns, view);
        }
        if self.asleep.is_some() {
            return Err(PointerError::Suspended);
        }
        if self.xrun {
            return Err(PointerError::Xrun);
        }
        let clock = self.clock_frames(now_ns);
        let appl = self.appl_frames(view.appl);
        let xrun = if self.forced_xrun_due(now_ns) {
            self.take_forced_xrun(now_ns);
            true
        } else {
            // Only a running card consumes frames: prepared (not started) and paused never xrun.
            self.running && !view.draining && self.avail_at(clock, appl) >= i128::from(self.stop_threshold)
        };
        if xrun {
            // Play what the card got to play before the writer "fell behind"; capture loses it.
            match self.dir {
                Direction::Playback => self.play_until(clock.min(appl), appl),
                Direction::Capture => self.skip_capture(clock.saturating_sub(self.hw_frames)),
            }
            self.xrun = true;
            self.running = false;
            self.base_frames = self.hw_frames;
            self.timer.fire_now();
            return Err(PointerError::Xrun);
        }
        match self.dir {
            // Draining: the hardware stops at the last written frame; alsa-lib then sees
            // avail == buffer and drops the stream.
            Direction::Playback if view.draining => self.play_until(clock.min(appl), appl),
            Direction::Playback => self.play_until(clock, appl),
            Direction::Capture => self.capture_until(clock),
        }
        self.arm(now_ns, view);
        Ok(self.wrapped(self.hw_frames))
    }

    /// The `poll_revents` callback: says whether the application may
    /// proceed (avail >= avail_min, or an xrun/fault it must notice), re-arms the timer.
    /// A suspended card is [`Readiness::Error`] (and stays readable) until it is resumed.
    ///
    /// # Errors
    /// `ENODEV` once the card is gone.
    pub fn poll_ready(&mut self, now_ns: u64, view: IoView) -> Result<Readiness, Errno> {
        self.check_gone(now_ns)?;
        // No read of the expiration: `arm` below leaves it pending (ready) or sets a future
        // deadline, which discards it (one timerfd_settime per period and no read).
        if self.asleep.is_none() && self.suspend_due(now_ns, view) {
            self.fall_asleep(now_ns, view);
        }
        if self.asleep.is_some() {
            self.timer.fire_now();
            return Ok(Readiness::Error);
        }
        let appl = self.appl_frames(view.appl);
        let ready = if self.xrun || self.forced_xrun_due(now_ns) {
            true
        } else if self.running {
            let clock = self.clock_frames(now_ns);
            let avail = self.avail_at(clock, appl);
            if self.dir == Direction::Playback && view.draining {
                clock >= appl
            } else {
                avail >= i128::from(self.avail_min) || avail >= i128::from(self.stop_threshold)
            }
        } else {
            self.avail_at(self.hw_frames, appl) >= i128::from(self.avail_min)
        };
        self.arm(now_ns, view);
        Ok(if ready { Readiness::Ready } else { Readiness::Wait })
    }

    /// The CLOCK_MONOTONIC time at which the clock reaches `frames` (0 if it already has).
    fn time_of(&self, frames: u64, now_ns: u64) -> u64 {
        if frames <= self.clock_frames(now_ns) {
            0
        } else {
            self.seg_start_ns + self.clock.ns_for(frames - self.base_frames)
        }
    }

    /// Arms the timerfd for the next moment the application must look: avail reaching avail_min
    /// (drain: the last frame played), an xrun, or a pending fault (xrun, suspend, unplug).
    fn arm(&mut self, now_ns: u64, view: IoView) {
        if self.gone || self.xrun || self.asleep.is_some() {
            self.timer.fire_now();
            return;
        }
        let appl = self.appl_frames(view.appl);
        if !self.running {
            if self.avail_at(self.hw_frames, appl) >= i128::from(self.avail_min) {
                self.timer.fire_now();
            } else {
                self.timer.disarm();
            }
            return;
        }
        let buffer = self.buffer_frames();
        let (ready_at, xrun_at) = match self.dir {
            Direction::Playback if view.draining => (appl, u64::MAX),
            Direction::Playback => (
                (appl + self.avail_min).saturating_sub(buffer),
                appl.saturating_add(self.stop_threshold).saturating_sub(buffer),
            ),
            Direction::Capture => (appl + self.avail_min, appl.saturating_add(self.stop_threshold)),
        };
        let mut t = self.time_of(ready_at, now_ns);
        if xrun_at != u64::MAX {
            t = t.min(self.time_of(xrun_at, now_ns));
        }
        if !self.xrun_injected {
            if let Some(f) = self.ms_after_first_start(self.cfg.xrun_at_ms) {
                t = t.min(f);
            }
        }
        if let Some(f) = self.next_storm_xrun_ns {
            t = t.min(f);
        }
        if !self.suspend_injected {
            if let Some(f) = self.ms_after_first_start(self.cfg.suspend_at_ms) {
                t = t.min(f);
            }
        }
        if let Some(f) = self.ms_after_first_start(self.cfg.disconnect_at_ms) {
            t = t.min(f);
        }
        self.timer.arm_at(t, now_ns);
    }

    /// Raw bytes of frames `[pos, pos + n)` of the ring, `n` not crossing its end.
    fn ring_chunk(&self, area: Area, pos: u64, n: u64) -> (*mut u8, usize) {
        let off = pos % area.frames;
        debug_assert!(off + n <= area.frames);
        // In bounds: off + n <= frames, and the buffer holds frames * frame_bytes bytes.
        let ptr = area.base.wrapping_add((off * self.frame_bytes) as usize);
        (ptr, (n * self.frame_bytes) as usize)
    }

    /// Playback: the hardware moves to `to`; frames in `[hw, min(to, appl))` were played and go
    /// to `playback_file` (one write(2) per ring chunk, unbuffered: current even after SIGKILL).
    fn play_until(&mut self, to: u64, appl: u64) {
        let end = to.min(appl);
        if let (Some(area), true) = (self.area, end > self.hw_frames) {
            let mut pos = self.hw_frames;
            while pos < end && self.playback_file.is_some() && area.frames > 0 {
                let n = (end - pos).min(area.frames - pos % area.frames);
                let (ptr, len) = self.ring_chunk(area, pos, n);
                // SAFETY: `ptr..ptr+len` lies inside alsa-lib's ring buffer (checked at prepare to be
                // `frames * frame_bytes` long, interleaved, and alive until the next hw_params, which
                // is followed by a prepare that replaces `area`). These frames are between hw_ptr and
                // appl_ptr: written by the application and not writable by it until we report them.
                let bytes = unsafe { std::slice::from_raw_parts(ptr.cast_const(), len) };
                if let Some(f) = self.playback_file.as_mut() {
                    if let Err(e) = f.write_all(bytes) {
                        if !self.write_failed {
                            eprintln!("shmix_vcard: writing playback_file failed: {e}");
                            self.write_failed = true;
                        }
                    }
                }
                pos += n;
            }
        }
        self.hw_frames = self.hw_frames.max(to);
    }

    fn skip_capture(&mut self, frames: u64) {
        self.capture_pos_frames += frames;
    }

    /// Capture: the hardware moves to `to`; frames `[hw, to)` are "recorded" from `capture_file`
    /// (silence after its end) into the ring.
    fn capture_until(&mut self, to: u64) {
        let Some(area) = self.area.filter(|a| a.frames > 0) else {
            self.hw_frames = self.hw_frames.max(to);
            return;
        };
        let mut pos = self.hw_frames;
        if to.saturating_sub(pos) > area.frames {
            // Only the last buffer's worth survives in the ring.
            self.skip_capture(to - area.frames - pos);
            pos = to - area.frames;
        }
        while pos < to {
            let n = (to - pos).min(area.frames - pos % area.frames);
            let (ptr, len) = self.ring_chunk(area, pos, n);
            // SAFETY: in bounds of alsa-lib's ring as for playback; frames `[hw, to)` are beyond
            // hw_ptr, so the application does not read them until we report them.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
            let filled = self.read_capture(dst);
            dst[filled..].fill(0);
            self.capture_pos_frames += n;
            pos += n;
        }
        self.hw_frames = to;
    }

    /// Reads capture_file bytes at the current position into `dst`; returns how many it got.
    fn read_capture(&mut self, dst: &mut [u8]) -> usize {
        let Some(f) = self.capture_file.as_ref().filter(|_| !self.capture_eof) else {
            return 0;
        };
        if let Some(start) = self.loopback_pos {
            // Whatever playback appended since, whole frames only; never at an end for good.
            let mut got = 0;
            while got < dst.len() {
                match f.read_at(&mut dst[got..], start + got as u64) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            got -= got % self.frame_bytes as usize;
            self.loopback_pos = Some(start + got as u64);
            return got;
        }
        let start = self.capture_pos_frames * self.frame_bytes;
        let mut got = 0;
        while got < dst.len() {
            match f.read_at(&mut dst[got..], start + got as u64) {
                Ok(0) => {
                    self.capture_eof = true;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.capture_eof = true;
                    break;
                }
            }
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_inverse_is_exact() {
        for (rate, skew) in [(48_000, 0.0), (44_100, 0.0), (48_000, 250.0), (8_000, -1000.0)] {
            let c = Clock::new(rate, skew);
            for f in [1u64, 2, 47, 48_000, 1_234_567, 10_000_000_000] {
                let ns = c.ns_for(f);
                assert!(c.frames(ns) >= f, "rate {rate} f {f}");
                assert!(c.frames(ns - 1) < f, "rate {rate} f {f}");
            }
        }
        assert_eq!(Clock::new(48_000, 0.0).frames(1_000_000_000), 48_000);
        assert_eq!(Clock::new(48_000, 100.0).frames(1_000_000_000), 48_004);
    }

    fn card(dir: Direction) -> Card {
        Card::new(Config::default(), dir, TimerFd::new().unwrap(), None, None)
    }

    #[test]
    fn appl_unwraps_near_hw_across_the_boundary() {
        let mut c = card(Direction::Playback);
        c.boundary = 1 << 20;
        c.hw_frames = (1 << 20) - 10;
        assert_eq!(c.appl_frames(5), (1 << 20) + 5);
        assert_eq!(c.appl_frames((1 << 20) - 20), (1 << 20) - 20);
        c.hw_frames = 3 * (1 << 20) + 7;
        assert_eq!(c.wrapped(c.hw_frames), 7);
        assert_eq!(c.appl_frames(100), 3 * (1 << 20) + 100);
    }

    #[test]
    fn playback_xruns_when_clock_passes_appl() {
        let mut buf = vec![0u8; 1024 * 4];
        let mut c = card(Direction::Playback);
        c.sw_params(0, 256, 1024, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 1024 };
        let v = |appl| IoView::new(appl, sys::SND_PCM_STATE_RUNNING);
        c.prepare(0, area, v(1024)).unwrap();
        let t0 = 1_000_000_000;
        c.start(t0, v(1024)).unwrap();
        // 10 ms = 480 frames at 48 kHz.
        assert_eq!(c.pointer(t0 + 10_000_000, v(1024)), Ok(480));
        // 30 ms = 1440 frames > appl 1024: underrun.
        assert_eq!(c.pointer(t0 + 30_000_000, v(1024)), Err(PointerError::Xrun));
        assert_eq!(c.hw_frames, 1024);
        // Draining instead stops at appl.
        c.prepare(0, area, v(1024)).unwrap();
        c.start(t0, v(1024)).unwrap();
        let d = IoView::new(1024, sys::SND_PCM_STATE_DRAINING);
        assert_eq!(c.pointer(t0 + 30_000_000, d), Ok(1024));
    }

    #[test]
    fn pause_freezes_the_clock_and_resume_continues_it() {
        let mut buf = vec![0u8; 4096 * 4];
        let mut c = card(Direction::Playback);
        c.sw_params(0, 256, 4096, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 4096 };
        let v = IoView::new(4096, sys::SND_PCM_STATE_RUNNING);
        c.prepare(0, area, v).unwrap();
        let t0 = 1_000_000_000;
        c.start(t0, v).unwrap();
        c.pause(t0 + 10_000_000, true, v).unwrap();
        // Paused for a long time: no progress, no xrun.
        assert_eq!(c.pointer(t0 + 5_000_000_000, v), Ok(480));
        c.pause(t0 + 5_000_000_000, false, v).unwrap();
        assert_eq!(c.pointer(t0 + 5_010_000_000, v), Ok(960));
    }

    #[test]
    fn capture_overrun_when_reader_falls_behind() {
        let mut buf = vec![0u8; 1024 * 4];
        let mut c = card(Direction::Capture);
        c.sw_params(0, 256, 1024, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 1024 };
        let v = IoView::new(0, sys::SND_PCM_STATE_RUNNING);
        c.prepare(0, area, v).unwrap();
        let t0 = 1_000_000_000;
        c.start(t0, v).unwrap();
        assert_eq!(c.pointer(t0 + 10_000_000, v), Ok(480));
        assert_eq!(c.pointer(t0 + 30_000_000, v), Err(PointerError::Xrun));
        // It stays in xrun until the next prepare.
        assert_eq!(c.pointer(t0 + 31_000_000, v), Err(PointerError::Xrun));
        c.prepare(t0 + 32_000_000, area, v).unwrap();
        assert_eq!(c.pointer(t0 + 33_000_000, v), Ok(0));
    }

    fn suspending_card(dir: Direction, suspend_ms: u64, playback_file: Option<File>) -> Card {
        let cfg = Config { suspend_at_ms: Some(100), suspend_ms, ..Config::default() };
        Card::new(cfg, dir, TimerFd::new().unwrap(), playback_file, None)
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn suspend_freezes_at_its_moment_and_resume_waits_then_continues() {
        let mut buf: Vec<u8> = (0..4096u32 * 4).map(|i| (i % 251) as u8 + 1).collect();
        let dir = tempfile::tempdir().unwrap();
        let rec_path = dir.path().join("rec.raw");
        let rec = File::create(&rec_path).unwrap();
        let mut c = suspending_card(Direction::Playback, 200, Some(rec));
        c.sw_params(0, 256, 4096, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 4096 };
        let run = |appl| IoView::new(appl, sys::SND_PCM_STATE_RUNNING);
        let susp = |appl| IoView::new(appl, sys::SND_PCM_STATE_SUSPENDED);
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        let t0 = 1_000_000_000;
        c.start(t0, run(4096)).unwrap();
        // 50 ms: 2400 frames played.
        assert_eq!(c.pointer(t0 + 50 * MS, run(4096)), Ok(2400));
        assert_eq!(c.asleep(), None);
        // Noticed at 130 ms, the card fell asleep at 100 ms: 4800 frames > appl 4096 would be an
        // underrun, which the suspend forgives: it stops at the last written frame.
        assert_eq!(c.pointer(t0 + 130 * MS, run(4096)), Err(PointerError::Suspended));
        let sleep = c.asleep().unwrap();
        assert_eq!(
            sleep,
            Sleep {
                since_ns: t0 + 100 * MS,
                wake_ns: t0 + 300 * MS,
                host_state: sys::SND_PCM_STATE_RUNNING,
                was_running: true
            }
        );
        assert_eq!(c.hw_frames, 4096);
        // Asleep: no progress, poll reports the error, start/pause refuse, resume says EAGAIN.
        assert_eq!(c.pointer(t0 + 250 * MS, susp(4096)), Err(PointerError::Suspended));
        assert_eq!(c.poll_ready(t0 + 250 * MS, susp(4096)), Ok(Readiness::Error));
        assert_eq!(c.start(t0 + 250 * MS, susp(4096)), Err(Errno(libc::ESTRPIPE)));
        assert_eq!(c.pause(t0 + 250 * MS, true, susp(4096)), Err(Errno(libc::ESTRPIPE)));
        assert_eq!(c.resume(t0 + 299 * MS, susp(4096)), Err(Errno(libc::EAGAIN)));
        // Awake: RUNNING again, the clock continues from 4096 (the application refilled).
        assert_eq!(c.resume(t0 + 300 * MS, susp(4096)), Ok(sys::SND_PCM_STATE_RUNNING));
        assert_eq!(c.asleep(), None);
        assert_eq!(c.pointer(t0 + 310 * MS, run(8192)), Ok(4096 + 480));
        // Only once: no second suspend, and a second resume is refused.
        // 590 ms later: 28 320 frames more.
        assert_eq!(c.pointer(t0 + 900 * MS, run(8192 + 28_800)), Ok(4096 + 480 + 28_320));
        assert_eq!(c.resume(t0 + 900 * MS, run(0)), Err(Errno(libc::EBADFD)));
        // Every frame was played exactly once, in order.
        let played = std::fs::read(&rec_path).unwrap();
        let frames = (4096 + 480 + 28_320) * 4;
        assert_eq!(played.len(), frames);
        let expected: Vec<u8> = (0..frames).map(|i| buf[i % buf.len()]).collect();
        assert!(played == expected);
    }

    #[test]
    fn suspend_keeps_the_buffer_and_resume_restores_prepared() {
        let mut buf = vec![0u8; 1024 * 4];
        let mut c = suspending_card(Direction::Playback, 0, None);
        c.sw_params(0, 256, 1024, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 1024 };
        let t0 = 1_000_000_000;
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        c.start(t0, IoView::new(1024, sys::SND_PCM_STATE_RUNNING)).unwrap();
        // Stopped and prepared again before the suspend: a prepared stream is suspended too.
        c.stop(t0 + 10 * MS, IoView::new(1024, sys::SND_PCM_STATE_RUNNING));
        c.prepare(t0 + 10 * MS, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        let prepared = IoView::new(512, sys::SND_PCM_STATE_PREPARED);
        assert_eq!(c.poll_ready(t0 + 100 * MS, prepared), Ok(Readiness::Error));
        assert_eq!(c.asleep().map(|s| (s.host_state, s.was_running)), Some((sys::SND_PCM_STATE_PREPARED, false)));
        // suspend_ms 0: resume works at once and gives PREPARED back, position untouched.
        assert_eq!(c.resume(t0 + 100 * MS, prepared), Ok(sys::SND_PCM_STATE_PREPARED));
        assert_eq!(c.pointer(t0 + 200 * MS, prepared), Ok(0));
    }

    #[test]
    fn prepare_ends_a_suspension_and_stopped_streams_are_not_suspended() {
        let mut buf = vec![0u8; 1024 * 4];
        let area = Area { base: buf.as_mut_ptr(), frames: 1024 };
        let t0 = 1_000_000_000;
        let run = IoView::new(1024, sys::SND_PCM_STATE_RUNNING);

        // Giving up on the resume: prepare from SUSPENDED starts afresh, no second suspend.
        let mut c = suspending_card(Direction::Playback, 10_000, None);
        c.sw_params(0, 256, 1024, 1 << 30).unwrap();
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        c.start(t0, run).unwrap();
        assert_eq!(c.pointer(t0 + 101 * MS, run), Err(PointerError::Suspended));
        c.prepare(t0 + 120 * MS, area, IoView::new(1024, sys::SND_PCM_STATE_SUSPENDED)).unwrap();
        assert_eq!(c.asleep(), None);
        c.start(t0 + 120 * MS, run).unwrap();
        assert_eq!(c.pointer(t0 + 130 * MS, run), Ok(480));

        // A stream stopped (SETUP) when the moment passes is not suspended later.
        let mut c = suspending_card(Direction::Playback, 200, None);
        c.sw_params(0, 256, 1024, 1 << 30).unwrap();
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        c.start(t0, run).unwrap();
        c.stop(t0 + 10 * MS, run);
        c.stop(t0 + 150 * MS, IoView::new(1024, sys::SND_PCM_STATE_SETUP));
        c.prepare(t0 + 160 * MS, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        c.start(t0 + 160 * MS, run).unwrap();
        assert_eq!(c.pointer(t0 + 170 * MS, run), Ok(480));
        assert_eq!(c.poll_ready(t0 + 171 * MS, run).map(|r| r != Readiness::Error), Ok(true));
    }

    #[test]
    fn capture_suspend_records_until_its_moment() {
        let mut buf = vec![0u8; 8192 * 4];
        let mut c = suspending_card(Direction::Capture, 50, None);
        c.sw_params(0, 256, 8192, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 8192 };
        let run = IoView::new(0, sys::SND_PCM_STATE_RUNNING);
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        let t0 = 1_000_000_000;
        c.start(t0, run).unwrap();
        assert_eq!(c.pointer(t0 + 120 * MS, run), Err(PointerError::Suspended));
        assert_eq!(c.hw_frames, 4800);
        assert_eq!(c.resume(t0 + 160 * MS, run), Ok(sys::SND_PCM_STATE_RUNNING));
        assert_eq!(c.pointer(t0 + 170 * MS, run), Ok(4800 + 480));
    }
}

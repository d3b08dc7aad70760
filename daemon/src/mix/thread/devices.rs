//! The mix thread's hold on the card's two sides, playback and capture, handled alike: each is a
//! [`Side`], serviced period by period (`service`), recovered after an xrun or a suspend
//! (`recover`), handed to the device manager (`io::manager`) when it vanishes (its streams wait
//! while the manager retries) or is no longer wanted, and taken back when the manager answers.
//! What differs by direction is a parameter: playback mixes into the device and is prefilled
//! with silence when it starts, capture is converted from it; a playback failure other than a
//! loss ends the thread, a capture one ends the recorders (`Fatal`); the capture side is opened
//! when the first recorder starts and closed when the last one stops (unless
//! `--keep-capture-open`).
//! Runs on the mix thread. RT: yes: no allocation, no locks, no logging; devices travel boxed
//! through the manager's queues, and none is opened or closed here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shmix_shared::clock::now_ns;
use shmix_shared::Direction;

use super::MixThread;
use crate::io::device::{AlsaError, Device};
use crate::io::manager::{Answer, Ask};
use crate::mix::schedule::Schedule;
use crate::mix::{Counters, MixCore};

/// How long one `avail_update` may take before the timing snapshot re-reads it (see
/// `service`): 200 us, about 10 frames at 48 kHz (it takes a few us).
const STAMP_SLACK_NS: u64 = 200_000;

const NO_FD: libc::pollfd = libc::pollfd { fd: -1, events: 0, revents: 0 };

/// One direction of the card as the mix thread holds it.
#[derive(Debug)]
pub(super) struct Side {
    /// The open device; `None` while closed, being opened, or gone.
    pub(super) dev: Option<Box<Device>>,
    /// Its poll descriptors are `pfds[base..base + nfds]`, within `base..base + max_fds`.
    base: usize,
    max_fds: usize,
    pub(super) nfds: usize,
    /// Suspended and not resumed yet (the cycle looks again every 10 ms).
    pub(super) suspended: bool,
    /// An `Ask::Open` or `Ask::Reopen` is out, its answer not in yet.
    asked: bool,
    /// The outstanding ask was cancelled: its `Failed` means nothing.
    cancelled: bool,
    /// Vanished (or absent): the manager retries it; its streams wait.
    lost: bool,
    /// The last open failed: no new ask until none of its streams runs.
    failed: bool,
}

impl Side {
    /// A side with poll slots `base..base + max_fds`; `dev` is open, or the manager was told to
    /// retry it (`--wait-for-device`).
    pub(super) fn new(base: usize, max_fds: usize, dev: Option<Box<Device>>, retried: bool) -> Self {
        let nfds = dev.as_ref().map_or(0, |d| d.poll_count().min(max_fds));
        Self {
            dev,
            base,
            max_fds,
            nfds,
            suspended: false,
            asked: retried,
            cancelled: false,
            lost: retried,
            failed: false,
        }
    }

    /// Unpolls every slot of this side.
    pub(super) fn clear_fds(&self, pfds: &mut [libc::pollfd]) {
        pfds[self.base..self.base + self.max_fds].fill(NO_FD);
    }
}

/// The xrun counter of `dir`.
fn xruns(c: &Counters, dir: Direction) -> &AtomicU64 {
    if dir == Direction::Capture {
        &c.capture_xruns
    } else {
        &c.device_xruns
    }
}

/// Prepares and starts `dev` (playback: prefilled with silence, which the core is told; with
/// timer scheduling only up to the fill level, and the clock starts over).
fn restart(
    dev: &mut Device,
    dir: Direction,
    core: &mut MixCore,
    sched: Option<&mut Schedule>,
) -> Result<(), AlsaError> {
    if dir == Direction::Capture {
        return dev.restart_capture();
    }
    let prefill = match sched {
        Some(s) => {
            s.clock.reset();
            s.fill_level(core.asked()) as usize
        }
        None => usize::MAX,
    };
    let n = dev.restart(prefill)?;
    core.device_restarted(n);
    Ok(())
}

/// The timer schedule for a playback device opened for it.
fn schedule_for(dev: &Device) -> Option<Schedule> {
    let caps = dev.caps();
    if !caps.timer {
        return None;
    }
    let p = dev.params();
    let grain = caps.fifo_frames + if caps.batch { p.period_frames } else { 0 };
    Some(Schedule::new(p.rate, p.buffer_frames, caps.rewind, grain))
}

fn direction_of(dev: &Device) -> Direction {
    if dev.is_capture() {
        Direction::Capture
    } else {
        Direction::Playback
    }
}

impl MixThread {
    fn side(&mut self, dir: Direction) -> &mut Side {
        if dir == Direction::Capture {
            &mut self.cap
        } else {
            &mut self.play
        }
    }

    /// The side, the core and the poll descriptors, borrowed at once.
    fn parts(&mut self, dir: Direction) -> (&mut Side, &mut MixCore, &mut [libc::pollfd]) {
        let side = if dir == Direction::Capture { &mut self.cap } else { &mut self.play };
        (side, &mut self.core, &mut self.pfds)
    }

    /// Starts `dir`'s device (at the beginning, after it was opened, after an idle stop);
    /// failures go to [`MixThread::fail`] (`Fatal{EIO}` for recorders).
    pub(super) fn start(&mut self, dir: Direction) -> Result<(), AlsaError> {
        if dir == Direction::Playback {
            // Kept across restarts of the same device (its margin and clock stay learnt).
            let fresh = self.play.dev.as_deref().and_then(schedule_for);
            let same = match (&fresh, &self.sched) {
                (Some(f), Some(s)) => s.same_device(f),
                _ => false,
            };
            if !same {
                self.sched = fresh;
            }
            // Serviced right after the start (the device's own wakeup comes only when it ran dry).
            self.wake_at_ns = self.sched.as_ref().map(|_| now_ns());
        }
        let sched = if dir == Direction::Playback { self.sched.as_mut() } else { None };
        let (side, core, pfds) = if dir == Direction::Capture {
            (&mut self.cap, &mut self.core, &mut self.pfds)
        } else {
            (&mut self.play, &mut self.core, &mut self.pfds)
        };
        let Some(dev) = side.dev.as_deref_mut() else { return Ok(()) };
        let fds = &mut pfds[side.base..side.base + side.nfds];
        match restart(dev, dir, core, sched).and_then(|()| dev.poll_fill(fds)) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(dir, e, libc::EIO),
        }
    }

    /// Services `dir`'s device and recovers it after an error.
    ///
    /// # Errors
    /// A playback failure that ends the thread.
    pub(super) fn serve(&mut self, dir: Direction) -> Result<(), AlsaError> {
        match self.service(dir).or_else(|e| self.recover(dir, e)) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(dir, e, libc::ENODEV),
        }
    }

    /// Moves whole periods while the device holds one: mixed into it (playback), converted out
    /// of it into the recorders (capture); then publishes the timing. With timer scheduling see
    /// [`MixThread::service_timer`].
    fn service(&mut self, dir: Direction) -> Result<(), AlsaError> {
        if self.sched.is_some() {
            return self.service_timer(dir);
        }
        let (side, core, pfds) = self.parts(dir);
        let Some(dev) = side.dev.as_deref_mut() else { return Ok(()) };
        // POLLERR comes back as the error of the device's state (-EPIPE / -ESTRPIPE / -ENODEV).
        dev.revents(&mut pfds[side.base..side.base + side.nfds])?;
        let params = dev.params();
        let period = params.period_frames as usize;
        let fb = params.frame_bytes() as usize;
        let mut stamp = now_ns();
        let mut avail = dev.avail_update()?;
        let mut moved = false;
        while avail >= period {
            let mut left = period;
            while left > 0 {
                let now = now_ns();
                let n = if dir == Direction::Capture {
                    dev.read_mmap(left, |area| core.capture(area, fb, now))?
                } else {
                    dev.write_mmap(left, |area| core.mix(area, now))?
                };
                if n == 0 {
                    break;
                }
                left -= n;
            }
            moved = true;
            stamp = now_ns();
            avail = dev.avail_update()?;
        }
        if moved && dir == Direction::Capture {
            core.publish_capture_timing(avail as u32, now_ns());
        } else if moved {
            // The device read its clock inside avail_update, between `stamp` and now: the
            // snapshot is dated at the middle. A thread preempted in there (a kernel without
            // preemption kept it off the CPU for 2.8 ms once: the delay read 133 frames high)
            // reads again, once.
            let mut after = now_ns();
            if after.saturating_sub(stamp) > STAMP_SLACK_NS {
                stamp = after;
                avail = dev.avail_update()?;
                after = now_ns();
            }
            let queued = (params.buffer_frames as usize).saturating_sub(avail);
            core.publish_timing(queued as u32, stamp + (after.saturating_sub(stamp)) / 2);
        }
        side.suspended = false;
        Ok(())
    }

    /// Timer scheduling: tops the playback device up to its fill level (mixed in runs of the
    /// core's size) and sets the next wake for when it falls to the wake level, or earlier when
    /// a draining stream's last frame is played; reads everything the capture device holds.
    /// Publishes the timing at every wake.
    fn service_timer(&mut self, dir: Direction) -> Result<(), AlsaError> {
        let run = self.core.max_frames();
        let (side, core, pfds) = if dir == Direction::Capture {
            (&mut self.cap, &mut self.core, &mut self.pfds)
        } else {
            (&mut self.play, &mut self.core, &mut self.pfds)
        };
        let Some(dev) = side.dev.as_deref_mut() else { return Ok(()) };
        dev.revents(&mut pfds[side.base..side.base + side.nfds])?;
        side.suspended = false;
        let params = dev.params();
        let buffer = params.buffer_frames as usize;
        let fb = params.frame_bytes() as usize;
        if dir == Direction::Capture {
            let mut avail = dev.avail_update()?;
            while avail > 0 {
                let now = now_ns();
                let n = dev.read_mmap(avail.min(run), |area| core.capture(area, fb, now))?;
                if n == 0 {
                    break;
                }
                avail -= n.min(avail);
            }
            let avail = dev.avail_update()?;
            core.publish_capture_timing(avail as u32, now_ns());
            return Ok(());
        }
        let Some(sched) = self.sched.as_mut() else { return Ok(()) };
        let stamp = now_ns();
        let mut avail = dev.avail_update()?.min(buffer);
        let mut queued = buffer - avail;
        sched.clock.update(stamp, core.device_pos().saturating_sub(queued as u64));
        let asked = core.asked();
        // Only a timed wake says anything about lateness (a client's record may come any time).
        let timed = self.wake_at_ns.is_some_and(|at| stamp >= at);
        if timed && sched.woke_with(queued as u32, stamp) {
            Counters::bump(&core.counters().late_wakes, 1);
        }
        // A queue out of date (a stream started, paused, was dropped; a volume changed), or
        // much deeper than the streams now ask for, is taken back and mixed again.
        let stale = core.take_rewind_wanted();
        if let Some(to) = sched.rewind_to(queued as u32, asked, stale) {
            let r = core.rewind_limit((queued - to as usize) as u64).min(dev.rewindable()? as u64);
            if r > 0 {
                let done = dev.rewind(r as usize)?;
                core.rewound(done as u64);
                queued -= done.min(queued);
                avail = buffer - queued;
            }
        }
        let level = (sched.fill_level(asked) as usize).min(buffer);
        // Up to the fill level as far as every stream can give now, and at least to the wake
        // level whatever they hold.
        // (The level aimed at so far, if the new one is higher: a stream that asks for more
        // slack gets it as its frames come, not by taking more than it holds.)
        let floor_level = sched.wake_level(asked).min(sched.planned().max(sched.rewind_keep()));
        let need = (floor_level as usize).saturating_sub(queued);
        let supply = core.supply().map_or(usize::MAX, |f| usize::try_from(f).unwrap_or(usize::MAX));
        // A stream moving to another device first plays here what a rewind took back.
        let leaving = usize::try_from(core.leaving_replay()).unwrap_or(usize::MAX);
        let want = level.saturating_sub(queued).min(supply).max(need).max(leaving);
        let mut left = want.min(avail);
        while left > 0 {
            let now = now_ns();
            let n = dev.write_mmap(left.min(run), |area| core.mix(area, now))?;
            if n == 0 {
                break;
            }
            left -= n.min(left);
        }
        // The device read its clock inside avail_update, between `stamp` and `after`: the
        // snapshot is dated at the middle (read again, once, when preempted in there).
        let mut stamp = now_ns();
        let mut avail = dev.avail_update()?.min(buffer);
        let mut after = now_ns();
        if after.saturating_sub(stamp) > STAMP_SLACK_NS {
            stamp = after;
            avail = dev.avail_update()?.min(buffer);
            after = now_ns();
        }
        let queued = buffer - avail;
        let at = stamp + after.saturating_sub(stamp) / 2;
        core.publish_timing(queued as u32, at);
        // A stream that started or stopped in this fill changes the ask.
        let asked = core.asked();
        let mut sleep = sched.sleep_ns(queued as u32, asked);
        if let Some(d) = core.drain_wait_frames(queued as u64) {
            sleep = sleep.min(sched.clock.ns_for(d));
        }
        // Recorders of the capture device are read at least once per step.
        if self.cap.dev.is_some() {
            sleep = sleep.min(sched.clock.ns_for(u64::from(sched.step(asked))));
        }
        // A fill short of its level (a stream's ring held less) leaves the queue at the wake
        // level: a nap of a quarter margin, not a spin that would keep the client from writing.
        sleep = sleep.max(sched.clock.ns_for(u64::from(sched.margin_for(asked) / 4)));
        self.wake_at_ns = Some(at + sleep);
        let c = core.counters();
        c.queue_frames.store(queued as u64, Ordering::Relaxed);
        c.wake_level_frames.store(u64::from(sched.wake_level(asked)), Ordering::Relaxed);
        c.skew_ppm.store(sched.clock.skew_ppm().round() as i64 as u64, Ordering::Relaxed);
        Ok(())
    }

    /// After an error of `service`: an xrun restarts the device (counted), a suspend resumes
    /// it (counted for playback; `EAGAIN`: still asleep, looked at again in 10 ms; a device
    /// that cannot resume is restarted).
    ///
    /// # Errors
    /// What cannot be recovered here (`ENODEV` among them).
    fn recover(&mut self, dir: Direction, e: AlsaError) -> Result<(), AlsaError> {
        let counters = Arc::clone(self.core.counters());
        let (side, sched) =
            if dir == Direction::Capture { (&mut self.cap, None) } else { (&mut self.play, self.sched.as_mut()) };
        let (core, pfds) = (&mut self.core, &mut self.pfds);
        let Some(dev) = side.dev.as_deref_mut() else { return Ok(()) };
        match e.errno {
            libc::EPIPE => {
                xruns(&counters, dir).fetch_add(1, Ordering::Relaxed);
                let mut sched = sched;
                if let Some(s) = sched.as_deref_mut() {
                    s.underrun(now_ns());
                }
                restart(dev, dir, core, sched)?;
            }
            libc::ESTRPIPE => {
                if dir == Direction::Playback && !side.suspended {
                    counters.device_suspends.fetch_add(1, Ordering::Relaxed);
                }
                match dev.resume() {
                    Ok(()) => side.suspended = false,
                    Err(r) if r.errno == libc::EAGAIN => side.suspended = true,
                    Err(_) => {
                        side.suspended = false;
                        restart(dev, dir, core, sched)?;
                    }
                }
            }
            libc::EAGAIN => {}
            _ => return Err(e),
        }
        dev.poll_fill(&mut pfds[side.base..side.base + side.nfds])?;
        if dir == Direction::Playback && self.sched.is_some() {
            // Serviced at once: the device's own wakeup comes only when it ran dry.
            self.wake_at_ns = Some(now_ns());
        }
        Ok(())
    }

    /// A failure of `dir`'s device that servicing could not recover: a vanished one (`ENODEV`)
    /// goes to the manager while its streams wait; otherwise playback ends the thread and
    /// capture ends the recorders with `Fatal{fatal_errno}` and is closed.
    ///
    /// # Errors
    /// `e`, for playback.
    pub(super) fn fail(&mut self, dir: Direction, e: AlsaError, fatal_errno: i32) -> Result<(), AlsaError> {
        if e.errno == libc::ENODEV && self.lose(dir) {
            return Ok(());
        }
        if dir == Direction::Playback {
            return Err(e);
        }
        if e.errno == libc::ESTRPIPE {
            self.cap.suspended = true;
            return Ok(());
        }
        self.cap.failed = true;
        self.core.fatal_dir(dir, fatal_errno);
        self.release(dir);
        Ok(())
    }

    /// `dir`'s device vanished (or could not be opened while the card is gone): hands the dead
    /// handle to the manager, which retries until the device is back; its streams wait
    /// (nothing is consumed, their positions hold). False when the manager could not be told.
    fn lose(&mut self, dir: Direction) -> bool {
        let side = self.side(dir);
        if side.dev.is_none() && side.asked {
            // Already out with the manager.
            return true;
        }
        let dead = side.dev.take();
        if let Err(Ask::Reopen(_, dead)) = self.devices.ask(Ask::Reopen(dir, dead)) {
            // Cannot happen (see the manager's queue capacity): fail with the device error.
            self.side(dir).dev = dead;
            return false;
        }
        let (side, core, pfds) = self.parts(dir);
        side.clear_fds(pfds);
        side.nfds = 0;
        side.suspended = false;
        side.asked = true;
        side.cancelled = false;
        let counted = !std::mem::replace(&mut side.lost, true);
        let counters = core.counters();
        if dir == Direction::Playback {
            if counted {
                counters.device_lost.fetch_add(1, Ordering::Relaxed);
            }
            counters.device_present.store(false, Ordering::Relaxed);
            core.set_device_waiting(true);
            if counted {
                // The control thread moves the streams that follow the default elsewhere.
                self.emit(super::Event::Presence(false));
            }
            // The device that comes back is started and serviced, whatever stopped this one. Until
            // then there is no queue to keep: no timed wake (a deadline left in the past would
            // spin the thread; found with issue 14's unplug tests: 580,000 cycles a second).
            self.wake_at_ns = None;
            self.idle_stopped = false;
            self.core.counters().idle_now.store(false, Ordering::Relaxed);
        } else if counted {
            counters.capture_lost.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Sends `dir`'s device to the manager to be closed (kept when the queue is full, which it
    /// cannot be: the next cycle tries again).
    fn release(&mut self, dir: Direction) {
        let Some(dev) = self.side(dir).dev.take() else { return };
        match self.devices.ask(Ask::Close(dev)) {
            Ok(()) => self.side(dir).nfds = 0,
            Err(Ask::Close(dev)) => self.side(dir).dev = Some(dev),
            Err(_) => {}
        }
    }

    /// Takes the manager's answers (its eventfd was readable).
    ///
    /// # Errors
    /// A playback device that came back and failed to start (not with `ENODEV`).
    pub(super) fn take_answers(&mut self) -> Result<(), AlsaError> {
        self.devices.drain();
        while let Some(a) = self.devices.answer() {
            match a {
                Answer::Opened(dev) => self.install(dev)?,
                Answer::Failed(dir) => self.not_opened(dir),
            }
        }
        Ok(())
    }

    /// Installs a device the manager opened (or reopened) and starts it.
    fn install(&mut self, dev: Box<Device>) -> Result<(), AlsaError> {
        let dir = direction_of(&dev);
        let side = self.side(dir);
        side.asked = false;
        side.cancelled = false;
        if side.dev.is_some() {
            // Cannot happen (one ask per side at a time): close the newcomer.
            let _ = self.devices.ask(Ask::Close(dev));
            return Ok(());
        }
        side.nfds = dev.poll_count().min(side.max_fds);
        side.dev = Some(dev);
        let reopened = std::mem::take(&mut side.lost);
        let counters = Arc::clone(self.core.counters());
        if dir == Direction::Playback {
            counters.device_reopened.fetch_add(1, Ordering::Relaxed);
            counters.device_present.store(true, Ordering::Relaxed);
            self.core.set_device_waiting(false);
            self.emit(super::Event::Presence(true));
        } else if reopened {
            counters.capture_reopened.fetch_add(1, Ordering::Relaxed);
        }
        self.start(dir)
    }

    /// An `Open` failed (or a cancelled retry ended): while the card is gone the streams wait
    /// and it is retried; otherwise they get `Fatal{ENODEV}`.
    fn not_opened(&mut self, dir: Direction) {
        let card_gone = self.play.dev.is_none();
        let side = self.side(dir);
        side.asked = false;
        if std::mem::take(&mut side.cancelled) {
            return;
        }
        if (side.lost || card_gone) && self.lose(dir) {
            return;
        }
        self.side(dir).failed = true;
        self.core.fatal_dir(dir, libc::ENODEV);
    }

    /// Asks for the capture device when a recorder runs and it is not open; closes it when none
    /// runs (unless `--keep-capture-open`), and stops retrying a vanished one no one waits for.
    pub(super) fn manage_capture(&mut self) {
        let want = self.core.wants_capture();
        let quiet = self.play.dev.is_none();
        let cap = &mut self.cap;
        if !want {
            cap.failed = false;
            if cap.lost && cap.asked && !cap.cancelled && self.devices.ask(Ask::Cancel(Direction::Capture)).is_ok() {
                cap.cancelled = true;
                cap.lost = false;
            }
        }
        if want && cap.dev.is_none() && !cap.asked && !cap.failed {
            // While the card is gone a failure is expected (the recorders wait): quietly.
            if self.devices.ask(Ask::Open { dir: Direction::Capture, quiet }).is_ok() {
                cap.asked = true;
            }
        } else if !want && !self.keep_capture_open && cap.dev.is_some() {
            self.release(Direction::Capture);
        }
    }
}

//! The real-time mix thread: one per device. Waits in one `poll` on the device's descriptors, the
//! command eventfd and every stream's daemon_wake socket; handles commands from the control
//! thread, the streams' control records, then fills the device period by period through its mmap
//! area (`mixer::MixCore::mix`). Retired streams and device failures go back to the control
//! thread through a lock-free queue; statistics through atomics. A device that vanishes
//! (`ENODEV`) goes to the reopen thread (`reopen`) while the streams wait; the reopened device
//! comes back the same way and the streams play on.
//! Runs on the mix thread. RT: yes (everything inside `cycle`): no allocation, no locks, no
//! logging; syscalls: poll, the device's own, reads/writes of its own eventfds, and non-blocking
//! sends/receives on the streams' wake sockets (`shmix_shared::wakefd`).

use std::os::fd::AsRawFd;

use rtrb::{Consumer, Producer};

use crate::audit;
use shmix_shared::Direction;

use crate::io::device::{AlsaError, Device};
use crate::io::reopen;
use crate::mix::realtime;
use crate::mix::{MixCore, Stream, MAX_STREAMS, MUTE_MAX_MS};
use shmix_shared::clock::now_ns;
use shmix_shared::eventfd::EventFd;

/// The SCHED_FIFO priority the mix thread asks for unless told otherwise (`--rt-priority`).
pub const DEFAULT_RT_PRIORITY: i32 = 20;
/// Poll descriptors reserved for the playback device (the capture device's follow them; unused
/// slots hold fd -1, which poll skips).
const MAX_DEVICE_FDS: usize = 8;
/// Poll descriptors reserved for the capture device.
const MAX_CAPTURE_FDS: usize = 8;

/// Control -> mix.
#[derive(Debug)]
pub enum Command {
    /// Attach a stream (built and checked on the control thread).
    Add(Box<Stream>),
    /// Detach a stream and send it back.
    Remove(u32),
    /// Post `Fatal{ESHUTDOWN}` to every stream and end the thread.
    Shutdown,
    /// The capture device, opened on the control thread after `Event::OpenCapture` (`None`:
    /// the open failed; capture streams get `Fatal{ENODEV}`).
    CaptureDevice(Option<Box<Device>>),
}

/// Mix -> control.
#[derive(Debug)]
pub enum Event {
    /// A stream left the mix (removed, or violated the protocol: see `Stream::violation`). Drop
    /// it here, off the real-time thread.
    Retired(Box<Stream>),
    /// An `Add` that found no free slot.
    Rejected(Box<Stream>),
    /// The device failed for good (ENODEV or an unrecoverable error); the thread has ended and
    /// every stream got `Fatal`.
    DeviceFailed(AlsaError),
    /// A capture stream started and the capture device is not open: open it (control thread:
    /// opening can block and allocates) and send `Command::CaptureDevice`. `retry`: the capture
    /// device vanished and this is one of the periodic attempts to reopen it (a failure is
    /// expected: not worth an error line).
    OpenCapture {
        /// A reopen attempt after the capture device vanished.
        retry: bool,
    },
    /// The last capture stream stopped (or the capture device failed): close it here.
    CaptureClosed(Box<Device>),
}

/// How long one `avail_update` may take before the timing snapshot re-reads it (see
/// `service_device`): 200 us, about 10 frames at 48 kHz (it takes a few us).
const STAMP_SLACK_NS: u64 = 200_000;

/// Capacity of both queues. Every stream is retired at most once, so events never exceed the
/// streams in existence plus one device failure.
pub const QUEUE_CAPACITY: usize = 4 * MAX_STREAMS;

/// Everything the mix thread owns.
#[derive(Debug)]
pub struct MixThread {
    core: MixCore,
    /// The playback device; `None` while it is gone (vanished, waiting for the reopen thread).
    device: Option<Box<Device>>,
    /// The reopen thread's link (`None`: a vanished device ends the thread as a failure).
    reopen: Option<reopen::MixEnd>,
    cmds: Consumer<Command>,
    events: Producer<Event>,
    /// Written by the control thread after each command.
    cmd_efd: EventFd,
    /// Written by us after each event.
    ctl_efd: EventFd,
    pfds: Vec<libc::pollfd>,
    dev_nfds: usize,
    suspended: bool,
    /// The capture device while open (opened and closed on the control thread).
    capture: Option<Box<Device>>,
    cap_nfds: usize,
    /// `Event::OpenCapture` sent, no answer yet.
    capture_requested: bool,
    /// The last open failed: no new request until no capture stream runs.
    capture_failed: bool,
    /// `--keep-capture-open`.
    keep_capture_open: bool,
    /// The capture device vanished (`ENODEV`) while recorders ran: they wait, and it is asked
    /// for again every `capture_retry_ms` (100 ms doubling to 500 ms) until it opens.
    capture_lost: bool,
    /// CLOCK_MONOTONIC ns of the next reopen attempt while `capture_lost`.
    capture_retry_ns: u64,
    capture_retry_ms: u64,
    /// `--idle-stop` in ns (0: never): how long the playback device runs without any stream
    /// before it is stopped (no wakeups at all while idle).
    idle_stop_ns: u64,
    /// The SCHED_FIFO priority asked for at start (`--rt-priority`).
    rt_priority: i32,
    /// CLOCK_MONOTONIC ns since which there has been no stream (while the device runs).
    idle_since_ns: Option<u64>,
    /// The device is stopped for idleness; the next stream starts it again.
    idle_stopped: bool,
}

/// Why the loop ended.
enum Exit {
    Shutdown,
    Device(AlsaError),
}

impl MixThread {
    /// Assembles the thread's state (control thread, before spawning).
    #[must_use]
    pub fn new(
        core: MixCore,
        device: Option<Device>,
        cmds: Consumer<Command>,
        events: Producer<Event>,
        cmd_efd: EventFd,
        ctl_efd: EventFd,
    ) -> Self {
        let dev_nfds = device.as_ref().map_or(0, |d| d.poll_count().min(MAX_DEVICE_FDS));
        let mut core = core;
        core.set_device_waiting(device.is_none());
        core.counters().device_present.store(device.is_some(), std::sync::atomic::Ordering::Relaxed);
        let empty = libc::pollfd { fd: -1, events: 0, revents: 0 };
        Self {
            core,
            device: device.map(Box::new),
            reopen: None,
            cmds,
            events,
            cmd_efd,
            ctl_efd,
            pfds: vec![empty; MAX_DEVICE_FDS + MAX_CAPTURE_FDS + 2 + MAX_STREAMS],
            dev_nfds,
            suspended: false,
            capture: None,
            cap_nfds: 0,
            capture_requested: false,
            capture_failed: false,
            keep_capture_open: false,
            capture_lost: false,
            capture_retry_ns: 0,
            capture_retry_ms: 0,
            idle_stop_ns: 0,
            rt_priority: DEFAULT_RT_PRIORITY,
            idle_since_ns: None,
            idle_stopped: false,
        }
    }

    /// Stops the playback device after `after` without any stream (`--idle-stop`; zero: never).
    #[must_use]
    pub fn idle_stop(mut self, after: std::time::Duration) -> Self {
        self.idle_stop_ns = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// Hands a vanished device to the reopen thread and waits for it instead of failing.
    #[must_use]
    pub fn reopen(mut self, link: reopen::MixEnd) -> Self {
        self.reopen = Some(link);
        self
    }

    /// Keeps the capture device open once opened (`--keep-capture-open`).
    #[must_use]
    pub fn keep_capture_open(mut self, keep: bool) -> Self {
        self.keep_capture_open = keep;
        self
    }

    /// The SCHED_FIFO priority to ask for (default [`DEFAULT_RT_PRIORITY`]).
    #[must_use]
    pub fn rt_priority(mut self, priority: i32) -> Self {
        self.rt_priority = priority;
        self
    }

    /// Runs until `Shutdown` or a device failure. Everything is dropped on return (streams
    /// unmapped, the device dropped and closed), outside the real-time cycle.
    ///
    /// # Errors
    /// The device failure that ended the thread.
    pub fn run(mut self) -> Result<(), AlsaError> {
        // Before the loop, where blocking is still harmless: rtkit is a D-Bus round trip.
        realtime::make_thread_realtime(self.rt_priority);
        realtime::touch_stack();
        self.core.device_ctl().note_mix_thread();
        let r = self.start_device().and_then(|()| loop {
            audit::set_in_rt(true);
            let step = self.cycle();
            audit::set_in_rt(false);
            match step {
                Ok(None) => {}
                Ok(Some(Exit::Shutdown)) => return Ok(()),
                Ok(Some(Exit::Device(e))) | Err(e) => return Err(e),
            }
        });
        if let Err(e) = r {
            self.core.fatal_all(if e.errno == libc::ENODEV { libc::ENODEV } else { libc::EIO });
            self.emit(Event::DeviceFailed(e));
        }
        r
    }

    /// Starts the device (at the beginning, or after it came back); a vanished one is handed to
    /// the reopen thread instead.
    fn start_device(&mut self) -> Result<(), AlsaError> {
        let r = match self.device.as_deref_mut() {
            None => return Ok(()),
            Some(dev) => dev.restart(),
        };
        let r = r.and_then(|n| {
            self.core.device_restarted(n);
            self.refill_device_fds()
        });
        match r {
            Err(e) if self.lose_device(e) => Ok(()),
            r => r,
        }
    }

    fn refill_device_fds(&mut self) -> Result<(), AlsaError> {
        let n = self.dev_nfds;
        match self.device.as_deref() {
            Some(dev) => dev.poll_fill(&mut self.pfds[..n]),
            None => Ok(()),
        }
    }

    /// After `e`: when the device vanished (`ENODEV`) and a reopen thread is there, hands the
    /// device to it and returns true: the streams wait (nothing is mixed, their positions hold)
    /// until it comes back. RT: yes (a queue push and an eventfd write).
    fn lose_device(&mut self, e: AlsaError) -> bool {
        if e.errno != libc::ENODEV {
            return false;
        }
        let Some(link) = self.reopen.as_mut() else { return false };
        let Some(dev) = self.device.take() else { return true };
        if let Err(dev) = link.lost(dev) {
            // Cannot happen (one device is out at a time): fail with the device error.
            self.device = Some(dev);
            return false;
        }
        for p in &mut self.pfds[..MAX_DEVICE_FDS] {
            *p = libc::pollfd { fd: -1, events: 0, revents: 0 };
        }
        self.dev_nfds = 0;
        self.suspended = false;
        // The device that comes back is started and serviced, whatever stopped this one.
        self.idle_stopped = false;
        self.core.set_device_waiting(true);
        let counters = self.core.counters();
        counters.device_lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        counters.device_present.store(false, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Installs the reopened device and starts it.
    fn device_found(&mut self) -> Result<(), AlsaError> {
        let Some(dev) = self.reopen.as_mut().and_then(reopen::MixEnd::take_found) else { return Ok(()) };
        self.dev_nfds = dev.poll_count().min(MAX_DEVICE_FDS);
        self.device = Some(dev);
        self.core.set_device_waiting(false);
        let counters = self.core.counters();
        counters.device_reopened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        counters.device_present.store(true, std::sync::atomic::Ordering::Relaxed);
        self.start_device()
    }

    fn emit(&mut self, ev: Event) {
        // Cannot fail while QUEUE_CAPACITY holds (see there); if it did, dropping here is the
        // lesser evil than blocking.
        let _ = self.events.push(ev);
        self.ctl_efd.signal();
    }

    /// One wait and everything it makes due.
    fn cycle(&mut self) -> Result<Option<Exit>, AlsaError> {
        let counters = std::sync::Arc::clone(self.core.counters());
        let ready = self.core.prepare_sleep();
        // Layout: playback device (MAX_DEVICE_FDS slots), capture device, command eventfd,
        // reopened-device eventfd, streams' daemon_wake.
        let dn = MAX_DEVICE_FDS + self.cap_nfds;
        self.pfds[dn] = libc::pollfd { fd: self.cmd_efd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let found_fd = self.reopen.as_ref().map_or(-1, reopen::MixEnd::found_fd);
        self.pfds[dn + 1] = libc::pollfd { fd: found_fd, events: libc::POLLIN, revents: 0 };
        let nstreams = self.core.streams().len();
        for (i, s) in self.core.streams().iter().enumerate() {
            self.pfds[dn + 2 + i] = libc::pollfd { fd: s.daemon_wake_fd(), events: libc::POLLIN, revents: 0 };
        }
        let nfds = dn + 2 + nstreams;
        // A suspended device is retried every 10 ms (its fds may not signal the resume). A
        // vanished one is waited for on the reopened-device eventfd.
        let timeout = if ready {
            0
        } else if self.suspended {
            10
        } else {
            -1
        };
        // A vanished capture device is asked for again when its retry is due.
        let timeout = match self.capture_retry_due_ms() {
            Some(ms) if timeout < 0 || ms < timeout => ms,
            _ => timeout,
        };
        // A muted stream (it woke us this period already) is heard again within MUTE_MAX_MS even
        // when no device period comes.
        let muted = self.core.any_muted();
        let timeout = if muted && !(0..=MUTE_MAX_MS).contains(&timeout) { MUTE_MAX_MS } else { timeout };
        // SAFETY: `pfds` holds at least `nfds` initialised entries and outlives the call.
        let r = unsafe { libc::poll(self.pfds.as_mut_ptr(), nfds as libc::nfds_t, timeout) };
        if r < 0 {
            // EINTR: just go round.
            return Ok(None);
        }
        counters.cycles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if r == 0 && muted {
            self.core.unmute_all();
        }

        let pfds = &self.pfds;
        self.core.after_wake(|i| pfds[dn + 2 + i].revents);
        if self.pfds[dn].revents != 0 {
            self.cmd_efd.drain();
        }
        if self.pfds[dn + 1].revents != 0 {
            self.device_found()?;
        }
        if let Some(exit) = self.drain_commands() {
            return Ok(Some(exit));
        }
        self.core.process_records();
        self.retire_violated();
        self.manage_capture();
        if let Err(e) = self.manage_idle() {
            if !self.lose_device(e) {
                return Err(e);
            }
        }

        if self.device.is_some() && !self.idle_stopped {
            if let Err(e) = self.service_device() {
                match self.recover(e) {
                    Err(e) | Ok(Some(Exit::Device(e))) if self.lose_device(e) => {}
                    Ok(None) => {}
                    Ok(Some(exit)) => return Ok(Some(exit)),
                    Err(e) => return Err(e),
                }
            }
        }
        if self.capture.is_some() {
            if let Err(e) = self.service_capture() {
                self.recover_capture(e);
            }
        }
        self.retire_violated();
        Ok(None)
    }

    /// Asks for the capture device when a capture stream runs and it is not open (after it
    /// vanished: when the retry is due); hands it back to be closed when none runs (unless
    /// `--keep-capture-open`).
    fn manage_capture(&mut self) {
        let want = self.core.wants_capture();
        if !want {
            self.capture_failed = false;
            self.capture_lost = false;
        }
        if want && self.capture.is_none() && !self.capture_requested && !self.capture_failed {
            let due = !self.capture_lost || now_ns() >= self.capture_retry_ns;
            if due && self.events.slots() > 0 {
                self.capture_requested = true;
                // While the card is gone a failure is expected (the recorders wait): quietly.
                let retry = self.capture_lost || (self.device.is_none() && self.reopen.is_some());
                self.emit(Event::OpenCapture { retry });
            }
        } else if !want && !self.keep_capture_open && self.capture.is_some() && self.events.slots() > 0 {
            self.release_capture();
        }
    }

    /// `--idle-stop`: stops the playback device once no stream (and no capture device) has
    /// been there for the idle time, so an idle daemon sleeps until a client comes; the first
    /// stream after that starts it again (prefilled with silence, as at startup). RT: yes (the
    /// device's own calls).
    fn manage_idle(&mut self) -> Result<(), AlsaError> {
        if self.idle_stop_ns == 0 || self.device.is_none() {
            self.idle_since_ns = None;
            return Ok(());
        }
        if !self.core.streams().is_empty() || self.capture.is_some() {
            self.idle_since_ns = None;
            if self.idle_stopped {
                self.idle_stopped = false;
                return self.start_device();
            }
            return Ok(());
        }
        if self.idle_stopped {
            return Ok(());
        }
        let now = now_ns();
        let since = *self.idle_since_ns.get_or_insert(now);
        if now.saturating_sub(since) < self.idle_stop_ns {
            return Ok(());
        }
        if let Some(dev) = self.device.as_deref() {
            dev.stop()?;
        }
        for p in &mut self.pfds[..MAX_DEVICE_FDS] {
            *p = libc::pollfd { fd: -1, events: 0, revents: 0 };
        }
        self.suspended = false;
        self.idle_stopped = true;
        self.idle_since_ns = None;
        self.core.counters().idle_stops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Milliseconds until the next reopen attempt of a vanished capture device (at least 1),
    /// when one is to be made.
    fn capture_retry_due_ms(&self) -> Option<i32> {
        if !self.capture_lost || self.capture.is_some() || self.capture_requested {
            return None;
        }
        let left = self.capture_retry_ns.saturating_sub(now_ns()) / 1_000_000;
        Some(i32::try_from(left).unwrap_or(i32::MAX).max(1))
    }

    /// The capture device vanished (`ENODEV`): closes it (on the control thread) and lets the
    /// recorders wait; it is reopened when a retry succeeds. RT: yes.
    fn lose_capture(&mut self) {
        if !self.capture_lost {
            self.capture_lost = true;
            self.capture_retry_ms = 50;
            self.core.counters().capture_lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.capture_retry_ms = (self.capture_retry_ms * 2).min(500);
        self.capture_retry_ns = now_ns() + self.capture_retry_ms * 1_000_000;
        self.release_capture();
    }

    /// Sends the capture device back to the control thread to be closed.
    fn release_capture(&mut self) {
        if let Some(dev) = self.capture.take() {
            self.cap_nfds = 0;
            self.emit(Event::CaptureClosed(dev));
        }
    }

    /// Installs a capture device from the control thread and starts it.
    fn install_capture(&mut self, dev: Option<Box<Device>>) {
        self.capture_requested = false;
        if dev.is_none() && (self.capture_lost || (self.device.is_none() && self.reopen.is_some())) {
            // Still gone, or the card is (its playback side vanished, or was absent at startup
            // with --wait-for-device): the recorders wait, try again later.
            self.lose_capture();
            return;
        }
        let Some(mut dev) = dev else {
            self.capture_failed = true;
            self.core.fatal_dir(Direction::Capture, libc::ENODEV);
            return;
        };
        let n = dev.poll_count().min(MAX_CAPTURE_FDS);
        let dn = MAX_DEVICE_FDS;
        let ok = dev.restart_capture().and_then(|()| dev.poll_fill(&mut self.pfds[dn..dn + n]));
        self.capture = Some(dev);
        self.cap_nfds = n;
        match &ok {
            Err(e) if e.errno == libc::ENODEV && self.capture_lost => {
                self.lose_capture();
                return;
            }
            Ok(()) if self.capture_lost => {
                self.capture_lost = false;
                self.core.counters().capture_reopened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            _ => {}
        }
        if ok.is_err() {
            self.capture_failed = true;
            self.core.fatal_dir(Direction::Capture, libc::EIO);
            self.release_capture();
        }
    }

    /// Reads whole capture periods while the device holds one.
    fn service_capture(&mut self) -> Result<(), AlsaError> {
        let dn = MAX_DEVICE_FDS;
        let cn = self.cap_nfds;
        let Some(dev) = self.capture.as_deref_mut() else { return Ok(()) };
        dev.revents(&mut self.pfds[dn..dn + cn])?;
        let params = dev.params();
        let period = params.period_frames as usize;
        let fb = params.frame_bytes() as usize;
        let mut avail = dev.avail_update()?;
        let mut read = false;
        while avail >= period {
            let mut left = period;
            while left > 0 {
                let core = &mut self.core;
                let now = now_ns();
                let n = dev.read_mmap(left, |area| core.capture(area, fb, now))?;
                if n == 0 {
                    break;
                }
                left -= n;
            }
            read = true;
            avail = dev.avail_update()?;
        }
        if read {
            self.core.publish_capture_timing(avail as u32, now_ns());
        }
        Ok(())
    }

    /// Capture device errors: xrun and suspend are recovered as for playback; anything else
    /// closes it and ends the capture streams (`Fatal{ENODEV}`).
    fn recover_capture(&mut self, e: AlsaError) {
        let counters = std::sync::Arc::clone(self.core.counters());
        let Some(dev) = self.capture.as_deref_mut() else { return };
        let r = match e.errno {
            libc::EPIPE => {
                counters.capture_xruns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                dev.restart_capture()
            }
            libc::ESTRPIPE => match dev.resume() {
                Ok(()) => Ok(()),
                Err(r) if r.errno == libc::EAGAIN => {
                    self.suspended = true;
                    Ok(())
                }
                Err(_) => dev.restart_capture(),
            },
            libc::EAGAIN => Ok(()),
            _ => Err(e),
        };
        let dn = MAX_DEVICE_FDS;
        let cn = self.cap_nfds;
        let r = r.and_then(|()| dev.poll_fill(&mut self.pfds[dn..dn + cn]));
        if let Err(e) = r {
            if e.errno == libc::ESTRPIPE {
                self.suspended = true;
                return;
            }
            if e.errno == libc::ENODEV && self.reopen.is_some() {
                // Unplugged: the recorders wait for it to come back.
                self.lose_capture();
                return;
            }
            self.capture_failed = true;
            self.core.fatal_dir(Direction::Capture, libc::ENODEV);
            self.release_capture();
        }
    }

    fn drain_commands(&mut self) -> Option<Exit> {
        // Forward only while we can answer: an Add/Remove may produce an event.
        while self.events.slots() > 0 {
            let Ok(cmd) = self.cmds.pop() else { break };
            match cmd {
                Command::Add(s) => {
                    if let Err(s) = self.core.add(s) {
                        self.emit(Event::Rejected(s));
                    }
                }
                Command::Remove(id) => {
                    if let Some(s) = self.core.remove(id) {
                        self.emit(Event::Retired(s));
                    }
                }
                Command::CaptureDevice(dev) => self.install_capture(dev),
                Command::Shutdown => {
                    self.core.fatal_all(libc::ESHUTDOWN);
                    return Some(Exit::Shutdown);
                }
            }
        }
        None
    }

    fn retire_violated(&mut self) {
        while self.events.slots() > 0 {
            let Some(s) = self.core.take_violated() else { break };
            self.emit(Event::Retired(s));
        }
    }

    /// Writes whole periods while the device has room for one.
    fn service_device(&mut self) -> Result<(), AlsaError> {
        let dn = self.dev_nfds;
        let Some(device) = self.device.as_deref_mut() else { return Ok(()) };
        // POLLERR comes back as the error of the device's state (-EPIPE / -ESTRPIPE / -ENODEV).
        device.revents(&mut self.pfds[..dn])?;
        let params = device.params();
        let period = params.period_frames as usize;
        let mut stamp = now_ns();
        let mut avail = device.avail_update()?;
        let mut wrote = false;
        while avail >= period {
            let mut left = period;
            while left > 0 {
                let core = &mut self.core;
                let now = now_ns();
                let n = device.write_mmap(left, |area| core.mix(area, now))?;
                if n == 0 {
                    break;
                }
                left -= n;
            }
            wrote = true;
            stamp = now_ns();
            avail = device.avail_update()?;
        }
        if wrote {
            // The device read its clock inside avail_update, between `stamp` and now: the
            // snapshot is dated at the middle. A thread preempted in there (a kernel without
            // preemption kept it off the CPU for 2.8 ms once: the delay read 133 frames high)
            // reads again, once.
            let mut after = now_ns();
            if after.saturating_sub(stamp) > STAMP_SLACK_NS {
                stamp = after;
                avail = device.avail_update()?;
                after = now_ns();
            }
            let queued = (params.buffer_frames as usize).saturating_sub(avail);
            self.core.publish_timing(queued as u32, stamp + (after.saturating_sub(stamp)) / 2);
        }
        self.suspended = false;
        Ok(())
    }

    fn recover(&mut self, e: AlsaError) -> Result<Option<Exit>, AlsaError> {
        let counters = std::sync::Arc::clone(self.core.counters());
        let Some(device) = self.device.as_deref_mut() else { return Ok(None) };
        match e.errno {
            libc::EPIPE => {
                counters.device_xruns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let n = device.restart()?;
                self.core.device_restarted(n);
            }
            libc::ESTRPIPE => {
                if !self.suspended {
                    counters.device_suspends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                match device.resume() {
                    Ok(()) => self.suspended = false,
                    Err(r) if r.errno == libc::EAGAIN => self.suspended = true,
                    Err(_) => {
                        self.suspended = false;
                        let n = device.restart()?;
                        self.core.device_restarted(n);
                    }
                }
            }
            libc::EAGAIN => {}
            _ => return Ok(Some(Exit::Device(e))),
        }
        self.refill_device_fds()?;
        Ok(None)
    }
}

/// Wakes the mix thread after a command was pushed (control thread).
pub fn kick(cmd_efd: &EventFd) {
    cmd_efd.signal();
}

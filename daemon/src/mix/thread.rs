//! The real-time mix thread: one per device. Waits in one `ppoll` on the devices' descriptors,
//! the command eventfd, the device manager's eventfd and every stream's daemon_wake socket, until
//! the timer scheduling's deadline (`schedule`) at most; handles commands from the control
//! thread, the streams' control records, then fills the playback device through its mmap area
//! (`mixer::MixCore::mix`): up to its fill level with timer scheduling, period by period with
//! fixed timing; and reads the capture device into the recorders (`devices`). Retired streams and a failure of the device go back to the
//! control thread through a lock-free queue; statistics through atomics. Devices are opened,
//! reopened and closed by the device manager (`io::manager`), never here.
//! Runs on the mix thread. RT: yes (everything inside `cycle`): no allocation, no locks, no
//! logging; syscalls: ppoll, the device's own, reads/writes of its own eventfds, and non-blocking
//! sends/receives on the streams' wake sockets (`shmix_shared::wakefd`).

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use rtrb::{Consumer, Producer};

use crate::audit;
use crate::io::device::{AlsaError, Device};
use crate::io::manager;
use crate::mix::realtime;
use crate::mix::schedule::Schedule;
use crate::mix::{MixCore, Stream, MAX_STREAMS, MUTE_MAX_MS};
use shmix_shared::clock::now_ns;
use shmix_shared::eventfd::EventFd;
use shmix_shared::Direction;

mod devices;

use devices::Side;

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
    /// Detach a stream that moves to another device and send it back as `Detached`: what it
    /// gave this device is played out here and never taken back.
    Detach(u32),
    /// Post `Fatal{ESHUTDOWN}` to every stream and end the thread.
    Shutdown,
}

/// Mix -> control.
#[derive(Debug)]
pub enum Event {
    /// A stream left the mix (removed, or violated the protocol: see `Stream::violation`). Drop
    /// it here, off the real-time thread.
    Retired(Box<Stream>),
    /// An `Add` that found no free slot.
    Rejected(Box<Stream>),
    /// A stream detached for a move (`Command::Detach`), to be added to its new device.
    Detached(Box<Stream>),
    /// The playback device vanished (`false`; its streams wait) or is open again (`true`).
    Presence(bool),
    /// The device failed for good (an unrecoverable error); the thread has ended and every
    /// stream got `Fatal`.
    DeviceFailed(AlsaError),
}

/// Capacity of both queues. Every stream is retired at most once, so events never exceed the
/// streams in existence plus one device failure.
pub const QUEUE_CAPACITY: usize = 4 * MAX_STREAMS;

/// Everything the mix thread owns.
#[derive(Debug)]
pub struct MixThread {
    core: MixCore,
    /// The playback device; without one (vanished, or absent at startup) the streams wait.
    play: Side,
    /// The capture device, open while a recorder runs (or `--keep-capture-open`).
    cap: Side,
    /// The device manager's end: opens, reopens and closes both.
    devices: manager::MixEnd,
    cmds: Consumer<Command>,
    events: Producer<Event>,
    /// Written by the control thread after each command.
    cmd_efd: EventFd,
    /// Written by us after each event.
    ctl_efd: EventFd,
    pfds: Vec<libc::pollfd>,
    /// `--keep-capture-open`.
    keep_capture_open: bool,
    /// `--idle-stop` in ns (0: never): how long the playback device runs without any stream
    /// before it is stopped (no wakeups at all while idle).
    idle_stop_ns: u64,
    /// The SCHED_FIFO priority asked for at start (`--rt-priority`).
    rt_priority: i32,
    /// CLOCK_MONOTONIC ns since which there has been no stream (while the device runs).
    idle_since_ns: Option<u64>,
    /// The device is stopped for idleness; the next stream starts it again.
    idle_stopped: bool,
    /// Timer scheduling of the playback device (opened for it); `None`: one wakeup per device
    /// period.
    sched: Option<Schedule>,
    /// CLOCK_MONOTONIC ns at which the timer wants the thread awake (timer scheduling).
    wake_at_ns: Option<u64>,
}

impl MixThread {
    /// Assembles the thread's state (control thread, before spawning). `device`: the playback
    /// device, or `None` when the manager was told to wait for it (`--wait-for-device`).
    #[must_use]
    pub fn new(
        core: MixCore,
        device: Option<Device>,
        devices: manager::MixEnd,
        cmds: Consumer<Command>,
        events: Producer<Event>,
        cmd_efd: EventFd,
        ctl_efd: EventFd,
    ) -> Self {
        let mut core = core;
        core.set_device_waiting(device.is_none());
        core.counters().device_present.store(device.is_some(), Ordering::Relaxed);
        let empty = libc::pollfd { fd: -1, events: 0, revents: 0 };
        let absent = device.is_none();
        Self {
            core,
            play: Side::new(0, MAX_DEVICE_FDS, device.map(Box::new), absent),
            cap: Side::new(MAX_DEVICE_FDS, MAX_CAPTURE_FDS, None, false),
            devices,
            cmds,
            events,
            cmd_efd,
            ctl_efd,
            pfds: vec![empty; MAX_DEVICE_FDS + MAX_CAPTURE_FDS + 2 + MAX_STREAMS],
            keep_capture_open: false,
            idle_stop_ns: 0,
            rt_priority: DEFAULT_RT_PRIORITY,
            idle_since_ns: None,
            idle_stopped: false,
            sched: None,
            wake_at_ns: None,
        }
    }

    /// Stops the playback device after `after` without any stream (`--idle-stop`; zero: never).
    #[must_use]
    pub fn idle_stop(mut self, after: std::time::Duration) -> Self {
        self.idle_stop_ns = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
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
    /// unmapped, the devices dropped and closed), outside the real-time cycle.
    ///
    /// # Errors
    /// The device failure that ended the thread.
    pub fn run(mut self) -> Result<(), AlsaError> {
        // Before the loop, where blocking is still harmless: rtkit is a D-Bus round trip.
        realtime::make_thread_realtime(self.rt_priority);
        realtime::touch_stack();
        self.core.device_ctl().note_mix_thread();
        let r = self.start(Direction::Playback).and_then(|()| loop {
            audit::set_in_rt(true);
            let step = self.cycle();
            audit::set_in_rt(false);
            match step {
                Ok(false) => {}
                Ok(true) => return Ok(()),
                Err(e) => return Err(e),
            }
        });
        if let Err(e) = r {
            self.core.fatal_all(if e.errno == libc::ENODEV { libc::ENODEV } else { libc::EIO });
            self.emit(Event::DeviceFailed(e));
        }
        r
    }

    pub(super) fn emit(&mut self, ev: Event) {
        // Cannot fail while QUEUE_CAPACITY holds (see there); if it did, dropping here is the
        // lesser evil than blocking.
        let _ = self.events.push(ev);
        self.ctl_efd.signal();
    }

    /// One wait and everything it makes due. True on `Shutdown`.
    fn cycle(&mut self) -> Result<bool, AlsaError> {
        let counters = std::sync::Arc::clone(self.core.counters());
        let ready = self.core.prepare_sleep();
        // Layout: playback device (MAX_DEVICE_FDS slots), capture device, command eventfd,
        // device manager's eventfd, streams' daemon_wake.
        let dn = MAX_DEVICE_FDS + self.cap.nfds;
        self.pfds[dn] = libc::pollfd { fd: self.cmd_efd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        self.pfds[dn + 1] = libc::pollfd { fd: self.devices.answer_fd(), events: libc::POLLIN, revents: 0 };
        let nstreams = self.core.streams().len();
        for (i, s) in self.core.streams().iter().enumerate() {
            self.pfds[dn + 2 + i] = libc::pollfd { fd: s.daemon_wake_fd(), events: libc::POLLIN, revents: 0 };
        }
        let nfds = dn + 2 + nstreams;
        // A suspended device is retried every 10 ms (its fds may not signal the resume). A
        // vanished one is waited for on the manager's eventfd.
        const MS: u64 = 1_000_000;
        let mut timeout: Option<u64> = if ready {
            Some(0)
        } else if self.play.suspended || self.cap.suspended {
            Some(10 * MS)
        } else {
            None
        };
        // A muted stream (it woke us this period already) is heard again within MUTE_MAX_MS even
        // when no device period comes.
        let muted = self.core.any_muted();
        if muted {
            timeout = Some(timeout.map_or(MUTE_MAX_MS as u64 * MS, |t| t.min(MUTE_MAX_MS as u64 * MS)));
        }
        // Timer scheduling: the queue reaches its wake level then.
        if let Some(at) = self.wake_at_ns {
            let t = at.saturating_sub(now_ns());
            timeout = Some(timeout.map_or(t, |o| o.min(t)));
        }
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: (t / 1_000_000_000) as libc::time_t,
            tv_nsec: (t % 1_000_000_000) as libc::c_long,
        });
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `pfds` holds at least `nfds` initialised entries and outlives the call; `tsp`
        // is null or points at `ts`, alive across the call; no signal mask is changed.
        let r = unsafe { libc::ppoll(self.pfds.as_mut_ptr(), nfds as libc::nfds_t, tsp, std::ptr::null()) };
        if r < 0 {
            // EINTR: just go round.
            return Ok(false);
        }
        counters.cycles.fetch_add(1, Ordering::Relaxed);
        if r == 0 && muted {
            self.core.unmute_all();
        }

        let pfds = &self.pfds;
        self.core.after_wake(|i| pfds[dn + 2 + i].revents);
        if self.pfds[dn].revents != 0 {
            self.cmd_efd.drain();
        }
        if self.pfds[dn + 1].revents != 0 {
            self.take_answers()?;
        }
        if self.drain_commands() {
            return Ok(true);
        }
        self.core.process_records();
        self.retire_violated();
        self.release_leaving();
        self.manage_capture();
        if let Err(e) = self.manage_idle() {
            self.fail(Direction::Playback, e, libc::EIO)?;
        }
        if self.play.dev.is_some() && !self.idle_stopped {
            self.serve(Direction::Playback)?;
        }
        if self.cap.dev.is_some() {
            self.serve(Direction::Capture)?;
        }
        self.retire_violated();
        self.release_leaving();
        Ok(false)
    }

    /// Hands back the streams moving to another device that may go now: each once it has
    /// given the device everything it consumed (a stream with frames to play again after a
    /// rewind waits for the next fill, which plays them), any of them while the device is
    /// gone or stopped. RT: yes.
    fn release_leaving(&mut self) {
        let force = self.play.dev.is_none() || self.idle_stopped || self.sched.is_none();
        while self.events.slots() > 0 {
            let Some(s) = self.core.take_left(force) else { break };
            self.emit(Event::Detached(s));
        }
    }

    /// `--idle-stop`: stops the playback device once no stream (and no capture device) has
    /// been there for the idle time, so an idle daemon sleeps until a client comes; the first
    /// stream after that starts it again (prefilled with silence, as at startup). RT: yes (the
    /// device's own calls).
    fn manage_idle(&mut self) -> Result<(), AlsaError> {
        if self.idle_stop_ns == 0 || self.play.dev.is_none() {
            self.idle_since_ns = None;
            return Ok(());
        }
        if !self.core.streams().is_empty() || self.cap.dev.is_some() {
            self.idle_since_ns = None;
            if self.idle_stopped {
                self.idle_stopped = false;
                self.core.counters().idle_now.store(false, Ordering::Relaxed);
                return self.start(Direction::Playback);
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
        if let Some(dev) = self.play.dev.as_deref() {
            dev.stop()?;
        }
        self.wake_at_ns = None;
        self.play.clear_fds(&mut self.pfds);
        self.play.suspended = false;
        self.idle_stopped = true;
        self.idle_since_ns = None;
        self.core.counters().idle_stops.fetch_add(1, Ordering::Relaxed);
        self.core.counters().idle_now.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// True on `Shutdown`.
    fn drain_commands(&mut self) -> bool {
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
                Command::Detach(id) => self.core.mark_leaving(id),
                Command::Shutdown => {
                    self.core.fatal_all(libc::ESHUTDOWN);
                    return true;
                }
            }
        }
        false
    }

    fn retire_violated(&mut self) {
        while self.events.slots() > 0 {
            let Some(s) = self.core.take_violated() else { break };
            self.emit(Event::Retired(s));
        }
    }
}

/// Wakes the mix thread after a command was pushed (control thread).
pub fn kick(cmd_efd: &EventFd) {
    cmd_efd.signal();
}

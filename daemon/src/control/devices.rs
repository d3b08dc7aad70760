//! The devices the daemon serves, as the control thread holds them: one [`Unit`] per ALSA PCM,
//! each with its own real-time mix thread, device manager thread, timing, capture side and
//! command and event queues. Opening a device (negotiating its parameters, probing its capture
//! side) and starting its threads lives here; choosing where a stream goes lives in
//! `server`/`moves`.
//! Runs on the main (control) thread. RT: no.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context};
use log::info;
use rtrb::{Consumer, Producer};
use shmix_shared::chmap::ChannelMap;
use shmix_shared::control::{DeviceInfo, DeviceState};
use shmix_shared::eventfd::EventFd;
use shmix_shared::{AudioParams, ResampleQuality, SampleFormat};

use crate::dsp::DeviceSpec;
use crate::io::device::{AlsaError, Device, Request};
use crate::io::manager::{self, Setup, Stop};
use crate::mix::ctl::DeviceCtl;
use crate::mix::schedule;
use crate::mix::thread::{kick, Command, Event, MixThread, QUEUE_CAPACITY};
use crate::mix::{Counters, MixCore};

/// Most devices one daemon serves.
pub const MAX_DEVICES: usize = shmix_shared::control::MAX_LISTED_DEVICES as usize;

/// Timer scheduling: the period asked of the device (its interrupt rate where period wakeups
/// cannot be turned off, and a BATCH device's pointer step).
pub const TIMER_PERIOD_HINT: u32 = 64;
/// Timer scheduling: most frames mixed in one run (the bus size).
pub const TIMER_RUN_FRAMES: u32 = 1024;

/// How every device is opened and run (the command line's device options).
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// `--format`.
    pub format: Option<SampleFormat>,
    /// `--rate`.
    pub rate: Option<u32>,
    /// `--channels`.
    pub channels: Option<u32>,
    /// `--period`/`--periods` given: one wakeup per period, else timer scheduling.
    pub fixed: bool,
    /// Fixed timing's period (frames).
    pub period: u32,
    /// Fixed timing's periods per buffer.
    pub periods: u32,
    /// `--max-device-buffer-ms`.
    pub max_device_buffer_ms: u32,
    /// The resampling quality of streams that ask for none.
    pub quality: ResampleQuality,
    /// `--keep-capture-open`.
    pub keep_capture_open: bool,
    /// `--wait-for-device`: a device that cannot be opened at start is waited for.
    pub wait_for_device: bool,
    /// `--rt-priority`.
    pub rt_priority: i32,
    /// `--idle-stop`.
    pub idle_stop: Duration,
}

impl DeviceOptions {
    fn request(&self, format: Option<SampleFormat>, rate: Option<u32>, channels: Option<u32>) -> Request {
        Request {
            format,
            rate,
            channels,
            period_frames: if self.fixed { self.period } else { TIMER_PERIOD_HINT },
            periods: self.periods,
            timer_buffer_ms: (!self.fixed).then_some(self.max_device_buffer_ms),
        }
    }

    /// What streams are converted for: with timer scheduling the quantum (the smallest queue
    /// step) stands for the period, and the mix runs in longer runs. `history`: playback
    /// streams keep what they gave a rewindable device, to play it again after a rewind.
    fn spec(&self, p: AudioParams, chmap: ChannelMap, history: bool) -> DeviceSpec {
        let quality = self.quality;
        if self.fixed {
            DeviceSpec { params: p, chmap, quality, run_frames: p.period_frames, history_frames: 0 }
        } else {
            let quantum = schedule::floor_frames(p.rate);
            let params = AudioParams { period_frames: quantum, ..p };
            let history_frames = if history { schedule::deepest_queue(p.buffer_frames) } else { 0 };
            DeviceSpec { params, chmap, quality, run_frames: TIMER_RUN_FRAMES.max(quantum), history_frames }
        }
    }
}

/// One device the daemon serves, as the control thread sees it.
#[derive(Debug)]
pub struct Unit {
    /// Its id in the control protocol: its index in the daemon's list (never reused).
    pub id: u32,
    /// The ALSA PCM name.
    pub name: String,
    /// What playback streams (and monitors) are converted into.
    pub spec: DeviceSpec,
    /// The capture side as probed at start (`None`: capture streams are refused here).
    pub capture: Option<DeviceSpec>,
    /// Master and capture volume, levels, the mix thread's id.
    pub dctl: Arc<DeviceCtl>,
    /// Its mix thread's counters.
    pub counters: Arc<Counters>,
    cmds: Producer<Command>,
    pending: VecDeque<Command>,
    cmd_efd: EventFd,
    events: Consumer<Event>,
    /// Its playback side is open (false while it is gone or not there yet).
    pub present: bool,
    /// Its mix thread ended with a device failure.
    pub failed: bool,
    /// Fixed timing or timer scheduling, and its capabilities, for the log.
    pub timing: String,
    mix: Option<JoinHandle<Result<(), AlsaError>>>,
    manager: Option<(Stop, JoinHandle<()>)>,
}

impl Unit {
    /// Opens the PCM `name` (or, when it cannot be opened and `opts.wait_for_device`, starts
    /// without it: its streams wait until it can), probes its capture side, and starts its
    /// device manager and mix thread. Mix events are signalled on `ctl_efd`.
    ///
    /// # Errors
    /// The device cannot be opened (and is not to be waited for), or a thread cannot start.
    pub fn start(id: u32, name: &str, opts: &DeviceOptions, ctl_efd: &EventFd) -> anyhow::Result<Self> {
        let req = opts.request(opts.format, opts.rate, opts.channels);
        let dev = match Device::open(name, &req) {
            Ok(d) => Some(d),
            Err(e) if opts.wait_for_device => {
                log::warn!("device '{name}' cannot be opened ({e}); --wait-for-device: its clients wait until it can");
                None
            }
            Err(e) => return Err(anyhow!(e)).with_context(|| format!("opening device '{name}'")),
        };
        let (p, chmap) = match &dev {
            Some(d) => (d.params(), d.chmap()),
            None => {
                let channels = opts.channels.unwrap_or(2);
                if !(1..=shmix_shared::msg::MAX_CHANNELS).contains(&channels) {
                    return Err(anyhow!("--channels {channels} out of range"));
                }
                let rate = opts.rate.unwrap_or(48000);
                let p = AudioParams {
                    format: opts.format.unwrap_or(SampleFormat::S16Le),
                    rate,
                    channels,
                    period_frames: req.period_frames,
                    buffer_frames: if opts.fixed {
                        opts.period.saturating_mul(opts.periods)
                    } else {
                        opts.max_device_buffer_ms.saturating_mul(rate / 1000)
                    },
                };
                (p, ChannelMap::standard(channels))
            }
        };
        let rewinds = !opts.fixed && dev.as_ref().is_some_and(|d| d.caps().rewind);
        let spec = opts.spec(p, chmap, rewinds);
        // The capture side is probed once (opened for real when the first recorder starts): its
        // parameters are what capture streams are converted from; later opens ask for exactly
        // these. Absent at start, it is assumed to match the playback side.
        let same = opts.request(Some(p.format), Some(p.rate), Some(p.channels));
        let capture = if dev.is_none() {
            Some((same, spec))
        } else {
            match Device::open_capture(name, &same) {
                Ok(c) => {
                    let cp = c.params();
                    info!(
                        "device '{name}': capture side {} {} Hz {} ch {:?}, period {} frames, buffer {} frames (opened while recording{})",
                        cp.format,
                        cp.rate,
                        cp.channels,
                        c.chmap().positions(),
                        cp.period_frames,
                        cp.buffer_frames,
                        if opts.keep_capture_open { ", then kept open" } else { "" }
                    );
                    let creq = opts.request(Some(cp.format), Some(cp.rate), Some(cp.channels));
                    Some((creq, opts.spec(cp, c.chmap(), false)))
                }
                Err(e) => {
                    info!("device '{name}' has no usable capture side ({e}); capture streams are refused there");
                    None
                }
            }
        };
        let timing = match dev.as_ref().map(Device::caps) {
            _ if opts.fixed => "fixed timing (one wakeup per period)".to_string(),
            Some(c) => format!(
                "timer scheduling (queue from {} frames, follows the clients; rewind {}, batch {}, fifo {})",
                spec.params.period_frames,
                if c.rewind { "yes" } else { "no" },
                if c.batch { "yes" } else { "no" },
                c.fifo_frames
            ),
            None => "timer scheduling".to_string(),
        };

        let counters = Arc::new(Counters::default());
        let dctl = Arc::new(DeviceCtl::new(p.channels, p.rate));
        let core = MixCore::new(p.format, Arc::clone(&dctl), spec.run_frames as usize, Arc::clone(&counters));
        let (cmd_tx, cmd_rx) = rtrb::RingBuffer::new(QUEUE_CAPACITY);
        let (ev_tx, ev_rx) = rtrb::RingBuffer::new(QUEUE_CAPACITY);
        let cmd_efd = EventFd::new().context("eventfd")?;
        // The device manager opens the capture side for the recorders, and closes and reopens a
        // side that vanishes with this same request while its clients wait.
        let play_setup = Setup { name: name.to_owned(), req, params: p, chmap: spec.chmap };
        let cap_setup = capture.as_ref().map(|(creq, cspec)| Setup {
            name: name.to_owned(),
            req: *creq,
            params: cspec.params,
            chmap: cspec.chmap,
        });
        let (devices_end, mut devices, devices_stop) = manager::link(play_setup, cap_setup)?;
        let present = dev.is_some();
        if !present {
            devices = devices.absent_at_start();
        }
        let manager = std::thread::Builder::new().name("shmix-devices".into()).spawn(move || devices.run())?;
        let mix = MixThread::new(core, dev, devices_end, cmd_rx, ev_tx, cmd_efd.try_clone()?, ctl_efd.try_clone()?)
            .keep_capture_open(opts.keep_capture_open)
            .idle_stop(opts.idle_stop)
            .rt_priority(opts.rt_priority);
        let mix = std::thread::Builder::new().name("shmix-mix".into()).spawn(move || mix.run())?;
        Ok(Self {
            id,
            name: name.to_owned(),
            spec,
            capture: capture.map(|(_, s)| s),
            dctl,
            counters,
            cmds: cmd_tx,
            pending: VecDeque::new(),
            cmd_efd,
            events: ev_rx,
            present,
            failed: false,
            timing,
            mix: Some(mix),
            manager: Some((devices_stop, manager)),
        })
    }

    /// The parameters a stream of `direction` is converted from or into here: the capture
    /// side's for capture streams (where there is one), the playback side's otherwise.
    #[must_use]
    pub fn params_for(&self, direction: shmix_shared::Direction) -> AudioParams {
        match (&self.capture, direction) {
            (Some(spec), shmix_shared::Direction::Capture) => spec.params,
            _ => self.spec.params,
        }
    }

    /// One line describing the device (its startup log line).
    #[must_use]
    pub fn describe(&self) -> String {
        let p = self.spec.params;
        format!(
            "device '{}' {} {} Hz {} ch {:?}, quantum {} frames, buffer {} frames, resampling {}, {}",
            self.name,
            p.format,
            p.rate,
            p.channels,
            self.spec.chmap.positions(),
            p.period_frames,
            p.buffer_frames,
            self.spec.quality.name(),
            self.timing
        )
    }

    /// Queues a command for the mix thread (sent now if its queue has room, else on the next
    /// [`Unit::flush`]).
    pub fn send(&mut self, c: Command) {
        self.pending.push_back(c);
        self.flush();
    }

    /// Sends what is pending, as far as the queue takes it; kicks the mix thread if anything
    /// went.
    pub fn flush(&mut self) {
        let mut sent = false;
        while let Some(c) = self.pending.pop_front() {
            match self.cmds.push(c) {
                Ok(()) => sent = true,
                Err(rtrb::PushError::Full(c)) => {
                    self.pending.push_front(c);
                    break;
                }
            }
        }
        if sent {
            kick(&self.cmd_efd);
        }
    }

    /// Commands wait for room in the queue.
    #[must_use]
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Wakes the mix thread (a volume changed: it mixes again what is queued).
    pub fn kick(&self) {
        kick(&self.cmd_efd);
    }

    /// The next event from the mix thread.
    pub fn event(&mut self) -> Option<Event> {
        self.events.pop().ok()
    }

    /// Its mix thread is stopped for idleness.
    #[must_use]
    pub fn idle(&self) -> bool {
        self.counters.idle_now.load(Ordering::Relaxed)
    }

    /// What it is doing.
    #[must_use]
    pub fn state(&self) -> DeviceState {
        if self.failed {
            DeviceState::Failed
        } else if !self.present {
            DeviceState::Absent
        } else if self.idle() {
            DeviceState::Idle
        } else {
            DeviceState::Running
        }
    }

    /// The device as `shmixctl devices` lists it.
    #[must_use]
    pub fn info(&self, streams: u32, default: bool, preferred: bool) -> DeviceInfo {
        let c = &self.counters;
        DeviceInfo {
            id: self.id,
            name: self.name.clone(),
            params: self.spec.params,
            capture: self.capture.is_some(),
            state: self.state(),
            streams,
            default,
            preferred,
            queue_frames: u32::try_from(c.queue_frames.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            cycles: c.cycles.load(Ordering::Relaxed),
            mix_cpu_ns: self.dctl.mix_cpu_ns(),
            device_xruns: c.device_xruns.load(Ordering::Relaxed),
            sampled_ns: shmix_shared::clock::now_ns(),
            master_volume: self.dctl.master.volume(),
            master_muted: self.dctl.master.muted(),
            capture_volume: self.dctl.capture.volume(),
            capture_muted: self.dctl.capture.muted(),
        }
    }

    /// Shutdown: tells the mix thread to post `Fatal{ESHUTDOWN}` and end (retrying for up to a
    /// second while its queue is full).
    pub fn request_shutdown(&mut self) {
        if self.failed {
            return;
        }
        self.send(Command::Shutdown);
        let until = std::time::Instant::now() + Duration::from_secs(1);
        while self.has_pending() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
            self.flush();
        }
    }

    /// Shutdown, after [`Unit::request_shutdown`]: waits for the mix thread, stops the device
    /// manager, drops what the mix thread handed back. Returns how the mix thread ended.
    pub fn join(&mut self) -> Option<std::thread::Result<Result<(), AlsaError>>> {
        let r = self.mix.take().map(JoinHandle::join);
        if let Some((stop, handle)) = self.manager.take() {
            stop.stop();
            let _ = handle.join();
        }
        while self.events.pop().is_ok() {}
        r
    }
}

/// `hw:N` of every sound card ALSA knows, in card order.
#[must_use]
pub fn hardware_cards() -> Vec<String> {
    crate::io::device::cards().into_iter().map(|n| format!("hw:{n}")).collect()
}

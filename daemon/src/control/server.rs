//! The control thread's loop: accepts clients (access and limits checked before a byte is read),
//! polls their sockets and the mix threads' events, hands client packets to `session`, answers
//! control clients (moves and the default device in `moves`), and writes the statistics report.
//! Talks to each device's mix thread through its `mix::thread::Command` and
//! `mix::thread::Event` queues (`devices::Unit`); never touches a stream while a mix thread
//! holds it.
//! Runs on the main thread. RT: no.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use log::{debug, error, info, warn};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{self, SockFlag};
use shmix_shared::control::{self as ctlwire, Target};
use shmix_shared::eventfd::EventFd;
use shmix_shared::socket as wire;
use shmix_shared::{Direction, SocketMsg};

use super::devices::{DeviceOptions, Unit};
use super::hotplug::Hotplug;
use super::session::{Client, Disconnect, Phase};
use crate::control::access::{Peer, Policy};
use crate::control::limits::{AcceptGate, Limits};
use crate::control::registry::{Control, DeviceFigures, ServerFigures};
use crate::mix::thread::{Command, Event};

/// What the control loop holds.
#[derive(Debug)]
pub struct Server {
    pub(super) socket_path: PathBuf,
    pub(super) listen: OwnedFd,
    pub(super) signals: SignalFd,
    /// The devices served, by id (a device keeps its place for as long as the daemon runs).
    pub(super) units: Vec<Unit>,
    /// The default device now (streams that name none play there and follow it).
    pub(super) default: usize,
    /// The preferred default (`--prefer`, the last `shmixctl default`, else the first
    /// device): it becomes the default again whenever it is present.
    pub(super) preferred: Option<String>,
    /// Where `shmixctl default` is remembered (`--state-dir`/default-device).
    pub(super) state_file: Option<PathBuf>,
    /// Every mix thread signals it after posting an event.
    pub(super) ctl_efd: EventFd,
    /// Serving every hardware card: the watch for cards that appear, and how they are opened.
    pub(super) hotplug: Option<(Hotplug, DeviceOptions)>,
    pub(super) clients: Vec<Client>,
    pub(super) next_stream_id: u32,
    pub(super) streams_attached: usize,
    /// Volumes, levels, the stream registry (`shmixctl`, ctl plugin).
    pub(super) control: Control,
    /// Who may connect (checked at accept, before any byte is read).
    pub(super) access: Policy,
    pub(super) limits: Limits,
    pub(super) accept_gate: AcceptGate,
}

/// How the daemon ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// SIGTERM/SIGINT.
    Shutdown,
    /// The device failed; exit with an error.
    DeviceFailed,
}

impl Server {
    /// Assembles the control side for `units` (at least one; the first is the default), whose
    /// mix threads signal `ctl_efd`.
    #[must_use]
    pub fn new(socket_path: PathBuf, listen: OwnedFd, signals: SignalFd, units: Vec<Unit>, ctl_efd: EventFd) -> Self {
        let preferred = units.first().map(|u| u.name.clone());
        Self {
            socket_path,
            listen,
            signals,
            units,
            default: 0,
            preferred,
            state_file: None,
            ctl_efd,
            hotplug: None,
            clients: Vec::new(),
            next_stream_id: 1,
            streams_attached: 0,
            control: Control::new(),
            access: Policy::user(),
            limits: Limits::default(),
            accept_gate: AcceptGate::default(),
        }
    }

    /// Sends `Changed{target}` to every subscribed control connection (never blocks: a
    /// subscriber whose socket is full misses the event).
    pub(super) fn notify(&self, target: Target) {
        let bytes = ctlwire::Reply::Changed { target }.encode();
        for c in self.clients.iter().filter(|c| c.phase == Phase::Subscribed) {
            let _ = ctlwire::send_packet(c.fd.as_fd(), &bytes);
        }
    }

    /// One packet from a control connection.
    pub(super) fn control_packet(&mut self, fd: RawFd) {
        // SAFETY: `fd` belongs to a client in `self.clients`, open for this call.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let bytes = match ctlwire::recv_packet(b) {
            Ok(p) if p.is_empty() => return self.disconnect(fd, None),
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => return self.disconnect(fd, Some(Disconnect(format!("control recv: {e}")))),
        };
        let req = match ctlwire::Request::decode(&bytes) {
            Ok(r) => r,
            Err(e) => return self.disconnect(fd, Some(Disconnect(format!("bad control packet: {e}")))),
        };
        let (reply, changed) = match req {
            ctlwire::Request::Devices => (self.devices_reply(), None),
            ctlwire::Request::Move { stream, device } => self.move_request(stream, device),
            ctlwire::Request::SetDefault { device } => self.default_request(device),
            _ => {
                let units: Vec<DeviceFigures<'_>> = self
                    .units
                    .iter()
                    .map(|u| DeviceFigures { dctl: &u.dctl, params: u.spec.params, counters: &u.counters })
                    .collect();
                let figures =
                    ServerFigures { units: &units, default: self.default, clients: self.clients.len() as u32 };
                self.control.handle(req, &figures)
            }
        };
        if changed.is_some() {
            // A volume or mute changed: the mix threads, asleep until their queues run low, take
            // it (and mix again what is queued) now.
            for u in &self.units {
                u.kick();
            }
        }
        if req == ctlwire::Request::Subscribe {
            if let Some(c) = self.clients.iter_mut().find(|c| c.fd.as_raw_fd() == fd) {
                c.phase = Phase::Subscribed;
            }
        }
        if let Err(e) = ctlwire::send_packet(b, &reply.encode()) {
            debug!("control reply to fd {fd}: {e}");
        }
        if let Some(t) = changed {
            self.notify(t);
        }
    }

    /// Sets who may connect (default: [`Policy::user`]).
    #[must_use]
    pub fn with_access(mut self, access: Policy) -> Self {
        self.access = access;
        self
    }

    /// Sets the client limits (`--max-clients`, `--max-streams-per-client`, `--max-client-shm`,
    /// `--handshake-timeout`).
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the preferred default (`--prefer`, or what `shmixctl default` left in the state
    /// directory) and where `shmixctl default` is remembered. The preferred device, if it is
    /// served and present, is the default.
    #[must_use]
    pub fn with_preference(mut self, preferred: Option<String>, state_file: Option<PathBuf>) -> Self {
        if preferred.is_some() {
            self.preferred = preferred;
        }
        self.state_file = state_file;
        if let Some(i) = self.preferred_unit().filter(|&i| self.units[i].present) {
            self.default = i;
        } else if let Some(i) = self.units.iter().position(|u| u.present).filter(|_| !self.units[self.default].present)
        {
            // The first device is not there yet (`--wait-for-device`): the first one that is.
            self.default = i;
        }
        self
    }

    /// Serves the hardware cards that appear from now on, opened with `opts` (started without
    /// `--device`). Without inotify, cards are found at start only (logged).
    #[must_use]
    pub fn with_hotplug(mut self, opts: DeviceOptions) -> Self {
        match Hotplug::new(Path::new("/dev/snd")) {
            Ok(h) => self.hotplug = Some((h, opts)),
            Err(e) => warn!("cannot watch /dev/snd for sound cards that appear ({e}); cards are found at start only"),
        }
        self
    }

    /// Reads ALSA's card list again and serves the cards it does not serve yet.
    fn rescan_cards(&mut self) {
        let Some((_, opts)) = &self.hotplug else { return };
        let opts = DeviceOptions { wait_for_device: false, ..opts.clone() };
        for name in super::devices::hardware_cards() {
            if self.units.len() >= super::devices::MAX_DEVICES || self.units.iter().any(|u| u.name == name) {
                continue;
            }
            let id = self.units.len() as u32;
            match Unit::start(id, &name, &opts, &self.ctl_efd) {
                Ok(u) => {
                    info!("new card: {}", u.describe());
                    self.units.push(u);
                    let i = self.units.len() - 1;
                    if self.preferred_unit() == Some(i) || !self.units[self.default].present {
                        self.set_default(i);
                    }
                }
                // Perhaps not ready yet (permissions): the next change in /dev/snd tries again.
                Err(e) => debug!("card '{name}' not opened: {e:#}"),
            }
        }
    }

    /// Sends a command to device `unit`'s mix thread.
    pub(super) fn send_cmd(&mut self, unit: usize, c: Command) {
        if let Some(u) = self.units.get_mut(unit) {
            u.send(c);
        }
    }

    pub(super) fn flush_cmds(&mut self) {
        for u in &mut self.units {
            u.flush();
        }
    }

    /// Serves until a signal or a device failure.
    ///
    /// # Errors
    /// A failure of the control loop itself (poll).
    pub fn run(&mut self) -> anyhow::Result<Outcome> {
        let mut last_stats = Instant::now();
        // The once-a-second line is written while something happens (clients, a running device,
        // or the mix thread still cycling); an idle daemon whose device stopped does not wake at
        // all.
        let mut last_cycles = u64::MAX;
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        loop {
            pfds.clear();
            // While the accept loop rests (out of descriptors) the listening socket is not polled.
            let listen_fd = if self.accept_gate.open(Instant::now()) { self.listen.as_raw_fd() } else { -1 };
            let hotplug_fd = self.hotplug.as_ref().map_or(-1, |(h, _)| h.fd());
            for fd in [listen_fd, self.signals.as_fd().as_raw_fd(), self.ctl_efd.as_raw_fd(), hotplug_fd] {
                pfds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            }
            for c in &self.clients {
                pfds.push(libc::pollfd { fd: c.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            let now = Instant::now();
            let cycles = self.cycles();
            let busy = self.busy(cycles, last_cycles);
            let mut timeout = busy.then(|| Duration::from_secs(1).saturating_sub(now - last_stats));
            let mut at_most = |d: Duration| timeout = Some(timeout.map_or(d, |t| t.min(d)));
            for c in self.clients.iter().filter(|c| c.awaits_something()) {
                at_most(c.deadline.saturating_duration_since(now));
            }
            if self.units.iter().any(Unit::has_pending) {
                at_most(Duration::from_millis(5));
            }
            if let Some(rest) = self.accept_gate.wait(now) {
                at_most(rest);
            }
            if let Some(rest) = self.hotplug.as_ref().and_then(|(h, _)| h.rescan_in(now)) {
                at_most(rest);
            }
            let ms = timeout.map_or(-1, |t| t.as_millis().min(1000) as libc::c_int + 1);
            // SAFETY: `pfds` holds `len` initialised entries.
            let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("poll");
            }
            self.flush_cmds();
            if pfds[1].revents != 0 {
                if let Ok(Some(sig)) = self.signals.read_signal() {
                    info!("signal {} received: shutting down", sig.ssi_signo);
                    return Ok(Outcome::Shutdown);
                }
            }
            if pfds[2].revents != 0 {
                self.ctl_efd.drain();
            }
            if self.handle_events() {
                return Ok(Outcome::DeviceFailed);
            }
            if let Some((h, _)) = self.hotplug.as_mut() {
                if pfds[3].revents != 0 {
                    h.take_events();
                }
                if h.rescan_due(Instant::now()) {
                    self.rescan_cards();
                }
            }
            // Clients, by fd (the list may shrink while we go).
            let ready: Vec<(RawFd, i16)> =
                pfds[4..].iter().filter(|p| p.revents != 0).map(|p| (p.fd, p.revents)).collect();
            for (fd, rev) in ready {
                self.client_ready(fd, rev);
            }
            if pfds[0].revents != 0 {
                self.accept_all();
            }
            let now = Instant::now();
            let late: Vec<(RawFd, bool)> = self
                .clients
                .iter()
                .filter(|c| c.awaits_something() && now >= c.deadline)
                .map(|c| (c.fd.as_raw_fd(), c.phase == Phase::AwaitHello))
                .collect();
            for (fd, no_hello) in late {
                let limit = self.limits.handshake_timeout.as_secs_f64();
                let what = if no_hello { "no Hello" } else { "no stream created" };
                let after = if no_hello { "" } else { " after Hello" };
                self.disconnect(fd, Some(Disconnect(format!("{what} within {limit} s{after} (--handshake-timeout)"))));
            }
            if now - last_stats >= Duration::from_secs(1) {
                last_stats = now;
                let cycles = self.cycles();
                if self.busy(cycles, last_cycles) {
                    for line in self.stats_lines() {
                        debug!("{line}");
                    }
                }
                last_cycles = cycles;
            }
        }
    }

    /// Every mix thread's cycles, summed.
    fn cycles(&self) -> u64 {
        self.units.iter().map(|u| u.counters.cycles.load(Ordering::Relaxed)).sum()
    }

    /// Something happens: clients are connected, a device runs, or a mix thread cycled since
    /// the last stats line (at `last_cycles`).
    fn busy(&self, cycles: u64, last_cycles: u64) -> bool {
        !self.clients.is_empty() || cycles != last_cycles || self.units.iter().any(|u| !u.failed && !u.idle())
    }

    /// The real-time counters: one line per device (prefixed with its name when there are
    /// several).
    #[must_use]
    pub fn stats_lines(&self) -> Vec<String> {
        let several = self.units.len() > 1;
        self.units
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let line = self.stats_line(u, self.streams_on(i));
                if several {
                    format!("device '{}': {line}", u.name)
                } else {
                    line
                }
            })
            .collect()
    }

    /// One line of one device's real-time counters.
    fn stats_line(&self, u: &Unit, streams: usize) -> String {
        let c = &u.counters;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut s = format!(
            "clients {} streams {} | cycles {} frames {} fastpath {} device xruns {} suspends {} lost {} reopened {} \
             stream underruns {} wakeups sent {} skipped {} muted {} records dropped {} | captured {} monitored {} overruns {} capture-xruns {} capture-lost {} capture-reopened {} | idle stops {} | queue {} wake level {} late wakes {} rewound {} skew {} ppm",
            self.clients.len(),
            streams,
            g(&c.cycles),
            g(&c.frames_mixed),
            g(&c.fastpath_frames),
            g(&c.device_xruns),
            g(&c.device_suspends),
            g(&c.device_lost),
            g(&c.device_reopened),
            g(&c.stream_underruns),
            g(&c.wakeups_sent),
            g(&c.wakeups_skipped),
            g(&c.wakes_muted),
            g(&c.records_dropped),
            g(&c.captured_frames),
            g(&c.monitor_frames),
            g(&c.capture_overruns),
            g(&c.capture_xruns),
            g(&c.capture_lost),
            g(&c.capture_reopened),
            g(&c.idle_stops),
            g(&c.queue_frames),
            g(&c.wake_level_frames),
            g(&c.late_wakes),
            g(&c.rewound_frames),
            g(&c.skew_ppm) as i64,
        );
        if crate::audit::enabled() {
            s.push_str(&format!(" | rt allocations {}", crate::audit::rt_allocations()));
        }
        s
    }

    /// Streams on device `unit` (attached there, or on their way to another device).
    pub(super) fn streams_on(&self, unit: usize) -> usize {
        self.clients.iter().filter(|c| c.stream.is_some() && c.device == unit).count()
    }

    /// A stream is gone from the mix for good (retired, rejected, dropped after or during a
    /// move): it leaves the registry and the count, and the subscribers are told.
    pub(super) fn forget_stream(&mut self, id: u32) {
        self.streams_attached = self.streams_attached.saturating_sub(1);
        self.control.unregister(id);
        self.notify(Target::Stream(id));
    }

    /// Takes every device's events. Returns true when every device failed.
    pub(super) fn handle_events(&mut self) -> bool {
        for u in 0..self.units.len() {
            while let Some(ev) = self.units[u].event() {
                self.handle_event(u, ev);
            }
        }
        self.units.iter().all(|u| u.failed)
    }

    fn handle_event(&mut self, unit: usize, ev: Event) {
        match ev {
            Event::Retired(s) => {
                let id = s.id;
                self.forget_stream(id);
                let owner = self.clients.iter().position(|c| c.stream == Some(id));
                if let Some(v) = s.violation() {
                    if let Some(i) = owner {
                        let fd = self.clients[i].fd.as_raw_fd();
                        self.clients[i].stream = None;
                        self.clients[i].moving = None;
                        self.disconnect(fd, Some(Disconnect::from(v)));
                    }
                } else if let Some(i) = owner {
                    let c = &mut self.clients[i];
                    c.stream = None;
                    c.moving = None;
                    if c.destroying {
                        c.destroying = false;
                        info!("client pid {} ({}): stream {id} closed", c.pid, c.name);
                        let fd = c.fd.as_raw_fd();
                        self.reply(fd, &SocketMsg::StreamDestroyed);
                    }
                }
                debug!("stream {id} retired");
                drop(s);
            }
            Event::Rejected(s) => {
                self.forget_stream(s.id);
                if let Some(i) = self.clients.iter().position(|c| c.stream == Some(s.id)) {
                    let fd = self.clients[i].fd.as_raw_fd();
                    self.clients[i].stream = None;
                    self.disconnect(fd, Some(Disconnect("mixer has no free stream slot".into())));
                }
            }
            Event::Detached(s) => self.detached(unit, s),
            Event::Presence(present) => self.presence(unit, present),
            Event::DeviceFailed(e) => {
                let u = &mut self.units[unit];
                u.failed = true;
                u.present = false;
                error!("device '{}' failed: {e}; its clients got Fatal", u.name);
                self.device_gone(unit);
            }
        }
    }

    pub(super) fn accept_all(&mut self) {
        loop {
            let fd = match socket::accept4(self.listen.as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) if AcceptGate::is_exhaustion(e as i32) => {
                    self.accept_gate.failed(e as i32, self.clients.len(), Instant::now());
                    return;
                }
                Err(e) => {
                    warn!("accept: {e}");
                    return;
                }
            };
            self.accept_gate.accepted();
            let peer = match Peer::of(fd.as_fd()) {
                Ok(p) => p,
                Err(e) => {
                    warn!("client refused: reading its credentials (SO_PEERCRED/SO_PEERGROUPS) failed: {e}");
                    continue;
                }
            };
            if let Err(reason) = self.access.admit(&peer) {
                warn!("client pid {} refused: {reason}", peer.pid);
                let _ = wire::send(
                    fd.as_fd(),
                    &SocketMsg::Refused { errno: libc::EACCES as u32, reason: format!("permission denied: {reason}") },
                    &[],
                );
                continue;
            }
            if let Err(r) = self.limits.check_connection(self.clients.len()) {
                info!("client pid {} refused: {}", peer.pid, r.reason);
                let _ = wire::send(fd.as_fd(), &SocketMsg::Refused { errno: r.errno as u32, reason: r.reason }, &[]);
                continue;
            }
            debug!("client pid {} (uid {}) connected", peer.pid, peer.uid);
            self.clients.push(Client {
                fd,
                pid: peer.pid,
                uid: peer.uid,
                name: String::new(),
                phase: Phase::AwaitHello,
                deadline: Instant::now() + self.limits.handshake_timeout,
                had_stream: false,
                stream: None,
                shm_bytes: 0,
                destroying: false,
                direction: Direction::Playback,
                device: self.default,
                pinned: false,
                moving: None,
                spec: None,
            });
        }
    }

    /// Shutdown, step 2 (after the mix threads posted Fatal and ended): closes every client.
    pub fn close_clients(&mut self) {
        self.clients.clear();
    }

    /// Shutdown: `Fatal{ESHUTDOWN}` to every stream, every mix thread stopped and joined (each
    /// drops its device and the streams it holds), every device manager stopped. Returns the
    /// mix threads' failures, for the exit report.
    pub fn shutdown_devices(&mut self) -> Vec<String> {
        for u in &mut self.units {
            u.request_shutdown();
        }
        let mut failures = Vec::new();
        for u in &mut self.units {
            match u.join() {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(e))) => failures.push(format!("device '{}': mix thread ended: {e}", u.name)),
                Some(Err(_)) => failures.push(format!("device '{}': mix thread panicked", u.name)),
            }
        }
        failures
    }

    /// The socket path (to unlink at exit).
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }
}

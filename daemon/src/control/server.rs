//! The control thread: the listening socket, client handshakes, stream setup and teardown,
//! signals, and the statistics report. Talks to the mix thread through `mixthread::Command` and
//! `mixthread::Event` queues; never touches a stream while the mix thread holds it.
//! Runs on the main thread. RT: no.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use log::{debug, error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use rtrb::{Consumer, Producer};
use shmix_shared::chmap::ChannelMap;
use shmix_shared::control::{self as ctlwire, Target};
use shmix_shared::layout::Layout;
use shmix_shared::msg::{MAX_CHANNELS, MAX_RATE, MIN_RATE};
use shmix_shared::shm::{MapError, StreamShm};
use shmix_shared::socket as wire;
use shmix_shared::text::escape_controls;
use shmix_shared::ResampleQuality;
use shmix_shared::{AudioParams, Direction, SocketMsg, Violation, WakeFd, PROTOCOL_VERSION};

use crate::control::access::{Peer, Policy};
use crate::control::limits::{AcceptGate, Limits};
use crate::control::registry::{Control, ServerFigures};
use crate::dsp::{DeviceSpec, Pipeline, RecordPipe, StreamSpec};
use crate::io::device::{Device, Request};
use crate::mix::ctl::DeviceCtl;
use crate::mix::thread::{kick, Command, Event};
use crate::mix::{Counters, Stream, MAX_STREAMS};
use shmix_shared::eventfd::EventFd;

/// Creates the socket's directory (0700), refuses a directory another user could tamper with
/// ([`check_socket_dir`]), refuses a path where another daemon answers, removes a stale socket
/// file.
///
/// # Errors
/// The directory is not safe, another daemon answers, or a filesystem call fails.
pub fn check_socket_path(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating socket directory {}", dir.display()))?;
        }
        let md = std::fs::metadata(dir).with_context(|| format!("checking socket directory {}", dir.display()))?;
        // SAFETY: geteuid cannot fail.
        check_socket_dir(dir, md.uid(), md.mode(), unsafe { libc::geteuid() })?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
        Ok(md) => {
            if !md.file_type().is_socket() {
                bail!("{} exists and is not a socket; refusing to replace it", path.display());
            }
            let probe = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
            let addr = UnixAddr::new(path)?;
            if socket::connect(probe.as_raw_fd(), &addr).is_ok() {
                bail!("another shmixd is already serving {}", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
            info!("removed stale socket {}", path.display());
            Ok(())
        }
    }
}

/// A socket directory must belong to the daemon's user or root and be writable by nobody else
/// (no group or other write bit, sticky or not): whoever can write there can replace the socket
/// with their own and receive every client's audio and shared memory (`/tmp/shmix-$UID` made
/// first by another user, a `--socket` in a shared directory). A root-owned 0755 `/run/shmix`
/// and the 0750 directory `--system` creates pass.
///
/// # Errors
/// Says who owns the directory, its mode, and what is expected.
pub fn check_socket_dir(dir: &Path, owner: u32, mode: u32, euid: u32) -> anyhow::Result<()> {
    if owner != euid && owner != 0 {
        bail!(
            "socket directory {} belongs to uid {owner}, not to this daemon's uid {euid} or root: another user \
             could replace the socket; refusing to listen there (use a directory of your own, or remove it)",
            dir.display()
        );
    }
    if mode & 0o022 != 0 {
        bail!(
            "socket directory {} is writable by others (mode {:04o}): anyone who can write there could replace \
             the socket; refusing to listen there (chmod go-w it, or use a directory of your own)",
            dir.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// Binds and listens (non-blocking).
///
/// # Errors
/// The failing socket call.
pub fn listen(path: &Path) -> anyhow::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    socket::bind(fd.as_raw_fd(), &addr).with_context(|| format!("binding {}", path.display()))?;
    socket::listen(&fd, socket::Backlog::new(64)?).context("listen")?;
    Ok(fd)
}

/// Blocks SIGTERM/SIGINT in this thread (threads spawned later inherit the mask) and returns a
/// signalfd for them. Call before spawning the mix thread.
///
/// # Errors
/// The failing call.
pub fn signal_fd() -> anyhow::Result<SignalFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking signals")?;
    Ok(SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?)
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    Ready,
    /// A control connection (`shmixctl`, the ctl plugin): `control::Request` packets.
    Control,
    /// A control connection that gets `Changed` events.
    Subscribed,
}

#[derive(Debug)]
struct Client {
    fd: OwnedFd,
    pid: i32,
    /// The peer's uid (`SO_PEERCRED` at accept): the per-uid limits, and the owner a stream's
    /// wake sockets must have.
    uid: u32,
    /// The program name from `Hello`, control characters escaped.
    name: String,
    phase: Phase,
    /// `AwaitHello`: when the Hello is due; `Ready`: when the first stream is, unless
    /// `had_stream`.
    deadline: Instant,
    /// A stream was created on this connection (it may idle between streams from then on).
    had_stream: bool,
    stream: Option<u32>,
    /// Bytes of the attached stream's memfd (counted against `--max-client-shm` while `stream` is set).
    shm_bytes: u64,
    destroying: bool,
    direction: Direction,
}

impl Client {
    /// Whether the connection has a deadline: it has not said Hello yet, or said it and has
    /// not created a stream (nor become a control connection). An idle connection costs the
    /// daemon a descriptor and a `--max-clients` slot for as long as it stays.
    fn awaits_something(&self) -> bool {
        match self.phase {
            Phase::AwaitHello => true,
            Phase::Ready => !self.had_stream && self.stream.is_none(),
            Phase::Control | Phase::Subscribed => false,
        }
    }
}

/// What the control loop holds.
#[derive(Debug)]
pub struct Server {
    socket_path: PathBuf,
    listen: OwnedFd,
    signals: SignalFd,
    device: DeviceSpec,
    cmds: Producer<Command>,
    pending: VecDeque<Command>,
    cmd_efd: EventFd,
    events: Consumer<Event>,
    ctl_efd: EventFd,
    counters: Arc<Counters>,
    /// The capture side: the PCM name, the request it is opened with, and its parameters as
    /// probed at startup (`None`: the device has no usable capture side).
    capture: Option<(String, Request, DeviceSpec)>,
    clients: Vec<Client>,
    next_stream_id: u32,
    streams_attached: usize,
    /// Volumes, levels, the stream registry (`shmixctl`, ctl plugin).
    control: Control,
    /// Who may connect (checked at accept, before any byte is read).
    access: Policy,
    limits: Limits,
    accept_gate: AcceptGate,
}

/// How the daemon ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// SIGTERM/SIGINT.
    Shutdown,
    /// The device failed; exit with an error.
    DeviceFailed,
}

/// A reason to disconnect a client: logged once, as one warning line.
struct Disconnect(String);

impl From<Violation> for Disconnect {
    fn from(v: Violation) -> Self {
        Self(format!("protocol violation: {v}"))
    }
}

impl Server {
    /// Assembles the control side.
    #[allow(clippy::too_many_arguments)]
    #[must_use]
    pub fn new(
        socket_path: PathBuf,
        listen: OwnedFd,
        signals: SignalFd,
        device: DeviceSpec,
        cmds: Producer<Command>,
        cmd_efd: EventFd,
        events: Consumer<Event>,
        ctl_efd: EventFd,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            socket_path,
            listen,
            signals,
            device,
            cmds,
            pending: VecDeque::new(),
            cmd_efd,
            events,
            ctl_efd,
            counters,
            capture: None,
            clients: Vec::new(),
            next_stream_id: 1,
            streams_attached: 0,
            control: Control::new(Arc::new(DeviceCtl::new(device.params.channels, device.params.rate))),
            access: Policy::user(),
            limits: Limits::default(),
            accept_gate: AcceptGate::default(),
        }
    }

    /// Shares the device's volume and level state with the mix core (`MixCore::with_control`).
    #[must_use]
    pub fn with_control(mut self, dctl: Arc<DeviceCtl>) -> Self {
        self.control = Control::new(dctl);
        self
    }

    /// Sends `Changed{target}` to every subscribed control connection (never blocks: a
    /// subscriber whose socket is full misses the event).
    fn notify(&self, target: Target) {
        let bytes = ctlwire::Reply::Changed { target }.encode();
        for c in self.clients.iter().filter(|c| c.phase == Phase::Subscribed) {
            let _ = ctlwire::send_packet(c.fd.as_fd(), &bytes);
        }
    }

    /// One packet from a control connection.
    fn control_packet(&mut self, fd: RawFd) {
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
        let figures =
            ServerFigures { device: self.device.params, clients: self.clients.len() as u32, counters: &self.counters };
        let (reply, changed) = self.control.handle(req, &figures);
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

    /// Enables capture streams: the capture side of `name`, opened with `req` (the parameters
    /// probed at startup, `spec`) whenever a capture stream starts.
    #[must_use]
    pub fn with_capture(mut self, name: String, req: Request, spec: DeviceSpec) -> Self {
        self.capture = Some((name, req, spec));
        self
    }

    fn send_cmd(&mut self, c: Command) {
        self.pending.push_back(c);
        self.flush_cmds();
    }

    fn flush_cmds(&mut self) {
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

    /// Serves until a signal or a device failure.
    ///
    /// # Errors
    /// A failure of the control loop itself (poll).
    pub fn run(&mut self) -> anyhow::Result<Outcome> {
        let mut last_stats = Instant::now();
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        loop {
            pfds.clear();
            // While the accept loop rests (out of descriptors) the listening socket is not polled.
            let listen_fd = if self.accept_gate.open(Instant::now()) { self.listen.as_raw_fd() } else { -1 };
            for fd in [listen_fd, self.signals.as_fd().as_raw_fd(), self.ctl_efd.as_raw_fd()] {
                pfds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            }
            for c in &self.clients {
                pfds.push(libc::pollfd { fd: c.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            let now = Instant::now();
            let mut timeout = Duration::from_secs(1).saturating_sub(now - last_stats);
            for c in self.clients.iter().filter(|c| c.awaits_something()) {
                timeout = timeout.min(c.deadline.saturating_duration_since(now));
            }
            if !self.pending.is_empty() {
                timeout = timeout.min(Duration::from_millis(5));
            }
            if let Some(rest) = self.accept_gate.wait(now) {
                timeout = timeout.min(rest);
            }
            let ms = timeout.as_millis().min(1000) as libc::c_int + 1;
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
            // Clients, by fd (the list may shrink while we go).
            let ready: Vec<(RawFd, i16)> =
                pfds[3..].iter().filter(|p| p.revents != 0).map(|p| (p.fd, p.revents)).collect();
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
                debug!("{}", self.stats_line());
            }
        }
    }

    /// One line of the real-time counters.
    #[must_use]
    pub fn stats_line(&self) -> String {
        let c = &self.counters;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut s = format!(
            "clients {} streams {} | cycles {} frames {} fastpath {} device xruns {} suspends {} lost {} reopened {} \
             stream underruns {} wakeups sent {} skipped {} muted {} records dropped {} | captured {} monitored {} overruns {} capture-xruns {} capture-lost {} capture-reopened {} | idle stops {}",
            self.clients.len(),
            self.streams_attached,
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
        );
        if crate::audit::enabled() {
            s.push_str(&format!(" | rt allocations {}", crate::audit::rt_allocations()));
        }
        s
    }

    /// Returns true when the device failed.
    fn handle_events(&mut self) -> bool {
        let mut failed = false;
        while let Ok(ev) = self.events.pop() {
            match ev {
                Event::Retired(s) => {
                    self.streams_attached = self.streams_attached.saturating_sub(1);
                    let id = s.id;
                    self.control.unregister(id);
                    self.notify(Target::Stream(id));
                    let owner = self.clients.iter().position(|c| c.stream == Some(id));
                    if let Some(v) = s.violation() {
                        if let Some(i) = owner {
                            let fd = self.clients[i].fd.as_raw_fd();
                            self.clients[i].stream = None;
                            self.disconnect(fd, Some(Disconnect::from(v)));
                        }
                    } else if let Some(i) = owner {
                        let c = &mut self.clients[i];
                        c.stream = None;
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
                    self.streams_attached = self.streams_attached.saturating_sub(1);
                    self.control.unregister(s.id);
                    if let Some(i) = self.clients.iter().position(|c| c.stream == Some(s.id)) {
                        let fd = self.clients[i].fd.as_raw_fd();
                        self.clients[i].stream = None;
                        self.disconnect(fd, Some(Disconnect("mixer has no free stream slot".into())));
                    }
                }
                Event::OpenCapture { retry } => {
                    let dev =
                        self.capture.as_ref().and_then(|(name, req, spec)| match Device::open_capture(name, req) {
                            Ok(d) if d.params() != spec.params || d.chmap() != spec.chmap => {
                                // Capture streams were converted for the probed setup.
                                if !retry {
                                    error!(
                                    "the capture side of '{name}' opened with another setup than probed at startup \
                                     ({:?}, not {:?})",
                                    d.params(),
                                    spec.params
                                );
                                }
                                None
                            }
                            Ok(d) => {
                                let p = d.params();
                                info!(
                                    "capture device '{name}' {}: {} {} Hz {} ch, period {} buffer {}",
                                    if retry { "is back, reopened (recorders continue)" } else { "opened" },
                                    p.format,
                                    p.rate,
                                    p.channels,
                                    p.period_frames,
                                    p.buffer_frames
                                );
                                Some(Box::new(d))
                            }
                            Err(e) => {
                                // A vanished capture side is retried quietly (every 100-500 ms).
                                if !retry {
                                    error!("opening the capture side of '{name}': {e}");
                                }
                                None
                            }
                        });
                    self.send_cmd(Command::CaptureDevice(dev));
                }
                Event::CaptureClosed(d) => {
                    info!("capture device '{}' closed", d.name());
                    drop(d);
                }
                Event::DeviceFailed(e) => {
                    error!("device failed: {e}; every client got Fatal");
                    failed = true;
                }
            }
        }
        failed
    }

    fn accept_all(&mut self) {
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
            });
        }
    }

    fn reply(&self, fd: RawFd, msg: &SocketMsg) {
        // SAFETY: `fd` belongs to a client in `self.clients`, open for this call.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Err(e) = wire::send(b, msg, &[]) {
            debug!("send to client fd {fd}: {e}");
        }
    }

    /// Closes a client; its stream (if any) is removed from the mix and dropped when it comes back.
    fn disconnect(&mut self, fd: RawFd, why: Option<Disconnect>) {
        let Some(i) = self.clients.iter().position(|c| c.fd.as_raw_fd() == fd) else { return };
        let c = self.clients.swap_remove(i);
        let removed = c.stream.map(|id| format!("; stream {id} removed")).unwrap_or_default();
        match why {
            Some(Disconnect(reason)) => warn!("client pid {} ({}): {reason}; disconnecting{removed}", c.pid, c.name),
            None if c.stream.is_some() => info!("client pid {} ({}) closed the connection{removed}", c.pid, c.name),
            None => debug!("client pid {} ({}) disconnected", c.pid, c.name),
        }
        if let Some(id) = c.stream {
            self.send_cmd(Command::Remove(id));
        }
        drop(c);
    }

    fn client_ready(&mut self, fd: RawFd, rev: i16) {
        if !self.clients.iter().any(|c| c.fd.as_raw_fd() == fd) {
            return;
        }
        if rev & libc::POLLIN == 0 {
            // HUP/ERR without data: the client is gone (exit, kill -9).
            return self.disconnect(fd, None);
        }
        if matches!(self.clients.iter().find(|c| c.fd.as_raw_fd() == fd), Some(c) if matches!(c.phase, Phase::Control | Phase::Subscribed))
        {
            return self.control_packet(fd);
        }
        // SAFETY: `fd` belongs to a client in `self.clients`, open for this call.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let pkt = match wire::recv(b) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => return self.disconnect(fd, Some(Disconnect(format!("recv: {e}")))),
        };
        if pkt.bytes.is_empty() && pkt.fds.is_empty() {
            return self.disconnect(fd, None);
        }
        if pkt.truncated {
            return self.disconnect(fd, Some(Disconnect("packet too long or too many fds".into())));
        }
        let msg = match SocketMsg::decode(&pkt.bytes) {
            Ok(m) => m,
            Err(e) => return self.disconnect(fd, Some(Disconnect(format!("bad packet: {e}")))),
        };
        if let Err(d) = self.handle_msg(fd, msg, pkt.fds) {
            self.disconnect(fd, Some(d));
        }
    }

    fn handle_msg(&mut self, fd: RawFd, msg: SocketMsg, fds: Vec<OwnedFd>) -> Result<(), Disconnect> {
        let i = self.clients.iter().position(|c| c.fd.as_raw_fd() == fd).ok_or(Disconnect("gone".into()))?;
        let phase_hello = self.clients[i].phase == Phase::AwaitHello;
        if !fds.is_empty() && !matches!(msg, SocketMsg::CreateStream { .. }) {
            return Err(Disconnect(format!("{} fds attached to a message that takes none", fds.len())));
        }
        match msg {
            SocketMsg::Hello { version, direction, name, .. } if phase_hello => {
                let deadline = Instant::now() + self.limits.handshake_timeout;
                let c = &mut self.clients[i];
                c.name = escape_controls(&name).into_owned();
                c.deadline = deadline;
                if version != PROTOCOL_VERSION {
                    let reason = format!("protocol version {version} unsupported (daemon speaks {PROTOCOL_VERSION})");
                    self.reply(fd, &SocketMsg::Refused { errno: libc::EPROTONOSUPPORT as u32, reason: reason.clone() });
                    return Err(Disconnect(reason));
                }
                if direction == Direction::Capture && self.capture.is_none() {
                    let reason = "the device has no capture side".to_string();
                    info!("client pid {} ({}): {reason}; closing", c.pid, c.name);
                    self.reply(fd, &SocketMsg::Refused { errno: libc::ENOTSUP as u32, reason });
                    self.clients.swap_remove(i);
                    return Ok(());
                }
                c.phase = Phase::Ready;
                c.direction = direction;
                debug!("client pid {} ({}) said hello ({direction:?})", c.pid, c.name);
                let device = match (&self.capture, direction) {
                    (Some((_, _, spec)), Direction::Capture) => spec.params,
                    _ => self.device.params,
                };
                self.reply(fd, &SocketMsg::Welcome { version: PROTOCOL_VERSION, device });
                Ok(())
            }
            SocketMsg::ControlHello { version, name } if phase_hello => {
                let c = &mut self.clients[i];
                c.name = escape_controls(&name).into_owned();
                if version != PROTOCOL_VERSION {
                    let reason = format!("protocol version {version} unsupported (daemon speaks {PROTOCOL_VERSION})");
                    self.reply(fd, &SocketMsg::Refused { errno: libc::EPROTONOSUPPORT as u32, reason: reason.clone() });
                    return Err(Disconnect(reason));
                }
                c.phase = Phase::Control;
                debug!("client pid {} ({}): control connection", c.pid, c.name);
                self.reply(fd, &SocketMsg::Welcome { version: PROTOCOL_VERSION, device: self.device.params });
                Ok(())
            }
            SocketMsg::CreateStream { params, msg_records, memfd_bytes, chmap, quality } if !phase_hello => {
                self.create_stream(i, params, (chmap, quality), msg_records, memfd_bytes, fds)
            }
            SocketMsg::DestroyStream if !phase_hello => {
                let c = &mut self.clients[i];
                match c.stream {
                    Some(id) if !c.destroying => {
                        c.destroying = true;
                        self.send_cmd(Command::Remove(id));
                    }
                    Some(_) => return Err(Disconnect("DestroyStream while one is in progress".into())),
                    None => self.reply(fd, &SocketMsg::StreamDestroyed),
                }
                Ok(())
            }
            other => Err(Disconnect(format!(
                "unexpected message {} in phase {:?}",
                match other {
                    SocketMsg::Hello { .. } => "Hello",
                    SocketMsg::CreateStream { .. } => "CreateStream",
                    SocketMsg::DestroyStream => "DestroyStream",
                    _ => "(daemon message)",
                },
                self.clients[i].phase
            ))),
        }
    }

    fn create_stream(
        &mut self,
        i: usize,
        params: AudioParams,
        (chmap, quality): (ChannelMap, ResampleQuality),
        msg_records: u32,
        memfd_bytes: u64,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Disconnect> {
        let fd = self.clients[i].fd.as_raw_fd();
        if self.clients[i].stream.is_some() {
            return Err(Disconnect("CreateStream while the connection already has a stream".into()));
        }
        let Ok([memfd, client_wake, daemon_wake]) = <[OwnedFd; 3]>::try_from(fds) else {
            return Err(Disconnect("CreateStream needs exactly 3 fds [memfd, client_wake, daemon_wake]".into()));
        };
        let direction = self.clients[i].direction;
        let src_dev = match (&self.capture, direction) {
            (Some((_, _, spec)), Direction::Capture) => *spec,
            _ => self.device,
        };
        let d = src_dev.params;
        let refuse = |s: &Self, reason: String| {
            s.reply(fd, &SocketMsg::Refused { errno: libc::EINVAL as u32, reason: reason.clone() });
            info!("client pid {}: stream refused: {reason}", s.clients[i].pid);
            Ok(())
        };
        // The decoder already checked these; a refusal with a reason beats trusting that.
        if !crate::dsp::convert::is_supported(params.format) {
            return refuse(self, format!("sample format {} is not supported", params.format));
        }
        if !(1..=MAX_CHANNELS).contains(&params.channels) {
            return refuse(self, format!("{} channels: 1 to {MAX_CHANNELS} are supported", params.channels));
        }
        if !(MIN_RATE..=MAX_RATE).contains(&params.rate) {
            return refuse(self, format!("rate {} Hz: {MIN_RATE} to {MAX_RATE} Hz are supported", params.rate));
        }
        if chmap.channels() != params.channels {
            return refuse(
                self,
                format!("channel map has {} positions for {} channels", chmap.channels(), params.channels),
            );
        }
        let min_buffer = shmix_shared::limits::min_buffer_frames(d.period_frames, d.rate, params.rate);
        if params.buffer_frames < min_buffer {
            return refuse(
                self,
                format!(
                    "buffer of {} frames is less than two device periods ({min_buffer} frames at {} Hz)",
                    params.buffer_frames, params.rate
                ),
            );
        }
        let spec = StreamSpec { format: params.format, rate: params.rate, chmap, quality };
        let pipe = match Pipeline::new(&spec, &self.device) {
            Ok(p) => p,
            Err(reason) => return refuse(self, reason),
        };
        let rec = if direction.is_capture() {
            match RecordPipe::new(&spec, &src_dev) {
                Ok(r) => Some(r),
                Err(reason) => return refuse(self, reason),
            }
        } else {
            None
        };
        if self.streams_attached >= MAX_STREAMS {
            self.reply(fd, &SocketMsg::Refused { errno: libc::EBUSY as u32, reason: "too many streams".into() });
            return Ok(());
        }
        let layout = Layout::new(params.frame_bytes(), params.buffer_frames, msg_records)?;
        if memfd_bytes != layout.total_bytes {
            return Err(Violation::new("memfd_bytes differs from the layout", memfd_bytes, layout.total_bytes).into());
        }
        let pid = self.clients[i].pid;
        let (streams, shm) =
            crate::control::limits::usage(pid, self.clients.iter().map(|c| (c.pid, c.stream.map(|_| c.shm_bytes))));
        let uid = self.clients[i].uid;
        let (uid_streams, uid_shm) =
            crate::control::limits::usage(uid, self.clients.iter().map(|c| (c.uid, c.stream.map(|_| c.shm_bytes))));
        let checked = self
            .limits
            .check_stream(pid, streams, shm, layout.total_bytes)
            .and_then(|()| self.limits.check_uid_stream(uid, uid_streams, uid_shm, layout.total_bytes));
        if let Err(r) = checked {
            info!("client pid {pid}: stream refused: {}", r.reason);
            self.reply(fd, &SocketMsg::Refused { errno: r.errno as u32, reason: r.reason });
            return Ok(());
        }
        // Checked once, and nothing the client does to them later matters: every send and
        // receive on them is non-blocking by its own flags (see `shmix_shared::wakefd`).
        let uid = self.clients[i].uid;
        let client_wake = WakeFd::adopt(client_wake, uid).map_err(|e| Disconnect(format!("client_wake: {e}")))?;
        let daemon_wake = WakeFd::adopt(daemon_wake, uid).map_err(|e| Disconnect(format!("daemon_wake: {e}")))?;
        let shm = StreamShm::map_peer(&memfd, layout).map_err(|e| match e {
            MapError::Violation(v) => Disconnect::from(v),
            e @ MapError::Io(..) => Disconnect(format!("cannot map memfd: {e}")),
        })?;
        drop(memfd);
        let id = self.take_stream_id();
        let (conv, remap, stream) = match rec {
            Some(rec) => {
                let conv = if rec.resamples() {
                    format!(" resampled {} -> {} Hz ({})", d.rate, params.rate, rec.quality().name())
                } else if rec.is_passthrough() {
                    " bit-exact copy".to_string()
                } else {
                    String::new()
                };
                let remap = format!("{rec:?}");
                let s = Stream::new_recorder(id, shm, client_wake, daemon_wake, pipe, direction, rec);
                (format!(" {direction:?}{conv}"), remap, Box::new(s))
            }
            None => {
                let conv = if pipe.resamples() {
                    format!(" resampled {} -> {} Hz ({})", params.rate, d.rate, pipe.quality().name())
                } else {
                    String::new()
                };
                let remap = format!("{:?}", pipe.remap());
                (conv, remap, Box::new(Stream::new(id, shm, client_wake, daemon_wake, pipe)))
            }
        };
        let mut stream = stream;
        let c = &self.clients[i];
        stream.attach_ctl(self.control.register(id, c.pid as u32, &c.name, direction, params));
        self.notify(Target::Stream(id));
        self.streams_attached += 1;
        let c = &mut self.clients[i];
        c.stream = Some(id);
        c.had_stream = true;
        c.shm_bytes = layout.total_bytes;
        info!(
            "client pid {} ({}): stream {id} {} {} Hz {} ch buffer {} period {}{conv}",
            c.pid, c.name, params.format, params.rate, params.channels, params.buffer_frames, params.period_frames
        );
        debug!("stream {id}: {remap}");
        self.send_cmd(Command::Add(stream));
        self.reply(fd, &SocketMsg::StreamReady { stream_id: id });
        Ok(())
    }

    /// The next stream id: never 0, and never one a client or the registry still uses (ids wrap
    /// at 2^32; a long-lived stream must not share its id with a new one, or `shmixctl volume
    /// ID` and the mix thread's `Remove(id)` would hit both).
    fn take_stream_id(&mut self) -> u32 {
        let in_use = |s: &Self, id: u32| s.clients.iter().any(|c| c.stream == Some(id)) || s.control.has_stream(id);
        let id = next_free_id(self.next_stream_id, |id| in_use(self, id));
        self.next_stream_id = id.wrapping_add(1).max(1);
        id
    }

    /// Shutdown, step 2 (after the mix thread posted Fatal and ended): closes every client.
    pub fn close_clients(&mut self) {
        self.clients.clear();
    }

    /// Sends `Shutdown` to the mix thread (retrying while its queue is full).
    pub fn request_shutdown(&mut self) {
        self.send_cmd(Command::Shutdown);
        let until = Instant::now() + Duration::from_secs(1);
        while !self.pending.is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
            self.flush_cmds();
        }
    }

    /// Drops what the mix thread handed back after it ended.
    pub fn drain_events(&mut self) {
        while let Ok(ev) = self.events.pop() {
            drop(ev);
        }
    }

    /// The socket path (to unlink at exit).
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }
}

/// The first id from `from` on (wrapping, skipping 0) that `in_use` does not claim. At most
/// [`MAX_STREAMS`] plus the connections can be in use, far below 2^32, so one is always found.
fn next_free_id(from: u32, in_use: impl Fn(u32) -> bool) -> u32 {
    let mut id = from.max(1);
    while in_use(id) {
        id = id.wrapping_add(1).max(1);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_wrap_past_zero_and_skip_ids_in_use() {
        let used = [u32::MAX, 1, 2, 5];
        let in_use = |id: u32| used.contains(&id);
        assert_eq!(next_free_id(u32::MAX - 1, in_use), u32::MAX - 1);
        assert_eq!(next_free_id(u32::MAX, in_use), 3, "wraps, skips 0, 1 and 2");
        assert_eq!(next_free_id(0, in_use), 3);
        assert_eq!(next_free_id(5, in_use), 6);
    }

    #[test]
    fn socket_directories_others_could_write_are_refused() {
        let d = Path::new("/x");
        assert!(check_socket_dir(d, 1000, 0o40700, 1000).is_ok());
        assert!(check_socket_dir(d, 0, 0o40755, 1000).is_ok(), "root's /run/shmix");
        assert!(check_socket_dir(d, 0, 0o40750, 0).is_ok(), "--system's own directory");
        let e = check_socket_dir(d, 1001, 0o40700, 1000).unwrap_err().to_string();
        assert!(e.contains("uid 1001") && e.contains("uid 1000"), "{e}");
        for mode in [0o40777, 0o41777, 0o40770, 0o40702] {
            let e = check_socket_dir(d, 1000, mode, 1000).unwrap_err().to_string();
            assert!(e.contains("writable by others"), "{mode:o}: {e}");
        }
        assert!(check_socket_dir(Path::new("/tmp"), 0, 0o41777, 0).is_err(), "/tmp itself");
    }
}

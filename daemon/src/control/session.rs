//! One client connection: its phase (hello, ready, control), the handshake, stream creation
//! (every descriptor and byte the client sent checked before the stream reaches the mix thread),
//! teardown, and the reasons a client is disconnected. Runs on the main (control) thread. RT: no.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use log::{debug, info, warn};
use shmix_shared::chmap::ChannelMap;
use shmix_shared::control::Target;
use shmix_shared::layout::Layout;
use shmix_shared::msg::{MAX_CHANNELS, MAX_RATE, MIN_RATE};
use shmix_shared::shm::{MapError, StreamShm};
use shmix_shared::socket as wire;
use shmix_shared::text::escape_controls;
use shmix_shared::ResampleQuality;
use shmix_shared::{AudioParams, Direction, SocketMsg, Violation, WakeFd, PROTOCOL_VERSION};

use super::devices::Unit;
use super::server::Server;
use crate::dsp::{Pipeline, RecordPipe, StreamSpec};
use crate::mix::stream::Kind;
use crate::mix::thread::Command;
use crate::mix::{Stream, MAX_STREAMS};

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Phase {
    AwaitHello,
    Ready,
    /// A control connection (`shmixctl`, the ctl plugin): `control::Request` packets.
    Control,
    /// A control connection that gets `Changed` events.
    Subscribed,
}

#[derive(Debug)]
pub(super) struct Client {
    pub(super) fd: OwnedFd,
    pub(super) pid: i32,
    /// The peer's uid (`SO_PEERCRED` at accept): the per-uid limits, and the owner a stream's
    /// wake sockets must have.
    pub(super) uid: u32,
    /// The program name from `Hello`, control characters escaped.
    pub(super) name: String,
    pub(super) phase: Phase,
    /// `AwaitHello`: when the Hello is due; `Ready`: when the first stream is, unless
    /// `had_stream`.
    pub(super) deadline: Instant,
    /// A stream was created on this connection (it may idle between streams from then on).
    pub(super) had_stream: bool,
    pub(super) stream: Option<u32>,
    /// Bytes of the attached stream's memfd (counted against `--max-client-shm` while `stream` is set).
    pub(super) shm_bytes: u64,
    pub(super) destroying: bool,
    pub(super) direction: Direction,
    /// The device (unit index) its stream plays on or records from (or will).
    pub(super) device: usize,
    /// It named its device (`Hello`), or was moved there: it does not follow the default.
    pub(super) pinned: bool,
    /// Its stream is detached from `device` and on its way to this one.
    pub(super) moving: Option<usize>,
    /// What its stream asked for (its conversion is rebuilt from it when it moves).
    pub(super) spec: Option<(StreamSpec, AudioParams)>,
}

impl Client {
    /// Whether the connection has a deadline: it has not said Hello yet, or said it and has
    /// not created a stream (nor become a control connection). An idle connection costs the
    /// daemon a descriptor and a `--max-clients` slot for as long as it stays.
    pub(super) fn awaits_something(&self) -> bool {
        match self.phase {
            Phase::AwaitHello => true,
            Phase::Ready => !self.had_stream && self.stream.is_none(),
            Phase::Control | Phase::Subscribed => false,
        }
    }
}

/// The conversion a stream of `direction` asking for `spec` and `params` gets on device
/// `unit`: into its mix (playback), from its capture side (capture) or from its mix
/// (monitors). The resampler works in chunks of the stream's period (at least the quantum).
pub(super) fn conversion(
    spec: &StreamSpec,
    params: &AudioParams,
    direction: Direction,
    unit: &Unit,
) -> Result<Kind, String> {
    match direction {
        Direction::Playback => {
            let d = unit.spec.params;
            let chunk = u64::from(params.period_frames) * u64::from(d.rate) / u64::from(params.rate.max(1));
            let pipe = Pipeline::with_chunk(spec, &unit.spec, usize::try_from(chunk).unwrap_or(usize::MAX))?;
            Ok(Kind::Play(Box::new(pipe)))
        }
        Direction::Capture => {
            let cap = unit.capture.as_ref().ok_or_else(|| format!("device '{}' has no capture side", unit.name))?;
            Ok(Kind::Record(direction, Some(Box::new(RecordPipe::new(spec, cap)?))))
        }
        Direction::Monitor => Ok(Kind::Record(direction, Some(Box::new(RecordPipe::new(spec, &unit.spec)?)))),
    }
}

/// A reason to disconnect a client: logged once, as one warning line.
pub(super) struct Disconnect(pub(super) String);

impl From<Violation> for Disconnect {
    fn from(v: Violation) -> Self {
        Self(format!("protocol violation: {v}"))
    }
}

impl Server {
    pub(super) fn reply(&self, fd: RawFd, msg: &SocketMsg) {
        // SAFETY: `fd` belongs to a client in `self.clients`, open for this call.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Err(e) = wire::send(b, msg, &[]) {
            debug!("send to client fd {fd}: {e}");
        }
    }

    /// Closes a client; its stream (if any) is removed from the mix and dropped when it comes back.
    pub(super) fn disconnect(&mut self, fd: RawFd, why: Option<Disconnect>) {
        let Some(i) = self.clients.iter().position(|c| c.fd.as_raw_fd() == fd) else { return };
        let c = self.clients.swap_remove(i);
        let removed = c.stream.map(|id| format!("; stream {id} removed")).unwrap_or_default();
        match why {
            Some(Disconnect(reason)) => warn!("client pid {} ({}): {reason}; disconnecting{removed}", c.pid, c.name),
            None if c.stream.is_some() => info!("client pid {} ({}) closed the connection{removed}", c.pid, c.name),
            None => debug!("client pid {} ({}) disconnected", c.pid, c.name),
        }
        // A stream on its way to another device is dropped when it arrives (`moves`).
        if let (Some(id), None) = (c.stream, c.moving) {
            self.send_cmd(c.device, Command::Remove(id));
        }
        drop(c);
    }

    pub(super) fn client_ready(&mut self, fd: RawFd, rev: i16) {
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

    pub(super) fn handle_msg(&mut self, fd: RawFd, msg: SocketMsg, fds: Vec<OwnedFd>) -> Result<(), Disconnect> {
        let i = self.clients.iter().position(|c| c.fd.as_raw_fd() == fd).ok_or(Disconnect("gone".into()))?;
        let phase_hello = self.clients[i].phase == Phase::AwaitHello;
        if !fds.is_empty() && !matches!(msg, SocketMsg::CreateStream { .. }) {
            return Err(Disconnect(format!("{} fds attached to a message that takes none", fds.len())));
        }
        match msg {
            SocketMsg::Hello { version, direction, name, device, .. } if phase_hello => {
                let deadline = Instant::now() + self.limits.handshake_timeout;
                let c = &mut self.clients[i];
                c.name = escape_controls(&name).into_owned();
                c.deadline = deadline;
                if version != PROTOCOL_VERSION {
                    let reason = format!("protocol version {version} unsupported (daemon speaks {PROTOCOL_VERSION})");
                    self.reply(fd, &SocketMsg::Refused { errno: libc::EPROTONOSUPPORT as u32, reason: reason.clone() });
                    return Err(Disconnect(reason));
                }
                let (unit, pinned) = if device.is_empty() {
                    (self.default, false)
                } else if let Some(u) = self.units.iter().position(|u| u.name == device) {
                    (u, true)
                } else {
                    let names: Vec<&str> = self.units.iter().map(|u| u.name.as_str()).collect();
                    let reason =
                        format!("no device '{}' (this daemon serves: {})", escape_controls(&device), names.join(", "));
                    info!("client pid {} ({}): {reason}; closing", c.pid, c.name);
                    self.reply(fd, &SocketMsg::Refused { errno: libc::ENODEV as u32, reason });
                    self.clients.swap_remove(i);
                    return Ok(());
                };
                let u = &self.units[unit];
                if direction == Direction::Capture && u.capture.is_none() {
                    let reason = format!("device '{}' has no capture side", u.name);
                    info!("client pid {} ({}): {reason}; closing", c.pid, c.name);
                    self.reply(fd, &SocketMsg::Refused { errno: libc::ENOTSUP as u32, reason });
                    self.clients.swap_remove(i);
                    return Ok(());
                }
                c.phase = Phase::Ready;
                c.direction = direction;
                c.device = unit;
                c.pinned = pinned;
                debug!("client pid {} ({}) said hello ({direction:?}, device '{}')", c.pid, c.name, u.name);
                let device = u.params_for(direction);
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
                let device = self.units[self.default].spec.params;
                self.reply(fd, &SocketMsg::Welcome { version: PROTOCOL_VERSION, device });
                Ok(())
            }
            SocketMsg::CreateStream { params, msg_records, memfd_bytes, chmap, quality } if !phase_hello => {
                self.create_stream(i, params, (chmap, quality), msg_records, memfd_bytes, fds)
            }
            SocketMsg::DestroyStream if !phase_hello => {
                let c = &mut self.clients[i];
                match c.stream {
                    // On its way to another device: dropped when it arrives (`moves`).
                    Some(_) if !c.destroying && c.moving.is_some() => c.destroying = true,
                    Some(id) if !c.destroying => {
                        c.destroying = true;
                        let unit = c.device;
                        self.send_cmd(unit, Command::Remove(id));
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

    pub(super) fn create_stream(
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
        // A stream that follows the default goes where the default is now.
        if !self.clients[i].pinned {
            self.clients[i].device = self.default;
        }
        let unit = self.clients[i].device;
        let d = self.units[unit].params_for(direction);
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
                    "buffer of {} frames is less than two device quanta ({min_buffer} frames at {} Hz)",
                    params.buffer_frames, params.rate
                ),
            );
        }
        let spec = StreamSpec { format: params.format, rate: params.rate, chmap, quality };
        // A recorder's conversion comes from the device it records; a playback stream's goes
        // into the mix bus. Each stream builds only its own.
        let conversion = match conversion(&spec, &params, direction, &self.units[unit]) {
            Ok(c) => c,
            Err(reason) => return refuse(self, reason),
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
        // Checked once (their kind and their creator's uid cannot change), and nothing the client
        // does to them later matters: every send and receive on them is non-blocking by its own
        // flags (see `shmix_shared::wakefd`).
        let client_wake = WakeFd::adopt(client_wake, uid).map_err(|e| Disconnect(format!("client_wake: {e}")))?;
        let daemon_wake = WakeFd::adopt(daemon_wake, uid).map_err(|e| Disconnect(format!("daemon_wake: {e}")))?;
        let shm = StreamShm::map_peer(&memfd, layout).map_err(|e| match e {
            MapError::Violation(v) => Disconnect::from(v),
            e @ MapError::Io(..) => Disconnect(format!("cannot map memfd: {e}")),
        })?;
        drop(memfd);
        let id = self.take_stream_id();
        let (conv, remap) = describe(&conversion, direction, params.rate, d.rate);
        let stream = match conversion {
            Kind::Record(dir, Some(rec)) => Stream::new_recorder(id, shm, client_wake, daemon_wake, dir, *rec),
            Kind::Play(pipe) => Stream::new(id, shm, client_wake, daemon_wake, *pipe),
            Kind::Record(_, None) => unreachable!("conversion() builds the recorder's pipe"),
        };
        let stream = Box::new(stream);
        let mut stream = stream;
        stream.set_ask(params.period_frames, params.buffer_frames, params.rate, d.rate);
        let c = &self.clients[i];
        let device = &self.units[unit].name;
        stream.attach_ctl(self.control.register(id, c.pid as u32, &c.name, direction, params, (device, c.pinned)));
        self.notify(Target::Stream(id));
        self.streams_attached += 1;
        let c = &mut self.clients[i];
        c.stream = Some(id);
        c.had_stream = true;
        c.shm_bytes = layout.total_bytes;
        c.spec = Some((spec, params));
        info!(
            "client pid {} ({}): stream {id} {} {} Hz {} ch buffer {} period {} on '{}'{conv}",
            c.pid,
            c.name,
            params.format,
            params.rate,
            params.channels,
            params.buffer_frames,
            params.period_frames,
            self.units[unit].name
        );
        debug!("stream {id}: {remap}");
        self.send_cmd(unit, Command::Add(stream));
        self.reply(fd, &SocketMsg::StreamReady { stream_id: id });
        Ok(())
    }

    /// The next stream id: never 0, and never one a client or the registry still uses (ids wrap
    /// at 2^32; a long-lived stream must not share its id with a new one, or `shmixctl volume
    /// ID` and the mix thread's `Remove(id)` would hit both).
    pub(super) fn take_stream_id(&mut self) -> u32 {
        let in_use = |s: &Self, id: u32| s.clients.iter().any(|c| c.stream == Some(id)) || s.control.has_stream(id);
        let id = next_free_id(self.next_stream_id, |id| in_use(self, id));
        self.next_stream_id = id.wrapping_add(1).max(1);
        id
    }
}

/// How a conversion is logged: what it does (resampling, bit-exact copy) and its remapping.
pub(super) fn describe(kind: &Kind, direction: Direction, stream_rate: u32, device_rate: u32) -> (String, String) {
    match kind {
        Kind::Record(_, Some(rec)) => {
            let conv = if rec.resamples() {
                format!(" resampled {device_rate} -> {stream_rate} Hz ({})", rec.quality().name())
            } else if rec.is_passthrough() {
                " bit-exact copy".to_string()
            } else {
                String::new()
            };
            (format!(" {direction:?}{conv}"), format!("{rec:?}"))
        }
        Kind::Play(pipe) => {
            let conv = if pipe.resamples() {
                format!(" resampled {stream_rate} -> {device_rate} Hz ({})", pipe.quality().name())
            } else {
                String::new()
            };
            (conv, format!("{:?}", pipe.remap()))
        }
        Kind::Record(_, None) => (String::new(), String::new()),
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
}

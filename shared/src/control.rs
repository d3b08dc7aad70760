//! The control protocol: what `shmixctl` and the ALSA ctl plugin say to the daemon after a
//! `SocketMsg::ControlHello` handshake. One request or reply per `SOCK_SEQPACKET` packet,
//! little-endian, hand-encoded; every decoder is a pure `decode(&[u8]) -> Result` that checks
//! every field and length (the daemon decodes requests from any local program).
//! Runs in the daemon (control thread), `shmixctl` and the ctl plugin. RT: no.

use crate::codec::{put_f32, put_str, put_u32, put_u64, Reader};
use crate::error::DecodeError;
use crate::format::SampleFormat;
use crate::msg::{AudioParams, Direction, MAX_CHANNELS, MAX_NAME_BYTES, MAX_REASON_BYTES};

/// Largest control packet either side sends or accepts (a full stream list fits).
pub const MAX_CONTROL_PACKET_BYTES: usize = 32 * 1024;
/// Most streams one `Streams` reply lists (the daemon's stream slots).
pub const MAX_LISTED_STREAMS: u32 = 64;
/// Highest volume: unity gain (0 dB). Volumes are linear amplitude factors in `0.0..=1.0`.
pub const MAX_VOLUME: f32 = 1.0;

/// What a volume or mute request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One stream, by its daemon-wide id.
    Stream(u32),
    /// The playback mix (the device's playback side).
    Master,
    /// The capture path (everything recorded from the device's capture side).
    Capture,
}

/// How a mute request changes the mute state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MuteOp {
    /// Mute.
    On = 1,
    /// Unmute.
    Off = 2,
    /// Flip.
    Toggle = 3,
}

/// Daemon-side state of a stream, as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StreamState {
    /// Not consuming (prepared, stopped, after an xrun).
    Stopped = 0,
    /// Playing or recording.
    Running = 1,
    /// Paused.
    Paused = 2,
    /// Playing out what is queued.
    Draining = 3,
}

impl StreamState {
    /// The name `shmixctl` prints and puts in JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Draining => "draining",
        }
    }

    /// From its wire code.
    #[must_use]
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Stopped,
            1 => Self::Running,
            2 => Self::Paused,
            3 => Self::Draining,
            _ => return None,
        })
    }
}

/// Client -> daemon, after the handshake.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Request {
    /// Answered by `Reply::Streams`.
    List,
    /// Answered by `Reply::Stats`.
    Stats,
    /// Sets a linear volume (`0.0..=MAX_VOLUME`); answered by `Reply::Volume` or `Reply::Error`.
    SetVolume {
        /// What to change.
        target: Target,
        /// Linear amplitude factor.
        volume: f32,
    },
    /// Mutes, unmutes or toggles; answered by `Reply::Volume` or `Reply::Error`.
    SetMute {
        /// What to change.
        target: Target,
        /// How.
        op: MuteOp,
    },
    /// Asks for `Reply::Changed` events on this connection from now on; answered `Subscribed`.
    /// A subscribed connection should send no further requests (events and replies would
    /// interleave); open a second connection for requests.
    Subscribe,
}

/// One stream as `List` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Daemon-wide stream id.
    pub id: u32,
    /// The client's pid from `SO_PEERCRED`.
    pub pid: u32,
    /// Program name from `Hello` (the plugin sends `/proc/self/comm`).
    pub name: String,
    /// Playback, capture or monitor.
    pub direction: Direction,
    /// The stream's negotiated format, rate, channels, period and buffer.
    pub params: AudioParams,
    /// Daemon-side state.
    pub state: StreamState,
    /// Frames between the client's write position and the speaker (playback), or between the
    /// device and the client's read position (recorders), at the last cycle.
    pub latency_frames: u32,
    /// Underruns (playback) or overruns (recorders) the daemon saw.
    pub xruns: u64,
    /// Linear volume.
    pub volume: f32,
    /// Muted.
    pub muted: bool,
    /// Peak absolute sample (1.0 = full scale) of the stream's contribution over the last
    /// metering window, after its volume.
    pub peak: f32,
    /// Frames the plugin copied between the program and shared memory (plugin-reported).
    pub copied_frames: u64,
    /// Frames the program wrote straight into shared memory (mmap; plugin-reported).
    pub zero_copy_frames: u64,
}

/// Daemon-wide statistics and the device's levels.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// The playback device's parameters.
    pub device: AudioParams,
    /// Connected clients (streams and control connections).
    pub clients: u32,
    /// Streams attached to the mix.
    pub streams: u32,
    /// Seconds since the daemon started, in nanoseconds.
    pub uptime_ns: u64,
    /// Mix thread cycles (poll wakeups handled).
    pub cycles: u64,
    /// Frames written into the device.
    pub frames_mixed: u64,
    /// Frames copied straight from one stream into the device (bit-exact fast path).
    pub fastpath_frames: u64,
    /// Device xruns recovered.
    pub device_xruns: u64,
    /// Device suspends recovered.
    pub device_suspends: u64,
    /// Stream underruns.
    pub stream_underruns: u64,
    /// Wake signals to sleeping clients.
    pub wakeups_sent: u64,
    /// Wake points where the client was awake (no write needed).
    pub wakeups_skipped: u64,
    /// Frames plugins copied into or out of shared memory (all streams, gone ones included).
    pub copied_frames: u64,
    /// Frames programs wrote or read in place (all streams, gone ones included).
    pub zero_copy_frames: u64,
    /// CPU time the mix thread has used, in nanoseconds.
    pub mix_cpu_ns: u64,
    /// Master (playback mix) linear volume.
    pub master_volume: f32,
    /// Master muted.
    pub master_muted: bool,
    /// Capture path linear volume.
    pub capture_volume: f32,
    /// Capture muted.
    pub capture_muted: bool,
    /// Peak per device channel over the last metering window (after the master volume).
    pub peaks: Vec<f32>,
    /// Times the playback device vanished (`ENODEV`) and the clients were put to wait.
    pub device_lost: u64,
    /// Times a vanished (or, with `--wait-for-device`, absent) device was opened again.
    pub device_reopened: u64,
    /// The playback device is open now (false while the clients wait for it).
    pub device_present: bool,
}

/// Daemon -> client.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Every stream.
    Streams(Vec<StreamInfo>),
    /// Statistics.
    Stats(Box<Stats>),
    /// The state after a volume or mute request.
    Volume {
        /// What was changed.
        target: Target,
        /// Its linear volume now.
        volume: f32,
        /// Its mute state now.
        muted: bool,
    },
    /// Subscription event: the volume or mute of `target` changed, or (streams) it appeared or
    /// went away.
    Changed {
        /// What changed.
        target: Target,
    },
    /// `Subscribe` accepted.
    Subscribed,
    /// The request failed (unknown stream, volume out of range).
    Error {
        /// An errno value.
        errno: u32,
        /// Why, for humans.
        reason: String,
    },
}

const REQ_LIST: u32 = 0x101;
const REQ_STATS: u32 = 0x102;
const REQ_VOLUME: u32 = 0x103;
const REQ_MUTE: u32 = 0x104;
const REQ_SUBSCRIBE: u32 = 0x105;
const REP_STREAMS: u32 = 0x181;
const REP_STATS: u32 = 0x182;
const REP_VOLUME: u32 = 0x183;
const REP_CHANGED: u32 = 0x184;
const REP_SUBSCRIBED: u32 = 0x185;
const REP_ERROR: u32 = 0x186;

impl Reader<'_> {
    fn target(&mut self) -> Result<Target, DecodeError> {
        let kind = self.u32("target kind")?;
        let id = self.u32("target id")?;
        match (kind, id) {
            (1, id) => Ok(Target::Stream(id)),
            (2, 0) => Ok(Target::Master),
            (3, 0) => Ok(Target::Capture),
            (1..=3, id) => Err(DecodeError::BadField("target id", u64::from(id))),
            (k, _) => Err(DecodeError::BadField("target kind", u64::from(k))),
        }
    }
    fn direction(&mut self) -> Result<Direction, DecodeError> {
        match self.u32("direction")? {
            1 => Ok(Direction::Playback),
            2 => Ok(Direction::Capture),
            3 => Ok(Direction::Monitor),
            v => Err(DecodeError::BadField("direction", u64::from(v))),
        }
    }
    /// Parameters as listed: only the format and the ranges are checked (the daemon accepted
    /// them; a listing never fails on a stream the daemon serves).
    fn listed_params(&mut self) -> Result<AudioParams, DecodeError> {
        let code = self.u32("format")?;
        let format = SampleFormat::from_code(code).ok_or(DecodeError::BadField("format", u64::from(code)))?;
        let p = AudioParams {
            format,
            rate: self.u32("rate")?,
            channels: self.u32("channels")?,
            period_frames: self.u32("period_frames")?,
            buffer_frames: self.u32("buffer_frames")?,
        };
        if p.channels == 0 || p.channels > MAX_CHANNELS {
            return Err(DecodeError::BadField("channels", u64::from(p.channels)));
        }
        Ok(p)
    }
}

fn put_target(out: &mut Vec<u8>, t: Target) {
    let (kind, id) = match t {
        Target::Stream(id) => (1, id),
        Target::Master => (2, 0),
        Target::Capture => (3, 0),
    };
    put_u32(out, kind);
    put_u32(out, id);
}

fn put_params(out: &mut Vec<u8>, p: &AudioParams) {
    for v in [p.format.code(), p.rate, p.channels, p.period_frames, p.buffer_frames] {
        put_u32(out, v);
    }
}

fn check_len(packet: &[u8]) -> Result<(), DecodeError> {
    if packet.len() > MAX_CONTROL_PACKET_BYTES {
        return Err(DecodeError::BadField("packet length", packet.len() as u64));
    }
    Ok(())
}

/// Peaks above full scale are possible (a clipping mix); anything beyond this is garbage.
const MAX_PEAK: f32 = 1.0e6;

impl Request {
    /// Encodes into one packet.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        match *self {
            Self::List => put_u32(&mut out, REQ_LIST),
            Self::Stats => put_u32(&mut out, REQ_STATS),
            Self::SetVolume { target, volume } => {
                put_u32(&mut out, REQ_VOLUME);
                put_target(&mut out, target);
                put_f32(&mut out, volume);
            }
            Self::SetMute { target, op } => {
                put_u32(&mut out, REQ_MUTE);
                put_target(&mut out, target);
                put_u32(&mut out, op as u32);
            }
            Self::Subscribe => put_u32(&mut out, REQ_SUBSCRIBE),
        }
        out
    }

    /// Decodes one packet, checking every field (volumes finite and in `0..=MAX_VOLUME`).
    ///
    /// # Errors
    /// A [`DecodeError`] naming the first bad field.
    pub fn decode(packet: &[u8]) -> Result<Self, DecodeError> {
        check_len(packet)?;
        let mut r = Reader { buf: packet };
        let req = match r.u32("tag")? {
            REQ_LIST => Self::List,
            REQ_STATS => Self::Stats,
            REQ_VOLUME => Self::SetVolume { target: r.target()?, volume: r.f32("volume", 0.0, MAX_VOLUME)? },
            REQ_MUTE => {
                let target = r.target()?;
                let op = match r.u32("mute op")? {
                    1 => MuteOp::On,
                    2 => MuteOp::Off,
                    3 => MuteOp::Toggle,
                    v => return Err(DecodeError::BadField("mute op", u64::from(v))),
                };
                Self::SetMute { target, op }
            }
            REQ_SUBSCRIBE => Self::Subscribe,
            t => return Err(DecodeError::UnknownTag(t)),
        };
        r.end()?;
        Ok(req)
    }
}

impl Reply {
    /// Encodes into one packet (at most [`MAX_CONTROL_PACKET_BYTES`]: lists beyond
    /// [`MAX_LISTED_STREAMS`] are cut, names and reasons truncated).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        match self {
            Self::Streams(list) => {
                put_u32(&mut out, REP_STREAMS);
                let n = list.len().min(MAX_LISTED_STREAMS as usize);
                put_u32(&mut out, n as u32);
                for s in &list[..n] {
                    put_u32(&mut out, s.id);
                    put_u32(&mut out, s.pid);
                    put_u32(&mut out, s.direction as u32);
                    put_params(&mut out, &s.params);
                    put_u32(&mut out, s.state as u32);
                    put_u32(&mut out, s.latency_frames);
                    put_u64(&mut out, s.xruns);
                    put_f32(&mut out, s.volume);
                    put_u32(&mut out, u32::from(s.muted));
                    put_f32(&mut out, s.peak);
                    put_u64(&mut out, s.copied_frames);
                    put_u64(&mut out, s.zero_copy_frames);
                    put_str(&mut out, &s.name, MAX_NAME_BYTES);
                }
            }
            Self::Stats(s) => {
                put_u32(&mut out, REP_STATS);
                put_params(&mut out, &s.device);
                put_u32(&mut out, s.clients);
                put_u32(&mut out, s.streams);
                put_u64(&mut out, s.uptime_ns);
                put_u64(&mut out, s.cycles);
                put_u64(&mut out, s.frames_mixed);
                put_u64(&mut out, s.fastpath_frames);
                put_u64(&mut out, s.device_xruns);
                put_u64(&mut out, s.device_suspends);
                put_u64(&mut out, s.stream_underruns);
                put_u64(&mut out, s.wakeups_sent);
                put_u64(&mut out, s.wakeups_skipped);
                put_u64(&mut out, s.copied_frames);
                put_u64(&mut out, s.zero_copy_frames);
                put_u64(&mut out, s.mix_cpu_ns);
                put_f32(&mut out, s.master_volume);
                put_u32(&mut out, u32::from(s.master_muted));
                put_f32(&mut out, s.capture_volume);
                put_u32(&mut out, u32::from(s.capture_muted));
                let n = s.peaks.len().min(MAX_CHANNELS as usize);
                put_u32(&mut out, n as u32);
                for &p in &s.peaks[..n] {
                    put_f32(&mut out, p);
                }
                put_u64(&mut out, s.device_lost);
                put_u64(&mut out, s.device_reopened);
                put_u32(&mut out, u32::from(s.device_present));
            }
            Self::Volume { target, volume, muted } => {
                put_u32(&mut out, REP_VOLUME);
                put_target(&mut out, *target);
                put_f32(&mut out, *volume);
                put_u32(&mut out, u32::from(*muted));
            }
            Self::Changed { target } => {
                put_u32(&mut out, REP_CHANGED);
                put_target(&mut out, *target);
            }
            Self::Subscribed => put_u32(&mut out, REP_SUBSCRIBED),
            Self::Error { errno, reason } => {
                put_u32(&mut out, REP_ERROR);
                put_u32(&mut out, *errno);
                put_str(&mut out, reason, MAX_REASON_BYTES);
            }
        }
        out
    }

    /// Decodes one packet, checking every field.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the first bad field.
    pub fn decode(packet: &[u8]) -> Result<Self, DecodeError> {
        check_len(packet)?;
        let mut r = Reader { buf: packet };
        let rep = match r.u32("tag")? {
            REP_STREAMS => {
                let n = r.u32("stream count")?;
                if n > MAX_LISTED_STREAMS {
                    return Err(DecodeError::BadField("stream count", u64::from(n)));
                }
                let mut list = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let id = r.u32("id")?;
                    let pid = r.u32("pid")?;
                    let direction = r.direction()?;
                    let params = r.listed_params()?;
                    let st = r.u32("state")?;
                    let state = StreamState::from_u32(st).ok_or(DecodeError::BadField("state", u64::from(st)))?;
                    list.push(StreamInfo {
                        id,
                        pid,
                        direction,
                        params,
                        state,
                        latency_frames: r.u32("latency_frames")?,
                        xruns: r.u64("xruns")?,
                        volume: r.f32("volume", 0.0, MAX_VOLUME)?,
                        muted: r.bool("muted")?,
                        peak: r.f32("peak", 0.0, MAX_PEAK)?,
                        copied_frames: r.u64("copied_frames")?,
                        zero_copy_frames: r.u64("zero_copy_frames")?,
                        name: r.string("name", MAX_NAME_BYTES)?,
                    });
                }
                Self::Streams(list)
            }
            REP_STATS => {
                let device = r.listed_params()?;
                let clients = r.u32("clients")?;
                let streams = r.u32("streams")?;
                let uptime_ns = r.u64("uptime_ns")?;
                let cycles = r.u64("cycles")?;
                let frames_mixed = r.u64("frames_mixed")?;
                let fastpath_frames = r.u64("fastpath_frames")?;
                let device_xruns = r.u64("device_xruns")?;
                let device_suspends = r.u64("device_suspends")?;
                let stream_underruns = r.u64("stream_underruns")?;
                let wakeups_sent = r.u64("wakeups_sent")?;
                let wakeups_skipped = r.u64("wakeups_skipped")?;
                let copied_frames = r.u64("copied_frames")?;
                let zero_copy_frames = r.u64("zero_copy_frames")?;
                let mix_cpu_ns = r.u64("mix_cpu_ns")?;
                let master_volume = r.f32("master_volume", 0.0, MAX_VOLUME)?;
                let master_muted = r.bool("master_muted")?;
                let capture_volume = r.f32("capture_volume", 0.0, MAX_VOLUME)?;
                let capture_muted = r.bool("capture_muted")?;
                let n = r.u32("peak count")?;
                if n > MAX_CHANNELS {
                    return Err(DecodeError::BadField("peak count", u64::from(n)));
                }
                let mut peaks = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    peaks.push(r.f32("peak", 0.0, MAX_PEAK)?);
                }
                let device_lost = r.u64("device_lost")?;
                let device_reopened = r.u64("device_reopened")?;
                let device_present = r.bool("device_present")?;
                Self::Stats(Box::new(Stats {
                    device,
                    clients,
                    streams,
                    uptime_ns,
                    cycles,
                    frames_mixed,
                    fastpath_frames,
                    device_xruns,
                    device_suspends,
                    stream_underruns,
                    wakeups_sent,
                    wakeups_skipped,
                    copied_frames,
                    zero_copy_frames,
                    mix_cpu_ns,
                    master_volume,
                    master_muted,
                    capture_volume,
                    capture_muted,
                    peaks,
                    device_lost,
                    device_reopened,
                    device_present,
                }))
            }
            REP_VOLUME => {
                Self::Volume { target: r.target()?, volume: r.f32("volume", 0.0, MAX_VOLUME)?, muted: r.bool("muted")? }
            }
            REP_CHANGED => Self::Changed { target: r.target()? },
            REP_SUBSCRIBED => Self::Subscribed,
            REP_ERROR => Self::Error { errno: r.u32("errno")?, reason: r.string("reason", MAX_REASON_BYTES)? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        r.end()?;
        Ok(rep)
    }
}

/// Volume as a linear factor -> decibels (`-inf` at 0).
#[must_use]
pub fn volume_to_db(v: f32) -> f64 {
    20.0 * f64::from(v).log10()
}

/// Parses a volume as `shmixctl` takes it: `50%` (linear amplitude percent), `-6dB` / `-6.02dB`
/// (decibels, `-inf dB` for silence), or a bare factor `0.5`. At most [`MAX_VOLUME`].
///
/// # Errors
/// A message saying what is wrong with `s`.
pub fn parse_volume(s: &str) -> Result<f32, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let v: f64 = if let Some(p) = lower.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| format!("'{s}': not a percentage"))?;
        p / 100.0
    } else if let Some(db) = lower.strip_suffix("db") {
        let db = db.trim();
        if db == "-inf" {
            0.0
        } else {
            let db: f64 = db.parse().map_err(|_| format!("'{s}': not a decibel value"))?;
            10f64.powf(db / 20.0)
        }
    } else {
        t.parse().map_err(|_| format!("'{s}': expected a percentage (50%), decibels (-6dB) or a factor (0.5)"))?
    };
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}': volume must be >= 0"));
    }
    if v > f64::from(MAX_VOLUME) + 1e-9 {
        return Err(format!("'{s}': volume above 100% (0 dB) is not supported"));
    }
    Ok((v as f32).min(MAX_VOLUME))
}

/// Sends one control packet (a request or a reply) on a connected `SOCK_SEQPACKET` socket.
///
/// # Errors
/// The `send` error.
pub fn send_packet(sock: std::os::fd::BorrowedFd<'_>, bytes: &[u8]) -> std::io::Result<()> {
    nix::sys::socket::send(std::os::fd::AsRawFd::as_raw_fd(&sock), bytes, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)?;
    Ok(())
}

/// Receives one control packet (blocking or not, as the socket is set). An empty result means
/// the peer closed the connection; a packet longer than [`MAX_CONTROL_PACKET_BYTES`] is an
/// `InvalidData` error.
///
/// # Errors
/// The `recv` error (`WouldBlock` on a non-blocking socket with nothing to read).
pub fn recv_packet(sock: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<u8>> {
    use nix::sys::socket::MsgFlags;
    let mut buf = vec![0u8; MAX_CONTROL_PACKET_BYTES + 1];
    let n = nix::sys::socket::recv(std::os::fd::AsRawFd::as_raw_fd(&sock), &mut buf, MsgFlags::MSG_TRUNC)?;
    if n > MAX_CONTROL_PACKET_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "control packet too long"));
    }
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u32) -> StreamInfo {
        StreamInfo {
            id,
            pid: 42,
            name: "aplay".into(),
            direction: Direction::Playback,
            params: AudioParams {
                format: SampleFormat::S16Le,
                rate: 48000,
                channels: 2,
                period_frames: 1024,
                buffer_frames: 4096,
            },
            state: StreamState::Running,
            latency_frames: 3000,
            xruns: 1,
            volume: 0.5,
            muted: true,
            peak: 0.25,
            copied_frames: 7,
            zero_copy_frames: 8,
        }
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::List,
            Request::Stats,
            Request::Subscribe,
            Request::SetVolume { target: Target::Stream(3), volume: 0.5 },
            Request::SetVolume { target: Target::Master, volume: 1.0 },
            Request::SetMute { target: Target::Capture, op: MuteOp::Toggle },
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn replies_round_trip() {
        let stats = Stats {
            device: info(1).params,
            clients: 3,
            streams: 2,
            uptime_ns: 1,
            cycles: 2,
            frames_mixed: 3,
            fastpath_frames: 4,
            device_xruns: 5,
            device_suspends: 6,
            stream_underruns: 7,
            wakeups_sent: 8,
            wakeups_skipped: 9,
            copied_frames: 10,
            zero_copy_frames: 11,
            mix_cpu_ns: 12,
            master_volume: 0.25,
            master_muted: false,
            capture_volume: 1.0,
            capture_muted: true,
            peaks: vec![0.5, 0.125],
            device_lost: 13,
            device_reopened: 12,
            device_present: false,
        };
        for r in [
            Reply::Streams(vec![info(1), info(2)]),
            Reply::Streams(vec![]),
            Reply::Stats(Box::new(stats)),
            Reply::Volume { target: Target::Master, volume: 0.5, muted: false },
            Reply::Changed { target: Target::Stream(9) },
            Reply::Subscribed,
            Reply::Error { errno: 2, reason: "no such stream".into() },
        ] {
            assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let mut b = Request::SetVolume { target: Target::Master, volume: 0.5 }.encode();
        b[12..16].copy_from_slice(&f32::NAN.to_bits().to_le_bytes());
        assert!(Request::decode(&b).is_err());
        b[12..16].copy_from_slice(&2.0f32.to_bits().to_le_bytes());
        assert!(Request::decode(&b).is_err());
        let mut b = Request::SetVolume { target: Target::Master, volume: 0.5 }.encode();
        b[8..12].copy_from_slice(&5u32.to_le_bytes());
        assert!(Request::decode(&b).is_err(), "master with an id");
        let mut b = Reply::Streams(vec![info(1)]).encode();
        b[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(Reply::decode(&b).is_err());
        // Every truncation of every message fails cleanly.
        let full = Reply::Streams(vec![info(1), info(2)]).encode();
        for n in 0..full.len() {
            assert!(Reply::decode(&full[..n]).is_err());
        }
        let mut long = Request::List.encode();
        long.push(0);
        assert_eq!(Request::decode(&long), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn volumes_parse() {
        assert_eq!(parse_volume("50%").unwrap(), 0.5);
        assert!((parse_volume("-6.02dB").unwrap() - 0.5).abs() < 1e-3);
        assert!((parse_volume("-6dB").unwrap() - 0.501_187).abs() < 1e-5);
        assert_eq!(parse_volume("0dB").unwrap(), 1.0);
        assert_eq!(parse_volume("-inf dB").unwrap(), 0.0);
        assert_eq!(parse_volume("0.25").unwrap(), 0.25);
        assert!(parse_volume("150%").is_err());
        assert!(parse_volume("+3dB").is_err());
        assert!(parse_volume("loud").is_err());
        assert!(parse_volume("-1%").is_err());
    }
}

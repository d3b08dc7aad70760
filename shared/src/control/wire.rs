//! The control protocol's encoding: tags, `encode`/`decode` of [`Request`] and [`Reply`] with every
//! field and length checked, and one packet per `SOCK_SEQPACKET` send/receive.
//! Runs in the daemon (control thread), `shmixctl` and the ctl plugin. RT: no.

use super::{
    DeviceInfo, DeviceState, MuteOp, Reply, Request, Stats, StreamInfo, StreamState, Target, MAX_CONTROL_PACKET_BYTES,
    MAX_LISTED_DEVICES, MAX_LISTED_STREAMS, MAX_VOLUME,
};
use crate::codec::{put_f32, put_str, put_u32, put_u64, Reader};
use crate::error::DecodeError;
use crate::format::SampleFormat;
use crate::msg::{AudioParams, Direction, MAX_CHANNELS, MAX_DEVICE_NAME_BYTES, MAX_NAME_BYTES, MAX_REASON_BYTES};

const REQ_LIST: u32 = 0x101;
const REQ_STATS: u32 = 0x102;
const REQ_VOLUME: u32 = 0x103;
const REQ_MUTE: u32 = 0x104;
const REQ_SUBSCRIBE: u32 = 0x105;
const REQ_DEVICES: u32 = 0x106;
const REQ_MOVE: u32 = 0x107;
const REQ_DEFAULT: u32 = 0x108;
const REP_STREAMS: u32 = 0x181;
const REP_STATS: u32 = 0x182;
const REP_VOLUME: u32 = 0x183;
const REP_CHANGED: u32 = 0x184;
const REP_SUBSCRIBED: u32 = 0x185;
const REP_ERROR: u32 = 0x186;
const REP_DEVICES: u32 = 0x187;
const REP_MOVED: u32 = 0x188;
const REP_DEFAULT: u32 = 0x189;

impl Reader<'_> {
    fn target(&mut self) -> Result<Target, DecodeError> {
        let kind = self.u32("target kind")?;
        let id = self.u32("target id")?;
        match (kind, id) {
            (1, id) => Ok(Target::Stream(id)),
            (2, 0) => Ok(Target::Master),
            (3, 0) => Ok(Target::Capture),
            (4, id) => Ok(Target::DeviceMaster(id)),
            (5, id) => Ok(Target::DeviceCapture(id)),
            (2..=3, id) => Err(DecodeError::BadField("target id", u64::from(id))),
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
    /// A device's parameters as listed: as [`Self::listed_params`], but 0 channels (and any
    /// rate) is accepted: a device that was never opened (absent since startup) has none yet.
    fn device_params(&mut self) -> Result<AudioParams, DecodeError> {
        let code = self.u32("format")?;
        let format = SampleFormat::from_code(code).ok_or(DecodeError::BadField("format", u64::from(code)))?;
        let p = AudioParams {
            format,
            rate: self.u32("rate")?,
            channels: self.u32("channels")?,
            period_frames: self.u32("period_frames")?,
            buffer_frames: self.u32("buffer_frames")?,
        };
        if p.channels > MAX_CHANNELS {
            return Err(DecodeError::BadField("channels", u64::from(p.channels)));
        }
        Ok(p)
    }
    fn device(&mut self) -> Result<DeviceInfo, DecodeError> {
        let id = self.u32("device id")?;
        let params = self.device_params()?;
        let capture = self.bool("capture")?;
        let st = self.u32("device state")?;
        let state = DeviceState::from_u32(st).ok_or(DecodeError::BadField("device state", u64::from(st)))?;
        Ok(DeviceInfo {
            id,
            params,
            capture,
            state,
            streams: self.u32("streams")?,
            default: self.bool("default")?,
            preferred: self.bool("preferred")?,
            master_volume: self.f32("master_volume", 0.0, MAX_VOLUME)?,
            master_muted: self.bool("master_muted")?,
            capture_volume: self.f32("capture_volume", 0.0, MAX_VOLUME)?,
            capture_muted: self.bool("capture_muted")?,
            queue_frames: self.u32("queue_frames")?,
            cycles: self.u64("cycles")?,
            mix_cpu_ns: self.u64("mix_cpu_ns")?,
            device_xruns: self.u64("device_xruns")?,
            sampled_ns: self.u64("sampled_ns")?,
            name: self.string("device name", MAX_DEVICE_NAME_BYTES)?,
        })
    }
}

fn put_target(out: &mut Vec<u8>, t: Target) {
    let (kind, id) = match t {
        Target::Stream(id) => (1, id),
        Target::Master => (2, 0),
        Target::Capture => (3, 0),
        Target::DeviceMaster(id) => (4, id),
        Target::DeviceCapture(id) => (5, id),
    };
    put_u32(out, kind);
    put_u32(out, id);
}

fn put_params(out: &mut Vec<u8>, p: &AudioParams) {
    for v in [p.format.code(), p.rate, p.channels, p.period_frames, p.buffer_frames] {
        put_u32(out, v);
    }
}

fn put_device(out: &mut Vec<u8>, d: &DeviceInfo) {
    put_u32(out, d.id);
    put_params(out, &d.params);
    put_u32(out, u32::from(d.capture));
    put_u32(out, d.state as u32);
    put_u32(out, d.streams);
    put_u32(out, u32::from(d.default));
    put_u32(out, u32::from(d.preferred));
    put_f32(out, d.master_volume);
    put_u32(out, u32::from(d.master_muted));
    put_f32(out, d.capture_volume);
    put_u32(out, u32::from(d.capture_muted));
    put_u32(out, d.queue_frames);
    put_u64(out, d.cycles);
    put_u64(out, d.mix_cpu_ns);
    put_u64(out, d.device_xruns);
    put_u64(out, d.sampled_ns);
    put_str(out, &d.name, MAX_DEVICE_NAME_BYTES);
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
            Self::Devices => put_u32(&mut out, REQ_DEVICES),
            Self::Move { stream, device } => {
                put_u32(&mut out, REQ_MOVE);
                put_u32(&mut out, stream);
                put_u32(&mut out, device);
            }
            Self::SetDefault { device } => {
                put_u32(&mut out, REQ_DEFAULT);
                put_u32(&mut out, device);
            }
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
            REQ_DEVICES => Self::Devices,
            REQ_MOVE => Self::Move { stream: r.u32("stream id")?, device: r.u32("device id")? },
            REQ_DEFAULT => Self::SetDefault { device: r.u32("device id")? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        r.end()?;
        Ok(req)
    }
}

impl Reply {
    /// Encodes into one packet (at most [`MAX_CONTROL_PACKET_BYTES`]: lists beyond
    /// [`MAX_LISTED_STREAMS`] or [`MAX_LISTED_DEVICES`] are cut, names and reasons truncated).
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
                    put_str(&mut out, &s.device, MAX_DEVICE_NAME_BYTES);
                    put_u32(&mut out, u32::from(s.pinned));
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
            Self::Devices(list) => {
                put_u32(&mut out, REP_DEVICES);
                let n = list.len().min(MAX_LISTED_DEVICES as usize);
                put_u32(&mut out, n as u32);
                for d in &list[..n] {
                    put_device(&mut out, d);
                }
            }
            Self::Moved { stream, device } => {
                put_u32(&mut out, REP_MOVED);
                put_u32(&mut out, *stream);
                put_u32(&mut out, *device);
            }
            Self::Default { device } => {
                put_u32(&mut out, REP_DEFAULT);
                put_u32(&mut out, *device);
            }
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
                        device: r.string("device", MAX_DEVICE_NAME_BYTES)?,
                        pinned: r.bool("pinned")?,
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
            REP_DEVICES => {
                let n = r.u32("device count")?;
                if n > MAX_LISTED_DEVICES {
                    return Err(DecodeError::BadField("device count", u64::from(n)));
                }
                let mut list = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    list.push(r.device()?);
                }
                Self::Devices(list)
            }
            REP_MOVED => Self::Moved { stream: r.u32("stream id")?, device: r.u32("device id")? },
            REP_DEFAULT => Self::Default { device: r.u32("device id")? },
            REP_ERROR => Self::Error { errno: r.u32("errno")?, reason: r.string("reason", MAX_REASON_BYTES)? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        r.end()?;
        Ok(rep)
    }
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
            device: "hw:1,0".into(),
            pinned: true,
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

    fn device(id: u32) -> DeviceInfo {
        DeviceInfo {
            id,
            name: format!("card_{id}"),
            params: info(1).params,
            capture: true,
            state: DeviceState::Idle,
            streams: 3,
            default: id == 0,
            preferred: true,
            master_volume: 0.5,
            master_muted: false,
            capture_volume: 1.0,
            capture_muted: true,
            queue_frames: 480,
            cycles: u64::MAX,
            mix_cpu_ns: 12_345,
            device_xruns: 2,
            sampled_ns: 1 << 40,
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
            Request::SetVolume { target: Target::DeviceMaster(0), volume: 0.0 },
            Request::SetMute { target: Target::DeviceCapture(u32::MAX), op: MuteOp::On },
            Request::Devices,
            Request::Move { stream: 7, device: 2 },
            Request::SetDefault { device: 1 },
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
            Reply::Devices(vec![device(0), device(1)]),
            Reply::Devices(vec![]),
            Reply::Devices(vec![DeviceInfo {
                // Never opened: no channels known yet, and an empty name decodes too.
                params: AudioParams { channels: 0, rate: 0, ..info(1).params },
                state: DeviceState::Absent,
                name: String::new(),
                ..device(3)
            }]),
            Reply::Moved { stream: 3, device: 1 },
            Reply::Default { device: 1 },
            Reply::Changed { target: Target::DeviceMaster(4) },
            Reply::Volume { target: Target::DeviceCapture(2), volume: 1.0, muted: true },
            Reply::Streams(vec![StreamInfo { device: String::new(), pinned: false, ..info(3) }]),
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
        // Targets: kinds 1..=5 only; master and capture carry no id, device targets any.
        let mut b = Request::SetMute { target: Target::DeviceMaster(9), op: MuteOp::On }.encode();
        b[4..8].copy_from_slice(&6u32.to_le_bytes());
        assert_eq!(Request::decode(&b), Err(DecodeError::BadField("target kind", 6)));
        b[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(Request::decode(&b), Err(DecodeError::BadField("target id", 9)));
        // Devices: count, state code, booleans, name length.
        let good = Reply::Devices(vec![device(1)]).encode();
        let mut b = good.clone();
        b[4..8].copy_from_slice(&(MAX_LISTED_DEVICES + 1).to_le_bytes());
        assert_eq!(Reply::decode(&b), Err(DecodeError::BadField("device count", 33)));
        // tag, count, id, 5 params, then capture at 32, state at 36.
        let mut b = good.clone();
        b[32..36].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(Reply::decode(&b), Err(DecodeError::BadField("capture", 2)));
        let mut b = good.clone();
        b[36..40].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(Reply::decode(&b), Err(DecodeError::BadField("device state", 4)));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&999u32.to_le_bytes());
        assert_eq!(Reply::decode(&b), Err(DecodeError::BadField("format", 999)));
        let mut b = good.clone();
        b[20..24].copy_from_slice(&(MAX_CHANNELS + 1).to_le_bytes());
        assert_eq!(Reply::decode(&b), Err(DecodeError::BadField("channels", u64::from(MAX_CHANNELS) + 1)));
        // tag, count, id, params, capture, state, streams, default, preferred, then the master
        // volume at 52.
        let mut b = good.clone();
        b[52..56].copy_from_slice(&1.5f32.to_bits().to_le_bytes());
        assert_eq!(Reply::decode(&b), Err(DecodeError::BadField("master_volume", u64::from(1.5f32.to_bits()))));
        let long_name = DeviceInfo { name: "x".repeat(MAX_DEVICE_NAME_BYTES + 10), ..device(1) };
        let b = Reply::Devices(vec![long_name]).encode();
        match Reply::decode(&b) {
            Ok(Reply::Devices(l)) => assert_eq!(l[0].name.len(), MAX_DEVICE_NAME_BYTES, "cut on encode"),
            other => panic!("{other:?}"),
        }
        // The name's length field beyond the limit is refused.
        let mut b = Reply::Devices(vec![device(1)]).encode();
        let at = b.len() - "card_1".len() - 4;
        b[at..at + 4].copy_from_slice(&(MAX_DEVICE_NAME_BYTES as u32 + 1).to_le_bytes());
        b.extend_from_slice(&[b'x'; MAX_DEVICE_NAME_BYTES + 1 - 6]);
        assert_eq!(Reply::decode(&b), Err(DecodeError::BadField("device name", 129)));
        let full = Reply::Devices(vec![device(0), device(1)]).encode();
        for n in 0..full.len() {
            assert!(Reply::decode(&full[..n]).is_err());
        }
        // A stream's pinned flag is 0 or 1; its device name at most 128 bytes.
        let mut b = Reply::Streams(vec![info(1)]).encode();
        let n = b.len();
        b[n - 4..].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(Reply::decode(&b), Err(DecodeError::BadField("pinned", 2)));
        // Move, SetDefault and their replies: exact length.
        for full in [
            Request::Move { stream: 1, device: 2 }.encode(),
            Request::SetDefault { device: 2 }.encode(),
            Reply::Moved { stream: 1, device: 2 }.encode(),
            Reply::Default { device: 2 }.encode(),
        ] {
            assert!(Request::decode(&full[..full.len() - 1]).is_err());
            assert!(Reply::decode(&full[..full.len() - 1]).is_err());
        }
        let mut long = Request::List.encode();
        long.push(0);
        assert_eq!(Request::decode(&long), Err(DecodeError::TrailingBytes(1)));
    }
}

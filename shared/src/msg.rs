//! Messages: the socket handshake (setup and teardown only) and the fixed-size records of the two
//! shared-memory message rings (control in steady state). Little-endian, hand-encoded, every
//! field checked on decode. Runs in both processes. RT: records yes (no allocation); socket
//! messages no (names are `String`).

use crate::chmap::{ChannelMap, Position};
use crate::codec::{put_str, Reader};
use crate::error::DecodeError;
use crate::format::SampleFormat;
use crate::limits::{MAX_BUFFER_FRAMES, MAX_MSG_RECORDS};
pub use crate::limits::{MAX_CHANNELS, MAX_RATE, MIN_RATE, RECORD_BYTES};
use crate::quality::ResampleQuality;

/// Protocol version; both sides must agree exactly.
pub const PROTOCOL_VERSION: u32 = 4;
/// Largest socket packet either side sends or accepts.
pub const MAX_PACKET_BYTES: usize = 512;
/// Longest client name carried in `Hello`.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest device (PCM) name carried in `Hello` and the control protocol.
pub const MAX_DEVICE_NAME_BYTES: usize = 128;
/// Longest reason carried in `Refused`.
pub const MAX_REASON_BYTES: usize = 256;

/// Which way audio flows in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Direction {
    /// Client to device.
    Playback = 1,
    /// Device to client: what the device's capture side records.
    Capture = 2,
    /// Device to client: the playback mix exactly as it went to the device (a monitor source).
    Monitor = 3,
}

impl Direction {
    /// True for the directions in which the daemon produces audio (capture and monitor).
    #[must_use]
    pub fn is_capture(self) -> bool {
        !matches!(self, Self::Playback)
    }

    fn from_u32(v: u32) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(Self::Playback),
            2 => Ok(Self::Capture),
            3 => Ok(Self::Monitor),
            _ => Err(DecodeError::BadField("direction", u64::from(v))),
        }
    }
}

/// Audio parameters: a stream's, or the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioParams {
    /// Sample format.
    pub format: SampleFormat,
    /// Frames per second.
    pub rate: u32,
    /// Interleaved channels.
    pub channels: u32,
    /// Frames per period.
    pub period_frames: u32,
    /// Frames in the whole buffer.
    pub buffer_frames: u32,
}

impl AudioParams {
    /// Bytes per interleaved frame.
    #[must_use]
    pub fn frame_bytes(&self) -> u32 {
        self.format.sample_bytes() * self.channels
    }

    fn check(self) -> Result<Self, DecodeError> {
        if self.channels == 0 || self.channels > MAX_CHANNELS {
            return Err(DecodeError::BadField("channels", u64::from(self.channels)));
        }
        if !(MIN_RATE..=MAX_RATE).contains(&self.rate) {
            return Err(DecodeError::BadField("rate", u64::from(self.rate)));
        }
        if self.period_frames == 0 || self.period_frames > self.buffer_frames {
            return Err(DecodeError::BadField("period_frames", u64::from(self.period_frames)));
        }
        if self.buffer_frames > MAX_BUFFER_FRAMES {
            return Err(DecodeError::BadField("buffer_frames", u64::from(self.buffer_frames)));
        }
        Ok(self)
    }
}

/// A message on the unix socket. Setup and teardown only, never per period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketMsg {
    /// Client -> daemon, first packet: who it is and what it wants.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// Direction of the stream this connection will carry.
        direction: Direction,
        /// The client's pid as it says (the daemon trusts `SO_PEERCRED`, not this).
        pid: u32,
        /// Program name, for listings.
        name: String,
        /// The device (its PCM name, as the daemon names it) this connection's stream is to
        /// play on or record from; empty: the default device, followed when it changes.
        device: String,
    },
    /// Daemon -> client: the device's parameters (what the plugin offers at this stage).
    Welcome {
        /// Daemon's protocol version.
        version: u32,
        /// The device's format, rate, channels, period and buffer.
        device: AudioParams,
    },
    /// Client -> daemon, with fds `[memfd, client_wake, daemon_wake]`: the memfd and the
    /// daemon's ends of two [`crate::wakefd::WakeFd`] pairs.
    CreateStream {
        /// The stream's negotiated parameters.
        params: AudioParams,
        /// Records per message ring (a power of two).
        msg_records: u32,
        /// Size of the memfd in bytes.
        memfd_bytes: u64,
        /// Which speaker each channel feeds; its length equals `params.channels`.
        chmap: ChannelMap,
        /// Resampling quality when the stream's rate differs from the device's.
        quality: ResampleQuality,
    },
    /// Daemon -> client: the stream is mapped and attached to the mixer.
    StreamReady {
        /// Daemon-wide stream id.
        stream_id: u32,
    },
    /// Client -> daemon: detach and unmap the stream (the connection stays).
    DestroyStream,
    /// Daemon -> client: the stream is detached; the memfd may be reused or dropped.
    StreamDestroyed,
    /// Client -> daemon, first packet of a control connection (`shmixctl`, the ALSA ctl
    /// plugin): answered `Welcome`; every later packet is a `control::Request` /
    /// `control::Reply`.
    ControlHello {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// Program name, for the daemon's log.
        name: String,
    },
    /// Daemon -> client: the request was refused.
    Refused {
        /// An errno value describing the refusal.
        errno: u32,
        /// A human-readable reason.
        reason: String,
    },
}

const TAG_HELLO: u32 = 1;
const TAG_WELCOME: u32 = 2;
const TAG_CREATE: u32 = 3;
const TAG_READY: u32 = 4;
const TAG_DESTROY: u32 = 5;
const TAG_DESTROYED: u32 = 6;
const TAG_REFUSED: u32 = 7;
const TAG_CONTROL_HELLO: u32 = 8;

impl Reader<'_> {
    fn params(&mut self) -> Result<AudioParams, DecodeError> {
        let code = self.u32("format")?;
        let format = SampleFormat::from_code(code).ok_or(DecodeError::BadField("format", u64::from(code)))?;
        AudioParams {
            format,
            rate: self.u32("rate")?,
            channels: self.u32("channels")?,
            period_frames: self.u32("period_frames")?,
            buffer_frames: self.u32("buffer_frames")?,
        }
        .check()
    }
}

fn put_params(out: &mut Vec<u8>, p: &AudioParams) {
    for v in [p.format.code(), p.rate, p.channels, p.period_frames, p.buffer_frames] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

impl SocketMsg {
    /// Encodes into one packet (at most [`MAX_PACKET_BYTES`]; long strings are truncated).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let tag = |out: &mut Vec<u8>, t: u32| out.extend_from_slice(&t.to_le_bytes());
        match self {
            Self::Hello { version, direction, pid, name, device } => {
                tag(&mut out, TAG_HELLO);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&(*direction as u32).to_le_bytes());
                out.extend_from_slice(&pid.to_le_bytes());
                put_str(&mut out, name, MAX_NAME_BYTES);
                put_str(&mut out, device, MAX_DEVICE_NAME_BYTES);
            }
            Self::Welcome { version, device } => {
                tag(&mut out, TAG_WELCOME);
                out.extend_from_slice(&version.to_le_bytes());
                put_params(&mut out, device);
            }
            Self::CreateStream { params, msg_records, memfd_bytes, chmap, quality } => {
                tag(&mut out, TAG_CREATE);
                put_params(&mut out, params);
                out.extend_from_slice(&msg_records.to_le_bytes());
                out.extend_from_slice(&memfd_bytes.to_le_bytes());
                out.extend_from_slice(&(*quality as u32).to_le_bytes());
                out.extend_from_slice(&chmap.channels().to_le_bytes());
                out.extend_from_slice(chmap.positions());
            }
            Self::StreamReady { stream_id } => {
                tag(&mut out, TAG_READY);
                out.extend_from_slice(&stream_id.to_le_bytes());
            }
            Self::DestroyStream => tag(&mut out, TAG_DESTROY),
            Self::StreamDestroyed => tag(&mut out, TAG_DESTROYED),
            Self::ControlHello { version, name } => {
                tag(&mut out, TAG_CONTROL_HELLO);
                out.extend_from_slice(&version.to_le_bytes());
                put_str(&mut out, name, MAX_NAME_BYTES);
            }
            Self::Refused { errno, reason } => {
                tag(&mut out, TAG_REFUSED);
                out.extend_from_slice(&errno.to_le_bytes());
                put_str(&mut out, reason, MAX_REASON_BYTES);
            }
        }
        out
    }

    /// Decodes one packet, checking every field.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the first field that is missing or out of range.
    pub fn decode(packet: &[u8]) -> Result<Self, DecodeError> {
        if packet.len() > MAX_PACKET_BYTES {
            return Err(DecodeError::BadField("packet length", packet.len() as u64));
        }
        let mut r = Reader { buf: packet };
        let msg = match r.u32("tag")? {
            TAG_HELLO => Self::Hello {
                version: r.u32("version")?,
                direction: Direction::from_u32(r.u32("direction")?)?,
                pid: r.u32("pid")?,
                name: r.string("name", MAX_NAME_BYTES)?,
                device: r.string("device", MAX_DEVICE_NAME_BYTES)?,
            },
            TAG_WELCOME => Self::Welcome { version: r.u32("version")?, device: r.params()? },
            TAG_CREATE => {
                let params = r.params()?;
                let msg_records = r.u32("msg_records")?;
                if !msg_records.is_power_of_two() || msg_records > MAX_MSG_RECORDS {
                    return Err(DecodeError::BadField("msg_records", u64::from(msg_records)));
                }
                let memfd_bytes = r.u64("memfd_bytes")?;
                let q = r.u32("quality")?;
                let quality = ResampleQuality::from_u32(q).ok_or(DecodeError::BadField("quality", u64::from(q)))?;
                let n = r.u32("chmap length")?;
                if n != params.channels {
                    return Err(DecodeError::BadField("chmap length", u64::from(n)));
                }
                let positions: [Position; MAX_CHANNELS as usize] = r.bytes_padded("chmap", n as usize)?;
                let chmap = ChannelMap::new(&positions[..n as usize])?;
                Self::CreateStream { params, msg_records, memfd_bytes, chmap, quality }
            }
            TAG_READY => Self::StreamReady { stream_id: r.u32("stream_id")? },
            TAG_DESTROY => Self::DestroyStream,
            TAG_DESTROYED => Self::StreamDestroyed,
            TAG_CONTROL_HELLO => {
                Self::ControlHello { version: r.u32("version")?, name: r.string("name", MAX_NAME_BYTES)? }
            }
            TAG_REFUSED => Self::Refused { errno: r.u32("errno")?, reason: r.string("reason", MAX_REASON_BYTES)? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        r.end()?;
        Ok(msg)
    }
}

/// A control record in a shared-memory message ring: 16 bytes, `kind`, `seq`, `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    // client -> daemon
    /// Start consuming (playback) at the current read position.
    Start {
        /// Request sequence number, echoed in the answer.
        seq: u32,
    },
    /// Stop now and discard what is queued (drop); answered by `Stopped`.
    Stop {
        /// Request sequence number.
        seq: u32,
    },
    /// Pause (keep the queued audio); answered by `Stopped`.
    Pause {
        /// Request sequence number.
        seq: u32,
    },
    /// Resume after a pause.
    Resume {
        /// Request sequence number.
        seq: u32,
    },
    /// Play what is queued, then stop; answered by `Drained`.
    Drain {
        /// Request sequence number.
        seq: u32,
    },
    // daemon -> client
    /// The stream stopped consuming; `pos` is the read position it stopped at (after a `Stop` it
    /// equals the write position: the queue was discarded).
    Stopped {
        /// Sequence number of the request this answers.
        seq: u32,
        /// Audio read position.
        pos: u32,
    },
    /// The stream ran dry while running and was stopped at `pos` (underrun / overrun).
    Xrun {
        /// Audio read position when it happened.
        pos: u32,
        /// CLOCK_MONOTONIC nanoseconds when it happened.
        at_ns: u64,
    },
    /// Everything queued has been played (handed to the device); the stream is stopped.
    Drained {
        /// Sequence number of the drain request.
        seq: u32,
        /// Audio read position.
        pos: u32,
    },
    /// The daemon is going away or the device failed; the stream is dead.
    Fatal {
        /// errno describing why (ENODEV: device gone, ESHUTDOWN: daemon stopping).
        errno: u32,
    },
}

impl Record {
    /// Encodes into 16 bytes: kind u32, seq u32, value u64 (little endian).
    #[must_use]
    pub fn encode(self) -> [u8; RECORD_BYTES] {
        let (kind, seq, value): (u32, u32, u64) = match self {
            Self::Start { seq } => (1, seq, 0),
            Self::Stop { seq } => (2, seq, 0),
            Self::Pause { seq } => (3, seq, 0),
            Self::Resume { seq } => (4, seq, 0),
            Self::Drain { seq } => (5, seq, 0),
            Self::Stopped { seq, pos } => (16, seq, u64::from(pos)),
            Self::Xrun { pos, at_ns } => (17, pos, at_ns),
            Self::Drained { seq, pos } => (18, seq, u64::from(pos)),
            Self::Fatal { errno } => (19, errno, 0),
        };
        let mut out = [0u8; RECORD_BYTES];
        out[0..4].copy_from_slice(&kind.to_le_bytes());
        out[4..8].copy_from_slice(&seq.to_le_bytes());
        out[8..16].copy_from_slice(&value.to_le_bytes());
        out
    }

    /// Decodes 16 bytes written by the peer.
    ///
    /// # Errors
    /// Unknown kind, or a value out of range for its kind.
    pub fn decode(b: [u8; RECORD_BYTES]) -> Result<Self, DecodeError> {
        let kind = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let seq = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let value = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        let pos = || u32::try_from(value).map_err(|_| DecodeError::BadField("pos", value));
        let no_value = |r: Self| if value == 0 { Ok(r) } else { Err(DecodeError::BadField("value", value)) };
        match kind {
            1 => no_value(Self::Start { seq }),
            2 => no_value(Self::Stop { seq }),
            3 => no_value(Self::Pause { seq }),
            4 => no_value(Self::Resume { seq }),
            5 => no_value(Self::Drain { seq }),
            16 => Ok(Self::Stopped { seq, pos: pos()? }),
            17 => Ok(Self::Xrun { pos: seq, at_ns: value }),
            18 => Ok(Self::Drained { seq, pos: pos()? }),
            19 => no_value(Self::Fatal { errno: seq }),
            k => Err(DecodeError::UnknownTag(k)),
        }
    }

    /// True for records only a client may send.
    #[must_use]
    pub fn is_client_request(self) -> bool {
        matches!(
            self,
            Self::Start { .. } | Self::Stop { .. } | Self::Pause { .. } | Self::Resume { .. } | Self::Drain { .. }
        )
    }
}

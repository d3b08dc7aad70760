//! The control protocol: what `shmixctl` and the ALSA ctl plugin say to the daemon after a
//! `SocketMsg::ControlHello` handshake. One request or reply per `SOCK_SEQPACKET` packet,
//! little-endian, hand-encoded; every decoder is a pure `decode(&[u8]) -> Result` that checks
//! every field and length (the daemon decodes requests from any local program).
//! Runs in the daemon (control thread), `shmixctl` and the ctl plugin. RT: no.

mod volume;
mod wire;

pub use volume::{parse_volume, volume_to_db};
pub use wire::{recv_packet, send_packet};

use crate::msg::{AudioParams, Direction};

/// Largest control packet either side sends or accepts (a full stream list fits).
pub const MAX_CONTROL_PACKET_BYTES: usize = 32 * 1024;
/// Most streams one `Streams` reply lists (the daemon's stream slots).
pub const MAX_LISTED_STREAMS: u32 = 64;
/// Most devices one `Devices` reply lists (the daemon serves at most this many).
pub const MAX_LISTED_DEVICES: u32 = 32;
/// Highest volume: unity gain (0 dB). Volumes are linear amplitude factors in `0.0..=1.0`.
pub const MAX_VOLUME: f32 = 1.0;

/// What a volume or mute request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One stream, by its daemon-wide id.
    Stream(u32),
    /// The default device's playback mix.
    Master,
    /// The default device's capture path (everything recorded from its capture side).
    Capture,
    /// One device's playback mix, by its id (`Reply::Devices`).
    DeviceMaster(u32),
    /// One device's capture path, by its id.
    DeviceCapture(u32),
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
    /// Answered by `Reply::Devices`.
    Devices,
    /// Moves a stream to another device (by id, from `Reply::Devices`); answered by
    /// `Reply::Moved` once the move is under way, or `Reply::Error`. The stream stays on that
    /// device from then on (it no longer follows the default).
    Move {
        /// The stream's id.
        stream: u32,
        /// The device's id.
        device: u32,
    },
    /// Makes a device the default (and the preferred default, remembered across restarts);
    /// the streams that follow the default move to it. Answered by `Reply::Default` or
    /// `Reply::Error`.
    SetDefault {
        /// The device's id.
        device: u32,
    },
}

/// What a device is doing, as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DeviceState {
    /// Open and running.
    Running = 0,
    /// Open, stopped after `--idle-stop` without streams (no wakeups).
    Idle = 1,
    /// Vanished or not there yet: its pinned streams wait for it.
    Absent = 2,
    /// Failed for good (its streams got `Fatal`).
    Failed = 3,
}

impl DeviceState {
    /// The name `shmixctl` prints and puts in JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Idle => "idle",
            Self::Absent => "absent",
            Self::Failed => "failed",
        }
    }

    /// From its wire code.
    #[must_use]
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Running,
            1 => Self::Idle,
            2 => Self::Absent,
            3 => Self::Failed,
            _ => return None,
        })
    }
}

/// One device as `Devices` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// The daemon's id for it (stable while the daemon runs).
    pub id: u32,
    /// Its ALSA PCM name (what `--device`, the plugin's `device` key and `shmixctl` use).
    pub name: String,
    /// The playback side's format, rate, channels; period = the quantum, buffer = the device
    /// buffer.
    pub params: AudioParams,
    /// It has a capture side (capture streams may be sent to it).
    pub capture: bool,
    /// What it is doing.
    pub state: DeviceState,
    /// Streams on it (playback, capture and monitor).
    pub streams: u32,
    /// It is the default device now.
    pub default: bool,
    /// It is the preferred default (`--prefer`, or the last `shmixctl default`).
    pub preferred: bool,
    /// Its playback mix's linear volume (`Target::DeviceMaster`; `Stats.master_volume` for
    /// the default device).
    pub master_volume: f32,
    /// Its playback mix is muted.
    pub master_muted: bool,
    /// Its capture path's linear volume (`Target::DeviceCapture`).
    pub capture_volume: f32,
    /// Its capture path is muted.
    pub capture_muted: bool,
    /// Frames queued on the playback side at the mix thread's last fill (its latency).
    pub queue_frames: u32,
    /// Mix thread cycles (wakeups handled) since start.
    pub cycles: u64,
    /// CPU time its mix thread has used, in nanoseconds.
    pub mix_cpu_ns: u64,
    /// Device xruns recovered.
    pub device_xruns: u64,
    /// The daemon's CLOCK_MONOTONIC when this was taken, in nanoseconds (two listings give
    /// wakeups per second).
    pub sampled_ns: u64,
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
    /// The device it plays on or records from (its PCM name).
    pub device: String,
    /// It stays on `device` (named by its program, or moved there); else it follows the
    /// default.
    pub pinned: bool,
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
    /// Every device.
    Devices(Vec<DeviceInfo>),
    /// A `Move` is under way (the stream continues on `device` within a few ms).
    Moved {
        /// The stream.
        stream: u32,
        /// The device's id.
        device: u32,
    },
    /// The default device now (after `SetDefault`).
    Default {
        /// The device's id.
        device: u32,
    },
    /// The request failed (unknown stream, volume out of range).
    Error {
        /// An errno value.
        errno: u32,
        /// Why, for humans.
        reason: String,
    },
}

//! The control thread's registry: which client owns which stream, the volume memory (per program
//! name, the most recently used), and the answers to `shmixctl` and the ALSA ctl plugin
//! ([`Request`] -> [`Reply`]). Volumes, levels and figures it reads and writes live in
//! [`crate::mix::ctl`] (atomics shared with the mix thread).
//! Runs on the control thread. RT: no.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use shmix_shared::control::{MuteOp, Reply, Request, Stats, StreamInfo, StreamState, Target};
use shmix_shared::{AudioParams, Direction};

use crate::mix::counters::Counters;
use crate::mix::ctl::{DeviceCtl, Level, StreamCtl, Volume};

/// Program names whose volume is remembered; past it the least recently used is forgotten
/// (names are the clients' choice: without a bound, one client inventing names grows the
/// daemon for ever).
pub const VOLUME_MEMORY_NAMES: usize = 256;

/// Volume and mute per program name, at most [`VOLUME_MEMORY_NAMES`] of them, least recently
/// used (set, or applied to a new stream) forgotten first.
#[derive(Debug, Default)]
pub struct VolumeMemory {
    /// Name -> (volume, muted, last use).
    names: HashMap<String, (f32, bool, u64)>,
    clock: u64,
}

impl VolumeMemory {
    /// The remembered volume and mute of `name`, marking it used.
    pub fn recall(&mut self, name: &str) -> Option<(f32, bool)> {
        self.clock += 1;
        let clock = self.clock;
        self.names.get_mut(name).map(|e| {
            e.2 = clock;
            (e.0, e.1)
        })
    }

    /// Remembers `name`'s volume and mute, forgetting the least recently used name when full.
    pub fn remember(&mut self, name: &str, (volume, muted): (f32, bool)) {
        self.clock += 1;
        if let Some(e) = self.names.get_mut(name) {
            *e = (volume, muted, self.clock);
            return;
        }
        if self.names.len() >= VOLUME_MEMORY_NAMES {
            // A linear scan of 256 entries, on a shmixctl request: cheaper than keeping an order.
            if let Some(oldest) = self.names.iter().min_by_key(|(_, e)| e.2).map(|(k, _)| k.clone()) {
                self.names.remove(&oldest);
            }
        }
        self.names.insert(name.to_owned(), (volume, muted, self.clock));
    }

    /// Names remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Nothing remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// What the control thread knows about a stream.
#[derive(Debug)]
struct Entry {
    id: u32,
    pid: u32,
    name: String,
    direction: Direction,
    params: AudioParams,
    ctl: Arc<StreamCtl>,
    /// The device it plays on or records from.
    device: String,
    /// It stays there (named by its program, or moved there).
    pinned: bool,
}

/// One device's shared state and figures, as `Stats` and the volume targets need them.
#[derive(Debug, Clone, Copy)]
pub struct DeviceFigures<'a> {
    /// Its volumes and levels.
    pub dctl: &'a DeviceCtl,
    /// Its playback parameters.
    pub params: AudioParams,
    /// Its mix thread's counters.
    pub counters: &'a Counters,
}

/// What the server supplies for `Stats` and the volume targets.
#[derive(Debug, Clone, Copy)]
pub struct ServerFigures<'a> {
    /// The devices, by id.
    pub units: &'a [DeviceFigures<'a>],
    /// The default device's index in `units`.
    pub default: usize,
    /// Connected clients.
    pub clients: u32,
}

/// The control thread's registry of streams and the volume memory.
#[derive(Debug)]
pub struct Control {
    streams: Vec<Entry>,
    /// Volume and mute per program name (the most recently used names).
    memory: VolumeMemory,
    /// Copy counters of streams that are gone.
    retired_copied: u64,
    retired_zero_copy: u64,
    started: Instant,
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

impl Control {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self {
            streams: Vec::new(),
            memory: VolumeMemory::default(),
            retired_copied: 0,
            retired_zero_copy: 0,
            started: Instant::now(),
        }
    }

    /// Registers a new stream on `device` (`pinned` there, or following the default); returns
    /// its shared figures with the volume remembered for `name` (if any) already set.
    pub fn register(
        &mut self,
        id: u32,
        pid: u32,
        name: &str,
        direction: Direction,
        params: AudioParams,
        (device, pinned): (&str, bool),
    ) -> Arc<StreamCtl> {
        let ctl = Arc::new(StreamCtl::default());
        if let Some((v, m)) = self.memory.recall(name) {
            ctl.volume.set_volume(v);
            ctl.volume.set_muted(m);
            log::info!("stream {id} ({name}): remembered volume {:.0}%{}", v * 100.0, if m { ", muted" } else { "" });
        }
        self.streams.push(Entry {
            id,
            pid,
            name: name.to_owned(),
            direction,
            params,
            ctl: Arc::clone(&ctl),
            device: device.to_owned(),
            pinned,
        });
        ctl
    }

    /// Stream `id` is now on `device` (moved), `pinned` there or following the default.
    pub fn set_device(&mut self, id: u32, device: &str, pinned: bool) {
        if let Some(e) = self.streams.iter_mut().find(|e| e.id == id) {
            device.clone_into(&mut e.device);
            e.pinned = pinned;
        }
    }

    /// Whether stream `id` is registered.
    #[must_use]
    pub fn has_stream(&self, id: u32) -> bool {
        self.streams.iter().any(|e| e.id == id)
    }

    /// Forgets a stream that left the mix.
    pub fn unregister(&mut self, id: u32) {
        if let Some(i) = self.streams.iter().position(|e| e.id == id) {
            let e = self.streams.swap_remove(i);
            self.retired_copied = self.retired_copied.saturating_add(e.ctl.copied_frames.load(Ordering::Relaxed));
            self.retired_zero_copy =
                self.retired_zero_copy.saturating_add(e.ctl.zero_copy_frames.load(Ordering::Relaxed));
        }
    }

    fn list(&self) -> Vec<StreamInfo> {
        let mut v: Vec<StreamInfo> = self
            .streams
            .iter()
            .map(|e| {
                let c = &e.ctl;
                StreamInfo {
                    id: e.id,
                    pid: e.pid,
                    name: e.name.clone(),
                    direction: e.direction,
                    device: e.device.clone(),
                    pinned: e.pinned,
                    params: e.params,
                    state: StreamState::from_u32(c.state.load(Ordering::Relaxed)).unwrap_or(StreamState::Stopped),
                    latency_frames: c.latency_frames.load(Ordering::Relaxed),
                    xruns: c.xruns.load(Ordering::Relaxed),
                    volume: c.volume.volume(),
                    muted: c.volume.muted(),
                    peak: c.peak.get(),
                    copied_frames: c.copied_frames.load(Ordering::Relaxed),
                    zero_copy_frames: c.zero_copy_frames.load(Ordering::Relaxed),
                }
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Daemon-wide figures; the device figures are the default device's.
    fn stats(&self, f: &ServerFigures<'_>) -> Stats {
        let u = &f.units[f.default];
        let c = u.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let live_copied: u64 = self.streams.iter().map(|e| e.ctl.copied_frames.load(Ordering::Relaxed)).sum();
        let live_zero: u64 = self.streams.iter().map(|e| e.ctl.zero_copy_frames.load(Ordering::Relaxed)).sum();
        let d = u.dctl;
        Stats {
            device: u.params,
            clients: f.clients,
            streams: self.streams.len() as u32,
            uptime_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            cycles: g(&c.cycles),
            frames_mixed: g(&c.frames_mixed),
            fastpath_frames: g(&c.fastpath_frames),
            device_xruns: g(&c.device_xruns),
            device_suspends: g(&c.device_suspends),
            stream_underruns: g(&c.stream_underruns),
            wakeups_sent: g(&c.wakeups_sent),
            wakeups_skipped: g(&c.wakeups_skipped),
            copied_frames: self.retired_copied.saturating_add(live_copied),
            zero_copy_frames: self.retired_zero_copy.saturating_add(live_zero),
            mix_cpu_ns: d.mix_cpu_ns(),
            master_volume: d.master.volume(),
            master_muted: d.master.muted(),
            capture_volume: d.capture.volume(),
            capture_muted: d.capture.muted(),
            peaks: d.peaks[..d.channels as usize].iter().map(Level::get).collect(),
            device_lost: g(&c.device_lost),
            device_reopened: g(&c.device_reopened),
            device_present: c.device_present.load(Ordering::Relaxed),
        }
    }

    fn volume_of<'a>(&'a self, t: Target, f: &ServerFigures<'a>) -> Option<(&'a Volume, Option<&'a str>)> {
        let dev = |id: usize| f.units.get(id).map(|u| u.dctl);
        match t {
            Target::Master => dev(f.default).map(|d| (&d.master, None)),
            Target::Capture => dev(f.default).map(|d| (&d.capture, None)),
            Target::DeviceMaster(id) => dev(id as usize).map(|d| (&d.master, None)),
            Target::DeviceCapture(id) => dev(id as usize).map(|d| (&d.capture, None)),
            Target::Stream(id) => {
                self.streams.iter().find(|e| e.id == id).map(|e| (&e.ctl.volume, Some(e.name.as_str())))
            }
        }
    }

    /// Answers one request. Returns the reply and, when something changed, what (for the
    /// subscribers). `Subscribe` is handled by the server (it owns the connections).
    pub fn handle(&mut self, req: Request, f: &ServerFigures<'_>) -> (Reply, Option<Target>) {
        let (target, change): (Target, &dyn Fn(&Volume)) = match req {
            Request::List => return (Reply::Streams(self.list()), None),
            Request::Stats => return (Reply::Stats(Box::new(self.stats(f))), None),
            Request::Subscribe => return (Reply::Subscribed, None),
            // The server answers these (they change where streams play).
            Request::Devices | Request::Move { .. } | Request::SetDefault { .. } => {
                return (Reply::Error { errno: libc::EINVAL as u32, reason: "not a registry request".into() }, None)
            }
            Request::SetVolume { target, volume } => (target, &move |v: &Volume| v.set_volume(volume)),
            Request::SetMute { target, op } => (target, &move |v: &Volume| {
                v.set_muted(match op {
                    MuteOp::On => true,
                    MuteOp::Off => false,
                    MuteOp::Toggle => !v.muted(),
                });
            }),
        };
        let Some((vol, name)) = self.volume_of(target, f) else {
            let reason = match target {
                Target::Stream(id) => format!("no stream {id}"),
                Target::DeviceMaster(id) | Target::DeviceCapture(id) => format!("no device {id}"),
                Target::Master | Target::Capture => "no default device".into(),
            };
            return (Reply::Error { errno: libc::ENOENT as u32, reason }, None);
        };
        let before = (vol.volume(), vol.muted());
        change(vol);
        let after = (vol.volume(), vol.muted());
        let name = name.map(str::to_owned);
        if let Some(name) = name {
            // Volume memory: the next stream of this program starts at this level.
            self.memory.remember(&name, after);
        }
        let reply = Reply::Volume { target, volume: after.0, muted: after.1 };
        (reply, (before != after).then_some(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmix_shared::SampleFormat;

    fn params() -> AudioParams {
        AudioParams { format: SampleFormat::S16Le, rate: 48000, channels: 2, period_frames: 256, buffer_frames: 1024 }
    }

    #[test]
    fn volume_is_remembered_per_program() {
        let mut c = Control::new();
        let counters = Counters::default();
        let dctl = DeviceCtl::new(2, 48000);
        let units = [DeviceFigures { dctl: &dctl, params: params(), counters: &counters }];
        let f = ServerFigures { units: &units, default: 0, clients: 1 };
        let s = c.register(1, 10, "aplay", Direction::Playback, params(), ("card", false));
        let (r, ch) = c.handle(Request::SetVolume { target: Target::Stream(1), volume: 0.25 }, &f);
        assert_eq!(r, Reply::Volume { target: Target::Stream(1), volume: 0.25, muted: false });
        assert_eq!(ch, Some(Target::Stream(1)));
        assert_eq!(s.volume.gain(), 0.25);
        c.unregister(1);
        let s2 = c.register(2, 11, "aplay", Direction::Playback, params(), ("card", false));
        assert_eq!(s2.volume.volume(), 0.25);
        let other = c.register(3, 12, "mpv", Direction::Playback, params(), ("card", true));
        assert_eq!(other.volume.volume(), 1.0);
        let (r, _) = c.handle(Request::SetMute { target: Target::Stream(9), op: MuteOp::On }, &f);
        assert!(matches!(r, Reply::Error { .. }));
        let (_, ch) = c.handle(Request::SetMute { target: Target::Master, op: MuteOp::Toggle }, &f);
        assert_eq!(ch, Some(Target::Master));
        assert_eq!(dctl.master.gain(), 0.0);
        let (_, ch) = c.handle(Request::SetMute { target: Target::Master, op: MuteOp::On }, &f);
        assert_eq!(ch, None, "no change, no event");
    }

    #[test]
    fn volume_memory_keeps_the_most_recently_used_names_only() {
        let mut m = VolumeMemory::default();
        m.remember("kept", (0.5, false));
        for i in 0..10 * VOLUME_MEMORY_NAMES {
            m.remember(&format!("invented-{i}"), (0.1, true));
            if i % 100 == 0 {
                // Used now and then: stays while older inventions go.
                assert_eq!(m.recall("kept"), Some((0.5, false)));
            }
            assert!(m.len() <= VOLUME_MEMORY_NAMES);
        }
        assert_eq!(m.len(), VOLUME_MEMORY_NAMES);
        assert_eq!(m.recall("kept"), Some((0.5, false)));
        assert_eq!(m.recall("invented-0"), None, "the oldest names are forgotten");
        let last = format!("invented-{}", 10 * VOLUME_MEMORY_NAMES - 1);
        assert_eq!(m.recall(&last), Some((0.1, true)));
        m.remember("kept", (0.75, true));
        assert_eq!(m.recall("kept"), Some((0.75, true)));
        assert_eq!(m.len(), VOLUME_MEMORY_NAMES);
    }

    #[test]
    fn a_control_client_setting_many_names_is_bounded() {
        let mut c = Control::new();
        let counters = Counters::default();
        let dctl = DeviceCtl::new(2, 48000);
        let units = [DeviceFigures { dctl: &dctl, params: params(), counters: &counters }];
        let f = ServerFigures { units: &units, default: 0, clients: 1 };
        for id in 1..=1000 {
            c.register(id, 10, &format!("p{id}"), Direction::Playback, params(), ("card", false));
            c.handle(Request::SetVolume { target: Target::Stream(id), volume: 0.5 }, &f);
            c.unregister(id);
        }
        assert_eq!(c.memory.len(), VOLUME_MEMORY_NAMES);
    }
}

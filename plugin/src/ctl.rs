//! The ALSA control plugin `ctl.shmix` (type `shmix`), minus its FFI (in `ctl_ffi.rs`): four
//! mixer elements, `Master Playback Volume`/`Switch` (the daemon's playback mix) and
//! `Capture Volume`/`Switch` (its capture path), read and written over a control connection
//! (`shmix_shared::control`). A second, subscribed connection delivers the daemon's `Changed`
//! events; its socket is the control's poll descriptor, so a running alsamixer redraws when
//! `shmixctl` (or anyone) changes a volume. Without a `device` key (or `SHMIX_DEVICE`) the
//! elements are the default device's (`Target::Master`/`Capture`, following the default); with
//! one, that device's (`Target::DeviceMaster`/`DeviceCapture`, its id looked up once at open).
//! Runs in the host program at its calls into alsa-lib's ctl API. RT: no.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use shmix_shared::control::{self, DeviceInfo, MuteOp, Reply, Request, Target};
use shmix_shared::{SocketMsg, PROTOCOL_VERSION};

use crate::Errno;

/// The elements, in `elem_list` order; the key of each is its index.
pub const ELEMENTS: [&str; 4] =
    ["Master Playback Volume", "Master Playback Switch", "Capture Volume", "Capture Switch"];

/// The integer range of the volume elements: a linear amplitude factor times this (as
/// PulseAudio's ctl plugin uses `PA_VOLUME_NORM`), so `50%` in amixer is exactly half amplitude.
pub const VOLUME_MAX: i64 = 65536;

/// Socket send/receive timeout: a hung daemon makes calls fail, never hang the program.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What an element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An integer volume `0..=VOLUME_MAX`.
    Volume,
    /// A boolean switch: 1 = sound on (not muted).
    Switch,
}

/// An element's target and kind, from its key.
#[must_use]
pub fn element(key: usize) -> Option<(Target, Kind)> {
    Some(match key {
        0 => (Target::Master, Kind::Volume),
        1 => (Target::Master, Kind::Switch),
        2 => (Target::Capture, Kind::Volume),
        3 => (Target::Capture, Kind::Switch),
        _ => return None,
    })
}

/// Linear volume -> element value.
#[must_use]
pub fn to_raw(v: f32) -> i64 {
    (f64::from(v) * VOLUME_MAX as f64).round() as i64
}

/// Element value -> linear volume (clamped to the range).
#[must_use]
pub fn from_raw(raw: i64) -> f32 {
    (raw.clamp(0, VOLUME_MAX) as f64 / VOLUME_MAX as f64) as f32
}

/// Connects, checks the daemon's credentials and shakes hands as a control connection; a
/// refusal comes back with the daemon's reason (a full daemon says so, not a bare EPIPE).
fn connect(path: &Path) -> Result<OwnedFd, (Errno, String)> {
    let hello = SocketMsg::ControlHello { version: PROTOCOL_VERSION, name: crate::conn::program_name() };
    shmix_shared::connect::connect(path, &hello, TIMEOUT).map(|c| c.sock).map_err(|e| (Errno(e.errno()), e.to_string()))
}

/// One open `ctl.shmix`.
#[derive(Debug)]
pub struct Ctl {
    /// Requests and replies.
    req: OwnedFd,
    /// Subscribed: `Changed` events only; the poll descriptor.
    events: OwnedFd,
    /// Elements changed and not yet reported (bit = key).
    pending: u32,
    /// The event socket hung up (the daemon is gone).
    gone: bool,
    /// The named device's id; `None`: the default device.
    device: Option<u32>,
}

/// The device called `name` in a `Devices` listing: its id, or the `ENODEV` message naming it
/// and the devices there are.
///
/// # Errors
/// No device has that name.
pub fn find_device(list: &[DeviceInfo], name: &str) -> Result<u32, String> {
    if let Some(d) = list.iter().find(|d| d.name == name) {
        return Ok(d.id);
    }
    let known = list.iter().map(|d| format!("'{}'", d.name)).collect::<Vec<_>>().join(", ");
    Err(format!(
        "shmixd serves no device '{name}' (the 'device' key or SHMIX_DEVICE; it serves {})",
        if known.is_empty() { "none".into() } else { known }
    ))
}

/// Which `Changed` targets touch which elements (bit = key) of a control on `device`.
/// Master and capture are also taken for a named device, and any device's for the default one,
/// since either may be the other: a needless event only makes the mixer read again.
#[must_use]
pub fn event_bits(target: Target, device: Option<u32>) -> u32 {
    let mine = |id: u32| device.is_none_or(|d| d == id);
    match target {
        Target::Master => 0b0011,
        Target::Capture => 0b1100,
        Target::DeviceMaster(id) if mine(id) => 0b0011,
        Target::DeviceCapture(id) if mine(id) => 0b1100,
        Target::DeviceMaster(_) | Target::DeviceCapture(_) | Target::Stream(_) => 0,
    }
}

impl Ctl {
    /// Opens both connections to the daemon at `path`, for `device` (a PCM name the daemon
    /// serves; empty: the default device).
    ///
    /// # Errors
    /// The errno to return and a user-facing message (the daemon is not there, is not to be
    /// trusted, or refuses; `ENODEV`: it serves no such device).
    pub fn open(path: &Path, device: &str) -> Result<Self, (Errno, String)> {
        let req = connect(path)?;
        let device = if device.is_empty() {
            None
        } else {
            let list = match control::send_packet(req.as_fd(), &Request::Devices.encode())
                .and_then(|()| control::recv_packet(req.as_fd()))
            {
                Ok(b) => Reply::decode(&b),
                Err(x) => return Err((Errno(x.raw_os_error().unwrap_or(libc::EIO)), format!("devices: {x}"))),
            };
            match list {
                Ok(Reply::Devices(list)) => Some(find_device(&list, device).map_err(|m| (Errno(libc::ENODEV), m))?),
                other => return Err((Errno(libc::EPROTO), format!("devices: unexpected answer {other:?}"))),
            }
        };
        let events = connect(path)?;
        let proto = |what: String| (Errno(libc::EPROTO), what);
        control::send_packet(events.as_fd(), &Request::Subscribe.encode())
            .map_err(|x| (Errno(x.raw_os_error().unwrap_or(libc::EIO)), format!("subscribe: {x}")))?;
        match control::recv_packet(events.as_fd()).map(|b| Reply::decode(&b)) {
            Ok(Ok(Reply::Subscribed)) => {}
            other => return Err(proto(format!("subscribe: unexpected answer {other:?}"))),
        }
        nix::fcntl::fcntl(&events, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|x| (Errno(x as i32), format!("O_NONBLOCK: {x}")))?;
        Ok(Self { req, events, pending: 0, gone: false, device })
    }

    /// The descriptor to poll for events.
    #[must_use]
    pub fn poll_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }

    fn call(&self, r: Request) -> Result<Reply, Errno> {
        control::send_packet(self.req.as_fd(), &r.encode())
            .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let b = control::recv_packet(self.req.as_fd()).map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
        if b.is_empty() {
            return Err(Errno(libc::ENODEV));
        }
        match Reply::decode(&b) {
            Ok(Reply::Error { errno, .. }) => Err(Errno(i32::try_from(errno).unwrap_or(libc::EIO).max(1))),
            Ok(r) => Ok(r),
            Err(_) => Err(Errno(libc::EPROTO)),
        }
    }

    /// What an element's `Master`/`Capture` addresses on this control's device.
    fn target(&self, t: Target) -> Target {
        match (t, self.device) {
            (Target::Master, Some(id)) => Target::DeviceMaster(id),
            (Target::Capture, Some(id)) => Target::DeviceCapture(id),
            (t, _) => t,
        }
    }

    /// The volume and mute of `t` now.
    fn state(&self, t: Target) -> Result<(f32, bool), Errno> {
        let Some(id) = self.device else {
            return match self.call(Request::Stats)? {
                Reply::Stats(s) => Ok(match t {
                    Target::Capture => (s.capture_volume, s.capture_muted),
                    _ => (s.master_volume, s.master_muted),
                }),
                _ => Err(Errno(libc::EPROTO)),
            };
        };
        match self.call(Request::Devices)? {
            Reply::Devices(list) => {
                // The daemon keeps a device's id while it runs: gone from the list, gone for good.
                let d = list.iter().find(|d| d.id == id).ok_or(Errno(libc::ENODEV))?;
                Ok(match t {
                    Target::Capture => (d.capture_volume, d.capture_muted),
                    _ => (d.master_volume, d.master_muted),
                })
            }
            _ => Err(Errno(libc::EPROTO)),
        }
    }

    /// The element's value.
    ///
    /// # Errors
    /// Unknown key, or the daemon cannot be asked.
    pub fn read(&self, key: usize) -> Result<i64, Errno> {
        let (t, kind) = element(key).ok_or(Errno(libc::EINVAL))?;
        let (v, muted) = self.state(t)?;
        Ok(match kind {
            Kind::Volume => to_raw(v),
            Kind::Switch => i64::from(!muted),
        })
    }

    /// Sets the element's value; returns whether it changed (alsa-lib's 1 / 0).
    ///
    /// # Errors
    /// Unknown key, a value out of range, or the daemon cannot be asked.
    pub fn write(&self, key: usize, value: i64) -> Result<bool, Errno> {
        let (t, kind) = element(key).ok_or(Errno(libc::EINVAL))?;
        let (v, muted) = self.state(t)?;
        match kind {
            Kind::Volume => {
                if !(0..=VOLUME_MAX).contains(&value) {
                    return Err(Errno(libc::EINVAL));
                }
                if to_raw(v) == value {
                    return Ok(false);
                }
                self.call(Request::SetVolume { target: self.target(t), volume: from_raw(value) })?;
            }
            Kind::Switch => {
                let mute = value == 0;
                if mute == muted {
                    return Ok(false);
                }
                let op = if mute { MuteOp::On } else { MuteOp::Off };
                self.call(Request::SetMute { target: self.target(t), op })?;
            }
        }
        Ok(true)
    }

    /// Reads every event the daemon sent into `pending`.
    fn drain_events(&mut self) {
        loop {
            match control::recv_packet(self.events.as_fd()) {
                Ok(b) if b.is_empty() => {
                    self.gone = true;
                    return;
                }
                Ok(b) => {
                    if let Ok(Reply::Changed { target }) = Reply::decode(&b) {
                        self.pending |= event_bits(target, self.device);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.gone = true;
                    return;
                }
            }
        }
    }

    /// The next changed element (its key), if any.
    pub fn next_event(&mut self) -> Option<usize> {
        self.drain_events();
        if self.pending == 0 {
            return None;
        }
        let key = self.pending.trailing_zeros() as usize;
        self.pending &= !(1 << key);
        Some(key)
    }

    /// `poll` revents for the application: POLLIN while an event is pending or readable,
    /// POLLERR once the daemon is gone.
    #[must_use]
    pub fn revents(&mut self, polled: i16) -> u16 {
        if polled & libc::POLLIN != 0 {
            self.drain_events();
        }
        if self.gone || polled & (libc::POLLHUP | libc::POLLERR) != 0 && polled & libc::POLLIN == 0 {
            return libc::POLLERR as u16;
        }
        if self.pending != 0 {
            libc::POLLIN as u16
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_map_linearly() {
        assert_eq!(to_raw(0.5), 32768);
        assert_eq!(from_raw(32768), 0.5);
        assert_eq!(to_raw(1.0), VOLUME_MAX);
        assert_eq!(from_raw(-5), 0.0);
        assert_eq!(from_raw(1 << 20), 1.0);
        assert_eq!(element(1), Some((Target::Master, Kind::Switch)));
        assert_eq!(element(4), None);
    }

    fn dev(id: u32, name: &str) -> DeviceInfo {
        DeviceInfo {
            id,
            name: name.into(),
            params: shmix_shared::AudioParams {
                format: shmix_shared::SampleFormat::S16Le,
                rate: 48000,
                channels: 2,
                period_frames: 32,
                buffer_frames: 96000,
            },
            capture: false,
            state: control::DeviceState::Running,
            streams: 0,
            default: id == 0,
            preferred: false,
            master_volume: 1.0,
            master_muted: false,
            capture_volume: 1.0,
            capture_muted: false,
            queue_frames: 0,
            cycles: 0,
            mix_cpu_ns: 0,
            device_xruns: 0,
            sampled_ns: 0,
        }
    }

    #[test]
    fn devices_are_found_by_name_or_named_in_the_error() {
        let list = [dev(0, "card_a"), dev(7, "hw:1,0")];
        assert_eq!(find_device(&list, "hw:1,0"), Ok(7));
        let e = find_device(&list, "card_c").unwrap_err();
        assert!(e.contains("'card_c'") && e.contains("'card_a', 'hw:1,0'"), "{e}");
        assert!(find_device(&[], "x").unwrap_err().contains("serves none"));
    }

    #[test]
    fn events_of_other_devices_are_not_ours() {
        assert_eq!(event_bits(Target::Master, None), 0b0011);
        assert_eq!(event_bits(Target::Capture, Some(3)), 0b1100);
        assert_eq!(event_bits(Target::DeviceMaster(3), Some(3)), 0b0011);
        assert_eq!(event_bits(Target::DeviceCapture(3), Some(3)), 0b1100);
        assert_eq!(event_bits(Target::DeviceMaster(4), Some(3)), 0);
        assert_eq!(event_bits(Target::DeviceCapture(9), None), 0b1100, "may be the default device");
        assert_eq!(event_bits(Target::Stream(3), Some(3)), 0);
    }
}

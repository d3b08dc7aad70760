//! Where streams play: the default device and the preferred one, `shmixctl devices`, `move` and
//! `default`, and devices that vanish and come back. A stream moves in two steps: its mix thread
//! detaches it (what it gave that device is played out there), then the control thread builds
//! its conversion for the new device and hands it to that device's mix thread, where it goes on
//! from the first frame the old device did not get.
//! Runs on the main (control) thread. RT: no.

use std::os::fd::AsRawFd;

use log::{debug, info, warn};
use shmix_shared::control::{Reply, Target};
use shmix_shared::SocketMsg;

use super::server::Server;
use super::session::{conversion, describe, Disconnect};
use crate::mix::thread::Command;
use crate::mix::Stream;

/// Name of the file in the state directory that remembers the preferred default device.
pub const DEFAULT_DEVICE_FILE: &str = "default-device";

/// The device name remembered in `path` (`shmixctl default`), if the file holds one.
#[must_use]
pub fn read_preference(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let name = text.lines().next()?.trim();
    (!name.is_empty() && name.len() <= shmix_shared::msg::MAX_DEVICE_NAME_BYTES).then(|| name.to_owned())
}

impl Server {
    /// The preferred default's index, if it is served.
    pub(super) fn preferred_unit(&self) -> Option<usize> {
        let name = self.preferred.as_deref()?;
        self.units.iter().position(|u| u.name == name)
    }

    /// `Devices`: every device with its figures.
    pub(super) fn devices_reply(&self) -> Reply {
        let preferred = self.preferred_unit();
        let list = self
            .units
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let streams = u32::try_from(self.streams_on(i)).unwrap_or(u32::MAX);
                u.info(streams, i == self.default, preferred == Some(i))
            })
            .collect();
        Reply::Devices(list)
    }

    /// `Move`: sends stream `stream` to device `device`, where it stays (pinned).
    pub(super) fn move_request(&mut self, stream: u32, device: u32) -> (Reply, Option<Target>) {
        let err = |errno: i32, reason: String| (Reply::Error { errno: errno as u32, reason }, None);
        let to = device as usize;
        let Some(u) = self.units.get(to) else { return err(libc::ENODEV, format!("no device {device}")) };
        if u.failed {
            return err(libc::ENODEV, format!("device '{}' failed", u.name));
        }
        let Some(i) = self.clients.iter().position(|c| c.stream == Some(stream)) else {
            return err(libc::ENOENT, format!("no stream {stream}"));
        };
        let c = &self.clients[i];
        if c.destroying {
            return err(libc::ENOENT, format!("stream {stream} is closing"));
        }
        if c.direction == shmix_shared::Direction::Capture && u.capture.is_none() {
            return err(libc::ENOTSUP, format!("device '{}' has no capture side", u.name));
        }
        self.clients[i].pinned = true;
        self.start_move(i, to);
        (Reply::Moved { stream, device }, Some(Target::Stream(stream)))
    }

    /// `SetDefault`: makes `device` the preferred default (remembered in the state directory),
    /// and the default now if it is present; the streams that follow the default go there.
    pub(super) fn default_request(&mut self, device: u32) -> (Reply, Option<Target>) {
        let to = device as usize;
        let Some(u) = self.units.get(to) else {
            return (Reply::Error { errno: libc::ENODEV as u32, reason: format!("no device {device}") }, None);
        };
        if u.failed {
            let reason = format!("device '{}' failed", u.name);
            return (Reply::Error { errno: libc::ENODEV as u32, reason }, None);
        }
        self.preferred = Some(u.name.clone());
        self.save_preference();
        if self.units[to].present {
            self.set_default(to);
        } else {
            info!("device '{}' is the preferred default; it becomes the default when it is back", self.units[to].name);
        }
        (Reply::Default { device: self.default as u32 }, Some(Target::Master))
    }

    /// Writes the preferred default into the state directory (a failure is logged: the choice
    /// holds until the daemon stops).
    fn save_preference(&self) {
        let (Some(path), Some(name)) = (&self.state_file, &self.preferred) else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{name}\n"))?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            warn!("cannot remember the default device in {}: {e}", path.display());
        }
    }

    /// Makes `to` the default and moves the streams that follow the default there.
    pub(super) fn set_default(&mut self, to: usize) {
        if to != self.default {
            info!("default device: '{}' (was '{}')", self.units[to].name, self.units[self.default].name);
            self.default = to;
            self.notify(Target::Master);
        }
        self.move_followers();
    }

    /// Sends every stream that follows the default to the default device.
    fn move_followers(&mut self) {
        let to = self.default;
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            if c.pinned || c.destroying {
                continue;
            }
            let target = c.moving.unwrap_or(c.device);
            if target == to {
                continue;
            }
            if c.direction == shmix_shared::Direction::Capture && self.units[to].capture.is_none() {
                // It keeps recording where it is (or waits there).
                continue;
            }
            if c.stream.is_some() {
                self.start_move(i, to);
            } else {
                self.clients[i].device = to;
            }
        }
    }

    /// Starts moving client `i`'s stream to device `to` (or, while it is on its way already,
    /// changes where it goes).
    fn start_move(&mut self, i: usize, to: usize) {
        let c = &mut self.clients[i];
        let Some(id) = c.stream else {
            c.device = to;
            return;
        };
        if c.moving.is_some() {
            c.moving = Some(to);
            return;
        }
        if c.device == to {
            let pinned = c.pinned;
            let name = self.units[to].name.clone();
            self.control.set_device(id, &name, pinned);
            return;
        }
        c.moving = Some(to);
        let from = c.device;
        debug!("stream {id}: moving from '{}' to '{}'", self.units[from].name, self.units[to].name);
        self.send_cmd(from, Command::Detach(id));
    }

    /// A stream came back from device `from` for a move: attached to the device it goes to,
    /// with its conversion built for it (or dropped, if its client left or closed it meanwhile).
    pub(super) fn detached(&mut self, from: usize, mut s: Box<Stream>) {
        let id = s.id;
        let Some(i) = self.clients.iter().position(|c| c.stream == Some(id)) else {
            // The client left while its stream was on its way.
            self.forget_stream(id);
            debug!("stream {id} dropped after its client left during a move");
            return;
        };
        let c = &mut self.clients[i];
        let mut to = c.moving.take().unwrap_or(from);
        if self.units[to].failed {
            // Its mix thread has ended: the stream stays where it was.
            to = from;
        }
        let (direction, pinned, fd) = (c.direction, c.pinned, c.fd.as_raw_fd());
        if c.destroying {
            c.destroying = false;
            c.stream = None;
            info!("client pid {} ({}): stream {id} closed", c.pid, c.name);
            self.forget_stream(id);
            self.reply(fd, &SocketMsg::StreamDestroyed);
            return;
        }
        // Its conversion for the device it goes to (for the one it left, should that fail: it
        // cannot, for a device that served it).
        let setup = c.spec.filter(|_| !self.units[to].failed);
        let built = setup.and_then(|(spec, params)| {
            let on = |u: usize| conversion(&spec, &params, direction, &self.units[u]).ok().map(|k| (k, u));
            on(to).or_else(|| on(from)).map(|(k, u)| (k, u, params))
        });
        let Some((kind, to, params)) = built else { return self.end_moved_stream(i, id, fd) };
        let d = self.units[to].params_for(direction);
        let (conv, _) = describe(&kind, direction, params.rate, d.rate);
        if s.move_to(kind).is_err() {
            return self.end_moved_stream(i, id, fd);
        }
        s.set_ask(params.period_frames, params.buffer_frames, params.rate, d.rate);
        self.clients[i].device = to;
        let name = self.units[to].name.clone();
        info!("stream {id}: moved from '{}' to '{name}'{conv}", self.units[from].name);
        self.control.set_device(id, &name, pinned);
        self.notify(Target::Stream(id));
        self.send_cmd(to, Command::Add(s));
    }

    /// Client `i`'s stream `id`, detached for a move, cannot go on anywhere (both devices failed;
    /// or what cannot be: no setup, no conversion): it ends, and the client is told why.
    fn end_moved_stream(&mut self, i: usize, id: u32, fd: std::os::fd::RawFd) {
        self.clients[i].stream = None;
        self.forget_stream(id);
        self.disconnect(fd, Some(Disconnect(format!("stream {id}: its device failed during a move"))));
    }

    /// Device `unit`'s playback side vanished (`present` false) or is open again.
    pub(super) fn presence(&mut self, unit: usize, present: bool) {
        self.units[unit].present = present;
        if !present {
            info!("device '{}' vanished; its pinned streams wait for it", self.units[unit].name);
            self.device_gone(unit);
            return;
        }
        info!("device '{}' is back", self.units[unit].name);
        let preferred = self.preferred_unit() == Some(unit);
        if preferred || !self.units[self.default].present {
            self.set_default(unit);
        }
    }

    /// Device `unit` is gone (vanished or failed): if it was the default, the next present
    /// device is; the streams that follow the default leave it.
    pub(super) fn device_gone(&mut self, unit: usize) {
        if unit == self.default {
            let n = self.units.len();
            if let Some(next) = (1..n).map(|k| (unit + k) % n).find(|&k| self.units[k].present) {
                self.set_default(next);
            }
        } else {
            self.move_followers();
        }
    }
}

//! Brings a vanished card back. When the playback device fails with `ENODEV` (unplugged), the
//! mix thread hands the dead device over through a lock-free queue and keeps its streams in a
//! waiting state (nothing is consumed, nothing is lost). This thread closes the dead handle (so
//! the kernel can let go of the old card), then retries opening the device with the request the
//! daemon started with: after 100 ms, backing off to every 500 ms. A device that opens with the
//! same parameters and channel map is handed back and the mix thread restarts it; one that comes
//! back different is closed again (the streams' pipelines were built for the old one) and the
//! wait goes on. `stop` ends the thread at once, wherever it waits.
//! Runs on its own thread ("shmix-reopen"). RT: no (opening a device allocates and may block).

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use log::{info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rtrb::{Consumer, Producer, RingBuffer};
use shmix_shared::chmap::ChannelMap;
use shmix_shared::AudioParams;

use crate::io::device::{Device, Request};
use shmix_shared::eventfd::EventFd;

/// First retry delay after the device vanished.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest delay between two retries.
pub const MAX_RETRY: Duration = Duration::from_millis(500);

/// The mix thread's end: hand over a dead device, take a reopened one. RT: yes (queue push/pop
/// and eventfd writes only).
#[derive(Debug)]
pub struct MixEnd {
    lost: Producer<Box<Device>>,
    found: Consumer<Box<Device>>,
    lost_efd: EventFd,
    found_efd: EventFd,
}

impl MixEnd {
    /// Hands the dead device to the reopen thread (which closes it and starts retrying).
    /// Returns it back if the queue is full (cannot happen: one device is out at a time).
    ///
    /// # Errors
    /// The device, when the queue is full.
    pub fn lost(&mut self, dev: Box<Device>) -> Result<(), Box<Device>> {
        self.lost.push(dev).map_err(|rtrb::PushError::Full(d)| d)?;
        self.lost_efd.signal();
        Ok(())
    }

    /// The eventfd that turns readable when a reopened device is waiting.
    #[must_use]
    pub fn found_fd(&self) -> i32 {
        self.found_efd.as_raw_fd()
    }

    /// Takes the reopened device, if one is waiting (resets the eventfd).
    pub fn take_found(&mut self) -> Option<Box<Device>> {
        self.found_efd.drain();
        self.found.pop().ok()
    }
}

/// Ends the reopen thread (control thread, at shutdown).
#[derive(Debug)]
pub struct Stop(EventFd);

impl Stop {
    /// Wakes the reopen thread for good: it returns from wherever it waits.
    pub fn stop(&self) {
        self.0.signal();
    }
}

/// The reopen thread's state.
#[derive(Debug)]
pub struct Reopener {
    name: String,
    req: Request,
    params: AudioParams,
    chmap: ChannelMap,
    lost: Consumer<Box<Device>>,
    found: Producer<Box<Device>>,
    lost_efd: EventFd,
    found_efd: EventFd,
    stop_efd: EventFd,
    /// `--wait-for-device` and the device did not open at startup: wait for it first.
    absent: bool,
}

/// "S16_LE 48000 Hz 2 ch [3, 4], period 256, buffer 1024".
fn describe(p: AudioParams, chmap: ChannelMap) -> String {
    format!(
        "{} {} Hz {} ch {:?}, period {}, buffer {}",
        p.format,
        p.rate,
        p.channels,
        chmap.positions(),
        p.period_frames,
        p.buffer_frames
    )
}

fn eventfd() -> anyhow::Result<EventFd> {
    EventFd::new().context("eventfd")
}

/// Makes both ends and the stop handle for a device opened as `name` with `req` that settled on
/// `params` and `chmap` (what a reopened device must match).
///
/// # Errors
/// An eventfd could not be made.
pub fn link(
    name: &str,
    req: Request,
    params: AudioParams,
    chmap: ChannelMap,
) -> anyhow::Result<(MixEnd, Reopener, Stop)> {
    let (lost_tx, lost_rx) = RingBuffer::new(2);
    let (found_tx, found_rx) = RingBuffer::new(2);
    let lost_efd = eventfd()?;
    let found_efd = eventfd()?;
    let stop_efd = eventfd()?;
    let mix =
        MixEnd { lost: lost_tx, found: found_rx, lost_efd: lost_efd.try_clone()?, found_efd: found_efd.try_clone()? };
    let stop = Stop(stop_efd.try_clone()?);
    let re = Reopener {
        name: name.to_owned(),
        req,
        params,
        chmap,
        lost: lost_rx,
        found: found_tx,
        lost_efd,
        found_efd,
        stop_efd,
        absent: false,
    };
    Ok((mix, re, stop))
}

impl Reopener {
    /// Waits for `timeout` (forever with `None`) on the stop eventfd and, with `lost`, on the
    /// lost-device one. True when stopped.
    fn wait(&self, timeout: Option<Duration>, lost: bool) -> bool {
        let mut fds = vec![PollFd::new(self.stop_efd.as_fd(), PollFlags::POLLIN)];
        if lost {
            fds.push(PollFd::new(self.lost_efd.as_fd(), PollFlags::POLLIN));
        }
        let t = match timeout {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
        };
        // EINTR or an error: look again (the caller loops).
        let _ = poll(&mut fds, t);
        fds[0].revents().is_some_and(|r| !r.is_empty())
    }

    /// The device could not be opened at startup (`--wait-for-device`): [`Reopener::run`]
    /// starts by retrying to open it, as after a loss (the mix thread starts without one).
    #[must_use]
    pub fn absent_at_start(mut self) -> Self {
        self.absent = true;
        self
    }

    /// Serves until [`Stop::stop`].
    pub fn run(mut self) {
        if self.absent && !self.bring_back() {
            return;
        }
        loop {
            if self.wait(None, true) {
                return;
            }
            self.lost_efd.drain();
            while let Ok(dead) = self.lost.pop() {
                drop(dead);
                if !self.bring_back() {
                    return;
                }
            }
        }
    }

    /// Retries until the device is back (true) or the thread is stopped (false).
    fn bring_back(&mut self) -> bool {
        let since = Instant::now();
        warn!(
            "device '{}' {}: clients wait (their streams hold still); retrying to open it every {}-{} ms",
            self.name,
            if self.absent { "is absent at startup" } else { "vanished" },
            FIRST_RETRY.as_millis(),
            MAX_RETRY.as_millis()
        );
        let mut delay = FIRST_RETRY;
        let mut attempts = 0u64;
        let mut last_error = String::new();
        loop {
            if self.wait(Some(delay), false) {
                info!("device '{}' still gone at shutdown ({attempts} attempts to reopen it)", self.name);
                return false;
            }
            delay = (delay * 2).min(MAX_RETRY);
            attempts += 1;
            let why = match Device::open(&self.name, &self.req) {
                Ok(dev) if dev.params() == self.params && dev.chmap() == self.chmap => {
                    info!(
                        "device '{}' is back after {:.1} s ({attempts} attempts): reopened with the same setup, streams \
                         continue",
                        self.name,
                        since.elapsed().as_secs_f64()
                    );
                    self.absent = false;
                    if let Err(rtrb::PushError::Full(dev)) = self.found.push(Box::new(dev)) {
                        // Cannot happen (one device is out at a time); close it and retry.
                        drop(dev);
                        continue;
                    }
                    self.found_efd.signal();
                    return true;
                }
                Ok(dev) => format!(
                    "it came back as {}, not the {} its streams were set up for",
                    describe(dev.params(), dev.chmap()),
                    describe(self.params, self.chmap)
                ),
                Err(e) => e.to_string(),
            };
            if why != last_error {
                info!("device '{}' cannot be reopened yet: {why}", self.name);
                last_error = why;
            }
        }
    }
}

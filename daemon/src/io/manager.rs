//! The device manager: opens, reopens and closes the card's playback and capture devices for the
//! mix thread, which must not (alsa-lib allocates, and an open may block). The mix thread asks
//! through a lock-free queue and an eventfd ([`Ask`]); the manager answers the same way
//! ([`Answer`]). Both directions are handled alike:
//! - `Open`: one attempt now (the capture side when the first recorder starts), answered
//!   `Opened` or `Failed`;
//! - `Reopen`: the side vanished (`ENODEV`) or is absent: the dead handle is closed (so the
//!   kernel can let go of the old card) and the side is retried with the request the daemon
//!   started with, after 100 ms, then 200, 400, and every 500 ms, until it opens with the
//!   parameters and channel map its streams were built for (one that comes back different is
//!   closed again and the wait goes on); then `Opened`. Its streams wait meanwhile;
//! - `Cancel`: a retry no one waits for any more ends with `Failed`;
//! - `Close`: the last recorder left.
//!
//! Every `Open` and `Reopen` gets exactly one answer. [`Stop::stop`] ends the thread at once,
//! wherever it waits.
//! Runs on its own thread ("shmix-devices"). RT: no; its mix-thread end ([`MixEnd`]) is RT: yes
//! (queue push/pop and eventfd writes only).

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use log::{error, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rtrb::{Consumer, Producer, RingBuffer};
use shmix_shared::chmap::ChannelMap;
use shmix_shared::eventfd::EventFd;
use shmix_shared::{AudioParams, Direction};

use crate::io::device::{Device, OpenError, Request};

/// First retry delay after a side vanished.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest delay between two retries.
pub const MAX_RETRY: Duration = Duration::from_millis(500);
/// Capacity of both queues: per direction at most one `Open`/`Reopen`, one `Cancel` and one
/// `Close` are out at a time (the mix thread asks again only after the answer).
const QUEUE_CAPACITY: usize = 16;

/// Mix thread -> manager.
#[derive(Debug)]
pub enum Ask {
    /// Open this side once, now. `quiet`: a failure is expected (the card is gone), not worth
    /// an error line.
    Open {
        /// Which side.
        dir: Direction,
        /// No error line on failure.
        quiet: bool,
    },
    /// This side vanished (with its dead handle) or is not there: retry until it is back.
    Reopen(Direction, Option<Box<Device>>),
    /// Stop retrying this side (its last stream left).
    Cancel(Direction),
    /// Close this device.
    Close(Box<Device>),
}

/// Manager -> mix thread.
#[derive(Debug)]
pub enum Answer {
    /// The side asked for, open with the setup its streams were built for (not started).
    Opened(Box<Device>),
    /// An `Open` that failed, or a cancelled `Reopen`.
    Failed(Direction),
}

/// What one side is opened with and must settle on.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The PCM name.
    pub name: String,
    /// The request it is opened with.
    pub req: Request,
    /// The parameters its streams were built for.
    pub params: AudioParams,
    /// The channel map its streams were built for.
    pub chmap: ChannelMap,
}

/// The mix thread's end. RT: yes (queue push/pop and eventfd writes only).
#[derive(Debug)]
pub struct MixEnd {
    asks: Producer<Ask>,
    answers: Consumer<Answer>,
    ask_efd: EventFd,
    answer_efd: EventFd,
}

impl MixEnd {
    /// Hands `ask` to the manager.
    ///
    /// # Errors
    /// The ask, when the queue is full (see `QUEUE_CAPACITY`: it cannot be).
    pub fn ask(&mut self, ask: Ask) -> Result<(), Ask> {
        self.asks.push(ask).map_err(|rtrb::PushError::Full(a)| a)?;
        self.ask_efd.signal();
        Ok(())
    }

    /// The eventfd that turns readable when an answer is waiting.
    #[must_use]
    pub fn answer_fd(&self) -> i32 {
        self.answer_efd.as_raw_fd()
    }

    /// Resets the answer eventfd (before taking the answers).
    pub fn drain(&self) {
        self.answer_efd.drain();
    }

    /// The next answer, if one is waiting.
    pub fn answer(&mut self) -> Option<Answer> {
        self.answers.pop().ok()
    }
}

/// Ends the manager thread (main thread, at shutdown).
#[derive(Debug)]
pub struct Stop(EventFd);

impl Stop {
    /// Wakes the manager for good: it returns from wherever it waits.
    pub fn stop(&self) {
        self.0.signal();
    }
}

/// A side being retried.
#[derive(Debug)]
struct Retry {
    since: Instant,
    due: Instant,
    delay: Duration,
    attempts: u64,
    last_error: String,
}

/// One direction as the manager holds it.
#[derive(Debug)]
struct Side {
    dir: Direction,
    /// `None`: the device has no such side (capture refused at startup).
    setup: Option<Setup>,
    retry: Option<Retry>,
}

/// Why an open did not give a usable device.
enum Miss {
    Open(OpenError),
    /// It opened with another setup (and was closed again).
    Setup(AudioParams, ChannelMap),
    Absent,
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

impl Side {
    /// "device" / "capture device", in log lines.
    fn what(&self) -> &'static str {
        if self.dir == Direction::Capture {
            "capture device"
        } else {
            "device"
        }
    }

    fn name(&self) -> &str {
        self.setup.as_ref().map_or("", |s| s.name.as_str())
    }

    fn open(&self) -> Result<Device, Miss> {
        let Some(s) = &self.setup else { return Err(Miss::Absent) };
        let dev = if self.dir == Direction::Capture {
            Device::open_capture(&s.name, &s.req)
        } else {
            Device::open(&s.name, &s.req)
        }
        .map_err(Miss::Open)?;
        // Streams were converted for the format, rate and layout; with timer scheduling the
        // period and buffer are the device's business (fixed timing was promised its period).
        let (got, want) = (dev.params(), s.params);
        let same = if s.req.timer_buffer_ms.is_some() {
            (got.format, got.rate, got.channels) == (want.format, want.rate, want.channels)
        } else {
            got == want
        };
        if !same || dev.chmap() != s.chmap {
            return Err(Miss::Setup(dev.params(), dev.chmap()));
        }
        Ok(dev)
    }

    /// The reason a retry failed, for the log.
    fn why(&self, miss: Miss) -> String {
        match (miss, &self.setup) {
            (Miss::Setup(p, m), Some(s)) => format!(
                "it came back as {}, not the {} its streams were set up for",
                describe(p, m),
                describe(s.params, s.chmap)
            ),
            (Miss::Open(e), _) => e.to_string(),
            _ => "no such side".into(),
        }
    }

    fn start_retry(&mut self, how: &str) {
        if self.retry.is_some() {
            return;
        }
        let who = if self.dir == Direction::Capture { "recorders" } else { "clients" };
        warn!(
            "{} '{}' {how}: {who} wait (their streams hold still); retrying to open it every {}-{} ms",
            self.what(),
            self.name(),
            FIRST_RETRY.as_millis(),
            MAX_RETRY.as_millis()
        );
        let now = Instant::now();
        self.retry = Some(Retry {
            since: now,
            due: now + FIRST_RETRY,
            delay: FIRST_RETRY,
            attempts: 0,
            last_error: String::new(),
        });
    }
}

/// The manager thread's state.
#[derive(Debug)]
pub struct Manager {
    /// Playback, capture.
    sides: [Side; 2],
    asks: Consumer<Ask>,
    answers: Producer<Answer>,
    ask_efd: EventFd,
    answer_efd: EventFd,
    stop_efd: EventFd,
}

fn eventfd() -> anyhow::Result<EventFd> {
    EventFd::new().context("eventfd")
}

/// Makes the mix thread's end, the manager and its stop handle for the playback side `playback`
/// and the capture side `capture` (`None`: the device has none).
///
/// # Errors
/// An eventfd could not be made.
pub fn link(playback: Setup, capture: Option<Setup>) -> anyhow::Result<(MixEnd, Manager, Stop)> {
    let (ask_tx, ask_rx) = RingBuffer::new(QUEUE_CAPACITY);
    let (answer_tx, answer_rx) = RingBuffer::new(QUEUE_CAPACITY);
    let ask_efd = eventfd()?;
    let answer_efd = eventfd()?;
    let stop_efd = eventfd()?;
    let mix =
        MixEnd { asks: ask_tx, answers: answer_rx, ask_efd: ask_efd.try_clone()?, answer_efd: answer_efd.try_clone()? };
    let stop = Stop(stop_efd.try_clone()?);
    let mgr = Manager {
        sides: [
            Side { dir: Direction::Playback, setup: Some(playback), retry: None },
            Side { dir: Direction::Capture, setup: capture, retry: None },
        ],
        asks: ask_rx,
        answers: answer_tx,
        ask_efd,
        answer_efd,
        stop_efd,
    };
    Ok((mix, mgr, stop))
}

/// Playback 0, capture 1 (a monitor stream has no device of its own).
fn index(dir: Direction) -> usize {
    usize::from(dir == Direction::Capture)
}

impl Manager {
    /// The playback side could not be opened at startup (`--wait-for-device`): it is retried
    /// from the start, as after a loss (the mix thread starts without it).
    #[must_use]
    pub fn absent_at_start(mut self) -> Self {
        self.sides[0].start_retry("is absent at startup");
        self
    }

    /// Waits on the stop and ask eventfds until `due` (forever with `None`). True when stopped.
    fn wait(&self, due: Option<Instant>) -> bool {
        let mut fds = [
            PollFd::new(self.stop_efd.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.ask_efd.as_fd(), PollFlags::POLLIN),
        ];
        let t = match due {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d.saturating_duration_since(Instant::now())).unwrap_or(PollTimeout::MAX),
        };
        // EINTR or an error: look again (the caller loops).
        let _ = poll(&mut fds, t);
        fds[0].revents().is_some_and(|r| !r.is_empty())
    }

    /// Serves until [`Stop::stop`].
    pub fn run(mut self) {
        loop {
            let due = self.sides.iter().filter_map(|s| s.retry.as_ref().map(|r| r.due)).min();
            if self.wait(due) {
                for s in &self.sides {
                    if let Some(r) = &s.retry {
                        info!(
                            "{} '{}' still gone at shutdown ({} attempts to reopen it)",
                            s.what(),
                            s.name(),
                            r.attempts
                        );
                    }
                }
                return;
            }
            self.ask_efd.drain();
            while let Ok(ask) = self.asks.pop() {
                self.handle(ask);
            }
            let now = Instant::now();
            for i in 0..self.sides.len() {
                if self.sides[i].retry.as_ref().is_some_and(|r| r.due <= now) {
                    self.attempt(i);
                }
            }
        }
    }

    fn answer(&mut self, a: Answer) -> Result<(), Answer> {
        self.answers.push(a).map_err(|rtrb::PushError::Full(a)| a)?;
        self.answer_efd.signal();
        Ok(())
    }

    fn handle(&mut self, ask: Ask) {
        match ask {
            Ask::Open { dir, quiet } => self.open_once(dir, quiet),
            Ask::Reopen(dir, dead) => {
                let lost = dead.is_some();
                drop(dead);
                self.sides[index(dir)].start_retry(if lost { "vanished" } else { "is absent" });
            }
            Ask::Cancel(dir) => {
                if self.sides[index(dir)].retry.take().is_some() {
                    // Cannot fail (see QUEUE_CAPACITY); no one waits for it any more anyway.
                    let _ = self.answer(Answer::Failed(dir));
                }
            }
            Ask::Close(dev) => {
                let s = &self.sides[index(if dev.is_capture() { Direction::Capture } else { Direction::Playback })];
                info!("{} '{}' closed", s.what(), dev.name());
                drop(dev);
            }
        }
    }

    fn open_once(&mut self, dir: Direction, quiet: bool) {
        let s = &self.sides[index(dir)];
        let side = if dir == Direction::Capture { "capture side" } else { "playback side" };
        let a = match s.open() {
            Ok(dev) => {
                let p = dev.params();
                info!(
                    "{} '{}' opened: {} {} Hz {} ch, period {} buffer {}",
                    s.what(),
                    s.name(),
                    p.format,
                    p.rate,
                    p.channels,
                    p.period_frames,
                    p.buffer_frames
                );
                Answer::Opened(Box::new(dev))
            }
            Err(Miss::Setup(got, _)) => {
                // Its streams were converted for the setup probed at startup.
                if let (false, Some(want)) = (quiet, s.setup.as_ref().map(|s| s.params)) {
                    error!(
                        "the {side} of '{}' opened with another setup than probed at startup ({got:?}, not {want:?})",
                        s.name()
                    );
                }
                Answer::Failed(dir)
            }
            Err(Miss::Open(e)) => {
                if !quiet {
                    error!("opening the {side} of '{}': {e}", s.name());
                }
                Answer::Failed(dir)
            }
            Err(Miss::Absent) => Answer::Failed(dir),
        };
        // Cannot fail (see QUEUE_CAPACITY); the device, if any, is closed.
        let _ = self.answer(a);
    }

    /// One retry of side `i`, due now.
    fn attempt(&mut self, i: usize) {
        let s = &mut self.sides[i];
        let Some(mut r) = s.retry.take() else { return };
        r.delay = (r.delay * 2).min(MAX_RETRY);
        r.attempts += 1;
        match s.open() {
            Ok(dev) => {
                info!(
                    "{} '{}' is back after {:.1} s ({} attempts): reopened with the same setup, {} continue",
                    s.what(),
                    s.name(),
                    r.since.elapsed().as_secs_f64(),
                    r.attempts,
                    if s.dir == Direction::Capture { "recorders" } else { "streams" }
                );
                if let Err(Answer::Opened(dev)) = self.answer(Answer::Opened(Box::new(dev))) {
                    // Cannot happen (see QUEUE_CAPACITY): close it and retry.
                    drop(dev);
                    self.sides[i].retry = Some(Retry { due: Instant::now() + r.delay, ..r });
                }
            }
            Err(miss) => {
                let why = s.why(miss);
                if why != r.last_error {
                    info!("{} '{}' cannot be reopened yet: {why}", s.what(), s.name());
                    r.last_error = why;
                }
                r.due = Instant::now() + r.delay;
                s.retry = Some(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmix_shared::SampleFormat;

    /// A setup that every open refuses before alsa-lib is asked (the shmix plugin itself).
    fn refused() -> Setup {
        Setup {
            name: "shmix".into(),
            req: Request {
                format: None,
                rate: None,
                channels: None,
                period_frames: 256,
                periods: 4,
                timer_buffer_ms: None,
            },
            params: AudioParams {
                format: SampleFormat::S16Le,
                rate: 48_000,
                channels: 2,
                period_frames: 256,
                buffer_frames: 1024,
            },
            chmap: ChannelMap::standard(2),
        }
    }

    /// Waits up to 5 s for the next answer.
    fn next(mix: &mut MixEnd) -> Answer {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(a) = mix.answer() {
                return a;
            }
            assert!(Instant::now() < until, "no answer from the manager");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn every_open_and_reopen_is_answered_once_and_stop_ends_the_thread() {
        let (mut mix, mgr, stop) = link(refused(), None).unwrap();
        let t = std::thread::spawn(move || mgr.run());
        mix.ask(Ask::Open { dir: Direction::Playback, quiet: true }).unwrap();
        assert!(matches!(next(&mut mix), Answer::Failed(Direction::Playback)));
        mix.ask(Ask::Open { dir: Direction::Capture, quiet: false }).unwrap();
        assert!(matches!(next(&mut mix), Answer::Failed(Direction::Capture)));
        // A side being retried answers only once it is back, or when cancelled.
        mix.ask(Ask::Reopen(Direction::Playback, None)).unwrap();
        std::thread::sleep(FIRST_RETRY * 3);
        assert!(mix.answer().is_none());
        mix.ask(Ask::Cancel(Direction::Playback)).unwrap();
        assert!(matches!(next(&mut mix), Answer::Failed(Direction::Playback)));
        // Nothing to cancel: no answer.
        mix.ask(Ask::Cancel(Direction::Capture)).unwrap();
        mix.ask(Ask::Reopen(Direction::Playback, None)).unwrap();
        let asked = Instant::now();
        stop.stop();
        t.join().unwrap();
        assert!(asked.elapsed() < Duration::from_secs(1), "the manager took {:?} to stop", asked.elapsed());
        assert!(mix.answer().is_none());
    }
}

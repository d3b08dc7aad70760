//! One shmix PCM, playback or capture: its state (here), and in parts: `lifecycle` (setup,
//! start/stop/pause/prepare/reset/drain), `records` (the control records both ways),
//! `transfer` (the data path and the hardware pointer), `timing` (delay), `readiness` (poll and
//! the wake mirror). One code path for both directions: `capture` decides which audio cursor is
//! ours (playback: `audio_write`, we produce; capture and monitor: `audio_read`, we consume) and
//! which one the daemon moves. Plain Rust: `ioplug.rs` translates alsa-lib's callbacks into these
//! methods (under this PCM's mutex). Runs in the host program's calling thread(s).
//! RT: `transfer`, `pointer`, `revents`, `delay` yes (no allocation, no syscall in steady state
//! except the one wake read per period and clock_gettime through the vDSO).

mod lifecycle;
mod readiness;
mod records;
mod timing;
mod transfer;

pub use timing::{mmap_skip, now_ns};

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shmix_shared::msg::AudioParams;
use shmix_shared::shm::{AudioHalf, RecordReceiver, RecordSender, StreamShm};
use shmix_shared::wake::Sleeper;
use shmix_shared::{ChannelMap, ResampleQuality, WakeFd};

use crate::conn::Conn;
use crate::Errno;

/// How long `prepare` waits for the daemon to confirm a `Stop`.
pub const STOP_WAIT: Duration = Duration::from_secs(1);
/// Margin added to a drain's expected duration.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(1);
/// While the daemon says the device is gone (`DEVICE_WAITING`), a drain's deadline moves on with
/// the clock (that time does not count), for at most this long in all: a card replugged within
/// it plays the drain's end; one gone for longer ends the drain with ETIMEDOUT (a program at its
/// end does not hang for good; a dead daemon ends it at once anyway).
pub const DRAIN_GONE_MAX: Duration = Duration::from_secs(60);
/// Longest single wait of a drain: how often it looks at the daemon's device-waiting flag.
const DRAIN_RECHECK: Duration = Duration::from_millis(200);

/// Frame counters, reported at close under `SHMIX_DEBUG=1`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Frames copied between the application's buffer and shared memory (either direction).
    pub copied_frames: u64,
    /// Frames the application wrote into / read out of shared memory directly (mmap, published
    /// only).
    pub zero_copy_frames: u64,
    /// Xruns the daemon reported.
    pub xruns: u64,
}

/// What the stream is doing, as the plugin sees it: alsa-lib's state, with what only makes sense
/// in one of them. (What the daemon side is doing is [`Daemon`]: it moves on its own records, so
/// it is not a function of this one; e.g. a capture stream reset while paused is `Paused` with
/// the daemon side stopped.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Set up, not prepared (after hw_params or a drop).
    Setup,
    /// Prepared, not started.
    Prepared,
    /// Started.
    Running,
    /// Paused.
    Paused,
    /// Playback reset while running or paused: the daemon side was stopped and the queue
    /// discarded; `Start` goes out with the first frames written afterwards (running), at resume
    /// (paused), or at a drain.
    Restarting { paused: bool },
    /// Draining (snd_pcm_drain).
    Draining(Drain),
    /// The daemon reported an xrun: pointer and delay say EPIPE and poll POLLERR until prepare.
    /// `dropped`: stopped since (or before) it, so the channel map may change (set up or
    /// prepared); `drain`: a drain begun since (it restarts the daemon side, then reports EPIPE).
    Xrun { dropped: bool, drain: Drain },
}

/// A drain's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Drain {
    /// Our `Drain{seq}` while a drain waits for its answer (None: not posted, or the drain
    /// returned).
    seq: Option<u32>,
    /// The daemon answered `Drained{seq}`: it played everything and stopped.
    drained: bool,
}

/// The daemon side of the stream, as our records and its answers tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    /// Stopped: never started, or `Stopped`, `Drained` or `Xrun` came since the last start.
    Idle,
    /// It may be consuming or producing (`Start`, `Resume` or `Drain` went out).
    Active,
    /// `Stop{seq}` went out, its `Stopped{seq}` has not come yet (prepare waits for it).
    Stopping { seq: u32 },
    /// Started again while `Stop{seq}` was unconfirmed (a reset whose wait for `Stopped` timed
    /// out, then a start or a drain): active, but until `Stopped{seq}` comes an `Xrun` is stale
    /// and no second `Stop` goes out; prepare still waits for it.
    Restarted { stop_seq: u32 },
}

impl Daemon {
    /// `Start` went out (or `Resume`).
    fn started(self) -> Self {
        match self {
            Daemon::Stopping { seq } | Daemon::Restarted { stop_seq: seq } => Daemon::Restarted { stop_seq: seq },
            Daemon::Idle | Daemon::Active => Daemon::Active,
        }
    }

    /// It may be consuming or producing.
    fn active(self) -> bool {
        matches!(self, Daemon::Active | Daemon::Restarted { .. })
    }

    /// The `Stop` it has not confirmed yet.
    fn stop_seq(self) -> Option<u32> {
        match self {
            Daemon::Stopping { seq } | Daemon::Restarted { stop_seq: seq } => Some(seq),
            Daemon::Idle | Daemon::Active => None,
        }
    }
}

impl State {
    /// The state after an `Xrun` record from the daemon.
    fn after_xrun(self) -> Self {
        match self {
            State::Setup | State::Prepared => State::Xrun { dropped: true, drain: Drain::default() },
            State::Draining(drain) => State::Xrun { dropped: false, drain },
            State::Xrun { .. } => self,
            State::Running | State::Paused | State::Restarting { .. } => {
                State::Xrun { dropped: false, drain: Drain::default() }
            }
        }
    }

    /// The drain in progress, if any.
    fn drain(self) -> Option<Drain> {
        match self {
            State::Draining(drain) | State::Xrun { drain, .. } => Some(drain),
            _ => None,
        }
    }

    /// The `Drain` record a drain waits for.
    fn drain_seq(self) -> Option<u32> {
        self.drain().and_then(|d| d.seq)
    }

    /// Started, as delay sees it (a timing snapshot of this run can exist).
    fn started(self) -> bool {
        matches!(self, State::Running | State::Paused | State::Restarting { .. } | State::Draining(_))
    }

    /// Paused, as delay sees it (the clock does not count).
    fn paused(self) -> bool {
        matches!(self, State::Paused | State::Restarting { paused: true })
    }

    /// Where poll answers from the ring's fill (prepared or running).
    fn flowing(self) -> bool {
        matches!(self, State::Prepared | State::Running | State::Restarting { paused: false })
    }
}

/// Where `transfer`'s frames are.
#[derive(Debug)]
pub enum Source<'a> {
    /// Already in the ring where they belong (an mmap client writes or reads through the
    /// re-pointed areas).
    InPlace,
    /// Playback: interleaved frames to copy into the ring.
    Frames(&'a [u8]),
    /// Capture: room for interleaved frames to copy out of the ring.
    Dest(&'a mut [u8]),
}

#[derive(Debug)]
struct Stream {
    /// The mapping, for what we read (the daemon's cursors, timing) and alsa-lib's mmap areas.
    shm: Arc<StreamShm>,
    /// Ours of the audio ring: the writer for playback, the reader for capture and monitor.
    audio: AudioHalf,
    params: AudioParams,
    /// Records to the daemon (we produce).
    c2d: RecordSender,
    /// Records from the daemon (we consume).
    d2c: RecordReceiver,
    d2c_pos: u32,
    seq: u32,
    /// Frames produced since prepare (ours for playback, the daemon's for capture).
    write_total: u64,
    /// Frames consumed since prepare (the daemon's for playback, ours for capture).
    read_total: u64,
    /// Our last view of the daemon's published cursor (`audio_read` / `audio_write`).
    peer_seen: u32,
    state: State,
    daemon: Daemon,
    started_ns: u64,
    /// Last delay reported and the write position then (delay never grows between writes).
    last_delay: Option<(i64, u64)>,
    /// The PCM's copy counters when this stream was created (the stream publishes its share).
    counters_base: Counters,
    /// The last position `pointer` returned (alsa-lib's `hw_ptr` equals it until a
    /// `snd_pcm_reset` zeroes it behind our back).
    reported_hw: u64,
    /// The last timing snapshot read whole. `read_timing` gives up when the daemon is inside
    /// its write on every try, which happens when the daemon thread is preempted there (a loaded
    /// machine, no real-time priority): the last snapshot, extrapolated, is still right, while
    /// falling back to the ring's fill would leave out the device's queue (up to its buffer).
    last_snapshot: Option<(u32, u32, u64)>,
}

/// One PCM handle's state. Lives behind a mutex in `ioplug.rs`.
#[derive(Debug)]
pub struct Pcm {
    conn: Conn,
    /// Capture or monitor: the daemon produces, we consume (`audio_read` is ours).
    capture: bool,
    /// The access is MMAP_INTERLEAVED (set at prepare).
    mmap: bool,
    /// alsa-lib's mmap areas point at the ring (set at prepare).
    in_place: bool,
    /// Polled by the program: readable while the stream is ready (the readiness mirror).
    client_wake: WakeFd,
    /// The other end of `client_wake`: the daemon signals it (it gets a copy at each
    /// CreateStream), and so do we to make `client_wake` readable ourselves.
    client_wake_peer: WakeFd,
    /// We signal it when we posted a record while the daemon sleeps.
    daemon_wake: WakeFd,
    /// The other end of `daemon_wake`, handed to the daemon at each CreateStream.
    daemon_wake_peer: WakeFd,
    debug: bool,
    /// Sent in every `CreateStream` (the `resample_quality` key).
    quality: ResampleQuality,
    /// The map set by `set_chmap` for the current channel count (None: the standard one).
    chmap: Option<ChannelMap>,
    stream: Option<Stream>,
    counters: Counters,
    boundary: u64,
    avail_min: u32,
    /// Set once the daemon is gone or reported `Fatal` (positive errno).
    dead: Option<i32>,
    /// The sleeper's side of the wake protocol: `client_wake`'s readiness mirror.
    sleeper: Sleeper,
    /// The process generation this PCM was opened in ([`crate::fork`]).
    born: u32,
}

impl Pcm {
    /// A PCM on a connected daemon. Creates the two wake channels that every stream of this
    /// handle uses (so poll descriptors stay valid across hw_params).
    ///
    /// # Errors
    /// socketpair failed.
    pub fn new(conn: Conn, debug: bool, quality: ResampleQuality, capture: bool) -> Result<Self, Errno> {
        let errno = |e: std::io::Error| Errno(e.raw_os_error().unwrap_or(libc::EIO));
        let (client_wake, client_wake_peer) = WakeFd::pair().map_err(errno)?;
        let (daemon_wake, daemon_wake_peer) = WakeFd::pair().map_err(errno)?;
        Ok(Self {
            conn,
            capture,
            mmap: false,
            in_place: false,
            client_wake,
            client_wake_peer,
            daemon_wake,
            daemon_wake_peer,
            debug,
            quality,
            chmap: None,
            stream: None,
            counters: Counters::default(),
            boundary: 0,
            avail_min: 1,
            dead: None,
            sleeper: Sleeper::default(),
            born: crate::fork::generation(),
        })
    }

    /// Locks `m`; in a forked child, orphans the PCM first and refuses (see [`crate::fork`]).
    ///
    /// # Errors
    /// `EIO` for a poisoned mutex, `EBADFD` in a forked child.
    #[inline]
    pub fn lock(m: &Mutex<Pcm>) -> Result<MutexGuard<'_, Pcm>, Errno> {
        let mut p = m.lock().map_err(|_| Errno(libc::EIO))?;
        if p.born != crate::fork::generation() {
            p.orphan();
            return Err(Errno(libc::EBADFD));
        }
        Ok(p)
    }

    /// In a forked child: never touches the parent's stream again. The shared memory is
    /// replaced by private memory at the same address (alsa-lib's mmap areas may point into it),
    /// and the PCM counts as dead, so no record, wake or socket message goes out.
    #[cold]
    fn orphan(&mut self) {
        if self.dead == Some(libc::EBADFD) {
            return;
        }
        self.dead = Some(libc::EBADFD);
        if let Some(s) = &self.stream {
            if let Err(e) = s.shm.detach() {
                // Cannot detach: drop the mapping instead (the program's mmap pointers then
                // fault rather than write into the parent's stream).
                self.debug_line(format_args!("forked child: cannot detach the stream memory: {e}"));
                self.stream = None;
            }
        }
        self.debug_line(format_args!("forked child: this PCM belongs to the parent; closed here only"));
    }

    /// Whether `SHMIX_DEBUG` is on.
    #[must_use]
    pub fn debug(&self) -> bool {
        self.debug
    }

    /// The poll descriptors: `client_wake` and the control socket, both POLLIN.
    #[must_use]
    pub fn poll_fds(&self) -> [RawFd; 2] {
        [self.client_wake.as_raw_fd(), self.conn.raw_fd()]
    }

    /// Whether this is a capture (or monitor) PCM.
    #[must_use]
    pub fn is_capture(&self) -> bool {
        self.capture
    }

    /// prepare: the access in use and whether alsa-lib's mmap areas now point at the ring.
    pub fn set_access(&mut self, mmap: bool, in_place: bool) {
        self.mmap = mmap;
        self.in_place = mmap && in_place;
    }

    /// Whether the daemon is known to be gone (or the stream dead).
    #[must_use]
    pub fn dead(&self) -> Option<i32> {
        self.dead
    }

    /// Whether the daemon reported an xrun that the next prepare has not cleared yet.
    pub fn in_xrun(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| matches!(s.state, State::Xrun { .. }))
    }

    /// The audio ring's base address and length in bytes, if a stream exists (for re-pointing
    /// mmap areas and for refusing sources that overlap it).
    #[must_use]
    pub fn ring_region(&self) -> Option<(*mut u8, usize)> {
        self.stream.as_ref().map(|s| (s.shm.audio_ptr(), s.shm.layout().audio_bytes as usize))
    }

    /// Bytes per frame of the stream, if one exists.
    #[must_use]
    pub fn frame_bytes(&self) -> Option<u32> {
        self.stream.as_ref().map(|s| s.params.frame_bytes())
    }

    fn check_alive(&self) -> Result<(), Errno> {
        match self.dead {
            Some(e) => Err(Errno(e)),
            None => Ok(()),
        }
    }

    fn debug_line(&self, args: std::fmt::Arguments<'_>) {
        if self.debug {
            eprintln!("shmix: {args}");
        }
    }

    /// Close: the counters line under `SHMIX_DEBUG`. Everything else closes on drop (closing the
    /// socket destroys the stream on the daemon side).
    pub fn close(&self) {
        let c = self.counters;
        self.debug_line(format_args!(
            "frames copied {}, zero-copy {}, xruns {}",
            c.copied_frames, c.zero_copy_frames, c.xruns
        ));
    }
}

/// `x % boundary` (`boundary > 0`) without a division when `x` is below twice the boundary,
/// which the callers' values are (counts since prepare, sums of two wrapped values).
#[inline]
fn wrap(x: u64, boundary: u64) -> u64 {
    if x < boundary {
        x
    } else if x - boundary < boundary {
        x - boundary
    } else {
        x % boundary
    }
}

/// `poll` on two descriptors for POLLIN, at most `left`; returns each one's revents (EINTR and
/// timeouts return zeros).
fn poll_two(fds: [RawFd; 2], left: Duration) -> [i16; 2] {
    let mut pfds = fds.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: `pfds` is a valid array of 2 pollfds that outlives the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
    if n <= 0 {
        return [0, 0];
    }
    [pfds[0].revents, pfds[1].revents]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_is_modulo() {
        for b in [1u64, 2, 3, 1024, 1 << 62, u64::MAX / 2 + 1, u64::MAX] {
            for x in
                [0u64, 1, 2, b - 1, b, b.wrapping_add(1), b.wrapping_mul(2).wrapping_sub(1), u64::MAX - 1, u64::MAX]
            {
                assert_eq!(wrap(x, b), x % b, "x {x} b {b}");
            }
        }
    }
}

//! The virtual card's model: a hardware pointer that follows CLOCK_MONOTONIC from the moment of
//! start, playback frames copied from alsa-lib's buffer to `playback_file`, capture frames copied
//! from `capture_file` into it, xrun and fault injection (xrun, unplug, suspend/resume), and the
//! timerfd deadline; and what real hardware does to a timer-scheduled, rewinding writer: a DMA
//! FIFO that has fetched frames before they play (`fifo`), a pointer that moves in periods
//! (`batch`), and rewinds it may not allow (`rewind`), with counts in `stats_file`.
//! `ioplug.rs` owns the FFI; this module sees alsa-lib only through [`IoView`] and [`Area`].
//! Runs in: whichever application thread calls the PCM (under the plugin's mutex). RT: yes (no
//! allocation; syscalls: write/pread on the files, timerfd_settime/read; after a violation, a
//! stderr line at most once a second and a `stats_file` rewrite at most 4 times a second).

use std::fs::File;
use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::config::Config;
use crate::sys;
use crate::timer::TimerFd;

/// A positive errno that leaves a callback as `-errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub libc::c_int);

/// Stream direction of this PCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The card plays what the application writes.
    Playback,
    /// The card records what the application reads.
    Capture,
}

/// What a callback sees of alsa-lib's side at the moment of the call.
#[derive(Debug, Clone, Copy)]
pub struct IoView {
    /// `io->appl_ptr`: the application pointer, wrapped at the boundary.
    pub appl: u64,
    /// `io->state == SND_PCM_STATE_DRAINING`.
    pub draining: bool,
    /// `io->state` itself (what a suspend saves and `resume` restores).
    pub state: sys::snd_pcm_state_t,
}

impl IoView {
    /// A view of a stream in `state` with the application at `appl`.
    pub fn new(appl: u64, state: sys::snd_pcm_state_t) -> Self {
        Self { appl, draining: state == sys::SND_PCM_STATE_DRAINING, state }
    }
}

/// alsa-lib's interleaved ring buffer (`mmap_rw = 1`: its own `malloc`), checked at prepare.
#[derive(Debug, Clone, Copy)]
pub struct Area {
    /// First byte of frame 0.
    pub base: *mut u8,
    /// Buffer size in frames (the ring wraps there).
    pub frames: u64,
    /// The negotiated period size in frames (`batch` moves the pointer in these steps).
    pub period_frames: u64,
}

/// What the card counts of the hardware model's rules (`fifo`, `rewind`) and what it played:
/// the lines of `stats_file`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Runs of consecutive fetched frames that were rewritten before they played, plus rewinds
    /// of the application pointer into fetched frames.
    pub fifo_violations: u64,
    /// Fetched frames that were rewritten before they played (the card played the fetched copy).
    pub fifo_violation_frames: u64,
    /// Backward moves of the application pointer seen (legal or not).
    pub rewinds: u64,
    /// Rewinds on a card without `rewind true`.
    pub rewind_violations: u64,
    /// Frames played (playback).
    pub frames_played: u64,
}

impl Stats {
    const KEYS: [&'static str; 5] =
        ["fifo_violations", "fifo_violation_frames", "rewinds", "rewind_violations", "frames_played"];

    fn fields(&mut self) -> [&mut u64; 5] {
        [
            &mut self.fifo_violations,
            &mut self.fifo_violation_frames,
            &mut self.rewinds,
            &mut self.rewind_violations,
            &mut self.frames_played,
        ]
    }

    /// `self + a - b`, field by field (the counts only grow).
    fn plus_delta(mut self, a: Stats, b: Stats) -> Stats {
        let (mut a, mut b) = (a, b);
        for ((s, a), b) in self.fields().into_iter().zip(a.fields()).zip(b.fields()) {
            *s += a.saturating_sub(*b);
        }
        self
    }

    /// The `stats_file` text: one `key value` line per count.
    pub fn render(mut self) -> String {
        Self::KEYS.iter().zip(self.fields()).map(|(k, v)| format!("{k} {v}\n")).collect()
    }

    /// Reads what [`Stats::render`] wrote; unknown or broken lines are skipped.
    pub fn parse(text: &str) -> Stats {
        let mut s = Stats::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(k), Some(Some(v))) = (words.next(), words.next().map(|v| v.parse::<u64>().ok())) else {
                continue;
            };
            if let Some(i) = Self::KEYS.iter().position(|key| *key == k) {
                *s.fields()[i] = v;
            }
        }
        s
    }
}

/// `stats_file` totals of every card in this process, by path. A path's total starts from the
/// counts already in the file (so they also add up over processes that use it one after
/// another: a test deletes it, or uses a fresh path, to start from zero).
static STATS_TOTALS: Mutex<Vec<(PathBuf, Stats)>> = Mutex::new(Vec::new());

/// Adds `delta` to the total of `path` and rewrites the file (via a `.tmp` and a rename, so a
/// reader never sees half of it).
fn add_to_stats_file(path: &Path, delta_of: impl FnOnce(Stats) -> Stats) -> std::io::Result<()> {
    let mut all = STATS_TOTALS.lock().unwrap_or_else(PoisonError::into_inner);
    let i = match all.iter().position(|(p, _)| p == path) {
        Some(i) => i,
        None => {
            let start = std::fs::read_to_string(path).map(|t| Stats::parse(&t)).unwrap_or_default();
            all.push((path.to_owned(), start));
            all.len() - 1
        }
    };
    all[i].1 = delta_of(all[i].1);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, all[i].1.render())?;
    std::fs::rename(&tmp, path)
}

/// The two kinds of violation lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Fifo,
    Rewind,
}

/// Appends played bytes to `playback_file` (unbuffered: current even after SIGKILL); the first
/// failure is reported once.
fn append_played(file: &mut Option<File>, failed: &mut bool, bytes: &[u8]) {
    if let Some(f) = file.as_mut() {
        if let Err(e) = f.write_all(bytes) {
            if !*failed {
                eprintln!("shmix_vcard: writing playback_file failed: {e}");
                *failed = true;
            }
        }
    }
}

/// Why `pointer` reports no position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointerError {
    /// The writer fell behind (playback) or the reader did (capture), or an injected xrun.
    Xrun,
    /// `disconnect_at_ms` has passed: the card is unplugged.
    Gone,
    /// The card is asleep (`suspend_at_ms`) until a successful `resume` (or a prepare).
    Suspended,
}

/// What `poll_revents` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Nothing to do yet.
    Wait,
    /// avail reached avail_min, or an xrun the application finds out about from `pointer`.
    Ready,
    /// The card is suspended: ready with POLLERR, as the kernel reports a SUSPENDED stream.
    Error,
}

/// One sleep of the card (`suspend_at_ms` for `suspend_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sleep {
    /// The moment the card fell asleep (the scheduled one, not when a callback noticed).
    pub since_ns: u64,
    /// The first moment `resume` succeeds.
    pub wake_ns: u64,
    /// alsa-lib's state when the card fell asleep, which `resume` restores.
    pub host_state: sys::snd_pcm_state_t,
    /// Whether the clock ran (it continues at resume).
    pub was_running: bool,
}

/// Host states the kernel suspends (`snd_pcm_pre_suspend` skips OPEN, SETUP, DISCONNECTED).
fn suspendable(state: sys::snd_pcm_state_t) -> bool {
    matches!(
        state,
        sys::SND_PCM_STATE_PREPARED
            | sys::SND_PCM_STATE_RUNNING
            | sys::SND_PCM_STATE_XRUN
            | sys::SND_PCM_STATE_DRAINING
            | sys::SND_PCM_STATE_PAUSED
    )
}

/// The card's sample clock: frames elapsed for nanoseconds elapsed, with skew.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    frames_per_ns: f64,
}

impl Clock {
    /// A clock of `rate` frames per second, off by `skew_ppm` parts per million.
    pub fn new(rate: u32, skew_ppm: f64) -> Self {
        Self { frames_per_ns: f64::from(rate) * (1.0 + skew_ppm / 1e6) / 1e9 }
    }

    /// Whole frames elapsed after `ns` nanoseconds (monotonic in `ns`).
    pub fn frames(&self, ns: u64) -> u64 {
        (ns as f64 * self.frames_per_ns) as u64
    }

    /// The first nanosecond at which `frames(ns) >= frames`.
    pub fn ns_for(&self, frames: u64) -> u64 {
        let mut ns = (frames as f64 / self.frames_per_ns).ceil() as u64;
        // f64 rounding may be off by a little either way: settle on the exact first nanosecond.
        for _ in 0..64 {
            if self.frames(ns) >= frames {
                break;
            }
            ns += 1;
        }
        for _ in 0..64 {
            if ns == 0 || self.frames(ns - 1) < frames {
                break;
            }
            ns -= 1;
        }
        ns
    }
}

/// One virtual card (one open PCM). Positions are unwrapped `u64` frames since prepare;
/// alsa-lib's are wrapped at `boundary`.
#[derive(Debug)]
pub struct Card {
    cfg: Config,
    dir: Direction,
    frame_bytes: u64,
    clock: Clock,
    timer: TimerFd,
    playback_file: Option<File>,
    capture_file: Option<File>,
    /// Frames of `capture_file` consumed since open (the file is a signal that goes on in time).
    capture_pos_frames: u64,
    capture_eof: bool,
    /// `loopback`: byte offset in `playback_file` (read through `capture_file`) of the next frame
    /// to capture; set to the file's end at the first start.
    loopback_pos: Option<u64>,
    write_failed: bool,
    // From hw/sw params and prepare.
    avail_min: u64,
    stop_threshold: u64,
    boundary: u64,
    area: Option<Area>,
    // Run state.
    running: bool,
    seg_start_ns: u64,
    base_frames: u64,
    hw_frames: u64,
    xrun: bool,
    first_start_ns: Option<u64>,
    xrun_injected: bool,
    /// `xrun_every_ms`: when the next storm xrun is due (set at the first start).
    next_storm_xrun_ns: Option<u64>,
    gone: bool,
    /// The one suspend has happened (or passed while the stream was not suspendable).
    suspend_injected: bool,
    asleep: Option<Sleep>,
    /// `clock_file`, opened for appending (playback only).
    clock_file: Option<File>,
    // Hardware model (`fifo`, `batch`, `rewind`, `stats_file`).
    /// Period size from prepare (`batch`).
    period_frames: u64,
    /// `batch`: the position last reported to alsa-lib (a period multiple, or the end of a
    /// drain), never going back until the next prepare. Without `batch` it is `hw_frames`.
    reported_frames: u64,
    /// `fifo`, at most the buffer size (set at prepare).
    fifo_frames: u64,
    /// The fetched copy: frame `pos` at byte `(pos % fifo_frames) * frame_bytes`. Allocated at
    /// prepare, never in the per-call path.
    fetched: Vec<u8>,
    /// Frames `[hw_frames, fetched_end)` are fetched (and play from `fetched`).
    fetched_end: u64,
    /// Where the last run of rewritten fetched frames ended (a changed frame there continues it);
    /// [`NO_RUN`] when there was none since prepare.
    changed_run_end: u64,
    /// The application pointer (unwrapped) at the last callback that looked: a smaller one later
    /// is a rewind (ioplug has no callback for `snd_pcm_rewind`).
    last_appl: u64,
    /// Started since the last prepare: the FIFO has been filling.
    started: bool,
    /// This card's counts since open, and the part of them already added to `stats_file`.
    stats: Stats,
    stats_written: Stats,
    /// When `stats_file` was last written (rewrites wait 250 ms after the last one).
    stats_written_ns: Option<u64>,
    /// When the last violation line was printed, and how many were not printed since.
    logged_ns: Option<u64>,
    unlogged: u64,
}

const ENODEV: Errno = Errno(libc::ENODEV);

/// `changed_run_end` before the first rewritten fetched frame (no position is this large).
const NO_RUN: u64 = u64::MAX;

/// `capture_continue`: where the last capture card closed on each `capture_file` (frames).
static CAPTURE_POSITIONS: std::sync::Mutex<Vec<(std::path::PathBuf, u64)>> = std::sync::Mutex::new(Vec::new());

impl Drop for Card {
    fn drop(&mut self) {
        let s = self.stats;
        if s.fifo_violations + s.rewind_violations > 0 {
            eprintln!(
                "shmix_vcard: at close: {} FIFO violations ({} frames), {} rewind violations, {} rewinds",
                s.fifo_violations, s.fifo_violation_frames, s.rewind_violations, s.rewinds
            );
        }
        self.write_stats();
        if let Some(path) = self.continue_path() {
            let mut all = CAPTURE_POSITIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            all.retain(|(p, _)| *p != path);
            all.push((path, self.capture_pos_frames));
        }
    }
}

impl Card {
    /// A stopped card; `playback_file`/`capture_file` are already open (or `None`).
    pub fn new(
        cfg: Config,
        dir: Direction,
        timer: TimerFd,
        playback_file: Option<File>,
        capture_file: Option<File>,
    ) -> Self {
        Self {
            frame_bytes: u64::from(cfg.frame_bytes()),
            clock: Clock::new(cfg.rate, cfg.skew_ppm),
            cfg,
            dir,
            timer,
            playback_file,
            capture_file,
            capture_pos_frames: 0,
            capture_eof: false,
            loopback_pos: None,
            write_failed: false,
            avail_min: 1,
            stop_threshold: u64::MAX,
            boundary: 0,
            area: None,
            running: false,
            seg_start_ns: 0,
            base_frames: 0,
            hw_frames: 0,
            xrun: false,
            first_start_ns: None,
            xrun_injected: false,
            next_storm_xrun_ns: None,
            gone: false,
            suspend_injected: false,
            asleep: None,
            clock_file: None,
            period_frames: 0,
            reported_frames: 0,
            fifo_frames: 0,
            fetched: Vec::new(),
            fetched_end: 0,
            changed_run_end: NO_RUN,
            last_appl: 0,
            started: false,
            stats: Stats::default(),
            stats_written: Stats::default(),
            stats_written_ns: None,
            logged_ns: None,
            unlogged: 0,
        }
        .continued()
    }

    /// `capture_continue`: starts where the last card on the same capture file stopped.
    fn continued(mut self) -> Self {
        if let Some(path) = self.continue_path() {
            let all = CAPTURE_POSITIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, pos)) = all.iter().find(|(p, _)| *p == path) {
                self.capture_pos_frames = *pos;
            }
        }
        self
    }

    /// `capture_continue` on a capture card with a `capture_file`: that file's path.
    fn continue_path(&self) -> Option<std::path::PathBuf> {
        let on = self.cfg.capture_continue && self.dir == Direction::Capture && !self.cfg.loopback;
        self.cfg.capture_file.clone().filter(|_| on)
    }

    /// Adds the `clock_file` (see [`Config::clock_file`]).
    #[must_use]
    pub fn with_clock_file(mut self, f: Option<File>) -> Self {
        self.clock_file = f;
        self
    }

    /// `clock_file`: the clock (re)starts at `now_ns` with the frame the file has next.
    fn log_clock_start(&mut self, now_ns: u64) {
        let Some(f) = self.clock_file.as_mut() else { return };
        let frames =
            self.playback_file.as_ref().and_then(|p| p.metadata().ok()).map_or(0, |m| m.len()) / self.frame_bytes;
        if let Err(e) = writeln!(f, "start {now_ns} {frames}") {
            if !self.write_failed {
                eprintln!("shmix_vcard: writing clock_file failed: {e}");
                self.write_failed = true;
            }
        }
    }

    /// The configuration the card was opened with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The stream direction.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// Adds what this card counted since the last write to `stats_file` and rewrites it.
    fn write_stats(&mut self) {
        let Some(path) = self.cfg.stats_file.as_deref() else { return };
        let (now, before) = (self.stats, self.stats_written);
        if let Err(e) = add_to_stats_file(path, |total| total.plus_delta(now, before)) {
            if !self.write_failed {
                eprintln!("shmix_vcard: writing stats_file '{}' failed: {e}", path.display());
                self.write_failed = true;
            }
        }
        self.stats_written = now;
    }

    /// After a violation: rewrites `stats_file` unless it was written less than 250 ms ago (then
    /// a later callback does). Nothing but a compare while all is well (legal rewinds and played
    /// frames reach the file with the next violation or at close).
    fn write_stats_if_due(&mut self, now_ns: u64) {
        let behind = self.stats.fifo_violations != self.stats_written.fifo_violations
            || self.stats.rewind_violations != self.stats_written.rewind_violations;
        if behind && self.stats_written_ns.is_none_or(|t| now_ns >= t + 250_000_000) {
            self.stats_written_ns = Some(now_ns);
            self.write_stats();
        }
    }

    /// Prints one violation line, at most one a second (the close prints the totals).
    fn log_violation(&mut self, now_ns: u64, rule: Rule, what: std::fmt::Arguments<'_>) {
        if self.logged_ns.is_some_and(|t| now_ns < t + 1_000_000_000) {
            self.unlogged += 1;
            return;
        }
        self.logged_ns = Some(now_ns);
        let (name, more) = (if rule == Rule::Fifo { "FIFO" } else { "rewind" }, std::mem::take(&mut self.unlogged));
        let s = self.stats;
        eprintln!(
            "shmix_vcard: {name} violation: {what} (so far: {} FIFO violations, {} frames; {} rewind violations; \
             {more} lines not printed)",
            s.fifo_violations, s.fifo_violation_frames, s.rewind_violations
        );
    }

    /// Looks at alsa-lib's application pointer in a callback: below the one the last callback saw
    /// is a rewind (`snd_pcm_rewind` only moves `appl_ptr`; ioplug calls nothing). Illegal without
    /// `rewind true`; into fetched frames (below play position + `fifo`, playback, started) it is
    /// a FIFO violation whatever `rewind` says. A rewind followed by a bigger write before the
    /// next callback is invisible here (the bytes check of `fifo` still sees fetched frames
    /// rewritten); `mmap_commit` looks before each mmap commit, which catches it for mmap writers.
    fn observe_appl(&mut self, now_ns: u64, view: IoView) {
        let appl = self.appl_frames(view.appl);
        if appl < self.last_appl {
            let back = self.last_appl - appl;
            self.stats.rewinds += 1;
            if !self.cfg.rewind {
                self.stats.rewind_violations += 1;
                let hw = self.hw_frames;
                self.log_violation(
                    now_ns,
                    Rule::Rewind,
                    format_args!(
                        "application pointer went back {back} frames (to {appl}, play position {hw}) on a card \
                         without `rewind true`"
                    ),
                );
            }
            let fetched_to = self.hw_frames + self.fifo_frames;
            if self.dir == Direction::Playback && self.started && appl < fetched_to {
                self.stats.fifo_violations += 1;
                let (hw, fifo) = (self.hw_frames, self.fifo_frames);
                self.log_violation(
                    now_ns,
                    Rule::Fifo,
                    format_args!(
                        "application pointer went back {back} frames to {appl}, below play position {hw} + fifo \
                         {fifo} = {fetched_to}: those frames were fetched already"
                    ),
                );
            }
        }
        self.last_appl = appl;
    }

    /// The `transfer` callback (alsa-lib calls it in `snd_pcm_mmap_commit` of an MMAP-access
    /// playback, before it moves appl_ptr, and in `mmap_begin` of an MMAP-access capture): the
    /// card only looks at the application pointer there. Changes nothing else.
    pub fn mmap_commit(&mut self, now_ns: u64, view: IoView) {
        self.observe_appl(now_ns, view);
        self.write_stats_if_due(now_ns);
    }

    /// `batch`: `pos` rounded down to a whole period (else `pos`).
    fn batch_floor(&self, pos: u64) -> u64 {
        if self.cfg.batch && self.period_frames > 0 {
            pos - pos % self.period_frames
        } else {
            pos
        }
    }

    /// `batch`: the first whole-period position at or after `pos` (else `pos`).
    fn batch_ceil(&self, pos: u64) -> u64 {
        if self.cfg.batch && self.period_frames > 0 {
            pos.div_ceil(self.period_frames).saturating_mul(self.period_frames)
        } else {
            pos
        }
    }

    /// The position alsa-lib gets: `hw_frames`; with `batch` rounded down to a period (except a
    /// drain's end, where the last frame played is reported so that the drain finishes), never
    /// below what was reported before.
    fn report(&mut self, draining_appl: Option<u64>) -> u64 {
        if !self.cfg.batch {
            return self.hw_frames;
        }
        let pos = match draining_appl {
            Some(appl) if self.hw_frames >= appl => self.hw_frames,
            _ => self.batch_floor(self.hw_frames),
        };
        self.reported_frames = self.reported_frames.max(pos);
        self.reported_frames
    }

    /// Where alsa-lib's hw_ptr is (or gets at the next `pointer` of a card that is not running):
    /// `hw_frames`, with `batch` rounded down to a period.
    fn reported_pos(&self) -> u64 {
        if self.cfg.batch {
            self.reported_frames.max(self.batch_floor(self.hw_frames))
        } else {
            self.hw_frames
        }
    }

    /// The timerfd to poll.
    pub fn poll_fd(&self) -> RawFd {
        self.timer.raw()
    }

    fn ms_after_first_start(&self, ms: Option<u64>) -> Option<u64> {
        Some(self.first_start_ns? + ms? * 1_000_000)
    }

    /// Marks the card gone once `disconnect_at_ms` has passed or `gone_file` exists (one stat
    /// per call while the card is there).
    ///
    /// # Errors
    /// `ENODEV` from then on.
    pub fn check_gone(&mut self, now_ns: u64) -> Result<(), Errno> {
        if !self.gone {
            if let Some(t) = self.ms_after_first_start(self.cfg.disconnect_at_ms) {
                self.gone = now_ns >= t;
            }
        }
        if !self.gone && self.cfg.gone_file.as_deref().is_some_and(|p| std::fs::symlink_metadata(p).is_ok()) {
            self.gone = true;
        }
        if self.gone {
            Err(ENODEV)
        } else {
            Ok(())
        }
    }

    /// The current sleep, if the card is suspended.
    pub fn asleep(&self) -> Option<Sleep> {
        self.asleep
    }

    /// `suspend_at_ms` has come and the stream is in a state the kernel would suspend.
    fn suspend_due(&self, now_ns: u64, view: IoView) -> bool {
        !self.suspend_injected
            && !self.gone
            && suspendable(view.state)
            && self.ms_after_first_start(self.cfg.suspend_at_ms).is_some_and(|t| now_ns >= t)
    }

    /// The suspend time passed without a callback seeing a suspendable stream (stopped or being
    /// set up): like the kernel, that stream is not suspended.
    fn skip_due_suspend(&mut self, now_ns: u64) {
        if self.ms_after_first_start(self.cfg.suspend_at_ms).is_some_and(|t| now_ns >= t) {
            self.suspend_injected = true;
        }
    }

    /// Falls asleep at the scheduled moment: the hardware stops where the clock was then
    /// (playback: at most at the last written frame, so an underrun the writer had not noticed
    /// yet is forgiven; the frames still in the buffer stay there and play after the resume).
    fn fall_asleep(&mut self, now_ns: u64, view: IoView) {
        let since_ns = self.ms_after_first_start(self.cfg.suspend_at_ms).unwrap_or(now_ns).min(now_ns);
        if self.running {
            let clock = self.clock_frames(since_ns.max(self.seg_start_ns));
            match self.dir {
                Direction::Playback => {
                    let appl = self.appl_frames(view.appl);
                    self.play_until(now_ns, clock.min(appl), appl);
                }
                Direction::Capture => self.capture_until(clock.max(self.hw_frames)),
            }
        }
        self.asleep = Some(Sleep {
            since_ns,
            wake_ns: since_ns.saturating_add(self.cfg.suspend_ms.saturating_mul(1_000_000)),
            host_state: view.state,
            was_running: self.running,
        });
        self.suspend_injected = true;
        self.running = false;
        self.base_frames = self.hw_frames;
        self.timer.fire_now();
    }

    /// The `resume` callback's model: fails with `EAGAIN` until `suspend_ms` after the card fell
    /// asleep; then the clock continues from where it stopped (frames still in the buffer play
    /// next) and the state alsa-lib had at the suspend is returned for it to be restored.
    ///
    /// # Errors
    /// `EAGAIN` while asleep, `EBADFD` when not suspended, `ENODEV` once the card is gone.
    pub fn resume(&mut self, now_ns: u64, view: IoView) -> Result<sys::snd_pcm_state_t, Errno> {
        self.check_gone(now_ns)?;
        let Some(sleep) = self.asleep else {
            return Err(Errno(libc::EBADFD));
        };
        if now_ns < sleep.wake_ns {
            return Err(Errno(libc::EAGAIN));
        }
        self.observe_appl(now_ns, view);
        self.asleep = None;
        if sleep.was_running {
            self.running = true;
            self.seg_start_ns = now_ns;
            self.base_frames = self.hw_frames;
            self.log_clock_start(now_ns);
        }
        self.arm(now_ns, IoView::new(view.appl, sleep.host_state));
        Ok(sleep.host_state)
    }

    fn forced_xrun_due(&self, now_ns: u64) -> bool {
        self.running
            && ((!self.xrun_injected && self.ms_after_first_start(self.cfg.xrun_at_ms).is_some_and(|t| now_ns >= t))
                || self.next_storm_xrun_ns.is_some_and(|t| now_ns >= t))
    }

    /// Books a forced xrun at `now_ns`: the one-shot one if it is due, else the storm's, whose
    /// next one is then `xrun_every_ms` later.
    fn take_forced_xrun(&mut self, now_ns: u64) {
        if !self.xrun_injected && self.ms_after_first_start(self.cfg.xrun_at_ms).is_some_and(|t| now_ns >= t) {
            self.xrun_injected = true;
        } else if let (Some(_), Some(every)) = (self.next_storm_xrun_ns, self.cfg.xrun_every_ms) {
            self.next_storm_xrun_ns = Some(now_ns + every * 1_000_000);
        }
    }

    /// The card's position at `now_ns` (frames since prepare; frozen unless running).
    fn clock_frames(&self, now_ns: u64) -> u64 {
        if self.running {
            self.base_frames + self.clock.frames(now_ns.saturating_sub(self.seg_start_ns))
        } else {
            self.base_frames
        }
    }

    /// alsa-lib's wrapped appl_ptr as an unwrapped position near `hw_frames`.
    fn appl_frames(&self, appl_wrapped: u64) -> u64 {
        if self.boundary == 0 {
            return appl_wrapped;
        }
        let b = i128::from(self.boundary);
        let hw_wrapped = i128::from(self.hw_frames % self.boundary);
        let mut diff = (i128::from(appl_wrapped) - hw_wrapped).rem_euclid(b);
        if diff > b / 2 {
            diff -= b;
        }
        (i128::from(self.hw_frames) + diff).max(0) as u64
    }

    fn buffer_frames(&self) -> u64 {
        self.area.map_or(0, |a| a.frames)
    }

    /// Frames available to the application if the hardware were at `pos`.
    fn avail_at(&self, pos: u64, appl: u64) -> i128 {
        match self.dir {
            Direction::Playback => i128::from(self.buffer_frames()) + i128::from(pos) - i128::from(appl),
            Direction::Capture => i128::from(pos) - i128::from(appl),
        }
    }

    fn wrapped(&self, pos: u64) -> u64 {
        if self.boundary == 0 {
            pos
        } else {
            pos % self.boundary
        }
    }

    /// Records from the sw_params callback.
    ///
    /// # Errors
    /// `ENODEV` once the card is gone.
    pub fn sw_params(&mut self, now_ns: u64, avail_min: u64, stop_threshold: u64, boundary: u64) -> Result<(), Errno> {
        self.check_gone(now_ns)?;
        self.avail_min = avail_min.max(1);
        self.stop_threshold = stop_threshold;
        self.boundary = boundary;
        Ok(())
    }

    /// Resets positions (alsa-lib has just set appl and hw to 0) and takes the new buffer.
    ///
    /// # Errors
    /// `ENODEV` once the card is gone.
    pub fn prepare(&mut self, now_ns: u64, area: Area, view: IoView) -> Result<(), Errno> {
        self.check_gone(now_ns)?;
        // Prepare is also how a caller gives up on a suspended card (the kernel allows it).
        if self.asleep.take().is_none() && !suspendable(view.state) {
            self.skip_due_suspend(now_ns);
        }
        self.area = Some(area);
        self.running = false;
        self.base_frames = 0;
        self.hw_frames = 0;
        self.xrun = false;
        self.period_frames = area.period_frames;
        self.reported_frames = 0;
        if self.dir == Direction::Playback {
            self.fifo_frames = u64::from(self.cfg.fifo_frames).min(area.frames);
            let fetched_bytes = (self.fifo_frames * self.frame_bytes) as usize;
            if self.fetched.len() != fetched_bytes {
                self.fetched = vec![0; fetched_bytes];
            }
        }
        self.fetched_end = 0;
        self.changed_run_end = NO_RUN;
        self.started = false;
        self.last_appl = self.appl_frames(view.appl);
        self.arm(now_ns, view);
        Ok(())
    }

    /// Starts the clock at the current hw position.
    ///
    /// # Errors
    /// `ENODEV` once the card is gone, `ESTRPIPE` while suspended.
    pub fn start(&mut self, now_ns: u64, view: IoView) -> Result<(), Errno> {
        self.check_gone(now_ns)?;
        if self.asleep.is_some() {
            return Err(Errno(libc::ESTRPIPE));
        }
        self.observe_appl(now_ns, view);
        self.first_start_ns.get_or_insert(now_ns);
        if self.next_storm_xrun_ns.is_none() {
            self.next_storm_xrun_ns = self.ms_after_first_start(self.cfg.xrun_every_ms);
        }
        if self.cfg.loopback && self.loopback_pos.is_none() {
            let len = self.capture_file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
            self.loopback_pos = Some(len - len % self.frame_bytes);
        }
        self.running = true;
        self.seg_start_ns = now_ns;
        self.base_frames = self.hw_frames;
        self.log_clock_start(now_ns);
        // The DMA fills its FIFO as the stream starts.
        self.started = true;
        let appl = self.appl_frames(view.appl);
        self.fetch(appl);
        self.arm(now_ns, view);
        self.write_stats_if_due(now_ns);
        Ok(())
    }

    /// Stops the clock; playback records what was played since the last pointer update.
    /// Idempotent (alsa-lib calls it at drain end and again at close). Ends a suspension (drop
    /// from SUSPENDED goes to SETUP); a suspend still to come for a stopped stream is skipped.
    pub fn stop(&mut self, now_ns: u64, view: IoView) {
        let _ = self.check_gone(now_ns);
        if self.asleep.take().is_none() {
            self.skip_due_suspend(now_ns);
        }
        if !self.gone {
            self.observe_appl(now_ns, view);
        }
        if self.running && !self.xrun && !self.gone && self.dir == Direction::Playback {
            let appl = self.appl_frames(view.appl);
            let clock = self.clock_frames(now_ns);
            self.play_until(now_ns, clock.min(appl), appl);
        }
        self.running = false;
        self.started = false;
        self.base_frames = self.hw_frames;
        self.timer.disarm();
        self.timer.clear();
    }

    /// Freezes (`enable`) or resumes the clock.
    ///
    /// # Errors
    /// `ENODEV` once the card is gone, `ESTRPIPE` while suspended.
    pub fn pause(&mut self, now_ns: u64, enable: bool, view: IoView) -> Result<(), Errno> {
        self.check_gone(now_ns)?;
        if self.asleep.is_some() {
            return Err(Errno(libc::ESTRPIPE));
        }
        self.observe_appl(now_ns, view);
        if enable && self.running {
            self.base_frames = self.clock_frames(now_ns);
            self.running = false;
        } else if !enable && !self.running {
            self.seg_start_ns = now_ns;
            self.running = true;
            self.log_clock_start(now_ns);
        }
        self.arm(now_ns, view);
        Ok(())
    }

    /// The `pointer` callback: moves the hw position to the clock, plays/records the frames in
    /// between, re-arms the timer and returns the position wrapped at the boundary
    /// (`SND_PCM_IOPLUG_FLAG_BOUNDARY_WA` wants absolute positions).
    ///
    /// # Errors
    /// [`PointerError::Xrun`] when the clock passed the writer (playback: `avail >= stop_threshold`,
    /// that is, past appl_ptr by default) or the reader (capture), or at `xrun_at_ms` (once);
    /// it stays until the next prepare. [`PointerError::Gone`] after `disconnect_at_ms`.
    /// [`PointerError::Suspended`] from `suspend_at_ms` until a resume or prepare (the position
    /// stays where the clock was at that moment).
    pub fn pointer(&mut self, now_ns: u64, view: IoView) -> Result<u64, PointerError> {
        if self.check_gone(now_ns).is_err() {
            self.timer.fire_now();
            return Err(PointerError::Gone);
        }
        if self.asleep.is_none() && self.suspend_due(now_ns, view) {
            self.fall_asleep(now_ns, view);
        }
        if self.asleep.is_some() {
            return Err(PointerError::Suspended);
        }
        if self.xrun {
            return Err(PointerError::Xrun);
        }
        // Before the card moves on: a rewind is judged against the play position of its moment.
        self.observe_appl(now_ns, view);
        let clock = self.clock_frames(now_ns);
        let appl = self.appl_frames(view.appl);
        let xrun = if self.forced_xrun_due(now_ns) {
            self.take_forced_xrun(now_ns);
            true
        } else {
            // Only a running card consumes frames: prepared (not started) and paused never xrun.
            self.running && !view.draining && self.avail_at(clock, appl) >= i128::from(self.stop_threshold)
        };
        if xrun {
            // Play what the card got to play before the writer "fell behind"; capture loses it.
            match self.dir {
                Direction::Playback => self.play_until(now_ns, clock.min(appl), appl),
                Direction::Capture => self.skip_capture(clock.saturating_sub(self.hw_frames)),
            }
            self.write_stats_if_due(now_ns);
            self.xrun = true;
            self.running = false;
            self.base_frames = self.hw_frames;
            self.timer.fire_now();
            return Err(PointerError::Xrun);
        }
        match self.dir {
            // Draining: the hardware stops at the last written frame; alsa-lib then sees
            // avail == buffer and drops the stream.
            Direction::Playback if view.draining => self.play_until(now_ns, clock.min(appl), appl),
            Direction::Playback => self.play_until(now_ns, clock, appl),
            Direction::Capture => self.capture_until(clock),
        }
        self.arm(now_ns, view);
        self.write_stats_if_due(now_ns);
        let pos = self.report(view.draining.then_some(appl));
        Ok(self.wrapped(pos))
    }

    /// The `poll_revents` callback: says whether the application may
    /// proceed (avail >= avail_min, or an xrun/fault it must notice), re-arms the timer.
    /// A suspended card is [`Readiness::Error`] (and stays readable) until it is resumed.
    ///
    /// # Errors
    /// `ENODEV` once the card is gone.
    pub fn poll_ready(&mut self, now_ns: u64, view: IoView) -> Result<Readiness, Errno> {
        self.check_gone(now_ns)?;
        // No read of the expiration: `arm` below leaves it pending (ready) or sets a future
        // deadline, which discards it (one timerfd_settime per period and no read).
        if self.asleep.is_none() && self.suspend_due(now_ns, view) {
            self.fall_asleep(now_ns, view);
        }
        if self.asleep.is_some() {
            self.timer.fire_now();
            return Ok(Readiness::Error);
        }
        if !self.xrun {
            self.observe_appl(now_ns, view);
        }
        let appl = self.appl_frames(view.appl);
        let ready = if self.xrun || self.forced_xrun_due(now_ns) {
            true
        } else if self.running {
            let clock = self.clock_frames(now_ns);
            if self.dir == Direction::Playback && view.draining {
                clock >= appl
            } else {
                // avail_min against what alsa-lib will see (`batch`: whole periods), the xrun
                // against the real clock.
                self.avail_at(self.batch_floor(clock), appl) >= i128::from(self.avail_min)
                    || self.avail_at(clock, appl) >= i128::from(self.stop_threshold)
            }
        } else {
            self.avail_at(self.reported_pos(), appl) >= i128::from(self.avail_min)
        };
        self.arm(now_ns, view);
        self.write_stats_if_due(now_ns);
        Ok(if ready { Readiness::Ready } else { Readiness::Wait })
    }

    /// The CLOCK_MONOTONIC time at which the clock reaches `frames` (0 if it already has).
    fn time_of(&self, frames: u64, now_ns: u64) -> u64 {
        if frames <= self.clock_frames(now_ns) {
            0
        } else {
            self.seg_start_ns + self.clock.ns_for(frames - self.base_frames)
        }
    }

    /// Arms the timerfd for the next moment the application must look: avail reaching avail_min
    /// (drain: the last frame played), an xrun, or a pending fault (xrun, suspend, unplug).
    fn arm(&mut self, now_ns: u64, view: IoView) {
        if self.gone || self.xrun || self.asleep.is_some() {
            self.timer.fire_now();
            return;
        }
        let appl = self.appl_frames(view.appl);
        if !self.running {
            if self.avail_at(self.reported_pos(), appl) >= i128::from(self.avail_min) {
                self.timer.fire_now();
            } else {
                self.timer.disarm();
            }
            return;
        }
        let buffer = self.buffer_frames();
        // `batch`: alsa-lib sees avail_min only once the pointer has stepped a whole period
        // past it; the xrun comes on the real clock.
        let (ready_at, xrun_at) = match self.dir {
            Direction::Playback if view.draining => (appl, u64::MAX),
            Direction::Playback => (
                self.batch_ceil((appl + self.avail_min).saturating_sub(buffer)),
                appl.saturating_add(self.stop_threshold).saturating_sub(buffer),
            ),
            Direction::Capture => (self.batch_ceil(appl + self.avail_min), appl.saturating_add(self.stop_threshold)),
        };
        let mut t = self.time_of(ready_at, now_ns);
        if xrun_at != u64::MAX {
            t = t.min(self.time_of(xrun_at, now_ns));
        }
        if !self.xrun_injected {
            if let Some(f) = self.ms_after_first_start(self.cfg.xrun_at_ms) {
                t = t.min(f);
            }
        }
        if let Some(f) = self.next_storm_xrun_ns {
            t = t.min(f);
        }
        if !self.suspend_injected {
            if let Some(f) = self.ms_after_first_start(self.cfg.suspend_at_ms) {
                t = t.min(f);
            }
        }
        if let Some(f) = self.ms_after_first_start(self.cfg.disconnect_at_ms) {
            t = t.min(f);
        }
        self.timer.arm_at(t, now_ns);
    }

    /// Raw bytes of frames `[pos, pos + n)` of the ring, `n` not crossing its end.
    fn ring_chunk(&self, area: Area, pos: u64, n: u64) -> (*mut u8, usize) {
        let off = pos % area.frames;
        debug_assert!(off + n <= area.frames);
        // In bounds: off + n <= frames, and the buffer holds frames * frame_bytes bytes.
        let ptr = area.base.wrapping_add((off * self.frame_bytes) as usize);
        (ptr, (n * self.frame_bytes) as usize)
    }

    /// Playback: the hardware moves to `to`; frames in `[hw, min(to, appl))` were played and go
    /// to `playback_file` (one write(2) per ring chunk, unbuffered: current even after SIGKILL).
    /// `fifo`: fetched frames play from the fetched copy, and any whose bytes in the buffer
    /// changed since are counted; then the FIFO is filled up again.
    fn play_until(&mut self, now_ns: u64, to: u64, appl: u64) {
        let end = to.min(appl);
        if let (Some(area), true) = (self.area, end > self.hw_frames) {
            self.stats.frames_played += end - self.hw_frames;
            let mut pos = self.hw_frames;
            let fetched_to = self.fetched_end.min(end);
            if pos < fetched_to && area.frames > 0 {
                self.play_fetched(now_ns, area, pos, fetched_to);
                pos = fetched_to;
            }
            while pos < end && self.playback_file.is_some() && area.frames > 0 {
                let n = (end - pos).min(area.frames - pos % area.frames);
                let (ptr, len) = self.ring_chunk(area, pos, n);
                // SAFETY: `ptr..ptr+len` lies inside alsa-lib's ring buffer (checked at prepare to be
                // `frames * frame_bytes` long, interleaved, and alive until the next hw_params, which
                // is followed by a prepare that replaces `area`). These frames are between hw_ptr and
                // appl_ptr: written by the application and not writable by it until we report them
                // (unless it rewinds, which happens in its own calls, not during this callback).
                let bytes = unsafe { std::slice::from_raw_parts(ptr.cast_const(), len) };
                append_played(&mut self.playback_file, &mut self.write_failed, bytes);
                pos += n;
            }
        }
        self.hw_frames = self.hw_frames.max(to);
        self.fetch(appl);
    }

    /// `fifo`: plays fetched frames `[from, to)` from the fetched copy and counts those whose
    /// bytes in the buffer differ from it now (rewritten after the card fetched them).
    fn play_fetched(&mut self, now_ns: u64, area: Area, from: u64, to: u64) {
        let fb = self.frame_bytes as usize;
        let (mut changed_frames, mut runs, mut first_changed) = (0u64, 0u64, None);
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(area.frames - pos % area.frames).min(self.fifo_frames - pos % self.fifo_frames);
            let (ptr, len) = self.ring_chunk(area, pos, n);
            // SAFETY: in bounds of alsa-lib's ring as in `play_until`; frames `[from, to)` lie
            // between hw_ptr and appl_ptr, which the application may rewrite (after a rewind, or
            // through mmap) but alsa-lib never frees or moves while the PCM is set up: reading
            // them races at worst with such a rewrite, which is what this compares for.
            let now_bytes = unsafe { std::slice::from_raw_parts(ptr.cast_const(), len) };
            let off = ((pos % self.fifo_frames) * self.frame_bytes) as usize;
            let fetched = &self.fetched[off..off + len];
            if fetched != now_bytes {
                for (i, (a, b)) in fetched.chunks_exact(fb).zip(now_bytes.chunks_exact(fb)).enumerate() {
                    if a != b {
                        let p = pos + i as u64;
                        changed_frames += 1;
                        if p != self.changed_run_end {
                            runs += 1;
                        }
                        self.changed_run_end = p + 1;
                        first_changed.get_or_insert(p);
                    }
                }
            }
            append_played(&mut self.playback_file, &mut self.write_failed, fetched);
            pos += n;
        }
        if let Some(first) = first_changed {
            self.stats.fifo_violations += runs;
            self.stats.fifo_violation_frames += changed_frames;
            let fifo = self.fifo_frames;
            self.log_violation(
                now_ns,
                Rule::Fifo,
                format_args!(
                    "{changed_frames} frames in [{first}, {to}) were rewritten after the card fetched them \
                     (fifo {fifo}); it played the fetched ones"
                ),
            );
        }
    }

    /// `fifo`: fetches the frames the application has written from the fetched end up to play
    /// position + `fifo` into the fetched copy (no-op without `fifo`).
    fn fetch(&mut self, appl: u64) {
        if self.fifo_frames == 0 {
            return;
        }
        let Some(area) = self.area.filter(|a| a.frames > 0) else { return };
        let end = (self.hw_frames + self.fifo_frames).min(appl);
        let mut pos = self.fetched_end.max(self.hw_frames);
        while pos < end {
            let n = (end - pos).min(area.frames - pos % area.frames).min(self.fifo_frames - pos % self.fifo_frames);
            let (ptr, len) = self.ring_chunk(area, pos, n);
            // SAFETY: in bounds of alsa-lib's ring as in `play_until`; frames `[pos, pos + n)` are
            // below appl_ptr: written by the application (a rewrite racing with this read is a
            // rewrite after the fetch, which `play_fetched` then finds).
            let src = unsafe { std::slice::from_raw_parts(ptr.cast_const(), len) };
            let off = ((pos % self.fifo_frames) * self.frame_bytes) as usize;
            self.fetched[off..off + len].copy_from_slice(src);
            pos += n;
        }
        self.fetched_end = self.fetched_end.max(end).max(self.hw_frames);
    }

    fn skip_capture(&mut self, frames: u64) {
        self.capture_pos_frames += frames;
    }

    /// Capture: the hardware moves to `to`; frames `[hw, to)` are "recorded" from `capture_file`
    /// (silence after its end) into the ring.
    fn capture_until(&mut self, to: u64) {
        let Some(area) = self.area.filter(|a| a.frames > 0) else {
            self.hw_frames = self.hw_frames.max(to);
            return;
        };
        let mut pos = self.hw_frames;
        if to.saturating_sub(pos) > area.frames {
            // Only the last buffer's worth survives in the ring.
            self.skip_capture(to - area.frames - pos);
            pos = to - area.frames;
        }
        while pos < to {
            let n = (to - pos).min(area.frames - pos % area.frames);
            let (ptr, len) = self.ring_chunk(area, pos, n);
            // SAFETY: in bounds of alsa-lib's ring as for playback; frames `[hw, to)` are beyond
            // hw_ptr, so the application does not read them until we report them.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
            let filled = self.read_capture(dst);
            dst[filled..].fill(0);
            self.capture_pos_frames += n;
            pos += n;
        }
        self.hw_frames = to;
    }

    /// Reads capture_file bytes at the current position into `dst`; returns how many it got.
    fn read_capture(&mut self, dst: &mut [u8]) -> usize {
        let Some(f) = self.capture_file.as_ref().filter(|_| !self.capture_eof) else {
            return 0;
        };
        if let Some(start) = self.loopback_pos {
            // Whatever playback appended since, whole frames only; never at an end for good.
            let mut got = 0;
            while got < dst.len() {
                match f.read_at(&mut dst[got..], start + got as u64) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            got -= got % self.frame_bytes as usize;
            self.loopback_pos = Some(start + got as u64);
            return got;
        }
        let start = self.capture_pos_frames * self.frame_bytes;
        let mut got = 0;
        while got < dst.len() {
            match f.read_at(&mut dst[got..], start + got as u64) {
                Ok(0) => {
                    self.capture_eof = true;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.capture_eof = true;
                    break;
                }
            }
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_inverse_is_exact() {
        for (rate, skew) in [(48_000, 0.0), (44_100, 0.0), (48_000, 250.0), (8_000, -1000.0)] {
            let c = Clock::new(rate, skew);
            for f in [1u64, 2, 47, 48_000, 1_234_567, 10_000_000_000] {
                let ns = c.ns_for(f);
                assert!(c.frames(ns) >= f, "rate {rate} f {f}");
                assert!(c.frames(ns - 1) < f, "rate {rate} f {f}");
            }
        }
        assert_eq!(Clock::new(48_000, 0.0).frames(1_000_000_000), 48_000);
        assert_eq!(Clock::new(48_000, 100.0).frames(1_000_000_000), 48_004);
    }

    fn card(dir: Direction) -> Card {
        Card::new(Config::default(), dir, TimerFd::new().unwrap(), None, None)
    }

    #[test]
    fn appl_unwraps_near_hw_across_the_boundary() {
        let mut c = card(Direction::Playback);
        c.boundary = 1 << 20;
        c.hw_frames = (1 << 20) - 10;
        assert_eq!(c.appl_frames(5), (1 << 20) + 5);
        assert_eq!(c.appl_frames((1 << 20) - 20), (1 << 20) - 20);
        c.hw_frames = 3 * (1 << 20) + 7;
        assert_eq!(c.wrapped(c.hw_frames), 7);
        assert_eq!(c.appl_frames(100), 3 * (1 << 20) + 100);
    }

    #[test]
    fn playback_xruns_when_clock_passes_appl() {
        let mut buf = vec![0u8; 1024 * 4];
        let mut c = card(Direction::Playback);
        c.sw_params(0, 256, 1024, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 1024, period_frames: 256 };
        let v = |appl| IoView::new(appl, sys::SND_PCM_STATE_RUNNING);
        c.prepare(0, area, v(1024)).unwrap();
        let t0 = 1_000_000_000;
        c.start(t0, v(1024)).unwrap();
        // 10 ms = 480 frames at 48 kHz.
        assert_eq!(c.pointer(t0 + 10_000_000, v(1024)), Ok(480));
        // 30 ms = 1440 frames > appl 1024: underrun.
        assert_eq!(c.pointer(t0 + 30_000_000, v(1024)), Err(PointerError::Xrun));
        assert_eq!(c.hw_frames, 1024);
        // Draining instead stops at appl.
        c.prepare(0, area, v(1024)).unwrap();
        c.start(t0, v(1024)).unwrap();
        let d = IoView::new(1024, sys::SND_PCM_STATE_DRAINING);
        assert_eq!(c.pointer(t0 + 30_000_000, d), Ok(1024));
    }

    #[test]
    fn pause_freezes_the_clock_and_resume_continues_it() {
        let mut buf = vec![0u8; 4096 * 4];
        let mut c = card(Direction::Playback);
        c.sw_params(0, 256, 4096, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 4096, period_frames: 256 };
        let v = IoView::new(4096, sys::SND_PCM_STATE_RUNNING);
        c.prepare(0, area, v).unwrap();
        let t0 = 1_000_000_000;
        c.start(t0, v).unwrap();
        c.pause(t0 + 10_000_000, true, v).unwrap();
        // Paused for a long time: no progress, no xrun.
        assert_eq!(c.pointer(t0 + 5_000_000_000, v), Ok(480));
        c.pause(t0 + 5_000_000_000, false, v).unwrap();
        assert_eq!(c.pointer(t0 + 5_010_000_000, v), Ok(960));
    }

    #[test]
    fn capture_overrun_when_reader_falls_behind() {
        let mut buf = vec![0u8; 1024 * 4];
        let mut c = card(Direction::Capture);
        c.sw_params(0, 256, 1024, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 1024, period_frames: 256 };
        let v = IoView::new(0, sys::SND_PCM_STATE_RUNNING);
        c.prepare(0, area, v).unwrap();
        let t0 = 1_000_000_000;
        c.start(t0, v).unwrap();
        assert_eq!(c.pointer(t0 + 10_000_000, v), Ok(480));
        assert_eq!(c.pointer(t0 + 30_000_000, v), Err(PointerError::Xrun));
        // It stays in xrun until the next prepare.
        assert_eq!(c.pointer(t0 + 31_000_000, v), Err(PointerError::Xrun));
        c.prepare(t0 + 32_000_000, area, v).unwrap();
        assert_eq!(c.pointer(t0 + 33_000_000, v), Ok(0));
    }

    fn suspending_card(dir: Direction, suspend_ms: u64, playback_file: Option<File>) -> Card {
        let cfg = Config { suspend_at_ms: Some(100), suspend_ms, ..Config::default() };
        Card::new(cfg, dir, TimerFd::new().unwrap(), playback_file, None)
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn suspend_freezes_at_its_moment_and_resume_waits_then_continues() {
        let mut buf: Vec<u8> = (0..4096u32 * 4).map(|i| (i % 251) as u8 + 1).collect();
        let dir = tempfile::tempdir().unwrap();
        let rec_path = dir.path().join("rec.raw");
        let rec = File::create(&rec_path).unwrap();
        let mut c = suspending_card(Direction::Playback, 200, Some(rec));
        c.sw_params(0, 256, 4096, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 4096, period_frames: 256 };
        let run = |appl| IoView::new(appl, sys::SND_PCM_STATE_RUNNING);
        let susp = |appl| IoView::new(appl, sys::SND_PCM_STATE_SUSPENDED);
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        let t0 = 1_000_000_000;
        c.start(t0, run(4096)).unwrap();
        // 50 ms: 2400 frames played.
        assert_eq!(c.pointer(t0 + 50 * MS, run(4096)), Ok(2400));
        assert_eq!(c.asleep(), None);
        // Noticed at 130 ms, the card fell asleep at 100 ms: 4800 frames > appl 4096 would be an
        // underrun, which the suspend forgives: it stops at the last written frame.
        assert_eq!(c.pointer(t0 + 130 * MS, run(4096)), Err(PointerError::Suspended));
        let sleep = c.asleep().unwrap();
        assert_eq!(
            sleep,
            Sleep {
                since_ns: t0 + 100 * MS,
                wake_ns: t0 + 300 * MS,
                host_state: sys::SND_PCM_STATE_RUNNING,
                was_running: true
            }
        );
        assert_eq!(c.hw_frames, 4096);
        // Asleep: no progress, poll reports the error, start/pause refuse, resume says EAGAIN.
        assert_eq!(c.pointer(t0 + 250 * MS, susp(4096)), Err(PointerError::Suspended));
        assert_eq!(c.poll_ready(t0 + 250 * MS, susp(4096)), Ok(Readiness::Error));
        assert_eq!(c.start(t0 + 250 * MS, susp(4096)), Err(Errno(libc::ESTRPIPE)));
        assert_eq!(c.pause(t0 + 250 * MS, true, susp(4096)), Err(Errno(libc::ESTRPIPE)));
        assert_eq!(c.resume(t0 + 299 * MS, susp(4096)), Err(Errno(libc::EAGAIN)));
        // Awake: RUNNING again, the clock continues from 4096 (the application refilled).
        assert_eq!(c.resume(t0 + 300 * MS, susp(4096)), Ok(sys::SND_PCM_STATE_RUNNING));
        assert_eq!(c.asleep(), None);
        assert_eq!(c.pointer(t0 + 310 * MS, run(8192)), Ok(4096 + 480));
        // Only once: no second suspend, and a second resume is refused.
        // 590 ms later: 28 320 frames more.
        assert_eq!(c.pointer(t0 + 900 * MS, run(8192 + 28_800)), Ok(4096 + 480 + 28_320));
        assert_eq!(c.resume(t0 + 900 * MS, run(0)), Err(Errno(libc::EBADFD)));
        // Every frame was played exactly once, in order.
        let played = std::fs::read(&rec_path).unwrap();
        let frames = (4096 + 480 + 28_320) * 4;
        assert_eq!(played.len(), frames);
        let expected: Vec<u8> = (0..frames).map(|i| buf[i % buf.len()]).collect();
        assert!(played == expected);
    }

    #[test]
    fn suspend_keeps_the_buffer_and_resume_restores_prepared() {
        let mut buf = vec![0u8; 1024 * 4];
        let mut c = suspending_card(Direction::Playback, 0, None);
        c.sw_params(0, 256, 1024, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 1024, period_frames: 256 };
        let t0 = 1_000_000_000;
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        c.start(t0, IoView::new(1024, sys::SND_PCM_STATE_RUNNING)).unwrap();
        // Stopped and prepared again before the suspend: a prepared stream is suspended too.
        c.stop(t0 + 10 * MS, IoView::new(1024, sys::SND_PCM_STATE_RUNNING));
        c.prepare(t0 + 10 * MS, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        let prepared = IoView::new(512, sys::SND_PCM_STATE_PREPARED);
        assert_eq!(c.poll_ready(t0 + 100 * MS, prepared), Ok(Readiness::Error));
        assert_eq!(c.asleep().map(|s| (s.host_state, s.was_running)), Some((sys::SND_PCM_STATE_PREPARED, false)));
        // suspend_ms 0: resume works at once and gives PREPARED back, position untouched.
        assert_eq!(c.resume(t0 + 100 * MS, prepared), Ok(sys::SND_PCM_STATE_PREPARED));
        assert_eq!(c.pointer(t0 + 200 * MS, prepared), Ok(0));
    }

    #[test]
    fn prepare_ends_a_suspension_and_stopped_streams_are_not_suspended() {
        let mut buf = vec![0u8; 1024 * 4];
        let area = Area { base: buf.as_mut_ptr(), frames: 1024, period_frames: 256 };
        let t0 = 1_000_000_000;
        let run = IoView::new(1024, sys::SND_PCM_STATE_RUNNING);

        // Giving up on the resume: prepare from SUSPENDED starts afresh, no second suspend.
        let mut c = suspending_card(Direction::Playback, 10_000, None);
        c.sw_params(0, 256, 1024, 1 << 30).unwrap();
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        c.start(t0, run).unwrap();
        assert_eq!(c.pointer(t0 + 101 * MS, run), Err(PointerError::Suspended));
        c.prepare(t0 + 120 * MS, area, IoView::new(1024, sys::SND_PCM_STATE_SUSPENDED)).unwrap();
        assert_eq!(c.asleep(), None);
        c.start(t0 + 120 * MS, run).unwrap();
        assert_eq!(c.pointer(t0 + 130 * MS, run), Ok(480));

        // A stream stopped (SETUP) when the moment passes is not suspended later.
        let mut c = suspending_card(Direction::Playback, 200, None);
        c.sw_params(0, 256, 1024, 1 << 30).unwrap();
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        c.start(t0, run).unwrap();
        c.stop(t0 + 10 * MS, run);
        c.stop(t0 + 150 * MS, IoView::new(1024, sys::SND_PCM_STATE_SETUP));
        c.prepare(t0 + 160 * MS, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        c.start(t0 + 160 * MS, run).unwrap();
        assert_eq!(c.pointer(t0 + 170 * MS, run), Ok(480));
        assert_eq!(c.poll_ready(t0 + 171 * MS, run).map(|r| r != Readiness::Error), Ok(true));
    }

    #[test]
    fn capture_suspend_records_until_its_moment() {
        let mut buf = vec![0u8; 8192 * 4];
        let mut c = suspending_card(Direction::Capture, 50, None);
        c.sw_params(0, 256, 8192, 1 << 30).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames: 8192, period_frames: 256 };
        let run = IoView::new(0, sys::SND_PCM_STATE_RUNNING);
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        let t0 = 1_000_000_000;
        c.start(t0, run).unwrap();
        assert_eq!(c.pointer(t0 + 120 * MS, run), Err(PointerError::Suspended));
        assert_eq!(c.hw_frames, 4800);
        assert_eq!(c.resume(t0 + 160 * MS, run), Ok(sys::SND_PCM_STATE_RUNNING));
        assert_eq!(c.pointer(t0 + 170 * MS, run), Ok(4800 + 480));
    }

    /// A playback card on `buf` (frames of 4 bytes, period 256) with `cfg`, recording to
    /// `rec` if given, prepared with sw_params avail_min 256, stop at the buffer, `boundary`.
    fn hw_card(cfg: Config, buf: &mut [u8], rec: Option<File>, boundary: u64) -> (Card, Area) {
        let frames = (buf.len() / 4) as u64;
        let mut c = Card::new(cfg, Direction::Playback, TimerFd::new().unwrap(), rec, None);
        c.sw_params(0, 256, frames, boundary).unwrap();
        let area = Area { base: buf.as_mut_ptr(), frames, period_frames: 256 };
        c.prepare(0, area, IoView::new(0, sys::SND_PCM_STATE_SETUP)).unwrap();
        (c, area)
    }

    fn run(appl: u64) -> IoView {
        IoView::new(appl, sys::SND_PCM_STATE_RUNNING)
    }

    /// 48 kHz: the nanosecond at which the clock reaches `frames` after the start at `T0`.
    fn at(frames: u64) -> u64 {
        T0 + Clock::new(48_000, 0.0).ns_for(frames)
    }

    const T0: u64 = 1_000_000_000;

    /// Distinct bytes for every frame of a 4-byte-frame buffer (never all zero).
    fn pattern(frames: usize) -> Vec<u8> {
        (0..frames as u32).flat_map(|i| (i.wrapping_mul(2_654_435_761) | 1).to_le_bytes()).collect()
    }

    #[test]
    fn fifo_plays_the_fetched_copy_and_counts_late_rewrites_only() {
        let dir = tempfile::tempdir().unwrap();
        let rec_path = dir.path().join("rec.raw");
        let mut buf = pattern(4096);
        let original = buf.clone();
        let cfg = Config { fifo_frames: 256, ..Config::default() };
        let (mut c, _) = hw_card(cfg, &mut buf, Some(File::create(&rec_path).unwrap()), 1 << 30);
        // The application has filled the buffer; the start fetches frames [0, 256).
        c.start(T0, run(4096)).unwrap();
        assert_eq!(c.fetched_end, 256);
        // Frames 0 and 100..110 (fetched: two runs) and 1000..1010 (not fetched yet) are rewritten (an
        // mmap writer can; a rewind + write is the usual way).
        for f in (0..1).chain(100..110).chain(1000..1010) {
            buf[f * 4..f * 4 + 4].copy_from_slice(&[0xee; 4]);
        }
        assert_eq!(c.pointer(at(480), run(4096)), Ok(480));
        assert_eq!(c.fetched_end, 480 + 256);
        let s = c.stats;
        assert_eq!((s.fifo_violations, s.fifo_violation_frames, s.rewinds, s.rewind_violations), (2, 11, 0, 0));
        assert_eq!(c.pointer(at(1440), run(4096)), Ok(1440));
        assert_eq!((c.stats.fifo_violations, c.stats.fifo_violation_frames, c.stats.frames_played), (2, 11, 1440));
        // The card played the fetched (old) frames 0 and 100..110 and the rewritten 1000..1010.
        let played = std::fs::read(&rec_path).unwrap();
        assert_eq!(played.len(), 1440 * 4);
        assert_eq!(played[..1000 * 4], original[..1000 * 4]);
        assert!(played[1000 * 4..1010 * 4].iter().all(|&b| b == 0xee));
        assert_eq!(played[1010 * 4..], original[1010 * 4..1440 * 4]);
    }

    #[test]
    fn fifo_zero_plays_the_buffer_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let rec_path = dir.path().join("rec.raw");
        let mut buf = pattern(4096);
        let (mut c, _) = hw_card(Config::default(), &mut buf, Some(File::create(&rec_path).unwrap()), 1 << 30);
        c.start(T0, run(4096)).unwrap();
        buf[100 * 4..101 * 4].copy_from_slice(&[0xee; 4]);
        assert_eq!(c.pointer(at(480), run(4096)), Ok(480));
        assert_eq!(c.stats, Stats { frames_played: 480, ..Stats::default() });
        assert_eq!(std::fs::read(&rec_path).unwrap(), buf[..480 * 4]);
        assert!(c.fetched.is_empty());
    }

    #[test]
    fn rewinds_count_as_violations_unless_allowed_and_never_into_the_fifo() {
        for allowed in [false, true] {
            let mut buf = pattern(4096);
            let cfg = Config { fifo_frames: 256, rewind: allowed, ..Config::default() };
            let (mut c, _) = hw_card(cfg, &mut buf, None, 1 << 30);
            c.start(T0, run(4096)).unwrap();
            assert_eq!(c.pointer(at(480), run(4096)), Ok(480));
            // Back to 2000: beyond play position 480 + fifo 256, so only the rewind rule applies.
            assert_eq!(c.pointer(at(500), run(2000)), Ok(500));
            let s = c.stats;
            assert_eq!((s.rewinds, s.rewind_violations, s.fifo_violations), (1, u64::from(!allowed), 0));
            // Seen at an mmap commit too (alsa-lib calls `transfer` before it moves appl_ptr):
            // back to 600, below 500 + 256, into fetched frames. Forward again is no rewind.
            c.mmap_commit(at(510), run(600));
            c.mmap_commit(at(520), run(3000));
            assert_eq!(c.pointer(at(530), run(3100)), Ok(530));
            let s = c.stats;
            assert_eq!((s.rewinds, s.rewind_violations, s.fifo_violations), (2, 2 * u64::from(!allowed), 1));
        }
    }

    #[test]
    fn rewind_detection_unwraps_appl_across_the_boundary() {
        // A 1024-frame buffer and a boundary of 4096: the writer stays 1000 frames ahead of the
        // clock while alsa-lib's appl_ptr wraps from 4095 to 0.
        let mut buf = pattern(1024);
        let (mut c, _) = hw_card(Config::default(), &mut buf, None, 4096);
        c.start(T0, run(1000)).unwrap();
        for clock in (100..=6000).step_by(100) {
            let appl = (clock + 1000) % 4096;
            assert_eq!(c.pointer(at(clock), run(appl)), Ok(clock % 4096), "clock {clock}");
        }
        assert_eq!(c.stats.rewinds, 0);
        // A rewind across the wrap: 6050 + 1000 = 7050 (wrapped 2954) back to 7000 (2904).
        assert_eq!(c.pointer(at(6050), run(7050 % 4096)), Ok(6050 % 4096));
        assert_eq!(c.pointer(at(6060), run(7000 % 4096)), Ok(6060 % 4096));
        assert_eq!((c.stats.rewinds, c.stats.rewind_violations), (1, 1));
    }

    #[test]
    fn batch_pointer_moves_in_periods_and_xruns_on_the_real_clock() {
        let mut buf = pattern(1024);
        let cfg = Config { batch: true, ..Config::default() };
        let (mut c, _) = hw_card(cfg, &mut buf, None, 1 << 30);
        c.sw_params(0, 100, 1024, 1 << 30).unwrap();
        c.prepare(0, Area { base: buf.as_mut_ptr(), frames: 1024, period_frames: 256 }, run(0)).unwrap();
        c.start(T0, run(1024)).unwrap();
        assert_eq!(c.pointer(at(200), run(1024)), Ok(0));
        // avail_min 100: the real clock has 200 frames room, alsa-lib would see 0: not ready.
        assert_eq!(c.poll_ready(at(200), run(1024)), Ok(Readiness::Wait));
        assert_eq!(c.poll_ready(at(256), run(1024)), Ok(Readiness::Ready));
        assert_eq!(c.pointer(at(480), run(1024)), Ok(256));
        assert_eq!(c.pointer(at(600), run(1100)), Ok(512));
        // The card plays by the real clock: 600 frames so far.
        assert_eq!(c.stats.frames_played, 600);
        // 1110 > appl 1100 on the real clock is an underrun, though whole periods say 1024.
        assert_eq!(c.pointer(at(1110), run(1100)), Err(PointerError::Xrun));
        assert_eq!(c.hw_frames, 1100);

        // A drain ends at the last written frame, not at a period boundary.
        c.prepare(0, Area { base: buf.as_mut_ptr(), frames: 1024, period_frames: 256 }, run(0)).unwrap();
        c.start(T0, run(1024)).unwrap();
        assert_eq!(c.pointer(at(700), run(1100)), Ok(512));
        let drain = IoView::new(1100, sys::SND_PCM_STATE_DRAINING);
        assert_eq!(c.pointer(at(1000), drain), Ok(768));
        assert_eq!(c.pointer(at(1200), drain), Ok(1100));
    }

    #[test]
    fn batch_rewind_below_the_real_position_is_a_fifo_violation() {
        // alsa-lib only knows the rounded pointer, so it lets a writer rewind into frames the
        // card has already played: with `fifo 0` that is a rewind below the play position.
        let mut buf = pattern(1024);
        let cfg = Config { batch: true, rewind: true, ..Config::default() };
        let (mut c, _) = hw_card(cfg, &mut buf, None, 1 << 30);
        c.start(T0, run(1024)).unwrap();
        assert_eq!(c.pointer(at(400), run(1024)), Ok(256));
        c.mmap_commit(at(410), run(300));
        let s = c.stats;
        assert_eq!((s.rewinds, s.rewind_violations, s.fifo_violations), (1, 0, 1));
    }

    #[test]
    fn stats_file_holds_the_counts_and_adds_up_over_cards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats");
        for round in 1..=2u64 {
            let mut buf = pattern(4096);
            let cfg = Config { stats_file: Some(path.clone()), ..Config::default() };
            let (mut c, _) = hw_card(cfg, &mut buf, None, 1 << 30);
            c.start(T0, run(4096)).unwrap();
            assert_eq!(c.pointer(at(480), run(4096)), Ok(480));
            assert_eq!(c.pointer(at(490), run(3000)), Ok(490));
            // Written at the violation already, before the close.
            let mid = Stats::parse(&std::fs::read_to_string(&path).unwrap());
            assert_eq!(mid.rewind_violations, round);
            drop(c);
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(
                text,
                format!(
                    "fifo_violations 0\nfifo_violation_frames 0\nrewinds {round}\nrewind_violations {round}\n\
                     frames_played {}\n",
                    490 * round
                )
            );
        }
        assert_eq!(
            Stats::parse("rewinds 3\njunk\nfifo_violations x\nframes_played 7 \n"),
            Stats { rewinds: 3, frames_played: 7, ..Stats::default() }
        );
    }
}

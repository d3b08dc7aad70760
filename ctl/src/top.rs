//! `shmixctl top`: a live view of the streams and the device's levels in plain ANSI, refreshed
//! every interval; `q` (or Ctrl-C, Esc) quits and restores the terminal. Runs in `shmixctl`.
//! RT: no.

use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

use anyhow::bail;
use shmix_shared::control::{self, Reply, Request, Stats, StreamInfo};

use crate::client::Client;

/// Width of a level meter in characters.
const METER_CHARS: usize = 24;
/// The meter's floor.
const METER_FLOOR_DB: f64 = -60.0;

/// The terminal in raw mode (no echo, no line buffering) on the alternate screen while alive.
struct RawTerm {
    saved: Option<Termios>,
}

impl RawTerm {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            raw.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
            raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 0;
            raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
            let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        }
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Self { saved }
    }
}

impl Drop for RawTerm {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, t);
        }
    }
}

/// Waits up to `d` for a key; true when it asks to quit (or stdin is gone).
fn quit_key(d: Duration) -> bool {
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(d.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::NONE);
    if !matches!(poll(&mut fds, ms), Ok(n) if n > 0) {
        return false;
    }
    let rev = fds[0].revents().unwrap_or(PollFlags::empty());
    if !rev.contains(PollFlags::POLLIN) {
        return rev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL);
    }
    let mut buf = [0u8; 64];
    match nix::unistd::read(&stdin, &mut buf) {
        Ok(0) | Err(_) => true, // stdin closed
        Ok(n) => buf[..n].iter().any(|&b| matches!(b, b'q' | b'Q' | 3 | 27)),
    }
}

fn meter(level: f32) -> String {
    let db = control::volume_to_db(level);
    let frac = if db.is_finite() { ((db - METER_FLOOR_DB) / -METER_FLOOR_DB).clamp(0.0, 1.0) } else { 0.0 };
    let n = (frac * METER_CHARS as f64).round() as usize;
    let text = if db.is_finite() { format!("{db:6.1} dB") } else { "  -inf dB".to_string() };
    format!("[{}{}] {text}", "#".repeat(n), " ".repeat(METER_CHARS - n))
}

fn render(stats: &Stats, list: &[StreamInfo]) -> String {
    let d = &stats.device;
    let cpu = if stats.uptime_ns > 0 { stats.mix_cpu_ns as f64 * 100.0 / stats.uptime_ns as f64 } else { 0.0 };
    let mut s = String::from("\x1b[H\x1b[2J");
    s.push_str(&format!(
        "shmixctl top - device {} {} Hz {} ch, period {} | streams {} clients {}   (q quits)\r\n\
         cycles {} | device xruns {} | wakeups sent {} skipped {} | mix thread CPU {cpu:.2}%\r\n",
        d.format.name(),
        d.rate,
        d.channels,
        d.period_frames,
        stats.streams,
        stats.clients,
        stats.cycles,
        stats.device_xruns,
        stats.wakeups_sent,
        stats.wakeups_skipped,
    ));
    s.push_str(&format!(
        "master  {:>4.0}%{}   capture {:>4.0}%{}\r\n",
        f64::from(stats.master_volume) * 100.0,
        if stats.master_muted { " MUTED" } else { "" },
        f64::from(stats.capture_volume) * 100.0,
        if stats.capture_muted { " MUTED" } else { "" },
    ));
    for (i, &p) in stats.peaks.iter().enumerate() {
        s.push_str(&format!("  ch{i:<2} {}\r\n", meter(p)));
    }
    s.push_str("\r\n");
    s.push_str(&format!(
        "{:>4} {:>7} {:<15} {:<8} {:<14} {:>9} {:>5} {:>6} {:<9} {}\r\n",
        "ID", "PID", "PROGRAM", "DIR", "FORMAT", "LATENCY", "XRUNS", "VOL", "STATE", "LEVEL"
    ));
    for st in list {
        let p = &st.params;
        let fmt = format!("{} {:.1}k/{}", p.format.name(), f64::from(p.rate) / 1000.0, p.channels);
        let vol = if st.muted { "muted".to_string() } else { format!("{:.0}%", f64::from(st.volume) * 100.0) };
        s.push_str(&format!(
            "{:>4} {:>7} {:<15} {:<8} {:<14} {:>6.1} ms {:>5} {:>6} {:<9} {}\r\n",
            st.id,
            st.pid,
            shmix_shared::text::escape_controls(&st.name),
            match st.direction {
                shmix_shared::Direction::Playback => "playback",
                shmix_shared::Direction::Capture => "capture",
                shmix_shared::Direction::Monitor => "monitor",
            },
            fmt,
            f64::from(st.latency_frames) * 1000.0 / f64::from(p.rate.max(1)),
            st.xruns,
            vol,
            st.state.name(),
            meter(st.peak),
        ));
    }
    if list.is_empty() {
        s.push_str("(no streams)\r\n");
    }
    s
}

/// Runs the live view until `q`.
///
/// # Errors
/// The connection failed.
pub fn run(c: &Client, interval: Duration) -> anyhow::Result<()> {
    let _term = RawTerm::enter();
    loop {
        let t0 = Instant::now();
        let Reply::Stats(stats) = c.call(Request::Stats)? else { bail!("unexpected reply to Stats") };
        let Reply::Streams(list) = c.call(Request::List)? else { bail!("unexpected reply to List") };
        print!("{}", render(&stats, &list));
        let _ = std::io::stdout().flush();
        if quit_key(interval.saturating_sub(t0.elapsed())) {
            return Ok(());
        }
    }
}

//! `shmixctl top`: a live view of the default device's levels and of the streams, grouped by
//! device (each device's `devices` row, its rates measured between two refreshes, then its
//! streams), in plain ANSI, refreshed every interval; `q` (or Ctrl-C, Esc) quits and restores
//! the terminal. Runs in `shmixctl`. RT: no.

use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

use anyhow::bail;
use shmix_shared::control::{self, DeviceInfo, Reply, Request, Stats, StreamInfo};

use crate::client::Client;
use crate::devices::{self, DeviceRow};

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

fn stream_row(st: &StreamInfo) -> String {
    let p = &st.params;
    let fmt = format!("{} {:.1}k/{}", p.format.name(), f64::from(p.rate) / 1000.0, p.channels);
    let vol = if st.muted { "muted".to_string() } else { format!("{:.0}%", f64::from(st.volume) * 100.0) };
    format!(
        "{:>4} {:>7} {:<15} {:<8} {:<14} {:>6.1} ms {:>5} {:>6} {:<9} {}{}\r\n",
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
        if st.pinned { " pinned" } else { "" },
    )
}

fn render(stats: &Stats, devs: &[DeviceRow], list: &[StreamInfo]) -> String {
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
    s.push_str(&devices::header_text());
    s.push_str("   (* default, + preferred)\r\n");
    s.push_str(&format!(
        "{:>4} {:>7} {:<15} {:<8} {:<14} {:>9} {:>5} {:>6} {:<9} {}\r\n",
        "ID", "PID", "PROGRAM", "DIR", "FORMAT", "LATENCY", "XRUNS", "VOL", "STATE", "LEVEL"
    ));
    for d in devs {
        s.push_str(&devices::row_text(d));
        s.push_str("\r\n");
        for st in list.iter().filter(|st| st.device == d.info.name) {
            s.push_str(&stream_row(st));
        }
    }
    // Streams on no listed device (between a device's removal and the listing): shown, not lost.
    let mut stray = list.iter().filter(|st| !devs.iter().any(|d| d.info.name == st.device)).peekable();
    if stray.peek().is_some() {
        s.push_str("   ? (on no listed device)\r\n");
        for st in stray {
            s.push_str(&stream_row(st));
        }
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
    let mut before: Vec<DeviceInfo> = Vec::new();
    loop {
        let t0 = Instant::now();
        let Reply::Stats(stats) = c.call(Request::Stats)? else { bail!("unexpected reply to Stats") };
        let now = devices::list(c)?;
        let Reply::Streams(list) = c.call(Request::List)? else { bail!("unexpected reply to List") };
        print!("{}", render(&stats, &devices::rows(&before, &now), &list));
        before = now;
        let _ = std::io::stdout().flush();
        if quit_key(interval.saturating_sub(t0.elapsed())) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmix_shared::control::StreamState;
    use shmix_shared::Direction;

    fn stream(id: u32, device: &str, pinned: bool) -> StreamInfo {
        StreamInfo {
            id,
            pid: 100 + id,
            name: format!("prog{id}"),
            direction: Direction::Playback,
            device: device.into(),
            pinned,
            params: devices::tests::dev(0, "x").params,
            state: StreamState::Running,
            latency_frames: 480,
            xruns: 0,
            volume: 1.0,
            muted: false,
            peak: 0.5,
            copied_frames: 0,
            zero_copy_frames: 0,
        }
    }

    #[test]
    fn streams_are_grouped_under_their_device() {
        let stats = Stats {
            device: devices::tests::dev(0, "x").params,
            clients: 3,
            streams: 3,
            uptime_ns: 1,
            cycles: 77,
            frames_mixed: 0,
            fastpath_frames: 0,
            device_xruns: 0,
            device_suspends: 0,
            stream_underruns: 0,
            wakeups_sent: 0,
            wakeups_skipped: 0,
            copied_frames: 0,
            zero_copy_frames: 0,
            mix_cpu_ns: 0,
            master_volume: 1.0,
            master_muted: false,
            capture_volume: 1.0,
            capture_muted: false,
            peaks: vec![0.5, 0.5],
            device_lost: 0,
            device_present: true,
            device_reopened: 0,
        };
        let devs = devices::rows(&[], &[devices::tests::dev(0, "card_a"), devices::tests::dev(1, "card_b")]);
        let list = [stream(1, "card_b", true), stream(2, "card_a", false), stream(3, "gone", false)];
        let screen = render(&stats, &devs, &list);
        let lines: Vec<&str> = screen.lines().collect();
        let at = |needle: &str| {
            lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {screen}"))
        };
        assert!(at("cycles 77") < at(" card_a "));
        assert!(at(" card_a ") < at("prog2") && at("prog2") < at(" card_b "), "{screen}");
        assert!(at(" card_b ") < at("prog1") && lines[at("prog1")].ends_with(" pinned"), "{screen}");
        assert!(at("on no listed device") < at("prog3"), "{screen}");
    }
}

//! `shmixctl`: lists the streams of a running shmixd, sets volumes and mutes (per stream, the
//! playback mix `master`, the capture path `capture`), prints statistics and shows a live view
//! (`top`). Talks to the daemon over its socket with a control handshake
//! (`shmix_shared::control`). Runs as a command-line program. RT: no.

mod client;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use shmix_shared::control::{self, MuteOp, Reply, Request, Stats, StreamInfo, Target};
use shmix_shared::text::escape_controls;
use shmix_shared::{AudioParams, Direction};

use crate::client::Client;

/// Control the shmix sound server.
#[derive(Debug, Parser)]
#[command(name = "shmixctl", version, about)]
struct Cli {
    /// Daemon socket [default: $SHMIX_SOCKET, else $XDG_RUNTIME_DIR/shmix/socket, else
    /// /run/shmix/socket (a --system daemon) when only that one exists]
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Print JSON (stable field names) instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// List every stream: id, program, pid, direction, format, rate, channels, buffer, period,
    /// latency, xruns, volume, mute, peak level
    List,
    /// Set the volume of a stream, of `master` (the playback mix) or of `capture`
    Volume {
        /// Stream id (from `list`), `master` or `capture`
        id: String,
        /// `50%` (of full amplitude), `-6dB`, `-6.02dB`, `-inf dB`, or a factor `0.5`; at most
        /// 100% (0 dB)
        #[arg(allow_hyphen_values = true)]
        level: String,
    },
    /// Mute, unmute or toggle a stream, `master` or `capture`
    Mute {
        /// Stream id (from `list`), `master` or `capture`
        id: String,
        /// What to do
        #[arg(value_enum)]
        state: MuteArg,
    },
    /// Daemon statistics: cycles, xruns, wakeups, copied and zero-copy frames, mix thread CPU
    Stats,
    /// Live view of the streams and device levels; `q` quits
    Top {
        /// Refresh interval in milliseconds
        #[arg(long, value_name = "MS", default_value_t = 200)]
        interval_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MuteArg {
    On,
    Off,
    Toggle,
}

fn parse_target(s: &str) -> anyhow::Result<Target> {
    match s {
        "master" => Ok(Target::Master),
        "capture" => Ok(Target::Capture),
        _ => s
            .parse::<u32>()
            .map(Target::Stream)
            .with_context(|| format!("'{s}': expected a stream id (see `shmixctl list`), `master` or `capture`")),
    }
}

fn target_name(t: Target) -> String {
    match t {
        Target::Stream(id) => id.to_string(),
        Target::Master => "master".into(),
        Target::Capture => "capture".into(),
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Playback => "playback",
        Direction::Capture => "capture",
        Direction::Monitor => "monitor",
    }
}

/// Decibels rounded for JSON (`null` for silence).
fn db_json(v: f32) -> Value {
    let db = control::volume_to_db(v);
    if db.is_finite() {
        json!((db * 100.0).round() / 100.0)
    } else {
        Value::Null
    }
}

fn db_text(v: f32) -> String {
    let db = control::volume_to_db(v);
    if db.is_finite() {
        format!("{db:.2} dB")
    } else {
        "-inf dB".into()
    }
}

fn volume_json(v: f32, muted: bool) -> Value {
    json!({
        "volume": v,
        "volume_percent": (f64::from(v) * 10000.0).round() / 100.0,
        "volume_db": db_json(v),
        "muted": muted,
    })
}

fn volume_text(v: f32, muted: bool) -> String {
    format!("{:.0}% ({}){}", f64::from(v) * 100.0, db_text(v), if muted { " muted" } else { "" })
}

fn params_json(p: &AudioParams) -> Value {
    json!({
        "format": p.format.name(),
        "rate": p.rate,
        "channels": p.channels,
        "period_frames": p.period_frames,
        "buffer_frames": p.buffer_frames,
    })
}

fn stream_json(s: &StreamInfo) -> Value {
    let p = &s.params;
    let mut v = json!({
        "id": s.id,
        "pid": s.pid,
        "name": s.name,
        "direction": direction_name(s.direction),
        "format": p.format.name(),
        "rate": p.rate,
        "channels": p.channels,
        "buffer_frames": p.buffer_frames,
        "period_frames": p.period_frames,
        "state": s.state.name(),
        "latency_frames": s.latency_frames,
        "latency_ms": (f64::from(s.latency_frames) * 1e5 / f64::from(p.rate.max(1))).round() / 100.0,
        "xruns": s.xruns,
        "peak": s.peak,
        "peak_db": db_json(s.peak),
        "copied_frames": s.copied_frames,
        "zero_copy_frames": s.zero_copy_frames,
    });
    if let (Value::Object(m), Value::Object(vol)) = (&mut v, volume_json(s.volume, s.muted)) {
        m.extend(vol);
    }
    v
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "device": params_json(&s.device),
        "clients": s.clients,
        "streams": s.streams,
        "uptime_s": s.uptime_ns as f64 / 1e9,
        "cycles": s.cycles,
        "frames_mixed": s.frames_mixed,
        "fastpath_frames": s.fastpath_frames,
        "device_xruns": s.device_xruns,
        "device_suspends": s.device_suspends,
        "device_lost": s.device_lost,
        "device_reopened": s.device_reopened,
        "device_present": s.device_present,
        "stream_underruns": s.stream_underruns,
        "wakeups_sent": s.wakeups_sent,
        "wakeups_skipped": s.wakeups_skipped,
        "copied_frames": s.copied_frames,
        "zero_copy_frames": s.zero_copy_frames,
        "mix_cpu_ns": s.mix_cpu_ns,
        "mix_cpu_percent": if s.uptime_ns > 0 { (s.mix_cpu_ns as f64 * 1e4 / s.uptime_ns as f64).round() / 100.0 } else { 0.0 },
        "master": volume_json(s.master_volume, s.master_muted),
        "capture": volume_json(s.capture_volume, s.capture_muted),
        "peaks": s.peaks,
        "peaks_db": s.peaks.iter().map(|&p| db_json(p)).collect::<Vec<_>>(),
    })
}

/// The `list` table.
pub(crate) fn list_text(list: &[StreamInfo]) -> String {
    let mut out = format!(
        "{:>4} {:>7} {:<15} {:<8} {:<9} {:>6} {:>2} {:>6} {:>6} {:>9} {:>5} {:<20} {:>9} {}\n",
        "ID",
        "PID",
        "PROGRAM",
        "DIR",
        "FORMAT",
        "RATE",
        "CH",
        "BUFFER",
        "PERIOD",
        "LATENCY",
        "XRUNS",
        "VOLUME",
        "PEAK",
        "STATE"
    );
    for s in list {
        let p = &s.params;
        out.push_str(&format!(
            "{:>4} {:>7} {:<15} {:<8} {:<9} {:>6} {:>2} {:>6} {:>6} {:>6.1} ms {:>5} {:<20} {:>9} {}\n",
            s.id,
            s.pid,
            escape_controls(&s.name),
            direction_name(s.direction),
            p.format.name(),
            p.rate,
            p.channels,
            p.buffer_frames,
            p.period_frames,
            f64::from(s.latency_frames) * 1000.0 / f64::from(p.rate.max(1)),
            s.xruns,
            volume_text(s.volume, s.muted),
            db_text(s.peak),
            s.state.name()
        ));
    }
    if list.is_empty() {
        out.push_str("(no streams)\n");
    }
    out
}

fn stats_text(s: &Stats) -> String {
    let d = &s.device;
    let cpu_pct = if s.uptime_ns > 0 { s.mix_cpu_ns as f64 * 100.0 / s.uptime_ns as f64 } else { 0.0 };
    let peaks: Vec<String> = s.peaks.iter().map(|&p| db_text(p)).collect();
    format!(
        "device           {} {} Hz {} ch, period {} frames, buffer {} frames\n\
         uptime           {:.1} s\n\
         clients          {}\n\
         streams          {}\n\
         cycles           {}\n\
         frames mixed     {} (fast path {})\n\
         device xruns     {} (suspends {})\n\
         device state     {} (lost {}, reopened {})\n\
         stream underruns {}\n\
         wakeups          sent {}, skipped {}\n\
         frames copied    {}\n\
         frames zero-copy {}\n\
         mix thread CPU   {:.3} s ({:.2}%)\n\
         master           {}\n\
         capture          {}\n\
         peaks            {}\n",
        d.format.name(),
        d.rate,
        d.channels,
        d.period_frames,
        d.buffer_frames,
        s.uptime_ns as f64 / 1e9,
        s.clients,
        s.streams,
        s.cycles,
        s.frames_mixed,
        s.fastpath_frames,
        s.device_xruns,
        s.device_suspends,
        if s.device_present { "present" } else { "gone: clients wait for it" },
        s.device_lost,
        s.device_reopened,
        s.stream_underruns,
        s.wakeups_sent,
        s.wakeups_skipped,
        s.copied_frames,
        s.zero_copy_frames,
        s.mix_cpu_ns as f64 / 1e9,
        cpu_pct,
        volume_text(s.master_volume, s.master_muted),
        volume_text(s.capture_volume, s.capture_muted),
        peaks.join(", "),
    )
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let path = client::socket_path(cli.socket.as_deref());
    let c = Client::connect(&path)?;
    match cli.cmd {
        Cmd::List => {
            let Reply::Streams(list) = c.call(Request::List)? else { bail!("unexpected reply to List") };
            if cli.json {
                print_json(&json!({ "streams": list.iter().map(stream_json).collect::<Vec<_>>() }))?;
            } else {
                out(&list_text(&list))?;
            }
        }
        Cmd::Stats => {
            let Reply::Stats(s) = c.call(Request::Stats)? else { bail!("unexpected reply to Stats") };
            if cli.json {
                print_json(&stats_json(&s))?;
            } else {
                out(&stats_text(&s))?;
            }
        }
        Cmd::Volume { id, level } => {
            let target = parse_target(&id)?;
            let volume = control::parse_volume(&level).map_err(anyhow::Error::msg)?;
            let r = c.call(Request::SetVolume { target, volume })?;
            print_change(r, cli.json)?;
        }
        Cmd::Mute { id, state } => {
            let target = parse_target(&id)?;
            let op = match state {
                MuteArg::On => MuteOp::On,
                MuteArg::Off => MuteOp::Off,
                MuteArg::Toggle => MuteOp::Toggle,
            };
            let r = c.call(Request::SetMute { target, op })?;
            print_change(r, cli.json)?;
        }
        Cmd::Top { interval_ms } => {
            if cli.json {
                bail!("top is interactive; use `shmixctl list --json` / `shmixctl stats --json` in scripts");
            }
            top::run(&c, std::time::Duration::from_millis(interval_ms.clamp(20, 10_000)))?;
        }
    }
    Ok(())
}

fn print_change(r: Reply, as_json: bool) -> anyhow::Result<()> {
    let Reply::Volume { target, volume, muted } = r else { bail!("unexpected reply") };
    if as_json {
        let mut v = json!({ "target": target_name(target) });
        if let (Value::Object(m), Value::Object(vol)) = (&mut v, volume_json(volume, muted)) {
            m.extend(vol);
        }
        print_json(&v)?;
    } else {
        out(&format!("{}: {}\n", target_name(target), volume_text(volume, muted)))?;
    }
    Ok(())
}

/// Writes to stdout; a reader that went away (`shmixctl list | head -1`) ends the program
/// quietly, as for other command-line tools, instead of the panic `print!` would raise.
fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmixctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A name with terminal escapes (from a daemon that did not escape it) is printed escaped.
    #[test]
    fn list_text_escapes_control_characters_in_names() {
        use shmix_shared::control::StreamState;
        let info = StreamInfo {
            id: 1,
            pid: 2,
            name: "evil\u{1b}]0;owned\u{7}\r\nfake".into(),
            direction: Direction::Playback,
            params: AudioParams {
                format: shmix_shared::SampleFormat::S16Le,
                rate: 48000,
                channels: 2,
                period_frames: 256,
                buffer_frames: 1024,
            },
            state: StreamState::Running,
            latency_frames: 0,
            xruns: 0,
            volume: 1.0,
            muted: false,
            peak: 0.0,
            copied_frames: 0,
            zero_copy_frames: 0,
        };
        let text = list_text(&[info]);
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\r'), "{text:?}");
        assert!(text.contains("evil\\u{1b}]0;owned\\u{7}\\r\\nfake"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("master").unwrap(), Target::Master);
        assert_eq!(parse_target("7").unwrap(), Target::Stream(7));
        assert!(parse_target("x").is_err());
    }
}

//! `shmixctl`: lists the streams and the devices of a running shmixd, sets volumes and mutes
//! (per stream, the playback mix `master`, the capture path `capture`, of the default device or
//! one named with `--device`), moves streams between devices, changes the default device, prints
//! statistics and shows a live view (`top`). Talks to the daemon over its socket with a control handshake
//! (`shmix_shared::control`). Runs as a command-line program. RT: no.

mod client;
mod devices;
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
    /// latency, xruns, volume, mute, peak level, device (`(pinned)`: it stays on that device;
    /// else it follows the default)
    List,
    /// List the devices (two samples 0.5 s apart): format, rate, channels, state, streams,
    /// latency, wakeups per second, mix thread CPU, xruns; `*` marks the default, `+` the
    /// preferred default
    Devices,
    /// Move a stream to another device; it stays there (no longer follows the default)
    Move {
        /// Stream id (from `list`)
        id: u32,
        /// Device name (from `devices`)
        device: String,
    },
    /// Make a device the default (and the preferred default); the streams that follow the
    /// default move to it
    #[command(name = "default")]
    SetDefault {
        /// Device name (from `devices`)
        device: String,
    },
    /// Set the volume of a stream, of `master` (the playback mix) or of `capture`
    Volume {
        /// Stream id (from `list`), `master` or `capture`
        id: String,
        /// `50%` (of full amplitude), `-6dB`, `-6.02dB`, `-inf dB`, or a factor `0.5`; at most
        /// 100% (0 dB)
        #[arg(allow_hyphen_values = true)]
        level: String,
        /// For `master` and `capture`: this device's instead of the default device's
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
    },
    /// Mute, unmute or toggle a stream, `master` or `capture`
    Mute {
        /// Stream id (from `list`), `master` or `capture`
        id: String,
        /// What to do
        #[arg(value_enum)]
        state: MuteArg,
        /// For `master` and `capture`: this device's instead of the default device's
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
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

/// `target` on the device called `device`, if one is named: `master`/`capture` become that
/// device's ([`Target::DeviceMaster`]/[`Target::DeviceCapture`] with the id `id_of` finds).
fn device_target(
    target: Target,
    device: Option<&str>,
    id_of: impl FnOnce(&str) -> anyhow::Result<u32>,
) -> anyhow::Result<Target> {
    let Some(name) = device else { return Ok(target) };
    Ok(match target {
        Target::Master => Target::DeviceMaster(id_of(name)?),
        Target::Capture => Target::DeviceCapture(id_of(name)?),
        _ => bail!("--device applies to `master` and `capture` only (a stream is moved with `shmixctl move`)"),
    })
}

fn target_name(t: Target) -> String {
    match t {
        Target::Stream(id) => id.to_string(),
        Target::Master | Target::DeviceMaster(_) => "master".into(),
        Target::Capture | Target::DeviceCapture(_) => "capture".into(),
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
        "device": s.device,
        "pinned": s.pinned,
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

/// A stream's device as `list` and `top` print it: its name, `(pinned)` when it stays there.
pub(crate) fn stream_device_text(s: &StreamInfo) -> String {
    let name = if s.device.is_empty() { "-".into() } else { escape_controls(&s.device) };
    if s.pinned {
        format!("{name} (pinned)")
    } else {
        name.into_owned()
    }
}

/// The `list` table.
pub(crate) fn list_text(list: &[StreamInfo]) -> String {
    let mut out = format!(
        "{:>4} {:>7} {:<15} {:<8} {:<9} {:>6} {:>2} {:>6} {:>6} {:>9} {:>5} {:<20} {:>9} {:<9} {}\n",
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
        "STATE",
        "DEVICE"
    );
    for s in list {
        let p = &s.params;
        out.push_str(&format!(
            "{:>4} {:>7} {:<15} {:<8} {:<9} {:>6} {:>2} {:>6} {:>6} {:>6.1} ms {:>5} {:<20} {:>9} {:<9} {}\n",
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
            s.state.name(),
            stream_device_text(s)
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
        Cmd::Devices => {
            let rows = devices::sample(&c)?;
            if cli.json {
                print_json(&Value::Array(rows.iter().map(devices::row_json).collect()))?;
            } else {
                out(&devices::table_text(&rows))?;
            }
        }
        Cmd::Move { id, device } => {
            let list = devices::list(&c)?;
            let d = devices::resolve(&list, &device)?;
            let Reply::Moved { stream, device: moved_to } = c.call(Request::Move { stream: id, device: d.id })? else {
                bail!("unexpected reply to Move")
            };
            let name = devices::name_of(&list, moved_to);
            if cli.json {
                print_json(&json!({ "stream": stream, "device": name, "device_id": moved_to }))?;
            } else {
                out(&format!("stream {stream} -> {}\n", escape_controls(&name)))?;
            }
        }
        Cmd::SetDefault { device } => {
            let list = devices::list(&c)?;
            let d = devices::resolve(&list, &device)?;
            let Reply::Default { device: now } = c.call(Request::SetDefault { device: d.id })? else {
                bail!("unexpected reply to SetDefault")
            };
            let name = devices::name_of(&list, now);
            if cli.json {
                print_json(&json!({ "default": name, "device_id": now }))?;
            } else {
                out(&format!("default: {}\n", escape_controls(&name)))?;
            }
        }
        Cmd::Volume { id, level, device } => {
            let volume = control::parse_volume(&level).map_err(anyhow::Error::msg)?;
            let target = device_target(parse_target(&id)?, device.as_deref(), |n| {
                devices::resolve_by_name(&c, n).map(|d| d.id)
            })?;
            let r = c.call(Request::SetVolume { target, volume })?;
            print_change(r, device.as_deref(), cli.json)?;
        }
        Cmd::Mute { id, state, device } => {
            let target = device_target(parse_target(&id)?, device.as_deref(), |n| {
                devices::resolve_by_name(&c, n).map(|d| d.id)
            })?;
            let op = match state {
                MuteArg::On => MuteOp::On,
                MuteArg::Off => MuteOp::Off,
                MuteArg::Toggle => MuteOp::Toggle,
            };
            let r = c.call(Request::SetMute { target, op })?;
            print_change(r, device.as_deref(), cli.json)?;
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

/// Prints the state after a volume or mute change; `device` is the device named with
/// `--device` (JSON: a `device` key; text: `master (card_b): ...`).
fn print_change(r: Reply, device: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let Reply::Volume { target, volume, muted } = r else { bail!("unexpected reply") };
    if as_json {
        let mut v = json!({ "target": target_name(target) });
        if let (Value::Object(m), Some(d)) = (&mut v, device) {
            m.insert("device".into(), json!(d));
        }
        if let (Value::Object(m), Value::Object(vol)) = (&mut v, volume_json(volume, muted)) {
            m.extend(vol);
        }
        print_json(&v)?;
    } else {
        let on = device.map(|d| format!(" ({})", escape_controls(d))).unwrap_or_default();
        out(&format!("{}{on}: {}\n", target_name(target), volume_text(volume, muted)))?;
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
            device: "card\u{1b}[2J".into(),
            pinned: true,
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
        assert!(text.lines().nth(1).unwrap().ends_with(" card\\u{1b}[2J (pinned)"), "{text}");
        assert!(text.lines().next().unwrap().ends_with(" STATE     DEVICE"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("master").unwrap(), Target::Master);
        assert_eq!(parse_target("7").unwrap(), Target::Stream(7));
        assert!(parse_target("x").is_err());
    }

    #[test]
    fn device_names_master_and_capture_only() {
        let id = |n: &str| if n == "card_b" { Ok(4) } else { bail!("no device '{n}'") };
        assert_eq!(device_target(Target::Master, None, id).unwrap(), Target::Master);
        assert_eq!(device_target(Target::Master, Some("card_b"), id).unwrap(), Target::DeviceMaster(4));
        assert_eq!(device_target(Target::Capture, Some("card_b"), id).unwrap(), Target::DeviceCapture(4));
        assert!(device_target(Target::Master, Some("card_c"), id).unwrap_err().to_string().contains("card_c"));
        assert!(device_target(Target::Stream(1), Some("card_b"), id).unwrap_err().to_string().contains("--device"));
        assert_eq!(target_name(Target::DeviceCapture(4)), "capture");
    }

    #[test]
    fn new_commands_parse() {
        let c = Cli::try_parse_from(["shmixctl", "move", "3", "card_b"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Move { id: 3, ref device } if device == "card_b"));
        let c = Cli::try_parse_from(["shmixctl", "default", "card_b"]).unwrap();
        assert!(matches!(c.cmd, Cmd::SetDefault { ref device } if device == "card_b"));
        let c = Cli::try_parse_from(["shmixctl", "devices", "--json"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Devices) && c.json);
        let c = Cli::try_parse_from(["shmixctl", "volume", "master", "-6dB", "--device", "card_b"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Volume { device: Some(ref d), .. } if d == "card_b"));
        let c = Cli::try_parse_from(["shmixctl", "mute", "capture", "toggle"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Mute { device: None, .. }));
    }
}

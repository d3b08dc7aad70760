//! `shmixd`: command line, startup and shutdown. The main thread becomes the control thread
//! (`server`); each device gets its real-time mix thread (`mix::thread`) and its device
//! manager's thread (`io::manager`), which opens, reopens and closes its playback and capture
//! sides (`control::devices`).
//! Runs on the main thread. RT: no.

use std::io::Write;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Parser;
use log::{error, info};
use shmix_daemon::control::access;
use shmix_daemon::control::devices::{self, DeviceOptions, Unit, MAX_DEVICES};
use shmix_daemon::control::limits::{self, Limits};
use shmix_daemon::control::listen;
use shmix_daemon::control::moves;
use shmix_daemon::control::server::{Outcome, Server};
use shmix_daemon::dsp::DEFAULT_QUALITY;
use shmix_daemon::mix::realtime;
use shmix_shared::eventfd::EventFd;
use shmix_shared::ResampleQuality;
use shmix_shared::SampleFormat;

/// The shmix sound server.
#[derive(Debug, Parser)]
#[command(name = "shmixd", version, about)]
struct Cli {
    /// Socket path [default: $SHMIX_SOCKET, else $XDG_RUNTIME_DIR/shmix/socket; with --system
    /// $SHMIX_SYSTEM_SOCKET, else /run/shmix/socket]. Ignored when systemd passes the socket
    /// (socket activation: LISTEN_FDS)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// System-wide daemon for headless machines: listen on /run/shmix/socket (socket 0660 in
    /// --group; a directory it has to create 0750 in --group) and admit the members of --group
    /// besides the daemon's uid and root
    #[arg(long)]
    system: bool,
    /// The group --system mode admits (a name or a gid)
    #[arg(long, value_name = "NAME", default_value = "audio", requires = "system")]
    group: String,
    /// ALSA PCM to serve; may be given several times (each device gets its own mix thread),
    /// the first is the default [default: every hardware card, hw:N, the first the default]
    #[arg(long, value_name = "PCM")]
    device: Vec<String>,
    /// The preferred default device: the default whenever it is present (a card that comes
    /// back becomes the default again, and the streams that follow the default move to it)
    /// [default: what `shmixctl default` last chose, else the first device]
    #[arg(long, value_name = "PCM")]
    prefer: Option<String>,
    /// Where `shmixctl default` is remembered across restarts [default:
    /// $XDG_STATE_HOME/shmix, else ~/.local/state/shmix; with --system /var/lib/shmix]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Sample format (S16_LE, S24_LE, S32_LE, FLOAT_LE, ...) [default: the device's best]
    #[arg(long, value_parser = parse_format)]
    format: Option<SampleFormat>,
    /// Rate in Hz [default: 48000 if offered]
    #[arg(long)]
    rate: Option<u32>,
    /// Channels [default: 2 if offered]
    #[arg(long)]
    channels: Option<u32>,
    /// Fixed timing: frames per device period, one wakeup per period, the same latency for
    /// every client [default: timer scheduling, the device queue following the lowest latency
    /// the clients ask for; 256 when only --periods is given]
    #[arg(long, value_name = "FRAMES")]
    period: Option<u32>,
    /// Fixed timing: periods per device buffer [default: 4 when --period is given]
    #[arg(long, value_name = "N")]
    periods: Option<u32>,
    /// Timer scheduling: the longest device buffer to ask for, in ms (the device may offer less)
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    max_device_buffer_ms: u32,
    /// Resampling quality for streams whose rate differs from the device's and that ask for no
    /// quality of their own: fast, medium or high [default: medium, THD+N below -100 dB]
    #[arg(long, value_name = "QUALITY", value_parser = parse_quality)]
    resample_quality: Option<ResampleQuality>,
    /// Keep the device's capture side open once the first recorder opened it (else it is closed
    /// after the last capture stream stops)
    #[arg(long)]
    keep_capture_open: bool,
    /// Start even when the device cannot be opened: listen, and keep clients waiting (their
    /// streams hold still) until it appears. Until then the setup clients are converted for is
    /// --format (default S16_LE), --rate (48000), --channels (2), --period and --periods, and the
    /// device is used once it opens with exactly that (and the standard channel map)
    #[arg(long)]
    wait_for_device: bool,
    /// SCHED_FIFO priority for the mix thread
    #[arg(long, default_value_t = 20)]
    rt_priority: i32,
    /// Most connections held at once; past it a new client is refused with the reason
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_CLIENTS)]
    max_clients: usize,
    /// Most streams one client process (by peer pid) may have at once
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_STREAMS_PER_CLIENT)]
    max_streams_per_client: usize,
    /// Most stream shared memory one client process (by peer pid) may have mapped, in MiB
    #[arg(long, value_name = "MIB", default_value_t = limits::DEFAULT_MAX_CLIENT_SHM_MIB, value_parser = limits::parse_mib)]
    max_client_shm: u64,
    /// Most streams one user (by peer uid, over all its processes) may have at once [default:
    /// every stream slot (64); with --system 48, so one user cannot take them all]
    #[arg(long, value_name = "N")]
    max_streams_per_uid: Option<usize>,
    /// Most stream shared memory one user (by peer uid, over all its processes) may have
    /// mapped, in MiB
    #[arg(long, value_name = "MIB", default_value_t = limits::DEFAULT_MAX_UID_SHM_MIB, value_parser = limits::parse_mib)]
    max_uid_shm: u64,
    /// Seconds a new connection has to send its Hello before it is dropped, and then to create
    /// its first stream (unless it is a control connection) [default: 5]
    #[arg(long, value_name = "SECONDS", value_parser = limits::parse_seconds)]
    handshake_timeout: Option<std::time::Duration>,
    /// Stop the device after this many seconds without any stream (an idle daemon then sleeps
    /// until a client comes; the next stream starts it again); 0: never [default: 5]
    #[arg(long, value_name = "SECONDS", value_parser = limits::parse_seconds)]
    idle_stop: Option<std::time::Duration>,
}

/// Fixed timing's period when only --periods is given.
const DEFAULT_PERIOD: u32 = 256;
/// Fixed timing's periods when only --period is given.
const DEFAULT_PERIODS: u32 = 4;
/// `--idle-stop` unless given.
const DEFAULT_IDLE_STOP: std::time::Duration = std::time::Duration::from_secs(5);

fn parse_format(s: &str) -> Result<SampleFormat, String> {
    SampleFormat::from_name(s).ok_or_else(|| format!("unknown sample format '{s}'"))
}

fn parse_quality(s: &str) -> Result<ResampleQuality, String> {
    ResampleQuality::from_name(s).ok_or_else(|| format!("unknown resampling quality '{s}' (fast, medium, high)"))
}

fn eventfd() -> anyhow::Result<EventFd> {
    EventFd::new().context("eventfd")
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    // Socket activation first: nothing may open a descriptor before fd 3 is taken.
    let activated = access::socket_from_systemd()?;
    let group = if cli.system { Some(access::Group::lookup(&cli.group)?) } else { None };
    let socket_path = match (&activated, &cli.socket) {
        (Some((_, path)), _) => path.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) if cli.system => shmix_shared::socket::system_socket_path(),
        (None, None) => shmix_shared::socket::user_socket_path(),
    };
    if activated.is_none() {
        if let Some(g) = &group {
            access::prepare_system_dir(&socket_path, g)?;
        }
        listen::check_socket_path(&socket_path)?;
    }

    let fixed = cli.period.is_some() || cli.periods.is_some();
    let (period, periods) = (cli.period.unwrap_or(DEFAULT_PERIOD), cli.periods.unwrap_or(DEFAULT_PERIODS));
    if period == 0 || periods < 2 {
        return Err(anyhow!("--period must be > 0 and --periods >= 2"));
    }
    if cli.max_device_buffer_ms < 10 {
        return Err(anyhow!("--max-device-buffer-ms must be at least 10"));
    }
    let opts = DeviceOptions {
        format: cli.format,
        rate: cli.rate,
        channels: cli.channels,
        fixed,
        period,
        periods,
        max_device_buffer_ms: cli.max_device_buffer_ms,
        quality: match cli.resample_quality {
            None | Some(ResampleQuality::Default) => DEFAULT_QUALITY,
            Some(q) => q,
        },
        keep_capture_open: cli.keep_capture_open,
        wait_for_device: cli.wait_for_device,
        rt_priority: cli.rt_priority,
        idle_stop: cli.idle_stop.unwrap_or(DEFAULT_IDLE_STOP),
    };
    // Before any thread starts: they inherit the blocked signals, which only the signalfd reads.
    let signals = listen::signal_fd()?;
    let ctl_efd = eventfd()?;
    let units = start_devices(&cli.device, &opts, &ctl_efd)?;

    let (nofile_before, nofile) = limits::raise_nofile();
    // Each client may hold a socket and two wake sockets; keep 64 descriptors for the daemon itself.
    let fit = usize::try_from(nofile.saturating_sub(64) / 3).unwrap_or(usize::MAX).max(1);
    if cli.max_clients > fit {
        log::warn!("--max-clients {} lowered to {fit}: the descriptor limit is {nofile}", cli.max_clients);
    }
    let lim = Limits {
        max_clients: cli.max_clients.clamp(1, fit),
        max_streams_per_client: cli.max_streams_per_client.max(1),
        max_client_shm: cli.max_client_shm,
        max_streams_per_uid: cli
            .max_streams_per_uid
            .unwrap_or(if cli.system {
                limits::DEFAULT_MAX_STREAMS_PER_UID_SYSTEM
            } else {
                shmix_daemon::mix::MAX_STREAMS
            })
            .max(1),
        max_uid_shm: cli.max_uid_shm,
        handshake_timeout: cli.handshake_timeout.unwrap_or(Limits::default().handshake_timeout),
    };
    info!(
        "limits: {} clients, {} streams and {} MiB per client process, {} streams and {} MiB per uid, handshake {} s, \
         descriptors {nofile} (soft limit was {nofile_before})",
        lim.max_clients,
        lim.max_streams_per_client,
        lim.max_client_shm >> 20,
        lim.max_streams_per_uid,
        lim.max_uid_shm >> 20,
        lim.handshake_timeout.as_secs_f64()
    );
    let (listen, how) = match activated {
        Some((fd, _)) => (fd, " (socket activation)"),
        None => {
            let fd = listen::listen(&socket_path)?;
            if let Some(g) = &group {
                access::restrict_system_socket(&socket_path, g)?;
            }
            (fd, "")
        }
    };
    let policy = match group {
        Some(g) => {
            let uid = access::Policy::user().uid;
            let who = if uid == 0 { "root".to_string() } else { format!("uid {uid} and root") };
            info!("system mode: admitting {who}, and members of group '{}' (gid {})", g.name, g.gid);
            access::Policy::system(g)
        }
        None => access::Policy::user(),
    };
    // The first device (the default) on the listening line, as with one device; the others after.
    info!("shmixd listening on {}{how} | {}", socket_path.display(), units[0].describe());
    for u in &units[1..] {
        info!("also serving {}", u.describe());
    }
    // Every thread's stack, the devices' buffers and the code exist now: lock them.
    realtime::lock_memory();

    let state_file =
        cli.state_dir.clone().or_else(|| default_state_dir(cli.system)).map(|d| d.join(moves::DEFAULT_DEVICE_FILE));
    let remembered = state_file.as_deref().and_then(moves::read_preference);
    let preferred = cli.prefer.clone().or(remembered);
    let mut srv = Server::new(socket_path.clone(), listen, signals, units, ctl_efd)
        .with_access(policy)
        .with_limits(lim)
        .with_preference(preferred, state_file);
    if cli.device.is_empty() {
        srv = srv.with_hotplug(opts);
    }
    let outcome = srv.run();
    // Shutdown order: Fatal to every stream and stop the mix threads (each drops its device and
    // the streams it holds), then close the clients (they see HUP), unlink the socket.
    let failures = srv.shutdown_devices();
    srv.close_clients();
    if how.is_empty() {
        // Ours to remove; an activated socket belongs to systemd, which keeps listening on it.
        let _ = std::fs::remove_file(srv.socket_path());
    }
    for line in srv.stats_lines() {
        info!("{line}");
    }
    for f in failures {
        error!("{f}");
    }
    outcome
}

/// Opens the devices named on the command line (the first is the default), or every hardware
/// card when none is named, and starts their threads.
fn start_devices(names: &[String], opts: &DeviceOptions, ctl_efd: &EventFd) -> anyhow::Result<Vec<Unit>> {
    if names.len() > MAX_DEVICES {
        return Err(anyhow!("at most {MAX_DEVICES} devices (--device given {} times)", names.len()));
    }
    if let Some(dup) = names.iter().enumerate().find_map(|(i, n)| names[..i].contains(n).then_some(n)) {
        return Err(anyhow!("--device '{dup}' given twice"));
    }
    let mut units = Vec::new();
    if names.is_empty() {
        // Every card the machine has; the ones that cannot be opened are left out.
        for name in devices::hardware_cards().into_iter().take(MAX_DEVICES) {
            let id = units.len() as u32;
            match Unit::start(id, &name, &DeviceOptions { wait_for_device: false, ..opts.clone() }, ctl_efd) {
                Ok(u) => units.push(u),
                Err(e) => log::warn!("card '{name}' left out: {e:#}"),
            }
        }
        if units.is_empty() {
            return Err(anyhow!("no sound card could be opened; pass --device"));
        }
        return Ok(units);
    }
    for name in names {
        let id = units.len() as u32;
        units.push(Unit::start(id, name, opts, ctl_efd)?);
    }
    Ok(units)
}

/// Where `shmixctl default` is remembered unless `--state-dir` says: `/var/lib/shmix` for the
/// system daemon, else `$XDG_STATE_HOME/shmix` or `~/.local/state/shmix`.
fn default_state_dir(system: bool) -> Option<PathBuf> {
    if system {
        return Some(PathBuf::from("/var/lib/shmix"));
    }
    let xdg = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from).filter(|p| p.is_absolute());
    xdg.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state"))).map(|d| d.join("shmix"))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, rec| writeln!(buf, "shmixd {}: {}", rec.level(), rec.args()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Shutdown) => ExitCode::SUCCESS,
        Ok(Outcome::DeviceFailed) => ExitCode::FAILURE,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

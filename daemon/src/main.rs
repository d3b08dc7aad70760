//! `shmixd`: command line, startup and shutdown. The main thread becomes the control thread
//! (`server`); one real-time mix thread drives the device (`mix::thread`); the device manager's
//! thread (`io::manager`) opens, reopens and closes its playback and capture sides.
//! Runs on the main thread. RT: no.

use std::io::Write;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::Parser;
use log::{error, info};
use shmix_daemon::control::access;
use shmix_daemon::control::limits::{self, Limits};
use shmix_daemon::control::listen;
use shmix_daemon::control::server::{Outcome, Server};
use shmix_daemon::dsp::{DeviceSpec, DEFAULT_QUALITY};
use shmix_daemon::io::device::{self, Device, Request};
use shmix_daemon::io::manager::{self, Setup};
use shmix_daemon::mix::ctl::DeviceCtl;
use shmix_daemon::mix::realtime;
use shmix_daemon::mix::schedule;
use shmix_daemon::mix::thread::{MixThread, QUEUE_CAPACITY};
use shmix_daemon::mix::{Counters, MixCore};
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
    /// ALSA PCM to play on [default: the first hardware card, hw:N]
    #[arg(long, value_name = "PCM")]
    device: Option<String>,
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
/// Timer scheduling: the period asked of the device (its interrupt rate where period wakeups
/// cannot be turned off, and a BATCH device's pointer step).
const TIMER_PERIOD_HINT: u32 = 64;
/// Timer scheduling: most frames mixed in one run (the bus size).
const TIMER_RUN_FRAMES: u32 = 1024;
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

    let device_name = match &cli.device {
        Some(d) => d.clone(),
        None => device::first_card().ok_or_else(|| anyhow!("no sound card found; pass --device"))?,
    };
    let fixed = cli.period.is_some() || cli.periods.is_some();
    let (period, periods) = (cli.period.unwrap_or(DEFAULT_PERIOD), cli.periods.unwrap_or(DEFAULT_PERIODS));
    if period == 0 || periods < 2 {
        return Err(anyhow!("--period must be > 0 and --periods >= 2"));
    }
    if cli.max_device_buffer_ms < 10 {
        return Err(anyhow!("--max-device-buffer-ms must be at least 10"));
    }
    // Timer scheduling asks for the period hint only as the interrupt rate (or a BATCH
    // device's pointer step).
    let timer_buffer_ms = (!fixed).then_some(cli.max_device_buffer_ms);
    let req = Request {
        format: cli.format,
        rate: cli.rate,
        channels: cli.channels,
        period_frames: if fixed { period } else { TIMER_PERIOD_HINT },
        periods,
        timer_buffer_ms,
    };
    let dev = match Device::open(&device_name, &req) {
        Ok(d) => Some(d),
        Err(e) if cli.wait_for_device => {
            log::warn!("device '{device_name}' cannot be opened ({e}); --wait-for-device: clients wait until it can");
            None
        }
        Err(e) => return Err(anyhow!(e)).with_context(|| format!("opening device '{device_name}'")),
    };
    let (p, chmap) = match &dev {
        Some(d) => (d.params(), d.chmap()),
        None => {
            let channels = cli.channels.unwrap_or(2);
            if !(1..=shmix_shared::msg::MAX_CHANNELS).contains(&channels) {
                return Err(anyhow!("--channels {channels} out of range"));
            }
            let p = shmix_shared::AudioParams {
                format: cli.format.unwrap_or(SampleFormat::S16Le),
                rate: cli.rate.unwrap_or(48000),
                channels,
                period_frames: req.period_frames,
                buffer_frames: if fixed {
                    period.saturating_mul(periods)
                } else {
                    cli.max_device_buffer_ms.saturating_mul(cli.rate.unwrap_or(48000) / 1000)
                },
            };
            (p, shmix_shared::chmap::ChannelMap::standard(channels))
        }
    };
    let quality = match cli.resample_quality {
        None | Some(ResampleQuality::Default) => DEFAULT_QUALITY,
        Some(q) => q,
    };
    // What streams are converted for: with timer scheduling the quantum (the smallest queue
    // step) stands for the period, and the mix runs in longer runs.
    // Playback streams keep what they gave a rewindable device, to play it again after a rewind.
    let rewinds = !fixed && dev.as_ref().is_some_and(|d| d.caps().rewind);
    let spec_of = |p: shmix_shared::AudioParams, chmap, history: bool| {
        if fixed {
            DeviceSpec { params: p, chmap, quality, run_frames: p.period_frames, history_frames: 0 }
        } else {
            let quantum = schedule::floor_frames(p.rate);
            let params = shmix_shared::AudioParams { period_frames: quantum, ..p };
            let history_frames = if history { schedule::deepest_queue(p.buffer_frames) } else { 0 };
            DeviceSpec { params, chmap, quality, run_frames: TIMER_RUN_FRAMES.max(quantum), history_frames }
        }
    };
    let spec = spec_of(p, chmap, rewinds);
    // Probe the capture side once (opened for real when the first recorder starts): its
    // parameters are what capture streams are converted from. Later opens ask for exactly these.
    let capture = if dev.is_none() {
        // Absent at startup: the capture side is assumed to match the playback side (opened,
        // and checked against this, when the first recorder starts).
        let creq = Request {
            format: Some(p.format),
            rate: Some(p.rate),
            channels: Some(p.channels),
            period_frames: req.period_frames,
            periods,
            timer_buffer_ms,
        };
        Some((creq, spec))
    } else {
        match Device::open_capture(
            &device_name,
            &Request {
                format: Some(p.format),
                rate: Some(p.rate),
                channels: Some(p.channels),
                period_frames: req.period_frames,
                periods,
                timer_buffer_ms,
            },
        ) {
            Ok(c) => {
                let cp = c.params();
                info!(
                    "capture side: {} {} Hz {} ch {:?}, period {} frames, buffer {} frames (opened while recording{})",
                    cp.format,
                    cp.rate,
                    cp.channels,
                    c.chmap().positions(),
                    cp.period_frames,
                    cp.buffer_frames,
                    if cli.keep_capture_open { ", then kept open" } else { "" }
                );
                let creq = Request {
                    format: Some(cp.format),
                    rate: Some(cp.rate),
                    channels: Some(cp.channels),
                    period_frames: req.period_frames,
                    periods,
                    timer_buffer_ms,
                };
                Some((creq, spec_of(cp, c.chmap(), false)))
            }
            Err(e) => {
                info!("device '{device_name}' has no usable capture side ({e}); capture streams are refused");
                None
            }
        }
    };

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
    info!(
        "shmixd listening on {}{how} | device '{}' {} {} Hz {} ch {:?}, period {} frames, buffer {} frames, \
         resampling {}, {}",
        socket_path.display(),
        device_name,
        p.format,
        p.rate,
        p.channels,
        spec.chmap.positions(),
        p.period_frames,
        p.buffer_frames,
        quality.name(),
        match dev.as_ref().map(Device::caps) {
            _ if fixed => "fixed timing (one wakeup per period)".to_string(),
            Some(c) => format!(
                "timer scheduling (queue from {} frames, follows the clients; rewind {}, batch {}, fifo {})",
                spec.params.period_frames,
                if c.rewind { "yes" } else { "no" },
                if c.batch { "yes" } else { "no" },
                c.fifo_frames
            ),
            None => "timer scheduling".to_string(),
        }
    );

    let signals = listen::signal_fd()?;
    let counters = Arc::new(Counters::default());
    let dctl = Arc::new(DeviceCtl::new(p.channels, p.rate));
    let core = MixCore::new(p.format, Arc::clone(&dctl), spec.run_frames as usize, Arc::clone(&counters));
    let (cmd_tx, cmd_rx) = rtrb::RingBuffer::new(QUEUE_CAPACITY);
    let (ev_tx, ev_rx) = rtrb::RingBuffer::new(QUEUE_CAPACITY);
    let cmd_efd = eventfd()?;
    let ctl_efd = eventfd()?;
    // The device manager opens the capture side for the recorders, and closes and reopens a
    // side that vanishes with this same request while its clients wait.
    let play_setup = Setup { name: device_name.clone(), req, params: p, chmap: spec.chmap };
    let cap_setup = capture.as_ref().map(|(creq, cspec)| Setup {
        name: device_name.clone(),
        req: *creq,
        params: cspec.params,
        chmap: cspec.chmap,
    });
    let (devices_end, mut devices, devices_stop) = manager::link(play_setup, cap_setup)?;
    if dev.is_none() {
        devices = devices.absent_at_start();
    }
    let devices_handle = std::thread::Builder::new().name("shmix-devices".into()).spawn(move || devices.run())?;
    let mix = MixThread::new(core, dev, devices_end, cmd_rx, ev_tx, cmd_efd.try_clone()?, ctl_efd.try_clone()?)
        .keep_capture_open(cli.keep_capture_open)
        .idle_stop(cli.idle_stop.unwrap_or(DEFAULT_IDLE_STOP))
        .rt_priority(cli.rt_priority);
    let handle = std::thread::Builder::new().name("shmix-mix".into()).spawn(move || mix.run())?;
    // Every thread's stack, the device's buffer and the code exist now: lock them.
    realtime::lock_memory();

    let mut srv =
        Server::new(socket_path.clone(), listen, signals, spec, dctl, cmd_tx, cmd_efd, ev_rx, ctl_efd, counters)
            .with_access(policy)
            .with_limits(lim);
    if let Some((_, cspec)) = capture {
        srv = srv.with_capture(cspec);
    }
    let outcome = srv.run();
    // Shutdown order: Fatal to every stream and stop the mix thread (it drops the device and
    // the streams it holds), then close the clients (they see HUP), unlink the socket.
    srv.request_shutdown();
    let mix_result = handle.join();
    devices_stop.stop();
    let _ = devices_handle.join();
    srv.drain_events();
    srv.close_clients();
    if how.is_empty() {
        // Ours to remove; an activated socket belongs to systemd, which keeps listening on it.
        let _ = std::fs::remove_file(srv.socket_path());
    }
    info!("{}", srv.stats_line());
    match mix_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!("mix thread ended: {e}"),
        Err(_) => error!("mix thread panicked"),
    }
    outcome
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

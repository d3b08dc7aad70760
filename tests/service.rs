//! System integration: socket activation under `systemd-socket-activate`, the plugin's
//! `fallback` PCM when no daemon answers, and `make install` / `make uninstall` followed by
//! playing with nothing but the installed files. Every sound is compared bit for bit with what
//! the virtual card recorded.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const RATE: u32 = 48000;

/// `secs` of stereo noise as a WAV in the rig's dir; returns the path and the samples.
fn noise_wav(rig: &Rig, name: &str, secs: f64, seed: u32) -> (PathBuf, Vec<i16>) {
    let n = (secs * f64::from(RATE)) as usize;
    let sound = interleave(&[noise(seed, n, 28000), noise(seed + 1, n, 28000)]);
    let wav = rig.path(name);
    write_wav(&wav, 2, RATE, &sound);
    (wav, sound)
}

/// Appends ALSA configuration to the rig's private file (read by every program at start).
fn add_conf(rig: &Rig, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(&rig.conf).expect("open asound.conf");
    writeln!(f, "{text}").expect("append asound.conf");
}

/// A rig whose own daemon has been stopped (SIGTERM: its socket is removed): the card and the
/// private configuration stay. The card recorded silence while that daemon ran.
fn rig_without_daemon() -> Rig {
    let mut rig = Rig::new(Card::default(), &[]);
    let st = rig.signal_daemon(libc::SIGTERM);
    assert!(st.success(), "shmixd did not stop cleanly: {st}\n{}", rig.daemon_log());
    assert!(!rig.sock.exists(), "shmixd left its socket behind");
    rig
}

fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: &mut Child) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if wait_timeout(child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `systemd-socket-activate` listening on `sock` (SOCK_SEQPACKET unless `stream`), to exec
/// shmixd on the rig's card at the first connection. It passes only the variables named by -E.
fn socket_activate(rig: &Rig, sock: &Path, stream: bool, log: &Path) -> Child {
    let mut c = Command::new("systemd-socket-activate");
    if !stream {
        c.arg("--seqpacket");
    }
    c.arg("-l")
        .arg(sock)
        .arg(format!("--setenv=ALSA_CONFIG_PATH={}", rig.alsa_config_path()))
        .arg("--setenv=RUST_LOG=debug")
        .arg(artifacts_dir().join("shmixd"))
        .args(["--device", "card"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"));
    let child = c.spawn().unwrap_or_else(|e| panic!("cannot run systemd-socket-activate ({e}): install systemd"));
    wait_for("systemd-socket-activate to bind its socket", Duration::from_secs(10), || sock.exists());
    child
}

#[test]
fn socket_activation_starts_shmixd_on_the_first_connection() {
    let rig = rig_without_daemon();
    let sock = rig.path("activated.sock");
    let log = rig.path("activated.log");
    let mut sa = socket_activate(&rig, &sock, false, &log);
    // Nothing connected yet: the process is still systemd-socket-activate, no daemon runs.
    std::thread::sleep(Duration::from_millis(300));
    assert!(exe_of(sa.id()).ends_with("systemd-socket-activate"), "exe is {}", exe_of(sa.id()));
    add_conf(&rig, &format!("pcm.activated {{ type shmix socket \"{}\" }}", sock.display()));

    let secs = 2.0;
    let (wav, sound) = noise_wav(&rig, "noise.wav", secs, 21);
    let mut c = rig.cmd("aplay");
    c.args(["-q", "-D", "activated"]).arg(&wav);
    let r = run(c, Duration::from_secs(30));
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    r.assert_ok(&format!("aplay through the activated daemon (its log:\n{daemon_log})"));
    // The first connection exec'd shmixd in place (same pid), on the socket it was handed.
    assert!(exe_of(sa.id()).ends_with("shmixd"), "exe is {}", exe_of(sa.id()));
    assert!(
        daemon_log.contains(&format!("listening on {} (socket activation)", sock.display())),
        "daemon log:\n{daemon_log}"
    );
    let wall = r.wall.as_secs_f64();
    assert!(wall <= secs + 5.0, "aplay took {wall:.2} s for {secs} s of audio (daemon start included)");
    eprintln!("socket activation: aplay of {secs} s took {wall:.3} s including the daemon's start");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "activated daemon");

    stop(&mut sa);
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(daemon_log.contains("shutting down"), "daemon log:\n{daemon_log}");
    // The activated socket belongs to whoever bound it (systemd keeps listening on it): the
    // daemon leaves it in place.
    assert!(sock.exists(), "shmixd removed the socket it was handed");
}

#[test]
fn socket_activation_refuses_a_stream_socket() {
    let rig = rig_without_daemon();
    let sock = rig.path("stream.sock");
    let log = rig.path("stream.log");
    let mut sa = socket_activate(&rig, &sock, true, &log);
    let _conn = std::os::unix::net::UnixStream::connect(&sock).expect("connect to the stream socket");
    let st = wait_timeout(&mut sa, Duration::from_secs(15)).expect("shmixd did not exit");
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!st.success(), "shmixd accepted a stream socket:\n{daemon_log}");
    assert!(
        daemon_log.contains("fd 3 is not SOCK_SEQPACKET") && daemon_log.contains("ListenSequentialPacket="),
        "daemon log:\n{daemon_log}"
    );
}

/// Plays `secs` of noise to `pcm` while no daemon answers; the fallback must have taken it to
/// the card bit-exact.
fn plays_through_fallback(rig: &Rig, pcm: &str) {
    let (wav, sound) = noise_wav(rig, "fb.wav", 1.5, 31);
    let mut c = rig.cmd("aplay");
    c.args(["-q", "-D", pcm]).arg(&wav);
    let r = run(c, Duration::from_secs(30));
    r.assert_ok("aplay through the fallback");
    assert!(r.stderr.contains("Playing to the fallback PCM 'card' instead"), "stderr: {}", r.stderr);
    assert_contiguous(&rig.recording_s16(), &sound, 2, "fallback");
}

#[test]
fn fallback_plays_to_the_card_when_the_socket_is_missing() {
    let rig = rig_without_daemon();
    add_conf(&rig, &format!("pcm.fb {{ type shmix socket \"{}\" fallback \"card\" }}", rig.sock.display()));
    plays_through_fallback(&rig, "fb");
}

#[test]
fn fallback_plays_to_the_card_when_the_connection_is_refused() {
    let rig = rig_without_daemon();
    // A socket file nobody listens on: what a crashed daemon leaves behind.
    let stale = rig.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    add_conf(
        &rig,
        &format!("pcm.fb {{ type plug slave.pcm {{ type shmix socket \"{}\" fallback \"card\" }} }}", stale.display()),
    );
    plays_through_fallback(&rig, "fb");
}

#[test]
fn fallback_does_not_recurse_into_shmix() {
    let rig = rig_without_daemon();
    // Falls back to itself, and through a second shmix PCM back to the first.
    add_conf(
        &rig,
        &format!(
            "pcm.selfish {{ type shmix socket \"{s}\" fallback \"selfish\" }}\n\
             pcm.ping {{ type shmix socket \"{s}\" fallback \"pong\" }}\n\
             pcm.pong {{ type plug slave.pcm {{ type shmix socket \"{s}\" fallback \"ping\" }} }}",
            s = rig.sock.display()
        ),
    );
    let (wav, _) = noise_wav(&rig, "short.wav", 0.2, 41);
    for pcm in ["selfish", "ping"] {
        let mut c = rig.cmd("aplay");
        c.args(["-q", "-D", pcm]).arg(&wav);
        let r = run(c, Duration::from_secs(20));
        assert!(!r.status.success(), "{pcm}: aplay succeeded without a daemon or a card");
        assert!(r.stderr.contains("leads back to shmix; not falling back again"), "{pcm}: stderr: {}", r.stderr);
        assert!(r.stderr.contains("No such file or directory"), "{pcm}: stderr: {}", r.stderr);
    }
    // The daemon's absence is still an error for a PCM without `fallback`.
    add_conf(&rig, &format!("pcm.plain {{ type shmix socket \"{}\" }}", rig.sock.display()));
    let mut c = rig.cmd("aplay");
    c.args(["-q", "-D", "plain"]).arg(&wav);
    let r = run(c, Duration::from_secs(20));
    assert!(!r.status.success() && r.stderr.contains("Is shmixd running?"), "stderr: {}", r.stderr);
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn make(args: &[String]) -> Run {
    let mut c = Command::new("make");
    c.arg("-C").arg(env!("CARGO_MANIFEST_DIR")).args(["--no-print-directory"]).args(args);
    // Under `make test` the outer make's flags (jobserver descriptors, DESTDIR=... on its command
    // line) would leak into this one.
    c.env_remove("MAKEFLAGS").env_remove("MFLAGS").env_remove("MAKELEVEL").env_remove("MAKEOVERRIDES");
    run(c, Duration::from_secs(60))
}

#[test]
fn make_install_then_play_with_only_the_installed_files() {
    let art = artifacts_dir();
    let tmp = tempfile::Builder::new().prefix("shmix-install-").tempdir().expect("tempdir");
    let dest = tmp.path().join("dest");
    let common = [format!("DESTDIR={}", dest.display()), "PREFIX=/usr".into(), format!("BUILD_DIR={}", art.display())];
    let r = make(&[&["install".to_string()][..], &common].concat());
    r.assert_ok("make install");
    let files = files_under(&dest);
    let has = |suffix: &str| files.iter().find(|p| p.to_string_lossy().ends_with(suffix)).cloned();
    let plugin = has("/alsa-lib/libasound_module_pcm_shmix.so").expect("plugin installed");
    for f in [
        "etc/alsa/conf.d/50-shmix.conf",
        "usr/bin/shmixd",
        "usr/lib/systemd/user/shmixd.service",
        "usr/lib/systemd/user/shmixd.socket",
        "usr/lib/systemd/system/shmixd.service",
        "usr/lib/sysusers.d/shmixd.conf",
    ] {
        assert!(files.contains(&PathBuf::from(f)), "{f} not installed; installed: {files:?}");
    }
    // shmixctl is installed exactly when it was built.
    assert_eq!(files.contains(&PathBuf::from("usr/bin/shmixctl")), art.join("shmixctl").exists(), "{files:?}");
    let unit = std::fs::read_to_string(dest.join("usr/lib/systemd/user/shmixd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/shmixd\n") && !unit.contains('@'), "{unit}");

    // The installed units are valid for systemd (checked offline, ExecStart pointed at the
    // installed binary inside DESTDIR).
    let units = tmp.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let shmixd = dest.join("usr/bin/shmixd");
    for (from, to) in [
        ("usr/lib/systemd/user/shmixd.service", "shmixd.service"),
        ("usr/lib/systemd/user/shmixd.socket", "shmixd.socket"),
        ("usr/lib/systemd/system/shmixd.service", "system-shmixd.service"),
    ] {
        let text = std::fs::read_to_string(dest.join(from)).unwrap();
        std::fs::write(units.join(to), text.replace("/usr/bin/shmixd", &shmixd.display().to_string())).unwrap();
    }
    let xdg = tmp.path().join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    let mut c = Command::new("systemd-analyze");
    c.args(["verify", "--user"])
        .arg(units.join("shmixd.socket"))
        .arg(units.join("shmixd.service"))
        .env("XDG_RUNTIME_DIR", &xdg);
    run(c, Duration::from_secs(30)).assert_ok("systemd-analyze verify --user");
    let mut c = Command::new("systemd-analyze");
    c.arg("verify").arg(units.join("system-shmixd.service"));
    run(c, Duration::from_secs(30)).assert_ok("systemd-analyze verify (system unit)");

    // Play with the installed plugin, configuration and daemon only: the private config below
    // adds nothing but where the plugin lives (inside DESTDIR) and the virtual card.
    let rec = tmp.path().join("card.raw");
    let sock = tmp.path().join("run/shmix.sock");
    let conf = tmp.path().join("asound.conf");
    std::fs::write(
        &conf,
        format!(
            "pcm_type.shmix {{ lib \"{}\" }}\npcm_type.shmix_vcard {{ lib \"{}\" }}\n\
             pcm.card {{ type shmix_vcard format S16_LE rate 48000 channels 2 playback_file \"{}\" }}\n",
            dest.join(&plugin).display(),
            art.join("libasound_module_pcm_shmix_vcard.so").display(),
            rec.display()
        ),
    )
    .unwrap();
    let config_path = format!(
        "/usr/share/alsa/alsa.conf:{}:{}",
        dest.join("etc/alsa/conf.d/50-shmix.conf").display(),
        conf.display()
    );
    let log = tmp.path().join("shmixd.log");
    let mut daemon = Command::new(&shmixd)
        .args(["--device", "card"])
        .env("ALSA_CONFIG_PATH", &config_path)
        .env("SHMIX_SOCKET", &sock)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the installed shmixd");
    wait_for("the installed shmixd's socket", Duration::from_secs(10), || sock.exists());
    let n = RATE as usize * 2;
    let sound = interleave(&[noise(51, n, 25000), noise(52, n, 25000)]);
    let wav = tmp.path().join("noise.wav");
    write_wav(&wav, 2, RATE, &sound);
    let mut c = Command::new("aplay");
    c.args(["-q", "-D", "shmix"]).arg(&wav).env("ALSA_CONFIG_PATH", &config_path).env("SHMIX_SOCKET", &sock);
    let r = run(c, Duration::from_secs(30));
    stop(&mut daemon);
    r.assert_ok(&format!(
        "aplay with the installed files (daemon log:\n{})",
        std::fs::read_to_string(&log).unwrap_or_default()
    ));
    let b = std::fs::read(&rec).unwrap();
    let recorded: Vec<i16> = b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    assert_contiguous(&recorded, &sound, 2, "installed files");

    // Uninstall removes every file install put there.
    make(&[&["uninstall".to_string()][..], &common].concat()).assert_ok("make uninstall");
    let left = files_under(&dest);
    assert!(left.is_empty(), "make uninstall left {left:?}");
}

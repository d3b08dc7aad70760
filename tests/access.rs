//! Access control, for real: clients run as another user (`setpriv` to uid 65534 with chosen
//! groups; no account or group is created, /etc is not touched) against a daemon running as
//! the test's user. User mode admits the daemon's uid only; `--system` mode admits members of
//! `--group` (primary or supplementary) and finds its socket without configuration; a
//! stream's memfd is reachable by no other user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const RATE: u32 = 48000;
const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

/// The gid of `name` from /etc/group.
fn gid_of(name: &str) -> u32 {
    let groups = std::fs::read_to_string("/etc/group").expect("/etc/group");
    groups
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| f[2].parse().expect("gid"))
        })
        .unwrap_or_else(|| panic!("no group '{name}' in /etc/group"))
}

/// `program` run as uid 65534 with primary group `gid` and supplementary `groups` (none:
/// `--clear-groups`), with the rig's ALSA configuration.
fn as_nobody(rig: &Rig, gid: u32, groups: &[u32], program: &str) -> Command {
    // SAFETY: plain getter.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the access tests run clients as another user with setpriv, which needs root (CI runs as root)"
    );
    let mut c = rig.cmd("setpriv");
    c.arg(format!("--reuid={NOBODY}")).arg(format!("--regid={gid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        c.arg(format!("--groups={}", groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",")));
    }
    c.arg("--").arg(program).env("HOME", rig.dir.path());
    c
}

fn noise_wav(rig: &Rig, name: &str, secs: f64, seed: u32) -> (std::path::PathBuf, Vec<i16>) {
    let n = (secs * f64::from(RATE)) as usize;
    let sound = interleave(&[noise(seed, n, 27000), noise(seed + 1, n, 27000)]);
    let wav = rig.path(name);
    write_wav(&wav, 2, RATE, &sound);
    chmod(&wav, 0o644);
    (wav, sound)
}

/// The daemon's log lines about client `pid`.
fn log_of_pid(rig: &Rig, pid: u32) -> Vec<String> {
    rig.daemon_log().lines().filter(|l| l.contains(&format!("client pid {pid} "))).map(str::to_owned).collect()
}

/// Waits until the daemon logged a line containing `needle`.
fn wait_log(rig: &Rig, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = rig.daemon_log();
        if let Some(l) = log.lines().find(|l| l.contains(needle)) {
            return l.to_owned();
        }
        assert!(Instant::now() < deadline, "the daemon never logged '{needle}':\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A user-mode daemon started without `--socket` creates its directory 0700.
#[test]
fn user_mode_socket_directory_is_0700() {
    let rig = Rig::new(Card::default(), &[]);
    let xdg = rig.path("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let log = rig.path("default.log");
    let mut d = rig
        .cmd(artifacts_dir().join("shmixd"))
        .args(["--device", "card"])
        .env("XDG_RUNTIME_DIR", &xdg)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("shmixd");
    let sock = xdg.join("shmix/socket");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    let _ = wait_timeout(&mut d, Duration::from_secs(10));
    let _ = d.kill();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains(&format!("listening on {}", sock.display())), "{text}");
    assert_eq!(mode(&xdg.join("shmix")), 0o700, "socket directory mode");
}

#[test]
fn user_mode_refuses_another_uid_before_the_handshake() {
    let rig = Rig::new(Card::default(), &[]);
    let (wav, _) = noise_wav(&rig, "n.wav", 0.5, 61);
    // SAFETY: plain getter.
    let our_uid = unsafe { libc::geteuid() };

    // Let the other user read the test's files (the directory stays closed to listing). The
    // socket itself, as bound, is not writable for others: connect fails with EACCES.
    chmod(rig.dir.path(), 0o711);
    chmod(&rig.conf, 0o644);
    let mut c = as_nobody(&rig, NOBODY, &[], "aplay");
    c.args(["-q", "-D", "shmix"]).arg(&wav);
    let r = run(c, Duration::from_secs(20));
    assert!(
        !r.status.success() && r.stderr.contains("cannot connect") && r.stderr.contains("Permission denied"),
        "aplay as uid {NOBODY}: {}",
        r.stderr
    );

    // Loosen the socket itself (this test's private directory) so the connection reaches the
    // daemon: the daemon must refuse it from SO_PEERCRED, log why, and tell the client.
    chmod(&rig.sock, 0o777);
    let mut c = as_nobody(&rig, NOBODY, &[], "aplay");
    c.args(["-q", "-D", "shmix"]).arg(&wav);
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("setpriv aplay");
    let pid = child.id();
    let mut child = child;
    let r = finish(&mut child, Instant::now(), Duration::from_secs(20));
    assert!(!r.status.success(), "aplay as uid {NOBODY} succeeded against a user-mode daemon");
    let want = format!("uid {NOBODY} is not the daemon's uid {our_uid}");
    assert!(
        r.stderr.contains("refused the connection: permission denied") && r.stderr.contains(&want),
        "client stderr: {}",
        r.stderr
    );
    assert!(r.stderr.contains("Permission denied"), "client stderr: {}", r.stderr);
    // setpriv execs aplay in place: the pid the daemon logs is this child's.
    let line = wait_log(&rig, &format!("client pid {pid} refused"));
    assert!(line.contains("WARN") && line.contains(&want), "{line}");
    // Refused at accept: the daemon never read its Hello (no handshake line for that pid).
    let lines = log_of_pid(&rig, pid);
    assert_eq!(lines.len(), 1, "daemon lines for pid {pid}: {lines:?}");
    eprintln!("daemon: {line}\nclient: {}", r.stderr.trim());
}

/// `--system --group audio`: the daemon (as the test's user) makes the socket 0660 in group
/// audio; a client in that group, primary or supplementary, gets in and plays bit-exact, and
/// finds the system socket by itself (no `socket` key, no user daemon); one outside does not.
#[test]
fn system_mode_admits_the_group_only() {
    let audio = gid_of("audio");
    let rig = Rig::new(Card::default(), &["--system", "--group", "audio"]);
    wait_log(&rig, &format!("and members of group 'audio' (gid {audio})"));
    let md = std::fs::metadata(&rig.sock).unwrap();
    assert_eq!((mode(&rig.sock), std::os::unix::fs::MetadataExt::gid(&md)), (0o660, audio), "socket mode and group");
    chmod(rig.dir.path(), 0o711);
    chmod(&rig.conf, 0o644);
    std::fs::write(rig.path("sys.conf"), "pcm.sys { type shmix }\n").unwrap();
    chmod(&rig.path("sys.conf"), 0o644);
    let xdg = rig.path("xdg-empty");
    std::fs::create_dir(&xdg).unwrap();
    chmod(&xdg, 0o755);
    let sys_cmd = |gid: u32, groups: &[u32], wav: &Path| {
        let mut c = as_nobody(&rig, gid, groups, "aplay");
        c.env("ALSA_CONFIG_PATH", format!("{}:{}", rig.alsa_config_path(), rig.path("sys.conf").display()))
            .env("XDG_RUNTIME_DIR", &xdg)
            .env("SHMIX_SYSTEM_SOCKET", &rig.sock)
            .args(["-q", "-D", "sys"])
            .arg(wav);
        c
    };

    // Member by primary group: plays bit-exact through the system socket it found itself.
    let (wav, sound) = noise_wav(&rig, "member.wav", 1.5, 71);
    let r = run(sys_cmd(audio, &[], &wav), Duration::from_secs(30));
    r.assert_ok("aplay as uid 65534, gid audio");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "group member");

    // shmixctl finds the system socket the same way, and its control connection is admitted.
    let mut ctl = as_nobody(&rig, audio, &[], artifacts_dir().join("shmixctl").to_str().unwrap());
    ctl.env("XDG_RUNTIME_DIR", &xdg).env("SHMIX_SYSTEM_SOCKET", &rig.sock).args(["--json", "stats"]);
    let r = run(ctl, Duration::from_secs(30));
    r.assert_ok("shmixctl stats as a member of audio");
    assert!(r.stdout.trim_start().starts_with('{'), "shmixctl --json stats: {}", r.stdout);

    // Member by a supplementary group only: admitted too (the stream is created).
    let (short, _) = noise_wav(&rig, "short.wav", 0.3, 81);
    let r = run(sys_cmd(NOBODY, &[NOBODY, audio], &short), Duration::from_secs(30));
    r.assert_ok("aplay as uid 65534 with audio as a supplementary group");

    // Not a member: the socket's permissions keep it out ...
    let r = run(sys_cmd(NOBODY, &[], &short), Duration::from_secs(30));
    assert!(
        !r.status.success() && r.stderr.contains("Permission denied") && r.stderr.contains("as a member of its group"),
        "non-member: {}",
        r.stderr
    );
    // ... and with the socket opened up, the daemon does.
    chmod(&rig.sock, 0o666);
    let mut child = sys_cmd(NOBODY, &[], &short).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let r = finish(&mut child, Instant::now(), Duration::from_secs(30));
    assert!(!r.status.success(), "a non-member played");
    let want = format!("is not in group 'audio' (gid {audio})");
    assert!(r.stderr.contains(&want), "non-member stderr: {}", r.stderr);
    let line = wait_log(&rig, &format!("client pid {pid} refused"));
    assert!(line.contains(&format!("uid {NOBODY} (gid {NOBODY}, groups [])")) && line.contains(&want), "{line}");
    let mut ctl = as_nobody(&rig, NOBODY, &[], artifacts_dir().join("shmixctl").to_str().unwrap());
    ctl.env("XDG_RUNTIME_DIR", &xdg).env("SHMIX_SYSTEM_SOCKET", &rig.sock).arg("stats");
    let r = run(ctl, Duration::from_secs(30));
    assert!(!r.status.success() && r.stderr.contains(&want), "shmixctl as a non-member: {}", r.stderr);
    eprintln!("daemon: {line}");
}

/// Memfds travel by descriptor only: the daemon's copy of a stream's memfd has no name in any
/// filesystem, and another user can reach neither the daemon's nor the client's descriptors
/// through /proc.
#[test]
fn stream_memfds_are_unreachable_for_other_users() {
    let rig = Rig::new(Card::default(), &[]);
    let (wav, _) = noise_wav(&rig, "long.wav", 3.0, 91);
    let mut aplay = rig.cmd("aplay").args(["-q", "-D", "shmix"]).arg(&wav).spawn().expect("aplay");
    let daemon = rig.daemon_pid();
    // Every way to a process's memfds through /proc: its descriptors and its mappings.
    let memfds = |pid: u32| -> Vec<(String, String)> {
        ["fd", "map_files"]
            .iter()
            .flat_map(|dir| std::fs::read_dir(format!("/proc/{pid}/{dir}")).into_iter().flatten())
            .filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?.display().to_string();
                target.starts_with("/memfd:").then(|| (e.path().display().to_string(), target))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = memfds(daemon as u32);
    while seen.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        seen = memfds(daemon as u32);
    }
    assert!(!seen.is_empty(), "the daemon holds no memfd while a stream plays");
    let client = memfds(aplay.id());
    assert!(!client.is_empty(), "the client holds no memfd");
    for (fd, target) in seen.iter().chain(&client) {
        // A memfd's "path" is a label: nothing by that name exists to open.
        let label = target.trim_end_matches(" (deleted)");
        assert!(!Path::new(label).exists(), "{fd} -> {target} exists in the filesystem");
        let mut cat = as_nobody(&rig, NOBODY, &[], "cat");
        cat.arg(fd);
        let r = run(cat, Duration::from_secs(10));
        assert!(!r.status.success() && r.stderr.contains("Permission denied"), "uid {NOBODY} read {fd}: {}", r.stderr);
    }
    let mut ls = as_nobody(&rig, NOBODY, &[], "ls");
    ls.arg(format!("/proc/{daemon}/fd"));
    let r = run(ls, Duration::from_secs(10));
    assert!(!r.status.success(), "uid {NOBODY} listed the daemon's descriptors");
    for what in ["maps", "mem"] {
        let mut cat = as_nobody(&rig, NOBODY, &[], "cat");
        cat.arg(format!("/proc/{daemon}/{what}"));
        let r = run(cat, Duration::from_secs(10));
        assert!(!r.status.success(), "uid {NOBODY} read the daemon's {what}");
    }
    eprintln!("daemon memfds {seen:?}, client memfds {client:?}: none reachable by uid {NOBODY}");
    let _ = wait_timeout(&mut aplay, Duration::from_secs(20));
}

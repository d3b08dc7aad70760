//! Findings of the security audit (issue 15), each as the attack that showed it: descriptors
//! smuggled past the daemon's control buffer, a fake daemon of another user, idle connections
//! that never create a stream, and what a shared socket directory allows.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use shmix_shared::layout::DEFAULT_MSG_RECORDS;
use shmix_shared::msg::{Direction, SocketMsg, PROTOCOL_VERSION};
use shmix_shared::socket;
use shmix_shared::{ChannelMap, ResampleQuality};

use crate::common::*;
use crate::hostile::{seqpacket, Raw};

/// Waits until the daemon hangs up on `sock` (the connection is then gone on its side).
fn wait_hangup(sock: &OwnedFd, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return;
        }
        if pfd.revents & libc::POLLIN != 0 {
            // Drain what the daemon sent (a refusal) and look again.
            if socket::recv(sock.as_fd()).map(|p| p.bytes.is_empty()).unwrap_or(true) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what}: the daemon did not hang up");
    }
}

/// A pipe `(read, write)`, the read end non-blocking: copies of the write end are what the
/// hostile packets carry, and the read end says whether any copy is still open anywhere.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
    // SAFETY: two fresh descriptors we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// True when no write end of the pipe is open anywhere: reading gives EOF.
fn writers_gone(r: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: read(2) into a valid one-byte buffer.
    unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 0 }
}

/// Packets with more descriptors than the control buffer holds (5, 8, and the kernel's maximum
/// of 253), over a hundred connections, before and after `Hello`: the daemon closes every
/// descriptor the kernel installed for it, its descriptor count returns to where it was, and a
/// stream playing meanwhile stays bit-exact.
#[test]
fn oversized_descriptor_lists_leave_nothing_open_in_the_daemon() {
    let rig = Rig::new(Card::default(), &[]);
    let (mut good, start, sound) = reference(&rig, 151, 4);
    rig.wait_for_sound(2, 0, Duration::from_secs(10));
    let before = daemon_fds(&rig);
    let (r, w) = pipe();
    let hello = SocketMsg::Hello {
        version: PROTOCOL_VERSION,
        direction: Direction::Playback,
        pid: 0,
        name: "fds".into(),
        device: String::new(),
    };
    let mut socks = Vec::new();
    // Before Hello: the Hello itself carries 5 descriptors.
    for _ in 0..50 {
        let s = seqpacket(&rig.sock);
        socket::send(s.as_fd(), &hello, &[w.as_raw_fd(); 5]).unwrap();
        socks.push(s);
    }
    // After Hello: a CreateStream with 8.
    for _ in 0..50 {
        let c = Raw::connect(&rig);
        let msg = SocketMsg::CreateStream {
            params: c.params(),
            msg_records: DEFAULT_MSG_RECORDS,
            memfd_bytes: c.layout().total_bytes,
            chmap: ChannelMap::standard(c.params().channels),
            quality: ResampleQuality::Default,
        };
        socket::send(c.sock.as_fd(), &msg, &[w.as_raw_fd(); 8]).unwrap();
        socks.push(c.sock);
    }
    // The most one packet can carry (SCM_MAX_FD).
    let s = seqpacket(&rig.sock);
    socket::send(s.as_fd(), &hello, &[w.as_raw_fd(); 253]).unwrap();
    socks.push(s);
    drop(w);
    for s in &socks {
        wait_hangup(s, "a packet with too many descriptors");
    }
    drop(socks);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = daemon_fds(&rig);
    while after > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = daemon_fds(&rig);
    }
    let eof = writers_gone(&r);
    eprintln!("daemon descriptors: {before} before, {after} after 101 hostile packets; pipe writers gone: {eof}");
    assert!(after <= before, "the daemon's descriptors grew from {before} to {after}");
    assert!(eof, "the daemon still holds a descriptor it received in a cut packet");
    let log = rig.daemon_log();
    assert!(log.contains("too many fds"), "the daemon logged no reason:\n{log}");

    let res = finish(&mut good, start, Duration::from_secs(30));
    res.assert_ok("aplay next to descriptor floods");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "stream next to descriptor floods");
}

const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn add_conf(rig: &Rig, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(&rig.conf).expect("open asound.conf");
    writeln!(f, "{text}").expect("append asound.conf");
}

fn assert_root() {
    // SAFETY: plain getter.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests run a fake daemon as another user with setpriv, which needs root (CI runs as root)"
    );
}

/// A fake shmixd run as uid 65534: it listens on `sock`, answers nothing, and appends one line
/// `BYTES FDS` per connection to `report` once the client hung up (or went quiet for 5 s).
const FAKE_DAEMON: &str = r#"
import os, socket, sys
path, report = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(path)
os.chmod(path, 0o777)
s.listen(8)
open(report + ".ready", "w").close()
s.settimeout(60)
while True:
    try:
        c, _ = s.accept()
    except socket.timeout:
        break
    c.settimeout(5)
    nbytes = nfds = 0
    try:
        while True:
            data, anc, flags, _ = c.recvmsg(4096, socket.CMSG_SPACE(253 * 4))
            for lvl, typ, d in anc:
                if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    nfds += len(d) // 4
            if not data and not anc:
                break
            nbytes += len(data)
    except OSError:
        pass
    with open(report, "a") as f:
        f.write(f"{nbytes} {nfds}\n")
    c.close()
"#;

/// Finding 4: a daemon of another user (here a listener run as uid 65534 in a directory it
/// owns, named by the PCM's `socket` key) is refused by the PCM plugin, `shmixctl` and the ctl
/// plugin right after `connect()`: each exits non-zero naming the socket, the impostor's uid and
/// who was expected, and the impostor received not one byte nor one descriptor.
#[test]
fn a_fake_daemon_of_another_user_gets_nothing() {
    assert_root();
    let python = Path::new("/usr/bin/python3");
    assert!(python.exists(), "this test runs its fake daemon with /usr/bin/python3: install python3");
    let rig = Rig::new(Card::default(), &[]);
    let fake = rig.path("fake");
    std::fs::create_dir(&fake).unwrap();
    std::os::unix::fs::chown(&fake, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(&fake, 0o755);
    chmod(rig.dir.path(), 0o711);
    let script = rig.path("fake.py");
    std::fs::write(&script, FAKE_DAEMON).unwrap();
    chmod(&script, 0o644);
    let sock = fake.join("socket");
    let report = fake.join("report");
    let mut daemon = std::process::Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "--"])
        .arg(python)
        .arg(&script)
        .arg(&sock)
        .arg(&report)
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv python3");
    let ready = report.with_extension("ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(daemon.try_wait().unwrap().is_none(), "the fake daemon exited");
        assert!(Instant::now() < deadline, "the fake daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    add_conf(
        &rig,
        &format!(
            "pcm.fake {{ type shmix socket \"{s}\" }}\nctl.fake {{ type shmix socket \"{s}\" }}",
            s = sock.display()
        ),
    );
    let wav = rig.path("n.wav");
    write_wav(&wav, 2, 48000, &interleave(&[noise(3, 4800, 20000), noise(4, 4800, 20000)]));
    let want = format!("refusing the daemon at {}: it runs as uid {NOBODY}, expected uid 0", sock.display());
    let mut ctl = rig.cmd(artifacts_dir().join("shmixctl"));
    ctl.arg("--socket").arg(&sock).arg("stats");
    let mut aplay = rig.cmd("aplay");
    aplay.args(["-q", "-D", "fake"]).arg(&wav);
    let mut amixer = rig.cmd("amixer");
    amixer.args(["-D", "fake", "scontents"]);
    let mut clients = 0;
    for (what, cmd) in [("aplay", aplay), ("shmixctl", ctl), ("amixer", amixer)] {
        let r = run(cmd, Duration::from_secs(20));
        eprintln!("{what}: exit {:?}: {}", r.status.code(), r.stderr.trim());
        assert!(!r.status.success(), "{what} succeeded against a fake daemon");
        assert!(r.stderr.contains(&want) && r.stderr.contains("impersonating"), "{what} stderr: {}", r.stderr);
        clients += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let lines = loop {
        let text = std::fs::read_to_string(&report).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= clients || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = daemon.kill();
    let _ = daemon.wait();
    eprintln!("fake daemon saw (bytes fds per connection): {lines:?}");
    assert!(lines.len() >= clients, "the fake daemon recorded {} connections, not {clients}", lines.len());
    assert!(lines.iter().all(|l| l == "0 0"), "the fake daemon received data: {lines:?}");
}

/// Finding 4, the daemon's side: `shmixd --socket DIR/socket` refuses a DIR others can write
/// (0777, or 1777 like /tmp) or that another user owns, with the reason, and exits non-zero.
#[test]
fn shmixd_refuses_a_socket_directory_others_control() {
    assert_root();
    let rig = Rig::new(Card::default(), &[]);
    let cases = [
        ("open", 0o777, None, "is writable by others (mode 0777)"),
        ("sticky", 0o1777, None, "(mode 1777)"),
        ("theirs", 0o700, Some(NOBODY), "belongs to uid 65534, not to this daemon's uid 0 or root"),
    ];
    for (name, mode, owner, want) in cases {
        let dir = rig.path(name);
        std::fs::create_dir(&dir).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
        }
        chmod(&dir, mode);
        let sock = dir.join("socket");
        let mut d = rig.cmd(artifacts_dir().join("shmixd"));
        d.arg("--socket").arg(&sock).args(["--device", "card"]);
        let mut child = d.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("shmixd");
        let started = Instant::now();
        if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let r = finish(&mut child, started, Duration::from_secs(10));
        eprintln!("{name} ({mode:04o}, owner {owner:?}): exit {:?}: {}", r.status.code(), r.stderr.trim());
        assert!(!r.status.success() && r.status.code() == Some(1), "shmixd served from {name}: {}", r.stderr);
        assert!(r.stderr.contains(&dir.display().to_string()) && r.stderr.contains(want), "{name}: {}", r.stderr);
        assert!(!sock.exists(), "{name}: shmixd bound its socket");
    }
}

/// Finding 7: a program that gained privileges at exec (here a setgid copy of `shmixctl`,
/// which resolves its socket with the plugin's function) ignores `SHMIX_SOCKET` and
/// `XDG_RUNTIME_DIR` (secure_getenv semantics); the same binary without the bit follows them.
#[test]
fn a_setgid_program_ignores_the_socket_variables() {
    assert_root();
    let dir = scratch_dir("shmix-secure-");
    let plain = dir.path().join("shmixctl-plain");
    let setgid = dir.path().join("shmixctl-setgid");
    for p in [&plain, &setgid] {
        std::fs::copy(artifacts_dir().join("shmixctl"), p).unwrap();
    }
    std::os::unix::fs::chown(&setgid, None, Some(NOBODY)).unwrap();
    chmod(&setgid, 0o2755);
    let env_sock = dir.path().join("env-socket");
    let xdg = dir.path().join("xdg");
    let mut seen = Vec::new();
    for p in [&plain, &setgid] {
        let mut c = std::process::Command::new(p);
        c.env("SHMIX_SOCKET", &env_sock)
            .env("XDG_RUNTIME_DIR", &xdg)
            .env("SHMIX_SYSTEM_SOCKET", &env_sock)
            .arg("stats");
        let r = run(c, Duration::from_secs(20));
        eprintln!("{}: exit {:?}: {}", p.display(), r.status.code(), r.stderr.trim());
        seen.push(r);
    }
    assert!(seen[0].stderr.contains(&env_sock.display().to_string()), "plain: {}", seen[0].stderr);
    let d = dir.path().display().to_string();
    assert!(
        !seen[1].stderr.contains(&d) && !seen[1].stdout.contains(&d),
        "setgid followed the environment: {}",
        seen[1].stderr
    );
}

/// Connects and says `Hello` with `name`; the greeted connection.
fn hello_as(rig: &Rig, name: &str) -> Raw {
    let sock = seqpacket(&rig.sock);
    let hello = SocketMsg::Hello {
        version: PROTOCOL_VERSION,
        direction: Direction::Playback,
        pid: 0,
        name: name.into(),
        device: String::new(),
    };
    socket::send(sock.as_fd(), &hello, &[]).unwrap();
    let p = socket::recv(sock.as_fd()).unwrap();
    match SocketMsg::decode(&p.bytes).expect("daemon sent garbage") {
        SocketMsg::Welcome { device, .. } => Raw { sock, device },
        other => panic!("no welcome: {other:?}"),
    }
}

/// Finding 5: a connection that said `Hello` and then neither creates a stream nor becomes a
/// control connection is closed after `--handshake-timeout`, with the reason logged; a control
/// connection and a connection with a stream stay.
#[test]
fn a_connection_idle_after_hello_is_closed_after_the_handshake_timeout() {
    let rig = Rig::new(Card::default(), &["--handshake-timeout", "0.5"]);
    let t0 = Instant::now();
    let idle = Raw::connect(&rig);
    let busy = Raw::connect(&rig);
    let (_fd, _shm) = busy.stream();
    let ctl = seqpacket(&rig.sock);
    socket::send(ctl.as_fd(), &SocketMsg::ControlHello { version: PROTOCOL_VERSION, name: "ctl".into() }, &[]).unwrap();
    assert!(matches!(SocketMsg::decode(&socket::recv(ctl.as_fd()).unwrap().bytes), Ok(SocketMsg::Welcome { .. })));
    idle.assert_disconnected("a connection idle after Hello");
    let closed_after = t0.elapsed();
    eprintln!("the idle connection was closed after {closed_after:?}");
    assert!(closed_after >= Duration::from_millis(500), "closed before the timeout: {closed_after:?}");
    // Twice the timeout later the others are still served.
    std::thread::sleep(Duration::from_millis(1000));
    let mut pfd =
        [busy.sock.as_raw_fd(), ctl.as_raw_fd()].map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    // SAFETY: two valid pollfds.
    unsafe { libc::poll(pfd.as_mut_ptr(), 2, 0) };
    assert!(
        pfd.iter().all(|p| p.revents == 0),
        "a connection with a stream or a control connection was closed: {pfd:?}"
    );
    let log = rig.daemon_log();
    assert!(log.contains("no stream created within 0.5 s after Hello (--handshake-timeout)"), "{log}");
}

/// Finding 5: the per-uid limit holds over separate processes of one user (each within its
/// per-process limit): with `--max-streams-per-uid 2`, a third aplay is refused with the reason.
#[test]
fn streams_are_limited_per_uid_across_processes() {
    let rig = Rig::new(Card::default(), &["--max-streams-per-uid", "2"]);
    let wav = rig.path("long.wav");
    write_wav(&wav, 2, 48000, &interleave(&[noise(5, 3 * 48000, 20000), noise(6, 3 * 48000, 20000)]));
    let spawn = || {
        let mut c = rig.cmd("aplay");
        c.args(["-q", "-D", "shmix"]).arg(&wav).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let mut first = spawn();
    let mut second = spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.daemon_log().matches(": stream ").count() < 2 {
        assert!(Instant::now() < deadline, "two streams did not start:\n{}", rig.daemon_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = rig.cmd("aplay");
    c.args(["-q", "-D", "shmix"]).arg(&wav);
    let third = run(c, Duration::from_secs(20));
    eprintln!("third aplay: {}", third.stderr.trim());
    assert!(!third.status.success(), "a third stream of the user was admitted");
    assert!(
        third.stderr.contains("too many streams: uid 0 already has 2 (limit --max-streams-per-uid 2)"),
        "{}",
        third.stderr
    );
    for child in [&mut first, &mut second] {
        finish(child, Instant::now(), Duration::from_secs(20)).assert_ok("aplay within the limit");
    }
}

/// Finding 7: a client's name reaches neither the daemon's log nor `shmixctl list` with its
/// control characters: a name that clears the screen and forges a log line is escaped.
#[test]
fn client_names_are_escaped_in_the_log_and_in_shmixctl() {
    let rig = Rig::new(Card::default(), &[]);
    let c = hello_as(&rig, "evil\u{1b}[2J\r\nshmixd INFO: forged");
    let (_fd, _shm) = c.stream();
    let mut ctl = rig.cmd(artifacts_dir().join("shmixctl"));
    ctl.arg("--socket").arg(&rig.sock).arg("list");
    let r = run(ctl, Duration::from_secs(20));
    r.assert_ok("shmixctl list");
    eprintln!("{}", r.stdout);
    assert!(r.stdout.contains("evil\\u{1b}[2J\\r\\nshmixd"), "{}", r.stdout);
    assert!(!r.stdout.contains('\u{1b}') && !r.stdout.contains('\r'), "{:?}", r.stdout);
    let log = rig.daemon_log();
    assert!(log.contains("evil\\u{1b}[2J\\r\\nshmixd INFO: forged"), "{log}");
    assert!(!log.contains('\u{1b}') && !log.lines().any(|l| l.starts_with("shmixd INFO: forged")), "{log:?}");
}

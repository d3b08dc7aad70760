//! Real-time setup of the daemon (security audit, issue 15): a daemon the scheduler refuses
//! (no CAP_SYS_NICE, RLIMIT_RTPRIO below its priority) raises its soft limit, then asks rtkit on
//! the system bus, here a private `dbus-daemon` with a stand-in for rtkit that does what rtkit
//! does (`sched_setscheduler(tid, SCHED_RR | SCHED_RESET_ON_FORK)`); with no bus it says so in
//! one line and plays on. The daemon locks its memory (root here: CAP_IPC_LOCK).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dbus::blocking::Connection;
use dbus::channel::MatchingReceiver;
use dbus::message::MatchRule;
use dbus::{arg::Variant, Message};

use crate::common::*;

const RTKIT: &str = "org.freedesktop.RealtimeKit1";
/// What the stand-in answers for `MaxRealtimePriority`: below the daemon's 20, so the test sees
/// the daemon clamp its request.
const RTKIT_MAX_PRIO: i32 = 15;

/// A private system bus (`dbus-daemon`) on a socket in `dir`; killed on drop.
struct Bus {
    child: Child,
    address: String,
}

impl Bus {
    fn start(dir: &Path) -> Self {
        let sock = dir.join("system_bus_socket");
        let conf = dir.join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                sock.display()
            ),
        )
        .unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run dbus-daemon ({e}): install dbus-daemon (`make deps`)"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not create {}", sock.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, address: format!("unix:path={}", sock.display()) }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves rtkit's two properties and `MakeThreadRealtime` on `address` until the test ends;
/// each `MakeThreadRealtime(tid, prio)` is applied as rtkit applies it and sent on `calls`.
fn fake_rtkit(address: String, calls: mpsc::Sender<(u64, u32, i32)>) -> mpsc::Receiver<()> {
    let (ready_tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let conn = Connection::new_address(&address).expect("connect to the private bus");
        conn.request_name(RTKIT, false, true, true).expect("own the rtkit name");
        conn.start_receive(
            MatchRule::new_method_call(),
            Box::new(move |msg: Message, c: &Connection| {
                let reply = match msg.member().as_deref() {
                    Some("Get") => match msg.read2::<&str, &str>() {
                        Ok((_, "MaxRealtimePriority")) => msg.method_return().append1(Variant(RTKIT_MAX_PRIO)),
                        Ok((_, "RTTimeUSecMax")) => msg.method_return().append1(Variant(200_000i64)),
                        _ => msg.error(&"org.freedesktop.DBus.Error.UnknownProperty".into(), c"no such property"),
                    },
                    Some("MakeThreadRealtime") => {
                        let (tid, prio) = msg.read2::<u64, u32>().expect("MakeThreadRealtime(t tid, u prio)");
                        let param = libc::sched_param { sched_priority: prio as i32 };
                        // SAFETY: sched_setscheduler(2) on a thread id with a valid sched_param.
                        let r = unsafe {
                            libc::sched_setscheduler(
                                tid as libc::pid_t,
                                libc::SCHED_RR | libc::SCHED_RESET_ON_FORK,
                                &param,
                            )
                        };
                        let _ = calls.send((tid, prio, r));
                        msg.method_return()
                    }
                    _ => return true,
                };
                let _ = dbus::channel::Sender::send(c, reply);
                true
            }),
        );
        let _ = ready_tx.send(());
        loop {
            if conn.process(Duration::from_millis(100)).is_err() {
                return;
            }
        }
    });
    ready
}

/// A shmixd command line without CAP_SYS_NICE and with RLIMIT_RTPRIO 0 (soft) / `rtprio_hard`,
/// on the system bus at `bus` (the way the unit's LimitRTPRIO= and an unprivileged user are).
fn unprivileged_shmixd(rig: &Rig, rtprio_hard: u32, bus: &str) -> Command {
    let mut c = rig.cmd("prlimit");
    c.arg(format!("--rtprio=0:{rtprio_hard}"))
        .args(["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--"])
        .arg(artifacts_dir().join("shmixd"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus);
    c
}

fn wait_log(rig: &Rig, needle: &str) -> String {
    wait_for_text(&rig.log, needle, Duration::from_secs(10))
}

/// `/proc/PID/task/TID/stat`'s rt_priority and policy (fields 40 and 41).
fn sched_of(pid: i32, tid: u64) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
    (f[40 - 3].parse().unwrap(), f[41 - 3].parse().unwrap())
}

/// The daemon's limit line `name` in /proc/PID/limits: (soft, hard).
fn limit_of(pid: i32, name: &str) -> (String, String) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let l = s.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in:\n{s}"));
    let v: Vec<&str> = l[name.len()..].split_whitespace().collect();
    (v[0].to_string(), v[1].to_string())
}

/// The daemon may not use SCHED_FIFO 20 (no CAP_SYS_NICE, hard RLIMIT_RTPRIO 10 or less). It
/// raises its soft RLIMIT_RTPRIO from 0 to the hard limit (still not enough), then asks rtkit: it reads
/// `MaxRealtimePriority` (15) and clamps to it, sets RLIMIT_RTTIME to 200 ms (rtkit's condition),
/// and asks for its mix thread (by kernel thread id). That thread then runs SCHED_RR 15.
#[test]
fn rtkit_makes_the_mix_thread_realtime_when_the_scheduler_refuses() {
    let mut rig = Rig::without_daemon(Card::default(), None);
    let bus = Bus::start(rig.dir.path());
    let (tx, calls) = mpsc::channel();
    fake_rtkit(bus.address.clone(), tx).recv_timeout(Duration::from_secs(10)).expect("rtkit stand-in up");
    // Hard RLIMIT_RTPRIO 10, or what this process's hard limit allows (a container may hold it
    // at 0, and raising a hard limit needs more than root there).
    let mut own = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut own) }, 0);
    let hard = own.rlim_max.min(10) as u32;
    rig.start_daemon_cmd(unprivileged_shmixd(&rig, hard, &bus.address), &[]);
    let log = wait_log(&rig, "granted by rtkit");
    let (tid, prio, r) = calls.recv_timeout(Duration::from_secs(5)).expect("no MakeThreadRealtime call");
    assert_eq!(r, 0, "sched_setscheduler for the daemon's thread {tid}: {}", std::io::Error::last_os_error());
    assert_eq!(prio, RTKIT_MAX_PRIO as u32, "priority not clamped to rtkit's maximum");
    let pid = rig.daemon_pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
    assert_eq!(comm.trim(), "shmix-mix", "rtkit was asked for another thread");
    assert_eq!(sched_of(pid, tid), (RTKIT_MAX_PRIO as u32, libc::SCHED_RR as u32));
    assert_eq!(limit_of(pid, "Max realtime timeout"), ("200000".into(), "200000".into()));
    assert_eq!(limit_of(pid, "Max realtime priority"), (hard.to_string(), hard.to_string()));
    if hard > 0 {
        assert!(log.contains(&format!("RLIMIT_RTPRIO raised from 0 to {hard}")), "{log}");
    } else {
        assert!(log.contains("RLIMIT_RTPRIO is 0 (hard limit 0)"), "{log}");
    }
    assert!(log.contains("memory locked"), "{log}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    eprintln!(
        "{}",
        status
            .lines()
            .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmLck") || l.starts_with("VmSize"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.contains("RTPRIO") || l.contains("rtkit") || l.contains("locked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// No system bus at all: one line says so, and the daemon plays on with normal priority (a
/// short sound plays bit-exact).
#[test]
fn without_a_system_bus_the_daemon_says_so_once_and_plays() {
    let mut rig = Rig::without_daemon(Card::default(), None);
    let nowhere: PathBuf = rig.path("no_bus_here");
    let cmd = unprivileged_shmixd(&rig, 0, &format!("unix:path={}", nowhere.display()));
    rig.start_daemon_cmd(cmd, &[]);
    let log = wait_log(&rig, "normal priority");
    assert!(log.contains("no D-Bus system bus"), "{log}");
    let sound = stereo_noise(81, 0.5);
    let wav = rig.path("n.wav");
    write_wav(&wav, 2, 48000, &sound);
    let mut c = rig.cmd("aplay");
    c.args(["-q", "-D", "shmix"]).arg(&wav);
    run(c, Duration::from_secs(20)).assert_ok("aplay");
    assert_contiguous(&rig.recording_s16(), &sound, 2, "played at normal priority");
    let log = rig.daemon_log();
    assert_eq!(log.matches("D-Bus").count(), 1, "{log}");
}

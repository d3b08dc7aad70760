//! Test rig: a private ALSA configuration registering the built plugin and virtual card, a
//! daemon on a temp socket, WAV generation, and comparison of what the card recorded.
//! Everything lives in a fresh temp dir, so tests run in parallel safely.
#![allow(dead_code)]

pub mod analysis;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where cargo put the plugin, the virtual card and shmixd (next to this test binary).
pub fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
    for f in ["libasound_module_pcm_shmix.so", "libasound_module_pcm_shmix_vcard.so", "shmixd"] {
        assert!(
            dir.join(f).exists(),
            "{} is missing: run `cargo build --workspace` first (`make test` does)",
            dir.join(f).display()
        );
    }
    dir
}

/// The virtual card's setup.
#[derive(Debug, Clone)]
pub struct Card {
    pub format: &'static str,
    pub rate: u32,
    pub channels: u32,
    /// Extra `key value` lines for the card's config block (`@DIR@` stands for the rig's temp
    /// dir).
    pub extra: Vec<String>,
}

impl Default for Card {
    fn default() -> Self {
        Self { format: "S16_LE", rate: 48000, channels: 2, extra: Vec::new() }
    }
}

/// Where rigs keep their files: `SHMIX_TEST_DIR` if set, else `/dev/shm` when it is a writable
/// directory, else the system temp dir. The virtual card writes its recording from inside the
/// daemon's mix thread; on a disk file system that write sometimes waits for a journal commit
/// (tens of ms on a busy virtual disk: measured as zeros in the recording of bit-exact tests
/// while another process wrote to the disk), which the card then plays as an underrun and a
/// test would blame on shmix. A tmpfs write never waits for the disk.
pub fn scratch_root() -> PathBuf {
    if let Some(d) = std::env::var_os("SHMIX_TEST_DIR") {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    // Writable, and not mounted noexec (tests run the C programs they compile from there).
    // SAFETY: access(2) and statvfs(2) on a NUL-terminated path, `st` a valid out pointer.
    let usable = shm.is_dir()
        && unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            libc::access(c"/dev/shm".as_ptr(), libc::W_OK | libc::X_OK) == 0
                && libc::statvfs(c"/dev/shm".as_ptr(), &mut st) == 0
                && st.f_flag & libc::ST_NOEXEC == 0
        };
    if usable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A fresh private directory under [`scratch_root`], removed when dropped.
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir_in(scratch_root()).expect("tempdir")
}

/// A private ALSA setup with a virtual card, and a daemon on it.
#[derive(Debug)]
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub sock: PathBuf,
    pub rec: PathBuf,
    pub log: PathBuf,
    pub card: Card,
    /// Every card of the rig, in `--device` order (one, named `card`, unless the rig was made
    /// with [`Rig::with_cards`]).
    pub cards: Vec<RigCard>,
    /// `--state-dir` of a multi-card rig (where `shmixctl default` is remembered); `None` for
    /// the single-card rigs, whose daemon command line is what it always was.
    pub state_dir: Option<PathBuf>,
    daemon: Option<Child>,
}

/// One card of a rig as configured: its PCM name (what `--device`, the plugin's `device` key
/// and `shmixctl` say), its setup (with the rig's own keys added), its files.
#[derive(Debug, Clone)]
pub struct RigCard {
    pub name: String,
    pub card: Card,
    /// Its `playback_file`.
    pub rec: PathBuf,
    /// Its `gone_file`, if it was made pluggable: the card is gone while this file exists.
    pub gone: Option<PathBuf>,
    /// Its `capture_file`, if it was given capture contents.
    pub capture: Option<PathBuf>,
}

impl RigCard {
    /// Bytes per frame in the card's format.
    pub fn frame_bytes(&self) -> usize {
        analysis::Fmt::from_name(self.card.format).bytes() * self.card.channels as usize
    }
}

/// What a multi-card rig is made of: a card, its PCM name, optional capture contents and plug.
#[derive(Debug, Clone)]
pub struct CardSpec {
    pub name: String,
    pub card: Card,
    /// Raw frames in the card's format for its capture side (written to `NAME.capture.raw`).
    pub capture: Option<Vec<u8>>,
    /// Give the card a `gone_file "@DIR@/NAME.gone"` ([`Rig::unplug`], [`Rig::plug_back`]).
    pub pluggable: bool,
}

impl CardSpec {
    pub fn new(name: &str, card: Card) -> Self {
        Self { name: name.to_owned(), card, capture: None, pluggable: false }
    }

    /// The card's capture side is fed from `bytes` (raw frames in its format).
    pub fn with_capture(mut self, bytes: Vec<u8>) -> Self {
        self.capture = Some(bytes);
        self
    }

    /// The card can be unplugged and plugged back in by the test.
    pub fn pluggable(mut self) -> Self {
        self.pluggable = true;
        self
    }
}

/// The card with the rig's keys added: `capture_file` (if any) and `rewind true` unless the
/// test said otherwise (like a hardware card, the virtual card may be rewound).
fn prepare_card(mut card: Card, capture: Option<&Path>) -> Card {
    if let Some(cap) = capture {
        card.extra.push(format!("capture_file \"{}\"", cap.display()));
    }
    if !card.extra.iter().any(|l| l.trim_start().starts_with("rewind ")) {
        card.extra.push("rewind true".into());
    }
    card
}

/// The `pcm.NAME` block of a virtual card recording to `rec`.
fn card_block(name: &str, card: &Card, rec: &Path, dir: &Path) -> String {
    let extra = card.extra.join("\n    ").replace("@DIR@", &dir.display().to_string());
    format!(
        r#"pcm.{name} {{
    type shmix_vcard
    format {format}
    rate {rate}
    channels {channels}
    playback_file "{rec}"
    {extra}
}}
"#,
        format = card.format,
        rate = card.rate,
        channels = card.channels,
        rec = rec.display(),
    )
}

impl Rig {
    /// Writes the config and starts shmixd on the card with `daemon_args` added.
    pub fn new(card: Card, daemon_args: &[&str]) -> Self {
        Self::with_capture(card, daemon_args, None)
    }

    /// As [`Rig::new`], the card's capture side fed from `capture` (raw frames in the card's
    /// format, written to `capture.raw` in the rig's dir; silence after its end).
    pub fn with_capture(card: Card, daemon_args: &[&str], capture: Option<&[u8]>) -> Self {
        let mut rig = Self::without_daemon(card, capture);
        rig.start_daemon(daemon_args);
        rig
    }

    /// The rig's files and config, no daemon yet (start one with [`Rig::start_daemon_cmd`]).
    pub fn without_daemon(card: Card, capture: Option<&[u8]>) -> Self {
        let art = artifacts_dir();
        let dir = scratch_dir("shmix-test-");
        let conf = dir.path().join("asound.conf");
        let sock = dir.path().join("shmix.sock");
        let rec = dir.path().join("card.raw");
        let log = dir.path().join("shmixd.log");
        let cap = capture.map(|bytes| {
            let cap = dir.path().join("capture.raw");
            std::fs::write(&cap, bytes).expect("write capture.raw");
            cap
        });
        let card = prepare_card(card, cap.as_deref());
        let text = conf_text(&art, &card_block("card", &card, &rec, dir.path()), &sock);
        std::fs::write(&conf, text).expect("write asound.conf");
        let cards =
            vec![RigCard { name: "card".into(), card: card.clone(), rec: rec.clone(), gone: None, capture: cap }];
        Self { dir, conf, sock, rec, log, card, cards, state_dir: None, daemon: None }
    }

    /// Several virtual cards (PCM names and setups, in `--device` order: the first is the
    /// default) and a daemon serving them all, with `daemon_args` added. See
    /// [`Rig::with_card_specs`].
    pub fn with_cards(cards: &[(&str, Card)], daemon_args: &[&str]) -> Self {
        Self::with_card_specs(cards.iter().map(|(n, c)| CardSpec::new(n, c.clone())).collect(), daemon_args)
    }

    /// Several virtual cards and a daemon on them (`--device` for each, in order, and
    /// `--state-dir DIR/state`). Card NAME is `pcm.NAME`, records to `NAME.raw` in the rig's dir
    /// ([`Rig::recording_of`]); `pcm.shmix` and `pcm.shmix_monitor` follow the default device,
    /// `pcm.shmix_NAME` and `pcm.shmix_monitor_NAME` are pinned to NAME (plugin key `device`);
    /// `ctl.shmix_NAME` controls NAME's volumes.
    /// `rig.rec` and `rig.card` are the first card's.
    pub fn with_card_specs(specs: Vec<CardSpec>, daemon_args: &[&str]) -> Self {
        let mut rig = Self::multi_without_daemon(specs);
        rig.start_daemon(daemon_args);
        rig
    }

    /// [`Rig::with_card_specs`] without starting the daemon.
    pub fn multi_without_daemon(specs: Vec<CardSpec>) -> Self {
        assert!(!specs.is_empty(), "a rig needs a card");
        let art = artifacts_dir();
        let dir = scratch_dir("shmix-test-");
        let conf = dir.path().join("asound.conf");
        let sock = dir.path().join("shmix.sock");
        let log = dir.path().join("shmixd.log");
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).expect("create the state dir");
        let mut cards = Vec::new();
        let mut blocks = String::new();
        for spec in specs {
            let name = spec.name;
            assert!(
                !name.is_empty()
                    && !name.starts_with("shmix")
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && cards.iter().all(|c: &RigCard| c.name != name),
                "card name {name:?}: distinct, [A-Za-z0-9_], not shmix*"
            );
            let rec = dir.path().join(format!("{name}.raw"));
            let cap = spec.capture.map(|bytes| {
                let p = dir.path().join(format!("{name}.capture.raw"));
                std::fs::write(&p, bytes).expect("write the capture file");
                p
            });
            let mut card = prepare_card(spec.card, cap.as_deref());
            let gone = spec.pluggable.then(|| {
                card.extra.push(format!("gone_file \"@DIR@/{name}.gone\""));
                dir.path().join(format!("{name}.gone"))
            });
            blocks.push_str(&card_block(&name, &card, &rec, dir.path()));
            blocks.push_str(&format!(
                r#"pcm.shmix_{name} {{
    type shmix
    socket "{sock}"
    device "{name}"
}}
pcm.shmix_monitor_{name} {{
    type shmix
    socket "{sock}"
    monitor true
    device "{name}"
}}
ctl.shmix_{name} {{
    type shmix
    socket "{sock}"
    device "{name}"
}}
"#,
                sock = sock.display()
            ));
            cards.push(RigCard { name, card, rec, gone, capture: cap });
        }
        let text = conf_text(&art, &blocks, &sock);
        std::fs::write(&conf, text).expect("write asound.conf");
        let (rec, card) = (cards[0].rec.clone(), cards[0].card.clone());
        Self { dir, conf, sock, rec, log, card, cards, state_dir: Some(state_dir), daemon: None }
    }

    /// `ALSA_CONFIG_PATH` value for programs of this rig.
    pub fn alsa_config_path(&self) -> String {
        format!("/usr/share/alsa/alsa.conf:{}", self.conf.display())
    }

    /// A command with this rig's ALSA configuration.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        // Nothing from the environment of the test runner steers the plugin elsewhere.
        c.env("ALSA_CONFIG_PATH", self.alsa_config_path()).env_remove("SHMIX_SOCKET").env_remove("SHMIX_DEVICE");
        c
    }

    /// Starts shmixd (logging to `self.log`) and waits until its socket exists.
    pub fn start_daemon(&mut self, args: &[&str]) {
        self.start_daemon_cmd(self.cmd(artifacts_dir().join("shmixd")), args);
    }

    /// Starts `cmd` (a shmixd command line, perhaps behind a wrapper such as `setpriv`) as this
    /// rig's daemon, with the socket, devices (`--device card` for a single-card rig; every
    /// card in order and `--state-dir` for a multi-card one) and `args` added; waits until its
    /// socket exists.
    pub fn start_daemon_cmd(&mut self, mut cmd: Command, args: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let mut base: Vec<std::ffi::OsString> = vec!["--socket".into(), self.sock.clone().into()];
        for c in &self.cards {
            base.push("--device".into());
            base.push(c.name.clone().into());
        }
        if let Some(d) = &self.state_dir {
            base.push("--state-dir".into());
            base.push(d.clone().into());
        }
        let child = cmd
            .args(base)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shmixd");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.sock.exists() {
            if let Some(st) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("shmixd exited early ({st}):\n{}", self.daemon_log());
            }
            assert!(Instant::now() < deadline, "shmixd did not create its socket:\n{}", self.daemon_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's pid.
    pub fn daemon_pid(&self) -> i32 {
        self.daemon.as_ref().expect("daemon running").id() as i32
    }

    /// Sends `sig` to the daemon and waits for it.
    pub fn signal_daemon(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.daemon.take().expect("daemon running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        wait_timeout(&mut child, Duration::from_secs(10)).expect("shmixd did not exit within 10 s")
    }

    /// Everything the daemon logged so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's mix cycles as of its last stats line (it logs one a second).
    pub fn daemon_cycles(&self) -> u64 {
        self.daemon_log()
            .lines()
            .rev()
            .find_map(|l| l.split(" cycles ").nth(1).and_then(|r| r.split_whitespace().next()?.parse().ok()))
            .unwrap_or(0)
    }

    /// The card's recording, as interleaved S16 samples (S16_LE cards only).
    pub fn recording_s16(&self) -> Vec<i16> {
        assert_eq!(self.card.format, "S16_LE");
        let b = std::fs::read(&self.rec).unwrap_or_default();
        b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
    }

    /// Synchronises on an observable event instead of a fixed sleep: waits (up to `limit`)
    /// until the card has played a non-zero sample on `channel` (of `channels`), that is, until
    /// the client whose sound is on that channel is really streaming. Panics after `limit`.
    pub fn wait_for_sound(&self, channels: usize, channel: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let b = std::fs::read(&self.rec).unwrap_or_default();
            let step = 2 * channels;
            if b.chunks_exact(step).any(|f| f[2 * channel] != 0 || f[2 * channel + 1] != 0) {
                return;
            }
            assert!(Instant::now() < deadline, "channel {channel} stayed silent on the card for {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A WAV path inside this rig's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The card called `name` (`card` in a single-card rig).
    pub fn card_named(&self, name: &str) -> &RigCard {
        self.cards.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("the rig has no card {name:?}"))
    }

    /// Everything card `name` has played so far, raw bytes in its format.
    pub fn recording_of(&self, name: &str) -> Vec<u8> {
        std::fs::read(&self.card_named(name).rec).unwrap_or_default()
    }

    /// Card `name`'s recording as interleaved S16 samples (S16_LE cards only).
    pub fn recording_s16_of(&self, name: &str) -> Vec<i16> {
        assert_eq!(self.card_named(name).card.format, "S16_LE", "card {name}");
        self.recording_of(name).chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
    }

    /// Frames card `name` has played so far (the length of its recording).
    pub fn recorded_frames(&self, name: &str) -> usize {
        let c = self.card_named(name);
        std::fs::metadata(&c.rec).map_or(0, |m| m.len() as usize / c.frame_bytes())
    }

    /// Pulls card `name` out (creates its `gone_file`; the card must be [`CardSpec::pluggable`]).
    pub fn unplug(&self, name: &str) {
        let gone = self.card_named(name).gone.as_ref().unwrap_or_else(|| panic!("card {name} is not pluggable"));
        std::fs::write(gone, b"").expect("create the gone_file");
    }

    /// Puts card `name` back (removes its `gone_file`).
    pub fn plug_back(&self, name: &str) {
        let gone = self.card_named(name).gone.as_ref().unwrap_or_else(|| panic!("card {name} is not pluggable"));
        std::fs::remove_file(gone).expect("remove the gone_file");
    }

    /// A `shmixctl --socket SOCK ARGS...` command for this rig's daemon.
    pub fn shmixctl(&self, args: &[&str]) -> Command {
        let mut c = self.cmd(artifacts_dir().join("shmixctl"));
        c.arg("--socket").arg(&self.sock).args(args);
        c
    }

    /// Runs `shmixctl ARGS...` to success and returns what it printed.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let r = run(self.shmixctl(args), Duration::from_secs(10));
        r.assert_ok(&format!("shmixctl {}", args.join(" ")));
        r.stdout
    }

    /// Runs `shmixctl ARGS... --json` to success and parses what it printed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let all: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        let out = self.ctl_ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("shmixctl {args:?} printed no JSON ({e}):\n{out}"))
    }

    /// `shmixctl devices --json`: one object per device (a top-level array; an object holding
    /// a `devices` array is accepted too).
    pub fn devices(&self) -> Vec<serde_json::Value> {
        let v = self.ctl_json(&["devices"]);
        let list = if v.is_array() { &v } else { &v["devices"] };
        list.as_array().unwrap_or_else(|| panic!("shmixctl devices --json: no array of devices: {v}")).clone()
    }

    /// Device `name` of `shmixctl devices --json`.
    pub fn device(&self, name: &str) -> serde_json::Value {
        let all = self.devices();
        all.iter().find(|d| d["name"] == name).unwrap_or_else(|| panic!("device {name} is not listed: {all:?}")).clone()
    }

    /// The streams of `shmixctl list --json`.
    pub fn streams(&self) -> Vec<serde_json::Value> {
        let v = self.ctl_json(&["list"]);
        v["streams"].as_array().unwrap_or_else(|| panic!("shmixctl list --json: no streams array: {v}")).clone()
    }

    /// The listed stream of the process `pid` (the first, if it has several). Panics if none.
    pub fn stream_of(&self, pid: u32) -> serde_json::Value {
        let all = self.streams();
        all.iter().find(|s| s["pid"] == pid).unwrap_or_else(|| panic!("no stream of pid {pid} listed: {all:?}")).clone()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut c, Duration::from_secs(5)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            // A failed test shows what the daemon saw (its stats lines count device xruns and
            // stream underruns: whether a gap was the machine's or a client's).
            let log = self.daemon_log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("--- last {} lines of the daemon's log ---\n{}", tail.len(), tail.join("\n"));
        }
    }
}

/// The rig's ALSA configuration: the plugin and the virtual card registered, `blocks` (the
/// cards' PCMs), then `pcm.shmix`, `pcm.shmix_monitor` and `ctl.shmix` on `sock`.
fn conf_text(art: &Path, blocks: &str, sock: &Path) -> String {
    format!(
        r#"pcm_type.shmix {{ lib "{plugin}" }}
pcm_type.shmix_vcard {{ lib "{vcard}" }}
{blocks}pcm.shmix {{
    type shmix
    socket "{sock}"
}}
pcm.shmix_monitor {{
    type shmix
    socket "{sock}"
    monitor true
}}
ctl_type.shmix {{ lib "{plugin}" }}
ctl.shmix {{
    type shmix
    socket "{sock}"
}}
"#,
        plugin = art.join("libasound_module_pcm_shmix.so").display(),
        vcard = art.join("libasound_module_pcm_shmix_vcard.so").display(),
        sock = sock.display(),
    )
}

/// Compiles `tests/c/NAME.c` (against alsa-lib and libm) into the rig's temp dir.
pub fn compile_c(rig: &Rig, name: &str) -> PathBuf {
    compile_c_with(rig, name, &["-lasound", "-lm"])
}

/// Compiles `tests/c/NAME.c` against `libs` (compiler flags: `-l`, `-I`) into the rig's temp dir.
pub fn compile_c_with(rig: &Rig, name: &str, libs: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(format!("{name}.c"));
    let exe = rig.path(name);
    let out = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(libs)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `cc` ({e}): install gcc (`make deps`)"));
    assert!(
        out.status.success(),
        "compiling {} failed (the Makefile's DEB_PACKAGES has its -dev package):\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Waits for `child` at most `limit`.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Output of a finished program, with its wall time.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
}

impl Run {
    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed ({:?}, signal {:?}):\nstdout: {}\nstderr: {}",
            self.status.code(),
            self.status.signal(),
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `cmd` to the end (at most `limit`), capturing its output.
pub fn run(mut cmd: Command, limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    finish(&mut child, start, limit)
}

/// Runs `cmd` to the end (at most `limit`, else it is killed and the test fails) with its output
/// collected, and returns it with the program's rusage (all threads, from wait4: std's `Child`
/// cannot report it). `tick(pid, elapsed)` is called every 5 ms while it runs.
#[allow(clippy::zombie_processes)] // reaped by wait4
pub fn run_rusage(
    mut cmd: Command,
    limit: Duration,
    mut tick: impl FnMut(libc::pid_t, Duration),
) -> (Run, libc::rusage) {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    loop {
        // SAFETY: wait4 on our own child with valid out pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        tick(pid, start.elapsed());
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("program did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = start.elapsed();
    let run = Run {
        status: ExitStatus::from_raw(status),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        wall,
    };
    (run, ru)
}

/// User plus system CPU seconds of a rusage.
pub fn cpu_secs(ru: &libc::rusage) -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Waits for a spawned child (stdout/stderr piped) at most `limit` and collects its output.
pub fn finish(child: &mut Child, start: Instant, limit: Duration) -> Run {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let status = match wait_timeout(child, limit) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("program did not finish within {limit:?}: stderr so far unavailable (killed)");
        }
    };
    let wall = start.elapsed();
    Run { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap(), wall }
}

/// Deterministic noise: xorshift32 samples in +-`amp`, never 0 (so silence is detectable).
pub fn noise(seed: u32, n: usize, amp: i16) -> Vec<i16> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = ((x >> 16) as i32 % (i32::from(amp) + 1)) as i16;
            if v == 0 {
                1
            } else if x & 1 == 0 {
                v
            } else {
                -v
            }
        })
        .collect()
}

/// Interleaves per-channel sample lists (all the same length).
/// Stereo noise at 48 kHz, `secs` long, from two seeds (never a frame of zeros).
pub fn stereo_noise(seed: u32, secs: f64) -> Vec<i16> {
    let n = (secs * 48000.0) as usize;
    interleave(&[noise(seed, n, 30000), noise(seed + 1000, n, 30000)])
}

/// Writes interleaved S16 samples as raw little-endian bytes.
pub fn write_raw(path: &Path, samples: &[i16]) {
    let b: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, b).expect("write raw");
}

pub fn interleave(chans: &[Vec<i16>]) -> Vec<i16> {
    let n = chans[0].len();
    (0..n).flat_map(|i| chans.iter().map(move |c| c[i])).collect()
}

/// Writes a 16-bit PCM WAV.
pub fn write_wav(path: &Path, channels: u16, rate: u32, samples: &[i16]) {
    let data_len = (samples.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + data_len as usize);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    b.extend_from_slice(&(channels * 2).to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b).expect("write wav");
}

/// Channel `c` of interleaved `samples`.
pub fn channel(samples: &[i16], channels: usize, c: usize) -> Vec<i16> {
    samples.iter().skip(c).step_by(channels).copied().collect()
}

/// Checks that `recorded` holds `expected` bit-exact and contiguous with only silence (zeros)
/// around it, where `expected` never has a frame of all zeros at its ends. Returns the offset.
/// Works on one channel or on interleaved frames alike (`frame` samples per step).
pub fn assert_contiguous(recorded: &[i16], expected: &[i16], frame: usize, what: &str) -> usize {
    let start = recorded.chunks_exact(frame).position(|f| f.iter().any(|s| *s != 0));
    let Some(start_frame) = start else {
        panic!("{what}: the card recorded only silence ({} frames)", recorded.len() / frame)
    };
    let start = start_frame * frame;
    let end = start + expected.len();
    assert!(
        end <= recorded.len(),
        "{what}: recording too short: sound starts at frame {start_frame}, needs {} frames, has {}",
        expected.len() / frame,
        (recorded.len() - start) / frame
    );
    if let Some(i) = (0..expected.len()).find(|&i| recorded[start + i] != expected[i]) {
        panic!(
            "{what}: first difference at frame {} of the sound (recorded {:?}, expected {:?}; sound starts at frame {start_frame}); {}",
            i / frame,
            &recorded[start + i..(start + i + 8).min(recorded.len())],
            &expected[i..(i + 8).min(expected.len())],
            describe_gap(recorded, expected, frame, start + i - i % frame, i - i % frame)
        );
    }
    if let Some(i) = recorded[end..].iter().position(|s| *s != 0) {
        panic!("{what}: non-silence after the sound, {} frames after its end", i / frame);
    }
    start_frame
}
/// For a failure message: what the recording holds from frame `rec_at` on where `expected`
/// (from `sound_at`) was due: how many silent frames, and where the sound picks up again.
pub fn describe_gap(recorded: &[i16], expected: &[i16], frame: usize, rec_at: usize, sound_at: usize) -> String {
    let silent = recorded[rec_at..].chunks_exact(frame).take_while(|f| f.iter().all(|s| *s == 0)).count();
    let next = rec_at + silent * frame;
    let Some(probe) = recorded.get(next..next + 4 * frame) else {
        return format!("{silent} silent frames to the end of the recording");
    };
    let found =
        expected.chunks_exact(frame).enumerate().map(|(k, _)| k * frame).find(|&k| expected[k..].starts_with(probe));
    match found {
        Some(k) => format!(
            "{silent} silent frames, then the sound goes on at its frame {} ({} frames skipped)",
            k / frame,
            (k as i64 - sound_at as i64) / frame as i64
        ),
        None => format!("{silent} silent frames, then something that is not in the sound"),
    }
}

/// One stretch of the recording that equals `sound[sound_at..sound_at + len]` (frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub rec_at: usize,
    pub sound_at: usize,
    pub len: usize,
}

/// Polls `probe` every 20 ms until it returns `Some` (at most `limit`; then panics, saying
/// `what`). For conditions on the daemon's listings or the cards.
pub fn wait_until<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to `limit`) until the file at `path` contains `needle`; returns its contents.
/// Panics after `limit`. For programs whose output marks an event (a start-up line).
pub fn wait_for_text(path: &Path, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{} never contained {needle:?} within {limit:?}:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Splits the recording into pieces of `sound`: every frame of the recording is either silence
/// (all samples 0) or part of a maximal run that equals a stretch of `sound` bit for bit (a run
/// that goes on with the frame after the last piece is that, whatever its length; any other is
/// located by its first 8 frames). Panics on a frame that is neither (garbage, or a mix). `sound`
/// must never hold a frame of zeros.
pub fn pieces_of(rec: &[i16], sound: &[i16], ch: usize, what: &str) -> Vec<Piece> {
    let rec_frames = rec.len() / ch;
    let snd_frames = sound.len() / ch;
    let rf = |i: usize| &rec[i * ch..(i + 1) * ch];
    let sf = |i: usize| &sound[i * ch..(i + 1) * ch];
    let key = 8usize; // frames that locate a piece unambiguously
    let mut out = Vec::new();
    let mut i = 0;
    while i < rec_frames {
        if rf(i).iter().all(|s| *s == 0) {
            i += 1;
            continue;
        }
        let k = key.min(rec_frames - i);
        // The sound going on where the last piece ended, however short the run (a card that ran
        // dry right after one frame); else the run is located by its first `key` frames.
        let next = out.last().map_or(0, |p: &Piece| p.sound_at + p.len);
        let follows = next < snd_frames && rf(i) == sf(next);
        let found = || (0..=snd_frames.saturating_sub(k)).find(|&j| (0..k).all(|t| rf(i + t) == sf(j + t)));
        let at = follows.then_some(next).or_else(found).unwrap_or_else(|| {
            panic!(
                "{what}: recorded frame {i} ({:?}...) is neither silence nor a stretch of the sound; pieces so \
                     far: {out:?}",
                &rec[i * ch..(i * ch + 8).min(rec.len())]
            )
        });
        let mut len = 0;
        while i + len < rec_frames && at + len < snd_frames && rf(i + len) == sf(at + len) {
            len += 1;
        }
        out.push(Piece { rec_at: i, sound_at: at, len });
        i += len;
    }
    out
}

/// The rig for the tests that load the machine with hostile clients next to a reference
/// stream: a device buffer of 8 periods (43 ms) instead of 4 (21 ms). On this machine's kernel
/// (`Dynamic Preempt: none`, a virtual machine) a real-time thread can wait 20-40 ms for a CPU
/// while other processes sit in long kernel paths (a disk writer beside the tests is enough), and
/// 21 ms underruns the device. What these tests guard against (a spinning, blocked or crashed
/// daemon) shows at either size.
pub fn hostile_load_rig(daemon_args: &[&str]) -> Rig {
    let args: Vec<&str> = ["--periods", "8"].iter().chain(daemon_args).copied().collect();
    Rig::new(Card::default(), &args)
}

/// A reference stream: `secs` of stereo noise played by aplay through the plugin.
pub fn reference(rig: &Rig, seed: u32, secs: usize) -> (Child, Instant, Vec<i16>) {
    let n = secs * 48000;
    let sound = interleave(&[noise(seed, n, 30000), noise(seed + 1, n, 30000)]);
    let wav = rig.path(&format!("ref{seed}.wav"));
    write_wav(&wav, 2, 48000, &sound);
    let start = Instant::now();
    let child = rig
        .cmd("aplay")
        .args(["-q", "-D", "shmix"])
        .arg(&wav)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, start, sound)
}

/// Entries of /proc/PID/fd of the rig's daemon (its open descriptors).
pub fn daemon_fds(rig: &Rig) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", rig.daemon_pid())).map(|d| d.count()).unwrap_or(0)
}

/// `secs` of noise on one side (`left` or right) of a stereo 48 kHz WAV, silence on the other;
/// returns the path and that side's samples.
pub fn side_wav(rig: &Rig, name: &str, secs: f64, seed: u32, left: bool) -> (PathBuf, Vec<i16>) {
    let n = (secs * 48000.0) as usize;
    let side = noise(seed, n, 20000);
    let silent = vec![0i16; n];
    let both = if left { [side.clone(), silent] } else { [silent, side.clone()] };
    let wav = rig.path(name);
    write_wav(&wav, 2, 48000, &interleave(&both));
    (wav, side)
}

//! Drives real ALSA programs (`aplay`, `arecord`) against the built `shmix_vcard` plugin through a
//! private config (`ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:<tempdir>/asound.conf`) and compares
//! what the card recorded with what was sent, byte for byte. Each test has its own temp dir, so
//! they run in parallel. Build the plugin first: `cargo build -p shmix-vcard`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const RATE: u32 = 48_000;
const CHANNELS: u32 = 2;
const PLUGIN_FILE: &str = "libasound_module_pcm_shmix_vcard.so";

/// The built plugin: `target/<profile>/` is the parent of the `deps/` this test binary lives in.
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent dir");
    let candidates = [deps.parent().map(|p| p.join(PLUGIN_FILE)), Some(deps.join(PLUGIN_FILE))];
    candidates.into_iter().flatten().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "{PLUGIN_FILE} not found next to {} (looked in its parent and in {}): \
                 run `cargo build -p shmix-vcard` first",
            exe.display(),
            deps.display()
        )
    })
}

/// One private ALSA setup: a temp dir with `asound.conf` declaring `pcm.card`.
struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    /// `card_body` goes inside `pcm.card { type shmix_vcard ... }`; `{dir}` is replaced by the
    /// temp dir's path.
    fn new(card_body: &str) -> Self {
        // tmpfs when there is one: the card writes its recording from the playing thread, and a
        // disk write that waits for a journal commit would be heard as an underrun.
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new().prefix("shmix-vcard-").tempdir_in(root).expect("tempdir");
        let body = card_body.replace("{dir}", dir.path().to_str().expect("utf-8 temp path"));
        let conf = format!(
            "pcm_type.shmix_vcard {{ lib \"{}\" }}\npcm.card {{\n type shmix_vcard\n {body}\n}}\n",
            plugin_path().display()
        );
        std::fs::write(dir.path().join("asound.conf"), conf).expect("write asound.conf");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `program args` against this config; panics if it takes over a minute.
    fn run(&self, program: &str, args: &[&str]) -> (Output, Duration) {
        let config_path = format!("/usr/share/alsa/alsa.conf:{}", self.path("asound.conf").display());
        let started = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .env("ALSA_CONFIG_PATH", config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} (install alsa-utils): {e}"));
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait");
                panic!("{program} {args:?} hung for 60 s; stderr: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let elapsed = started.elapsed();
        (child.wait_with_output().expect("wait_with_output"), elapsed)
    }
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// xorshift64*: deterministic noise without a dependency.
struct Prng(u64);

impl Prng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Sample encodings under test (little-endian, interleaved).
#[derive(Debug, Clone, Copy)]
enum Fmt {
    S16,
    S24In32,
    S24Packed,
    S32,
    F32,
}

impl Fmt {
    fn alsa_name(self) -> &'static str {
        match self {
            Fmt::S16 => "S16_LE",
            Fmt::S24In32 => "S24_LE",
            Fmt::S24Packed => "S24_3LE",
            Fmt::S32 => "S32_LE",
            Fmt::F32 => "FLOAT_LE",
        }
    }

    fn bytes(self) -> usize {
        match self {
            Fmt::S16 => 2,
            Fmt::S24Packed => 3,
            Fmt::S24In32 | Fmt::S32 | Fmt::F32 => 4,
        }
    }

    /// One random sample, never all-zero bytes (so silence around the data is detectable).
    fn sample(self, rng: &mut Prng) -> Vec<u8> {
        let r = rng.next_u64();
        let v = match self {
            Fmt::S16 => ((r >> 48) as u16 | 1).to_le_bytes().to_vec(),
            Fmt::S24In32 => {
                // 24 significant bits, sign-extended into the container.
                let s = (((r >> 40) as i32) << 8) >> 8;
                (s | 1).to_le_bytes().to_vec()
            }
            Fmt::S24Packed => ((r >> 40) as u32 | 1).to_le_bytes()[..3].to_vec(),
            Fmt::S32 => ((r >> 32) as u32 | 1).to_le_bytes().to_vec(),
            Fmt::F32 => {
                let x = ((r >> 40) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0;
                (if x == 0.0 { 0.5f32 } else { x }).to_le_bytes().to_vec()
            }
        };
        debug_assert_eq!(v.len(), self.bytes());
        v
    }

    /// `seconds` of noise, raw interleaved frames.
    fn noise(self, seconds: f64, seed: u64) -> Vec<u8> {
        let mut rng = Prng(seed | 1);
        let samples = (seconds * f64::from(RATE)) as usize * CHANNELS as usize;
        (0..samples).flat_map(|_| self.sample(&mut rng)).collect()
    }
}

/// A canonical 44-byte-header WAV (PCM, or IEEE float for `F32`).
fn wav(fmt: Fmt, data: &[u8]) -> Vec<u8> {
    let bits = (fmt.bytes() * 8) as u16;
    let tag: u16 = if matches!(fmt, Fmt::F32) { 3 } else { 1 };
    let block_align = CHANNELS as u16 * fmt.bytes() as u16;
    let mut w = Vec::with_capacity(44 + data.len());
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&tag.to_le_bytes());
    w.extend_from_slice(&(CHANNELS as u16).to_le_bytes());
    w.extend_from_slice(&RATE.to_le_bytes());
    w.extend_from_slice(&(RATE * u32::from(block_align)).to_le_bytes());
    w.extend_from_slice(&block_align.to_le_bytes());
    w.extend_from_slice(&bits.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.extend_from_slice(data);
    w
}

fn is_silent(frame: &[u8]) -> bool {
    frame.iter().all(|&b| b == 0)
}

/// Splits `rec` into (leading silence frames, the rest with trailing silence removed).
fn trim_silence(rec: &[u8], frame_bytes: usize) -> (usize, &[u8]) {
    assert_eq!(rec.len() % frame_bytes, 0, "recording is not whole frames");
    let frames: Vec<&[u8]> = rec.chunks(frame_bytes).collect();
    let lead = frames.iter().take_while(|f| is_silent(f)).count();
    let trail = frames[lead..].iter().rev().take_while(|f| is_silent(f)).count();
    (lead, &rec[lead * frame_bytes..rec.len() - trail * frame_bytes])
}

/// The recording is exactly `data`, contiguous, with only silence around it.
fn assert_recorded_exactly(rec: &[u8], data: &[u8], frame_bytes: usize) {
    let (lead, body) = trim_silence(rec, frame_bytes);
    assert_eq!(
        body.len(),
        data.len(),
        "recorded {} bytes of signal ({} silent frames before), sent {}",
        body.len(),
        lead,
        data.len()
    );
    if let Some(i) = body.iter().zip(data).position(|(a, b)| a != b) {
        panic!("recording differs from the sent data at byte {i} (frame {})", i / frame_bytes);
    }
}

fn play(fmt: Fmt, mmap: bool, seconds: f64, seed: u64) {
    let rig = Rig::new(&format!(
        "format {} rate {RATE} channels {CHANNELS} playback_file \"{{dir}}/rec.raw\"",
        fmt.alsa_name()
    ));
    let data = fmt.noise(seconds, seed);
    let frame_bytes = fmt.bytes() * CHANNELS as usize;
    // S24_LE has no plain WAV form aplay maps to it: play it raw.
    let input = match fmt {
        Fmt::S24In32 => {
            std::fs::write(rig.path("in.raw"), &data).unwrap();
            "in.raw"
        }
        _ => {
            std::fs::write(rig.path("in.wav"), wav(fmt, &data)).unwrap();
            "in.wav"
        }
    };
    let rate = RATE.to_string();
    let channels = CHANNELS.to_string();
    let mut args = vec!["-D", "card"];
    if mmap {
        args.push("--mmap");
    }
    if input == "in.raw" {
        args.extend(["-t", "raw", "-f", fmt.alsa_name(), "-r", &rate, "-c", &channels]);
    }
    args.push(input);
    let (out, took) = rig.run("aplay", &args);
    assert!(out.status.success(), "aplay failed: {}", describe(&out));
    let rec = std::fs::read(rig.path("rec.raw")).expect("the card wrote no playback_file");
    assert_recorded_exactly(&rec, &data, frame_bytes);
    // Sanity only: the card keeps real time, so playing `seconds` takes about that long.
    let lo = Duration::from_secs_f64(seconds * 0.75);
    assert!(took >= lo && took <= Duration::from_secs_f64(seconds + 8.0), "aplay of {seconds} s took {took:?}");
}

#[test]
fn aplay_rw_s16_is_bit_exact_and_real_time() {
    play(Fmt::S16, false, 2.0, 0x5eed_0001);
}

#[test]
fn aplay_mmap_s16_is_bit_exact_and_real_time() {
    play(Fmt::S16, true, 2.0, 0x5eed_0002);
}

#[test]
fn aplay_s32_card() {
    play(Fmt::S32, false, 1.0, 0x5eed_0003);
}

#[test]
fn aplay_float_card() {
    play(Fmt::F32, true, 1.0, 0x5eed_0004);
}

#[test]
fn aplay_s24_cards() {
    play(Fmt::S24In32, false, 1.0, 0x5eed_0005);
    play(Fmt::S24Packed, true, 1.0, 0x5eed_0006);
}

#[test]
fn arecord_gets_the_capture_file() {
    let rig = Rig::new("format S16_LE rate 48000 channels 2 capture_file \"{dir}/cap.raw\"");
    // 1.5 s of source for a 1 s recording: the recording must be its start.
    let source = Fmt::S16.noise(1.5, 0x5eed_0007);
    std::fs::write(rig.path("cap.raw"), &source).unwrap();
    let (out, took) = rig
        .run("arecord", &["-D", "card", "-f", "S16_LE", "-r", "48000", "-c", "2", "-t", "raw", "-d", "1", "out.raw"]);
    assert!(out.status.success(), "arecord failed: {}", describe(&out));
    let got = std::fs::read(rig.path("out.raw")).unwrap();
    assert_eq!(got.len(), 48_000 * 4, "arecord -d 1 records one second");
    if let Some(i) = got.iter().zip(&source).position(|(a, b)| a != b) {
        panic!("captured data differs from capture_file at byte {i}");
    }
    assert!(took >= Duration::from_millis(750), "arecord -d 1 took {took:?}");
}

#[test]
fn arecord_without_capture_file_records_silence() {
    let rig = Rig::new("format S16_LE rate 48000 channels 2");
    let (out, _) = rig
        .run("arecord", &["-D", "card", "-f", "S16_LE", "-r", "48000", "-c", "2", "-t", "raw", "-d", "1", "out.raw"]);
    assert!(out.status.success(), "arecord failed: {}", describe(&out));
    let got = std::fs::read(rig.path("out.raw")).unwrap();
    assert_eq!(got.len(), 48_000 * 4);
    assert!(is_silent(&got));
}

#[test]
fn unknown_config_key_is_refused_by_name() {
    let rig = Rig::new("format S16_LE foo_bar_key 1");
    std::fs::write(rig.path("in.wav"), wav(Fmt::S16, &Fmt::S16.noise(0.1, 9))).unwrap();
    let (out, _) = rig.run("aplay", &["-D", "card", "in.wav"]);
    assert!(!out.status.success(), "aplay accepted it: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown config key 'foo_bar_key'"), "stderr does not name the key: {stderr}");
}

#[test]
fn bad_value_is_refused_by_name() {
    let rig = Rig::new("rate \"fast\"");
    std::fs::write(rig.path("in.wav"), wav(Fmt::S16, &Fmt::S16.noise(0.1, 9))).unwrap();
    let (out, _) = rig.run("aplay", &["-D", "card", "in.wav"]);
    assert!(!out.status.success(), "aplay accepted it: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("'rate'"), "stderr does not name the key: {stderr}");
}

#[test]
fn injected_xrun_is_an_underrun_and_playback_goes_on() {
    let rig = Rig::new("format S16_LE playback_file \"{dir}/rec.raw\" xrun_at_ms 500");
    let data = Fmt::S16.noise(2.0, 0x5eed_0008);
    std::fs::write(rig.path("in.wav"), wav(Fmt::S16, &data)).unwrap();
    let (out, _) = rig.run("aplay", &["-D", "card", "in.wav"]);
    assert!(out.status.success(), "aplay failed: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("underrun"), "no underrun reported: {stderr}");
    // What the card played: a prefix of the data, then (after the writer's prepare) the rest from
    // some later point to the end; what was in the buffer at the xrun is lost.
    let rec = std::fs::read(rig.path("rec.raw")).unwrap();
    let (_, body) = trim_silence(&rec, 4);
    let prefix = body.iter().zip(&data).take_while(|(a, b)| a == b).count() / 4 * 4;
    assert!(prefix >= 20_000 * 4, "only {prefix} bytes played before the xrun");
    assert!(prefix < data.len(), "nothing was lost at the xrun");
    let rest = &body[prefix..];
    assert!(
        data.ends_with(rest) && !rest.is_empty(),
        "after the xrun the card did not play a contiguous tail of the data"
    );
}

#[test]
fn suspend_makes_aplay_resume_and_nothing_is_lost() {
    // Asleep from 500 ms to 700 ms after the start; aplay's resume waits for the wake and the card
    // continues where it stopped, so every frame is played once, in order, 200 ms late.
    let rig = Rig::new("format S16_LE playback_file \"{dir}/rec.raw\" suspend_at_ms 500 suspend_ms 200");
    let data = Fmt::S16.noise(2.0, 0x5eed_000a);
    std::fs::write(rig.path("in.wav"), wav(Fmt::S16, &data)).unwrap();
    for mmap in [false, true] {
        let _ = std::fs::remove_file(rig.path("rec.raw"));
        let args: &[&str] = if mmap { &["-D", "card", "--mmap", "in.wav"] } else { &["-D", "card", "in.wav"] };
        let (out, took) = rig.run("aplay", args);
        assert!(out.status.success(), "aplay (mmap {mmap}) failed: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Suspended. Trying resume. Done."), "mmap {mmap}: stderr: {stderr}");
        assert!(!stderr.contains("Failed. Restarting"), "mmap {mmap}: resume failed: {stderr}");
        assert_eq!(stderr.matches("Suspended").count(), 1, "mmap {mmap}: stderr: {stderr}");
        let rec = std::fs::read(rig.path("rec.raw")).unwrap();
        assert_recorded_exactly(&rec, &data, 4);
        assert!(took >= Duration::from_millis(2150), "2 s of audio and a 200 ms sleep took {took:?}");
    }
}

#[test]
fn disconnect_makes_aplay_fail_with_enodev() {
    let rig = Rig::new("format S16_LE playback_file \"{dir}/rec.raw\" disconnect_at_ms 300");
    let data = Fmt::S16.noise(2.0, 0x5eed_0009);
    std::fs::write(rig.path("in.wav"), wav(Fmt::S16, &data)).unwrap();
    let (out, _) = rig.run("aplay", &["-D", "card", "in.wav"]);
    assert!(!out.status.success(), "aplay survived the unplug: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No such device"), "stderr: {stderr}");
    // Everything recorded before the unplug is a prefix of the data.
    let rec = std::fs::read(rig.path("rec.raw")).unwrap();
    assert!(!rec.is_empty() && data.starts_with(&rec));
}

#[test]
fn xrun_storm_gives_an_underrun_every_time() {
    // An xrun every 300 ms while 3 s of data play through a 100 ms buffer (each xrun drops what
    // is buffered): aplay reports each and goes on; the card starts with the data.
    let rig = Rig::new("format S16_LE playback_file \"{dir}/rec.raw\" xrun_every_ms 300");
    let data = Fmt::S16.noise(3.0, 0x5eed_000b);
    std::fs::write(rig.path("in.wav"), wav(Fmt::S16, &data)).unwrap();
    let (out, _) = rig.run("aplay", &["-D", "card", "--buffer-time=100000", "in.wav"]);
    assert!(out.status.success(), "aplay failed: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let n = stderr.matches("underrun").count();
    assert!(n >= 5, "{n} underruns reported for an xrun every 300 ms of about 3 s: {stderr}");
    let rec = std::fs::read(rig.path("rec.raw")).unwrap();
    let (_, body) = trim_silence(&rec, 4);
    assert!(body.len() < data.len() && data.starts_with(&body[..4 * 1000]), "the card did not start with the data");
}

#[test]
fn gone_file_refuses_open_until_removed() {
    let rig = Rig::new("format S16_LE playback_file \"{dir}/rec.raw\" gone_file \"{dir}/gone\"");
    let data = Fmt::S16.noise(0.5, 0x5eed_000c);
    std::fs::write(rig.path("in.wav"), wav(Fmt::S16, &data)).unwrap();
    std::fs::write(rig.path("gone"), b"").unwrap();
    let (out, _) = rig.run("aplay", &["-D", "card", "in.wav"]);
    assert!(!out.status.success(), "aplay opened an unplugged card: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such device"), "{}", describe(&out));
    std::fs::remove_file(rig.path("gone")).unwrap();
    let (out, _) = rig.run("aplay", &["-D", "card", "in.wav"]);
    assert!(out.status.success(), "aplay failed on the plugged-in card: {}", describe(&out));
    assert_recorded_exactly(&std::fs::read(rig.path("rec.raw")).unwrap(), &data, 4);
}

#[test]
fn aplay_through_fifo_and_batch_card_is_bit_exact_without_violations() {
    // aplay never rewinds or rewrites what it wrote: a 256-frame FIFO and a period-stepping
    // pointer change neither what is played nor the counts (RW, and mmap where each commit
    // reaches the card's `transfer`).
    let rig = Rig::new("format S16_LE playback_file \"{dir}/rec.raw\" fifo 256 batch true stats_file \"{dir}/stats\"");
    let data = Fmt::S16.noise(1.0, 0x5eed_000d);
    std::fs::write(rig.path("in.wav"), wav(Fmt::S16, &data)).unwrap();
    for mmap in [false, true] {
        let _ = std::fs::remove_file(rig.path("rec.raw"));
        let _ = std::fs::remove_file(rig.path("stats"));
        let args: &[&str] = if mmap { &["-D", "card", "--mmap", "in.wav"] } else { &["-D", "card", "in.wav"] };
        let (out, _) = rig.run("aplay", args);
        assert!(out.status.success(), "aplay (mmap {mmap}) failed: {}", describe(&out));
        assert!(!String::from_utf8_lossy(&out.stderr).contains("violation"), "{}", describe(&out));
        assert_recorded_exactly(&std::fs::read(rig.path("rec.raw")).unwrap(), &data, 4);
        let stats = std::fs::read_to_string(rig.path("stats")).expect("the card wrote no stats_file");
        let count = |key: &str| -> u64 {
            let line = stats.lines().find(|l| l.split_whitespace().next() == Some(key));
            let value = line.and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
            value.unwrap_or_else(|| panic!("no '{key}' in stats_file: {stats}"))
        };
        for key in ["fifo_violations", "fifo_violation_frames", "rewinds", "rewind_violations"] {
            assert_eq!(count(key), 0, "mmap {mmap}: {key}: {stats}");
        }
        assert!(count("frames_played") >= data.len() as u64 / 4, "mmap {mmap}: {stats}");
    }
}

#[test]
fn plugin_file_is_found() {
    assert!(Path::new(&plugin_path()).is_file());
}

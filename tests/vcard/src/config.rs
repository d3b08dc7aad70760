//! The `pcm.NAME { type shmix_vcard ... }` block, parsed once at open into a checked [`Config`].
//! `ioplug.rs` reads the `snd_config_t` nodes into [`Value`]s; everything here is safe Rust.
//! Runs in: the application's thread that calls `snd_pcm_open`. RT: no.

use std::fmt;
use std::path::PathBuf;

use crate::sys;

/// One config node's value as alsa-lib typed it. Numbers may come as strings (`rate "48000"`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `SND_CONFIG_TYPE_INTEGER` or `INTEGER64`.
    Int(i64),
    /// `SND_CONFIG_TYPE_REAL`.
    Real(f64),
    /// `SND_CONFIG_TYPE_STRING`.
    Str(String),
    /// A compound (`hint { ... }`) or a pointer node.
    Other,
}

/// The one sample format the card runs at. Silence is all-zero bytes for each of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // named after ALSA's formats, all little-endian
pub enum SampleFormat {
    /// `S16_LE`.
    S16Le,
    /// `S24_LE`: 24 bits in the low bytes of a 4-byte container.
    S24Le,
    /// `S24_3LE`: packed 3 bytes.
    S24_3Le,
    /// `S32_LE`.
    S32Le,
    /// `FLOAT_LE`.
    FloatLe,
    /// `FLOAT64_LE`.
    Float64Le,
}

impl SampleFormat {
    /// Parses an ALSA format name, case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "S16_LE" => Self::S16Le,
            "S24_LE" => Self::S24Le,
            "S24_3LE" => Self::S24_3Le,
            "S32_LE" => Self::S32Le,
            "FLOAT_LE" | "FLOAT32_LE" => Self::FloatLe,
            "FLOAT64_LE" => Self::Float64Le,
            _ => return None,
        })
    }

    /// Bytes one sample occupies in the buffer (the physical width).
    pub fn sample_bytes(self) -> u32 {
        match self {
            Self::S16Le => 2,
            Self::S24_3Le => 3,
            Self::S24Le | Self::S32Le | Self::FloatLe => 4,
            Self::Float64Le => 8,
        }
    }

    /// The `snd_pcm_format_t` value alsa-lib uses for it.
    pub fn to_alsa(self) -> sys::snd_pcm_format_t {
        match self {
            Self::S16Le => sys::SND_PCM_FORMAT_S16_LE,
            Self::S24Le => sys::SND_PCM_FORMAT_S24_LE,
            Self::S24_3Le => sys::SND_PCM_FORMAT_S24_3LE,
            Self::S32Le => sys::SND_PCM_FORMAT_S32_LE,
            Self::FloatLe => sys::SND_PCM_FORMAT_FLOAT_LE,
            Self::Float64Le => sys::SND_PCM_FORMAT_FLOAT64_LE,
        }
    }
}

/// The checked configuration of one virtual card.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `format`, default `S16_LE`.
    pub format: SampleFormat,
    /// `rate` in Hz, default 48000.
    pub rate: u32,
    /// `channels`, default 2.
    pub channels: u32,
    /// `playback_file`: every played frame is appended here raw; `None` discards.
    pub playback_file: Option<PathBuf>,
    /// `capture_file`: raw frames fed to capture; silence after its end or when `None`.
    pub capture_file: Option<PathBuf>,
    /// `loopback`: capture delivers what this card's `playback_file` received since the capture
    /// started (as it is appended, silence while nothing new has been played), instead of
    /// `capture_file`. Default false.
    pub loopback: bool,
    /// `capture_continue`: a capture card opened on a `capture_file` goes on where the last one
    /// on the same file (in this process) was closed, as a microphone's signal goes on while it
    /// is unplugged and plugged in again. Default false: each open starts at the file's start.
    pub capture_continue: bool,
    /// `period_min` in frames, default 16.
    pub period_min_frames: u32,
    /// `buffer_max` in frames, default 65536.
    pub buffer_max_frames: u32,
    /// `skew_ppm`: the card's clock runs at `rate * (1 + skew_ppm / 1e6)`, default 0.
    pub skew_ppm: f64,
    /// `xrun_at_ms`: one forced xrun this long after the first start.
    pub xrun_at_ms: Option<u64>,
    /// `xrun_every_ms`: an xrun storm: a forced xrun every this many ms of running (the first
    /// this long after the first start, each next one this long after the previous one).
    pub xrun_every_ms: Option<u64>,
    /// `disconnect_at_ms`: from this long after the first start on, the card is gone (-ENODEV).
    pub disconnect_at_ms: Option<u64>,
    /// `gone_file`: while this file exists the card is unplugged: opening fails with `-ENODEV`,
    /// and an open card that sees it is gone for good (-ENODEV), like a handle of a card that was
    /// pulled out. Removing the file "plugs the card back in": the next open works.
    pub gone_file: Option<PathBuf>,
    /// `suspend_at_ms`: this long after the first start the card falls asleep once (SUSPENDED).
    pub suspend_at_ms: Option<u64>,
    /// `suspend_ms`: how long it sleeps, default 200; `resume` cannot wake it earlier.
    pub suspend_ms: u64,
    /// `clock_file`: at every start of the clock (start, pause release) a line
    /// `start <CLOCK_MONOTONIC ns> <frames in playback_file>` is appended, so a test can tell
    /// which recorded frame the card played when.
    pub clock_file: Option<PathBuf>,
    /// `fifo` in frames, default 0 (`0..=buffer_max`): the card has fetched this many frames
    /// ahead of its play position, like a DMA FIFO. Whenever it advances it copies the frames
    /// from its play position up to play position + `fifo` (those the application has written)
    /// and later plays that copy, not what the buffer holds then. A fetched frame whose bytes in
    /// the buffer differ when it is played was rewritten too late: a FIFO violation (one per run
    /// of consecutive changed frames; the frames are counted too). So is an application pointer
    /// that moves back below play position + `fifo` (a rewind into fetched frames; with `batch`,
    /// the play position is the real one, not the rounded one alsa-lib sees). Playback only.
    pub fifo_frames: u32,
    /// `batch`: the hardware pointer moves in whole periods only (the reported position is
    /// rounded down to a multiple of the period size), like a BATCH device. The card still plays
    /// and detects xruns on the real clock. Default false.
    pub batch: bool,
    /// `rewind`: whether the card allows rewinds. When false (the default), every backward move
    /// of the application pointer (`snd_pcm_rewind`, seen by the card as appl_ptr going back
    /// between two of its callbacks) is a rewind violation, as on a device with
    /// `SNDRV_PCM_INFO_NO_REWINDS`. When true, rewinds are legal (still subject to `fifo`).
    pub rewind: bool,
    /// `stats_file`: rewritten (`key value` lines: `fifo_violations`, `fifo_violation_frames`,
    /// `rewinds`, `rewind_violations`, `frames_played`) at close and, at most 4 times a second,
    /// after violations. Counts add up over every card on this path (see `card.rs`).
    pub stats_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            format: SampleFormat::S16Le,
            rate: 48_000,
            channels: 2,
            playback_file: None,
            capture_file: None,
            loopback: false,
            capture_continue: false,
            period_min_frames: 16,
            buffer_max_frames: 65_536,
            skew_ppm: 0.0,
            xrun_at_ms: None,
            xrun_every_ms: None,
            disconnect_at_ms: None,
            gone_file: None,
            suspend_at_ms: None,
            suspend_ms: 200,
            clock_file: None,
            fifo_frames: 0,
            batch: false,
            rewind: false,
            stats_file: None,
        }
    }
}

/// Why the config block was refused. `Display` is the whole user-facing line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A key this plugin does not know.
    UnknownKey {
        /// The key as written.
        key: String,
    },
    /// A known key with a value of the wrong type or out of range.
    BadValue {
        /// The key as written.
        key: String,
        /// What was expected.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey { key } => write!(f, "shmix_vcard: unknown config key '{key}'"),
            Self::BadValue { key, reason } => {
                write!(f, "shmix_vcard: bad value for config key '{key}': {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue { key: key.to_owned(), reason: reason.into() }
}

/// An integer in `min..=max`, given as an integer, an integral real or a string.
fn int_in(key: &str, v: &Value, min: i64, max: i64) -> Result<i64, ConfigError> {
    let n = match v {
        Value::Int(n) => *n,
        Value::Real(r) if r.fract() == 0.0 && r.is_finite() => *r as i64,
        Value::Str(s) => s.trim().parse::<i64>().map_err(|_| bad(key, format!("expected an integer, got \"{s}\"")))?,
        _ => return Err(bad(key, "expected an integer")),
    };
    if n < min || n > max {
        return Err(bad(key, format!("{n} is outside {min}..={max}")));
    }
    Ok(n)
}

/// A real number in `min..=max`, given as an integer, a real or a string.
fn real_in(key: &str, v: &Value, min: f64, max: f64) -> Result<f64, ConfigError> {
    let r = match v {
        Value::Int(n) => *n as f64,
        Value::Real(r) => *r,
        Value::Str(s) => s.trim().parse::<f64>().map_err(|_| bad(key, format!("expected a number, got \"{s}\"")))?,
        Value::Other => return Err(bad(key, "expected a number")),
    };
    if !r.is_finite() || r < min || r > max {
        return Err(bad(key, format!("{r} is outside {min}..={max}")));
    }
    Ok(r)
}

fn boolean(key: &str, v: &Value) -> Result<bool, ConfigError> {
    match v {
        Value::Int(n @ (0 | 1)) => Ok(*n == 1),
        Value::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(bad(key, format!("expected true or false, got \"{s}\""))),
        },
        _ => Err(bad(key, "expected true or false")),
    }
}

fn string(key: &str, v: &Value) -> Result<String, ConfigError> {
    match v {
        Value::Str(s) if !s.is_empty() => Ok(s.clone()),
        Value::Str(_) => Err(bad(key, "empty string")),
        _ => Err(bad(key, "expected a string")),
    }
}

impl Config {
    /// Builds the config from the block's `(key, value)` pairs, in order.
    ///
    /// `comment`, `type` and `hint` are accepted and ignored.
    ///
    /// # Errors
    /// [`ConfigError::UnknownKey`] for a key it does not know, [`ConfigError::BadValue`] for a value
    /// of the wrong type or out of range (also when `buffer_max < 2 * period_min` or
    /// `fifo > buffer_max`).
    pub fn from_entries<I>(entries: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, Value)>,
    {
        let mut c = Self::default();
        for (key, v) in entries {
            let k = key.as_str();
            match k {
                "comment" | "type" | "hint" => {}
                "format" => {
                    let name = string(k, &v)?;
                    c.format = SampleFormat::from_name(&name).ok_or_else(|| {
                        bad(
                            k,
                            format!(
                                "unsupported format \"{name}\" (S16_LE, S24_LE, S24_3LE, S32_LE, \
                                 FLOAT_LE, FLOAT64_LE)"
                            ),
                        )
                    })?;
                }
                "rate" => c.rate = int_in(k, &v, 1000, 768_000)? as u32,
                "channels" => c.channels = int_in(k, &v, 1, 64)? as u32,
                "playback_file" => c.playback_file = Some(string(k, &v)?.into()),
                "capture_file" => c.capture_file = Some(string(k, &v)?.into()),
                "loopback" => c.loopback = boolean(k, &v)?,
                "capture_continue" => c.capture_continue = boolean(k, &v)?,
                "period_min" => c.period_min_frames = int_in(k, &v, 1, 1 << 20)? as u32,
                "buffer_max" => c.buffer_max_frames = int_in(k, &v, 2, 1 << 22)? as u32,
                "skew_ppm" => c.skew_ppm = real_in(k, &v, -100_000.0, 100_000.0)?,
                "xrun_at_ms" => c.xrun_at_ms = Some(int_in(k, &v, 0, i64::from(u32::MAX))? as u64),
                "xrun_every_ms" => c.xrun_every_ms = Some(int_in(k, &v, 1, i64::from(u32::MAX))? as u64),
                "gone_file" => c.gone_file = Some(string(k, &v)?.into()),
                "disconnect_at_ms" => {
                    c.disconnect_at_ms = Some(int_in(k, &v, 0, i64::from(u32::MAX))? as u64);
                }
                "suspend_at_ms" => c.suspend_at_ms = Some(int_in(k, &v, 0, i64::from(u32::MAX))? as u64),
                "suspend_ms" => c.suspend_ms = int_in(k, &v, 0, i64::from(u32::MAX))? as u64,
                "clock_file" => c.clock_file = Some(string(k, &v)?.into()),
                // The upper bound is buffer_max's, checked below (it may come later in the block).
                "fifo" => c.fifo_frames = int_in(k, &v, 0, 1 << 22)? as u32,
                "batch" => c.batch = boolean(k, &v)?,
                "rewind" => c.rewind = boolean(k, &v)?,
                "stats_file" => c.stats_file = Some(string(k, &v)?.into()),
                _ => return Err(ConfigError::UnknownKey { key }),
            }
        }
        if u64::from(c.buffer_max_frames) < 2 * u64::from(c.period_min_frames) {
            return Err(bad(
                "buffer_max",
                format!("{} is less than two periods of period_min {}", c.buffer_max_frames, c.period_min_frames),
            ));
        }
        if c.fifo_frames > c.buffer_max_frames {
            return Err(bad("fifo", format!("{} is outside 0..=buffer_max ({})", c.fifo_frames, c.buffer_max_frames)));
        }
        Ok(c)
    }

    /// Bytes per frame in the card's format.
    pub fn frame_bytes(&self) -> u32 {
        self.format.sample_bytes() * self.channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: Value) -> (String, Value) {
        (k.to_owned(), v)
    }

    #[test]
    fn defaults() {
        let c = Config::from_entries([kv("type", Value::Str("shmix_vcard".into()))]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.frame_bytes(), 4);
    }

    #[test]
    fn numbers_as_strings_and_reals() {
        let c = Config::from_entries([
            kv("rate", Value::Str("44100".into())),
            kv("channels", Value::Real(6.0)),
            kv("skew_ppm", Value::Str("-12.5".into())),
            kv("format", Value::Str("float_le".into())),
            kv("hint", Value::Other),
            kv("comment", Value::Str("x".into())),
        ])
        .unwrap();
        assert_eq!((c.rate, c.channels, c.skew_ppm), (44_100, 6, -12.5));
        assert_eq!(c.format, SampleFormat::FloatLe);
        assert_eq!(c.frame_bytes(), 24);
    }

    #[test]
    fn refusals_name_the_key() {
        let e = Config::from_entries([kv("foo", Value::Int(1))]).unwrap_err();
        assert_eq!(e.to_string(), "shmix_vcard: unknown config key 'foo'");
        let e = Config::from_entries([kv("rate", Value::Str("fast".into()))]).unwrap_err();
        assert!(e.to_string().contains("'rate'"), "{e}");
        let e = Config::from_entries([kv("format", Value::Str("U8".into()))]).unwrap_err();
        assert!(e.to_string().contains("'format'"), "{e}");
        let e = Config::from_entries([kv("buffer_max", Value::Int(20))]).unwrap_err();
        assert!(e.to_string().contains("'buffer_max'"), "{e}");
        let e = Config::from_entries([kv("channels", Value::Int(0))]).unwrap_err();
        assert!(e.to_string().contains("'channels'"), "{e}");
        let e = Config::from_entries([kv("suspend_ms", Value::Int(-1))]).unwrap_err();
        assert!(e.to_string().contains("'suspend_ms'"), "{e}");
    }

    #[test]
    fn suspend_keys() {
        let c = Config::from_entries([kv("suspend_at_ms", Value::Int(1000))]).unwrap();
        assert_eq!((c.suspend_at_ms, c.suspend_ms), (Some(1000), 200));
        let c = Config::from_entries([kv("suspend_at_ms", Value::Str("5".into())), kv("suspend_ms", Value::Int(0))])
            .unwrap();
        assert_eq!((c.suspend_at_ms, c.suspend_ms), (Some(5), 0));
    }

    #[test]
    fn storm_and_gone_file_keys() {
        let c = Config::from_entries([kv("xrun_every_ms", Value::Int(300)), kv("gone_file", Value::Str("/x".into()))])
            .unwrap();
        assert_eq!((c.xrun_every_ms, c.gone_file), (Some(300), Some(PathBuf::from("/x"))));
        let e = Config::from_entries([kv("xrun_every_ms", Value::Int(0))]).unwrap_err();
        assert!(e.to_string().contains("'xrun_every_ms'"), "{e}");
        let e = Config::from_entries([kv("gone_file", Value::Str(String::new()))]).unwrap_err();
        assert!(e.to_string().contains("'gone_file'"), "{e}");
    }

    #[test]
    fn hardware_model_keys() {
        let c = Config::from_entries([
            kv("fifo", Value::Int(256)),
            kv("batch", Value::Str("true".into())),
            kv("rewind", Value::Int(1)),
            kv("stats_file", Value::Str("/s".into())),
        ])
        .unwrap();
        assert_eq!((c.fifo_frames, c.batch, c.rewind), (256, true, true));
        assert_eq!(c.stats_file, Some(PathBuf::from("/s")));
        let d = Config::default();
        assert_eq!((d.fifo_frames, d.batch, d.rewind, d.stats_file), (0, false, false, None));
        // fifo may be as large as buffer_max, given before or after it, but not larger.
        let c =
            Config::from_entries([kv("fifo", Value::Str("4096".into())), kv("buffer_max", Value::Int(4096))]).unwrap();
        assert_eq!(c.fifo_frames, 4096);
        let e = Config::from_entries([kv("buffer_max", Value::Int(4096)), kv("fifo", Value::Int(4097))]).unwrap_err();
        assert!(e.to_string().contains("'fifo'"), "{e}");
        for (k, v) in [
            ("fifo", Value::Int(-1)),
            ("fifo", Value::Str("lots".into())),
            ("batch", Value::Str("maybe".into())),
            ("rewind", Value::Int(2)),
            ("stats_file", Value::Str(String::new())),
        ] {
            let e = Config::from_entries([kv(k, v)]).unwrap_err();
            assert!(e.to_string().contains(&format!("'{k}'")), "{e}");
        }
    }
}

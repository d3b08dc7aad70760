//! The `pcm.NAME { type shmix ... }` block: reading it out of alsa-lib's config tree and checking
//! it. Runs in the host program at open. RT: no.

use std::ffi::CStr;
use std::os::raw::c_long;

use shmix_shared::msg::MAX_DEVICE_NAME_BYTES;
use shmix_shared::ResampleQuality;

use crate::sys;

/// Default latency ceiling: the largest buffer a program may negotiate, in milliseconds.
pub const DEFAULT_MAX_BUFFER_MS: u32 = 500;

/// One config value, as read from alsa-lib's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string node.
    Str(String),
    /// An integer node.
    Int(i64),
    /// Anything else (compound, real, pointer).
    Other,
}

/// The checked configuration of one shmix PCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The `socket` key (`SHMIX_SOCKET` still overrides it when resolving the path).
    pub socket: Option<String>,
    /// The `max_buffer_ms` key: the buffer ceiling.
    pub max_buffer_ms: u32,
    /// The `resample_quality` key: sent in `CreateStream` (`default` leaves it to the daemon).
    pub resample_quality: ResampleQuality,
    /// The `monitor` key: a capture PCM records the playback mix (`Direction::Monitor`).
    pub monitor: bool,
    /// The `fallback` key: a PCM name opened instead when the daemon cannot be reached at open.
    pub fallback: Option<String>,
    /// The `device` key: the daemon's device (its PCM name) to play on, record from or control;
    /// `None` (absent or empty): `SHMIX_DEVICE`, else the default device ([`device_name`]).
    pub device: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: None,
            max_buffer_ms: DEFAULT_MAX_BUFFER_MS,
            resample_quality: ResampleQuality::Default,
            monitor: false,
            fallback: None,
            device: None,
        }
    }
}

/// The environment variable naming the device when the `device` key does not.
pub const DEVICE_ENV: &str = "SHMIX_DEVICE";

/// The device name to send in `Hello` (or to look up for `ctl.shmix`): the `device` key if it
/// names one, else `env` (the value of `SHMIX_DEVICE`, trimmed), else empty: the daemon's
/// default device, followed when it changes.
///
/// # Errors
/// `SHMIX_DEVICE` longer than `MAX_DEVICE_NAME_BYTES` (the key is checked by [`parse`]).
pub fn device_name(cfg: &Config, env: Option<&std::ffi::OsStr>) -> Result<String, String> {
    if let Some(d) = &cfg.device {
        return Ok(d.clone());
    }
    let Some(v) = env else { return Ok(String::new()) };
    let v = v.to_str().ok_or_else(|| format!("{DEVICE_ENV} is not valid UTF-8"))?.trim();
    if v.len() > MAX_DEVICE_NAME_BYTES {
        return Err(format!("{DEVICE_ENV} is longer than {MAX_DEVICE_NAME_BYTES} bytes"));
    }
    Ok(v.to_owned())
}

/// Checks the key/value pairs of the PCM block. Errors are user-facing messages (without the
/// `shmix:` prefix).
///
/// # Errors
/// A message naming the unknown key(s) or the key with a bad value.
pub fn parse(entries: &[(String, Value)]) -> Result<Config, String> {
    let mut cfg = Config::default();
    let mut unknown = Vec::new();
    for (key, value) in entries {
        match key.as_str() {
            "type" | "comment" | "hint" => {}
            "socket" => match value {
                Value::Str(s) => cfg.socket = Some(s.clone()),
                _ => return Err("the 'socket' key must be a string (a path)".into()),
            },
            "max_buffer_ms" => {
                let ms = match value {
                    Value::Int(v) => *v,
                    Value::Str(s) => {
                        s.trim().parse::<i64>().map_err(|_| format!("max_buffer_ms: '{s}' is not an integer"))?
                    }
                    Value::Other => return Err("the 'max_buffer_ms' key must be an integer".into()),
                };
                if !(1..=60_000).contains(&ms) {
                    return Err(format!("max_buffer_ms {ms} is out of range (1..60000)"));
                }
                cfg.max_buffer_ms = ms as u32;
            }
            "resample_quality" => {
                let bad = |what: &str| format!("resample_quality {what} is not one of default, fast, medium, high");
                cfg.resample_quality = match value {
                    Value::Str(s) => ResampleQuality::from_name(s.trim()).ok_or_else(|| bad(&format!("'{s}'")))?,
                    Value::Int(v) => return Err(bad(&v.to_string())),
                    Value::Other => return Err(bad("(not a word)")),
                };
            }
            "monitor" => {
                let bad = |what: &str| format!("monitor {what} is not a boolean (true or false)");
                cfg.monitor = match value {
                    Value::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                        "true" | "yes" | "on" | "1" => true,
                        "false" | "no" | "off" | "0" => false,
                        _ => return Err(bad(&format!("'{s}'"))),
                    },
                    Value::Int(0) => false,
                    Value::Int(1) => true,
                    Value::Int(v) => return Err(bad(&v.to_string())),
                    Value::Other => return Err(bad("(not a word)")),
                };
            }
            "fallback" => match value {
                Value::Str(s) if !s.trim().is_empty() => cfg.fallback = Some(s.trim().to_owned()),
                _ => return Err("the 'fallback' key must be a PCM name (a non-empty string)".into()),
            },
            "device" => match value {
                Value::Str(s) if s.trim().len() > MAX_DEVICE_NAME_BYTES => {
                    return Err(format!("the 'device' key is longer than {MAX_DEVICE_NAME_BYTES} bytes"))
                }
                // Empty counts as absent, so `device $DEV` with an empty default leaves it to
                // SHMIX_DEVICE.
                Value::Str(s) => cfg.device = Some(s.trim().to_owned()).filter(|d| !d.is_empty()),
                _ => return Err("the 'device' key must be a string (the PCM name shmixd serves)".into()),
            },
            other => unknown.push(other.to_owned()),
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "unknown configuration key(s) {} (known: socket, max_buffer_ms, resample_quality, monitor, fallback, device)",
            unknown.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(cfg)
}

/// Reads the direct children of the PCM's compound node as key/value pairs.
///
/// # Safety
/// `conf` must be a valid config node handed to the open function by alsa-lib, alive for the
/// duration of the call.
pub unsafe fn read_entries(conf: *mut sys::snd_config_t) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if conf.is_null() {
        return out;
    }
    // SAFETY: `conf` is valid (caller); the iterator functions only walk its child list, which
    // nobody modifies while the open function runs.
    let (mut it, end) = unsafe { (sys::snd_config_iterator_first(conf), sys::snd_config_iterator_end(conf)) };
    while it != end {
        // SAFETY: `it` lies between first and end of `conf`'s children.
        let node = unsafe { sys::snd_config_iterator_entry(it) };
        // SAFETY: as above; `next` of a valid iterator.
        it = unsafe { sys::snd_config_iterator_next(it) };
        let mut id_ptr = std::ptr::null();
        // SAFETY: `node` is a child of `conf`; `id_ptr` is a valid out pointer.
        if unsafe { sys::snd_config_get_id(node, &mut id_ptr) } < 0 || id_ptr.is_null() {
            continue;
        }
        // SAFETY: alsa-lib returns a NUL-terminated id owned by the node, alive during this call.
        let id = unsafe { CStr::from_ptr(id_ptr) }.to_string_lossy().into_owned();
        // SAFETY: `node` is valid.
        let value = match unsafe { sys::snd_config_get_type(node) } {
            sys::SND_CONFIG_TYPE_STRING => {
                let mut s = std::ptr::null();
                // SAFETY: `node` is a string node; `s` is a valid out pointer.
                if unsafe { sys::snd_config_get_string(node, &mut s) } >= 0 && !s.is_null() {
                    // SAFETY: NUL-terminated string owned by the node.
                    Value::Str(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
                } else {
                    Value::Other
                }
            }
            sys::SND_CONFIG_TYPE_INTEGER => {
                let mut v: c_long = 0;
                // SAFETY: `node` is an integer node; `v` is a valid out pointer.
                if unsafe { sys::snd_config_get_integer(node, &mut v) } >= 0 {
                    Value::Int(v)
                } else {
                    Value::Other
                }
            }
            sys::SND_CONFIG_TYPE_INTEGER64 => {
                let mut v: std::os::raw::c_longlong = 0;
                // SAFETY: `node` is an integer64 node; `v` is a valid out pointer.
                if unsafe { sys::snd_config_get_integer64(node, &mut v) } >= 0 {
                    Value::Int(v)
                } else {
                    Value::Other
                }
            }
            _ => Value::Other,
        };
        out.push((id, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: Value) -> (String, Value) {
        (k.to_owned(), v)
    }

    #[test]
    fn defaults_and_known_keys() {
        assert_eq!(parse(&[kv("type", Value::Str("shmix".into()))]).unwrap(), Config::default());
        let c = parse(&[
            kv("type", Value::Str("shmix".into())),
            kv("socket", Value::Str("/tmp/x/sock".into())),
            kv("max_buffer_ms", Value::Int(200)),
            kv("hint", Value::Other),
            kv("comment", Value::Str("hi".into())),
        ])
        .unwrap();
        assert_eq!(
            c,
            Config {
                socket: Some("/tmp/x/sock".into()),
                max_buffer_ms: 200,
                resample_quality: ResampleQuality::Default,
                monitor: false,
                fallback: None,
                device: None,
            }
        );
        let c = parse(&[kv("resample_quality", Value::Str("high".into()))]).unwrap();
        assert_eq!(c.resample_quality, ResampleQuality::High);
        assert_eq!(
            parse(&[kv("resample_quality", Value::Str("Fast".into()))]).unwrap().resample_quality,
            ResampleQuality::Fast
        );
        assert_eq!(parse(&[kv("max_buffer_ms", Value::Str("300".into()))]).unwrap().max_buffer_ms, 300);
    }

    #[test]
    fn monitor_is_a_boolean() {
        assert!(!parse(&[]).unwrap().monitor);
        for yes in [Value::Str("true".into()), Value::Str("on".into()), Value::Str("Yes".into()), Value::Int(1)] {
            assert!(parse(&[kv("monitor", yes)]).unwrap().monitor);
        }
        for no in [Value::Str("false".into()), Value::Str("off".into()), Value::Int(0)] {
            assert!(!parse(&[kv("monitor", no)]).unwrap().monitor);
        }
        let e = parse(&[kv("monitor", Value::Str("maybe".into()))]).unwrap_err();
        assert!(e.contains("monitor") && e.contains("'maybe'"), "{e}");
        assert!(parse(&[kv("monitor", Value::Int(2))]).is_err());
        assert!(parse(&[kv("monitor", Value::Other)]).is_err());
    }

    #[test]
    fn fallback_is_a_pcm_name() {
        assert_eq!(parse(&[]).unwrap().fallback, None);
        assert_eq!(parse(&[kv("fallback", Value::Str("hw:0".into()))]).unwrap().fallback.as_deref(), Some("hw:0"));
        assert!(parse(&[kv("fallback", Value::Str(" ".into()))]).unwrap_err().contains("fallback"));
        assert!(parse(&[kv("fallback", Value::Int(0))]).unwrap_err().contains("fallback"));
    }

    #[test]
    fn device_is_a_name_and_wins_over_the_environment() {
        use std::ffi::OsStr;
        let none = parse(&[]).unwrap();
        assert_eq!(none.device, None);
        assert_eq!(device_name(&none, None).unwrap(), "", "absent: the default device");
        assert_eq!(device_name(&none, Some(OsStr::new(" card_b "))).unwrap(), "card_b");
        let keyed = parse(&[kv("device", Value::Str("hw:1,0".into()))]).unwrap();
        assert_eq!(keyed.device.as_deref(), Some("hw:1,0"));
        assert_eq!(device_name(&keyed, Some(OsStr::new("card_b"))).unwrap(), "hw:1,0", "the key wins");
        // An empty key is no key: the environment still applies.
        let empty = parse(&[kv("device", Value::Str(" ".into()))]).unwrap();
        assert_eq!(empty.device, None);
        assert_eq!(device_name(&empty, Some(OsStr::new("card_b"))).unwrap(), "card_b");
        assert_eq!(device_name(&empty, Some(OsStr::new(""))).unwrap(), "");
        // Too long, or not a string.
        let long = "x".repeat(MAX_DEVICE_NAME_BYTES + 1);
        assert!(parse(&[kv("device", Value::Str(long.clone()))]).unwrap_err().contains("'device'"));
        assert!(parse(&[kv("device", Value::Str("x".repeat(MAX_DEVICE_NAME_BYTES)))]).is_ok());
        assert!(device_name(&none, Some(OsStr::new(&long))).unwrap_err().contains("SHMIX_DEVICE"));
        assert!(parse(&[kv("device", Value::Int(1))]).unwrap_err().contains("'device'"));
        assert!(parse(&[kv("device", Value::Other)]).is_err());
        // Together with monitor (the monitor PCM of another device).
        let c = parse(&[kv("monitor", Value::Str("true".into())), kv("device", Value::Str("card_b".into()))]).unwrap();
        assert!(c.monitor && c.device.as_deref() == Some("card_b"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse(&[kv("socket", Value::Str("/s".into())), kv("sokcet", Value::Int(1)), kv("foo", Value::Other)])
            .unwrap_err();
        assert!(e.contains("'sokcet'") && e.contains("'foo'"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&[kv("socket", Value::Int(3))]).is_err());
        assert!(parse(&[kv("max_buffer_ms", Value::Int(0))]).is_err());
        assert!(parse(&[kv("max_buffer_ms", Value::Str("lots".into()))]).unwrap_err().contains("lots"));
        let e = parse(&[kv("resample_quality", Value::Str("ultra".into()))]).unwrap_err();
        assert!(e.contains("resample_quality") && e.contains("'ultra'") && e.contains("medium"), "{e}");
        assert!(parse(&[kv("resample_quality", Value::Int(3))]).unwrap_err().contains("resample_quality"));
    }
}

//! `shmixctl devices`, `move` and `default`: the daemon's devices as two `Devices` listings
//! show them (latency, wakeups and mix-thread CPU per second between the two), and device names
//! resolved to the ids the requests take. `top` prints the same rows as its device headers.
//! Runs in `shmixctl`. RT: no.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use shmix_shared::control::{DeviceInfo, Reply, Request};
use shmix_shared::text::escape_controls;

use crate::client::Client;

/// How far apart `devices` takes its two listings.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// One device with the rates measured between two listings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    /// The second listing's entry.
    pub info: DeviceInfo,
    /// Mix thread wakeups (cycles) per second; `None` without an earlier sample of it.
    pub wakeups_per_s: Option<f64>,
    /// Its mix thread's CPU time over wall time, in percent; `None` likewise.
    pub cpu_percent: Option<f64>,
}

impl DeviceRow {
    /// Its playback queue in milliseconds at the device's rate (`None`: rate not known).
    #[must_use]
    pub fn latency_ms(&self) -> Option<f64> {
        let rate = self.info.params.rate;
        (rate > 0).then(|| f64::from(self.info.queue_frames) * 1000.0 / f64::from(rate))
    }
}

/// Pairs each device of `now` with its entry in `before` (by id) and computes the rates. A
/// device new since `before`, a clock that did not move or a counter that went back (its mix
/// thread started again) gives no rate.
#[must_use]
pub fn rows(before: &[DeviceInfo], now: &[DeviceInfo]) -> Vec<DeviceRow> {
    now.iter()
        .map(|d| {
            let prev = before.iter().find(|p| p.id == d.id);
            let dt_ns = prev.and_then(|p| d.sampled_ns.checked_sub(p.sampled_ns)).filter(|&n| n > 0);
            let per_s = |a: u64, b: u64| dt_ns.and_then(|dt| b.checked_sub(a).map(|x| x as f64 * 1e9 / dt as f64));
            DeviceRow {
                info: d.clone(),
                wakeups_per_s: prev.and_then(|p| per_s(p.cycles, d.cycles)),
                cpu_percent: prev.and_then(|p| per_s(p.mix_cpu_ns, d.mix_cpu_ns)).map(|r| r / 1e9 * 100.0),
            }
        })
        .collect()
}

/// Asks for the devices twice, [`SAMPLE_INTERVAL`] apart.
///
/// # Errors
/// The daemon could not be asked.
pub fn sample(c: &Client) -> anyhow::Result<Vec<DeviceRow>> {
    let first = list(c)?;
    std::thread::sleep(SAMPLE_INTERVAL);
    Ok(rows(&first, &list(c)?))
}

/// One `Devices` listing.
///
/// # Errors
/// The daemon could not be asked or answered something else.
pub fn list(c: &Client) -> anyhow::Result<Vec<DeviceInfo>> {
    match c.call(Request::Devices)? {
        Reply::Devices(l) => Ok(l),
        _ => bail!("unexpected reply to Devices"),
    }
}

/// The device called `name`, or an error naming the devices there are.
///
/// # Errors
/// No device has that name.
pub fn resolve<'a>(list: &'a [DeviceInfo], name: &str) -> anyhow::Result<&'a DeviceInfo> {
    if let Some(d) = list.iter().find(|d| d.name == name) {
        return Ok(d);
    }
    let known: Vec<String> = list.iter().map(|d| escape_controls(&d.name).into_owned()).collect();
    bail!(
        "no device '{}'; shmixd serves: {}",
        escape_controls(name),
        if known.is_empty() { "(none)".to_string() } else { known.join(", ") }
    )
}

/// Resolves `name` with one listing.
///
/// # Errors
/// As [`list`] and [`resolve`].
pub fn resolve_by_name(c: &Client, name: &str) -> anyhow::Result<DeviceInfo> {
    let l = list(c).context("listing the devices")?;
    resolve(&l, name).cloned()
}

/// The name of the device with `id` in `list` (its id as text when it is not listed).
#[must_use]
pub fn name_of(list: &[DeviceInfo], id: u32) -> String {
    list.iter().find(|d| d.id == id).map_or_else(|| format!("#{id}"), |d| d.name.clone())
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn opt_json(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |x| json!(round2(x)))
}

/// One device in `devices --json`. Format, rate and channels are `null` for a device never
/// opened (its parameters are not known yet); the rates `null` without an earlier sample.
#[must_use]
pub fn row_json(r: &DeviceRow) -> Value {
    let d = &r.info;
    let known = d.params.channels > 0;
    json!({
        "id": d.id,
        "name": d.name,
        "format": if known { json!(d.params.format.name()) } else { Value::Null },
        "rate": if known { json!(d.params.rate) } else { Value::Null },
        "channels": if known { json!(d.params.channels) } else { Value::Null },
        "state": d.state.name(),
        "streams": d.streams,
        "default": d.default,
        "preferred": d.preferred,
        "capture": d.capture,
        "latency_ms": opt_json(r.latency_ms()),
        "queue_frames": d.queue_frames,
        "wakeups_per_s": opt_json(r.wakeups_per_s),
        "cpu_percent": opt_json(r.cpu_percent),
        "xruns": d.device_xruns,
    })
}

/// The header of the `devices` table (`top` prints it above its device rows too).
#[must_use]
pub fn header_text() -> String {
    format!(
        "{:<2} {:>3} {:<20} {:<9} {:>6} {:>2} {:<7} {:<7} {:>7} {:>10} {:>9} {:>6} {:>6}",
        "",
        "ID",
        "DEVICE",
        "FORMAT",
        "RATE",
        "CH",
        "CAPTURE",
        "STATE",
        "STREAMS",
        "LATENCY",
        "WAKEUPS/S",
        "CPU",
        "XRUNS"
    )
}

fn opt_text(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}{unit}"))
}

/// One row of the `devices` table: `*` marks the default device, `+` the preferred one.
#[must_use]
pub fn row_text(r: &DeviceRow) -> String {
    let d = &r.info;
    let known = d.params.channels > 0;
    let dash = || "-".to_string();
    format!(
        "{}{} {:>3} {:<20} {:<9} {:>6} {:>2} {:<7} {:<7} {:>7} {:>10} {:>9} {:>6} {:>6}",
        if d.default { '*' } else { ' ' },
        if d.preferred { '+' } else { ' ' },
        d.id,
        escape_controls(&d.name),
        if known { d.params.format.name().to_string() } else { dash() },
        if known { d.params.rate.to_string() } else { dash() },
        if known { d.params.channels.to_string() } else { dash() },
        if d.capture { "yes" } else { "no" },
        d.state.name(),
        d.streams,
        opt_text(r.latency_ms(), 2, " ms"),
        opt_text(r.wakeups_per_s, 1, ""),
        opt_text(r.cpu_percent, 2, "%"),
        d.device_xruns,
    )
}

/// The `devices` table: header, one row per device, and the legend.
#[must_use]
pub fn table_text(rows: &[DeviceRow]) -> String {
    let mut out = header_text();
    out.push('\n');
    for r in rows {
        out.push_str(&row_text(r));
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no devices)\n");
    }
    out.push_str("(* default, + preferred default)\n");
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shmix_shared::control::DeviceState;
    use shmix_shared::{AudioParams, SampleFormat};

    pub(crate) fn dev(id: u32, name: &str) -> DeviceInfo {
        DeviceInfo {
            id,
            name: name.into(),
            params: AudioParams {
                format: SampleFormat::S16Le,
                rate: 48000,
                channels: 2,
                period_frames: 32,
                buffer_frames: 96000,
            },
            capture: id == 0,
            state: DeviceState::Running,
            streams: 1,
            default: id == 0,
            preferred: id == 0,
            master_volume: 1.0,
            master_muted: false,
            capture_volume: 1.0,
            capture_muted: false,
            queue_frames: 480,
            cycles: 1000,
            mix_cpu_ns: 1_000_000,
            device_xruns: 3,
            sampled_ns: 10_000_000_000,
        }
    }

    #[test]
    fn rates_come_from_two_listings() {
        let a = [dev(0, "card_a"), dev(1, "card_b")];
        let mut b = a.clone();
        // 0.5 s later: 125 cycles (250/s) and 5 ms of CPU (1%).
        b[0].sampled_ns += 500_000_000;
        b[0].cycles += 125;
        b[0].mix_cpu_ns += 5_000_000;
        // card_b's clock did not move: no rate.
        let r = rows(&a, &b);
        assert_eq!(r[0].wakeups_per_s, Some(250.0));
        assert!((r[0].cpu_percent.unwrap() - 1.0).abs() < 1e-9, "{:?}", r[0].cpu_percent);
        assert_eq!(r[0].latency_ms(), Some(10.0));
        assert_eq!(r[1].wakeups_per_s, None);
        // A device new in the second listing, or whose counters went back: no rate either.
        let mut c = b.to_vec();
        c.push(dev(2, "card_c"));
        c[0].sampled_ns += 1;
        c[0].cycles = 0;
        let r = rows(&b, &c);
        assert_eq!((r[0].wakeups_per_s, r[2].wakeups_per_s, r[2].cpu_percent), (None, None, None));
    }

    #[test]
    fn json_keys_and_unknown_parameters() {
        let mut later = dev(0, "card_a");
        later.sampled_ns += 500_000_000;
        later.cycles += 50;
        let v = row_json(&rows(&[dev(0, "card_a")], &[later])[0]);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "id",
            "name",
            "format",
            "rate",
            "channels",
            "state",
            "streams",
            "default",
            "preferred",
            "capture",
            "latency_ms",
            "queue_frames",
            "wakeups_per_s",
            "cpu_percent",
            "xruns",
        ] {
            assert!(keys.contains(&k), "{k} missing: {v}");
        }
        assert_eq!(keys.len(), 15, "{v}");
        assert_eq!(v["wakeups_per_s"], 100.0);
        assert_eq!(v["latency_ms"], 10.0);
        assert_eq!(v["format"], "S16_LE");
        let mut absent = dev(1, "card_b");
        absent.params.channels = 0;
        absent.params.rate = 0;
        absent.state = DeviceState::Absent;
        let v = row_json(&rows(&[], &[absent.clone()])[0]);
        assert_eq!(
            (&v["format"], &v["rate"], &v["latency_ms"], &v["state"]),
            (&Value::Null, &Value::Null, &Value::Null, &json!("absent"))
        );
        let t = table_text(&rows(&[], &[dev(0, "card_a"), absent]));
        assert!(t.lines().nth(1).unwrap().starts_with("*+   0 card_a"), "{t}");
        assert!(t.lines().nth(2).unwrap().starts_with("     1 card_b               -"), "{t}");
        assert!(t.contains("absent") && t.ends_with("(* default, + preferred default)\n"), "{t}");
    }

    #[test]
    fn names_resolve_or_the_error_lists_the_devices() {
        let l = [dev(0, "card_a"), dev(4, "hw:CARD=B,DEV=0")];
        assert_eq!(resolve(&l, "hw:CARD=B,DEV=0").unwrap().id, 4);
        let e = resolve(&l, "card_c").unwrap_err().to_string();
        assert_eq!(e, "no device 'card_c'; shmixd serves: card_a, hw:CARD=B,DEV=0");
        assert!(resolve(&[], "x").unwrap_err().to_string().ends_with("(none)"));
        assert_eq!(name_of(&l, 4), "hw:CARD=B,DEV=0");
        assert_eq!(name_of(&l, 9), "#9");
    }
}

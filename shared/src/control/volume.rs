//! Volumes as people write them: `50%`, `-6.02dB`, `0.25`, and linear gain back to dB.
//! Runs in `shmixctl`. RT: no.

use super::MAX_VOLUME;

/// Volume as a linear factor -> decibels (`-inf` at 0).
#[must_use]
pub fn volume_to_db(v: f32) -> f64 {
    20.0 * f64::from(v).log10()
}

/// Parses a volume as `shmixctl` takes it: `50%` (linear amplitude percent), `-6dB` / `-6.02dB`
/// (decibels, `-inf dB` for silence), or a bare factor `0.5`. At most [`MAX_VOLUME`].
///
/// # Errors
/// A message saying what is wrong with `s`.
pub fn parse_volume(s: &str) -> Result<f32, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let v: f64 = if let Some(p) = lower.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| format!("'{s}': not a percentage"))?;
        p / 100.0
    } else if let Some(db) = lower.strip_suffix("db") {
        let db = db.trim();
        if db == "-inf" {
            0.0
        } else {
            let db: f64 = db.parse().map_err(|_| format!("'{s}': not a decibel value"))?;
            10f64.powf(db / 20.0)
        }
    } else {
        t.parse().map_err(|_| format!("'{s}': expected a percentage (50%), decibels (-6dB) or a factor (0.5)"))?
    };
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}': volume must be >= 0"));
    }
    if v > f64::from(MAX_VOLUME) + 1e-9 {
        return Err(format!("'{s}': volume above 100% (0 dB) is not supported"));
    }
    Ok((v as f32).min(MAX_VOLUME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse() {
        assert_eq!(parse_volume("50%").unwrap(), 0.5);
        assert!((parse_volume("-6.02dB").unwrap() - 0.5).abs() < 1e-3);
        assert!((parse_volume("-6dB").unwrap() - 0.501_187).abs() < 1e-5);
        assert_eq!(parse_volume("0dB").unwrap(), 1.0);
        assert_eq!(parse_volume("-inf dB").unwrap(), 0.0);
        assert_eq!(parse_volume("0.25").unwrap(), 0.25);
        assert!(parse_volume("150%").is_err());
        assert!(parse_volume("+3dB").is_err());
        assert!(parse_volume("loud").is_err());
        assert!(parse_volume("-1%").is_err());
    }
}

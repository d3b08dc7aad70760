//! The resampling quality a stream asks for (`resample_quality` key, `shmixd
//! --resample-quality`). Runs in both processes. RT: yes (a `Copy` enum).

/// Resampling quality of a stream whose rate differs from the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u32)]
pub enum ResampleQuality {
    /// The daemon's default (`shmixd --resample-quality`).
    #[default]
    Default = 0,
    /// Cheapest: polynomial interpolation.
    Fast = 1,
    /// Windowed sinc, moderate length.
    Medium = 2,
    /// Long windowed sinc: THD+N -100 dB or better.
    High = 3,
}

impl ResampleQuality {
    /// From the wire value.
    #[must_use]
    pub fn from_u32(v: u32) -> Option<Self> {
        [Self::Default, Self::Fast, Self::Medium, Self::High].into_iter().find(|q| *q as u32 == v)
    }

    /// From a config/flag word: `default`, `fast`, `medium`, `high`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "default" => Some(Self::Default),
            "fast" | "low" => Some(Self::Fast),
            "medium" => Some(Self::Medium),
            "high" | "best" => Some(Self::High),
            _ => None,
        }
    }

    /// The config/flag word.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Fast => "fast",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_wire_values() {
        assert_eq!(ResampleQuality::from_name("HIGH"), Some(ResampleQuality::High));
        assert_eq!(ResampleQuality::from_u32(9), None);
        for q in [ResampleQuality::Default, ResampleQuality::Fast, ResampleQuality::Medium, ResampleQuality::High] {
            assert_eq!(ResampleQuality::from_u32(q as u32), Some(q));
            assert_eq!(ResampleQuality::from_name(q.name()), Some(q));
        }
    }
}

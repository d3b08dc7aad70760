//! Sample formats of the wire protocol. Codes equal alsa-lib's `snd_pcm_format_t` values so both
//! sides translate without a table, but this crate does not link ALSA.
//! Runs in both processes. RT: yes.

/// A sample format a stream or a device can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SampleFormat {
    /// Unsigned 8 bit.
    U8 = 1,
    /// Signed 16 bit little endian.
    S16Le = 2,
    /// Signed 16 bit big endian.
    S16Be = 3,
    /// Signed 24 bit in the low bits of 32, little endian.
    S24Le = 6,
    /// Signed 24 bit in the low bits of 32, big endian.
    S24Be = 7,
    /// Signed 32 bit little endian.
    S32Le = 10,
    /// Signed 32 bit big endian.
    S32Be = 11,
    /// IEEE float, little endian.
    F32Le = 14,
    /// IEEE float, big endian.
    F32Be = 15,
    /// IEEE double, little endian.
    F64Le = 16,
    /// G.711 mu-law.
    MuLaw = 20,
    /// G.711 A-law.
    ALaw = 21,
    /// Signed 24 bit packed in 3 bytes, little endian.
    S24_3Le = 32,
    /// Signed 24 bit packed in 3 bytes, big endian.
    S24_3Be = 33,
}

impl SampleFormat {
    /// Every format, in a stable order.
    pub const ALL: [SampleFormat; 14] = [
        Self::U8,
        Self::S16Le,
        Self::S16Be,
        Self::S24Le,
        Self::S24Be,
        Self::S32Le,
        Self::S32Be,
        Self::F32Le,
        Self::F32Be,
        Self::F64Le,
        Self::MuLaw,
        Self::ALaw,
        Self::S24_3Le,
        Self::S24_3Be,
    ];

    /// The format with alsa-lib's numeric code `code`, if it is one of ours.
    #[must_use]
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|f| *f as u32 == code)
    }

    /// alsa-lib's `snd_pcm_format_t` value.
    #[must_use]
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Bytes one sample occupies in memory.
    #[must_use]
    pub const fn sample_bytes(self) -> u32 {
        match self {
            Self::U8 | Self::MuLaw | Self::ALaw => 1,
            Self::S16Le | Self::S16Be => 2,
            Self::S24_3Le | Self::S24_3Be => 3,
            Self::S24Le | Self::S24Be | Self::S32Le | Self::S32Be | Self::F32Le | Self::F32Be => 4,
            Self::F64Le => 8,
        }
    }

    /// The name alsa-lib uses (`snd_pcm_format_name`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::U8 => "U8",
            Self::S16Le => "S16_LE",
            Self::S16Be => "S16_BE",
            Self::S24Le => "S24_LE",
            Self::S24Be => "S24_BE",
            Self::S32Le => "S32_LE",
            Self::S32Be => "S32_BE",
            Self::F32Le => "FLOAT_LE",
            Self::F32Be => "FLOAT_BE",
            Self::F64Le => "FLOAT64_LE",
            Self::MuLaw => "MU_LAW",
            Self::ALaw => "A_LAW",
            Self::S24_3Le => "S24_3LE",
            Self::S24_3Be => "S24_3BE",
        }
    }

    /// Parses alsa-lib's name (case-insensitive; `FLOAT` alone means `FLOAT_LE`).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        let up = name.to_ascii_uppercase();
        let up = match up.as_str() {
            "FLOAT" => "FLOAT_LE",
            "FLOAT64" => "FLOAT64_LE",
            "S16" => "S16_LE",
            "S32" => "S32_LE",
            "S24" => "S24_LE",
            other => other,
        };
        Self::ALL.into_iter().find(|f| f.name() == up)
    }
}

impl std::fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for f in SampleFormat::ALL {
            assert_eq!(SampleFormat::from_code(f.code()), Some(f));
            assert_eq!(SampleFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(SampleFormat::from_code(0), None);
        assert_eq!(SampleFormat::from_name("float"), Some(SampleFormat::F32Le));
    }
}

//! Channel maps: which speaker each interleaved channel feeds. Position codes equal alsa-lib's
//! `enum snd_pcm_chmap_position` (SND_CHMAP_*), so the plugin passes them through unchanged.
//! A map is `Copy` and fixed-size: it travels in `CreateStream` and lives in the daemon's
//! per-stream state without allocation. Runs in both processes. RT: yes.

use crate::limits::MAX_CHANNELS;

/// A channel position (SND_CHMAP_* value).
pub type Position = u8;

/// Unknown position (mapped by index).
pub const UNKNOWN: Position = 0;
/// Not available (silent channel).
pub const NA: Position = 1;
/// Mono.
pub const MONO: Position = 2;
/// Front left.
pub const FL: Position = 3;
/// Front right.
pub const FR: Position = 4;
/// Rear left.
pub const RL: Position = 5;
/// Rear right.
pub const RR: Position = 6;
/// Front centre.
pub const FC: Position = 7;
/// Low-frequency effects.
pub const LFE: Position = 8;
/// Side left.
pub const SL: Position = 9;
/// Side right.
pub const SR: Position = 10;
/// Rear centre.
pub const RC: Position = 11;
/// Highest position code alsa-lib 1.2.8 defines (SND_CHMAP_BRC).
pub const LAST: Position = 36;

/// An interleaved channel layout of 1 to 32 channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelMap {
    len: u8,
    pos: [Position; MAX_CHANNELS as usize],
}

impl ChannelMap {
    /// A map of the given positions.
    ///
    /// # Errors
    /// No positions, more than 32, or a code beyond [`LAST`].
    pub fn new(positions: &[Position]) -> Result<Self, crate::DecodeError> {
        if positions.is_empty() || positions.len() > MAX_CHANNELS as usize {
            return Err(crate::DecodeError::BadField("chmap length", positions.len() as u64));
        }
        let mut pos = [UNKNOWN; MAX_CHANNELS as usize];
        for (d, s) in pos.iter_mut().zip(positions) {
            if *s > LAST {
                return Err(crate::DecodeError::BadField("chmap position", u64::from(*s)));
            }
            *d = *s;
        }
        Ok(Self { len: positions.len() as u8, pos })
    }

    /// The standard ALSA layout for `channels` (1..=8: mono, stereo, 2.1 as FL FR LFE, 4.0,
    /// 5.0, 5.1 as FL FR RL RR FC LFE, 6.1, 7.1 as FL FR RL RR FC LFE SL SR); above 8 the first
    /// eight of 7.1 then unknown positions (mapped by index).
    ///
    /// # Panics
    /// If `channels` is 0 or above 32.
    #[must_use]
    pub fn standard(channels: u32) -> Self {
        assert!((1..=MAX_CHANNELS).contains(&channels), "channels {channels} out of range");
        let base: &[Position] = match channels {
            1 => &[MONO],
            2 => &[FL, FR],
            3 => &[FL, FR, LFE],
            4 => &[FL, FR, RL, RR],
            5 => &[FL, FR, RL, RR, FC],
            6 => &[FL, FR, RL, RR, FC, LFE],
            7 => &[FL, FR, RL, RR, FC, LFE, RC],
            _ => &[FL, FR, RL, RR, FC, LFE, SL, SR],
        };
        let mut pos = [UNKNOWN; MAX_CHANNELS as usize];
        pos[..base.len()].copy_from_slice(base);
        Self { len: channels as u8, pos }
    }

    /// Number of channels.
    #[must_use]
    pub fn channels(&self) -> u32 {
        u32::from(self.len)
    }

    /// The positions, one per channel.
    #[must_use]
    pub fn positions(&self) -> &[Position] {
        &self.pos[..self.len as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_maps_have_the_right_length_and_no_duplicates() {
        for ch in 1..=32 {
            let m = ChannelMap::standard(ch);
            assert_eq!(m.channels(), ch);
            let known: Vec<_> = m.positions().iter().filter(|p| **p != UNKNOWN).collect();
            let mut dedup = known.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(known.len(), dedup.len(), "{ch} channels");
        }
        assert_eq!(ChannelMap::standard(6).positions(), &[FL, FR, RL, RR, FC, LFE]);
    }

    #[test]
    fn bad_maps_are_refused() {
        assert!(ChannelMap::new(&[]).is_err());
        assert!(ChannelMap::new(&[LAST + 1]).is_err());
        assert!(ChannelMap::new(&[FL; 33]).is_err());
    }
}

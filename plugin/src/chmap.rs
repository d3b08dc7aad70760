//! The ALSA channel-map API's data, as plain `u32` words (what `ioplug.rs` copies into `malloc`ed
//! memory: alsa-lib frees the results of query_chmaps with `snd_pcm_free_chmaps` and of get_chmap
//! with `free`). `snd_pcm_chmap_t` is `[channels, pos...]`; a query entry is `[type, channels,
//! pos...]`. Position codes are SND_CHMAP_* and equal `shmix_shared::chmap`'s. Runs in the host
//! program (query/get/set). RT: no.

use shmix_shared::chmap::{ChannelMap, LAST};
use shmix_shared::msg::MAX_CHANNELS;

/// SND_CHMAP_TYPE_VAR: channel positions may be freely swapped (`set_chmap` takes any map of
/// the right length, the daemon remaps).
pub const TYPE_VAR: u32 = 2;
/// SND_CHMAP_POSITION_MASK: bits above are flags (phase inverse, driver specific).
pub const POSITION_MASK: u32 = 0xffff;

/// `snd_pcm_chmap_t` words of `map`.
#[must_use]
pub fn encode_map(map: &ChannelMap) -> Vec<u32> {
    let mut out = Vec::with_capacity(1 + map.positions().len());
    out.push(map.channels());
    out.extend(map.positions().iter().map(|p| u32::from(*p)));
    out
}

/// The query entries: the standard map for every channel count 1..=32 (7.1 and unknown positions
/// beyond 8), each `[TYPE_VAR, channels, pos...]`.
#[must_use]
pub fn query_entries() -> Vec<Vec<u32>> {
    (1..=MAX_CHANNELS)
        .map(|ch| {
            let mut e = vec![TYPE_VAR];
            e.extend(encode_map(&ChannelMap::standard(ch)));
            e
        })
        .collect()
}

/// A map given to `set_chmap`: `positions` must be exactly `channels` long (the negotiated count)
/// and each a plain SND_CHMAP_* position (no phase-inverse or driver-specific flag).
///
/// # Errors
/// A user-facing message.
pub fn decode_map(channels: u32, positions: &[u32]) -> Result<ChannelMap, String> {
    if positions.len() != channels as usize {
        return Err(format!(
            "a channel map of {} positions does not fit the {channels}-channel stream",
            positions.len()
        ));
    }
    let mut out = Vec::with_capacity(positions.len());
    for (i, &p) in positions.iter().enumerate() {
        if p & !POSITION_MASK != 0 {
            return Err(format!(
                "channel {i}: position flags {:#x} (phase inverse, driver specific) are not supported",
                p & !POSITION_MASK
            ));
        }
        if p > u32::from(LAST) {
            return Err(format!("channel {i}: unknown position code {p} (highest is {LAST})"));
        }
        out.push(p as u8);
    }
    ChannelMap::new(&out).map_err(|e| format!("bad channel map: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmix_shared::chmap::{FC, FL, FR, LFE, MONO, NA, RL, RR, SL, SR, UNKNOWN};

    #[test]
    fn encode_is_channels_then_positions() {
        assert_eq!(encode_map(&ChannelMap::standard(1)), vec![1, u32::from(MONO)]);
        assert_eq!(encode_map(&ChannelMap::standard(2)), vec![2, 3, 4]);
        assert_eq!(encode_map(&ChannelMap::standard(6)), vec![6, 3, 4, 5, 6, 7, 8]);
        // FL FR RL RR FC LFE
    }

    #[test]
    fn query_lists_1_to_32_channels() {
        let q = query_entries();
        assert_eq!(q.len(), 32);
        for (i, e) in q.iter().enumerate() {
            let ch = i as u32 + 1;
            assert_eq!(e[0], TYPE_VAR);
            assert_eq!(e[1], ch);
            assert_eq!(e.len(), 2 + ch as usize);
        }
        let p = |v: &[u8]| v.iter().map(|x| u32::from(*x)).collect::<Vec<_>>();
        assert_eq!(q[7][2..], p(&[FL, FR, RL, RR, FC, LFE, SL, SR]));
        assert_eq!(q[9][2..], p(&[FL, FR, RL, RR, FC, LFE, SL, SR, UNKNOWN, UNKNOWN]));
    }

    #[test]
    fn decode_round_trips_and_checks() {
        for ch in 1..=32 {
            let m = ChannelMap::standard(ch);
            assert_eq!(decode_map(ch, &encode_map(&m)[1..]), Ok(m));
        }
        // Any order, NA and unknown are fine.
        let m = decode_map(4, &[4, 3, u32::from(NA), 0]).unwrap();
        assert_eq!(m.positions(), &[FR, FL, NA, UNKNOWN]);
        assert!(decode_map(2, &[3]).unwrap_err().contains("1 positions"));
        assert!(decode_map(1, &[37]).unwrap_err().contains("37"));
        assert!(decode_map(1, &[3 | 0x10000]).unwrap_err().contains("phase"));
        assert!(decode_map(0, &[]).is_err());
    }
}

//! The protocol's bounds that more than one part of it needs: channel counts, rates, ring and
//! record sizes. Depends on nothing, so `msg`, `layout` and `chmap` import it instead of each
//! other. Runs in both processes. RT: yes (constants).

/// Most channels a stream may have.
pub const MAX_CHANNELS: u32 = 32;
/// Lowest stream rate.
pub const MIN_RATE: u32 = 8000;
/// Highest stream rate.
pub const MAX_RATE: u32 = 384_000;
/// Most frames an audio ring may hold.
pub const MAX_BUFFER_FRAMES: u32 = 1 << 20;
/// Most records per message ring.
pub const MAX_MSG_RECORDS: u32 = 1024;
/// Size of one encoded message-ring record.
pub const RECORD_BYTES: usize = 16;

/// The buffer rule: the smallest stream buffer the daemon accepts (and the plugin offers), two
/// device periods' worth of stream frames, `2 * ceil(device_period * stream_rate / device_rate)`.
#[must_use]
pub fn min_buffer_frames(device_period: u32, device_rate: u32, stream_rate: u32) -> u32 {
    let per = (u64::from(device_period) * u64::from(stream_rate)).div_ceil(u64::from(device_rate.max(1)));
    u32::try_from(2 * per).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_rule() {
        assert_eq!(min_buffer_frames(256, 48000, 48000), 512);
        assert_eq!(min_buffer_frames(256, 48000, 44100), 2 * 236);
        assert_eq!(min_buffer_frames(256, 48000, 8000), 2 * 43);
        assert_eq!(min_buffer_frames(256, 48000, 384_000), 4096);
    }
}

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

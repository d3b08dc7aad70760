//! The stream memfd layout, version 1. One memfd per stream, created and sealed by the client:
//!
//! ```text
//! 0      StreamHeader (9 cache lines): identity, audio cursors, avail_min, timing snapshot,
//!        message-ring cursors; every cursor on its own cache line
//! 576    client -> daemon message ring: msg_records x 16-byte records
//! ...    daemon -> client message ring: msg_records x 16-byte records
//! ...    audio ring: buffer_frames x frame_bytes (64-byte aligned)
//! total  rounded up to a 4096-byte page
//! ```
//!
//! For playback the client owns `audio_write` and the daemon `audio_read`; for capture the
//! reverse. The identity line is written once by the client before it sends the memfd; the
//! daemon reads it once, checks it against the layout it computes itself, and never again.
//! Runs in both processes. RT: no (setup only).

use crate::error::Violation;
use crate::limits::RECORD_BYTES;
pub use crate::limits::{MAX_BUFFER_FRAMES, MAX_MSG_RECORDS};
use crate::sync::{AtomicU32, AtomicU64};

/// "SHMX" little endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SHMX");
/// Layout version.
pub const LAYOUT_VERSION: u32 = 1;
/// Records per message ring the plugin uses.
pub const DEFAULT_MSG_RECORDS: u32 = 64;
/// Largest memfd the daemon maps for one stream.
pub const MAX_POOL_BYTES: u64 = 64 << 20;
const PAGE_BYTES: u64 = 4096;

/// A cursor and its side's sleeping flag, alone on a cache line.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Cursor {
    /// Free-running position (frames or records), published with Release.
    pub pos: AtomicU32,
    /// 1 while the side that owns this cursor waits for the peer to move the other cursor.
    pub sleeping: AtomicU32,
}

/// The client's line: its avail_min, and the plugin's copy counters (statistics the daemon
/// reports in `shmixctl`; untrusted numbers, never used for anything but display).
#[derive(Debug)]
#[repr(C, align(64))]
pub struct ClientLine {
    /// The client's avail_min (frames).
    pub value: AtomicU32,
    /// Padding, kept zero.
    pub reserved: AtomicU32,
    /// Frames the plugin copied between the program's buffer and the ring.
    pub copied_frames: AtomicU64,
    /// Frames the program wrote or read in place (mmap into the ring).
    pub zero_copy_frames: AtomicU64,
}

/// `Timing::flags` bit: the device vanished and the daemon waits for it to come back (the
/// stream holds still; nothing is lost). A client may wait longer than its own deadlines then.
pub const DEVICE_WAITING: u32 = 1;

/// The daemon's timing snapshot, under a seqlock (odd `seq`: being written).
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Timing {
    /// Seqlock counter.
    pub seq: AtomicU32,
    /// The audio read position (playback) or write position (capture) at `ts_ns`.
    pub pos: AtomicU32,
    /// Frames that had left the ring but not yet reached the speaker at `ts_ns` (device delay).
    pub queued_frames: AtomicU32,
    /// Daemon state bits, written at any time outside the seqlock (Release / Acquire):
    /// [`DEVICE_WAITING`].
    pub flags: AtomicU32,
    /// CLOCK_MONOTONIC nanoseconds of the snapshot.
    pub ts_ns: AtomicU64,
}

/// The identity line: written once by the client, read once by the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Identity {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`LAYOUT_VERSION`].
    pub version: u32,
    /// Bytes per frame of the audio ring.
    pub frame_bytes: u32,
    /// Frames in the audio ring.
    pub buffer_frames: u32,
    /// Records per message ring.
    pub msg_records: u32,
    /// Offset of the client -> daemon ring.
    pub c2d_offset: u32,
    /// Offset of the daemon -> client ring.
    pub d2c_offset: u32,
    /// Offset of the audio ring.
    pub audio_offset: u32,
    /// Size of the whole memfd.
    pub total_bytes: u64,
}

/// Header at offset 0 of every stream memfd.
#[derive(Debug)]
#[repr(C)]
pub struct StreamHeader {
    /// Written once by the client.
    pub identity: Identity,
    /// Producer cursor of the audio ring.
    pub audio_write: Cursor,
    /// Consumer cursor of the audio ring.
    pub audio_read: Cursor,
    /// The client's avail_min (`value`): the daemon wakes a sleeping client only when its avail
    /// reaches it; and the plugin's copy counters.
    pub avail_min: ClientLine,
    /// Timing snapshot for `delay`.
    pub timing: Timing,
    /// Client -> daemon ring: write cursor (client), read cursor (daemon).
    pub c2d_write: Cursor,
    /// See `c2d_write`.
    pub c2d_read: Cursor,
    /// Daemon -> client ring: write cursor (daemon), read cursor (client).
    pub d2c_write: Cursor,
    /// See `d2c_write`.
    pub d2c_read: Cursor,
}

/// Size of [`StreamHeader`].
pub const HEADER_BYTES: u32 = 576;
const _: () = assert!(size_of::<StreamHeader>() == HEADER_BYTES as usize);
const _: () = assert!(size_of::<Cursor>() == 64);
const _: () = assert!(size_of::<Identity>() == 64);
const _: () = assert!(size_of::<ClientLine>() == 64);

/// Where everything lies in a stream memfd; computed the same way by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per frame.
    pub frame_bytes: u32,
    /// Frames in the audio ring.
    pub buffer_frames: u32,
    /// Records per message ring.
    pub msg_records: u32,
    /// Offset of the client -> daemon ring.
    pub c2d_offset: u32,
    /// Offset of the daemon -> client ring.
    pub d2c_offset: u32,
    /// Offset of the audio ring.
    pub audio_offset: u32,
    /// Bytes of the audio ring.
    pub audio_bytes: u32,
    /// Size of the memfd.
    pub total_bytes: u64,
}

impl Layout {
    /// Computes the layout for a stream.
    ///
    /// # Errors
    /// A [`Violation`] when a size is zero, out of range, or the total exceeds [`MAX_POOL_BYTES`].
    pub fn new(frame_bytes: u32, buffer_frames: u32, msg_records: u32) -> Result<Self, Violation> {
        if frame_bytes == 0 || frame_bytes > 32 * 8 {
            return Err(Violation::new("frame_bytes out of range", u64::from(frame_bytes), 256));
        }
        if buffer_frames == 0 || buffer_frames > MAX_BUFFER_FRAMES {
            return Err(Violation::new(
                "buffer_frames out of range",
                u64::from(buffer_frames),
                u64::from(MAX_BUFFER_FRAMES),
            ));
        }
        if !msg_records.is_power_of_two() || msg_records > MAX_MSG_RECORDS {
            return Err(Violation::new(
                "msg_records not a power of two in range",
                u64::from(msg_records),
                u64::from(MAX_MSG_RECORDS),
            ));
        }
        let ring_bytes = u64::from(msg_records) * RECORD_BYTES as u64;
        let c2d = u64::from(HEADER_BYTES);
        let d2c = c2d + ring_bytes;
        let audio = (d2c + ring_bytes).next_multiple_of(64);
        let audio_bytes = u64::from(frame_bytes) * u64::from(buffer_frames);
        let total = (audio + audio_bytes).next_multiple_of(PAGE_BYTES);
        if total > MAX_POOL_BYTES {
            return Err(Violation::new("stream memory too large", total, MAX_POOL_BYTES));
        }
        // All fit in u32: total <= 64 MiB.
        Ok(Self {
            frame_bytes,
            buffer_frames,
            msg_records,
            c2d_offset: c2d as u32,
            d2c_offset: d2c as u32,
            audio_offset: audio as u32,
            audio_bytes: audio_bytes as u32,
            total_bytes: total,
        })
    }

    /// The identity line for this layout.
    #[must_use]
    pub fn identity(&self) -> Identity {
        Identity {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            frame_bytes: self.frame_bytes,
            buffer_frames: self.buffer_frames,
            msg_records: self.msg_records,
            c2d_offset: self.c2d_offset,
            d2c_offset: self.d2c_offset,
            audio_offset: self.audio_offset,
            total_bytes: self.total_bytes,
        }
    }

    /// Checks an identity line read from a peer's memfd against this layout.
    ///
    /// # Errors
    /// A [`Violation`] naming the first field that differs.
    pub fn check_identity(&self, id: &Identity) -> Result<(), Violation> {
        let want = self.identity();
        let fields: [(&'static str, u64, u64); 9] = [
            ("bad magic", u64::from(id.magic), u64::from(want.magic)),
            ("bad layout version", u64::from(id.version), u64::from(want.version)),
            ("frame_bytes differs", u64::from(id.frame_bytes), u64::from(want.frame_bytes)),
            ("buffer_frames differs", u64::from(id.buffer_frames), u64::from(want.buffer_frames)),
            ("msg_records differs", u64::from(id.msg_records), u64::from(want.msg_records)),
            ("c2d_offset differs", u64::from(id.c2d_offset), u64::from(want.c2d_offset)),
            ("d2c_offset differs", u64::from(id.d2c_offset), u64::from(want.d2c_offset)),
            ("audio_offset differs", u64::from(id.audio_offset), u64::from(want.audio_offset)),
            ("total_bytes differs", id.total_bytes, want.total_bytes),
        ];
        for (what, got, expected) in fields {
            if got != expected {
                return Err(Violation::new(what, got, expected));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn regions_are_disjoint_and_inside(fb in 1u32..=256, frames in 1u32..=MAX_BUFFER_FRAMES, rec_pow in 0u32..=10) {
            let recs = 1 << rec_pow;
            if let Ok(l) = Layout::new(fb, frames, recs) {
                prop_assert!(l.c2d_offset >= HEADER_BYTES);
                prop_assert!(l.d2c_offset >= l.c2d_offset + recs * 16);
                prop_assert!(l.audio_offset >= l.d2c_offset + recs * 16);
                prop_assert_eq!(l.audio_offset % 64, 0);
                prop_assert!(u64::from(l.audio_offset) + u64::from(l.audio_bytes) <= l.total_bytes);
                prop_assert!(l.total_bytes <= MAX_POOL_BYTES);
                prop_assert!(l.check_identity(&l.identity()).is_ok());
            } else {
                prop_assert!(u64::from(fb) * u64::from(frames) > MAX_POOL_BYTES / 2);
            }
        }
    }

    #[test]
    fn identity_mismatch_is_named() {
        let l = Layout::new(4, 1024, 64).unwrap();
        let mut id = l.identity();
        id.buffer_frames = 4096;
        assert_eq!(l.check_identity(&id).unwrap_err().what, "buffer_frames differs");
        assert!(Layout::new(4, 1024, 63).is_err());
        assert!(Layout::new(0, 1024, 64).is_err());
    }
}

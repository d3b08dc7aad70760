//! The memfd layout the daemon computes from a client's CreateStream, and the identity line it
//! reads from the client's memfd: `Layout::new` never panics, every region it returns lies inside
//! the memfd without overlapping, and `check_identity` accepts exactly the identity it computed.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shmix_shared::layout::{Identity, Layout, HEADER_BYTES, MAX_POOL_BYTES};
use shmix_shared::msg::RECORD_BYTES;

#[derive(Debug, Arbitrary)]
struct Input {
    frame_bytes: u32,
    buffer_frames: u32,
    msg_records: u32,
    id: [u32; 8],
    total: u64,
}

fuzz_target!(|inp: Input| {
    let Ok(l) = Layout::new(inp.frame_bytes, inp.buffer_frames, inp.msg_records) else { return };
    let ring = u64::from(l.msg_records) * RECORD_BYTES as u64;
    assert!(u64::from(l.c2d_offset) >= u64::from(HEADER_BYTES));
    assert!(u64::from(l.d2c_offset) >= u64::from(l.c2d_offset) + ring);
    assert!(u64::from(l.audio_offset) >= u64::from(l.d2c_offset) + ring);
    assert_eq!(u64::from(l.audio_bytes), u64::from(l.frame_bytes) * u64::from(l.buffer_frames));
    assert!(u64::from(l.audio_offset) + u64::from(l.audio_bytes) <= l.total_bytes);
    assert!(l.total_bytes <= MAX_POOL_BYTES);
    assert!(l.msg_records.is_power_of_two());
    let [magic, version, frame_bytes, buffer_frames, msg_records, c2d_offset, d2c_offset, audio_offset] = inp.id;
    let id = Identity {
        magic,
        version,
        frame_bytes,
        buffer_frames,
        msg_records,
        c2d_offset,
        d2c_offset,
        audio_offset,
        total_bytes: inp.total,
    };
    assert_eq!(l.check_identity(&id).is_ok(), id == l.identity());
    assert!(l.check_identity(&l.identity()).is_ok());
});

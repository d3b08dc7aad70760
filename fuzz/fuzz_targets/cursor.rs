//! The cursor arithmetic both sides apply to the peer's published positions: a fill or advance
//! that is accepted stays within the ring, and ring indices and runs never leave it.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shmix_shared::cursor;

#[derive(Debug, Arbitrary)]
struct Input {
    write: u32,
    read: u32,
    capacity: u32,
    last: u32,
    new: u32,
    limit: u32,
    total: u64,
    frames: u32,
}

fuzz_target!(|i: Input| {
    if let Ok(f) = cursor::fill(i.write, i.read, i.capacity) {
        assert!(f <= i.capacity);
        assert_eq!(i.read.wrapping_add(f), i.write);
    }
    if let Ok(m) = cursor::advance(i.last, i.new, i.limit) {
        assert_eq!(i.last.wrapping_add(m), i.new);
        assert!(m <= i.limit.wrapping_sub(i.last));
    }
    if i.capacity > 0 {
        let idx = cursor::ring_index(i.total, i.capacity);
        assert!(idx < i.capacity);
        let frames = i.frames.min(i.capacity);
        let (a, b) = cursor::split_run(idx, frames, i.capacity);
        assert_eq!(u64::from(a) + u64::from(b), u64::from(frames));
        assert!(u64::from(idx) + u64::from(a) <= u64::from(i.capacity));
        assert!(b <= idx);
    }
});

//! Free-running cursor arithmetic. Positions on the wire are `u32` and wrap; the fill of a ring is
//! `write - read` modulo 2^32 and must not exceed its capacity. The audio ring's capacity is the
//! negotiated buffer size, which need not be a power of two, so each side keeps its own `u64`
//! frame count since the last start for ring indices and only publishes its low 32 bits.
//! Runs in both processes. RT: yes.

use crate::error::Violation;

/// Frames (or records) between `read` and `write`, checked against `capacity`.
///
/// # Errors
/// A [`Violation`] when the distance exceeds `capacity` (a cursor jumped or went backwards).
#[inline]
pub fn fill(write: u32, read: u32, capacity: u32) -> Result<u32, Violation> {
    let f = write.wrapping_sub(read);
    if f > capacity {
        Err(Violation::new("fill beyond ring capacity", u64::from(f), u64::from(capacity)))
    } else {
        Ok(f)
    }
}

/// The peer's published position `new` must lie between our last view of it (`last`) and
/// `limit` (going forward, modulo 2^32). Returns how far it moved.
///
/// # Errors
/// A [`Violation`] when `new` went backwards or beyond `limit`.
#[inline]
pub fn advance(last: u32, new: u32, limit: u32) -> Result<u32, Violation> {
    let moved = new.wrapping_sub(last);
    let room = limit.wrapping_sub(last);
    if moved > room {
        Err(Violation::new("cursor moved outside its window", u64::from(moved), u64::from(room)))
    } else {
        Ok(moved)
    }
}

/// Index of frame `total` (a count since the last start) in a ring of `capacity` frames.
#[inline]
#[must_use]
pub fn ring_index(total: u64, capacity: u32) -> u32 {
    (total % u64::from(capacity)) as u32
}

/// Splits a run of `frames` starting at ring index `index` into the part before the end of the
/// ring and the part that wraps to its start.
#[inline]
#[must_use]
pub fn split_run(index: u32, frames: u32, capacity: u32) -> (u32, u32) {
    let first = frames.min(capacity - index);
    (first, frames - first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fill_is_distance_across_wrap(read in any::<u32>(), n in 0u32..=1 << 20, cap in 1u32..=1 << 20) {
            let write = read.wrapping_add(n);
            let r = fill(write, read, cap);
            if n <= cap { prop_assert_eq!(r, Ok(n)); } else { prop_assert!(r.is_err()); }
        }

        #[test]
        fn going_backwards_is_refused(read in any::<u32>(), back in 1u32..=1 << 20, cap in 1u32..=1 << 20) {
            // A writer that moves behind the reader shows as a huge fill.
            prop_assert!(fill(read.wrapping_sub(back), read, cap).is_err());
        }

        #[test]
        fn advance_within_window(last in any::<u32>(), room in 0u32..=1 << 20, step in 0u32..=1 << 21) {
            let limit = last.wrapping_add(room);
            let r = advance(last, last.wrapping_add(step), limit);
            if step <= room { prop_assert_eq!(r, Ok(step)); } else { prop_assert!(r.is_err()); }
        }

        #[test]
        fn index_and_split_stay_in_ring(total in any::<u64>(), cap in 1u32..=1 << 20, frames in 0u32..=1 << 20) {
            let frames = frames.min(cap);
            let i = ring_index(total, cap);
            prop_assert!(i < cap);
            let (a, b) = split_run(i, frames, cap);
            prop_assert_eq!(a + b, frames);
            prop_assert!(i + a <= cap);
            prop_assert!(b <= i || b == 0 || a == cap - i);
        }

        #[test]
        fn low_bits_track_totals(start in any::<u64>(), n in 0u64..=1 << 20, cap in 1u32..=1 << 20) {
            // Publishing only the low 32 bits of u64 totals keeps the u32 fill equal to the true one.
            let n = n.min(u64::from(cap));
            let read = start;
            let write = start.wrapping_add(n);
            prop_assert_eq!(fill(write as u32, read as u32, cap), Ok(n as u32));
        }
    }
}

//! Delay: what `snd_pcm_delay` reports, from the daemon's timestamped snapshot of its read
//! position and device queue, extrapolated with the clock (no syscall: the vDSO). Runs in the
//! host program's calling thread(s). RT: yes.

pub use shmix_shared::clock::now_ns;

use super::{Pcm, State, Stream};
use crate::Errno;

/// Delay math (PROTOCOL.md "Timing"): `write - pos + queued - elapsed*rate`, never negative.
/// `snapshot` is `(pos, queued_frames, ts_ns)`; `elapsed` is not counted while paused.
#[must_use]
pub fn raw_delay(
    write: u32,
    snapshot: (u32, u32, u64),
    now_ns: u64,
    rate: u32,
    buffer: u32,
    paused: bool,
) -> Option<i64> {
    let (pos, queued, ts) = snapshot;
    let fill = write.wrapping_sub(pos);
    // The daemon publishes its read position before the snapshot (the same cycle, after the
    // device commit): in between we may see the new position and fill the space it freed, so
    // an honest snapshot can be up to one daemon cycle (less than a buffer) behind a full ring.
    // The formula still holds then: frames taken since the snapshot went to the device queue,
    // not to the speaker. (Refusing it fell back to the ring fill, one device buffer short.)
    if fill > buffer.saturating_mul(2) {
        return None;
    }
    let elapsed_frames =
        if paused { 0 } else { (u128::from(now_ns.saturating_sub(ts)) * u128::from(rate) / 1_000_000_000) as i64 };
    Some((i64::from(fill) + i64::from(queued) - elapsed_frames).max(0))
}

/// Capture delay (PROTOCOL.md "Capture and monitor streams"): `(pos - read) + queued +
/// elapsed*rate`, frames captured but not yet read. `snapshot` is `(daemon write pos, queued,
/// ts_ns)`; `read` our read position (both wrap at 2^32; the snapshot may be older than frames
/// already read). `elapsed` is not counted while paused and at most one buffer (a stalled daemon
/// captures nothing). Never negative.
#[must_use]
pub fn capture_delay(read: u32, snapshot: (u32, u32, u64), now_ns: u64, rate: u32, buffer: u32, paused: bool) -> i64 {
    let (pos, queued, ts) = snapshot;
    let unread = i64::from(pos.wrapping_sub(read) as i32);
    let elapsed = if paused {
        0
    } else {
        (u128::from(now_ns.saturating_sub(ts)) * u128::from(rate) / 1_000_000_000).min(u128::from(buffer)) as i64
    };
    (unread + i64::from(queued) + elapsed).max(0)
}

/// Capture with MMAP access: how many frames after `appl_ptr` the frame at mmap `offset` (an
/// index in a buffer of `buffer` frames) is. alsa-lib's avail_update fills the mmap buffer from
/// `appl_ptr` on, the part after the buffer's end in a second call at offset 0.
#[must_use]
pub fn mmap_skip(offset: u64, appl_ptr: u64, buffer: u64) -> u64 {
    if buffer == 0 {
        return 0;
    }
    (offset % buffer + buffer - appl_ptr % buffer) % buffer
}

/// Caps `delay` so that it never grows between writes: at most the last report plus what was
/// written since.
#[must_use]
pub fn monotonic_delay(delay: i64, last: Option<(i64, u64)>, write_total: u64) -> i64 {
    match last {
        Some((d, w)) => delay.min(d.saturating_add(write_total.saturating_sub(w) as i64)),
        None => delay,
    }
}

impl Pcm {
    /// delay: frames until a frame written now is heard. Valid from prepare, never negative, does
    /// not grow between writes.
    ///
    /// # Errors
    /// EPIPE after an xrun, the errno once dead.
    pub fn delay(&mut self) -> Result<i64, Errno> {
        self.refresh();
        self.check_alive()?;
        let capture = self.capture;
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        if matches!(s.state, State::Xrun { .. }) {
            return Err(Errno(libc::EPIPE));
        }
        let fill = s.write_total.saturating_sub(s.read_total) as i64;
        let (running, paused) = (s.state.started(), s.state.paused());
        if capture {
            // Frames captured but not yet read: those in the ring, those the device and the
            // resampler hold (queued), and those captured since the snapshot.
            let snap = if running { Self::snapshot(s) } else { None };
            return Ok(snap.map_or(fill, |snap| {
                capture_delay(s.read_total as u32, snap, now_ns(), s.params.rate, s.params.buffer_frames, paused)
                    .max(fill)
            }));
        }
        let from_snapshot = if running {
            Self::snapshot(s).and_then(|snap| {
                raw_delay(s.write_total as u32, snap, now_ns(), s.params.rate, s.params.buffer_frames, paused)
            })
        } else {
            None
        };
        // The frames still in our ring have not been played whatever the clock says: when the
        // daemon stalls, the snapshot ages but nothing is consumed. (Applied before the
        // monotonic cap, which then cannot go below it either: the fill never grows without a
        // write.)
        let d = monotonic_delay(from_snapshot.unwrap_or(fill).max(fill), s.last_delay, s.write_total);
        if running {
            s.last_delay = Some((d, s.write_total));
        }
        Ok(d)
    }

    /// The daemon's timing snapshot of this run (taken since the last start): a fresh one, or
    /// the last one read whole when the daemon is inside its write (see `last_snapshot`).
    pub(super) fn snapshot(s: &mut Stream) -> Option<(u32, u32, u64)> {
        if let Some(snap) = s.shm.read_timing() {
            s.last_snapshot = Some(snap);
        }
        s.last_snapshot.filter(|&(_, _, ts)| ts >= s.started_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_counts_queue_and_elapsed_and_never_goes_negative() {
        // 1000 frames in the ring, 480 in the device, snapshot 5 ms old at 48 kHz: -240.
        let d = raw_delay(2000, (1000, 480, 1_000_000), 6_000_000, 48000, 4096, false).unwrap();
        assert_eq!(d, 1000 + 480 - 240);
        assert_eq!(raw_delay(2000, (1000, 480, 1_000_000), 6_000_000, 48000, 4096, true), Some(1480));
        assert_eq!(raw_delay(2000, (1000, 0, 0), 10_000_000_000, 48000, 4096, false), Some(0));
        // Across the u32 wrap.
        assert_eq!(raw_delay(5, (u32::MAX - 4, 0, 0), 0, 48000, 4096, false), Some(10));
        // The stream's rate counts, not the device's: a 44.1 kHz stream on a 48 kHz device,
        // snapshot 10 ms old, 441 stream frames elapsed (queued is in stream frames too).
        assert_eq!(raw_delay(2000, (1000, 441, 1_000_000), 11_000_000, 44100, 4096, false), Some(1000));
        // A snapshot beyond our write position is ignored.
        assert_eq!(raw_delay(5, (10, 0, 0), 0, 48000, 4096, false), None);
        // A snapshot taken just before the daemon's last take, the ring refilled since: the
        // frames taken since are in the device queue, still counted.
        assert_eq!(raw_delay(4096 + 256, (0, 1024, 1_000_000), 1_000_000, 48000, 4096, false), Some(4096 + 256 + 1024));
        // More than two buffers behind our writes is not a snapshot of this ring.
        assert_eq!(raw_delay(8193, (0, 0, 0), 0, 48000, 4096, false), None);
    }

    #[test]
    fn capture_delay_counts_unread_queue_and_elapsed() {
        // Snapshot: daemon at 3000, 480 queued, 5 ms ago at 48 kHz (+240); we read up to 1000.
        assert_eq!(capture_delay(1000, (3000, 480, 1_000_000), 6_000_000, 48000, 4096, false), 2000 + 480 + 240);
        assert_eq!(capture_delay(1000, (3000, 480, 1_000_000), 6_000_000, 48000, 4096, true), 2480);
        // We already read past the (older) snapshot position.
        assert_eq!(capture_delay(3100, (3000, 0, 1_000_000), 1_000_000, 48000, 4096, false), 0);
        assert_eq!(capture_delay(3100, (3000, 300, 1_000_000), 1_000_000, 48000, 4096, false), 200);
        // Across the u32 wrap; a stalled daemon adds at most one buffer.
        assert_eq!(capture_delay(u32::MAX - 4, (5, 0, 0), 0, 48000, 4096, false), 10);
        assert_eq!(capture_delay(0, (0, 0, 0), 60_000_000_000, 48000, 4096, false), 4096);
    }

    #[test]
    fn mmap_skip_finds_the_wrapped_part() {
        // appl_ptr at ring index 900 of 1024: the first call at 900 (skip 0), the wrapped part
        // at offset 0 is 124 frames further.
        assert_eq!(mmap_skip(900, 900, 1024), 0);
        assert_eq!(mmap_skip(0, 900, 1024), 124);
        assert_eq!(mmap_skip(0, 5 * 1024 + 900, 1024), 124);
        assert_eq!(mmap_skip(7, 7, 0), 0);
    }

    #[test]
    fn delay_does_not_grow_between_writes() {
        assert_eq!(monotonic_delay(900, Some((800, 5000)), 5000), 800);
        assert_eq!(monotonic_delay(900, Some((800, 5000)), 5256), 900);
        assert_eq!(monotonic_delay(700, Some((800, 5000)), 5000), 700);
        assert_eq!(monotonic_delay(700, None, 5000), 700);
    }
}

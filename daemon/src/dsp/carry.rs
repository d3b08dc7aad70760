//! What a playback stream takes along when it moves to another device: the frames it read from
//! its ring that the old device never played (taken back by a rewind, or still inside the
//! resampler). A resampling pipeline logs the raw frames it takes in ([`InputLog`]) so those
//! can be found; the new device's pipeline plays the handed-over frames ([`Carry`]) before it
//! reads the ring again. Both are sized on the control thread; the mix thread only copies.
//! RT: `keep` and `take` yes (copies into preallocated memory); the rest runs on the control
//! thread.

/// The last raw (ring-format) frames a pipeline took in, in a circular buffer.
#[derive(Debug, Default)]
pub struct InputLog {
    bytes: Vec<u8>,
    frame_bytes: usize,
    cap: usize,
    /// Frames taken in since the pipeline started.
    total: u64,
}

impl InputLog {
    /// Room for `cap` frames of `frame_bytes` (0: nothing kept). Control thread; every page
    /// written here, so the mix thread takes no page fault.
    #[must_use]
    pub fn new(cap: usize, frame_bytes: usize) -> Self {
        let mut bytes = vec![0u8; cap * frame_bytes];
        for i in (0..bytes.len()).step_by(4096) {
            bytes[i] = std::hint::black_box(0);
        }
        Self { bytes, frame_bytes, cap, total: 0 }
    }

    /// Logs `b` (whole frames). RT: yes.
    pub fn keep(&mut self, b: &[u8]) {
        let fb = self.frame_bytes.max(1);
        let k = b.len() / fb;
        if self.cap > 0 {
            // Only the last `cap` frames matter.
            let skip = k.saturating_sub(self.cap);
            let (b, k) = (&b[skip * fb..], k - skip);
            let start = ((self.total + skip as u64) % self.cap as u64) as usize;
            let first = k.min(self.cap - start);
            self.bytes[start * fb..(start + first) * fb].copy_from_slice(&b[..first * fb]);
            self.bytes[..(k - first) * fb].copy_from_slice(&b[first * fb..k * fb]);
        }
        self.total += k as u64;
    }

    /// Frames taken in since the start.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Forgets everything (a new start). RT: yes.
    pub fn reset(&mut self) {
        self.total = 0;
    }

    /// The last `n` frames taken in (at most what is kept), oldest first. Control thread.
    #[must_use]
    pub fn last(&self, n: u64) -> Vec<u8> {
        let fb = self.frame_bytes;
        let n = n.min(self.total).min(self.cap as u64);
        let mut out = Vec::with_capacity(n as usize * fb);
        for f in self.total - n..self.total {
            let i = (f % self.cap as u64) as usize;
            out.extend_from_slice(&self.bytes[i * fb..(i + 1) * fb]);
        }
        out
    }
}

/// Frames handed over by the device a stream moved from, played before its ring.
#[derive(Debug, Default)]
pub struct Carry {
    bytes: Vec<u8>,
    /// Bytes played so far.
    pos: usize,
}

impl Carry {
    /// `bytes`: whole frames, oldest first (built on the control thread).
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Frames left to play.
    #[must_use]
    pub fn left(&self, frame_bytes: usize) -> usize {
        (self.bytes.len() - self.pos) / frame_bytes.max(1)
    }

    /// The bytes left, oldest first.
    #[must_use]
    pub fn rest(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    /// Copies up to `out.len()` bytes (whole frames) into `out`; returns the bytes copied. RT: yes.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.bytes.len() - self.pos);
        out[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        n
    }

    /// Drops what is left (a new start). RT: yes.
    pub fn clear(&mut self) {
        self.pos = self.bytes.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_last_frames_in_order() {
        let mut log = InputLog::new(5, 2);
        let frames: Vec<u8> = (0..16u8).collect();
        log.keep(&frames[..6]);
        assert_eq!(log.last(3), vec![0, 1, 2, 3, 4, 5]);
        log.keep(&frames[6..16]);
        assert_eq!(log.total(), 8);
        assert_eq!(log.last(9), frames[6..16].to_vec(), "at most the capacity, oldest first");
        log.keep(&(100..114u8).collect::<Vec<_>>());
        assert_eq!(log.last(2), vec![110, 111, 112, 113]);
        let mut c = Carry::new(vec![1, 2, 3, 4, 5, 6]);
        let mut out = [0u8; 4];
        assert_eq!(c.take(&mut out), 4);
        assert_eq!(c.left(2), 1);
        assert_eq!(c.rest(), &[5, 6]);
        assert_eq!(c.take(&mut out), 2);
        assert_eq!(c.left(2), 0);
    }
}

//! Peak metering for `shmixctl`: lane-parallel kernels that vectorise, over a run of samples
//! or per channel. Mix thread. RT: yes.

/// Lanes of the peak kernels: independent accumulators (no dependency chain), so the loops
/// vectorise.
const PEAK_LANES: usize = 16;

/// `max` without NaN handling (one `maxss`/`maxps`; a NaN sample is simply not a peak).
#[inline(always)]
pub(super) fn fmax(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// Largest absolute sample of `x`. RT: yes.
#[must_use]
pub fn peak_of(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; PEAK_LANES];
    let mut blocks = x.chunks_exact(PEAK_LANES);
    for b in &mut blocks {
        for (a, v) in acc.iter_mut().zip(b) {
            *a = fmax(*a, v.abs());
        }
    }
    let tail = blocks.remainder().iter().fold(0.0f32, |m, v| fmax(m, v.abs()));
    acc.iter().fold(tail, |m, &v| fmax(m, v))
}

/// Folds the largest absolute sample per channel of interleaved `x` (`peaks.len()` channels)
/// into `peaks`. RT: yes.
pub fn channel_peaks(x: &[f32], peaks: &mut [f32]) {
    let ch = peaks.len();
    if ch == 0 {
        return;
    }
    let mut frames = x.chunks_exact(ch);
    if PEAK_LANES.is_multiple_of(ch) {
        // Whole frames per block: lane j always holds channel j % ch.
        let mut acc = [0.0f32; PEAK_LANES];
        let mut blocks = x.chunks_exact(PEAK_LANES);
        for b in &mut blocks {
            for (a, v) in acc.iter_mut().zip(b) {
                *a = fmax(*a, v.abs());
            }
        }
        // Lane j holds channel j % ch, and ch divides the (power of two) lane count: halve
        // the lanes until ch are left (lanes j and j + w/2 hold the same channel). A per-lane
        // `j % ch` was a division each, most of a 64-frame period's scan.
        let mut w = PEAK_LANES;
        while w > ch {
            w /= 2;
            let (lo, hi) = acc.split_at_mut(w);
            for (a, &b) in lo.iter_mut().zip(&hi[..w]) {
                *a = fmax(*a, b);
            }
        }
        for (p, &a) in peaks.iter_mut().zip(&acc[..ch]) {
            *p = fmax(*p, a);
        }
        frames = blocks.remainder().chunks_exact(ch);
    }
    for f in frames {
        for (p, v) in peaks.iter_mut().zip(f) {
            *p = fmax(*p, v.abs());
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn peak_kernels_match_a_plain_loop() {
        for ch in [1usize, 2, 3, 4, 6, 8] {
            for frames in [0usize, 1, 7, 8, 33, 1024] {
                let x: Vec<f32> = (0..frames * ch).map(|i| ((i * 7919) % 1001) as f32 / 1000.0 - 0.5).collect();
                let mut want = vec![0.0f32; ch];
                for f in x.chunks_exact(ch) {
                    for (w, v) in want.iter_mut().zip(f) {
                        *w = w.max(v.abs());
                    }
                }
                let mut got = vec![0.0f32; ch];
                channel_peaks(&x, &mut got);
                assert_eq!(got, want, "{ch} ch, {frames} frames");
                assert_eq!(peak_of(&x), want.iter().fold(0.0f32, |a, &b| a.max(b)));
            }
        }
    }
}

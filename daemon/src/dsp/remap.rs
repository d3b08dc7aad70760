//! Channel remapping by channel map: a sparse matrix from a stream's layout into the device's
//! (and back for recording), with the downmix fallbacks (surround folded into stereo at -3 dB,
//! mono spread at full level) and the identity fast case. Built on the control thread; `add`
//! and `write` run on the mix thread (RT: yes, no allocation).

use std::f32::consts::FRAC_1_SQRT_2;
use std::fmt;

use shmix_shared::chmap::{self, ChannelMap, Position};

use super::gain::Gain;

/// One non-zero entry of a remap matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    src: usize,
    dst: usize,
    coef: f32,
}

/// A channel remap matrix (device channels x stream channels), kept as its non-zero taps.
///
/// Rules, per stream channel: a position the device has goes there at 1.0; `NA` is silent;
/// `UNKNOWN` maps by index (modulo the device's channels); a one-channel stream of `UNKNOWN`
/// position counts as `MONO`. A position the device lacks is folded in (never dropped): `MONO` to
/// FL and FR at 1.0 (else FC); front left/right-ish positions to FL/FR; centre-ish to FL and FR at
/// -3 dB (0.7071); rear/side to the other of rear/side at 1.0, else the front of its side at
/// -3 dB; rear centre to both rears (sides, fronts) at -3 dB; LFE to FL and FR at -3 dB (folded,
/// not dropped), else FC. A one-channel device takes every channel (fronts at 1.0, others at -3
/// dB). Anything still unplaced maps by index. Finally each device row whose coefficients sum
/// above 1 is divided by that sum, so a full-scale input on every channel cannot clip
/// (stereo -> mono becomes the average).
#[derive(Clone, PartialEq)]
pub struct Remap {
    sc: usize,
    dc: usize,
    identity: bool,
    taps: Vec<Tap>,
}

impl fmt::Debug for Remap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Remap({}->{}", self.sc, self.dc)?;
        if self.identity {
            return f.write_str(", identity)");
        }
        for t in &self.taps {
            write!(f, ", {}<-{}:{:.4}", t.dst, t.src, t.coef)?;
        }
        f.write_str(")")
    }
}

const M3: f32 = FRAC_1_SQRT_2;

/// Fallback target sets for a position the device lacks, best first.
fn fallbacks(p: Position) -> &'static [&'static [(Position, f32)]] {
    use chmap::*;
    // Codes above RC (alsa-lib's SND_CHMAP_*): 12 FLC, 13 FRC, 14 RLC, 15 RRC, 16 FLW, 17 FRW,
    // 18 FLH, 19 FCH, 20 FRH, 21 TC, 22 TFL, 23 TFR, 24 TFC, 25 TRL, 26 TRR, 27 TRC, 28 TFLC,
    // 29 TFRC, 30 TSL, 31 TSR, 32 LLFE, 33 RLFE, 34 BC, 35 BLC, 36 BRC.
    const FRONT_L: &[&[(Position, f32)]] = &[&[(FL, 1.0)], &[(FC, 1.0)], &[(MONO, 1.0)]];
    const FRONT_R: &[&[(Position, f32)]] = &[&[(FR, 1.0)], &[(FC, 1.0)], &[(MONO, 1.0)]];
    const CENTRE: &[&[(Position, f32)]] = &[&[(FC, 1.0)], &[(FL, M3), (FR, M3)], &[(MONO, 1.0)]];
    const REAR_L: &[&[(Position, f32)]] = &[&[(RL, 1.0)], &[(SL, 1.0)], &[(FL, M3)], &[(FC, M3)], &[(MONO, M3)]];
    const REAR_R: &[&[(Position, f32)]] = &[&[(RR, 1.0)], &[(SR, 1.0)], &[(FR, M3)], &[(FC, M3)], &[(MONO, M3)]];
    const SIDE_L: &[&[(Position, f32)]] = &[&[(SL, 1.0)], &[(RL, 1.0)], &[(FL, M3)], &[(FC, M3)], &[(MONO, M3)]];
    const SIDE_R: &[&[(Position, f32)]] = &[&[(SR, 1.0)], &[(RR, 1.0)], &[(FR, M3)], &[(FC, M3)], &[(MONO, M3)]];
    const REAR_C: &[&[(Position, f32)]] = &[
        &[(RC, 1.0)],
        &[(RL, M3), (RR, M3)],
        &[(SL, M3), (SR, M3)],
        &[(FL, M3), (FR, M3)],
        &[(FC, M3)],
        &[(MONO, M3)],
    ];
    const LFE_: &[&[(Position, f32)]] = &[&[(LFE, 1.0)], &[(FL, M3), (FR, M3)], &[(FC, M3)], &[(MONO, M3)]];
    const MONO_: &[&[(Position, f32)]] = &[&[(MONO, 1.0)], &[(FL, 1.0), (FR, 1.0)], &[(FC, 1.0)]];
    match p {
        MONO => MONO_,
        FL | 12 | 16 | 18 | 22 | 28 | 35 => FRONT_L,
        FR | 13 | 17 | 20 | 23 | 29 | 36 => FRONT_R,
        FC | 19 | 21 | 24 | 34 => CENTRE,
        RL | 14 | 25 => REAR_L,
        RR | 15 | 26 => REAR_R,
        SL | 30 => SIDE_L,
        SR | 31 => SIDE_R,
        RC | 27 => REAR_C,
        LFE | 32 | 33 => LFE_,
        _ => &[],
    }
}

/// Weight of a stream position on a one-channel device (before normalisation).
fn mono_weight(p: Position) -> f32 {
    use chmap::*;
    match fallbacks(p).first().and_then(|s| s.first()).map(|t| t.0) {
        Some(MONO | FL | FR | FC) | None => 1.0,
        Some(_) => M3,
    }
}

impl Remap {
    /// The matrix from `stream` into `device` (see the type's rules).
    #[must_use]
    pub fn new(stream: &ChannelMap, device: &ChannelMap) -> Self {
        let sc = stream.channels() as usize;
        let dc = device.channels() as usize;
        let dpos = device.positions();
        let find = |p: Position| (p != chmap::UNKNOWN && p != chmap::NA).then(|| dpos.iter().position(|d| *d == p))?;
        let mut m = vec![0.0f32; dc * sc];
        for (i, &p0) in stream.positions().iter().enumerate() {
            let p = if sc == 1 && p0 == chmap::UNKNOWN { chmap::MONO } else { p0 };
            let mut put = |d: usize, c: f32| m[d * sc + i] += c;
            if p == chmap::NA {
                continue;
            }
            if dc == 1 {
                put(0, mono_weight(p));
                continue;
            }
            if let Some(d) = find(p) {
                put(d, 1.0);
                continue;
            }
            if p == chmap::MONO && find(chmap::FL).is_none() && find(chmap::FR).is_none() && find(chmap::FC).is_none() {
                // A device of unknown positions: mono to its first two channels.
                put(0, 1.0);
                put(1, 1.0);
                continue;
            }
            let set = fallbacks(p).iter().find(|set| set.iter().all(|(q, _)| find(*q).is_some()));
            match set {
                Some(set) => {
                    for (q, c) in set.iter() {
                        if let Some(d) = find(*q) {
                            put(d, *c);
                        }
                    }
                }
                None => put(i % dc, 1.0),
            }
        }
        for row in m.chunks_exact_mut(sc) {
            let sum: f32 = row.iter().map(|c| c.abs()).sum();
            if sum > 1.0 {
                row.iter_mut().for_each(|c| *c /= sum);
            }
        }
        let identity = sc == dc && (0..dc).all(|d| (0..sc).all(|s| m[d * sc + s] == if d == s { 1.0 } else { 0.0 }));
        let mut taps = Vec::new();
        for s in 0..sc {
            for d in 0..dc {
                let coef = m[d * sc + s];
                if coef != 0.0 {
                    taps.push(Tap { src: s, dst: d, coef });
                }
            }
        }
        Self { sc, dc, identity, taps }
    }

    /// The coefficient from stream channel `src` into device channel `dst`.
    #[must_use]
    pub fn coef(&self, dst: usize, src: usize) -> f32 {
        self.taps.iter().filter(|t| t.dst == dst && t.src == src).map(|t| t.coef).sum()
    }

    /// True when every stream channel goes to the device channel of its index at 1.0.
    #[must_use]
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// Adds `frames` frames of `src` (stream channels) times the gain into `bus` (device
    /// channels). RT: yes.
    pub fn add(&self, src: &[f32], bus: &mut [f32], frames: usize, gain: &mut Gain) {
        let (sc, dc) = (self.sc, self.dc);
        let src = &src[..frames * sc];
        let bus = &mut bus[..frames * dc];
        let ramp = gain.ramp_left.min(frames);
        for f in 0..ramp {
            let g = gain.step();
            let s = &src[f * sc..(f + 1) * sc];
            let b = &mut bus[f * dc..(f + 1) * dc];
            for t in &self.taps {
                b[t.dst] += t.coef * g * s[t.src];
            }
        }
        let g = gain.now;
        let (src, bus) = (&src[ramp * sc..], &mut bus[ramp * dc..]);
        if self.identity {
            for (b, x) in bus.iter_mut().zip(src) {
                *b += x * g;
            }
        } else if sc == 1 && dc == 2 && self.taps.len() == 2 && self.taps[0].dst == 0 && self.taps[1].dst == 1 {
            let (c0, c1) = (self.taps[0].coef * g, self.taps[1].coef * g);
            for (b, x) in bus.chunks_exact_mut(2).zip(src) {
                b[0] += c0 * x;
                b[1] += c1 * x;
            }
        } else {
            for (b, s) in bus.chunks_exact_mut(dc).zip(src.chunks_exact(sc)) {
                for t in &self.taps {
                    b[t.dst] += t.coef * g * s[t.src];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    use chmap::*;

    fn map(p: &[Position]) -> ChannelMap {
        ChannelMap::new(p).unwrap()
    }

    fn matrix(r: &Remap) -> Vec<Vec<f32>> {
        (0..r.dc).map(|d| (0..r.sc).map(|s| r.coef(d, s)).collect()).collect()
    }

    #[test]
    fn mono_to_stereo_is_full_level_on_both() {
        let r = Remap::new(&ChannelMap::standard(1), &ChannelMap::standard(2));
        assert_eq!(matrix(&r), vec![vec![1.0], vec![1.0]]);
        // An unknown-position mono stream too.
        let r = Remap::new(&map(&[UNKNOWN]), &ChannelMap::standard(2));
        assert_eq!(matrix(&r), vec![vec![1.0], vec![1.0]]);
    }

    #[test]
    fn stereo_to_mono_is_the_average() {
        let r = Remap::new(&ChannelMap::standard(2), &ChannelMap::standard(1));
        assert_eq!(matrix(&r), vec![vec![0.5, 0.5]]);
    }

    #[test]
    fn identity_and_unknown_by_index() {
        for ch in 1..=8 {
            assert!(Remap::new(&ChannelMap::standard(ch), &ChannelMap::standard(ch)).is_identity(), "{ch}");
        }
        let r = Remap::new(&map(&[UNKNOWN, UNKNOWN]), &ChannelMap::standard(2));
        assert!(r.is_identity());
        // Unknown positions beyond the device's channels wrap, never vanish.
        let r = Remap::new(&map(&[UNKNOWN, UNKNOWN, UNKNOWN]), &ChannelMap::standard(2));
        assert_eq!(matrix(&r), vec![vec![0.5, 0.0, 0.5], vec![0.0, 1.0, 0.0]]);
        // NA stays silent; swapped channels swap.
        let r = Remap::new(&map(&[FR, FL, NA]), &ChannelMap::standard(2));
        assert_eq!(matrix(&r), vec![vec![0.0, 1.0, 0.0], vec![1.0, 0.0, 0.0]]);
    }

    #[test]
    fn surround_to_stereo_folds_at_minus_3_db_without_clipping() {
        for ch in [6, 8] {
            let r = Remap::new(&ChannelMap::standard(ch), &ChannelMap::standard(2));
            let m = matrix(&r);
            eprintln!("{ch} ch -> stereo: {r:?}");
            for (d, row) in m.iter().enumerate() {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-6, "row {d} sums to {sum}");
            }
            let pos = ChannelMap::standard(ch);
            for (s, p) in pos.positions().iter().enumerate() {
                let (l, rr) = (m[0][s], m[1][s]);
                match *p {
                    FL | RL | SL => assert!(l > 0.0 && rr == 0.0),
                    FR | RR | SR => assert!(rr > 0.0 && l == 0.0),
                    FC | LFE => assert!(l > 0.0 && (l - rr).abs() < 1e-7),
                    _ => unreachable!(),
                }
                // -3 dB relative to the front channel of its side.
                if matches!(*p, RL | SL | FC | LFE) {
                    assert!((l / m[0][0] - M3).abs() < 1e-6);
                }
            }
            // Full scale on every channel does not clip.
            let src = vec![1.0f32; ch as usize * 4];
            let mut bus = vec![0.0f32; 8];
            r.add(&src, &mut bus, 4, &mut Gain::new(1));
            assert!(bus.iter().all(|v| *v <= 1.0 + 1e-6 && *v > 0.99), "{bus:?}");
        }
        // Stereo into 5.1: no invented surround.
        let r = Remap::new(&ChannelMap::standard(2), &ChannelMap::standard(6));
        assert_eq!(r.taps.len(), 2);
        // Channels the device lacks are folded, never dropped.
        for ch in 1..=32 {
            for dch in 1..=8 {
                let r = Remap::new(&ChannelMap::standard(ch), &ChannelMap::standard(dch));
                for s in 0..ch as usize {
                    assert!((0..dch as usize).any(|d| r.coef(d, s) > 0.0), "{ch} -> {dch}: channel {s} dropped");
                }
            }
        }
    }

    #[test]
    fn gain_ramps_linearly_then_holds() {
        let r = Remap::new(&ChannelMap::standard(1), &ChannelMap::standard(1));
        let mut g = Gain::new(4);
        g.set(0.0);
        let mut bus = vec![0.0f32; 6];
        r.add(&[1.0; 6], &mut bus, 6, &mut g);
        assert_eq!(bus, vec![1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
        assert!(!g.is_unity());
    }
}

//! Sample conversion between interleaved stream/device bytes and f32 samples normalised to
//! [-1, 1): U8 `(x - 128) / 2^7`, S16 `x / 2^15`, S24 (in 32, sign-extended from bit 23, top byte
//! ignored) and S24_3 `x / 2^23`, S32 `x / 2^31`, float as is (NaN and infinities become 0), G.711
//! A-law and mu-law through their 16-bit linear values (`x / 2^15`).
//!
//! Every integer format of up to 24 bits is exact in an f32, and so is a sum of a few such
//! streams, so one stream round-trips bit for bit and several give their exact sum, saturated on
//! the way out (integers: round to nearest, half away from zero, then clamp; float: clamp to
//! [-1, 1], NaN becomes 0). S32 keeps 24 significant bits (f32).
//!
//! Decoders and encoders are chosen once per stream/device ([`decoder`], [`encoder`]): each is
//! one tight loop for one format, never a `match` per sample.
//! Runs on the mix thread. RT: yes (no allocation, no syscalls).

use shmix_shared::SampleFormat;

/// Decodes `src` (whole samples of one format) into `dst` (one f32 per sample).
pub type DecodeFn = fn(src: &[u8], dst: &mut [f32]);
/// Encodes `src` into `dst` (whole samples of one format), saturating.
pub type EncodeFn = fn(src: &[f32], dst: &mut [u8]);

/// True when the daemon can decode and encode `format` (all protocol formats).
#[must_use]
pub fn is_supported(format: SampleFormat) -> bool {
    SampleFormat::ALL.contains(&format)
}

const S15: f32 = 1.0 / 32_768.0;
const S23: f32 = 1.0 / 8_388_608.0;
const S31: f32 = 1.0 / 2_147_483_648.0;

#[inline(always)]
fn sext24(x: u32) -> i32 {
    ((x << 8) as i32) >> 8
}

#[inline(always)]
fn finite(v: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

macro_rules! decode_fn {
    ($name:ident, $n:literal, |$b:ident| $e:expr) => {
        fn $name(src: &[u8], dst: &mut [f32]) {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact($n)) {
                let mut $b = [0u8; $n];
                $b.copy_from_slice(c);
                *o = $e;
            }
        }
    };
}

decode_fn!(dec_u8, 1, |b| (f32::from(b[0]) - 128.0) * (1.0 / 128.0));
decode_fn!(dec_s16le, 2, |b| f32::from(i16::from_le_bytes(b)) * S15);
decode_fn!(dec_s16be, 2, |b| f32::from(i16::from_be_bytes(b)) * S15);
decode_fn!(dec_s24le, 4, |b| sext24(u32::from_le_bytes(b)) as f32 * S23);
decode_fn!(dec_s24be, 4, |b| sext24(u32::from_be_bytes(b)) as f32 * S23);
decode_fn!(dec_s24_3le, 3, |b| sext24(u32::from_le_bytes([b[0], b[1], b[2], 0])) as f32 * S23);
decode_fn!(dec_s24_3be, 3, |b| sext24(u32::from_be_bytes([0, b[0], b[1], b[2]])) as f32 * S23);
decode_fn!(dec_s32le, 4, |b| i32::from_le_bytes(b) as f32 * S31);
decode_fn!(dec_s32be, 4, |b| i32::from_be_bytes(b) as f32 * S31);
decode_fn!(dec_f32le, 4, |b| finite(f32::from_le_bytes(b)));
decode_fn!(dec_f32be, 4, |b| finite(f32::from_be_bytes(b)));
decode_fn!(dec_f64le, 8, |b| finite(f64::from_le_bytes(b) as f32));
decode_fn!(dec_alaw, 1, |b| f32::from(ALAW_DECODE[b[0] as usize]) * S15);
decode_fn!(dec_mulaw, 1, |b| f32::from(ULAW_DECODE[b[0] as usize]) * S15);

/// The decoder for `format`.
#[must_use]
pub fn decoder(format: SampleFormat) -> DecodeFn {
    use SampleFormat as F;
    match format {
        F::U8 => dec_u8,
        F::S16Le => dec_s16le,
        F::S16Be => dec_s16be,
        F::S24Le => dec_s24le,
        F::S24Be => dec_s24be,
        F::S24_3Le => dec_s24_3le,
        F::S24_3Be => dec_s24_3be,
        F::S32Le => dec_s32le,
        F::S32Be => dec_s32be,
        F::F32Le => dec_f32le,
        F::F32Be => dec_f32be,
        F::F64Le => dec_f64le,
        F::ALaw => dec_alaw,
        F::MuLaw => dec_mulaw,
    }
}

/// Rounds `x` to the nearest integer (half away from zero) and clamps it into `[lo, hi]` (both
/// integers exact in f32); NaN becomes 0. Pure f32 selects and one truncating conversion, so the
/// loops around it vectorise (a saturating `as` cast does not, on x86-64).
#[inline(always)]
fn round_clamp(x: f32, lo: f32, hi: f32) -> i32 {
    #[allow(clippy::eq_op)]
    let x = if x == x { x } else { 0.0 };
    // Below 2^23 adding 0.5 is exact and truncation then rounds; above, every f32 is an integer.
    let r = if x.abs() < 8_388_608.0 { x + 0.5f32.copysign(x) } else { x };
    let r = r.max(lo).min(hi);
    // SAFETY: `r` is finite (NaN was replaced, infinities clamped) and within [lo, hi], which
    // the callers keep inside i32's range, so the truncating conversion is defined.
    unsafe { r.to_int_unchecked::<i32>() }
}

/// f32 -> i16 (round to nearest, saturating, NaN -> 0).
#[inline(always)]
fn q16(v: f32) -> i16 {
    round_clamp(v * 32_768.0, -32_768.0, 32_767.0) as i16
}

/// f32 -> i8 (as [`q16`]).
#[inline(always)]
fn q8(v: f32) -> i8 {
    round_clamp(v * 128.0, -128.0, 127.0) as i8
}

/// f32 -> S24 value (as [`q16`]).
#[inline(always)]
fn q24(v: f32) -> i32 {
    round_clamp(v * 8_388_608.0, -8_388_608.0, 8_388_607.0)
}

/// f32 -> i32 (as [`q16`]). The largest f32 below 2^31 is 2^31 - 128; at or above 2^31 the
/// result is `i32::MAX`.
#[inline(always)]
fn q32(v: f32) -> i32 {
    let x = v * 2_147_483_648.0;
    let i = round_clamp(x, -2_147_483_648.0, 2_147_483_520.0);
    if x >= 2_147_483_648.0 {
        i32::MAX
    } else {
        i
    }
}

/// Clamps into [-1, 1]; NaN -> 0.
#[inline(always)]
fn unit(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(-1.0, 1.0)
    }
}

macro_rules! encode_fn {
    ($name:ident, $n:literal, |$v:ident| $e:expr) => {
        fn $name(src: &[f32], dst: &mut [u8]) {
            for (c, $v) in dst.chunks_exact_mut($n).zip(src.iter().copied()) {
                let b: [u8; $n] = $e;
                c.copy_from_slice(&b);
            }
        }
    };
}

encode_fn!(enc_u8, 1, |v| [(q8(v) as u8) ^ 0x80]);
encode_fn!(enc_s16le, 2, |v| q16(v).to_le_bytes());
encode_fn!(enc_s16be, 2, |v| q16(v).to_be_bytes());
encode_fn!(enc_s24le, 4, |v| q24(v).to_le_bytes());
encode_fn!(enc_s24be, 4, |v| q24(v).to_be_bytes());
encode_fn!(enc_s24_3le, 3, |v| {
    let b = q24(v).to_le_bytes();
    [b[0], b[1], b[2]]
});
encode_fn!(enc_s24_3be, 3, |v| {
    let b = q24(v).to_be_bytes();
    [b[1], b[2], b[3]]
});
encode_fn!(enc_s32le, 4, |v| q32(v).to_le_bytes());
encode_fn!(enc_s32be, 4, |v| q32(v).to_be_bytes());
encode_fn!(enc_f32le, 4, |v| unit(v).to_le_bytes());
encode_fn!(enc_f32be, 4, |v| unit(v).to_be_bytes());
encode_fn!(enc_f64le, 8, |v| f64::from(unit(v)).to_le_bytes());
encode_fn!(enc_alaw, 1, |v| [linear_to_alaw(q16(v))]);
encode_fn!(enc_mulaw, 1, |v| [linear_to_ulaw(q16(v))]);

/// The encoder for `format`.
#[must_use]
pub fn encoder(format: SampleFormat) -> EncodeFn {
    use SampleFormat as F;
    match format {
        F::U8 => enc_u8,
        F::S16Le => enc_s16le,
        F::S16Be => enc_s16be,
        F::S24Le => enc_s24le,
        F::S24Be => enc_s24be,
        F::S24_3Le => enc_s24_3le,
        F::S24_3Be => enc_s24_3be,
        F::S32Le => enc_s32le,
        F::S32Be => enc_s32be,
        F::F32Le => enc_f32le,
        F::F32Be => enc_f32be,
        F::F64Le => enc_f64le,
        F::ALaw => enc_alaw,
        F::MuLaw => enc_mulaw,
    }
}

/// Fills `out` with silence in `format` (0x80 for U8, 0xff mu-law, 0xd5 A-law, zero bytes otherwise).
pub fn silence(format: SampleFormat, out: &mut [u8]) {
    let byte = match format {
        SampleFormat::U8 => 0x80,
        SampleFormat::MuLaw => 0xff,
        SampleFormat::ALaw => 0xd5,
        _ => 0,
    };
    out.fill(byte);
}

// G.711 (the classic Sun reference implementation, g711.c).

/// G.711 mu-law byte -> 16-bit linear.
#[must_use]
pub const fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let mut t = (((u & 0x0f) as i32) << 3) + 0x84;
    t <<= ((u & 0x70) >> 4) as i32;
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// G.711 A-law byte -> 16-bit linear.
#[must_use]
pub const fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0f) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// 16-bit linear -> G.711 mu-law byte.
#[must_use]
pub const fn linear_to_ulaw(pcm: i16) -> u8 {
    const BIAS: i32 = 0x84 >> 2;
    const CLIP: i32 = 8159;
    let mut v = (pcm as i32) >> 2;
    let mask: u8 = if v < 0 {
        v = -v;
        0x7f
    } else {
        0xff
    };
    if v > CLIP {
        v = CLIP;
    }
    v += BIAS;
    // Segment: the first end point v fits under (0x3F, 0x7F, ... 0x1FFF).
    let mut seg = 0;
    while seg < 8 && v > (0x3f << seg) | ((1 << seg) - 1) {
        seg += 1;
    }
    if seg >= 8 {
        0x7f ^ mask
    } else {
        (((seg << 4) | ((v >> (seg + 1)) & 0x0f)) as u8) ^ mask
    }
}

/// 16-bit linear -> G.711 A-law byte.
#[must_use]
pub const fn linear_to_alaw(pcm: i16) -> u8 {
    let mut v = (pcm as i32) >> 3;
    let mask: u8 = if v >= 0 {
        0xd5
    } else {
        v = -v - 1;
        0x55
    };
    // Segment end points 0x1F, 0x3F, ... 0xFFF.
    let mut seg = 0;
    while seg < 8 && v > (0x1f << seg) | ((1 << seg) - 1) {
        seg += 1;
    }
    if seg >= 8 {
        return 0x7f ^ mask;
    }
    let mut a = seg << 4;
    a |= if seg < 2 { (v >> 1) & 0x0f } else { (v >> seg) & 0x0f };
    (a as u8) ^ mask
}

const fn table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw { alaw_to_linear(i as u8) } else { ulaw_to_linear(i as u8) };
        i += 1;
    }
    t
}

static ULAW_DECODE: [i16; 256] = table(false);
static ALAW_DECODE: [i16; 256] = table(true);

#[cfg(test)]
mod tests {
    use super::*;
    use SampleFormat as F;

    fn dec(format: SampleFormat, bytes: &[u8]) -> Vec<f32> {
        let n = bytes.len() / format.sample_bytes() as usize;
        let mut out = vec![f32::NAN; n];
        decoder(format)(bytes, &mut out);
        out
    }

    fn enc(format: SampleFormat, v: &[f32]) -> Vec<u8> {
        let mut out = vec![0xAA; v.len() * format.sample_bytes() as usize];
        encoder(format)(v, &mut out);
        out
    }

    fn round_trip(format: SampleFormat, bytes: &[u8]) -> Vec<u8> {
        enc(format, &dec(format, bytes))
    }

    /// Every bit pattern of the 1-byte formats, a spread of the wider ones.
    fn patterns(format: SampleFormat) -> Vec<u8> {
        let sb = format.sample_bytes() as usize;
        let mut out = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..4096u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = if i < 256 { i.wrapping_mul(0x0101_0101_0101_0101) } else { x };
            out.extend_from_slice(&v.to_le_bytes()[..sb]);
        }
        out
    }

    #[test]
    fn every_format_round_trips_bit_exact() {
        for f in SampleFormat::ALL {
            let mut bytes = patterns(f);
            let sb = f.sample_bytes() as usize;
            // Canonicalise what is not a value of the format: S24-in-32's ignored top byte, and
            // floats outside [-1, 1] / NaN (clamped by design).
            for c in bytes.chunks_exact_mut(sb) {
                match f {
                    F::S24Le => c[3] = if c[2] & 0x80 != 0 { 0xff } else { 0 },
                    F::S24Be => c[0] = if c[1] & 0x80 != 0 { 0xff } else { 0 },
                    F::F32Le => c.copy_from_slice(&(f32::from(c[0]) / 255.0 - 0.5).to_le_bytes()),
                    F::F32Be => c.copy_from_slice(&(f32::from(c[0]) / 255.0 - 0.5).to_be_bytes()),
                    F::F64Le => c.copy_from_slice(&(f64::from(c[0]) / 256.0 - 0.5).to_le_bytes()),
                    _ => {}
                }
            }
            if matches!(f, F::ALaw | F::MuLaw) {
                // Decode-encode is the identity except mu-law's two zeros (0x7f -> 0xff).
                let got = round_trip(f, &bytes);
                for (i, (g, b)) in got.iter().zip(&bytes).enumerate() {
                    let want = if f == F::MuLaw && *b == 0x7f { 0xff } else { *b };
                    assert_eq!(*g, want, "{f} byte {i}");
                }
                continue;
            }
            if f == F::S32Le || f == F::S32Be {
                // 24 significant bits: exact for values with 8 trailing zero bits.
                for c in bytes.chunks_exact_mut(4) {
                    if f == F::S32Le {
                        c[0] = 0;
                    } else {
                        c[3] = 0;
                    }
                }
            }
            assert_eq!(round_trip(f, &bytes), bytes, "{f}");
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(dec(F::U8, &[0, 128, 255]), vec![-1.0, 0.0, 127.0 / 128.0]);
        assert_eq!(dec(F::S16Be, &[0x80, 0x00, 0x40, 0x00]), vec![-1.0, 0.5]);
        assert_eq!(dec(F::S24_3Be, &[0xc0, 0, 0]), vec![-0.5]);
        assert_eq!(dec(F::S24Le, &0xAB80_0000u32.to_le_bytes()), vec![-1.0]);
        assert_eq!(dec(F::S32Be, &0x4000_0000u32.to_be_bytes()), vec![0.5]);
        assert_eq!(dec(F::F32Le, &f32::INFINITY.to_le_bytes()), vec![0.0]);
        assert_eq!(dec(F::F64Le, &f64::NAN.to_le_bytes()), vec![0.0]);
        assert_eq!(enc(F::U8, &[-1.0, 0.0, 0.999]), vec![0, 128, 255]);
    }

    #[test]
    fn g711_reference_values() {
        // ITU-T G.711 / Sun g711.c reference points.
        for (u, lin) in [(0xff, 0), (0x7f, 0), (0x80, 32124), (0x00, -32124), (0xfe, 8), (0xf0, 120), (0xef, 132)] {
            assert_eq!(ulaw_to_linear(u), lin, "ulaw {u:#x}");
        }
        for (a, lin) in [(0xd5, 8), (0x55, -8), (0xaa, 32256), (0x2a, -32256), (0xd4, 24), (0xc5, 264)] {
            assert_eq!(alaw_to_linear(a), lin, "alaw {a:#x}");
        }
        for (lin, u) in [(0, 0xff), (-1, 0x7e), (32767, 0x80), (-32768, 0x00), (8, 0xfe), (1000, 0xce)] {
            assert_eq!(linear_to_ulaw(lin), u, "ulaw of {lin}");
        }
        for (lin, a) in [(0, 0xd5), (-1, 0x55), (32767, 0xaa), (-32768, 0x2a), (8, 0xd5), (24, 0xd4), (1000, 0xfa)] {
            assert_eq!(linear_to_alaw(lin), a, "alaw of {lin}");
        }
        // Every code decodes then encodes to itself (mu-law's negative zero to positive zero).
        for b in 0..=255u8 {
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b);
            assert_eq!(linear_to_ulaw(ulaw_to_linear(b)), if b == 0x7f { 0xff } else { b });
        }
    }

    #[test]
    fn lossless_widening_is_exact() {
        // S16 into S32, S24 into S32, U8 into S16.
        let s16: Vec<u8> = [i16::MIN, -1, 0, 1, 12345, i16::MAX].iter().flat_map(|v| v.to_le_bytes()).collect();
        let got = enc(F::S32Le, &dec(F::S16Le, &s16));
        let want: Vec<u8> =
            [i16::MIN, -1, 0, 1, 12345, i16::MAX].iter().flat_map(|v| (i32::from(*v) << 16).to_le_bytes()).collect();
        assert_eq!(got, want);
        let s24 = [-(1 << 23), -1, 0, 1, 0x12_3456, (1 << 23) - 1];
        let b24: Vec<u8> = s24.iter().flat_map(|v: &i32| v.to_le_bytes()).collect();
        let want: Vec<u8> = s24.iter().flat_map(|v| (v << 8).to_le_bytes()).collect();
        assert_eq!(enc(F::S32Le, &dec(F::S24Le, &b24)), want);
        let u8s = [0u8, 1, 127, 128, 200, 255];
        let want: Vec<u8> = u8s.iter().flat_map(|v| ((i16::from(*v) - 128) << 8).to_le_bytes()).collect();
        assert_eq!(enc(F::S16Le, &dec(F::U8, &u8s)), want);
    }

    #[test]
    fn encoding_saturates_and_rounds_to_nearest() {
        let le16 = |b: Vec<u8>| b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>();
        assert_eq!(
            le16(enc(F::S16Le, &[1.5, -7.0, f32::NAN, 0.6 / 32768.0, -0.6 / 32768.0, 0.4 / 32768.0, 2.5 / 32768.0])),
            vec![i16::MAX, i16::MIN, 0, 1, -1, 0, 3]
        );
        assert_eq!(enc(F::S32Le, &[1.5]), i32::MAX.to_le_bytes());
        assert_eq!(enc(F::S32Be, &[-7.0]), i32::MIN.to_be_bytes());
        assert_eq!(enc(F::S24Le, &[2.0]), ((1 << 23) - 1i32).to_le_bytes());
        assert_eq!(enc(F::S24_3Le, &[-2.0]), [0, 0, 0x80]);
        assert_eq!(enc(F::U8, &[3.0, -3.0]), vec![255, 0]);
        let f = enc(F::F32Le, &[1.25, -3.0, f32::NAN]);
        let got: Vec<f32> = f.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(got, vec![1.0, -1.0, 0.0]);
        assert_eq!(enc(F::MuLaw, &[9.0]), vec![0x80]);
        assert_eq!(enc(F::ALaw, &[-9.0]), vec![0x2a]);
        // Near full scale S32: 2^31 - 128 is an f32 (and an integer).
        let v = (2_147_483_648.0f32 - 128.0) / 2_147_483_648.0;
        assert_eq!(enc(F::S32Le, &[v]), (i32::MAX - 127).to_le_bytes());
    }

    #[test]
    fn silence_per_format() {
        let mut b = [1u8; 4];
        silence(F::U8, &mut b);
        assert_eq!(b, [0x80; 4]);
        silence(F::S32Le, &mut b);
        assert_eq!(b, [0; 4]);
        for f in SampleFormat::ALL {
            let mut s = vec![1u8; f.sample_bytes() as usize * 3];
            silence(f, &mut s);
            // A-law has no zero code: its silence is the smallest positive step, 8 / 2^15.
            let tol = if f == F::ALaw { 8.0 / 32768.0 } else { 0.0 };
            assert!(dec(f, &s).iter().all(|v| v.abs() <= tol), "{f}");
        }
    }
}

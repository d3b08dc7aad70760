//! Sample conversion between interleaved device/stream bytes and the f64 mix bus.
//!
//! The bus holds samples normalised to [-1, 1): S16 `x / 2^15`, S24 (in 32) `x / 2^23` after sign
//! extension from bit 23, S32 `x / 2^31`, float as is. Every one of these is exact in an f64, and
//! so is the sum of up to 2^20 integer streams, so one stream round-trips bit for bit and several
//! give their exact sum, saturated on the way out (integers: round to nearest, clamp; float:
//! clamp to [-1, 1]; NaN becomes 0).
//! Runs on the mix thread. RT: yes (no allocation, no syscalls).

use shmix_shared::SampleFormat;

/// True when the bus can decode and encode `format`.
#[must_use]
pub fn is_supported(format: SampleFormat) -> bool {
    !matches!(format, SampleFormat::MuLaw | SampleFormat::ALaw)
}

const S16_SCALE: f64 = 32_768.0;
const S24_SCALE: f64 = 8_388_608.0;
const S32_SCALE: f64 = 2_147_483_648.0;

#[inline]
fn sext24(x: u32) -> i32 {
    ((x << 8) as i32) >> 8
}

#[inline]
fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Decodes one sample at the start of `b` (at least `sample_bytes` long) into bus units.
#[inline]
fn decode(format: SampleFormat, b: &[u8]) -> f64 {
    use SampleFormat as F;
    match format {
        F::U8 => (f64::from(b[0]) - 128.0) / 128.0,
        F::S16Le => f64::from(i16::from_le_bytes(arr(b))) / S16_SCALE,
        F::S16Be => f64::from(i16::from_be_bytes(arr(b))) / S16_SCALE,
        F::S24Le => f64::from(sext24(u32::from_le_bytes(arr(b)))) / S24_SCALE,
        F::S24Be => f64::from(sext24(u32::from_be_bytes(arr(b)))) / S24_SCALE,
        F::S24_3Le => f64::from(sext24(u32::from_le_bytes([b[0], b[1], b[2], 0]))) / S24_SCALE,
        F::S24_3Be => f64::from(sext24(u32::from_be_bytes([0, b[0], b[1], b[2]]))) / S24_SCALE,
        F::S32Le => f64::from(i32::from_le_bytes(arr(b))) / S32_SCALE,
        F::S32Be => f64::from(i32::from_be_bytes(arr(b))) / S32_SCALE,
        F::F32Le => f64::from(f32::from_le_bytes(arr(b))),
        F::F32Be => f64::from(f32::from_be_bytes(arr(b))),
        F::F64Le => f64::from_le_bytes(arr(b)),
        F::MuLaw | F::ALaw => 0.0,
    }
}

/// Rounds to nearest and clamps into `[min, max]` (NaN -> 0).
#[inline]
fn quantize(v: f64, scale: f64, min: f64, max: f64) -> f64 {
    let x = (v * scale).round();
    if x.is_nan() {
        0.0
    } else {
        x.clamp(min, max)
    }
}

#[inline]
fn clamp_unit(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(-1.0, 1.0)
    }
}

/// Encodes one bus sample into the start of `out`, saturating.
#[inline]
fn encode(format: SampleFormat, v: f64, out: &mut [u8]) {
    use SampleFormat as F;
    // The `as` casts below are exact: every value was rounded and clamped into the type's range.
    match format {
        F::U8 => out[0] = (quantize(v, 128.0, -128.0, 127.0) + 128.0) as u8,
        F::S16Le => out[..2].copy_from_slice(&(quantize(v, S16_SCALE, -32_768.0, 32_767.0) as i16).to_le_bytes()),
        F::S16Be => out[..2].copy_from_slice(&(quantize(v, S16_SCALE, -32_768.0, 32_767.0) as i16).to_be_bytes()),
        F::S24Le => {
            out[..4].copy_from_slice(&(quantize(v, S24_SCALE, -S24_SCALE, S24_SCALE - 1.0) as i32).to_le_bytes())
        }
        F::S24Be => {
            out[..4].copy_from_slice(&(quantize(v, S24_SCALE, -S24_SCALE, S24_SCALE - 1.0) as i32).to_be_bytes())
        }
        F::S24_3Le => {
            let b = (quantize(v, S24_SCALE, -S24_SCALE, S24_SCALE - 1.0) as i32).to_le_bytes();
            out[..3].copy_from_slice(&b[..3]);
        }
        F::S24_3Be => {
            let b = (quantize(v, S24_SCALE, -S24_SCALE, S24_SCALE - 1.0) as i32).to_be_bytes();
            out[..3].copy_from_slice(&b[1..]);
        }
        F::S32Le => {
            out[..4].copy_from_slice(&(quantize(v, S32_SCALE, -S32_SCALE, S32_SCALE - 1.0) as i32).to_le_bytes())
        }
        F::S32Be => {
            out[..4].copy_from_slice(&(quantize(v, S32_SCALE, -S32_SCALE, S32_SCALE - 1.0) as i32).to_be_bytes())
        }
        F::F32Le => out[..4].copy_from_slice(&(clamp_unit(v) as f32).to_le_bytes()),
        F::F32Be => out[..4].copy_from_slice(&(clamp_unit(v) as f32).to_be_bytes()),
        F::F64Le => out[..8].copy_from_slice(&clamp_unit(v).to_le_bytes()),
        F::MuLaw | F::ALaw => out[0] = 0,
    }
}

/// Adds the samples in `src` (interleaved, `format`) to `bus` sample by sample. `src` holds
/// `bus.len()` samples (shorter input adds only what is there).
pub fn accumulate(format: SampleFormat, src: &[u8], bus: &mut [f64]) {
    let sb = format.sample_bytes() as usize;
    // One match outside the loop so each loop body is specialised for its format.
    macro_rules! run {
        ($f:expr) => {
            for (acc, s) in bus.iter_mut().zip(src.chunks_exact(sb)) {
                *acc += decode($f, s);
            }
        };
    }
    use SampleFormat as F;
    match format {
        F::S16Le => run!(F::S16Le),
        F::S24Le => run!(F::S24Le),
        F::S32Le => run!(F::S32Le),
        F::F32Le => run!(F::F32Le),
        other => run!(other),
    }
}

/// Writes `bus` into `out` (interleaved, `format`), saturating. `out` holds `bus.len()` samples.
pub fn encode_bus(format: SampleFormat, bus: &[f64], out: &mut [u8]) {
    let sb = format.sample_bytes() as usize;
    macro_rules! run {
        ($f:expr) => {
            for (v, o) in bus.iter().zip(out.chunks_exact_mut(sb)) {
                encode($f, *v, o);
            }
        };
    }
    use SampleFormat as F;
    match format {
        F::S16Le => run!(F::S16Le),
        F::S24Le => run!(F::S24Le),
        F::S32Le => run!(F::S32Le),
        F::F32Le => run!(F::F32Le),
        other => run!(other),
    }
}

/// Fills `out` with silence in `format` (0x80 for U8, zero bytes otherwise).
pub fn silence(format: SampleFormat, out: &mut [u8]) {
    let byte = match format {
        SampleFormat::U8 => 0x80,
        SampleFormat::MuLaw => 0xff,
        SampleFormat::ALaw => 0x55,
        _ => 0,
    };
    out.fill(byte);
}

#[cfg(test)]
mod tests {
    use super::*;
    use SampleFormat as F;

    fn round_trip(format: SampleFormat, bytes: &[u8]) -> Vec<u8> {
        let n = bytes.len() / format.sample_bytes() as usize;
        let mut bus = vec![0.0; n];
        accumulate(format, bytes, &mut bus);
        let mut out = vec![0xAAu8; bytes.len()];
        encode_bus(format, &bus, &mut out);
        out
    }

    #[test]
    fn single_stream_is_bit_exact() {
        let s16: Vec<u8> = [i16::MIN, -1, 0, 1, 12345, i16::MAX].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(round_trip(F::S16Le, &s16), s16);
        let s32: Vec<u8> = [i32::MIN, -1, 0, 1, 0x1234_5678, i32::MAX].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(round_trip(F::S32Le, &s32), s32);
        let s24: Vec<u8> =
            [-(1 << 23), -1, 0, 1, 0x12_3456, (1 << 23) - 1].iter().flat_map(|v: &i32| v.to_le_bytes()).collect();
        assert_eq!(round_trip(F::S24Le, &s24), s24);
        let f32s: Vec<u8> =
            [-1.0f32, -0.5, 0.0, 1e-30, 0.123_456_79, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(round_trip(F::F32Le, &f32s), f32s);
        let s16be: Vec<u8> = [i16::MIN, 7, i16::MAX].iter().flat_map(|v| v.to_be_bytes()).collect();
        assert_eq!(round_trip(F::S16Be, &s16be), s16be);
        let u8s = vec![0u8, 1, 127, 128, 200, 255];
        assert_eq!(round_trip(F::U8, &u8s), u8s);
        let s24_3 = vec![0x00, 0x00, 0x80, 0xff, 0xff, 0x7f, 0x01, 0x02, 0x03];
        assert_eq!(round_trip(F::S24_3Le, &s24_3), s24_3);
    }

    #[test]
    fn sums_are_exact_and_saturate() {
        let a: Vec<u8> = [1000i16, 30000, -30000, i16::MIN].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = [-3i16, 30000, -30000, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut bus = vec![0.0; 4];
        accumulate(F::S16Le, &a, &mut bus);
        accumulate(F::S16Le, &b, &mut bus);
        let mut out = vec![0u8; 8];
        encode_bus(F::S16Le, &bus, &mut out);
        let got: Vec<i16> = out.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(got, vec![997, i16::MAX, i16::MIN, i16::MIN]);

        let mut out32 = vec![0u8; 8];
        encode_bus(F::S32Le, &[1.5, -7.0], &mut out32);
        assert_eq!(&out32[..4], &i32::MAX.to_le_bytes());
        assert_eq!(&out32[4..], &i32::MIN.to_le_bytes());
        let mut out24 = vec![0u8; 4];
        encode_bus(F::S24Le, &[2.0], &mut out24);
        assert_eq!(i32::from_le_bytes(out24.try_into().unwrap()), (1 << 23) - 1);
        let mut outf = vec![0u8; 12];
        encode_bus(F::F32Le, &[1.25, -3.0, f64::NAN], &mut outf);
        let got: Vec<f32> = outf.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(got, vec![1.0, -1.0, 0.0]);
    }

    #[test]
    fn s24_sign_extends_from_bit_23_ignoring_the_top_byte() {
        let mut bus = [0.0];
        accumulate(F::S24Le, &0xAB80_0000u32.to_le_bytes(), &mut bus);
        assert_eq!(bus[0], -1.0);
    }

    #[test]
    fn rounding_is_to_nearest() {
        let mut out = [0u8; 4];
        encode_bus(F::S16Le, &[0.6 / 32768.0, -0.6 / 32768.0], &mut out);
        assert_eq!(out, [1, 0, 0xff, 0xff]);
    }

    #[test]
    fn silence_per_format() {
        let mut b = [1u8; 4];
        silence(F::U8, &mut b);
        assert_eq!(b, [0x80; 4]);
        silence(F::S32Le, &mut b);
        assert_eq!(b, [0; 4]);
    }
}

//! Sample formats and signal analysis for the format tests: encoders and decoders for every
//! format a client may send or a card may record (G.711 A-law and mu-law as alsa-lib codes
//! them), a sine fit that recovers frequency, level and THD+N, a joint fit of several known
//! tones, and bit-exact comparison of integer codes.
#![allow(dead_code)]

use std::f64::consts::PI;

/// A PCM sample format (the `aplay -f` / vcard `format` name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    U8,
    S16Le,
    S16Be,
    S24Le,
    S24Be,
    S24_3Le,
    S24_3Be,
    S32Le,
    S32Be,
    F32Le,
    F32Be,
    F64Le,
    ALaw,
    MuLaw,
}

/// Every format a client may send (issue 3's list, and S24_BE, which the plugin offers too).
pub const CLIENT_FORMATS: [Fmt; 14] = [
    Fmt::U8,
    Fmt::S16Le,
    Fmt::S16Be,
    Fmt::S24Le,
    Fmt::S24Be,
    Fmt::S24_3Le,
    Fmt::S24_3Be,
    Fmt::S32Le,
    Fmt::S32Be,
    Fmt::F32Le,
    Fmt::F32Be,
    Fmt::F64Le,
    Fmt::ALaw,
    Fmt::MuLaw,
];

impl Fmt {
    /// The ALSA name.
    pub fn name(self) -> &'static str {
        match self {
            Fmt::U8 => "U8",
            Fmt::S16Le => "S16_LE",
            Fmt::S16Be => "S16_BE",
            Fmt::S24Le => "S24_LE",
            Fmt::S24Be => "S24_BE",
            Fmt::S24_3Le => "S24_3LE",
            Fmt::S24_3Be => "S24_3BE",
            Fmt::S32Le => "S32_LE",
            Fmt::S32Be => "S32_BE",
            Fmt::F32Le => "FLOAT_LE",
            Fmt::F32Be => "FLOAT_BE",
            Fmt::F64Le => "FLOAT64_LE",
            Fmt::ALaw => "A_LAW",
            Fmt::MuLaw => "MU_LAW",
        }
    }

    /// From the ALSA name.
    pub fn from_name(name: &str) -> Fmt {
        *CLIENT_FORMATS.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("unknown format {name}"))
    }

    /// Bytes per sample.
    pub fn bytes(self) -> usize {
        match self {
            Fmt::U8 | Fmt::ALaw | Fmt::MuLaw => 1,
            Fmt::S16Le | Fmt::S16Be => 2,
            Fmt::S24_3Le | Fmt::S24_3Be => 3,
            Fmt::S24Le | Fmt::S24Be | Fmt::S32Le | Fmt::S32Be | Fmt::F32Le | Fmt::F32Be => 4,
            Fmt::F64Le => 8,
        }
    }

    /// Effective resolution in bits (for quantisation noise): the integer width, the float
    /// mantissa, 8 for U8 (G.711 is companded: use [`quantisation_floor`] instead).
    pub fn bits(self) -> u32 {
        match self {
            Fmt::U8 | Fmt::ALaw | Fmt::MuLaw => 8,
            Fmt::S16Le | Fmt::S16Be => 16,
            Fmt::S24Le | Fmt::S24Be | Fmt::S24_3Le | Fmt::S24_3Be => 24,
            Fmt::S32Le | Fmt::S32Be => 32,
            Fmt::F32Le | Fmt::F32Be => 24,
            Fmt::F64Le => 53,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Fmt::F32Le | Fmt::F32Be | Fmt::F64Le)
    }

    /// Full-scale of the integer code (`code / scale` is the sample in [-1, 1)); 1 for floats.
    pub fn scale(self) -> f64 {
        match self {
            Fmt::U8 => 128.0,
            Fmt::S16Le | Fmt::S16Be | Fmt::ALaw | Fmt::MuLaw => 32768.0,
            Fmt::S24Le | Fmt::S24Be | Fmt::S24_3Le | Fmt::S24_3Be => 8_388_608.0,
            Fmt::S32Le | Fmt::S32Be => 2_147_483_648.0,
            Fmt::F32Le | Fmt::F32Be | Fmt::F64Le => 1.0,
        }
    }

    /// Appends the integer code `c` (signed; U8 is `c + 128`; G.711 takes a 16-bit linear value
    /// and compands it; floats take `c / scale`... use [`Fmt::encode`] for those).
    pub fn push_code(self, out: &mut Vec<u8>, c: i64) {
        match self {
            Fmt::U8 => out.push((c.clamp(-128, 127) + 128) as u8),
            Fmt::S16Le => out.extend_from_slice(&(c.clamp(-32768, 32767) as i16).to_le_bytes()),
            Fmt::S16Be => out.extend_from_slice(&(c.clamp(-32768, 32767) as i16).to_be_bytes()),
            Fmt::S24Le => out.extend_from_slice(&(c.clamp(-(1 << 23), (1 << 23) - 1) as i32).to_le_bytes()),
            Fmt::S24Be => out.extend_from_slice(&(c.clamp(-(1 << 23), (1 << 23) - 1) as i32).to_be_bytes()),
            Fmt::S24_3Le => out.extend_from_slice(&(c.clamp(-(1 << 23), (1 << 23) - 1) as i32).to_le_bytes()[..3]),
            Fmt::S24_3Be => out.extend_from_slice(&(c.clamp(-(1 << 23), (1 << 23) - 1) as i32).to_be_bytes()[1..]),
            Fmt::S32Le => out.extend_from_slice(&(c.clamp(i32::MIN.into(), i32::MAX.into()) as i32).to_le_bytes()),
            Fmt::S32Be => out.extend_from_slice(&(c.clamp(i32::MIN.into(), i32::MAX.into()) as i32).to_be_bytes()),
            Fmt::ALaw => out.push(s16_to_alaw(c.clamp(-32768, 32767) as i16)),
            Fmt::MuLaw => out.push(s16_to_ulaw(c.clamp(-32768, 32767) as i16)),
            Fmt::F32Le | Fmt::F32Be | Fmt::F64Le => self.encode(out, c as f64 / self.scale()),
        }
    }

    /// Appends sample `x` (full scale +-1): integers rounded to nearest and clamped.
    pub fn encode(self, out: &mut Vec<u8>, x: f64) {
        match self {
            Fmt::F32Le => out.extend_from_slice(&(x as f32).to_le_bytes()),
            Fmt::F32Be => out.extend_from_slice(&(x as f32).to_be_bytes()),
            Fmt::F64Le => out.extend_from_slice(&x.to_le_bytes()),
            _ => self.push_code(out, (x * self.scale()).round() as i64),
        }
    }

    /// The integer code of the sample at the start of `b`: signed integer value (U8 minus 128,
    /// G.711 decoded to 16-bit linear), or the IEEE bit pattern for floats.
    pub fn code(self, b: &[u8]) -> i64 {
        match self {
            Fmt::U8 => i64::from(b[0]) - 128,
            Fmt::S16Le => i16::from_le_bytes([b[0], b[1]]).into(),
            Fmt::S16Be => i16::from_be_bytes([b[0], b[1]]).into(),
            Fmt::S24Le => (i32::from_le_bytes([b[0], b[1], b[2], b[3]]) << 8 >> 8).into(),
            Fmt::S24Be => (i32::from_be_bytes([b[0], b[1], b[2], b[3]]) << 8 >> 8).into(),
            Fmt::S24_3Le => (i32::from_le_bytes([b[0], b[1], b[2], 0]) << 8 >> 8).into(),
            Fmt::S24_3Be => (i32::from_be_bytes([b[0], b[1], b[2], 0]) >> 8).into(),
            Fmt::S32Le => i32::from_le_bytes([b[0], b[1], b[2], b[3]]).into(),
            Fmt::S32Be => i32::from_be_bytes([b[0], b[1], b[2], b[3]]).into(),
            Fmt::F32Le => u32::from_le_bytes([b[0], b[1], b[2], b[3]]).into(),
            Fmt::F32Be => u32::from_be_bytes([b[0], b[1], b[2], b[3]]).into(),
            Fmt::F64Le => u64::from_le_bytes(b[..8].try_into().unwrap()) as i64,
            Fmt::ALaw => alaw_to_s16(b[0]).into(),
            Fmt::MuLaw => ulaw_to_s16(b[0]).into(),
        }
    }

    /// The sample at the start of `b` as a value in [-1, 1] (floats as they are).
    pub fn decode(self, b: &[u8]) -> f64 {
        match self {
            Fmt::F32Le => f32::from_bits(self.code(b) as u32).into(),
            Fmt::F32Be => f32::from_bits(self.code(b) as u32).into(),
            Fmt::F64Le => f64::from_bits(self.code(b) as u64),
            _ => self.code(b) as f64 / self.scale(),
        }
    }
}

/// Interleaved bytes of `channels` channels -> one vector of values per channel. A trailing
/// partial frame is ignored.
pub fn decode_channels(bytes: &[u8], fmt: Fmt, channels: usize) -> Vec<Vec<f64>> {
    let frame = fmt.bytes() * channels;
    let n = bytes.len() / frame;
    let mut out = vec![Vec::with_capacity(n); channels];
    for f in bytes.chunks_exact(frame) {
        for (c, o) in out.iter_mut().enumerate() {
            o.push(fmt.decode(&f[c * fmt.bytes()..]));
        }
    }
    out
}

/// Interleaved bytes -> the integer codes, interleaved.
pub fn decode_codes(bytes: &[u8], fmt: Fmt) -> Vec<i64> {
    bytes.chunks_exact(fmt.bytes()).map(|b| fmt.code(b)).collect()
}

// ----- G.711, as alsa-lib's pcm_alaw.c / pcm_mulaw.c (Sun's reference coder) ---------------------

fn val_seg(val: i32) -> i32 {
    let mut r = 0;
    let mut v = val >> 7;
    if v & 0xf0 != 0 {
        v >>= 4;
        r += 4;
    }
    if v & 0x0c != 0 {
        v >>= 2;
        r += 2;
    }
    if v & 0x02 != 0 {
        r += 1;
    }
    r
}

/// 16-bit linear -> A-law.
pub fn s16_to_alaw(pcm: i16) -> u8 {
    let mut v = i32::from(pcm);
    let mask = if v >= 0 {
        0xD5
    } else {
        v = (-v).min(0x7fff);
        0x55
    };
    let a = if v < 256 {
        v >> 4
    } else {
        let seg = val_seg(v);
        (seg << 4) | ((v >> (seg + 3)) & 0x0f)
    };
    (a as u8) ^ mask
}

/// A-law -> 16-bit linear.
pub fn alaw_to_s16(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = i32::from(a & 0x7f);
    if t < 16 {
        t = (t << 4) + 8;
    } else {
        let seg = (t >> 4) & 0x07;
        t = (((t & 0x0f) << 4) + 0x108) << (seg - 1);
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// 16-bit linear -> mu-law.
pub fn s16_to_ulaw(pcm: i16) -> u8 {
    let v = i32::from(pcm);
    let (v, mask) = if v < 0 { (0x84 - v, 0x7F) } else { (v + 0x84, 0xFF) };
    let v = v.min(0x7fff);
    let seg = val_seg(v);
    (((seg << 4) | ((v >> (seg + 3)) & 0x0f)) as u8) ^ mask
}

/// mu-law -> 16-bit linear.
pub fn ulaw_to_s16(u: u8) -> i16 {
    let u = !u;
    let t = ((i32::from(u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

// ----- signal generation ------------------------------------------------------------------------

/// Interleaved bytes of a sine per channel: `tones[c]` is `(frequency, amplitude)` or `None`
/// for a silent channel; `frames` frames at `rate`, starting at phase 0 (cosine: full amplitude
/// from the first frame, so the start is easy to find).
pub fn tone_bytes(fmt: Fmt, rate: u32, frames: usize, tones: &[Option<(f64, f64)>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames * tones.len() * fmt.bytes());
    for i in 0..frames {
        for t in tones {
            let x = t.map_or(0.0, |(f, a)| a * (2.0 * PI * f * i as f64 / f64::from(rate)).cos());
            fmt.encode(&mut out, x);
        }
    }
    out
}

/// Deterministic 64-bit xorshift.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A uniform code in [-(2^(bits-1)), 2^(bits-1)), never 0.
    pub fn code(&mut self, bits: u32) -> i64 {
        loop {
            let v = (self.next() >> (64 - bits)) as i64 - (1i64 << (bits - 1));
            if v != 0 {
                return v;
            }
        }
    }
}

// ----- analysis -----------------------------------------------------------------------------------

/// Frames `[start, end)` from the first to the last frame where some channel exceeds `thresh`.
pub fn active_region(chans: &[Vec<f64>], thresh: f64) -> Option<(usize, usize)> {
    let n = chans.iter().map(Vec::len).min().unwrap_or(0);
    let loud = |i: usize| chans.iter().any(|c| c[i].abs() > thresh);
    let start = (0..n).find(|&i| loud(i))?;
    let end = (0..n).rev().find(|&i| loud(i))? + 1;
    Some((start, end))
}

/// Solves `a x = b` (n x n, row-major) by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let p = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs())).unwrap();
        if p != col {
            for k in 0..n {
                a.swap(col * n + k, p * n + k);
            }
            b.swap(col, p);
        }
        let d = a[col * n + col];
        if d == 0.0 {
            continue;
        }
        for r in col + 1..n {
            let f = a[r * n + col] / d;
            if f != 0.0 {
                for k in col..n {
                    a[r * n + k] -= f * a[col * n + k];
                }
                b[r] -= f * b[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r * n + k] * x[k]).sum();
        let d = a[r * n + r];
        x[r] = if d == 0.0 { 0.0 } else { (b[r] - s) / d };
    }
    x
}

/// Least squares: `x ~ sum_k p_k * col_k(i)` over `n` points, columns given by `cols(i, &mut row)`.
fn least_squares(x: &[f64], k: usize, mut cols: impl FnMut(usize, &mut [f64])) -> Vec<f64> {
    let mut ata = vec![0.0; k * k];
    let mut atb = vec![0.0; k];
    let mut row = vec![0.0; k];
    for (i, v) in x.iter().enumerate() {
        cols(i, &mut row);
        for r in 0..k {
            atb[r] += row[r] * v;
            for c in r..k {
                ata[r * k + c] += row[r] * row[c];
            }
        }
    }
    for r in 0..k {
        for c in 0..r {
            ata[r * k + c] = ata[c * k + r];
        }
    }
    solve(ata, atb)
}

/// Time of sample `i` of `n`, centred (better conditioned fits).
fn t_of(i: usize, n: usize, rate: f64) -> f64 {
    (i as f64 - n as f64 / 2.0) / rate
}

/// `(t, sin, cos)` of `2 pi freq t` for the centred times of `n` samples, by rotation (cheap
/// and accurate to ~1e-12 over a million samples).
fn osc(freq: f64, rate: f64, n: usize) -> impl Iterator<Item = (f64, f64, f64)> {
    let w = 2.0 * PI * freq;
    let (ds, dc) = (w / rate).sin_cos();
    let t0 = t_of(0, n, rate);
    let (mut s, mut c) = (w * t0).sin_cos();
    (0..n).map(move |i| {
        let out = (t_of(i, n, rate), s, c);
        // Re-anchor now and then so rounding cannot accumulate.
        if i % 4096 == 4095 {
            (s, c) = (w * t_of(i + 1, n, rate)).sin_cos();
        } else {
            (s, c) = (s * dc + c * ds, c * dc - s * ds);
        }
        out
    })
}

/// Three-parameter fit at `freq`: (a, b, dc) of `a cos + b sin + dc`, and the residual energy.
fn fit3(x: &[f64], rate: f64, freq: f64) -> ([f64; 3], f64) {
    let n = x.len();
    let (mut cc, mut cs, mut c1, mut ss, mut s1) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut xc, mut xs, mut x1, mut xx) = (0.0, 0.0, 0.0, 0.0);
    for ((_, s, c), v) in osc(freq, rate, n).zip(x) {
        cc += c * c;
        cs += c * s;
        c1 += c;
        ss += s * s;
        s1 += s;
        xc += v * c;
        xs += v * s;
        x1 += v;
        xx += v * v;
    }
    let ata = vec![cc, cs, c1, cs, ss, s1, c1, s1, n as f64];
    let p = solve(ata, vec![xc, xs, x1]);
    // Residual energy from the normal equations: |x|^2 - p . A^T x.
    let res = (xx - (p[0] * xc + p[1] * xs + p[2] * x1)).max(0.0);
    ([p[0], p[1], p[2]], res)
}

/// What a sine fit recovered from a window.
#[derive(Debug, Clone, Copy)]
pub struct Tone {
    /// Hz.
    pub freq: f64,
    /// Peak amplitude (full scale 1).
    pub amp: f64,
    /// `20 log10(amp)`: dBFS of the peak (a full-scale sine is 0 dBFS).
    pub level_db: f64,
    /// Everything but the fitted sine (DC included), relative to it, dB.
    pub thdn_db: f64,
    /// DC offset.
    pub dc: f64,
}

/// Frequency from upward zero crossings (interpolated), after removing the mean.
fn crossing_freq(x: &[f64], rate: f64) -> Option<f64> {
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    let mut first = None;
    let mut last = 0.0;
    let mut count = 0usize;
    for i in 1..x.len() {
        let (a, b) = (x[i - 1] - mean, x[i] - mean);
        if a < 0.0 && b >= 0.0 {
            let t = (i - 1) as f64 + a / (a - b);
            if first.is_none() {
                first = Some(t);
            }
            last = t;
            count += 1;
        }
    }
    let first = first?;
    (count >= 2 && last > first).then(|| (count - 1) as f64 * rate / (last - first))
}

/// Fits one sine (IEEE 1057 four-parameter fit) to `x` at `rate`: frequency found blind (zero
/// crossings, a grid refinement, then Gauss-Newton), amplitude, DC and THD+N.
pub fn fit_tone(x: &[f64], rate: f64) -> Tone {
    let n = x.len();
    let secs = n as f64 / rate;
    let f0 = crossing_freq(x, rate).unwrap_or(1.0 / secs);
    // Grid over +-1 bin in quarter bins: lands within the Gauss-Newton basin.
    let mut best = (f0, f64::INFINITY);
    for k in -4..=4 {
        let f = f0 + f64::from(k) * 0.25 / secs;
        if f <= 0.0 {
            continue;
        }
        let (_, r) = fit3(x, rate, f);
        if r < best.1 {
            best = (f, r);
        }
    }
    let mut f = best.0;
    for _ in 0..12 {
        let ([a, b, _], _) = fit3(x, rate, f);
        let p = least_squares_iter(x, osc(f, rate, n).map(|(t, s, c)| [c, s, 1.0, t * (-a * s + b * c)]));
        let df = p[3] / (2.0 * PI);
        f += df.clamp(-0.5 / secs, 0.5 / secs);
        if df.abs() < 1e-9 {
            break;
        }
    }
    let ([a, b, dc], _) = fit3(x, rate, f);
    let (mut sig, mut noise) = (0.0, 0.0);
    for ((_, s, c), v) in osc(f, rate, n).zip(x) {
        let fund = a * c + b * s;
        sig += fund * fund;
        noise += (v - fund) * (v - fund);
    }
    let amp = a.hypot(b);
    Tone { freq: f, amp, level_db: db20(amp), thdn_db: db10(noise / sig.max(1e-300)), dc }
}

/// Least squares with four columns given per sample.
fn least_squares_iter(x: &[f64], rows: impl Iterator<Item = [f64; 4]>) -> Vec<f64> {
    let mut ata = vec![0.0; 16];
    let mut atb = vec![0.0; 4];
    for (row, v) in rows.zip(x) {
        for r in 0..4 {
            atb[r] += row[r] * v;
            for c in r..4 {
                ata[r * 4 + c] += row[r] * row[c];
            }
        }
    }
    for r in 0..4 {
        for c in 0..r {
            ata[r * 4 + c] = ata[c * 4 + r];
        }
    }
    solve(ata, atb)
}

/// Amplitudes of sines at the known `freqs` in `x`, fitted jointly (with DC), and the residual's
/// RMS.
pub fn fit_tones(x: &[f64], rate: f64, freqs: &[f64]) -> (Vec<f64>, f64) {
    let n = x.len();
    let k = 2 * freqs.len() + 1;
    let p = least_squares(x, k, |i, row| {
        let t = t_of(i, n, rate);
        for (j, f) in freqs.iter().enumerate() {
            let (s, c) = (2.0 * PI * f * t).sin_cos();
            row[2 * j] = c;
            row[2 * j + 1] = s;
        }
        row[k - 1] = 1.0;
    });
    let mut res = 0.0;
    for (i, v) in x.iter().enumerate() {
        let t = t_of(i, n, rate);
        let mut m = p[k - 1];
        for (j, f) in freqs.iter().enumerate() {
            let (s, c) = (2.0 * PI * f * t).sin_cos();
            m += p[2 * j] * c + p[2 * j + 1] * s;
        }
        res += (v - m) * (v - m);
    }
    let amps = (0..freqs.len()).map(|j| p[2 * j].hypot(p[2 * j + 1])).collect();
    (amps, (res / n as f64).sqrt())
}

/// RMS of `x`.
pub fn rms(x: &[f64]) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Peak absolute value of `x`.
pub fn peak(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

pub fn db20(x: f64) -> f64 {
    20.0 * x.max(1e-300).log10()
}

pub fn db10(x: f64) -> f64 {
    10.0 * x.max(1e-300).log10()
}

/// Where `expected` (interleaved codes, never a frame of all zeros at its ends) lies in
/// `recorded`: it must be there contiguous, every code within `tol` of the expected one (0:
/// bit-exact), with only zeros around it. Returns the first frame of the sound and the largest
/// difference, or a description of the first difference beyond `tol`.
pub fn find_contiguous(recorded: &[i64], expected: &[i64], frame: usize, tol: i64) -> Result<(usize, i64), String> {
    let Some(start_frame) = recorded.chunks_exact(frame).position(|f| f.iter().any(|s| *s != 0)) else {
        return Err(format!("the card recorded only silence ({} frames)", recorded.len() / frame));
    };
    let start = start_frame * frame;
    let end = start + expected.len();
    if end > recorded.len() {
        return Err(format!(
            "recording too short: sound starts at frame {start_frame}, needs {} frames, has {}",
            expected.len() / frame,
            (recorded.len() - start) / frame
        ));
    }
    let bad = |i: &usize| (recorded[start + i] - expected[*i]).abs() > tol;
    if let Some(i) = (0..expected.len()).find(bad) {
        let diffs = (0..expected.len()).filter(bad).count();
        return Err(format!(
            "{diffs} of {} samples differ; first at frame {} of the sound (recorded {:?}, expected {:?}; sound starts \
             at frame {start_frame})",
            expected.len(),
            i / frame,
            &recorded[start + i..(start + i + 6).min(recorded.len())],
            &expected[i..(i + 6).min(expected.len())]
        ));
    }
    if let Some(i) = recorded[end..].iter().position(|s| *s != 0) {
        return Err(format!("non-silence {} frames after the sound's end", i / frame));
    }
    let max = (0..expected.len()).map(|i| (recorded[start + i] - expected[i]).abs()).max().unwrap_or(0);
    Ok((start_frame, max))
}

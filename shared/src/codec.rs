//! The little-endian field reader and writers both wire codecs (`msg`, `control`) build on.
//! Every read is bounds-checked and names the field it was reading when it fails.

use crate::error::DecodeError;

/// Reads fields off the front of a received packet.
pub(crate) struct Reader<'a> {
    /// What is left to read.
    pub(crate) buf: &'a [u8],
}

impl Reader<'_> {
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let (head, rest) = self.buf.split_first_chunk::<4>().ok_or(DecodeError::Truncated(field))?;
        self.buf = rest;
        Ok(u32::from_le_bytes(*head))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let (head, rest) = self.buf.split_first_chunk::<8>().ok_or(DecodeError::Truncated(field))?;
        self.buf = rest;
        Ok(u64::from_le_bytes(*head))
    }

    /// 0 or 1, nothing else.
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u32(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadField(field, u64::from(v))),
        }
    }

    /// A finite float in `lo..=hi`.
    pub(crate) fn f32(&mut self, field: &'static str, lo: f32, hi: f32) -> Result<f32, DecodeError> {
        let bits = self.u32(field)?;
        let v = f32::from_bits(bits);
        if !v.is_finite() || v < lo || v > hi {
            return Err(DecodeError::BadField(field, u64::from(bits)));
        }
        Ok(v)
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub(crate) fn string(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::BadField(field, len as u64));
        }
        if self.buf.len() < len {
            return Err(DecodeError::Truncated(field));
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError::BadField(field, len as u64))
    }

    /// `len` bytes into an `N`-byte array, zero-padded.
    pub(crate) fn bytes_padded<const N: usize>(
        &mut self,
        field: &'static str,
        len: usize,
    ) -> Result<[u8; N], DecodeError> {
        if len > N || self.buf.len() < len {
            return Err(DecodeError::Truncated(field));
        }
        let mut out = [0u8; N];
        out[..len].copy_from_slice(&self.buf[..len]);
        self.buf = &self.buf[len..];
        Ok(out)
    }

    /// Nothing may follow the last field.
    pub(crate) fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_f32(out: &mut Vec<u8>, v: f32) {
    put_u32(out, v.to_bits());
}

/// A length-prefixed string, cut at a char boundary at `max` bytes so the peer's UTF-8 check
/// passes.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str, max: usize) {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_u32(out, end as u32);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

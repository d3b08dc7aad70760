//! Error types of the contract. `Violation` is what a peer did wrong in shared memory or on the
//! socket: it is `Copy` and allocation-free so the real-time thread can return it.
//! Runs in both processes. RT: yes.

use std::fmt;

/// A protocol violation by the peer: logged once with its reason, then the peer is disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// What was wrong, as a short static phrase ("audio fill beyond ring", "bad magic").
    pub what: &'static str,
    /// The offending value (a position, an offset, a tag...).
    pub value: u64,
    /// The limit it broke (capacity, expected size...), or 0 when there is none.
    pub limit: u64,
}

impl Violation {
    /// A violation with the value that broke it and the limit it broke.
    #[must_use]
    pub const fn new(what: &'static str, value: u64, limit: u64) -> Self {
        Self { what, value, limit }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (value {}, limit {})", self.what, self.value, self.limit)
    }
}

impl std::error::Error for Violation {}

/// A socket message that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet ended before the field named here.
    Truncated(&'static str),
    /// Unknown message tag.
    UnknownTag(u32),
    /// A field has a value outside its range.
    BadField(&'static str, u64),
    /// Bytes left over after the message.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated(field) => write!(f, "message truncated before field '{field}'"),
            Self::UnknownTag(t) => write!(f, "unknown message tag {t}"),
            Self::BadField(field, v) => write!(f, "field '{field}' has bad value {v}"),
            Self::TrailingBytes(n) => write!(f, "{n} trailing bytes after message"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for Violation {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Truncated(w) => Violation::new(w, 0, 0),
            DecodeError::UnknownTag(t) => Violation::new("unknown message tag", u64::from(t), 0),
            DecodeError::BadField(w, v) => Violation::new(w, v, 0),
            DecodeError::TrailingBytes(n) => Violation::new("trailing bytes", n as u64, 0),
        }
    }
}

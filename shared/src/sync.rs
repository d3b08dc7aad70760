//! Atomics shim: `loom` under `cfg(loom)`, else std (tokio's `src/loom/mod.rs` pattern).
//! Runs in both processes. RT: yes (only atomics).

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

//! The sleeping-flag wake protocol (PulseAudio `fdsem.c`, learned from, not copied): a side that is
//! about to wait sets its `sleeping` flag, fences, rechecks; the other side, after publishing
//! progress, fences and signals the wake descriptor (`wakefd`) only if it swaps the flag from set. Both fences are
//! SeqCst (a Dekker pair): without them the store of one side and the load of the other may pass
//! each other and a wakeup is lost (the loom test in `tests/loom.rs` finds it).
//! Runs in both processes. RT: yes.

use crate::sync::{fence, AtomicU32, Ordering};

/// What the sleeper should do after [`prepare_sleep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepDecision {
    /// Still not ready and the flag is set: wait on the wake descriptor; the peer signals it when it
    /// makes progress.
    Sleep,
    /// Became ready during the recheck. `peer_signals` is true when the peer already took the
    /// flag and will signal (or has signalled) the wake descriptor; false when we took it back ourselves.
    Ready {
        /// Whether the peer will signal for this sleep.
        peer_signals: bool,
    },
}

/// Sleeper side: call when `ready()` was false and the caller wants to wait.
/// Pairs with the fence in [`wake_if_sleeping`].
pub fn prepare_sleep(sleeping: &AtomicU32, ready: impl Fn() -> bool) -> SleepDecision {
    sleeping.store(1, Ordering::Relaxed);
    // Orders the flag store before the recheck's cursor load (pairs with the waker's fence).
    fence(Ordering::SeqCst);
    if ready() {
        let peer_signals = sleeping.swap(0, Ordering::Relaxed) == 0;
        SleepDecision::Ready { peer_signals }
    } else {
        SleepDecision::Sleep
    }
}

/// Waker side: call after publishing progress (a cursor store with Release). Returns true when
/// the peer was asleep and the caller must signal its wake descriptor; the flag is cleared in that case so
/// exactly one write happens per sleep.
pub fn wake_if_sleeping(sleeping: &AtomicU32) -> bool {
    // Orders the cursor store before the flag load (pairs with the sleeper's fence).
    fence(Ordering::SeqCst);
    sleeping.load(Ordering::Relaxed) != 0 && sleeping.swap(0, Ordering::Relaxed) != 0
}

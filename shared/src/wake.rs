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

/// What the sleeper's side does to its own wake descriptor: make it readable (the sleeper
/// signals itself when it is ready without the peer) or not (drain it when it stops being
/// ready). The plugin's [`crate::wakefd::WakeFd`] pair; a counter in the loom model.
pub trait WakeSignal {
    /// Makes the descriptor readable.
    fn signal(&self);
    /// Makes it not readable (takes every pending wake).
    fn drain(&self);
}

/// The sleeper's side of the protocol, kept as a readiness mirror: a program polls the wake
/// descriptor directly, so it must be readable exactly while the sleeper is ready, with a syscall
/// only when that changes. Tracks whether the sleeper armed its `sleeping` flag and whether the
/// descriptor holds a wake (its own or the peer's). Single-threaded: the owner serialises calls.
#[derive(Debug, Default)]
pub struct Sleeper {
    /// We set `sleeping` and have not looked at it since.
    armed: bool,
    /// We believe the descriptor holds a wake.
    signalled: bool,
}

impl Sleeper {
    /// Forgets everything (a new stream): drains the descriptor.
    pub fn reset(&mut self, fd: &impl WakeSignal) {
        fd.drain();
        *self = Self::default();
    }

    /// Whether the flag is armed (the sleeper relies on the peer to signal).
    #[must_use]
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// poll said the descriptor is readable while armed: a late signal of the peer for an
    /// earlier sleep. Believe poll, so the next [`Self::sync`] drains it instead of letting the
    /// program spin in poll until the peer's next wake.
    #[inline]
    pub fn note_readable(&mut self) {
        if self.armed {
            self.signalled = true;
        }
    }

    /// Makes the descriptor readable now, if it is not (to wake a waiter in another thread).
    #[inline]
    pub fn signal_self(&mut self, fd: &impl WakeSignal) {
        if !self.signalled {
            fd.signal();
            self.signalled = true;
        }
    }

    /// Makes the descriptor mirror `want` (the sleeper's readiness now). When it is not ready
    /// and `may_sleep`, arms `sleeping` and rechecks with `ready` (a fresh look at the peer's
    /// cursors), exactly as [`prepare_sleep`]. Pairs with the peer's [`wake_if_sleeping`].
    #[inline]
    pub fn sync(
        &mut self,
        sleeping: &AtomicU32,
        want: bool,
        may_sleep: bool,
        ready: impl Fn() -> bool,
        fd: &impl WakeSignal,
    ) {
        if self.armed {
            if want {
                // Take the flag back; if the peer already took it, it signals (or signalled).
                let we_took_it = sleeping.swap(0, Ordering::Relaxed) == 1;
                self.armed = false;
                self.signalled = !we_took_it;
            } else if sleeping.load(Ordering::Relaxed) == 1 {
                if self.signalled {
                    // We signalled it ourselves meanwhile (woke a waiter): take it back.
                    fd.drain();
                    self.signalled = false;
                }
                return; // still waiting, descriptor drained: the steady state costs nothing
            } else {
                self.armed = false;
                self.signalled = true;
            }
        }
        if want {
            self.signal_self(fd);
            return;
        }
        if self.signalled {
            fd.drain(); // nothing there when the peer has not signalled yet: fine
            self.signalled = false;
        }
        if !may_sleep {
            return;
        }
        match prepare_sleep(sleeping, ready) {
            SleepDecision::Sleep => self.armed = true,
            SleepDecision::Ready { peer_signals: true } => self.signalled = true,
            SleepDecision::Ready { peer_signals: false } => {
                fd.signal();
                self.signalled = true;
            }
        }
    }

    /// For a bounded wait on the peer's next record: arms `sleeping` unless `ready` (something
    /// is already there). Returns true when the caller should wait on the descriptor.
    #[inline]
    pub fn arm(&mut self, sleeping: &AtomicU32, ready: impl Fn() -> bool, fd: &impl WakeSignal) -> bool {
        if self.armed && sleeping.load(Ordering::Relaxed) == 1 {
            return true;
        }
        if self.armed {
            self.armed = false;
            self.signalled = true;
            return false;
        }
        fd.drain();
        self.signalled = false;
        match prepare_sleep(sleeping, ready) {
            SleepDecision::Sleep => {
                self.armed = true;
                true
            }
            SleepDecision::Ready { peer_signals } => {
                self.signalled = peer_signals;
                false
            }
        }
    }
}

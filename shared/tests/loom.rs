//! Loom model of the wake protocol: whatever the interleaving, a sleeper that decides to wait
//! is woken exactly once, and a sleeper that sees progress is never left without a signal.
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p shmix-shared --release --test loom`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::Arc;
use shmix_shared::wake::{prepare_sleep, wake_if_sleeping, SleepDecision};

struct Shared {
    pos: AtomicU32,
    sleeping: AtomicU32,
    eventfd: AtomicU32,
}

#[test]
fn no_wakeup_is_lost() {
    loom::model(|| {
        let s = Arc::new(Shared { pos: AtomicU32::new(0), sleeping: AtomicU32::new(0), eventfd: AtomicU32::new(0) });
        let waker = {
            let s = s.clone();
            loom::thread::spawn(move || {
                s.pos.store(1, Ordering::Release);
                if wake_if_sleeping(&s.sleeping) {
                    s.eventfd.fetch_add(1, Ordering::Release);
                }
            })
        };
        // Sleeper: it found no progress (pos == 0) and wants to wait.
        let decision = prepare_sleep(&s.sleeping, || s.pos.load(Ordering::Acquire) != 0);
        waker.join().unwrap();
        let signals = s.eventfd.load(Ordering::Acquire);
        match decision {
            SleepDecision::Sleep => assert_eq!(signals, 1, "sleeper waits but was never signalled"),
            SleepDecision::Ready { peer_signals: true } => assert_eq!(signals, 1),
            SleepDecision::Ready { peer_signals: false } => assert_eq!(signals, 0),
        }
        assert_eq!(s.sleeping.load(Ordering::Relaxed), 0, "flag left set after the wake");
    });
}

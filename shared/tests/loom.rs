//! Loom model of the wake protocol: whatever the interleaving, a sleeper that decides to wait
//! is woken exactly once, and a sleeper that sees progress is never left without a signal.
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p shmix-shared --release --test loom`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::Arc;
use shmix_shared::wake::{prepare_sleep, wake_if_sleeping, SleepDecision, Sleeper, WakeSignal};

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

/// The sleeper's wake descriptor in the model: pending wakes (a socket's queue).
struct Descriptor(AtomicU32);

impl WakeSignal for Descriptor {
    fn signal(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }
    fn drain(&self) {
        self.0.store(0, Ordering::Release);
    }
}

struct Both {
    pos: AtomicU32,
    sleeping: AtomicU32,
    fd: Descriptor,
}

/// The waker's half in a thread of its own: publish progress, signal the descriptor only if it
/// swaps the sleeper's flag.
fn progress_and_wake() -> (Arc<Both>, loom::thread::JoinHandle<()>) {
    let s = Arc::new(Both { pos: AtomicU32::new(0), sleeping: AtomicU32::new(0), fd: Descriptor(AtomicU32::new(0)) });
    let waker = {
        let s = s.clone();
        loom::thread::spawn(move || {
            s.pos.store(1, Ordering::Release);
            if wake_if_sleeping(&s.sleeping) {
                s.fd.signal();
            }
        })
    };
    (s, waker)
}

/// Both halves as the plugin and the daemon run them: the sleeper keeps its descriptor as a
/// readiness mirror ([`Sleeper::sync`]) while the waker publishes progress and signals it only
/// if it swaps the flag. Whatever the interleaving: once the waker is done the descriptor is
/// readable (a program polling it wakes), the mirror then follows readiness both ways, and the
/// flag is never left set.
#[test]
fn the_readiness_mirror_never_loses_a_wake() {
    loom::model(|| {
        let (s, waker) = progress_and_wake();
        let mut sleeper = Sleeper::default();
        let ready = || s.pos.load(Ordering::Acquire) != 0;
        // Not ready when it looked: mirror "not ready", arming the flag unless the recheck saw
        // the progress.
        sleeper.sync(&s.sleeping, false, true, ready, &s.fd);
        waker.join().unwrap();
        assert!(s.fd.0.load(Ordering::Acquire) > 0, "progress made, but the descriptor is not readable");
        // The program wakes and the sleeper sees it is ready.
        sleeper.sync(&s.sleeping, true, true, ready, &s.fd);
        assert!(s.fd.0.load(Ordering::Acquire) > 0, "ready, but the descriptor is not readable");
        assert!(!sleeper.armed());
        assert_eq!(s.sleeping.load(Ordering::Relaxed), 0, "flag left set");
        // It used what was there and is not ready any more: the descriptor is drained.
        sleeper.sync(&s.sleeping, false, false, || false, &s.fd);
        assert_eq!(s.fd.0.load(Ordering::Acquire), 0, "not ready, but the descriptor stays readable");
    });
}

/// The bounded wait for the peer's next record ([`Sleeper::arm`]): if it decides to wait, the
/// waker's record makes the descriptor readable.
#[test]
fn a_bounded_wait_is_woken_by_the_record() {
    loom::model(|| {
        let (s, waker) = progress_and_wake();
        let mut sleeper = Sleeper::default();
        let waits = sleeper.arm(&s.sleeping, || s.pos.load(Ordering::Acquire) != 0, &s.fd);
        waker.join().unwrap();
        if waits {
            assert!(s.fd.0.load(Ordering::Acquire) > 0, "waits for a record that came, never woken");
        } else {
            assert_eq!(s.pos.load(Ordering::Acquire), 1, "refused to wait with nothing there");
        }
    });
}

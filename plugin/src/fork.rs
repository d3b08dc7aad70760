//! Fork detection. A program that forks after opening a PCM (a shell-out, a crash reporter, a
//! double-fork daemon) gives the child copies of everything: the daemon connection, the wake
//! sockets and the shared stream memory. Left alone, the child's `snd_pcm_close` (or an exit
//! handler that closes it) would post Stop and DestroyStream and tear down the parent's stream.
//! An `atfork` child handler bumps a generation counter; a PCM made in an older generation is
//! orphaned in the child: it detaches its shared memory and refuses every call, and its close
//! only drops local state.
//! Runs in the host program's calling threads. RT: yes (`generation` is one relaxed load).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

static GENERATION: AtomicU32 = AtomicU32::new(0);
static REGISTER: Once = Once::new();

extern "C" fn in_child() {
    // The only thread of the new child; async-signal-safe.
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Installs the child handler once per process (first PCM open). glibc registers it for this
/// shared object and removes it when alsa-lib unloads the plugin.
pub fn register() {
    REGISTER.call_once(|| {
        // SAFETY: `in_child` is a plain extern "C" fn that stays valid while this object is
        // loaded (glibc drops the handler when it is unloaded).
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

/// The current process generation: bumped in every child after `fork`.
#[must_use]
#[inline]
pub fn generation() -> u32 {
    GENERATION.load(Ordering::Relaxed)
}

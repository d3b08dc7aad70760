//! Allocation audit of the real-time path. A thread-local `IN_RT` flag is set around each mix
//! cycle; [`CountingAlloc`] counts every allocation made while it is set. With the feature
//! `rt-audit` the daemon installs it as its global allocator and reports the count at exit; tests
//! install it themselves. Runs on every thread. RT: yes (a thread-local read per call).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    // const-initialised and without Drop: no lazy registration, so reading it never allocates.
    static IN_RT: Cell<bool> = const { Cell::new(false) };
    static THREAD_RT_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

static RT_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Marks the current thread as inside (or outside) the real-time cycle.
#[inline]
pub fn set_in_rt(v: bool) {
    IN_RT.with(|f| f.set(v));
}

/// Allocations counted while some thread had `IN_RT` set (only with a [`CountingAlloc`] installed).
#[must_use]
pub fn rt_allocations() -> u64 {
    RT_ALLOCATIONS.load(Ordering::Relaxed)
}

/// True when the daemon was built with its counting allocator.
/// Allocations counted on this thread while it was in the real-time cycle (tests running in
/// parallel threads each see only their own).
#[must_use]
pub fn thread_rt_allocations() -> u64 {
    THREAD_RT_ALLOCATIONS.with(Cell::get)
}

#[must_use]
pub const fn enabled() -> bool {
    cfg!(feature = "rt-audit")
}

/// The system allocator, counting allocations on threads in the real-time cycle.
#[derive(Debug)]
pub struct CountingAlloc;

#[inline]
fn note() {
    if IN_RT.try_with(Cell::get).unwrap_or(false) {
        RT_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        let _ = THREAD_RT_ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting has no
// effect on the returned memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Freeing on the RT thread is as bad as allocating (it may take the allocator's lock).
        note();
        // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[cfg(feature = "rt-audit")]
#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

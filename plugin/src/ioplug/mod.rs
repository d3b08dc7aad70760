//! The FFI fence: the open entry point and every ioplug callback. Each callback is one line into
//! a guard that catches panics (a panic must never unwind into the host program) and turns
//! `Err(Errno)` into `-errno`. Learned from alsa-lib 1.2.8 `pcm_ioplug.c`, `pcm_mmap.c`, `pcm.c`:
//! - `BOUNDARY_WA`: `pointer` returns the read position since prepare modulo the boundary;
//!   `snd_pcm_ioplug_hw_ptr_update` adds `hw - last_hw`, or `boundary + hw - last_hw` when the
//!   value went down, so one whole buffer consumed between two calls is not lost.
//! - Any error from `pointer` makes ioplug set XRUN (DRAINING: drop); `avail_update` then says EPIPE.
//! - `snd_pcm_hw_params` runs hw_params, sw_params, `snd_pcm_mmap` (MMAP access only: a `malloc`
//!   kept in `mmap_channels[c].addr`, mirrored in `running_areas[c].addr`), then prepare. In
//!   prepare we point `running_areas[c].addr` at the SHM ring; `snd_pcm_munmap` frees the original
//!   through `mmap_channels`, so nothing leaks or is freed twice. With `mmap_rw = 0`,
//!   `mmap_commit` hands `running_areas` to `transfer`, which sees the data already in place.
//! - `snd_pcm_ioplug_mmap_areas` is NULL without `mmap_rw`, so the areas come from the public
//!   `snd_pcm_mmap_begin`, which needs a runnable state: prepare sets `io.state = PREPARED`
//!   first (ioplug sets it right after a successful prepare anyway).
//! - prepare, sw_params, drain and the poll callbacks run without the PCM lock, and `snd_pcm_drop`
//!   may run in another thread during drain: the state lives behind our own mutex.
//! - `snd_pcm_abort` = `snd_pcm_nonblock(pcm, 2)` sets `io.nonblock`: drain polls it.
//!
//! Runs in the host program's calling threads. RT: transfer/pointer/poll_revents yes.

mod channel_maps;
mod data;
mod open;
mod setup;

use crate::chmap;
use crate::config;
use crate::conn::Conn;
use crate::limits::{self, Bounds};
use crate::pcm::{Pcm, Source};
use crate::sys;
use crate::{user_error, Errno};
use shmix_shared::msg::{AudioParams, Direction};
use shmix_shared::socket::resolve_socket_path;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uint, c_ushort};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{Mutex, MutexGuard};

use channel_maps::{get_chmap, query_chmaps, set_chmap};
use data::{delay, drain, poll_descriptors, poll_revents, transfer};
use open::{close, open};
use setup::{hw_params, prepare, repoint_mmap_areas, ring_of, sw_params};

/// alsa-lib's `snd_dlsym_verify()` looks this up before it trusts `_snd_pcm_shmix_open`.
#[unsafe(no_mangle)]
pub static __snd_pcm_shmix_open_dlsym_pcm_001: c_char = 0;

static NAME: &CStr = c"shmix";

/// Stored by pointer in every ioplug: must be static.
static CALLBACKS: sys::snd_pcm_ioplug_callback_t = sys::snd_pcm_ioplug_callback_t {
    start: Some(cb_start),
    stop: Some(cb_stop),
    pointer: Some(cb_pointer),
    transfer: Some(cb_transfer),
    close: Some(cb_close),
    hw_params: Some(cb_hw_params),
    hw_free: Some(cb_hw_free),
    sw_params: Some(cb_sw_params),
    prepare: Some(cb_prepare),
    drain: Some(cb_drain),
    pause: Some(cb_pause),
    resume: None,
    poll_descriptors_count: Some(cb_poll_descriptors_count),
    poll_descriptors: Some(cb_poll_descriptors),
    poll_revents: Some(cb_poll_revents),
    dump: None,
    delay: Some(cb_delay),
    query_chmaps: Some(cb_query_chmaps),
    get_chmap: Some(cb_get_chmap),
    set_chmap: Some(cb_set_chmap),
};

/// What `io.private_data` points at. The `snd_pcm_ioplug_t` is a separate heap block that never
/// moves (alsa-lib aliases `&io->hw_ptr` and `&io->appl_ptr`); we only touch it through `io`.
struct Plugin {
    io: *mut sys::snd_pcm_ioplug_t,
    pcm: Mutex<Pcm>,
    /// The device (from `Welcome`) and the ceiling: the exact buffer range at hw_params.
    device: AudioParams,
    max_buffer_ms: u32,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // SAFETY: `io` came from `Box::into_raw` in `open` and alsa-lib is done with it (close
        // callback, or create failed).
        drop(unsafe { Box::from_raw(self.io) });
    }
}

pub(crate) fn guard(f: impl FnOnce() -> Result<c_int, Errno>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(n)) => n,
        Ok(Err(Errno(e))) => -e,
        Err(_) => -libc::EIO,
    }
}

fn guard_frames(f: impl FnOnce() -> Result<sys::snd_pcm_sframes_t, Errno>) -> sys::snd_pcm_sframes_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(n)) => n,
        Ok(Err(Errno(e))) => -sys::snd_pcm_sframes_t::from(e),
        Err(_) => -sys::snd_pcm_sframes_t::from(libc::EIO),
    }
}

/// The plugin behind `io`.
///
/// # Safety
/// `io` is an ioplug created by `open` and not yet closed.
unsafe fn plugin<'a>(io: *mut sys::snd_pcm_ioplug_t) -> &'a Plugin {
    // SAFETY: (caller) `private_data` was set to a live `Box<Plugin>` before create and is freed
    // only in the close callback.
    unsafe { &*((*io).private_data as *const Plugin) }
}

fn lock(p: &Plugin) -> Result<MutexGuard<'_, Pcm>, Errno> {
    Pcm::lock(&p.pcm)
}

// ----- callbacks: one line each --------------------------------------------------------------

unsafe extern "C" fn cb_start(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    // SAFETY: alsa-lib passes the ioplug it created for us.
    guard(|| lock(unsafe { plugin(io) })?.start().map(|()| 0))
}

unsafe extern "C" fn cb_stop(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    // SAFETY: as in `cb_start`.
    guard(|| lock(unsafe { plugin(io) }).map(|mut p| p.stop()).map(|()| 0))
}

unsafe extern "C" fn cb_pointer(io: *mut sys::snd_pcm_ioplug_t) -> sys::snd_pcm_sframes_t {
    guard_frames(|| {
        // SAFETY: a field read of our live ioplug; alsa-lib holds the PCM lock, so it is stable.
        let (appl, hw) = unsafe { ((*io).appl_ptr, (*io).hw_ptr) };
        // SAFETY: as in `cb_start`.
        let mut p = lock(unsafe { plugin(io) })?;
        p.check_reset(appl, hw)?;
        p.pointer(Some(appl)).map(|v| v as sys::snd_pcm_sframes_t)
    })
}

unsafe extern "C" fn cb_transfer(
    io: *mut sys::snd_pcm_ioplug_t,
    areas: *const sys::snd_pcm_channel_area_t,
    offset: sys::snd_pcm_uframes_t,
    size: sys::snd_pcm_uframes_t,
) -> sys::snd_pcm_sframes_t {
    // SAFETY: alsa-lib passes our ioplug and `channels` areas covering `offset..offset+size`.
    guard_frames(|| unsafe { transfer(io, areas, offset, size) })
}

unsafe extern "C" fn cb_close(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    // SAFETY: close is the last callback; alsa-lib frees its private part after it returns.
    guard(|| unsafe { close(io) })
}

unsafe extern "C" fn cb_hw_params(io: *mut sys::snd_pcm_ioplug_t, params: *mut sys::snd_pcm_hw_params_t) -> c_int {
    // SAFETY: as in `cb_start`; ioplug filled the negotiated fields before calling us and
    // `params` is the configuration being installed, valid and writable for the call.
    guard(|| unsafe { hw_params(io, params) })
}

unsafe extern "C" fn cb_hw_free(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    // SAFETY: as in `cb_start`.
    guard(|| lock(unsafe { plugin(io) })?.hw_free().map(|()| 0))
}

unsafe extern "C" fn cb_sw_params(io: *mut sys::snd_pcm_ioplug_t, params: *mut sys::snd_pcm_sw_params_t) -> c_int {
    // SAFETY: as in `cb_start`; `params` is valid for the call.
    guard(|| unsafe { sw_params(io, params) })
}

unsafe extern "C" fn cb_prepare(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    // SAFETY: as in `cb_start`.
    guard(|| unsafe { prepare(io) })
}

unsafe extern "C" fn cb_drain(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    // SAFETY: as in `cb_start`.
    guard(|| unsafe { drain(io) })
}

unsafe extern "C" fn cb_pause(io: *mut sys::snd_pcm_ioplug_t, enable: c_int) -> c_int {
    // SAFETY: as in `cb_start`.
    guard(|| lock(unsafe { plugin(io) })?.pause(enable != 0).map(|()| 0))
}

unsafe extern "C" fn cb_poll_descriptors_count(_io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    2
}

unsafe extern "C" fn cb_poll_descriptors(
    io: *mut sys::snd_pcm_ioplug_t,
    pfd: *mut libc::pollfd,
    space: c_uint,
) -> c_int {
    // SAFETY: as in `cb_start`; `pfd` has room for `space` entries.
    guard(|| unsafe { poll_descriptors(io, pfd, space) })
}

unsafe extern "C" fn cb_poll_revents(
    io: *mut sys::snd_pcm_ioplug_t,
    pfd: *mut libc::pollfd,
    nfds: c_uint,
    revents: *mut c_ushort,
) -> c_int {
    // SAFETY: as in `cb_start`; `pfd` holds `nfds` entries and `revents` is writable.
    guard(|| unsafe { poll_revents(io, pfd, nfds, revents) })
}

unsafe extern "C" fn cb_delay(io: *mut sys::snd_pcm_ioplug_t, delayp: *mut sys::snd_pcm_sframes_t) -> c_int {
    // SAFETY: as in `cb_start`; `delayp` is writable.
    guard(|| unsafe { delay(io, delayp) })
}

unsafe extern "C" fn cb_query_chmaps(io: *mut sys::snd_pcm_ioplug_t) -> *mut *mut sys::snd_pcm_chmap_query_t {
    // SAFETY: as in `cb_start` (the ioplug is not used: the list does not depend on the state).
    catch_unwind(|| unsafe { query_chmaps(io) }).unwrap_or(ptr::null_mut())
}

unsafe extern "C" fn cb_get_chmap(io: *mut sys::snd_pcm_ioplug_t) -> *mut sys::snd_pcm_chmap_t {
    // SAFETY: as in `cb_start`.
    catch_unwind(|| unsafe { get_chmap(io) }).unwrap_or(ptr::null_mut())
}

unsafe extern "C" fn cb_set_chmap(io: *mut sys::snd_pcm_ioplug_t, map: *const sys::snd_pcm_chmap_t) -> c_int {
    // SAFETY: as in `cb_start`; `map` is the caller's map, valid for the call.
    guard(|| unsafe { set_chmap(io, map) })
}

/// The `type shmix` constructor.
///
/// # Safety
/// Called by alsa-lib with valid out pointer, name, config nodes, stream and mode.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _snd_pcm_shmix_open(
    pcmp: *mut *mut sys::snd_pcm_t,
    name: *const c_char,
    root: *mut sys::snd_config_t,
    conf: *mut sys::snd_config_t,
    stream: sys::snd_pcm_stream_t,
    mode: c_int,
) -> c_int {
    // SAFETY: arguments straight from alsa-lib (see `# Safety`).
    guard(|| unsafe { open(pcmp, name, root, conf, stream, mode) })
}

thread_local! {
    /// Set while this thread opens a `fallback` PCM: a shmix PCM opened inside it (the fallback
    /// names shmix itself, or `default` routed through shmix) must not fall back again, or an
    /// unreachable daemon would recurse forever.
    static IN_FALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

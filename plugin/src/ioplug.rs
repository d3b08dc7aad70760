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

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uint, c_ushort};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{Mutex, MutexGuard};

use crate::chmap;
use crate::config;
use crate::conn::Conn;
use crate::limits::{self, Bounds};
use crate::pcm::{Pcm, Source};
use crate::sys;
use crate::{user_error, Errno};
use shmix_shared::msg::{AudioParams, Direction};
use shmix_shared::socket::resolve_socket_path;

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

/// The daemon is not there (as opposed to there and refusing): the cases `fallback` covers.
fn unreachable(errno: i32) -> bool {
    matches!(errno, libc::ENOENT | libc::ECONNREFUSED | libc::ENOTDIR)
}

/// Opens the `fallback` PCM `name` in the same configuration tree, for `stream` and `mode`.
///
/// # Safety
/// `pcmp` is alsa-lib's out pointer and `root` the configuration tree it handed to the open.
unsafe fn open_fallback(
    pcmp: *mut *mut sys::snd_pcm_t,
    name: &str,
    root: *mut sys::snd_config_t,
    stream: sys::snd_pcm_stream_t,
    mode: c_int,
) -> Result<c_int, Errno> {
    let cname = std::ffi::CString::new(name).map_err(|_| Errno(libc::EINVAL))?;
    IN_FALLBACK.with(|f| f.set(true));
    let mut out: *mut sys::snd_pcm_t = ptr::null_mut();
    let err = if root.is_null() {
        // SAFETY: `out` is a valid out pointer, `cname` NUL-terminated; the global configuration
        // (alsa-lib always passes a tree: this branch is defence only).
        unsafe { sys::snd_pcm_open(&mut out, cname.as_ptr(), stream, mode) }
    } else {
        // SAFETY: `out` is a valid out pointer, `cname` NUL-terminated, `root` the live tree of
        // the open in progress (alsa-lib holds it for the whole open; `snd_pcm_open_lconf` only
        // reads it).
        unsafe { sys::snd_pcm_open_lconf(&mut out, cname.as_ptr(), stream, mode, root) }
    };
    IN_FALLBACK.with(|f| f.set(false));
    if err < 0 {
        return Err(Errno(-err));
    }
    // SAFETY: `pcmp` is alsa-lib's out pointer; the caller now owns `out` (as with `asym`, whose
    // open hands back its slave PCM).
    unsafe { *pcmp = out };
    Ok(0)
}

// ----- bodies -------------------------------------------------------------------------------

unsafe fn open(
    pcmp: *mut *mut sys::snd_pcm_t,
    name: *const c_char,
    root: *mut sys::snd_config_t,
    conf: *mut sys::snd_config_t,
    stream: sys::snd_pcm_stream_t,
    mode: c_int,
) -> Result<c_int, Errno> {
    let debug = shmix_shared::socket::secure_env("SHMIX_DEBUG").is_some_and(|v| v == "1");
    // SAFETY: `conf` is the PCM's node, alive during open.
    let entries = unsafe { config::read_entries(conf) };
    let cfg = config::parse(&entries).map_err(|msg| {
        user_error(&msg);
        Errno(libc::EINVAL)
    })?;
    let capture = stream == sys::SND_PCM_STREAM_CAPTURE;
    let direction = match (capture, cfg.monitor) {
        (false, false) => Direction::Playback,
        (false, true) => {
            user_error(
                "'monitor true' records the playback mix and works for capture only; \
                 play to a PCM without it (e.g. shmix), record from this one",
            );
            return Err(Errno(libc::EINVAL));
        }
        (true, false) => Direction::Capture,
        (true, true) => Direction::Monitor,
    };
    let path = resolve_socket_path(cfg.socket.as_deref());
    let conn = match Conn::connect(&path, direction) {
        Ok(c) => c,
        Err(e) => match &cfg.fallback {
            Some(fb) if unreachable(e.errno) && !IN_FALLBACK.with(std::cell::Cell::get) => {
                user_error(&format!("{} Playing to the fallback PCM '{fb}' instead.", e.message));
                // SAFETY: alsa-lib's out pointer and tree of this open.
                return unsafe { open_fallback(pcmp, fb, root, stream, mode) }.inspect_err(|err| {
                    user_error(&format!(
                        "the fallback PCM '{fb}' did not open either: {}",
                        nix::errno::Errno::from_raw(err.0).desc()
                    ));
                });
            }
            Some(fb) if unreachable(e.errno) => {
                user_error(&format!("{} The fallback '{fb}' leads back to shmix; not falling back again.", e.message));
                return Err(Errno(e.errno));
            }
            _ => {
                user_error(&e.message);
                return Err(Errno(e.errno));
            }
        },
    };
    let device = conn.device;
    if debug {
        eprintln!(
            "shmix: connected to {} ({direction:?}): device {} {} Hz {} ch, period {}",
            conn.path().display(),
            device.format,
            device.rate,
            device.channels,
            device.period_frames
        );
    }
    crate::fork::register();
    let pcm = Pcm::new(conn, debug, cfg.resample_quality, capture)?;

    let io = Box::into_raw(Box::new(sys::snd_pcm_ioplug_t {
        version: sys::SND_PCM_IOPLUG_VERSION,
        name: NAME.as_ptr(),
        flags: sys::SND_PCM_IOPLUG_FLAG_BOUNDARY_WA,
        poll_fd: -1,
        poll_events: 0,
        mmap_rw: 0,
        callback: &CALLBACKS,
        // ioplug does not take the open mode's NONBLOCK into `nonblock`; drain reads it.
        nonblock: c_int::from(mode & sys::SND_PCM_NONBLOCK as c_int != 0),
        ..Default::default()
    }));
    let plugin = Box::into_raw(Box::new(Plugin { io, pcm: Mutex::new(pcm), device, max_buffer_ms: cfg.max_buffer_ms }));
    // SAFETY: `io` is our fresh, unshared allocation.
    unsafe { (*io).private_data = plugin.cast() };
    // SAFETY: `io` is fully initialised and stays at this address until close.
    let err = unsafe { sys::snd_pcm_ioplug_create(io, name, stream, mode) };
    if err < 0 {
        // SAFETY: create failed, so alsa-lib keeps no reference; nothing else owns `plugin`.
        drop(unsafe { Box::from_raw(plugin) });
        return Err(Errno(-err));
    }
    // SAFETY: `io` was created above; on error `snd_pcm_ioplug_delete` closes it, which runs our
    // close callback and frees `plugin`.
    if let Err(e) = unsafe { set_limits(io, &device, cfg.max_buffer_ms) } {
        // SAFETY: as above.
        unsafe { sys::snd_pcm_ioplug_delete(io) };
        return Err(e);
    }
    // SAFETY: `pcmp` is alsa-lib's out pointer; `(*io).pcm` was set by create.
    unsafe { *pcmp = (*io).pcm };
    Ok(0)
}

unsafe fn set_limits(io: *mut sys::snd_pcm_ioplug_t, device: &AudioParams, max_buffer_ms: u32) -> Result<(), Errno> {
    let l = limits::static_limits(device, max_buffer_ms);
    let access = [sys::SND_PCM_ACCESS_RW_INTERLEAVED, sys::SND_PCM_ACCESS_MMAP_INTERLEAVED];
    let format: Vec<c_uint> = l.formats.iter().map(|f| f.code()).collect();
    let nformats = c_uint::try_from(format.len()).map_err(|_| Errno(libc::EINVAL))?;
    let check = |r: c_int| if r < 0 { Err(Errno(-r)) } else { Ok(()) };
    let hw = |t: u32| t as c_int;
    // SAFETY: `io` was created by snd_pcm_ioplug_create; the lists outlive the calls (alsa-lib
    // copies them).
    unsafe {
        check(sys::snd_pcm_ioplug_set_param_list(io, hw(sys::SND_PCM_IOPLUG_HW_ACCESS), 2, access.as_ptr()))?;
        check(sys::snd_pcm_ioplug_set_param_list(io, hw(sys::SND_PCM_IOPLUG_HW_FORMAT), nformats, format.as_ptr()))?;
        check(sys::snd_pcm_ioplug_set_param_minmax(
            io,
            hw(sys::SND_PCM_IOPLUG_HW_CHANNELS),
            l.channels.0,
            l.channels.1,
        ))?;
        check(sys::snd_pcm_ioplug_set_param_minmax(io, hw(sys::SND_PCM_IOPLUG_HW_RATE), l.rate.0, l.rate.1))?;
        check(sys::snd_pcm_ioplug_set_param_minmax(
            io,
            hw(sys::SND_PCM_IOPLUG_HW_PERIOD_BYTES),
            l.period_bytes.0,
            l.period_bytes.1,
        ))?;
        check(sys::snd_pcm_ioplug_set_param_minmax(io, hw(sys::SND_PCM_IOPLUG_HW_PERIODS), l.periods.0, l.periods.1))?;
        check(sys::snd_pcm_ioplug_set_param_minmax(
            io,
            hw(sys::SND_PCM_IOPLUG_HW_BUFFER_BYTES),
            l.buffer_bytes.0,
            l.buffer_bytes.1,
        ))?;
    }
    Ok(())
}

unsafe fn close(io: *mut sys::snd_pcm_ioplug_t) -> Result<c_int, Errno> {
    // SAFETY: `private_data` is the Box made in `open`; close is called once, last.
    let plugin = unsafe { Box::from_raw((*io).private_data as *mut Plugin) };
    if let Ok(p) = plugin.pcm.lock() {
        p.close();
    }
    drop(plugin); // closes the socket (the daemon destroys the stream), unmaps, frees `io`
    Ok(0)
}

unsafe fn hw_params(io: *mut sys::snd_pcm_ioplug_t, hwp: *mut sys::snd_pcm_hw_params_t) -> Result<c_int, Errno> {
    // SAFETY: `io` is live.
    let plugin = unsafe { plugin(io) };
    // SAFETY: ioplug wrote these fields before calling hw_params; nobody writes them meanwhile.
    let (format, channels, rate, period, buffer) =
        unsafe { ((*io).format, (*io).channels, (*io).rate, (*io).period_size, (*io).buffer_size) };
    let bad = |msg: String| {
        crate::user_error(&msg);
        Errno(libc::EINVAL)
    };
    let format = limits::check_params(i64::from(format), rate, channels).map_err(bad)?;
    let frames = |v: sys::snd_pcm_uframes_t| u32::try_from(v).unwrap_or(u32::MAX);
    let (mut period, mut buffer) = (frames(period), frames(buffer));
    let b = limits::exact_bounds(&plugin.device, plugin.max_buffer_ms, rate, format.sample_bytes() * channels);
    if let Some((want_period, want_buffer)) = limits::fit(&b, period, buffer) {
        // SAFETY: `io` is live, `hwp` is the configuration being installed (valid, writable);
        // hw_params runs without the PCM lock (pcm_params.c), so refining through the PCM is fine.
        let got = unsafe { refit(io, hwp, &b, want_period, want_buffer) }.map_err(|what| {
            bad(format!(
                "cannot fit the buffer ({buffer} frames, period {period}) into {}..={} frames at {rate} Hz \
                 (two device periods .. max_buffer_ms {}): {what}",
                b.min_buffer, b.max_buffer, plugin.max_buffer_ms
            ))
        })?;
        if lock(plugin)?.debug() {
            eprintln!(
                "shmix: hw_params: buffer {buffer} period {period} -> buffer {} period {} (range {}..={} frames)",
                got.1, got.0, b.min_buffer, b.max_buffer
            );
        }
        (period, buffer) = got;
    }
    let params = AudioParams { format, rate, channels, period_frames: period, buffer_frames: buffer };
    lock(plugin)?.hw_params(params).map(|()| 0)
}

/// Moves the buffer and period of the configuration being installed into `b` (near `period` and
/// `buffer`), keeping everything else. alsa-lib reads the result back after the callback
/// (pcm_ioplug.c `snd_pcm_ioplug_hw_params`, pcm_params.c `_snd_pcm_hw_params_internal`), as
/// programs do with `snd_pcm_hw_params_get_buffer_size` after `snd_pcm_hw_params`. A fresh space
/// is refined through our own constraints (which contain `b`) and copied over `hwp`.
///
/// # Safety
/// `io` is live and its PCM not locked by this thread; `hwp` is valid and writable.
unsafe fn refit(
    io: *mut sys::snd_pcm_ioplug_t,
    hwp: *mut sys::snd_pcm_hw_params_t,
    b: &Bounds,
    period: u32,
    buffer: u32,
) -> Result<(u32, u32), String> {
    struct Owned(*mut sys::snd_pcm_hw_params_t);
    impl Drop for Owned {
        fn drop(&mut self) {
            // SAFETY: allocated by snd_pcm_hw_params_malloc below, freed once.
            unsafe { sys::snd_pcm_hw_params_free(self.0) };
        }
    }
    let step = |what: &str, r: c_int| {
        if r < 0 {
            Err(format!("{what}: {}", nix::errno::Errno::from_raw(-r).desc()))
        } else {
            Ok(())
        }
    };
    // SAFETY: plain field read of our live ioplug.
    let pcm = unsafe { (*io).pcm };
    let mut raw = ptr::null_mut();
    // SAFETY: `raw` is a valid out pointer.
    step("allocating hw_params", unsafe { sys::snd_pcm_hw_params_malloc(&mut raw) })?;
    let np = Owned(raw);
    let np = np.0;
    let (mut access, mut format, mut subformat, mut channels, mut rate, mut dir) = (0, 0, 0, 0, 0, 0);
    let (mut resample, mut export, mut wakeup) = (1, 0, 1);
    let mut lo = sys::snd_pcm_uframes_t::from(b.min_buffer);
    let mut hi = sys::snd_pcm_uframes_t::from(b.max_buffer);
    let mut p = sys::snd_pcm_uframes_t::from(period);
    let mut bs = sys::snd_pcm_uframes_t::from(buffer);
    // SAFETY: `hwp` and `np` are valid hw_params, `pcm` our PCM; all out pointers are locals.
    // The getters read the single values alsa-lib chose; the setters refine `np` through ioplug.
    unsafe {
        step("access", sys::snd_pcm_hw_params_get_access(hwp, &mut access))?;
        step("format", sys::snd_pcm_hw_params_get_format(hwp, &mut format))?;
        step("subformat", sys::snd_pcm_hw_params_get_subformat(hwp, &mut subformat))?;
        step("channels", sys::snd_pcm_hw_params_get_channels(hwp, &mut channels))?;
        step("rate", sys::snd_pcm_hw_params_get_rate(hwp, &mut rate, &mut dir))?;
        sys::snd_pcm_hw_params_get_rate_resample(pcm, hwp, &mut resample);
        sys::snd_pcm_hw_params_get_export_buffer(pcm, hwp, &mut export);
        sys::snd_pcm_hw_params_get_period_wakeup(pcm, hwp, &mut wakeup);
        step("any", sys::snd_pcm_hw_params_any(pcm, np))?;
        if resample != 1 {
            step("rate_resample", sys::snd_pcm_hw_params_set_rate_resample(pcm, np, resample))?;
        }
        if export != 0 {
            step("export_buffer", sys::snd_pcm_hw_params_set_export_buffer(pcm, np, export))?;
        }
        if wakeup != 1 {
            step("period_wakeup", sys::snd_pcm_hw_params_set_period_wakeup(pcm, np, wakeup))?;
        }
        step("access", sys::snd_pcm_hw_params_set_access(pcm, np, access))?;
        step("format", sys::snd_pcm_hw_params_set_format(pcm, np, format))?;
        step("subformat", sys::snd_pcm_hw_params_set_subformat(pcm, np, subformat))?;
        step("channels", sys::snd_pcm_hw_params_set_channels(pcm, np, channels))?;
        step("rate", sys::snd_pcm_hw_params_set_rate(pcm, np, rate, 0))?;
        step("buffer range", sys::snd_pcm_hw_params_set_buffer_size_minmax(pcm, np, &mut lo, &mut hi))?;
        let mut d = 0;
        step("period", sys::snd_pcm_hw_params_set_period_size_near(pcm, np, &mut p, &mut d))?;
        step("buffer", sys::snd_pcm_hw_params_set_buffer_size_near(pcm, np, &mut bs))?;
        // Read back what is now fixed (both must be single values for alsa-lib's getters).
        let mut d = 0;
        step("period", sys::snd_pcm_hw_params_get_period_size(np, &mut p, &mut d))?;
        step("buffer", sys::snd_pcm_hw_params_get_buffer_size(np, &mut bs))?;
    }
    let (p, bs) = (u32::try_from(p).unwrap_or(u32::MAX), u32::try_from(bs).unwrap_or(u32::MAX));
    if !(b.min_buffer..=b.max_buffer).contains(&bs) || p > bs / 2 {
        return Err(format!("alsa-lib settled on buffer {bs} period {p}"));
    }
    // SAFETY: both valid; `np` is a complete configuration of the same PCM.
    unsafe { sys::snd_pcm_hw_params_copy(hwp, np) };
    Ok((p, bs))
}

unsafe fn sw_params(io: *mut sys::snd_pcm_ioplug_t, params: *mut sys::snd_pcm_sw_params_t) -> Result<c_int, Errno> {
    let (mut avail_min, mut boundary): (sys::snd_pcm_uframes_t, sys::snd_pcm_uframes_t) = (1, 0);
    // SAFETY: `params` is valid for this call; the out pointers are ours.
    unsafe {
        sys::snd_pcm_sw_params_get_avail_min(params, &mut avail_min);
        sys::snd_pcm_sw_params_get_boundary(params, &mut boundary);
    }
    // SAFETY: `io` is live.
    lock(unsafe { plugin(io) })?.sw_params(avail_min, boundary);
    Ok(0)
}

unsafe fn prepare(io: *mut sys::snd_pcm_ioplug_t) -> Result<c_int, Errno> {
    // SAFETY: `io` is live.
    let plugin = unsafe { plugin(io) };
    let mut p = lock(plugin)?;
    p.prepare()?;
    let region = ring_of(&p);
    // snd_pcm_mmap_begin calls our transfer for capture (alsa-lib's mmap_begin_capture): it
    // must find our mutex free.
    drop(p);
    // SAFETY: `io` is live; prepare runs with the PCM unlocked (pcm_ioplug.c), so the public
    // mmap_begin may take the lock.
    let pointed = unsafe { repoint_mmap_areas(io, region) };
    // SAFETY: plain field read.
    let mmap = unsafe { (*io).access } == sys::SND_PCM_ACCESS_MMAP_INTERLEAVED;
    let mut p = lock(plugin)?;
    p.set_access(mmap, pointed);
    if p.debug() && mmap {
        eprintln!(
            "shmix: prepare: mmap areas {}",
            if pointed { "point at shared memory" } else { "NOT re-pointed (copying)" }
        );
    }
    Ok(0)
}

/// The ring's base address and the frame size, for [`repoint_mmap_areas`].
fn ring_of(p: &Pcm) -> Option<(*mut u8, u32)> {
    Some((p.ring_region()?.0, p.frame_bytes()?))
}

/// Points alsa-lib's running mmap areas at the SHM ring `region` (base, frame bytes;
/// MMAP_INTERLEAVED only). Returns whether it did; `transfer` verifies it on every call anyway.
///
/// # Safety
/// `io` is live, its PCM is not locked by this thread, and neither is our mutex (for capture,
/// snd_pcm_mmap_begin calls transfer).
unsafe fn repoint_mmap_areas(io: *mut sys::snd_pcm_ioplug_t, region: Option<(*mut u8, u32)>) -> bool {
    let Some((base, fb)) = region else { return false };
    // SAFETY: plain field reads of our ioplug.
    let (access, channels, state) = unsafe { ((*io).access, (*io).channels, (*io).state) };
    if access != sys::SND_PCM_ACCESS_MMAP_INTERLEAVED || channels == 0 {
        return false;
    }
    // snd_pcm_mmap_begin refuses SETUP; ioplug sets PREPARED right after we return success.
    // SAFETY: `state` is ours to set (snd_pcm_ioplug_set_state does the same).
    unsafe { (*io).state = sys::SND_PCM_STATE_PREPARED };
    let mut areas: *const sys::snd_pcm_channel_area_t = ptr::null();
    let (mut offset, mut frames): (sys::snd_pcm_uframes_t, sys::snd_pcm_uframes_t) = (0, 0);
    // SAFETY: `(*io).pcm` is our PCM, set up and mmapped (hw_params ran snd_pcm_mmap); the out
    // pointers are valid.
    let r = unsafe { sys::snd_pcm_mmap_begin((*io).pcm, &mut areas, &mut offset, &mut frames) };
    if r < 0 || areas.is_null() {
        // SAFETY: restore what we changed.
        unsafe { (*io).state = state };
        return false;
    }
    let sample_bits = fb * 8 / channels;
    for c in 0..channels as usize {
        // SAFETY: `areas` is alsa-lib's `running_areas`, an array of `channels` entries.
        let a = unsafe { &*areas.add(c) };
        if a.first != c as c_uint * sample_bits || a.step != fb * 8 {
            return false;
        }
    }
    for c in 0..channels as usize {
        // SAFETY: `running_areas` is heap memory alsa-lib allocated in snd_pcm_mmap and only
        // reads elsewhere; it frees the buffer through `mmap_channels[c].addr`, not this field,
        // and frees this array itself in snd_pcm_munmap (before our hw_free unmaps the ring).
        unsafe { (*areas.cast_mut().add(c)).addr = base.cast() };
    }
    true
}

unsafe fn transfer(
    io: *mut sys::snd_pcm_ioplug_t,
    areas: *const sys::snd_pcm_channel_area_t,
    offset: sys::snd_pcm_uframes_t,
    size: sys::snd_pcm_uframes_t,
) -> Result<sys::snd_pcm_sframes_t, Errno> {
    // SAFETY: plain field reads of our ioplug (alsa-lib holds the PCM lock; it forwards appl_ptr
    // only after we return).
    let (appl_ptr, hw_ptr, channels, access, buffer_size) =
        unsafe { ((*io).appl_ptr, (*io).hw_ptr, (*io).channels as usize, (*io).access, (*io).buffer_size) };
    // SAFETY: `io` is live.
    let mut p = lock(unsafe { plugin(io) })?;
    p.check_reset(appl_ptr, hw_ptr)?;
    let capture = p.is_capture();
    let mmap = access == sys::SND_PCM_ACCESS_MMAP_INTERLEAVED;
    // Capture with MMAP access: alsa-lib's avail_update asks us to fill its mmap buffer from
    // `appl_ptr` on, in up to two calls (the second at offset 0 after the buffer's end), so
    // `offset` is a ring index, not always appl_ptr's. Everywhere else the first frame is at
    // appl_ptr (playback mmap_commit) or offset is into the program's own buffer (RW).
    let skip = if capture && mmap {
        u32::try_from(crate::pcm::mmap_skip(offset, appl_ptr, buffer_size)).map_err(|_| Errno(libc::EINVAL))?
    } else {
        0
    };
    if size == 0 {
        if capture && mmap {
            p.pointer(Some(appl_ptr)).map(|_| ())?; // publishes what the program committed
        }
        return Ok(0);
    }
    let frames = u32::try_from(size).map_err(|_| Errno(libc::EINVAL))?;
    let fb = p.frame_bytes().ok_or(Errno(libc::EBADFD))? as usize;
    let (ring, ring_len) = p.ring_region().ok_or(Errno(libc::EBADFD))?;
    if areas.is_null() || channels == 0 {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: alsa-lib passes one area per channel.
    let areas = unsafe { std::slice::from_raw_parts(areas, channels) };
    let sample_bits = (fb * 8 / channels) as c_uint;
    let a0 = areas[0];
    let interleaved = a0.first % 8 == 0
        && areas.iter().enumerate().all(|(c, a)| {
            a.addr == a0.addr && a.first == a0.first + c as c_uint * sample_bits && a.step as usize == fb * 8
        });
    let dst = p.transfer_target(appl_ptr, skip)?;
    let len = frames as usize * fb;
    let done = |n: u32| n as sys::snd_pcm_sframes_t;
    if interleaved {
        let src = (a0.addr as *mut u8).wrapping_add(a0.first as usize / 8 + offset as usize * fb);
        if ptr::eq(src, dst) {
            return p.transfer(appl_ptr, skip, frames, Source::InPlace).map(done);
        }
        let (lo, hi) = (src as usize, src as usize + len);
        if lo < ring as usize + ring_len && hi > ring as usize {
            return Err(Errno(libc::EIO)); // in the ring but not where it belongs: never expected
        }
        if capture {
            // SAFETY: alsa-lib guarantees the areas hold room for `size` frames from `offset`
            // (the application's buffer for readi, alsa-lib's mmap buffer for avail_update); they
            // do not overlap the ring (checked above) and nobody else touches them meanwhile.
            let bytes = unsafe { std::slice::from_raw_parts_mut(src, len) };
            return p.transfer(appl_ptr, skip, frames, Source::Dest(bytes)).map(done);
        }
        // SAFETY: alsa-lib guarantees the areas hold `size` frames from `offset` (the
        // application's buffer for writei, alsa-lib's mmap buffer for mmap_commit); they do not
        // overlap the ring (checked above) and nobody writes them during this call.
        let bytes = unsafe { std::slice::from_raw_parts(src, len) };
        return p.transfer(appl_ptr, skip, frames, Source::Frames(bytes)).map(done);
    }
    // Non-interleaved areas (never produced for our access types): gather / scatter sample by
    // sample through an interleaved buffer.
    let sb = sample_bits as usize / 8;
    let sample = |a: &sys::snd_pcm_channel_area_t, f: usize| {
        let bit = a.first as usize + (offset as usize + f) * a.step as usize;
        (a.addr as *mut u8).wrapping_add(bit / 8)
    };
    let mut buf = vec![0u8; len];
    if capture {
        let n = p.transfer(appl_ptr, skip, frames, Source::Dest(&mut buf))?;
        for f in 0..frames as usize {
            for (c, a) in areas.iter().enumerate() {
                // SAFETY: channel `c`'s area has room for frame `offset + f`; whole-byte samples.
                unsafe { ptr::copy_nonoverlapping(buf[f * fb + c * sb..].as_ptr(), sample(a, f), sb) };
            }
        }
        return Ok(done(n));
    }
    for f in 0..frames as usize {
        for (c, a) in areas.iter().enumerate() {
            // SAFETY: as above: channel `c`'s area holds frame `offset + f`; `bit` is byte
            // aligned for our formats (whole-byte samples).
            let s = unsafe { std::slice::from_raw_parts(sample(a, f), sb) };
            buf[f * fb + c * sb..f * fb + (c + 1) * sb].copy_from_slice(s);
        }
    }
    p.transfer(appl_ptr, skip, frames, Source::Frames(&buf)).map(done)
}

unsafe fn drain(io: *mut sys::snd_pcm_ioplug_t) -> Result<c_int, Errno> {
    // SAFETY: `io` is live.
    let plugin = unsafe { plugin(io) };
    // `io.nonblock` is written by snd_pcm_nonblock/snd_pcm_abort, possibly from a signal handler
    // or another thread: read it fresh every time.
    // SAFETY: a volatile read of an int field of our live ioplug.
    let nonblock = || unsafe { ptr::read_volatile(ptr::addr_of!((*io).nonblock)) } != 0;
    Pcm::drain(&plugin.pcm, &nonblock).map(|()| 0)
}

/// `malloc`s a copy of `words` (alsa-lib releases chmaps with `free`). NULL when out of memory.
fn malloc_words(words: &[u32]) -> *mut u32 {
    let bytes = std::mem::size_of_val(words);
    // SAFETY: plain allocation; checked for NULL before use.
    let p = unsafe { libc::malloc(bytes.max(1)) }.cast::<u32>();
    if !p.is_null() {
        // SAFETY: `p` has room for `words.len()` u32s (malloc aligns for any type).
        unsafe { ptr::copy_nonoverlapping(words.as_ptr(), p, words.len()) };
    }
    p
}

/// query_chmaps: a NULL-terminated `malloc`ed array of `malloc`ed entries (freed by
/// `snd_pcm_free_chmaps`), the standard layout for each of 1..=32 channels.
///
/// # Safety
/// None beyond the callback contract (the ioplug is not touched).
unsafe fn query_chmaps(_io: *mut sys::snd_pcm_ioplug_t) -> *mut *mut sys::snd_pcm_chmap_query_t {
    let entries = chmap::query_entries();
    let n = entries.len();
    // SAFETY: plain allocation of n + 1 pointers; checked for NULL.
    let list = unsafe { libc::calloc(n + 1, std::mem::size_of::<*mut sys::snd_pcm_chmap_query_t>()) }
        .cast::<*mut sys::snd_pcm_chmap_query_t>();
    if list.is_null() {
        return list;
    }
    for (i, e) in entries.iter().enumerate() {
        let p = malloc_words(e);
        if p.is_null() {
            for j in 0..i {
                // SAFETY: entries 0..i were malloc'd above and are freed once.
                unsafe { libc::free((*list.add(j)).cast()) };
            }
            // SAFETY: calloc'd above, freed once.
            unsafe { libc::free(list.cast()) };
            return ptr::null_mut();
        }
        // SAFETY: `list` has n + 1 slots; `i < n`. `[type, channels, pos...]` is the layout of
        // `snd_pcm_chmap_query_t` (two unsigned ints, then the position array).
        unsafe { *list.add(i) = p.cast() };
    }
    list // slot n is NULL (calloc)
}

/// get_chmap: the map in use (the one set, else the standard one for the negotiated channels),
/// `malloc`ed (the caller frees it); NULL before hw_params.
///
/// # Safety
/// `io` is live.
unsafe fn get_chmap(io: *mut sys::snd_pcm_ioplug_t) -> *mut sys::snd_pcm_chmap_t {
    // SAFETY: `io` is live (caller).
    let Ok(p) = lock(unsafe { plugin(io) }) else { return ptr::null_mut() };
    let Some(params) = p.params() else { return ptr::null_mut() };
    malloc_words(&chmap::encode_map(&p.chmap(params.channels))).cast()
}

/// set_chmap: a map of the negotiated channel count with plain positions; takes effect at once
/// (the stream is re-created when it differs). Refused before hw_params and while running.
///
/// # Safety
/// `io` is live and its PCM not locked by this thread (snd_pcm_set_chmap takes no lock); `map`
/// is valid for the call.
unsafe fn set_chmap(io: *mut sys::snd_pcm_ioplug_t, map: *const sys::snd_pcm_chmap_t) -> Result<c_int, Errno> {
    if map.is_null() {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: `io` is live.
    let plugin = unsafe { plugin(io) };
    let mut p = lock(plugin)?;
    let Some(params) = p.params() else {
        crate::user_error("set the channel map after hw_params (the stream has no channel count yet)");
        return Err(Errno(libc::EBADFD));
    };
    // SAFETY: `map` points at a `snd_pcm_chmap_t` (caller).
    let n = unsafe { (*map).channels };
    if n != params.channels {
        crate::user_error(&format!(
            "a channel map of {n} positions does not fit the {}-channel stream",
            params.channels
        ));
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: a map of `n` channels is followed by `n` positions (alsa-lib's layout); `n` equals
    // the negotiated count, at most 32.
    let positions = unsafe { std::slice::from_raw_parts(ptr::addr_of!((*map).pos).cast::<u32>(), n as usize) };
    let m = chmap::decode_map(params.channels, positions).map_err(|msg| {
        crate::user_error(&msg);
        Errno(libc::EINVAL)
    })?;
    let moved = p.set_chmap(m)?;
    // SAFETY: plain field read.
    if moved && unsafe { (*io).state } == sys::SND_PCM_STATE_PREPARED {
        let region = ring_of(&p);
        drop(p); // capture: snd_pcm_mmap_begin calls our transfer
                 // SAFETY: `io` is live and not locked by this thread (see `# Safety`).
        let pointed = unsafe { repoint_mmap_areas(io, region) };
        // SAFETY: plain field read.
        let mmap = unsafe { (*io).access } == sys::SND_PCM_ACCESS_MMAP_INTERLEAVED;
        lock(plugin)?.set_access(mmap, pointed);
    }
    Ok(0)
}

unsafe fn poll_descriptors(
    io: *mut sys::snd_pcm_ioplug_t,
    pfd: *mut libc::pollfd,
    space: c_uint,
) -> Result<c_int, Errno> {
    if pfd.is_null() || space < 2 {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: `io` is live.
    let fds = lock(unsafe { plugin(io) })?.poll_fds();
    for (i, fd) in fds.into_iter().enumerate() {
        // SAFETY: `pfd` has room for `space >= 2` entries.
        unsafe { *pfd.add(i) = libc::pollfd { fd, events: libc::POLLIN, revents: 0 } };
    }
    Ok(2)
}

unsafe fn poll_revents(
    io: *mut sys::snd_pcm_ioplug_t,
    pfd: *mut libc::pollfd,
    nfds: c_uint,
    revents: *mut c_ushort,
) -> Result<c_int, Errno> {
    if revents.is_null() {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: `io` is live.
    let mut p = lock(unsafe { plugin(io) })?;
    let sock = p.poll_fds()[1];
    let pfds = if pfd.is_null() {
        &[][..]
    } else {
        // SAFETY: alsa-lib passes `nfds` entries.
        unsafe { std::slice::from_raw_parts(pfd, nfds as usize) }
    };
    let efd = p.poll_fds()[0];
    let sock_revents = pfds.iter().filter(|f| f.fd == sock).fold(0, |acc, f| acc | f.revents);
    let efd_revents = pfds.iter().filter(|f| f.fd == efd).fold(0, |acc, f| acc | f.revents);
    // SAFETY: a volatile read of our live ioplug's field (poll_revents may run unlocked; a torn
    // view is impossible on 64-bit, a stale one only delays publishing the read position).
    let appl = unsafe { ptr::read_volatile(ptr::addr_of!((*io).appl_ptr)) };
    let r = p.revents(sock_revents, efd_revents, Some(appl));
    if p.dead().is_some() {
        // POLLERR then reads as -ENODEV from snd_pcm_wait (pcm_state_to_error).
        // SAFETY: `io` is live; this is what snd_pcm_ioplug_set_state does.
        unsafe { (*io).state = sys::SND_PCM_STATE_DISCONNECTED };
    } else if p.in_xrun() {
        // Likewise POLLERR reads as -EPIPE only in the XRUN state; while alsa-lib still thinks
        // the stream runs it would turn into -EIO and the program would give up instead of
        // recovering with prepare.
        // SAFETY: `io` is live; this is what snd_pcm_ioplug_set_state does.
        unsafe { (*io).state = sys::SND_PCM_STATE_XRUN };
    }
    // SAFETY: `revents` is writable (checked non-null).
    unsafe { *revents = r };
    Ok(0)
}

unsafe fn delay(io: *mut sys::snd_pcm_ioplug_t, delayp: *mut sys::snd_pcm_sframes_t) -> Result<c_int, Errno> {
    // SAFETY: plain field reads of our live ioplug (alsa-lib holds the PCM lock).
    let (appl, hw) = unsafe { ((*io).appl_ptr, (*io).hw_ptr) };
    // SAFETY: `io` is live.
    let mut p = lock(unsafe { plugin(io) })?;
    p.check_reset(appl, hw)?;
    let d = p.delay()?;
    drop(p);
    if delayp.is_null() {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: `delayp` is writable.
    unsafe { *delayp = d as sys::snd_pcm_sframes_t };
    Ok(0)
}

//! The only module with `extern "C"`: the `_snd_pcm_shmix_vcard_open` entry point, its dlsym
//! version symbol, and the ioplug callbacks. Each callback is one guarded call into [`Card`]: a
//! panic never unwinds into alsa-lib, errors leave as `-errno`.
//! Runs in: the application's threads that call the PCM. RT: the pointer/poll callbacks are.
//!
//! Learned from alsa-lib 1.2.8 `src/pcm/pcm_ioplug.c`:
//! - With `SND_PCM_IOPLUG_FLAG_BOUNDARY_WA`, `pointer` returns the absolute position wrapped at
//!   `pcm->boundary` (the delta is computed against the last value, wrapping at the boundary).
//! - A negative `pointer` result sets the state to XRUN (or drops the stream while DRAINING),
//!   whatever it is; a state set with `snd_pcm_ioplug_set_state` survives only a `>= 0` result.
//! - `prepare`, `sw_params` and `poll_*` run without the PCM lock: the card has its own mutex.
//! - Suspend: nothing in ioplug produces SUSPENDED; the plugin sets it (`snd_pcm_ioplug_set_state`)
//!   from `pointer` (returning the unchanged position, since a negative result means XRUN) or
//!   `poll_revents` (with POLLERR, which `snd_pcm_wait` turns into `-ESTRPIPE` from the state).
//!   pcm.c's `bad_pcm_state` then fails reads, writes and `mmap_begin` with `-ESTRPIPE`; ioplug's
//!   `avail_update` does not (it only reports XRUN), exactly like the hw plugin.
//! - `snd_pcm_resume` calls the `resume` callback without the PCM lock and returns 0 whatever
//!   the callback returns (`snd_pcm_ioplug_resume`); with no callback it returns 0 too and the
//!   state stays SUSPENDED. So neither `-EAGAIN` nor `-ENOSYS` can reach the caller: the
//!   callback waits until the card is awake (as the kernel's RESUME ioctl waits for the card to
//!   power up) and restores the state itself. Defining it also sets SND_PCM_INFO_RESUME.

use std::ffi::{c_char, c_int, c_long, c_uint, c_ushort, CStr};
use std::fs::{File, OpenOptions};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::card::{Area, Card, Direction, Errno, IoView, PointerError, Readiness};
use crate::config::{Config, Value};
use crate::sys;
use crate::timer::{now_ns, TimerFd};

/// Runs one callback body: panics become `-EIO`, `Err(Errno(e))` becomes `-e`.
fn ffi_guard<T: From<i32>>(f: impl FnOnce() -> Result<T, Errno>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(n)) => n,
        Ok(Err(Errno(e))) => T::from(-e),
        Err(_) => T::from(-libc::EIO),
    }
}

/// `snd_pcm_uframes_t` (C `unsigned long`) as the card's `u64` positions.
#[allow(clippy::useless_conversion)] // the identity on 64-bit targets, a widening on 32-bit ones
fn frames(v: sys::snd_pcm_uframes_t) -> u64 {
    u64::from(v)
}

/// What `private_data` points at. Separate from the `snd_pcm_ioplug_t`, which alsa-lib writes to
/// (hw_ptr, appl_ptr, state) through its own pointers: that struct is only touched through `io`.
struct Plugin {
    io: *mut sys::snd_pcm_ioplug_t,
    card: Mutex<Card>,
}

static NAME: &CStr = c"shmix_vcard";

static CALLBACKS: sys::snd_pcm_ioplug_callback_t = sys::snd_pcm_ioplug_callback_t {
    start: Some(cb_start),
    stop: Some(cb_stop),
    pointer: Some(cb_pointer),
    transfer: Some(cb_transfer),
    close: Some(cb_close),
    hw_params: Some(cb_hw_params),
    hw_free: None,
    sw_params: Some(cb_sw_params),
    prepare: Some(cb_prepare),
    drain: None,
    pause: Some(cb_pause),
    resume: Some(cb_resume),
    poll_descriptors_count: None,
    poll_descriptors: None,
    poll_revents: Some(cb_poll_revents),
    dump: None,
    delay: None,
    query_chmaps: None,
    get_chmap: None,
    set_chmap: None,
};

/// alsa-lib's `snd_dlsym_verify()` looks this up before it trusts `_snd_pcm_shmix_vcard_open`.
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static __snd_pcm_shmix_vcard_open_dlsym_pcm_001: c_char = 0;

/// The plugin behind `io`.
///
/// # Safety
/// `io` is a live ioplug created by [`_snd_pcm_shmix_vcard_open`] (not yet closed).
unsafe fn plugin<'a>(io: *mut sys::snd_pcm_ioplug_t) -> &'a Plugin {
    // SAFETY: per the contract `io` is live and its private_data is the `Plugin` we leaked at open,
    // freed only in the close callback, after which alsa-lib calls nothing on it.
    unsafe { &*(*io).private_data.cast::<Plugin>() }
}

impl Plugin {
    fn lock(&self) -> Result<MutexGuard<'_, Card>, Errno> {
        // A poisoned lock means a callback panicked half way: refuse rather than guess.
        self.card.lock().map_err(|_| Errno(libc::EIO))
    }

    /// alsa-lib's side of the stream right now. Callbacks read it holding the card's lock, so
    /// that successive reads are ordered and appl_ptr only reads as going back after a real
    /// rewind (a read taken before the lock could be older than one another thread took later).
    fn view(&self) -> IoView {
        // SAFETY: `self.io` is live while callbacks run. appl_ptr and state are plain integers that
        // alsa-lib updates (under its lock, which some callbacks run without): a volatile read
        // of an aligned word gives some recent value, which is all the clock model needs.
        let (appl, state) = unsafe {
            (
                std::ptr::addr_of!((*self.io).appl_ptr).read_volatile(),
                std::ptr::addr_of!((*self.io).state).read_volatile(),
            )
        };
        IoView::new(frames(appl), state)
    }

    /// The interleaved ring buffer alsa-lib allocated (`mmap_rw = 1`), checked against the
    /// negotiated setup.
    fn area(&self) -> Result<Area, Errno> {
        // SAFETY: `self.io` is live; hw_params has run (prepare comes after it), so these fields
        // are filled; snd_pcm_ioplug_mmap_areas only reads the pcm.
        let (areas, channels, buffer_frames, period_frames) = unsafe {
            (
                sys::snd_pcm_ioplug_mmap_areas(self.io),
                (*self.io).channels,
                (*self.io).buffer_size,
                (*self.io).period_size,
            )
        };
        if areas.is_null() || channels == 0 {
            return Err(Errno(libc::EBADFD));
        }
        let card = self.lock()?;
        let sample_bits = card.config().format.sample_bytes() * 8;
        // SAFETY: alsa-lib returns an array of `channels` areas for this pcm, valid until munmap,
        // which happens only at hw_free/close.
        let areas = unsafe { std::slice::from_raw_parts(areas, channels as usize) };
        let base = areas[0].addr;
        let interleaved = areas
            .iter()
            .enumerate()
            .all(|(c, a)| a.addr == base && a.first == c as c_uint * sample_bits && a.step == channels * sample_bits);
        if base.is_null() || !interleaved {
            return Err(Errno(libc::EINVAL));
        }
        Ok(Area { base: base.cast(), frames: frames(buffer_frames), period_frames: frames(period_frames) })
    }
}

/// # Safety
/// Called by alsa-lib with a live `io` (all `cb_*` below share this contract).
unsafe extern "C" fn cb_start(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    // SAFETY: alsa-lib passes the live ioplug this plugin created.
    let p = unsafe { plugin(io) };
    ffi_guard(|| {
        let mut card = p.lock()?;
        let view = p.view();
        card.start(now_ns(), view).map(|()| 0)
    })
}

/// # Safety
/// See [`cb_start`].
unsafe extern "C" fn cb_stop(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    // SAFETY: alsa-lib passes the live ioplug this plugin created.
    let p = unsafe { plugin(io) };
    ffi_guard(|| {
        let mut card = p.lock()?;
        let view = p.view();
        card.stop(now_ns(), view);
        Ok(0)
    })
}

/// # Safety
/// See [`cb_start`].
unsafe extern "C" fn cb_pointer(io: *mut sys::snd_pcm_ioplug_t) -> sys::snd_pcm_sframes_t {
    // SAFETY: alsa-lib passes the live ioplug this plugin created.
    let p = unsafe { plugin(io) };
    ffi_guard(|| {
        let mut card = p.lock()?;
        let view = p.view();
        match card.pointer(now_ns(), view) {
            Ok(pos) => Ok(pos as c_long),
            Err(PointerError::Xrun) => Err(Errno(libc::EPIPE)),
            Err(e @ (PointerError::Gone | PointerError::Suspended)) => {
                // A negative result would turn into XRUN (pcm_ioplug.c hw_ptr_update): report no
                // progress instead and mark the stream DISCONNECTED (reads/writes get -ENODEV) or
                // SUSPENDED (-ESTRPIPE).
                let state = if e == PointerError::Gone {
                    sys::SND_PCM_STATE_DISCONNECTED
                } else {
                    sys::SND_PCM_STATE_SUSPENDED
                };
                // SAFETY: `io` is live; set_state only stores the state (we run under the pcm lock).
                unsafe { sys::snd_pcm_ioplug_set_state(io, state) };
                // SAFETY: `io` is live; hw_ptr is the position we reported last.
                Ok(unsafe { std::ptr::addr_of!((*io).hw_ptr).read_volatile() } as c_long)
            }
        }
    })
}

/// alsa-lib calls `transfer` in `snd_pcm_mmap_commit` of an MMAP-access playback (before it moves
/// appl_ptr) and in `mmap_begin` of an MMAP-access capture, also with `mmap_rw = 1`
/// (pcm_ioplug.c 1.2.8: `snd_pcm_ioplug_mmap_commit`, `snd_pcm_ioplug_mmap_begin_capture`); RW
/// access never calls it. The card copies nothing here (the data is already in the buffer): it
/// only looks at appl_ptr, so that a rewind followed by a bigger mmap write is seen. Returning
/// `size` is what alsa-lib does without the callback.
///
/// # Safety
/// See [`cb_start`]; `areas` is not used.
unsafe extern "C" fn cb_transfer(
    io: *mut sys::snd_pcm_ioplug_t,
    _areas: *const sys::snd_pcm_channel_area_t,
    _offset: sys::snd_pcm_uframes_t,
    size: sys::snd_pcm_uframes_t,
) -> sys::snd_pcm_sframes_t {
    // SAFETY: alsa-lib passes the live ioplug this plugin created.
    let p = unsafe { plugin(io) };
    ffi_guard(|| {
        let mut card = p.lock()?;
        let view = p.view();
        card.mmap_commit(now_ns(), view);
        Ok(size as c_long)
    })
}

/// # Safety
/// See [`cb_start`]. Nothing calls into the plugin after this returns.
unsafe extern "C" fn cb_close(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    ffi_guard(|| {
        // SAFETY: `io` and its Plugin were leaked from Boxes at open and are freed exactly once, here:
        // alsa-lib calls close last (pcm_ioplug.c snd_pcm_ioplug_close) and only frees its own
        // private struct afterwards. Dropping the Card closes the files and the timerfd.
        unsafe {
            let plugin = Box::from_raw((*io).private_data.cast::<Plugin>());
            drop(plugin);
            drop(Box::from_raw(io));
        }
        Ok(0)
    })
}

/// # Safety
/// See [`cb_start`].
unsafe extern "C" fn cb_hw_params(io: *mut sys::snd_pcm_ioplug_t, _params: *mut sys::snd_pcm_hw_params_t) -> c_int {
    // SAFETY: alsa-lib passes the live ioplug this plugin created.
    let p = unsafe { plugin(io) };
    ffi_guard(|| p.lock()?.check_gone(now_ns()).map(|()| 0))
}

/// # Safety
/// See [`cb_start`]; `params` is the sw_params being installed.
unsafe extern "C" fn cb_sw_params(io: *mut sys::snd_pcm_ioplug_t, params: *mut sys::snd_pcm_sw_params_t) -> c_int {
    // SAFETY: alsa-lib passes the live ioplug this plugin created.
    let p = unsafe { plugin(io) };
    ffi_guard(|| {
        let (mut avail_min, mut stop, mut boundary) = (0, 0, 0);
        // SAFETY: `params` is a valid sw_params from alsa-lib for this call; the getters only read
        // it and write the u-frames we pass.
        let r = unsafe {
            sys::snd_pcm_sw_params_get_avail_min(params, &mut avail_min)
                .min(sys::snd_pcm_sw_params_get_stop_threshold(params, &mut stop))
                .min(sys::snd_pcm_sw_params_get_boundary(params, &mut boundary))
        };
        if r < 0 {
            return Err(Errno(-r));
        }
        p.lock()?.sw_params(now_ns(), frames(avail_min), frames(stop), frames(boundary)).map(|()| 0)
    })
}

/// # Safety
/// See [`cb_start`].
unsafe extern "C" fn cb_prepare(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    // SAFETY: alsa-lib passes the live ioplug this plugin created.
    let p = unsafe { plugin(io) };
    ffi_guard(|| {
        p.lock()?.check_gone(now_ns())?;
        // The mmap areas exist from here on (hw_params -> sw_params -> snd_pcm_mmap -> prepare) and
        // change with each hw_params: take them at every prepare.
        let area = p.area()?;
        let mut card = p.lock()?;
        let view = p.view();
        card.prepare(now_ns(), area, view).map(|()| 0)
    })
}

/// # Safety
/// See [`cb_start`].
unsafe extern "C" fn cb_pause(io: *mut sys::snd_pcm_ioplug_t, enable: c_int) -> c_int {
    // SAFETY: alsa-lib passes the live ioplug this plugin created.
    let p = unsafe { plugin(io) };
    ffi_guard(|| {
        let mut card = p.lock()?;
        let view = p.view();
        card.pause(now_ns(), enable != 0, view).map(|()| 0)
    })
}

/// # Safety
/// See [`cb_start`]; `revents` is writable.
unsafe extern "C" fn cb_poll_revents(
    io: *mut sys::snd_pcm_ioplug_t,
    _pfd: *mut libc::pollfd,
    _nfds: c_uint,
    revents: *mut c_ushort,
) -> c_int {
    // SAFETY: alsa-lib passes the live ioplug this plugin created.
    let p = unsafe { plugin(io) };
    ffi_guard(|| {
        let mut card = p.lock()?;
        let view = p.view();
        let ready = card.poll_ready(now_ns(), view)?;
        let io_event = if card.direction() == Direction::Playback { libc::POLLOUT } else { libc::POLLIN };
        let events = match ready {
            Readiness::Wait => 0,
            Readiness::Ready => io_event,
            Readiness::Error => {
                // SAFETY: `io` is live; set_state only stores the state. poll_revents runs without
                // the pcm lock, but the caller is the thread that drives this pcm.
                unsafe { sys::snd_pcm_ioplug_set_state(io, sys::SND_PCM_STATE_SUSPENDED) };
                // What the kernel reports for a SUSPENDED stream.
                io_event | libc::POLLERR
            }
        };
        // SAFETY: `revents` points at alsa-lib's output variable for this call.
        unsafe { revents.write(events as c_ushort) };
        Ok(0)
    })
}

/// `snd_pcm_resume`: waits until the card is awake (`suspend_ms` after it fell asleep), then the
/// clock continues and alsa-lib's state goes back to what it was (RUNNING, PREPARED, ...).
/// alsa-lib ignores the result (see the module docs), so a not-suspended card just returns.
///
/// # Safety
/// See [`cb_start`].
unsafe extern "C" fn cb_resume(io: *mut sys::snd_pcm_ioplug_t) -> c_int {
    // SAFETY: alsa-lib passes the live ioplug this plugin created.
    let p = unsafe { plugin(io) };
    ffi_guard(|| loop {
        let mut card = p.lock()?;
        let view = p.view();
        match card.resume(now_ns(), view) {
            Ok(state) => {
                // SAFETY: `io` is live; set_state only stores the state. resume runs without the
                // pcm lock ("need own locking"), but the caller is the thread that drives this pcm.
                unsafe { sys::snd_pcm_ioplug_set_state(io, state) };
                return Ok(0);
            }
            Err(Errno(libc::EAGAIN)) => {
                let wake_ns = card.asleep().map_or(0, |s| s.wake_ns);
                // Sleep without the card's lock.
                drop(card);
                std::thread::sleep(std::time::Duration::from_nanos(wake_ns.saturating_sub(now_ns())));
            }
            Err(e) => return Err(e),
        }
    })
}

/// Reads the `pcm.NAME { ... }` block into `(key, value)` pairs.
///
/// # Safety
/// `conf` is a live compound config node for the duration of the call.
unsafe fn config_entries(conf: *mut sys::snd_config_t) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    // SAFETY: iterating a live compound with alsa-lib's own iterator functions (the
    // snd_config_for_each macro); ids and string values are NUL-terminated and owned by the nodes,
    // copied out before the next call.
    unsafe {
        let end = sys::snd_config_iterator_end(conf);
        let mut it = sys::snd_config_iterator_first(conf);
        while it != end {
            let n = sys::snd_config_iterator_entry(it);
            it = sys::snd_config_iterator_next(it);
            let mut id: *const c_char = std::ptr::null();
            if sys::snd_config_get_id(n, &mut id) < 0 || id.is_null() {
                continue;
            }
            let key = CStr::from_ptr(id).to_string_lossy().into_owned();
            let value = match sys::snd_config_get_type(n) {
                sys::SND_CONFIG_TYPE_INTEGER | sys::SND_CONFIG_TYPE_INTEGER64 => {
                    let mut v = 0i64;
                    if sys::snd_config_get_integer64(n, &mut v) < 0 {
                        let mut l: c_long = 0;
                        sys::snd_config_get_integer(n, &mut l);
                        v = l as i64;
                    }
                    Value::Int(v)
                }
                sys::SND_CONFIG_TYPE_REAL => {
                    let mut v = 0f64;
                    sys::snd_config_get_ireal(n, &mut v);
                    Value::Real(v)
                }
                sys::SND_CONFIG_TYPE_STRING => {
                    let mut s: *const c_char = std::ptr::null();
                    if sys::snd_config_get_string(n, &mut s) < 0 || s.is_null() {
                        Value::Other
                    } else {
                        Value::Str(CStr::from_ptr(s).to_string_lossy().into_owned())
                    }
                }
                _ => Value::Other,
            };
            out.push((key, value));
        }
    }
    out
}

fn open_file(key: &str, path: &Path, write: bool) -> Result<File, Errno> {
    let mut o = OpenOptions::new();
    if write {
        o.append(true).create(true);
    } else {
        o.read(true);
    }
    o.open(path).map_err(|e| {
        eprintln!("shmix_vcard: cannot open {key} '{}': {e}", path.display());
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    })
}

/// Builds the card (config, files, timerfd) before any ioplug exists, so failures free plainly.
fn build_card(entries: Vec<(String, Value)>, dir: Direction) -> Result<Card, Errno> {
    let cfg = Config::from_entries(entries).map_err(|e| {
        eprintln!("{e}");
        Errno(libc::EINVAL)
    })?;
    // `gone_file` present: the card is unplugged, as `snd_pcm_open` of a pulled-out card fails.
    if cfg.gone_file.as_deref().is_some_and(|p| std::fs::symlink_metadata(p).is_ok()) {
        return Err(Errno(libc::ENODEV));
    }
    let playback_file = match (&cfg.playback_file, dir) {
        (Some(p), Direction::Playback) => Some(open_file("playback_file", p, true)?),
        _ => None,
    };
    let capture_file = match (&cfg.capture_file, &cfg.playback_file, dir) {
        (_, Some(p), Direction::Capture) if cfg.loopback => {
            // Created if playback has not run yet; opened for reading what playback appends.
            drop(open_file("playback_file", p, true)?);
            Some(open_file("playback_file", p, false)?)
        }
        (_, None, Direction::Capture) if cfg.loopback => {
            eprintln!("shmix_vcard: loopback needs a playback_file");
            return Err(Errno(libc::EINVAL));
        }
        (Some(p), _, Direction::Capture) => Some(open_file("capture_file", p, false)?),
        _ => None,
    };
    let timer = TimerFd::new().map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EMFILE)))?;
    let clock_file = match (&cfg.clock_file, dir) {
        (Some(p), Direction::Playback) => Some(open_file("clock_file", p, true)?),
        _ => None,
    };
    Ok(Card::new(cfg, dir, timer, playback_file, capture_file).with_clock_file(clock_file))
}

/// Sets the one format/rate/channel count and the period/buffer limits.
///
/// # Safety
/// `io` was created by `snd_pcm_ioplug_create` and is not yet deleted.
unsafe fn set_hw_constraints(io: *mut sys::snd_pcm_ioplug_t, cfg: &Config) -> Result<(), Errno> {
    let fb = cfg.frame_bytes();
    let access = [sys::SND_PCM_ACCESS_MMAP_INTERLEAVED, sys::SND_PCM_ACCESS_RW_INTERLEAVED];
    let format = [cfg.format.to_alsa() as c_uint];
    let period_max = cfg.buffer_max_frames / 2;
    let hw = |p: sys::_bindgen_ty_7| p as c_int;
    // SAFETY: `io` is a live ioplug; the lists are valid for their lengths during each call
    // (alsa-lib copies them).
    let results = unsafe {
        [
            sys::snd_pcm_ioplug_set_param_list(
                io,
                hw(sys::SND_PCM_IOPLUG_HW_ACCESS),
                access.len() as c_uint,
                access.as_ptr(),
            ),
            sys::snd_pcm_ioplug_set_param_list(io, hw(sys::SND_PCM_IOPLUG_HW_FORMAT), 1, format.as_ptr()),
            sys::snd_pcm_ioplug_set_param_minmax(io, hw(sys::SND_PCM_IOPLUG_HW_CHANNELS), cfg.channels, cfg.channels),
            sys::snd_pcm_ioplug_set_param_minmax(io, hw(sys::SND_PCM_IOPLUG_HW_RATE), cfg.rate, cfg.rate),
            sys::snd_pcm_ioplug_set_param_minmax(
                io,
                hw(sys::SND_PCM_IOPLUG_HW_PERIOD_BYTES),
                cfg.period_min_frames * fb,
                period_max * fb,
            ),
            sys::snd_pcm_ioplug_set_param_minmax(
                io,
                hw(sys::SND_PCM_IOPLUG_HW_BUFFER_BYTES),
                2 * cfg.period_min_frames * fb,
                cfg.buffer_max_frames * fb,
            ),
            sys::snd_pcm_ioplug_set_param_minmax(io, hw(sys::SND_PCM_IOPLUG_HW_PERIODS), 2, 1024),
        ]
    };
    match results.into_iter().find(|&r| r < 0) {
        Some(r) => Err(Errno(-r)),
        None => Ok(()),
    }
}

/// The entry point alsa-lib calls for `type shmix_vcard`.
///
/// # Safety
/// Called by alsa-lib's `snd_pcm_open_conf` with valid `pcmp`, `name` and `conf`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _snd_pcm_shmix_vcard_open(
    pcmp: *mut *mut sys::snd_pcm_t,
    name: *const c_char,
    _root: *mut sys::snd_config_t,
    conf: *mut sys::snd_config_t,
    stream: sys::snd_pcm_stream_t,
    mode: c_int,
) -> c_int {
    ffi_guard(|| {
        let dir = if stream == sys::SND_PCM_STREAM_PLAYBACK { Direction::Playback } else { Direction::Capture };
        // SAFETY: alsa-lib hands us the live `pcm.NAME` compound for the duration of open.
        let entries = unsafe { config_entries(conf) };
        let card = build_card(entries, dir)?;
        let cfg = card.config().clone();

        let io = Box::into_raw(Box::new(sys::snd_pcm_ioplug_t {
            version: sys::SND_PCM_IOPLUG_VERSION,
            name: NAME.as_ptr(),
            flags: sys::SND_PCM_IOPLUG_FLAG_BOUNDARY_WA,
            poll_fd: card.poll_fd(),
            // A timerfd polls readable (POLLIN) for both directions; cb_poll_revents turns that
            // into POLLOUT for playback.
            poll_events: libc::POLLIN as c_uint,
            mmap_rw: 1,
            callback: &CALLBACKS,
            ..Default::default()
        }));
        let plugin = Box::into_raw(Box::new(Plugin { io, card: Mutex::new(card) }));
        // SAFETY: `io` is ours and not shared yet; it is heap-allocated and never moves (alsa-lib
        // keeps &io->hw_ptr and &io->appl_ptr). NAME and CALLBACKS are statics.
        let err = unsafe {
            (*io).private_data = plugin.cast();
            sys::snd_pcm_ioplug_create(io, name, stream, mode)
        };
        if err < 0 {
            // SAFETY: create failed before registering anything that calls close: we still own both.
            unsafe {
                drop(Box::from_raw(plugin));
                drop(Box::from_raw(io));
            }
            return Err(Errno(-err));
        }
        // SAFETY: `io` was just created and is not deleted.
        if let Err(e) = unsafe { set_hw_constraints(io, &cfg) } {
            // SAFETY: delete closes the pcm, which calls cb_close and frees `io` and `plugin`.
            unsafe { sys::snd_pcm_ioplug_delete(io) };
            return Err(e);
        }
        // SAFETY: `pcmp` is alsa-lib's out pointer; `(*io).pcm` was filled by create.
        unsafe { *pcmp = (*io).pcm };
        Ok(0)
    })
}

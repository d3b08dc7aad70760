//! Opening a PCM: the config, the connection to shmixd (or the configured `fallback` PCM when
//! it cannot be reached), the ioplug's creation and its hardware constraints; and closing it.
//! Runs in the host program's calling thread. RT: no.

use super::*;

/// The daemon is not there (as opposed to there and refusing): the cases `fallback` covers.
pub(super) fn unreachable(errno: i32) -> bool {
    matches!(errno, libc::ENOENT | libc::ECONNREFUSED | libc::ENOTDIR)
}

/// Opens the `fallback` PCM `name` in the same configuration tree, for `stream` and `mode`.
///
/// # Safety
/// `pcmp` is alsa-lib's out pointer and `root` the configuration tree it handed to the open.
pub(super) unsafe fn open_fallback(
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

pub(super) unsafe fn open(
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
    let device_name = config::device_name(&cfg, shmix_shared::socket::secure_env(config::DEVICE_ENV).as_deref())
        .map_err(|msg| {
            user_error(&msg);
            Errno(libc::EINVAL)
        })?;
    let path = resolve_socket_path(cfg.socket.as_deref());
    let conn = match Conn::connect(&path, direction, &device_name) {
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
            "shmix: connected to {} ({direction:?}): device '{}' {} {} Hz {} ch, period {}",
            conn.path().display(),
            if device_name.is_empty() { "(default)" } else { &device_name },
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

pub(super) unsafe fn set_limits(
    io: *mut sys::snd_pcm_ioplug_t,
    device: &AudioParams,
    max_buffer_ms: u32,
) -> Result<(), Errno> {
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

pub(super) unsafe fn close(io: *mut sys::snd_pcm_ioplug_t) -> Result<c_int, Errno> {
    // SAFETY: `private_data` is the Box made in `open`; close is called once, last.
    let plugin = unsafe { Box::from_raw((*io).private_data as *mut Plugin) };
    if let Ok(p) = plugin.pcm.lock() {
        p.close();
    }
    drop(plugin); // closes the socket (the daemon destroys the stream), unmaps, frees `io`
    Ok(0)
}

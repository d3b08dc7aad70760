//! hw_params (the stream created on the daemon, parameters refitted when a program asks for
//! something the constraints let through), sw_params, prepare, and pointing alsa-lib's mmap areas
//! at the shared ring. Runs in the host program's calling thread(s). RT: no.

use super::*;

pub(super) unsafe fn hw_params(
    io: *mut sys::snd_pcm_ioplug_t,
    hwp: *mut sys::snd_pcm_hw_params_t,
) -> Result<c_int, Errno> {
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
pub(super) unsafe fn refit(
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

pub(super) unsafe fn sw_params(
    io: *mut sys::snd_pcm_ioplug_t,
    params: *mut sys::snd_pcm_sw_params_t,
) -> Result<c_int, Errno> {
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

pub(super) unsafe fn prepare(io: *mut sys::snd_pcm_ioplug_t) -> Result<c_int, Errno> {
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
pub(super) fn ring_of(p: &Pcm) -> Option<(*mut u8, u32)> {
    Some((p.ring_region()?.0, p.frame_bytes()?))
}

/// Points alsa-lib's running mmap areas at the SHM ring `region` (base, frame bytes;
/// MMAP_INTERLEAVED only). Returns whether it did; `transfer` verifies it on every call anyway.
///
/// # Safety
/// `io` is live, its PCM is not locked by this thread, and neither is our mutex (for capture,
/// snd_pcm_mmap_begin calls transfer).
pub(super) unsafe fn repoint_mmap_areas(io: *mut sys::snd_pcm_ioplug_t, region: Option<(*mut u8, u32)>) -> bool {
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

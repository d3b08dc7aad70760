//! The data path's callback bodies: transfer (the one copy, or a publication for mmap clients),
//! drain, the poll descriptors and their revents, and delay. Runs in the host program's calling
//! thread(s). RT: transfer, poll_revents and delay yes.

use super::*;

pub(super) unsafe fn transfer(
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

pub(super) unsafe fn drain(io: *mut sys::snd_pcm_ioplug_t) -> Result<c_int, Errno> {
    // SAFETY: `io` is live.
    let plugin = unsafe { plugin(io) };
    // `io.nonblock` is written by snd_pcm_nonblock/snd_pcm_abort, possibly from a signal handler
    // or another thread: read it fresh every time.
    // SAFETY: a volatile read of an int field of our live ioplug.
    let nonblock = || unsafe { ptr::read_volatile(ptr::addr_of!((*io).nonblock)) } != 0;
    Pcm::drain(&plugin.pcm, &nonblock).map(|()| 0)
}

pub(super) unsafe fn poll_descriptors(
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

pub(super) unsafe fn poll_revents(
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

pub(super) unsafe fn delay(
    io: *mut sys::snd_pcm_ioplug_t,
    delayp: *mut sys::snd_pcm_sframes_t,
) -> Result<c_int, Errno> {
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

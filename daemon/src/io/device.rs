//! The sound device: every ALSA call and all of the daemon's FFI `unsafe` live here (opening and
//! negotiating in `setup`). `Device` owns one `snd_pcm_t`, opened for playback or capture with
//! `MMAP_INTERLEAVED` access, and closes it on drop.
//! Opened at startup (main thread) or by the device manager (`io::manager`; RT: no), then moved
//! to the mix thread, which is its only user until it hands it back (RT: the cycle methods, poll
//! revents, avail_update, mmap begin/commit, prepare/start/resume, make no allocation of ours).

use std::ffi::CStr;
use std::fmt;
use std::ptr;

use alsa_sys as sys;
use shmix_shared::chmap::ChannelMap;
use shmix_shared::AudioParams;

use crate::dsp::convert;

mod setup;

pub use setup::{cards, OpenError, Request};

/// An alsa-lib call that failed: the function and the (positive) errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlsaError {
    /// The alsa-lib function.
    pub func: &'static str,
    /// Positive errno.
    pub errno: i32,
}

impl fmt::Display for AlsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: snd_strerror returns a static NUL-terminated string for any value.
        let msg = unsafe { CStr::from_ptr(sys::snd_strerror(-self.errno)) };
        write!(f, "{}: {}", self.func, msg.to_string_lossy())
    }
}

impl std::error::Error for AlsaError {}

/// Turns alsa-lib's `-errno` convention into a `Result`, keeping the function's name.
fn check<T: Into<i64> + Copy>(func: &'static str, r: T) -> Result<T, AlsaError> {
    let v: i64 = r.into();
    if v < 0 {
        Err(AlsaError { func, errno: (-v) as i32 })
    } else {
        Ok(r)
    }
}
/// What the scheduler may do with a device, found when it is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// Opened for timer scheduling (long buffer, no period wakeups).
    pub timer: bool,
    /// Frames queued on it may be rewritten (`snd_pcm_rewind`).
    pub rewind: bool,
    /// Its pointer moves in whole periods only.
    pub batch: bool,
    /// Frames it fetches ahead of its play position (never to be rewritten).
    pub fifo_frames: u32,
}

/// An open playback PCM, configured for mmap interleaved access.
#[derive(Debug)]
pub struct Device {
    pcm: *mut sys::snd_pcm_t,
    name: String,
    params: AudioParams,
    chmap: ChannelMap,
    frame_bytes: usize,
    capture: bool,
    caps: Caps,
}

// SAFETY: alsa-lib PCM handles may be used from any thread as long as calls are not concurrent;
// the Device is configured on the control thread, then moved to the mix thread and used only
// there (it is not Sync).
unsafe impl Send for Device {}
impl Device {
    /// The device's channel map (its own, else the standard map for its channels).
    #[must_use]
    pub fn chmap(&self) -> ChannelMap {
        self.chmap
    }

    /// The configured parameters.
    #[must_use]
    pub fn params(&self) -> AudioParams {
        self.params
    }

    /// What the scheduler may do with it.
    #[must_use]
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Frames queued that may be taken back (`snd_pcm_rewindable`). RT: yes.
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn rewindable(&self) -> Result<usize, AlsaError> {
        // SAFETY: `pcm` is open.
        let r = check("snd_pcm_rewindable", unsafe { sys::snd_pcm_rewindable(self.pcm) })?;
        Ok(r as usize)
    }

    /// Takes back up to `frames` queued frames (`snd_pcm_rewind`); returns how many it took.
    /// RT: yes.
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn rewind(&mut self, frames: usize) -> Result<usize, AlsaError> {
        // SAFETY: `pcm` is open.
        let r = check("snd_pcm_rewind", unsafe { sys::snd_pcm_rewind(self.pcm, frames as sys::snd_pcm_uframes_t) })?;
        Ok(r as usize)
    }

    /// The name it was opened with.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of poll descriptors.
    #[must_use]
    pub fn poll_count(&self) -> usize {
        // SAFETY: `pcm` is open.
        let n = unsafe { sys::snd_pcm_poll_descriptors_count(self.pcm) };
        usize::try_from(n).unwrap_or(0)
    }

    /// Fills `pfds` (exactly `poll_count()` long) with the device's descriptors.
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn poll_fill(&self, pfds: &mut [libc::pollfd]) -> Result<(), AlsaError> {
        // SAFETY: `pcm` is open; `pfds` has room for `len` entries.
        check("snd_pcm_poll_descriptors", unsafe {
            sys::snd_pcm_poll_descriptors(self.pcm, pfds.as_mut_ptr(), pfds.len() as libc::c_uint)
        })?;
        Ok(())
    }

    /// Demangles the device's poll results into POLLOUT/POLLERR. POLLERR is turned into the
    /// error of the state behind it, as `snd_pcm_wait` does: `avail_update` does not report
    /// SUSPENDED (neither hw nor ioplug PCMs do), and with less than a period free no
    /// `mmap_begin` would either, so the loop would spin on POLLERR for as long as the device
    /// sleeps.
    ///
    /// # Errors
    /// The alsa-lib error; with POLLERR: `EPIPE` (XRUN), `ESTRPIPE` (SUSPENDED), `ENODEV`
    /// (DISCONNECTED).
    pub fn revents(&self, pfds: &mut [libc::pollfd]) -> Result<u16, AlsaError> {
        let mut rev: libc::c_ushort = 0;
        // SAFETY: `pcm` is open; `pfds` came from poll_fill; `rev` is a local.
        check("snd_pcm_poll_descriptors_revents", unsafe {
            sys::snd_pcm_poll_descriptors_revents(self.pcm, pfds.as_mut_ptr(), pfds.len() as libc::c_uint, &mut rev)
        })?;
        if rev & libc::POLLERR as libc::c_ushort != 0 {
            // SAFETY: `pcm` is open.
            let errno = match unsafe { sys::snd_pcm_state(self.pcm) } {
                sys::SND_PCM_STATE_XRUN => libc::EPIPE,
                sys::SND_PCM_STATE_SUSPENDED => libc::ESTRPIPE,
                sys::SND_PCM_STATE_DISCONNECTED => libc::ENODEV,
                _ => return Ok(rev),
            };
            return Err(AlsaError { func: "snd_pcm_state", errno });
        }
        Ok(rev)
    }

    /// Frames the device can take now.
    ///
    /// # Errors
    /// `-EPIPE` (xrun), `-ESTRPIPE` (suspended), `-ENODEV` (gone) and the like.
    pub fn avail_update(&self) -> Result<usize, AlsaError> {
        // SAFETY: `pcm` is open.
        let r = check("snd_pcm_avail_update", unsafe { sys::snd_pcm_avail_update(self.pcm) })?;
        Ok(r as usize)
    }

    /// `snd_pcm_prepare`.
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn prepare(&self) -> Result<(), AlsaError> {
        // SAFETY: `pcm` is open.
        check("snd_pcm_prepare", unsafe { sys::snd_pcm_prepare(self.pcm) }).map(drop)
    }

    /// `snd_pcm_drop`: stops the device (it keeps its setup; `restart` starts it again).
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn stop(&self) -> Result<(), AlsaError> {
        // SAFETY: `pcm` is open.
        check("snd_pcm_drop", unsafe { sys::snd_pcm_drop(self.pcm) }).map(drop)
    }

    /// `snd_pcm_start`.
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn start(&self) -> Result<(), AlsaError> {
        // SAFETY: `pcm` is open.
        check("snd_pcm_start", unsafe { sys::snd_pcm_start(self.pcm) }).map(drop)
    }

    /// `snd_pcm_resume` (after -ESTRPIPE).
    ///
    /// # Errors
    /// `EAGAIN` while the device is still suspended; others: prepare instead.
    pub fn resume(&self) -> Result<(), AlsaError> {
        // SAFETY: `pcm` is open.
        check("snd_pcm_resume", unsafe { sys::snd_pcm_resume(self.pcm) })?;
        // An ioplug device without a resume callback returns 0 and stays SUSPENDED
        // (pcm_ioplug.c): report that as "cannot resume" so the caller prepares instead of
        // counting a new suspend every cycle.
        // SAFETY: `pcm` is open.
        if unsafe { sys::snd_pcm_state(self.pcm) } == sys::SND_PCM_STATE_SUSPENDED {
            return Err(AlsaError { func: "snd_pcm_resume", errno: libc::ENOSYS });
        }
        Ok(())
    }

    /// `snd_pcm_mmap_begin` for up to `frames` frames: the start of the contiguous run it
    /// grants (None when it grants nothing), its offset and its length in frames. Refuses a
    /// layout that is not plain interleaved (area 0 at bit 0, stepping one frame), since the
    /// callers treat the run as one byte range. RT: yes.
    fn mmap_begin(&mut self, frames: usize) -> Result<(Option<*mut u8>, sys::snd_pcm_uframes_t, usize), AlsaError> {
        let mut areas: *const sys::snd_pcm_channel_area_t = ptr::null();
        let mut offset: sys::snd_pcm_uframes_t = 0;
        let mut n = frames as sys::snd_pcm_uframes_t;
        // SAFETY: `pcm` is open; all out pointers are locals.
        check("snd_pcm_mmap_begin", unsafe { sys::snd_pcm_mmap_begin(self.pcm, &mut areas, &mut offset, &mut n) })?;
        if n == 0 || areas.is_null() {
            return Ok((None, offset, 0));
        }
        // SAFETY: mmap_begin returned non-null areas (at least one channel).
        let a = unsafe { &*areas };
        if a.step != (self.frame_bytes * 8) as libc::c_uint || a.first != 0 {
            // Not plain interleaved: refuse to touch it; nothing was committed.
            return Err(AlsaError { func: "snd_pcm_mmap_begin(layout)", errno: libc::EINVAL });
        }
        // SAFETY: with that layout frames [offset, offset + n) are one contiguous byte range
        // inside the device's buffer, so the offset stays inside it.
        let base = unsafe { a.addr.cast::<u8>().add(offset as usize * self.frame_bytes) };
        Ok((Some(base), offset, n as usize))
    }

    /// Writes up to `frames` frames through the mmap area: `fill` gets one contiguous run of
    /// the device's interleaved bytes (possibly fewer frames, at the end of the buffer) and
    /// returns how many frames it wrote; those are committed. Returns the frames committed.
    ///
    /// # Errors
    /// The alsa-lib error of begin or commit.
    pub fn write_mmap(&mut self, frames: usize, fill: impl FnOnce(&mut [u8]) -> usize) -> Result<usize, AlsaError> {
        let (run, offset, n) = self.mmap_begin(frames)?;
        let written = match run {
            None => 0,
            // SAFETY: `mmap_begin` checked the run is `n` whole frames of the device's buffer,
            // ours to write until commit; nothing else aliases it meanwhile.
            Some(base) => fill(unsafe { std::slice::from_raw_parts_mut(base, n * self.frame_bytes) }).min(n),
        };
        // SAFETY: `pcm` is open; commits what we wrote at the offset begin returned.
        let c = check("snd_pcm_mmap_commit", unsafe {
            sys::snd_pcm_mmap_commit(self.pcm, offset, written as sys::snd_pcm_uframes_t)
        })?;
        Ok(c as usize)
    }

    /// Reads up to `frames` frames through the mmap area (capture): `take` gets one contiguous
    /// run of the device's interleaved bytes (possibly fewer frames, at the end of the buffer);
    /// that run is committed (consumed). Returns the frames committed. RT: yes.
    ///
    /// # Errors
    /// The alsa-lib error of begin or commit.
    pub fn read_mmap(&mut self, frames: usize, take: impl FnOnce(&[u8])) -> Result<usize, AlsaError> {
        let (run, offset, n) = self.mmap_begin(frames)?;
        if let Some(base) = run {
            // SAFETY: `mmap_begin` checked the run is `n` whole frames of the device's buffer,
            // readable until commit.
            take(unsafe { std::slice::from_raw_parts(base, n * self.frame_bytes) });
        }
        let n = n as sys::snd_pcm_uframes_t;
        // SAFETY: `pcm` is open; commits the run begin returned.
        let c = check("snd_pcm_mmap_commit", unsafe { sys::snd_pcm_mmap_commit(self.pcm, offset, n) })?;
        Ok(c as usize)
    }

    /// Capture: prepare and start (after an open or an overrun). RT: yes (no allocation).
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn restart_capture(&mut self) -> Result<(), AlsaError> {
        self.prepare()?;
        self.start()
    }

    /// Fills the device with silence (before a start), up to `limit` frames; returns the
    /// frames.
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn prefill_silence(&mut self, limit: usize) -> Result<usize, AlsaError> {
        let format = self.params.format;
        let fb = self.frame_bytes;
        let mut total = 0;
        loop {
            let avail = self.avail_update()?.min(limit - total);
            if avail == 0 {
                return Ok(total);
            }
            let n = self.write_mmap(avail, |area| {
                convert::silence(format, area);
                area.len() / fb
            })?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Prepare, prefill with up to `prefill` frames of silence and start: from a fresh open or
    /// after an xrun. Returns the frames of silence queued.
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn restart(&mut self, prefill: usize) -> Result<usize, AlsaError> {
        self.prepare()?;
        let n = self.prefill_silence(prefill)?;
        self.start()?;
        Ok(n)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: `pcm` is open and owned by us; closed exactly once here.
        unsafe {
            sys::snd_pcm_drop(self.pcm);
            sys::snd_pcm_close(self.pcm);
        }
    }
}

//! The sound device: every ALSA call and all of the daemon's FFI `unsafe` live here. `Device`
//! owns one `snd_pcm_t` opened for playback with `MMAP_INTERLEAVED` access and closes it on drop.
//! Opened and configured on the control thread (RT: no), then moved to the mix thread, which is
//! its only user from then on (RT: the cycle methods — poll revents, avail_update, mmap
//! begin/commit, prepare/start/resume — make no allocation of ours).

use std::ffi::{CStr, CString};
use std::fmt;
use std::ptr;

use alsa_sys as sys;
use shmix_shared::chmap::{self, ChannelMap};
use shmix_shared::{AudioParams, SampleFormat};

use crate::dsp::convert;

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

/// What the command line asked for; `None` means "the device's own choice".
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Sample format.
    pub format: Option<SampleFormat>,
    /// Rate in Hz.
    pub rate: Option<u32>,
    /// Channels.
    pub channels: Option<u32>,
    /// Frames per period.
    pub period_frames: u32,
    /// Periods per buffer.
    pub periods: u32,
}

/// Device setup errors (control thread, startup only).
#[derive(Debug)]
pub enum OpenError {
    /// An alsa-lib call failed.
    Alsa(AlsaError),
    /// The device is unusable for a stated reason.
    Refused(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Alsa(e) => write!(f, "{e}"),
            Self::Refused(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<AlsaError> for OpenError {
    fn from(e: AlsaError) -> Self {
        Self::Alsa(e)
    }
}

/// `hw:N` of the first sound card, if there is one.
#[must_use]
pub fn first_card() -> Option<String> {
    let mut card: libc::c_int = -1;
    // SAFETY: `card` is a valid in/out pointer; snd_card_next only reads the card list.
    let r = unsafe { sys::snd_card_next(&mut card) };
    (r >= 0 && card >= 0).then(|| format!("hw:{card}"))
}

/// RAII owner of a `snd_hw_params_t` / `snd_sw_params_t` allocation.
struct HwParams(*mut sys::snd_pcm_hw_params_t);

impl HwParams {
    fn new() -> Result<Self, AlsaError> {
        let mut p = ptr::null_mut();
        // SAFETY: out pointer to a local; freed in Drop.
        check("snd_pcm_hw_params_malloc", unsafe { sys::snd_pcm_hw_params_malloc(&mut p) })?;
        Ok(Self(p))
    }
}

impl Drop for HwParams {
    fn drop(&mut self) {
        // SAFETY: allocated by snd_pcm_hw_params_malloc, freed once.
        unsafe { sys::snd_pcm_hw_params_free(self.0) };
    }
}

struct SwParams(*mut sys::snd_pcm_sw_params_t);

impl Drop for SwParams {
    fn drop(&mut self) {
        // SAFETY: allocated by snd_pcm_sw_params_malloc, freed once.
        unsafe { sys::snd_pcm_sw_params_free(self.0) };
    }
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
}

// SAFETY: alsa-lib PCM handles may be used from any thread as long as calls are not concurrent;
// the Device is configured on the control thread, then moved to the mix thread and used only
// there (it is not Sync).
unsafe impl Send for Device {}

fn is_shmix_name(s: &str) -> bool {
    let l = s.trim().to_ascii_lowercase();
    l == "shmix" || l.starts_with("shmix ") || l.starts_with("shmix:") || l.starts_with("shmix(")
}

const PREFERRED: [SampleFormat; 4] =
    [SampleFormat::F32Le, SampleFormat::S32Le, SampleFormat::S24Le, SampleFormat::S16Le];

impl Device {
    /// Opens `name` for playback and configures it per `req`.
    ///
    /// # Errors
    /// An alsa-lib failure, or a refusal (the shmix plugin itself, unsupported format, a device
    /// that is not interleaved in its mmap area).
    pub fn open(name: &str, req: &Request) -> Result<Self, OpenError> {
        Self::open_stream(name, req, false)
    }

    /// Opens `name`'s capture side and configures it like the playback side: `req`'s format,
    /// rate and channels if it offers them, else its own choice. Control thread (it allocates and
    /// may take a while).
    ///
    /// # Errors
    /// As [`Device::open`].
    pub fn open_capture(name: &str, req: &Request) -> Result<Self, OpenError> {
        match Self::open_stream(name, req, true) {
            Ok(d) => Ok(d),
            Err(OpenError::Refused(why)) if req.format.is_some() || req.rate.is_some() || req.channels.is_some() => {
                log::info!("capture side of '{name}' cannot match the playback side ({why}); using its own");
                let own = Request { format: None, rate: None, channels: None, ..*req };
                Self::open_stream(name, &own, true)
            }
            Err(OpenError::Alsa(e)) if e.func != "snd_pcm_open" => {
                let own = Request { format: None, rate: None, channels: None, ..*req };
                Self::open_stream(name, &own, true)
            }
            Err(e) => Err(e),
        }
    }

    /// True for a capture-side device.
    #[must_use]
    pub fn is_capture(&self) -> bool {
        self.capture
    }

    fn open_stream(name: &str, req: &Request, capture: bool) -> Result<Self, OpenError> {
        if is_shmix_name(name) {
            return Err(OpenError::Refused(format!(
                "device '{name}' is the shmix plugin itself; pass a real card with --device"
            )));
        }
        let cname = CString::new(name).map_err(|_| OpenError::Refused("device name contains NUL".into()))?;
        let mut pcm = ptr::null_mut();
        // SAFETY: valid out pointer and C string; non-blocking so no call of the cycle sleeps.
        check("snd_pcm_open", unsafe {
            sys::snd_pcm_open(
                &mut pcm,
                cname.as_ptr(),
                if capture { sys::SND_PCM_STREAM_CAPTURE } else { sys::SND_PCM_STREAM_PLAYBACK },
                sys::SND_PCM_NONBLOCK,
            )
        })?;
        // From here on Drop closes `pcm`.
        let mut dev = Self {
            pcm,
            name: name.to_owned(),
            params: AudioParams {
                format: SampleFormat::S16Le,
                rate: 0,
                channels: 0,
                period_frames: 0,
                buffer_frames: 0,
            },
            chmap: ChannelMap::standard(1),
            frame_bytes: 0,
            capture,
        };
        dev.refuse_shmix()?;
        dev.configure(req)?;
        Ok(dev)
    }

    fn refuse_shmix(&self) -> Result<(), OpenError> {
        let mut info = ptr::null_mut();
        // SAFETY: out pointer to a local; freed below.
        check("snd_pcm_info_malloc", unsafe { sys::snd_pcm_info_malloc(&mut info) })?;
        // SAFETY: `pcm` is open and `info` allocated. Generic plugins forward to their slave, so
        // this names the innermost PCM (an ioplug's `name` field).
        let r = unsafe { sys::snd_pcm_info(self.pcm, info) };
        let (id, nm) = if r >= 0 {
            // SAFETY: both getters return NUL-terminated strings inside `info`, copied before free.
            unsafe {
                (
                    CStr::from_ptr(sys::snd_pcm_info_get_id(info)).to_string_lossy().into_owned(),
                    CStr::from_ptr(sys::snd_pcm_info_get_name(info)).to_string_lossy().into_owned(),
                )
            }
        } else {
            (String::new(), String::new())
        };
        // SAFETY: allocated above, freed once.
        unsafe { sys::snd_pcm_info_free(info) };
        // SAFETY: `pcm` is open; snd_pcm_name returns a string owned by the handle.
        let pcm_name = unsafe { CStr::from_ptr(sys::snd_pcm_name(self.pcm)) }.to_string_lossy().into_owned();
        if [&id, &nm, &pcm_name].iter().any(|s| is_shmix_name(s)) {
            return Err(OpenError::Refused(format!(
                "device '{}' is the shmix plugin itself (pcm '{pcm_name}', id '{id}', name '{nm}'); \
                 pass a real card with --device",
                self.name
            )));
        }
        Ok(())
    }

    fn configure(&mut self, req: &Request) -> Result<(), OpenError> {
        let hw = HwParams::new()?;
        let pcm = self.pcm;
        let hwp = hw.0;
        // Every unsafe call below: `pcm` is open and owned by self, `hwp`/`swp` are live
        // allocations, and every out pointer is a local.
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params_any", unsafe { sys::snd_pcm_hw_params_any(pcm, hwp) })?;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params_set_access(MMAP_INTERLEAVED)", unsafe {
            sys::snd_pcm_hw_params_set_access(pcm, hwp, sys::SND_PCM_ACCESS_MMAP_INTERLEAVED)
        })?;
        // Format.
        let offers = |f: SampleFormat| {
            // SAFETY: see the function-level note.
            unsafe { sys::snd_pcm_hw_params_test_format(pcm, hwp, f.code() as sys::snd_pcm_format_t) == 0 }
        };
        let format = match req.format {
            Some(f) if offers(f) => f,
            Some(f) => return Err(OpenError::Refused(format!("device does not offer format {f}"))),
            None => match PREFERRED.into_iter().find(|f| offers(*f)) {
                Some(f) => f,
                None => SampleFormat::ALL
                    .into_iter()
                    .find(|f| convert::is_supported(*f) && offers(*f))
                    .ok_or_else(|| OpenError::Refused("device offers no sample format shmix can mix".into()))?,
            },
        };
        if !convert::is_supported(format) {
            return Err(OpenError::Refused(format!("format {format} cannot be mixed")));
        }
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params_set_format", unsafe {
            sys::snd_pcm_hw_params_set_format(pcm, hwp, format.code() as sys::snd_pcm_format_t)
        })?;
        // Channels.
        match req.channels {
            Some(c) => {
                // SAFETY: as noted at the top of `configure`.
                check("snd_pcm_hw_params_set_channels", unsafe { sys::snd_pcm_hw_params_set_channels(pcm, hwp, c) })?;
            }
            None => {
                let mut c: libc::c_uint = 2;
                // SAFETY: as noted at the top of `configure`.
                check("snd_pcm_hw_params_set_channels_near", unsafe {
                    sys::snd_pcm_hw_params_set_channels_near(pcm, hwp, &mut c)
                })?;
            }
        }
        // Rate.
        match req.rate {
            Some(r) => {
                // SAFETY: as noted at the top of `configure`.
                check("snd_pcm_hw_params_set_rate", unsafe { sys::snd_pcm_hw_params_set_rate(pcm, hwp, r, 0) })?;
            }
            None => {
                let mut r: libc::c_uint = 48_000;
                let mut dir: libc::c_int = 0;
                // SAFETY: as noted at the top of `configure`.
                check("snd_pcm_hw_params_set_rate_near", unsafe {
                    sys::snd_pcm_hw_params_set_rate_near(pcm, hwp, &mut r, &mut dir)
                })?;
            }
        }
        let mut period: sys::snd_pcm_uframes_t = sys::snd_pcm_uframes_t::from(req.period_frames);
        let mut dir: libc::c_int = 0;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params_set_period_size_near", unsafe {
            sys::snd_pcm_hw_params_set_period_size_near(pcm, hwp, &mut period, &mut dir)
        })?;
        let mut buffer: sys::snd_pcm_uframes_t = period * sys::snd_pcm_uframes_t::from(req.periods.max(2));
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params_set_buffer_size_near", unsafe {
            sys::snd_pcm_hw_params_set_buffer_size_near(pcm, hwp, &mut buffer)
        })?;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params", unsafe { sys::snd_pcm_hw_params(pcm, hwp) })?;

        // Read back what the device settled on.
        let (mut rate, mut channels, mut dir) = (0 as libc::c_uint, 0 as libc::c_uint, 0 as libc::c_int);
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params_get_rate", unsafe { sys::snd_pcm_hw_params_get_rate(hwp, &mut rate, &mut dir) })?;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params_get_channels", unsafe { sys::snd_pcm_hw_params_get_channels(hwp, &mut channels) })?;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params_get_period_size", unsafe {
            sys::snd_pcm_hw_params_get_period_size(hwp, &mut period, &mut dir)
        })?;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params_get_buffer_size", unsafe {
            sys::snd_pcm_hw_params_get_buffer_size(hwp, &mut buffer)
        })?;
        if let Some(r) = req.rate.filter(|r| *r != rate) {
            return Err(OpenError::Refused(format!("device runs at {rate} Hz, not the requested {r}")));
        }
        if buffer < 2 * period {
            return Err(OpenError::Refused(format!("device buffer {buffer} is shorter than two periods of {period}")));
        }

        // Software params: wake per period, start by hand, stop on xrun.
        let mut swp = ptr::null_mut();
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_sw_params_malloc", unsafe { sys::snd_pcm_sw_params_malloc(&mut swp) })?;
        let sw = SwParams(swp);
        let mut boundary: sys::snd_pcm_uframes_t = 0;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_sw_params_current", unsafe { sys::snd_pcm_sw_params_current(pcm, sw.0) })?;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_sw_params_get_boundary", unsafe { sys::snd_pcm_sw_params_get_boundary(sw.0, &mut boundary) })?;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_sw_params_set_avail_min", unsafe { sys::snd_pcm_sw_params_set_avail_min(pcm, sw.0, period) })?;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_sw_params_set_start_threshold", unsafe {
            sys::snd_pcm_sw_params_set_start_threshold(pcm, sw.0, boundary)
        })?;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_sw_params_set_stop_threshold", unsafe {
            sys::snd_pcm_sw_params_set_stop_threshold(pcm, sw.0, buffer)
        })?;
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_sw_params", unsafe { sys::snd_pcm_sw_params(pcm, sw.0) })?;

        let to_u32 = |v: sys::snd_pcm_uframes_t| u32::try_from(v).unwrap_or(u32::MAX);
        self.params =
            AudioParams { format, rate, channels, period_frames: to_u32(period), buffer_frames: to_u32(buffer) };
        self.frame_bytes = self.params.frame_bytes() as usize;
        self.chmap = self.query_chmap().unwrap_or_else(|| ChannelMap::standard(channels));
        Ok(())
    }

    /// The device's current channel map (`snd_pcm_get_chmap`), if it tells one that fits.
    fn query_chmap(&self) -> Option<ChannelMap> {
        // SAFETY: `pcm` is open and configured; the result is malloc'ed by alsa-lib (or NULL).
        let m = unsafe { sys::snd_pcm_get_chmap(self.pcm) };
        if m.is_null() {
            return None;
        }
        // SAFETY: a non-NULL map holds `channels` positions after its header; we copy them out
        // and free the allocation exactly once.
        let positions: Vec<u32> = unsafe {
            let n = (*m).channels as usize;
            let v = std::slice::from_raw_parts((*m).pos.as_ptr(), n).to_vec();
            libc::free(m.cast());
            v
        };
        if positions.len() != self.params.channels as usize {
            return None;
        }
        // Drop the phase-inverse and driver-specific bits (SND_CHMAP_PHASE_INVERSE, DRIVER_SPEC).
        let pos: Vec<u8> = positions
            .iter()
            .map(|p| u8::try_from(p & 0xffff).ok().filter(|p| *p <= chmap::LAST).unwrap_or(chmap::UNKNOWN))
            .collect();
        ChannelMap::new(&pos).ok()
    }

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

    /// Fills everything the device can take with silence (before a start); returns the frames.
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn prefill_silence(&mut self) -> Result<usize, AlsaError> {
        let format = self.params.format;
        let fb = self.frame_bytes;
        let mut total = 0;
        loop {
            let avail = self.avail_update()?;
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

    /// Prepare, prefill with silence and start: from a fresh open or after an xrun. Returns the
    /// frames of silence queued.
    ///
    /// # Errors
    /// The alsa-lib error.
    pub fn restart(&mut self) -> Result<usize, AlsaError> {
        self.prepare()?;
        let n = self.prefill_silence()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shmix_names_are_recognised() {
        for n in ["shmix", "SHMIX", "shmix playback", "shmix:foo"] {
            assert!(is_shmix_name(n), "{n}");
        }
        for n in ["shmix_vcard", "hw:0", "default", "shmixer"] {
            assert!(!is_shmix_name(n), "{n}");
        }
    }
}

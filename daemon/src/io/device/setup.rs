//! Opening a device: `snd_pcm_open` in non-blocking mode, the refusal of shmix itself, and the
//! hardware and software parameters (mmap interleaved access, the format, rate and channels asked
//! for or the device's best, period and buffer, start by hand and stop on xrun), read back with
//! the device's channel map.
//! Runs on the main thread at startup and on the device manager's thread (`io::manager`). RT: no
//! (alsa-lib allocates here, and an open may block).

use std::ffi::{CStr, CString};
use std::fmt;
use std::ptr;

use alsa_sys as sys;
use shmix_shared::chmap::{self, ChannelMap};
use shmix_shared::{AudioParams, SampleFormat};

use super::{check, AlsaError, Caps, Device};
use crate::dsp::convert;

/// What the command line asked for; `None` means "the device's own choice".
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Sample format.
    pub format: Option<SampleFormat>,
    /// Rate in Hz.
    pub rate: Option<u32>,
    /// Channels.
    pub channels: Option<u32>,
    /// Frames per period (fixed timing; with `timer_buffer_ms` only a hint for the device's
    /// interrupt and BATCH granularity).
    pub period_frames: u32,
    /// Periods per buffer (fixed timing).
    pub periods: u32,
    /// Timer scheduling: the device buffer as long as it allows up to this many ms, period
    /// wakeups off where it can, and no wakeup from the device until it runs dry (the mix
    /// thread wakes on its own clock). `None`: fixed timing, one wakeup per device period.
    pub timer_buffer_ms: Option<u32>,
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

/// The index of every sound card ALSA knows, in order (`snd_card_next`).
#[must_use]
pub fn cards() -> Vec<i32> {
    let mut out = Vec::new();
    let mut card: libc::c_int = -1;
    loop {
        // SAFETY: `card` is a valid in/out pointer; snd_card_next only reads the card list.
        let r = unsafe { sys::snd_card_next(&mut card) };
        if r < 0 || card < 0 {
            return out;
        }
        out.push(card);
    }
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
    /// rate and channels if it offers them, else its own choice. Off the real-time thread (it
    /// allocates and may take a while).
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
            caps: Caps::default(),
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
        let mut buffer: sys::snd_pcm_uframes_t;
        if let Some(ms) = req.timer_buffer_ms {
            // Timer scheduling: the longest buffer up to `ms` first, then the period nearest the
            // hint (it only sets the interrupt rate, or a BATCH device's pointer steps).
            let mut rate_now: libc::c_uint = 0;
            // SAFETY: as noted at the top of `configure`.
            check("snd_pcm_hw_params_get_rate", unsafe {
                sys::snd_pcm_hw_params_get_rate(hwp, &mut rate_now, &mut dir)
            })?;
            buffer = (u64::from(ms) * u64::from(rate_now) / 1000).max(2 * u64::from(req.period_frames))
                as sys::snd_pcm_uframes_t;
            // SAFETY: as noted at the top of `configure`.
            check("snd_pcm_hw_params_set_buffer_size_near", unsafe {
                sys::snd_pcm_hw_params_set_buffer_size_near(pcm, hwp, &mut buffer)
            })?;
            // SAFETY: as noted at the top of `configure`.
            check("snd_pcm_hw_params_set_period_size_near", unsafe {
                sys::snd_pcm_hw_params_set_period_size_near(pcm, hwp, &mut period, &mut dir)
            })?;
            // SAFETY: as noted at the top of `configure`.
            if unsafe { sys::snd_pcm_hw_params_can_disable_period_wakeup(hwp) } == 1 {
                // SAFETY: as noted at the top of `configure`.
                check("snd_pcm_hw_params_set_period_wakeup", unsafe {
                    sys::snd_pcm_hw_params_set_period_wakeup(pcm, hwp, 0)
                })?;
            }
        } else {
            // SAFETY: as noted at the top of `configure`.
            check("snd_pcm_hw_params_set_period_size_near", unsafe {
                sys::snd_pcm_hw_params_set_period_size_near(pcm, hwp, &mut period, &mut dir)
            })?;
            buffer = period * sys::snd_pcm_uframes_t::from(req.periods.max(2));
            // SAFETY: as noted at the top of `configure`.
            check("snd_pcm_hw_params_set_buffer_size_near", unsafe {
                sys::snd_pcm_hw_params_set_buffer_size_near(pcm, hwp, &mut buffer)
            })?;
        }
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_hw_params", unsafe { sys::snd_pcm_hw_params(pcm, hwp) })?;
        // SAFETY: as noted at the top of `configure` (the installed configuration).
        let hw_batch = unsafe { sys::snd_pcm_hw_params_is_batch(hwp) } == 1;
        // SAFETY: as noted at the top of `configure`.
        let hw_fifo = unsafe { sys::snd_pcm_hw_params_get_fifo_size(hwp) }.max(0);

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
        // Timer scheduling: the device's descriptors wake us only when it has run dry.
        let avail_min = if req.timer_buffer_ms.is_some() { buffer } else { period };
        // SAFETY: as noted at the top of `configure`.
        check("snd_pcm_sw_params_set_avail_min", unsafe {
            sys::snd_pcm_sw_params_set_avail_min(pcm, sw.0, avail_min)
        })?;
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
        self.caps = self.probe_caps(req.timer_buffer_ms.is_some(), hw_batch, to_u32(hw_fifo as sys::snd_pcm_uframes_t));
        Ok(())
    }

    /// What the scheduler may do with this device. A hardware PCM tells BATCH and its FIFO
    /// itself and may be rewound unless it is BATCH (a driver that refuses a rewind is found
    /// out when it does: see `Device::rewind`). Any other PCM (a plugin: dmix, a network
    /// sink, a virtual card) is taken as it describes itself in its ALSA definition, keys
    /// `rewind` (default false: a plugin that has passed frames on cannot take them back; and
    /// never with `batch`), `batch` and `fifo` (frames fetched ahead of the play position).
    fn probe_caps(&self, timer: bool, hw_batch: bool, hw_fifo: u32) -> Caps {
        // SAFETY: `pcm` is open.
        if unsafe { sys::snd_pcm_type(self.pcm) } == sys::SND_PCM_TYPE_HW {
            return Caps { timer, rewind: !hw_batch, batch: hw_batch, fifo_frames: hw_fifo };
        }
        let keys = definition_keys(&self.name);
        let batch = keys.batch.unwrap_or(false);
        // A BATCH pointer says where the card is only to a period: never rewound, as hardware.
        Caps { timer, rewind: keys.rewind.unwrap_or(false) && !batch, batch, fifo_frames: keys.fifo.unwrap_or(0) }
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
}

/// The scheduling keys of a plugin PCM's ALSA definition (`pcm.NAME { rewind .. batch ..
/// fifo .. }`), where present.
#[derive(Debug, Default)]
struct DefinitionKeys {
    rewind: Option<bool>,
    batch: Option<bool>,
    fifo: Option<u32>,
}

/// Reads [`DefinitionKeys`] of the PCM `name` from alsa-lib's configuration (the one
/// `snd_pcm_open` used). Nothing found is no key.
fn definition_keys(name: &str) -> DefinitionKeys {
    let mut keys = DefinitionKeys::default();
    let Ok(cname) = CString::new(name) else { return keys };
    let mut top = ptr::null_mut();
    // SAFETY: out pointer to a local; a reference we release below.
    if unsafe { sys::snd_config_update_ref(&mut top) } < 0 || top.is_null() {
        return keys;
    }
    let mut def = ptr::null_mut();
    // SAFETY: `top` is a live configuration; `def` receives a copy we delete below.
    let found = unsafe { sys::snd_config_search_definition(top, c"pcm".as_ptr(), cname.as_ptr(), &mut def) } >= 0;
    if found && !def.is_null() {
        let child = |key: &CStr| {
            let mut n = ptr::null_mut();
            // SAFETY: `def` is a live compound node; `n` points into it while `def` lives.
            (unsafe { sys::snd_config_search(def, key.as_ptr(), &mut n) } >= 0 && !n.is_null()).then_some(n)
        };
        if let Some(n) = child(c"rewind") {
            // SAFETY: `n` is a live node of `def`.
            let b = unsafe { sys::snd_config_get_bool(n) };
            keys.rewind = (b >= 0).then_some(b == 1);
        }
        if let Some(n) = child(c"batch") {
            // SAFETY: as above.
            let b = unsafe { sys::snd_config_get_bool(n) };
            keys.batch = (b >= 0).then_some(b == 1);
        }
        if let Some(n) = child(c"fifo") {
            let mut v: libc::c_long = 0;
            // SAFETY: as above; `v` is a local.
            if unsafe { sys::snd_config_get_integer(n, &mut v) } >= 0 {
                keys.fifo = u32::try_from(v).ok();
            }
        }
        // SAFETY: the copy search_definition made, deleted once.
        unsafe { sys::snd_config_delete(def) };
    }
    // SAFETY: the reference taken above, released once.
    unsafe { sys::snd_config_unref(top) };
    keys
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

//! The FFI fence of the control plugin `ctl.shmix`: `_snd_ctl_shmix_open` and every ctl_external
//! callback, each one line into `ioplug::guard` (a panic never unwinds into the host program;
//! errors leave as `-errno`). The logic is in `ctl.rs`. Learned from alsa-lib 1.2.8
//! `control_ext.c` (`read` returns what `read_event` returns; `hctl` loops until `-EAGAIN`;
//! `subscribed` is kept by alsa-lib) and alsa-plugins `pulse/ctl_pulse.c` (element layout).
//! Runs in the host program's calling thread. RT: no.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_long, c_uint, c_ushort};
use std::sync::Mutex;

use crate::ctl::{self, Ctl, Kind};
use crate::ioplug::guard;
use crate::{config, sys, user_error, Errno};
use shmix_shared::socket::resolve_socket_path;

/// alsa-lib's `snd_dlsym_verify()` looks this up before it trusts `_snd_ctl_shmix_open`.
#[unsafe(no_mangle)]
pub static __snd_ctl_shmix_open_dlsym_control_001: c_char = 0;

/// `SND_CTL_EXT_KEY_NOT_FOUND` (a cast macro bindgen does not translate).
const KEY_NOT_FOUND: sys::snd_ctl_ext_key_t = !0;

/// Element names as C strings, in `ctl::ELEMENTS` order.
static NAMES: [&CStr; 4] = [c"Master Playback Volume", c"Master Playback Switch", c"Capture Volume", c"Capture Switch"];

static CALLBACKS: sys::snd_ctl_ext_callback_t = sys::snd_ctl_ext_callback_t {
    close: Some(cb_close),
    elem_count: Some(cb_elem_count),
    elem_list: Some(cb_elem_list),
    find_elem: Some(cb_find_elem),
    free_key: None,
    get_attribute: Some(cb_get_attribute),
    get_integer_info: Some(cb_get_integer_info),
    get_integer64_info: None,
    get_enumerated_info: None,
    get_enumerated_name: None,
    read_integer: Some(cb_read_integer),
    read_integer64: None,
    read_enumerated: None,
    read_bytes: None,
    read_iec958: None,
    write_integer: Some(cb_write_integer),
    write_integer64: None,
    write_enumerated: None,
    write_bytes: None,
    write_iec958: None,
    subscribe_events: None,
    read_event: Some(cb_read_event),
    poll_descriptors_count: Some(cb_poll_descriptors_count),
    poll_descriptors: Some(cb_poll_descriptors),
    poll_revents: Some(cb_poll_revents),
};

/// The `snd_ctl_ext_t` (alsa-lib keeps its address) and our state, in one heap block that
/// `private_data` points at; freed by `close`.
struct Plugin {
    ext: sys::snd_ctl_ext_t,
    ctl: Mutex<Ctl>,
}

/// The plugin behind `ext`.
///
/// # Safety
/// `ext` is one of ours, open (between a successful open and close).
unsafe fn plugin<'a>(ext: *mut sys::snd_ctl_ext_t) -> &'a Plugin {
    // SAFETY: `private_data` was set to the `Plugin` block at open and lives until close.
    unsafe { &*(*ext).private_data.cast::<Plugin>() }
}

fn lock(p: &Plugin) -> std::sync::MutexGuard<'_, Ctl> {
    p.ctl.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key_index(key: sys::snd_ctl_ext_key_t) -> Result<usize, Errno> {
    let k = usize::try_from(key).map_err(|_| Errno(libc::EINVAL))?;
    ctl::element(k).map(|_| k).ok_or(Errno(libc::EINVAL))
}

unsafe extern "C" fn cb_close(ext: *mut sys::snd_ctl_ext_t) {
    let _ = guard(|| {
        // SAFETY: close is the last callback; the block came from `Box::into_raw` at open.
        drop(unsafe { Box::from_raw((*ext).private_data.cast::<Plugin>()) });
        Ok(0)
    });
}

unsafe extern "C" fn cb_elem_count(_ext: *mut sys::snd_ctl_ext_t) -> c_int {
    ctl::ELEMENTS.len() as c_int
}

unsafe extern "C" fn cb_elem_list(
    _ext: *mut sys::snd_ctl_ext_t,
    offset: c_uint,
    id: *mut sys::snd_ctl_elem_id_t,
) -> c_int {
    guard(|| {
        let name = NAMES.get(offset as usize).ok_or(Errno(libc::EINVAL))?;
        // SAFETY: `id` is alsa-lib's element id to fill; the name is a static C string.
        unsafe {
            sys::snd_ctl_elem_id_set_interface(id, sys::SND_CTL_ELEM_IFACE_MIXER);
            sys::snd_ctl_elem_id_set_name(id, name.as_ptr());
        }
        Ok(0)
    })
}

unsafe extern "C" fn cb_find_elem(
    _ext: *mut sys::snd_ctl_ext_t,
    id: *const sys::snd_ctl_elem_id_t,
) -> sys::snd_ctl_ext_key_t {
    std::panic::catch_unwind(|| {
        // SAFETY: `id` is a valid element id from alsa-lib; its name is a NUL-terminated string
        // inside it.
        let name = unsafe { CStr::from_ptr(sys::snd_ctl_elem_id_get_name(id)) };
        NAMES.iter().position(|n| *n == name).map_or(KEY_NOT_FOUND, |k| k as sys::snd_ctl_ext_key_t)
    })
    .unwrap_or(KEY_NOT_FOUND)
}

unsafe extern "C" fn cb_get_attribute(
    _ext: *mut sys::snd_ctl_ext_t,
    key: sys::snd_ctl_ext_key_t,
    type_: *mut c_int,
    acc: *mut c_uint,
    count: *mut c_uint,
) -> c_int {
    guard(|| {
        let k = key_index(key)?;
        let t = match ctl::element(k).map(|e| e.1) {
            Some(Kind::Volume) => sys::SND_CTL_ELEM_TYPE_INTEGER,
            _ => sys::SND_CTL_ELEM_TYPE_BOOLEAN,
        };
        // SAFETY: alsa-lib's out pointers.
        unsafe {
            *type_ = t as c_int;
            *acc = sys::SND_CTL_EXT_ACCESS_READWRITE;
            *count = 1;
        }
        Ok(0)
    })
}

unsafe extern "C" fn cb_get_integer_info(
    _ext: *mut sys::snd_ctl_ext_t,
    key: sys::snd_ctl_ext_key_t,
    imin: *mut c_long,
    imax: *mut c_long,
    istep: *mut c_long,
) -> c_int {
    guard(|| {
        key_index(key)?;
        // SAFETY: alsa-lib's out pointers.
        unsafe {
            *imin = 0;
            *imax = ctl::VOLUME_MAX as c_long;
            *istep = 1;
        }
        Ok(0)
    })
}

unsafe extern "C" fn cb_read_integer(
    ext: *mut sys::snd_ctl_ext_t,
    key: sys::snd_ctl_ext_key_t,
    value: *mut c_long,
) -> c_int {
    guard(|| {
        let k = key_index(key)?;
        // SAFETY: `ext` is open (alsa-lib calls us only between open and close).
        let v = lock(unsafe { plugin(ext) }).read(k)?;
        // SAFETY: alsa-lib's array of `count` (1) values.
        unsafe { *value = v as c_long };
        Ok(0)
    })
}

unsafe extern "C" fn cb_write_integer(
    ext: *mut sys::snd_ctl_ext_t,
    key: sys::snd_ctl_ext_key_t,
    value: *mut c_long,
) -> c_int {
    guard(|| {
        let k = key_index(key)?;
        // SAFETY: alsa-lib's array of `count` (1) values.
        let raw: c_long = unsafe { *value };
        #[allow(clippy::useless_conversion)] // c_long is i32 on 32-bit targets
        let v = i64::from(raw);
        // SAFETY: `ext` is open.
        let changed = lock(unsafe { plugin(ext) }).write(k, v)?;
        Ok(c_int::from(changed))
    })
}

unsafe extern "C" fn cb_read_event(
    ext: *mut sys::snd_ctl_ext_t,
    id: *mut sys::snd_ctl_elem_id_t,
    event_mask: *mut c_uint,
) -> c_int {
    guard(|| {
        // SAFETY: `ext` is open; `subscribed` is maintained by alsa-lib.
        let (p, subscribed) = unsafe { (plugin(ext), (*ext).subscribed != 0) };
        let mut c = lock(p);
        if !subscribed {
            // Not asked for events: keep nothing pending (poll would spin).
            while c.next_event().is_some() {}
            return Err(Errno(libc::EAGAIN));
        }
        let k = c.next_event().ok_or(Errno(libc::EAGAIN))?;
        // SAFETY: alsa-lib's id and mask to fill; the name is a static C string.
        unsafe {
            sys::snd_ctl_elem_id_set_interface(id, sys::SND_CTL_ELEM_IFACE_MIXER);
            sys::snd_ctl_elem_id_set_name(id, NAMES[k].as_ptr());
            *event_mask = sys::SND_CTL_EVENT_MASK_VALUE;
        }
        Ok(1)
    })
}

unsafe extern "C" fn cb_poll_descriptors_count(_ext: *mut sys::snd_ctl_ext_t) -> c_int {
    1
}

unsafe extern "C" fn cb_poll_descriptors(
    ext: *mut sys::snd_ctl_ext_t,
    pfds: *mut libc::pollfd,
    space: c_uint,
) -> c_int {
    guard(|| {
        if space < 1 {
            return Ok(0);
        }
        // SAFETY: `ext` is open.
        let fd = lock(unsafe { plugin(ext) }).poll_fd();
        // SAFETY: alsa-lib's array of at least `space` (>= 1) entries.
        unsafe { *pfds = libc::pollfd { fd, events: libc::POLLIN, revents: 0 } };
        Ok(1)
    })
}

unsafe extern "C" fn cb_poll_revents(
    ext: *mut sys::snd_ctl_ext_t,
    pfds: *mut libc::pollfd,
    nfds: c_uint,
    revents: *mut c_ushort,
) -> c_int {
    guard(|| {
        if nfds < 1 {
            return Err(Errno(libc::EINVAL));
        }
        // SAFETY: alsa-lib's array of `nfds` (>= 1) entries, as polled.
        let polled = unsafe { (*pfds).revents };
        // SAFETY: `ext` is open.
        let r = lock(unsafe { plugin(ext) }).revents(polled);
        // SAFETY: alsa-lib's out pointer.
        unsafe { *revents = r };
        Ok(0)
    })
}

/// The `type shmix` control constructor.
///
/// # Safety
/// Called by alsa-lib with a valid out pointer, name, config nodes and mode.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _snd_ctl_shmix_open(
    handlep: *mut *mut sys::snd_ctl_t,
    name: *const c_char,
    _root: *mut sys::snd_config_t,
    conf: *mut sys::snd_config_t,
    mode: c_int,
) -> c_int {
    // SAFETY: arguments straight from alsa-lib (see `# Safety`).
    guard(|| unsafe { open(handlep, name, conf, mode) })
}

fn copy_str<const N: usize>(dst: &mut [c_char; N], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().take(N - 1)) {
        *d = b as c_char;
    }
}

unsafe fn open(
    handlep: *mut *mut sys::snd_ctl_t,
    name: *const c_char,
    conf: *mut sys::snd_config_t,
    mode: c_int,
) -> Result<c_int, Errno> {
    // SAFETY: `conf` is the control's node, alive during open.
    let entries = unsafe { config::read_entries(conf) };
    let cfg = config::parse(&entries).map_err(|msg| {
        user_error(&msg);
        Errno(libc::EINVAL)
    })?;
    let device =
        config::device_name(&cfg, shmix_shared::socket::secure_env(config::DEVICE_ENV).as_deref()).map_err(|msg| {
            user_error(&msg);
            Errno(libc::EINVAL)
        })?;
    let path = resolve_socket_path(cfg.socket.as_deref());
    let c = Ctl::open(&path, &device).map_err(|(errno, msg)| {
        user_error(&msg);
        errno
    })?;
    let poll_fd = c.poll_fd();
    let mut ext = sys::snd_ctl_ext_t {
        version: sys::SND_CTL_EXT_VERSION,
        card_idx: 0,
        poll_fd,
        callback: &CALLBACKS,
        ..Default::default()
    };
    copy_str(&mut ext.id, "shmix");
    copy_str(&mut ext.driver, "shmix");
    copy_str(&mut ext.name, "shmix");
    let longname =
        if device.is_empty() { "shmix sound server".to_owned() } else { format!("shmix sound server: {device}") };
    copy_str(&mut ext.longname, &longname);
    copy_str(&mut ext.mixername, "shmix");
    let plugin = Box::into_raw(Box::new(Plugin { ext, ctl: Mutex::new(c) }));
    // SAFETY: `plugin` is our fresh, unshared allocation; `ext` inside it never moves.
    let ext = unsafe { std::ptr::addr_of_mut!((*plugin).ext) };
    // SAFETY: as above.
    unsafe { (*ext).private_data = plugin.cast() };
    // SAFETY: `ext` is fully initialised and stays at this address until close.
    let err = unsafe { sys::snd_ctl_ext_create(ext, name, mode) };
    if err < 0 {
        // SAFETY: create failed, so alsa-lib keeps no reference; nothing else owns `plugin`.
        drop(unsafe { Box::from_raw(plugin) });
        return Err(Errno(-err));
    }
    // SAFETY: `handlep` is alsa-lib's out pointer; `handle` was set by create.
    unsafe { *handlep = (*ext).handle };
    Ok(0)
}

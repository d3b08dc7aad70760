//! The channel-map callbacks: the maps offered for each channel count, the one in use, and a
//! program's own map (sent to the daemon with the stream). Runs in the host program's calling
//! thread(s). RT: no.

use super::*;

/// `malloc`s a copy of `words` (alsa-lib releases chmaps with `free`). NULL when out of memory.
pub(super) fn malloc_words(words: &[u32]) -> *mut u32 {
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
pub(super) unsafe fn query_chmaps(_io: *mut sys::snd_pcm_ioplug_t) -> *mut *mut sys::snd_pcm_chmap_query_t {
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
pub(super) unsafe fn get_chmap(io: *mut sys::snd_pcm_ioplug_t) -> *mut sys::snd_pcm_chmap_t {
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
pub(super) unsafe fn set_chmap(
    io: *mut sys::snd_pcm_ioplug_t,
    map: *const sys::snd_pcm_chmap_t,
) -> Result<c_int, Errno> {
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

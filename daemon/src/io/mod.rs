//! The sound card side: the ALSA device wrapper (`device`: open, negotiate, mmap, recover) and
//! the thread that reopens a device that vanished (`reopen`). Runs on the control thread (opening)
//! and the mix thread (the device's own calls, RT).

pub mod device;
pub mod reopen;

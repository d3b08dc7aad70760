//! The sound card side: the ALSA device wrapper (`device`: open and negotiate, mmap, recover) and
//! the device manager (`manager`), the thread that opens, reopens and closes the playback and
//! capture devices for the mix thread. Runs on the main thread (the startup open), the manager's
//! thread (RT: no) and the mix thread (the device's own calls, RT: yes).

pub mod device;
pub mod manager;

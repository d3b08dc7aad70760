//! shmix integration tests: one binary; each module drives real ALSA programs against the
//! virtual card through a daemon of its own on a private socket.

mod access;
mod capture;
mod common;
mod compat;
mod control;
mod devices;
mod faults;
mod formats;
mod hostile;
mod latency;
mod playback;
mod realtime;
mod reliability;
mod rt_audit;
mod rt_hostile;
mod security;
mod semantics;
mod service;
mod soak;

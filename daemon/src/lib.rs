//! shmixd, the shmix sound server, as a library: the binary (`main.rs`) wires these modules
//! together; tests drive the mixing core (`mixer`) without ALSA.

pub mod access;
pub mod audit;
pub mod control;
pub mod convert;
pub mod device;
pub mod limits;
pub mod mixer;
pub mod mixthread;
pub mod pipeline;
pub mod realtime;
pub mod reopen;
pub mod server;

use std::sync::atomic::AtomicI32;

/// SCHED_FIFO priority the mix thread asks for (set from the command line before it starts).
pub static RT_PRIORITY: AtomicI32 = AtomicI32::new(20);

//! Mixing, on the real-time thread: the thread and its cycle (`thread`), the core that mixes one
//! device period (`mixer`), the client streams and their state machine (`stream`), the figures
//! and volumes shared with the control thread (`counters`, `ctl`), the timer scheduling of the
//! device queue (`schedule`), and the thread's real-time setup (`realtime`). Everything here
//! that runs per cycle is RT: no allocation, no locks, no logging.

pub mod counters;
pub mod ctl;
pub mod mixer;
pub mod realtime;
pub mod schedule;
pub mod stream;
pub mod thread;

pub use counters::Counters;
pub use mixer::{MixCore, MAX_STREAMS, MUTE_MAX_MS};
pub use stream::{State, Stream};

//! The control side, on the main thread: the listener and client sessions (`server`: accept,
//! handshakes, stream setup and teardown, control clients), who may connect (`access`), limits
//! on what a client may hold (`limits`), and the stream registry and control answers
//! (`registry`). RT: no.

pub mod access;
pub mod limits;
pub mod registry;
pub mod server;

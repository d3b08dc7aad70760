//! The control side, on the main thread: the listening socket (`listen`), the control loop
//! (`server`: accept, events, control clients, stats) and one client's session (`session`:
//! handshake, stream setup and teardown), the devices served and their threads (`devices`,
//! and `hotplug` for cards that appear),
//! where streams play (`moves`: the default device, moves, devices that come and go), who may
//! connect (`access`), limits on what a client may hold (`limits`), and the stream registry
//! and control answers (`registry`). RT: no.

pub mod access;
pub mod devices;
pub mod hotplug;
pub mod limits;
pub mod listen;
pub mod moves;
pub mod registry;
pub mod server;
mod session;

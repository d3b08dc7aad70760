//! The control records: posting ours to the daemon (and waking it if it sleeps) and taking its
//! records and read position into private state. Runs in the host program's calling thread(s).
//! RT: yes (no allocation, no syscall but the wake of a sleeping daemon).

use shmix_shared::msg::Record;
use shmix_shared::sync::Ordering;
use shmix_shared::{cursor, wake};

use super::{Daemon, Pcm, State};
use crate::Errno;

impl Pcm {
    pub(super) fn push(&mut self, make: impl FnOnce(u32) -> Record) -> Result<u32, Errno> {
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        s.seq = s.seq.wrapping_add(1);
        let seq = s.seq;
        let ok = s.c2d.push(make(seq)).map_err(|_| Errno(libc::EPROTO))?;
        if !ok {
            // 64 records unread: the daemon is not serving this stream.
            return Err(Errno(libc::EIO));
        }
        if wake::wake_if_sleeping(&s.c2d.read_cursor().sleeping) {
            self.daemon_wake.signal();
        }
        Ok(seq)
    }

    /// Takes the daemon's records and its read position into private state. No syscall.
    pub(super) fn refresh(&mut self) {
        let capture = self.capture;
        let Some(s) = self.stream.as_mut() else { return };
        let mut violation: Option<&'static str> = None;
        // At most one ring's worth per call: a daemon that keeps writing records cannot hold the
        // program's thread here.
        for _ in 0..s.shm.layout().msg_records {
            match s.d2c.pop() {
                Ok(None) => break,
                Ok(Some(Ok(rec))) => {
                    s.d2c_pos = s.d2c_pos.wrapping_add(1);
                    match rec {
                        Record::Stopped { seq, .. } => {
                            s.daemon = match s.daemon {
                                Daemon::Stopping { seq: stop } if stop == seq => Daemon::Idle,
                                Daemon::Restarted { stop_seq } if stop_seq == seq => Daemon::Active,
                                other => other,
                            };
                        }
                        Record::Xrun { .. } => {
                            // Only while it runs: one from before our Stop is stale.
                            if s.daemon == Daemon::Active {
                                s.state = s.state.after_xrun();
                                s.daemon = Daemon::Idle;
                                self.counters.xruns += 1;
                            }
                        }
                        Record::Drained { seq, .. } => {
                            if s.state.drain_seq() == Some(seq) {
                                if let State::Draining(drain) | State::Xrun { drain, .. } = &mut s.state {
                                    drain.drained = true;
                                }
                                s.daemon = match s.daemon {
                                    Daemon::Active => Daemon::Idle,
                                    Daemon::Restarted { stop_seq } => Daemon::Stopping { seq: stop_seq },
                                    other => other,
                                };
                            }
                        }
                        Record::Fatal { errno } => {
                            self.dead = Some(match errno as i32 {
                                libc::ESHUTDOWN => libc::ESHUTDOWN,
                                _ => libc::ENODEV,
                            });
                        }
                        _ => violation = Some("daemon sent a client request record"),
                    }
                }
                Ok(Some(Err(_))) => {
                    s.d2c_pos = s.d2c_pos.wrapping_add(1);
                    violation = Some("record does not decode");
                }
                Err(_) => {
                    violation = Some("d2c ring cursor out of range");
                    break;
                }
            }
        }
        if capture {
            // Pairs with the daemon's Release store after it produced frames; it never writes
            // more than one buffer ahead of our read position.
            let new = s.shm.audio_write().pos.load(Ordering::Acquire);
            let limit = (s.read_total + u64::from(s.params.buffer_frames)) as u32;
            match cursor::advance(s.peer_seen, new, limit) {
                Ok(moved) => {
                    s.write_total += u64::from(moved);
                    s.peer_seen = new;
                }
                Err(_) => violation = Some("audio write cursor out of range"),
            }
        } else {
            // Pairs with the daemon's Release store after it consumed frames.
            let new = s.shm.audio_read().pos.load(Ordering::Acquire);
            match cursor::advance(s.peer_seen, new, s.write_total as u32) {
                Ok(moved) => {
                    s.read_total += u64::from(moved);
                    s.peer_seen = new;
                }
                Err(_) => violation = Some("audio read cursor out of range"),
            }
        }
        if let Some(what) = violation {
            if self.dead.is_none() {
                self.debug_line(format_args!("protocol violation by shmixd: {what}"));
            }
            self.dead = Some(libc::EPROTO);
        }
    }
}

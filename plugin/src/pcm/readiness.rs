//! Readiness: poll's answer for the program (`revents`), and the wake socket's readiness kept as
//! a mirror of `avail >= avail_min` (PROTOCOL.md "Wakeups"), through the sleeping-flag protocol.
//! Runs in the host program's calling thread(s). RT: yes (a syscall only when readiness changes).

use std::time::Duration;

use shmix_shared::sync::Ordering;
use shmix_shared::wakefd::OwnWake;

use super::{poll_two, Pcm, State, Stream};
use crate::Errno;

impl Pcm {
    /// poll_revents: `sock_revents` are the socket's returned events (checked for EOF only when
    /// set). Returns POLLOUT (playback: avail >= avail_min) or POLLIN (capture: fill >=
    /// avail_min), POLLERR on xrun/disconnect/fatal. `appl_ptr` as for [`Self::pointer`].
    pub fn revents(&mut self, sock_revents: i16, efd_revents: i16, appl_ptr: Option<u64>) -> u16 {
        if sock_revents != 0 && self.dead.is_none() && self.conn.peer_gone() {
            self.debug_line(format_args!("shmixd closed the connection"));
            self.dead = Some(libc::ENODEV);
        }
        if efd_revents & libc::POLLIN != 0 {
            // A late signal of the daemon for an earlier sleep (it took the flag, we woke by
            // other means, drained and armed again, then its byte landed).
            self.sleeper.note_readable();
        }
        self.refresh();
        self.consume_committed(appl_ptr);
        self.sync_readiness();
        if self.dead.is_some() || self.in_xrun() {
            return libc::POLLERR as u16;
        }
        match (self.want_ready(), self.capture) {
            (false, _) => 0,
            (true, false) => libc::POLLOUT as u16,
            (true, true) => libc::POLLIN as u16,
        }
    }

    /// Whether poll should report the stream ready (POLLOUT/POLLIN or POLLERR).
    pub(super) fn want_ready(&self) -> bool {
        if self.dead.is_some() {
            return true;
        }
        let Some(s) = &self.stream else { return false };
        match s.state {
            State::Xrun { .. } => true,
            _ if s.state.flowing() => self.avail(s) >= u64::from(self.avail_min),
            State::Draining(drain) => drain.drained,
            _ => false,
        }
    }

    /// The recheck after setting `sleeping`: a fresh look at the read cursor and the d2c ring.
    pub(super) fn fresh_ready(capture: bool, s: &Stream, avail_min: u32) -> bool {
        // Pairs with the daemon's Release stores of its cursors.
        let d2c_write = s.d2c.write_cursor().pos.load(Ordering::Acquire);
        if d2c_write != s.d2c_pos {
            return true;
        }
        if s.state.flowing() && capture {
            let write = s.shm.audio_write().pos.load(Ordering::Acquire);
            let fill = write.wrapping_sub(s.read_total as u32);
            return fill > s.params.buffer_frames || fill >= avail_min;
        }
        if s.state.flowing() {
            let read = s.shm.audio_read().pos.load(Ordering::Acquire);
            let fill = (s.write_total as u32).wrapping_sub(read);
            return fill > s.params.buffer_frames || s.params.buffer_frames - fill >= avail_min;
        }
        false
    }

    /// Makes `client_wake`'s readiness mirror [`Self::want_ready`] (PROTOCOL.md "Wakeups",
    /// `shmix_shared::wake::Sleeper`). Syscalls only on a change.
    pub(super) fn sync_readiness(&mut self) {
        let want = self.want_ready();
        let capture = self.capture;
        let Some(s) = &self.stream else { return };
        // Statistics for `shmixctl stats` (the daemon treats them as untrusted numbers).
        let line = s.shm.avail_min();
        let c = self.counters;
        line.copied_frames.store(c.copied_frames - s.counters_base.copied_frames, Ordering::Relaxed);
        line.zero_copy_frames.store(c.zero_copy_frames - s.counters_base.zero_copy_frames, Ordering::Relaxed);
        let sleeping = &Self::own_cursor(capture, s).sleeping;
        // Before prepare nothing will change and nobody needs waking.
        let may_sleep = s.state != State::Setup;
        let avail_min = self.avail_min;
        let own = OwnWake { polled: &self.client_wake, other: &self.client_wake_peer };
        self.sleeper.sync(sleeping, want, may_sleep, || Self::fresh_ready(capture, s, avail_min), &own);
    }

    /// For the bounded waits: arms `sleeping` so the daemon's next record wakes us. Returns false
    /// when something is already there (do not sleep).
    pub(super) fn arm_for_records(&mut self) -> bool {
        let capture = self.capture;
        let Some(s) = &self.stream else { return false };
        let d2c_pos = s.d2c_pos;
        let sleeping = &Self::own_cursor(capture, s).sleeping;
        let ring = s.d2c.write_cursor();
        let own = OwnWake { polled: &self.client_wake, other: &self.client_wake_peer };
        self.sleeper.arm(sleeping, || ring.pos.load(Ordering::Acquire) != d2c_pos, &own)
    }

    /// One bounded wait on client_wake + socket (mutex held by the caller: prepare only).
    pub(super) fn wait_once(&mut self, left: Duration) -> Result<(), Errno> {
        if !self.arm_for_records() {
            return Ok(());
        }
        let revents = poll_two(self.poll_fds(), left);
        if revents[1] != 0 && self.conn.peer_gone() {
            self.dead = Some(libc::ENODEV);
        }
        Ok(())
    }
}

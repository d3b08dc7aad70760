//! What a device may take back, and streams that leave it: the rewind bookkeeping of
//! [`MixCore`] (what each stream can play again, where its current run starts, what a stream
//! that moved away left behind) and the release of a stream moving to another device once it
//! has given this one everything it read.
//! Runs on the mix thread. RT: yes — no allocation, no locks, no logging.

use super::{Counters, Kind, MixCore, State, Stream};
use crate::dsp::pipeline::Pipeline;
use shmix_shared::Direction;

impl MixCore {
    /// True once after something made what is queued on the device out of date (a stream
    /// started, resumed, paused or was dropped; a volume changed): the device is to be rewound
    /// and the queue mixed again. RT: yes.
    pub fn take_rewind_wanted(&mut self) -> bool {
        std::mem::take(&mut self.rewind_wanted)
    }

    /// How many of the last `r` frames handed to the device may be taken back and mixed again:
    /// each playback stream must hold in its history what it gave in them (a stream stopped by
    /// an underrun keeps what it played; a dropped one loses it, as dropping means). None while
    /// a monitor records the mix (it has recorded those frames already). RT: yes.
    #[must_use]
    pub fn rewind_limit(&self, r: u64) -> u64 {
        if self.streams.iter().any(|s| s.direction() == Direction::Monitor && s.violation.is_none()) {
            return 0;
        }
        let mut limit = r.min(self.device_pos.saturating_sub(self.keep_until));
        for s in self.streams.iter().filter(|s| s.violation.is_none()) {
            let Kind::Play(pipe) = &s.kind else { continue };
            let gap = self.device_pos.saturating_sub(s.end_pos);
            let takes_back = match s.state {
                _ if s.leaving => false,
                State::Stopped => s.dropped,
                _ => true,
            };
            // Never into its earlier run: the gap before its current one cannot be replayed.
            let room = if takes_back {
                (gap + pipe.replayable()).min(self.device_pos.saturating_sub(s.prev_end))
            } else {
                gap
            };
            limit = limit.min(room);
        }
        limit
    }

    /// The device took back its last `r` frames ([`MixCore::rewind_limit`] allowed them):
    /// every stream that gave some of them plays them again (a dropped one forgets them); a
    /// stream waiting for its drain to be heard is draining again. RT: yes.
    pub fn rewound(&mut self, r: u64) {
        let to = self.device_pos.saturating_sub(r);
        for s in self.streams.iter_mut().filter(|s| s.violation.is_none()) {
            if s.end_pos <= to {
                continue;
            }
            // Its frames since its current run began; a rewind that reaches into the gap before
            // them (silence, not its frames) makes it play them again from there on.
            let u = s.end_pos - to.max(s.run_start);
            s.end_pos = to;
            s.run_start = s.run_start.min(to);
            let (dropped, state) = (s.dropped, s.state);
            let Kind::Play(pipe) = &mut s.kind else { continue };
            let back = pipe.unrender(u);
            debug_assert!(back == u || (state == State::Stopped && dropped), "unrender {back} of {u}");
            if state == State::Stopped && dropped {
                pipe.forget_replay();
            }
            if state == State::DrainingDevice {
                s.state = State::Draining;
            }
        }
        self.device_pos = to;
        Counters::bump(&self.counters.rewound_frames, r);
    }

    /// Marks the stream `id` as moving to another device: [`MixCore::take_left`] gives it back
    /// once it has given this device everything it consumed. RT: yes.
    pub fn mark_leaving(&mut self, id: u32) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.id == id) {
            s.leaving = true;
        }
    }

    /// Device frames a leaving stream still has to play again after a rewind (the next fill
    /// goes at least this far, so it can leave). RT: yes.
    #[must_use]
    pub fn leaving_replay(&self) -> u64 {
        self.streams
            .iter()
            .filter(|s| s.leaving && s.active())
            .filter_map(|s| s.pipeline().map(Pipeline::replay_pending))
            .max()
            .unwrap_or(0)
    }

    /// Detaches one leaving stream that has given this device everything it consumed (or any
    /// leaving stream, with `force`: the device is gone or stopped, and what was queued there
    /// with it). What it gave is played out here, never taken back: the stream continues on the
    /// other device from the frame after it. RT: yes.
    pub fn take_left(&mut self, force: bool) -> Option<Box<Stream>> {
        let i = self.streams.iter().position(|s| {
            s.leaving && (force || !s.active() || s.pipeline().is_none_or(|p| p.replay_pending() == 0))
        })?;
        let s = self.streams.swap_remove(i);
        if !s.is_recorder() {
            self.keep_until = self.keep_until.max(s.end_pos);
        }
        Some(s)
    }
}

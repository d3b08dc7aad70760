//! The data path: where the application's frames go in the ring (or come from, for capture), the
//! one copy, publishing our cursor, and the hardware pointer alsa-lib asks for. Runs in the host
//! program's calling thread(s). RT: yes (no allocation, no syscall).

use shmix_shared::cursor;
use shmix_shared::layout::Cursor;
use shmix_shared::shm::AudioHalf;

use super::{wrap, Pcm, Source, State, Stream};
use crate::Errno;

impl Pcm {
    /// Our cursor's count since prepare: what we produced (playback) or consumed (capture).
    pub(super) fn own_total(&self, s: &Stream) -> u64 {
        if self.capture {
            s.read_total
        } else {
            s.write_total
        }
    }

    /// Where the frame `skip` frames after alsa-lib's `appl_ptr` lives in the ring, and the count
    /// since prepare of the one at `appl_ptr`.
    pub(super) fn target(&self, appl_ptr: u64, skip: u32) -> Result<(u64, *mut u8), Errno> {
        let s = self.stream.as_ref().ok_or(Errno(libc::EBADFD))?;
        let own = self.own_total(s);
        // appl_ptr wraps at the boundary; our count does not: move by the signed difference
        // (handles rewind/forward, which alsa-lib does without telling us).
        let start = if self.boundary == 0 {
            appl_ptr
        } else {
            // Both below the boundary in practice (it is near 2^62): conditional subtractions
            // instead of three 64-bit divisions per callback.
            let ours = wrap(own, self.boundary);
            let diff = wrap(wrap(appl_ptr, self.boundary) + (self.boundary - ours), self.boundary);
            if diff <= self.boundary / 2 {
                own + diff
            } else {
                own.saturating_sub(self.boundary - diff)
            }
        };
        let buffer = s.params.buffer_frames;
        let index = cursor::ring_index(start + u64::from(skip), buffer);
        let addr = s.shm.audio_ptr().wrapping_add(index as usize * s.params.frame_bytes() as usize);
        Ok((start, addr))
    }

    /// The ring address the frame `skip` after `appl_ptr` belongs at (transfer compares the
    /// application's area with it).
    ///
    /// # Errors
    /// No stream.
    pub fn transfer_target(&self, appl_ptr: u64, skip: u32) -> Result<*mut u8, Errno> {
        self.target(appl_ptr, skip).map(|(_, a)| a)
    }

    /// transfer. Playback: copies (or, in place, only publishes) `frames` frames starting at
    /// `appl_ptr`, then publishes the write position. Capture: copies `frames` frames starting
    /// `skip` frames after `appl_ptr` out of the ring (in place: nothing to copy), then publishes
    /// the read position: `appl_ptr + frames` for RW access (the frames are in the program's
    /// buffer now), only `appl_ptr` for MMAP access (alsa-lib calls transfer from avail_update
    /// before the program has read anything; the program's commit moves `appl_ptr` later).
    ///
    /// # Errors
    /// Dead daemon, no stream, or a source that does not match `frames`.
    pub fn transfer(&mut self, appl_ptr: u64, skip: u32, frames: u32, src: Source<'_>) -> Result<u32, Errno> {
        self.check_alive()?;
        let (start, _) = self.target(appl_ptr, skip)?;
        if self.capture {
            return self.transfer_capture(start, skip, frames, src);
        }
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        let buffer = s.params.buffer_frames;
        if frames > buffer {
            return Err(Errno(libc::EINVAL));
        }
        let end = start + u64::from(frames);
        if end.saturating_sub(s.read_total) > u64::from(buffer) {
            return Err(Errno(libc::EPIPE)); // would overwrite what the daemon has not read
        }
        match src {
            Source::InPlace => self.counters.zero_copy_frames += u64::from(frames),
            Source::Frames(bytes) => {
                if bytes.len() != frames as usize * s.params.frame_bytes() as usize {
                    return Err(Errno(libc::EINVAL));
                }
                let AudioHalf::Writer(audio) = &mut s.audio else { return Err(Errno(libc::EBADFD)) };
                audio.write(cursor::ring_index(start, buffer), bytes);
                self.counters.copied_frames += u64::from(frames);
            }
            Source::Dest(_) => return Err(Errno(libc::EINVAL)),
        }
        if end > s.write_total {
            s.write_total = end;
            // Publish: pairs with the daemon's Acquire load of audio_write.
            if let AudioHalf::Writer(audio) = &mut s.audio {
                audio.publish(end as u32);
            }
        }
        if s.state == (State::Restarting { paused: false }) {
            self.start()?; // the first frames after a reset while running
        }
        self.sync_readiness();
        Ok(frames)
    }

    pub(super) fn transfer_capture(
        &mut self,
        start: u64,
        skip: u32,
        frames: u32,
        dst: Source<'_>,
    ) -> Result<u32, Errno> {
        let s = self.stream.as_mut().ok_or(Errno(libc::EBADFD))?;
        let buffer = s.params.buffer_frames;
        if frames > buffer {
            return Err(Errno(libc::EINVAL));
        }
        let first = start + u64::from(skip);
        let end = first + u64::from(frames);
        if end > s.write_total || s.write_total - first > u64::from(buffer) {
            return Err(Errno(libc::EIO)); // not captured yet, or already overwritten: never expected
        }
        match dst {
            Source::InPlace => {}
            Source::Dest(bytes) => {
                if bytes.len() != frames as usize * s.params.frame_bytes() as usize {
                    return Err(Errno(libc::EINVAL));
                }
                let AudioHalf::Reader(audio) = &s.audio else { return Err(Errno(libc::EBADFD)) };
                audio.read(cursor::ring_index(first, buffer), bytes);
                self.counters.copied_frames += u64::from(frames);
            }
            Source::Frames(_) => return Err(Errno(libc::EINVAL)),
        }
        if self.mmap {
            self.consume_to(start);
        } else {
            self.consume_to(end);
        }
        self.sync_readiness();
        Ok(frames)
    }

    /// Capture: publishes that the program has read everything before `pos` (a count since
    /// prepare). Never moves backwards nor past what the daemon wrote.
    pub(super) fn consume_to(&mut self, pos: u64) {
        let Some(s) = self.stream.as_mut() else { return };
        if pos <= s.read_total || pos > s.write_total {
            return;
        }
        if self.in_place {
            self.counters.zero_copy_frames += pos - s.read_total;
        }
        s.read_total = pos;
        // Publish: pairs with the daemon's Acquire load of audio_read (the frames before `pos`
        // are free for it to overwrite).
        if let AudioHalf::Reader(audio) = &mut s.audio {
            audio.consume(pos as u32);
        }
    }

    /// Capture with MMAP access: the program commits (moves `appl_ptr`) without a callback, so
    /// every callback that sees `appl_ptr` publishes it.
    pub(super) fn consume_committed(&mut self, appl_ptr: Option<u64>) {
        if !(self.capture && self.mmap) {
            return;
        }
        if let Some((start, _)) = appl_ptr.and_then(|a| self.target(a, 0).ok()) {
            self.consume_to(start);
        }
    }

    /// pointer: the daemon's position as an absolute frame count since prepare, wrapped at the
    /// boundary (`SND_PCM_IOPLUG_FLAG_BOUNDARY_WA`: pcm_ioplug.c computes the delta from the
    /// previous value modulo the boundary): its read position for playback, its write position
    /// for capture. EPIPE after an xrun; the errno once dead. `appl_ptr` is alsa-lib's (capture
    /// with MMAP access publishes it as our read position).
    ///
    /// # Errors
    /// EPIPE (xrun), ENODEV/ESHUTDOWN (daemon gone), EBADFD (no stream).
    pub fn pointer(&mut self, appl_ptr: Option<u64>) -> Result<u64, Errno> {
        self.refresh();
        self.consume_committed(appl_ptr);
        self.sync_readiness();
        self.check_alive()?;
        let s = self.stream.as_ref().ok_or(Errno(libc::EBADFD))?;
        if matches!(s.state, State::Xrun { .. }) {
            return Err(Errno(libc::EPIPE));
        }
        let hw = if self.capture { s.write_total } else { s.read_total };
        let hw = if self.boundary == 0 { hw } else { wrap(hw, self.boundary) };
        if let Some(s) = self.stream.as_mut() {
            s.reported_hw = hw;
        }
        Ok(hw)
    }

    /// What the program may transfer now: free room (playback) or captured frames (capture).
    pub(super) fn avail(&self, s: &Stream) -> u64 {
        let fill = s.write_total.saturating_sub(s.read_total);
        if self.capture {
            fill
        } else {
            u64::from(s.params.buffer_frames).saturating_sub(fill)
        }
    }

    /// Our audio cursor (its `sleeping` flag is the one we sleep on).
    pub(super) fn own_cursor(capture: bool, s: &Stream) -> &Cursor {
        if capture {
            s.shm.audio_read()
        } else {
            s.shm.audio_write()
        }
    }
}

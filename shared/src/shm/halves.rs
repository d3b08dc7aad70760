//! The typed halves a mapped stream splits into: each side gets the producer half of the rings
//! it writes and the consumer half of those it reads, taking `&mut self` where they write (see
//! [`StreamShm::into_client`] and [`StreamShm::into_daemon`]). Runs in both processes. RT: yes
//! (no allocation, no syscall).

use super::*;

/// What the client gets of a mapped stream ([`StreamShm::into_client`]): the producer half of
/// the client -> daemon record ring, the consumer half of the daemon -> client ring, and the
/// half of the audio ring its direction lets it move.
#[derive(Debug)]
pub struct ClientHalves {
    /// The mapping, for what either side may read (cursors, layout, timing, mmap areas).
    pub shm: Arc<StreamShm>,
    /// Records to the daemon.
    pub c2d: RecordSender,
    /// Records from the daemon.
    pub d2c: RecordReceiver,
    /// Playback: [`AudioHalf::Writer`]; capture and monitor: [`AudioHalf::Reader`].
    pub audio: AudioHalf,
}

/// What the daemon gets of a mapped stream ([`StreamShm::into_daemon`]): the consumer half of
/// the client -> daemon record ring, the producer half of the daemon -> client ring, the half of
/// the audio ring its direction lets it move, and the timing snapshot's writer.
#[derive(Debug)]
pub struct DaemonHalves {
    /// The mapping, for what either side may read.
    pub shm: Arc<StreamShm>,
    /// Records from the client.
    pub c2d: RecordReceiver,
    /// Records to the client.
    pub d2c: RecordSender,
    /// Playback: [`AudioHalf::Reader`]; capture and monitor: [`AudioHalf::Writer`].
    pub audio: AudioHalf,
    /// The timing snapshot and the device flags (the daemon is their only writer).
    pub timing: TimingWriter,
}

/// The mapping's read accessors (cursors, layout, timing) straight on the halves.
impl std::ops::Deref for ClientHalves {
    type Target = StreamShm;
    fn deref(&self) -> &StreamShm {
        &self.shm
    }
}

/// The mapping's read accessors straight on the halves.
impl std::ops::Deref for DaemonHalves {
    type Target = StreamShm;
    fn deref(&self) -> &StreamShm {
        &self.shm
    }
}

/// The half of the audio ring one side may move.
#[derive(Debug)]
pub enum AudioHalf {
    /// The producer: writes frames, publishes `audio_write`.
    Writer(AudioWriter),
    /// The consumer: reads frames, publishes `audio_read`.
    Reader(AudioReader),
}

impl StreamShm {
    /// Client: splits the mapping into the halves the client may use for a stream of `dir`
    /// (playback: audio writer; capture, monitor: audio reader). Setup only (one `Arc`).
    #[must_use]
    pub fn into_client(self, dir: Direction) -> ClientHalves {
        let shm = Arc::new(self);
        let audio = match dir {
            Direction::Playback => AudioHalf::Writer(AudioWriter { shm: Arc::clone(&shm) }),
            Direction::Capture | Direction::Monitor => AudioHalf::Reader(AudioReader { shm: Arc::clone(&shm) }),
        };
        ClientHalves {
            c2d: RecordSender { shm: Arc::clone(&shm), ring: Ring::ClientToDaemon, end: RingEnd::default() },
            d2c: RecordReceiver { shm: Arc::clone(&shm), ring: Ring::DaemonToClient, end: RingEnd::default() },
            audio,
            shm,
        }
    }

    /// Daemon: splits the mapping into the halves the daemon may use for a stream of `dir`
    /// (playback: audio reader; capture, monitor: audio writer). Setup only (one `Arc`).
    #[must_use]
    pub fn into_daemon(self, dir: Direction) -> DaemonHalves {
        let shm = Arc::new(self);
        let audio = match dir {
            Direction::Playback => AudioHalf::Reader(AudioReader { shm: Arc::clone(&shm) }),
            Direction::Capture | Direction::Monitor => AudioHalf::Writer(AudioWriter { shm: Arc::clone(&shm) }),
        };
        DaemonHalves {
            c2d: RecordReceiver { shm: Arc::clone(&shm), ring: Ring::ClientToDaemon, end: RingEnd::default() },
            d2c: RecordSender { shm: Arc::clone(&shm), ring: Ring::DaemonToClient, end: RingEnd::default() },
            timing: TimingWriter { shm: Arc::clone(&shm) },
            audio,
            shm,
        }
    }
}

/// The producer half of one message ring: owns its private write position.
#[derive(Debug)]
pub struct RecordSender {
    shm: Arc<StreamShm>,
    ring: Ring,
    end: RingEnd,
}

impl RecordSender {
    /// Appends a record. Returns `Ok(false)` when the ring is full. RT: yes.
    ///
    /// # Errors
    /// A [`Violation`] when the consumer's cursor is out of range.
    #[inline]
    pub fn push(&mut self, rec: Record) -> Result<bool, Violation> {
        self.shm.push_record(self.ring, &mut self.end, rec)
    }

    /// The private write position (records put so far, modulo 2^32).
    #[must_use]
    #[inline]
    pub fn pos(&self) -> u32 {
        self.end.pos()
    }

    /// The consumer's cursor (its `sleeping` flag says the consumer waits for records).
    #[must_use]
    #[inline]
    pub fn read_cursor(&self) -> &Cursor {
        self.shm.ring_read_cursor(self.ring)
    }
}

/// The consumer half of one message ring: owns its private read position.
#[derive(Debug)]
pub struct RecordReceiver {
    shm: Arc<StreamShm>,
    ring: Ring,
    end: RingEnd,
}

impl RecordReceiver {
    /// Takes the next record, if any. The inner `Err` is a record that does not decode (it is
    /// consumed, and the caller treats it as a violation). RT: yes.
    ///
    /// # Errors
    /// A [`Violation`] when the producer's cursor is out of range.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<Result<Record, DecodeError>>, Violation> {
        self.shm.pop_record(self.ring, &mut self.end)
    }

    /// The private read position (records taken so far, modulo 2^32). The copy of it in the
    /// shared header may have been rewritten by the peer; this one cannot.
    #[must_use]
    #[inline]
    pub fn pos(&self) -> u32 {
        self.end.pos()
    }

    /// The producer's cursor (read its `pos` with Acquire before trusting the records).
    #[must_use]
    #[inline]
    pub fn write_cursor(&self) -> &Cursor {
        self.shm.ring_write_cursor(self.ring)
    }

    /// Our own cursor (its `sleeping` flag is set while we wait for records).
    #[must_use]
    #[inline]
    pub fn read_cursor(&self) -> &Cursor {
        self.shm.ring_read_cursor(self.ring)
    }
}

/// The producer half of the audio ring: writes frames and publishes `audio_write`. The side's
/// own frame count stays with the side (it may be wider than the published `u32`).
#[derive(Debug)]
pub struct AudioWriter {
    shm: Arc<StreamShm>,
}

impl AudioWriter {
    /// The stream's layout (the private copy).
    #[must_use]
    #[inline]
    pub fn layout(&self) -> &Layout {
        self.shm.layout()
    }

    /// Copies `src` (whole frames, at most the ring) into the audio ring starting at frame
    /// `index`, wrapping at the end. RT: yes.
    ///
    /// # Panics
    /// If `src` is not whole frames, longer than the ring, or `index` is outside it.
    #[inline]
    pub fn write(&mut self, index: u32, src: &[u8]) {
        self.shm.write_audio(index, src);
    }

    /// Copies back frames this side wrote (the consumer never writes the audio ring), starting
    /// at frame `index`, into `dst` (whole frames, at most the ring), wrapping at the end.
    ///
    /// # Panics
    /// If `dst` is not whole frames, longer than the ring, or `index` is outside it.
    pub fn read_back(&self, index: u32, dst: &mut [u8]) {
        self.shm.read_audio(index, dst);
    }

    /// Publishes the write position `pos` (Release, after the copy). RT: yes.
    #[inline]
    pub fn publish(&mut self, pos: u32) {
        // Pairs with the consumer's Acquire load of `audio_write.pos` before it reads.
        self.shm.audio_write().pos.store(pos, Ordering::Release);
    }

    /// Client only, in `prepare` while the daemon side is STOPPED: both audio cursors to 0.
    pub fn reset(&mut self) {
        self.shm.reset_audio_cursors();
    }
}

/// The consumer half of the audio ring: reads frames and publishes `audio_read`.
#[derive(Debug)]
pub struct AudioReader {
    shm: Arc<StreamShm>,
}

impl AudioReader {
    /// The stream's layout (the private copy).
    #[must_use]
    #[inline]
    pub fn layout(&self) -> &Layout {
        self.shm.layout()
    }

    /// Copies frames from the audio ring starting at frame `index` into `dst` (whole frames, at
    /// most the ring), wrapping at the end. RT: yes.
    ///
    /// # Panics
    /// If `dst` is not whole frames, longer than the ring, or `index` is outside it.
    #[inline]
    pub fn read(&self, index: u32, dst: &mut [u8]) {
        self.shm.read_audio(index, dst);
    }

    /// Publishes the read position `pos` (Release, after the frames were copied out). RT: yes.
    #[inline]
    pub fn consume(&mut self, pos: u32) {
        // Pairs with the producer's Acquire load of `audio_read.pos` (it reuses the space).
        self.shm.audio_read().pos.store(pos, Ordering::Release);
    }

    /// Client only, in `prepare` while the daemon side is STOPPED: both audio cursors to 0.
    pub fn reset(&mut self) {
        self.shm.reset_audio_cursors();
    }
}

impl AudioHalf {
    /// Client only, in `prepare` while the daemon side is STOPPED: both audio cursors to 0.
    pub fn reset(&mut self) {
        match self {
            Self::Writer(w) => w.reset(),
            Self::Reader(r) => r.reset(),
        }
    }
}

/// The daemon's half of the timing line: the seqlock snapshot and the flags.
#[derive(Debug)]
pub struct TimingWriter {
    shm: Arc<StreamShm>,
}

impl TimingWriter {
    /// Publishes a timing snapshot (seqlock writer). RT: yes.
    #[inline]
    pub fn publish(&mut self, pos: u32, queued_frames: u32, ts_ns: u64) {
        self.shm.publish_timing(pos, queued_frames, ts_ns);
    }

    /// Says whether the device is gone and the stream waits for it
    /// ([`crate::layout::DEVICE_WAITING`]; outside the seqlock). RT: yes.
    #[inline]
    pub fn set_device_waiting(&mut self, waiting: bool) {
        self.shm.set_device_waiting(waiting);
    }
}

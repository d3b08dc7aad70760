//! The stream's shared memory: creating and sealing the memfd (client), checking and mapping it
//! (daemon), and every access to it. This module holds all of `shared`'s unsafe code.
//!
//! Memory the peer can write is never seen through `&[u8]`/`&T` of plain data: identity fields
//! are read once with `read_volatile`, audio and records are copied through raw pointers, and the
//! cursors are atomics. Runs in both processes. RT: the accessors yes; create/map no.
//!
//! Ownership by type: a side splits its mapping ([`StreamShm::into_client`],
//! [`StreamShm::into_daemon`]) into the halves it may write through, each taking `&mut self`
//! where it writes: [`RecordSender`] / [`RecordReceiver`] (one per message ring, owning the
//! side's private ring position), [`AudioWriter`] / [`AudioReader`] (by direction), and the
//! daemon's [`TimingWriter`]. The writing methods of `StreamShm` itself are crate-private.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use crate::cursor;
use crate::error::Violation;
use crate::layout::{ClientLine, Cursor, Identity, Layout, StreamHeader, Timing};
use crate::msg::{Direction, Record, RECORD_BYTES};
use crate::sync::Ordering;
use crate::DecodeError;

/// Seals a stream memfd must carry before the daemon maps it.
pub const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Why a peer's memfd was refused.
#[derive(Debug)]
pub enum MapError {
    /// A system call failed.
    Io(&'static str, io::Error),
    /// The memfd or its contents break the contract.
    Violation(Violation),
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(op, e) => write!(f, "{op}: {e}"),
            Self::Violation(v) => write!(f, "{v}"),
        }
    }
}

impl std::error::Error for MapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(_, e) => Some(e),
            Self::Violation(v) => Some(v),
        }
    }
}

/// Which message ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// Client to daemon.
    ClientToDaemon,
    /// Daemon to client.
    DaemonToClient,
}

/// One side's private position in a message ring (rtrb's cached own cursor), owned by the
/// ring's [`RecordSender`] or [`RecordReceiver`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RingEnd {
    pos: u32,
}

impl RingEnd {
    /// The private position (records taken or put so far, modulo 2^32). The copy of it in the
    /// shared header may have been rewritten by the peer; this one cannot.
    #[must_use]
    pub(crate) fn pos(self) -> u32 {
        self.pos
    }
}

/// A mapped stream memfd. Unmapped on drop.
#[derive(Debug)]
pub struct StreamShm {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the mapping is process-wide memory; all shared accesses go through atomics or raw
// pointer copies, so moving or sharing the handle between threads is sound.
unsafe impl Send for StreamShm {}
// SAFETY: as above: no method hands out references to non-atomic shared data.
unsafe impl Sync for StreamShm {}

fn errno_io(op: &'static str) -> MapError {
    MapError::Io(op, io::Error::last_os_error())
}

impl StreamShm {
    /// Client side: creates a memfd for `layout`, sizes it, seals it, maps it and writes the
    /// identity line. Returns the fd to send to the daemon and the mapping.
    ///
    /// # Errors
    /// The failing system call.
    pub fn create(layout: Layout, name: &str) -> Result<(OwnedFd, Self), MapError> {
        let cname = std::ffi::CString::new(format!("shmix:{name}")).unwrap_or_default();
        // SAFETY: `cname` is a valid NUL-terminated string; flags are constants.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if raw < 0 {
            return Err(errno_io("memfd_create"));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = layout.total_bytes as libc::off_t;
        // SAFETY: plain syscall on our own fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(errno_io("ftruncate"));
        }
        // SAFETY: plain syscall on our own fd.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, REQUIRED_SEALS) } != 0 {
            return Err(errno_io("fcntl(F_ADD_SEALS)"));
        }
        let shm = Self::map(&fd, layout)?;
        // SAFETY: the mapping is at least HEADER_BYTES long and page aligned; nobody else has
        // the fd yet, so this write races with nothing.
        unsafe { ptr::write_volatile(shm.base.as_ptr().cast::<Identity>(), layout.identity()) };
        Ok((fd, shm))
    }

    /// Daemon side: checks that `fd` is a sealed memfd of exactly `layout.total_bytes`, maps it
    /// and checks its identity line against `layout`.
    ///
    /// # Errors
    /// [`MapError::Violation`] for a missing seal, a wrong size or a wrong identity; `Io` when a
    /// system call fails.
    pub fn map_peer(fd: &OwnedFd, layout: Layout) -> Result<Self, MapError> {
        // SAFETY: plain syscall on a valid fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(MapError::Violation(Violation::new("not a sealable memfd", 0, 0)));
        }
        if seals & REQUIRED_SEALS != REQUIRED_SEALS {
            return Err(MapError::Violation(Violation::new(
                "memfd lacks seals (need SHRINK|GROW|SEAL)",
                seals as u64,
                REQUIRED_SEALS as u64,
            )));
        }
        // Only tmpfs (shmem) memfds: a hole punched into a hugetlbfs memfd is refilled from the
        // huge page pool when next touched, and with the pool empty that touch, on the mix
        // thread, is a SIGBUS. A hole in tmpfs reads back as zeros.
        // SAFETY: all-zero is a valid `statfs`.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `sfs` is a valid out pointer.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } != 0 {
            return Err(errno_io("fstatfs"));
        }
        if sfs.f_type != libc::TMPFS_MAGIC {
            return Err(MapError::Violation(Violation::new(
                "memfd is not on tmpfs (hugetlbfs?)",
                sfs.f_type as u64,
                libc::TMPFS_MAGIC as u64,
            )));
        }
        // SAFETY: all-zero is a valid `stat`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(errno_io("fstat"));
        }
        if st.st_size as u64 != layout.total_bytes {
            return Err(MapError::Violation(Violation::new(
                "memfd size differs from the layout",
                st.st_size as u64,
                layout.total_bytes,
            )));
        }
        let shm = Self::map(fd, layout)?;
        // SAFETY: the mapping holds at least the header; a volatile read of plain integers is
        // valid whatever the peer wrote there.
        let id = unsafe { ptr::read_volatile(shm.base.as_ptr().cast::<Identity>()) };
        layout.check_identity(&id).map_err(MapError::Violation)?;
        lock_or_prefault(shm.base, layout.total_bytes as usize);
        Ok(shm)
    }

    fn map(fd: &OwnedFd, layout: Layout) -> Result<Self, MapError> {
        // SAFETY: a fresh shared mapping of a sealed file of this exact size: the kernel chooses
        // the address, and the seals mean it cannot shrink under us (no SIGBUS).
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                layout.total_bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(errno_io("mmap"));
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| errno_io("mmap"))?;
        Ok(Self { base, layout })
    }

    /// Replaces the whole mapping, in this process only, with private zeroed memory at the same
    /// address: what was shared stays with the other processes that map it. For a forked child
    /// of the process that created the stream: nothing it does through this mapping (or through
    /// pointers into it that alsa-lib handed the program) can reach the parent's stream.
    ///
    /// # Errors
    /// The `mmap` error.
    pub fn detach(&self) -> std::io::Result<()> {
        // SAFETY: MAP_FIXED over exactly the range we mapped and own: the old pages are
        // replaced, no Rust reference into them exists (accessors borrow `self`), and the new
        // mapping is as long and as writable, so every pointer into the range stays valid.
        let p = unsafe {
            libc::mmap(
                self.base.as_ptr().cast(),
                self.layout.total_bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The layout this mapping was made for (the private copy, never re-read from memory).
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn header(&self) -> *const StreamHeader {
        self.base.as_ptr().cast::<StreamHeader>()
    }

    /// Producer cursor of the audio ring.
    #[must_use]
    pub fn audio_write(&self) -> &Cursor {
        // SAFETY: the header lies inside the mapping, which lives as long as `self`; `Cursor`
        // holds only atomics, which tolerate concurrent writes by the peer.
        unsafe { &*ptr::addr_of!((*self.header()).audio_write) }
    }

    /// Consumer cursor of the audio ring.
    #[must_use]
    pub fn audio_read(&self) -> &Cursor {
        // SAFETY: as in `audio_write`.
        unsafe { &*ptr::addr_of!((*self.header()).audio_read) }
    }

    /// The client's avail_min.
    #[must_use]
    pub fn avail_min(&self) -> &ClientLine {
        // SAFETY: as in `audio_write`.
        unsafe { &*ptr::addr_of!((*self.header()).avail_min) }
    }

    fn timing(&self) -> &Timing {
        // SAFETY: as in `audio_write`.
        unsafe { &*ptr::addr_of!((*self.header()).timing) }
    }

    fn ring_cursors(&self, ring: Ring) -> (&Cursor, &Cursor, u32) {
        // SAFETY: as in `audio_write`.
        unsafe {
            let h = self.header();
            match ring {
                Ring::ClientToDaemon => {
                    (&*ptr::addr_of!((*h).c2d_write), &*ptr::addr_of!((*h).c2d_read), self.layout.c2d_offset)
                }
                Ring::DaemonToClient => {
                    (&*ptr::addr_of!((*h).d2c_write), &*ptr::addr_of!((*h).d2c_read), self.layout.d2c_offset)
                }
            }
        }
    }

    /// The write cursor of a message ring (its `sleeping` flag is the producer's).
    #[must_use]
    pub fn ring_write_cursor(&self, ring: Ring) -> &Cursor {
        self.ring_cursors(ring).0
    }

    /// The read cursor of a message ring (its `sleeping` flag says the consumer waits).
    #[must_use]
    pub fn ring_read_cursor(&self, ring: Ring) -> &Cursor {
        self.ring_cursors(ring).1
    }

    /// Producer: appends a record. Returns `Ok(false)` when the ring is full.
    ///
    /// # Errors
    /// A [`Violation`] when the consumer's cursor is out of range.
    pub(crate) fn push_record(&self, ring: Ring, end: &mut RingEnd, rec: Record) -> Result<bool, Violation> {
        let (w, r, offset) = self.ring_cursors(ring);
        let cap = self.layout.msg_records;
        // Pairs with the consumer's Release store in `pop_record`.
        let read = r.pos.load(Ordering::Acquire);
        if cursor::fill(end.pos, read, cap)? == cap {
            return Ok(false);
        }
        let slot = (end.pos & (cap - 1)) as usize * RECORD_BYTES;
        let bytes = rec.encode();
        // SAFETY: slot + 16 <= cap * 16, inside the ring region of the mapping.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.as_ptr().add(offset as usize + slot), RECORD_BYTES);
        }
        end.pos = end.pos.wrapping_add(1);
        // Pairs with the consumer's Acquire load in `pop_record`.
        w.pos.store(end.pos, Ordering::Release);
        Ok(true)
    }

    /// Consumer: takes the next record, if any. The inner `Err` is a record that does not decode
    /// (it is consumed, and the caller treats it as a violation).
    ///
    /// # Errors
    /// A [`Violation`] when the producer's cursor is out of range.
    pub(crate) fn pop_record(
        &self,
        ring: Ring,
        end: &mut RingEnd,
    ) -> Result<Option<Result<Record, DecodeError>>, Violation> {
        let (w, r, offset) = self.ring_cursors(ring);
        let cap = self.layout.msg_records;
        // Pairs with the producer's Release store in `push_record`.
        let write = w.pos.load(Ordering::Acquire);
        if cursor::fill(write, end.pos, cap)? == 0 {
            return Ok(None);
        }
        let slot = (end.pos & (cap - 1)) as usize * RECORD_BYTES;
        let mut bytes = [0u8; RECORD_BYTES];
        // SAFETY: slot + 16 <= cap * 16, inside the ring region; copied out before decoding.
        unsafe {
            ptr::copy_nonoverlapping(self.base.as_ptr().add(offset as usize + slot), bytes.as_mut_ptr(), RECORD_BYTES);
        }
        end.pos = end.pos.wrapping_add(1);
        // Pairs with the producer's Acquire load in `push_record`.
        r.pos.store(end.pos, Ordering::Release);
        Ok(Some(Record::decode(bytes)))
    }

    /// Base address of the audio ring (for pointing alsa-lib's mmap areas at it).
    #[must_use]
    pub fn audio_ptr(&self) -> *mut u8 {
        // SAFETY: audio_offset < total_bytes, inside the mapping.
        unsafe { self.base.as_ptr().add(self.layout.audio_offset as usize) }
    }

    /// Copies `src` (whole frames, at most the ring) into the audio ring starting at frame
    /// `index`, wrapping at the end.
    ///
    /// # Panics
    /// If `src` is not whole frames, longer than the ring, or `index` is outside it.
    pub(crate) fn write_audio(&self, index: u32, src: &[u8]) {
        let fb = self.layout.frame_bytes as usize;
        let frames = u32::try_from(src.len() / fb).expect("run fits in u32");
        assert!(
            src.len().is_multiple_of(fb) && frames <= self.layout.buffer_frames && index < self.layout.buffer_frames
        );
        let (a, b) = cursor::split_run(index, frames, self.layout.buffer_frames);
        let (a_bytes, b_bytes) = (a as usize * fb, b as usize * fb);
        // SAFETY: index + a <= buffer_frames and b <= buffer_frames, so both runs lie inside the
        // audio ring; `src` is our own memory and cannot overlap the mapping's.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.audio_ptr().add(index as usize * fb), a_bytes);
            ptr::copy_nonoverlapping(src.as_ptr().add(a_bytes), self.audio_ptr(), b_bytes);
        }
    }

    /// Copies frames from the audio ring starting at frame `index` into `dst` (whole frames, at
    /// most the ring), wrapping at the end.
    ///
    /// # Panics
    /// If `dst` is not whole frames, longer than the ring, or `index` is outside it.
    pub(crate) fn read_audio(&self, index: u32, dst: &mut [u8]) {
        let fb = self.layout.frame_bytes as usize;
        let frames = u32::try_from(dst.len() / fb).expect("run fits in u32");
        assert!(
            dst.len().is_multiple_of(fb) && frames <= self.layout.buffer_frames && index < self.layout.buffer_frames
        );
        let (a, b) = cursor::split_run(index, frames, self.layout.buffer_frames);
        let (a_bytes, b_bytes) = (a as usize * fb, b as usize * fb);
        // SAFETY: as in `write_audio`, with source and destination swapped.
        unsafe {
            ptr::copy_nonoverlapping(self.audio_ptr().add(index as usize * fb), dst.as_mut_ptr(), a_bytes);
            ptr::copy_nonoverlapping(self.audio_ptr(), dst.as_mut_ptr().add(a_bytes), b_bytes);
        }
    }

    /// Client, in `prepare` while the daemon side is STOPPED: both audio cursors to 0.
    pub(crate) fn reset_audio_cursors(&self) {
        // Pairs with the daemon's Acquire loads once it has our Start.
        self.audio_write().pos.store(0, Ordering::Release);
        self.audio_read().pos.store(0, Ordering::Release);
    }

    /// Daemon: publishes a timing snapshot (seqlock writer; single writer).
    pub(crate) fn publish_timing(&self, pos: u32, queued_frames: u32, ts_ns: u64) {
        let t = self.timing();
        let seq = t.seq.load(Ordering::Relaxed);
        t.seq.store(seq.wrapping_add(1) | 1, Ordering::Relaxed);
        // Orders the odd seq before the data stores (pairs with the reader's Acquire fence).
        crate::sync::fence(Ordering::Release);
        t.pos.store(pos, Ordering::Relaxed);
        t.queued_frames.store(queued_frames, Ordering::Relaxed);
        t.ts_ns.store(ts_ns, Ordering::Relaxed);
        // Pairs with the reader's Acquire load of `seq`.
        t.seq.store((seq | 1).wrapping_add(1), Ordering::Release);
    }

    /// Daemon: says whether the device is gone and the stream waits for it
    /// ([`crate::layout::DEVICE_WAITING`]; outside the seqlock). RT: yes.
    pub(crate) fn set_device_waiting(&self, waiting: bool) {
        let flags = if waiting { crate::layout::DEVICE_WAITING } else { 0 };
        self.timing().flags.store(flags, Ordering::Release);
    }

    /// Client: the daemon says the device is gone and it waits for it to come back. Untrusted
    /// (a hint that lengthens the client's own waits, never a memory access).
    #[must_use]
    pub fn device_waiting(&self) -> bool {
        self.timing().flags.load(Ordering::Acquire) & crate::layout::DEVICE_WAITING != 0
    }

    /// Client: reads the timing snapshot `(pos, queued_frames, ts_ns)`; `None` if the daemon was
    /// writing it on every one of a few tries (or never wrote one).
    #[must_use]
    pub fn read_timing(&self) -> Option<(u32, u32, u64)> {
        let t = self.timing();
        for _ in 0..8 {
            // Pairs with the writer's final Release store.
            let s1 = t.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let v = (
                t.pos.load(Ordering::Relaxed),
                t.queued_frames.load(Ordering::Relaxed),
                t.ts_ns.load(Ordering::Relaxed),
            );
            // Orders the data loads before the second seq load (pairs with the writer's fence).
            crate::sync::fence(Ordering::Acquire);
            if t.seq.load(Ordering::Relaxed) == s1 {
                return if s1 == 0 { None } else { Some(v) };
            }
        }
        None
    }
}

mod halves;

pub use halves::{
    AudioHalf, AudioReader, AudioWriter, ClientHalves, DaemonHalves, RecordReceiver, RecordSender, TimingWriter,
};

/// Makes every page of a fresh mapping present before the real-time thread reads it, so it
/// takes no page fault there: `mlock` (which also keeps the pages from being swapped out), else,
/// when RLIMIT_MEMLOCK forbids it, a read of each page. Best effort; munmap drops the lock.
/// Runs on the daemon's control thread (`map_peer`).
fn lock_or_prefault(base: NonNull<u8>, len: usize) {
    // SAFETY: `base..base+len` is one whole mapping of ours; mlock only changes paging.
    if unsafe { libc::mlock(base.as_ptr().cast(), len) } == 0 {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
    for off in (0..len).step_by(page) {
        // SAFETY: `off < len`, inside the mapping; a volatile byte read is valid whatever the
        // peer wrote there, and the memfd is sealed against shrinking (no SIGBUS).
        unsafe { ptr::read_volatile(base.as_ptr().add(off)) };
    }
}

impl Drop for StreamShm {
    fn drop(&mut self) {
        // SAFETY: `base`/`total_bytes` are exactly what mmap returned; no references into the
        // mapping outlive `self` (accessors borrow `self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.layout.total_bytes as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    fn pair() -> (StreamShm, StreamShm, OwnedFd) {
        let layout = Layout::new(4, 1000, 8).unwrap();
        let (fd, client) = StreamShm::create(layout, "test").unwrap();
        let daemon = StreamShm::map_peer(&fd, layout).unwrap();
        (client, daemon, fd)
    }

    /// A sealed hugetlbfs memfd of exactly a layout's size: everything right but its file system.
    #[test]
    fn a_hugetlb_memfd_is_refused() {
        const HUGE: u64 = 2 << 20;
        let probe = Layout::new(4, 1, 8).unwrap();
        let layout = Layout::new(4, ((HUGE - u64::from(probe.audio_offset)) / 4) as u32, 8).unwrap();
        assert_eq!(layout.total_bytes, HUGE);
        // SAFETY: a valid C string; flags are constants.
        let raw = unsafe {
            libc::memfd_create(c"shmix-huge".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | libc::MFD_HUGETLB)
        };
        assert!(raw >= 0, "memfd_create(MFD_HUGETLB): {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain syscalls on our own descriptor.
        unsafe {
            assert_eq!(libc::ftruncate(fd.as_raw_fd(), HUGE as libc::off_t), 0);
            assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, REQUIRED_SEALS), 0);
        }
        match StreamShm::map_peer(&fd, layout) {
            Err(MapError::Violation(v)) => assert!(v.to_string().contains("tmpfs"), "{v}"),
            other => panic!("a hugetlb memfd was not refused as such: {other:?}"),
        }
    }

    #[test]
    fn a_detached_mapping_no_longer_reaches_the_peer() {
        let (c, d, _fd) = pair();
        c.audio_write().pos.store(7, Ordering::Release);
        assert_eq!(d.audio_write().pos.load(Ordering::Acquire), 7);
        c.detach().unwrap();
        assert_eq!(c.audio_write().pos.load(Ordering::Acquire), 0, "detached memory starts zeroed");
        c.audio_write().pos.store(9, Ordering::Release);
        assert_eq!(d.audio_write().pos.load(Ordering::Acquire), 7, "a write after detach reached the peer");
    }

    #[test]
    fn records_cross_between_mappings_and_ring_fills() {
        let (c, d, _fd) = pair();
        let (mut cw, mut dr) = (RingEnd::default(), RingEnd::default());
        for seq in 0..8 {
            assert!(c.push_record(Ring::ClientToDaemon, &mut cw, Record::Start { seq }).unwrap());
        }
        assert!(!c.push_record(Ring::ClientToDaemon, &mut cw, Record::Start { seq: 9 }).unwrap());
        for seq in 0..8 {
            assert_eq!(d.pop_record(Ring::ClientToDaemon, &mut dr).unwrap(), Some(Ok(Record::Start { seq })));
        }
        assert_eq!(d.pop_record(Ring::ClientToDaemon, &mut dr).unwrap(), None);
    }

    #[test]
    fn hostile_cursor_is_a_violation() {
        let (c, d, _fd) = pair();
        c.ring_write_cursor(Ring::ClientToDaemon).pos.store(1000, Ordering::Release);
        assert!(d.pop_record(Ring::ClientToDaemon, &mut RingEnd::default()).is_err());
    }

    #[test]
    fn audio_wraps() {
        let (c, d, _fd) = pair();
        let src: Vec<u8> = (0..400u32).flat_map(|i| i.to_le_bytes()).collect();
        c.write_audio(800, &src);
        let mut out = vec![0u8; 1600];
        d.read_audio(800, &mut out);
        assert_eq!(out, src);
    }

    #[test]
    fn unsealed_or_short_memfd_is_refused() {
        let layout = Layout::new(4, 1000, 8).unwrap();
        // SAFETY: valid C string literal.
        let raw = unsafe { libc::memfd_create(c"x".as_ptr(), libc::MFD_CLOEXEC) };
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: our own fd.
        unsafe { libc::ftruncate(fd.as_raw_fd(), layout.total_bytes as libc::off_t) };
        let err = StreamShm::map_peer(&fd, layout).unwrap_err();
        assert!(matches!(err, MapError::Violation(v) if v.what.contains("seal")), "{err}");
        let bigger = Layout::new(4, 100_000, 8).unwrap();
        let (fd, _c) = StreamShm::create(layout, "t").unwrap();
        let err = StreamShm::map_peer(&fd, bigger).unwrap_err();
        assert!(matches!(err, MapError::Violation(v) if v.what.contains("size")), "{err}");
    }

    /// Pages of `shm`'s mapping that are not present (mincore).
    fn absent_pages(shm: &StreamShm) -> usize {
        let len = shm.layout().total_bytes as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: the range is the mapping; `vec` has one byte per page of it.
        let r = unsafe { libc::mincore(shm.base.as_ptr().cast(), len, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|v| *v & 1 == 0).count()
    }

    #[test]
    fn a_mapped_peer_stream_is_present_before_the_mix_thread_reads_it() {
        // 64 pages of audio the client never touched (only its header is written at create).
        let layout = Layout::new(4, 65536, 8).unwrap();
        let (fd, client) = StreamShm::create(layout, "t").unwrap();
        let before = StreamShm::map(&fd, layout).unwrap();
        assert!(absent_pages(&before) > 32, "the test needs untouched pages");
        let daemon = StreamShm::map_peer(&fd, layout).unwrap();
        assert_eq!(absent_pages(&daemon), 0);
        drop((client, before));
    }

    #[test]
    fn timing_round_trips() {
        let (c, d, _fd) = pair();
        assert_eq!(c.read_timing(), None);
        d.publish_timing(7, 256, 123_456);
        assert_eq!(c.read_timing(), Some((7, 256, 123_456)));
        assert!(!c.device_waiting());
        d.set_device_waiting(true);
        assert!(c.device_waiting());
        assert_eq!(c.read_timing(), Some((7, 256, 123_456)));
        d.set_device_waiting(false);
        assert!(!c.device_waiting());
    }
}

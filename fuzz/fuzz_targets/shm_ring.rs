//! A hostile peer writes anything anywhere in a real stream memfd (cursors, sleeping flags,
//! records, identity, audio) between the accesses both sides make through `StreamShm`: popping
//! and pushing records, checking the peer's audio cursor and copying the frames it covers (the
//! daemon's playback halves and, over a second mapping, a recorder's audio writer).
//! Nothing panics, and every copy stays inside the audio ring (checked by `read_audio` /
//! `write_audio` themselves).
#![no_main]

use std::sync::atomic::Ordering;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shmix_shared::cursor;
use shmix_shared::layout::{Cursor, Layout};
use shmix_shared::msg::{Direction, Record};
use shmix_shared::shm::{AudioHalf, Ring, StreamShm};

#[derive(Debug, Arbitrary)]
enum Op {
    /// The peer writes raw bytes at an offset of the memfd.
    Scribble { offset: u16, bytes: [u8; 8] },
    /// The peer stores a cursor field.
    SetCursor { which: u8, value: u32 },
    /// The daemon pops a client record.
    DaemonPop,
    /// The daemon posts a record.
    DaemonPush { seq: u32, pos: u32 },
    /// The daemon consumes up to `frames` of playback audio at its private read position.
    DaemonConsume { frames: u16 },
    /// The daemon produces `frames` of capture audio (checked against the client's read cursor).
    DaemonProduce { frames: u16 },
    /// The plugin pops a daemon record.
    ClientPop,
    /// The plugin checks the daemon's published read position.
    ClientRefresh,
}

#[derive(Debug, Arbitrary)]
struct Input {
    frame_bytes: u8,
    buffer_frames: u16,
    ops: Vec<Op>,
}

fn cursor_of(shm: &StreamShm, which: u8) -> &Cursor {
    match which % 6 {
        0 => shm.audio_write(),
        1 => shm.audio_read(),
        2 => shm.ring_write_cursor(Ring::ClientToDaemon),
        3 => shm.ring_read_cursor(Ring::ClientToDaemon),
        4 => shm.ring_write_cursor(Ring::DaemonToClient),
        _ => shm.ring_read_cursor(Ring::DaemonToClient),
    }
}

fuzz_target!(|inp: Input| {
    let fb = u32::from(inp.frame_bytes % 16) + 1;
    let buffer = u32::from(inp.buffer_frames % 2048) + 1;
    let Ok(layout) = Layout::new(fb, buffer, 8) else { return };
    let (fd, client) = StreamShm::create(layout, "fuzz").expect("memfd");
    let mut daemon = StreamShm::map_peer(&fd, layout).expect("map").into_daemon(Direction::Playback);
    let AudioHalf::Reader(mut d_reader) = daemon.audio else { unreachable!("the daemon reads playback") };
    let AudioHalf::Writer(mut d_writer) =
        StreamShm::map_peer(&fd, layout).expect("map").into_daemon(Direction::Capture).audio
    else {
        unreachable!("the daemon writes capture")
    };
    let mut client = client.into_client(Direction::Playback);
    let total = layout.total_bytes as usize;
    let (mut read_count, mut write_count) = (0u64, 0u64);
    let (mut peer_seen, write_total) = (0u32, 0u32);
    let mut scratch = vec![0u8; (buffer * fb) as usize];
    let (mut daemon_ok, mut client_ok) = (true, true);
    for op in inp.ops.iter().take(256) {
        match *op {
            Op::Scribble { offset, bytes } => {
                let at = usize::from(offset) % (total - 8);
                // The hostile peer's own mapping: raw writes through the audio pointer's base.
                let base = client.shm.audio_ptr().wrapping_sub(layout.audio_offset as usize);
                for (i, b) in bytes.iter().enumerate() {
                    // SAFETY: at + i < total: inside the client's own mapping.
                    unsafe { std::ptr::write_volatile(base.add(at + i), *b) };
                }
            }
            Op::SetCursor { which, value } => {
                let c = cursor_of(&client.shm, which);
                if which & 0x80 == 0 {
                    c.pos.store(value, Ordering::Release);
                } else {
                    c.sleeping.store(value, Ordering::Release);
                }
            }
            Op::DaemonPop if daemon_ok => match daemon.c2d.pop() {
                Ok(None) => {}
                Ok(Some(Ok(r))) => daemon_ok = r.is_client_request(),
                Ok(Some(Err(_))) | Err(_) => daemon_ok = false,
            },
            Op::DaemonPush { seq, pos } if daemon_ok => {
                if daemon.d2c.push(Record::Stopped { seq, pos }).is_err() {
                    daemon_ok = false;
                }
            }
            Op::DaemonConsume { frames } if daemon_ok => {
                let write = daemon.shm.audio_write().pos.load(Ordering::Acquire);
                match cursor::fill(write, read_count as u32, buffer) {
                    Ok(fill) => {
                        let k = fill.min(u32::from(frames));
                        let idx = cursor::ring_index(read_count, buffer);
                        d_reader.read(idx, &mut scratch[..(k * fb) as usize]);
                        read_count += u64::from(k);
                        d_reader.consume(read_count as u32);
                    }
                    Err(_) => daemon_ok = false,
                }
            }
            Op::DaemonProduce { frames } if daemon_ok => {
                let read = daemon.shm.audio_read().pos.load(Ordering::Acquire);
                match cursor::fill(write_count as u32, read, buffer) {
                    Ok(fill) => {
                        let k = (buffer - fill).min(u32::from(frames));
                        let idx = cursor::ring_index(write_count, buffer);
                        d_writer.write(idx, &scratch[..(k * fb) as usize]);
                        write_count += u64::from(k);
                        d_writer.publish(write_count as u32);
                    }
                    Err(_) => daemon_ok = false,
                }
            }
            Op::ClientPop if client_ok => match client.d2c.pop() {
                Ok(None) => {}
                Ok(Some(Ok(r))) => client_ok = !r.is_client_request(),
                Ok(Some(Err(_))) | Err(_) => client_ok = false,
            },
            Op::ClientRefresh if client_ok => {
                let new = client.shm.audio_read().pos.load(Ordering::Acquire);
                match cursor::advance(peer_seen, new, write_total) {
                    Ok(_) => peer_seen = new,
                    Err(_) => client_ok = false,
                }
            }
            _ => {}
        }
    }
});

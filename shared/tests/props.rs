//! Property tests: every wire message and ring record round-trips, and decoding arbitrary bytes
//! never panics.

use proptest::prelude::*;
use shmix_shared::control;
use shmix_shared::msg::{AudioParams, Direction, Record, SocketMsg, PROTOCOL_VERSION};
use shmix_shared::{ChannelMap, ResampleQuality, SampleFormat};

fn params() -> impl Strategy<Value = AudioParams> {
    (0usize..SampleFormat::ALL.len(), 8000u32..=384_000, 1u32..=32, 1u32..=1 << 20, 1u32..=1 << 20).prop_map(
        |(f, rate, channels, a, b)| AudioParams {
            format: SampleFormat::ALL[f],
            rate,
            channels,
            period_frames: a.min(b),
            buffer_frames: a.max(b),
        },
    )
}

fn socket_msg() -> impl Strategy<Value = SocketMsg> {
    prop_oneof![
        (any::<u32>(), 0u8..3, any::<u32>(), "[a-z0-9 ._-]{0,128}").prop_map(|(version, p, pid, name)| {
            SocketMsg::Hello {
                version,
                direction: [Direction::Playback, Direction::Capture, Direction::Monitor][p as usize % 3],
                pid,
                name,
            }
        }),
        (any::<u32>(), params()).prop_map(|(version, device)| SocketMsg::Welcome { version, device }),
        (params(), 0u32..=10, any::<u64>(), proptest::collection::vec(0u8..=36, 32), 0u32..=3).prop_map(
            |(params, p, memfd_bytes, pos, q)| SocketMsg::CreateStream {
                params,
                msg_records: 1 << p,
                memfd_bytes,
                chmap: ChannelMap::new(&pos[..params.channels as usize]).unwrap(),
                quality: ResampleQuality::from_u32(q).unwrap(),
            }
        ),
        any::<u32>().prop_map(|stream_id| SocketMsg::StreamReady { stream_id }),
        Just(SocketMsg::DestroyStream),
        Just(SocketMsg::StreamDestroyed),
        (any::<u32>(), "[ -~]{0,256}").prop_map(|(errno, reason)| SocketMsg::Refused { errno, reason }),
        (any::<u32>(), "[a-z0-9 ._-]{0,128}").prop_map(|(version, name)| SocketMsg::ControlHello { version, name }),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        any::<u32>().prop_map(|seq| Record::Start { seq }),
        any::<u32>().prop_map(|seq| Record::Stop { seq }),
        any::<u32>().prop_map(|seq| Record::Pause { seq }),
        any::<u32>().prop_map(|seq| Record::Resume { seq }),
        any::<u32>().prop_map(|seq| Record::Drain { seq }),
        (any::<u32>(), any::<u32>()).prop_map(|(seq, pos)| Record::Stopped { seq, pos }),
        (any::<u32>(), any::<u64>()).prop_map(|(pos, at_ns)| Record::Xrun { pos, at_ns }),
        (any::<u32>(), any::<u32>()).prop_map(|(seq, pos)| Record::Drained { seq, pos }),
        any::<u32>().prop_map(|errno| Record::Fatal { errno }),
    ]
}

proptest! {
    #[test]
    fn socket_messages_round_trip(m in socket_msg()) {
        prop_assert_eq!(SocketMsg::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn records_round_trip(r in record()) {
        prop_assert_eq!(Record::decode(r.encode()), Ok(r));
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SocketMsg::decode(&bytes);
        if bytes.len() >= 16 {
            let mut b = [0u8; 16];
            b.copy_from_slice(&bytes[..16]);
            let _ = Record::decode(b);
        }
    }

    #[test]
    fn control_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = control::Request::decode(&bytes);
        let _ = control::Reply::decode(&bytes);
        // A valid tag in front of garbage exercises the field decoders.
        for tag in [0x101u32, 0x102, 0x103, 0x104, 0x105, 0x181, 0x182, 0x183, 0x184, 0x185, 0x186] {
            let mut b = tag.to_le_bytes().to_vec();
            b.extend_from_slice(&bytes);
            let _ = control::Request::decode(&b);
            let _ = control::Reply::decode(&b);
        }
    }

    #[test]
    fn control_requests_round_trip(kind in 1u32..=3, id in any::<u32>(), vol in 0.0f32..=1.0, op in 0usize..3) {
        let target = match kind { 1 => control::Target::Stream(id), 2 => control::Target::Master, _ => control::Target::Capture };
        let op = [control::MuteOp::On, control::MuteOp::Off, control::MuteOp::Toggle][op];
        for r in [control::Request::SetVolume { target, volume: vol }, control::Request::SetMute { target, op }] {
            prop_assert_eq!(control::Request::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn truncated_messages_are_refused(m in socket_msg(), cut in 1usize..8) {
        let bytes = m.encode();
        let cut = cut.min(bytes.len());
        prop_assert!(SocketMsg::decode(&bytes[..bytes.len() - cut]).is_err());
    }
}

#[test]
fn version_constant_is_three() {
    // v3: ControlHello and the control protocol (`control.rs`), the plugin's copy counters on
    // the avail_min line.
    assert_eq!(PROTOCOL_VERSION, 3);
}

// ----- decoders under hostile input (mirrors fuzz/fuzz_targets; these run in every `cargo test`) -----

use shmix_shared::layout::{Identity, Layout, HEADER_BYTES, MAX_POOL_BYTES};
use shmix_shared::shm::{Ring, StreamShm};
use shmix_shared::sync::Ordering;

proptest! {
    /// Whatever decodes is the one encoding of its message: a valid packet with a byte changed,
    /// dropped or added either fails or re-encodes to exactly the changed bytes.
    #[test]
    fn mutated_packets_fail_or_are_canonical(m in socket_msg(), at in any::<usize>(), byte in any::<u8>(), how in 0u8..3) {
        let mut b = m.encode();
        let i = at % (b.len() + 1);
        match how {
            0 if i < b.len() => b[i] ^= byte | 1,
            1 if i < b.len() => { b.remove(i); }
            _ => b.insert(i, byte),
        }
        if let Ok(d) = SocketMsg::decode(&b) {
            prop_assert_eq!(d.encode(), b);
        }
    }

    /// Any 16 bytes: a record that decodes re-encodes to the same bytes.
    #[test]
    fn records_are_canonical(b in any::<[u8; 16]>()) {
        if let Ok(r) = Record::decode(b) {
            prop_assert_eq!(r.encode(), b);
        }
    }

    /// `Layout::new` on any sizes: refused, or regions inside the memfd, in order, disjoint.
    #[test]
    fn any_layout_request_is_refused_or_sound(fb in any::<u32>(), frames in any::<u32>(), recs in any::<u32>()) {
        if let Ok(l) = Layout::new(fb, frames, recs) {
            let ring = u64::from(l.msg_records) * 16;
            prop_assert!(u64::from(l.c2d_offset) >= u64::from(HEADER_BYTES));
            prop_assert!(u64::from(l.d2c_offset) >= u64::from(l.c2d_offset) + ring);
            prop_assert!(u64::from(l.audio_offset) >= u64::from(l.d2c_offset) + ring);
            prop_assert!(u64::from(l.audio_offset) + u64::from(fb) * u64::from(frames) <= l.total_bytes);
            prop_assert!(l.total_bytes <= MAX_POOL_BYTES);
        }
    }

    /// An identity line differing from the computed one in any field is refused.
    #[test]
    fn any_other_identity_is_refused(field in 0usize..9, v in any::<u64>()) {
        let l = Layout::new(4, 4096, 64).unwrap();
        let mut id: Identity = l.identity();
        let v32 = v as u32;
        match field {
            0 => id.magic = v32, 1 => id.version = v32, 2 => id.frame_bytes = v32,
            3 => id.buffer_frames = v32, 4 => id.msg_records = v32, 5 => id.c2d_offset = v32,
            6 => id.d2c_offset = v32, 7 => id.audio_offset = v32, _ => id.total_bytes = v,
        }
        prop_assert_eq!(l.check_identity(&id).is_ok(), id == l.identity());
    }

    /// A peer's message-ring cursor at any value: popping is a violation exactly when the
    /// distance exceeds the ring, never a panic, and never reads past the ring.
    #[test]
    fn hostile_ring_cursors_are_violations(write in any::<u32>(), read in any::<u32>()) {
        let l = Layout::new(4, 256, 8).unwrap();
        let (fd, client) = StreamShm::create(l, "prop").unwrap();
        let mut daemon = StreamShm::map_peer(&fd, l).unwrap().into_daemon(Direction::Playback);
        client.ring_write_cursor(Ring::ClientToDaemon).pos.store(write, Ordering::Release);
        // Pop a few first (each either takes a record or is refused) so our end is anywhere.
        for _ in 0..read % 64 {
            let _ = daemon.c2d.pop();
        }
        let r = daemon.c2d.pop();
        let consumed = daemon.shm.ring_read_cursor(Ring::ClientToDaemon).pos.load(Ordering::Acquire);
        let fill = write.wrapping_sub(consumed);
        prop_assert_eq!(r.is_err(), fill > 8);
    }
}

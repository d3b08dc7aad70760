//! Property tests: every wire message and ring record round-trips, and decoding arbitrary bytes
//! never panics.

use proptest::prelude::*;
use shmix_shared::control;
use shmix_shared::msg::{AudioParams, Direction, Record, SocketMsg, MAX_DEVICE_NAME_BYTES, PROTOCOL_VERSION};
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

/// A PCM name as `--device` takes it (empty: the default device), up to the 128-byte limit.
fn device_name() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-zA-Z0-9_:,=.-]{1,128}"]
}

fn target() -> impl Strategy<Value = control::Target> {
    (1u32..=5, any::<u32>()).prop_map(|(kind, id)| match kind {
        1 => control::Target::Stream(id),
        2 => control::Target::Master,
        3 => control::Target::Capture,
        4 => control::Target::DeviceMaster(id),
        _ => control::Target::DeviceCapture(id),
    })
}

fn device_info() -> impl Strategy<Value = control::DeviceInfo> {
    (
        (any::<u32>(), device_name(), params(), any::<bool>(), 0u32..4, any::<u32>()),
        (any::<bool>(), any::<bool>(), any::<u32>(), any::<[u64; 4]>()),
        (0.0f32..=1.0, any::<bool>(), 0.0f32..=1.0, any::<bool>()),
    )
        .prop_map(|((id, name, params, capture, st, streams), (default, preferred, queue_frames, n), v)| {
            control::DeviceInfo {
                id,
                name,
                params,
                capture,
                state: control::DeviceState::from_u32(st).unwrap(),
                streams,
                default,
                preferred,
                master_volume: v.0,
                master_muted: v.1,
                capture_volume: v.2,
                capture_muted: v.3,
                queue_frames,
                cycles: n[0],
                mix_cpu_ns: n[1],
                device_xruns: n[2],
                sampled_ns: n[3],
            }
        })
}

fn stream_info() -> impl Strategy<Value = control::StreamInfo> {
    (
        (any::<u32>(), any::<u32>(), "[a-z0-9 ._-]{0,128}", 0u8..3, device_name(), any::<bool>(), params()),
        (0u32..4, any::<u32>(), any::<u64>(), 0.0f32..=1.0, any::<bool>(), 0.0f32..=4.0, any::<[u64; 2]>()),
    )
        .prop_map(
            |((id, pid, name, d, device, pinned, params), (st, latency_frames, xruns, volume, muted, peak, n))| {
                control::StreamInfo {
                    id,
                    pid,
                    name,
                    direction: [Direction::Playback, Direction::Capture, Direction::Monitor][d as usize],
                    device,
                    pinned,
                    params,
                    state: control::StreamState::from_u32(st).unwrap(),
                    latency_frames,
                    xruns,
                    volume,
                    muted,
                    peak,
                    copied_frames: n[0],
                    zero_copy_frames: n[1],
                }
            },
        )
}

fn control_request() -> impl Strategy<Value = control::Request> {
    prop_oneof![
        Just(control::Request::List),
        Just(control::Request::Stats),
        Just(control::Request::Subscribe),
        Just(control::Request::Devices),
        (target(), 0.0f32..=1.0).prop_map(|(target, volume)| control::Request::SetVolume { target, volume }),
        (target(), 0usize..3).prop_map(|(target, op)| control::Request::SetMute {
            target,
            op: [control::MuteOp::On, control::MuteOp::Off, control::MuteOp::Toggle][op]
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(stream, device)| control::Request::Move { stream, device }),
        any::<u32>().prop_map(|device| control::Request::SetDefault { device }),
    ]
}

fn control_reply() -> impl Strategy<Value = control::Reply> {
    prop_oneof![
        proptest::collection::vec(stream_info(), 0..=64).prop_map(control::Reply::Streams),
        proptest::collection::vec(device_info(), 0..=32).prop_map(control::Reply::Devices),
        (target(), 0.0f32..=1.0, any::<bool>()).prop_map(|(target, volume, muted)| control::Reply::Volume {
            target,
            volume,
            muted
        }),
        target().prop_map(|target| control::Reply::Changed { target }),
        Just(control::Reply::Subscribed),
        (any::<u32>(), any::<u32>()).prop_map(|(stream, device)| control::Reply::Moved { stream, device }),
        any::<u32>().prop_map(|device| control::Reply::Default { device }),
        (any::<u32>(), "[ -~]{0,256}").prop_map(|(errno, reason)| control::Reply::Error { errno, reason }),
    ]
}

fn socket_msg() -> impl Strategy<Value = SocketMsg> {
    prop_oneof![
        (any::<u32>(), 0u8..3, any::<u32>(), "[a-z0-9 ._-]{0,128}", device_name()).prop_map(
            |(version, p, pid, name, device)| SocketMsg::Hello {
                version,
                direction: [Direction::Playback, Direction::Capture, Direction::Monitor][p as usize % 3],
                pid,
                name,
                device,
            }
        ),
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
        for tag in [
            0x101u32, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107, 0x108, 0x181, 0x182, 0x183, 0x184, 0x185, 0x186,
            0x187, 0x188, 0x189,
        ] {
            let mut b = tag.to_le_bytes().to_vec();
            b.extend_from_slice(&bytes);
            let _ = control::Request::decode(&b);
            let _ = control::Reply::decode(&b);
        }
    }

    #[test]
    fn control_requests_round_trip(r in control_request()) {
        prop_assert_eq!(control::Request::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn control_replies_round_trip(r in control_reply()) {
        let bytes = r.encode();
        prop_assert!(bytes.len() <= control::MAX_CONTROL_PACKET_BYTES);
        prop_assert_eq!(control::Reply::decode(&bytes), Ok(r));
    }

    /// A control packet with a byte changed, dropped or added fails or is canonical (as the
    /// socket messages below).
    #[test]
    fn mutated_control_packets_fail_or_are_canonical(
        req in control_request(), rep in control_reply(), at in any::<usize>(), byte in any::<u8>(), how in 0u8..3,
    ) {
        for mut b in [req.encode(), rep.encode()] {
            let i = at % (b.len() + 1);
            match how {
                0 if i < b.len() => b[i] ^= byte | 1,
                1 if i < b.len() => { b.remove(i); }
                _ => b.insert(i, byte),
            }
            if let Ok(d) = control::Request::decode(&b) {
                prop_assert_eq!(d.encode(), b.clone());
            }
            if let Ok(d) = control::Reply::decode(&b) {
                prop_assert_eq!(d.encode(), b);
            }
        }
    }

    #[test]
    fn truncated_control_packets_are_refused(req in control_request(), rep in control_reply(), cut in 1usize..8) {
        for bytes in [req.encode(), rep.encode()] {
            let cut = cut.min(bytes.len());
            prop_assert!(control::Request::decode(&bytes[..bytes.len() - cut]).is_err());
            prop_assert!(control::Reply::decode(&bytes[..bytes.len() - cut]).is_err());
        }
    }

    /// `Hello.device` longer than 128 bytes is refused whatever else the packet says.
    #[test]
    fn hello_with_a_long_device_is_refused(extra in 1usize..64, name in "[a-z]{0,16}") {
        let m = SocketMsg::Hello {
            version: PROTOCOL_VERSION, direction: Direction::Playback, pid: 1, name, device: "d".into(),
        };
        let mut b = m.encode();
        let len = MAX_DEVICE_NAME_BYTES + extra;
        let at = b.len() - 1 - 4;
        b.truncate(at);
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.extend(std::iter::repeat_n(b'x', len));
        prop_assert!(SocketMsg::decode(&b).is_err());
    }

    #[test]
    fn truncated_messages_are_refused(m in socket_msg(), cut in 1usize..8) {
        let bytes = m.encode();
        let cut = cut.min(bytes.len());
        prop_assert!(SocketMsg::decode(&bytes[..bytes.len() - cut]).is_err());
    }
}

#[test]
fn version_constant_is_four() {
    // v3: ControlHello and the control protocol (`control.rs`), the plugin's copy counters on
    // the avail_min line. v4: several devices (`Hello.device`, `Devices`/`Move`/`SetDefault`,
    // device targets, a stream's device in `List`).
    assert_eq!(PROTOCOL_VERSION, 4);
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

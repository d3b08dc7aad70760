//! Control-protocol packets (shared/src/control.rs): requests as the daemon decodes them from any
//! local program, replies as shmixctl and the ctl plugin decode them. Decoding never panics, and
//! whatever decodes is the one canonical encoding of its message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmix_shared::control::{Reply, Request, MAX_CONTROL_PACKET_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        assert_eq!(r.encode(), data, "request {r:?} decoded from a non-canonical packet");
    }
    if let Ok(r) = Reply::decode(data) {
        let again = r.encode();
        assert!(again.len() <= MAX_CONTROL_PACKET_BYTES);
        assert_eq!(again, data, "reply {r:?} decoded from a non-canonical packet");
    }
});

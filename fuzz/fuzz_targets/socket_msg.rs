//! Socket packets as the daemon (Hello, CreateStream, DestroyStream) and the plugin (Welcome,
//! StreamReady, Refused, ...) receive them: decoding never panics, and whatever decodes is the
//! one canonical encoding of its message (re-encoding gives the same bytes back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmix_shared::msg::{SocketMsg, MAX_PACKET_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = SocketMsg::decode(data) {
        let again = m.encode();
        assert!(again.len() <= MAX_PACKET_BYTES);
        assert_eq!(again, data, "decoded {m:?} from a non-canonical packet");
        assert_eq!(SocketMsg::decode(&again).as_ref(), Ok(&m));
    }
});

//! Message-ring records (16 bytes each) as either side pops them: decoding never panics, and a
//! record that decodes re-encodes to the same 16 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmix_shared::msg::{Record, RECORD_BYTES};

fuzz_target!(|data: &[u8]| {
    for chunk in data.chunks_exact(RECORD_BYTES) {
        let mut b = [0u8; RECORD_BYTES];
        b.copy_from_slice(chunk);
        if let Ok(r) = Record::decode(b) {
            assert_eq!(r.encode(), b, "decoded {r:?} from a non-canonical record");
            let _ = r.is_client_request();
        }
    }
});

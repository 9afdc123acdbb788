//! The PROXY header parser a listener with `accept_proxy_protocol` runs on every
//! connection: any bytes get an answer, never a panic, and a complete header
//! never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sniroute::proxy_protocol::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Complete { len, .. }) = parse(data) {
        assert!(len <= data.len());
    }
});

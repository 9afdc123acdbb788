//! The ClientHello parser the proxy runs on every TLS connection: any bytes get
//! an answer (complete, need more, or a typed error), never a panic, and a name
//! it returns is a valid, normalised hostname.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sniroute::name::HostName;
use sniroute::peek::{tls, Parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parse::Complete(Some(name))) = tls::parse(data) {
        assert_eq!(
            HostName::parse(name.as_str().as_bytes()).as_ref(),
            Some(&name)
        );
    }
});

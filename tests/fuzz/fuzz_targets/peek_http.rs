//! The request-head parser the proxy runs on every HTTP connection: any bytes
//! get an answer, never a panic, and a name it returns is a valid hostname.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sniroute::name::HostName;
use sniroute::peek::{http, Parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parse::Complete(Some(name))) = http::parse(data) {
        assert_eq!(
            HostName::parse(name.as_str().as_bytes()).as_ref(),
            Some(&name)
        );
    }
});

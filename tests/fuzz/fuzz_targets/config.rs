//! Config parsing and validation: any text gets a config or an error with a
//! location, never a panic. Offline: a server name is never sent to a resolver.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sniroute::config::parse_offline(text, Path::new("fuzz.toml"));
    }
});

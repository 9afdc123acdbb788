//! The QUIC Initial reader the forwarder runs on a new UDP flow: any datagrams
//! get an answer (complete, need more, or a typed error), never a panic, and a
//! name it returns is a valid, normalised hostname.
//!
//! The input is cut into datagrams of 1,200 bytes, the smallest a client may
//! send an Initial in, and fed to one state as one flow's; the last datagram
//! takes what is left, so a short one is reached too. A seed is then simply
//! the datagrams of a flow, each padded to 1,200 bytes. The state is fed on
//! after an error, as a forwarder that drops only the offending datagram
//! would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sniroute::name::HostName;
use sniroute::peek::Parse;
use sniroute::quic::initial::ClientInitials;

fuzz_target!(|data: &[u8]| {
    let mut flow = ClientInitials::new(16384);
    for datagram in data.chunks(1200) {
        match flow.feed(datagram) {
            Ok(Parse::Complete(Some(name))) => assert_eq!(
                HostName::parse(name.as_str().as_bytes()).as_ref(),
                Some(&name)
            ),
            Ok(_) => {}
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});

//! QUIC listeners: UDP flows routed by the SNI in the client's Initial packets.

pub mod initial;

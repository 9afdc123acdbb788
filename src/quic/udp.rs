//! Datagrams in batches, through quinn-udp: a receive may bring several
//! datagrams of one sender at once (GRO: one buffer, cut every `stride`
//! bytes), and a send may hand the kernel several of one size at once (GSO),
//! so a bulk flow costs a system call per batch instead of per datagram.
//! Each datagram's ECN bits are read and passed on, as a router would.
//!
//! Sends go straight to the descriptor without waiting, as everywhere in
//! [`crate::quic`]; receives go through tokio's readiness, so that a socket
//! with nothing to read is waited on, not polled.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{EcnCodepoint, RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// How much one receive may bring: GRO batches up to 64 KiB of datagrams.
pub(super) const MAX_BATCH: usize = 1 << 16;

/// A socket's batching state (what its kernel offers).
#[derive(Debug)]
pub(super) struct Udp(UdpSocketState);

/// What one receive brought: `len` bytes, datagrams of `stride` bytes each
/// (the last may be shorter), all from `from`, all with `ecn`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Batch {
    pub len: usize,
    pub stride: usize,
    pub from: SocketAddr,
    pub ecn: Option<EcnCodepoint>,
}

impl Udp {
    /// Turns on GRO and the ECN and destination-address reports of `socket`
    /// where the kernel has them.
    pub(super) fn new(socket: &UdpSocket) -> io::Result<Udp> {
        UdpSocketState::new(UdpSockRef::from(socket)).map(Udp)
    }

    /// One batch into `buf`, if one is waiting; `WouldBlock` if not.
    pub(super) fn try_recv(&self, socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Batch> {
        let mut meta = [RecvMeta::default()];
        socket.try_io(Interest::READABLE, || {
            self.0.recv(
                UdpSockRef::from(socket),
                &mut [IoSliceMut::new(buf)],
                &mut meta,
            )
        })?;
        let [meta] = meta;
        Ok(Batch {
            len: meta.len,
            stride: if meta.stride == 0 {
                meta.len
            } else {
                meta.stride
            },
            from: meta.addr,
            ecn: meta.ecn,
        })
    }

    /// Sends `data`, datagrams of `stride` bytes each, to `to`: in one call
    /// where the kernel can cut them (GSO), else one by one. The first
    /// error ends it.
    pub(super) fn send(
        &self,
        socket: &UdpSocket,
        to: SocketAddr,
        data: &[u8],
        stride: usize,
        ecn: Option<EcnCodepoint>,
    ) -> io::Result<()> {
        let stride = stride.max(1);
        let segments = data.len().div_ceil(stride);
        let transmit = |contents, segment_size| Transmit {
            destination: to,
            ecn,
            contents,
            segment_size,
            src_ip: None,
        };
        if segments <= 1 {
            return self
                .0
                .try_send(UdpSockRef::from(socket), &transmit(data, None));
        }
        if segments <= self.0.max_gso_segments() {
            return self
                .0
                .try_send(UdpSockRef::from(socket), &transmit(data, Some(stride)));
        }
        for datagram in data.chunks(stride) {
            self.0
                .try_send(UdpSockRef::from(socket), &transmit(datagram, None))?;
        }
        Ok(())
    }
}

//! Local resources that can run out: file descriptors, kernel memory, local
//! ports.
//!
//! When one of them runs out, calls fail that have nothing to do with any
//! peer: an upstream `socket()` fails with EMFILE whichever server it was
//! meant for. This module owns telling those errors apart ([`Resource::of`])
//! so that callers never blame a server or the kernel's features for them,
//! and their counts (read by the metrics) and throttled log lines.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::throttle::Throttle;

/// A local resource whose shortage made a call fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// EMFILE (the process's `RLIMIT_NOFILE`) or ENFILE (the system's `fs.file-max`).
    FileDescriptors,
    /// ENOMEM or ENOBUFS: kernel memory or socket buffers.
    Memory,
    /// EADDRNOTAVAIL on an unbound connect: no free ephemeral port.
    LocalPorts,
}

impl Resource {
    /// Every resource, in declaration order (`ALL[r as usize] == r`).
    pub const ALL: [Resource; 3] = [
        Resource::FileDescriptors,
        Resource::Memory,
        Resource::LocalPorts,
    ];

    /// The resource whose shortage `e` reports, if it reports one.
    pub fn of(e: &io::Error) -> Option<Resource> {
        match e.raw_os_error()? {
            libc::EMFILE | libc::ENFILE => Some(Resource::FileDescriptors),
            libc::ENOMEM | libc::ENOBUFS => Some(Resource::Memory),
            libc::EADDRNOTAVAIL => Some(Resource::LocalPorts),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::FileDescriptors => "file_descriptors",
            Resource::Memory => "memory",
            Resource::LocalPorts => "local_ports",
        }
    }

    /// What ran out and what to do about it, for the log.
    pub fn advice(self) -> &'static str {
        match self {
            Resource::FileDescriptors => {
                "out of file descriptors: raise LimitNOFILE (ulimit -n) or lower limits.max_connections"
            }
            Resource::Memory => "out of kernel memory or socket buffers",
            Resource::LocalPorts => {
                "out of local ports for connections to servers: widen net.ipv4.ip_local_port_range \
                 or add server addresses"
            }
        }
    }
}

/// What failed for lack of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Accepting a client on a listener (the accept loop pauses).
    Accept,
    /// Opening a connection to a server (the client is closed).
    UpstreamConnect,
    /// Making a pipe for splice (that direction of the connection copies instead).
    SplicePipe,
}

impl Operation {
    /// Every operation, in declaration order (`ALL[o as usize] == o`).
    pub const ALL: [Operation; 3] = [
        Operation::Accept,
        Operation::UpstreamConnect,
        Operation::SplicePipe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Accept => "accept",
            Operation::UpstreamConnect => "upstream_connect",
            Operation::SplicePipe => "splice_pipe",
        }
    }
}

const fn counts() -> [AtomicU64; Resource::ALL.len()] {
    [const { AtomicU64::new(0) }; Resource::ALL.len()]
}

/// Process-wide, as the resources are.
static COUNTS: [[AtomicU64; Resource::ALL.len()]; Operation::ALL.len()] =
    [const { counts() }; Operation::ALL.len()];
static WARNINGS: [Throttle; Operation::ALL.len()] =
    [const { Throttle::new() }; Operation::ALL.len()];

/// Counts one failure of `operation` for lack of `resource`. `Some(held_back)`
/// when it should be logged now (at most once every few seconds per
/// operation: a shortage fails every client at once).
pub fn record(operation: Operation, resource: Resource) -> Option<u64> {
    COUNTS[operation as usize][resource as usize].fetch_add(1, Ordering::Relaxed);
    WARNINGS[operation as usize].admit()
}

/// How many times `operation` failed for lack of `resource` so far.
pub fn count(operation: Operation, resource: Resource) -> u64 {
    COUNTS[operation as usize][resource as usize].load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_shortages_are_classified() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(
            Resource::of(&os(libc::EMFILE)),
            Some(Resource::FileDescriptors)
        );
        assert_eq!(
            Resource::of(&os(libc::ENFILE)),
            Some(Resource::FileDescriptors)
        );
        assert_eq!(Resource::of(&os(libc::ENOBUFS)), Some(Resource::Memory));
        assert_eq!(Resource::of(&os(libc::ENOMEM)), Some(Resource::Memory));
        assert_eq!(
            Resource::of(&os(libc::EADDRNOTAVAIL)),
            Some(Resource::LocalPorts)
        );
        for server_side in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
        ] {
            assert_eq!(Resource::of(&os(server_side)), None);
        }
        assert_eq!(Resource::of(&io::ErrorKind::TimedOut.into()), None);
        for (i, r) in Resource::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, o) in Operation::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
    }
}

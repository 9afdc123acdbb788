//! Local resources that can run out: file descriptors, kernel memory, local
//! ports.
//!
//! When one of them runs out, calls fail that have nothing to do with any
//! peer: an upstream `socket()` fails with EMFILE whichever server it was
//! meant for. This module owns telling those errors apart ([`Resource::of`])
//! so that callers never blame a server or the kernel's features for them,
//! and their counts (read by the metrics) and throttled log lines.
//!
//! It also owns the descriptor limit: the soft `RLIMIT_NOFILE` is raised to
//! the hard one at start ([`raise_descriptor_limit`]), and a `max_connections`
//! that the limit cannot hold is warned about ([`check_descriptor_budget`]).
//! Its `unsafe` is in [`sys`]: `getrlimit` and `setrlimit` on a local struct.

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
    /// Opening a health check's connection (the probe is skipped, not failed).
    HealthCheck,
}

impl Operation {
    /// Every operation, in declaration order (`ALL[o as usize] == o`).
    pub const ALL: [Operation; 4] = [
        Operation::Accept,
        Operation::UpstreamConnect,
        Operation::SplicePipe,
        Operation::HealthCheck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Accept => "accept",
            Operation::UpstreamConnect => "upstream_connect",
            Operation::SplicePipe => "splice_pipe",
            Operation::HealthCheck => "health_check",
        }
    }
}

/// Descriptors taken by other things than connections: listeners, the
/// metrics endpoint and its reserve, the runtime, the log, a few pooled pipes.
pub const FIXED_DESCRIPTORS: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the most an unprivileged
/// process may have; the default soft limit, 1024 on most systems, would cap
/// sniroute at a few hundred connections) and logs what it is now.
pub fn raise_descriptor_limit() {
    match sys::raise_nofile() {
        Ok((before, now)) if before < now => tracing::info!(
            "file descriptor limit (RLIMIT_NOFILE) raised from {before} to {now}, the hard limit"
        ),
        Ok((_, now)) => tracing::info!("file descriptor limit (RLIMIT_NOFILE): {now}"),
        Err(e) => tracing::warn!("cannot raise the file descriptor limit (RLIMIT_NOFILE): {e}"),
    }
}

/// Warns when `max_connections` connections, at `per_connection` descriptors
/// each, would not fit in the descriptor limit there is now.
pub fn check_descriptor_budget(max_connections: usize, per_connection: u64) {
    match sys::nofile() {
        Ok((soft, _)) => {
            if let Some(warning) = budget_warning(max_connections as u64, per_connection, soft) {
                tracing::warn!("{warning}");
            }
        }
        Err(e) => tracing::warn!("cannot read the file descriptor limit (RLIMIT_NOFILE): {e}"),
    }
}

fn budget_warning(max_connections: u64, per_connection: u64, limit: u64) -> Option<String> {
    let needed = max_connections
        .saturating_mul(per_connection)
        .saturating_add(FIXED_DESCRIPTORS);
    (needed > limit).then(|| {
        let fits = limit.saturating_sub(FIXED_DESCRIPTORS) / per_connection.max(1);
        format!(
            "limits.max_connections = {max_connections} needs up to {needed} file descriptors \
             ({per_connection} per connection, plus {FIXED_DESCRIPTORS}), but RLIMIT_NOFILE is \
             {limit}: past about {fits} connections new ones will fail; raise LimitNOFILE \
             (ulimit -n) or lower limits.max_connections"
        )
    })
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

mod sys {
    use std::io;

    /// The soft and hard `RLIMIT_NOFILE`.
    pub(super) fn nofile() -> io::Result<(u64, u64)> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit that getrlimit fills in.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((limit.rlim_cur, limit.rlim_max))
    }

    /// Sets the soft `RLIMIT_NOFILE` to the hard one (to `fs.nr_open` if the
    /// hard one is unlimited: no process may have more); returns the soft limit
    /// before and after.
    pub(super) fn raise_nofile() -> io::Result<(u64, u64)> {
        let (soft, hard) = nofile()?;
        let target = if hard == libc::RLIM_INFINITY {
            std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(1 << 20)
        } else {
            hard
        };
        if soft >= target {
            return Ok((soft, soft));
        }
        let limit = libc::rlimit {
            rlim_cur: target,
            rlim_max: hard,
        };
        // SAFETY: `limit` is a valid rlimit that setrlimit only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((soft, target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_four_descriptors_per_connection_under_splice_plus_the_fixed_ones() {
        assert_eq!(budget_warning(20_000, 4, 524_288), None);
        assert_eq!(budget_warning(131_056, 4, 524_288), None);
        let warning = budget_warning(131_057, 4, 524_288).unwrap();
        assert!(
            warning.starts_with("limits.max_connections = 131057 needs up to 524292 file descriptors (4 per connection, plus 64), but RLIMIT_NOFILE is 524288: past about 131056 connections"),
            "{warning}"
        );
        assert_eq!(budget_warning(100, 2, 264), None);
        assert!(budget_warning(101, 2, 264).is_some());
        // A limit below the fixed descriptors fits no connection at all.
        assert!(budget_warning(1, 4, 10)
            .unwrap()
            .contains("past about 0 connections"));
    }

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

//! Listening sockets that outlive a process.
//!
//! A socket that stays open from one sniroute process to the next never
//! refuses a connection: clients queue in its backlog while no process
//! accepts. Two ways carry sockets across:
//!
//! - a binary upgrade (SIGUSR2, see [`crate::upgrade`]): the old process
//!   starts the new one with its sockets open and their numbers in
//!   [`LISTEN_FDS_VAR`];
//! - systemd's fd store: on SIGTERM the sockets go to systemd
//!   ([`crate::systemd::store`]), which passes them to the next start as
//!   `LISTEN_FDS` (and `LISTEN_FDNAMES`, names from [`name`]).
//!
//! [`Inherited`] takes such sockets at start. Each is recognised by what it
//! is (a listening TCP socket) and where it is bound, never by position, so a
//! config that changed in between still gets the right socket for each
//! address; sockets no bind asks for any more are closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use socket2::{SockRef, Type};

use crate::systemd;

/// The descriptor numbers of the listening sockets an upgrading sniroute
/// hands to its successor, comma-separated.
pub const LISTEN_FDS_VAR: &str = "SNIROUTE_LISTEN_FDS";

/// The name a socket bound to `addr` carries in systemd's fd store: unique per
/// address, without the `:` that names may not contain.
pub fn name(addr: SocketAddr) -> String {
    format!("tcp-{addr}").replace(':', "_")
}

/// A socket taken over, with its fd-store name when systemd gave one.
#[derive(Debug)]
struct Adopted {
    fd: OwnedFd,
    stored_as: Option<String>,
}

/// The listening sockets handed to this process, by bound address.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: HashMap<SocketAddr, Adopted>,
}

impl Inherited {
    /// Takes the sockets named by [`LISTEN_FDS_VAR`] or by systemd's
    /// `LISTEN_FDS` (when `LISTEN_PID` is this process). A descriptor that is
    /// not a listening TCP socket is left alone, with a warning.
    pub fn from_env() -> Inherited {
        let mut inherited = Inherited::default();
        if let Ok(list) = std::env::var(LISTEN_FDS_VAR) {
            for item in list.split(',').filter(|s| !s.is_empty()) {
                match item.trim().parse::<RawFd>() {
                    Ok(fd) => inherited.adopt(fd, None, LISTEN_FDS_VAR),
                    Err(_) => tracing::warn!(
                        "{LISTEN_FDS_VAR}: `{item}` is not a descriptor number; ignored"
                    ),
                }
            }
        }
        match sd_notify::listen_fds_with_names() {
            Ok(fds) => {
                for (fd, name) in fds {
                    inherited.adopt(fd, Some(name), "LISTEN_FDS");
                }
            }
            Err(e) => tracing::warn!("ignoring the sockets systemd passed (LISTEN_FDS): {e}"),
        }
        if !inherited.sockets.is_empty() {
            let mut addrs: Vec<String> = inherited.sockets.keys().map(|a| a.to_string()).collect();
            addrs.sort();
            tracing::info!(
                sockets = %addrs.join(","),
                "took over listening sockets from the previous process"
            );
        }
        inherited
    }

    fn adopt(&mut self, fd: RawFd, stored_as: Option<String>, from: &str) {
        if !handed_over(fd) {
            tracing::warn!("{from}: descriptor {fd} is not an open socket; ignored");
            return;
        }
        // SAFETY: open (checked above), and only borrowed for the checks below.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&borrowed);
        let addr = match (socket.r#type(), socket.is_listener(), socket.local_addr()) {
            (Ok(Type::STREAM), Ok(true), Ok(local)) => local.as_socket(),
            _ => None,
        };
        let Some(addr) = addr else {
            tracing::warn!("{from}: descriptor {fd} is not a listening TCP socket; ignored");
            return;
        };
        // SAFETY: the descriptor was handed to this process to own (that is
        // what both variables mean), it is open, and nothing else here took it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Err(e) = set_cloexec(fd.as_fd()) {
            tracing::warn!("{from}: cannot mark descriptor close-on-exec: {e}");
        }
        self.sockets.insert(addr, Adopted { fd, stored_as });
    }

    /// The socket bound to `addr`, if one was handed over.
    pub fn take(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        self.sockets.remove(&addr).map(|a| a.fd.into())
    }

    /// Closes the sockets nothing took (their addresses left the config), and
    /// takes them out of systemd's fd store, which would otherwise keep them
    /// open, completing handshakes nobody serves.
    pub fn close_rest(self) {
        for (addr, adopted) in self.sockets {
            tracing::info!(listener = %addr, "closing a handed-over socket the config no longer binds");
            if let Some(name) = adopted.stored_as {
                systemd::forget(&name);
            }
        }
    }
}

/// Whether `fd`, a number another process passed, can be a descriptor handed
/// to this one: open, and not standard input, output or error.
pub fn handed_over(fd: RawFd) -> bool {
    // SAFETY: fcntl(F_GETFD) only asks whether the number is an open descriptor.
    fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

fn set_cloexec(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    let done = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    if done < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_address_and_free_of_colons() {
        assert_eq!(name("127.0.0.1:443".parse().unwrap()), "tcp-127.0.0.1_443");
        assert_eq!(name("[::1]:443".parse().unwrap()), "tcp-[__1]_443");
        assert_ne!(
            name("127.0.0.1:443".parse().unwrap()),
            name("127.0.0.1:80".parse().unwrap())
        );
    }
}

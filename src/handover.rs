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
//! is (a listening TCP socket, or a bound UDP one) and where it is bound,
//! never by position, so a
//! config that changed in between still gets the right socket for each
//! address; sockets no bind asks for any more are closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use socket2::{SockRef, Type};

use crate::peek::Transport;
use crate::systemd;

/// The descriptor numbers of the listening sockets an upgrading sniroute
/// hands to its successor, comma-separated.
pub const LISTEN_FDS_VAR: &str = "SNIROUTE_LISTEN_FDS";

/// The name a socket bound to `addr` carries in systemd's fd store: unique per
/// transport and address, without the `:` that names may not contain.
pub fn name(transport: Transport, addr: SocketAddr) -> String {
    format!("{}-{addr}", transport.as_str()).replace(':', "_")
}

/// A socket taken over, with its fd-store name when systemd gave one.
#[derive(Debug)]
struct Adopted {
    fd: OwnedFd,
    stored_as: Option<String>,
}

/// The listening sockets handed to this process, by transport and bound address.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: HashMap<(Transport, SocketAddr), Adopted>,
}

impl Inherited {
    /// Takes the sockets named by [`LISTEN_FDS_VAR`] or by systemd's
    /// `LISTEN_FDS` (when `LISTEN_PID` is this process). A descriptor that is
    /// neither a listening TCP socket nor a bound UDP socket is left alone,
    /// with a warning.
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
            let mut addrs: Vec<String> = inherited
                .sockets
                .keys()
                .map(|(t, a)| format!("{}/{a}", t.as_str()))
                .collect();
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
        let local = socket.local_addr().ok().and_then(|a| a.as_socket());
        let key = match (socket.r#type(), local) {
            (Ok(Type::STREAM), Some(addr)) if socket.is_listener().unwrap_or(false) => {
                Some((Transport::Tcp, addr))
            }
            (Ok(Type::DGRAM), Some(addr)) if addr.port() != 0 => Some((Transport::Udp, addr)),
            _ => None,
        };
        let Some(key) = key else {
            tracing::warn!(
                "{from}: descriptor {fd} is neither a listening TCP socket nor a bound UDP socket; ignored"
            );
            return;
        };
        // SAFETY: the descriptor was handed to this process to own (that is
        // what both variables mean), it is open, and nothing else here took it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Err(e) = set_cloexec(fd.as_fd()) {
            tracing::warn!("{from}: cannot mark descriptor close-on-exec: {e}");
        }
        self.sockets.insert(key, Adopted { fd, stored_as });
    }

    /// The TCP socket listening on `addr`, if one was handed over.
    pub fn take_tcp(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let adopted = self.sockets.remove(&(Transport::Tcp, addr))?;
        Some(adopted.fd.into())
    }

    /// The UDP socket bound to `addr`, if one was handed over.
    pub fn take_udp(&mut self, addr: SocketAddr) -> Option<std::net::UdpSocket> {
        let adopted = self.sockets.remove(&(Transport::Udp, addr))?;
        Some(adopted.fd.into())
    }

    /// Closes the sockets nothing took (their addresses left the config), and
    /// takes them out of systemd's fd store, which would otherwise keep them
    /// open, completing handshakes nobody serves.
    pub fn close_rest(self) {
        for ((_, addr), adopted) in self.sockets {
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
        let tcp = |a: &str| name(Transport::Tcp, a.parse().unwrap());
        assert_eq!(tcp("127.0.0.1:443"), "tcp-127.0.0.1_443");
        assert_eq!(tcp("[::1]:443"), "tcp-[__1]_443");
        assert_ne!(tcp("127.0.0.1:443"), tcp("127.0.0.1:80"));
        assert_eq!(
            name(Transport::Udp, "127.0.0.1:443".parse().unwrap()),
            "udp-127.0.0.1_443"
        );
    }
}

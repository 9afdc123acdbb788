//! The zero-copy engine: `splice(2)` socket → pipe → socket, Linux only.
//!
//! Bytes go from the source socket into a pipe and from the pipe into the
//! destination socket without ever being copied into user space. The pipe is
//! the only buffer, and a direction holds one only while bytes flow: it takes
//! an empty pipe from a small per-thread pool when its socket turns readable and
//! gives it back, empty, when the socket runs dry. An idle connection therefore
//! holds no pipe (no descriptors, no pipe memory), and a busy one does not pay
//! for creating pipes. Readiness comes from tokio (`readable` / `writable` and
//! `try_io`, which clears readiness on `EAGAIN`); every call is non-blocking.
//!
//! This module's `unsafe` is in [`sys`]: three libc calls on file
//! descriptors that this module owns ([`Pipe`]) or borrows from a live
//! `TcpStream` for the duration of the call.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::Interest;

use super::{Broken, Direction};
use crate::resources::Resource;

/// The capacity asked for each pipe. Larger than the kernel's default of 64 KiB:
/// fewer, larger splices per byte. Measured with the bulk case of the compare
/// bench (4 connections): 256 KiB moved 18% more per second than 64 KiB with
/// 14% less CPU per GB; 1 MiB gained only a little more.
const PIPE_SIZE: usize = 256 * 1024;

/// How many pipes may have [`PIPE_SIZE`] at once; beyond, pipes keep the
/// default size. The kernel charges pipe capacity to the user, and once a user
/// holds more than `fs.pipe-user-pages-soft` (64 MiB by default) it refuses to
/// enlarge pipes and makes every new pipe tiny. This keeps sniroute at half that.
const MAX_ENLARGED: usize = 32 * 1024 * 1024 / PIPE_SIZE;

static ENLARGED: AtomicUsize = AtomicUsize::new(0);

/// Empty pipes kept for reuse per thread; beyond this many, returned pipes
/// are closed.
const POOL_MAX: usize = 16;

pub(super) enum Error {
    /// The kernel refused splice for these descriptors before any byte moved:
    /// the caller may fall back to copying.
    Unsupported,
    /// No pipe could be made for lack of `Resource`, with the pipe empty and
    /// nothing read: the caller may copy instead. Says nothing about splice
    /// support: the shortage passes, and other connections are unaffected.
    NoPipe(Resource),
    /// An I/O error: the relay ends.
    Broken(Broken),
}

/// Whether this kernel has splice and pipes we can use (one probe, at start).
/// A shortage of descriptors or memory at that moment proves nothing either
/// way: splice is assumed, and each connection copies while pipes are short.
pub(super) fn supported() -> bool {
    cfg!(target_os = "linux")
        && match Pipe::new() {
            Ok(pipe) => {
                give_back(pipe);
                true
            }
            Err(e) => Resource::of(&e).is_some(),
        }
}

/// A non-blocking pipe, closed on drop.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it holds when full.
    capacity: usize,
    /// Counted in [`ENLARGED`].
    enlarged: bool,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = sys::pipe()?;
        let mut pipe = Pipe {
            read,
            write,
            capacity: DEFAULT_PIPE_SIZE,
            enlarged: false,
        };
        let budget = ENLARGED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_ENLARGED).then_some(n + 1)
        });
        if budget.is_ok() {
            match sys::set_pipe_size(&pipe.write, PIPE_SIZE) {
                Ok(capacity) => {
                    pipe.capacity = capacity;
                    pipe.enlarged = true;
                }
                // Refused (a lower `fs.pipe-max-size`, or the user's pipe pages):
                // the default size works, only slower.
                Err(_) => {
                    ENLARGED.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        Ok(pipe)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if self.enlarged {
            ENLARGED.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A new pipe's capacity on Linux.
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

thread_local! {
    /// One pool per runtime thread, so taking a pipe takes no lock. A task that
    /// moves between threads returns its pipe to the pool of the thread it is on.
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// An empty pipe: from this thread's pool, or a new one.
fn take() -> io::Result<Pipe> {
    // `try_with`: a thread being torn down has no pool any more, only new pipes.
    let pooled = POOL.try_with(|pool| pool.borrow_mut().pop()).ok().flatten();
    pooled.map_or_else(Pipe::new, Ok)
}

/// Returns an empty pipe to this thread's pool (or closes it when the pool is full).
fn give_back(pipe: Pipe) {
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(pipe);
        }
    });
}

pub(super) async fn run(d: &Direction<'_>) -> Result<(), Error> {
    let (from, to) = (d.from.as_raw_fd(), d.to.as_raw_fd());
    let mut moved_any = false;
    loop {
        d.from
            .readable()
            .await
            .map_err(|e| Error::Broken(d.read_failed(&e)))?;
        let pipe = take().map_err(|e| match Resource::of(&e) {
            Some(resource) => Error::NoPipe(resource),
            None => Error::Unsupported,
        })?;
        // Move bytes until the source runs dry; the pipe is empty whenever this
        // returns, except on an error, when it is dropped (closed) instead.
        match burst(d, &pipe, from, to, &mut moved_any).await {
            Ok(Burst::Dry) => give_back(pipe),
            Ok(Burst::Eof) => {
                give_back(pipe);
                d.forward_eof();
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

enum Burst {
    /// The source would block: wait for it again.
    Dry,
    /// The source closed its sending side.
    Eof,
}

async fn burst(
    d: &Direction<'_>,
    pipe: &Pipe,
    from: i32,
    to: i32,
    moved_any: &mut bool,
) -> Result<Burst, Error> {
    loop {
        let filled = d.from.try_io(Interest::READABLE, || {
            sys::splice(from, pipe.write.as_raw_fd(), pipe.capacity)
        });
        let mut in_pipe = match filled {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Dry),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if !*moved_any && refused(&e) => return Err(Error::Unsupported),
            Err(e) => return Err(Error::Broken(d.read_failed(&e))),
        };
        *moved_any = true;
        // Drain the pipe completely before reading again: it never holds bytes
        // that the next read would have to wait behind.
        while in_pipe > 0 {
            match d.to.try_io(Interest::WRITABLE, || {
                sys::splice(pipe.read.as_raw_fd(), to, in_pipe)
            }) {
                Ok(n) => {
                    in_pipe -= n;
                    d.moved(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    d.to.writable()
                        .await
                        .map_err(|e| Error::Broken(d.write_failed(&e)))?;
                }
                Err(e) => return Err(Error::Broken(d.write_failed(&e))),
            }
        }
    }
}

/// Errors that mean "splice does not work here", not "this connection failed":
/// an old or unusual kernel, or a seccomp filter that denies the call.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EPERM)
    )
}

mod sys {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    /// `pipe2(O_NONBLOCK | O_CLOEXEC)`.
    pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid, writable array of two ints, as pipe2 requires.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: on success pipe2 returned two new descriptors that nothing else
        // owns; each is wrapped exactly once, so each is closed exactly once.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    /// Sets the capacity of `pipe` to at least `size` bytes; returns the capacity
    /// the kernel gave it.
    pub(super) fn set_pipe_size(pipe: &OwnedFd, size: usize) -> io::Result<usize> {
        let size = libc::c_int::try_from(size).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: F_SETPIPE_SZ takes an int and only changes the pipe's ring; the
        // descriptor is a pipe owned by the caller and open for the call.
        let r = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// One non-blocking `splice(2)` of up to `len` bytes from `from` to `to`.
    pub(super) fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: both descriptors are open for the whole call: the callers pass a
        // descriptor of a `TcpStream` they borrow and one of a `Pipe` they borrow.
        // Null offsets are what splice requires for sockets and pipes. No memory
        // of ours is read or written by the kernel.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_enlarged_up_to_the_budget_and_the_budget_comes_back() {
        let first = Pipe::new().unwrap();
        if !first.enlarged {
            eprintln!("this kernel refuses F_SETPIPE_SZ to {PIPE_SIZE}; nothing to check");
            return;
        }
        assert!(first.capacity >= PIPE_SIZE);
        let mut pipes: Vec<Pipe> = (1..MAX_ENLARGED).map(|_| Pipe::new().unwrap()).collect();
        assert!(pipes.iter().all(|p| p.enlarged));
        let over = Pipe::new().unwrap();
        assert!(
            !over.enlarged,
            "past the budget a pipe keeps the default size"
        );
        assert_eq!(over.capacity, DEFAULT_PIPE_SIZE);
        pipes.pop();
        assert!(
            Pipe::new().unwrap().enlarged,
            "a closed pipe gives its place back"
        );
        drop((first, pipes, over));
        assert_eq!(ENLARGED.load(Ordering::Acquire), 0);
    }
}

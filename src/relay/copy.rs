//! The portable engine: read into a buffer, write it out.
//!
//! The buffer exists only while the socket has data: it is taken when the
//! socket turns readable and given back once a read would block, so an idle
//! connection holds no buffer at all. Buffers come from a small per-thread
//! pool, as splice's pipes do: a short connection reads four bursts, and
//! allocating and freeing 16 KiB for each was a tenth of the user-space
//! instructions per connection (glibc merges freed chunks of that size).
//!
//! It also opens every direction under the splice engine: handshakes and
//! request heads are small, and for small reads a plain read and write cost
//! less than two splices and a pipe. The first full buffer says bulk is
//! coming, and [`run`] hands over.

use std::cell::RefCell;
use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{Broken, Direction};

const BUF_SIZE: usize = 16 * 1024;

/// Buffers kept per thread: 256 KiB at most, whatever the connection count.
const POOL_MAX: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer for one burst, returned to its thread's pool when dropped.
struct Buffer(Vec<u8>);

impl Buffer {
    fn take() -> Buffer {
        // `try_with`: a thread being torn down has no pool any more.
        let pooled = POOL.try_with(|pool| pool.borrow_mut().pop()).ok().flatten();
        // Uninitialised capacity, filled by the read: no zeroing per burst.
        Buffer(pooled.unwrap_or_else(|| Vec::with_capacity(BUF_SIZE)))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        });
    }
}

/// Why [`run`] returned.
pub(super) enum Finished {
    /// The source closed; the half-close was forwarded.
    Eof,
    /// A read filled the whole buffer (asked for with `until_bulk`): everything
    /// read so far is written, so another engine can take over from here.
    Bulk,
}

pub(super) async fn run(d: &Direction<'_>, until_bulk: bool) -> Result<Finished, Broken> {
    loop {
        d.from.readable().await.map_err(|e| d.read_failed(&e))?;
        let mut held = Buffer::take();
        let buf = &mut held.0;
        loop {
            buf.clear();
            match read(d.from, buf) {
                Ok(0) => {
                    d.forward_eof();
                    return Ok(Finished::Eof);
                }
                Ok(n) => {
                    write_all(d, buf).await?;
                    d.moved(n);
                    if until_bulk && n >= BUF_SIZE {
                        return Ok(Finished::Bulk);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(d.read_failed(&e)),
            }
        }
    }
}

/// One read into `buf`'s spare capacity. A read that leaves room in the buffer
/// drained the socket, so its readiness is cleared right away, as tokio's own
/// `AsyncRead` does on epoll: that saves the `EAGAIN` read a burst would
/// otherwise end with (two of the 25 system calls a short proxied connection
/// used to make). Data arriving later is a new edge and sets readiness again.
fn read(from: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut got = None;
    let result = from.try_io(Interest::READABLE, || {
        let n = from.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && buf.len() < buf.capacity() {
            // Makes try_io clear the readiness; the bytes are kept in `got`.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (result, got) {
        (Ok(n), _) | (Err(_), Some(n)) => Ok(n),
        (Err(e), None) => Err(e),
    }
}

pub(super) async fn write_all(d: &Direction<'_>, mut bytes: &[u8]) -> Result<(), Broken> {
    while !bytes.is_empty() {
        d.to.writable().await.map_err(|e| d.write_failed(&e))?;
        match d.to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(d.write_failed(&e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled() -> usize {
        POOL.with(|pool| pool.borrow().len())
    }

    #[test]
    fn buffers_are_reused_empty_and_the_pool_is_bounded() {
        let held: Vec<Buffer> = (0..POOL_MAX + 4).map(|_| Buffer::take()).collect();
        drop(held);
        assert_eq!(pooled(), POOL_MAX);

        let mut buf = Buffer::take();
        assert_eq!(pooled(), POOL_MAX - 1);
        assert_eq!(buf.0.capacity(), BUF_SIZE);
        let reused = buf.0.as_ptr();
        buf.0.extend_from_slice(b"bytes of the last burst");
        drop(buf);

        let next = Buffer::take();
        assert_eq!(
            next.0.as_ptr(),
            reused,
            "the buffer given back last is taken first"
        );
        assert!(next.0.is_empty(), "a pooled buffer comes back empty");
    }
}

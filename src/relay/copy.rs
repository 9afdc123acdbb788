//! The portable engine: read into a buffer, write it out.
//!
//! The buffer exists only while the socket has data: it is allocated when the
//! socket turns readable and dropped once a read would block, so an idle
//! connection holds no buffer at all.
//!
//! It also opens every direction under the splice engine: handshakes and
//! request heads are small, and for small reads a plain read and write cost
//! less than two splices and a pipe. The first full buffer says bulk is
//! coming, and [`run`] hands over.

use std::io;

use super::{Direction, Side};

const BUF_SIZE: usize = 16 * 1024;

/// Why [`run`] returned.
pub(super) enum Finished {
    /// The source closed; the half-close was forwarded.
    Eof,
    /// A read filled the whole buffer (asked for with `until_bulk`): everything
    /// read so far is written, so another engine can take over from here.
    Bulk,
}

pub(super) async fn run(d: &Direction<'_>, until_bulk: bool) -> Result<Finished, Side> {
    loop {
        d.from.readable().await.map_err(|_| d.from_side)?;
        // Uninitialised capacity, filled by the read: no zeroing per burst.
        let mut buf = Vec::with_capacity(BUF_SIZE);
        loop {
            buf.clear();
            match d.from.try_read_buf(&mut buf) {
                Ok(0) => {
                    d.forward_eof();
                    return Ok(Finished::Eof);
                }
                Ok(n) => {
                    write_all(d, &buf).await?;
                    d.moved(n);
                    if until_bulk && n >= BUF_SIZE {
                        return Ok(Finished::Bulk);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(d.from_side),
            }
        }
    }
}

async fn write_all(d: &Direction<'_>, mut bytes: &[u8]) -> Result<(), Side> {
    while !bytes.is_empty() {
        d.to.writable().await.map_err(|_| d.to_side())?;
        match d.to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Err(d.to_side()),
        }
    }
    Ok(())
}

//! Pass-through: copy both directions until both are done.
//!
//! Each direction is a loop of read → write with its own buffer; EOF on one side
//! is forwarded as a write shutdown (half-close) while the other direction keeps
//! going. An error on either side ends both (a reset peer cannot be half-open). The
//! idle timer restarts on any byte in either direction; the byte counts are kept
//! outside the copy futures so they survive an idle abort.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const BUF_SIZE: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions saw EOF.
    Closed,
    /// No byte either way for `timeouts.idle`.
    Idle,
    /// A read or write failed (reset, broken pipe) on the client side.
    ClientError,
    /// A read or write failed on the upstream side.
    UpstreamError,
    /// Cut at the end of the shutdown drain.
    Shutdown,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::ClientError => "client_error",
            End::UpstreamError => "upstream_error",
            End::Shutdown => "shutdown",
        }
    }
}

/// Bytes moved and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Client → server, not counting the replayed head.
    pub up: u64,
    /// Server → client.
    pub down: u64,
    pub end: End,
}

/// Counters outside the relay that follow its traffic live (a server's totals).
#[derive(Debug, Clone, Copy)]
pub struct Tally<'a> {
    pub up: &'a AtomicU64,
    pub down: &'a AtomicU64,
}

/// Relays between `client` and `upstream` until both directions are closed, an
/// error occurs, nothing moves for `idle`, or `stop` resolves.
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle: Duration,
    tally: Tally<'_>,
    stop: impl std::future::Future<Output = ()>,
) -> Totals {
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let copies = async {
        tokio::try_join!(
            copy(
                &mut client_read,
                &mut upstream_write,
                [&up, tally.up],
                &last_activity,
                start,
                Side::Client
            ),
            copy(
                &mut upstream_read,
                &mut client_write,
                [&down, tally.down],
                &last_activity,
                start,
                Side::Upstream
            ),
        )
    };
    let watchdog = async {
        loop {
            let last = start + Duration::from_millis(last_activity.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let end = tokio::select! {
        result = copies => match result {
            Ok(_) => End::Closed,
            Err(Side::Client) => End::ClientError,
            Err(Side::Upstream) => End::UpstreamError,
        },
        () = watchdog => End::Idle,
        () = stop => End::Shutdown,
    };
    Totals {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        end,
    }
}

/// Which socket an I/O error came from.
#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

async fn copy<R, W>(
    reader: &mut R,
    writer: &mut W,
    counts: [&AtomicU64; 2],
    last_activity: &AtomicU64,
    start: Instant,
    read_side: Side,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let write_side = match read_side {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    };
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = reader.read(&mut buf).await.map_err(|_| read_side)?;
        if n == 0 {
            // Forward the half-close; the peer may be gone already, which is fine.
            let _: io::Result<()> = writer.shutdown().await;
            return Ok(());
        }
        writer.write_all(&buf[..n]).await.map_err(|_| write_side)?;
        for count in counts {
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

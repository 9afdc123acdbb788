//! Pass-through: move bytes both ways until both directions are done.
//!
//! Each direction runs on its own: EOF from one side is forwarded as a write
//! shutdown (half-close) while the other direction keeps going; an error on
//! either side ends both (a reset peer cannot be half-open). The idle timer
//! restarts on any byte in either direction; byte counts live outside the
//! direction futures so they survive an idle or shutdown abort.
//!
//! Two engines move the bytes of one direction: [`splice`] (Linux `splice(2)`
//! through a pipe, zero-copy) and [`copy`] (read into a buffer and write it
//! out, anywhere). [`Engine::detect`] picks splice where the kernel has it.
//! Under splice a direction still starts by copying, and switches at its first
//! full buffer: for a few hundred bytes of handshake, one read and one write are
//! cheaper than two splices and a pipe (measured: +16% CPU per short connection
//! when splicing everything). A direction falls back to copy if splice is
//! refused before it moved any byte, and for good: the process copies from
//! then on. A pipe that cannot be made for lack of descriptors or memory is no
//! refusal: only that direction of that connection copies, to its end.
//! Neither holds a buffer while a connection is idle: copy allocates its
//! buffer when the socket turns readable and frees it when the socket runs dry;
//! splice takes a pipe from a small pool at the same moment and gives it back.

mod copy;
mod sockmap;
mod splice;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::resources::{self, Operation};

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions saw EOF.
    Closed,
    /// No byte either way for `timeouts.idle`.
    Idle,
    /// A read or write failed (reset, broken pipe): on the client side when
    /// `Broken::side` says so, else on the upstream side.
    Broken(Broken),
}

/// The I/O error that ended a relay: which socket, doing what, and what the
/// kernel said. Small and `Copy`, so a relay carries it without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broken {
    pub side: Side,
    /// Whether it was a write (else a read, or waiting to read).
    pub writing: bool,
    pub kind: io::ErrorKind,
}

impl std::fmt::Display for Broken {
    /// `reading from the client: connection reset`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (op, side) = match (self.writing, self.side) {
            (false, Side::Client) => ("reading from", "the client"),
            (false, Side::Upstream) => ("reading from", "the server"),
            (true, Side::Client) => ("writing to", "the client"),
            (true, Side::Upstream) => ("writing to", "the server"),
        };
        write!(f, "{op} {side}: {}", self.kind)
    }
}

/// The bytes one connection's relay moved, kept by the caller: they stay
/// readable when the relay is dropped before it ends (cut at the end of the
/// shutdown drain).
#[derive(Debug, Default)]
pub struct Moved {
    /// Client → server, not counting the replayed head.
    pub up: AtomicU64,
    /// Server → client.
    pub down: AtomicU64,
}

/// Counters outside the relay that follow its traffic live (a server's totals).
#[derive(Debug, Clone, Copy)]
pub struct Tally<'a> {
    pub up: &'a AtomicU64,
    pub down: &'a AtomicU64,
}

/// What moves the bytes of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Splice,
    Copy,
    /// Opt-in: the kernel relays through a BPF sockmap ([`sockmap`]).
    Sockmap,
}

/// The engine chosen for this process; `UNSET` until first asked.
static ENGINE: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = 0;
const SPLICE: u8 = 1;
const COPY: u8 = 2;
const SOCKMAP: u8 = 3;

impl Engine {
    /// Splice where the kernel supports it, unless `SNIROUTE_RELAY=copy` asks for
    /// the portable engine (for comparisons and troubleshooting) or
    /// `SNIROUTE_RELAY=sockmap` for the kernel offload, which falls back to
    /// splice, with a warning, where it cannot be set up. Decided once.
    pub fn detect() -> Engine {
        match ENGINE.load(Ordering::Relaxed) {
            SPLICE => Engine::Splice,
            COPY => Engine::Copy,
            SOCKMAP => Engine::Sockmap,
            _ => {
                let asked = std::env::var("SNIROUTE_RELAY").unwrap_or_default();
                let engine = match asked.as_str() {
                    "copy" => Engine::Copy,
                    "sockmap" => match sockmap::setup() {
                        Ok(()) => Engine::Sockmap,
                        Err(e) => {
                            tracing::warn!(
                                "SNIROUTE_RELAY=sockmap: {e}; {}. Relaying with splice instead",
                                e.advice()
                            );
                            Engine::Splice
                        }
                    },
                    _ => Engine::Splice,
                };
                let engine = if engine == Engine::Splice && !splice::supported() {
                    Engine::Copy
                } else {
                    engine
                };
                ENGINE.store(
                    match engine {
                        Engine::Splice => SPLICE,
                        Engine::Copy => COPY,
                        Engine::Sockmap => SOCKMAP,
                    },
                    Ordering::Relaxed,
                );
                engine
            }
        }
    }

    /// File descriptors a relayed connection may hold: its two sockets, and
    /// under splice a pipe (two ends) while bytes are moving. Both directions
    /// of one connection busy at the same moment take a second pipe; that is
    /// rare enough across many connections to leave out of a budget. Under
    /// sockmap a connection also holds a small epoll, and a direction that
    /// cannot join the map splices.
    pub fn descriptors_per_connection(self) -> u64 {
        match self {
            Engine::Splice => 4,
            Engine::Copy => 2,
            Engine::Sockmap => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Splice => "splice",
            Engine::Copy => "copy",
            Engine::Sockmap => "sockmap",
        }
    }
}

/// Which socket an I/O error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// The state both directions share: when the last byte moved, and whether one
/// direction has already seen EOF.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    one_closed: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One direction: `from` → `to`, adding each chunk to `counts`.
struct Direction<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    counts: [&'a AtomicU64; 2],
    activity: &'a Activity,
    /// The side `from` is; errors writing `to` are the other side's.
    from_side: Side,
}

impl Direction<'_> {
    fn moved(&self, n: usize) {
        self.count(n as u64);
        self.activity.touch();
    }

    /// Adds `n` bytes to the counts, without saying when they moved.
    fn count(&self, n: u64) {
        for count in self.counts {
            count.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A failed read (or wait for readiness) of `from`.
    fn read_failed(&self, e: &io::Error) -> Broken {
        Broken {
            side: self.from_side,
            writing: false,
            kind: e.kind(),
        }
    }

    /// A failed write to `to`.
    fn write_failed(&self, e: &io::Error) -> Broken {
        Broken {
            side: match self.from_side {
                Side::Client => Side::Upstream,
                Side::Upstream => Side::Client,
            },
            writing: true,
            kind: e.kind(),
        }
    }

    /// EOF from `from`: forward it as a half-close. The peer may be gone already,
    /// which is fine. The second EOF is not forwarded: the relay ends with it, and
    /// closing the socket sends the FIN (its input was read to EOF, so the close
    /// cannot turn into a reset). One system call less per connection.
    /// Returns whether it shut `to` down.
    fn forward_eof(&self) -> bool {
        if self.activity.one_closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        socket2::SockRef::from(self.to)
            .shutdown(std::net::Shutdown::Write)
            .is_ok()
    }

    async fn run(&self, engine: Engine) -> Result<(), Broken> {
        if engine == Engine::Copy {
            return copy::run(self, false).await.map(drop);
        }
        // Splice engine: small exchanges are copied, bulk is spliced.
        if let copy::Finished::Eof = copy::run(self, true).await? {
            return Ok(());
        }
        match splice::run(self).await {
            Ok(()) => Ok(()),
            Err(splice::Error::Broken(broken)) => Err(broken),
            Err(splice::Error::NoPipe(resource)) => {
                // The pipe is empty and nothing is read: copy takes over cleanly.
                if let Some(held_back) = resources::record(Operation::SplicePipe, resource) {
                    tracing::warn!(
                        held_back,
                        "no pipe for splice(2): {}; this connection copies instead",
                        resource.advice()
                    );
                }
                copy::run(self, false).await.map(drop)
            }
            Err(splice::Error::Unsupported) => {
                // Splice moved nothing and copy holds nothing: copy takes over cleanly.
                ENGINE.store(COPY, Ordering::Relaxed);
                tracing::warn!("splice(2) refused by the kernel; relaying with buffered copies");
                copy::run(self, false).await.map(drop)
            }
        }
    }
}

/// Relays between `client` and `upstream` until both directions are closed, an
/// error occurs, or nothing moves for `idle`, counting into `moved` and
/// `tally` as bytes go. Dropping it cuts the connection short. The sockets are
/// borrowed mutably only for the sockmap engine, which takes them out of
/// tokio's reactor while the kernel relays (and leaves stand-ins in their
/// place, the real sockets closed when it returns).
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle: Duration,
    moved: &Moved,
    tally: Tally<'_>,
) -> End {
    let engine = Engine::detect();
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        one_closed: AtomicBool::new(false),
    };
    if engine == Engine::Sockmap {
        // Boxed: inline, its state would make every connection's task larger
        // under every engine (a test keeps that under 3 KiB).
        return Box::pin(sockmap::relay(
            client, upstream, &activity, idle, moved, tally,
        ))
        .await;
    }
    let (to_upstream, to_client) = directions(client, upstream, &activity, moved, tally);
    let both = async { tokio::try_join!(to_upstream.run(engine), to_client.run(engine)) };
    tokio::select! {
        result = both => match result {
            Ok(_) => End::Closed,
            Err(broken) => End::Broken(broken),
        },
        () = idle_for(&activity, idle) => End::Idle,
    }
}

/// Client → server and server → client.
fn directions<'a>(
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    activity: &'a Activity,
    moved: &'a Moved,
    tally: Tally<'a>,
) -> (Direction<'a>, Direction<'a>) {
    (
        Direction {
            from: client,
            to: upstream,
            counts: [&moved.up, tally.up],
            activity,
            from_side: Side::Client,
        },
        Direction {
            from: upstream,
            to: client,
            counts: [&moved.down, tally.down],
            activity,
            from_side: Side::Upstream,
        },
    )
}

/// Returns once no byte moved for `idle`, by `activity`.
async fn idle_for(activity: &Activity, idle: Duration) {
    loop {
        let deadline = activity.last() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

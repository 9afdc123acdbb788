//! The kernel-offload engine (`SNIROUTE_RELAY=sockmap`, opt-in): once a
//! connection is routed and its peeked bytes replayed, both sockets join a BPF
//! sockhash whose `sk_skb` stream-verdict program redirects each socket's
//! received bytes out of the other, so the kernel forwards them without waking
//! sniroute for each burst.
//!
//! This module owns the maps and the program (set up once at start, see
//! [`setup`]) and the relay of a connection under this engine: what user space
//! must still do once the kernel moves the bytes.
//!
//! - **Bytes that arrived before the join.** The program only sees bytes queued
//!   after the socket joined, and the kernel hands it whole queued buffers: a
//!   buffer that user space had read half of would be forwarded again in full.
//!   So each direction is first read until the socket says "would block", with
//!   everything written to the other side, and only then does the socket join;
//!   what arrives after that read is queued whole, and a `SO_RCVLOWAT` poke
//!   right after the join makes the program take it, in order, ahead of
//!   anything later.
//! - **No window without a redirect target.** A socket whose bytes would be
//!   redirected to a socket not yet in the map would have them dropped. Two
//!   maps avoid that: `peers` (a socket's cookie → the socket its bytes go to)
//!   has no program, `joined` carries the program; every socket is put into
//!   `peers` before any joins `joined`.
//! - **Half-close.** The program drops a bare FIN (nothing to forward); the
//!   FIN shows as `EPOLLRDHUP` on a small per-connection epoll that watches
//!   for nothing else. The redirect is asynchronous (through the peer's
//!   backlog), so the FIN is forwarded as `shutdown(SHUT_WR)` only once the
//!   peer's write sequence (`TCP_INFO` bytes acked plus `SIOCOUTQ`) has grown
//!   by every byte the source received before its FIN (`TCP_INFO` bytes
//!   received), minus what user space had consumed before the join.
//! - **Byte counts** come from the same write sequences, every [`REFRESH`] and
//!   at the end; **idle** from `TCP_INFO`'s time since data was last received.
//! - **Out of the event loop.** The sockmap's data-ready callback still calls
//!   the socket's own, which wakes epoll waiters: left registered with tokio,
//!   the runtime would wake for every redirected burst. While both directions
//!   are the kernel's, both sockets leave tokio's reactor ([`Unregistered`]).
//! - **Fallbacks.** A direction that cannot join (its socket half-closed
//!   already, a full map) is relayed by the splice engine, by user space, for
//!   the rest of the connection; the other direction may still be the
//!   kernel's.

mod bpf;

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{copy, Activity, Broken, Direction, End, Engine, Moved, Side, Tally};

/// Entries per map: one per socket, so 65,536 connections at once. Beyond,
/// a connection is relayed by splice. The kernel allocates an entry only when
/// one is added; the buckets (16 bytes each) are allocated up front.
const MAX_ENTRIES: u32 = 1 << 17;

/// How often the byte counts of a kernel-relayed direction are brought up to
/// date while it runs (the metrics' per-server byte totals follow with this
/// lag; the access log is exact at the end).
const REFRESH: Duration = Duration::from_secs(10);

/// Buffer for reading what arrived before the join.
const DRAIN_BUF: usize = 64 * 1024;

/// The maps and the program, for the life of the process.
struct Offload {
    /// A socket's cookie → the socket its received bytes are sent out of.
    peers: bpf::SockHash,
    /// The sockets the program runs for (it is attached to this map).
    joined: bpf::SockHash,
    _program: OwnedFd,
}

static OFFLOAD: OnceLock<Offload> = OnceLock::new();

/// Why the engine could not be set up.
#[derive(Debug, thiserror::Error)]
pub(super) enum SetupError {
    #[error("creating a BPF sockhash map: {0}")]
    Map(io::Error),
    #[error("{step}: {error}{}", verifier_log(.log))]
    Program {
        step: &'static str,
        error: io::Error,
        log: String,
    },
}

fn verifier_log(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (verifier: {})", log.replace('\n', "; "))
    }
}

impl SetupError {
    /// What the operator can do about it.
    pub(super) fn advice(&self) -> &'static str {
        let error = match self {
            SetupError::Map(e) | SetupError::Program { error: e, .. } => e,
        };
        match error.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => {
                "it needs CAP_BPF and CAP_NET_ADMIN, and the bpf(2) system call \
                 where a seccomp filter applies (a systemd drop-in adds all three: \
                 see the README, Kernel offload (sockmap))"
            }
            _ => "it needs BPF sockmap support in the kernel (tested on Linux 6.18)",
        }
    }
}

/// Creates the maps, loads the program and attaches it, once per process.
pub(super) fn setup() -> Result<(), SetupError> {
    if OFFLOAD.get().is_some() {
        return Ok(());
    }
    let peers = bpf::SockHash::new("sniroute_peers", MAX_ENTRIES).map_err(SetupError::Map)?;
    let joined = bpf::SockHash::new("sniroute_joined", MAX_ENTRIES).map_err(SetupError::Map)?;
    let program =
        bpf::load_and_attach(&peers, &joined).map_err(|(step, e)| SetupError::Program {
            step,
            error: e.error,
            log: e.log,
        })?;
    let _ = OFFLOAD.set(Offload {
        peers,
        joined,
        _program: program,
    });
    Ok(())
}

/// How a direction's first phase, in user space, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Its socket had nothing more: it may join.
    Dry,
    /// Its source closed; the half-close was forwarded. Done.
    Eof,
}

/// Reads `from` until it would block, writing everything to `to`. Reads go
/// straight to the socket, not through tokio's readiness: "would block" must
/// mean the receive queue is empty, so no buffer is left half read.
async fn drain(d: &Direction<'_>) -> Result<Drained, Broken> {
    let mut buf = Vec::with_capacity(DRAIN_BUF);
    loop {
        buf.clear();
        match sys::recv(d.from.as_raw_fd(), &mut buf) {
            Ok(0) => {
                d.forward_eof();
                return Ok(Drained::Eof);
            }
            Ok(n) => {
                copy::write_all(d, &buf).await?;
                d.moved(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Drained::Dry),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(d.read_failed(&e)),
        }
    }
}

/// A direction the kernel relays. It holds descriptors, not the sockets:
/// while both directions are the kernel's, the sockets are out of tokio's
/// hands ([`Unregistered`]).
struct Kernel<'a> {
    from: RawFd,
    to: RawFd,
    counts: [&'a AtomicU64; 2],
    activity: &'a Activity,
    /// Bytes of `from` user space had consumed at the join, in
    /// `tcpi_bytes_received` terms: received minus still queued.
    consumed: u64,
    /// `to`'s write sequence at the join, in `tcpi_bytes_acked` terms.
    written: u64,
    /// Bytes of this direction added to the counts so far.
    counted: u64,
    /// `from` sent its FIN: forward it once its bytes are through.
    eof: bool,
    /// The FIN is forwarded (or the relay needs no forwarding): done.
    done: bool,
    /// Whether this relay shut `to` down, which adds one (the FIN) to its
    /// write sequence.
    fin_sent: bool,
}

impl Kernel<'_> {
    /// Brings the counts up to `to`'s write sequence, as far as it can be read
    /// now (a lower bound while acknowledgements arrive).
    fn refresh(&mut self) {
        if let Ok(now) = sys::write_seq(self.to, false) {
            self.count_to(now);
        }
    }

    /// The same, exactly where the kernel lets it (at the end).
    fn settle(&mut self) {
        match sys::write_seq(self.to, true) {
            Ok(now) => self.count_to(now),
            Err(_) => self.refresh(),
        }
    }

    fn count_to(&mut self, write_seq: u64) {
        let moved = write_seq
            .saturating_sub(self.written)
            .saturating_sub(u64::from(self.fin_sent));
        if moved > self.counted {
            for count in self.counts {
                count.fetch_add(moved - self.counted, Ordering::Relaxed);
            }
            self.counted = moved;
        }
    }

    /// After `from`'s FIN: forwards it if every byte before it went out of
    /// `to`. Returns whether it did.
    fn try_finish(&mut self) -> bool {
        let (Ok(from), Ok(to)) = (sys::tcp_info(self.from), sys::write_seq(self.to, false)) else {
            return false;
        };
        // `tcpi_bytes_received` counts the FIN as one.
        let owed = from
            .tcpi_bytes_received
            .saturating_sub(1)
            .saturating_sub(self.consumed);
        self.count_to(to);
        if to.saturating_sub(self.written) < owed {
            return false;
        }
        // As `Direction::forward_eof`: the second FIN is not forwarded, the
        // close that follows the relay sends it.
        if !self.activity.one_closed.swap(true, Ordering::AcqRel) {
            self.fin_sent = sys::shut_write(self.to).is_ok();
        }
        self.done = true;
        true
    }
}

/// The map entries of one connection, removed when dropped: before the
/// sockets close, whatever ends the relay (the end of the shutdown drain
/// included).
struct Membership<'o> {
    offload: &'o Offload,
    peers: [Option<u64>; 2],
    joined: [Option<u64>; 2],
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        // Leave `joined` first: no more redirects, then no more targets.
        for key in self.joined.iter().flatten() {
            let _ = self.offload.joined.remove(*key);
        }
        for key in self.peers.iter().flatten() {
            let _ = self.offload.peers.remove(*key);
        }
    }
}

/// A socket taken out of tokio's reactor: registered, every burst the kernel
/// redirects would wake the runtime (the sockmap's data-ready callback still
/// calls the socket's own, which wakes epoll waiters). A stand-in socket,
/// never connected, takes its place in the caller's slot; the real one is
/// closed when this is dropped, by then out of the maps.
struct Unregistered {
    _socket: std::net::TcpStream,
}

/// Why a socket could not be taken out of the reactor.
enum TakeError {
    /// No stand-in (out of descriptors, say): the socket stays registered.
    StandIn(io::Error),
    /// Deregistering failed, which closed the socket: the relay must end.
    Lost(io::Error),
}

impl Unregistered {
    fn take(slot: &mut TcpStream) -> Result<Unregistered, TakeError> {
        let stand_in = || -> io::Result<TcpStream> {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.set_nonblocking(true)?;
            TcpStream::from_std(std::net::TcpStream::from(socket))
        };
        let stand_in = stand_in().map_err(TakeError::StandIn)?;
        let real = std::mem::replace(slot, stand_in);
        Ok(Unregistered {
            _socket: real.into_std().map_err(TakeError::Lost)?,
        })
    }
}

/// What a connection holds while the kernel relays for it, let go of in order
/// however the relay ends (the end of the shutdown drain drops it too): the
/// counts brought up to date while the sockets are still open, then the map
/// entries removed, then the sockets taken from tokio closed.
struct Offloaded<'a, 'o> {
    kernel: [Option<Kernel<'a>>; 2],
    membership: Option<Membership<'o>>,
    taken: [Option<Unregistered>; 2],
}

impl Drop for Offloaded<'_, '_> {
    fn drop(&mut self) {
        for k in self.kernel.iter_mut().flatten() {
            k.settle();
        }
        // The fields drop next, in order: membership, then taken.
    }
}

/// Relays `client` ⇄ `upstream` under the sockmap engine; see the module doc.
pub(super) async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    activity: &Activity,
    idle: Duration,
    moved: &Moved,
    tally: Tally<'_>,
) -> End {
    let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
    let counts = [[&moved.up, tally.up], [&moved.down, tally.down]];
    let mut held = Offloaded {
        kernel: [None, None],
        membership: None,
        taken: [None, None],
    };
    let watch = {
        let (up, down) = super::directions(client, upstream, activity, moved, tally);
        let dirs = [&up, &down];
        let drained = async { tokio::try_join!(drain(&up), drain(&down)) };
        let states = tokio::select! {
            r = drained => match r {
                Ok((u, d)) => [u, d],
                Err(broken) => return End::Broken(broken),
            },
            () = super::idle_for(activity, idle) => return End::Idle,
        };
        let mut watch = None;
        if let Some(offload) = OFFLOAD.get().filter(|_| states.contains(&Drained::Dry)) {
            // The watch first: without it, a joined direction's FIN would go unseen.
            match Watch::new(fds) {
                Ok(w) => {
                    held.membership = Some(join(
                        offload,
                        dirs,
                        states,
                        counts,
                        activity,
                        &mut held.kernel,
                    ));
                    watch = Some(w);
                }
                Err(e) => tracing::debug!("no epoll for the sockmap relay ({e}); splicing"),
            }
        }
        let watch = watch.filter(|_| held.kernel.iter().any(Option::is_some));
        if held.kernel.iter().any(Option::is_none) {
            // A direction for user space (or done already): the sockets stay
            // with tokio, and the kernel's direction, if any, is watched
            // alongside.
            let user_space = [0, 1].map(|i| states[i] == Drained::Dry && held.kernel[i].is_none());
            let user = |i: usize| {
                let d = dirs[i];
                let mine = user_space[i];
                async move {
                    if mine {
                        d.run(Engine::Splice).await
                    } else {
                        Ok(())
                    }
                }
            };
            let users = async { tokio::try_join!(user(0), user(1)).map(drop) };
            return supervise(users, watch.as_ref(), fds, &mut held.kernel, activity, idle).await;
        }
        watch
    };
    // Both directions are the kernel's: user space only waits for FINs,
    // errors and the idle timeout, with the sockets out of tokio's reactor.
    for (i, (slot, side)) in [(client, Side::Client), (upstream, Side::Upstream)]
        .into_iter()
        .enumerate()
    {
        match Unregistered::take(slot) {
            Ok(taken) => held.taken[i] = Some(taken),
            Err(TakeError::StandIn(e)) => {
                tracing::debug!("a socket stays registered with tokio ({e})");
            }
            Err(TakeError::Lost(e)) => {
                return End::Broken(Broken {
                    side,
                    writing: false,
                    kind: e.kind(),
                });
            }
        }
    }
    let users = async { Ok(()) };
    supervise(users, watch.as_ref(), fds, &mut held.kernel, activity, idle).await
}

/// Puts the sockets of every direction that drained dry into the maps, and
/// fills `kernel` for those that joined. A direction that cannot join is left
/// to user space.
fn join<'o, 'c>(
    offload: &'o Offload,
    dirs: [&Direction<'_>; 2],
    states: [Drained; 2],
    counts: [[&'c AtomicU64; 2]; 2],
    activity: &'c Activity,
    kernel: &mut [Option<Kernel<'c>>; 2],
) -> Membership<'o> {
    let mut m = Membership {
        offload,
        peers: [None, None],
        joined: [None, None],
    };
    let fds = [dirs[0].from.as_raw_fd(), dirs[1].from.as_raw_fd()];
    let (Ok(c0), Ok(c1)) = (sys::cookie(fds[0]), sys::cookie(fds[1])) else {
        return m;
    };
    let cookies = [c0, c1];
    // Baselines first, while neither socket has a program nor user space reads
    // or writes: nothing moves them but bytes arriving, which the readings
    // below are immune to.
    let mut bases = [None, None];
    for i in 0..2 {
        if states[i] != Drained::Dry {
            continue;
        }
        let consumed = sys::consumed(fds[i]);
        let written = sys::write_seq(fds[1 - i], true);
        if let (Ok(consumed), Ok(written)) = (consumed, written) {
            bases[i] = Some((consumed, written));
        }
    }
    // Every target into `peers` before any socket joins.
    for i in 0..2 {
        if bases[i].is_some() && offload.peers.insert(cookies[i], fds[1 - i]).is_ok() {
            m.peers[i] = Some(cookies[i]);
        }
    }
    for i in 0..2 {
        let Some((consumed, written)) = bases[i] else {
            continue;
        };
        if m.peers[i].is_none() {
            continue;
        }
        if let Err(e) = offload.joined.insert(cookies[i], fds[i]) {
            tracing::debug!("a socket could not join the sockmap ({e}); splicing that direction");
            continue;
        }
        m.joined[i] = Some(cookies[i]);
        // Bytes queued between the drain and the join: the program takes them
        // now instead of at the next arrival.
        let _ = sys::poke(fds[i]);
        kernel[i] = Some(Kernel {
            from: fds[i],
            to: fds[1 - i],
            counts: counts[i],
            activity,
            consumed,
            written,
            counted: 0,
            eof: false,
            done: false,
            fin_sent: false,
        });
    }
    m
}

/// Waits for the end: user-space directions finishing, FINs and errors on the
/// sockets of kernel directions, the idle timeout. Refreshes the counts.
async fn supervise(
    users: impl std::future::Future<Output = Result<(), Broken>>,
    mut watch: Option<&Watch>,
    fds: [RawFd; 2],
    kernel: &mut [Option<Kernel<'_>>; 2],
    activity: &Activity,
    idle: Duration,
) -> End {
    tokio::pin!(users);
    let mut users_done = false;
    let mut next_refresh = Instant::now() + REFRESH;
    // When the idle timeout is due, as far as known; looked at again (from
    // `TCP_INFO`) only when it comes.
    let mut idle_at = activity.last() + idle;
    // While a FIN waits for its bytes: how soon to look again.
    let mut retry = Duration::from_millis(1);
    loop {
        let kernel_done = kernel.iter().flatten().all(|k| k.done);
        if users_done && kernel_done {
            return End::Closed;
        }
        let waiting_fin = kernel.iter().flatten().any(|k| k.eof && !k.done);
        let mut wake = idle_at.min(next_refresh);
        if waiting_fin {
            wake = wake.min(Instant::now() + retry);
        }
        let event = async {
            match watch {
                Some(w) if !kernel_done => w.next().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut users, if !users_done => match r {
                Ok(()) => users_done = true,
                Err(broken) => return End::Broken(broken),
            },
            r = event => match r {
                Ok(events) => {
                    if let Err(broken) = handle(events, fds, kernel) {
                        return End::Broken(broken);
                    }
                    retry = Duration::from_millis(1);
                    for k in kernel.iter_mut().flatten().filter(|k| k.eof && !k.done) {
                        k.try_finish();
                    }
                }
                Err(e) => {
                    // The epoll itself failed (it should not): stop watching;
                    // the idle timeout ends the connection.
                    tracing::warn!("sockmap relay: epoll failed, no longer watching this connection: {e}");
                    watch = None;
                }
            },
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= next_refresh {
                    for k in kernel.iter_mut().flatten() {
                        k.refresh();
                    }
                    next_refresh = now + REFRESH;
                }
                if waiting_fin {
                    for k in kernel.iter_mut().flatten().filter(|k| k.eof && !k.done) {
                        k.try_finish();
                    }
                    retry = (retry * 2).min(Duration::from_millis(250));
                }
                if now >= idle_at {
                    idle_at = last_activity(kernel, activity) + idle;
                    if now >= idle_at {
                        return End::Idle;
                    }
                }
            }
        }
    }
}

/// When a byte last moved: the latest of user space's last move and, for each
/// kernel direction, the last data its source received.
fn last_activity(kernel: &[Option<Kernel<'_>>; 2], activity: &Activity) -> Instant {
    let now = Instant::now();
    let mut last = activity.last();
    for k in kernel.iter().flatten() {
        if let Ok(info) = sys::tcp_info(k.from) {
            let ago = Duration::from_millis(u64::from(info.tcpi_last_data_recv));
            last = last.max(now.checked_sub(ago).unwrap_or(last));
        }
    }
    last
}

/// Acts on epoll events: an error ends the relay, a FIN marks its direction.
fn handle(
    events: Events,
    fds: [RawFd; 2],
    kernel: &mut [Option<Kernel<'_>>; 2],
) -> Result<(), Broken> {
    for (side, flags) in events.iter() {
        let i = match side {
            Side::Client => 0,
            Side::Upstream => 1,
        };
        if flags & (libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) != 0 {
            // What the kernel said; a HUP without an error is both directions
            // of that socket closed, which the FINs handle.
            if let Ok(Some(e)) = sys::take_error(fds[i]) {
                return Err(Broken {
                    side,
                    writing: e.kind() == io::ErrorKind::BrokenPipe,
                    kind: e.kind(),
                });
            }
        }
        if flags & (libc::EPOLLRDHUP as u32 | libc::EPOLLHUP as u32) != 0 {
            if let Some(k) = kernel[i].as_mut() {
                k.eof = true;
            }
        }
    }
    Ok(())
}

/// Up to two events: (socket, epoll flags).
struct Events {
    list: [(Side, u32); 2],
    len: usize,
}

impl Events {
    fn iter(&self) -> impl Iterator<Item = (Side, u32)> + '_ {
        self.list[..self.len].iter().copied()
    }
}

/// A per-connection epoll that reports only FINs, hang-ups and errors of the
/// two sockets, so bytes flowing through the kernel never wake sniroute.
struct Watch {
    epoll: AsyncFd<OwnedFd>,
}

impl Watch {
    /// Watches `[client, upstream]`.
    fn new(fds: [RawFd; 2]) -> io::Result<Watch> {
        let epoll = sys::epoll_create()?;
        for (token, fd) in fds.into_iter().enumerate() {
            sys::epoll_add(&epoll, fd, token as u64)?;
        }
        // SAFETY: the `OwnedFd` moves into the `AsyncFd` and stays open, the
        // same descriptor, until the `AsyncFd` drops it.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Watch { epoll })
    }

    async fn next(&self) -> io::Result<Events> {
        loop {
            let mut guard = self.epoll.readable().await?;
            let mut raw = [libc::epoll_event { events: 0, u64: 0 }; 2];
            let n = sys::epoll_wait(guard.get_inner(), &mut raw)?;
            if n < raw.len() {
                guard.clear_ready();
            }
            if n == 0 {
                continue;
            }
            let mut events = Events {
                list: [(Side::Client, 0); 2],
                len: n,
            };
            for (slot, e) in events.list.iter_mut().zip(&raw[..n]) {
                let side = if { e.u64 } == 0 {
                    Side::Client
                } else {
                    Side::Upstream
                };
                *slot = (side, e.events);
            }
            return Ok(events);
        }
    }
}

/// The system calls on sockets this engine needs besides bpf(2). Each borrows
/// a descriptor of a live socket (or the epoll it owns) for the call.
mod sys {
    use super::*;

    /// `SO_COOKIE` (asm-generic/socket.h), not in the libc crate.
    const SO_COOKIE: libc::c_int = 57;

    fn check(r: libc::c_int) -> io::Result<libc::c_int> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    fn getsockopt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
        let mut value = MaybeUninit::<T>::zeroed();
        let mut len = std::mem::size_of::<T>() as libc::socklen_t;
        // SAFETY: `value` has room for `len` bytes and the kernel writes at
        // most that many; it starts zeroed, so a shorter answer (an older
        // kernel's smaller `tcp_info`) leaves the rest zero, a valid `T` for
        // the plain-integer structs used here.
        check(unsafe { libc::getsockopt(fd, level, name, value.as_mut_ptr().cast(), &mut len) })?;
        // SAFETY: zero-initialised and then (partly) written by the kernel.
        Ok(unsafe { value.assume_init() })
    }

    /// The socket's cookie: a number unique to it for the life of the system.
    pub(super) fn cookie(fd: RawFd) -> io::Result<u64> {
        getsockopt::<u64>(fd, libc::SOL_SOCKET, SO_COOKIE)
    }

    pub(super) fn tcp_info(fd: RawFd) -> io::Result<libc::tcp_info> {
        getsockopt::<libc::tcp_info>(fd, libc::IPPROTO_TCP, libc::TCP_INFO)
    }

    fn ioctl_int(fd: RawFd, request: libc::Ioctl) -> io::Result<u64> {
        let mut value: libc::c_int = 0;
        // SAFETY: SIOCINQ and SIOCOUTQ write one int.
        check(unsafe { libc::ioctl(fd, request, &mut value) })?;
        Ok(value.max(0) as u64)
    }

    /// How many tries an exact reading gets while acknowledgements or bytes
    /// keep arriving between its system calls.
    const TRIES: usize = 16;

    /// The socket's write sequence, in bytes since the connection started
    /// (`tcpi_bytes_acked` terms): acknowledged plus still queued. `exact`
    /// retries until no acknowledgement came in between; otherwise the first
    /// reading, a lower bound, does.
    pub(super) fn write_seq(fd: RawFd, exact: bool) -> io::Result<u64> {
        for _ in 0..TRIES {
            let before = tcp_info(fd)?.tcpi_bytes_acked;
            let queued = ioctl_int(fd, libc::TIOCOUTQ)?;
            if !exact {
                return Ok(before + queued);
            }
            if tcp_info(fd)?.tcpi_bytes_acked == before {
                return Ok(before + queued);
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Bytes user space consumed from the socket, in `tcpi_bytes_received`
    /// terms: received minus still queued, retried until no byte arrived in
    /// between. Only meaningful before the socket is in a sockmap (after, its
    /// `SIOCINQ` reports the sockmap's own queue).
    pub(super) fn consumed(fd: RawFd) -> io::Result<u64> {
        for _ in 0..TRIES {
            let before = tcp_info(fd)?.tcpi_bytes_received;
            let queued = ioctl_int(fd, libc::FIONREAD)?;
            if tcp_info(fd)?.tcpi_bytes_received == before {
                return Ok(before.saturating_sub(queued));
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Makes the kernel run the socket's data-ready callback, now the sockmap's,
    /// for bytes already queued (`tcp_set_rcvlowat` calls `tcp_data_ready`).
    pub(super) fn poke(fd: RawFd) -> io::Result<()> {
        let one: libc::c_int = 1;
        // SAFETY: SO_RCVLOWAT reads one int from `one`, which outlives the call.
        check(unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// The socket's pending error (`SO_ERROR`), taken.
    pub(super) fn take_error(fd: RawFd) -> io::Result<Option<io::Error>> {
        let code = getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_ERROR)?;
        Ok((code != 0).then(|| io::Error::from_raw_os_error(code)))
    }

    /// `shutdown(SHUT_WR)`: the FIN.
    pub(super) fn shut_write(fd: RawFd) -> io::Result<()> {
        // SAFETY: no pointers.
        check(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map(drop)
    }

    /// One non-blocking `recv` into `buf`'s spare capacity.
    pub(super) fn recv(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
        let spare = buf.spare_capacity_mut();
        // SAFETY: the kernel writes at most `spare.len()` bytes into `spare`.
        let n = unsafe {
            libc::recv(
                fd,
                spare.as_mut_ptr().cast(),
                spare.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised the first `n` spare bytes.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    pub(super) fn epoll_create() -> io::Result<OwnedFd> {
        // SAFETY: no pointers; a new descriptor on success.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: just created, owned by nothing else.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    }

    /// Watches `fd` for a FIN (`EPOLLRDHUP`), and implicitly for errors and
    /// hang-ups, edge-triggered.
    pub(super) fn epoll_add(epoll: &OwnedFd, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: `event` is valid for the call; both descriptors are open.
        check(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })
            .map(drop)
    }

    /// Takes the ready events without waiting.
    pub(super) fn epoll_wait(
        epoll: &OwnedFd,
        events: &mut [libc::epoll_event],
    ) -> io::Result<usize> {
        // SAFETY: `events` has room for `events.len()` entries.
        let n = check(unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                0,
            )
        })?;
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected sockets on loopback: (the peer's end, sniroute's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outside = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (inside, _) = listener.accept().await.unwrap();
        (outside, inside)
    }

    /// The client's request and FIN are queued before the relay starts: its
    /// direction ends in the drain, and a half-closed socket can be neither
    /// a redirect target nor joined (the kernel takes only established
    /// sockets), so the server's direction is spliced by user space, and
    /// everything still arrives, counted, with both FINs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root"]
    async fn a_fin_before_the_join_leaves_the_connection_to_user_space() {
        setup().expect("needs CAP_BPF and CAP_NET_ADMIN");
        let (mut client, from_client) = pair().await;
        let (mut server, to_server) = pair().await;
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        // The FIN is in: the socket is in CLOSE_WAIT.
        let deadline = Instant::now() + Duration::from_secs(5);
        while sys::tcp_info(from_client.as_raw_fd()).unwrap().tcpi_state != 8 {
            assert!(Instant::now() < deadline, "no FIN");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let answer: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let serve = {
            let answer = answer.clone();
            async move {
                let mut request = Vec::new();
                server.read_to_end(&mut request).await.unwrap();
                server.write_all(&answer).await.unwrap();
                server.shutdown().await.unwrap();
                request
            }
        };
        let read = async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let activity = Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            one_closed: std::sync::atomic::AtomicBool::new(false),
        };
        let moved = Moved::default();
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let tally = Tally {
            up: &up,
            down: &down,
        };
        // As the proxy does, the sockets close when the relay ends: that
        // close is the second FIN.
        let relay = async {
            let (mut from_client, mut to_server) = (from_client, to_server);
            relay(
                &mut from_client,
                &mut to_server,
                &activity,
                Duration::from_secs(10),
                &moved,
                tally,
            )
            .await
        };
        let (end, request, got) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(relay, serve, read)
        })
        .await
        .expect("the relay hung");
        assert_eq!(end, End::Closed);
        assert_eq!(request, b"request");
        assert!(got == answer, "the answer came back changed");
        assert_eq!(moved.up.load(Ordering::Relaxed), 7);
        assert_eq!(moved.down.load(Ordering::Relaxed), answer.len() as u64);
        assert_eq!(down.load(Ordering::Relaxed), answer.len() as u64);
    }
}

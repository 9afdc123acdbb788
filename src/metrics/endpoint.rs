//! The metrics HTTP endpoint: `GET /metrics`, the status page `GET /status`
//! (see [`crate::status`]) and `GET /healthz`, and nothing else.
//!
//! `/healthz` answers `200 ok` while sniroute serves and `503 draining` once
//! graceful shutdown has begun, so that keepalived and balancers in front move
//! traffic away during the drain; for that the endpoint keeps serving through
//! the drain, until the process exits.
//!
//! A deliberately tiny HTTP/1.x responder rather than an HTTP server stack: one
//! request per connection, answered and closed. It shares nothing with the proxy
//! but the runtime, and is bounded so that slow or garbage clients cannot hurt
//! it or the proxy: at most [`MAX_CLIENTS`] at once (more are closed at once),
//! [`REQUEST_TIMEOUT`] for the whole exchange, [`MAX_HEAD`] bytes of request.
//!
//! It stays reachable while the proxy has used up every file descriptor, which
//! is when its numbers matter most: it holds a [`Reserve`] of descriptors for
//! its own clients.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Metrics;
use crate::resources::{Resource, FIXED_DESCRIPTORS};
use crate::shutdown::{Phase, Shutdown};
use crate::status::Page;

pub const MAX_CLIENTS: usize = 8;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_HEAD: usize = 8 * 1024;
/// Descriptors held in reserve; one always stays (see [`Reserve`]), so this
/// many minus one scrapes can be answered at once while descriptors are out.
/// Counted in [`FIXED_DESCRIPTORS`].
pub const RESERVE: usize = 3;
const _: () = assert!(RESERVE < FIXED_DESCRIPTORS as usize);

/// How long to wait before accepting again when an accept failed and the
/// reserve could not help.
const BACKOFF: Duration = Duration::from_millis(100);

/// Serves `metrics`, `page` and the health answer on `listener` until the
/// process exits (the drain included: `shutdown` only changes `/healthz`).
pub async fn serve(
    listener: Arc<TcpListener>,
    metrics: Arc<Metrics>,
    page: Arc<Page>,
    shutdown: Shutdown,
) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    let reserve = Arc::new(Reserve::default());
    loop {
        reserve.refill();
        let accepted = listener.accept().await;
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if Resource::of(&e) == Some(Resource::FileDescriptors) && reserve.spend() => {
                // One descriptor is free now, for as long as nothing else takes
                // it: accept at once, without waiting for a client (the failed
                // accept does not say one is queued).
                match try_accept(&listener).await {
                    Some(Ok(stream)) => stream,
                    // Nothing queued: take the descriptor back and wait for one.
                    None => continue,
                    Some(Err(_)) => {
                        tokio::time::sleep(BACKOFF).await;
                        continue;
                    }
                }
            }
            Err(_) => {
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&clients).try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let (metrics, page, shutdown) = (Arc::clone(&metrics), Arc::clone(&page), shutdown.clone());
        let reserve = Arc::clone(&reserve);
        tokio::spawn(async move {
            let mut stream = stream;
            let served = answer(&mut stream, &metrics, &page, &shutdown);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, served).await;
            reserve.recycle(stream);
            drop(permit);
        });
    }
}

/// One accept if a client is queued now; `None` if none is.
async fn try_accept(listener: &TcpListener) -> Option<io::Result<TcpStream>> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match listener.poll_accept(cx) {
            Poll::Ready(accepted) => Some(accepted.map(|(stream, _)| stream)),
            Poll::Pending => None,
        })
    })
    .await
}

/// Descriptors (on `/dev/null`) held so that the endpoint can accept when the
/// process has none left: an accept that fails for lack of descriptors closes
/// one and accepts right away, and once the exchange is over the client's
/// socket is turned back into a reserve descriptor.
///
/// Why a reserve rather than keeping the proxy below the limit: nothing in the
/// process can keep every descriptor user (accepts, upstream connects, splice
/// pipes, the runtime) under a line, and the kernel gives a freed descriptor to
/// whichever call comes first. A reserve is the endpoint's own. Spending one
/// and accepting are back to back on one task, so the only moment another
/// thread can take that descriptor is between those two calls; and giving it
/// back has no such moment at all: `dup3` makes the socket's descriptor number
/// refer to `/dev/null` in one step (that also closes the socket), instead of
/// a close followed by an open that anyone could come between. This is why one
/// reserve descriptor is never spent: it is what the others are duplicated
/// from.
#[derive(Debug, Default)]
struct Reserve {
    fds: Mutex<Vec<OwnedFd>>,
}

impl Reserve {
    fn fds(&self) -> std::sync::MutexGuard<'_, Vec<OwnedFd>> {
        self.fds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens what is missing, as far as descriptors allow; cheap when full.
    fn refill(&self) {
        let mut fds = self.fds();
        while fds.len() < RESERVE {
            match File::open("/dev/null") {
                Ok(file) => fds.push(file.into()),
                Err(_) => return,
            }
        }
    }

    /// Closes one descriptor, if one can be spared.
    fn spend(&self) -> bool {
        let mut fds = self.fds();
        fds.len() > 1 && fds.pop().is_some()
    }

    /// Closes `stream`, turning its descriptor into a reserve one if the
    /// reserve is short.
    fn recycle(&self, stream: TcpStream) {
        let mut fds = self.fds();
        if fds.len() >= RESERVE {
            return;
        }
        let Some(source) = fds.first() else { return };
        // Out of tokio's reactor first: the descriptor is about to change file.
        let Ok(socket) = stream.into_std() else {
            return;
        };
        let fd = OwnedFd::from(socket);
        if sys::dup_onto(source.as_fd(), &fd).is_ok() {
            fds.push(fd);
        }
    }
}

mod sys {
    use super::*;

    /// Makes `target` refer to what `source` refers to, closing what `target`
    /// referred to before, in one step (`dup3`); `target` keeps its number.
    pub(super) fn dup_onto(source: BorrowedFd<'_>, target: &OwnedFd) -> io::Result<()> {
        // SAFETY: both descriptors are open and owned by the caller for the whole
        // call; dup3 only changes which file `target`'s number refers to, so
        // `target` still owns exactly one descriptor, closed once on its drop.
        let r = unsafe { libc::dup3(source.as_raw_fd(), target.as_raw_fd(), libc::O_CLOEXEC) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

async fn answer(
    stream: &mut TcpStream,
    metrics: &Arc<Metrics>,
    page: &Page,
    shutdown: &Shutdown,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let answer = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        match route(&head) {
            Some(answer) => break answer,
            None if head.len() >= MAX_HEAD => {
                break Answer::Status(431, "Request Header Fields Too Large")
            }
            None => continue,
        }
    };
    let (status, content_type, body, head_only) = match answer {
        Answer::Serve { path, head_only } => {
            let draining = shutdown.phase() >= Phase::Draining;
            let (status, content_type, body) = content(path, metrics, page, draining);
            (status.to_owned(), content_type, body, head_only)
        }
        Answer::Status(code, reason) => (
            format!("{code} {reason}"),
            "text/plain",
            format!("{code} {reason}\n"),
            false,
        ),
    };
    // Every answer is about this instant: a cached /healthz or /status would lie.
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// (status, content type, body) of a served path.
fn content(
    path: Path,
    metrics: &Arc<Metrics>,
    page: &Page,
    draining: bool,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        Path::Metrics => ("200 OK", prometheus_text::CONTENT_TYPE, metrics.render()),
        Path::Status => ("200 OK", "text/html; charset=utf-8", page.html(draining)),
        Path::Healthz if draining => ("503 Service Unavailable", TEXT, "draining\n".to_owned()),
        Path::Healthz => ("200 OK", TEXT, "ok\n".to_owned()),
    }
}

/// What a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Serve { path: Path, head_only: bool },
    Status(u16, &'static str),
}

/// The paths served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Metrics,
    Status,
    Healthz,
}

/// What to answer once `head` holds a complete request head (`None`: read more).
fn route(head: &[u8]) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Answer::Status(400, "Bad Request")),
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            let path = match path {
                "/metrics" => Path::Metrics,
                "/status" => Path::Status,
                "/healthz" => Path::Healthz,
                _ => return Some(Answer::Status(404, "Not Found")),
            };
            Some(match request.method {
                Some("GET") => Answer::Serve {
                    path,
                    head_only: false,
                },
                Some("HEAD") => Answer::Serve {
                    path,
                    head_only: true,
                },
                _ => Answer::Status(405, "Method Not Allowed"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &[u8]) -> Option<String> {
        route(head).map(|a| match a {
            Answer::Serve { path, head_only } => format!("{path:?} head_only={head_only}"),
            Answer::Status(code, reason) => format!("HTTP/1.1 {code} {reason}"),
        })
    }

    #[test]
    fn only_get_and_head_of_metrics_are_served() {
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
            "Metrics head_only=false"
        );
        assert_eq!(
            status(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").unwrap(),
            "Metrics head_only=false"
        );
        assert_eq!(
            status(b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap(),
            "Metrics head_only=true"
        );
        assert_eq!(
            status(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap(),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\n\r\n").unwrap(),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(b"GET /metrics/x HTTP/1.1\r\n\r\n").unwrap(),
            "HTTP/1.1 404 Not Found"
        );
    }

    #[test]
    fn status_and_healthz_are_served_too() {
        assert_eq!(
            status(b"GET /status HTTP/1.1\r\n\r\n").unwrap(),
            "Status head_only=false"
        );
        assert_eq!(
            status(b"GET /healthz?probe=1 HTTP/1.0\r\n\r\n").unwrap(),
            "Healthz head_only=false"
        );
        assert_eq!(
            status(b"HEAD /healthz HTTP/1.1\r\n\r\n").unwrap(),
            "Healthz head_only=true"
        );
        assert_eq!(
            status(b"DELETE /status HTTP/1.1\r\n\r\n").unwrap(),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(
            status(b"GET /health HTTP/1.1\r\n\r\n").unwrap(),
            "HTTP/1.1 404 Not Found"
        );
    }

    #[test]
    fn garbage_is_a_bad_request_and_partial_heads_wait() {
        assert_eq!(
            status(b"\x16\x03\x01\x02\x00").unwrap(),
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\nHost:"), None);
    }
}

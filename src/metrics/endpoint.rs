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

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Metrics;
use crate::shutdown::{Phase, Shutdown};
use crate::status::Page;

pub const MAX_CLIENTS: usize = 8;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_HEAD: usize = 8 * 1024;

/// Serves `metrics`, `page` and the health answer on `listener` until the
/// process exits (the drain included: `shutdown` only changes `/healthz`).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    page: Arc<Page>,
    shutdown: Shutdown,
) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let accepted = listener.accept().await;
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, most likely: the proxy matters more; back off.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&clients).try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let (metrics, page, shutdown) = (Arc::clone(&metrics), Arc::clone(&page), shutdown.clone());
        tokio::spawn(async move {
            let served = answer(stream, &metrics, &page, &shutdown);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, served).await;
            drop(permit);
        });
    }
}

async fn answer(
    mut stream: TcpStream,
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

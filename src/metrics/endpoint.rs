//! The metrics HTTP endpoint: `GET /metrics`, and nothing else.
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

pub const MAX_CLIENTS: usize = 8;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_HEAD: usize = 8 * 1024;

/// Serves `metrics` on `listener` until shutdown.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mut shutdown: Shutdown) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let accepted = tokio::select! {
            () = shutdown.reached(Phase::Draining) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, most likely: the proxy matters more; back off.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&clients).try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics)).await;
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Arc<Metrics>) -> std::io::Result<()> {
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
    let (status, content_type, body) = match answer {
        Answer::Metrics { .. } => (
            "200 OK".to_owned(),
            prometheus_text::CONTENT_TYPE,
            metrics.render(),
        ),
        Answer::Status(code, reason) => (
            format!("{code} {reason}"),
            "text/plain",
            format!("{code} {reason}\n"),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !matches!(answer, Answer::Metrics { head_only: true }) {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// What a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Metrics { head_only: bool },
    Status(u16, &'static str),
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
            Some(match (request.method, path) {
                (Some("GET"), "/metrics") => Answer::Metrics { head_only: false },
                (Some("HEAD"), "/metrics") => Answer::Metrics { head_only: true },
                (_, "/metrics") => Answer::Status(405, "Method Not Allowed"),
                _ => Answer::Status(404, "Not Found"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &[u8]) -> Option<String> {
        route(head).map(|a| match a {
            Answer::Metrics { head_only } => format!("metrics head_only={head_only}"),
            Answer::Status(code, reason) => format!("HTTP/1.1 {code} {reason}"),
        })
    }

    #[test]
    fn only_get_and_head_of_metrics_are_served() {
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
            "metrics head_only=false"
        );
        assert_eq!(
            status(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").unwrap(),
            "metrics head_only=false"
        );
        assert_eq!(
            status(b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap(),
            "metrics head_only=true"
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
    fn garbage_is_a_bad_request_and_partial_heads_wait() {
        assert_eq!(
            status(b"\x16\x03\x01\x02\x00").unwrap(),
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\nHost:"), None);
    }
}

//! HTTP/1.x request head → `Host`.
//!
//! httparse does the parsing; a head is complete at the blank line. The port of
//! `Host` is ignored (`example.com:8080` routes as `example.com`). A request without
//! `Host` (HTTP/1.0) has an absent name; two `Host` headers are a malformed request,
//! since proxies disagreeing on which one counts is a classic smuggling vector.
//! An HTTP/2 client with prior knowledge (h2c) opens with a fixed preface that
//! names no host: it is recognised as such, not taken for a bad HTTP/1 request.
//!
//! The answers sniroute writes itself on an HTTP listener live here too, each
//! with `Content-Length` and `Connection: close`.

use super::{Parse, PeekError};
use crate::name::HostName;

/// More headers than this in one head is treated as too large.
const MAX_HEADERS: usize = 100;

/// Sent when no route matches the `Host`.
pub const MISDIRECTED_RESPONSE: &[u8] = b"HTTP/1.1 421 Misdirected Request\r\n\
Content-Type: text/plain\r\nContent-Length: 36\r\nConnection: close\r\n\r\n\
no route for this host on this port\n";

/// Sent when a route's allow/deny refuses the client.
pub const FORBIDDEN_RESPONSE: &[u8] = b"HTTP/1.1 403 Forbidden\r\n\
Content-Type: text/plain\r\nContent-Length: 38\r\nConnection: close\r\n\r\n\
this host is not open to your address\n";

/// Sent when the request head does not fit in `limits.max_peek_bytes`.
pub const TOO_LARGE_RESPONSE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
Content-Type: text/plain\r\nContent-Length: 26\r\nConnection: close\r\n\r\n\
request head is too large\n";

/// Sent by a `redirect_https` listener to a request without a Host: there is
/// no name to redirect to.
pub const NO_HOST_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nContent-Length: 39\r\nConnection: close\r\n\r\n\
no Host header: nothing to redirect to\n";

/// Where ACME HTTP-01 challenges are fetched (RFC 8555 8.3).
pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Parses the bytes read so far from an HTTP client.
pub fn parse(buf: &[u8]) -> Result<Parse, PeekError> {
    if buf.starts_with(HTTP2_PREFACE) {
        return Ok(Parse::Http2Preface);
    }
    if !buf.is_empty() && HTTP2_PREFACE.starts_with(buf) {
        // `P` could still become `POST`; the preface is decided by its next bytes.
        return Ok(Parse::Incomplete);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(Parse::Incomplete),
        Ok(httparse::Status::Complete(_)) => {
            let mut hosts = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"));
            let host = hosts.next();
            if hosts.next().is_some() {
                return Err(PeekError::Malformed(
                    "request head: more than one Host header",
                ));
            }
            // RFC 9112 3.2.2: with an absolute-form target the server ignores
            // `Host` and uses the target's authority, so we must route on it too.
            let authority = match request.path.and_then(absolute_form_authority) {
                Some(authority) => Some(authority),
                None => host.map(|h| h.value.trim_ascii()),
            };
            Ok(Parse::Complete(
                authority.and_then(|a| HostName::parse(strip_port(a))),
            ))
        }
        Err(httparse::Error::TooManyHeaders) => Err(PeekError::TooLarge),
        Err(httparse::Error::Version) => Err(PeekError::NotHttp("not an HTTP/1.x request line")),
        Err(httparse::Error::Token) if request.method.is_none() => {
            Err(PeekError::NotHttp("no HTTP method at the start"))
        }
        Err(_) => Err(PeekError::Malformed("request head")),
    }
}

/// The method and request-target of a head [`parse`] found complete.
pub fn request_line(buf: &[u8]) -> Option<(&str, &str)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(buf).ok()?;
    Some((request.method?, request.path?))
}

/// The path and query of a request-target: itself in origin-form, what follows
/// the authority in absolute-form (`/` where nothing does, as for `*`).
pub fn path_and_query(target: &str) -> &str {
    if target.starts_with('/') {
        return target;
    }
    let Some(scheme_end) = target.find("://") else {
        return "/";
    };
    let rest = &target[scheme_end + 3..];
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        _ => "/",
    }
}

/// The token of an ACME HTTP-01 challenge request: a `GET` or `HEAD` of
/// `/.well-known/acme-challenge/TOKEN`, TOKEN being base64url (RFC 8555
/// 8.3). Anything else (another method, an empty token, more segments, a
/// query, percent-encoding) is not a challenge sniroute may answer.
pub fn acme_token<'t>(method: &str, target: &'t str) -> Option<&'t str> {
    if method != "GET" && method != "HEAD" {
        return None;
    }
    let token = path_and_query(target).strip_prefix(ACME_PREFIX)?;
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some(token)
}

/// Whether the request-target asks for anything under the ACME challenge path.
pub fn is_acme_path(target: &str) -> bool {
    path_and_query(target).starts_with(ACME_PREFIX)
}

/// The `308 Permanent Redirect` to `https://{host}{path_and_query}`. The
/// target passed httparse, which admits no whitespace or control bytes, so it
/// cannot break out of the `Location` header.
pub fn redirect_response(host: &HostName, target: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 308 Permanent Redirect\r\nLocation: https://{host}{}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
        path_and_query(target)
    )
    .into_bytes()
}

/// The `200` with the key authorization `{token}.{thumbprint}`; for `HEAD`
/// its headers only.
pub fn acme_response(method: &str, token: &str, thumbprint: &str) -> Vec<u8> {
    let body = format!("{token}.{thumbprint}");
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        answer.push_str(&body);
    }
    answer.into_bytes()
}

/// `http://user@host:port/path` → `host:port`; `None` unless absolute-form.
fn absolute_form_authority(target: &str) -> Option<&[u8]> {
    let scheme_end = target.find("://")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    Some(
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host)
            .as_bytes(),
    )
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; anything without a numeric port as is.
fn strip_port(value: &[u8]) -> &[u8] {
    match value.iter().rposition(|&b| b == b':') {
        Some(i)
            if value[..i].last() != Some(&b':')
                && value[i + 1..].iter().all(u8::is_ascii_digit) =>
        {
            let host = &value[..i];
            // A bare IPv6 address has colons but no brackets: no port to strip.
            if host.contains(&b':') && !host.starts_with(b"[") {
                value
            } else {
                host
            }
        }
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(buf: &[u8]) -> Option<String> {
        match parse(buf).unwrap() {
            Parse::Complete(name) => name.map(|n| n.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn host_header_case_insensitive_port_ignored() {
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nhOsT: Rancher.Example.com:8080\r\n\r\n").as_deref(),
            Some("rancher.example.com")
        );
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nHost:  a.example.com. \r\n\r\n").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").as_deref(),
            Some("[::1]")
        );
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n").as_deref(),
            Some("[::1]")
        );
    }

    #[test]
    fn missing_empty_or_invalid_host_is_absent() {
        assert_eq!(host(b"GET / HTTP/1.0\r\n\r\n"), None);
        assert_eq!(host(b"GET / HTTP/1.1\r\nHost: \r\n\r\n"), None);
        assert_eq!(host(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), None);
        assert_eq!(host(b"GET / HTTP/1.1\r\nHost: evil.com/x\r\n\r\n"), None);
    }

    #[test]
    fn every_prefix_of_a_head_needs_more() {
        let head = b"POST /upload HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 5\r\n\r\n";
        for end in 0..head.len() {
            assert_eq!(
                parse(&head[..end]).unwrap(),
                Parse::Incomplete,
                "prefix {end}"
            );
        }
        let mut with_body = head.to_vec();
        with_body.extend_from_slice(b"hello");
        assert_eq!(host(&with_body).as_deref(), Some("a.example.com"));
    }

    #[test]
    fn absolute_form_target_wins_over_host() {
        let head = b"GET http://User@Target.example.com:8080/p?q HTTP/1.1\r\nHost: other.example.com\r\n\r\n";
        assert_eq!(host(head).as_deref(), Some("target.example.com"));
        assert_eq!(
            host(b"GET HTTPS://t.example.com HTTP/1.1\r\n\r\n").as_deref(),
            Some("t.example.com")
        );
        // Origin-form and other schemes leave Host in charge.
        assert_eq!(
            host(b"GET /http://x/ HTTP/1.1\r\nHost: h.example.com\r\n\r\n").as_deref(),
            Some("h.example.com")
        );
        assert_eq!(
            host(b"GET ftp://x/ HTTP/1.1\r\nHost: h.example.com\r\n\r\n").as_deref(),
            Some("h.example.com")
        );
    }

    #[test]
    fn duplicate_host_is_malformed() {
        let err = parse(b"GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com\r\n\r\n")
            .unwrap_err();
        assert_eq!(err.reason().as_str(), "malformed");
    }

    #[test]
    fn tls_or_garbage_on_an_http_port_is_not_http() {
        let hello = include_bytes!("../../tests/fixtures/hello/curl.bin");
        assert_eq!(parse(hello).unwrap_err().reason().as_str(), "not_http");
        assert_eq!(
            parse(b"\x00\x01\x02").unwrap_err().reason().as_str(),
            "not_http"
        );
        assert_eq!(
            parse(b"GET / SPDY/3\r\n\r\n")
                .unwrap_err()
                .reason()
                .as_str(),
            "not_http"
        );
    }

    #[test]
    fn too_many_headers_is_too_large() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert_eq!(parse(&head).unwrap_err().reason().as_str(), "too_large");
    }

    #[test]
    fn answers_have_exact_content_length_and_close() {
        for answer in [
            MISDIRECTED_RESPONSE,
            FORBIDDEN_RESPONSE,
            TOO_LARGE_RESPONSE,
            NO_HOST_RESPONSE,
            &redirect_response(&HostName::parse(b"a.example.com").unwrap(), "/x?y"),
            &acme_response("GET", "tok", "thumb"),
        ] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{text}"
            );
            assert!(head.contains("Connection: close"), "{text}");
        }
    }

    #[test]
    fn path_and_query_of_each_target_form() {
        assert_eq!(path_and_query("/a/b?c=d"), "/a/b?c=d");
        assert_eq!(path_and_query("http://h.example.com:80/p?q"), "/p?q");
        assert_eq!(path_and_query("http://h.example.com"), "/");
        assert_eq!(path_and_query("http://h.example.com?q"), "/");
        assert_eq!(path_and_query("*"), "/");
        assert_eq!(path_and_query("h.example.com:443"), "/");
    }

    #[test]
    fn acme_tokens_are_base64url_and_nothing_else() {
        let token = |m, t| acme_token(m, t);
        assert_eq!(
            token("GET", "/.well-known/acme-challenge/aB9_-x"),
            Some("aB9_-x")
        );
        assert_eq!(token("HEAD", "/.well-known/acme-challenge/t"), Some("t"));
        assert_eq!(
            token("GET", "http://x.example.com/.well-known/acme-challenge/t"),
            Some("t")
        );
        for target in [
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/a/b",
            "/.well-known/acme-challenge/a%2Fb",
            "/.well-known/acme-challenge/a.b",
            "/.well-known/acme-challenge/a?b",
            "/.well-known/acme-challenge",
            "/.well-known/ACME-challenge/a",
            "//.well-known/acme-challenge/a",
        ] {
            assert_eq!(token("GET", target), None, "{target}");
        }
        assert_eq!(token("POST", "/.well-known/acme-challenge/t"), None);
        assert_eq!(token("get", "/.well-known/acme-challenge/t"), None);
    }

    #[test]
    fn request_line_of_a_complete_head() {
        assert_eq!(
            request_line(b"\r\nHEAD /x?y HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("HEAD", "/x?y"))
        );
    }

    #[test]
    fn http2_preface_is_recognised_at_every_split() {
        for end in 1..HTTP2_PREFACE.len() {
            assert_eq!(parse(&HTTP2_PREFACE[..end]).unwrap(), Parse::Incomplete);
        }
        let mut with_frames = HTTP2_PREFACE.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(parse(&with_frames).unwrap(), Parse::Http2Preface);
        // Requests that start like it are still HTTP/1.
        assert_eq!(
            host(b"POST / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").as_deref(),
            Some("a.example.com")
        );
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes get an answer, never a panic; a name returned is valid.
            #[test]
            fn any_bytes_get_an_answer(bytes in vec(any::<u8>(), 0..2048)) {
                if let Ok(Parse::Complete(Some(name))) = parse(&bytes) {
                    prop_assert_eq!(HostName::parse(name.as_str().as_bytes()), Some(name));
                }
            }

            /// Any Host value: routed as its lowercase host part, or absent when it
            /// is not a hostname; every proper prefix of the head needs more.
            #[test]
            fn any_host_header(host in "[ -~]{0,80}", port in proptest::option::of(any::<u16>())) {
                let value = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
                let head = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
                for end in 0..head.len() {
                    prop_assert_eq!(parse(&head.as_bytes()[..end]).unwrap(), Parse::Incomplete);
                }
                let want = HostName::parse(strip_port(value.trim().as_bytes()));
                match parse(head.as_bytes()) {
                    Ok(Parse::Complete(name)) => prop_assert_eq!(name, want),
                    other => prop_assert!(false, "{other:?} for {head:?}"),
                }
            }
        }
    }
}

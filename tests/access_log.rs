//! The text access log as a log shipper reads it: logfmt, one `key=value` per
//! field, values that can hold spaces quoted, and a reason on every failed
//! connection.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The fields of a text access-log line, read as logfmt: `key=value` pairs
/// separated by spaces, a value either bare (no space, no quote) or in double
/// quotes with `\"` and `\\` escaped. Panics on anything else, so a value with
/// an unquoted space fails the test.
fn logfmt(line: &str) -> BTreeMap<String, String> {
    let (_, fields) = line
        .split_once("sniroute::access: ")
        .unwrap_or_else(|| panic!("not an access line: {line}"));
    let mut out = BTreeMap::new();
    let mut rest = fields.trim_end();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("no `=` in {rest:?} of {line}"));
        assert!(
            !key.is_empty() && !key.contains([' ', '"']),
            "bad key {key:?} in {line}"
        );
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        let (_, c) = chars.next().expect("escape at the end");
                        value.push(c);
                    }
                    Some((i, '"')) => break i + 1,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated quote in {line}"),
                }
            };
            (value, &quoted[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let value = &after[..end];
            assert!(!value.contains('"'), "stray quote in {value:?} of {line}");
            (value.to_owned(), &after[end..])
        };
        assert!(
            after.is_empty() || after.starts_with(' '),
            "value not followed by a space in {line}"
        );
        out.insert(key.to_owned(), value);
        rest = after.trim_start();
    }
    out
}

fn config(listen: SocketAddr, server: SocketAddr) -> String {
    format!(
        r#"
[[listeners]]
bind = "{listen}"
protocol = "tls"
[listeners.routes]
'~^curl\.example\.com$' = "edge pool"
[upstreams."edge pool"]
servers = ["{server}"]
"#
    )
}

#[test]
fn logfmt_reader_rejects_unquoted_spaces() {
    let ok = logfmt(r#"x sniroute::access: a=1 b="two words" c="q\"d""#);
    assert_eq!(ok["b"], "two words");
    assert_eq!(ok["c"], "q\"d");
    let bad = std::panic::catch_unwind(|| logfmt("x sniroute::access: a=1 b=two words"));
    assert!(bad.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_with_spaces_are_quoted_and_errors_carry_a_reason() {
    // The server answers, then resets the connection: upstream_error.
    let dies = Upstream::start(
        "127.0.0.2",
        "dies",
        Mode::Die {
            bytes: 1000,
            reset: true,
        },
    )
    .await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&config(listen, dies.addr));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    let _ = read_all(&mut c).await;
    drop(c);
    let lines = proxy.wait_access(1);
    let fields = logfmt(&lines[0]);
    assert_eq!(fields["outcome"], "upstream_error", "{}", lines[0]);
    assert_eq!(fields["pool"], "edge pool", "{}", lines[0]);
    assert_eq!(fields["route"], r"~^curl\.example\.com$", "{}", lines[0]);
    assert!(
        fields["reason"].contains("the server") && fields["reason"].contains("reset"),
        "upstream_error without its reason: {}",
        lines[0]
    );

    // The client resets mid-transfer: client_error.
    let holds = Upstream::start("127.0.0.2", "holds", Mode::Echo).await;
    let listen = free_addr("127.0.0.1");
    let proxy = Sniroute::start(&config(listen, holds.addr));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(CURL_HELLO).await.unwrap();
    let mut echoed = vec![0; CURL_HELLO.len()];
    tokio::time::timeout(DEADLINE, c.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    // Unread bytes in its receive queue make the close a reset.
    c.write_all(b"more").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.set_zero_linger().unwrap();
    drop(c);
    let lines = proxy.wait_access(1);
    let fields = logfmt(&lines[0]);
    assert_eq!(fields["outcome"], "client_error", "{}", lines[0]);
    assert!(
        fields["reason"].contains("the client"),
        "client_error without its reason: {}",
        lines[0]
    );
}

//! Criterion micro-benchmarks of the per-connection hot path, one function each:
//! SNI extraction from captured ClientHellos and from a QUIC client Initial,
//! `Host` extraction from a request head, route lookup in tables of 10 to
//! 10,000 routes, and a least_conn pick.
//!
//! `cargo bench --bench micro` (add a filter such as `-- route` for one group).
//! These time the library functions alone; the side-by-side load test of the
//! whole proxy is `benches/compare`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use sniroute::name::HostName;
use sniroute::peek::{self, Parse};
use sniroute::pool::spec::{Host, ServerSpec, DNS_REFRESH};
use sniroute::pool::{Balance, HealthPolicy, PoolSpec, Registry};
use sniroute::quic::initial::ClientInitials;
use sniroute::route::RouterBuilder;

#[path = "support/hellos.rs"]
mod hellos;

/// A request head as a browser sends it for a first page load.
const REQUEST_HEAD: &[u8] = b"GET /dashboard/?tab=overview HTTP/1.1\r\n\
Host: rancher.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cache-Control: max-age=0\r\n\
Connection: keep-alive\r\n\
Cookie: R_SESS=token-abcdef0123456789; R_LOCALE=en-us\r\n\
Upgrade-Insecure-Requests: 1\r\n\r\n";

fn sni(c: &mut Criterion) {
    let split = hellos::split_into_records(hellos::CURL, 3);
    let cases: [(&str, &[u8], &str); 3] = [
        ("chromium_pq_2023B", hellos::CHROMIUM, hellos::CHROMIUM_SNI),
        ("curl_517B", hellos::CURL, hellos::CURL_SNI),
        ("curl_3_records", &split, hellos::CURL_SNI),
    ];
    let mut group = c.benchmark_group("sni");
    for (label, hello, want) in cases {
        // Benchmark only what parses to the expected name.
        let name = HostName::parse(want.as_bytes()).expect("fixture SNI is a valid name");
        assert_eq!(
            peek::tls::parse(hello).expect("fixture parses"),
            Parse::Complete(Some(name))
        );
        group.throughput(Throughput::Bytes(hello.len() as u64));
        group.bench_function(label, |b| b.iter(|| peek::tls::parse(black_box(hello))));
    }
    // A hello as it reaches a connection over the internet: Chromium's, in 4
    // records, read one 1,460-byte segment at a time and parsed after every
    // read; once from scratch each time (as before), once resuming.
    let split = hellos::split_into_records(hellos::CHROMIUM, 4);
    let ends: Vec<usize> = (1..)
        .map(|i| (i * 1460).min(split.len()))
        .take_while(|&end| end < split.len())
        .chain([split.len()])
        .collect();
    group.throughput(Throughput::Bytes(split.len() as u64));
    group.bench_function("chromium_4_records_per_segment_from_scratch", |b| {
        b.iter(|| {
            for &end in &ends {
                black_box(peek::tls::parse(black_box(&split[..end])).ok());
            }
        })
    });
    group.bench_function("chromium_4_records_per_segment_resumed", |b| {
        b.iter(|| {
            let mut hello = peek::tls::Hello::default();
            for &end in &ends {
                black_box(hello.parse(black_box(&split[..end])).ok());
            }
        })
    });
    group.finish();
}

/// RFC 9001 Appendix A.2's client Initial (1,200 bytes, SNI `example.com`).
const RFC9001_CLIENT_INITIAL: &[u8] =
    include_bytes!("../tests/fuzz/seeds/quic_initial/rfc9001_client_initial");

/// A new QUIC flow's first datagram, as the forwarder reads it: key
/// derivation, header protection, decryption, frames and the hello.
fn quic(c: &mut Criterion) {
    let packet = RFC9001_CLIENT_INITIAL;
    let name = HostName::parse(b"example.com").expect("valid name");
    assert_eq!(
        ClientInitials::new(16384)
            .feed(packet)
            .expect("the RFC packet opens"),
        Parse::Complete(Some(name))
    );
    let mut group = c.benchmark_group("quic");
    group.throughput(Throughput::Bytes(packet.len() as u64));
    group.bench_function("rfc9001_client_initial", |b| {
        b.iter(|| ClientInitials::new(16384).feed(black_box(packet)))
    });
    group.finish();
}

fn host(c: &mut Criterion) {
    let name = HostName::parse(b"rancher.example.com").expect("valid name");
    assert_eq!(
        peek::http::parse(REQUEST_HEAD).expect("head parses"),
        Parse::Complete(Some(name))
    );
    let mut group = c.benchmark_group("host");
    group.throughput(Throughput::Bytes(REQUEST_HEAD.len() as u64));
    group.bench_function("browser_head_10_headers", |b| {
        b.iter(|| peek::http::parse(black_box(REQUEST_HEAD)))
    });
    group.finish();
}

/// `n` routes, half exact names and half wildcards, as a cluster's ingress list
/// would look: `svcI.nsJ.example.com` and `*.appsI.example.com`.
fn router(n: usize) -> sniroute::route::Router<usize> {
    let mut builder = RouterBuilder::default();
    for i in 0..n / 2 {
        builder
            .add(&format!("svc{i}.ns{}.example.com", i % 97), i)
            .expect("valid exact route");
        builder
            .add(&format!("*.apps{i}.example.com"), n + i)
            .expect("valid wildcard route");
    }
    builder.build(None)
}

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for n in [10usize, 1_000, 10_000] {
        let router = router(n);
        let middle = n / 4;
        let exact =
            HostName::parse(format!("svc{middle}.ns{}.example.com", middle % 97).as_bytes())
                .expect("valid name");
        let wildcard = HostName::parse(format!("web.team.apps{middle}.example.com").as_bytes())
            .expect("valid name");
        let miss = HostName::parse(b"www.not-routed.example.org").expect("valid name");
        assert!(router.route(Some(&exact)).is_some());
        assert!(router.route(Some(&wildcard)).is_some());
        assert!(router.route(Some(&miss)).is_none());
        for (label, name) in [("exact", &exact), ("wildcard", &wildcard), ("miss", &miss)] {
            group.bench_with_input(BenchmarkId::new(label, n), name, |b, name| {
                b.iter(|| router.route(Some(black_box(name))).map(|r| r.target))
            });
        }
    }
    group.finish();
}

/// A least_conn pool of `n` servers (weights 1 to 3), loaded unevenly by held
/// leases, so a pick compares real counts rather than a field of zeros.
fn least_conn(c: &mut Criterion) {
    let mut group = c.benchmark_group("least_conn_pick");
    for n in [3usize, 100] {
        let servers = (0..n)
            .map(|i| {
                let addr = format!("127.0.0.2:{}", 10_000 + i)
                    .parse()
                    .expect("valid addr");
                ServerSpec {
                    host: Host::Addr(addr),
                    weight: 1 + (i % 3) as u32,
                    backup: false,
                    drain: false,
                    addrs: vec![addr],
                }
            })
            .collect();
        let pool = Registry::default().pool(PoolSpec {
            name: Arc::from("bench"),
            balance: Balance::LeastConn,
            health: HealthPolicy::default(),
            check: None,
            dns_refresh: DNS_REFRESH,
            proxy_protocol: None,
            servers,
        });
        let now = Instant::now();
        let held: Vec<_> = (0..n * 7)
            .filter_map(|_| pool.next_server(&mut pool.attempts(), now))
            .collect();
        assert_eq!(held.len(), n * 7);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                // What one connection does: fresh attempts, a pick, the lease dropped.
                let mut attempts = pool.attempts();
                pool.next_server(&mut attempts, now)
                    .map(|lease| lease.server().addr)
            })
        });
        drop(held);
    }
    group.finish();
}

criterion_group!(benches, sni, quic, host, route, least_conn);
criterion_main!(benches);

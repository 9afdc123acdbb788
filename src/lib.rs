//! sniroute: a Layer-4 load balancer that routes TLS by SNI and HTTP by `Host`
//! (and passes plain TCP to one pool) without terminating anything.
//!
//! The data path, one module per step:
//!
//! 1. [`listener`] accepts, within `max_connections`, and spawns one task per client;
//! 2. [`proxy`] handles it in named steps: admit ([`access`] lists, the
//!    per-client limit, after a [`proxy_protocol`] header where one is taken),
//!    detect, route, forward;
//! 3. [`peek`] reads the ClientHello or request head into a bounded buffer and
//!    parses the name ([`name::HostName`]);
//! 4. [`route`] maps the name to a pool (exact, `*.wildcard`, `~regex`, default);
//! 5. [`pool`] picks a server (least_conn / round_robin, backups, passive health);
//! 6. [`connect`] connects, moving on to the next server at once on failure;
//! 7. [`relay`] replays the peeked bytes and copies both ways until both close.
//!
//! A `quic` listener takes a path of its own, in [`quic`]: one task per UDP
//! bind reads each new client's Initial packets ([`quic::initial`] decrypts
//! them and finds the ClientHello, read by [`peek::tls`]), routes the flow as
//! above ([`route`], [`pool`]) and forwards its datagrams both ways.
//!
//! [`server`] runs the listeners, [`reload`], binary [`upgrade`]s (with the
//! sockets [`handover`] carries from one process to the next) and the shutdown; [`config`] turns
//! the TOML into the immutable tables all of this reads. [`import`] translates
//! an nginx `stream {}` config into sniroute's (`sniroute import-nginx`);
//! [`acme`] computes an ACME account key's thumbprint (`sniroute
//! acme-thumbprint`).
//! [`metrics`] serves the metrics and, next to them, [`status`]: the status
//! page and `/healthz`.
//! The shared vocabulary sits below all of them, importing none: [`outcome`],
//! [`throttle`], [`connections`], [`histogram`], [`shutdown`], and
//! [`resources`], which tells local shortages (file descriptors, memory,
//! ports) from peers' failures.
//!
//! This library is the binary's inside, not an API: its documentation is built
//! with private items (`cargo doc --document-private-items`), where module docs
//! may link to the private parts they are made of.
#![allow(rustdoc::private_intra_doc_links)]

pub mod access;
pub mod acme;
pub mod config;
pub mod connect;
pub mod connections;
pub mod explain;
pub mod handover;
pub mod histogram;
pub mod import;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod name;
pub mod outcome;
pub mod peek;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod quic;
pub mod relay;
pub mod reload;
pub mod resources;
pub mod route;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod systemd;
pub mod throttle;
pub mod upgrade;

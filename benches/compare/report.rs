//! Results: the samples of every run, their medians, the table of ratios, the
//! JSON file and the SVG chart.

use std::collections::BTreeMap;
use std::path::Path;

use crate::peers::Peer;

/// One row of the table.
pub struct Metric {
    pub key: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

const fn metric(
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    higher_is_better: bool,
) -> Metric {
    Metric {
        key,
        title,
        unit,
        higher_is_better,
    }
}

/// Every metric, in table order.
pub const METRICS: &[Metric] = &[
    metric(
        "tls_conn_rate",
        "new TLS connections (full handshake)",
        "conn/s",
        true,
    ),
    metric(
        "replay_conn_rate",
        "new connections, replayed hello (proxy alone)",
        "conn/s",
        true,
    ),
    metric(
        "bulk",
        "bulk download, 4 kept-alive connections",
        "MB/s",
        true,
    ),
    metric(
        "tls_bulk",
        "TLS-bound bulk download, 8 TLS connections",
        "MB/s",
        true,
    ),
    metric(
        "quic_bulk",
        "QUIC bulk download, 4 QUIC connections",
        "MB/s",
        true,
    ),
    metric(
        "tls_latency_p50",
        "latency p50, new TLS connection at fixed rate",
        "us",
        false,
    ),
    metric(
        "tls_latency_p99",
        "latency p99, new TLS connection at fixed rate",
        "us",
        false,
    ),
    metric(
        "keepalive_latency_p50",
        "latency p50, 1 KB on kept-alive connection",
        "us",
        false,
    ),
    metric(
        "keepalive_latency_p99",
        "latency p99, 1 KB on kept-alive connection",
        "us",
        false,
    ),
    metric(
        "quic_handshake_ms",
        "QUIC handshake, new connection (QUIC bulk)",
        "ms",
        false,
    ),
    metric(
        "idle_rss_per_conn",
        "RSS per idle proxied connection",
        "KiB",
        false,
    ),
    metric(
        "cpu_per_gb",
        "proxy CPU per GB relayed (bulk)",
        "CPU ms",
        false,
    ),
    metric(
        "cpu_per_gb_tls_bulk",
        "proxy CPU per GB relayed (TLS-bound bulk)",
        "CPU ms",
        false,
    ),
    metric(
        "cpu_per_gb_quic_bulk",
        "proxy CPU per GB relayed (QUIC bulk)",
        "CPU ms",
        false,
    ),
    metric(
        "tls_bulk_wakeups_per_mb",
        "proxy wake-ups per MB (TLS-bound bulk)",
        "1/MB",
        false,
    ),
    metric(
        "cpu_per_1k_conns",
        "proxy CPU per 1,000 connections (replay)",
        "CPU ms",
        false,
    ),
    metric(
        "cpu_per_1k_tls_conns",
        "proxy CPU per 1,000 connections (TLS)",
        "CPU ms",
        false,
    ),
    metric(
        "machine_cpu_per_gb",
        "whole-machine CPU per GB relayed (bulk)",
        "CPU ms",
        false,
    ),
    metric(
        "machine_cpu_per_gb_tls_bulk",
        "whole-machine CPU per GB (TLS-bound bulk)",
        "CPU ms",
        false,
    ),
    metric(
        "machine_cpu_per_gb_quic_bulk",
        "whole-machine CPU per GB (QUIC bulk)",
        "CPU ms",
        false,
    ),
    metric(
        "machine_cpu_per_1k_conns",
        "whole-machine CPU per 1,000 connections (replay)",
        "CPU ms",
        false,
    ),
    metric(
        "machine_cpu_per_1k_tls_conns",
        "whole-machine CPU per 1,000 connections (TLS)",
        "CPU ms",
        false,
    ),
    // The route table (sniroute alone): 11,100 routes against 3, for a name
    // that falls through every one of them to the default.
    metric(
        "routes_cpu_per_1k_small",
        "proxy CPU per 1,000 conns, 3 routes",
        "CPU ms",
        false,
    ),
    metric(
        "routes_cpu_per_1k_big",
        "proxy CPU per 1,000 conns, 11,100 routes",
        "CPU ms",
        false,
    ),
    metric(
        "routes_cpu_ratio",
        "proxy CPU per conn, 11,100 routes / 3 routes",
        "ratio",
        false,
    ),
    metric(
        "routes_machine_cpu_per_1k_small",
        "whole-machine CPU per 1k conns, 3 routes",
        "CPU ms",
        false,
    ),
    metric(
        "routes_machine_cpu_per_1k_big",
        "whole-machine CPU per 1k conns, 11,100 routes",
        "CPU ms",
        false,
    ),
    metric(
        "routes_check_ms",
        "--check of 11,100 routes, wall time",
        "ms",
        false,
    ),
    metric(
        "routes_reload_ms",
        "11,100 routes: rewrite to reload in effect",
        "ms",
        false,
    ),
    metric(
        "routes_reload_sighup_ms",
        "11,100 routes: rewrite+SIGHUP to in effect",
        "ms",
        false,
    ),
    // Diagnostics: how busy each core was, to tell who the bottleneck was.
    metric(
        "proxy_busy_replay",
        "proxy core busy during replay connections",
        "%",
        false,
    ),
    metric(
        "proxy_busy_tls",
        "proxy core busy during TLS connections",
        "%",
        false,
    ),
    metric("proxy_busy_bulk", "proxy core busy during bulk", "%", false),
    metric(
        "proxy_busy_tls_bulk",
        "proxy core busy during TLS-bound bulk",
        "%",
        false,
    ),
    metric(
        "proxy_busy_quic_bulk",
        "proxy core busy during QUIC bulk",
        "%",
        false,
    ),
    metric(
        "loadgen_busy_replay",
        "load-generator core busy during replay connections",
        "%",
        false,
    ),
    metric(
        "loadgen_busy_tls",
        "load-generator core busy during TLS connections",
        "%",
        false,
    ),
    metric(
        "loadgen_busy_bulk",
        "load-generator core busy during bulk",
        "%",
        false,
    ),
    metric(
        "loadgen_busy_tls_bulk",
        "load-generator core busy during TLS-bound bulk",
        "%",
        false,
    ),
    metric(
        "loadgen_busy_quic_bulk",
        "load-generator core busy during QUIC bulk",
        "%",
        false,
    ),
    metric(
        "other_busy_replay",
        "rest of the machine during replay connections",
        "%",
        false,
    ),
    metric(
        "other_busy_tls",
        "rest of the machine during TLS connections",
        "%",
        false,
    ),
    metric(
        "other_busy_bulk",
        "rest of the machine during bulk",
        "%",
        false,
    ),
    metric(
        "other_busy_tls_bulk",
        "rest of the machine during TLS-bound bulk",
        "%",
        false,
    ),
    metric(
        "other_busy_quic_bulk",
        "rest of the machine during QUIC bulk",
        "%",
        false,
    ),
    // Diagnostics: the proxy's system calls in TLS-bound bulk (perf), to see
    // what each does per wake-up. Bytes per call count a spliced byte twice
    // (into the pipe, out of it) and a read byte once.
    metric(
        "syscalls_window_mb_per_s_tls_bulk",
        "TLS-bound bulk while perf counted",
        "MB/s",
        true,
    ),
    metric(
        "syscalls_per_mb_tls_bulk",
        "system calls per MB (TLS-bound bulk)",
        "1/MB",
        false,
    ),
    metric(
        "syscalls_reads_per_mb_tls_bulk",
        "read-family calls per MB (TLS-bound bulk)",
        "1/MB",
        false,
    ),
    metric(
        "syscalls_splices_per_mb_tls_bulk",
        "splice calls per MB (TLS-bound bulk)",
        "1/MB",
        false,
    ),
    metric(
        "syscalls_moves_per_wakeup_tls_bulk",
        "splice + read-family calls per wake-up (TLS bulk)",
        "calls",
        false,
    ),
    metric(
        "syscalls_kib_per_splice_tls_bulk",
        "bytes per splice that moved any (TLS bulk)",
        "KiB",
        false,
    ),
    metric(
        "syscalls_kib_per_read_tls_bulk",
        "bytes per read, when no splice (TLS bulk)",
        "KiB",
        false,
    ),
];

/// Metrics that are diagnostics, not scores: no ratios, no chart.
fn is_diagnostic(key: &str) -> bool {
    key.contains("_busy_") || key.starts_with("syscalls_")
}

/// Samples per metric and peer, one per repetition.
#[derive(Default)]
pub struct Results {
    samples: BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>,
    /// Failed operations per peer and case, summed over repetitions.
    pub errors: BTreeMap<String, u64>,
    /// Measurements kept although other work disturbed them (case/peer).
    pub noisy: Vec<String>,
}

impl Results {
    pub fn add(&mut self, key: &'static str, peer: Peer, value: f64) {
        assert!(METRICS.iter().any(|m| m.key == key), "unknown metric {key}");
        if value.is_finite() {
            self.samples
                .entry(key)
                .or_default()
                .entry(peer.name())
                .or_default()
                .push(value);
        }
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: Results) {
        for (key, peers) in other.samples {
            for (peer, values) in peers {
                self.samples
                    .entry(key)
                    .or_default()
                    .entry(peer)
                    .or_default()
                    .extend(values);
            }
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.noisy.extend(other.noisy);
    }

    pub fn add_errors(&mut self, case: &str, peer: Peer, n: u64) {
        *self
            .errors
            .entry(format!("{case}/{}", peer.name()))
            .or_default() += n;
    }

    pub fn median(&self, key: &str, peer: Peer) -> Option<f64> {
        let mut v = self.samples.get(key)?.get(peer.name())?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        })
    }

    fn ratio(&self, key: &str, peer: Peer) -> Option<f64> {
        let ours = self.median(key, Peer::Sniroute)?;
        let theirs = self.median(key, peer)?;
        (theirs > 0.0).then(|| ours / theirs)
    }

    /// The table: medians per peer, then sniroute ÷ each other peer.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<50} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "median of runs",
            "unit",
            "direct",
            "sniroute",
            "nginx",
            "haproxy",
            "sr/nginx",
            "sr/hapx",
            "sr/direct"
        ));
        for (i, m) in METRICS.iter().enumerate() {
            if i > 0 && is_diagnostic(m.key) && !is_diagnostic(METRICS[i - 1].key) {
                out.push_str("diagnostics (not scores):\n");
            }
            let cell = |v: Option<f64>| v.map(fmt_value).unwrap_or_else(|| "-".into());
            let ratio = |p: Peer| {
                if is_diagnostic(m.key) {
                    String::new()
                } else {
                    self.ratio(m.key, p)
                        .map(|r| format!("{r:.2}"))
                        .unwrap_or_else(|| "-".into())
                }
            };
            let title = format!(
                "{} {}",
                m.title,
                if is_diagnostic(m.key) {
                    ""
                } else if m.higher_is_better {
                    "(+)"
                } else {
                    "(-)"
                }
            );
            out.push_str(&format!(
                "{:<50} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                title.trim_end(),
                m.unit,
                cell(self.median(m.key, Peer::Direct)),
                cell(self.median(m.key, Peer::Sniroute)),
                cell(self.median(m.key, Peer::Nginx)),
                cell(self.median(m.key, Peer::Haproxy)),
                ratio(Peer::Nginx),
                ratio(Peer::Haproxy),
                ratio(Peer::Direct),
            ));
        }
        out.push_str(
            "(+) higher is better, (-) lower is better; sr/x = sniroute median / x median.\n",
        );
        out
    }

    /// The same as a Markdown table, for the README.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| metric | unit | direct | sniroute | nginx | haproxy | sniroute / nginx | sniroute / haproxy | sniroute / direct |\n\
             |---|---|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for m in METRICS.iter().filter(|m| !is_diagnostic(m.key)) {
            let cell = |v: Option<f64>| v.map(fmt_value).unwrap_or_else(|| "-".into());
            let ratio = |p: Peer| {
                self.ratio(m.key, p)
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "-".into())
            };
            out.push_str(&format!(
                "| {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                m.title,
                if m.higher_is_better {
                    "higher is better"
                } else {
                    "lower is better"
                },
                m.unit,
                cell(self.median(m.key, Peer::Direct)),
                cell(self.median(m.key, Peer::Sniroute)),
                cell(self.median(m.key, Peer::Nginx)),
                cell(self.median(m.key, Peer::Haproxy)),
                ratio(Peer::Nginx),
                ratio(Peer::Haproxy),
                ratio(Peer::Direct),
            ));
        }
        out.push_str(
            "\nWhere the CPU went (diagnostics, % of one core; the proxy runs alone on one core, \
             the load generator and the servers on the other):\n\n\
             | during | core | direct | sniroute | nginx | haproxy |\n|---|---|--:|--:|--:|--:|\n",
        );
        for m in METRICS.iter().filter(|m| m.key.contains("_busy_")) {
            let cell = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
            let (core, during) = m.title.split_once(" during ").unwrap_or((m.title, ""));
            out.push_str(&format!(
                "| {during} | {core} | {} | {} | {} | {} |\n",
                cell(self.median(m.key, Peer::Direct)),
                cell(self.median(m.key, Peer::Sniroute)),
                cell(self.median(m.key, Peer::Nginx)),
                cell(self.median(m.key, Peer::Haproxy)),
            ));
        }
        out.push_str(
            "\nThe proxy's system calls during TLS-bound bulk (diagnostics, counted by perf \
             in a window of their own):\n\n\
             | what | unit | sniroute | nginx | haproxy |\n|---|---|--:|--:|--:|\n",
        );
        for m in METRICS.iter().filter(|m| m.key.starts_with("syscalls_")) {
            let cell = |v: Option<f64>| v.map(fmt_value).unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                m.title,
                m.unit,
                cell(self.median(m.key, Peer::Sniroute)),
                cell(self.median(m.key, Peer::Nginx)),
                cell(self.median(m.key, Peer::Haproxy)),
            ));
        }
        out
    }

    pub fn json(&self, header: serde_json::Value) -> serde_json::Value {
        let metrics: Vec<_> = METRICS
            .iter()
            .map(|m| {
                let peers: serde_json::Map<_, _> = Peer::ALL
                    .iter()
                    .filter_map(|&p| {
                        let runs = self.samples.get(m.key)?.get(p.name())?;
                        Some((
                            p.name().to_owned(),
                            serde_json::json!({ "runs": runs, "median": self.median(m.key, p) }),
                        ))
                    })
                    .collect();
                serde_json::json!({
                    "key": m.key,
                    "title": m.title,
                    "unit": m.unit,
                    "higher_is_better": m.higher_is_better,
                    "diagnostic": is_diagnostic(m.key),
                    "peers": peers,
                    "ratios": {
                        "sniroute/nginx": self.ratio(m.key, Peer::Nginx),
                        "sniroute/haproxy": self.ratio(m.key, Peer::Haproxy),
                        "sniroute/direct": self.ratio(m.key, Peer::Direct),
                    },
                })
            })
            .collect();
        serde_json::json!({
            "run": header,
            "metrics": metrics,
            "errors": self.errors,
            "noisy_measurements": self.noisy,
        })
    }

    /// One bar panel per scored metric (absolute medians, one bar per peer).
    pub fn svg(&self, path: &Path, subtitle: &str) -> Result<(), Box<dyn std::error::Error>> {
        use plotters::prelude::*;
        use plotters::style::text_anchor::{HPos, Pos, VPos};

        let shown: Vec<&Metric> = METRICS
            .iter()
            .filter(|m| !is_diagnostic(m.key))
            .filter(|m| Peer::ALL.iter().any(|&p| self.median(m.key, p).is_some()))
            .collect();
        let cols = 3;
        let rows = shown.len().div_ceil(cols).max(1);
        let (width, height) = (1200u32, 70 + 250 * rows as u32);
        let root = SVGBackend::new(path, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (head, body) = root.split_vertically(70);
        head.draw(&Text::new(
            "sniroute vs nginx vs HAProxy vs direct (medians)",
            (20, 12),
            ("sans-serif", 22).into_font(),
        ))?;
        head.draw(&Text::new(
            subtitle.to_owned(),
            (20, 42),
            ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
        ))?;
        let colors = |p: Peer| match p {
            Peer::Direct => RGBColor(160, 160, 160),
            Peer::Sniroute => RGBColor(226, 112, 30),
            Peer::Nginx => RGBColor(0, 150, 57),
            Peer::Haproxy => RGBColor(40, 100, 200),
        };
        for (area, m) in body.split_evenly((rows, cols)).iter().zip(&shown) {
            let bars: Vec<(Peer, f64)> = Peer::ALL
                .iter()
                .filter_map(|&p| self.median(m.key, p).map(|v| (p, v)))
                .collect();
            let top = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9) * 1.25;
            let caption = format!(
                "{} [{}, {}]",
                m.title,
                m.unit,
                if m.higher_is_better {
                    "higher is better"
                } else {
                    "lower is better"
                }
            );
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 12))
                .margin(8)
                .x_label_area_size(22)
                .y_label_area_size(52)
                .build_cartesian_2d((0..bars.len() as i32 - 1).into_segmented(), 0f64..top)?;
            let names: Vec<&str> = bars.iter().map(|b| b.0.name()).collect();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .light_line_style(WHITE)
                .y_labels(5)
                .y_label_formatter(&|v| fmt_value(*v))
                .x_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => names
                        .get(*i as usize)
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    _ => String::new(),
                })
                .draw()?;
            for (i, (peer, value)) in bars.iter().enumerate() {
                let i = i as i32;
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *value),
                    ],
                    colors(*peer).filled(),
                );
                bar.set_margin(0, 0, 10, 10);
                chart.draw_series(std::iter::once(bar))?;
                chart.draw_series(std::iter::once(Text::new(
                    fmt_value(*value),
                    (SegmentValue::CenterOf(i), *value + top * 0.02),
                    ("sans-serif", 11)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )))?;
            }
        }
        root.present()?;
        Ok(())
    }
}

/// 12,345 / 123.4 / 1.23 / 0.012: as many digits as a reader needs.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 1000.0 {
        let s = format!("{:.0}", v);
        let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

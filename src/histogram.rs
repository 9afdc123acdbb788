//! How long connections lasted, per pool: a histogram updated without a lock.
//!
//! Every proxied connection adds one observation at its end. prometheus-client's
//! histogram takes a mutex for that, which on many cores would be a lock shared
//! by every connection of a pool. Here each bucket is an atomic counter and the
//! sum is kept in whole microseconds. A scrape that races an observation may see
//! it in its bucket and not yet in the sum; rates over scrapes absorb that, and
//! the count is taken from the buckets, so `_count` always equals the `+Inf`
//! bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds of the buckets in microseconds: 5 ms to about 6 h, ×4 each.
const BOUNDS_US: [u64; 12] = [
    5_000,
    20_000,
    80_000,
    320_000,
    1_280_000,
    5_120_000,
    20_480_000,
    81_920_000,
    327_680_000,
    1_310_720_000,
    5_242_880_000,
    20_971_520_000,
];

/// Connection durations of one pool; shared across config generations.
#[derive(Debug, Default)]
pub struct Durations {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Durations {
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl EncodeMetric for Durations {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = BOUNDS_US.iter().map(|&us| us as f64 / 1e6);
        let buckets: Vec<(f64, u64)> = bounds
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|&(_, n)| n).sum();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(d: Durations) -> String {
        use prometheus_client::encoding::text::encode;
        use prometheus_client::registry::Registry;
        let mut registry = Registry::default();
        registry.register("d", "durations", d);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn bounds_are_inclusive_and_the_sum_is_in_seconds() {
        let d = Durations::default();
        d.observe(Duration::from_millis(5)); // le 0.005
        d.observe(Duration::from_micros(5_001)); // le 0.02
        d.observe(Duration::from_secs(100_000)); // +Inf
        let text = encoded(d);
        assert!(text.contains("d_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("d_bucket{le=\"0.02\"} 2\n"), "{text}");
        assert!(text.contains("d_bucket{le=\"20971.52\"} 2\n"), "{text}");
        assert!(text.contains("d_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("d_count 3\n"), "{text}");
        assert!(text.contains("d_sum 100000.010001\n"), "{text}");
    }
}

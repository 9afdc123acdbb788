//! A log message that can repeat for every client, let through at most once
//! every few seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Lets a message that can repeat for every client through at most once every
/// [`Throttle::INTERVAL`], and counts the occurrences it held back. While a
/// whole pool is down, or clients hammer a limit, the log stays readable and
/// does not become the bottleneck; the metrics and the access log still count
/// every connection.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Seconds after [`THROTTLE_EPOCH`] of the last message let through, plus
    /// the interval (so that 0 means "never").
    last: AtomicU64,
    held_back: AtomicU64,
}

static THROTTLE_EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Throttle {
    pub const INTERVAL: Duration = Duration::from_secs(5);

    /// For statics: the same as `default()`.
    pub const fn new() -> Throttle {
        Throttle {
            last: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if this occurrence should be logged, `n` being how many were
    /// held back since the last one logged; `None` if it is held back.
    pub fn admit(&self) -> Option<u64> {
        let interval = Self::INTERVAL.as_secs();
        let now = THROTTLE_EPOCH.elapsed().as_secs() + interval;
        let last = self.last.load(Ordering::Relaxed);
        let admitted = now >= last + interval
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if admitted {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_the_first_through_and_counts_the_rest() {
        let t = Throttle::default();
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        // As if the interval had passed.
        t.last
            .fetch_sub(Throttle::INTERVAL.as_secs(), Ordering::Relaxed);
        assert_eq!(t.admit(), Some(2));
        assert_eq!(t.admit(), None);
    }
}

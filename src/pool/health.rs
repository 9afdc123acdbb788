//! Server health: passive, with nginx's `max_fails` / `fail_timeout`
//! semantics, and active, from probes ([`ProbeHealth`]).
//!
//! `max_fails` failed connects within `fail_timeout` mark a server down for
//! `fail_timeout`. When that time has passed the server is tried again; one more
//! failure marks it down again at once (nginx keeps the failure count until a
//! success), one success clears everything. `max_fails = 0` never marks down.
//! Time is always passed in, so tests drive the clock by hand.
//!
//! When `fail_timeout` has passed, one client at a time gets to try the server
//! again, as in nginx: the first to [`claim_retry`](SharedHealth::claim_retry)
//! pushes the down period out by another `fail_timeout`, so concurrent clients
//! keep going to servers known to be up instead of all waiting on a connect
//! that may time out. Its success clears the record; its failure marks the
//! server down again.
//!
//! [`SharedHealth`] is what connections share: every pick asks each candidate
//! whether it is up, and every successful connect reports back. Those two read
//! atomics only; the lock is taken on a failed connect, and by a success only
//! when there is a failure on record to clear.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A pool's health settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

impl Default for HealthPolicy {
    /// nginx's defaults.
    fn default() -> Self {
        HealthPolicy {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        }
    }
}

/// What a failure did to the server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    StillUp,
    /// Was up, is down now: worth one log line.
    MarkedDown,
    /// Was down already (tried because nothing better was left); down longer now.
    StillDown,
}

/// One server's failure window.
#[derive(Debug, Default, Clone)]
pub struct Health {
    fails: u32,
    last_fail: Option<Instant>,
    down_until: Option<Instant>,
}

impl Health {
    /// Whether the balancer may pick this server at `now`.
    pub fn is_up(&self, now: Instant) -> bool {
        self.down_until.is_none_or(|until| now >= until)
    }

    pub fn record_failure(&mut self, policy: HealthPolicy, now: Instant) -> Transition {
        if policy.max_fails == 0 {
            return Transition::StillUp;
        }
        let was_up = self.is_up(now);
        let window_over = self
            .last_fail
            .is_none_or(|t| now.saturating_duration_since(t) > policy.fail_timeout);
        // Once marked down, the count is kept until a success (see module docs).
        if window_over && self.down_until.is_none() {
            self.fails = 0;
        }
        self.fails = self.fails.saturating_add(1);
        self.last_fail = Some(now);
        if self.fails >= policy.max_fails {
            self.down_until = Some(now + policy.fail_timeout);
            if was_up {
                Transition::MarkedDown
            } else {
                Transition::StillDown
            }
        } else {
            Transition::StillUp
        }
    }

    /// A successful connect: the server is healthy again. Returns whether it was down.
    pub fn record_success(&mut self) -> bool {
        let was_down = self.down_until.is_some();
        *self = Health::default();
        was_down
    }

    /// No failure on record since the last success.
    fn is_clean(&self) -> bool {
        self.fails == 0 && self.down_until.is_none()
    }
}

/// One server's [`Health`], shared by every connection to it.
///
/// The state itself sits behind a lock; next to it, an atomic copy of what the
/// per-connection path needs (until when the server is down, and whether there
/// is anything to clear), written under the lock after every change.
#[derive(Debug)]
pub struct SharedHealth {
    state: Mutex<Health>,
    /// `down_until` in nanoseconds after `epoch` (at least 1); 0 when not down.
    down_until: AtomicU64,
    clean: AtomicBool,
    epoch: Instant,
}

impl Default for SharedHealth {
    fn default() -> Self {
        SharedHealth {
            state: Mutex::default(),
            down_until: AtomicU64::new(0),
            clean: AtomicBool::new(true),
            epoch: Instant::now(),
        }
    }
}

impl SharedHealth {
    /// Whether the balancer may pick this server at `now`. Lock-free.
    pub fn is_up(&self, now: Instant) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        until == 0 || self.nanos(now) >= until
    }

    pub fn record_failure(&self, policy: HealthPolicy, now: Instant) -> Transition {
        let mut state = self.lock();
        let transition = state.record_failure(policy, now);
        self.publish(&state);
        transition
    }

    /// Whether the server was marked down and its `fail_timeout` is over: the
    /// next client may try it, once [`claim_retry`](Self::claim_retry) says so.
    pub fn retry_due(&self, now: Instant) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        until != 0 && self.nanos(now) >= until
    }

    /// Takes the one trial a down server gets after `fail_timeout`: true for
    /// the first caller, which must then report its connect's result; the down
    /// period is extended by `fail_timeout` so that others do not follow.
    pub fn claim_retry(&self, policy: HealthPolicy, now: Instant) -> bool {
        let mut state = self.lock();
        match state.down_until {
            Some(until) if now >= until => {
                state.down_until = Some(now + policy.fail_timeout);
                self.publish(&state);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// When the server is marked down until, if it is.
    pub fn down_until(&self) -> Option<Instant> {
        self.lock().down_until
    }

    /// Returns whether the server was down. Lock-free when nothing failed.
    pub fn record_success(&self) -> bool {
        if self.clean.load(Ordering::Acquire) {
            return false;
        }
        let mut state = self.lock();
        let was_down = state.record_success();
        self.publish(&state);
        was_down
    }

    fn publish(&self, state: &Health) {
        let until = state.down_until.map_or(0, |t| self.nanos(t).max(1));
        self.down_until.store(until, Ordering::Release);
        self.clean.store(state.is_clean(), Ordering::Release);
    }

    fn nanos(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(since).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Health> {
        // Health holds no invariant a panic elsewhere could break: keep using it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What active probes say of a server: up until `fall` probes in a row fail,
/// then down until `rise` in a row succeed. Only the pool's probe task writes it.
#[derive(Debug, Default)]
pub struct ProbeHealth {
    down: AtomicBool,
    good: AtomicU32,
    bad: AtomicU32,
}

impl ProbeHealth {
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Records one probe's result; returns the new state when it changed
    /// (`Some(true)`: up again, `Some(false)`: down).
    pub fn record(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let (streak, other) = match ok {
            true => (&self.good, &self.bad),
            false => (&self.bad, &self.good),
        };
        other.store(0, Ordering::Relaxed);
        let n = streak.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let down = self.is_down();
        match ok {
            true if down && n >= rise => {
                self.down.store(false, Ordering::Release);
                Some(true)
            }
            false if !down && n >= fall => {
                self.down.store(true, Ordering::Release);
                Some(false)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: HealthPolicy = HealthPolicy {
        max_fails: 3,
        fail_timeout: Duration::from_secs(5),
    };

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn max_fails_within_fail_timeout_marks_down_for_fail_timeout() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.record_failure(POLICY, at(t0, 0)), Transition::StillUp);
        assert_eq!(h.record_failure(POLICY, at(t0, 1000)), Transition::StillUp);
        assert!(h.is_up(at(t0, 1000)));
        assert_eq!(
            h.record_failure(POLICY, at(t0, 2000)),
            Transition::MarkedDown
        );
        assert!(!h.is_up(at(t0, 2000)));
        assert!(!h.is_up(at(t0, 6999)));
        assert!(h.is_up(at(t0, 7000)));
    }

    #[test]
    fn failures_spread_wider_than_fail_timeout_do_not_add_up() {
        let t0 = Instant::now();
        let mut h = Health::default();
        for i in 0..10 {
            assert_eq!(
                h.record_failure(POLICY, at(t0, i * 5001)),
                Transition::StillUp
            );
        }
        assert!(h.is_up(at(t0, 50_010)));
    }

    #[test]
    fn one_failure_after_the_down_period_marks_down_again() {
        let t0 = Instant::now();
        let mut h = Health::default();
        for i in 0..3 {
            h.record_failure(POLICY, at(t0, i));
        }
        assert!(h.is_up(at(t0, 6000)));
        assert_eq!(
            h.record_failure(POLICY, at(t0, 6000)),
            Transition::MarkedDown
        );
        assert!(!h.is_up(at(t0, 10_999)));
        assert!(h.is_up(at(t0, 11_000)));
    }

    #[test]
    fn failing_while_down_keeps_it_down_without_a_new_transition() {
        let t0 = Instant::now();
        let mut h = Health::default();
        for i in 0..3 {
            h.record_failure(POLICY, at(t0, i));
        }
        assert_eq!(
            h.record_failure(POLICY, at(t0, 4000)),
            Transition::StillDown
        );
        assert!(!h.is_up(at(t0, 8999)));
        assert!(h.is_up(at(t0, 9000)));
    }

    #[test]
    fn success_clears_everything() {
        let t0 = Instant::now();
        let mut h = Health::default();
        for i in 0..3 {
            h.record_failure(POLICY, at(t0, i));
        }
        assert!(h.record_success());
        assert!(h.is_up(at(t0, 10)));
        assert_eq!(h.record_failure(POLICY, at(t0, 10)), Transition::StillUp);
        assert!(!h.record_success());
    }

    #[test]
    fn max_fails_zero_never_marks_down() {
        let t0 = Instant::now();
        let policy = HealthPolicy {
            max_fails: 0,
            ..POLICY
        };
        let mut h = Health::default();
        for i in 0..100 {
            assert_eq!(h.record_failure(policy, at(t0, i)), Transition::StillUp);
        }
        assert!(h.is_up(at(t0, 100)));
    }

    #[test]
    fn the_shared_view_answers_like_the_state_it_mirrors() {
        let shared = SharedHealth::default();
        let t0 = shared.epoch;
        let mut plain = Health::default();
        // (ms, failed?) in turn; checked at every ms in between.
        let events = [(0, true), (1, true), (2, true), (4000, true), (9100, false)];
        let mut last = 0;
        for (ms, failed) in events {
            for probe in (last..=ms).step_by(100) {
                assert_eq!(
                    shared.is_up(at(t0, probe)),
                    plain.is_up(at(t0, probe)),
                    "at {probe} ms"
                );
            }
            if failed {
                assert_eq!(
                    shared.record_failure(POLICY, at(t0, ms)),
                    plain.record_failure(POLICY, at(t0, ms))
                );
            } else {
                assert_eq!(shared.record_success(), plain.record_success());
            }
            last = ms;
        }
        assert!(shared.is_up(at(t0, last)));
        assert!(!shared.record_success(), "nothing left to clear");
        assert!(shared.clean.load(Ordering::Acquire));
    }

    #[test]
    fn nginx_default_is_one_fail_ten_seconds() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(
            h.record_failure(HealthPolicy::default(), t0),
            Transition::MarkedDown
        );
        assert!(!h.is_up(at(t0, 9_999)));
        assert!(h.is_up(at(t0, 10_000)));
    }

    #[test]
    fn after_fail_timeout_one_client_gets_the_retry() {
        let shared = SharedHealth::default();
        let t0 = shared.epoch;
        for i in 0..3 {
            shared.record_failure(POLICY, at(t0, i));
        }
        assert!(!shared.retry_due(at(t0, 4000)));
        assert!(!shared.claim_retry(POLICY, at(t0, 4000)));
        assert!(shared.retry_due(at(t0, 5002)));
        assert!(shared.claim_retry(POLICY, at(t0, 5002)));
        // The next clients see it down again, for another fail_timeout.
        assert!(!shared.is_up(at(t0, 5003)));
        assert!(!shared.claim_retry(POLICY, at(t0, 5003)));
        assert!(shared.is_up(at(t0, 10_002)));
        // A success clears it all; an up server needs no claim.
        assert!(shared.record_success());
        assert!(!shared.retry_due(at(t0, 10_003)));
        assert!(shared.claim_retry(POLICY, at(t0, 10_003)));
    }

    #[test]
    fn probes_take_down_after_fall_and_up_after_rise() {
        let p = ProbeHealth::default();
        assert!(!p.is_down(), "servers start up");
        assert_eq!(p.record(false, 2, 3), None);
        assert_eq!(p.record(false, 2, 3), None);
        assert_eq!(p.record(true, 2, 3), None, "a good probe breaks the streak");
        assert_eq!(p.record(false, 2, 3), None);
        assert_eq!(p.record(false, 2, 3), None);
        assert_eq!(p.record(false, 2, 3), Some(false));
        assert!(p.is_down());
        assert_eq!(p.record(false, 2, 3), None);
        assert_eq!(p.record(true, 2, 3), None);
        assert_eq!(p.record(true, 2, 3), Some(true));
        assert!(!p.is_down());
    }
}

//! Choosing one server among the candidates the pool offers.
//!
//! Both algorithms end in nginx's smooth weighted round-robin: every candidate's
//! running score grows by its weight, the highest score wins and pays back the
//! total. Over `sum(weights)` picks each server gets exactly `weight` of them,
//! interleaved (weights 5,1,1 give `a a b a c a a`), and it works on any subset of
//! the pool, which is what health filtering and retries hand us. least_conn first
//! narrows the candidates to those with the fewest active connections per unit of
//! weight, then breaks the tie the same way, as nginx does. Health and backup
//! tiers are the pool's business, not this module's.
//!
//! The scores are atomics, so picks take no lock. Picks that run at the same
//! moment on different threads may interleave their additions and both see the
//! same leader; each still adds its candidates' total weight and pays it back
//! once, so the scores keep their balance and the weights hold over time. Only
//! the exact order can differ while picks race; one at a time, it is nginx's.

use std::sync::atomic::{AtomicI64, Ordering};

/// The `balance` setting of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Fewest active connections relative to weight; ties by weighted round-robin.
    #[default]
    LeastConn,
    /// Smooth weighted round-robin.
    RoundRobin,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastConn => "least_conn",
            Balance::RoundRobin => "round_robin",
        }
    }
}

/// A server the balancer may pick: its index in the pool, load and weight.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub index: usize,
    pub active: u64,
    pub weight: u32,
}

/// Picks one candidate's `index`, or `None` when there are none. `scores` holds the
/// round-robin state of the whole pool, indexed like the pool's servers.
pub fn pick(
    balance: Balance,
    candidates: &mut Vec<Candidate>,
    scores: &[AtomicI64],
) -> Option<usize> {
    if balance == Balance::LeastConn {
        let least =
            candidates
                .iter()
                .copied()
                .reduce(|best, c| if load_below(c, best) { c } else { best })?;
        candidates.retain(|c| !load_below(least, *c));
    }
    smooth_round_robin(candidates, scores)
}

/// `a.active / a.weight < b.active / b.weight`, without division.
fn load_below(a: Candidate, b: Candidate) -> bool {
    u128::from(a.active) * u128::from(b.weight) < u128::from(b.active) * u128::from(a.weight)
}

fn smooth_round_robin(candidates: &[Candidate], scores: &[AtomicI64]) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<(usize, i64)> = None;
    for c in candidates {
        let weight = i64::from(c.weight);
        total += weight;
        let score = scores[c.index].fetch_add(weight, Ordering::Relaxed) + weight;
        if best.is_none_or(|(_, leader)| score > leader) {
            best = Some((c.index, score));
        }
    }
    let (best, _) = best?;
    scores[best].fetch_sub(total, Ordering::Relaxed);
    Some(best)
}

/// Round-robin scores for `n` servers, all starting at zero.
pub fn scores(n: usize) -> Box<[AtomicI64]> {
    (0..n).map(|_| AtomicI64::new(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(loads: &[(u64, u32)]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(index, &(active, weight))| Candidate {
                index,
                active,
                weight,
            })
            .collect()
    }

    fn picks(balance: Balance, loads: &[(u64, u32)], n: usize) -> Vec<usize> {
        let scores = scores(loads.len());
        (0..n)
            .map(|_| pick(balance, &mut cands(loads), &scores).unwrap())
            .collect()
    }

    #[test]
    fn round_robin_is_smooth_and_weighted_like_nginx() {
        assert_eq!(
            picks(Balance::RoundRobin, &[(0, 5), (0, 1), (0, 1)], 7),
            [0, 0, 1, 0, 2, 0, 0]
        );
        assert_eq!(
            picks(Balance::RoundRobin, &[(0, 1), (0, 1), (0, 1)], 6),
            [0, 1, 2, 0, 1, 2]
        );
        let mut count = [0; 2];
        for i in picks(Balance::RoundRobin, &[(0, 1), (0, 3)], 400) {
            count[i] += 1;
        }
        assert_eq!(count, [100, 300]);
    }

    #[test]
    fn least_conn_picks_fewest_active() {
        assert_eq!(
            picks(Balance::LeastConn, &[(3, 1), (1, 1), (2, 1)], 5),
            [1; 5]
        );
    }

    #[test]
    fn least_conn_is_relative_to_weight() {
        // 4 active at weight 2 is 2 per unit of weight: less than 3 at weight 1.
        assert_eq!(picks(Balance::LeastConn, &[(3, 1), (4, 2)], 1), [1]);
    }

    #[test]
    fn least_conn_ties_follow_weights() {
        // Short connections: every server at 0 active, so weights decide.
        let mut count = [0; 3];
        for i in picks(Balance::LeastConn, &[(0, 1), (0, 2), (0, 1)], 400) {
            count[i] += 1;
        }
        assert_eq!(count, [100, 200, 100]);
        // 4/2 equals 2/1: a tie, shared by weight.
        assert_eq!(picks(Balance::LeastConn, &[(2, 1), (4, 2)], 3), [1, 0, 1]);
    }

    #[test]
    fn simulated_least_conn_spreads_held_connections_by_weight() {
        let weights = [1u32, 2, 1];
        let mut active = [0u64; 3];
        let scores = scores(3);
        for _ in 0..40 {
            let mut c: Vec<_> = (0..3)
                .map(|i| Candidate {
                    index: i,
                    active: active[i],
                    weight: weights[i],
                })
                .collect();
            active[pick(Balance::LeastConn, &mut c, &scores).unwrap()] += 1;
        }
        assert_eq!(active, [10, 20, 10]);
    }

    #[test]
    fn a_subset_keeps_its_proportions() {
        // Server 1 (weight 2) is down: the others still alternate 1:1.
        let scores = scores(3);
        let got: Vec<_> = (0..4)
            .map(|_| {
                let mut c = vec![
                    Candidate {
                        index: 0,
                        active: 0,
                        weight: 1,
                    },
                    Candidate {
                        index: 2,
                        active: 0,
                        weight: 1,
                    },
                ];
                pick(Balance::RoundRobin, &mut c, &scores).unwrap()
            })
            .collect();
        assert_eq!(got, [0, 2, 0, 2]);
    }

    #[test]
    fn no_candidates_no_pick() {
        assert_eq!(pick(Balance::LeastConn, &mut Vec::new(), &[]), None);
        assert_eq!(pick(Balance::RoundRobin, &mut Vec::new(), &[]), None);
    }

    #[test]
    fn racing_picks_keep_the_weights() {
        // 4 threads pick at once from weights 1:2:1; the scores end balanced
        // (they sum to zero) and the shares hold to within a few picks.
        let scores = scores(3);
        let counts: [std::sync::atomic::AtomicU64; 3] = Default::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let i = pick(
                            Balance::RoundRobin,
                            &mut cands(&[(0, 1), (0, 2), (0, 1)]),
                            &scores,
                        )
                        .unwrap();
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let sum: i64 = scores.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        assert_eq!(sum, 0);
        let got = counts.map(|c| c.load(Ordering::Relaxed));
        assert_eq!(got.iter().sum::<u64>(), 40_000);
        for (n, want) in got.into_iter().zip([10_000, 20_000, 10_000]) {
            assert!(n.abs_diff(want) <= 16, "{got:?}");
        }
    }
}

//! Choosing one server among the candidates the pool offers.
//!
//! Pure functions over a candidate list and a cursor that the pool advances on
//! every pick; health and backup tiers are the pool's business, not this module's.

/// The `balance` setting of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Fewest active connections relative to weight; ties broken round-robin.
    #[default]
    LeastConn,
    /// Weighted round-robin: over `sum(weights)` picks each server gets `weight`.
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

/// Picks one candidate's `index`, or `None` when there are none.
pub fn pick(balance: Balance, candidates: &[Candidate], cursor: usize) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    match balance {
        Balance::LeastConn => least_conn(candidates, cursor),
        Balance::RoundRobin => round_robin(candidates, cursor),
    }
}

fn least_conn(candidates: &[Candidate], cursor: usize) -> Option<usize> {
    let n = candidates.len();
    // Scanning from a rotating start makes the first of several equal loads rotate.
    let mut best = candidates[cursor % n];
    for offset in 1..n {
        let c = candidates[(cursor + offset) % n];
        // c.active / c.weight < best.active / best.weight, without division.
        if u128::from(c.active) * u128::from(best.weight)
            < u128::from(best.active) * u128::from(c.weight)
        {
            best = c;
        }
    }
    Some(best.index)
}

fn round_robin(candidates: &[Candidate], cursor: usize) -> Option<usize> {
    let total: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
    let mut slot = (cursor as u64) % total.max(1);
    for c in candidates {
        if slot < u64::from(c.weight) {
            return Some(c.index);
        }
        slot -= u64::from(c.weight);
    }
    candidates.last().map(|c| c.index)
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

    #[test]
    fn least_conn_picks_fewest_active() {
        let c = cands(&[(3, 1), (1, 1), (2, 1)]);
        for cursor in 0..5 {
            assert_eq!(pick(Balance::LeastConn, &c, cursor), Some(1));
        }
    }

    #[test]
    fn least_conn_is_relative_to_weight() {
        // 4 active at weight 2 is 2 per unit of weight: less than 3 at weight 1.
        let c = cands(&[(3, 1), (4, 2)]);
        assert_eq!(pick(Balance::LeastConn, &c, 0), Some(1));
        // 4/2 equals 2/1: a tie, broken by the cursor.
        let c = cands(&[(2, 1), (4, 2)]);
        assert_eq!(pick(Balance::LeastConn, &c, 0), Some(0));
        assert_eq!(pick(Balance::LeastConn, &c, 1), Some(1));
    }

    #[test]
    fn least_conn_ties_rotate_round_robin() {
        let c = cands(&[(0, 1), (0, 1), (0, 1)]);
        let picks: Vec<_> = (0..6)
            .map(|cursor| pick(Balance::LeastConn, &c, cursor).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn simulated_least_conn_spreads_held_connections_by_weight() {
        let weights = [1u32, 2, 1];
        let mut active = [0u64; 3];
        for cursor in 0..40 {
            let c: Vec<_> = (0..3)
                .map(|i| Candidate {
                    index: i,
                    active: active[i],
                    weight: weights[i],
                })
                .collect();
            active[pick(Balance::LeastConn, &c, cursor).unwrap()] += 1;
        }
        assert_eq!(active, [10, 20, 10]);
    }

    #[test]
    fn round_robin_follows_weights() {
        let c = cands(&[(0, 1), (0, 3)]);
        let mut count = [0; 2];
        for cursor in 0..400 {
            count[pick(Balance::RoundRobin, &c, cursor).unwrap()] += 1;
        }
        assert_eq!(count, [100, 300]);
    }

    #[test]
    fn no_candidates_no_pick() {
        assert_eq!(pick(Balance::LeastConn, &[], 0), None);
        assert_eq!(pick(Balance::RoundRobin, &[], 0), None);
    }
}

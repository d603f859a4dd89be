//! The choice of a server for a new connection (the `balance` of a backend, see the parent
//! module's docs).
use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use rand::Rng as _;

use super::{Pool, Server, View};
use crate::config::Balance;

impl Pool {
    /// The next address for a connection's attempt: up, and not in `tried` while an untried one
    /// is up. When none is up, a retry (`tried` not empty) goes back to the addresses it
    /// already tried that active checks do not hold down: passive health, which this
    /// connection's own failures may have triggered, decides which addresses *new* connections
    /// choose, and never cuts a connection's `retries` short.
    pub(super) fn pick(&self, view: &View, tried: &[Arc<Server>]) -> Option<Arc<Server>> {
        let now = Instant::now();
        let up: Vec<bool> = view.servers.iter().map(|s| s.is_up(now)).collect();
        let was_tried = |i: usize| tried.iter().any(|t| Arc::ptr_eq(t, &view.servers[i]));
        let fresh = |i: usize| up[i] && !was_tried(i);
        let any_fresh = (0..view.servers.len()).any(fresh);
        let any_up = up.iter().any(|&u| u);
        let again = |i: usize| was_tried(i) && !view.servers[i].held_down_by_checks();
        let eligible = |i: usize| {
            if any_fresh {
                fresh(i)
            } else if any_up {
                up[i]
            } else {
                again(i)
            }
        };
        if view.wheel.is_empty() || !(0..view.servers.len()).any(eligible) {
            return None;
        }
        let len = view.wheel.len();
        let slot = |k: usize| view.wheel[k % len] as usize;
        let chosen = match self.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len).map(|k| slot(start + k)).find(|&i| eligible(i))
            }
            Balance::LeastConn => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| slot(start + k))
                    .filter(|&i| eligible(i))
                    .reduce(|best, i| {
                        if lighter(&view.servers[i], &view.servers[best]) {
                            i
                        } else {
                            best
                        }
                    })
            }
            Balance::Random => {
                // Weighted picks: a random slot of the wheel, moved to the next eligible one.
                let mut rng = rand::rng();
                let mut sample = || {
                    let start = rng.random_range(0..len);
                    (0..len).map(|k| slot(start + k)).find(|&i| eligible(i))
                };
                match (sample(), sample()) {
                    (Some(a), Some(b)) if lighter(&view.servers[b], &view.servers[a]) => Some(b),
                    (a, _) => a,
                }
            }
        };
        chosen.map(|i| Arc::clone(&view.servers[i]))
    }
}

/// Whether `a` carries less per unit of weight than `b`.
fn lighter(a: &Server, b: &Server) -> bool {
    (a.active() as u64) * u64::from(b.weight) < (b.active() as u64) * u64::from(a.weight)
}

/// Smooth weighted round robin (as nginx): every index appears `weight` times, spread out, so
/// that a run of new connections never piles onto the heaviest server.
pub(super) fn smooth_wheel(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut wheel = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
            .expect("weights is not empty when total > 0");
        current[best] -= total;
        wheel.push(best as u32);
    }
    wheel
}

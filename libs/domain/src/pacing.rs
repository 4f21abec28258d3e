//! Restore pacing (DESIGN §5.6): at most `batch_size` devices per `interval`, and per site never
//! more than the site's ramp limit (kW per minute) over that interval, so no site draws an inrush
//! spike when its miners wake.

use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use std::hash::Hash;

/// How fast an event may restore.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RestorePacing {
    pub batch_size: u32,
    pub interval: Duration,
}

impl RestorePacing {
    /// Whether a new restore batch may go out now.
    pub fn due(&self, last_batch_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        last_batch_at.is_none_or(|t| now - t >= self.interval)
    }

    /// The kW a site with `ramp_kw_per_min` may add in one interval.
    pub fn site_budget_kw(&self, ramp_kw_per_min: f64) -> f64 {
        ramp_kw_per_min * self.interval.num_milliseconds() as f64 / 60_000.0
    }
}

/// Picks the next restore batch from `pending` (site, kW the device will draw again), in order.
/// Returns indices into `pending`. Per site the chosen kW stays within the site's budget, except
/// that a site always gets at least one device per batch, so a miner larger than the budget is
/// restored alone instead of never.
pub fn next_restore_batch<S: Eq + Hash + Copy>(
    pending: &[(S, f64)],
    pacing: &RestorePacing,
    ramp_kw_per_min: impl Fn(S) -> Option<f64>,
) -> Vec<usize> {
    let mut used: HashMap<S, (f64, u32)> = HashMap::new();
    let mut out = Vec::new();
    for (i, &(site, kw)) in pending.iter().enumerate() {
        if out.len() as u32 >= pacing.batch_size {
            break;
        }
        let (site_kw, site_n) = used.get(&site).copied().unwrap_or((0.0, 0));
        if let Some(ramp) = ramp_kw_per_min(site)
            && site_n > 0
            && site_kw + kw > pacing.site_budget_kw(ramp)
        {
            continue;
        }
        used.insert(site, (site_kw + kw, site_n + 1));
        out.push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pacing(batch_size: u32, secs: i64) -> RestorePacing {
        RestorePacing {
            batch_size,
            interval: Duration::seconds(secs),
        }
    }

    #[test]
    fn due_after_interval() {
        let p = pacing(10, 30);
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert!(p.due(None, t0));
        assert!(!p.due(Some(t0), t0 + Duration::seconds(29)));
        assert!(p.due(Some(t0), t0 + Duration::seconds(30)));
    }

    #[test]
    fn batch_size_and_ramp() {
        // 60 kW/min over 30 s = 30 kW per batch per site.
        let pending = [
            (1, 10.0),
            (1, 10.0),
            (1, 10.0),
            (1, 10.0),
            (2, 3.0),
            (2, 3.0),
        ];
        let ramp = |s: i32| (s == 1).then_some(60.0);
        assert_eq!(
            next_restore_batch(&pending, &pacing(100, 30), ramp),
            [0, 1, 2, 4, 5]
        );
        assert_eq!(next_restore_batch(&pending, &pacing(2, 30), ramp), [0, 1]);
        // A miner bigger than the budget goes alone.
        assert_eq!(
            next_restore_batch(&[(1, 50.0), (1, 1.0)], &pacing(10, 30), ramp),
            [0]
        );
    }

    proptest! {
        #[test]
        fn never_over_batch_size_or_ramp(
            pending in prop::collection::vec((0u8..4, 0.5f64..5.0), 0..200),
            batch in 1u32..50,
            secs in 1i64..120,
            ramp in 5.0f64..500.0,
        ) {
            let p = pacing(batch, secs);
            let out = next_restore_batch(&pending, &p, |_| Some(ramp));
            prop_assert!(out.len() as u32 <= batch);
            let mut per_site: HashMap<u8, (f64, u32)> = HashMap::new();
            for i in &out {
                let e = per_site.entry(pending[*i].0).or_default();
                e.0 += pending[*i].1;
                e.1 += 1;
            }
            for (kw, n) in per_site.values() {
                prop_assert!(*n == 1 || *kw <= p.site_budget_kw(ramp) + 1e-9);
            }
            if !pending.is_empty() {
                prop_assert!(!out.is_empty());
            }
        }
    }
}

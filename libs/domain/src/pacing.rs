//! Restore pacing (DESIGN §5.6): at most `batch_size` devices per `interval`, and per site never
//! more than the site's ramp limit (kW per minute) over that interval, so no site draws an inrush
//! spike when its miners wake. The ramp holds across every event restoring at a site: a
//! [`SiteRamp`] ledger remembers what each site was given in the last minute, whichever event sent
//! it, and every event's batch is cut to what is left.

use chrono::{DateTime, Duration, Utc};
use std::collections::{HashMap, VecDeque};
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

/// What one event's next restore batch may add at one site.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SiteBudget {
    /// kW this batch may add at the site: the event's share of the ramp over its interval, cut to
    /// what the site's last minute left.
    pub batch_kw: f64,
    /// kW the site's ramp leaves in the trailing minute, across every event.
    pub window_kw: f64,
    /// Nothing was restored at the site in the trailing minute: one device larger than the whole
    /// ramp may go, alone, instead of never.
    pub window_empty: bool,
}

impl SiteBudget {
    /// The budget of an event on a site that no other event is restoring at (what
    /// [`next_restore_batch`] assumes).
    pub fn alone(pacing: &RestorePacing, ramp_kw_per_min: f64) -> Self {
        Self {
            batch_kw: pacing.site_budget_kw(ramp_kw_per_min).min(ramp_kw_per_min),
            window_kw: ramp_kw_per_min,
            window_empty: true,
        }
    }
}

/// The kW each site was given in the trailing minute, by every event: what makes a site's ramp
/// limit hold across events. Times are given, never read, so the ledger is pure.
#[derive(Clone, Debug)]
pub struct SiteRamp<S> {
    window: Duration,
    sent: HashMap<S, VecDeque<(DateTime<Utc>, f64)>>,
}

impl<S: Eq + Hash + Copy> Default for SiteRamp<S> {
    fn default() -> Self {
        Self {
            window: Duration::minutes(1),
            sent: HashMap::new(),
        }
    }
}

impl<S: Eq + Hash + Copy> SiteRamp<S> {
    /// Remembers that `kw` started drawing again at `site` at `at`, and forgets what that site
    /// was given more than a minute before (so the ledger stays as small as one minute).
    pub fn record(&mut self, site: S, at: DateTime<Utc>, kw: f64) {
        let window = self.window;
        let q = self.sent.entry(site).or_default();
        while q.front().is_some_and(|(t, _)| *t <= at - window) {
            q.pop_front();
        }
        if kw > 0.0 {
            q.push_back((at, kw));
        }
    }

    /// kW restored at `site` in the minute before `now` (`(now - 1 min, now]`), and how many
    /// restores that was.
    pub fn used(&self, site: S, now: DateTime<Utc>) -> (f64, usize) {
        let Some(q) = self.sent.get(&site) else {
            return (0.0, 0);
        };
        q.iter()
            .filter(|(t, _)| *t > now - self.window && *t <= now)
            .fold((0.0, 0), |(kw, n), (_, k)| (kw + k, n + 1))
    }

    /// What an event paced by `pacing` may add at `site` now, given the site's ramp.
    pub fn budget(
        &self,
        site: S,
        ramp_kw_per_min: f64,
        pacing: &RestorePacing,
        now: DateTime<Utc>,
    ) -> SiteBudget {
        let (used, n) = self.used(site, now);
        let window_kw = (ramp_kw_per_min - used).max(0.0);
        SiteBudget {
            batch_kw: pacing.site_budget_kw(ramp_kw_per_min).min(window_kw),
            window_kw,
            window_empty: n == 0,
        }
    }
}

/// [`next_restore_batch`] within each site's [`SiteBudget`] (`None`: no ramp limit). Per site a
/// batch adds at most `batch_kw`, except that a site with nothing chosen yet in this batch may
/// take one device that fits what its minute has left (or, if its minute is empty, any one
/// device), so a miner larger than one batch's share is restored alone instead of never, and the
/// site's minute still never holds more than its ramp.
pub fn next_restore_batch_within<S: Eq + Hash + Copy>(
    pending: &[(S, f64)],
    batch_size: u32,
    budget: impl Fn(S) -> Option<SiteBudget>,
) -> Vec<usize> {
    let mut used: HashMap<S, (f64, u32)> = HashMap::new();
    let mut budgets: HashMap<S, Option<SiteBudget>> = HashMap::new();
    let mut out = Vec::new();
    for (i, &(site, kw)) in pending.iter().enumerate() {
        if out.len() as u32 >= batch_size {
            break;
        }
        let (site_kw, site_n) = used.get(&site).copied().unwrap_or((0.0, 0));
        if let Some(b) = *budgets.entry(site).or_insert_with(|| budget(site)) {
            let fits = site_kw + kw <= b.batch_kw;
            let alone = site_n == 0 && (kw <= b.window_kw || b.window_empty);
            if !fits && !alone {
                continue;
            }
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

    #[test]
    fn the_ledger_forgets_after_a_minute() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut r = SiteRamp::default();
        r.record(1, t0, 10.0);
        r.record(1, t0 + Duration::seconds(30), 5.0);
        assert_eq!(r.used(1, t0 + Duration::seconds(59)), (15.0, 2));
        assert_eq!(r.used(1, t0 + Duration::seconds(60)), (5.0, 1));
        assert_eq!(r.used(2, t0), (0.0, 0));
        let b = r.budget(1, 12.0, &pacing(100, 30), t0 + Duration::seconds(60));
        assert_eq!(
            b,
            SiteBudget {
                batch_kw: 6.0,
                window_kw: 7.0,
                window_empty: false
            }
        );
        let b = r.budget(1, 12.0, &pacing(100, 30), t0 + Duration::seconds(90));
        assert_eq!(
            b,
            SiteBudget {
                batch_kw: 6.0,
                window_kw: 12.0,
                window_empty: true
            }
        );
    }

    /// Events restoring at one site over time: each pass, every event due for a batch takes one
    /// within the budget the shared ledger leaves, then records it, as the reconciler does.
    /// Returns what the site received, and when.
    fn restore_together(
        events: &[(Vec<f64>, RestorePacing)],
        ramp: f64,
        step_ms: i64,
        steps: usize,
    ) -> Vec<(DateTime<Utc>, f64)> {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut ledger = SiteRamp::default();
        let mut queues: Vec<Vec<f64>> = events.iter().map(|(q, _)| q.clone()).collect();
        let mut last: Vec<Option<DateTime<Utc>>> = vec![None; events.len()];
        let mut sent = Vec::new();
        for step in 0..steps {
            let now = t0 + Duration::milliseconds(step as i64 * step_ms);
            for (e, (_, p)) in events.iter().enumerate() {
                if queues[e].is_empty() || !p.due(last[e], now) {
                    continue;
                }
                let pending: Vec<(u8, f64)> = queues[e].iter().map(|kw| (0u8, *kw)).collect();
                let b = ledger.budget(0, ramp, p, now);
                let chosen = next_restore_batch_within(&pending, p.batch_size, |_| Some(b));
                if chosen.is_empty() {
                    continue;
                }
                last[e] = Some(now);
                for i in chosen.iter().rev() {
                    let kw = queues[e].remove(*i);
                    ledger.record(0, now, kw);
                    sent.push((now, kw));
                }
            }
        }
        sent
    }

    /// Every trailing minute holds at most the ramp, or a single device.
    fn assert_ramp_held(sent: &[(DateTime<Utc>, f64)], ramp: f64) {
        for (end, _) in sent {
            let window: Vec<f64> = sent
                .iter()
                .filter(|(t, _)| *t <= *end && *t > *end - Duration::minutes(1))
                .map(|(_, kw)| *kw)
                .collect();
            let total: f64 = window.iter().sum();
            assert!(
                total <= ramp + 1e-9 || window.len() == 1,
                "{total} kW in the minute up to {end} over a {ramp} kW/min ramp"
            );
        }
    }

    #[test]
    fn two_events_at_one_site_share_its_ramp() {
        // Alone, each event could send 60 kW/min (30 kW per 30 s); together they must share it.
        let q = vec![3.0; 100];
        let events = [(q.clone(), pacing(100, 30)), (q, pacing(100, 30))];
        let sent = restore_together(&events, 60.0, 1_000, 600);
        assert_ramp_held(&sent, 60.0);
        assert_eq!(sent.len(), 200, "both events finish");
        // Per-event pacing alone would put 60 kW per event in the first minute.
        let first_minute: f64 = sent
            .iter()
            .filter(|(t, _)| *t < sent[0].0 + Duration::minutes(1))
            .map(|(_, kw)| kw)
            .sum();
        assert!(first_minute <= 60.0, "{first_minute}");
    }

    proptest! {
        #[test]
        fn events_restoring_at_one_site_never_exceed_its_ramp_together(
            events in prop::collection::vec(
                (prop::collection::vec(0.5f64..8.0, 0..60), 1u32..40, 1i64..90),
                1..4,
            ),
            ramp in 5.0f64..200.0,
            step_ms in 200i64..5_000,
        ) {
            let events: Vec<(Vec<f64>, RestorePacing)> =
                events.into_iter().map(|(q, n, s)| (q, pacing(n, s))).collect();
            let sent = restore_together(&events, ramp, step_ms, 400);
            assert_ramp_held(&sent, ramp);
            // Progress: within 400 steps something was restored if anything was pending.
            if events.iter().any(|(q, _)| !q.is_empty()) {
                prop_assert!(!sent.is_empty());
            }
        }
    }
}

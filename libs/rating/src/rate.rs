//! Curtailed energy: ∫ max(0, baseline − observed) dt over the intervals a target was
//! confirmed, split exactly at window edges and summed per key (a site and an event) and window.
//!
//! Power is rounded once per interval to whole milliwatts and time is whole microseconds, so
//! energy is an exact integer (milliwatt-microseconds, i.e. nanojoules): splitting an interval at
//! window edges, or anywhere else, conserves it to the unit. Only the published `curtailed_kwh`
//! is rounded ([`Energy::kwh_micros`]).

use crate::money::div_round_half_away;
use crate::window::{Span, WindowLen, at, micros, split};
use chrono::{DateTime, Utc};

/// One interval during which a target was confirmed (a `curtailment_interval` row).
#[derive(Clone, Debug, PartialEq)]
pub struct Fact<K> {
    /// What the energy is summed under (the store uses the target's site and event).
    pub key: K,
    pub started_at: DateTime<Utc>,
    /// `None` while the target is still confirmed: rated up to the run's `now`, provisionally.
    pub ended_at: Option<DateTime<Utc>>,
    /// What the miner drew before the event.
    pub baseline_w: f64,
    /// The device's latest power reading when the target was confirmed, and when it left
    /// `confirmed` (`None`: no reading, or still confirmed).
    pub start_power_w: Option<f64>,
    pub end_power_w: Option<f64>,
}

/// A power reading that can be used: finite and not negative.
fn reading(w: Option<f64>) -> Option<f64> {
    w.filter(|w| w.is_finite() && *w >= 0.0)
}

impl<K> Fact<K> {
    /// The power taken as observed throughout the interval: the mean of the readings at entry
    /// and exit (ADR 0012: telemetry between them is not kept per interval), the one reading
    /// when only one exists, and the baseline (nothing shed) when there is none.
    pub fn observed_w(&self) -> f64 {
        match (reading(self.start_power_w), reading(self.end_power_w)) {
            (Some(a), Some(b)) => (a + b) / 2.0,
            (Some(w), None) | (None, Some(w)) => w,
            (None, None) => self.baseline_w,
        }
    }

    /// max(0, baseline − observed), in whole milliwatts (half away from zero). A baseline that
    /// is not a usable reading sheds nothing.
    pub fn shed_milliwatts(&self) -> i64 {
        let Some(baseline) = reading(Some(self.baseline_w)) else {
            return 0;
        };
        let shed = (baseline - self.observed_w()).max(0.0);
        // `as` saturates; no miner sheds anywhere near i64::MAX milliwatts.
        (shed * 1_000.0).round() as i64
    }
}

/// Energy in milliwatt-microseconds (nanojoules): exact, and additive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Energy(pub i128);

/// Nanojoules in one micro-kWh (1 mWh = 3.6 J).
const NJ_PER_MICRO_KWH: i128 = 3_600_000_000;

impl Energy {
    /// The energy in whole micro-kWh (`curtailed_kwh` × 10⁶), half away from zero.
    pub fn kwh_micros(self) -> i64 {
        i64::try_from(div_round_half_away(self.0, NJ_PER_MICRO_KWH)).unwrap_or(i64::MAX)
    }
}

/// One rated window of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rated<K> {
    pub key: K,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub energy: Energy,
    /// The window had not closed at `now`, or an interval in it was still open: a later run
    /// may change it.
    pub provisional: bool,
}

/// Rates `facts` over `span` in windows of `len`, at `now`: one row per key and window that a
/// confirmed interval of positive length touches (even if it shed nothing), in key then window
/// order, the order the rows are written in.
///
/// Work is linear in the pieces (an interval's windows): facts are grouped by key, and a key's
/// energy is summed in an array indexed by window, never a map lookup per piece (a day of
/// 100,000 miners is millions of pieces).
pub fn rate<K: Ord + Clone>(
    facts: &[Fact<K>],
    span: Span,
    len: WindowLen,
    now: DateTime<Utc>,
) -> Vec<Rated<K>> {
    let (since, until, now_us) = (micros(span.since), micros(span.until), micros(now));
    let step = len.micros();
    let base = len.start_of(since);
    let windows = usize::try_from((until - base + step - 1).div_euclid(step)).unwrap_or(0);
    let mut energy = vec![0i128; windows];
    let mut open = vec![false; windows];
    let mut seen = vec![false; windows];
    let mut touched: Vec<usize> = Vec::new();
    let mut by_key: Vec<&Fact<K>> = facts.iter().collect();
    by_key.sort_by(|a, b| a.key.cmp(&b.key));
    let mut rows = Vec::new();
    for group in by_key.chunk_by(|a, b| a.key == b.key) {
        for f in group {
            let is_open = f.ended_at.is_none();
            let a = micros(f.started_at).max(since);
            let b = f.ended_at.map_or(now_us, micros).min(until);
            let shed = i128::from(f.shed_milliwatts());
            for (window, us) in split(a, b, len) {
                let i = ((window - base) / step) as usize;
                if !seen[i] {
                    seen[i] = true;
                    touched.push(i);
                }
                energy[i] += shed * i128::from(us);
                open[i] |= is_open;
            }
        }
        touched.sort_unstable();
        for &i in &touched {
            let window = base + i as i64 * step;
            rows.push(Rated {
                key: group[0].key.clone(),
                window_start: at(window),
                window_end: at(window + step),
                energy: Energy(energy[i]),
                provisional: open[i] || window + step > now_us,
            });
            energy[i] = 0;
            open[i] = false;
            seen[i] = false;
        }
        touched.clear();
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::HOUR_US;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn fact(
        key: u8,
        from: &str,
        to: Option<&str>,
        baseline: f64,
        start: f64,
        end: Option<f64>,
    ) -> Fact<u8> {
        Fact {
            key,
            started_at: t(from),
            ended_at: to.map(t),
            baseline_w: baseline,
            start_power_w: Some(start),
            end_power_w: end,
        }
    }

    fn day() -> Span {
        Span {
            since: t("2026-01-01T00:00:00Z"),
            until: t("2026-01-02T00:00:00Z"),
        }
    }

    #[test]
    fn observed_power_is_the_mean_of_entry_and_exit() {
        let f = |start: Option<f64>, end: Option<f64>| Fact {
            key: 0u8,
            started_at: t("2026-01-01T00:00:00Z"),
            ended_at: None,
            baseline_w: 3_000.0,
            start_power_w: start,
            end_power_w: end,
        };
        assert_eq!(f(Some(100.0), Some(300.0)).shed_milliwatts(), 2_800_000);
        assert_eq!(f(Some(100.0), None).shed_milliwatts(), 2_900_000);
        assert_eq!(f(None, Some(500.0)).shed_milliwatts(), 2_500_000);
        assert_eq!(
            f(None, None).shed_milliwatts(),
            0,
            "no reading: nothing shed"
        );
        assert_eq!(
            f(Some(3_500.0), Some(3_500.0)).shed_milliwatts(),
            0,
            "never below zero"
        );
        assert_eq!(
            f(Some(f64::NAN), Some(1_000.0)).shed_milliwatts(),
            2_000_000
        );
        assert_eq!(
            f(Some(0.0004), Some(0.0)).shed_milliwatts(),
            3_000_000,
            "half a mW rounds"
        );
        let mut bad = f(Some(0.0), None);
        bad.baseline_w = f64::INFINITY;
        assert_eq!(bad.shed_milliwatts(), 0);
    }

    #[test]
    fn energy_is_split_exactly_at_window_edges() {
        // 2,800 W shed from 10:10 to 10:20: 5 minutes in each quarter, 0.233333… kWh each.
        let facts = [fact(
            1,
            "2026-01-01T10:10:00Z",
            Some("2026-01-01T10:20:00Z"),
            3_000.0,
            100.0,
            Some(300.0),
        )];
        let now = t("2026-01-02T00:00:00Z");
        let rows = rate(&facts, day(), WindowLen::Quarter, now);
        let five_min = Energy(2_800_000 * 300_000_000);
        assert_eq!(
            rows,
            vec![
                Rated {
                    key: 1,
                    window_start: t("2026-01-01T10:00:00Z"),
                    window_end: t("2026-01-01T10:15:00Z"),
                    energy: five_min,
                    provisional: false,
                },
                Rated {
                    key: 1,
                    window_start: t("2026-01-01T10:15:00Z"),
                    window_end: t("2026-01-01T10:30:00Z"),
                    energy: five_min,
                    provisional: false,
                },
            ]
        );
        assert_eq!(five_min.kwh_micros(), 233_333);
        // Hourly, the same interval is one row with both halves.
        let rows = rate(&facts, day(), WindowLen::Hour, now);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].energy, Energy(five_min.0 * 2));
        assert_eq!(rows[0].energy.kwh_micros(), 466_667);
    }

    #[test]
    fn the_span_clips_and_open_windows_are_provisional() {
        let span = Span {
            since: t("2026-01-01T10:00:00Z"),
            until: t("2026-01-01T12:00:00Z"),
        };
        let now = t("2026-01-01T11:20:00Z");
        let facts = [
            // Starts before the span: only its part inside counts.
            fact(
                1,
                "2026-01-01T09:00:00Z",
                Some("2026-01-01T10:30:00Z"),
                1_000.0,
                0.0,
                Some(0.0),
            ),
            // Still confirmed: rated up to now, provisionally, even in a closed window.
            fact(2, "2026-01-01T10:50:00Z", None, 1_000.0, 0.0, None),
        ];
        let rows = rate(&facts, span, WindowLen::Quarter, now);
        let got: Vec<(u8, DateTime<Utc>, i64, bool)> = rows
            .iter()
            .map(|r| (r.key, r.window_start, r.energy.kwh_micros(), r.provisional))
            .collect();
        let kwh = |minutes: i128| Energy(1_000_000 * minutes * 60_000_000).kwh_micros();
        assert_eq!(
            got,
            vec![
                (1, t("2026-01-01T10:00:00Z"), kwh(15), false),
                (1, t("2026-01-01T10:15:00Z"), kwh(15), false),
                (2, t("2026-01-01T10:45:00Z"), kwh(10), true),
                (2, t("2026-01-01T11:00:00Z"), kwh(15), true),
                (2, t("2026-01-01T11:15:00Z"), kwh(5), true),
            ]
        );
        // A closed interval in a window that has not closed yet is provisional too.
        let late = [fact(
            3,
            "2026-01-01T11:16:00Z",
            Some("2026-01-01T11:18:00Z"),
            1_000.0,
            0.0,
            Some(0.0),
        )];
        assert!(rate(&late, span, WindowLen::Quarter, now)[0].provisional);
    }

    #[test]
    fn intervals_of_one_key_add_up_and_keys_stay_apart() {
        let facts = [
            fact(
                1,
                "2026-01-01T10:00:00Z",
                Some("2026-01-01T10:05:00Z"),
                1_000.0,
                0.0,
                Some(0.0),
            ),
            fact(
                1,
                "2026-01-01T10:07:00Z",
                Some("2026-01-01T10:10:00Z"),
                1_000.0,
                0.0,
                Some(0.0),
            ),
            fact(
                2,
                "2026-01-01T10:00:00Z",
                Some("2026-01-01T10:01:00Z"),
                1_000.0,
                0.0,
                Some(0.0),
            ),
        ];
        let rows = rate(&facts, day(), WindowLen::Quarter, t("2026-01-02T00:00:00Z"));
        let minute = Energy(1_000_000 * 60_000_000);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].key, rows[0].energy), (1, Energy(minute.0 * 8)));
        assert_eq!((rows[1].key, rows[1].energy), (2, minute));
    }

    fn arb_fact() -> impl Strategy<Value = Fact<u8>> {
        (
            0u8..3,
            0i64..48 * HOUR_US,
            0i64..6 * HOUR_US,
            0.0f64..5_000.0,
            0.0f64..5_000.0,
            proptest::option::of(0.0f64..5_000.0),
        )
            .prop_map(|(key, start, len, baseline, a, b)| {
                let base = micros(t("2025-12-31T12:00:00Z"));
                Fact {
                    key,
                    started_at: at(base + start),
                    ended_at: Some(at(base + start + len)),
                    baseline_w: baseline,
                    start_power_w: Some(a),
                    end_power_w: b,
                }
            })
    }

    proptest! {
        /// Splitting at window edges conserves energy: the rows add up, per key, to each
        /// interval's shed times its time inside the span, computed without any split.
        #[test]
        fn splitting_at_edges_conserves_energy(facts in proptest::collection::vec(arb_fact(), 0..20), hourly: bool) {
            let len = if hourly { WindowLen::Hour } else { WindowLen::Quarter };
            let span = day();
            let rows = rate(&facts, span, len, t("2026-01-05T00:00:00Z"));
            for key in 0u8..3 {
                let rated: i128 = rows.iter().filter(|r| r.key == key).map(|r| r.energy.0).sum();
                let direct: i128 = facts.iter().filter(|f| f.key == key).map(|f| {
                    let a = micros(f.started_at).max(micros(span.since));
                    let b = micros(f.ended_at.unwrap()).min(micros(span.until));
                    i128::from(f.shed_milliwatts()) * i128::from((b - a).max(0))
                }).sum();
                prop_assert_eq!(rated, direct);
            }
        }

        /// Quarters add up exactly to their hour.
        #[test]
        fn quarters_add_up_to_hours(facts in proptest::collection::vec(arb_fact(), 0..20)) {
            let now = t("2026-01-05T00:00:00Z");
            let quarters = rate(&facts, day(), WindowLen::Quarter, now);
            let hours = rate(&facts, day(), WindowLen::Hour, now);
            for h in &hours {
                let sum: i128 = quarters.iter()
                    .filter(|q| q.key == h.key && q.window_start >= h.window_start && q.window_end <= h.window_end)
                    .map(|q| q.energy.0)
                    .sum();
                prop_assert_eq!(sum, h.energy.0);
            }
        }

        /// Cutting an interval in two anywhere rates the same.
        #[test]
        fn cutting_an_interval_changes_nothing(f in arb_fact(), cut in 0.0f64..1.0) {
            let (a, b) = (micros(f.started_at), micros(f.ended_at.unwrap()));
            let mid = a + ((b - a) as f64 * cut) as i64;
            let mut left = f.clone();
            left.ended_at = Some(at(mid));
            let mut right = f.clone();
            right.started_at = at(mid);
            let now = t("2026-01-05T00:00:00Z");
            let whole = rate(std::slice::from_ref(&f), day(), WindowLen::Quarter, now);
            let parts = rate(&[left, right], day(), WindowLen::Quarter, now);
            let energy = |rows: &[Rated<u8>]| rows.iter().map(|r| (r.window_start, r.energy)).filter(|r| r.1 .0 != 0).collect::<Vec<_>>();
            prop_assert_eq!(energy(&whole), energy(&parts));
        }
    }
}

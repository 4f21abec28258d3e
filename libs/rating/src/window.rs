//! Settlement windows and a run's span. Windows are aligned to the UNIX epoch in UTC (so every
//! 15-minute window sits inside one hourly one), and time is counted in whole microseconds,
//! PostgreSQL's `timestamptz` precision, so an interval split at window edges loses nothing.

use chrono::{DateTime, TimeDelta, Utc};

/// Microseconds in an hour.
pub const HOUR_US: i64 = 3_600_000_000;

/// A routine run rates this many trailing closed hours.
pub const ROUTINE_HOURS: i64 = 24;

/// The longest span one run may cover, in days: a year and a day.
pub const MAX_SPAN_DAYS: i64 = 366;

/// An org's settlement window (`org.settlement_window_minutes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowLen {
    Quarter,
    Hour,
}

impl WindowLen {
    /// The window of `org.settlement_window_minutes`; `None` for any other length.
    pub fn from_minutes(minutes: i32) -> Option<Self> {
        match minutes {
            15 => Some(Self::Quarter),
            60 => Some(Self::Hour),
            _ => None,
        }
    }

    pub fn minutes(self) -> i64 {
        match self {
            Self::Quarter => 15,
            Self::Hour => 60,
        }
    }

    pub fn micros(self) -> i64 {
        self.minutes() * 60_000_000
    }

    /// The start of the window holding `t_us`.
    pub fn start_of(self, t_us: i64) -> i64 {
        t_us.div_euclid(self.micros()) * self.micros()
    }

    /// Whether `t` is a window edge.
    pub fn is_edge(self, t: DateTime<Utc>) -> bool {
        t.timestamp_micros().rem_euclid(self.micros()) == 0
    }
}

/// Microseconds since the epoch.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The instant `us` microseconds after the epoch (clamped to chrono's range, which every
/// `timestamptz` is inside).
pub fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(if us < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// Splits `[a, b)` (microseconds) exactly at the edges of `len`'s windows: each item is a
/// window's start and the microseconds of `[a, b)` inside it. The pieces add up to `b - a`;
/// an empty or reversed interval yields nothing.
pub fn split(a: i64, b: i64, len: WindowLen) -> impl Iterator<Item = (i64, i64)> {
    let step = len.micros();
    let mut at = a;
    std::iter::from_fn(move || {
        if at >= b {
            return None;
        }
        let start = len.start_of(at);
        let end = (start + step).min(b);
        let piece = (start, end - at);
        at = end;
        Some(piece)
    })
}

/// Why a run rates these windows: it decides how loudly deleting a rated row is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// The default trailing window (the worker's periodic run, `ebb worker rate` without
    /// flags): a rated row vanishing here has no operator behind it.
    Routine,
    /// `--since` and/or `--until` (either alone counts): an operator asked for these windows
    /// to be recomputed, for instance after a late price correction.
    Backfill,
}

/// The half-open span `[since, until)` a run rates: whole hours, so that every window of
/// either length lies wholly inside or wholly outside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// A span a run may not cover.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpanError {
    #[error(
        "--since ({since}) must be before --until ({until}) once both are widened to whole hours"
    )]
    Empty {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    #[error("a run covers at most {MAX_SPAN_DAYS} days; {since} to {until} is longer")]
    TooLong {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

fn floor_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    at(micros(t).div_euclid(HOUR_US) * HOUR_US)
}

fn ceil_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = micros(t);
    let floor = us.div_euclid(HOUR_US) * HOUR_US;
    at(if floor == us { us } else { floor + HOUR_US })
}

impl Span {
    /// The span of a run asked at `now`, and whether it is routine. Without flags: the
    /// trailing [`ROUTINE_HOURS`] closed hours. With either flag it is a backfill: `since` is
    /// widened down and `until` up to whole hours; a missing `until` is the last closed hour,
    /// a missing `since` [`ROUTINE_HOURS`] before `until`.
    pub fn resolve(
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(Span, RunKind), SpanError> {
        let kind = if since.is_none() && until.is_none() {
            RunKind::Routine
        } else {
            RunKind::Backfill
        };
        let until = until.map_or_else(|| floor_hour(now), ceil_hour);
        let since = since.map_or_else(|| until - TimeDelta::hours(ROUTINE_HOURS), floor_hour);
        if since >= until {
            return Err(SpanError::Empty { since, until });
        }
        if until - since > TimeDelta::days(MAX_SPAN_DAYS) {
            return Err(SpanError::TooLong { since, until });
        }
        Ok((Span { since, until }, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn an_interval_is_cut_exactly_at_every_edge() {
        let check = |a: &str, b: &str, len: WindowLen, expected: &[(&str, i64)]| {
            let got: Vec<(DateTime<Utc>, i64)> = split(micros(t(a)), micros(t(b)), len)
                .map(|(ws, us)| (at(ws), us))
                .collect();
            let want: Vec<(DateTime<Utc>, i64)> =
                expected.iter().map(|(ws, us)| (t(ws), *us)).collect();
            assert_eq!(got, want, "{a} .. {b} in {len:?}");
        };
        let min = 60_000_000;
        // Straddles one quarter edge: 10:10 .. 10:20 is 5 minutes in each.
        check(
            "2026-01-01T10:10:00Z",
            "2026-01-01T10:20:00Z",
            WindowLen::Quarter,
            &[
                ("2026-01-01T10:00:00Z", 5 * min),
                ("2026-01-01T10:15:00Z", 5 * min),
            ],
        );
        // The same in hourly windows stays whole.
        check(
            "2026-01-01T10:10:00Z",
            "2026-01-01T10:20:00Z",
            WindowLen::Hour,
            &[("2026-01-01T10:00:00Z", 10 * min)],
        );
        // Ends exactly on an edge: nothing in the next window.
        check(
            "2026-01-01T10:59:59.999999Z",
            "2026-01-01T11:00:00Z",
            WindowLen::Hour,
            &[("2026-01-01T10:00:00Z", 1)],
        );
        // Starts exactly on an edge and spans two whole windows and a microsecond.
        check(
            "2026-01-01T10:00:00Z",
            "2026-01-01T10:30:00.000001Z",
            WindowLen::Quarter,
            &[
                ("2026-01-01T10:00:00Z", 15 * min),
                ("2026-01-01T10:15:00Z", 15 * min),
                ("2026-01-01T10:30:00Z", 1),
            ],
        );
        // Across midnight and before the epoch the windows stay aligned.
        check(
            "1969-12-31T23:50:00Z",
            "1970-01-01T00:05:00Z",
            WindowLen::Quarter,
            &[
                ("1969-12-31T23:45:00Z", 10 * min),
                ("1970-01-01T00:00:00Z", 5 * min),
            ],
        );
        // Empty and reversed intervals have no pieces.
        check(
            "2026-01-01T10:00:00Z",
            "2026-01-01T10:00:00Z",
            WindowLen::Hour,
            &[],
        );
        check(
            "2026-01-01T11:00:00Z",
            "2026-01-01T10:00:00Z",
            WindowLen::Hour,
            &[],
        );
    }

    #[test]
    fn a_run_without_flags_is_routine_and_covers_the_trailing_closed_hours() {
        let now = t("2026-03-04T10:17:12Z");
        assert_eq!(
            Span::resolve(None, None, now),
            Ok((
                Span {
                    since: t("2026-03-03T10:00:00Z"),
                    until: t("2026-03-04T10:00:00Z"),
                },
                RunKind::Routine
            ))
        );
    }

    #[test]
    fn either_flag_alone_makes_a_backfill_widened_to_whole_hours() {
        let now = t("2026-03-04T10:17:12Z");
        let check = |since: Option<&str>, until: Option<&str>, want: (&str, &str)| {
            let (span, kind) = Span::resolve(since.map(t), until.map(t), now).unwrap();
            assert_eq!(kind, RunKind::Backfill, "{since:?} {until:?}");
            assert_eq!((span.since, span.until), (t(want.0), t(want.1)));
        };
        check(
            Some("2026-03-01T05:30:00Z"),
            None,
            ("2026-03-01T05:00:00Z", "2026-03-04T10:00:00Z"),
        );
        check(
            None,
            Some("2026-03-02T00:00:01Z"),
            ("2026-03-01T01:00:00Z", "2026-03-02T01:00:00Z"),
        );
        check(
            Some("2026-03-01T00:00:00Z"),
            Some("2026-03-01T02:00:00Z"),
            ("2026-03-01T00:00:00Z", "2026-03-01T02:00:00Z"),
        );
        // An until in the future reaches the windows still open.
        check(
            None,
            Some("2026-03-04T10:20:00Z"),
            ("2026-03-03T11:00:00Z", "2026-03-04T11:00:00Z"),
        );
    }

    #[test]
    fn an_empty_or_overlong_span_is_refused() {
        let now = t("2026-03-04T10:17:12Z");
        assert!(matches!(
            Span::resolve(Some(t("2026-03-04T10:30:00Z")), None, now),
            Err(SpanError::Empty { .. })
        ));
        assert!(matches!(
            Span::resolve(Some(t("2024-01-01T00:00:00Z")), None, now),
            Err(SpanError::TooLong { .. })
        ));
    }

    proptest! {
        /// Splitting conserves time: the pieces add up to the interval, each lies in its
        /// window, and the windows follow each other.
        #[test]
        fn splitting_conserves_time(a in -10_000_000_000_000i64..10_000_000_000_000, d in 0i64..20 * HOUR_US, hourly: bool) {
            let len = if hourly { WindowLen::Hour } else { WindowLen::Quarter };
            let pieces: Vec<(i64, i64)> = split(a, a + d, len).collect();
            prop_assert_eq!(pieces.iter().map(|p| p.1).sum::<i64>(), d);
            for (i, (ws, us)) in pieces.iter().enumerate() {
                prop_assert!(*us > 0 && *us <= len.micros());
                prop_assert_eq!(len.start_of(*ws), *ws);
                if i > 0 {
                    prop_assert_eq!(*ws, pieces[i - 1].0 + len.micros());
                }
            }
        }
    }
}

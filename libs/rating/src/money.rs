//! Money without floats. A price is an integer count of micro-units (10⁻⁶ of the org's currency)
//! per MWh, parsed from a decimal string; an amount is an integer count of micro-units.
//!
//! The rounding rule (ADR 0012), applied per `rated_usage` row:
//! 1. the row's exact energy (milliwatt-microseconds, [`crate::Energy`]) is rounded to whole
//!    micro-kWh (mWh) — `curtailed_kwh` with six decimals;
//! 2. the amount is that rounded `curtailed_kwh` times the price, rounded to whole micro-units:
//!    `amount_micros = round(kwh_micros × price_micros_per_mwh / 10⁹)`.
//!
//! Both roundings are half away from zero (0.5 → 1, −0.5 → −1; prices may be negative). Taking
//! the amount from the published `curtailed_kwh` rather than the exact energy means anyone can
//! recompute a row's amount from the row and the price, to the micro-unit.

use chrono::{DateTime, TimeDelta, Utc};
use std::collections::BTreeMap;
use std::fmt;

/// Micro-units in one unit of currency, and micro-kWh in one kWh.
pub const MICROS: i64 = 1_000_000;

/// The largest price magnitude accepted, per MWh (in whole currency units). Real markets cap
/// well below (ERCOT's offer cap is 5,000 $/MWh); a bigger figure is a typo.
pub const MAX_PRICE_PER_MWH: i64 = 1_000_000;

/// A price in micro-units of the org's currency per MWh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(i64);

/// Why a price string is not a price.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("is empty")]
    Empty,
    #[error("is not a decimal number (digits, an optional sign and at most one '.')")]
    NotDecimal,
    #[error("has more than 6 decimal places")]
    TooPrecise,
    #[error("is beyond ±{MAX_PRICE_PER_MWH} per MWh")]
    OutOfRange,
}

impl Price {
    pub fn from_micros(micros_per_mwh: i64) -> Option<Self> {
        (micros_per_mwh.unsigned_abs() <= (MAX_PRICE_PER_MWH * MICROS) as u64)
            .then_some(Self(micros_per_mwh))
    }

    pub fn micros_per_mwh(self) -> i64 {
        self.0
    }

    /// Parses a decimal string such as `42`, `-3.5` or `1234.567891`: an optional sign, digits,
    /// and at most six decimal places after a `.`. No exponent, no thousands separator, no
    /// surrounding spaces.
    pub fn parse(s: &str) -> Result<Self, PriceError> {
        if s.is_empty() {
            return Err(PriceError::Empty);
        }
        let (negative, rest) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (whole, frac) = rest.split_once('.').unwrap_or((rest, ""));
        let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty())
            || !digits(whole)
            || !digits(frac)
            || (rest.contains('.') && frac.is_empty())
        {
            return Err(PriceError::NotDecimal);
        }
        if frac.len() > 6 {
            return Err(PriceError::TooPrecise);
        }
        // Leading zeros are harmless; anything longer than the bound's digits is out of range
        // before it could overflow.
        let whole = whole.trim_start_matches('0');
        if whole.len() > 7 {
            return Err(PriceError::OutOfRange);
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| PriceError::NotDecimal)?
        };
        let mut micros: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse::<i64>().map_err(|_| PriceError::NotDecimal)?
                * 10_i64.pow(6 - frac.len() as u32)
        };
        micros += whole * MICROS;
        if negative {
            micros = -micros;
        }
        Self::from_micros(micros).ok_or(PriceError::OutOfRange)
    }
}

/// The price as a decimal string with six places (`42.500000`), the form `parse` reads back.
impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:06}",
            abs / MICROS as u64,
            abs % MICROS as u64
        )
    }
}

/// `n / d` rounded to the nearest integer, halves away from zero. `d` must be positive.
pub fn div_round_half_away(n: i128, d: i128) -> i128 {
    debug_assert!(d > 0);
    let q = n / d;
    let r = n % d;
    // |r| * 2 >= d: at or past the half, away from zero.
    if r.abs() * 2 >= d { q + n.signum() } else { q }
}

/// The amount of `kwh_micros` micro-kWh at `price`, in micro-units, by the rule above; `None`
/// if it does not fit an `i64` (a figure no real window reaches).
pub fn amount_micros(kwh_micros: i64, price: Price) -> Option<i64> {
    // kWh × 10⁶ × (currency × 10⁶ / MWh) = kWh × currency × 10¹² / MWh, and 1 MWh = 10³ kWh,
    // so the product is in 10⁻⁹ micro-units.
    let exact = i128::from(kwh_micros) * i128::from(price.0);
    i64::try_from(div_round_half_away(exact, 1_000_000_000)).ok()
}

/// The longest a price holds when no later one follows it.
pub const PRICE_HOLDS: TimeDelta = TimeDelta::hours(1);

/// The price in force for the window starting at `window_start`: the latest price at or before
/// it, if it is less than [`PRICE_HOLDS`] old. Hourly prices so cover the four quarters of
/// their hour; a quarter-hour price covers its own quarter (and later ones of the hour until
/// the next price).
pub fn price_in_force(
    prices: &BTreeMap<DateTime<Utc>, Price>,
    window_start: DateTime<Utc>,
) -> Option<Price> {
    let (at, price) = prices.range(..=window_start).next_back()?;
    (window_start - *at < PRICE_HOLDS).then_some(*price)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prices_parse_from_decimal_strings_exactly() {
        let ok = |s: &str, micros: i64| {
            assert_eq!(Price::parse(s), Ok(Price(micros)), "{s}");
        };
        ok("42", 42_000_000);
        ok("42.5", 42_500_000);
        ok("0.000001", 1);
        ok("-3.25", -3_250_000);
        ok("+7", 7_000_000);
        ok("-.5", -500_000);
        ok("007.100", 7_100_000);
        ok(".5", 500_000);
        ok("1000000", 1_000_000_000_000);
        ok("-1000000.000000", -1_000_000_000_000);
        let bad = |s: &str, e: PriceError| assert_eq!(Price::parse(s), Err(e), "{s}");
        bad("", PriceError::Empty);
        bad("abc", PriceError::NotDecimal);
        bad("1e3", PriceError::NotDecimal);
        bad("1,5", PriceError::NotDecimal);
        bad(" 1", PriceError::NotDecimal);
        bad("1.2.3", PriceError::NotDecimal);
        bad("-", PriceError::NotDecimal);
        bad(".", PriceError::NotDecimal);
        bad("7.", PriceError::NotDecimal);
        bad("NaN", PriceError::NotDecimal);
        bad("1.0000001", PriceError::TooPrecise);
        bad("1000000.000001", PriceError::OutOfRange);
        bad("99999999999999999999999", PriceError::OutOfRange);
    }

    #[test]
    fn the_rounding_rule_is_half_away_from_zero() {
        let check = |n: i128, d: i128, want: i128| {
            assert_eq!(div_round_half_away(n, d), want, "{n}/{d}");
        };
        check(0, 10, 0);
        check(4, 10, 0);
        check(5, 10, 1);
        check(15, 10, 2);
        check(25, 10, 3);
        check(-4, 10, 0);
        check(-5, 10, -1);
        check(-25, 10, -3);
        check(9, 3, 3);
        check(1, 1_000_000_000, 0);
        check(499_999_999, 1_000_000_000, 0);
        check(500_000_000, 1_000_000_000, 1);
    }

    #[test]
    fn amounts_come_from_the_published_kwh_and_round_half_away() {
        let price = |s: &str| Price::parse(s).unwrap();
        let check = |kwh_micros: i64, p: &str, want: i64| {
            assert_eq!(
                amount_micros(kwh_micros, price(p)),
                Some(want),
                "{kwh_micros} at {p}"
            );
        };
        // 1 MWh at 42.50 is 42.50.
        check(1_000 * MICROS, "42.5", 42_500_000);
        // 1 kWh at 42.50/MWh is 0.0425.
        check(MICROS, "42.5", 42_500);
        // 0.000001 kWh at 500/MWh is 0.0000005: exactly half a micro-unit, rounds up.
        check(1, "500", 1);
        // ... and away from zero at a negative price.
        check(1, "-500", -1);
        // Just under the half rounds down.
        check(1, "499.999999", 0);
        // 12.345678 kWh at 61.234567/MWh = 0.755982246…: 755_982 micro-units.
        check(12_345_678, "61.234567", 755_982);
        assert_eq!(amount_micros(i64::MAX, price("1000000")), None);
    }

    #[test]
    fn a_price_holds_until_the_next_for_at_most_an_hour() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let prices: BTreeMap<DateTime<Utc>, Price> = [
            (t("2026-01-01T10:00:00Z"), Price(1)),
            (t("2026-01-01T10:30:00Z"), Price(2)),
            (t("2026-01-01T12:00:00Z"), Price(3)),
        ]
        .into();
        let at = |s: &str| price_in_force(&prices, t(s));
        assert_eq!(at("2026-01-01T09:45:00Z"), None);
        assert_eq!(at("2026-01-01T10:00:00Z"), Some(Price(1)));
        assert_eq!(at("2026-01-01T10:15:00Z"), Some(Price(1)));
        assert_eq!(at("2026-01-01T10:30:00Z"), Some(Price(2)));
        assert_eq!(at("2026-01-01T11:15:00Z"), Some(Price(2)));
        assert_eq!(
            at("2026-01-01T11:30:00Z"),
            None,
            "an hour old: no longer in force"
        );
        assert_eq!(at("2026-01-01T12:45:00Z"), Some(Price(3)));
    }

    proptest! {
        #[test]
        fn a_price_reads_back_from_its_display(micros in -1_000_000_000_000i64..=1_000_000_000_000) {
            let p = Price(micros);
            prop_assert_eq!(Price::parse(&p.to_string()), Ok(p));
        }

        /// The rounded amount is within half a micro-unit of the exact rational amount, and
        /// on the far side of zero from it only when it is zero.
        #[test]
        fn an_amount_is_the_exact_product_rounded(kwh in 0i64..1_000_000_000_000_000, micros in -1_000_000_000_000i64..=1_000_000_000_000) {
            let a = amount_micros(kwh, Price(micros)).unwrap();
            let exact = i128::from(kwh) * i128::from(micros); // in 10⁻⁹ micro-units
            let diff = i128::from(a) * 1_000_000_000 - exact;
            prop_assert!(diff.abs() <= 500_000_000, "{a} vs {exact}e-9");
            if diff.abs() == 500_000_000 {
                // A tie went away from zero.
                prop_assert!(i128::from(a).abs() * 1_000_000_000 > exact.abs());
            }
        }
    }
}

//! Power units parsed at the boundary so inner code never re-checks them.

use serde::{Deserialize, Serialize};

/// A finite, strictly positive power in kilowatts.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Kw(f64);

/// A finite, non-negative power in watts.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Watts(f64);

/// A power value that is NaN, infinite, or out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPower {
    #[error("must be a finite number")]
    NotFinite,
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must not be negative")]
    Negative,
    #[error("must be at most {max}")]
    TooLarge { max: u64 },
}

impl Kw {
    /// 10 GW: far above any fleet, low enough that arithmetic never loses precision.
    pub const MAX: f64 = 10_000_000.0;

    pub fn new(v: f64) -> Result<Self, InvalidPower> {
        if !v.is_finite() {
            Err(InvalidPower::NotFinite)
        } else if v <= 0.0 {
            Err(InvalidPower::NotPositive)
        } else if v > Self::MAX {
            Err(InvalidPower::TooLarge {
                max: Self::MAX as u64,
            })
        } else {
            Ok(Self(v))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }

    pub fn watts(self) -> f64 {
        self.0 * 1000.0
    }
}

impl TryFrom<f64> for Kw {
    type Error = InvalidPower;
    fn try_from(v: f64) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}

impl From<Kw> for f64 {
    fn from(k: Kw) -> f64 {
        k.0
    }
}

impl Watts {
    /// 100 kW per miner is far above any real unit.
    pub const MAX: f64 = 100_000.0;

    pub fn new(v: f64) -> Result<Self, InvalidPower> {
        if !v.is_finite() {
            Err(InvalidPower::NotFinite)
        } else if v < 0.0 {
            Err(InvalidPower::Negative)
        } else if v > Self::MAX {
            Err(InvalidPower::TooLarge {
                max: Self::MAX as u64,
            })
        } else {
            Ok(Self(v))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Watts {
    type Error = InvalidPower;
    fn try_from(v: f64) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}

impl From<Watts> for f64 {
    fn from(w: Watts) -> f64 {
        w.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kw_bounds() {
        assert!(Kw::new(0.001).is_ok());
        assert_eq!(Kw::new(0.0), Err(InvalidPower::NotPositive));
        assert_eq!(Kw::new(-1.0), Err(InvalidPower::NotPositive));
        assert_eq!(Kw::new(f64::NAN), Err(InvalidPower::NotFinite));
        assert_eq!(Kw::new(f64::INFINITY), Err(InvalidPower::NotFinite));
        assert!(matches!(Kw::new(1e9), Err(InvalidPower::TooLarge { .. })));
    }

    #[test]
    fn watts_bounds() {
        assert!(Watts::new(0.0).is_ok());
        assert_eq!(Watts::new(-0.5), Err(InvalidPower::Negative));
        assert_eq!(Watts::new(f64::NAN), Err(InvalidPower::NotFinite));
        assert!(serde_json::from_str::<Watts>("-1").is_err());
    }
}

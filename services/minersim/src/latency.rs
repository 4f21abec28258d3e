//! Slow firmware on purpose: a reply latency drawn per reply from a log-normal distribution
//! given by its median and 99th percentile (`--latency 300,3000`), as real fleets answer (most
//! miners in a few hundred milliseconds, a tail in seconds).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest a median or 99th percentile may be.
const MAX: Duration = Duration::from_secs(600);
/// z of the 99th percentile of the standard normal distribution.
const Z99: f64 = 2.326_347_874;

/// A reply-latency distribution: log-normal with this median and 99th percentile.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Latency {
    /// Median delay before each reply.
    pub p50: Duration,
    /// 99th percentile of the same (at least the median).
    pub p99: Duration,
}

impl Latency {
    /// A distribution with median `p50` and 99th percentile `p99`.
    pub fn new(p50: Duration, p99: Duration) -> Result<Latency, String> {
        if p50.is_zero() || p99 < p50 || p99 > MAX {
            return Err(format!(
                "latency needs 0 < p50 <= p99 <= {} ms, got {} and {} ms",
                MAX.as_millis(),
                p50.as_millis(),
                p99.as_millis()
            ));
        }
        Ok(Latency { p50, p99 })
    }

    /// One delay, at most ten times the 99th percentile (so a freak draw never hangs a client).
    pub fn sample(&self) -> Duration {
        let mu = self.p50.as_secs_f64().ln();
        let sigma = (self.p99.as_secs_f64() / self.p50.as_secs_f64()).ln() / Z99;
        let z = standard_normal();
        let secs = (mu + sigma * z).exp();
        Duration::from_secs_f64(secs.min(self.p99.as_secs_f64() * 10.0))
    }
}

/// A standard normal draw (Box–Muller).
fn standard_normal() -> f64 {
    let u1: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rand::random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl FromStr for Latency {
    type Err = String;

    /// `P50_MS,P99_MS`, for example `300,3000`.
    fn from_str(s: &str) -> Result<Latency, String> {
        let (p50, p99) = s
            .split_once(',')
            .ok_or_else(|| format!("expected P50_MS,P99_MS such as 300,3000, got {s:?}"))?;
        let ms = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{v:?} is not a whole number of milliseconds"))
        };
        Latency::new(ms(p50)?, ms(p99)?)
    }
}

impl TryFrom<String> for Latency {
    type Error = String;
    fn try_from(s: String) -> Result<Latency, String> {
        s.parse()
    }
}

impl From<Latency> for String {
    fn from(l: Latency) -> String {
        l.to_string()
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.p50.as_millis(), self.p99.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let l: Latency = "300,3000".parse().unwrap();
        assert_eq!(
            (l.p50, l.p99),
            (Duration::from_millis(300), Duration::from_millis(3000))
        );
        assert_eq!(l.to_string(), "300,3000");
        for bad in ["300", "0,10", "500,100", "x,1", "1,700000"] {
            assert!(bad.parse::<Latency>().is_err(), "{bad}");
        }
    }

    #[test]
    fn draws_have_the_given_median_and_tail() {
        let l: Latency = "300,3000".parse().unwrap();
        let mut draws: Vec<Duration> = (0..20_000).map(|_| l.sample()).collect();
        draws.sort();
        let q = |p: f64| draws[((draws.len() as f64 * p) as usize).min(draws.len() - 1)];
        let (p50, p99) = (q(0.50).as_secs_f64(), q(0.99).as_secs_f64());
        assert!((0.27..0.33).contains(&p50), "median {p50}");
        assert!((2.4..3.7).contains(&p99), "p99 {p99}");
    }
}

//! Which sites' agents have gone silent (issue 11): a site is silent when neither a result nor
//! telemetry came from it for `silent_after`. A silent site's targets are not charged attempts
//! for the agent's absence (their batches wait in JetStream for the agent's return, and JetStream
//! redelivers what a dead agent held), and the operator is told: a log line with the site when
//! it goes silent and when it is back, and the `ebb_reconciler_site_silent{site}` gauge.
//!
//! Pure and clock-free: the caller passes `now`. A site not heard from since the leader's term
//! began is measured from the term's start, so a new leader gives every agent a full grace.

use ebb_domain::SiteCode;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Liveness {
    silent_after: Duration,
    since: Instant,
    heard: HashMap<SiteCode, Instant>,
    /// Sites reported silent and not yet back.
    silent: HashSet<SiteCode>,
}

/// A change in a site's liveness, for the log and the gauge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Silent(SiteCode),
    Back(SiteCode),
}

impl Liveness {
    pub fn new(silent_after: Duration, now: Instant) -> Self {
        Self {
            silent_after,
            since: now,
            heard: HashMap::new(),
            silent: HashSet::new(),
        }
    }

    /// A result or telemetry from `site` arrived at `now`.
    pub fn heard(&mut self, site: &SiteCode, now: Instant) {
        match self.heard.get_mut(site) {
            Some(at) => *at = (*at).max(now),
            None => {
                self.heard.insert(site.clone(), now);
            }
        }
    }

    /// Whether `site` has been silent for longer than the limit at `now`.
    pub fn is_silent(&self, site: &SiteCode, now: Instant) -> bool {
        let last = self.heard.get(site).copied().unwrap_or(self.since);
        now.saturating_duration_since(last) > self.silent_after
    }

    /// The sites of `sites` that went silent or came back since the last sweep.
    pub fn sweep<'a>(
        &mut self,
        sites: impl IntoIterator<Item = &'a SiteCode>,
        now: Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for site in sites {
            let silent = self.is_silent(site, now);
            if silent && self.silent.insert(site.clone()) {
                changes.push(Change::Silent(site.clone()));
            } else if !silent && self.silent.remove(site) {
                changes.push(Change::Back(site.clone()));
            }
        }
        changes
    }

    /// How long `site` has been silent at `now` (zero if it is not).
    pub fn silent_for(&self, site: &SiteCode, now: Instant) -> Duration {
        let last = self.heard.get(site).copied().unwrap_or(self.since);
        now.saturating_duration_since(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(s: &str) -> SiteCode {
        SiteCode::parse(s).unwrap()
    }

    #[test]
    fn a_site_goes_silent_after_the_limit_and_comes_back_when_heard() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let (a, b) = (site("site-a"), site("site-b"));
        let mut l = Liveness::new(Duration::from_secs(30), t0);
        // A new term gives every site a full grace, heard or not.
        assert!(!l.is_silent(&a, s(30)));
        assert!(l.sweep([&a, &b], s(30)).is_empty());
        l.heard(&a, s(25));
        assert!(l.is_silent(&b, s(31)) && !l.is_silent(&a, s(31)));
        assert_eq!(l.sweep([&a, &b], s(31)), vec![Change::Silent(b.clone())]);
        // Reported once, not on every sweep.
        assert!(l.sweep([&a, &b], s(40)).is_empty());
        assert_eq!(l.silent_for(&b, s(40)), Duration::from_secs(40));
        l.heard(&b, s(41));
        // An older message arriving late does not move the clock back.
        l.heard(&b, s(10));
        assert_eq!(l.sweep([&a, &b], s(50)), vec![Change::Back(b.clone())]);
        assert_eq!(l.sweep([&a, &b], s(56)), vec![Change::Silent(a)]);
    }
}

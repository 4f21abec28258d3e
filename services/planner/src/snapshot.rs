//! The planner's live fleet snapshot (issue 12, item 8): every device of an org with what
//! selection needs, held in memory so that preview and Start never read the whole fleet per
//! request, and shared by concurrent requests (readers share one lock; a request never copies
//! the fleet unless its scope names several sites).
//!
//! It is built from the database on an org's first request and again when older than
//! `snapshot_max_age_ms` (one rebuild at a time; concurrent requests wait for it and share it).
//! Between rebuilds it is fed by telemetry (`ebb.telemetry.*`, [`Snapshot::apply_telemetry`]):
//! a sample newer than the one held replaces it, exactly as `device_state` would keep it. The
//! planner's own Starts mark their devices busy at once. What only the database knows (a device
//! registered, put in maintenance or freed by an event that ended) is seen at the next rebuild;
//! a refusal or a lost race is never decided on an old snapshot: the caller rebuilds and tries
//! again ([`OrgFleet::built`]). On Start the database has the last word: the exclusivity index,
//! and a check of the selection against the devices in maintenance in the Start's transaction.

use chrono::{DateTime, Utc};
use ebb_bus::TelemetryBatch;
use ebb_domain::confirm::Sample;
use ebb_domain::selection::Candidate;
use ebb_domain::{DeviceId, OrgId, SiteCode, SiteId};
use ebb_store::{PgPool, StoreError, fleet};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// One org's devices as selection sees them.
#[derive(Debug)]
pub struct OrgFleet {
    /// Sorted by site, so a one-site scope is a slice.
    candidates: Vec<Candidate>,
    /// When each candidate's held sample (or unreachable report) was taken.
    sampled_at: Vec<Option<DateTime<Utc>>>,
    index: HashMap<DeviceId, usize>,
    sites: HashMap<SiteId, Range<usize>>,
    /// When this was read from the database.
    pub built: Instant,
}

impl OrgFleet {
    /// Devices whose latest report was unreachable are held without a time, so the next sample
    /// that arrives replaces it (live telemetry is never older than what was written before it).
    fn new(mut candidates: Vec<Candidate>) -> Self {
        candidates.sort_by_key(|c| (c.site_id, c.device_id));
        let sampled_at = candidates
            .iter()
            .map(|c| c.sample.map(|s| s.sampled_at))
            .collect();
        let index = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (c.device_id, i))
            .collect();
        let mut sites: HashMap<SiteId, Range<usize>> = HashMap::new();
        for (i, c) in candidates.iter().enumerate() {
            sites
                .entry(c.site_id)
                .and_modify(|r| r.end = i + 1)
                .or_insert(i..i + 1);
        }
        Self {
            candidates,
            sampled_at,
            index,
            sites,
            built: Instant::now(),
        }
    }

    /// Runs `f` over the candidates in `scope` (every site when empty): a slice of the snapshot
    /// itself when the scope is the org or one site, a copy only for several sites.
    pub fn with_scope<R>(&self, scope: &[SiteId], f: impl FnOnce(&[Candidate]) -> R) -> R {
        match scope {
            [] => f(&self.candidates),
            [one] => f(self
                .sites
                .get(one)
                .map_or(&[][..], |r| &self.candidates[r.clone()])),
            many => {
                let mut picked = Vec::new();
                for s in many {
                    if let Some(r) = self.sites.get(s) {
                        picked.extend_from_slice(&self.candidates[r.clone()]);
                    }
                }
                f(&picked)
            }
        }
    }

    /// Marks devices as held by a live event (after this planner's own Start).
    fn mark_busy(&mut self, devices: &[DeviceId]) {
        for d in devices {
            if let Some(&i) = self.index.get(d) {
                self.candidates[i].in_active_event = true;
            }
        }
    }

    /// Applies one sample of a device of `site`; returns whether it changed what is held.
    fn apply(
        &mut self,
        site: SiteId,
        device: DeviceId,
        at: DateTime<Utc>,
        sample: Option<Sample>,
    ) -> bool {
        let Some(&i) = self.index.get(&device) else {
            return false;
        };
        // An agent reports only its own site's devices.
        if self.candidates[i].site_id != site {
            return false;
        }
        if self.sampled_at[i].is_some_and(|held| held >= at) {
            return false;
        }
        self.sampled_at[i] = Some(at);
        self.candidates[i].sample = sample;
        true
    }
}

/// The snapshot of every org the planner was asked about.
#[derive(Debug)]
pub struct Snapshot {
    orgs: RwLock<HashMap<OrgId, Arc<RwLock<OrgFleet>>>>,
    /// Site code → (org, site): telemetry names its site in its subject.
    sites: RwLock<HashMap<SiteCode, (OrgId, SiteId)>>,
    /// One rebuild at a time.
    rebuilding: tokio::sync::Mutex<()>,
    max_age: Duration,
    /// Fleets read from the database so far.
    builds: std::sync::atomic::AtomicU64,
}

impl Snapshot {
    pub fn new(max_age: Duration) -> Self {
        Self {
            orgs: RwLock::default(),
            sites: RwLock::default(),
            rebuilding: tokio::sync::Mutex::new(()),
            max_age,
            builds: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many times a fleet was read from the database.
    pub fn builds(&self) -> u64 {
        self.builds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `org`'s fleet: the held one if it is younger than the max age (and than `not_before`,
    /// when a caller must not decide on what it already saw), else rebuilt from the database.
    pub async fn org(
        &self,
        pool: &PgPool,
        org: OrgId,
        not_before: Option<Instant>,
    ) -> Result<Arc<RwLock<OrgFleet>>, StoreError> {
        let fresh = |f: &Arc<RwLock<OrgFleet>>| {
            let built = read(f).built;
            built.elapsed() < self.max_age && not_before.is_none_or(|t| built > t)
        };
        if let Some(f) = self.held(org).filter(fresh) {
            return Ok(f);
        }
        let _one = self.rebuilding.lock().await;
        // Someone else may have rebuilt it while this request waited.
        if let Some(f) = self.held(org).filter(fresh) {
            return Ok(f);
        }
        let built = Arc::new(RwLock::new(load(pool, org).await?));
        self.builds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sites = fleet::sites(pool, org).await?;
        {
            let mut codes = write_map(&self.sites);
            codes.retain(|_, (o, _)| *o != org);
            for s in sites {
                codes.insert(s.code, (org, s.id));
            }
        }
        self.orgs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(org, built.clone());
        Ok(built)
    }

    fn held(&self, org: OrgId) -> Option<Arc<RwLock<OrgFleet>>> {
        self.orgs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&org)
            .cloned()
    }

    /// Marks devices of `org` busy after a Start persisted them.
    pub fn mark_busy(&self, org: OrgId, devices: &[DeviceId]) {
        if let Some(f) = self.held(org) {
            write(&f).mark_busy(devices);
        }
    }

    /// Forgets `org`'s fleet, so the next request reads it again (after a registration).
    pub fn invalidate(&self, org: OrgId) {
        self.orgs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&org);
    }

    /// Applies one telemetry batch that arrived on `subject_site`'s subject (the body's site is
    /// not trusted). Samples for devices of other sites are ignored. Returns how many samples
    /// changed what is held.
    pub fn apply_telemetry(&self, subject_site: &SiteCode, batch: &TelemetryBatch) -> usize {
        let Some((org, site)) = self
            .sites
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(subject_site)
            .copied()
        else {
            return 0;
        };
        let Some(f) = self.held(org) else { return 0 };
        // An agent clock running ahead must not freeze a device in the future.
        let latest = Utc::now() + chrono::Duration::seconds(5);
        let mut fleet = write(&f);
        let mut changed = 0;
        for s in &batch.samples {
            let Some(at) = DateTime::from_timestamp_millis(s.sampled_at_ms) else {
                continue;
            };
            let at = at.min(latest);
            let valid = |v: Option<f64>| v.filter(|x| x.is_finite() && *x >= 0.0);
            let sample = match (s.reachable, valid(s.power_w), valid(s.hashrate_ths)) {
                (true, Some(power_w), Some(hashrate_ths)) => Some(Sample {
                    power_w,
                    hashrate_ths,
                    sampled_at: at,
                }),
                _ => None,
            };
            if fleet.apply(site, s.device_id, at, sample) {
                changed += 1;
            }
        }
        changed
    }
}

/// Reads `org`'s fleet from the database.
async fn load(pool: &PgPool, org: OrgId) -> Result<OrgFleet, StoreError> {
    Ok(OrgFleet::new(fleet::candidates(pool, org, &[]).await?))
}

pub fn read(f: &RwLock<OrgFleet>) -> std::sync::RwLockReadGuard<'_, OrgFleet> {
    f.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(f: &RwLock<OrgFleet>) -> std::sync::RwLockWriteGuard<'_, OrgFleet> {
    f.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_map<K, V>(m: &RwLock<HashMap<K, V>>) -> std::sync::RwLockWriteGuard<'_, HashMap<K, V>> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_bus::TelemetrySample;
    use ebb_domain::Capabilities;
    use uuid::Uuid;

    fn candidate(n: u128, site: u128) -> Candidate {
        Candidate {
            device_id: DeviceId(Uuid::from_u128(n)),
            site_id: SiteId(Uuid::from_u128(1000 + site)),
            capabilities: Capabilities::default(),
            maintenance: false,
            in_active_event: false,
            priority: 0,
            sample: None,
        }
    }

    #[test]
    fn scopes_are_slices_and_samples_only_move_forward() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut first = candidate(1, 2);
        first.sample = Some(Sample {
            power_w: 1.0,
            hashrate_ths: 1.0,
            sampled_at: t0,
        });
        let cs = vec![first, candidate(2, 1), candidate(3, 2)];
        let mut f = OrgFleet::new(cs);
        let site1 = SiteId(Uuid::from_u128(1001));
        let site2 = SiteId(Uuid::from_u128(1002));
        assert_eq!(f.with_scope(&[], |c| c.len()), 3);
        assert_eq!(f.with_scope(&[site2], |c| c.len()), 2);
        assert_eq!(f.with_scope(&[site1, site2], |c| c.len()), 3);
        assert_eq!(f.with_scope(&[SiteId(Uuid::nil())], |c| c.len()), 0);

        let d1 = DeviceId(Uuid::from_u128(1));
        let s = |at: DateTime<Utc>| Sample {
            power_w: 3000.0,
            hashrate_ths: 100.0,
            sampled_at: at,
        };
        // Older than held: ignored. Another site's device: ignored. Newer: applied.
        assert!(!f.apply(site2, d1, t0 - chrono::Duration::seconds(1), Some(s(t0))));
        assert!(!f.apply(site1, d1, t0 + chrono::Duration::seconds(1), Some(s(t0))));
        let later = t0 + chrono::Duration::seconds(5);
        assert!(f.apply(site2, d1, later, Some(s(later))));
        assert_eq!(f.with_scope(&[site2], |c| c[0].sample), Some(s(later)));
        f.mark_busy(&[d1]);
        assert!(f.with_scope(&[site2], |c| c[0].in_active_event));
    }

    #[test]
    fn telemetry_is_applied_only_for_its_subjects_site() {
        let snap = Snapshot::new(Duration::from_secs(60));
        let org = OrgId(Uuid::from_u128(9));
        let site = SiteId(Uuid::from_u128(1001));
        let code = SiteCode::parse("a").unwrap();
        let other = SiteCode::parse("b").unwrap();
        snap.orgs.write().unwrap().insert(
            org,
            Arc::new(RwLock::new(OrgFleet::new(vec![candidate(1, 1)]))),
        );
        snap.sites
            .write()
            .unwrap()
            .insert(code.clone(), (org, site));
        snap.sites
            .write()
            .unwrap()
            .insert(other.clone(), (org, SiteId(Uuid::from_u128(1002))));
        let batch = |power: f64| TelemetryBatch {
            site: code.clone(),
            cycle: 1,
            samples: vec![TelemetrySample {
                device_id: DeviceId(Uuid::from_u128(1)),
                reachable: true,
                power_w: Some(power),
                hashrate_ths: Some(90.0),
                sampled_at_ms: Utc::now().timestamp_millis(),
            }],
            dropped_invalid: 0,
        };
        // Site b's agent cannot report site a's miner, whatever its body says.
        assert_eq!(snap.apply_telemetry(&other, &batch(2000.0)), 0);
        assert_eq!(snap.apply_telemetry(&code, &batch(f64::NAN)), 1);
        let f = snap.held(org).unwrap();
        assert_eq!(
            read(&f).candidates[0].sample,
            None,
            "an impossible value is no sample"
        );
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(snap.apply_telemetry(&code, &batch(2500.0)), 1);
        assert_eq!(
            read(&f).candidates[0].sample.map(|s| s.power_w),
            Some(2500.0)
        );
    }
}

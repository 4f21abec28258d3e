//! The gateway under abuse: what keeps a flood of requests, good or bad, from exhausting the
//! process or the PostgreSQL pool.
//!
//! - **Rate limit per key.** Every request with a well-formed bearer token spends from a bucket
//!   keyed by the token's hash, before anything else is done for it: a key over its rate gets 429
//!   with `Retry-After` and costs no lookup. A token maps to one key, so this is the key's rate;
//!   keying by the whole token (not its public prefix) means nobody can spend a key's rate
//!   without holding its secret.
//! - **A cache of key lookups**, found or not, keyed by the token's hash and kept
//!   `key_cache_ttl_s`: a flood that repeats bad tokens is answered from memory, and concurrent
//!   requests with one token share one lookup. Revoking or changing a key takes effect within
//!   that time.
//! - **Bounded lookups.** Lookups that do reach PostgreSQL hold one of half the pool's
//!   connections at most, and wait at most [`LOOKUP_WAIT`] for one (else 503 `overloaded`): a
//!   flood of distinct bad tokens leaves the other half to the requests of valid keys, which
//!   are answered from the cache.
//! - **A global limit on requests in flight** under `/v1`: past `max_in_flight`, a request is
//!   shed at once with 503 `overloaded` and `Retry-After`, never queued.
//!
//! The maps are bounded ([`Generations`]) so a flood of distinct tokens costs bounded memory; an
//! entry pushed out by such a flood only costs a later lookup, or gives a key a fresh burst.

use crate::auth::{self, Principal};
use crate::problem::{Kind, Problem};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ebb_store::PgPool;
use ebb_store::fleet::ApiKeyRow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

/// How long a request waits for a lookup connection before it is shed.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// A map bounded to `capacity` entries in two generations: inserts go to the young one; when it
/// holds half the capacity it becomes the old one and the previous old one is dropped. A hit in
/// the old generation moves the entry back to the young one, so what is used stays. O(1) per
/// operation, no background task.
#[derive(Debug)]
pub struct Generations<K, V> {
    half: usize,
    young: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K: Hash + Eq, V> Generations<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            half: (capacity / 2).max(1),
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }

    /// The entry for `key`, if it is still held.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V>
    where
        K: Clone,
    {
        if !self.young.contains_key(key) {
            let v = self.old.remove(key)?;
            self.insert(key.clone(), v);
        }
        self.young.get_mut(key)
    }

    pub fn insert(&mut self, key: K, value: V) {
        if self.young.len() >= self.half && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A rate: `per_s` requests a second sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_s: u32,
    pub burst: u32,
}

impl Rate {
    fn interval(self) -> Duration {
        Duration::from_secs(1) / self.per_s.max(1)
    }

    /// GCRA: `tat` is the theoretical arrival time of the next request at the sustained rate. A
    /// request at `now` is allowed while `tat` is at most `burst - 1` intervals ahead of it;
    /// otherwise the answer is how long until it would be.
    pub fn admit(self, tat: &mut Instant, now: Instant) -> Result<(), Duration> {
        let interval = self.interval();
        let tolerance = interval * self.burst.max(1).saturating_sub(1);
        let start = (*tat).max(now);
        let ahead = start - now;
        if ahead > tolerance {
            return Err(ahead - tolerance);
        }
        *tat = start + interval;
        Ok(())
    }
}

/// Counters the tests and the benchmark read; each also feeds a metric.
#[derive(Debug, Default)]
pub struct GuardStats {
    /// Key lookups that reached PostgreSQL.
    pub key_lookups: AtomicU64,
    lookups_in_flight: AtomicU64,
    /// The most lookups that were ever in flight at once.
    pub max_lookups_in_flight: AtomicU64,
    pub rate_limited: AtomicU64,
    pub shed: AtomicU64,
}

/// How the guard is set up; from the gateway's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardSettings {
    pub rate: Rate,
    pub max_in_flight: usize,
    pub key_cache_ttl: Duration,
    pub key_cache_size: usize,
}

type TokenHash = [u8; 32];

/// A cached lookup: when it was started, and its result once there is one (`None`: no key).
#[derive(Clone)]
struct Lookup {
    at: Instant,
    row: Arc<OnceCell<Option<ApiKeyRow>>>,
}

/// The rate limiter, key cache and limits of one gateway.
pub struct Guard {
    settings: GuardSettings,
    buckets: Mutex<Generations<TokenHash, Instant>>,
    cache: Mutex<Generations<TokenHash, Lookup>>,
    lookups: Semaphore,
    in_flight: Arc<Semaphore>,
    pub stats: Arc<GuardStats>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// A guard whose lookups use at most half of `pool_size` connections (at least one).
    pub fn new(settings: GuardSettings, pool_size: u32) -> Self {
        Self {
            settings,
            buckets: Mutex::new(Generations::new(settings.key_cache_size)),
            cache: Mutex::new(Generations::new(settings.key_cache_size)),
            lookups: Semaphore::new((pool_size as usize / 2).max(1)),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            stats: Arc::default(),
        }
    }

    /// Who `token` acts as: rate-limited, then answered from the cache or one bounded lookup.
    pub async fn authenticate(&self, pool: &PgPool, token: &str) -> Result<Principal, Problem> {
        let unauth = || Problem::new(Kind::Unauthenticated, "a valid bearer API key is required");
        let (prefix, secret) = ebb_store::keys::parse(token).ok_or_else(unauth)?;
        let hash: TokenHash = ebb_store::keys::hash(token)
            .try_into()
            .map_err(Problem::internal)?;
        let now = Instant::now();
        self.admit(hash, now)?;
        let lookup = self.cached(hash, now);
        let row = lookup
            .row
            .get_or_try_init(|| self.look_up(pool, prefix, secret))
            .await?;
        row.as_ref()
            .and_then(|r| auth::verify(r, secret, chrono::Utc::now()))
            .ok_or_else(unauth)
    }

    fn admit(&self, hash: TokenHash, now: Instant) -> Result<(), Problem> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let verdict = match buckets.get_mut(&hash) {
            Some(tat) => self.settings.rate.admit(tat, now),
            None => {
                let mut tat = now;
                let verdict = self.settings.rate.admit(&mut tat, now);
                buckets.insert(hash, tat);
                verdict
            }
        };
        drop(buckets);
        verdict.map_err(|wait| {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(ebb_obs::names::GATEWAY_RATE_LIMITED).increment(1);
            Problem::new(
                Kind::RateLimited,
                format!(
                    "this key may send {} requests a second ({} at once)",
                    self.settings.rate.per_s, self.settings.rate.burst
                ),
            )
            .retry_after(wait.as_secs_f64().ceil() as u64)
        })
    }

    /// The lookup of `hash` younger than the cache's time to live, or a new one.
    fn cached(&self, hash: TokenHash, now: Instant) -> Lookup {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = cache.get_mut(&hash)
            && now.duration_since(l.at) < self.settings.key_cache_ttl
        {
            return l.clone();
        }
        let l = Lookup {
            at: now,
            row: Arc::new(OnceCell::new()),
        };
        cache.insert(hash, l.clone());
        l
    }

    /// Forgets every cached lookup, so a key revoked here is refused at once (other gateways
    /// refuse it within their cache's time to live).
    pub fn forget_keys(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        *cache = Generations::new(self.settings.key_cache_size);
    }

    async fn look_up(
        &self,
        pool: &PgPool,
        prefix: &str,
        secret: &str,
    ) -> Result<Option<ApiKeyRow>, Problem> {
        let _permit = tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| self.shed("too many key lookups are waiting"))?;
        let stats = &self.stats;
        stats.key_lookups.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ebb_obs::names::GATEWAY_KEY_LOOKUPS).increment(1);
        let now = stats.lookups_in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        stats
            .max_lookups_in_flight
            .fetch_max(now, Ordering::Relaxed);
        let row = ebb_store::fleet::api_key_by_prefix(pool, prefix).await;
        // Its last use, once per lookup (so once per cache lifetime), never once per request.
        if let Ok(Some(r)) = &row
            && auth::verify(r, secret, chrono::Utc::now()).is_some()
            && let Err(e) = ebb_store::access::touch_key(pool, r.id).await
        {
            tracing::warn!(error = ?e, "recording a key's last use");
        }
        stats.lookups_in_flight.fetch_sub(1, Ordering::Relaxed);
        // An error is not cached: the cell stays empty and the next request tries again.
        row.map_err(Problem::internal)
    }

    fn shed(&self, detail: &str) -> Problem {
        self.stats.shed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ebb_obs::names::GATEWAY_SHED).increment(1);
        Problem::new(Kind::Overloaded, detail).retry_after(1)
    }
}

/// Middleware: serves a request if fewer than `max_in_flight` are, else sheds it at once.
pub async fn limit_in_flight(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    match guard.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => guard
            .shed("the gateway is serving as many requests as it may")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let rate = Rate {
            per_s: 10,
            burst: 3,
        };
        let t0 = Instant::now();
        let mut tat = t0;
        for _ in 0..3 {
            assert_eq!(rate.admit(&mut tat, t0), Ok(()));
        }
        assert_eq!(
            rate.admit(&mut tat, t0),
            Err(Duration::from_millis(100)),
            "the fourth at once waits one interval"
        );
        // A refused request costs nothing: after one interval exactly one more goes through.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(rate.admit(&mut tat, t1), Ok(()));
        assert!(rate.admit(&mut tat, t1).is_err());
        // Idle for long: the burst is back, no more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(rate.admit(&mut tat, t2), Ok(()));
        }
        assert!(rate.admit(&mut tat, t2).is_err());
    }

    #[test]
    fn a_burst_of_one_is_the_rate_alone() {
        let rate = Rate { per_s: 2, burst: 1 };
        let t0 = Instant::now();
        let mut tat = t0;
        assert_eq!(rate.admit(&mut tat, t0), Ok(()));
        assert_eq!(rate.admit(&mut tat, t0), Err(Duration::from_millis(500)));
        assert_eq!(
            rate.admit(&mut tat, t0 + Duration::from_millis(500)),
            Ok(())
        );
    }

    #[test]
    fn generations_stay_bounded_and_keep_what_is_used() {
        let mut g = Generations::new(4);
        for k in 0..100 {
            g.insert(k, k);
            // Key 0 is used all along: it is never pushed out.
            assert_eq!(g.get_mut(&0).copied(), Some(0));
            assert!(g.len() <= 4, "{} entries", g.len());
        }
        assert!(g.get_mut(&1).is_none(), "an unused old entry is gone");
        assert_eq!(g.get_mut(&99).copied(), Some(99));
    }
}

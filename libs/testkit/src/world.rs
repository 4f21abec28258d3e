//! One test world: an org with sites, racks, miners (hashing with fresh telemetry when asked) and
//! API keys of each role, written through the store's own functions into a [`TestDb`].
//!
//! Every test that needs tenants and a fleet declares it here instead of repeating the inserts,
//! so a change to how an org, a site, a device or a key is created is made once:
//!
//! ```no_run
//! # async fn demo() -> ebb_testkit::Result<()> {
//! use ebb_bus::Role;
//! use ebb_testkit::{TestDb, world::{Key, World}};
//!
//! let db = TestDb::new().await?;
//! let world = World::builder()
//!     .site("site-a", |s| s.miners(4).watts(3000.0).hashing().rack("r1", 0..2))
//!     .site("site-b", |s| s.ramp_limit(1_000.0))
//!     .api_key(Key::new("limited", Role::Operator).sites(&["site-a"]))
//!     .build(&db)
//!     .await?;
//! let miners = &world.site("site-a").devices;
//! let bearer = world.token(Role::Viewer);
//! # let _ = (miners, bearer); Ok(()) }
//! ```
//!
//! Miners are listed in the order they were declared (index `i` of a site is its `i`-th miner), so
//! a per-miner setting such as [`SiteBuilder::hashrate_each`] names the same device a test then
//! picks by index. Their addresses (`10.<site>.<i / 256>.<i % 256>`) are never contacted: tests
//! that drive miners put a scripted or simulated agent in front of them.

use std::collections::BTreeMap;
use std::ops::Range;

use chrono::{DateTime, Utc};
use ebb_bus::Role;
use ebb_domain::{Capabilities, DeviceId, OrgId, RackId, SiteCode, SiteId};
use ebb_store::fleet::{self, NewApiKey, NewDevice, Site, TelemetryRow};
use uuid::Uuid;

use crate::{Error, Result, TestDb};

/// A value per miner, from its index in its site.
type PerMiner = Box<dyn Fn(usize) -> f64 + Send + Sync>;

/// Power of a miner when nothing else is said, in watts.
pub const DEFAULT_WATTS: f64 = 3000.0;
/// Hashrate of a hashing miner when nothing else is said, in TH/s.
pub const DEFAULT_HASHRATE_THS: f64 = 100.0;

/// The keys every world has: one per role, reaching every site, named after the role.
const ROLES: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

/// A world as written: ids of everything, and the bearer token of every key.
#[derive(Debug)]
pub struct World {
    pub org: OrgId,
    /// In the order they were declared.
    pub sites: Vec<WorldSite>,
    keys: BTreeMap<String, ApiKey>,
}

/// One site of a [`World`].
#[derive(Debug)]
pub struct WorldSite {
    /// The store's row: id, org, code, name, ramp limit.
    pub site: Site,
    /// Its miners, in declaration order.
    pub devices: Vec<DeviceId>,
    /// Its racks by name.
    pub racks: BTreeMap<String, RackId>,
}

/// A stored API key and the token to present it with.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    /// `Bearer` this.
    pub token: String,
    /// `None`: every site of the org.
    pub site_ids: Option<Vec<SiteId>>,
}

impl World {
    /// An empty declaration: org `acme`, no sites, the three default keys.
    pub fn builder() -> WorldBuilder {
        WorldBuilder {
            org: "acme".into(),
            sites: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// The site with this code.
    ///
    /// # Panics
    /// If the world has no such site: the test asked for something it did not declare.
    pub fn site(&self, code: &str) -> &WorldSite {
        self.sites
            .iter()
            .find(|s| s.site.code.as_str() == code)
            .unwrap_or_else(|| panic!("the world has no site {code}"))
    }

    /// Every miner of every site, site by site in declaration order.
    pub fn devices(&self) -> Vec<DeviceId> {
        self.sites
            .iter()
            .flat_map(|s| s.devices.iter().copied())
            .collect()
    }

    /// The key with this name; the default keys are named `viewer`, `operator` and `admin`.
    ///
    /// # Panics
    /// If the world has no such key.
    pub fn key(&self, name: &str) -> &ApiKey {
        self.keys
            .get(name)
            .unwrap_or_else(|| panic!("the world has no api key {name}"))
    }

    /// The bearer token of the org-wide key of `role`.
    pub fn token(&self, role: Role) -> &str {
        &self.key(role.as_str()).token
    }
}

/// Declares a [`World`]; nothing is written before [`WorldBuilder::build`].
pub struct WorldBuilder {
    org: String,
    sites: Vec<SiteBuilder>,
    keys: Vec<Key>,
}

impl std::fmt::Debug for WorldBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorldBuilder")
            .field("org", &self.org)
            .field("sites", &self.sites)
            .field("keys", &self.keys)
            .finish()
    }
}

impl WorldBuilder {
    /// The org's name (default `acme`).
    pub fn org(mut self, name: &str) -> Self {
        self.org = name.into();
        self
    }

    /// Adds a site with this code, shaped by `f` (by default: no miners, no ramp limit).
    pub fn site(mut self, code: &str, f: impl FnOnce(SiteBuilder) -> SiteBuilder) -> Self {
        self.sites.push(f(SiteBuilder::new(code)));
        self
    }

    /// Adds a key besides the three defaults.
    pub fn api_key(mut self, key: Key) -> Self {
        self.keys.push(key);
        self
    }

    /// Migrates `db` (a no-op when it is already) and writes the world into it through the
    /// store's functions: the org, each site with its miners and racks, the telemetry of hashing
    /// sites (sampled now), then the keys.
    pub async fn build(self, db: &TestDb) -> Result<World> {
        let keys: Vec<Key> = ROLES
            .iter()
            .map(|r| Key::new(r.as_str(), *r))
            .chain(self.keys)
            .collect();
        let mut names = std::collections::BTreeSet::new();
        if let Some(twice) = keys.iter().find(|k| !names.insert(k.name.as_str())) {
            return Err(Error::World(format!(
                "api key {} is declared twice",
                twice.name
            )));
        }
        let pool = db.pool();
        ebb_store::migrate(pool).await.map_err(Error::Migrate)?;
        let org = fleet::create_org(pool, &self.org)
            .await
            .map_err(|e| Error::store("creating the org", e))?;
        let mut sites = Vec::with_capacity(self.sites.len());
        for (k, spec) in self.sites.iter().enumerate() {
            sites.push(spec.write(db, org, k).await?);
        }
        let mut written = BTreeMap::new();
        for key in keys {
            written.insert(key.name.clone(), key.write(db, org, &sites).await?);
        }
        Ok(World {
            org,
            sites,
            keys: written,
        })
    }
}

/// Declares one site of a world.
pub struct SiteBuilder {
    code: String,
    name: Option<String>,
    ramp_limit_kw_per_min: Option<f64>,
    miners: usize,
    make: String,
    model: String,
    capabilities: Capabilities,
    power_w: PerMiner,
    hashrate_ths: PerMiner,
    hashing: bool,
    racks: Vec<(String, Range<usize>)>,
}

impl std::fmt::Debug for SiteBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteBuilder")
            .field("code", &self.code)
            .field("miners", &self.miners)
            .field("hashing", &self.hashing)
            .field("racks", &self.racks)
            .finish_non_exhaustive()
    }
}

impl SiteBuilder {
    fn new(code: &str) -> Self {
        Self {
            code: code.into(),
            name: None,
            ramp_limit_kw_per_min: None,
            miners: 0,
            make: "AntMiner".into(),
            model: "S19".into(),
            capabilities: Capabilities {
                curtail_full: true,
                ..Default::default()
            },
            power_w: Box::new(|_| DEFAULT_WATTS),
            hashrate_ths: Box::new(|_| DEFAULT_HASHRATE_THS),
            hashing: false,
            racks: Vec::new(),
        }
    }

    /// The site's display name (default: its code).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How many miners the site has (default none).
    pub fn miners(mut self, n: usize) -> Self {
        self.miners = n;
        self
    }

    /// The make and model every miner reports (default AntMiner S19).
    pub fn model(mut self, make: &str, model: &str) -> Self {
        self.make = make.into();
        self.model = model.into();
        self
    }

    /// What every miner can do (default: curtail fully, nothing else).
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Every miner's nominal power and, when hashing, sampled power (default 3 kW).
    pub fn watts(self, w: f64) -> Self {
        self.power_each(move |_| w)
    }

    /// Each miner's nominal and sampled power, by its index.
    pub fn power_each(mut self, f: impl Fn(usize) -> f64 + Send + Sync + 'static) -> Self {
        self.power_w = Box::new(f);
        self
    }

    /// Each miner's sampled hashrate in TH/s, by its index (default 100): at equal power, a lower
    /// hashrate is a less efficient miner, curtailed first.
    pub fn hashrate_each(mut self, f: impl Fn(usize) -> f64 + Send + Sync + 'static) -> Self {
        self.hashrate_ths = Box::new(f);
        self
    }

    /// Every miner is reachable and hashing: a sample taken now is ingested for each, so the
    /// planner can select them at once. Without it the site has no telemetry.
    pub fn hashing(mut self) -> Self {
        self.hashing = true;
        self
    }

    /// The site's restore ramp limit in kW per minute (default none).
    pub fn ramp_limit(mut self, kw_per_min: f64) -> Self {
        self.ramp_limit_kw_per_min = Some(kw_per_min);
        self
    }

    /// A rack holding the site's miners with these indexes.
    pub fn rack(mut self, name: &str, miners: Range<usize>) -> Self {
        self.racks.push((name.into(), miners));
        self
    }

    async fn write(&self, db: &TestDb, org: OrgId, k: usize) -> Result<WorldSite> {
        let pool = db.pool();
        let code = SiteCode::parse(&self.code)
            .map_err(|e| Error::World(format!("site code {:?}: {e}", self.code)))?;
        if k > usize::from(u8::MAX) || self.miners > 1 << 16 {
            return Err(Error::World(format!(
                "site {code}: at most 256 sites of 65,536 miners"
            )));
        }
        let name = self.name.as_deref().unwrap_or(code.as_str());
        let context = |what: &str| format!("{what} of site {code}");
        fleet::create_site(pool, org, &code, name, self.ramp_limit_kw_per_min)
            .await
            .map_err(|e| Error::store(context("creating"), e))?;
        let site = fleet::site_by_code(pool, &code)
            .await
            .map_err(|e| Error::store(context("reading back"), e))?
            .ok_or_else(|| Error::World(format!("site {code} vanished after its insert")))?;

        let addresses: Vec<String> = (0..self.miners)
            .map(|i| format!("10.{k}.{}.{}", i / 256, i % 256))
            .collect();
        let new: Vec<NewDevice> = addresses
            .iter()
            .enumerate()
            .map(|(i, address)| NewDevice {
                address: address.clone(),
                make: self.make.clone(),
                model: self.model.clone(),
                firmware: None,
                capabilities: self.capabilities,
                nominal_power_w: Some((self.power_w)(i)),
            })
            .collect();
        fleet::upsert_devices(pool, &site, &new)
            .await
            .map_err(|e| Error::store(context("adding the miners"), e))?;
        // The inventory is ordered by address as text; put it back in declaration order.
        let by_address: BTreeMap<String, DeviceId> = fleet::inventory(pool, site.id)
            .await
            .map_err(|e| Error::store(context("reading the inventory"), e))?
            .into_iter()
            .map(|d| (d.address, d.device_id))
            .collect();
        let devices: Vec<DeviceId> = addresses
            .iter()
            .map(|a| {
                by_address
                    .get(a)
                    .copied()
                    .ok_or_else(|| Error::World(format!("miner {a} of site {code} is missing")))
            })
            .collect::<Result<_>>()?;

        let mut racks = BTreeMap::new();
        for (rack_name, members) in &self.racks {
            let in_rack = devices.get(members.clone()).ok_or_else(|| {
                Error::World(format!(
                    "rack {rack_name} of site {code} holds miners {members:?} of {}",
                    devices.len()
                ))
            })?;
            let rack = fleet::create_rack(pool, &site, rack_name)
                .await
                .map_err(|e| Error::store(context("creating a rack"), e))?;
            fleet::place_in_rack(pool, org, rack, in_rack)
                .await
                .map_err(|e| Error::store(context("racking the miners"), e))?;
            racks.insert(rack_name.clone(), rack);
        }

        if self.hashing {
            let now = Utc::now().timestamp_millis();
            let samples: Vec<TelemetryRow> = devices
                .iter()
                .enumerate()
                .map(|(i, d)| TelemetryRow {
                    device_id: *d,
                    reachable: true,
                    power_w: Some((self.power_w)(i)),
                    hashrate_ths: Some((self.hashrate_ths)(i)),
                    sampled_at_ms: now,
                })
                .collect();
            fleet::ingest_telemetry(pool, site.id, &samples)
                .await
                .map_err(|e| Error::store(context("ingesting the telemetry"), e))?;
        }
        Ok(WorldSite {
            site,
            devices,
            racks,
        })
    }
}

/// Declares an API key besides the three org-wide defaults.
#[derive(Clone, Debug)]
pub struct Key {
    name: String,
    role: Role,
    /// Site codes; `None` for every site of the org.
    sites: Option<Vec<String>>,
    expires_at: Option<DateTime<Utc>>,
}

impl Key {
    /// A key of `role` reaching every site and never expiring, found again by `name`.
    pub fn new(name: &str, role: Role) -> Self {
        Self {
            name: name.into(),
            role,
            sites: None,
            expires_at: None,
        }
    }

    /// Limits the key to these sites of the world (an empty list: no site at all).
    pub fn sites(mut self, codes: &[&str]) -> Self {
        self.sites = Some(codes.iter().map(|c| (*c).to_owned()).collect());
        self
    }

    /// The key is valid strictly before `at`.
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }

    async fn write(&self, db: &TestDb, org: OrgId, sites: &[WorldSite]) -> Result<ApiKey> {
        let site_ids = self
            .sites
            .as_ref()
            .map(|codes| {
                codes
                    .iter()
                    .map(|c| {
                        sites
                            .iter()
                            .find(|s| s.site.code.as_str() == c)
                            .map(|s| s.site.id)
                            .ok_or_else(|| {
                                Error::World(format!(
                                    "api key {} names unknown site {c}",
                                    self.name
                                ))
                            })
                    })
                    .collect::<Result<Vec<SiteId>>>()
            })
            .transpose()?;
        let new = ebb_store::keys::generate();
        let id = fleet::insert_api_key(
            db.pool(),
            &NewApiKey {
                org,
                prefix: &new.prefix,
                secret_hash: &new.secret_hash,
                role: self.role.as_str(),
                name: &self.name,
                expires_at: self.expires_at,
                site_ids: site_ids.as_deref(),
            },
        )
        .await
        .map_err(|e| Error::store(format!("creating api key {}", self.name), e))?;
        Ok(ApiKey {
            id,
            name: self.name.clone(),
            role: self.role,
            token: new.token,
            site_ids,
        })
    }
}

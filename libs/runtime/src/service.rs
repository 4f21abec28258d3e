//! The contract every service implements, and the type-erased [`Entry`] that one table of
//! services (in the `ebb` binary) lists. `ebb <service>`, `ebb dev`, the compose check and the
//! system test all start services through an entry: load its settings from [`Sources`], then
//! run it on a [`Context`].

use crate::context::Context;
use crate::settings::{self, Common, Key, Layered, Needs, Problems, Settings, Sources};
use futures::future::BoxFuture;
use std::future::Future;

/// A long-running service: the gateway, the planner, the reconciler, a site agent, the worker.
pub trait Service: Send + 'static {
    /// Its own settings.
    type Settings: Settings;
    /// The subcommand, the `EBB_<NAME>_*` prefix, the task name and the `ebb.service` label.
    const NAME: &'static str;
    /// One line for `ebb --help`.
    const ABOUT: &'static str;
    /// What it connects to.
    const NEEDS: Needs;
    /// The JetStream streams it owns: created (if missing) before it starts. Its NATS
    /// permissions let it create these and no other.
    const STREAMS: &'static [&'static str];

    /// Runs until `ctx.shutdown` is cancelled, then drains and returns. An error (or an early
    /// return) stops the process's other services too.
    fn run(
        settings: Self::Settings,
        ctx: Context,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static;
}

/// How many instances of a service a deployment runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instances {
    /// One (or several identical ones: standbys, replicas).
    One,
    /// One per site, each with its `site` setting.
    PerSite,
}

/// A service in the table: its name and how to load and start it, with the types erased.
#[derive(Clone, Copy)]
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    pub needs: Needs,
    pub instances: Instances,
    keys: fn() -> Vec<&'static Key>,
    loader: fn(&Sources) -> Result<Loaded, Problems>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

/// The table entry of `S`.
pub const fn entry<S: Service>(instances: Instances) -> Entry {
    Entry {
        name: S::NAME,
        about: S::ABOUT,
        needs: S::NEEDS,
        instances,
        keys: keys::<S>,
        loader: loader::<S>,
    }
}

fn keys<S: Service>() -> Vec<&'static Key> {
    Common::keys(S::NEEDS).chain(S::Settings::KEYS).collect()
}

fn loader<S: Service>(sources: &Sources) -> Result<Loaded, Problems> {
    let layered: Layered<S::Settings> = settings::load(S::NAME, S::NEEDS, sources)?;
    let printed = settings::to_toml(S::NAME, S::NEEDS, &layered);
    let described = format!("{:?}", layered.service);
    let common = layered.common.clone();
    let service = layered.service;
    Ok(Loaded {
        name: S::NAME,
        needs: S::NEEDS,
        streams: S::STREAMS,
        common,
        printed,
        described,
        start: Box::new(move |ctx| Box::pin(S::run(service, ctx))),
    })
}

impl Entry {
    /// Every key the service reads: the shared ones, then its own.
    pub fn keys(&self) -> Vec<&'static Key> {
        (self.keys)()
    }

    /// Loads and validates the service's settings.
    pub fn load(&self, sources: &Sources) -> Result<Loaded, Problems> {
        (self.loader)(sources)
    }
}

type Start = Box<dyn FnOnce(Context) -> BoxFuture<'static, anyhow::Result<()>> + Send>;

/// A service with valid settings, ready to start.
pub struct Loaded {
    pub name: &'static str,
    pub needs: Needs,
    /// The streams it owns.
    pub streams: &'static [&'static str],
    /// The shared settings (connections), for building the context.
    pub common: Common,
    /// The effective settings as TOML, secrets hidden (`--print-config`).
    pub printed: String,
    /// The service's own settings for a start-up log line (secrets hidden by their `Debug`).
    pub described: String,
    start: Start,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("name", &self.name)
            .field("settings", &self.described)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// Starts the service on `ctx`: makes sure the streams exist when it needs them, then runs
    /// it until `ctx.shutdown`.
    pub fn start(self, ctx: Context) -> BoxFuture<'static, anyhow::Result<()>> {
        let Loaded {
            name,
            streams,
            described,
            start,
            ..
        } = self;
        Box::pin(async move {
            tracing::info!(service = name, settings = %described, "starting");
            if !ctx.ensure_streams(streams).await {
                return Ok(());
            }
            let outcome = start(ctx).await;
            tracing::info!(service = name, ok = outcome.is_ok(), "stopped");
            outcome
        })
    }
}

//! The one table of services. `ebb <service>` (a subcommand per line), `ebb dev`, the compose
//! check and the system test all read it: adding a service is one crate implementing
//! [`ebb_runtime::Service`] and one line here; adding a worker job is one line in
//! `ebb_worker::JOBS`.

use ebb_domain::SiteCode;
use ebb_natsauth::Identity;
use ebb_runtime::{Context, Entry, Instances, Problems, Sources, Supervisor, entry};

/// Every long-running service, in start order.
pub const SERVICES: &[Entry] = &[
    entry::<ebb_gateway::GatewayService>(Instances::One),
    entry::<ebb_planner::PlannerService>(Instances::One),
    entry::<ebb_reconciler::ReconcilerService>(Instances::One),
    entry::<ebb_worker::WorkerService>(Instances::One),
    entry::<ebb_agent::AgentService>(Instances::PerSite),
];

/// The entry named `name`.
pub fn find(name: &str) -> Option<&'static Entry> {
    SERVICES.iter().find(|e| e.name == name)
}

/// How one process runs several services of the table (`ebb dev`, the system test): the
/// settings each gets, on top of its defaults.
pub trait Overrides {
    /// The `(key, value)` settings of `entry` (for `site` when the service runs per site).
    fn settings(&self, entry: &Entry, site: Option<&SiteCode>) -> Vec<(String, String)>;
}

impl<F> Overrides for F
where
    F: Fn(&Entry, Option<&SiteCode>) -> Vec<(String, String)>,
{
    fn settings(&self, entry: &Entry, site: Option<&SiteCode>) -> Vec<(String, String)> {
        self(entry, site)
    }
}

/// The NATS identity an instance of `entry` connects as.
pub fn identity(entry: &Entry, site: Option<&SiteCode>) -> Identity {
    match (entry.name, site) {
        ("gateway", _) => Identity::Gateway,
        ("planner", _) => Identity::Planner,
        ("reconciler", _) => Identity::Reconciler,
        ("worker", _) => Identity::Worker,
        (_, Some(site)) => Identity::Agent(site.clone()),
        // A service of the table without an identity of its own runs as the operator.
        _ => Identity::Ops,
    }
}

/// Loads and starts, on `ctx` under `supervisor`, every entry of the table with `instances`: one
/// task per entry, or one per site of `sites` for per-site services (named `agent site-a`).
/// Settings come from `overrides`; nothing starts unless every one is valid. An instance whose
/// NATS credentials differ from `ctx`'s connects to NATS as itself (sharing `ctx`'s pool).
pub async fn spawn(
    supervisor: &mut Supervisor,
    ctx: &Context,
    instances: Instances,
    sites: &[SiteCode],
    overrides: &impl Overrides,
) -> anyhow::Result<()> {
    spawn_where(supervisor, ctx, instances, sites, overrides, |_| true).await
}

/// [`spawn`], for only the entries `keep` accepts (`ebb bench curtail` runs the reconciler on a
/// thread of its own, to measure its CPU).
pub async fn spawn_where(
    supervisor: &mut Supervisor,
    ctx: &Context,
    instances: Instances,
    sites: &[SiteCode],
    overrides: &impl Overrides,
    keep: impl Fn(&Entry) -> bool,
) -> anyhow::Result<()> {
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for entry in SERVICES
        .iter()
        .filter(|e| e.instances == instances && keep(e))
    {
        let targets: Vec<Option<&SiteCode>> = match instances {
            Instances::One => vec![None],
            Instances::PerSite => sites.iter().map(Some).collect(),
        };
        for site in targets {
            let name = match site {
                Some(s) => format!("{} {s}", entry.name),
                None => entry.name.to_owned(),
            };
            match entry.load(&Sources::flags(overrides.settings(entry, site))) {
                Ok(l) => loaded.push((name, l)),
                Err(p) => problems.extend(p.0.into_iter().map(|m| format!("{name}: {m}"))),
            }
        }
    }
    if !problems.is_empty() {
        return Err(Problems(problems).into());
    }
    for (name, l) in loaded {
        let own = if l.common.nats_creds == ctx.common().nats_creds {
            ctx.clone()
        } else {
            ctx.with_nats(&l.common, &format!("ebb-{name}")).await?
        };
        supervisor.spawn(name, l.start(own));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_service_has_its_defaults_valid_but_for_what_is_required() {
        let mut names: Vec<&str> = SERVICES.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERVICES.len());
        for e in SERVICES {
            let mut flags = vec![("nats_url".to_owned(), "nats://127.0.0.1:4222".to_owned())];
            if e.needs == ebb_runtime::Needs::DatabaseAndNats {
                flags.push(("database_url".into(), "postgres://db/ebb".into()));
            }
            if e.instances == Instances::PerSite {
                flags.push(("site".into(), "site-a".into()));
            }
            if let Err(p) = e.load(&Sources::flags(flags)) {
                panic!("{}: {p}", e.name);
            }
        }
    }
}

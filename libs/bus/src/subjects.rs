//! Subject names (DESIGN §3). Every subject is built here so that a typo cannot create a subject no
//! consumer listens on. Site codes and ids are single tokens by construction.

use ebb_domain::{EventId, OrgId, SiteCode};

pub const CMD_PREFIX: &str = "ebb.cmd";
pub const RESULT_PREFIX: &str = "ebb.result";
pub const TELEMETRY_PREFIX: &str = "ebb.telemetry";
pub const EVENT_PREFIX: &str = "ebb.event";

/// Command batches for one site's agent.
pub fn cmd(site: &SiteCode) -> String {
    format!("{CMD_PREFIX}.{site}")
}

/// Per-device outcomes of a site's batches.
pub fn result(site: &SiteCode) -> String {
    format!("{RESULT_PREFIX}.{site}")
}

/// One poll cycle's samples for a site.
pub fn telemetry(site: &SiteCode) -> String {
    format!("{TELEMETRY_PREFIX}.{site}")
}

/// Curtailment event and target transitions for integrations.
pub fn event(org: OrgId, event: EventId) -> String {
    format!("{EVENT_PREFIX}.{org}.{event}")
}

/// Request/reply endpoints of the planner: `ebb.svc.planner.<verb>`.
pub const PLANNER_SERVICE: &str = "ebb-planner";
pub const PLANNER_GROUP: &str = "ebb.svc.planner";

/// Request/reply endpoints of one site's agent: `ebb.svc.agent.<site>.<verb>`.
pub fn agent_group(site: &SiteCode) -> String {
    format!("ebb.svc.agent.{site}")
}

/// The site token of a subject under `prefix`, if it is one.
pub fn site_of<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)?
        .strip_prefix('.')
        .filter(|s| !s.is_empty() && !s.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let s = SiteCode::parse("site-a").unwrap();
        assert_eq!(cmd(&s), "ebb.cmd.site-a");
        assert_eq!(result(&s), "ebb.result.site-a");
        assert_eq!(telemetry(&s), "ebb.telemetry.site-a");
        assert_eq!(
            site_of(TELEMETRY_PREFIX, "ebb.telemetry.site-a"),
            Some("site-a")
        );
        assert_eq!(site_of(TELEMETRY_PREFIX, "ebb.telemetry.a.b"), None);
        assert_eq!(site_of(TELEMETRY_PREFIX, "ebb.cmd.a"), None);
    }
}

/// Planner endpoints (under [`PLANNER_GROUP`]).
pub mod planner {
    pub const PREVIEW: &str = "ebb.svc.planner.preview";
    pub const START: &str = "ebb.svc.planner.start";
    pub const STOP: &str = "ebb.svc.planner.stop";
    pub const TERMINATE: &str = "ebb.svc.planner.terminate";
    pub const UPDATE: &str = "ebb.svc.planner.update";
    pub const ABORT: &str = "ebb.svc.planner.abort";
    use ebb_domain::SiteCode;

    /// One site's inventory endpoint; the planner serves `ebb.svc.planner.inventory.*` and takes
    /// the site from the subject.
    pub fn inventory(site: &SiteCode) -> String {
        format!("{}.inventory.{site}", super::PLANNER_GROUP)
    }

    /// One site's registration endpoint.
    pub fn register(site: &SiteCode) -> String {
        format!("{}.register.{site}", super::PLANNER_GROUP)
    }
}

/// An agent's scan endpoint.
pub fn agent_scan(site: &SiteCode) -> String {
    format!("ebb.svc.agent.{site}.scan")
}

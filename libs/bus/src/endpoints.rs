//! Every request/reply endpoint: which request type goes to which subject and gets which reply
//! ([`Request`]). A new endpoint is one impl here.

use crate::messages::*;
use crate::rpc::Request;
use crate::subjects;
use ebb_domain::SiteCode;
use serde::{Deserialize, Serialize};

/// `ebb.svc.planner.preview`: what a Start with these fields would select, with no side effects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PreviewRequest(pub StartRequest);

/// A service-wide planner endpoint: `ebb.svc.planner.<verb>`.
macro_rules! planner_endpoint {
    ($req:ty => $reply:ty, $verb:literal) => {
        impl Request for $req {
            type Reply = $reply;
            type Route = ();
            const VERB: &'static str = $verb;
            fn subject(_: &()) -> String {
                format!("{}.{}", subjects::PLANNER_GROUP, $verb)
            }
        }
    };
}

planner_endpoint!(PreviewRequest => PlanView, "preview");
planner_endpoint!(StartRequest => StartReply, "start");
planner_endpoint!(StopRequest => StopReply, "stop");
planner_endpoint!(TerminateRequest => StopReply, "terminate");
planner_endpoint!(UpdateRequest => UpdateReply, "update");
planner_endpoint!(AbortRequest => StopReply, "abort");
/// A per-site planner endpoint: `ebb.svc.planner.<verb>.<site>`.
macro_rules! planner_site_endpoint {
    ($req:ty => $reply:ty, $verb:literal) => {
        impl Request for $req {
            type Reply = $reply;
            type Route = SiteCode;
            const VERB: &'static str = $verb;
            fn subject(site: &SiteCode) -> String {
                format!("{}.{}.{site}", subjects::PLANNER_GROUP, $verb)
            }
        }
    };
}

planner_site_endpoint!(InventoryRequest => Inventory, "inventory");
planner_site_endpoint!(RegisterDevicesRequest => RegisterDevicesReply, "register");

/// Every device of `site`, asked of the planner page by page: each reply is one page that fits
/// a NATS message whatever the site's size ([`Inventory::page`]), each under `timeout`. A page
/// whose cursor does not move forward is an error, never an endless loop.
pub async fn fetch_inventory(
    client: &async_nats::Client,
    site: &SiteCode,
    timeout: std::time::Duration,
) -> Result<Vec<InventoryDevice>, crate::rpc::CallError> {
    let mut devices = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let request = InventoryRequest { after, limit: None };
        let page: Inventory = crate::rpc::call(client, site, None, &request, timeout).await?;
        devices.extend(page.devices);
        match page.next {
            Some(next) if request.after.as_ref() != Some(&next) => after = Some(next),
            Some(_) => {
                return Err(crate::rpc::CallError::Remote(RpcError::new(
                    RpcErrorKind::Internal,
                    "the inventory cursor did not move forward",
                )));
            }
            None => return Ok(devices),
        }
    }
}

/// The site of a per-site planner endpoint's subject (`ebb.svc.planner.<verb>.<site>`).
pub fn site_of_planner_subject(verb: &str, subject: &str) -> Option<SiteCode> {
    let token = subject
        .strip_prefix(subjects::PLANNER_GROUP)?
        .strip_prefix('.')?
        .strip_prefix(verb)?
        .strip_prefix('.')?;
    SiteCode::parse(token).ok()
}

/// `ebb.svc.agent.<site>.scan`.
impl Request for ScanRequest {
    type Reply = ScanResult;
    type Route = SiteCode;
    const VERB: &'static str = "scan";
    fn subject(site: &SiteCode) -> String {
        subjects::agent_scan(site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_the_documented_ones() {
        assert_eq!(PreviewRequest::subject(&()), subjects::planner::PREVIEW);
        assert_eq!(StartRequest::subject(&()), subjects::planner::START);
        assert_eq!(StopRequest::subject(&()), subjects::planner::STOP);
        assert_eq!(TerminateRequest::subject(&()), subjects::planner::TERMINATE);
        assert_eq!(UpdateRequest::subject(&()), subjects::planner::UPDATE);
        assert_eq!(AbortRequest::subject(&()), subjects::planner::ABORT);
        let site = SiteCode::parse("site-a").unwrap();
        assert_eq!(
            InventoryRequest::subject(&site),
            "ebb.svc.planner.inventory.site-a"
        );
        assert_eq!(
            RegisterDevicesRequest::subject(&site),
            "ebb.svc.planner.register.site-a"
        );
        assert_eq!(
            site_of_planner_subject("register", "ebb.svc.planner.register.site-a"),
            Some(site.clone())
        );
        assert_eq!(
            site_of_planner_subject("register", "ebb.svc.planner.register.a.b"),
            None
        );
        assert_eq!(
            site_of_planner_subject("register", "ebb.svc.planner.inventory.site-a"),
            None
        );
        assert_eq!(ScanRequest::subject(&site), "ebb.svc.agent.site-a.scan");
    }
}

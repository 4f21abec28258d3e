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
planner_endpoint!(InventoryRequest => Inventory, "inventory");
planner_endpoint!(RegisterDevicesRequest => RegisterDevicesReply, "register");

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
        assert_eq!(InventoryRequest::subject(&()), subjects::planner::INVENTORY);
        assert_eq!(
            RegisterDevicesRequest::subject(&()),
            subjects::planner::REGISTER
        );
        let site = SiteCode::parse("site-a").unwrap();
        assert_eq!(ScanRequest::subject(&site), "ebb.svc.agent.site-a.scan");
    }
}

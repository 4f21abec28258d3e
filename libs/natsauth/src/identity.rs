//! Who connects to NATS, and exactly what each may do (DESIGN §3, issue 7). Permissions name
//! exact subjects; everything not allowed is refused. Each user has its own inbox prefix
//! (`_INBOX_<name>`), may subscribe under that prefix only, and may answer requests
//! (`allow_responses`) only if it serves some.
//!
//! Architecture invariants, each checked against a real nats-server by the adversarial suite
//! (`services/ebb/tests/it/nats_auth.rs`):
//! - only the reconciler publishes `ebb.cmd.*`;
//! - a site's agent reads only its own site's commands, through its own durable consumer, which
//!   it may create only with its own filter subject; it publishes only its own site's results and
//!   telemetry and calls only its own site's planner endpoints;
//! - each service creates only the streams it owns; only the operator user deletes or purges;
//! - an integration creates and reads only durable consumers filtered inside its own org's events.

use crate::jwt::{Permission, Responses, User};
use ebb_bus::{streams, subjects};
use ebb_domain::{OrgId, SiteCode};

/// The JetStream domain of the hub; a leaf node reaches the hub's JetStream API as
/// `$JS.<domain>.API.>` (see `nats/leaf-site.conf`).
pub const HUB_DOMAIN: &str = "hub";

/// A NATS user of an Ebb deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Gateway,
    Planner,
    Reconciler,
    Worker,
    /// One site's agent (and the leaf node that carries its traffic).
    Agent(SiteCode),
    /// A consumer of one org's event feed. `name` is its durable consumer on `EVENT`.
    Integration {
        name: String,
        org: OrgId,
    },
    /// The operator's own user: every subject, stream deletion and purge included.
    Ops,
}

/// What an identity may do, as a user JWT's permission fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Permission,
    pub subscribe: Permission,
    /// May answer the requests it receives.
    pub responses: bool,
}

/// A name a subject token can hold: 1–64 of `[a-z0-9_-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The inbox prefix of the user `name`.
pub fn inbox_prefix(name: &str) -> String {
    format!("_INBOX_{name}")
}

/// Both spellings of a JetStream API subject: `$JS.API.<rest>` (a client of the hub) and
/// `$JS.hub.API.<rest>` (the same call arriving over a site's leaf connection).
fn js_api(rest: &str) -> [String; 2] {
    [
        format!("$JS.API.{rest}"),
        format!("$JS.{HUB_DOMAIN}.API.{rest}"),
    ]
}

/// Everything a pull consumer's owner needs: look it up, create it with exactly `filter`,
/// pull from it and ack its deliveries.
fn own_consumer(stream: &str, durable: &str, filter: &str) -> Vec<String> {
    let mut allow = Vec::new();
    allow.extend(js_api(&format!("CONSUMER.INFO.{stream}.{durable}")));
    // nats-server 2.9 refuses a create whose body's filter differs from the subject's.
    allow.extend(js_api(&format!(
        "CONSUMER.CREATE.{stream}.{durable}.{filter}"
    )));
    allow.extend(js_api(&format!("CONSUMER.MSG.NEXT.{stream}.{durable}")));
    allow.push(format!("$JS.ACK.{stream}.{durable}.>"));
    allow
}

/// Looking a stream up, and creating it (idempotently) when the identity owns it.
fn streams_owned(owned: &[&str]) -> Vec<String> {
    let mut allow = vec!["$JS.API.INFO".to_owned()];
    for s in owned {
        allow.push(format!("$JS.API.STREAM.INFO.{s}"));
        allow.push(format!("$JS.API.STREAM.CREATE.{s}"));
    }
    allow
}

fn allow(subjects: Vec<String>) -> Permission {
    Permission {
        allow: subjects,
        deny: Vec::new(),
    }
}

/// An empty allow list means "everything" to nats-server: a user that publishes nothing but
/// replies is denied everything explicitly.
fn nothing() -> Permission {
    Permission {
        allow: Vec::new(),
        deny: vec![">".to_owned()],
    }
}

impl Identity {
    /// The user's name: its `.creds` file is `<name>.creds` and its inbox `_INBOX_<name>`.
    pub fn name(&self) -> String {
        match self {
            Identity::Gateway => "gateway".into(),
            Identity::Planner => "planner".into(),
            Identity::Reconciler => "reconciler".into(),
            Identity::Worker => "worker".into(),
            Identity::Agent(site) => format!("agent-{site}"),
            Identity::Integration { name, .. } => format!("integration-{name}"),
            Identity::Ops => "ops".into(),
        }
    }

    /// Exactly what the identity may do.
    pub fn permissions(&self) -> Permissions {
        let inbox = format!("{}.>", inbox_prefix(&self.name()));
        match self {
            Identity::Gateway => {
                let mut publish: Vec<String> =
                    ["preview", "start", "stop", "terminate", "update", "abort"]
                        .iter()
                        .map(|v| format!("{}.{v}", subjects::PLANNER_GROUP))
                        .collect();
                publish.push("ebb.svc.agent.*.scan".into());
                Permissions {
                    publish: allow(publish),
                    subscribe: allow(vec![inbox]),
                    responses: false,
                }
            }
            Identity::Planner => Permissions {
                publish: nothing(),
                subscribe: allow(vec![
                    format!("{}.>", subjects::PLANNER_GROUP),
                    "$SRV.>".into(),
                    // Live telemetry feeds the fleet snapshot (read only; core NATS, no consumer).
                    format!("{}.*", subjects::TELEMETRY_PREFIX),
                    inbox,
                ]),
                responses: true,
            },
            Identity::Reconciler => {
                let mut publish = vec![format!("{}.*", subjects::CMD_PREFIX)];
                publish.extend(streams_owned(&[
                    streams::CMD,
                    streams::RESULT,
                    streams::TELEMETRY,
                ]));
                publish.extend(own_consumer(
                    streams::RESULT,
                    "reconciler-results",
                    &format!("{}.>", subjects::RESULT_PREFIX),
                ));
                publish.extend(own_consumer(
                    streams::TELEMETRY,
                    "reconciler-telemetry",
                    &format!("{}.>", subjects::TELEMETRY_PREFIX),
                ));
                Permissions {
                    publish: allow(publish),
                    subscribe: allow(vec![inbox]),
                    responses: false,
                }
            }
            Identity::Worker => {
                let mut publish = vec![format!("{}.>", subjects::EVENT_PREFIX)];
                publish.extend(streams_owned(&[streams::EVENT]));
                Permissions {
                    publish: allow(publish),
                    subscribe: allow(vec![inbox]),
                    responses: false,
                }
            }
            Identity::Agent(site) => {
                let mut publish = vec![
                    subjects::result(site),
                    subjects::telemetry(site),
                    subjects::planner::inventory(site),
                    subjects::planner::register(site),
                ];
                publish.extend(js_api(&format!("STREAM.INFO.{}", streams::CMD)));
                publish.extend(own_consumer(
                    streams::CMD,
                    &format!("agent-{site}"),
                    &subjects::cmd(site),
                ));
                Permissions {
                    publish: allow(publish),
                    subscribe: allow(vec![
                        format!("{}.>", subjects::agent_group(site)),
                        "$SRV.>".into(),
                        inbox,
                    ]),
                    // It serves its own scan endpoint.
                    responses: true,
                }
            }
            Identity::Integration { org, .. } => {
                let durable = self.name();
                let filter = format!("{}.{org}.>", subjects::EVENT_PREFIX);
                let mut publish = vec![format!("$JS.API.STREAM.INFO.{}", streams::EVENT)];
                publish.extend(own_consumer(streams::EVENT, &durable, &filter));
                Permissions {
                    publish: allow(publish),
                    subscribe: allow(vec![inbox]),
                    responses: false,
                }
            }
            Identity::Ops => Permissions {
                publish: allow(vec![">".into()]),
                subscribe: allow(vec![">".into()]),
                responses: true,
            },
        }
    }

    /// The `nats` fields of this identity's user JWT.
    pub fn user_claims(&self) -> User {
        let p = self.permissions();
        User {
            kind: "user".into(),
            version: 2,
            publish: p.publish,
            subscribe: p.subscribe,
            resp: p.responses.then_some(Responses { max: 1, ttl: 0 }),
            subs: -1,
            data: -1,
            payload: -1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(s: &str) -> SiteCode {
        SiteCode::parse(s).unwrap()
    }

    #[test]
    fn names_and_inboxes() {
        assert_eq!(Identity::Agent(site("site-a")).name(), "agent-site-a");
        assert_eq!(inbox_prefix("agent-site-a"), "_INBOX_agent-site-a");
        assert!(valid_name("acme-erp_1") && !valid_name("a.b") && !valid_name(""));
    }

    #[test]
    fn no_user_but_ops_may_read_every_inbox_or_everything() {
        for id in [
            Identity::Gateway,
            Identity::Planner,
            Identity::Reconciler,
            Identity::Worker,
            Identity::Agent(site("site-a")),
            Identity::Integration {
                name: "erp".into(),
                org: OrgId::new(),
            },
        ] {
            let p = id.permissions();
            for s in &p.subscribe.allow {
                assert!(
                    !s.starts_with("_INBOX.") && s != ">" && !s.starts_with("ebb.cmd"),
                    "{id:?} may subscribe to {s}"
                );
            }
            assert!(
                !p.publish.allow.is_empty() || p.publish.deny == [">"],
                "{id:?}: an empty allow list would allow everything"
            );
            for s in &p.publish.allow {
                assert!(
                    !s.contains("DELETE") && !s.contains("PURGE"),
                    "{id:?} may {s}"
                );
                if !matches!(id, Identity::Reconciler) {
                    assert!(!s.starts_with("ebb.cmd"), "{id:?} may publish {s}");
                }
            }
        }
    }

    #[test]
    fn an_agent_names_only_its_own_site() {
        let p = Identity::Agent(site("site-a")).permissions();
        let all: Vec<&String> = p.publish.allow.iter().chain(&p.subscribe.allow).collect();
        assert!(all.iter().all(|s| !s.contains("site-b")));
        assert!(
            p.publish
                .allow
                .contains(&"$JS.API.CONSUMER.CREATE.CMD.agent-site-a.ebb.cmd.site-a".to_owned())
        );
        assert!(
            !p.publish
                .allow
                .iter()
                .any(|s| s.ends_with(">") && s.contains("CREATE")),
            "the create subject names the filter exactly"
        );
    }
}

//! The event types of the public contract and the two documents built from one event: the webhook
//! body (`{"type", "timestamp", "data"}`, Standard Webhooks' recommended shape) and the CloudEvents
//! 1.0 structured-mode JSON document published on `ebb.event.<org>.<event>`.
//!
//! Both are rendered from the same [`Event`], so a webhook and a feed message of one transition
//! carry the same `type` and the same `data`, and the webhook's `webhook-id` is the CloudEvent
//! `id` (and the feed's `Nats-Msg-Id`): a consumer of both can deduplicate across them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// What happened, as the public contract names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    CurtailmentStarted,
    CurtailmentActive,
    CurtailmentRestoring,
    CurtailmentCompleted,
    CurtailmentCompletedWithFailures,
    CurtailmentCancelled,
    CurtailmentFailed,
    /// Targets that failed, aggregated per batch (counts and up to 100 device ids).
    TargetsFailed,
    UsageRated,
}

impl EventType {
    /// Every type, in the order the contract lists them.
    pub const ALL: [EventType; 9] = [
        EventType::CurtailmentStarted,
        EventType::CurtailmentActive,
        EventType::CurtailmentRestoring,
        EventType::CurtailmentCompleted,
        EventType::CurtailmentCompletedWithFailures,
        EventType::CurtailmentCancelled,
        EventType::CurtailmentFailed,
        EventType::TargetsFailed,
        EventType::UsageRated,
    ];

    /// The type's name on the wire, e.g. `ebb.curtailment.started`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::CurtailmentStarted => "ebb.curtailment.started",
            EventType::CurtailmentActive => "ebb.curtailment.active",
            EventType::CurtailmentRestoring => "ebb.curtailment.restoring",
            EventType::CurtailmentCompleted => "ebb.curtailment.completed",
            EventType::CurtailmentCompletedWithFailures => {
                "ebb.curtailment.completed_with_failures"
            }
            EventType::CurtailmentCancelled => "ebb.curtailment.cancelled",
            EventType::CurtailmentFailed => "ebb.curtailment.failed",
            EventType::TargetsFailed => "ebb.targets.failed",
            EventType::UsageRated => "ebb.usage.rated",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`EventType::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The unique id of one message: the CloudEvent `id`, the feed's `Nats-Msg-Id` and the webhook's
/// `webhook-id`. Standard Webhooks signs `id.timestamp.body`, so an id must not contain a `.`
/// (nor anything a header value cannot carry).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

/// Why a text is not a [`MessageId`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessageId {
    #[error("a message id may not be empty")]
    Empty,
    #[error("a message id is at most {max} bytes, not {len}", max = MessageId::MAX_LEN)]
    TooLong { len: usize },
    #[error("a message id may hold only ASCII letters, digits, '-' and '_' (found {0:?})")]
    Character(char),
}

impl MessageId {
    pub const MAX_LEN: usize = 128;

    /// Checks `id`: 1 to 128 ASCII letters, digits, `-` and `_`.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidMessageId> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidMessageId::Empty);
        }
        if id.len() > Self::MAX_LEN {
            return Err(InvalidMessageId::TooLong { len: id.len() });
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(InvalidMessageId::Character(c));
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The hyphenated form of a UUID is always a valid id: outbox ids become message ids this way.
impl From<Uuid> for MessageId {
    fn from(u: Uuid) -> Self {
        Self(u.hyphenated().to_string())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        MessageId::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// One announcement, before it is rendered for a channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: MessageId,
    pub event_type: EventType,
    /// When it happened (not when it is delivered: retries keep it).
    pub time: DateTime<Utc>,
    /// What it is about: the curtailment id for curtailment and target events.
    pub subject: String,
    /// The event as `GET /v1/curtailments/{id}` returns it (plus, for target messages, the
    /// aggregate), or the rated usage.
    pub data: serde_json::Value,
}

impl Event {
    /// The webhook body. Serialize it once and sign and send those same bytes: a receiver
    /// verifies the bytes it got, not a re-serialization.
    pub fn webhook_body(&self) -> WebhookBody {
        WebhookBody {
            event_type: self.event_type,
            timestamp: self.time,
            data: self.data.clone(),
        }
    }

    /// The webhook body as the bytes to sign, store and send.
    pub fn webhook_json(&self) -> String {
        // A struct of a string, a timestamp and a Value always serializes.
        serde_json::to_string(&self.webhook_body()).unwrap_or_default()
    }

    /// The CloudEvents document; `source` identifies the producer (e.g. `/ebb/<org>`).
    pub fn cloud_event(&self, source: &str) -> CloudEvent {
        CloudEvent {
            specversion: CloudEvent::SPEC_VERSION.to_owned(),
            id: self.id.clone(),
            source: source.to_owned(),
            event_type: self.event_type,
            time: self.time,
            subject: self.subject.clone(),
            datacontenttype: CloudEvent::CONTENT_TYPE.to_owned(),
            data: self.data.clone(),
        }
    }
}

/// The body of a webhook request (Standard Webhooks' payload structure).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub timestamp: DateTime<Utc>,
    pub data: serde_json::Value,
}

/// A CloudEvents 1.0 event in structured mode (the JSON event format): the whole event is the
/// message body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    pub id: MessageId,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub time: DateTime<Utc>,
    pub subject: String,
    /// Always `application/json`: `data` is a JSON value, not a string.
    pub datacontenttype: String,
    pub data: serde_json::Value,
}

impl CloudEvent {
    pub const SPEC_VERSION: &'static str = "1.0";
    pub const CONTENT_TYPE: &'static str = "application/json";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Event {
        Event {
            id: MessageId::new("0193a5d2-7f3e-7000-8000-000000000001").unwrap(),
            event_type: EventType::CurtailmentActive,
            time: DateTime::parse_from_rfc3339("2026-12-07T10:00:00.5Z")
                .unwrap()
                .to_utc(),
            subject: "0193a5d2-0000-7000-8000-0000000000aa".to_owned(),
            data: json!({"id": "0193a5d2-0000-7000-8000-0000000000aa", "state": "active"}),
        }
    }

    #[test]
    fn names_round_trip_and_follow_the_contract() {
        let names: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "ebb.curtailment.started",
                "ebb.curtailment.active",
                "ebb.curtailment.restoring",
                "ebb.curtailment.completed",
                "ebb.curtailment.completed_with_failures",
                "ebb.curtailment.cancelled",
                "ebb.curtailment.failed",
                "ebb.targets.failed",
                "ebb.usage.rated",
            ]
        );
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
            // Standard Webhooks: full-stop delimited identifiers of [a-zA-Z0-9_].
            assert!(t.as_str().split('.').all(
                |p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            ));
        }
        assert_eq!(
            "ebb.curtailment.paused".parse::<EventType>(),
            Err(UnknownEventType("ebb.curtailment.paused".to_owned()))
        );
        assert!(serde_json::from_value::<EventType>(json!("ebb.nope")).is_err());
    }

    #[test]
    fn message_ids_refuse_dots_and_header_breakers() {
        let check = |id: &str, ok: bool| assert_eq!(MessageId::new(id).is_ok(), ok, "{id:?}");
        check("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", true);
        check("0193a5d2-7f3e-7000-8000-000000000001", true);
        check("", false);
        check("a.b", false);
        check("a b", false);
        check("a\r\nx-evil: 1", false);
        check("é", false);
        check(&"a".repeat(128), true);
        check(&"a".repeat(129), false);
        let id: MessageId = Uuid::now_v7().into();
        assert!(MessageId::new(id.as_str()).is_ok());
        assert!(serde_json::from_value::<MessageId>(json!("a.b")).is_err());
    }

    #[test]
    fn the_webhook_body_is_type_timestamp_data() {
        let e = event();
        let body: serde_json::Value = serde_json::from_str(&e.webhook_json()).unwrap();
        assert_eq!(
            body,
            json!({
                "type": "ebb.curtailment.active",
                "timestamp": "2026-12-07T10:00:00.500Z",
                "data": {"id": "0193a5d2-0000-7000-8000-0000000000aa", "state": "active"},
            })
        );
        let back: WebhookBody = serde_json::from_value(body).unwrap();
        assert_eq!(back, e.webhook_body());
    }

    #[test]
    fn the_cloud_event_is_structured_mode_with_the_same_type_and_data() {
        let e = event();
        let ce = serde_json::to_value(e.cloud_event("/ebb/org-1")).unwrap();
        assert_eq!(
            ce,
            json!({
                "specversion": "1.0",
                "id": "0193a5d2-7f3e-7000-8000-000000000001",
                "source": "/ebb/org-1",
                "type": "ebb.curtailment.active",
                "time": "2026-12-07T10:00:00.500Z",
                "subject": "0193a5d2-0000-7000-8000-0000000000aa",
                "datacontenttype": "application/json",
                "data": {"id": "0193a5d2-0000-7000-8000-0000000000aa", "state": "active"},
            })
        );
        let webhook: serde_json::Value = serde_json::from_str(&e.webhook_json()).unwrap();
        assert_eq!(ce["type"], webhook["type"]);
        assert_eq!(ce["data"], webhook["data"]);
        let back: CloudEvent = serde_json::from_value(ce).unwrap();
        assert_eq!(back, e.cloud_event("/ebb/org-1"));
    }
}

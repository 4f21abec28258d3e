//! What an admin may set on an endpoint, parsed once at the boundary: which event types it
//! receives and a description of bounded length. (Its URL is a [`crate::ssrf::WebhookUrl`].)

use crate::event::{EventType, UnknownEventType};
use std::collections::BTreeSet;

/// Which event types an endpoint receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventFilter {
    /// Every type, present and future.
    All,
    /// These types only; never empty.
    Only(BTreeSet<EventType>),
}

/// Why a list of event types is not a filter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFilter {
    #[error("event_types may not be empty: leave it out to receive every type")]
    Empty,
    #[error(transparent)]
    Unknown(#[from] UnknownEventType),
}

impl EventFilter {
    /// The filter of `names`, as a client sends them: `None` for every type.
    pub fn parse<S: AsRef<str>>(names: Option<&[S]>) -> Result<Self, InvalidFilter> {
        let Some(names) = names else {
            return Ok(EventFilter::All);
        };
        let types = names
            .iter()
            .map(|n| n.as_ref().parse::<EventType>())
            .collect::<Result<BTreeSet<_>, _>>()?;
        if types.is_empty() {
            return Err(InvalidFilter::Empty);
        }
        Ok(EventFilter::Only(types))
    }

    pub fn matches(&self, t: EventType) -> bool {
        match self {
            EventFilter::All => true,
            EventFilter::Only(types) => types.contains(&t),
        }
    }

    /// The wire names, `None` for every type (the column's NULL).
    pub fn names(&self) -> Option<Vec<String>> {
        match self {
            EventFilter::All => None,
            EventFilter::Only(types) => Some(types.iter().map(|t| t.as_str().to_owned()).collect()),
        }
    }
}

/// A free-text description of at most [`Description::MAX_CHARS`] characters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Description(String);

/// A description over the limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a description is at most {max} characters, not {chars}", max = Description::MAX_CHARS)]
pub struct DescriptionTooLong {
    pub chars: usize,
}

impl Description {
    pub const MAX_CHARS: usize = 1024;

    pub fn new(text: impl Into<String>) -> Result<Self, DescriptionTooLong> {
        let text = text.into();
        let chars = text.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(DescriptionTooLong { chars });
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert_eq!(EventFilter::parse::<&str>(None), Ok(EventFilter::All));
        assert_eq!(
            EventFilter::parse::<&str>(Some(&[])),
            Err(InvalidFilter::Empty)
        );
        let f = EventFilter::parse(Some(&[
            "ebb.curtailment.completed",
            "ebb.curtailment.started",
            "ebb.curtailment.started",
        ]))
        .unwrap();
        assert!(f.matches(EventType::CurtailmentStarted));
        assert!(!f.matches(EventType::UsageRated));
        assert_eq!(
            f.names(),
            Some(vec![
                "ebb.curtailment.started".to_owned(),
                "ebb.curtailment.completed".to_owned()
            ])
        );
        assert!(EventFilter::All.matches(EventType::TargetsFailed));
        assert_eq!(EventFilter::All.names(), None);
        let err = EventFilter::parse(Some(&["ebb.curtailment.started", "ebb.nope"])).unwrap_err();
        assert_eq!(err.to_string(), "unknown event type \"ebb.nope\"");
    }

    #[test]
    fn descriptions() {
        assert!(Description::new("").is_ok());
        assert!(
            Description::new("é".repeat(1024)).is_ok(),
            "characters, not bytes"
        );
        assert_eq!(
            Description::new("x".repeat(1025)),
            Err(DescriptionTooLong { chars: 1025 })
        );
    }
}

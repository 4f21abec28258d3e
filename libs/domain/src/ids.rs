//! Typed identifiers. Every id is a UUIDv7 except [`SiteCode`], the short name that appears in NATS
//! subjects (`ebb.cmd.<site>`), which is validated once at the boundary.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// A customer organisation; every tenant row carries one.
    OrgId
);
uuid_id!(
    /// A site row.
    SiteId
);
uuid_id!(
    /// A rack: a group of a site's miners.
    RackId
);
uuid_id!(
    /// A miner.
    DeviceId
);
uuid_id!(
    /// A curtailment event.
    EventId
);
uuid_id!(
    /// A command batch; also its `Nats-Msg-Id`, so a retried publish is deduplicated.
    BatchId
);

/// The site's name in NATS subjects and permissions: 1–64 of `[a-z0-9_-]`, so it is always one
/// subject token (no `.`, `*`, `>` or whitespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SiteCode(String);

/// Why a string is not a [`SiteCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("site code must be 1-64 characters of a-z, 0-9, '-' or '_'")]
pub struct InvalidSiteCode;

impl SiteCode {
    pub fn parse(s: &str) -> Result<Self, InvalidSiteCode> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidSiteCode)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SiteCode {
    type Error = InvalidSiteCode;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SiteCode> for String {
    fn from(c: SiteCode) -> Self {
        c.0
    }
}

impl fmt::Display for SiteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_codes() {
        for ok in ["a", "site-a", "s_1", &"x".repeat(64)] {
            assert!(SiteCode::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Site", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert_eq!(SiteCode::parse(bad), Err(InvalidSiteCode), "{bad}");
        }
    }
}

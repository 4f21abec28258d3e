//! A config value that must never appear in logs.

use serde::{Deserialize, Serialize};

/// A secret whose `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A URL that may carry credentials (`nats://user:password@host`): usable as the string it is,
/// but its `Debug` hides the password, so config dumps and start-up lines never leak it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CredUrl(pub String);

impl CredUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with every password replaced by `***`.
    pub fn redacted(&self) -> String {
        self.0
            .split(',')
            .map(|part| match (part.find("://"), part.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    let userinfo = &part[scheme + 3..at];
                    match userinfo.split_once(':') {
                        Some((user, _)) => {
                            format!("{}{user}:***{}", &part[..scheme + 3], &part[at..])
                        }
                        None => part.to_owned(),
                    }
                }
                _ => part.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Debug for CredUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::str::FromStr for CredUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(CredUrl(s.to_owned()))
    }
}

impl From<&str> for CredUrl {
    fn from(s: &str) -> Self {
        CredUrl(s.to_owned())
    }
}

impl From<String> for CredUrl {
    fn from(s: String) -> Self {
        CredUrl(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let u = CredUrl::from("nats://planner:s3cret@nats:4222,nats://a:b@c:1");
        assert_eq!(
            u.redacted(),
            "nats://planner:***@nats:4222,nats://a:***@c:1"
        );
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(
            CredUrl::from("nats://127.0.0.1:4222").redacted(),
            "nats://127.0.0.1:4222"
        );
        assert!(!format!("{:?}", Secret("pw".into())).contains("pw"));
    }
}

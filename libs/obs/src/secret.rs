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

/// A URL that may carry credentials (`nats://user:password@host`, `nats://token@host`,
/// `postgres://host/db?password=…`): usable as the string it is, but its `Debug` hides the
/// credentials, so config dumps and start-up lines never leak them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CredUrl(pub String);

impl CredUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with every credential replaced by `***` (see [`redact_url`]).
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

/// Query parameters whose value is a credential (libpq's `password` and `sslpassword`, and the
/// usual names of tokens).
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "pass", "token", "secret"];

/// Schemes whose userinfo without a colon is a user name (libpq has no token form); for every
/// other scheme it is a token (`nats://s3cr3t@host`) and is hidden.
const NAMED_USER_SCHEMES: &[&str] = &["postgres", "postgresql"];

/// `text`, one URL or several separated by commas, with every credential replaced by `***`: the
/// password of `user:password@`, a token given alone as the userinfo, and password or token
/// query parameters. Text that is not quite a URL is redacted too, erring on the side of hiding:
/// everything up to the last `@` after the scheme counts as userinfo.
pub fn redact_url(text: &str) -> String {
    text.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(part: &str) -> String {
    let (scheme, rest) = match part.find("://") {
        Some(i) => (&part[..i], &part[i + 3..]),
        None => ("", part),
    };
    let mut out = String::with_capacity(part.len());
    if part.len() > rest.len() {
        out.push_str(&part[..part.len() - rest.len()]);
    }
    // The last `@`, not the first: a password with an unescaped `@` in it stays hidden whole.
    let after = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            match userinfo.split_once(':') {
                // An `@` in the path or query: no telling what is what, so hide it all.
                _ if user.contains(['/', '?', '#']) => out.push_str("***"),
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None if NAMED_USER_SCHEMES
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(scheme.trim())) =>
                {
                    out.push_str(userinfo);
                }
                None => out.push_str("***"),
            }
            &rest[at..]
        }
        None => rest,
    };
    match after.split_once('?') {
        None => out.push_str(after),
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((k, _)) if SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(k)) => {
                        format!("{k}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
    }
    out
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

    fn check(url: &str, expected: &str) {
        assert_eq!(CredUrl::from(url).redacted(), expected, "{url}");
        assert_eq!(format!("{:?}", CredUrl::from(url)), format!("{expected:?}"));
    }

    #[test]
    fn credentials_never_show() {
        // user:password
        check(
            "nats://planner:s3cret@nats:4222",
            "nats://planner:***@nats:4222",
        );
        check(
            "postgres://ebb:hunter2@db:5432/ebb",
            "postgres://ebb:***@db:5432/ebb",
        );
        // a token alone (NATS token auth), but a PostgreSQL user alone is only a name
        check("nats://s3cr3t@host:4222", "nats://***@host:4222");
        check("tls://s3cr3t@host", "tls://***@host");
        check(
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        // several, comma-separated, each with its own kind of credential
        check(
            "nats://a:b@c:1,nats://tok@d:2,nats://e:3",
            "nats://a:***@c:1,nats://***@d:2,nats://e:3",
        );
        // no userinfo
        check("nats://127.0.0.1:4222", "nats://127.0.0.1:4222");
        check("postgres://db/ebb", "postgres://db/ebb");
        check("", "");
        // credentials in the query
        check(
            "postgres://ebb@db/ebb?sslmode=require&password=hunter2",
            "postgres://ebb@db/ebb?sslmode=require&password=***",
        );
        check(
            "postgres://db/ebb?PASSWORD=x&application_name=gw",
            "postgres://db/ebb?PASSWORD=***&application_name=gw",
        );
        // malformed: an unescaped `@`, `/` or `:` in the password, no scheme, an empty user
        check("nats://u:p@ss@host:1", "nats://u:***@host:1");
        check("postgres://u:pa/ss@host/db", "postgres://u:***@host/db");
        check("nats://u:a:b@host", "nats://u:***@host");
        check("user:pass@host:4222", "user:***@host:4222");
        check("s3cr3t@host:4222", "***@host:4222");
        check("nats://:secret@host", "nats://:***@host");
        check("not a url", "not a url");
        check("postgres://db/ebb?password=p@ss", "postgres://***@ss");
        check("postgres://db/ebb?password=a:b@c", "postgres://***@c");
    }

    #[test]
    fn secrets_never_show() {
        assert!(!format!("{:?}", Secret("pw".into())).contains("pw"));
        assert_eq!(format!("{:?}", Secret(String::new())), "\"\"");
    }
}

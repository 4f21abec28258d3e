//! Bearer API keys: who a request acts as. The token format and its stored hash are the store's
//! (`ebb_store::keys`); this module checks a presented secret against the row its prefix found.
//! Both cut-offs are half-open: a key is valid strictly before `expires_at` and strictly before
//! `revoked_at`.

use chrono::{DateTime, Utc};
use ebb_bus::Role;
use ebb_domain::OrgId;
use ebb_store::fleet::ApiKeyRow;
use ebb_store::keys::hash;
use uuid::Uuid;

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub key_id: Uuid,
    pub org: OrgId,
    pub role: Role,
    /// `None`: every site of the org.
    pub site_ids: Option<Vec<Uuid>>,
}

/// Checks a stored key against a presented secret at `now`.
pub fn verify(row: &ApiKeyRow, secret: &str, now: DateTime<Utc>) -> Option<Principal> {
    if hash(secret) != row.secret_hash {
        return None;
    }
    if row.expires_at.is_some_and(|t| now >= t) || row.revoked_at.is_some_and(|t| now >= t) {
        return None;
    }
    Some(Principal {
        key_id: row.id,
        org: row.org_id,
        role: Role::parse(&row.role)?,
        site_ids: row.site_ids.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn row(secret: &str) -> ApiKeyRow {
        ApiKeyRow {
            id: Uuid::nil(),
            org_id: OrgId::new(),
            role: "operator".into(),
            secret_hash: hash(secret),
            site_ids: None,
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn generated_keys_parse_and_verify() {
        let k = ebb_store::keys::generate();
        let (prefix, secret) = ebb_store::keys::parse(&k.token).unwrap();
        assert_eq!(prefix, k.prefix);
        let now = Utc::now();
        let r = ApiKeyRow {
            secret_hash: k.secret_hash.clone(),
            ..row("x")
        };
        assert!(verify(&r, secret, now).is_some());
        assert!(verify(&r, "nope", now).is_none());
        for bad in [
            "",
            "ebb_",
            "ebb_abc_def",
            "Bearer x",
            &format!("{}x", k.token),
        ] {
            assert!(ebb_store::keys::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cut_offs_are_half_open() {
        let now = Utc::now();
        let check = |expires: Option<DateTime<Utc>>, revoked: Option<DateTime<Utc>>, ok: bool| {
            let r = ApiKeyRow {
                expires_at: expires,
                revoked_at: revoked,
                ..row("s")
            };
            assert_eq!(
                verify(&r, "s", now).is_some(),
                ok,
                "{expires:?} {revoked:?}"
            );
        };
        check(None, None, true);
        check(Some(now), None, false);
        check(None, Some(now), false);
        check(Some(now + Duration::seconds(1)), None, true);
        // A future revocation is a rotation grace window.
        check(None, Some(now + Duration::seconds(1)), true);
        check(Some(now - Duration::seconds(1)), None, false);
    }
}

//! The deployment's NATS authority: the operator, the system account and the one Ebb account, as
//! nkey seeds in a directory (mode 0700, files 0600). It signs the operator and account JWTs the
//! hub loads, mints a user's `.creds` (signed by the Ebb account, so the server needs no change
//! to accept a new user), re-issues the account JWT with revocations, and writes the
//! authorization part of the hub's configuration.
//!
//! The hub runs the `full` account resolver: the account JWTs live in a directory the server
//! reads at start, and a re-issued account JWT (a revocation) is pushed to the running server by
//! a system-account user on `$SYS.REQ.CLAIMS.UPDATE`, with no restart.

use crate::creds;
use crate::identity::Identity;
use crate::jwt::{self, Account, AccountLimits, Operator, User};
use nkeys::KeyPair;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The Ebb account's name in its JWT.
pub const ACCOUNT_NAME: &str = "EBB";
/// The system account's name in its JWT.
pub const SYSTEM_ACCOUNT_NAME: &str = "SYS";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a valid {kind} seed: {reason}")]
    BadSeed {
        path: PathBuf,
        kind: &'static str,
        reason: String,
    },
    #[error("no NATS authority in {0}: create one with `ebb admin nats init --dir {0}`")]
    Missing(PathBuf),
    #[error(transparent)]
    Jwt(#[from] jwt::JwtError),
    #[error("making a certificate: {0}")]
    Tls(String),
}

/// A user's freshly minted credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Minted {
    /// The user's name (`agent-site-a`).
    pub name: String,
    /// The user's public nkey: what a revocation names.
    pub public_key: String,
    /// The `.creds` file's text: a secret.
    pub creds: String,
    /// When its JWT was issued, unix seconds.
    pub issued_at: i64,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("name", &self.name)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// The key material of one deployment.
pub struct Authority {
    dir: PathBuf,
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("dir", &self.dir)
            .field("account", &self.account.public_key())
            .finish_non_exhaustive()
    }
}

const OPERATOR_SEED: &str = "operator.nk";
const SYSTEM_SEED: &str = "system-account.nk";
const ACCOUNT_SEED: &str = "account.nk";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `text` to `path` readable by its owner only, replacing it atomically.
pub fn write_secret(path: &Path, text: &str) -> Result<(), AuthError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Writes a public file (a JWT, a config), replacing it atomically.
pub fn write_public(path: &Path, text: &str) -> Result<(), AuthError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Authority {
    /// Loads the authority in `dir`, creating any missing key (a new deployment).
    pub fn load_or_create(dir: &Path) -> Result<Self, AuthError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let seed = |file: &str, kind: &'static str, new: fn() -> KeyPair| {
            let path = dir.join(file);
            if !path.exists() {
                let kp = new();
                let seed = kp.seed().map_err(|e| AuthError::BadSeed {
                    path: path.clone(),
                    kind,
                    reason: e.to_string(),
                })?;
                write_secret(&path, &seed)?;
            }
            read_seed(&path, kind)
        };
        Ok(Self {
            dir: dir.to_owned(),
            operator: seed(OPERATOR_SEED, "operator", KeyPair::new_operator)?,
            system: seed(SYSTEM_SEED, "account", KeyPair::new_account)?,
            account: seed(ACCOUNT_SEED, "account", KeyPair::new_account)?,
        })
    }

    /// Loads an existing authority; a missing one is an error saying how to create it.
    pub fn load(dir: &Path) -> Result<Self, AuthError> {
        if !dir.join(ACCOUNT_SEED).exists() {
            return Err(AuthError::Missing(dir.to_owned()));
        }
        Ok(Self {
            dir: dir.to_owned(),
            operator: read_seed(&dir.join(OPERATOR_SEED), "operator")?,
            system: read_seed(&dir.join(SYSTEM_SEED), "account")?,
            account: read_seed(&dir.join(ACCOUNT_SEED), "account")?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Ebb account's public key (every user of the deployment belongs to it).
    pub fn account_public_key(&self) -> String {
        self.account.public_key()
    }

    /// The system account's public key.
    pub fn system_public_key(&self) -> String {
        self.system.public_key()
    }

    /// The operator's self-signed JWT.
    pub fn operator_jwt(&self) -> Result<String, AuthError> {
        let claims = jwt::claims(
            "ebb",
            &self.operator.public_key(),
            now(),
            Operator {
                kind: "operator".into(),
                version: 2,
                system_account: Some(self.system.public_key()),
            },
        );
        Ok(jwt::encode(claims, &self.operator)?)
    }

    /// The system account's JWT (server monitoring and claims updates; no JetStream).
    pub fn system_account_jwt(&self) -> Result<String, AuthError> {
        let claims = jwt::claims(
            SYSTEM_ACCOUNT_NAME,
            &self.system.public_key(),
            now(),
            Account {
                kind: "account".into(),
                version: 2,
                limits: AccountLimits::unlimited_without_jetstream(),
                revocations: BTreeMap::new(),
            },
        );
        Ok(jwt::encode(claims, &self.operator)?)
    }

    /// The Ebb account's JWT with JetStream and `revocations` (user public key → unix seconds:
    /// every JWT of that user issued at or before it is refused).
    pub fn account_jwt(&self, revocations: &BTreeMap<String, i64>) -> Result<String, AuthError> {
        let claims = jwt::claims(
            ACCOUNT_NAME,
            &self.account.public_key(),
            now(),
            Account {
                kind: "account".into(),
                version: 2,
                limits: AccountLimits::unlimited_with_jetstream(),
                revocations: revocations.clone(),
            },
        );
        Ok(jwt::encode(claims, &self.operator)?)
    }

    /// New credentials for `identity`, signed by the Ebb account.
    pub fn mint(&self, identity: &Identity) -> Result<Minted, AuthError> {
        self.mint_user(&identity.name(), identity.user_claims(), &self.account)
    }

    /// New credentials of a system-account user: it may push account updates to the server.
    pub fn mint_system_user(&self, name: &str) -> Result<Minted, AuthError> {
        let everything = crate::jwt::Permission {
            allow: vec![">".into()],
            deny: Vec::new(),
        };
        let claims = User {
            kind: "user".into(),
            version: 2,
            publish: everything.clone(),
            subscribe: everything,
            resp: None,
            subs: -1,
            data: -1,
            payload: -1,
        };
        self.mint_user(name, claims, &self.system)
    }

    fn mint_user(&self, name: &str, claims: User, signer: &KeyPair) -> Result<Minted, AuthError> {
        let user = KeyPair::new_user();
        let issued_at = now();
        let jwt = jwt::encode(
            jwt::claims(name, &user.public_key(), issued_at, claims),
            signer,
        )?;
        let seed = user.seed().map_err(|e| AuthError::BadSeed {
            path: PathBuf::new(),
            kind: "user",
            reason: e.to_string(),
        })?;
        Ok(Minted {
            name: name.to_owned(),
            public_key: user.public_key(),
            creds: creds::format(&jwt, &seed),
            issued_at,
        })
    }

    /// Writes the operator JWT and the account JWTs (with `revocations`) where the hub's
    /// configuration reads them, and returns the configuration's authorization part (to be
    /// included by the hub's config): operator mode, the system account, and the `full` resolver
    /// over `<dir>/jwt`.
    pub fn write_server_auth(
        &self,
        revocations: &BTreeMap<String, i64>,
    ) -> Result<PathBuf, AuthError> {
        let jwt_dir = self.dir.join("jwt");
        std::fs::create_dir_all(&jwt_dir).map_err(io(&jwt_dir))?;
        let operator = self.dir.join("operator.jwt");
        write_public(&operator, &self.operator_jwt()?)?;
        self.write_account_jwts(revocations)?;
        let conf = format!(
            "# Written by `ebb admin nats init`: operator mode with the full account resolver.\n\
             operator: \"{}\"\n\
             system_account: {}\n\
             resolver: {{\n    type: full\n    dir: \"{}\"\n    allow_delete: false\n    interval: \"2m\"\n}}\n",
            operator.display(),
            self.system.public_key(),
            jwt_dir.display(),
        );
        let path = self.dir.join("auth.conf");
        write_public(&path, &conf)?;
        Ok(path)
    }

    /// Writes the system and Ebb account JWTs into the resolver's directory, where a starting
    /// server finds them; returns the Ebb account's JWT.
    pub fn write_account_jwts(
        &self,
        revocations: &BTreeMap<String, i64>,
    ) -> Result<String, AuthError> {
        let jwt_dir = self.dir.join("jwt");
        std::fs::create_dir_all(&jwt_dir).map_err(io(&jwt_dir))?;
        write_public(
            &jwt_dir.join(format!("{}.jwt", self.system.public_key())),
            &self.system_account_jwt()?,
        )?;
        let account = self.account_jwt(revocations)?;
        write_public(
            &jwt_dir.join(format!("{}.jwt", self.account.public_key())),
            &account,
        )?;
        Ok(account)
    }
}

fn read_seed(path: &Path, kind: &'static str) -> Result<KeyPair, AuthError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    KeyPair::from_seed(text.trim()).map_err(|e| AuthError::BadSeed {
        path: path.to_owned(),
        kind,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_domain::SiteCode;

    #[test]
    fn keys_persist_and_users_are_signed_by_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::load_or_create(dir.path()).unwrap();
        let b = Authority::load(dir.path()).unwrap();
        assert_eq!(a.account_public_key(), b.account_public_key());
        let mode = std::fs::metadata(dir.path().join(ACCOUNT_SEED))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let minted = a
            .mint(&Identity::Agent(SiteCode::parse("site-a").unwrap()))
            .unwrap();
        let user = creds::user_of(&minted.creds).unwrap();
        assert_eq!(user.name, "agent-site-a");
        assert_eq!(user.iss, a.account_public_key());
        assert_eq!(user.sub, minted.public_key);
        assert_eq!(
            creds::inbox_prefix(&minted.creds).unwrap(),
            "_INBOX_agent-site-a"
        );
        // The seed is the creds file's line that starts with `SU`; no Debug shows it.
        let seed = minted
            .creds
            .lines()
            .find(|l| l.starts_with("SU"))
            .expect("a user seed in the creds");
        assert!(!format!("{minted:?}").contains(seed), "no seed in Debug");
        assert!(!format!("{a:?}").contains(seed), "no seed in Debug");

        let revoked = BTreeMap::from([(minted.public_key.clone(), minted.issued_at)]);
        let account: jwt::Claims<Account> = jwt::decode(&a.account_jwt(&revoked).unwrap()).unwrap();
        assert_eq!(account.nats.revocations, revoked);
        assert_eq!(
            account.iss,
            jwt::decode::<Operator>(&a.operator_jwt().unwrap())
                .unwrap()
                .sub
        );
    }

    #[test]
    fn a_missing_authority_says_how_to_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = Authority::load(&dir.path().join("none")).unwrap_err();
        assert!(err.to_string().contains("ebb admin nats init"), "{err}");
    }
}

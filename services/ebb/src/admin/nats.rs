//! `ebb admin nats …` and `ebb admin site add|revoke-creds`: the deployment's NATS authority
//! (keys, the hub's auth config, TLS), credentials minted per service, per site agent and per
//! integration, and revocation pushed to the running hub with no restart.
//!
//! Every credential minted is recorded (`nats_credential`), so the Ebb account's revocations are
//! rebuilt from the database, survive a restart of the hub, and can be pushed again.

use anyhow::Context;
use ebb_domain::{OrgId, SiteCode, SiteId};
use ebb_natsauth::{Authority, Identity, Minted};
use ebb_store::PgPool;
use std::path::{Path, PathBuf};

/// The services that run with their own credentials, and the operator's user.
pub const SERVICE_IDENTITIES: [Identity; 5] = [
    Identity::Gateway,
    Identity::Planner,
    Identity::Reconciler,
    Identity::Worker,
    Identity::Ops,
];

/// The system-account user's credentials, kept with the keys: it pushes account updates.
pub const SYSTEM_CREDS: &str = "sys.creds";

/// Mints credentials for `identity`, records them, and writes `<dir>/<name>.creds` (mode 0600).
pub async fn mint_to(
    pool: &PgPool,
    authority: &Authority,
    identity: &Identity,
    site: Option<SiteId>,
    org: Option<OrgId>,
    dir: &Path,
) -> anyhow::Result<(PathBuf, Minted)> {
    let minted = authority.mint(identity)?;
    let issued = chrono::DateTime::from_timestamp(minted.issued_at, 0).unwrap_or_default();
    ebb_store::natscreds::record(pool, &minted.public_key, &minted.name, site, org, issued)
        .await
        .context("recording the credential")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.creds", minted.name));
    ebb_natsauth::authority::write_secret(&path, &minted.creds)?;
    Ok((path, minted))
}

/// Creates (or loads) the authority in `auth_dir`, writes the hub's auth config with the current
/// revocations and the system user's credentials; returns the authority.
pub async fn init(pool: &PgPool, auth_dir: &Path) -> anyhow::Result<Authority> {
    let authority = Authority::load_or_create(auth_dir)?;
    let revocations = ebb_store::natscreds::revocations(pool).await?;
    authority.write_server_auth(&revocations)?;
    let sys = auth_dir.join(SYSTEM_CREDS);
    if !sys.exists() {
        let minted = authority.mint_system_user("sys")?;
        ebb_natsauth::authority::write_secret(&sys, &minted.creds)?;
    }
    Ok(authority)
}

/// Where to reach the running hub to push an account update.
#[derive(Clone, Debug)]
pub struct Hub<'a> {
    pub url: &'a str,
    pub ca: Option<&'a Path>,
}

/// Revokes every credential of `name`, re-issues the Ebb account with every revocation, writes
/// it where a restarting hub reads it, and pushes it to the running hub. Returns how many
/// credentials were revoked.
pub async fn revoke(
    pool: &PgPool,
    authority: &Authority,
    name: &str,
    hub: Option<&Hub<'_>>,
) -> anyhow::Result<u64> {
    let revoked = ebb_store::natscreds::revoke_by_name(pool, name).await?;
    let revocations = ebb_store::natscreds::revocations(pool).await?;
    let jwt = authority.write_account_jwts(&revocations)?;
    if let Some(hub) = hub {
        push_account(hub, &authority.dir().join(SYSTEM_CREDS), &jwt)
            .await
            .context("pushing the re-issued account to the running nats server")?;
    }
    Ok(revoked)
}

/// Sends an account JWT to the running server as its system user (`$SYS.REQ.CLAIMS.UPDATE`,
/// the full resolver's update request); the server applies it at once, revocations included.
pub async fn push_account(hub: &Hub<'_>, sys_creds: &Path, jwt: &str) -> anyhow::Result<()> {
    let common = ebb_runtime::Common {
        nats_url: hub.url.into(),
        nats_ca: hub.ca.map(|p| p.display().to_string()).unwrap_or_default(),
        ..ebb_runtime::Common::default()
    };
    // The system user is not an Ebb account user: no inbox prefix, just its credentials.
    let auth = ebb_bus::ClientAuth {
        creds: Some(sys_creds),
        inbox_prefix: None,
        ca: hub.ca,
    };
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ebb_bus::connect_with(common.nats_url.as_str(), "ebb-admin", &auth),
    )
    .await
    .context("connecting as the system user timed out")??;
    let reply = client
        .request("$SYS.REQ.CLAIMS.UPDATE", jwt.to_owned().into())
        .await
        .context("asking the server to update the account")?;
    let body: serde_json::Value = serde_json::from_slice(&reply.payload)
        .with_context(|| format!("an unreadable answer: {:?}", reply.payload))?;
    if let Some(error) = body.get("error") {
        anyhow::bail!("the server refused the account update: {error}");
    }
    Ok(())
}

/// The site agent's identity.
pub fn agent(site: &SiteCode) -> Identity {
    Identity::Agent(site.clone())
}

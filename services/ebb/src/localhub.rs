//! The production hub (`nats/hub.conf`, compiled in) on this machine, for `ebb dev` and the
//! system tests: the same operator-mode auth, TLS and permissions as a deployment, with only its
//! addresses and file locations made local. Under one directory:
//!
//! - `auth/`: the NATS authority (keys, `auth.conf`, the resolver's JWT dir);
//! - `tls/`: a private CA and the hub's certificate for `localhost` and `127.0.0.1`;
//! - `<user>.creds`: one credential per service (`gateway.creds`, …), per site agent
//!   (`agent-<site>.creds`), the operator (`ops.creds`) and the org's integration
//!   (`integration.creds`), minted once and recorded like `ebb admin` records them;
//! - `hub.conf`: the hub's configuration.
//!
//! So what a developer runs is what the adversarial suite tests.

use crate::admin::nats as admin_nats;
use anyhow::Context;
use ebb_domain::OrgId;
use ebb_natsauth::tls::TlsFiles;
use ebb_natsauth::{Authority, Identity};
use ebb_store::PgPool;
use ebb_store::fleet::Site;
use std::path::{Path, PathBuf};

/// The hub configuration every deployment runs.
pub const HUB_CONF: &str = include_str!("../../../nats/hub.conf");

/// The integration the dev org gets (`integration.creds`).
pub const DEV_INTEGRATION: &str = "dev";

/// Where a local hub listens and keeps its files.
#[derive(Clone, Debug)]
pub struct Local<'a> {
    /// The client port (`127.0.0.1:4222`, or `127.0.0.1:-1` for any).
    pub listen: &'a str,
    /// Monitoring (`127.0.0.1:-1` for any free port).
    pub http: &'a str,
    /// The leafnode port.
    pub leaf: &'a str,
    /// The JetStream store; `None` when the command line gives it (`-sd`).
    pub store: Option<&'a Path>,
    pub tls: &'a TlsFiles,
}

/// `nats/hub.conf` with `local`'s addresses and files. Fails if the template no longer has a
/// line it replaces, so the two cannot drift apart silently.
pub fn hub_conf(local: &Local<'_>) -> anyhow::Result<String> {
    let q = |p: &Path| format!("\"{}\"", p.display());
    let store = match local.store {
        Some(p) => format!("store_dir: {}", q(p)),
        None => String::new(),
    };
    let mut text = HUB_CONF.to_owned();
    for (from, to) in [
        (
            "listen: 0.0.0.0:4222",
            format!("listen: \"{}\"", local.listen),
        ),
        ("http: 127.0.0.1:8222", format!("http: \"{}\"", local.http)),
        (
            "listen: 0.0.0.0:7422",
            format!("listen: \"{}\"", local.leaf),
        ),
        ("store_dir: \"/data/nats\"", store),
        ("\"/etc/nats/tls/server.pem\"", q(&local.tls.cert)),
        ("\"/etc/nats/tls/server-key.pem\"", q(&local.tls.key)),
    ] {
        anyhow::ensure!(
            text.contains(from),
            "nats/hub.conf no longer has {from:?}: update services/ebb/src/localhub.rs"
        );
        text = text.replace(from, &to);
    }
    Ok(text)
}

/// A prepared local hub: its files, ready to start with `nats-server -c <conf>`.
#[derive(Debug)]
pub struct Prepared {
    pub dir: PathBuf,
    pub authority: Authority,
    pub tls: TlsFiles,
}

impl Prepared {
    /// The credentials file of `identity`.
    pub fn creds(&self, identity: &Identity) -> PathBuf {
        self.dir.join(creds_file(identity))
    }

    /// Writes `hub.conf` for `local` into the directory; returns its path.
    pub fn write_conf(&self, local: &Local<'_>) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("hub.conf");
        std::fs::write(&path, hub_conf(local)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// The file name of an identity's credentials in a local hub's directory (the integration of
/// the dev org is `integration.creds`, the name `ebb dev` prints).
pub fn creds_file(identity: &Identity) -> String {
    match identity {
        Identity::Integration { .. } => "integration.creds".into(),
        other => format!("{}.creds", other.name()),
    }
}

/// Creates (or reuses) the authority, TLS files and every credential `org`'s `sites` need in
/// `dir`. Credentials already there are kept (the authority is too, so they stay valid).
pub async fn prepare(
    pool: &PgPool,
    dir: &Path,
    org: OrgId,
    sites: &[Site],
) -> anyhow::Result<Prepared> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let authority = admin_nats::init(pool, &dir.join("auth")).await?;
    let tls = ebb_natsauth::tls::generate(
        &dir.join("tls"),
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )?;
    let mut wanted: Vec<(Identity, Option<&Site>)> = admin_nats::SERVICE_IDENTITIES
        .iter()
        .cloned()
        .map(|i| (i, None))
        .collect();
    wanted.extend(sites.iter().map(|s| (admin_nats::agent(&s.code), Some(s))));
    wanted.push((
        Identity::Integration {
            name: DEV_INTEGRATION.into(),
            org,
        },
        None,
    ));
    for (identity, site) in wanted {
        let path = dir.join(creds_file(&identity));
        if path.exists() {
            continue;
        }
        let org_of = site.map(|s| s.org_id).or(match &identity {
            Identity::Integration { org, .. } => Some(*org),
            _ => None,
        });
        let (minted_to, _) =
            admin_nats::mint_to(pool, &authority, &identity, site.map(|s| s.id), org_of, dir)
                .await?;
        if minted_to != path {
            std::fs::rename(&minted_to, &path)
                .with_context(|| format!("moving {} to {}", minted_to.display(), path.display()))?;
        }
    }
    Ok(Prepared {
        dir: dir.to_owned(),
        authority,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_conf_keeps_everything_but_addresses_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles::in_dir(dir.path());
        let conf = hub_conf(&Local {
            listen: "127.0.0.1:4222",
            http: "127.0.0.1:-1",
            leaf: "127.0.0.1:-1",
            store: Some(dir.path()),
            tls: &tls,
        })
        .unwrap();
        for kept in [
            "include \"auth/auth.conf\"",
            "domain: hub",
            "max_payload: 1MB",
            "tls {",
        ] {
            assert!(conf.contains(kept), "{kept} is gone:\n{conf}");
        }
        let settings: Vec<&str> = conf
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .collect();
        for line in settings {
            assert!(
                !line.contains("0.0.0.0") && !line.contains("/etc/nats") && !line.contains("/data"),
                "{line} is not local"
            );
        }
    }
}

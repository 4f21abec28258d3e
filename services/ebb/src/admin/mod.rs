//! `ebb admin`: migrations and the records an operator creates by hand (orgs, sites, API keys,
//! NATS credentials), against `DATABASE_URL`. `bootstrap` is the idempotent combination that `ebb dev` and
//! `compose.yaml` use: an org with its sites and an admin key kept in a file, reused when they
//! exist already.

pub mod nats;

use anyhow::Context;
use ebb_bus::Role;
use ebb_domain::{OrgId, SiteCode};
use ebb_natsauth::{Authority, Identity};
use ebb_obs::Secret;
use ebb_store::PgPool;
use ebb_store::fleet::{self, Site};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// PostgreSQL URL.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        global = true,
        default_value = ""
    )]
    pub database_url: Secret,
    /// The deployment's NATS authority: its keys, the hub's auth config, the system user.
    #[arg(long, env = "EBB_NATS_AUTH_DIR", global = true)]
    pub nats_auth_dir: Option<PathBuf>,
    /// The running hub, to push a revocation to (with the authority's system user).
    #[arg(long, env = "NATS_URL", global = true)]
    pub nats_url: Option<ebb_obs::CredUrl>,
    /// The CA the hub's certificate chains to.
    #[arg(long, env = "EBB_NATS_CA", global = true)]
    pub nats_ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum NatsCommand {
    /// Create the deployment's NATS authority (operator, system and Ebb accounts) if missing,
    /// write the hub's auth config (`<auth dir>/auth.conf`, included by nats/hub.conf), and mint
    /// each service's credentials (`<creds dir>/<service>.creds`) that do not exist yet.
    Init {
        /// Where the service credentials go.
        #[arg(long)]
        creds_dir: PathBuf,
        /// Also write a private CA and a server certificate for the hub's TLS ports here (kept
        /// if present), valid for each --host, and a copy of the CA into the creds dir
        /// (`ca.pem`), for the clients.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// An existing site whose agent's credentials are minted too, unless its `.creds` file
        /// exists already; repeat for several.
        #[arg(long = "site", value_parser = parse_site)]
        sites: Vec<SiteCode>,
        /// A name or address the hub's certificate is valid for; repeat for several.
        #[arg(long = "host", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        hosts: Vec<String>,
    },
    /// Mint credentials for an integration: it may only create and read its durable consumer
    /// on the event feed, filtered inside its org's events (`ebb.event.<org>.>`).
    Integration {
        /// Its name: 1-64 of a-z, 0-9, `_` and `-`; its durable consumer is `integration-<name>`.
        name: String,
        /// The org whose events it reads.
        #[arg(long)]
        org: Uuid,
        /// Where its `.creds` file goes.
        #[arg(long)]
        creds_dir: PathBuf,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum SiteCommand {
    /// Create a site (or reuse it) and mint its agent's NATS credentials as
    /// `<creds dir>/agent-<code>.creds`, permitted only that site's subjects.
    Add {
        /// The site's token in NATS subjects: 1-64 of a-z, 0-9, `_` and `-`.
        #[arg(value_parser = parse_site)]
        code: SiteCode,
        /// The org the site belongs to (when it is created).
        #[arg(long)]
        org: Option<Uuid>,
        /// Its display name (default: the code).
        #[arg(long)]
        name: Option<String>,
        /// The most power a restore may add per minute, in kW.
        #[arg(long)]
        ramp_limit_kw_per_min: Option<f64>,
        /// Where the agent's `.creds` file goes.
        #[arg(long)]
        creds_dir: PathBuf,
    },
    /// Revoke every credential of the site's agent and push the revocation to the running hub:
    /// its next connect is refused, with no server restart.
    RevokeCreds {
        #[arg(value_parser = parse_site)]
        code: SiteCode,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum IntegrationCommand {
    /// Mint credentials for an integration: it may only create and read its durable consumer
    /// `integration-<name>` on the event feed, filtered inside its org's events
    /// (`ebb.event.<org>.>`). The same as `ebb admin nats integration`.
    Add {
        /// Its name: 1-64 of a-z, 0-9, `_` and `-`.
        name: String,
        /// The org whose events it reads.
        #[arg(long)]
        org: Uuid,
        /// Where its `.creds` file goes.
        #[arg(long, default_value = ".")]
        creds_dir: PathBuf,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Apply pending migrations (safe to run from several processes at once).
    Migrate,
    /// The deployment's NATS authority and credentials.
    Nats {
        #[command(subcommand)]
        command: NatsCommand,
    },
    /// Sites and their agents' NATS credentials.
    Site {
        #[command(subcommand)]
        command: SiteCommand,
    },
    /// Integrations that read an org's event feed.
    Integration {
        #[command(subcommand)]
        command: IntegrationCommand,
    },
    /// Create an org; prints its id.
    CreateOrg {
        #[arg(long)]
        name: String,
    },
    /// Create a site in an org; prints its id.
    CreateSite {
        /// The org's id.
        #[arg(long)]
        org: Uuid,
        /// The site's token in NATS subjects: 1-64 of a-z, 0-9, `_` and `-`.
        #[arg(long, value_parser = parse_site)]
        code: SiteCode,
        #[arg(long)]
        name: String,
        /// The most power a restore may add per minute, in kW.
        #[arg(long)]
        ramp_limit_kw_per_min: Option<f64>,
    },
    /// Create an API key; prints the token, which is shown only this once.
    CreateKey {
        /// The org's id.
        #[arg(long)]
        org: Uuid,
        /// viewer, operator or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// Limit the key to this site (its code); repeat for several. Without it the key
        /// reaches every site of the org.
        #[arg(long = "site", value_parser = parse_site)]
        sites: Vec<SiteCode>,
        /// When the key stops working (RFC 3339).
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// List an org's API keys (never their secrets), one per line.
    ListKeys {
        /// The org's id.
        #[arg(long)]
        org: Uuid,
    },
    /// Revoke an API key, now or after a rotation's grace window.
    RevokeKey {
        /// The org's id.
        #[arg(long)]
        org: Uuid,
        /// The key's id.
        #[arg(long)]
        id: Uuid,
        /// Seconds the key keeps working (at most a week).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=604_800))]
        grace_s: u32,
    },
    /// Make sure an org with these sites and an admin key exist (idempotent): the org is found
    /// by its sites, and the key in --key-file is reused while it still works.
    Bootstrap {
        /// The org's name, when it has to be created.
        #[arg(long, default_value = "dev")]
        org_name: String,
        /// A site code; repeat for several sites.
        #[arg(long = "site", required = true, value_parser = parse_site)]
        sites: Vec<SiteCode>,
        /// Where the admin API key is kept (mode 0600).
        #[arg(long)]
        key_file: PathBuf,
    },
}

fn parse_site(s: &str) -> Result<SiteCode, String> {
    SiteCode::parse(s).map_err(|e| e.to_string())
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not a role: use viewer, operator or admin"))
}

pub async fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    if args.database_url.expose().is_empty() {
        eprintln!(
            "error: set DATABASE_URL (or --database-url) to the PostgreSQL database to administer"
        );
        return Ok(ExitCode::from(ebb_runtime::cli::EXIT_INVALID_CONFIG));
    }
    let pool = ebb_store::connect(args.database_url.expose(), 2)
        .await
        .context("connecting to postgresql")?;
    let hub = args.nats_url.as_ref().map(|url| nats::Hub {
        url: url.as_str(),
        ca: args.nats_ca.as_deref(),
    });
    let auth_dir = || {
        args.nats_auth_dir
            .clone()
            .context("set --nats-auth-dir (or EBB_NATS_AUTH_DIR) to the NATS authority's directory")
    };
    match args.command {
        AdminCommand::Nats {
            command:
                NatsCommand::Init {
                    creds_dir,
                    tls_dir,
                    hosts,
                    sites,
                },
        } => {
            let dir = auth_dir()?;
            let authority = nats::init(&pool, &dir).await?;
            eprintln!(
                "nats authority in {} (auth config {})",
                dir.display(),
                dir.join("auth.conf").display()
            );
            if let Some(tls) = tls_dir {
                let files = ebb_natsauth::tls::generate(&tls, &hosts)?;
                std::fs::create_dir_all(&creds_dir)
                    .with_context(|| format!("creating {}", creds_dir.display()))?;
                std::fs::copy(&files.ca, creds_dir.join("ca.pem"))
                    .with_context(|| format!("copying the CA into {}", creds_dir.display()))?;
                eprintln!(
                    "tls: ca {}, certificate {}",
                    files.ca.display(),
                    files.cert.display()
                );
            }
            for code in &sites {
                let name = nats::agent(code).name();
                if creds_dir.join(format!("{name}.creds")).exists() {
                    continue;
                }
                let site = fleet::site_by_code(&pool, code).await?.with_context(|| {
                    format!("site {code} does not exist: create it first (ebb admin site add {code} --org …)")
                })?;
                let (path, _) = nats::mint_to(
                    &pool,
                    &authority,
                    &nats::agent(code),
                    Some(site.id),
                    Some(site.org_id),
                    &creds_dir,
                )
                .await?;
                eprintln!("minted {}", path.display());
            }
            for identity in &nats::SERVICE_IDENTITIES {
                let path = creds_dir.join(format!("{}.creds", identity.name()));
                if path.exists() {
                    continue;
                }
                let (path, _) =
                    nats::mint_to(&pool, &authority, identity, None, None, &creds_dir).await?;
                eprintln!("minted {}", path.display());
            }
        }
        AdminCommand::Nats {
            command:
                NatsCommand::Integration {
                    name,
                    org,
                    creds_dir,
                },
        }
        | AdminCommand::Integration {
            command:
                IntegrationCommand::Add {
                    name,
                    org,
                    creds_dir,
                },
        } => {
            if !ebb_natsauth::identity::valid_name(&name) {
                anyhow::bail!("integration name {name:?} must be 1-64 of a-z, 0-9, '_' and '-'");
            }
            let authority = Authority::load(&auth_dir()?)?;
            let identity = Identity::Integration {
                name,
                org: OrgId(org),
            };
            let (path, _) = nats::mint_to(
                &pool,
                &authority,
                &identity,
                None,
                Some(OrgId(org)),
                &creds_dir,
            )
            .await?;
            println!("{}", path.display());
            eprintln!(
                "its durable consumer on stream {}: {}, filter {}.{org}.>",
                ebb_bus::streams::EVENT,
                identity.name(),
                ebb_bus::subjects::EVENT_PREFIX
            );
        }
        AdminCommand::Site {
            command:
                SiteCommand::Add {
                    code,
                    org,
                    name,
                    ramp_limit_kw_per_min,
                    creds_dir,
                },
        } => {
            let authority = Authority::load(&auth_dir()?)?;
            let site = match fleet::site_by_code(&pool, &code).await? {
                Some(site) => site,
                None => {
                    let org = org.with_context(|| {
                        format!("site {code} does not exist yet: give --org to create it")
                    })?;
                    if let Some(r) = ramp_limit_kw_per_min
                        && !(r.is_finite() && r > 0.0)
                    {
                        anyhow::bail!("--ramp-limit-kw-per-min must be a positive number, got {r}");
                    }
                    let label = name.unwrap_or_else(|| code.to_string());
                    fleet::create_site(&pool, OrgId(org), &code, &label, ramp_limit_kw_per_min)
                        .await
                        .with_context(|| format!("creating site {code}"))?;
                    eprintln!("created site {code}");
                    fleet::site_by_code(&pool, &code).await?.with_context(|| {
                        format!("site {code} vanished right after it was created")
                    })?
                }
            };
            let (path, minted) = nats::mint_to(
                &pool,
                &authority,
                &nats::agent(&code),
                Some(site.id),
                Some(site.org_id),
                &creds_dir,
            )
            .await?;
            eprintln!(
                "minted {} for {} ({})",
                path.display(),
                minted.name,
                minted.public_key
            );
            println!("{}", path.display());
        }
        AdminCommand::Site {
            command: SiteCommand::RevokeCreds { code },
        } => {
            let authority = Authority::load(&auth_dir()?)?;
            let name = nats::agent(&code).name();
            if hub.is_none() {
                eprintln!(
                    "warning: no --nats-url: the revocation is written for the next hub start but not pushed to a running one"
                );
            }
            let revoked = nats::revoke(&pool, &authority, &name, hub.as_ref()).await?;
            eprintln!(
                "revoked {revoked} credential(s) of {name}{}",
                if hub.is_some() {
                    "; the running hub has the revocation"
                } else {
                    ""
                }
            );
        }
        AdminCommand::Migrate => {
            ebb_store::migrate(&pool)
                .await
                .context("running migrations")?;
            let applied = ebb_store::MIGRATOR.iter().count();
            eprintln!("database is migrated ({applied} migrations known)");
        }
        AdminCommand::CreateOrg { name } => {
            if name.trim().is_empty() {
                anyhow::bail!("--name must not be empty");
            }
            let id = fleet::create_org(&pool, name.trim())
                .await
                .context("creating the org")?;
            println!("{id}");
        }
        AdminCommand::CreateSite {
            org,
            code,
            name,
            ramp_limit_kw_per_min,
        } => {
            if let Some(r) = ramp_limit_kw_per_min
                && !(r.is_finite() && r > 0.0)
            {
                anyhow::bail!("--ramp-limit-kw-per-min must be a positive number, got {r}");
            }
            let id = fleet::create_site(&pool, OrgId(org), &code, &name, ramp_limit_kw_per_min)
                .await
                .with_context(|| format!("creating site {code}"))?;
            println!("{id}");
        }
        AdminCommand::CreateKey {
            org,
            role,
            name,
            sites,
            expires_at,
        } => {
            let org = OrgId(org);
            if name.trim().is_empty() {
                anyhow::bail!("--name must not be empty");
            }
            if expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
                anyhow::bail!("--expires-at must be in the future");
            }
            let limited = if sites.is_empty() {
                None
            } else {
                let known = fleet::sites(&pool, org).await?;
                let mut ids = Vec::new();
                for code in &sites {
                    let site = known
                        .iter()
                        .find(|s| &s.code == code)
                        .with_context(|| format!("--site {code} is not a site of org {org}"))?;
                    ids.push(site.id);
                }
                Some(ids)
            };
            let key =
                create_key_limited(&pool, org, role, &name, limited.as_deref(), expires_at).await?;
            println!("{key}");
            eprintln!("this token is shown only once: store it now");
        }
        AdminCommand::ListKeys { org } => {
            let org = OrgId(org);
            let sites = fleet::sites(&pool, org).await?;
            for k in ebb_store::access::keys(&pool, org).await? {
                let reach = k.site_ids.map_or_else(
                    || "every-site".to_owned(),
                    |ids| {
                        ids.iter()
                            .filter_map(|id| sites.iter().find(|s| s.id.0 == *id))
                            .map(|s| s.code.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                );
                let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
                };
                println!(
                    "{}\t{}\t{}\tsites={reach}\texpires={}\trevoked={}\tlast_used={}",
                    k.id,
                    k.role,
                    k.name,
                    when(k.expires_at),
                    when(k.revoked_at),
                    when(k.last_used_at)
                );
            }
        }
        AdminCommand::RevokeKey { org, id, grace_s } => {
            let org = OrgId(org);
            let at = chrono::Utc::now() + chrono::Duration::seconds(i64::from(grace_s));
            let mut tx = pool.begin().await?;
            let Some(k) = ebb_store::access::revoke_key(&mut *tx, org, id, at).await? else {
                anyhow::bail!("org {org} has no key {id}");
            };
            ebb_store::events::audit(
                &mut *tx,
                org,
                "admin_cli",
                None,
                "key_revoked",
                Some(id),
                serde_json::json!({ "revoked_at": k.revoked_at, "grace_s": grace_s }),
            )
            .await?;
            tx.commit().await?;
            println!(
                "key {id} is refused from {}",
                k.revoked_at.map_or_else(String::new, |t| t.to_rfc3339())
            );
        }
        AdminCommand::Bootstrap {
            org_name,
            sites,
            key_file,
        } => {
            let named: Vec<(SiteCode, String)> = sites
                .into_iter()
                .map(|c| (c.clone(), c.to_string()))
                .collect();
            let (org, sites) = ensure_org_and_sites(&pool, &org_name, &named, None).await?;
            let key = ensure_admin_key(&pool, org, &key_file).await?;
            eprintln!(
                "org {org} with sites {}; admin api key in {} ({})",
                sites
                    .iter()
                    .map(|s| s.code.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                key_file.display(),
                if key.created { "created" } else { "reused" }
            );
        }
    }
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Creates an API key that reaches every site and returns its token.
pub async fn create_key(
    pool: &PgPool,
    org: OrgId,
    role: Role,
    name: &str,
) -> anyhow::Result<String> {
    create_key_limited(pool, org, role, name, None, None).await
}

/// Creates an API key, audited, and returns its token.
pub async fn create_key_limited(
    pool: &PgPool,
    org: OrgId,
    role: Role,
    name: &str,
    sites: Option<&[ebb_domain::SiteId]>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<String> {
    let key = ebb_store::keys::generate();
    let row = fleet::NewApiKey {
        org,
        prefix: &key.prefix,
        secret_hash: &key.secret_hash,
        role: role.as_str(),
        name,
        expires_at,
        site_ids: sites,
    };
    let mut tx = pool.begin().await?;
    let id = fleet::insert_api_key(&mut *tx, &row)
        .await
        .context("creating the api key")?;
    ebb_store::events::audit(
        &mut *tx,
        org,
        "admin_cli",
        None,
        "key_created",
        Some(id),
        serde_json::json!({ "name": name, "role": role.as_str(),
            "sites": sites.map(|s| s.iter().map(|x| x.0).collect::<Vec<_>>()),
            "expires_at": expires_at }),
    )
    .await?;
    tx.commit().await?;
    Ok(key.token)
}

/// Finds the org that owns the first existing site of `sites` and creates the missing sites in
/// it; creates the org when none of the sites exists. Fails if the sites belong to different
/// orgs: site codes are global, and mixing tenants is never what a bootstrap wants.
pub async fn ensure_org_and_sites(
    pool: &PgPool,
    org_name: &str,
    sites: &[(SiteCode, String)],
    ramp_limit_kw_per_min: Option<f64>,
) -> anyhow::Result<(OrgId, Vec<Site>)> {
    let mut existing = Vec::new();
    for (code, _) in sites {
        if let Some(site) = fleet::site_by_code(pool, code)
            .await
            .with_context(|| format!("looking up site {code}"))?
        {
            existing.push(site);
        }
    }
    let org = match existing.first() {
        Some(site) => {
            if let Some(other) = existing.iter().find(|s| s.org_id != site.org_id) {
                anyhow::bail!(
                    "sites {} and {} belong to different orgs; use other site codes or another database",
                    site.code,
                    other.code
                );
            }
            site.org_id
        }
        None => fleet::create_org(pool, org_name)
            .await
            .context("creating the org")?,
    };
    let mut out = Vec::with_capacity(sites.len());
    for (code, name) in sites {
        let site = match existing.iter().find(|s| &s.code == code) {
            Some(site) => site.clone(),
            None => {
                fleet::create_site(pool, org, code, name, ramp_limit_kw_per_min)
                    .await
                    .with_context(|| format!("creating site {code}"))?;
                fleet::site_by_code(pool, code)
                    .await
                    .with_context(|| format!("reading site {code} back"))?
                    .with_context(|| format!("site {code} vanished right after it was created"))?
            }
        };
        out.push(site);
    }
    Ok((org, out))
}

/// An admin key kept in a file.
#[derive(Debug)]
pub struct KeptKey {
    pub token: String,
    /// Whether it was made just now (else the file's key still worked and is reused).
    pub created: bool,
}

/// Reuses the admin key in `path` if it is a working admin key of `org`; otherwise creates one
/// and writes it there with mode 0600 (readable by this user only).
pub async fn ensure_admin_key(pool: &PgPool, org: OrgId, path: &Path) -> anyhow::Result<KeptKey> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim();
        if key_works(pool, org, token).await? {
            return Ok(KeptKey {
                token: token.to_owned(),
                created: false,
            });
        }
        tracing::info!(path = %path.display(), "the stored api key does not work for this database, creating a new one");
    }
    let token = create_key(pool, org, Role::Admin, "dev admin").await?;
    write_secret_file(path, &token)
        .with_context(|| format!("writing the api key to {}", path.display()))?;
    Ok(KeptKey {
        token,
        created: true,
    })
}

async fn key_works(pool: &PgPool, org: OrgId, token: &str) -> anyhow::Result<bool> {
    let Some((prefix, secret)) = ebb_store::keys::parse(token) else {
        return Ok(false);
    };
    let row = fleet::api_key_by_prefix(pool, prefix)
        .await
        .context("looking up the stored api key")?;
    Ok(row
        .and_then(|r| ebb_gateway::auth::verify(&r, secret, chrono::Utc::now()))
        .is_some_and(|p| p.org == org && p.role == Role::Admin))
}

/// Writes `content` to `path`, readable and writable by this user only, replacing what was there.
pub fn write_secret_file(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through open(2): set it explicitly.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

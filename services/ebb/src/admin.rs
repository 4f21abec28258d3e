//! `ebb admin`: migrations and the records an operator creates by hand (orgs, sites, API keys),
//! against `DATABASE_URL`. `bootstrap` is the idempotent combination that `ebb dev` and
//! `compose.yaml` use: an org with its sites and an admin key kept in a file, reused when they
//! exist already.

use anyhow::Context;
use ebb_bus::Role;
use ebb_domain::{OrgId, SiteCode};
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
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Apply pending migrations (safe to run from several processes at once).
    Migrate,
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
    match args.command {
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
        AdminCommand::CreateKey { org, role, name } => {
            let key = create_key(&pool, OrgId(org), role, &name).await?;
            println!("{key}");
            eprintln!("this token is shown only once: store it now");
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

/// Creates an API key and returns its token.
pub async fn create_key(
    pool: &PgPool,
    org: OrgId,
    role: Role,
    name: &str,
) -> anyhow::Result<String> {
    let key = ebb_gateway::auth::generate();
    fleet::insert_api_key(
        pool,
        org,
        &key.prefix,
        &key.secret_hash,
        role.as_str(),
        name,
        None,
    )
    .await
    .context("creating the api key")?;
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
    let Some((prefix, secret)) = ebb_gateway::auth::parse(token) else {
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

//! The PostgreSQL and nats-server that `ebb dev` starts when `DATABASE_URL` or `NATS_URL` is not
//! set: persistent data under the dev directory, fixed loopback ports, logs beside the data.
//!
//! Each server runs under a small `sh` watchdog whose stdin is a pipe held by this process. When
//! this process closes it (a clean stop) or dies, however it dies, the watchdog reads EOF and stops
//! the server: SIGINT (PostgreSQL's fast shutdown, nats-server's clean exit), then SIGTERM, then
//! SIGQUIT, then SIGKILL, five seconds apart. The
//! servers run in their own process group, so a Ctrl-C in the terminal reaches only `ebb`, which
//! drains its services before it lets the servers go.
//!
//! PostgreSQL refuses to run as root: when the effective uid is 0 it runs as `nobody`, like the
//! test kit does, and its directory is handed to that user. `nobody` must be able to enter every
//! directory above the cluster, which a clone in root's home or in a `mktemp -d` does not allow
//! (mode 0700). Then the cluster lives in [`SHARED_PG_ROOT`] instead, in a directory named after
//! the data directory's path and linked from `<data-dir>/pg`, so the next start finds it and
//! removing the data directory still starts afresh ([`place_cluster`]).

use anyhow::{Context, bail};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, ChildStdin, Command};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to stop once told to (the watchdog escalates to SIGKILL at 15 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// `$@` is the server's command line. See the module docs. `sh` starts background jobs with
/// SIGINT and SIGQUIT ignored, which postgres and nats-server undo by installing their handlers
/// early in start-up; a server told to stop before that gets SIGTERM five seconds later.
const WATCHDOG: &str = r#"
exec 3<&0
"$@" </dev/null 3<&- &
server=$!
{
    cat <&3 >/dev/null
    kill -INT "$server" 2>/dev/null
    tries=0
    while kill -0 "$server" 2>/dev/null; do
        tries=$((tries + 1))
        case $tries in
        100) kill -TERM "$server" ;;
        200) kill -QUIT "$server" ;;
        300) kill -KILL "$server" ;;
        esac
        sleep 0.05
    done 2>/dev/null
} &
exec 3<&-
wait "$server"
"#;

/// A server under its watchdog.
#[derive(Debug)]
pub struct Server {
    name: String,
    watchdog: Child,
    /// Closing it tells the watchdog to stop the server.
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Server {
    /// Tells the server to stop and waits until it has.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        match tokio::time::timeout(STOP_TIMEOUT, self.watchdog.wait()).await {
            Ok(Ok(status)) => tracing::info!(server = %self.name, %status, "stopped"),
            Ok(Err(error)) => {
                tracing::warn!(server = %self.name, %error, "waiting for the server to stop")
            }
            Err(_) => {
                tracing::warn!(server = %self.name, log = %self.log.display(), "server did not stop in time")
            }
        }
    }

    /// Kills the server, its children and its watchdog at once with SIGKILL: a crash, as
    /// `ebb chaos` inflicts. They share the watchdog's process group.
    pub async fn kill(mut self) {
        if let Some(pid) = self.watchdog.id() {
            let killed = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            if !killed.as_ref().is_ok_and(|s| s.success()) {
                tracing::warn!(server = %self.name, ?killed, "kill -KILL of the process group failed");
            }
        }
        drop(self.stdin.take());
        if let Ok(Ok(status)) = tokio::time::timeout(STOP_TIMEOUT, self.watchdog.wait()).await {
            tracing::info!(server = %self.name, %status, "killed");
        }
    }

    /// Whether the server (its watchdog) is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.watchdog.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Starts `program` with `args`, as this process's user, under the watchdog (see the module
/// docs): it is stopped when the returned [`Server`] is, or when this process exits, however it
/// exits. Its output goes to `log`.
pub fn spawn_process(
    name: &str,
    program: &Path,
    args: &[String],
    log: &Path,
    cwd: &Path,
) -> anyhow::Result<Server> {
    spawn_watched(name, program, args, log, cwd, None)
}

fn spawn_watched(
    name: &str,
    program: &Path,
    args: &[String],
    log: &Path,
    cwd: &Path,
    user: Option<User>,
) -> anyhow::Result<Server> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("duplicating a log handle")?;
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", WATCHDOG, "ebb-dev-watchdog"])
        .arg(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        // Dropping the handle must not kill the watchdog: closing its stdin is the way to stop.
        .kill_on_drop(false);
    if let Some(u) = user {
        cmd.uid(u.uid).gid(u.gid);
    }
    let mut watchdog = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdin = watchdog.stdin.take();
    Ok(Server {
        name: name.to_owned(),
        watchdog,
        stdin,
        log: log.to_path_buf(),
    })
}

/// Fails clearly if something already listens on `127.0.0.1:port`.
pub fn ensure_port_free(port: u16, what: &str, hint: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(listener) => {
            drop(listener);
            Ok(())
        }
        Err(e) => bail!("cannot start {what}: port 127.0.0.1:{port} is taken ({e}); {hint}"),
    }
}

/// Waits until `127.0.0.1:port` accepts connections and `ready` says so, or the server exits.
async fn wait_until_ready(
    server: &mut Server,
    port: u16,
    mut ready: impl FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = server.watchdog.try_wait()? {
            bail!(
                "{} exited with {status} during start-up; its log ({}):\n{}",
                server.name,
                server.log.display(),
                server.log_tail()
            );
        }
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if ready(&log)
            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not become ready in {START_TIMEOUT:?}; its log ({}):\n{}",
                server.name,
                server.log.display(),
                server.log_tail()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// initdb and postgres from one directory, so their versions match.
#[derive(Debug)]
pub struct PgBinaries {
    pub initdb: PathBuf,
    pub postgres: PathBuf,
}

const PG_INSTALL_HINT: &str = "install PostgreSQL 15 or newer (Debian/Ubuntu: `sudo apt-get install -y postgresql`; \
     scripts/dev does it when run as root), set EBB_PG_BINDIR to the directory holding initdb and postgres, \
     or set DATABASE_URL to a running server";

/// Finds initdb and postgres: `EBB_PG_BINDIR`, else `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin` (where Debian puts them, off `PATH`).
pub fn find_postgres() -> anyhow::Result<PgBinaries> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("EBB_PG_BINDIR").filter(|d| !d.is_empty()) {
        dirs.push(dir.into());
    } else {
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                Some((
                    e.file_name().to_str()?.split('.').next()?.parse().ok()?,
                    e.path().join("bin"),
                ))
            })
            .collect();
        versions.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
        dirs.extend(versions.into_iter().map(|(_, d)| d));
    }
    for dir in dirs {
        let (initdb, postgres) = (dir.join("initdb"), dir.join("postgres"));
        if is_executable(&initdb) && is_executable(&postgres) {
            return Ok(PgBinaries { initdb, postgres });
        }
    }
    bail!(
        "initdb and postgres were not found on PATH, in EBB_PG_BINDIR or in /usr/lib/postgresql/*/bin: {PG_INSTALL_HINT}"
    )
}

/// Where nats-server may be off a normal user's `PATH`: Debian's package puts it in /usr/sbin.
const NATS_SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/usr/local/sbin"];

/// Finds nats-server: `EBB_NATS_SERVER`, else `PATH`, else [`NATS_SBIN_DIRS`].
pub fn find_nats_server() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("EBB_NATS_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "EBB_NATS_SERVER={} is not an executable file",
            path.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(NATS_SBIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join("nats-server"))
        .find(|p| is_executable(p))
        .context(
            "nats-server was not found on PATH or in /usr/sbin: install it (Debian/Ubuntu: `sudo apt-get install -y nats-server`; \
             scripts/dev does it when run as root), set EBB_NATS_SERVER to its path, or set NATS_URL to a running \
             server with JetStream",
        )
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The superuser initdb creates; trust authentication on loopback, so no password.
const PG_SUPERUSER: &str = "postgres";
/// The database `ebb dev` uses inside the cluster.
pub const PG_DATABASE: &str = "ebb";

/// Starts (initialising on first use) the cluster in `dir` on `127.0.0.1:port`, with the server
/// `settings` (`name=value`, e.g. `shared_preload_libraries=pg_stat_statements`); returns the
/// server and the URL of the `ebb` database, created if missing.
pub async fn start_postgres(
    dir: &Path,
    port: u16,
    settings: &[&str],
) -> anyhow::Result<(Server, String)> {
    let bins = find_postgres()?;
    ensure_port_free(
        port,
        "postgresql",
        "stop what holds it (another `ebb dev`?), pass --pg-port, or set DATABASE_URL",
    )?;
    let user = run_as()?;
    let dir = &place_cluster(dir, user, Path::new(SHARED_PG_ROOT)).await?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(u) = user {
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid)).with_context(|| {
            format!(
                "handing {} to the nobody user (postgres refuses to run as root)",
                dir.display()
            )
        })?;
    }
    let data = dir.join("data");
    if !data.join("PG_VERSION").exists() {
        tracing::info!(dir = %data.display(), "creating a postgresql cluster");
        let mut initdb = Command::new(&bins.initdb);
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                PG_SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(u) = user {
            initdb.uid(u.uid).gid(u.gid);
        }
        let out = initdb
            .output()
            .await
            .with_context(|| format!("running {}", bins.initdb.display()))?;
        if !out.status.success() {
            let hint = if user.is_some() {
                "\n(running as root, initdb runs as `nobody`: every directory above the data directory must be \
                 searchable by it, or pass --data-dir somewhere it can reach)"
            } else {
                ""
            };
            bail!(
                "initdb failed ({}):\n{}{}{hint}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let mut args: Vec<String> = [
        "-D".to_owned(),
        data.display().to_string(),
        "-h".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        port.to_string(),
        // No unix socket: its path would be bounded to 107 bytes, and nothing here needs it.
        "-k".to_owned(),
        String::new(),
    ]
    .into();
    for s in settings {
        args.extend(["-c".to_owned(), (*s).to_owned()]);
    }
    let log = dir.join("postgres.log");
    let mut server = spawn_watched("postgres", &bins.postgres, &args, &log, dir, user)?;
    // Readiness: the port answers, then a real connection succeeds.
    wait_until_ready(&mut server, port, |_| true).await?;
    let admin = format!("postgres://{PG_SUPERUSER}@127.0.0.1:{port}/postgres");
    let pool = connect_with_retry(&admin)
        .await
        .context("connecting to the dev postgresql")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(PG_DATABASE)
            .fetch_one(&pool)
            .await
            .context("looking for the ebb database")?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {PG_DATABASE}"))
            .execute(&pool)
            .await
            .context("creating the ebb database")?;
    }
    pool.close().await;
    tracing::info!(port, log = %log.display(), "postgresql is ready");
    Ok((
        server,
        format!("postgres://{PG_SUPERUSER}@127.0.0.1:{port}/{PG_DATABASE}"),
    ))
}

/// Connects, retrying while the server is still starting ("the database system is starting up").
async fn connect_with_retry(url: &str) -> anyhow::Result<ebb_store::PgPool> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match ebb_store::connect(url, 1).await {
            Ok(pool) => return Ok(pool),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "postgresql not accepting connections yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Where the cluster lives

/// Where clusters live that `nobody` could not reach under their data directory. Root-owned and
/// not world-writable, so nobody else can plant a directory or a link there; under /var/lib rather
/// than /tmp or /var/tmp, whose cleaners delete files of an idle cluster after some days.
pub const SHARED_PG_ROOT: &str = "/var/lib/ebb-dev";

/// What is at `<data-dir>/pg` before a start.
#[derive(Debug, Clone, PartialEq)]
enum PgDirState {
    Missing,
    /// A link to the cluster's directory elsewhere, made by an earlier start.
    Link(PathBuf),
    /// A directory, which may hold a cluster (`data/PG_VERSION`).
    Dir {
        cluster: bool,
    },
}

/// Where a start puts the cluster.
#[derive(Debug, Clone, PartialEq)]
enum Placement {
    /// In `<data-dir>/pg`, as always when postgres can reach it.
    InPlace,
    /// Where the link says.
    Linked(PathBuf),
    /// In [`SHARED_PG_ROOT`], linked from `<data-dir>/pg`; `clear` removes the directory there
    /// first (what a failed start left, with no cluster in it).
    Outside { clear: bool },
    /// A cluster is in `<data-dir>/pg` and postgres cannot reach it: only the user can say
    /// whether to open the way or start afresh.
    Refuse,
}

/// `blocked` is the first directory on the way to the data directory that postgres's user cannot
/// enter, `None` when it can enter them all (or postgres runs as this user).
fn placement(state: &PgDirState, blocked: Option<&Path>) -> Placement {
    match (state, blocked) {
        (PgDirState::Link(target), _) => Placement::Linked(target.clone()),
        (_, None) => Placement::InPlace,
        (PgDirState::Missing, Some(_)) => Placement::Outside { clear: false },
        (PgDirState::Dir { cluster: false }, Some(_)) => Placement::Outside { clear: true },
        (PgDirState::Dir { cluster: true }, Some(_)) => Placement::Refuse,
    }
}

/// The directory in `root` for the cluster of `pg_dir` (an absolute path): named by a hash of the
/// path, so each clone has its own and a second start finds it again.
fn outside_dir(root: &Path, pg_dir: &Path) -> PathBuf {
    // FNV-1a: stable across Rust releases, unlike std's hasher.
    let hash = pg_dir
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    root.join(format!("pg-{hash:016x}"))
}

/// Decides where the cluster of `pg_dir` (`<data-dir>/pg`, absolute) lives and prepares that
/// directory's surroundings (the link, [`SHARED_PG_ROOT`]); returns the directory to use.
async fn place_cluster(pg_dir: &Path, user: Option<User>, root: &Path) -> anyhow::Result<PathBuf> {
    let state = match std::fs::symlink_metadata(pg_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PgDirState::Missing,
        Err(e) => return Err(e).with_context(|| format!("reading {}", pg_dir.display())),
        Ok(m) if m.file_type().is_symlink() => PgDirState::Link(
            std::fs::read_link(pg_dir).with_context(|| format!("reading {}", pg_dir.display()))?,
        ),
        Ok(m) if m.is_dir() => PgDirState::Dir {
            cluster: pg_dir.join("data/PG_VERSION").exists(),
        },
        Ok(_) => bail!(
            "{} is neither a directory nor a link to one: remove it",
            pg_dir.display()
        ),
    };
    let blocked = match (user, &state, pg_dir.parent()) {
        (Some(u), PgDirState::Missing | PgDirState::Dir { .. }, Some(data_dir)) => {
            first_blocked(u, data_dir).await?
        }
        _ => None,
    };
    match placement(&state, blocked.as_deref()) {
        Placement::InPlace => Ok(pg_dir.to_path_buf()),
        Placement::Linked(target) => {
            check_linked(pg_dir, &target, user)?;
            Ok(target)
        }
        Placement::Refuse => {
            let blocked = blocked.as_deref().unwrap_or(Path::new("/"));
            bail!(
                "{dir} holds the dev PostgreSQL cluster, but postgres runs as `nobody` (ebb dev runs as root, which \
                 postgres refuses) and `nobody` cannot enter {blocked}: let it in (`chmod o+x {blocked}`), pass \
                 --data-dir somewhere it can reach, or remove {dir} to start a fresh cluster, which ebb dev then \
                 keeps in {root}",
                dir = pg_dir.display(),
                blocked = blocked.display(),
                root = root.display(),
            )
        }
        Placement::Outside { clear } => {
            let user = user.context("only postgres running as another user is placed outside")?;
            if clear {
                tracing::info!(dir = %pg_dir.display(), "removing a cluster directory without a cluster, which postgres could not reach");
                std::fs::remove_dir_all(pg_dir)
                    .with_context(|| format!("removing {}", pg_dir.display()))?;
            }
            let target = outside_dir(root, pg_dir);
            prepare_root(root)?;
            if std::fs::symlink_metadata(&target).is_ok() {
                // Its link is gone: the data directory was removed or made anew since.
                if let Some(pid) = live_postmaster(&target) {
                    bail!(
                        "{} holds a running PostgreSQL (pid {pid}) that {} no longer links to: stop it first",
                        target.display(),
                        pg_dir.display()
                    );
                }
                tracing::info!(dir = %target.display(), "removing an earlier dev cluster that nothing links to");
                std::fs::remove_dir_all(&target)
                    .with_context(|| format!("removing {}", target.display()))?;
            }
            std::fs::create_dir(&target)
                .with_context(|| format!("creating {}", target.display()))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("setting the mode of {}", target.display()))?;
            std::os::unix::fs::chown(&target, Some(user.uid), Some(user.gid))
                .with_context(|| format!("handing {} to nobody", target.display()))?;
            std::os::unix::fs::symlink(&target, pg_dir)
                .with_context(|| format!("linking {} to {}", pg_dir.display(), target.display()))?;
            tracing::info!(
                dir = %target.display(),
                link = %pg_dir.display(),
                blocked = %blocked.as_deref().unwrap_or(Path::new("/")).display(),
                "postgres runs as nobody, which cannot reach the data directory: the cluster lives outside it"
            );
            Ok(target)
        }
    }
}

/// A linked cluster directory must be one this start may use: a real directory (or missing, then
/// made anew) owned by the user postgres runs as.
fn check_linked(pg_dir: &Path, target: &Path, user: Option<User>) -> anyhow::Result<()> {
    let owner = user.map_or_else(effective_uid, |u| Ok(u.uid))?;
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %target.display(), link = %pg_dir.display(), "the linked cluster directory is gone: starting a fresh cluster there");
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", target.display())),
        Ok(m) if m.is_dir() && m.uid() == owner => Ok(()),
        Ok(m) if m.is_dir() => bail!(
            "{} links to {}, a cluster owned by uid {} while postgres would run as uid {owner} (made by ebb dev \
             run as another user?): run ebb dev as that user, or remove the link to start a fresh cluster",
            pg_dir.display(),
            target.display(),
            m.uid()
        ),
        Ok(_) => bail!(
            "{} links to {}, which is not a directory: remove the link to start a fresh cluster",
            pg_dir.display(),
            target.display()
        ),
    }
}

/// Creates `root` (mode 0755, so postgres's user can pass through) unless it exists, and refuses
/// one that others could write to.
fn prepare_root(root: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(root).is_err() {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", root.display()))?;
    }
    let meta =
        std::fs::symlink_metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if !meta.is_dir() || meta.uid() != effective_uid()? || meta.mode() & 0o022 != 0 {
        bail!(
            "{} must be a directory owned by this user and writable by nobody else, since dev clusters \
             live there: remove it, and ebb dev makes it anew",
            root.display()
        );
    }
    Ok(())
}

/// The pid in `data/postmaster.pid` if that process is alive.
fn live_postmaster(cluster_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(cluster_dir.join("data/postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// `$@` are the directories from `/` down: prints the first one the caller cannot enter.
const PROBE: &str =
    r#"for d in "$@"; do cd -- "$d" 2>/dev/null || { printf '%s' "$d"; exit 0; }; done"#;

/// The first directory from `/` down to `dir` (absolute) that `user` cannot enter, tried as that
/// user, so permissions, ACLs and mounts all count; `None` when it can enter them all.
async fn first_blocked(user: User, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let mut path: Vec<&Path> = dir.ancestors().collect();
    path.reverse();
    let out = Command::new("/bin/sh")
        .args(["-c", PROBE, "ebb-dev-probe"])
        .args(&path)
        .current_dir("/")
        .stdin(Stdio::null())
        .uid(user.uid)
        .gid(user.gid)
        .output()
        .await
        .context("checking which directories postgres's user can enter")?;
    if !out.status.success() {
        bail!(
            "checking which directories postgres's user can enter failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((!out.stdout.is_empty()).then(|| PathBuf::from(OsString::from_vec(out.stdout))))
}

// ---------------------------------------------------------------------------------------------
// nats-server

/// Starts `nats-server -js` with its store in `dir` on `127.0.0.1:port`; returns the server and
/// its URL.
/// Starts nats-server with `conf` (the local hub: operator-mode auth and TLS, listening on
/// `127.0.0.1:<port>`); `dir` is its working directory. Returns the server and its `tls://` URL.
pub async fn start_nats(
    dir: &Path,
    conf: &Path,
    log: &Path,
    port: u16,
) -> anyhow::Result<(Server, String)> {
    let program = find_nats_server()?;
    ensure_port_free(
        port,
        "nats-server",
        "stop what holds it (another `ebb dev` or nats-server?), pass --nats-port, or set NATS_URL",
    )?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let args: Vec<String> = vec!["-c".into(), conf.display().to_string()];
    let mut server = spawn_watched("nats-server", &program, &args, log, dir, None)?;
    wait_until_ready(&mut server, port, |log| log.contains("Server is ready")).await?;
    tracing::info!(port, log = %log.display(), "nats-server is ready");
    Ok((server, format!("tls://127.0.0.1:{port}")))
}

// ---------------------------------------------------------------------------------------------
// Users

#[derive(Debug, Clone, Copy)]
struct User {
    uid: u32,
    gid: u32,
}

/// The owner of /proc/self is the effective uid: no libc call, no unsafe.
fn effective_uid() -> anyhow::Result<u32> {
    Ok(std::fs::metadata("/proc/self")
        .context("reading the effective uid from /proc/self")?
        .uid())
}

/// `Some(nobody)` when this process is root, since postgres will not run as root.
fn run_as() -> anyhow::Result<Option<User>> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == "nobody").then(|| {
                Some(User {
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                })
            })?
        })
        .map(Some)
        .context(
            "running as root, which postgres refuses, and there is no `nobody` user to run it as",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_moves_out_only_when_postgres_cannot_reach_it() {
        use PgDirState::*;
        use Placement::*;
        let check = |state: PgDirState, blocked: Option<&str>, want: Placement| {
            let got = placement(&state, blocked.map(Path::new));
            assert_eq!(got, want, "{state:?} with {blocked:?} blocked");
        };
        let link = PathBuf::from("/var/lib/ebb-dev/pg-0123456789abcdef");
        check(Missing, None, InPlace);
        check(Dir { cluster: false }, None, InPlace);
        check(Dir { cluster: true }, None, InPlace);
        check(Link(link.clone()), None, Linked(link.clone()));
        check(Link(link.clone()), Some("/root"), Linked(link));
        check(Missing, Some("/root"), Outside { clear: false });
        check(
            Dir { cluster: false },
            Some("/root"),
            Outside { clear: true },
        );
        check(Dir { cluster: true }, Some("/root"), Refuse);
    }

    #[test]
    fn each_data_dir_has_its_own_stable_outside_dir() {
        let root = Path::new(SHARED_PG_ROOT);
        let a = outside_dir(root, Path::new("/root/ebb/.ebb/pg"));
        assert_eq!(a, outside_dir(root, Path::new("/root/ebb/.ebb/pg")));
        assert_ne!(a, outside_dir(root, Path::new("/root/ebb2/.ebb/pg")));
        // A second start (of any later release) must find the same directory.
        assert_eq!(a, root.join("pg-3f79b02ddc538efa"));
    }

    /// Who to probe as, and a directory that user cannot enter: as root, `nobody` and a 0700
    /// directory (root itself enters any); otherwise this user and a 0000 one.
    fn locked_out() -> (User, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("clone/.ebb")).unwrap();
        let (user, mode) = match run_as().unwrap() {
            Some(nobody) => (nobody, 0o700),
            None => {
                let me = std::fs::metadata("/proc/self").unwrap();
                let user = User {
                    uid: me.uid(),
                    gid: me.gid(),
                };
                (user, 0o000)
            }
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        (user, dir)
    }

    #[tokio::test]
    async fn the_probe_names_the_first_directory_postgres_cannot_enter() {
        let (user, locked) = locked_out();
        let inner = locked.path().join("clone/.ebb");
        let blocked = first_blocked(user, &inner).await.unwrap();
        std::fs::set_permissions(locked.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(blocked.as_deref(), Some(locked.path()));
        assert_eq!(first_blocked(user, Path::new("/tmp")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_cluster_out_of_postgres_reach_lives_outside_and_is_found_again() {
        let clone = tempfile::tempdir().unwrap();
        // Like root's home or a `mktemp -d`.
        std::fs::set_permissions(clone.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let pg = clone.path().join(".ebb/pg");
        std::fs::create_dir_all(pg.parent().unwrap()).unwrap();
        let shared = tempfile::tempdir().unwrap();
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = shared.path().join("ebb-dev");
        let Some(nobody) = run_as().unwrap() else {
            // Postgres runs as this user, who can reach its own data directory.
            let placed = place_cluster(&pg, None, &root).await.unwrap();
            assert_eq!(placed, pg);
            assert!(!root.exists());
            return;
        };
        // As root: `nobody` cannot enter the clone.
        let placed = place_cluster(&pg, Some(nobody), &root).await.unwrap();
        assert_eq!(placed, outside_dir(&root, &pg));
        assert_eq!(std::fs::read_link(&pg).unwrap(), placed);
        let meta = std::fs::metadata(&placed).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (nobody.uid, 0o700));
        assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o777, 0o755);
        assert_eq!(first_blocked(nobody, &placed).await.unwrap(), None);

        // A second start uses the same cluster.
        std::fs::write(placed.join("marker"), "kept").unwrap();
        assert_eq!(
            place_cluster(&pg, Some(nobody), &root).await.unwrap(),
            placed
        );
        assert!(placed.join("marker").exists());

        // With the data directory made anew (no link), the old cluster goes and a fresh one comes.
        std::fs::remove_file(&pg).unwrap();
        assert_eq!(
            place_cluster(&pg, Some(nobody), &root).await.unwrap(),
            placed
        );
        assert!(!placed.join("marker").exists());

        // What a failed start left in place (no cluster) is cleared; a real cluster is not touched.
        std::fs::remove_file(&pg).unwrap();
        std::fs::create_dir_all(pg.join("data")).unwrap();
        std::fs::write(pg.join("data/PG_VERSION"), "17").unwrap();
        let refused = place_cluster(&pg, Some(nobody), &root).await.unwrap_err();
        let message = format!("{refused:#}");
        let chmod = format!("chmod o+x {}", clone.path().display());
        assert!(message.contains(&chmod), "{message}");
        assert!(pg.join("data/PG_VERSION").exists());
        std::fs::remove_file(pg.join("data/PG_VERSION")).unwrap();
        assert_eq!(
            place_cluster(&pg, Some(nobody), &root).await.unwrap(),
            placed
        );
        assert!(
            std::fs::symlink_metadata(&pg)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}

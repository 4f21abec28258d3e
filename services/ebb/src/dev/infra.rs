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
//! test kit does, and its directory is handed to that user.

use anyhow::{Context, bail};
use std::os::unix::fs::MetadataExt;
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
    name: &'static str,
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
            Ok(Ok(status)) => tracing::info!(server = self.name, %status, "stopped"),
            Ok(Err(error)) => {
                tracing::warn!(server = self.name, %error, "waiting for the server to stop")
            }
            Err(_) => {
                tracing::warn!(server = self.name, log = %self.log.display(), "server did not stop in time")
            }
        }
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn spawn_watched(
    name: &'static str,
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
        name,
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

/// Finds nats-server: `EBB_NATS_SERVER`, else `PATH`.
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
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("nats-server")).find(|p| is_executable(p)))
        .context(
            "nats-server was not found on PATH: install it (Debian/Ubuntu: `sudo apt-get install -y nats-server`; \
             scripts/dev does it when run as root), set EBB_NATS_SERVER to its path, or set NATS_URL to a running \
             server with JetStream",
        )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The superuser initdb creates; trust authentication on loopback, so no password.
const PG_SUPERUSER: &str = "postgres";
/// The database `ebb dev` uses inside the cluster.
pub const PG_DATABASE: &str = "ebb";

/// Starts (initialising on first use) the cluster in `dir` on `127.0.0.1:port`; returns the
/// server and the URL of the `ebb` database, created if missing.
pub async fn start_postgres(dir: &Path, port: u16) -> anyhow::Result<(Server, String)> {
    let bins = find_postgres()?;
    ensure_port_free(
        port,
        "postgresql",
        "stop what holds it (another `ebb dev`?), pass --pg-port, or set DATABASE_URL",
    )?;
    let user = run_as()?;
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
    let args: Vec<String> = [
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
// nats-server

/// Starts `nats-server -js` with its store in `dir` on `127.0.0.1:port`; returns the server and
/// its URL.
pub async fn start_nats(dir: &Path, log: &Path, port: u16) -> anyhow::Result<(Server, String)> {
    let program = find_nats_server()?;
    ensure_port_free(
        port,
        "nats-server",
        "stop what holds it (another `ebb dev` or nats-server?), pass --nats-port, or set NATS_URL",
    )?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let args: Vec<String> = vec![
        "-n".into(),
        "ebb-dev".into(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-js".into(),
        "-sd".into(),
        dir.display().to_string(),
    ];
    let mut server = spawn_watched("nats-server", &program, &args, log, dir, None)?;
    wait_until_ready(&mut server, port, |log| log.contains("Server is ready")).await?;
    tracing::info!(port, log = %log.display(), "nats-server is ready");
    Ok((server, format!("nats://127.0.0.1:{port}")))
}

// ---------------------------------------------------------------------------------------------
// Users

#[derive(Debug, Clone, Copy)]
struct User {
    uid: u32,
    gid: u32,
}

/// `Some(nobody)` when this process is root, since postgres will not run as root.
fn run_as() -> anyhow::Result<Option<User>> {
    // The owner of /proc/self is the effective uid: no libc call, no unsafe.
    let euid = std::fs::metadata("/proc/self")
        .context("reading the effective uid from /proc/self")?
        .uid();
    if euid != 0 {
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

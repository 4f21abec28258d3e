//! The throwaway PostgreSQL cluster a test process starts when `DATABASE_URL` is not set.
//!
//! One cluster per process, started on first use and shared by every test in the process.
//! Statics are never dropped, so the cluster cannot be stopped from Rust. Instead postgres runs
//! under a small `sh` watchdog whose stdin is a pipe held by this process: when the process exits,
//! however it exits (even by SIGKILL), the kernel closes the pipe, the watchdog reads EOF, stops
//! postgres with SIGQUIT (immediate shutdown) and removes the cluster's directory.
//!
//! postgres refuses to run as root. When the effective uid is 0 (containers, CI), initdb and the
//! watchdog run as `nobody`, and the cluster directory is chowned to it first.

use std::{
    fs::File,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::OnceCell;

use crate::{Error, Result, binary, error::excerpt};

/// Bind conflicts on the probed port are retried with a fresh cluster this many times.
const ATTEMPTS: usize = 3;
const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Superuser that initdb creates; trust auth, so no password.
const SUPERUSER: &str = "postgres";
/// The user postgres runs as when this process is root.
const UNPRIVILEGED_USER: &str = "nobody";

/// Speed over durability: the cluster lives for one test run.
const SETTINGS: &[&str] = &[
    "fsync=off",
    "full_page_writes=off",
    "synchronous_commit=off",
    "max_connections=500",
];

/// `$1` is the cluster dir, the rest is the postgres command line. Runs postgres in the
/// background, and stops it and removes the dir once stdin reaches EOF (the test process is
/// gone). Exits when postgres exits, so the test process can see a failed start.
///
/// `sh` gives background jobs /dev/null as stdin, hence the copy on fd 3. It also starts them
/// with SIGQUIT ignored until postgres installs its handler, hence SIGQUIT is repeated; SIGKILL
/// after five seconds is the last resort (the backends exit when they see the postmaster gone).
const WATCHDOG: &str = r#"
dir=$1
shift
exec 3<&0
"$@" </dev/null 3<&- &
pg=$!
{
    cat <&3 >/dev/null
    tries=0
    while kill -0 "$pg" 2>/dev/null; do
        if [ "$tries" -lt 100 ]; then kill -QUIT "$pg"; else kill -KILL "$pg"; fi
        tries=$((tries + 1))
        sleep 0.05
    done 2>/dev/null
    rm -rf "$dir"
} &
exec 3<&-
wait "$pg"
"#;

/// A started cluster. Lives in a static, so it is never dropped.
#[derive(Debug)]
struct Cluster {
    /// Admin URL: the `postgres` superuser and database, over TCP on loopback.
    url: String,
    /// The watchdog; holding its stdin open is what keeps postgres running.
    _watchdog: Child,
}

static CLUSTER: OnceCell<std::result::Result<Cluster, Arc<Error>>> = OnceCell::const_new();

/// Admin URL of this process's throwaway cluster, starting it on first call.
///
/// A failed start is remembered, so the other tests fail at once with the same error instead of
/// each running initdb again.
pub(crate) async fn admin_url() -> Result<String> {
    let cluster = CLUSTER
        .get_or_init(|| async { start().await.map_err(Arc::new) })
        .await;
    match cluster {
        Ok(cluster) => Ok(cluster.url.clone()),
        Err(err) => Err(Error::Cluster(Arc::clone(err))),
    }
}

async fn start() -> Result<Cluster> {
    let bins = binary::postgres(
        std::env::var_os(binary::PG_BINDIR_ENV),
        std::env::var_os("PATH"),
        Path::new(binary::DEBIAN_PG_ROOT),
    )?;
    let run_as = run_as()?;
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        match start_once(&bins, run_as).await {
            Ok(cluster) => {
                tracing::info!(
                    url = %cluster.url,
                    elapsed = ?started.elapsed(),
                    "started throwaway postgresql cluster"
                );
                return Ok(cluster);
            }
            Err(Retry::PortTaken(log)) if attempt < ATTEMPTS => {
                tracing::debug!(attempt, log, "postgres port taken, retrying");
                attempt += 1;
            }
            Err(Retry::PortTaken(log)) => {
                return Err(Error::Startup {
                    what: "postgres",
                    reason: format!("no free port after {ATTEMPTS} attempts"),
                    log,
                });
            }
            Err(Retry::Fatal(err)) => return Err(err),
        }
    }
}

enum Retry {
    PortTaken(String),
    Fatal(Error),
}

impl From<Error> for Retry {
    fn from(err: Error) -> Self {
        Retry::Fatal(err)
    }
}

async fn start_once(bins: &binary::PgBinaries, run_as: Option<User>) -> Result<Cluster, Retry> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("ebb-pg-");
    // The temp dir is the fallback for a /dev/shm that this user may not write to.
    let tmp = builder
        .tempdir_in(cluster_parent())
        .or_else(|_| builder.tempdir())
        .map_err(|e| Error::io("creating a temp dir for postgresql", e))?;
    let dir = tmp.path().to_path_buf();
    if let Some(user) = run_as {
        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
            .map_err(|e| Error::io(format!("chown {} to {UNPRIVILEGED_USER}", dir.display()), e))?;
    }
    let data = dir.join("data");

    let mut initdb = tokio::process::Command::new(&bins.initdb);
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
        .args(["--no-sync", "--no-instructions"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(user) = run_as {
        initdb.uid(user.uid).gid(user.gid);
    }
    let out = initdb.output().await.map_err(|source| Error::Spawn {
        program: bins.initdb.clone(),
        source,
    })?;
    if !out.status.success() {
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return Err(Error::Startup {
            what: "initdb",
            reason: format!("it exited with {}", out.status),
            log: excerpt(&log),
        }
        .into());
    }

    let port = free_port()?;
    let log_path = dir.join("postgres.log");
    let log = File::create(&log_path)
        .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| Error::io("duplicating the postgres log handle", e))?;
    let mut watchdog = Command::new("/bin/sh");
    watchdog
        .args(["-c", WATCHDOG, "ebb-pg-watchdog"])
        .arg(&dir)
        .arg(&bins.postgres)
        .arg("-D")
        .arg(&data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args(SETTINGS.iter().flat_map(|s| ["-c", s]))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(log)
        .stderr(log_err);
    if let Some(user) = run_as {
        watchdog.uid(user.uid).gid(user.gid);
    }
    let mut child = watchdog.spawn().map_err(|source| Error::Spawn {
        program: "/bin/sh".into(),
        source,
    })?;
    // From here on the watchdog owns the directory and removes it when told to stop.
    let _ = tmp.keep();

    match wait_ready(&mut child, &data, &log_path).await {
        Ok(()) => Ok(Cluster {
            url: format!("postgres://{SUPERUSER}@127.0.0.1:{port}/postgres"),
            _watchdog: child,
        }),
        Err(err) => {
            // Closing stdin makes the watchdog stop postgres and remove the dir.
            drop(child.stdin.take());
            let _ = child.wait();
            Err(err)
        }
    }
}

/// Waits until `postmaster.pid` reports `ready`, which is what `pg_ctl -w` waits for.
async fn wait_ready(child: &mut Child, data: &Path, log_path: &Path) -> Result<(), Retry> {
    let pid_file = data.join("postmaster.pid");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let status_line = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().nth(7).map(|l| l.trim().to_owned()));
        if status_line.as_deref() == Some("ready") {
            return Ok(());
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            let log = excerpt(&std::fs::read_to_string(log_path).unwrap_or_default());
            if log.contains("could not bind") || log.contains("Address already in use") {
                return Err(Retry::PortTaken(log));
            }
            let reason = match exited {
                Some(status) => format!("it exited with {status}"),
                None => format!("not ready after {START_TIMEOUT:?}"),
            };
            return Err(Error::Startup {
                what: "postgres",
                reason,
                log,
            }
            .into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Where cluster directories go: `/dev/shm` if it has room, as tmpfs makes `CREATE DATABASE`
/// about five times faster than a disk (~60 ms instead of ~300 ms; initdb 0.5 s instead of
/// 1.5 s). Docker's default `/dev/shm` is only 64 MiB, too small, hence the check.
pub(crate) fn cluster_parent() -> PathBuf {
    const SHM: &str = "/dev/shm";
    const MIN_FREE_KIB: u64 = 1024 * 1024;
    let free_kib = Command::new("df")
        .args(["-Pk", SHM])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| df_available_kib(&String::from_utf8_lossy(&out.stdout)));
    match free_kib {
        Some(kib) if kib >= MIN_FREE_KIB => PathBuf::from(SHM),
        _ => std::env::temp_dir(),
    }
}

/// The "Available" column of `df -P` output, in the units asked for.
fn df_available_kib(df: &str) -> Option<u64> {
    df.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// A port that was free a moment ago; postgres has no "pick a port" option, so a bind
/// conflict is retried by the caller.
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free port for postgres", e))
}

#[derive(Debug, Clone, Copy)]
struct User {
    uid: u32,
    gid: u32,
}

/// `Some(nobody)` when this process is root, since postgres will not run as root.
fn run_as() -> Result<Option<User>> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| Error::io("reading /etc/passwd to find an unprivileged user", e))?;
    lookup_user(&passwd, UNPRIVILEGED_USER)
        .map(Some)
        .ok_or_else(|| {
            Error::io(
                "running as root, and postgres refuses to; no `nobody` user in /etc/passwd to run it as",
                std::io::ErrorKind::NotFound.into(),
            )
        })
}

/// The owner of `/proc/self` is this process's effective uid; no libc call (and no unsafe).
fn effective_uid() -> Result<u32> {
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let out = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|source| Error::Spawn {
            program: "id".into(),
            source,
        })?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            Error::io(
                "reading the effective uid from `id -u`",
                std::io::ErrorKind::InvalidData.into(),
            )
        })
}

fn lookup_user(passwd: &str, name: &str) -> Option<User> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(User { uid, gid })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nobody_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        let user = lookup_user(passwd, "nobody").unwrap();
        assert_eq!((user.uid, user.gid), (65534, 65534));
        assert!(lookup_user(passwd, "postgres").is_none());
        assert!(lookup_user("nobody:x:oops\n", "nobody").is_none());
    }

    #[test]
    fn reads_available_space_from_df() {
        let df = "Filesystem     1024-blocks  Used Available Capacity Mounted on\n\
                  tmpfs              65536     0     65536       0% /dev/shm\n";
        assert_eq!(df_available_kib(df), Some(65536));
        assert_eq!(df_available_kib("garbage"), None);
    }

    #[test]
    fn effective_uid_matches_id() {
        let out = Command::new("id").arg("-u").output().unwrap();
        let expected: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(effective_uid().unwrap(), expected);
    }
}

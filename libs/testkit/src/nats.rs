//! A throwaway `nats-server -js` per test binary (or per test).
//!
//! The server listens on a random loopback port (`-p -1`) and the port is read back from its log,
//! so there is no window in which another process can take a probed port. Its log goes to a file
//! in the temp dir, never to a pipe that nobody drains.

use std::{
    ffi::OsString,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{Error, Result, binary, error::excerpt};

/// How long nats-server may take to print "Server is ready"; it usually takes ~20 ms.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(5);
const READY_LINE: &str = "Server is ready";
const LISTEN_LINE: &str = "Listening for client connections on ";

/// A running `nats-server` with JetStream, killed (and its store dir removed) on drop.
///
/// ```no_run
/// # async fn demo() -> ebb_testkit::Result<()> {
/// let nats = ebb_testkit::NatsServer::start().await?;
/// let client = nats.client().await?;
/// let js = async_nats::jetstream::new(client);
/// # let _ = js; Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    /// The server process; killed and reaped in `Drop` before `dir` goes away.
    child: Child,
    /// Port read back from the server's log.
    port: u16,
    /// `nats://127.0.0.1:<port>`, kept so `url()` can hand out a `&str`.
    url: String,
    /// Holds the JetStream store and `nats.log`; removed on drop.
    dir: TempDir,
}

/// Options for [`NatsServer`]; [`NatsServer::start`] uses the defaults.
#[derive(Debug, Default, Clone)]
pub struct NatsServerBuilder {
    /// Binary to run instead of `EBB_NATS_SERVER` or `nats-server` on `PATH`.
    binary: Option<PathBuf>,
    /// Extra command-line arguments, appended after the testkit's own.
    args: Vec<OsString>,
    /// Extra environment variables of the server process (a config's `$VARIABLES`).
    env: Vec<(OsString, OsString)>,
}

impl NatsServerBuilder {
    /// Runs this binary instead of `$EBB_NATS_SERVER` or `nats-server` from `PATH`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Appends a command-line argument, e.g. `--max_payload`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable of the server process.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start(self) -> Result<NatsServer> {
        let program = binary::nats_server(
            self.binary.as_deref(),
            std::env::var_os(binary::NATS_SERVER_ENV),
            std::env::var_os("PATH"),
        )?;
        let dir = tempfile::Builder::new()
            .prefix("ebb-nats-")
            .tempdir()
            .map_err(|e| Error::io("creating a temp dir for nats-server", e))?;
        let log_path = dir.path().join("nats.log");
        let log = File::create(&log_path)
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the nats-server log handle", e))?;

        let started = Instant::now();
        let mut child = Command::new(&program)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: program.clone(),
                source,
            })?;

        match wait_ready(&mut child, &log_path).await {
            Ok(port) => {
                tracing::debug!(port, elapsed = ?started.elapsed(), "nats-server ready");
                Ok(NatsServer {
                    child,
                    port,
                    url: format!("nats://127.0.0.1:{port}"),
                    dir,
                })
            }
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(err)
            }
        }
    }
}

impl NatsServer {
    /// Starts a server with the default options; see [`NatsServerBuilder`] for the others.
    pub async fn start() -> Result<NatsServer> {
        NatsServerBuilder::default().start().await
    }

    /// Options for a server, e.g. a specific binary.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (removed on drop).
    pub fn store_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new client connected to this server.
    pub async fn client(&self) -> Result<async_nats::Client> {
        async_nats::ConnectOptions::new()
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(self.url.as_str())
            .await
            .map_err(|source| Error::NatsConnect {
                url: self.url.clone(),
                source,
            })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Reap before the temp dir is removed, so the server cannot recreate files in it.
        // SIGKILL makes the wait a matter of microseconds, short enough to block a runtime thread.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls the log until the server says it is ready and returns the port it bound.
async fn wait_ready(child: &mut Child, log_path: &Path) -> Result<u16> {
    // A wall-clock deadline, so a test that paused tokio's clock does not time out at once.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if log.contains(READY_LINE) {
            return listen_port(&log).ok_or_else(|| Error::Startup {
                what: "nats-server",
                reason: "no client port in its log".into(),
                log: excerpt(&log),
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(Error::Startup {
                what: "nats-server",
                reason: format!("it exited with {status}"),
                log: excerpt(&log),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::Startup {
                what: "nats-server",
                reason: format!("not ready after {START_TIMEOUT:?}"),
                log: excerpt(&log),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn listen_port(log: &str) -> Option<u16> {
    log.lines()
        .find_map(|line| line.split_once(LISTEN_LINE))
        .and_then(|(_, addr)| addr.trim().rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_from_the_log() {
        let log = "[1] 2026/11/23 05:12:17.459592 [INF] Listening for client connections on 127.0.0.1:38769\n\
                   [1] 2026/11/23 05:12:17.459620 [INF] Server is ready\n";
        assert_eq!(listen_port(log), Some(38769));
        assert_eq!(listen_port("[INF] Starting nats-server\n"), None);
    }
}

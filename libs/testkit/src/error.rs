//! The one error type of the testkit.
//!
//! Tests mostly propagate it with `?`; the variants exist so that a missing binary can be told
//! apart from a server that started and then failed, and so the message says what to do.

use std::{path::PathBuf, sync::Arc};

/// Result alias for the testkit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the testkit could not provide a server or database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A binary the testkit needs is not installed (or an override points nowhere).
    #[error("`{binary}` not found ({searched}); install it with `apt-get install {package}`")]
    MissingBinary {
        /// Name of the program, e.g. `nats-server` or `initdb`.
        binary: String,
        /// Debian package that provides it.
        package: &'static str,
        /// Where it was looked for.
        searched: String,
    },
    /// A program could not be executed at all.
    #[error("running {}", program.display())]
    Spawn {
        /// The program that failed to run.
        program: PathBuf,
        /// Why it could not be run.
        #[source]
        source: std::io::Error,
    },
    /// A server or tool ran but did not come up; `log` is what it wrote.
    #[error("{what} did not start: {reason}\n--- {what} output ---\n{log}")]
    Startup {
        /// What was being started, e.g. `nats-server` or `initdb`.
        what: &'static str,
        /// Exit status or timeout.
        reason: String,
        /// Tail of the program's stdout and stderr.
        log: String,
    },
    /// A local file system operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Talking to PostgreSQL failed.
    #[error("{context}")]
    Postgres {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// Connecting a client to the test nats-server failed.
    #[error("connecting to nats-server at {url}")]
    NatsConnect {
        /// The server's URL.
        url: String,
        /// The underlying error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A network call did not finish in time.
    #[error("{context}: timed out after {after:?}")]
    Timeout {
        /// What was being done.
        context: String,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// Migrating a test database failed.
    #[error("migrating the test database")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// Writing a test world through the store failed.
    #[error("{context}")]
    Store {
        /// What was being written.
        context: String,
        /// The underlying error.
        #[source]
        source: ebb_store::StoreError,
    },
    /// A test world's declaration cannot be written (a bad site code, an unknown site, …).
    #[error("test world: {0}")]
    World(String),
    /// The process-wide throwaway cluster failed to start earlier; every later test gets this.
    #[error("the throwaway postgresql cluster is unavailable: {0}")]
    Cluster(Arc<Error>),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn pg(context: impl Into<String>, source: sqlx::Error) -> Self {
        Error::Postgres {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn store(context: impl Into<String>, source: ebb_store::StoreError) -> Self {
        Error::Store {
            context: context.into(),
            source,
        }
    }

    /// The Debian package to install, when the error is (or wraps) a missing binary.
    pub fn missing_package(&self) -> Option<&'static str> {
        match self {
            Error::MissingBinary { package, .. } => Some(package),
            Error::Cluster(inner) => inner.missing_package(),
            _ => None,
        }
    }
}

/// A log shortened for an error message: the first lines say why a program refused to run
/// (a bad flag, a bad setting), the last ones why a server stopped.
pub(crate) fn excerpt(log: &str) -> String {
    const HEAD: usize = 10;
    const TAIL: usize = 40;
    let lines: Vec<&str> = log.lines().collect();
    if lines.len() <= HEAD + TAIL {
        return lines.join("\n");
    }
    let skipped = lines.len() - HEAD - TAIL;
    format!(
        "{}\n[... {skipped} lines ...]\n{}",
        lines[..HEAD].join("\n"),
        lines[lines.len() - TAIL..].join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_the_first_and_last_lines() {
        let log: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let short = excerpt(&log);
        assert!(short.starts_with("line 1\n"), "{short}");
        assert!(short.contains("[... 50 lines ...]"), "{short}");
        assert!(short.ends_with("line 100"), "{short}");
        assert_eq!(excerpt("a\nb\n"), "a\nb");
    }
}

//! SIGINT and SIGTERM become one cancelled token: every service drains and returns. A second
//! signal means the operator does not want to wait: the process exits at once (child processes
//! of `ebb dev` still stop, because their watchdogs see the pipe from this process close).

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Exit status after a second signal: 128 + SIGINT, what a shell reports for Ctrl-C.
const FORCED_EXIT: i32 = 130;

/// Owns the signal listener; dropping it stops listening.
#[derive(Debug)]
pub struct Signals {
    token: CancellationToken,
    listener: JoinHandle<()>,
}

impl Signals {
    /// Starts listening for SIGINT and SIGTERM. Needs a tokio runtime.
    pub fn install() -> anyhow::Result<Self> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let token = CancellationToken::new();
        let cancel = token.clone();
        let listener = tokio::spawn(async move {
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            tracing::info!(
                signal = name,
                "shutting down (send it again to exit at once)"
            );
            cancel.cancel();
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            tracing::warn!(signal = name, "second signal, exiting without waiting");
            std::process::exit(FORCED_EXIT);
        });
        Ok(Self { token, listener })
    }

    /// Cancelled on the first signal.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

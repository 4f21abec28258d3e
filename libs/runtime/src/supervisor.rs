//! The supervisor: named, owned tasks under one stop token (STYLE rule 5). A task that ends
//! before it is told to, with an error, a panic or even `Ok`, stops every other task: a service
//! runs until shutdown, so an early end is a failure. Shutdown drains every task with a
//! timeout, and what did not stop in time is aborted and named.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a supervisor waits for its tasks after the stop token fired, unless told otherwise.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(20);

type Ended = (String, anyhow::Result<()>);

/// Owns a group of named tasks.
#[derive(Debug)]
pub struct Supervisor {
    /// Cancelled to stop every task (a child of the token given to [`Supervisor::new`]).
    stop: CancellationToken,
    tasks: JoinSet<Ended>,
    /// Names of the running tasks, for the drain report.
    drain: Duration,
}

impl Supervisor {
    /// A supervisor whose tasks stop when `parent` is cancelled (or when one of them fails).
    pub fn new(parent: &CancellationToken) -> Self {
        Self {
            stop: parent.child_token(),
            tasks: JoinSet::new(),
            drain: DEFAULT_DRAIN,
        }
    }

    /// How long [`Supervisor::run`] waits for the tasks to stop.
    pub fn with_drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// The token every task should stop on.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Tasks still owned.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Runs `task` as `name`.
    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.into();
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Awaits `f` while watching the tasks: a task that ends first, or the stop token, wins
    /// (an error naming it). For start-up steps that need the tasks running.
    pub async fn watch<T>(&mut self, f: impl Future<Output = T>) -> anyhow::Result<T> {
        let stop = self.stop.clone();
        tokio::select! {
            biased;
            v = f => Ok(v),
            () = stop.cancelled() => anyhow::bail!("stopped during start-up"),
            Some(done) = self.tasks.join_next() => Err(ended_early(done)),
        }
    }

    /// Runs until the stop token fires or a task ends, then stops every task and drains them.
    /// Returns the first failure (a task that ended early), if any.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let outcome = if self.tasks.is_empty() {
            self.stop.cancelled().await;
            Ok(())
        } else {
            // Biased: a task that ends because the stop token fired is not an early end.
            tokio::select! {
                biased;
                () = self.stop.cancelled() => Ok(()),
                Some(done) = self.tasks.join_next() => Err(ended_early(done)),
            }
        };
        if let Err(e) = &outcome {
            tracing::error!(
                error = format!("{e:#}"),
                "a task ended; stopping the others"
            );
        }
        self.stop.cancel();
        self.drain().await;
        outcome
    }

    /// Stops every task and waits for them, up to the drain timeout.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        self.drain().await;
    }

    async fn drain(&mut self) {
        let drain = self.drain;
        let drained = tokio::time::timeout(drain, async {
            while let Some(done) = self.tasks.join_next().await {
                match done {
                    Ok((name, Ok(()))) => tracing::debug!(task = name, "stopped"),
                    Ok((name, Err(error))) => tracing::warn!(
                        task = name,
                        error = format!("{error:#}"),
                        "stopped with an error"
                    ),
                    Err(error) => tracing::warn!(%error, "a task panicked while stopping"),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = self.tasks.len(),
                "tasks did not stop within {drain:?}; aborting them"
            );
            self.tasks.shutdown().await;
        }
    }
}

fn ended_early(done: Result<Ended, tokio::task::JoinError>) -> anyhow::Error {
    match done {
        Ok((name, Ok(()))) => anyhow::anyhow!("{name} stopped unexpectedly"),
        Ok((name, Err(e))) => e.context(format!("{name} failed")),
        Err(e) if e.is_panic() => anyhow::anyhow!("a task panicked: {e}"),
        Err(e) => anyhow::anyhow!("a task was cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_failure_stops_every_task() {
        let root = CancellationToken::new();
        let mut sup = Supervisor::new(&root);
        let t = sup.token();
        sup.spawn("steady", async move {
            t.cancelled().await;
            Ok(())
        });
        sup.spawn("broken", async { anyhow::bail!("boom") });
        let err = sup.run().await.unwrap_err();
        assert!(
            format!("{err:#}").contains("broken failed: boom"),
            "{err:#}"
        );
        assert!(
            !root.is_cancelled(),
            "a child failure does not cancel the parent"
        );
    }

    #[tokio::test]
    async fn an_early_ok_is_a_failure_and_shutdown_is_clean() {
        let root = CancellationToken::new();
        let mut sup = Supervisor::new(&root);
        sup.spawn("quitter", async { Ok(()) });
        assert!(sup.run().await.is_err());

        let mut sup = Supervisor::new(&root);
        let t = sup.token();
        sup.spawn("steady", async move {
            t.cancelled().await;
            Ok(())
        });
        root.cancel();
        sup.run().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_the_token_is_aborted_after_the_drain() {
        let root = CancellationToken::new();
        let mut sup = Supervisor::new(&root).with_drain(Duration::from_secs(1));
        sup.spawn("stubborn", async {
            futures::future::pending::<()>().await;
            Ok(())
        });
        root.cancel();
        sup.run().await.unwrap();
    }
}

//! The reconciler drives curtailment events and their targets through their state machines
//! (DESIGN §5). Exactly one instance acts at a time: the holder of a PostgreSQL advisory lock. The
//! leader is woken by command results and telemetry, with a slow safety tick, and after every pass
//! it bumps a heartbeat row that an alert can read. Everything it knows is in the database, so a
//! new leader resumes where the last one stopped, including targets orphaned in `dispatching`.

pub mod config;
mod decide;
mod intake;
mod liveness;
mod pass;

#[doc(hidden)]
pub use pass::{PassStats, Reconciler};

pub use config::ReconcilerConfig;

use async_nats::jetstream;
use ebb_store::PgPool;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The advisory lock key that elects the leader ("ebb_rec1").
pub const LEADER_LOCK_KEY: i64 = 0x6562_625f_7265_6331;
/// The heartbeat row's name.
pub const HEARTBEAT: &str = "reconciler";

/// Test-only fault injection: lets a test stop the leader at a precise point.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called after a batch was stamped `dispatching` and before it is published. If it returns
    /// `true`, the pass stops there and never returns, as if the process died.
    pub after_stamp: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// Called at the start of every pass, outside any event (a test makes it panic).
    pub before_pass: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// The reconciler as a service of the runtime.
#[derive(Debug)]
pub struct ReconcilerService;

impl ebb_runtime::Service for ReconcilerService {
    type Settings = ReconcilerConfig;
    const NAME: &'static str = "reconciler";
    const ABOUT: &'static str =
        "Drives curtailment events through their state machines (leader-elected)";
    const NEEDS: ebb_runtime::Needs = ebb_runtime::Needs::DatabaseAndNats;
    const STREAMS: &'static [&'static str] = &[
        ebb_bus::streams::CMD,
        ebb_bus::streams::RESULT,
        ebb_bus::streams::TELEMETRY,
    ];

    fn run(
        config: ReconcilerConfig,
        ctx: ebb_runtime::Context,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
        run_with_hooks(config, Hooks::default(), ctx)
    }
}

/// Runs the reconciler until `ctx.shutdown`: waits to become leader, leads until the lock is
/// lost, then waits again. `hooks` let a test stop the leader at a precise point.
#[doc(hidden)]
pub async fn run_with_hooks(
    config: ReconcilerConfig,
    hooks: Hooks,
    ctx: ebb_runtime::Context,
) -> anyhow::Result<()> {
    if let Err(errs) = config.validate() {
        anyhow::bail!("invalid reconciler config: {}", errs.join("; "));
    }
    let holder = config.holder_name();
    tracing::info!(holder, "reconciler starting");
    let pool = ctx.pool()?.clone();
    let js = ctx.jetstream().clone();
    let shutdown = ctx.shutdown.clone();
    // The lock's connection has the pool's session settings: the server's keepalives are what
    // frees the lock of a leader that vanished without closing its socket.
    let lock_options = ctx.db_connect_options()?;
    let fence_timeout = fence_timeout(ctx.common().db_session().statement_timeout);
    // Listening for event changes holds a connection for as long as it listens: its own, not
    // one of the passes' pool.
    let listen_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(lock_options.clone());

    // A standby keeps one connection and retries the lock on it, instead of reconnecting each time.
    let mut standby: Option<PgConnection> = None;
    while !shutdown.is_cancelled() {
        let lock = match try_lock(&mut standby, &lock_options).await {
            Ok(Some(conn)) => conn,
            Ok(None) => {
                metrics::gauge!(ebb_obs::names::RECONCILER_IS_LEADER).set(0.0);
                sleep_or_cancel(Duration::from_millis(config.standby_poll_ms), &shutdown).await;
                continue;
            }
            Err(e) => {
                standby = None;
                tracing::warn!(error = %e, "could not try the leader lock");
                sleep_or_cancel(Duration::from_millis(config.standby_poll_ms), &shutdown).await;
                continue;
            }
        };
        tracing::info!(holder, "became reconciler leader");
        metrics::gauge!(ebb_obs::names::RECONCILER_IS_LEADER).set(1.0);
        let result = lead(
            &config,
            &hooks,
            &holder,
            Conns {
                pool: pool.clone(),
                listen: listen_pool.clone(),
                js: js.clone(),
            },
            LeaderLock {
                conn: lock,
                answer_within: fence_timeout,
            },
            shutdown.clone(),
        )
        .await;
        metrics::gauge!(ebb_obs::names::RECONCILER_IS_LEADER).set(0.0);
        match result {
            Ok(()) => tracing::info!(holder, "stopped leading"),
            Err(e) => tracing::warn!(holder, error = ?e, "lost leadership"),
        }
    }
    Ok(())
}

/// The leader's lock: the connection that holds it, the only evidence of leadership.
struct LeaderLock {
    conn: PgConnection,
    /// How long the connection may take to answer before the lock counts as lost.
    answer_within: Duration,
}

impl LeaderLock {
    /// Whether the lock is still held: if its connection is gone, so is the lock. A server that
    /// stopped answering (a half-open connection) counts as gone after `answer_within`; the
    /// server's keepalives free the lock on its side.
    async fn check(&mut self) -> anyhow::Result<()> {
        match tokio::time::timeout(
            self.answer_within,
            sqlx::query("SELECT 1").execute(&mut self.conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("leader lock connection failed")),
            Err(_) => Err(anyhow::anyhow!(
                "leader lock connection did not answer within {:?}",
                self.answer_within
            )),
        }
    }
}

/// How long the leader waits for its lock connection to answer `SELECT 1`: the statement
/// timeout (a trivial query that takes that long is not coming back), or 30 s without one.
fn fence_timeout(statement_timeout: Duration) -> Duration {
    if statement_timeout.is_zero() {
        Duration::from_secs(30)
    } else {
        statement_timeout
    }
}

async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// Tries the leader lock on a dedicated connection; the lock lives exactly as long as it. On
/// success the connection moves to the leader; otherwise it stays in `standby` for the next try.
async fn try_lock(
    standby: &mut Option<PgConnection>,
    options: &PgConnectOptions,
) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = match standby.take() {
        Some(c) => c,
        None => PgConnection::connect_with(options).await?,
    };
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK_KEY)
        .fetch_one(&mut conn)
        .await?;
    if got {
        Ok(Some(conn))
    } else {
        *standby = Some(conn);
        Ok(None)
    }
}

/// What a leader talks to: the passes' pool, the listener's own connection, JetStream.
struct Conns {
    pool: PgPool,
    listen: PgPool,
    js: jetstream::Context,
}

/// One leadership term: intake tasks feed the pass loop until shutdown or the lock connection
/// fails. Intake tasks are owned by a tracker and drained before returning.
async fn lead(
    config: &ReconcilerConfig,
    hooks: &Hooks,
    holder: &str,
    conns: Conns,
    mut lock: LeaderLock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Conns {
        pool,
        listen: listen_pool,
        js,
    } = conns;
    let term = shutdown.child_token();
    let wake = Arc::new(Notify::new());
    // Results are applied by the pass loop itself, so a result can never interleave with a
    // stamp → publish → mark-dispatched sequence.
    let (results_tx, mut results_rx) = mpsc::channel(intake::RESULT_QUEUE);
    let tasks = TaskTracker::new();
    tasks.spawn(intake::results(
        js.clone(),
        results_tx,
        wake.clone(),
        term.clone(),
    ));
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut lock.conn)
        .await?;
    let mut reconciler =
        pass::Reconciler::new(config, hooks.clone(), pool.clone(), js.clone(), Some(pid));
    tasks.spawn(intake::telemetry(
        js,
        pool.clone(),
        reconciler.telemetry_touched(),
        reconciler.liveness(),
        wake.clone(),
        term.clone(),
    ));
    tasks.spawn(intake::event_changes(
        listen_pool,
        wake.clone(),
        term.clone(),
    ));
    tasks.close();

    let epoch = match ebb_store::heartbeat::begin_term(&pool, HEARTBEAT, holder).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = ?e, "recording the leader's term failed");
            0
        }
    };
    let tick = Duration::from_millis(config.tick_ms);
    let outcome = loop {
        if let Err(e) = lock.check().await {
            break Err(e);
        }
        let mut results = Vec::new();
        while let Ok(r) = results_rx.try_recv() {
            results.push(r);
        }
        let started_at = chrono::Utc::now();
        // A panic anywhere in a pass (events are already isolated from each other inside it) is
        // counted and logged, what the pass kept is dropped, and the next pass runs: one bad
        // row must not take the control loop down. Results it held come back from JetStream.
        let run = async {
            if let Some(hook) = &hooks.before_pass {
                hook();
            }
            reconciler.pass(results).await
        };
        let next = match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await {
            Ok(next) => next,
            Err(panic) => {
                metrics::counter!(ebb_obs::names::RECONCILER_PASS_PANICS).increment(1);
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "a reconcile pass panicked; the next pass starts afresh");
                reconciler.forget();
                None
            }
        };
        let pass = ebb_store::heartbeat::Pass {
            epoch,
            started_at,
            finished_at: chrono::Utc::now(),
            live_events: reconciler.last_pass().live_events,
        };
        // Liveness is freshness, not query health: beat even if the pass failed.
        if let Err(e) = ebb_store::heartbeat::beat(&pool, HEARTBEAT, holder, Some(&pass)).await {
            tracing::warn!(error = ?e, "heartbeat write failed");
        }
        let sleep = next.map_or(tick, |n| n.min(tick));
        tokio::select! {
            _ = term.cancelled() => break Ok(()),
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    };
    term.cancel();
    if outcome.is_ok() {
        // A clean stop says so, on a short clock of its own: shutdown must not hang on it.
        let last = ebb_store::heartbeat::stopped(&pool, HEARTBEAT, holder, epoch);
        match tokio::time::timeout(Duration::from_secs(2), last).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = ?e, "the last heartbeat write failed"),
            Err(_) => tracing::warn!("the last heartbeat write timed out"),
        }
    }
    // Unblocks an intake task waiting for room in the queue.
    drop(results_rx);
    tasks.wait().await;
    drop(lock);
    outcome
}

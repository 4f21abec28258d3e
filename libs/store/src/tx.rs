//! The transaction helper (DESIGN §4): the closure runs once per attempt inside a fresh
//! transaction and builds its result afresh; serialization failures (40001) and deadlocks (40P01)
//! are retried a bounded number of times; nothing is reported done before commit.

use crate::error::{StoreError, is_retryable};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;

/// Attempts before a persistent serialization conflict is returned.
pub const DEFAULT_ATTEMPTS: u32 = 5;

/// Runs `f` in a transaction, retrying on 40001/40P01 up to `attempts` times in all.
pub async fn with_tx<T, F>(pool: &PgPool, attempts: u32, mut f: F) -> Result<T, StoreError>
where
    F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>,
{
    let attempts = attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = async {
            let mut tx = pool.begin().await?;
            let value = f(&mut tx).await?;
            tx.commit().await?;
            Ok::<T, StoreError>(value)
        }
        .await;
        match outcome {
            Err(StoreError::Db(e)) if is_retryable(&e) => {
                if attempt >= attempts {
                    return Err(StoreError::RetriesExhausted {
                        attempts,
                        source: e,
                    });
                }
                metrics::counter!(ebb_obs::names::STORE_TX_RETRIES).increment(1);
                tracing::debug!(attempt, error = %e, "retrying transaction");
                // Jittered backoff so two conflicting writers do not collide again in lockstep.
                let ms = 5u64 * (1 << attempt.min(6)) + rand::random::<u64>() % 10;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            other => return other,
        }
    }
}

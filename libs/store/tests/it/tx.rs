//! The transaction helper: bounded retries of 40001/40P01, classified by code, never by text.

use ebb_store::StoreError;
use ebb_store::tx::with_tx;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

async fn raise(conn: &mut sqlx::PgConnection, code: &str, message: &str) -> Result<(), StoreError> {
    let sql = format!("DO $$ BEGIN RAISE EXCEPTION '{message}' USING ERRCODE = '{code}'; END $$");
    sqlx::query(&sql).execute(conn).await?;
    Ok(())
}

#[tokio::test]
async fn serialization_failures_are_retried_and_the_closure_rebuilds_its_result() {
    ebb_testkit::metrics::recorder();
    let db = super::fixtures::migrated().await;
    sqlx::query("CREATE TABLE t (v int)")
        .execute(db.pool())
        .await
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let got = with_tx(db.pool(), 5, move |conn| {
        let c = c.clone();
        Box::pin(async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            sqlx::query("INSERT INTO t VALUES ($1)")
                .bind(n as i32)
                .execute(&mut *conn)
                .await?;
            if n < 3 {
                raise(conn, if n == 1 { "40001" } else { "40P01" }, "conflict").await?;
            }
            Ok(n)
        })
    })
    .await
    .unwrap();
    assert_eq!(got, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        ebb_testkit::metrics::counter("ebb_store_tx_retries_total"),
        2,
        "each retry is counted"
    );
    // Only the committed attempt's write survives.
    let rows: Vec<i32> = sqlx::query_scalar("SELECT v FROM t")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(rows, vec![3]);
}

#[tokio::test]
async fn retries_are_bounded() {
    let db = super::fixtures::migrated().await;
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let err = with_tx(db.pool(), 4, move |conn| {
        let c = c.clone();
        Box::pin(async move {
            c.fetch_add(1, Ordering::SeqCst);
            raise(conn, "40001", "always").await
        })
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, StoreError::RetriesExhausted { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn other_errors_are_not_retried_whatever_their_text() {
    let db = super::fixtures::migrated().await;
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let err = with_tx(db.pool(), 5, move |conn| {
        let c = c.clone();
        Box::pin(async move {
            c.fetch_add(1, Ordering::SeqCst);
            raise(
                conn,
                "P0001",
                "deadlock detected could not serialize access",
            )
            .await
        })
    })
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Db(_)), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

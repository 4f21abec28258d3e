//! Every connection starts with the session settings: a statement timeout, and server-side TCP
//! keepalives so that a client that vanished (and the locks it held) is dropped in minutes, not
//! hours. The pool's connections and a dedicated one (the reconciler's leader lock) alike.

use ebb_store::Session;
use sqlx::{Connection, PgConnection};
use std::time::Duration;

fn session() -> Session {
    Session {
        statement_timeout: Duration::from_millis(1234),
        keepalive_idle: Duration::from_secs(17),
        keepalive_interval: Duration::from_secs(4),
        keepalive_count: 5,
    }
}

async fn show(conn: &mut PgConnection, name: &str) -> String {
    sqlx::query_scalar(&format!("SHOW {name}"))
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn check(conn: &mut PgConnection) {
    assert_eq!(show(conn, "statement_timeout").await, "1234ms");
    assert_eq!(show(conn, "tcp_keepalives_idle").await, "17");
    assert_eq!(show(conn, "tcp_keepalives_interval").await, "4");
    assert_eq!(show(conn, "tcp_keepalives_count").await, "5");
}

#[tokio::test]
async fn dedicated_and_pooled_connections_start_with_the_session_settings() {
    let db = ebb_testkit::TestDb::new().await.unwrap();
    let options = ebb_store::connect_options(db.url(), &session()).unwrap();
    let mut dedicated = PgConnection::connect_with(&options).await.unwrap();
    check(&mut dedicated).await;

    let pool = ebb_store::connect_with(db.url(), 2, &session())
        .await
        .unwrap();
    check(&mut pool.acquire().await.unwrap()).await;

    // The timeout is enforced: the server cancels a longer statement (57014 query_canceled).
    let err = sqlx::query("SELECT pg_sleep(3)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("57014"),
        "{err}"
    );
}

#[tokio::test]
async fn migrations_lift_the_timeout_only_while_they_run() {
    let db = ebb_testkit::TestDb::new().await.unwrap();
    // One connection, so the migrations run on the very connection checked afterwards.
    let pool = ebb_store::connect_with(db.url(), 1, &session())
        .await
        .unwrap();
    ebb_store::migrate(&pool).await.unwrap();
    check(&mut pool.acquire().await.unwrap()).await;
}

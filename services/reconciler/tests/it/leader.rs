//! Leadership (DESIGN §5.9, §5.10): one leader at a time, a new leader resumes from the database,
//! including a batch orphaned between its `dispatching` stamp and its publish.

use super::harness::{harness, harness_sites};
use ebb_bus::StartRequest;
use ebb_domain::{EventState, TargetState};
use ebb_reconciler::{Hooks, LEADER_LOCK_KEY};
use sqlx::{Connection, PgConnection};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

#[tokio::test]
async fn a_new_leader_finishes_an_event_orphaned_between_stamp_and_publish() {
    let h = harness(4).await;
    // The first leader ingests telemetry, then dies right after its first dispatching stamp.
    let reached = Arc::new(AtomicBool::new(false));
    let flag = reached.clone();
    let hooks = Hooks {
        after_stamp: Some(Arc::new(move || {
            flag.store(true, Ordering::SeqCst);
            true
        })),
        ..Hooks::default()
    };
    let first = h.spawn_reconciler("first", hooks);
    h.wait_for_telemetry().await;
    let id = h.start(h.start_request(5.0)).await;
    h.wait(
        "the first leader to stamp",
        Duration::from_secs(10),
        || async { reached.load(Ordering::SeqCst) },
    )
    .await;

    let states = h.target_states(id).await;
    assert!(
        states.values().any(|s| *s == TargetState::Dispatching),
        "{states:?}"
    );
    assert!(
        h.site_agent.batches().is_empty(),
        "nothing was published before the kill"
    );
    let (_, seq_before, _) = ebb_store::heartbeat::read(h.db.pool(), ebb_reconciler::HEARTBEAT)
        .await
        .unwrap()
        .unwrap();

    first.abort(); // the process dies: its lock connection closes with it
    let _ = first.await;

    let _second = h.spawn_reconciler("second", Hooks::default());
    h.wait_event(id, EventState::Active, Duration::from_secs(20))
        .await;
    let states = h.target_states(id).await;
    assert!(
        states.values().all(|s| *s == TargetState::Confirmed),
        "{states:?}"
    );
    let (holder, seq_after, _) = ebb_store::heartbeat::read(h.db.pool(), ebb_reconciler::HEARTBEAT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(holder, "second");
    assert!(
        seq_after > seq_before,
        "heartbeat moved past {seq_before}: {seq_after}"
    );
}

#[tokio::test]
async fn only_one_reconciler_leads() {
    let h = harness(1).await;
    let _a = h.spawn_reconciler("a", Hooks::default());
    h.wait("a heartbeat", Duration::from_secs(10), || async {
        ebb_store::heartbeat::read(h.db.pool(), ebb_reconciler::HEARTBEAT)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let _b = h.spawn_reconciler("b", Hooks::default());
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (holder, _, _) = ebb_store::heartbeat::read(h.db.pool(), ebb_reconciler::HEARTBEAT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            holder, "a",
            "the standby must not act while the leader holds the lock"
        );
    }
}

/// The backend holding the leader lock in this test's database, if any (other tests' databases
/// in the same cluster have leaders of their own).
const LOCK_HOLDER: &str = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND classid::bigint = ($1 >> 32) AND objid::bigint = ($1 & 4294967295) AND objsubid = 1";

/// Kills the leader's lock connection and waits until the session queued behind it holds the lock.
/// Returns the heartbeat's seq at that moment. Blocking: it runs on a thread of its own, so that
/// a hook (a plain function called mid-pass) can call it.
fn depose_leader(url: &str) -> i64 {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            let leader: i32 = sqlx::query_scalar(LOCK_HOLDER)
                .bind(LEADER_LOCK_KEY)
                .fetch_one(&mut c)
                .await
                .unwrap();
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(leader)
                .execute(&mut c)
                .await
                .unwrap();
            loop {
                let holder: Option<i32> = sqlx::query_scalar(LOCK_HOLDER)
                    .bind(LEADER_LOCK_KEY)
                    .fetch_optional(&mut c)
                    .await
                    .unwrap();
                if holder.is_some_and(|p| p != leader) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let seq: i64 =
                sqlx::query_scalar("SELECT seq FROM reconciler_heartbeat WHERE name = $1")
                    .bind(ebb_reconciler::HEARTBEAT)
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
            c.close().await.ok();
            seq
        })
    })
    .join()
    .unwrap()
}

/// DESIGN §5.9: a leader that lost its lock stamps, and so publishes, nothing more, even in the
/// middle of a pass. The leader loses its lock right after stamping the first site's batch, to a
/// session that keeps it; the rest of that pass must not stamp the second site's batch.
#[tokio::test]
async fn a_deposed_leader_stamps_nothing_more_in_the_same_pass() {
    let h = harness_sites(&[2, 2]).await;
    let deposed = Arc::new(AtomicBool::new(false));
    let seq_at_depose = Arc::new(AtomicI64::new(i64::MAX));
    let hooks = Hooks {
        after_stamp: Some(Arc::new({
            let (deposed, seq_at_depose) = (deposed.clone(), seq_at_depose.clone());
            let url = h.db.url().to_owned();
            move || {
                if !deposed.load(Ordering::SeqCst) {
                    seq_at_depose.store(depose_leader(&url), Ordering::SeqCst);
                    deposed.store(true, Ordering::SeqCst);
                }
                false
            }
        })),
        ..Hooks::default()
    };
    let _first = h.spawn_reconciler("first", hooks);
    h.wait("a leader", Duration::from_secs(10), || async {
        ebb_store::heartbeat::read(h.db.pool(), ebb_reconciler::HEARTBEAT)
            .await
            .unwrap()
            .is_some()
    })
    .await;

    // The usurper queues for the lock now, so it takes the lock the moment the leader loses it
    // and the deposed leader cannot win it back.
    let mut usurper = PgConnection::connect(h.db.url()).await.unwrap();
    let usurper_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut usurper)
        .await
        .unwrap();
    let usurper = tokio::spawn(async move {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LEADER_LOCK_KEY)
            .execute(&mut usurper)
            .await
            .unwrap();
        usurper
    });
    h.wait("the usurper to queue", Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted)",
        )
        .bind(usurper_pid)
        .fetch_one(h.db.pool())
        .await
        .unwrap()
    })
    .await;

    h.wait_for_telemetry().await;
    let id = h
        .start(StartRequest {
            mode: ebb_domain::selection::Mode::Full,
            ..h.start_request(1.0)
        })
        .await;
    h.wait(
        "the leader to be deposed",
        Duration::from_secs(10),
        || async { deposed.load(Ordering::SeqCst) },
    )
    .await;
    h.wait(
        "the deposed leader's pass to end",
        Duration::from_secs(10),
        || async {
            let (_, seq, _) = ebb_store::heartbeat::read(h.db.pool(), ebb_reconciler::HEARTBEAT)
                .await
                .unwrap()
                .unwrap();
            seq > seq_at_depose.load(Ordering::SeqCst)
        },
    )
    .await;

    let batches: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT last_batch_id FROM curtailment_target WHERE event_id = $1 AND last_batch_id IS NOT NULL",
    )
    .bind(id.0)
    .fetch_all(h.db.pool())
    .await
    .unwrap();
    assert_eq!(
        batches.len(),
        1,
        "only the batch stamped before the lock was lost: {batches:?}"
    );
    let targets = h.target_states(id).await;
    assert_eq!(targets.len(), 4, "both sites are in the event");
    assert_eq!(
        targets
            .values()
            .filter(|s| **s == TargetState::Pending)
            .count(),
        2,
        "the second site's targets were never stamped: {targets:?}"
    );
    let published: usize = h.agents.iter().map(|a| a.batches().len()).sum();
    assert!(published <= 1, "{published} batches reached the sites");
    // The usurper held the lock throughout; it lets go when the test ends.
    let _usurper = usurper.await.unwrap();
}

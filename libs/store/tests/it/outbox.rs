//! The outbox: rows written in a transaction are claimable after commit, once; a rolled-back
//! write leaves nothing; a claim released or dropped without finishing leaves its rows for a
//! later one. (Publishing them, parking and pruning are the worker's relay, tested there.)

use chrono::Utc;
use ebb_domain::{EventId, EventState, OrgId};
use ebb_store::outbox::{self, Failed, Message, Notice};
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

fn notice(org: OrgId) -> Notice {
    Notice::EventTransition {
        event_id: EventId::new(),
        org_id: org,
        state: EventState::Active,
        from: Some(EventState::Pending),
        reason: None,
        at: Utc::now(),
        data: None,
    }
}

#[tokio::test]
async fn committed_rows_are_claimed_once_and_rolled_back_ones_never() {
    let db = super::fixtures::migrated().await;
    let pool = db.pool();
    let org = OrgId::new();
    let one = notice(org);

    let mut tx = pool.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, Some(org), &one).await.unwrap();
    tx.commit().await.unwrap();
    let mut rolled = pool.begin().await.unwrap();
    outbox::enqueue(&mut rolled, Some(org), &notice(org))
        .await
        .unwrap();
    rolled.rollback().await.unwrap();

    // A claim released unfinished (a relay whose publish failed) leaves its rows for the next.
    let abandoned = outbox::claim(pool, 10, LEASE).await.unwrap();
    assert_eq!(abandoned.rows.len(), 1);
    abandoned.release().await.unwrap();

    let claim = outbox::claim(pool, 10, LEASE).await.unwrap();
    assert_eq!(claim.rows.len(), 1);
    assert_eq!(claim.rows[0].id, id);
    assert_eq!(claim.rows[0].org_id, Some(org));
    assert_eq!(claim.rows[0].message, Message::Notice(one));
    // A second relay running at the same time skips the locked row.
    assert!(
        outbox::claim(pool, 10, LEASE)
            .await
            .unwrap()
            .rows
            .is_empty()
    );
    claim.finish(&[id]).await.unwrap();
    assert!(
        outbox::claim(pool, 10, LEASE)
            .await
            .unwrap()
            .rows
            .is_empty(),
        "published rows are not claimed again"
    );
}

#[tokio::test]
async fn rows_from_before_kinds_are_raw_and_unknown_kinds_unreadable() {
    let db = super::fixtures::migrated().await;
    let pool = db.pool();
    sqlx::query("INSERT INTO outbox (id, subject, payload) VALUES (gen_random_uuid(), 'ebb.event.o.e', '\\x01')")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO outbox (id, kind, payload) VALUES (gen_random_uuid(), 'from_the_future', '\\x7b7d')")
        .execute(pool)
        .await
        .unwrap();
    let claim = outbox::claim(pool, 10, LEASE).await.unwrap();
    let mut got: Vec<_> = claim.rows.iter().map(|r| r.message.clone()).collect();
    got.sort_by_key(|m| format!("{m:?}"));
    assert!(
        matches!(&got[0], Message::Raw { subject, payload } if subject == "ebb.event.o.e" && payload == &[1u8]),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Message::Unreadable { kind: Some(k), .. } if k == "from_the_future"),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_lapsed_lease_frees_its_rows_and_its_claim_can_no_longer_settle_them() {
    let db = super::fixtures::migrated().await;
    let pool = db.pool();
    let org = OrgId::new();
    let mut tx = pool.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, Some(org), &notice(org))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // A relay that dies after claiming: nobody else gets the row while its lease runs.
    let dead = outbox::claim(pool, 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(dead.rows[0].attempts, 1);
    assert!(
        outbox::claim(pool, 10, LEASE)
            .await
            .unwrap()
            .rows
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = outbox::claim(pool, 10, LEASE).await.unwrap();
    assert_eq!(next.rows.len(), 1);
    assert_eq!(next.rows[0].attempts, 2, "the lapsed claim counts");

    // The old claim wakes up and fails the row: the current claim is untouched by it.
    let parked = dead
        .settle(
            &[],
            &[Failed {
                id,
                error: "late".into(),
                retry_in: Duration::ZERO,
            }],
            1,
        )
        .await
        .unwrap();
    assert!(parked.is_empty(), "{parked:?}");
    assert!(
        outbox::claim(pool, 10, LEASE)
            .await
            .unwrap()
            .rows
            .is_empty()
    );

    // Failed by its own claim, at the limit: parked, and never claimed again.
    let parked = next
        .settle(
            &[],
            &[Failed {
                id,
                error: "unreadable".into(),
                retry_in: Duration::ZERO,
            }],
            2,
        )
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].id, parked[0].attempts), (id, 2));
    assert_eq!(parked[0].error, "unreadable");
    assert!(
        outbox::claim(pool, 10, LEASE)
            .await
            .unwrap()
            .rows
            .is_empty()
    );
}

/// Issue 8: one event's notices are claimed one at a time, oldest first, so a failed one waiting
/// for its retry is never overtaken; another event's are not held up by it; a parked one no
/// longer holds its successors.
#[tokio::test]
async fn an_events_notices_are_claimed_in_order_one_at_a_time() {
    let db = super::fixtures::migrated().await;
    let pool = db.pool();
    let org = OrgId::new();
    let event = EventId::new();
    let of = |state| Notice::EventTransition {
        event_id: event,
        org_id: org,
        state,
        from: None,
        reason: None,
        at: Utc::now(),
        data: None,
    };
    let mut ids = Vec::new();
    for state in [
        EventState::Pending,
        EventState::Active,
        EventState::Restoring,
    ] {
        let mut tx = pool.begin().await.unwrap();
        ids.push(
            outbox::enqueue(&mut tx, Some(org), &of(state))
                .await
                .unwrap(),
        );
        tx.commit().await.unwrap();
    }
    let mut tx = pool.begin().await.unwrap();
    let other = outbox::enqueue(&mut tx, Some(org), &notice(org))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let claim = outbox::claim(pool, 10, LEASE).await.unwrap();
    let got: Vec<_> = claim.rows.iter().map(|r| r.id).collect();
    assert_eq!(got, [ids[0], other], "the head of each event");
    // The head fails and waits for its retry: nothing of its event is claimable meanwhile.
    let failed = Failed {
        id: ids[0],
        error: "refused".into(),
        retry_in: Duration::from_secs(3600),
    };
    claim.settle(&[other], &[failed], 10).await.unwrap();
    assert!(
        outbox::claim(pool, 10, LEASE)
            .await
            .unwrap()
            .rows
            .is_empty()
    );
    // Its retry comes: it goes, then the next one.
    sqlx::query("UPDATE outbox SET claimed_until = now() WHERE id = $1")
        .bind(ids[0])
        .execute(pool)
        .await
        .unwrap();
    let claim = outbox::claim(pool, 10, LEASE).await.unwrap();
    assert_eq!(
        claim.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[0]]
    );
    claim.finish(&[ids[0]]).await.unwrap();
    let claim = outbox::claim(pool, 10, LEASE).await.unwrap();
    assert_eq!(
        claim.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[1]]
    );
    // Parked, it holds nothing up.
    let failed = Failed {
        id: ids[1],
        error: "refused".into(),
        retry_in: Duration::from_secs(3600),
    };
    claim.settle(&[], &[failed], 1).await.unwrap();
    let claim = outbox::claim(pool, 10, LEASE).await.unwrap();
    assert_eq!(
        claim.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[2]]
    );
}

//! Webhook endpoints, secrets and deliveries against a real database: org scoping, sealed
//! secrets and their rotation grace, the fan-out, the leased claim (two claimers never hold one
//! delivery, a lapsed lease is reclaimed, one delivery at a time per endpoint, in order), the
//! outcomes (retry, 410, an exhausted schedule), the log and redelivery. (Sending is the worker's.)

use chrono::Utc;
use ebb_domain::OrgId;
use ebb_store::StoreError;
use ebb_store::webhooks::{
    self as hooks, Attempt, Claimed, DeliveryState, DisabledReason, Enablement, Endpoint,
    EndpointId, EndpointPatch, NewEndpoint, Recorded,
};
use ebb_testkit::TestDb;
use ebb_webhooks::attempt::{CappedBody, PhaseTimings};
use ebb_webhooks::endpoint::{Description, EventFilter};
use ebb_webhooks::ssrf::WebhookUrl;
use ebb_webhooks::{Event, EventType, Keyring, MessageId};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

fn keyring() -> Keyring {
    Keyring::parse(&Keyring::generate_entry("k1").unwrap()).unwrap()
}

async fn org(pool: &PgPool) -> OrgId {
    let id = OrgId::new();
    sqlx::query("INSERT INTO org (id, name) VALUES ($1, 'hooks')")
        .bind(id.0)
        .execute(pool)
        .await
        .unwrap();
    id
}

fn new_endpoint(url: &str, types: Option<&[&str]>) -> NewEndpoint {
    NewEndpoint {
        url: WebhookUrl::parse(url).unwrap(),
        event_types: EventFilter::parse(types).unwrap(),
        description: Description::new("test receiver").unwrap(),
    }
}

async fn endpoint(pool: &PgPool, ring: &Keyring, org: OrgId) -> Endpoint {
    hooks::create_endpoint(pool, ring, org, &new_endpoint("https://r.example/h", None))
        .await
        .unwrap()
        .0
}

fn event(t: EventType) -> Event {
    Event {
        id: MessageId::from(Uuid::now_v7()),
        event_type: t,
        time: Utc::now(),
        subject: Uuid::now_v7().to_string(),
        data: serde_json::json!({"state": t.as_str()}),
    }
}

fn status(code: u16) -> Attempt {
    Attempt {
        status: Some(code),
        ..Attempt::default()
    }
}

async fn claim(pool: &PgPool) -> Vec<Claimed> {
    hooks::claim(pool, 100, LEASE, "worker-a").await.unwrap()
}

/// Makes every pending delivery due now, as if its backoff had passed.
async fn fast_forward(pool: &PgPool) {
    sqlx::query("UPDATE webhook_delivery SET next_attempt_at = now() WHERE state = 'pending'")
        .execute(pool)
        .await
        .unwrap();
}

async fn migrated() -> TestDb {
    super::fixtures::migrated().await
}

#[tokio::test]
async fn endpoints_are_scoped_by_org_and_their_secret_is_sealed() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let (a, b) = (org(pool).await, org(pool).await);

    let (created, secret) = hooks::create_endpoint(
        pool,
        &ring,
        a,
        &new_endpoint("https://r.example/h", Some(&["ebb.curtailment.started"])),
    )
    .await
    .unwrap();
    assert_eq!(created.url, "https://r.example/h");
    assert_eq!(created.description, "test receiver");
    assert_eq!(
        created.event_types,
        EventFilter::Only(BTreeSet::from([EventType::CurtailmentStarted]))
    );
    assert_eq!(created.disabled, None);
    assert_eq!(
        hooks::list_endpoints(pool, a).await.unwrap(),
        std::slice::from_ref(&created)
    );
    assert!(hooks::list_endpoints(pool, b).await.unwrap().is_empty());
    assert_eq!(
        hooks::get_endpoint(pool, a, created.id).await.unwrap(),
        created
    );

    // The stored secret opens to the one shown, and the row does not hold it in clear.
    let stored = hooks::valid_secrets(pool, a, created.id).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].sealed.key_id, "k1");
    assert_eq!(stored[0].open(&ring).unwrap(), secret);
    let raw: Vec<u8> = sqlx::query_scalar("SELECT ciphertext FROM webhook_secret")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(!raw.windows(32).any(|w| w == secret.as_bytes()));
    assert!(
        hooks::valid_secrets(pool, b, created.id)
            .await
            .unwrap()
            .is_empty()
    );

    // Another org's key sees nothing and changes nothing.
    let patch = EndpointPatch {
        url: Some(WebhookUrl::parse("https://evil.example/").unwrap()),
        ..EndpointPatch::default()
    };
    for result in [
        hooks::get_endpoint(pool, b, created.id).await.map(drop),
        hooks::update_endpoint(pool, b, created.id, &patch)
            .await
            .map(drop),
        hooks::delete_endpoint(pool, b, created.id).await,
        hooks::rotate_secret(pool, &ring, b, created.id, LEASE)
            .await
            .map(drop),
    ] {
        assert!(matches!(result, Err(StoreError::NotFound)), "{result:?}");
    }
    assert_eq!(
        hooks::get_endpoint(pool, a, created.id).await.unwrap(),
        created
    );
    assert_eq!(
        hooks::valid_secrets(pool, a, created.id).await.unwrap(),
        stored
    );

    // The org's own changes apply, field by field.
    let patched = hooks::update_endpoint(
        pool,
        a,
        created.id,
        &EndpointPatch {
            event_types: Some(EventFilter::All),
            description: Some(Description::new("renamed").unwrap()),
            enablement: Some(Enablement::Disable),
            ..patch.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(patched.url, "https://evil.example/");
    assert_eq!(patched.event_types, EventFilter::All);
    assert_eq!(patched.description, "renamed");
    assert_eq!(patched.disabled.unwrap().reason, DisabledReason::Manual);
    assert!(patched.updated_at >= created.updated_at);
    let untouched = hooks::update_endpoint(pool, a, created.id, &EndpointPatch::default())
        .await
        .unwrap();
    assert_eq!(untouched.url, patched.url);
    assert_eq!(untouched.disabled, patched.disabled);
    let enabled = hooks::update_endpoint(
        pool,
        a,
        created.id,
        &EndpointPatch {
            enablement: Some(Enablement::Enable),
            ..EndpointPatch::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(enabled.disabled, None);

    hooks::delete_endpoint(pool, a, created.id).await.unwrap();
    assert!(matches!(
        hooks::get_endpoint(pool, a, created.id).await,
        Err(StoreError::NotFound)
    ));
    let secrets: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_secret")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(secrets, 0, "secrets go with their endpoint");
}

#[tokio::test]
async fn a_refused_create_leaves_nothing_behind() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    // No such org: the endpoint insert fails, and no secret is written either.
    let err = hooks::create_endpoint(
        pool,
        &ring,
        OrgId::new(),
        &new_endpoint("https://x.example/", None),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Db(_)), "{err:?}");
    for table in ["webhook_endpoint", "webhook_secret"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    // The schema backs the types up: a negative phase or an oversized body cannot be stored.
    let a = org(pool).await;
    let e = endpoint(pool, &ring, a).await;
    hooks::enqueue(pool, a, &event(EventType::CurtailmentStarted))
        .await
        .unwrap();
    for bad in [
        "UPDATE webhook_delivery SET connect_ms = -1",
        "UPDATE webhook_delivery SET response_body = decode(repeat('00', 4097), 'hex')",
        "UPDATE webhook_delivery SET state = 'lost'",
    ] {
        assert!(sqlx::query(bad).execute(pool).await.is_err(), "{bad}");
    }
    let page = hooks::list_deliveries(pool, a, e.id, None, 10)
        .await
        .unwrap();
    assert_eq!(page.rows[0].timings, PhaseTimings::default());
    assert_eq!(page.rows[0].state, DeliveryState::Pending);
}

#[tokio::test]
async fn enqueue_fans_out_to_enabled_matching_endpoints_once() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let (a, b) = (org(pool).await, org(pool).await);
    let all = endpoint(pool, &ring, a).await;
    let (completed_only, _) = hooks::create_endpoint(
        pool,
        &ring,
        a,
        &new_endpoint("https://c.example/", Some(&["ebb.curtailment.completed"])),
    )
    .await
    .unwrap();
    let disabled = endpoint(pool, &ring, a).await;
    hooks::update_endpoint(
        pool,
        a,
        disabled.id,
        &EndpointPatch {
            enablement: Some(Enablement::Disable),
            ..EndpointPatch::default()
        },
    )
    .await
    .unwrap();
    let other_org = endpoint(pool, &ring, b).await;

    let started = event(EventType::CurtailmentStarted);
    assert_eq!(hooks::enqueue(pool, a, &started).await.unwrap(), 1);
    assert_eq!(
        hooks::enqueue(pool, a, &started).await.unwrap(),
        0,
        "idempotent per message id"
    );
    let completed = event(EventType::CurtailmentCompleted);
    assert_eq!(hooks::enqueue(pool, a, &completed).await.unwrap(), 2);

    let ids = |page: hooks::DeliveryPage| {
        page.rows
            .into_iter()
            .map(|d| d.message_id)
            .collect::<Vec<_>>()
    };
    let log = |e: EndpointId| hooks::list_deliveries(pool, a, e, None, 10);
    assert_eq!(
        ids(log(all.id).await.unwrap()),
        [completed.id.to_string(), started.id.to_string()]
    );
    assert_eq!(
        ids(log(completed_only.id).await.unwrap()),
        [completed.id.to_string()]
    );
    assert!(ids(log(disabled.id).await.unwrap()).is_empty());
    assert!(
        ids(hooks::list_deliveries(pool, b, other_org.id, None, 10)
            .await
            .unwrap())
        .is_empty()
    );
    // The payload is the webhook body, as signed and sent.
    let row = &log(all.id).await.unwrap().rows[1];
    assert_eq!(row.payload, started.webhook_json());
    assert_eq!(row.event_type, "ebb.curtailment.started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_claimers_never_hold_one_delivery() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let a = org(pool).await;
    // Many endpoints with one delivery each: two claimers racing split them without overlap.
    for _ in 0..30 {
        endpoint(pool, &ring, a).await;
    }
    hooks::enqueue(pool, a, &event(EventType::CurtailmentStarted))
        .await
        .unwrap();
    let (p1, p2) = (pool.clone(), pool.clone());
    let one = tokio::spawn(async move { hooks::claim(&p1, 100, LEASE, "one").await });
    let two = tokio::spawn(async move { hooks::claim(&p2, 100, LEASE, "two").await });
    let (one, two) = (one.await.unwrap().unwrap(), two.await.unwrap().unwrap());
    let ids_one: BTreeSet<_> = one.iter().map(|c| c.id).collect();
    let ids_two: BTreeSet<_> = two.iter().map(|c| c.id).collect();
    assert!(ids_one.is_disjoint(&ids_two));
    assert_eq!(
        ids_one.len() + ids_two.len(),
        30,
        "{} + {}",
        ids_one.len(),
        ids_two.len()
    );
    assert!(claim(pool).await.is_empty(), "all are leased");

    // One delivery, claimed by two at once, many times over: exactly one claim each round.
    let single = TestDb::new().await.unwrap();
    ebb_store::migrate(single.pool()).await.unwrap();
    let pool = single.pool();
    let b = org(pool).await;
    endpoint(pool, &ring, b).await;
    for round in 0..20 {
        hooks::enqueue(pool, b, &event(EventType::CurtailmentActive))
            .await
            .unwrap();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let racer = |name: &'static str| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                hooks::claim(&pool, 10, LEASE, name).await.unwrap()
            })
        };
        let (x, y) = (racer("x"), racer("y"));
        let (x, y) = (x.await.unwrap(), y.await.unwrap());
        assert_eq!(x.len() + y.len(), 1, "round {round}: {x:?} {y:?}");
        let won = x.into_iter().chain(y).next().unwrap();
        assert_eq!(
            hooks::record(pool, &won, &status(200)).await.unwrap(),
            Recorded::Delivered
        );
    }
}

#[tokio::test]
async fn a_lapsed_lease_is_reclaimed_and_the_late_worker_writes_nothing() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let a = org(pool).await;
    let e = endpoint(pool, &ring, a).await;
    hooks::enqueue(pool, a, &event(EventType::CurtailmentStarted))
        .await
        .unwrap();

    // A worker claims and is killed mid-delivery: nobody else sends it while its lease runs.
    let dead = hooks::claim(pool, 10, Duration::from_millis(300), "dead")
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].lease.holder, "dead");
    assert!(claim(pool).await.is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;

    let next = claim(pool).await;
    assert_eq!(next.len(), 1, "the lapsed lease frees the delivery");
    assert_eq!(next[0].id, dead[0].id);
    assert_eq!(next[0].attempts, 2, "the killed attempt counts");
    assert_ne!(next[0].lease.token, dead[0].lease.token);

    // The first worker comes back: its outcome is refused and changes nothing.
    let before = hooks::list_deliveries(pool, a, e.id, None, 1)
        .await
        .unwrap();
    assert!(matches!(
        hooks::record(pool, &dead[0], &status(200)).await,
        Err(StoreError::RaceLost(_))
    ));
    assert!(matches!(
        hooks::release(pool, &dead[0]).await,
        Err(StoreError::RaceLost(_))
    ));
    assert_eq!(
        hooks::list_deliveries(pool, a, e.id, None, 1)
            .await
            .unwrap(),
        before
    );

    assert_eq!(
        hooks::record(pool, &next[0], &status(204)).await.unwrap(),
        Recorded::Delivered
    );
    let row = &hooks::list_deliveries(pool, a, e.id, None, 1)
        .await
        .unwrap()
        .rows[0];
    assert_eq!(row.state, DeliveryState::Delivered);
    assert_eq!(row.last_status, Some(204));
    assert!(row.delivered_at.is_some());
    assert!(claim(pool).await.is_empty(), "delivered once");
}

#[tokio::test]
async fn one_endpoint_gets_its_deliveries_one_at_a_time_in_order() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let a = org(pool).await;
    let slow = endpoint(pool, &ring, a).await;
    let events: Vec<Event> = [
        EventType::CurtailmentStarted,
        EventType::CurtailmentActive,
        EventType::CurtailmentRestoring,
    ]
    .into_iter()
    .map(event)
    .collect();
    for e in &events {
        hooks::enqueue(pool, a, e).await.unwrap();
    }
    let other = endpoint(pool, &ring, a).await;
    let other_event = event(EventType::CurtailmentCompleted);
    hooks::enqueue(pool, a, &other_event).await.unwrap();

    // Only each endpoint's head: the slow one's first, and the other's own.
    let first = claim(pool).await;
    let mut heads: Vec<(EndpointId, String)> = first
        .iter()
        .map(|c| (c.endpoint_id, c.message_id.to_string()))
        .collect();
    heads.sort();
    let mut want = vec![
        (slow.id, events[0].id.to_string()),
        (other.id, other_event.id.to_string()),
    ];
    want.sort();
    assert_eq!(heads, want);
    let slow_head = first.iter().find(|c| c.endpoint_id == slow.id).unwrap();
    let other_head = first.iter().find(|c| c.endpoint_id == other.id).unwrap();
    assert_eq!(
        hooks::record(pool, other_head, &status(200)).await.unwrap(),
        Recorded::Delivered
    );

    // A failure waits out its backoff, and the endpoint's later deliveries wait behind it.
    let before = Utc::now();
    let Recorded::Retry { at } = hooks::record(pool, slow_head, &status(500)).await.unwrap() else {
        panic!("a 500 is retried");
    };
    let wait = (at - before).to_std().unwrap();
    assert!(
        (Duration::from_millis(4000)..=Duration::from_millis(6000)).contains(&wait),
        "{wait:?}"
    );
    assert!(
        claim(pool).await.is_empty(),
        "the head is backing off and the rest wait"
    );

    let mut sent = Vec::new();
    for _ in 0..3 {
        fast_forward(pool).await;
        let got = claim(pool).await;
        assert_eq!(got.len(), 1, "{got:?}");
        sent.push(got[0].message_id.to_string());
        assert!(claim(pool).await.is_empty(), "one in flight per endpoint");
        assert_eq!(
            hooks::record(pool, &got[0], &status(200)).await.unwrap(),
            Recorded::Delivered
        );
    }
    let want: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(sent, want);
}

#[tokio::test]
async fn gone_disables_the_endpoint_at_once() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let a = org(pool).await;
    let e = endpoint(pool, &ring, a).await;
    hooks::enqueue(pool, a, &event(EventType::CurtailmentStarted))
        .await
        .unwrap();
    hooks::enqueue(pool, a, &event(EventType::CurtailmentActive))
        .await
        .unwrap();

    let got = claim(pool).await;
    assert_eq!(
        hooks::record(pool, &got[0], &status(410)).await.unwrap(),
        Recorded::EndpointDisabled {
            reason: DisabledReason::Gone
        }
    );
    let disabled = hooks::get_endpoint(pool, a, e.id).await.unwrap();
    assert_eq!(disabled.disabled.unwrap().reason, DisabledReason::Gone);
    let log = hooks::list_deliveries(pool, a, e.id, None, 10)
        .await
        .unwrap();
    assert_eq!(log.rows[1].state, DeliveryState::Failed);
    assert_eq!(log.rows[1].last_status, Some(410));
    assert_eq!(log.rows[0].state, DeliveryState::Pending);
    // Nothing more goes out or is queued while it is disabled.
    fast_forward(pool).await;
    assert!(claim(pool).await.is_empty());
    assert_eq!(
        hooks::enqueue(pool, a, &event(EventType::CurtailmentRestoring))
            .await
            .unwrap(),
        0
    );
    // Enabled again, it resumes with what was pending.
    hooks::update_endpoint(
        pool,
        a,
        e.id,
        &EndpointPatch {
            enablement: Some(Enablement::Enable),
            ..EndpointPatch::default()
        },
    )
    .await
    .unwrap();
    let resumed = claim(pool).await;
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].message_id.to_string(), log.rows[0].message_id);
}

#[tokio::test]
async fn an_exhausted_schedule_fails_the_delivery_and_disables_the_endpoint() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let a = org(pool).await;
    let e = endpoint(pool, &ring, a).await;
    hooks::enqueue(pool, a, &event(EventType::CurtailmentStarted))
        .await
        .unwrap();

    // Nine attempts failed before; the tenth is the schedule's last.
    sqlx::query("UPDATE webhook_delivery SET attempts = 9")
        .execute(pool)
        .await
        .unwrap();
    let got = claim(pool).await;
    assert_eq!(got[0].attempts, ebb_webhooks::retry::MAX_ATTEMPTS);
    let timeout = Attempt {
        status: None,
        error: Some("request timed out after 15 s".to_owned()),
        timings: PhaseTimings {
            connect: Some(Duration::from_millis(12)),
            tls: Some(Duration::from_millis(30)),
            first_byte: None,
        },
        body: None,
    };
    assert_eq!(
        hooks::record(pool, &got[0], &timeout).await.unwrap(),
        Recorded::EndpointDisabled {
            reason: DisabledReason::Failing
        }
    );
    let endpoint = hooks::get_endpoint(pool, a, e.id).await.unwrap();
    assert_eq!(endpoint.disabled.unwrap().reason, DisabledReason::Failing);
    let row = &hooks::list_deliveries(pool, a, e.id, None, 1)
        .await
        .unwrap()
        .rows[0];
    assert_eq!(row.state, DeliveryState::Failed);
    assert_eq!(row.last_status, None);
    assert_eq!(
        row.last_error.as_deref(),
        Some("request timed out after 15 s")
    );
    assert_eq!(
        row.timings, timeout.timings,
        "phases that completed, and only those"
    );
}

#[tokio::test]
async fn an_attempt_records_its_phases_and_a_capped_body() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let a = org(pool).await;
    let e = endpoint(pool, &ring, a).await;
    hooks::enqueue(pool, a, &event(EventType::CurtailmentStarted))
        .await
        .unwrap();
    let got = claim(pool).await;
    let big = vec![b'e'; 10_000];
    let attempt = Attempt {
        status: Some(503),
        error: None,
        timings: PhaseTimings {
            connect: Some(Duration::from_millis(2)),
            tls: None,
            first_byte: Some(Duration::from_millis(40)),
        },
        body: Some(CappedBody::capture(&big)),
    };
    assert!(matches!(
        hooks::record(pool, &got[0], &attempt).await.unwrap(),
        Recorded::Retry { .. }
    ));
    let row = &hooks::list_deliveries(pool, a, e.id, None, 1)
        .await
        .unwrap()
        .rows[0];
    assert_eq!(row.state, DeliveryState::Pending);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_status, Some(503));
    assert_eq!(row.timings, attempt.timings);
    assert_eq!(row.response_body.as_deref(), Some(&big[..4096]));
    assert!(row.response_truncated);
    assert_eq!(row.response_length, Some(10_000));
    assert!(row.last_attempt_at.is_some());
    assert!(row.next_attempt_at > Utc::now());
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_during_the_grace_then_only_the_new_one() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let a = org(pool).await;
    let (e, old) =
        hooks::create_endpoint(pool, &ring, a, &new_endpoint("https://r.example/h", None))
            .await
            .unwrap();
    let new = hooks::rotate_secret(pool, &ring, a, e.id, Duration::from_millis(800))
        .await
        .unwrap();
    assert_ne!(new, old);

    let open = |secrets: &[hooks::StoredSecret]| {
        secrets
            .iter()
            .map(|s| s.open(&ring).unwrap())
            .collect::<Vec<_>>()
    };
    let valid = hooks::valid_secrets(pool, a, e.id).await.unwrap();
    assert_eq!(open(&valid), [new.clone(), old.clone()], "current first");
    assert!(valid[0].expires_at.is_none() && valid[1].expires_at.is_some());
    // A delivery claimed during the grace carries both, to sign with both.
    hooks::enqueue(pool, a, &event(EventType::CurtailmentStarted))
        .await
        .unwrap();
    let got = claim(pool).await;
    assert_eq!(open(&got[0].secrets), [new.clone(), old.clone()]);
    hooks::record(pool, &got[0], &status(200)).await.unwrap();

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        open(&hooks::valid_secrets(pool, a, e.id).await.unwrap()),
        std::slice::from_ref(&new)
    );
    hooks::enqueue(pool, a, &event(EventType::CurtailmentActive))
        .await
        .unwrap();
    assert_eq!(
        open(&claim(pool).await[0].secrets),
        std::slice::from_ref(&new)
    );

    // Without a grace the old secret stops at once; expired rows are tidied away.
    let newest = hooks::rotate_secret(pool, &ring, a, e.id, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        open(&hooks::valid_secrets(pool, a, e.id).await.unwrap()),
        [newest]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_secret")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        rows, 2,
        "the secret whose grace ended before this rotation is deleted"
    );
}

#[tokio::test]
async fn secrets_are_resealed_under_the_current_key() {
    let db = migrated().await;
    let pool = db.pool();
    let old_entry = Keyring::generate_entry("k1").unwrap();
    let old = Keyring::parse(&old_entry).unwrap();
    let a = org(pool).await;
    let (e, secret) =
        hooks::create_endpoint(pool, &old, a, &new_endpoint("https://r.example/h", None))
            .await
            .unwrap();
    let new_entry = Keyring::generate_entry("k2").unwrap();
    let both = Keyring::parse(&format!("{new_entry},{old_entry}")).unwrap();
    assert_eq!(hooks::reseal_secrets(pool, &both, 100).await.unwrap(), 1);
    assert_eq!(hooks::reseal_secrets(pool, &both, 100).await.unwrap(), 0);
    let stored = hooks::valid_secrets(pool, a, e.id).await.unwrap();
    assert_eq!(stored[0].sealed.key_id, "k2");
    let new_only = Keyring::parse(&new_entry).unwrap();
    assert_eq!(stored[0].open(&new_only).unwrap(), secret);
    assert!(stored[0].open(&old).is_err());
}

#[tokio::test]
async fn the_log_pages_newest_first_and_redelivery_requeues_at_the_back() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let (a, b) = (org(pool).await, org(pool).await);
    let e = endpoint(pool, &ring, a).await;
    for _ in 0..5 {
        hooks::enqueue(pool, a, &event(EventType::UsageRated))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = hooks::list_deliveries(pool, a, e.id, cursor, 2)
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.rows.iter().map(|d| d.seq));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");

    // Deliver the first; redeliver it: pending again, from a fresh schedule, behind the others.
    let head = claim(pool).await.remove(0);
    hooks::record(pool, &head, &status(200)).await.unwrap();
    // A pending delivery is refused, another org's is not found; neither changes anything.
    let pending = hooks::list_deliveries(pool, a, e.id, None, 1)
        .await
        .unwrap()
        .rows[0]
        .clone();
    assert!(matches!(
        hooks::redeliver(pool, a, e.id, pending.id).await,
        Err(StoreError::RaceLost(_))
    ));
    assert!(matches!(
        hooks::redeliver(pool, b, e.id, head.id).await,
        Err(StoreError::NotFound)
    ));
    let again = hooks::redeliver(pool, a, e.id, head.id).await.unwrap();
    assert_eq!(again.state, DeliveryState::Pending);
    assert_eq!(again.attempts, 0);
    assert_eq!(again.delivered_at, None);
    assert!(
        again.seq > pending.seq,
        "at the back of the endpoint's queue"
    );
    let mut order = Vec::new();
    for _ in 0..5 {
        let got = claim(pool).await;
        assert_eq!(got.len(), 1);
        order.push(got[0].id);
        hooks::record(pool, &got[0], &status(200)).await.unwrap();
    }
    assert_eq!(order.last(), Some(&head.id));
}

#[tokio::test]
async fn a_released_claim_is_claimable_again_without_spending_an_attempt() {
    let db = migrated().await;
    let pool = db.pool();
    let ring = keyring();
    let a = org(pool).await;
    endpoint(pool, &ring, a).await;
    hooks::enqueue(pool, a, &event(EventType::CurtailmentStarted))
        .await
        .unwrap();
    let got = claim(pool).await;
    hooks::release(pool, &got[0]).await.unwrap();
    let again = claim(pool).await;
    assert_eq!(again[0].id, got[0].id);
    assert_eq!(again[0].attempts, 1);
}

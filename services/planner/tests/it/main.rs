//! Planner behaviour against a real PostgreSQL (and nats-server for the service wiring):
//! previews and refused starts write nothing, starts are idempotent, privileges are enforced.

use ebb_bus::{Actor, Role, RpcErrorKind, Scope, StartRequest, StopRequest};
use ebb_domain::selection::Mode;
use ebb_domain::{DeviceId, Kw, OrgId, SiteCode};
use ebb_planner::{Planner, PlannerConfig};
use ebb_testkit::TestDb;
use ebb_testkit::world::World;
use std::sync::Arc;

struct Fixture {
    db: TestDb,
    org: OrgId,
    planner: Planner,
    /// Least efficient first: miner `i` hashes at 80 + i TH/s on 3 kW.
    devices: Vec<DeviceId>,
}

/// An org with one site of `n` hashing miners (3 kW each, efficiency spread) with fresh telemetry.
async fn fixture(n: usize) -> Fixture {
    let db = TestDb::new().await.unwrap();
    let world = World::builder()
        .site("site-a", |s| {
            s.miners(n)
                .watts(3000.0)
                .hashing()
                .hashrate_each(|i| 80.0 + i as f64)
        })
        .build(&db)
        .await
        .unwrap();
    let planner = Planner::new(db.pool().clone(), PlannerConfig::default());
    Fixture {
        org: world.org,
        devices: world.site("site-a").devices.clone(),
        db,
        planner,
    }
}

fn req(f: &Fixture, role: Role, kw: f64) -> StartRequest {
    StartRequest {
        org: f.org,
        actor: Actor::ApiKey {
            key_id: uuid::Uuid::nil(),
            role,
        },
        mode: Mode::Kw {
            target_kw: Kw::new(kw).unwrap(),
        },
        scope: Scope::default(),
        reason: "grid event".into(),
        priority: 0,
        idempotency_key: None,
        external_source: None,
        external_reference: None,
        max_duration_s: None,
        allow_unbounded: false,
        restore_batch_size: None,
        restore_batch_interval_s: None,
        force_include_maintenance: false,
        min_power_w_override: None,
    }
}

/// Row counts of every table a start or stop may write.
async fn written(db: &TestDb) -> Vec<i64> {
    let mut out = Vec::new();
    for t in [
        "curtailment_event",
        "curtailment_target",
        "event_transition",
        "audit_log",
        "outbox",
    ] {
        out.push(
            sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
                .fetch_one(db.pool())
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn preview_writes_nothing_and_matches_start() {
    let f = fixture(5).await;
    let view = f
        .planner
        .preview(&req(&f, Role::Viewer, 7.0))
        .await
        .unwrap();
    assert_eq!(view.selected_count, 3);
    assert_eq!(view.per_site["site-a"].devices, 3);
    assert_eq!(written(&f.db).await, vec![0, 0, 0, 0, 0]);
    let started = f
        .planner
        .start(&req(&f, Role::Operator, 7.0))
        .await
        .unwrap();
    let targets = ebb_store::events::targets(f.db.pool(), started.event_id)
        .await
        .unwrap();
    assert_eq!(targets.len(), 3);
    // Least efficient first: the three lowest hashrates at equal power.
    let mut chosen: Vec<DeviceId> = targets.iter().map(|t| t.device_id).collect();
    chosen.sort();
    let mut want = f.devices[0..3].to_vec();
    want.sort();
    assert_eq!(chosen, want);
}

#[tokio::test]
async fn a_start_that_cannot_proceed_persists_nothing() {
    let f = fixture(2).await;
    let err = f
        .planner
        .start(&req(&f, Role::Operator, 100.0))
        .await
        .unwrap_err();
    assert_eq!(err.kind, RpcErrorKind::InsufficientLoad);
    assert_eq!(err.detail["available_kw"], 6.0);
    let bad = StartRequest {
        reason: " ".into(),
        ..req(&f, Role::Operator, 1.0)
    };
    assert_eq!(
        f.planner.start(&bad).await.unwrap_err().field.as_deref(),
        Some("reason")
    );
    let scope = StartRequest {
        scope: Scope {
            sites: vec![SiteCode::parse("nope").unwrap()],
        },
        ..req(&f, Role::Operator, 1.0)
    };
    assert_eq!(
        f.planner.start(&scope).await.unwrap_err().field.as_deref(),
        Some("scope.sites")
    );
    let viewer = f
        .planner
        .start(&req(&f, Role::Viewer, 1.0))
        .await
        .unwrap_err();
    assert_eq!(viewer.kind, RpcErrorKind::PermissionDenied);
    assert_eq!(written(&f.db).await, vec![0, 0, 0, 0, 0]);
}

#[tokio::test]
async fn start_is_idempotent_on_key_and_external_reference() {
    let f = fixture(6).await;
    let keyed = StartRequest {
        idempotency_key: Some("k1".into()),
        ..req(&f, Role::Operator, 3.0)
    };
    let first = f.planner.start(&keyed).await.unwrap();
    assert!(!first.replayed);
    // A retry with other fields returns the persisted event, never a re-run selection.
    let retry = StartRequest {
        mode: Mode::Kw {
            target_kw: Kw::new(9.0).unwrap(),
        },
        ..keyed.clone()
    };
    let again = f.planner.start(&retry).await.unwrap();
    assert_eq!((again.event_id, again.replayed), (first.event_id, true));
    let ext = StartRequest {
        external_source: Some("ercot".into()),
        external_reference: Some("r-1".into()),
        ..req(&f, Role::Operator, 3.0)
    };
    let e1 = f.planner.start(&ext).await.unwrap();
    let e2 = f.planner.start(&ext).await.unwrap();
    assert_eq!((e2.event_id, e2.replayed), (e1.event_id, true));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM curtailment_event")
        .fetch_one(f.db.pool())
        .await
        .unwrap();
    assert_eq!(events, 2);
    let audits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'curtailment_started'")
            .fetch_one(f.db.pool())
            .await
            .unwrap();
    assert_eq!(audits, 2, "a replay writes no audit row");
}

#[tokio::test]
async fn concurrent_duplicates_converge_on_one_event() {
    let f = Arc::new(fixture(10).await);
    let keyed = StartRequest {
        idempotency_key: Some("same".into()),
        ..req(&f, Role::Operator, 3.0)
    };
    let mut handles = Vec::new();
    for _ in 0..8 {
        let (f, r) = (f.clone(), keyed.clone());
        handles.push(tokio::spawn(async move { f.planner.start(&r).await }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap().unwrap().event_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM curtailment_event")
        .fetch_one(f.db.pool())
        .await
        .unwrap();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn concurrent_starts_split_the_fleet() {
    // Two different starts race for the same least-efficient miners: the loser re-selects.
    let f = Arc::new(fixture(4).await);
    let (ra, rb) = (req(&f, Role::Operator, 5.0), req(&f, Role::Operator, 5.0));
    let (a, b) = tokio::join!(f.planner.start(&ra), f.planner.start(&rb));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.event_id, b.event_id);
    let targets: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT device_id) FROM curtailment_target")
            .fetch_one(f.db.pool())
            .await
            .unwrap();
    assert_eq!(targets, 4);
}

#[tokio::test]
async fn stop_is_idempotent() {
    let f = fixture(2).await;
    let id = f
        .planner
        .start(&req(&f, Role::Operator, 1.0))
        .await
        .unwrap()
        .event_id;
    let stop = StopRequest {
        org: f.org,
        actor: Actor::ApiKey {
            key_id: uuid::Uuid::nil(),
            role: Role::Operator,
        },
        event_id: id,
        reason: Some("done".into()),
    };
    assert!(f.planner.stop(&stop).await.unwrap().changed);
    assert!(!f.planner.stop(&stop).await.unwrap().changed);
    let other_org = StopRequest {
        org: OrgId::new(),
        ..stop.clone()
    };
    assert_eq!(
        f.planner.stop(&other_org).await.unwrap_err().kind,
        RpcErrorKind::NotFound
    );
}

#[tokio::test]
async fn served_over_nats() {
    let f = fixture(2).await;
    let nats = ebb_testkit::NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(ebb_planner::serve(
        Arc::new(f.planner.clone()),
        client.clone(),
        stop.clone(),
    ));
    let timeout = std::time::Duration::from_secs(5);
    let mut view = None;
    for _ in 0..50 {
        match ebb_bus::rpc::call(
            &client,
            &(),
            Some(f.org),
            &ebb_bus::PreviewRequest(req(&f, Role::Viewer, 1.0)),
            timeout,
        )
        .await
        {
            Ok(v) => {
                view = Some(v);
                break;
            }
            Err(ebb_bus::rpc::CallError::NoResponders(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(view.unwrap().selected_count, 1);
    let err = ebb_bus::rpc::call(
        &client,
        &(),
        Some(f.org),
        &req(&f, Role::Operator, 99.0),
        timeout,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ebb_bus::rpc::CallError::Remote(e) if e.kind == RpcErrorKind::InsufficientLoad)
    );
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// DESIGN §5.1: terminate refuses while any miner may be curtailed or has a command in flight,
/// refuses a different terminal state, and echoes the same one.
#[tokio::test]
async fn terminate_refuses_while_anything_is_in_flight() {
    use ebb_bus::TerminateRequest;
    use ebb_domain::{BatchId, EventState, TargetState};
    use ebb_store::events::{self, Retry};
    let f = fixture(2).await;
    let id = f
        .planner
        .start(&req(&f, Role::Operator, 4.0))
        .await
        .unwrap()
        .event_id;
    let admin = Actor::ApiKey {
        key_id: uuid::Uuid::nil(),
        role: Role::Admin,
    };
    let term = TerminateRequest {
        org: f.org,
        actor: admin.clone(),
        event_id: id,
        target_state: EventState::Cancelled,
        reason: "wrong site".into(),
    };
    let op = TerminateRequest {
        actor: Actor::ApiKey {
            key_id: uuid::Uuid::nil(),
            role: Role::Operator,
        },
        ..term.clone()
    };
    assert_eq!(
        f.planner.terminate(&op).await.unwrap_err().kind,
        RpcErrorKind::PermissionDenied
    );

    // One target stamped dispatching: a command may be in flight.
    let mut conn = f.db.pool().acquire().await.unwrap();
    events::stamp_dispatching(
        &mut conn,
        id,
        &f.devices[..1],
        TargetState::Pending,
        TargetState::Dispatching,
        BatchId::new(),
        Retry::Keep,
        "t",
    )
    .await
    .unwrap();
    drop(conn);
    let err = f.planner.terminate(&term).await.unwrap_err();
    assert_eq!(err.kind, RpcErrorKind::FailedPrecondition, "{err:?}");
    assert!(err.message.contains("stop"), "{}", err.message);

    // Back in the queue after an attempt: it may have been touched, still refused.
    ebb_store::events::transition_targets(
        f.db.pool(),
        id,
        &f.devices[..1],
        TargetState::Dispatching,
        TargetState::Pending,
        &Default::default(),
        "t",
    )
    .await
    .unwrap();
    assert_eq!(
        f.planner.terminate(&term).await.unwrap_err().kind,
        RpcErrorKind::FailedPrecondition
    );

    // A fresh event with nothing sent can be cancelled; its targets end restored.
    let f2 = fixture(2).await;
    let id2 = f2
        .planner
        .start(&req(&f2, Role::Operator, 4.0))
        .await
        .unwrap()
        .event_id;
    let t2 = TerminateRequest {
        org: f2.org,
        event_id: id2,
        ..term.clone()
    };
    assert!(f2.planner.terminate(&t2).await.unwrap().changed);
    assert!(
        !f2.planner.terminate(&t2).await.unwrap().changed,
        "same state again echoes"
    );
    let other = TerminateRequest {
        target_state: EventState::Failed,
        ..t2
    };
    assert_eq!(
        f2.planner.terminate(&other).await.unwrap_err().kind,
        RpcErrorKind::FailedPrecondition
    );
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM curtailment_target WHERE event_id = $1")
            .bind(id2.0)
            .fetch_all(f2.db.pool())
            .await
            .unwrap();
    assert!(states.iter().all(|s| s == "restored"), "{states:?}");
}

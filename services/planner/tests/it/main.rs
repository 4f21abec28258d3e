//! Planner behaviour against a real PostgreSQL (and nats-server for the service wiring):
//! previews and refused starts write nothing, starts are idempotent (the replay lookup first, the
//! key before the reference), concurrent starts never share a miner, privileges are enforced,
//! and terminate waits until nothing may still be curtailed or in flight.

use ebb_bus::{Actor, Role, RpcErrorKind, Scope, StartRequest, StopRequest};
use ebb_domain::selection::Mode;
use ebb_domain::selection::Selected;
use ebb_domain::{CommandKind, CurtailLevel, EventId};
use ebb_domain::{DeviceId, Kw, OrgId, SiteCode, SiteId};
use ebb_planner::{Planner, PlannerConfig};
use ebb_store::events::{self, NewEvent};
use ebb_testkit::TestDb;
use ebb_testkit::world::World;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Fixture {
    db: TestDb,
    org: OrgId,
    planner: Planner,
    site: SiteId,
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
    let site = world.site("site-a");
    Fixture {
        org: world.org,
        site: site.site.id,
        devices: site.devices.clone(),
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

/// Issue 8: a transition is announced in its own transaction, once for the feed (an outbox row
/// carrying the event as the API shows it) and once per webhook endpoint that wants its type,
/// under the same message id; an endpoint that wants other types gets nothing.
#[tokio::test]
async fn a_start_queues_its_feed_message_and_its_webhook_deliveries_with_it() {
    use ebb_store::webhooks::{self, NewEndpoint};
    use ebb_webhooks::endpoint::{Description, EventFilter};
    use ebb_webhooks::ssrf::WebhookUrl;
    let f = fixture(3).await;
    let ring =
        ebb_webhooks::Keyring::parse(&ebb_webhooks::Keyring::generate_entry("k").unwrap()).unwrap();
    let endpoint = |types: &[&str]| NewEndpoint {
        url: WebhookUrl::parse("https://receiver.example/hooks").unwrap(),
        event_types: EventFilter::parse(Some(types)).unwrap(),
        description: Description::new("test").unwrap(),
    };
    let (wants, _) = webhooks::create_endpoint(
        f.db.pool(),
        &ring,
        f.org,
        &endpoint(&["ebb.curtailment.started"]),
    )
    .await
    .unwrap();
    webhooks::create_endpoint(f.db.pool(), &ring, f.org, &endpoint(&["ebb.usage.rated"]))
        .await
        .unwrap();
    let started = f
        .planner
        .start(&req(&f, Role::Operator, 3.0))
        .await
        .unwrap();

    let (outbox_id, payload): (uuid::Uuid, Vec<u8>) =
        sqlx::query_as("SELECT id, payload FROM outbox")
            .fetch_one(f.db.pool())
            .await
            .unwrap();
    let notice: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let data = &notice["data"];
    assert_eq!(data["id"], started.event_id.0.to_string());
    assert_eq!(data["state"], "pending");
    assert_eq!(data["targets"]["pending"], 1, "{data}");
    let rows: Vec<(uuid::Uuid, String, String, String)> =
        sqlx::query_as("SELECT endpoint_id, message_id, event_type, payload FROM webhook_delivery")
            .fetch_all(f.db.pool())
            .await
            .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "only the endpoint that wants starts: {rows:?}"
    );
    let (to, message, kind, body) = &rows[0];
    assert_eq!(*to, wants.id.0);
    assert_eq!(*message, outbox_id.to_string(), "the feed's id");
    assert_eq!(kind, "ebb.curtailment.started");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["type"], "ebb.curtailment.started");
    assert_eq!(&body["data"], data, "the same data as the feed");
}

/// Starts are counted by mode, and the devices left out by why (issue 10).
#[tokio::test]
async fn starts_and_exclusions_are_counted() {
    use ebb_testkit::metrics::{counter, recorder};
    recorder();
    let f = fixture(5).await;
    sqlx::query("UPDATE device SET maintenance = true WHERE id = $1")
        .bind(f.devices[0].0)
        .execute(f.db.pool())
        .await
        .unwrap();
    f.planner
        .start(&req(&f, Role::Operator, 3.0))
        .await
        .unwrap();
    assert_eq!(counter("ebb_planner_starts_total{mode=kw}"), 1);
    assert_eq!(
        counter("ebb_planner_candidates_excluded_total{reason=maintenance}"),
        1
    );
    // A preview starts nothing.
    f.planner
        .preview(&req(&f, Role::Viewer, 3.0))
        .await
        .unwrap();
    assert_eq!(counter("ebb_planner_starts_total"), 1);
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

/// DESIGN §5.8: a replay returns the persisted event and never runs selection again. Here a
/// selection could not succeed any more (every miner is busy in the very events being replayed),
/// so only the lookup before selection can answer; the unique indexes would replay a retry only
/// if it got as far as the insert.
#[tokio::test]
async fn a_replay_is_answered_before_selection() {
    let f = fixture(4).await;
    let keyed = StartRequest {
        idempotency_key: Some("k1".into()),
        ..req(&f, Role::Operator, 6.0)
    };
    let referenced = StartRequest {
        external_source: Some("ercot".into()),
        external_reference: Some("r-1".into()),
        ..req(&f, Role::Operator, 6.0)
    };
    let k = f.planner.start(&keyed).await.unwrap();
    let r = f.planner.start(&referenced).await.unwrap();
    assert_ne!(k.event_id, r.event_id);
    // Every miner is in one of the two events: a fresh selection finds nothing to shed.
    let fresh = f
        .planner
        .start(&req(&f, Role::Operator, 3.0))
        .await
        .unwrap_err();
    assert_eq!(fresh.kind, RpcErrorKind::InsufficientLoad, "{fresh:?}");
    let before = written(&f.db).await;
    for (retry, first) in [(&keyed, &k), (&referenced, &r)] {
        let again = f.planner.start(retry).await.unwrap();
        assert_eq!((again.event_id, again.replayed), (first.event_id, true));
    }
    assert_eq!(written(&f.db).await, before, "a replay writes nothing");
}

/// DESIGN §5.8: the idempotency key is checked first. A request whose key names one event and
/// whose external reference names another gets the key's event.
#[tokio::test]
async fn the_key_takes_precedence_over_the_reference() {
    let f = fixture(4).await;
    let both = |key: &str, reference: &str| StartRequest {
        idempotency_key: Some(key.into()),
        external_source: Some("ercot".into()),
        external_reference: Some(reference.into()),
        ..req(&f, Role::Operator, 3.0)
    };
    let e1 = f.planner.start(&both("k1", "r1")).await.unwrap();
    let e2 = f.planner.start(&both("k2", "r2")).await.unwrap();
    assert_ne!(e1.event_id, e2.event_id);
    let before = written(&f.db).await;
    for (key, reference, want) in [("k1", "r2", e1.event_id), ("k2", "r1", e2.event_id)] {
        let got = f.planner.start(&both(key, reference)).await.unwrap();
        assert_eq!(
            (got.event_id, got.replayed),
            (want, true),
            "key {key} with reference {reference}"
        );
    }
    assert_eq!(written(&f.db).await, before, "a replay writes nothing");
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

/// A rival event on `devices`, inserted by the store in `tx` and left uncommitted.
async fn claim_uncommitted(
    f: &Fixture,
    tx: &mut sqlx::PgConnection,
    devices: &[DeviceId],
) -> EventId {
    let new = NewEvent {
        id: EventId::new(),
        org_id: f.org,
        mode: "kw".into(),
        mode_params: serde_json::json!({"mode": "kw", "target_kw": 6.0}),
        command: CommandKind::Curtail {
            level: CurtailLevel::Full,
        },
        scope: serde_json::json!({"sites": []}),
        priority: 0,
        reason: "rival".into(),
        target_kw: Some(6.0),
        selection: serde_json::json!({}),
        restore_batch_size: 10,
        restore_batch_interval_s: 30,
        max_duration_s: Some(3600),
        idempotency_key: None,
        external_source: None,
        external_reference: None,
        created_by: None,
        source_actor: "api_key".into(),
        traceparent: None,
    };
    let selected: Vec<Selected> = devices
        .iter()
        .map(|d| Selected {
            device_id: *d,
            site_id: f.site,
            baseline_power_w: 3000.0,
            efficiency_j_per_th: 37.5,
            shed_w: 3000.0,
        })
        .collect();
    events::insert_event(tx, &new, &selected).await.unwrap().id
}

/// The devices of an event's targets, sorted.
async fn event_devices(f: &Fixture, id: EventId) -> Vec<DeviceId> {
    let mut d: Vec<DeviceId> = events::targets(f.db.pool(), id)
        .await
        .unwrap()
        .iter()
        .map(|t| t.device_id)
        .collect();
    d.sort();
    d
}

/// DESIGN §5.7: a Start whose miners are claimed by a concurrent Start selects again. The race is
/// forced rather than hoped for: a rival claims the two least efficient miners in a transaction
/// it keeps open, the Start (which cannot see the claim) chooses the same two and waits on the
/// exclusivity index, and only then does the rival commit, so the Start's insert always loses.
#[tokio::test]
async fn concurrent_starts_split_the_fleet() {
    let f = Arc::new(fixture(4).await);
    let mut rival = f.db.pool().begin().await.unwrap();
    let a = claim_uncommitted(&f, &mut rival, &f.devices[0..2]).await;
    let start = tokio::spawn({
        let f = f.clone();
        async move { f.planner.start(&req(&f, Role::Operator, 5.0)).await }
    });
    // Waiting for a state, not for a time: the Start's insert blocks on the rival's claim.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(f.db.pool())
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            !start.is_finished(),
            "the start ended before meeting the rival's claim"
        );
        assert!(
            Instant::now() < deadline,
            "the start never waited on the rival's claim"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rival.commit().await.unwrap();
    let b = start.await.unwrap().unwrap();
    assert_ne!(a, b.event_id);
    assert!(!b.replayed);
    assert_eq!(event_devices(&f, a).await, sorted(&f.devices[0..2]));
    assert_eq!(
        event_devices(&f, b.event_id).await,
        sorted(&f.devices[2..4]),
        "the loser selected the next least efficient miners"
    );
    let targets: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT device_id) FROM curtailment_target")
            .fetch_one(f.db.pool())
            .await
            .unwrap();
    assert_eq!(targets, 4);
}

fn sorted(d: &[DeviceId]) -> Vec<DeviceId> {
    let mut d = d.to_vec();
    d.sort();
    d
}

/// DESIGN §5.7, whatever the interleaving: many Starts released at once, asking for more than the
/// fleet holds, never put a miner in two live events. Each either gets miners no other Start got
/// or fails cleanly (no load left, or claimed too often) and persists nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_never_share_a_miner() {
    const MINERS: usize = 12;
    const STARTS: usize = 8;
    let f = Arc::new(fixture(MINERS).await);
    let barrier = Arc::new(tokio::sync::Barrier::new(STARTS));
    let handles: Vec<_> = (0..STARTS)
        .map(|_| {
            let (f, barrier) = (f.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                // Two miners each: 16 wanted of 12.
                f.planner.start(&req(&f, Role::Operator, 5.0)).await
            })
        })
        .collect();
    let mut claimed: Vec<DeviceId> = Vec::new();
    let mut started: i64 = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(reply) => {
                assert!(!reply.replayed);
                let devices = event_devices(&f, reply.event_id).await;
                assert_eq!(devices.len(), 2, "a start gets what it asked for");
                claimed.extend(devices);
                started += 1;
            }
            Err(e) => assert!(
                matches!(
                    e.kind,
                    RpcErrorKind::InsufficientLoad | RpcErrorKind::Conflict
                ),
                "a start that loses fails cleanly: {e:?}"
            ),
        }
    }
    let distinct: std::collections::BTreeSet<_> = claimed.iter().collect();
    assert_eq!(distinct.len(), claimed.len(), "no miner in two events");
    assert!(claimed.len() <= MINERS);
    assert!(started >= 1, "somebody wins");
    let (events, targets): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM curtailment_event), (SELECT count(*) FROM curtailment_target)",
    )
    .fetch_one(f.db.pool())
    .await
    .unwrap();
    assert_eq!(
        (events, targets),
        (started, claimed.len() as i64),
        "a failed start persists nothing"
    );
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
        restore_batch_size_override: None,
        restore_batch_interval_s_override: None,
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

/// Issue 12, item 8: previews select from a live snapshot, read from the database once and
/// shared by concurrent requests, and fed by telemetry: a miner that telemetry (not the
/// database) says went offline is skipped by the next preview.
#[tokio::test]
async fn previews_share_a_snapshot_fed_by_telemetry() {
    ebb_testkit::metrics::recorder();
    let f = fixture(5).await;
    let planner = Arc::new(f.planner.clone());
    let nats = ebb_testkit::NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(ebb_planner::serve(
        planner.clone(),
        client.clone(),
        stop.clone(),
    ));
    // Eight previews at once: one read of the fleet between them.
    let previews: Vec<_> = (0..8)
        .map(|_| {
            let (p, r) = (planner.clone(), req(&f, Role::Viewer, 3.0));
            tokio::spawn(async move { p.preview(&r).await })
        })
        .collect();
    for p in previews {
        assert_eq!(p.await.unwrap().unwrap().selected_count, 1);
    }
    assert_eq!(planner.snapshot().builds(), 1);

    // Telemetry says miner 0 stopped answering; the database is not told.
    let offline = ebb_bus::TelemetryBatch {
        site: SiteCode::parse("site-a").unwrap(),
        cycle: 7,
        samples: vec![ebb_bus::TelemetrySample {
            device_id: f.devices[0],
            reachable: false,
            power_w: None,
            hashrate_ths: None,
            sampled_at_ms: chrono::Utc::now().timestamp_millis() + 1_000,
        }],
        dropped_invalid: 0,
    };
    let payload = ebb_bus::encode(&ebb_bus::Envelope::new(None, offline)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        client
            .publish("ebb.telemetry.site-a", payload.clone().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let view = planner.preview(&req(&f, Role::Viewer, 3.0)).await.unwrap();
        if view.skipped.get("offline") == Some(&1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "telemetry never reached the snapshot: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(planner.snapshot().builds(), 1, "fed, not read again");
    assert!(ebb_testkit::metrics::counter("ebb_planner_telemetry_samples_total") >= 1);
    let state: Option<bool> =
        sqlx::query_scalar("SELECT reachable FROM device_state WHERE device_id = $1")
            .bind(f.devices[0].0)
            .fetch_one(f.db.pool())
            .await
            .unwrap();
    assert_eq!(state, Some(true), "the database still says it answers");
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// DESIGN §3: a site of 50,000 registered devices loads its inventory over NATS, page by page,
/// through the same client the agent uses. One reply carrying them all would be ~5 MiB, five
/// times nats-server's 1 MiB max_payload.
#[tokio::test]
async fn a_site_of_50_000_devices_loads_its_inventory_over_nats() {
    const N: usize = 50_000;
    let db = TestDb::new().await.unwrap();
    let world = World::builder()
        .site("big", |s| s.miners(N))
        .build(&db)
        .await
        .unwrap();
    let planner = Planner::new(db.pool().clone(), PlannerConfig::default());
    let nats = ebb_testkit::NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    assert!(
        client.server_info().max_payload <= 1024 * 1024,
        "the test needs the default payload limit"
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(ebb_planner::serve(
        Arc::new(planner),
        client.clone(),
        stop.clone(),
    ));
    let site = SiteCode::parse("big").unwrap();
    let timeout = Duration::from_secs(10);
    let mut fetched = None;
    for _ in 0..100 {
        match ebb_bus::endpoints::fetch_inventory(&client, &site, timeout).await {
            Ok(d) => {
                fetched = Some(d);
                break;
            }
            Err(ebb_bus::rpc::CallError::NoResponders(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let fetched = fetched.expect("the planner never answered");
    assert_eq!(fetched.len(), N);
    let mut got: Vec<DeviceId> = fetched.iter().map(|d| d.device_id).collect();
    got.sort();
    got.dedup();
    let mut want = world.site("big").devices.clone();
    want.sort();
    assert_eq!(got, want, "every device exactly once");
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

/// DESIGN §5.1, the restore half: a target queued for restore, stamped or sent is a miner that may
/// still be curtailed, so terminate refuses a restoring event until every target has settled
/// (`restored` or `restore_failed`). Each state is reached through the store's own
/// compare-and-set, and at each check it is the only unsettled state in the event.
#[tokio::test]
async fn terminate_refuses_until_a_restore_has_settled() {
    use ebb_bus::TerminateRequest;
    use ebb_domain::{BatchId, EventState, TargetState};
    use ebb_store::events::{Retry, TargetChange};
    let f = fixture(2).await;
    let id = f
        .planner
        .start(&req(&f, Role::Operator, 6.0))
        .await
        .unwrap()
        .event_id;
    let admin = Actor::ApiKey {
        key_id: uuid::Uuid::nil(),
        role: Role::Admin,
    };
    let d = f.devices.clone();
    let pool = f.db.pool();
    let stamp = |from, to| {
        let d = d.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            let moved = events::stamp_dispatching(
                &mut conn,
                id,
                &d,
                from,
                to,
                BatchId::new(),
                Retry::Keep,
                "t",
            )
            .await
            .unwrap();
            assert_eq!(moved.len(), d.len(), "{from} -> {to}");
        }
    };
    let go = |devices: Vec<DeviceId>, from, to| async move {
        let moved =
            events::transition_targets(pool, id, &devices, from, to, &TargetChange::default(), "t")
                .await
                .unwrap();
        assert_eq!(moved.len(), devices.len(), "{from} -> {to}");
    };
    let states = || async move {
        let mut s: Vec<TargetState> = events::targets(pool, id)
            .await
            .unwrap()
            .iter()
            .map(|t| t.state)
            .collect();
        s.sort_by_key(|s| s.as_str());
        s
    };
    let term = TerminateRequest {
        org: f.org,
        actor: admin.clone(),
        event_id: id,
        target_state: EventState::Cancelled,
        reason: "stuck restore".into(),
    };
    let refused = |unsettled: TargetState| {
        let term = term.clone();
        let planner = f.planner.clone();
        async move {
            let err = match planner.terminate(&term).await {
                Ok(r) => panic!("terminate went through with a target {unsettled}: {r:?}"),
                Err(e) => e,
            };
            assert_eq!(
                err.kind,
                RpcErrorKind::FailedPrecondition,
                "with a target {unsettled}: {err:?}"
            );
            assert!(err.message.contains("stop"), "{}", err.message);
        }
    };

    // Curtailed and confirmed, then stopped: both miners are queued for restore.
    stamp(TargetState::Pending, TargetState::Dispatching).await;
    go(d.clone(), TargetState::Dispatching, TargetState::Dispatched).await;
    go(d.clone(), TargetState::Dispatched, TargetState::Confirmed).await;
    let stop = StopRequest {
        org: f.org,
        actor: admin.clone(),
        event_id: id,
        reason: Some("grid relief over".into()),
        restore_batch_size_override: None,
        restore_batch_interval_s_override: None,
    };
    assert!(f.planner.stop(&stop).await.unwrap().changed);
    assert_eq!(states().await, vec![TargetState::RestorePending; 2]);
    refused(TargetState::RestorePending).await;

    stamp(TargetState::RestorePending, TargetState::RestoreDispatching).await;
    assert_eq!(states().await, vec![TargetState::RestoreDispatching; 2]);
    refused(TargetState::RestoreDispatching).await;

    go(
        d.clone(),
        TargetState::RestoreDispatching,
        TargetState::RestoreDispatched,
    )
    .await;
    assert_eq!(states().await, vec![TargetState::RestoreDispatched; 2]);
    refused(TargetState::RestoreDispatched).await;

    // One settles; the other is still sent, so still refused.
    go(
        d[..1].to_vec(),
        TargetState::RestoreDispatched,
        TargetState::Restored,
    )
    .await;
    refused(TargetState::RestoreDispatched).await;

    // Both settled, one of them failed: an admin may now end the event.
    go(
        d[1..].to_vec(),
        TargetState::RestoreDispatched,
        TargetState::RestoreFailed,
    )
    .await;
    assert_eq!(
        events::get_event(pool, f.org, id)
            .await
            .unwrap()
            .unwrap()
            .state,
        EventState::Restoring
    );
    assert!(f.planner.terminate(&term).await.unwrap().changed);
    assert_eq!(
        events::get_event(pool, f.org, id)
            .await
            .unwrap()
            .unwrap()
            .state,
        EventState::Cancelled
    );
    assert_eq!(
        states().await,
        vec![TargetState::RestoreFailed, TargetState::Restored],
        "terminate leaves settled targets as they are"
    );
}

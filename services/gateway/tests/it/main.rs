//! The HTTP API through a real HTTP client, with the planner served over a real nats-server and a
//! real PostgreSQL database.

mod access;
mod curtailments;
mod fleet;
mod usage;
mod webhooks;

use chrono::{Duration, Utc};
use ebb_bus::Role;
use ebb_gateway::guard::GuardStats;
use ebb_gateway::{Gateway, GatewayConfig};
use ebb_planner::{Planner, PlannerConfig};
use ebb_testkit::api::assert_event_summary;
use ebb_testkit::world::{Key, World};
use ebb_testkit::{NatsServer, TestDb};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

struct App {
    db: TestDb,
    _nats: NatsServer,
    base: String,
    http: reqwest::Client,
    world: World,
    stop: CancellationToken,
    /// The gateway's counters: key lookups, requests rate-limited and shed.
    stats: Arc<GuardStats>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl App {
    /// The bearer token of the world's key with this name.
    fn key(&self, name: &str) -> String {
        self.world.key(name).token.clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value, String) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, r.json().await.unwrap_or(Value::Null), ct)
    }

    /// One series of the gateway's own `/metrics`, as it is written there.
    async fn metric(&self, series: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        ebb_testkit::metrics::value(&text, series)
            .unwrap_or_else(|| panic!("{series} is not in /metrics:\n{text}"))
    }

    async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
}

/// Gateway + planner over NATS, one site of 4 hashing miners at 3 kW. Besides the org-wide key of
/// each role, the world has an `expired` admin key, a `valid` viewer key that expires in an hour,
/// an operator key `limited` to site-a and one that reaches `nowhere`.
async fn spawn_app() -> App {
    spawn_app_with(GatewayConfig {
        planner_timeout_s: 5,
        ..GatewayConfig::default()
    })
    .await
}

/// [`spawn_app`] with these settings (but always on a free port), and a keyring for webhook
/// secrets.
async fn spawn_app_with(cfg: GatewayConfig) -> App {
    let ring =
        ebb_webhooks::Keyring::parse(&ebb_webhooks::Keyring::generate_entry("test").unwrap())
            .unwrap();
    spawn_app_keyed(cfg, Some(ring)).await
}

/// [`spawn_app_with`], with this keyring (`None`: webhooks off).
async fn spawn_app_keyed(cfg: GatewayConfig, keyring: Option<ebb_webhooks::Keyring>) -> App {
    let db = TestDb::new().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let world = World::builder()
        .site("site-a", |s| s.name("A").miners(4).watts(3000.0).hashing())
        .api_key(Key::new("expired", Role::Admin).expires_at(Utc::now() - Duration::seconds(1)))
        .api_key(Key::new("valid", Role::Viewer).expires_at(Utc::now() + Duration::hours(1)))
        .api_key(Key::new("limited", Role::Operator).sites(&["site-a"]))
        .api_key(Key::new("nowhere", Role::Operator).sites(&[]))
        .build(&db)
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let planner = Planner::new(db.pool().clone(), PlannerConfig::default());
    tokio::spawn(ebb_planner::serve(
        Arc::new(planner),
        nats.client().await.unwrap(),
        stop.clone(),
    ));
    let cfg = GatewayConfig {
        listen: "127.0.0.1:0".into(),
        ..cfg
    };
    let common = ebb_runtime::Common {
        database_url: db.url().into(),
        nats_url: nats.url().into(),
        db_connections: 4,
        ..ebb_runtime::Common::default()
    };
    let ctx = ebb_runtime::Context::connect(
        &common,
        ebb_runtime::Needs::DatabaseAndNats,
        "gateway-test",
        stop.clone(),
    )
    .await
    .unwrap();
    let gw = Gateway::build_with(&cfg, &ctx, keyring).await.unwrap();
    let stats = gw.stats();
    let base = format!("http://{}", gw.addr());
    tokio::spawn(gw.serve(stop.clone()));
    let app = App {
        db,
        _nats: nats,
        base,
        http: reqwest::Client::new(),
        world,
        stop,
        stats,
    };
    // The planner's service may take a moment to subscribe.
    let key = app.key("viewer");
    for _ in 0..100 {
        let (s, _, _) = app
            .post(
                &key,
                "/v1/curtailments:preview",
                json!({"mode":"kw","target_kw":1,"reason":"warm-up"}),
            )
            .await;
        // A test with a tight rate limit runs out on the viewer key: it uses other keys.
        if s == StatusCode::OK || s == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    let ok = |p: &str| app.http.get(app.url(p)).send();
    assert_eq!(ok("/healthz").await.unwrap().status(), StatusCode::OK);
    assert_eq!(ok("/readyz").await.unwrap().status(), StatusCode::OK);
    let m = ok("/metrics").await.unwrap();
    assert_eq!(m.status(), StatusCode::OK);
    // Every answer is counted by its route's pattern and status class, with HELP text.
    let key = app.key("viewer");
    let id = uuid::Uuid::now_v7();
    assert_eq!(
        app.get(&key, &format!("/v1/curtailments/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    let text = ok("/metrics").await.unwrap().text().await.unwrap();
    let counted = text.lines().any(|l| {
        l.starts_with("ebb_gateway_requests_total{")
            && l.contains(r#"route="/v1/curtailments/{id}""#)
            && l.contains(r#"status="4xx""#)
            && l.contains(r#"method="GET""#)
    });
    assert!(counted, "the 404 is counted by pattern:\n{text}");
    assert!(!text.contains(&id.to_string()), "no id in a label");
    assert!(
        text.contains("# HELP ebb_gateway_requests_total "),
        "{text}"
    );
    assert!(
        text.contains("ebb_gateway_request_seconds_bucket{"),
        "{text}"
    );
}

#[tokio::test]
async fn keys_are_checked() {
    let app = spawn_app().await;
    let expired = app.key("expired");
    let valid = app.key("valid");
    let r = app
        .http
        .get(app.url("/v1/curtailments"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // The valid key with its last hex digit changed (to one it is not).
    let last = if valid.ends_with('0') { '1' } else { '0' };
    let altered = format!("{}{last}", &valid[..valid.len() - 1]);
    for bad in ["nope", &expired, &altered] {
        assert_eq!(
            app.get(bad, "/v1/curtailments").await.0,
            StatusCode::UNAUTHORIZED,
            "{bad}"
        );
    }
    assert_eq!(app.get(&valid, "/v1/curtailments").await.0, StatusCode::OK);
    // A viewer cannot start.
    let (s, body, _) = app
        .post(
            &valid,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":1,"reason":"x"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn bad_input_names_the_field_and_changes_nothing() {
    let app = spawn_app().await;
    let key = app.key("operator");
    let cases = [
        (json!({"mode":"kw","reason":"x"}), "target_kw"),
        (
            json!({"mode":"kw","target_kw":-5,"reason":"x"}),
            "target_kw",
        ),
        (json!({"mode":"watts","reason":"x"}), "mode"),
        (json!({"mode":"kw","target_kw":1,"reason":"  "}), "reason"),
        (
            json!({"mode":"kw","target_kw":1,"reason":"x","scope":{"sites":["Bad Site"]}}),
            "scope.sites[0]",
        ),
        (
            json!({"mode":"kw","target_kw":1,"reason":"x","percent":5}),
            "percent",
        ),
        (
            json!({"mode":"kw","target_kw":1,"reason":"x","restore_batch_size":0}),
            "restore_batch_size",
        ),
    ];
    for (body, field) in cases {
        let (s, p, ct) = app.post(&key, "/v1/curtailments", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} → {p}");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(p["type"], "https://ebb.dev/problems/invalid-argument");
        assert_eq!(p["errors"][0]["field"], field, "{body} → {p}");
    }
    // Unknown fields and wrong types are refused too, with the field in the detail.
    let (s, p, _) = app
        .post(
            &key,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":"lots","reason":"x"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(p["detail"].as_str().unwrap().contains("target_kw"), "{p}");
    let (s, _, _) = app
        .post(
            &key,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":1,"reason":"x","bogus":1}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Privilege on the effective request.
    let (s, p, _) = app
        .post(
            &key,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":1,"reason":"x","allow_unbounded":true}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{p}");
    assert_eq!(p["errors"][0]["field"], "allow_unbounded");
    // Too much load: 422 with what was available, and nothing written.
    let (s, p, _) = app
        .post(
            &key,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":100,"reason":"x"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["available_kw"], 12.0);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM curtailment_event")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        app.get(&key, "/v1/curtailments/not-a-uuid").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get(&key, &format!("/v1/curtailments/{}", uuid::Uuid::now_v7()))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn start_replay_list_get_stop() {
    let app = spawn_app().await;
    let key = app.key("operator");
    let body = json!({"mode":"kw","target_kw":5,"reason":"grid event 1"});
    let send = |k: &'static str| {
        app.http
            .post(app.url("/v1/curtailments"))
            .bearer_auth(&key)
            .header("Idempotency-Key", k)
            .json(&body)
            .send()
    };
    let first = send("evt-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let ev: Value = first.json().await.unwrap();
    assert_eq!(ev["state"], "pending");
    assert_eq!(ev["targets"]["pending"], 2);
    assert_event_summary(&ev);
    let replay = send("evt-1").await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    let again: Value = replay.json().await.unwrap();
    assert_eq!(again["id"], ev["id"]);

    let id = ev["id"].as_str().unwrap();
    let (s, got) = app.get(&key, &format!("/v1/curtailments/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["selection"]["selected_count"], 2);
    assert_event_summary(&got);

    let (s, _, _) = app
        .post(
            &key,
            &format!("/v1/curtailments/{id}/stop"),
            json!({"reason":"over"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, got) = app.get(&key, &format!("/v1/curtailments/{id}")).await;
    assert_eq!(got["state"], "restoring");
    assert_eq!(got["stop_reason"], "over");

    // Pagination: 3 events, pages of 2, cursor bound to the filter.
    for i in 0..2 {
        app.post(
            &key,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":1,"reason":format!("e{i}")}),
        )
        .await;
    }
    let (_, page) = app.get(&key, "/v1/curtailments?page_size=2").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = app
        .get(
            &key,
            &format!("/v1/curtailments?page_size=2&cursor={cursor}"),
        )
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null());
    assert_eq!(
        app.get(
            &key,
            &format!("/v1/curtailments?state=active&cursor={cursor}")
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get(&key, "/v1/curtailments?page_size=201").await.0,
        StatusCode::BAD_REQUEST
    );
    // No per-target rows in lists: every item is the summary with counts.
    for item in [&page, &page2]
        .iter()
        .flat_map(|p| p["items"].as_array().unwrap())
    {
        assert_event_summary(item);
    }

    // Terminate is admin-only; this event never sent a command, so nothing is in flight.
    let (s, _, _) = app
        .post(
            &key,
            &format!("/v1/curtailments/{id}/terminate"),
            json!({"target_state":"cancelled","reason":"x"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let admin = app.key("admin");
    let (s, p, _) = app
        .post(
            &admin,
            &format!("/v1/curtailments/{id}/terminate"),
            json!({"target_state":"cancelled","reason":"x"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
}

#[tokio::test]
async fn site_limited_keys_see_and_touch_only_their_sites() {
    let app = spawn_app().await;
    let org_key = app.key("operator");
    let limited = app.key("limited");
    let nowhere = app.key("nowhere");

    // A key that reaches no site cannot curtail the whole org.
    let (s, _, _) = app
        .post(
            &nowhere,
            "/v1/curtailments",
            json!({"mode":"full","reason":"x"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = app
        .post(
            &limited,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":1,"reason":"x","scope":{"sites":["site-b"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // An org-wide event is invisible to the limited key; its own (scoped to its site) is visible.
    let (s, org_ev, _) = app
        .post(
            &org_key,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":1,"reason":"org"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let org_id = org_ev["id"].as_str().unwrap();
    assert_eq!(
        app.get(&limited, &format!("/v1/curtailments/{org_id}"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (s, _, _) = app
        .post(
            &limited,
            &format!("/v1/curtailments/{org_id}/stop"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, own, _) = app
        .post(
            &limited,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":1,"reason":"mine"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{own}");
    assert_eq!(own["scope"]["sites"], json!(["site-a"]));
    let (_, page) = app.get(&limited, "/v1/curtailments").await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![own["id"].as_str().unwrap()]);
}

/// The `i`-th well-formed token that belongs to no key.
fn unknown_token(i: usize) -> String {
    format!("ebb_{:012x}_{:064x}", 0xdead_0000_0000_u64 + i as u64, i)
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let app = spawn_app_with(GatewayConfig {
        rate_limit_per_s: 1,
        rate_limit_burst: 3,
        ..GatewayConfig::default()
    })
    .await;
    let (operator, admin) = (app.key("operator"), app.key("admin"));
    for _ in 0..3 {
        assert_eq!(
            app.get(&operator, "/v1/curtailments").await.0,
            StatusCode::OK
        );
    }
    let r = app
        .http
        .get(app.url("/v1/curtailments"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["retry-after"], "1");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://ebb.dev/problems/rate-limited");
    assert_eq!(p["status"], 429);
    // Another key is not held back by it.
    assert_eq!(app.get(&admin, "/v1/curtailments").await.0, StatusCode::OK);
    // A bad token repeated is limited the same way, before any lookup.
    let bad = unknown_token(0);
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(app.get(&bad, "/v1/curtailments").await.0);
    }
    assert_eq!(
        got,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // One operator request and two of the bad token's were limited.
    assert_eq!(app.metric("ebb_gateway_rate_limited_total").await, 3.0);
    // After Retry-After, the key is served again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        app.get(&operator, "/v1/curtailments").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_tokens_are_answered_from_the_cache_and_cannot_take_the_pool() {
    use std::sync::atomic::Ordering::Relaxed;
    // No rate limit to speak of: this is about lookups.
    let app = spawn_app_with(GatewayConfig {
        rate_limit_per_s: 100_000,
        rate_limit_burst: 100_000,
        ..GatewayConfig::default()
    })
    .await;
    let lookups = || app.stats.key_lookups.load(Relaxed);
    let flood = |tokens: Vec<String>| {
        let app = &app;
        futures::future::join_all(
            tokens
                .into_iter()
                .map(move |t| async move { app.get(&t, "/v1/curtailments").await.0 }),
        )
    };
    let valid = app.key("valid");
    let altered = format!(
        "{}{}",
        &valid[..valid.len() - 1],
        if valid.ends_with('0') { '1' } else { '0' }
    );

    // One unknown token and one wrong secret for a real key, 200 times each at once: one
    // lookup each.
    for token in [unknown_token(1), altered] {
        let before = lookups();
        let got = flood(vec![token.clone(); 200]).await;
        assert!(
            got.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
            "{got:?}"
        );
        assert_eq!(lookups() - before, 1, "{token}");
    }
    // A valid key is looked up once too, then served from the cache.
    let before = lookups();
    for _ in 0..5 {
        assert_eq!(app.get(&valid, "/v1/curtailments").await.0, StatusCode::OK);
    }
    assert_eq!(lookups() - before, 1);

    // 300 distinct bad tokens at once: every one is looked up, but never more than half the
    // pool's 4 connections at a time, and the valid key is served meanwhile.
    let before = lookups();
    let (got, served) = tokio::join!(
        flood((100..400).map(unknown_token).collect()),
        app.get(&valid, "/v1/curtailments")
    );
    assert!(
        got.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{got:?}"
    );
    assert_eq!(served.0, StatusCode::OK);
    assert_eq!(lookups() - before, 300);
    assert!(app.stats.max_lookups_in_flight.load(Relaxed) <= 2);
    // The metric counts what the gateway's own counter does.
    assert_eq!(
        app.metric("ebb_gateway_key_lookups_total").await,
        lookups() as f64
    );
}

#[tokio::test]
async fn a_start_the_planner_answers_too_late_is_504_and_its_retry_converges() {
    let app = spawn_app_with(GatewayConfig {
        planner_timeout_s: 1,
        ..GatewayConfig::default()
    })
    .await;
    let key = app.key("operator");
    let pool = app.db.pool();
    // The planner's insert waits behind this lock longer than the gateway waits for it.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE curtailment_event IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let start = |idem: &'static str| {
        app.http
            .post(app.url("/v1/curtailments"))
            .bearer_auth(&key)
            .header("Idempotency-Key", idem)
            .json(&json!({"mode":"kw","target_kw":3,"reason":"late"}))
            .send()
    };
    let r = start("late-1").await.unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r.headers().contains_key("retry-after"));
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://ebb.dev/problems/outcome-unknown");
    assert!(
        p["detail"].as_str().unwrap().contains("Idempotency-Key"),
        "{p}"
    );
    assert_eq!(app.metric("ebb_gateway_outcome_unknown_total").await, 1.0);

    // The planner is back: the Start it was given goes through after all.
    lock.rollback().await.unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM curtailment_event")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    for _ in 0..100 {
        if count().await == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(count().await, 1);
    // The client retries as told: it gets that event, and no second one is made.
    let r = start("late-1").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a replay, not a new event");
    let event: Value = r.json().await.unwrap();
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM curtailment_event")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(event["id"], id.to_string());
    assert_eq!(count().await, 1);
}

#[tokio::test]
async fn past_max_in_flight_a_request_is_shed_at_once_with_503() {
    let app = spawn_app_with(GatewayConfig {
        planner_timeout_s: 3,
        max_in_flight: 1,
        ..GatewayConfig::default()
    })
    .await;
    let key = app.key("operator");
    // A Start held up in the planner by this lock occupies the only slot.
    let mut lock = app.db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE curtailment_event IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let held = app
        .http
        .post(app.url("/v1/curtailments"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "held")
        .json(&json!({"mode":"kw","target_kw":3,"reason":"held"}))
        .send();
    let shed = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let t = std::time::Instant::now();
        let r = app
            .http
            .get(app.url("/v1/curtailments"))
            .bearer_auth(app.key("admin"))
            .send()
            .await
            .unwrap();
        let waited = t.elapsed();
        // Health is outside the limit: an overloaded gateway still answers it.
        let health = app.http.get(app.url("/healthz")).send().await.unwrap();
        lock.rollback().await.unwrap();
        (r, waited, health.status())
    };
    let (held, (r, waited, health)) = tokio::join!(held, shed);
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        waited < std::time::Duration::from_secs(1),
        "shed, not queued: {waited:?}"
    );
    assert_eq!(r.headers()["retry-after"], "1");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://ebb.dev/problems/overloaded");
    assert_eq!(health, StatusCode::OK);
    assert_eq!(held.unwrap().status(), StatusCode::CREATED);
    assert_eq!(app.metric("ebb_gateway_shed_total").await, 1.0);
    assert_eq!(app.get(&key, "/v1/curtailments").await.0, StatusCode::OK);
}

/// Issue 9: the OpenAPI 3.1 document is generated from the routes, every operation it lists is
/// served (an unauthenticated call is refused as such, never 404 or 405), and its problem type
/// is the closed list the gateway answers with.
#[tokio::test]
async fn the_openapi_document_lists_every_route_and_problem() {
    let app = spawn_app().await;
    let r = app
        .http
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /v1/keys/{id}",
            "DELETE /v1/webhooks/{id}",
            "GET /v1/audit",
            "GET /v1/curtailments",
            "GET /v1/curtailments/active",
            "GET /v1/curtailments/{id}",
            "GET /v1/curtailments/{id}/events",
            "GET /v1/curtailments/{id}/targets",
            "GET /v1/devices",
            "GET /v1/devices/{id}",
            "GET /v1/fleet/summary",
            "GET /v1/keys",
            "GET /v1/usage",
            "GET /v1/webhooks",
            "GET /v1/webhooks/{id}",
            "GET /v1/webhooks/{id}/deliveries",
            "PATCH /v1/curtailments/{id}",
            "PATCH /v1/devices/{id}",
            "PATCH /v1/webhooks/{id}",
            "POST /v1/curtailments",
            "POST /v1/curtailments/{id}/abort",
            "POST /v1/curtailments/{id}/stop",
            "POST /v1/curtailments/{id}/terminate",
            "POST /v1/curtailments:preview",
            "POST /v1/keys",
            "POST /v1/webhooks",
            "POST /v1/webhooks/{id}/deliveries/{delivery}/redeliver",
            "POST /v1/webhooks/{id}/rotate-secret",
            "PUT /v1/prices",
        ]
    );
    let id = uuid::Uuid::now_v7().to_string();
    for op in &operations {
        let (method, path) = op.split_once(' ').unwrap();
        let url = app.url(&path.replace("{id}", &id).replace("{delivery}", &id));
        let r = app
            .http
            .request(method.parse().unwrap(), url)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{op}");
        let op = &doc["paths"][path][method.to_lowercase()];
        assert_eq!(
            op["security"],
            Value::Null,
            "{path}: the document-wide bearer applies"
        );
        assert!(op["responses"]["401"].is_object(), "{path} documents 401");
    }
    assert_eq!(doc["security"][0]["bearer"], json!([]));
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Problem"]["properties"]["type"]["$ref"],
        "#/components/schemas/ProblemType"
    );
    let types: Vec<&str> = schemas["ProblemType"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", schemas["ProblemType"]))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for kind in ebb_gateway::problem::Kind::ALL {
        assert!(types.contains(&kind.describe().1), "{kind:?}");
    }
    assert_eq!(types.len(), ebb_gateway::problem::Kind::ALL.len());
}

//! Traces across every hop (issue 10): every service in one process, as `ebb dev` runs them,
//! exports its spans over OTLP/HTTP to an in-process receiver; one curtailment, from the HTTP
//! Start to `active`, is one trace holding gateway, planner, reconciler and agent spans (and the
//! worker's publish of the event's notices on the feed).
//!
//! Its own test binary: the tracer provider is process-wide, and installing it first is what
//! this test is about (nextest runs it alone, see .config/nextest.toml).

use axum::body::Bytes;
use ebb_bus::Role;
use ebb_domain::SiteCode;
use ebb_minersim::{FleetSpec, GroupSpec, Model, SimOptions, SiteSpec};
use ebb_natsauth::Identity;
use ebb_runtime::{Common, Context, Entry, Instances, Needs, Supervisor};
use ebb_testkit::world::World;
use ebb_testkit::{NatsServer, TestDb};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SITE: &str = "site-a";
const MINERS: u32 = 4;

/// One received span: its trace, name, `ebb.service` attribute, `event_id` attribute and the
/// resource's `service.name`.
#[derive(Clone, Debug)]
struct Got {
    trace_id: String,
    name: String,
    service: Option<String>,
    event_id: Option<String>,
    resource: Option<String>,
}

type Received = Arc<Mutex<Vec<Got>>>;

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        }
    })
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
async fn receiver(received: Received) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let received = received.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                let mut got = received.lock().unwrap();
                for rs in req.resource_spans {
                    let resource = rs
                        .resource
                        .as_ref()
                        .and_then(|r| text(&r.attributes, "service.name"));
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            got.push(Got {
                                trace_id: hex(&s.trace_id),
                                name: s.name.clone(),
                                service: text(&s.attributes, "ebb.service"),
                                event_id: text(&s.attributes, "event_id"),
                                resource: resource.clone(),
                            });
                        }
                    }
                }
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {within:?} waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_curtailment_is_one_trace_across_every_service() {
    let received = Received::default();
    let otlp = receiver(received.clone()).await;
    // Before anything else logs: the first subscriber installed is the one kept.
    ebb_obs::init_tracing_with(
        ebb_obs::LogFormat::Pretty,
        Some(ebb_obs::export::TraceExport {
            endpoint: format!("http://{otlp}/v1/traces"),
            protocol: ebb_obs::export::Protocol::HttpProtobuf,
            service_name: "ebb".into(),
        }),
    );

    let db = TestDb::new().await.unwrap();
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let group = GroupSpec {
        model: Model::S19Pro,
        count: MINERS,
        nominal_power_w: None,
        efficiency_j_per_th: None,
        spread_pct: 2.0,
    };
    let sim = ebb_minersim::start(
        FleetSpec {
            seed: 7,
            base_address: None,
            sites: vec![SiteSpec {
                name: SITE.into(),
                ambient_c: 25.0,
                groups: vec![group],
            }],
        },
        SimOptions {
            physics: ebb_minersim::Physics {
                ramp_down_s: 0.5,
                ramp_up_s: 0.5,
                ..Default::default()
            },
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let world = World::builder()
        .site(SITE, |s| s.ramp_limit(1_000.0))
        .build(&db)
        .await
        .unwrap();
    let sites: Vec<ebb_store::fleet::Site> = world.sites.iter().map(|s| s.site.clone()).collect();

    // NATS as `ebb dev` runs it: operator-mode auth over TLS, each service with its credentials.
    let nats_dir = tempfile::tempdir().unwrap();
    let hub = ebb::localhub::prepare(db.pool(), nats_dir.path(), world.org, &sites)
        .await
        .unwrap();
    let conf = hub
        .write_conf(&ebb::localhub::Local {
            listen: "127.0.0.1:-1",
            http: "127.0.0.1:-1",
            leaf: "127.0.0.1:-1",
            store: None,
            tls: &hub.tls,
        })
        .unwrap();
    let nats = NatsServer::builder()
        .arg("-c")
        .arg(&conf)
        .start()
        .await
        .unwrap();
    let nats_url = format!("tls://127.0.0.1:{}", nats.port());
    let as_identity = |identity: &Identity| Common {
        nats_url: nats_url.as_str().into(),
        nats_creds: hub.creds(identity).display().to_string(),
        nats_ca: hub.tls.ca.display().to_string(),
        ..Common::default()
    };
    let common = Common {
        database_url: db.url().into(),
        db_connections: 16,
        ..as_identity(&Identity::Ops)
    };
    let ctx = Context::connect(&common, Needs::DatabaseAndNats, "traces-test", stop.clone())
        .await
        .unwrap();
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let db_url = db.url().to_owned();
    let overrides = |entry: &Entry, site: Option<&SiteCode>| {
        let own = as_identity(&ebb::services::identity(entry, site));
        let mut s: Vec<(String, String)> = vec![
            ("nats_url".into(), own.nats_url.as_str().to_owned()),
            ("nats_creds".into(), own.nats_creds),
            ("nats_ca".into(), own.nats_ca),
        ];
        if entry.needs == Needs::DatabaseAndNats {
            s.push(("database_url".into(), db_url.clone()));
        }
        let mut set = |k: &str, v: &str| s.push((k.into(), v.into()));
        match entry.name {
            "gateway" => {
                set("listen", &listen.to_string());
                set("planner_timeout_s", "10");
            }
            "planner" => set("stale_after_s", "30"),
            "reconciler" => {
                set("tick_ms", "500");
                set("confirm_deadline_s", "30");
            }
            "agent" => {
                set("poll_interval", "1s");
                set("inventory_refresh", "2s");
            }
            _ => {}
        }
        if let Some(site) = site {
            set("site", site.as_str());
        }
        s
    };
    let codes = vec![SiteCode::parse(SITE).unwrap()];
    let mut services = Supervisor::new(&stop);
    ebb::services::spawn(&mut services, &ctx, Instances::One, &codes, &overrides)
        .await
        .unwrap();

    // The site's miners, identified and registered through the planner.
    let addrs: Vec<Ipv4Addr> = sim.miners().iter().map(|m| m.address).collect();
    let (first, last) = (
        addrs.iter().min().unwrap().octets(),
        addrs.iter().max().unwrap().octets(),
    );
    let range = format!(
        "{}.{}.{}.{}-{}",
        first[0], first[1], first[2], first[3], last[3]
    );
    let found = ebb_agent::scan(&range, &ebb_agent::ScanOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(found.devices.len(), addrs.len());
    let site = SiteCode::parse(SITE).unwrap();
    let client = ebb_runtime::context::connect_nats(
        &as_identity(&Identity::Agent(site.clone())),
        "traces-test-register",
    )
    .await
    .unwrap();
    let mut registered = 0;
    for _ in 0..50 {
        match ebb_agent::register(&client, &site, &found.devices, Duration::from_secs(5)).await {
            Ok(n) => {
                registered = n;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(registered as usize, addrs.len());
    ebb::services::spawn(&mut services, &ctx, Instances::PerSite, &codes, &overrides)
        .await
        .unwrap();
    wait_for(
        "telemetry from every miner",
        Duration::from_secs(60),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM device_state WHERE reachable AND hashrate_ths > 0",
            )
            .fetch_one(db.pool())
            .await
            .unwrap();
            n as usize == addrs.len()
        },
    )
    .await;

    // Start, then wait for `active`.
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", world.token(Role::Admin));
    let base = format!("http://{listen}");
    let r = http
        .post(format!("{base}/v1/curtailments"))
        .header("authorization", &auth)
        .json(&json!({"mode": "kw", "target_kw": 5, "reason": "traces test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ev: Value = r.json().await.unwrap();
    let id = ev["id"].as_str().unwrap().to_owned();
    wait_for("active", Duration::from_secs(60), || async {
        let v: Value = http
            .get(format!("{base}/v1/curtailments/{id}"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["state"] == "active"
    })
    .await;
    // The event keeps the Start request's trace context.
    let stored: Option<String> =
        sqlx::query_scalar("SELECT traceparent FROM curtailment_event WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(db.pool())
            .await
            .unwrap();
    let stored = stored.expect("the event stores its trace context");
    let trace_id = stored.split('-').nth(1).unwrap().to_owned();

    // Everything ended so far reaches the receiver.
    ebb_obs::flush_tracing();
    let wanted = ["gateway", "planner", "reconciler", "agent", "worker"];
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let got = received.lock().unwrap().clone();
        seen = got
            .iter()
            .filter(|g| g.trace_id == trace_id)
            .filter_map(|g| g.service.clone())
            .collect();
        if wanted.iter().all(|w| seen.contains(*w)) {
            break;
        }
        drop(got);
        tokio::time::sleep(Duration::from_millis(200)).await;
        ebb_obs::flush_tracing();
    }
    let got = received.lock().unwrap().clone();
    let in_trace: Vec<&Got> = got.iter().filter(|g| g.trace_id == trace_id).collect();
    let by_service: BTreeMap<String, BTreeSet<String>> =
        in_trace.iter().fold(BTreeMap::new(), |mut m, g| {
            m.entry(g.service.clone().unwrap_or_default())
                .or_default()
                .insert(g.name.clone());
            m
        });
    for w in wanted {
        assert!(
            seen.contains(w),
            "no {w} span in trace {trace_id}: {by_service:?}"
        );
    }
    // The spans that do the event's work say which: the planner's Start, the reconciler's
    // dispatch and confirmation, the agent's command batch, the worker's feed notice.
    for (service, name) in [
        ("gateway", "POST /v1/curtailments"),
        ("planner", "planner request"),
        ("reconciler", "dispatch"),
        ("reconciler", "confirm"),
        ("agent", "command batch"),
        ("worker", "relay"),
    ] {
        assert!(
            in_trace
                .iter()
                .any(|g| g.service.as_deref() == Some(service)
                    && g.name == name
                    && g.event_id.as_deref() == Some(id.as_str())),
            "no {service} {name:?} span for event {id} in trace {trace_id}: {by_service:?}"
        );
    }
    // One process: every span's resource is `ebb`, and every span says its service.
    assert!(
        in_trace
            .iter()
            .all(|g| g.resource.as_deref() == Some("ebb"))
    );
    assert!(
        in_trace.iter().all(|g| g.service.is_some()),
        "{by_service:?}"
    );

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), services.run()).await;
    ebb_obs::shutdown_tracing();
}

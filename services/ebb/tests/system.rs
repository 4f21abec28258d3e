//! The system test (issue 3): every service in-process against testkit's nats-server and
//! PostgreSQL, a 2-site simulated fleet of mixed makes over the real miner protocols, and a real
//! HTTP client. A preview writes nothing; a kW curtailment reaches ACTIVE with every selected
//! miner's true simulated power down; stop restores it in paced batches to COMPLETED with every
//! miner hashing again; the list shows the event, terminal, with no per-target rows; and a
//! webhook receiver built on an independent Standard Webhooks library verifies every delivery of
//! the curtailment's life, in order (issue 8).

use ebb_bus::Role;
use ebb_domain::SiteCode;
use ebb_minersim::{FleetSpec, GroupSpec, Model, SimOptions, SiteSpec};
use ebb_natsauth::Identity;
use ebb_runtime::{Common, Context, Entry, Instances, Needs, Supervisor};
use ebb_testkit::api::assert_event_summary;
use ebb_testkit::world::World;
use ebb_testkit::{NatsServer, TestDb};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SITES: [&str; 2] = ["site-a", "site-b"];
const PER_SITE: u32 = 12;

fn fleet() -> FleetSpec {
    let group = |model, count| GroupSpec {
        model,
        count,
        nominal_power_w: None,
        efficiency_j_per_th: None,
        spread_pct: 2.0,
    };
    FleetSpec {
        seed: 42,
        base_address: None,
        sites: SITES
            .iter()
            .map(|name| SiteSpec {
                name: (*name).into(),
                ambient_c: 25.0,
                groups: vec![
                    group(Model::M60s, 4),
                    group(Model::S19Pro, 4),
                    group(Model::S19kProLuxos, PER_SITE - 8),
                ],
            })
            .collect(),
    }
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
async fn curtail_and_restore_a_simulated_fleet_end_to_end() {
    ebb_testkit::init_tracing();
    let db = TestDb::new().await.unwrap();
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();

    // The fleet, with power ramping over two seconds as real miners do over tens.
    let physics = ebb_minersim::Physics {
        ramp_down_s: 2.0,
        ramp_up_s: 2.0,
        ..Default::default()
    };
    let sim = ebb_minersim::start(
        fleet(),
        SimOptions {
            physics,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();

    // Tenancy and sites; their miners are found by discovery below.
    let world = SITES
        .iter()
        .fold(World::builder(), |w, code| {
            w.site(code, |s| s.ramp_limit(1_000.0))
        })
        .build(&db)
        .await
        .unwrap();
    let org = world.org;
    let sites: Vec<ebb_store::fleet::Site> = world.sites.iter().map(|s| s.site.clone()).collect();

    // NATS as a deployment runs it (nats/hub.conf: operator-mode auth over TLS), every service
    // and site agent with its own credentials, as `ebb dev` runs it.
    let nats_dir = tempfile::tempdir().unwrap();
    let hub = ebb::localhub::prepare(db.pool(), nats_dir.path(), org, &sites)
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

    // A webhook receiver on loopback, keeping every request it gets.
    let secrets_key = ebb_webhooks::Keyring::generate_entry("system").unwrap();
    let received: std::sync::Arc<
        std::sync::Mutex<Vec<(axum::http::HeaderMap, axum::body::Bytes)>>,
    > = std::sync::Arc::default();
    let receiver = {
        let received = received.clone();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    received.lock().unwrap().push((headers, body));
                    axum::http::StatusCode::NO_CONTENT
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    };

    // Services: every line of the one table, one process, as `ebb dev` runs them.
    let common = Common {
        database_url: db.url().into(),
        db_connections: 16,
        ..as_identity(&Identity::Ops)
    };
    let ctx = Context::connect(&common, Needs::DatabaseAndNats, "system-test", stop.clone())
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
                set("secrets_key", &secrets_key);
                set("webhook_loopback", "allow");
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
            "worker" => {
                set("gauges_interval_s", "1");
                set("secrets_key", &secrets_key);
                set("webhook_loopback", "allow");
                set("webhook_poll_ms", "100");
            }
            _ => {}
        }
        if let Some(site) = site {
            set("site", site.as_str());
        }
        s
    };
    let codes: Vec<SiteCode> = SITES.iter().map(|c| SiteCode::parse(c).unwrap()).collect();
    let mut services = Supervisor::new(&stop);
    ebb::services::spawn(&mut services, &ctx, Instances::One, &codes, &overrides)
        .await
        .unwrap();
    let base = format!("http://{listen}");

    // Discovery over the real protocols registers each site's miners through the planner, each
    // site as its own agent.
    let miners = sim.miners();
    for code in SITES {
        let addrs: Vec<Ipv4Addr> = miners
            .iter()
            .filter(|m| m.site == code)
            .map(|m| m.address)
            .collect();
        let (first, last) = (
            addrs.iter().min().unwrap().octets(),
            addrs.iter().max().unwrap().octets(),
        );
        assert_eq!(first[..3], last[..3], "a site's miners share a /24");
        let range = format!(
            "{}.{}.{}.{}-{}",
            first[0], first[1], first[2], first[3], last[3]
        );
        let found = ebb_agent::scan(&range, &ebb_agent::ScanOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(
            found.devices.len(),
            addrs.len(),
            "every simulated miner is identified"
        );
        let site = SiteCode::parse(code).unwrap();
        let client = ebb_runtime::context::connect_nats(
            &as_identity(&Identity::Agent(site.clone())),
            "system-test-register",
        )
        .await
        .unwrap();
        let mut registered = 0;
        for _ in 0..50 {
            match ebb_agent::register(&client, &site, &found.devices, Duration::from_secs(5)).await
            {
                Ok(n) => {
                    registered = n;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        assert_eq!(registered as usize, addrs.len());
    }
    // The per-site services (the agents) start once their sites' miners are registered.
    ebb::services::spawn(&mut services, &ctx, Instances::PerSite, &codes, &overrides)
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", world.token(Role::Admin));
    let total = SITES.len() * PER_SITE as usize;
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
            n as usize == total
        },
    )
    .await;

    // Preview: a plan, and nothing written.
    let body = json!({"mode": "kw", "target_kw": 25, "reason": "system test",
                      "restore_batch_size": 3, "restore_batch_interval_s": 2});
    let r = http
        .post(format!("{base}/v1/curtailments:preview"))
        .header("authorization", &auth)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let plan: Value = r.json().await.unwrap();
    assert!(plan["expected_shed_kw"].as_f64().unwrap() >= 25.0, "{plan}");
    let written: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM curtailment_event) + (SELECT count(*) FROM audit_log) + (SELECT count(*) FROM outbox)")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(written, 0, "a preview writes nothing");

    // A webhook endpoint for every type.
    let r = http
        .post(format!("{base}/v1/webhooks"))
        .header("authorization", &auth)
        .json(&json!({"url": format!("http://{receiver}/hooks"), "description": "system test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let endpoint: Value = r.json().await.unwrap();
    let whsec = endpoint["secret"].as_str().unwrap().to_owned();

    // Start: ACTIVE, with every selected miner's true power down.
    let r = http
        .post(format!("{base}/v1/curtailments"))
        .header("authorization", &auth)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ev: Value = r.json().await.unwrap();
    let id = ev["id"].as_str().unwrap().to_owned();
    let get = |id: String| {
        let (http, base, auth) = (http.clone(), base.clone(), auth.clone());
        async move {
            http.get(format!("{base}/v1/curtailments/{id}"))
                .header("authorization", auth)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    wait_for("ACTIVE", Duration::from_secs(90), || async {
        get(id.clone()).await["state"] == "active"
    })
    .await;

    let selected: Vec<(String, f64)> = sqlx::query_as(
        "SELECT d.address, t.baseline_power_w FROM curtailment_target t JOIN device d ON d.id = t.device_id WHERE t.event_id = $1::uuid",
    )
    .bind(&id)
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert!(!selected.is_empty());
    let shed: f64 = selected.iter().map(|(_, w)| w).sum();
    assert!(shed >= 25_000.0, "selected {shed} W");
    for (addr, baseline) in &selected {
        let truth = sim.truth(addr.parse().unwrap()).unwrap();
        assert!(
            truth.power_w < baseline * 0.15 && truth.hashrate_ths == 0.0,
            "{addr} is not curtailed: {truth:?}"
        );
    }
    // The rest of the fleet is untouched.
    let chosen: Vec<&str> = selected.iter().map(|(a, _)| a.as_str()).collect();
    for m in &miners {
        if !chosen.contains(&m.address.to_string().as_str()) {
            assert!(
                sim.truth(m.address).unwrap().hashrate_ths > 0.0,
                "{} was not selected but is not hashing",
                m.address
            );
        }
    }

    // What the event sheds, from telemetry, and what /metrics says the sites shed (the worker's
    // gauges, read from the same database): within 10 % of each other (issue 10).
    let observed_kw = get(id.clone()).await["observed_shed_kw"]
        .as_f64()
        .expect("the event carries observed_shed_kw");
    assert!(
        observed_kw > 0.8 * shed / 1000.0 && observed_kw <= shed / 1000.0,
        "observed {observed_kw} kW of {shed} W selected"
    );
    let metrics = || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let site_shed_kw = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("ebb_site_shed_watts{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            / 1000.0
    };
    wait_for(
        "the site gauges to show the shed",
        Duration::from_secs(30),
        || async {
            let text = metrics().await;
            let observed = get(id.clone()).await["observed_shed_kw"].as_f64().unwrap();
            let gauged = site_shed_kw(&text);
            gauged > 0.0 && (gauged - observed).abs() <= 0.1 * observed
        },
    )
    .await;
    let text = metrics().await;
    for family in [
        "ebb_site_power_watts{",
        "ebb_site_miners{",
        "ebb_curtailment_events{",
        "ebb_reconciler_heartbeat_age_seconds ",
        "ebb_curtailment_start_to_active_seconds_bucket{",
        "ebb_reconciler_commands_published_total{",
        "ebb_agent_poll_lag_seconds{",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "/metrics has no {family}…: {text}"
        );
    }

    // Stop: paced restore to COMPLETED, every miner hashing again.
    let r = http
        .post(format!("{base}/v1/curtailments/{id}/stop"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for("COMPLETED", Duration::from_secs(120), || async {
        get(id.clone()).await["state"] == "completed"
    })
    .await;
    for m in &miners {
        assert!(
            sim.truth(m.address).unwrap().hashrate_ths > 0.0,
            "{} is not hashing after restore",
            m.address
        );
    }
    // Restore went out at most 3 miners per batch, batches at least 2 s apart.
    let stamps: Vec<(i64,)> = sqlx::query_as(
        "SELECT (extract(epoch FROM at) * 1000)::bigint FROM event_transition
         WHERE event_id = $1::uuid AND to_state = 'restore_dispatching' ORDER BY at",
    )
    .bind(&id)
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut batches: BTreeMap<i64, usize> = BTreeMap::new();
    for (at,) in &stamps {
        *batches.entry(at / 500).or_default() += 1;
    }
    assert_eq!(
        stamps.len(),
        selected.len(),
        "each selected miner restored once"
    );
    let times: Vec<i64> = batches.keys().copied().collect();
    assert!(batches.values().all(|n| *n <= 3), "{batches:?}");
    for w in times.windows(2) {
        assert!(
            (w[1] - w[0]) * 500 >= 1_500,
            "restore batches too close: {batches:?}"
        );
    }

    // The list shows the event, terminal, with no per-target rows.
    let list: Value = http
        .get(format!("{base}/v1/curtailments"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["state"], "completed");
    let counts: HashMap<String, i64> = serde_json::from_value(items[0]["targets"].clone()).unwrap();
    assert_eq!(counts.get("restored").copied(), Some(selected.len() as i64));
    assert_event_summary(&items[0]);

    // Integrations heard about it: the worker relayed the outbox onto the EVENT stream.
    wait_for("the outbox drained", Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(db.pool())
            .await
            .unwrap();
        n == 0
    })
    .await;
    let js = async_nats::jetstream::new(ctx.nats().clone());
    let info = js
        .get_stream(ebb_bus::streams::EVENT)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert!(
        info.state.messages >= 4,
        "created, active, restoring, completed: {}",
        info.state.messages
    );

    // The receiver verified every delivery of the event's life with the Standard Webhooks
    // library, in order: started, active, restoring, completed.
    let verifier = standardwebhooks::Webhook::new(&whsec).unwrap();
    let lifecycle = || {
        received
            .lock()
            .unwrap()
            .iter()
            .map(|(headers, body)| {
                let mut h = http::HeaderMap::new();
                for (k, v) in headers {
                    h.insert(k.clone(), v.clone());
                }
                verifier
                    .verify(body, &h)
                    .unwrap_or_else(|e| panic!("a delivery does not verify: {e:?}"));
                let body: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(body["data"]["id"], id.as_str(), "{body}");
                body["type"].as_str().unwrap().to_owned()
            })
            .collect::<Vec<String>>()
    };
    wait_for(
        "four webhook deliveries",
        Duration::from_secs(30),
        || async { lifecycle().len() >= 4 },
    )
    .await;
    assert_eq!(
        lifecycle(),
        [
            "ebb.curtailment.started",
            "ebb.curtailment.active",
            "ebb.curtailment.restoring",
            "ebb.curtailment.completed"
        ]
    );
    stop.cancel();
    services.run().await.unwrap();
    sim.shutdown().await;
}

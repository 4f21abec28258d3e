//! Issue 9, fleet: devices listed with the state derived from their latest sample and the
//! curtailment that holds them, filtered after that derivation and paged by a cursor bound to
//! its filters; the maintenance flag set with one audit row per change; the per-site summary;
//! and every one of them within the key's org and sites.

use crate::{App, spawn_app};
use ebb_testkit::world::World;
use reqwest::StatusCode;
use serde_json::{Value, json};

impl App {
    pub(crate) async fn patch_json(
        &self,
        key: &str,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.patch(key, path, body).await
    }

    async fn patch(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .patch(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    /// Every device id a listing with `query` returns, following its cursors.
    async fn all_devices(&self, key: &str, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if query.is_empty() { "" } else { "&" };
            let path = match &cursor {
                None => format!("/v1/devices?{query}"),
                Some(c) => format!("/v1/devices?{query}{sep}cursor={c}"),
            };
            let (s, page) = self.get(key, &path).await;
            assert_eq!(s, StatusCode::OK, "{path}: {page}");
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }

    async fn audit_rows(&self, action: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1")
            .bind(action)
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn devices_are_listed_by_derived_state_and_paged_within_the_keys_reach() {
    let app = spawn_app().await;
    let viewer = app.key("viewer");
    let devices = app.world.site("site-a").devices.clone();
    // Another org's devices are never listed, read or touched.
    let other = World::builder()
        .site("site-z", |s| s.miners(2).watts(3000.0).hashing())
        .build(&app.db)
        .await
        .unwrap();
    let foreign = other.site("site-z").devices[0];

    // Device 1 stops answering; device 2 has never reported.
    sqlx::query("UPDATE device_state SET reachable = false, power_w = NULL, hashrate_ths = NULL WHERE device_id = $1")
        .bind(devices[1].0)
        .execute(app.db.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM device_state WHERE device_id = $1")
        .bind(devices[2].0)
        .execute(app.db.pool())
        .await
        .unwrap();

    let all = app.all_devices(&viewer, "page_size=1").await;
    let mut want: Vec<String> = devices.iter().map(|d| d.0.to_string()).collect();
    want.sort();
    assert_eq!(
        ids(&all),
        want,
        "every device once, in id order, over 4 pages"
    );
    let by_id = |id: ebb_domain::DeviceId| {
        all.iter()
            .find(|d| d["id"] == id.0.to_string())
            .unwrap()
            .clone()
    };
    let d0 = by_id(devices[0]);
    assert_eq!(d0["state"], "hashing");
    assert_eq!(d0["site"], "site-a");
    assert_eq!(d0["power_w"], 3000.0);
    assert_eq!(d0["curtailment"], Value::Null);
    let d1 = by_id(devices[1]);
    assert_eq!(d1["state"], "unreachable");
    assert_eq!(d1["power_w"], Value::Null, "never reported as zero");
    assert_eq!(by_id(devices[2])["state"], "unknown");

    // Filters apply to the derived state.
    let only = |q: &'static str| {
        let app = &app;
        let viewer = viewer.clone();
        async move { ids(&app.all_devices(&viewer, q).await) }
    };
    assert_eq!(only("state=unreachable").await, [devices[1].0.to_string()]);
    assert_eq!(only("state=unknown").await, [devices[2].0.to_string()]);
    assert_eq!(only("state=hashing").await.len(), 2);
    assert_eq!(only("site=site-a").await.len(), 4);
    assert_eq!(only("make=nobody").await.len(), 0);

    // A Start holds some devices: the listing says which event, in which target state.
    let (s, event, _) = app
        .post(
            &app.key("operator"),
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":3,"reason":"fleet test"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{event}");
    let held: Vec<Value> = app
        .all_devices(&viewer, "")
        .await
        .into_iter()
        .filter(|d| !d["curtailment"].is_null())
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["curtailment"]["event_id"], event["id"]);
    assert!(held[0]["curtailment"]["target_state"].is_string());

    // Bad input names its field and lists nothing.
    for (q, field) in [
        ("state=dancing", "state"),
        ("site=nowhere-site", "site"),
        ("site=Bad%20Code", "site"),
        ("rack=not-a-uuid", "rack"),
        ("page_size=0", "page_size"),
        ("page_size=1001", "page_size"),
        ("make=", "make"),
        ("cursor=garbage", "cursor"),
    ] {
        let (s, p) = app.get(&viewer, &format!("/v1/devices?{q}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{q}: {p}");
    }
    let (s, p) = app.get(&viewer, "/v1/devices?colour=red").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown parameter: {p}");
    // A cursor works only with the filters it was issued for.
    let (_, page) = app.get(&viewer, "/v1/devices?page_size=1").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (s, p) = app
        .get(
            &viewer,
            &format!("/v1/devices?page_size=1&state=hashing&cursor={cursor}"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(p["errors"][0]["field"], "cursor");

    // Another org's device is not found; a key that reaches no site lists nothing.
    let (s, _) = app
        .get(&viewer, &format!("/v1/devices/{}", foreign.0))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, page) = app.get(&app.key("nowhere"), "/v1/devices").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["items"], json!([]));
    let (s, _) = app
        .get(
            &app.key("nowhere"),
            &format!("/v1/devices/{}", devices[0].0),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, d) = app
        .get(
            &app.key("limited"),
            &format!("/v1/devices/{}", devices[0].0),
        )
        .await;
    assert_eq!((s, d["id"].clone()), (StatusCode::OK, json!(devices[0].0)));
}

#[tokio::test]
async fn maintenance_is_set_by_operators_and_audited_once_per_change() {
    let app = spawn_app().await;
    let device = app.world.site("site-a").devices[0];
    let path = format!("/v1/devices/{}", device.0);
    let operator = app.key("operator");

    // The role matrix: a viewer cannot, an operator (org-wide or limited to the site) can, a key
    // that does not reach the site finds nothing.
    let (s, _) = app
        .patch(&app.key("viewer"), &path, json!({"maintenance": true}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .patch(&app.key("nowhere"), &path, json!({"maintenance": true}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        app.audit_rows("device_updated").await,
        0,
        "refusals write nothing"
    );

    // Bad input names its field and changes nothing.
    for (body, what) in [
        (json!({}), "an empty patch"),
        (json!({"maintenance": "yes"}), "a string"),
        (
            json!({"maintenance": true, "colour": "red"}),
            "an unknown field",
        ),
    ] {
        let (s, p) = app.patch(&operator, &path, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {p}");
    }
    let (s, p) = app
        .patch(
            &operator,
            "/v1/devices/not-a-uuid",
            json!({"maintenance": true}),
        )
        .await;
    assert_eq!(
        (s, p["errors"][0]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("id"))
    );
    assert_eq!(app.audit_rows("device_updated").await, 0);

    let (s, d) = app
        .patch(&app.key("limited"), &path, json!({"maintenance": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(
        (d["maintenance"].clone(), d["state"].clone()),
        (json!(true), json!("maintenance"))
    );
    assert_eq!(app.audit_rows("device_updated").await, 1);
    let meta: Value = sqlx::query_scalar(
        "SELECT metadata FROM audit_log WHERE action = 'device_updated' AND subject_id = $1",
    )
    .bind(device.0)
    .fetch_one(app.db.pool())
    .await
    .unwrap();
    assert_eq!(
        meta,
        json!({"changed": {"maintenance": {"from": false, "to": true}}})
    );
    // The same value again changes nothing and is not audited.
    let (s, _) = app
        .patch(&operator, &path, json!({"maintenance": true}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app.audit_rows("device_updated").await, 1);

    // A Start leaves it out at once, though the planner's snapshot was read before the flag.
    let (s, event, _) = app
        .post(
            &operator,
            "/v1/curtailments",
            json!({"mode":"full","reason":"maintenance test"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{event}");
    let targets: i64 = event["targets"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_i64().unwrap())
        .sum();
    assert_eq!(targets, 3, "{event}");
    assert_eq!(event["selection"]["skipped"]["maintenance"], 1, "{event}");
    let (_, d) = app.get(&operator, &path).await;
    assert_eq!(
        d["curtailment"],
        Value::Null,
        "the device in maintenance is not held"
    );

    // The summary counts it, per site and in total.
    let (s, sum) = app.get(&app.key("viewer"), "/v1/fleet/summary").await;
    assert_eq!(s, StatusCode::OK, "{sum}");
    let site = &sum["sites"][0];
    assert_eq!(site["code"], "site-a");
    assert_eq!(site["miners"]["maintenance"], 1);
    assert_eq!(site["miners"]["hashing"], 3);
    assert_eq!(site["curtailed"], 3);
    assert_eq!(site["miners"]["unknown"], 0);
    assert_eq!(site["power_w"], 12_000.0);
    assert_eq!(sum["total"]["miners"]["maintenance"], 1);
    assert_eq!(sum["total"]["power_w"], 12_000.0);
    let (_, none) = app.get(&app.key("nowhere"), "/v1/fleet/summary").await;
    assert_eq!(none["sites"], json!([]));
    assert_eq!(none["total"]["power_w"], 0.0);
}

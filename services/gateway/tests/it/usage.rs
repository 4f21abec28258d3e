//! Prices and rated usage over HTTP: CSV and JSON prices, all or nothing with every bad line
//! and field named; usage grouped by site or event; roles, site reach and other orgs.

use super::{App, spawn_app};
use chrono::{DateTime, TimeDelta, Utc};
use ebb_domain::{EventId, SiteId};
use ebb_store::rating::{self as store, RatedRow};
use ebb_testkit::world::World;
use reqwest::StatusCode;
use serde_json::{Value, json};

impl App {
    async fn put_prices(&self, key: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .put(self.url("/v1/prices"))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    async fn prices(&self) -> Vec<(DateTime<Utc>, i64)> {
        sqlx::query_as("SELECT window_start, price_micros_per_mwh FROM price ORDER BY window_start")
            .fetch_all(self.db.pool())
            .await
            .unwrap()
    }
}

/// The `field`s of a problem's errors.
fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors: {problem}"))
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn prices_are_set_from_csv_or_json_by_an_org_wide_admin() {
    let app = spawn_app().await;
    let admin = app.key("admin");
    let csv = "window_start,price_per_mwh\r\n2026-01-01T10:00:00Z,42.50\r\n2026-01-01T10:15:00+00:00, -3.25 \r\n\r\n";
    let (s, body) = app.put_prices(&admin, "text/csv; charset=utf-8", csv).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"prices": 2, "currency": "USD",
               "first_window_start": "2026-01-01T10:00:00Z", "last_window_start": "2026-01-01T10:15:00Z"})
    );
    let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    assert_eq!(
        app.prices().await,
        vec![
            (t("2026-01-01T10:00:00Z"), 42_500_000),
            (t("2026-01-01T10:15:00Z"), -3_250_000)
        ]
    );
    // JSON replaces a window's price and adds another.
    let (s, body) = app
        .put_prices(
            &admin,
            "application/json",
            &json!({"prices": [
                {"window_start": "2026-01-01T10:00:00Z", "price_per_mwh": "44"},
                {"window_start": "2026-01-01T11:00:00Z", "price_per_mwh": "0.000001"}
            ]})
            .to_string(),
        )
        .await;
    assert_eq!((s, &body["prices"]), (StatusCode::OK, &json!(2)), "{body}");
    assert_eq!(
        app.prices().await,
        vec![
            (t("2026-01-01T10:00:00Z"), 44_000_000),
            (t("2026-01-01T10:15:00Z"), -3_250_000),
            (t("2026-01-01T11:00:00Z"), 1),
        ]
    );
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'prices_set'")
            .fetch_one(app.db.pool())
            .await
            .unwrap();
    assert_eq!(audited, 2);

    // Only an admin reaching every site sets prices; the others change nothing.
    let new = ebb_store::keys::generate();
    let site_a = [app.world.site("site-a").site.id];
    ebb_store::fleet::insert_api_key(
        app.db.pool(),
        &ebb_store::fleet::NewApiKey {
            org: app.world.org,
            prefix: &new.prefix,
            secret_hash: &new.secret_hash,
            role: "admin",
            name: "site-a admin",
            expires_at: None,
            site_ids: Some(&site_a),
        },
    )
    .await
    .unwrap();
    let one = "2026-01-02T00:00:00Z,1\n";
    for key in [
        "viewer",
        "operator",
        "limited",
        "nowhere",
        "expired",
        "site-a admin",
    ] {
        let token = if key == "site-a admin" {
            new.token.clone()
        } else {
            app.key(key)
        };
        let (s, body) = app.put_prices(&token, "text/csv", one).await;
        let want = if key == "expired" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(s, want, "{key}: {body}");
    }
    assert_eq!(app.prices().await.len(), 3);
}

#[tokio::test]
async fn bad_prices_name_each_line_and_field_and_write_nothing() {
    let app = spawn_app().await;
    let admin = app.key("admin");
    let check = |ct: &'static str, body: String, want: Vec<&'static str>| {
        let app = &app;
        let admin = admin.clone();
        async move {
            let (s, problem) = app.put_prices(&admin, ct, &body).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{problem}");
            assert_eq!(problem["type"], "https://ebb.dev/problems/invalid-argument");
            assert_eq!(fields(&problem), want, "{problem}");
            let detail = problem["detail"].as_str().unwrap();
            assert!(
                detail.starts_with(want[0]) && detail.ends_with("nothing was written"),
                "{detail}"
            );
            assert!(app.prices().await.is_empty(), "something was written");
        }
    };
    // Line numbers count every line, the header and blank ones included.
    check(
        "text/csv",
        "window_start,price_per_mwh\n2026-01-01T10:00:00Z,42.5\n\n2026-01-01T10:15:00Z,4e2\n\
         yesterday,1\n2026-01-01T10:07:00Z,1\n2026-01-01T10:00:00Z,43\n2026-01-01T11:00:00Z\n\
         2026-01-01T12:00:00Z,1.0000001\n"
            .into(),
        vec![
            "line 4: price_per_mwh",
            "line 5: window_start",
            "line 6: window_start",
            "line 8",
            "line 9: price_per_mwh",
            "line 7: window_start",
        ],
    )
    .await;
    check(
        "application/json",
        json!({"prices": [
            {"window_start": "2026-01-01T10:00:00Z", "price_per_mwh": 42.5},
            {"window_start": 1767261600, "price_per_mwh": "1"},
            {"window_start": "2026-01-01T10:30:00Z", "price_per_mwh": "99999999"}
        ]})
        .to_string(),
        vec![
            "prices[0].price_per_mwh",
            "prices[1].window_start",
            "prices[2].price_per_mwh",
        ],
    )
    .await;
    check(
        "application/json",
        r#"{"prices": [], "extra": 1}"#.into(),
        vec!["body"],
    )
    .await;
    check("application/json", r#"{"prices": []}"#.into(), vec!["body"]).await;
    check("text/csv", "\n\n".into(), vec!["body"]).await;
    check(
        "text/plain",
        "2026-01-01T10:00:00Z,1".into(),
        vec!["content-type"],
    )
    .await;
}

/// Writes the org's rated rows as one rater run over their span would: (site, event, hours
/// after `start`, µkWh, provisional) each, the amount a tenth of the µkWh.
async fn rated(app: &App, start: DateTime<Utc>, rows: &[(SiteId, EventId, i64, i64, bool)]) {
    let rows: Vec<RatedRow> = rows
        .iter()
        .map(|(site, event, h, kwh, provisional)| RatedRow {
            site: *site,
            event: *event,
            window_start: start + TimeDelta::hours(*h),
            window_end: start + TimeDelta::hours(h + 1),
            kwh_micros: *kwh,
            amount_micros: kwh / 10,
            currency: "USD".into(),
            provisional: *provisional,
        })
        .collect();
    let mut conn = app.db.pool().acquire().await.unwrap();
    store::write_rated(
        &mut conn,
        app.world.org,
        start,
        start + TimeDelta::days(1),
        &rows,
    )
    .await
    .unwrap();
}

/// An event of the app's org with no targets (rated rows only need it to exist).
async fn an_event(app: &App, org: ebb_domain::OrgId) -> EventId {
    let id = EventId::new();
    sqlx::query(
        "INSERT INTO curtailment_event (id, org_id, state, mode, mode_params, command, scope,
             reason, selection, restore_batch_size, restore_batch_interval_s, source_actor,
             stop_cause)
         VALUES ($1, $2, 'completed', 'full', '{}', '{}', '{}', 'test', '{}', 1, 0, 'api_key',
                 'requested')",
    )
    .bind(id.0)
    .bind(org.0)
    .execute(app.db.pool())
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn usage_is_read_by_window_grouped_and_within_the_keys_reach() {
    let app = spawn_app().await;
    // A second site the limited key does not reach.
    let site_a = app.world.site("site-a").site.id;
    let site_b = SiteId::new();
    sqlx::query("INSERT INTO site (id, org_id, code, name) VALUES ($1, $2, 'site-b', 'B')")
        .bind(site_b.0)
        .bind(app.world.org.0)
        .execute(app.db.pool())
        .await
        .unwrap();
    let (e1, e2) = (
        an_event(&app, app.world.org).await,
        an_event(&app, app.world.org).await,
    );
    let start: DateTime<Utc> = "2026-01-01T10:00:00Z".parse().unwrap();
    rated(
        &app,
        start,
        &[
            (site_a, e1, 0, 1_000_000, false),
            (site_a, e1, 1, 2_500_000, true),
            (site_b, e1, 0, 500_000, true),
            (site_a, e2, 0, 250_000, true),
        ],
    )
    .await;
    // Another org's rows, in the same windows.
    let other = World::builder()
        .org("other")
        .site("site-z", |s| s.miners(1))
        .build(&app.db)
        .await
        .unwrap();
    let foreign = an_event(&app, other.org).await;
    {
        let rows = vec![RatedRow {
            site: other.site("site-z").site.id,
            event: foreign,
            window_start: start,
            window_end: start + TimeDelta::hours(1),
            kwh_micros: 9_000_000,
            amount_micros: 1,
            currency: "EUR".into(),
            provisional: false,
        }];
        let mut conn = app.db.pool().acquire().await.unwrap();
        store::write_rated(
            &mut conn,
            other.org,
            start,
            start + TimeDelta::hours(1),
            &rows,
        )
        .await
        .unwrap();
    }

    let q = "from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z";
    let viewer = app.key("viewer");
    let (s, body) = app.get(&viewer, &format!("/v1/usage?{q}")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (e1s, e2s) = (e1.0.to_string(), e2.0.to_string());
    let row = |ws: &str, we: &str, site: Value, event: Value, kwh: f64, amount: i64, prov: bool| {
        json!({"window_start": ws, "window_end": we, "site": site, "event_id": event,
               "curtailed_kwh": kwh, "amount_micros": amount, "currency": "USD", "provisional": prov})
    };
    let (h10, h11, h12) = (
        "2026-01-01T10:00:00Z",
        "2026-01-01T11:00:00Z",
        "2026-01-01T12:00:00Z",
    );
    // Ordered by window, site, event; e1 < e2 (UUIDv7).
    assert_eq!(
        body["rows"],
        json!([
            row(h10, h11, json!("site-a"), json!(e1s), 1.0, 100_000, false),
            row(h10, h11, json!("site-a"), json!(e2s), 0.25, 25_000, true),
            row(h10, h11, json!("site-b"), json!(e1s), 0.5, 50_000, true),
            row(h11, h12, json!("site-a"), json!(e1s), 2.5, 250_000, true),
        ])
    );
    let (_, by_site) = app
        .get(&viewer, &format!("/v1/usage?{q}&group_by=site"))
        .await;
    assert_eq!(
        by_site["rows"],
        json!([
            row(h10, h11, json!("site-a"), Value::Null, 1.25, 125_000, true),
            row(h10, h11, json!("site-b"), Value::Null, 0.5, 50_000, true),
            row(h11, h12, json!("site-a"), Value::Null, 2.5, 250_000, true),
        ])
    );
    let (_, by_event) = app
        .get(&viewer, &format!("/v1/usage?{q}&group_by=event"))
        .await;
    assert_eq!(
        by_event["rows"],
        json!([
            row(h10, h11, Value::Null, json!(e1s), 1.5, 150_000, true),
            row(h10, h11, Value::Null, json!(e2s), 0.25, 25_000, true),
            row(h11, h12, Value::Null, json!(e1s), 2.5, 250_000, true),
        ])
    );
    // A key limited to site-a sees only site-a's rows, in every grouping; one that reaches no
    // site sees none.
    let (_, limited) = app
        .get(
            &app.key("limited"),
            &format!("/v1/usage?{q}&group_by=event"),
        )
        .await;
    assert_eq!(
        limited["rows"],
        json!([
            row(h10, h11, Value::Null, json!(e1s), 1.0, 100_000, false),
            row(h10, h11, Value::Null, json!(e2s), 0.25, 25_000, true),
            row(h11, h12, Value::Null, json!(e1s), 2.5, 250_000, true),
        ])
    );
    let (s, nowhere) = app
        .get(&app.key("nowhere"), &format!("/v1/usage?{q}"))
        .await;
    assert_eq!((s, nowhere["rows"].clone()), (StatusCode::OK, json!([])));
    // The other org sees its own row only, and this org never sees it.
    let (_, theirs) = app
        .get(
            other.token(ebb_bus::Role::Viewer),
            &format!("/v1/usage?{q}"),
        )
        .await;
    assert_eq!(theirs["rows"].as_array().unwrap().len(), 1, "{theirs}");
    assert_eq!(theirs["rows"][0]["currency"], "EUR");
    assert_eq!(theirs["rows"][0]["event_id"], json!(foreign.0.to_string()));
    for key in ["viewer", "operator", "admin"] {
        let (_, b) = app.get(&app.key(key), &format!("/v1/usage?{q}")).await;
        assert!(
            b["rows"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["currency"] == "USD"),
            "{key}: {b}"
        );
    }
    // The span is half-open on window starts.
    let (_, narrow) = app
        .get(
            &viewer,
            "/v1/usage?from=2026-01-01T11:00:00Z&to=2026-01-01T12:00:00Z",
        )
        .await;
    assert_eq!(narrow["rows"].as_array().unwrap().len(), 1, "{narrow}");

    // Bad queries name their parameter.
    for (query, field) in [
        ("group_by=rack", "group_by"),
        ("from=yesterday", "from"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "to"),
    ] {
        let (s, p) = app.get(&viewer, &format!("/v1/usage?{query}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {p}");
        assert_eq!(fields(&p), vec![field], "{query}: {p}");
    }
    let (s, _) = app
        .get(&app.key("expired"), &format!("/v1/usage?{q}"))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

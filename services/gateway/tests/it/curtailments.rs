//! Issue 9, what an operator reads during an event: a curtailment's targets with their last
//! observed power, retries and errors, filtered and paged; the live events with target counts
//! and the shed their plans expected against what telemetry says they shed.

use crate::spawn_app;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn targets_are_listed_and_live_events_show_expected_against_observed_shed() {
    let app = spawn_app().await;
    let operator = app.key("operator");
    let viewer = app.key("viewer");
    let (s, event, _) = app
        .post(
            &operator,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":6,"reason":"read"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{event}");
    let id = event["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/curtailments/{id}/targets");

    // Two targets, one page at a time.
    let (s, first) = app.get(&viewer, &format!("{path}?page_size=1")).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let t = &first["items"][0];
    assert_eq!(t["state"], "pending");
    assert_eq!(t["site"], "site-a");
    assert_eq!(
        (
            t["baseline_power_w"].clone(),
            t["last_observed_power_w"].clone()
        ),
        (json!(3000.0), json!(3000.0))
    );
    assert_eq!(t["retry_count"], 0);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = app
        .get(&viewer, &format!("{path}?page_size=1&cursor={cursor}"))
        .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_cursor"], Value::Null);
    assert_ne!(second["items"][0]["device_id"], t["device_id"]);

    // One confirmed, its miner now drawing 100 W: the event sheds 2.9 kW of the 6 expected.
    let device = t["device_id"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE curtailment_target SET state = 'confirmed' WHERE device_id = $1::uuid")
        .bind(&device)
        .execute(app.db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE device_state SET power_w = 100 WHERE device_id = $1::uuid")
        .bind(&device)
        .execute(app.db.pool())
        .await
        .unwrap();
    let (_, confirmed) = app.get(&viewer, &format!("{path}?state=confirmed")).await;
    assert_eq!(confirmed["items"].as_array().unwrap().len(), 1);
    assert_eq!(confirmed["items"][0]["last_observed_power_w"], 100.0);
    let (s, live) = app.get(&viewer, "/v1/curtailments/active").await;
    assert_eq!(s, StatusCode::OK, "{live}");
    assert_eq!(live["items"].as_array().unwrap().len(), 1);
    ebb_testkit::api::assert_event_summary(&live["items"][0]);
    assert_eq!(
        live["items"][0]["targets"],
        json!({"confirmed": 1, "pending": 1})
    );
    assert_eq!(live["expected_shed_kw"], 6.0);
    assert_eq!(live["observed_shed_kw"], 2.9);

    // Bad input names its field; other orgs and keys that reach no site see nothing.
    for (q, field) in [
        ("state=asleep", "state"),
        ("page_size=0", "page_size"),
        ("page_size=1001", "page_size"),
        ("cursor=x", "cursor"),
    ] {
        let (s, p) = app.get(&viewer, &format!("{path}?{q}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{q}: {p}");
    }
    let (s, p) = app
        .get(&viewer, &format!("{path}?state=confirmed&cursor={cursor}"))
        .await;
    assert_eq!(
        (s, p["errors"][0]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("cursor"))
    );
    let nowhere = app.key("nowhere");
    assert_eq!(app.get(&nowhere, &path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&nowhere, "/v1/curtailments/active").await.1["items"],
        json!([])
    );
    let other = ebb_testkit::world::World::builder()
        .site("site-v", |s| s.miners(1))
        .api_key(ebb_testkit::world::Key::new(
            "theirs",
            ebb_bus::Role::Viewer,
        ))
        .build(&app.db)
        .await
        .unwrap();
    let theirs = other.key("theirs").token.clone();
    assert_eq!(app.get(&theirs, &path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&theirs, "/v1/curtailments/active").await.1["items"],
        json!([])
    );
}

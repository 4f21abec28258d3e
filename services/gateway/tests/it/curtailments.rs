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

#[tokio::test]
async fn a_live_event_is_changed_by_whoever_may_and_audited_with_what_changed() {
    let app = spawn_app().await;
    let (operator, admin) = (app.key("operator"), app.key("admin"));
    let (s, event, _) = app
        .post(
            &operator,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":3,"reason":"grid"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{event}");
    let path = format!("/v1/curtailments/{}", event["id"].as_str().unwrap());
    let audits = || async {
        sqlx::query_scalar::<_, serde_json::Value>(
            "SELECT metadata FROM audit_log WHERE action = 'curtailment_updated' ORDER BY id",
        )
        .fetch_all(app.db.pool())
        .await
        .unwrap()
    };

    // Bad input names its field and changes nothing; a viewer may not.
    for (body, field) in [
        (json!({"restore_batch_size": 0}), Some("restore_batch_size")),
        (
            json!({"restore_batch_size": 10001}),
            Some("restore_batch_size"),
        ),
        (json!({"max_duration_s": 0}), Some("max_duration_s")),
        (json!({"reason": "  "}), Some("reason")),
        (json!({}), None),
        (json!({"colour": "red"}), None),
    ] {
        let (s, p) = app.patch_json(&operator, &path, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {p}");
        if let Some(field) = field {
            assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
        }
    }
    let (s, _) = app
        .patch_json(&app.key("viewer"), &path, json!({"restore_batch_size": 5}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(audits().await.is_empty());

    // The reason as stored is no change: only the batch size is changed and audited.
    let (s, e) = app
        .patch_json(
            &operator,
            &path,
            json!({"reason": "grid", "restore_batch_size": 50}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["restore_batch_size"], 50);
    ebb_testkit::api::assert_event_summary(&e);
    assert_eq!(
        audits().await,
        [json!({"changed": {"restore_batch_size": {"from": 100, "to": 50}}})]
    );
    // The same again is a no-op with no audit row.
    let (s, _) = app
        .patch_json(&operator, &path, json!({"restore_batch_size": 50}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(audits().await.len(), 1);

    // Admin gates on the effective change (DESIGN invariant 11).
    let longer = json!({"max_duration_s": 100_000});
    let (s, p) = app.patch_json(&operator, &path, longer.clone()).await;
    assert_eq!(
        (s, p["errors"][0]["field"].clone()),
        (StatusCode::FORBIDDEN, json!("max_duration_s"))
    );
    let slower = json!({"restore_batch_interval_s": 600});
    let (s, p) = app.patch_json(&operator, &path, slower.clone()).await;
    assert_eq!(
        (s, p["errors"][0]["field"].clone()),
        (StatusCode::FORBIDDEN, json!("restore_batch_interval_s"))
    );
    assert_eq!(
        app.patch_json(&admin, &path, longer).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.patch_json(&admin, &path, slower.clone()).await.0,
        StatusCode::OK
    );
    let (s, _) = app.patch_json(&operator, &path, slower).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "what is already stored needs no privilege"
    );
    assert_eq!(audits().await.len(), 3);

    // A write that finds the state moved under it is a race, distinct from a wrong state.
    sqlx::query(
        "CREATE FUNCTION lose_update() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RETURN NULL; END $$",
    )
    .execute(app.db.pool())
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER lose_update BEFORE UPDATE ON curtailment_event FOR EACH ROW
         WHEN (NEW.reason = 'raced') EXECUTE FUNCTION lose_update()",
    )
    .execute(app.db.pool())
    .await
    .unwrap();
    let (s, p) = app
        .patch_json(&operator, &path, json!({"reason": "raced"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["type"], "https://ebb.dev/problems/update-state-race");
    assert_eq!(audits().await.len(), 3, "nothing written");

    let (s, _, _) = app
        .post(&operator, &format!("{path}/stop"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, p) = app
        .patch_json(&operator, &path, json!({"reason": "late"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["type"], "https://ebb.dev/problems/invalid-state");
}

/// Abort is the way out of a stuck event: admin only, a reason required, the event failed and
/// every device released at once, a miner that was sent anything marked possibly left asleep,
/// audited; an ended event cannot be aborted.
#[tokio::test]
async fn abort_releases_a_stuck_events_miners_without_restoring() {
    let app = spawn_app().await;
    let (operator, admin) = (app.key("operator"), app.key("admin"));
    let (s, event, _) = app
        .post(
            &operator,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":9,"reason":"stuck"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{event}");
    let id = event["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/curtailments/{id}/abort");
    // One target was sent a command and is stuck there.
    sqlx::query(
        "UPDATE curtailment_target SET state = 'dispatched', last_batch_id = gen_random_uuid()
         WHERE device_id = (SELECT device_id FROM curtailment_target WHERE event_id = $1::uuid
                            ORDER BY device_id LIMIT 1)",
    )
    .bind(&id)
    .execute(app.db.pool())
    .await
    .unwrap();
    // Another was sent one and then failed: its miner may be asleep too.
    sqlx::query(
        "UPDATE curtailment_target SET state = 'failed', last_batch_id = gen_random_uuid()
         WHERE device_id = (SELECT device_id FROM curtailment_target
                            WHERE event_id = $1::uuid AND state = 'pending'
                            ORDER BY device_id LIMIT 1)",
    )
    .bind(&id)
    .execute(app.db.pool())
    .await
    .unwrap();

    let (s, _, _) = app.post(&operator, &path, json!({"reason": "stuck"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for body in [
        json!({}),
        json!({"reason": " "}),
        json!({"reason": "x", "force": true}),
    ] {
        let (s, p, _) = app.post(&admin, &path, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {p}");
    }
    let (s, e, _) = app
        .post(&admin, &path, json!({"reason": "agent lost with the site"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["state"], "failed");
    assert_eq!(e["targets"], json!({"restore_failed": 2, "restored": 1}));
    let (_, held) = app.get(&app.key("viewer"), "/v1/devices").await;
    assert!(
        held["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["curtailment"].is_null()),
        "every device released: {held}"
    );
    let meta: Value =
        sqlx::query_scalar("SELECT metadata FROM audit_log WHERE action = 'curtailment_aborted'")
            .fetch_one(app.db.pool())
            .await
            .unwrap();
    assert_eq!(meta["released_untouched"], 1);
    assert_eq!(meta["possibly_left_curtailed"], 2);
    assert_eq!(meta["reason"], "agent lost with the site");
    // The database frees them at once: the exclusivity index no longer covers any of them.
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM curtailment_target
         WHERE event_id = $1::uuid AND state NOT IN ('failed', 'restored', 'restore_failed')",
    )
    .bind(&id)
    .fetch_one(app.db.pool())
    .await
    .unwrap();
    assert_eq!(held, 0);
    let (s, p, _) = app.post(&admin, &path, json!({"reason": "twice"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["type"], "https://ebb.dev/problems/invalid-state");
}

/// The transitions of one curtailment, as its event stream sends them: (id, `to`).
fn transitions(text: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut id = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse::<i64>().ok();
        }
        if let Some(v) = line.strip_prefix("data:") {
            let data: Value = serde_json::from_str(v.trim()).unwrap();
            out.push((id.take().unwrap(), data["to"].as_str().unwrap().to_owned()));
        }
    }
    out
}

/// A curtailment's state changes arrive as Server-Sent Events while they happen, the stream ends
/// after a terminal state, and a client resuming with Last-Event-ID gets only what it missed.
#[tokio::test]
async fn an_events_changes_stream_until_it_ends_and_resume_after_the_last_seen() {
    let app = spawn_app().await;
    let (operator, admin, viewer) = (app.key("operator"), app.key("admin"), app.key("viewer"));
    let (s, event, _) = app
        .post(
            &operator,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":3,"reason":"sse"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{event}");
    let id = event["id"].as_str().unwrap().to_owned();
    let url = app.url(&format!("/v1/curtailments/{id}/events"));

    let r = app
        .http
        .get(&url)
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = tokio::spawn(tokio::time::timeout(
        std::time::Duration::from_secs(20),
        r.text(),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (s, _, _) = app
        .post(&operator, &format!("/v1/curtailments/{id}/stop"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = app
        .post(
            &admin,
            &format!("/v1/curtailments/{id}/abort"),
            json!({"reason": "sse test"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let text = body
        .await
        .unwrap()
        .expect("the stream ends after a terminal state")
        .unwrap();
    let seen = transitions(&text);
    let states: Vec<&str> = seen.iter().map(|(_, to)| to.as_str()).collect();
    assert_eq!(states, ["pending", "restoring", "failed"], "{text}");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "ids increase: {seen:?}"
    );

    // Resuming after the first: only the two it missed, then the end.
    let r = app
        .http
        .get(&url)
        .bearer_auth(&viewer)
        .header("Last-Event-ID", seen[0].0.to_string())
        .send()
        .await
        .unwrap();
    let rest = transitions(&r.text().await.unwrap());
    assert_eq!(rest, seen[1..].to_vec());
    // Resuming after the last transition of an ended event ends at once, holding nothing.
    let r = app
        .http
        .get(&url)
        .bearer_auth(&viewer)
        .header("Last-Event-ID", seen[2].0.to_string())
        .send()
        .await
        .unwrap();
    let text = tokio::time::timeout(std::time::Duration::from_secs(5), r.text())
        .await
        .expect("an ended event's stream ends")
        .unwrap();
    assert!(transitions(&text).is_empty(), "{text}");

    let r = app
        .http
        .get(&url)
        .bearer_auth(&viewer)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .http
        .get(&url)
        .bearer_auth(app.key("nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Stop may pace the restore differently: a bigger batch is an admin's call, a slower interval
/// anyone's within the non-admin cap; bad values name their field and stop nothing.
#[tokio::test]
async fn stop_overrides_the_restore_pacing_by_whoever_may() {
    let app = spawn_app().await;
    let (operator, admin) = (app.key("operator"), app.key("admin"));
    let (s, event, _) = app
        .post(
            &operator,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":3,"reason":"pace"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{event}");
    let id = event["id"].as_str().unwrap().to_owned();
    let stop = format!("/v1/curtailments/{id}/stop");
    for (key, body, status, field) in [
        (
            &operator,
            json!({"restore_batch_size_override": 500}),
            StatusCode::FORBIDDEN,
            "restore_batch_size_override",
        ),
        (
            &operator,
            json!({"restore_batch_interval_s_override": 900}),
            StatusCode::FORBIDDEN,
            "restore_batch_interval_s_override",
        ),
        (
            &admin,
            json!({"restore_batch_size_override": 10_001}),
            StatusCode::BAD_REQUEST,
            "restore_batch_size_override",
        ),
        (
            &admin,
            json!({"restore_batch_interval_s_override": 0}),
            StatusCode::BAD_REQUEST,
            "restore_batch_interval_s_override",
        ),
    ] {
        let (s, p, _) = app.post(key, &stop, body.clone()).await;
        assert_eq!(
            (s, p["errors"][0]["field"].clone()),
            (status, json!(field)),
            "{body}: {p}"
        );
    }
    let (_, still) = app.get(&operator, &format!("/v1/curtailments/{id}")).await;
    assert_eq!(still["state"], "pending", "nothing was stopped");
    let (s, e, _) = app
        .post(
            &admin,
            &stop,
            json!({"restore_batch_size_override": 500, "restore_batch_interval_s_override": 5}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["state"], "restoring");
    assert_eq!(
        (
            e["restore_batch_size"].clone(),
            e["restore_batch_interval_s"].clone()
        ),
        (json!(500), json!(5))
    );
    // Once restoring, a stop with overrides is refused rather than ignored; a plain one is not.
    let (s, p, _) = app
        .post(&admin, &stop, json!({"restore_batch_size_override": 7}))
        .await;
    assert_eq!(
        (s, p["type"].clone()),
        (
            StatusCode::CONFLICT,
            json!("https://ebb.dev/problems/invalid-state")
        )
    );
    assert_eq!(app.post(&admin, &stop, json!({})).await.0, StatusCode::OK);
    // A malformed body is a problem, not axum's plain text.
    let r = app
        .http
        .post(app.url(&stop))
        .bearer_auth(&admin)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

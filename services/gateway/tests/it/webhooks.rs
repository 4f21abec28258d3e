//! Issue 8, the webhook API: endpoints made by org-wide admins with a secret shown once, URLs
//! the deployment may not reach refused, changes and rotation, the delivery log of a real
//! curtailment's transitions with redelivery, and every endpoint within its org.

use crate::{App, spawn_app, spawn_app_keyed};
use ebb_gateway::GatewayConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

impl App {
    async fn send(
        &self,
        method: &str,
        key: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
}

const RECEIVER: &str = "https://93.184.215.14/hooks";

#[tokio::test]
async fn endpoints_are_made_by_org_wide_admins_with_a_secret_shown_once() {
    let app = spawn_app().await;
    let admin = app.key("admin");
    let made = |key: String, body: Value| {
        let app = &app;
        async move { app.send("POST", &key, "/v1/webhooks", Some(body)).await }
    };

    // The role matrix, and a key limited to some sites.
    for role in ["viewer", "operator"] {
        let (s, _) = made(app.key(role), json!({"url": RECEIVER})).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{role}");
    }
    let (_, limited, _) = app
        .post(
            &admin,
            "/v1/keys",
            json!({"name": "l", "role": "admin", "sites": ["site-a"]}),
        )
        .await;
    let limited = limited["token"].as_str().unwrap().to_owned();
    let (s, _) = made(limited.clone(), json!({"url": RECEIVER})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a site-limited admin");
    assert_eq!(
        app.send("GET", &limited, "/v1/webhooks", None).await.0,
        StatusCode::FORBIDDEN
    );

    // Bad input names its field and makes nothing.
    for (body, field) in [
        (json!({"url": "ftp://example.com/"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "http://127.0.0.1:9/hook"}), "url"),
        (json!({"url": "http://10.1.2.3/hook"}), "url"),
        (
            json!({"url": "http://169.254.169.254/latest/meta-data"}),
            "url",
        ),
        (json!({"url": "http://[::1]/hook"}), "url"),
        (
            json!({"url": RECEIVER, "event_types": ["ebb.nothing"]}),
            "event_types",
        ),
        (
            json!({"url": RECEIVER, "description": "x".repeat(5000)}),
            "description",
        ),
    ] {
        let (s, p) = made(admin.clone(), body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
    }
    let (s, _) = made(admin.clone(), json!({"url": RECEIVER, "colour": 1})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.send("GET", &admin, "/v1/webhooks", None).await.1["items"],
        json!([])
    );

    let (s, e) = made(
        admin.clone(),
        json!({"url": RECEIVER, "event_types": ["ebb.curtailment.started"], "description": "ops"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let secret = e["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(
        (e["enabled"].clone(), e["event_types"].clone()),
        (json!(true), json!(["ebb.curtailment.started"]))
    );
    let id = e["id"].as_str().unwrap().to_owned();
    let (_, listed) = app.send("GET", &admin, "/v1/webhooks", None).await;
    assert!(!listed.to_string().contains(&secret), "never shown again");
    let (_, one) = app
        .send("GET", &admin, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(one["url"], RECEIVER);
    assert!(one.get("secret").is_none());
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'webhook_created'")
            .fetch_one(app.db.pool())
            .await
            .unwrap();
    assert_eq!(audited, 1);

    // Changes: nothing is refused; disabling and all types.
    let path = format!("/v1/webhooks/{id}");
    let (s, _) = app.send("PATCH", &admin, &path, Some(json!({}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, p) = app
        .send(
            "PATCH",
            &admin,
            &path,
            Some(json!({"url": "http://192.168.1.1/"})),
        )
        .await;
    assert_eq!(
        (s, p["errors"][0]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("url"))
    );
    let (s, e) = app
        .send(
            "PATCH",
            &admin,
            &path,
            Some(json!({"enabled": false, "event_types": null})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(
        (
            e["enabled"].clone(),
            e["disabled_reason"].clone(),
            e["event_types"].clone()
        ),
        (json!(false), json!("manual"), Value::Null)
    );
    let (_, e) = app
        .send("PATCH", &admin, &path, Some(json!({"enabled": true})))
        .await;
    assert_eq!(
        (e["enabled"].clone(), e["disabled_reason"].clone()),
        (json!(true), Value::Null)
    );

    // Rotation: a new secret; the old one signs too for the grace window.
    let (s, r) = app
        .send(
            "POST",
            &admin,
            &format!("{path}/rotate-secret"),
            Some(json!({"grace_s": 3600})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_ne!(r["secret"], secret.as_str());
    let valid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_secret WHERE endpoint_id = $1::uuid AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(&id)
    .fetch_one(app.db.pool())
    .await
    .unwrap();
    assert_eq!(valid, 2);
    let (s, _) = app
        .send(
            "POST",
            &admin,
            &format!("{path}/rotate-secret"),
            Some(json!({"grace_s": 999999999})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Another org's admin sees none of it.
    let other = ebb_testkit::world::World::builder()
        .site("site-w", |s| s.miners(1))
        .api_key(ebb_testkit::world::Key::new("theirs", ebb_bus::Role::Admin))
        .build(&app.db)
        .await
        .unwrap();
    let theirs = other.key("theirs").token.clone();
    assert_eq!(
        app.send("GET", &theirs, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.send("DELETE", &theirs, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.send("GET", &theirs, "/v1/webhooks", None).await.1["items"],
        json!([])
    );

    let (s, _) = app.send("DELETE", &admin, &path, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        app.send("GET", &admin, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_curtailments_transitions_are_in_the_delivery_log_and_can_be_sent_again() {
    let app = spawn_app_keyed(
        GatewayConfig {
            planner_timeout_s: 5,
            webhook_loopback: ebb_webhooks::ssrf::Reach::Allow,
            ..GatewayConfig::default()
        },
        Some(
            ebb_webhooks::Keyring::parse(&ebb_webhooks::Keyring::generate_entry("k").unwrap())
                .unwrap(),
        ),
    )
    .await;
    let admin = app.key("admin");
    // Loopback is allowed in this deployment (as in `ebb dev`).
    let (s, e) = app
        .send(
            "POST",
            &admin,
            "/v1/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/hook"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let id = e["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let (s, ev, _) = app
            .post(
                &app.key("operator"),
                "/v1/curtailments",
                json!({"mode":"kw","target_kw":3,"reason":"hooks"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{ev}");
    }
    let log = format!("/v1/webhooks/{id}/deliveries");
    let (s, page) = app
        .send("GET", &admin, &format!("{log}?page_size=1"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let newest = page["items"][0].clone();
    assert_eq!(newest["event_type"], "ebb.curtailment.started");
    assert_eq!(newest["state"], "pending");
    assert_eq!(newest["attempts"], 0);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, older) = app
        .send(
            "GET",
            &admin,
            &format!("{log}?page_size=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(older["items"].as_array().unwrap().len(), 1);
    assert_eq!(older["next_cursor"], Value::Null);
    assert_ne!(older["items"][0]["id"], newest["id"]);
    let (s, p) = app
        .send("GET", &admin, &format!("{log}?cursor=nope"), None)
        .await;
    assert_eq!(
        (s, p["errors"][0]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("cursor"))
    );

    // A pending delivery is sent without being asked; a failed one can be sent again.
    let again = format!("{log}/{}/redeliver", newest["id"].as_str().unwrap());
    assert_eq!(
        app.send("POST", &admin, &again, None).await.0,
        StatusCode::CONFLICT
    );
    sqlx::query("UPDATE webhook_delivery SET state = 'failed', attempts = 10 WHERE id = $1::uuid")
        .bind(newest["id"].as_str().unwrap())
        .execute(app.db.pool())
        .await
        .unwrap();
    let (s, d) = app.send("POST", &admin, &again, None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{d}");
    assert_eq!(
        (d["state"].clone(), d["attempts"].clone()),
        (json!("pending"), json!(0))
    );
    let missing = format!("{log}/{}/redeliver", uuid::Uuid::now_v7());
    assert_eq!(
        app.send("POST", &admin, &missing, None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn without_a_keyring_no_endpoint_can_be_made() {
    let app = spawn_app_keyed(
        GatewayConfig {
            planner_timeout_s: 5,
            ..GatewayConfig::default()
        },
        None,
    )
    .await;
    let (s, p) = app
        .send(
            "POST",
            &app.key("admin"),
            "/v1/webhooks",
            Some(json!({"url": RECEIVER})),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("EBB_SECRETS_KEY"));
}

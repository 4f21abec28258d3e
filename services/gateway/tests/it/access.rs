//! Issue 9, keys and audit: admins create keys (the token shown once), list them without their
//! secrets, revoke them at once or after a grace window; no key widens its own reach; every
//! write is in the audit log, newest first, filtered and paged.

use crate::{App, spawn_app};
use ebb_bus::Role;
use ebb_testkit::world::{Key, World};
use reqwest::StatusCode;
use serde_json::{Value, json};

impl App {
    async fn delete(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .delete(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    async fn create_key(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.post(key, "/v1/keys", body).await;
        (s, v)
    }
}

#[tokio::test]
async fn keys_are_minted_once_listed_without_secrets_and_revoked_with_grace() {
    let app = spawn_app().await;
    let admin = app.key("admin");

    // The role matrix: only admins manage keys.
    for role in ["viewer", "operator"] {
        let (s, _) = app
            .create_key(&app.key(role), json!({"name": "x", "role": "viewer"}))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{role}");
        assert_eq!(
            app.get(&app.key(role), "/v1/keys").await.0,
            StatusCode::FORBIDDEN
        );
    }
    // Bad input names its field and creates nothing.
    let before = app.get(&admin, "/v1/keys").await.1["items"]
        .as_array()
        .unwrap()
        .len();
    for (body, field) in [
        (json!({"name": "x", "role": "god"}), "role"),
        (json!({"name": " ", "role": "viewer"}), "name"),
        (
            json!({"name": "x", "role": "viewer", "sites": ["site-zz"]}),
            "sites[0]",
        ),
        (
            json!({"name": "x", "role": "viewer", "sites": ["Bad Code"]}),
            "sites[0]",
        ),
        (
            json!({"name": "x", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ] {
        let (s, p) = app.create_key(&admin, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
    }
    let (s, _) = app
        .create_key(&admin, json!({"name": "x", "role": "viewer", "colour": 1}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown field");
    assert_eq!(
        app.get(&admin, "/v1/keys").await.1["items"]
            .as_array()
            .unwrap()
            .len(),
        before
    );

    // Created: the token is in this answer only, and works at once.
    let (s, created) = app
        .create_key(&admin, json!({"name": "ci", "role": "operator"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["sites"], Value::Null);
    assert_eq!(app.get(&token, "/v1/curtailments").await.0, StatusCode::OK);
    let (_, list) = app.get(&admin, "/v1/keys").await;
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(listed.get("token").is_none(), "{listed}");
    assert!(
        listed["last_used_at"].is_string(),
        "its lookup recorded its use: {listed}"
    );
    assert!(!list.to_string().contains(&token[token.len() - 64..]));

    // Revoked with a grace window: it works until then; revoked now: refused at once.
    let (s, k) = app
        .delete(&admin, &format!("/v1/keys/{id}?grace_s=3600"))
        .await;
    assert_eq!(s, StatusCode::OK, "{k}");
    let at: chrono::DateTime<chrono::Utc> = k["revoked_at"].as_str().unwrap().parse().unwrap();
    assert!(at > chrono::Utc::now() + chrono::Duration::minutes(59));
    assert_eq!(app.get(&token, "/v1/curtailments").await.0, StatusCode::OK);
    let (s, _) = app
        .delete(&admin, &format!("/v1/keys/{id}?grace_s=999999999"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, k) = app.delete(&admin, &format!("/v1/keys/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(k["revoked_at"].as_str().unwrap() < at.to_rfc3339().as_str());
    assert_eq!(
        app.get(&token, "/v1/curtailments").await.0,
        StatusCode::UNAUTHORIZED
    );
    // A later, longer grace never brings a revoked key back.
    let (_, k2) = app
        .delete(&admin, &format!("/v1/keys/{id}?grace_s=60"))
        .await;
    assert_eq!(k2["revoked_at"], k["revoked_at"]);
    assert_eq!(
        app.get(&token, "/v1/curtailments").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Another org's key cannot be seen or revoked.
    let other = World::builder()
        .site("site-y", |s| s.miners(1))
        .api_key(Key::new("theirs", Role::Admin))
        .build(&app.db)
        .await
        .unwrap();
    let theirs = other.key("theirs");
    let (s, _) = app.delete(&admin, &format!("/v1/keys/{}", theirs.id)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&theirs.token, "/v1/curtailments").await.0,
        StatusCode::OK
    );
    let (_, list) = app.get(&admin, "/v1/keys").await;
    assert!(!list.to_string().contains(&theirs.id.to_string()));
}

#[tokio::test]
async fn no_key_widens_its_own_reach() {
    let app = spawn_app().await;
    let (s, limited) = app
        .create_key(
            &app.key("admin"),
            json!({"name": "site admin", "role": "admin", "sites": ["site-a"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{limited}");
    assert_eq!(limited["sites"], json!(["site-a"]));
    let limited = limited["token"].as_str().unwrap().to_owned();
    let (s, _) = app
        .create_key(&limited, json!({"name": "wide", "role": "viewer"}))
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "an org-wide key from a site-limited one"
    );
    let (s, k) = app
        .create_key(
            &limited,
            json!({"name": "narrow", "role": "viewer", "sites": ["site-a"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    // It lists and revokes only keys within its sites, and does not read the org's audit log.
    let (_, list) = app.get(&limited, "/v1/keys").await;
    assert!(
        list["items"].as_array().unwrap().iter().all(|k| k["sites"]
            .as_array()
            .is_some_and(|s| s.iter().all(|c| c == "site-a"))),
        "{list}"
    );
    let org_wide = app.world.key("viewer").id;
    let (s, _) = app.delete(&limited, &format!("/v1/keys/{org_wide}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&limited, "/v1/audit").await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn every_write_is_in_the_audit_log_newest_first() {
    let app = spawn_app().await;
    let admin = app.key("admin");
    let operator = app.key("operator");
    let device = app.world.site("site-a").devices[0];
    let (s, _) = app
        .create_key(&admin, json!({"name": "a", "role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = app
        .patch_json(
            &operator,
            &format!("/v1/devices/{}", device.0),
            json!({"maintenance": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = app
        .post(
            &operator,
            "/v1/curtailments",
            json!({"mode":"kw","target_kw":3,"reason":"audit"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    assert_eq!(
        app.get(&operator, "/v1/audit").await.0,
        StatusCode::FORBIDDEN
    );
    let (s, page) = app.get(&admin, "/v1/audit").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let actions: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["curtailment_started", "device_updated", "key_created"]
    );
    let started = &page["items"][0];
    assert_eq!(started["actor_kind"], "api_key");
    assert_eq!(
        started["actor_id"],
        app.world.key("operator").id.to_string()
    );

    // Filtered by action and by actor; paged one at a time through the same three.
    let (_, only) = app.get(&admin, "/v1/audit?action=key_created").await;
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    let by = app.world.key("operator").id;
    let (_, mine) = app.get(&admin, &format!("/v1/audit?actor={by}")).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 2);
    let mut seen = Vec::new();
    let mut path = "/v1/audit?page_size=1".to_owned();
    loop {
        let (s, p) = app.get(&admin, &path).await;
        assert_eq!(s, StatusCode::OK, "{p}");
        seen.push(p["items"][0]["action"].as_str().unwrap().to_owned());
        match p["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/audit?page_size=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, actions);
    let (_, first) = app.get(&admin, "/v1/audit?page_size=1").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    for (q, field) in [
        (format!("page_size=1&action=x&cursor={cursor}"), "cursor"),
        ("actor=me".to_owned(), "actor"),
        ("page_size=0".to_owned(), "page_size"),
        (
            "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z".to_owned(),
            "to",
        ),
    ] {
        let (s, p) = app.get(&admin, &format!("/v1/audit?{q}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{q}: {p}");
    }
    let (_, future) = app.get(&admin, "/v1/audit?from=2100-01-01T00:00:00Z").await;
    assert_eq!(future["items"], json!([]));
}

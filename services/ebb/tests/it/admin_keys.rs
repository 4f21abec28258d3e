//! `ebb admin`'s key commands (issue 9) against a real database: a key limited to a site is
//! created and printed once, listed without its secret, revoked after a grace window; bad input
//! exits non-zero with the flag named and writes nothing.

use std::process::Output;

fn admin(db: &ebb_testkit::TestDb, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
        .arg("admin")
        .args(args)
        .env("DATABASE_URL", db.url())
        .env_remove("NATS_URL")
        .output()
        .expect("ebb admin runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_from_the_command_line() {
    let db = ebb_testkit::TestDb::new().await.unwrap();
    ebb_store::migrate(db.pool()).await.unwrap();
    let org = ok(&admin(&db, &["create-org", "--name", "cli"]));
    ok(&admin(
        &db,
        &[
            "create-site",
            "--org",
            &org,
            "--code",
            "north",
            "--name",
            "North",
        ],
    ));

    // A bad site or a past expiry is refused, naming the flag, and creates nothing.
    for bad in [
        vec!["--site", "south"],
        vec!["--expires-at", "2001-01-01T00:00:00Z"],
    ] {
        let mut args = vec![
            "create-key",
            "--org",
            &org,
            "--role",
            "viewer",
            "--name",
            "x",
        ];
        args.extend(bad.iter().copied());
        let out = admin(&db, &args);
        assert!(!out.status.success(), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
    }
    assert_eq!(ok(&admin(&db, &["list-keys", "--org", &org])), "");

    let token = ok(&admin(
        &db,
        &[
            "create-key",
            "--org",
            &org,
            "--role",
            "operator",
            "--name",
            "north ops",
            "--site",
            "north",
        ],
    ));
    assert!(ebb_store::keys::parse(&token).is_some(), "{token}");
    let listed = ok(&admin(&db, &["list-keys", "--org", &org]));
    assert!(
        listed.contains("operator\tnorth ops\tsites=north"),
        "{listed}"
    );
    assert!(
        !listed.contains(&token[token.len() - 64..]),
        "no secret listed"
    );
    let id = listed.split('\t').next().unwrap().to_owned();

    let out = ok(&admin(
        &db,
        &["revoke-key", "--org", &org, "--id", &id, "--grace-s", "600"],
    ));
    assert!(out.contains("is refused from"), "{out}");
    let (revoked_at, actions): (chrono::DateTime<chrono::Utc>, Vec<String>) = (
        sqlx::query_scalar("SELECT revoked_at FROM api_key WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(db.pool())
            .await
            .unwrap(),
        sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id")
            .fetch_all(db.pool())
            .await
            .unwrap(),
    );
    assert!(revoked_at > chrono::Utc::now() + chrono::Duration::minutes(9));
    assert_eq!(actions, ["key_created", "key_revoked"]);
    let other = uuid::Uuid::now_v7().to_string();
    let out = admin(&db, &["revoke-key", "--org", &org, "--id", &other]);
    assert!(!out.status.success());
}

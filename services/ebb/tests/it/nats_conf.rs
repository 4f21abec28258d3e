//! The configs in `nats/`: each parses (`nats-server -t`), and the users of `nats/users.conf` get
//! exactly the subjects their service needs, checked against a real nats-server: site A's agent
//! cannot publish site B's telemetry nor consume site B's commands, only the reconciler publishes
//! commands, and every JetStream call a service makes at start-up is allowed.

use crate::repo_root;
use async_nats::jetstream;
use ebb_domain::SiteCode;
use ebb_testkit::NatsServer;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The password variables users.conf reads, each set to the user's name in these tests.
const PASSWORDS: &[(&str, &str)] = &[
    ("EBB_NATS_GATEWAY_PASSWORD", "gateway"),
    ("EBB_NATS_PLANNER_PASSWORD", "planner"),
    ("EBB_NATS_RECONCILER_PASSWORD", "reconciler"),
    ("EBB_NATS_WORKER_PASSWORD", "worker"),
    ("EBB_NATS_AGENT_SITE_A_PASSWORD", "agent-site-a"),
    ("EBB_NATS_AGENT_SITE_B_PASSWORD", "agent-site-b"),
    ("EBB_NATS_LEAF_SITE_A_PASSWORD", "leaf-site-a"),
    ("EBB_NATS_OPS_PASSWORD", "ops"),
];

/// nats-server as the test kit finds it: `EBB_NATS_SERVER`, else `PATH`.
fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EBB_NATS_SERVER").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .expect("nats-server is not on PATH and EBB_NATS_SERVER is not set: apt-get install nats-server")
}

/// Runs `nats-server -c <config> -t` with `env`; returns success and the output.
fn test_config(config: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(nats_server_binary());
    cmd.arg("-c").arg(config).arg("-t").current_dir(repo_root());
    for (k, _) in PASSWORDS {
        cmd.env_remove(k);
    }
    cmd.env_remove("EBB_NATS_LEAF_URL");
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("running nats-server -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn all_env() -> Vec<(&'static str, &'static str)> {
    let mut env = PASSWORDS.to_vec();
    env.push((
        "EBB_NATS_LEAF_URL",
        "nats-leaf://leaf-site-a:leaf-site-a@127.0.0.1:7422",
    ));
    env
}

#[test]
fn every_config_parses() {
    let dir = repo_root().join("nats");
    let mut configs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        // users.conf is a fragment: it is checked through hub.conf, which includes it.
        .filter(|p| p.file_name().is_some_and(|n| n != "users.conf"))
        .collect();
    configs.sort();
    let names: Vec<String> = configs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["dev.conf", "hub.conf", "leaf-site-a.conf"],
        "a new config needs a check here"
    );
    for config in &configs {
        let (ok, out) = test_config(config, &all_env());
        assert!(
            ok && out.contains("is valid"),
            "{}: {out}",
            config.display()
        );
    }
}

#[test]
fn a_missing_password_is_a_config_error_not_a_default() {
    let env: Vec<_> = all_env()
        .into_iter()
        .filter(|(k, _)| *k != "EBB_NATS_OPS_PASSWORD")
        .collect();
    let (ok, out) = test_config(&repo_root().join("nats/hub.conf"), &env);
    assert!(!ok, "hub.conf parsed without EBB_NATS_OPS_PASSWORD: {out}");
    assert!(out.contains("EBB_NATS_OPS_PASSWORD"), "{out}");
}

/// `include` paths are relative to the including file, even absolute-looking ones, so a config
/// written to a temp dir reaches users.conf through `..`.
fn relative_to(from_dir: &Path, to: &Path) -> String {
    let ups = from_dir.components().count() - 1;
    let to = to.strip_prefix("/").unwrap();
    format!("{}{}", "../".repeat(ups), to.display())
}

/// The real nats/hub.conf, started by the test kit with its fixed ports made random (the kit's
/// own flags set the client address and port and the store dir), written to a temp dir from which its
/// `include users.conf` still reaches nats/users.conf.
async fn hub() -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(repo_root().join("nats/hub.conf")).unwrap();
    let users = relative_to(dir.path(), &repo_root().join("nats/users.conf"));
    for (from, to) in [
        ("http: 0.0.0.0:8222", "http: \"127.0.0.1:-1\""),
        ("listen: 0.0.0.0:7422", "listen: \"127.0.0.1:-1\""),
        // The kit's -sd names the store; nats-server refuses a second one in the file.
        ("store_dir: \"/data/nats\"", ""),
        ("include users.conf", &format!("include \"{users}\"")),
    ] {
        assert!(
            text.contains(from),
            "nats/hub.conf no longer has {from:?}: update this test"
        );
        text = text.replace(from, to);
    }
    let conf = dir.path().join("hub-test.conf");
    std::fs::write(&conf, text).unwrap();
    let builder = with_passwords(NatsServer::builder().arg("-c").arg(&conf), dir.path());
    (builder.start().await.expect("starting nats/hub.conf"), dir)
}

/// The test kit has no option for the server's environment (and setting this process's would
/// race with other tests), so the passwords travel in a wrapper script in `dir`.
fn with_passwords(
    builder: ebb_testkit::NatsServerBuilder,
    dir: &Path,
) -> ebb_testkit::NatsServerBuilder {
    let wrapper = dir.join("nats-server-with-passwords.sh");
    let mut script = String::from("#!/bin/sh\n");
    for (k, v) in PASSWORDS {
        script.push_str(&format!("export {k}='{v}'\n"));
    }
    script.push_str(&format!(
        "exec '{}' \"$@\"\n",
        nats_server_binary().display()
    ));
    std::fs::write(&wrapper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    builder.binary(wrapper)
}

/// A client of `user` (password = user name) whose permission violations are collected.
struct User {
    client: async_nats::Client,
    violations: Arc<Mutex<Vec<String>>>,
}

async fn connect(url: &str, user: &str) -> User {
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = violations.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    sink.lock().unwrap().push(format!("{e}"));
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting as {user}: {e}"));
    User { client, violations }
}

impl User {
    /// Whether the server reported a violation naming `subject` within a short wait.
    async fn violated(&self, subject: &str) -> bool {
        for _ in 0..40 {
            if self
                .violations
                .lock()
                .unwrap()
                .iter()
                .any(|v| v.contains(subject))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }
}

/// Publishes `subject` as `user` and reports whether the ops user (who sees everything) got it.
async fn can_publish(url: &str, user: &str, subject: &str) -> bool {
    let ops = connect(url, "ops").await;
    let mut sub = ops.client.subscribe(subject.to_owned()).await.unwrap();
    ops.client.flush().await.unwrap();
    let publisher = connect(url, user).await;
    publisher
        .client
        .publish(subject.to_owned(), "x".into())
        .await
        .unwrap();
    publisher.client.flush().await.unwrap();
    let delivered = tokio::time::timeout(Duration::from_millis(500), sub.next())
        .await
        .is_ok();
    if !delivered {
        assert!(
            publisher.violated(subject).await,
            "{user} → {subject}: neither delivered nor refused"
        );
    }
    delivered
}

#[tokio::test]
async fn users_publish_only_their_own_subjects() {
    let (hub, _dir) = hub().await;
    let url = hub.url();
    let check = |user: &'static str, subject: &'static str, allowed: bool| async move {
        assert_eq!(
            can_publish(url, user, subject).await,
            allowed,
            "{user} publishing {subject}"
        );
    };
    check("agent-site-a", "ebb.telemetry.site-a", true).await;
    check("agent-site-a", "ebb.telemetry.site-b", false).await;
    check("agent-site-a", "ebb.result.site-a", true).await;
    check("agent-site-a", "ebb.result.site-b", false).await;
    check("agent-site-a", "ebb.cmd.site-a", false).await;
    check("agent-site-b", "ebb.telemetry.site-b", true).await;
    check("agent-site-b", "ebb.telemetry.site-a", false).await;
    check("reconciler", "ebb.cmd.site-a", true).await;
    check("gateway", "ebb.cmd.site-a", false).await;
    check("planner", "ebb.cmd.site-a", false).await;
    check("worker", "ebb.cmd.site-a", false).await;
    check("worker", "ebb.event.org.event", true).await;
    check("gateway", "ebb.svc.planner.start", true).await;
    check("gateway", "ebb.svc.agent.site-a.scan", true).await;
    check("agent-site-a", "ebb.svc.planner.start", false).await;
}

#[tokio::test]
async fn an_agent_cannot_listen_to_another_sites_commands() {
    let (hub, _dir) = hub().await;
    let agent = connect(hub.url(), "agent-site-a").await;
    let _own = agent.client.subscribe("ebb.cmd.site-a").await.unwrap();
    let _other = agent.client.subscribe("ebb.cmd.site-b").await.unwrap();
    agent.client.flush().await.unwrap();
    assert!(
        agent.violated("ebb.cmd.site-b").await,
        "subscribing to site B's commands was not refused"
    );
    assert!(
        !agent
            .violations
            .lock()
            .unwrap()
            .iter()
            .any(|v| v.contains("\"ebb.cmd.site-a\""))
    );
}

/// The JetStream calls each service makes: the reconciler creates the streams and publishes a
/// batch; site A's agent creates its durable consumer, pulls the batch and acks it; it cannot
/// create site B's consumer.
#[tokio::test]
async fn jetstream_calls_of_each_service_are_allowed() {
    let (hub, _dir) = hub().await;
    let url = hub.url();
    let site_a = SiteCode::parse("site-a").unwrap();
    let site_b = SiteCode::parse("site-b").unwrap();

    let reconciler = jetstream::new(connect(url, "reconciler").await.client);
    ebb_bus::streams::ensure_streams(&reconciler)
        .await
        .expect("the reconciler creates the streams");
    ebb_bus::streams::ensure_consumer(
        &reconciler,
        ebb_bus::streams::RESULT,
        ebb_bus::streams::reconciler_results(),
    )
    .await
    .expect("the reconciler's results consumer");
    ebb_bus::streams::ensure_consumer(
        &reconciler,
        ebb_bus::streams::TELEMETRY,
        ebb_bus::streams::reconciler_telemetry(),
    )
    .await
    .expect("the reconciler's telemetry consumer");
    ebb_bus::publish::publish_acked(
        &reconciler,
        ebb_bus::subjects::cmd(&site_a),
        "batch-1",
        b"batch".to_vec(),
        None,
    )
    .await
    .expect("the reconciler publishes a command batch");

    let worker = jetstream::new(connect(url, "worker").await.client);
    ebb_bus::streams::ensure_streams(&worker)
        .await
        .expect("the worker looks the streams up");

    let mut agent = jetstream::new(connect(url, "agent-site-a").await.client);
    // A refused API call is never answered: fail it in 1 s, not the default 5 s per request.
    agent.set_timeout(Duration::from_secs(1));
    ebb_bus::streams::ensure_streams(&agent)
        .await
        .expect("the agent looks the streams up");
    let consumer = ebb_bus::streams::ensure_consumer(
        &agent,
        ebb_bus::streams::CMD,
        ebb_bus::streams::agent_consumer(&site_a),
    )
    .await
    .expect("site A's agent creates its consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("pulling");
    let message = batch.next().await.expect("a batch").expect("a message");
    assert_eq!(&message.payload[..], b"batch");
    message.ack().await.expect("acking");
    ebb_bus::publish::publish_acked(
        &agent,
        ebb_bus::subjects::result(&site_a),
        "result-1",
        b"r".to_vec(),
        None,
    )
    .await
    .expect("the agent publishes its results");
    let denied = ebb_bus::streams::ensure_consumer(
        &agent,
        ebb_bus::streams::CMD,
        ebb_bus::streams::agent_consumer(&site_b),
    )
    .await;
    assert!(denied.is_err(), "site A's agent created site B's consumer");
}

/// Request/reply through the NATS service API, as the services use it: the planner answers the
/// gateway and the agents; site A's agent answers the gateway's scans; nobody else can serve them.
#[tokio::test]
async fn services_answer_requests_from_their_callers() {
    use async_nats::service::ServiceExt;
    let (hub, _dir) = hub().await;
    let url = hub.url();

    // Serves `group.verb` as `user`, answering "ok".
    let serve = |user: &'static str,
                 name: &'static str,
                 group: &'static str,
                 verb: &'static str| async move {
        let who = connect(url, user).await;
        let service = who
            .client
            .service_builder()
            .start(name, "0.0.0")
            .await
            .expect("starting a service");
        let mut endpoint = service
            .group(group)
            .endpoint(verb)
            .await
            .expect("adding an endpoint");
        let task = tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                request.respond(Ok("ok".into())).await.expect("responding");
            }
        });
        who.client.flush().await.unwrap();
        (who, service, task)
    };
    let ask = |user: &'static str, subject: &'static str| async move {
        let who = connect(url, user).await;
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            who.client.request(subject.to_owned(), "q".into()),
        )
        .await;
        matches!(reply, Ok(Ok(m)) if &m.payload[..] == b"ok")
    };

    let (_planner, _s1, t1) = serve("planner", "ebb-planner", "ebb.svc.planner", "inventory").await;
    assert!(
        ask("gateway", "ebb.svc.planner.inventory").await,
        "the gateway asks the planner"
    );
    assert!(
        ask("agent-site-a", "ebb.svc.planner.inventory").await,
        "an agent asks the planner for its inventory"
    );
    let (_agent, _s2, t2) =
        serve("agent-site-a", "ebb-agent", "ebb.svc.agent.site-a", "scan").await;
    assert!(
        ask("gateway", "ebb.svc.agent.site-a.scan").await,
        "the gateway asks site A's agent to scan"
    );

    // Site A's agent cannot serve site B's endpoint: its subscription is refused.
    let imposter = connect(url, "agent-site-a").await;
    let _sub = imposter
        .client
        .subscribe("ebb.svc.agent.site-b.scan")
        .await
        .unwrap();
    imposter.client.flush().await.unwrap();
    assert!(
        imposter.violated("ebb.svc.agent.site-b.scan").await,
        "site A's agent listened on site B's scan endpoint"
    );
    t1.abort();
    t2.abort();
}

/// A nats-server this test started directly (the test kit's always enables JetStream, which a
/// site leaf node must not: its JetStream API calls have to reach the hub's streams).
struct Process {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `log` until it contains `needle`; returns the log.
async fn wait_for_log(log: &Path, needle: &str) -> String {
    for _ in 0..400 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{} never said {needle:?}:\n{}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The site leaf node of nats/leaf-site-a.conf, connected to a hub with users.conf: site A's
/// agent, connected to its local leaf, reaches the hub's JetStream and publishes its own
/// telemetry; site B's telemetry and commands never cross the leaf connection.
#[tokio::test]
async fn a_site_leaf_node_carries_only_its_sites_subjects() {
    let (hub, _hub_dir) = hub().await;
    let hub_log = wait_for_log(
        &hub.store_dir().join("nats.log"),
        "Listening for leafnode connections on ",
    )
    .await;
    let leaf_port = hub_log
        .lines()
        .find_map(|l| {
            l.split_once("Listening for leafnode connections on ")
                .map(|(_, a)| a.trim().to_owned())
        })
        .and_then(|a| a.rsplit_once(':').map(|(_, p)| p.to_owned()))
        .expect("the hub's leafnode port");

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("leaf.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(nats_server_binary());
    // The real config; only its ports are replaced, so it runs beside anything on this machine.
    cmd.arg("-c")
        .arg(repo_root().join("nats/leaf-site-a.conf"))
        .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1"]);
    cmd.envs(PASSWORDS.iter().copied());
    cmd.env(
        "EBB_NATS_LEAF_URL",
        format!("nats-leaf://leaf-site-a:leaf-site-a@127.0.0.1:{leaf_port}"),
    );
    cmd.stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(std::process::Stdio::null());
    let leaf = Process {
        child: cmd.spawn().expect("starting the leaf node"),
        log,
    };
    let leaf_log = wait_for_log(&leaf.log, "Leafnode connection created").await;
    let leaf_url = leaf_log
        .lines()
        .find_map(|l| {
            l.split_once("Listening for client connections on ")
                .map(|(_, a)| format!("nats://{}", a.trim()))
        })
        .expect("the leaf's client port");

    // The agent connects to its local leaf as `agent`, with site A's agent password.
    let agent =
        async_nats::ConnectOptions::with_user_and_password("agent".into(), "agent-site-a".into())
            .connect(leaf_url.as_str())
            .await
            .expect("the agent connects to its leaf node");
    let ops = connect(hub.url(), "ops").await;
    let mut telemetry = ops.client.subscribe("ebb.telemetry.>").await.unwrap();
    ops.client.flush().await.unwrap();

    // Interest crosses the leaf connection asynchronously: publish until the hub sees it.
    let mut seen = None;
    for _ in 0..80 {
        agent
            .publish("ebb.telemetry.site-a", "a".into())
            .await
            .unwrap();
        agent.flush().await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), telemetry.next()).await
        {
            seen = Some(m.subject.to_string());
            break;
        }
    }
    assert_eq!(
        seen.as_deref(),
        Some("ebb.telemetry.site-a"),
        "site A's telemetry reaches the hub through the leaf"
    );
    agent
        .publish("ebb.telemetry.site-b", "b".into())
        .await
        .unwrap();
    agent
        .publish("ebb.telemetry.site-a", "a2".into())
        .await
        .unwrap();
    agent.flush().await.unwrap();
    // Messages from one connection stay in order: if site B's had crossed, it would come first.
    let next = tokio::time::timeout(Duration::from_secs(2), telemetry.next())
        .await
        .expect("the second site A sample")
        .unwrap();
    assert_eq!(
        next.subject.as_str(),
        "ebb.telemetry.site-a",
        "site B's telemetry crossed site A's leaf connection"
    );

    // JetStream lives on the hub: the reconciler publishes a batch for each site; site A's agent
    // consumes its own through the leaf, and cannot even create site B's consumer.
    let site_a = SiteCode::parse("site-a").unwrap();
    let site_b = SiteCode::parse("site-b").unwrap();
    let reconciler = jetstream::new(connect(hub.url(), "reconciler").await.client);
    ebb_bus::streams::ensure_streams(&reconciler)
        .await
        .expect("creating the streams");
    for site in [&site_a, &site_b] {
        ebb_bus::publish::publish_acked(
            &reconciler,
            ebb_bus::subjects::cmd(site),
            &format!("batch-{site}"),
            site.to_string().into_bytes(),
            None,
        )
        .await
        .expect("publishing a batch");
    }
    let js = jetstream::new(agent);
    let consumer = ebb_bus::streams::ensure_consumer(
        &js,
        ebb_bus::streams::CMD,
        ebb_bus::streams::agent_consumer(&site_a),
    )
    .await
    .expect("site A's agent creates its consumer on the hub through the leaf");
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let message = batch.next().await.expect("a batch").expect("a message");
    assert_eq!(&message.payload[..], b"site-a");
    message.ack().await.unwrap();
    ebb_bus::publish::publish_acked(
        &js,
        ebb_bus::subjects::result(&site_a),
        "result-a",
        b"r".to_vec(),
        None,
    )
    .await
    .expect("site A's results reach the hub's RESULT stream through the leaf");
    let denied = ebb_bus::streams::ensure_consumer(
        &js,
        ebb_bus::streams::CMD,
        ebb_bus::streams::agent_consumer(&site_b),
    )
    .await;
    assert!(
        denied.is_err(),
        "site A's leaf let its agent create site B's consumer"
    );
}

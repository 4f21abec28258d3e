//! The NATS auth of a deployment, against a real nats-server running the project's own
//! `nats/hub.conf` in operator mode with TLS, and credentials minted by `ebb admin`'s authority
//! (issue 7). A client holding one identity's credentials tries what a compromised site or
//! service would; each attempt is refused, and the identity's own work still succeeds.

use crate::repo_root;
use async_nats::jetstream;
use ebb_domain::{OrgId, SiteCode};
use ebb_natsauth::tls::TlsFiles;
use ebb_natsauth::{Authority, Identity};
use ebb_testkit::NatsServer;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn site(code: &str) -> SiteCode {
    SiteCode::parse(code).unwrap()
}

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

/// The real nats/hub.conf in a temp dir, next to a fresh authority (`auth/`) and TLS files
/// (`tls/`), its fixed ports and paths replaced so that it runs beside anything on this machine.
struct Hub {
    server: NatsServer,
    dir: tempfile::TempDir,
    authority: Authority,
    tls: TlsFiles,
    /// Public keys minted so far, by user name (for revocation).
    minted: Mutex<BTreeMap<String, Vec<String>>>,
}

/// Writes hub.conf into `dir` with its ports and paths made local (as `ebb dev` does); returns
/// its path.
fn local_hub_conf(dir: &Path, tls: &TlsFiles) -> PathBuf {
    let text = ebb::localhub::hub_conf(&ebb::localhub::Local {
        listen: "127.0.0.1:-1",
        http: "127.0.0.1:-1",
        leaf: "127.0.0.1:-1",
        // The kit's -sd names the store; nats-server refuses a second one in the file.
        store: None,
        tls,
    })
    .unwrap();
    let conf = dir.join("hub.conf");
    std::fs::write(&conf, text).unwrap();
    conf
}

impl Hub {
    async fn start() -> Hub {
        ebb_testkit::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::load_or_create(&dir.path().join("auth")).unwrap();
        authority.write_server_auth(&BTreeMap::new()).unwrap();
        std::fs::write(
            dir.path().join("auth").join("sys.creds"),
            authority.mint_system_user("sys").unwrap().creds,
        )
        .unwrap();
        let tls = ebb_natsauth::tls::generate(
            &dir.path().join("tls"),
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
        let conf = local_hub_conf(dir.path(), &tls);
        let server = NatsServer::builder()
            .arg("-c")
            .arg(&conf)
            .start()
            .await
            .expect("starting nats/hub.conf in operator mode");
        Hub {
            server,
            dir,
            authority,
            tls,
            minted: Mutex::default(),
        }
    }

    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.server.port())
    }

    /// Mints `identity`'s credentials into the temp dir; returns the file.
    fn creds(&self, identity: &Identity) -> PathBuf {
        let minted = self.authority.mint(identity).unwrap();
        self.minted
            .lock()
            .unwrap()
            .entry(minted.name.clone())
            .or_default()
            .push(minted.public_key.clone());
        let path = self
            .dir
            .path()
            .join(format!("{}-{}.creds", minted.name, minted.public_key));
        std::fs::write(&path, minted.creds).unwrap();
        path
    }

    /// A client holding `identity`'s credentials, as the runtime connects one (its own inbox
    /// prefix, TLS with the deployment's CA), whose permission violations are collected.
    async fn connect(&self, identity: &Identity) -> User {
        self.connect_creds(&self.creds(identity)).await.unwrap()
    }

    async fn connect_creds(&self, creds: &Path) -> Result<User, async_nats::ConnectError> {
        let text = std::fs::read_to_string(creds).unwrap();
        let prefix = ebb_natsauth::creds::inbox_prefix(&text).unwrap();
        let violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = violations.clone();
        let client = async_nats::ConnectOptions::with_credentials_file(creds)
            .await
            .unwrap()
            .custom_inbox_prefix(prefix)
            .add_root_certificates(self.tls.ca.clone())
            .require_tls(true)
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        sink.lock().unwrap().push(format!("{e}"));
                    }
                }
            })
            .connect(self.url())
            .await?;
        Ok(User { client, violations })
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.server.store_dir().join("nats.log");
            let keep =
                std::env::temp_dir().join(format!("ebb-nats-auth-{}.log", self.server.port()));
            let _ = std::fs::copy(&log, &keep);
            eprintln!("the hub's log is kept in {}", keep.display());
        }
    }
}

/// A connected user and the violations the server reported to it.
struct User {
    client: async_nats::Client,
    violations: Arc<Mutex<Vec<String>>>,
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

    fn js(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// A JetStream context for calls that must be refused: a refused API call is never
    /// answered, so it fails on a short timeout instead of the default 5 s.
    fn js_refused(&self) -> jetstream::Context {
        let mut js = jetstream::new(self.client.clone());
        js.set_timeout(Duration::from_millis(300));
        js
    }
}

/// Waits until the server has processed everything `user` sent so far. async-nats's `flush`
/// only empties the client's buffer, so without this a subscription may reach the server after
/// another connection's publish. Needs a user that may publish and subscribe (ops).
async fn sync(user: &User) {
    let subject = format!("sync.{}", uuid::Uuid::now_v7().simple());
    let mut sub = user.client.subscribe(subject.clone()).await.unwrap();
    user.client.publish(subject, "".into()).await.unwrap();
    user.client.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a round trip to the server");
}

/// Whether `user` may subscribe to `subject`: a refused subscription is reported by the server
/// (which proves it processed it); an accepted one receives what the ops user publishes on
/// `probe`.
async fn can_subscribe(hub: &Hub, user: &User, subject: &str, probe: &str) -> bool {
    let mut sub = user.client.subscribe(subject.to_owned()).await.unwrap();
    user.client.flush().await.unwrap();
    if user.violated(subject).await {
        return false;
    }
    let ops = hub.connect(&Identity::Ops).await;
    ops.client
        .publish(probe.to_owned(), "probe".into())
        .await
        .unwrap();
    ops.client.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .is_ok();
    assert!(got, "subscribing {subject}: neither delivered nor refused");
    got
}

/// Whether `user`'s publish on `subject` reaches the ops user (who sees everything).
async fn can_publish(hub: &Hub, user: &User, subject: &str) -> bool {
    // A fresh operator connection per check: nothing one check left behind affects the next.
    let ops = hub.connect(&Identity::Ops).await;
    let mut sub = ops.client.subscribe(subject.to_owned()).await.unwrap();
    sync(&ops).await;
    user.client
        .publish(subject.to_owned(), "x".into())
        .await
        .unwrap();
    user.client.flush().await.unwrap();
    // A refused publish is reported at once; wait longer for a delivery on a loaded machine.
    let delivered = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            tokio::select! {
                m = sub.next() => return m.is_some(),
                () = tokio::time::sleep(Duration::from_millis(25)) => {
                    if user.violations.lock().unwrap().iter().any(|v| v.contains(subject)) {
                        return false;
                    }
                }
            }
        }
    })
    .await
    .unwrap_or(false);
    if !delivered {
        assert!(
            user.violated(subject).await,
            "publishing {subject}: neither delivered nor refused ({:?})",
            user.violations.lock().unwrap()
        );
    }
    delivered
}

/// `caller` asks on `subject`; `server` (subscribed on `pattern`) answers `answer` on the
/// caller's own inbox. The caller retries while nobody listens yet (the server's subscription
/// may reach the server after the first request). Returns the answer.
async fn ask(caller: &User, subject: &str, server: User, pattern: &str, answer: &str) -> String {
    let mut endpoint = server.client.subscribe(pattern.to_owned()).await.unwrap();
    server.client.flush().await.unwrap();
    let text = answer.to_owned();
    let task = tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            server
                .client
                .publish(request.reply.unwrap(), text.clone().into())
                .await
                .unwrap();
            server.client.flush().await.unwrap();
        }
    });
    for _ in 0..100 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            caller.client.request(subject.to_owned(), "x".into()),
        )
        .await
        {
            Ok(Ok(reply)) => {
                task.abort();
                return String::from_utf8_lossy(&reply.payload).into_owned();
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("asking {subject}: {other:?}"),
        }
    }
    panic!("nobody answered {subject}");
}

/// Streams as the reconciler and the worker create them, and one command batch per site.
async fn streams_and_batches(hub: &Hub) {
    let reconciler = hub.connect(&Identity::Reconciler).await;
    let js = reconciler.js();
    for cfg in ebb_bus::streams::configs() {
        if cfg.name != ebb_bus::streams::EVENT {
            js.get_or_create_stream(cfg)
                .await
                .expect("the reconciler creates its streams");
        }
    }
    let worker = hub.connect(&Identity::Worker).await;
    let event = ebb_bus::streams::configs()
        .into_iter()
        .find(|c| c.name == ebb_bus::streams::EVENT)
        .unwrap();
    worker
        .js()
        .get_or_create_stream(event)
        .await
        .expect("the worker creates the event stream");
    for code in ["site-a", "site-b"] {
        ebb_bus::publish::publish_acked(
            &js,
            ebb_bus::subjects::cmd(&site(code)),
            &format!("batch-{code}"),
            code.as_bytes().to_vec(),
        )
        .await
        .expect("the reconciler publishes a command batch");
    }
}

/// The JetStream attacks every non-ops identity must be refused.
async fn jetstream_attacks_are_refused(user: &User, who: &str) {
    let js = user.js_refused();
    let site_b = site("site-b");
    // Taking every site's commands: a consumer on CMD filtered on ebb.cmd.>, under any name.
    for durable in ["agent-site-a", "agent-site-b", "sneaky"] {
        let cfg = jetstream::consumer::pull::Config {
            durable_name: Some(durable.into()),
            filter_subject: "ebb.cmd.>".into(),
            ..ebb_bus::streams::agent_consumer(&site_b)
        };
        assert!(
            js.create_consumer_on_stream(cfg, ebb_bus::streams::CMD)
                .await
                .is_err(),
            "{who} created a CMD consumer {durable} on ebb.cmd.>"
        );
    }
    // Stream creation (of a stream it does not own), deletion and purge.
    let rogue = async_nats::jetstream::stream::Config {
        name: "ROGUE".into(),
        subjects: vec!["rogue.>".into()],
        ..Default::default()
    };
    assert!(
        js.create_stream(rogue).await.is_err(),
        "{who} created a stream"
    );
    for stream in ["CMD", "RESULT", "TELEMETRY", "EVENT"] {
        assert!(
            js.delete_stream(stream).await.is_err(),
            "{who} deleted {stream}"
        );
        let purge: Result<serde_json::Value, _> = js
            .request(format!("STREAM.PURGE.{stream}"), &serde_json::json!({}))
            .await;
        assert!(purge.is_err(), "{who} purged {stream}");
    }
    // Reading site B's command consumer, and acking one of its deliveries.
    let next: Result<serde_json::Value, _> = js
        .request(
            "CONSUMER.MSG.NEXT.CMD.agent-site-b".to_owned(),
            &serde_json::json!({"batch": 1, "expires": 100_000_000}),
        )
        .await;
    assert!(next.is_err(), "{who} pulled site B's commands");
    let ack = "$JS.ACK.CMD.agent-site-b.1.1.1.1700000000000000000.0";
    user.client.publish(ack, "+ACK".into()).await.unwrap();
    user.client.flush().await.unwrap();
    assert!(user.violated(ack).await, "{who} acked a site B delivery");
}

#[tokio::test]
async fn a_site_agent_reaches_nothing_of_another_site_and_does_its_own_work() {
    let hub = Hub::start().await;
    streams_and_batches(&hub).await;
    let a = hub.connect(&Identity::Agent(site("site-a"))).await;

    // Subscriptions: every inbox, everything, another site's commands, every site's commands.
    for (subject, probe) in [
        ("_INBOX.>", "_INBOX.someone.else"),
        (">", "ebb.cmd.site-b"),
        ("ebb.cmd.site-b", "ebb.cmd.site-b"),
        ("ebb.cmd.>", "ebb.cmd.site-b"),
        ("_INBOX_agent-site-b.>", "_INBOX_agent-site-b.x"),
    ] {
        assert!(
            !can_subscribe(&hub, &a, subject, probe).await,
            "site A's agent subscribed to {subject}"
        );
    }
    // Publishing another site's results and telemetry, or any command.
    for subject in [
        "ebb.result.site-b",
        "ebb.telemetry.site-b",
        "ebb.cmd.site-a",
        "ebb.svc.planner.start",
    ] {
        assert!(
            !can_publish(&hub, &a, subject).await,
            "site A's agent published {subject}"
        );
    }
    // Site B's inventory and registration endpoints.
    for subject in [
        ebb_bus::subjects::planner::inventory(&site("site-b")),
        ebb_bus::subjects::planner::register(&site("site-b")),
    ] {
        let asked = a.client.request(subject.clone(), "x".into()).await.is_ok();
        assert!(!asked, "site A's agent called {subject}");
        assert!(a.violated(&subject).await, "{subject} was not refused");
    }
    jetstream_attacks_are_refused(&a, "site A's agent").await;

    // Its own work: its consumer with its own filter, its batch, its ack, its results and
    // telemetry into their streams, its own inventory endpoint answered.
    let js = a.js();
    let consumer = ebb_bus::streams::ensure_consumer(
        &js,
        ebb_bus::streams::CMD,
        ebb_bus::streams::agent_consumer(&site("site-a")),
    )
    .await
    .expect("site A's agent creates its own consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("pulling");
    let message = batch.next().await.expect("a batch").expect("a message");
    assert_eq!(&message.payload[..], b"site-a", "its own site's batch");
    message.ack().await.expect("acking its own delivery");
    for subject in [
        ebb_bus::subjects::result(&site("site-a")),
        ebb_bus::subjects::telemetry(&site("site-a")),
    ] {
        ebb_bus::publish::publish_acked(&js, subject.clone(), "m-1", b"r".to_vec())
            .await
            .unwrap_or_else(|e| panic!("site A's agent publishes {subject}: {e}"));
    }
    let planner = hub.connect(&Identity::Planner).await;
    let reply = ask(
        &a,
        &ebb_bus::subjects::planner::inventory(&site("site-a")),
        planner,
        "ebb.svc.planner.inventory.*",
        "inventory",
    )
    .await;
    assert_eq!(reply, "inventory", "site A's agent gets its inventory");
}

#[tokio::test]
async fn each_service_reaches_only_what_it_owns() {
    let hub = Hub::start().await;
    streams_and_batches(&hub).await;
    for identity in [
        Identity::Gateway,
        Identity::Planner,
        Identity::Reconciler,
        Identity::Worker,
        Identity::Integration {
            name: "erp".into(),
            org: OrgId::new(),
        },
    ] {
        let who = identity.name();
        let user = hub.connect(&identity).await;
        for (subject, probe) in [
            ("_INBOX.>", "_INBOX.someone.else"),
            (">", "ebb.result.site-b"),
            ("ebb.cmd.>", "ebb.cmd.site-b"),
            ("_INBOX_agent-site-a.>", "_INBOX_agent-site-a.x"),
        ] {
            assert!(
                !can_subscribe(&hub, &user, subject, probe).await,
                "{who} subscribed to {subject}"
            );
        }
        for subject in ["ebb.result.site-b", "ebb.telemetry.site-b"] {
            assert!(
                !can_publish(&hub, &user, subject).await,
                "{who} published {subject}"
            );
        }
        assert_eq!(
            can_publish(&hub, &user, "ebb.cmd.site-a").await,
            identity == Identity::Reconciler,
            "{who} publishing a command batch"
        );
        // Only the planner reads live telemetry this way (its fleet snapshot); the reconciler
        // reads it through its own JetStream consumer.
        assert_eq!(
            can_subscribe(&hub, &user, "ebb.telemetry.*", "ebb.telemetry.site-b").await,
            identity == Identity::Planner,
            "{who} subscribing to telemetry"
        );
        jetstream_attacks_are_refused(&user, &who).await;
    }
    // A service creates only the streams it owns: the worker not the reconciler's, and back.
    let worker = hub.connect(&Identity::Worker).await;
    let cmd = ebb_bus::streams::configs().remove(0);
    assert!(worker.js_refused().create_stream(cmd).await.is_err());
    let reconciler = hub.connect(&Identity::Reconciler).await;
    let event = ebb_bus::streams::configs().pop().unwrap();
    assert!(
        reconciler
            .js_refused()
            .create_stream(async_nats::jetstream::stream::Config {
                name: "EVENT2".into(),
                ..event
            })
            .await
            .is_err()
    );
    // Their own work: the gateway asks the planner, which answers; the worker publishes events.
    let planner = hub.connect(&Identity::Planner).await;
    let gateway = hub.connect(&Identity::Gateway).await;
    let reply = ask(
        &gateway,
        "ebb.svc.planner.start",
        planner,
        "ebb.svc.planner.>",
        "started",
    )
    .await;
    assert_eq!(reply, "started", "the gateway asks the planner");
    assert!(
        !can_publish(&hub, &gateway, "ebb.svc.planner.inventory.site-a").await,
        "the gateway called an agent's endpoint"
    );
    ebb_bus::publish::publish_acked(
        &worker.js(),
        "ebb.event.org.event".into(),
        "e-1",
        b"e".to_vec(),
    )
    .await
    .expect("the worker publishes the event feed");
}

#[tokio::test]
async fn a_revoked_site_credential_is_refused_on_its_next_connect_without_a_restart() {
    let hub = Hub::start().await;
    let creds = hub.creds(&Identity::Agent(site("site-a")));
    let first = hub
        .connect_creds(&creds)
        .await
        .expect("a fresh credential connects");
    drop(first);
    let other = hub.creds(&Identity::Agent(site("site-b")));

    let keys = hub.minted.lock().unwrap()["agent-site-a"].clone();
    let now = chrono::Utc::now().timestamp();
    let revocations: BTreeMap<String, i64> = keys.into_iter().map(|k| (k, now)).collect();
    let jwt = hub.authority.write_account_jwts(&revocations).unwrap();
    let ca = hub.tls.ca.clone();
    ebb::admin::nats::push_account(
        &ebb::admin::nats::Hub {
            url: &hub.url(),
            ca: Some(&ca),
        },
        &hub.dir.path().join("auth").join("sys.creds"),
        &jwt,
    )
    .await
    .expect("the running hub takes the re-issued account");

    let mut refused = false;
    for _ in 0..40 {
        match hub.connect_creds(&creds).await {
            Err(e) => {
                refused = true;
                assert!(
                    e.to_string().to_lowercase().contains("authorization"),
                    "refused for another reason: {e}"
                );
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(refused, "the revoked credential still connects");
    hub.connect_creds(&other)
        .await
        .expect("another site's credential still connects");
}

#[tokio::test]
async fn a_plain_text_client_is_refused() {
    let hub = Hub::start().await;
    let url = format!("nats://127.0.0.1:{}", hub.server.port());
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::ConnectOptions::new().connect(url),
    )
    .await;
    assert!(
        !matches!(plain, Ok(Ok(_))),
        "a client without TLS or credentials connected"
    );
}

/// Runs `nats-server -c <config> -t`; returns success and the output.
fn test_config(config: &Path, env: &[(&str, String)]) -> (bool, String) {
    let out = Command::new(nats_server_binary())
        .arg("-c")
        .arg(config)
        .arg("-t")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("running nats-server -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_config_parses_and_monitoring_is_on_loopback() {
    let mut configs: Vec<String> = std::fs::read_dir(repo_root().join("nats"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    configs.sort();
    assert_eq!(
        configs,
        ["hub.conf", "leaf-site.conf"],
        "a new config needs a check here"
    );
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::load_or_create(&dir.path().join("auth")).unwrap();
    authority.write_server_auth(&BTreeMap::new()).unwrap();
    let tls = ebb_natsauth::tls::generate(&dir.path().join("tls"), &["localhost".into()]).unwrap();
    let (ok, out) = test_config(&local_hub_conf(dir.path(), &tls), &[]);
    assert!(ok && out.contains("is valid"), "hub.conf: {out}");

    for conf in configs {
        let text = std::fs::read_to_string(repo_root().join("nats").join(&conf)).unwrap();
        let http: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("http:"))
            .collect();
        assert_eq!(
            http,
            ["http: 127.0.0.1:8222"],
            "{conf}: monitoring on loopback only"
        );
    }
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

/// The site leaf node of nats/leaf-site.conf, connected over TLS with site A's agent
/// credentials: site A's agent, connected to its local leaf, reaches the hub's JetStream and
/// publishes its own telemetry; site B's telemetry and commands never cross the leaf connection.
#[tokio::test]
async fn a_site_leaf_node_carries_only_its_sites_subjects() {
    let hub = Hub::start().await;
    streams_and_batches(&hub).await;
    let hub_log = wait_for_log(
        &hub.server.store_dir().join("nats.log"),
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

    let creds = hub.creds(&Identity::Agent(site("site-a")));
    let mut text = std::fs::read_to_string(repo_root().join("nats/leaf-site.conf")).unwrap();
    let creds_q = format!("\"{}\"", creds.display());
    let ca_q = format!("\"{}\"", hub.tls.ca.display());
    for (from, to) in [
        ("listen: 127.0.0.1:4222", "listen: \"127.0.0.1:-1\""),
        ("http: 127.0.0.1:8222", "http: \"127.0.0.1:-1\""),
        ("\"/etc/nats/agent.creds\"", creds_q.as_str()),
        ("\"/etc/nats/tls/ca.pem\"", ca_q.as_str()),
    ] {
        assert!(
            text.contains(from),
            "nats/leaf-site.conf no longer has {from:?}: update this test"
        );
        text = text.replace(from, to);
    }
    let conf = hub.dir.path().join("leaf.conf");
    std::fs::write(&conf, text).unwrap();
    let log = hub.dir.path().join("leaf.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(nats_server_binary());
    cmd.arg("-c").arg(&conf);
    cmd.env("EBB_NATS_LEAF_URL", format!("tls://127.0.0.1:{leaf_port}"));
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

    // The agent connects to its local leaf with its own credentials and inbox prefix.
    let agent = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .unwrap()
        .custom_inbox_prefix("_INBOX_agent-site-a")
        .connect(leaf_url.as_str())
        .await
        .expect("the agent connects to its leaf node");
    let ops = hub.connect(&Identity::Ops).await;
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

    // JetStream lives on the hub: site A's agent consumes its own batch through the leaf, and
    // cannot even create site B's consumer.
    let mut js = jetstream::new(agent);
    js.set_timeout(Duration::from_secs(2));
    let consumer = ebb_bus::streams::ensure_consumer(
        &js,
        ebb_bus::streams::CMD,
        ebb_bus::streams::agent_consumer(&site("site-a")),
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
        ebb_bus::subjects::result(&site("site-a")),
        "result-a",
        b"r".to_vec(),
    )
    .await
    .expect("site A's results reach the hub's RESULT stream through the leaf");
    let denied = ebb_bus::streams::ensure_consumer(
        &js,
        ebb_bus::streams::CMD,
        ebb_bus::streams::agent_consumer(&site("site-b")),
    )
    .await;
    assert!(
        denied.is_err(),
        "site A's leaf let its agent create site B's consumer"
    );
}

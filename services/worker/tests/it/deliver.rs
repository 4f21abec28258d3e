//! Webhook delivery against a real database and real HTTP receivers on loopback: a receiver built
//! on the independent `standardwebhooks` crate verifies every delivery, in order, also during a
//! secret rotation; two workers send each delivery once; a failure backs off and is retried; 410
//! disables the endpoint; a worker killed mid-delivery leaves it to another once its lease
//! lapses; a refused port, a stalled TLS handshake and a full https exchange record sane phases;
//! SSRF targets are refused without a connection; a redirect is not followed; a big response
//! body is capped with one WARN; a slow endpoint delays no other; a request still running when
//! the drain ends gives its claim back.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ebb_domain::OrgId;
use ebb_store::PgPool;
use ebb_store::webhooks::{
    self as hooks, Delivery, DeliveryState, DisabledReason, Endpoint, NewEndpoint,
};
use ebb_testkit::TestDb;
use ebb_webhooks::endpoint::{Description, EventFilter};
use ebb_webhooks::ssrf::{Policy, WebhookUrl};
use ebb_webhooks::{Event, EventType, Keyring, MessageId, SigningSecret};
use ebb_worker::WorkerConfig;
use ebb_worker::config::Reach;
use ebb_worker::deliver::send::{Sender, Timeouts};
use ebb_worker::deliver::{self, DeliverSettings};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// ---- the receiver ---------------------------------------------------------------------------

/// What the receiver answers to one request.
#[derive(Clone, Debug)]
enum Reply {
    Status(u16),
    Body(u16, Vec<u8>),
    Redirect(&'static str),
    /// Never answers.
    Hang,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Debug)]
struct Shared {
    got: Mutex<Vec<Got>>,
    /// Answers to the next requests, in turn; then `default`.
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
}

#[derive(Clone, Debug)]
struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.got.lock().unwrap().push(Got {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    let next = shared.script.lock().unwrap().pop_front();
    let reply = next.unwrap_or_else(|| shared.default.lock().unwrap().clone());
    let code = |c: u16| StatusCode::from_u16(c).unwrap();
    match reply {
        Reply::Status(c) => code(c).into_response(),
        Reply::Body(c, b) => (code(c), b).into_response(),
        Reply::Redirect(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        Reply::Hang => std::future::pending().await,
    }
}

fn router(script: Vec<Reply>, default: Reply) -> (Router, Arc<Shared>) {
    let shared = Arc::new(Shared {
        got: Mutex::new(Vec::new()),
        script: Mutex::new(script.into()),
        default: Mutex::new(default),
    });
    let app = Router::new().fallback(receive).with_state(shared.clone());
    (app, shared)
}

impl Receiver {
    /// An http receiver on loopback answering `script`, then `default`.
    async fn start(script: Vec<Reply>, default: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (app, shared) = router(script, default);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, shared }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.shared.got.lock().unwrap().clone()
    }

    fn answer(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = reply;
    }

    async fn wait_for(&self, n: usize) -> Vec<Got> {
        until(&format!("{n} requests at the receiver"), || async {
            self.got().len() >= n
        })
        .await;
        self.got()
    }
}

/// Verifies `got` as a Standard Webhooks receiver holding `secret` does, with the spec's own
/// Rust library (an implementation independent of Ebb's).
fn verify(secret: &SigningSecret, got: &Got) {
    let receiver = standardwebhooks::Webhook::new(&secret.expose_whsec()).unwrap();
    let mut headers = http::HeaderMap::new();
    for (name, value) in &got.headers {
        headers.insert(name.clone(), value.clone());
    }
    receiver
        .verify(&got.body, &headers)
        .unwrap_or_else(|e| panic!("the delivery does not verify: {e:?}"));
}

fn header_of<'a>(got: &'a Got, name: &str) -> &'a str {
    got.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

// ---- the database and the worker ------------------------------------------------------------

struct Setup {
    db: TestDb,
    pool: PgPool,
    org: OrgId,
    /// The keyring's text, as `EBB_SECRETS_KEY` holds it.
    ring_text: String,
    ring: Arc<Keyring>,
}

async fn setup() -> Setup {
    let db = TestDb::new().await.expect("test database");
    ebb_store::migrate(db.pool()).await.expect("migrations");
    let org = OrgId::new();
    sqlx::query("INSERT INTO org (id, name) VALUES ($1, 'hooks')")
        .bind(org.0)
        .execute(db.pool())
        .await
        .unwrap();
    let ring_text = Keyring::generate_entry("k1").unwrap();
    let ring = Keyring::parse(&ring_text).unwrap();
    Setup {
        pool: db.pool().clone(),
        db,
        org,
        ring_text,
        ring: Arc::new(ring),
    }
}

impl Setup {
    async fn endpoint(&self, url: &str) -> (Endpoint, SigningSecret) {
        let new = NewEndpoint {
            url: WebhookUrl::parse(url).unwrap(),
            event_types: EventFilter::All,
            description: Description::new("test receiver").unwrap(),
        };
        hooks::create_endpoint(&self.pool, &self.ring, self.org, &new)
            .await
            .unwrap()
    }

    /// Queues one event for every endpoint; returns its message id.
    async fn enqueue(&self, t: EventType) -> String {
        let event = Event {
            id: MessageId::from(Uuid::now_v7()),
            event_type: t,
            time: chrono::Utc::now(),
            subject: Uuid::now_v7().to_string(),
            data: serde_json::json!({"state": t.as_str()}),
        };
        hooks::enqueue(&self.pool, self.org, &event).await.unwrap();
        event.id.as_str().to_owned()
    }

    /// The endpoint's deliveries, oldest first.
    async fn deliveries(&self, endpoint: &Endpoint) -> Vec<Delivery> {
        let mut rows = hooks::list_deliveries(&self.pool, self.org, endpoint.id, None, 1_000)
            .await
            .unwrap()
            .rows;
        rows.reverse();
        rows
    }

    async fn until_attempted(&self, endpoint: &Endpoint, attempts: u32) -> Delivery {
        until("the delivery's attempt is recorded", || async {
            self.deliveries(endpoint)
                .await
                .first()
                .is_some_and(|d| d.attempts >= attempts && d.last_attempt_at.is_some())
        })
        .await;
        self.deliveries(endpoint).await.remove(0)
    }

    fn worker(&self, holder: &str, sender: Sender) -> Worker {
        self.worker_with(settings(holder), sender)
    }

    fn worker_with(&self, settings: DeliverSettings, sender: Sender) -> Worker {
        let stop = CancellationToken::new();
        let task = tokio::spawn(deliver::run(
            self.pool.clone(),
            self.ring.clone(),
            sender,
            settings,
            stop.clone(),
        ));
        Worker { stop, task }
    }
}

fn settings(holder: &str) -> DeliverSettings {
    DeliverSettings {
        batch: 16,
        concurrency: 8,
        lease: Duration::from_secs(5),
        poll: Duration::from_millis(20),
        holder: holder.to_owned(),
        drain: deliver::DRAIN,
    }
}

const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(1),
    tls: Duration::from_millis(300),
    total: Duration::from_secs(2),
};

/// A sender as `ebb dev` has it: loopback allowed.
fn dev_sender() -> Sender {
    Sender::new(Policy::dev(), TIMEOUTS, Vec::new()).unwrap()
}

struct Worker {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Worker {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    /// As if the process died: the task is dropped where it stands, nothing is recorded.
    async fn kill(self) {
        self.task.abort();
        assert!(self.task.await.unwrap_err().is_cancelled());
    }
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Captures this thread's logs (a `#[tokio::test]` runs its tasks on its own thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn lines(&self, level: &str, message: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(level) && l.contains(message))
            .map(str::to_owned)
            .collect()
    }
}

// ---- the tests ------------------------------------------------------------------------------

const LIFE: [EventType; 4] = [
    EventType::CurtailmentStarted,
    EventType::CurtailmentActive,
    EventType::CurtailmentRestoring,
    EventType::CurtailmentCompleted,
];

#[tokio::test]
async fn a_standard_webhooks_receiver_verifies_a_curtailments_life_in_order() {
    let s = setup().await;
    let receiver = Receiver::start(Vec::new(), Reply::Status(204)).await;
    let (endpoint, secret) = s.endpoint(&receiver.url()).await;
    let mut ids = Vec::new();
    for t in LIFE {
        ids.push(s.enqueue(t).await);
    }
    let worker = s.worker("worker-a", dev_sender());
    let got = receiver.wait_for(LIFE.len()).await;
    until("every delivery recorded", || async {
        s.deliveries(&endpoint)
            .await
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
    })
    .await;
    worker.stop().await;

    let stored = s.deliveries(&endpoint).await;
    assert_eq!(got.len(), LIFE.len(), "each sent once");
    for ((g, t), (id, d)) in got.iter().zip(LIFE).zip(ids.iter().zip(&stored)) {
        verify(&secret, g);
        assert_eq!(g.path, "/hook");
        assert_eq!(header_of(g, "content-type"), "application/json");
        assert_eq!(header_of(g, "content-length"), g.body.len().to_string());
        assert_eq!(header_of(g, "webhook-id"), id);
        assert_eq!(
            g.body,
            d.payload.as_bytes(),
            "the stored payload, byte for byte"
        );
        let body: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
        assert_eq!(body["type"], t.as_str(), "in order");
        assert_eq!(d.attempts, 1);
        assert_eq!(d.last_status, Some(204));
        // Plain http: connected and answered, no TLS.
        assert!(d.timings.connect.is_some(), "{d:?}");
        assert!(d.timings.first_byte.is_some(), "{d:?}");
        assert_eq!(d.timings.tls, None);
    }
}

#[tokio::test]
async fn during_a_rotation_both_secrets_verify_each_delivery() {
    let s = setup().await;
    let receiver = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let (endpoint, old) = s.endpoint(&receiver.url()).await;
    let new = hooks::rotate_secret(
        &s.pool,
        &s.ring,
        s.org,
        endpoint.id,
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    s.enqueue(EventType::CurtailmentStarted).await;
    let worker = s.worker("worker-a", dev_sender());
    let got = receiver.wait_for(1).await;
    worker.stop().await;
    let signatures = header_of(&got[0], "webhook-signature");
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    verify(&old, &got[0]);
    verify(&new, &got[0]);
}

#[tokio::test]
async fn two_workers_send_each_delivery_exactly_once() {
    let s = setup().await;
    let receiver = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let mut endpoints = Vec::new();
    for _ in 0..4 {
        endpoints.push(s.endpoint(&receiver.url()).await);
    }
    for _ in 0..5 {
        for t in LIFE {
            s.enqueue(t).await;
        }
    }
    let expected = endpoints.len() * 5 * LIFE.len();
    let a = s.worker("worker-a", dev_sender());
    let b = s.worker("worker-b", dev_sender());
    until("every delivery delivered", || async {
        let mut all = true;
        for (e, _) in &endpoints {
            all &= s
                .deliveries(e)
                .await
                .iter()
                .all(|d| d.state == DeliveryState::Delivered);
        }
        all
    })
    .await;
    a.stop().await;
    b.stop().await;

    let got = receiver.got();
    assert_eq!(got.len(), expected, "no delivery sent twice");
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for g in &got {
        *per_id
            .entry(header_of(g, "webhook-id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_id.len(), expected / endpoints.len(), "one id per event");
    assert!(
        per_id.values().all(|n| *n == endpoints.len()),
        "each event once per endpoint: {per_id:?}"
    );
    for (e, secret) in &endpoints {
        let mine: Vec<&Got> = got.iter().filter(|g| verify_quietly(secret, g)).collect();
        let sent: Vec<String> = mine
            .iter()
            .map(|g| header_of(g, "webhook-id").to_owned())
            .collect();
        let stored: Vec<String> = s
            .deliveries(e)
            .await
            .into_iter()
            .map(|d| d.message_id)
            .collect();
        assert_eq!(sent, stored, "each endpoint's deliveries in order");
        assert!(s.deliveries(e).await.iter().all(|d| d.attempts == 1));
    }
}

fn verify_quietly(secret: &SigningSecret, got: &Got) -> bool {
    let receiver = standardwebhooks::Webhook::new(&secret.expose_whsec()).unwrap();
    let mut headers = http::HeaderMap::new();
    for (name, value) in &got.headers {
        headers.insert(name.clone(), value.clone());
    }
    receiver.verify(&got.body, &headers).is_ok()
}

#[tokio::test]
async fn a_failed_attempt_backs_off_on_the_schedule_then_succeeds() {
    let s = setup().await;
    let receiver = Receiver::start(vec![Reply::Status(500)], Reply::Status(200)).await;
    let (endpoint, secret) = s.endpoint(&receiver.url()).await;
    s.enqueue(EventType::CurtailmentActive).await;
    let worker = s.worker("worker-a", dev_sender());

    let first = s.until_attempted(&endpoint, 1).await;
    assert_eq!(first.state, DeliveryState::Pending);
    assert_eq!(first.last_status, Some(500));
    assert!(
        first.last_error.is_none(),
        "a response is no error: {first:?}"
    );
    // The schedule's first wait: 5 s, give or take 10 %.
    let wait = (first.next_attempt_at - first.last_attempt_at.unwrap())
        .to_std()
        .unwrap();
    assert!(
        (Duration::from_millis(4_400)..=Duration::from_millis(5_600)).contains(&wait),
        "{wait:?}"
    );
    // Not sent again before it is due, however often the worker looks.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.got().len(), 1);

    // The backoff lives in the database (next_attempt_at, compared with PostgreSQL's now()), so
    // no paused tokio clock reaches it: moving next_attempt_at back stands for time passing.
    sqlx::query("UPDATE webhook_delivery SET next_attempt_at = now() WHERE state = 'pending'")
        .execute(&s.pool)
        .await
        .unwrap();
    let got = receiver.wait_for(2).await;
    until("the retry recorded", || async {
        s.deliveries(&endpoint).await[0].state == DeliveryState::Delivered
    })
    .await;
    worker.stop().await;
    let done = s.deliveries(&endpoint).await.remove(0);
    assert_eq!(done.attempts, 2);
    assert_eq!(done.last_status, Some(200));
    assert!(done.delivered_at.is_some());
    assert_eq!(
        header_of(&got[0], "webhook-id"),
        header_of(&got[1], "webhook-id"),
        "a retry keeps its id"
    );
    for g in &got {
        verify(&secret, g);
    }
}

#[tokio::test]
async fn gone_disables_the_endpoint_at_once_and_nothing_more_is_sent() {
    let (logs, _guard) = Logs::capture();
    let s = setup().await;
    let receiver = Receiver::start(Vec::new(), Reply::Status(410)).await;
    let (endpoint, _) = s.endpoint(&receiver.url()).await;
    s.enqueue(EventType::CurtailmentStarted).await;
    s.enqueue(EventType::CurtailmentActive).await;
    let worker = s.worker("worker-a", dev_sender());
    s.until_attempted(&endpoint, 1).await;
    // Time for the worker to (wrongly) send the second one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await;

    assert_eq!(receiver.got().len(), 1, "nothing after the 410");
    let now = hooks::get_endpoint(&s.pool, s.org, endpoint.id)
        .await
        .unwrap();
    assert_eq!(
        now.disabled.map(|d| d.reason),
        Some(DisabledReason::Gone),
        "{now:?}"
    );
    let rows = s.deliveries(&endpoint).await;
    assert_eq!(rows[0].state, DeliveryState::Failed);
    assert_eq!(rows[0].last_status, Some(410));
    assert_eq!(rows[1].state, DeliveryState::Pending);
    assert_eq!(rows[1].attempts, 0, "never claimed");
    let warned = logs.lines("WARN", "webhook endpoint disabled");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains(&endpoint.id.to_string()), "{warned:?}");
    assert!(warned[0].contains("reason=\"gone\""), "{warned:?}");
}

#[tokio::test]
async fn a_worker_killed_mid_delivery_leaves_it_to_another_after_the_lease() {
    let s = setup().await;
    // The first request reaches the receiver and is never answered.
    let receiver = Receiver::start(vec![Reply::Hang], Reply::Status(200)).await;
    let (endpoint, secret) = s.endpoint(&receiver.url()).await;
    s.enqueue(EventType::CurtailmentStarted).await;
    let lease = Duration::from_secs(3);
    let a = s.worker_with(
        DeliverSettings {
            lease,
            ..settings("worker-a")
        },
        dev_sender(),
    );
    receiver.wait_for(1).await;
    a.kill().await;
    let killed_at = tokio::time::Instant::now();

    let held: (Option<String>, i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT lease_holder, attempts, last_attempt_at FROM webhook_delivery")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(
        held,
        (Some("worker-a".to_owned()), 1, None),
        "still leased, nothing recorded"
    );

    let b = s.worker("worker-b", dev_sender());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.got().len(), 1, "not taken while the lease holds");
    let got = receiver.wait_for(2).await;
    assert!(
        killed_at.elapsed() >= lease - Duration::from_millis(700),
        "sent again only once the lease lapsed ({:?})",
        killed_at.elapsed()
    );
    until("the delivery recorded", || async {
        s.deliveries(&endpoint).await[0].state == DeliveryState::Delivered
    })
    .await;
    b.stop().await;
    let done = s.deliveries(&endpoint).await.remove(0);
    assert_eq!(done.attempts, 2, "the killed attempt counted");
    assert_eq!(got.len(), 2);
    assert_eq!(
        header_of(&got[0], "webhook-id"),
        header_of(&got[1], "webhook-id")
    );
    verify(&secret, &got[1]);
}

#[tokio::test]
async fn a_refused_port_and_a_stalled_tls_handshake_record_sane_phases() {
    let s = setup().await;
    // Nothing listens on `refused`.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // `stalled` accepts and never speaks.
    let stall = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled = stall.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let held = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = stall.accept().await {
            held.lock().unwrap().push(socket);
        }
    });
    let (refused_ep, _) = s.endpoint(&format!("http://{refused}/hook")).await;
    let (stalled_ep, _) = s.endpoint(&format!("https://{stalled}/hook")).await;
    s.enqueue(EventType::CurtailmentStarted).await;
    let worker = s.worker("worker-a", dev_sender());
    let r = s.until_attempted(&refused_ep, 1).await;
    let t = s.until_attempted(&stalled_ep, 1).await;
    worker.stop().await;

    assert_eq!(r.state, DeliveryState::Pending, "a failed attempt, retried");
    assert_eq!(r.last_status, None);
    assert_eq!(
        (r.timings.connect, r.timings.tls, r.timings.first_byte),
        (None, None, None),
        "nothing completed"
    );
    let error = r.last_error.unwrap_or_default();
    assert!(
        error.contains(&refused.to_string()) && error.contains("refused"),
        "{error}"
    );

    assert!(
        !accepted.lock().unwrap().is_empty(),
        "the tcp connect happened"
    );
    assert_eq!(t.state, DeliveryState::Pending);
    assert_eq!(t.last_status, None);
    let connect = t.timings.connect.expect("the connect completed");
    assert!(connect < TIMEOUTS.connect, "{connect:?}");
    assert_eq!(t.timings.tls, None, "the handshake never completed");
    assert_eq!(t.timings.first_byte, None);
    let error = t.last_error.unwrap_or_default();
    assert!(
        error.contains("tls handshake") && error.contains("timed out"),
        "{error}"
    );
    // Never negative in the columns either.
    let negative: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_delivery
         WHERE connect_ms < 0 OR tls_ms < 0 OR first_byte_ms < 0",
    )
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(negative, 0);
}

#[tokio::test]
async fn an_https_delivery_times_every_phase() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let files = ebb_natsauth::tls::generate(dir.path(), &["127.0.0.1".to_owned()]).unwrap();
    let (addr, shared) = tls_receiver(&files).await;
    let (endpoint, secret) = s.endpoint(&format!("https://{addr}/hook")).await;
    s.enqueue(EventType::CurtailmentStarted).await;
    // The receiver's private CA, as `webhook_ca_file` gives it.
    let roots = Sender::read_roots(&files.ca).unwrap();
    let worker = s.worker(
        "worker-a",
        Sender::new(Policy::dev(), TIMEOUTS, roots).unwrap(),
    );
    let d = s.until_attempted(&endpoint, 1).await;
    worker.stop().await;
    assert_eq!(d.state, DeliveryState::Delivered, "{d:?}");
    assert!(d.timings.connect.is_some(), "{d:?}");
    assert!(d.timings.tls.is_some(), "{d:?}");
    assert!(d.timings.first_byte.is_some(), "{d:?}");
    let got = shared.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    verify(&secret, &got[0]);

    // Without the private CA the handshake fails: certificates are verified.
    s.enqueue(EventType::CurtailmentActive).await;
    let worker = s.worker("worker-b", dev_sender());
    until("the second attempt", || async {
        s.deliveries(&endpoint)
            .await
            .get(1)
            .is_some_and(|d| d.last_attempt_at.is_some())
    })
    .await;
    worker.stop().await;
    let d = s.deliveries(&endpoint).await.remove(1);
    assert_eq!(d.state, DeliveryState::Pending);
    assert!(
        d.timings.connect.is_some() && d.timings.tls.is_none(),
        "{d:?}"
    );
    let error = d.last_error.unwrap_or_default();
    assert!(error.contains("tls handshake"), "{error}");
    assert_eq!(shared.got.lock().unwrap().len(), 1);
}

/// An https receiver on loopback with a certificate from `files`, answering 200.
async fn tls_receiver(files: &ebb_natsauth::tls::TlsFiles) -> (SocketAddr, Arc<Shared>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tower::ServiceExt;
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (app, shared) = router(Vec::new(), Reply::Status(200));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, shared)
}

#[tokio::test]
async fn ssrf_targets_are_refused_without_a_connection() {
    let s = setup().await;
    // A listener on loopback that counts connections: a deployment's policy refuses loopback.
    let trap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap();
    let connections = Arc::new(Mutex::new(0usize));
    let counted = connections.clone();
    tokio::spawn(async move {
        while trap.accept().await.is_ok() {
            *counted.lock().unwrap() += 1;
        }
    });
    let targets = [
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "a cloud metadata service address",
        ),
        (
            "http://10.0.0.7/hook".to_owned(),
            "a private address (rfc 1918)",
        ),
        (format!("http://{trap_addr}/hook"), "a loopback address"),
    ];
    let mut endpoints = Vec::new();
    for (url, _) in &targets {
        endpoints.push(s.endpoint(url).await.0);
    }
    s.enqueue(EventType::CurtailmentStarted).await;
    let worker = s.worker(
        "worker-a",
        Sender::new(Policy::strict(), TIMEOUTS, Vec::new()).unwrap(),
    );
    for ((_, class), e) in targets.iter().zip(&endpoints) {
        let d = s.until_attempted(e, 1).await;
        assert_eq!(d.state, DeliveryState::Pending, "a failed attempt");
        assert_eq!(d.last_status, None);
        assert_eq!(d.timings, Default::default(), "no phase: no connection");
        let error = d.last_error.unwrap_or_default();
        assert!(
            error.contains(class) && error.contains("which this deployment does not allow"),
            "{error}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    worker.stop().await;
    assert_eq!(*connections.lock().unwrap(), 0, "never connected");
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let s = setup().await;
    let receiver = Receiver::start(vec![Reply::Redirect("/elsewhere")], Reply::Status(200)).await;
    let (endpoint, _) = s.endpoint(&receiver.url()).await;
    s.enqueue(EventType::CurtailmentStarted).await;
    let worker = s.worker("worker-a", dev_sender());
    let d = s.until_attempted(&endpoint, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await;
    assert_eq!(d.last_status, Some(302));
    assert_eq!(d.state, DeliveryState::Pending, "a 3xx is a failed attempt");
    let paths: Vec<String> = receiver.got().into_iter().map(|g| g.path).collect();
    assert_eq!(paths, ["/hook"], "the Location was not requested");
}

#[tokio::test]
async fn a_big_response_body_is_capped_with_one_warning() {
    let (logs, _guard) = Logs::capture();
    let s = setup().await;
    let big = vec![b'x'; 10 * 1024];
    let receiver = Receiver::start(Vec::new(), Reply::Body(200, big)).await;
    let (endpoint, _) = s.endpoint(&receiver.url()).await;
    s.enqueue(EventType::CurtailmentStarted).await;
    let worker = s.worker("worker-a", dev_sender());
    let d = s.until_attempted(&endpoint, 1).await;
    worker.stop().await;
    assert_eq!(d.state, DeliveryState::Delivered);
    assert_eq!(d.response_body.as_deref().map(<[u8]>::len), Some(4096));
    assert!(d.response_truncated);
    assert_eq!(d.response_length, Some(10 * 1024));
    let warned = logs.lines("WARN", "webhook response body truncated");
    assert_eq!(warned.len(), 1, "one warning per truncation: {warned:?}");
    assert!(warned[0].contains("original_len=10240"), "{warned:?}");
}

#[tokio::test]
async fn a_slow_endpoint_delays_no_other() {
    let s = setup().await;
    let slow = Receiver::start(Vec::new(), Reply::Hang).await;
    let fast = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let (slow_ep, _) = s.endpoint(&slow.url()).await;
    let (fast_ep, _) = s.endpoint(&fast.url()).await;
    for t in LIFE {
        s.enqueue(t).await;
    }
    // The slow endpoint holds its request for the whole attempt timeout (5 s here).
    let sender = Sender::new(
        Policy::dev(),
        Timeouts {
            total: Duration::from_secs(5),
            ..TIMEOUTS
        },
        Vec::new(),
    )
    .unwrap();
    let started = tokio::time::Instant::now();
    let worker = s.worker_with(
        DeliverSettings {
            lease: Duration::from_secs(20),
            ..settings("worker-a")
        },
        sender,
    );
    fast.wait_for(LIFE.len()).await;
    until("the fast endpoint's deliveries recorded", || async {
        s.deliveries(&fast_ep)
            .await
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
    })
    .await;
    // Causal, not timed: all of the fast endpoint's deliveries were done while the slow
    // endpoint's first request still hung (its attempt not yet recorded).
    assert_eq!(slow.got().len(), 1, "one at a time per endpoint");
    assert!(
        s.deliveries(&slow_ep).await[0].last_attempt_at.is_none(),
        "the fast endpoint waited for the slow one ({:?})",
        started.elapsed()
    );
    slow.answer(Reply::Status(200));
    worker.stop().await;
}

/// The job as `ebb worker` runs it, from its settings: without `EBB_SECRETS_KEY` it says
/// webhooks are off, sends nothing and ends cleanly at shutdown; with it (and loopback allowed,
/// as `ebb dev` has it) it delivers.
#[tokio::test]
async fn the_job_idles_without_a_keyring_and_delivers_with_one() {
    let (logs, _guard) = Logs::capture();
    let s = setup().await;
    let nats = ebb_testkit::NatsServer::start().await.unwrap();
    let receiver = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let (endpoint, secret) = s.endpoint(&receiver.url()).await;
    s.enqueue(EventType::CurtailmentStarted).await;
    let common = ebb_runtime::Common {
        database_url: s.db.url().into(),
        nats_url: nats.url().into(),
        db_connections: 4,
        ..ebb_runtime::Common::default()
    };
    let connect = |stop: CancellationToken| {
        let common = common.clone();
        async move {
            ebb_runtime::Context::connect(
                &common,
                ebb_runtime::Needs::DatabaseAndNats,
                "deliver-test",
                stop,
            )
            .await
            .unwrap()
        }
    };

    let off = WorkerConfig {
        webhook_loopback: Reach::Allow,
        webhook_poll_ms: 20,
        ..WorkerConfig::default()
    };
    let stop = CancellationToken::new();
    let job = tokio::spawn(deliver::job(&off, connect(stop.clone()).await));
    until("the job says webhooks are off", || async {
        !logs.lines("INFO", "webhooks are off").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    job.await.unwrap().expect("an idle job ends cleanly");
    assert!(receiver.got().is_empty());
    assert_eq!(
        s.deliveries(&endpoint).await[0].attempts,
        0,
        "never claimed"
    );

    let on = WorkerConfig {
        secrets_key: ebb_obs::Secret(s.ring_text.clone()),
        ..off
    };
    assert!(on.validate().is_ok());
    let stop = CancellationToken::new();
    let job = tokio::spawn(deliver::job(&on, connect(stop.clone()).await));
    let got = receiver.wait_for(1).await;
    verify(&secret, &got[0]);
    until("the delivery recorded", || async {
        s.deliveries(&endpoint).await[0].state == DeliveryState::Delivered
    })
    .await;
    stop.cancel();
    job.await.unwrap().unwrap();
    assert!(
        !logs.text().contains(s.ring_text.split_once(':').unwrap().1),
        "the keyring is never logged"
    );
    assert_eq!(logs.lines("INFO", "webhook delivery running").len(), 1);
}

/// At shutdown a request that outlives the drain is dropped and its claim given back unspent,
/// so another worker sends it at once rather than after the lease.
#[tokio::test]
async fn a_request_that_outlives_the_drain_gives_its_claim_back() {
    let s = setup().await;
    let receiver = Receiver::start(vec![Reply::Hang], Reply::Status(200)).await;
    let (endpoint, _) = s.endpoint(&receiver.url()).await;
    s.enqueue(EventType::CurtailmentStarted).await;
    let sender = Sender::new(
        Policy::dev(),
        Timeouts {
            total: Duration::from_secs(5),
            ..TIMEOUTS
        },
        Vec::new(),
    )
    .unwrap();
    let a = s.worker_with(
        DeliverSettings {
            lease: Duration::from_secs(30),
            drain: Duration::from_millis(200),
            ..settings("worker-a")
        },
        sender,
    );
    receiver.wait_for(1).await;
    let stopping = tokio::time::Instant::now();
    a.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "the drain is bounded"
    );
    let held: (Option<String>, i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT lease_holder, attempts, last_attempt_at FROM webhook_delivery")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(held, (None, 0, None), "released, the attempt not counted");

    let b = s.worker("worker-b", dev_sender());
    receiver.wait_for(2).await;
    until("the delivery recorded", || async {
        s.deliveries(&endpoint).await[0].state == DeliveryState::Delivered
    })
    .await;
    b.stop().await;
}

//! Test harness: database, NATS, a registered fleet, the planner, reconcilers and a scripted site.

use async_nats::jetstream;
use ebb_bus::{
    Actor, BatchResult, CommandBatch, DeviceResult, Role, Scope, StartRequest, StopRequest,
    TelemetryBatch, TelemetrySample, streams, subjects,
};
use ebb_domain::selection::Mode;
use ebb_domain::{CommandKind, DeviceId, EventId, EventState, Kw, Outcome, SiteCode, TargetState};
use ebb_planner::{Planner, PlannerConfig};
use ebb_reconciler::{Hooks, ReconcilerConfig};
use ebb_testkit::world::World;
use ebb_testkit::{NatsServer, TestDb};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a scripted miner behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Does what it is told.
    Obedient,
    /// Answers ok and does nothing.
    LiesOk,
    /// Refuses every command.
    Refuses,
}

#[derive(Clone, Debug)]
pub struct Miner {
    pub behaviour: Behaviour,
    pub asleep: bool,
}

/// A batch the scripted site received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub command: CommandKind,
    pub devices: Vec<DeviceId>,
}

#[derive(Clone)]
pub struct ScriptedSite {
    pub miners: Arc<Mutex<HashMap<DeviceId, Miner>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// While set, the site is a dead agent: no telemetry, and batches are left unacked.
    pub muted: Arc<std::sync::atomic::AtomicBool>,
}

impl ScriptedSite {
    pub fn set(&self, d: DeviceId, behaviour: Behaviour) {
        self.miners.lock().unwrap().get_mut(&d).unwrap().behaviour = behaviour;
    }
    /// Wakes a miner by itself, as real firmware sometimes does.
    pub fn wake_by_itself(&self, d: DeviceId) {
        self.miners.lock().unwrap().get_mut(&d).unwrap().asleep = false;
    }
    pub fn batches(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// Silences the site's agent (`true`) or brings it back.
    pub fn mute(&self, muted: bool) {
        self.muted.store(muted, std::sync::atomic::Ordering::SeqCst);
    }
}

pub struct Harness {
    pub db: TestDb,
    pub nats: NatsServer,
    pub org: ebb_domain::OrgId,
    /// Every device, of every site.
    pub devices: Vec<DeviceId>,
    pub planner: Planner,
    /// The first site's agent.
    pub site_agent: ScriptedSite,
    /// Every site's agent, the first one included.
    pub agents: Vec<ScriptedSite>,
    pub shutdown: CancellationToken,
}

pub const BASELINE_W: f64 = 3000.0;

/// One site (`site-a`) with `n` miners.
pub async fn harness(n: usize) -> Harness {
    harness_sites(&[n]).await
}

/// One site per entry (`site-a`, `site-b`, …) with that many miners, each with its agent. The
/// miners have no telemetry until their scripted agent reports it.
pub async fn harness_sites(sizes: &[usize]) -> Harness {
    ebb_testkit::init_tracing();
    let db = TestDb::new().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    streams::ensure_streams(&js).await.unwrap();
    let world = sizes
        .iter()
        .enumerate()
        .fold(World::builder(), |w, (k, n)| {
            let letter = char::from(b'a' + k as u8);
            w.site(&format!("site-{letter}"), |s| {
                s.name(&format!("Site {letter}"))
                    .miners(*n)
                    .watts(BASELINE_W)
            })
        })
        .build(&db)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mut agents = Vec::new();
    for site in &world.sites {
        agents.push(scripted_site(&js, &site.site.code, &site.devices, shutdown.clone()).await);
    }
    let planner = Planner::new(db.pool().clone(), PlannerConfig::default());
    Harness {
        db,
        nats,
        org: world.org,
        devices: world.devices(),
        planner,
        site_agent: agents[0].clone(),
        agents,
        shutdown,
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    pub fn reconciler_config(&self, holder: &str) -> ReconcilerConfig {
        ReconcilerConfig {
            tick_ms: 200,
            confirm_deadline_s: 2,
            result_deadline_s: 10,
            site_silent_after_s: 30,
            max_retries: 2,
            // Scaled down with the deadlines: attempts still wait, tests stay short.
            backoff_base_ms: 200,
            backoff_max_ms: 2_000,
            resync_ms: 300_000,
            standby_poll_ms: 100,
            holder: holder.into(),
        }
    }

    pub fn spawn_reconciler(&self, holder: &str, hooks: Hooks) -> JoinHandle<anyhow::Result<()>> {
        self.spawn_reconciler_with(hooks, self.reconciler_config(holder))
    }

    pub fn spawn_reconciler_with(
        &self,
        hooks: Hooks,
        cfg: ReconcilerConfig,
    ) -> JoinHandle<anyhow::Result<()>> {
        self.spawn_reconciler_until(hooks, cfg, self.shutdown.child_token())
    }

    /// A reconciler that runs until `stop` (or the harness's shutdown).
    pub fn spawn_reconciler_until(
        &self,
        hooks: Hooks,
        cfg: ReconcilerConfig,
        stop: CancellationToken,
    ) -> JoinHandle<anyhow::Result<()>> {
        let holder = cfg.holder.clone();
        // Each reconciler has its own connections, as separate processes would.
        let common = ebb_runtime::Common {
            database_url: self.db.url().into(),
            nats_url: self.nats.url().into(),
            db_connections: 4,
            ..ebb_runtime::Common::default()
        };
        let name = format!("reconciler-{holder}");
        tokio::spawn(async move {
            let ctx = ebb_runtime::Context::connect(
                &common,
                ebb_runtime::Needs::DatabaseAndNats,
                &name,
                stop,
            )
            .await?;
            ebb_reconciler::run_with_hooks(cfg, hooks, ctx).await
        })
    }

    /// Waits until every device has a fresh sample, so the planner can select.
    pub async fn wait_for_telemetry(&self) {
        self.wait(
            "telemetry for every device",
            Duration::from_secs(20),
            || async {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM device_state")
                    .fetch_one(self.db.pool())
                    .await
                    .unwrap();
                n as usize == self.devices.len()
            },
        )
        .await;
    }

    pub fn start_request(&self, kw: f64) -> StartRequest {
        StartRequest {
            org: self.org,
            actor: Actor::ApiKey {
                key_id: uuid::Uuid::nil(),
                role: Role::Admin,
            },
            mode: Mode::Kw {
                target_kw: Kw::new(kw).unwrap(),
            },
            scope: Scope::default(),
            reason: "test".into(),
            priority: 0,
            idempotency_key: None,
            external_source: None,
            external_reference: None,
            max_duration_s: None,
            allow_unbounded: false,
            restore_batch_size: None,
            restore_batch_interval_s: Some(1),
            force_include_maintenance: false,
            min_power_w_override: None,
        }
    }

    pub async fn start(&self, req: StartRequest) -> EventId {
        self.planner.start(&req).await.unwrap().event_id
    }

    pub async fn stop(&self, id: EventId) {
        let req = StopRequest {
            org: self.org,
            actor: Actor::ApiKey {
                key_id: uuid::Uuid::nil(),
                role: Role::Admin,
            },
            event_id: id,
            reason: None,
            restore_batch_size_override: None,
            restore_batch_interval_s_override: None,
        };
        self.planner.stop(&req).await.unwrap();
    }

    pub async fn event_state(&self, id: EventId) -> EventState {
        ebb_store::events::get_event(self.db.pool(), self.org, id)
            .await
            .unwrap()
            .unwrap()
            .state
    }

    pub async fn target_states(&self, id: EventId) -> HashMap<DeviceId, TargetState> {
        ebb_store::events::targets(self.db.pool(), id)
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.device_id, t.state))
            .collect()
    }

    pub async fn wait_event(&self, id: EventId, want: EventState, within: Duration) {
        self.wait(&format!("event {id} to be {want}"), within, || async {
            self.event_state(id).await == want
        })
        .await;
    }

    pub async fn wait<F, Fut>(&self, what: &str, within: Duration, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

/// Plays a site agent: executes batches on scripted miners, publishes results, then telemetry
/// every 100 ms and right after each batch.
async fn scripted_site(
    js: &jetstream::Context,
    site: &SiteCode,
    devices: &[DeviceId],
    stop: CancellationToken,
) -> ScriptedSite {
    let miners: Arc<Mutex<HashMap<DeviceId, Miner>>> = Arc::new(Mutex::new(
        devices
            .iter()
            .map(|d| {
                (
                    *d,
                    Miner {
                        behaviour: Behaviour::Obedient,
                        asleep: false,
                    },
                )
            })
            .collect(),
    ));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let muted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = streams::ensure_consumer(js, streams::CMD, streams::agent_consumer(site))
        .await
        .unwrap();
    let publish_telemetry = {
        let js = js.clone();
        let site = site.clone();
        let miners = miners.clone();
        move || {
            let js = js.clone();
            let site = site.clone();
            let samples: Vec<TelemetrySample> = miners
                .lock()
                .unwrap()
                .iter()
                .map(|(d, m)| TelemetrySample {
                    device_id: *d,
                    reachable: true,
                    power_w: Some(if m.asleep { 60.0 } else { BASELINE_W }),
                    hashrate_ths: Some(if m.asleep { 0.0 } else { 100.0 }),
                    sampled_at_ms: chrono::Utc::now().timestamp_millis(),
                })
                .collect();
            async move {
                let body = TelemetryBatch {
                    site: site.clone(),
                    cycle: 0,
                    samples,
                    dropped_invalid: 0,
                };
                let payload = ebb_bus::encode(&ebb_bus::Envelope::new(None, body)).unwrap();
                let id = uuid::Uuid::now_v7().to_string();
                ebb_bus::publish::publish_acked(&js, subjects::telemetry(&site), &id, payload)
                    .await
                    .ok();
            }
        }
    };
    {
        let publish = publish_telemetry.clone();
        let stop = stop.clone();
        let muted = muted.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if !muted.load(std::sync::atomic::Ordering::SeqCst) {
                    publish().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    {
        let js = js.clone();
        let site = site.clone();
        let miners = miners.clone();
        let seen = seen.clone();
        let muted = muted.clone();
        tokio::spawn(async move {
            let mut msgs = consumer.messages().await.unwrap();
            loop {
                let m = tokio::select! { _ = stop.cancelled() => return, m = msgs.next() => m };
                let Some(Ok(m)) = m else { return };
                if muted.load(std::sync::atomic::Ordering::SeqCst) {
                    // A dead agent: the batch comes back after the consumer's ack wait.
                    continue;
                }
                let batch = ebb_bus::decode::<CommandBatch>(&m.payload).unwrap().body;
                let mut results = Vec::new();
                {
                    let mut ms = miners.lock().unwrap();
                    for d in &batch.devices {
                        let miner = ms.get_mut(&d.device_id).unwrap();
                        let outcome = match miner.behaviour {
                            Behaviour::Refuses => Outcome::Refused {
                                reason: "busy".into(),
                            },
                            Behaviour::LiesOk => Outcome::Ok,
                            Behaviour::Obedient => {
                                miner.asleep = matches!(batch.command, CommandKind::Curtail { .. });
                                Outcome::Ok
                            }
                        };
                        results.push(DeviceResult {
                            device_id: d.device_id,
                            outcome,
                            prior_power_limit_w: None,
                        });
                    }
                }
                seen.lock().unwrap().push(Seen {
                    at: Instant::now(),
                    command: batch.command,
                    devices: batch.devices.iter().map(|d| d.device_id).collect(),
                });
                let r = BatchResult {
                    batch_id: batch.batch_id,
                    event_id: batch.event_id,
                    site: site.clone(),
                    command: Some(batch.command),
                    results,
                    finished_at: chrono::Utc::now(),
                };
                let payload = ebb_bus::encode(&ebb_bus::Envelope::new(None, r)).unwrap();
                ebb_bus::publish::publish_acked(
                    &js,
                    subjects::result(&site),
                    &batch.batch_id.to_string(),
                    payload,
                )
                .await
                .unwrap();
                m.ack().await.unwrap();
                publish_telemetry().await;
            }
        });
    }
    ScriptedSite {
        miners,
        seen,
        muted,
    }
}

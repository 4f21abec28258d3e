//! Reading a test process's metrics: a debugging recorder installed once per process (nextest
//! runs each test in its own), and cumulative readers over it, so a test can check that the code
//! it drove emitted a family.

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// The process-wide recorders: a debugging one that keeps every histogram sample, and a
/// Prometheus one whose rendering reads gauges without resetting them.
struct Recorders {
    snapshotter: Snapshotter,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
}

fn recorders() -> &'static Recorders {
    static RECORDERS: OnceLock<Recorders> = OnceLock::new();
    RECORDERS.get_or_init(|| {
        let debugging = DebuggingRecorder::new();
        let snapshotter = debugging.snapshotter();
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = prometheus.handle();
        let fanout = metrics_util::layers::FanoutBuilder::default()
            .add_recorder(debugging)
            .add_recorder(prometheus)
            .build();
        // If another recorder was installed first, metrics read as zero and the test says so.
        let _ = metrics::set_global_recorder(fanout);
        Recorders {
            snapshotter,
            prometheus: handle,
        }
    })
}

/// The process-wide metrics recorder, installed on first use.
pub fn recorder() -> &'static Snapshotter {
    &recorders().snapshotter
}

/// The current value of a gauge series of the process-wide recorder, written as Prometheus
/// writes it: `ebb_reconciler_site_silent{site="site-a"}`, or a name alone.
pub fn gauge(series: &str) -> Option<f64> {
    value(&recorders().prometheus.render(), series)
}

/// Everything read so far: counter totals and every histogram sample (snapshots drain both), by
/// name and labels (`name{k=v,…}` with labels sorted). Gauges are not kept: a snapshot resets
/// them, so a second reading says 0; read gauges with [`gauge`] or [`rendered`].
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    histograms: HashMap<String, Vec<f64>>,
}

fn seen() -> std::sync::MutexGuard<'static, Seen> {
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (key, _, _, value) in recorder().snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let names = [
            key.name().to_owned(),
            format!("{}{{{}}}", key.name(), labels.join(",")),
        ];
        for name in names {
            match &value {
                DebugValue::Counter(c) => *seen.counters.entry(name).or_default() += c,
                DebugValue::Gauge(_) => {}
                DebugValue::Histogram(h) => seen
                    .histograms
                    .entry(name)
                    .or_default()
                    .extend(h.iter().map(|v| v.into_inner())),
            }
        }
    }
    seen
}

/// The total of a counter since the process started: by name over every label set, or by
/// `name{k=v,…}` (labels sorted) for one.
pub fn counter(name: &str) -> u64 {
    seen().counters.get(name).copied().unwrap_or(0)
}

/// What `f` emits, rendered in the Prometheus text format by a recorder local to this thread
/// (gauges included, which the process-wide debugging recorder resets on every reading).
pub fn rendered(f: impl FnOnce()) -> String {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, f);
    handle.render()
}

/// The value of one series of a rendering, written as it appears there:
/// `ebb_site_power_watts{site="site-a"}`, or a name alone.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Every sample a histogram recorded since the process started, by name or `name{k=v,…}`.
pub fn histogram(name: &str) -> Vec<f64> {
    seen().histograms.get(name).cloned().unwrap_or_default()
}

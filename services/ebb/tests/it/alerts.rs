//! The operator's alert rules and dashboard (issue 10): `promtool check rules` and
//! `promtool test rules` pass on `ops/prometheus/`, compose.yaml's Prometheus loads the rules,
//! and every metric the rules and the Grafana dashboard name is a family Ebb describes
//! (`ebb_obs::catalogue`), so a renamed metric cannot silently empty a panel or an alert.
//!
//! promtool comes from Debian's `prometheus` package; `scripts/test` installs it where missing
//! (or says how). `EBB_PROMTOOL` names another one.

use crate::repo_root;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("EBB_PROMTOOL") {
        return PathBuf::from(p);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
    {
        let candidate = dir.join("promtool");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "promtool not found (Debian's prometheus package has it: apt-get install -y prometheus, \
         or run scripts/test, which installs it); EBB_PROMTOOL may name one"
    );
}

fn run(args: &[&str]) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {}:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_check_and_their_unit_tests_pass() {
    run(&["check", "rules", "ops/prometheus/rules/ebb.yml"]);
    run(&["test", "rules", "ops/prometheus/tests/ebb.yml"]);
}

/// Every `ebb_…` metric name in `text`, with the suffixes Prometheus adds to a histogram's series
/// taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ebb_") {
        let start = i + at;
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        i = end;
        // A longer identifier that merely contains `ebb_` is not a metric, nor is a prefix a
        // comment names (`ebb_site_*`).
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            || text[start..end].ends_with('_')
        {
            continue;
        }
        let mut name = &text[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && base.ends_with("_seconds")
            {
                name = base;
            }
        }
        names.insert(name.to_owned());
    }
    names
}

#[test]
fn every_metric_the_rules_and_the_dashboard_read_is_one_ebb_describes() {
    let known: BTreeSet<&str> = ebb_obs::catalogue::FAMILIES
        .iter()
        .map(|f| f.name)
        .collect();
    for file in [
        "ops/prometheus/rules/ebb.yml",
        "ops/prometheus/tests/ebb.yml",
        "ops/grafana/dashboards/ebb.json",
    ] {
        let text = std::fs::read_to_string(repo_root().join(file)).expect(file);
        let named = metric_names(&text);
        assert!(named.len() >= 5, "{file} names metrics: {named:?}");
        for name in &named {
            assert!(
                known.contains(name.as_str()),
                "{file} reads {name}, which no catalogue family describes"
            );
        }
    }
}

#[test]
fn compose_prometheus_loads_the_rules_and_grafana_the_dashboard() {
    let root = repo_root();
    let compose = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    assert!(compose.contains("./ops/prometheus/rules:/etc/prometheus/rules:ro"));
    assert!(compose.contains("./ops/grafana/dashboards:"));
    let prometheus = std::fs::read_to_string(root.join("deploy/prometheus.yml")).unwrap();
    let config: serde_yaml::Value = serde_yaml::from_str(&prometheus).unwrap();
    let files: Vec<&str> = config["rule_files"]
        .as_sequence()
        .expect("deploy/prometheus.yml has rule_files")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(files, ["/etc/prometheus/rules/*.yml"]);
}

#[test]
fn metric_names_are_found_in_queries() {
    let names = metric_names(
        r#"max by (site) (ebb_site_shed_watts) < 0.9 * sum(rate(ebb_reconciler_pass_seconds_bucket[5m])) x_ebb_not"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["ebb_reconciler_pass_seconds", "ebb_site_shed_watts"]
    );
}

//! `compose.yaml` cannot be run here (no Docker), so this checks what can go wrong without it:
//! every command an `ebb` container runs parses as a real `ebb` command, and each service's
//! settings pass `--check-config` with the environment compose gives it; every file it mounts or
//! names exists; the services it refers to exist; the simulated fleet file parses and the
//! registration scans cover it; Prometheus scrapes only services that exist.

use crate::repo_root;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The image the Dockerfile builds, which every `ebb` service runs.
const EBB_IMAGE: &str = "ebb:dev";

struct Compose {
    services: BTreeMap<String, Mapping>,
    volumes: BTreeSet<String>,
}

fn load() -> Compose {
    let text =
        std::fs::read_to_string(repo_root().join("compose.yaml")).expect("reading compose.yaml");
    let mut doc: Value = serde_yaml::from_str(&text).expect("compose.yaml is valid YAML");
    doc.apply_merge().expect("merge keys resolve");
    let services = doc["services"]
        .as_mapping()
        .expect("a services map")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_mapping().expect("a service is a map").clone(),
            )
        })
        .collect();
    let volumes = doc["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    Compose { services, volumes }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn command(service: &Mapping) -> Vec<String> {
    strings(service.get("command").unwrap_or(&Value::Null))
}

fn is_ebb(service: &Mapping) -> bool {
    service.get("image").and_then(Value::as_str) == Some(EBB_IMAGE)
}

/// Compose's `${NAME:-default}` with the default (the test must not depend on this machine's
/// environment), `${NAME:?message}` (a value the operator must give) as a test value, and `$$`
/// as `$`.
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').expect("an unterminated ${ in compose.yaml");
            let expr = &after[..end];
            let value = match (expr.split_once(":-"), expr.split_once(":?")) {
                (Some((_, default)), _) => default,
                (None, Some(_)) => "required-in-test",
                (None, None) => panic!(
                    "${{{expr}}} needs a default (:-) or must be required (:?) so compose never runs with an empty value"
                ),
            };
            out.push_str(value);
            rest = &after[end + 1..];
        } else {
            panic!("a bare $ in {s:?}: use ${{NAME:-default}}");
        }
    }
    out.push_str(rest);
    out
}

fn environment(service: &Mapping) -> Vec<(String, String)> {
    match service.get("environment") {
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("environment value {other:?}"),
                };
                (k.as_str().unwrap().to_owned(), interpolate(&value))
            })
            .collect(),
        None => Vec::new(),
        Some(other) => panic!("use the map form of environment, got {other:?}"),
    }
}

/// `(host path or volume name, container path)` of each mount.
fn mounts(service: &Mapping) -> Vec<(String, String)> {
    strings(service.get("volumes").unwrap_or(&Value::Null))
        .iter()
        .map(|v| {
            let mut parts = v.split(':');
            let source = parts.next().unwrap().to_owned();
            let target = parts
                .next()
                .unwrap_or_else(|| panic!("volume {v:?} has no target"))
                .to_owned();
            (source, target)
        })
        .collect()
}

#[test]
fn every_ebb_command_is_a_real_subcommand() {
    let compose = load();
    let ebb_services: Vec<_> = compose.services.iter().filter(|(_, s)| is_ebb(s)).collect();
    assert!(
        ebb_services.len() >= 10,
        "expected every service, got {:?}",
        ebb_services.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for (name, service) in ebb_services {
        let args = command(service);
        assert!(!args.is_empty(), "{name}: an ebb service needs a command");
        let argv: Vec<String> = std::iter::once("ebb".to_owned())
            .chain(args.iter().map(|a| interpolate(a)))
            .collect();
        if let Err(e) = ebb::cli().try_get_matches_from(&argv) {
            panic!(
                "{name}: `{}` is not a valid ebb command:\n{e}",
                argv.join(" ")
            );
        }
    }
}

/// Every line of the service table runs in compose (a per-site service once per bootstrapped
/// site), and `ebb <service> … --check-config` passes with the environment compose gives it,
/// through the real binary (the settings read the process environment), printing no password.
#[test]
fn every_service_of_the_table_runs_with_a_valid_config() {
    let compose = load();
    let bootstrap = command(&compose.services["bootstrap"]);
    let sites: BTreeSet<&str> = bootstrap
        .windows(2)
        .filter(|w| w[0] == "--site")
        .map(|w| w[1].as_str())
        .collect();
    for entry in ebb::services::SERVICES {
        let runs: Vec<(&String, Vec<String>)> = compose
            .services
            .iter()
            .filter(|(_, s)| is_ebb(s))
            .map(|(n, s)| (n, command(s)))
            .filter(|(_, c)| {
                c.first().map(String::as_str) == Some(entry.name)
                    && c.get(1).map(String::as_str) != Some("scan")
            })
            .collect();
        match entry.instances {
            ebb_runtime::Instances::One => {
                assert!(!runs.is_empty(), "compose runs no {}", entry.name)
            }
            ebb_runtime::Instances::PerSite => {
                let per: BTreeSet<&str> = runs
                    .iter()
                    .filter_map(|(_, c)| {
                        c.windows(2)
                            .find(|w| w[0] == "--site")
                            .map(|w| w[1].as_str())
                    })
                    .collect();
                assert_eq!(per, sites, "one {} per bootstrapped site", entry.name);
                assert_eq!(runs.len(), sites.len(), "one {} per site", entry.name);
            }
        }
        for (name, args) in runs {
            let service = &compose.services[name];
            let out = Command::new(env!("CARGO_BIN_EXE_ebb"))
                .args(args.iter().map(|a| interpolate(a)))
                .arg("--check-config")
                .env_clear()
                .envs(environment(service))
                .output()
                .expect("running ebb");
            assert!(
                out.status.success(),
                "{name}: `ebb {} --check-config` failed:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let printed = String::from_utf8_lossy(&out.stdout);
            assert!(
                !printed.contains("ebb:ebb@") && !printed.contains("-dev@"),
                "{name}: --check-config printed a password:\n{printed}"
            );
        }
    }
}

#[test]
fn every_mounted_or_named_file_exists() {
    let compose = load();
    let root = repo_root();
    for (name, service) in &compose.services {
        let mounts = mounts(service);
        for (source, _) in &mounts {
            if source.starts_with("./") || source.starts_with('/') {
                assert!(
                    root.join(source).exists(),
                    "{name}: mounts {source}, which does not exist"
                );
            } else {
                assert!(
                    compose.volumes.contains(source),
                    "{name}: volume {source} is not declared under volumes"
                );
            }
        }
        // Absolute paths in the command must come from a mount: a file in the repository
        // (which must exist) or a named volume.
        for arg in command(service) {
            let candidates = arg.split_once('=').map_or(arg.as_str(), |(_, v)| v);
            if !candidates.starts_with('/') {
                continue;
            }
            let path = Path::new(candidates);
            let mount = mounts.iter().find(|(_, target)| path.starts_with(target));
            let Some((source, target)) = mount else {
                panic!("{name}: {candidates} is in the command but no volume provides it");
            };
            if source.starts_with("./") {
                let inside = path.strip_prefix(target).unwrap();
                let host: PathBuf = if inside.as_os_str().is_empty() {
                    root.join(source)
                } else {
                    root.join(source).join(inside)
                };
                assert!(
                    host.exists(),
                    "{name}: {candidates} maps to {}, which does not exist",
                    host.display()
                );
            }
        }
        if service.get("build").is_some() {
            let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))
                .expect("the Dockerfile the ebb image builds from");
            assert!(
                dockerfile.contains("--bin ebb"),
                "the Dockerfile builds the ebb binary"
            );
            assert!(
                dockerfile.contains(r#"ENTRYPOINT ["ebb"]"#),
                "the image's entrypoint is ebb, so commands are its arguments"
            );
        }
    }
}

#[test]
fn referenced_services_exist() {
    let compose = load();
    let names: BTreeSet<&str> = compose.services.keys().map(String::as_str).collect();
    for (name, service) in &compose.services {
        if let Some(deps) = service.get("depends_on").and_then(Value::as_mapping) {
            for dep in deps.keys() {
                assert!(
                    names.contains(dep.as_str().unwrap()),
                    "{name}: depends on unknown service {dep:?}"
                );
            }
        }
        if let Some(mode) = service.get("network_mode").and_then(Value::as_str)
            && let Some(other) = mode.strip_prefix("service:")
        {
            assert!(
                names.contains(other),
                "{name}: shares the network of unknown service {other}"
            );
        }
    }
    let prometheus = std::fs::read_to_string(repo_root().join("deploy/prometheus.yml")).unwrap();
    let config: Value =
        serde_yaml::from_str(&prometheus).expect("deploy/prometheus.yml is valid YAML");
    let mut targets = 0;
    for job in config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        for sc in job["static_configs"].as_sequence().expect("static_configs") {
            for target in strings(&sc["targets"]) {
                let (host, _port) = target.split_once(':').expect("host:port");
                assert!(
                    names.contains(host),
                    "prometheus scrapes {target}, but there is no service {host}"
                );
                targets += 1;
            }
        }
    }
    assert!(targets >= 6, "prometheus scrapes every ebb service");
}

/// The simulator's fleet file parses, its sites are the bootstrapped sites, and each site's
/// registration scan covers exactly that site's miners.
#[test]
fn the_simulated_fleet_matches_the_sites_and_the_scans() {
    let compose = load();
    let sim = command(&compose.services["minersim"]);
    let fleet_at = sim
        .iter()
        .position(|a| a == "--fleet")
        .expect("minersim serves a fleet file");
    let (source, target) = mounts(&compose.services["minersim"])
        .into_iter()
        .find(|(_, t)| t == &sim[fleet_at + 1])
        .expect("the fleet file is mounted");
    assert_eq!(target, sim[fleet_at + 1]);
    let spec = ebb_minersim::FleetSpec::from_path(&repo_root().join(source))
        .expect("the fleet file parses");

    let bootstrap = command(&compose.services["bootstrap"]);
    let sites: Vec<&str> = bootstrap
        .windows(2)
        .filter(|w| w[0] == "--site")
        .map(|w| w[1].as_str())
        .collect();
    let fleet_sites: Vec<&str> = spec.sites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(sites, fleet_sites, "bootstrap creates the simulated sites");

    for site in &spec.sites {
        let miners: u32 = site.groups.iter().map(|g| g.count).sum();
        let scans: Vec<Vec<String>> = compose
            .services
            .values()
            .map(command)
            .filter(|c| {
                c.starts_with(&["agent".to_owned(), "scan".to_owned()])
                    && c.windows(2).any(|w| w[0] == "--site" && w[1] == site.name)
            })
            .collect();
        assert_eq!(scans.len(), 1, "one registration scan for {}", site.name);
        let covered = ebb_agent::scan::count_addresses(&scans[0][2]).expect("a valid range");
        assert_eq!(
            covered,
            u64::from(miners),
            "the scan of {} covers its {miners} miners",
            site.name
        );
        let agents = compose
            .services
            .values()
            .map(command)
            .filter(|c| {
                c.first().map(String::as_str) == Some("agent")
                    && c.windows(2).any(|w| w[0] == "--site" && w[1] == site.name)
            })
            .count();
        assert_eq!(
            agents, 2,
            "{} has an agent and a registration scan",
            site.name
        );
    }
}

/// compose.yaml ships no password (issue 7): every password (a `*PASSWORD*` variable, or the
/// password in a URL) comes from a variable the operator must set (`${NAME:?…}`).
#[test]
fn no_password_is_built_in() {
    let compose = load();
    for (name, service) in &compose.services {
        let Some(Value::Mapping(env)) = service.get("environment") else {
            continue;
        };
        for (k, v) in env {
            let (key, value) = (k.as_str().unwrap(), v.as_str().unwrap_or_default());
            let url_password = value
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .and_then(|(userinfo, _)| userinfo.split_once(':'))
                .map(|(_, password)| password);
            let password = if key.contains("PASSWORD") {
                Some(value)
            } else {
                url_password
            };
            if let Some(p) = password {
                assert!(
                    p.starts_with("${") && p.contains(":?"),
                    "{name}: {key} has a built-in password ({p:?}); use ${{NAME:?…}}"
                );
            }
        }
    }
}

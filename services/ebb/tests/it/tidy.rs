//! The tidy test (after rust-analyzer's `xtask/src/tidy.rs`): what no compiler checks, checked
//! over the whole repository. Each check lists every offender at once.
//!
//! - Every Rust file under `libs/` and `services/` starts with a `//!` doc saying what it is for
//!   (STYLE 11).
//! - Libs never depend on services (STYLE 1), in any kind of dependency: normal, build, and dev
//!   too. A lib's test that needs a service is testing something the lib does not own, and
//!   `cargo test -p <lib>` should never build a service.
//! - The simulator is in no production dependency: `ebb-minersim` is a normal (or build)
//!   dependency of `ebb` alone, the binary that serves `ebb sim` and runs the benchmarks; other
//!   crates may use it in their tests (dev-dependencies).
//! - No `todo!(`, `unimplemented!(` or `dbg!(` in non-test code: files under a crate's `src/`, up
//!   to their first `#[cfg(test)]`, comments aside.
//! - Migration versions are unique.
//! - Each metric name (a `"ebb_…"` literal in non-test code) is defined once, in
//!   `libs/obs/src/names.rs`.
//!
//! [`PENDING`] lists the violations that are known and being removed elsewhere; an entry that no
//! longer matches anything fails the test too, so the list only shrinks.

use crate::repo_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A known violation, tolerated until the change that removes it lands.
struct Pending {
    /// The check it is excused from.
    check: Check,
    /// What it is excused for: a repository path for files, a crate name for dependencies.
    subject: &'static str,
    /// Why, and who removes it.
    why: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Check {
    SimulatorDependency,
    MetricNames,
}

const PENDING: &[Pending] = &[];

fn pending(check: Check, subject: &str) -> bool {
    PENDING
        .iter()
        .any(|p| p.check == check && p.subject == subject)
}

/// Fails with every problem found, one per line.
fn report(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

/// Every `.rs` file below `dir`, skipping build output and hidden directories.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Every crate directory: `libs/*` and `services/*`.
fn crates(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for group in ["libs", "services"] {
        for entry in std::fs::read_dir(root.join(group)).unwrap() {
            let path = entry.unwrap().path();
            if path.join("Cargo.toml").is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap().display().to_string()
}

/// The lines of a file under `src/` that are not test code: those before its first
/// `#[cfg(test)]`, without comment lines.
fn production_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, l)| !l.trim_start().starts_with("#[cfg(test)]"))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l))
}

/// Every Rust file of every crate, with whether it is production code (under `src/`).
fn sources(root: &Path) -> Vec<(PathBuf, bool)> {
    crates(root)
        .iter()
        .flat_map(|c| {
            let src = c.join("src");
            rust_files(c).into_iter().map(move |f| {
                let production = f.starts_with(&src);
                (f, production)
            })
        })
        .collect()
}

#[test]
fn every_module_has_a_doc() {
    let root = repo_root();
    let mut problems = Vec::new();
    let files = sources(&root);
    assert!(files.len() > 50, "found only {} Rust files", files.len());
    for (file, _) in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            problems.push(format!(
                "{}: starts without a `//!` doc saying what the module is for",
                relative(&root, &file)
            ));
        }
    }
    report("modules without a doc", &problems);
}

/// A crate's manifest: its name and, per dependency kind, the crates it names.
struct Manifest {
    name: String,
    /// `dependencies`, `build-dependencies` or `dev-dependencies` → package names (renames
    /// resolved), target-specific tables included.
    deps: BTreeMap<&'static str, BTreeSet<String>>,
}

const KINDS: [&str; 3] = ["dependencies", "build-dependencies", "dev-dependencies"];

fn manifest(dir: &Path) -> Manifest {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = doc["package"]["name"].as_str().unwrap().to_owned();
    let mut tables: Vec<&toml::Table> = vec![&doc];
    if let Some(targets) = doc.get("target").and_then(|t| t.as_table()) {
        tables.extend(targets.values().filter_map(|t| t.as_table()));
    }
    let mut deps: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for kind in KINDS {
        let names = deps.entry(kind).or_default();
        for table in &tables {
            let Some(list) = table.get(kind).and_then(|d| d.as_table()) else {
                continue;
            };
            for (key, spec) in list {
                let package = spec.get("package").and_then(|p| p.as_str()).unwrap_or(key);
                names.insert(package.to_owned());
            }
        }
    }
    Manifest { name, deps }
}

#[test]
fn libs_never_depend_on_services() {
    let root = repo_root();
    let (libs, services): (Vec<_>, Vec<_>) = crates(&root)
        .into_iter()
        .partition(|c| c.starts_with(root.join("libs")));
    let service_names: BTreeSet<String> = services.iter().map(|s| manifest(s).name).collect();
    assert!(service_names.contains("ebb-planner"), "{service_names:?}");
    let mut problems = Vec::new();
    for lib in &libs {
        let m = manifest(lib);
        for (kind, names) in &m.deps {
            for dep in names.intersection(&service_names) {
                problems.push(format!("{} has the service {dep} in [{kind}]", m.name));
            }
        }
    }
    report("libs that depend on services", &problems);
}

#[test]
fn the_simulator_is_in_no_production_dependency() {
    const SIMULATOR: &str = "ebb-minersim";
    const ALLOWED: &str = "ebb";
    let root = repo_root();
    let mut problems = Vec::new();
    let mut excused = BTreeSet::new();
    for dir in crates(&root) {
        let m = manifest(&dir);
        if m.name == ALLOWED || m.name == SIMULATOR {
            continue;
        }
        for kind in ["dependencies", "build-dependencies"] {
            if m.deps[kind].contains(SIMULATOR) {
                if pending(Check::SimulatorDependency, &m.name) {
                    excused.insert(m.name.clone());
                } else {
                    problems.push(format!(
                        "{} has {SIMULATOR} in [{kind}]; only {ALLOWED} may (tests use \
                         [dev-dependencies])",
                        m.name
                    ));
                }
            }
        }
    }
    problems.extend(stale(Check::SimulatorDependency, &excused));
    report("production dependencies on the simulator", &problems);
}

/// Entries of [`PENDING`] for `check` that excused nothing.
fn stale(check: Check, excused: &BTreeSet<String>) -> Vec<String> {
    PENDING
        .iter()
        .filter(|p| p.check == check && !excused.contains(p.subject))
        .map(|p| {
            format!(
                "{} is no longer a violation: remove its PENDING entry ({})",
                p.subject, p.why
            )
        })
        .collect()
}

#[test]
fn no_placeholders_outside_tests() {
    let root = repo_root();
    let mut problems = Vec::new();
    for (file, production) in sources(&root) {
        if !production {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in production_lines(&text) {
            for mac in ["todo!(", "unimplemented!(", "dbg!("] {
                if line.contains(mac) {
                    problems.push(format!("{}:{n}: {}", relative(&root, &file), line.trim()));
                }
            }
        }
    }
    report("placeholders in non-test code", &problems);
}

#[test]
fn migration_versions_are_unique() {
    let root = repo_root();
    let mut by_version: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(root.join("migrations")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        // A reversible migration is a pair, `<v>_<name>.up.sql` and `.down.sql`: one version.
        if !name.ends_with(".sql") || name.ends_with(".down.sql") {
            continue;
        }
        let version = name.split('_').next().unwrap_or_default().to_owned();
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(format!("{name}: no numeric version before the first `_`"));
        }
        by_version.entry(version).or_default().push(name);
    }
    assert!(by_version.len() >= 5, "{by_version:?}");
    for (version, names) in &by_version {
        if names.len() > 1 {
            problems.push(format!("version {version} is used by {}", names.join(", ")));
        }
    }
    report("migration versions", &problems);
}

/// The complete string literals in `line` that look like a metric name: `"ebb_[a-z0-9_]+"`.
fn metric_literals(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("\"ebb_") {
        let body = &rest[start + 1..];
        let len = body
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        if body.as_bytes().get(len) == Some(&b'"') && len > "ebb_".len() {
            out.push(&body[..len]);
            rest = &body[len + 1..];
        } else {
            rest = &body[len..];
        }
    }
    out
}

#[test]
fn each_metric_name_is_defined_once_in_obs() {
    const NAMES: &str = "libs/obs/src/names.rs";
    let root = repo_root();
    let mut defined: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut excused = BTreeSet::new();
    for (file, production) in sources(&root) {
        if !production {
            continue;
        }
        let path = relative(&root, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in production_lines(&text) {
            for name in metric_literals(line) {
                if path == NAMES {
                    defined
                        .entry(name.to_owned())
                        .or_default()
                        .push(format!("line {n}"));
                } else if pending(Check::MetricNames, &path) {
                    excused.insert(path.clone());
                } else {
                    problems.push(format!(
                        "{path}:{n}: metric name {name} is defined outside {NAMES}"
                    ));
                }
            }
        }
    }
    assert!(defined.len() >= 10, "found only {defined:?} in {NAMES}");
    for (name, at) in &defined {
        if at.len() > 1 {
            problems.push(format!("{NAMES}: {name} is defined at {}", at.join(", ")));
        }
    }
    problems.extend(stale(Check::MetricNames, &excused));
    report("metric names", &problems);
}

#[test]
fn metric_literals_are_whole_names() {
    assert_eq!(
        metric_literals(r#"const A: &str = "ebb_a_total"; f("ebb_b_seconds")"#),
        vec!["ebb_a_total", "ebb_b_seconds"]
    );
    for not_a_name in [
        r#"strip_prefix("ebb_")"#,
        r#"format!("ebb_{prefix}_{secret}")"#,
        r#""ebb_Upper""#,
        r#"EBB_CONFIG"#,
    ] {
        assert!(metric_literals(not_a_name).is_empty(), "{not_a_name}");
    }
}

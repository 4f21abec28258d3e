//! Layered settings (STYLE rule 4). Each service has one typed settings struct whose `Default` is
//! the only place its defaults are written. A process reads it in layers:
//!
//! defaults → a TOML file (`--config FILE` or `EBB_CONFIG`) → environment → flags → validation
//!
//! and every bad setting is named at once: unknown keys (with the file they came from), values of
//! the wrong type (with the layer that gave them) and values out of range (the struct's own
//! [`Settings::problems`]).
//!
//! The layers meet as one flat TOML table whose keys are the settings shared by every service
//! ([`Common`]) and the service's own ([`Settings::KEYS`]). Text from the environment and from
//! flags is typed by the default it replaces (an integer setting parses as an integer), so no
//! setting needs its type written twice. The environment name of a key is `EBB_<SERVICE>_<KEY>`
//! unless the key names another (`DATABASE_URL`, `NATS_URL`); flags are `--<key>` with dashes.

use ebb_obs::CredUrl;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use toml::{Table, Value};

/// How a setting's value may be shown (in `--print-config`, in logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrecy {
    /// Shown as it is.
    Plain,
    /// A URL that may carry a password: shown only when it carries none.
    UrlPassword,
    /// Never shown.
    Whole,
}

/// One setting: its TOML key, what it is for, and where else it can be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// The TOML key, `snake_case`; the flag is the same with dashes.
    pub name: &'static str,
    /// One line of help for `--help` and `--print-config`.
    pub help: &'static str,
    /// An environment variable other than `EBB_<SERVICE>_<KEY>`.
    pub env: Option<&'static str>,
    /// Whether the value may be shown.
    pub secrecy: Secrecy,
}

impl Key {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            env: None,
            secrecy: Secrecy::Plain,
        }
    }

    /// Read from `var` instead of `EBB_<SERVICE>_<KEY>`.
    pub const fn env(mut self, var: &'static str) -> Self {
        self.env = Some(var);
        self
    }

    pub const fn secret(mut self, secrecy: Secrecy) -> Self {
        self.secrecy = secrecy;
        self
    }

    /// The environment variable this key is read from for `service`.
    pub fn env_var(&self, service: &str) -> String {
        match self.env {
            Some(var) => var.to_owned(),
            None => format!(
                "EBB_{}_{}",
                service.to_ascii_uppercase().replace('-', "_"),
                self.name.to_ascii_uppercase()
            ),
        }
    }

    /// The command-line flag, without its dashes.
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }
}

/// A service's own settings.
pub trait Settings:
    Serialize + DeserializeOwned + Default + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// Every key the struct has, in the order `--help` and `--print-config` show them.
    const KEYS: &'static [Key];

    /// Every invalid setting, each message starting with its key. Empty when valid.
    fn problems(&self) -> Vec<String>;
}

/// Settings with no keys, for a service that has none of its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

impl Settings for NoSettings {
    const KEYS: &'static [Key] = &[];
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What a service connects to, which decides which [`Common`] keys it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// NATS only (a site agent has no database).
    Nats,
    /// PostgreSQL and NATS.
    DatabaseAndNats,
}

/// The default NATS URL, written once.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The settings every service shares: how it reaches PostgreSQL and NATS, and where it serves
/// its metrics. Defined once here, with one default each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Common {
    /// PostgreSQL URL.
    pub database_url: CredUrl,
    /// Most PostgreSQL connections in the process's pool.
    pub db_connections: u32,
    /// Longest a PostgreSQL statement may run (ms); 0 for no limit.
    pub db_statement_timeout_ms: u64,
    /// Idle seconds before PostgreSQL probes a connection whose client may be gone.
    pub db_keepalive_idle_s: u64,
    /// Seconds between unanswered probes.
    pub db_keepalive_interval_s: u64,
    /// Unanswered probes before PostgreSQL drops the connection (and its locks).
    pub db_keepalive_count: u32,
    /// NATS server URL(s), comma-separated.
    pub nats_url: CredUrl,
    /// A NATS `.creds` file (user JWT and nkey seed); empty for none.
    pub nats_creds: String,
    /// A CA certificate file the NATS server's TLS certificate is checked against; empty to
    /// connect without TLS (or with the system's roots when the URL is `tls://`).
    pub nats_ca: String,
    /// Where to serve `GET /metrics` and `GET /healthz`; empty for nowhere.
    pub metrics_listen: String,
}

impl Default for Common {
    fn default() -> Self {
        // The session defaults are the store's, written once there.
        let session = ebb_store::Session::default();
        Self {
            database_url: CredUrl::default(),
            db_connections: 8,
            db_statement_timeout_ms: session.statement_timeout.as_millis() as u64,
            db_keepalive_idle_s: session.keepalive_idle.as_secs(),
            db_keepalive_interval_s: session.keepalive_interval.as_secs(),
            db_keepalive_count: session.keepalive_count,
            nats_url: DEFAULT_NATS_URL.into(),
            nats_creds: String::new(),
            nats_ca: String::new(),
            metrics_listen: String::new(),
        }
    }
}

const COMMON_KEYS: &[Key] = &[
    Key::new("database_url", "PostgreSQL URL")
        .env("DATABASE_URL")
        .secret(Secrecy::UrlPassword),
    Key::new("db_connections", "most PostgreSQL connections in the pool").env("EBB_DB_CONNECTIONS"),
    Key::new(
        "db_statement_timeout_ms",
        "longest a PostgreSQL statement may run (ms; 0 for no limit)",
    )
    .env("EBB_DB_STATEMENT_TIMEOUT_MS"),
    Key::new(
        "db_keepalive_idle_s",
        "idle seconds before PostgreSQL probes a connection whose client may be gone",
    )
    .env("EBB_DB_KEEPALIVE_IDLE_S"),
    Key::new(
        "db_keepalive_interval_s",
        "seconds between PostgreSQL's unanswered keepalive probes",
    )
    .env("EBB_DB_KEEPALIVE_INTERVAL_S"),
    Key::new(
        "db_keepalive_count",
        "unanswered probes before PostgreSQL drops a connection and its locks",
    )
    .env("EBB_DB_KEEPALIVE_COUNT"),
    Key::new("nats_url", "NATS server URL(s), comma-separated")
        .env("NATS_URL")
        .secret(Secrecy::UrlPassword),
    Key::new(
        "nats_creds",
        "NATS credentials file (.creds: user JWT and nkey seed); empty for none",
    )
    .env("EBB_NATS_CREDS"),
    Key::new(
        "nats_ca",
        "CA certificate (PEM) the NATS server's TLS certificate must chain to; empty for none",
    )
    .env("EBB_NATS_CA"),
    Key::new(
        "metrics_listen",
        "address serving GET /metrics and /healthz (e.g. 0.0.0.0:9090); empty for none",
    )
    .env("EBB_METRICS_LISTEN"),
];

impl Common {
    /// The common keys a service with `needs` has.
    pub fn keys(needs: Needs) -> impl Iterator<Item = &'static Key> {
        COMMON_KEYS.iter().filter(move |k| {
            needs == Needs::DatabaseAndNats
                || !(k.name == "database_url" || k.name.starts_with("db_"))
        })
    }

    /// What every PostgreSQL connection of the process starts with.
    pub fn db_session(&self) -> ebb_store::Session {
        ebb_store::Session {
            statement_timeout: std::time::Duration::from_millis(self.db_statement_timeout_ms),
            keepalive_idle: std::time::Duration::from_secs(self.db_keepalive_idle_s),
            keepalive_interval: std::time::Duration::from_secs(self.db_keepalive_interval_s),
            keepalive_count: self.db_keepalive_count,
        }
    }

    /// Every invalid common setting.
    pub fn problems(&self, needs: Needs) -> Vec<String> {
        let mut bad = Vec::new();
        if needs == Needs::DatabaseAndNats {
            if self.database_url.as_str().trim().is_empty() {
                bad.push("database_url must be set (DATABASE_URL or --database-url)".to_owned());
            }
            if !(1..=1_000).contains(&self.db_connections) {
                bad.push(format!(
                    "db_connections must be between 1 and 1000, got {}",
                    self.db_connections
                ));
            }
            if self.db_statement_timeout_ms > 24 * 3_600_000 {
                bad.push(format!(
                    "db_statement_timeout_ms must be at most 86400000 (a day; 0 for no limit), got {}",
                    self.db_statement_timeout_ms
                ));
            }
            for (key, value, max) in [
                ("db_keepalive_idle_s", self.db_keepalive_idle_s, 7_200),
                ("db_keepalive_interval_s", self.db_keepalive_interval_s, 600),
                (
                    "db_keepalive_count",
                    u64::from(self.db_keepalive_count),
                    100,
                ),
            ] {
                if !(1..=max).contains(&value) {
                    bad.push(format!("{key} must be between 1 and {max}, got {value}"));
                }
            }
        }
        let nats = self.nats_url.as_str().trim();
        if nats.is_empty() {
            bad.push("nats_url must be set (NATS_URL or --nats-url)".to_owned());
        } else {
            for part in nats.split(',').map(str::trim) {
                if part.parse::<async_nats::ServerAddr>().is_err() {
                    bad.push(format!(
                        "nats_url {:?} is not a NATS URL (nats://host:port, tls://, ws://, wss://)",
                        CredUrl::from(part).redacted()
                    ));
                }
            }
        }
        if !self.metrics_listen.is_empty()
            && self.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            bad.push(format!(
                "metrics_listen must be an address like 0.0.0.0:9090, got {:?}",
                self.metrics_listen
            ));
        }
        bad
    }
}

/// Every bad setting of one load, each a line naming its key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid settings: {}", .0.join("; "))]
pub struct Problems(pub Vec<String>);

/// Where the layers above the defaults come from.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// A TOML file (`--config`, else `EBB_CONFIG`).
    pub file: Option<PathBuf>,
    /// The environment, injected so that tests need not touch the process's.
    pub env: BTreeMap<String, String>,
    /// `(key, text)` from the command line, in order; a later one wins.
    pub flags: Vec<(String, String)>,
}

impl Sources {
    /// The process's environment, with `EBB_CONFIG` as the file unless `file` is given.
    pub fn from_process(file: Option<PathBuf>, flags: Vec<(String, String)>) -> Self {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let file = file.or_else(|| {
            env.get("EBB_CONFIG")
                .filter(|f| !f.is_empty())
                .map(PathBuf::from)
        });
        Self { file, env, flags }
    }

    /// Only the given flags: what `ebb dev` and tests use to build a service's settings.
    pub fn flags<K: Into<String>, V: Into<String>>(
        flags: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            flags: flags
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..Self::default()
        }
    }
}

/// A service's effective settings: the shared ones and its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Layered<S> {
    pub common: Common,
    pub service: S,
}

/// Reads the settings of `service` from `sources`, or names every bad one.
pub fn load<S: Settings>(
    service: &str,
    needs: Needs,
    sources: &Sources,
) -> Result<Layered<S>, Problems> {
    let keys: Vec<&'static Key> = Common::keys(needs).chain(S::KEYS).collect();
    let defaults = flat::<S>(&Common::default(), &S::default(), needs)
        .map_err(|e| Problems(vec![format!("the defaults do not encode: {e}")]))?;
    let known = |name: &str| keys.iter().any(|k| k.name == name);
    let mut table = defaults.clone();
    // Where each value that is not a default came from, for messages.
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();

    if let Some(path) = &sources.file {
        match std::fs::read_to_string(path) {
            Err(e) => problems.push(format!("reading config file {}: {e}", path.display())),
            Ok(text) => match text.parse::<Table>() {
                Err(e) => problems.push(format!(
                    "config file {} is not valid TOML: {}",
                    path.display(),
                    first_line(&e.to_string())
                )),
                Ok(file) => {
                    for (k, v) in file {
                        if known(&k) {
                            origin.insert(k.clone(), format!("in {}", path.display()));
                            table.insert(k, v);
                        } else {
                            problems.push(format!(
                                "{k}: unknown key in {} (the {service} has no such setting)",
                                path.display()
                            ));
                        }
                    }
                }
            },
        }
    }

    for key in &keys {
        let var = key.env_var(service);
        if let Some(text) = sources.env.get(&var) {
            table.insert(key.name.to_owned(), typed(defaults.get(key.name), text));
            origin.insert(key.name.to_owned(), format!("from {var}"));
        }
    }
    let prefix = format!("EBB_{}_", service.to_ascii_uppercase().replace('-', "_"));
    for var in sources.env.keys().filter(|v| v.starts_with(&prefix)) {
        if !keys.iter().any(|k| &k.env_var(service) == var) {
            problems.push(format!(
                "{var}: unknown setting (the {service} has no key {})",
                var[prefix.len()..].to_ascii_lowercase()
            ));
        }
    }

    for (name, text) in &sources.flags {
        let name = name.replace('-', "_");
        if !known(&name) {
            problems.push(format!("--{}: unknown setting", name.replace('_', "-")));
            continue;
        }
        table.insert(name.clone(), typed(defaults.get(&name), text));
        origin.insert(name.clone(), format!("from --{}", name.replace('_', "-")));
    }

    // Each value that is not a default is decoded on its own, so every bad one is named, not
    // only the first; a bad one is then put back to its default so the rest can be checked.
    for (name, from) in &origin {
        let mut alone = defaults.clone();
        alone.insert(name.clone(), table[name].clone());
        if let Err(e) = unflat::<S>(alone, needs) {
            problems.push(format!("{name} ({from}): {}", first_line(&e.to_string())));
            match defaults.get(name) {
                Some(v) => table.insert(name.clone(), v.clone()),
                None => table.remove(name),
            };
        }
    }
    let layered = match unflat::<S>(table, needs) {
        Ok(l) => l,
        Err(e) => {
            problems.push(first_line(&e.to_string()));
            return Err(Problems(problems));
        }
    };
    problems.extend(layered.common.problems(needs));
    problems.extend(layered.service.problems());
    if problems.is_empty() {
        Ok(layered)
    } else {
        Err(Problems(problems))
    }
}

/// The effective settings as a TOML file that reads back to the same settings. A secret is not
/// printed: its line is a comment saying where to give it, so it reads back as its default.
pub fn to_toml<S: Settings>(service: &str, needs: Needs, layered: &Layered<S>) -> String {
    let mut out = format!(
        "# effective settings of the ebb {service}; secrets are not shown\n\
         # (each key can also be given as a flag --<key> or as the environment variable named)\n"
    );
    let table = match flat::<S>(&layered.common, &layered.service, needs) {
        Ok(t) => t,
        Err(e) => return format!("{out}# the settings do not encode: {e}\n"),
    };
    for key in Common::keys(needs).chain(S::KEYS) {
        out.push_str(&format!(
            "\n# {} [env {}]\n",
            key.help,
            key.env_var(service)
        ));
        let Some(value) = table.get(key.name) else {
            out.push_str(&format!("# {} is not set\n", key.name));
            continue;
        };
        let hidden = match (key.secrecy, value) {
            (Secrecy::Plain, _) => None,
            (Secrecy::UrlPassword, Value::String(s)) => {
                let shown = CredUrl::from(s.as_str()).redacted();
                (shown != *s).then_some(shown)
            }
            (Secrecy::Whole, Value::String(s)) if s.is_empty() => None,
            _ => Some("***".to_owned()),
        };
        match hidden {
            Some(shown) => out.push_str(&format!(
                "# {} = {:?} (hidden: give it with {} or in a config file)\n",
                key.name,
                shown,
                key.env_var(service)
            )),
            None => {
                let mut one = Table::new();
                one.insert(key.name.to_owned(), value.clone());
                out.push_str(&toml::to_string(&one).unwrap_or_default());
            }
        }
    }
    out
}

/// The shared and the service's settings as one flat table.
fn flat<S: Settings>(
    common: &Common,
    service: &S,
    needs: Needs,
) -> Result<Table, toml::ser::Error> {
    let mut table = Table::try_from(common)?;
    table.retain(|k, _| Common::keys(needs).any(|key| key.name == k));
    table.extend(Table::try_from(service)?);
    Ok(table)
}

/// Splits a flat table into the shared and the service's settings.
fn unflat<S: Settings>(mut table: Table, needs: Needs) -> Result<Layered<S>, toml::de::Error> {
    let mut common = Table::new();
    for key in Common::keys(needs) {
        if let Some(v) = table.remove(key.name) {
            common.insert(key.name.to_owned(), v);
        }
    }
    Ok(Layered {
        common: Common::deserialize(Value::Table(common))?,
        service: S::deserialize(Value::Table(table))?,
    })
}

/// Text from the environment or a flag as a TOML value of the type its default has; text that
/// does not parse stays text, so the decoder names the expected type.
fn typed(default: Option<&Value>, text: &str) -> Value {
    let t = text.trim();
    let string = || Value::String(text.to_owned());
    match default {
        Some(Value::Integer(_)) => t.parse().map(Value::Integer).unwrap_or_else(|_| string()),
        Some(Value::Float(_)) => t.parse().map(Value::Float).unwrap_or_else(|_| string()),
        Some(Value::Boolean(_)) => match t {
            "true" | "1" | "yes" | "on" => Value::Boolean(true),
            "false" | "0" | "no" | "off" => Value::Boolean(false),
            _ => string(),
        },
        Some(Value::Array(_)) => Value::Array(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        _ => string(),
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(s)
        .trim_end_matches('.')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        tick_ms: u64,
        ratio: f64,
        name: String,
        sites: Vec<String>,
        enabled: bool,
    }

    impl Default for Demo {
        fn default() -> Self {
            Self {
                tick_ms: 100,
                ratio: 0.5,
                name: "demo".into(),
                sites: vec!["a".into()],
                enabled: true,
            }
        }
    }

    impl Settings for Demo {
        const KEYS: &'static [Key] = &[
            Key::new("tick_ms", "tick"),
            Key::new("ratio", "ratio"),
            Key::new("name", "name"),
            Key::new("sites", "sites"),
            Key::new("enabled", "enabled"),
        ];
        fn problems(&self) -> Vec<String> {
            let mut bad = Vec::new();
            if self.tick_ms == 0 {
                bad.push("tick_ms must be at least 1".into());
            }
            if !(0.0..=1.0).contains(&self.ratio) {
                bad.push(format!("ratio must be between 0 and 1, got {}", self.ratio));
            }
            bad
        }
    }

    fn base_env() -> BTreeMap<String, String> {
        [("DATABASE_URL".to_owned(), "postgres://db/ebb".to_owned())].into()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn layers_apply_in_order() {
        let f = file("tick_ms = 5\nratio = 0.25\nname = \"from-file\"\n");
        let sources = Sources {
            file: Some(f.path().to_owned()),
            env: {
                let mut e = base_env();
                e.insert("EBB_DEMO_TICK_MS".into(), "7".into());
                e.insert("EBB_DEMO_SITES".into(), "x, y".into());
                e
            },
            flags: vec![
                ("tick-ms".into(), "9".into()),
                ("enabled".into(), "off".into()),
            ],
        };
        let l = load::<Demo>("demo", Needs::DatabaseAndNats, &sources).unwrap();
        assert_eq!(l.service.tick_ms, 9, "flag beats env beats file");
        assert_eq!(l.service.ratio, 0.25, "file beats default");
        assert_eq!(l.service.name, "from-file");
        assert_eq!(l.service.sites, vec!["x".to_owned(), "y".to_owned()]);
        assert!(!l.service.enabled);
        assert_eq!(l.common.database_url.as_str(), "postgres://db/ebb");
        assert_eq!(l.common.db_connections, 8);
    }

    #[test]
    fn a_bad_value_and_an_unknown_key_are_both_named() {
        let f = file("tick_ms = \"soon\"\nbogus = 1\nratio = 3.0\n");
        let sources = Sources {
            file: Some(f.path().to_owned()),
            env: base_env(),
            flags: vec![],
        };
        let Problems(p) = load::<Demo>("demo", Needs::DatabaseAndNats, &sources).unwrap_err();
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p.iter().any(|m| m.starts_with("bogus: unknown key")),
            "{p:#?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("tick_ms (in ") && m.contains("string")),
            "{p:#?}"
        );
        assert!(p.iter().any(|m| m.starts_with("ratio must be")), "{p:#?}");
    }

    #[test]
    fn env_and_flags_are_checked_like_the_file() {
        let mut env = BTreeMap::new();
        env.insert("EBB_DEMO_TICK_MS".to_owned(), "x".to_owned());
        env.insert("EBB_DEMO_NOPE".to_owned(), "1".to_owned());
        let sources = Sources {
            file: None,
            env,
            flags: vec![("no-such".into(), "1".into())],
        };
        let Problems(p) = load::<Demo>("demo", Needs::DatabaseAndNats, &sources).unwrap_err();
        let has = |s: &str| p.iter().any(|m| m.contains(s));
        assert!(has("tick_ms (from EBB_DEMO_TICK_MS)"), "{p:#?}");
        assert!(has("EBB_DEMO_NOPE: unknown setting"), "{p:#?}");
        assert!(has("--no-such: unknown setting"), "{p:#?}");
        assert!(has("database_url must be set"), "{p:#?}");
    }

    #[test]
    fn a_nats_only_service_has_no_database_keys() {
        let sources = Sources::flags([("database_url", "postgres://x/y")]);
        let Problems(p) = load::<Demo>("demo", Needs::Nats, &sources).unwrap_err();
        assert_eq!(p, vec!["--database-url: unknown setting".to_owned()]);
        assert!(load::<Demo>("demo", Needs::Nats, &Sources::default()).is_ok());
    }

    #[test]
    fn printed_settings_read_back_the_same_and_hide_secrets() {
        let sources = Sources::flags([
            ("database_url", "postgres://ebb:hunter2@db/ebb"),
            ("nats_url", "nats://127.0.0.1:4222"),
            ("tick_ms", "42"),
            ("sites", "p,q"),
        ]);
        let l = load::<Demo>("demo", Needs::DatabaseAndNats, &sources).unwrap();
        let text = to_toml("demo", Needs::DatabaseAndNats, &l);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://ebb:***@db/ebb"), "{text}");
        let f = file(&text);
        let back = load::<Demo>(
            "demo",
            Needs::DatabaseAndNats,
            &Sources {
                file: Some(f.path().to_owned()),
                env: [(
                    "DATABASE_URL".to_owned(),
                    "postgres://ebb:hunter2@db/ebb".to_owned(),
                )]
                .into(),
                flags: vec![],
            },
        )
        .unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn a_nats_token_is_hidden_too() {
        let sources = Sources::flags([
            ("database_url", "postgres://db/ebb"),
            ("nats_url", "nats://s3cr3t@nats:4222"),
        ]);
        let l = load::<Demo>("demo", Needs::DatabaseAndNats, &sources).unwrap();
        let text = to_toml("demo", Needs::DatabaseAndNats, &l);
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("nats://***@nats:4222"), "{text}");
        assert!(!format!("{l:?}").contains("s3cr3t"));
    }

    #[test]
    fn database_session_settings_default_to_the_store_and_are_checked() {
        assert_eq!(
            Common::default().db_session(),
            ebb_store::Session::default()
        );
        let sources = Sources::flags([
            ("database_url", "postgres://db/ebb"),
            ("db_statement_timeout_ms", "2500"),
            ("db_keepalive_idle_s", "20"),
            ("db_keepalive_interval_s", "5"),
            ("db_keepalive_count", "4"),
        ]);
        let l = load::<Demo>("demo", Needs::DatabaseAndNats, &sources).unwrap();
        assert_eq!(
            l.common.db_session(),
            ebb_store::Session {
                statement_timeout: std::time::Duration::from_millis(2500),
                keepalive_idle: std::time::Duration::from_secs(20),
                keepalive_interval: std::time::Duration::from_secs(5),
                keepalive_count: 4,
            }
        );
        let sources = Sources::flags([
            ("database_url", "postgres://db/ebb"),
            ("db_statement_timeout_ms", "100000000"),
            ("db_keepalive_idle_s", "0"),
            ("db_keepalive_interval_s", "601"),
            ("db_keepalive_count", "0"),
        ]);
        let Problems(p) = load::<Demo>("demo", Needs::DatabaseAndNats, &sources).unwrap_err();
        assert_eq!(p.len(), 4, "{p:#?}");
        // A service without a database has none of them.
        let sources = Sources::flags([("db_keepalive_idle_s", "20")]);
        let Problems(p) = load::<Demo>("demo", Needs::Nats, &sources).unwrap_err();
        assert_eq!(p, vec!["--db-keepalive-idle-s: unknown setting".to_owned()]);
    }

    #[test]
    fn typed_text() {
        assert_eq!(typed(Some(&Value::Integer(1)), " 12 "), Value::Integer(12));
        assert_eq!(
            typed(Some(&Value::Integer(1)), "x"),
            Value::String("x".into())
        );
        assert_eq!(typed(Some(&Value::Float(1.0)), "2"), Value::Float(2.0));
        assert_eq!(typed(None, "site-a"), Value::String("site-a".into()));
    }
}

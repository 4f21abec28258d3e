//! ebb-runtime: the rooms every Ebb service lives in.
//!
//! - [`settings`]: the shared connection settings ([`Common`]), one default each, and layered
//!   loading (defaults → TOML file → environment → flags → validation naming every problem).
//! - [`Context`]: built once per process: the pool, the NATS client and JetStream, the shutdown
//!   token.
//! - [`Supervisor`]: named, owned tasks; the first failure stops all; drain with a timeout.
//! - [`Service`]: the contract each service implements, and [`Entry`], its line in the one table
//!   of services that `ebb <service>`, `ebb dev`, the compose check and the system test read.
//! - [`cli`]: a service as its own process; [`signals`]: SIGINT/SIGTERM as one token.
//!
//! Architecture invariant: this crate knows no service. The table lives in the `ebb` binary,
//! which depends on every service.

pub mod cli;
pub mod conformance;
pub mod context;
pub mod service;
pub mod settings;
pub mod signals;
pub mod supervisor;

pub use context::{Context, retry_until};
pub use service::{Entry, Instances, Loaded, Service, entry};
pub use settings::{Common, Key, Layered, Needs, NoSettings, Problems, Secrecy, Settings, Sources};
pub use signals::Signals;
pub use supervisor::Supervisor;

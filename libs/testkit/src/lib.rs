//! Real infrastructure for Ebb's tests: a throwaway `nats-server` with JetStream and a fresh
//! PostgreSQL database per test.
//!
//! Tests never depend on services left running on the machine (DESIGN.md §2):
//!
//! - [`NatsServer::start`] spawns its own `nats-server -js` on a random loopback port with a
//!   temporary store dir; it is killed and the dir removed when the handle drops. Start one per
//!   test binary or per test, they coexist.
//! - [`TestDb::new`] creates an empty, uniquely named database and drops it again when the handle
//!   drops. The server is the one named by `DATABASE_URL` if set (scripts/test starts one for the
//!   whole run), else a throwaway cluster that this process starts once, on first use, and that
//!   stops by itself when the process exits.
//! - [`world`] declares an org with sites, racks, miners (with fresh telemetry when asked) and
//!   API keys of each role, and writes it through the store's own functions: the one fixture the
//!   store, planner, reconciler, gateway and system tests share.
//! - [`api`] holds the assertions on the HTTP API's JSON that several suites make.
//!
//! `TestDb` knows nothing of Ebb's schema; [`world::WorldBuilder::build`] migrates it with the
//! store's migrations. The testkit depends on libraries only (the store, the domain and the bus
//! types), never on a service.
//!
//! Binaries are found through `EBB_NATS_SERVER`, `EBB_PG_BINDIR`, `PATH` and
//! `/usr/lib/postgresql/*/bin`; a missing one is reported as [`Error::MissingBinary`], which names
//! the Debian package to install.

pub mod api;
mod binary;
mod cluster;
mod db;
mod error;
pub mod metrics;
mod nats;
pub mod world;

pub use db::TestDb;
pub use error::{Error, Result};
pub use nats::{NatsServer, NatsServerBuilder};

/// Installs a `tracing` subscriber that writes through the test harness's capture, filtered by
/// `RUST_LOG` (default `info`).
///
/// Safe to call from every test: only the first call installs anything, and a subscriber that
/// something else installed already is left in place.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // An error only means another subscriber is already global; keep that one.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

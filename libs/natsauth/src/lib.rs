//! ebb-natsauth: NATS decentralized auth for an Ebb deployment (DESIGN §3, issue 7).
//!
//! - [`jwt`]: operator, account and user JWTs (NATS JWT v2) encoded and verified over `nkeys`.
//! - [`creds`]: the standard `.creds` file (user JWT and nkey seed).
//! - [`identity`]: every NATS user of a deployment (each service, each site's agent, each
//!   integration, the operator) and exactly what it may publish and subscribe to.
//! - [`authority`]: the deployment's keys in a directory; mints credentials, re-issues the
//!   account with revocations, writes the hub's authorization config.
//! - [`tls`]: a private CA and server certificate for the hub's TLS ports.
//!
//! Pure key handling and file writing; no network. `ebb admin` pushes a re-issued account to a
//! running server.

pub mod authority;
pub mod creds;
pub mod identity;
pub mod jwt;
pub mod tls;

pub use authority::{AuthError, Authority, Minted};
pub use identity::{Identity, Permissions, inbox_prefix};

//! Ebb's pure domain: identifiers, state machines, command vocabulary, selection, pacing and
//! confirmation rules. No I/O lives here (no sqlx, async-nats or axum), so every rule is tested by
//! fast unit and property tests.

pub mod backoff;
pub mod command;
pub mod confirm;
pub mod ids;
pub mod pacing;
pub mod selection;
pub mod state;
pub mod units;

pub use command::{Capabilities, Capability, CommandKind, CurtailLevel, Outcome};
pub use ids::{BatchId, DeviceId, EventId, OrgId, RackId, SiteCode, SiteId};
pub use state::{EventState, SpendReason, StopCause, TargetState};
pub use units::{Kw, Watts};

//! Outgoing webhooks and the public event feed, everything that needs no database (issue 8).
//!
//! - [`event`]: the event types of the public contract, the webhook body `{"type", "timestamp",
//!   "data"}` and the CloudEvents 1.0 document the feed publishes, both rendered from one
//!   [`event::Event`] so that their `type` and `data` cannot drift apart.
//! - [`signing`]: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64>`), one signature per secret still valid, and `whsec_` secrets.
//! - [`retry`]: when a failed delivery is tried again, from seconds to hours over about three days,
//!   and when it is given up.
//! - [`ssrf`]: which addresses a webhook may reach, checked on every address a host resolves to;
//!   the caller connects to the checked addresses only.
//! - [`sealed`]: webhook secrets encrypted at rest under `EBB_SECRETS_KEY`, with a key id per
//!   ciphertext so rows can be re-keyed.
//! - [`endpoint`]: an endpoint's event filter and description, parsed at the boundary.
//! - [`attempt`]: what one delivery attempt recorded: the verdict of a status, phase timings that
//!   are never negative, a response body capped at 4 KiB.
//!
//! Architecture invariant: no type here prints a secret. Signing secrets and the keyring have
//! hand-written `Debug` impls; a secret leaves this crate as text only through
//! [`signing::SigningSecret::expose_whsec`], which the API calls once, when it shows a new secret.

pub mod attempt;
pub mod endpoint;
pub mod event;
pub mod retry;
pub mod sealed;
pub mod signing;
pub mod ssrf;

pub use event::{CloudEvent, Event, EventType, MessageId, WebhookBody};
pub use sealed::{Keyring, Sealed};
pub use signing::{SignedHeaders, SigningSecret};

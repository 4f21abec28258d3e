//! Settlement rating without I/O (DESIGN §7, ADR 0012): what a rater run computes from the facts
//! it read, before anything is written.
//!
//! - [`window`]: settlement windows (15 or 60 minutes, per org), the split of an interval exactly
//!   at their edges, and a run's span (a routine run's trailing 24 closed hours, or an explicit
//!   backfill's `--since`/`--until`).
//! - [`rate`]: curtailed energy = ∫ max(0, baseline − observed) dt over confirmed intervals, in
//!   exact integer units (milliwatt-microseconds), summed per key and window.
//! - [`money`]: prices as integer micro-units per MWh parsed from decimal strings, and the
//!   rounding rule that turns energy into an amount (no floats in money).
//! - [`outcome`]: the exit-code and log-level contract of a run (reference `002_*`).

pub mod money;
pub mod outcome;
pub mod rate;
pub mod window;

pub use money::{Price, PriceError, amount_micros};
pub use outcome::{Level, exit_code, log_level};
pub use rate::{Energy, Fact, Rated, rate};
pub use window::{RunKind, Span, SpanError, WindowLen};

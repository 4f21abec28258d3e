//! How a run ends (the contract of reference `002_*`). A run always reconciles: what the latest
//! run says is what bills, so rows it no longer produces are deleted. Whether such a deletion
//! pages someone depends on why the windows were chosen:
//!
//! - a routine run (the default trailing window) that deletes a previously rated row means
//!   facts vanished or an upstream regression dropped them: ERROR, exit 2;
//! - an explicit backfill (`--since`/`--until`, either alone) that does so is the convergence an
//!   operator asked for (a late price correction, a fixed fact): INFO, exit 0;
//! - any other anomaly (an unpriced window, an amount that does not fit) exits 2 and logs ERROR
//!   in both.
//!
//! The exit code and the log level are decided here from the same three inputs, so they cannot
//! disagree; they are deliberately not folded into "has an anomaly", which would make a backfill
//! exit non-zero too.

use crate::window::RunKind;

/// The exit code of a run that found an anomaly, or that deleted a rated row routinely.
pub const EXIT_ANOMALY: u8 = 2;

/// How loudly a run's summary is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

/// Whether the run must be looked at by someone: the one decision both outputs follow.
fn alarming(reconciled_deletions: u64, window: RunKind, anomalies: u64) -> bool {
    anomalies > 0 || (reconciled_deletions > 0 && window == RunKind::Routine)
}

/// The process exit code of a run that deleted `reconciled_deletions` previously rated rows
/// over a `window` chosen routinely or explicitly, and found `anomalies` (the reference's
/// `has_anomaly` is `anomalies > 0`).
pub fn exit_code(reconciled_deletions: u64, window: RunKind, anomalies: u64) -> u8 {
    if alarming(reconciled_deletions, window, anomalies) {
        EXIT_ANOMALY
    } else {
        0
    }
}

/// The level of the run's summary line, from the same inputs as [`exit_code`].
pub fn log_level(reconciled_deletions: u64, window: RunKind, anomalies: u64) -> Level {
    if alarming(reconciled_deletions, window, anomalies) {
        Level::Error
    } else {
        Level::Info
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunKind::{Backfill, Routine};

    #[test]
    fn the_exit_code_and_level_table() {
        // (deletions, window, anomalies) → (exit code, level)
        let table = [
            (0, Routine, 0, 0, Level::Info),
            (0, Backfill, 0, 0, Level::Info),
            (1, Routine, 0, 2, Level::Error),
            (7, Routine, 0, 2, Level::Error),
            (1, Backfill, 0, 0, Level::Info),
            (7, Backfill, 0, 0, Level::Info),
            (0, Routine, 1, 2, Level::Error),
            (0, Backfill, 1, 2, Level::Error),
            (3, Routine, 2, 2, Level::Error),
            (3, Backfill, 2, 2, Level::Error),
        ];
        for (deletions, window, anomalies, code, level) in table {
            let case = format!("{deletions} deletions, {window:?}, {anomalies} anomalies");
            assert_eq!(exit_code(deletions, window, anomalies), code, "{case}");
            assert_eq!(log_level(deletions, window, anomalies), level, "{case}");
        }
    }
}

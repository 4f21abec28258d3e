//! Event and target state machines (DESIGN §5). Every state write elsewhere is a compare-and-set on
//! the prior state; the transition tables here say which writes are legal at all.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Lifecycle of a curtailment event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    Pending,
    Active,
    Restoring,
    Completed,
    CompletedWithFailures,
    Cancelled,
    Failed,
}

/// Lifecycle of one device inside one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    Pending,
    Dispatching,
    Dispatched,
    Confirmed,
    Drifted,
    Failed,
    RestorePending,
    RestoreDispatching,
    RestoreDispatched,
    Restored,
    RestoreFailed,
}

/// A string that names no known state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}")]
pub struct UnknownState(pub String);

macro_rules! str_enum {
    ($ty:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s),+ }
            }
        }

        impl FromStr for $ty {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($s => Ok($ty::$variant),)+ _ => Err(UnknownState(s.to_owned())) }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(EventState {
    Pending => "pending",
    Active => "active",
    Restoring => "restoring",
    Completed => "completed",
    CompletedWithFailures => "completed_with_failures",
    Cancelled => "cancelled",
    Failed => "failed",
});

str_enum!(TargetState {
    Pending => "pending",
    Dispatching => "dispatching",
    Dispatched => "dispatched",
    Confirmed => "confirmed",
    Drifted => "drifted",
    Failed => "failed",
    RestorePending => "restore_pending",
    RestoreDispatching => "restore_dispatching",
    RestoreDispatched => "restore_dispatched",
    Restored => "restored",
    RestoreFailed => "restore_failed",
});

impl EventState {
    /// Terminal states never change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::CompletedWithFailures | Self::Cancelled | Self::Failed
        )
    }

    pub fn can_transition(self, to: EventState) -> bool {
        use EventState::*;
        match (self, to) {
            (Pending, Active) | (Pending, Restoring) | (Active, Restoring) => true,
            (Restoring, Completed) | (Restoring, CompletedWithFailures) | (Restoring, Failed) => {
                true
            }
            // Admin terminate and a start that cannot proceed.
            (from, Cancelled | Failed) => !from.is_terminal(),
            _ => false,
        }
    }
}

impl TargetState {
    /// States in which the device belongs to the event: the exclusivity index covers exactly these.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Restored | Self::RestoreFailed)
    }

    /// A miner in one of these states may be curtailed now or has a command in flight, so an admin
    /// terminate must refuse (Stop first) (DESIGN §5.1).
    pub fn blocks_terminate(self) -> bool {
        use TargetState::*;
        matches!(
            self,
            Dispatching
                | Dispatched
                | Confirmed
                | Drifted
                | RestorePending
                | RestoreDispatching
                | RestoreDispatched
        )
    }

    /// On the curtail side of the machine (not yet stopped).
    pub fn is_curtail_phase(self) -> bool {
        use TargetState::*;
        matches!(
            self,
            Pending | Dispatching | Dispatched | Confirmed | Drifted | Failed
        )
    }

    pub fn can_transition(self, to: TargetState) -> bool {
        use TargetState::*;
        match (self, to) {
            (Pending, Dispatching) => true,
            (Dispatching, Dispatched) => true,
            // A batch is stamped `dispatching` before it is published; `pending` gets a target back
            // in the queue for another attempt (a failed outcome, a missed deadline, a drift, a
            // stale orphan), and `failed` ends it when its attempts are spent.
            (Dispatching | Dispatched | Drifted, Pending) => true,
            (Pending | Dispatching | Dispatched | Drifted, Failed) => true,
            // A queued target whose device vanished spends an attempt where it is.
            (Pending, Pending) | (RestorePending, RestorePending) => true,
            (Dispatched, Confirmed) => true,
            (Confirmed, Drifted) | (Drifted, Confirmed) => true,
            // Stop: anything that may have been touched is restored; a never-sent target has
            // nothing to undo and ends restored at once.
            (Pending, Restored) => true,
            (Pending | Dispatching | Dispatched | Confirmed | Drifted | Failed, RestorePending) => {
                true
            }
            (RestorePending, RestoreDispatching) => true,
            (RestoreDispatching, RestoreDispatched) => true,
            (RestoreDispatching | RestoreDispatched, RestorePending) => true,
            (RestorePending | RestoreDispatching | RestoreDispatched, RestoreFailed) => true,
            (RestoreDispatched, Restored) => true,
            _ => false,
        }
    }
}

/// Why an event stopped curtailing and began restoring. Stored in its own typed column
/// (`curtailment_event.stop_cause`) so that code branches on this value, never on the
/// human-readable `stop_reason` text beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// A Stop request through the planner: an operator, a schedule or a policy.
    Requested,
    /// `max_duration_s` elapsed (DESIGN §5.5).
    MaxDuration,
    /// Every target failed: the event restores what it touched and ends `failed`.
    AllFailed,
}

str_enum!(StopCause {
    Requested => "requested",
    MaxDuration => "max_duration",
    AllFailed => "all_failed",
});

impl StopCause {
    /// The `stop_reason` text recorded when the reconciler stops an event by itself (a request
    /// carries its own text).
    pub fn description(self) -> &'static str {
        match self {
            Self::Requested => "stopped by operator",
            Self::MaxDuration => "max_duration_s elapsed",
            Self::AllFailed => "every target failed",
        }
    }
}

/// Why a target spent an attempt (DESIGN §5.4), stored in `curtailment_target.last_spend_reason`.
/// Each costs one attempt; an attempt that never reached the miner (a failed stamp or publish, an
/// orphan republished) is not here because it costs none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendReason {
    /// The agent reported an outcome other than success (refused, unsupported, unreachable, …).
    CommandFailed,
    /// The agent reported success but telemetry did not confirm it before the deadline.
    NotConfirmed,
    /// The agent reported nothing about the batch before the result deadline.
    NoResult,
    /// A confirmed target's fresh telemetry contradicts its command.
    Drifted,
    /// The device row is gone or moved out of the event's org.
    DeviceVanished,
    /// A target stamped `dispatching` without a batch id, which no publish can match.
    StampedWithoutBatch,
}

str_enum!(SpendReason {
    CommandFailed => "command_failed",
    NotConfirmed => "not_confirmed",
    NoResult => "no_result",
    Drifted => "drifted",
    DeviceVanished => "device_vanished",
    StampedWithoutBatch => "stamped_without_batch",
});

impl SpendReason {
    /// The human-readable text kept in `last_error` and in the transition log.
    pub fn description(self) -> &'static str {
        match self {
            Self::CommandFailed => "command outcome was not success",
            Self::NotConfirmed => "not confirmed before the deadline",
            Self::NoResult => "no result from the agent before the deadline",
            Self::Drifted => "drifted",
            Self::DeviceVanished => "device vanished",
            Self::StampedWithoutBatch => "stamped without a batch",
        }
    }
}

/// The event state a set of settled targets implies once restore has finished, or `None` while
/// any target is still moving.
pub fn restore_outcome(
    targets: impl IntoIterator<Item = TargetState>,
    cause: StopCause,
) -> Option<EventState> {
    let mut failures = false;
    for t in targets {
        match t {
            TargetState::Restored => {}
            TargetState::RestoreFailed => failures = true,
            // A failed target that never received a command has nothing to restore.
            TargetState::Failed => failures = true,
            _ => return None,
        }
    }
    Some(if cause == StopCause::AllFailed {
        EventState::Failed
    } else if failures {
        EventState::CompletedWithFailures
    } else {
        EventState::Completed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for s in EventState::ALL {
            assert_eq!(s.as_str().parse::<EventState>().unwrap(), *s);
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        for s in TargetState::ALL {
            assert_eq!(s.as_str().parse::<TargetState>().unwrap(), *s);
        }
        // The stored forms of causes and reasons are what the migration's CHECK lists and
        // backfill write; serde agrees with them.
        for c in StopCause::ALL {
            assert_eq!(c.as_str().parse::<StopCause>().unwrap(), *c);
            assert_eq!(serde_json::to_string(c).unwrap(), format!("\"{c}\""));
        }
        for r in SpendReason::ALL {
            assert_eq!(r.as_str().parse::<SpendReason>().unwrap(), *r);
            assert_eq!(serde_json::to_string(r).unwrap(), format!("\"{r}\""));
        }
        assert!("nope".parse::<TargetState>().is_err());
    }

    #[test]
    fn terminal_event_states_never_change() {
        for from in EventState::ALL.iter().filter(|s| s.is_terminal()) {
            for to in EventState::ALL {
                assert!(!from.can_transition(*to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn terminal_targets_never_change_except_failed_restore() {
        // (A failed target that received a command is still restored on Stop.)
        for from in TargetState::ALL.iter().filter(|s| s.is_terminal()) {
            for to in TargetState::ALL {
                let allowed = *from == TargetState::Failed && *to == TargetState::RestorePending;
                assert_eq!(from.can_transition(*to), allowed, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn terminate_gate_covers_everything_in_flight() {
        use TargetState::*;
        let blocking: Vec<_> = TargetState::ALL
            .iter()
            .copied()
            .filter(|s| s.blocks_terminate())
            .collect();
        assert_eq!(
            blocking,
            vec![
                Dispatching,
                Dispatched,
                Confirmed,
                Drifted,
                RestorePending,
                RestoreDispatching,
                RestoreDispatched
            ]
        );
    }

    #[test]
    fn restore_outcomes() {
        use StopCause::*;
        use TargetState::*;
        let check = |ts: &[TargetState], cause: StopCause, want: Option<EventState>| {
            assert_eq!(restore_outcome(ts.iter().copied(), cause), want, "{ts:?}");
        };
        check(
            &[Restored, Restored],
            Requested,
            Some(EventState::Completed),
        );
        check(
            &[Restored, RestoreFailed],
            Requested,
            Some(EventState::CompletedWithFailures),
        );
        check(
            &[Restored, Failed],
            Requested,
            Some(EventState::CompletedWithFailures),
        );
        check(&[Restored, RestoreDispatched], Requested, None);
        check(&[Failed, Restored], AllFailed, Some(EventState::Failed));
        // Stopped before anything confirmed and everything restored cleanly: not a failure.
        check(
            &[Restored, Restored],
            Requested,
            Some(EventState::Completed),
        );
        // Max duration is a normal end too.
        check(
            &[Restored, Restored],
            MaxDuration,
            Some(EventState::Completed),
        );
    }
}

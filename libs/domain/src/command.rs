//! The command vocabulary shared by planner, reconciler and agent (DESIGN §3): command kinds, the
//! per-device outcome of executing one, and the capability table that says which command a miner
//! can take. The planner excludes by this table and the agent refuses by it, so they cannot disagree.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How deep a curtail goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CurtailLevel {
    /// Sleep the miner: power to idle, no hashrate.
    Full,
    /// Lower the miner to its most efficient operating point through a power limit.
    Efficiency,
}

/// A command to a miner. A closed set: anything else on the wire is `invalid_command`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandKind {
    Curtail { level: CurtailLevel },
    Uncurtail,
    SetPowerTarget { watts: f64 },
}

/// One capability a miner's firmware exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    CurtailFull,
    CurtailEfficiency,
    PowerTarget,
}

/// The set of capabilities a device has, as stored on the device row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub curtail_full: bool,
    #[serde(default)]
    pub curtail_efficiency: bool,
    #[serde(default)]
    pub power_target: bool,
}

impl Capabilities {
    pub fn has(self, c: Capability) -> bool {
        match c {
            Capability::CurtailFull => self.curtail_full,
            Capability::CurtailEfficiency => self.curtail_efficiency,
            Capability::PowerTarget => self.power_target,
        }
    }

    /// Whether a device with these capabilities may receive `kind`. Uncurtail undoes whatever
    /// curtail was applied, so any curtail capability allows it.
    pub fn allows(self, kind: &CommandKind) -> bool {
        match kind {
            CommandKind::Curtail {
                level: CurtailLevel::Full,
            } => self.curtail_full,
            CommandKind::Curtail {
                level: CurtailLevel::Efficiency,
            } => self.curtail_efficiency,
            CommandKind::SetPowerTarget { .. } => self.power_target,
            CommandKind::Uncurtail => {
                self.curtail_full || self.curtail_efficiency || self.power_target
            }
        }
    }

    /// The capability a command needs, for reasons and metrics.
    pub fn required_for(kind: &CommandKind) -> Option<Capability> {
        match kind {
            CommandKind::Curtail {
                level: CurtailLevel::Full,
            } => Some(Capability::CurtailFull),
            CommandKind::Curtail {
                level: CurtailLevel::Efficiency,
            } => Some(Capability::CurtailEfficiency),
            CommandKind::SetPowerTarget { .. } => Some(Capability::PowerTarget),
            CommandKind::Uncurtail => None,
        }
    }
}

/// Why a command is out of range; the agent turns this into `invalid_command` without contacting
/// the miner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    #[error("watts must be a finite number between {min} and {max}")]
    WattsOutOfRange { min: u32, max: u32 },
}

impl CommandKind {
    pub const MIN_POWER_TARGET_W: f64 = 100.0;
    pub const MAX_POWER_TARGET_W: f64 = 20_000.0;

    /// Range checks that serde cannot express.
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        match *self {
            CommandKind::SetPowerTarget { watts }
                if !(watts.is_finite()
                    && (Self::MIN_POWER_TARGET_W..=Self::MAX_POWER_TARGET_W).contains(&watts)) =>
            {
                Err(InvalidCommand::WattsOutOfRange {
                    min: Self::MIN_POWER_TARGET_W as u32,
                    max: Self::MAX_POWER_TARGET_W as u32,
                })
            }
            _ => Ok(()),
        }
    }

    /// A stable low-cardinality name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            CommandKind::Curtail {
                level: CurtailLevel::Full,
            } => "curtail_full",
            CommandKind::Curtail {
                level: CurtailLevel::Efficiency,
            } => "curtail_efficiency",
            CommandKind::Uncurtail => "uncurtail",
            CommandKind::SetPowerTarget { .. } => "set_power_target",
        }
    }
}

/// What happened when the agent executed a command on one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    AlreadyInState,
    Refused { reason: String },
    Unsupported,
    Unreachable,
    Timeout,
    InvalidCommand { reason: String },
}

impl Outcome {
    /// Only `ok` and `already_in_state` are success; even then, confirmation comes from telemetry.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Ok | Outcome::AlreadyInState)
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::AlreadyInState => "already_in_state",
            Outcome::Refused { .. } => "refused",
            Outcome::Unsupported => "unsupported",
            Outcome::Unreachable => "unreachable",
            Outcome::Timeout => "timeout",
            Outcome::InvalidCommand { .. } => "invalid_command",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Refused { reason } | Outcome::InvalidCommand { reason } => {
                write!(f, "{}: {reason}", self.label())
            }
            _ => f.write_str(self.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: CommandKind = CommandKind::Curtail {
        level: CurtailLevel::Full,
    };
    const EFF: CommandKind = CommandKind::Curtail {
        level: CurtailLevel::Efficiency,
    };

    #[test]
    fn capability_table() {
        let pause_only = Capabilities {
            curtail_full: true,
            ..Default::default()
        };
        let limit_only = Capabilities {
            curtail_efficiency: true,
            power_target: true,
            ..Default::default()
        };
        let none = Capabilities::default();
        let check = |c: Capabilities, k: CommandKind, want: bool| {
            assert_eq!(c.allows(&k), want, "{c:?} {k:?}")
        };
        check(pause_only, FULL, true);
        check(pause_only, EFF, false);
        check(
            pause_only,
            CommandKind::SetPowerTarget { watts: 2000.0 },
            false,
        );
        check(pause_only, CommandKind::Uncurtail, true);
        // A miner that can only do efficiency is not eligible for a full curtail.
        check(limit_only, FULL, false);
        check(limit_only, EFF, true);
        check(limit_only, CommandKind::Uncurtail, true);
        check(none, CommandKind::Uncurtail, false);
    }

    #[test]
    fn only_ok_and_already_are_success() {
        let all = [
            Outcome::Ok,
            Outcome::AlreadyInState,
            Outcome::Refused { reason: "x".into() },
            Outcome::Unsupported,
            Outcome::Unreachable,
            Outcome::Timeout,
            Outcome::InvalidCommand { reason: "x".into() },
        ];
        let ok: Vec<_> = all
            .iter()
            .filter(|o| o.is_success())
            .map(Outcome::label)
            .collect();
        assert_eq!(ok, ["ok", "already_in_state"]);
    }

    #[test]
    fn power_target_range() {
        assert!(
            CommandKind::SetPowerTarget { watts: 1500.0 }
                .validate()
                .is_ok()
        );
        for bad in [f64::NAN, -1.0, 0.0, 50.0, 1e9, f64::INFINITY] {
            assert!(
                CommandKind::SetPowerTarget { watts: bad }
                    .validate()
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn wire_shape() {
        let json = serde_json::to_string(&FULL).unwrap();
        assert_eq!(json, r#"{"kind":"curtail","level":"full"}"#);
        let o = serde_json::to_string(&Outcome::Refused {
            reason: "busy".into(),
        })
        .unwrap();
        assert_eq!(o, r#"{"outcome":"refused","reason":"busy"}"#);
    }
}

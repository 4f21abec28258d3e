//! Start-request validation and privilege checks (DESIGN §5.11): every field is checked before
//! anything is read or written, each error names its field, and admin-only settings are checked on
//! the effective request.

use crate::config::PlannerConfig;
use ebb_bus::{Role, RpcError, RpcErrorKind, StartRequest};
use ebb_store::fleet::OrgSettings;

/// Longest reason, key or reference, in characters.
pub const MAX_TEXT: usize = 256;
/// Longest event an admin may bound (7 days).
pub const MAX_DURATION_S: u32 = 7 * 24 * 3600;
pub const MAX_RESTORE_BATCH: u32 = 10_000;
pub const MAX_RESTORE_INTERVAL_S: u32 = 24 * 3600;

/// Longest device address (an IPv6 address with a zone fits).
pub const MAX_ADDRESS: usize = 64;
/// Longest make, model or firmware string.
pub const MAX_DEVICE_TEXT: usize = 128;
/// The most a registered miner may draw, in watts.
pub const MAX_NOMINAL_POWER_W: f64 = 50_000.0;

/// Checks an agent's registration: a bounded number of devices, each field bounded and valid,
/// no address twice. The first bad device is named by its index.
pub fn registration(devices: &[ebb_bus::DiscoveredDevice]) -> Result<(), RpcError> {
    if devices.len() > ebb_bus::REGISTER_MAX_DEVICES {
        return Err(RpcError::invalid(
            "devices",
            format!(
                "at most {} devices per request, got {}",
                ebb_bus::REGISTER_MAX_DEVICES,
                devices.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, d) in devices.iter().enumerate() {
        let field = |name: &str| format!("devices[{i}].{name}");
        if d.address.len() > MAX_ADDRESS || d.address.trim().parse::<std::net::IpAddr>().is_err() {
            return Err(RpcError::invalid(
                &field("address"),
                "must be an IP address",
            ));
        }
        if !seen.insert(d.address.trim()) {
            return Err(RpcError::invalid(
                &field("address"),
                format!("{} is listed twice", d.address.trim()),
            ));
        }
        for (name, value) in [
            ("make", Some(d.make.as_str())),
            ("model", Some(d.model.as_str())),
            ("firmware", d.firmware.as_deref()),
        ] {
            if let Some(v) = value
                && (v.chars().count() > MAX_DEVICE_TEXT || v.chars().any(char::is_control))
            {
                return Err(RpcError::invalid(
                    &field(name),
                    format!("must be at most {MAX_DEVICE_TEXT} printable characters"),
                ));
            }
        }
        if let Some(w) = d.nominal_power_w
            && !(w.is_finite() && w > 0.0 && w <= MAX_NOMINAL_POWER_W)
        {
            return Err(RpcError::invalid(
                &field("nominal_power_w"),
                format!("must be above 0 and at most {MAX_NOMINAL_POWER_W} W"),
            ));
        }
    }
    Ok(())
}

/// A start request's settings after validation and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidStart {
    pub reason: String,
    pub restore_batch_size: u32,
    pub restore_batch_interval_s: u32,
    /// `None` only for an admin's unbounded event.
    pub max_duration_s: Option<u32>,
    pub min_power_w: f64,
}

fn text(field: &str, v: Option<&str>) -> Result<(), RpcError> {
    match v {
        Some(s) if s.trim().is_empty() => Err(RpcError::invalid(field, "must not be blank")),
        Some(s) if s.chars().count() > MAX_TEXT => Err(RpcError::invalid(
            field,
            format!("must be at most {MAX_TEXT} characters"),
        )),
        _ => Ok(()),
    }
}

fn admin(req: &StartRequest, field: &str, what: &str) -> Result<(), RpcError> {
    if req.actor.role() >= Role::Admin {
        Ok(())
    } else {
        Err(RpcError {
            field: Some(field.to_owned()),
            ..RpcError::new(
                RpcErrorKind::PermissionDenied,
                format!("{what} needs the admin role"),
            )
        })
    }
}

/// Validates `req`. `org` is `None` for a preview, which has no org-dependent limits to apply.
pub fn start(
    req: &StartRequest,
    cfg: &PlannerConfig,
    org: Option<&OrgSettings>,
) -> Result<ValidStart, RpcError> {
    if req.reason.trim().is_empty() {
        return Err(RpcError::invalid("reason", "must not be blank"));
    }
    text("reason", Some(&req.reason))?;
    text("idempotency_key", req.idempotency_key.as_deref())?;
    text("external_source", req.external_source.as_deref())?;
    text("external_reference", req.external_reference.as_deref())?;
    if req.external_source.is_some() != req.external_reference.is_some() {
        return Err(RpcError::invalid(
            "external_reference",
            "external_source and external_reference go together",
        ));
    }

    let restore_batch_size = req.restore_batch_size.unwrap_or(cfg.restore_batch_size);
    if !(1..=MAX_RESTORE_BATCH).contains(&restore_batch_size) {
        return Err(RpcError::invalid(
            "restore_batch_size",
            format!("must be between 1 and {MAX_RESTORE_BATCH}"),
        ));
    }
    let restore_batch_interval_s = req
        .restore_batch_interval_s
        .unwrap_or(cfg.restore_batch_interval_s);
    // Zero would let a restore outrun every pacing rule and spin the reconciler.
    if !(1..=MAX_RESTORE_INTERVAL_S).contains(&restore_batch_interval_s) {
        return Err(RpcError::invalid(
            "restore_batch_interval_s",
            format!("must be between 1 and {MAX_RESTORE_INTERVAL_S}"),
        ));
    }
    if restore_batch_interval_s > cfg.non_admin_max_interval_s {
        admin(
            req,
            "restore_batch_interval_s",
            format!(
                "a restore interval above {} s",
                cfg.non_admin_max_interval_s
            )
            .as_str(),
        )?;
    }

    let max_duration_s = match (req.allow_unbounded, req.max_duration_s) {
        (true, Some(_)) => {
            return Err(RpcError::invalid(
                "max_duration_s",
                "cannot be set together with allow_unbounded",
            ));
        }
        (true, None) => {
            admin(req, "allow_unbounded", "an unbounded curtailment")?;
            None
        }
        (false, Some(0)) => {
            return Err(RpcError::invalid(
                "max_duration_s",
                "must be greater than 0",
            ));
        }
        (false, Some(d)) if d > MAX_DURATION_S => {
            return Err(RpcError::invalid(
                "max_duration_s",
                format!("must be at most {MAX_DURATION_S}"),
            ));
        }
        (false, Some(d)) => {
            if let Some(o) = org
                && d > o.default_max_duration_s
            {
                admin(
                    req,
                    "max_duration_s",
                    "a max_duration_s above the organisation default",
                )?;
            }
            Some(d)
        }
        (false, None) => Some(org.map_or(cfg_default_duration(), |o| o.default_max_duration_s)),
    };

    if req.force_include_maintenance {
        admin(
            req,
            "force_include_maintenance",
            "including miners under maintenance",
        )?;
    }
    let min_power_w = match req.min_power_w_override {
        Some(w) if !(w.is_finite() && w >= 0.0) => {
            return Err(RpcError::invalid(
                "min_power_w_override",
                "must be a non-negative number",
            ));
        }
        Some(w) => {
            admin(
                req,
                "min_power_w_override",
                "overriding the candidate minimum power",
            )?;
            w
        }
        None => cfg.min_power_w,
    };
    Ok(ValidStart {
        reason: req.reason.trim().to_owned(),
        restore_batch_size,
        restore_batch_interval_s,
        max_duration_s,
        min_power_w,
    })
}

/// What a preview assumes when it has not read the org: previews persist nothing, so any bound works.
fn cfg_default_duration() -> u32 {
    4 * 3600
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_bus::{Actor, Scope};
    use ebb_domain::{Kw, OrgId, selection::Mode};

    fn req(role: Role) -> StartRequest {
        StartRequest {
            org: OrgId::new(),
            actor: Actor::ApiKey {
                key_id: uuid::Uuid::nil(),
                role,
            },
            mode: Mode::Kw {
                target_kw: Kw::new(10.0).unwrap(),
            },
            scope: Scope::default(),
            reason: "grid event".into(),
            priority: 0,
            idempotency_key: None,
            external_source: None,
            external_reference: None,
            max_duration_s: None,
            allow_unbounded: false,
            restore_batch_size: None,
            restore_batch_interval_s: None,
            force_include_maintenance: false,
            min_power_w_override: None,
        }
    }

    const ORG: OrgSettings = OrgSettings {
        default_max_duration_s: 3600,
    };

    fn check(r: StartRequest, field: Option<&str>, kind: Option<RpcErrorKind>) {
        let got = start(&r, &PlannerConfig::default(), Some(&ORG));
        match (got, kind) {
            (Ok(_), None) => {}
            (Err(e), Some(k)) => {
                assert_eq!(e.kind, k, "{e:?}");
                assert_eq!(e.field.as_deref(), field, "{e:?}");
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn fields_are_named() {
        use RpcErrorKind::*;
        check(req(Role::Operator), None, None);
        check(
            StartRequest {
                reason: "  ".into(),
                ..req(Role::Operator)
            },
            Some("reason"),
            Some(InvalidArgument),
        );
        check(
            StartRequest {
                reason: "é".repeat(256),
                ..req(Role::Operator)
            },
            None,
            None,
        );
        check(
            StartRequest {
                reason: "é".repeat(257),
                ..req(Role::Operator)
            },
            Some("reason"),
            Some(InvalidArgument),
        );
        check(
            StartRequest {
                external_source: Some("x".into()),
                ..req(Role::Operator)
            },
            Some("external_reference"),
            Some(InvalidArgument),
        );
        check(
            StartRequest {
                restore_batch_size: Some(0),
                ..req(Role::Operator)
            },
            Some("restore_batch_size"),
            Some(InvalidArgument),
        );
        check(
            StartRequest {
                max_duration_s: Some(0),
                ..req(Role::Operator)
            },
            Some("max_duration_s"),
            Some(InvalidArgument),
        );
        check(
            StartRequest {
                restore_batch_interval_s: Some(0),
                ..req(Role::Operator)
            },
            Some("restore_batch_interval_s"),
            Some(InvalidArgument),
        );
        check(
            StartRequest {
                allow_unbounded: true,
                max_duration_s: Some(10),
                ..req(Role::Admin)
            },
            Some("max_duration_s"),
            Some(InvalidArgument),
        );
    }

    #[test]
    fn privileges_on_the_effective_request() {
        use RpcErrorKind::PermissionDenied;
        let op = req(Role::Operator);
        check(
            StartRequest {
                allow_unbounded: true,
                ..op.clone()
            },
            Some("allow_unbounded"),
            Some(PermissionDenied),
        );
        check(
            StartRequest {
                force_include_maintenance: true,
                ..op.clone()
            },
            Some("force_include_maintenance"),
            Some(PermissionDenied),
        );
        check(
            StartRequest {
                max_duration_s: Some(3601),
                ..op.clone()
            },
            Some("max_duration_s"),
            Some(PermissionDenied),
        );
        check(
            StartRequest {
                max_duration_s: Some(3600),
                ..op.clone()
            },
            None,
            None,
        );
        check(
            StartRequest {
                restore_batch_interval_s: Some(301),
                ..op.clone()
            },
            Some("restore_batch_interval_s"),
            Some(PermissionDenied),
        );
        check(
            StartRequest {
                min_power_w_override: Some(10.0),
                ..op.clone()
            },
            Some("min_power_w_override"),
            Some(PermissionDenied),
        );
        let ad = req(Role::Admin);
        check(
            StartRequest {
                allow_unbounded: true,
                ..ad.clone()
            },
            None,
            None,
        );
        check(
            StartRequest {
                force_include_maintenance: true,
                max_duration_s: Some(7200),
                ..ad
            },
            None,
            None,
        );
    }

    #[test]
    fn defaults_fill_in() {
        let v = start(&req(Role::Operator), &PlannerConfig::default(), Some(&ORG)).unwrap();
        assert_eq!(v.max_duration_s, Some(3600));
        assert_eq!(v.restore_batch_size, 100);
        assert_eq!(v.restore_batch_interval_s, 30);
    }

    #[test]
    fn registrations_are_bounded_and_name_the_bad_device() {
        use ebb_bus::DiscoveredDevice;
        let dev = |address: &str| DiscoveredDevice {
            address: address.into(),
            make: "Whatsminer".into(),
            model: "M60S".into(),
            firmware: Some("20250101".into()),
            capabilities: ebb_domain::Capabilities::default(),
            nominal_power_w: Some(3400.0),
        };
        let field = |devices: &[DiscoveredDevice]| registration(devices).unwrap_err().field;
        assert!(registration(&[dev("10.0.0.1"), dev("10.0.0.2")]).is_ok());
        assert_eq!(
            field(&[dev("10.0.0.1"), dev("10.0.0.1")]).as_deref(),
            Some("devices[1].address"),
            "a duplicate address"
        );
        assert_eq!(
            field(&[dev("10.0.0.1"), dev("not an address")]).as_deref(),
            Some("devices[1].address")
        );
        let mut long = dev("10.0.0.3");
        long.model = "M".repeat(MAX_DEVICE_TEXT + 1);
        assert_eq!(field(&[long]).as_deref(), Some("devices[0].model"));
        let mut hot = dev("10.0.0.4");
        hot.nominal_power_w = Some(f64::INFINITY);
        assert_eq!(field(&[hot]).as_deref(), Some("devices[0].nominal_power_w"));
        let many: Vec<DiscoveredDevice> = (0..=ebb_bus::REGISTER_MAX_DEVICES)
            .map(|i| dev(&format!("10.1.{}.{}", i / 250, i % 250)))
            .collect();
        assert_eq!(field(&many).as_deref(), Some("devices"));
    }
}

//! Assertions on the HTTP API's JSON that more than one test suite makes (the gateway's tests and
//! the system test), written once so that both hold the API to the same contract.

use std::collections::BTreeSet;

use ebb_domain::TargetState;
use serde_json::Value;

/// The fields of a curtailment as the API shows it, in a list or alone: a summary with target
/// counts. A new field is a change of the API's contract and is added here on purpose.
pub const EVENT_VIEW_FIELDS: [&str; 23] = [
    "activated_at",
    "created_at",
    "ended_at",
    "expected_shed_kw",
    "external_reference",
    "external_source",
    "id",
    "max_duration_s",
    "mode",
    "mode_params",
    "observed_shed_kw",
    "priority",
    "reason",
    "restore_batch_interval_s",
    "restore_batch_size",
    "restore_started_at",
    "scope",
    "selection",
    "source_actor",
    "state",
    "stop_reason",
    "target_kw",
    "targets",
];

/// Asserts that `view` is an event summary that cannot carry per-target rows: its fields are
/// exactly [`EVENT_VIEW_FIELDS`], `targets` maps target states to integer counts, and the only
/// list anywhere in it is `scope.sites` (site codes).
///
/// # Panics
/// When any of that does not hold, saying which and showing the view.
pub fn assert_event_summary(view: &Value) {
    let fields: BTreeSet<&str> = view
        .as_object()
        .unwrap_or_else(|| panic!("an event view is an object: {view}"))
        .keys()
        .map(String::as_str)
        .collect();
    let want: BTreeSet<&str> = EVENT_VIEW_FIELDS.into_iter().collect();
    assert_eq!(fields, want, "the fields of an event view: {view}");

    let targets = view["targets"]
        .as_object()
        .unwrap_or_else(|| panic!("targets is an object of counts: {view}"));
    for (state, count) in targets {
        assert!(
            state.parse::<TargetState>().is_ok(),
            "targets.{state} is not a target state: {view}"
        );
        assert!(
            count.is_u64(),
            "targets.{state} is not a count but {count}: {view}"
        );
    }

    let mut lists = Vec::new();
    find_lists(view, String::new(), &mut lists);
    lists.retain(|path| path != "/scope/sites");
    assert!(
        lists.is_empty(),
        "an event view has no list but scope.sites, found {lists:?}: {view}"
    );
}

/// The JSON pointer of every array in `value`.
fn find_lists(value: &Value, path: String, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                find_lists(item, format!("{path}/{i}"), out);
            }
            out.push(path);
        }
        Value::Object(fields) => {
            for (name, field) in fields {
                find_lists(field, format!("{path}/{name}"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary() -> Value {
        let mut view = serde_json::Map::new();
        for field in EVENT_VIEW_FIELDS {
            view.insert(field.into(), Value::Null);
        }
        view.insert("scope".into(), json!({"sites": ["site-a"]}));
        view.insert("targets".into(), json!({"pending": 2, "confirmed": 1}));
        view.insert(
            "selection".into(),
            json!({"per_site": {"site-a": {"devices": 3}}}),
        );
        Value::Object(view)
    }

    fn fails(view: Value) -> bool {
        std::panic::catch_unwind(|| assert_event_summary(&view)).is_err()
    }

    #[test]
    fn a_summary_passes_and_anything_per_target_fails() {
        assert_event_summary(&summary());
        let with = |pointer: &str, value: Value| {
            let mut v = summary();
            *v.pointer_mut(pointer).unwrap() = value;
            v
        };
        let mut extra = summary();
        extra["devices"] = json!([]);
        assert!(fails(extra), "an extra field");
        let mut missing = summary();
        missing.as_object_mut().unwrap().remove("targets");
        assert!(fails(missing), "a missing field");
        assert!(
            fails(with("/targets", json!([{"device": "x"}]))),
            "targets as rows"
        );
        assert!(
            fails(with("/targets/pending", json!(["x", "y"]))),
            "a list per state"
        );
        assert!(
            fails(with("/targets/pending", json!(1.5))),
            "a count that is not one"
        );
        assert!(
            fails(with("/targets/pending", json!(-1))),
            "a negative count"
        );
        assert!(
            fails(with("/targets", json!({"asleep": 1}))),
            "not a target state"
        );
        assert!(
            fails(with("/selection/per_site/site-a/devices", json!(["d1"]))),
            "rows hidden in the selection"
        );
    }
}

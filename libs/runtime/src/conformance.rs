//! Checks every service's settings must pass, for each service's own tests: a file with one bad
//! value and one unknown key is refused naming both, and `--print-config` reads back as the same
//! settings. They panic with the problems found, like assertions.

use crate::settings::{self, Needs, Settings, Sources};
use std::io::Write;

/// Loads a file of `required` lines (what the service cannot start without), `bad_line` (a
/// `key = value` whose value is invalid) and an unknown key, and asserts that both the bad key
/// and the unknown one are named.
pub fn names_bad_value_and_unknown_key<S: Settings>(
    service: &str,
    needs: Needs,
    required: &str,
    bad_line: &str,
) {
    let bad_key = bad_line
        .split('=')
        .next()
        .map(str::trim)
        .expect("bad_line is `key = value`");
    let text = format!("{required}\n{bad_line}\nno_such_setting = 1\n");
    let file = temp_file(&text);
    let sources = Sources {
        file: Some(file.path().to_owned()),
        ..Sources::default()
    };
    let problems = match settings::load::<S>(service, needs, &sources) {
        Ok(s) => panic!("{service}: a file with {bad_line:?} and an unknown key loaded: {s:?}"),
        Err(p) => p.0,
    };
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("no_such_setting: unknown key")),
        "{service}: the unknown key is not named: {problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with(bad_key)),
        "{service}: the bad value of {bad_key} is not named: {problems:#?}"
    );
}

/// Loads settings from `flags`, prints them as `--print-config` does, reads the text back as a
/// config file, and asserts that the two are equal.
pub fn print_reads_back<S: Settings>(service: &str, needs: Needs, flags: &[(&str, &str)]) {
    let loaded = settings::load::<S>(service, needs, &Sources::flags(flags.iter().copied()))
        .unwrap_or_else(|p| panic!("{service}: {p}"));
    let text = settings::to_toml(service, needs, &loaded);
    let file = temp_file(&text);
    let back = settings::load::<S>(
        service,
        needs,
        &Sources {
            file: Some(file.path().to_owned()),
            ..Sources::default()
        },
    )
    .unwrap_or_else(|p| panic!("{service}: the printed settings do not load: {p}\n{text}"));
    assert_eq!(
        back, loaded,
        "{service}: printed settings read back differently\n{text}"
    );
}

fn temp_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("creating a temporary file");
    f.write_all(text.as_bytes())
        .expect("writing a temporary file");
    f
}

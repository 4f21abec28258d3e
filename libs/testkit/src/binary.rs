//! Finding the `nats-server`, `initdb` and `postgres` binaries.
//!
//! Lookups take the environment as arguments instead of reading it, so tests can inject it
//! (process-wide `set_var` would race with tests running in parallel threads).

use std::{
    ffi::{OsStr, OsString},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::{Error, Result};

/// Environment variable naming the nats-server binary to use.
pub(crate) const NATS_SERVER_ENV: &str = "EBB_NATS_SERVER";
/// Environment variable naming the directory holding `initdb` and `postgres`.
pub(crate) const PG_BINDIR_ENV: &str = "EBB_PG_BINDIR";
/// Where Debian installs PostgreSQL, one directory per major version.
pub(crate) const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

const NATS_PACKAGE: &str = "nats-server";
const PG_PACKAGE: &str = "postgresql";

/// The PostgreSQL server programs, taken from one directory so their versions match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgBinaries {
    pub(crate) initdb: PathBuf,
    pub(crate) postgres: PathBuf,
}

/// Resolves nats-server: an explicit path wins, then `EBB_NATS_SERVER`, then `PATH`.
pub(crate) fn nats_server(
    explicit: Option<&Path>,
    env_override: Option<OsString>,
    path_var: Option<OsString>,
) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return existing(path, "nats-server", NATS_PACKAGE, "given path");
    }
    if let Some(path) = env_override.filter(|p| !p.is_empty()) {
        return existing(
            Path::new(&path),
            "nats-server",
            NATS_PACKAGE,
            NATS_SERVER_ENV,
        );
    }
    let dirs = split_path(path_var.as_deref());
    find_in(&dirs, "nats-server").ok_or_else(|| Error::MissingBinary {
        binary: "nats-server".into(),
        package: NATS_PACKAGE,
        searched: format!("not on PATH, and {NATS_SERVER_ENV} is not set"),
    })
}

/// Resolves `initdb` and `postgres`: `EBB_PG_BINDIR` if set, else the first directory on `PATH`
/// that has `initdb`, else the newest `/usr/lib/postgresql/<version>/bin`.
pub(crate) fn postgres(
    bindir_override: Option<OsString>,
    path_var: Option<OsString>,
    debian_root: &Path,
) -> Result<PgBinaries> {
    let (dirs, searched) = match bindir_override.filter(|d| !d.is_empty()) {
        Some(dir) => {
            let searched = format!("{PG_BINDIR_ENV}={}", Path::new(&dir).display());
            (vec![PathBuf::from(dir)], searched)
        }
        None => {
            let mut dirs = split_path(path_var.as_deref());
            dirs.extend(debian_bindirs(debian_root));
            let searched = format!("on PATH and in {}/*/bin", debian_root.display());
            (dirs, searched)
        }
    };
    let Some(initdb) = find_in(&dirs, "initdb") else {
        return Err(Error::MissingBinary {
            binary: "initdb".into(),
            package: PG_PACKAGE,
            searched,
        });
    };
    let dir = initdb.parent().unwrap_or(Path::new("/"));
    let Some(postgres) = find_in(&[dir.to_path_buf()], "postgres") else {
        return Err(Error::MissingBinary {
            binary: "postgres".into(),
            package: PG_PACKAGE,
            searched: format!("next to {}", initdb.display()),
        });
    };
    Ok(PgBinaries { initdb, postgres })
}

fn existing(path: &Path, binary: &str, package: &'static str, origin: &str) -> Result<PathBuf> {
    if is_executable(path) {
        Ok(path.to_path_buf())
    } else {
        Err(Error::MissingBinary {
            binary: binary.into(),
            package,
            searched: format!("{origin} {} is not an executable file", path.display()),
        })
    }
}

fn split_path(path_var: Option<&OsStr>) -> Vec<PathBuf> {
    path_var
        .map(|p| {
            std::env::split_paths(p)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// `/usr/lib/postgresql/*/bin`, newest major version first.
fn debian_bindirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn find_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin(dir: &Path, name: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn nats_env_override_pointing_nowhere_names_the_package() {
        let err = nats_server(None, Some("/nonexistent/nats-server".into()), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("apt-get install nats-server"), "{msg}");
        assert!(
            msg.contains("EBB_NATS_SERVER /nonexistent/nats-server"),
            "{msg}"
        );
        assert_eq!(err.missing_package(), Some("nats-server"));
    }

    #[test]
    fn nats_found_on_path_unless_overridden() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = fake_bin(&tmp.path().join("bin"), "nats-server");
        let path_var = std::env::join_paths(["/nonexistent".into(), tmp.path().join("bin")]).ok();
        assert_eq!(nats_server(None, None, path_var.clone()).unwrap(), bin);
        assert_eq!(nats_server(None, Some("".into()), path_var).unwrap(), bin);
        let err = nats_server(None, None, Some("/nonexistent".into())).unwrap_err();
        assert!(err.to_string().contains("not on PATH"), "{err}");
    }

    #[test]
    fn postgres_prefers_path_then_newest_debian_version() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("usr-lib-postgresql");
        for version in ["9.6", "13", "15"] {
            fake_bin(&root.join(version).join("bin"), "initdb");
            fake_bin(&root.join(version).join("bin"), "postgres");
        }
        let found = postgres(None, Some("/nonexistent".into()), &root).unwrap();
        assert_eq!(found.initdb, root.join("15/bin/initdb"));
        assert_eq!(found.postgres, root.join("15/bin/postgres"));

        let on_path = tmp.path().join("local-bin");
        fake_bin(&on_path, "initdb");
        fake_bin(&on_path, "postgres");
        let found = postgres(None, Some(on_path.clone().into()), &root).unwrap();
        assert_eq!(found.initdb, on_path.join("initdb"));

        let found = postgres(Some(root.join("13/bin").into()), None, &root).unwrap();
        assert_eq!(found.postgres, root.join("13/bin/postgres"));
    }

    #[test]
    fn postgres_missing_names_the_binary_and_package() {
        let tmp = tempfile::tempdir().unwrap();
        let err = postgres(None, Some("/nonexistent".into()), tmp.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("`initdb` not found"), "{msg}");
        assert!(msg.contains("apt-get install postgresql"), "{msg}");

        fake_bin(tmp.path(), "initdb");
        let err = postgres(Some(tmp.path().into()), None, Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().starts_with("`postgres` not found"), "{err}");
    }
}

//! Certificates for the hub's TLS ports when a deployment has none of its own (`ebb dev`, tests,
//! a first installation): a private CA and a server certificate it signs for the given names.
//! Clients trust the CA file (`nats_ca`); a production hub may use any certificate instead.

use crate::authority::{AuthError, write_public, write_secret};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// Where [`generate`] put its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA clients trust.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The file names under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        }
    }
}

/// Writes a new CA and a server certificate for `hosts` (names or IP addresses) into `dir`,
/// unless they exist already (then they are kept).
pub fn generate(dir: &Path, hosts: &[String]) -> Result<TlsFiles, AuthError> {
    let files = TlsFiles::in_dir(dir);
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).map_err(|source| AuthError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let err = |e: rcgen::Error| AuthError::Tls(e.to_string());
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ebb nats private ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

    let key = KeyPair::generate().map_err(err)?;
    let mut server = CertificateParams::new(hosts.to_vec()).map_err(err)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "ebb nats hub");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = server.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;

    write_public(&files.ca, &ca_cert.pem())?;
    write_public(&files.cert, &cert.pem())?;
    write_secret(&files.key, &key.serialize_pem())?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_and_a_server_certificate_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let files = generate(dir.path(), &hosts).unwrap();
        let ca = std::fs::read_to_string(&files.ca).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            std::fs::read_to_string(&files.key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        generate(dir.path(), &hosts).unwrap();
        assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), ca, "kept");
    }
}

//! The receiver's TLS identity (self-signed, made on first start) and the agent's pinned client.
//!
//! Agents trust exactly one certificate: the one whose SHA-256 (the pin) the operator gave them.
//! Name and validity checks are deliberately not made: live images reach the receiver by IP
//! literal, and boot with clocks that may be years off. The pin is a stronger check than either.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};

/// Installs ring as rustls's process-wide provider. Idempotent; call before any TLS use.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The receiver's certificate and key, and the pin agents check it with.
pub struct ServerIdentity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub pin: String,
}

/// SHA-256 of a certificate's DER, lowercase hex: what `--pin` and `ferry.pin` take.
pub fn pin_of(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

/// Loads `dir/cert.pem` and `dir/key.pem`, creating them on first start. The certificate is valid
/// from 2000-01-01 so that a source booted with a wrong clock still accepts it even without a pin
/// check, and names every address a source may use (`extra_names` plus loopback and QEMU's host).
pub fn ensure_identity(dir: &Path, extra_names: &[String]) -> Result<ServerIdentity> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "10.0.2.2".to_string()];
        names.extend(extra_names.iter().cloned());
        names.sort();
        names.dedup();
        let mut params = rcgen::CertificateParams::new(names).context("certificate parameters")?;
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        params.distinguished_name.push(rcgen::DnType::CommonName, "ferry receiver");
        let key = rcgen::KeyPair::generate().context("generating the receiver's TLS key")?;
        let cert = params.self_signed(&key).context("signing the receiver's certificate")?;
        crate::fsx::write_atomic_mode(&key_path, key.serialize_pem().as_bytes(), 0o600)
            .with_context(|| format!("writing {}", key_path.display()))?;
        crate::fsx::write_atomic(&cert_path, cert.pem().as_bytes())
            .with_context(|| format!("writing {}", cert_path.display()))?;
    }
    let cert = CertificateDer::from_pem_file(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let pin = pin_of(&cert);
    Ok(ServerIdentity { cert, key, pin })
}

/// The receiver's rustls configuration: HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(id: &ServerIdentity) -> Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![id.cert.clone()], id.key.clone_key())
        .context("building the TLS configuration")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Checks a pin given on a command line: 64 hex digits (colons allowed, as browsers show them).
pub fn normalize_pin(pin: &str) -> Result<String> {
    let p: String = pin.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("a pin is the SHA-256 of the receiver's certificate: 64 hex digits (ferry serve prints it)");
    }
    Ok(p)
}

/// Accepts exactly the certificate with the given pin, and records a mismatch so the caller
/// can stop retrying and say so.
#[derive(Debug)]
pub struct PinVerifier {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    pub mismatch: Arc<AtomicBool>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if pin_of(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            self.mismatch.store(true, Ordering::SeqCst);
            Err(rustls::Error::General(format!(
                "the receiver's certificate has pin {}, not the pin given",
                pin_of(end_entity)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration that trusts only the pinned certificate. The flag turns true when a
/// server presented another certificate.
pub fn pinned_client_config(pin: &str) -> Result<(rustls::ClientConfig, Arc<AtomicBool>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch = Arc::new(AtomicBool::new(false));
    let verifier = PinVerifier { pin: normalize_pin(pin)?, provider: provider.clone(), mismatch: mismatch.clone() };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // HTTP/1.1: each upload in flight gets its own connection, so TLS work spreads over every
    // core on both ends instead of one HTTP/2 connection's single task (measured: a single h2
    // connection was the sender's and receiver's bottleneck on loopback).
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((cfg, mismatch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_normalized_and_checked() {
        let hex = "AB".repeat(32);
        assert_eq!(normalize_pin(&hex).unwrap(), "ab".repeat(32));
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(normalize_pin(&colons).unwrap(), "ab".repeat(32));
        assert!(normalize_pin("abc").is_err());
        assert!(normalize_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn identity_is_made_once_and_reloaded() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_identity(dir.path(), &[]).unwrap();
        let b = ensure_identity(dir.path(), &[]).unwrap();
        assert_eq!(a.pin, b.pin);
        assert_eq!(a.pin, pin_of(&a.cert));
        server_config(&a).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

//! TLS client setup: HTTP/1.1 only (no ALPN, protocol.md §1) and a certificate check that is
//! either a pinned SHA-256 fingerprint or the system trust store, never both. A refused
//! certificate is reported with its fingerprint so the user can compare and pin it.

use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::error::RemoteError;
use super::options::Fingerprint;

/// Why the last handshake refused the certificate (filled by the verifier, read after the
/// handshake failed, because rustls only passes a string up).
pub(crate) type CertProblem = Arc<Mutex<Option<RemoteError>>>;

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system trust store, loaded once. Unreadable entries are skipped.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            Arc::new(store)
        })
        .clone()
}

#[derive(Debug)]
struct Verifier {
    server: String,
    pin: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
    problem: CertProblem,
}

impl Verifier {
    fn refuse(&self, error: RemoteError) -> rustls::Error {
        let message = error.to_string();
        *self.problem.lock().unwrap() = Some(error);
        rustls::Error::General(message)
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = Fingerprint::of_certificate(end_entity);
        if let Some(expected) = self.pin {
            // The stricter rule: a configured pin is required, whatever the trust store says.
            return if actual == expected {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(self.refuse(RemoteError::FingerprintMismatch {
                    server: self.server.clone(),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                }))
            };
        }
        let roots = system_roots();
        let result = if roots.is_empty() {
            Err("no system root certificates found".to_string())
        } else {
            WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
                .build()
                .map_err(|err| err.to_string())
                .and_then(|webpki| {
                    webpki
                        .verify_server_cert(
                            end_entity,
                            intermediates,
                            server_name,
                            ocsp_response,
                            now,
                        )
                        .map_err(|err| err.to_string())
                })
        };
        result.map_err(|reason| {
            self.refuse(RemoteError::UntrustedCertificate {
                server: self.server.clone(),
                reason,
                fingerprint: actual.to_string(),
            })
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config for one connection to `server`, and the slot where a refused certificate
/// is explained.
pub(crate) fn client_config(
    server: &str,
    pin: Option<Fingerprint>,
) -> Result<(Arc<ClientConfig>, CertProblem), RemoteError> {
    let problem = CertProblem::default();
    let verifier = Arc::new(Verifier {
        server: server.to_string(),
        pin,
        provider: provider(),
        problem: problem.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| RemoteError::Tls {
            server: server.to_string(),
            message: err.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // No ALPN: the session upgrades need HTTP/1.1, and PBS offers no h2 over ALPN anyway.
    debug_assert!(config.alpn_protocols.is_empty());
    Ok((Arc::new(config), problem))
}

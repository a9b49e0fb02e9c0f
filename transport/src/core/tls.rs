//! TLS 1.3 for QUIC between nodes, with no certificate authority: each node's certificate is
//! self-signed with its ed25519 node key, a client dials expecting one node identity and
//! accepts only a certificate carrying that key, and a server requires a client certificate
//! and learns the client's node identity from it (the allow-list check comes after). Making
//! certificates and deciding which to accept is pure, as quinn keeps its own rustls glue in
//! quinn-proto: the shell hands the configs to its endpoint.

use netmachine_schema::{Identity, Keypair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

/// The ALPN protocol name: the protocol and its major version.
pub const ALPN: &[u8] = b"netmachine/1";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make the node certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

/// The node's TLS identity: its self-signed certificate and key.
#[derive(Clone)]
pub struct NodeTls {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl NodeTls {
    pub fn new(node: &Keypair) -> Result<Self, TlsError> {
        let key = node.to_pkcs8_der();
        let signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key.clone()),
            &rcgen::PKCS_ED25519,
        )?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, node.identity().to_string());
        let cert = params.self_signed(&signer)?.der().clone();
        Ok(NodeTls { cert, key, provider: Arc::new(rustls::crypto::ring::default_provider()) })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    /// For accepting connections: any node may complete TLS; who is let in is decided after.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(NodeCertificate { provider: self.provider.clone(), expected: None }))
            .with_single_cert(vec![self.cert.clone()], self.key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(kept_alive());
        Ok(config)
    }

    /// For dialing `expected`: only a certificate with that node's key is accepted.
    pub fn client_config(&self, expected: Identity) -> Result<quinn::ClientConfig, TlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NodeCertificate {
                provider: self.provider.clone(),
                expected: Some(expected),
            }))
            .with_client_auth_cert(vec![self.cert.clone()], self.key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(kept_alive());
        Ok(config)
    }
}

/// QUIC settings for both ends: keep-alives well within the idle timeout, so that a quiet
/// connection to a permanent peer is not closed by QUIC (30 s without a packet) and redialed;
/// connections to ephemeral peers are closed by the transport's own idle rule instead.
fn kept_alive() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    Arc::new(transport)
}

/// The node identity in a certificate: its subject key, which must be ed25519.
pub fn node_of_certificate(cert: &CertificateDer<'_>) -> Result<Identity, rustls::Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| rustls::Error::General(format!("unreadable certificate: {e}")))?;
    let spki = parsed.subject_public_key_info();
    // SubjectPublicKeyInfo for ed25519 (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 },
    // BIT STRING { 0x00, key } }, 44 bytes.
    const PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    let bytes: &[u8] = spki.as_ref();
    match bytes.strip_prefix(&PREFIX[..]) {
        Some(key) if key.len() == 32 => Ok(Identity(key.try_into().expect("32 bytes"))),
        _ => Err(rustls::Error::General("the certificate key is not an ed25519 node key".into())),
    }
}

#[derive(Debug)]
struct NodeCertificate {
    provider: Arc<CryptoProvider>,
    /// The node a client dialed; `None` on the server side, which takes any node.
    expected: Option<Identity>,
}

impl NodeCertificate {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let node = node_of_certificate(cert)?;
        match self.expected {
            Some(expected) if expected != node => Err(rustls::Error::General(format!(
                "the peer is node {node}, not the expected node {expected}"
            ))),
            _ => Ok(()),
        }
    }

    fn tls13(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
}

impl ServerCertVerifier for NodeCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not spoken between nodes".into()))
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for NodeCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(&self, end_entity: &CertificateDer<'_>, _intermediates: &[CertificateDer<'_>], _now: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not spoken between nodes".into()))
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_carries_the_node_key() {
        let node = Keypair::generate();
        let tls = NodeTls::new(&node).unwrap();
        assert_eq!(node_of_certificate(&tls.cert).unwrap(), node.identity());
        assert!(tls.server_config().is_ok());
        assert!(tls.client_config(node.identity()).is_ok());
    }

    #[test]
    fn a_dialer_refuses_a_certificate_of_another_node() {
        let node = Keypair::generate();
        let tls = NodeTls::new(&node).unwrap();
        let dialer = NodeCertificate {
            provider: tls.provider.clone(),
            expected: Some(Keypair::generate().identity()),
        };
        let err = dialer.check(&tls.cert).unwrap_err().to_string();
        assert!(err.contains("not the expected node"), "{err}");
        assert!(node_of_certificate(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])).is_err());
    }
}

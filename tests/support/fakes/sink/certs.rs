//! Certificates for [`super::Tls`]: a process-wide test CA and the leaf
//! certificates the sinks present.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use super::Tls;

struct TestCa {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Outpost test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    })
}

pub(super) fn test_ca_pem() -> String {
    test_ca().cert_pem.clone()
}

pub(super) fn tls_acceptor(tls: &Tls, hostname: &str, addr: SocketAddr) -> Option<TlsAcceptor> {
    let mut names = vec![
        "localhost".to_string(),
        hostname.to_string(),
        addr.ip().to_string(),
    ];
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let cert = match tls {
        Tls::None => return None,
        Tls::SelfSigned => rcgen::CertificateParams::new(names)
            .expect("cert params")
            .self_signed(&key)
            .expect("self-signed cert"),
        Tls::CaSigned(extra) => {
            names.extend(extra.iter().cloned());
            rcgen::CertificateParams::new(names)
                .expect("cert params")
                .signed_by(&key, &test_ca().issuer)
                .expect("CA-signed cert")
        }
        Tls::BadCert => {
            let mut params = rcgen::CertificateParams::new(vec!["wrong-host.invalid".to_string()])
                .expect("cert params");
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
            params.signed_by(&key, &test_ca().issuer).expect("bad cert")
        }
    };
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("TLS server config");
    Some(TlsAcceptor::from(Arc::new(config)))
}

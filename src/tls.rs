//! Server TLS: the configured certificate, or a self-signed one generated on first
//! start in `data_dir/tls/` (SPEC §7). TLS 1.2 and 1.3 only (rustls has nothing older).

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The module of rustls that logs, at `warn`, a server name a client sent that is
/// not a DNS name: msmtp and other GnuTLS clients send the IP address they
/// connect to, on every connection.
const CLIENT_SNI_LOG_TARGET: &str = "rustls::msgs::handshake";

/// `filter` (from `RUST_LOG`, or the default) without rustls' warnings about the
/// server names clients send: a client's quirk the operator can do nothing about,
/// and the handshake goes on (without SNI). They stay when logging is at debug or
/// finer, or when the filter names rustls itself.
pub fn quiet_client_sni_warnings(filter: EnvFilter) -> EnvFilter {
    let debugging = filter
        .max_level_hint()
        .is_some_and(|level| level >= LevelFilter::DEBUG);
    if debugging || filter.to_string().contains("rustls") {
        return filter;
    }
    filter.add_directive(
        format!("{CLIENT_SNI_LOG_TARGET}=error")
            .parse()
            .expect("a valid directive"),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("certificate and key do not work together: {0}")]
    Config(String),
}

/// Where the server's certificate came from, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    Configured(PathBuf),
    SelfSignedExisting(PathBuf),
    SelfSignedGenerated(PathBuf),
}

/// The server's certificate, replaceable while running: `reload` (on SIGHUP)
/// swaps it atomically, so new handshakes get the new one while sessions already
/// up keep theirs. rustls asks for it on every handshake.
#[derive(Debug)]
pub struct ServerCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCertificate {
    fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<ServerCertificate, TlsError> {
        let current = RwLock::new(Arc::new(read_pair(&cert_path, &key_path, &provider)?));
        Ok(ServerCertificate {
            cert_path,
            key_path,
            provider,
            current,
        })
    }

    /// Reads the certificate and key files again and uses them from the next
    /// handshake on. On error (a half-written file, a key that does not match) the
    /// certificate in use stays.
    pub fn reload(&self) -> Result<&Path, TlsError> {
        let pair = read_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().expect("certificate lock") = Arc::new(pair);
        Ok(&self.cert_path)
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let read_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| read_err(cert_path, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(cert_path, &e))?;
    if certs.is_empty() {
        return Err(read_err(cert_path, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| read_err(key_path, &e))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Config(e.to_string()))
}

/// Loads `cert`/`key` if configured, else the self-signed pair in `data_dir/tls/`,
/// generating it for `hostname` when absent.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    hostname: &str,
) -> Result<(Arc<ServerConfig>, CertificateSource, Arc<ServerCertificate>), TlsError> {
    let (cert_path, key_path, source) = match (cert, key) {
        (Some(c), Some(k)) => (
            c.to_path_buf(),
            k.to_path_buf(),
            CertificateSource::Configured(c.to_path_buf()),
        ),
        _ => {
            let dir = data_dir.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if k.exists() && !renewal_due(&c) {
                (c.clone(), k, CertificateSource::SelfSignedExisting(c))
            } else {
                generate_self_signed(&dir, &c, &k, hostname)?;
                (c.clone(), k, CertificateSource::SelfSignedGenerated(c))
            }
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificate = Arc::new(ServerCertificate::load(
        cert_path,
        key_path,
        provider.clone(),
    )?);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    // Session resumption, for clients that connect once per message: tickets (keys
    // made at start-up, rotated every 6 hours by rustls) and, for TLS 1.2 clients
    // without ticket support, a session cache. A resumed handshake skips the
    // certificate and the signature.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    Ok((Arc::new(config), source, certificate))
}

/// TLS 1.2 sessions remembered for resumption (a few hundred bytes each).
const SESSION_CACHE_ENTRIES: usize = 4096;

/// Validity of a generated certificate: a year and a month, the most browsers
/// accept (CA/B Forum 398-day limit); it is replaced a month before it ends.
const SELF_SIGNED_DAYS: i64 = 397;
const RENEW_AFTER_DAYS: u64 = 365;

/// True when the generated certificate is missing or old enough to replace.
fn renewal_due(cert: &Path) -> bool {
    std::fs::metadata(cert)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|written| written.elapsed().ok())
        .is_none_or(|age| age.as_secs() > RENEW_AFTER_DAYS * 86_400)
}

fn generate_self_signed(
    dir: &Path,
    cert: &Path,
    key: &Path,
    hostname: &str,
) -> Result<(), TlsError> {
    let generate_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params =
        rcgen::CertificateParams::new(vec![hostname.to_string()]).map_err(generate_err)?;
    // Clients and `outpost check` show the subject: the host name, not rcgen's
    // placeholder.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let date = |t: chrono::DateTime<chrono::Utc>| {
        use chrono::Datelike;
        rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8)
    };
    let now = chrono::Utc::now();
    params.not_before = date(now - chrono::Duration::days(1));
    params.not_after = date(now + chrono::Duration::days(SELF_SIGNED_DAYS));
    let key_pair = rcgen::KeyPair::generate().map_err(generate_err)?;
    let certificate = params.self_signed(&key_pair).map_err(generate_err)?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write_private(key, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert, certificate.pem()).map_err(|source| TlsError::Write {
        path: cert.to_path_buf(),
        source,
    })
}

/// Writes a file readable only by its owner (private keys).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_sni_warnings_are_left_out_unless_debugging() {
        let quiet = |spec: &str| quiet_client_sni_warnings(EnvFilter::new(spec)).to_string();
        let directive = format!("{CLIENT_SNI_LOG_TARGET}=error");
        assert!(quiet("info").contains(&directive));
        assert!(quiet("warn,outpost=info").contains(&directive));
        assert!(!quiet("debug").contains(&directive));
        assert!(!quiet("info,outpost=trace").contains(&directive));
        assert!(!quiet("info,rustls=warn").contains(&directive));
    }

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let (_, first, _) = server_config(None, None, dir.path(), "relay.test").unwrap();
        assert!(matches!(first, CertificateSource::SelfSignedGenerated(_)));
        let pem = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(parsed.subject().to_string(), "CN=relay.test");
        let (_, second, _) = server_config(None, None, dir.path(), "relay.test").unwrap();
        assert!(matches!(second, CertificateSource::SelfSignedExisting(_)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn missing_configured_cert_names_the_file() {
        let err = server_config(
            Some(Path::new("/nonexistent/c.pem")),
            Some(Path::new("/nonexistent/k.pem")),
            Path::new("/tmp"),
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }
}

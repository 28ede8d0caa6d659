//! Configuration: the typed TOML schema of SPEC §8, its defaults, and validation.
//!
//! Every table denies unknown fields, so a misspelt key is a start-up error that
//! names the key and its line (the `toml` crate reports spans). The loaded
//! configuration is validated once and then shared read-only as `Arc<Config>`.
//! Durations are strings such as `"30s"`, `"5m"`, `"2h"`, `"5d"`.

mod duration;

pub use duration::Duration;

use crate::smtp::Domain;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A config file that could not be read or does not match the schema.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name used in the banner, EHLO and Received headers. Default: the machine's host name.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Where the embedded store and generated certificate live. Default `./outpost-data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Default: the four ports of SPEC §1 on all addresses.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub relay: RelayConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub deliverability: DeliverabilityConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// On SIGTERM or SIGINT: how long sessions in the middle of a mail transaction
    /// may take to finish once listening has stopped. Default 30s (systemd's
    /// default stop timeout is 90s, Docker's 10s: `docker stop -t 40`).
    pub shutdown_grace: Duration,
    /// This node's name in a store shared by several nodes: the claims it holds
    /// carry it, so a restarting node releases its own claims and no other's.
    /// Default: the machine's host name. Unique per node.
    pub node_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_grace: Duration::from_secs(30),
            node_name: default_hostname(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (`key=value` fields).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`. The level comes from `RUST_LOG` (default `info`).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Port 25: MX-facing; relays only for authenticated users and trusted networks.
    Relay,
    /// Ports 587/2525: STARTTLS, AUTH required.
    Submission,
    /// Port 465: implicit TLS (RFC 8314), AUTH required.
    Submissions,
}

impl ListenerMode {
    pub fn requires_auth(self) -> bool {
        !matches!(self, ListenerMode::Relay)
    }

    /// The name the configuration uses (`mode = "relay"`), as logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerMode::Relay => "relay",
            ListenerMode::Submission => "submission",
            ListenerMode::Submissions => "submissions",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub mode: ListenerMode,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Absent: a self-signed certificate is generated in `data_dir/tls/`.
    pub cert: Option<PathBuf>,
    /// PEM private key; required when `cert` is set.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// CIDRs whose clients may relay through `relay` listeners without AUTH. Default: none.
    #[serde(default)]
    pub trusted_networks: Vec<IpNet>,
    /// Domains Outpost receives mail for itself (bounces, complaints); anyone may send
    /// to them on port 25. Default: `hostname`.
    #[serde(default)]
    pub local_domains: Vec<String>,
}

impl RelayConfig {
    /// Whether Outpost receives mail for `domain` itself: the one answer to "is this
    /// one of our own domains" for SMTP, the API and the bounce reports the queue
    /// sends. `local_domains` is lowercased at load, as [`Domain`] is.
    pub fn is_local(&self, domain: &Domain) -> bool {
        self.local_domains.iter().any(|d| d == domain.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message accepted, in octets (SIZE is advertised with it). Default 50 MiB.
    pub max_message_size: usize,
    /// Recipients per message; more get `452 4.5.3`. Default 1000.
    pub max_recipients: usize,
    /// Longest command line, in octets including CRLF; longer gets `500 5.5.2`. Default 4096.
    pub max_line_length: usize,
    /// Simultaneous connections over all listeners. Default 10,000.
    pub max_connections: usize,
    /// Simultaneous connections from one client IP. Default 100.
    pub max_connections_per_ip: usize,
    /// Wait for a command before `421`. Default 5m.
    pub command_timeout: Duration,
    /// Wait for message data before `421`. Default 10m.
    pub data_timeout: Duration,
    /// Commands that are neither mail nor valid, before the connection is closed. Default 20.
    pub max_errors: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_line_length: 4096,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            max_errors: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Wrong passwords from one IP (SMTP and HTTP together) before it is refused.
    /// Default 5.
    pub max_failures: u32,
    /// How long an IP over `max_failures` (or an account over
    /// `max_account_failures`) is refused. Default 10m.
    pub lockout: Duration,
    /// Wrong passwords for one account, from any addresses, before the account is
    /// refused to addresses that have not logged in to it recently. Default 20.
    pub max_account_failures: u32,
    /// How long a verified password is accepted again without re-running argon2
    /// (`0s`: never). Default 1h.
    pub cache_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_failures: 5,
            lockout: Duration::from_secs(600),
            max_account_failures: 20,
            cache_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Most messages committed with one fsync (group commit). Default 256.
    pub max_batch: usize,
    /// Where the store is: `postgres://user@host/db` for a PostgreSQL database
    /// (docs/cluster.md); absent or `sqlite:` for the embedded SQLite store in
    /// `data_dir`.
    pub url: Option<String>,
    /// How long a claim on due work lasts unless its node renews it: a node that
    /// dies holding work has it taken over by the others this long after its last
    /// renewal. Default 60s.
    pub lease: Duration,
    /// PostgreSQL only: how long one statement (or a connection's set-up) may
    /// take before it fails and its connection is dropped, so a database that
    /// hangs cannot hold an SMTP session or a delivery forever: the session is
    /// answered `451 4.3.0` instead. Default 30s.
    pub timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_batch: 256,
            url: None,
            lease: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }
}

/// The store `[store] url` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded SQLite database in `data_dir`.
    Sqlite,
    /// A PostgreSQL database, by URL.
    Postgres(String),
}

impl StoreConfig {
    /// The store the configuration names (checked by `Config::validate`).
    pub fn location(&self) -> StoreLocation {
        match self.url.as_deref() {
            None | Some("sqlite:") => StoreLocation::Sqlite,
            Some(url) => StoreLocation::Postgres(url.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// No TLS on this route, even when offered.
    None,
    /// STARTTLS when offered, plaintext otherwise.
    Opportunistic,
    /// STARTTLS required; the certificate is not verified.
    Required,
    /// STARTTLS required and the certificate verified for the host name.
    Verify,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub tls: TlsPolicy,
    /// Intervals between attempts; the last one repeats.
    pub retry: Vec<Duration>,
    /// Age after which deferred mail is bounced. Default 5d.
    pub max_age: Duration,
    /// Per-destination connection limit. Default 10.
    pub max_connections_per_domain: usize,
    /// Messages sent over one connection before it is closed. Default 100.
    pub max_messages_per_connection: usize,
    /// Optional messages-per-minute ceiling per destination domain.
    pub messages_per_minute: Option<u32>,
    /// Per-domain overrides of the shaping limits.
    pub domains: Vec<DomainShaping>,
    /// Timeout for connecting and for each reply of the remote server. Default 5m.
    pub timeout: Duration,
    /// Port used to reach MX hosts. Default 25; tests and unusual networks change it.
    pub mx_port: u16,
    /// Accept and store mail but do not deliver it (maintenance). Default false.
    pub paused: bool,
    /// Messages the scheduler keeps in memory at once; the rest wait in the store.
    /// Default 10,000.
    pub max_messages_in_memory: usize,
    /// Octets of message content the scheduler keeps in memory at once. Default 256 MiB.
    pub max_bytes_in_memory: usize,
    /// Idle time after which a reusable outbound connection is closed. Default 2s.
    pub idle_timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            tls: TlsPolicy::Opportunistic,
            retry: ["5m", "10m", "20m", "40m", "1h", "2h", "4h"]
                .iter()
                .map(|s| s.parse().expect("built-in durations parse"))
                .collect(),
            max_age: Duration::from_secs(5 * 86_400),
            max_connections_per_domain: 10,
            max_messages_per_connection: 100,
            messages_per_minute: None,
            domains: Vec::new(),
            timeout: Duration::from_secs(300),
            mx_port: 25,
            paused: false,
            max_messages_in_memory: 10_000,
            max_bytes_in_memory: 256 * 1024 * 1024,
            idle_timeout: Duration::from_secs(2),
        }
    }
}

/// The traffic-shaping limits in force for one destination domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    pub max_connections: usize,
    pub max_messages_per_connection: usize,
    pub messages_per_minute: Option<u32>,
}

impl DeliveryConfig {
    /// The defaults, overridden by a `[[delivery.domains]]` entry for `domain`.
    pub fn shaping_for(&self, domain: &str) -> Shaping {
        let over = self
            .domains
            .iter()
            .find(|d| d.domain.eq_ignore_ascii_case(domain));
        Shaping {
            max_connections: over
                .and_then(|o| o.max_connections)
                .unwrap_or(self.max_connections_per_domain)
                .max(1),
            max_messages_per_connection: over
                .and_then(|o| o.max_messages_per_connection)
                .unwrap_or(self.max_messages_per_connection)
                .max(1),
            messages_per_minute: over
                .and_then(|o| o.messages_per_minute)
                .or(self.messages_per_minute),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainShaping {
    pub domain: String,
    pub max_connections: Option<usize>,
    pub max_messages_per_connection: Option<usize>,
    pub messages_per_minute: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Recipient domain, or `*` for every domain.
    pub domain: String,
    /// `host:port` to deliver to instead of the domain's MX.
    pub to: String,
    /// Overrides `delivery.tls` for this route.
    pub tls: Option<TlsPolicy>,
    /// AUTH credentials for a smart host.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The feedback loop (docs/deliverability.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverabilityConfig {
    /// Send each message with a signed return path of its own
    /// (`b-TOKEN@<return-path host>`) so that later bounces and complaints are
    /// matched to it. Default true.
    pub return_path: bool,
    /// Pause a sending domain when its complaints over the last 24 hours pass
    /// this fraction of its delivered mail. Default 0.003 (0.3%, the ceiling the
    /// large mailbox providers publish); 0 never pauses.
    pub pause_on_complaint_rate: f64,
    /// Pause a sending domain when its hard bounces (bad mailbox, domain that
    /// does not exist) over the last 24 hours pass this fraction of what it sent.
    /// Default 0.05; 0 never pauses.
    pub pause_on_bounce_rate: f64,
    /// Rates are judged only once a domain has sent this many recipients in the
    /// window, so that one complaint among ten messages pauses nothing. Default 1000.
    pub pause_min_volume: u64,
}

impl Default for DeliverabilityConfig {
    fn default() -> Self {
        DeliverabilityConfig {
            return_path: true,
            pause_on_complaint_rate: 0.003,
            pause_on_bounce_rate: 0.05,
            pause_min_volume: 1000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `ip:port` of resolvers to use instead of the system's.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP API (docs/api.md). Default `127.0.0.1:8025`.
    pub addr: SocketAddr,
    /// Base URL of one-click unsubscribe links, as recipients reach this server
    /// (through a TLS proxy). Default `https://<hostname>`.
    pub public_url: Option<String>,
    /// A dashboard session ends after this long without a request. Default 30m.
    pub session_idle: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:8025".parse().expect("literal address"),
            public_url: None,
            session_idle: Duration::from_secs(30 * 60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where batches of events are POSTed.
    pub url: String,
    /// Key of the `X-Outpost-Signature: sha256=<hex HMAC-SHA256(secret, body)>` header.
    pub secret: String,
}

fn default_hostname() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("outpost-data")
}

fn default_listeners() -> Vec<ListenerConfig> {
    [
        (25, ListenerMode::Relay),
        (587, ListenerMode::Submission),
        (465, ListenerMode::Submissions),
        (2525, ListenerMode::Submission),
    ]
    .into_iter()
    .map(|(port, mode)| ListenerConfig {
        addr: SocketAddr::from(([0, 0, 0, 0], port)),
        mode,
    })
    .collect()
}

impl Default for Config {
    fn default() -> Self {
        Config::from_toml("").expect("the empty configuration is valid")
    }
}

impl Config {
    /// Loads and validates a TOML file; errors name the file, the line and the key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Why `hostname` will not do for mail to other servers, if it will not: an
    /// unqualified name (`vm`), `localhost` or an address. Receivers refuse such
    /// EHLO names, and records built on them (SPF `a:vm`, `MX vm.`) mean nothing.
    pub fn hostname_problem(&self) -> Option<String> {
        let name = self.hostname.trim_end_matches('.');
        let why = if name.parse::<std::net::IpAddr>().is_ok() {
            "is an address"
        } else if name.eq_ignore_ascii_case("localhost") || name.ends_with(".localdomain") {
            "is a local name"
        } else if !name.contains('.') {
            "is not a fully qualified domain name"
        } else {
            return None;
        };
        Some(format!(
            "hostname {:?} {why}: receiving servers refuse such EHLO names and DNS records built on it are useless; set hostname = \"mail.example.com\" (this server's public name, with an A record and a matching PTR) in the configuration",
            self.hostname
        ))
    }

    /// Parses and validates configuration text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        if config.relay.local_domains.is_empty() {
            config.relay.local_domains.push(config.hostname.clone());
        }
        for domain in &mut config.relay.local_domains {
            *domain = domain.to_ascii_lowercase();
        }
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return invalid(format!("hostname {:?} is not a host name", self.hostname));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert and tls.key must be set together".into());
        }
        if self.limits.max_line_length < 512 {
            // RFC 5321 §4.5.3.1.4: a command line of 512 octets must be accepted.
            return invalid("limits.max_line_length must be at least 512".into());
        }
        if self.limits.max_recipients < 1 || self.limits.max_connections < 1 {
            return invalid(
                "limits.max_recipients and limits.max_connections must be at least 1".into(),
            );
        }
        if self.delivery.retry.is_empty() {
            return invalid("delivery.retry needs at least one interval".into());
        }
        if self.delivery.max_messages_in_memory < 1
            || self.delivery.max_bytes_in_memory < 1024 * 1024
            || self.delivery.max_connections_per_domain < 1
        {
            return invalid("delivery.max_messages_in_memory and delivery.max_connections_per_domain must be at least 1, delivery.max_bytes_in_memory at least 1 MiB".into());
        }
        if self.auth.max_failures < 1 || self.auth.max_account_failures < 1 {
            return invalid(
                "auth.max_failures and auth.max_account_failures must be at least 1".into(),
            );
        }
        for (key, rate) in [
            (
                "deliverability.pause_on_complaint_rate",
                self.deliverability.pause_on_complaint_rate,
            ),
            (
                "deliverability.pause_on_bounce_rate",
                self.deliverability.pause_on_bounce_rate,
            ),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return invalid(format!(
                    "{key} must be a fraction between 0 and 1 (0.003 for 0.3%), not {rate}"
                ));
            }
        }
        if self.store.max_batch < 1 {
            return invalid("store.max_batch must be at least 1".into());
        }
        if self.store.lease.get() < std::time::Duration::from_secs(1) {
            return invalid("store.lease must be at least 1s".into());
        }
        if self.store.timeout.get() < std::time::Duration::from_secs(1) {
            return invalid("store.timeout must be at least 1s".into());
        }
        if self.server.node_name.trim().is_empty() {
            return invalid("server.node_name must not be empty".into());
        }
        if let StoreLocation::Postgres(url) = self.store.location() {
            // The message never repeats the URL: it may hold a password.
            if let Err(e) = crate::store::parse_postgres_url(&url) {
                return invalid(format!(
                    "store.url must be a postgres:// (or postgresql://) URL, or sqlite: for the \
                     SQLite store in data_dir: {}",
                    e.replace(&url, "the URL")
                ));
            }
        }
        let is_http_url = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if let Some(url) = &self.http.public_url
            && !is_http_url(url)
        {
            return invalid(format!("http.public_url {url:?} must be an http(s):// URL"));
        }
        for hook in &self.webhooks {
            if !is_http_url(&hook.url) || hook.secret.is_empty() {
                return invalid(format!(
                    "webhooks: url {:?} must be an http(s):// URL and secret must not be empty",
                    hook.url
                ));
            }
        }
        for route in &self.routes {
            if route
                .to
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return invalid(format!(
                    "routes: `to = {:?}` for domain {:?} must be host:port",
                    route.to, route.domain
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_has_the_four_default_listeners() {
        let config = Config::default();
        let ports: Vec<u16> = config.listeners.iter().map(|l| l.addr.port()).collect();
        assert_eq!(ports, vec![25, 587, 465, 2525]);
        assert_eq!(config.limits.max_message_size, 52_428_800);
        assert_eq!(config.delivery.retry.len(), 7);
        assert_eq!(config.relay.local_domains, vec![config.hostname.clone()]);
    }

    #[test]
    fn store_url_selects_the_backend_and_bad_ones_are_named() {
        let store = |toml: &str| Config::from_toml(toml).map(|c| c.store.location());
        assert_eq!(store("").unwrap(), StoreLocation::Sqlite);
        assert_eq!(
            store("[store]\nurl = \"sqlite:\"\n").unwrap(),
            StoreLocation::Sqlite
        );
        assert_eq!(
            store("[store]\nurl = \"postgres://outpost@db.example/outpost\"\n").unwrap(),
            StoreLocation::Postgres("postgres://outpost@db.example/outpost".into())
        );
        for bad in [
            "mysql://root:hunter2@db/outpost",
            "sqlite:/var/lib/outpost",
            "postgres://root:hunter2@db/outpost?bogus=1",
        ] {
            let err = store(&format!("[store]\nurl = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("store.url"), "{err}");
            assert!(!err.contains("hunter2"), "the password is not shown: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::from_toml("hostname = \"a.example\"\n\n[limits]\nmax_mesage_size = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_mesage_size"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let err = Config::from_toml("[limits]\nmax_recipients = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("max_recipients"), "{err}");
    }

    #[test]
    fn bad_duration_is_rejected() {
        let err = Config::from_toml("[delivery]\nmax_age = \"5 fortnights\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn node_name_and_lease_default_and_are_checked() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.server.node_name, default_hostname());
        assert_eq!(config.store.lease.get(), std::time::Duration::from_secs(60));
        let set =
            Config::from_toml("[server]\nnode_name = \"a\"\n[store]\nlease = \"2s\"\n").unwrap();
        assert_eq!(set.server.node_name, "a");
        assert_eq!(set.store.lease.get(), std::time::Duration::from_secs(2));
        for (bad, key) in [
            ("[server]\nnode_name = \" \"\n", "server.node_name"),
            ("[store]\nlease = \"0s\"\n", "store.lease"),
            ("[store]\ntimeout = \"0s\"\n", "store.timeout"),
        ] {
            let err = Config::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn webhooks_and_public_url_are_checked() {
        let ok = "[http]\npublic_url = \"https://r.example\"\n[[webhooks]]\nurl = \"https://h.example/x\"\nsecret = \"s\"\n";
        assert_eq!(Config::from_toml(ok).unwrap().webhooks.len(), 1);
        for bad in [
            "[http]\npublic_url = \"r.example\"\n",
            "[[webhooks]]\nurl = \"ftp://h.example\"\nsecret = \"s\"\n",
            "[[webhooks]]\nurl = \"https://h.example\"\nsecret = \"\"\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listeners_and_trusted_networks_parse() {
        let config = Config::from_toml(
            "[[listeners]]\naddr = \"127.0.0.1:2525\"\nmode = \"relay\"\n[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n",
        )
        .unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].mode, ListenerMode::Relay);
        assert!(
            config.relay.trusted_networks[0]
                .contains(&"127.0.0.9".parse::<std::net::IpAddr>().unwrap())
        );
    }
}

//! The ScyllaDB side, shared by `init-scylla`, `load`, `lookup` and `verify`: how to connect
//! (options, credentials, TLS), the schema and every statement on the serving tables, the
//! row codecs, the read consistency and the retry policy.

pub mod codec;
pub mod profile;
pub mod retry;
pub mod schema;
pub mod statements;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::frame::types::Consistency;
use serde::Serialize;

use crate::error::{Error, Result};

/// Where ScyllaDB is and how to talk to it. The password is never an option: it comes from
/// `SCYLLA_PASSWORD` or from the file `--scylla-password-file` names, and is never printed.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ScyllaOptions {
    /// Contact point(s), host:port[,host:port...].
    #[arg(long, env = "SCYLLA_URI", default_value = "127.0.0.1:9042")]
    pub scylla_uri: String,
    /// Keyspace of the serving tables: letters, digits and `_`, starting with a letter, at
    /// most 48 characters; unquoted names are lowercased, as CQL does (`Analytics_Prod` is the
    /// keyspace `analytics_prod`).
    #[arg(long, env = "SCYLLA_KEYSPACE", default_value = schema::DEFAULT_KEYSPACE, value_parser = parse_keyspace)]
    pub keyspace: String,
    /// Replication of the keyspace when it is created (a CQL map).
    #[arg(long, default_value = schema::DEFAULT_REPLICATION)]
    pub replication: String,
    /// Consistency level of reads and writes.
    #[arg(long, default_value = "local_quorum", value_parser = parse_consistency)]
    #[serde(serialize_with = "debug_string")]
    pub consistency: Consistency,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Connect with TLS (system roots, plus --tls-ca-file).
    #[arg(long)]
    pub tls: bool,
    /// Extra CA certificate(s) to trust, PEM. Implies --tls: a CA file is never ignored (the
    /// password would go in plaintext).
    #[arg(long, env = "SCYLLA_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// User name, when the cluster requires a login; the password comes from SCYLLA_PASSWORD
    /// or --scylla-password-file.
    #[arg(long, env = "SCYLLA_USERNAME", value_name = "USER")]
    #[serde(skip)]
    pub scylla_username: Option<String>,
    /// A file holding the password (one line; used when SCYLLA_PASSWORD is not set).
    #[arg(long, env = "SCYLLA_PASSWORD_FILE", value_name = "FILE")]
    #[serde(skip)]
    pub scylla_password_file: Option<PathBuf>,
}

/// The environment variable of the password (never an option, so never in a process list,
/// a log or a configuration file).
const PASSWORD_ENV: &str = "SCYLLA_PASSWORD";

impl Default for ScyllaOptions {
    fn default() -> Self {
        crate::defaults()
    }
}

fn debug_string<S: serde::Serializer, T: std::fmt::Debug>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

/// The longest keyspace name every supported server accepts (Cassandra's and ScyllaDB's
/// `NAME_LENGTH` = 48 until ScyllaDB 2025.2 raised it to 192).
const MAX_KEYSPACE_LEN: usize = 48;

/// A keyspace name as CQL reads it, so every statement and every `system_schema` lookup use
/// the same name: an unquoted identifier (a letter, then letters, digits and `_`) folds to
/// lower case; a double-quoted one keeps its case, which only lowercase names survive here
/// (the statements name the keyspace unquoted). Anything else would be a CQL syntax error
/// reported as an unreachable server (`my-keyspace`) or a keyspace that seems to exist with
/// no columns (`Analytics_Prod`).
pub fn parse_keyspace(s: &str) -> std::result::Result<String, String> {
    let rule = "keyspace names are letters, digits and underscores, starting with a letter, \
                at most 48 characters (CQL identifiers, on ScyllaDB and Cassandra alike)";
    let (name, quoted) = match s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => (inner.to_string(), true),
        None => (s.to_ascii_lowercase(), false),
    };
    let valid = name.len() <= MAX_KEYSPACE_LEN
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("`{s}` is not a valid keyspace name: {rule}"));
    }
    if quoted && name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "`{s}`: a quoted keyspace name with capitals is not supported; use a lowercase name \
             (unquoted names are lowercased: {})",
            name.to_ascii_lowercase()
        ));
    }
    Ok(name)
}

fn parse_consistency(s: &str) -> std::result::Result<Consistency, String> {
    use Consistency::*;
    Ok(match s.to_ascii_lowercase().as_str() {
        "any" => Any,
        "one" => One,
        "two" => Two,
        "three" => Three,
        "quorum" => Quorum,
        "all" => All,
        "local_quorum" => LocalQuorum,
        "each_quorum" => EachQuorum,
        "local_one" => LocalOne,
        _ => {
            return Err(format!(
                "unknown consistency `{s}` (one, two, three, quorum, all, local_quorum, each_quorum, local_one, any)"
            ));
        }
    })
}

/// How long to wait for a connection (TCP).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a whole session setup may take (TCP, TLS and CQL handshakes, the driver's
/// metadata): a handshake that never answers (`--tls` against a port without TLS) fails
/// here instead of hanging.
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);

/// The login, if `--scylla-username` is given: the password from SCYLLA_PASSWORD, else the
/// password file.
fn credentials(o: &ScyllaOptions) -> Result<Option<(String, String)>> {
    let Some(user) = o.scylla_username.clone() else {
        return Ok(None);
    };
    let password = match (std::env::var(PASSWORD_ENV), &o.scylla_password_file) {
        (Ok(p), _) => p,
        (Err(_), Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| {
                Error::io(
                    format!(
                        "cannot read the password file {} (--scylla-password-file)",
                        f.display()
                    ),
                    e,
                )
            })?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (Err(_), None) => {
            return Err(Error::Invalid(format!(
                "a ScyllaDB user name is set (--scylla-username / SCYLLA_USERNAME) but no \
                 password: set {PASSWORD_ENV}, or SCYLLA_PASSWORD_FILE / --scylla-password-file"
            )));
        }
    };
    Ok(Some((user, password)))
}

impl ScyllaOptions {
    /// TLS is on with `--tls` or with a CA file.
    pub fn uses_tls(&self) -> bool {
        self.tls || self.tls_ca_file.is_some()
    }
}

fn tls_context(o: &ScyllaOptions) -> Result<Option<Arc<rustls::ClientConfig>>> {
    if !o.uses_tls() {
        return Ok(None);
    }
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &o.tls_ca_file {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| {
                Error::Invalid(format!(
                    "--tls-ca-file {}: not a PEM certificate file ({e})",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(Error::Invalid(format!(
                "--tls-ca-file {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| Error::Invalid(format!("--tls-ca-file {}: {e}", path.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Invalid(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// Connect one shared session (the driver's pool, token- and shard-aware by default).
pub async fn connect(o: &ScyllaOptions) -> Result<Session> {
    let profile = ExecutionProfile::builder()
        .consistency(o.consistency)
        .request_timeout(Some(Duration::from_millis(o.request_timeout_ms)))
        .build();
    let mut b = SessionBuilder::new()
        .default_execution_profile_handle(profile.into_handle())
        .connection_timeout(CONNECT_TIMEOUT);
    for node in o
        .scylla_uri
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        b = b.known_node(node);
    }
    if let Some((user, password)) = credentials(o)? {
        b = b.user(user, password);
    }
    if let Some(tls) = tls_context(o)? {
        b = b.tls_context(Some(tls));
    }
    let what = || format!("cannot connect to ScyllaDB at {}", o.scylla_uri);
    match tokio::time::timeout(SESSION_TIMEOUT, b.build()).await {
        Ok(built) => built.map_err(|e| Error::scylla(what(), e)),
        Err(_) => Err(Error::scylla(
            what(),
            format!(
                "no session within {} s{}",
                SESSION_TIMEOUT.as_secs(),
                if o.uses_tls() {
                    " (TLS is on: does that port speak TLS?)"
                } else {
                    ""
                }
            ),
        )),
    }
}

/// Whether something accepts TCP connections at the first contact point.
pub async fn answers(o: &ScyllaOptions) -> bool {
    let uri = &o.scylla_uri;
    let first = uri.split(',').next().unwrap_or(uri).trim().to_string();
    matches!(
        tokio::time::timeout(
            Duration::from_millis(800),
            tokio::net::TcpStream::connect(first)
        )
        .await,
        Ok(Ok(_))
    )
}

/// What `init-scylla` reports.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// The keyspace.
    pub keyspace: String,
    /// Where ScyllaDB is.
    pub scylla_uri: String,
}

impl crate::report::Report for InitReport {
    fn stage(&self) -> &'static str {
        "init-scylla"
    }

    fn skipped(&self) -> bool {
        false
    }

    fn text(&self) -> String {
        format!(
            "init-scylla: keyspace {} and its tables are in place at {}",
            self.keyspace, self.scylla_uri
        )
    }

    fn summary(&self) -> crate::report::Summary {
        crate::report::Summary {
            note: format!("keyspace {}", self.keyspace),
            ..Default::default()
        }
    }
}

/// `init-scylla`: create the keyspace and tables if missing, and check them.
pub async fn init(o: &ScyllaOptions) -> Result<InitReport> {
    let session = connect(o).await?;
    schema::init(&session, o).await?;
    Ok(InitReport {
        keyspace: o.keyspace.clone(),
        scylla_uri: o.scylla_uri.clone(),
    })
}

/// The consistency of the load state's statements, and of the reads a load's decisions
/// rest on (a full load's listing, the emptiness check): the session's (`--consistency`) when it is at
/// least a quorum, else LOCAL_QUORUM, so a read always sees what was acknowledged before it
/// in the data center. Loads running at once in two data centers need QUORUM or EACH_QUORUM.
pub fn consistency(session: &Session) -> Consistency {
    use Consistency::*;
    match session
        .get_default_execution_profile_handle()
        .to_profile()
        .get_consistency()
    {
        c @ (Quorum | All | EachQuorum | LocalQuorum) => c,
        _ => LocalQuorum,
    }
}

//! Object stores (S3 and S3-compatible) and the check that one honours conditional writes.
//!
//! Delta commits on an object store are safe only if creating a commit file fails when it
//! already exists (S3 `PUT` with `If-None-Match: *`): two writers committing the same version
//! must not both succeed. A store that ignores the header silently overwrites commits (an S3
//! mock from npm kept 13 of 20 concurrent appends), so before anything commits to a store,
//! [`probe_conditional_writes`] creates a key twice and requires the second create to be
//! refused. `pipeline check-store URL` runs it.
//!
//! Credentials, region and endpoint come only from the usual AWS environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`), and are never printed.

pub mod local;

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use url::Url;

use crate::error::{Error, Result};
use crate::report::{Report, Summary};

/// What to check.
#[derive(Debug, Clone, Args)]
pub struct CheckStoreOptions {
    /// The location, `s3://bucket/prefix` (credentials and endpoint from the AWS_*
    /// environment variables).
    pub url: String,
}

/// What `check-store` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckStoreReport {
    /// The location checked.
    pub url: String,
    /// A second create of the same key was refused.
    pub conditional_writes: bool,
    /// Wall time.
    pub seconds: f64,
}

impl Report for CheckStoreReport {
    fn stage(&self) -> &'static str {
        "check-store"
    }

    fn skipped(&self) -> bool {
        false
    }

    fn text(&self) -> String {
        format!(
            "check-store: {} honours conditional writes (a second create of the same key was \
             refused): Delta commits there are safe with several writers ({:.2} s)",
            self.url, self.seconds
        )
    }

    fn summary(&self) -> Summary {
        Summary {
            note: "conditional writes honoured".into(),
            ..Default::default()
        }
    }
}

/// Check the store at `opts.url`.
pub async fn check(opts: &CheckStoreOptions) -> Result<CheckStoreReport> {
    let started = Instant::now();
    let (store, prefix) = open(&opts.url)?;
    probe_conditional_writes(store.as_ref(), &prefix, &opts.url).await?;
    Ok(CheckStoreReport {
        url: opts.url.clone(),
        conditional_writes: true,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A data dir on an object store: the store (rooted at the bucket) and the prefix in it.
#[derive(Debug)]
pub struct StoreRoot {
    url: Url,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    probed: tokio::sync::OnceCell<()>,
}

impl StoreRoot {
    /// The data dir at `url` (`s3://bucket/prefix`). Registers S3 with delta-rs.
    pub fn open(url: &str) -> Result<Self> {
        let (store, prefix) = open(url)?;
        register_with_delta();
        let mut url = Url::parse(url).expect("parsed by open");
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        Ok(Self {
            url,
            store,
            prefix,
            probed: tokio::sync::OnceCell::new(),
        })
    }

    /// The data dir's URL (ending in `/`).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL of `rel` (a `/`-separated path under the data dir), ending in `/`.
    pub fn url_of(&self, rel: &str) -> Url {
        self.url
            .join(&format!("{}/", rel.trim_matches('/')))
            .expect("a relative path joins")
    }

    /// The store, rooted at the bucket.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The store path of `rel` (a `/`-separated path under the data dir).
    pub fn path_of(&self, rel: &str) -> Path {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }

    /// The URL of an object, for messages.
    pub fn object_url(&self, path: &Path) -> String {
        format!(
            "{}://{}/{path}",
            self.url.scheme(),
            self.url.host_str().unwrap_or("")
        )
    }

    /// Probe once per process that the store refuses a second conditional create (see the
    /// module docs); every stage that commits calls this before it writes anything.
    pub async fn require_conditional_writes(&self) -> Result<()> {
        self.probed
            .get_or_try_init(|| {
                probe_conditional_writes(self.store.as_ref(), &self.prefix, self.url.as_str())
            })
            .await
            .map(|_| ())
    }
}

/// Let delta-rs open `s3://` tables with the same client as the rest of the pipeline:
/// object_store's S3 client configured from the AWS_* environment variables, and delta-rs's
/// default log store, which commits with conditional creates (`If-None-Match: *`), as
/// delta-rs's own `s3` feature does (its log store is that same default one; the feature adds
/// the AWS SDK's credential chain, which this pipeline does not use).
fn register_with_delta() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        use deltalake::logstore::{logstore_factories, object_store_factories};
        for scheme in ["s3", "s3a"] {
            let url = Url::parse(&format!("{scheme}://")).expect("a scheme URL");
            object_store_factories().insert(url.clone(), Arc::new(S3Factory));
            logstore_factories().insert(url, Arc::new(S3Factory));
        }
    });
}

struct S3Factory;

impl deltalake::logstore::ObjectStoreFactory for S3Factory {
    fn parse_url_opts(
        &self,
        url: &Url,
        _config: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<(deltalake::logstore::ObjectStoreRef, Path)> {
        open(url.as_str()).map_err(|e| deltalake::DeltaTableError::Generic(e.to_string()))
    }
}

impl deltalake::logstore::LogStoreFactory for S3Factory {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// The store and the path prefix of an `s3://bucket/prefix` URL.
pub fn open(url: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let parsed = Url::parse(url).map_err(|e| {
        Error::Invalid(format!("`{url}` is not a URL like s3://bucket/prefix: {e}"))
    })?;
    if parsed.scheme() != "s3" && parsed.scheme() != "s3a" {
        return Err(Error::Invalid(format!(
            "`{url}`: only s3:// (S3 and S3-compatible stores) is supported"
        )));
    }
    let store = AmazonS3Builder::from_env()
        .with_url(url)
        .with_retry(retry())
        .build()
        .map_err(|e| Error::Invalid(format!("cannot use {url}: {e}")))?;
    let prefix = Path::from(parsed.path().trim_matches('/'));
    Ok((Arc::new(store), prefix))
}

/// How long a failed store request is retried by default, in seconds (object_store's
/// default): past it the command fails with the store's error, having committed nothing
/// half-way, and a rerun resumes. The option: `--store-retry-secs`.
pub const DEFAULT_RETRY_SECS: u64 = 180;

/// The retry window of this process's stores, set once from the command line.
static RETRY_SECS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Set this process's retry window (`--store-retry-secs`) before any store is opened.
pub fn set_retry_window(secs: u64) {
    let _ = RETRY_SECS.set(secs);
}

/// The time window governs, not a count: object_store's default of 10 retries with jittered
/// backoff gives up after about 3 s, so a store restarting for longer failed the command (seen
/// in CI). Backoff is capped at 5 s so the command notices the store is back soon after.
/// Each retry waits 1 s to 5 s (object_store's jitter picks between the first backoff and
/// twice the last), so its log line ("backing off ..., retry N of MAX: <error>") comes every
/// few seconds, not several a second as with the 100 ms default; the count is set so that the
/// window ends first (two a second at most), yet finite.
fn retry() -> object_store::RetryConfig {
    let mut config = object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_secs(1),
            max_backoff: std::time::Duration::from_secs(5),
            ..Default::default()
        },
        ..Default::default()
    };
    config.retry_timeout =
        std::time::Duration::from_secs(*RETRY_SECS.get().unwrap_or(&DEFAULT_RETRY_SECS));
    config.max_retries = (config.retry_timeout.as_secs() as usize).max(1) * 2;
    config
}

/// What to check when a store cannot be read or written, in every such message.
const ACCESS_HINT: &str =
    "check the AWS_* environment variables (credentials, AWS_ENDPOINT_URL) and the bucket name";

/// A store request that failed: `what` was tried (e.g. "cannot list s3://…"), with the hint.
pub fn access_error(what: impl std::fmt::Display, e: object_store::Error) -> Error {
    Error::io(format!("{what} ({ACCESS_HINT})"), std::io::Error::other(e))
}

/// Create a probe key twice under `prefix`; an error unless the second create is refused.
/// The key is removed afterwards.
pub async fn probe_conditional_writes(
    store: &dyn ObjectStore,
    prefix: &Path,
    shown_as: &str,
) -> Result<()> {
    let key = prefix
        .clone()
        .join("_pipeline")
        .join(format!("conditional-write-probe-{}", uuid::Uuid::new_v4()));
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let unreachable = |e| access_error(format!("cannot write to {shown_as}"), e);
    store
        .put_opts(&key, PutPayload::from_static(b"first"), create())
        .await
        .map_err(unreachable)?;
    let second = store
        .put_opts(&key, PutPayload::from_static(b"second"), create())
        .await;
    let _ = store.delete(&key).await;
    match second {
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Ok(()),
        Ok(_) => Err(Error::Invalid(format!(
            "the store at {shown_as} does not honour conditional writes: a second create of \
             the same key (PUT with If-None-Match: *) succeeded and overwrote the first. Two \
             pipeline processes committing at once would overwrite each other's Delta commits, \
             so nothing will run against it. Use a store that supports conditional writes (AWS \
             S3, MinIO, SeaweedFS, Cloudflare R2, ...)"
        ))),
        Err(e) => Err(unreachable(e)),
    }
}

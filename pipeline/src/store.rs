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
        .build()
        .map_err(|e| Error::Invalid(format!("cannot use {url}: {e}")))?;
    let prefix = Path::from(parsed.path().trim_matches('/'));
    Ok((Arc::new(store), prefix))
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
    let unreachable = |e: object_store::Error| {
        Error::io(
            format!("cannot write to {shown_as} (check the AWS_* environment variables)"),
            std::io::Error::other(e),
        )
    };
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

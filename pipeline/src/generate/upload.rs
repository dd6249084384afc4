//! `generate` into a data dir on an object store: files are written to a local staging
//! folder in the scratch space (the same layout as a local landing folder) and uploaded, each
//! with one `PUT`, so an object is either whole or absent; the batch manifest goes last, as
//! on local disk. Generate is synchronous; the uploads run on the process's async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::store::StoreRoot;

/// Bytes per upload request of a generated file.
const UPLOAD_PART: usize = 8 << 20;

/// Uploads from the staging folder to the landing folder on the store.
pub(super) struct Upload {
    root: Arc<StoreRoot>,
    runtime: tokio::runtime::Handle,
    /// The staging folder (`layout.raw_dir()`): local paths under it map to objects.
    staging: PathBuf,
    /// The landing folder (with the landing prefix) relative to the data dir.
    landing: String,
}

impl Upload {
    /// `None` for a local data dir.
    pub(super) fn of(layout: &Layout) -> Result<Option<Self>> {
        let Some(root) = layout.store() else {
            return Ok(None);
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::Invalid(format!(
                "generate to an object store needs an async runtime: {e}"
            ))
        })?;
        let landing = match layout.landing_prefix() {
            "" => Layout::LANDING.to_string(),
            p => format!("{}/{p}", Layout::LANDING),
        };
        let up = Self {
            root: root.clone(),
            runtime,
            staging: layout.raw_dir(),
            landing,
        };
        up.block_on(root.require_conditional_writes())?;
        Ok(Some(up))
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// The object of a staging path.
    fn object(&self, local: &Path) -> object_store::path::Path {
        let rel = local
            .strip_prefix(&self.staging)
            .expect("under the staging folder")
            .to_string_lossy()
            .replace('\\', "/");
        self.root.path_of(&format!("{}/{rel}", self.landing))
    }

    fn shown(&self, local: &Path) -> String {
        self.root.object_url(&self.object(local))
    }

    fn failed(&self, what: &str, local: &Path, e: object_store::Error) -> Error {
        Error::io(
            format!("cannot {what} {}", self.shown(local)),
            std::io::Error::other(e),
        )
    }

    /// The object at the staging path `local`, or `None` if absent.
    pub(super) fn get(&self, local: &Path) -> Result<Option<Bytes>> {
        let store = self.root.store().clone();
        let object = self.object(local);
        self.block_on(async move {
            match store.get(&object).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.failed("read", local, e))
    }

    /// Store `body` at the staging path `local`.
    pub(super) fn put(&self, local: &Path, body: Vec<u8>) -> Result<()> {
        let store = self.root.store().clone();
        let object = self.object(local);
        self.block_on(async move { store.put(&object, PutPayload::from(body)).await })
            .map(|_| ())
            .map_err(|e| self.failed("upload", local, e))
    }

    /// Upload the staged file `local` to its object, then remove the local copy. Streamed:
    /// one `PUT` up to [`UPLOAD_PART`] bytes, a multipart upload (completed last, so the object
    /// is still whole or absent) above it; memory stays at a few parts whatever the file size.
    pub(super) fn put_file(&self, local: &Path) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let store = self.root.store().clone();
        let object = self.object(local);
        let cannot_read = |e| Error::io(format!("cannot read {}", local.display()), e);
        self.block_on(async {
            let mut file = tokio::fs::File::open(local).await.map_err(cannot_read)?;
            let mut up =
                object_store::buffered::BufWriter::with_capacity(store, object, UPLOAD_PART)
                    .with_max_concurrency(2);
            let sent = async {
                tokio::io::copy(&mut file, &mut up).await?;
                up.shutdown().await
            }
            .await;
            if let Err(e) = sent {
                let _ = up.abort().await;
                return Err(Error::io(format!("cannot upload {}", self.shown(local)), e));
            }
            Ok(())
        })?;
        let _ = std::fs::remove_file(local);
        Ok(())
    }

    /// The file names directly in the staging folder `dir`'s object folder.
    pub(super) fn names(&self, dir: &Path) -> Result<Vec<String>> {
        let store = self.root.store().clone();
        let object = self.object(dir);
        let listed = self
            .block_on(async move { store.list_with_delimiter(Some(&object)).await })
            .map_err(|e| self.failed("list", dir, e))?;
        let mut names: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .chain(
                listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string)),
            )
            .collect();
        names.sort();
        Ok(names)
    }

    /// Remove the staging folder of a batch.
    pub(super) fn clean(&self, dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Read a file of the landing folder: from local disk, or from the store.
pub(super) fn read(upload: Option<&Upload>, path: &Path) -> Result<Bytes> {
    match upload {
        None => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e)),
        Some(up) => up
            .get(path)?
            .ok_or_else(|| Error::Invalid(format!("{} has disappeared", up.shown(path)))),
    }
}

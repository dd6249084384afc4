//! Local tables as delta-rs sees them: object_store's `LocalFileSystem`, with a listing of a
//! Delta log that costs what it returns, not what the folder holds.
//!
//! Opening a table, committing and reading the new version back each list `_delta_log` from
//! a version on (`list_with_offset`: the object_store call a Delta log is read with; on S3 it
//! is a `start-after` request, which returns only what follows). object_store's local
//! implementation walks the whole folder and turns every entry's name into an object path
//! before it compares it with the offset. A stream commits about once a second, and the log
//! keeps commit files for its log retention: with 150,000 of them, one 1,000-row ingest took
//! 0.26 s instead of 0.05 s on a fresh table even with names compared before any conversion
//! (one read of such a folder costs 45 ms), and 1.58 s with object_store's listing (a debug
//! build; `perf` showed the path conversions on top). So a listing of a Delta log from a
//! version finds its entries by name ([`probe_log`]): a few `stat`s per version since, not a
//! read of the folder. Other listings of plain names read the folder but convert and `stat`
//! only the entries after the offset.
//!
//! Everything else is the wrapped `LocalFileSystem`, as is a listing this cannot answer (a
//! name object_store would percent-encode, a sub-folder, a checkpoint of another kind).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use url::Url;

/// `LocalFileSystem` with a fast [`ObjectStore::list_with_offset`] (see the module docs).
#[derive(Debug)]
pub struct LocalStore {
    inner: Arc<LocalFileSystem>,
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalStore({})", self.inner)
    }
}

impl LocalStore {
    /// The whole local file system (object paths are absolute paths without the leading `/`,
    /// as delta-rs's own `file://` store has them).
    pub fn new() -> Self {
        LocalStore {
            inner: Arc::new(LocalFileSystem::new()),
        }
    }

    /// A listing by `fast` (on a blocking thread: it reads the file system), or by `slow`
    /// (object_store's) when `fast` cannot answer it.
    fn fast_or_slow(
        &self,
        prefix: &Path,
        fast: impl FnOnce(&LocalFileSystem, &Path) -> Option<Vec<Result<ObjectMeta>>> + Send + 'static,
        slow: impl FnOnce(&LocalFileSystem, &Path) -> BoxStream<'static, Result<ObjectMeta>>
        + Send
        + 'static,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let (fs, prefix) = (self.inner.clone(), prefix.clone());
        futures::stream::once(async move {
            let (fs2, prefix2) = (fs.clone(), prefix.clone());
            match blocking(move || fast(&fs2, &prefix2)).await {
                Some(listed) => futures::stream::iter(listed).boxed(),
                None => slow(&fs, &prefix),
            }
        })
        .flatten()
        .boxed()
    }
}

/// The entries of `prefix`'s folder after `offset`, when `offset` is a child of `prefix`
/// named as Delta log entries are; `None`: list the slow way.
fn list_after(
    fs: &LocalFileSystem,
    prefix: &Path,
    offset: &Path,
) -> Option<Vec<Result<ObjectMeta>>> {
    let mut rest = offset.prefix_match(prefix)?;
    let after = rest.next()?.as_ref().to_string();
    if rest.next().is_some() || !after.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let dir = fs.path_to_filesystem(prefix).ok()?;
    let probed = match after.parse::<u64>() {
        Ok(version) if after.len() == 20 && prefix.filename() == Some("_delta_log") => {
            probe_log(&dir, version)
        }
        _ => None,
    };
    match probed {
        Some(names) => described(prefix, &dir, names),
        None => list_names(fs, prefix, &after),
    }
}

/// The entries of `prefix`'s folder after `after`, read from the folder.
fn list_names(fs: &LocalFileSystem, prefix: &Path, after: &str) -> Option<Vec<Result<ObjectMeta>>> {
    let dir = fs.path_to_filesystem(prefix).ok()?;
    let names = read_names_after(&dir, after)?;
    described(prefix, &dir, names)
}

/// The objects of `names` in `dir` (`None`: one is a folder).
fn described(
    prefix: &Path,
    dir: &std::path::Path,
    names: Vec<String>,
) -> Option<Vec<Result<ObjectMeta>>> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let meta = match std::fs::metadata(dir.join(&name)) {
            Ok(m) => m,
            // Deleted since the folder was read (a log cleanup): not listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return None,
        };
        if meta.is_dir() {
            return None;
        }
        out.push(Ok(object_meta(prefix.clone().join(name.as_str()), &meta)));
    }
    Some(out)
}

/// The names in `dir` after `after`, sorted (`None`: a name this listing does not handle).
fn read_names_after(dir: &std::path::Path, after: &str) -> Option<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Vec::new()),
        Err(_) => return None,
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry.ok()?.file_name().into_string().ok()?;
        if !is_plain(&name) {
            return None;
        }
        if name.as_str() > after && !is_staging(&name) {
            names.push(name);
        }
    }
    names.sort_unstable();
    Some(names)
}

/// The entries of a Delta log folder from `version` on, found by name instead of by reading
/// the folder: for each version from `version`, its checkpoint, checksum and commit files,
/// until the first version after it without a commit (versions are contiguous, and commits
/// after the latest checkpoint are never cleaned up). A reader asks for the entries from the
/// last checkpoint, or a writer for those after the version it read, so this costs a few
/// `stat`s per version since, whatever the folder holds (a stream's log retention of commit
/// files: 150,000 for about two days at one commit a second).
///
/// `None` (read the folder instead) when `version` has neither a commit nor a checkpoint
/// (time travel to a version whose commits were cleaned up looks for a later checkpoint),
/// when the table's checkpoints are of a kind not named by version alone (multi-part or V2,
/// as `_last_checkpoint` says: written by other engines), or when the versions found end
/// before the last checkpoint: a gap that a log cleanup in progress leaves below it (it
/// deletes expired commits in parallel), where stopping would hide the newer versions.
fn probe_log(dir: &std::path::Path, version: u64) -> Option<Vec<String>> {
    let mut checkpointed = 0;
    if let Ok(hint) = std::fs::read(dir.join("_last_checkpoint")) {
        let hint: serde_json::Value = serde_json::from_slice(&hint).ok()?;
        if hint.get("parts").is_some() || hint.get("v2Checkpoint").is_some() {
            return None;
        }
        checkpointed = hint.get("version").and_then(serde_json::Value::as_u64)?;
    }
    let exists = |name: &str| std::fs::symlink_metadata(dir.join(name)).is_ok();
    let mut names = Vec::new();
    let mut last = None;
    for v in version.. {
        let [checkpoint, crc, commit] =
            ["checkpoint.parquet", "crc", "json"].map(|ext| format!("{v:020}.{ext}"));
        let has_commit = exists(&commit);
        let has_checkpoint = exists(&checkpoint);
        if !has_commit && (v > version || !has_checkpoint) {
            break;
        }
        if has_checkpoint {
            names.push(checkpoint);
        }
        if exists(&crc) {
            names.push(crc);
        }
        if has_commit {
            names.push(commit);
        }
        last = Some(v);
    }
    if last? < checkpointed {
        return None;
    }
    Some(names)
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Run `f` on a blocking thread of the current runtime (inline outside one).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h
            .spawn_blocking(f)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        Err(_) => f(),
    }
}

/// A name object_store keeps as it is (no percent-encoding, not a relative part).
fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'#'))
}

/// object_store's staging files of a write in progress (`name#123`), which it never lists.
fn is_staging(name: &str) -> bool {
    matches!(name.split_once('#'), Some((_, suffix)) if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
}

/// The object as object_store's local listing describes it (the same e-tag scheme).
fn object_meta(location: Path, meta: &std::fs::Metadata) -> ObjectMeta {
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let micros = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    ObjectMeta {
        location,
        last_modified: modified.into(),
        size: meta.len(),
        e_tag: Some(format!("{inode:x}-{micros:x}-{:x}", meta.len())),
        version: None,
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        // A whole Delta log (log cleanup lists it): its names, without path conversions.
        match prefix.filter(|p| p.filename() == Some("_delta_log")) {
            Some(p) => self.fast_or_slow(
                p,
                move |fs, p| list_names(fs, p, ""),
                |fs, p| fs.list(Some(p)),
            ),
            None => self.inner.list(prefix),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let Some(prefix) = prefix else {
            return self.inner.list_with_offset(prefix, offset);
        };
        let (fast_offset, slow_offset) = (offset.clone(), offset.clone());
        self.fast_or_slow(
            prefix,
            move |fs, p| list_after(fs, p, &fast_offset),
            move |fs, p| fs.list_with_offset(Some(p), &slow_offset),
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// delta-rs's `file://` tables on [`LocalStore`]: registered once per process, in place of
/// delta-rs's default factory for the scheme (which builds the plain `LocalFileSystem`).
pub fn register_with_delta() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let url = Url::parse("file://").expect("a scheme URL");
        deltalake::logstore::object_store_factories().insert(url, Arc::new(LocalFactory));
    });
}

struct LocalFactory;

impl deltalake::logstore::ObjectStoreFactory for LocalFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        _config: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<(deltalake::logstore::ObjectStoreRef, Path)> {
        // As object_store::parse_url_opts does for `file://` (delta-rs's default factory):
        // the file system's root, and the URL's path as the object path.
        let (_, path) =
            object_store::ObjectStoreScheme::parse(url).map_err(object_store::Error::from)?;
        let path = Path::parse(path).map_err(object_store::Error::from)?;
        Ok((Arc::new(LocalStore::new()), path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    async fn names(s: BoxStream<'static, Result<ObjectMeta>>) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = s
            .map_ok(|m| (m.location.to_string(), m.size))
            .try_collect()
            .await
            .unwrap();
        v.sort();
        v
    }

    /// A log folder as a stream leaves it: early commits cleaned up, checkpoints every 10
    /// versions, a checksum file, `_last_checkpoint`, a write in progress. Listed from every
    /// version (and before, and past the end), the fast listing returns what object_store's
    /// returns, but for the names that are not log entries (`_last_checkpoint`), which a
    /// listing from the last checkpoint has no use for.
    #[tokio::test(flavor = "multi_thread")]
    async fn listings_of_a_log_equal_object_stores_own() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t").join("_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        for v in 5..=47u64 {
            std::fs::write(log.join(format!("{v:020}.json")), vec![b'x'; v as usize]).unwrap();
            if v % 10 == 0 {
                std::fs::write(log.join(format!("{v:020}.checkpoint.parquet")), b"cp").unwrap();
            }
        }
        std::fs::write(log.join(format!("{:020}.crc", 41)), b"crc").unwrap();
        std::fs::write(log.join("_last_checkpoint"), br#"{"version":40,"size":1}"#).unwrap();
        std::fs::write(log.join(format!("{:020}.json#1", 48)), b"staging").unwrap();
        let ours = LocalStore::new();
        let theirs = LocalFileSystem::new();
        let prefix = Path::from_absolute_path(&log).unwrap();
        let is_entry =
            |(n, _): &(String, u64)| n.rsplit('/').next().unwrap().as_bytes()[0].is_ascii_digit();
        for from in [0u64, 4, 5, 6, 9, 10, 11, 39, 40, 41, 46, 47, 48, 60] {
            let offset = prefix.clone().join(format!("{from:020}").as_str());
            let want: Vec<_> = names(theirs.list_with_offset(Some(&prefix), &offset))
                .await
                .into_iter()
                .filter(is_entry)
                .collect();
            let got: Vec<_> = names(ours.list_with_offset(Some(&prefix), &offset))
                .await
                .into_iter()
                .filter(is_entry)
                .collect();
            assert_eq!(got, want, "listed from version {from}");
        }
        // A log cleanup in progress left a gap below the last checkpoint: the versions after
        // the gap are listed all the same (probing stopped at the gap and hid them).
        std::fs::remove_file(log.join(format!("{:020}.json", 30))).unwrap();
        let offset = prefix.clone().join(format!("{:020}", 25).as_str());
        let listed = names(ours.list_with_offset(Some(&prefix), &offset)).await;
        assert!(
            listed.iter().any(|(n, _)| n.ends_with("47.json")),
            "{listed:?}"
        );
        assert_eq!(
            listed,
            names(theirs.list_with_offset(Some(&prefix), &offset)).await
        );
        let offset = prefix.clone().join(format!("{:020}.json", 20).as_str());
        assert_eq!(
            names(ours.list_with_offset(Some(&prefix), &offset)).await,
            names(theirs.list_with_offset(Some(&prefix), &offset)).await,
        );
        assert_eq!(
            names(ours.list(Some(&prefix))).await,
            names(theirs.list(Some(&prefix))).await
        );
        // A folder that is not a log, and one with a sub-folder, are object_store's listing.
        std::fs::create_dir_all(log.join("_commits")).unwrap();
        std::fs::write(log.join("_commits").join("x.json"), b"c").unwrap();
        let offset = prefix.clone().join(format!("{:020}", 40).as_str());
        assert_eq!(
            names(ours.list(Some(&prefix))).await,
            names(theirs.list(Some(&prefix))).await
        );
        let listed = names(ours.list_with_offset(Some(&prefix), &offset)).await;
        assert!(listed.iter().all(is_entry), "{listed:?}");
        // A multi-part checkpoint (written by another engine): the folder is read.
        std::fs::write(
            log.join("_last_checkpoint"),
            br#"{"version":40,"size":1,"parts":2}"#,
        )
        .unwrap();
        let offset = prefix.clone().join(format!("{:020}", 40).as_str());
        assert_eq!(
            names(ours.list_with_offset(Some(&prefix), &offset)).await,
            names(theirs.list_with_offset(Some(&prefix), &offset)).await
        );
    }
}

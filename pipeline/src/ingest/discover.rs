//! Discovery: which landing files are new, and which changed after they were ingested.
//!
//! What ingest has consumed is the `ingest_files` table (path, size, modification time and
//! content hash of every consumed file): the cost of finding the new files is one listing and
//! one small table scan, and in a process that ran before (a stream's micro-batches) only a
//! scan of the `ingest_files` data files added since ([`kept`]). A
//! listed file with the recorded size and time is taken as unchanged; otherwise its content
//! is hashed, and a different hash is reported (it is not ingested again).
//!
//! **Which files.** One rule for local disk and object stores, Spark's (Hadoop's) convention
//! for data folders (`HadoopFSUtils.shouldFilterOutPathName` in Apache Spark): a path under
//! the landing folder with a component that starts with `.` or with `_` (unless it contains
//! `=`, a partition folder) is not a landing file, so the staging folders of writers
//! (`_temporary/0/_temporary/attempt_1/`, `.staging/`, `.spark-staging-…`) and hidden files are
//! not read; and only `*.parquet` files are. Symbolic links are followed, to files and to
//! folders (`landing/east -> /mnt/east`); a link to a folder it is inside (a loop) and a
//! broken link are reported (the report's `warnings`), never skipped silently.
//!
//! **Files still being written.** A producer may write a file in place (not written under
//! another name and renamed). A file is ingested only when what this run read is what is
//! recorded: its content hash is taken with its size and modification time read before and
//! after hashing, and before the run commits every new file is looked at again; a file whose
//! size or time moved since the listing is *deferred* (`deferred_files` in the report): not
//! ingested, not set aside, nothing recorded, so the next run takes it as new. A file found
//! unreadable is set aside (or stops the run) only if it did not change meanwhile; its record
//! then holds the size, time and hash of the same content, so once the producer completes
//! it, its size, time and hash differ and it is ingested. On an object store an object is
//! whole or absent (a PUT is atomic); an object replaced between the listing and its download
//! is deferred the same way.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::TimestampMicrosecondType;
use futures::StreamExt;

use super::report::ChangedFile;
use crate::delta;
use crate::error::{Error, Result};
use crate::layout::{self, Layout};
use crate::schema::INGEST_FILES;
use crate::store::StoreRoot;
use crate::tables::Table;

/// A landing stream: the files under one prefix of the landing folder, ingested in order.
/// Each stream records its own progress, so processes on separate prefixes never share it.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    /// Prefix relative to the landing folder (`""`: all of it).
    pub prefix: String,
}

impl Stream {
    /// The stream of the files under `prefix` (`""`: the whole landing folder).
    pub fn new(prefix: &str) -> Self {
        let prefix = prefix.trim_matches('/');
        Stream {
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        }
    }

    /// The application id under which every table records this stream's last run.
    pub fn app_id(&self) -> String {
        crate::delta::keys::ingest_stream_app(&self.prefix)
    }
}

/// Where the landing folder is.
pub enum Source {
    /// A local folder.
    Local(PathBuf),
    /// `_raw/customer_transactions` of a data dir on an object store; files are downloaded
    /// to the run's scratch folder before they are read.
    Store(Arc<StoreRoot>),
}

/// A file in the landing folder.
#[derive(Debug, Clone)]
pub struct LandingFile {
    /// Local path to read it from (on an object store: of its downloaded copy, set by
    /// [`Source::fetch`]).
    pub path: PathBuf,
    /// Path relative to the landing folder, `/`-separated: the file's name in every record.
    pub rel: String,
    /// Bytes, when listed.
    pub size: u64,
    /// Modification time when listed, µs since the epoch.
    pub modified_us: i64,
    /// `path` is a downloaded copy (of an object, which cannot change in place).
    pub downloaded: bool,
}

/// A file's size and modification time (of its target, for a symbolic link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Bytes.
    pub size: u64,
    /// Modification time, µs since the epoch.
    pub modified_us: i64,
}

impl Stat {
    fn of(meta: &std::fs::Metadata) -> Stat {
        Stat {
            size: meta.len(),
            modified_us: meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_micros() as i64),
        }
    }
}

impl LandingFile {
    /// Its size and time when listed.
    pub fn listed(&self) -> Stat {
        Stat {
            size: self.size,
            modified_us: self.modified_us,
        }
    }

    /// Whether a local file's size or time is no longer what was listed (it is being written,
    /// or was replaced): the run must not record what it read of it. `seen` is a stat taken
    /// while reading it; without one it is looked at now (a file gone is not "moved": it is
    /// missing, which the reader reports). A downloaded copy does not change.
    pub fn moved(&self, seen: Option<Stat>) -> bool {
        if self.downloaded {
            return false;
        }
        let now = match seen {
            Some(s) => s,
            None => match std::fs::metadata(&self.path) {
                Ok(m) => Stat::of(&m),
                Err(_) => return false,
            },
        };
        now != self.listed()
    }

    /// [`Error::Unsettled`] if the file moved since it was listed.
    pub fn check_settled(&self, seen: Option<Stat>) -> Result<()> {
        if self.moved(seen) {
            return Err(Error::Unsettled {
                path: self.path.clone(),
            });
        }
        Ok(())
    }
}

/// What ingest recorded about a consumed file.
#[derive(Debug, Clone)]
struct Recorded {
    size: u64,
    modified_us: Option<i64>,
    hash: Option<String>,
    /// Recorded as set aside (unusable), not ingested.
    set_aside: bool,
    /// The run that recorded it.
    run_seq: i64,
}

/// The landing files, split into new and changed.
pub struct Discovered {
    /// Files in the stream's part of the landing folder.
    pub seen: u64,
    /// Not consumed yet, sorted by path.
    pub new: Vec<LandingFile>,
    /// Consumed, but their content is not what was ingested.
    pub changed: Vec<ChangedFile>,
    /// Files changing while they were looked at (being written): for a later run.
    pub deferred: Vec<String>,
    /// What the listing could not use (broken or looping symbolic links).
    pub warnings: Vec<String>,
}

/// List the stream's landing files and compare them with what was consumed. With a `cache`
/// (a stream's micro-batches), folders whose files were all consumed are not listed again
/// while they do not change (see [`ListingCache`]).
pub async fn discover(
    source: &Source,
    stream: &Stream,
    files_table: &DeltaTable,
    scratch: &Path,
    workers: usize,
    mut cache: Option<&mut ListingCache>,
) -> Result<Discovered> {
    let (consumed, forgot) = consumed(files_table, stream).await?;
    if let Some(cache) = cache.as_deref_mut()
        && forgot
    {
        // Records taken back (a restore), or none to compare with: a kept folder's files may
        // be new again.
        cache.forget();
    }
    let listing = source.list(&stream.prefix, cache.as_deref_mut()).await?;
    let mut new = Vec::new();
    let mut suspects = Vec::new();
    // Folders holding a file that is not consumed as it is now (or is set aside).
    let mut unsettled: HashSet<&Path> = HashSet::new();
    for f in listing.files.iter() {
        let settled = match consumed.get(&f.rel) {
            None => {
                new.push(f.clone());
                false
            }
            Some(r) if r.size == f.size && r.modified_us == Some(f.modified_us) => !r.set_aside,
            Some(r) => {
                suspects.push((f.clone(), r.clone()));
                false
            }
        };
        if !settled {
            unsettled.extend(f.path.parent());
        }
    }
    if let Some(cache) = cache {
        cache.learn(&listing.folders, &unsettled);
    }
    let judged = judge(source, suspects, scratch, workers).await?;
    new.extend(judged.fixed);
    new.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(Discovered {
        seen: listing.files.len() as u64 + listing.cached_files,
        new,
        changed: judged.changed,
        deferred: judged.deferred,
        warnings: listing.warnings,
    })
}

/// What [`judge`] found of files listed with another size or time than recorded.
struct Judged {
    /// Set-aside files whose content changed: fixed, new again.
    fixed: Vec<LandingFile>,
    /// Consumed files whose content changed.
    changed: Vec<ChangedFile>,
    /// Files changing while they were looked at.
    deferred: Vec<String>,
}

/// Compare each suspect's content (fetched, hashed) with its record: a file whose size or
/// time moved but whose content did not is unchanged (a `touch`, a copy).
async fn judge(
    source: &Source,
    mut suspects: Vec<(LandingFile, Recorded)>,
    scratch: &Path,
    workers: usize,
) -> Result<Judged> {
    let mut new = Vec::new();
    let mut fetched: Vec<LandingFile> = suspects.iter().map(|(f, _)| f.clone()).collect();
    let mut deferred: Vec<String> = source
        .fetch(&mut fetched, scratch, workers)
        .await?
        .into_iter()
        .map(|f| f.rel)
        .collect();
    suspects.retain(|(f, _)| !deferred.contains(&f.rel));
    for ((f, _), local) in suspects.iter_mut().zip(fetched) {
        f.path = local.path;
        f.downloaded = local.downloaded;
    }
    let mut changed = Vec::new();
    for (f, r) in suspects {
        let hash = match hash_file(&f.path).and_then(|h| {
            f.check_settled(Some(h.stat))?;
            Ok(h.hash)
        }) {
            Ok(h) => h,
            Err(Error::Unsettled { .. }) => {
                deferred.push(f.rel.clone());
                continue;
            }
            Err(e) => return Err(e),
        };
        let same = match &r.hash {
            Some(h) => *h == hash,
            // Recorded before content hashes: the size is all there is to compare.
            None => r.size == f.size,
        };
        if r.set_aside {
            // A set-aside file whose content changed was fixed (or completed): it is new again.
            if !same {
                new.push(f);
            }
            continue;
        }
        if !same {
            changed.push(ChangedFile {
                path: f.rel.clone(),
                ingested_size: r.size,
                size: f.size,
                ingested_hash: r.hash.clone(),
                hash,
            });
        }
    }
    Ok(Judged {
        fixed: new,
        changed,
        deferred,
    })
}

impl Source {
    /// Landing files under `prefix`, recursively, sorted by relative path. On local disk, the
    /// folders `cache` vouches for are counted, not listed (an object store is listed whole).
    pub async fn list(&self, prefix: &str, cache: Option<&mut ListingCache>) -> Result<Listing> {
        match self {
            Source::Local(dir) => list(dir, prefix, cache),
            Source::Store(root) => list_store(root, prefix).await,
        }
    }

    /// Make `files` readable from local disk: on an object store, download them (at most
    /// `workers` at once) into `scratch`, at their relative paths, and point `path` there.
    /// Objects replaced since they were listed are taken out of `files` and returned: they
    /// are for a later run.
    pub async fn fetch(
        &self,
        files: &mut Vec<LandingFile>,
        scratch: &Path,
        workers: usize,
    ) -> Result<Vec<LandingFile>> {
        let Source::Store(root) = self else {
            return Ok(Vec::new());
        };
        let dir = scratch.join("landing");
        let downloads = files.iter().map(|f| {
            let local = f.rel.split('/').fold(dir.clone(), |p, part| p.join(part));
            let remote = root.path_of(&format!("{}/{}", Layout::LANDING, f.rel));
            let (root, listed) = (root.clone(), f.listed());
            async move {
                match download(&root, &remote, &local, listed).await {
                    Ok(()) => Ok(Some(local)),
                    Err(Error::Unsettled { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        });
        let locals: Vec<Option<PathBuf>> = futures::stream::iter(downloads)
            .buffered(workers.max(2) * 2)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        let mut replaced = Vec::new();
        let mut kept = Vec::new();
        for (mut f, local) in std::mem::take(files).into_iter().zip(locals) {
            match local {
                Some(local) => {
                    f.path = local;
                    kept.push(f);
                }
                None => replaced.push(f),
            }
        }
        *files = kept;
        Ok(replaced)
    }
}

/// Whether a path component under the landing folder hides what is below it: Spark's rule
/// for data folders (`HadoopFSUtils.shouldFilterOutPathName`): a name that starts with `.`,
/// or with `_` and is not a partition folder (`_x=1`). Writers stage their output under such
/// names (Hadoop's `_temporary/`, Spark's `.spark-staging-*`, `.staging/`) before committing it.
pub fn hidden_name(name: &str) -> bool {
    name.starts_with('.') || (name.starts_with('_') && !name.contains('='))
}

/// A landing file's relative path: no hidden component, a `.parquet` file name.
fn is_landing_path(rel: &str) -> bool {
    !rel.split('/').any(hidden_name) && layout::is_landing_candidate(Path::new(rel))
}

/// The landing files found, and what was found but could not be used as one (a broken
/// symbolic link, a link looping back to a folder it is in).
#[derive(Debug, Default)]
pub struct Listing {
    /// The files, sorted by relative path.
    pub files: Vec<LandingFile>,
    /// One line per thing skipped that the user must know of.
    pub warnings: Vec<String>,
    /// Files in folders taken from a [`ListingCache`] (not in `files`).
    pub cached_files: u64,
    /// The folders listed that a [`ListingCache`] may keep once their files are consumed.
    folders: Vec<(PathBuf, CachedFolder)>,
}

/// Landing files under `prefix` of the landing folder on an object store.
async fn list_store(root: &StoreRoot, prefix: &str) -> Result<Listing> {
    let landing = root.path_of(Layout::LANDING);
    let under = root.path_of(&format!("{}/{prefix}", Layout::LANDING));
    let mut listing = root.store().list(Some(&under));
    let mut out = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| {
            Error::io(
                format!("cannot list {}", root.url_of(Layout::LANDING)),
                std::io::Error::other(e),
            )
        })?;
        let Some(parts) = meta.location.prefix_match(&landing) else {
            continue;
        };
        let rel = parts
            .map(|p| p.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/");
        if !is_landing_path(&rel) || !rel.starts_with(prefix) {
            continue;
        }
        out.push(LandingFile {
            path: PathBuf::new(),
            rel,
            size: meta.size,
            modified_us: meta.last_modified.timestamp_micros(),
            downloaded: true,
        });
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(Listing {
        files: out,
        ..Default::default()
    })
}

/// Copy one object to a local file, streaming (a temporary name first). `Unsettled` when
/// the object is not the one listed any more (replaced since: its size or time differ).
async fn download(
    root: &StoreRoot,
    remote: &deltalake::Path,
    local: &Path,
    listed: Stat,
) -> Result<()> {
    use object_store::ObjectStoreExt;
    use tokio::io::AsyncWriteExt;
    let shown = || root.object_url(remote);
    let failed = |e: object_store::Error| {
        Error::io(
            format!("cannot download {}", shown()),
            std::io::Error::other(e),
        )
    };
    if let Some(dir) = local.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let got = root.store().get(remote).await.map_err(failed)?;
    let now = Stat {
        size: got.meta.size,
        modified_us: got.meta.last_modified.timestamp_micros(),
    };
    if now != listed {
        return Err(Error::Unsettled {
            path: local.to_path_buf(),
        });
    }
    let mut body = got.into_stream();
    let mut file = tokio::fs::File::create(local)
        .await
        .map_err(|e| Error::io(format!("cannot create {}", local.display()), e))?;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(failed)?;
        file.write_all(&chunk)
            .await
            .map_err(|e| Error::io(format!("cannot write {}", local.display()), e))?;
    }
    file.flush()
        .await
        .map_err(|e| Error::io(format!("cannot write {}", local.display()), e))
}

/// Landing files under `prefix`, recursively, sorted by relative path. Symbolic links are
/// followed; a link to a folder the walk is already in (a loop) and a broken link are
/// warnings. The folders `cache` vouches for are counted, not listed.
fn list(dir: &Path, prefix: &str, cache: Option<&mut ListingCache>) -> Result<Listing> {
    let mut out = Listing::default();
    let start = if prefix.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(prefix)
    };
    let cache = cache.map(|c| c.begin(&start));
    if start.is_dir() {
        let walk = Walk {
            root: dir,
            // A folder changed after this cannot be vouched for by its time (see ListingCache).
            settled_before_ns: cache.map_or(0, |c| now_ns() - c.settle_ns),
            cache,
        };
        walk.folder(&start, &mut Vec::new(), &mut out)?;
    }
    out.files.retain(|f| f.rel.starts_with(prefix));
    out.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// A folder's status change time (ctime), ns since the epoch: it moves whenever its entries
/// change (as its modification time does) and also when its times are set, which a producer
/// may do (`touch -d`, an archive's times); no one can set it back. (POSIX: `open` with
/// `O_CREAT`, `link`, `unlink` and `rename` "shall mark for update the last data modification
/// and last file status change timestamps of the parent directory"; `utimensat` marks the
/// last file status change timestamp.)
fn changed_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec()
}

/// (device, inode) of a folder: how a loop of symbolic links is recognised.
fn folder_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// A walk of the landing folder.
struct Walk<'a> {
    root: &'a Path,
    cache: Option<&'a ListingCache>,
    /// Folders last changed before this (ns since the epoch) may be cached.
    settled_before_ns: i64,
}

impl Walk<'_> {
    fn folder(&self, dir: &Path, ancestors: &mut Vec<(u64, u64)>, out: &mut Listing) -> Result<()> {
        let gone =
            |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound && dir != self.root;
        // Its time before its entries: a change while they are read makes a later time.
        let here = match std::fs::metadata(dir) {
            Ok(m) => m,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(Error::io(format!("cannot stat {}", dir.display()), e)),
        };
        let this = CachedFolder {
            id: folder_id(&here),
            changed_ns: changed_ns(&here),
            files: 0,
        };
        if let Some(files) = self.cache.and_then(|c| c.vouches(dir, &this)) {
            out.cached_files += files;
            return Ok(());
        }
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
        };
        ancestors.push(this.id);
        let (files_before, warnings_before) = (out.files.len(), out.warnings.len());
        // No folder and no symbolic link in it: what it holds changes only with its time.
        let mut leaf = true;
        for entry in rd {
            let entry =
                entry.map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
            let path = entry.path();
            let rel = path
                .strip_prefix(self.root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            let name = entry.file_name().to_string_lossy().into_owned();
            if hidden_name(&name) {
                continue;
            }
            let link = entry.file_type().is_ok_and(|t| t.is_symlink());
            leaf &= !link;
            let Some(meta) = followed(&path, &rel, link, &mut out.warnings)? else {
                continue;
            };
            if meta.is_dir() {
                leaf = false;
                if ancestors.contains(&folder_id(&meta)) {
                    out.warnings.push(format!(
                        "landing {rel} is a symbolic link to a folder it is inside (a loop): not followed"
                    ));
                    continue;
                }
                self.folder(&path, ancestors, out)?;
            } else if meta.is_file() && is_landing_path(&rel) {
                let stat = Stat::of(&meta);
                out.files.push(LandingFile {
                    path,
                    rel,
                    size: stat.size,
                    modified_us: stat.modified_us,
                    downloaded: false,
                });
            }
        }
        ancestors.pop();
        if leaf
            && out.warnings.len() == warnings_before
            && this.changed_ns > 0
            && this.changed_ns < self.settled_before_ns
        {
            let files = (out.files.len() - files_before) as u64;
            out.folders
                .push((dir.to_path_buf(), CachedFolder { files, ..this }));
        }
        Ok(())
    }
}

/// What a landing entry is, following a symbolic link to what it points to; None when it is
/// gone (between listing and stat: a later run sees it if it comes back) or a link to
/// nothing (said in `warnings`).
fn followed(
    path: &Path,
    rel: &str,
    link: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && link => {
            warnings.push(format!(
                "landing {rel} is a symbolic link to something that does not exist ({}): skipped",
                std::fs::read_link(path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            ));
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot stat {}", path.display()), e)),
    }
}

/// What a stream remembers of its landing folder between micro-batches: the folders whose
/// files were all consumed (none set aside), with the folder's identity and status change
/// time (ctime). A folder's ctime changes when a file is created, removed or renamed in it
/// (and when its times are set), so while it is the same, the folder is not listed and its
/// files not looked at again: a micro-batch lists only the folders that changed, not every
/// folder ever landed (a producer writing a folder a second, as `generate --follow` does,
/// made the walk grow by 3,600 folders an hour: 0.012 s per micro-batch at the start of a
/// 60-minute stream, 0.071 s at its end).
///
/// Only leaf folders (no subfolder, no symbolic link) last changed more than
/// 2 s before the listing are kept: a folder's time has the file system's
/// granularity, so a file created in the same tick as the time read would not change it.
/// A consumed file rewritten in place (not created anew) changes its own time but not its
/// folder's: every [`Self::FULL_WALK_EVERY`] the walk is whole again, which reports it among
/// the changed files (it is not ingested again either way). A file set aside is never in a
/// kept folder: fixing it in place is seen at once. A file system whose folders' ctime does
/// not follow their entries (some FUSE mounts of object stores) delays a new file there by
/// up to a whole walk; an object store itself is listed whole.
#[derive(Debug)]
pub struct ListingCache {
    /// How long before a listing a folder must have last changed to be kept, ns.
    settle_ns: i64,
    /// The folder walked.
    start: PathBuf,
    folders: HashMap<PathBuf, CachedFolder>,
    /// When the last whole walk began.
    whole_at: Option<std::time::Instant>,
}

/// A folder as listed: identity, status change time, landing files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CachedFolder {
    id: (u64, u64),
    changed_ns: i64,
    files: u64,
}

impl Default for ListingCache {
    fn default() -> Self {
        ListingCache {
            settle_ns: 2_000_000_000,
            start: PathBuf::new(),
            folders: HashMap::new(),
            whole_at: None,
        }
    }
}

impl ListingCache {
    /// How often the walk is whole again (what a rewrite in place waits to be reported).
    pub const FULL_WALK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Begin a listing of `start`: a whole walk (everything forgotten) when it is another
    /// folder or the last whole walk is [`Self::FULL_WALK_EVERY`] old.
    fn begin(&mut self, start: &Path) -> &Self {
        let stale = self
            .whole_at
            .is_none_or(|t| t.elapsed() >= Self::FULL_WALK_EVERY);
        if stale || self.start != start {
            self.forget();
            self.start = start.to_path_buf();
            self.whole_at = Some(std::time::Instant::now());
        }
        self
    }

    /// Forget every folder: the next listing is a whole walk.
    pub fn forget(&mut self) {
        self.folders.clear();
        self.whole_at = None;
    }

    /// The landing files of `dir`, if it is kept and still the same folder with the same time.
    fn vouches(&self, dir: &Path, now: &CachedFolder) -> Option<u64> {
        self.folders
            .get(dir)
            .filter(|c| c.id == now.id && c.changed_ns == now.changed_ns)
            .map(|c| c.files)
    }

    /// Keep the `listed` folders but the `unsettled` ones.
    fn learn(&mut self, listed: &[(PathBuf, CachedFolder)], unsettled: &HashSet<&Path>) {
        for (dir, folder) in listed {
            if unsettled.contains(dir.as_path()) {
                self.folders.remove(dir);
            } else {
                self.folders.insert(dir.clone(), *folder);
            }
        }
    }
}

/// Every stream with a file recorded in `ingest_files`.
pub async fn streams(t: &DeltaTable) -> Result<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    let store = t.object_store();
    for f in delta::files(t, Table::IngestFiles, None)? {
        let mut batches = delta::read::columns(store.clone(), &f.path, &["stream"]).await?;
        while let Some(b) = batches.next().await {
            let b = b?;
            let col = b
                .column_by_name("stream")
                .and_then(|c| c.as_string_opt::<i32>());
            let Some(col) = col else {
                return Err(Error::DamagedLog {
                    table: Table::IngestFiles.name().into(),
                    what: "a data file has no string column stream".into(),
                });
            };
            out.extend(col.iter().flatten().map(str::to_string));
        }
    }
    Ok(out)
}

/// The stream's consumed files, from `ingest_files` (see [`kept`]), and whether a record
/// this process read before is gone or changed (a restore took it back).
async fn consumed(
    t: &DeltaTable,
    stream: &Stream,
) -> Result<(Arc<HashMap<String, Recorded>>, bool)> {
    let live: Vec<deltalake::Path> = delta::files(t, Table::IngestFiles, None)?
        .into_iter()
        .map(|f| f.path)
        .collect();
    let key = (t.log_store().root_url().to_string(), stream.prefix.clone());
    let kept = kept::take(&key);
    let names: HashSet<&str> = live.iter().map(|p| p.as_ref()).collect();
    // Files are only added between two runs unless a merge (or a restore) replaced some:
    // then everything is read again (a merge of small files comes every 16 runs).
    let (mut files, mut out, before) = match kept {
        Some(k) if k.files.iter().all(|f| names.contains(f.as_str())) => {
            (k.files, k.records, Before::Kept)
        }
        Some(k) => (
            HashSet::new(),
            Arc::new(HashMap::new()),
            Before::Read(k.records),
        ),
        None => (HashSet::new(), Arc::new(HashMap::new()), Before::Unknown),
    };
    let store = t.object_store();
    let columns = [
        "path",
        "size",
        "modified",
        "content_hash",
        "stream",
        "run_seq",
        "set_aside",
    ];
    let added: Vec<&deltalake::Path> = live
        .iter()
        .filter(|p| !files.contains(p.as_ref()))
        .collect();
    for path in added {
        let mut batches = delta::read::columns(store.clone(), path, &columns).await?;
        while let Some(b) = batches.next().await {
            record_batch(&b?, stream, Arc::make_mut(&mut out))?;
        }
        files.insert(path.to_string());
    }
    let forgot = match before {
        Before::Kept => false,
        Before::Read(before) => before.iter().any(|(path, r)| {
            out.get(path).is_none_or(|now| {
                (now.size, now.modified_us, now.set_aside) != (r.size, r.modified_us, r.set_aside)
            })
        }),
        // Nothing read before (a first run, or one whose read failed): nothing to compare.
        Before::Unknown => true,
    };
    kept::put(
        key,
        kept::Kept {
            files,
            records: out.clone(),
        },
    );
    Ok((out, forgot))
}

/// What this process read of a stream's records before a run.
enum Before {
    /// Still true: only new records were read.
    Kept,
    /// Read again whole (a merge or a restore replaced files): these were the records.
    Read(Arc<HashMap<String, Recorded>>),
    /// None (a first run, or the last read failed).
    Unknown,
}

/// What a stream consumed, as read from `ingest_files` by this process's last run, with the
/// data files it was read from: a run reads only the files added since (one small file per
/// run), not every record of every file ever consumed (which grew by a file's record every
/// second of a stream). Delta data files never change (new names each), so records read
/// from a file still live are still true.
mod kept {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    use super::Recorded;

    pub(super) struct Kept {
        /// The `ingest_files` data files read.
        pub files: HashSet<String>,
        /// Their records of the stream.
        pub records: Arc<HashMap<String, Recorded>>,
    }

    /// By table location and stream prefix.
    type Key = (String, String);
    static KEPT: Mutex<Option<HashMap<Key, Kept>>> = Mutex::new(None);

    pub(super) fn take(key: &Key) -> Option<Kept> {
        let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
        kept.get_or_insert_with(HashMap::new).remove(key)
    }

    pub(super) fn put(key: Key, k: Kept) {
        let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
        kept.get_or_insert_with(HashMap::new).insert(key, k);
    }
}

fn record_batch(
    b: &RecordBatch,
    stream: &Stream,
    out: &mut HashMap<String, Recorded>,
) -> Result<()> {
    let damaged = |what: &str| Error::DamagedLog {
        table: Table::IngestFiles.name().into(),
        what: format!("a data file has {what}"),
    };
    let col = |n: &str| {
        b.column_by_name(n)
            .ok_or_else(|| damaged(&format!("no column {n}")))
    };
    let path: &StringArray = col("path")?
        .as_string_opt()
        .ok_or_else(|| damaged("a non-string path"))?;
    let size: &Int64Array = col("size")?
        .as_primitive_opt()
        .ok_or_else(|| damaged("a non-integer size"))?;
    let modified = col("modified")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| damaged("a non-timestamp modified"))?;
    let hash: &StringArray = col("content_hash")?
        .as_string_opt()
        .ok_or_else(|| damaged("a non-string content_hash"))?;
    let streams: &StringArray = col("stream")?
        .as_string_opt()
        .ok_or_else(|| damaged("a non-string stream"))?;
    let seqs: &Int64Array = col("run_seq")?
        .as_primitive_opt()
        .ok_or_else(|| damaged("a non-integer run_seq"))?;
    // Absent from files written before files were set aside: none was.
    let set_aside: Option<&StringArray> = b
        .column_by_name("set_aside")
        .and_then(|c| c.as_string_opt());
    for i in 0..b.num_rows() {
        if streams.value(i) != stream.prefix {
            continue;
        }
        let r = Recorded {
            size: size.value(i).max(0) as u64,
            modified_us: modified.is_valid(i).then(|| modified.value(i)),
            hash: hash.is_valid(i).then(|| hash.value(i).to_string()),
            set_aside: set_aside.is_some_and(|c| c.is_valid(i)),
            run_seq: seqs.value(i),
        };
        // A file set aside, then fixed, has two records: the later one holds.
        match out.entry(path.value(i).to_string()) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if e.get().run_seq < r.run_seq {
                    e.insert(r);
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(r);
            }
        }
    }
    Ok(())
}

/// Content hashes being computed in the background (new files are hashed while the run
/// reads them; the hashes are needed only when its `ingest_files` rows are written).
pub struct Hashing(Vec<tokio::task::JoinHandle<Result<Vec<Hashed>>>>);

/// A file's content hash, and its size and time while it was hashed.
#[derive(Debug, Clone)]
pub struct Hashed {
    /// BLAKE3, hex.
    pub hash: String,
    /// Size and time, the same before and after hashing.
    pub stat: Stat,
}

/// Hash files on `workers` blocking threads, in the background.
pub fn start_hashing(files: Vec<LandingFile>, workers: usize) -> Hashing {
    let files = Arc::new(files);
    let n = files.len();
    let chunk = n.div_ceil(workers.max(1)).max(1);
    Hashing(
        (0..n)
            .step_by(chunk)
            .map(|start| {
                let files = files.clone();
                tokio::task::spawn_blocking(move || {
                    files[start..(start + chunk).min(files.len())]
                        .iter()
                        .map(|f| hash_file(&f.path))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect(),
    )
}

impl Hashing {
    /// The hashes, in the files' order.
    pub async fn wait(self) -> Result<Vec<Hashed>> {
        let mut out = Vec::new();
        for t in self.0 {
            out.extend(t.await??);
        }
        Ok(out)
    }
}

/// BLAKE3 of a file's content, with its size and time, which must not move while it is read
/// (else [`Error::Unsettled`]: the file is being written).
pub fn hash_file(path: &Path) -> Result<Hashed> {
    let mut f = std::fs::File::open(path).map_err(|e| {
        Error::bad_input(
            path,
            format!(
                "cannot open ({e}); landing files must not be moved or deleted while ingest runs"
            ),
        )
    })?;
    let stat = |f: &std::fs::File| {
        f.metadata()
            .map(|m| Stat::of(&m))
            .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))
    };
    let before = stat(&f)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    if stat(&f)? != before {
        return Err(Error::Unsettled {
            path: path.to_path_buf(),
        });
    }
    Ok(Hashed {
        hash: h.finalize().to_hex().to_string(),
        stat: before,
    })
}

/// The `ingest_files` rows of this run's files.
pub fn log_batch(
    files: &[LandingFile],
    hashes: &[Hashed],
    rows: &[u64],
    set_aside: &[Option<String>],
    stream: &Stream,
    run_seq: i64,
    run_id: &str,
) -> Result<RecordBatch> {
    use deltalake::arrow::array::TimestampMicrosecondArray;
    let now = chrono::Utc::now().timestamp_micros();
    let n = files.len();
    let cols: Vec<Arc<dyn Array>> = vec![
        Arc::new(StringArray::from_iter_values(
            files.iter().map(|f| f.rel.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            files.iter().map(|f| f.size as i64),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(files.iter().map(|f| f.modified_us))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            hashes.iter().map(|h| h.hash.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| *r as i64))),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            stream.prefix.as_str(),
            n,
        ))),
        Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(
            run_seq, n,
        ))),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            run_id, n,
        ))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(now, n))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(
            set_aside.iter().map(Option::as_deref),
        )),
    ];
    Ok(RecordBatch::try_new(INGEST_FILES.clone(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(l: &Listing) -> Vec<&str> {
        l.files.iter().map(|f| f.rel.as_str()).collect()
    }

    #[test]
    fn a_stream_lists_again_only_the_folders_that_changed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        for (folder, file) in [("b1", "x"), ("b2", "y")] {
            std::fs::create_dir(dir.join(folder)).unwrap();
            std::fs::write(dir.join(folder).join(format!("{file}.parquet")), b"1").unwrap();
        }
        // Folders changed a moment ago are not kept (their time may not move yet).
        let mut cache = ListingCache::default();
        let l = list(dir, "", Some(&mut cache)).unwrap();
        assert_eq!(rels(&l), ["b1/x.parquet", "b2/y.parquet"]);
        cache.learn(&l.folders, &HashSet::new());
        assert_eq!(list(dir, "", Some(&mut cache)).unwrap().cached_files, 0);

        // Settled: b2's file is not consumed, only b1 is kept. (A folder's time has the
        // granularity of the kernel's clock tick: the test waits out a shorter settling time
        // after each change.)
        let settle = || std::thread::sleep(std::time::Duration::from_millis(60));
        let mut cache = ListingCache {
            settle_ns: 50_000_000,
            ..Default::default()
        };
        settle();
        let l = list(dir, "", Some(&mut cache)).unwrap();
        let b2 = dir.join("b2");
        cache.learn(&l.folders, &HashSet::from([b2.as_path()]));
        let l = list(dir, "", Some(&mut cache)).unwrap();
        assert_eq!((rels(&l), l.cached_files), (vec!["b2/y.parquet"], 1));

        // A file lands in b1: its folder changes, it is listed again.
        std::fs::write(dir.join("b1/z.parquet"), b"2").unwrap();
        settle();
        let l = list(dir, "", Some(&mut cache)).unwrap();
        assert_eq!(
            (rels(&l), l.cached_files),
            (vec!["b1/x.parquet", "b1/z.parquet", "b2/y.parquet"], 0)
        );
        // Setting a folder's times back (as an archive's do) changes it too.
        cache.learn(&l.folders, &HashSet::new());
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::open(dir.join("b1"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        settle();
        let l = list(dir, "", Some(&mut cache)).unwrap();
        assert_eq!(
            (rels(&l), l.cached_files),
            (vec!["b1/x.parquet", "b1/z.parquet"], 1)
        );

        // Consumed, unchanged: nothing is listed, every file counted.
        cache.learn(&l.folders, &HashSet::new());
        let l = list(dir, "", Some(&mut cache)).unwrap();
        assert_eq!((rels(&l), l.cached_files), (vec![], 3));

        // A file rewritten in place leaves its folder as it was: the next whole walk sees it.
        std::fs::write(dir.join("b2/y.parquet"), b"changed").unwrap();
        assert_eq!(list(dir, "", Some(&mut cache)).unwrap().cached_files, 3);
        cache.whole_at = Some(std::time::Instant::now() - ListingCache::FULL_WALK_EVERY);
        let l = list(dir, "", Some(&mut cache)).unwrap();
        assert_eq!(l.cached_files, 0);
        let y = l.files.iter().find(|f| f.rel == "b2/y.parquet").unwrap();
        assert_eq!(y.size, 7);

        // Without a cache (a batch run), everything is listed.
        assert_eq!(list(dir, "", None).unwrap().files.len(), 3);
    }
}

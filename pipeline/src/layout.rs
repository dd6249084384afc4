//! Data dir -> locations and file names. Every path the pipeline uses is built here; the
//! tables' own paths are facts of [`Table`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use deltalake::{DeltaTableError, ensure_table_uri};
use url::Url;

use crate::tables::Table;

/// The data directory and everything under it (`docs/CONTRACT.md`, "Tables and where they live").
/// The data dir is a local folder or an object store location (`s3://bucket/prefix`); the
/// scratch space (spilled batches, downloaded landing files, failed load rows) is always on
/// local disk.
#[derive(Debug, Clone)]
pub struct Layout {
    root: Root,
    scratch: Option<PathBuf>,
    /// Sub-folder of the landing folder that generate writes to (`--landing-prefix`).
    landing_prefix: String,
}

/// Where the data dir lives.
#[derive(Debug, Clone)]
pub enum Root {
    /// A local folder.
    Local(PathBuf),
    /// An object store location.
    Store(Arc<crate::store::StoreRoot>),
}

impl Layout {
    /// The layout of the local data dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        crate::store::local::register_with_delta();
        Self {
            root: Root::Local(root.into()),
            scratch: None,
            landing_prefix: String::new(),
        }
    }

    /// The layout of `data_dir`: a local path, or `s3://bucket/prefix` (credentials and
    /// endpoint from the AWS_* environment variables).
    pub fn parse(data_dir: &str) -> crate::error::Result<Self> {
        if !data_dir.contains("://") {
            // `s3:/bucket` or `s3:bucket` is a mistyped URL, not a folder named `s3:`.
            if let Some((scheme, _)) = data_dir.split_once(':')
                && scheme.len() > 1
                && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(crate::error::Error::Invalid(format!(
                    "--data-dir `{data_dir}` looks like a mistyped URL: write \
                     s3://bucket/prefix for an object store, or ./{data_dir} for a local folder"
                )));
            }
            return Ok(Self::new(data_dir));
        }
        Ok(Self {
            root: Root::Store(Arc::new(crate::store::StoreRoot::open(data_dir)?)),
            scratch: None,
            landing_prefix: String::new(),
        })
    }

    /// The same data dir with the scratch space in `dir`.
    pub fn with_scratch(mut self, dir: Option<PathBuf>) -> Self {
        self.scratch = dir;
        self
    }

    /// The same data dir with generate writing (and ingest reading) under `prefix` of the
    /// landing folder: `/`-separated names, none empty, `.`/`..`, or hidden (`.x`, `_x`: the
    /// landing listing skips those).
    pub fn with_landing_prefix(mut self, prefix: &str) -> crate::error::Result<Self> {
        let trimmed = prefix.trim_matches('/');
        if !trimmed.is_empty()
            && trimmed
                .split('/')
                .any(|part| part.is_empty() || part.starts_with('.') || part.starts_with('_'))
        {
            return Err(crate::error::Error::Invalid(format!(
                "--landing-prefix `{prefix}`: use sub-folder names like `east` or `eu/west`; \
                 a name may not be empty or start with `.` or `_` (`..` would leave the \
                 landing folder, and hidden names are not listed)"
            )));
        }
        self.landing_prefix = trimmed.to_string();
        Ok(self)
    }

    /// Where the data dir lives.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The local data dir; `None` on an object store.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.root {
            Root::Local(p) => Some(p),
            Root::Store(_) => None,
        }
    }

    /// The object store location; `None` for a local data dir.
    pub fn store(&self) -> Option<&Arc<crate::store::StoreRoot>> {
        match &self.root {
            Root::Local(_) => None,
            Root::Store(s) => Some(s),
        }
    }

    /// The data dir as the user gave it, for messages.
    pub fn shown(&self) -> String {
        match &self.root {
            Root::Local(p) => p.display().to_string(),
            Root::Store(s) => s.url().to_string(),
        }
    }

    /// Landing folder of raw Parquet files, relative to the data dir.
    pub const LANDING: &'static str = "_raw/customer_transactions";

    /// The prefix generate writes under (`""`: the landing folder itself).
    pub fn landing_prefix(&self) -> &str {
        &self.landing_prefix
    }

    /// Where generate writes: the landing folder, or its `--landing-prefix` sub-folder. On an
    /// object store, a local staging folder in the scratch space that generate uploads from.
    pub fn raw_dir(&self) -> PathBuf {
        let landing = match &self.root {
            Root::Local(p) => p.join(Self::LANDING),
            Root::Store(_) => self.scratch_dir().join("generate").join(Self::LANDING),
        };
        if self.landing_prefix.is_empty() {
            landing
        } else {
            landing.join(&self.landing_prefix)
        }
    }

    /// The whole landing folder of a local data dir (every prefix).
    pub fn landing_dir(&self) -> Option<PathBuf> {
        self.local_root().map(|p| p.join(Self::LANDING))
    }

    /// The folder of a Delta table in a local data dir; `None` on an object store.
    pub fn table_dir(&self, table: Table) -> Option<PathBuf> {
        self.local_root().map(|root| {
            table
                .path()
                .split('/')
                .fold(root.to_path_buf(), |p, part| p.join(part))
        })
    }

    /// The location of a Delta table, as shown to users.
    pub fn table_shown(&self, table: Table) -> String {
        match &self.root {
            Root::Local(_) => self.table_dir(table).expect("local").display().to_string(),
            Root::Store(s) => s.url_of(table.path()).to_string(),
        }
    }

    /// The landing folder as users name it: a local path or the object's URL.
    pub fn landing_shown(&self) -> String {
        match &self.root {
            Root::Local(_) => self.landing_dir().expect("local").display().to_string(),
            Root::Store(s) => s.object_url(&s.path_of(Self::LANDING)),
        }
    }

    /// The URI of a Delta table (on local disk created as an empty folder if missing, as
    /// delta-rs wants).
    pub fn table_uri(&self, table: Table) -> Result<Url, DeltaTableError> {
        match &self.root {
            Root::Local(_) => dir_uri(&self.table_dir(table).expect("local")),
            Root::Store(s) => Ok(s.url_of(table.path())),
        }
    }

    /// Scratch space (spilled batches, downloaded landing files); per-run folders under it
    /// are removed when the run ends. `--scratch-dir`, else `DATA_DIR/_scratch` for a local
    /// data dir and the system's temporary folder for an object store.
    pub fn scratch_dir(&self) -> PathBuf {
        match (&self.scratch, &self.root) {
            (Some(dir), _) => dir.clone(),
            (None, Root::Local(p)) => p.join("_scratch"),
            (None, Root::Store(_)) => std::env::temp_dir().join("pipeline-scratch"),
        }
    }

    /// Where `load` writes the rows that failed after retries (local disk).
    pub fn load_dir(&self) -> PathBuf {
        match &self.root {
            Root::Local(p) => p.join("_load"),
            Root::Store(_) => self.scratch_dir().join("_load"),
        }
    }

    /// The folder of per-machine locks (`maintain`'s compaction lock). On an object store,
    /// one per data dir under the scratch folder (shared by every data dir on the machine by
    /// default): `s3://lake/prod` locks in `_pipeline/s3___lake_prod`.
    pub fn lock_dir(&self) -> PathBuf {
        match &self.root {
            Root::Local(p) => p.join("_pipeline"),
            Root::Store(s) => {
                let name: String = s
                    .url()
                    .as_str()
                    .trim_end_matches('/')
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                self.scratch_dir().join("_pipeline").join(name)
            }
        }
    }

    /// Where the data dir's id lives: `_pipeline/data_dir_id`.
    pub const DATA_DIR_ID: &'static str = "_pipeline/data_dir_id";

    /// The data dir's id: a UUID written once, by the first command that needs it (the first
    /// load), so ScyllaDB knows which data dir a keyspace serves (a copy restored from a
    /// backup, or the same folder mounted elsewhere, keeps it; a data dir made anew gets
    /// another). Created atomically: of two processes creating it at once, both read the
    /// winner's. `create`: false to only read it (None when absent).
    pub async fn data_dir_id(&self, create: bool) -> crate::error::Result<Option<String>> {
        use crate::error::Error;
        let fresh = uuid::Uuid::new_v4().to_string();
        match &self.root {
            Root::Local(p) => {
                let path = p.join(Self::DATA_DIR_ID);
                let io =
                    |e: std::io::Error| Error::io(format!("cannot write {}", path.display()), e);
                if let Ok(id) = std::fs::read_to_string(&path) {
                    return Ok(Some(id.trim().to_string()));
                }
                if !create {
                    return Ok(None);
                }
                std::fs::create_dir_all(path.parent().expect("has a parent")).map_err(io)?;
                // Written whole under another name, then linked into place (fails if it
                // exists): no reader sees a half-written id.
                let tmp = temp_path(&path);
                std::fs::write(&tmp, &fresh).map_err(io)?;
                let linked = std::fs::hard_link(&tmp, &path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(Some(fresh)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::read_to_string(&path)
                            .map(|id| Some(id.trim().to_string()))
                            .map_err(io)
                    }
                    Err(e) => Err(io(e)),
                }
            }
            Root::Store(s) => {
                use object_store::{ObjectStoreExt, PutMode, PutOptions};
                let path = s.path_of(Self::DATA_DIR_ID);
                let shown = s.url_of(Self::DATA_DIR_ID);
                let read = || async {
                    match s.store().get(&path).await {
                        Ok(r) => r
                            .bytes()
                            .await
                            .map(|b| Some(String::from_utf8_lossy(&b).trim().to_string()))
                            .map_err(|e| {
                                crate::store::access_error(format_args!("cannot read {shown}"), e)
                            }),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(crate::store::access_error(
                            format_args!("cannot read {shown}"),
                            e,
                        )),
                    }
                };
                if let Some(id) = read().await? {
                    return Ok(Some(id));
                }
                if !create {
                    return Ok(None);
                }
                let put = s
                    .store()
                    .put_opts(
                        &path,
                        fresh.clone().into_bytes().into(),
                        PutOptions {
                            mode: PutMode::Create,
                            ..Default::default()
                        },
                    )
                    .await;
                match put {
                    Ok(_) => Ok(Some(fresh)),
                    Err(object_store::Error::AlreadyExists { .. }) => read().await,
                    Err(e) => Err(crate::store::access_error(
                        format_args!("cannot write {shown}"),
                        e,
                    )),
                }
            }
        }
    }

    /// The folder of one generator batch: `batch-000007`.
    pub fn raw_batch_dir(&self, batch: u32) -> PathBuf {
        self.raw_dir().join(batch_name(batch))
    }

    /// A generated file for one day: `batch-000007/2024-01-05-0003.parquet`. Zero-padded so
    /// that names sort in generation order.
    pub fn raw_day_file(&self, batch: u32, day: NaiveDate, part: u32) -> PathBuf {
        self.raw_batch_dir(batch)
            .join(format!("{}-{part:04}.parquet", day.format("%Y-%m-%d")))
    }

    /// A file of rows re-delivered from earlier batches (duplicates on purpose).
    pub fn raw_redelivery_file(&self, batch: u32) -> PathBuf {
        self.raw_batch_dir(batch).join("redelivered-0000.parquet")
    }
}

/// The folder name of generator batch `batch`.
pub fn batch_name(batch: u32) -> String {
    format!("batch-{batch:06}")
}

/// Writers put data under a temporary name first; readers skip such names, so a killed
/// writer never leaves a file that looks complete.
pub fn temp_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// True for files readers should use: not hidden/temporary (`.x`), not private (`_x`), and
/// Parquet.
pub fn is_landing_candidate(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && !name.starts_with('_') && name.ends_with(".parquet")
}

/// The URI of a local folder; `ensure_table_uri` creates it if missing and makes it absolute.
pub(crate) fn dir_uri(dir: &Path) -> Result<Url, DeltaTableError> {
    ensure_table_uri(dir.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_generation_order() {
        let l = Layout::new("d");
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let a = l.raw_day_file(2, d("2024-01-09"), 3);
        let b = l.raw_day_file(2, d("2024-01-10"), 0);
        let c = l.raw_day_file(10, d("2023-01-01"), 0);
        assert!(a < b && b < c, "{a:?} {b:?} {c:?}");
        assert_eq!(
            a,
            PathBuf::from("d/_raw/customer_transactions/batch-000002/2024-01-09-0003.parquet")
        );
    }

    #[test]
    fn each_data_dir_on_a_store_has_its_own_lock_folder() {
        let lock = |url: &str| {
            Layout::parse(url)
                .unwrap()
                .with_scratch(Some(PathBuf::from("/scratch")))
                .lock_dir()
        };
        assert_eq!(
            lock("s3://lake/prod"),
            PathBuf::from("/scratch/_pipeline/s3___lake_prod")
        );
        assert_ne!(lock("s3://lake/prod"), lock("s3://lake/test"));
        assert_eq!(Layout::new("d").lock_dir(), PathBuf::from("d/_pipeline"));
    }

    #[test]
    fn tables_live_where_the_contract_says() {
        let l = Layout::new("d");
        assert_eq!(
            l.table_dir(Table::Quarantine).unwrap(),
            PathBuf::from("d/_quarantine/customer_transactions")
        );
        assert_eq!(
            l.table_dir(Table::Transactions).unwrap(),
            PathBuf::from("d/customer_transactions")
        );
    }

    #[test]
    fn landing_prefixes_stay_inside_the_landing_folder_and_urls_are_not_folders() {
        for bad in ["..", "../evil", "east/../..", "_x", ".hidden", "a//b"] {
            assert!(Layout::new("d").with_landing_prefix(bad).is_err(), "{bad}");
        }
        let l = Layout::new("d").with_landing_prefix("/eu/west/").unwrap();
        assert_eq!(
            l.raw_dir(),
            PathBuf::from("d/_raw/customer_transactions/eu/west")
        );
        for typo in ["s3:/lake/x", "s3:lake", "S3:/lake"] {
            assert!(Layout::parse(typo).is_err(), "{typo}");
        }
        assert!(Layout::parse("data").is_ok() && Layout::parse("./s3:x").is_ok());
    }

    #[test]
    fn temp_files_are_not_candidates() {
        let f = PathBuf::from("x/2024-01-01-0000.parquet");
        assert!(is_landing_candidate(&f));
        assert!(!is_landing_candidate(&temp_path(&f)));
        assert!(!is_landing_candidate(Path::new("x/_SUCCESS")));
        assert!(!is_landing_candidate(Path::new("x/notes.txt")));
    }
}

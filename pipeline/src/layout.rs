//! Data dir -> locations and file names. Every path the pipeline uses is built here; the
//! tables' own paths are facts of [`Table`].

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use deltalake::{DeltaTableError, ensure_table_uri};
use url::Url;

use crate::tables::Table;

/// The data directory and everything under it (`CONTRACT.md`, "Tables and where they live").
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of the data dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The data dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Landing folder of raw Parquet files.
    pub fn raw_dir(&self) -> PathBuf {
        self.root.join("_raw").join("customer_transactions")
    }

    /// The folder of a Delta table.
    pub fn table_dir(&self, table: Table) -> PathBuf {
        table
            .path()
            .split('/')
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    /// The URI of a Delta table (created as an empty folder if missing, as delta-rs wants).
    pub fn table_uri(&self, table: Table) -> Result<Url, DeltaTableError> {
        dir_uri(&self.table_dir(table))
    }

    /// Scratch space for one run (spilled batches); removed when the run ends.
    pub fn scratch_dir(&self) -> PathBuf {
        self.root.join("_scratch")
    }

    /// Where `load` writes the rows that failed after retries.
    pub fn load_dir(&self) -> PathBuf {
        self.root.join("_load")
    }

    /// The folder of one generator batch: `batch-000007`.
    pub fn raw_batch_dir(&self, batch: u32) -> PathBuf {
        self.raw_dir().join(format!("batch-{batch:06}"))
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
    fn tables_live_where_the_contract_says() {
        let l = Layout::new("d");
        assert_eq!(
            l.table_dir(Table::Quarantine),
            PathBuf::from("d/_quarantine/customer_transactions")
        );
        assert_eq!(
            l.table_dir(Table::Transactions),
            PathBuf::from("d/customer_transactions")
        );
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

//! Data dir -> table locations and file names. Every path the pipeline uses is built here.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use deltalake::{DeltaTableError, ensure_table_uri};
use url::Url;

/// The data directory and everything under it (`CONTRACT.md`, "Tables and where they live").
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Landing folder of raw Parquet files.
    pub fn raw_dir(&self) -> PathBuf {
        self.root.join("_raw").join("customer_transactions")
    }

    pub fn transactions_dir(&self) -> PathBuf {
        self.root.join("customer_transactions")
    }

    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join("_quarantine").join("customer_transactions")
    }

    pub fn aggregates_dir(&self) -> PathBuf {
        self.root.join("customer_daily_aggregates")
    }

    /// Scratch space for one run (spilled batches); removed when the run ends.
    pub fn scratch_dir(&self) -> PathBuf {
        self.root.join("_scratch")
    }

    pub fn transactions_uri(&self) -> Result<Url, DeltaTableError> {
        dir_uri(&self.transactions_dir())
    }

    pub fn quarantine_uri(&self) -> Result<Url, DeltaTableError> {
        dir_uri(&self.quarantine_dir())
    }

    pub fn aggregates_uri(&self) -> Result<Url, DeltaTableError> {
        dir_uri(&self.aggregates_dir())
    }

    /// The run history Delta table written by `pipeline run`.
    pub fn history_dir(&self) -> PathBuf {
        self.root.join("_pipeline").join("run_history")
    }

    pub fn history_uri(&self) -> Result<Url, DeltaTableError> {
        dir_uri(&self.history_dir())
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

/// True for files readers should ignore: hidden/temporary (`.x`), private (`_x`), or not Parquet.
pub fn is_landing_candidate(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && !name.starts_with('_') && name.ends_with(".parquet")
}

pub(crate) fn dir_uri(dir: &Path) -> Result<Url, DeltaTableError> {
    // `ensure_table_uri` creates a missing local directory and makes the path absolute.
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
    fn temp_files_are_not_candidates() {
        let f = PathBuf::from("x/2024-01-01-0000.parquet");
        assert!(is_landing_candidate(&f));
        assert!(!is_landing_candidate(&temp_path(&f)));
        assert!(!is_landing_candidate(Path::new("x/_SUCCESS")));
        assert!(!is_landing_candidate(Path::new("x/notes.txt")));
    }
}

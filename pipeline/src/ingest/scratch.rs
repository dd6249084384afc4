//! A run's scratch folder, and the cleanup of those left by killed runs.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A scratch folder for one run, removed when dropped (also on error). Its name carries the
/// process id, so a later run can remove the folders of runs that were killed (no destructor
/// ran) without touching those of a run still going.
pub struct Scratch {
    /// The folder.
    pub dir: PathBuf,
}

impl Scratch {
    /// A new folder under `base`.
    pub fn new(base: &Path) -> Result<Self> {
        let dir = base.join(format!(
            "ingest-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        Ok(Self { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Remove `ingest-<pid>-*` folders whose process is gone.
pub fn remove_orphans(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("ingest-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) == 0 }
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            tracing::info!(dir = %e.path().display(), "removing the scratch folder of a killed ingest");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

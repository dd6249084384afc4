//! Locks a process takes on a data dir.

use crate::error::{Error, Result};
use crate::layout::Layout;

/// Held while a process compacts the data dir's tables: delta-rs 1.1's conflict check skips
/// `dataChange: false` removes, so two compactions of the same files at once both land and
/// every row of those files is then in the table twice (reproduced with `maintain` beside
/// `run --follow`). One compactor at a time per data dir, by an advisory lock on
/// `DATA_DIR/_pipeline/compaction.lock` (released with the process). On an object store the
/// lock file is in the local scratch space, so it holds per machine only: run compactions
/// (`maintain`, `run --follow`) from one machine.
pub struct CompactionLock {
    _file: std::fs::File,
}

impl CompactionLock {
    /// Take the lock; `wait: false` returns `None` at once when another process holds it.
    /// `None` too when the data dir does not exist (nothing to compact; nothing created).
    pub fn take(layout: &Layout, wait: bool) -> Result<Option<Self>> {
        if layout.local_root().is_some_and(|root| !root.is_dir()) {
            return Ok(None);
        }
        let dir = layout.lock_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join("compaction.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        use std::os::fd::AsRawFd;
        let op = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on a file descriptor we own; released when the file is closed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(Some(CompactionLock { _file: file }));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        Err(Error::io(format!("cannot lock {}", path.display()), e))
    }
}

//! Which rows are duplicates: a `transaction_id` is unique across the whole table, whatever
//! its timestamp. The first valid copy in run order (file, then row) is kept, unless the id is
//! already in the table; every other valid copy is a duplicate.
//!
//! 1. **Collect** (in parallel over the inputs): check the rules and keep `(id, ordinal)` of
//!    each valid row, split by id range into buckets (in memory when the run is small,
//!    otherwise spilled to scratch, 24 bytes a row).
//! 2. **Decide** (bucket by bucket, in id order): sort the bucket's entries, read the id
//!    index's ids of the same range, and merge. The result is the sorted set of duplicate
//!    ordinals, and the run's accepted ids in id order, written as one sorted index file.
//!
//! The number of buckets follows the run's rows plus the index's ids, so one bucket holds
//! about [`DEFAULT_BUCKET_IDS`] ids: memory is the same for a table of ten million ids or a
//! billion, and the index is read once per run, one range at a time.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use deltalake::DeltaTable;
use deltalake::kernel::Add;
use futures::StreamExt;

use super::idindex::{IdIndex, IdWriter};
use super::plan::{Input, Ord, Plan, Rows, read_input};
use crate::error::{Error, Result};
use crate::rules::{self, Limits};

/// Ids per bucket. Entries are 24 bytes and sorting them needs the bucket in memory; index
/// ids of the bucket's range are 16 bytes: about 16 MiB a bucket at this size.
pub const DEFAULT_BUCKET_IDS: u64 = 400_000;
/// At most this many buckets (files per collecting worker), whatever the run's size.
const MAX_BUCKETS: u64 = 512;

/// A valid row: its id and its ordinal.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    id: u128,
    ord: Ord,
}

const ENTRY_BYTES: usize = 24;

impl Entry {
    fn to_bytes(self) -> [u8; ENTRY_BYTES] {
        let mut b = [0u8; ENTRY_BYTES];
        b[..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..].copy_from_slice(&self.ord.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Self {
        Entry {
            id: u128::from_le_bytes(b[..16].try_into().expect("16 bytes")),
            ord: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        }
    }
}

/// The split of the id space into `n` contiguous ranges.
#[derive(Clone, Copy)]
struct Buckets {
    n: u64,
}

impl Buckets {
    fn of(&self, id: u128) -> usize {
        (((id >> 64) * u128::from(self.n)) >> 64) as usize
    }

    /// The ids of bucket `b`: `[lo, hi]`.
    fn range(&self, b: usize) -> (u128, u128) {
        let start = |b: u64| -> u128 {
            if b >= self.n {
                return 1u128 << 64;
            }
            (u128::from(b) << 64).div_ceil(u128::from(self.n))
        };
        let lo = start(b as u64) << 64;
        let hi_exclusive = start(b as u64 + 1);
        let hi = if hi_exclusive >= 1u128 << 64 {
            u128::MAX
        } else {
            (hi_exclusive << 64) - 1
        };
        (lo, hi)
    }
}

/// The outcome: which ordinals are duplicates, and the run's index file.
pub struct Verdicts {
    /// Duplicate ordinals, sorted.
    pub dups: Arc<Vec<Ord>>,
    /// Ids accepted (they will be in the table after this run).
    pub accepted: u64,
    /// Ids the index held when this run started.
    pub index_ids: u64,
    /// The index file of the accepted ids (None when none).
    pub index_add: Option<Add>,
}

/// What the collecting and deciding need from the run.
pub struct Ctx<'a> {
    /// The run's files (same index as the plan's).
    pub paths: &'a [PathBuf],
    /// The plan.
    pub plan: &'a Plan,
    /// The rules' bounds.
    pub limits: Limits,
    /// Worker threads.
    pub workers: usize,
    /// Ids per bucket.
    pub bucket_ids: u64,
    /// This run's scratch folder.
    pub scratch: &'a Path,
}

/// Decide every valid row's fate, and write the run's sorted index file.
pub async fn decide(ctx: &Ctx<'_>, ids_table: &DeltaTable) -> Result<Verdicts> {
    let index = IdIndex::open(ids_table).await?;
    let index_ids = index.len();
    let total = ctx.plan.rows + index_ids;
    let buckets = Buckets {
        n: total.div_ceil(ctx.bucket_ids.max(1)).clamp(1, MAX_BUCKETS),
    };
    let spill = ctx.plan.rows > ctx.bucket_ids;
    let collected = tokio::task::block_in_place(|| {
        let inputs: Vec<&Input> = ctx.plan.days.values().flatten().collect();
        collect(ctx, &inputs, buckets, spill)
    })?;
    let (collected, index) = (Arc::new(collected), Arc::new(index));
    let mut writer = IdWriter::new(ids_table)?;
    let mut dups = Vec::new();
    let mut accepted = 0u64;
    // Buckets run in parallel (loading and sorting on blocking threads, the index read on
    // the runtime) and come out in id order, the order the index file is written in.
    let mut work = futures::stream::iter(0..buckets.n as usize)
        .map(|b| {
            let (collected, index) = (collected.clone(), index.clone());
            async move {
                let (lo, hi) = buckets.range(b);
                let entries =
                    tokio::task::spawn_blocking(move || collected.bucket(b, lo, hi)).await??;
                if entries.is_empty() {
                    return Ok((Vec::new(), Vec::new()));
                }
                let known = index.ids_in(lo, hi).await?;
                Ok::<_, Error>(tokio::task::spawn_blocking(move || merge(&entries, &known)).await?)
            }
        })
        .buffered(ctx.workers.max(1));
    while let Some(r) = work.next().await {
        let (ids, d) = r?;
        accepted += ids.len() as u64;
        writer.push(&ids).await?;
        dups.extend(d);
    }
    drop(work);
    collected.remove();
    dups.sort_unstable();
    let index_add = writer.finish(ids_table).await?;
    Ok(Verdicts {
        dups: Arc::new(dups),
        accepted,
        index_ids,
        index_add,
    })
}

/// Entries sorted by (id, ordinal) against sorted known ids: the accepted ids, and the
/// ordinals of duplicates.
fn merge(entries: &[Entry], known: &[u128]) -> (Vec<u128>, Vec<Ord>) {
    let mut accepted = Vec::with_capacity(entries.len());
    let mut dups = Vec::new();
    let mut k = 0;
    let mut i = 0;
    while i < entries.len() {
        let id = entries[i].id;
        let mut j = i + 1;
        while j < entries.len() && entries[j].id == id {
            j += 1;
        }
        while k < known.len() && known[k] < id {
            k += 1;
        }
        if k < known.len() && known[k] == id {
            dups.extend(entries[i..j].iter().map(|e| e.ord));
        } else {
            accepted.push(id);
            dups.extend(entries[i + 1..j].iter().map(|e| e.ord));
        }
        i = j;
    }
    (accepted, dups)
}

/// The valid rows' entries, in memory or spilled per bucket.
enum Collected {
    Memory(Vec<Entry>),
    Spilled { dir: PathBuf, workers: usize },
}

impl Collected {
    /// Bucket `b`'s entries, sorted.
    fn bucket(&self, b: usize, lo: u128, hi: u128) -> Result<Vec<Entry>> {
        match self {
            Collected::Memory(all) => {
                let start = all.partition_point(|e| e.id < lo);
                let end = all.partition_point(|e| e.id <= hi);
                Ok(all[start..end].to_vec())
            }
            Collected::Spilled { dir, workers } => {
                let mut out = Vec::new();
                for w in 0..*workers {
                    let path = spill_path(dir, w, b);
                    let f = match File::open(&path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            return Err(Error::io(format!("cannot open {}", path.display()), e));
                        }
                    };
                    let mut bytes = Vec::new();
                    BufReader::new(f)
                        .read_to_end(&mut bytes)
                        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
                    out.extend(bytes.chunks_exact(ENTRY_BYTES).map(Entry::from_bytes));
                    let _ = std::fs::remove_file(&path);
                }
                out.sort_unstable();
                Ok(out)
            }
        }
    }

    fn remove(&self) {
        if let Collected::Spilled { dir, .. } = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn spill_path(dir: &Path, worker: usize, bucket: usize) -> PathBuf {
    dir.join(format!("w{worker:02}-b{bucket:04}.entries"))
}

/// Read every input on `ctx.workers` threads, check the rules, and collect valid rows.
fn collect(ctx: &Ctx<'_>, inputs: &[&Input], buckets: Buckets, spill: bool) -> Result<Collected> {
    let dir = ctx.scratch.join("verdicts");
    if spill {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let next = AtomicUsize::new(0);
    let workers = ctx.workers.min(inputs.len()).max(1);
    let results: Vec<Result<Vec<Entry>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (next, dir) = (&next, &dir);
                s.spawn(move || -> Result<Vec<Entry>> {
                    let mut sink = Sink::new(spill.then_some((dir.as_path(), w)), buckets);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(input) = inputs.get(i) else {
                            break;
                        };
                        for rows in read_input(ctx.paths, &ctx.plan.footers, input)? {
                            sink.add(&rows?, ctx.limits)?;
                        }
                    }
                    sink.finish()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("collecting thread panicked"))
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    if spill {
        Ok(Collected::Spilled { dir, workers })
    } else {
        all.sort_unstable();
        Ok(Collected::Memory(all))
    }
}

/// Where one worker puts its entries: a vector, or a buffered file per bucket.
struct Sink<'a> {
    memory: Vec<Entry>,
    files: Vec<Option<BufWriter<File>>>,
    spill: Option<(&'a Path, usize)>,
    buckets: Buckets,
}

impl<'a> Sink<'a> {
    fn new(spill: Option<(&'a Path, usize)>, buckets: Buckets) -> Self {
        Sink {
            memory: Vec::new(),
            files: (0..if spill.is_some() { buckets.n } else { 0 })
                .map(|_| None)
                .collect(),
            spill,
            buckets,
        }
    }

    fn add(&mut self, rows: &Rows, limits: Limits) -> Result<()> {
        let checked = rules::check(&rows.batch, limits);
        for (i, reason) in checked.reasons.iter().enumerate() {
            if reason.is_some() {
                continue;
            }
            let e = Entry {
                id: checked.ids[i],
                ord: rows.ord(i),
            };
            match self.spill {
                None => self.memory.push(e),
                Some((dir, w)) => {
                    let b = self.buckets.of(e.id);
                    let f = match &mut self.files[b] {
                        Some(f) => f,
                        slot => {
                            let path = spill_path(dir, w, b);
                            let f = File::create(&path).map_err(|err| {
                                Error::io(format!("cannot create {}", path.display()), err)
                            })?;
                            slot.insert(BufWriter::with_capacity(16 * 1024, f))
                        }
                    };
                    f.write_all(&e.to_bytes())
                        .map_err(|err| Error::io("cannot write a scratch file", err))?;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<Entry>> {
        for mut f in self.files.into_iter().flatten() {
            f.flush()
                .map_err(|e| Error::io("cannot write a scratch file", e))?;
        }
        Ok(self.memory)
    }
}

/// Walks the sorted duplicate ordinals along rows whose ordinals increase.
pub struct DupCursor<'a> {
    dups: &'a [Ord],
    at: usize,
}

impl<'a> DupCursor<'a> {
    /// A cursor over `dups`, starting at the first ordinal of an input.
    pub fn new(dups: &'a [Ord], first: Ord) -> Self {
        DupCursor {
            dups,
            at: dups.partition_point(|d| *d < first),
        }
    }

    /// Whether `ord` (not smaller than any asked before) is a duplicate.
    pub fn is_dup(&mut self, ord: Ord) -> bool {
        while self.at < self.dups.len() && self.dups[self.at] < ord {
            self.at += 1;
        }
        self.dups.get(self.at) == Some(&ord)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u128, ord: u64) -> Entry {
        Entry { id, ord }
    }

    #[test]
    fn the_first_copy_wins_unless_the_id_is_known() {
        let mut entries = vec![e(5, 9), e(3, 2), e(5, 4), e(7, 1), e(9, 3)];
        entries.sort_unstable();
        let (accepted, mut dups) = merge(&entries, &[7, 8]);
        dups.sort_unstable();
        assert_eq!(accepted, vec![3, 5, 9]);
        // 5's later copy (ordinal 9) and 7 (in the index) are duplicates.
        assert_eq!(dups, vec![1, 9]);
    }

    #[test]
    fn buckets_cover_the_id_space_in_order_without_gaps() {
        for n in [1u64, 2, 3, 7, 512] {
            let b = Buckets { n };
            let mut next = 0u128;
            for i in 0..n as usize {
                let (lo, hi) = b.range(i);
                assert_eq!(lo, next, "n={n} bucket {i}");
                assert!(hi >= lo);
                assert_eq!(b.of(lo), i);
                assert_eq!(b.of(hi), i);
                next = hi.wrapping_add(1);
            }
            assert_eq!(next, 0, "the last bucket ends at u128::MAX");
        }
    }

    #[test]
    fn entries_round_trip_through_scratch_bytes() {
        let x = e(u128::MAX - 7, 1 << 40);
        assert!(Entry::from_bytes(&x.to_bytes()) == x);
    }

    #[test]
    fn the_cursor_finds_duplicates_along_increasing_ordinals() {
        let dups = [3, 8, 9, 20];
        let mut c = DupCursor::new(&dups, 5);
        assert!(!c.is_dup(5));
        assert!(c.is_dup(8));
        assert!(c.is_dup(9));
        assert!(!c.is_dup(10));
        assert!(c.is_dup(20));
        assert!(!c.is_dup(21));
    }
}

//! Which rows are duplicates: a `transaction_id` is unique across the whole table, whatever
//! its timestamp. The first valid copy in run order (file, then row) is kept, unless the id is
//! already in the table; every other valid copy is a duplicate.
//!
//! 1. **Collect** (in parallel over the inputs): check the rules and keep `(id, ordinal)` of
//!    each valid row, split by id range into buckets (in memory when the run is small,
//!    otherwise spilled to scratch, 24 bytes a row).
//! 2. **Decide** (bucket by bucket, in id order): sort the bucket's entries, ask the id
//!    index which of their ids it holds (through its Bloom filters and page index: the
//!    filters of the row groups they fall into and the pages that may hold them, not the
//!    index's ids), and merge. The result is the sorted set of duplicate ordinals, and the
//!    run's accepted ids in id order, written as one sorted index file.
//!
//! The number of buckets follows the run's rows, so one bucket holds about
//! [`DEFAULT_BUCKET_IDS`] of them: memory is the same for a table of ten million ids or a
//! billion, and what a run reads of the index grows with the run's ids (a filter probe per
//! file, a page per possible match) plus the filters, about 2 bytes an id of the index.

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
use crate::rules::{self, Limits, Reason};

/// Rows per bucket. Entries are 24 bytes and sorting them needs the bucket in memory: about
/// 10 MiB a bucket at this size.
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

/// The outcome: every row's fate (by ordinal), and the run's index file.
pub struct Verdicts {
    /// Duplicate ordinals, sorted.
    pub dups: Arc<Vec<Ord>>,
    /// Rows that broke a rule, by ordinal, sorted (writing looks them up instead of checking
    /// the rules again).
    pub rejects: Arc<Vec<(Ord, Reason)>>,
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
    // A bucket holds the run's entries of its id range, and of the index only the ids
    // they share with it: the run's rows set the number, and at least two a worker so the
    // index lookups of a small run still use every worker.
    let buckets = Buckets {
        n: (ctx.plan.rows.div_ceil(ctx.bucket_ids.max(1)))
            .max(2 * ctx.workers as u64)
            .clamp(1, MAX_BUCKETS),
    };
    let spill = ctx.plan.rows > ctx.bucket_ids;
    let t = std::time::Instant::now();
    let (collected, mut rejects) = tokio::task::block_in_place(|| {
        let inputs: Vec<&Input> = ctx.plan.days.values().flatten().collect();
        collect(ctx, &inputs, buckets, spill)
    })?;
    rejects.sort_unstable_by_key(|(ord, _)| *ord);
    tracing::debug!(
        seconds = t.elapsed().as_secs_f64(),
        spill,
        buckets = buckets.n,
        "dedup: valid rows collected"
    );
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
                let mut ids: Vec<u128> = entries.iter().map(|e| e.id).collect();
                ids.dedup();
                let known = index.matches_in(lo, hi, Arc::new(ids)).await?;
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
        rejects: Arc::new(rejects),
        accepted,
        index_ids,
        index_add,
    })
}

/// Entries sorted by id against sorted known ids: the accepted ids, and the ordinals of
/// duplicates (of equal ids, the smallest ordinal is the first copy).
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
            let first = entries[i..j].iter().map(|e| e.ord).min().expect("a group");
            dups.extend(entries[i..j].iter().map(|e| e.ord).filter(|o| *o != first));
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
                sort_bucket(&mut out, lo, hi);
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

/// Sort entries by id (of equal ids, merging picks the smallest ordinal). Ids are spread
/// evenly over `[lo, hi]` (UUIDs are random): one pass deals them into 256 runs by range,
/// then each run, small enough for the cache, is sorted on its own. Measured at 30M rows:
/// half the time of one sort over the whole bucket, which missed the cache on every step.
fn sort_bucket(entries: &mut Vec<Entry>, lo: u128, hi: u128) {
    const RUNS: usize = 256;
    if entries.len() < 4 * RUNS {
        entries.sort_unstable_by_key(|e| e.id);
        return;
    }
    // The run is the top 8 bits of the offset in the range (a shift, not a division).
    let shift = (128 - (hi - lo).leading_zeros()).saturating_sub(8);
    let run = |e: &Entry| (((e.id - lo) >> shift) as usize).min(RUNS - 1);
    let mut counts = [0usize; RUNS + 1];
    for e in entries.iter() {
        counts[run(e) + 1] += 1;
    }
    for i in 0..RUNS {
        counts[i + 1] += counts[i];
    }
    let mut next = counts;
    let mut dealt = vec![Entry { id: 0, ord: 0 }; entries.len()];
    for e in entries.iter() {
        let r = run(e);
        dealt[next[r]] = *e;
        next[r] += 1;
    }
    for r in 0..RUNS {
        dealt[counts[r]..counts[r + 1]].sort_unstable_by_key(|e| e.id);
    }
    *entries = dealt;
}

fn spill_path(dir: &Path, worker: usize, bucket: usize) -> PathBuf {
    dir.join(format!("w{worker:02}-b{bucket:04}.entries"))
}

/// The valid rows' entries, and the rows that broke a rule.
type CollectedRows = (Collected, Vec<(Ord, Reason)>);

/// One worker's valid entries (when kept in memory) and rejected rows.
type WorkerRows = (Vec<Entry>, Vec<(Ord, Reason)>);

/// Read every input on `ctx.workers` threads, check the rules, and collect valid rows.
fn collect(
    ctx: &Ctx<'_>,
    inputs: &[&Input],
    buckets: Buckets,
    spill: bool,
) -> Result<CollectedRows> {
    let dir = ctx.scratch.join("verdicts");
    if spill {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let next = AtomicUsize::new(0);
    let workers = ctx.workers.min(inputs.len()).max(1);
    let results: Vec<Result<WorkerRows>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (next, dir) = (&next, &dir);
                s.spawn(move || -> Result<WorkerRows> {
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
    let (mut all, mut rejects) = (Vec::new(), Vec::new());
    for r in results {
        let (entries, rejected) = r?;
        all.extend(entries);
        rejects.extend(rejected);
    }
    if spill {
        Ok((Collected::Spilled { dir, workers }, rejects))
    } else {
        sort_bucket(&mut all, 0, u128::MAX);
        Ok((Collected::Memory(all), rejects))
    }
}

/// Where one worker puts its entries: a vector, or a file per bucket (entries gathered per
/// bucket and written a chunk at a time).
struct Sink<'a> {
    memory: Vec<Entry>,
    rejects: Vec<(Ord, Reason)>,
    pending: Vec<Vec<Entry>>,
    files: Vec<Option<BufWriter<File>>>,
    spill: Option<(&'a Path, usize)>,
    buckets: Buckets,
}

/// Entries gathered per bucket before a write.
const CHUNK: usize = 4096;

impl<'a> Sink<'a> {
    fn new(spill: Option<(&'a Path, usize)>, buckets: Buckets) -> Self {
        let n = if spill.is_some() { buckets.n } else { 0 };
        Sink {
            memory: Vec::new(),
            rejects: Vec::new(),
            pending: (0..n).map(|_| Vec::new()).collect(),
            files: (0..n).map(|_| None).collect(),
            spill,
            buckets,
        }
    }

    fn add(&mut self, rows: &Rows, limits: Limits) -> Result<()> {
        let checked = rules::check(&rows.batch, limits);
        for (i, reason) in checked.reasons.iter().enumerate() {
            if let Some(r) = reason {
                self.rejects.push((rows.ord(i), *r));
                continue;
            }
            let e = Entry {
                id: checked.ids[i],
                ord: rows.ord(i),
            };
            if self.spill.is_none() {
                self.memory.push(e);
                continue;
            }
            let b = self.buckets.of(e.id);
            self.pending[b].push(e);
            if self.pending[b].len() == CHUNK {
                self.write(b)?;
            }
        }
        Ok(())
    }

    /// Write bucket `b`'s gathered entries to its file.
    fn write(&mut self, b: usize) -> Result<()> {
        let Some((dir, w)) = self.spill else {
            return Ok(());
        };
        let f = match &mut self.files[b] {
            Some(f) => f,
            slot => {
                let path = spill_path(dir, w, b);
                let f = File::create(&path)
                    .map_err(|err| Error::io(format!("cannot create {}", path.display()), err))?;
                slot.insert(BufWriter::with_capacity(64 * 1024, f))
            }
        };
        let mut bytes = Vec::with_capacity(self.pending[b].len() * ENTRY_BYTES);
        for e in self.pending[b].drain(..) {
            bytes.extend_from_slice(&e.to_bytes());
        }
        f.write_all(&bytes)
            .map_err(|err| Error::io("cannot write a scratch file", err))
    }

    fn finish(mut self) -> Result<WorkerRows> {
        for b in 0..self.pending.len() {
            if !self.pending[b].is_empty() {
                self.write(b)?;
            }
        }
        for mut f in self.files.into_iter().flatten() {
            f.flush()
                .map_err(|e| Error::io("cannot write a scratch file", e))?;
        }
        Ok((self.memory, self.rejects))
    }
}

/// Walks a sorted list of ordinals (duplicates, rejects) along rows whose ordinals increase.
pub struct Cursor<'a, T> {
    items: &'a [T],
    key: fn(&T) -> Ord,
    at: usize,
}

impl<'a, T> Cursor<'a, T> {
    /// A cursor over `items` (sorted by `key`), starting at the first ordinal of an input.
    pub fn new(items: &'a [T], key: fn(&T) -> Ord, first: Ord) -> Self {
        Cursor {
            items,
            key,
            at: items.partition_point(|d| key(d) < first),
        }
    }

    /// The item of `ord` (not smaller than any asked before), if any.
    pub fn find(&mut self, ord: Ord) -> Option<&'a T> {
        while self.at < self.items.len() && (self.key)(&self.items[self.at]) < ord {
            self.at += 1;
        }
        self.items.get(self.at).filter(|i| (self.key)(i) == ord)
    }

    /// Whether any item lies in `[from, to]`, without moving.
    pub fn any_in(&self, from: Ord, to: Ord) -> bool {
        let rest = &self.items[self.at..];
        let i = rest.partition_point(|d| (self.key)(d) < from);
        rest.get(i).is_some_and(|d| (self.key)(d) <= to)
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
        entries.sort_unstable_by_key(|e| e.id);
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
    fn bucket_sorting_equals_a_plain_sort() {
        let mut x = 0x9E37_79B9_7F4A_7C15u128;
        let mut entries: Vec<Entry> = (0..10_000u64)
            .map(|i| {
                x = x
                    .wrapping_mul(0x2545_F491_4F6C_DD1D_0000_0001)
                    .wrapping_add(i as u128);
                e(x, i)
            })
            .collect();
        entries.push(entries[17]);
        let mut want = entries.clone();
        want.sort_unstable_by_key(|e| e.id);
        sort_bucket(&mut entries, 0, u128::MAX);
        let ids = |v: &[Entry]| v.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(&entries), ids(&want));
    }

    #[test]
    fn entries_round_trip_through_scratch_bytes() {
        let x = e(u128::MAX - 7, 1 << 40);
        assert!(Entry::from_bytes(&x.to_bytes()) == x);
    }

    #[test]
    fn the_cursor_finds_ordinals_along_increasing_rows() {
        let dups = [3u64, 8, 9, 20];
        let mut c = Cursor::new(&dups, |d| *d, 5);
        assert!(c.find(5).is_none());
        assert!(c.any_in(6, 8));
        assert!(!c.any_in(10, 19));
        assert!(c.find(8).is_some());
        assert!(c.find(9).is_some());
        assert!(c.find(10).is_none());
        assert!(c.find(20).is_some());
        assert!(c.find(21).is_none());
    }
}

//! The id index (`transaction_ids`): every `transaction_id` of `customer_transactions`, as
//! two order-preserving 64-bit halves, in sorted runs. Each ingest run adds one sorted file (its accepted
//! ids); compaction merges files of similar size, so a table holds a few files per size
//! tier.
//!
//! Dedup asks which of a run's ids the index holds ([`IdIndex::matches_in`]). Ids are
//! random, so a run's ids fall into every row group of every file: reading the ranges they
//! fall into would read the whole index (16 bytes an id) in every run, and a stream's
//! micro-batch grew with the table (0.10 s to 1.75 s in 10 minutes at 50,000 rows/s). So each
//! row group carries a standard Parquet Bloom filter of its high halves (split-block, xxHash64,
//! false-positive rate [`BLOOM_FPP`], about 2 bytes an id), and a page index with pages of
//! [`PAGE_IDS`] ids: a lookup reads the filters of the row groups its ids fall into, and only
//! the pages that the filter says may hold one of them. A false positive costs one page read,
//! never a wrong answer: the ids of the pages read are compared exactly. Files written before
//! the filters (no Bloom filter or page index) are read by row group as before until
//! compaction rewrites them.

use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::ObjectStore;
use deltalake::arrow::array::{AsArray, Int64Array, RecordBatch};
use deltalake::arrow::datatypes::Int64Type;
use deltalake::kernel::{Action, Add, Remove};
use deltalake::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection,
};
#[allow(deprecated)]
// deprecated upstream in favour of hand-written readers; delta-rs itself still uses it
use deltalake::parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStreamBuilder,
};
use deltalake::parquet::arrow::async_writer::AsyncArrowWriter;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::metadata::PageIndexPolicy;
use deltalake::parquet::file::page_index::column_index::ColumnIndexMetaData;
use deltalake::parquet::file::properties::{
    BloomFilterProperties, EnabledStatistics, WriterProperties,
};
use deltalake::parquet::file::statistics::Statistics;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::DeltaOperation;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;

use crate::delta::keys;
use crate::delta::{self, Commit};
use crate::error::{Error, Result};
use crate::schema::TRANSACTION_IDS;
use crate::tables::Table;

/// Ids per row group of an index file (1 MiB of ids): the unit a Bloom filter covers.
const ROW_GROUP_IDS: usize = 64 * 1024;
/// Ids per data page (32 KiB of ids): what a lookup reads for a possible match.
pub const PAGE_IDS: usize = 2048;
/// The Bloom filters' false-positive rate: of a run's ids that are not in the index, this
/// fraction costs a page read per file (parquet sizes, then folds, each filter for it).
pub const BLOOM_FPP: f64 = 0.001;
/// The filters of one column of a row group: sized for its ids at [`BLOOM_FPP`].
fn bloom() -> BloomFilterProperties {
    BloomFilterProperties::builder()
        .with_fpp(BLOOM_FPP)
        .with_max_ndv(ROW_GROUP_IDS as u64)
        .build()
}
/// Index files looked up at once by a lookup.
const FILES_AT_ONCE: usize = 2;
/// Ids per decoded batch when reading.
const READ_BATCH: usize = 8 * 1024;

const SIGN: u64 = 1 << 63;

/// A UUID as the two halves the index stores (signed order is the id's order).
pub fn to_halves(id: u128) -> (i64, i64) {
    (
        (((id >> 64) as u64) ^ SIGN) as i64,
        ((id as u64) ^ SIGN) as i64,
    )
}

fn from_halves(hi: i64, lo: i64) -> u128 {
    (u128::from((hi as u64) ^ SIGN) << 64) | u128::from((lo as u64) ^ SIGN)
}

/// The ids of a batch of the index.
fn ids_of(batch: &RecordBatch, file: &deltalake::Path) -> Result<Vec<u128>> {
    let col = |i: usize| {
        batch
            .columns()
            .get(i)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| Error::DamagedLog {
                table: Table::TransactionIds.name().into(),
                what: format!("{file} does not hold two Int64 id columns"),
            })
    };
    let (hi, lo) = (col(0)?, col(1)?);
    Ok(hi
        .values()
        .iter()
        .zip(lo.values().iter())
        .map(|(h, l)| from_halves(*h, *l))
        .collect())
}

/// One index file: its footer and each row group's id range.
struct IndexFile {
    path: deltalake::Path,
    /// Its path on the local file system (a local table): filters are read with `pread`
    /// into one buffer, not through the object store.
    local: Option<std::path::PathBuf>,
    ids: u64,
    size: u64,
    meta: ArrowReaderMetadata,
    ranges: Vec<(u128, u128)>,
}

/// The index as of one snapshot of `transaction_ids`, footers loaded once.
pub struct IdIndex {
    store: Arc<dyn ObjectStore>,
    files: Vec<Arc<IndexFile>>,
}

impl IdIndex {
    /// Load the footers of every index file.
    pub async fn open(t: &DeltaTable) -> Result<Self> {
        let files = delta::files(t, Table::TransactionIds, None)?
            .into_iter()
            .map(|f| (f.path, f.size))
            .collect();
        let index = Self::of_files(t, files).await?;
        footers::keep_only(t.log_store().root_url(), &index.files);
        Ok(index)
    }

    /// The index made of just these files of `t` (committed or not).
    pub async fn of_adds(t: &DeltaTable, adds: &[Add]) -> Result<Self> {
        let files = adds
            .iter()
            .map(|a| (deltalake::Path::from(a.path.as_str()), a.size.max(0) as u64))
            .collect();
        Self::of_files(t, files).await
    }

    async fn of_files(t: &DeltaTable, list: Vec<(deltalake::Path, u64)>) -> Result<Self> {
        let store = t.object_store();
        let root_url = t.log_store().root_url().clone();
        let root = root_url.to_file_path().ok();
        let mut files = Vec::new();
        for (path, size) in list {
            if let Some(f) = footers::get(&root_url, &path, size) {
                files.push(f);
                continue;
            }
            #[allow(deprecated)]
            let mut reader = ParquetObjectReader::new(store.clone(), path.clone());
            // The page index, where the file has one (files written before it do not).
            let options =
                ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
            let meta = ArrowReaderMetadata::load_async(&mut reader, options).await?;
            let ranges = meta
                .metadata()
                .row_groups()
                .iter()
                .map(|rg| match rg.column(0).statistics() {
                    // The high halves bound the ids: [min_hi, 0...], [max_hi, f...].
                    Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                        (Some(lo), Some(hi)) => {
                            (from_halves(*lo, i64::MIN), from_halves(*hi, i64::MAX))
                        }
                        _ => (0, u128::MAX),
                    },
                    _ => (0, u128::MAX),
                })
                .collect();
            let f = Arc::new(IndexFile {
                local: root.as_ref().map(|r| r.join(path.as_ref())),
                path,
                ids: meta.metadata().file_metadata().num_rows().max(0) as u64,
                size,
                meta,
                ranges,
            });
            footers::put(&root_url, f.clone());
            files.push(f);
        }
        Ok(IdIndex { store, files })
    }

    /// Whether this index and `other` have an id in common. Reads both one id range at a
    /// time (a 64th of the id space), so memory stays at a range's ids.
    pub async fn shares_any_with(&self, other: &IdIndex) -> Result<bool> {
        if self.len() == 0 || other.len() == 0 {
            return Ok(false);
        }
        const PARTS: u128 = 64;
        let step = u128::MAX / PARTS;
        for i in 0..PARTS {
            let lo = i * step;
            let hi = if i == PARTS - 1 {
                u128::MAX
            } else {
                lo + step - 1
            };
            let (a, b) = (self.ids_in(lo, hi).await?, other.ids_in(lo, hi).await?);
            let (mut x, mut y) = (0, 0);
            while x < a.len() && y < b.len() {
                match a[x].cmp(&b[y]) {
                    std::cmp::Ordering::Less => x += 1,
                    std::cmp::Ordering::Greater => y += 1,
                    std::cmp::Ordering::Equal => return Ok(true),
                }
            }
        }
        Ok(false)
    }

    /// Ids in the index.
    pub fn len(&self) -> u64 {
        self.files.iter().map(|f| f.ids).sum()
    }

    /// The ids of `wanted` (sorted, all within `[lo, hi]`) that the index holds, sorted.
    /// [`FILES_AT_ONCE`] files are looked up at once (a micro-batch has one id range, so this
    /// is what spreads its lookup over the cores).
    pub async fn matches_in(
        &self,
        lo: u128,
        hi: u128,
        wanted: Arc<Vec<u128>>,
    ) -> Result<Vec<u128>> {
        let found: Vec<Vec<u128>> = futures::stream::iter(
            self.files
                .iter()
                .map(|f| self.matches_in_file(f, lo, hi, wanted.clone())),
        )
        .buffer_unordered(FILES_AT_ONCE)
        .try_collect()
        .await?;
        let mut out: Vec<u128> = found.into_iter().flatten().collect();
        out.sort_unstable();
        Ok(out)
    }

    /// [`Self::matches_in`] of one file: the row groups whose id range holds some of `wanted`;
    /// of those, the ids their Bloom filter may hold (a local file's filters read by `pread`
    /// into one buffer and probed there, on a blocking thread; a remote file's in one ranged
    /// read); of those, the pages whose id range holds one (page index); those pages are read
    /// and compared exactly. A row group without a filter or page index is read whole.
    async fn matches_in_file(
        &self,
        f: &Arc<IndexFile>,
        lo: u128,
        hi: u128,
        wanted: Arc<Vec<u128>>,
    ) -> Result<Vec<u128>> {
        let mut out = Vec::new();
        let groups: Vec<(usize, std::ops::Range<usize>)> = f
            .ranges
            .iter()
            .enumerate()
            .filter(|(_, (a, b))| *a <= hi && *b >= lo)
            .map(|(g, (a, b))| {
                let from = wanted.partition_point(|id| id < a);
                (g, from..wanted.partition_point(|id| id <= b))
            })
            .filter(|(_, ids)| !ids.is_empty())
            .collect();
        if groups.is_empty() {
            return Ok(out);
        }
        let selected = match &f.local {
            Some(_) => {
                let (f, wanted) = (f.clone(), wanted.clone());
                tokio::task::spawn_blocking(move || probe_local(&f, &groups, &wanted)).await??
            }
            None => self.probe_remote(f, &groups, &wanted).await?,
        };
        if !selected.is_empty() {
            self.read_selected(f, &selected, &wanted, &mut out).await?;
        }
        Ok(out)
    }

    /// [`probe_local`], for a file read through the object store: its groups' filters of
    /// one column in one ranged read.
    async fn probe_remote(
        &self,
        f: &IndexFile,
        groups: &[(usize, std::ops::Range<usize>)],
        wanted: &[u128],
    ) -> Result<Selected> {
        let read = |column: usize, groups: Vec<usize>| async move {
            let ranges: Vec<_> = groups
                .iter()
                .filter_map(|g| filter_at(f, *g, column))
                .collect();
            if ranges.is_empty() {
                return Ok(Vec::new());
            }
            self.store.get_ranges(&f.path, &ranges).await.map_err(|e| {
                Error::io(
                    format!("cannot read the Bloom filters of the index file {}", f.path),
                    std::io::Error::other(e),
                )
            })
        };
        let mut highs = read(0, groups.iter().map(|(g, _)| *g).collect())
            .await?
            .into_iter();
        let mut maybe: Vec<(usize, Vec<u128>)> = Vec::new();
        for (g, ids) in groups {
            let filter = filter_at(f, *g, 0).map(|_| highs.next().expect("one read per filter"));
            let ids = may_hold(&wanted[ids.clone()], 0, filter.as_deref());
            if !ids.is_empty() {
                maybe.push((*g, ids));
            }
        }
        let pays = |(g, ids): &(usize, Vec<u128>)| second_filter_pays(f, *g, ids.len()).is_some();
        let mut lows = read(
            1,
            maybe.iter().filter(|m| pays(m)).map(|(g, _)| *g).collect(),
        )
        .await?
        .into_iter();
        let mut selected = Vec::new();
        for m in maybe {
            let filter = pays(&m).then(|| lows.next().expect("one read per filter"));
            let (g, ids) = m;
            let ids = match filter {
                Some(filter) => may_hold(&ids, 1, Some(&filter)),
                None => ids,
            };
            if !ids.is_empty() {
                selected.push((g, rows_of_pages(f.meta.metadata(), g, &ids)));
            }
        }
        Ok(selected)
    }

    /// Read the `selected` rows of `f` and add to `out` the ids among `wanted`.
    async fn read_selected(
        &self,
        f: &IndexFile,
        selected: &Selected,
        wanted: &[u128],
        out: &mut Vec<u128>,
    ) -> Result<()> {
        let meta = f.meta.metadata();
        let mut ranges = Vec::new();
        let mut offset = 0;
        for (g, rows) in selected {
            ranges.extend(rows.iter().map(|r| r.start + offset..r.end + offset));
            offset += meta.row_group(*g).num_rows() as usize;
        }
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(self.store.clone(), f.path.clone());
        let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, f.meta.clone())
            .with_row_groups(selected.iter().map(|(g, _)| *g).collect())
            .with_row_selection(RowSelection::from_consecutive_ranges(
                ranges.into_iter(),
                offset,
            ))
            .with_batch_size(READ_BATCH)
            .build()?;
        // Both sides are sorted (a file's rows, in order): a merge, not a search per id.
        let mut w = 0;
        while let Some(batch) = stream.next().await {
            for id in ids_of(&batch?, &f.path)? {
                while w < wanted.len() && wanted[w] < id {
                    w += 1;
                }
                if w == wanted.len() {
                    return Ok(());
                }
                if wanted[w] == id {
                    out.push(id);
                }
            }
        }
        Ok(())
    }

    /// Every id in `[lo, hi]`, sorted (an id is in one file only: runs never share ids).
    pub async fn ids_in(&self, lo: u128, hi: u128) -> Result<Vec<u128>> {
        let mut out = Vec::new();
        let mut sorted = true;
        for f in &self.files {
            let groups: Vec<usize> = f
                .ranges
                .iter()
                .enumerate()
                .filter(|(_, (a, b))| *a <= hi && *b >= lo)
                .map(|(i, _)| i)
                .collect();
            if groups.is_empty() {
                continue;
            }
            let before = out.len();
            #[allow(deprecated)]
            let reader = ParquetObjectReader::new(self.store.clone(), f.path.clone());
            let mut stream =
                ParquetRecordBatchStreamBuilder::new_with_metadata(reader, f.meta.clone())
                    .with_row_groups(groups)
                    .with_batch_size(READ_BATCH)
                    .build()?;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                out.extend(
                    ids_of(&batch, &f.path)?
                        .into_iter()
                        .filter(|id| *id >= lo && *id <= hi),
                );
            }
            sorted &= before == 0 || out.len() == before;
        }
        if !sorted {
            out.sort_unstable();
        }
        Ok(out)
    }
}

/// The footers of index files this process has read, by table: index files are never
/// changed (each has a new unique name), so a run reads only the footers of the files added
/// since the last run of the process, not every file's (whose page indexes grow with the
/// table: about 40 bytes a page of 2,048 ids, parsed in every micro-batch of a stream
/// before). Only the files of a table's latest opened snapshot (and those added since) are
/// kept, so memory follows the index's live files.
mod footers {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::IndexFile;

    type Footers = HashMap<String, HashMap<String, Arc<IndexFile>>>;
    static KEPT: Mutex<Option<Footers>> = Mutex::new(None);

    fn with<R>(f: impl FnOnce(&mut Footers) -> R) -> R {
        let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
        f(kept.get_or_insert_with(HashMap::new))
    }

    /// The footer of `path` in the table at `root`, if read before (and of the same size).
    pub(super) fn get(
        root: &url::Url,
        path: &deltalake::Path,
        size: u64,
    ) -> Option<Arc<IndexFile>> {
        with(|k| {
            k.get(root.as_str())
                .and_then(|files| files.get(path.as_ref()))
                .filter(|f| f.size == size)
                .cloned()
        })
    }

    pub(super) fn put(root: &url::Url, f: Arc<IndexFile>) {
        with(|k| {
            k.entry(root.to_string())
                .or_default()
                .insert(f.path.to_string(), f);
        });
    }

    /// Forget the footers of the table's files that are not in `live`.
    pub(super) fn keep_only(root: &url::Url, live: &[Arc<IndexFile>]) {
        with(|k| {
            let live: HashMap<String, Arc<IndexFile>> = live
                .iter()
                .map(|f| (f.path.to_string(), f.clone()))
                .collect();
            k.insert(root.to_string(), live);
        });
    }
}

/// Row groups of a file and the rows of each that may hold a wanted id.
type Selected = Vec<(usize, Vec<std::ops::Range<usize>>)>;

/// Where row group `g`'s Bloom filter of `column` (0: high halves, 1: low halves) is in the
/// file (header and bitset), if it has one.
fn filter_at(f: &IndexFile, g: usize, column: usize) -> Option<std::ops::Range<u64>> {
    let c = f.meta.metadata().row_group(g).column(column);
    match (c.bloom_filter_offset(), c.bloom_filter_length()) {
        (Some(o), Some(l)) if o >= 0 && l > 0 => Some(o as u64..(o as u64 + l as u64)),
        _ => None,
    }
}

/// Bytes read for one page of the index (both id columns) when an id may be in it.
const PAGE_BYTES: u64 = PAGE_IDS as u64 * 16;

/// Where row group `g`'s filter of the low halves is, when reading it costs less than
/// reading the pages of the `maybe` ids its filter of the high halves may hold: a stream's
/// micro-batch has a few ids in each row group of a large file, and of those about one in
/// a thousand passes the first filter, so reading the 128 KiB second filter to spare a
/// 32 KiB page read per id was most of a lookup's bytes after the first filters'. A large
/// batch has many such ids in a group, and the second filter pays.
fn second_filter_pays(f: &IndexFile, g: usize, maybe: usize) -> Option<std::ops::Range<u64>> {
    filter_at(f, g, 1).filter(|r| maybe > 0 && r.end - r.start < maybe as u64 * PAGE_BYTES)
}

/// Which of the `groups` of a local file may hold one of their ids, and where: a group's
/// filter of the high halves, then, for the ids it may hold, its filter of the low halves
/// when that costs less than their pages ([`second_filter_pays`]), each read into one reused
/// buffer and probed there. What a lookup costs is then the filters' bytes read from the
/// page cache once, and the pages of the ids the filters may hold.
fn probe_local(
    f: &IndexFile,
    groups: &[(usize, std::ops::Range<usize>)],
    wanted: &[u128],
) -> Result<Selected> {
    use std::os::unix::fs::FileExt;
    let path = f.local.as_ref().expect("a local file");
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open the index file {}", path.display()), e))?;
    let mut buffer = Vec::new();
    let read = |r: std::ops::Range<u64>, buffer: &mut Vec<u8>| -> Result<()> {
        buffer.resize((r.end - r.start) as usize, 0);
        file.read_exact_at(buffer, r.start).map_err(|e| {
            Error::io(
                format!("cannot read a Bloom filter of {}", path.display()),
                e,
            )
        })
    };
    let mut selected = Vec::new();
    for (g, ids) in groups {
        let mut ids = wanted[ids.clone()].to_vec();
        if let Some(r) = filter_at(f, *g, 0) {
            read(r, &mut buffer)?;
            ids = may_hold(&ids, 0, Some(&buffer));
            if let Some(r) = second_filter_pays(f, *g, ids.len()) {
                read(r, &mut buffer)?;
                ids = may_hold(&ids, 1, Some(&buffer));
            }
        }
        if !ids.is_empty() {
            selected.push((*g, rows_of_pages(f.meta.metadata(), *g, &ids)));
        }
    }
    Ok(selected)
}

/// The ids whose half `column` (0: high, 1: low) `filter` (header and bitset, as the file
/// holds them) may hold; every id when there is no filter, or none that can be read.
fn may_hold(ids: &[u128], column: usize, filter: Option<&[u8]>) -> Vec<u128> {
    let half = |id: &u128| {
        let (hi, lo) = to_halves(*id);
        if column == 0 { hi } else { lo }
    };
    match filter.and_then(BloomFilter::parse) {
        Some(filter) => ids
            .iter()
            .filter(|id| filter.may_hold(half(id)))
            .copied()
            .collect(),
        None => ids.to_vec(),
    }
}

/// A column chunk's split-block Bloom filter, probed where it lies in the file's bytes, as
/// the Parquet specification defines it (`BloomFilter.md`; parquet's own `Sbbf` copies the
/// bitset first): the xxHash64 (seed 0) of the plain-encoded value; its upper 32 bits pick
/// one of the bitset's 32-byte blocks, its lower 32 bits one bit in each of the block's eight
/// words (through eight salts). `tests::our_bloom_probe_answers_as_parquets` holds it to
/// parquet's answers.
struct BloomFilter<'a> {
    bitset: &'a [u8],
}

impl<'a> BloomFilter<'a> {
    const SALT: [u32; 8] = [
        0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947,
        0x5c6bfb31,
    ];

    /// The bitset of a filter as stored (a Thrift compact `BloomFilterHeader`, then the
    /// bitset): the header's first field is `numBytes`, a power of two of at least 32.
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        // Field 1, type i32: 0x15, then a zigzag varint.
        if bytes.first() != Some(&0x15) {
            return None;
        }
        let (mut n, mut shift) = (0u64, 0);
        for b in bytes.get(1..6)? {
            n |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                let n = ((n >> 1) as i64 ^ -((n & 1) as i64)) as usize;
                let ok = n >= 32 && n.is_power_of_two() && n < bytes.len();
                return ok.then(|| BloomFilter {
                    bitset: &bytes[bytes.len() - n..],
                });
            }
        }
        None
    }

    /// Whether the filter may hold `value` (false: it certainly does not).
    fn may_hold(&self, value: i64) -> bool {
        let hash = twox_hash::XxHash64::oneshot(0, &value.to_le_bytes());
        let blocks = (self.bitset.len() / 32) as u64;
        let block = (((hash >> 32) * blocks) >> 32) as usize * 32;
        let key = hash as u32;
        Self::SALT.iter().enumerate().all(|(i, salt)| {
            let at = block + 4 * i;
            let word = u32::from_le_bytes(self.bitset[at..at + 4].try_into().expect("4 bytes"));
            word & (1 << (key.wrapping_mul(*salt) >> 27)) != 0
        })
    }
}

/// The rows of row group `g` in the pages whose range of high halves holds the high half of
/// one of `ids` (sorted), from the page index; the whole row group when the file has none.
fn rows_of_pages(
    meta: &deltalake::parquet::file::metadata::ParquetMetaData,
    g: usize,
    ids: &[u128],
) -> Vec<std::ops::Range<usize>> {
    let highs: Vec<i64> = ids.iter().map(|id| to_halves(*id).0).collect();
    let rows = meta.row_group(g).num_rows() as usize;
    let whole = std::iter::once(0..rows).collect();
    let (Some(ColumnIndexMetaData::INT64(index)), Some(offsets)) = (
        meta.column_index()
            .and_then(|c| c.get(g))
            .and_then(|c| c.first()),
        meta.offset_index()
            .and_then(|o| o.get(g))
            .and_then(|o| o.first()),
    ) else {
        return whole;
    };
    let starts: Vec<usize> = offsets
        .page_locations()
        .iter()
        .map(|p| p.first_row_index as usize)
        .collect();
    let (mins, maxes) = (index.min_values(), index.max_values());
    if mins.len() != starts.len() || maxes.len() != starts.len() {
        return whole;
    }
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for h in &highs {
        // Pages are sorted: the first whose largest is at least `h`, and on while their
        // smallest is at most `h` (equal high halves may span two pages).
        let mut p = maxes.partition_point(|m| m < h);
        while p < starts.len() && mins[p] <= *h {
            let range = starts[p]..starts.get(p + 1).copied().unwrap_or(rows);
            match out.last_mut() {
                Some(last) if last.end >= range.start => last.end = last.end.max(range.end),
                _ => out.push(range),
            }
            p += 1;
        }
    }
    out
}

/// Writes one sorted index file, streaming it to the table's store (one row group in memory).
pub struct IdWriter {
    writer: AsyncArrowWriter<BufWriter>,
    path: String,
    buffer: Vec<u128>,
    ids: u64,
    last: Option<u128>,
}

impl IdWriter {
    /// A new file in the index table.
    pub fn new(t: &DeltaTable) -> Result<Self> {
        let path = format!("part-{}.parquet", uuid::Uuid::new_v4());
        let target = BufWriter::new(t.object_store(), deltalake::Path::from(path.as_str()));
        let props = WriterProperties::builder()
            // Random bytes: dictionaries and compression only cost time.
            .set_dictionary_enabled(false)
            .set_compression(Compression::UNCOMPRESSED)
            // Page statistics: the page index a lookup finds an id's page with.
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_data_page_row_count_limit(PAGE_IDS)
            .set_max_row_group_row_count(Some(ROW_GROUP_IDS))
            .set_column_bloom_filter_properties(ColumnPath::from("id_hi"), bloom())
            .set_column_bloom_filter_properties(ColumnPath::from("id_lo"), bloom())
            .build();
        let writer = AsyncArrowWriter::try_new(target, TRANSACTION_IDS.clone(), Some(props))?;
        Ok(IdWriter {
            writer,
            path,
            buffer: Vec::with_capacity(READ_BATCH),
            ids: 0,
            last: None,
        })
    }

    /// Append ids, which must continue the sorted order.
    pub async fn push(&mut self, ids: &[u128]) -> Result<()> {
        for &id in ids {
            debug_assert!(
                self.last.is_none_or(|l| l < id),
                "ids must be sorted and unique"
            );
            self.last = Some(id);
            self.buffer.push(id);
            if self.buffer.len() == READ_BATCH {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let (hi, lo): (Vec<i64>, Vec<i64>) = self.buffer.iter().map(|id| to_halves(*id)).unzip();
        let batch = RecordBatch::try_new(
            TRANSACTION_IDS.clone(),
            vec![
                Arc::new(Int64Array::from(hi)),
                Arc::new(Int64Array::from(lo)),
            ],
        )?;
        self.writer.write(&batch).await?;
        self.ids += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Close the file; its `add` action (None when no id was written: nothing to add).
    pub async fn finish(mut self, t: &DeltaTable) -> Result<Option<Add>> {
        self.flush().await?;
        let ids = self.ids;
        let meta = self.writer.close().await?;
        let store = t.object_store();
        let path = deltalake::Path::from(self.path.as_str());
        if ids == 0 {
            let _ = store.delete(&path).await;
            return Ok(None);
        }
        let head = store.head(&path).await.map_err(|e| {
            Error::io(
                format!("cannot stat the index file {path}"),
                std::io::Error::other(e),
            )
        })?;
        debug_assert_eq!(meta.file_metadata().num_rows() as u64, ids);
        Ok(Some(Add {
            path: self.path,
            size: head.size as i64,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change: true,
            stats: Some(serde_json::json!({ "numRecords": ids }).to_string()),
            ..Default::default()
        }))
    }
}

/// The largest merge of index files a micro-batch of `run --follow` makes itself, in bytes
/// (about 4 million ids, a fraction of a second): the stream's background housekeeping
/// merges the larger tiers, so a micro-batch never waits for a merge of the whole index.
pub const STREAM_INLINE_MERGE_BYTES: u64 = 64 << 20;

/// Merge index files whose sizes are within a factor of 4 of each other once there are 4 of
/// a tier (the smallest such tier, if its files total at most `max_bytes`): each id is
/// rewritten once per tier (log4 of the index size), and the index keeps at most three files
/// per tier (more while a large tier waits for a merge that is not inline). A
/// `dataChange: false` commit; returns the files merged (0: nothing to merge).
pub async fn compact(t: &DeltaTable, max_bytes: Option<u64>) -> Result<u64> {
    let index = IdIndex::open(t).await?;
    let mut tiers: std::collections::BTreeMap<u32, Vec<&IndexFile>> = Default::default();
    for f in &index.files {
        tiers.entry(delta::size_tier(f.size)).or_default().push(f);
    }
    let Some(group) = tiers.into_values().find(|g| g.len() >= 4) else {
        return Ok(0);
    };
    if max_bytes.is_some_and(|max| group.iter().map(|f| f.size).sum::<u64>() > max) {
        return Ok(0);
    }
    let mut writer = IdWriter::new(t)?;
    merge_files(&index, &group, &mut writer).await?;
    let Some(add) = writer.finish(t).await? else {
        return Ok(0);
    };
    let add = Add {
        data_change: false,
        ..add
    };
    let files: Vec<(String, u64)> = group.iter().map(|f| (f.path.to_string(), f.size)).collect();
    let commit = Commit::new(
        Table::TransactionIds,
        DeltaOperation::Optimize {
            predicate: None,
            target_size: 0,
        },
    )
    .actions(removes(&files, false))
    .adds([add.clone()])
    .meta(keys::STAGE, "ingest.index_compaction")
    // Runs' index commits (adds only) may land meanwhile: they touch none of these files.
    // Two compactions at once are kept apart by the compaction lock (delta-rs's conflict
    // check does not see their `dataChange: false` removes).
    .rebase_if_no_conflict();
    delta::commit::commit_or_discard(commit, t, &[add]).await?;
    Ok(group.len() as u64)
}

/// A k-way merge of sorted index files into `writer`, a batch of each file at a time.
async fn merge_files(index: &IdIndex, group: &[&IndexFile], writer: &mut IdWriter) -> Result<()> {
    let mut streams = Vec::new();
    for f in group {
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(index.store.clone(), f.path.clone());
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, f.meta.clone())
            .with_batch_size(READ_BATCH)
            .build()?;
        streams.push((stream, Vec::<u128>::new(), 0usize, &f.path));
    }
    loop {
        // Refill empty buffers; drop exhausted streams.
        let mut i = 0;
        while i < streams.len() {
            let (stream, buf, pos, path) = &mut streams[i];
            if *pos == buf.len() {
                match stream.next().await {
                    Some(batch) => {
                        *buf = ids_of(&batch?, path)?;
                        *pos = 0;
                        continue;
                    }
                    None => {
                        streams.swap_remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
        if streams.is_empty() {
            return Ok(());
        }
        // Emit everything up to the smallest buffer's last id.
        let bound = streams
            .iter()
            .map(|(_, b, _, _)| *b.last().expect("refilled"))
            .min()
            .expect("non-empty");
        let mut chunk = Vec::new();
        for (_, buf, pos, _) in &mut streams {
            let end = *pos + buf[*pos..].partition_point(|id| *id <= bound);
            chunk.extend_from_slice(&buf[*pos..end]);
            *pos = end;
        }
        chunk.sort_unstable();
        chunk.dedup();
        writer.push(&chunk).await?;
    }
}

/// Remove actions for index files `(path, size)`.
fn removes(files: &[(String, u64)], data_change: bool) -> Vec<Action> {
    let now = chrono::Utc::now().timestamp_millis();
    files
        .iter()
        .map(|(path, size)| {
            Action::Remove(Remove {
                path: path.clone(),
                deletion_timestamp: Some(now),
                data_change,
                size: Some(*size as i64),
                ..Default::default()
            })
        })
        .collect()
}

/// Rows of a table from its files' statistics (None when a file has none).
pub fn rows_of(t: &DeltaTable, table: Table) -> Result<Option<u64>> {
    let snapshot = t.snapshot().map_err(|e| Error::delta(table.name(), e))?;
    let mut n = 0u64;
    for f in snapshot.log_data().iter() {
        match f.num_records() {
            Some(r) => n += r as u64,
            None => return Ok(None),
        }
    }
    Ok(Some(n))
}

/// Rebuild the index from `customer_transactions`: every id, sorted, replacing the index's
/// files in one commit that records `txns` (every stream's run number in `main`'s snapshot:
/// the index then reflects the main table as of it). Ids are split by range into scratch files when
/// there are more than `bucket_ids`, so memory stays bounded.
pub async fn rebuild(
    main: &DeltaTable,
    ids_table: &DeltaTable,
    scratch: &std::path::Path,
    bucket_ids: u64,
    txns: &[(String, i64)],
) -> Result<i64> {
    let rows = rows_of(main, Table::Transactions)?.unwrap_or(u64::MAX / 2);
    let buckets = rows.div_ceil(bucket_ids.max(1)).clamp(1, 512) as usize;
    let dir = scratch.join("index-rebuild");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let mut spill = Spill::new(&dir, buckets);
    let store = main.object_store();
    for f in delta::files(main, Table::Transactions, None)? {
        let mut batches = delta::read::columns(
            store.clone(),
            &f.path,
            &[crate::schema::col::TRANSACTION_ID],
        )
        .await?;
        while let Some(b) = batches.next().await {
            for id in transaction_ids(&b?, &f.path)? {
                spill.push(id)?;
            }
        }
    }
    let mut writer = IdWriter::new(ids_table)?;
    spill.drain_sorted(&mut writer).await?;
    let _ = std::fs::remove_dir_all(&dir);
    let add = writer.finish(ids_table).await?;
    let old: Vec<(String, u64)> = delta::files(ids_table, Table::TransactionIds, None)?
        .into_iter()
        .map(|f| (f.path.to_string(), f.size))
        .collect();
    let commit = Commit::new(
        Table::TransactionIds,
        DeltaOperation::Write {
            mode: deltalake::protocol::SaveMode::Overwrite,
            partition_by: None,
            predicate: None,
        },
    )
    .actions(removes(&old, true))
    .adds(add.clone())
    .meta(keys::STAGE, "ingest.index_rebuild")
    .meta(keys::MAIN_VERSION, delta::version(main));
    let commit = txns
        .iter()
        .fold(commit, |c, (app_id, seq)| c.txn(app_id.clone(), *seq));
    delta::commit::commit_or_discard(commit, ids_table, add.as_slice()).await
}

/// The transaction ids of a batch of the main table, parsed.
fn transaction_ids(b: &RecordBatch, path: &impl std::fmt::Display) -> Result<Vec<u128>> {
    let damaged = |what: String| Error::DamagedLog {
        table: Table::Transactions.name().into(),
        what,
    };
    let col = b
        .column(0)
        .as_string_opt::<i32>()
        .ok_or_else(|| damaged(format!("{path} has a non-string transaction_id")))?;
    col.iter()
        .flatten()
        .map(|v| {
            crate::rules::parse_uuid(v).ok_or_else(|| {
                damaged(format!(
                    "{path} holds a transaction_id that is not a UUID: {v:?}"
                ))
            })
        })
        .collect()
}

/// Ids split by range into scratch files (one bucket: kept in memory), then written sorted
/// bucket by bucket: memory is one bucket's worth.
struct Spill {
    dir: std::path::PathBuf,
    files: Vec<Option<std::io::BufWriter<std::fs::File>>>,
    memory: Vec<u128>,
}

impl Spill {
    fn new(dir: &std::path::Path, buckets: usize) -> Self {
        Spill {
            dir: dir.to_path_buf(),
            files: (0..buckets).map(|_| None).collect(),
            memory: Vec::new(),
        }
    }

    fn path(&self, b: usize) -> std::path::PathBuf {
        self.dir.join(format!("b{b:04}.ids"))
    }

    fn push(&mut self, id: u128) -> Result<()> {
        use std::io::Write;
        let buckets = self.files.len();
        if buckets == 1 {
            self.memory.push(id);
            return Ok(());
        }
        let b = (((id >> 64) * buckets as u128) >> 64) as usize;
        let p = self.path(b);
        let w = match &mut self.files[b] {
            Some(w) => w,
            slot => {
                let file = std::fs::File::create(&p)
                    .map_err(|e| Error::io(format!("cannot create {}", p.display()), e))?;
                slot.insert(std::io::BufWriter::with_capacity(16 * 1024, file))
            }
        };
        w.write_all(&id.to_le_bytes())
            .map_err(|e| Error::io("cannot write a scratch file", e))
    }

    async fn drain_sorted(mut self, writer: &mut IdWriter) -> Result<()> {
        use std::io::{Read, Write};
        if self.files.len() == 1 {
            self.memory.sort_unstable();
            self.memory.dedup();
            return writer.push(&self.memory).await;
        }
        for w in self.files.iter_mut().flatten() {
            w.flush()
                .map_err(|e| Error::io("cannot write a scratch file", e))?;
        }
        let buckets = std::mem::take(&mut self.files).len();
        for b in 0..buckets {
            let p = self.path(b);
            let mut bytes = Vec::new();
            match std::fs::File::open(&p) {
                Ok(mut f) => {
                    f.read_to_end(&mut bytes)
                        .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("cannot open {}", p.display()), e)),
            }
            let mut ids: Vec<u128> = bytes
                .chunks_exact(16)
                .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            writer.push(&ids).await?;
            let _ = std::fs::remove_file(&p);
        }
        Ok(())
    }
}

/// Merge the id index's files of similar size, however large (`maintain`, and `run
/// --follow`'s background housekeeping); returns the files merged.
pub async fn compact_all(t: &deltalake::DeltaTable) -> Result<u64> {
    compact(t, None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A sorted run of `n` random ids.
    fn run(rng: &mut rand_pcg::Pcg64, n: usize) -> Vec<u128> {
        let mut ids: Vec<u128> = (0..n).map(|_| rng.random()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    async fn write(t: &DeltaTable, ids: &[u128], props: Option<WriterProperties>) -> Add {
        let mut w = IdWriter::new(t).unwrap();
        if let Some(props) = props {
            // A file as written before the Bloom filters and page index.
            let target = BufWriter::new(t.object_store(), deltalake::Path::from(w.path.as_str()));
            w.writer =
                AsyncArrowWriter::try_new(target, TRANSACTION_IDS.clone(), Some(props)).unwrap();
        }
        w.push(ids).await.unwrap();
        w.finish(t).await.unwrap().unwrap()
    }

    /// The filters probed in place answer as parquet's own reader of them does, for values
    /// the filter holds and values it does not, in a file's every row group.
    #[tokio::test(flavor = "multi_thread")]
    async fn our_bloom_probe_answers_as_parquets() {
        use deltalake::parquet::bloom_filter::Sbbf;
        let dir = tempfile::tempdir().unwrap();
        let layout = crate::layout::Layout::new(dir.path());
        let t = delta::open_or_create(&layout, Table::TransactionIds)
            .await
            .unwrap();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(11);
        let ids = run(&mut rng, 200_000);
        let add = write(&t, &ids, None).await;
        let index = IdIndex::of_adds(&t, &[add]).await.unwrap();
        let f = &index.files[0];
        let bytes = std::fs::read(f.local.as_ref().unwrap()).unwrap();
        let groups = f.meta.metadata().num_row_groups();
        assert!(groups >= 3);
        let (mut held, mut maybe) = (0, 0);
        for (g, column) in (0..groups).flat_map(|g| [(g, 0), (g, 1)]) {
            let r = filter_at(f, g, column).expect("every row group has filters");
            let raw = &bytes[r.start as usize..r.end as usize];
            let ours = BloomFilter::parse(raw).expect("a split-block filter");
            let theirs = Sbbf::from_bytes(raw).unwrap();
            let half = |id: &u128| {
                let (hi, lo) = to_halves(*id);
                if column == 0 { hi } else { lo }
            };
            let values: Vec<i64> = ids
                .iter()
                .map(half)
                .chain((0..20_000).map(|_| rng.random()))
                .collect();
            for v in values {
                assert_eq!(
                    ours.may_hold(v),
                    theirs.check(&v),
                    "row group {g}, value {v}"
                );
                held += usize::from(theirs.check(&v));
                maybe += 1;
            }
        }
        // Every id is held by its own row group's filters; others mostly are not.
        assert!(held >= 2 * ids.len() && held < maybe, "{held} of {maybe}");
        // Not a filter: the file's first bytes (`PAR1`).
        assert!(BloomFilter::parse(&bytes[..64]).is_none());
    }

    /// Lookups through the filters and pages find exactly the ids the index holds: in files
    /// with filters and in a file written without them, at the edges of pages and row groups,
    /// for ids the index holds and ids it does not (a false positive reads a page, never
    /// answers yes), over the whole id space and within a narrow range.
    #[tokio::test(flavor = "multi_thread")]
    async fn lookups_find_exactly_the_ids_the_index_holds() {
        let dir = tempfile::tempdir().unwrap();
        let layout = crate::layout::Layout::new(dir.path());
        let t = delta::open_or_create(&layout, Table::TransactionIds)
            .await
            .unwrap();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
        let runs = [
            run(&mut rng, 150_000),
            run(&mut rng, 3_000),
            run(&mut rng, 70_000),
        ];
        let legacy = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_max_row_group_row_count(Some(ROW_GROUP_IDS))
            .build();
        let adds = vec![
            write(&t, &runs[0], None).await,
            write(&t, &runs[1], None).await,
            write(&t, &runs[2], Some(legacy)).await,
        ];
        let index = IdIndex::of_adds(&t, &adds).await.unwrap();
        let first = &index.files[0];
        assert!(
            first
                .meta
                .metadata()
                .row_group(0)
                .column(0)
                .bloom_filter_offset()
                .is_some()
        );
        assert!(first.meta.metadata().offset_index().is_some());
        assert!(
            index.files[2]
                .meta
                .metadata()
                .row_group(0)
                .column(0)
                .bloom_filter_offset()
                .is_none()
        );
        let held: std::collections::BTreeSet<u128> = runs.iter().flatten().copied().collect();
        // Held ids (every 97th of each run, page and row group edges included), and new ones.
        let mut wanted: Vec<u128> = runs
            .iter()
            .flat_map(|r| {
                r.iter().step_by(97).chain([
                    &r[0],
                    &r[r.len() - 1],
                    &r[PAGE_IDS.min(r.len() - 1)],
                    &r[(PAGE_IDS - 1).min(r.len() - 1)],
                    &r[ROW_GROUP_IDS.min(r.len() - 1)],
                ])
            })
            .copied()
            .chain(run(&mut rng, 20_000))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let expected: Vec<u128> = wanted
            .iter()
            .filter(|id| held.contains(id))
            .copied()
            .collect();
        assert!(expected.len() > 2_000, "{}", expected.len());
        assert_eq!(
            index
                .matches_in(0, u128::MAX, Arc::new(wanted.clone()))
                .await
                .unwrap(),
            expected
        );
        // Read through the object store (as on S3), the answers are the same.
        let remote = IdIndex {
            store: index.store.clone(),
            files: (index.files.iter())
                .map(|f| {
                    Arc::new(IndexFile {
                        path: f.path.clone(),
                        local: None,
                        ids: f.ids,
                        size: f.size,
                        meta: f.meta.clone(),
                        ranges: f.ranges.clone(),
                    })
                })
                .collect(),
        };
        assert_eq!(
            remote
                .matches_in(0, u128::MAX, Arc::new(wanted.clone()))
                .await
                .unwrap(),
            expected
        );
        // A stream's few ids: most row groups see one or two, and their pages are read
        // without the second filter (which pays only for many ids in a group).
        assert!(second_filter_pays(first, 0, 1).is_none());
        assert!(second_filter_pays(first, 0, 1_000).is_some());
        let few: Vec<u128> = wanted.iter().step_by(200).copied().collect();
        let found: Vec<u128> = few.iter().filter(|id| held.contains(id)).copied().collect();
        assert!(!found.is_empty() && found.len() < few.len(), "{found:?}");
        for index in [&index, &remote] {
            let answer = index.matches_in(0, u128::MAX, Arc::new(few.clone()));
            assert_eq!(answer.await.unwrap(), found);
        }
        // A narrow range: only its ids are looked up and returned.
        let (lo, hi) = (u128::MAX / 8 * 3, u128::MAX / 8 * 5);
        let inside: Vec<u128> = wanted
            .iter()
            .filter(|id| (lo..=hi).contains(*id))
            .copied()
            .collect();
        let found = index.matches_in(lo, hi, Arc::new(inside)).await.unwrap();
        assert_eq!(
            found,
            expected
                .iter()
                .filter(|id| (lo..=hi).contains(*id))
                .copied()
                .collect::<Vec<_>>()
        );
        assert!(
            index
                .matches_in(0, u128::MAX, Arc::new(Vec::new()))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn halves_keep_the_order_of_ids() {
        let ids = [
            0u128,
            1,
            u128::from(u64::MAX),
            1 << 64,
            (1 << 127) - 1,
            1 << 127,
            u128::MAX,
        ];
        for w in ids.windows(2) {
            assert!(to_halves(w[0]) < to_halves(w[1]), "{w:?}");
        }
        for id in ids {
            let (h, l) = to_halves(id);
            assert_eq!(from_halves(h, l), id);
        }
    }
}

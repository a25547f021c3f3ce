//! Key indexes: which data files of a snapshot hold a value of a column, so that a lookup by key
//! (`column = constant`) opens only those files.
//!
//! Iceberg's column bounds skip files only when keys are clustered; tables written by other engines often have
//! their keys shuffled across files, and then every lookup decodes the key column of every file. A snapshot never
//! changes, so the first lookup on a column starts building, in the background, each file's set of value hashes
//! (sorted 64-bit hashes of the column's values cast to the table's type: 8 bytes per distinct value per file).
//! Later lookups on the snapshot probe it and scan only the files that may hold the value; until it is ready they
//! scan as before. Indexes are kept per snapshot and column within `query.key_index_bytes` (least recently used
//! leave first); a column whose index would not fit is never built.
//!
//! Invariant: an index only decides which files a scan opens, and it never leaves out a file that holds the
//! value: it has every value of every data file of the snapshot (delete files only remove rows), equal values
//! hash alike (both sides are cast to the column's type; floats, whose `=` differs from equal bits, are not
//! indexed), and a file that could not be read is always kept. A hash collision only keeps a file the filter then
//! finds nothing in. The filter still runs on every row read.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::common::hash_utils::create_hashes;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// One hash state for every index of the process: the build and the probe must agree.
static HASHER: LazyLock<ahash::RandomState> = LazyLock::new(ahash::RandomState::new);

/// (snapshot, column name, column type).
type Key = (String, String, DataType);

/// Each file's sorted, distinct value hashes, by path (a snapshot's files are planned in no fixed order); `None`
/// for a file that could not be read (always kept).
#[derive(Debug)]
struct FileHashes(HashMap<String, Option<Box<[u64]>>>);

impl FileHashes {
    fn bytes(&self) -> u64 {
        self.0
            .iter()
            .map(|(path, f)| f.as_ref().map_or(0, |h| h.len() as u64 * 8) + path.len() as u64 + 48)
            .sum()
    }

    /// Whether the file at `path` may hold a value hashing to `probe` (a file the index does not know may).
    fn may_hold(&self, path: &str, probe: u64) -> bool {
        self.0
            .get(path)
            .is_none_or(|f| f.as_ref().is_none_or(|h| h.binary_search(&probe).is_ok()))
    }
}

/// The key indexes of an engine (a `SessionConfig` extension, found by [`crate::scan`]'s scans).
#[derive(Debug, Clone)]
pub struct KeyIndexes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    budget: u64,
    built: moka::sync::Cache<Key, Arc<FileHashes>>,
    /// Not to be built: too large for the budget, or unreadable.
    refused: moka::sync::Cache<Key, ()>,
    builds: Jobs<Key>,
}

/// A cache of at most `budget` bytes, each value weighing `bytes(value)` (least recently used values leave first).
pub(crate) fn weighed_cache<K, V>(budget: u64, bytes: fn(&V) -> u64) -> moka::sync::Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    moka::sync::Cache::builder()
        .max_capacity(budget)
        .weigher(move |_, v: &V| u32::try_from(bytes(v)).unwrap_or(u32::MAX))
        .build()
}

/// Background work on immutable files: one job at a time (a job reads many files, on all cores), never two jobs
/// on one key at once.
#[derive(Debug)]
pub(crate) struct Jobs<K> {
    running: Arc<Mutex<HashSet<K>>>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl<K> Default for Jobs<K> {
    fn default() -> Self {
        Jobs {
            running: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone + Send + 'static> Jobs<K> {
    /// Runs `work` on a blocking thread when no other job runs, unless a job on one of `keys` is under way or
    /// there is no runtime.
    pub(crate) fn spawn(&self, keys: Vec<K>, work: impl FnOnce() + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if keys.iter().any(|k| running.contains(k)) {
                return;
            }
            running.extend(keys.iter().cloned());
        }
        let (running, gate) = (self.running.clone(), self.gate.clone());
        runtime.spawn(async move {
            if let Ok(_turn) = gate.acquire().await {
                let _ = tokio::task::spawn_blocking(work).await;
            }
            let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
            for k in &keys {
                running.remove(k);
            }
        });
    }

    /// Whether no job runs (tests).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Waits until no job runs (tests).
    #[cfg(test)]
    pub(crate) async fn settle(&self) {
        while !self.is_idle() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// What a scan asks of an index: `files` (local paths, in order) of `snapshot` holding `rows` rows in all.
pub(crate) struct Snapshot<'a> {
    pub id: &'a str,
    pub files: &'a Arc<[String]>,
    pub rows: Option<u64>,
}

impl KeyIndexes {
    /// Indexes kept within `budget` bytes; 0 turns them off.
    pub fn new(budget: u64) -> KeyIndexes {
        KeyIndexes {
            inner: Arc::new(Inner {
                budget,
                built: weighed_cache(budget, |v: &Arc<FileHashes>| v.bytes()),
                refused: moka::sync::Cache::new(10_000),
                builds: Jobs::default(),
            }),
        }
    }

    /// Which of the snapshot's files may hold a row whose `column` (of type `data_type`) equals `value`, or
    /// `None` when no index is ready (one is started if the column can be indexed within the budget).
    pub(crate) fn files_for(
        &self,
        snapshot: &Snapshot,
        column: &str,
        data_type: &DataType,
        value: &ScalarValue,
    ) -> Option<Vec<bool>> {
        if self.inner.budget == 0 || snapshot.files.len() < 2 || !indexable(data_type) {
            return None;
        }
        let probe = probe_hash(value, data_type)?;
        let key = (
            snapshot.id.to_string(),
            column.to_string(),
            data_type.clone(),
        );
        if let Some(index) = self.inner.built.get(&key) {
            return Some(
                snapshot
                    .files
                    .iter()
                    .map(|path| index.may_hold(path, probe))
                    .collect(),
            );
        }
        self.start(key, snapshot);
        None
    }

    /// Starts building the index `key` in the background, unless it was started before or cannot fit.
    fn start(&self, key: Key, snapshot: &Snapshot) {
        if self.inner.refused.contains_key(&key) {
            return;
        }
        // Every value distinct is the most an index can take.
        if snapshot
            .rows
            .is_none_or(|rows| rows.saturating_mul(8) > self.inner.budget)
        {
            tracing::debug!(
                "no key index on {} of {}: it could exceed query.key_index_bytes",
                key.1,
                key.0
            );
            self.inner.refused.insert(key, ());
            return;
        }
        let this = self.clone();
        let files = snapshot.files.clone();
        self.inner.builds.spawn(vec![key.clone()], move || {
            let started = std::time::Instant::now();
            match build(&files, &key.1, &key.2) {
                Some(index) if index.bytes() <= this.inner.budget => {
                    tracing::debug!(
                        "key index on {} of {}: {} bytes in {} ms",
                        key.1,
                        key.0,
                        index.bytes(),
                        started.elapsed().as_millis()
                    );
                    this.inner.built.insert(key, Arc::new(index));
                }
                // Too large, or a build that failed: not tried again for this snapshot.
                _ => {
                    tracing::debug!("no key index on {} of {}", key.1, key.0);
                    this.inner.refused.insert(key, ());
                }
            }
        });
    }

    /// Waits until no index is being built (tests).
    #[cfg(test)]
    pub(crate) async fn settle(&self) {
        self.inner.builds.settle().await;
    }
}

/// Types whose SQL equality is equality of the values' bits, so equal values hash alike: integers, decimals,
/// dates, times, timestamps, strings and binaries. Not floats (`0.0 = -0.0`), not nested types, not booleans
/// (two values: nothing to skip).
pub(crate) fn indexable(data_type: &DataType) -> bool {
    use DataType::*;
    matches!(
        data_type,
        Int8 | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Decimal32(..)
            | Decimal64(..)
            | Decimal128(..)
            | Decimal256(..)
            | Date32
            | Date64
            | Time32(_)
            | Time64(_)
            | Timestamp(..)
            | Utf8
            | LargeUtf8
            | Utf8View
            | Binary
            | LargeBinary
            | BinaryView
            | FixedSizeBinary(_)
    )
}

/// The hash of `value` as a value of `data_type`, if it is exactly one (a cast that changes it, or a NULL, which
/// equals nothing, gives no probe: the scan then reads as without an index).
fn probe_hash(value: &ScalarValue, data_type: &DataType) -> Option<u64> {
    if value.is_null() {
        return None;
    }
    let cast_value = value.cast_to(data_type).ok()?;
    if cast_value.cast_to(&value.data_type()).ok()? != *value {
        return None;
    }
    let array = cast_value.to_array_of_size(1).ok()?;
    let mut hash = [0u64; 1];
    create_hashes([&array], &HASHER, &mut hash).ok()?;
    Some(hash[0])
}

/// The index of `column` over `files`, read on all cores; `None` if it cannot be built at all.
fn build(files: &[String], column: &str, data_type: &DataType) -> Option<FileHashes> {
    let hashes = crate::parallel::filter_map_chunks(files, 1, "building a key index", |path| {
        Some(match file_hashes(path, column, data_type) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("key index: {path} is always read: {e}");
                None
            }
        })
    });
    // A chunk whose thread panicked is missing: no index rather than a wrong one.
    (hashes.len() == files.len()).then(|| FileHashes(files.iter().cloned().zip(hashes).collect()))
}

/// One file's sorted distinct hashes of `column`, or `None` when the file has no such column (an added column
/// may read as a default value: the file is kept).
fn file_hashes(
    path: &str,
    column: &str,
    data_type: &DataType,
) -> Result<Option<Box<[u64]>>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
    let Some(root) = builder
        .schema()
        .fields()
        .iter()
        .position(|f| f.name() == column)
    else {
        return Ok(None);
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [root]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out: Vec<u64> = Vec::new();
    let mut hashes: Vec<u64> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let values: ArrayRef = cast(batch.column(0), data_type).map_err(|e| e.to_string())?;
        hashes.clear();
        hashes.resize(values.len(), 0);
        create_hashes([&values], &HASHER, &mut hashes).map_err(|e| e.to_string())?;
        match values.nulls() {
            Some(nulls) => out.extend(
                hashes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| nulls.is_valid(*i))
                    .map(|(_, h)| *h),
            ),
            None => out.extend_from_slice(&hashes),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(Some(out.into_boxed_slice()))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    use datafusion::common::ScalarValue;

    #[test]
    fn a_probe_is_the_value_itself_or_nothing() {
        let long = super::probe_hash(&ScalarValue::Int64(Some(42)), &DataType::Int64).unwrap();
        // The same number as a narrower literal probes alike; one that a cast would change gives no probe.
        assert_eq!(
            super::probe_hash(&ScalarValue::Int32(Some(42)), &DataType::Int64),
            Some(long)
        );
        assert_eq!(
            super::probe_hash(&ScalarValue::Int64(Some(1 << 40)), &DataType::Int32),
            None
        );
        assert_eq!(
            super::probe_hash(&ScalarValue::Int64(None), &DataType::Int64),
            None
        );
        // A string literal probes a view column as the view's values hash.
        let view = super::probe_hash(
            &ScalarValue::Utf8(Some("placed".into())),
            &DataType::Utf8View,
        );
        assert!(view.is_some());
        assert_eq!(
            view,
            super::probe_hash(
                &ScalarValue::Utf8View(Some("placed".into())),
                &DataType::Utf8View
            )
        );
        assert!(super::indexable(&DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("+00:00".into())
        )));
        assert!(!super::indexable(&DataType::Float64));
        assert!(!super::indexable(&DataType::Boolean));
    }

    /// Writes `values` of one long column `k` to a Parquet file in `dir`.
    fn parquet(dir: &std::path::Path, name: &str, values: Vec<Option<i64>>) -> String {
        use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
        let path = dir.join(name);
        let batch = RecordBatch::try_from_iter([(
            "k",
            std::sync::Arc::new(Int64Array::from(values)) as ArrayRef,
        )])
        .unwrap();
        let file = std::fs::File::create(&path).unwrap();
        let mut w =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        path.to_string_lossy().into_owned()
    }

    #[tokio::test]
    async fn files_are_found_by_path_whatever_order_a_scan_lists_them_in() {
        let dir = tempfile::tempdir().unwrap();
        let a = parquet(dir.path(), "a.parquet", vec![Some(1), Some(5), None]);
        let b = parquet(dir.path(), "b.parquet", vec![Some(2), Some(5)]);
        let gone = dir
            .path()
            .join("gone.parquet")
            .to_string_lossy()
            .into_owned();
        let indexes = super::KeyIndexes::new(1 << 20);
        let long = DataType::Int64;
        let key = |k: i64| ScalarValue::Int64(Some(k));
        let files: std::sync::Arc<[String]> = vec![a.clone(), b.clone(), gone.clone()].into();
        let snapshot = super::Snapshot {
            id: "s1",
            files: &files,
            rows: Some(5),
        };
        assert_eq!(indexes.files_for(&snapshot, "k", &long, &key(1)), None);
        indexes.settle().await;
        assert_eq!(
            indexes.files_for(&snapshot, "k", &long, &key(1)),
            Some(vec![true, false, true]),
            "a holds 1; a file that cannot be read is always kept"
        );
        // The same snapshot planned in another order.
        let reordered: std::sync::Arc<[String]> = vec![gone, b, a].into();
        let snapshot = super::Snapshot {
            id: "s1",
            files: &reordered,
            rows: Some(5),
        };
        assert_eq!(
            indexes.files_for(&snapshot, "k", &long, &key(2)),
            Some(vec![true, true, false])
        );
        assert_eq!(
            indexes.files_for(&snapshot, "k", &long, &key(5)),
            Some(vec![true, true, true])
        );
        assert_eq!(
            indexes.files_for(&snapshot, "k", &long, &key(3)),
            Some(vec![true, false, false])
        );
        // NULL equals nothing: no probe; a column of another type is another index; no rows known, no index.
        assert_eq!(
            indexes.files_for(&snapshot, "k", &long, &ScalarValue::Int64(None)),
            None
        );
        let unknown = super::Snapshot {
            id: "s2",
            files: &reordered,
            rows: None,
        };
        assert_eq!(indexes.files_for(&unknown, "k", &long, &key(1)), None);
        indexes.settle().await;
        assert_eq!(indexes.files_for(&unknown, "k", &long, &key(1)), None);
    }
}

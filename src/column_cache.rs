//! Column cache: data files' columns kept decoded in memory, so that the queries agents repeat on a table scan
//! memory instead of decompressing and decoding Parquet each time.
//!
//! An Iceberg data file never changes under its path, so a column of it, once decoded (and cast to the table's
//! type, as the Parquet scan casts it), stays valid for every snapshot that keeps the file. A scan whose columns
//! are all cached for all the files it reads is served from memory; otherwise it reads Parquet as before and starts
//! loading the missing columns of those files in the background (one load at a time, on all cores). Kept within
//! `query.cache_bytes` (least recently used columns leave first); a load that would not fit is not started.
//! Scalar columns only (numbers, decimals, dates, times, timestamps, booleans, strings, binaries); a scan of a
//! nested column reads Parquet.
//!
//! Invariant: a cached column holds exactly the values the Parquet scan would produce for that file and column
//! (all rows; a column the file lacks reads as nulls, as the scan reads it); filters are applied above the scan as
//! always. Only warm-versus-cold timing tells that a table the caller may read was read recently.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::key_index::Jobs;

/// (file path, column name, column type).
type Key = (String, String, DataType);

/// A column of a table: its name and type.
type Column = (String, DataType);

/// A cached column of one file, in chunks.
type Chunks = Arc<[ArrayRef]>;

/// Rows per cached chunk.
const CHUNK_ROWS: usize = 8192;

/// The column cache of an engine (a `SessionConfig` extension, found by [`crate::scan`]'s scans).
#[derive(Debug, Clone)]
pub struct ColumnCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    budget: u64,
    /// Each column as the file's rows in chunks of [`CHUNK_ROWS`], each chunk its own allocation: a batch handed
    /// to a query holds (and is charged to the query's memory pool for) one chunk, not the whole column.
    columns: moka::sync::Cache<Key, Chunks>,
    loads: Jobs<String>,
    /// Files whose columns could not be loaded: read from Parquet, never tried again.
    unreadable: moka::sync::Cache<String, ()>,
}

/// One data file a scan reads: its local path and row count (from the manifests).
pub(crate) struct File<'a> {
    pub path: &'a str,
    pub rows: Option<u64>,
}

impl ColumnCache {
    /// A cache of at most `budget` bytes; 0 turns it off.
    pub fn new(budget: u64) -> ColumnCache {
        ColumnCache {
            inner: Arc::new(Inner {
                budget,
                columns: crate::key_index::weighed_cache(budget, |v: &Chunks| {
                    v.iter().map(|c| c.get_array_memory_size() as u64).sum()
                }),
                unreadable: moka::sync::Cache::new(10_000),
                loads: Jobs::default(),
            }),
        }
    }

    /// `files`' rows of `schema`'s columns (each file's batches of at most `batch_size` rows, in `files`' order) if
    /// all are cached; otherwise `None`, and the missing columns start loading if they fit the budget.
    pub(crate) fn batches(
        &self,
        files: &[File],
        schema: &SchemaRef,
        batch_size: usize,
    ) -> Option<Vec<Vec<RecordBatch>>> {
        if self.inner.budget == 0
            || schema.fields().is_empty()
            || !schema.fields().iter().all(|f| cacheable(f.data_type()))
        {
            return None;
        }
        let mut out = Vec::with_capacity(files.len());
        let mut missing: Vec<(String, Vec<Column>)> = Vec::new();
        for file in files {
            let mut columns = Vec::with_capacity(schema.fields().len());
            let mut absent = Vec::new();
            for field in schema.fields() {
                let key = (
                    file.path.to_string(),
                    field.name().clone(),
                    field.data_type().clone(),
                );
                match self.inner.columns.get(&key) {
                    Some(array) => columns.push(array),
                    None => absent.push((key.1, key.2)),
                }
            }
            if absent.is_empty() {
                out.push(slices(schema, columns, batch_size)?);
            } else if !self.inner.unreadable.contains_key(file.path) {
                missing.push((file.path.to_string(), absent));
            }
        }
        if out.len() == files.len() {
            return Some(out);
        }
        if !missing.is_empty() {
            self.load(files, schema, missing);
        }
        None
    }

    /// Loads `missing` (file path → columns) in the background unless it would not fit or a load of one of these
    /// files is under way.
    fn load(&self, files: &[File], schema: &SchemaRef, missing: Vec<(String, Vec<Column>)>) {
        let rows: HashMap<&str, Option<u64>> = files.iter().map(|f| (f.path, f.rows)).collect();
        let width: u64 = schema
            .fields()
            .iter()
            .map(|f| value_width(f.data_type()))
            .sum();
        let estimate = missing
            .iter()
            .map(|(path, _)| rows.get(path.as_str()).copied().flatten())
            .try_fold(0u64, |sum, r| Some(sum + r? * width));
        // A load must fit the free space, or be small (an eighth of the budget): scans whose columns together
        // exceed the budget then keep what is cached instead of evicting each other's columns on every query.
        let free = self
            .inner
            .budget
            .saturating_sub(self.inner.columns.weighted_size());
        if estimate.is_none_or(|bytes| bytes > free && bytes > self.inner.budget / 8) {
            tracing::debug!("columns not cached: they could exceed query.cache_bytes");
            return;
        }
        let this = self.clone();
        let paths: Vec<String> = missing.iter().map(|(p, _)| p.clone()).collect();
        self.inner.loads.spawn(paths, move || {
            let loaded = crate::parallel::filter_map_chunks(
                &missing,
                1,
                "caching columns",
                |(path, cols)| match file_columns(path, cols) {
                    Ok(arrays) => Some((path.clone(), arrays)),
                    Err(e) => {
                        tracing::warn!("column cache: {path} is read from Parquet: {e}");
                        this.inner.unreadable.insert(path.clone(), ());
                        None
                    }
                },
            );
            for (path, arrays) in loaded {
                for ((column, data_type), array) in arrays {
                    this.inner
                        .columns
                        .insert((path.clone(), column, data_type), array);
                }
            }
        });
    }

    /// Waits until no load is running (tests).
    #[cfg(test)]
    pub(crate) async fn settle(&self) {
        self.inner.loads.settle().await;
    }
}

/// Scalar types, decoded the same way whichever reader decodes them: those a key index takes, and booleans and
/// floats.
fn cacheable(data_type: &DataType) -> bool {
    crate::key_index::indexable(data_type)
        || matches!(
            data_type,
            DataType::Boolean | DataType::Float16 | DataType::Float32 | DataType::Float64
        )
}

/// Bytes a value of `data_type` takes in memory, about (views: 16 bytes, longer strings more).
fn value_width(data_type: &DataType) -> u64 {
    data_type.primitive_width().map_or(16, |w| w as u64).max(1)
}

/// One file's cached `columns` as batches of `schema` of at most `batch_size` rows (slices of the chunks: no
/// copy); `None` if the columns' chunks do not line up.
fn slices(schema: &SchemaRef, columns: Vec<Chunks>, batch_size: usize) -> Option<Vec<RecordBatch>> {
    let chunks = columns.first()?.len();
    if columns.iter().any(|c| c.len() != chunks) {
        return None;
    }
    let step = batch_size.max(1);
    let mut out = Vec::new();
    for k in 0..chunks {
        let rows = columns[0][k].len();
        if columns.iter().any(|c| c[k].len() != rows) {
            return None;
        }
        for start in (0..rows).step_by(step) {
            let len = step.min(rows - start);
            let arrays = columns.iter().map(|c| c[k].slice(start, len)).collect();
            out.push(RecordBatch::try_new(schema.clone(), arrays).ok()?);
        }
    }
    Some(out)
}

/// `columns` of the Parquet file at `path`, all rows in chunks of [`CHUNK_ROWS`], cast to their table types; a
/// column the file lacks is nulls.
fn file_columns(path: &str, columns: &[Column]) -> Result<Vec<(Column, Chunks)>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
    let rows = usize::try_from(builder.metadata().file_metadata().num_rows())
        .map_err(|e| e.to_string())?;
    let roots: Vec<Option<usize>> = columns
        .iter()
        .map(|(name, _)| {
            builder
                .schema()
                .fields()
                .iter()
                .position(|f| f.name() == name)
        })
        .collect();
    let mut present: Vec<usize> = roots.iter().flatten().copied().collect();
    present.sort_unstable();
    present.dedup();
    let mut out: Vec<Vec<ArrayRef>> = vec![Vec::new(); columns.len()];
    if present.is_empty() {
        // No column in the file: all nulls, in chunks.
        for start in (0..rows).step_by(CHUNK_ROWS) {
            let len = CHUNK_ROWS.min(rows - start);
            for (chunks, (_, data_type)) in out.iter_mut().zip(columns) {
                chunks.push(new_null_array(data_type, len));
            }
        }
    } else {
        let mask = ProjectionMask::roots(builder.parquet_schema(), present.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_batch_size(CHUNK_ROWS)
            .build()
            .map_err(|e| e.to_string())?;
        for batch in reader {
            let batch = batch.map_err(|e| e.to_string())?;
            for ((chunks, (_, data_type)), root) in out.iter_mut().zip(columns).zip(&roots) {
                chunks.push(match root {
                    None => new_null_array(data_type, batch.num_rows()),
                    Some(root) => {
                        let at = present.iter().position(|p| p == root).unwrap_or_default();
                        cast(batch.column(at), data_type).map_err(|e| e.to_string())?
                    }
                });
            }
        }
    }
    columns
        .iter()
        .zip(out)
        .map(|(column, chunks)| {
            let total: usize = chunks.iter().map(|c| c.len()).sum();
            if total != rows {
                return Err(format!("{}: {total} values for {rows} rows", column.0));
            }
            Ok((column.clone(), Chunks::from(chunks)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[tokio::test]
    async fn a_file_that_cannot_be_loaded_is_read_from_parquet_and_not_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.parquet");
        let batch = RecordBatch::try_from_iter([(
            "k",
            Arc::new(Int64Array::from_iter_values(0..10)) as ArrayRef,
        )])
        .unwrap();
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let good = path.to_string_lossy().into_owned();
        let gone = dir
            .path()
            .join("gone.parquet")
            .to_string_lossy()
            .into_owned();
        let files = [
            super::File {
                path: &good,
                rows: Some(10),
            },
            super::File {
                path: &gone,
                rows: Some(10),
            },
        ];
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let cache = super::ColumnCache::new(1 << 20);
        assert!(cache.batches(&files, &schema, 1024).is_none());
        cache.settle().await;
        // The readable file is cached, the other is not: the scan still needs Parquet, and no load is started.
        assert!(cache.batches(&files[..1], &schema, 1024).is_some());
        assert!(cache.inner.unreadable.contains_key(&gone));
        assert!(cache.batches(&files, &schema, 1024).is_none());
        assert!(cache.inner.loads.is_idle());
    }

    #[test]
    fn a_cached_batch_holds_one_chunk_not_the_whole_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.parquet");
        let rows: usize = 100_000;
        let batch = RecordBatch::try_from_iter([
            (
                "k",
                Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("a string longer than twelve bytes {i}")),
                )) as ArrayRef,
            ),
        ])
        .unwrap();
        let file = std::fs::File::create(&path).unwrap();
        let mut w =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let columns = [
            ("k".to_string(), DataType::Int64),
            ("s".to_string(), DataType::Utf8View),
            ("absent".to_string(), DataType::Int32),
        ];
        let loaded = super::file_columns(path.to_str().unwrap(), &columns).unwrap();
        let whole: usize = loaded[0].1.iter().map(|c| c.get_array_memory_size()).sum();
        for (_, chunks) in &loaded {
            assert_eq!(chunks.len(), rows.div_ceil(super::CHUNK_ROWS));
            assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), rows);
        }
        assert_eq!(loaded[2].1[0].null_count(), super::CHUNK_ROWS);
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(n, t)| Field::new(n, t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batches =
            super::slices(&schema, loaded.into_iter().map(|(_, c)| c).collect(), 1000).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), rows);
        assert!(batches.iter().all(|b| b.num_rows() <= 1000));
        // What a query's memory pool is charged for a batch: about a chunk, a small part of the column.
        let charged = batches[0].column(0).get_array_memory_size();
        assert!(charged * 8 < whole, "{charged} of {whole}");
        let values: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(values, (0..rows as i64).collect::<Vec<_>>());
    }
}

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
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::key_index::Jobs;

/// (file path, column name, column type).
type Key = (String, String, DataType);

/// A column of a table: its name and type.
type Column = (String, DataType);

/// The column cache of an engine (a `SessionConfig` extension, found by [`crate::scan`]'s scans).
#[derive(Debug, Clone)]
pub struct ColumnCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    budget: u64,
    columns: moka::sync::Cache<Key, ArrayRef>,
    loads: Jobs<String>,
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
                columns: moka::sync::Cache::builder()
                    .max_capacity(budget)
                    .weigher(|_, v: &ArrayRef| {
                        u32::try_from(v.get_array_memory_size()).unwrap_or(u32::MAX)
                    })
                    .build(),
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
            } else {
                missing.push((file.path.to_string(), absent));
            }
        }
        if missing.is_empty() {
            return Some(out);
        }
        self.load(files, schema, missing);
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

/// Scalar types, decoded the same way whichever reader decodes them.
fn cacheable(data_type: &DataType) -> bool {
    use DataType::*;
    matches!(
        data_type,
        Boolean
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Float16
            | Float32
            | Float64
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

/// Bytes a value of `data_type` takes in memory, about (views: 16 bytes, longer strings more).
fn value_width(data_type: &DataType) -> u64 {
    data_type.primitive_width().map_or(16, |w| w as u64).max(1)
}

/// One file's cached `columns` as batches of `schema` of at most `batch_size` rows (slices: no copy).
fn slices(
    schema: &SchemaRef,
    columns: Vec<ArrayRef>,
    batch_size: usize,
) -> Option<Vec<RecordBatch>> {
    let rows = columns.first()?.len();
    let step = batch_size.max(1);
    (0..rows)
        .step_by(step)
        .map(|start| {
            let len = step.min(rows - start);
            RecordBatch::try_new(
                schema.clone(),
                columns.iter().map(|c| c.slice(start, len)).collect(),
            )
            .ok()
        })
        .collect()
}

/// `columns` of the Parquet file at `path`, all rows, cast to their table types; a column the file lacks is nulls.
fn file_columns(path: &str, columns: &[Column]) -> Result<Vec<(Column, ArrayRef)>, String> {
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
    let mask = ProjectionMask::roots(builder.parquet_schema(), present.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| e.to_string())?;
    let mut parts: Vec<Vec<ArrayRef>> = vec![Vec::new(); present.len()];
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        for (i, part) in parts.iter_mut().enumerate() {
            part.push(batch.column(i).clone());
        }
    }
    let mut out = Vec::with_capacity(columns.len());
    for ((name, data_type), root) in columns.iter().zip(&roots) {
        let array = match root {
            None => new_null_array(data_type, rows),
            Some(root) => {
                let at = present.iter().position(|p| p == root).unwrap_or_default();
                let parts: Vec<&dyn datafusion::arrow::array::Array> =
                    parts[at].iter().map(|a| a.as_ref()).collect();
                let whole = if parts.is_empty() {
                    new_null_array(data_type, 0)
                } else {
                    concat(&parts).map_err(|e| e.to_string())?
                };
                cast(&whole, data_type).map_err(|e| e.to_string())?
            }
        };
        if array.len() != rows {
            return Err(format!("{name}: {} values for {rows} rows", array.len()));
        }
        out.push(((name.clone(), data_type.clone()), array));
    }
    Ok(out)
}

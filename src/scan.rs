//! How a query reads an Iceberg table: the files of its snapshot, planned by iceberg-rust, scanned over all of the
//! engine's partitions.
//!
//! iceberg-datafusion's `IcebergTableScan` reads a whole table as one stream (one output partition), so a query's
//! scan runs on one core. [`provider`] reads every snapshot over all partitions instead, in one of two ways:
//! - DataFusion's own Parquet scan (splits files into byte ranges, prunes row groups and pages with statistics,
//!   strings as views) when that reads exactly what Iceberg would: local Parquet data files without delete
//!   files, under schemas in which a column name always meant the same field id (added, dropped or promoted
//!   columns are fine; see [`read_by_name`]);
//! - otherwise (renamed or reused column names, position or equality delete files, object storage, vended
//!   credentials) iceberg-rust's own reader, which matches columns by field id and applies delete files, with
//!   the planned files spread over the partitions (`IcebergFiles`).
//!
//! The benchmark (`BENCHMARKS.md`) measures the difference.
//!
//! Invariant: the files read are exactly the data files of the table's current snapshot as iceberg-rust plans
//! them; nothing here lists a directory or takes a path from a query.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef as ArrowSchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DataFusionError;
use datafusion::common::ScalarValue;
use datafusion::common::stats::Precision;
use datafusion::common::{DFSchema, Result as DfResult, Statistics};
use datafusion::datasource::file_format::parquet::transform_schema_to_view;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::TryStreamExt;
use iceberg::arrow::{ArrowReader, ArrowReaderBuilder, schema_to_arrow_schema};
use iceberg::scan::FileScanTask;
use iceberg::spec::DataFileFormat;
use iceberg::table::Table;
use iceberg_datafusion::IcebergStaticTableProvider;
use iceberg_datafusion::physical_plan::convert_filters_to_predicate;

/// Which data files of a table a scan reads (`query.files_outside_location`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// Only files under the table's location (or its `write.data.path`); a snapshot naming others is refused.
    Own,
    /// Any file the snapshot names.
    Any,
}

/// Under [`Files::Own`], refuses a snapshot whose data or delete files lie outside the table's location: Parley
/// reads them with its own storage access, so a manifest rewritten after its commit was checked (an outside test
/// did it) could otherwise serve another table's files under this table's grants and policy.
fn confine(table: &Table, tasks: &[FileScanTask], files: Files) -> Result<(), String> {
    if files == Files::Any {
        return Ok(());
    }
    let roots = crate::catalog::commit::table_roots(table.metadata());
    let outside = tasks.iter().find_map(|t| {
        std::iter::once(t.data_file_path.as_str())
            .chain(t.deletes.iter().map(|d| d.file_path.as_str()))
            .find(|path| !crate::catalog::commit::within(&roots, path))
    });
    match outside {
        None => Ok(()),
        Some(path) => {
            tracing::warn!(
                table = %table.identifier(),
                file = path,
                roots = roots.join(", "),
                "a snapshot names a file outside its table's location; not read"
            );
            Err(
                "the table's current snapshot names data files outside the table's location, which Parley does \
                 not read (the server's log names them). If the table was migrated in place, its operator can \
                 allow them: files_outside_location = true in the catalog's [[catalogs]] entry of parley.toml (or \
                 query.files_outside_location = true for every catalog)"
                    .to_string(),
            )
        }
    }
}

/// A read-only provider for the current snapshot of `table`.
pub async fn provider(table: Table, files: Files) -> Result<Arc<dyn TableProvider>, String> {
    let meta = table.metadata();
    let Some(snapshot_id) = meta.current_snapshot_id() else {
        // No snapshot: an empty table, read as iceberg-datafusion reads it.
        return Ok(Arc::new(
            IcebergStaticTableProvider::try_new_from_table(table)
                .await
                .map_err(|e| e.to_string())?,
        ));
    };
    let tasks = table
        .scan()
        .snapshot_id(snapshot_id)
        .build()
        .map_err(|e| e.to_string())?
        .plan_files()
        .await
        .map_err(|e| e.to_string())?
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| e.to_string())?;
    confine(&table, &tasks, files)?;
    let plain = tasks
        .iter()
        .all(|t| t.deletes.is_empty() && t.data_file_format == DataFileFormat::Parquet);
    let local = tasks
        .iter()
        .all(|t| t.data_file_path.starts_with("file://"));
    if read_by_name(meta) && plain && local {
        // Strings and binaries as views, as DataFusion reads its own Parquet tables: decoded without copying
        // each value into one buffer, and compared, hashed and grouped on the inlined prefix.
        let schema = Arc::new(transform_schema_to_view(
            &schema_to_arrow_schema(meta.current_schema()).map_err(|e| e.to_string())?,
        ));
        let per_file = file_statistics(&table, &schema).await;
        let mut files = Vec::with_capacity(tasks.len());
        let mut paths = Vec::with_capacity(tasks.len());
        let mut known = Vec::with_capacity(tasks.len());
        for t in &tasks {
            let path = t.data_file_path.strip_prefix("file://").unwrap_or_default();
            paths.push(path.to_string());
            let mut file = PartitionedFile::new(path.to_string(), t.file_size_in_bytes);
            if let Some(stats) = per_file.get(&t.data_file_path) {
                known.push(stats.clone());
                file = file.with_statistics(stats.clone());
            }
            files.push(file);
        }
        let statistics = if known.len() == tasks.len() && !known.is_empty() {
            Statistics::try_merge_iter(known.iter().map(|s| s.as_ref()), &schema)
                .unwrap_or_else(|_| snapshot_statistics(&schema, &tasks))
        } else {
            snapshot_statistics(&schema, &tasks)
        };
        let snapshot = meta
            .current_snapshot()
            .map(|s| s.manifest_list().to_string())
            .unwrap_or_default();
        return Ok(Arc::new(SnapshotFiles {
            schema,
            snapshot,
            files,
            paths: paths.into(),
            statistics,
        }));
    }
    // Everything else (renamed or reused column names, delete files, object storage): iceberg-rust's own reader,
    // which matches columns by field id and applies delete files, run over all partitions.
    let schema = schema_to_arrow_schema(meta.current_schema()).map_err(|e| e.to_string())?;
    let schema = Arc::new(schema);
    let statistics = snapshot_statistics(&schema, &tasks);
    Ok(Arc::new(IcebergFiles {
        table,
        snapshot_id,
        schema,
        statistics,
        files,
    }))
}

/// Whether every data file of the table reads correctly by column name under the current schema — how
/// DataFusion's Parquet scan matches file columns to table columns (Iceberg matches by field id). True when no
/// schema the table ever had names a field differently from the current schema, no dropped column's name was
/// given to another field, and no nested type changed: then top-level columns were only added (absent from older
/// files: read as null), dropped (ignored) or promoted (cast), exactly as Iceberg reads them. A rename or a
/// reused name sends the table to iceberg-rust's field-id reader instead.
pub(crate) fn read_by_name(meta: &iceberg::spec::TableMetadata) -> bool {
    let current = meta.current_schema();
    meta.schemas_iter().all(|old| {
        let top_level = |id: i32| old.as_struct().fields().iter().any(|f| f.id == id);
        let names_agree = old.field_id_to_name_map().iter().all(|(id, name)| {
            match current.name_by_field_id(*id) {
                Some(now) => now == name,
                None => top_level(*id) && current.field_id_by_name(name).is_none(),
            }
        });
        let nested_unchanged = old.as_struct().fields().iter().all(|f| {
            f.field_type.is_primitive()
                || current
                    .field_by_id(f.id)
                    .is_none_or(|now| now.field_type == f.field_type)
        });
        names_agree && nested_unchanged
    })
}

/// What the snapshot's manifests say of its size, for the optimizer (join order, build sides): the exact row
/// count (each data file's `record_count`) and the bytes of its files (compressed, all columns: a relative
/// measure, hence inexact). DataFusion's own Parquet tables read the same from the files' footers. With delete
/// files the rows are an upper bound: inexact, so the optimizer never answers `count(*)` from them.
fn snapshot_statistics(schema: &ArrowSchemaRef, tasks: &[FileScanTask]) -> Statistics {
    let rows: Option<u64> = tasks.iter().map(|t| t.record_count).sum();
    let bytes: u64 = tasks.iter().map(|t| t.file_size_in_bytes).sum();
    let deletes = tasks.iter().any(|t| !t.deletes.is_empty());
    let mut statistics = Statistics::new_unknown(schema);
    if let Some(rows) = rows.and_then(|r| usize::try_from(r).ok()) {
        statistics.num_rows = if deletes {
            Precision::Inexact(rows)
        } else {
            Precision::Exact(rows)
        };
    }
    if let Ok(bytes) = usize::try_from(bytes) {
        statistics.total_byte_size = Precision::Inexact(bytes);
    }
    statistics
}

/// Each data file's statistics from the current snapshot's manifests, by path: its row count, and per column the
/// null count and lower and upper bounds. DataFusion skips a file whose bounds rule out a query's filter (or a
/// join's dynamic filter) without opening it, and estimates filters and joins from them, as it does from the
/// footers of its own Parquet tables. It prunes only on exact bounds, and may answer `min`/`max` from them, so
/// exactness follows what the bounds are: Iceberg writers take integer, decimal, date, time and boolean bounds
/// from the Parquet statistics DataFusion itself trusts as exact, while string and binary bounds may be truncated
/// and float bounds leave out NaN, so those are only estimates. Kept per snapshot and schema (manifests never
/// change).
async fn file_statistics(
    table: &Table,
    schema: &ArrowSchemaRef,
) -> Arc<HashMap<String, Arc<Statistics>>> {
    type PerFile = Arc<HashMap<String, Arc<Statistics>>>;
    // Bounded: the least recently used snapshots leave first.
    static CACHE: LazyLock<moka::sync::Cache<(String, i32), PerFile>> =
        LazyLock::new(|| moka::sync::Cache::new(1024));
    let meta = table.metadata();
    let Some(snapshot) = meta.current_snapshot() else {
        return Default::default();
    };
    let key = (
        snapshot.manifest_list().to_string(),
        meta.current_schema_id(),
    );
    if let Some(hit) = CACHE.get(&key) {
        return hit;
    }
    let columns: HashMap<i32, usize> = meta
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| (f.id, i))
        .collect();
    let mut out = HashMap::new();
    let read = async {
        let list = table.manifest_list_reader(snapshot).load().await?;
        for manifest in list.entries() {
            if manifest.content != iceberg::spec::ManifestContentType::Data {
                continue;
            }
            for entry in manifest.load_manifest(table.file_io()).await?.entries() {
                if entry.is_alive() {
                    let file = entry.data_file();
                    out.insert(
                        file.file_path().to_string(),
                        Arc::new(data_file_statistics(file, schema, &columns)),
                    );
                }
            }
        }
        Ok::<_, iceberg::Error>(())
    };
    if let Err(e) = read.await {
        // Statistics only guide planning: without them the scan is the same, planned with less knowledge.
        tracing::warn!("cannot read the manifests' statistics: {e}");
        return Default::default();
    }
    let out = Arc::new(out);
    CACHE.insert(key, out.clone());
    out
}

/// One data file's statistics (see [`file_statistics`]); `columns` maps field ids to columns of `schema`.
fn data_file_statistics(
    file: &iceberg::spec::DataFile,
    schema: &ArrowSchemaRef,
    columns: &HashMap<i32, usize>,
) -> Statistics {
    let mut statistics = Statistics::new_unknown(schema);
    if let Ok(rows) = usize::try_from(file.record_count()) {
        statistics.num_rows = Precision::Exact(rows);
    }
    if let Ok(bytes) = usize::try_from(file.file_size_in_bytes()) {
        statistics.total_byte_size = Precision::Inexact(bytes);
    }
    for (id, &i) in columns {
        let column = &mut statistics.column_statistics[i];
        let data_type = schema.field(i).data_type();
        if let Some(n) = file.null_value_counts().get(id) {
            column.null_count = Precision::Exact(*n as usize);
        }
        let bound = |v: ScalarValue| match data_type {
            DataType::Utf8 | DataType::Utf8View | DataType::Float32 | DataType::Float64 => {
                Precision::Inexact(v)
            }
            _ => Precision::Exact(v),
        };
        if let Some(v) = file
            .lower_bounds()
            .get(id)
            .and_then(|d| scalar(d, data_type))
        {
            column.min_value = bound(v);
        }
        if let Some(v) = file
            .upper_bounds()
            .get(id)
            .and_then(|d| scalar(d, data_type))
        {
            column.max_value = bound(v);
        }
    }
    statistics
}

/// An Iceberg bound as a value of the column's Arrow type, for the types whose bounds compare as the column's
/// values do; `None` for the rest (no statistics is always safe).
fn scalar(datum: &iceberg::spec::Datum, data_type: &DataType) -> Option<ScalarValue> {
    use iceberg::spec::PrimitiveLiteral as L;
    Some(match (datum.literal(), data_type) {
        (L::Boolean(v), DataType::Boolean) => ScalarValue::Boolean(Some(*v)),
        (L::Int(v), DataType::Int32) => ScalarValue::Int32(Some(*v)),
        (L::Long(v), DataType::Int64) => ScalarValue::Int64(Some(*v)),
        (L::Float(v), DataType::Float32) if !v.is_nan() => ScalarValue::Float32(Some(v.0)),
        (L::Double(v), DataType::Float64) if !v.is_nan() => ScalarValue::Float64(Some(v.0)),
        (L::Int(v), DataType::Date32) => ScalarValue::Date32(Some(*v)),
        (L::Int128(v), DataType::Decimal128(p, s)) => ScalarValue::Decimal128(Some(*v), *p, *s),
        (L::Long(v), DataType::Timestamp(TimeUnit::Microsecond, tz)) => {
            ScalarValue::TimestampMicrosecond(Some(*v), tz.clone())
        }
        (L::String(v), DataType::Utf8View) => ScalarValue::Utf8View(Some(v.clone())),
        (L::String(v), DataType::Utf8) => ScalarValue::Utf8(Some(v.clone())),
        _ => return None,
    })
}

/// The Parquet data files of one snapshot (local storage), scanned by DataFusion.
#[derive(Debug)]
struct SnapshotFiles {
    schema: ArrowSchemaRef,
    /// The snapshot's manifest list: names it for the key indexes.
    snapshot: String,
    files: Vec<PartitionedFile>,
    /// The files' local paths, in the same order.
    paths: Arc<[String]>,
    statistics: Statistics,
}

impl SnapshotFiles {
    /// The files a scan with `filters` must open (indices into `files`): all of them, or — for a lookup by key
    /// (`column = constant`) once the engine has built that column's key index ([`crate::key_index`]) — those
    /// that may hold the key.
    fn files_for(&self, state: &dyn Session, filters: &[Expr]) -> Vec<usize> {
        let all = || (0..self.files.len()).collect();
        let Some(indexes) = state
            .config()
            .get_extension::<crate::key_index::KeyIndexes>()
        else {
            return all();
        };
        let snapshot = crate::key_index::Snapshot {
            id: &self.snapshot,
            files: &self.paths,
            rows: self.statistics.num_rows.get_value().map(|n| *n as u64),
        };
        let mut keep: Option<Vec<bool>> = None;
        for (column, value) in key_lookups(filters) {
            let Ok(field) = self.schema.field_with_name(&column) else {
                continue;
            };
            if let Some(found) = indexes.files_for(&snapshot, &column, field.data_type(), &value) {
                keep = Some(match keep {
                    None => found,
                    Some(k) => k.iter().zip(&found).map(|(a, b)| *a && *b).collect(),
                });
            }
        }
        match keep {
            Some(keep) => (0..self.files.len()).filter(|&i| keep[i]).collect(),
            None => all(),
        }
    }

    /// The statistics of the files `kept`: the snapshot's when all are kept, else the files' merged (inexact when
    /// a file has none).
    fn statistics_of(&self, kept: &[usize]) -> Statistics {
        if kept.len() == self.files.len() {
            return self.statistics.clone();
        }
        let known: Vec<&Statistics> = kept
            .iter()
            .filter_map(|&i| self.files[i].statistics.as_deref())
            .collect();
        if known.len() == kept.len() && !known.is_empty() {
            Statistics::try_merge_iter(known, &self.schema)
                .unwrap_or_else(|_| self.statistics.clone().to_inexact())
        } else {
            self.statistics.clone().to_inexact()
        }
    }
}

impl SnapshotFiles {
    /// `kept` without the files whose exact bounds (from the manifests) prove `predicate` false for all their rows;
    /// all of `kept` when a file has no statistics or the predicate cannot be judged from bounds.
    fn pruned_by_statistics(
        &self,
        predicate: &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        kept: Vec<usize>,
    ) -> Vec<usize> {
        use datafusion::common::pruning::PrunableStatistics;
        use datafusion::physical_optimizer::pruning::PruningPredicate;
        let Some(stats) = kept
            .iter()
            .map(|&i| self.files[i].statistics.clone())
            .collect::<Option<Vec<_>>>()
        else {
            return kept;
        };
        let Ok(pruning) = PruningPredicate::try_new(predicate.clone(), self.schema.clone()) else {
            return kept;
        };
        match pruning.prune(&PrunableStatistics::new(stats, self.schema.clone())) {
            Ok(keep) if keep.len() == kept.len() => kept
                .into_iter()
                .zip(keep)
                .filter_map(|(i, k)| k.then_some(i))
                .collect(),
            _ => kept,
        }
    }
}

/// The `column = constant` conjuncts of `filters` (either side), as (column, constant).
fn key_lookups(filters: &[Expr]) -> Vec<(String, ScalarValue)> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let mut out = Vec::new();
    for filter in filters {
        for conjunct in datafusion::logical_expr::utils::split_conjunction(filter) {
            if let Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) = conjunct
            {
                match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(v, _))
                    | (Expr::Literal(v, _), Expr::Column(c)) => {
                        out.push((c.name.clone(), v.clone()));
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

#[async_trait]
impl TableProvider for SnapshotFiles {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> ArrowSchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn statistics(&self) -> Option<Statistics> {
        Some(self.statistics.clone())
    }

    /// Filters prune row groups and pages; DataFusion still applies them to the rows.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut kept = self.files_for(state, filters);
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(predicate) => {
                let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
                Some(state.create_physical_expr(predicate, &df_schema)?)
            }
            None => None,
        };
        if let Some(predicate) = &predicate {
            // Files whose bounds rule the filter out are left out here (the Parquet scan would skip them unopened;
            // a scan from memory needs it done).
            kept = self.pruned_by_statistics(predicate, kept);
        }
        let statistics = self.statistics_of(&kept);
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        if kept.is_empty() {
            // No file holds the key.
            return Ok(Arc::new(datafusion::physical_plan::empty::EmptyExec::new(
                schema,
            )));
        }
        if let Some(cache) = state
            .config()
            .get_extension::<crate::column_cache::ColumnCache>()
        {
            let files: Vec<crate::column_cache::File> = kept
                .iter()
                .map(|&i| crate::column_cache::File {
                    path: &self.paths[i],
                    rows: self.files[i]
                        .statistics
                        .as_ref()
                        .and_then(|s| s.num_rows.get_value().map(|n| *n as u64)),
                })
                .collect();
            if let Some(batches) = cache.batches(&files, &schema, state.config().batch_size()) {
                // Every column of every file in memory: no Parquet to read. Filters still apply above.
                let partitions = balanced(
                    batches,
                    |b| b.iter().map(|b| b.num_rows() as u64).sum(),
                    state.config().target_partitions(),
                )
                .into_iter()
                .map(|files| files.into_iter().flatten().collect::<Vec<_>>())
                .collect::<Vec<_>>();
                let source = datafusion::datasource::memory::MemorySourceConfig::try_new(
                    &partitions,
                    schema,
                    None,
                )?
                .with_limit(limit);
                return Ok(Arc::new(CachedColumnsExec {
                    inner: DataSourceExec::from_data_source(source),
                    statistics: statistics.project(projection),
                }));
            }
        }
        let files: Vec<PartitionedFile> = kept.iter().map(|&i| self.files[i].clone()).collect();
        // Footers and page indexes parsed once per file and kept in the engine's metadata cache (bounded, 50 MB by
        // default), as DataFusion's own Parquet tables do: data files never change under a path in Iceberg.
        let runtime = state.runtime_env();
        let reader = CachedParquetFileReaderFactory::new(
            runtime.object_store(ObjectStoreUrl::local_filesystem())?,
            runtime.cache_manager.get_file_metadata_cache(),
        );
        let mut parquet = state.table_options().parquet.clone();
        let read = projection.map_or(self.schema.fields().len(), Vec::len);
        if late_materialization(filters, read) {
            parquet.global.pushdown_filters = true;
            parquet.global.reorder_filters = true;
        }
        let mut source = ParquetSource::new(self.schema.clone())
            .with_table_parquet_options(parquet)
            .with_parquet_file_reader_factory(Arc::new(reader));
        if let Some(predicate) = predicate {
            source = source.with_predicate(predicate);
        }
        let groups = file_groups(&files, state.config().target_partitions());
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(groups)
                .with_statistics(statistics)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// A scan of cached columns (rows in memory), reporting the files' statistics from the manifests as the Parquet
/// scan does, so that a query is planned alike (join sides, filter estimates) whichever way its table is read.
#[derive(Debug)]
struct CachedColumnsExec {
    inner: Arc<dyn ExecutionPlan>,
    statistics: Statistics,
}

impl DisplayAs for CachedColumnsExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "CachedColumnsExec: ")?;
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for CachedColumnsExec {
    fn name(&self) -> &str {
        "CachedColumnsExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        self.inner.execute(partition, context)
    }

    fn partition_statistics(&self, partition: Option<usize>) -> DfResult<Statistics> {
        match partition {
            None => Ok(self.statistics.clone()),
            Some(_) => self.inner.partition_statistics(partition),
        }
    }
}

/// Columns a scan must read besides an equality filter's before decoding the filter's columns first pays.
const LATE_MATERIALIZATION_COLUMNS: usize = 5;

/// Whether a scan should decode its filter's columns first and the rest only for matching rows (Parquet filter
/// pushdown): when a conjunct is an equality of a column with a constant — a lookup by key, which matches few rows
/// — and the scan reads at least [`LATE_MATERIALIZATION_COLUMNS`] other columns, whose decoding it then skips for
/// the rows that do not match. Not for ranges or `IN` lists: on TPC-H's scans (Q6, Q12, Q14) filter pushdown made
/// whole-table scans 1.5-4x slower, since their filters keep many rows.
pub(crate) fn late_materialization(filters: &[Expr], columns_read: usize) -> bool {
    let keys: std::collections::HashSet<String> =
        key_lookups(filters).into_iter().map(|(c, _)| c).collect();
    !keys.is_empty() && columns_read >= keys.len() + LATE_MATERIALIZATION_COLUMNS
}

/// A snapshot read by iceberg-rust's reader (see [`provider`]): its files planned per query with the query's
/// columns and filters (pruning files and row groups by Iceberg's metrics), spread over the engine's partitions.
#[derive(Debug)]
struct IcebergFiles {
    table: Table,
    snapshot_id: i64,
    schema: ArrowSchemaRef,
    statistics: Statistics,
    /// Which files it may read: planned again per scan, so checked again.
    files: Files,
}

#[async_trait]
impl TableProvider for IcebergFiles {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> ArrowSchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn statistics(&self) -> Option<Statistics> {
        Some(self.statistics.clone())
    }

    /// Filters prune files and row groups and filter rows in the reader; DataFusion still applies them.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let builder = self.table.scan().snapshot_id(self.snapshot_id);
        let mut builder = match projection {
            Some(_) => builder.select(schema.fields().iter().map(|f| f.name().clone())),
            None => builder.select_all(),
        };
        if let Some(predicate) = convert_filters_to_predicate(filters) {
            builder = builder.with_filter(predicate);
        }
        let tasks: Vec<FileScanTask> = builder
            .build()
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .plan_files()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .try_collect()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        confine(&self.table, &tasks, self.files).map_err(DataFusionError::Execution)?;
        let runtime =
            iceberg::Runtime::try_current().map_err(|e| DataFusionError::External(Box::new(e)))?;
        // One reader for all partitions, each reading its files one at a time (the partitions are the
        // parallelism); a batch size like the engine's.
        let reader = ArrowReaderBuilder::new(self.table.file_io().clone(), runtime)
            .with_data_file_concurrency_limit(1)
            .with_batch_size(state.config().batch_size())
            .with_row_group_filtering_enabled(true)
            .with_row_selection_enabled(true)
            .build();
        let groups = balanced(
            tasks,
            |t| t.file_size_in_bytes,
            state.config().target_partitions(),
        );
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(IcebergTasksExec {
            reader,
            groups,
            schema,
            limit,
            properties,
        }))
    }
}

/// Reads groups of planned Iceberg file scan tasks, one group per output partition.
struct IcebergTasksExec {
    reader: ArrowReader,
    groups: Vec<Vec<FileScanTask>>,
    schema: ArrowSchemaRef,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl std::fmt::Debug for IcebergTasksExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergTasksExec")
            .field(
                "files",
                &self.groups.iter().map(Vec::len).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl DisplayAs for IcebergTasksExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        write!(
            f,
            "IcebergTasksExec: files={files}, partitions={}",
            self.groups.len()
        )?;
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for IcebergTasksExec {
    fn name(&self) -> &str {
        "IcebergTasksExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let tasks = self.groups.get(partition).cloned().unwrap_or_default();
        let tasks: iceberg::scan::FileScanTaskStream =
            Box::pin(futures::stream::iter(tasks.into_iter().map(Ok)));
        let stream = self
            .reader
            .clone()
            .read(tasks)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .stream()
            .map_err(|e| DataFusionError::External(Box::new(e)));
        // Each partition stops at the limit; the engine's own limit above cuts the union.
        let mut remaining = self.limit.unwrap_or(usize::MAX);
        let limited = stream.try_filter_map(move |batch| {
            let out = if remaining == 0 {
                None
            } else if batch.num_rows() <= remaining {
                remaining -= batch.num_rows();
                Some(batch)
            } else {
                let cut = batch.slice(0, remaining);
                remaining = 0;
                Some(cut)
            };
            futures::future::ready(Ok(out))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            limited,
        )))
    }
}

/// Items spread over at most `partitions` groups of about equal size (largest first, each to the lightest group).
fn balanced<T: Clone>(items: Vec<T>, size: impl Fn(&T) -> u64, partitions: usize) -> Vec<Vec<T>> {
    let count = partitions.clamp(1, items.len().max(1));
    let mut groups: Vec<(u64, Vec<T>)> = vec![(0, Vec::new()); count];
    let mut by_size = items;
    by_size.sort_by_key(|t| std::cmp::Reverse(size(t)));
    for item in by_size {
        if let Some(lightest) = groups.iter_mut().min_by_key(|(bytes, _)| *bytes) {
            lightest.0 += size(&item);
            lightest.1.push(item);
        }
    }
    groups
        .into_iter()
        .filter(|(_, items)| !items.is_empty())
        .map(|(_, items)| items)
        .collect()
}

/// The files spread over at most `partitions` groups of about equal bytes (largest file first, each to the
/// lightest group), as DataFusion's listing tables do. A group is a partition, and each partition has batches in
/// flight: one group per file made a table of 35 small files hold 35 partitions' batches at once. DataFusion's
/// optimizer still splits large files into byte ranges across partitions.
fn file_groups(files: &[PartitionedFile], partitions: usize) -> Vec<FileGroup> {
    balanced(files.to_vec(), |f| f.object_meta.size, partitions)
        .into_iter()
        .map(FileGroup::new)
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn late_materialization_for_lookups_by_key_only() {
        use datafusion::prelude::{col, lit};
        let lookup = col("order_id").eq(lit(4242_i64));
        assert!(super::late_materialization(
            std::slice::from_ref(&lookup),
            10
        ));
        assert!(super::late_materialization(
            &[lit(4242_i64)
                .eq(col("order_id"))
                .and(col("status").gt(lit("a")))],
            6
        ));
        // Too few other columns to skip; ranges and IN lists keep many rows; no filter.
        assert!(!super::late_materialization(
            std::slice::from_ref(&lookup),
            5
        ));
        assert!(!super::late_materialization(&[col("d").gt(lit(1))], 10));
        assert!(!super::late_materialization(
            &[col("m").in_list(vec![lit("a"), lit("b")], false)],
            10
        ));
        assert!(!super::late_materialization(
            &[(col("k") + lit(0)).eq(lit(1))],
            10
        ));
        assert!(!super::late_materialization(&[], 10));
    }

    #[test]
    fn files_spread_over_the_partitions_by_size() {
        use datafusion::datasource::listing::PartitionedFile;
        let files: Vec<PartitionedFile> = (1..=35u64)
            .map(|i| PartitionedFile::new(format!("f{i}.parquet"), i * 100))
            .collect();
        let groups = super::file_groups(&files, 2);
        assert_eq!(groups.len(), 2);
        let sizes: Vec<u64> = groups
            .iter()
            .map(|g| g.files().iter().map(|f| f.object_meta.size).sum())
            .collect();
        let total: u64 = (1..=35u64).map(|i| i * 100).sum();
        assert_eq!(
            sizes.iter().sum::<u64>(),
            total,
            "every file in exactly one group"
        );
        assert!(sizes[0].abs_diff(sizes[1]) <= 3500, "balanced: {sizes:?}");
        let mut names: Vec<String> = groups
            .iter()
            .flat_map(|g| g.files().iter().map(|f| f.object_meta.location.to_string()))
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 35);
        // Fewer files than partitions: one group each, none empty.
        assert_eq!(super::file_groups(&files[..1], 4).len(), 1);
        assert!(super::file_groups(&[], 4).is_empty());
    }
    use std::collections::HashMap;

    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::prelude::SessionContext;
    use iceberg::spec::{NestedField, PrimitiveType, Type};
    use iceberg::{Catalog, NamespaceIdent};

    use super::*;
    use crate::catalog::open_sql_catalog;
    use crate::demo::{TableLayout, append, create_table};

    /// Appends `values` as one snapshot.
    async fn commit(catalog: &dyn Catalog, table: Table, values: Vec<i64>) -> Table {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Ok(vec![Arc::new(Int64Array::from(values)) as ArrayRef]))
            .await
            .unwrap();
        drop(tx);
        append(catalog, table, 1024, rx).await.unwrap()
    }

    /// A SQL catalog in `dir` with the namespace `ns`.
    async fn catalog_in(dir: &tempfile::TempDir) -> Arc<dyn Catalog> {
        let catalog = open_sql_catalog(&dir.path().join("c.db"), &dir.path().join("w"), "t")
            .await
            .unwrap();
        let ns = NamespaceIdent::new("ns".to_string());
        catalog.create_namespace(&ns, HashMap::new()).await.unwrap();
        catalog
    }

    /// An empty table `ns.<name>` with one long column `n`.
    async fn table_of_longs(catalog: &dyn Catalog, name: &str) -> Table {
        let layout = TableLayout {
            namespace: "ns",
            name,
            fields: vec![NestedField::required(
                1,
                "n",
                Type::Primitive(PrimitiveType::Long),
            )],
            partition: None,
            properties: vec![],
        };
        create_table(catalog, layout).await.unwrap()
    }

    /// A table whose snapshot names another table's files (as a manifest rewritten after its commit was checked
    /// does: an outside test) is not read, unless the operator allows files outside a table's location.
    #[tokio::test]
    async fn files_outside_the_table_location_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_in(&dir).await;
        let mine = table_of_longs(catalog.as_ref(), "mine").await;
        let theirs = table_of_longs(catalog.as_ref(), "theirs").await;
        let theirs = commit(catalog.as_ref(), theirs, (1..=10).collect()).await;
        let mut moved = iceberg::spec::TableMetadataBuilder::new_from_metadata(
            theirs.metadata().clone(),
            theirs.metadata_location().map(str::to_string),
        );
        moved = moved.set_location(mine.metadata().location().to_string());
        let forged = Table::builder()
            .identifier(mine.identifier().clone())
            .file_io(mine.file_io().clone())
            .metadata(moved.build().unwrap().metadata)
            .metadata_location(mine.metadata_location().unwrap_or_default().to_string())
            .readonly(true)
            .runtime(iceberg::Runtime::try_current().unwrap())
            .build()
            .unwrap();
        let e = provider(forged.clone(), Files::Own).await.err().unwrap();
        assert!(
            e.contains("outside the table's location") && !e.contains("theirs"),
            "{e}"
        );
        let ctx = SessionContext::new();
        let rows = ctx
            .read_table(provider(forged, Files::Any).await.unwrap())
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(rows, 10);
        assert!(provider(theirs, Files::Own).await.is_ok());
        // Local paths compare alike in their three forms; a `..` segment never lies within.
        let roots = vec!["file:///w/ns/t".to_string()];
        for (path, inside) in [
            ("file:///w/ns/t/data/a.parquet", true),
            ("file:/w/ns/t/data/a.parquet", true),
            ("/w/ns/t/data/a.parquet", true),
            ("file:///w/ns/t2/data/a.parquet", false),
            ("file:///w/ns/t/../u/data/a.parquet", false),
            ("s3://w/ns/t/data/a.parquet", false),
        ] {
            assert_eq!(
                crate::catalog::commit::within(&roots, path),
                inside,
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn a_snapshot_is_read_from_exactly_its_data_files() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_in(&dir).await;
        let table = table_of_longs(catalog.as_ref(), "t").await;
        let first = commit(catalog.as_ref(), table, (1..=100).collect()).await;
        let both = commit(catalog.as_ref(), first.clone(), (101..=150).collect()).await;

        let read = |table: Table| async move {
            let provider = provider(table, Files::Own).await.unwrap();
            let files = provider
                .as_any()
                .downcast_ref::<SnapshotFiles>()
                .map(|s| s.files.len());
            let ctx = SessionContext::new();
            let batches = ctx
                .read_table(provider)
                .unwrap()
                .filter(datafusion::prelude::col("n").gt(datafusion::prelude::lit(90_i64)))
                .unwrap()
                .collect()
                .await
                .unwrap();
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            (files, rows)
        };
        // The first snapshot's one file, then both files once the second commit is current.
        assert_eq!(read(first.clone()).await, (Some(1), 10));
        assert_eq!(read(both.clone()).await, (Some(2), 60));
        // Its row count and the bounds of `n`, from the manifests.
        for (table, rows) in [(first, 100), (both.clone(), 150)] {
            let stats = provider(table, Files::Own)
                .await
                .unwrap()
                .statistics()
                .unwrap();
            assert_eq!(stats.num_rows, Precision::Exact(rows));
            let n = &stats.column_statistics[0];
            assert_eq!(n.min_value, Precision::Exact(ScalarValue::Int64(Some(1))));
            assert_eq!(
                n.max_value,
                Precision::Exact(ScalarValue::Int64(Some(rows as i64)))
            );
            assert_eq!(n.null_count, Precision::Exact(0));
        }
        // A filter the first file's bounds rule out skips that file unopened; answers stay exact.
        let ctx = SessionContext::new();
        ctx.register_table("t", provider(both, Files::Own).await.unwrap())
            .unwrap();
        let df = ctx
            .sql("SELECT min(n), max(n), count(*) FROM t WHERE n > 120")
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(
            text.contains("| 121 ") && text.contains("| 150 ") && text.contains("| 30 "),
            "{text}"
        );
        let metrics = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
            plan.as_ref(),
        )
        .indent(true)
        .to_string();
        // The other file is left out at planning: the scan has one file to open.
        assert!(
            metrics.contains("files_ranges_pruned_statistics=1 total → 1 matched"),
            "{metrics}"
        );
        assert_eq!(metrics.matches(".parquet").count(), 1, "{metrics}");
        // The file read had its footer parsed once: the same query again finds it in the metadata cache, and the
        // skipped file was never opened.
        ctx.sql("SELECT count(*) FROM t WHERE n > 120")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let cached = ctx
            .runtime_env()
            .cache_manager
            .get_file_metadata_cache()
            .list_entries();
        assert_eq!(cached.len(), 1, "{cached:?}");
        assert!(cached.values().all(|e| e.hits >= 1), "{cached:?}");
    }

    /// Reads `sql` over `t` through a provider, as text.
    /// Equality deletes (as Flink or Spark write them) applied by the field-id reader over the partitions: the
    /// table's planned file scan task with an equality delete file on `n` attached, read through
    /// `IcebergTasksExec`. (iceberg-rust 0.10 cannot commit delete files, and the engines on this machine write
    /// position deletes only; those are read end to end in tests/rest_catalog.py.)
    #[tokio::test]
    async fn equality_deletes_remove_the_rows_they_name() {
        use iceberg::arrow::arrow_schema_to_schema;
        use iceberg::scan::FileScanTaskDeleteFile;
        use iceberg::spec::{DataContentType, DataFileFormat};
        use iceberg::writer::base_writer::equality_delete_writer::{
            EqualityDeleteFileWriterBuilder, EqualityDeleteWriterConfig,
        };
        use iceberg::writer::file_writer::ParquetWriterBuilder;
        use iceberg::writer::file_writer::location_generator::{
            DefaultFileNameGenerator, DefaultLocationGenerator,
        };
        use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
        use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};

        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_in(&dir).await;
        let table = table_of_longs(catalog.as_ref(), "q").await;
        let table = commit(catalog.as_ref(), table, (1..=100).collect()).await;
        let schema = table.metadata().current_schema().clone();
        let config = EqualityDeleteWriterConfig::new(vec![1], schema.clone()).unwrap();
        let delete_schema = arrow_schema_to_schema(config.projected_arrow_schema_ref()).unwrap();
        let rolling = RollingFileWriterBuilder::new_with_default_file_size(
            ParquetWriterBuilder::new(
                datafusion::parquet::file::properties::WriterProperties::builder().build(),
                Arc::new(delete_schema),
            ),
            table.file_io().clone(),
            DefaultLocationGenerator::new(table.metadata()).unwrap(),
            DefaultFileNameGenerator::new("eq-del".to_string(), None, DataFileFormat::Parquet),
        );
        let mut writer = EqualityDeleteFileWriterBuilder::new(rolling, config)
            .build(None)
            .await
            .unwrap();
        let arrow = Arc::new(schema_to_arrow_schema(&schema).unwrap());
        writer
            .write(
                datafusion::arrow::array::RecordBatch::try_new(
                    arrow,
                    vec![Arc::new(Int64Array::from(vec![3, 5, 7])) as ArrayRef],
                )
                .unwrap(),
            )
            .await
            .unwrap();
        let deletes = writer.close().await.unwrap();
        assert_eq!(deletes.len(), 1);
        assert_eq!(deletes[0].content_type(), DataContentType::EqualityDeletes);

        let mut tasks: Vec<FileScanTask> = table
            .scan()
            .build()
            .unwrap()
            .plan_files()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(tasks.len(), 1);
        tasks[0].deletes.push(FileScanTaskDeleteFile {
            file_path: deletes[0].file_path().to_string(),
            file_size_in_bytes: deletes[0].file_size_in_bytes(),
            file_type: DataContentType::EqualityDeletes,
            partition_spec_id: 0,
            equality_ids: Some(vec![1]),
        });
        let output = Arc::new(schema_to_arrow_schema(&schema).unwrap());
        let exec = IcebergTasksExec {
            reader: ArrowReaderBuilder::new(
                table.file_io().clone(),
                iceberg::Runtime::try_current().unwrap(),
            )
            .build(),
            groups: vec![tasks],
            schema: output.clone(),
            limit: None,
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(output),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
        };
        let batches: Vec<_> = exec
            .execute(0, SessionContext::new().task_ctx())
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let read: Vec<i64> = batches
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
        assert_eq!(read.len(), 97);
        assert!(!read.iter().any(|n| [3, 5, 7].contains(n)), "{read:?}");
    }

    /// Reads `sql` over `t` through a provider, as text; the same again with a column cache, read from Parquet
    /// and then from memory, must answer alike.
    async fn answer(provider: Arc<dyn TableProvider>, sql: &str) -> String {
        let ctx = SessionContext::new();
        ctx.register_table("t", provider.clone()).unwrap();
        let expected = answer_in(&ctx, sql).await;
        let cache = crate::column_cache::ColumnCache::new(1 << 24);
        let cached = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_extension(Arc::new(cache.clone())),
        );
        cached.register_table("t", provider).unwrap();
        assert_eq!(answer_in(&cached, sql).await, expected, "{sql}");
        cache.settle().await;
        assert_eq!(answer_in(&cached, sql).await, expected, "{sql}, cached");
        expected
    }

    #[tokio::test]
    async fn an_added_column_keeps_the_parallel_scan_and_reads_as_iceberg_does() {
        use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_in(&dir).await;
        let table = table_of_longs(catalog.as_ref(), "e").await;
        let table = commit(catalog.as_ref(), table, (1..=100).collect()).await;
        let tx = Transaction::new(&table);
        let tx = tx
            .update_schema()
            .add_column(AddColumn::optional(
                "tag",
                Type::Primitive(PrimitiveType::String),
            ))
            .apply(tx)
            .unwrap();
        let table = tx.commit(catalog.as_ref()).await.unwrap();
        let (sender, rx) = tokio::sync::mpsc::channel(1);
        sender
            .send(Ok(vec![
                Arc::new(Int64Array::from((101..=150).collect::<Vec<i64>>())) as ArrayRef,
                Arc::new(datafusion::arrow::array::StringArray::from_iter(
                    (101..=150).map(|i| (i % 3 != 0).then(|| format!("t{}", i % 4))),
                )) as ArrayRef,
            ]))
            .await
            .unwrap();
        drop(sender);
        let table = append(catalog.as_ref(), table, 1024, rx).await.unwrap();
        assert!(read_by_name(table.metadata()));
        let fast = provider(table.clone(), Files::Own).await.unwrap();
        assert!(
            fast.as_any().downcast_ref::<SnapshotFiles>().is_some(),
            "an added column keeps the parallel scan"
        );
        // Differential: the same answers as iceberg-rust's own field-id reader.
        let reference: Arc<dyn TableProvider> = Arc::new(
            IcebergStaticTableProvider::try_new_from_table(table.clone())
                .await
                .unwrap(),
        );
        for sql in [
            "SELECT count(*), count(tag), sum(n), min(tag), max(tag) FROM t",
            "SELECT tag, count(*) AS c, sum(n) AS s FROM t GROUP BY tag ORDER BY tag NULLS FIRST",
            "SELECT n, tag FROM t WHERE tag IS NULL AND n > 95 ORDER BY n",
            "SELECT n FROM t WHERE tag = 't1' ORDER BY n LIMIT 5",
        ] {
            assert_eq!(
                answer(fast.clone(), sql).await,
                answer(reference.clone(), sql).await,
                "{sql}"
            );
        }

        // A dropped column whose name goes to a new field: files must be read by field id.
        let tx = Transaction::new(&table);
        let tx = tx.update_schema().delete_column("tag").apply(tx).unwrap();
        let table = tx.commit(catalog.as_ref()).await.unwrap();
        let tx = Transaction::new(&table);
        let tx = tx
            .update_schema()
            .add_column(AddColumn::optional(
                "tag",
                Type::Primitive(PrimitiveType::String),
            ))
            .apply(tx)
            .unwrap();
        let table = tx.commit(catalog.as_ref()).await.unwrap();
        assert!(!read_by_name(table.metadata()));
        // As the lakehouse loads it: the current snapshot under the current schema.
        let table = crate::catalog::read_current_schema(table).unwrap();
        let (sender, rx) = tokio::sync::mpsc::channel(1);
        sender
            .send(Ok(vec![
                Arc::new(Int64Array::from((151..=160).collect::<Vec<i64>>())) as ArrayRef,
                Arc::new(datafusion::arrow::array::StringArray::from_iter(
                    (151..=160).map(|i| (i % 2 == 0).then(|| format!("u{i}"))),
                )) as ArrayRef,
            ]))
            .await
            .unwrap();
        drop(sender);
        let table = append(catalog.as_ref(), table, 1024, rx).await.unwrap();
        let by_id = provider(table.clone(), Files::Own).await.unwrap();
        assert!(by_id.as_any().downcast_ref::<IcebergFiles>().is_some());
        let text = answer(
            by_id.clone(),
            "SELECT count(*) AS n, count(tag) AS tags FROM t",
        )
        .await;
        assert!(
            text.contains("| 160 | 5    |"),
            "the old tag values do not show under the new tag, the new ones do: {text}"
        );
        // Over several partitions, the same answers as iceberg-datafusion's single stream.
        let ctx = datafusion::prelude::SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(3),
        );
        ctx.register_table("t", by_id.clone()).unwrap();
        let plan = ctx
            .sql("SELECT n FROM t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        assert_eq!(
            plan.properties().output_partitioning().partition_count(),
            3,
            "three files over three partitions"
        );
        let reference: Arc<dyn TableProvider> = Arc::new(
            IcebergStaticTableProvider::try_new_from_table(table)
                .await
                .unwrap(),
        );
        for sql in [
            "SELECT count(*), count(tag), sum(n), min(n), max(n) FROM t",
            "SELECT n, tag FROM t WHERE n > 95 AND n < 105 ORDER BY n",
            "SELECT n FROM t WHERE n >= 150 ORDER BY n DESC LIMIT 3",
            "SELECT count(*) FROM t WHERE tag IS NULL",
        ] {
            assert_eq!(
                answer(by_id.clone(), sql).await,
                answer(reference.clone(), sql).await,
                "{sql}"
            );
        }
    }

    /// Files of the plan of `sql` over `t` (the scan's file groups, as its display lists them).
    async fn files_planned(ctx: &SessionContext, sql: &str) -> usize {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        text.matches(".parquet").count()
    }

    /// `ns.t` in four files whose bounds all overlap (keys interleaved, as shuffled keys are): file i holds 8j + i
    /// for j < `rows`, so keys 8j + 4 .. 8j + 7 are in no file though within every file's bounds.
    async fn interleaved(dir: &tempfile::TempDir, rows: i64) -> (Arc<dyn Catalog>, Table) {
        let catalog = catalog_in(dir).await;
        let mut table = table_of_longs(catalog.as_ref(), "t").await;
        for i in 0..4 {
            table = commit(
                catalog.as_ref(),
                table,
                (0..rows).map(|j| 8 * j + i).collect(),
            )
            .await;
        }
        (catalog, table)
    }

    #[tokio::test]
    async fn a_lookup_by_key_opens_only_the_files_holding_the_key_once_indexed() {
        use crate::key_index::KeyIndexes;
        let dir = tempfile::tempdir().unwrap();
        let (catalog, table) = interleaved(&dir, 50).await;
        let indexes = KeyIndexes::new(1 << 20);
        let engine = |indexes: Option<&KeyIndexes>| {
            let mut config = datafusion::prelude::SessionConfig::new();
            if let Some(i) = indexes {
                config = config.with_extension(Arc::new(i.clone()));
            }
            SessionContext::new_with_config(config)
        };
        let ctx = engine(Some(&indexes));
        ctx.register_table("t", provider(table.clone(), Files::Own).await.unwrap())
            .unwrap();
        // The first lookup reads every file and starts the index.
        assert_eq!(files_planned(&ctx, "SELECT n FROM t WHERE n = 42").await, 4);
        indexes.settle().await;
        assert_eq!(files_planned(&ctx, "SELECT n FROM t WHERE n = 42").await, 1);
        assert_eq!(
            files_planned(&ctx, "SELECT n FROM t WHERE 42 = n AND n > 0").await,
            1
        );
        // A key in no file: no file opened; a range is not a lookup.
        assert_eq!(files_planned(&ctx, "SELECT n FROM t WHERE n = 45").await, 0);
        assert_eq!(
            files_planned(&ctx, "SELECT n FROM t WHERE n > 390").await,
            4
        );
        // Every key, present or not, answers as without an index (and counts are counted, not taken from the
        // snapshot's statistics).
        let plain = engine(None);
        plain
            .register_table("t", provider(table.clone(), Files::Own).await.unwrap())
            .unwrap();
        for k in -1..=402 {
            for sql in [
                format!("SELECT n FROM t WHERE n = {k}"),
                format!("SELECT count(*) AS c FROM t WHERE n = CAST({k} AS INT)"),
            ] {
                let indexed = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                let expected = plain.sql(&sql).await.unwrap().collect().await.unwrap();
                let show = |b: &[datafusion::arrow::array::RecordBatch]| {
                    datafusion::arrow::util::pretty::pretty_format_batches(b)
                        .unwrap()
                        .to_string()
                };
                assert_eq!(show(&indexed), show(&expected), "{sql}");
            }
        }
        // A new snapshot is a new index: the key added in a fifth file is found there too.
        let table = commit(catalog.as_ref(), table, vec![42, 45]).await;
        let ctx = engine(Some(&indexes));
        ctx.register_table("t", provider(table, Files::Own).await.unwrap())
            .unwrap();
        assert_eq!(files_planned(&ctx, "SELECT n FROM t WHERE n = 45").await, 5);
        indexes.settle().await;
        assert_eq!(files_planned(&ctx, "SELECT n FROM t WHERE n = 45").await, 1);
        assert_eq!(files_planned(&ctx, "SELECT n FROM t WHERE n = 42").await, 2);
        assert_eq!(
            answer_in(&ctx, "SELECT count(*) AS c FROM t WHERE n = 42").await,
            answer_in(&plain, "SELECT 2 AS c").await
        );
        // No budget, no index.
        let off = KeyIndexes::new(0);
        let ctx = engine(Some(&off));
        ctx.register_table(
            "t",
            provider(table_of_reread(&catalog).await, Files::Own)
                .await
                .unwrap(),
        )
        .unwrap();
        files_planned(&ctx, "SELECT n FROM t WHERE n = 42").await;
        off.settle().await;
        assert_eq!(files_planned(&ctx, "SELECT n FROM t WHERE n = 42").await, 5);
    }

    #[tokio::test]
    async fn scans_read_cached_columns_from_memory_and_answer_as_parquet_does() {
        use crate::column_cache::ColumnCache;
        let dir = tempfile::tempdir().unwrap();
        let (catalog, table) = interleaved(&dir, 500).await;
        let engine = |cache: Option<&ColumnCache>| {
            // Small batches: a cached file is handed over in several slices.
            let mut config = datafusion::prelude::SessionConfig::new().with_batch_size(128);
            if let Some(c) = cache {
                config = config.with_extension(Arc::new(c.clone()));
            }
            SessionContext::new_with_config(config)
        };
        let in_memory = |ctx: SessionContext| async move {
            let plan = ctx
                .sql("SELECT n FROM t WHERE n > 100")
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let text = datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string();
            assert!(
                text.contains("partition_sizes") != text.contains(".parquet"),
                "{text}"
            );
            text.contains("partition_sizes")
        };
        let cache = ColumnCache::new(1 << 20);
        let plain = engine(None);
        plain
            .register_table("t", provider(table.clone(), Files::Own).await.unwrap())
            .unwrap();
        let ctx = engine(Some(&cache));
        ctx.register_table("t", provider(table.clone(), Files::Own).await.unwrap())
            .unwrap();
        let queries = [
            "SELECT sum(n) AS s, count(*) AS c, min(n) AS lo, max(n) AS hi FROM t WHERE n > 100",
            "SELECT n FROM t ORDER BY n DESC LIMIT 5",
            "SELECT n FROM t WHERE n = 42",
            "SELECT n % 8 AS file, count(*) AS c FROM t GROUP BY n % 8 ORDER BY file",
            "SELECT count(*) AS c FROM t",
        ];
        // The first scan reads Parquet and starts loading; later ones read memory; answers never change.
        assert!(!in_memory(ctx.clone()).await);
        cache.settle().await;
        assert!(in_memory(ctx.clone()).await);
        for sql in queries {
            assert_eq!(
                answer_in(&ctx, sql).await,
                answer_in(&plain, sql).await,
                "{sql}"
            );
        }
        // Planned with the manifests' statistics, as the Parquet scan is.
        let scan = ctx
            .sql("SELECT n FROM t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        assert_eq!(scan.name(), "CachedColumnsExec");
        let stats = scan.partition_statistics(None).unwrap();
        assert_eq!(stats.num_rows, Precision::Exact(2000));
        assert_eq!(
            stats.column_statistics[0].max_value,
            Precision::Exact(ScalarValue::Int64(Some(8 * 499 + 3)))
        );
        // A new file is not cached yet: the scan reads Parquet until it is.
        let table = commit(catalog.as_ref(), table, vec![42, 4001]).await;
        let (ctx, plain) = (engine(Some(&cache)), engine(None));
        ctx.register_table("t", provider(table.clone(), Files::Own).await.unwrap())
            .unwrap();
        plain
            .register_table("t", provider(table, Files::Own).await.unwrap())
            .unwrap();
        assert!(!in_memory(ctx.clone()).await);
        cache.settle().await;
        assert!(in_memory(ctx.clone()).await);
        for sql in queries {
            assert_eq!(
                answer_in(&ctx, sql).await,
                answer_in(&plain, sql).await,
                "{sql}"
            );
        }
        // No budget, no cache; a table larger than the budget is not loaded.
        for budget in [0, 1000] {
            let small = ColumnCache::new(budget);
            let ctx = engine(Some(&small));
            ctx.register_table(
                "t",
                provider(table_of_reread(&catalog).await, Files::Own)
                    .await
                    .unwrap(),
            )
            .unwrap();
            assert!(!in_memory(ctx.clone()).await);
            small.settle().await;
            assert!(!in_memory(ctx.clone()).await);
        }
    }

    async fn table_of_reread(catalog: &Arc<dyn Catalog>) -> Table {
        catalog
            .load_table(&iceberg::TableIdent::from_strs(["ns", "t"]).unwrap())
            .await
            .unwrap()
    }

    async fn answer_in(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn row_counts_put_the_smaller_table_on_the_build_side_of_a_join() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_in(&dir).await;
        let ctx = SessionContext::new();
        for (name, rows) in [("big", 5000), ("small", 3)] {
            let table = table_of_longs(catalog.as_ref(), name).await;
            let table = commit(catalog.as_ref(), table, (1..=rows).collect()).await;
            ctx.register_table(name, provider(table, Files::Own).await.unwrap())
                .unwrap();
        }
        // Written with the big table first: the optimizer swaps it to the probe side only if it knows the sizes.
        let plan = ctx
            .sql("SELECT count(*) FROM big JOIN small ON big.n = small.n")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        let (small, big) = (text.find("/small/").unwrap(), text.find("/big/").unwrap());
        assert!(text.contains("mode=CollectLeft"), "{text}");
        assert!(
            small < big,
            "the small table is not the build side:\n{text}"
        );
    }
}

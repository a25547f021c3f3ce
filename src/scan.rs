//! How a query reads an Iceberg table: the files of its snapshot, planned by iceberg-rust, scanned by DataFusion's
//! own Parquet reader.
//!
//! iceberg-datafusion's `IcebergTableScan` reads a whole table as one stream (one output partition) and decodes it
//! through iceberg-rust's reader, so a query's scan runs on one core; DataFusion's Parquet scan splits files into
//! byte ranges over all partitions and prunes row groups and pages with statistics. [`provider`] uses the latter
//! when it reads exactly what Iceberg would — data files without delete files, written under the table's only
//! schema (no evolution, so column names mean the same field ids in every file) — and falls back to
//! iceberg-datafusion otherwise. The benchmark (`BENCHMARKS.md`) measures the difference.
//!
//! Invariant: the files read are exactly the data files of the table's current snapshot as iceberg-rust plans
//! them; nothing here lists a directory or takes a path from a query.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef as ArrowSchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{DFSchema, Result as DfResult, Statistics};
use datafusion::datasource::file_format::parquet::transform_schema_to_view;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::scan::FileScanTask;
use iceberg::spec::DataFileFormat;
use iceberg::table::Table;
use iceberg_datafusion::IcebergStaticTableProvider;

/// A read-only provider for the current snapshot of `table`.
pub async fn provider(table: Table) -> Result<Arc<dyn TableProvider>, String> {
    let meta = table.metadata();
    let one_schema = meta.schemas_iter().count() == 1;
    if one_schema && let Some(snapshot_id) = meta.current_snapshot_id() {
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
        let plain = tasks
            .iter()
            .all(|t| t.deletes.is_empty() && t.data_file_format == DataFileFormat::Parquet);
        let local: Option<Vec<PartitionedFile>> = tasks
            .iter()
            .map(|t| {
                t.data_file_path
                    .strip_prefix("file://")
                    .map(|p| PartitionedFile::new(p.to_string(), t.file_size_in_bytes))
            })
            .collect();
        if plain && let Some(files) = local {
            // Strings and binaries as views, as DataFusion reads its own Parquet tables: decoded without copying
            // each value into one buffer, and compared, hashed and grouped on the inlined prefix.
            let schema = Arc::new(transform_schema_to_view(
                &schema_to_arrow_schema(meta.current_schema()).map_err(|e| e.to_string())?,
            ));
            let statistics = snapshot_statistics(&schema, &tasks);
            return Ok(Arc::new(SnapshotFiles {
                schema,
                files,
                statistics,
            }));
        }
    }
    Ok(Arc::new(
        IcebergStaticTableProvider::try_new_from_table(table)
            .await
            .map_err(|e| e.to_string())?,
    ))
}

/// What the snapshot's manifests say of its size, for the optimizer (join order, build sides): the exact row
/// count (each data file's `record_count`) and the bytes of its files (compressed, all columns: a relative
/// measure, hence inexact). DataFusion's own Parquet tables read the same from the files' footers.
fn snapshot_statistics(schema: &ArrowSchemaRef, tasks: &[FileScanTask]) -> Statistics {
    let rows: Option<u64> = tasks.iter().map(|t| t.record_count).sum();
    let bytes: u64 = tasks.iter().map(|t| t.file_size_in_bytes).sum();
    let mut statistics = Statistics::new_unknown(schema);
    if let Some(rows) = rows.and_then(|r| usize::try_from(r).ok()) {
        statistics.num_rows = Precision::Exact(rows);
    }
    if let Ok(bytes) = usize::try_from(bytes) {
        statistics.total_byte_size = Precision::Inexact(bytes);
    }
    statistics
}

/// The Parquet data files of one snapshot (local storage), scanned by DataFusion.
#[derive(Debug)]
struct SnapshotFiles {
    schema: ArrowSchemaRef,
    files: Vec<PartitionedFile>,
    statistics: Statistics,
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
        let mut source = ParquetSource::new(self.schema.clone())
            .with_table_parquet_options(state.table_options().parquet.clone());
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        // One group per file; DataFusion's optimizer splits large files into byte ranges across partitions.
        let groups = self
            .files
            .iter()
            .map(|f| FileGroup::new(vec![f.clone()]))
            .collect();
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(groups)
                .with_statistics(self.statistics.clone())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn a_snapshot_is_read_from_exactly_its_data_files() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_in(&dir).await;
        let table = table_of_longs(catalog.as_ref(), "t").await;
        let first = commit(catalog.as_ref(), table, (1..=100).collect()).await;
        let both = commit(catalog.as_ref(), first.clone(), (101..=150).collect()).await;

        let read = |table: Table| async move {
            let provider = provider(table).await.unwrap();
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
        // Its row count, from the manifests, exactly.
        for (table, rows) in [(first, 100), (both, 150)] {
            let stats = provider(table).await.unwrap().statistics().unwrap();
            assert_eq!(stats.num_rows, Precision::Exact(rows));
        }
    }

    #[tokio::test]
    async fn row_counts_put_the_smaller_table_on_the_build_side_of_a_join() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_in(&dir).await;
        let ctx = SessionContext::new();
        for (name, rows) in [("big", 5000), ("small", 3)] {
            let table = table_of_longs(catalog.as_ref(), name).await;
            let table = commit(catalog.as_ref(), table, (1..=rows).collect()).await;
            ctx.register_table(name, provider(table).await.unwrap())
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

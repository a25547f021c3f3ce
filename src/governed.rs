//! Governed views: what a grant lets a query see of one table, as a table the agent's SQL reads from.
//!
//! A grant narrows a table to some columns (some of them masked) and some rows. [`view`] builds that as a plan of
//! its own — the base scan, the grant's row filter, then the projection with masks — and hands it to the agent's
//! session as a [`GovernedTable`], whose scan runs behind a [`SecurityBarrierExec`].
//!
//! Invariant (the security barrier, as PostgreSQL's `security_barrier` views): **no expression the agent wrote is
//! evaluated on a row the grant's row filter excludes, or on a column value before its mask.** The agent's
//! predicates are never merged with the row filter or pushed below it: the table accepts no filter pushdown, its
//! plan is planned apart from the agent's (so no optimizer rule of the agent's query can reach into it), and the
//! barrier node is opaque to the physical optimizer (no filter, projection, limit or sort pushes through it).
//! Only column selection and a row limit reach the governed plan, and both apply after the row filter. Without
//! this, a failing expression (`1 / CASE WHEN secret > x THEN 0 ELSE 1 END`) evaluated on a whole batch before the
//! filter answers questions about excluded rows through its error.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Statistics;
use datafusion::datasource::{TableType, provider_as_source};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use iceberg::table::Table;

/// How a column's values are hidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnMask {
    /// A salted SHA-256 (hex): equal values stay equal (joins and counts work), values are not revealed. NULL stays
    /// NULL (as `sha256(NULL)` is NULL in SQL), so masked NULLs neither join each other nor count as values.
    Hash,
    /// Replaced by `REDACTED` (strings) or NULL (other types).
    Redact,
    /// Dates and timestamps truncated to the first day of their year.
    YearOnly,
}

/// What a grant lets a query see of one table. Applied in a plan of its own, below any SQL the agent writes.
#[derive(Debug, Clone)]
pub struct Governance {
    /// Columns visible, in order; everything else does not exist for the query.
    pub columns: Vec<String>,
    /// Visible columns whose values are masked.
    pub masks: BTreeMap<String, ColumnMask>,
    /// Only rows whose `column` is one of `values`.
    pub row_filter: Option<(String, Vec<String>)>,
    /// Salt of hashed columns (per grant, so hashes do not link across grants).
    pub salt: String,
}

/// The governed view of `table` under `governance`: the row filter, then the projection with masks.
pub async fn view(
    table: Table,
    governance: &Governance,
    files: crate::scan::Files,
) -> std::result::Result<Arc<dyn TableProvider>, String> {
    let base = crate::scan::provider(table, files).await?;
    let plan = governed_plan(base, governance).map_err(|e| e.to_string())?;
    Ok(Arc::new(GovernedTable { plan }))
}

/// The logical plan of a governed view over `base`.
fn governed_plan(base: Arc<dyn TableProvider>, governance: &Governance) -> Result<LogicalPlan> {
    use datafusion::functions::expr_fn::{concat, date_trunc, encode, sha256};
    use datafusion::logical_expr::{cast, ident, lit};
    use datafusion::scalar::ScalarValue;
    let mut builder = LogicalPlanBuilder::scan("governed", provider_as_source(base), None)?;
    if let Some((column, values)) = &governance.row_filter {
        let list = values.iter().map(|v| lit(v.clone())).collect();
        builder = builder.filter(ident(column.clone()).in_list(list, false))?;
    }
    let schema = builder.schema().clone();
    let mut exprs = Vec::new();
    for name in &governance.columns {
        let (_, field) = schema.qualified_field_with_unqualified_name(name)?;
        let column = ident(name.clone());
        let expr = match governance.masks.get(name) {
            None => column,
            // `concat` skips NULLs: without the CASE every NULL (and every empty string) would hash to one value.
            Some(ColumnMask::Hash) => datafusion::logical_expr::when(
                column.clone().is_null(),
                lit(ScalarValue::Utf8(None)),
            )
            .otherwise(encode(
                sha256(concat(vec![
                    lit(governance.salt.clone()),
                    cast(column, DataType::Utf8),
                ])),
                lit("hex"),
            ))?,
            Some(ColumnMask::Redact)
                if matches!(
                    field.data_type(),
                    DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
                ) =>
            {
                cast(lit("REDACTED"), field.data_type().clone())
            }
            Some(ColumnMask::YearOnly)
                if matches!(
                    field.data_type(),
                    DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
                ) =>
            {
                cast(date_trunc(lit("year"), column), field.data_type().clone())
            }
            // Withheld whole as a typed NULL: a redacted value that is no string, and `year_only` on a column that
            // is no date (a year cannot be kept; reading the value as a date would fail and quote it in the error).
            Some(ColumnMask::Redact | ColumnMask::YearOnly) => cast(
                lit(ScalarValue::try_from(field.data_type())?),
                field.data_type().clone(),
            ),
        };
        exprs.push(expr.alias(name.clone()));
    }
    builder.project(exprs)?.build()
}

/// A table seen through a grant. Its rows come from the governed plan, planned apart from the agent's query at
/// scan time and wrapped in a [`SecurityBarrierExec`]. It takes no filter pushdown (the default of
/// [`TableProvider::supports_filters_pushdown`]), so the agent's predicates stay above it.
#[derive(Debug)]
pub struct GovernedTable {
    plan: LogicalPlan,
}

#[async_trait]
impl TableProvider for GovernedTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.plan.schema().inner().clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        // Always empty: the table supports no filter pushdown.
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut builder = LogicalPlanBuilder::from(self.plan.clone());
        if let Some(indices) = projection {
            // Selecting columns of the view's output evaluates nothing the agent wrote.
            let schema = self.plan.schema();
            let columns: Vec<Expr> = indices
                .iter()
                .map(|&i| Expr::Column(schema.columns()[i].clone()))
                .collect();
            builder = builder.project(columns)?;
        }
        if let Some(n) = limit {
            // A limit above the row filter counts only granted rows.
            builder = builder.limit(0, Some(n))?;
        }
        let inner = state.create_physical_plan(&builder.build()?).await?;
        Ok(Arc::new(SecurityBarrierExec::new(inner)))
    }
}

/// The boundary between a governed plan and the agent's query. A leaf for the optimizer: it has no children to
/// rewrite, accepts no pushed filter, projection, limit or sort (the [`ExecutionPlan`] defaults), and reports no
/// column statistics (bounds of excluded rows would leak through them); only an inexact row count.
#[derive(Debug)]
pub struct SecurityBarrierExec {
    inner: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl SecurityBarrierExec {
    fn new(inner: Arc<dyn ExecutionPlan>) -> SecurityBarrierExec {
        let properties = inner.properties().clone();
        SecurityBarrierExec { inner, properties }
    }
}

impl DisplayAs for SecurityBarrierExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SecurityBarrierExec")
    }
}

impl ExecutionPlan for SecurityBarrierExec {
    fn name(&self) -> &str {
        "SecurityBarrierExec"
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
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "SecurityBarrierExec has no children to replace".to_string(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.inner.execute(partition, context)
    }

    fn partition_statistics(&self, partition: Option<usize>) -> Result<Statistics> {
        let inner = self.inner.partition_statistics(partition)?;
        let mut stats = Statistics::new_unknown(&self.schema());
        stats.num_rows = inner.num_rows.to_inexact();
        Ok(stats)
    }
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, StringArray};
    use datafusion::arrow::record_batch::RecordBatch;

    /// A hashed NULL stays NULL; an empty string still hashes, apart from it.
    #[tokio::test]
    async fn a_hashed_null_stays_null() {
        let values = StringArray::from(vec![Some("a"), None, Some(""), Some("a"), None]);
        let batch = RecordBatch::try_from_iter(vec![("email", Arc::new(values) as _)]).unwrap();
        let base =
            datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        let governance = Governance {
            columns: vec!["email".to_string()],
            masks: [("email".to_string(), ColumnMask::Hash)].into(),
            row_filter: None,
            salt: "s".to_string(),
        };
        let plan = governed_plan(Arc::new(base), &governance).unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let batches = ctx
            .execute_logical_plan(plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let column =
            datafusion::arrow::compute::cast(batches[0].column(0), &DataType::Utf8).unwrap();
        let hashed = column.as_any().downcast_ref::<StringArray>().unwrap();
        let got: Vec<Option<&str>> = hashed.iter().collect();
        assert_eq!(got[1], None);
        assert_eq!(got[4], None);
        assert_eq!(got[0], got[3]);
        let empty = got[2].expect("an empty string hashes");
        assert_eq!(empty.len(), 64);
        assert_ne!(got[0], got[2]);
    }
}

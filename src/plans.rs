//! What one caller's queries reuse while the tables they read do not change: each statement's parse (its text
//! checked, its tables listed), each table's provider (its snapshot's files planned, their statistics read), each
//! statement's optimized plan, and each statement's result.
//!
//! A table's provider is determined by the table's metadata file, the snapshot and schema read, which files a scan
//! may read and the grant's governance (columns, masks, row filter, salt); a statement's plan by its SQL text and
//! the providers of the tables it reads. Both are kept per caller, so how fast a call answers says nothing about
//! another principal's queries. A plan is kept only when planning it again would give the same plan: no function
//! in it depends on the time of the call (`now()`, `current_date`, folded into constants by the optimizer) or is
//! volatile, and no table is rows computed for the call (`parley.audit_log`). Authorization is not cached: every
//! call decides its tables and grant before anything here is looked up, and a revoked grant or a new snapshot
//! changes the key.
//!
//! A result is kept on the same terms as its plan (its statement reads immutable snapshots through fixed grants,
//! and no function in it depends on the call), for the same row and byte caps, when it was read to its end (not
//! cut by the time limit): asking again answers the same rows without running the query. Its audit record, grant
//! and quota accounting are the call's own, as for any query.

use std::sync::Arc;
use std::time::Duration;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};

use crate::query::{Prepared, QueryError, QueryResult, ReadableTable, TableSource};

/// What the kept providers may hold together, estimated from their snapshots' file counts (see
/// [`SourceKey::bytes`]), in KiB.
const PROVIDERS_KIB: u64 = 64 << 10;
/// What the kept plans may hold together, each counted at [`PLAN_BYTES`] plus its text, its constants and its
/// tables' providers, in KiB: a plan may hold 8 MiB of constants (`bounded::MAX_LITERAL_BYTES`).
const PLANS_KIB: u64 = 64 << 10;
/// What a plan is counted at besides its text, constants and providers.
const PLAN_BYTES: u64 = 64 << 10;
/// What a provider is counted at per data or delete file of its snapshot, and for a snapshot whose summary does
/// not say how many it has.
const BYTES_PER_FILE: u64 = 512;
const UNCOUNTED_FILES: u64 = 8192;
/// What a kept result is counted at besides its rows' JSON text (times [`RESULT_JSON_FACTOR`], for the values
/// they are held as) and its statement's text.
const RESULT_BYTES: u64 = 1024;
const RESULT_JSON_FACTOR: u64 = 3;
/// What the kept statements may hold together, each counted at [`STATEMENT_BYTES`] plus
/// [`STATEMENT_TEXT_FACTOR`] times its text (its syntax tree), in KiB.
const STATEMENTS_KIB: u64 = 16 << 10;
const STATEMENT_BYTES: u64 = 4096;
const STATEMENT_TEXT_FACTOR: u64 = 32;
/// An entry not used for this long is dropped (with the memory its files and plan hold).
const IDLE: Duration = Duration::from_secs(600);

/// What makes a table's provider: the same key, the same provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceKey {
    caller: String,
    table: String,
    metadata: String,
    snapshot: Option<i64>,
    schema: i32,
    files: String,
    governance: Option<String>,
    /// What the provider is counted at: its snapshot's files (a function of the metadata file above).
    bytes: u64,
}

/// What makes a statement's parse: the caller (so how fast a call answers says nothing of another principal's
/// statements) and the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StatementKey {
    caller: String,
    sql: String,
}

/// What makes a statement's plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlanKey {
    caller: String,
    sql: String,
    tables: Vec<SourceKey>,
}

/// What makes a statement's result: its plan and the caps it was read with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResultKey {
    plan: PlanKey,
    max_rows: usize,
    max_bytes: usize,
}

/// An optimized plan and the batch size its literals asked for (see `bounded::batch_rows`).
pub struct Planned {
    pub plan: LogicalPlan,
    pub batch_size: usize,
    /// The bytes of constants it holds (`bounded::literal_bytes`).
    pub literal_bytes: usize,
}

/// The engine's caches of providers, plans and results.
#[derive(Clone)]
pub struct Plans {
    statements: moka::sync::Cache<StatementKey, Prepared>,
    providers: moka::sync::Cache<SourceKey, Arc<dyn TableProvider>>,
    plans: moka::sync::Cache<PlanKey, Arc<Planned>>,
    /// `None` when results are not kept (`query.result_cache_bytes = 0`).
    results: Option<moka::sync::Cache<ResultKey, Arc<QueryResult>>>,
}

fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl Plans {
    /// Caches of providers and plans, and of results within `result_bytes` (0: none kept).
    pub fn new(result_bytes: u64) -> Plans {
        Plans {
            statements: moka::sync::Cache::builder()
                .max_capacity(STATEMENTS_KIB)
                .weigher(|key: &StatementKey, _| {
                    kib(STATEMENT_BYTES + STATEMENT_TEXT_FACTOR * key.sql.len() as u64)
                })
                .time_to_idle(IDLE)
                .build(),
            providers: moka::sync::Cache::builder()
                .max_capacity(PROVIDERS_KIB)
                .weigher(|key: &SourceKey, _| kib(key.bytes))
                .time_to_idle(IDLE)
                .build(),
            plans: moka::sync::Cache::builder()
                .max_capacity(PLANS_KIB)
                .weigher(|key: &PlanKey, planned: &Arc<Planned>| {
                    let tables: u64 = key.tables.iter().map(|t| t.bytes).sum();
                    kib(PLAN_BYTES + key.sql.len() as u64 + planned.literal_bytes as u64 + tables)
                })
                .time_to_idle(IDLE)
                .build(),
            results: (result_bytes >= 1024).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(result_bytes / 1024)
                    .weigher(|key: &ResultKey, result: &Arc<QueryResult>| {
                        kib(RESULT_BYTES
                            + key.plan.sql.len() as u64
                            + RESULT_JSON_FACTOR * result.result_bytes as u64)
                    })
                    .time_to_idle(IDLE)
                    .build()
            }),
        }
    }
}

impl Plans {
    /// `caller`'s statement `sql` as `prepare` made it the last time, or as it makes it now (kept when accepted).
    pub fn prepared(
        &self,
        caller: &str,
        sql: &str,
        prepare: impl FnOnce() -> Result<Prepared, QueryError>,
    ) -> Result<Prepared, QueryError> {
        let key = StatementKey {
            caller: caller.to_string(),
            sql: sql.to_string(),
        };
        if let Some(prepared) = self.statements.get(&key) {
            return Ok(prepared);
        }
        let prepared = prepare()?;
        self.statements.insert(key, prepared.clone());
        Ok(prepared)
    }

    /// The key of `table`'s provider for `caller`; `None` for rows computed for this call, which are never kept.
    pub fn source_key(
        caller: &str,
        table: &ReadableTable,
        files: crate::scan::Files,
    ) -> Option<SourceKey> {
        let (iceberg, governance) = match &table.source {
            TableSource::Iceberg(t) => (t, None),
            TableSource::Governed(t, g) => (t, Some(format!("{g:?}"))),
            TableSource::Rows(_) => return None,
        };
        let meta = iceberg.metadata();
        let file_count = meta.current_snapshot().map_or(Some(0), |s| {
            let count = |k: &str| {
                s.summary()
                    .additional_properties
                    .get(k)?
                    .parse::<u64>()
                    .ok()
            };
            Some(count("total-data-files")? + count("total-delete-files").unwrap_or(0))
        });
        Some(SourceKey {
            caller: caller.to_string(),
            table: table.name.to_string(),
            metadata: iceberg.metadata_location()?.to_string(),
            snapshot: meta.current_snapshot_id(),
            schema: meta.current_schema_id(),
            files: format!("{files:?}"),
            governance,
            bytes: 1024 + BYTES_PER_FILE * file_count.unwrap_or(UNCOUNTED_FILES),
        })
    }

    pub fn provider(&self, key: &SourceKey) -> Option<Arc<dyn TableProvider>> {
        self.providers.get(key)
    }

    pub fn keep_provider(&self, key: SourceKey, provider: Arc<dyn TableProvider>) {
        self.providers.insert(key, provider);
    }

    /// The key of a statement's plan, from the keys of every table it reads (`None` when one is not kept).
    pub fn plan_key(caller: &str, sql: &str, tables: Option<Vec<SourceKey>>) -> Option<PlanKey> {
        Some(PlanKey {
            caller: caller.to_string(),
            sql: sql.to_string(),
            tables: tables?,
        })
    }

    pub fn plan(&self, key: &PlanKey) -> Option<Arc<Planned>> {
        self.plans.get(key)
    }

    pub fn keep_plan(&self, key: PlanKey, planned: Planned) {
        self.plans.insert(key, Arc::new(planned));
    }

    /// The key of a statement's result read with these caps (`None` when results are not kept or its plan is
    /// not).
    pub fn result_key(
        &self,
        plan: Option<&PlanKey>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Option<ResultKey> {
        self.results.as_ref()?;
        Some(ResultKey {
            plan: plan?.clone(),
            max_rows,
            max_bytes,
        })
    }

    pub fn result(&self, key: &ResultKey) -> Option<Arc<QueryResult>> {
        self.results.as_ref()?.get(key)
    }

    pub fn keep_result(&self, key: ResultKey, result: QueryResult) {
        if let Some(results) = &self.results {
            results.insert(key, Arc::new(result));
        }
    }

    /// How many providers and plans are kept.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u64) {
        self.providers.run_pending_tasks();
        self.plans.run_pending_tasks();
        (self.providers.entry_count(), self.plans.entry_count())
    }

    /// How many results are kept.
    #[cfg(test)]
    pub fn results_kept(&self) -> u64 {
        self.results.as_ref().map_or(0, |r| {
            r.run_pending_tasks();
            r.entry_count()
        })
    }
}

/// Whether planning `plan` again (as written, before optimization) would give the same plan: every function in
/// it, its subqueries included, is immutable.
pub fn replannable(plan: &LogicalPlan) -> bool {
    let mut same = true;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                let volatility = match e {
                    Expr::ScalarFunction(f) => Some(f.func.signature().volatility),
                    Expr::AggregateFunction(f) => Some(f.func.signature().volatility),
                    Expr::WindowFunction(w) => Some(w.fun.signature().volatility),
                    _ => None,
                };
                if volatility.is_some_and(|v| v != Volatility::Immutable) {
                    same = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if same {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    same
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_full_of_constants_are_kept_within_their_budget() {
        let plans = Plans::new(0);
        let empty = datafusion::logical_expr::LogicalPlanBuilder::empty(false)
            .build()
            .unwrap();
        for i in 0..40 {
            let key = Plans::plan_key("a", &format!("SELECT {i}"), Some(vec![])).unwrap();
            plans.keep_plan(
                key,
                Planned {
                    plan: empty.clone(),
                    batch_size: 1,
                    literal_bytes: crate::bounded::MAX_LITERAL_BYTES,
                },
            );
        }
        plans.plans.run_pending_tasks();
        let kept = plans.plans.entry_count();
        assert!(
            (1..=(PLANS_KIB << 10) / crate::bounded::MAX_LITERAL_BYTES as u64).contains(&kept),
            "{kept} plans of 8 MiB kept"
        );
        assert!(plans.plans.weighted_size() <= PLANS_KIB);
    }
}

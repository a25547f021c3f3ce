//! Query: bounded, read-only SQL over the tables a caller may read, on Apache DataFusion + iceberg-datafusion.
//!
//! Two steps. [`prepare`] parses the SQL, refuses anything but one `SELECT`-style query, and lists the tables it
//! names, so the caller's rights can be checked per table before anything runs. [`execute`] then builds a fresh
//! session per call whose catalog holds **only** those tables (read-only, pinned to the snapshot loaded), with no
//! table functions, no external-table factories, no URL tables, no `information_schema`, a memory pool, no spill
//! unless configured, a timeout, cancellation, and row and byte caps on the result.
//!
//! Invariants: `query` never registers a table it was not handed after authorization; DDL, DML, COPY and
//! statements never reach the engine (refused at parse time and again by `SQLOptions` on the plan).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
    SchemaProvider,
};
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SQLOptions, SessionConfig};
use datafusion::sql::TableReference;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::{FutureExt, StreamExt};
use iceberg::table::Table;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::catalog::TableName;
pub use crate::catalog::open::Naming;
use crate::config::QueryLimits;
pub use crate::governed::{ColumnMask, Governance};

/// Rows counted past a cap before counting stops (the total is then reported as unknown).
const COUNT_PAST_CAP: u64 = 1_000_000;

/// Why a query was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    NotAllowed(String),
    #[error("invalid SQL: {0}")]
    Syntax(String),
    #[error("{0}")]
    Plan(String),
    #[error(
        "the query ran longer than its time limit of {0} ms and was stopped. Filter earlier, aggregate, or add LIMIT."
    )]
    Timeout(u64),
    #[error(
        "the query needs more memory than is free in the server's query memory pool of {budget} bytes (shared by \
         the queries running at once) and was stopped ({detail}). Filter earlier, aggregate to fewer groups, add \
         LIMIT, or retry when fewer queries run."
    )]
    Memory { budget: usize, detail: String },
    #[error(
        "the query did not start: your other queries held all of your {0} slot(s) for its whole time limit of \
         {1} ms (a caller runs at most {0} queries at once, so others always get a turn). Wait for your running \
         queries to finish, or cancel them, and send it again."
    )]
    Queued(usize, u64),
    #[error("the query was cancelled")]
    Cancelled,
    #[error("query failed: {0}")]
    Execution(String),
}

/// The column names a query's text mentions, for attributing its reads to columns (`commits`' consumers).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ColumnsNamed {
    /// Every identifier the query uses as a column (the last part of a compound one), lower-cased.
    pub names: std::collections::BTreeSet<String>,
    /// The query selects `*` or `t.*` somewhere: it reads every column.
    pub wildcard: bool,
}

impl ColumnsNamed {
    /// Whether the query may read `column`.
    pub fn reads(&self, column: &str) -> bool {
        self.wildcard || self.names.contains(&column.to_lowercase())
    }
}

/// The columns `sql` names, or `None` when it does not parse (a reader of unknown columns reads them all).
/// Over-approximates: a name is counted for every table, and aliases count as names.
pub fn columns_named(sql: &str) -> Option<ColumnsNamed> {
    use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, SetExpr, Visit, Visitor};
    use std::ops::ControlFlow;

    struct Collect(ColumnsNamed);
    fn wildcards(body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(select) => select.projection.iter().any(|item| {
                matches!(
                    item,
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                )
            }),
            SetExpr::SetOperation { left, right, .. } => wildcards(left) || wildcards(right),
            SetExpr::Query(q) => wildcards(&q.body),
            // VALUES, TABLE t and the like read whole rows.
            SetExpr::Table(_) => true,
            _ => false,
        }
    }
    impl Visitor for Collect {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            self.0.wildcard |= wildcards(&query.body);
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Identifier(ident) => {
                    self.0.names.insert(ident.value.to_lowercase());
                }
                Expr::CompoundIdentifier(parts) => {
                    if let Some(last) = parts.last() {
                        self.0.names.insert(last.value.to_lowercase());
                    }
                }
                Expr::QualifiedWildcard(..) | Expr::Wildcard(_) => self.0.wildcard = true,
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let statements = DFParser::parse_sql(sql).ok()?;
    let mut collect = Collect(ColumnsNamed::default());
    for statement in &statements {
        match statement {
            Statement::Statement(s) => {
                let _ = s.visit(&mut collect);
            }
            _ => return None,
        }
    }
    Some(collect.0)
}

/// A parsed query and the tables it names.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Shared with the caller's earlier calls of the same text (see [`Engine::prepare`]).
    statement: Arc<Statement>,
    /// The SQL text, as a cached plan's key (see `plans`).
    sql: String,
    /// Tables referenced anywhere in the query (CTE names excluded), deduplicated.
    pub tables: Vec<TableName>,
}

/// Parses `sql`, refuses everything but a single query, and lists the tables it references.
pub fn prepare(sql: &str, limits: &QueryLimits, naming: &Naming) -> Result<Prepared, QueryError> {
    if sql.len() > limits.max_sql_bytes {
        return Err(QueryError::NotAllowed(format!(
            "the SQL text is {} bytes; the limit is {} bytes",
            sql.len(),
            limits.max_sql_bytes
        )));
    }
    if sql.trim().is_empty() {
        return Err(QueryError::NotAllowed(
            "the SQL text is empty; pass one SELECT query".to_string(),
        ));
    }
    let mut statements = DFParser::parse_sql(sql).map_err(|e| {
        let text = strip_df(&e);
        if text.contains("RecursionLimitExceeded") {
            // The parser's own depth limit (nested parentheses, subqueries, unary operators).
            QueryError::NotAllowed(
                "the query nests parentheses, subqueries or unary operators more than 50 levels deep; flatten \
                 it (CTEs with WITH, IN (...) lists) and try again"
                    .to_string(),
            )
        } else {
            QueryError::Syntax(text)
        }
    })?;
    if statements.len() != 1 {
        return Err(QueryError::NotAllowed(format!(
            "pass exactly one SQL statement; got {}",
            statements.len()
        )));
    }
    let Some(statement) = statements.pop_front() else {
        return Err(QueryError::NotAllowed(
            "pass exactly one SQL statement; got none".to_string(),
        ));
    };
    let kind = match &statement {
        Statement::Statement(s) => match s.as_ref() {
            SqlStatement::Query(_) => None,
            other => Some(statement_kind(other)),
        },
        Statement::CreateExternalTable(_) => Some("CREATE EXTERNAL TABLE".to_string()),
        Statement::CopyTo(_) => Some("COPY".to_string()),
        Statement::Explain(_) => Some("EXPLAIN".to_string()),
        Statement::Reset(_) => Some("RESET".to_string()),
    };
    if let Some(kind) = kind {
        return Err(QueryError::NotAllowed(format!(
            "only read-only queries (SELECT, WITH ... SELECT, VALUES) are allowed; {kind} is refused. Parley never \
             changes data, creates objects, reads files or changes settings."
        )));
    }
    if let Statement::Statement(s) = &statement {
        check_depth(s)?;
        check_relations(s)?;
    }
    let (refs, _ctes) = datafusion::sql::resolve::resolve_table_references(&statement, true)
        .map_err(|e| QueryError::Syntax(strip_df(&e)))?;
    let mut tables = Vec::new();
    for r in refs {
        let name = table_name_of(&r, naming)?;
        if !tables.contains(&name) {
            tables.push(name);
        }
    }
    Ok(Prepared {
        statement: Arc::new(statement),
        sql: sql.to_string(),
        tables,
    })
}

/// Deepest nesting of expressions and subqueries a query may have. Each level costs stack in planning and
/// optimization; a chain of 2,000 `+ 1` or `OR` is 2,000 levels deep.
pub const MAX_EXPRESSION_DEPTH: usize = 256;

/// Refuses a statement whose expressions or subqueries nest deeper than [`MAX_EXPRESSION_DEPTH`]. The walk stops
/// at the limit, so it never recurses deeper than that itself.
fn check_depth(statement: &SqlStatement) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::ast::{Expr, Query, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Depth(usize);
    impl Depth {
        fn enter(&mut self) -> ControlFlow<()> {
            self.0 += 1;
            if self.0 > MAX_EXPRESSION_DEPTH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.0 -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.0 -= 1;
            ControlFlow::Continue(())
        }
    }
    match statement.visit(&mut Depth(0)) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(QueryError::NotAllowed(format!(
            "the query nests expressions more than {MAX_EXPRESSION_DEPTH} levels deep (a long chain of operators \
             such as + or OR counts one level per operator). Shorten it: use IN (...) instead of many ORs, \
             aggregate, or split the query."
        ))),
    }
}

/// Refuses table modifiers the SQL parser accepts but the engine would silently ignore, so a query never answers
/// something other than what it asks: `TABLESAMPLE` (every row would be read), time travel (`FOR SYSTEM_TIME AS OF`:
/// the current snapshot would be read), partition selection, table and index hints, JSON paths on a table.
fn check_relations(statement: &SqlStatement) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::ast::{TableFactor, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Relations;
    impl Visitor for Relations {
        type Break = String;
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<String> {
            let sampled = match factor {
                TableFactor::Table {
                    name,
                    sample,
                    version,
                    with_hints,
                    partitions,
                    json_path,
                    index_hints,
                    ..
                } => {
                    let unsupported = if version.is_some() {
                        Some(
                            "time travel (FOR SYSTEM_TIME AS OF, AT, BEFORE) is not supported: a query reads each \
                             table's current snapshot (the result names it). Remove the clause."
                                .to_string(),
                        )
                    } else if !partitions.is_empty() {
                        Some(
                            "partition selection (PARTITION (...)) is not supported; filter on the partition \
                             column in WHERE instead (files outside the filter are skipped)."
                                .to_string(),
                        )
                    } else if !with_hints.is_empty() || !index_hints.is_empty() {
                        Some(
                            "table and index hints (WITH (...), USE/FORCE/IGNORE INDEX) are not supported; remove \
                             them."
                                .to_string(),
                        )
                    } else if json_path.is_some() {
                        Some(
                            "a JSON path on a table is not supported; select the column and use a JSON function."
                                .to_string(),
                        )
                    } else {
                        None
                    };
                    if let Some(why) = unsupported {
                        return ControlFlow::Break(format!("{name}: {why}"));
                    }
                    sample.is_some()
                }
                TableFactor::Derived { sample, .. } => sample.is_some(),
                _ => false,
            };
            if sampled {
                return ControlFlow::Break(
                    "TABLESAMPLE is not supported: the query would read every row, not a sample. Sample with a \
                     filter such as WHERE random() < 0.01, or use LIMIT."
                        .to_string(),
                );
            }
            ControlFlow::Continue(())
        }
    }
    match statement.visit(&mut Relations) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(why) => Err(QueryError::NotAllowed(why)),
    }
}

/// The first word(s) of a statement, for messages ("INSERT", "CREATE TABLE"...).
fn statement_kind(s: &SqlStatement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second] if matches!(first.to_uppercase().as_str(), "CREATE" | "DROP" | "ALTER") => {
            format!("{} {}", first.to_uppercase(), second.to_uppercase())
        }
        [first, ..] => first.to_uppercase(),
        [] => "this statement".to_string(),
    }
}

fn table_name_of(r: &TableReference, naming: &Naming) -> Result<TableName, QueryError> {
    let levels = |schema: &str| schema.split('.').map(str::to_string).collect::<Vec<_>>();
    match (r, naming) {
        (TableReference::Bare { table }, _) => Err(QueryError::Plan(format!(
            "{table:?} is not a table you can query: {}. Table functions and files are not available.",
            naming_hint(naming)
        ))),
        (TableReference::Partial { schema, table }, Naming::Single(_)) => Ok(TableName {
            namespace: levels(schema),
            name: table.to_string(),
        }),
        (
            TableReference::Full {
                catalog,
                schema,
                table,
            },
            Naming::Single(only),
        ) if catalog.as_ref() == only => Ok(TableName {
            namespace: levels(schema),
            name: table.to_string(),
        }),
        (TableReference::Partial { schema, table }, Naming::Federated(_)) => Err(QueryError::Plan(
            format!("{schema}.{table} names no catalog: {}", naming_hint(naming)),
        )),
        (
            TableReference::Full {
                catalog,
                schema,
                table,
            },
            Naming::Federated(catalogs),
        ) if catalogs.iter().any(|c| c == catalog.as_ref()) => {
            let mut namespace = vec![catalog.to_string()];
            namespace.extend(levels(schema));
            Ok(TableName {
                namespace,
                name: table.to_string(),
            })
        }
        (TableReference::Full { catalog, .. }, _) => Err(QueryError::Plan(format!(
            "unknown catalog {catalog:?}; {}",
            naming_hint(naming)
        ))),
    }
}

/// How to name tables, for errors.
fn naming_hint(naming: &Naming) -> String {
    match naming {
        Naming::Single(_) => {
            "name tables as namespace.table (e.g. sales.orders); list_tables shows them".to_string()
        }
        Naming::Federated(catalogs) => format!(
            "name tables as catalog.namespace.table (a nested namespace quoted: lake.\"sales.eu\".orders), the \
             catalog being one of {}; list_tables shows them",
            catalogs.join(", ")
        ),
    }
}

/// The DataFusion catalog and schema a table is registered under, so agents' SQL resolves the names
/// [`table_name_of`] reads.
fn place(naming: &Naming, name: &TableName) -> (String, String) {
    match (naming, name.namespace.split_first()) {
        (Naming::Federated(_), Some((catalog, rest))) => (catalog.clone(), rest.join(".")),
        _ => (naming.default_catalog(), name.namespace_str()),
    }
}

/// A table the caller was authorized to read.
pub struct ReadableTable {
    /// Name as referenced.
    pub name: TableName,
    /// Where its rows come from.
    pub source: TableSource,
}

/// The rows of a readable table.
pub enum TableSource {
    /// An Iceberg table, loaded at the snapshot the query will see.
    Iceberg(Table),
    /// An Iceberg table seen through a grant: only some columns, some masked, some rows.
    Governed(Table, Governance),
    /// Rows Parley computed for this caller (e.g. the audit records they may see).
    Rows(RecordBatch),
}

/// A result column.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Arrow data type, e.g. `Int64`, `Decimal128(12, 2)`, `Utf8`.
    pub data_type: String,
}

/// A table snapshot a query read.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct SnapshotRead {
    /// `namespace.table`.
    pub table: String,
    /// Snapshot id read, a decimal string (absent for a table with no snapshot yet).
    #[serde(serialize_with = "crate::ids::opt_string")]
    #[schemars(with = "Option<String>")]
    pub snapshot_id: Option<i64>,
}

impl SnapshotRead {
    /// `namespace.table@id` (`@none` for a table with no snapshot), as results and audit records show it.
    pub fn label(&self) -> String {
        format!(
            "{}@{}",
            self.table,
            self.snapshot_id
                .map_or("none".to_string(), |i| i.to_string())
        )
    }
}

/// What a query returned.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct QueryResult {
    /// Result columns, in order.
    pub columns: Vec<Column>,
    /// Rows, each an array aligned with `columns`. Decimals are strings (exact); dates and timestamps are ISO
    /// 8601 strings.
    pub rows: Vec<Vec<Value>>,
    /// Rows returned here.
    pub row_count: usize,
    /// True when a cap cut the result.
    pub truncated: bool,
    /// Which cap cut it: `max_rows`, `max_bytes` (the reply's byte budget) or a grant's row quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_by: Option<String>,
    /// Rows the full result has, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_rows: Option<u64>,
    /// Bytes of JSON in `rows`.
    pub result_bytes: usize,
    /// Wall time in milliseconds.
    pub elapsed_ms: u64,
    /// Table snapshots read.
    pub snapshots: Vec<SnapshotRead>,
}

/// The query engine's shared runtime: one memory pool for all the queries a server runs at once, so the process
/// stays within `memory_bytes` of query memory however many clients there are.
///
/// It also holds the session state every query starts from (configuration, functions, optimizer rules), built
/// once: each query clones it and gets a catalog list of its own, so no query sees another's tables.
pub struct Engine {
    limits: QueryLimits,
    naming: Naming,
    base: SessionState,
    /// One permit per query allowed to run at once (`max_concurrent`); a query holds its permit until its work on
    /// the query runtime has ended, not just until its caller gave up on it.
    slots: Arc<tokio::sync::Semaphore>,
    /// Each caller's share of the slots (`max_concurrent_per_caller` permits), taken before a slot: one agent's
    /// queries cannot hold every slot while another's wait. An entry lives while a query of its caller holds or
    /// waits for it.
    shares: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>>,
    /// Catalogs whose own `files_outside_location` overrides `limits.files_outside_location`.
    files_outside: HashMap<String, bool>,
    /// Where queries execute: a runtime of their own, so a CPU-bound operator that does not yield for seconds
    /// (a nested-loop join over a large batch) cannot hold the threads that answer MCP calls, and a time limit or
    /// cancellation is answered when it falls due.
    runtime: QueryRuntime,
    /// Each caller's table providers and plans, reused while their tables do not change (see `plans`).
    plans: crate::plans::Plans,
}

/// A tokio runtime for query execution, shut down without blocking when the engine is dropped (which may happen
/// inside another runtime).
struct QueryRuntime {
    /// Taken when the engine is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl QueryRuntime {
    /// One thread per core. An operator that computes for seconds without yielding keeps its thread even after
    /// its query was stopped (tokio cannot preempt it), so later queries may wait for it; the stopped query's reply
    /// does not. (Twice as many threads let later queries run sooner but cost 64 queued heavy queries 8 time-outs
    /// in the memory benchmark, against none.)
    fn new() -> std::io::Result<QueryRuntime> {
        let threads = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            // Room for deep expression trees (see `MAX_EXPRESSION_DEPTH`); only touched pages are committed.
            .thread_stack_size(64 << 20)
            .thread_name("parley-query")
            .enable_all()
            .build()?;
        Ok(QueryRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts a spawned task when dropped (a query whose caller timed out, was cancelled or failed).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Engine {
    /// An engine with `limits` whose queries name tables as `naming` says; the memory pool is
    /// `limits.memory_bytes`, shared by concurrent queries.
    pub fn new(limits: &QueryLimits, naming: Naming) -> Result<Engine, QueryError> {
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(limits.memory_bytes),
            NonZeroUsize::MIN.saturating_add(4),
        );
        let disk = if limits.spill_to_disk {
            DiskManagerBuilder::default()
        } else {
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled)
        };
        let pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool> = Arc::new(pool);
        let charge = crate::bounded::Charge::new(pool.clone(), limits.memory_bytes);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool)
            .with_disk_manager_builder(disk)
            .build_arc()
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        let config = SessionConfig::new()
            .with_information_schema(false)
            .with_target_partitions(limits.target_partitions.max(1))
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(naming.default_catalog(), "public")
            .with_extension(Arc::new(crate::key_index::KeyIndexes::new(
                limits.key_index_bytes as u64,
            )))
            .with_extension(Arc::new(crate::column_cache::ColumnCache::new(
                limits.cache_bytes as u64,
            )));
        // Table functions (generate_series, range) and external-table factories are dropped: an agent's SQL can
        // reach nothing but the tables a query registers. `with_table_functions` must come after the defaults.
        let mut base = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_table_functions(HashMap::new())
            .with_table_factories(HashMap::new())
            // Nested-loop joins yield between probe slices, so a stopped query stops (see `bounded`).
            .with_physical_optimizer_rule(Arc::new(crate::bounded::YieldingJoins))
            // Leaves hand over batches of at most the batch size, which large literals shrink.
            .with_physical_optimizer_rule(Arc::new(crate::bounded::SmallBatches))
            .build();
        // Integer arithmetic and sums fail on overflow instead of wrapping (see `checked`).
        crate::checked::install(&mut base).map_err(|e| QueryError::Execution(e.to_string()))?;
        // Functions that can build values far larger than their input are refused before they allocate, and what
        // they build is charged to the memory pool; `||` becomes such a function (see `bounded`).
        for f in crate::bounded::bounded_aggregates(base.aggregate_functions(), &charge) {
            datafusion::execution::FunctionRegistry::register_udaf(&mut base, f)
                .map_err(|e| QueryError::Execution(e.to_string()))?;
        }
        let bounded = crate::bounded::bounded_functions(base.scalar_functions(), &charge);
        for f in &bounded {
            datafusion::execution::FunctionRegistry::register_udf(&mut base, f.clone())
                .map_err(|e| QueryError::Execution(e.to_string()))?;
        }
        datafusion::execution::FunctionRegistry::register_function_rewrite(
            &mut base,
            Arc::new(crate::bounded::BoundedCalls::new(&charge, &bounded)),
        )
        .map_err(|e| QueryError::Execution(e.to_string()))?;
        Ok(Engine {
            limits: limits.clone(),
            naming,
            base,
            slots: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            shares: Arc::default(),
            files_outside: HashMap::new(),
            runtime: QueryRuntime::new().map_err(|e| QueryError::Execution(e.to_string()))?,
            plans: crate::plans::Plans::new(limits.result_cache_bytes as u64),
        })
    }

    /// Lets each named catalog's setting decide whether its tables' data files may lie outside their location
    /// (`[[catalogs]] files_outside_location`); other catalogs follow `limits.files_outside_location`.
    pub fn with_files_outside_location(
        mut self,
        catalogs: impl IntoIterator<Item = (String, bool)>,
    ) -> Engine {
        self.files_outside = catalogs.into_iter().collect();
        self
    }

    /// Which data files a scan of `table` may read.
    pub fn files_for(&self, table: &TableName) -> crate::scan::Files {
        let catalog = match &self.naming {
            Naming::Single(only) => Some(only.as_str()),
            Naming::Federated(_) => table.namespace.first().map(String::as_str),
        };
        let allowed = catalog
            .and_then(|c| self.files_outside.get(c).copied())
            .unwrap_or(self.limits.files_outside_location);
        if allowed {
            crate::scan::Files::Any
        } else {
            crate::scan::Files::Own
        }
    }

    /// How many queries one caller may run at once.
    fn share_size(&self) -> usize {
        let slots = self.limits.max_concurrent.max(1);
        self.limits
            .max_concurrent_per_caller
            .unwrap_or(slots - 1)
            .clamp(1, slots)
    }

    /// `caller`'s share of the slots (see `shares`).
    fn share(&self, caller: &str) -> Share {
        let semaphore = self
            .shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(caller.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.share_size())))
            .clone();
        Share {
            semaphore: Some(semaphore),
            permit: None,
            caller: caller.to_string(),
            shares: self.shares.clone(),
        }
    }

    /// [`prepare`] for `caller`, remembered per caller and text while it is used: an agent asking the same
    /// statement again (its most common call) skips parsing and checking it. Refusals are not kept.
    pub fn prepare(&self, caller: &str, sql: &str) -> Result<Prepared, QueryError> {
        self.plans
            .prepared(caller, sql, || prepare(sql, &self.limits, &self.naming))
    }

    /// The limits queries run under.
    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// How queries name tables.
    pub fn naming(&self) -> &Naming {
        &self.naming
    }
}

/// A caller's share of the query slots, and its permit once taken; the caller's entry is dropped with the last
/// share of it.
struct Share {
    semaphore: Option<Arc<tokio::sync::Semaphore>>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    caller: String,
    shares: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>>,
}

impl Drop for Share {
    fn drop(&mut self) {
        drop(self.permit.take());
        drop(self.semaphore.take());
        let mut shares = self
            .shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only the map holds it (checked under the lock every share is taken under): no query holds or waits.
        if shares
            .get(&self.caller)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            shares.remove(&self.caller);
        }
    }
}

/// What the query task sends first: the result's schema, whether its plan may be kept, the batches ready with
/// it, and whether they are all.
struct Head {
    schema: datafusion::arrow::datatypes::SchemaRef,
    kept: bool,
    batches: Vec<Result<RecordBatch, QueryError>>,
    ended: bool,
}

/// Runs a prepared query over exactly `tables` for `caller`, within the engine's limits, returning at most
/// `max_rows` rows and `max_bytes` bytes of rows as JSON (never more than the engine's `max_result_bytes`).
pub async fn execute(
    prepared: Prepared,
    tables: Vec<ReadableTable>,
    engine: &Engine,
    caller: &str,
    max_rows: usize,
    max_bytes: usize,
    cancel: CancellationToken,
) -> Result<QueryResult, QueryError> {
    let limits = &engine.limits;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(limits.timeout_ms);
    let max_bytes = max_bytes.min(limits.max_result_bytes);
    // The tables (and grants) were decided by the caller: what was kept for exactly them may answer. Each table's
    // files are decided once, for its key and for its provider alike.
    let sources: Vec<_> = tables
        .iter()
        .map(|t| {
            let files = engine.files_for(&t.name);
            (crate::plans::Plans::source_key(caller, t, files), files)
        })
        .collect();
    let keys: Option<Vec<_>> = sources.iter().map(|(key, _)| key.clone()).collect();
    let plan_key = crate::plans::Plans::plan_key(caller, &prepared.sql, keys);
    let result_key = engine
        .plans
        .result_key(plan_key.as_ref(), max_rows, max_bytes);
    if let Some(kept) = result_key.as_ref().and_then(|k| engine.plans.result(k)) {
        let mut out = QueryResult::clone(&kept);
        out.elapsed_ms = started.elapsed().as_millis() as u64;
        return Ok(out);
    }
    // Wait for one of the caller's share, then for a slot; the waits count against the query's time limit. Both
    // are held until the query's work has ended.
    let mut share = engine.share(caller);
    let semaphore = share.semaphore.clone();
    share.permit = Some(tokio::select! {
        s = async { semaphore?.acquire_owned().await.ok() } => s.ok_or_else(|| QueryError::Execution("the query slots are closed".into()))?,
        _ = tokio::time::sleep_until(deadline) => return Err(QueryError::Queued(engine.share_size(), limits.timeout_ms)),
        _ = cancel.cancelled() => return Err(QueryError::Cancelled),
    });
    let slot = tokio::select! {
        s = engine.slots.clone().acquire_owned() => s.map_err(|e| QueryError::Execution(e.to_string()))?,
        _ = tokio::time::sleep_until(deadline) => return Err(QueryError::Timeout(limits.timeout_ms)),
        _ = cancel.cancelled() => return Err(QueryError::Cancelled),
    };
    let (mut state, snapshots) = session(tables, sources, engine).await?;
    let planned = plan_key.as_ref().and_then(|k| engine.plans.plan(k));
    let plans = engine.plans.clone();
    // Whatever ends this call — its result, a time limit, cancellation, the caller going away — stops the query's
    // work: operators that compute long between yields check this flag (see `bounded`), since tasks a plan spawned
    // can outlive the stream that was dropped.
    let stopped = crate::bounded::QueryStop::default();
    state.config_mut().set_extension(Arc::new(stopped.clone()));
    let _stop_on_return = stopped.guard();
    // Planning and execution run on the query runtime and hand batches over a channel; this task only waits, so
    // the time limit and cancellation below are observed on time however long an operator computes.
    let (schema_tx, schema_rx) = tokio::sync::oneshot::channel();
    let (batch_tx, mut batches) = tokio::sync::mpsc::channel(2);
    let task_limits = limits.clone();
    let statement = Arc::unwrap_or_clone(prepared.statement);
    let task = engine.runtime.handle().spawn(async move {
        let slots = (slot, share);
        let limits = &task_limits;
        // The query's own state, planned and executed without a copy (a copy clones every function registry).
        let run = async move {
            let (optimized, batch_size, kept) = match planned {
                // Planned before for this caller, these tables and this text, and checked then.
                Some(planned) => (planned.plan.clone(), planned.batch_size, true),
                None => {
                    let plan = state
                        .statement_to_plan(statement)
                        .await
                        .map_err(|e| classify(e, limits))?;
                    SQLOptions::new()
                        .with_allow_ddl(false)
                        .with_allow_dml(false)
                        .with_allow_statements(false)
                        .verify_plan(&plan)
                        .map_err(|e| QueryError::NotAllowed(strip_df(&e)))?;
                    let keep = plan_key.filter(|_| crate::plans::replannable(&plan));
                    // The time `now()` and `current_date` answer, folded into the plan by the optimizer (unset,
                    // they failed with an internal error).
                    state.mark_start_execution();
                    let optimized = state.optimize(&plan).map_err(|e| classify(e, limits))?;
                    // Literals are broadcast to every row of a batch: batches shrink so they fill a bounded size.
                    let literals = crate::bounded::literal_bytes(&optimized);
                    if literals > crate::bounded::MAX_LITERAL_BYTES {
                        return Err(QueryError::NotAllowed(format!(
                            "the query holds {literals} bytes of constants once planned (at most {}); use fewer \
                             or shorter literals",
                            crate::bounded::MAX_LITERAL_BYTES
                        )));
                    }
                    let batch_size =
                        crate::bounded::batch_rows(literals, state.config().batch_size());
                    let kept = keep.is_some();
                    if let Some(key) = keep {
                        plans.keep_plan(
                            key,
                            crate::plans::Planned {
                                plan: optimized.clone(),
                                batch_size,
                                literal_bytes: literals,
                            },
                        );
                    }
                    (optimized, batch_size, kept)
                }
            };
            state.config_mut().options_mut().execution.batch_size = batch_size;
            let physical = state
                .query_planner()
                .create_physical_plan(&optimized, &state)
                .await
                .map_err(|e| classify(e, limits))?;
            let task = Arc::new(datafusion::execution::TaskContext::from(&state));
            datafusion::physical_plan::execute_stream(physical, task)
                .map(|stream| (stream, kept))
                .map_err(|e| classify(e, limits))
        };
        let (mut stream, kept) = match run.await {
            Ok(run) => run,
            Err(e) => {
                let _ = schema_tx.send(Err(e));
                return;
            }
        };
        // The first batches ride with the schema, as many as are ready at once (at most the channel's two), and
        // whether the stream ended with them: a small result wakes the waiting caller once, not once per batch
        // and again at the end.
        let schema = stream.schema();
        let mut head = Vec::new();
        let ended = match stream.next().await {
            None => true,
            Some(first) => {
                let mut ended = first.is_err();
                head.push(first.map_err(|e| classify(e, limits)));
                while !ended && head.len() < 2 {
                    match stream.next().now_or_never() {
                        None => break,
                        Some(None) => ended = true,
                        Some(Some(batch)) => {
                            ended = batch.is_err();
                            head.push(batch.map_err(|e| classify(e, limits)));
                        }
                    }
                }
                ended
            }
        };
        let head = Head {
            schema,
            kept,
            batches: head,
            ended,
        };
        if ended {
            // The query's work has ended: its slot and share are free before its caller has the rows.
            drop((stream, slots));
            let _ = schema_tx.send(Ok(head));
            return;
        }
        if schema_tx.send(Ok(head)).is_err() {
            return;
        }
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| classify(e, limits));
            let failed = batch.is_err();
            if batch_tx.send(batch).await.is_err() || failed {
                return;
            }
        }
    });
    let _abort = AbortOnDrop(task);
    let gone = || QueryError::Execution("the query stopped unexpectedly".to_string());
    let Head {
        schema,
        kept: replannable,
        batches: head,
        ended,
    } = tokio::select! {
        r = schema_rx => r.map_err(|_| gone())??,
        _ = tokio::time::sleep_until(deadline) => return Err(QueryError::Timeout(limits.timeout_ms)),
        _ = cancel.cancelled() => return Err(QueryError::Cancelled),
    };
    let columns: Vec<Column> = schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: type_name(f.data_type()),
        })
        .collect();
    let mut out = QueryResult {
        columns,
        rows: vec![],
        row_count: 0,
        truncated: false,
        truncated_by: None,
        total_rows: None,
        result_bytes: 0,
        elapsed_ms: 0,
        snapshots,
    };
    let mut total: u64 = 0;
    let mut total_known = true;
    // Whether the time limit cut the count short (then the result is not kept: another call may count further).
    let mut timed_out = false;
    let mut head = std::collections::VecDeque::from(head);
    loop {
        let next = if let Some(batch) = head.pop_front() {
            Some(batch)
        } else if ended {
            None
        } else {
            tokio::select! {
            n = batches.recv() => n,
            _ = tokio::time::sleep_until(deadline) => {
                if out.truncated {
                    // The rows to return are complete; only the count of the rest is cut short.
                    total_known = false;
                    timed_out = true;
                    break;
                }
                return Err(QueryError::Timeout(limits.timeout_ms));
            }
            _ = cancel.cancelled() => return Err(QueryError::Cancelled),
            }
        };
        let Some(batch) = next else { break };
        let batch = batch?;
        if out.truncated {
            total += batch.num_rows() as u64;
            if total > out.row_count as u64 + COUNT_PAST_CAP {
                total_known = false;
                break;
            }
            continue;
        }
        append_rows(&batch, &mut out, max_rows, max_bytes, &mut total)?;
    }
    out.row_count = out.rows.len();
    out.total_rows = (total_known).then_some(total);
    out.elapsed_ms = started.elapsed().as_millis() as u64;
    if let Some(key) = result_key.filter(|_| replannable && !timed_out) {
        engine.plans.keep_result(key, out.clone());
    }
    Ok(out)
}

/// A result column's type as agents see it: string and binary views (how tables are scanned, see `scan`) are
/// named as the plain types, which is what they hold.
fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Utf8View => DataType::Utf8.to_string(),
        DataType::BinaryView => DataType::Binary.to_string(),
        other => other.to_string(),
    }
}

/// Appends the rows of `batch` until a cap is reached; counts every row into `total`.
fn append_rows(
    batch: &RecordBatch,
    out: &mut QueryResult,
    max_rows: usize,
    max_bytes: usize,
    total: &mut u64,
) -> Result<(), QueryError> {
    let options = FormatOptions::default().with_null("");
    let formatters: Vec<ArrayFormatter> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<_, _>>()
        .map_err(|e| QueryError::Execution(e.to_string()))?;
    for row in 0..batch.num_rows() {
        *total += 1;
        if out.truncated {
            continue;
        }
        if out.rows.len() >= max_rows {
            out.truncated = true;
            out.truncated_by = Some("max_rows".to_string());
            continue;
        }
        // Each cell is formatted only as far as the bytes left allow: a cell longer than that (a wide struct of
        // long strings costs the engine nothing, and would cost gigabytes as text) means the row does not fit.
        let mut left = max_bytes.saturating_sub(out.result_bytes);
        let values: Option<Vec<Value>> = batch
            .columns()
            .iter()
            .zip(&formatters)
            .map(|(col, fmt)| {
                let value = cell(col.as_ref(), fmt, row, left)?;
                left = left.saturating_sub(value.as_str().map_or(8, str::len));
                Some(value)
            })
            .collect();
        // Each row costs its JSON text plus a separator.
        let size = values
            .as_ref()
            .and_then(|v| serde_json::to_string(v).ok())
            .map_or(usize::MAX, |s| s.len() + 1);
        let Some(values) = values.filter(|_| out.result_bytes.saturating_add(size) <= max_bytes)
        else {
            out.truncated = true;
            out.truncated_by = Some("max_bytes".to_string());
            continue;
        };
        out.result_bytes += size;
        out.rows.push(values);
    }
    Ok(())
}

/// One cell as JSON: numbers and booleans natively, decimals as exact strings, the rest as display strings;
/// `None` when its text is longer than `limit` bytes (formatting stops there).
fn cell(col: &dyn Array, fmt: &ArrayFormatter, row: usize, limit: usize) -> Option<Value> {
    if col.is_null(row) {
        return Some(Value::Null);
    }
    let text = || {
        let mut out = CappedText {
            text: String::new(),
            limit,
        };
        std::fmt::Write::write_fmt(&mut out, format_args!("{}", fmt.value(row)))
            .ok()
            .map(|()| out.text)
    };
    Some(match col.data_type() {
        DataType::Boolean => Value::Bool(col.as_boolean().value(row)),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            text()?.parse::<i64>().map_or(Value::Null, Value::from)
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            text()?.parse::<u64>().map_or(Value::Null, Value::from)
        }
        DataType::Float32 => float(col.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => float(col.as_primitive::<Float64Type>().value(row)),
        _ => Value::String(text()?),
    })
}

/// Text written up to `limit` bytes; writing past it fails, which stops a formatter where it is.
struct CappedText {
    text: String,
    limit: usize,
}

impl std::fmt::Write for CappedText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.text.len() + s.len() > self.limit {
            return Err(std::fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// A fresh, locked-down session state whose catalog holds only `tables`, and the snapshots it reads; `sources` are
/// the tables' provider keys (`None` for one never kept, see `plans`) and the files their scans may read, in order.
async fn session(
    tables: Vec<ReadableTable>,
    sources: Vec<(Option<crate::plans::SourceKey>, crate::scan::Files)>,
    engine: &Engine,
) -> Result<(SessionState, Vec<SnapshotRead>), QueryError> {
    let internal = |e: &dyn std::fmt::Display| QueryError::Execution(e.to_string());
    let mut state = engine.base.clone();
    // The clone shares the base's catalog list: replace it, so this query's tables stay this query's.
    state.register_catalog_list(Arc::new(MemoryCatalogProviderList::new()));
    // (catalog, schema) → the schema's tables; the default catalog always has the (empty) default schema.
    let mut schemas: HashMap<(String, String), Arc<MemorySchemaProvider>> = HashMap::new();
    schemas.insert(
        (engine.naming.default_catalog(), "public".to_string()),
        Arc::new(MemorySchemaProvider::new()),
    );
    let mut snapshots = Vec::new();
    for (t, (key, files)) in tables.into_iter().zip(sources) {
        let cached = key.as_ref().and_then(|k| engine.plans.provider(k));
        if let TableSource::Iceberg(table) | TableSource::Governed(table, _) = &t.source {
            snapshots.push(SnapshotRead {
                table: t.name.to_string(),
                snapshot_id: table.metadata().current_snapshot_id(),
            });
        }
        let provider: Arc<dyn datafusion::catalog::TableProvider> = match cached {
            Some(provider) => provider,
            None => {
                let provider: Arc<dyn datafusion::catalog::TableProvider> = match t.source {
                    TableSource::Iceberg(table) => crate::scan::provider(table, files)
                        .await
                        .map_err(|e| internal(&e))?,
                    TableSource::Governed(table, governance) => {
                        crate::governed::view(table, &governance, files)
                            .await
                            .map_err(|e| internal(&e))?
                    }
                    TableSource::Rows(batch) => Arc::new(
                        datafusion::datasource::MemTable::try_new(
                            batch.schema(),
                            vec![vec![batch]],
                        )
                        .map_err(|e| internal(&e))?,
                    ),
                };
                if let Some(key) = key {
                    engine.plans.keep_provider(key, provider.clone());
                }
                provider
            }
        };
        let schema = schemas
            .entry(place(&engine.naming, &t.name))
            .or_insert_with(|| Arc::new(MemorySchemaProvider::new()));
        schema
            .register_table(t.name.name.clone(), provider)
            .map_err(|e| internal(&e))?;
    }
    let mut catalogs: HashMap<String, Arc<MemoryCatalogProvider>> = HashMap::new();
    for ((catalog, name), schema) in schemas {
        catalogs
            .entry(catalog)
            .or_insert_with(|| Arc::new(MemoryCatalogProvider::new()))
            .register_schema(&name, schema)
            .map_err(|e| internal(&e))?;
    }
    for (name, catalog) in catalogs {
        state.catalog_list().register_catalog(name, catalog);
    }
    Ok((state, snapshots))
}

/// DataFusion's messages start with "Error during planning:" and similar; keep the useful part.
fn strip_df(e: &DataFusionError) -> String {
    let text = e.to_string();
    for prefix in [
        "SQL error: ",
        "Error during planning: ",
        "Schema error: ",
        "This feature is not implemented: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    text
}

fn classify(e: DataFusionError, limits: &QueryLimits) -> QueryError {
    let root = e.find_root();
    if matches!(root, DataFusionError::ResourcesExhausted(_))
        || e.to_string().contains("Resources exhausted")
    {
        return QueryError::Memory {
            budget: limits.memory_bytes,
            detail: strip_df(root)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        };
    }
    match root {
        // An overflow found while folding constants at planning reads as one found while running.
        DataFusionError::Execution(text) if text.starts_with(crate::checked::OVERFLOW) => {
            QueryError::Execution(text.clone())
        }
        DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::SQL(..)
        | DataFusionError::NotImplemented(_) => QueryError::Plan(strip_df(root)),
        _ => QueryError::Execution(strip_df(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cell is formatted only as far as the reply's bytes allow: a struct of 300 copies of one 100 KB string
    /// (30 MB as text, nothing to the engine, which shares the string) cuts the result at once, and rows that fit
    /// are returned as before.
    #[test]
    fn wide_cells_are_formatted_only_as_far_as_the_reply_allows() {
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, StructArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        let long: ArrayRef = Arc::new(StringArray::from(vec![
            "x".repeat(100_000),
            "y".to_string(),
        ]));
        let fields: Vec<(Arc<Field>, ArrayRef)> = (0..300)
            .map(|i| {
                (
                    Arc::new(Field::new(format!("f{i}"), DataType::Utf8, false)),
                    long.clone(),
                )
            })
            .collect();
        let wide: ArrayRef = Arc::new(StructArray::from(fields));
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("wide", wide.data_type().clone(), false),
        ]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![ids, wide]).unwrap();
        let options = FormatOptions::default();
        let fmt = ArrayFormatter::try_new(batch.column(1).as_ref(), &options).unwrap();
        assert_eq!(cell(batch.column(1).as_ref(), &fmt, 0, 8192), None);
        let small = cell(batch.column(1).as_ref(), &fmt, 1, 8192).unwrap();
        assert!(small.as_str().unwrap().starts_with("{f0: y"), "{small}");

        let mut out = QueryResult::default();
        let mut total = 0;
        append_rows(&batch, &mut out, 10, 8192, &mut total).unwrap();
        assert_eq!(total, 2);
        assert!(out.rows.is_empty() && out.truncated);
        assert_eq!(out.truncated_by.as_deref(), Some("max_bytes"));
        // The second row alone fits.
        let mut out = QueryResult::default();
        append_rows(&batch.slice(1, 1), &mut out, 10, 8192, &mut total).unwrap();
        assert_eq!(out.rows.len(), 1);
        assert_eq!(out.rows[0][0], Value::from(2));
        assert!(out.result_bytes <= 8192);
    }

    #[test]
    fn columns_named_by_a_query() {
        let names = |sql: &str| {
            let c = columns_named(sql).unwrap();
            (
                c.names.into_iter().collect::<Vec<_>>().join(","),
                c.wildcard,
            )
        };
        assert_eq!(
            names("SELECT count(*) FROM sales.orders"),
            (String::new(), false)
        );
        assert_eq!(
            names(
                "SELECT o.Status, sum(total_amount) FROM sales.orders o WHERE channel = 'web' GROUP BY 1"
            ),
            ("channel,status,total_amount".to_string(), false)
        );
        assert!(names("SELECT * FROM sales.orders").1);
        assert!(names("SELECT o.* FROM sales.orders o").1);
        assert!(names("WITH x AS (SELECT * FROM sales.orders) SELECT order_id FROM x").1);
        assert!(names("SELECT 1 FROM t WHERE id IN (SELECT * FROM sales.orders)").1);
        assert!(names("SELECT a FROM t UNION ALL SELECT * FROM sales.orders").1);
        assert_eq!(
            names("SELECT x FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.\"Gift\" = t.y)").0,
            "gift,x,y"
        );
        assert!(columns_named("SELEC nonsense").is_none());
        assert!(
            columns_named("SELECT status FROM t")
                .unwrap()
                .reads("STATUS")
        );
    }

    #[tokio::test]
    async fn each_query_sees_only_its_own_tables() {
        let engine = Engine::new(&QueryLimits::default(), Naming::Single("parley".into())).unwrap();
        let batch = one_x(1);
        let table = |name: &str| ReadableTable {
            name: TableName::parse(name).unwrap(),
            source: TableSource::Rows(batch.clone()),
        };
        let context = |(state, _)| datafusion::prelude::SessionContext::new_with_state(state);
        let a = context(
            session(
                vec![table("s.secret")],
                vec![(None, crate::scan::Files::Own)],
                &engine,
            )
            .await
            .unwrap(),
        );
        let b = context(
            session(
                vec![table("s.public")],
                vec![(None, crate::scan::Files::Own)],
                &engine,
            )
            .await
            .unwrap(),
        );
        assert!(a.sql("SELECT x FROM s.secret").await.is_ok());
        assert!(b.sql("SELECT x FROM s.public").await.is_ok());
        // The sessions start from one shared base state; neither may see the other's tables, and the base none.
        assert!(b.sql("SELECT x FROM s.secret").await.is_err());
        assert!(a.sql("SELECT x FROM s.public").await.is_err());
        assert!(engine.base.catalog_list().catalog_names().is_empty());
    }

    /// One row: column `x` holding `value`.
    fn one_x(value: i64) -> RecordBatch {
        use datafusion::arrow::array::{ArrayRef, Int64Array};
        RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![value])) as ArrayRef)])
            .unwrap()
    }

    /// Runs `sql` on `engine`, with the one table `name` read from `source`.
    async fn run_one(
        engine: &Engine,
        sql: &str,
        name: &str,
        source: TableSource,
    ) -> Result<QueryResult, QueryError> {
        run_as(engine, "tester", sql, name, source).await
    }

    /// [`run_one`] for `caller`.
    async fn run_as(
        engine: &Engine,
        caller: &str,
        sql: &str,
        name: &str,
        source: TableSource,
    ) -> Result<QueryResult, QueryError> {
        run_capped(engine, caller, sql, name, source, 10).await
    }

    /// [`run_as`] returning at most `max_rows` rows.
    async fn run_capped(
        engine: &Engine,
        caller: &str,
        sql: &str,
        name: &str,
        source: TableSource,
        max_rows: usize,
    ) -> Result<QueryResult, QueryError> {
        let prepared = prepare(sql, &engine.limits, &engine.naming).unwrap();
        let tables = vec![ReadableTable {
            name: TableName::parse(name).unwrap(),
            source,
        }];
        execute(
            prepared,
            tables,
            engine,
            caller,
            max_rows,
            usize::MAX,
            CancellationToken::new(),
        )
        .await
    }

    #[tokio::test]
    async fn queries_past_the_concurrency_limit_wait_within_their_time_limit() {
        let limits = QueryLimits {
            max_concurrent: 1,
            timeout_ms: 300,
            ..QueryLimits::default()
        };
        let engine = Engine::new(&limits, Naming::Single("parley".into())).unwrap();
        let batch = one_x(7);
        let run = || {
            run_one(
                &engine,
                "SELECT x FROM s.t",
                "s.t",
                TableSource::Rows(batch.clone()),
            )
        };
        // Another query holds the only slot: this one waits, and its time limit ends the wait.
        let held = engine.slots.clone().acquire_owned().await.unwrap();
        assert!(matches!(run().await, Err(QueryError::Timeout(300))));
        drop(held);
        let r = run().await.unwrap();
        assert_eq!(r.rows, vec![vec![Value::from(7)]]);
    }

    /// A caller runs at most `max_concurrent_per_caller` queries at once: while one of its queries holds its
    /// share, its next waits (and says why when its time limit ends the wait), and another caller's runs on a
    /// slot left free. A caller's entry is gone once none of its queries holds or waits for it.
    #[tokio::test]
    async fn one_caller_cannot_hold_every_query_slot() {
        let limits = QueryLimits {
            max_concurrent: 2,
            max_concurrent_per_caller: Some(1),
            timeout_ms: 300,
            ..QueryLimits::default()
        };
        let engine = Engine::new(&limits, Naming::Single("parley".into())).unwrap();
        let batch = one_x(7);
        let run = |caller: &'static str| {
            run_as(
                &engine,
                caller,
                "SELECT x FROM s.t",
                "s.t",
                TableSource::Rows(batch.clone()),
            )
        };
        // A query of `a` runs: it holds a's share and a slot.
        let mut running = engine.share("a");
        running.permit = Some(
            running
                .semaphore
                .clone()
                .unwrap()
                .acquire_owned()
                .await
                .unwrap(),
        );
        let slot = engine.slots.clone().acquire_owned().await.unwrap();
        let e = run("a").await.unwrap_err();
        assert!(matches!(e, QueryError::Queued(1, 300)), "{e}");
        assert!(e.to_string().contains("your other queries"), "{e}");
        let r = run("b").await.unwrap();
        assert_eq!(r.rows, vec![vec![Value::from(7)]]);
        drop((running, slot));
        assert!(engine.shares.lock().unwrap().is_empty());
        assert!(run("a").await.is_ok());
        assert!(engine.shares.lock().unwrap().is_empty());
        // By default a caller may use all slots but one; never fewer than one, never more than all.
        let share = |max_concurrent, per_caller| {
            let limits = QueryLimits {
                max_concurrent,
                max_concurrent_per_caller: per_caller,
                ..QueryLimits::default()
            };
            Engine::new(&limits, Naming::Single("parley".into()))
                .unwrap()
                .share_size()
        };
        assert_eq!(share(4, None), 3);
        assert_eq!(share(1, None), 1);
        assert_eq!(share(4, Some(9)), 4);
        assert_eq!(share(4, Some(0)), 1);
    }

    /// A SQL catalog under `dir` with table `s.people`: ids 1-3, names, emails, countries DE, FR, DE.
    async fn people(dir: &std::path::Path) -> (Arc<dyn iceberg::Catalog>, Table) {
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
        use iceberg::NamespaceIdent;
        use iceberg::spec::{NestedField, PrimitiveType, Type};
        let catalog = crate::catalog::open_sql_catalog(&dir.join("c.db"), &dir.join("w"), "t")
            .await
            .unwrap();
        let ns = NamespaceIdent::new("s".to_string());
        catalog
            .create_namespace(&ns, std::collections::HashMap::new())
            .await
            .unwrap();
        let string = |id, name: &str| {
            NestedField::required(id, name, Type::Primitive(PrimitiveType::String))
        };
        let layout = crate::demo::TableLayout {
            namespace: "s",
            name: "people",
            fields: vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)),
                string(2, "name"),
                string(3, "email"),
                string(4, "country"),
            ],
            partition: None,
            properties: vec![],
        };
        let table = crate::demo::create_table(catalog.as_ref(), layout)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Ok(vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
            Arc::new(StringArray::from(vec![
                "Ann-Marie Longname-Example",
                "Bo",
                "Cy",
            ])),
            Arc::new(StringArray::from(vec!["a@x.de", "b@x.fr", "c@x.de"])),
            Arc::new(StringArray::from(vec!["DE", "FR", "DE"])),
        ]))
        .await
        .unwrap();
        drop(tx);
        let table = crate::demo::append(catalog.as_ref(), table, 1024, rx)
            .await
            .unwrap();
        (catalog, table)
    }

    #[tokio::test]
    async fn a_governed_view_masks_string_columns_and_filters_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (_catalog, table) = people(dir.path()).await;
        let governance = Governance {
            columns: vec!["id".into(), "name".into(), "email".into(), "country".into()],
            masks: [
                ("name".to_string(), ColumnMask::Redact),
                ("email".to_string(), ColumnMask::Hash),
            ]
            .into(),
            row_filter: Some(("country".into(), vec!["DE".into()])),
            salt: "salt".into(),
        };
        let limits = QueryLimits::default();
        let engine = Engine::new(&limits, Naming::Single("parley".into())).unwrap();
        let run = |sql: &'static str, source| run_one(&engine, sql, "s.people", source);
        // Ungoverned, `min` of a string longer than Iceberg's 16-character bounds is the value, not the bound.
        let r = run(
            "SELECT min(name), max(id), count(*) FROM s.people",
            TableSource::Iceberg(table.clone()),
        )
        .await
        .unwrap();
        assert_eq!(
            r.rows,
            vec![vec![
                Value::from("Ann-Marie Longname-Example"),
                Value::from(3),
                Value::from(3)
            ]]
        );
        // A year cannot be kept of a column that is no date: `year_only` there withholds the value (reading it as a
        // date failed on it and quoted it in the error).
        let mut yearly = governance.clone();
        yearly
            .masks
            .insert("country".to_string(), ColumnMask::YearOnly);
        let r = run(
            "SELECT id, country FROM s.people ORDER BY id",
            TableSource::Governed(table.clone(), yearly),
        )
        .await
        .unwrap();
        assert_eq!(
            r.rows,
            vec![
                vec![Value::from(1), Value::Null],
                vec![Value::from(3), Value::Null]
            ]
        );
        let r = run(
            "SELECT id, name, email, country FROM s.people WHERE email <> '' ORDER BY id",
            TableSource::Governed(table, governance),
        )
        .await
        .unwrap();
        let types: Vec<&str> = r.columns.iter().map(|c| c.data_type.as_str()).collect();
        assert_eq!(types, ["Int64", "Utf8", "Utf8", "Utf8"]);
        assert_eq!(r.rows.len(), 2, "{:?}", r.rows);
        for (row, id) in r.rows.iter().zip([1, 3]) {
            assert_eq!(row[0], Value::from(id));
            assert_eq!(row[1], Value::from("REDACTED"));
            let hash = row[2].as_str().unwrap();
            assert!(
                hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()),
                "{hash}"
            );
            assert!(!hash.contains('@'));
            assert_eq!(row[3], Value::from("DE"));
        }
        assert_ne!(r.rows[0][2], r.rows[1][2], "distinct values hash apart");
    }

    #[tokio::test]
    async fn plans_and_tables_are_reused_only_by_one_caller_on_one_snapshot_under_one_grant() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, table) = people(dir.path()).await;
        // Results not kept, so that a statement asked again is planned from what was kept.
        let limits = QueryLimits {
            result_cache_bytes: 0,
            ..QueryLimits::default()
        };
        let engine = Engine::new(&limits, Naming::Single("parley".into())).unwrap();
        let kept = || engine.plans.counts();
        let ids = first_column;
        let sql = "SELECT id FROM s.people ORDER BY id";
        let run = |caller: &'static str, sql: &'static str, source| {
            run_as(&engine, caller, sql, "s.people", source)
        };
        let all = ids(run("a", sql, TableSource::Iceberg(table.clone()))
            .await
            .unwrap());
        assert_eq!(all, [1, 2, 3].map(Value::from));
        assert_eq!(kept(), (1, 1));
        // Asked again: the same answer from what was kept.
        let again = ids(run("a", sql, TableSource::Iceberg(table.clone()))
            .await
            .unwrap());
        assert_eq!(again, all);
        assert_eq!(kept(), (1, 1));
        // Another caller plans its own.
        let other = ids(run("b", sql, TableSource::Iceberg(table.clone()))
            .await
            .unwrap());
        assert_eq!(other, all);
        assert_eq!(kept(), (2, 2));
        // Under a grant, each grant's rows: never another grant's plan or the ungoverned one.
        let grant = |country: &str, salt: &str| Governance {
            columns: vec!["id".into(), "country".into()],
            masks: std::collections::BTreeMap::new(),
            row_filter: Some(("country".into(), vec![country.into()])),
            salt: salt.into(),
        };
        let under = |country, salt| {
            run(
                "a",
                sql,
                TableSource::Governed(table.clone(), grant(country, salt)),
            )
        };
        let de = ids(under("DE", "g1").await.unwrap());
        assert_eq!(de, [1, 3].map(Value::from));
        let fr = ids(under("FR", "g2").await.unwrap());
        assert_eq!(fr, [2].map(Value::from));
        let de = ids(under("DE", "g1").await.unwrap());
        assert_eq!(de, [1, 3].map(Value::from));
        assert_eq!(kept(), (4, 4));
        // A new snapshot is read, not the one planned before.
        let newer = one_more_person(catalog.as_ref(), table).await;
        let after = ids(run("a", sql, TableSource::Iceberg(newer.clone()))
            .await
            .unwrap());
        assert_eq!(after, [1, 2, 3, 4].map(Value::from));
        let de = ids(run(
            "a",
            sql,
            TableSource::Governed(newer.clone(), grant("DE", "g1")),
        )
        .await
        .unwrap());
        assert_eq!(de, [1, 3, 4].map(Value::from));
        assert_eq!(kept(), (6, 6));
        // What depends on the time of the call is planned every time; a statement without tables is kept.
        let now = "SELECT now() FROM s.people LIMIT 1";
        let at = |r: QueryResult| r.rows[0][0].clone();
        let first = at(run("a", now, TableSource::Iceberg(newer.clone()))
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = at(run("a", now, TableSource::Iceberg(newer.clone()))
            .await
            .unwrap());
        assert_ne!(first, second);
        let prepared = prepare("SELECT 1 + 1", &engine.limits, &engine.naming).unwrap();
        let two = run_tableless(&engine, "a", prepared).await;
        assert_eq!(two.rows, [[Value::from(2)]]);
        assert_eq!(kept(), (6, 7));
    }

    /// `prepared` run by `caller` over no table, up to 10 rows.
    async fn run_tableless(engine: &Engine, caller: &str, prepared: Prepared) -> QueryResult {
        execute(
            prepared,
            vec![],
            engine,
            caller,
            10,
            usize::MAX,
            CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    /// A result's first column.
    fn first_column(r: QueryResult) -> Vec<Value> {
        r.rows.into_iter().map(|mut row| row.remove(0)).collect()
    }

    /// Appends one person (id 4, DE) to `table` as a new snapshot.
    async fn one_more_person(catalog: &dyn iceberg::Catalog, table: Table) -> Table {
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Ok(vec![
            Arc::new(Int64Array::from(vec![4])) as ArrayRef,
            Arc::new(StringArray::from(vec!["Di"])),
            Arc::new(StringArray::from(vec!["d@x.de"])),
            Arc::new(StringArray::from(vec!["DE"])),
        ]))
        .await
        .unwrap();
        drop(tx);
        crate::demo::append(catalog, table, 1024, rx).await.unwrap()
    }

    /// A result is answered again without running the query only to the caller it was computed for, on the same
    /// snapshot, under the same grant and with the same caps; never for what depends on the call's time or for rows
    /// computed for the call. Shown by deleting the table's data files: what is answered then was kept.
    #[tokio::test]
    async fn results_are_answered_again_only_for_the_same_caller_snapshot_grant_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, table) = people(dir.path()).await;
        // No decoded columns or key indexes kept: a query that runs reads the files.
        let limits = QueryLimits {
            cache_bytes: 0,
            key_index_bytes: 0,
            ..QueryLimits::default()
        };
        let engine = Engine::new(&limits, Naming::Single("parley".into())).unwrap();
        let kept = || engine.plans.results_kept();
        let ids = first_column;
        let sql = "SELECT id FROM s.people ORDER BY id";
        let run = |caller: &'static str, sql: &'static str, source, max_rows| {
            run_capped(&engine, caller, sql, "s.people", source, max_rows)
        };
        let plain = |t: &Table| TableSource::Iceberg(t.clone());
        assert_eq!(
            ids(run("a", sql, plain(&table), 10).await.unwrap()),
            [1, 2, 3].map(Value::from)
        );
        assert_eq!(kept(), 1);
        // A new snapshot is read, not the result kept for the one before.
        let newer = one_more_person(catalog.as_ref(), table.clone()).await;
        assert_eq!(
            ids(run("a", sql, plain(&newer), 10).await.unwrap()),
            [1, 2, 3, 4].map(Value::from)
        );
        // Each grant its own rows.
        let grant = |country: &str| {
            TableSource::Governed(
                newer.clone(),
                Governance {
                    columns: vec!["id".into(), "country".into()],
                    masks: std::collections::BTreeMap::new(),
                    row_filter: Some(("country".into(), vec![country.into()])),
                    salt: "g".into(),
                },
            )
        };
        assert_eq!(
            ids(run("a", sql, grant("DE"), 10).await.unwrap()),
            [1, 3, 4].map(Value::from)
        );
        assert_eq!(
            ids(run("a", sql, grant("FR"), 10).await.unwrap()),
            [2].map(Value::from)
        );
        assert_eq!(kept(), 4);
        // What depends on the call's time runs every time.
        let now = "SELECT now() FROM s.people LIMIT 1";
        let at = |r: QueryResult| r.rows[0][0].clone();
        let first = at(run("a", now, plain(&newer), 10).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_ne!(first, at(run("a", now, plain(&newer), 10).await.unwrap()));
        assert_eq!(kept(), 4);
        // Rows computed for the call (as `parley.audit_log`'s) are not kept.
        let computed = || TableSource::Rows(one_x(7));
        let x = "SELECT x FROM s.people";
        assert_eq!(
            ids(run("a", x, computed(), 10).await.unwrap()),
            [Value::from(7)]
        );
        assert_eq!(kept(), 4);

        // Without its files a table cannot be read...
        for file in walk(&dir.path().join("w")) {
            if file.extension().is_some_and(|e| e == "parquet") {
                std::fs::remove_file(file).unwrap();
            }
        }
        assert!(run("b", sql, plain(&newer), 10).await.is_err());
        assert!(run("a", sql, plain(&newer), 2).await.is_err());
        assert!(run("a", sql, grant("FR"), 1).await.is_err());
        // ...but the results kept for this caller, snapshot, grant and caps still answer.
        assert_eq!(
            ids(run("a", sql, plain(&newer), 10).await.unwrap()),
            [1, 2, 3, 4].map(Value::from)
        );
        assert_eq!(
            ids(run("a", sql, grant("FR"), 10).await.unwrap()),
            [2].map(Value::from)
        );
        assert!(run("a", sql, plain(&table), 10).await.is_ok());
        // Turned off, nothing is kept.
        let off = Engine::new(
            &QueryLimits {
                result_cache_bytes: 0,
                ..limits.clone()
            },
            Naming::Single("parley".into()),
        )
        .unwrap();
        let prepared = prepare("SELECT 1", &off.limits, &off.naming).unwrap();
        run_tableless(&off, "a", prepared).await;
        assert_eq!(off.plans.results_kept(), 0);
    }

    #[tokio::test]
    async fn a_statement_is_parsed_once_per_caller_and_text_and_refusals_are_not_kept() {
        let engine = Engine::new(&QueryLimits::default(), Naming::Single("parley".into())).unwrap();
        let sql = "SELECT * FROM sales.orders o JOIN sales.customers c ON o.customer_id = c.id";
        let first = engine.prepare("alice", sql).unwrap();
        let again = engine.prepare("alice", sql).unwrap();
        assert!(Arc::ptr_eq(&first.statement, &again.statement));
        assert_eq!(first.tables, again.tables);
        assert_eq!(
            again
                .tables
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>(),
            ["sales.customers", "sales.orders"]
        );
        // Another caller's parse is its own; so is another text.
        let bob = engine.prepare("bob", sql).unwrap();
        assert!(!Arc::ptr_eq(&first.statement, &bob.statement));
        let other = engine.prepare("alice", &format!("{sql} ")).unwrap();
        assert!(!Arc::ptr_eq(&first.statement, &other.statement));
        // A refusal is made again each time, never answered from a kept statement.
        for _ in 0..2 {
            assert!(matches!(
                engine.prepare("alice", "DROP TABLE sales.orders"),
                Err(QueryError::NotAllowed(_))
            ));
        }
        let long = format!(
            "SELECT 1{}",
            " ".repeat(QueryLimits::default().max_sql_bytes)
        );
        assert!(matches!(
            engine.prepare("alice", &long),
            Err(QueryError::NotAllowed(_))
        ));
        // A kept statement runs as a fresh one does (results not kept, so both run in the engine).
        let engine = Engine::new(
            &QueryLimits {
                result_cache_bytes: 0,
                ..QueryLimits::default()
            },
            Naming::Single("parley".into()),
        )
        .unwrap();
        for _ in 0..2 {
            let prepared = engine.prepare("alice", "SELECT 41 + 1 AS answer").unwrap();
            let result = run_tableless(&engine, "alice", prepared).await;
            assert_eq!(result.rows, [[Value::from(42)]]);
        }
    }

    /// Every file under `dir`.
    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    fn refused(sql: &str) -> String {
        match prepare(
            sql,
            &QueryLimits::default(),
            &Naming::Single("parley".into()),
        ) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("{sql} was accepted: {:?}", p.tables),
        }
    }

    #[test]
    fn only_single_queries_pass() {
        for sql in [
            "INSERT INTO sales.orders VALUES (1)",
            "DELETE FROM sales.orders",
            "UPDATE sales.orders SET status = 'x'",
            "DROP TABLE sales.orders",
            "CREATE TABLE x AS SELECT 1",
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/passwd'",
            "COPY (SELECT 1) TO '/tmp/x.parquet'",
            "SET datafusion.execution.target_partitions = 1",
            "EXPLAIN SELECT * FROM sales.orders",
            "SELECT 1; SELECT 2",
        ] {
            let msg = refused(sql);
            assert!(
                msg.contains("refused") || msg.contains("exactly one"),
                "{sql}: {msg}"
            );
        }
    }

    /// A catalog's own `files_outside_location` decides for its tables; the others follow the query setting.
    #[test]
    fn files_outside_location_is_decided_per_catalog() {
        use crate::scan::Files;
        let table = |t: &str| TableName::parse(t).unwrap();
        let federated = Naming::Federated(vec!["a".into(), "b".into(), "c".into()]);
        let mut limits = QueryLimits::default();
        let engine = Engine::new(&limits, federated.clone())
            .unwrap()
            .with_files_outside_location([("a".to_string(), true), ("b".to_string(), false)]);
        assert_eq!(engine.files_for(&table("a.ns.t")), Files::Any);
        assert_eq!(engine.files_for(&table("b.ns.t")), Files::Own);
        assert_eq!(engine.files_for(&table("c.ns.t")), Files::Own);
        limits.files_outside_location = true;
        let engine = Engine::new(&limits, federated)
            .unwrap()
            .with_files_outside_location([("b".to_string(), false)]);
        assert_eq!(engine.files_for(&table("a.ns.t")), Files::Any);
        assert_eq!(engine.files_for(&table("b.ns.t")), Files::Own);
        // One catalog: its setting applies to every table.
        let engine = Engine::new(&QueryLimits::default(), Naming::Single("lake".into()))
            .unwrap()
            .with_files_outside_location([("lake".to_string(), true)]);
        assert_eq!(engine.files_for(&table("ns.t")), Files::Any);
        let engine = Engine::new(&QueryLimits::default(), Naming::Single("lake".into())).unwrap();
        assert_eq!(engine.files_for(&table("ns.t")), Files::Own);
    }

    /// Modifiers the engine would ignore are refused, never silently dropped (a "sample" that reads every row).
    #[test]
    fn ignored_table_modifiers_are_refused() {
        for (sql, says) in [
            (
                "SELECT count(*) FROM sales.orders TABLESAMPLE (1 PERCENT)",
                "TABLESAMPLE",
            ),
            (
                "SELECT count(*) FROM sales.orders TABLESAMPLE BERNOULLI (10)",
                "TABLESAMPLE",
            ),
            (
                "SELECT * FROM sales.orders AS o TABLESAMPLE SYSTEM (5)",
                "TABLESAMPLE",
            ),
            (
                "SELECT * FROM sales.orders TABLESAMPLE (10 ROWS)",
                "TABLESAMPLE",
            ),
            (
                "SELECT * FROM (SELECT 1 AS x) TABLESAMPLE (50 PERCENT)",
                "TABLESAMPLE",
            ),
            (
                "SELECT * FROM sales.customers c JOIN sales.orders o TABLESAMPLE (1 PERCENT) ON true",
                "TABLESAMPLE",
            ),
            (
                "SELECT * FROM sales.orders WHERE id IN (SELECT id FROM sales.orders TABLESAMPLE (1 PERCENT))",
                "TABLESAMPLE",
            ),
            ("SELECT * FROM sales.orders WITH (NOLOCK)", "hints"),
        ] {
            let msg = refused(sql);
            assert!(msg.contains(says), "{sql}: {msg}");
        }
        // The dialect does not parse time travel at all: refused as a syntax error.
        refused("SELECT * FROM sales.orders FOR SYSTEM_TIME AS OF '2020-01-01'");
        // Plain tables, aliases and derived tables still pass.
        for sql in [
            "SELECT * FROM sales.orders AS o",
            "SELECT * FROM (SELECT * FROM sales.orders) t WHERE random() < 0.01",
        ] {
            prepare(
                sql,
                &QueryLimits::default(),
                &Naming::Single("parley".into()),
            )
            .unwrap();
        }
    }

    #[test]
    fn tables_are_listed_without_ctes_and_bare_names_are_refused() {
        let p = prepare(
            "WITH x AS (SELECT * FROM sales.orders) SELECT * FROM x JOIN parley.sales.customers c ON true \
             WHERE EXISTS (SELECT 1 FROM ops.shipments)",
            &QueryLimits::default(),
            &Naming::Single("parley".into()),
        )
        .unwrap();
        let names: Vec<String> = p.tables.iter().map(|t| t.to_string()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for n in ["sales.orders", "sales.customers", "ops.shipments"] {
            assert!(names.contains(&n.to_string()), "{names:?}");
        }
        assert!(refused("SELECT * FROM generate_series(1, 10)").contains("not a table"));
        assert!(refused("SELECT * FROM other.sales.orders").contains("unknown catalog"));
        assert!(refused("SELEC 1").contains("invalid SQL"));
    }

    #[tokio::test]
    async fn with_several_catalogs_tables_are_named_by_catalog_first() {
        let naming = Naming::Federated(vec!["lake".into(), "local".into()]);
        let limits = QueryLimits::default();
        let p = prepare(
            "SELECT * FROM lake.sales.orders o JOIN local.\"ops.eu\".shipments s ON true",
            &limits,
            &naming,
        )
        .unwrap();
        let mut names: Vec<String> = p.tables.iter().map(|t| t.to_string()).collect();
        names.sort();
        assert_eq!(names, ["lake.sales.orders", "local.ops.eu.shipments"]);
        let refused = |sql: &str| prepare(sql, &limits, &naming).unwrap_err().to_string();
        let partial = refused("SELECT * FROM sales.orders");
        assert!(
            partial.contains("names no catalog") && partial.contains("lake, local"),
            "{partial}"
        );
        assert!(refused("SELECT * FROM other.sales.orders").contains("unknown catalog"));
        // Each table resolves under its own catalog in the session.
        let engine = Engine::new(&limits, naming.clone()).unwrap();
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(datafusion::arrow::array::Int64Array::from(vec![7]))
                as datafusion::arrow::array::ArrayRef,
        )])
        .unwrap();
        let tables = ["lake.sales.orders", "local.sales.orders"]
            .iter()
            .map(|n| ReadableTable {
                name: TableName::parse(n).unwrap(),
                source: TableSource::Rows(batch.clone()),
            })
            .collect();
        let prepared = prepare(
            "SELECT a.x + b.x AS s FROM lake.sales.orders a, local.sales.orders b",
            &limits,
            &naming,
        )
        .unwrap();
        let result = execute(
            prepared,
            tables,
            &engine,
            "tester",
            10,
            usize::MAX,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(result.rows[0][0], serde_json::json!(14));
    }
}

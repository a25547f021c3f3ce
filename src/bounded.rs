//! Bounded execution: the parts of a query whose cost is not bounded by the memory pool or by yielding.
//!
//! - Functions whose output can dwarf their input (`repeat`, `lpad`, `rpad`, `array_repeat`, `range`,
//!   `generate_series`) are wrapped by [`Bounded`], which computes the size a call would produce from its
//!   arguments and refuses it before allocating when one value would exceed [`MAX_VALUE_BYTES`] (or
//!   [`MAX_ELEMENTS`] list elements) or a batch's values together [`MAX_BATCH_BYTES`]. Expression results are not
//!   tracked by the memory pool, so without this `repeat('x', 100000)` over a batch allocates gigabytes at once.
//! - A nested-loop join computes, in one poll, every left row against a probe batch, and keeps going while its
//!   filter matches little: a selective inequality join can compute for minutes without returning, so a stopped
//!   query cannot be dropped. And a join below a repartition runs in a task the plan spawned, which outlives the
//!   dropped result stream while it has produced nothing to send. [`YieldingProbe`] hands the join its probe side
//!   in slices of [`PROBE_SLICE_ROWS`], yields to the runtime before each, and fails once the query's
//!   [`QueryStop`] flag is set (when the call that ran it returns), so the join stops within a slice's work.

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::NestedLoopJoinExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::Stream;

/// Largest value one call may produce (a string's bytes).
pub const MAX_VALUE_BYTES: i64 = 1 << 20;
/// Most elements one call may put in one list.
pub const MAX_ELEMENTS: i64 = 1 << 20;
/// Most bytes (or list elements) one call may produce over a whole batch.
pub const MAX_BATCH_BYTES: i64 = 64 << 20;
/// Rows of a nested-loop join's probe side handed over between two yields. A slice costs the join every buffered
/// row against these rows (200,000 × 16 pairs is tens of milliseconds); 256 rows kept a stopped join computing for
/// seconds.
pub const PROBE_SLICE_ROWS: usize = 16;

/// Which size a bounded function's call would produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) * n` bytes.
    Repeat,
    /// `lpad(s, n[, fill])`, `rpad`: `n` characters (up to 4 bytes each).
    Pad,
    /// `array_repeat(x, n)`: `n` elements.
    ArrayRepeat,
    /// `range(start, stop[, step])`, `generate_series`: `(stop - start) / step` elements.
    Series,
}

/// A scalar function refused before it allocates more than the limits allow.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    /// The inner signature, volatile: a call on constants is not folded into one literal at planning (where a
    /// batch has one row), but checked against each batch it is broadcast over.
    signature: Signature,
}

/// The functions to bound, by name.
const BOUNDED: [(&str, Growth); 6] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
];

/// Bounded versions of the functions of `functions` that can amplify their input.
pub fn bounded_functions(
    functions: &std::collections::HashMap<String, Arc<ScalarUDF>>,
) -> Vec<ScalarUDF> {
    BOUNDED
        .iter()
        .filter_map(|(name, growth)| {
            let inner = functions.get(*name)?.clone();
            let signature = Signature {
                volatility: datafusion::logical_expr::Volatility::Volatile,
                ..inner.signature().clone()
            };
            Some(ScalarUDF::new_from_impl(Bounded {
                inner,
                growth: *growth,
                signature,
            }))
        })
        .collect()
}

/// The values of an integer argument, row by row (`None` for NULL or a non-integer argument).
fn integers(arg: &ColumnarValue, rows: usize) -> Result<Vec<Option<i64>>> {
    let array = arg.to_array(rows.max(1))?;
    if !array.data_type().is_integer() {
        return Ok(vec![None; array.len()]);
    }
    let array = datafusion::arrow::compute::cast(&array, &DataType::Int64)?;
    Ok(array.as_primitive::<Int64Type>().iter().collect())
}

/// The byte lengths of a string argument, row by row.
fn lengths(arg: &ColumnarValue, rows: usize) -> Result<Vec<i64>> {
    let array = arg.to_array(rows.max(1))?;
    let array = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
    let strings = array.as_string::<i32>();
    Ok((0..strings.len())
        .map(|i| {
            if strings.is_null(i) {
                0
            } else {
                strings.value(i).len() as i64
            }
        })
        .collect())
}

impl Bounded {
    /// The size each row's value would have, in the unit the limits use.
    fn sizes(&self, args: &ScalarFunctionArgs) -> Result<Vec<i64>> {
        let rows = args.number_rows;
        let arg = |i: usize| {
            args.args.get(i).ok_or_else(|| {
                DataFusionError::Plan(format!("{} takes more arguments", self.inner.name()))
            })
        };
        Ok(match self.growth {
            Growth::Repeat => {
                let lens = lengths(arg(0)?, rows)?;
                let counts = integers(arg(1)?, rows)?;
                lens.iter()
                    .zip(counts)
                    .map(|(l, n)| l.saturating_mul(n.unwrap_or(0).max(0)))
                    .collect()
            }
            Growth::Pad => integers(arg(1)?, rows)?
                .into_iter()
                .map(|n| n.unwrap_or(0).max(0).saturating_mul(4))
                .collect(),
            Growth::ArrayRepeat => integers(arg(1)?, rows)?
                .into_iter()
                .map(|n| n.unwrap_or(0).max(0))
                .collect(),
            Growth::Series => {
                let (start, stop) = if args.args.len() == 1 {
                    (vec![Some(0); rows.max(1)], integers(arg(0)?, rows)?)
                } else {
                    (integers(arg(0)?, rows)?, integers(arg(1)?, rows)?)
                };
                let step = match args.args.get(2) {
                    Some(s) => integers(s, rows)?,
                    None => vec![Some(1); start.len()],
                };
                start
                    .iter()
                    .zip(&stop)
                    .zip(&step)
                    .map(|((a, b), s)| match (a, b, s) {
                        (Some(a), Some(b), Some(s)) if *s != 0 => (b.saturating_sub(*a) / s)
                            .saturating_abs()
                            .saturating_add(1),
                        _ => 0,
                    })
                    .collect()
            }
        })
    }

    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let sizes = self.sizes(args)?;
        let (per_value, unit) = match self.growth {
            Growth::Repeat | Growth::Pad => (MAX_VALUE_BYTES, "bytes"),
            Growth::ArrayRepeat | Growth::Series => (MAX_ELEMENTS, "elements"),
        };
        let largest = sizes.iter().copied().max().unwrap_or(0);
        let total: i64 = sizes.iter().fold(0i64, |t, s| t.saturating_add(*s));
        if largest > per_value || total > MAX_BATCH_BYTES {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} would build {} {unit} (one value may have at most {per_value}, one batch of values at most \
                 {MAX_BATCH_BYTES}); build smaller values",
                self.inner.name(),
                if largest > per_value { largest } else { total },
            )));
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args)?;
        self.inner.invoke_with_args(args)
    }
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
}

/// The physical optimizer rule that puts a [`YieldingProbe`] under every nested-loop join's probe side.
#[derive(Debug, Default)]
pub struct YieldingJoins;

impl PhysicalOptimizerRule for YieldingJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.as_any().downcast_ref::<NestedLoopJoinExec>().is_none() {
                return Ok(Transformed::no(node));
            }
            let children: Vec<Arc<dyn ExecutionPlan>> =
                node.children().into_iter().cloned().collect();
            let [left, right] = <[Arc<dyn ExecutionPlan>; 2]>::try_from(children)
                .map_err(|_| DataFusionError::Internal("a join has two inputs".to_string()))?;
            if right.as_any().is::<YieldingProbe>() {
                return Ok(Transformed::no(node));
            }
            let right: Arc<dyn ExecutionPlan> = Arc::new(YieldingProbe::new(right));
            Ok(Transformed::yes(node.with_new_children(vec![left, right])?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "parley_yielding_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A query's stop flag, set when the call that ran it returns (answered, timed out, cancelled or dropped). Put
/// in the session's config extensions; [`YieldingProbe`] checks it before every slice.
#[derive(Debug, Clone, Default)]
pub struct QueryStop(Arc<std::sync::atomic::AtomicBool>);

impl QueryStop {
    /// Whether the query was stopped.
    pub fn is_stopped(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A guard that stops the query when dropped.
    pub fn guard(&self) -> StopOnDrop {
        StopOnDrop(self.clone())
    }
}

/// Stops its query when dropped.
pub struct StopOnDrop(QueryStop);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Passes its input on in slices of at most [`PROBE_SLICE_ROWS`] rows, yielding to the runtime before each, and
/// ends with an error once its query was stopped: the join above it then returns that error and stops computing,
/// even in a task that nothing awaits any more.
#[derive(Debug)]
pub struct YieldingProbe {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl YieldingProbe {
    fn new(input: Arc<dyn ExecutionPlan>) -> YieldingProbe {
        let properties = input.properties().clone();
        YieldingProbe { input, properties }
    }
}

impl DisplayAs for YieldingProbe {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "YieldingProbe: rows={PROBE_SLICE_ROWS}")
    }
}

impl ExecutionPlan for YieldingProbe {
    fn name(&self) -> &str {
        "YieldingProbe"
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[Arc<dyn ExecutionPlan>; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("YieldingProbe has one input".to_string()))?;
        Ok(Arc::new(YieldingProbe::new(input)))
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let stop = context
            .session_config()
            .get_extension::<QueryStop>()
            .map(|s| (*s).clone())
            .unwrap_or_default();
        Ok(Box::pin(Slices {
            stop,
            input: self.input.execute(partition, context)?,
            pending: None,
            offset: 0,
            yielded: false,
        }))
    }
    fn partition_statistics(
        &self,
        partition: Option<usize>,
    ) -> Result<datafusion::common::Statistics> {
        self.input.partition_statistics(partition)
    }
}

struct Slices {
    stop: QueryStop,
    input: SendableRecordBatchStream,
    /// The batch being handed over, and how far.
    pending: Option<RecordBatch>,
    offset: usize,
    yielded: bool,
}

impl Stream for Slices {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Yield once before every slice: the join above returns Pending, so its task reaches an await point where
        // a stopped query is dropped.
        if self.stop.is_stopped() {
            return Poll::Ready(Some(Err(DataFusionError::Execution(
                "the query was stopped".to_string(),
            ))));
        }
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.pending.is_none() {
            match self.input.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(batch))) => {
                    self.pending = Some(batch);
                    self.offset = 0;
                }
                other => return other,
            }
        }
        let Some(batch) = self.pending.as_ref() else {
            return Poll::Ready(None);
        };
        let rows = batch.num_rows();
        let len = PROBE_SLICE_ROWS.min(rows - self.offset);
        let slice = batch.slice(self.offset, len);
        self.offset += len;
        if self.offset >= rows {
            self.pending = None;
        }
        self.yielded = false;
        Poll::Ready(Some(Ok(slice)))
    }
}

impl RecordBatchStream for Slices {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::TableName;
    use crate::config::QueryLimits;
    use crate::query::{Engine, ReadableTable, TableSource, execute, prepare};
    use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use std::sync::Arc;

    async fn run(sql: &str) -> Result<Vec<Vec<serde_json::Value>>, String> {
        let engine = Engine::new(&QueryLimits::default(), "parley").unwrap();
        let ids: Vec<i64> = (0..10_000).collect();
        let batch =
            RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(ids)) as ArrayRef)])
                .unwrap();
        let prepared = prepare(sql, engine.limits(), "parley").map_err(|e| e.to_string())?;
        let tables = vec![ReadableTable {
            name: TableName::parse("s.t").unwrap(),
            source: TableSource::Rows(batch),
        }];
        execute(
            prepared,
            tables,
            &engine,
            "parley",
            10,
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .map(|r| r.rows)
        .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn functions_that_amplify_their_input_are_refused_before_they_allocate() {
        for sql in [
            "SELECT id, repeat('x', 100000) FROM s.t",
            "SELECT repeat('x', 2000000)",
            "SELECT lpad('a', 5000000)",
            "SELECT rpad('a', 300000, 'b') FROM s.t",
            "SELECT cardinality(array_repeat(1, 5000000))",
            "SELECT unnest(range(0, 50000000))",
            "SELECT cardinality(generate_series(1, 5000000))",
            "SELECT count(*) FROM (SELECT unnest(range(0, 10000)) FROM s.t)",
        ] {
            let e = run(sql).await.expect_err(sql);
            assert!(e.contains("would build"), "{sql}: {e}");
        }
        // Within the limits they answer as before.
        assert_eq!(
            run("SELECT repeat('ab', 3), lpad('7', 3, '0'), rpad('7', 3, '0')").await,
            Ok(vec![vec!["ababab".into(), "007".into(), "700".into()]])
        );
        assert_eq!(
            run("SELECT sum(x) FROM (SELECT unnest(range(0, 5)) AS x)").await,
            Ok(vec![vec![10.into()]])
        );
        assert_eq!(
            run("SELECT count(*) FROM s.t a JOIN s.t b ON a.id < b.id AND b.id < 100").await,
            Ok(vec![vec![4950.into()]])
        );
    }
}

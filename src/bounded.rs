//! Bounded execution: the parts of a query whose cost is not bounded by the memory pool or by yielding.
//!
//! - **Values built by functions are charged to the query memory pool.** Expression results are not operator
//!   state, so DataFusion's pool never sees them: `repeat('x', 100000)` over a batch, or a chain of `||` that
//!   doubles a value at every step, allocated gigabytes under a 256 MiB pool. Every function that can build
//!   variable-width values (strings, binaries, lists) is wrapped by [`Bounded`]: before it runs, it works out
//!   from its arguments' sizes how large its result could be ([`Growth`]) and refuses the call when that exceeds
//!   what the pool has left (or, for functions that build from a count, [`MAX_VALUE_BYTES`] per value and
//!   [`MAX_BATCH_BYTES`] per batch); after it runs, its result's buffers are claimed in the pool until the last
//!   batch holding them is dropped, so the operators that follow (and other queries) see that memory as used.
//!   The `||` operator is rewritten to such a function ([`BoundedCalls`]). Functions that amplify are
//!   volatile, so a call on constants is checked against each batch it would be broadcast over instead of being
//!   folded into one literal at planning.
//! - **Literals broadcast over batches.** A literal in a SELECT list becomes a column as long as the batch.
//!   [`batch_rows`] shrinks a query's batches so that its literals together fill at most [`MAX_BROADCAST_BYTES`]
//!   per batch, and [`MAX_LITERAL_BYTES`] of literals in an optimized plan is the most a query may hold.
//! - A nested-loop join computes, in one poll, every left row against a probe batch, and keeps going while its
//!   filter matches little: a selective inequality join can compute for minutes without returning, so a stopped
//!   query cannot be dropped. And a join below a repartition runs in a task the plan spawned, which outlives the
//!   dropped result stream while it has produced nothing to send. [`YieldingProbe`] hands the join its probe side
//!   in slices of [`PROBE_SLICE_ROWS`], yields to the runtime before each, and fails once the query's
//!   [`QueryStop`] flag is set (when the call that ran it returns), so the join stops within a slice's work.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::NestedLoopJoinExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion_execution::memory_pool::arrow::ArrowMemoryPool;
use futures::Stream;

/// Largest value a function building from a count (`repeat`, `lpad`, `array_repeat`, `range`...) may produce.
pub const MAX_VALUE_BYTES: i64 = 1 << 20;
/// Most elements one call may put in one list.
pub const MAX_ELEMENTS: i64 = 1 << 20;
/// Most bytes (or list elements) a function building from a count may produce over a whole batch.
pub const MAX_BATCH_BYTES: i64 = 64 << 20;
/// Largest value any bounded function may produce from its arguments' data (`concat`, `||`, `replace`...).
pub const MAX_DERIVED_VALUE_BYTES: i64 = 16 << 20;
/// Most bytes the literals of a query may fill in one batch, once broadcast to the batch's rows.
pub const MAX_BROADCAST_BYTES: usize = 16 << 20;
/// Most bytes of literals an optimized plan may hold (constants folded at planning included).
pub const MAX_LITERAL_BYTES: usize = 8 << 20;
/// Most steps a function comparing two strings pairwise (`levenshtein`) may take over one batch (~0.1 s).
pub const MAX_PAIRWISE_STEPS: i64 = 100_000_000;
/// A constant result is broadcast and charged by its function when the batch's copies would exceed this.
const BROADCAST_HERE: i64 = 1 << 20;
/// Rows of a nested-loop join's probe side handed over between two yields. A slice costs the join every buffered
/// row against these rows (200,000 × 16 pairs is tens of milliseconds); 256 rows kept a stopped join computing for
/// seconds.
pub const PROBE_SLICE_ROWS: usize = 16;

/// How large a call's result can be, from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) * n` bytes.
    Repeat,
    /// `lpad(s, n[, fill])`, `rpad`: `n` characters (up to 4 bytes each).
    Pad,
    /// `array_repeat(x, n)`: `n` elements of `x`.
    ArrayRepeat,
    /// `range(start, stop[, step])`, `generate_series`: `(stop - start) / step` elements.
    Series,
    /// `array_resize(list, n[, fill])`: `n` elements.
    Resize,
    /// `concat`, `||`, `array_concat`, `make_array`...: the arguments' sizes added up.
    Sum,
    /// `concat_ws(sep, a, b, ...)`: the arguments, with the separator between each two.
    ConcatWs,
    /// `replace(s, from, to)`: every occurrence of `from` becomes `to`.
    Replace,
    /// `regexp_replace(s, pattern, to[, flags])`: each match becomes `to`, whose group references (`\1`, `$1`)
    /// can each insert all of `s`; every position can match with the `g` flag.
    RegexpReplace,
    /// `regexp_match(s, pattern[, flags])`: a list of the first match and its capture groups, each up to all of
    /// `s` (a group per `(` of the pattern, at most).
    RegexpMatch,
    /// `levenshtein(a, b)`: a number, computed in `len(a) × len(b)` steps, held to [`MAX_PAIRWISE_STEPS`] per
    /// batch (it computes without yielding: a query stopped at its time limit would go on for minutes).
    Pairwise,
    /// `array_to_string(list, sep[, null])`, `array_replace(list, from, to)`: the list, plus the arguments from
    /// this index on for each of its elements.
    PerElement(usize),
    /// Functions whose result is at most this many times their arguments' size (`upper`, `translate`, `encode`).
    Scale(i64),
}

impl Growth {
    /// Whether the result's size is driven by a count the caller writes rather than by data: such calls are
    /// also held to [`MAX_VALUE_BYTES`] per value and [`MAX_BATCH_BYTES`] per batch.
    fn counted(self) -> bool {
        matches!(
            self,
            Growth::Repeat | Growth::Pad | Growth::ArrayRepeat | Growth::Series | Growth::Resize
        )
    }

    /// Whether a call may be folded into a literal at planning. Functions that can amplify are not: a call on
    /// constants is checked against each batch it is broadcast over.
    fn foldable(self) -> bool {
        matches!(self, Growth::Scale(_))
    }
}

/// The functions to bound, by name (aliases follow their function).
const BOUNDED: [(&str, Growth); 29] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
    ("array_resize", Growth::Resize),
    ("concat", Growth::Sum),
    ("array_concat", Growth::Sum),
    ("array_append", Growth::Sum),
    ("array_prepend", Growth::Sum),
    ("make_array", Growth::Sum),
    ("overlay", Growth::Sum),
    ("array_union", Growth::Sum),
    ("concat_ws", Growth::ConcatWs),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("regexp_match", Growth::RegexpMatch),
    ("levenshtein", Growth::Pairwise),
    ("array_to_string", Growth::PerElement(1)),
    ("array_replace", Growth::PerElement(2)),
    ("array_replace_n", Growth::PerElement(2)),
    ("array_replace_all", Growth::PerElement(2)),
    ("upper", Growth::Scale(3)),
    ("lower", Growth::Scale(3)),
    ("initcap", Growth::Scale(3)),
    ("translate", Growth::Scale(4)),
    ("encode", Growth::Scale(2)),
    ("string_to_array", Growth::Scale(16)),
];

/// Where bounded functions charge the values they build: the engine's memory pool.
#[derive(Clone)]
pub struct Charge {
    pool: Arc<dyn MemoryPool>,
    claims: Arc<ArrowMemoryPool>,
    capacity: usize,
}

impl Charge {
    /// Charges to `pool`, which holds at most `capacity` bytes.
    pub fn new(pool: Arc<dyn MemoryPool>, capacity: usize) -> Charge {
        let claims = Arc::new(ArrowMemoryPool::new(
            pool.clone(),
            MemoryConsumer::new("values built by functions"),
        ));
        Charge {
            pool,
            claims,
            capacity,
        }
    }

    /// Bytes the pool has left.
    fn available(&self) -> i64 {
        self.capacity as i64 - self.pool.reserved() as i64
    }
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Charge({} bytes)", self.capacity)
    }
}

/// A scalar function refused before it builds more than the pool has left, whose result is charged to the pool.
#[derive(Debug)]
pub struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    /// The inner signature; volatile unless the growth is [`Growth::foldable`].
    signature: Signature,
    charge: Charge,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.growth == other.growth
    }
}
impl Eq for Bounded {}
impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.growth.hash(state);
    }
}

impl Bounded {
    fn new(inner: Arc<ScalarUDF>, growth: Growth, charge: Charge) -> Bounded {
        let signature = if growth.foldable() {
            inner.signature().clone()
        } else {
            Signature {
                volatility: Volatility::Volatile,
                ..inner.signature().clone()
            }
        };
        Bounded {
            inner,
            growth,
            signature,
            charge,
        }
    }
}

/// Bounded versions of the functions of `functions` that can build large values, charging `charge`.
pub fn bounded_functions(
    functions: &std::collections::HashMap<String, Arc<ScalarUDF>>,
    charge: &Charge,
) -> Vec<Arc<ScalarUDF>> {
    BOUNDED
        .iter()
        .filter_map(|(name, growth)| {
            let inner = functions.get(*name)?.clone();
            Some(Arc::new(ScalarUDF::new_from_impl(Bounded::new(
                inner,
                *growth,
                charge.clone(),
            ))))
        })
        .collect()
}

/// Aggregates whose state is one value that grows with every row (`string_agg`, `array_agg`): DataFusion
/// charges their state to the pool only after a batch was added, and a growing value reallocates to twice its
/// capacity first, so two partial aggregates can overshoot the pool by several times its size before either is
/// stopped. [`BoundedAggregate`] refuses a batch whose growth the pool has no room for, before it is added.
const GROWING_AGGREGATES: [&str; 2] = ["string_agg", "array_agg"];

/// [`GROWING_AGGREGATES`] present in `functions`, wrapped to check growth against the pool first.
pub fn bounded_aggregates(
    functions: &std::collections::HashMap<String, Arc<datafusion::logical_expr::AggregateUDF>>,
    charge: &Charge,
) -> Vec<Arc<datafusion::logical_expr::AggregateUDF>> {
    GROWING_AGGREGATES
        .iter()
        .filter_map(|name| {
            let inner = functions.get(*name)?.clone();
            Some(Arc::new(
                datafusion::logical_expr::AggregateUDF::new_from_impl(BoundedAggregate {
                    inner,
                    charge: charge.clone(),
                }),
            ))
        })
        .collect()
}

/// An aggregate whose accumulators check each batch's growth against the pool before adding it.
#[derive(Debug)]
pub struct BoundedAggregate {
    inner: Arc<datafusion::logical_expr::AggregateUDF>,
    charge: Charge,
}

impl PartialEq for BoundedAggregate {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}
impl Eq for BoundedAggregate {}
impl Hash for BoundedAggregate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl BoundedAggregate {
    fn wrap(
        &self,
        inner: Arc<datafusion::logical_expr::AggregateUDF>,
    ) -> Arc<datafusion::logical_expr::AggregateUDF> {
        Arc::new(datafusion::logical_expr::AggregateUDF::new_from_impl(
            BoundedAggregate {
                inner,
                charge: self.charge.clone(),
            },
        ))
    }
}

impl datafusion::logical_expr::AggregateUDFImpl for BoundedAggregate {
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
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }
    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }
    fn accumulator(
        &self,
        acc_args: datafusion::logical_expr::function::AccumulatorArgs,
    ) -> Result<Box<dyn datafusion::logical_expr::Accumulator>> {
        Ok(Box::new(BoundedAccumulator {
            inner: self.inner.accumulator(acc_args)?,
            charge: self.charge.clone(),
            name: self.inner.name().to_string(),
        }))
    }
    fn state_fields(
        &self,
        args: datafusion::logical_expr::function::StateFieldsArgs,
    ) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }
    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn datafusion::logical_expr::AggregateUDFImpl>>> {
        let inner = self
            .inner
            .as_ref()
            .clone()
            .with_beneficial_ordering(beneficial_ordering)?;
        Ok(inner.map(|inner| {
            Arc::new(BoundedAggregate {
                inner: Arc::new(inner),
                charge: self.charge.clone(),
            }) as Arc<dyn datafusion::logical_expr::AggregateUDFImpl>
        }))
    }
    fn order_sensitivity(&self) -> datafusion::logical_expr::utils::AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }
    fn reverse_expr(&self) -> datafusion::logical_expr::ReversedUDAF {
        match self.inner.reverse_udf() {
            datafusion::logical_expr::ReversedUDAF::Reversed(udf) => {
                datafusion::logical_expr::ReversedUDAF::Reversed(self.wrap(udf))
            }
            other => other,
        }
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn supports_null_handling_clause(&self) -> bool {
        self.inner.supports_null_handling_clause()
    }
    fn supports_within_group_clause(&self) -> bool {
        self.inner.supports_within_group_clause()
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
}

/// See [`BoundedAggregate`].
#[derive(Debug)]
struct BoundedAccumulator {
    inner: Box<dyn datafusion::logical_expr::Accumulator>,
    charge: Charge,
    name: String,
}

impl BoundedAccumulator {
    /// Refuses adding `values` when the state could grow (to twice its size, as a growing value reallocates)
    /// past what the pool has left.
    fn check(&self, values: &[ArrayRef]) -> Result<()> {
        let incoming: usize = values.iter().map(|a| a.get_array_memory_size()).sum();
        if incoming == 0 {
            return Ok(());
        }
        let current = self.inner.size();
        let projected = current
            .saturating_add(incoming)
            .max(current.saturating_mul(2));
        let growth = projected.saturating_sub(current) as i64;
        let available = self.charge.available();
        if growth > available {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} would build a value of about {projected} bytes, more than the query memory pool has left \
                 ({} bytes); aggregate fewer or shorter values",
                self.name,
                available.max(0)
            )));
        }
        Ok(())
    }
}

impl datafusion::logical_expr::Accumulator for BoundedAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.check(values)?;
        self.inner.update_batch(values)
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.inner.evaluate()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.check(states)?;
        self.inner.merge_batch(states)
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(values)
    }
    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
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

/// An argument's size row by row: its bytes, and its elements if it is a list (1 otherwise).
struct Sizes {
    bytes: Vec<i64>,
    elements: Vec<i64>,
}

/// The bytes a scalar takes once it is a value in an array.
fn scalar_bytes(value: &ScalarValue) -> i64 {
    match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.len() as i64,
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b)) => b.len() as i64,
        other => other
            .size()
            .saturating_sub(std::mem::size_of::<ScalarValue>())
            .max(8) as i64,
    }
}

/// Per-row byte lengths of a string or binary array, if it is one.
fn byte_lengths(array: &dyn Array) -> Option<Vec<i64>> {
    let rows = 0..array.len();
    Some(match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            rows.map(|i| a.value_length(i) as i64).collect()
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            rows.map(|i| a.value_length(i)).collect()
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            rows.map(|i| a.views()[i] as u32 as i64).collect()
        }
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            rows.map(|i| a.value_length(i) as i64).collect()
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            rows.map(|i| a.value_length(i)).collect()
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            rows.map(|i| a.views()[i] as u32 as i64).collect()
        }
        _ => return None,
    })
}

/// An argument's sizes without broadcasting it: a scalar's size is repeated for each row.
fn sizes(arg: &ColumnarValue, rows: usize) -> Sizes {
    let rows = rows.max(1);
    let array = match arg {
        ColumnarValue::Scalar(value) => {
            let elements = match value {
                ScalarValue::List(l) => l.value_length(0) as i64,
                ScalarValue::LargeList(l) => l.value_length(0),
                ScalarValue::FixedSizeList(l) => l.value_length() as i64,
                _ => 1,
            };
            return Sizes {
                bytes: vec![scalar_bytes(value); rows],
                elements: vec![elements; rows],
            };
        }
        ColumnarValue::Array(array) => array,
    };
    if let Some(bytes) = byte_lengths(array.as_ref()) {
        let elements = vec![1; bytes.len()];
        return Sizes { bytes, elements };
    }
    let per_element =
        |values: &ArrayRef| (values.get_array_memory_size() / values.len().max(1)).max(1) as i64;
    let (elements, width): (Vec<i64>, i64) = match array.data_type() {
        DataType::List(_) => {
            let l = array.as_list::<i32>();
            (
                (0..l.len()).map(|i| l.value_length(i) as i64).collect(),
                per_element(l.values()),
            )
        }
        DataType::LargeList(_) => {
            let l = array.as_list::<i64>();
            (
                (0..l.len()).map(|i| l.value_length(i)).collect(),
                per_element(l.values()),
            )
        }
        DataType::FixedSizeList(_, n) => {
            let l = array.as_fixed_size_list();
            (vec![*n as i64; l.len()], per_element(l.values()))
        }
        _ => (
            vec![1; array.len()],
            (array.get_array_memory_size() / array.len().max(1)).max(1) as i64,
        ),
    };
    let bytes = elements.iter().map(|e| e.saturating_mul(width)).collect();
    Sizes { bytes, elements }
}

/// The pattern's group references a replacement holds (`\1`, `$1`, `${name}`), each of which can insert a whole
/// match; unknown (`None`) when the replacement differs by row.
fn group_references(arg: Option<&ColumnarValue>) -> Option<i64> {
    match arg {
        Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))))
        | Some(ColumnarValue::Scalar(ScalarValue::LargeUtf8(Some(s))))
        | Some(ColumnarValue::Scalar(ScalarValue::Utf8View(Some(s)))) => {
            Some(s.chars().filter(|c| *c == '\\' || *c == '$').count() as i64)
        }
        _ => None,
    }
}

/// Whether `regexp_replace`'s flags may ask for every match to be replaced.
fn replaces_all(arg: Option<&ColumnarValue>) -> bool {
    match arg {
        None => false,
        Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))))
        | Some(ColumnarValue::Scalar(ScalarValue::LargeUtf8(Some(s))))
        | Some(ColumnarValue::Scalar(ScalarValue::Utf8View(Some(s)))) => s.contains('g'),
        Some(ColumnarValue::Scalar(_)) => false,
        Some(ColumnarValue::Array(_)) => true,
    }
}

/// What one call would build: each row's bytes and elements.
struct Estimate {
    bytes: Vec<i64>,
    elements: Vec<i64>,
}

impl Bounded {
    /// The size each row's value could have.
    fn estimate(&self, args: &ScalarFunctionArgs) -> Result<Estimate> {
        let rows = args.number_rows.max(1);
        let arg = |i: usize| {
            args.args.get(i).ok_or_else(|| {
                DataFusionError::Plan(format!("{} takes more arguments", self.inner.name()))
            })
        };
        let count = |i: usize| -> Result<Vec<i64>> {
            Ok(integers(arg(i)?, rows)?
                .into_iter()
                .map(|n| n.unwrap_or(0).max(0))
                .collect())
        };
        let all: Vec<Sizes> = args.args.iter().map(|a| sizes(a, rows)).collect();
        let total_of = |from: usize, row: usize| -> i64 {
            all.iter()
                .skip(from)
                .fold(0i64, |t, s| t.saturating_add(s.bytes[row]))
        };
        let ones = vec![1i64; rows];
        Ok(match self.growth {
            Growth::Repeat => {
                let n = count(1)?;
                let s = &sizes(arg(0)?, rows).bytes;
                Estimate {
                    bytes: (0..rows).map(|r| s[r].saturating_mul(n[r])).collect(),
                    elements: ones,
                }
            }
            Growth::Pad => Estimate {
                bytes: count(1)?.into_iter().map(|n| n.saturating_mul(4)).collect(),
                elements: ones,
            },
            Growth::ArrayRepeat => {
                let n = count(1)?;
                let s = &sizes(arg(0)?, rows).bytes;
                Estimate {
                    bytes: (0..rows)
                        .map(|r| s[r].saturating_add(8).saturating_mul(n[r]))
                        .collect(),
                    elements: n,
                }
            }
            Growth::Resize => {
                let n = count(1)?;
                let width = match args.args.get(2) {
                    Some(fill) => sizes(fill, rows).bytes,
                    None => vec![8; rows],
                };
                let s = &sizes(arg(0)?, rows).bytes;
                Estimate {
                    bytes: (0..rows)
                        .map(|r| s[r].saturating_add(n[r].saturating_mul(width[r].max(8))))
                        .collect(),
                    elements: n,
                }
            }
            Growth::Series => {
                let (start, stop) = if args.args.len() == 1 {
                    (vec![Some(0); rows], integers(arg(0)?, rows)?)
                } else {
                    (integers(arg(0)?, rows)?, integers(arg(1)?, rows)?)
                };
                let step = match args.args.get(2) {
                    Some(s) => integers(s, rows)?,
                    None => vec![Some(1); start.len()],
                };
                let elements: Vec<i64> = start
                    .iter()
                    .zip(&stop)
                    .zip(&step)
                    .map(|((a, b), s)| match (a, b, s) {
                        (Some(a), Some(b), Some(s)) if *s != 0 => (b.saturating_sub(*a) / s)
                            .saturating_abs()
                            .saturating_add(1),
                        _ => 0,
                    })
                    .collect();
                Estimate {
                    bytes: elements.iter().map(|e| e.saturating_mul(8)).collect(),
                    elements,
                }
            }
            Growth::Sum => Estimate {
                bytes: (0..rows).map(|r| total_of(0, r)).collect(),
                elements: (0..rows)
                    .map(|r| {
                        all.iter()
                            .fold(0i64, |t, s| t.saturating_add(s.elements[r]))
                    })
                    .collect(),
            },
            Growth::ConcatWs => {
                let separators = args.args.len().saturating_sub(2) as i64;
                let sep = &sizes(arg(0)?, rows).bytes;
                Estimate {
                    bytes: (0..rows)
                        .map(|r| total_of(1, r).saturating_add(sep[r].saturating_mul(separators)))
                        .collect(),
                    elements: ones,
                }
            }
            Growth::Replace => {
                let (s, from, to) = (
                    &all[0].bytes,
                    &sizes(arg(1)?, rows).bytes,
                    &sizes(arg(2)?, rows).bytes,
                );
                Estimate {
                    bytes: (0..rows)
                        .map(|r| {
                            let occurrences = s[r] / from[r].max(1) + 1;
                            s[r].saturating_add(occurrences.saturating_mul(to[r]))
                        })
                        .collect(),
                    elements: ones,
                }
            }
            Growth::RegexpReplace => {
                let (s, to) = (&all[0].bytes, &sizes(arg(2)?, rows).bytes);
                let references = group_references(args.args.get(2));
                let global = replaces_all(args.args.get(3));
                Estimate {
                    bytes: (0..rows)
                        .map(|r| {
                            let matches = if global { s[r].saturating_add(1) } else { 1 };
                            let each = to[r]
                                .saturating_add(references.unwrap_or(to[r]).saturating_mul(s[r]));
                            s[r].saturating_add(matches.saturating_mul(each))
                        })
                        .collect(),
                    elements: ones,
                }
            }
            Growth::RegexpMatch => {
                let s = &all[0].bytes;
                let patterns = Strings::of(arg(1)?)?;
                let parts: Vec<i64> = (0..rows)
                    .map(|r| patterns.get(r).map_or(0, |p| p.matches('(').count() as i64) + 1)
                    .collect();
                Estimate {
                    bytes: (0..rows)
                        .map(|r| s[r].saturating_add(8).saturating_mul(parts[r]))
                        .collect(),
                    elements: parts,
                }
            }
            Growth::Pairwise => {
                let (a, b) = (&all[0].bytes, &sizes(arg(1)?, rows).bytes);
                let steps =
                    (0..rows).fold(0i64, |t, r| t.saturating_add(a[r].saturating_mul(b[r])));
                if steps > MAX_PAIRWISE_STEPS {
                    // Time, not memory: reported as a refused call, not as the memory pool running out.
                    return Err(DataFusionError::Execution(format!(
                        "{} would take about {steps} steps over one batch (at most {MAX_PAIRWISE_STEPS}); compare \
                         shorter strings, or fewer rows",
                        self.inner.name()
                    )));
                }
                Estimate {
                    bytes: vec![8; rows],
                    elements: ones,
                }
            }
            Growth::PerElement(from) => {
                let list = sizes(arg(0)?, rows);
                Estimate {
                    bytes: (0..rows)
                        .map(|r| {
                            list.bytes[r].saturating_add(
                                list.elements[r]
                                    .saturating_mul(total_of(from, r).saturating_add(8)),
                            )
                        })
                        .collect(),
                    elements: list.elements,
                }
            }
            Growth::Scale(k) => Estimate {
                bytes: (0..rows)
                    .map(|r| total_of(0, r).saturating_mul(k).saturating_add(16))
                    .collect(),
                elements: (0..rows)
                    .map(|r| total_of(0, r).saturating_add(1))
                    .collect(),
            },
        })
    }

    /// Refuses a call whose result could exceed the limits, before it allocates.
    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let estimate = self.estimate(args)?;
        let largest = estimate.bytes.iter().copied().max().unwrap_or(0);
        let total: i64 = estimate
            .bytes
            .iter()
            .fold(0i64, |t, s| t.saturating_add(*s));
        let name = self.inner.name();
        let refuse = |what: String| {
            Err(DataFusionError::ResourcesExhausted(format!(
                "{name} would build {what}; build smaller values, or over fewer rows"
            )))
        };
        if self.growth.counted() {
            let elements = estimate.elements.iter().copied().max().unwrap_or(0);
            if elements > MAX_ELEMENTS {
                return refuse(format!(
                    "a list of {elements} elements (at most {MAX_ELEMENTS})"
                ));
            }
            if largest > MAX_VALUE_BYTES {
                return refuse(format!(
                    "a value of {largest} bytes (at most {MAX_VALUE_BYTES})"
                ));
            }
            if total > MAX_BATCH_BYTES {
                return refuse(format!(
                    "{total} bytes in one batch (at most {MAX_BATCH_BYTES})"
                ));
            }
        } else if largest > MAX_DERIVED_VALUE_BYTES {
            return refuse(format!(
                "a value of {largest} bytes (at most {MAX_DERIVED_VALUE_BYTES})"
            ));
        }
        // A result is built in buffers that may double as they grow: room for twice the estimate.
        let available = self.charge.available();
        if total.saturating_mul(2) > available {
            return refuse(format!(
                "up to {total} bytes in one batch, and room for twice that is more than the query memory left \
                 ({} bytes)",
                available.max(0)
            ));
        }
        Ok(())
    }

    /// Charges a result's buffers to the pool for as long as they live; refuses it when the pool is over. A
    /// large constant result is broadcast here, where it is charged, rather than by the operator that uses it.
    fn charge(&self, result: ColumnarValue, rows: usize) -> Result<ColumnarValue> {
        let result = match result {
            ColumnarValue::Scalar(value)
                if rows > 1
                    && scalar_bytes(&value).saturating_mul(rows as i64) > BROADCAST_HERE =>
            {
                ColumnarValue::Array(value.to_array_of_size(rows)?)
            }
            other => other,
        };
        if let ColumnarValue::Array(array) = &result {
            claim(&array.to_data(), self.charge.claims.as_ref());
            if self.charge.available() < 0 {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "{} built {} bytes, more than the query memory left; build smaller values, or over fewer rows",
                    self.inner.name(),
                    array.get_array_memory_size()
                )));
            }
        }
        Ok(result)
    }
}

/// Registers every buffer of `data` (its children's included) with `pool` until the buffer is dropped.
fn claim(data: &datafusion::arrow::array::ArrayData, pool: &ArrowMemoryPool) {
    for buffer in data.buffers() {
        buffer.claim(pool);
    }
    if let Some(nulls) = data.nulls() {
        nulls.claim(pool);
    }
    for child in data.child_data() {
        claim(child, pool);
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
        let rows = args.number_rows;
        let result = self.inner.invoke_with_args(args)?;
        self.charge(result, rows)
    }
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
}

/// SQL's `a || b` on strings: NULL when either side is NULL, else the two strings joined. Planned as a function
/// ([`BoundedCalls`]) so it is bounded like `concat`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct StringConcat {
    signature: Signature,
}

/// The string type two `||` operands are joined in, as DataFusion's own coercion picks it.
fn concat_type(types: &[DataType]) -> DataType {
    if types.contains(&DataType::LargeUtf8) {
        DataType::LargeUtf8
    } else if types.contains(&DataType::Utf8View) {
        DataType::Utf8View
    } else {
        DataType::Utf8
    }
}

impl ScalarUDFImpl for StringConcat {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn name(&self) -> &str {
        "||"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(concat_type(arg_types))
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let common = concat_type(arg_types);
        Ok(vec![common; arg_types.len()])
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [left, right] = args.args.as_slice() else {
            return Err(DataFusionError::Internal("|| joins two values".to_string()));
        };
        let scalars =
            matches!(left, ColumnarValue::Scalar(_)) && matches!(right, ColumnarValue::Scalar(_));
        let rows = if scalars { 1 } else { args.number_rows };
        let (left, right) = (Strings::of(left)?, Strings::of(right)?);
        let bytes: usize = (0..rows)
            .map(|r| match (left.get(r), right.get(r)) {
                (Some(a), Some(b)) => a.len() + b.len(),
                _ => 0,
            })
            .sum();
        let values = (0..rows).map(|r| match (left.get(r), right.get(r)) {
            (Some(a), Some(b)) => {
                let mut joined = String::with_capacity(a.len() + b.len());
                joined.push_str(a);
                joined.push_str(b);
                Some(joined)
            }
            _ => None,
        });
        // Built in the type the operands have, at its final size: no copy of the operands or the result.
        let joined: ArrayRef = match args.return_field.data_type() {
            DataType::Utf8View => {
                let mut b = datafusion::arrow::array::StringViewBuilder::with_capacity(rows);
                values.for_each(|v| b.append_option(v));
                Arc::new(b.finish())
            }
            DataType::LargeUtf8 => {
                let mut b =
                    datafusion::arrow::array::LargeStringBuilder::with_capacity(rows, bytes);
                values.for_each(|v| b.append_option(v));
                Arc::new(b.finish())
            }
            _ => {
                let mut b = datafusion::arrow::array::StringBuilder::with_capacity(rows, bytes);
                values.for_each(|v| b.append_option(v));
                Arc::new(b.finish())
            }
        };
        if scalars {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &joined, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(joined))
        }
    }
}

/// One `||` operand's strings, read in place whatever its string type (a constant is the same for every row).
enum Strings {
    Constant(Option<String>),
    Utf8(datafusion::arrow::array::StringArray),
    LargeUtf8(datafusion::arrow::array::LargeStringArray),
    View(datafusion::arrow::array::StringViewArray),
}

impl Strings {
    fn of(value: &ColumnarValue) -> Result<Strings> {
        Ok(match value {
            ColumnarValue::Scalar(s) => Strings::Constant(match s.cast_to(&DataType::Utf8)? {
                ScalarValue::Utf8(v) => v,
                _ => None,
            }),
            ColumnarValue::Array(a) => match a.data_type() {
                DataType::Utf8 => Strings::Utf8(a.as_string::<i32>().clone()),
                DataType::LargeUtf8 => Strings::LargeUtf8(a.as_string::<i64>().clone()),
                DataType::Utf8View => Strings::View(a.as_string_view().clone()),
                _ => Strings::Utf8(
                    datafusion::arrow::compute::cast(a, &DataType::Utf8)?
                        .as_string::<i32>()
                        .clone(),
                ),
            },
        })
    }

    fn get(&self, row: usize) -> Option<&str> {
        fn at<'a>(
            a: &'a dyn Array,
            value: impl Fn(usize) -> &'a str,
            row: usize,
        ) -> Option<&'a str> {
            (!a.is_null(row)).then(|| value(row))
        }
        match self {
            Strings::Constant(v) => v.as_deref(),
            Strings::Utf8(a) => at(a, |r| a.value(r), row),
            Strings::LargeUtf8(a) => at(a, |r| a.value(r), row),
            Strings::View(a) => at(a, |r| a.value(r), row),
        }
    }
}

/// Makes every call of a function that can build large values a bounded call: `a || b` on strings (and values
/// cast to strings) becomes the bounded `||` function, and a call the SQL planner made to a function directly
/// rather than through the registry (lists joined with `||` become `array_concat`) is swapped for the bounded
/// version of that function.
#[derive(Debug)]
pub struct BoundedCalls {
    concat: Arc<ScalarUDF>,
    functions: std::collections::HashMap<String, Arc<ScalarUDF>>,
}

impl BoundedCalls {
    /// The rewrite to `functions` (from [`bounded_functions`]), charging `charge`.
    pub fn new(charge: &Charge, functions: &[Arc<ScalarUDF>]) -> BoundedCalls {
        let inner = Arc::new(ScalarUDF::new_from_impl(StringConcat {
            signature: Signature::user_defined(Volatility::Immutable),
        }));
        BoundedCalls {
            concat: Arc::new(ScalarUDF::new_from_impl(Bounded::new(
                inner,
                Growth::Sum,
                charge.clone(),
            ))),
            functions: functions
                .iter()
                .flat_map(|f| {
                    std::iter::once(f.name().to_string())
                        .chain(f.aliases().iter().cloned())
                        .map(move |name| (name, f.clone()))
                })
                .collect(),
        }
    }
}

impl FunctionRewrite for BoundedCalls {
    fn name(&self) -> &str {
        "parley_bounded_calls"
    }

    fn rewrite(
        &self,
        expr: Expr,
        schema: &DFSchema,
        _config: &ConfigOptions,
    ) -> Result<Transformed<Expr>> {
        match expr {
            Expr::ScalarFunction(mut call)
                if !call.func.inner().as_any().is::<Bounded>()
                    && self.functions.contains_key(call.func.name()) =>
            {
                call.func = self.functions[call.func.name()].clone();
                Ok(Transformed::yes(Expr::ScalarFunction(call)))
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::StringConcat,
                right,
            }) => {
                let joinable = |e: &Expr| {
                    e.get_type(schema).is_ok_and(|t| {
                        !matches!(
                            t,
                            DataType::List(_)
                                | DataType::LargeList(_)
                                | DataType::FixedSizeList(..)
                                | DataType::Binary
                                | DataType::LargeBinary
                                | DataType::BinaryView
                        )
                    })
                };
                if joinable(&left) && joinable(&right) {
                    Ok(Transformed::yes(self.concat.call(vec![*left, *right])))
                } else {
                    Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                        left,
                        op: Operator::StringConcat,
                        right,
                    })))
                }
            }
            other => Ok(Transformed::no(other)),
        }
    }
}

/// The bytes the literals of `plan` (subqueries included) fill in one row once broadcast.
pub fn literal_bytes(plan: &LogicalPlan) -> usize {
    let mut bytes = 0usize;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::Literal(value, _) = e {
                    bytes = bytes.saturating_add(scalar_bytes(value).max(1) as usize + 4);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    bytes
}

/// Rows per batch for a plan whose literals fill `literal_bytes` per row: at most `default`, and few enough that
/// the literals broadcast over a batch fill at most [`MAX_BROADCAST_BYTES`].
pub fn batch_rows(literal_bytes: usize, default: usize) -> usize {
    (MAX_BROADCAST_BYTES / literal_bytes.max(1)).clamp(1, default.max(1))
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
            if right
                .as_any()
                .downcast_ref::<YieldingProbe>()
                .is_some_and(|p| p.yielding)
            {
                return Ok(Transformed::no(node));
            }
            let right: Arc<dyn ExecutionPlan> =
                Arc::new(YieldingProbe::new(right, PROBE_SLICE_ROWS, true));
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

/// The physical optimizer rule that cuts what every leaf of a plan (a table scan, rows in memory, a governed
/// view's barrier) produces into batches of at most the session's batch size, which [`batch_rows`] shrinks for
/// plans with large literals: sources that ignore the batch size would otherwise have a literal broadcast over
/// all their rows at once.
#[derive(Debug, Default)]
pub struct SmallBatches;

impl PhysicalOptimizerRule for SmallBatches {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rows = config.execution.batch_size;
        plan.transform_up(|node| {
            if !node.children().is_empty() || node.as_any().is::<YieldingProbe>() {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                Arc::new(YieldingProbe::new(node, rows, false)) as Arc<dyn ExecutionPlan>,
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "parley_small_batches"
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
    /// Rows per slice.
    rows: usize,
    /// Whether to yield to the runtime before each slice.
    yielding: bool,
}

impl YieldingProbe {
    fn new(input: Arc<dyn ExecutionPlan>, rows: usize, yielding: bool) -> YieldingProbe {
        let properties = input.properties().clone();
        YieldingProbe {
            input,
            properties,
            rows: rows.max(1),
            yielding,
        }
    }
}

impl DisplayAs for YieldingProbe {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "YieldingProbe: rows={}, yielding={}",
            self.rows, self.yielding
        )
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
        Ok(Arc::new(YieldingProbe::new(
            input,
            self.rows,
            self.yielding,
        )))
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
            rows: self.rows,
            yielded: !self.yielding,
            yielding: self.yielding,
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
    rows: usize,
    yielded: bool,
    yielding: bool,
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
        let len = self.rows.min(rows - self.offset);
        let slice = batch.slice(self.offset, len);
        self.offset += len;
        if self.offset >= rows {
            self.pending = None;
        }
        self.yielded = !self.yielding;
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
        let engine = Engine::new(
            &QueryLimits::default(),
            crate::query::Naming::Single("parley".into()),
        )
        .unwrap();
        run_on(&engine, 10_000, sql).await
    }

    /// Runs `sql` on `engine` over `s.t`, a table of `rows` ids.
    async fn run_on(
        engine: &Engine,
        rows: i64,
        sql: &str,
    ) -> Result<Vec<Vec<serde_json::Value>>, String> {
        let ids: Vec<i64> = (0..rows).collect();
        let batch =
            RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(ids)) as ArrayRef)])
                .unwrap();
        let prepared = prepare(sql, engine.limits(), engine.naming()).map_err(|e| e.to_string())?;
        let tables = vec![ReadableTable {
            name: TableName::parse("s.t").unwrap(),
            source: TableSource::Rows(batch),
        }];
        execute(
            prepared,
            tables,
            engine,
            "tester",
            10,
            usize::MAX,
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

    #[tokio::test]
    async fn growing_aggregates_are_refused_before_they_outgrow_the_pool() {
        let engine = small_engine();
        // 10,000 × 10,000 rows of 1 KB each: about 100 GB if nothing stopped it.
        for sql in [
            "SELECT length(string_agg(repeat('x', 1000), ',')) FROM s.t a CROSS JOIN s.t b",
            "SELECT cardinality(array_agg(repeat('x', 1000))) FROM s.t a CROSS JOIN s.t b",
        ] {
            let e = run_on(&engine, 10_000, sql).await.expect_err(sql);
            assert!(
                e.contains("would build a value")
                    && e.contains("more than the query memory pool has left"),
                "{sql}: {e}"
            );
        }
        // Within the pool they answer as before (ordered, too).
        assert_eq!(
            run_on(
                &engine,
                5,
                "SELECT string_agg(CAST(id AS VARCHAR), ',' ORDER BY id DESC), cardinality(array_agg(id)) FROM s.t"
            )
            .await,
            Ok(vec![vec!["4,3,2,1,0".into(), 5.into()]])
        );
    }

    /// An engine with a 256 MiB pool, as in the attack report.
    fn small_engine() -> Engine {
        let limits = QueryLimits {
            memory_bytes: 256 << 20,
            ..QueryLimits::default()
        };
        Engine::new(&limits, crate::query::Naming::Single("parley".into())).unwrap()
    }

    #[tokio::test]
    async fn values_that_grow_step_by_step_are_refused_before_they_outgrow_the_limits() {
        // Each step doubles the value: `||`, concat, replace and regexp_replace with group references, nested
        // through CTEs (which the optimizer inlines) or written out.
        let doubling = |step: &str| {
            let mut sql = "WITH l0 AS (SELECT repeat('x', 1000) AS s FROM s.t)".to_string();
            for i in 1..40 {
                sql.push_str(&format!(", l{i} AS (SELECT {} AS s FROM l{})", step, i - 1));
            }
            sql + " SELECT length(s) FROM l39"
        };
        let engine = small_engine();
        for step in [
            "s || s",
            "concat(s, s)",
            "concat_ws(s, s, s)",
            "replace(s, 'x', 'xx')",
            "regexp_replace(s, '(x+)', '\\1\\1')",
            "upper(s || s)",
            "array_to_string(make_array(s, s), '')",
        ] {
            let e = run_on(&engine, 1000, &doubling(step))
                .await
                .expect_err(step);
            assert!(e.contains("would build"), "{step}: {e}");
        }
        // Lists doubled with `||`, which the SQL planner makes array_concat directly.
        let mut sql = "WITH l0 AS (SELECT make_array(id, id) AS s FROM s.t)".to_string();
        for i in 1..40 {
            sql.push_str(&format!(", l{i} AS (SELECT s || s AS s FROM l{})", i - 1));
        }
        let e = run_on(&engine, 1000, &(sql + " SELECT cardinality(s) FROM l39"))
            .await
            .expect_err("list doubling");
        assert!(e.contains("would build"), "{e}");
        // The same from constants, which are not folded into a literal at planning.
        let e = run_on(
            &engine,
            1,
            "WITH a AS (SELECT 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' AS s), b AS (SELECT s||s||s||s||s||s||s||s AS s FROM a), \
             c AS (SELECT s||s||s||s||s||s||s||s AS s FROM b), d AS (SELECT s||s||s||s||s||s||s||s AS s FROM c), \
             e AS (SELECT s||s||s||s||s||s||s||s AS s FROM d), f AS (SELECT s||s||s||s||s||s||s||s AS s FROM e), \
             g AS (SELECT s||s||s||s||s||s||s||s AS s FROM f), h AS (SELECT s||s||s||s||s||s||s||s AS s FROM g) \
             SELECT length(s) FROM h",
        )
        .await
        .expect_err("folded doubling");
        assert!(e.contains("would build"), "{e}");
        // One replacement that multiplies its input at once.
        for sql in [
            "SELECT length(replace(repeat('a', 100000), 'a', repeat('b', 1000)))",
            "SELECT length(regexp_replace(repeat('a', 100000), 'a', repeat('b', 1000), 'g'))",
            "SELECT length(array_to_string(range(0, 100000), repeat('-', 1000)))",
            // A capture group per `(`, each copying all of the value (an outside attack: +2.2 GB under 256 MiB).
            &format!(
                "SELECT cardinality(regexp_match(repeat('a', 1000000), '{}'))",
                "(a*)".repeat(240)
            ),
        ] {
            let e = run_on(&engine, 1, sql).await.expect_err(sql);
            assert!(e.contains("would build"), "{sql}: {e}");
        }
        // Comparisons that take quadratic time without yielding are held to a number of steps per batch.
        let e = run_on(
            &engine,
            1,
            "SELECT levenshtein(repeat('a', 100000), repeat('b', 100000))",
        )
        .await
        .expect_err("levenshtein");
        assert!(e.contains("steps over one batch"), "{e}");
        // Ordinary uses of both still run.
        for sql in [
            "SELECT regexp_match('2026-12-02', '(\\d+)-(\\d+)-(\\d+)')",
            "SELECT levenshtein('kitten', 'sitting')",
        ] {
            run_on(&engine, 1, sql).await.expect(sql);
        }
        // The pool is whole again: a query needing most of it runs.
        assert_eq!(
            run_on(
                &engine,
                1000,
                "SELECT sum(length(repeat('x', 50000))) FROM s.t"
            )
            .await,
            Ok(vec![vec![50_000_000.into()]])
        );
    }

    #[tokio::test]
    async fn many_values_each_within_limits_are_refused_together_past_the_pool() {
        // Each call builds 60 MB over the batch, within the per-call cap, and the batch holds them all: together
        // they need more than the pool.
        let engine = small_engine();
        let columns: Vec<String> = (0..8)
            .map(|i| format!("repeat('x', {}) AS c{i}", 60_000 + i))
            .collect();
        let sql = format!("SELECT {} FROM s.t", columns.join(", "));
        let e = run_on(&engine, 1000, &sql)
            .await
            .map(|r| r.len())
            .expect_err("over the pool");
        assert!(e.contains("query memory"), "{e}");
        // Released when the query ended: the same columns, fewer of them, run.
        let sql = format!(
            "SELECT length(c0), length(c1) FROM (SELECT {} FROM s.t) LIMIT 1",
            columns[..2].join(", ")
        );
        assert_eq!(
            run_on(&engine, 1000, &sql).await,
            Ok(vec![vec![60_000.into(), 60_001.into()]])
        );
    }

    #[tokio::test]
    async fn the_concat_operator_keeps_its_meaning() {
        assert_eq!(
            run("SELECT 'a' || 'b', 'a' || NULL, 1 || 'x', 'x' || 2.5, NULL || 'a'").await,
            Ok(vec![vec![
                "ab".into(),
                serde_json::Value::Null,
                "1x".into(),
                "x2.5".into(),
                serde_json::Value::Null
            ]])
        );
        assert_eq!(
            run("SELECT max(CAST(id AS VARCHAR) || '-' || CAST(id * 2 AS VARCHAR)) FROM s.t WHERE id < 10").await,
            Ok(vec![vec!["9-18".into()]])
        );
        // Lists joined with || are array_concat.
        assert_eq!(
            run("SELECT cardinality(make_array(1, 2) || make_array(3))").await,
            Ok(vec![vec![3.into()]])
        );
    }

    #[tokio::test]
    async fn literals_are_broadcast_over_small_batches_and_bounded_in_total() {
        // A 50 KB literal in the SELECT list over 10,000 rows: answered (over batches small enough).
        let big = "y".repeat(50_000);
        assert_eq!(
            run(&format!(
                "SELECT count(v), max(length(v)) FROM (SELECT '{big}' AS v FROM s.t)"
            ))
            .await,
            Ok(vec![vec![10_000.into(), 50_000.into()]])
        );
        assert_eq!(super::batch_rows(50_000, 8192), (16 << 20) / 50_000);
        assert_eq!(super::batch_rows(10, 8192), 8192);
        // What a plan's literals fill in a row: strings their bytes, other values 8, each with a 4-byte offset.
        let plan = datafusion::prelude::SessionContext::new()
            .sql("SELECT 'abc' AS a, 'de' AS b, 1 AS c")
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        assert_eq!(super::literal_bytes(&plan), 7 + 6 + 12);
    }
}

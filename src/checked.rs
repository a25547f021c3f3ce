//! Integer arithmetic that fails instead of wrapping.
//!
//! DataFusion computes `+`, `-`, `*` and unary `-` on integers with wrapping kernels, and `sum` of integers
//! wraps too: `SELECT sum(bytes)` over large values answered a negative number, a wrong answer an agent cannot
//! tell from a right one. Here, as in PostgreSQL, DuckDB and Trino, such a query fails with what to do instead:
//!
//! - [`CheckedArithmetic`], an analyzer rule run after type coercion, turns every `+`, `-`, `*` and unary `-`
//!   whose operands are integers into a call of a checked function ([`CheckedOp`], Arrow's checked kernels),
//!   keeping the expression's name, so results keep their column names.
//! - [`CheckedSum`] replaces `sum`: on integers it adds in `DECIMAL(38,0)` (no realistic input overflows 38
//!   digits) and fails only when the total does not fit the result type (`BIGINT`, or `BIGINT UNSIGNED`), so an
//!   intermediate sum out of range that comes back in range is still exact. Other types are summed as before.
//!
//! Dates, timestamps, intervals, floats and decimals keep DataFusion's arithmetic. The error names the values
//! (the query's own, after its grant's row filter and masks: see `governed`) and how to widen them.

use std::any::Any;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::compute::{CastOptions, cast, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::arrow::error::ArrowError;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, BinaryExpr, ColumnarValue, EmitTo, Expr,
    ExprSchemable, GroupsAccumulator, LogicalPlan, Operator, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// The start of every overflow error, so callers can tell it apart.
pub const OVERFLOW: &str = "integer overflow";

/// What an agent can do about an overflowing operation.
const WIDEN: &str =
    "cast an operand to DECIMAL(38,0) (exact) or DOUBLE first, e.g. CAST(x AS DECIMAL(38,0)) * y";

/// What an agent can do about an overflowing sum.
const WIDEN_SUM: &str =
    "sum the values as DECIMAL(38,0) (exact) or DOUBLE, e.g. sum(CAST(x AS DECIMAL(38,0)))";

/// Installs checked integer arithmetic and the checked `sum` into `state`.
pub fn install(state: &mut datafusion::execution::SessionState) -> Result<()> {
    if let Some(sum) = state.aggregate_functions().get("sum").cloned() {
        let checked = AggregateUDF::new_from_impl(CheckedSum { inner: sum });
        datafusion::execution::FunctionRegistry::register_udaf(state, Arc::new(checked))?;
    }
    state.add_analyzer_rule(Arc::new(CheckedArithmetic::new()));
    Ok(())
}

/// The analyzer rule: integer `+ - *` and unary `-` become [`CheckedOp`] calls. Runs after type coercion, so
/// both operands of an integer operation already have one type.
#[derive(Debug)]
pub struct CheckedArithmetic {
    add: Arc<ScalarUDF>,
    sub: Arc<ScalarUDF>,
    mul: Arc<ScalarUDF>,
    neg: Arc<ScalarUDF>,
}

impl Default for CheckedArithmetic {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckedArithmetic {
    /// The rule with its four functions.
    pub fn new() -> CheckedArithmetic {
        let udf = |op| Arc::new(ScalarUDF::new_from_impl(CheckedOp::new(op)));
        CheckedArithmetic {
            add: udf(Op::Add),
            sub: udf(Op::Sub),
            mul: udf(Op::Mul),
            neg: udf(Op::Neg),
        }
    }

    fn rewrite(&self, expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        let integer = |e: &Expr| e.get_type(schema).ok().filter(DataType::is_integer);
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right })
                if matches!(op, Operator::Plus | Operator::Minus | Operator::Multiply)
                    && integer(&left).is_some_and(|t| integer(&right) == Some(t)) =>
            {
                let f = match op {
                    Operator::Plus => &self.add,
                    Operator::Minus => &self.sub,
                    _ => &self.mul,
                };
                Ok(Transformed::yes(f.call(vec![*left, *right])))
            }
            Expr::Negative(inner) if integer(&inner).is_some() => {
                Ok(Transformed::yes(self.neg.call(vec![*inner])))
            }
            other => Ok(Transformed::no(other)),
        }
    }
}

impl AnalyzerRule for CheckedArithmetic {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| {
            let mut schema = merge_schema(&plan.inputs());
            if let LogicalPlan::TableScan(scan) = &plan {
                schema.merge(&DFSchema::try_from_qualified_schema(
                    scan.table_name.clone(),
                    &scan.source.schema(),
                )?);
            }
            let names = NamePreserver::new(&plan);
            plan.map_expressions(|expr| {
                let name = names.save(&expr);
                let rewritten = expr.transform_up(|e| self.rewrite(e, &schema))?;
                Ok(rewritten.update_data(|e| name.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "parley_checked_arithmetic"
    }
}

/// A checked integer operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Add,
    Sub,
    Mul,
    Neg,
}

/// `+`, `-`, `*` or unary `-` on integers, failing on overflow (Arrow's checked kernels).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckedOp {
    op: Op,
    signature: Signature,
}

impl CheckedOp {
    fn new(op: Op) -> CheckedOp {
        let arity = if op == Op::Neg { 1 } else { 2 };
        CheckedOp {
            op,
            signature: Signature::any(arity, Volatility::Immutable),
        }
    }

    fn symbol(&self) -> &'static str {
        match self.op {
            Op::Add => "+",
            Op::Sub | Op::Neg => "-",
            Op::Mul => "*",
        }
    }
}

/// An overflow error naming the operation, the type and how to widen (`advice`).
fn overflow(
    what: &str,
    data_type: &DataType,
    detail: &dyn std::fmt::Display,
    advice: &str,
) -> DataFusionError {
    DataFusionError::Execution(format!(
        "{OVERFLOW}: {what} does not fit {} ({detail}); {advice}",
        sql_type(data_type)
    ))
}

/// The SQL name of an integer type.
fn sql_type(data_type: &DataType) -> String {
    match data_type {
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        other => other.to_string(),
    }
}

impl ScalarUDFImpl for CheckedOp {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        match self.op {
            Op::Add => "checked_add",
            Op::Sub => "checked_sub",
            Op::Mul => "checked_mul",
            Op::Neg => "checked_neg",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        arg_types
            .first()
            .cloned()
            .ok_or_else(|| DataFusionError::Plan(format!("{} needs arguments", self.name())))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let first = args
            .arg_fields
            .first()
            .ok_or_else(|| DataFusionError::Plan(format!("{} needs arguments", self.name())))?;
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            first.data_type().clone(),
            nullable,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::compute::kernels::numeric;
        let scalars = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(if scalars { 1 } else { args.number_rows }))
            .collect::<Result<Vec<_>>>()?;
        let result = match (self.op, arrays.as_slice()) {
            (Op::Neg, [a]) => numeric::neg(a.as_ref()),
            (Op::Add, [a, b]) => numeric::add(a, b),
            (Op::Sub, [a, b]) => numeric::sub(a, b),
            (Op::Mul, [a, b]) => numeric::mul(a, b),
            _ => {
                return Err(DataFusionError::Internal(format!(
                    "{} called with {} arguments",
                    self.name(),
                    arrays.len()
                )));
            }
        };
        let result = result.map_err(|e| match e {
            ArrowError::ArithmeticOverflow(detail) => {
                let data_type = arrays.first().map(|a| a.data_type().clone());
                overflow(
                    &format!("`{}`", self.symbol()),
                    &data_type.unwrap_or(DataType::Int64),
                    &detail,
                    WIDEN,
                )
            }
            other => other.into(),
        })?;
        if scalars {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &result, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

/// Where integers are summed: wide enough that no realistic input overflows it.
const WIDE: DataType = DataType::Decimal128(38, 0);

/// `sum`, adding integers in [`WIDE`] and failing when the total does not fit the result type; other types are
/// summed by the inner `sum` as they were.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckedSum {
    inner: Arc<AggregateUDF>,
}

impl CheckedSum {
    /// The wide field standing in for an integer result, or `None` when the result is not an integer.
    fn wide(return_field: &FieldRef) -> Option<FieldRef> {
        return_field
            .data_type()
            .is_integer()
            .then(|| Arc::new(Field::new(return_field.name(), WIDE, true)))
    }

    /// The inner sum's accumulator made by `make`: for an integer result, made for [`WIDE`] and wrapped by `wrap`
    /// with the type to narrow its total to.
    fn widened<A>(
        args: AccumulatorArgs,
        make: impl FnOnce(AccumulatorArgs) -> Result<A>,
        wrap: impl FnOnce(A, DataType) -> A,
    ) -> Result<A> {
        match Self::wide(&args.return_field) {
            Some(wide) => {
                let out = args.return_field.data_type().clone();
                let inner = make(AccumulatorArgs {
                    return_field: wide,
                    ..args
                })?;
                Ok(wrap(inner, out))
            }
            None => make(args),
        }
    }
}

impl AggregateUDFImpl for CheckedSum {
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
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
    fn order_sensitivity(&self) -> datafusion::logical_expr::utils::AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }
    fn reverse_expr(&self) -> datafusion::logical_expr::ReversedUDAF {
        // `sum` is its own reverse.
        datafusion::logical_expr::ReversedUDAF::Identical
    }
    fn set_monotonicity(&self, data_type: &DataType) -> datafusion::logical_expr::SetMonotonicity {
        self.inner.inner().set_monotonicity(data_type)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        match Self::wide(&args.return_field) {
            Some(wide) => self.inner.state_fields(StateFieldsArgs {
                return_field: wide,
                ..args
            }),
            None => self.inner.state_fields(args),
        }
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Self::widened(
            args,
            |a| self.inner.accumulator(a),
            |inner, out| Box::new(WideSum { inner, out }),
        )
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Self::widened(
            args,
            |a| self.inner.create_sliding_accumulator(a),
            |inner, out| Box::new(WideSum { inner, out }),
        )
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Self::widened(
            args,
            |a| self.inner.create_groups_accumulator(a),
            |inner, out| Box::new(WideGroupsSum { inner, out }),
        )
    }
}

/// Integer inputs as [`WIDE`] values.
fn widen(values: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
    values
        .iter()
        .map(|v| cast(v, &WIDE).map_err(DataFusionError::from))
        .collect()
}

/// A [`WIDE`] total as `out`, failing when it does not fit.
fn narrow(total: &ArrayRef, out: &DataType) -> Result<ArrayRef> {
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    cast_with_options(total, out, &options).map_err(|e| overflow("sum", out, &e, WIDEN_SUM))
}

/// An integer `sum` accumulated in [`WIDE`] by the inner accumulator.
#[derive(Debug)]
struct WideSum {
    inner: Box<dyn Accumulator>,
    out: DataType,
}

impl Accumulator for WideSum {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.update_batch(&widen(values)?)
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(&widen(values)?)
    }
    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let total = self.inner.evaluate()?.to_array()?;
        ScalarValue::try_from_array(&narrow(&total, &self.out)?, 0)
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
}

/// [`WideSum`] for grouped aggregation.
struct WideGroupsSum {
    inner: Box<dyn GroupsAccumulator>,
    out: DataType,
}

impl GroupsAccumulator for WideGroupsSum {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner
            .update_batch(&widen(values)?, group_indices, opt_filter, total_num_groups)
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        narrow(&self.inner.evaluate(emit_to)?, &self.out)
    }
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.inner.state(emit_to)
    }
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner
            .merge_batch(values, group_indices, opt_filter, total_num_groups)
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.inner.convert_to_state(&widen(values)?, opt_filter)
    }
    fn supports_convert_to_state(&self) -> bool {
        self.inner.supports_convert_to_state()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, Int64Array, UInt64Array};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::prelude::SessionContext;

    /// A session with checked arithmetic and a table `t(big BIGINT, small INT, u BIGINT UNSIGNED, g INT)`.
    async fn session(big: Vec<Option<i64>>) -> SessionContext {
        let n = big.len();
        let mut state = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .build();
        install(&mut state).unwrap();
        let ctx = SessionContext::new_with_state(state);
        let schema = Arc::new(Schema::new(vec![
            Field::new("big", DataType::Int64, true),
            Field::new("small", DataType::Int32, false),
            Field::new("u", DataType::UInt64, false),
            Field::new("g", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(big)),
                Arc::new(Int32Array::from(vec![i32::MAX; n])),
                Arc::new(UInt64Array::from(vec![1u64; n])),
                Arc::new(Int32Array::from(
                    (0..n as i32).map(|i| i % 2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        ctx.register_batch("t", batch).unwrap();
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
        ctx.sql(sql).await?.collect().await
    }

    /// The first value of the first column, as text.
    async fn one(ctx: &SessionContext, sql: &str) -> String {
        let batches = run(ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let column = batches[0].column(0);
        datafusion::arrow::util::display::array_value_to_string(column, 0).unwrap()
    }

    async fn refused(ctx: &SessionContext, sql: &str) -> String {
        match run(ctx, sql).await {
            Ok(b) => panic!(
                "{sql} answered {}",
                datafusion::arrow::util::pretty::pretty_format_batches(&b).unwrap()
            ),
            Err(e) => {
                let text = e.find_root().to_string();
                assert!(text.contains(OVERFLOW), "{sql}: {text}");
                assert!(text.contains("DECIMAL(38,0)"), "{sql}: {text}");
                text
            }
        }
    }

    /// Each operation that wrapped before fails now, on columns and on constants (folded at planning), in
    /// projections, filters, group keys, sorts, joins and subqueries; in-range arithmetic answers as before,
    /// and its column keeps its name.
    #[tokio::test]
    async fn integer_arithmetic_fails_instead_of_wrapping() {
        let ctx = session(vec![Some(i64::MAX), Some(1)]).await;
        for sql in [
            "SELECT big + 1 FROM t",
            "SELECT big * 2 FROM t",
            "SELECT -big - 2 FROM t",
            "SELECT 9223372036854775807 + 1",
            "SELECT -(-9223372036854775807 - 1)",
            "SELECT small + small FROM t",
            "SELECT u - u - u FROM t",
            "SELECT count(*) FROM t WHERE big + 1 > 0",
            "SELECT big * 3 AS k, count(*) FROM t GROUP BY big * 3",
            "SELECT big FROM t ORDER BY big + big",
            "SELECT a.big FROM t a JOIN t b ON a.big + b.big = 0",
            "SELECT (SELECT max(big) + 1 FROM t)",
            "SELECT big FROM t WHERE big IN (SELECT big * 2 FROM t)",
            "SELECT sum(big + 1) OVER (ORDER BY g) FROM t",
        ] {
            refused(&ctx, sql).await;
        }
        assert_eq!(one(&ctx, "SELECT 40 + 2").await, "42");
        assert_eq!(one(&ctx, "SELECT min(big - 1) FROM t").await, "0");
        assert_eq!(
            one(&ctx, "SELECT min(-big) FROM t").await,
            (-i64::MAX).to_string()
        );
        assert_eq!(
            one(
                &ctx,
                "SELECT CAST(big AS DECIMAL(38,0)) * 2 FROM t WHERE big > 1"
            )
            .await,
            (i128::from(i64::MAX) * 2).to_string()
        );
        // Dates and intervals keep their arithmetic.
        assert_eq!(
            one(&ctx, "SELECT DATE '2026-01-31' + INTERVAL '1 day'").await,
            "2026-02-01"
        );
        let batches = run(&ctx, "SELECT big + 1, small * 1 AS s FROM t WHERE big < 5")
            .await
            .unwrap();
        let names: Vec<_> = batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["t.big + Int64(1)", "s"]);
        assert_eq!(
            datafusion::arrow::util::display::array_value_to_string(batches[0].column(0), 0)
                .unwrap(),
            "2"
        );
    }

    /// `sum` of integers is exact while its total fits, whatever its partial sums did, and fails when the total
    /// does not fit: plain, grouped, distinct and as a window; other types sum as before.
    #[tokio::test]
    async fn integer_sums_fail_only_when_the_total_does_not_fit() {
        let ctx = session(vec![Some(i64::MAX), Some(i64::MAX), Some(i64::MIN), None]).await;
        // MAX + MAX overflows on the way; + MIN brings the total back to MAX - 1.
        assert_eq!(
            one(&ctx, "SELECT sum(big) FROM t").await,
            (i64::MAX - 1).to_string()
        );
        assert_eq!(one(&ctx, "SELECT sum(u) FROM t").await, "4");
        assert_eq!(
            one(&ctx, "SELECT sum(small) FROM t").await,
            (4 * i64::from(i32::MAX)).to_string()
        );
        for sql in [
            "SELECT sum(big) FROM t WHERE big > 0",
            "SELECT small, sum(big) FROM t WHERE big > 0 GROUP BY small",
            "SELECT sum(big) OVER (ORDER BY big DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) FROM t",
        ] {
            refused(&ctx, sql).await;
        }
        let ctx = session(vec![Some(i64::MAX), Some(i64::MAX), Some(5), Some(5)]).await;
        // Distinct values: MAX + 5 overflows; MAX alone does not.
        refused(&ctx, "SELECT sum(DISTINCT big) FROM t").await;
        assert_eq!(
            one(&ctx, "SELECT sum(DISTINCT big) FROM t WHERE big > 5").await,
            i64::MAX.to_string()
        );
        // Grouped: the group holding both MAXes overflows, a total within range is exact.
        assert_eq!(
            one(&ctx, "SELECT sum(big) FROM t WHERE big = 5 GROUP BY big").await,
            "10"
        );
        refused(&ctx, "SELECT big, sum(big) FROM t GROUP BY big").await;
        // The way out the error names works.
        assert_eq!(
            one(&ctx, "SELECT sum(CAST(big AS DECIMAL(38,0))) FROM t").await,
            (2 * i128::from(i64::MAX) + 10).to_string()
        );
        assert_eq!(
            one(&ctx, "SELECT sum(CAST(g AS DECIMAL(5,1))) FROM t").await,
            "2.0"
        );
        // The result type is unchanged.
        let batches = run(&ctx, "SELECT sum(big) FROM t WHERE big = 5")
            .await
            .unwrap();
        assert_eq!(batches[0].schema().field(0).data_type(), &DataType::Int64);
        assert_eq!(batches[0].schema().field(0).name(), "sum(t.big)");
    }
}

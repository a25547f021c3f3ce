//! Quality: a contract's ODCS quality rules and its freshness SLA, computed over one snapshot of its table.
//!
//! Rules come from `quality:` lists on the contract's schema objects (table level) and properties (column
//! level). Library metrics (`rowCount`, `nullValues`, `missingValues`, `invalidValues`, `duplicateValues`) become
//! aggregates of one scan (duplicates take a second, grouped one); `type: sql` rules run their own query, which
//! goes through the same read-only preparation as an agent's and may read only the contract's own table; `text`
//! and `custom` rules are shown, not run. Operators are ODCS's (`mustBe`, `mustBeGreaterThan`, `mustBeBetween`,
//! ...); a metric without one must be 0 (a `rowCount` without one is only measured). `unit: percent` measures
//! against the row count.
//!
//! Freshness (`slaProperties: [{property: freshness, value, unit, element}]`) is measured as the newest value of
//! the `element` column (or, without one, the snapshot's commit time) and judged against the clock when read, so a
//! table goes stale without a new snapshot.
//!
//! Invariants: evaluation never writes and reads only the table it checks, within the query engine's limits (time,
//! memory, concurrency slots); a snapshot is evaluated once per contract version (callers cache the
//! [`Report`]); a rule that cannot run is reported as such, never as passing.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::TableName;
use crate::catalog::open::Naming;
use crate::contracts::Contract;
use crate::query::{Engine, ReadableTable, TableSource};

/// What a non-owner reads in place of why a rule could not be evaluated.
pub const WHY_FOR_OWNERS: &str = "could not be evaluated; the table's owners see why";

/// Most rules evaluated per table; later ones are reported as not run.
pub const MAX_RULES: usize = 64;

/// The caller quality evaluations run their queries as: they share its slots (`max_concurrent_per_caller`), not
/// an agent's.
pub const QUALITY_CALLER: &str = "parley (quality evaluations)";

/// One ODCS quality rule, as written in a contract (`DataQuality`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QualityRule {
    /// Stable id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it checks, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `library` (default), `sql`, `text` or `custom`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Library metric: rowCount, nullValues, missingValues, invalidValues, duplicateValues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Deprecated name of `metric`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Metric arguments (`properties`, `validValues`, `missingValues`, `pattern`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Map<String, Value>>,
    /// SQL of a `sql` rule; `${table}`, `${object}` and `${column}`/`${property}` are replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Engine of a `custom` rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// `rows` or `percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// info, warning, error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Equal to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be: Option<Value>,
    /// Not equal to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_not_be: Option<Value>,
    /// Greater than.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be_greater_than: Option<f64>,
    /// Greater than or equal to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be_greater_or_equal_to: Option<f64>,
    /// Less than.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be_less_than: Option<f64>,
    /// Less than or equal to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be_less_or_equal_to: Option<f64>,
    /// Between, bounds included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be_between: Option<[f64; 2]>,
    /// Outside, bounds excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_not_be_between: Option<[f64; 2]>,
    /// Other ODCS keys (dimension, businessImpact, schedule...), kept as written.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The rule holds.
    Pass,
    /// The rule does not hold: a breach of the contract.
    Fail,
    /// Measured, no threshold to judge it by.
    Measured,
    /// Could not be evaluated (the reason is in `detail`).
    Error,
    /// Not evaluated by Parley (`text` and `custom` rules).
    NotRun,
}

/// One rule's outcome on one snapshot.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CheckResult {
    /// The rule's name (its `name`, `id`, or what it checks).
    pub name: String,
    /// The rule, e.g. `nullValues(total_amount) must be 0`.
    pub rule: String,
    /// Severity as the contract gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Outcome.
    pub status: Status,
    /// The measured value (shown to the table's owners only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured: Option<Value>,
    /// Why it could not be evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The freshness promise and what the snapshot holds.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Freshness {
    /// The promise, e.g. `1 h`.
    pub promise: String,
    /// The promise in seconds.
    pub max_age_seconds: i64,
    /// The column measured (`orders.created_at`), or absent: the snapshot's commit time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element: Option<String>,
    /// The newest value (RFC 3339; owners only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<String>,
    /// Why it could not be measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Freshness {
    fn latest_instant(&self) -> Option<DateTime<Utc>> {
        self.latest
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    }

    /// Whether the data is as fresh as promised at `now` (`None`: could not be measured).
    pub fn holds_at(&self, now: DateTime<Utc>) -> Option<bool> {
        let latest = self.latest_instant()?;
        Some((now - latest).num_seconds() <= self.max_age_seconds)
    }
}

/// A snapshot's quality against the contract in force: the computed part, cached by snapshot id.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Report {
    /// Snapshot evaluated, a decimal string (absent: the table has none).
    #[serde(serialize_with = "crate::ids::opt_string")]
    #[schemars(with = "Option<String>")]
    pub snapshot_id: Option<i64>,
    /// Contract version whose rules were evaluated.
    pub contract_version: String,
    /// When (RFC 3339).
    pub evaluated_at: String,
    /// How long it took.
    pub elapsed_ms: u64,
    /// One result per rule.
    pub checks: Vec<CheckResult>,
    /// The freshness SLA, when the contract has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
}

impl Report {
    /// Names of what the snapshot breaches at `now`: failing rules, and `freshness` when stale.
    pub fn breaches(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut out: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name.clone())
            .collect();
        if self
            .freshness
            .as_ref()
            .and_then(|f| f.holds_at(now))
            .is_some_and(|ok| !ok)
        {
            out.push("freshness".to_string());
        }
        out
    }

    /// The report as a non-owner sees it: verdicts, without measured values — nor the reasons a rule could not be
    /// evaluated, which may quote the data (an engine's cast error names the value).
    pub fn redacted(&self) -> Report {
        let mut r = self.clone();
        for c in &mut r.checks {
            c.measured = None;
            if c.status == Status::Error {
                c.detail = Some(WHY_FOR_OWNERS.to_string());
            }
        }
        if let Some(f) = &mut r.freshness {
            f.latest = None;
            if f.detail.is_some() {
                f.detail = Some(WHY_FOR_OWNERS.to_string());
            }
        }
        r
    }
}

/// Whether a contract says anything [`evaluate`] computes (rules or a freshness SLA).
pub fn has_rules(contract: &Contract) -> bool {
    contract
        .schema
        .iter()
        .any(|s| !s.quality.is_empty() || s.properties.iter().any(|p| !p.quality.is_empty()))
        || freshness_sla(contract).is_some()
}

/// A check to compute: the rule, the column it is on, and how.
struct Planned<'a> {
    rule: &'a QualityRule,
    columns: Vec<String>,
    how: How,
}

enum How {
    /// An aggregate in the one scan, by its position.
    Aggregate(usize),
    /// A query of its own.
    Query(String),
    /// Not evaluated: why.
    Skip(Status, String),
}

/// The metric of a library rule.
fn metric(rule: &QualityRule) -> Option<&str> {
    rule.metric.as_deref().or(rule.rule.as_deref())
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A SQL literal for a YAML value, or `None` for values that have none (objects, arrays).
fn literal(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(format!("'{}'", s.replace('\'', "''"))),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("NULL".to_string()),
        _ => None,
    }
}

/// How the query engine names `table` in SQL, every part quoted.
pub fn sql_reference(table: &TableName, naming: &Naming) -> String {
    match (naming, table.namespace.split_first()) {
        (Naming::Federated(_), Some((catalog, rest))) => format!(
            "{}.{}.{}",
            quote(catalog),
            quote(&rest.join(".")),
            quote(&table.name)
        ),
        _ => format!("{}.{}", quote(&table.namespace_str()), quote(&table.name)),
    }
}

fn arg<'a>(rule: &'a QualityRule, key: &str) -> Option<&'a Value> {
    rule.arguments.as_ref().and_then(|a| a.get(key))
}

fn arg_list(rule: &QualityRule, key: &str) -> Option<Vec<Value>> {
    match arg(rule, key)? {
        Value::Array(items) => Some(items.clone()),
        other => Some(vec![other.clone()]),
    }
}

/// `x IN (...)` over literals, or why not.
fn in_list(col: &str, values: &[Value]) -> Result<String, String> {
    let mut parts = Vec::new();
    let mut null = false;
    for v in values {
        if v.is_null() {
            null = true;
            continue;
        }
        parts.push(literal(v).ok_or_else(|| format!("value {v} is not a scalar"))?);
    }
    let mut clauses = Vec::new();
    if !parts.is_empty() {
        clauses.push(format!("CAST({col} AS VARCHAR) IN ({})", {
            // Compare as text: valid values are written in YAML, the column may be any type.
            parts
                .iter()
                .map(|p| format!("CAST({p} AS VARCHAR)"))
                .collect::<Vec<_>>()
                .join(", ")
        }));
    }
    if null {
        clauses.push(format!("{col} IS NULL"));
    }
    if clauses.is_empty() {
        return Ok("FALSE".to_string());
    }
    Ok(format!("({})", clauses.join(" OR ")))
}

/// The condition counting a column's offending rows for a metric.
fn offending(metric: &str, rule: &QualityRule, col: &str) -> Result<String, String> {
    match metric {
        "nullValues" => Ok(format!("{col} IS NULL")),
        "missingValues" => {
            let missing = arg_list(rule, "missingValues").unwrap_or_else(|| vec![Value::Null]);
            in_list(col, &missing)
        }
        "invalidValues" => {
            let mut bad = Vec::new();
            if let Some(valid) = arg_list(rule, "validValues") {
                bad.push(format!("NOT {}", in_list(col, &valid)?));
            }
            if let Some(p) = arg(rule, "pattern") {
                let p = p
                    .is_string()
                    .then(|| literal(p))
                    .flatten()
                    .ok_or("arguments.pattern must be a string")?;
                bad.push(format!("NOT regexp_like(CAST({col} AS VARCHAR), {p})"));
            }
            if bad.is_empty() {
                return Err(
                    "invalidValues needs arguments.validValues or arguments.pattern".into(),
                );
            }
            Ok(format!("({col} IS NOT NULL AND ({}))", bad.join(" OR ")))
        }
        other => Err(format!("unknown metric {other:?}")),
    }
}

/// The rule in words, e.g. `nullValues(total_amount) must be 0`.
fn describe_rule(rule: &QualityRule, columns: &[String]) -> String {
    let what = match rule.kind.as_deref() {
        Some("sql") => format!("sql: {}", rule.query.as_deref().unwrap_or("")),
        Some("text") => format!("text: {}", rule.description.as_deref().unwrap_or("")),
        Some("custom") => format!("custom ({})", rule.engine.as_deref().unwrap_or("?")),
        _ if columns.is_empty() => metric(rule).unwrap_or("?").to_string(),
        _ => format!("{}({})", metric(rule).unwrap_or("?"), columns.join(", ")),
    };
    let unit = match rule.unit.as_deref() {
        Some(u) if u.eq_ignore_ascii_case("percent") => " %",
        _ => "",
    };
    let op = match operator(rule) {
        Some(Operator::Eq(v)) => format!(" must be {v}{unit}"),
        Some(Operator::Ne(v)) => format!(" must not be {v}{unit}"),
        Some(Operator::Gt(x)) => format!(" must be > {x}{unit}"),
        Some(Operator::Ge(x)) => format!(" must be >= {x}{unit}"),
        Some(Operator::Lt(x)) => format!(" must be < {x}{unit}"),
        Some(Operator::Le(x)) => format!(" must be <= {x}{unit}"),
        Some(Operator::Between(a, b)) => format!(" must be between {a} and {b}{unit}"),
        Some(Operator::NotBetween(a, b)) => format!(" must not be between {a} and {b}{unit}"),
        None if default_zero(rule) => format!(" must be 0{unit}"),
        None => String::new(),
    };
    format!("{what}{op}")
}

enum Operator {
    Eq(Value),
    Ne(Value),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    Between(f64, f64),
    NotBetween(f64, f64),
}

fn operator(rule: &QualityRule) -> Option<Operator> {
    if let Some(v) = &rule.must_be {
        return Some(Operator::Eq(v.clone()));
    }
    if let Some(v) = &rule.must_not_be {
        return Some(Operator::Ne(v.clone()));
    }
    rule.must_be_greater_than
        .map(Operator::Gt)
        .or(rule.must_be_greater_or_equal_to.map(Operator::Ge))
        .or(rule.must_be_less_than.map(Operator::Lt))
        .or(rule.must_be_less_or_equal_to.map(Operator::Le))
        .or(rule.must_be_between.map(|[a, b]| Operator::Between(a, b)))
        .or(rule
            .must_not_be_between
            .map(|[a, b]| Operator::NotBetween(a, b)))
}

/// Metrics counting offending rows must be 0 when the rule gives no threshold.
fn default_zero(rule: &QualityRule) -> bool {
    rule.kind.as_deref().is_none_or(|k| k == "library")
        && matches!(
            metric(rule),
            Some("nullValues" | "missingValues" | "invalidValues" | "duplicateValues")
        )
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn same(measured: &Value, expected: &Value) -> bool {
    match (number(measured), number(expected)) {
        (Some(a), Some(b)) => a == b,
        _ => measured == expected,
    }
}

/// The verdict on a measured value.
fn judge(rule: &QualityRule, measured: &Value) -> Result<Status, String> {
    let op = match operator(rule) {
        Some(op) => op,
        None if default_zero(rule) => Operator::Eq(Value::from(0)),
        None => return Ok(Status::Measured),
    };
    let num =
        || number(measured).ok_or_else(|| format!("the measured value {measured} is not a number"));
    let ok = match op {
        Operator::Eq(v) => same(measured, &v),
        Operator::Ne(v) => !same(measured, &v),
        Operator::Gt(x) => num()? > x,
        Operator::Ge(x) => num()? >= x,
        Operator::Lt(x) => num()? < x,
        Operator::Le(x) => num()? <= x,
        Operator::Between(a, b) => (a..=b).contains(&num()?),
        Operator::NotBetween(a, b) => !(a..=b).contains(&num()?),
    };
    Ok(if ok { Status::Pass } else { Status::Fail })
}

/// The contract's freshness SLA: `(promise text, seconds, element column)`.
pub fn freshness_sla(contract: &Contract) -> Option<(String, Result<i64, String>, Option<String>)> {
    let sla = contract
        .sla_properties
        .iter()
        .find(|s| s.property.eq_ignore_ascii_case("freshness"))?;
    let unit = sla.unit.clone().unwrap_or_else(|| "d".to_string());
    let promise = format!("{} {unit}", sla.value);
    let seconds = number(&sla.value)
        .ok_or_else(|| format!("freshness value {} is not a number", sla.value))
        .and_then(|n| {
            let per = match unit.to_ascii_lowercase().as_str() {
                "s" | "sec" | "second" | "seconds" => 1.0,
                "m" | "min" | "minute" | "minutes" => 60.0,
                "h" | "hr" | "hour" | "hours" => 3600.0,
                "d" | "day" | "days" => 86_400.0,
                "w" | "week" | "weeks" => 7.0 * 86_400.0,
                "y" | "yr" | "year" | "years" => 365.0 * 86_400.0,
                other => {
                    return Err(format!(
                        "freshness unit {other:?} is not one of s, m, h, d, w, y"
                    ));
                }
            };
            Ok((n * per) as i64)
        });
    // `orders.created_at` (object.property) or just the column.
    let element = sla
        .element
        .as_deref()
        .map(|e| e.rsplit('.').next().unwrap_or(e).to_string());
    Some((promise, seconds, element))
}

/// Evaluates `contract`'s rules and freshness SLA over `table` (the snapshot it was loaded at), through `engine`.
pub async fn evaluate(
    contract: &Contract,
    name: &TableName,
    table: &iceberg::table::Table,
    engine: &Engine,
) -> Report {
    let started = std::time::Instant::now();
    let meta = table.metadata();
    let snapshot = meta.current_snapshot();
    let schema = meta.current_schema();
    let has = |c: &str| schema.as_struct().field_by_name(c).is_some();
    let reference = sql_reference(name, engine.naming());

    // Plan: every rule of every schema object and property, in order.
    let mut rules: Vec<(&QualityRule, Vec<String>)> = Vec::new();
    for object in &contract.schema {
        for rule in &object.quality {
            let columns = match arg_list(rule, "properties") {
                Some(list) => list
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                None => vec![],
            };
            rules.push((rule, columns));
        }
        for p in &object.properties {
            for rule in &p.quality {
                rules.push((rule, vec![p.name.clone()]));
            }
        }
    }
    let mut aggregates: Vec<String> = vec!["count(*)".to_string()];
    let mut planned: Vec<Planned> = Vec::new();
    for (i, (rule, columns)) in rules.into_iter().enumerate() {
        let how = if i >= MAX_RULES {
            How::Skip(
                Status::NotRun,
                format!("only the first {MAX_RULES} rules are evaluated"),
            )
        } else {
            plan_one(rule, &columns, &reference, &has, &mut aggregates)
        };
        planned.push(Planned { rule, columns, how });
    }
    let freshness = freshness_sla(contract);
    let mut freshness_at = None;
    if let Some((_, _, Some(col))) = &freshness
        && has(col)
    {
        freshness_at = Some(aggregates.len());
        aggregates.push(format!("max({})", quote(col)));
    }

    // The one scan.
    let mut row: Result<Vec<Value>, String> = Ok(vec![]);
    if snapshot.is_some() {
        let sql = format!(
            "SELECT {} FROM {reference}",
            aggregates
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{a} AS m{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        row = run(&sql, name, table, engine).await;
    }
    let rows_total = row.as_ref().ok().and_then(|r| r.first()).and_then(number);

    let mut checks = Vec::with_capacity(planned.len());
    for p in planned {
        let rule_text = describe_rule(p.rule, &p.columns);
        let percent = p
            .rule
            .unit
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case("percent"));
        let measured: Result<Value, (Status, String)> = match p.how {
            How::Skip(status, why) => Err((status, why)),
            _ if snapshot.is_none() => Ok(Value::from(0)),
            How::Aggregate(at) => match &row {
                Ok(values) => values
                    .get(at)
                    .cloned()
                    .ok_or((Status::Error, "no value measured".to_string())),
                Err(e) => Err((Status::Error, e.clone())),
            },
            How::Query(sql) => run(&sql, name, table, engine)
                .await
                .and_then(|r| {
                    r.into_iter()
                        .next()
                        .ok_or_else(|| "the query returned no value".into())
                })
                .map_err(|e| (Status::Error, e)),
        };
        let measured = measured.map(|v| match (percent, number(&v), rows_total) {
            (true, Some(n), Some(total)) if p.rule.kind.as_deref() != Some("sql") => {
                Value::from(if total == 0.0 { 0.0 } else { 100.0 * n / total })
            }
            _ => v,
        });
        let (status, measured, detail) = match measured {
            Ok(v) => match judge(p.rule, &v) {
                Ok(s) => (s, Some(v), None),
                Err(why) => (Status::Error, Some(v), Some(why)),
            },
            Err((s, why)) => (s, None, Some(why)),
        };
        checks.push(CheckResult {
            name: p
                .rule
                .name
                .clone()
                .or_else(|| p.rule.id.clone())
                .unwrap_or_else(|| rule_text.clone()),
            rule: rule_text,
            severity: p.rule.severity.clone(),
            status,
            measured,
            detail,
        });
    }

    let freshness = freshness.map(|(promise, seconds, element)| {
        let mut f = Freshness {
            promise,
            max_age_seconds: *seconds.as_ref().unwrap_or(&0),
            element: element.clone(),
            latest: None,
            detail: seconds.err(),
        };
        if f.detail.is_some() {
            return f;
        }
        match (&element, freshness_at) {
            (None, _) => {
                f.latest = snapshot
                    .and_then(|s| s.timestamp().ok())
                    .map(|t| t.to_rfc3339());
                if f.latest.is_none() {
                    f.detail = Some("the table has no snapshot".into());
                }
            }
            (Some(col), None) => f.detail = Some(format!("column {col} is not in the table")),
            (Some(_), Some(at)) => match row.as_ref().map(|r| r.get(at).cloned()) {
                Ok(Some(Value::String(t))) => match parse_time(&t) {
                    Some(t) => f.latest = Some(t.to_rfc3339()),
                    None => f.detail = Some(format!("{t:?} is not a date or timestamp")),
                },
                Ok(_) => f.detail = Some("the table has no rows".into()),
                Err(e) => f.detail = Some(e.clone()),
            },
        }
        f
    });

    Report {
        snapshot_id: snapshot.map(|s| s.snapshot_id()),
        contract_version: contract.version.clone(),
        evaluated_at: Utc::now().to_rfc3339(),
        elapsed_ms: started.elapsed().as_millis() as u64,
        checks,
        freshness,
    }
}

/// One rule's plan: an aggregate of the scan (its position), a query of its own, or why it is not run.
fn plan_one(
    rule: &QualityRule,
    columns: &[String],
    reference: &str,
    has: &dyn Fn(&str) -> bool,
    aggregates: &mut Vec<String>,
) -> How {
    if let Some(missing) = columns.iter().find(|c| !has(c)) {
        return How::Skip(
            Status::Error,
            format!("column {missing} is not in the table"),
        );
    }
    match rule.kind.as_deref().unwrap_or("library") {
        "text" => How::Skip(Status::NotRun, "a text rule is read, not run".into()),
        "custom" => How::Skip(
            Status::NotRun,
            format!(
                "custom rules run in their own engine ({}), not in Parley",
                rule.engine.as_deref().unwrap_or("unnamed")
            ),
        ),
        "sql" => {
            let Some(q) = rule.query.as_deref() else {
                return How::Skip(Status::Error, "a sql rule needs query".into());
            };
            let mut sql = q
                .replace("${table}", reference)
                .replace("${object}", reference);
            if let Some(c) = columns.first() {
                sql = sql
                    .replace("${column}", &quote(c))
                    .replace("${property}", &quote(c));
            }
            How::Query(sql)
        }
        "library" => {
            let Some(m) = metric(rule) else {
                return How::Skip(Status::Error, "a library rule needs metric".into());
            };
            match m {
                "rowCount" => How::Aggregate(0),
                "duplicateValues" => {
                    if columns.is_empty() {
                        return How::Skip(
                            Status::Error,
                            "duplicateValues needs a column (on a property, or arguments.properties)".into(),
                        );
                    }
                    let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
                    let not_null = cols
                        .iter()
                        .map(|c| format!("{c} IS NOT NULL"))
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    How::Query(format!(
                        "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT count(*) AS n FROM {reference} WHERE \
                         {not_null} GROUP BY {} HAVING count(*) > 1) AS d",
                        cols.join(", ")
                    ))
                }
                _ => {
                    if columns.is_empty() {
                        return How::Skip(
                            Status::Error,
                            format!("{m} needs a column (on a property, or arguments.properties)"),
                        );
                    }
                    let mut conds = Vec::new();
                    for c in columns {
                        match offending(m, rule, &quote(c)) {
                            Ok(cond) => conds.push(cond),
                            Err(why) => return How::Skip(Status::Error, why),
                        }
                    }
                    aggregates.push(format!("count(*) FILTER (WHERE {})", conds.join(" OR ")));
                    How::Aggregate(aggregates.len() - 1)
                }
            }
        }
        other => How::Skip(Status::Error, format!("unknown rule type {other:?}")),
    }
}

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    if let Ok(x) = DateTime::parse_from_rfc3339(t) {
        return Some(x.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(x) = chrono::NaiveDateTime::parse_from_str(t, f) {
            return Some(x.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
}

/// Runs one rule query over `table` only, read-only as an agent's query is; the first row's values.
async fn run(
    sql: &str,
    name: &TableName,
    table: &iceberg::table::Table,
    engine: &Engine,
) -> Result<Vec<Value>, String> {
    let prepared =
        crate::query::prepare(sql, engine.limits(), engine.naming()).map_err(|e| e.to_string())?;
    if let Some(other) = prepared.tables.iter().find(|t| *t != name) {
        return Err(format!(
            "a quality rule may read only its own table ({name}), not {other}"
        ));
    }
    let result = crate::query::execute(
        prepared,
        vec![ReadableTable {
            name: name.clone(),
            source: TableSource::Iceberg(table.clone()),
        }],
        engine,
        QUALITY_CALLER,
        2,
        64 * 1024,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .map_err(|e| e.to_string())?;
    result
        .rows
        .into_iter()
        .next()
        .ok_or_else(|| "the query returned no rows".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> QualityRule {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn operators_judge_as_odcs_says() {
        let cases = [
            ("metric: nullValues", 0, Status::Pass),
            ("metric: nullValues", 1, Status::Fail),
            ("metric: rowCount", 5, Status::Measured),
            ("metric: rowCount\nmustBeGreaterThan: 5", 5, Status::Fail),
            (
                "metric: rowCount\nmustBeGreaterOrEqualTo: 5",
                5,
                Status::Pass,
            ),
            ("metric: rowCount\nmustBeLessThan: 5", 4, Status::Pass),
            ("metric: rowCount\nmustBeLessOrEqualTo: 5", 6, Status::Fail),
            ("metric: rowCount\nmustBeBetween: [1, 3]", 3, Status::Pass),
            ("metric: rowCount\nmustBeBetween: [1, 3]", 4, Status::Fail),
            (
                "metric: rowCount\nmustNotBeBetween: [1, 3]",
                2,
                Status::Fail,
            ),
            ("metric: rowCount\nmustNotBe: 0", 0, Status::Fail),
            ("type: sql\nquery: x\nmustBe: 7", 7, Status::Pass),
            (
                "metric: duplicateValues\nmustBeLessThan: 2",
                1,
                Status::Pass,
            ),
        ];
        for (yaml, measured, want) in cases {
            assert_eq!(
                judge(&rule(yaml), &Value::from(measured)).unwrap(),
                want,
                "{yaml} with {measured}"
            );
        }
        // Decimals come back as text; they compare as numbers.
        assert_eq!(
            judge(
                &rule("type: sql\nquery: x\nmustBeGreaterThan: 1"),
                &Value::from("1.50")
            )
            .unwrap(),
            Status::Pass
        );
        assert!(
            judge(
                &rule("metric: rowCount\nmustBeGreaterThan: 1"),
                &Value::from("abc")
            )
            .is_err()
        );
    }

    #[test]
    fn literals_and_identifiers_cannot_break_out() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal(&Value::from("it's")).unwrap(), "'it''s'");
        assert!(literal(&serde_json::json!({"a": 1})).is_none());
        let r = rule("metric: invalidValues\narguments:\n  validValues: ['a', \"b'); DROP\"]");
        let cond = offending("invalidValues", &r, "\"c\"").unwrap();
        assert!(cond.contains("'b''); DROP'"), "{cond}");
    }

    #[test]
    fn freshness_units() {
        let c = |value: &str, unit: &str| -> Contract {
            serde_yaml_ng::from_str(&format!(
                "apiVersion: v3.2.0\nkind: DataContract\nid: x\nversion: 1.0.0\nslaProperties:\n  - property: freshness\n    value: {value}\n    unit: {unit}\n    element: t.created_at\n"
            ))
            .unwrap()
        };
        let (promise, secs, el) = freshness_sla(&c("2", "h")).unwrap();
        assert_eq!(
            (promise.as_str(), secs.unwrap(), el.as_deref()),
            ("2 h", 7200, Some("created_at"))
        );
        assert_eq!(freshness_sla(&c("1", "d")).unwrap().1.unwrap(), 86_400);
        assert!(freshness_sla(&c("1", "fortnight")).unwrap().1.is_err());
        let f = Freshness {
            promise: "1 h".into(),
            max_age_seconds: 3600,
            element: None,
            latest: Some("2026-01-01T00:00:00+00:00".into()),
            detail: None,
        };
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        assert_eq!(f.holds_at(at("2026-01-01T01:00:00Z")), Some(true));
        assert_eq!(f.holds_at(at("2026-01-01T01:00:01Z")), Some(false));
        assert_eq!(
            parse_time("2026-01-02").unwrap(),
            at("2026-01-02T00:00:00Z")
        );
        assert_eq!(
            parse_time("2026-01-02T03:04:05.123").unwrap(),
            at("2026-01-02T03:04:05.123Z")
        );
    }
}

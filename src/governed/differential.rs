//! Differential test of the security barrier (issue 11): for thousands of generated queries — many built to fail
//! on some rows — the answer under a grant (rows, or the error and its text) equals the answer on a copy that
//! holds only the granted rows and columns, masked, computed here from the generated data without Parley's
//! governed plan. A query whose predicate fails only on excluded rows must therefore succeed under the grant.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use iceberg::NamespaceIdent;
use iceberg::spec::{NestedField, PrimitiveType, Type};
use iceberg::table::Table;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{ColumnMask, Governance};
use crate::catalog::TableName;
use crate::config::QueryLimits;
use crate::query::{Engine, QueryError, ReadableTable, TableSource, execute, prepare};

/// One generated customer. Excluded rows (country outside the grant's filter) carry secrets in `name`, `email`
/// and `segment` that must never appear in any answer under the grant.
#[derive(Clone, Debug)]
struct Customer {
    id: i64,
    name: String,
    email: String,
    country: &'static str,
    segment: Option<String>,
    ltv: Option<i64>,
    /// Days since 1970-01-01.
    signup: i32,
    /// Not granted: must not exist for the query.
    score: i64,
}

const COUNTRIES: [&str; 4] = ["DE", "FR", "US", "IT"];
const GRANTED: [&str; 2] = ["DE", "IT"];
const SALT: &str = "grant-salt";

fn customers(n: i64) -> Vec<Customer> {
    let mut rng = fastrand::Rng::with_seed(11);
    (1..=n)
        .map(|id| {
            let country = COUNTRIES[rng.usize(0..COUNTRIES.len())];
            let excluded = !GRANTED.contains(&country);
            let segment = match rng.u8(0..6) {
                0 => None,
                1 => Some(format!("{}", rng.i64(0..100))),
                2 => Some("vip".to_string()),
                3 if excluded => Some(format!("secretseg{id}")),
                _ => Some("retail".to_string()),
            };
            Customer {
                id,
                name: if excluded {
                    format!("Secretname{id}")
                } else {
                    format!("Name{id}")
                },
                email: format!("user{id}@{}.example", country.to_lowercase()),
                country,
                segment,
                ltv: (rng.u8(0..10) > 0).then(|| rng.i64(0..100_000)),
                signup: rng.i32(10_000..20_000),
                score: rng.i64(0..1000),
            }
        })
        .collect()
}

async fn table_of(rows: &[Customer], dir: &std::path::Path) -> Table {
    let catalog = crate::catalog::open_sql_catalog(&dir.join("c.db"), &dir.join("w"), "t")
        .await
        .unwrap();
    catalog
        .create_namespace(
            &NamespaceIdent::new("sales".to_string()),
            Default::default(),
        )
        .await
        .unwrap();
    let p = |t| Type::Primitive(t);
    let layout = crate::demo::TableLayout {
        namespace: "sales",
        name: "customers",
        fields: vec![
            NestedField::required(1, "customer_id", p(PrimitiveType::Long)),
            NestedField::required(2, "name", p(PrimitiveType::String)),
            NestedField::required(3, "email", p(PrimitiveType::String)),
            NestedField::required(4, "country", p(PrimitiveType::String)),
            NestedField::optional(5, "segment", p(PrimitiveType::String)),
            NestedField::optional(6, "ltv", p(PrimitiveType::Long)),
            NestedField::required(7, "signup", p(PrimitiveType::Date)),
            NestedField::required(8, "score", p(PrimitiveType::Long)),
        ],
        partition: None,
        properties: vec![],
    };
    let table = crate::demo::create_table(catalog.as_ref(), layout)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Ok(vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|c| c.id))) as ArrayRef,
        Arc::new(StringArray::from_iter_values(rows.iter().map(|c| &c.name))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|c| &c.email))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|c| c.country),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|c| c.segment.as_deref()),
        )),
        Arc::new(Int64Array::from_iter(rows.iter().map(|c| c.ltv))),
        Arc::new(Date32Array::from_iter_values(rows.iter().map(|c| c.signup))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|c| c.score))),
    ]))
    .await
    .unwrap();
    drop(tx);
    crate::demo::append(catalog.as_ref(), table, 100_000, rx)
        .await
        .unwrap()
}

fn governance() -> Governance {
    Governance {
        columns: [
            "customer_id",
            "name",
            "email",
            "country",
            "segment",
            "ltv",
            "signup",
        ]
        .map(String::from)
        .to_vec(),
        masks: [
            ("name".to_string(), ColumnMask::Redact),
            ("email".to_string(), ColumnMask::Hash),
            ("signup".to_string(), ColumnMask::YearOnly),
        ]
        .into(),
        row_filter: Some(("country".to_string(), GRANTED.map(String::from).to_vec())),
        salt: SALT.to_string(),
    }
}

/// The granted rows and columns, masked, computed from the generated data; typed like the governed view.
fn copy_of(rows: &[Customer], schema: &datafusion::arrow::datatypes::SchemaRef) -> RecordBatch {
    let granted: Vec<&Customer> = rows
        .iter()
        .filter(|c| GRANTED.contains(&c.country))
        .collect();
    let first_of_year = |days: i32| {
        let date = chrono::DateTime::from_timestamp(days as i64 * 86_400, 0)
            .unwrap()
            .date_naive();
        let jan1 = chrono::NaiveDate::from_ymd_opt(chrono::Datelike::year(&date), 1, 1).unwrap();
        (jan1 - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
    };
    let hash = |v: &str| hex::encode(Sha256::digest(format!("{SALT}{v}")));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(granted.iter().map(|c| c.id))),
        Arc::new(StringArray::from_iter_values(
            granted.iter().map(|_| "REDACTED"),
        )),
        Arc::new(StringArray::from_iter_values(
            granted.iter().map(|c| hash(&c.email)),
        )),
        Arc::new(StringArray::from_iter_values(
            granted.iter().map(|c| c.country),
        )),
        Arc::new(StringArray::from_iter(
            granted.iter().map(|c| c.segment.as_deref()),
        )),
        Arc::new(Int64Array::from_iter(granted.iter().map(|c| c.ltv))),
        Arc::new(Date32Array::from_iter_values(
            granted.iter().map(|c| first_of_year(c.signup)),
        )),
    ];
    let columns = columns
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| cast(c, f.data_type()).unwrap())
        .collect();
    RecordBatch::try_new(schema.clone(), columns).unwrap()
}

/// A predicate over the visible columns, often one that fails (casts, division by zero) on some rows.
fn predicate(rng: &mut fastrand::Rng, n: i64, depth: u8) -> String {
    let id = rng.i64(1..=n);
    let x = rng.i64(0..100_000);
    let atom = match rng.u8(0..14) {
        0 => format!("customer_id = {id}"),
        1 => format!("ltv >= {x}"),
        2 => format!("country = '{}'", COUNTRIES[rng.usize(0..4)]),
        3 => "segment = 'vip'".to_string(),
        4 => "CAST(segment AS BIGINT) > 10".to_string(),
        5 => format!("1 / (CASE WHEN customer_id = {id} AND ltv >= {x} THEN 0 ELSE 1 END) = 1"),
        6 => "CAST(CAST(customer_id AS VARCHAR) || country AS BIGINT) > 0".to_string(),
        7 => "CAST(country || CAST(ltv AS VARCHAR) AS INT) IS NOT NULL".to_string(),
        8 => format!("ltv / (customer_id - {id}) > 3"),
        9 => "CAST(segment AS INT) + ltv > 5000".to_string(),
        10 => format!("customer_id % {} = 0", rng.i64(1..7)),
        11 => "email LIKE 'a%'".to_string(),
        12 => format!("signup >= DATE '{}-01-01'", rng.i32(1997..2025)),
        _ => "segment IS NULL".to_string(),
    };
    if depth == 0 {
        return atom;
    }
    match rng.u8(0..5) {
        0 => format!("({atom} AND {})", predicate(rng, n, depth - 1)),
        1 => format!("({atom} OR {})", predicate(rng, n, depth - 1)),
        2 => format!("NOT ({atom})"),
        _ => atom,
    }
}

fn query(rng: &mut fastrand::Rng, n: i64) -> String {
    let p = predicate(rng, n, 2);
    match rng.u8(0..8) {
        0 => format!("SELECT customer_id, segment, ltv FROM sales.customers WHERE {p}"),
        1 => format!("SELECT count(*), sum(ltv), max(ltv) FROM sales.customers WHERE {p}"),
        2 => format!("SELECT segment, count(*) FROM sales.customers WHERE {p} GROUP BY segment"),
        3 => format!(
            "SELECT a.customer_id, b.ltv FROM sales.customers a JOIN sales.customers b \
             ON a.customer_id = b.customer_id AND {}",
            p.replace("customer_id", "b.customer_id")
                .replace("ltv", "b.ltv")
                .replace("segment", "b.segment")
                .replace("country", "b.country")
                .replace("email", "b.email")
                .replace("signup", "b.signup")
        ),
        4 => format!(
            "SELECT customer_id FROM sales.customers WHERE customer_id IN \
             (SELECT customer_id FROM sales.customers WHERE {p})"
        ),
        5 => format!("SELECT * FROM sales.customers WHERE {p} LIMIT 5"),
        6 => format!(
            "SELECT CASE WHEN {p} THEN 1 ELSE 0 END AS hit, customer_id FROM sales.customers"
        ),
        _ => format!(
            "SELECT max(customer_id) FROM sales.customers HAVING max(customer_id) > 0 AND count(*) > 0 AND bool_or({p})"
        ),
    }
}

/// What a query answered, comparably: the sorted rows (JSON), or the error text.
fn outcome(r: Result<crate::query::QueryResult, QueryError>) -> Result<Vec<String>, String> {
    match r {
        Ok(r) => {
            let mut rows: Vec<String> = r
                .rows
                .iter()
                .map(|row| Value::Array(row.clone()).to_string())
                .collect();
            rows.sort();
            Ok(rows)
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn run(engine: &Engine, sql: &str, source: TableSource) -> Result<Vec<String>, String> {
    let prepared = prepare(sql, engine.limits(), engine.naming()).map_err(|e| e.to_string())?;
    let tables = vec![ReadableTable {
        name: TableName::parse("sales.customers").unwrap(),
        source,
    }];
    outcome(
        execute(
            prepared,
            tables,
            engine,
            "tester",
            1000,
            usize::MAX,
            CancellationToken::new(),
        )
        .await,
    )
}

/// Text no answer under the grant may contain: the excluded rows' secrets and the ungranted column.
fn secrets(rows: &[Customer]) -> Vec<String> {
    let mut out = vec!["score".to_string()];
    for c in rows.iter().filter(|c| !GRANTED.contains(&c.country)) {
        out.push(c.name.clone());
        out.push(c.email.clone());
        if let Some(s) = c.segment.as_ref().filter(|s| s.starts_with("secretseg")) {
            out.push(s.clone());
        }
    }
    out
}

fn assert_no_secret(sql: &str, answer: &Result<Vec<String>, String>, secrets: &[String]) {
    let text = match answer {
        Ok(rows) => rows.join("\n"),
        Err(e) => e.clone(),
    };
    // `score` may appear as a word in an error only because the query named it; generated queries never do.
    for s in secrets {
        assert!(!text.contains(s.as_str()), "{sql}\nleaks {s:?} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_under_a_grant_equal_answers_on_the_granted_copy() {
    const N: i64 = 300;
    const QUERIES: usize = 2000;
    let rows = customers(N);
    let dir = tempfile::tempdir().unwrap();
    let table = table_of(&rows, dir.path()).await;
    let governance = governance();
    let schema = super::view(table.clone(), &governance, crate::scan::Files::Own)
        .await
        .unwrap()
        .schema();
    let copy = copy_of(&rows, &schema);
    let secrets = secrets(&rows);
    // One partition: rows are evaluated in file order on both sides, so even the first failing row (which an
    // error message quotes) is the same.
    let limits = QueryLimits {
        target_partitions: 1,
        ..QueryLimits::default()
    };
    let engine = Engine::new(&limits, crate::query::Naming::Single("parley".into())).unwrap();
    let mut rng = fastrand::Rng::with_seed(2026);
    let (mut failing, mut differing) = (0, Vec::new());
    for _ in 0..QUERIES {
        let sql = query(&mut rng, N);
        let governed = run(
            &engine,
            &sql,
            TableSource::Governed(table.clone(), governance.clone()),
        )
        .await;
        let expected = run(&engine, &sql, TableSource::Rows(copy.clone())).await;
        assert_no_secret(&sql, &governed, &secrets);
        failing += usize::from(expected.is_err());
        if governed != expected {
            differing.push(format!(
                "{sql}\n  governed: {governed:?}\n  copy:     {expected:?}"
            ));
        }
    }
    assert!(
        differing.is_empty(),
        "{} of {QUERIES} answers differ:\n{}",
        differing.len(),
        differing[..differing.len().min(5)].join("\n")
    );
    // The generator must exercise both sides of the barrier: answers that fail and answers that do not.
    assert!(
        failing > QUERIES / 20 && failing < QUERIES * 3 / 4,
        "{failing} of {QUERIES} failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predicate_that_fails_only_on_excluded_rows_answers_nothing_about_them() {
    let rows = customers(300);
    let dir = tempfile::tempdir().unwrap();
    let table = table_of(&rows, dir.path()).await;
    let engine = Engine::new(
        &QueryLimits::default(),
        crate::query::Naming::Single("parley".into()),
    )
    .unwrap();
    let governed = || TableSource::Governed(table.clone(), governance());
    let excluded = rows
        .iter()
        .find(|c| !GRANTED.contains(&c.country) && c.ltv.is_some())
        .unwrap();
    let ltv = excluded.ltv.unwrap();
    // The binary-search oracle of the attack report: an error would say "this excluded row has ltv >= x".
    for x in [0, ltv, ltv + 1] {
        let sql = format!(
            "SELECT count(*) FROM sales.customers WHERE 1 / (CASE WHEN customer_id = {} AND ltv >= {x} \
             THEN 0 ELSE 1 END) = 1",
            excluded.id
        );
        let answer = run(&engine, &sql, governed()).await;
        let granted = rows.iter().filter(|c| GRANTED.contains(&c.country)).count();
        assert_eq!(answer, Ok(vec![format!("[{granted}]")]), "{sql}");
    }
    // A cast that fails on an excluded row's text: neither an error nor the text.
    let sql = "SELECT count(*) FROM sales.customers WHERE \
               CASE WHEN segment IN ('vip', 'retail') THEN 0 ELSE CAST(segment AS BIGINT) END >= 0";
    let answer = run(&engine, sql, governed()).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_no_secret(sql, &answer, &secrets(&rows));
    // The ungranted column does not exist, in a filter or a select.
    let answer = run(
        &engine,
        "SELECT customer_id FROM sales.customers WHERE score > 0",
        governed(),
    )
    .await;
    assert!(
        answer.as_ref().is_err_and(|e| e.contains("score")),
        "{answer:?}"
    );
}

//! Benchmark data: `parley bench data` (TPC-H as Iceberg tables) and `parley bench catalog` (a catalog with
//! thousands of tiny tables for discovery benchmarks).
//!
//! Rows come from the `tpchgen` crate (the TPC-H dbgen port from datafusion-contrib); this module only turns its
//! rows into Arrow columns and writes them through iceberg-rust, like the demo tables: SQL catalog on SQLite,
//! Parquet with zstd, `lineitem` and `orders` partitioned by year of their date. `tpchgen-arrow` is not used: its
//! releases build on arrow 56/59/60, while iceberg-rust 0.10 and DataFusion 53 need arrow 58, and two arrows in
//! one tree do not interoperate.
//!
//! A bench dir is an ordinary Parley data dir (`parley serve --data-dir DIR` serves it) with a contract per table
//! and the demo policy, under which `analyst` may query every TPC-H table (none is classified as PII).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int32Array, Int64Array, StringBuilder,
};
use iceberg::spec::{NestedField, PrimitiveType as P, Transform, Type};
use iceberg::{Catalog, NamespaceIdent};
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};

use crate::catalog::open_sql_catalog;
use crate::demo::{DataDir, POLICY_FILES, TableLayout, append, create_table};

/// Namespace of the TPC-H tables.
pub const TPCH_NAMESPACE: &str = "tpch";

/// File written into the data dir once all benchmark data is there (an interrupted run leaves none).
pub const COMPLETE: &str = "bench-complete";

/// Rows per generated chunk (one Arrow batch handed to the writer).
const CHUNK_ROWS: f64 = 500_000.0;

/// Parquet row-group size of the TPC-H files: close to DuckDB's 122,880, small enough for min/max pruning and
/// for two cores to split a file, large enough to keep per-group overhead low.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// One column: name, Iceberg type.
type Column = (&'static str, P);

fn decimal() -> P {
    P::Decimal {
        precision: 15,
        scale: 2,
    }
}

/// A TPC-H table: schema, partitioning, rows at SF 1 (for chunking) and a chunk generator `(sf, part, parts)`.
struct TpchTable {
    name: &'static str,
    columns: Vec<Column>,
    partition: Option<(&'static str, &'static str, Transform)>,
    rows_at_sf1: f64,
    /// `true` for nation and region, whose size does not scale.
    fixed: bool,
    generate: fn(f64, i32, i32) -> Vec<ArrayRef>,
}

/// What `write_tpch` wrote.
#[derive(Debug)]
pub struct TpchSummary {
    /// `(table, rows, seconds)`.
    pub tables: Vec<(String, u64, f64)>,
}

/// Writes TPC-H at scale factor `sf` into a fresh data dir (refuses a dir that already holds a catalog).
pub async fn write_tpch(dir: &DataDir, sf: f64, catalog_name: &str) -> Result<TpchSummary> {
    if !(sf > 0.0 && sf <= 1000.0) {
        bail!("scale factor {sf} is out of range: use a value in (0, 1000], e.g. 1 or 10");
    }
    let catalog = fresh_catalog(dir, catalog_name).await?;
    let ns = NamespaceIdent::new(TPCH_NAMESPACE.to_string());
    catalog
        .create_namespace(
            &ns,
            HashMap::from([("comment".to_string(), format!("TPC-H at scale factor {sf}"))]),
        )
        .await?;
    let mut summary = TpchSummary { tables: Vec::new() };
    for spec in tables() {
        let started = Instant::now();
        write_contract(dir, &spec, sf)?;
        let table = create_table(
            catalog.as_ref(),
            TableLayout {
                namespace: TPCH_NAMESPACE,
                name: spec.name,
                fields: fields(&spec.columns),
                partition: spec.partition,
                properties: vec![("parley.bench.sf".to_string(), sf.to_string())],
            },
        )
        .await?;
        let parts = if spec.fixed {
            1
        } else {
            ((spec.rows_at_sf1 * sf / CHUNK_ROWS).ceil() as i32).max(1)
        };
        // Generation runs on a blocking thread one chunk ahead of the (CPU-bound) Parquet writer.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let generate = spec.generate;
        let producer = tokio::task::spawn_blocking(move || {
            for part in 1..=parts {
                let columns = generate(sf, part, parts);
                // A tiny scale factor can leave a chunk empty: there is nothing to write then.
                if !columns.is_empty() && tx.blocking_send(Ok(columns)).is_err() {
                    break;
                }
            }
        });
        let table = append(catalog.as_ref(), table, ROW_GROUP_ROWS, rx).await?;
        producer.await?;
        let rows = table
            .metadata()
            .current_snapshot()
            .and_then(|s| s.summary().additional_properties.get("total-records"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(table = spec.name, rows, secs, "written");
        summary.tables.push((spec.name.to_string(), rows, secs));
    }
    std::fs::write(dir.root.join(COMPLETE), format!("tpch sf {sf}\n"))?;
    Ok(summary)
}

/// Writes a catalog of `count` tiny tables (metadata only, no data files) over `count / 100` namespaces, each
/// with a contract, for discovery benchmarks.
pub async fn write_wide_catalog(dir: &DataDir, count: usize, catalog_name: &str) -> Result<()> {
    if count == 0 || count > 1_000_000 {
        bail!("table count {count} is out of range: use 1 to 1000000");
    }
    let catalog = fresh_catalog(dir, catalog_name).await?;
    let per_ns = 100;
    let mut created_ns = None;
    for i in 0..count {
        let ns_name = format!("domain_{:04}", i / per_ns);
        if created_ns.as_deref() != Some(ns_name.as_str()) {
            catalog
                .create_namespace(&NamespaceIdent::new(ns_name.clone()), HashMap::new())
                .await?;
            created_ns = Some(ns_name.clone());
        }
        let name = format!("table_{i:06}");
        let columns = [("id", P::Long), ("label", P::String), ("day", P::Date)];
        let contract = contract_yaml(
            &ns_name,
            &name,
            &columns,
            &format!("Synthetic table {i} of a {count}-table catalog."),
        );
        let path = dir.contracts().join(&ns_name).join(format!("{name}.yaml"));
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(&path, contract)?;
        create_table(
            catalog.as_ref(),
            TableLayout {
                namespace: &ns_name,
                name: &name,
                fields: fields(&columns),
                partition: None,
                properties: Vec::new(),
            },
        )
        .await?;
        if (i + 1) % 1000 == 0 {
            tracing::info!(tables = i + 1, "created");
        }
    }
    std::fs::write(dir.root.join(COMPLETE), format!("catalog {count} tables\n"))?;
    Ok(())
}

fn fields(columns: &[Column]) -> Vec<NestedField> {
    columns
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| {
            NestedField::required(i as i32 + 1, *name, Type::Primitive(ty.clone()))
        })
        .collect()
}

/// Creates the data dir layout (policy files included) and an empty SQL catalog; refuses an existing catalog.
async fn fresh_catalog(dir: &DataDir, catalog_name: &str) -> Result<Arc<dyn Catalog>> {
    if dir.catalog_db().exists() {
        bail!(
            "{} already holds a catalog; pick an empty --data-dir for benchmark data",
            dir.root.display()
        );
    }
    std::fs::create_dir_all(dir.warehouse())
        .with_context(|| format!("cannot create {}", dir.warehouse().display()))?;
    std::fs::create_dir_all(dir.policy())?;
    for (name, text) in POLICY_FILES {
        std::fs::write(dir.policy().join(name), text)?;
    }
    Ok(open_sql_catalog(&dir.catalog_db(), &dir.warehouse(), catalog_name).await?)
}

fn write_contract(dir: &DataDir, spec: &TpchTable, sf: f64) -> Result<()> {
    let path = dir
        .contracts()
        .join(TPCH_NAMESPACE)
        .join(format!("{}.yaml", spec.name));
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let purpose = format!(
        "TPC-H {} table at scale factor {sf} (synthetic benchmark data).",
        spec.name
    );
    std::fs::write(
        path,
        contract_yaml(TPCH_NAMESPACE, spec.name, &spec.columns, &purpose),
    )?;
    Ok(())
}

/// An ODCS v3.2.0 contract for a synthetic table: every column public, any internal purpose.
fn contract_yaml(namespace: &str, table: &str, columns: &[Column], purpose: &str) -> String {
    let mut y = format!(
        "apiVersion: v3.2.0\nkind: DataContract\nid: urn:parley:bench:{namespace}:{table}\nname: {table}\n\
         version: 1.0.0\nstatus: active\ndomain: {namespace}\ntenant: bench\ntags: [benchmark, synthetic]\n\
         description:\n  purpose: {purpose}\n  usage: Benchmarks and any internal analysis.\n  \
         limitations: Synthetic data.\nschema:\n  - name: {table}\n    physicalName: {namespace}.{table}\n    \
         physicalType: table\n    description: Synthetic rows.\n    properties:\n"
    );
    for (name, ty) in columns {
        let (logical, physical) = match ty {
            P::Long => ("integer", "bigint".to_string()),
            P::Int => ("integer", "int".to_string()),
            P::Date => ("date", "date".to_string()),
            P::Decimal { precision, scale } => ("number", format!("decimal({precision},{scale})")),
            _ => ("string", "string".to_string()),
        };
        let _ = write!(
            y,
            "      - name: {name}\n        logicalType: {logical}\n        physicalType: {physical}\n        \
             required: true\n        classification: public\n"
        );
    }
    let _ = write!(
        y,
        "team:\n  name: bench-owners\n  members:\n    - username: bench-owner\n      role: owner\nroles:\n  \
         - role: {table}-reader\n    access: read\n    firstLevelApprovers: bench-owner\n\
         customProperties:\n  - property: allowedPurposes\n    value: [any_internal]\n  \
         - property: prohibitedPurposes\n    value: []\ncontractCreatedTs: \"2026-11-27T00:00:00Z\"\n"
    );
    y
}

// ---- TPC-H rows to Arrow columns ---------------------------------------------------------------------------

fn tables() -> Vec<TpchTable> {
    use P::{Date, Int, Long, String as Str};
    vec![
        TpchTable {
            name: "region",
            columns: vec![("r_regionkey", Long), ("r_name", Str), ("r_comment", Str)],
            partition: None,
            rows_at_sf1: 5.0,
            fixed: true,
            generate: region,
        },
        TpchTable {
            name: "nation",
            columns: vec![
                ("n_nationkey", Long),
                ("n_name", Str),
                ("n_regionkey", Long),
                ("n_comment", Str),
            ],
            partition: None,
            rows_at_sf1: 25.0,
            fixed: true,
            generate: nation,
        },
        TpchTable {
            name: "supplier",
            columns: vec![
                ("s_suppkey", Long),
                ("s_name", Str),
                ("s_address", Str),
                ("s_nationkey", Long),
                ("s_phone", Str),
                ("s_acctbal", decimal()),
                ("s_comment", Str),
            ],
            partition: None,
            rows_at_sf1: 10_000.0,
            fixed: false,
            generate: supplier,
        },
        TpchTable {
            name: "customer",
            columns: vec![
                ("c_custkey", Long),
                ("c_name", Str),
                ("c_address", Str),
                ("c_nationkey", Long),
                ("c_phone", Str),
                ("c_acctbal", decimal()),
                ("c_mktsegment", Str),
                ("c_comment", Str),
            ],
            partition: None,
            rows_at_sf1: 150_000.0,
            fixed: false,
            generate: customer,
        },
        TpchTable {
            name: "part",
            columns: vec![
                ("p_partkey", Long),
                ("p_name", Str),
                ("p_mfgr", Str),
                ("p_brand", Str),
                ("p_type", Str),
                ("p_size", Int),
                ("p_container", Str),
                ("p_retailprice", decimal()),
                ("p_comment", Str),
            ],
            partition: None,
            rows_at_sf1: 200_000.0,
            fixed: false,
            generate: part,
        },
        TpchTable {
            name: "partsupp",
            columns: vec![
                ("ps_partkey", Long),
                ("ps_suppkey", Long),
                ("ps_availqty", Int),
                ("ps_supplycost", decimal()),
                ("ps_comment", Str),
            ],
            partition: None,
            rows_at_sf1: 800_000.0,
            fixed: false,
            generate: partsupp,
        },
        TpchTable {
            name: "orders",
            columns: vec![
                ("o_orderkey", Long),
                ("o_custkey", Long),
                ("o_orderstatus", Str),
                ("o_totalprice", decimal()),
                ("o_orderdate", Date),
                ("o_orderpriority", Str),
                ("o_clerk", Str),
                ("o_shippriority", Int),
                ("o_comment", Str),
            ],
            partition: Some(("o_orderdate", "o_orderdate_year", Transform::Year)),
            rows_at_sf1: 1_500_000.0,
            fixed: false,
            generate: orders,
        },
        TpchTable {
            name: "lineitem",
            columns: vec![
                ("l_orderkey", Long),
                ("l_partkey", Long),
                ("l_suppkey", Long),
                ("l_linenumber", Int),
                ("l_quantity", decimal()),
                ("l_extendedprice", decimal()),
                ("l_discount", decimal()),
                ("l_tax", decimal()),
                ("l_returnflag", Str),
                ("l_linestatus", Str),
                ("l_shipdate", Date),
                ("l_commitdate", Date),
                ("l_receiptdate", Date),
                ("l_shipinstruct", Str),
                ("l_shipmode", Str),
                ("l_comment", Str),
            ],
            partition: Some(("l_shipdate", "l_shipdate_year", Transform::Year)),
            // Orders have 1 to 7 lines, 4 on average.
            rows_at_sf1: 6_000_000.0,
            fixed: false,
            generate: lineitem,
        },
    ]
}

/// Column builders for one chunk; `Cols::finish` yields the arrays in declaration order.
#[derive(Default)]
struct Cols(Vec<Col>);

enum Col {
    Long(Vec<i64>),
    Int(Vec<i32>),
    Decimal(Vec<i128>),
    Date(Vec<i32>),
    Str(StringBuilder),
}

impl Cols {
    fn col(&mut self, i: usize, make: fn() -> Col) -> &mut Col {
        if self.0.len() <= i {
            self.0.push(make());
        }
        &mut self.0[i]
    }
    fn long(&mut self, i: usize, v: i64) {
        if let Col::Long(c) = self.col(i, || Col::Long(Vec::new())) {
            c.push(v);
        }
    }
    fn int(&mut self, i: usize, v: i32) {
        if let Col::Int(c) = self.col(i, || Col::Int(Vec::new())) {
            c.push(v);
        }
    }
    /// A TPC-H decimal: an integer count of hundredths.
    fn dec(&mut self, i: usize, hundredths: i64) {
        if let Col::Decimal(c) = self.col(i, || Col::Decimal(Vec::new())) {
            c.push(hundredths as i128);
        }
    }
    fn date(&mut self, i: usize, days_since_epoch: i32) {
        if let Col::Date(c) = self.col(i, || Col::Date(Vec::new())) {
            c.push(days_since_epoch);
        }
    }
    /// Any displayable value (tpchgen's names, phones and addresses format themselves).
    fn str(&mut self, i: usize, v: impl std::fmt::Display) {
        if let Col::Str(c) = self.col(i, || Col::Str(StringBuilder::new())) {
            let _ = write!(c, "{v}");
            c.append_value("");
        }
    }
    fn finish(self) -> Vec<ArrayRef> {
        self.0
            .into_iter()
            .map(|c| -> ArrayRef {
                match c {
                    Col::Long(v) => Arc::new(Int64Array::from(v)),
                    Col::Int(v) => Arc::new(Int32Array::from(v)),
                    Col::Decimal(v) => Arc::new(
                        Decimal128Array::from(v)
                            .with_precision_and_scale(15, 2)
                            .expect("valid decimal precision"),
                    ),
                    Col::Date(v) => Arc::new(Date32Array::from(v)),
                    Col::Str(mut b) => Arc::new(b.finish()),
                }
            })
            .collect()
    }
}

fn region(sf: f64, part: i32, parts: i32) -> Vec<ArrayRef> {
    let mut c = Cols::default();
    for r in RegionGenerator::new(sf, part, parts).iter() {
        c.long(0, r.r_regionkey);
        c.str(1, r.r_name);
        c.str(2, r.r_comment);
    }
    c.finish()
}

fn nation(sf: f64, part: i32, parts: i32) -> Vec<ArrayRef> {
    let mut c = Cols::default();
    for n in NationGenerator::new(sf, part, parts).iter() {
        c.long(0, n.n_nationkey);
        c.str(1, n.n_name);
        c.long(2, n.n_regionkey);
        c.str(3, n.n_comment);
    }
    c.finish()
}

fn supplier(sf: f64, part: i32, parts: i32) -> Vec<ArrayRef> {
    let mut c = Cols::default();
    for s in SupplierGenerator::new(sf, part, parts).iter() {
        c.long(0, s.s_suppkey);
        c.str(1, s.s_name);
        c.str(2, s.s_address);
        c.long(3, s.s_nationkey);
        c.str(4, s.s_phone);
        c.dec(5, s.s_acctbal.0);
        c.str(6, s.s_comment);
    }
    c.finish()
}

fn customer(sf: f64, part: i32, parts: i32) -> Vec<ArrayRef> {
    let mut c = Cols::default();
    for r in CustomerGenerator::new(sf, part, parts).iter() {
        c.long(0, r.c_custkey);
        c.str(1, r.c_name);
        c.str(2, r.c_address);
        c.long(3, r.c_nationkey);
        c.str(4, r.c_phone);
        c.dec(5, r.c_acctbal.0);
        c.str(6, r.c_mktsegment);
        c.str(7, r.c_comment);
    }
    c.finish()
}

fn part(sf: f64, part: i32, parts: i32) -> Vec<ArrayRef> {
    let mut c = Cols::default();
    for p in PartGenerator::new(sf, part, parts).iter() {
        c.long(0, p.p_partkey);
        c.str(1, p.p_name);
        c.str(2, p.p_mfgr);
        c.str(3, p.p_brand);
        c.str(4, p.p_type);
        c.int(5, p.p_size);
        c.str(6, p.p_container);
        c.dec(7, p.p_retailprice.0);
        c.str(8, p.p_comment);
    }
    c.finish()
}

fn partsupp(sf: f64, part: i32, parts: i32) -> Vec<ArrayRef> {
    let mut c = Cols::default();
    for p in PartSuppGenerator::new(sf, part, parts).iter() {
        c.long(0, p.ps_partkey);
        c.long(1, p.ps_suppkey);
        c.int(2, p.ps_availqty);
        c.dec(3, p.ps_supplycost.0);
        c.str(4, p.ps_comment);
    }
    c.finish()
}

fn orders(sf: f64, part: i32, parts: i32) -> Vec<ArrayRef> {
    let mut c = Cols::default();
    for o in OrderGenerator::new(sf, part, parts).iter() {
        c.long(0, o.o_orderkey);
        c.long(1, o.o_custkey);
        c.str(2, o.o_orderstatus);
        c.dec(3, o.o_totalprice.0);
        c.date(4, o.o_orderdate.to_unix_epoch());
        c.str(5, o.o_orderpriority);
        c.str(6, o.o_clerk);
        c.int(7, o.o_shippriority);
        c.str(8, o.o_comment);
    }
    c.finish()
}

fn lineitem(sf: f64, part: i32, parts: i32) -> Vec<ArrayRef> {
    let mut c = Cols::default();
    for l in LineItemGenerator::new(sf, part, parts).iter() {
        c.long(0, l.l_orderkey);
        c.long(1, l.l_partkey);
        c.long(2, l.l_suppkey);
        c.int(3, l.l_linenumber);
        // tpchgen keeps the quantity as a whole number; the spec's type is decimal(15,2).
        c.dec(4, l.l_quantity * 100);
        c.dec(5, l.l_extendedprice.0);
        c.dec(6, l.l_discount.0);
        c.dec(7, l.l_tax.0);
        c.str(8, l.l_returnflag);
        c.str(9, l.l_linestatus);
        c.date(10, l.l_shipdate.to_unix_epoch());
        c.date(11, l.l_commitdate.to_unix_epoch());
        c.date(12, l.l_receiptdate.to_unix_epoch());
        c.str(13, l.l_shipinstruct);
        c.str(14, l.l_shipmode);
        c.str(15, l.l_comment);
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_have_the_schema_of_their_table() {
        for spec in tables() {
            let parts = if spec.fixed { 1 } else { 4 };
            let cols = (spec.generate)(0.01, 1, parts);
            assert_eq!(cols.len(), spec.columns.len(), "{}", spec.name);
            let rows = cols[0].len();
            assert!(rows > 0, "{} generated no rows", spec.name);
            assert!(cols.iter().all(|c| c.len() == rows), "{}", spec.name);
        }
    }

    #[test]
    fn contracts_validate_against_odcs() {
        let spec = &tables()[7];
        let yaml = contract_yaml(TPCH_NAMESPACE, spec.name, &spec.columns, "TPC-H lineitem.");
        let contract = crate::contracts::parse(&yaml, std::path::Path::new("lineitem.yaml"))
            .expect("valid ODCS contract");
        assert_eq!(contract.schema[0].properties.len(), 16);
    }
}

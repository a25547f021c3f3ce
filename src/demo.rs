//! Demo lakehouse: what `parley init` (and a first `parley serve` with no configuration) creates in the data dir.
//!
//! Four real Iceberg tables in two namespaces, written through iceberg-rust (metadata JSON, manifests, Parquet
//! with zstd) into a SQL catalog on SQLite that pyiceberg and DuckDB read too; an ODCS contract per table; and the
//! Cedar demo policy. Data is deterministic: the same rows every time.
//!
//! Invariant: init never corrupts or duplicates data. It writes a marker saying `initializing` before it creates
//! anything and `complete` (atomically) after the last commit; a dir whose marker says `initializing` was
//! interrupted and is rebuilt from scratch, and a dir with a catalog but no marker is someone else's lakehouse
//! and is never touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::SchemaRef as ArrowSchemaRef;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use iceberg::arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema};
use iceberg::spec::{
    DataFileFormat, NestedField, PrimitiveType as P, Schema, Transform, Type, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, NamespaceIdent, TableCreation};
use serde::{Deserialize, Serialize};

use crate::catalog::open_sql_catalog;

/// Demo contracts, `(path under contracts/, YAML)`.
pub const CONTRACTS: [(&str, &str); 4] = [
    (
        "sales/customers.yaml",
        include_str!("../examples/contracts/sales/customers.yaml"),
    ),
    (
        "sales/orders.yaml",
        include_str!("../examples/contracts/sales/orders.yaml"),
    ),
    (
        "sales/products.yaml",
        include_str!("../examples/contracts/sales/products.yaml"),
    ),
    (
        "ops/shipments.yaml",
        include_str!("../examples/contracts/ops/shipments.yaml"),
    ),
];

/// Demo policy files, `(file name under policy/, text)`.
pub const POLICY_FILES: [(&str, &str); 3] = [
    (
        "policy.cedar",
        include_str!("../examples/policy/policy.cedar"),
    ),
    (
        "entities.json",
        include_str!("../examples/policy/entities.json"),
    ),
    (
        "purposes.yaml",
        include_str!("../examples/policy/purposes.yaml"),
    ),
];

/// Rows of the demo tables (orders: first snapshot, then the append).
pub const CUSTOMERS_ROWS: usize = 20_000;
/// Rows of `sales.orders` in its first snapshot.
pub const ORDERS_FIRST_ROWS: usize = 100_000;
/// Rows appended to `sales.orders` in its second snapshot.
pub const ORDERS_APPENDED_ROWS: usize = 20_000;
/// Rows of `sales.products`.
pub const PRODUCTS_ROWS: usize = 500;
/// Rows of `ops.shipments`.
pub const SHIPMENTS_ROWS: usize = 60_000;

const MARKER: &str = "parley-init.json";
const LAYOUT_VERSION: u32 = 1;

/// Replaces the file at `path` whole with what `write` writes (to a file beside it, synced, then renamed), so a
/// reader sees the old or the new version, never part of one. For what the server remembers to spare work (the
/// caches, verified checkpoints): a failure is logged naming `what` and `then` (what it costs), and otherwise
/// ignored.
pub(crate) fn remember(
    path: &Path,
    what: &str,
    then: &str,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) {
    let aside = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = std::io::BufWriter::new(std::fs::File::create(&aside)?);
        write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&aside, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&aside);
        tracing::warn!("cannot remember {what} in {}: {e} ({then})", path.display());
    }
}

/// Paths inside a data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The data dir itself.
    pub root: PathBuf,
}

impl DataDir {
    /// Wraps a data dir path (made absolute, since the catalog stores absolute file URIs).
    pub fn new(root: &Path) -> Result<DataDir> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()?.join(root)
        };
        Ok(DataDir { root })
    }
    /// SQLite database of the Iceberg SQL catalog.
    pub fn catalog_db(&self) -> PathBuf {
        self.root.join("catalog.db")
    }
    /// Warehouse root (table data and metadata).
    pub fn warehouse(&self) -> PathBuf {
        self.root.join("warehouse")
    }
    /// Contracts, `<ns>/<table>.yaml`.
    pub fn contracts(&self) -> PathBuf {
        self.root.join("contracts")
    }
    /// What the server may rebuild from the rest (validated contracts), kept across restarts.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// Cedar policy and entities.
    pub fn policy(&self) -> PathBuf {
        self.root.join("policy")
    }
    /// Audit log file.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit").join("audit.jsonl")
    }
    /// Signed checkpoints of the audit chain and the audit key (see `anchor`), apart from the log.
    pub fn audit_anchor(&self) -> PathBuf {
        self.root.join("audit-anchor")
    }
    fn marker(&self) -> PathBuf {
        self.root.join(MARKER)
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Marker {
    state: String,
    layout_version: u32,
}

/// What [`ensure`] found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum InitOutcome {
    /// The demo lakehouse was created now.
    Created,
    /// An interrupted init was found and the demo was rebuilt.
    Repaired,
    /// The dir already held a complete demo lakehouse.
    AlreadyComplete,
    /// The dir holds a lakehouse Parley did not create; it was left alone.
    External,
}

fn write_marker(dir: &DataDir, state: &str) -> Result<()> {
    let tmp = dir.root.join(format!("{MARKER}.tmp"));
    let body = serde_json::to_vec_pretty(&Marker {
        state: state.to_string(),
        layout_version: LAYOUT_VERSION,
    })?;
    std::fs::write(&tmp, body)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.marker())?;
    Ok(())
}

fn read_marker(dir: &DataDir) -> Result<Option<Marker>> {
    match std::fs::read(dir.marker()) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is corrupt; remove it and run `parley init --data-dir {}`",
                dir.marker().display(),
                dir.root.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes sure the data dir holds a usable lakehouse: creates the demo when the dir is new, rebuilds it when a
/// previous init was interrupted, leaves a complete or foreign lakehouse alone. `force` rebuilds the demo
/// tables even when complete (policy files are kept).
pub async fn ensure(dir: &DataDir, catalog_name: &str, force: bool) -> Result<InitOutcome> {
    std::fs::create_dir_all(&dir.root)
        .with_context(|| format!("cannot create data dir {}", dir.root.display()))?;
    let marker = read_marker(dir)?;
    let outcome = match &marker {
        Some(m) if m.state == "complete" && !force => return Ok(InitOutcome::AlreadyComplete),
        Some(m) if m.state == "complete" => InitOutcome::Repaired,
        Some(_) => {
            tracing::warn!(
                data_dir = %dir.root.display(),
                "a previous `parley init` was interrupted; rebuilding the demo lakehouse"
            );
            InitOutcome::Repaired
        }
        None if dir.catalog_db().exists() => {
            if force {
                bail!(
                    "{} holds a catalog Parley did not create; refusing to overwrite it",
                    dir.root.display()
                );
            }
            return Ok(InitOutcome::External);
        }
        None => InitOutcome::Created,
    };
    write_marker(dir, "initializing")?;
    // Only paths the demo owns are removed; the audit log and policy files are never deleted.
    for stale in [dir.catalog_db(), dir.warehouse(), dir.contracts()] {
        if stale.is_dir() {
            std::fs::remove_dir_all(&stale)?;
        } else if stale.exists() {
            std::fs::remove_file(&stale)?;
        }
    }
    create_demo(dir, catalog_name).await?;
    write_marker(dir, "complete")?;
    Ok(outcome)
}

/// Writes the demo's contracts under `contracts` (`<namespace>/<table>.yaml`).
pub fn write_contracts(contracts: &Path) -> std::io::Result<()> {
    for (rel, text) in CONTRACTS {
        let path = contracts.join(rel);
        std::fs::create_dir_all(path.parent().expect("contract paths have a parent"))?;
        std::fs::write(&path, text)?;
    }
    Ok(())
}

async fn create_demo(dir: &DataDir, catalog_name: &str) -> Result<()> {
    std::fs::create_dir_all(dir.warehouse())?;
    write_contracts(&dir.contracts())?;
    std::fs::create_dir_all(dir.policy())?;
    for (name, text) in POLICY_FILES {
        let path = dir.policy().join(name);
        if !path.exists() {
            std::fs::write(&path, text)?;
        }
    }
    let catalog = open_sql_catalog(&dir.catalog_db(), &dir.warehouse(), catalog_name).await?;
    for ns in ["sales", "ops"] {
        let ident = NamespaceIdent::new(ns.to_string());
        if !catalog.namespace_exists(&ident).await? {
            catalog
                .create_namespace(
                    &ident,
                    HashMap::from([("comment".to_string(), format!("Parley demo namespace {ns}"))]),
                )
                .await?;
        }
    }
    let specs = [customers(), orders(), products(), shipments()];
    for spec in specs {
        write_table(catalog.as_ref(), spec).await?;
    }
    Ok(())
}

/// A demo table: its schema, optional partition and a generator of rows `[start, end)`.
struct DemoTable {
    namespace: &'static str,
    name: &'static str,
    fields: Vec<NestedField>,
    /// `(source column, partition field name, transform)`.
    partition: Option<(&'static str, &'static str, Transform)>,
    /// Row ranges, one commit (snapshot) each.
    commits: Vec<(usize, usize)>,
    generate: fn(start: usize, end: usize) -> Vec<ArrayRef>,
}

async fn write_table(catalog: &dyn Catalog, spec: DemoTable) -> Result<()> {
    let layout = TableLayout {
        namespace: spec.namespace,
        name: spec.name,
        fields: spec.fields,
        partition: spec.partition,
        properties: vec![("parley.demo".to_string(), "true".to_string())],
    };
    let mut table = create_table(catalog, layout).await?;
    for (start, end) in spec.commits {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Ok((spec.generate)(start, end))).await?;
        drop(tx);
        table = append(catalog, table, 64 * 1024, rx).await?;
    }
    Ok(())
}

/// A table to create: where, its schema, partitioning and Parquet layout.
pub(crate) struct TableLayout<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub fields: Vec<NestedField>,
    /// `(source column, partition field name, transform)`.
    pub partition: Option<(&'a str, &'a str, Transform)>,
    /// Table properties besides the Parquet codec (always zstd).
    pub properties: Vec<(String, String)>,
}

/// Creates an empty Iceberg table (Parquet with zstd) in an existing namespace.
pub(crate) async fn create_table(catalog: &dyn Catalog, layout: TableLayout<'_>) -> Result<Table> {
    let schema = Schema::builder()
        .with_fields(layout.fields.into_iter().map(Arc::new))
        .build()?;
    let ns = NamespaceIdent::new(layout.namespace.to_string());
    let mut properties = vec![(
        "write.parquet.compression-codec".to_string(),
        "zstd".to_string(),
    )];
    properties.extend(layout.properties);
    let mut creation = TableCreation::builder()
        .name(layout.name.to_string())
        .schema(schema.clone())
        .properties(properties)
        .build();
    if let Some((column, part_name, transform)) = layout.partition {
        let source = schema
            .field_by_name(column)
            .with_context(|| format!("partition column {column} missing"))?;
        creation.partition_spec = Some(
            UnboundPartitionSpec::builder()
                .add_partition_field(source.id, part_name, transform)?
                .build(),
        );
    }
    Ok(catalog.create_table(&ns, creation).await?)
}

/// Appends the batches received (columns in the table's schema order) as one snapshot: Parquet files with zstd
/// and `row_group_rows`-row groups, split by the table's partition spec. Returns the table after the commit.
pub(crate) async fn append(
    catalog: &dyn Catalog,
    table: Table,
    row_group_rows: usize,
    mut batches: tokio::sync::mpsc::Receiver<Result<Vec<ArrayRef>>>,
) -> Result<Table> {
    // Field ids are reassigned at creation: always build batches from the table's own schema.
    let ice_schema = table.metadata().current_schema().clone();
    let arrow_schema: ArrowSchemaRef = Arc::new(schema_to_arrow_schema(&ice_schema)?);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        ParquetWriterBuilder::new(props, ice_schema.clone()),
        table.file_io().clone(),
        DefaultLocationGenerator::new(table.metadata())?,
        // A unique prefix per commit: the generator's counter restarts at 0 for every writer.
        DefaultFileNameGenerator::new(
            uuid::Uuid::new_v4().to_string(),
            None,
            DataFileFormat::Parquet,
        ),
    );
    let data_files = if table.metadata().default_partition_spec().is_unpartitioned() {
        let mut writer = DataFileWriterBuilder::new(rolling).build(None).await?;
        while let Some(columns) = batches.recv().await {
            writer
                .write(RecordBatch::try_new(arrow_schema.clone(), columns?)?)
                .await?;
        }
        writer.close().await?
    } else {
        let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
            ice_schema.clone(),
            table.metadata().default_partition_spec().clone(),
        )?;
        let mut fanout = FanoutWriter::new(DataFileWriterBuilder::new(rolling));
        while let Some(columns) = batches.recv().await {
            let batch = RecordBatch::try_new(arrow_schema.clone(), columns?)?;
            for (key, part) in splitter.split(&batch)? {
                fanout.write(key, part).await?;
            }
        }
        fanout.close().await?
    };
    let tx = Transaction::new(&table);
    let tx = tx.fast_append().add_data_files(data_files).apply(tx)?;
    Ok(tx.commit(catalog).await?)
}

// ---- deterministic row generation -------------------------------------------------------------------------

fn rng(table: &str, start: usize) -> fastrand::Rng {
    let seed = table
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
        .wrapping_add(start as u64);
    fastrand::Rng::with_seed(seed)
}

fn days(y: i32, m: u32, d: u32) -> i32 {
    let date = NaiveDate::from_ymd_opt(y, m, d).expect("valid demo date");
    date.num_days_from_ce()
        - NaiveDate::from_ymd_opt(1970, 1, 1)
            .unwrap()
            .num_days_from_ce()
}

fn pick<'a>(rng: &mut fastrand::Rng, weighted: &[(&'a str, u32)]) -> &'a str {
    let total: u32 = weighted.iter().map(|(_, w)| w).sum();
    let mut x = rng.u32(0..total);
    for (v, w) in weighted {
        if x < *w {
            return v;
        }
        x -= w;
    }
    weighted[0].0
}

fn decimal(values: Vec<i128>, precision: u8, scale: i8) -> ArrayRef {
    Arc::new(
        Decimal128Array::from(values)
            .with_precision_and_scale(precision, scale)
            .expect("valid decimal precision"),
    )
}

const FIRST: [&str; 16] = [
    "Anna",
    "Ben",
    "Chloé",
    "David",
    "Elif",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Katarzyna",
    "Luca",
    "Mia",
    "Noah",
    "Olga",
    "Pedro",
];
const LAST: [&str; 16] = [
    "Schmidt",
    "Dubois",
    "Jansen",
    "García",
    "Rossi",
    "Kowalski",
    "Andersson",
    "Müller",
    "Smith",
    "Novak",
    "Silva",
    "Yilmaz",
    "Costa",
    "Berg",
    "Moreau",
    "Weber",
];
const COUNTRIES: [(&str, &str, u32); 10] = [
    ("DE", "+49", 22),
    ("FR", "+33", 16),
    ("NL", "+31", 10),
    ("ES", "+34", 10),
    ("IT", "+39", 10),
    ("PL", "+48", 8),
    ("SE", "+46", 6),
    ("AT", "+43", 6),
    ("GB", "+44", 7),
    ("US", "+1", 5),
];

fn customers() -> DemoTable {
    DemoTable {
        namespace: "sales",
        name: "customers",
        fields: vec![
            NestedField::required(1, "customer_id", Type::Primitive(P::Long))
                .with_doc("Surrogate key of the customer"),
            NestedField::required(2, "full_name", Type::Primitive(P::String)),
            NestedField::required(3, "email", Type::Primitive(P::String)),
            NestedField::optional(4, "phone", Type::Primitive(P::String)),
            NestedField::optional(5, "birth_date", Type::Primitive(P::Date)),
            NestedField::required(6, "country", Type::Primitive(P::String)),
            NestedField::required(7, "segment", Type::Primitive(P::String)),
            NestedField::required(8, "signup_at", Type::Primitive(P::Timestamp)),
            NestedField::required(9, "is_active", Type::Primitive(P::Boolean)),
            NestedField::required(
                10,
                "lifetime_value",
                Type::decimal(12, 2).expect("valid decimal"),
            ),
        ],
        partition: None,
        commits: vec![(0, CUSTOMERS_ROWS)],
        generate: |start, end| {
            let mut r = rng("customers", start);
            let n = end - start;
            let (mut id, mut name, mut email, mut phone, mut birth) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut country, mut segment, mut signup, mut active, mut ltv) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let signup_from = days(2020, 1, 1) as i64 * 86_400_000_000;
            let signup_span = (days(2026, 6, 30) - days(2020, 1, 1)) as i64 * 86_400_000_000;
            let country_weights: Vec<(&str, u32)> =
                COUNTRIES.iter().map(|(c, _, w)| (*c, *w)).collect();
            for i in start..end {
                let cid = i as i64 + 1;
                let first = FIRST[r.usize(..FIRST.len())];
                let last = LAST[r.usize(..LAST.len())];
                let c = pick(&mut r, &country_weights);
                let prefix = COUNTRIES.iter().find(|x| x.0 == c).unwrap().1;
                id.push(cid);
                name.push(format!("{first} {last}"));
                email.push(format!(
                    "{}.{}{}@example.{}",
                    first.to_lowercase(),
                    last.to_lowercase(),
                    cid,
                    ["com", "org", "net"][r.usize(..3)]
                ));
                phone.push(
                    (r.u8(..10) != 0)
                        .then(|| format!("{prefix}{}", r.u64(100_000_000..999_999_999))),
                );
                birth.push(
                    (r.u8(..20) != 0).then(|| {
                        days(1940, 1, 1) + r.i32(0..(days(2006, 12, 31) - days(1940, 1, 1)))
                    }),
                );
                country.push(c.to_string());
                segment.push(
                    pick(&mut r, &[("consumer", 70), ("smb", 25), ("enterprise", 5)]).to_string(),
                );
                signup.push(signup_from + r.i64(0..signup_span));
                active.push(r.u8(..100) < 85);
                ltv.push(r.i128(0..5_000_000));
            }
            vec![
                Arc::new(Int64Array::from(id)),
                Arc::new(StringArray::from(name)),
                Arc::new(StringArray::from(email)),
                Arc::new(StringArray::from(phone)),
                Arc::new(Date32Array::from(birth)),
                Arc::new(StringArray::from(country)),
                Arc::new(StringArray::from(segment)),
                Arc::new(TimestampMicrosecondArray::from(signup)),
                Arc::new(BooleanArray::from(active)),
                decimal(ltv, 12, 2),
            ]
        },
    }
}

fn orders() -> DemoTable {
    DemoTable {
        namespace: "sales",
        name: "orders",
        fields: vec![
            NestedField::required(1, "order_id", Type::Primitive(P::Long)).with_doc("Order number"),
            NestedField::required(2, "customer_id", Type::Primitive(P::Long))
                .with_doc("Customer who placed the order"),
            NestedField::required(3, "order_date", Type::Primitive(P::Date))
                .with_doc("Day the order was placed"),
            NestedField::required(4, "status", Type::Primitive(P::String)),
            NestedField::required(5, "channel", Type::Primitive(P::String)),
            NestedField::required(
                6,
                "total_amount",
                Type::decimal(12, 2).expect("valid decimal"),
            )
            .with_doc("Gross amount in the order currency"),
            NestedField::required(7, "currency", Type::Primitive(P::String)),
            NestedField::required(8, "item_count", Type::Primitive(P::Int)),
            NestedField::required(9, "created_at", Type::Primitive(P::Timestamptz)),
            NestedField::optional(10, "is_gift", Type::Primitive(P::Boolean)),
        ],
        partition: Some(("order_date", "order_month", Transform::Month)),
        commits: vec![
            (0, ORDERS_FIRST_ROWS),
            (ORDERS_FIRST_ROWS, ORDERS_FIRST_ROWS + ORDERS_APPENDED_ROWS),
        ],
        generate: |start, end| {
            let mut r = rng("orders", start);
            let n = end - start;
            let mut order_id = Vec::with_capacity(n);
            let mut customer = Vec::with_capacity(n);
            let mut order_date = Vec::with_capacity(n);
            let mut status = Vec::with_capacity(n);
            let mut channel = Vec::with_capacity(n);
            let mut amount = Vec::with_capacity(n);
            let mut currency = Vec::with_capacity(n);
            let mut items = Vec::with_capacity(n);
            let mut created = Vec::with_capacity(n);
            let mut gift = Vec::with_capacity(n);
            // The first snapshot covers 2024-01 .. 2026-10; the append adds November 2026 (a new partition).
            let (from, to) = if start < ORDERS_FIRST_ROWS {
                (days(2024, 1, 1), days(2026, 10, 31))
            } else {
                (days(2026, 11, 1), days(2026, 11, 26))
            };
            for i in start..end {
                let day = from + r.i32(0..=(to - from));
                order_id.push(i as i64 + 1);
                customer.push(r.i64(1..=CUSTOMERS_ROWS as i64));
                order_date.push(day);
                status.push(pick(
                    &mut r,
                    &[
                        ("placed", 5),
                        ("shipped", 10),
                        ("delivered", 70),
                        ("returned", 8),
                        ("cancelled", 7),
                    ],
                ));
                channel.push(pick(&mut r, &[("web", 60), ("store", 30), ("partner", 10)]));
                amount.push(r.i128(500..=50_000));
                currency.push(pick(&mut r, &[("EUR", 80), ("USD", 15), ("GBP", 5)]));
                items.push(r.i32(1..=8));
                created.push(day as i64 * 86_400_000_000 + r.i64(0..86_400_000_000));
                gift.push(match r.u8(..100) {
                    0..5 => None,
                    5..15 => Some(true),
                    _ => Some(false),
                });
            }
            vec![
                Arc::new(Int64Array::from(order_id)),
                Arc::new(Int64Array::from(customer)),
                Arc::new(Date32Array::from(order_date)),
                Arc::new(StringArray::from(status)),
                Arc::new(StringArray::from(channel)),
                decimal(amount, 12, 2),
                Arc::new(StringArray::from(currency)),
                Arc::new(Int32Array::from(items)),
                Arc::new(TimestampMicrosecondArray::from(created).with_timezone("+00:00")),
                Arc::new(BooleanArray::from(gift)),
            ]
        },
    }
}

fn products() -> DemoTable {
    DemoTable {
        namespace: "sales",
        name: "products",
        fields: vec![
            NestedField::required(1, "product_id", Type::Primitive(P::Int)),
            NestedField::required(2, "sku", Type::Primitive(P::String)),
            NestedField::required(3, "name", Type::Primitive(P::String)),
            NestedField::required(4, "category", Type::Primitive(P::String)),
            NestedField::required(
                5,
                "unit_price",
                Type::decimal(10, 2).expect("valid decimal"),
            )
            .with_doc("List price in EUR"),
            NestedField::required(6, "in_stock", Type::Primitive(P::Boolean)),
            NestedField::required(7, "launched_on", Type::Primitive(P::Date)),
        ],
        partition: None,
        commits: vec![(0, PRODUCTS_ROWS)],
        generate: |start, end| {
            const ADJ: [&str; 10] = [
                "Classic", "Compact", "Deluxe", "Eco", "Smart", "Ultra", "Mini", "Pro", "Travel",
                "Family",
            ];
            const NOUN: [(&str, &str); 10] = [
                ("Kettle", "kitchen"),
                ("Blender", "kitchen"),
                ("Lamp", "home"),
                ("Chair", "furniture"),
                ("Desk", "furniture"),
                ("Backpack", "outdoor"),
                ("Tent", "outdoor"),
                ("Headphones", "electronics"),
                ("Speaker", "electronics"),
                ("Mug", "kitchen"),
            ];
            let mut r = rng("products", start);
            let (mut id, mut sku, mut name, mut cat, mut price, mut stock, mut launched) =
                (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
            for i in start..end {
                let (noun, category) = NOUN[r.usize(..NOUN.len())];
                id.push(i as i32 + 1);
                sku.push(format!("SKU-{:05}", i + 1));
                name.push(format!("{} {noun}", ADJ[r.usize(..ADJ.len())]));
                cat.push(category);
                price.push(r.i128(199..=99_999));
                stock.push(r.u8(..10) != 0);
                launched.push(days(2018, 1, 1) + r.i32(0..(days(2026, 6, 1) - days(2018, 1, 1))));
            }
            vec![
                Arc::new(Int32Array::from(id)),
                Arc::new(StringArray::from(sku)),
                Arc::new(StringArray::from(name)),
                Arc::new(StringArray::from(cat)),
                decimal(price, 10, 2),
                Arc::new(BooleanArray::from(stock)),
                Arc::new(Date32Array::from(launched)),
            ]
        },
    }
}

fn shipments() -> DemoTable {
    DemoTable {
        namespace: "ops",
        name: "shipments",
        fields: vec![
            NestedField::required(1, "shipment_id", Type::Primitive(P::Long)),
            NestedField::required(2, "order_id", Type::Primitive(P::Long)),
            NestedField::required(3, "carrier", Type::Primitive(P::String)),
            NestedField::required(4, "warehouse", Type::Primitive(P::String)),
            NestedField::required(5, "shipped_at", Type::Primitive(P::Timestamp)),
            NestedField::optional(6, "delivered_on", Type::Primitive(P::Date))
                .with_doc("Null while in transit"),
            NestedField::required(7, "weight_kg", Type::Primitive(P::Double)),
            NestedField::optional(8, "on_time", Type::Primitive(P::Boolean)),
        ],
        partition: None,
        commits: vec![(0, SHIPMENTS_ROWS)],
        generate: |start, end| {
            let mut r = rng("shipments", start);
            let (
                mut id,
                mut order,
                mut carrier,
                mut wh,
                mut shipped,
                mut delivered,
                mut weight,
                mut on_time,
            ) = (
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
            );
            let from = days(2024, 1, 2);
            let span = days(2026, 11, 25) - from;
            for i in start..end {
                let day = from + r.i32(0..span);
                let is_delivered = r.u8(..100) >= 5;
                id.push(i as i64 + 1);
                order.push(r.i64(1..=ORDERS_FIRST_ROWS as i64));
                carrier.push(pick(
                    &mut r,
                    &[
                        ("DHL", 35),
                        ("UPS", 20),
                        ("DPD", 20),
                        ("GLS", 15),
                        ("PostNL", 10),
                    ],
                ));
                wh.push(pick(
                    &mut r,
                    &[("AMS1", 30), ("BER1", 35), ("MAD1", 20), ("WAW1", 15)],
                ));
                shipped.push(
                    day as i64 * 86_400_000_000 + r.i64(6 * 3_600_000_000..20 * 3_600_000_000),
                );
                delivered.push(is_delivered.then(|| day + r.i32(1..=7)));
                weight.push((r.f64() * 30.0 * 100.0).round() / 100.0 + 0.1);
                on_time.push(is_delivered.then(|| r.u8(..100) < 88));
            }
            vec![
                Arc::new(Int64Array::from(id)),
                Arc::new(Int64Array::from(order)),
                Arc::new(StringArray::from(carrier)),
                Arc::new(StringArray::from(wh)),
                Arc::new(TimestampMicrosecondArray::from(shipped)),
                Arc::new(Date32Array::from(delivered)),
                Arc::new(Float64Array::from(weight)),
                Arc::new(BooleanArray::from(on_time)),
            ]
        },
    }
}

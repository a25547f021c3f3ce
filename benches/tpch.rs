//! TPC-H and tool-call benchmark (not a test): Parley against raw DataFusion and DuckDB on the same Iceberg
//! tables, the cost of a discovery tool call on a 10,000-table catalog, memory under concurrent heavy queries and
//! the Q6 scan rate against the machine's raw read rate. Writes `results.json`; `benches/report.py` turns it into
//! `report.md` and `latency.png`.
//!
//! Run through `benches/run` (it generates the data and the Python environment), or by hand:
//! `cargo bench --bench tpch -- --data DIR [--catalog DIR] [--out DIR] [--runs N] [--warmup N]
//! [--only latency,overhead,throughput,memory,scan] [--python PATH]`.
//!
//! (a) is Parley's `query` tool through rmcp's client over stdio (policy, governed session, audit with fsync and
//! JSON serialization included); (b) the same SQL on DataFusion with iceberg-datafusion's catalog provider,
//! in-process; (c) DuckDB through `benches/duckdb_runner.py`. Rounds are interleaved (every query on every engine
//! per round, the engine order rotating) and every result is consumed in full by every engine.
//!
//! Discovery calls are timed through rmcp's client over stdio and HTTP, and through a bare JSON-RPC client over
//! stdio, whose time is the server's share of the round trip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use datafusion::prelude::{SessionConfig, SessionContext};
use rmcp::model::{CallToolRequestParams, JsonObject};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_parley");

/// The allocator `parley` uses, so that raw DataFusion (b), which runs in this process, is not measured on a
/// different one (DataFusion's own CLI also uses mimalloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `(id, kind, SQL)`.
const QUERIES: [(&str, &str, &str); 12] = [
    ("q1", "tpch", include_str!("queries/q1.sql")),
    ("q3", "tpch", include_str!("queries/q3.sql")),
    ("q5", "tpch", include_str!("queries/q5.sql")),
    ("q6", "tpch", include_str!("queries/q6.sql")),
    ("q10", "tpch", include_str!("queries/q10.sql")),
    ("q12", "tpch", include_str!("queries/q12.sql")),
    ("q14", "tpch", include_str!("queries/q14.sql")),
    ("q19", "tpch", include_str!("queries/q19.sql")),
    (
        "point_lookup",
        "agent",
        include_str!("queries/point_lookup.sql"),
    ),
    ("top10", "agent", include_str!("queries/top10.sql")),
    (
        "small_groupby",
        "agent",
        include_str!("queries/small_groupby.sql"),
    ),
    // Integer arithmetic and sum: what checking them for overflow costs (raw DataFusion wraps).
    ("int_sum", "checked", include_str!("queries/int_sum.sql")),
];

/// The memory-test query: a group-by with one group per order (1.5 million at SF 1), far heavier than Q1.
const HEAVY: &str = "SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, count(*) AS n \
     FROM tpch.lineitem GROUP BY l_orderkey ORDER BY revenue DESC LIMIT 10";

struct Args {
    data: PathBuf,
    catalog: Option<PathBuf>,
    out: PathBuf,
    runs: usize,
    warmup: usize,
    only: Vec<String>,
    python: String,
}

fn args() -> Result<Args> {
    let mut a = Args {
        data: PathBuf::new(),
        catalog: None,
        out: PathBuf::from("bench-results"),
        runs: 5,
        warmup: 1,
        only: vec![],
        python: std::env::var("PARLEY_BENCH_PYTHON").unwrap_or_else(|_| "python3".into()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bench" => {}
            "--data" => a.data = PathBuf::from(value()?),
            "--catalog" => a.catalog = Some(PathBuf::from(value()?)),
            "--out" => a.out = PathBuf::from(value()?),
            "--runs" => a.runs = value()?.parse()?,
            "--warmup" => a.warmup = value()?.parse()?,
            "--only" => a.only = value()?.split(',').map(str::to_string).collect(),
            "--python" => a.python = value()?,
            other => bail!("unknown argument {other}; see the header of benches/tpch.rs"),
        }
    }
    if a.data.as_os_str().is_empty() {
        bail!("--data DIR is required (make one with `parley bench data --sf 1 --data-dir DIR`)");
    }
    Ok(a)
}

impl Args {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    std::fs::create_dir_all(&a.out)?;
    let mut results = json!({
        "started": chrono::Utc::now().to_rfc3339(),
        "sf": scale_factor(&a.data),
        "runs": a.runs,
        "warmup": a.warmup,
        "machine": machine(),
    });
    if a.wants("latency") || a.wants("scan") {
        let (latency, duck) = latency(&a).await?;
        results["machine"]["duckdb"] = duck["duckdb"].clone();
        results["machine"]["duckdb_mode"] = duck["mode"].clone();
        if a.wants("scan") {
            results["scan"] = scan(&a.data, &latency).unwrap_or_else(|e| {
                eprintln!("scan rate not measured: {e:#}");
                Value::Null
            });
        }
        results["latency"] = Value::Array(latency);
    }
    if let Some(catalog) = &a.catalog {
        if a.wants("overhead") {
            results["overhead"] = Value::Array(overhead(catalog).await?);
        }
        if a.wants("throughput") {
            results["throughput"] = Value::Array(throughput(catalog).await?);
        }
    }
    if a.wants("memory") {
        results["memory"] = Value::Array(memory(&a.data).await?);
    }
    let path = a.out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    eprintln!("wrote {}", path.display());
    let status = std::process::Command::new(&a.python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/report.py"))
        .arg(&path)
        .arg(&a.out)
        .status()
        .context("run benches/report.py")?;
    if !status.success() {
        bail!("benches/report.py failed");
    }
    Ok(())
}

fn scale_factor(data: &Path) -> Value {
    std::fs::read_to_string(data.join("contracts/tpch/lineitem.yaml"))
        .ok()
        .and_then(|t| {
            let at = t.find("scale factor ")? + "scale factor ".len();
            t[at..].split_whitespace().next()?.parse::<f64>().ok()
        })
        .map_or(Value::Null, Value::from)
}

fn machine() -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let memory_gib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let kb: f64 = t.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
        Some((kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
    });
    json!({
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_gib": memory_gib,
        "os": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| format!("Linux {}", s.trim())).unwrap_or_default(),
        "cpu_model": cpu_model,
        "parley_version": env!("CARGO_PKG_VERSION"),
        "datafusion": datafusion::DATAFUSION_VERSION,
    })
}

// ---- engines ----------------------------------------------------------------------------------------------

type Client = RunningService<RoleClient, ()>;

/// The peers keep no results, so neither does Parley here: each repeated query runs again
/// (`query.result_cache_bytes = 0`).
const NO_RESULT_CACHE: (&str, &str) = ("PARLEY_QUERY_RESULT_CACHE_BYTES", "0");

/// Parley over stdio as `analyst`.
async fn parley_stdio(data: &Path, env: &[(&str, &str)]) -> Result<Client> {
    let transport = TokioChildProcess::builder(tokio::process::Command::new(BIN).configure(|c| {
        c.args(["serve", "--principal", "analyst", "--data-dir"])
            .arg(data)
            .env("PARLEY_LOG", "warn")
            .env(NO_RESULT_CACHE.0, NO_RESULT_CACHE.1);
        for (k, v) in env {
            c.env(k, v);
        }
    }))
    .stderr(Stdio::inherit())
    .spawn()?
    .0;
    let pid = transport.id();
    let client = ().serve(transport).await?;
    if let Some(pid) = pid {
        audit_checked(pid).await;
    }
    Ok(client)
}

/// Waits until the server `pid` has checked its audit chain, which it does on a thread of its own after start-up
/// (`parley-audit-check`; on the bench catalog, whose log grows with every run, it takes seconds), so that the
/// calls timed are a server's steady state.
async fn audit_checked(pid: u32) {
    let busy = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "parley-audit-ch")
            })
        })
    };
    let started = Instant::now();
    while busy() && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One tool call; an error result is an error here.
async fn call(client: &Client, tool: &str, args: Value) -> Result<Value> {
    let args: JsonObject = args.as_object().cloned().expect("object");
    let r = client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await?;
    if r.is_error == Some(true) {
        let text: Vec<String> = r
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        bail!("{tool}: {}", text.join(" "));
    }
    r.structured_content
        .ok_or_else(|| anyhow!("{tool}: no structured content"))
}

/// Raw DataFusion over the same SQL catalog, as a user of iceberg-datafusion would set it up.
async fn raw_datafusion(data: &Path) -> Result<SessionContext> {
    let catalog = parley::catalog::open_sql_catalog(
        &data.join("catalog.db"),
        &data.join("warehouse"),
        "parley",
    )
    .await?;
    let provider = iceberg_datafusion::IcebergCatalogProvider::try_new(catalog).await?;
    let ctx = SessionContext::new_with_config(
        SessionConfig::new().with_default_catalog_and_schema("iceberg", "tpch"),
    );
    ctx.register_catalog("iceberg", Arc::new(provider));
    Ok(ctx)
}

/// DataFusion's own Parquet reader (a `ListingTable` per table) over exactly the data files of each table's
/// current snapshot: not a way to read Iceberg (no deletes, no schema evolution), but the measure of what the
/// scan in iceberg-datafusion costs against DataFusion's native, partition-parallel Parquet scan.
async fn native_parquet(data: &Path) -> Result<SessionContext> {
    use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{
        ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
    };
    use futures::TryStreamExt;
    let catalog = parley::catalog::open_sql_catalog(
        &data.join("catalog.db"),
        &data.join("warehouse"),
        "parley",
    )
    .await?;
    let ctx = SessionContext::new();
    let schema = Arc::new(MemorySchemaProvider::new());
    ctx.catalog("datafusion")
        .context("default catalog")?
        .register_schema("tpch", schema.clone())?;
    let ns = iceberg::NamespaceIdent::new("tpch".to_string());
    for ident in catalog.list_tables(&ns).await? {
        let table = catalog.load_table(&ident).await?;
        let files: Vec<ListingTableUrl> = table
            .scan()
            .build()?
            .plan_files()
            .await?
            .map_ok(|task| task.data_file_path)
            .try_collect::<Vec<String>>()
            .await?
            .iter()
            .map(ListingTableUrl::parse)
            .collect::<Result<_, _>>()?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_collect_stat(true);
        let config = ListingTableConfig::new_with_multi_paths(files)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await?;
        schema.register_table(
            ident.name().to_string(),
            Arc::new(ListingTable::try_new(config)?),
        )?;
    }
    Ok(ctx)
}

/// DuckDB in a Python subprocess speaking JSON lines (see benches/duckdb_runner.py).
struct Duck {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    hello: Value,
}

impl Duck {
    async fn start(python: &str, data: &Path) -> Result<Duck> {
        let mut child = tokio::process::Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/duckdb_runner.py"))
            .arg("--data-dir")
            .arg(data)
            .args(["--namespace", "tpch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start benches/duckdb_runner.py (is the bench venv's python given?)")?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let hello: Value = serde_json::from_str(
            &stdout
                .next_line()
                .await?
                .context("duckdb runner exited before it was ready")?,
        )?;
        Ok(Duck {
            _child: child,
            stdin,
            stdout,
            hello,
        })
    }

    /// Runs `sql`; returns (ms as DuckDB measured it, rows).
    async fn run(&mut self, id: &str, sql: &str) -> Result<(f64, u64)> {
        let line = json!({"id": id, "sql": sql}).to_string() + "\n";
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        let reply: Value = serde_json::from_str(
            &self
                .stdout
                .next_line()
                .await?
                .context("duckdb runner exited")?,
        )?;
        if let Some(e) = reply.get("error").and_then(Value::as_str) {
            bail!("duckdb: {e}");
        }
        Ok((
            reply["ms"].as_f64().unwrap_or(f64::NAN),
            reply["rows"].as_u64().unwrap_or(0),
        ))
    }
}

// ---- 1. query latency -------------------------------------------------------------------------------------

async fn latency(a: &Args) -> Result<(Vec<Value>, Value)> {
    let parley = parley_stdio(&a.data, &[]).await?;
    let df = raw_datafusion(&a.data).await?;
    let native = native_parquet(&a.data).await?;
    let mut duck = Duck::start(&a.python, &a.data).await?;
    eprintln!("duckdb: {}", duck.hello);
    let mut times: BTreeMap<&str, [Vec<f64>; 4]> = BTreeMap::new();
    let mut rows: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
    let mut errors: BTreeMap<&str, String> = BTreeMap::new();
    for round in 0..a.warmup + a.runs {
        for (id, _, sql) in QUERIES {
            if errors.contains_key(id) {
                continue;
            }
            for k in 0..4 {
                // Rotate which engine goes first so caches and CPU frequency favour none of them.
                let engine = (k + round) % 4;
                let result = match engine {
                    0 => run_parley(&parley, sql).await,
                    1 => run_datafusion(&df, sql).await,
                    2 => duck.run(id, sql).await,
                    _ => run_datafusion(&native, sql).await,
                };
                match result {
                    Ok((ms, n)) => {
                        rows.entry(id).or_default()[engine] = n;
                        if round >= a.warmup {
                            times.entry(id).or_default()[engine].push(ms);
                        }
                    }
                    Err(e) => {
                        let name = ["parley", "datafusion", "duckdb", "native parquet"][engine];
                        eprintln!("{id} on {name} failed: {e:#}");
                        errors.insert(id, format!("{name}: {e:#}"));
                    }
                }
            }
        }
        eprintln!("latency round {} of {} done", round + 1, a.warmup + a.runs);
    }
    parley.cancel().await?;
    let mut out = Vec::new();
    for (id, kind, _) in QUERIES {
        let t = times.remove(id).unwrap_or_default();
        let r = rows.get(id).copied().unwrap_or_default();
        let mut error = errors.get(id).cloned();
        if error.is_none() && (r[0] != r[1] || r[1] != r[2] || r[2] != r[3]) {
            error = Some(format!(
                "row counts differ: parley {}, datafusion {}, duckdb {}, native parquet {}",
                r[0], r[1], r[2], r[3]
            ));
        }
        out.push(json!({
            "query": id, "kind": kind, "rows": r[1],
            "parley_ms": t[0], "datafusion_ms": t[1], "duckdb_ms": t[2], "native_ms": t[3], "error": error,
        }));
    }
    Ok((out, duck.hello.clone()))
}

/// Parley's `query` tool; the time is the client's round trip.
async fn run_parley(client: &Client, sql: &str) -> Result<(f64, u64)> {
    let started = Instant::now();
    // The whole result, as the other engines return it: the reply budget at the server's ceiling (the default
    // budget keeps an agent's context small and would cut Q10's 20 wide rows).
    let r = call(
        client,
        "query",
        json!({"sql": sql, "max_rows": 1000, "max_bytes": 4 * 1024 * 1024}),
    )
    .await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if r["truncated"].as_bool() == Some(true) {
        bail!(
            "result truncated by {}; the comparison would be unfair",
            r["truncated_by"]
        );
    }
    Ok((ms, r["row_count"].as_u64().unwrap_or(0)))
}

/// Plans, runs and collects every batch.
async fn run_datafusion(ctx: &SessionContext, sql: &str) -> Result<(f64, u64)> {
    let started = Instant::now();
    let batches = ctx.sql(sql).await?.collect().await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    Ok((ms, batches.iter().map(|b| b.num_rows() as u64).sum()))
}

// ---- 2. tool-call overhead and throughput -----------------------------------------------------------------

/// The discovery calls measured: `(label, tool, arguments)`.
fn discovery_calls() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("list_tables (first page)", "list_tables", json!({})),
        (
            "list_tables (text search)",
            "list_tables",
            json!({"filter": "table_004242"}),
        ),
        (
            "describe_table",
            "describe_table",
            json!({"table": "domain_0042.table_004242"}),
        ),
        (
            "get_contract",
            "get_contract",
            json!({"table": "domain_0042.table_004242"}),
        ),
    ]
}

/// Calls per tool and transport, after [`OVERHEAD_WARMUP`] warm-up rounds.
const OVERHEAD_SAMPLES: usize = 500;
const OVERHEAD_WARMUP: usize = 30;

async fn overhead(catalog: &Path) -> Result<Vec<Value>> {
    // One server at a time: servers on one data dir share its audit log, and would take turns on its lock.
    let mut out = Vec::new();
    let mut stdio = Caller::Rmcp(parley_stdio(catalog, &[]).await?);
    out.extend(sample_calls(&mut stdio, "stdio").await?);
    stdio.close().await?;
    let mut raw = Caller::Raw(Box::new(RawStdio::spawn(catalog).await?));
    out.extend(sample_calls(&mut raw, "stdio, raw JSON-RPC").await?);
    raw.close().await?;
    let server = HttpServer::start(catalog, &[]).await?;
    let mut http = Caller::Rmcp(server.client().await?);
    out.extend(sample_calls(&mut http, "http").await?);
    http.close().await?;
    Ok(out)
}

/// A client for the overhead section: rmcp's, or a bare JSON-RPC one that shows what rmcp's client adds.
enum Caller {
    Rmcp(Client),
    Raw(Box<RawStdio>),
}

impl Caller {
    async fn call(&mut self, tool: &str, args: Value) -> Result<Value> {
        match self {
            Caller::Rmcp(c) => call(c, tool, args).await,
            Caller::Raw(r) => r.call(tool, args).await,
        }
    }

    async fn close(self) -> Result<()> {
        match self {
            Caller::Rmcp(c) => {
                c.cancel().await?;
            }
            Caller::Raw(r) => r.close().await?,
        }
        Ok(())
    }
}

/// A minimal MCP client over stdio: one JSON-RPC request line out, one response line in, parsed with serde_json
/// into a `Value` (rmcp's client also decodes it into its typed messages, and hands it between tasks).
struct RawStdio {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
    line: String,
    id: u64,
}

impl RawStdio {
    async fn spawn(data: &Path) -> Result<RawStdio> {
        let mut child = tokio::process::Command::new(BIN)
            .args(["serve", "--principal", "analyst", "--data-dir"])
            .arg(data)
            .env("PARLEY_LOG", "warn")
            .env(NO_RESULT_CACHE.0, NO_RESULT_CACHE.1)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id();
        let mut raw = RawStdio {
            stdin: child.stdin.take().expect("piped"),
            stdout: BufReader::new(child.stdout.take().expect("piped")),
            child,
            line: String::new(),
            id: 0,
        };
        raw.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}),
        )
        .await?;
        raw.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        if let Some(pid) = pid {
            audit_checked(pid).await;
        }
        Ok(raw)
    }

    /// Closes stdin, as an MCP client ends a stdio session, and waits for the server to exit.
    async fn close(self) -> Result<()> {
        let RawStdio {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
        if !status.success() {
            bail!("parley serve exited with {status}");
        }
        Ok(())
    }

    async fn send(&mut self, message: &Value) -> Result<()> {
        let mut bytes = serde_json::to_vec(message)?;
        bytes.push(b'\n');
        self.stdin.write_all(&bytes).await?;
        Ok(())
    }

    async fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        self.id += 1;
        let id = self.id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        loop {
            self.line.clear();
            if self.stdout.read_line(&mut self.line).await? == 0 {
                bail!("server closed stdout");
            }
            let mut reply: Value = serde_json::from_str(&self.line)?;
            if reply["id"] == json!(id) {
                if let Some(e) = reply.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(reply["result"].take());
            }
        }
    }

    async fn call(&mut self, tool: &str, args: Value) -> Result<Value> {
        let mut r = self
            .request("tools/call", json!({"name": tool, "arguments": args}))
            .await?;
        if r["isError"] == json!(true) {
            bail!("{tool}: {}", r["content"]);
        }
        match r.get_mut("structuredContent") {
            Some(v) => Ok(v.take()),
            None => bail!("{tool}: no structured content"),
        }
    }
}

/// Rounds of one call of each discovery tool, the first tool rotating, so every tool is sampled under the same
/// machine conditions (a slow stretch of disk flushes lands on all of them, not on whichever ran then).
async fn sample_calls(client: &mut Caller, transport: &str) -> Result<Vec<Value>> {
    let calls = discovery_calls();
    let mut samples = vec![Vec::with_capacity(OVERHEAD_SAMPLES); calls.len()];
    for round in 0..OVERHEAD_WARMUP + OVERHEAD_SAMPLES {
        for k in 0..calls.len() {
            let i = (round + k) % calls.len();
            let (_, tool, args) = &calls[i];
            let started = Instant::now();
            client.call(tool, args.clone()).await?;
            if round >= OVERHEAD_WARMUP {
                samples[i].push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    eprintln!("discovery calls over {transport}: done");
    Ok(calls
        .iter()
        .zip(samples)
        .map(|((label, _, _), samples)| {
            json!({"tool": label, "transport": transport, "n": samples.len(), "samples_ms": samples})
        })
        .collect())
}

/// Concurrent HTTP clients (one MCP session each) calling `describe_table` on varying tables for a fixed time.
async fn throughput(catalog: &Path) -> Result<Vec<Value>> {
    let server = HttpServer::start(catalog, &[]).await?;
    let mut out = Vec::new();
    for clients in [1usize, 8, 64] {
        let mut sessions = Vec::new();
        for _ in 0..clients {
            sessions.push(server.client().await?);
        }
        let window = Duration::from_secs(5);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (i, s) in sessions.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let mut calls = 0u64;
                let mut n = i * 7919;
                while started.elapsed() < window {
                    n = (n + 1) % 10_000;
                    let table = format!("domain_{:04}.table_{n:06}", n / 100);
                    call(&s, "describe_table", json!({"table": table})).await?;
                    calls += 1;
                }
                s.cancel().await?;
                anyhow::Ok(calls)
            }));
        }
        let mut calls = 0;
        for t in tasks {
            calls += t.await??;
        }
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "throughput with {clients} clients: {:.0} calls/s",
            calls as f64 / seconds
        );
        out.push(
            json!({"clients": clients, "transport": "http", "calls": calls, "seconds": seconds}),
        );
    }
    Ok(out)
}

/// `parley serve --http` on a data dir, with a dev-issuer token for `analyst`.
struct HttpServer {
    child: tokio::process::Child,
    url: String,
    token: String,
}

impl HttpServer {
    async fn start(data: &Path, env: &[(&str, &str)]) -> Result<HttpServer> {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--dev-issuer",
            "--data-dir",
        ])
        .arg(data)
        .env("PARLEY_LOG", "info")
        .env(NO_RESULT_CACHE.0, NO_RESULT_CACHE.1)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let url = tokio::time::timeout(Duration::from_secs(300), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(at) = line.find("url=http://") {
                    let url = line[at + 4..].split_whitespace().next().unwrap_or("");
                    return Ok(url.to_string());
                }
            }
            bail!("server exited before serving")
        })
        .await??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        if let Some(pid) = child.id() {
            audit_checked(pid).await;
        }
        let token = std::process::Command::new(BIN)
            .args(["token", "--principal", "analyst", "--groups", "analysts"])
            .arg("--data-dir")
            .arg(data)
            .output()?;
        if !token.status.success() {
            bail!("parley token failed");
        }
        Ok(HttpServer {
            child,
            url,
            token: String::from_utf8(token.stdout)?.trim().to_string(),
        })
    }

    async fn client(&self) -> Result<Client> {
        let transport = StreamableHttpClientTransport::from_config(
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                self.url.clone(),
            )
            .auth_header(self.token.clone()),
        );
        Ok(().serve(transport).await?)
    }

    /// Peak resident set size of the server so far (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }
}

// ---- 3. memory ------------------------------------------------------------------------------------------

const POOL_BYTES: u64 = 1 << 30;

/// A fresh server per client count (VmHWM only grows), each client running the heavy group-by once, all at once.
async fn memory(data: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for clients in [16usize, 64] {
        let server = HttpServer::start(
            data,
            &[("PARLEY_QUERY_MEMORY_BYTES", &POOL_BYTES.to_string())],
        )
        .await?;
        let mut sessions = Vec::new();
        for _ in 0..clients {
            sessions.push(server.client().await?);
        }
        let baseline = server.peak_rss_mib();
        let mut tasks = Vec::new();
        for s in sessions {
            tasks.push(tokio::spawn(async move {
                let result = call(&s, "query", json!({"sql": HEAVY})).await.map(|_| ());
                let _ = s.cancel().await;
                result
            }));
        }
        let (mut ok, mut failed, mut messages) = (0, 0, Vec::<String>::new());
        for t in tasks {
            match t.await? {
                Ok(()) => ok += 1,
                Err(e) => {
                    failed += 1;
                    let m = format!("{e:#}");
                    if !messages.contains(&m) && messages.len() < 3 {
                        messages.push(m);
                    }
                }
            }
        }
        let peak = server.peak_rss_mib();
        eprintln!("memory with {clients} clients: peak {peak:?} MiB, {ok} ok, {failed} failed");
        out.push(json!({
            "clients": clients, "pool_mib": POOL_BYTES >> 20, "baseline_rss_mib": baseline,
            "peak_rss_mib": peak, "ok": ok, "failed": failed, "failed_messages": messages,
        }));
    }
    Ok(out)
}

// ---- 4. scan rate ----------------------------------------------------------------------------------------

/// Q6 reads the 1994 partition of lineitem: its Parquet bytes over Q6's median time, against reading the same
/// files into memory (page cache warm).
fn scan(data: &Path, latency: &[Value]) -> Result<Value> {
    let mut files = Vec::new();
    collect_files(&data.join("warehouse"), &mut files)?;
    let files: Vec<PathBuf> = files
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            // iceberg-rust names a year partition by years since 1970.
            s.contains("/lineitem/") && s.contains("l_shipdate_year=24/") && s.ends_with(".parquet")
        })
        .collect();
    if files.is_empty() {
        bail!("no lineitem files for 1994 under {}", data.display());
    }
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let mut reads = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        for f in &files {
            std::hint::black_box(std::fs::read(f)?);
        }
        reads.push(started.elapsed().as_secs_f64());
    }
    let q6 = latency
        .iter()
        .find(|q| q["query"] == "q6")
        .context("q6 not measured")?;
    let median_s = |key: &str| {
        let mut v: Vec<f64> = q6[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).map(|ms| ms / 1e3)
    };
    reads.remove(0);
    reads.sort_by(f64::total_cmp);
    Ok(json!({
        "query": "q6", "bytes": bytes, "files": files.len(),
        "parley_s": median_s("parley_ms"), "datafusion_s": median_s("datafusion_ms"),
        "duckdb_s": median_s("duckdb_ms"), "raw_read_s": reads[reads.len() / 2],
    }))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect_files(&entry.path(), out)?;
        } else {
            out.push(entry.path());
        }
    }
    Ok(())
}

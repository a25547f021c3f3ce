//! Governance benchmark (not a test): what the policy decision and the durable audit append cost on this machine,
//! each as a ratio against a named peer measured in the same run.
//!
//! - Policy: `CedarPolicy::authorize` (Parley's decision: builds the request's entities from table facts, then asks
//!   Cedar) against Cedar's bare `Authorizer::is_authorized` on a prebuilt request and entity set (the engine's
//!   own floor).
//! - Audit: `FileAuditLog::append` (hash chain + fsync, group commit) with 1 and 32 concurrent clients against a
//!   bare `write + fdatasync` of one line per record on the same disk (what a naive durable log costs).
//! - Audit reads: what `parley.audit_log` costs per query on a log of 200,000 records of which a caller may see
//!   one table's (a tenth), once 100 records were appended since the last query — `AuditReader` (index brought up
//!   to date, visible records read back and checked) against `audit::read_all` (read and verify the whole log,
//!   decode every record), which is how every query read it before the index; and the same indexed read when
//!   the caller may see exactly 2,000 records of a 100,000- and a 400,000-record log (the peer is the smaller log:
//!   a ratio near 1 means the read does not grow with the log).
//!
//! Run: `cargo bench --bench governance` (release build). Prints a markdown table.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parley::audit::{AuditEntry, AuditResource, AuditSink, FileAuditLog};
use parley::identity::{Directory, Principal};
use parley::policy::{Action, CedarPolicy, PolicyBackend, RequestContext, Resource, TableFacts};

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        principal: "bench".into(),
        tool: "query".into(),
        action: Some("query".into()),
        resource: AuditResource::of(&["sales.orders"]),
        decision: "allowed".into(),
        reason: "permitted by analysts-query-non-pii".into(),
        sql: Some(format!(
            "SELECT count(*) FROM sales.orders WHERE order_id > {i}"
        )),
        duration_ms: 3,
        ..Default::default()
    }
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn policy_bench() -> (f64, f64, f64) {
    let policy = CedarPolicy::from_texts(
        include_str!("../examples/policy/policy.cedar"),
        Path::new("policy.cedar"),
        include_str!("../examples/policy/entities.json"),
        Path::new("entities.json"),
    )
    .unwrap();
    let principal = Principal::new("analyst", policy.groups_of("analyst"));
    let resource = Resource::Table(TableFacts {
        namespace: "sales".into(),
        name: "orders".into(),
        owner: "sales-owners".into(),
        tags: vec!["orders".into(), "finance".into()],
        contains_pii: false,
        classifications: vec!["internal".into(), "confidential".into()],
        pii_columns: vec![],
        quality: "pass".into(),
        quality_breaches: vec![],
    });
    let ctx = RequestContext::default();
    const N: usize = 20_000;
    for _ in 0..1000 {
        black_box(policy.authorize(&principal, Action::Query, &resource, &ctx));
    }
    let t = Instant::now();
    for _ in 0..N {
        assert!(black_box(policy.evaluate(&principal, Action::Query, &resource, &ctx)).allowed());
    }
    let ours = t.elapsed().as_nanos() as f64 / N as f64;
    // The same decision again, as the server makes it: answered from the policy's decision cache.
    let t = Instant::now();
    for _ in 0..N {
        assert!(black_box(policy.authorize(&principal, Action::Query, &resource, &ctx)).allowed());
    }
    let cached = t.elapsed().as_nanos() as f64 / N as f64;

    // The peer: Cedar alone, request and entities built once.
    use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request};
    use std::str::FromStr;
    let pset = PolicySet::from_str(include_str!("../examples/policy/policy.cedar")).unwrap();
    let entities = Entities::from_json_str(
        &serde_json::json!([
            {"uid": {"type": "Parley::Group", "id": "analysts"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Parley::User", "id": "analyst"}, "attrs": {}, "parents": [{"type": "Parley::Group", "id": "analysts"}]},
            {"uid": {"type": "Parley::Namespace", "id": "sales"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Parley::Table", "id": "sales.orders"}, "attrs": {
                "owner": {"__entity": {"type": "Parley::Group", "id": "sales-owners"}},
                "tags": ["orders", "finance"], "contains_pii": false,
                "classifications": ["internal", "confidential"]},
             "parents": [{"type": "Parley::Namespace", "id": "sales"}]}
        ])
        .to_string(),
        None,
    )
    .unwrap();
    let request = Request::new(
        EntityUid::from_str(r#"Parley::User::"analyst""#).unwrap(),
        EntityUid::from_str(r#"Parley::Action::"query""#).unwrap(),
        EntityUid::from_str(r#"Parley::Table::"sales.orders""#).unwrap(),
        Context::empty(),
        None,
    )
    .unwrap();
    let authorizer = Authorizer::new();
    for _ in 0..1000 {
        black_box(authorizer.is_authorized(&request, &pset, &entities));
    }
    let t = Instant::now();
    for _ in 0..N {
        let r = black_box(authorizer.is_authorized(&request, &pset, &entities));
        assert_eq!(r.decision(), cedar_policy::Decision::Allow);
    }
    let bare = t.elapsed().as_nanos() as f64 / N as f64;
    (ours, cached, bare)
}

async fn audit_bench(dir: &Path, clients: usize, per_client: usize) -> f64 {
    let path = dir.join(format!("audit-{clients}.jsonl"));
    let log = Arc::new(FileAuditLog::open(&path, u64::MAX).unwrap());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                log.append(entry((c * per_client + i) as u64))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let rate = per_second(clients * per_client, t.elapsed());
    assert_eq!(
        parley::audit::verify(&path, None).unwrap().count,
        (clients * per_client) as u64
    );
    rate
}

/// Appends records `from..to` to `log` from 32 concurrent clients, record `i` naming the table `table(i)`.
async fn append_range(
    log: &Arc<FileAuditLog>,
    from: u64,
    to: u64,
    table: impl Fn(u64) -> String + Send + Sync + Copy + 'static,
) {
    let mut tasks = Vec::new();
    for c in 0..32u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in (from + c..to).step_by(32) {
                let mut e = entry(i);
                e.resource = AuditResource::of(&[table(i)]);
                log.append(e).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Milliseconds per `parley.audit_log` read: (index, full read).
async fn audit_read_bench(dir: &Path) -> (f64, f64) {
    use parley::audit::reader::AuditReader;
    const RECORDS: u64 = 200_000;
    let path = dir.join("audit-read.jsonl");
    let log = Arc::new(FileAuditLog::open(&path, 64 << 20).unwrap());
    let table = |i: u64| format!("ns{}.t", i % 10);
    let append = |from: u64, to: u64| append_range(&log, from, to, table);
    append(0, RECORDS).await;
    let reader = AuditReader::new(&path);
    let visible = |r: &str| r == "ns3.t";
    assert_eq!(
        reader.records(visible).unwrap().0.len() as u64,
        RECORDS / 10
    );
    const ROUNDS: u64 = 5;
    let (mut index, mut full) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        let from = RECORDS + round * 100;
        append(from, from + 100).await;
        let t = Instant::now();
        let (shown, _) = reader.records(visible).unwrap();
        index += t.elapsed();
        let t = Instant::now();
        let all = parley::audit::read_all(&path).unwrap();
        let theirs = all
            .into_iter()
            .filter(|r| visible(&r.entry.resource.to_string()))
            .count();
        full += t.elapsed();
        assert_eq!(shown.len(), theirs);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / ROUNDS as f64;
    (ms(index), ms(full))
}

/// Milliseconds per `parley.audit_log` read of a log of `records` records of which the caller may see exactly
/// 2,000 (one table's), once 100 records were appended since the last read: the index's cost should not grow with
/// the log.
async fn audit_read_scaling(dir: &Path, records: u64) -> f64 {
    use parley::audit::reader::AuditReader;
    const VISIBLE: u64 = 2_000;
    let path = dir.join(format!("audit-scaling-{records}.jsonl"));
    let log = Arc::new(FileAuditLog::open(&path, 64 << 20).unwrap());
    let step = records / VISIBLE;
    let table = move |i: u64| {
        if i < records && i.is_multiple_of(step) {
            "hot.t".to_string()
        } else {
            format!("ns{}.t", i % 10)
        }
    };
    let append = |from: u64, to: u64| append_range(&log, from, to, table);
    append(0, records).await;
    let reader = AuditReader::new(&path);
    let visible = |r: &str| r == "hot.t";
    assert_eq!(reader.records(visible).unwrap().0.len() as u64, VISIBLE);
    const ROUNDS: u64 = 5;
    let mut took = Duration::ZERO;
    for round in 0..ROUNDS {
        let from = records + round * 100;
        append(from, from + 100).await;
        let t = Instant::now();
        let (shown, _) = reader.records(visible).unwrap();
        took += t.elapsed();
        assert_eq!(shown.len() as u64, VISIBLE);
    }
    took.as_secs_f64() * 1000.0 / ROUNDS as f64
}

fn raw_fsync_bench(dir: &Path, n: usize) -> f64 {
    use std::io::Write;
    let line = serde_json::to_vec(&entry(0)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.jsonl"))
        .unwrap();
    let t = Instant::now();
    for _ in 0..n {
        f.write_all(&line).unwrap();
        f.write_all(b"\n").unwrap();
        f.sync_data().unwrap();
    }
    per_second(n, t.elapsed())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let (ours, cached, bare) = policy_bench();
    let dir =
        tempfile::tempdir_in(std::env::var("PARLEY_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    let raw = raw_fsync_bench(dir.path(), 2000);
    let single = audit_bench(dir.path(), 1, 2000).await;
    let many = audit_bench(dir.path(), 32, 200).await;
    let (indexed, full) = audit_read_bench(dir.path()).await;
    let small = audit_read_scaling(dir.path(), 100_000).await;
    let large = audit_read_scaling(dir.path(), 400_000).await;
    println!("| measure | Parley | peer | peer is | ratio Parley/peer |");
    println!("| --- | ---: | ---: | --- | ---: |");
    println!(
        "| policy decision (analyst, query, sales.orders) | {:.1} µs | {:.1} µs | Cedar `is_authorized`, prebuilt request | {:.2} |",
        ours / 1000.0,
        bare / 1000.0,
        ours / bare
    );
    println!(
        "| policy decision, repeated (decision cache) | {:.2} µs | {:.1} µs | Cedar `is_authorized`, prebuilt request | {:.2} |",
        cached / 1000.0,
        bare / 1000.0,
        cached / bare
    );
    println!(
        "| audit appends/s, 1 client (fsync each) | {single:.0} | {raw:.0} | bare write+fdatasync per record | {:.2} |",
        single / raw
    );
    println!(
        "| audit appends/s, 32 clients (group commit) | {many:.0} | {raw:.0} | bare write+fdatasync per record | {:.2} |",
        many / raw
    );
    println!(
        "| `parley.audit_log` read, 200k records, one table of ten visible | {indexed:.1} ms | {full:.1} ms | reading and verifying the whole log per query (`read_all`) | {:.3} |",
        indexed / full
    );
    println!(
        "| `parley.audit_log` read, 400k records, 2,000 visible | {large:.1} ms | {small:.1} ms | the same read of a 100k-record log | {:.2} |",
        large / small
    );
}

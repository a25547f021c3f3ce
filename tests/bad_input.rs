//! Bad input and limits: each a clear tool error, the server healthy afterwards, and an audit record for each.

use serde_json::{Value, json};

use crate::util::{Lake, call, cpu_after_a_second, err, ok, text};

#[tokio::test]
async fn bad_sql_and_forbidden_statements_are_clear_tool_errors() {
    let lake = Lake::new();
    let client = lake.connect("analyst", &[]).await;
    let cases = [
        ("SELEC * FRM sales.orders", "invalid SQL"),
        ("SELECT * FROM sales.no_such_table", "not found"),
        ("SELECT no_such_column FROM sales.orders", "no_such_column"),
        (
            "INSERT INTO sales.orders (order_id) VALUES (1)",
            "INSERT is refused",
        ),
        ("DELETE FROM sales.orders", "DELETE is refused"),
        ("DROP TABLE sales.orders", "DROP TABLE is refused"),
        (
            "CREATE TABLE sales.x AS SELECT 1",
            "CREATE TABLE is refused",
        ),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "CREATE EXTERNAL TABLE is refused",
        ),
        (
            "COPY (SELECT * FROM sales.orders) TO '/tmp/leak.csv'",
            "COPY is refused",
        ),
        ("SET datafusion.execution.batch_size = 1", "SET is refused"),
        ("SELECT * FROM '/etc/passwd'", "not a table"),
        ("SELECT * FROM generate_series(1, 3)", "not a table"),
        ("SELECT 1; SELECT 2", "exactly one"),
        ("SELECT * FROM information_schema.tables", "not found"),
        ("", "empty"),
        // Integer overflow fails instead of wrapping, and says how to widen.
        (
            "SELECT CAST(product_id AS BIGINT) * 9223372036854775807 FROM sales.products",
            "integer overflow: `*` does not fit BIGINT",
        ),
        (
            "SELECT sum(product_id + 9223372036854775000) FROM sales.products",
            "integer overflow: sum does not fit BIGINT",
        ),
    ];
    for (sql, expected) in cases {
        let e = err(&call(&client, "query", json!({"sql": sql})).await);
        assert!(e.contains(expected), "{sql:?} -> {e}");
    }
    // Malformed arguments.
    for (args, expected) in [
        (json!({}), "missing field `sql`"),
        (json!({"sql": 5}), "invalid type"),
        (
            json!({"sql": "SELECT 1", "rows": 5}),
            "unknown field `rows`",
        ),
        (json!({"sql": "SELECT 1", "max_rows": -1}), "invalid value"),
        (json!({"sql": "SELECT 1", "max_rows": 0}), "at least 1"),
        (json!({"sql": "SELECT 1", "max_rows": 1_000_000}), "ceiling"),
    ] {
        let e = err(&call(&client, "query", args.clone()).await);
        assert!(e.contains(expected), "{args} -> {e}");
    }
    let e = err(&call(&client, "describe_table", json!({"table": "orders"})).await);
    assert!(e.contains("not found"), "{e}");
    let e = err(&call(&client, "list_tables", json!({"cursor": "garbage"})).await);
    assert!(e.contains("cursor"), "{e}");
    // Still healthy.
    let q = ok(&call(
        &client,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.products"}),
    )
    .await);
    assert_eq!(q["rows"][0][0], 500);
    // The time of the call (`now()` and `current_date` used to fail with an internal error).
    let q = ok(&call(
        &client,
        "query",
        json!({"sql": "SELECT CAST(now() AS DATE) = current_date, count(*) FROM sales.products"}),
    )
    .await);
    assert_eq!(q["rows"][0], json!([true, 500]));
    client.cancel().await.unwrap();
    // One audit record per call (17 SQL cases + 6 malformed + 2 others + the two healthy ones), errors included.
    let audit = lake.audit();
    assert_eq!(audit.len(), 17 + 6 + 2 + 2);
    assert!(
        audit[..23].iter().all(|r| r["decision"] != "allowed"),
        "{audit:#?}"
    );
    assert_eq!(audit[0]["sql"], "SELEC * FRM sales.orders");
    assert!(audit[0]["sql_digest"].as_str().unwrap().len() == 64);
    assert_eq!(audit.last().unwrap()["decision"], "allowed");
}

#[tokio::test]
async fn row_cap_truncates_and_reports_the_total() {
    let lake = Lake::new();
    let client = lake
        .connect("analyst", &[("PARLEY_QUERY_DEFAULT_ROWS", "50")])
        .await;
    let q = ok(&call(
        &client,
        "query",
        json!({"sql": "SELECT order_id FROM sales.orders", "max_rows": 10}),
    )
    .await);
    assert_eq!(q["row_count"], 10);
    assert_eq!(q["rows"].as_array().unwrap().len(), 10);
    assert_eq!(q["truncated"], true);
    assert_eq!(q["truncated_by"], "max_rows");
    assert_eq!(q["total_rows"], 120_000);
    let d = ok(&call(
        &client,
        "query",
        json!({"sql": "SELECT order_id FROM sales.orders"}),
    )
    .await);
    assert_eq!(d["row_count"], 50, "configured default row cap");
    let small = ok(&call(&client, "query", json!({"sql": "SELECT 1 AS one"})).await);
    assert_eq!(small["truncated"], false);
    assert_eq!(small["total_rows"], 1);
    client.cancel().await.unwrap();
    let audit = lake.audit();
    assert_eq!(audit[0]["rows"], 10);
    assert!(audit[0]["bytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn byte_cap_truncates() {
    // The byte budget bounds the whole reply — the rows are in its text and in its structured content — at ~2,000
    // tokens by default (issue 15), more on request up to the server's ceiling.
    let lake = Lake::new();
    let client = lake
        .connect("analyst", &[("PARLEY_QUERY_MAX_RESULT_BYTES", "100000")])
        .await;
    let sql = "SELECT * FROM sales.products ORDER BY product_id";
    let reply_bytes = |r: &rmcp::model::CallToolResult| serde_json::to_string(r).unwrap().len();
    let r = call(&client, "query", json!({"sql": sql})).await;
    let q = ok(&r);
    assert_eq!(q["truncated"], true);
    assert_eq!(q["truncated_by"], "max_bytes");
    assert_eq!(q["total_rows"], 500);
    assert!(reply_bytes(&r) <= 8192, "{} bytes", reply_bytes(&r));
    assert!(text(&r).contains("pass a larger max_bytes"), "{}", text(&r));
    let default_rows = q["row_count"].as_u64().unwrap();
    assert!(default_rows > 5, "{default_rows} rows");

    let r = call(&client, "query", json!({"sql": sql, "max_bytes": 60000})).await;
    let q = ok(&r);
    assert!(q["row_count"].as_u64().unwrap() > 5 * default_rows);
    assert!(reply_bytes(&r) <= 60000, "{} bytes", reply_bytes(&r));
    // The rows are the table's, in order, whatever the budget.
    assert_eq!(q["rows"][0][0], 1);

    let e = err(&call(&client, "query", json!({"sql": sql, "max_bytes": 200000})).await);
    assert!(e.contains("ceiling of 100000"), "{e}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn timeout_stops_a_runaway_query() {
    let lake = Lake::new();
    let client = lake
        .connect("analyst", &[("PARLEY_QUERY_TIMEOUT_MS", "1500")])
        .await;
    let started = std::time::Instant::now();
    let e = err(&call(
        &client,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.orders a CROSS JOIN sales.orders b WHERE a.order_id + b.order_id < 0"}),
    )
    .await);
    assert!(e.contains("time limit of 1500 ms"), "{e}");
    // Answered when the limit falls due, although the join's operator computes for seconds between yields (queries
    // run on a runtime of their own, so the MCP side is never held by them).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "stopped promptly: {:?}",
        started.elapsed()
    );
    // The stopped join may keep a core busy until its operator next yields (tokio cannot preempt it); meanwhile
    // other queries share the cores with it, and on a loaded machine a small one can itself hit the 1.5 s limit.
    // The server stays up and answers, and queries succeed again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let q = loop {
        let r = call(
            &client,
            "query",
            json!({"sql": "SELECT count(*) FROM sales.products"}),
        )
        .await;
        if r.is_error != Some(true) {
            break ok(&r);
        }
        assert!(text(&r).contains("time limit"), "{}", text(&r));
        assert!(
            std::time::Instant::now() < deadline,
            "queries never recovered"
        );
    };
    assert_eq!(q["rows"][0][0], 500);
    client.cancel().await.unwrap();
    let audit = lake.audit();
    assert!(audit.len() >= 2);
    assert_eq!(audit[0]["decision"], "error");
    assert!(audit[0]["error"].as_str().unwrap().contains("time limit"));
    assert_eq!(audit.last().unwrap()["decision"], "allowed");
}

#[tokio::test]
async fn memory_budget_fails_cleanly() {
    let lake = Lake::new();
    let client = lake
        .connect("analyst", &[("PARLEY_QUERY_MEMORY_BYTES", "1000000")])
        .await;
    let e = err(&call(
        &client,
        "query",
        json!({"sql": "SELECT o.customer_id, array_agg(o.order_id ORDER BY o.created_at) AS ids FROM sales.orders o \
                        GROUP BY o.customer_id ORDER BY o.customer_id"}),
    )
    .await);
    assert!(e.contains("query memory pool of 1000000 bytes"), "{e}");
    let q = ok(&call(
        &client,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.products"}),
    )
    .await);
    assert_eq!(q["rows"][0][0], 500);
    // The pool is shared by every query of the server: the failed query gave its memory back, so the heavy
    // query fails the same way again rather than finding less memory each time.
    let again = err(&call(
        &client,
        "query",
        json!({"sql": "SELECT o.customer_id, array_agg(o.order_id ORDER BY o.created_at) AS ids FROM sales.orders o \
                        GROUP BY o.customer_id ORDER BY o.customer_id"}),
    )
    .await);
    assert!(again.contains("query memory pool"), "{again}");
    client.cancel().await.unwrap();
}

/// Issue 11: one SQL line used to abort the process with a stack overflow (no reply, no audit record). Deep
/// chains and nestings are refused with a clear error or answered; the server keeps serving and audits each.
#[tokio::test]
async fn deeply_nested_sql_is_refused_or_answered_and_the_server_stays_up() {
    let lake = Lake::new();
    let client = lake.connect("analyst", &[]).await;
    let chain = |op: &str, n: usize| {
        format!(
            "SELECT count(*) FROM sales.orders WHERE {}",
            vec!["order_id = 1"; n].join(op)
        )
    };
    let long_plus = |n: usize| format!("SELECT 1{}", " + 1".repeat(n));
    let refused = [
        long_plus(2000),
        long_plus(24_000),
        chain(" OR ", 2000),
        chain(" AND ", 2000),
        format!("SELECT 'a'{}", " || 'a'".repeat(2000)),
        format!("SELECT {}1{}", "(".repeat(3000), ")".repeat(3000)),
        format!(
            "SELECT {} 1 {}",
            "CASE WHEN true THEN ".repeat(500),
            " END".repeat(500)
        ),
        format!(
            "SELECT 1 FROM sales.orders WHERE order_id IN {}SELECT 1{}",
            "(".repeat(400),
            ")".repeat(400)
        ),
        format!("SELECT {}1{}", "abs(".repeat(2000), ")".repeat(2000)),
        format!("SELECT {}1", "-".repeat(5000)),
        format!("SELECT {}true", "NOT ".repeat(5000)),
    ];
    for sql in &refused {
        let r = call(&client, "query", json!({"sql": sql})).await;
        assert_eq!(r.is_error, Some(true), "{}...: {}", &sql[..60], text(&r));
        let e = text(&r);
        assert!(
            e.contains("levels deep") || e.contains("invalid SQL") || e.contains("bytes"),
            "{}...: {e}",
            &sql[..60]
        );
    }
    // Chains within the limit are answered exactly.
    let r = ok(&call(&client, "query", json!({"sql": long_plus(200)})).await);
    assert_eq!(r["rows"][0][0], 201);
    let r = ok(&call(&client, "query", json!({"sql": chain(" OR ", 200)})).await);
    assert_eq!(r["rows"][0][0], 1);
    // Still serving, and every call left its record.
    let r = ok(&call(&client, "query", json!({"sql": "SELECT 42"})).await);
    assert_eq!(r["rows"][0][0], 42);
    client.cancel().await.unwrap();
    let queries = lake
        .audit()
        .into_iter()
        .filter(|r| r["tool"] == "query")
        .count();
    assert_eq!(queries, refused.len() + 3);
}

/// Issue 11: a line the server cannot parse used to get no answer (the client waited forever). Over stdio, each
/// is answered as JSON-RPC says — with the request's id where the line has one at its top level — and the server
/// keeps serving.
#[tokio::test]
async fn unparseable_stdio_lines_are_answered_and_the_server_keeps_serving() {
    let lake = Lake::new();
    let mut server = lake.spawn_raw("analyst", &[]);
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"query","arguments":{{"sql":{}"x"{}}}}}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"query","arguments":{{"sql":"{}"}}}}}}"#,
        "x".repeat(20 << 20)
    );
    let cases: Vec<(String, Value, i64)> = vec![
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#.to_string(),
            json!(1),
            0,
        ),
        (deep, json!(3), -32700),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"query","arguments":{"sql":"\ud800"}}}"#.to_string(),
            json!(4),
            -32700,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"five","method":"tools/call","params":{"name":"query","arguments":{"max_rows":1e400,"sql":"SELECT 1"}}}"#.to_string(),
            json!("five"),
            -32700,
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"query","arguments":{"max_rows":NaN}}}"#.to_string(),
            json!(6),
            -32700,
        ),
        ("{not json".to_string(), Value::Null, -32700),
        (r#"{"jsonrpc":"2.0","id":7,"nomethod":true}"#.to_string(), json!(7), -32600),
        (r#"[1,2,3]"#.to_string(), Value::Null, -32600),
        (huge, json!(9), -32600),
        // A method MCP defines whose params do not parse is invalid params, not an unknown method.
        (
            r#"{"jsonrpc":"2.0","id":11,"method":"logging/setLevel","params":{"level":"loud"}}"#.to_string(),
            json!(11),
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"arguments":{"sql":"SELECT 1"}}}"#.to_string(),
            json!(12),
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":13,"method":"resources/read","params":{"uri":7}}"#.to_string(),
            json!(13),
            -32602,
        ),
        (r#"{"jsonrpc":"2.0","id":14,"method":"no/such"}"#.to_string(), json!(14), -32601),
        // A tool that does not exist: refused as invalid params, and audited (below).
        (
            r#"{"jsonrpc":"2.0","id":15,"method":"tools/call","params":{"name":"drop_everything","arguments":{}}}"#.to_string(),
            json!(15),
            -32602,
        ),
        // A prompt that does not exist, and one whose arguments do not fit: refused, and audited (below).
        (
            r#"{"jsonrpc":"2.0","id":16,"method":"prompts/get","params":{"name":"leak_everything"}}"#.to_string(),
            json!(16),
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":17,"method":"prompts/get","params":{"name":"explore_dataset","arguments":{"subject":"x"}}}"#.to_string(),
            json!(17),
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":18,"method":"prompts/get","params":{"name":"explore_dataset","arguments":{"topic":"late deliveries"}}}"#.to_string(),
            json!(18),
            0,
        ),
        (
            r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"query","arguments":{"sql":"SELECT 7"}}}"#.to_string(),
            json!(10),
            0,
        ),
    ];
    for (i, (line, id, code)) in cases.into_iter().enumerate() {
        server.send(&line).await;
        if i == 0 {
            server
                .send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
                .await;
            // An unparseable notification gets no answer; the next answer is the next request's.
            server
                .send(r#"{"jsonrpc":"2.0","method":"notifications/x","params":[NaN]}"#)
                .await;
        }
        let reply = server.reply().await;
        assert_eq!(reply["id"], id, "case {i}: {reply}");
        if code == 0 {
            assert!(reply.get("result").is_some(), "case {i}: {reply}");
        } else {
            assert_eq!(reply["error"]["code"], code, "case {i}: {reply}");
        }
        if code == -32602 {
            let message = reply["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("invalid params for ")
                    || message.starts_with("no tool named \"drop_everything\"")
                    || message.starts_with("no prompt named \"leak_everything\"")
                    || message.starts_with(
                        "invalid arguments for prompt \"explore_dataset\": missing field `topic`"
                    ),
                "case {i}: {reply}"
            );
        }
    }
    let audit = lake.audit();
    assert!(
        audit.iter().any(|r| r["tool"] == "tools/call"
            && r["decision"] == "error"
            && r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("drop_everything")),
        "{audit:?}"
    );
    // Every prompts/get is in the log: the two refused (as errors, saying why) and the one answered.
    let prompts: Vec<_> = audit
        .iter()
        .filter(|r| r["tool"] == "prompts/get")
        .map(|r| {
            (
                r["decision"].as_str().unwrap_or_default(),
                r["reason"].to_string(),
            )
        })
        .collect();
    assert_eq!(prompts.len(), 3, "{prompts:?}");
    assert!(
        prompts[0].0 == "error" && prompts[0].1.contains("leak_everything"),
        "{prompts:?}"
    );
    assert!(
        prompts[1].0 == "error" && prompts[1].1.contains("missing field `topic`"),
        "{prompts:?}"
    );
    assert_ne!(prompts[2].0, "error", "{prompts:?}");
}

/// Issue 11: a query past its time limit must stop using CPU, not just be answered. A selective nested-loop
/// join used to compute for minutes inside one poll after its reply; now its probe side yields between slices, so
/// the stopped query is dropped within a slice's work.
#[tokio::test]
async fn a_stopped_query_stops_using_cpu() {
    let lake = Lake::new();
    let mut server = lake.spawn_raw("analyst", &[("PARLEY_QUERY_TIMEOUT_MS", "500")]);
    let pid = server.child.id().unwrap();
    server.initialize().await;
    let requests = [
        // Start-up work (catalog listing, the audit check) is done before anything is measured.
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_tables", "arguments": {}}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "query", "arguments": {"sql":
               "SELECT count(*) FROM sales.orders"}}}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "query", "arguments": {"sql":
               "SELECT count(*) FROM sales.orders a JOIN sales.orders b ON a.order_id + b.order_id < 0"}}}),
    ];
    let mut last = Value::Null;
    for r in requests {
        last = server.call(&r).await.unwrap();
    }
    let reply = last["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reply.contains("time limit of 500 ms"), "{last}");
    // A second after the reply the join has stopped: a quarter of one core at most over the next two seconds,
    // where the runaway join kept both cores busy (about 2 CPU-s per second).
    let used = cpu_after_a_second(pid).await;
    assert!(
        used < 0.5,
        "the stopped query kept computing: {used:.2} CPU-s in 2 s"
    );
}

/// A contract of nested brackets took the YAML parser minutes of a core, and anyone could send one (an outside
/// test: 200 KB in 61 s, and other principals' calls waited 20 s): one who owns no table is refused before the text
/// is parsed, an owner's is refused before the YAML parser sees it, and both at once.
#[tokio::test]
async fn a_contract_of_nested_brackets_costs_nothing_to_refuse() {
    let lake = Lake::new();
    let stranger = lake.connect("stranger", &[]).await;
    let owner = lake.connect("sales-owner", &[]).await;
    let n = 100_000;
    let bomb = format!(
        "apiVersion: v3.1.0\nkind: DataContract\nx: {}{}\n",
        "[".repeat(n),
        "]".repeat(n)
    );
    let started = std::time::Instant::now();
    let e = err(&call(&stranger, "publish_contract", json!({"contract": bomb})).await);
    assert!(e.contains("you own no table"), "{e}");
    let e = err(&call(&owner, "publish_contract", json!({"contract": bomb})).await);
    assert!(
        e.contains("flow collections") && e.contains("block style"),
        "{e}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let listed = ok(&call(&stranger, "list_tables", json!({})).await);
    assert!(listed["tables"].is_array(), "{listed}");
    let audit = lake.audit();
    let published: Vec<&Value> = audit
        .iter()
        .filter(|r| r["tool"] == "publish_contract")
        .collect();
    assert_eq!(published.len(), 2, "{published:?}");
    assert!(
        published.iter().any(|r| r["decision"] == "denied"),
        "{published:?}"
    );
    stranger.cancel().await.unwrap();
    owner.cancel().await.unwrap();
}

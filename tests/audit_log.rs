//! The audit log after a scripted session: exactly one record per call, in order, with a valid hash chain that
//! `parley audit verify` accepts and that breaks at the edited record.

use serde_json::json;

use crate::util::{Lake, call};

#[tokio::test]
async fn one_record_per_call_in_order_and_the_chain_verifies() {
    let lake = Lake::new();
    let client = lake.connect("analyst", &[]).await;
    let script = [
        ("list_tables", json!({})),
        ("describe_table", json!({"table": "sales.orders"})),
        ("get_contract", json!({"table": "sales.orders"})),
        (
            "query",
            json!({"sql": "SELECT count(*) FROM sales.orders", "purpose": "revenue_reporting"}),
        ),
        ("query", json!({"sql": "SELECT email FROM sales.customers"})),
        ("describe_table", json!({"table": "sales.missing"})),
    ];
    for (tool, args) in &script {
        call(&client, tool, args.clone()).await;
    }
    client.cancel().await.unwrap();

    let audit = lake.audit();
    assert_eq!(audit.len(), script.len());
    for (i, (record, (tool, _))) in audit.iter().zip(&script).enumerate() {
        assert_eq!(record["seq"], i as u64 + 1);
        assert_eq!(record["tool"], *tool);
        assert_eq!(record["principal"], "analyst");
    }
    assert_eq!(audit[3]["decision"], "allowed");
    assert_eq!(audit[3]["purpose"], "revenue_reporting");
    assert_eq!(audit[3]["rows"], 1);
    assert_eq!(audit[3]["resource"], "sales.orders");
    assert!(
        audit[3]["policy_ids"]
            .as_array()
            .unwrap()
            .contains(&json!("analysts-query-non-pii"))
    );
    assert!(
        audit[3]["snapshots"][0]
            .as_str()
            .unwrap()
            .starts_with("sales.orders@")
    );
    assert_eq!(audit[4]["decision"], "denied");
    assert!(
        audit[4]["reason"]
            .as_str()
            .unwrap()
            .contains("no policy permits analyst to query sales.customers")
    );
    assert_eq!(audit[5]["decision"], "denied");
    assert_eq!(audit[1]["prev_hash"], audit[0]["hash"]);

    let verify = lake
        .command()
        .args(["audit", "verify"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}");
    assert!(out.contains("ok: 6 records"), "{out}");

    // Edit one record: verify fails and names it.
    let text = std::fs::read_to_string(lake.audit_path()).unwrap();
    std::fs::write(
        lake.audit_path(),
        text.replacen("\"denied\"", "\"allowed\"", 1),
    )
    .unwrap();
    let verify = lake
        .command()
        .args(["audit", "verify"])
        .output()
        .await
        .unwrap();
    assert!(!verify.status.success());
    let msg = String::from_utf8_lossy(&verify.stderr);
    assert!(msg.contains("record 5"), "{msg}");
}

/// Runs one stdio session of `calls` tool calls as analyst through raw JSON-RPC, then closes stdin and waits for
/// the server to exit (its last act is a checkpoint of the final head).
async fn session(lake: &Lake, calls: usize) {
    let mut server = lake.spawn_raw("analyst", &[]);
    server.initialize().await;
    for i in 0..calls {
        server
            .call(&json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                          "params": {"name": "describe_table", "arguments": {"table": "sales.orders"}}}))
            .await;
    }
    let status = server.close().await;
    assert!(status.success(), "{status}");
}

/// `parley audit verify`: success and its output.
async fn verify(lake: &Lake) -> (bool, String) {
    let out = lake
        .command()
        .args(["audit", "verify"])
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Issue 11: what the chain alone cannot show — the log cut at a line boundary, its last records deleted, cut
/// mid-line, or removed — is detected against signed checkpoints kept apart from the log, by `audit verify` and
/// at start-up, where it becomes a record of its own; cut bytes are kept.
#[tokio::test]
async fn signed_checkpoints_expose_a_truncated_or_deleted_log() {
    let lake = Lake::new();
    session(&lake, 6).await;
    let (ok, out) = verify(&lake).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("ok: 6 records") && out.contains("signed checkpoints agree"),
        "{out}"
    );

    // Cut at a line boundary: the chain is intact but shorter than what was checkpointed.
    let text = std::fs::read_to_string(lake.audit_path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(lake.audit_path(), format!("{}\n", lines[..4].join("\n"))).unwrap();
    let (ok, out) = verify(&lake).await;
    assert!(!ok, "a shortened log must fail: {out}");
    assert!(out.contains("vouches for record 6"), "{out}");
    // The server still starts, and the gap is on record before anything else.
    session(&lake, 1).await;
    let audit = lake.audit();
    assert_eq!(audit[4]["tool"], "audit/anchor", "{:#}", audit[4]);
    assert!(
        audit[4]["reason"]
            .as_str()
            .unwrap()
            .contains("ends at record 4")
    );
    assert_eq!(audit[5]["tool"], "describe_table");
    assert!(!verify(&lake).await.0, "the evidence stays");

    // Cut mid-line: the torn remainder is kept beside the log and the cut is on record.
    let lake = Lake::new();
    session(&lake, 5).await;
    let text = std::fs::read_to_string(lake.audit_path()).unwrap();
    let cut = text.match_indices('\n').nth(1).unwrap().0 + 20;
    std::fs::write(lake.audit_path(), &text[..cut]).unwrap();
    session(&lake, 1).await;
    let audit = lake.audit();
    let tools: Vec<&str> = audit.iter().map(|r| r["tool"].as_str().unwrap()).collect();
    assert_eq!(
        &tools[2..5],
        ["audit/repair", "audit/anchor", "describe_table"],
        "{tools:?}"
    );
    let kept: Vec<_> = std::fs::read_dir(lake.audit_path().parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".cut-"))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        std::fs::read_to_string(kept[0].path()).unwrap(),
        text[text.match_indices('\n').nth(1).unwrap().0 + 1..cut]
    );

    // The whole file deleted.
    let lake = Lake::new();
    session(&lake, 3).await;
    std::fs::remove_file(lake.audit_path()).unwrap();
    let (ok, out) = verify(&lake).await;
    assert!(!ok && out.contains("vouches for record 3"), "{out}");
    session(&lake, 1).await;
    assert_eq!(lake.audit()[0]["tool"], "audit/anchor");

    // An edited checkpoint is refused outright.
    let lake = Lake::new();
    session(&lake, 2).await;
    let anchors = lake.path().join("audit-anchor/checkpoints.jsonl");
    let text = std::fs::read_to_string(&anchors).unwrap();
    std::fs::write(&anchors, text.replace("\"seq\":2", "\"seq\":1")).unwrap();
    let (ok, out) = verify(&lake).await;
    assert!(!ok && out.contains("not validly signed"), "{out}");
}

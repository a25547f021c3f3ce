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

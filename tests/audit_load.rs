//! The audit log under load and under a crash: ≥ 10k concurrent calls from several HTTP clients give exactly one
//! record per call and a chain `parley audit verify` accepts; a SIGKILL mid-load loses no call the client saw
//! answered, and the restarted server continues the chain.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use crate::http::{connect_http, dev_token, start};
use crate::util::{Lake, call};

const CLIENTS: usize = 8;
const CALLS_PER_CLIENT: usize = 1250;

async fn verify(lake: &Lake) -> String {
    let out = lake
        .command()
        .args(["audit", "verify"])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "audit verify failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_calls_one_record_each() {
    let lake = Lake::new();
    let (_child, url) = start(&lake, &["--dev-issuer"]).await;
    let token = dev_token(&lake, "loader", &["analysts"]);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect_http((), &url, &token).await.unwrap();
            for i in 0..CALLS_PER_CLIENT {
                let r = call(
                    &client,
                    "get_contract",
                    json!({"table": format!("load.c{c}_{i}")}),
                )
                .await;
                assert_eq!(r.is_error, Some(true), "a missing table is an error result");
            }
            client.cancel().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let audit = lake.audit();
    assert_eq!(audit.len(), CLIENTS * CALLS_PER_CLIENT);
    let resources: HashSet<&str> = audit
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    assert_eq!(
        resources.len(),
        CLIENTS * CALLS_PER_CLIENT,
        "one record per call, none twice"
    );
    let text = verify(&lake).await;
    assert!(
        text.contains(&format!("ok: {} records", CLIENTS * CALLS_PER_CLIENT)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_load_loses_no_acknowledged_call() {
    let lake = Lake::new();
    let (mut child, url) = start(&lake, &["--dev-issuer"]).await;
    let token = dev_token(&lake, "loader", &["analysts"]);
    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (url, token, answered, stop) =
            (url.clone(), token.clone(), answered.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect_http((), &url, &token).await.unwrap();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let table = format!("crash.c{c}_{i}");
                let params = rmcp::model::CallToolRequestParams::new("get_contract")
                    .with_arguments(json!({"table": table}).as_object().unwrap().clone());
                // A call in flight when the server dies may never be answered: give up on it after a while.
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    client.call_tool(params),
                )
                .await
                {
                    Ok(Ok(_)) => answered.lock().unwrap().push(table),
                    _ => break, // the server is gone
                }
                i += 1;
            }
        }));
    }
    // Kill the server once a good number of calls were answered, while the load is still running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while answered.lock().unwrap().len() < 1500 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() >= 100,
        "the load ran before the kill: {}",
        answered.len()
    );

    // Restart: the log is repaired if torn, the chain verifies, and every answered call is in it.
    let (_child, url) = start(&lake, &["--dev-issuer"]).await;
    let client = connect_http((), &url, &token).await.unwrap();
    call(&client, "list_tables", json!({})).await;
    client.cancel().await.unwrap();
    verify(&lake).await;
    let audit = lake.audit();
    let logged: HashSet<String> = audit
        .iter()
        .map(|r| r["resource"].as_str().unwrap().to_string())
        .collect();
    for table in &answered {
        assert!(
            logged.contains(table),
            "{table} was answered but is not in the audit log"
        );
    }
    assert_eq!(
        audit.last().unwrap()["tool"],
        "list_tables",
        "the chain continues after the restart"
    );
}

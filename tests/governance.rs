//! Policy files and the audit table through the binary: a bad policy stops the server with file and line,
//! `policy check` explains decisions, edits reload while serving, and owners query the audit records of their
//! own tables (nobody else's) through `query`.

use serde_json::json;

use crate::util::{Lake, call, err, ok};

#[tokio::test]
async fn a_bad_policy_stops_the_server_with_file_and_line() {
    let lake = Lake::new();
    let policy = lake.path().join("policy/policy.cedar");
    std::fs::write(
        &policy,
        "permit(principal, action, resource);\n\nforbid(principal,, action, resource);\n",
    )
    .unwrap();
    let out = lake.command().arg("serve").output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:", policy.display())),
        "{stderr}"
    );
}

#[tokio::test]
async fn policy_check_prints_the_decision_and_why() {
    let lake = Lake::new();
    let check = |who: &'static str, action: &'static str, resource: &'static str| {
        let mut cmd = lake.command();
        cmd.args([
            "policy",
            "check",
            "--principal",
            who,
            "--action",
            action,
            "--resource",
            resource,
        ]);
        cmd
    };
    let out = check("marketing-agent", "query", "sales.customers")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("DENY: forbidden by no-pii-for-marketing"),
        "{text}"
    );
    // Scripts read the decision from the exit status: 1 deny, 0 allow, 2 a check that could not be made.
    assert_eq!(out.status.code(), Some(1));
    let out = check("analyst", "query", "sales.orders")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("ALLOW: permitted by analysts-query-non-pii"),
        "{text}"
    );
    let out = check("sales-owner", "review_requests", "*")
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ALLOW: permitted by data-owners-review")
    );
    let out = check("analyst", "fly", "sales.orders")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown action \"fly\""));
}

/// Operator commands on a data dir that is not one say so instead of succeeding with nothing: the audit tools,
/// and `--http` with a host name instead of an address.
#[tokio::test]
async fn operator_commands_name_a_wrong_data_dir_or_address() {
    let missing = tempfile::tempdir().unwrap();
    for args in [
        vec!["audit", "tail"],
        vec!["audit", "search", "--principal", "analyst"],
        vec!["audit", "verify"],
    ] {
        let out = std::process::Command::new(crate::util::BIN)
            .args(&args)
            .arg("--data-dir")
            .arg(missing.path().join("nope"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no audit log at"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = std::process::Command::new(crate::util::BIN)
        .args(["serve", "--http", "localhost:8765", "--data-dir"])
        .arg(missing.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use an IP address, 127.0.0.1:8765"), "{err}");
}

#[tokio::test]
async fn policy_edits_apply_while_serving_and_bad_edits_are_ignored() {
    let lake = Lake::new();
    let client = lake.connect("analyst", &[]).await;
    let sql = json!({"sql": "SELECT count(*) FROM sales.customers"});
    assert!(err(&call(&client, "query", sql.clone()).await).contains("access denied"));

    let policy = lake.path().join("policy/policy.cedar");
    let original = std::fs::read_to_string(&policy).unwrap();
    // A broken edit is refused and the old policy stays in force.
    std::fs::write(
        &policy,
        format!("{original}\npermit(principal,, action, resource);\n"),
    )
    .unwrap();
    let extra = "\n@id(\"analysts-read-customers\")\npermit(principal in Parley::Group::\"analysts\", \
                 action == Parley::Action::\"query\", resource == Parley::Table::\"sales.customers\");\n";
    // Then a good edit: picked up by the file watcher (no restart, same session).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(err(&call(&client, "query", sql.clone()).await).contains("access denied"));
    std::fs::write(&policy, format!("{original}{extra}")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = call(&client, "query", sql.clone()).await;
        if r.is_error != Some(true) {
            assert_eq!(ok(&r)["rows"][0][0], 20_000);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the policy edit was not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    client.cancel().await.unwrap();
    let audit = lake.audit();
    assert!(
        audit.last().unwrap()["policy_ids"]
            .as_array()
            .unwrap()
            .contains(&json!("analysts-read-customers"))
    );
}

#[tokio::test]
async fn owners_query_the_audit_records_of_their_own_tables_only() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.orders"}),
    )
    .await);
    ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*) FROM ops.shipments"}),
    )
    .await);
    ok(&call(
        &analyst,
        "describe_table",
        json!({"table": "sales.products"}),
    )
    .await);
    // Issue 11: a record naming two tables (its SQL included) is shown only to a caller who may read the audit of
    // both, so neither owner sees it.
    ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*) FROM ops.shipments s JOIN sales.orders o ON s.order_id = o.order_id"}),
    )
    .await);
    // The analyst owns nothing: the audit table is empty for them.
    let mine = ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*) FROM parley.audit_log"}),
    )
    .await);
    assert_eq!(mine["rows"][0][0], 0);
    analyst.cancel().await.unwrap();

    let owner = lake.connect("ops-owner", &[]).await;
    let seen = ok(&call(
        &owner,
        "query",
        json!({"sql": "SELECT principal, tool, resource, decision, sql FROM parley.audit_log ORDER BY seq"}),
    )
    .await);
    let rows = seen["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        1,
        "only the record about ops.shipments: {rows:?}"
    );
    assert_eq!(rows[0][0], "analyst");
    assert_eq!(rows[0][2], "ops.shipments");
    assert_eq!(rows[0][4], "SELECT count(*) FROM ops.shipments");
    owner.cancel().await.unwrap();

    let sales = lake.connect("sales-owner", &[]).await;
    let seen = ok(&call(
        &sales,
        "query",
        json!({"sql": "SELECT resource FROM parley.audit_log ORDER BY seq"}),
    )
    .await);
    let resources: Vec<&str> = seen["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert!(
        resources.contains(&"sales.orders") && resources.contains(&"sales.products"),
        "{resources:?}"
    );
    assert!(
        !resources.iter().any(|r| r.contains("ops.")),
        "{resources:?}"
    );
    sales.cancel().await.unwrap();
}

#[tokio::test]
async fn a_policy_edit_changes_what_list_tables_shows_without_a_restart() {
    let lake = Lake::new();
    let client = lake.connect("marketing-agent", &[]).await;
    let before = ok(&call(&client, "list_tables", json!({})).await);
    assert_eq!(
        before["total"], 3,
        "marketing discovers the sales namespace only"
    );
    // Listed twice: the second answer comes from the discovery cache and must be the same.
    assert_eq!(ok(&call(&client, "list_tables", json!({})).await), before);

    let policy = lake.path().join("policy/policy.cedar");
    let original = std::fs::read_to_string(&policy).unwrap();
    let extra = "\n@id(\"marketing-discover-ops\")\npermit(principal in Parley::Group::\"marketing\", \
                 action == Parley::Action::\"discover\", resource in Parley::Namespace::\"ops\");\n";
    std::fs::write(&policy, format!("{original}{extra}")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = ok(&call(&client, "list_tables", json!({})).await);
        if now["total"] == 4 {
            assert!(
                now["tables"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["table"] == "ops.shipments")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the policy edit never reached list_tables: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    client.cancel().await.unwrap();
}

/// Contracts reload while serving, like policies: classifying a column as personal data stops analysts' queries
/// and shows in `list_tables` within seconds; a contract edited into an invalid one leaves its table unclassified
/// (as at start-up), and fixing it brings the table back.
#[tokio::test]
async fn contract_edits_apply_while_serving() {
    let lake = Lake::new();
    let client = lake.connect("analyst", &[]).await;
    let sql = json!({"sql": "SELECT count(*) FROM sales.products"});
    assert_eq!(
        ok(&call(&client, "query", sql.clone()).await)["rows"][0][0],
        500
    );

    let path = lake.path().join("contracts/sales/products.yaml");
    let original = std::fs::read_to_string(&path).unwrap();
    let pii = original.replacen(
        "        description: Product name.",
        "        description: Product name.\n        tags: [pii]",
        1,
    );
    assert_ne!(pii, original);
    std::fs::write(&path, &pii).unwrap();
    let pii_listed = |list: &serde_json::Value| {
        list["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "sales.products")
            .map(|t| t["contains_pii"] == true)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = call(&client, "query", sql.clone()).await;
        if r.is_error == Some(true) {
            assert!(err(&r).contains("denied"), "{}", err(&r));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reclassified contract was not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let list = ok(&call(&client, "list_tables", json!({})).await);
    assert_eq!(pii_listed(&list), Some(true), "{list}");

    // An invalid edit: the table counts as unclassified (personal data assumed), still denied.
    std::fs::write(&path, "apiVersion: v3.2.0\nkind: DataContract\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let r = call(&client, "query", sql.clone()).await;
    assert!(err(&r).contains("denied"), "{}", err(&r));

    // Fixed: queries work again.
    std::fs::write(&path, &original).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = call(&client, "query", sql.clone()).await;
        if r.is_error != Some(true) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restored contract was not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let list = ok(&call(&client, "list_tables", json!({})).await);
    assert_eq!(pii_listed(&list), Some(false), "{list}");
    client.cancel().await.unwrap();
}

/// A restart takes contract files unchanged since the last start as remembered (`cache/contract-files`) and
/// reads each only when a call needs it: every answer is the first start's, and a file edited while the server
/// was down — same size, modification time set back — is read anew.
#[tokio::test]
async fn a_restart_serves_the_contracts_it_remembered_and_sees_edits_made_meanwhile() {
    let lake = Lake::new();
    let contracts = lake.path().join("contracts");
    let customers = contracts.join("sales/customers.yaml");
    // Files last written an hour ago, and a wait until their change times have settled too (a file written
    // moments before a start is always read).
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let age = |path: &std::path::Path| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
    };
    for entry in std::fs::read_dir(contracts.join("sales"))
        .unwrap()
        .chain(std::fs::read_dir(contracts.join("ops")).unwrap())
    {
        age(&entry.unwrap().path());
    }
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let answers = || async {
        let client = lake.connect("analyst", &[]).await;
        let mut out = vec![crate::util::text(
            &call(&client, "list_tables", json!({})).await,
        )];
        for table in [
            "sales.customers",
            "sales.orders",
            "sales.products",
            "ops.shipments",
        ] {
            let args = json!({"table": table, "full": true});
            out.push(crate::util::text(
                &call(&client, "get_contract", args).await,
            ));
        }
        client.cancel().await.unwrap();
        out
    };
    // The first start validates every contract in the background and remembers them.
    let client = lake.connect("analyst", &[]).await;
    ok(&call(&client, "list_tables", json!({})).await);
    let index = lake.path().join("cache/contract-files");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&index).map_or(0, |t| t.lines().count()) != 1 + 4 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the contracts were not remembered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    client.cancel().await.unwrap();
    let first = answers().await;
    assert!(first[1].contains("version: 1.0.0"), "{}", first[1]);
    assert_eq!(
        answers().await,
        first,
        "a restart answers as the first start"
    );

    let text = std::fs::read_to_string(&customers).unwrap();
    let edited = text.replacen("version: 1.0.0", "version: 9.0.0", 1);
    assert_eq!(edited.len(), text.len());
    std::fs::write(&customers, edited).unwrap();
    age(&customers);
    let after = answers().await;
    assert!(after[1].contains("version: 9.0.0"), "{}", after[1]);
    assert_eq!(after[2..], first[2..]);
}

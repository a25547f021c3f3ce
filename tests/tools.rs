//! Each tool's happy path and denial paths over stdio, asserting real contents.

use serde_json::{Value, json};

use crate::util::{Lake, call, err, ok, text};

#[tokio::test]
async fn tools_are_listed_with_schemas_descriptions_and_annotations() {
    let lake = Lake::new();
    std::fs::write(lake.path().join("parley.toml"), "output_schemas = true\n").unwrap();
    // An owner: every tool is listed to principals who own a table.
    let client = lake.connect("sales-owner", &[]).await;
    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().expect("server info").name,
        "parley"
    );
    let tools = client.list_all_tools().await.unwrap();
    // Only formats JSON Schema defines: clients that validate formats warn on schemars' `uint64` and the like.
    let schemas = serde_json::to_string(&tools).unwrap();
    for unknown in [
        "\"uint",
        "\"int8\"",
        "\"int16\"",
        "\"int32\"",
        "\"int64\"",
        "\"double\"",
        "\"float\"",
    ] {
        assert!(
            !schemas.contains(&format!("\"format\":{unknown}")),
            "a tool schema uses format {unknown}"
        );
    }
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    let mut documented: Vec<String> =
        std::fs::read_dir(format!("{}/tools", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .to_string()
            })
            .collect();
    documented.sort();
    assert_eq!(
        names, documented,
        "every tool has its description file and vice versa"
    );
    let read_only = [
        "access_status",
        "describe_table",
        "get_contract",
        "list_tables",
        "my_grants",
        "my_notices",
        "query",
        "review_requests",
        "table_consumers",
    ];
    for t in &tools {
        let desc = t.description.as_deref().unwrap_or("");
        let file = std::fs::read_to_string(format!(
            "{}/tools/{}.md",
            env!("CARGO_MANIFEST_DIR"),
            t.name
        ))
        .unwrap();
        assert_eq!(desc, file, "description of {} comes from tools/", t.name);
        assert!(t.output_schema.is_some(), "{} has an output schema", t.name);
        if t.name == "my_grants" {
            // Typed all the way down: a grant's terms and usage are described, not an open object.
            let schema = serde_json::to_string(t.output_schema.as_ref().unwrap()).unwrap();
            for field in [
                "terms_hash",
                "expires_at",
                "masks",
                "row_filter",
                "queries",
                "live",
            ] {
                assert!(
                    schema.contains(field),
                    "my_grants' output schema names {field}"
                );
            }
        }
        assert_eq!(t.input_schema.get("type"), Some(&json!("object")));
        assert_eq!(
            t.annotations.as_ref().and_then(|a| a.read_only_hint),
            Some(read_only.contains(&t.name.as_ref())),
            "{}",
            t.name
        );
    }
    let query = tools.iter().find(|t| t.name == "query").unwrap();
    let required = query
        .input_schema
        .get("required")
        .cloned()
        .unwrap_or_default();
    assert_eq!(required, json!(["sql"]));
    client.cancel().await.unwrap();
}

/// A client that hears `notifications/tools/list_changed`.
#[derive(Clone)]
struct Ears(tokio::sync::mpsc::UnboundedSender<()>);

impl rmcp::ClientHandler for Ears {
    async fn on_tool_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        let _ = self.0.send(());
    }
}

/// An agent pays for the tool list in context before its first call (issue 15): an analyst, who owns no table,
/// is listed neither the owners' tools nor output schemas (off by default), within 3,000 tokens (12,000 bytes at
/// the ~4 bytes per token of JSON); when a policy change makes it an owner, its session is told the list changed
/// and the next list has the owners' tools.
#[tokio::test]
async fn an_analyst_lists_what_it_can_use_within_a_small_context() {
    use rmcp::ServiceExt;
    use rmcp::transport::ConfigureCommandExt;

    let lake = Lake::new();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let transport = rmcp::transport::TokioChildProcess::builder(lake.command().configure(|cmd| {
        cmd.args(["serve", "--principal", "analyst"]);
    }))
    .stderr(std::process::Stdio::inherit())
    .spawn()
    .unwrap()
    .0;
    let client = Ears(tx).serve(transport).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for owners_only in [
        "review_requests",
        "decide_request",
        "revoke_grant",
        "table_consumers",
        "publish_contract",
    ] {
        assert!(
            !names.contains(&owners_only),
            "analyst is listed {owners_only}"
        );
    }
    assert!(names.contains(&"query") && names.contains(&"request_access"));
    assert!(tools.iter().all(|t| t.output_schema.is_none()));
    let bytes = serde_json::to_string(&tools).unwrap().len();
    assert!(
        bytes <= 12_000,
        "the analyst's tools/list is {bytes} bytes (~{} tokens)",
        bytes / 4
    );
    // Structured results still come back without a listed schema.
    let r = call(&client, "list_tables", json!({})).await;
    assert!(r.structured_content.is_some());

    // The policy makes the analyst an owner of ops.*: told at the next reload (within ~2 s).
    let policy = lake.path().join("policy").join("policy.cedar");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str(
        "\n@id(\"analyst-owns-ops\")\npermit (principal == Parley::User::\"analyst\", action == \
         Parley::Action::\"decide_request\", resource in Parley::Namespace::\"ops\");\n",
    );
    std::fs::write(&policy, text).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), heard.recv())
        .await
        .expect("tools/list_changed within 20 s")
        .unwrap();
    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(names.iter().any(|n| n == "decide_request"), "{names:?}");
    client.cancel().await.unwrap();
}

/// Whether the caller owns a table takes a policy decision per table for one who owns none (seconds on 100,000
/// tables), so `tools/list` answers without the owners' tools when it does not know in time
/// (`tools_list_wait_ms`; 0 here: never in time): an owner's session is then told the list changed, and its next
/// list has the owners' tools; an analyst's session is told nothing, as its list was right.
#[tokio::test]
async fn a_tool_list_answered_before_ownership_is_known_is_corrected_by_a_notification() {
    use rmcp::ServiceExt;
    use rmcp::transport::ConfigureCommandExt;

    let lake = Lake::new();
    let mut listed = Vec::new();
    for principal in ["sales-owner", "analyst"] {
        let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
        let transport =
            rmcp::transport::TokioChildProcess::builder(lake.command().configure(|cmd| {
                cmd.args(["serve", "--principal", principal])
                    .env("PARLEY_TOOLS_LIST_WAIT_MS", "0");
            }))
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap()
            .0;
        let client = Ears(tx).serve(transport).await.unwrap();
        let names = |tools: Vec<rmcp::model::Tool>| -> Vec<String> {
            tools.iter().map(|t| t.name.to_string()).collect()
        };
        let first = names(client.list_all_tools().await.unwrap());
        assert!(!first.iter().any(|n| n == "decide_request"), "{first:?}");
        let told = tokio::time::timeout(std::time::Duration::from_secs(5), heard.recv())
            .await
            .is_ok();
        let next = names(client.list_all_tools().await.unwrap());
        listed.push((principal, told, next.iter().any(|n| n == "decide_request")));
        client.cancel().await.unwrap();
    }
    assert_eq!(
        listed,
        [("sales-owner", true, true), ("analyst", false, false)]
    );
}

/// `tools/list` answers within `tools_list_wait_ms` of its request even while the contracts' first read runs
/// (10,000 contract files here): it waited for that read first, on one of the runtime's threads, and only then
/// for the owner question. The first listing still waits for the contracts, and is complete.
#[tokio::test]
async fn a_tool_list_does_not_wait_for_the_contracts_first_read() {
    use rmcp::ServiceExt;
    use rmcp::transport::ConfigureCommandExt;
    use tokio::io::AsyncBufReadExt;

    let lake = Lake::new();
    let contracts = lake.path().join("contracts");
    let text = std::fs::read_to_string(contracts.join("sales").join("products.yaml")).unwrap();
    std::fs::create_dir(contracts.join("bulk")).unwrap();
    for i in 0..10_000 {
        let name = format!("bulk_{i:05}");
        std::fs::write(
            contracts.join("bulk").join(format!("{name}.yaml")),
            text.replace("products", &name),
        )
        .unwrap();
    }
    let (transport, stderr) =
        rmcp::transport::TokioChildProcess::builder(lake.command().configure(|cmd| {
            cmd.args(["serve", "--principal", "analyst"])
                .env("PARLEY_LOG", "info")
                .env("PARLEY_TOOLS_LIST_WAIT_MS", "100");
        }))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let loaded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = loaded.clone();
    let mut lines = tokio::io::BufReader::new(stderr.unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("contracts loaded") {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let client = ().serve(transport).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert!(
        !loaded.load(std::sync::atomic::Ordering::SeqCst),
        "tools/list waited for the contracts' first read"
    );
    assert!(tools.iter().any(|t| t.name == "query"));
    assert!(!tools.iter().any(|t| t.name == "decide_request"));
    let list = ok(&call(&client, "list_tables", json!({})).await);
    assert_eq!(list["total"], 4, "{list:#}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn analyst_lists_discovers_and_queries() {
    let lake = Lake::new();
    let client = lake.connect("analyst", &[]).await;

    let list = ok(&call(&client, "list_tables", json!({})).await);
    assert_eq!(list["total"], 4);
    let by_name = |name: &str| -> Value {
        list["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    assert_eq!(by_name("sales.orders")["row_count"], 120_000);
    assert_eq!(by_name("sales.customers")["row_count"], 20_000);
    assert_eq!(by_name("sales.products")["row_count"], 500);
    assert_eq!(by_name("ops.shipments")["row_count"], 60_000);
    assert_eq!(by_name("sales.customers")["can_query"], false);
    assert_eq!(by_name("sales.customers")["contains_pii"], true);
    assert_eq!(by_name("sales.orders")["can_query"], true);
    assert_eq!(by_name("sales.orders")["owner"], "sales-owners");
    // No grants yet: entries carry no empty `grant_ids`.
    assert!(
        by_name("sales.orders").get("grant_ids").is_none(),
        "{list:#}"
    );

    // Pagination and filtering.
    let page1 = ok(&call(&client, "list_tables", json!({"limit": 3})).await);
    assert_eq!(page1["tables"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let page2 = ok(&call(
        &client,
        "list_tables",
        json!({"limit": 3, "cursor": cursor}),
    )
    .await);
    assert_eq!(page2["tables"].as_array().unwrap().len(), 1);
    assert!(page2.get("next_cursor").is_none());
    let gdpr = ok(&call(&client, "list_tables", json!({"filter": "GDPR"})).await);
    assert_eq!(gdpr["total"], 1);
    assert_eq!(gdpr["tables"][0]["table"], "sales.customers");
    let ops = ok(&call(&client, "list_tables", json!({"namespace": "ops"})).await);
    assert_eq!(ops["total"], 1);
    let both = ok(&call(
        &client,
        "list_tables",
        json!({"namespace": "sales", "filter": "ORDERS"}),
    )
    .await);
    assert_eq!(both["total"], 1, "{both:#}");
    assert_eq!(both["tables"][0]["table"], "sales.orders");
    let none = ok(&call(
        &client,
        "list_tables",
        json!({"namespace": "ops", "filter": "orders"}),
    )
    .await);
    assert_eq!(none["total"], 0, "{none:#}");

    // describe_table: schema, partitioning, snapshots, classifications.
    let describe = call(&client, "describe_table", json!({"table": "sales.orders"})).await;
    let d = ok(&describe);
    let cols = d["columns"].as_array().unwrap();
    assert_eq!(cols.len(), 10);
    let col = |n: &str| cols.iter().find(|c| c["name"] == n).cloned().unwrap();
    assert_eq!(col("total_amount")["data_type"], "decimal(12, 2)");
    assert_eq!(col("total_amount")["classification"], "confidential");
    assert_eq!(col("created_at")["data_type"], "timestamptz");
    assert_eq!(col("is_gift")["nullable"], true);
    assert_eq!(col("order_id")["nullable"], false);
    assert_eq!(d["partition_spec"][0]["transform"], "month");
    assert_eq!(d["partition_spec"][0]["source_column"], "order_date");
    let snaps = d["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["total_records"], 100_000);
    assert_eq!(snaps[1]["added_records"], 20_000);
    assert_eq!(
        d["current_snapshot"]["snapshot_id"],
        snaps[1]["snapshot_id"]
    );
    assert_eq!(d["row_count"], 120_000);
    // 64-bit ids as strings: a JavaScript client would round them as numbers (issue 15).
    let id = d["current_snapshot"]["snapshot_id"].as_str().unwrap();
    assert!(id.parse::<i64>().is_ok() && text(&describe).contains(id));
    let c = ok(&call(
        &client,
        "describe_table",
        json!({"table": "sales.customers"}),
    )
    .await);
    let email = c["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "email")
        .cloned()
        .unwrap();
    assert_eq!(email["pii"], true);
    assert_eq!(c["can_query"], false);

    // get_contract: the terms; the YAML only in the full form (a summary by default keeps the answer small).
    let summary = call(&client, "get_contract", json!({"table": "sales.customers"})).await;
    assert!(ok(&summary).get("yaml").is_none());
    assert!(text(&summary).contains("full: true"), "{}", text(&summary));
    let k = ok(&call(
        &client,
        "get_contract",
        json!({"table": "sales.customers", "full": true}),
    )
    .await);
    assert_eq!(k["contract_id"], "urn:parley:demo:sales:customers");
    assert!(
        k["allowed_purposes"]
            .as_array()
            .unwrap()
            .contains(&json!("churn_analysis"))
    );
    assert!(
        k["prohibited_purposes"]
            .as_array()
            .unwrap()
            .contains(&json!("marketing_outreach"))
    );
    assert!(
        k["yaml"]
            .as_str()
            .unwrap()
            .starts_with("apiVersion: v3.2.0")
    );
    assert_eq!(k["price"], "0.5 EUR per 1000 rows");

    // A lookup by key decodes the key first and the other columns only for the matching rows (late
    // materialization): the same rows as a filter that cannot be pushed down.
    for key in [4242, 1, 119_999, -5] {
        let pushed = ok(&call(
            &client,
            "query",
            json!({"sql": format!("SELECT * FROM sales.orders WHERE order_id = {key}")}),
        )
        .await);
        let plain = ok(&call(
            &client,
            "query",
            json!({"sql": format!("SELECT * FROM sales.orders WHERE order_id + 0 = {key}")}),
        )
        .await);
        assert_eq!(pushed["rows"], plain["rows"], "order {key}");
        assert_eq!(
            pushed["row_count"],
            if key > 0 { 1 } else { 0 },
            "order {key}"
        );
    }

    // query: counts and sums that must agree with each other and with the data.
    let q = ok(&call(
        &client,
        "query",
        json!({"sql": "SELECT count(*) AS n, sum(total_amount) AS total FROM sales.orders", "purpose": "revenue_reporting"}),
    )
    .await);
    assert_eq!(q["rows"][0][0], 120_000);
    let total: f64 = q["rows"][0][1]
        .as_str()
        .expect("decimal as string")
        .parse()
        .unwrap();
    let by_status = ok(&call(
        &client,
        "query",
        json!({"sql": "SELECT status, count(*) AS n, sum(total_amount) AS s FROM sales.orders GROUP BY status ORDER BY status"}),
    )
    .await);
    let rows = by_status["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(
        rows.iter().map(|r| r[1].as_i64().unwrap()).sum::<i64>(),
        120_000
    );
    let sum: f64 = rows
        .iter()
        .map(|r| r[2].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!((sum - total).abs() < 0.01, "{sum} vs {total}");
    assert_eq!(q["snapshots"][0]["table"], "sales.orders");
    assert_eq!(
        q["snapshots"][0]["snapshot_id"],
        d["current_snapshot"]["snapshot_id"]
    );
    assert_eq!(q["columns"][0]["name"], "n");

    // A join across namespaces, with the compact text for the model.
    let j = call(
        &client,
        "query",
        json!({"sql": "SELECT s.carrier, count(*) AS n FROM ops.shipments s JOIN sales.orders o ON s.order_id = o.order_id \
                        GROUP BY s.carrier ORDER BY n DESC LIMIT 2"}),
    )
    .await;
    let jv = ok(&j);
    assert_eq!(jv["row_count"], 2);
    assert!(text(&j).starts_with("carrier\tn\n"), "{}", text(&j));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn denied_and_hidden_tables_reveal_nothing() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    // Discoverable but not queryable: denied with a reason and a next step, no data.
    let e = err(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT email FROM sales.customers LIMIT 1"}),
    )
    .await);
    assert!(e.contains("access denied"), "{e}");
    assert!(e.contains("request_access"), "{e}");
    assert!(!e.contains('@'), "no e-mail address leaks: {e}");
    // Even hidden inside a subquery of an allowed query.
    let e = err(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.orders WHERE customer_id IN (SELECT customer_id FROM sales.customers)"}),
    )
    .await);
    assert!(e.contains("access denied"), "{e}");
    analyst.cancel().await.unwrap();

    // marketing-agent may not discover ops.shipments: every tool answers as for a table that does not exist.
    let marketing = lake.connect("marketing-agent", &[]).await;
    let list = ok(&call(&marketing, "list_tables", json!({})).await);
    let names: Vec<&str> = list["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"ops.shipments"), "{names:?}");
    for tool in ["describe_table", "get_contract"] {
        let hidden = err(&call(&marketing, tool, json!({"table": "ops.shipments"})).await);
        let missing = err(&call(&marketing, tool, json!({"table": "ops.nothing_here"})).await);
        assert_eq!(
            hidden.replace("ops.shipments", "X"),
            missing.replace("ops.nothing_here", "X")
        );
    }
    let hidden = err(&call(
        &marketing,
        "query",
        json!({"sql": "SELECT * FROM ops.shipments"}),
    )
    .await);
    let missing = err(&call(
        &marketing,
        "query",
        json!({"sql": "SELECT * FROM ops.nothing_here"}),
    )
    .await);
    assert_eq!(
        hidden.replace("ops.shipments", "X"),
        missing.replace("ops.nothing_here", "X")
    );
    // Queryable for marketing: products.
    let p = ok(&call(
        &marketing,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.products"}),
    )
    .await);
    assert_eq!(p["rows"][0][0], 500);
    marketing.cancel().await.unwrap();

    // An unknown principal discovers nothing and queries nothing.
    let stranger = lake.connect("mallory", &[]).await;
    let list = ok(&call(&stranger, "list_tables", json!({})).await);
    assert_eq!(list["total"], 0);
    let e = err(&call(
        &stranger,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.products"}),
    )
    .await);
    assert!(e.contains("not found"), "{e}");
    let resources = stranger.list_resources(None).await.unwrap().resources;
    assert!(resources.is_empty());
    stranger.cancel().await.unwrap();

    // The owner of sales sees PII.
    let owner = lake.connect("sales-owner", &[]).await;
    let q = ok(&call(
        &owner,
        "query",
        json!({"sql": "SELECT email FROM sales.customers WHERE customer_id = 1"}),
    )
    .await);
    assert!(q["rows"][0][0].as_str().unwrap().contains('@'));
    owner.cancel().await.unwrap();
}

#[tokio::test]
async fn contracts_are_resources_and_prompts_are_served() {
    let lake = Lake::new();
    let client = lake.connect("analyst", &[]).await;
    let resources = client.list_resources(None).await.unwrap().resources;
    let mut uris: Vec<String> = resources.iter().map(|r| r.uri.clone()).collect();
    uris.sort();
    assert_eq!(
        uris,
        [
            "contract://ops/shipments",
            "contract://sales/customers",
            "contract://sales/orders",
            "contract://sales/products"
        ]
    );
    let templates = client
        .list_resource_templates(None)
        .await
        .unwrap()
        .resource_templates;
    assert_eq!(templates[0].uri_template, "contract://{namespace}/{table}");
    let read = client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "contract://sales/orders",
        ))
        .await
        .unwrap();
    let rmcp::model::ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("text contents")
    };
    assert!(text.contains("id: urn:parley:demo:sales:orders"));
    let missing = client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "contract://sales/nope",
        ))
        .await;
    assert!(missing.is_err());

    let prompts = client.list_prompts(None).await.unwrap().prompts;
    let mut names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["answer_with_data", "explore_dataset"]);
    let p = client
        .get_prompt(
            rmcp::model::GetPromptRequestParams::new("explore_dataset")
                .with_arguments(rmcp::object!({"topic": "late deliveries"})),
        )
        .await
        .unwrap();
    let body = p.messages[0].content.as_text().unwrap().text.clone();
    assert!(body.contains("\"late deliveries\""), "{body}");
    assert!(!body.contains("{{"), "{body}");
    // Issue 11: every method a principal invokes is audited, prompts, subscriptions and log levels included.
    #[allow(deprecated)]
    {
        client
            .subscribe(rmcp::model::SubscribeRequestParams::new("request://r-1"))
            .await
            .unwrap();
        client
            .unsubscribe(rmcp::model::UnsubscribeRequestParams::new("request://r-1"))
            .await
            .unwrap();
        client
            .set_level(rmcp::model::SetLevelRequestParams::new(
                rmcp::model::LoggingLevel::Info,
            ))
            .await
            .unwrap();
    }
    client.cancel().await.unwrap();
    let audit = lake.audit();
    for method in [
        "prompts/get",
        "resources/subscribe",
        "resources/unsubscribe",
        "logging/setLevel",
    ] {
        let r = audit
            .iter()
            .find(|r| r["tool"] == method)
            .unwrap_or_else(|| panic!("no audit record of {method}"));
        assert_eq!(r["principal"], "analyst", "{r}");
    }
}

#[tokio::test]
async fn sql_cannot_reach_around_the_policy() {
    let lake = Lake::new();
    let client = lake.connect("analyst", &[]).await;
    for sql in [
        "SELECT * FROM parley.sales.customers",
        "SELECT * FROM \"sales\".\"customers\"",
        "SELECT * FROM SALES.CUSTOMERS",
        "WITH c AS (SELECT * FROM sales.customers) SELECT count(*) FROM c",
        "SELECT * FROM sales.orders o JOIN sales.customers c ON o.customer_id = c.customer_id",
        "SELECT customer_id FROM sales.orders UNION ALL SELECT customer_id FROM sales.customers",
        "SELECT (SELECT max(email) FROM sales.customers) AS e",
    ] {
        let e = err(&call(&client, "query", json!({"sql": sql})).await);
        assert!(e.contains("access denied"), "{sql}: {e}");
    }
    for sql in [
        "SELECT * FROM sales.\"orders$snapshots\"",
        "SELECT * FROM sales.\"orders$manifests\"",
        "SELECT * FROM information_schema.columns",
        "SELECT * FROM datafusion.public.x",
    ] {
        let e = err(&call(&client, "query", json!({"sql": sql})).await);
        assert!(
            e.contains("not found") || e.contains("unknown catalog"),
            "{sql}: {e}"
        );
    }
    for sql in [
        "SELECT * FROM sales.orders FOR SYSTEM_TIME AS OF '2020-01-01'",
        "SHOW TABLES",
        "DESCRIBE sales.customers",
        "SELECT * FROM read_parquet('/etc/passwd')",
    ] {
        let r = call(&client, "query", json!({"sql": sql})).await;
        assert_eq!(
            r.is_error,
            Some(true),
            "{sql} must fail: {:?}",
            r.structured_content
        );
    }
    client.cancel().await.unwrap();
}

/// `completion/complete`: purposes for `answer_with_data`, and for `contract://` only the namespaces and tables
/// the caller may discover; audited like every request.
#[tokio::test]
async fn completions_offer_only_what_the_caller_may_see() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    let ns = analyst
        .complete_resource_argument("contract://{namespace}/{table}", "namespace", "", None)
        .await
        .unwrap();
    assert_eq!(ns.values, vec!["ops", "sales"]);
    let purpose = analyst
        .complete_prompt_argument("answer_with_data", "purpose", "CHURN", None)
        .await
        .unwrap();
    assert_eq!(purpose.values, vec!["churn_analysis"]);
    analyst.cancel().await.unwrap();

    let marketing = lake.connect("marketing-agent", &[]).await;
    let ns = marketing
        .complete_resource_argument("contract://{namespace}/{table}", "namespace", "", None)
        .await
        .unwrap();
    assert_eq!(
        ns.values,
        vec!["sales"],
        "ops is not discoverable for marketing"
    );
    let mut args = std::collections::HashMap::new();
    args.insert("namespace".to_string(), "sales".to_string());
    let tables = marketing
        .complete_resource_argument(
            "contract://{namespace}/{table}",
            "table",
            "c",
            Some(rmcp::model::CompletionContext::with_arguments(args)),
        )
        .await
        .unwrap();
    assert_eq!(tables.values, vec!["customers"]);
    let mut args = std::collections::HashMap::new();
    args.insert("namespace".to_string(), "ops".to_string());
    let hidden = marketing
        .complete_resource_argument(
            "contract://{namespace}/{table}",
            "table",
            "",
            Some(rmcp::model::CompletionContext::with_arguments(args)),
        )
        .await
        .unwrap();
    assert!(hidden.values.is_empty(), "{:?}", hidden.values);
    marketing.cancel().await.unwrap();
    assert!(
        lake.audit()
            .iter()
            .any(|r| r["tool"] == "completion/complete" && r["principal"] == "marketing-agent")
    );
}

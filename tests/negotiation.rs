//! Access negotiation through a real MCP client: each outcome (granted, counter-offer accepted and declined,
//! pending then approved or denied by an owner session, denied outright, revoked), the terms, and the data the
//! grant actually lets a query see — plus an adversarial suite against a grant's masks, dropped columns and row
//! filter.

use serde_json::{Value, json};

use crate::util::{Lake, call, err, ok};

async fn request(client: &rmcp::Peer<rmcp::RoleClient>, args: Value) -> Value {
    ok(&call(client, "request_access", args).await)
}

fn is_hex64(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()))
}

#[tokio::test]
async fn granted_counter_offer_and_denied_outcomes() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;

    // Granted: no personal data asked for, allowed purpose.
    let g = request(
        &analyst,
        json!({"tables": ["sales.customers"], "columns": ["customer_id", "country", "segment"],
               "purpose": "churn_analysis", "duration_days": 7}),
    )
    .await;
    assert_eq!(g["status"], "granted", "{g:#}");
    let grant = g["grant_id"].as_str().unwrap().to_string();
    assert_eq!(
        g["terms"]["columns"],
        json!([
            "sales.customers.customer_id",
            "sales.customers.country",
            "sales.customers.segment"
        ])
    );
    assert_eq!(g["odrl"]["@type"], "Agreement");
    let q = ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.customers", "grant_id": grant}),
    )
    .await);
    assert_eq!(q["rows"][0][0], 20_000);
    let e = err(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT email FROM sales.customers", "grant_id": grant}),
    )
    .await);
    assert!(
        e.contains("email"),
        "a column outside the grant does not exist: {e}"
    );
    // Without the grant the policy still denies, and says which request would help.
    let e = err(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.customers"}),
    )
    .await);
    assert!(e.contains("request_access"), "{e}");

    // Counter-offer: personal data asked for → masked.
    let offer = request(
        &analyst,
        json!({"tables": ["sales.customers"], "purpose": "churn_analysis", "duration_days": 90}),
    )
    .await;
    assert_eq!(offer["status"], "counter_offer", "{offer:#}");
    assert_eq!(offer["terms"]["masks"]["sales.customers.email"], "hash");
    assert_eq!(
        offer["terms"]["masks"]["sales.customers.birth_date"],
        "year_only"
    );
    assert_eq!(offer["odrl"]["@type"], "Offer");
    let request_id = offer["request_id"].as_str().unwrap().to_string();
    let wrong = err(&call(
        &analyst,
        "accept_offer",
        json!({"request_id": request_id, "terms_hash": "0000"}),
    )
    .await);
    assert!(wrong.contains("terms"), "{wrong}");
    let accepted = ok(&call(
        &analyst,
        "accept_offer",
        json!({"request_id": request_id, "terms_hash": offer["terms_hash"]}),
    )
    .await);
    let masked_grant = accepted["grant_id"].as_str().unwrap().to_string();
    let rows = ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT email, birth_date, country FROM sales.customers WHERE birth_date IS NOT NULL LIMIT 20",
               "grant_id": masked_grant}),
    )
    .await);
    for row in rows["rows"].as_array().unwrap() {
        assert!(is_hex64(&row[0]), "email is hashed: {row:?}");
        assert!(
            row[1].as_str().unwrap().ends_with("-01-01"),
            "birth date is year-only: {row:?}"
        );
    }
    let status = ok(&call(&analyst, "access_status", json!({"request_id": request_id})).await);
    assert_eq!(status["state"], "finalized");

    // Declined counter-offer.
    let offer = request(
        &analyst,
        json!({"tables": ["sales.customers"], "purpose": "customer_analytics"}),
    )
    .await;
    let id = offer["request_id"].as_str().unwrap().to_string();
    ok(&call(&analyst, "decline_offer", json!({"request_id": id})).await);
    let status = ok(&call(&analyst, "access_status", json!({"request_id": id})).await);
    assert_eq!(status["state"], "terminated");
    let again = err(&call(
        &analyst,
        "accept_offer",
        json!({"request_id": id, "terms_hash": offer["terms_hash"]}),
    )
    .await);
    assert!(again.contains("terminated"), "{again}");

    // Denied outright: a prohibited purpose; the answer names the clause and acceptable purposes.
    let denied = request(
        &analyst,
        json!({"tables": ["sales.customers"], "purpose": "marketing_outreach"}),
    )
    .await;
    assert_eq!(denied["status"], "denied");
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("prohibitedPurposes"),
        "{denied:#}"
    );
    assert!(
        denied["acceptable"]
            .as_str()
            .unwrap()
            .contains("churn_analysis"),
        "{denied:#}"
    );

    let list = ok(&call(&analyst, "list_tables", json!({"filter": "customers"})).await);
    assert_eq!(list["tables"][0]["can_query"], false);
    assert_eq!(
        list["tables"][0]["grant_ids"].as_array().unwrap().len(),
        2,
        "{list:#}"
    );
    // A purpose the contract does not list but which is a kind of one it does (purposes.yaml).
    let sub = request(
        &analyst,
        json!({"tables": ["sales.customers"], "columns": ["country", "segment"], "purpose": "segment_profiling"}),
    )
    .await;
    assert_eq!(sub["status"], "granted", "{sub:#}");
    assert!(
        sub["reason"]
            .as_str()
            .unwrap()
            .contains("segment_profiling is a kind of customer_analytics"),
        "{sub:#}"
    );
    assert!(
        g["acknowledgement"].as_str().unwrap().contains("churn"),
        "{g:#}"
    );

    let mine = ok(&call(&analyst, "my_grants", json!({})).await);
    assert_eq!(mine["grants"].as_array().unwrap().len(), 3);
    analyst.cancel().await.unwrap();

    // Every step is audited with its request or grant id.
    let audit = lake.audit();
    let negotiation: Vec<&Value> = audit
        .iter()
        .filter(|r| {
            ["request_access", "accept_offer", "decline_offer"]
                .contains(&r["tool"].as_str().unwrap())
        })
        .collect();
    assert_eq!(negotiation.len(), 9);
    assert!(
        negotiation
            .iter()
            .all(|r| r["reason"].as_str().unwrap().contains("request ")),
        "{negotiation:#?}"
    );
}

#[tokio::test]
async fn pending_requests_are_decided_by_owners_and_grants_revoked() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    let owner = lake.connect("sales-owner", &[]).await;

    // A purpose the contract does not list → pending with the contract's approvers.
    let p = request(
        &analyst,
        json!({"tables": ["sales.orders"], "purpose": "pricing_research"}),
    )
    .await;
    assert_eq!(p["status"], "pending", "{p:#}");
    assert_eq!(p["approvers"], json!(["sales-owner"]));
    let approve_id = p["request_id"].as_str().unwrap().to_string();
    let p2 = request(
        &analyst,
        json!({"tables": ["sales.orders"], "purpose": "office_gossip"}),
    )
    .await;
    let deny_id = p2["request_id"].as_str().unwrap().to_string();

    // The analyst cannot decide their own request.
    let e = err(&call(
        &analyst,
        "decide_request",
        json!({"request_id": approve_id, "approve": true, "reason": "me"}),
    )
    .await);
    assert!(e.contains("denied") || e.contains("not found"), "{e}");

    let review = ok(&call(&owner, "review_requests", json!({})).await);
    let ids: Vec<&str> = review["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&approve_id.as_str()) && ids.contains(&deny_id.as_str()),
        "{review:#}"
    );
    ok(&call(
        &owner,
        "decide_request",
        json!({"request_id": approve_id, "approve": true, "reason": "fine for Q4 pricing"}),
    )
    .await);
    ok(&call(
        &owner,
        "decide_request",
        json!({"request_id": deny_id, "approve": false, "reason": "not a business purpose"}),
    )
    .await);

    let approved = ok(&call(&analyst, "access_status", json!({"request_id": approve_id})).await);
    assert_eq!(approved["state"], "finalized");
    let grant = approved["grant_id"].as_str().unwrap().to_string();
    let denied = ok(&call(&analyst, "access_status", json!({"request_id": deny_id})).await);
    assert_eq!(denied["state"], "terminated");
    assert!(
        denied["history"]
            .to_string()
            .contains("not a business purpose")
    );

    let q = ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.orders", "grant_id": grant}),
    )
    .await);
    assert_eq!(q["rows"][0][0], 120_000);

    // The owner sees who uses the table; the grant is also a resource with its ODRL agreement.
    let consumers = ok(&call(&owner, "table_consumers", json!({"table": "sales.orders"})).await);
    let grants = consumers["grants"].as_array().unwrap();
    assert!(
        grants
            .iter()
            .any(|g| g["grant_id"] == grant.as_str() && g["principal"] == "analyst"),
        "{consumers:#}"
    );
    let e = err(&call(
        &analyst,
        "table_consumers",
        json!({"table": "sales.orders"}),
    )
    .await);
    assert!(e.contains("access denied"), "{e}");
    let read = analyst
        .read_resource(rmcp::model::ReadResourceRequestParams::new(format!(
            "grant://{grant}"
        )))
        .await
        .unwrap();
    let rmcp::model::ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("text contents")
    };
    let resource: Value = serde_json::from_str(text).unwrap();
    assert_eq!(resource["odrl"]["@type"], "Agreement");
    assert_eq!(
        resource["odrl"]["permission"][0]["assignee"],
        "urn:parley:principal:analyst"
    );

    // Revoked: the next query under the grant fails.
    ok(&call(
        &owner,
        "revoke_grant",
        json!({"grant_id": grant, "reason": "project over"}),
    )
    .await);
    let e = err(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.orders", "grant_id": grant}),
    )
    .await);
    assert!(e.contains("revoked"), "{e}");
    // The requester's inbox has the owner's decisions and the revocation, with reasons.
    let inbox = ok(&call(&analyst, "my_notices", json!({})).await).to_string();
    for why in [
        "fine for Q4 pricing",
        "not a business purpose",
        "project over",
    ] {
        assert!(inbox.contains(why), "{why} in {inbox}");
    }
    analyst.cancel().await.unwrap();
    owner.cancel().await.unwrap();

    // State survives a restart.
    let analyst = lake.connect("analyst", &[]).await;
    let status = ok(&call(&analyst, "access_status", json!({"request_id": approve_id})).await);
    assert_eq!(status["state"], "finalized");
    analyst.cancel().await.unwrap();
}

#[tokio::test]
async fn sql_cannot_get_around_a_grant() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    // Grant: customers without phone, email hashed, only German customers.
    let offer = request(
        &analyst,
        json!({"tables": ["sales.customers"], "purpose": "churn_analysis",
               "columns": ["customer_id", "email", "country", "segment", "lifetime_value"],
               "row_scope": {"column": "country", "values": ["DE"]}}),
    )
    .await;
    let accepted = ok(&call(
        &analyst,
        "accept_offer",
        json!({"request_id": offer["request_id"], "terms_hash": offer["terms_hash"]}),
    )
    .await);
    let grant = accepted["grant_id"].as_str().unwrap().to_string();
    let attempts = [
        "SELECT * FROM sales.customers",
        "SELECT email FROM sales.customers",
        "SELECT phone FROM sales.customers",
        "SELECT full_name FROM sales.customers",
        "SELECT * FROM sales.customers WHERE country <> 'DE'",
        "SELECT count(*) FROM sales.customers WHERE country = 'FR'",
        "SELECT DISTINCT country FROM sales.customers",
        "WITH c AS (SELECT * FROM sales.customers) SELECT * FROM c",
        "SELECT * FROM (SELECT * FROM sales.customers) t",
        "SELECT a.email FROM sales.customers a JOIN sales.customers b ON a.customer_id = b.customer_id",
        "SELECT email FROM sales.customers UNION ALL SELECT email FROM sales.customers",
        "SELECT max(email), min(email) FROM sales.customers",
        "SELECT email, row_number() OVER (ORDER BY email) FROM sales.customers",
        "SELECT lower(email) FROM sales.customers",
        "SELECT substr(email, 1, 3) FROM sales.customers",
        "SELECT * FROM information_schema.columns",
        "SHOW COLUMNS FROM sales.customers",
        "SHOW TABLES",
        "DESCRIBE sales.customers",
        "SELECT * FROM sales.\"customers$snapshots\"",
        "SELECT * FROM sales.customers FOR SYSTEM_TIME AS OF '2020-01-01'",
        "SELECT * FROM generate_series(1, 3)",
        "SELECT * FROM parley.sales.customers",
        "SELECT c.* FROM sales.customers c WHERE c.customer_id IN (SELECT customer_id FROM sales.customers)",
        "SELECT email FROM sales.customers ORDER BY email LIMIT 5",
        "SELECT CAST(email AS VARCHAR) FROM sales.customers",
        "SELECT country, count(*) FROM sales.customers GROUP BY country",
        "SELECT * FROM sales.customers, sales.orders LIMIT 5",
        "EXPLAIN SELECT * FROM sales.customers",
        "COPY (SELECT * FROM sales.customers) TO '/tmp/x.csv'",
        "CREATE VIEW v AS SELECT * FROM sales.customers",
        "SELECT arrow_typeof(email) FROM sales.customers",
    ];
    for sql in attempts {
        let r = call(
            &analyst,
            "query",
            json!({"sql": sql, "grant_id": grant, "max_rows": 10000}),
        )
        .await;
        if r.is_error == Some(true) {
            continue;
        }
        let v = r.structured_content.clone().unwrap();
        let cols: Vec<String> = v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_lowercase())
            .collect();
        for (i, c) in cols.iter().enumerate() {
            assert!(
                !c.contains("phone") && !c.contains("full_name") && !c.contains("birth"),
                "{sql}: {cols:?}"
            );
            for row in v["rows"].as_array().unwrap() {
                let cell = &row[i];
                if let Some(s) = cell.as_str() {
                    assert!(!s.contains('@'), "{sql}: raw e-mail leaked: {s}");
                    for other in ["FR", "NL", "ES", "IT", "PL", "SE", "AT", "GB", "US"] {
                        assert_ne!(s, other, "{sql}: a filtered-out row leaked");
                    }
                }
            }
        }
        if let Some(n) = v["rows"]
            .as_array()
            .unwrap()
            .first()
            .and_then(|r| r[0].as_i64())
            && cols.len() == 1
            && sql.contains("count(*)")
        {
            assert!(
                n < 20_000,
                "{sql}: counted rows outside the row filter: {n}"
            );
        }
    }
    analyst.cancel().await.unwrap();
}

#[tokio::test]
async fn quotas_and_expiry_set_by_the_approver_are_enforced() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    let owner = lake.connect("sales-owner", &[]).await;
    let ask = |purpose: &'static str| json!({"tables": ["sales.orders"], "purpose": purpose});
    let quota_req = request(&analyst, ask("pricing_research")).await;
    let expiry_req = request(&analyst, ask("audit_sampling")).await;
    ok(&call(
        &owner,
        "decide_request",
        json!({"request_id": quota_req["request_id"], "approve": true,
        "reason": "two queries", "max_queries": 2}),
    )
    .await);
    let ends = chrono::Utc::now() + chrono::Duration::seconds(3);
    ok(&call(
        &owner,
        "decide_request",
        json!({"request_id": expiry_req["request_id"], "approve": true,
        "reason": "briefly", "expires_at": ends.to_rfc3339()}),
    )
    .await);
    let too_long = request(&analyst, ask("another_thing")).await;
    let e = err(&call(
        &owner,
        "decide_request",
        json!({"request_id": too_long["request_id"], "approve": true,
        "reason": "x", "expires_at": "2999-01-01T00:00:00Z"}),
    )
    .await);
    assert!(e.contains("not after the proposed expiry"), "{e}");

    let status = |id: Value| {
        let analyst = &analyst;
        async move {
            ok(&call(analyst, "access_status", json!({"request_id": id})).await)["grant_id"].clone()
        }
    };
    let quota_grant = status(quota_req["request_id"].clone()).await;
    let sql = |g: &Value| json!({"sql": "SELECT count(*) FROM sales.orders", "grant_id": g});
    ok(&call(&analyst, "query", sql(&quota_grant)).await);
    ok(&call(&analyst, "query", sql(&quota_grant)).await);
    let e = err(&call(&analyst, "query", sql(&quota_grant)).await);
    assert!(
        e.contains("quota exceeded") && e.contains("2 queries"),
        "{e}"
    );
    let mine = ok(&call(&analyst, "my_grants", json!({})).await);
    let g = mine["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["grant_id"] == quota_grant)
        .unwrap()
        .clone();
    assert_eq!(g["usage"]["queries"], 2);

    let expiry_grant = status(expiry_req["request_id"].clone()).await;
    ok(&call(&analyst, "query", sql(&expiry_grant)).await);
    // Wait out the term the approver set (the behaviour under test is the wall clock passing the expiry).
    tokio::time::sleep(
        (ends - chrono::Utc::now()).to_std().unwrap_or_default()
            + std::time::Duration::from_millis(200),
    )
    .await;
    let e = err(&call(&analyst, "query", sql(&expiry_grant)).await);
    assert!(e.contains("expired"), "{e}");
    analyst.cancel().await.unwrap();
    owner.cancel().await.unwrap();
}

/// A person behind an MCP client that supports elicitation (protocol 2025-06-18): answers every
/// acknowledgement with `accept`, and remembers what it was asked.
#[derive(Clone)]
struct Person {
    accept: bool,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl rmcp::ClientHandler for Person {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut caps = rmcp::model::ClientCapabilities::default();
        caps.elicitation = Some(
            rmcp::model::ElicitationCapability::new()
                .with_form(rmcp::model::FormElicitationCapability::new()),
        );
        rmcp::model::ClientConfig::new(caps, rmcp::model::Implementation::new("person", "1"))
            .with_protocol_version(rmcp::model::ProtocolVersion::V_2025_06_18)
    }

    async fn create_elicitation(
        &self,
        request: rmcp::model::ElicitRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        if let rmcp::model::ElicitRequestParams::FormElicitationParams { message, .. } = &request {
            self.asked.lock().unwrap().push(message.clone());
        }
        Ok(
            rmcp::model::ElicitResult::new(rmcp::model::ElicitationAction::Accept)
                .with_content(json!({"accept": self.accept})),
        )
    }
}

#[tokio::test]
async fn a_person_acknowledges_usage_terms_through_elicitation() {
    use rmcp::ServiceExt;
    let lake = Lake::new();
    for accept in [true, false] {
        let person = Person {
            accept,
            asked: Default::default(),
        };
        let asked = person.asked.clone();
        let transport = rmcp::transport::TokioChildProcess::new({
            let mut cmd = lake.command();
            cmd.args(["serve", "--principal", "analyst"]);
            cmd
        })
        .unwrap();
        let client = person.serve(transport).await.unwrap();
        let r = request(
            &client,
            json!({"tables": ["sales.orders"], "purpose": "revenue_reporting"}),
        )
        .await;
        let asked = asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 1, "the person was asked once");
        assert!(
            asked[0].contains("usage:") && asked[0].contains("revenue_reporting"),
            "{}",
            asked[0]
        );
        if accept {
            assert_eq!(r["status"], "granted", "{r:#}");
            assert!(r["grant_id"].is_string());
        } else {
            assert_eq!(r["status"], "declined", "{r:#}");
            assert_eq!(r["state"], "terminated");
            assert!(r.get("grant_id").is_none());
        }
        client.cancel().await.unwrap();
    }
}

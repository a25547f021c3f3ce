//! Access negotiation through a real MCP client: each outcome (granted, counter-offer accepted and declined,
//! pending then approved or denied by an owner session, denied outright, revoked), the terms, and the data the
//! grant actually lets a query see — plus an adversarial suite against a grant's masks, dropped columns and row
//! filter, and the questions a person answers through elicitation on both protocol generations.

use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ElicitRequestParams, InputRequest, InputResponses,
    ProtocolVersion,
};
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
async fn purpose_picks_the_widest_live_grant_and_a_failure_names_the_grant_used() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    let narrow = request(
        &analyst,
        json!({"tables": ["sales.customers"], "columns": ["customer_id", "country"],
               "purpose": "churn_analysis", "duration_days": 7}),
    )
    .await;
    assert_eq!(narrow["status"], "granted", "{narrow:#}");
    let wide = request(
        &analyst,
        json!({"tables": ["sales.customers"], "columns": ["customer_id", "country", "segment"],
               "purpose": "churn_analysis", "duration_days": 7}),
    )
    .await;
    assert_eq!(wide["status"], "granted", "{wide:#}");
    let wide_id = wide["grant_id"].as_str().unwrap();
    // `segment` is only in the newer, wider grant: the purpose alone picks it, not the older narrow one.
    let q = ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(DISTINCT segment) FROM sales.customers", "purpose": "churn_analysis"}),
    )
    .await);
    assert!(q["rows"][0][0].as_i64().unwrap() > 0, "{q:#}");
    // A column in neither: the error names the grant the query ran under and how to choose another.
    let e = err(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT email FROM sales.customers", "purpose": "churn_analysis"}),
    )
    .await);
    assert!(
        e.contains(wide_id) && e.contains("grant_id") && e.contains("sales.customers.segment"),
        "{e}"
    );
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
    // list_tables reuses the caller's grant list between calls; the new grant still shows at once.
    let list = ok(&call(&analyst, "list_tables", json!({"filter": "customers"})).await);
    assert_eq!(
        list["tables"][0]["grant_ids"].as_array().unwrap().len(),
        3,
        "{list:#}"
    );
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

/// A row quota bounds the rows every query under the grant returns together: each query is capped at what is
/// left (reserved before it runs, so concurrent queries share it), a failed query gives its reservation back,
/// and once the rows are used the grant refuses further queries. Checked against the rows the table holds.
#[tokio::test]
async fn a_row_quota_bounds_the_rows_all_queries_return_together() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    let owner = lake.connect("sales-owner", &[]).await;
    let asked = request(
        &analyst,
        json!({"tables": ["sales.orders"], "purpose": "pricing_research"}),
    )
    .await;
    ok(&call(
        &owner,
        "decide_request",
        json!({"request_id": asked["request_id"], "approve": true, "reason": "five rows", "max_rows": 5}),
    )
    .await);
    let grant = ok(&call(
        &analyst,
        "access_status",
        json!({"request_id": asked["request_id"]}),
    )
    .await)["grant_id"]
        .clone();
    let usage = |analyst: &rmcp::Peer<rmcp::RoleClient>| {
        let (analyst, grant) = (analyst.clone(), grant.clone());
        async move {
            let mine = ok(&call(&analyst, "my_grants", json!({})).await);
            mine["grants"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["grant_id"] == grant)
                .unwrap()["usage"]
                .clone()
        }
    };
    // The table holds far more than five rows.
    let all = ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*) AS n FROM sales.orders", "grant_id": grant}),
    )
    .await);
    assert!(all["rows"][0][0].as_i64().unwrap() > 100, "{all}");
    assert_eq!(usage(&analyst).await["rows"], 1);
    // A query that fails returns no rows and keeps none of the quota.
    let e = err(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT CAST(customer_id AS INT) / 0 FROM sales.orders", "grant_id": grant, "max_rows": 1000}),
    )
    .await);
    assert!(e.to_lowercase().contains("zero"), "{e}");
    assert_eq!(usage(&analyst).await["rows"], 1);
    let one = ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT order_id FROM sales.orders ORDER BY order_id", "grant_id": grant, "max_rows": 2}),
    )
    .await);
    assert_eq!(one["rows"].as_array().unwrap().len(), 2);
    // Four rows were left: the caller's own max_rows cut this result, not the quota.
    assert_eq!(one["truncated_by"], "max_rows", "{one}");
    // Asking for a thousand rows returns what is left of the quota, saying why.
    let sql =
        json!({"sql": "SELECT order_id FROM sales.orders", "grant_id": grant, "max_rows": 1000});
    let together =
        futures::future::join_all((0..4).map(|_| call(&analyst, "query", sql.clone()))).await;
    let mut returned = 0;
    for r in &together {
        if r.is_error != Some(true) {
            let r = ok(r);
            returned += r["rows"].as_array().unwrap().len();
            assert!(
                r["truncated_by"].as_str().unwrap().contains("row quota"),
                "{r}"
            );
        }
    }
    assert_eq!(
        returned, 2,
        "concurrent queries together return only what was left"
    );
    assert_eq!(usage(&analyst).await["rows"], 5);
    let e = err(&call(&analyst, "query", sql.clone()).await);
    assert!(e.contains("quota exceeded") && e.contains("rows"), "{e}");
    analyst.cancel().await.unwrap();
    owner.cancel().await.unwrap();
}

/// `year_only` keeps the year of a date or a timestamp; an approver who puts it on any other column is told to
/// use another mask, and nothing is offered (an outside test found the value quoted in every query's error).
#[tokio::test]
async fn year_only_is_offered_only_on_dates_and_timestamps() {
    let lake = Lake::new();
    let agent = lake.connect("marketing-agent", &[]).await;
    let owner = lake.connect("sales-owner", &[]).await;
    let asked = request(
        &agent,
        json!({"tables": ["sales.customers"], "purpose": "revenue_reporting",
               "columns": ["customer_id", "country", "signup_at"]}),
    )
    .await;
    assert_eq!(asked["status"], "pending", "{asked}");
    let decide = |masks: Value| json!({"request_id": asked["request_id"], "approve": true, "reason": "masked", "masks": masks});
    let e = err(&call(
        &owner,
        "decide_request",
        decide(json!({"country": "year_only"})),
    )
    .await);
    assert!(
        e.contains("year_only") && e.contains("country") && e.contains("redact"),
        "{e}"
    );
    let offered = ok(&call(
        &owner,
        "decide_request",
        decide(json!({"signup_at": "year_only"})),
    )
    .await);
    assert_eq!(offered["state"], "offered", "{offered}");
    agent.cancel().await.unwrap();
    owner.cancel().await.unwrap();
}

#[tokio::test]
async fn quotas_and_expiry_set_by_the_approver_are_enforced() {
    let lake = Lake::new();
    // The analyst's server reads its clock from this file, so the test moves time past the term instead of
    // waiting for it.
    let clock = lake.path().join("clock-offset");
    let analyst = lake
        .connect("analyst", &[("PARLEY_CLOCK_FILE", clock.to_str().unwrap())])
        .await;
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
    let ends = chrono::Utc::now() + chrono::Duration::hours(1);
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
    // A minute before the end of the term the grant still works; a second after it, it does not.
    std::fs::write(&clock, "3540").unwrap();
    ok(&call(&analyst, "query", sql(&expiry_grant)).await);
    std::fs::write(&clock, "3601").unwrap();
    let e = err(&call(&analyst, "query", sql(&expiry_grant)).await);
    assert!(e.contains("expired"), "{e}");
    let mine = ok(&call(&analyst, "my_grants", json!({})).await);
    let g = mine["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["grant_id"] == expiry_grant)
        .unwrap()
        .clone();
    assert_eq!(g["live"], false, "{g:#}");
    analyst.cancel().await.unwrap();
    owner.cancel().await.unwrap();
}

/// A person behind an MCP client that supports form elicitation: answers every question — acknowledge usage
/// terms, approve a request — with `accept`, and remembers what it was asked.
#[derive(Clone)]
struct Person {
    accept: bool,
    protocol: ProtocolVersion,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Person {
    fn new(accept: bool, protocol: ProtocolVersion) -> Person {
        Person {
            accept,
            protocol,
            asked: Default::default(),
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    /// Serves this person's client against `parley serve` on `lake` as `principal`: pinned to its protocol
    /// (2025 protocols through `initialize`; 2026-07-28 through `server/discover`, which has no handshake).
    async fn connect(
        &self,
        lake: &Lake,
        principal: &str,
        env: &[(&str, &str)],
    ) -> rmcp::service::RunningService<rmcp::RoleClient, Person> {
        use rmcp::ServiceExt;
        use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
        let mut cmd = lake.command();
        cmd.args(["serve", "--principal", principal]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
        let client = if self.protocol.has_initialize() {
            self.clone().serve(transport).await.unwrap()
        } else {
            self.clone()
                .serve_with_lifecycle(
                    transport,
                    ClientLifecycleMode::Discover {
                        preferred_versions: vec![self.protocol.clone()],
                    },
                )
                .await
                .unwrap()
        };
        assert_eq!(client.peer_info().unwrap().protocol_version, self.protocol);
        client
    }
}

impl rmcp::ClientHandler for Person {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut caps = rmcp::model::ClientCapabilities::default();
        caps.elicitation = Some(
            rmcp::model::ElicitationCapability::new()
                .with_form(rmcp::model::FormElicitationCapability::new()),
        );
        rmcp::model::ClientConfig::new(caps, rmcp::model::Implementation::new("person", "1"))
            .with_protocol_version(self.protocol.clone())
    }

    async fn create_elicitation(
        &self,
        request: rmcp::model::ElicitRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        let rmcp::model::ElicitRequestParams::FormElicitationParams {
            message,
            requested_schema,
            ..
        } = &request
        else {
            panic!("a form, not a URL")
        };
        self.asked.lock().unwrap().push(message.clone());
        let content = if requested_schema.properties.contains_key("approve") {
            json!({"approve": self.accept, "reason": "my own team's request"})
        } else {
            json!({"accept": self.accept})
        };
        Ok(
            rmcp::model::ElicitResult::new(rmcp::model::ElicitationAction::Accept)
                .with_content(content),
        )
    }
}

/// A `tools/call` through the client's high-level `call_tool`, which answers 2026-07-28 input-required rounds
/// through the client's handler and retries.
async fn call_driven<S: rmcp::Service<rmcp::RoleClient>>(
    client: &rmcp::service::RunningService<rmcp::RoleClient, S>,
    tool: &str,
    args: Value,
) -> rmcp::model::CallToolResult {
    client
        .call_tool(
            CallToolRequestParams::new(tool.to_string())
                .with_arguments(args.as_object().cloned().unwrap()),
        )
        .await
        .unwrap_or_else(|e| panic!("{tool} failed at the protocol level: {e}"))
}

#[tokio::test]
async fn a_person_acknowledges_usage_terms_through_elicitation() {
    let lake = Lake::new();
    for accept in [true, false] {
        let person = Person::new(accept, ProtocolVersion::V_2025_06_18);
        let client = person.connect(&lake, "analyst", &[]).await;
        let r = request(
            &client,
            json!({"tables": ["sales.orders"], "purpose": "revenue_reporting"}),
        )
        .await;
        let asked = person.asked();
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

/// Issue 4, elicitation on protocol 2026-07-28 (SEP-2322): `request_access` answers with an input-required
/// result asking for the acknowledgement; the retry with the answer and the echoed `requestState` completes it,
/// and a forged, altered or replayed `requestState` is a tool error.
#[tokio::test]
async fn usage_terms_are_acknowledged_through_an_input_required_result_on_2026_07_28() {
    let lake = Lake::new();
    let person = Person::new(true, ProtocolVersion::V_2026_07_28);
    let client = person.connect(&lake, "analyst", &[]).await;
    let args = json!({"tables": ["sales.orders"], "purpose": "revenue_reporting"});
    let params = |args: &Value| {
        CallToolRequestParams::new("request_access")
            .with_arguments(args.as_object().cloned().unwrap())
    };

    // Round one: the question, not a result.
    let CallToolResponse::InputRequired(question) =
        client.call_tool_once(params(&args)).await.unwrap()
    else {
        panic!("an input-required result")
    };
    let requests = question.input_requests.as_ref().expect("input requests");
    let Some(InputRequest::Elicitation(elicit)) = requests.get("acknowledge") else {
        panic!("an elicitation keyed acknowledge: {requests:?}")
    };
    let ElicitRequestParams::FormElicitationParams {
        message,
        requested_schema,
        ..
    } = &elicit.params
    else {
        panic!("a form")
    };
    assert!(
        message.contains("usage:") && message.contains("revenue_reporting"),
        "{message}"
    );
    assert!(requested_schema.properties.contains_key("accept"));
    let state = question.request_state.clone().expect("a requestState");
    assert!(
        person.asked().is_empty(),
        "call_tool_once answers nothing itself"
    );

    let yes = || {
        let mut r = InputResponses::new();
        r.insert(
            "acknowledge".to_string(),
            json!({"action": "accept", "content": {"accept": true}}),
        );
        r
    };
    let complete = |r: CallToolResponse| match r {
        CallToolResponse::Complete(r) => r,
        other => panic!("a complete result, got {other:?}"),
    };
    // A forged state, a state moved to other arguments: refused, nothing granted.
    let mut forged = state.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    for (args, state) in [
        (&args, forged.as_str()),
        (&args, "v1.acknowledge.req-00000000.00"),
        (
            &json!({"tables": ["sales.orders"], "purpose": "demand_forecasting"}),
            state.as_str(),
        ),
    ] {
        let r = complete(
            client
                .call_tool_once(
                    params(args)
                        .with_input_responses(yes())
                        .with_request_state(state),
                )
                .await
                .unwrap(),
        );
        let e = err(&r);
        assert!(
            e.contains("requestState") && e.contains("request_access again"),
            "{e}"
        );
    }
    // Answers without the state they answer.
    let e = err(&complete(
        client
            .call_tool_once(params(&args).with_input_responses(yes()))
            .await
            .unwrap(),
    ));
    assert!(e.contains("without requestState"), "{e}");
    // The retry with the answer: granted.
    let r = complete(
        client
            .call_tool_once(
                params(&args)
                    .with_input_responses(yes())
                    .with_request_state(state.clone()),
            )
            .await
            .unwrap(),
    );
    let granted = ok(&r);
    assert_eq!(granted["status"], "granted", "{granted:#}");
    assert_eq!(granted["state"], "finalized");
    let grant = granted["grant_id"].as_str().unwrap().to_string();
    let request_id = granted["request_id"].as_str().unwrap().to_string();
    assert!(
        state.contains(&request_id),
        "the state is a handle on the request"
    );
    // Replaying the answered round grants nothing more.
    let e = err(&complete(
        client
            .call_tool_once(
                params(&args)
                    .with_input_responses(yes())
                    .with_request_state(state),
            )
            .await
            .unwrap(),
    ));
    assert!(e.contains("no longer waits"), "{e}");
    let q = ok(&call_driven(
        &client,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.orders", "grant_id": grant}),
    )
    .await);
    assert_eq!(q["rows"][0][0], 120_000);
    let mine = ok(&call_driven(&client, "my_grants", json!({})).await);
    assert_eq!(mine["grants"].as_array().unwrap().len(), 1, "{mine:#}");
    let history =
        ok(&call_driven(&client, "access_status", json!({"request_id": request_id})).await);
    assert!(
        history["history"]
            .to_string()
            .contains("the user acknowledged the usage terms"),
        "{history:#}"
    );
    client.cancel().await.unwrap();

    // The high-level call_tool answers the round through the client's handler; declining ends the negotiation.
    let person = Person::new(false, ProtocolVersion::V_2026_07_28);
    let client = person.connect(&lake, "analyst", &[]).await;
    let declined = ok(&call_driven(&client, "request_access", args.clone()).await);
    assert_eq!(declined["status"], "declined", "{declined:#}");
    assert_eq!(declined["state"], "terminated");
    assert_eq!(person.asked().len(), 1);
    client.cancel().await.unwrap();

    // Every round is audited with the request id.
    let rounds: Vec<Value> = lake
        .audit()
        .into_iter()
        .filter(|r| r["tool"] == "request_access")
        .collect();
    assert_eq!(rounds.len(), 9, "{rounds:#?}");
    assert!(
        rounds[0]["reason"]
            .as_str()
            .unwrap()
            .contains("asked for it (input required)"),
        "{rounds:#?}"
    );
    assert!(
        rounds
            .iter()
            .filter(|r| r["decision"] == "error")
            .all(|r| r["error"].as_str().unwrap().contains("requestState")
                || r["error"].as_str().unwrap().contains("no longer waits")),
        "{rounds:#?}"
    );
    assert_eq!(
        rounds.iter().filter(|r| r["decision"] == "error").count(),
        5,
        "three refused states, answers without state, one replay: {rounds:#?}"
    );
}

/// Issue 4, approving a request when the caller is also an approver: the person is asked at once, by either
/// elicitation mechanism; approving is a decision audited as theirs, declining leaves the request pending.
#[tokio::test]
async fn an_approver_approves_their_own_pending_request_when_asked() {
    let lake = Lake::new();
    // sales-owner is the approver of sales.orders; pricing_research is not an allowed purpose → pending.
    let ask = json!({"tables": ["sales.orders"], "purpose": "pricing_research", "justification": "Q4 prices"});
    for protocol in [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2026_07_28] {
        let person = Person::new(true, protocol.clone());
        let owner = person.connect(&lake, "sales-owner", &[]).await;
        let r = ok(&call_driven(&owner, "request_access", ask.clone()).await);
        let asked = person.asked();
        assert_eq!(asked.len(), 1, "{protocol}: asked once: {asked:?}");
        assert!(
            asked[0].contains("You are an approver of sales.orders")
                && asked[0].contains("Q4 prices"),
            "{}",
            asked[0]
        );
        assert_eq!(r["status"], "granted", "{protocol}: {r:#}");
        assert_eq!(r["approvers"], json!(["sales-owner"]));
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("my own team's request"),
            "{r:#}"
        );
        let grant = r["grant_id"].as_str().unwrap();
        let q = ok(&call_driven(
            &owner,
            "query",
            json!({"sql": "SELECT count(*) FROM sales.orders", "grant_id": grant}),
        )
        .await);
        assert_eq!(q["rows"][0][0], 120_000);
        let status = ok(&call_driven(
            &owner,
            "access_status",
            json!({"request_id": r["request_id"]}),
        )
        .await);
        assert_eq!(status["state"], "finalized");
        assert!(
            status["history"]
                .to_string()
                .contains("approved when asked through elicitation"),
            "{status:#}"
        );
        owner.cancel().await.unwrap();

        // Declining leaves it pending, to be decided later with decide_request.
        let person = Person::new(false, protocol.clone());
        let owner = person.connect(&lake, "sales-owner", &[]).await;
        let r = ok(&call_driven(&owner, "request_access", ask.clone()).await);
        assert_eq!(person.asked().len(), 1);
        assert_eq!(r["status"], "pending", "{protocol}: {r:#}");
        assert!(
            r["reason"].as_str().unwrap().contains("decide_request"),
            "{r:#}"
        );
        ok(&call_driven(
            &owner,
            "decide_request",
            json!({"request_id": r["request_id"], "approve": true, "reason": "after all"}),
        )
        .await);
        owner.cancel().await.unwrap();
    }
    // Someone who is not an approver is not asked; a client without elicitation is not asked.
    let person = Person::new(true, ProtocolVersion::V_2025_06_18);
    let analyst = person.connect(&lake, "analyst", &[]).await;
    let r = ok(&call_driven(&analyst, "request_access", ask.clone()).await);
    assert_eq!(r["status"], "pending");
    assert!(person.asked().is_empty());
    analyst.cancel().await.unwrap();
    let plain = lake.connect("sales-owner", &[]).await;
    let r = request(&plain, ask.clone()).await;
    assert_eq!(r["status"], "pending");
    plain.cancel().await.unwrap();

    // The elicited approvals are audited as decide_request decisions by sales-owner, with the policy that allowed
    // them.
    let audit = lake.audit();
    let approvals: Vec<&Value> = audit
        .iter()
        .filter(|r| {
            r["tool"] == "request_access"
                && r["reason"]
                    .as_str()
                    .unwrap()
                    .contains("approved by sales-owner when asked through elicitation")
        })
        .collect();
    assert_eq!(approvals.len(), 2, "{audit:#?}");
    for a in approvals {
        assert_eq!(a["principal"], "sales-owner");
        assert_eq!(a["action"], "decide_request");
        assert!(
            a["policy_ids"]
                .to_string()
                .contains("owners-own-their-tables"),
            "{a:#}"
        );
    }
}

/// Separation of duties (`negotiation.self_approval = forbidden`): an approver is neither asked nor allowed to
/// decide their own request, and does not see it for review.
#[tokio::test]
async fn separation_of_duties_forbids_deciding_ones_own_request() {
    let lake = Lake::new();
    let env = [("PARLEY_SELF_APPROVAL", "forbidden")];
    let person = Person::new(true, ProtocolVersion::V_2025_06_18);
    let owner = person.connect(&lake, "sales-owner", &env).await;
    let r = ok(&call_driven(
        &owner,
        "request_access",
        json!({"tables": ["sales.orders"], "purpose": "pricing_research"}),
    )
    .await);
    assert_eq!(r["status"], "pending", "{r:#}");
    assert!(person.asked().is_empty());
    let e = err(&call_driven(
        &owner,
        "decide_request",
        json!({"request_id": r["request_id"], "approve": true, "reason": "mine"}),
    )
    .await);
    assert!(e.contains("separation of duties"), "{e}");
    let review = ok(&call_driven(&owner, "review_requests", json!({})).await);
    assert_eq!(review["requests"], json!([]), "{review:#}");
    owner.cancel().await.unwrap();
}

/// Issue 11: concurrent accepts of one offer make one grant; the others are told the offer was answered.
#[tokio::test]
async fn concurrent_accepts_of_one_offer_make_one_grant() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    let other = lake.connect("analyst", &[]).await;
    for round in 0..6 {
        let offer = request(
            &analyst,
            json!({"tables": ["sales.customers"], "purpose": "churn_analysis", "duration_days": 30}),
        )
        .await;
        assert_eq!(offer["status"], "counter_offer", "{offer:#}");
        let args = json!({"request_id": offer["request_id"], "terms_hash": offer["terms_hash"]});
        let (a, b, c) = tokio::join!(
            call(&analyst, "accept_offer", args.clone()),
            call(&other, "accept_offer", args.clone()),
            call(&analyst, "accept_offer", args.clone()),
        );
        let granted: Vec<Value> = [a, b, c]
            .iter()
            .filter(|r| r.is_error != Some(true))
            .map(ok)
            .collect();
        assert_eq!(granted.len(), 1, "round {round}: {granted:?}");
        let grants = ok(&call(&analyst, "my_grants", json!({})).await);
        let for_request = grants["grants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["request_id"] == offer["request_id"])
            .count();
        assert_eq!(for_request, 1, "round {round}: {grants:#}");
    }
    analyst.cancel().await.unwrap();
    other.cancel().await.unwrap();
}

/// Issue 11: a grant never outranks a policy forbid. The demo forbids marketing personal data in clear, so
/// `request_access` offers `sales.customers` with every personal-data column masked and a query under it works;
/// once the policy forbids marketing the table outright, the live grant no longer lets a query through, and
/// `request_access` denies with the policy's reason instead of offering terms no query could use.
#[tokio::test]
async fn a_grant_never_outranks_a_policy_forbid() {
    let lake = Lake::new();
    let marketing = lake.connect("marketing-agent", &[]).await;
    let offer = request(
        &marketing,
        json!({"tables": ["sales.customers"], "purpose": "churn_analysis", "duration_days": 7}),
    )
    .await;
    assert_eq!(offer["status"], "counter_offer", "{offer:#}");
    for pii in ["email", "full_name", "phone", "birth_date"] {
        assert!(
            offer["terms"]["masks"][format!("sales.customers.{pii}")].is_string(),
            "{pii} masked: {offer:#}"
        );
    }
    let accepted = ok(&call(
        &marketing,
        "accept_offer",
        json!({"request_id": offer["request_id"], "terms_hash": offer["terms_hash"]}),
    )
    .await);
    let grant = accepted["grant_id"].as_str().unwrap().to_string();
    let sql =
        json!({"sql": "SELECT email, country FROM sales.customers LIMIT 3", "grant_id": grant});
    let rows = ok(&call(&marketing, "query", sql.clone()).await);
    for row in rows["rows"].as_array().unwrap() {
        assert!(is_hex64(&row[0]), "email hashed: {row:?}");
    }
    // Without the grant the forbid decides, as before.
    let e = err(&call(
        &marketing,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.customers"}),
    )
    .await);
    assert!(e.contains("no-pii-for-marketing"), "{e}");

    let policy = lake.path().join("policy/policy.cedar");
    let original = std::fs::read_to_string(&policy).unwrap();
    let forbid = "\n@id(\"no-customers-for-marketing\")\nforbid(principal in Parley::Group::\"marketing\", \
                  action == Parley::Action::\"query\", resource == Parley::Table::\"sales.customers\");\n";
    std::fs::write(&policy, format!("{original}{forbid}")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let e = loop {
        let r = call(&marketing, "query", sql.clone()).await;
        if r.is_error == Some(true) {
            break err(&r);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the policy edit was not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(e.contains("no-customers-for-marketing"), "{e}");
    let denied = request(
        &marketing,
        json!({"tables": ["sales.customers"], "purpose": "churn_analysis", "duration_days": 7}),
    )
    .await;
    assert_eq!(denied["status"], "denied", "{denied:#}");
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("no-customers-for-marketing"),
        "{denied:#}"
    );
    marketing.cancel().await.unwrap();
    let audit = lake.audit();
    let last_query = audit.iter().rev().find(|r| r["tool"] == "query").unwrap();
    assert!(
        last_query["policy_ids"]
            .as_array()
            .unwrap()
            .contains(&json!("no-customers-for-marketing")),
        "{last_query:#}"
    );
}

/// Issue 11: an owner approves with narrower terms — fewer columns, a mask, a row filter, a shorter term — and
/// the requester gets a counter-offer to accept by its hash; the grant then shows exactly those terms, checked
/// against the same table read without the grant. Widening is refused.
#[tokio::test]
async fn owners_narrow_terms_into_a_counter_offer() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    let owner = lake.connect("sales-owner", &[]).await;
    let p = request(
        &analyst,
        json!({"tables": ["sales.orders"], "purpose": "pricing_research", "duration_days": 30}),
    )
    .await;
    assert_eq!(p["status"], "pending", "{p:#}");
    let id = p["request_id"].as_str().unwrap().to_string();
    let decide = |extra: Value| {
        let mut args =
            json!({"request_id": id, "approve": true, "reason": "pricing needs no customers"});
        args.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        call(&owner, "decide_request", args)
    };
    // Widening is refused, and refusal changes nothing.
    for (extra, expected) in [
        (
            json!({"columns": ["order_id", "no_such_column"]}),
            "not among the proposed",
        ),
        (
            json!({"masks": {"phone": "hash"}}),
            "not among the proposed",
        ),
        (
            json!({"columns": ["order_id"], "masks": {"channel": "hash"}}),
            "not among the proposed",
        ),
        (
            json!({"row_filter": {"column": "customer_id", "values": []}}),
            "at least one value",
        ),
        (
            json!({"row_filter": {"column": "nope", "values": ["x"]}}),
            "not a column",
        ),
    ] {
        let e = err(&decide(extra.clone()).await);
        assert!(e.contains(expected), "{extra}: {e}");
    }
    let r = ok(&decide(json!({
        "columns": ["order_id", "status", "channel", "total_amount"],
        "masks": {"channel": "redact"},
        "row_filter": {"column": "status", "values": ["shipped"]},
        "max_queries": 5,
    }))
    .await);
    assert_eq!(r["state"], "offered", "{r:#}");
    assert!(r.get("grant_id").is_none_or(Value::is_null), "{r:#}");
    // Decided once: a second decision finds it no longer pending.
    let e = err(&decide(json!({"columns": ["order_id"]})).await);
    assert!(e.contains("not pending"), "{e}");

    let status = ok(&call(&analyst, "access_status", json!({"request_id": id})).await);
    assert_eq!(status["state"], "offered");
    let terms = &status["outcome"]["terms"];
    assert_eq!(
        terms["dropped"].as_array().unwrap().len(),
        6,
        "the other columns are recorded as dropped: {terms:#}"
    );
    let accepted = ok(&call(
        &analyst,
        "accept_offer",
        json!({"request_id": id, "terms_hash": status["terms_hash"]}),
    )
    .await);
    let grant = accepted["grant_id"].as_str().unwrap().to_string();
    // The owner who offered the terms is the grant's approver.
    let mine = ok(&call(&analyst, "my_grants", json!({})).await);
    let listed = mine["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["grant_id"] == grant.as_str())
        .unwrap_or_else(|| panic!("grant {grant} listed: {mine:#}"));
    assert_eq!(listed["approvers"], json!(["sales-owner"]), "{listed:#}");
    let under = ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT * FROM sales.orders ORDER BY order_id LIMIT 3", "grant_id": grant}),
    )
    .await);
    let columns: Vec<&str> = under["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["order_id", "status", "channel", "total_amount"]);
    for row in under["rows"].as_array().unwrap() {
        assert_eq!(row[1], "shipped", "{row:?}");
        assert_eq!(row[2], "REDACTED", "{row:?}");
    }
    // Ground truth: the analyst may read orders without a grant (no personal data).
    let truth = ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*), sum(total_amount) FROM sales.orders WHERE status = 'shipped'"}),
    )
    .await);
    let counted = ok(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT count(*), sum(total_amount) FROM sales.orders", "grant_id": grant}),
    )
    .await);
    assert_eq!(counted["rows"], truth["rows"]);
    let e = err(&call(
        &analyst,
        "query",
        json!({"sql": "SELECT customer_id FROM sales.orders", "grant_id": grant}),
    )
    .await);
    assert!(e.contains("customer_id"), "{e}");
    analyst.cancel().await.unwrap();
    owner.cancel().await.unwrap();
}

/// An approver's changed terms are checked against the policy as it applies to the requester, who will query
/// under them — not as it applies to the approver.
#[tokio::test]
async fn an_approvers_counter_offer_is_checked_for_the_requester() {
    let lake = Lake::new();
    let policy = lake.path().join("policy/policy.cedar");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str(
        "\n@id(\"analyst-no-row-filtered-grants\")\nforbid (principal == Parley::User::\"analyst\", action == \
         Parley::Action::\"query\", resource is Parley::Table)\nwhen { context has grant && context.grant.row_filter };\n",
    );
    std::fs::write(&policy, text).unwrap();
    let analyst = lake.connect("analyst", &[]).await;
    let owner = lake.connect("sales-owner", &[]).await;
    let p = request(
        &analyst,
        json!({"tables": ["sales.orders"], "purpose": "pricing_research"}),
    )
    .await;
    assert_eq!(p["status"], "pending", "{p:#}");
    // Fine for the approver (who owns the table), but the requester could never query under a row filter.
    let e = err(&call(
        &owner,
        "decide_request",
        json!({"request_id": p["request_id"], "approve": true, "reason": "EUR only",
               "row_filter": {"column": "currency", "values": ["EUR"]}}),
    )
    .await);
    assert!(
        e.contains("would not let the requester query")
            && e.contains("analyst-no-row-filtered-grants"),
        "{e}"
    );
    // Narrowed in a way the requester's policy allows, it becomes a counter-offer.
    let r = ok(&call(
        &owner,
        "decide_request",
        json!({"request_id": p["request_id"], "approve": true, "reason": "no gifts flag",
               "columns": ["order_id", "order_date", "total_amount"]}),
    )
    .await);
    assert!(r.to_string().contains("counter"), "{r}");
    analyst.cancel().await.unwrap();
    owner.cancel().await.unwrap();
}

/// An automatic offer is made again when it is taken up (an outside test redeemed old ones after the contract
/// changed): a grant waiting for the person's acknowledgement, and an automatic counter-offer, whose purpose the
/// owner has since prohibited are withdrawn, not granted; an offer the change does not touch still is. An offer
/// waiting for an acknowledgement is not the agent's to accept, and can be declined.
#[tokio::test]
async fn an_automatic_offer_is_made_again_when_it_is_taken_up() {
    let lake = Lake::new();
    let person = Person::new(true, ProtocolVersion::V_2026_07_28);
    let asking = person.connect(&lake, "analyst", &[]).await;
    let analyst = lake.connect("analyst", &[]).await;
    let params = |args: &Value| {
        CallToolRequestParams::new("request_access")
            .with_arguments(args.as_object().cloned().unwrap())
    };
    let complete = |r: CallToolResponse| match r {
        CallToolResponse::Complete(r) => r,
        other => panic!("a complete result, got {other:?}"),
    };
    let yes = || {
        let mut r = InputResponses::new();
        r.insert(
            "acknowledge".to_string(),
            json!({"action": "accept", "content": {"accept": true}}),
        );
        r
    };
    // Round one of two acknowledgements: one whose purpose will be prohibited, one whose will not.
    let mut states = Vec::new();
    let revenue = json!({"tables": ["sales.orders"], "purpose": "revenue_reporting"});
    let forecasting = json!({"tables": ["sales.orders"], "purpose": "demand_forecasting"});
    for args in [&revenue, &forecasting] {
        let CallToolResponse::InputRequired(question) =
            asking.call_tool_once(params(args)).await.unwrap()
        else {
            panic!("an input-required result")
        };
        states.push(question.request_state.clone().expect("a requestState"));
    }
    // An automatic counter-offer (personal data masked).
    let offer = request(
        &analyst,
        json!({"tables": ["sales.customers"], "purpose": "churn_analysis"}),
    )
    .await;
    assert_eq!(offer["status"], "counter_offer", "{offer:#}");
    let offered = offer["request_id"].as_str().unwrap().to_string();

    // The owner prohibits revenue reporting on orders and churn analysis on customers.
    for (file, from, to) in [
        (
            "orders",
            "value: [resale]",
            "value: [resale, revenue_reporting]",
        ),
        (
            "customers",
            "value: [marketing_outreach, resale, re_identification]",
            "value: [marketing_outreach, resale, re_identification, churn_analysis]",
        ),
    ] {
        let path = lake.path().join(format!("contracts/sales/{file}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let changed = text.replacen(from, to, 1);
        assert_ne!(changed, text, "{file}");
        std::fs::write(&path, changed).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while request(&analyst, revenue.clone()).await["status"] != "denied" {
        assert!(
            std::time::Instant::now() < deadline,
            "the changed contract was not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Acknowledged now: the prohibited one is withdrawn, the other granted.
    let retry = |args: &Value, state: &str| {
        params(args)
            .with_input_responses(yes())
            .with_request_state(state.to_string())
    };
    let e = err(&complete(
        asking
            .call_tool_once(retry(&revenue, &states[0]))
            .await
            .unwrap(),
    ));
    assert!(
        e.contains("no longer holds") && e.contains("denied") && e.contains("request_access again"),
        "{e}"
    );
    let granted = ok(&complete(
        asking
            .call_tool_once(retry(&forecasting, &states[1]))
            .await
            .unwrap(),
    ));
    assert_eq!(granted["status"], "granted", "{granted:#}");
    // Accepting the counter-offer now: withdrawn too.
    let e = err(&call(
        &analyst,
        "accept_offer",
        json!({"request_id": offered, "terms_hash": offer["terms_hash"]}),
    )
    .await);
    assert!(e.contains("no longer holds") && e.contains("denied"), "{e}");
    let status = ok(&call(&analyst, "access_status", json!({"request_id": offered})).await);
    assert_eq!(status["state"], "terminated", "{status:#}");
    // The forecasting grant is in force; the withdrawn requests have none (the polls above, by a client that
    // cannot be asked, were granted outright until the reload).
    let mine = ok(&call(&analyst, "my_grants", json!({})).await);
    let grants = mine["grants"].as_array().unwrap();
    assert!(
        grants.iter().any(|g| g["grant_id"] == granted["grant_id"]),
        "{mine:#}"
    );
    let withdrawn_request = states[0].split('.').nth(2).unwrap();
    assert!(
        grants
            .iter()
            .all(|g| g["request_id"] != withdrawn_request && g["request_id"] != offered.as_str()),
        "{mine:#}"
    );

    // An acknowledgement offer: no terms_hash to accept, accept_offer says whose it is, decline_offer ends it.
    let CallToolResponse::InputRequired(question) =
        asking.call_tool_once(params(&forecasting)).await.unwrap()
    else {
        panic!("an input-required result")
    };
    let state = question.request_state.clone().unwrap();
    let pending = ok(&call(
        &analyst,
        "access_status",
        json!({"request_id": state.split('.').nth(2).unwrap()}),
    )
    .await);
    assert_eq!(pending["state"], "offered", "{pending:#}");
    assert!(pending.get("terms_hash").is_none(), "{pending:#}");
    let id = pending["request_id"].clone();
    let e = err(&call(
        &analyst,
        "accept_offer",
        json!({"request_id": id, "terms_hash": "00"}),
    )
    .await);
    assert!(
        e.contains("acknowledge") && e.contains("decline_offer"),
        "{e}"
    );
    ok(&call(&analyst, "decline_offer", json!({"request_id": id})).await);
    let e = err(&complete(
        asking
            .call_tool_once(retry(&forecasting, &state))
            .await
            .unwrap(),
    ));
    assert!(e.contains("no longer waits"), "{e}");

    let withdrawn = lake
        .audit()
        .into_iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no longer held"))
        })
        .count();
    assert_eq!(withdrawn, 2, "both withdrawals audited");
    asking.cancel().await.unwrap();
    analyst.cancel().await.unwrap();
}

/// A question the client leaves unanswered (protocol 2025-06-18, `elicitation/create`) no longer strands its
/// request, unaudited, as an offer nobody can end (an outside test): a call the client cancels while it waits
/// ends, audited with the request it stored, which is terminated; a client that answers the question with an
/// error has the request terminated and is told so, not that the server failed; a client that goes away while
/// asked leaves a record too. (An acknowledgement offer left by a client that never retries can be declined: the
/// test above.)
#[tokio::test]
async fn a_question_left_unanswered_ends_its_request_and_is_audited() {
    let lake = Lake::new();
    let mut server = lake.spawn_raw("analyst", &[]);
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {"elicitation": {"form": {}}},
        "clientInfo": {"name": "raw", "version": "1"}}});
    assert!(server.call(&init).await.unwrap().get("result").is_some());
    server
        .call(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    let ask = |id: u64, purpose: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "request_access",
               "arguments": {"tables": ["sales.orders"], "purpose": purpose}}})
    };
    /// The next message that is the server's question, or the answer to request `id`.
    async fn next(server: &mut crate::util::RawServer, id: Option<u64>) -> Value {
        loop {
            let m = server.reply().await;
            match id {
                None if m["method"] == "elicitation/create" => return m,
                Some(id) if m["id"] == id && m.get("method").is_none() => return m,
                _ => {}
            }
        }
    }

    // Asked, never answered, then cancelled by the client.
    server.send(&ask(1, "revenue_reporting").to_string()).await;
    next(&mut server, None).await;
    server
        .send(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": 1, "reason": "gave up"}})
            .to_string(),
        )
        .await;

    // Asked, answered with an error: terminated, and said so.
    server.send(&ask(2, "demand_forecasting").to_string()).await;
    let q = next(&mut server, None).await;
    server
        .send(
            &json!({"jsonrpc": "2.0", "id": q["id"], "error": {"code": -32000, "message": "no UI here"}})
                .to_string(),
        )
        .await;
    let reply = next(&mut server, Some(2)).await;
    let result = &reply["result"]["structuredContent"];
    assert_eq!(result["status"], "declined", "{reply:#}");
    assert_eq!(result["state"], "terminated", "{reply:#}");
    assert!(
        result["reason"]
            .as_str()
            .unwrap()
            .contains("could not ask the user"),
        "{reply:#}"
    );

    // The cancelled call has its record, naming the request it stored. The client gets no answer to a call it
    // cancelled, so nothing orders that record before the next call's answer: it is waited for (on a loaded
    // machine the next call's answer came first).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let record = loop {
        let audit = lake.audit();
        let found = audit.iter().find(|r| {
            r["tool"] == "request_access"
                && r["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("cancelled the call"))
        });
        if let Some(record) = found {
            break record.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no record of the cancelled call within 20 s: {audit:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let reason = record["reason"].as_str().unwrap();
    assert!(reason.contains("asked for it (elicitation)"), "{record:#}");
    let request_id = reason
        .split_whitespace()
        .find(|w| w.starts_with("req-"))
        .unwrap()
        .to_string();
    // Its request ended with the call.
    let status = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "access_status",
                        "arguments": {"request_id": request_id}}});
    server.send(&status.to_string()).await;
    let s = next(&mut server, Some(3)).await;
    assert_eq!(
        s["result"]["structuredContent"]["state"], "terminated",
        "{s:#}"
    );

    // Asked, and the client goes away (stdin closed) without answering: the server ends the call, and writes its
    // record, before it exits.
    server.send(&ask(4, "churn_analysis").to_string()).await;
    next(&mut server, None).await;
    let before = lake.audit().len();
    assert!(server.close().await.success());
    let audit = lake.audit();
    let last = audit[before..]
        .iter()
        .find(|r| r["tool"] == "request_access")
        .unwrap_or_else(|| panic!("no record of the call its client left: {audit:#?}"));
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("asked for it (elicitation)") && reason.contains("terminated"),
        "{last:#}"
    );
}

/// An owner's counter-offer stands as made — unless a new request would now be denied outright: accepted after
/// the owner's contract prohibited its purpose, it is withdrawn.
#[tokio::test]
async fn a_persons_offer_is_withdrawn_when_a_new_request_would_be_denied() {
    let lake = Lake::new();
    let analyst = lake.connect("analyst", &[]).await;
    let owner = lake.connect("sales-owner", &[]).await;
    let pricing =
        json!({"tables": ["sales.orders"], "purpose": "pricing_research", "duration_days": 30});
    let mut offers = Vec::new();
    for _ in 0..2 {
        let p = request(&analyst, pricing.clone()).await;
        assert_eq!(p["status"], "pending", "{p:#}");
        let id = p["request_id"].as_str().unwrap().to_string();
        let r = ok(&call(
            &owner,
            "decide_request",
            json!({"request_id": id, "approve": true, "reason": "ok", "columns": ["order_id", "status"]}),
        )
        .await);
        assert_eq!(r["state"], "offered", "{r:#}");
        let status = ok(&call(&analyst, "access_status", json!({"request_id": id})).await);
        offers.push((id, status["terms_hash"].as_str().unwrap().to_string()));
    }
    // Before the change, the first is accepted.
    let accepted = ok(&call(
        &analyst,
        "accept_offer",
        json!({"request_id": offers[0].0, "terms_hash": offers[0].1}),
    )
    .await);
    assert!(accepted["grant_id"].is_string(), "{accepted:#}");

    let path = lake.path().join("contracts/sales/orders.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replacen("value: [resale]", "value: [resale, pricing_research]", 1);
    assert_ne!(changed, text);
    std::fs::write(&path, changed).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while request(&analyst, pricing.clone()).await["status"] != "denied" {
        assert!(
            std::time::Instant::now() < deadline,
            "the changed contract was not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let e = err(&call(
        &analyst,
        "accept_offer",
        json!({"request_id": offers[1].0, "terms_hash": offers[1].1}),
    )
    .await);
    assert!(
        e.contains("no longer holds")
            && e.contains("would now be denied")
            && e.contains("pricing_research"),
        "{e}"
    );
    let status = ok(&call(
        &analyst,
        "access_status",
        json!({"request_id": offers[1].0}),
    )
    .await);
    assert_eq!(status["state"], "terminated", "{status:#}");
    analyst.cancel().await.unwrap();
    owner.cancel().await.unwrap();
}

/// An acknowledgement is of the text shown (round u of the outside tests: an owner rewrote a contract's
/// limitations between the question and the answer, and the grant was made under text the person never saw): on
/// 2026-07-28 an acceptance of the old text is answered with the question again, in the new words, and the
/// acceptance of those grants.
#[tokio::test]
async fn an_acknowledgement_is_of_the_text_that_was_shown() {
    let lake = Lake::new();
    let person = Person::new(true, ProtocolVersion::V_2026_07_28);
    let client = person.connect(&lake, "analyst", &[]).await;
    let args = json!({"tables": ["sales.orders"], "purpose": "revenue_reporting"});
    let params = |state: Option<&str>| {
        let p = CallToolRequestParams::new("request_access")
            .with_arguments(args.as_object().cloned().unwrap());
        match state {
            None => p,
            Some(state) => {
                let mut yes = InputResponses::new();
                yes.insert(
                    "acknowledge".to_string(),
                    json!({"action": "accept", "content": {"accept": true}}),
                );
                p.with_input_responses(yes)
                    .with_request_state(state.to_string())
            }
        }
    };
    let question = |r: CallToolResponse| match r {
        CallToolResponse::InputRequired(q) => {
            let Some(InputRequest::Elicitation(e)) =
                q.input_requests.as_ref().unwrap().get("acknowledge")
            else {
                panic!("an acknowledgement")
            };
            let ElicitRequestParams::FormElicitationParams { message, .. } = &e.params else {
                panic!("a form")
            };
            (message.clone(), q.request_state.clone().unwrap())
        }
        other => panic!("a question, got {other:?}"),
    };
    let (shown, state) = question(client.call_tool_once(params(None)).await.unwrap());
    assert!(
        shown.contains("urn:parley:demo:sales:orders@1.2.0")
            && shown.contains("Not for individual-level"),
        "{shown}"
    );

    // The owner rewrites the limitations (nothing the terms hold changes).
    let path = lake.path().join("contracts/sales/orders.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replacen(
        "Not for individual-level marketing decisions.",
        "May be resold to partners.",
        1,
    );
    assert_ne!(changed, text);
    std::fs::write(&path, changed).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !crate::util::text(
        &call_driven(
            &client,
            "get_contract",
            json!({"table": "sales.orders", "full": true}),
        )
        .await,
    )
    .contains("resold to partners")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the changed contract was not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Accepting the old text: asked again, in the new words.
    let (again, state) = question(client.call_tool_once(params(Some(&state))).await.unwrap());
    assert!(
        again.contains("changed since you were asked") && again.contains("resold to partners"),
        "{again}"
    );
    assert!(
        ok(&call_driven(&client, "my_grants", json!({})).await)["grants"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Accepting the new text: granted.
    let CallToolResponse::Complete(r) = client.call_tool_once(params(Some(&state))).await.unwrap()
    else {
        panic!("a result")
    };
    assert_eq!(ok(&r)["status"], "granted", "{r:?}");
    client.cancel().await.unwrap();
}

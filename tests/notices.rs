//! Push notices (issue 4: "the requester is notified — MCP notification to a connected session"): an owner's
//! decision in one HTTP session reaches the requester's other, connected sessions at once — as a log message
//! and, for subscribers, as an update of the `request://` or `grant://` resource — on the 2025 protocols, and
//! through `subscriptions/listen` on 2026-07-28.

#![allow(deprecated)] // MCP logging and resources/subscribe: deprecated for 2026-07-28, what 2025 clients use.

use std::time::Duration;

use rmcp::model::{
    LoggingLevel, LoggingMessageNotificationParam, ProtocolVersion, ReadResourceRequestParams,
    ResourceUpdatedNotificationParam, ServerNotification, SubscribeRequestParams,
    SubscriptionFilter,
};
use rmcp::service::NotificationContext;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::http::{connect_http, dev_token, start};
use crate::util::{Lake, call, err, ok};

/// What a client heard from the server outside its own calls.
#[derive(Debug)]
enum Heard {
    Log {
        level: LoggingLevel,
        logger: Option<String>,
        data: Value,
    },
    Updated(String),
}

/// A client that reports every log message and resource update it receives.
#[derive(Clone)]
struct Ears(mpsc::UnboundedSender<Heard>);

impl ClientHandler for Ears {
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(Heard::Log {
            level: params.level,
            logger: params.logger,
            data: params.data,
        });
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(Heard::Updated(params.uri));
    }
}

fn ears() -> (Ears, mpsc::UnboundedReceiver<Heard>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Ears(tx), rx)
}

/// Waits (at most 10 s) for the first thing heard that `wanted` accepts; what comes before it is skipped.
async fn hear(
    rx: &mut mpsc::UnboundedReceiver<Heard>,
    what: &str,
    wanted: impl Fn(&Heard) -> bool,
) -> Heard {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let heard = rx.recv().await.expect("the client is still connected");
            if wanted(&heard) {
                return heard;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within 10 s"))
}

fn log_about<'a>(kind: &'a str, id: &'a str) -> impl Fn(&Heard) -> bool + 'a {
    move |h| matches!(h, Heard::Log { data, .. } if data["kind"] == kind && data.to_string().contains(id))
}

#[tokio::test]
async fn owners_decisions_reach_the_requesters_connected_sessions() {
    let lake = Lake::new();
    let (mut child, url) = start(&lake, &["--dev-issuer"]).await;
    let analyst_token = dev_token(&lake, "analyst", &["analysts"]);
    let owner_token = dev_token(&lake, "sales-owner", &["sales-owners", "analysts"]);

    // Two sessions of the requester: one asks and subscribes to its request, the other only listens.
    let (ears1, mut heard1) = ears();
    let analyst = connect_http(ears1, &url, &analyst_token).await.unwrap();
    let (ears2, mut heard2) = ears();
    let analyst_elsewhere = connect_http(ears2, &url, &analyst_token).await.unwrap();
    ok(&call(&analyst_elsewhere, "my_notices", json!({})).await);
    let p = ok(&call(
        &analyst,
        "request_access",
        json!({"tables": ["sales.orders"], "purpose": "pricing_research"}),
    )
    .await);
    assert_eq!(p["status"], "pending", "{p:#}");
    let request_id = p["request_id"].as_str().unwrap().to_string();
    let request_uri = p["resource_uri"].as_str().unwrap().to_string();
    assert_eq!(request_uri, format!("request://{request_id}"));
    analyst
        .subscribe(SubscribeRequestParams::new(request_uri.clone()))
        .await
        .unwrap();
    // A contract changes when a version is published: followed like a read of it.
    analyst
        .subscribe(SubscribeRequestParams::new("contract://sales/orders"))
        .await
        .unwrap();
    let hidden = analyst
        .subscribe(SubscribeRequestParams::new("contract://sales/nonexistent"))
        .await
        .unwrap_err();
    assert!(hidden.to_string().contains("not found"), "{hidden}");
    let e = analyst
        .subscribe(SubscribeRequestParams::new("audit://sales/orders"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("never changes"), "{e}");

    // The owner approves in their own session; both of the requester's sessions hear of it.
    let owner = connect_http((), &url, &owner_token).await.unwrap();
    let approved = ok(&call(
        &owner,
        "decide_request",
        json!({"request_id": request_id, "approve": true, "reason": "fine for Q4 pricing", "max_queries": 5}),
    )
    .await);
    let grant = approved["grant_id"].as_str().unwrap().to_string();
    for heard in [&mut heard1, &mut heard2] {
        let Heard::Log {
            level,
            logger,
            data,
        } = hear(heard, "approval notice", log_about("approved", &request_id)).await
        else {
            unreachable!()
        };
        assert_eq!(level, LoggingLevel::Notice);
        assert_eq!(logger.as_deref(), Some("parley.negotiation"));
        assert_eq!(data["request_id"], request_id.as_str());
        assert_eq!(data["grant_id"], grant.as_str());
        assert_eq!(data["actor"], "sales-owner");
        assert_eq!(data["reason"], "fine for Q4 pricing");
        assert!(
            data["message"]
                .as_str()
                .unwrap()
                .contains("pass it to query as grant_id"),
            "{data:#}"
        );
    }
    hear(
        &mut heard1,
        "request resource update",
        |h| matches!(h, Heard::Updated(uri) if *uri == request_uri),
    )
    .await;
    // The resource says what the notice said.
    let read = analyst
        .read_resource(ReadResourceRequestParams::new(request_uri.clone()))
        .await
        .unwrap();
    let rmcp::model::ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("text contents")
    };
    let status: Value = serde_json::from_str(text).unwrap();
    assert_eq!(status["state"], "finalized");
    assert_eq!(status["grant_id"], grant.as_str());
    // Another principal cannot read it.
    let e = owner
        .read_resource(ReadResourceRequestParams::new(request_uri.clone()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");

    // A revocation reaches the grant's subscribers.
    let grant_uri = format!("grant://{grant}");
    analyst
        .subscribe(SubscribeRequestParams::new(grant_uri.clone()))
        .await
        .unwrap();
    ok(&call(
        &owner,
        "revoke_grant",
        json!({"grant_id": grant, "reason": "project over"}),
    )
    .await);
    let Heard::Log { data, .. } = hear(
        &mut heard1,
        "revocation notice",
        log_about("revoked", &grant),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(data["reason"], "project over");
    hear(
        &mut heard1,
        "grant resource update",
        |h| matches!(h, Heard::Updated(uri) if *uri == grant_uri),
    )
    .await;
    hear(
        &mut heard2,
        "revocation notice",
        log_about("revoked", &grant),
    )
    .await;

    // A denial too; and the inbox still has everything.
    let p = ok(&call(
        &analyst,
        "request_access",
        json!({"tables": ["sales.orders"], "purpose": "office_gossip"}),
    )
    .await);
    let denied_id = p["request_id"].as_str().unwrap().to_string();
    ok(&call(
        &owner,
        "decide_request",
        json!({"request_id": denied_id, "approve": false, "reason": "not a business purpose"}),
    )
    .await);
    let Heard::Log { data, .. } = hear(
        &mut heard2,
        "denial notice",
        log_about("denied", &denied_id),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(data["state"], "terminated");
    let inbox = ok(&call(&analyst, "my_notices", json!({})).await).to_string();
    for why in [
        "fine for Q4 pricing",
        "project over",
        "not a business purpose",
    ] {
        assert!(inbox.contains(why), "{why} in {inbox}");
    }
    // A decided request stays decided.
    let e = err(&call(
        &owner,
        "decide_request",
        json!({"request_id": denied_id, "approve": true, "reason": "again"}),
    )
    .await);
    assert!(e.contains("not pending"), "{e}");

    analyst.cancel().await.unwrap();
    analyst_elsewhere.cancel().await.unwrap();
    owner.cancel().await.unwrap();
    child.kill().await.unwrap();
}

/// On 2026-07-28 there are no sessions and no log messages: the requester follows its request and grant with
/// `subscriptions/listen` and hears `notifications/resources/updated`.
#[tokio::test]
async fn listeners_on_2026_07_28_hear_resource_updates() {
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    let lake = Lake::new();
    let (mut child, url) = start(&lake, &["--dev-issuer"]).await;
    let analyst_token = dev_token(&lake, "analyst", &["analysts"]);
    let owner_token = dev_token(&lake, "sales-owner", &["sales-owners", "analysts"]);
    let transport = StreamableHttpClientTransport::from_config(
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            url.clone(),
        )
        .auth_header(analyst_token),
    );
    let analyst = ()
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        analyst.peer_info().unwrap().protocol_version,
        ProtocolVersion::V_2026_07_28
    );
    let p = ok(&analyst
        .call_tool(
            rmcp::model::CallToolRequestParams::new("request_access").with_arguments(
                json!({"tables": ["sales.orders"], "purpose": "pricing_research"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
        )
        .await
        .unwrap());
    let request_uri = p["resource_uri"].as_str().unwrap().to_string();
    let mut filter = SubscriptionFilter::new();
    filter.resource_subscriptions = Some(vec![
        request_uri.clone(),
        "contract://sales/orders".to_string(),
    ]);
    let mut subscription = analyst.listen(filter).await.unwrap();
    assert_eq!(
        subscription.acknowledged().resource_subscriptions,
        Some(vec![request_uri.clone()]),
        "only resources that change are followed"
    );

    let owner = connect_http((), &url, &owner_token).await.unwrap();
    ok(&call(
        &owner,
        "decide_request",
        json!({"request_id": p["request_id"], "approve": true, "reason": "ok"}),
    )
    .await);
    let notification = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("a notification within 10 s")
        .unwrap()
        .expect("the subscription is open");
    let ServerNotification::ResourceUpdatedNotification(updated) = notification else {
        panic!("a resource update, got {notification:?}")
    };
    assert_eq!(updated.params.uri, request_uri);
    subscription.cancel().await.unwrap();
    owner.cancel().await.unwrap();
    child.kill().await.unwrap();
}

//! Streamable HTTP: the same tools through rmcp's HTTP client, on the current protocol and on 2025-06-18.

use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use rmcp::transport::StreamableHttpClientTransport;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::util::{Lake, call, cpu_after_a_second, ok};

/// A bearer token from the lake's dev issuer (what `parley token` prints).
pub fn dev_token(lake: &Lake, principal: &str, groups: &[&str]) -> String {
    let issuer =
        parley::identity::DevIssuer::load_or_create(&lake.path().join("dev-issuer/ed25519.pem"))
            .unwrap();
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    issuer
        .mint(
            principal,
            &groups,
            &[],
            std::time::Duration::from_secs(600),
            "parley",
        )
        .unwrap()
}

/// Connects `handler` (rmcp's client) to `url`, sending `token` on every request.
pub async fn connect_http<H: rmcp::ClientHandler>(
    handler: H,
    url: &str,
    token: &str,
) -> Result<rmcp::service::RunningService<rmcp::RoleClient, H>, rmcp::service::ClientInitializeError>
{
    let transport = StreamableHttpClientTransport::from_config(
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            url.to_string(),
        )
        .auth_header(token.to_string()),
    );
    handler.serve(transport).await
}

/// Starts `parley serve --http 127.0.0.1:0 <extra>` and returns the child and the URL it printed.
pub async fn start(lake: &Lake, extra: &[&str]) -> (tokio::process::Child, String) {
    let mut child = lake
        .command()
        .args(["serve", "--http", "127.0.0.1:0"])
        .args(extra)
        .env("PARLEY_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("url=http://") {
                return line[at + 4..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string();
            }
        }
        panic!("server exited before serving");
    })
    .await
    .expect("server starts");
    // Keep draining stderr so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// The dev issuer is no OAuth authorization server: the protected-resource metadata does not name one (it named
/// `parley-dev`, which clients took for an issuer URL), and a 401 still points at the metadata.
#[tokio::test]
async fn dev_issuer_metadata_names_no_authorization_server() {
    let lake = Lake::new();
    let (mut child, url) = start(&lake, &["--dev-issuer"]).await;
    let base = url.trim_end_matches("/mcp");
    let meta: serde_json::Value =
        reqwest::get(format!("{base}/.well-known/oauth-protected-resource"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(meta["resource"], url.as_str());
    assert!(meta.get("authorization_servers").is_none(), "{meta}");
    let r = reqwest::Client::new()
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("/.well-known/oauth-protected-resource"),
        "{challenge}"
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn tools_work_over_streamable_http_on_two_protocol_versions() {
    let lake = Lake::new();
    let (mut child, url) = start(&lake, &["--dev-issuer"]).await;
    let token = dev_token(&lake, "ops-owner", &["analysts", "ops-owners"]);

    let client = connect_http((), &url, &token).await.unwrap();
    assert_eq!(client.list_all_tools().await.unwrap().len(), 15);
    let q = ok(&call(
        &client,
        "query",
        json!({"sql": "SELECT count(*) FROM ops.shipments"}),
    )
    .await);
    assert_eq!(q["rows"][0][0], 60_000);
    client.cancel().await.unwrap();

    let old = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("old-client", "1.0"),
    )
    .with_protocol_version(ProtocolVersion::V_2025_06_18);
    let client = connect_http(old, &url, &token).await.unwrap();
    assert_eq!(
        client.peer_info().unwrap().protocol_version,
        ProtocolVersion::V_2025_06_18
    );
    let l = ok(&call(&client, "list_tables", json!({"namespace": "sales"})).await);
    assert_eq!(l["total"], 3);
    client.cancel().await.unwrap();

    // SIGTERM shuts the server down cleanly.
    let pid = child.id().unwrap() as i32;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let audit = lake.audit();
    assert_eq!(audit.len(), 2, "one record per tool call");
    assert!(
        audit.iter().all(|r| r["principal"] == "ops-owner"),
        "the token's subject is the principal"
    );
}

/// `serve --http <loopback> --principal NAME`: no tokens, every caller acts as NAME (for clients that cannot do
/// OAuth and the MCP conformance suite); refused on a non-loopback address.
#[tokio::test]
async fn a_local_http_server_acts_as_its_principal_without_tokens() {
    let lake = Lake::new();
    let (mut child, url) = start(&lake, &["--principal", "marketing-agent"]).await;
    let transport = StreamableHttpClientTransport::from_uri(url.clone());
    let client = ().serve(transport).await.expect("initialize without a token");
    let r = ok(&call(&client, "list_tables", json!({})).await);
    let tables: Vec<&str> = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    // marketing-agent's view (the sales namespace only), not analyst's or nobody's.
    assert!(!tables.is_empty(), "{r}");
    assert!(tables.iter().all(|t| t.starts_with("sales.")), "{tables:?}");
    client.cancel().await.unwrap();
    let audit = lake.audit();
    let last = audit.last().unwrap();
    assert_eq!(last["principal"], "marketing-agent", "{last}");
    // A web page of another origin cannot act as the local principal through the visitor's browser; the
    // server's own origins (a local inspector) can.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "page", "version": "1"}}});
    for (origin, allowed) in [
        ("http://evil.example", false),
        ("http://localhost:6274", true),
    ] {
        let r = reqwest::Client::new()
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("origin", origin)
            .json(&initialize)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().is_success(), allowed, "{origin}: {}", r.status());
    }
    child.kill().await.unwrap();

    for bad in [
        vec!["--http", "0.0.0.0:0", "--principal", "analyst"],
        vec![
            "--http",
            "127.0.0.1:0",
            "--principal",
            "analyst",
            "--dev-issuer",
        ],
    ] {
        let out = lake
            .command()
            .arg("serve")
            .args(&bad)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("loopback") || err.contains("--dev-issuer"),
            "{bad:?}: {err}"
        );
    }
}

/// A raw streamable-HTTP request to `url` with MCP's headers, and the token and session when given.
fn raw(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    session: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut r = client
        .request(method, url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(s) = session {
        r = r.header("mcp-session-id", s);
    }
    r
}

/// Opens a session with raw requests (`initialize`, then `notifications/initialized`) and returns its id.
async fn raw_session(client: &reqwest::Client, url: &str, token: Option<&str>) -> String {
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let r = raw(client, reqwest::Method::POST, url, token, None)
        .json(&initialize)
        .send()
        .await
        .unwrap();
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    r.text().await.unwrap();
    raw(client, reqwest::Method::POST, url, token, Some(&session))
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    session
}

/// Opens a stream of server messages (GET) in `session`; the response, its body still open.
async fn open_stream(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    session: &str,
) -> reqwest::Response {
    raw(
        client,
        reqwest::Method::GET,
        url,
        Some(token),
        Some(session),
    )
    .send()
    .await
    .unwrap()
}

/// Calls tool `name` with `arguments` as request `id` in `session`; the whole response's text.
async fn raw_call(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    session: &str,
    (id, name, arguments): (u64, &str, serde_json::Value),
) -> String {
    raw(client, reqwest::Method::POST, url, token, Some(session))
        .json(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": name, "arguments": arguments}}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A client that gives up on a call (closes its request, as an HTTP client's time-out does) stops the call's
/// work: the runaway join below ran on until its 60 s time limit, on every core, after its client had gone.
#[tokio::test]
async fn a_call_its_http_client_abandons_is_cancelled() {
    // Token-less on loopback, and behind bearer tokens.
    abandon_a_call(false).await;
    abandon_a_call(true).await;
}

async fn abandon_a_call(tokens: bool) {
    let lake = Lake::new();
    std::fs::write(
        lake.path().join("parley.toml"),
        "[query]\ntimeout_ms = 60000\n",
    )
    .unwrap();
    let mode: &[&str] = if tokens {
        &["--dev-issuer"]
    } else {
        &["--principal", "analyst"]
    };
    let (mut child, url) = start(&lake, mode).await;
    let token = tokens.then(|| dev_token(&lake, "analyst", &["analysts"]));
    let token = token.as_deref();
    let pid = child.id().unwrap();
    let client = reqwest::Client::new();
    let session = raw_session(&client, &url, token).await;
    // Start-up work is done before anything is measured.
    let warm = raw_call(
        &client,
        &url,
        token,
        &session,
        (
            2,
            "query",
            json!({"sql": "SELECT count(*) FROM sales.orders"}),
        ),
    )
    .await;
    assert!(warm.contains("\"result\""), "{warm}");
    let sql =
        "SELECT count(*) FROM sales.orders a JOIN sales.orders b ON a.order_id + b.order_id < 0";
    let abandoned = raw(&client, reqwest::Method::POST, &url, token, Some(&session))
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": "query", "arguments": {"sql": sql}}}))
        .timeout(std::time::Duration::from_millis(1500))
        .send()
        .await;
    // Either the headers or the body's wait ran out; either way the request is closed.
    if let Ok(r) = abandoned {
        assert!(r.text().await.is_err(), "the runaway join answered");
    }
    // The call ends as cancelled, with its audit record, and the join stops computing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let record = loop {
        if let Some(r) = lake.audit().into_iter().find(|r| r["sql"] == sql) {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit record for the abandoned call (tokens: {tokens}): {:#?}",
            lake.audit()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        record["error"]
            .as_str()
            .is_some_and(|e| e.contains("cancelled")),
        "{record}"
    );
    let used = cpu_after_a_second(pid).await;
    assert!(
        used < 0.5,
        "the abandoned query kept computing (tokens: {tokens}): {used:.2} CPU-s in 2 s"
    );
    // The session serves on.
    let after = raw_call(
        &client,
        &url,
        token,
        &session,
        (4, "query", json!({"sql": "SELECT 1"})),
    )
    .await;
    assert!(after.contains("\"result\""), "{after}");
    child.kill().await.unwrap();
}

/// One token holder cannot take every connection: past its quarter of them in flight (streams of server messages
/// it keeps open, calls running), its next request is answered 429 at once, while another principal is served and
/// the first is again once it closes some.
#[tokio::test]
async fn one_principal_cannot_hold_every_connection() {
    let lake = Lake::new();
    let (mut child, url) = start(&lake, &["--dev-issuer"]).await;
    let flooder = dev_token(&lake, "analyst", &["analysts"]);
    let other = dev_token(&lake, "ops-owner", &["analysts", "ops-owners"]);
    let client = reqwest::Client::new();
    // Streams of server messages, each held open on a connection of its own: a session keeps up to 33 (rmcp's
    // primary stream and 32 more), a principal up to 64 sessions.
    let mut sessions = Vec::new();
    let mut streams = Vec::new();
    let refused = 'flood: loop {
        let session = raw_session(&client, &url, Some(&flooder)).await;
        for _ in 0..30 {
            let r = open_stream(&client, &url, &flooder, &session).await;
            if !r.status().is_success() {
                break 'flood r;
            }
            streams.push(r);
            assert!(
                streams.len() <= 128,
                "no limit on a principal's open streams"
            );
        }
        sessions.push(session);
    };
    assert_eq!(refused.status(), 429);
    assert_eq!(streams.len(), 128);
    assert!(refused.headers().contains_key("retry-after"));
    let text = refused.text().await.unwrap();
    assert!(text.contains("in flight"), "{text}");
    let list = || (2, "list_tables", json!({}));
    // Another principal is served meanwhile.
    let theirs = raw_session(&client, &url, Some(&other)).await;
    let r = raw_call(&client, &url, Some(&other), &theirs, list()).await;
    assert!(r.contains("\"result\""), "{r}");
    // Streams closed, the flooder is served again.
    streams.truncate(100);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = raw_call(&client, &url, Some(&flooder), &sessions[0], list()).await;
    assert!(r.contains("\"result\""), "{r}");
    drop(streams);
    child.kill().await.unwrap();
}

/// `[http]` in parley.toml bounds what one principal holds — requests in flight and sessions — as configured,
/// and a bound that cannot work stops the server at start with what to change.
#[tokio::test]
async fn configured_http_limits_are_served() {
    let lake = Lake::new();
    std::fs::write(
        lake.path().join("parley.toml"),
        "[http]\nmax_requests_per_principal = 5\nmax_sessions_per_principal = 2\n",
    )
    .unwrap();
    let (mut child, url) = start(&lake, &["--dev-issuer"]).await;
    let token = dev_token(&lake, "analyst", &["analysts"]);
    let client = reqwest::Client::new();
    let first = raw_session(&client, &url, Some(&token)).await;
    let mut streams = Vec::new();
    let refused = loop {
        let r = open_stream(&client, &url, &token, &first).await;
        if !r.status().is_success() {
            break r;
        }
        streams.push(r);
        assert!(
            streams.len() <= 5,
            "the configured 5 requests in flight were not applied"
        );
    };
    assert_eq!((refused.status().as_u16(), streams.len()), (429, 5));
    let text = refused.text().await.unwrap();
    assert!(text.contains("5 requests in flight"), "{text}");
    drop(streams);
    // The server sees the streams closed a moment later.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Two sessions at most: a third closes the first.
    raw_session(&client, &url, Some(&token)).await;
    let third = raw_session(&client, &url, Some(&token)).await;
    let list = || (2, "list_tables", json!({}));
    assert!(
        raw_call(&client, &url, Some(&token), &third, list())
            .await
            .contains("\"result\"")
    );
    let r = raw(
        &client,
        reqwest::Method::POST,
        &url,
        Some(&token),
        Some(&first),
    )
    .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 404, "the first of three sessions is still open");
    child.kill().await.unwrap();

    // A principal's share above the connections: refused at start, naming the setting.
    let out = lake
        .command()
        .args(["serve", "--http", "127.0.0.1:0", "--dev-issuer"])
        .env("PARLEY_HTTP_MAX_REQUESTS_PER_PRINCIPAL", "1000")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("http.max_requests_per_principal (1000)"),
        "{text}"
    );
}

/// The token-less local mode keeps its sessions as the token mode does: at most 64 open (the oldest closed; a
/// client opening sessions in a loop grew the server's memory without end) and a DELETE answered 200 (Python's
/// client reported "Session termination failed: 202").
#[tokio::test]
async fn a_local_server_keeps_at_most_64_sessions_and_ends_one_on_delete() {
    let lake = Lake::new();
    let (mut child, url) = start(&lake, &["--principal", "analyst"]).await;
    let client = reqwest::Client::new();
    let first = raw_session(&client, &url, None).await;
    let list = || (2, "list_tables", json!({}));
    assert!(
        raw_call(&client, &url, None, &first, list())
            .await
            .contains("\"result\"")
    );
    let mut last = first.clone();
    for _ in 0..64 {
        last = raw_session(&client, &url, None).await;
    }
    // Closed in the MCP layer (in the background): its next request finds no session.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = raw(&client, reqwest::Method::POST, &url, None, Some(&first))
            .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                          "params": {"name": "list_tables", "arguments": {}}}))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the oldest of 65 sessions is still open: {}",
            r.status()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        raw_call(&client, &url, None, &last, list())
            .await
            .contains("\"result\"")
    );
    let ended = raw(&client, reqwest::Method::DELETE, &url, None, Some(&last))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    child.kill().await.unwrap();
}

//! Bearer tokens on streamable HTTP against a real IdP stand-in: OIDC discovery and a JWKS served over HTTP on
//! 127.0.0.1 by the test, RSA keys generated here. Every bad token gets the right status and no data.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

use crate::http::{connect_http, start};
use crate::util::{Lake, call, ok};

const AUDIENCE: &str = "parley-test";
const SCOPE: &str = "parley:read";

struct Key {
    kid: String,
    private: rsa::RsaPrivateKey,
}

impl Key {
    fn new(kid: &str) -> Key {
        Key {
            kid: kid.to_string(),
            private: rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let public = self.private.to_public_key();
        json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig",
               "n": b64(public.n().to_bytes_be()), "e": b64(public.e().to_bytes_be())})
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let pem = self.private.to_pkcs1_pem(LineEnding::LF).unwrap();
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn public_pem(&self) -> String {
        self.private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }
}

/// The IdP stand-in: discovery + JWKS, counting JWKS fetches.
struct Idp {
    issuer: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

async fn idp(keys: Vec<Value>) -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let keys = Arc::new(Mutex::new(keys));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (k, f, iss) = (keys.clone(), fetches.clone(), issuer.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let iss = iss.clone();
                async move { axum::Json(json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks")})) }
            }),
        )
        .route(
            "/jwks",
            axum::routing::get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"keys": *k.lock().unwrap()}))
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Idp {
        issuer,
        keys,
        fetches,
    }
}

fn claims(idp: &Idp, sub: &str, groups: &[&str]) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": idp.issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + 600,
           "jti": format!("jti-{sub}-{now}"), "realm_access": {"roles": groups}, "scope": format!("openid {SCOPE}")})
}

async fn post(
    url: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    req.json(&body).send().await.unwrap()
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
}

#[tokio::test]
async fn tokens_are_checked_on_every_request() {
    let key = Key::new("k1");
    let idp = idp(vec![key.jwk()]).await;
    let lake = Lake::new();
    std::fs::write(
        lake.path().join("parley.toml"),
        format!(
            "[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\nrequired_scopes = [\"{SCOPE}\"]\njwks_refresh_secs = 0\n",
            idp.issuer
        ),
    )
    .unwrap();
    let (_child, url) = start(&lake, &[]).await;
    let base = url.trim_end_matches("/mcp").to_string();

    // Protected-resource metadata (RFC 9728).
    let meta: Value = reqwest::get(format!("{base}/.well-known/oauth-protected-resource"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["resource"], url);
    assert_eq!(meta["authorization_servers"][0], idp.issuer);

    // A valid token: the MCP flow works and the principal and groups come from the token.
    let good = key.sign(&claims(&idp, "alice", &["analysts"]));
    let client = connect_http((), &url, &good).await.unwrap();
    let list = ok(&call(&client, "list_tables", json!({})).await);
    assert_eq!(
        list["total"], 4,
        "alice is an analyst by her token's realm roles"
    );
    client.cancel().await.unwrap();
    assert_eq!(lake.audit().last().unwrap()["principal"], "alice");

    let now = chrono::Utc::now().timestamp();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(&idp, "alice", &["analysts"]);
        f(&mut c);
        c
    };
    let other_key = Key::new("k1");
    let unknown_kid = Key::new("k-unknown");
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let mut payload: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap();
        payload["sub"] = json!("admin");
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&payload).unwrap());
        format!("{}.{p}.{}", parts[0], parts[2])
    };
    let b64 = |v: Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": "k1"})),
        b64(claims(&idp, "alice", &["analysts"]))
    );
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".to_string());
        jsonwebtoken::encode(
            &header,
            &claims(&idp, "alice", &["analysts"]),
            &EncodingKey::from_secret(key.public_pem().as_bytes()),
        )
        .unwrap()
    };
    let cases: Vec<(&str, Option<String>, StatusCode, Option<&str>)> = vec![
        ("missing header", None, StatusCode::UNAUTHORIZED, None),
        (
            "garbage",
            Some("not-a-jwt".into()),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            "expired",
            Some(key.sign(&with(&|c| c["exp"] = json!(now - 3600)))),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            "not yet valid",
            Some(key.sign(&with(&|c| c["nbf"] = json!(now + 3600)))),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            "wrong aud",
            Some(key.sign(&with(&|c| c["aud"] = json!("someone-else")))),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            "wrong iss",
            Some(key.sign(&with(&|c| c["iss"] = json!("http://evil.example")))),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            "forged signature",
            Some(other_key.sign(&claims(&idp, "alice", &["analysts"]))),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            "unknown kid",
            Some(unknown_kid.sign(&claims(&idp, "alice", &["analysts"]))),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            "alg none",
            Some(alg_none),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            "HS256 with the public key",
            Some(hs256_with_public_key),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            "tampered payload",
            Some(tampered),
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
        ),
        (
            "no scope",
            Some(key.sign(&with(&|c| c["scope"] = json!("openid")))),
            StatusCode::FORBIDDEN,
            Some("insufficient_scope"),
        ),
    ];
    let audit_before = lake.audit().len();
    for (name, token, status, error) in cases {
        let fetches = idp.fetches.load(Ordering::SeqCst);
        let r = post(&url, token.as_deref(), None, initialize()).await;
        assert_eq!(r.status(), status, "{name}");
        let challenge = r
            .headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Bearer resource_metadata=\""),
            "{name}: {challenge}"
        );
        assert!(
            challenge.contains("/.well-known/oauth-protected-resource"),
            "{name}: {challenge}"
        );
        match error {
            Some(e) => assert!(
                challenge.contains(&format!("error=\"{e}\"")),
                "{name}: {challenge}"
            ),
            None => assert!(!challenge.contains("error="), "{name}: {challenge}"),
        }
        let body = r.text().await.unwrap();
        assert!(!body.contains("sales."), "{name}: no data in {body}");
        if name == "unknown kid" {
            assert!(
                idp.fetches.load(Ordering::SeqCst) > fetches,
                "an unknown kid refreshes the JWKS first"
            );
        }
    }
    assert_eq!(
        lake.audit().len(),
        audit_before,
        "rejected requests never reach a tool"
    );

    // Key rotation at the IdP: a token with a new kid is accepted after the refresh it triggers.
    let rotated = Key::new("k2");
    idp.keys.lock().unwrap().push(rotated.jwk());
    let client = connect_http(
        (),
        &url,
        &rotated.sign(&claims(&idp, "bob", &["marketing"])),
    )
    .await
    .unwrap();
    let list = ok(&call(&client, "list_tables", json!({})).await);
    assert_eq!(
        list["total"], 3,
        "bob is in marketing: the sales namespace only"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_session_is_bound_to_the_principal_that_opened_it() {
    let lake = Lake::new();
    let (_child, url) = start(&lake, &["--dev-issuer"]).await;
    let alice = crate::http::dev_token(&lake, "alice", &["analysts"]);
    let mallory = crate::http::dev_token(&lake, "mallory", &["analysts"]);
    let r = post(&url, Some(&alice), None, initialize()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let session = r
        .headers()
        .get("mcp-session-id")
        .expect("a session")
        .to_str()
        .unwrap()
        .to_string();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}});
    let r = post(&url, Some(&mallory), Some(&session), list.clone()).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("another principal"));
    // The session still needs a token of its owner on every request.
    let r = post(&url, None, Some(&session), list.clone()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// One principal cannot hold more than its share of sessions (each costs memory): opening one past the limit
/// closes its oldest, which then answers 404 (a client opens a new one), while another principal's session is
/// untouched.
#[tokio::test]
async fn a_principal_opening_sessions_past_its_limit_closes_its_oldest() {
    let lake = Lake::new();
    let (_child, url) = start(&lake, &["--dev-issuer"]).await;
    let alice = crate::http::dev_token(&lake, "alice", &["analysts"]);
    let flooder = crate::http::dev_token(&lake, "flooder", &["analysts"]);
    let open = |token: String| {
        let url = url.clone();
        async move {
            let r = post(&url, Some(&token), None, initialize()).await;
            assert_eq!(r.status(), StatusCode::OK);
            r.headers()["mcp-session-id"].to_str().unwrap().to_string()
        }
    };
    let hers = open(alice.clone()).await;
    let mut theirs = Vec::new();
    for _ in 0..parley::http::HttpLimits::default().max_sessions_per_principal + 2 {
        theirs.push(open(flooder.clone()).await);
    }
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}});
    for (i, session) in theirs.iter().enumerate() {
        let r = post(&url, Some(&flooder), Some(session), list.clone()).await;
        let expected = if i < 2 {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(r.status(), expected, "session {i}");
    }
    let r = post(&url, Some(&alice), Some(&hers), list).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Connections that trickle their headers cannot hold the server: each must send its headers within the header
/// timeout or is closed, and past the connection limit new connections wait their turn instead of taking the
/// process's file descriptors — a client that connects behind 600 such connections is served.
#[tokio::test]
async fn connections_that_trickle_their_headers_are_closed_and_others_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lake = Lake::new();
    let (_child, url) = start(&lake, &["--dev-issuer"]).await;
    let alice = crate::http::dev_token(&lake, "alice", &["analysts"]);
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_string();
    let started = std::time::Instant::now();
    let mut held = Vec::new();
    for _ in 0..600 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        held.push(c);
    }
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        post(&url, Some(&alice), None, initialize()),
    )
    .await
    .expect("a client behind trickling connections is served");
    assert_eq!(r.status(), StatusCode::OK);
    // The first trickling connection was closed by the server after the header timeout.
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), held[0].read(&mut buf))
        .await
        .expect("closed by the server")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= parley::http::HEADER_TIMEOUT);
    // A request without a valid token is refused and its connection closed, so it cannot keep a slot.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        c.read_to_end(&mut answer),
    )
    .await
    .expect("the refused connection is closed")
    .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 401"));
}

/// A stream of server messages (GET) lasts no longer than the token that opened it: past its expiry the server
/// ends the stream, and a client must come back with a valid token to hear more.
#[tokio::test]
async fn a_notification_stream_ends_when_its_token_expires() {
    let lake = Lake::new();
    std::fs::write(lake.path().join("parley.toml"), "[auth]\nleeway_secs = 0\n").unwrap();
    let (_child, url) = start(&lake, &["--dev-issuer"]).await;
    let issuer =
        parley::identity::DevIssuer::load_or_create(&lake.path().join("dev-issuer/ed25519.pem"))
            .unwrap();
    let token = issuer
        .mint(
            "alice",
            &["analysts".to_string()],
            &[],
            std::time::Duration::from_secs(3),
            "parley",
        )
        .unwrap();
    let r = post(&url, Some(&token), None, initialize()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert!(
        post(&url, Some(&token), Some(&session), initialized)
            .await
            .status()
            .is_success()
    );
    let stream = reqwest::Client::new()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", &session)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), stream.bytes()).await;
    assert!(ended.is_ok(), "the stream outlived its token");
}

#[tokio::test]
async fn http_refuses_to_start_without_token_validation() {
    let lake = Lake::new();
    let out = lake
        .command()
        .args(["serve", "--http", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--dev-issuer") && err.contains("auth.issuer"),
        "{err}"
    );
}

/// Issue 11: a DELETE the MCP layer refuses (bad protocol version, bad Host) or one from another principal leaves
/// the session open and bound to its owner; only an accepted DELETE ends it, and an ended or unknown session id is
/// refused for everyone.
#[tokio::test]
async fn only_an_accepted_delete_unbinds_a_session() {
    let lake = Lake::new();
    let (_child, url) = start(&lake, &["--dev-issuer"]).await;
    let alice = crate::http::dev_token(&lake, "alice", &["analysts"]);
    let mallory = crate::http::dev_token(&lake, "mallory", &["analysts"]);
    let r = post(&url, Some(&alice), None, initialize()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = post(&url, Some(&alice), Some(&session), initialized).await;
    assert!(r.status().is_success(), "{}", r.status());
    let delete = |token: &str, headers: &[(&str, &str)]| {
        let mut req = reqwest::Client::new()
            .delete(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("mcp-session-id", &session);
        if !headers.iter().any(|(k, _)| *k == "mcp-protocol-version") {
            req = req.header("mcp-protocol-version", "2025-06-18");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}});
    for (who, headers) in [
        (&alice, vec![("mcp-protocol-version", "1999-01-01")]),
        (&alice, vec![("host", "attacker.example")]),
        (&mallory, vec![]),
    ] {
        let r = delete(who, &headers).await.unwrap();
        assert!(!r.status().is_success(), "{headers:?}: {}", r.status());
        // The session is still alice's: mallory is refused, alice is served.
        let r = post(&url, Some(&mallory), Some(&session), list.clone()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "after {headers:?}");
        let r = post(&url, Some(&alice), Some(&session), list.clone()).await;
        assert_eq!(r.status(), StatusCode::OK, "after {headers:?}");
        assert!(r.text().await.unwrap().contains("list_tables"));
    }
    let r = delete(&alice, &[]).await.unwrap();
    assert!(
        matches!(r.status(), StatusCode::OK | StatusCode::NO_CONTENT),
        "{}",
        r.status()
    );
    for who in [&alice, &mallory] {
        let r = post(&url, Some(who), Some(&session), list.clone()).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // A session id nobody was given is refused before the MCP layer.
    let r = post(&url, Some(&mallory), Some("made-up-session"), list.clone()).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Issue 11: over HTTP too, a body that does not parse, or is no JSON-RPC message, is answered as JSON-RPC says
/// (400 with -32700 or -32600 and the request's id when the body has one), and the session keeps working.
#[tokio::test]
async fn unparseable_http_bodies_get_json_rpc_errors() {
    let lake = Lake::new();
    let (_child, url) = start(&lake, &["--dev-issuer"]).await;
    let alice = crate::http::dev_token(&lake, "alice", &["analysts"]);
    let r = post(&url, Some(&alice), None, initialize()).await;
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(&url, Some(&alice), Some(&session), initialized).await;
    let raw = |body: String| {
        reqwest::Client::new()
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-06-18")
            .header("authorization", format!("Bearer {alice}"))
            .header("mcp-session-id", &session)
            .body(body)
            .send()
    };
    for (body, id, code) in [
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"query","arguments":{"sql":"SELECT 1","max_rows":1e400}}}"#.to_string(),
            json!(5),
            -32700,
        ),
        ("{not json".to_string(), Value::Null, -32700),
        (
            format!(r#"{{"id":"d","jsonrpc":"2.0","method":"x","params":{}1{}}}"#, "[".repeat(500), "]".repeat(500)),
            json!("d"),
            -32700,
        ),
        (r#"{"jsonrpc":"2.0","id":6,"nomethod":1}"#.to_string(), json!(6), -32600),
    ] {
        let r = raw(body.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body:.60}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["id"], id, "{body:.60}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body:.60}: {answer}");
    }
    let list = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {}});
    let r = post(&url, Some(&alice), Some(&session), list).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("list_tables"));
}

//! HTTP: the streamable-HTTP face of the server as an MCP resource server (MCP authorization spec).
//!
//! Every request to `/mcp` must carry `Authorization: Bearer <JWT>`; it is validated by
//! [`JwtValidator`] and the resulting [`Principal`] is put in the request's extensions, where the tool handlers
//! find it. No token, a bad one or an expired one → 401 with `WWW-Authenticate: Bearer resource_metadata=…`; a
//! valid token without the required scope → 403 `insufficient_scope`. The RFC 9728 protected-resource metadata
//! is served at `/.well-known/oauth-protected-resource` (and its `/mcp` suffixed form).
//!
//! Sessions never authenticate: every request is checked, and an MCP session id is bound to the principal whose
//! request opened it; another principal presenting it is refused (403), and a session id this layer did not bind
//! is refused (404) before the MCP layer sees it. Only a DELETE the MCP layer accepted unbinds a session.
//!
//! Invariant: the token is handed to `identity` and dropped; it is never forwarded, logged or stored.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::identity::{AuthError, JwtValidator, Principal};

/// Header carrying the MCP session id.
const SESSION_HEADER: &str = "mcp-session-id";
pub use crate::config::HttpLimits;

/// Closes sessions in the MCP layer (its session manager), so a session dropped here frees what it holds.
pub type CloseSession = Arc<dyn Fn(Vec<String>) + Send + Sync>;

/// The sessions a server has open, bound to the principals that opened them; the oldest are closed past the
/// limits (`http.max_sessions_per_principal`, `http.max_sessions`: without them any token holder could open
/// sessions until the server ran out of memory; a request on a closed one fails closed, 404, and an MCP client
/// opens a new session).
struct SessionBook {
    sessions: Mutex<Sessions>,
    /// Closes sessions dropped past the limits in the MCP layer.
    close: Option<CloseSession>,
}

impl SessionBook {
    fn new(limits: &HttpLimits, close: Option<CloseSession>) -> SessionBook {
        SessionBook {
            sessions: Mutex::new(Sessions::new(limits)),
            close,
        }
    }

    fn bind(&self, session: &str, principal: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let closed = sessions.bind(session, principal);
        let (mine, all) = (sessions.per_principal, sessions.most);
        drop(sessions);
        if !closed.is_empty() {
            tracing::info!(
                %principal,
                closed = closed.len(),
                "closed the oldest MCP sessions past the limits ({mine} per principal, {all} in all)"
            );
            if let Some(close) = &self.close {
                close(closed);
            }
        }
    }

    fn owner(&self, session: &str) -> Option<String> {
        let guard = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        guard.owner.get(session).cloned()
    }

    /// What the MCP layer's `response` to a request of `principal` in `session` (none for `initialize`) means
    /// for the book: a new session is bound, a session its DELETE ended is forgotten.
    fn answered(
        &self,
        session: Option<&str>,
        closing: bool,
        principal: &str,
        response: &mut Response,
    ) {
        match (session, response.headers().get(SESSION_HEADER)) {
            (None, Some(new)) => {
                if let Ok(new) = new.to_str() {
                    self.bind(new, principal);
                }
            }
            // Only a DELETE the MCP layer accepted ended the session; a refused one (bad protocol version, bad
            // Host, unknown session) leaves it open and bound to its owner.
            (Some(s), _) if closing && response.status().is_success() => {
                self.sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forget(s);
                // Clients expect 200 or 204 for a session ended by DELETE (the Python SDK warns on 202).
                if response.status() == StatusCode::ACCEPTED {
                    *response.status_mut() = StatusCode::OK;
                }
            }
            _ => {}
        }
    }
}

/// The MCP session a request names, if any.
fn session_of(request: &Request) -> Option<String> {
    request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The open sessions: who opened each, in opening order overall and per principal.
struct Sessions {
    owner: HashMap<String, String>,
    /// Session ids in opening order; may hold ids closed since (skipped, and compacted away).
    order: std::collections::VecDeque<String>,
    by_principal: HashMap<String, std::collections::VecDeque<String>>,
    /// Most sessions one principal keeps open.
    per_principal: usize,
    /// Most sessions kept open.
    most: usize,
}

impl Sessions {
    fn new(limits: &HttpLimits) -> Sessions {
        Sessions {
            owner: HashMap::new(),
            order: std::collections::VecDeque::new(),
            by_principal: HashMap::new(),
            per_principal: limits.max_sessions_per_principal.max(1),
            most: limits.max_sessions.max(1),
        }
    }

    /// Binds `session` to `principal`; returns the sessions closed to stay within the limits.
    fn bind(&mut self, session: &str, principal: &str) -> Vec<String> {
        if self.owner.contains_key(session) {
            return Vec::new();
        }
        self.owner
            .insert(session.to_string(), principal.to_string());
        self.order.push_back(session.to_string());
        let mine = self.by_principal.entry(principal.to_string()).or_default();
        mine.push_back(session.to_string());
        let mut closed = Vec::new();
        while mine.len() > self.per_principal {
            if let Some(old) = mine.pop_front() {
                self.owner.remove(&old);
                closed.push(old);
            }
        }
        while self.owner.len() > self.most {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.owner.contains_key(&old) {
                self.forget(&old);
                closed.push(old);
            }
        }
        if self.order.len() > 2 * self.owner.len() + 1024 {
            let owner = &self.owner;
            self.order.retain(|s| owner.contains_key(s));
        }
        closed
    }

    fn forget(&mut self, session: &str) {
        if let Some(principal) = self.owner.remove(session)
            && let Some(theirs) = self.by_principal.get_mut(&principal)
        {
            theirs.retain(|s| s != session);
            if theirs.is_empty() {
                self.by_principal.remove(&principal);
            }
        }
    }
}

/// Token checking and session binding shared by all requests.
pub struct HttpAuth {
    validator: JwtValidator,
    /// Absolute URL of the protected-resource metadata.
    metadata_url: String,
    /// The metadata document.
    metadata: serde_json::Value,
    /// The open sessions and their principals.
    book: SessionBook,
    /// Where verified tokens are kept for token exchange, when a catalog needs them.
    subject_tokens: Option<Arc<crate::identity::SubjectTokens>>,
    /// Requests each principal has in flight.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    /// Most requests one principal has in flight at once — calls running, streams of server messages open
    /// (`http.max_requests_per_principal`, by default a quarter of the connections): one token holder cannot
    /// take every connection (each a stream it keeps open, or a query waiting its turn) so that no one else is
    /// served. Past it a request is answered 429 at once.
    requests_per_principal: usize,
}

/// One of a principal's requests in flight, until its response's body has ended or was dropped.
struct InFlight {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    principal: String,
}

impl InFlight {
    /// Counts a request of `principal`; `None` when it has `most` in flight already.
    fn take(
        counts: &Arc<Mutex<HashMap<String, usize>>>,
        principal: &str,
        most: usize,
    ) -> Option<InFlight> {
        let mut map = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(principal.to_string()).or_default();
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(InFlight {
            counts: counts.clone(),
            principal: principal.to_string(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.principal);
            }
        }
    }
}

/// `response` with `guard` held until its body was dropped, or handed to `ended` once the body has ended.
fn holding<G: Send + 'static>(
    response: Response,
    guard: G,
    ended: impl FnOnce(G) + Send + 'static,
) -> Response {
    let (parts, body) = response.into_parts();
    let end = futures::stream::once(async move {
        ended(guard);
        None::<Result<axum::body::Bytes, axum::Error>>
    });
    let body = futures::StreamExt::chain(
        body.into_data_stream(),
        futures::StreamExt::filter_map(end, futures::future::ready),
    );
    Response::from_parts(parts, Body::from_stream(body))
}

impl HttpAuth {
    /// Auth for a server whose MCP endpoint is `resource` (e.g. `http://127.0.0.1:8765/mcp`).
    pub fn new(validator: JwtValidator, resource: &str) -> HttpAuth {
        let settings = validator.settings();
        let resource = settings
            .resource
            .clone()
            .unwrap_or_else(|| resource.to_string());
        let base = resource
            .trim_end_matches('/')
            .trim_end_matches("/mcp")
            .to_string();
        let mut servers = if settings.authorization_servers.is_empty() {
            settings.issuer.iter().cloned().collect::<Vec<_>>()
        } else {
            settings.authorization_servers.clone()
        };
        // RFC 9728 names authorization servers by their issuer URL. The dev issuer (`parley token`) has none — it
        // is no OAuth server a client could go to — so it is not named: the metadata then says only where the
        // resource is and how to present a token.
        servers.retain(|s| s.starts_with("https://") || s.starts_with("http://"));
        let mut metadata = json!({
            "resource": resource,
            "bearer_methods_supported": ["header"],
            "scopes_supported": settings.required_scopes,
            "resource_name": "Parley",
            "resource_documentation": "https://modelcontextprotocol.io/",
        });
        if !servers.is_empty() {
            metadata["authorization_servers"] = json!(servers);
        }
        HttpAuth {
            validator,
            metadata_url: format!("{base}/.well-known/oauth-protected-resource"),
            metadata,
            book: SessionBook::new(&HttpLimits::default(), None),
            subject_tokens: None,
            in_flight: Arc::default(),
            requests_per_principal: HttpLimits::default().requests_per_principal(),
        }
    }

    /// Serves within `limits` (sessions kept, requests in flight per principal) instead of the defaults.
    pub fn with_limits(mut self, limits: &HttpLimits) -> HttpAuth {
        self.book = SessionBook::new(limits, self.book.close.take());
        self.requests_per_principal = limits.requests_per_principal();
        self
    }

    /// Closes the sessions dropped past the session limits with `close`.
    pub fn with_session_closer(mut self, close: CloseSession) -> HttpAuth {
        self.book.close = Some(close);
        self
    }

    /// Keeps each principal's latest verified token in `tokens`, for catalogs that exchange it (RFC 8693).
    pub fn with_subject_tokens(
        mut self,
        tokens: Option<Arc<crate::identity::SubjectTokens>>,
    ) -> HttpAuth {
        self.subject_tokens = tokens;
        self
    }

    fn challenge(&self, status: StatusCode, error: Option<(&str, String)>) -> Response {
        let mut value = format!("Bearer resource_metadata=\"{}\"", self.metadata_url);
        let mut body = json!({"error": "unauthorized"});
        if let Some((code, description)) = error {
            // Quotes and backslashes would break the header's quoted-string.
            let clean: String = description
                .chars()
                .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
                .collect();
            value.push_str(&format!(
                ", error=\"{code}\", error_description=\"{clean}\""
            ));
            if code == "insufficient_scope" {
                value.push_str(&format!(
                    ", scope=\"{}\"",
                    self.validator.settings().required_scopes.join(" ")
                ));
            }
            body = json!({"error": code, "error_description": clean});
        }
        let mut response = (status, axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        // The connection ends with the refusal: a caller without a valid token cannot keep one of the server's
        // connection slots by sending a request now and then, and one whose body was not read is not reused.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// `routes` (the Iceberg REST endpoint) behind the same bearer-token validation as `/mcp`: a missing, invalid or
/// expired token is answered 401 in the Iceberg REST error model; the verified `Principal` rides in the request
/// extensions, and the token goes no further.
pub fn protect_iceberg(routes: Router, auth: Arc<HttpAuth>) -> Router {
    routes.layer(axum::middleware::from_fn_with_state(auth, bearer_only))
}

async fn bearer_only(
    State(auth): State<Arc<HttpAuth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let refused = |status: StatusCode, kind: &str, message: String| {
        let mut response = (
            status,
            axum::Json(
                json!({"error": {"message": message, "type": kind, "code": status.as_u16()}}),
            ),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED
            && let Ok(value) = format!("Bearer resource_metadata=\"{}\"", auth.metadata_url).parse()
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    };
    let Some(token) = bearer(&request) else {
        return refused(
            StatusCode::UNAUTHORIZED,
            "NotAuthorizedException",
            "send the same bearer token as for /mcp (Authorization: Bearer ...)".to_string(),
        );
    };
    let principal = match auth.validator.validate(&token).await {
        Ok(a) => a.principal,
        Err(e @ AuthError::Unavailable(_)) => {
            tracing::error!("{e}");
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                e.to_string(),
            );
        }
        Err(e) => {
            tracing::info!("rejected a bearer token: {e}");
            return refused(
                StatusCode::UNAUTHORIZED,
                "NotAuthorizedException",
                e.to_string(),
            );
        }
    };
    if let Some(tokens) = &auth.subject_tokens {
        tokens.remember(&principal.id, &token);
    }
    request.headers_mut().remove(header::AUTHORIZATION);
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The bearer token of `request`, if it sends one.
fn bearer(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// The middleware in front of `/mcp`.
async fn authenticate(
    State(auth): State<Arc<HttpAuth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(&request) else {
        return auth.challenge(StatusCode::UNAUTHORIZED, None);
    };
    let authenticated = match auth.validator.validate(&token).await {
        Ok(a) => a,
        Err(AuthError::InsufficientScope(scopes)) => {
            return auth.challenge(
                StatusCode::FORBIDDEN,
                Some(("insufficient_scope", format!("requires scope {scopes}"))),
            );
        }
        Err(e @ AuthError::Unavailable(_)) => {
            tracing::error!("{e}");
            return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
        }
        Err(e) => {
            tracing::info!("rejected a bearer token: {e}");
            return auth.challenge(
                StatusCode::UNAUTHORIZED,
                Some(("invalid_token", e.to_string())),
            );
        }
    };
    let expires_at = authenticated.expires_at;
    let principal: Principal = authenticated.principal;
    let most = auth.requests_per_principal;
    let Some(in_flight) = InFlight::take(&auth.in_flight, &principal.id, most) else {
        tracing::warn!(principal = %principal.id, "refused a request past the principal's requests in flight");
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({
                "error": "too_many_requests",
                "error_description": format!(
                    "this principal has {most} requests in flight (calls running, streams open), the most the \
                     server allows one principal (http.max_requests_per_principal); close streams or sessions it no \
                     longer uses, or wait for calls to end"
                )
            })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    if let Some(tokens) = &auth.subject_tokens {
        tokens.remember(&principal.id, &token);
    }
    let session = session_of(&request);
    let owner = session.as_deref().map(|s| auth.book.owner(s));
    if let Some(None) = owner {
        // A session id this server never bound (or dropped past the limits) is refused here, never passed on:
        // the MCP layer may still hold such a session, and nothing would then say whose it is.
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "error": "session_not_found",
                "error_description": "unknown or expired MCP session; initialize a new session"
            })),
        )
            .into_response();
    }
    if owner.flatten().is_some_and(|owner| owner != principal.id) {
        tracing::warn!(principal = %principal.id, "refused a session opened by another principal");
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({
                "error": "session_mismatch",
                "error_description": "this MCP session belongs to another principal; start your own session"
            })),
        )
            .into_response();
    }
    let principal_id = principal.id.clone();
    let closing = request.method() == Method::DELETE;
    let listening = request.method() == Method::GET;
    // A POST body is read here first, so a message the MCP layer cannot parse is answered as JSON-RPC says (the
    // MCP layer answers such a body with a bare 415), naming the request's id when the body has one.
    let mut posted: Option<axum::body::Bytes> = None;
    if request.method() == Method::POST {
        let (parts, body) = request.into_parts();
        let bytes = match read_body(body).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            return jsonrpc_error(
                StatusCode::BAD_REQUEST,
                &bytes,
                crate::jsonrpc::PARSE_ERROR,
                format!("Parse error: {e}"),
            );
        }
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if json {
            posted = Some(bytes.clone());
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    // The verified token goes no further: the MCP layer hands the request's headers to the tool handlers, which
    // need the principal, never the credential.
    request.headers_mut().remove(header::AUTHORIZATION);
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    if let Some(bytes) = &posted
        && response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE
    {
        // A JSON body (so not a wrong content type) that is no JSON-RPC message the MCP layer accepts.
        return jsonrpc_error(
            StatusCode::BAD_REQUEST,
            bytes,
            crate::jsonrpc::INVALID_REQUEST,
            "Invalid Request: not a JSON-RPC 2.0 request, notification or response MCP accepts"
                .to_string(),
        );
    }
    auth.book
        .answered(session.as_deref(), closing, &principal_id, &mut response);
    // A stream of server messages (GET) ends when the token that opened it expires: what it would carry next is
    // delivered only to a client that reconnects with a valid token.
    let streaming = listening
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
    if streaming {
        let left = expires_at
            .saturating_sub(chrono::Utc::now().timestamp())
            .max(0) as u64;
        let ends = tokio::time::sleep(std::time::Duration::from_secs(left));
        let (parts, body) = response.into_parts();
        let body = Body::from_stream(futures::StreamExt::take_until(
            body.into_data_stream(),
            ends,
        ));
        response = Response::from_parts(parts, body);
    }
    holding(response, in_flight, drop)
}

/// Time a client has to send a request's headers after connecting or after its previous response: a connection
/// that trickles them (to hold a connection slot), or idles this long between requests, is closed (clients'
/// connection pools drop idle connections sooner: httpx after 5 s, Node's fetch after 4 s).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Time a client has to send a request's body once its headers are in.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `app` on `listener` over HTTP/1.1 until `shutdown` completes, then lets open connections finish (up
/// to 10 s). At most `max_connections` connections are served at once (more wait in the listen queue until one
/// closes; the process's file descriptors stay available for its own files) and each must send a request's
/// headers within [`HEADER_TIMEOUT`]: without both, a client that opens connections and trickles its headers
/// takes every file descriptor and no one else is served.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let max_connections = max_connections.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors or a connection reset before it was accepted: go on.
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stopped.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    let _ = stop.send(true);
    // Connections finish what they serve; the slots all come back when they have.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slots.acquire_many(u32::try_from(max_connections).unwrap_or(u32::MAX)),
    )
    .await;
    Ok(())
}

/// Largest POST body read; a larger one is answered 413 with a JSON-RPC error (the MCP layer is held to the same).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// A JSON-RPC error answer to `message` as an HTTP response (202 with no body for a notification).
/// A POST's body, read whole within [`BODY_TIMEOUT`] and [`MAX_BODY_BYTES`], or the JSON-RPC error answering it.
async fn read_body(body: Body) -> Result<axum::body::Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(b)) => Ok(b),
        Err(_) => Err(jsonrpc_error(
            StatusCode::REQUEST_TIMEOUT,
            &[],
            crate::jsonrpc::INVALID_REQUEST,
            format!(
                "Invalid Request: the message's body did not arrive within {} s; send it whole",
                BODY_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(_)) => Err(jsonrpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &[],
            crate::jsonrpc::INVALID_REQUEST,
            format!(
                "Invalid Request: the message is larger than {MAX_BODY_BYTES} bytes; send smaller arguments"
            ),
        )),
    }
}

/// Cancels a call an MCP session still runs, as the client's `notifications/cancelled` would: the session's id
/// and the JSON-RPC id of the request.
pub type CancelCall = Arc<dyn Fn(String, serde_json::Value) + Send + Sync>;

/// A call whose answer has not been delivered whole: dropped while armed (its client closed the request, or the
/// connection), it cancels the call.
struct Unanswered(Option<(CancelCall, String, serde_json::Value)>);

impl Unanswered {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((cancel, session, id)) = self.0.take() {
            tracing::debug!(%session, %id, "the client closed a call's request before its answer: cancelling it");
            cancel(session, id);
        }
    }
}

/// The middleware that stops a call whose client gave up on it: a POST of a request in a session answers with a
/// stream that carries the call's result, and the MCP layer runs the call to its end whether or not anyone still
/// reads that stream (a query until its time limit, on every core). Dropping the stream before its end — the
/// client closed the request or the connection — cancels the call.
async fn cancel_abandoned(
    State(cancel): State<CancelCall>,
    request: Request,
    next: Next,
) -> Response {
    let session = session_of(&request);
    let (Some(session), true) = (session, request.method() == Method::POST) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let id = crate::jsonrpc::top_level_id(&bytes);
    let request = Request::from_parts(parts, Body::from(bytes));
    let Some(id) = id else {
        return next.run(request).await;
    };
    // Armed while the call runs: a client gone before the answer drops this future, or the stream below.
    let unanswered = Unanswered(Some((cancel, session, id)));
    let response = next.run(request).await;
    let streamed = response.status().is_success()
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streamed {
        unanswered.answered();
        return response;
    }
    // The stream ends once the call's answer was sent; dropped before, it cancels the call.
    holding(response, unanswered, Unanswered::answered)
}

fn jsonrpc_error(status: StatusCode, message: &[u8], code: i64, text: String) -> Response {
    match crate::jsonrpc::error_answer(message, code, text) {
        Some(answer) => (status, axum::Json(answer)).into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

/// The MCP endpoint without bearer tokens, for `serve --http <loopback> --principal NAME`: every request acts as
/// the server's local principal (the transport adds none, so the server's `LocalIdentity` answers).
pub fn local_router<S>(
    mcp: S,
    cancel: CancelCall,
    close: CloseSession,
    limits: &HttpLimits,
) -> Router
where
    S: tower_service::Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    let book = Arc::new(SessionBook::new(limits, Some(close)));
    Router::new()
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(
            cancel,
            cancel_abandoned,
        ))
        .layer(axum::middleware::from_fn_with_state(book, local_sessions))
}

/// The local principal's sessions, in a book: at most `http.max_sessions_per_principal` open (a client that opens
/// sessions in a loop no longer grows the server's memory without end), and a DELETE answered 200.
async fn local_sessions(
    State(book): State<Arc<SessionBook>>,
    request: Request,
    next: Next,
) -> Response {
    let session = session_of(&request);
    let closing = request.method() == Method::DELETE;
    let mut response = next.run(request).await;
    book.answered(session.as_deref(), closing, "local", &mut response);
    response
}

/// The HTTP app: `mcp` (the MCP service) at `/mcp` behind token checks, plus the protected-resource metadata.
pub fn router<S>(mcp: S, auth: Arc<HttpAuth>, cancel: CancelCall) -> Router
where
    S: tower_service::Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    let metadata = auth.metadata.clone();
    let serve_metadata = move || {
        let m = metadata.clone();
        async move { axum::Json(m) }
    };
    // Authenticated first (the outer layer), then watched for an abandoned call.
    let protected = Router::new()
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(
            cancel,
            cancel_abandoned,
        ))
        .layer(axum::middleware::from_fn_with_state(auth, authenticate));
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            axum::routing::get(serve_metadata.clone()),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            axum::routing::get(serve_metadata),
        )
        .merge(protected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A principal keeps at most its limit of sessions (its oldest are closed), whatever others hold, and the
    /// server as a whole at most its own; a closed session is no longer anyone's.
    #[test]
    fn sessions_are_bounded_per_principal_and_in_all() {
        let limits = HttpLimits::default();
        let (per_principal, most) = (limits.max_sessions_per_principal, limits.max_sessions);
        let mut sessions = Sessions::new(&limits);
        let mut closed = Vec::new();
        for i in 0..per_principal + 10 {
            closed.extend(sessions.bind(&format!("flood-{i}"), "flooder"));
        }
        sessions.bind("mine", "analyst");
        assert_eq!(closed.len(), 10);
        assert_eq!(closed[0], "flood-0");
        assert!(!sessions.owner.contains_key("flood-0"));
        assert_eq!(
            sessions.owner.get("mine").map(String::as_str),
            Some("analyst")
        );
        assert_eq!(sessions.by_principal["flooder"].len(), per_principal);
        // Many principals: the oldest sessions overall give way, and the books stay consistent.
        for p in 0..(most / 8) {
            for s in 0..10 {
                sessions.bind(&format!("p{p}-s{s}"), &format!("p{p}"));
            }
        }
        assert_eq!(sessions.owner.len(), most);
        assert!(!sessions.owner.contains_key("mine"));
        let listed: usize = sessions.by_principal.values().map(|v| v.len()).sum();
        assert_eq!(listed, most);
        assert!(sessions.order.len() <= 2 * most + 1024);
        let last = format!("p{}-s9", most / 8 - 1);
        assert!(sessions.owner.contains_key(&last));
        sessions.forget(&last);
        assert!(!sessions.owner.contains_key(&last));
        assert_eq!(
            sessions.by_principal[&format!("p{}", most / 8 - 1)].len(),
            9
        );
    }
}

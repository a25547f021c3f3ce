//! The Iceberg REST catalog protocol in front of the catalogs Parley governs (`/iceberg/v1/...` on the HTTP
//! listener, behind the same bearer-token identity as `/mcp`): config, namespaces, tables, table loads, and table
//! commits checked against the table's contract (`commits`).
//! pyiceberg, DuckDB, Spark or Trino pointed at it see exactly the tables the principal may discover, and load
//! (read) exactly those the policy lets them query without a grant's restrictions — a grant's masks and row
//! filters cannot be enforced on files an engine reads itself, so tables open to a caller only under a grant stay
//! behind `query`.
//!
//! Invariants: every request passes the gate and leaves one audit record; a table the caller may not discover is
//! a 404 `NoSuchTableException` exactly like a missing one (and an empty namespace like a missing namespace);
//! a commit lands only through `commits` (the table's owners, checked against its contract); other writes are
//! refused.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{App, ParleyServer, ToolError};
use crate::catalog::TableName;
use crate::identity::Principal;
use crate::policy::Action;

/// Namespace levels in a path are joined by the unit separator (Iceberg REST spec).
const SEPARATOR: char = '\u{1f}';

/// The `/iceberg` routes; the caller's verified `Principal` must be in the request extensions.
pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new()
        .route("/iceberg/v1/config", get(config))
        .route(
            "/iceberg/v1/namespaces",
            get(namespaces).fallback(read_only),
        )
        .route(
            "/iceberg/v1/namespaces/{namespace}",
            get(namespace).head(namespace).fallback(read_only),
        )
        .route(
            "/iceberg/v1/namespaces/{namespace}/tables",
            get(tables).fallback(read_only),
        )
        .route(
            "/iceberg/v1/namespaces/{namespace}/tables/{table}",
            get(load).head(load).post(commit).fallback(read_only),
        )
        .fallback(not_served)
        .with_state(app)
}

/// An Iceberg REST error answer (`{"error": {message, type, code}}`).
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(
            json!({"error": {"message": message.into(), "type": kind, "code": status.as_u16()}}),
        ),
    )
        .into_response()
}

fn no_table(table: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NoSuchTableException",
        format!("Table does not exist: {table}"),
    )
}

fn no_namespace(namespace: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NoSuchNamespaceException",
        format!("Namespace does not exist: {namespace}"),
    )
}

/// The answer to an error, in the spec's error model.
fn tool_error(e: &ToolError) -> Response {
    match e {
        ToolError::TableNotFound { table } => no_table(table),
        ToolError::Denied { reason, next_step } => error(
            StatusCode::FORBIDDEN,
            "ForbiddenException",
            format!("{reason}. {next_step}"),
        ),
        ToolError::BadRequest(m) => {
            error(StatusCode::BAD_REQUEST, "BadRequestException", m.clone())
        }
        ToolError::Conflict(m) => error(StatusCode::CONFLICT, "CommitFailedException", m.clone()),
        other => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            other.to_string(),
        ),
    }
}

/// Runs `body` through the gate as `tool`: one audit record, durable before the answer; a body's error is
/// recorded as such (denied, not found, failed) and answered in the spec's error model.
async fn gated(
    app: &App,
    who: &Principal,
    tool: &str,
    body: impl AsyncFnOnce(&mut crate::gate::Checked<'_>) -> Result<Response, ToolError>,
) -> Response {
    let mut failure = None;
    let result = app
        .gate
        .run(who, tool, None, async |checked| match body(checked).await {
            Ok(r) => Ok(r),
            Err(e) => {
                failure = Some(tool_error(&e));
                Err(e)
            }
        })
        .await;
    match (result, failure) {
        (Ok(r), _) => r,
        (Err(_), Some(answer)) => answer,
        (Err(e), None) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceFailureException",
            e,
        ),
    }
}

async fn config() -> Response {
    axum::Json(json!({"defaults": {}, "overrides": {}})).into_response()
}

async fn read_only() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "NotSupportedException",
        "Parley's Iceberg endpoint is read-only: write through your catalog (commits checked against contracts \
         are not served yet)",
    )
}

async fn not_served() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NotFoundException",
        "not an Iceberg REST route Parley serves (config, namespaces, tables, table loads)",
    )
}

/// The namespaces (as level lists) holding tables the caller may discover, and their ancestors.
async fn visible_namespaces(
    server: &ParleyServer,
    checked: &mut crate::gate::Checked<'_>,
) -> Result<BTreeSet<Vec<String>>, ToolError> {
    let discovered = server.discoverable(checked).await?;
    let mut out = BTreeSet::new();
    let all = discovered.all().await?;
    for d in all {
        for depth in 1..=d.name.namespace.len() {
            out.insert(d.name.namespace[..depth].to_vec());
        }
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct ParentQuery {
    parent: Option<String>,
}

async fn namespaces(
    State(app): State<Arc<App>>,
    Query(query): Query<ParentQuery>,
    Extension(who): Extension<Principal>,
) -> Response {
    let server = ParleyServer::new(app.clone());
    let parent: Vec<String> = query
        .parent
        .map(|p| p.split(SEPARATOR).map(str::to_string).collect())
        .unwrap_or_default();
    gated(&app, &who, "iceberg:listNamespaces", async |checked| {
        let visible = visible_namespaces(&server, checked).await?;
        checked.note(
            Action::Discover,
            &if parent.is_empty() {
                "*".to_string()
            } else {
                parent.join(".")
            },
            "namespaces holding discoverable tables".to_string(),
        );
        if !parent.is_empty() && !visible.contains(&parent) {
            return Ok(no_namespace(&parent.join(".")));
        }
        let children: Vec<&Vec<String>> = visible
            .iter()
            .filter(|ns| ns.len() == parent.len() + 1 && ns.starts_with(&parent))
            .collect();
        Ok(axum::Json(json!({"namespaces": children})).into_response())
    })
    .await
}

async fn namespace(
    State(app): State<Arc<App>>,
    Path(namespace): Path<String>,
    Extension(who): Extension<Principal>,
    method: Method,
) -> Response {
    let head = method == Method::HEAD;
    let levels: Vec<String> = namespace.split(SEPARATOR).map(str::to_string).collect();
    let server = ParleyServer::new(app.clone());
    gated(&app, &who, "iceberg:loadNamespace", async |checked| {
        let visible = visible_namespaces(&server, checked).await?;
        checked.note(
            Action::Discover,
            &levels.join("."),
            "namespace lookup".to_string(),
        );
        Ok(match (visible.contains(&levels), head) {
            (false, _) => no_namespace(&levels.join(".")),
            (true, true) => StatusCode::NO_CONTENT.into_response(),
            (true, false) => {
                axum::Json(json!({"namespace": levels, "properties": {}})).into_response()
            }
        })
    })
    .await
}

async fn tables(
    State(app): State<Arc<App>>,
    Path(namespace): Path<String>,
    Extension(who): Extension<Principal>,
) -> Response {
    let levels: Vec<String> = namespace.split(SEPARATOR).map(str::to_string).collect();
    let server = ParleyServer::new(app.clone());
    gated(&app, &who, "iceberg:listTables", async |checked| {
        let discovered = server.discoverable(checked).await?;
        let ns = levels.join(".");
        checked.note(Action::Discover, &ns, "tables of a namespace".to_string());
        let all = discovered.all().await?;
        let mut any_below = false;
        let mut identifiers = Vec::new();
        for d in all {
            if d.name.namespace.starts_with(&levels) {
                any_below = true;
            }
            if d.name.namespace == levels {
                identifiers.push(json!({"namespace": d.name.namespace, "name": d.name.name}));
            }
        }
        if !any_below {
            return Ok(no_namespace(&ns));
        }
        Ok(axum::Json(json!({"identifiers": identifiers})).into_response())
    })
    .await
}

async fn load(
    State(app): State<Arc<App>>,
    Path((namespace, table)): Path<(String, String)>,
    Extension(who): Extension<Principal>,
    method: Method,
) -> Response {
    let head = method == Method::HEAD;
    let name = TableName {
        namespace: namespace.split(SEPARATOR).map(str::to_string).collect(),
        name: table,
    };
    let shown = name.to_string();
    let server = ParleyServer::new(app.clone());
    gated(&app, &who, "iceberg:loadTable", async |checked| {
        if head {
            // Existence only: discovery decides, as for a missing table.
            server
                .table_for(checked, &shown, Action::Discover, "")
                .await?;
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        // Reading the files means reading everything: the policy must allow a query without a grant.
        let next =
            "Query it through Parley's MCP `query` tool, under a grant if the policy needs one.";
        let name = server
            .table_for(checked, &shown, Action::Query, next)
            .await?;
        let loaded = app.lakehouse.load(&name).await.map_err(ToolError::from)?;
        checked.usage.snapshots = loaded
            .metadata()
            .current_snapshot_id()
            .map(|id| vec![format!("{shown}@{id}")])
            .unwrap_or_default();
        let metadata: Value = serde_json::to_value(loaded.metadata())
            .map_err(|e| ToolError::Internal(e.to_string()))?;
        Ok(axum::Json(json!({
            "metadata-location": loaded.metadata_location(),
            "metadata": metadata,
            "config": {},
        }))
        .into_response())
    })
    .await
}

/// `updateTable`: a commit to one table, by its owners, checked against its contract (see `commits`).
async fn commit(
    State(app): State<Arc<App>>,
    Path((namespace, table)): Path<(String, String)>,
    Extension(who): Extension<Principal>,
    body: axum::body::Bytes,
) -> Response {
    let name = TableName {
        namespace: namespace.split(SEPARATOR).map(str::to_string).collect(),
        name: table,
    };
    let shown = name.to_string();
    let server = ParleyServer::new(app.clone());
    gated(&app, &who, "iceberg:updateTable", async |checked| {
        let answer = server.do_commit(checked, &shown, &body).await?;
        Ok(axum::Json(answer).into_response())
    })
    .await
}

//! Server: the MCP face of Parley (rmcp `ServerHandler`): tools, the `contract://` resources and prompts.
//! Tool descriptions come from `tools/*.md` and prompt texts from `prompts/*.md`, compiled in.
//!
//! Every handler runs its body through [`Gate::run`]; failures the agent can act on are tool results with
//! `isError` and a next step, never protocol errors.
//!
//! Invariant: only this module (and `main` for transports) imports rmcp; the server type is transport-agnostic.

use std::sync::Arc;

use rmcp::handler::server::common::schema_for_type;
use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, JsonObject, ListResourceTemplatesResult,
    ListResourcesResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource as McpResource, ResourceContents, ResourceTemplate, Role, ServerCapabilities,
    ServerConfig, SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{
    ErrorData, Peer, RoleServer, ServerHandler, prompt, prompt_handler, prompt_router, tool,
    tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod access;
mod discovery;
mod elicit;
mod notify;
pub mod stdio;

pub use discovery::DiscoveryCache;
use discovery::{Discoverable, Discovered, MAX_DISCOVERY_ENTRIES};
pub use notify::Sessions;

use crate::catalog::{Lakehouse, TableName};
use crate::config::Config;
use crate::gate::{Checked, Gate, ToolError};
use crate::identity::{Identity, Principal};
use crate::policy::{Action, Resource};
use crate::query::{self, QueryResult, ReadableTable, TableSource};

/// The audit log as a governed table: owners see the records about their tables.
pub const AUDIT_TABLE: &str = "parley.audit_log";

/// Everything a handler needs, shared by all sessions.
pub struct App {
    /// Configuration.
    pub config: Config,
    /// The audit log as `parley.audit_log` reads it: an index kept up to date by what was appended.
    pub audit: crate::audit::reader::AuditReader,
    /// Who is calling.
    pub identity: Identity,
    /// Policy + audit choke point.
    pub gate: Gate,
    /// Catalog + contracts.
    pub lakehouse: Lakehouse,
    /// Access requests, offers and grants.
    pub store: Arc<dyn crate::store::NegotiationStore>,
    /// The purpose registry (`policy/purposes.yaml`).
    pub purposes: crate::negotiation::Purposes,
    /// Server-side secret mixed into the salt of hashed (masked) columns and keying the seal of elicitation
    /// `requestState` handles; never leaves the server.
    pub mask_secret: String,
    /// The query engine (one memory pool shared by concurrent queries).
    pub engine: crate::query::Engine,
    /// What each principal may discover, cached per policy version and table list.
    pub discovery: DiscoveryCache,
    /// Each principal's grants for `list_tables`' coverage hints: (read at, store grant generation, grants).
    pub grants_hint: GrantsHint,
    /// Live MCP sessions per principal, for pushing notices of owners' decisions.
    pub sessions: Sessions,
    /// The wall clock that decides whether grants and offers are in their term (settable by tests).
    pub clock: crate::clock::Clock,
}

/// See [`App::grants_hint`]: per principal, bounded (least recently used leave first).
pub type GrantsHint =
    moka::sync::Cache<String, (std::time::Instant, u64, Arc<Vec<crate::negotiation::Grant>>)>;

/// An empty [`GrantsHint`] for [`MAX_DISCOVERY_ENTRIES`] principals.
pub fn grants_hint() -> GrantsHint {
    moka::sync::Cache::new(MAX_DISCOVERY_ENTRIES)
}

/// The MCP server. Cheap to clone: one per session.
#[derive(Clone)]
pub struct ParleyServer {
    app: Arc<App>,
    /// This MCP session's side of push notices (peer, subscriptions, log level).
    session: Arc<notify::Session>,
    tool_router: ToolRouter<ParleyServer>,
    prompt_router: PromptRouter<ParleyServer>,
}

// ---- tool arguments and results -----------------------------------------------------------------------------

/// Arguments of `list_tables`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTablesArgs {
    /// Case-insensitive text matched against table name, namespace, description and tags.
    #[serde(default)]
    pub filter: Option<String>,
    /// Only tables in this namespace (e.g. `sales`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (1-200; default from the server's configuration).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One table in a listing.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TableSummary {
    /// `namespace.table`, the name to use in SQL and other tools.
    pub table: String,
    /// Namespace.
    pub namespace: String,
    /// What the table holds (from its contract); absent when the contract does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Owning team; absent when the contract names none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Tags from the contract.
    pub tags: Vec<String>,
    /// Rows in the current snapshot.
    pub row_count: Option<u64>,
    /// Whether some columns hold personal data.
    pub contains_pii: bool,
    /// Whether the policy lets you query it now, without a grant.
    pub can_query: bool,
    /// Your live grants covering it (pass one to `query` as `grant_id`); absent when you have none. (Listings
    /// are what agents page through most, so entries carry no empty fields.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_ids: Vec<String>,
}

/// Result of `list_tables`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ListTablesResult {
    /// This page of tables.
    pub tables: Vec<TableSummary>,
    /// Tables matching the filter across all pages.
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Arguments naming one table.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableArgs {
    /// `namespace.table`, e.g. `sales.orders`.
    pub table: String,
}

/// A column of a table.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ColumnInfo {
    /// Iceberg field id.
    pub id: i32,
    /// Column name.
    pub name: String,
    /// Iceberg type, e.g. `long`, `decimal(12, 2)`, `timestamptz`.
    pub data_type: String,
    /// Whether nulls are allowed.
    pub nullable: bool,
    /// Documentation (Iceberg doc, else the contract's description).
    pub doc: Option<String>,
    /// Classification from the contract (public, internal, confidential, restricted).
    pub classification: Option<String>,
    /// Whether the column holds personal data.
    pub pii: bool,
}

/// A partition field.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PartitionInfo {
    /// Partition field name.
    pub name: String,
    /// Source column.
    pub source_column: String,
    /// Transform, e.g. `month`, `identity`, `bucket[16]`.
    pub transform: String,
}

/// A snapshot of a table.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SnapshotInfo {
    /// Snapshot id.
    pub snapshot_id: i64,
    /// Parent snapshot id.
    pub parent_id: Option<i64>,
    /// Commit time, RFC 3339.
    pub committed_at: String,
    /// append, overwrite, delete, replace.
    pub operation: String,
    /// Rows in the table as of this snapshot.
    pub total_records: Option<u64>,
    /// Rows added by this snapshot.
    pub added_records: Option<u64>,
}

/// Result of `describe_table`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DescribeTableResult {
    /// `namespace.table`.
    pub table: String,
    /// What the table holds.
    pub description: Option<String>,
    /// Owning team.
    pub owner: Option<String>,
    /// Iceberg format version.
    pub format_version: u8,
    /// Columns.
    pub columns: Vec<ColumnInfo>,
    /// Partition fields (empty when unpartitioned).
    pub partition_spec: Vec<PartitionInfo>,
    /// The snapshot queries read now.
    pub current_snapshot: Option<SnapshotInfo>,
    /// All snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Rows in the current snapshot.
    pub row_count: Option<u64>,
    /// Whether you may query it now.
    pub can_query: bool,
    /// Version of the contract the classifications come from.
    pub contract_version: Option<String>,
}

/// A column's terms in a contract.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ContractColumn {
    /// Column name.
    pub name: String,
    /// Classification.
    pub classification: Option<String>,
    /// Personal data.
    pub pii: bool,
    /// Description.
    pub description: Option<String>,
}

/// A service level.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ServiceLevel {
    /// e.g. freshness, latency, retention.
    pub property: String,
    /// Value.
    pub value: serde_json::Value,
    /// Unit, e.g. d, h.
    pub unit: Option<String>,
}

/// An access role and who approves it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApproverRole {
    /// Role.
    pub role: String,
    /// Access (read, write).
    pub access: Option<String>,
    /// First-level approvers.
    pub first_level_approvers: Option<String>,
    /// Second-level approvers.
    pub second_level_approvers: Option<String>,
}

/// Result of `get_contract`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ContractResult {
    /// `namespace.table`.
    pub table: String,
    /// Contract id.
    pub contract_id: String,
    /// Contract version.
    pub version: String,
    /// Status (active, deprecated...).
    pub status: Option<String>,
    /// Owning team.
    pub owner: Option<String>,
    /// Why the data exists.
    pub purpose: Option<String>,
    /// Intended usage: terms you accept by using the data.
    pub usage: Option<String>,
    /// Limitations and prohibitions.
    pub limitations: Option<String>,
    /// Purposes the contract allows.
    pub allowed_purposes: Vec<String>,
    /// Purposes the contract forbids.
    pub prohibited_purposes: Vec<String>,
    /// Column classifications.
    pub columns: Vec<ContractColumn>,
    /// Service levels.
    pub service_levels: Vec<ServiceLevel>,
    /// Access roles and approvers.
    pub roles: Vec<ApproverRole>,
    /// Price, e.g. `0.5 EUR per 1000 rows`.
    pub price: Option<String>,
    /// The whole contract, ODCS v3 YAML.
    pub yaml: String,
}

/// Arguments of `query`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryArgs {
    /// One read-only SQL query; name tables as namespace.table.
    pub sql: String,
    /// Most rows to return (default 1000; capped by the server's ceiling).
    #[serde(default)]
    pub max_rows: Option<u32>,
    /// Why you run this query (recorded in the audit log). With no `grant_id`, it selects your live grant for
    /// that purpose, if any.
    #[serde(default)]
    pub purpose: Option<String>,
    /// A grant from `request_access` / `my_grants`: its tables are seen as the grant allows (columns, masks,
    /// rows).
    #[serde(default)]
    pub grant_id: Option<String>,
}

/// Arguments of the `explore_dataset` prompt.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExploreArgs {
    /// What data you are looking for, e.g. "late deliveries".
    pub topic: String,
}

/// Arguments of the `answer_with_data` prompt.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AnswerArgs {
    /// The question to answer.
    pub question: String,
    /// Why the answer is needed (checked against each contract's allowed purposes).
    #[serde(default)]
    pub purpose: Option<String>,
}

// ---- helpers ------------------------------------------------------------------------------------------------

/// A tool result: `structuredContent` for programs, compact `text` for the model.
fn respond<T: Serialize>(value: &T, text: String) -> CallToolResult {
    // Not `CallToolResult::structured`: it also renders the value as JSON text, which the text here replaces.
    match serde_json::to_value(value) {
        Ok(structured) => {
            let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
            result.structured_content = Some(structured);
            result
        }
        Err(e) => CallToolResult::error(vec![ContentBlock::text(format!(
            "the result could not be encoded as JSON ({e}); report this to the server's operator"
        ))]),
    }
}

/// `list_tables`' reply: the page as structured content, and a line per table for the model.
fn list_tables_reply(result: ListTablesResult) -> CallToolResult {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(64 + 160 * result.tables.len());
    let _ = writeln!(
        text,
        "{} table{} you can discover:",
        result.total,
        if result.total == 1 { "" } else { "s" }
    );
    for t in &result.tables {
        let _ = write!(text, "- {} (", t.table);
        match t.row_count {
            Some(n) => _ = write!(text, "{n}"),
            None => text.push('?'),
        }
        let _ = writeln!(
            text,
            " rows, owner {}, {}{}): {}",
            t.owner.as_deref().unwrap_or("unknown"),
            if t.can_query {
                "queryable"
            } else {
                "not queryable"
            },
            if t.contains_pii { ", has PII" } else { "" },
            t.description.as_deref().unwrap_or("")
        );
    }
    if let Some(c) = &result.next_cursor {
        let _ = writeln!(text, "More: call again with cursor {c:?}.");
    }
    respond(&result, text)
}

/// `describe_table`'s reply.
fn describe_reply(r: DescribeTableResult) -> CallToolResult {
    let mut text = format!(
        "{} — {} rows, {}; {}\ncolumns:\n",
        r.table,
        r.row_count.map_or("?".to_string(), |n| n.to_string()),
        if r.can_query {
            "you may query it"
        } else {
            "you may not query it"
        },
        r.description.as_deref().unwrap_or("")
    );
    for c in &r.columns {
        text.push_str(&format!(
            "- {} {}{}{}{}\n",
            c.name,
            c.data_type,
            if c.nullable { "" } else { " not null" },
            c.classification
                .as_deref()
                .map(|x| format!(" [{x}]"))
                .unwrap_or_default(),
            if c.pii { " PII" } else { "" }
        ));
    }
    if !r.partition_spec.is_empty() {
        let parts: Vec<String> = r
            .partition_spec
            .iter()
            .map(|p| format!("{}({})", p.transform, p.source_column))
            .collect();
        text.push_str(&format!("partitioned by {}\n", parts.join(", ")));
    }
    if let Some(s) = &r.current_snapshot {
        text.push_str(&format!(
            "current snapshot {} committed {}; {} snapshots in history\n",
            s.snapshot_id,
            s.committed_at,
            r.snapshots.len()
        ));
    }
    respond(&r, text)
}

/// `get_contract`'s reply.
fn contract_reply(r: ContractResult) -> CallToolResult {
    let text = format!(
        "Contract {} v{} for {} (owner {}).\nPurpose: {}\nUsage: {}\nLimitations: {}\nAllowed purposes: {}\nProhibited purposes: {}\nPII columns: {}\n\n{}",
        r.contract_id,
        r.version,
        r.table,
        r.owner.as_deref().unwrap_or("unknown"),
        r.purpose.as_deref().unwrap_or("-"),
        r.usage.as_deref().unwrap_or("-"),
        r.limitations.as_deref().unwrap_or("-"),
        r.allowed_purposes.join(", "),
        r.prohibited_purposes.join(", "),
        r.columns
            .iter()
            .filter(|c| c.pii)
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        r.yaml
    );
    respond(&r, text)
}

/// Tool arguments are parsed inside the gate so that malformed ones are audited like any other failure.
fn parse_args<T: serde::de::DeserializeOwned>(args: JsonObject) -> Result<T, ToolError> {
    serde_json::from_value(serde_json::Value::Object(args)).map_err(|e| {
        ToolError::BadRequest(format!(
            "invalid arguments: {e}. Check the tool's input schema for the expected fields and types."
        ))
    })
}

fn internal(e: impl std::fmt::Display) -> ToolError {
    ToolError::Internal(e.to_string())
}

fn summary_u64(summary: &iceberg::spec::Summary, key: &str) -> Option<u64> {
    summary
        .additional_properties
        .get(key)
        .and_then(|v| v.parse().ok())
}

fn snapshot_info(s: &iceberg::spec::Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: s.snapshot_id(),
        parent_id: s.parent_snapshot_id(),
        committed_at: s
            .timestamp()
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|_| s.timestamp_ms().to_string()),
        operation: s.summary().operation.as_str().to_string(),
        total_records: summary_u64(s.summary(), "total-records"),
        added_records: summary_u64(s.summary(), "added-records"),
    }
}

fn row_count(table: &iceberg::table::Table) -> Option<u64> {
    match table.metadata().current_snapshot() {
        Some(s) => summary_u64(s.summary(), "total-records"),
        None => Some(0),
    }
}

/// Renders query rows as a compact tab-separated table for the model.
fn query_text(r: &QueryResult) -> String {
    let mut out = String::new();
    out.push_str(
        &r.columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join("\t"),
    );
    out.push('\n');
    for row in &r.rows {
        let cells: Vec<String> = row
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "NULL".to_string(),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    let snaps: Vec<String> = r
        .snapshots
        .iter()
        .map(|s| {
            format!(
                "{}@{}",
                s.table,
                s.snapshot_id.map_or("none".to_string(), |i| i.to_string())
            )
        })
        .collect();
    out.push_str(&format!(
        "({} row{}{}; {} ms; snapshots: {})",
        r.row_count,
        if r.row_count == 1 { "" } else { "s" },
        match (r.truncated, r.total_rows) {
            (true, Some(t)) => format!(
                ", truncated by {} of {t} total",
                r.truncated_by.as_deref().unwrap_or("a cap")
            ),
            (true, None) => format!(
                ", truncated by {}; total unknown",
                r.truncated_by.as_deref().unwrap_or("a cap")
            ),
            _ => String::new(),
        },
        r.elapsed_ms,
        snaps.join(", ")
    ));
    out
}

/// Progress notifications for one request, sent only when the client asked for them (gave a progress token).
struct Progress {
    token: Option<ProgressToken>,
    peer: Peer<RoleServer>,
}

impl Progress {
    fn of(ctx: &RequestContext<RoleServer>) -> Progress {
        Progress {
            token: ctx.meta.get_progress_token(),
            peer: ctx.peer.clone(),
        }
    }

    async fn report(&self, done: u32, total: u32, message: String) {
        if let Some(token) = &self.token {
            let note = ProgressNotificationParam::new(token.clone(), done as f64)
                .with_total(total as f64)
                .with_message(message);
            // Progress is advisory: a client that went away must not fail the call.
            let _ = self.peer.notify_progress(note).await;
        }
    }
}

impl ParleyServer {
    /// A server over the shared application state.
    pub fn new(app: Arc<App>) -> ParleyServer {
        ParleyServer {
            app,
            session: Arc::default(),
            tool_router: Self::tool_router() + Self::access_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    /// The caller: the principal the HTTP layer verified from the request's bearer token, else the identity
    /// the transport was started with (the local principal on stdio; nobody on HTTP). A session on a 2025
    /// protocol (one that initialized) is remembered as one of the principal's live sessions for push notices.
    fn principal(&self, ctx: &RequestContext<RoleServer>) -> Principal {
        let principal = self.principal_in(&ctx.extensions);
        self.attach_session(&principal, &ctx.peer);
        principal
    }

    fn principal_in(&self, extensions: &rmcp::model::Extensions) -> Principal {
        extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            .unwrap_or_else(|| self.app.identity.resolve())
    }

    /// Sessions of 2026-07-28 clients are per request (no `initialize`, no peer info) and are never remembered;
    /// those clients hear of decisions through `subscriptions/listen`.
    fn attach_session(&self, principal: &Principal, peer: &Peer<RoleServer>) {
        if peer.peer_info().is_some() {
            self.app.sessions.attach(&principal.id, &self.session, peer);
        }
    }

    /// Passes a protocol request that touches no table (a prompt, a subscription, a log level) through the gate, so
    /// it is audited like every other request a principal makes; refused only when its record cannot be written.
    async fn audited(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: &str,
        what: &str,
    ) -> Result<(), ErrorData> {
        let principal = self.principal(ctx);
        self.app
            .gate
            .run(&principal, method, None, async |c| {
                c.note(Action::Discover, "*", format!("{method} {what}"));
                Ok(())
            })
            .await
            .map_err(|e| ErrorData::internal_error(e, None))
    }

    /// The audit records `checked`'s principal may see, as rows of `parley.audit_log`: records all of whose tables
    /// the policy lets them `read_audit` (owners), nothing else.
    async fn audit_rows(
        &self,
        checked: &mut Checked<'_>,
    ) -> Result<datafusion::arrow::array::RecordBatch, ToolError> {
        // Which resources the caller may see, decided once each by the policy (in this task: the gate's checks
        // are not Send); the reader then serves only their records from its index.
        let resources = {
            let app = self.app.clone();
            tokio::task::spawn_blocking(move || app.audit.resources())
                .await
                .map_err(internal)?
                .map_err(internal)?
        };
        let mut allowed: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        let shown: std::collections::HashSet<String> = resources
            .into_iter()
            .filter(|resource| {
                // A record naming several tables (a join, a multi-table grant) carries what the caller did with
                // all of them (SQL, error text): it is shown only to a caller who may read the audit of every one.
                resource.split(',').all(|table| {
                    *allowed.entry(table.to_string()).or_insert_with(|| {
                        TableName::parse(table).is_ok_and(|t| {
                            let facts = self.app.lakehouse.facts_of_listed(&t);
                            checked
                                .peek(Action::ReadAudit, &Resource::Table(facts))
                                .allowed()
                        })
                    })
                })
            })
            .collect();
        let (visible, total) = {
            let app = self.app.clone();
            tokio::task::spawn_blocking(move || app.audit.records(|r| shown.contains(r)))
                .await
                .map_err(internal)?
                .map_err(internal)?
        };
        checked.note(
            Action::ReadAudit,
            AUDIT_TABLE,
            format!(
                "audit rows limited to tables the caller may read_audit: {} of {total} records",
                visible.len()
            ),
        );
        Ok(crate::audit::to_batch(&visible))
    }

    /// Looks a table up and requires `action` on it (missing and undiscoverable tables fail alike).
    async fn table_for(
        &self,
        checked: &mut Checked<'_>,
        name: &str,
        action: Action,
        next_step: &str,
    ) -> Result<TableName, ToolError> {
        let parsed = TableName::parse(name).ok();
        let facts = match &parsed {
            Some(t) => self.app.lakehouse.facts(t).await.map_err(internal)?,
            None => None,
        };
        checked.require_table(name, facts, action, next_step)?;
        // require_table only succeeds for a table that exists, hence one whose name parsed.
        parsed.ok_or_else(|| internal("table name did not parse"))
    }

    /// The tables the caller may discover, with their policy resource and search text, sorted by name. Built once
    /// per principal, policy version and table list (see [`DiscoveryCache`]), so a page of `list_tables` on a
    /// catalog of thousands of tables costs no policy evaluation per table.
    async fn discoverable(&self, checked: &Checked<'_>) -> Result<Arc<Discovered>, ToolError> {
        let lakehouse = &self.app.lakehouse;
        let names = lakehouse.list_tables().await.map_err(internal)?;
        let policy_version = checked.policy_version();
        let cache = &self.app.discovery;
        if let Some(hit) = cache.get(checked, &names, policy_version) {
            return Ok(hit);
        }
        let mut visible = Vec::new();
        for name in names.iter() {
            let resource = Resource::Table(lakehouse.facts_of_listed(name));
            if !checked.peek(Action::Discover, &resource).allowed() {
                continue;
            }
            let table = name.to_string();
            let mut haystack = table.clone();
            let contract = lakehouse.contract(name).map(|c| &c.contract);
            if let Some(c) = contract {
                let purpose = c.description.as_ref().and_then(|d| d.purpose.as_deref());
                for text in purpose
                    .into_iter()
                    .chain(c.tags.iter().map(String::as_str))
                    .chain(c.name.as_deref())
                {
                    haystack.push(' ');
                    haystack.push_str(text);
                }
            }
            let Resource::Table(facts) = &resource else {
                continue;
            };
            let summary = TableSummary {
                table,
                namespace: name.namespace_str(),
                description: contract
                    .and_then(|c| c.description.as_ref())
                    .and_then(|d| d.purpose.clone()),
                owner: contract.and_then(|c| c.owner_group().map(str::to_string)),
                tags: facts.tags.clone(),
                row_count: None,
                contains_pii: facts.contains_pii,
                can_query: false,
                grant_ids: Vec::new(),
            };
            visible.push((
                Discoverable {
                    name: name.clone(),
                    resource,
                    summary,
                    can_query: std::sync::OnceLock::new(),
                },
                haystack,
            ));
        }
        let visible = Arc::new(Discovered::new(visible));
        cache.put(checked, names, policy_version, visible.clone());
        Ok(visible)
    }

    /// The caller's grants, to mark the tables they cover in `list_tables` (a hint: `query` always reads grants
    /// from the store). Reused while this process changed no grant and for at most the catalog cache TTL (grants
    /// made by another process sharing the state store show up within it).
    async fn grants_hint(
        &self,
        principal: &str,
    ) -> Result<Arc<Vec<crate::negotiation::Grant>>, ToolError> {
        let ttl = std::time::Duration::from_millis(self.app.config.catalog_cache_ttl_ms);
        let generation = self.app.store.grant_generation();
        if let Some(generation) = generation
            && let Some((at, g, grants)) = self.app.grants_hint.get(principal)
            && g == generation
            && at.elapsed() < ttl
        {
            return Ok(grants);
        }
        let grants = Arc::new(
            self.app
                .store
                .grants_for_principal(principal)
                .await
                .map_err(internal)?,
        );
        if let Some(generation) = generation {
            self.app.grants_hint.insert(
                principal.to_string(),
                (std::time::Instant::now(), generation, grants.clone()),
            );
        }
        Ok(grants)
    }

    async fn do_list_tables(
        &self,
        checked: &mut Checked<'_>,
        args: ListTablesArgs,
    ) -> Result<ListTablesResult, ToolError> {
        let page_size = match args.limit {
            None => self.app.config.list_page_size,
            Some(n @ 1..=200) => n as usize,
            Some(n) => {
                return Err(ToolError::BadRequest(format!(
                    "limit {n} is out of range: use 1 to 200"
                )));
            }
        };
        let offset = match &args.cursor {
            None => 0,
            Some(c) => c
                .strip_prefix("offset:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    ToolError::BadRequest(format!(
                        "cursor {c:?} is not one this server issued; pass next_cursor from the previous page or omit it"
                    ))
                })?,
        };
        let lakehouse = &self.app.lakehouse;
        let discovered = self.discoverable(checked).await?;
        let (total, page) = discovered.page(
            args.namespace.as_deref(),
            args.filter.as_deref(),
            offset,
            page_size,
        );
        let now = self.app.clock.now();
        let grants = self.grants_hint(checked.principal_id()).await?;
        let live_grants: Vec<&crate::negotiation::Grant> =
            grants.iter().filter(|g| g.is_live(now)).collect();
        let rows = lakehouse
            .inspect_listed(page.iter().map(|d| &d.name), row_count)
            .await;
        let mut tables = Vec::with_capacity(page.len());
        for (d, rows) in page.into_iter().zip(rows) {
            let mut entry = d.summary.clone();
            entry.can_query = *d
                .can_query
                .get_or_init(|| checked.peek(Action::Query, &d.resource).allowed());
            entry.grant_ids = live_grants
                .iter()
                .filter(|g| g.terms.covers(&entry.table))
                .map(|g| g.id.clone())
                .collect();
            entry.row_count = rows.unwrap_or_else(|e| {
                tracing::warn!(table = %d.name, "cannot load table metadata: {e}");
                None
            });
            tables.push(entry);
        }
        let next = offset + tables.len();
        Ok(ListTablesResult {
            tables,
            total,
            next_cursor: (next < total).then(|| format!("offset:{next}")),
        })
    }

    async fn do_describe(
        &self,
        checked: &mut Checked<'_>,
        args: TableArgs,
    ) -> Result<DescribeTableResult, ToolError> {
        let name = self
            .table_for(checked, &args.table, Action::Discover, "")
            .await?;
        let lakehouse = &self.app.lakehouse;
        let table = lakehouse.load(&name).await.map_err(internal)?;
        let contract = lakehouse.contract(&name).map(|c| &c.contract);
        let meta = table.metadata();
        let schema = meta.current_schema();
        let columns = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| {
                let term = contract.and_then(|c| c.column(&f.name));
                ColumnInfo {
                    id: f.id,
                    name: f.name.clone(),
                    data_type: f.field_type.to_string(),
                    nullable: !f.required,
                    doc: f
                        .doc
                        .clone()
                        .or_else(|| term.and_then(|t| t.description.clone())),
                    classification: term.and_then(|t| t.classification.clone()),
                    pii: term.is_some_and(|t| t.is_pii()),
                }
            })
            .collect();
        let partition_spec = meta
            .default_partition_spec()
            .fields()
            .iter()
            .map(|p| PartitionInfo {
                name: p.name.clone(),
                source_column: schema
                    .field_by_id(p.source_id)
                    .map(|f| f.name.clone())
                    .unwrap_or_else(|| format!("field {}", p.source_id)),
                transform: p.transform.to_string(),
            })
            .collect();
        let mut snapshots: Vec<SnapshotInfo> = meta.snapshots().map(|s| snapshot_info(s)).collect();
        snapshots.sort_by_key(|s| (s.committed_at.clone(), s.snapshot_id));
        let facts = lakehouse.facts_of_listed(&name);
        Ok(DescribeTableResult {
            table: name.to_string(),
            description: contract
                .and_then(|c| c.description.as_ref())
                .and_then(|d| d.purpose.clone()),
            owner: contract.and_then(|c| c.owner_group().map(str::to_string)),
            format_version: meta.format_version() as u8,
            columns,
            partition_spec,
            current_snapshot: meta.current_snapshot().map(|s| snapshot_info(s)),
            snapshots,
            row_count: row_count(&table),
            can_query: checked
                .peek(Action::Query, &Resource::Table(facts))
                .allowed(),
            contract_version: contract.map(|c| c.version.clone()),
        })
    }

    async fn do_get_contract(
        &self,
        checked: &mut Checked<'_>,
        table: &str,
    ) -> Result<ContractResult, ToolError> {
        let name = self
            .table_for(
                checked,
                table,
                Action::ReadContract,
                "Ask the table's owner for access to its contract.",
            )
            .await?;
        let Some(loaded) = self.app.lakehouse.contract(&name) else {
            return Err(ToolError::BadRequest(format!(
                "table {name} has no valid data contract, so it is treated as unclassified (personal data assumed). \
                 Ask the table's owner to publish one."
            )));
        };
        let c = &loaded.contract;
        let d = c.description.clone().unwrap_or_default();
        Ok(ContractResult {
            table: name.to_string(),
            contract_id: c.id.clone(),
            version: c.version.clone(),
            status: c.status.clone(),
            owner: c.owner_group().map(str::to_string),
            purpose: d.purpose,
            usage: d.usage,
            limitations: d.limitations,
            allowed_purposes: c.allowed_purposes(),
            prohibited_purposes: c.prohibited_purposes(),
            columns: c
                .columns()
                .map(|p| ContractColumn {
                    name: p.name.clone(),
                    classification: p.classification.clone(),
                    pii: p.is_pii(),
                    description: p.description.clone(),
                })
                .collect(),
            service_levels: c
                .sla_properties
                .iter()
                .map(|s| ServiceLevel {
                    property: s.property.clone(),
                    value: s.value.clone(),
                    unit: s.unit.clone(),
                })
                .collect(),
            roles: c
                .roles
                .iter()
                .map(|r| ApproverRole {
                    role: r.role.clone(),
                    access: r.access.clone(),
                    first_level_approvers: r.first_level_approvers.clone(),
                    second_level_approvers: r.second_level_approvers.clone(),
                })
                .collect(),
            price: c.price.as_ref().map(|p| {
                format!(
                    "{} {} per {}",
                    p.price_amount.unwrap_or(0.0),
                    p.price_currency.as_deref().unwrap_or(""),
                    p.price_unit.as_deref().unwrap_or("unit")
                )
            }),
            yaml: loaded.yaml.clone(),
        })
    }

    async fn do_query(
        &self,
        checked: &mut Checked<'_>,
        args: QueryArgs,
        cancel: tokio_util::sync::CancellationToken,
        progress: &Progress,
    ) -> Result<QueryResult, ToolError> {
        let limits = &self.app.config.query;
        let catalog_name = &self.app.config.catalog_name;
        checked.usage.sql = Some(args.sql.clone());
        let max_rows = match args.max_rows {
            None => limits.default_rows,
            Some(0) => {
                return Err(ToolError::BadRequest(
                    "max_rows must be at least 1".to_string(),
                ));
            }
            Some(n) if n as usize > limits.max_rows => {
                return Err(ToolError::BadRequest(format!(
                    "max_rows {n} is above this server's ceiling of {}; aggregate in SQL or ask for fewer rows",
                    limits.max_rows
                )));
            }
            Some(n) => n as usize,
        };
        let prepared = query::prepare(&args.sql, limits, catalog_name).map_err(query_error)?;
        for t in &prepared.tables {
            checked.name_resource(&t.to_string());
        }
        let grant = self.select_grant(checked, &args, &prepared.tables).await?;
        progress
            .report(
                1,
                3,
                format!("checking access to {} table(s)", prepared.tables.len()),
            )
            .await;
        let mut readable = Vec::new();
        for t in prepared.tables.clone() {
            let shown = t.to_string();
            if shown == AUDIT_TABLE {
                let rows = self.audit_rows(checked).await?;
                readable.push(ReadableTable {
                    name: t,
                    source: TableSource::Rows(rows),
                });
                continue;
            }
            if let Some(g) = grant.as_ref().filter(|g| g.terms.covers(&shown)) {
                // The grant decides what of this table is visible, and the policy decides the query with the
                // grant's terms in its context: a forbid wins over any grant.
                let parsed = TableName::parse(&shown).ok();
                let facts = match &parsed {
                    Some(t) => self.app.lakehouse.facts(t).await.map_err(internal)?,
                    None => None,
                };
                checked.require_table_under(
                    &shown,
                    facts,
                    Action::Query,
                    "the policy does not allow this query even under your grant; request_access to see \
                     which terms it allows",
                    g.terms.policy_context(&shown, &g.id),
                )?;
                let name = parsed.ok_or_else(|| internal("table name did not parse"))?;
                checked.note(
                    Action::Query,
                    &shown,
                    format!(
                        "covered by grant {} (purpose {}, until {})",
                        g.id, g.terms.purpose, g.terms.expires_at
                    ),
                );
                let table = self.app.lakehouse.load(&name).await.map_err(internal)?;
                readable.push(ReadableTable {
                    name,
                    source: TableSource::Governed(
                        table,
                        access::governance_of(g, &shown, &self.app.mask_secret),
                    ),
                });
                continue;
            }
            let next_step = self.request_hint(&t);
            let name = self
                .table_for(checked, &shown, Action::Query, &next_step)
                .await?;
            let table = self.app.lakehouse.load(&name).await.map_err(internal)?;
            readable.push(ReadableTable {
                name,
                source: TableSource::Iceberg(table),
            });
        }
        if let Some(g) = &grant {
            // Count the query against the grant's quotas atomically before it runs: concurrent queries cannot
            // overshoot a quota.
            let reserved = self
                .app
                .store
                .reserve_query(&g.id, g.terms.max_queries, g.terms.max_rows)
                .await
                .map_err(internal)?;
            if reserved.is_none() {
                let mut now = g.clone();
                if let Some(fresh) = self.app.store.get_grant(&g.id).await.map_err(internal)? {
                    now = fresh;
                }
                return Err(ToolError::Limit(format!(
                    "quota exceeded: {}",
                    now.quota_exhausted()
                        .unwrap_or_else(|| format!("grant {} has no quota left", g.id))
                )));
            }
        }
        progress.report(2, 3, "running the query".to_string()).await;
        let result = query::execute(
            prepared,
            readable,
            &self.app.engine,
            catalog_name,
            max_rows,
            cancel,
        )
        .await
        .map_err(query_error)?;
        if let Some(g) = &grant {
            // A revocation acknowledged while the query ran wins: no rows leave after it.
            let still_live = self
                .app
                .store
                .get_grant(&g.id)
                .await
                .map_err(internal)?
                .is_some_and(|g| g.is_live(self.app.clock.now()));
            if !still_live {
                return Err(ToolError::Denied {
                    reason: format!("grant {} was revoked or expired while the query ran", g.id),
                    next_step: "request_access again".to_string(),
                });
            }
            let usage = self
                .app
                .store
                .add_rows(&g.id, result.row_count as u64)
                .await
                .map_err(internal)?;
            checked.note(
                Action::Query,
                &g.terms.tables.join(","),
                format!(
                    "grant {} usage now {} queries, {} rows",
                    g.id, usage.queries, usage.rows
                ),
            );
        }
        progress
            .report(
                3,
                3,
                format!("{} row(s) in {} ms", result.row_count, result.elapsed_ms),
            )
            .await;
        checked.usage.rows = Some(result.row_count as u64);
        checked.usage.bytes = Some(result.result_bytes as u64);
        checked.usage.snapshots = result
            .snapshots
            .iter()
            .map(|s| {
                format!(
                    "{}@{}",
                    s.table,
                    s.snapshot_id.map_or("none".to_string(), |i| i.to_string())
                )
            })
            .collect();
        Ok(result)
    }
}

impl ParleyServer {
    /// The exact `request_access` call that would help with `table`.
    fn request_hint(&self, table: &TableName) -> String {
        let purposes = self
            .app
            .lakehouse
            .contract(table)
            .map(|c| c.contract.allowed_purposes())
            .unwrap_or_default();
        format!(
            "Call request_access with {{\"tables\": [\"{table}\"], \"purpose\": <one of the contract's allowed \
             purposes: {}>}}, then pass the grant_id to query.",
            if purposes.is_empty() {
                "see get_contract".to_string()
            } else {
                purposes.join(", ")
            }
        )
    }

    /// The grant a query runs under: the one named by `grant_id` (which must be the caller's, live, within
    /// quota), else the caller's live grant for the stated purpose that covers the query's tables, else none.
    async fn select_grant(
        &self,
        checked: &mut Checked<'_>,
        args: &QueryArgs,
        tables: &[TableName],
    ) -> Result<Option<crate::negotiation::Grant>, ToolError> {
        let now = self.app.clock.now();
        let grant = match &args.grant_id {
            Some(id) => {
                let g = self
                    .app
                    .store
                    .get_grant(id)
                    .await
                    .map_err(internal)?
                    .filter(|g| g.principal == checked.principal_id())
                    .ok_or_else(|| {
                        ToolError::BadRequest(format!(
                            "grant {id} not found among your grants; my_grants lists them"
                        ))
                    })?;
                if g.revoked_at.is_some() {
                    return Err(ToolError::Denied {
                        reason: format!("grant {id} was revoked"),
                        next_step: "request_access again".to_string(),
                    });
                }
                if !g.is_live(now) {
                    return Err(ToolError::Denied {
                        reason: format!("grant {id} expired at {}", g.terms.expires_at),
                        next_step: "request_access again".to_string(),
                    });
                }
                if let Some(p) = &args.purpose
                    && !p.eq_ignore_ascii_case(&g.terms.purpose)
                {
                    return Err(ToolError::BadRequest(format!(
                        "grant {id} is bound to purpose {}, not {p}",
                        g.terms.purpose
                    )));
                }
                Some(g)
            }
            None => match &args.purpose {
                Some(p) => self
                    .app
                    .store
                    .grants_for_principal(checked.principal_id())
                    .await
                    .map_err(internal)?
                    .into_iter()
                    .filter(|g| g.is_live(now) && g.terms.purpose.eq_ignore_ascii_case(p))
                    .find(|g| tables.iter().any(|t| g.terms.covers(&t.to_string()))),
                None => None,
            },
        };
        if let Some(g) = &grant
            && let Some(why) = g.quota_exhausted()
        {
            return Err(ToolError::Limit(format!("quota exceeded: {why}")));
        }
        Ok(grant)
    }
}

fn query_error(e: query::QueryError) -> ToolError {
    use query::QueryError as Q;
    match e {
        Q::Timeout(_) | Q::Memory { .. } => ToolError::Limit(e.to_string()),
        Q::Cancelled => ToolError::Cancelled,
        Q::NotAllowed(_) | Q::Syntax(_) | Q::Plan(_) => ToolError::BadRequest(e.to_string()),
        Q::Execution(_) => ToolError::BadRequest(e.to_string()),
    }
}

#[tool_router]
impl ParleyServer {
    #[tool(
        description = include_str!("../tools/list_tables.md"),
        input_schema = schema_for_type::<ListTablesArgs>(),
        output_schema = schema_for_output::<ListTablesResult>(),
        annotations(title = "List tables", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_tables(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let principal = self.principal(&ctx);
        self.app
            .gate
            .run_rendered(
                &principal,
                "list_tables",
                None,
                async |c| self.do_list_tables(c, parse_args(args)?).await,
                list_tables_reply,
            )
            .await
    }

    #[tool(
        description = include_str!("../tools/describe_table.md"),
        input_schema = schema_for_type::<TableArgs>(),
        output_schema = schema_for_output::<DescribeTableResult>(),
        annotations(title = "Describe a table", read_only_hint = true, open_world_hint = false)
    )]
    async fn describe_table(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let principal = self.principal(&ctx);
        self.app
            .gate
            .run_rendered(
                &principal,
                "describe_table",
                None,
                async |c| self.do_describe(c, parse_args(args)?).await,
                describe_reply,
            )
            .await
    }

    #[tool(
        description = include_str!("../tools/get_contract.md"),
        input_schema = schema_for_type::<TableArgs>(),
        output_schema = schema_for_output::<ContractResult>(),
        annotations(title = "Read a data contract", read_only_hint = true, open_world_hint = false)
    )]
    async fn get_contract(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let principal = self.principal(&ctx);
        self.app
            .gate
            .run_rendered(
                &principal,
                "get_contract",
                None,
                async |c| {
                    let args: TableArgs = parse_args(args)?;
                    self.do_get_contract(c, &args.table).await
                },
                contract_reply,
            )
            .await
    }

    #[tool(
        description = include_str!("../tools/query.md"),
        input_schema = schema_for_type::<QueryArgs>(),
        output_schema = schema_for_output::<QueryResult>(),
        annotations(title = "Run a read-only SQL query", read_only_hint = true, open_world_hint = false)
    )]
    async fn query(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let principal = self.principal(&ctx);
        // The purpose is read leniently here so that even a call with malformed arguments is audited with it.
        let purpose = args
            .get("purpose")
            .and_then(|p| p.as_str())
            .map(str::to_string);
        let cancel = ctx.ct.clone();
        let progress = Progress::of(&ctx);
        self.app
            .gate
            .run_rendered(
                &principal,
                "query",
                purpose,
                async |c| {
                    if let Some(sql) = args.get("sql").and_then(|s| s.as_str()) {
                        c.usage.sql = Some(sql.to_string());
                    }
                    self.do_query(c, parse_args(args)?, cancel, &progress).await
                },
                |r| {
                    let text = query_text(&r);
                    respond(&r, text)
                },
            )
            .await
    }
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{{{k}}}}}"), v)
    })
}

#[prompt_router]
impl ParleyServer {
    /// Explore what data exists about a topic: find tables, read their schemas and contracts.
    #[prompt(name = "explore_dataset")]
    async fn explore_dataset(
        &self,
        Parameters(a): Parameters<ExploreArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Vec<PromptMessage>, ErrorData> {
        self.audited(&ctx, "prompts/get", "explore_dataset").await?;
        Ok(vec![PromptMessage::new_text(
            Role::User,
            fill(
                include_str!("../prompts/explore_dataset.md"),
                &[("topic", &a.topic)],
            ),
        )])
    }

    /// Answer a question with data: find the tables, check the contracts, run the smallest query, cite snapshots.
    #[prompt(name = "answer_with_data")]
    async fn answer_with_data(
        &self,
        Parameters(a): Parameters<AnswerArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Vec<PromptMessage>, ErrorData> {
        self.audited(&ctx, "prompts/get", "answer_with_data")
            .await?;
        let purpose = a.purpose.unwrap_or_else(|| "not stated".to_string());
        Ok(vec![PromptMessage::new_text(
            Role::User,
            fill(
                include_str!("../prompts/answer_with_data.md"),
                &[("question", &a.question), ("purpose", &purpose)],
            ),
        )])
    }
}

const CONTRACT_SCHEME: &str = "contract://";
const GRANT_SCHEME: &str = "grant://";
const REQUEST_SCHEME: &str = "request://";

/// Resources that change (and can be subscribed to): a request when an owner decides it, a grant when it is
/// revoked.
fn changes(uri: &str) -> bool {
    let id = uri
        .strip_prefix(REQUEST_SCHEME)
        .or_else(|| uri.strip_prefix(GRANT_SCHEME));
    id.is_some_and(|id| !id.is_empty() && id.len() <= 100)
}

/// Most resources one `subscriptions/listen` stream may follow.
const MAX_LISTEN_URIS: usize = 1000;

// Logging and `resources/subscribe` are deprecated for 2026-07-28 (SEP-2577, subscriptions/listen) but are how
// clients on the 2025 protocols hear of changes, so both are served.
#[allow(deprecated)]
#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for ParleyServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("parley", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Parley gives governed access to lakehouse tables (Apache Iceberg). Discover tables with list_tables, \
             learn their columns with describe_table, read their data contract with get_contract (its usage terms \
             bind you), then run read-only SQL with query. Every call is authorized by policy and audited.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let principal = self.principal(&ctx);
        let lakehouse = &self.app.lakehouse;
        let resources = self
            .app
            .gate
            .run(&principal, "resources/list", None, async |c| {
                let mut out = Vec::new();
                for name in lakehouse.list_tables().await.map_err(internal)?.iter() {
                    let resource = Resource::Table(lakehouse.facts_of_listed(name));
                    let visible = c.peek(Action::Discover, &resource).allowed()
                        && c.peek(Action::ReadContract, &resource).allowed();
                    if visible && lakehouse.contract(name).is_some() {
                        out.push(
                            McpResource::new(
                                format!("{CONTRACT_SCHEME}{}/{}", name.namespace_str(), name.name),
                                format!("{name} contract"),
                            )
                            .with_description(format!("ODCS v3 data contract of {name}"))
                            .with_mime_type("application/yaml"),
                        );
                    }
                }
                Ok(out)
            })
            .await
            .map_err(|e| ErrorData::internal_error(e, None))?;
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let principal = self.principal_in(&context.extensions);
        self.attach_session(&principal, &context.peer);
    }

    /// The session's log level, which push notices (level `notice`) respect.
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.audited(&ctx, "logging/setLevel", &format!("{:?}", request.level))
            .await?;
        self.session.set_level(request.level);
        Ok(())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.audited(&ctx, "resources/subscribe", &request.uri)
            .await?;
        if !changes(&request.uri) {
            return Err(ErrorData::invalid_params(
                format!(
                    "{} never changes; subscribe to request://{{request_id}} (an owner decides) or                      grant://{{grant_id}} (an owner revokes)",
                    request.uri
                ),
                None,
            ));
        }
        if !self.session.subscribe(&request.uri) {
            return Err(ErrorData::invalid_params(
                "this session holds the most subscriptions allowed; unsubscribe from some first",
                None,
            ));
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.audited(&ctx, "resources/unsubscribe", &request.uri)
            .await?;
        self.session.unsubscribe(&request.uri);
        Ok(())
    }

    /// 2026-07-28 clients follow `request://` and `grant://` resources through `subscriptions/listen`.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|u| changes(u))
                .take(MAX_LISTEN_URIS)
                .cloned()
                .collect()
        });
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let principal = self.principal_in(&context.request_context().extensions);
        self.app
            .gate
            .run(&principal, "subscriptions/listen", None, async |c| {
                c.note(
                    Action::Discover,
                    "*",
                    "listens for changes to its own requests and grants".to_string(),
                );
                Ok(())
            })
            .await
            .map_err(|e| ErrorData::internal_error(e, None))?;
        let id = self
            .app
            .sessions
            .attach_listen(&principal.id, context.sink().clone());
        context.cancelled().await;
        self.app.sessions.detach_listen(&principal.id, id);
        Ok(())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("contract://{namespace}/{table}", "table contract")
                .with_description("ODCS v3 data contract of a table (YAML)")
                .with_mime_type("application/yaml"),
            ResourceTemplate::new("grant://{grant_id}", "access grant")
                .with_description(
                    "A grant: terms, usage, liveness and its W3C ODRL agreement (JSON); updated when revoked",
                )
                .with_mime_type("application/json"),
            ResourceTemplate::new("request://{request_id}", "access request")
                .with_description(
                    "One of your access requests: state, outcome and history (JSON, as access_status); updated \
                     when an owner decides it",
                )
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let principal = self.principal(&ctx);
        let uri = request.uri.clone();
        if let Some(id) = uri.strip_prefix(REQUEST_SCHEME) {
            let status = self
                .app
                .gate
                .run(&principal, "resources/read", None, async |c| {
                    self.request_resource(c, id).await
                })
                .await
                .map_err(|e| ErrorData::resource_not_found(e, None))?;
            return Ok(ReadResourceResult::new(vec![
                ResourceContents::text(
                    serde_json::to_string_pretty(&status).unwrap_or_default(),
                    request.uri,
                )
                .with_mime_type("application/json"),
            ])
            .into());
        }
        if let Some(id) = uri.strip_prefix(GRANT_SCHEME) {
            let grant = self
                .app
                .gate
                .run(&principal, "resources/read", None, async |c| {
                    self.grant_resource(c, id).await
                })
                .await
                .map_err(|e| ErrorData::resource_not_found(e, None))?;
            return Ok(ReadResourceResult::new(vec![
                ResourceContents::text(
                    serde_json::to_string_pretty(&grant).unwrap_or_default(),
                    request.uri,
                )
                .with_mime_type("application/json"),
            ])
            .into());
        }
        let table = uri
            .strip_prefix(CONTRACT_SCHEME)
            .map(|rest| rest.replace('/', "."))
            .unwrap_or_else(|| uri.clone());
        let yaml = self
            .app
            .gate
            .run(&principal, "resources/read", None, async |c| {
                if !uri.starts_with(CONTRACT_SCHEME) {
                    return Err(ToolError::BadRequest(format!(
                        "unknown resource {uri}; resources are contract://{{namespace}}/{{table}}"
                    )));
                }
                self.do_get_contract(c, &table).await.map(|r| r.yaml)
            })
            .await
            .map_err(|e| ErrorData::resource_not_found(e, None))?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(yaml, request.uri).with_mime_type("application/yaml"),
        ])
        .into())
    }
}

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
    CallToolResult, CompleteRequestParams, CompleteResult, CompletionInfo, ContentBlock,
    Implementation, JsonObject, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, PromptMessage,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference,
    Resource as McpResource, ResourceContents, ResourceTemplate, Role, ServerCapabilities,
    ServerConfig, SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{
    ErrorData, Peer, RoleServer, ServerHandler, prompt, prompt_router, tool, tool_handler,
    tool_router,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod access;
mod catalog;
mod commits;
mod discovery;
mod elicit;
mod iceberg_rest;
mod negotiate;
mod notify;
mod owner;
mod prompts;
mod quality;
mod query;
mod resources;
pub mod stdio;

pub use iceberg_rest::router as iceberg_router;

pub use discovery::DiscoveryCache;
use discovery::{Discoverable, Discovered, MAX_DISCOVERY_ENTRIES};
pub use notify::Sessions;
use resources::{MAX_LISTEN_URIS, changes, resource_templates};

use crate::catalog::authz::CatalogAction;
use crate::catalog::{Lakehouse, TableName};
use crate::config::Config;
use crate::gate::{Checked, Gate, ToolError};
use crate::identity::{Identity, Principal};
use crate::policy::{Action, Resource};
use crate::query::{QueryResult, ReadableTable, TableSource};

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
    pub store: Arc<dyn crate::negotiation::store::NegotiationStore>,
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
    /// Quality evaluations running, breaches told.
    pub monitor: QualityMonitor,
    /// Whether a principal owns a table, per policy version and contract set (see [`App::owns_a_table`]).
    pub owners: Owners,
}

pub use quality::Monitor as QualityMonitor;

/// See [`App::grants_hint`]: per principal, bounded (least recently used leave first).
pub type GrantsHint =
    moka::sync::Cache<String, (std::time::Instant, u64, Arc<Vec<crate::negotiation::Grant>>)>;

/// An empty cache for [`App::owners`], for [`MAX_DISCOVERY_ENTRIES`] principals.
pub fn owners_cache() -> Owners {
    moka::sync::Cache::new(MAX_DISCOVERY_ENTRIES)
}

/// Whether a principal owns a table, by principal, policy version and contract set: found once, however many ask.
pub type Owners = moka::sync::Cache<String, Arc<tokio::sync::OnceCell<bool>>>;

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

impl From<crate::catalog::CatalogError> for ToolError {
    fn from(e: crate::catalog::CatalogError) -> ToolError {
        match e {
            crate::catalog::CatalogError::Denied(_) => ToolError::Denied {
                reason: e.to_string(),
                next_step: "Ask the catalog's administrator for access.".to_string(),
            },
            other => ToolError::Internal(other.to_string()),
        }
    }
}

/// Tool schemas without schemars' integer formats (`uint64`, `int32`, ...): they are no JSON Schema formats, and
/// clients that validate formats (the MCP Inspector, ajv) warn on each. The type (`integer`) and `minimum` stay.
fn plain_number_formats(mut router: ToolRouter<ParleyServer>) -> ToolRouter<ParleyServer> {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                let numeric = map.get("format").and_then(|f| f.as_str()).is_some_and(|f| {
                    matches!(
                        f,
                        "int8"
                            | "int16"
                            | "int32"
                            | "int64"
                            | "int128"
                            | "uint"
                            | "uint8"
                            | "uint16"
                            | "uint32"
                            | "uint64"
                            | "uint128"
                            | "float"
                            | "double"
                    )
                });
                if numeric {
                    map.remove("format");
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let strip_object = |schema: &mut std::sync::Arc<JsonObject>| {
        let mut value = serde_json::Value::Object(schema.as_ref().clone());
        strip(&mut value);
        if let serde_json::Value::Object(map) = value {
            *schema = std::sync::Arc::new(map);
        }
    };
    for route in router.map.values_mut() {
        strip_object(&mut route.attr.input_schema);
        if let Some(output) = route.attr.output_schema.as_mut() {
            strip_object(output);
        }
    }
    router
}

/// The reply of a tool whose text is its result as pretty JSON.
fn json_reply<T: Serialize>(value: T) -> CallToolResult {
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    respond(&value, text)
}

/// The purpose a call states, read leniently so that even a call with malformed arguments is audited with it.
fn stated_purpose(args: &JsonObject) -> Option<String> {
    args.get("purpose")
        .and_then(|p| p.as_str())
        .map(str::to_string)
}

impl ParleyServer {
    /// The values completing `request`'s argument, those starting with what was typed (case-insensitive).
    async fn completions(
        &self,
        checked: &Checked<'_>,
        request: &CompleteRequestParams,
    ) -> Result<Vec<String>, ToolError> {
        let typed = request.argument.value.to_lowercase();
        let candidates: Vec<String> = match (&request.r#ref, request.argument.name.as_str()) {
            (Reference::Prompt(p), "purpose") if p.name == "answer_with_data" => {
                self.app.purposes.ids().map(str::to_string).collect()
            }
            (Reference::Resource(r), "namespace") if r.uri.starts_with("contract://") => self
                .discoverable(checked)
                .await?
                .namespaces()
                .await?
                .into_iter()
                .map(str::to_string)
                .collect(),
            (Reference::Resource(r), "table") if r.uri.starts_with("contract://") => {
                let namespace = request
                    .context
                    .as_ref()
                    .and_then(|c| c.arguments.as_ref())
                    .and_then(|a| a.get("namespace"))
                    .cloned();
                let discovered = self.discoverable(checked).await?;
                let (_, tables) = discovered
                    .page(namespace.as_deref(), None, 0, usize::MAX)
                    .await?;
                tables.iter().map(|t| t.name.name.clone()).collect()
            }
            _ => Vec::new(),
        };
        Ok(candidates
            .into_iter()
            .filter(|v| v.to_lowercase().starts_with(&typed))
            .collect())
    }

    /// The one way a tool runs: the caller's principal, then the gate — `body` gets the parsed arguments and acts
    /// under the caller's checked decisions, the gate writes the audit record — and `render` makes the reply
    /// while the record is made durable; the reply is returned only once it is. Errors are the agent-facing
    /// text of the tool error.
    async fn gated<A, T, O>(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &'static str,
        purpose: Option<String>,
        args: JsonObject,
        body: impl AsyncFnOnce(&mut Checked<'_>, A) -> Result<T, ToolError>,
        render: impl FnOnce(T) -> O,
    ) -> Result<O, String>
    where
        A: serde::de::DeserializeOwned,
    {
        let principal = self.principal(ctx);
        self.app
            .gate
            .run_rendered(
                &principal,
                tool,
                purpose,
                async |c| body(c, parse_args(args)?).await,
                render,
            )
            .await
    }
}

impl App {
    fn owner_key(&self, principal: &crate::identity::Principal) -> String {
        format!(
            "{}|{}|{principal:?}",
            self.gate.policy_version(),
            self.lakehouse.contracts_version()
        )
    }

    /// Whether `principal` owns a table, when that is already known for the policy and contracts in force (never
    /// before the contracts were first read: this does not wait for them).
    pub fn owns_a_table_known(&self, principal: &crate::identity::Principal) -> Option<bool> {
        if !self.lakehouse.contracts_ready() {
            return None;
        }
        self.owners.get(&self.owner_key(principal))?.get().copied()
    }

    /// Whether `principal` owns a table — may `decide_request` on the lakehouse or on a table with a contract —
    /// remembered per principal, policy version and contract set. Found once however many ask at once, on
    /// blocking threads (the tables spread over the cores, stopping at the first one owned), never on the
    /// threads answering MCP.
    pub async fn owns_a_table(self: &Arc<Self>, principal: &crate::identity::Principal) -> bool {
        let cell = self
            .owners
            .get_with(self.owner_key(principal), Default::default);
        let (app, principal) = (self.clone(), principal.clone());
        *cell
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || app.find_owned_table(&principal))
                    .await
                    .unwrap_or_else(|e| {
                        // Fails closed: no owners' tools, no publishing.
                        tracing::error!("finding whether a principal owns a table failed: {e}");
                        false
                    })
            })
            .await
    }

    /// [`App::owns_a_table`]'s work.
    fn find_owned_table(&self, principal: &crate::identity::Principal) -> bool {
        if self
            .gate
            .may(principal, Action::DecideRequest, &Resource::Lakehouse)
        {
            return true;
        }
        let started = std::time::Instant::now();
        let contracts = self.lakehouse.contracts();
        let tables: Vec<&str> = contracts.tables().collect();
        let found = std::sync::atomic::AtomicBool::new(false);
        crate::parallel::filter_map_chunks(&tables, 256, "finding an owned table", |t| {
            if found.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            let owns = crate::catalog::TableName::parse(t).is_ok_and(|name| {
                self.gate.may(
                    principal,
                    Action::DecideRequest,
                    &Resource::Table(self.lakehouse.facts_of_listed(&name)),
                )
            });
            if owns {
                found.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            None::<()>
        });
        let owns = found.load(std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            principal = %principal.id,
            owns,
            tables = tables.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "found whether a principal owns a table"
        );
        owns
    }

    /// Tells each session whose tool list no longer fits its caller (owners' tools listed or not) that it changed,
    /// after a reload or a decision. Where whether a caller owns a table is not known for the policy and contracts
    /// now in force, it is found first, apart, and the sessions told then.
    pub fn refresh_tool_lists(self: &Arc<Self>) {
        let unknown = self
            .sessions
            .refresh_tool_lists(|p| self.owns_a_table_known(p));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for principal in unknown {
            let app = self.clone();
            runtime.spawn(async move {
                app.owns_a_table(&principal).await;
                app.sessions
                    .refresh_tool_lists(|p| app.owns_a_table_known(p));
            });
        }
    }
}

/// The tools only a table's owners can use; listed to principals who own a table.
pub const OWNER_TOOLS: [&str; 5] = [
    "review_requests",
    "decide_request",
    "revoke_grant",
    "table_consumers",
    "publish_contract",
];

impl ParleyServer {
    /// A server over the shared application state.
    pub fn new(app: Arc<App>) -> ParleyServer {
        ParleyServer {
            app,
            session: Arc::default(),
            tool_router: plain_number_formats(
                Self::catalog_router()
                    + Self::query_router()
                    + Self::negotiate_router()
                    + Self::owner_router(),
            ),
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
            self.app.sessions.attach(principal, &self.session, peer);
        }
    }

    /// Passes a protocol request that touches no table (a prompt, a subscription, a log level) through the gate, so
    /// it is audited like every other request a principal makes; refused only when its record cannot be written.
    /// A request refused before any handler runs (`why`, answered as invalid params), audited first with `note`;
    /// an internal error instead when its record cannot be written.
    async fn refuse_audited(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: &str,
        note: String,
        why: String,
    ) -> ErrorData {
        let principal = self.principal(ctx);
        let audited = self
            .app
            .gate
            .run(
                &principal,
                method,
                None,
                async |c| -> Result<(), ToolError> {
                    c.note(Action::Discover, "*", note);
                    Err(ToolError::BadRequest(why.clone()))
                },
            )
            .await;
        match audited {
            // Not written: the refusal says so, as every call's does.
            Err(e) if e != why => ErrorData::internal_error(e, None),
            _ => ErrorData::invalid_params(why, None),
        }
    }

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
}

// Logging and `resources/subscribe` are deprecated for 2026-07-28 (SEP-2577, subscriptions/listen) but are how
// clients on the 2025 protocols hear of changes, so both are served.
#[allow(deprecated)]
#[tool_handler(router = self.tool_router)]
impl ServerHandler for ParleyServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_prompts()
                .enable_completions()
                .build(),
        )
        .with_server_info(Implementation::new("parley", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Parley gives governed access to lakehouse tables (Apache Iceberg). Discover tables with list_tables, \
             learn their columns with describe_table, read their data contract with get_contract (its usage terms \
             bind you), then run read-only SQL with query. Every call is authorized by policy and audited.",
        )
    }

    /// A call of a tool this server does not have is refused as rmcp refuses it (invalid params), and audited
    /// first, like every call: the owners' view of who tried what includes the calls that named no tool.
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
        if self.tool_router.has_route(&request.name) {
            let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
            return self.tool_router.call(call).await;
        }
        let name: String = request.name.chars().take(64).collect();
        let why = format!("no tool named {name:?}; tools/list names the tools you can use");
        Err(self
            .refuse_audited(
                &context,
                "tools/call",
                format!("called a tool that does not exist: {name:?}"),
                why,
            )
            .await)
    }

    /// The prompts, the same for every caller.
    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, ErrorData> {
        let hints = ctx
            .protocol_version()
            .is_some_and(|v| v >= rmcp::model::ProtocolVersion::V_2026_07_28);
        Ok(rmcp::model::ListPromptsResult {
            result_type: Some(rmcp::model::ResultType::COMPLETE),
            prompts: self.prompt_router.list_all(),
            meta: None,
            next_cursor: None,
            ttl_ms: hints.then_some(0),
            cache_scope: hints.then_some(rmcp::model::CacheScope::Public),
        })
    }

    /// A prompt is got through the router, which audits the request. One the router would refuse before that —
    /// no such prompt, or arguments that do not fit it — is audited here first, then refused as rmcp refuses it
    /// (invalid params), so the log holds every `prompts/get`.
    async fn get_prompt(
        &self,
        request: rmcp::model::GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, ErrorData> {
        if let Some(why) = prompts::refusal(&request) {
            let note = format!("prompts/get refused: {why}");
            return Err(self
                .refuse_audited(&context, "prompts/get", note, why)
                .await);
        }
        let call = rmcp::handler::server::prompt::PromptContext::new(
            self,
            request.name,
            request.arguments,
            context,
        );
        self.prompt_router.get_prompt(call).await
    }

    /// A request rmcp could not decode lands here. For a method MCP defines, its params were what failed to parse:
    /// answer `-32602` (invalid params) saying what was wrong, not `-32601` (method not found), which would tell
    /// the client the server lacks the method (an outside test found `logging/setLevel` with a bad level answered
    /// so).
    async fn on_custom_request(
        &self,
        request: rmcp::model::CustomRequest,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CustomResult, ErrorData> {
        match invalid_params(&request.method, request.params.as_ref()) {
            Some(why) => Err(ErrorData::invalid_params(why, None)),
            None => Err(ErrorData::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                format!("no method {}", request.method),
                None,
            )),
        }
    }

    /// The tools the caller can use: owners' tools only for a principal who owns a table (the policy's
    /// `decide_request` on one), and output schemas only when configured (`output_schemas`), so an agent's context
    /// holds what it can act on. A session is told (`notifications/tools/list_changed`) when its list changes.
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, ErrorData> {
        let principal = self.principal(&ctx);
        let owner = match self.app.owns_a_table_known(&principal) {
            Some(owner) => owner,
            None => {
                let app = self.app.clone();
                let mut found = tokio::spawn(async move { app.owns_a_table(&principal).await });
                let wait = std::time::Duration::from_millis(self.app.config.tools_list_wait_ms);
                // A wait of 0 does not look at all (the answer is then always the later notification).
                let known = match wait.is_zero() {
                    true => None,
                    false => tokio::time::timeout(wait, &mut found).await.ok(),
                };
                match known {
                    Some(owner) => owner.unwrap_or(false),
                    None => {
                        // Listed without the owners' tools (recorded before the finding can compare with it);
                        // once known, the session is told if its caller owns a table after all.
                        self.session.listed_as_owner(false);
                        let app = self.app.clone();
                        tokio::spawn(async move {
                            _ = found.await;
                            app.refresh_tool_lists();
                        });
                        false
                    }
                }
            }
        };
        self.session.listed_as_owner(owner);
        let full = self.app.config.output_schemas;
        let tools = self
            .tool_router
            .list_all()
            .into_iter()
            .filter(|t| owner || !OWNER_TOOLS.contains(&t.name.as_ref()))
            .map(|mut t| {
                if !full {
                    t.output_schema = None;
                }
                t
            })
            .collect();
        let hints = ctx
            .protocol_version()
            .is_some_and(|v| v >= rmcp::model::ProtocolVersion::V_2026_07_28);
        Ok(rmcp::model::ListToolsResult {
            result_type: Some(rmcp::model::ResultType::COMPLETE),
            tools,
            meta: None,
            next_cursor: None,
            ttl_ms: hints.then_some(0),
            // Per principal: never served to another user from a cache.
            cache_scope: hints.then_some(rmcp::model::CacheScope::Private),
        })
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.contract_resources(&ctx).await
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
        if let Some(rest) = request.uri.strip_prefix(resources::CONTRACT_SCHEME) {
            // A contract changes when an owner publishes a version: followed by those who may read it, and
            // answered like a read for the rest (a table the caller may not discover is a missing one).
            let table = rest.replace('/', ".");
            let principal = self.principal(&ctx);
            self.app
                .gate
                .run(&principal, "resources/subscribe", None, async |c| {
                    self.do_get_contract(c, &table).await.map(|_| ())
                })
                .await
                .map_err(|e| ErrorData::resource_not_found(e, None))?;
            if !self.session.subscribe(&request.uri) {
                return Err(ErrorData::invalid_params(
                    "this session holds the most subscriptions allowed; unsubscribe from some first",
                    None,
                ));
            }
            return Ok(());
        }
        self.audited(&ctx, "resources/subscribe", &request.uri)
            .await?;
        if !changes(&request.uri) {
            return Err(ErrorData::invalid_params(
                format!(
                    "{} never changes; subscribe to request://{{request_id}} (an owner decides), \
                     grant://{{grant_id}} (an owner revokes) or contract://{{namespace}}/{{table}} (an owner \
                     publishes a version)",
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

    /// Completions for prompt and resource-template arguments, from what the caller may see: purposes for
    /// `answer_with_data`'s `purpose`, the caller's discoverable namespaces and tables for `contract://`.
    async fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let principal = self.principal(&ctx);
        let values = self
            .app
            .gate
            .run(&principal, "completion/complete", None, async |c| {
                c.note(
                    Action::Discover,
                    "*",
                    format!("completion of {}", request.argument.name),
                );
                self.completions(c, &request).await
            })
            .await
            .map_err(|e| ErrorData::internal_error(e, None))?;
        let total = values.len();
        let shown: Vec<String> = values
            .into_iter()
            .take(CompletionInfo::MAX_VALUES)
            .collect();
        let has_more = total > shown.len();
        let info = CompletionInfo::with_pagination(shown, u32::try_from(total).ok(), has_more)
            .map_err(|e| ErrorData::internal_error(e, None))?;
        Ok(CompleteResult::new(info))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(resource_templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.read(request, &ctx).await
    }
}

/// Why the params of a request for `method`, a method MCP defines, do not parse (serde's words), or `None` for a
/// method this server does not know.
#[allow(deprecated)] // logging/setLevel: deprecated for 2026-07-28, still served to 2025 clients
fn invalid_params(method: &str, params: Option<&serde_json::Value>) -> Option<String> {
    use rmcp::model as m;
    fn why<T: serde::de::DeserializeOwned>(params: Option<&serde_json::Value>) -> String {
        let parsed = match params {
            Some(p) => serde_json::from_value::<T>(p.clone()).err(),
            None => serde_json::from_value::<T>(serde_json::json!({})).err(),
        };
        match parsed {
            Some(e) => e.to_string(),
            None => "they do not match the method's schema".to_string(),
        }
    }
    let why = match method {
        "initialize" => why::<m::InitializeRequestParams>(params),
        "logging/setLevel" => why::<m::SetLevelRequestParams>(params),
        "completion/complete" => why::<m::CompleteRequestParams>(params),
        "prompts/get" => why::<m::GetPromptRequestParams>(params),
        "resources/read" => why::<m::ReadResourceRequestParams>(params),
        "resources/subscribe" => why::<m::SubscribeRequestParams>(params),
        "resources/unsubscribe" => why::<m::UnsubscribeRequestParams>(params),
        "tools/call" => why::<m::CallToolRequestParams>(params),
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
            why::<m::PaginatedRequestParams>(params)
        }
        "ping" => "ping takes no params".to_string(),
        _ => return None,
    };
    Some(format!("invalid params for {method}: {why}"))
}

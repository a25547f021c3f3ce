//! The `query` tool: one read-only SQL query over what the caller may query, under a grant or not, and the
//! `parley.audit_log` table it can read. Its own tool router, joined with the others in `ParleyServer::new`.

use super::*;
use crate::audit::AuditResource;
use crate::catalog::TableName;

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
    /// that purpose, if any (of several, the widest).
    #[serde(default)]
    pub purpose: Option<String>,
    /// A grant from `request_access` / `my_grants`: its tables are seen as the grant allows (columns, masks,
    /// rows).
    #[serde(default)]
    pub grant_id: Option<String>,
    /// Most bytes of reply (default 8192, ~2,000 tokens; up to the server's ceiling).
    #[serde(default)]
    pub max_bytes: Option<u32>,
}

/// Rows reserved for a query under a grant's row quota ([`crate::negotiation::service::Negotiations::start_query`]),
/// given back if the query ends without settling them: it failed, or its caller went away.
struct RowsHeld {
    store: std::sync::Arc<dyn crate::negotiation::store::NegotiationStore>,
    grant: String,
    rows: Option<u64>,
}

impl RowsHeld {
    /// Gives the reserved rows back before the caller answers, so the grant's usage is true when the caller
    /// reads it next (the `Drop` fallback, for a caller that went away, gives them back in the background).
    async fn give_back(mut self) {
        if let Some(rows) = self.rows.take() {
            give_back(self.store.clone(), std::mem::take(&mut self.grant), rows).await;
        }
    }
}

impl Drop for RowsHeld {
    fn drop(&mut self) {
        if let Some(rows) = self.rows.take().filter(|r| *r > 0)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(give_back(
                self.store.clone(),
                std::mem::take(&mut self.grant),
                rows,
            ));
        }
    }
}

/// Settles `rows` reserved under `grant` as unused.
async fn give_back(
    store: std::sync::Arc<dyn crate::negotiation::store::NegotiationStore>,
    grant: String,
    rows: u64,
) {
    if rows > 0
        && let Err(e) = store.settle_rows(&grant, rows, 0).await
    {
        tracing::warn!(%grant, "cannot give back {rows} reserved rows: {e}");
    }
}

/// What a reply spends besides its rows (column names, the summary line, structured fields).
const REPLY_OVERHEAD: usize = 1536;

/// Renders query rows as a compact tab-separated table for the model.
pub(super) fn query_text(r: &QueryResult) -> String {
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
        .map(crate::query::SnapshotRead::label)
        .collect();
    out.push_str(&format!(
        "({} row{}{}; {} ms; snapshots: {})",
        r.row_count,
        if r.row_count == 1 { "" } else { "s" },
        match (r.truncated, r.total_rows) {
            (true, Some(t)) => format!(
                ", truncated by {} of {t} total{}",
                r.truncated_by.as_deref().unwrap_or("a cap"),
                if r.truncated_by.as_deref() == Some("max_bytes") {
                    " — aggregate or filter, or pass a larger max_bytes"
                } else {
                    ""
                }
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
pub(super) struct Progress {
    token: Option<ProgressToken>,
    peer: Peer<RoleServer>,
}

impl Progress {
    pub(super) fn of(ctx: &RequestContext<RoleServer>) -> Progress {
        Progress {
            token: ctx.meta.get_progress_token(),
            peer: ctx.peer.clone(),
        }
    }

    pub(super) async fn report(&self, done: u32, total: u32, message: String) {
        if let Some(token) = &self.token {
            let note = ProgressNotificationParam::new(token.clone(), done as f64)
                .with_total(total as f64)
                .with_message(message);
            // Progress is advisory: a client that went away must not fail the call.
            let _ = self.peer.notify_progress(note).await;
        }
    }
}

pub(super) fn query_error(e: crate::query::QueryError) -> ToolError {
    use crate::query::QueryError as Q;
    match e {
        Q::Timeout(_) | Q::Queued(..) | Q::Memory { .. } => ToolError::Limit(e.to_string()),
        Q::Cancelled => ToolError::Cancelled,
        Q::NotAllowed(_) | Q::Syntax(_) | Q::Plan(_) => ToolError::BadRequest(e.to_string()),
        Q::Execution(_) => ToolError::BadRequest(e.to_string()),
    }
}

impl ParleyServer {
    /// The audit records `checked`'s principal may see, as rows of `parley.audit_log`: records all of whose tables
    /// the policy lets them `read_audit` (owners), nothing else.
    pub(super) async fn audit_rows(
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
                // A record on no table (`*`) or on something that is not a table is shown to no one here.
                let names = AuditResource::parse(resource);
                !names.names().is_empty()
                    && names.names().iter().all(|table| {
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

    pub(super) async fn do_query(
        &self,
        checked: &mut Checked<'_>,
        args: QueryArgs,
        cancel: tokio_util::sync::CancellationToken,
        progress: &Progress,
    ) -> Result<QueryResult, ToolError> {
        let limits = &self.app.config.query;
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
        let reply_bytes = match args.max_bytes {
            None => limits.default_reply_bytes,
            Some(n) if (n as usize) < 2 * REPLY_OVERHEAD => {
                return Err(ToolError::BadRequest(format!(
                    "max_bytes {n} leaves no room for rows; give at least {}",
                    2 * REPLY_OVERHEAD
                )));
            }
            Some(n) if n as usize > limits.max_result_bytes => {
                return Err(ToolError::BadRequest(format!(
                    "max_bytes {n} is above this server's ceiling of {}; aggregate in SQL or ask for fewer rows",
                    limits.max_result_bytes
                )));
            }
            Some(n) => n as usize,
        };
        // The rows appear twice in the reply (the text's table and the structured JSON): each copy gets half.
        let row_bytes = reply_bytes.saturating_sub(REPLY_OVERHEAD) / 2;
        let prepared = self
            .app
            .engine
            .prepare(&checked.principal().id, &args.sql)
            .map_err(query_error)?;
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
            if let Some(g) = grant.as_ref().filter(|g| g.terms().covers(&shown)) {
                // The grant decides what of this table is visible, and the policy decides the query with the
                // grant's terms in its context: a forbid wins over any grant.
                let parsed = TableName::parse(&shown).ok();
                let facts = match &parsed {
                    Some(t) => self.facts_for(checked, t).await?,
                    None => None,
                };
                let next_step = super::catalog::quality_hint(
                    facts.as_ref(),
                    "the policy does not allow this query even under your grant; request_access to see \
                     which terms it allows",
                );
                checked.require_table_under(
                    &shown,
                    facts,
                    Action::Query,
                    &next_step,
                    g.terms().policy_context(&shown, g.id()),
                )?;
                let name = parsed.ok_or_else(|| internal("table name did not parse"))?;
                self.require_catalog_read(checked, &name).await?;
                checked.note(
                    Action::Query,
                    &shown,
                    format!(
                        "covered by grant {} (purpose {}, until {})",
                        g.id(),
                        g.terms().purpose,
                        g.terms().expires_at
                    ),
                );
                let table = self.app.lakehouse.load(&name).await.map_err(internal)?;
                self.note_snapshot(&name, &table).await;
                readable.push(ReadableTable {
                    name,
                    source: TableSource::Governed(
                        table,
                        governance_of(g, &shown, &self.app.mask_secret),
                    ),
                });
                continue;
            }
            let next_step = self.request_hint(&t);
            let name = self
                .table_for(checked, &shown, Action::Query, &next_step)
                .await?;
            let table = self.app.lakehouse.load(&name).await.map_err(internal)?;
            self.note_snapshot(&name, &table).await;
            readable.push(ReadableTable {
                name,
                source: TableSource::Iceberg(table),
            });
        }
        // Under a grant the query is counted before it runs, and under a row quota it runs capped at the rows
        // reserved for it; rows it does not return are given back (`held`, also when it fails or is cancelled).
        let asked_rows = max_rows;
        let mut max_rows = max_rows;
        let mut held = None;
        if let Some(g) = &grant {
            match self.flows().start_query(g, max_rows as u64).await? {
                Ok(rows) => {
                    if let Some(r) = rows {
                        max_rows = max_rows.min(usize::try_from(r).unwrap_or(usize::MAX));
                    }
                    held = Some(RowsHeld {
                        store: self.app.store.clone(),
                        grant: g.id().to_string(),
                        rows,
                    });
                }
                Err(used) => {
                    let why = match used {
                        crate::negotiation::Unusable::QuotaUsed(why) => why,
                        _ => format!("grant {} has no quota left", g.id()),
                    };
                    return Err(ToolError::Limit(format!("quota exceeded: {why}")));
                }
            }
        }
        progress.report(2, 3, "running the query".to_string()).await;
        let executed = crate::query::execute(
            prepared,
            readable,
            &self.app.engine,
            &checked.principal().id,
            max_rows,
            row_bytes,
            cancel,
        )
        .await;
        let mut result = match executed {
            Ok(result) => result,
            Err(e) => {
                // The rows reserved are given back before the error is answered.
                if let Some(h) = held.take() {
                    h.give_back().await;
                }
                return Err(match (query_error(e), &grant) {
                    // A query the grant's view cannot answer (a column outside it): say which grant it ran under.
                    (ToolError::BadRequest(m), Some(g)) => ToolError::BadRequest(format!(
                        "{m} (the query ran under your grant {} for purpose {}, which shows {}; my_grants lists your \
                     grants: pass grant_id to choose one, or request_access for more)",
                        g.id(),
                        g.terms().purpose,
                        if g.terms().columns.is_empty() {
                            "all columns".to_string()
                        } else {
                            g.terms().columns.join(", ")
                        }
                    )),
                    (e, _) => e,
                });
            }
        };
        if let Some(g) = &grant {
            let reserved = held.take().and_then(|mut h| h.rows.take());
            // Cut by the quota only when it left fewer rows than asked for; else the caller's own cap cut it.
            if let Some(r) = reserved
                && result.truncated
                && result.truncated_by.as_deref() == Some("max_rows")
                && usize::try_from(r).is_ok_and(|r| r < asked_rows)
            {
                result.truncated_by = Some(format!(
                    "grant {}'s row quota ({} row{} left of {})",
                    g.id(),
                    r,
                    if r == 1 { "" } else { "s" },
                    g.terms().max_rows.unwrap_or(r)
                ));
            }
            // A revocation acknowledged while the query ran wins: no rows leave after it.
            let usage = match self
                .flows()
                .end_query(g, reserved, result.row_count as u64)
                .await?
            {
                Ok(usage) => usage,
                Err(_) => {
                    return Err(ToolError::Denied {
                        reason: format!(
                            "grant {} was revoked or expired while the query ran",
                            g.id()
                        ),
                        next_step: "request_access again".to_string(),
                    });
                }
            };
            checked.note(
                Action::Query,
                &TableName::join(&g.terms().tables, ","),
                format!(
                    "grant {} usage now {} queries, {} rows",
                    g.id(),
                    usage.queries,
                    usage.rows
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
            .map(crate::query::SnapshotRead::label)
            .collect();
        Ok(result)
    }

    /// The exact `request_access` call that would help with `table`.
    pub(super) fn request_hint(&self, table: &TableName) -> String {
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
    pub(super) async fn select_grant(
        &self,
        checked: &mut Checked<'_>,
        args: &QueryArgs,
        tables: &[TableName],
    ) -> Result<Option<crate::negotiation::Grant>, ToolError> {
        use crate::negotiation::Unusable;
        let now = self.app.clock.now();
        let me = checked.principal_id();
        let purpose = args.purpose.as_deref();
        let Some(id) = &args.grant_id else {
            // No grant named: the caller's live grant for the stated purpose that covers a table queried.
            let Some(p) = purpose else {
                return Ok(None);
            };
            let grants = self
                .app
                .store
                .grants_for_principal(me)
                .await
                .map_err(internal)?;
            // Of several, the one covering most of the query's tables, then the widest (all columns, else the
            // most), then the newest: an older, narrower grant for the same purpose never shadows a wider one.
            let found = grants
                .into_iter()
                .filter(|g| g.is_live(now) && g.terms().purpose.eq_ignore_ascii_case(p))
                .filter(|g| tables.iter().any(|t| g.terms().covers(&t.to_string())))
                .max_by_key(|g| {
                    let covered = tables
                        .iter()
                        .filter(|t| g.terms().covers(&t.to_string()))
                        .count();
                    let width = match g.terms().columns.len() {
                        0 => usize::MAX,
                        n => n,
                    };
                    (covered, width, g.created_at())
                });
            if let Some(why) = found.as_ref().and_then(|g| g.quota_exhausted()) {
                return Err(ToolError::Limit(format!("quota exceeded: {why}")));
            }
            return Ok(found);
        };
        let not_found = || {
            ToolError::BadRequest(format!(
                "grant {id} not found among your grants; my_grants lists them"
            ))
        };
        let grant = self
            .app
            .store
            .get_grant(id)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        let again = || "request_access again".to_string();
        match grant.usable_for(me, purpose, now) {
            Ok(()) => Ok(Some(grant)),
            Err(Unusable::NotYours) => Err(not_found()),
            Err(Unusable::Revoked) => Err(ToolError::Denied {
                reason: format!("grant {id} was revoked"),
                next_step: again(),
            }),
            Err(Unusable::Expired(at)) => Err(ToolError::Denied {
                reason: format!("grant {id} expired at {at}"),
                next_step: again(),
            }),
            Err(Unusable::OtherPurpose(bound)) => Err(ToolError::BadRequest(format!(
                "grant {id} is bound to purpose {bound}, not {}",
                purpose.unwrap_or_default()
            ))),
            Err(Unusable::QuotaUsed(why)) => {
                Err(ToolError::Limit(format!("quota exceeded: {why}")))
            }
        }
    }
}

#[tool_router(router = query_router, vis = "pub(super)")]
impl ParleyServer {
    #[tool(
        description = include_str!("../../tools/query.md"),
        input_schema = schema_for_type::<QueryArgs>(),
        output_schema = schema_for_output::<QueryResult>(),
        annotations(title = "Run a read-only SQL query", read_only_hint = true, open_world_hint = false)
    )]
    async fn query(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let cancel = ctx.ct.clone();
        let progress = Progress::of(&ctx);
        self.gated(
            &ctx,
            "query",
            stated_purpose(&args),
            args,
            async |c, args: JsonObject| {
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

/// The masks of `table` in a grant, for the query engine.
fn governance_of(
    grant: &crate::negotiation::Grant,
    table: &str,
    secret: &str,
) -> crate::query::Governance {
    use crate::query::ColumnMask;
    let masks: std::collections::BTreeMap<String, ColumnMask> = grant
        .terms()
        .columns_of(table)
        .into_iter()
        .filter_map(|c| {
            grant.terms().mask_of(table, c).map(|m| {
                (
                    c.to_string(),
                    match m {
                        crate::negotiation::Mask::Hash => ColumnMask::Hash,
                        crate::negotiation::Mask::Redact => ColumnMask::Redact,
                        crate::negotiation::Mask::YearOnly => ColumnMask::YearOnly,
                    },
                )
            })
        })
        .collect();
    crate::query::Governance {
        columns: grant
            .terms()
            .columns_of(table)
            .into_iter()
            .map(str::to_string)
            .collect(),
        masks,
        row_filter: grant
            .terms()
            .row_filter
            .as_ref()
            .map(|r| (r.column.clone(), r.values.clone())),
        // A server-side secret keeps hashed values from being reversed by hashing guesses; the grant id keeps
        // hashes from linking across grants.
        salt: crate::audit::digest(&format!("parley-mask:{secret}:{}", grant.id())),
    }
}

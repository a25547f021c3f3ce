//! Commits through Parley's Iceberg REST endpoint, checked against the table's data contract before they land.
//!
//! A commit (an engine's `updateTable`: pyiceberg, Spark, Trino pointed at `/iceberg/v1`) is staged on the table's
//! current metadata, and its schema change classified by Iceberg's rules (`compat::schema_changes`). When the
//! table's contract promises a stable schema (`slaProperties: schemaStability: stable`) and the change breaks a
//! column that consumers depend on — a live grant covering it, or a principal whose query read the table within
//! [`CONSUMER_WINDOW_DAYS`] — the commit is refused (409 `CommitFailedException`) naming the clause, the columns,
//! the consumers and how to proceed. Otherwise it lands, and the holders of live grants on the table get a notice
//! (`my_notices`, pushed to their sessions) saying what changed.
//!
//! Invariants: only the table's owners (the policy's `decide_request` on it) commit through Parley; every commit,
//! landed or refused, leaves one audit record naming the changes; a refused commit writes nothing.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Value, json};

use super::notify::Notice;
use super::{ParleyServer, ToolError};
use crate::catalog::TableName;
use crate::catalog::commit::{self, CommitError, UpdateTableRequest};
use crate::compat::{Impact, SchemaChange, describe};
use crate::gate::Checked;
use crate::negotiation::store::{EventKind, table_subject};
use crate::policy::Action;

/// Drift already announced: (table, contract version, the drift in words) — whichever tool finds it. Per process:
/// a restart announces a drift that is still there once more.
static ANNOUNCED: LazyLock<Mutex<HashSet<(String, String, String)>>> =
    LazyLock::new(Default::default);

/// How far back a query makes its principal a consumer of the table it read.
pub const CONSUMER_WINDOW_DAYS: i64 = 30;

/// Who depends on a table's columns.
struct Consumers {
    /// Live grants covering an affected column: (grant id, holder).
    grants: Vec<(String, String)>,
    /// Principals who read the table within the window.
    readers: BTreeSet<String>,
}

impl Consumers {
    fn principals(&self) -> BTreeSet<&str> {
        self.grants
            .iter()
            .map(|(_, p)| p.as_str())
            .chain(self.readers.iter().map(String::as_str))
            .collect()
    }
}

fn commit_error(e: CommitError) -> ToolError {
    match e {
        CommitError::Conflict(_) => ToolError::Conflict(e.to_string()),
        CommitError::Invalid(_) => ToolError::BadRequest(e.to_string()),
        CommitError::Unsupported(m) => ToolError::BadRequest(m),
        CommitError::Failed(m) => ToolError::Internal(m),
    }
}

impl ParleyServer {
    /// Stages, checks and lands one commit to the table the caller names `shown`; answers the Iceberg REST
    /// `LoadTableResult` of the new metadata.
    pub(super) async fn do_commit(
        &self,
        checked: &mut Checked<'_>,
        shown: &str,
        body: &[u8],
    ) -> Result<Value, ToolError> {
        let name = self
            .table_for(
                checked,
                shown,
                Action::DecideRequest,
                "Only the table's owners commit changes to it through Parley.",
            )
            .await?;
        let request: UpdateTableRequest = serde_json::from_slice(body).map_err(|e| {
            ToolError::BadRequest(format!(
                "not an Iceberg updateTable request ({{\"requirements\": [...], \"updates\": [...]}}): {e}"
            ))
        })?;
        let lakehouse = &self.app.lakehouse;
        let current = lakehouse
            .load_for_commit(&name)
            .await
            .map_err(ToolError::from)?;
        let staged = commit::stage(&current, &request).map_err(commit_error)?;
        commit::check_files(&current, &staged, &request)
            .await
            .map_err(commit_error)?;
        let mut changes = crate::compat::schema_changes(
            current.metadata().current_schema(),
            staged.current_schema(),
        );
        changes.extend(crate::compat::partition_changes(
            current.metadata(),
            &staged,
        ));
        let contract = lakehouse.contract(&name);
        // Breaking by Iceberg's rules, on a column the contract in force promises: a column the contract does
        // not name is not its business (a new contract version that drops a column releases it).
        let promised: BTreeSet<&str> = contract
            .iter()
            .flat_map(|c| c.contract.columns().map(|p| p.name.as_str()))
            .collect();
        let breaking: Vec<&SchemaChange> = changes
            .iter()
            .filter(|c| c.impact == Impact::Breaking && promised.contains(c.column.as_str()))
            .collect();
        let clause = contract
            .as_ref()
            .and_then(|c| c.contract.stable_schema_clause());
        // Consumers matter only to a breaking change under the promise: only then are grants and the audit log
        // read.
        let consumers = match &clause {
            Some(_) if !breaking.is_empty() => {
                let columns: BTreeSet<&str> = breaking.iter().map(|c| c.column.as_str()).collect();
                Some(
                    self.consumers(&name, &columns, checked.principal_id())
                        .await?,
                )
            }
            _ => None,
        };
        if let (Some(clause), Some(consumers)) = (&clause, &consumers)
            && !consumers.principals().is_empty()
        {
            let what = describe(breaking.iter().copied());
            let who = consumers.principals();
            let grants = if consumers.grants.is_empty() {
                String::new()
            } else {
                let ids: Vec<&str> = consumers.grants.iter().map(|(id, _)| id.as_str()).collect();
                format!("; grants {}", ids.join(", "))
            };
            let message = format!(
                "commit refused by the data contract of {name}: {clause} promises a stable schema, and this \
                 commit makes breaking changes ({what}) that {} consumer(s) depend on (live grants and reads in \
                 the last {CONSUMER_WINDOW_DAYS} days: {}{grants}). To proceed, publish a new major version of \
                 the contract that no longer promises these columns, with an effective date at least its \
                 notice period away (the MCP tool `publish_contract`, or `parley contract publish NEW.yaml --effective DATE`), and commit after that \
                 date, or make the change compatible (add a new optional column instead of changing this one).",
                who.len(),
                who.iter().copied().collect::<Vec<_>>().join(", "),
            );
            let now = self.app.clock.now();
            let pending: Vec<String> = lakehouse
                .contract_versions(&name)
                .iter()
                .filter_map(|v| {
                    let from = v.from.filter(|f| *f > now)?;
                    Some(format!(
                        " Version {} of the contract is pending: it takes effect {}.",
                        v.loaded()?.contract.version,
                        from.to_rfc3339()
                    ))
                })
                .collect();
            let message = message + &pending.concat();
            checked.note(Action::DecideRequest, &name.to_string(), message.clone());
            return Err(ToolError::Conflict(message));
        }
        let location = lakehouse
            .land(&name, &current, &staged, &request)
            .await
            .map_err(commit_error)?;
        let summary = if changes.is_empty() {
            "no schema change".to_string()
        } else {
            describe(&changes)
        };
        checked.note(
            Action::DecideRequest,
            &name.to_string(),
            format!("commit landed on {name}: {summary}"),
        );
        if !changes.is_empty() {
            // Told as Iceberg sees it: dropping a column the contract never promised still breaks a query
            // that names it.
            let breaks = changes.iter().any(|c| c.impact == Impact::Breaking);
            self.tell_consumers(&name, checked.principal_id(), &summary, breaks)
                .await;
        }
        // The new snapshot is checked against the contract's quality rules now, not when a reader first meets it.
        if let Ok(table) = lakehouse.load(&name).await {
            self.note_snapshot(&name, &table).await;
        }
        let metadata =
            serde_json::to_value(&staged).map_err(|e| ToolError::Internal(e.to_string()))?;
        Ok(json!({"metadata-location": location, "metadata": metadata, "config": {}}))
    }

    /// The consumers of `columns` of `table` other than `committer`: live grants covering one of them, and
    /// principals who read one of them in the last [`CONSUMER_WINDOW_DAYS`] days (a query naming it or `*`, an
    /// engine's table load).
    async fn consumers(
        &self,
        table: &TableName,
        columns: &BTreeSet<&str>,
        committer: &str,
    ) -> Result<Consumers, ToolError> {
        let now = self.app.clock.now();
        let prefix = format!("{table}.");
        let grants = self
            .app
            .store
            .grants_for_table(&table.to_string())
            .await
            .map_err(Self::store_error)?
            .into_iter()
            .filter(|g| g.is_live(now) && g.principal() != committer)
            .filter(|g| {
                // Granted columns are qualified, `namespace.table.column`.
                let terms = g.terms();
                terms.columns.is_empty()
                    || terms.columns.iter().any(|c| {
                        c.strip_prefix(prefix.as_str())
                            .is_some_and(|c| columns.contains(c))
                    })
            })
            .map(|g| (g.id().to_string(), g.principal().to_string()))
            .collect();
        let shown = table.to_string();
        let since = now - chrono::TimeDelta::days(CONSUMER_WINDOW_DAYS);
        let (records, _) = self
            .app
            .audit
            .records(|resource| crate::audit::AuditResource::parse(resource).names_any(&shown))
            .map_err(|e| ToolError::Internal(format!("reading the audit log: {e}")))?;
        let readers = records
            .into_iter()
            .filter(|r| {
                matches!(r.entry.tool.as_str(), "query" | "iceberg:loadTable")
                    && r.entry.decision == "allowed"
                    && r.entry.principal != committer
            })
            .filter(|r| chrono::DateTime::parse_from_rfc3339(&r.time).is_ok_and(|t| t >= since))
            // A query depends on the columns its SQL names (all of them through `*`, or when its text cannot be
            // read); an engine's table load reads them all.
            .filter(|r| match (r.entry.tool.as_str(), &r.entry.sql) {
                ("query", Some(sql)) => crate::query::columns_named(sql)
                    .is_none_or(|named| columns.iter().any(|c| named.reads(c))),
                _ => true,
            })
            .map(|r| r.entry.principal)
            .collect();
        Ok(Consumers { grants, readers })
    }

    /// Tells every holder of a live grant on `table` what a landed commit changed (their notices, and their
    /// connected sessions at once). A failure to record a notice is logged; the commit stands.
    async fn tell_consumers(&self, table: &TableName, actor: &str, summary: &str, breaking: bool) {
        let kind = if breaking { "breaking" } else { "compatible" };
        let reason = format!(
            "{table} changed ({kind}): {summary}. {}",
            if breaking {
                "Queries naming the changed columns may fail; describe_table shows the new schema."
            } else {
                "Queries under this grant keep working; describe_table shows the new schema."
            }
        );
        tell(
            &self.app,
            table,
            EventKind::ContractChange,
            kind,
            actor,
            &reason,
            false,
        )
        .await;
    }
}

impl ParleyServer {
    /// A table that no longer keeps its contract (a change that bypassed Parley, seen when its metadata is
    /// loaded): the holders of live grants on it are told once per drift (their notices, their sessions at
    /// once), and the caller's audit record notes it, where the table's owners read it. Runs on a task of its
    /// own: the answer that found the drift does not wait.
    pub(super) fn announce_drift(
        &self,
        checked: &mut Checked<'_>,
        table: &TableName,
        contract_version: &str,
        drift: &[SchemaChange],
    ) {
        let what = describe(drift);
        let key = (
            table.to_string(),
            contract_version.to_string(),
            what.clone(),
        );
        if !ANNOUNCED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key)
        {
            return;
        }
        checked.note(
            Action::Discover,
            &table.to_string(),
            format!("{table} no longer keeps contract v{contract_version}: {what}"),
        );
        let app: Arc<super::App> = self.app.clone();
        let table = table.clone();
        let reason = format!(
            "{table} no longer keeps its contract (v{contract_version}), changed outside Parley: {what}. Queries \
             naming these columns may fail; the table's owners are told (their my_notices)."
        );
        tokio::spawn(async move {
            tell(
                &app,
                &table,
                EventKind::ContractChange,
                "drift",
                "parley:drift",
                &reason,
                true,
            )
            .await;
        });
    }
}

/// Tells `table`'s consumers of a change (`kind`; `change` names it in pushed notices: compatible, breaking,
/// drift, quality): an event (`actor`, `reason`) on each grant live now — its holder's notices — pushed to the
/// holder's sessions; and, with `owners`, an event on the table's subject (its owners' notices), pushed to the
/// connected principals who own it (the policy's `decide_request`). A notice that cannot be recorded is logged
/// and skipped.
pub(super) async fn tell(
    app: &super::App,
    table: &TableName,
    kind: EventKind,
    change: &str,
    actor: &str,
    reason: &str,
    owners: bool,
) {
    let now = app.clock.now();
    let grants = match app.store.grants_for_table(&table.to_string()).await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(%table, "cannot read the grants to notify: {e}");
            vec![]
        }
    };
    for grant in grants.into_iter().filter(|g| g.is_live(now)) {
        if let Err(e) = app.store.note(grant.id(), kind, actor, reason).await {
            tracing::warn!(grant = grant.id(), "cannot record a notice: {e}");
            continue;
        }
        app.sessions.push(Notice {
            principal: grant.principal().to_string(),
            resource: format!("grant://{}", grant.id()),
            data: json!({
                "kind": kind.as_str(),
                "grant_id": grant.id(),
                "table": table.to_string(),
                "change": change,
                "reason": reason,
            }),
        });
    }
    if !owners {
        return;
    }
    if let Err(e) = app
        .store
        .note(&table_subject(&table.to_string()), kind, actor, reason)
        .await
    {
        tracing::warn!(%table, "cannot record the owners' notice: {e}");
        return;
    }
    let facts = crate::policy::Resource::Table(app.lakehouse.facts_of_listed(table));
    for owner in app.sessions.connected() {
        if app.gate.may(&owner, Action::DecideRequest, &facts) {
            app.sessions.push(Notice {
                principal: owner.id.clone(),
                resource: format!(
                    "{}{}/{}",
                    super::resources::CONTRACT_SCHEME,
                    table.namespace_str(),
                    table.name
                ),
                data: json!({
                    "kind": kind.as_str(),
                    "table": table.to_string(),
                    "change": change,
                    "reason": reason,
                    "to": "owner",
                }),
            });
        }
    }
}

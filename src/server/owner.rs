//! The owners' tools: `review_requests`, `decide_request` (approve, deny, or approve with tightened terms as a
//! counter-offer), `revoke_grant`, `table_consumers`. Who may decide is the policy's (`decide_request` on every
//! table of a request); the order of state changes and grants is `negotiation::service`'s; a decision's notice
//! is pushed to the requester's live sessions once the decision is audited (`notify`).

use std::collections::BTreeMap;

use chrono::Utc;
use rmcp::handler::server::common::schema_for_type;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::model::{CallToolResult, JsonObject};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::access::{DoneResult, GatePolicy, GrantView, GrantsResult, NoArgs, grant_view};
use super::catalog::TableArgs;
use super::notify::Notice;
use super::{ParleyServer, internal, json_reply};
use crate::catalog::TableName;
use crate::config::SelfApproval;
use crate::gate::{Checked, ToolError};
use crate::negotiation::store::StoreError;
use crate::negotiation::{self, AccessRequest, Grant, Outcome, State, TermsPolicy};
use crate::policy::{Action, Resource};

/// Arguments of `decide_request`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideArgs {
    /// The pending request.
    pub request_id: String,
    /// Approve (true) or deny (false).
    pub approve: bool,
    /// Why; shown to the requester and audited.
    pub reason: String,
    /// Approve with a quota: at most this many queries under the grant.
    #[serde(default)]
    pub max_queries: Option<u64>,
    /// Approve with a quota: at most this many rows returned under the grant.
    #[serde(default)]
    pub max_rows: Option<u64>,
    /// Approve with a shorter term: the grant ends at this instant (RFC 3339, in the future, not after the
    /// proposed expiry).
    #[serde(default)]
    pub expires_at: Option<chrono::DateTime<Utc>>,
    /// Approve only these of the proposed columns (`ns.table.column` or bare names). With `columns`, `masks` or
    /// `row_filter` the requester gets a counter-offer to accept, not a grant.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Mask these proposed columns (`hash`, `redact`, `year_only`: the year of a date or timestamp only).
    #[serde(default)]
    pub masks: BTreeMap<String, negotiation::Mask>,
    /// Keep only rows whose column is one of these values (a new filter, or fewer values of the proposed one).
    #[serde(default)]
    pub row_filter: Option<negotiation::RowScope>,
}

/// Arguments of `revoke_grant`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeArgs {
    /// The grant to revoke.
    pub grant_id: String,
    /// Why; shown to the grantee and audited.
    pub reason: String,
}

/// Arguments of `publish_contract`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishArgs {
    /// The new contract version, ODCS v3 YAML; its `schema[].physicalName` names the table.
    pub contract: String,
    /// When it takes effect: RFC 3339 or `YYYY-MM-DD` (midnight UTC); now when omitted.
    #[serde(default)]
    pub effective_from: Option<String>,
}

/// A grant and its holder.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HeldGrant {
    /// Grant id.
    pub grant_id: String,
    /// Who holds it.
    pub holder: String,
}

/// Result of `publish_contract`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PublishResult {
    /// `namespace.table`.
    pub table: String,
    /// The version published.
    pub version: String,
    /// The version in force it replaces, if any.
    pub replaces: Option<String>,
    /// When it takes effect (RFC 3339).
    pub effective_from: String,
    /// What it changes, column by column.
    pub changes: Vec<crate::compat::SchemaChange>,
    /// Grant holders told.
    pub told: Vec<HeldGrant>,
    /// Live grants made under the version it replaces.
    pub grants_under_old_version: Vec<HeldGrant>,
}

/// Most bytes of contract YAML `publish_contract` takes.
const MAX_CONTRACT_BYTES: usize = 1 << 20;

/// How an approver tightens the proposed terms when approving.
#[derive(Debug, Default)]
pub(super) struct Tightening {
    expires_at: Option<chrono::DateTime<Utc>>,
    max_queries: Option<u64>,
    max_rows: Option<u64>,
}

/// An owner's decision and the notice it owes the requester.
pub(super) struct Decided {
    done: DoneResult,
    notice: Option<Notice>,
}

/// A list of requests.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RequestsResult {
    /// Requests with requester, purpose, terms and why they wait.
    pub requests: Vec<Value>,
}

impl Tightening {
    /// Applies the tightening to `terms` (never widening them), describing each change in `changes`.
    fn apply(
        &self,
        terms: &mut negotiation::Terms,
        changes: &mut Vec<String>,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), ToolError> {
        if let Some(at) = self.expires_at {
            if at <= now || at > terms.expires_at {
                return Err(ToolError::BadRequest(format!(
                    "expires_at must be in the future and not after the proposed expiry {}",
                    terms.expires_at
                )));
            }
            terms.expires_at = at;
            changes.push(format!("term until {at}"));
        }
        if let Some(n) = self.max_queries {
            terms.max_queries = Some(terms.max_queries.map_or(n, |m| m.min(n)));
            changes.push(format!("at most {n} queries"));
        }
        if let Some(n) = self.max_rows {
            terms.max_rows = Some(terms.max_rows.map_or(n, |m| m.min(n)));
            changes.push(format!("at most {n} rows"));
        }
        Ok(())
    }
}

impl ParleyServer {
    /// Tables the caller may decide requests for.
    pub(super) fn decidable(&self, checked: &Checked<'_>, tables: &[TableName]) -> bool {
        tables.iter().all(|name| {
            let facts = self.app.lakehouse.facts_of_listed(name);
            checked
                .peek(Action::DecideRequest, &Resource::Table(facts))
                .allowed()
        })
    }

    /// Requires the policy's `decide_request` on every table of a request; each decision is recorded.
    pub(super) fn require_decide(
        &self,
        checked: &mut Checked<'_>,
        tables: &[TableName],
    ) -> Result<(), ToolError> {
        for name in tables {
            let facts = self.app.lakehouse.facts_of_listed(name);
            checked.require(
                Action::DecideRequest,
                &Resource::Table(facts),
                "Only the table's owners and approvers decide its access requests.",
            )?;
        }
        Ok(())
    }

    /// Approves a pending request as the caller: the proposed terms, tightened as asked, become a grant naming
    /// the caller as approver. `how` says how the decision was taken, for the history and the audit record.
    pub(super) async fn approve_request(
        &self,
        checked: &mut Checked<'_>,
        request: &AccessRequest,
        outcome: &Outcome,
        reason: &str,
        tighten: &Tightening,
        how: &str,
    ) -> Result<(Grant, Vec<String>), ToolError> {
        let who = checked.principal_id().to_string();
        let mut terms = match outcome {
            Outcome::Pending { terms, .. } => terms.clone(),
            other => other
                .terms()
                .cloned()
                .ok_or_else(|| internal("a pending request without proposed terms"))?,
        };
        // An approver may tighten the proposed terms, never widen them.
        let mut changes = Vec::new();
        tighten.apply(&mut terms, &mut changes, self.app.clock.now())?;
        let why = if how.is_empty() {
            reason.to_string()
        } else {
            format!("{reason} (approved {how})")
        };
        let grant = self.flows().agree(request, terms, &who, &why).await?;
        checked.note(
            Action::DecideRequest,
            &TableName::join(&request.tables, ","),
            format!(
                "request {} approved by {who}{} as grant {}{}: {reason}",
                request.id,
                if how.is_empty() {
                    String::new()
                } else {
                    format!(" {how}")
                },
                grant.id(),
                if changes.is_empty() {
                    String::new()
                } else {
                    format!(" with changed terms ({})", changes.join(", "))
                },
            ),
        );
        Ok((grant, changes))
    }

    /// The notice a requester gets of an owner's decision on their request or grant.
    pub(super) fn notice(&self, principal: &str, resource: String, data: Value) -> Notice {
        Notice {
            principal: principal.to_string(),
            resource,
            data,
        }
    }

    pub(super) async fn do_review(
        &self,
        checked: &mut Checked<'_>,
        _: NoArgs,
    ) -> Result<RequestsResult, ToolError> {
        let mut tables = Vec::new();
        for name in self
            .app
            .lakehouse
            .list_tables()
            .await
            .map_err(internal)?
            .iter()
        {
            let facts = self.app.lakehouse.facts_of_listed(name);
            if checked
                .peek(Action::DecideRequest, &Resource::Table(facts))
                .allowed()
            {
                tables.push(name.to_string());
            }
        }
        let pending = self
            .app
            .store
            .requests_for_tables(&tables, Some(State::Requested))
            .await
            .map_err(Self::store_error)?;
        // Under separation of duties a caller's own requests are for other approvers to decide.
        let own_excluded = self.app.config.negotiation.self_approval == SelfApproval::Forbidden;
        let requests: Vec<Value> = pending
            .into_iter()
            .filter(|r| !(own_excluded && r.request.principal == checked.principal_id()))
            .filter(|r| self.decidable(checked, &r.request.tables))
            .map(|r| {
                json!({
                    "request_id": r.request.id,
                    "principal": r.request.principal,
                    "tables": r.request.tables,
                    "columns": r.request.columns,
                    "purpose": r.request.purpose,
                    "justification": r.request.justification,
                    "duration_days": r.request.duration_days,
                    "outcome": r.outcome,
                })
            })
            .collect();
        checked.note(
            Action::ReviewRequests,
            "*",
            format!(
                "{} pending request(s) on tables the caller may decide",
                requests.len()
            ),
        );
        Ok(RequestsResult { requests })
    }

    pub(super) async fn do_decide(
        &self,
        checked: &mut Checked<'_>,
        args: DecideArgs,
    ) -> Result<Decided, ToolError> {
        let not_found = || {
            ToolError::BadRequest(format!(
                "request {} not found among the pending requests you may decide; review_requests lists them",
                args.request_id
            ))
        };
        let stored = self
            .app
            .store
            .get_request(&args.request_id)
            .await
            .map_err(Self::store_error)?
            .ok_or_else(not_found)?;
        self.require_decide(checked, &stored.request.tables)?;
        if stored.state != State::Requested {
            return Err(ToolError::BadRequest(format!(
                "request {} is {}, not pending",
                args.request_id,
                stored.state.as_str()
            )));
        }
        let who = checked.principal_id().to_string();
        if self.app.config.negotiation.self_approval == SelfApproval::Forbidden
            && stored.request.principal == who
        {
            return Err(ToolError::Denied {
                reason: format!(
                    "separation of duties: you made request {}, so you may not decide it \
                     (negotiation.self_approval = forbidden)",
                    args.request_id
                ),
                next_step: "Another approver of the table must decide it; review_requests lists it for them."
                    .to_string(),
            });
        }
        let request = &stored.request;
        let resource = format!("{}{}", super::resources::REQUEST_SCHEME, request.id);
        let tables = TableName::join(&request.tables, ", ");
        if !args.approve {
            self.transition(&args.request_id, State::Terminated, &who, &args.reason)
                .await?;
            checked.note(
                Action::DecideRequest,
                &TableName::join(&request.tables, ","),
                format!(
                    "request {} denied by {who}: {}",
                    args.request_id, args.reason
                ),
            );
            let data = json!({
                "kind": "denied",
                "request_id": request.id,
                "tables": request.tables,
                "state": State::Terminated.as_str(),
                "actor": who,
                "reason": args.reason,
                "at": Utc::now(),
                "message": format!("{who} denied your access request {} ({tables}): {}", request.id, args.reason),
            });
            return Ok(Decided {
                done: DoneResult {
                    message: "request denied".to_string(),
                    grant_id: None,
                    state: Some(State::Terminated.as_str().to_string()),
                },
                notice: Some(self.notice(&request.principal, resource, data)),
            });
        }
        let outcome = stored.outcome.clone();
        let tighten = Tightening {
            expires_at: args.expires_at,
            max_queries: args.max_queries,
            max_rows: args.max_rows,
        };
        let narrowing = negotiation::Narrowing {
            columns: args.columns.clone(),
            masks: args.masks.clone(),
            row_filter: args.row_filter.clone(),
        };
        if !narrowing.is_empty() {
            return self
                .counter_offer(
                    checked,
                    request,
                    &outcome,
                    &args.reason,
                    &tighten,
                    &narrowing,
                )
                .await;
        }
        let (grant, changes) = self
            .approve_request(checked, request, &outcome, &args.reason, &tighten, "")
            .await?;
        let data = json!({
            "kind": "approved",
            "request_id": request.id,
            "grant_id": grant.id(),
            "tables": request.tables,
            "state": State::Finalized.as_str(),
            "actor": who,
            "reason": args.reason,
            "changed_terms": changes,
            "expires_at": grant.terms().expires_at,
            "at": Utc::now(),
            "message": format!(
                "{who} approved your access request {} ({tables}): grant {} is in force; pass it to query as grant_id",
                request.id, grant.id()
            ),
        });
        let notice = self.notice(&request.principal, resource, data);
        Ok(Decided {
            done: DoneResult {
                message: format!("request approved; grant {} is in force", grant.id()),
                grant_id: Some(grant.id().to_string()),
                state: Some(State::Finalized.as_str().to_string()),
            },
            notice: Some(notice),
        })
    }

    /// An approval with narrower terms: the request becomes a counter-offer the requester accepts by its hash.
    pub(super) async fn counter_offer(
        &self,
        checked: &mut Checked<'_>,
        request: &AccessRequest,
        outcome: &Outcome,
        reason: &str,
        tighten: &Tightening,
        narrowing: &negotiation::Narrowing,
    ) -> Result<Decided, ToolError> {
        let who = checked.principal_id().to_string();
        let proposed = outcome
            .terms()
            .cloned()
            .ok_or_else(|| internal("a pending request without proposed terms"))?;
        let (mut terms, mut changes) = proposed
            .narrowed(narrowing)
            .map_err(ToolError::BadRequest)?;
        // A year is kept only of a date or a timestamp: on another column `year_only` would withhold the value
        // whole, which is `redact`'s job — say so rather than offer a mask that does not do what it says.
        for t in &terms.tables {
            let prefix = format!("{t}.");
            let yearly: Vec<&str> = terms
                .masks
                .iter()
                .filter(|(column, mask)| {
                    **mask == negotiation::Mask::YearOnly
                        && proposed.masks.get(*column) != Some(&negotiation::Mask::YearOnly)
                })
                .filter_map(|(column, _)| column.strip_prefix(&prefix))
                .collect();
            if yearly.is_empty() {
                continue;
            }
            let table = self.app.lakehouse.load(t).await.map_err(internal)?;
            let schema = table.metadata().current_schema();
            for column in yearly {
                use iceberg::spec::{PrimitiveType as P, Type};
                let dated = schema.field_by_name(column).is_some_and(|f| {
                    matches!(
                        *f.field_type,
                        Type::Primitive(
                            P::Date
                                | P::Timestamp
                                | P::Timestamptz
                                | P::TimestampNs
                                | P::TimestamptzNs
                        )
                    )
                });
                if !dated {
                    return Err(ToolError::BadRequest(format!(
                        "year_only keeps the year of a date or timestamp, and {t}.{column} is neither; mask it \
                         with redact (withheld) or hash (comparable, not readable) instead"
                    )));
                }
            }
        }
        if let Some(scope) = &narrowing.row_filter {
            // The same rule as for a requester's row scope: a column every table has, not personal data.
            for t in &terms.tables {
                let column = self
                    .app
                    .lakehouse
                    .contract(t)
                    .and_then(|c| c.contract.column(&scope.column).cloned());
                match column {
                    None => {
                        return Err(ToolError::BadRequest(format!(
                            "row_filter column {} is not a column of {t}",
                            scope.column
                        )));
                    }
                    Some(p) if p.is_pii() => {
                        return Err(ToolError::BadRequest(format!(
                            "row_filter column {t}.{} is personal data; filtering on it would act as a lookup",
                            scope.column
                        )));
                    }
                    Some(_) => {}
                }
            }
        }
        tighten.apply(&mut terms, &mut changes, self.app.clock.now())?;
        // Offer only what the policy would let a query use.
        let facts: Vec<(String, crate::policy::TableFacts)> = terms
            .tables
            .iter()
            .map(|t| (t.to_string(), self.app.lakehouse.facts_of_listed(t)))
            .collect();
        // Checked as the policy applies to the requester, who will query under these terms (a request stored
        // before requesters' groups were kept is checked as before, for the approver).
        let requester = (!request.requester_groups.is_empty()).then(|| {
            crate::identity::Principal::new(
                request.principal.clone(),
                request.requester_groups.clone(),
            )
        });
        let policy = GatePolicy {
            checked,
            facts: &facts,
            requester: requester.as_ref(),
        };
        if let Some(why) = policy.refusal(&terms) {
            return Err(ToolError::BadRequest(format!(
                "the policy would not let the requester query under these terms ({why}); narrow them \
                 differently or deny the request"
            )));
        }
        let hash = terms.hash();
        let why = format!(
            "{who} approved with changed terms ({}): {reason}",
            changes.join("; ")
        );
        let offer = Outcome::CounterOffer {
            terms: terms.clone(),
            reasons: vec![why.clone()],
            offered_by: vec![who.clone()],
        };

        match self
            .app
            .store
            .counter_offer(&request.id, &offer, &who, &why)
            .await
        {
            Ok(()) => {}
            Err(StoreError::InvalidTransition { from, .. }) => {
                return Err(ToolError::BadRequest(format!(
                    "request {} is already {}: it was decided meanwhile",
                    request.id,
                    from.as_str()
                )));
            }
            Err(e) => return Err(Self::store_error(e)),
        }
        checked.note(
            Action::DecideRequest,
            &TableName::join(&request.tables, ","),
            format!(
                "request {} answered by {who} with a counter-offer: {why}",
                request.id
            ),
        );
        let tables = TableName::join(&request.tables, ", ");
        let data = json!({
            "kind": "counter_offer",
            "request_id": request.id,
            "tables": request.tables,
            "state": State::Offered.as_str(),
            "actor": who,
            "reason": reason,
            "changed_terms": changes,
            "terms": terms,
            "terms_hash": hash,
            "at": Utc::now(),
            "message": format!(
                "{who} answered your access request {} ({tables}) with narrower terms ({}); accept them with \
                 accept_offer and terms_hash {hash}, or decline_offer",
                request.id,
                changes.join("; ")
            ),
        });
        let resource = format!("{}{}", super::resources::REQUEST_SCHEME, request.id);
        Ok(Decided {
            done: DoneResult {
                message: format!(
                    "request answered with a counter-offer ({}); the requester accepts it with terms_hash {hash}",
                    changes.join("; ")
                ),
                grant_id: None,
                state: Some(State::Offered.as_str().to_string()),
            },
            notice: Some(self.notice(&request.principal, resource, data)),
        })
    }

    pub(super) async fn do_revoke(
        &self,
        checked: &mut Checked<'_>,
        args: RevokeArgs,
    ) -> Result<Decided, ToolError> {
        let not_found = || {
            ToolError::BadRequest(format!(
                "grant {} not found among the grants you may revoke",
                args.grant_id
            ))
        };
        let grant = self
            .app
            .store
            .get_grant(&args.grant_id)
            .await
            .map_err(Self::store_error)?
            .ok_or_else(not_found)?;
        for name in &grant.terms().tables {
            let facts = self.app.lakehouse.facts_of_listed(name);
            checked.require(
                Action::DecideRequest,
                &Resource::Table(facts),
                "Only the table's owners revoke its grants.",
            )?;
        }
        let who = checked.principal_id().to_string();
        self.flows()
            .revoke(&args.grant_id, &who, &args.reason)
            .await?;
        checked.note(
            Action::DecideRequest,
            &TableName::join(&grant.terms().tables, ","),
            format!("grant {} revoked by {who}: {}", args.grant_id, args.reason),
        );
        let data = json!({
            "kind": "revoked",
            "request_id": grant.request_id(),
            "grant_id": grant.id(),
            "tables": grant.terms().tables,
            "actor": who,
            "reason": args.reason,
            "at": Utc::now(),
            "message": format!(
                "{who} revoked your grant {} ({}): {}",
                grant.id(),
                TableName::join(&grant.terms().tables, ", "),
                args.reason
            ),
        });
        let notice = self.notice(
            grant.principal(),
            format!("{}{}", super::resources::GRANT_SCHEME, grant.id()),
            data,
        );
        Ok(Decided {
            done: DoneResult {
                message: format!("grant {} revoked", args.grant_id),
                grant_id: Some(args.grant_id),
                state: None,
            },
            notice: Some(notice),
        })
    }

    pub(super) async fn do_consumers(
        &self,
        checked: &mut Checked<'_>,
        args: super::catalog::TableArgs,
    ) -> Result<GrantsResult, ToolError> {
        let name = self
            .table_for(
                checked,
                &args.table,
                Action::DecideRequest,
                "Only the table's owners see who holds grants on it.",
            )
            .await?;
        let grants = self
            .app
            .store
            .grants_for_table(&name.to_string())
            .await
            .map_err(Self::store_error)?;
        checked.note(
            Action::DecideRequest,
            &name.to_string(),
            format!("{} grant(s) on {name} listed for its owner", grants.len()),
        );
        Ok(GrantsResult {
            grants: grants
                .iter()
                .map(|g| GrantView {
                    principal: Some(g.principal().to_string()),
                    ..grant_view(g, self.app.clock.now())
                })
                .collect(),
        })
    }

    /// Publishes a contract version for an owner of its table (see `publish::publish_text`), reloads the contracts
    /// so it shows at once, and returns the notices owed to the grant holders (pushed once this is audited).
    pub(super) async fn do_publish(
        &self,
        checked: &mut Checked<'_>,
        args: PublishArgs,
    ) -> Result<(PublishResult, Vec<Notice>), ToolError> {
        if args.contract.len() > MAX_CONTRACT_BYTES {
            return Err(ToolError::BadRequest(format!(
                "the contract is {} bytes; at most {MAX_CONTRACT_BYTES} are taken",
                args.contract.len()
            )));
        }
        // Only an owner's text is parsed (an outside test had a principal the policy grants nothing hold a core
        // for minutes with one call), and on a blocking thread, not the threads answering MCP.
        if !self.app.owns_a_table(checked.principal()).await {
            return Err(ToolError::Denied {
                reason: "only a table's owners publish its contract, and you own no table".into(),
                next_step:
                    "ask the table's owners (describe_table names them) to publish the change"
                        .into(),
            });
        }
        let source = std::path::Path::new("contract");
        let text = args.contract.clone();
        let parsed = tokio::task::spawn_blocking(move || crate::contracts::parse(&text, source))
            .await
            .map_err(|e| ToolError::Internal(format!("parsing the contract failed: {e}")))?
            .map_err(|e| ToolError::BadRequest(format!("{e}. Fix the YAML and publish again.")))?;
        let table = crate::contracts::table_of(&parsed).ok_or_else(|| {
            ToolError::BadRequest(
                "name the table the contract governs in schema[].physicalName (namespace.table)"
                    .into(),
            )
        })?;
        let name = self
            .table_for(
                checked,
                &table,
                Action::DecideRequest,
                "Only the table's owners publish its contract.",
            )
            .await?;
        let effective = match &args.effective_from {
            None => None,
            Some(text) => Some(crate::contracts::parse_instant(text).ok_or_else(|| {
                ToolError::BadRequest(format!(
                    "effective_from {text:?} is not a date: use RFC 3339 (2027-02-01T00:00:00Z) or YYYY-MM-DD"
                ))
            })?),
        };
        let lakehouse = &self.app.lakehouse;
        let dir = lakehouse.contracts_dir().ok_or_else(|| {
            ToolError::BadRequest("this server reads no contract folder to publish into".into())
        })?;
        let p = crate::publish::publish_text(
            dir,
            &args.contract,
            source,
            effective,
            self.app.clock.now(),
            Some(&*self.app.store),
            crate::publish::Publisher::Owner(checked.principal_id()),
        )
        .await
        .map_err(|e| {
            // The server's own paths are not the caller's business.
            let e = e.replace(&dir.display().to_string(), "contracts");
            ToolError::BadRequest(format!("not published: {e}"))
        })?;
        checked.note(
            Action::DecideRequest,
            &name.to_string(),
            format!(
                "published contract v{} of {name}, in force from {}",
                p.version,
                p.effective.to_rfc3339()
            ),
        );
        if let Some((_, _, changed)) = lakehouse.reload_contracts(true) {
            self.app.sessions.contracts_changed(&changed);
            self.app.refresh_tool_lists();
        }
        let notices = p
            .told
            .iter()
            .map(|(grant, holder)| Notice {
                principal: holder.clone(),
                resource: format!("grant://{grant}"),
                data: json!({
                    "kind": "contract_change",
                    "grant_id": grant,
                    "table": p.table,
                    "change": "contract_version",
                    "reason": p.reason,
                }),
            })
            .collect();
        let held = |list: &[(String, String)]| {
            list.iter()
                .map(|(g, h)| HeldGrant {
                    grant_id: g.clone(),
                    holder: h.clone(),
                })
                .collect()
        };
        Ok((
            PublishResult {
                table: p.table.clone(),
                version: p.version.clone(),
                replaces: p.replaces.clone(),
                effective_from: p.effective.to_rfc3339(),
                changes: p.changes.clone(),
                told: held(&p.told),
                grants_under_old_version: held(&p.under_old),
            },
            notices,
        ))
    }

    /// An owner's decision, once audited: its notice goes to the requester's live sessions on a task of its own
    /// (never before the record is durable), and the caller gets the decision.
    fn delivered(&self, decided: Decided) -> CallToolResult {
        if let Some(notice) = decided.notice {
            self.app.sessions.push(notice);
        }
        json_reply(decided.done)
    }
}

#[tool_router(router = owner_router, vis = "pub(super)")]
impl ParleyServer {
    #[tool(
        description = include_str!("../../tools/review_requests.md"),
        input_schema = schema_for_type::<NoArgs>(),
        output_schema = schema_for_output::<RequestsResult>(),
        annotations(title = "Review access requests", read_only_hint = true, open_world_hint = false)
    )]
    async fn review_requests(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        self.gated(
            &ctx,
            "review_requests",
            None,
            args,
            async |c, a| self.do_review(c, a).await,
            json_reply,
        )
        .await
    }

    #[tool(
        description = include_str!("../../tools/decide_request.md"),
        input_schema = schema_for_type::<DecideArgs>(),
        output_schema = schema_for_output::<DoneResult>(),
        annotations(title = "Decide an access request", read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn decide_request(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let decided = self
            .gated(
                &ctx,
                "decide_request",
                None,
                args,
                async |c, a| self.do_decide(c, a).await,
                |d| d,
            )
            .await?;
        Ok(self.delivered(decided))
    }

    #[tool(
        description = include_str!("../../tools/table_consumers.md"),
        input_schema = schema_for_type::<TableArgs>(),
        output_schema = schema_for_output::<GrantsResult>(),
        annotations(title = "Who uses my table", read_only_hint = true, open_world_hint = false)
    )]
    async fn table_consumers(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        self.gated(
            &ctx,
            "table_consumers",
            None,
            args,
            async |c, a| self.do_consumers(c, a).await,
            json_reply,
        )
        .await
    }

    #[tool(
        description = include_str!("../../tools/revoke_grant.md"),
        input_schema = schema_for_type::<RevokeArgs>(),
        output_schema = schema_for_output::<DoneResult>(),
        annotations(title = "Revoke a grant", read_only_hint = false, destructive_hint = true, open_world_hint = false)
    )]
    async fn revoke_grant(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let decided = self
            .gated(
                &ctx,
                "revoke_grant",
                None,
                args,
                async |c, a| self.do_revoke(c, a).await,
                |d| d,
            )
            .await?;
        Ok(self.delivered(decided))
    }

    #[tool(
        description = include_str!("../../tools/publish_contract.md"),
        input_schema = schema_for_type::<PublishArgs>(),
        output_schema = schema_for_output::<PublishResult>(),
        annotations(title = "Publish a contract version", read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn publish_contract(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let (result, notices) = self
            .gated(
                &ctx,
                "publish_contract",
                None,
                args,
                async |c, a| self.do_publish(c, a).await,
                |d| d,
            )
            .await?;
        for notice in notices {
            self.app.sessions.push(notice);
        }
        let text = format!(
            "Published {} v{}{}, in force from {}. {} grant holder(s) told.{}",
            result.table,
            result.version,
            result
                .replaces
                .as_deref()
                .map(|v| format!(" (replacing v{v})"))
                .unwrap_or_default(),
            result.effective_from,
            result.told.len(),
            if result.changes.is_empty() {
                String::new()
            } else {
                format!(" Changes: {}.", crate::compat::describe(&result.changes))
            }
        );
        Ok(super::respond(&result, text))
    }
}

//! The negotiation tools: `request_access`, `accept_offer`, `decline_offer`, `access_status`, `my_grants`,
//! `my_notices`, and the owner tools `review_requests`, `decide_request`, `revoke_grant`, `table_consumers`. Every
//! step goes through the gate (audited with its request or grant id), decisions come from `negotiation::evaluate`
//! over the contracts plus the policy, and state lives in the `NegotiationStore`. Where a person must confirm —
//! acknowledging usage terms before an automatic grant, approving a request they are an approver of — the person
//! behind an elicitation-capable client is asked (`elicit`); owners' decisions are pushed to the requester's live
//! sessions (`notify`).
//!
//! Invariant: a negotiation moves to its next state before the grant it leads to is made, so two racing answers
//! (two approvals, an acknowledgement retried twice) make one grant.

use std::collections::BTreeMap;

use chrono::Utc;
use rmcp::handler::server::common::schema_for_type;
use rmcp::handler::server::tool::{InputResponses, RequestState};
use rmcp::model::{CallToolResponse, CallToolResult, InputRequiredResult, JsonObject};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::elicit::{self, Acknowledgement, Answer, Approval, Asker, Question, StateSeal};
use super::notify::Notice;
use super::{ParleyServer, internal, parse_args, respond};
use crate::catalog::TableName;
use crate::config::SelfApproval;
use crate::gate::{Checked, ToolError};
use crate::negotiation::service::{FlowError, Negotiations, Requested};
use crate::negotiation::store::StoreError;
use crate::negotiation::{
    self, AccessRequest, Grant, OdrlKind, Outcome, RowScope, State, TermsPolicy,
    combined_limitations,
};
use crate::policy::{Action, Resource};

/// Longest term any grant gets, in days.
const MAX_DAYS: u32 = 90;

/// Arguments of `request_access`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestAccessArgs {
    /// Tables, `namespace.table`.
    pub tables: Vec<String>,
    /// Columns (default: all columns of the tables).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Purpose id from the contract's allowed purposes (e.g. `churn_analysis`).
    pub purpose: String,
    /// Requested term in days (default 30).
    #[serde(default)]
    pub duration_days: Option<u32>,
    /// Why you need it, for the owner.
    #[serde(default)]
    pub justification: Option<String>,
    /// Ask for fewer rows: only those whose `column` is one of `values`.
    #[serde(default)]
    pub row_scope: Option<RowScope>,
}

/// Arguments naming a request.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestIdArgs {
    /// The request id from `request_access`.
    pub request_id: String,
}

/// Arguments of `accept_offer`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptArgs {
    /// The request id from `request_access`.
    pub request_id: String,
    /// The offer's `terms_hash`: you accept exactly these terms.
    pub terms_hash: String,
}

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
    /// Mask these proposed columns (`hash`, `redact`, `year_only`).
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

/// No arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// The answer to `request_access` (and the state of a negotiation).
#[derive(Debug, Serialize, JsonSchema)]
pub struct NegotiationResult {
    /// Request id; use it with `access_status`, `accept_offer`, `decline_offer`.
    pub request_id: String,
    /// `granted`, `counter_offer`, `pending` or `denied`.
    pub status: String,
    /// Dataspace Protocol state: requested, offered, agreed, finalized or terminated.
    pub state: String,
    /// The sentence explaining the decision, citing contract clauses.
    pub reason: String,
    /// Granted or offered terms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms: Option<Value>,
    /// Hash to pass to `accept_offer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms_hash: Option<String>,
    /// The grant, when granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// Who must approve, when pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<String>>,
    /// A request that would be acceptable, when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acceptable: Option<String>,
    /// The offer or agreement as a W3C ODRL policy (JSON-LD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub odrl: Option<Value>,
    /// What you accept by using a grant for this purpose (from the purpose registry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledgement: Option<String>,
    /// The request as a resource (`request://{request_id}`); subscribe to it to hear when an owner decides.
    pub resource_uri: String,
}

/// What `request_access` answers: the negotiation's result, or (protocol 2026-07-28) a question for the person
/// behind the client, answered by retrying the call.
pub(super) enum RequestReply {
    /// The answer.
    Done(Box<NegotiationResult>),
    /// A question; the client retries with the answer and the `requestState`.
    Ask(InputRequiredResult),
}

impl RequestReply {
    fn done(result: NegotiationResult) -> RequestReply {
        RequestReply::Done(Box::new(result))
    }
}

/// How an approver tightens the proposed terms when approving.
#[derive(Debug, Default)]
struct Tightening {
    expires_at: Option<chrono::DateTime<Utc>>,
    max_queries: Option<u64>,
    max_rows: Option<u64>,
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

/// An owner's decision and the notice it owes the requester.
pub(super) struct Decided {
    done: DoneResult,
    notice: Option<Notice>,
}

/// The state of one request with its history.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StatusResult {
    /// Request id.
    pub request_id: String,
    /// Dataspace Protocol state.
    pub state: String,
    /// The grant, once finalized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// While an offer is open: the hash to pass to `accept_offer` to accept its terms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms_hash: Option<String>,
    /// The request as made.
    pub request: Value,
    /// The current decision: the outcome at the time of the request, or an approver's counter-offer.
    pub outcome: Value,
    /// Every transition: when, who, to which state, why.
    pub history: Vec<Value>,
}

/// A list of grants.
#[derive(Debug, Serialize, JsonSchema)]
pub struct GrantsResult {
    /// Grants with terms, usage and whether live.
    pub grants: Vec<GrantView>,
}

/// A list of requests.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RequestsResult {
    /// Requests with requester, purpose, terms and why they wait.
    pub requests: Vec<Value>,
}

/// The caller's inbox.
#[derive(Debug, Serialize, JsonSchema)]
pub struct NoticesResult {
    /// Decisions others took on your requests and grants (approved, denied, revoked), newest first.
    pub notices: Vec<Value>,
}

/// A short acknowledgement.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DoneResult {
    /// What happened.
    pub message: String,
    /// The grant concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// New state of the request, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// A grant as tools and the `grant://` resource show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct GrantView {
    /// Grant id: pass it as `grant_id` to `query`.
    pub grant_id: String,
    /// The request it answers.
    pub request_id: String,
    /// The grantee (shown to the tables' owners).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Whether queries may use it now: in its term, not revoked.
    pub live: bool,
    /// When it was revoked, if it was.
    pub revoked_at: Option<chrono::DateTime<Utc>>,
    /// What it allows: tables, columns (masked or in clear), row filter, purpose, term, quotas, prices.
    pub terms: negotiation::Terms,
    /// The hash of the terms, as accepted.
    pub terms_hash: String,
    /// Queries and rows used so far.
    pub usage: negotiation::Usage,
    /// Who approved it (empty when granted by the automatic rules).
    pub approvers: Vec<String>,
    /// Contract version per table at grant time (`namespace.table` → `id@version`).
    pub contract_versions: BTreeMap<String, String>,
    /// When it was made.
    pub created_at: chrono::DateTime<Utc>,
    /// The agreement in W3C ODRL (on the `grant://` resource).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub odrl: Option<Value>,
}

fn grant_view(g: &Grant, now: chrono::DateTime<Utc>) -> GrantView {
    GrantView {
        grant_id: g.id.clone(),
        request_id: g.request_id.clone(),
        principal: None,
        live: g.is_live(now),
        revoked_at: g.revoked_at,
        terms: g.terms.clone(),
        terms_hash: g.terms_hash.clone(),
        usage: g.usage,
        approvers: g.approvers.clone(),
        contract_versions: g.contract_versions.clone(),
        created_at: g.created_at,
        odrl: None,
    }
}

impl ParleyServer {
    fn store_error(e: impl std::fmt::Display) -> ToolError {
        internal(e)
    }

    /// The owner of the tables as ODRL assigner: the contracts' teams.
    fn assigner(&self, tables: &[String]) -> String {
        let owners: Vec<String> = tables
            .iter()
            .filter_map(|t| TableName::parse(t).ok())
            .filter_map(|t| {
                self.app
                    .lakehouse
                    .contract(&t)
                    .and_then(|c| c.contract.owner_group().map(str::to_string))
            })
            .collect();
        if owners.is_empty() {
            "urn:parley:owner:unknown".to_string()
        } else {
            format!("urn:parley:group:{}", owners.join(","))
        }
    }

    fn odrl_for(
        &self,
        kind: OdrlKind,
        uid: &str,
        principal: &str,
        terms: &negotiation::Terms,
    ) -> Value {
        let contracts: Vec<(String, crate::contracts::Contract)> = terms
            .tables
            .iter()
            .filter_map(|t| {
                let name = TableName::parse(t).ok()?;
                Some((
                    t.clone(),
                    self.app.lakehouse.contract(&name)?.contract.clone(),
                ))
            })
            .collect();
        let refs: Vec<(&str, &crate::contracts::Contract)> =
            contracts.iter().map(|(t, c)| (t.as_str(), c)).collect();
        negotiation::odrl(
            kind,
            uid,
            &self.assigner(&terms.tables),
            &format!("urn:parley:principal:{principal}"),
            terms,
            combined_limitations(&refs).as_deref(),
        )
    }

    /// The negotiation flows (`negotiation::service`) over this server's store and contracts, now.
    fn flows(&self) -> Negotiations<'_> {
        Negotiations::new(
            self.app.store.as_ref(),
            &self.app.lakehouse,
            self.app.clock.now(),
        )
    }

    /// The text a person acknowledges before a grant starts: purpose, usage, limitations, acknowledgement.
    fn acknowledgement_text(&self, terms: &negotiation::Terms) -> String {
        let mut text = format!(
            "Start a grant on {} for the purpose {} until {}?",
            terms.tables.join(", "),
            terms.purpose,
            terms.expires_at
        );
        for t in &terms.tables {
            if let Some(c) = TableName::parse(t)
                .ok()
                .and_then(|n| self.app.lakehouse.contract(&n))
                && let Some(d) = &c.contract.description
            {
                text.push_str(&format!(
                    "\n{t} — usage: {}\nlimitations: {}",
                    d.usage.as_deref().unwrap_or("-"),
                    d.limitations.as_deref().unwrap_or("-")
                ));
            }
        }
        if let Some(a) = self
            .app
            .purposes
            .get(&terms.purpose)
            .and_then(|p| p.acknowledgement.as_deref())
        {
            text.push_str(&format!("\nYou acknowledge: {a}"));
        }
        text
    }

    /// The answer to a request as the outcome gives it, before any grant, question or decision.
    fn base_result(&self, request: &AccessRequest, outcome: &Outcome) -> NegotiationResult {
        NegotiationResult {
            request_id: request.id.clone(),
            status: outcome.kind().to_string(),
            state: outcome.state().as_str().to_string(),
            reason: outcome.explanation(),
            terms: outcome.terms().map(|t| json!(t)),
            terms_hash: None,
            grant_id: None,
            approvers: None,
            acceptable: None,
            odrl: None,
            acknowledgement: self
                .app
                .purposes
                .get(&request.purpose)
                .and_then(|p| p.acknowledgement.clone()),
            resource_uri: format!("{}{}", super::REQUEST_SCHEME, request.id),
        }
    }

    /// Puts a grant into an answer: its id, terms hash and ODRL agreement.
    fn with_grant(&self, result: &mut NegotiationResult, request: &AccessRequest, grant: Grant) {
        result.status = "granted".to_string();
        result.state = State::Finalized.as_str().to_string();
        result.terms = Some(json!(grant.terms));
        result.odrl = Some(self.odrl_for(
            OdrlKind::Agreement,
            &format!("urn:parley:agreement:{}", grant.id),
            &request.principal,
            &grant.terms,
        ));
        result.terms_hash = Some(grant.terms_hash.clone());
        result.grant_id = Some(grant.id);
    }

    /// Moves a request to `state`; a request that another call already moved on is the agent's to re-read.
    async fn transition(
        &self,
        request_id: &str,
        state: State,
        who: &str,
        why: &str,
    ) -> Result<(), ToolError> {
        Ok(self.flows().transition(request_id, state, who, why).await?)
    }

    /// Asks `question` about `request` as an input-required result whose `requestState` is sealed to this caller
    /// and call.
    fn ask_later(
        &self,
        checked: &Checked<'_>,
        question: Question,
        request: &AccessRequest,
        message: String,
        call: &str,
    ) -> Result<InputRequiredResult, ToolError> {
        let state = StateSeal::new(&self.app.mask_secret).seal(
            question,
            &request.id,
            checked.principal_id(),
            call,
        );
        elicit::input_required(question, message, state)
    }

    /// Whether the caller of a pending request should be asked to approve it now: self-approval by elicitation
    /// is enabled, the caller is one of the approvers the negotiation named (by id or group), and the policy
    /// lets them decide requests on every table of it.
    fn may_self_approve(
        &self,
        checked: &Checked<'_>,
        request: &AccessRequest,
        approvers: &[String],
    ) -> bool {
        let me = checked.principal();
        self.app.config.negotiation.self_approval == SelfApproval::Elicit
            && request.principal == me.id
            && approvers
                .iter()
                .any(|a| *a == me.id || me.groups.iter().any(|g| g == a))
            && self.decidable(checked, &request.tables)
    }

    /// What an approver is asked before approving their own request at once.
    fn approval_text(&self, request: &AccessRequest, outcome: &Outcome) -> String {
        let mut text = format!(
            "You are an approver of {}: approve this request now?\nRequest {} by {} for the purpose {}",
            request.tables.join(", "),
            request.id,
            request.principal,
            request.purpose
        );
        if let Some(terms) = outcome.terms() {
            text.push_str(&format!(
                ", columns {}, until {}",
                terms.columns.join(", "),
                terms.expires_at
            ));
        }
        if let Some(j) = &request.justification {
            text.push_str(&format!("\nJustification: {j}"));
        }
        text.push_str(&format!(
            "\nWhy it waits: {}\nDeclining leaves it pending; you can decide later with decide_request.",
            outcome.explanation()
        ));
        text
    }

    /// Ends a request whose automatic grant waited for the person's acknowledgement: a grant when they accepted,
    /// terminated when not.
    async fn conclude_acknowledgement(
        &self,
        checked: &mut Checked<'_>,
        request: &AccessRequest,
        terms: &negotiation::Terms,
        accepted: bool,
        mut result: NegotiationResult,
    ) -> Result<NegotiationResult, ToolError> {
        let tables = request.tables.join(",");
        let Some(grant) = self
            .flows()
            .acknowledge(request, terms.clone(), accepted)
            .await?
        else {
            result.status = "declined".to_string();
            result.state = State::Terminated.as_str().to_string();
            result.reason =
                "the user did not acknowledge the contract's usage terms, so no grant was made"
                    .to_string();
            checked.note(
                Action::RequestAccess,
                &tables,
                format!(
                    "request {} declined by the user at acknowledgement",
                    request.id
                ),
            );
            return Ok(result);
        };
        checked.note(
            Action::RequestAccess,
            &tables,
            format!(
                "request {} granted as grant {} after the user acknowledged the usage terms: {}",
                request.id, grant.id, result.reason
            ),
        );
        self.with_grant(&mut result, request, grant);
        Ok(result)
    }

    /// Ends the question to an approver about their own pending request: approved (the same path as
    /// `decide_request`, audited as their decision) or left pending.
    async fn conclude_approval(
        &self,
        checked: &mut Checked<'_>,
        request: &AccessRequest,
        outcome: &Outcome,
        answer: Answer<Approval>,
        mut result: NegotiationResult,
    ) -> Result<NegotiationResult, ToolError> {
        let approval = match answer {
            Answer::Given(a) if a.approve => a,
            _ => {
                checked.note(
                    Action::RequestAccess,
                    &request.tables.join(","),
                    format!(
                        "request {} pending: its requester, an approver, did not approve it when asked",
                        request.id
                    ),
                );
                result.reason.push_str(
                    " You did not approve it now; decide later with decide_request, or wait for another approver.",
                );
                return Ok(result);
            }
        };
        let reason = if approval.reason.trim().is_empty() {
            "approved by the requester as an approver".to_string()
        } else {
            approval.reason.trim().to_string()
        };
        self.require_decide(checked, &request.tables)?;
        let (grant, _) = self
            .approve_request(
                checked,
                request,
                outcome,
                &reason,
                &Tightening::default(),
                "when asked through elicitation",
            )
            .await?;
        self.with_grant(&mut result, request, grant);
        result.reason = format!(
            "approved by you as an approver of {} (asked through elicitation): {reason}",
            request.tables.join(", ")
        );
        Ok(result)
    }

    async fn do_request_access(
        &self,
        checked: &mut Checked<'_>,
        args: RequestAccessArgs,
        asker: Option<&Asker>,
        call: &str,
    ) -> Result<RequestReply, ToolError> {
        if args.tables.is_empty() {
            return Err(ToolError::BadRequest(
                "tables is empty: name at least one table as namespace.table".to_string(),
            ));
        }
        let mut eligible = true;
        let mut contracts = Vec::new();
        let mut facts_of = Vec::new();
        for t in &args.tables {
            // Discovery is required (an undiscoverable table does not exist for the caller).
            let name = self.table_for(checked, t, Action::Discover, "").await?;
            let facts = self.app.lakehouse.facts_of_listed(&name);
            eligible &= checked
                .peek(Action::RequestAccess, &Resource::Table(facts.clone()))
                .allowed();
            facts_of.push((name.to_string(), facts));
            if let Some(c) = self.app.lakehouse.contract(&name) {
                contracts.push((name.to_string(), c.contract.clone()));
            }
        }
        let request = AccessRequest {
            id: negotiation::new_request_id(),
            principal: checked.principal_id().to_string(),
            tables: args.tables.clone(),
            columns: args.columns,
            purpose: args.purpose,
            justification: args.justification,
            duration_days: args.duration_days.unwrap_or(30),
            row_scope: args.row_scope,
            created_at: Utc::now(),
        };
        let refs: Vec<(&str, &crate::contracts::Contract)> =
            contracts.iter().map(|(t, c)| (t.as_str(), c)).collect();
        let evaluator = negotiation::Evaluator {
            purposes: &self.app.purposes,
            max_days: MAX_DAYS,
        };
        let policy = GatePolicy {
            checked,
            facts: &facts_of,
        };
        // A grant that a person must first acknowledge waits as an offer until they do.
        let Requested { outcome, grant } = self
            .flows()
            .request(
                &evaluator,
                &request,
                &refs,
                eligible,
                &policy,
                asker.is_some(),
            )
            .await?;
        let mut result = self.base_result(&request, &outcome);
        let tables = args.tables.join(",");
        match &outcome {
            Outcome::Granted { terms, .. } => match asker {
                Some(Asker::Request(peer)) => {
                    let answer =
                        elicit::ask::<Acknowledgement>(peer, self.acknowledgement_text(terms))
                            .await?;
                    let accepted =
                        matches!(answer, Answer::Given(Acknowledgement { accept: true }));
                    return self
                        .conclude_acknowledgement(checked, &request, terms, accepted, result)
                        .await
                        .map(RequestReply::done);
                }
                Some(Asker::InputRequired) => {
                    checked.note(
                        Action::RequestAccess,
                        &tables,
                        format!(
                            "request {} granted subject to the user's acknowledgement of the usage terms; \
                             asked for it (input required)",
                            request.id
                        ),
                    );
                    let message = self.acknowledgement_text(terms);
                    return self
                        .ask_later(checked, Question::Acknowledge, &request, message, call)
                        .map(RequestReply::Ask);
                }
                None => {
                    let grant =
                        grant.ok_or_else(|| internal("a granted request without its grant"))?;
                    self.with_grant(&mut result, &request, grant);
                }
            },
            Outcome::CounterOffer { terms, .. } => {
                result.terms_hash = Some(terms.hash());
                result.odrl = Some(self.odrl_for(
                    OdrlKind::Offer,
                    &format!("urn:parley:offer:{}", request.id),
                    &request.principal,
                    terms,
                ));
            }
            Outcome::Pending { approvers, .. } => {
                result.approvers = Some(approvers.clone());
                if let Some(asker) = asker
                    && self.may_self_approve(checked, &request, approvers)
                {
                    let message = self.approval_text(&request, &outcome);
                    match asker {
                        Asker::Request(peer) => {
                            let answer = elicit::ask::<Approval>(peer, message).await?;
                            return self
                                .conclude_approval(checked, &request, &outcome, answer, result)
                                .await
                                .map(RequestReply::done);
                        }
                        Asker::InputRequired => {
                            checked.note(
                                Action::RequestAccess,
                                &tables,
                                format!(
                                    "request {} pending; its requester is an approver and was asked to approve \
                                     it now (input required)",
                                    request.id
                                ),
                            );
                            return self
                                .ask_later(checked, Question::Approve, &request, message, call)
                                .map(RequestReply::Ask);
                        }
                    }
                }
            }
            Outcome::Denied { acceptable, .. } => result.acceptable = acceptable.clone(),
        }
        checked.note(
            Action::RequestAccess,
            &tables,
            format!(
                "request {} {}{}: {}",
                request.id,
                outcome.kind(),
                result
                    .grant_id
                    .as_ref()
                    .map(|g| format!(" as grant {g}"))
                    .unwrap_or_default(),
                result.reason
            ),
        );
        Ok(RequestReply::done(result))
    }

    /// The retry of a `request_access` call that asked the person something (protocol 2026-07-28): the echoed
    /// `requestState` names the question and the request, and is checked before either is trusted.
    async fn resume_request_access(
        &self,
        checked: &mut Checked<'_>,
        handle: &str,
        responses: Option<&rmcp::model::InputResponses>,
        call: &str,
    ) -> Result<RequestReply, ToolError> {
        let me = checked.principal_id().to_string();
        let (question, request_id) =
            StateSeal::new(&self.app.mask_secret).open(handle, &me, call)?;
        let stored = self.own_request(checked, &request_id).await?;
        let request = stored.request;
        let outcome = stored.outcome;
        let mut result = self.base_result(&request, &outcome);
        let tables = request.tables.join(",");
        match (question, &outcome) {
            (Question::Acknowledge, Outcome::Granted { terms, .. }) => {
                if stored.state != State::Offered {
                    return Err(ToolError::BadRequest(format!(
                        "request {request_id} is {}: it no longer waits for an acknowledgement; access_status \
                         shows its history",
                        stored.state.as_str()
                    )));
                }
                match elicit::answer::<Acknowledgement>(responses, question)? {
                    None => {
                        checked.note(
                            Action::RequestAccess,
                            &tables,
                            format!("request {request_id}: no answer in the retry; asked again"),
                        );
                        let message = self.acknowledgement_text(terms);
                        self.ask_later(checked, question, &request, message, call)
                            .map(RequestReply::Ask)
                    }
                    Some(answer) => {
                        let accepted =
                            matches!(answer, Answer::Given(Acknowledgement { accept: true }));
                        self.conclude_acknowledgement(checked, &request, terms, accepted, result)
                            .await
                            .map(RequestReply::done)
                    }
                }
            }
            (Question::Approve, Outcome::Pending { approvers, .. }) => {
                if stored.state != State::Requested {
                    return Err(ToolError::BadRequest(format!(
                        "request {request_id} is {}: it is no longer pending; access_status shows who decided",
                        stored.state.as_str()
                    )));
                }
                result.approvers = Some(approvers.clone());
                if !self.may_self_approve(checked, &request, approvers) {
                    return Err(ToolError::Denied {
                        reason: format!("you may no longer approve request {request_id} yourself"),
                        next_step:
                            "Wait for another approver; access_status shows the request's state."
                                .to_string(),
                    });
                }
                match elicit::answer::<Approval>(responses, question)? {
                    None => {
                        checked.note(
                            Action::RequestAccess,
                            &tables,
                            format!("request {request_id}: no answer in the retry; asked again"),
                        );
                        let message = self.approval_text(&request, &outcome);
                        self.ask_later(checked, question, &request, message, call)
                            .map(RequestReply::Ask)
                    }
                    Some(answer) => self
                        .conclude_approval(checked, &request, &outcome, answer, result)
                        .await
                        .map(RequestReply::done),
                }
            }
            _ => Err(internal(format!(
                "request {request_id}'s stored outcome does not match the question sealed for it"
            ))),
        }
    }

    /// Loads a request the caller made (others' requests do not exist for them).
    async fn own_request(
        &self,
        checked: &Checked<'_>,
        request_id: &str,
    ) -> Result<crate::negotiation::store::StoredRequest, ToolError> {
        Ok(self
            .flows()
            .own_request(checked.principal_id(), request_id)
            .await?)
    }

    async fn do_accept(
        &self,
        checked: &mut Checked<'_>,
        args: AcceptArgs,
    ) -> Result<DoneResult, ToolError> {
        // The flow moves the state before it makes the grant (see `negotiation::service`).
        let grant = self
            .flows()
            .accept(checked.principal_id(), &args.request_id, &args.terms_hash)
            .await?;
        checked.note(
            Action::RequestAccess,
            &grant.terms.tables.join(","),
            format!(
                "request {} offer accepted as grant {}",
                args.request_id, grant.id
            ),
        );
        Ok(DoneResult {
            message: format!(
                "offer accepted; grant {} is in force until {}",
                grant.id, grant.terms.expires_at
            ),
            grant_id: Some(grant.id),
            state: Some(State::Finalized.as_str().to_string()),
        })
    }

    async fn do_decline(
        &self,
        checked: &mut Checked<'_>,
        args: RequestIdArgs,
    ) -> Result<DoneResult, ToolError> {
        let stored = self
            .flows()
            .decline(checked.principal_id(), &args.request_id)
            .await?;
        checked.note(
            Action::RequestAccess,
            &stored.request.tables.join(","),
            format!("request {} offer declined", args.request_id),
        );
        Ok(DoneResult {
            message: "offer declined; the negotiation is terminated".to_string(),
            grant_id: None,
            state: Some(State::Terminated.as_str().to_string()),
        })
    }

    async fn grant_of_request(
        &self,
        request_id: &str,
        principal: &str,
    ) -> Result<Option<Grant>, ToolError> {
        Ok(self
            .app
            .store
            .grants_for_principal(principal)
            .await
            .map_err(Self::store_error)?
            .into_iter()
            .find(|g| g.request_id == request_id))
    }

    async fn do_status(
        &self,
        checked: &mut Checked<'_>,
        args: RequestIdArgs,
    ) -> Result<StatusResult, ToolError> {
        let stored = self.own_request(checked, &args.request_id).await?;
        let grant = self
            .grant_of_request(&args.request_id, checked.principal_id())
            .await?;
        let history = self
            .app
            .store
            .events(&args.request_id)
            .await
            .map_err(Self::store_error)?
            .into_iter()
            .map(|e| json!(e))
            .collect();
        checked.note(
            Action::RequestAccess,
            &stored.request.tables.join(","),
            format!("request {} status read", args.request_id),
        );
        let terms_hash = (stored.state == State::Offered)
            .then(|| stored.outcome.terms().map(negotiation::Terms::hash))
            .flatten();
        Ok(StatusResult {
            request_id: args.request_id,
            state: stored.state.as_str().to_string(),
            grant_id: grant.map(|g| g.id),
            terms_hash,
            request: json!(stored.request),
            outcome: json!(stored.outcome),
            history,
        })
    }

    /// Tables the caller may decide requests for.
    fn decidable(&self, checked: &Checked<'_>, tables: &[String]) -> bool {
        tables.iter().all(|t| {
            TableName::parse(t).is_ok_and(|name| {
                let facts = self.app.lakehouse.facts_of_listed(&name);
                checked
                    .peek(Action::DecideRequest, &Resource::Table(facts))
                    .allowed()
            })
        })
    }

    async fn do_my_grants(
        &self,
        checked: &mut Checked<'_>,
        _: NoArgs,
    ) -> Result<GrantsResult, ToolError> {
        let grants = self
            .app
            .store
            .grants_for_principal(checked.principal_id())
            .await
            .map_err(Self::store_error)?;
        checked.note(
            Action::RequestAccess,
            "*",
            format!("{} grant(s) listed", grants.len()),
        );
        Ok(GrantsResult {
            grants: {
                let now = self.app.clock.now();
                grants.iter().map(|g| grant_view(g, now)).collect()
            },
        })
    }

    async fn do_review(
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

    /// Requires the policy's `decide_request` on every table of a request; each decision is recorded.
    fn require_decide(
        &self,
        checked: &mut Checked<'_>,
        tables: &[String],
    ) -> Result<(), ToolError> {
        for t in tables {
            let name =
                TableName::parse(t).map_err(|_| ToolError::TableNotFound { table: t.clone() })?;
            let facts = self.app.lakehouse.facts_of_listed(&name);
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
    async fn approve_request(
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
            &request.tables.join(","),
            format!(
                "request {} approved by {who}{} as grant {}{}: {reason}",
                request.id,
                if how.is_empty() {
                    String::new()
                } else {
                    format!(" {how}")
                },
                grant.id,
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
    fn notice(&self, principal: &str, resource: String, data: Value) -> Notice {
        Notice {
            principal: principal.to_string(),
            resource,
            data,
        }
    }

    async fn do_decide(
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
        let resource = format!("{}{}", super::REQUEST_SCHEME, request.id);
        let tables = request.tables.join(", ");
        if !args.approve {
            self.transition(&args.request_id, State::Terminated, &who, &args.reason)
                .await?;
            checked.note(
                Action::DecideRequest,
                &request.tables.join(","),
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
            "grant_id": grant.id,
            "tables": request.tables,
            "state": State::Finalized.as_str(),
            "actor": who,
            "reason": args.reason,
            "changed_terms": changes,
            "expires_at": grant.terms.expires_at,
            "at": Utc::now(),
            "message": format!(
                "{who} approved your access request {} ({tables}): grant {} is in force; pass it to query as grant_id",
                request.id, grant.id
            ),
        });
        let notice = self.notice(&request.principal, resource, data);
        Ok(Decided {
            done: DoneResult {
                message: format!("request approved; grant {} is in force", grant.id),
                grant_id: Some(grant.id),
                state: Some(State::Finalized.as_str().to_string()),
            },
            notice: Some(notice),
        })
    }

    /// An approval with narrower terms: the request becomes a counter-offer the requester accepts by its hash.
    async fn counter_offer(
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
        if let Some(scope) = &narrowing.row_filter {
            // The same rule as for a requester's row scope: a column every table has, not personal data.
            for t in &terms.tables {
                let column = TableName::parse(t)
                    .ok()
                    .and_then(|n| self.app.lakehouse.contract(&n))
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
            .filter_map(|t| {
                let name = TableName::parse(t).ok()?;
                Some((t.clone(), self.app.lakehouse.facts_of_listed(&name)))
            })
            .collect();
        let policy = GatePolicy {
            checked,
            facts: &facts,
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
            &request.tables.join(","),
            format!(
                "request {} answered by {who} with a counter-offer: {why}",
                request.id
            ),
        );
        let tables = request.tables.join(", ");
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
        let resource = format!("{}{}", super::REQUEST_SCHEME, request.id);
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

    async fn do_revoke(
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
        for t in &grant.terms.tables {
            let name = TableName::parse(t).map_err(|_| not_found())?;
            let facts = self.app.lakehouse.facts_of_listed(&name);
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
            &grant.terms.tables.join(","),
            format!("grant {} revoked by {who}: {}", args.grant_id, args.reason),
        );
        let data = json!({
            "kind": "revoked",
            "request_id": grant.request_id,
            "grant_id": grant.id,
            "tables": grant.terms.tables,
            "actor": who,
            "reason": args.reason,
            "at": Utc::now(),
            "message": format!(
                "{who} revoked your grant {} ({}): {}",
                grant.id,
                grant.terms.tables.join(", "),
                args.reason
            ),
        });
        let notice = self.notice(
            &grant.principal,
            format!("{}{}", super::GRANT_SCHEME, grant.id),
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
}

impl ParleyServer {
    async fn do_consumers(
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
                    principal: Some(g.principal.clone()),
                    ..grant_view(g, self.app.clock.now())
                })
                .collect(),
        })
    }

    /// What others did about the caller's requests and grants (approvals, denials, revocations), newest first.
    async fn do_notices(
        &self,
        checked: &mut Checked<'_>,
        _: NoArgs,
    ) -> Result<NoticesResult, ToolError> {
        let me = checked.principal_id().to_string();
        let store = &self.app.store;
        let mut subjects: Vec<String> = store
            .requests_for_principal(&me)
            .await
            .map_err(Self::store_error)?
            .into_iter()
            .map(|r| r.request.id)
            .collect();
        subjects.extend(
            store
                .grants_for_principal(&me)
                .await
                .map_err(Self::store_error)?
                .into_iter()
                .map(|g| g.id),
        );
        let mut notices = Vec::new();
        for id in subjects {
            for e in store.events(&id).await.map_err(Self::store_error)? {
                if e.actor != me && e.actor != "parley" {
                    notices.push(json!(e));
                }
            }
        }
        notices.sort_by(|a, b| b["at"].as_str().cmp(&a["at"].as_str()));
        checked.note(
            Action::RequestAccess,
            "*",
            format!("{} notice(s) for {me}", notices.len()),
        );
        Ok(NoticesResult { notices })
    }

    /// The grant behind a `grant://{id}` resource: the grantee's own, or one on tables the caller owns.
    pub(super) async fn grant_resource(
        &self,
        checked: &mut Checked<'_>,
        id: &str,
    ) -> Result<Value, ToolError> {
        let not_found =
            || ToolError::BadRequest(format!("grant {id} not found among the grants you may see"));
        let grant = self
            .app
            .store
            .get_grant(id)
            .await
            .map_err(Self::store_error)?
            .ok_or_else(not_found)?;
        let mine = grant.principal == checked.principal_id();
        if !mine && !self.decidable(checked, &grant.terms.tables) {
            return Err(not_found());
        }
        checked.note(
            Action::RequestAccess,
            &grant.terms.tables.join(","),
            format!("grant {id} read"),
        );
        let view = GrantView {
            principal: Some(grant.principal.clone()),
            odrl: Some(self.odrl_for(
                OdrlKind::Agreement,
                &format!("urn:parley:agreement:{}", grant.id),
                &grant.principal,
                &grant.terms,
            )),
            ..grant_view(&grant, self.app.clock.now())
        };
        serde_json::to_value(view).map_err(internal)
    }
}

impl ParleyServer {
    /// Runs an owner's decision (`decide_request`, `revoke_grant`) through the gate and, once it is audited,
    /// pushes its notice to the requester's live sessions without waiting for them.
    async fn decided(
        &self,
        ctx: RequestContext<RoleServer>,
        args: JsonObject,
        tool: &'static str,
    ) -> Result<CallToolResult, String> {
        let principal = self.principal(&ctx);
        let decided = self
            .app
            .gate
            .run(&principal, tool, None, async |c| {
                if tool == "revoke_grant" {
                    self.do_revoke(c, parse_args(args)?).await
                } else {
                    self.do_decide(c, parse_args(args)?).await
                }
            })
            .await?;
        if let Some(notice) = decided.notice {
            self.app.sessions.push(notice);
        }
        let r = decided.done;
        let text = serde_json::to_string_pretty(&r).unwrap_or_default();
        Ok(respond(&r, text))
    }

    /// The `request://{id}` resource: one of the caller's requests, as `access_status` shows it.
    pub(super) async fn request_resource(
        &self,
        checked: &mut Checked<'_>,
        id: &str,
    ) -> Result<StatusResult, ToolError> {
        self.do_status(
            checked,
            RequestIdArgs {
                request_id: id.to_string(),
            },
        )
        .await
    }
}

macro_rules! gated {
    ($self:ident, $ctx:ident, $args:ident, $tool:literal, $method:ident) => {{
        let principal = $self.principal(&$ctx);
        let r = $self
            .app
            .gate
            .run(&principal, $tool, None, async |c| {
                $self.$method(c, parse_args($args)?).await
            })
            .await?;
        let text = serde_json::to_string_pretty(&r).unwrap_or_default();
        Ok(respond(&r, text))
    }};
}

#[tool_router(router = access_router, vis = "pub(super)")]
impl ParleyServer {
    #[tool(
        description = include_str!("../../tools/request_access.md"),
        input_schema = schema_for_type::<RequestAccessArgs>(),
        output_schema = rmcp::handler::server::tool::schema_for_output::<NegotiationResult>(),
        annotations(title = "Request access", read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn request_access(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
        RequestState(state): RequestState,
        InputResponses(responses): InputResponses,
    ) -> Result<CallToolResponse, String> {
        let principal = self.principal(&ctx);
        let purpose = args
            .get("purpose")
            .and_then(|p| p.as_str())
            .map(str::to_string);
        let asker = Asker::of(&ctx);
        let call = elicit::call_digest(&args);
        let reply = self
            .app
            .gate
            .run(
                &principal,
                "request_access",
                purpose,
                async |c| match &state {
                    Some(handle) => {
                        self.resume_request_access(c, handle, responses.as_ref(), &call)
                            .await
                    }
                    // Answers without the state they answer would start a new negotiation and ask again.
                    None if responses.is_some() => Err(ToolError::BadRequest(
                        "inputResponses came without requestState: retry with the requestState of the \
                         input-required result, unchanged"
                            .to_string(),
                    )),
                    None => {
                        self.do_request_access(c, parse_args(args)?, asker.as_ref(), &call)
                            .await
                    }
                },
            )
            .await?;
        let r = match reply {
            RequestReply::Done(r) => *r,
            RequestReply::Ask(question) => return Ok(CallToolResponse::InputRequired(question)),
        };
        let text = format!(
            "{} (request {}): {}{}",
            r.status,
            r.request_id,
            r.reason,
            r.grant_id
                .as_ref()
                .map(|g| format!("\nGrant: {g} — pass it to query as grant_id."))
                .or_else(|| r
                    .terms_hash
                    .as_ref()
                    .map(|h| format!("\nTo accept: accept_offer with terms_hash {h}.")))
                .unwrap_or_default()
        );
        Ok(respond(&r, text).into())
    }

    #[tool(
        description = include_str!("../../tools/accept_offer.md"),
        input_schema = schema_for_type::<AcceptArgs>(),
        output_schema = rmcp::handler::server::tool::schema_for_output::<DoneResult>(),
        annotations(title = "Accept an offer", read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn accept_offer(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        gated!(self, ctx, args, "accept_offer", do_accept)
    }

    #[tool(
        description = include_str!("../../tools/decline_offer.md"),
        input_schema = schema_for_type::<RequestIdArgs>(),
        output_schema = rmcp::handler::server::tool::schema_for_output::<DoneResult>(),
        annotations(title = "Decline an offer", read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn decline_offer(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        gated!(self, ctx, args, "decline_offer", do_decline)
    }

    #[tool(
        description = include_str!("../../tools/access_status.md"),
        input_schema = schema_for_type::<RequestIdArgs>(),
        output_schema = rmcp::handler::server::tool::schema_for_output::<StatusResult>(),
        annotations(title = "Access request status", read_only_hint = true, open_world_hint = false)
    )]
    async fn access_status(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        gated!(self, ctx, args, "access_status", do_status)
    }

    #[tool(
        description = include_str!("../../tools/my_grants.md"),
        input_schema = schema_for_type::<NoArgs>(),
        output_schema = rmcp::handler::server::tool::schema_for_output::<GrantsResult>(),
        annotations(title = "My grants", read_only_hint = true, open_world_hint = false)
    )]
    async fn my_grants(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        gated!(self, ctx, args, "my_grants", do_my_grants)
    }

    #[tool(
        description = include_str!("../../tools/review_requests.md"),
        input_schema = schema_for_type::<NoArgs>(),
        output_schema = rmcp::handler::server::tool::schema_for_output::<RequestsResult>(),
        annotations(title = "Review access requests", read_only_hint = true, open_world_hint = false)
    )]
    async fn review_requests(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        gated!(self, ctx, args, "review_requests", do_review)
    }

    #[tool(
        description = include_str!("../../tools/decide_request.md"),
        input_schema = schema_for_type::<DecideArgs>(),
        output_schema = rmcp::handler::server::tool::schema_for_output::<DoneResult>(),
        annotations(title = "Decide an access request", read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn decide_request(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        self.decided(ctx, args, "decide_request").await
    }

    #[tool(
        description = include_str!("../../tools/my_notices.md"),
        input_schema = schema_for_type::<NoArgs>(),
        output_schema = rmcp::handler::server::tool::schema_for_output::<NoticesResult>(),
        annotations(title = "My notices", read_only_hint = true, open_world_hint = false)
    )]
    async fn my_notices(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        gated!(self, ctx, args, "my_notices", do_notices)
    }

    #[tool(
        description = include_str!("../../tools/table_consumers.md"),
        input_schema = schema_for_type::<super::catalog::TableArgs>(),
        output_schema = rmcp::handler::server::tool::schema_for_output::<GrantsResult>(),
        annotations(title = "Who uses my table", read_only_hint = true, open_world_hint = false)
    )]
    async fn table_consumers(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        gated!(self, ctx, args, "table_consumers", do_consumers)
    }

    #[tool(
        description = include_str!("../../tools/revoke_grant.md"),
        input_schema = schema_for_type::<RevokeArgs>(),
        output_schema = rmcp::handler::server::tool::schema_for_output::<DoneResult>(),
        annotations(title = "Revoke a grant", read_only_hint = false, destructive_hint = true, open_world_hint = false)
    )]
    async fn revoke_grant(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        self.decided(ctx, args, "revoke_grant").await
    }
}

/// The caller's policy, through the gate, on the terms a negotiation could offer for `facts`' tables.
struct GatePolicy<'c> {
    checked: &'c Checked<'c>,
    facts: &'c [(String, crate::policy::TableFacts)],
}

impl TermsPolicy for GatePolicy<'_> {
    fn refusal(&self, terms: &negotiation::Terms) -> Option<String> {
        self.facts.iter().find_map(|(table, f)| {
            let d = self.checked.peek_under(
                Action::Query,
                &Resource::Table(f.clone()),
                terms.policy_context(table, ""),
            );
            (!d.allowed()).then(|| format!("{table}: {}", d.reason()))
        })
    }

    fn personal_columns(&self) -> Vec<(String, Vec<String>)> {
        self.facts
            .iter()
            .map(|(table, f)| (table.clone(), f.pii_columns.clone()))
            .collect()
    }
}

/// The masks of `table` in a grant, for the query engine.
pub(super) fn governance_of(grant: &Grant, table: &str, secret: &str) -> crate::query::Governance {
    use crate::query::ColumnMask;
    let masks: BTreeMap<String, ColumnMask> = grant
        .terms
        .columns_of(table)
        .into_iter()
        .filter_map(|c| {
            grant.terms.mask_of(table, c).map(|m| {
                (
                    c.to_string(),
                    match m {
                        negotiation::Mask::Hash => ColumnMask::Hash,
                        negotiation::Mask::Redact => ColumnMask::Redact,
                        negotiation::Mask::YearOnly => ColumnMask::YearOnly,
                    },
                )
            })
        })
        .collect();
    crate::query::Governance {
        columns: grant
            .terms
            .columns_of(table)
            .into_iter()
            .map(str::to_string)
            .collect(),
        masks,
        row_filter: grant
            .terms
            .row_filter
            .as_ref()
            .map(|r| (r.column.clone(), r.values.clone())),
        // A server-side secret keeps hashed values from being reversed by hashing guesses; the grant id keeps
        // hashes from linking across grants.
        salt: crate::audit::digest(&format!("parley-mask:{secret}:{}", grant.id)),
    }
}

impl From<FlowError> for ToolError {
    fn from(e: FlowError) -> ToolError {
        match e {
            FlowError::NotFound(m) | FlowError::Refused(m) | FlowError::Conflict(m) => {
                ToolError::BadRequest(m)
            }
            FlowError::Store(m) => internal(m),
        }
    }
}

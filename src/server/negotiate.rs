//! The requester's negotiation tools: `request_access`, `accept_offer`, `decline_offer`, `access_status`,
//! `my_grants`, `my_notices`, and the `request://{id}` resource. Each handler parses its arguments, lets the
//! gate decide (discovery, eligibility), calls the flow in `negotiation::service`, and renders. Where a person must
//! confirm — acknowledging usage terms before an automatic grant, approving a request they are an approver of —
//! the person behind an elicitation-capable client is asked (`elicit`).

use chrono::Utc;
use rmcp::handler::server::common::schema_for_type;
use rmcp::handler::server::tool::{InputResponses, RequestState, schema_for_output};
use rmcp::model::{CallToolResponse, CallToolResult, InputRequiredResult, JsonObject};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::access::{DoneResult, GatePolicy, GrantsResult, NoArgs, grant_view};
use super::elicit::{self, Acknowledgement, Answer, Approval, Asker, Question, StateSeal};
use super::owner::Tightening;
use super::{ParleyServer, internal, json_reply, parse_args, respond, stated_purpose};
use crate::catalog::TableName;
use crate::config::SelfApproval;
use crate::gate::{Checked, ToolError};
use crate::negotiation::service::Requested;
use crate::negotiation::store::EventKind;
use crate::negotiation::{self, AccessRequest, Grant, OdrlKind, Outcome, RowScope, State};
use crate::policy::{Action, Resource};

/// Longest term any grant gets, in days.
pub(super) const MAX_DAYS: u32 = 90;

/// How long an automatic grant waits for the person's acknowledgement before its offer lapses.
const ACKNOWLEDGE_WITHIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The tables of a request with their contracts and facts, and whether the caller may ask (see
/// `ParleyServer::basis`).
struct Basis {
    tables: Vec<TableName>,
    contracts: Vec<(String, crate::contracts::Contract)>,
    facts: Vec<(String, crate::policy::TableFacts)>,
    eligible: bool,
}

/// `None` when the person acknowledged the usage terms, else why not.
fn acknowledged(answer: Answer<Acknowledgement>) -> Option<String> {
    match answer {
        Answer::Given(Acknowledgement { accept: true }) => None,
        Answer::Given(_) | Answer::Refused => Some("the user declined".to_string()),
        Answer::Unanswered(why) => Some(why),
    }
}

/// Whether `now` offers what `offered` did: the same terms, with a term ending no earlier (a term is counted
/// from when it is evaluated).
fn same_offer(offered: &negotiation::Terms, now: &negotiation::Terms) -> bool {
    let mut aligned = now.clone();
    aligned.expires_at = offered.expires_at;
    aligned.hash() == offered.hash() && now.expires_at >= offered.expires_at
}

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

/// The caller's inbox.
#[derive(Debug, Serialize, JsonSchema)]
pub struct NoticesResult {
    /// Decisions others took on your requests and grants (approved, denied, revoked), newest first.
    pub notices: Vec<Value>,
}

impl RequestReply {
    fn done(result: NegotiationResult) -> RequestReply {
        RequestReply::Done(Box::new(result))
    }
}

impl ParleyServer {
    /// The answer to a request as the outcome gives it, before any grant, question or decision.
    pub(super) fn base_result(
        &self,
        request: &AccessRequest,
        outcome: &Outcome,
    ) -> NegotiationResult {
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
            resource_uri: format!("{}{}", super::resources::REQUEST_SCHEME, request.id),
        }
    }

    /// Puts a grant into an answer: its id, terms hash and ODRL agreement.
    pub(super) fn with_grant(
        &self,
        result: &mut NegotiationResult,
        request: &AccessRequest,
        grant: Grant,
    ) {
        result.status = "granted".to_string();
        result.state = State::Finalized.as_str().to_string();
        result.terms = Some(json!(grant.terms()));
        result.odrl = Some(self.odrl_for(
            OdrlKind::Agreement,
            &format!("urn:parley:agreement:{}", grant.id()),
            &request.principal,
            grant.terms(),
        ));
        result.terms_hash = Some(grant.terms_hash().to_string());
        result.grant_id = Some(grant.id().to_string());
    }

    /// The text a person acknowledges before a grant starts: purpose, usage, limitations, acknowledgement.
    pub(super) fn acknowledgement_text(&self, terms: &negotiation::Terms) -> String {
        let mut text = format!(
            "Start a grant on {} for the purpose {} until {}?",
            TableName::join(&terms.tables, ", "),
            terms.purpose,
            terms.expires_at
        );
        for t in &terms.tables {
            let Some(c) = self.app.lakehouse.contract(t) else {
                continue;
            };
            let (id, version) = (&c.contract.id, &c.contract.version);
            let (usage, limitations) = c
                .contract
                .description
                .as_ref()
                .map(|d| (d.usage.as_deref(), d.limitations.as_deref()))
                .unwrap_or_default();
            text.push_str(&format!(
                "\n{t} (contract {id}@{version}) — usage: {}\nlimitations: {}",
                usage.unwrap_or("-"),
                limitations.unwrap_or("-")
            ));
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

    /// Asks `question` about `request` as an input-required result whose `requestState` is sealed to this caller
    /// and call, and to the question's `text` (shown after `preface`, when there is one).
    pub(super) fn ask_later(
        &self,
        checked: &Checked<'_>,
        question: Question,
        request: &AccessRequest,
        (preface, text): (&str, String),
        call: &str,
    ) -> Result<InputRequiredResult, ToolError> {
        let state = StateSeal::new(&self.app.mask_secret).seal(
            question,
            &request.id,
            checked.principal_id(),
            call,
            &elicit::shown_digest(&text),
        );
        elicit::input_required(question, format!("{preface}{text}"), state)
    }

    /// Whether the caller of a pending request should be asked to approve it now: self-approval by elicitation
    /// is enabled, the caller is one of the approvers the negotiation named (by id or group), and the policy
    /// lets them decide requests on every table of it.
    pub(super) fn may_self_approve(
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
    pub(super) fn approval_text(&self, request: &AccessRequest, outcome: &Outcome) -> String {
        let mut text = format!(
            "You are an approver of {}: approve this request now?\nRequest {} by {} for the purpose {}",
            TableName::join(&request.tables, ", "),
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

    /// Ends a request whose automatic grant waited for the person's acknowledgement: `refused` says why it was not
    /// acknowledged (terminated, no grant); acknowledged, the grant is made only if the offer still holds — asked
    /// within [`ACKNOWLEDGE_WITHIN`] of the request, and the contracts and the caller's policy as they are now
    /// still grant exactly these terms (an outside test redeemed an old offer after the owner had prohibited its
    /// purpose, and another after a column became personal data). An offer that no longer holds is withdrawn
    /// (terminated) and the caller told to ask again.
    pub(super) async fn conclude_acknowledgement(
        &self,
        checked: &mut Checked<'_>,
        request: &AccessRequest,
        terms: &negotiation::Terms,
        refused: Option<String>,
        mut result: NegotiationResult,
    ) -> Result<NegotiationResult, ToolError> {
        let tables = TableName::join(&request.tables, ",");
        let withdrawn = match &refused {
            Some(_) => None,
            None if Utc::now() - request.created_at > ACKNOWLEDGE_WITHIN => Some(format!(
                "it was not acknowledged within {} minutes of the request",
                ACKNOWLEDGE_WITHIN.num_minutes()
            )),
            None => self
                .offer_holds(checked, request, terms, "granted")
                .await
                .err(),
        };
        if let Some(why) = withdrawn {
            return Err(self
                .withdraw(checked, request, "acknowledgement", &why)
                .await);
        }
        let Some(grant) = self
            .flows()
            .acknowledge(request, terms.clone(), refused.is_none())
            .await?
        else {
            let why = refused.unwrap_or_default();
            result.status = "declined".to_string();
            result.state = State::Terminated.as_str().to_string();
            result.reason = format!(
                "the contract's usage terms were not acknowledged ({why}), so no grant was made"
            );
            checked.note(
                Action::RequestAccess,
                &tables,
                format!(
                    "request {} not acknowledged by the user ({why}); terminated",
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
                request.id,
                grant.id(),
                result.reason
            ),
        );
        self.with_grant(&mut result, request, grant);
        Ok(result)
    }

    /// The tables named, each discoverable by the caller (else the call fails as for a missing table), with their
    /// contracts and policy facts as they are now, and whether the policy lets the caller ask for them.
    async fn basis(&self, checked: &mut Checked<'_>, names: &[String]) -> Result<Basis, ToolError> {
        let mut basis = Basis {
            tables: Vec::new(),
            contracts: Vec::new(),
            facts: Vec::new(),
            eligible: true,
        };
        for t in names {
            // Discovery is required (an undiscoverable table does not exist for the caller).
            let name = self.table_for(checked, t, Action::Discover, "").await?;
            let (facts, contract) = self.app.lakehouse.facts_and_contract(&name);
            basis.eligible &= checked
                .peek(Action::RequestAccess, &Resource::Table(facts.clone()))
                .allowed();
            basis.facts.push((name.to_string(), facts));
            if let Some(c) = contract {
                basis.contracts.push((name.to_string(), c.contract.clone()));
            }
            basis.tables.push(name);
        }
        Ok(basis)
    }

    /// `request` evaluated again now — discovery, the contracts, eligibility and the caller's policy, as for a
    /// new request. `Err` when a table is no longer there for the caller.
    async fn evaluate_now(
        &self,
        checked: &mut Checked<'_>,
        request: &AccessRequest,
    ) -> Result<Outcome, String> {
        let names: Vec<String> = request.tables.iter().map(ToString::to_string).collect();
        let basis = self
            .basis(checked, &names)
            .await
            .map_err(|e| e.to_string())?;
        let refs: Vec<(&str, &crate::contracts::Contract)> = basis
            .contracts
            .iter()
            .map(|(t, c)| (t.as_str(), c))
            .collect();
        let evaluator = negotiation::Evaluator {
            purposes: &self.app.purposes,
            max_days: MAX_DAYS,
        };
        let outcome = evaluator.evaluate(request, &refs, basis.eligible, self.app.clock.now());
        let policy = GatePolicy {
            checked,
            facts: &basis.facts,
            requester: None,
        };
        Ok(negotiation::fit_policy(outcome, &policy))
    }

    /// Whether an automatic offer of `terms` (an outcome of kind `kind`) made for `request` still holds: the
    /// request evaluated again now ([`ParleyServer::evaluate_now`]) comes to the same kind of outcome with the
    /// same terms (a term that ends no earlier). `Err` says what it comes to now.
    pub(super) async fn offer_holds(
        &self,
        checked: &mut Checked<'_>,
        request: &AccessRequest,
        terms: &negotiation::Terms,
        kind: &str,
    ) -> Result<(), String> {
        let outcome = self.evaluate_now(checked, request).await?;
        match outcome.terms() {
            Some(now) if outcome.kind() == kind && same_offer(terms, now) => Ok(()),
            Some(_) if outcome.kind() == kind => Err(
                "the terms it would get now differ from those offered (the contract or the policy changed \
                 since)"
                    .to_string(),
            ),
            _ => Err(format!(
                "a new request would now be {}: {}",
                outcome.kind(),
                outcome.explanation()
            )),
        }
    }

    /// Withdraws the offer of `request`, found at `when` (its acknowledgement or acceptance) to hold no longer
    /// (`why`): the request is terminated, the withdrawal noted for the audit record, and the caller told to ask
    /// again.
    async fn withdraw(
        &self,
        checked: &mut Checked<'_>,
        request: &AccessRequest,
        when: &str,
        why: &str,
    ) -> ToolError {
        if let Err(e) = self
            .flows()
            .transition(
                &request.id,
                State::Terminated,
                &request.principal,
                &format!("offer withdrawn at {when}: {why}"),
            )
            .await
        {
            return e.into();
        }
        checked.note(
            Action::RequestAccess,
            &TableName::join(&request.tables, ","),
            format!(
                "request {}: its offer no longer held at {when} and was withdrawn: {why}",
                request.id
            ),
        );
        ToolError::Denied {
            reason: format!(
                "the offer of request {} no longer holds, so no grant was made: {}",
                request.id,
                why.trim_end_matches('.')
            ),
            next_step:
                "Call request_access again: the contracts and policy as they are now decide."
                    .to_string(),
        }
    }

    /// Ends the question to an approver about their own pending request: approved (the same path as
    /// `decide_request`, audited as their decision) or left pending.
    pub(super) async fn conclude_approval(
        &self,
        checked: &mut Checked<'_>,
        request: &AccessRequest,
        outcome: &Outcome,
        answer: Answer<Approval>,
        mut result: NegotiationResult,
    ) -> Result<NegotiationResult, ToolError> {
        let approval = match answer {
            Answer::Given(a) if a.approve => a,
            other => {
                let why = match other {
                    Answer::Unanswered(why) => format!(" ({why})"),
                    _ => String::new(),
                };
                checked.note(
                    Action::RequestAccess,
                    &TableName::join(&request.tables, ","),
                    format!(
                        "request {} pending: its requester, an approver, did not approve it when asked{why}",
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
            TableName::join(&request.tables, ", ")
        );
        Ok(result)
    }

    pub(super) async fn do_request_access(
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
        let Basis {
            tables,
            contracts,
            facts: facts_of,
            eligible,
        } = self.basis(checked, &args.tables).await?;
        let request = AccessRequest {
            id: negotiation::new_request_id(),
            principal: checked.principal_id().to_string(),
            tables,
            columns: args.columns,
            purpose: args.purpose,
            justification: args.justification,
            duration_days: args.duration_days.unwrap_or(30),
            row_scope: args.row_scope,
            created_at: Utc::now(),
            requester_groups: checked.principal().groups.clone(),
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
            requester: None,
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
                Some(Asker::Request(peer, cancelled)) => {
                    // Noted before asking: a call dropped while it waits is still audited with this (the gate).
                    checked.note(
                        Action::RequestAccess,
                        &tables,
                        format!(
                            "request {} granted subject to the user's acknowledgement of the usage terms; \
                             asked for it (elicitation)",
                            request.id
                        ),
                    );
                    let message = self.acknowledgement_text(terms);
                    let answer =
                        elicit::ask::<Acknowledgement>(peer, cancelled, message.clone()).await;
                    // An acceptance of a text that reads differently now (a contract changed while the question
                    // waited) acknowledges nothing.
                    let refused = match acknowledged(answer) {
                        None if self.acknowledgement_text(terms) != message => Some(
                            "the usage terms changed while the question waited (a contract changed); request \
                             access again to be shown them"
                                .to_string(),
                        ),
                        other => other,
                    };
                    return self
                        .conclude_acknowledgement(checked, &request, terms, refused, result)
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
                        .ask_later(
                            checked,
                            Question::Acknowledge,
                            &request,
                            ("", message),
                            call,
                        )
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
                        Asker::Request(peer, cancelled) => {
                            checked.note(
                                Action::RequestAccess,
                                &tables,
                                format!(
                                    "request {} pending; its requester is an approver and was asked to approve \
                                     it now (elicitation)",
                                    request.id
                                ),
                            );
                            let answer = elicit::ask::<Approval>(peer, cancelled, message).await;
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
                                .ask_later(
                                    checked,
                                    Question::Approve,
                                    &request,
                                    ("", message),
                                    call,
                                )
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
    pub(super) async fn resume_request_access(
        &self,
        checked: &mut Checked<'_>,
        handle: &str,
        responses: Option<&rmcp::model::InputResponses>,
        call: &str,
    ) -> Result<RequestReply, ToolError> {
        let me = checked.principal_id().to_string();
        let (question, request_id, shown) =
            StateSeal::new(&self.app.mask_secret).open(handle, &me, call)?;
        let stored = self.own_request(checked, &request_id).await?;
        let request = stored.request;
        let outcome = stored.outcome;
        let mut result = self.base_result(&request, &outcome);
        let tables = TableName::join(&request.tables, ",");
        match (question, &outcome) {
            (Question::Acknowledge, Outcome::Granted { terms, .. }) => {
                if stored.state != State::Offered {
                    return Err(ToolError::BadRequest(format!(
                        "request {request_id} is {}: it no longer waits for an acknowledgement; access_status \
                         shows its history",
                        stored.state.as_str()
                    )));
                }
                // The text as it reads now: an acceptance of another text (a contract changed between the
                // question and the answer) is no acknowledgement of this one, which is asked instead.
                let message = self.acknowledgement_text(terms);
                let reworded = elicit::shown_digest(&message) != shown;
                match elicit::answer::<Acknowledgement>(responses, question)? {
                    None => {
                        checked.note(
                            Action::RequestAccess,
                            &tables,
                            format!("request {request_id}: no answer in the retry; asked again"),
                        );
                        self.ask_later(checked, question, &request, ("", message), call)
                            .map(RequestReply::Ask)
                    }
                    Some(Answer::Given(Acknowledgement { accept: true })) if reworded => {
                        checked.note(
                            Action::RequestAccess,
                            &tables,
                            format!(
                                "request {request_id}: acknowledged, but the usage terms read differently now (a \
                                 contract changed since they were shown); asked again"
                            ),
                        );
                        let preface =
                            "The usage terms changed since you were asked. As they read now:\n";
                        self.ask_later(checked, question, &request, (preface, message), call)
                            .map(RequestReply::Ask)
                    }
                    Some(answer) => self
                        .conclude_acknowledgement(
                            checked,
                            &request,
                            terms,
                            acknowledged(answer),
                            result,
                        )
                        .await
                        .map(RequestReply::done),
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
                        self.ask_later(checked, question, &request, ("", message), call)
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
    pub(super) async fn own_request(
        &self,
        checked: &Checked<'_>,
        request_id: &str,
    ) -> Result<crate::negotiation::store::StoredRequest, ToolError> {
        Ok(self
            .flows()
            .own_request(checked.principal_id(), request_id)
            .await?)
    }

    pub(super) async fn do_accept(
        &self,
        checked: &mut Checked<'_>,
        args: AcceptArgs,
    ) -> Result<DoneResult, ToolError> {
        // An automatic offer (no person made it) is made again before it is accepted: one the contracts or the
        // policy no longer make is withdrawn, as at an acknowledgement.
        let offer = self
            .flows()
            .open_offer(checked.principal_id(), &args.request_id)
            .await?;
        // An offer a person made stands as made, unless a new request would now be denied outright (a purpose
        // prohibited since, the caller no longer eligible, a table gone). Only an acceptance that could succeed
        // is checked: the flow answers a wrong hash or an ended term as before.
        let could_grant =
            offer.terms.hash() == args.terms_hash && offer.terms.expires_at > self.app.clock.now();
        let holds = if !could_grant {
            Ok(())
        } else if offer.offered_by.is_empty() {
            self.offer_holds(
                checked,
                &offer.stored.request,
                &offer.terms,
                "counter_offer",
            )
            .await
        } else {
            match self.evaluate_now(checked, &offer.stored.request).await {
                Ok(denied @ Outcome::Denied { .. }) => Err(format!(
                    "a new request would now be denied: {}",
                    denied.explanation()
                )),
                other => other.map(drop),
            }
        };
        if let Err(why) = holds {
            return Err(self
                .withdraw(checked, &offer.stored.request, "acceptance", &why)
                .await);
        }
        // The flow moves the state before it makes the grant (see `negotiation::service`).
        let grant = self
            .flows()
            .accept(checked.principal_id(), &args.request_id, &args.terms_hash)
            .await?;
        checked.note(
            Action::RequestAccess,
            &TableName::join(&grant.terms().tables, ","),
            format!(
                "request {} offer accepted as grant {}",
                args.request_id,
                grant.id()
            ),
        );
        Ok(DoneResult {
            message: format!(
                "offer accepted; grant {} is in force until {}",
                grant.id(),
                grant.terms().expires_at
            ),
            grant_id: Some(grant.id().to_string()),
            state: Some(State::Finalized.as_str().to_string()),
        })
    }

    pub(super) async fn do_decline(
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
            &TableName::join(&stored.request.tables, ","),
            format!("request {} offer declined", args.request_id),
        );
        Ok(DoneResult {
            message: "offer declined; the negotiation is terminated".to_string(),
            grant_id: None,
            state: Some(State::Terminated.as_str().to_string()),
        })
    }

    pub(super) async fn grant_of_request(
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
            .find(|g| g.request_id() == request_id))
    }

    pub(super) async fn do_status(
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
            &TableName::join(&stored.request.tables, ","),
            format!("request {} status read", args.request_id),
        );
        // Only a counter-offer is accepted by its hash; an automatic grant waiting for the person's
        // acknowledgement is not the agent's to accept.
        let terms_hash = match (&stored.state, &stored.outcome) {
            (State::Offered, Outcome::CounterOffer { terms, .. }) => Some(terms.hash()),
            _ => None,
        };
        Ok(StatusResult {
            request_id: args.request_id,
            state: stored.state.as_str().to_string(),
            grant_id: grant.map(|g| g.id().to_string()),
            terms_hash,
            request: json!(stored.request),
            outcome: json!(stored.outcome),
            history,
        })
    }

    pub(super) async fn do_my_grants(
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

    /// What others did about the caller's requests and grants (approvals, denials, revocations), newest first.
    pub(super) async fn do_notices(
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
                .map(|g| g.id().to_string()),
        );
        // Tables the caller owns (the policy's decide_request) whose owners were told something.
        for subject in store.table_subjects().await.map_err(Self::store_error)? {
            let Some(table) = subject
                .strip_prefix(crate::negotiation::store::TABLE_SUBJECT)
                .and_then(|t| TableName::parse(t).ok())
            else {
                continue;
            };
            let facts = self.app.lakehouse.facts_of_listed(&table);
            if checked
                .peek(Action::DecideRequest, &Resource::Table(facts))
                .allowed()
            {
                subjects.push(subject);
            }
        }
        let mut notices = Vec::new();
        for id in subjects {
            for e in store.events(&id).await.map_err(Self::store_error)? {
                // Parley's own automatic steps of the caller's negotiation echo the caller; what Parley found
                // about a table (drift, quality) is news.
                let echo = e.actor == "parley"
                    && !matches!(e.kind, EventKind::ContractChange | EventKind::Quality);
                if e.actor != me && !echo {
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

#[tool_router(router = negotiate_router, vis = "pub(super)")]
impl ParleyServer {
    #[tool(
        description = include_str!("../../tools/request_access.md"),
        input_schema = schema_for_type::<RequestAccessArgs>(),
        output_schema = schema_for_output::<NegotiationResult>(),
        annotations(title = "Request access", read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn request_access(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
        RequestState(state): RequestState,
        InputResponses(responses): InputResponses,
    ) -> Result<CallToolResponse, String> {
        let asker = Asker::of(&ctx);
        let call = elicit::call_digest(&args);
        self.gated(
            &ctx,
            "request_access",
            stated_purpose(&args),
            args,
            async |c, args: JsonObject| match &state {
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
            request_reply,
        )
        .await
    }

    #[tool(
        description = include_str!("../../tools/accept_offer.md"),
        input_schema = schema_for_type::<AcceptArgs>(),
        output_schema = schema_for_output::<DoneResult>(),
        annotations(title = "Accept an offer", read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn accept_offer(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        self.gated(
            &ctx,
            "accept_offer",
            None,
            args,
            async |c, a| self.do_accept(c, a).await,
            json_reply,
        )
        .await
    }

    #[tool(
        description = include_str!("../../tools/decline_offer.md"),
        input_schema = schema_for_type::<RequestIdArgs>(),
        output_schema = schema_for_output::<DoneResult>(),
        annotations(title = "Decline an offer", read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn decline_offer(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        self.gated(
            &ctx,
            "decline_offer",
            None,
            args,
            async |c, a| self.do_decline(c, a).await,
            json_reply,
        )
        .await
    }

    #[tool(
        description = include_str!("../../tools/access_status.md"),
        input_schema = schema_for_type::<RequestIdArgs>(),
        output_schema = schema_for_output::<StatusResult>(),
        annotations(title = "Access request status", read_only_hint = true, open_world_hint = false)
    )]
    async fn access_status(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        self.gated(
            &ctx,
            "access_status",
            None,
            args,
            async |c, a| self.do_status(c, a).await,
            json_reply,
        )
        .await
    }

    #[tool(
        description = include_str!("../../tools/my_grants.md"),
        input_schema = schema_for_type::<NoArgs>(),
        output_schema = schema_for_output::<GrantsResult>(),
        annotations(title = "My grants", read_only_hint = true, open_world_hint = false)
    )]
    async fn my_grants(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        self.gated(
            &ctx,
            "my_grants",
            None,
            args,
            async |c, a| self.do_my_grants(c, a).await,
            json_reply,
        )
        .await
    }

    #[tool(
        description = include_str!("../../tools/my_notices.md"),
        input_schema = schema_for_type::<NoArgs>(),
        output_schema = schema_for_output::<NoticesResult>(),
        annotations(title = "My notices", read_only_hint = true, open_world_hint = false)
    )]
    async fn my_notices(
        &self,
        args: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        self.gated(
            &ctx,
            "my_notices",
            None,
            args,
            async |c, a| self.do_notices(c, a).await,
            json_reply,
        )
        .await
    }
}

/// The reply to `request_access`: the answer, or the question to the person behind the client.
pub(super) fn request_reply(reply: RequestReply) -> CallToolResponse {
    let r = match reply {
        RequestReply::Done(r) => *r,
        RequestReply::Ask(question) => return CallToolResponse::InputRequired(question),
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
    respond(&r, text).into()
}

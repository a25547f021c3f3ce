//! What the negotiation tool families (`negotiate`, `owner`) share: the common argument and result types, the
//! grant as tools show it (`GrantView`, the `grant://{id}` resource), ODRL rendering with the contracts'
//! owners, the flows of `negotiation::service` over this server's store, and the caller's policy as the
//! negotiation sees it (`GatePolicy`).
//!
//! Invariant: a negotiation moves to its next state before the grant it leads to is made, so two racing answers
//! (two approvals, an acknowledgement retried twice) make one grant.

use std::collections::BTreeMap;

use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ParleyServer, internal};
use crate::catalog::TableName;
use crate::gate::{Checked, ToolError};
use crate::negotiation::service::{FlowError, Negotiations};
use crate::negotiation::{self, Grant, OdrlKind, State, TermsPolicy, combined_limitations};
use crate::policy::{Action, Resource};

/// No arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

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

pub(super) fn grant_view(g: &Grant, now: chrono::DateTime<Utc>) -> GrantView {
    GrantView {
        grant_id: g.id().to_string(),
        request_id: g.request_id().to_string(),
        principal: None,
        live: g.is_live(now),
        revoked_at: g.revoked_at(),
        terms: g.terms().clone(),
        terms_hash: g.terms_hash().to_string(),
        usage: g.usage(),
        approvers: g.approvers().to_vec(),
        contract_versions: g.contract_versions().clone(),
        created_at: g.created_at(),
        odrl: None,
    }
}

/// The caller's policy, through the gate, on the terms a negotiation could offer for `facts`' tables.
pub(super) struct GatePolicy<'c> {
    pub(super) checked: &'c Checked<'c>,
    pub(super) facts: &'c [(String, crate::policy::TableFacts)],
    /// Whose queries the terms are for, when not the caller's (an approver offering changed terms).
    pub(super) requester: Option<&'c crate::identity::Principal>,
}

/// A list of grants.
#[derive(Debug, Serialize, JsonSchema)]
pub struct GrantsResult {
    /// Grants with terms, usage and whether live.
    pub grants: Vec<GrantView>,
}

impl ParleyServer {
    pub(super) fn store_error(e: impl std::fmt::Display) -> ToolError {
        internal(e)
    }

    /// The owner of the tables as ODRL assigner: the contracts' teams.
    pub(super) fn assigner(&self, tables: &[TableName]) -> String {
        let owners: Vec<String> = tables
            .iter()
            .filter_map(|t| {
                self.app
                    .lakehouse
                    .contract(t)
                    .and_then(|c| c.contract.owner_group().map(str::to_string))
            })
            .collect();
        if owners.is_empty() {
            "urn:parley:owner:unknown".to_string()
        } else {
            format!("urn:parley:group:{}", owners.join(","))
        }
    }

    pub(super) fn odrl_for(
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
                Some((
                    t.to_string(),
                    self.app.lakehouse.contract(t)?.contract.clone(),
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
    pub(super) fn flows(&self) -> Negotiations<'_> {
        Negotiations::new(
            self.app.store.as_ref(),
            &self.app.lakehouse,
            self.app.clock.now(),
        )
    }

    /// Moves a request to `state`; a request that another call already moved on is the agent's to re-read.
    pub(super) async fn transition(
        &self,
        request_id: &str,
        state: State,
        who: &str,
        why: &str,
    ) -> Result<(), ToolError> {
        Ok(self.flows().transition(request_id, state, who, why).await?)
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
        let mine = grant.principal() == checked.principal_id();
        if !mine && !self.decidable(checked, &grant.terms().tables) {
            return Err(not_found());
        }
        checked.note(
            Action::RequestAccess,
            &TableName::join(&grant.terms().tables, ","),
            format!("grant {id} read"),
        );
        let view = GrantView {
            principal: Some(grant.principal().to_string()),
            odrl: Some(self.odrl_for(
                OdrlKind::Agreement,
                &format!("urn:parley:agreement:{}", grant.id()),
                grant.principal(),
                grant.terms(),
            )),
            ..grant_view(&grant, self.app.clock.now())
        };
        serde_json::to_value(view).map_err(internal)
    }
}

impl TermsPolicy for GatePolicy<'_> {
    fn refusal(&self, terms: &negotiation::Terms) -> Option<String> {
        self.facts.iter().find_map(|(table, f)| {
            let resource = Resource::Table(f.clone());
            let context = terms.policy_context(table, "");
            let d = match self.requester {
                Some(requester) => {
                    self.checked
                        .peek_under_as(requester, Action::Query, &resource, context)
                }
                None => self.checked.peek_under(Action::Query, &resource, context),
            };
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

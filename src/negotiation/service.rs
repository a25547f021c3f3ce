//! The negotiation's flows over the store: what may happen to a request in which state, and in which order.
//!
//! Every flow that ends in a grant moves the request's state first and makes the grant after: each state change is
//! a compare-and-set in the store, so of two concurrent accepts (or decisions) of one request only one gets past
//! its first step, and only that one makes a grant (the store also allows one grant per request). The MCP handlers
//! (`server::access`) decide who may call what and render the result; the order of events lives here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::store::{NegotiationStore, StoreError, StoredRequest};
use super::{
    AccessRequest, Evaluator, Grant, Outcome, State, Terms, TermsPolicy, Unusable, Usage,
    contract_versions, fit_policy,
};
use crate::catalog::{Lakehouse, TableName};

/// Why a flow did not go ahead, with a message for the caller saying what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The request or grant does not exist among those the caller may act on (said the same way whether it
    /// exists for someone else or not at all).
    #[error("{0}")]
    NotFound(String),
    /// The flow does not allow this now (wrong state, stale terms, a term already ended).
    #[error("{0}")]
    Refused(String),
    /// Another call changed the request first (a concurrent accept or decision).
    #[error("{0}")]
    Conflict(String),
    /// The store failed, or holds something it should not.
    #[error("{0}")]
    Store(String),
}

impl From<StoreError> for FlowError {
    fn from(e: StoreError) -> FlowError {
        FlowError::Store(e.to_string())
    }
}

/// Where a grant finds the versions of the contracts it was agreed under.
pub trait ContractVersions: Send + Sync {
    /// `table → contract id@version` for those of `tables` that have a contract.
    fn contract_versions(&self, tables: &[TableName]) -> BTreeMap<String, String>;
}

impl ContractVersions for Lakehouse {
    fn contract_versions(&self, tables: &[TableName]) -> BTreeMap<String, String> {
        let contracts: Vec<(String, crate::contracts::Contract)> = tables
            .iter()
            .filter_map(|t| Some((t.to_string(), self.contract(t)?.contract.clone())))
            .collect();
        let refs: Vec<(&str, &crate::contracts::Contract)> =
            contracts.iter().map(|(t, c)| (t.as_str(), c)).collect();
        contract_versions(&refs)
    }
}

/// What a new request came to: the outcome given, and the grant when it was granted outright.
#[derive(Debug)]
pub struct Requested {
    /// The outcome, as stored with the request.
    pub outcome: Outcome,
    /// The grant, when the outcome is `granted` and no acknowledgement was to be asked first.
    pub grant: Option<Grant>,
}

/// The negotiation flows for one call, over the server's store and contracts.
pub struct Negotiations<'a> {
    store: &'a dyn NegotiationStore,
    contracts: &'a dyn ContractVersions,
    now: DateTime<Utc>,
}

/// An offer the requester may accept: its request, terms, and the approvers who offered them (none for an
/// automatic offer).
pub struct OpenOffer {
    /// The stored request.
    pub stored: StoredRequest,
    /// The offered terms.
    pub terms: Terms,
    /// Who offered them.
    pub offered_by: Vec<String>,
}

impl<'a> Negotiations<'a> {
    /// The flows over `store`, with contract versions from `contracts`, at `now`.
    pub fn new(
        store: &'a dyn NegotiationStore,
        contracts: &'a dyn ContractVersions,
        now: DateTime<Utc>,
    ) -> Negotiations<'a> {
        Negotiations {
            store,
            contracts,
            now,
        }
    }

    /// A new request, from start to end: the contracts decide (`evaluator`, with the policy's eligibility), the
    /// policy narrows the terms to what it would let a query use, the request is stored with its outcome, and an
    /// outright grant is made. With `acknowledge_first`, a grant waits as an offer (`Offered`) until the person
    /// behind the agent acknowledges its terms (then [`Negotiations::acknowledge`]).
    pub async fn request(
        &self,
        evaluator: &Evaluator<'_>,
        request: &AccessRequest,
        contracts: &[(&str, &crate::contracts::Contract)],
        eligible: bool,
        policy: &dyn TermsPolicy,
        acknowledge_first: bool,
    ) -> Result<Requested, FlowError> {
        let outcome = evaluator.evaluate(request, contracts, eligible, self.now);
        let outcome = fit_policy(outcome, policy);
        let granted = match &outcome {
            Outcome::Granted { terms, .. } => Some(terms.clone()),
            _ => None,
        };
        let state = if acknowledge_first && granted.is_some() {
            State::Offered
        } else {
            outcome.state()
        };
        self.store.save_request(request, state, &outcome).await?;
        let grant = match granted {
            Some(terms) if !acknowledge_first => Some(self.grant(request, terms, vec![]).await?),
            _ => None,
        };
        Ok(Requested { outcome, grant })
    }

    /// The person behind the agent answered the acknowledgement of `request`'s granted `terms` (held as an offer
    /// by [`Negotiations::request`]): accepted — `Accepted`, `Agreed`, the grant, `Finalized`; not accepted —
    /// `Terminated`, no grant.
    pub async fn acknowledge(
        &self,
        request: &AccessRequest,
        terms: Terms,
        accepted: bool,
    ) -> Result<Option<Grant>, FlowError> {
        let who = &request.principal;
        if !accepted {
            self.transition(
                &request.id,
                State::Terminated,
                who,
                "the user did not acknowledge the usage terms",
            )
            .await?;
            return Ok(None);
        }
        for (state, why) in [
            (State::Accepted, "the user acknowledged the usage terms"),
            (State::Agreed, "agreement recorded as a grant"),
        ] {
            self.transition(&request.id, state, who, why).await?;
        }
        let grant = self.grant(request, terms, vec![]).await?;
        self.transition(&request.id, State::Finalized, who, "grant in force")
            .await?;
        Ok(Some(grant))
    }

    /// Moves request `id` to `state`, refusing as a conflict when another call moved it first.
    pub async fn transition(
        &self,
        id: &str,
        state: State,
        who: &str,
        why: &str,
    ) -> Result<(), FlowError> {
        match self.store.update_state(id, state, who, why).await {
            Ok(()) => Ok(()),
            Err(StoreError::InvalidTransition { from, .. }) => Err(FlowError::Conflict(format!(
                "request {id} is already {}: it was answered or decided meanwhile; access_status shows its \
                 history",
                from.as_str()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes and stores the grant of `request` under `terms`, recording the contract versions it was agreed
    /// under. Callers move the request's state first (see the module).
    pub async fn grant(
        &self,
        request: &AccessRequest,
        terms: Terms,
        approvers: Vec<String>,
    ) -> Result<Grant, FlowError> {
        let versions = self.contracts.contract_versions(&terms.tables);
        let grant = Grant::new(
            &request.id,
            &request.principal,
            terms,
            versions,
            approvers,
            self.now,
        );
        self.store.save_grant(&grant).await?;
        Ok(grant)
    }

    /// Agrees `request` under `terms`, approved by `approver`: `Agreed`, then the grant, then `Finalized`.
    pub async fn agree(
        &self,
        request: &AccessRequest,
        terms: Terms,
        approver: &str,
        why: &str,
    ) -> Result<Grant, FlowError> {
        self.transition(&request.id, State::Agreed, approver, why)
            .await?;
        let grant = self
            .grant(request, terms, vec![approver.to_string()])
            .await?;
        self.transition(&request.id, State::Finalized, approver, "grant in force")
            .await?;
        Ok(grant)
    }

    /// Request `id` of `principal`; another principal's request is reported as not found.
    pub async fn own_request(&self, principal: &str, id: &str) -> Result<StoredRequest, FlowError> {
        match self.store.get_request(id).await? {
            Some(s) if s.request.principal == principal => Ok(s),
            _ => Err(FlowError::NotFound(format!(
                "request {id} not found among your requests; request_access returns the id"
            ))),
        }
    }

    /// `principal`'s request `id`, if it is an open offer.
    pub async fn open_offer(&self, principal: &str, id: &str) -> Result<OpenOffer, FlowError> {
        let stored = self.own_request(principal, id).await?;
        if stored.state != State::Offered {
            return Err(FlowError::Refused(format!(
                "request {id} is {}, not an open offer",
                stored.state.as_str()
            )));
        }
        let outcome = stored.outcome.clone();
        let terms = match outcome {
            Outcome::CounterOffer {
                terms, offered_by, ..
            } => (terms, offered_by),
            // An automatic grant held for the person's acknowledgement, which only they give.
            Outcome::Granted { .. } => {
                return Err(FlowError::Refused(format!(
                    "request {id} waits for the person behind the agent to acknowledge the contract's usage \
                     terms, which only they can do, through the client's form (answer it, or retry request_access \
                     with its requestState); decline_offer ends the request"
                )));
            }
            _ => {
                return Err(FlowError::Store(format!(
                    "request {id} is offered but its outcome holds no offered terms"
                )));
            }
        };
        let (terms, offered_by) = terms;
        Ok(OpenOffer {
            stored,
            terms,
            offered_by,
        })
    }

    /// `principal` accepts the offer of request `id` by the hash of its terms: `Accepted`, `Agreed`, the grant
    /// (whose approvers are those who offered the terms), `Finalized`.
    pub async fn accept(
        &self,
        principal: &str,
        id: &str,
        terms_hash: &str,
    ) -> Result<Grant, FlowError> {
        let offer = self.open_offer(principal, id).await?;
        if offer.terms.expires_at <= self.now {
            return Err(FlowError::Refused(
                "the offer's term has already ended; request_access again".to_string(),
            ));
        }
        if offer.terms.hash() != terms_hash {
            return Err(FlowError::Refused(format!(
                "terms_hash does not match the offered terms of request {id}; read the offer again \
                 (access_status) and pass its terms_hash"
            )));
        }
        for (state, why) in [
            (State::Accepted, "the requester accepted the offer"),
            (State::Agreed, "agreement recorded as a grant"),
        ] {
            self.transition(id, state, principal, why).await?;
        }
        let grant = self
            .grant(&offer.stored.request, offer.terms, offer.offered_by)
            .await?;
        self.transition(id, State::Finalized, principal, "grant in force")
            .await?;
        Ok(grant)
    }

    /// `principal` declines the offer of request `id`, which ends the negotiation.
    pub async fn decline(&self, principal: &str, id: &str) -> Result<StoredRequest, FlowError> {
        // Any offer, a counter-offer or an automatic grant waiting for an acknowledgement.
        let stored = self.own_request(principal, id).await?;
        if stored.state != State::Offered {
            return Err(FlowError::Refused(format!(
                "request {id} is {}, not an open offer",
                stored.state.as_str()
            )));
        }
        self.transition(
            id,
            State::Terminated,
            principal,
            "the requester declined the offer",
        )
        .await?;
        Ok(stored)
    }

    /// A query under `grant` that may return up to `want_rows` rows is about to run: it is counted against the
    /// grant's quotas in one atomic step, and under a `max_rows` quota the rows it may return are reserved, so
    /// concurrent queries cannot overshoot them. `Ok` with the rows reserved (the query returns at most those;
    /// `None` without a row quota), settled by [`Negotiations::end_query`], or given back by the caller when the
    /// query does not get that far. `Err(Unusable::QuotaUsed)` when a quota is used up (nothing is counted),
    /// saying which from the grant as it stands now.
    pub async fn start_query(
        &self,
        grant: &Grant,
        want_rows: u64,
    ) -> Result<Result<Option<u64>, Unusable>, FlowError> {
        let terms = grant.terms();
        let counted = self
            .store
            .reserve_query(grant.id(), terms.max_queries, terms.max_rows, want_rows)
            .await?;
        if let Some(counted) = counted {
            return Ok(Ok(counted.rows));
        }
        let now = self.store.get_grant(grant.id()).await?;
        let why = now
            .as_ref()
            .unwrap_or(grant)
            .quota_exhausted()
            .unwrap_or_else(|| format!("grant {} has no quota left", grant.id()));
        Ok(Err(Unusable::QuotaUsed(why)))
    }

    /// A query under `grant` that reserved `reserved` rows ([`Negotiations::start_query`]) ran and would return
    /// `rows`: a revocation or an expiry that happened meanwhile wins (`Err(Unusable::Revoked | Expired)`, no row
    /// may leave, and the reserved rows are given back); otherwise the rows are counted in place of the
    /// reservation and the grant's usage returned.
    pub async fn end_query(
        &self,
        grant: &Grant,
        reserved: Option<u64>,
        rows: u64,
    ) -> Result<Result<Usage, Unusable>, FlowError> {
        let unusable = match self.store.get_grant(grant.id()).await? {
            Some(now) if now.revoked_at().is_some() => Some(Unusable::Revoked),
            Some(now) if !now.is_live(self.now) => Some(Unusable::Expired(now.terms().expires_at)),
            Some(_) => None,
            None => Some(Unusable::Revoked),
        };
        if let Some(unusable) = unusable {
            self.release_rows(grant, reserved).await?;
            return Ok(Err(unusable));
        }
        // Never more than reserved: the query was run with the reservation as its row cap.
        let rows = reserved.map_or(rows, |r| rows.min(r));
        Ok(Ok(self
            .store
            .settle_rows(grant.id(), reserved.unwrap_or(0), rows)
            .await?))
    }

    /// Gives back the rows a query reserved, when the grant ended while it ran (no row leaves). A query that
    /// fails or is cancelled gives its rows back through its caller's guard (`server::query`'s `RowsHeld`).
    async fn release_rows(&self, grant: &Grant, reserved: Option<u64>) -> Result<(), FlowError> {
        if let Some(reserved) = reserved.filter(|r| *r > 0) {
            self.store.settle_rows(grant.id(), reserved, 0).await?;
        }
        Ok(())
    }

    /// Revokes grant `id` (the caller's right to was decided by the gate).
    pub async fn revoke(&self, id: &str, by: &str, why: &str) -> Result<(), FlowError> {
        self.store.revoke_grant(id, by, why).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    struct NoContracts;
    impl ContractVersions for NoContracts {
        fn contract_versions(&self, _: &[TableName]) -> BTreeMap<String, String> {
            BTreeMap::new()
        }
    }

    async fn offered(store: &SqliteStore, now: DateTime<Utc>) -> (AccessRequest, Terms) {
        let request = AccessRequest {
            id: "req-1".to_string(),
            principal: "agent".to_string(),
            tables: vec![TableName::parse("sales.orders").unwrap()],
            columns: None,
            purpose: "analytics".to_string(),
            justification: None,
            duration_days: 30,
            row_scope: None,
            created_at: now,
            requester_groups: Vec::new(),
        };
        let terms = Terms {
            tables: request.tables.clone(),
            columns: vec!["sales.orders.order_id".to_string()],
            masks: BTreeMap::new(),
            dropped: vec![],
            row_filter: None,
            purpose: request.purpose.clone(),
            expires_at: now + chrono::Duration::days(30),
            max_rows: None,
            max_queries: None,
            prices: vec![],
        };
        let outcome = Outcome::CounterOffer {
            terms: terms.clone(),
            reasons: vec!["masked".to_string()],
            offered_by: vec!["owner".to_string()],
        };
        store
            .save_request(&request, State::Offered, &outcome)
            .await
            .unwrap();
        (request, terms)
    }

    #[tokio::test]
    async fn an_offer_is_accepted_once_and_its_grant_names_who_offered_it() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let now = Utc::now();
        let (request, terms) = offered(&store, now).await;
        let flows = Negotiations::new(&store, &NoContracts, now);
        // Someone else's request does not exist for them.
        assert!(matches!(
            flows.accept("other", &request.id, &terms.hash()).await,
            Err(FlowError::NotFound(_))
        ));
        // A stale hash is refused and changes nothing.
        assert!(matches!(
            flows.accept("agent", &request.id, "0").await,
            Err(FlowError::Refused(_))
        ));
        let hash = terms.hash();
        let (a, b) = tokio::join!(
            flows.accept("agent", &request.id, &hash),
            flows.accept("agent", &request.id, &hash)
        );
        let grants: Vec<Grant> = [a, b].into_iter().filter_map(Result::ok).collect();
        assert_eq!(grants.len(), 1, "two concurrent accepts make one grant");
        assert_eq!(grants[0].approvers, vec!["owner".to_string()]);
        assert_eq!(
            store.get_request(&request.id).await.unwrap().unwrap().state,
            State::Finalized
        );
        // Once finalized it is no open offer: neither accepted nor declined again.
        assert!(matches!(
            flows.decline("agent", &request.id).await,
            Err(FlowError::Refused(_))
        ));
    }

    #[tokio::test]
    async fn an_ended_offer_is_not_accepted() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let now = Utc::now();
        let (request, terms) = offered(&store, now).await;
        let later = terms.expires_at + chrono::Duration::seconds(1);
        let flows = Negotiations::new(&store, &NoContracts, later);
        let e = flows.accept("agent", &request.id, &terms.hash()).await;
        assert!(
            matches!(e, Err(FlowError::Refused(ref m)) if m.contains("ended")),
            "{e:?}"
        );
        assert_eq!(
            store.get_request(&request.id).await.unwrap().unwrap().state,
            State::Offered
        );
    }

    /// A policy that refuses any terms with an unmasked column of `refuse_clear`, and names it personal data.
    struct MaskOnly(&'static str);
    impl TermsPolicy for MaskOnly {
        fn refusal(&self, terms: &Terms) -> Option<String> {
            let column = format!("sales.customers.{}", self.0);
            (terms.columns.contains(&column) && !terms.masks.contains_key(&column))
                .then(|| format!("{column} in clear"))
        }
        fn personal_columns(&self) -> Vec<(String, Vec<String>)> {
            vec![("sales.customers".to_string(), vec![self.0.to_string()])]
        }
    }

    fn customers_request(id: &str, columns: &[&str], now: DateTime<Utc>) -> AccessRequest {
        AccessRequest {
            id: id.to_string(),
            principal: "agent".to_string(),
            tables: vec![TableName::parse("sales.customers").unwrap()],
            columns: Some(columns.iter().map(|c| c.to_string()).collect()),
            purpose: "customer_analytics".to_string(),
            justification: None,
            duration_days: 7,
            row_scope: None,
            created_at: now,
            requester_groups: Vec::new(),
        }
    }

    /// The request flow, top to bottom: evaluate, fit the policy, store, grant outright or hold for the person's
    /// acknowledgement, which then grants (state before grant) or terminates.
    #[tokio::test]
    async fn a_request_is_decided_stored_and_granted_or_held() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let now = Utc::now();
        let contract = crate::contracts::parse(
            include_str!("../../examples/contracts/sales/customers.yaml"),
            std::path::Path::new("customers.yaml"),
        )
        .unwrap();
        let contracts = [("sales.customers", &contract)];
        let purposes = crate::negotiation::Purposes::default();
        let evaluator = Evaluator {
            purposes: &purposes,
            max_days: 365,
        };
        let flows = Negotiations::new(&store, &NoContracts, now);
        let allow_all = MaskOnly("no_such_column");

        // Granted outright: stored finalized-or-agreed with its grant.
        let r1 = customers_request("req-a", &["country"], now);
        let done = flows
            .request(&evaluator, &r1, &contracts, true, &allow_all, false)
            .await
            .unwrap();
        let grant = done.grant.expect("granted outright");
        assert_eq!(grant.request_id, "req-a");
        assert_eq!(store.grants_for_principal("agent").await.unwrap().len(), 1);
        assert_eq!(
            store.get_request("req-a").await.unwrap().unwrap().state,
            done.outcome.state()
        );

        // Held for acknowledgement: an offer, no grant, until the person answers.
        let r2 = customers_request("req-b", &["country"], now);
        let held = flows
            .request(&evaluator, &r2, &contracts, true, &allow_all, true)
            .await
            .unwrap();
        assert!(held.grant.is_none());
        assert_eq!(
            store.get_request("req-b").await.unwrap().unwrap().state,
            State::Offered
        );
        let terms = held.outcome.terms().unwrap().clone();
        let grant = flows.acknowledge(&r2, terms.clone(), true).await.unwrap();
        assert!(grant.is_some());
        assert_eq!(
            store.get_request("req-b").await.unwrap().unwrap().state,
            State::Finalized
        );
        // A second answer finds the request finalized: a conflict, no second grant.
        assert!(matches!(
            flows.acknowledge(&r2, terms, true).await,
            Err(FlowError::Conflict(_))
        ));
        assert_eq!(store.grants_for_principal("agent").await.unwrap().len(), 2);

        // Not acknowledged: terminated, no grant.
        let r3 = customers_request("req-c", &["country"], now);
        let held = flows
            .request(&evaluator, &r3, &contracts, true, &allow_all, true)
            .await
            .unwrap();
        let terms = held.outcome.terms().unwrap().clone();
        assert!(
            flows
                .acknowledge(&r3, terms, false)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store.get_request("req-c").await.unwrap().unwrap().state,
            State::Terminated
        );
        assert_eq!(store.grants_for_principal("agent").await.unwrap().len(), 2);

        // The policy refuses a column in clear: the grant becomes an offer with it masked, and no grant is made.
        let r4 = customers_request("req-d", &["country", "segment"], now);
        let narrowed = flows
            .request(
                &evaluator,
                &r4,
                &contracts,
                true,
                &MaskOnly("segment"),
                false,
            )
            .await
            .unwrap();
        assert!(narrowed.grant.is_none());
        let Outcome::CounterOffer { terms, .. } = &narrowed.outcome else {
            panic!("expected a counter-offer, got {:?}", narrowed.outcome);
        };
        assert!(terms.masks.contains_key("sales.customers.segment"));
        assert_eq!(
            store.get_request("req-d").await.unwrap().unwrap().state,
            State::Offered
        );

        // Not eligible: denied and stored so, with no grant.
        let r5 = customers_request("req-e", &["country"], now);
        let denied = flows
            .request(&evaluator, &r5, &contracts, false, &allow_all, false)
            .await
            .unwrap();
        assert_eq!(denied.outcome.kind(), "denied");
        assert!(denied.grant.is_none());
        assert_eq!(store.grants_for_principal("agent").await.unwrap().len(), 2);
    }

    /// A query under a grant: counted before it runs (never past a quota), and its rows withheld when the grant
    /// was revoked or ended while it ran.
    #[tokio::test]
    async fn queries_under_a_grant_are_metered_and_a_revocation_meanwhile_wins() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let now = Utc::now();
        let (request, mut terms) = offered(&store, now).await;
        terms.max_queries = Some(1);
        let flows = Negotiations::new(&store, &NoContracts, now);
        let grant = flows.grant(&request, terms, vec![]).await.unwrap();

        assert_eq!(flows.start_query(&grant, 10).await.unwrap(), Ok(None));
        let usage = flows.end_query(&grant, None, 7).await.unwrap().unwrap();
        assert_eq!((usage.queries, usage.rows), (1, 7));
        // The quota is used: refused, saying which, and nothing more is counted.
        let Err(Unusable::QuotaUsed(why)) = flows.start_query(&grant, 10).await.unwrap() else {
            panic!("a second query passed a one-query quota");
        };
        assert!(why.contains("allows 1 queries"), "{why}");
        let stored = store.get_grant(grant.id()).await.unwrap().unwrap();
        assert_eq!(stored.usage().queries, 1);

        // Revoked while a query ran: its rows do not leave, and are not counted.
        flows
            .revoke(grant.id(), "owner", "purpose ended")
            .await
            .unwrap();
        assert_eq!(
            flows.end_query(&grant, None, 5).await.unwrap(),
            Err(Unusable::Revoked)
        );
        // Ended while a query ran: the same, seen from a clock past the term.
        let later = Negotiations::new(&store, &NoContracts, now + chrono::Duration::days(31));
        let (request2, terms2) = {
            let mut r = request.clone();
            r.id = "req-2".to_string();
            store
                .save_request(
                    &r,
                    State::Finalized,
                    &Outcome::Denied {
                        reason: String::new(),
                        acceptable: None,
                    },
                )
                .await
                .unwrap();
            (r, grant.terms().clone())
        };
        let g2 = flows.grant(&request2, terms2, vec![]).await.unwrap();
        assert!(matches!(
            later.end_query(&g2, None, 1).await.unwrap(),
            Err(Unusable::Expired(_))
        ));
        assert_eq!(
            store
                .get_grant(g2.id())
                .await
                .unwrap()
                .unwrap()
                .usage()
                .rows,
            0
        );
    }
}

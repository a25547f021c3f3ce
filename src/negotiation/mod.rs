//! Negotiation: access requests, the terms Parley can offer for them, and the grants that result — the pure
//! decision logic behind `request_access`, with no I/O.
//!
//! [`evaluate`] turns an [`AccessRequest`] and the contracts of the requested tables into an [`Outcome`]:
//! granted, a counter-offer (personal data masked, a shorter term), pending (the contract's approvers must
//! decide) or denied. Every outcome carries sentences that cite the contract clauses used, so the agent and the
//! owner can see why. A negotiation moves through the contract-negotiation [`State`]s of the Eclipse Dataspace
//! Protocol, and [`odrl`] renders any offer or agreement as a W3C ODRL 2.2 policy (JSON-LD) from the typed
//! [`Terms`], so an agreement made through Parley is a standard artifact a dataspace connector can read.
//!
//! Invariants: [`Terms`] are the only source of truth for what a grant allows — the ODRL JSON-LD is derived from
//! them and never read back; the automatic rules never grant a purpose the contract prohibits and never offer a
//! personal-data column in clear.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::catalog::TableName;
use crate::contracts::Contract;

mod evaluate;
pub mod service;
pub mod store;

pub use evaluate::{Denial, Evaluator, TermsPolicy, fit_policy};

/// Entry of a contract's `allowedPurposes` that admits any internal purpose (not in `prohibitedPurposes`).
pub const ANY_INTERNAL: &str = "any_internal";

/// Longest term, in days, the automatic rules give for personal-data columns, even masked.
pub const PII_MAX_DAYS: u32 = 30;

/// The JSON-LD context of W3C ODRL 2.2.
pub const ODRL_CONTEXT: &str = "http://www.w3.org/ns/odrl.jsonld";

/// Custom contract property (a number) capping the rows a grant may return in total.
pub const QUOTA_ROWS_PROPERTY: &str = "quotaRows";

/// Custom contract property (a number) capping the queries a grant may run.
pub const QUOTA_QUERIES_PROPERTY: &str = "quotaQueries";

/// Version tag mixed into [`Terms::hash`], so a future change of the canonical form cannot collide with today's.
const TERMS_HASH_DOMAIN: &str = "parley-terms-v1\n";

/// A fresh request id (`req-<uuid>`).
pub fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4())
}

/// How an approver narrows proposed terms (see [`Terms::narrowed`]).
#[derive(Debug, Clone, Default)]
pub struct Narrowing {
    /// Keep only these columns (`ns.table.column` or bare names).
    pub columns: Option<Vec<String>>,
    /// Mask these columns.
    pub masks: BTreeMap<String, Mask>,
    /// Keep only these rows (a new filter, or fewer values of the existing one's column).
    pub row_filter: Option<RowScope>,
}

impl Narrowing {
    /// Whether it changes anything.
    pub fn is_empty(&self) -> bool {
        self.columns.is_none() && self.masks.is_empty() && self.row_filter.is_none()
    }
}

/// A restriction to rows whose `column` holds one of `values`, e.g. `country` in `[DE, FR]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RowScope {
    /// Column the filter is on; it must exist in every requested table.
    pub column: String,
    /// Accepted values (compared as text).
    pub values: Vec<String>,
}

/// What an agent asks for: tables (and optionally columns) for a purpose and a term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    /// Request id, see [`new_request_id`].
    pub id: String,
    /// Principal id of the requester.
    pub principal: String,
    /// Tables as `namespace.table`.
    pub tables: Vec<TableName>,
    /// Columns as `column` (every requested table that has it) or `namespace.table.column`; `None` = all.
    pub columns: Option<Vec<String>>,
    /// Stated purpose, matched (case-insensitively) against the contracts' purpose ids.
    pub purpose: String,
    /// Free-text justification for the owner.
    pub justification: Option<String>,
    /// Requested term in days.
    pub duration_days: u32,
    /// Optional restriction to fewer rows.
    pub row_scope: Option<RowScope>,
    /// When the request was made.
    pub created_at: DateTime<Utc>,
    /// The requester's groups when they asked, so an approver's changed terms are checked against the policy as
    /// it applies to the requester (a request stored before this was kept has none: the policy's directory then
    /// decides the requester's groups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requester_groups: Vec<String>,
}

/// How a granted column is masked. The query engine builds the expression; this names the transformation.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mask {
    /// A one-way hash of the value: joinable and countable, not readable.
    Hash,
    /// The value replaced by a constant.
    Redact,
    /// A date reduced to its year.
    YearOnly,
}

impl Mask {
    /// Stable name: `hash`, `redact`, `year_only`.
    pub fn name(&self) -> &'static str {
        match self {
            Mask::Hash => "hash",
            Mask::Redact => "redact",
            Mask::YearOnly => "year_only",
        }
    }

    /// How the mask reads in a sentence ("offered hashed").
    fn participle(&self) -> &'static str {
        match self {
            Mask::Hash => "hashed",
            Mask::Redact => "redacted",
            Mask::YearOnly => "reduced to the year",
        }
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mask {
    type Err = String;
    fn from_str(s: &str) -> Result<Mask, String> {
        [Mask::Hash, Mask::Redact, Mask::YearOnly]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mask {s:?}; expected hash, redact or year_only"))
    }
}

/// The price of one table as the contract states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PriceTerm {
    /// `namespace.table` the price applies to.
    pub table: String,
    /// Amount per unit, as a decimal string (kept as text so the terms hash never depends on float formatting).
    pub amount: String,
    /// Currency, e.g. `EUR`.
    pub currency: String,
    /// Unit, e.g. `1000 rows`, `query`.
    pub unit: String,
}

impl PriceTerm {
    /// `0.5 EUR per 1000 rows`.
    pub fn describe(&self) -> String {
        format!("{} {} per {}", self.amount, self.currency, self.unit)
    }
}

/// Exactly what a grant allows. Column names are qualified, `namespace.table.column`, so terms over several
/// tables are unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Terms {
    /// Tables, `namespace.table`.
    pub tables: Vec<TableName>,
    /// Granted columns, `namespace.table.column`, masked or in clear.
    pub columns: Vec<String>,
    /// Masked columns (a subset of `columns`) and their mask.
    pub masks: BTreeMap<String, Mask>,
    /// Columns asked for but not granted at all.
    pub dropped: Vec<String>,
    /// Row filter applied below any SQL the agent writes.
    pub row_filter: Option<RowScope>,
    /// The purpose the grant is bound to.
    pub purpose: String,
    /// End of the term; the grant is dead from this instant.
    pub expires_at: DateTime<Utc>,
    /// Quota of rows returned over the grant's life.
    pub max_rows: Option<u64>,
    /// Quota of queries over the grant's life.
    pub max_queries: Option<u64>,
    /// Prices of the tables that have one.
    pub prices: Vec<PriceTerm>,
}

impl Terms {
    /// SHA-256 (hex) of the canonical JSON of the terms: what an agent echoes to accept exactly these terms.
    pub fn hash(&self) -> String {
        // Terms hold only strings, integers, maps with string keys and timestamps, so serialization cannot fail.
        let value = serde_json::to_value(self).expect("terms serialize to JSON");
        let mut hasher = Sha256::new();
        hasher.update(TERMS_HASH_DOMAIN.as_bytes());
        hasher.update(canonical_json(&value).as_bytes());
        hex::encode(hasher.finalize())
    }

    /// Whether `table` (`namespace.table`) is covered.
    pub fn covers(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t == table)
    }

    /// Granted column names (unqualified) of `table`, in contract order.
    pub fn columns_of(&self, table: &str) -> Vec<&str> {
        self.columns
            .iter()
            .filter_map(|c| {
                split_column(c)
                    .filter(|(t, _)| *t == table)
                    .map(|(_, col)| col)
            })
            .collect()
    }

    /// What these terms let their holder see of `table`, as policies see it (`context.grant`); `grant_id` is
    /// empty for terms not granted yet.
    pub fn policy_context(&self, table: &str, grant_id: &str) -> crate::policy::GrantContext {
        let columns: Vec<String> = self
            .columns_of(table)
            .into_iter()
            .map(str::to_string)
            .collect();
        let (masked, unmasked): (Vec<String>, Vec<String>) = columns
            .iter()
            .cloned()
            .partition(|c| self.mask_of(table, c).is_some());
        crate::policy::GrantContext {
            id: grant_id.to_string(),
            purpose: self.purpose.clone(),
            columns,
            masked_columns: masked,
            unmasked_columns: unmasked,
            row_filter: self.row_filter.is_some(),
        }
    }

    /// These terms narrowed by an approver: fewer columns (the rest recorded in `dropped`), more masks, a row
    /// filter added or its values narrowed. Never wider: a column, mask or value that is not in the terms is an
    /// error naming it. Returns the narrowed terms and one sentence per change.
    pub fn narrowed(&self, n: &Narrowing) -> Result<(Terms, Vec<String>), String> {
        let mut terms = self.clone();
        let mut changes = Vec::new();
        // A name is `ns.table.column`, or a bare column of any table in the terms.
        let resolve = |name: &str, within: &[String]| -> Result<Vec<String>, String> {
            let name = name.trim();
            let hits: Vec<String> = within
                .iter()
                .filter(|c| *c == name || split_column(c).is_some_and(|(_, col)| col == name))
                .cloned()
                .collect();
            if hits.is_empty() {
                return Err(format!(
                    "{name} is not among the proposed columns ({}); an approver may only narrow the terms",
                    within.join(", ")
                ));
            }
            Ok(hits)
        };
        if let Some(keep) = &n.columns {
            let mut kept = Vec::new();
            for name in keep {
                for c in resolve(name, &self.columns)? {
                    if !kept.contains(&c) {
                        kept.push(c);
                    }
                }
            }
            for table in &self.tables {
                if !kept
                    .iter()
                    .any(|c| split_column(c).is_some_and(|(t, _)| *table == *t))
                {
                    return Err(format!(
                        "keep at least one column of {table}, or deny the request"
                    ));
                }
            }
            let removed: Vec<String> = self
                .columns
                .iter()
                .filter(|c| !kept.contains(c))
                .cloned()
                .collect();
            if !removed.is_empty() {
                changes.push(format!("without {}", removed.join(", ")));
            }
            terms.columns = self
                .columns
                .iter()
                .filter(|c| kept.contains(c))
                .cloned()
                .collect();
            terms.masks.retain(|c, _| kept.contains(c));
            for c in removed {
                if !terms.dropped.contains(&c) {
                    terms.dropped.push(c);
                }
            }
        }
        for (name, mask) in &n.masks {
            for c in resolve(name, &terms.columns)? {
                match terms.masks.get(&c) {
                    Some(m) if m == mask => {}
                    // Redaction reveals nothing, so it may replace any mask; other masks are not comparable.
                    Some(m) if *mask != Mask::Redact => {
                        return Err(format!(
                            "{c} is already offered {}; only redact is stricter",
                            m.participle()
                        ));
                    }
                    _ => {
                        terms.masks.insert(c.clone(), *mask);
                        changes.push(format!("{c} {}", mask.participle()));
                    }
                }
            }
        }
        if let Some(scope) = &n.row_filter {
            if scope.values.is_empty() {
                return Err("a row filter needs at least one value".to_string());
            }
            match &self.row_filter {
                Some(existing) if existing.column != scope.column => {
                    return Err(format!(
                        "the terms already keep only rows whose {} is one of {}; narrow those values instead",
                        existing.column,
                        existing.values.join(", ")
                    ));
                }
                Some(existing) => {
                    if let Some(v) = scope.values.iter().find(|v| !existing.values.contains(v)) {
                        return Err(format!(
                            "{v} is not among the values the terms already allow for {} ({})",
                            existing.column,
                            existing.values.join(", ")
                        ));
                    }
                }
                None => {}
            }
            terms.row_filter = Some(scope.clone());
            changes.push(format!(
                "only rows whose {} is one of {}",
                scope.column,
                scope.values.join(", ")
            ));
        }
        Ok((terms, changes))
    }

    /// The mask on `table`'s `column`, if it is masked.
    pub fn mask_of(&self, table: &str, column: &str) -> Option<Mask> {
        self.masks.get(&format!("{table}.{column}")).copied()
    }

    /// The prices as one sentence, if any.
    pub fn price_summary(&self) -> Option<String> {
        if self.prices.is_empty() {
            return None;
        }
        Some(
            self.prices
                .iter()
                .map(|p| format!("{}: {}", p.table, p.describe()))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

/// Splits `namespace.table.column` at the last dot.
fn split_column(qualified: &str) -> Option<(&str, &str)> {
    qualified.rsplit_once('.')
}

/// JSON text with object keys sorted at every level, independent of serde_json's `preserve_order` feature.
fn canonical_json(value: &Value) -> String {
    crate::audit::canonical(value).to_string()
}

/// Contract-negotiation states of the Eclipse Dataspace Protocol (DSP 2025-1). DSP's VERIFIED step is folded
/// into AGREED: Parley is both sides' bookkeeper, so there is no separate consumer verification message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The consumer asked; the provider holds the request here while an owner decides.
    Requested,
    /// The provider made a (counter-)offer.
    Offered,
    /// The consumer accepted the offer.
    Accepted,
    /// The provider agreed; an agreement (grant) exists.
    Agreed,
    /// The agreement is in force.
    Finalized,
    /// Ended without agreement: denied, declined or withdrawn.
    Terminated,
}

impl State {
    /// Every state, in protocol order.
    pub const ALL: [State; 6] = [
        State::Requested,
        State::Offered,
        State::Accepted,
        State::Agreed,
        State::Finalized,
        State::Terminated,
    ];

    /// Lowercase name: `requested`, `offered`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            State::Requested => "requested",
            State::Offered => "offered",
            State::Accepted => "accepted",
            State::Agreed => "agreed",
            State::Finalized => "finalized",
            State::Terminated => "terminated",
        }
    }

    /// Whether no transition leaves this state. A finalized agreement ends by expiry or revocation of its grant,
    /// not by a negotiation transition.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Finalized | State::Terminated)
    }

    /// Whether the protocol allows moving from `self` to `next`. Forward steps may be skipped (an owner's
    /// approval takes REQUESTED straight to AGREED or FINALIZED); OFFERED may go back to REQUESTED when the
    /// consumer asks again; TERMINATED is reachable from every non-terminal state.
    pub fn can_become(self, next: State) -> bool {
        use State::*;
        match (self, next) {
            (Finalized | Terminated, _) => false,
            (_, Terminated) => true,
            (Requested, Offered | Agreed | Finalized) => true,
            (Offered, Requested | Accepted | Agreed | Finalized) => true,
            (Accepted, Agreed | Finalized) => true,
            (Agreed, Finalized) => true,
            _ => false,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<State, String> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown negotiation state {s:?}; expected one of {}",
                    State::ALL.map(State::as_str).join(", ")
                )
            })
    }
}

/// Why a grant cannot be used for a query (see [`Grant::usable_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// It is another principal's (reported like a grant that does not exist).
    NotYours,
    /// An owner revoked it.
    Revoked,
    /// Its term ended at this time.
    Expired(DateTime<Utc>),
    /// It is bound to this other purpose.
    OtherPurpose(String),
    /// A quota is used up; the sentence says which.
    QuotaUsed(String),
}

/// The answer to an access request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Granted as asked (term possibly capped). `reasons` cite the clauses that allowed it.
    Granted {
        /// The terms of the grant.
        terms: Terms,
        /// Sentences citing the contract clauses used.
        reasons: Vec<String>,
    },
    /// Parley can grant these terms instead; the agent accepts them by their hash, or declines.
    CounterOffer {
        /// The offered terms.
        terms: Terms,
        /// Why the terms differ from the request, citing the contract.
        reasons: Vec<String>,
        /// The approvers who offered these terms when deciding the request; empty for an automatic offer. They
        /// are the approvers of the grant an acceptance makes.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        offered_by: Vec<String>,
    },
    /// An approver must decide.
    Pending {
        /// Who may approve (the contracts' first-level approvers).
        approvers: Vec<String>,
        /// Why approval is needed, citing the contract.
        reason: String,
        /// What an approval would grant (personal data masked as the automatic rules would).
        terms: Terms,
    },
    /// Refused.
    Denied {
        /// Which rule or contract clause forbids it.
        reason: String,
        /// A request that would be acceptable, if any.
        acceptable: Option<String>,
    },
}

impl Outcome {
    /// `granted`, `counter_offer`, `pending` or `denied`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Granted { .. } => "granted",
            Outcome::CounterOffer { .. } => "counter_offer",
            Outcome::Pending { .. } => "pending",
            Outcome::Denied { .. } => "denied",
        }
    }

    /// The negotiation state this outcome leaves the request in.
    pub fn state(&self) -> State {
        match self {
            Outcome::Granted { .. } => State::Finalized,
            Outcome::CounterOffer { .. } => State::Offered,
            Outcome::Pending { .. } => State::Requested,
            Outcome::Denied { .. } => State::Terminated,
        }
    }

    /// The granted, offered or proposed terms.
    pub fn terms(&self) -> Option<&Terms> {
        match self {
            Outcome::Granted { terms, .. }
            | Outcome::CounterOffer { terms, .. }
            | Outcome::Pending { terms, .. } => Some(terms),
            Outcome::Denied { .. } => None,
        }
    }

    /// All the sentences explaining the outcome, joined.
    pub fn explanation(&self) -> String {
        match self {
            Outcome::Granted { reasons, .. } | Outcome::CounterOffer { reasons, .. } => {
                reasons.join(" ")
            }
            Outcome::Pending { reason, .. } => reason.clone(),
            Outcome::Denied { reason, acceptable } => match acceptable {
                Some(a) => format!("{reason}. Acceptable instead: {a}."),
                None => format!("{reason}."),
            },
        }
    }
}

/// Usage metered on a grant.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Usage {
    /// Queries run.
    pub queries: u64,
    /// Rows returned.
    pub rows: u64,
}

/// A grant as stored, every field as written and unchecked; [`Grant::try_from`] checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// Grant id (`grant-<uuid>`).
    pub id: String,
    /// The request it answers.
    pub request_id: String,
    /// Principal id of the grantee.
    pub principal: String,
    /// What it allows.
    pub terms: Terms,
    /// [`Terms::hash`] of `terms`: the terms the agent acknowledged.
    pub terms_hash: String,
    /// Contract version per table at grant time (`namespace.table` → `id@version`).
    pub contract_versions: BTreeMap<String, String>,
    /// Who approved it (empty when granted by the automatic rules).
    pub approvers: Vec<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Usage so far.
    pub usage: Usage,
}

/// An agreement in force: who may read what, for which purpose, until when.
///
/// Invariant: `terms_hash` is the hash of `terms` (the terms the agent acknowledged). A grant is made only by
/// [`Grant::new`] or restored from a [`GrantRecord`] that passes this check, deserialization included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GrantRecord")]
pub struct Grant {
    /// Grant id (`grant-<uuid>`).
    id: String,
    /// The request it answers.
    request_id: String,
    /// Principal id of the grantee.
    principal: String,
    /// What it allows.
    terms: Terms,
    /// [`Terms::hash`] of `terms`: the terms the agent acknowledged.
    terms_hash: String,
    /// Contract version per table at grant time (`namespace.table` → `id@version`).
    contract_versions: BTreeMap<String, String>,
    /// Who approved it (empty when granted by the automatic rules).
    approvers: Vec<String>,
    /// When it was made.
    created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    revoked_at: Option<DateTime<Utc>>,
    /// Usage so far.
    usage: Usage,
}

impl TryFrom<GrantRecord> for Grant {
    type Error = String;

    /// The grant, when its terms still hash to the terms hash the agent accepted.
    fn try_from(r: GrantRecord) -> Result<Grant, String> {
        if r.terms.hash() != r.terms_hash {
            return Err("its terms do not match the terms hash the agent accepted".to_string());
        }
        Ok(Grant {
            id: r.id,
            request_id: r.request_id,
            principal: r.principal,
            terms: r.terms,
            terms_hash: r.terms_hash,
            contract_versions: r.contract_versions,
            approvers: r.approvers,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
            usage: r.usage,
        })
    }
}

impl Grant {
    /// See the field of the same name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// See the field of the same name.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// See the field of the same name.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// See the field of the same name.
    pub fn terms(&self) -> &Terms {
        &self.terms
    }

    /// See the field of the same name.
    pub fn terms_hash(&self) -> &str {
        &self.terms_hash
    }

    /// See the field of the same name.
    pub fn contract_versions(&self) -> &BTreeMap<String, String> {
        &self.contract_versions
    }

    /// See the field of the same name.
    pub fn approvers(&self) -> &[String] {
        &self.approvers
    }

    /// See the field of the same name.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// See the field of the same name.
    pub fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.revoked_at
    }

    /// See the field of the same name.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// A new, unused grant for `terms`; the id is fresh and the hash is computed here so it always matches.
    pub fn new(
        request_id: &str,
        principal: &str,
        terms: Terms,
        contract_versions: BTreeMap<String, String>,
        approvers: Vec<String>,
        now: DateTime<Utc>,
    ) -> Grant {
        Grant {
            id: format!("grant-{}", uuid::Uuid::new_v4()),
            request_id: request_id.to_string(),
            principal: principal.to_string(),
            terms_hash: terms.hash(),
            terms,
            contract_versions,
            approvers,
            created_at: now,
            revoked_at: None,
            usage: Usage::default(),
        }
    }

    /// Whether the grant may be used at `now`: not revoked and not expired.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && now < self.terms.expires_at
    }

    /// Whether `principal` may run a query under this grant at `now` for `purpose` (when one is stated): the
    /// grant is theirs, live, bound to that purpose and has quota left.
    pub fn usable_for(
        &self,
        principal: &str,
        purpose: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), Unusable> {
        if self.principal != principal {
            return Err(Unusable::NotYours);
        }
        if self.revoked_at.is_some() {
            return Err(Unusable::Revoked);
        }
        if !self.is_live(now) {
            return Err(Unusable::Expired(self.terms.expires_at));
        }
        if let Some(p) = purpose
            && !p.eq_ignore_ascii_case(&self.terms.purpose)
        {
            return Err(Unusable::OtherPurpose(self.terms.purpose.clone()));
        }
        if let Some(why) = self.quota_exhausted() {
            return Err(Unusable::QuotaUsed(why));
        }
        Ok(())
    }

    /// A sentence saying which quota is used up, if one is.
    pub fn quota_exhausted(&self) -> Option<String> {
        if let Some(max) = self.terms.max_queries
            && self.usage.queries >= max
        {
            return Some(format!(
                "grant {} allows {max} queries and all have been used; request_access again for a new grant",
                self.id
            ));
        }
        if let Some(max) = self.terms.max_rows
            && self.usage.rows >= max
        {
            return Some(format!(
                "grant {} allows {max} rows in total and {} have been returned; request_access again for a new grant",
                self.id, self.usage.rows
            ));
        }
        None
    }
}

/// `namespace.table` → `contract id@version`, to record in a grant which contract versions it was made under.
pub fn contract_versions(contracts: &[(&str, &Contract)]) -> BTreeMap<String, String> {
    contracts
        .iter()
        .map(|(table, c)| (table.to_string(), format!("{}@{}", c.id, c.version)))
        .collect()
}

/// The contracts' `description.limitations`, one per table, for [`odrl`]; `None` when no contract states any.
pub fn combined_limitations(contracts: &[(&str, &Contract)]) -> Option<String> {
    let parts: Vec<String> = contracts
        .iter()
        .filter_map(|(table, c)| {
            c.description
                .as_ref()
                .and_then(|d| d.limitations.as_deref())
                .map(|l| {
                    if contracts.len() == 1 {
                        l.trim().to_string()
                    } else {
                        format!("{table}: {}", l.trim())
                    }
                })
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n"))
}

fn same_purpose(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// A purpose as a governed entity: `churn_analysis` is a kind of `analytics`, so a contract that allows
/// `analytics` allows `churn_analysis`, and one that prohibits `marketing` prohibits `marketing_outreach`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purpose {
    /// Purpose id, as contracts and requests name it.
    pub id: String,
    /// What the purpose covers.
    #[serde(default)]
    pub description: String,
    /// Text the requester acknowledges when a grant for this purpose starts.
    #[serde(default)]
    pub acknowledgement: Option<String>,
    /// The broader purpose this one is a kind of.
    #[serde(default)]
    pub parent: Option<String>,
}

/// The registry of purposes (`policy/purposes.yaml`). An id it does not know is a purpose of its own, with no
/// parent.
#[derive(Debug, Clone, Default)]
pub struct Purposes {
    by_id: BTreeMap<String, Purpose>,
}

impl Purposes {
    /// Parses the registry: a YAML list of purposes. Parents must exist and form no cycle.
    pub fn from_yaml(text: &str) -> Result<Purposes, String> {
        let list: Vec<Purpose> = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut by_id = BTreeMap::new();
        for p in list {
            let key = p.id.trim().to_lowercase();
            if by_id.insert(key, p.clone()).is_some() {
                return Err(format!("purpose {} is defined twice", p.id));
            }
        }
        let purposes = Purposes { by_id };
        for p in purposes.by_id.values() {
            if let Some(parent) = &p.parent
                && purposes.get(parent).is_none()
            {
                return Err(format!("purpose {} has an unknown parent {parent}", p.id));
            }
            if purposes
                .ancestors(&p.id)
                .iter()
                .any(|a| same_purpose(a, &p.id))
            {
                return Err(format!("purpose {} is its own ancestor", p.id));
            }
        }
        Ok(purposes)
    }

    /// Loads `path`; a missing file is an empty registry.
    pub fn load(path: &std::path::Path) -> Result<Purposes, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Purposes::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Purposes::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The purpose with this id.
    /// The registered purpose ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }

    /// The registered purpose with this id.
    pub fn get(&self, id: &str) -> Option<&Purpose> {
        self.by_id.get(&id.trim().to_lowercase())
    }

    /// Broader purposes of `id`, nearest first (stops at a cycle).
    fn ancestors(&self, id: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut current = self.get(id).and_then(|p| p.parent.clone());
        while let Some(parent) = current {
            if out.iter().any(|a| same_purpose(a, &parent)) {
                break;
            }
            current = self.get(&parent).and_then(|p| p.parent.clone());
            out.push(parent);
        }
        out
    }

    /// Whether `purpose` is `broader` or a kind of it.
    pub fn is_a(&self, purpose: &str, broader: &str) -> bool {
        same_purpose(purpose, broader)
            || self
                .ancestors(purpose)
                .iter()
                .any(|a| same_purpose(a, broader))
    }
}

/// Which kind of ODRL policy to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OdrlKind {
    /// Terms proposed by the provider (a counter-offer or pending proposal).
    Offer,
    /// Terms both sides agreed (a grant).
    Agreement,
}

impl OdrlKind {
    /// The ODRL `@type`.
    pub fn as_str(self) -> &'static str {
        match self {
            OdrlKind::Offer => "Offer",
            OdrlKind::Agreement => "Agreement",
        }
    }
}

/// The IRI of a table in ODRL targets.
pub fn table_iri(table: &str) -> String {
    format!("urn:parley:table:{table}")
}

/// The IRI of a column (`namespace.table.column`) in ODRL targets.
pub fn column_iri(qualified_column: &str) -> String {
    format!("urn:parley:column:{qualified_column}")
}

/// Renders `terms` as a W3C ODRL 2.2 policy (JSON-LD). `uid` should be an IRI (e.g.
/// `urn:parley:agreement:<grant id>`), `assigner` the owner, `assignee` the principal; `contract_limitations`
/// is the contracts' `description.limitations` text (see [`combined_limitations`]).
///
/// One `permission` per table (action `read`) constrained by purpose, expiry (`dateTime`) and query quota
/// (`count`); an `anonymize` duty per masked column and a `compensate` duty with `payAmount` per price; a
/// `distribute` prohibition when the limitations forbid export or third parties. Parley-specific details with no
/// ODRL term (granted columns, row filter, row quota, the limitations text) sit under `parley:` keys.
pub fn odrl(
    kind: OdrlKind,
    uid: &str,
    assigner: &str,
    assignee: &str,
    terms: &Terms,
    contract_limitations: Option<&str>,
) -> Value {
    let expiry = terms.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true);
    let permissions: Vec<Value> = terms
        .tables
        .iter()
        .map(|table| {
            let mut constraints = vec![
                json!({"leftOperand": "purpose", "operator": "eq", "rightOperand": terms.purpose}),
                json!({
                    "leftOperand": "dateTime",
                    "operator": "lteq",
                    "rightOperand": {"@value": expiry, "@type": "xsd:dateTime"}
                }),
            ];
            if let Some(n) = terms.max_queries {
                constraints
                    .push(json!({"leftOperand": "count", "operator": "lteq", "rightOperand": n}));
            }
            let prefix = format!("{table}.");
            let mut duties: Vec<Value> = terms
                .masks
                .iter()
                .filter(|(column, _)| column.starts_with(&prefix))
                .map(|(column, mask)| {
                    json!({
                        "action": "anonymize",
                        "target": column_iri(column),
                        "parley:mask": mask.name()
                    })
                })
                .collect();
            for price in terms.prices.iter().filter(|p| *table == *p.table) {
                duties.push(json!({
                    "action": "compensate",
                    "constraint": [{
                        "leftOperand": "payAmount",
                        "operator": "eq",
                        "rightOperand": {"@value": price.amount, "@type": "xsd:decimal"},
                        "unit": price.currency,
                        "parley:per": price.unit
                    }]
                }));
            }
            let mut permission = json!({
                "target": table_iri(&table.to_string()),
                "assigner": assigner,
                "assignee": assignee,
                "action": "read",
                "constraint": constraints,
                "parley:columns": terms.columns_of(&table.to_string()),
            });
            if !duties.is_empty() {
                permission["duty"] = Value::Array(duties);
            }
            if let Some(filter) = &terms.row_filter {
                permission["parley:rowFilter"] =
                    json!({"column": filter.column, "values": filter.values});
            }
            if let Some(n) = terms.max_rows {
                permission["parley:maxRows"] = json!(n);
            }
            permission
        })
        .collect();

    let mut policy = json!({
        "@context": ODRL_CONTEXT,
        "@type": kind.as_str(),
        "uid": uid,
        "assigner": assigner,
        "assignee": assignee,
        "permission": permissions,
    });
    if let Some(text) = contract_limitations {
        policy["parley:limitations"] = json!(text);
        let lower = text.to_lowercase();
        if lower.contains("third part") || lower.contains("export") {
            policy["prohibition"] = Value::Array(
                terms
                    .tables
                    .iter()
                    .map(|table| {
                        json!({
                            "target": table_iri(&table.to_string()),
                            "assigner": assigner,
                            "assignee": assignee,
                            "action": "distribute"
                        })
                    })
                    .collect(),
            );
        }
    }
    policy
}

#[cfg(test)]
mod purpose_tests {
    use super::*;

    #[test]
    fn purposes_form_a_hierarchy_and_bad_registries_are_refused() {
        let p = Purposes::from_yaml(include_str!("../../examples/policy/purposes.yaml")).unwrap();
        assert!(p.is_a("churn_analysis", "analytics"));
        assert!(p.is_a("Churn_Analysis", "churn_analysis"));
        assert!(!p.is_a("analytics", "churn_analysis"));
        assert!(p.is_a("marketing_outreach", "marketing"));
        assert!(p.get("churn_analysis").unwrap().acknowledgement.is_some());
        assert!(
            Purposes::from_yaml("- {id: a, parent: b}")
                .unwrap_err()
                .contains("unknown parent")
        );
        assert!(
            Purposes::from_yaml("- {id: a, parent: b}\n- {id: b, parent: a}")
                .unwrap_err()
                .contains("own ancestor")
        );
        assert!(
            Purposes::from_yaml("- {id: a}\n- {id: A}")
                .unwrap_err()
                .contains("twice")
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::contracts::parse;
    use chrono::{SubsecRound, TimeDelta};

    const CUSTOMERS: &str = include_str!("../../examples/contracts/sales/customers.yaml");
    const ORDERS: &str = include_str!("../../examples/contracts/sales/orders.yaml");
    const PRODUCTS: &str = include_str!("../../examples/contracts/sales/products.yaml");
    const SHIPMENTS: &str = include_str!("../../examples/contracts/ops/shipments.yaml");

    fn contracts() -> Vec<(&'static str, Contract)> {
        [
            ("sales.customers", CUSTOMERS),
            ("sales.orders", ORDERS),
            ("sales.products", PRODUCTS),
            ("ops.shipments", SHIPMENTS),
        ]
        .into_iter()
        .map(|(table, text)| (table, parse(text, Path::new("x.yaml")).unwrap()))
        .collect()
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T12:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn request(
        tables: &[&str],
        columns: Option<&[&str]>,
        purpose: &str,
        days: u32,
    ) -> AccessRequest {
        AccessRequest {
            id: "req-1".to_string(),
            principal: "alice".to_string(),
            tables: tables
                .iter()
                .map(|t| TableName::parse(t).unwrap())
                .collect(),
            columns: columns.map(|cs| cs.iter().map(|c| c.to_string()).collect()),
            purpose: purpose.to_string(),
            justification: None,
            duration_days: days,
            row_scope: None,
            created_at: now(),
            requester_groups: Vec::new(),
        }
    }

    fn decide(req: &AccessRequest) -> Outcome {
        decide_as(req, true)
    }

    fn decide_as(req: &AccessRequest, eligible: bool) -> Outcome {
        let owned = contracts();
        let refs: Vec<(&str, &Contract)> = owned.iter().map(|(t, c)| (*t, c)).collect();
        Evaluator {
            purposes: &Purposes::default(),
            max_days: 365,
        }
        .evaluate(req, &refs, eligible, now())
    }

    fn days_after_now(days: i64) -> DateTime<Utc> {
        now().trunc_subsecs(0) + TimeDelta::days(days)
    }

    #[test]
    fn allowed_purpose_on_orders_is_granted() {
        let out = decide(&request(&["sales.orders"], None, "revenue_reporting", 60));
        let Outcome::Granted { terms, reasons } = &out else {
            panic!("expected granted, got {out:?}");
        };
        assert_eq!(TableName::join(&terms.tables, ","), "sales.orders");
        assert_eq!(terms.columns.len(), 10);
        assert!(terms.columns.contains(&"sales.orders.order_id".to_string()));
        assert!(terms.masks.is_empty());
        assert_eq!(terms.expires_at, days_after_now(60));
        assert!(terms.prices.is_empty(), "orders cost 0, so no price");
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("allowedPurposes of urn:parley:demo:sales:orders")),
            "{reasons:?}"
        );
        assert_eq!(out.state(), State::Finalized);
    }

    #[test]
    fn churn_analysis_on_all_customer_columns_is_countered_with_masks() {
        let out = decide(&request(&["sales.customers"], None, "churn_analysis", 90));
        let Outcome::CounterOffer { terms, reasons, .. } = &out else {
            panic!("expected counter-offer, got {out:?}");
        };
        assert_eq!(terms.mask_of("sales.customers", "email"), Some(Mask::Hash));
        assert_eq!(
            terms.mask_of("sales.customers", "birth_date"),
            Some(Mask::YearOnly)
        );
        assert_eq!(
            terms.mask_of("sales.customers", "full_name"),
            Some(Mask::Hash)
        );
        assert_eq!(terms.mask_of("sales.customers", "country"), None);
        assert_eq!(
            terms.columns_of("sales.customers").len(),
            10,
            "masked columns stay granted"
        );
        assert_eq!(terms.expires_at, days_after_now(i64::from(PII_MAX_DAYS)));
        assert!(reasons.iter().any(|r| r.contains("30 days")), "{reasons:?}");
        assert!(
            reasons.iter().any(|r| r.contains("sales.customers.email")
                && r.contains("urn:parley:demo:sales:customers")),
            "{reasons:?}"
        );
        assert_eq!(terms.prices.len(), 1);
        assert_eq!(terms.prices[0].describe(), "0.5 EUR per 1000 rows");
        assert_eq!(out.state(), State::Offered);
    }

    #[test]
    fn non_pii_customer_columns_are_granted_in_clear() {
        let out = decide(&request(
            &["sales.customers"],
            Some(&["customer_id", "country", "sales.customers.segment"]),
            "customer_analytics",
            10,
        ));
        let Outcome::Granted { terms, .. } = &out else {
            panic!("expected granted, got {out:?}");
        };
        assert_eq!(
            terms.columns_of("sales.customers"),
            vec!["customer_id", "country", "segment"]
        );
        assert!(terms.masks.is_empty());
    }

    #[test]
    fn prohibited_purpose_is_denied_with_the_acceptable_ones() {
        let out = decide(&request(
            &["sales.customers"],
            None,
            "marketing_outreach",
            30,
        ));
        let Outcome::Denied { reason, acceptable } = &out else {
            panic!("expected denied, got {out:?}");
        };
        assert!(
            reason.contains(
                "customProperties.prohibitedPurposes of urn:parley:demo:sales:customers lists marketing_outreach"
            ),
            "{reason}"
        );
        let acceptable = acceptable.as_deref().unwrap();
        for p in [
            "customer_analytics",
            "churn_analysis",
            "fraud_investigation",
        ] {
            assert!(acceptable.contains(p), "{acceptable}");
        }
    }

    #[test]
    fn unlisted_purpose_is_pending_with_the_contract_approvers() {
        let out = decide(&request(&["sales.orders"], None, "supplier_scoring", 30));
        let Outcome::Pending {
            approvers,
            reason,
            terms,
        } = &out
        else {
            panic!("expected pending, got {out:?}");
        };
        assert_eq!(approvers, &vec!["sales-owner".to_string()]);
        assert!(
            reason.contains("allowedPurposes of urn:parley:demo:sales:orders"),
            "{reason}"
        );
        assert_eq!(terms.purpose, "supplier_scoring");
        assert_eq!(out.state(), State::Requested);
    }

    #[test]
    fn any_internal_admits_any_purpose_not_prohibited() {
        let out = decide(&request(&["sales.products"], None, "pricing_review", 7));
        assert_eq!(out.kind(), "granted", "{out:?}");
    }

    #[test]
    fn unknown_column_is_denied_naming_it_and_listing_the_real_ones() {
        let out = decide(&request(
            &["sales.orders"],
            Some(&["order_id", "discount"]),
            "revenue_reporting",
            30,
        ));
        let Outcome::Denied { reason, acceptable } = &out else {
            panic!("expected denied, got {out:?}");
        };
        assert!(reason.contains("discount"), "{reason}");
        assert!(reason.contains("total_amount"), "{reason}");
        assert!(!reason.contains("order_id, discount"), "{reason}");
        assert!(acceptable.as_deref().unwrap().contains("order_id"));
    }

    #[test]
    fn ineligible_principal_is_denied_by_policy() {
        let out = decide_as(
            &request(&["sales.orders"], None, "revenue_reporting", 30),
            false,
        );
        let Outcome::Denied { reason, .. } = &out else {
            panic!("expected denied, got {out:?}");
        };
        assert!(reason.contains("request_access"), "{reason}");
    }

    #[test]
    fn table_without_contract_is_denied() {
        let out = decide(&request(&["sales.returns"], None, "revenue_reporting", 30));
        assert_eq!(out.kind(), "denied");
    }

    #[test]
    fn row_scope_must_exist_everywhere_and_not_be_personal() {
        let mut req = request(&["sales.customers"], None, "churn_analysis", 30);
        req.row_scope = Some(RowScope {
            column: "country".to_string(),
            values: vec!["DE".to_string()],
        });
        let out = decide(&req);
        assert_eq!(out.terms().unwrap().row_filter, req.row_scope);

        req.row_scope = Some(RowScope {
            column: "email".to_string(),
            values: vec!["a@example.com".to_string()],
        });
        assert_eq!(decide(&req).kind(), "denied");

        let mut req = request(
            &["sales.customers", "sales.orders"],
            None,
            "churn_analysis",
            30,
        );
        req.row_scope = Some(RowScope {
            column: "country".to_string(),
            values: vec!["DE".to_string()],
        });
        assert_eq!(
            decide(&req).kind(),
            "denied",
            "orders has no country column"
        );
    }

    #[test]
    fn terms_hash_is_stable_and_changes_with_the_terms() {
        let req = request(&["sales.customers"], None, "churn_analysis", 30);
        let a = decide(&req).terms().unwrap().clone();
        let b = decide(&req).terms().unwrap().clone();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);

        let round_tripped: Terms =
            serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(round_tripped.hash(), a.hash());
        // Tables are typed but stored as their text, as before the type: stored terms keep their hash.
        assert_eq!(
            serde_json::to_value(&a).unwrap()["tables"],
            serde_json::json!(["sales.customers"])
        );
        let mut bad = serde_json::to_value(&a).unwrap();
        bad["tables"] = serde_json::json!(["not-a-table"]);
        assert!(serde_json::from_value::<Terms>(bad).is_err());

        let mut changed = a.clone();
        changed.masks.remove("sales.customers.email");
        assert_ne!(changed.hash(), a.hash());
        let mut changed = a.clone();
        changed.expires_at += TimeDelta::seconds(1);
        assert_ne!(changed.hash(), a.hash());
    }

    #[test]
    fn state_names_round_trip_and_terminal_states_do_not_move() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
            assert!(!State::Terminated.can_become(s));
            assert!(!State::Finalized.can_become(s));
        }
        assert!(State::Requested.can_become(State::Offered));
        assert!(State::Offered.can_become(State::Accepted));
        assert!(!State::Accepted.can_become(State::Offered));
        assert!("REQUESTED".parse::<State>().is_err());
    }

    #[test]
    fn odrl_agreement_carries_purpose_expiry_masks_price_and_prohibition() {
        let owned = contracts();
        let refs: Vec<(&str, &Contract)> = owned
            .iter()
            .filter(|(t, _)| *t == "sales.customers")
            .map(|(t, c)| (*t, c))
            .collect();
        let req = request(&["sales.customers"], None, "churn_analysis", 30);
        let out = Evaluator {
            purposes: &Purposes::default(),
            max_days: 365,
        }
        .evaluate(&req, &refs, true, now());
        let mut terms = out.terms().unwrap().clone();
        terms.max_queries = Some(100);
        let limitations = combined_limitations(&refs);
        let doc = odrl(
            OdrlKind::Agreement,
            "urn:parley:agreement:grant-1",
            "sales-owners",
            "alice",
            &terms,
            limitations.as_deref(),
        );
        assert_eq!(doc["@context"], ODRL_CONTEXT);
        assert_eq!(doc["@type"], "Agreement");
        assert_eq!(doc["uid"], "urn:parley:agreement:grant-1");
        let permission = &doc["permission"][0];
        assert_eq!(permission["target"], "urn:parley:table:sales.customers");
        assert_eq!(permission["action"], "read");
        assert_eq!(permission["assignee"], "alice");
        let constraints = permission["constraint"].as_array().unwrap();
        assert!(
            constraints
                .iter()
                .any(|c| c["leftOperand"] == "purpose" && c["rightOperand"] == "churn_analysis")
        );
        assert!(constraints.iter().any(|c| c["leftOperand"] == "dateTime"
            && c["operator"] == "lteq"
            && c["rightOperand"]["@value"] == "2026-03-31T12:00:00Z"));
        assert!(
            constraints
                .iter()
                .any(|c| c["leftOperand"] == "count" && c["rightOperand"] == 100)
        );
        let duties = permission["duty"].as_array().unwrap();
        assert!(duties.iter().any(|d| d["action"] == "anonymize"
            && d["target"] == "urn:parley:column:sales.customers.email"
            && d["parley:mask"] == "hash"));
        assert!(duties.iter().any(|d| d["action"] == "compensate"
            && d["constraint"][0]["leftOperand"] == "payAmount"
            && d["constraint"][0]["rightOperand"]["@value"] == "0.5"));
        assert_eq!(doc["prohibition"][0]["action"], "distribute");
        assert!(
            doc["parley:limitations"]
                .as_str()
                .unwrap()
                .contains("third parties")
        );
    }

    #[test]
    fn odrl_without_limitations_has_no_prohibition() {
        let out = decide(&request(&["sales.orders"], None, "revenue_reporting", 30));
        let doc = odrl(
            OdrlKind::Offer,
            "urn:x",
            "sales-owners",
            "alice",
            out.terms().unwrap(),
            None,
        );
        assert_eq!(doc["@type"], "Offer");
        assert!(doc.get("prohibition").is_none());
        assert!(doc["permission"][0].get("duty").is_none());
    }

    #[test]
    fn grant_is_live_until_expiry_or_revocation() {
        let out = decide(&request(&["sales.orders"], None, "revenue_reporting", 1));
        let terms = out.terms().unwrap().clone();
        let mut grant = Grant::new(
            "req-1",
            "alice",
            terms.clone(),
            BTreeMap::new(),
            vec![],
            now(),
        );
        assert_eq!(grant.terms_hash, terms.hash());
        assert!(grant.is_live(now()));
        assert!(!grant.is_live(terms.expires_at));
        grant.revoked_at = Some(now());
        assert!(!grant.is_live(now()));
    }

    #[test]
    fn a_grant_is_usable_only_by_its_grantee_in_its_term_for_its_purpose_within_quota() {
        let out = decide(&request(&["sales.orders"], None, "revenue_reporting", 1));
        let mut terms = out.terms().unwrap().clone();
        terms.max_queries = Some(1);
        let mut grant = Grant::new(
            "req-1",
            "alice",
            terms.clone(),
            BTreeMap::new(),
            vec![],
            now(),
        );
        assert_eq!(grant.usable_for("alice", None, now()), Ok(()));
        assert_eq!(
            grant.usable_for("alice", Some("REVENUE_REPORTING"), now()),
            Ok(())
        );
        assert_eq!(
            grant.usable_for("bob", None, now()),
            Err(Unusable::NotYours)
        );
        assert_eq!(
            grant.usable_for("alice", Some("marketing"), now()),
            Err(Unusable::OtherPurpose("revenue_reporting".to_string()))
        );
        assert_eq!(
            grant.usable_for("alice", None, terms.expires_at),
            Err(Unusable::Expired(terms.expires_at))
        );
        grant.usage.queries = 1;
        assert!(matches!(
            grant.usable_for("alice", None, now()),
            Err(Unusable::QuotaUsed(_))
        ));
        grant.revoked_at = Some(now());
        assert_eq!(
            grant.usable_for("alice", None, now()),
            Err(Unusable::Revoked)
        );
    }
}

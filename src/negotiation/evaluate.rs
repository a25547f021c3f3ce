//! Deciding an access request against the contracts of its tables: [`Evaluator::evaluate`], as named steps.
//!
//! Each step either passes what the next one needs or stops with a typed [`Denial`]; the last steps build the
//! terms and choose between *pending* (a purpose a contract does not list needs an approver), *counter-offer*
//! (personal-data columns masked, term capped) and *granted*. No I/O: the caller brings the contracts, the
//! policy's eligibility and the time.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};

use super::{
    ANY_INTERNAL, AccessRequest, Mask, Outcome, PII_MAX_DAYS, PriceTerm, Purposes,
    QUOTA_QUERIES_PROPERTY, QUOTA_ROWS_PROPERTY, Terms, same_purpose, split_column,
};
use crate::contracts::{Contract, Property};

/// Why a request is denied outright: each variant is one rule, with what the agent needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The policy does not permit `request_access` on these tables for this principal.
    NotEligible,
    /// A requested table has no valid contract.
    NoContract {
        /// The table.
        table: String,
    },
    /// The request names no table.
    NoTables,
    /// The request states no purpose; `acceptable` lists what the contracts allow.
    NoPurpose {
        /// Per table, the purposes its contract allows.
        acceptable: Option<String>,
    },
    /// `duration_days` is 0.
    ZeroDuration {
        /// The server's longest term.
        max_days: u32,
    },
    /// A contract prohibits the purpose (or a purpose it is a kind of).
    ProhibitedPurpose {
        /// The table whose contract prohibits it.
        table: String,
        /// That contract's id.
        contract: String,
        /// The purpose asked for.
        purpose: String,
        /// The prohibited purpose it matched.
        prohibited: String,
        /// The purposes that contract allows.
        acceptable: Option<String>,
    },
    /// `columns` is an empty list.
    EmptyColumns,
    /// Requested columns no requested table has.
    UnknownColumns {
        /// The names not found.
        unknown: Vec<String>,
        /// Per table, `table (contract): col, col`.
        schemas: Vec<String>,
    },
    /// No requested column belongs to this table.
    NoColumnOf {
        /// The table.
        table: String,
        /// Its columns.
        columns: Vec<String>,
    },
    /// A row scope with no values.
    EmptyRowScope {
        /// The scope's column.
        column: String,
    },
    /// A row scope on a column some requested table lacks.
    RowScopeNotAColumn {
        /// The scope's column.
        column: String,
        /// The table without it.
        table: String,
        /// That table's contract id.
        contract: String,
    },
    /// A row scope on personal data (it would act as a lookup oracle).
    RowScopeOnPersonalData {
        /// `table.column`.
        column: String,
        /// How the contract classifies it.
        classification: String,
        /// The contract's id.
        contract: String,
    },
}

impl Denial {
    /// The reason given to the agent.
    pub fn reason(&self) -> String {
        match self {
            Denial::NotEligible => {
                "the policy does not permit request_access on the requested tables for this principal"
                    .to_string()
            }
            Denial::NoContract { table } => format!(
                "{table} has no valid data contract, so no terms can be offered for it; its owner must publish \
                 one first"
            ),
            Denial::NoTables => "the request names no table".to_string(),
            Denial::NoPurpose { .. } => {
                "the request states no purpose; access is always bound to one".to_string()
            }
            Denial::ZeroDuration { .. } => "duration_days is 0".to_string(),
            Denial::ProhibitedPurpose {
                table,
                contract,
                purpose,
                prohibited,
                ..
            } => {
                let via = if same_purpose(prohibited, purpose) {
                    String::new()
                } else {
                    format!(" ({purpose} is a kind of {prohibited})")
                };
                format!(
                    "customProperties.prohibitedPurposes of {contract} lists {prohibited}{via}, so {table} cannot \
                     be used for it"
                )
            }
            Denial::EmptyColumns => "columns is an empty list".to_string(),
            Denial::UnknownColumns { unknown, schemas } => format!(
                "column(s) {} are not in schema[].properties of the requested tables' contracts; their columns \
                 are {}",
                unknown.join(", "),
                schemas.join("; ")
            ),
            Denial::NoColumnOf { table, .. } => {
                format!("none of the requested columns belongs to {table}")
            }
            Denial::EmptyRowScope { column } => format!("row_scope on {column} lists no values"),
            Denial::RowScopeNotAColumn {
                column,
                table,
                contract,
            } => format!("row_scope column {column} is not a column of {table} ({contract})"),
            Denial::RowScopeOnPersonalData {
                column,
                classification,
                contract,
            } => format!(
                "row_scope column {column} is {classification} in {contract}; filtering on personal data is not \
                 offered"
            ),
        }
    }

    /// What would be acceptable instead, when something would.
    pub fn acceptable(&self) -> Option<String> {
        match self {
            Denial::NotEligible | Denial::NoContract { .. } => None,
            Denial::NoTables => {
                Some("a request naming at least one table as namespace.table".to_string())
            }
            Denial::NoPurpose { acceptable } | Denial::ProhibitedPurpose { acceptable, .. } => {
                acceptable.clone()
            }
            Denial::ZeroDuration { max_days } => {
                Some(format!("duration_days from 1 to {}", (*max_days).max(1)))
            }
            Denial::EmptyColumns => {
                Some("omit columns to ask for all columns, or name at least one".to_string())
            }
            Denial::UnknownColumns { schemas, .. } => {
                Some(format!("columns from: {}", schemas.join("; ")))
            }
            Denial::NoColumnOf { table, columns } => Some(format!(
                "name at least one column of {table}: {}, or omit columns to ask for all",
                columns.join(", ")
            )),
            Denial::EmptyRowScope { .. } => {
                Some("a row_scope with at least one value, or none".to_string())
            }
            Denial::RowScopeNotAColumn { .. } => {
                Some("a row_scope on a column every requested table has, or none".to_string())
            }
            Denial::RowScopeOnPersonalData { .. } => {
                Some("a row_scope on a column that is not personal data".to_string())
            }
        }
    }
}

impl From<Denial> for Outcome {
    fn from(d: Denial) -> Outcome {
        Outcome::Denied {
            reason: d.reason(),
            acceptable: d.acceptable(),
        }
    }
}

/// A requested table with its contract.
type Table<'c> = (&'c str, &'c Contract);

/// The columns granted on one table, in contract order.
struct Picked<'c> {
    table: &'c str,
    contract: &'c Contract,
    columns: Vec<&'c Property>,
}

/// What the terms were built from, in words, for the outcome's reasons.
struct TermsReasons {
    pii: Vec<String>,
    term: Vec<String>,
    price: Vec<String>,
}

/// The purpose check against every contract's `allowedPurposes`.
struct PurposeCheck {
    /// Why the purpose is fine where it is.
    allowed: Vec<String>,
    /// Where it is not listed: the approvers to ask, and why.
    approvers: Vec<String>,
    pending: Vec<String>,
}

/// Decides access requests: the server's settings that every evaluation shares.
#[derive(Debug, Clone, Copy)]
pub struct Evaluator<'p> {
    /// The purpose hierarchy: a requested purpose matches a contract's allowed or prohibited purpose when it is
    /// that purpose or a kind of it.
    pub purposes: &'p Purposes,
    /// The longest term the server grants, in days.
    pub max_days: u32,
}

impl Evaluator<'_> {
    /// Decides `request` against `contracts` (`namespace.table` → its validated contract; extra entries are
    /// ignored). `eligible` is the policy's decision on `request_access`. The rules, in order: not eligible →
    /// denied; a table without a contract, no purpose, a zero term → denied; a purpose in any contract's
    /// `prohibitedPurposes` → denied with that contract's allowed purposes; unknown columns or a bad row scope →
    /// denied naming them; a purpose missing from a non-empty `allowedPurposes` (without `any_internal`) →
    /// pending with the contract's approvers; personal-data columns → counter-offer with them masked (dates to
    /// the year, others hashed) and the term capped at [`PII_MAX_DAYS`]; otherwise granted. Terms start at
    /// `now` truncated to the second.
    pub fn evaluate(
        &self,
        request: &AccessRequest,
        contracts: &[(&str, &Contract)],
        eligible: bool,
        now: DateTime<Utc>,
    ) -> Outcome {
        match self.decide(request, contracts, eligible, now) {
            Ok(outcome) => outcome,
            Err(denial) => denial.into(),
        }
    }

    fn decide(
        &self,
        request: &AccessRequest,
        contracts: &[(&str, &Contract)],
        eligible: bool,
        now: DateTime<Utc>,
    ) -> Result<Outcome, Denial> {
        if !eligible {
            return Err(Denial::NotEligible);
        }
        let purpose = request.purpose.trim();
        let tables = resolve_tables(request, contracts)?;
        require_purpose_and_term(request, &tables, self.max_days)?;
        self.refuse_prohibited(purpose, &tables)?;
        let picked = pick_columns(request.columns.as_deref(), &tables)?;
        check_row_scope(request, &tables)?;
        let (terms, why) = self.terms(request, purpose, &tables, &picked, now);
        let check = self.check_purpose(purpose, &tables);
        Ok(conclude(terms, why, check))
    }

    /// Rule b: a prohibited purpose ends the negotiation, whatever else was asked.
    fn refuse_prohibited(&self, purpose: &str, tables: &[Table<'_>]) -> Result<(), Denial> {
        for (table, c) in tables {
            if let Some(p) = c
                .prohibited_purposes()
                .into_iter()
                .find(|p| self.purposes.is_a(purpose, p))
            {
                return Err(Denial::ProhibitedPurpose {
                    table: table.to_string(),
                    contract: c.id.clone(),
                    purpose: purpose.to_string(),
                    prohibited: p,
                    acceptable: acceptable_purposes(c),
                });
            }
        }
        Ok(())
    }

    /// The terms: the picked columns with personal data masked (rule d), the term capped by the server and for
    /// personal data, the contracts' quotas and prices.
    fn terms(
        &self,
        request: &AccessRequest,
        purpose: &str,
        tables: &[Table<'_>],
        picked: &[Picked<'_>],
        now: DateTime<Utc>,
    ) -> (Terms, TermsReasons) {
        let mut columns = Vec::new();
        let mut masks = BTreeMap::new();
        let mut pii = Vec::new();
        for Picked {
            table,
            contract,
            columns: props,
        } in picked
        {
            for p in props {
                let qualified = format!("{table}.{}", p.name);
                if p.is_pii() {
                    let mask = if p.logical_type.as_deref() == Some("date") {
                        Mask::YearOnly
                    } else {
                        Mask::Hash
                    };
                    pii.push(format!(
                        "{qualified} is {} in schema[].properties of {}, so it is offered {}.",
                        classification_phrase(p),
                        contract.id,
                        mask.participle()
                    ));
                    masks.insert(qualified.clone(), mask);
                }
                columns.push(qualified);
            }
        }

        let max_days = self.max_days.max(1);
        let wanted = request.duration_days;
        let mut days = wanted.min(max_days);
        let mut term = Vec::new();
        if wanted > max_days {
            term.push(format!(
                "The term is capped at {max_days} days, the server's maximum; {wanted} were asked."
            ));
        }
        if !masks.is_empty() && days > PII_MAX_DAYS {
            days = PII_MAX_DAYS;
            term.push(format!(
                "Access to personal data is limited to {PII_MAX_DAYS} days; {wanted} were asked."
            ));
        }
        let start = now.trunc_subsecs(0);
        let expires_at = TimeDelta::try_days(i64::from(days))
            .and_then(|d| start.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);

        let prices: Vec<PriceTerm> = tables
            .iter()
            .filter_map(|(table, c)| {
                let price = c.price.as_ref()?;
                let amount = price.price_amount.filter(|a| *a > 0.0)?;
                Some(PriceTerm {
                    table: table.to_string(),
                    amount: format!("{amount}"),
                    currency: price.price_currency.clone().unwrap_or_default(),
                    unit: price
                        .price_unit
                        .clone()
                        .unwrap_or_else(|| "use".to_string()),
                })
            })
            .collect();
        let price = prices
            .iter()
            .map(|p| {
                format!(
                    "price.priceAmount of the {} contract is {}.",
                    p.table,
                    p.describe()
                )
            })
            .collect();

        let terms = Terms {
            // The requested tables, once each, in request order: those `tables` resolved.
            tables: request.tables.iter().fold(Vec::new(), |mut names, t| {
                if !names.contains(t) {
                    names.push(t.clone());
                }
                names
            }),
            columns,
            masks,
            dropped: Vec::new(),
            row_filter: request.row_scope.clone(),
            purpose: purpose.to_string(),
            expires_at,
            max_rows: tables
                .iter()
                .filter_map(|(_, c)| custom_u64(c, QUOTA_ROWS_PROPERTY))
                .min(),
            max_queries: tables
                .iter()
                .filter_map(|(_, c)| custom_u64(c, QUOTA_QUERIES_PROPERTY))
                .min(),
            prices,
        };
        (terms, TermsReasons { pii, term, price })
    }

    /// Rule c: a purpose a contract does not list needs that contract's approvers.
    fn check_purpose(&self, purpose: &str, tables: &[Table<'_>]) -> PurposeCheck {
        let mut check = PurposeCheck {
            allowed: Vec::new(),
            approvers: Vec::new(),
            pending: Vec::new(),
        };
        for (table, c) in tables {
            let allowed = c.allowed_purposes();
            if allowed.is_empty() {
                check.allowed.push(format!(
                    "{} ({table}) lists no allowedPurposes, so any purpose not prohibited may be used.",
                    c.id
                ));
            } else if allowed.iter().any(|p| p == ANY_INTERNAL) {
                check.allowed.push(format!(
                    "customProperties.allowedPurposes of {} ({table}) is {ANY_INTERNAL}.",
                    c.id
                ));
            } else if let Some(p) = allowed.iter().find(|p| self.purposes.is_a(purpose, p)) {
                let via = if same_purpose(p, purpose) {
                    String::new()
                } else {
                    format!(", and {purpose} is a kind of {p}")
                };
                check.allowed.push(format!(
                    "customProperties.allowedPurposes of {} ({table}) lists {p}{via}.",
                    c.id
                ));
            } else {
                let table_approvers = approvers_of(c);
                for a in &table_approvers {
                    if !check.approvers.contains(a) {
                        check.approvers.push(a.clone());
                    }
                }
                check.pending.push(format!(
                    "{purpose} is not in customProperties.allowedPurposes of {} ({}), so access to {table} needs \
                     approval by {} (roles[].firstLevelApprovers)",
                    c.id,
                    allowed.join(", "),
                    table_approvers.join(", ")
                ));
            }
        }
        check
    }
}

/// Each requested table (deduplicated, in request order) with its contract.
fn resolve_tables<'c>(
    request: &AccessRequest,
    contracts: &'c [(&'c str, &'c Contract)],
) -> Result<Vec<Table<'c>>, Denial> {
    let mut tables: Vec<Table<'c>> = Vec::new();
    for name in &request.tables {
        let name = name.to_string();
        let name = name.as_str();
        if tables.iter().any(|(t, _)| *t == name) {
            continue;
        }
        match contracts.iter().find(|(t, _)| *t == name) {
            Some((t, c)) => tables.push((*t, *c)),
            None => {
                return Err(Denial::NoContract {
                    table: name.to_string(),
                });
            }
        }
    }
    if tables.is_empty() {
        return Err(Denial::NoTables);
    }
    Ok(tables)
}

/// Access is always bound to a purpose and a term of at least a day.
fn require_purpose_and_term(
    request: &AccessRequest,
    tables: &[Table<'_>],
    max_days: u32,
) -> Result<(), Denial> {
    if request.purpose.trim().is_empty() {
        let acceptable = tables
            .iter()
            .filter_map(|(t, c)| acceptable_purposes(c).map(|a| format!("{t}: {a}")))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Denial::NoPurpose {
            acceptable: (!acceptable.is_empty()).then_some(acceptable),
        });
    }
    if request.duration_days == 0 {
        return Err(Denial::ZeroDuration { max_days });
    }
    Ok(())
}

/// The columns asked for, per table: all of them when `columns` is omitted; otherwise every name must be a
/// column of a requested table (`ns.table.column` picks from that table, a bare name from every table that has
/// it) and every table must get at least one.
fn pick_columns<'c>(
    columns: Option<&[String]>,
    tables: &[Table<'c>],
) -> Result<Vec<Picked<'c>>, Denial> {
    let Some(list) = columns else {
        return Ok(tables
            .iter()
            .map(|(table, c)| Picked {
                table,
                contract: c,
                columns: c.columns().collect(),
            })
            .collect());
    };
    if list.is_empty() {
        return Err(Denial::EmptyColumns);
    }
    let mut picked: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); tables.len()];
    let mut unknown: Vec<String> = Vec::new();
    for entry in list {
        let entry = entry.trim();
        let mut matched = false;
        // A qualified name (`ns.table.column`) picks from that table only.
        if let Some((t, col)) = split_column(entry)
            && let Some(i) = tables.iter().position(|(name, _)| *name == t)
            && let Some(p) = tables[i].1.column(col)
        {
            picked[i].insert(p.name.as_str());
            matched = true;
        }
        // A bare name picks from every requested table that has it.
        if !matched {
            for (i, (_, c)) in tables.iter().enumerate() {
                if let Some(p) = c.column(entry) {
                    picked[i].insert(p.name.as_str());
                    matched = true;
                }
            }
        }
        if !matched {
            unknown.push(entry.to_string());
        }
    }
    if !unknown.is_empty() {
        let schemas = tables
            .iter()
            .map(|(t, c)| format!("{t} ({}): {}", c.id, column_names(c).join(", ")))
            .collect();
        return Err(Denial::UnknownColumns { unknown, schemas });
    }
    let mut out = Vec::new();
    for (i, (table, c)) in tables.iter().enumerate() {
        if picked[i].is_empty() {
            return Err(Denial::NoColumnOf {
                table: table.to_string(),
                columns: column_names(c),
            });
        }
        // Contract order, so the terms read like the schema.
        out.push(Picked {
            table,
            contract: c,
            columns: c
                .columns()
                .filter(|p| picked[i].contains(p.name.as_str()))
                .collect(),
        });
    }
    Ok(out)
}

/// A row scope must apply to every table, or some table would be read unfiltered while the agent believes it
/// asked for fewer rows; and it must not sit on personal data, where it would act as a lookup oracle.
fn check_row_scope(request: &AccessRequest, tables: &[Table<'_>]) -> Result<(), Denial> {
    let Some(scope) = &request.row_scope else {
        return Ok(());
    };
    if scope.values.is_empty() {
        return Err(Denial::EmptyRowScope {
            column: scope.column.clone(),
        });
    }
    for (table, c) in tables {
        match c.column(&scope.column) {
            None => {
                return Err(Denial::RowScopeNotAColumn {
                    column: scope.column.clone(),
                    table: table.to_string(),
                    contract: c.id.clone(),
                });
            }
            Some(p) if p.is_pii() => {
                return Err(Denial::RowScopeOnPersonalData {
                    column: format!("{table}.{}", p.name),
                    classification: classification_phrase(p),
                    contract: c.id.clone(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Pending when a purpose needs an approver; a counter-offer when personal data is masked; else granted.
fn conclude(terms: Terms, why: TermsReasons, check: PurposeCheck) -> Outcome {
    if !check.pending.is_empty() {
        return Outcome::Pending {
            approvers: check.approvers,
            reason: format!("{}.", check.pending.join("; ")),
            terms,
        };
    }
    let mut reasons = check.allowed;
    if terms.masks.is_empty() {
        reasons.push(
            "No granted column is personal data (classified restricted, pii or sensitive)."
                .to_string(),
        );
        reasons.extend(why.term);
        reasons.extend(why.price);
        Outcome::Granted { terms, reasons }
    } else {
        reasons.extend(why.pii);
        reasons.extend(why.term);
        reasons.extend(why.price);
        Outcome::CounterOffer {
            terms,
            reasons,
            offered_by: vec![],
        }
    }
}

/// What the caller's policy says about terms a negotiation could offer (a grant never overrides a forbid).
pub trait TermsPolicy: Sync {
    /// The first requested table whose query under `terms` as a grant the policy would refuse, with its reason.
    fn refusal(&self, terms: &Terms) -> Option<String>;
    /// Each requested table (`namespace.table`) with its personal-data columns.
    fn personal_columns(&self) -> Vec<(String, Vec<String>)>;
}

/// Narrows an outcome to terms the policy lets a query use: for each table, `query` under the would-be grant
/// must be permitted, since a grant never overrides a forbid. Terms the policy refuses are narrowed once — every
/// personal-data column masked — and offered if the policy then allows them; otherwise the request is denied
/// with the policy's reason.
pub fn fit_policy(outcome: Outcome, policy: &dyn TermsPolicy) -> Outcome {
    let Some(terms) = outcome.terms() else {
        return outcome;
    };
    let Some(why) = policy.refusal(terms) else {
        return outcome;
    };
    let mut narrowed = terms.clone();
    for (table, columns) in policy.personal_columns() {
        for column in columns {
            let qualified = format!("{table}.{column}");
            if narrowed.columns.contains(&qualified) {
                narrowed.masks.entry(qualified).or_insert(Mask::Hash);
            }
        }
    }
    if narrowed.masks == terms.masks || policy.refusal(&narrowed).is_some() {
        return Outcome::Denied {
            reason: format!(
                "the policy would not let you query under any terms Parley can offer ({why}); a grant never \
                 overrides the policy"
            ),
            acceptable: None,
        };
    }
    let note = format!(
        "The policy allows these tables under a grant only with their personal data masked ({why} as asked), \
         so every personal-data column is offered hashed."
    );
    match outcome {
        Outcome::Granted { mut reasons, .. } | Outcome::CounterOffer { mut reasons, .. } => {
            reasons.push(note);
            Outcome::CounterOffer {
                terms: narrowed,
                reasons,
                offered_by: vec![],
            }
        }
        Outcome::Pending {
            approvers, reason, ..
        } => Outcome::Pending {
            approvers,
            reason: format!("{reason} {note}"),
            terms: narrowed,
        },
        denied @ Outcome::Denied { .. } => denied,
    }
}

/// A contract's column names, in schema order.
fn column_names(c: &Contract) -> Vec<String> {
    c.columns().map(|p| p.name.clone()).collect()
}

/// "one of a, b, c" for a contract's allowed purposes, or `None` when it lists none.
fn acceptable_purposes(contract: &Contract) -> Option<String> {
    let allowed = contract.allowed_purposes();
    if allowed.is_empty() {
        None
    } else if allowed.iter().any(|p| p == ANY_INTERNAL) {
        Some("any internal purpose not listed in prohibitedPurposes".to_string())
    } else {
        Some(format!(
            "a purpose from allowedPurposes: {}",
            allowed.join(", ")
        ))
    }
}

/// The contract's first-level approvers across its roles, split on commas, trimmed, deduplicated; the owning team
/// when no role names any, so a pending request always has someone to go to.
fn approvers_of(contract: &Contract) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for role in &contract.roles {
        for name in role
            .first_level_approvers
            .as_deref()
            .unwrap_or("")
            .split(',')
        {
            let name = name.trim();
            if !name.is_empty() && !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        }
    }
    if out.is_empty()
        && let Some(owner) = contract.owner_group()
    {
        out.push(owner.to_string());
    }
    out
}

/// A numeric custom property (number or numeric string).
fn custom_u64(contract: &Contract, key: &str) -> Option<u64> {
    contract
        .custom_properties
        .iter()
        .find(|p| p.property == key)
        .and_then(|p| {
            p.value
                .as_u64()
                .or_else(|| p.value.as_str().and_then(|s| s.trim().parse().ok()))
        })
}

/// "classified restricted, tagged pii" for a column.
fn classification_phrase(p: &Property) -> String {
    let mut parts = Vec::new();
    match &p.classification {
        Some(c) => parts.push(format!("classified {c}")),
        None => parts.push(
            "not classified (so treated as personal data until an owner classifies it)".to_string(),
        ),
    }
    if !p.tags.is_empty() {
        parts.push(format!("tagged {}", p.tags.join(", ")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::catalog::TableName;
    use crate::contracts::parse;
    use crate::negotiation::RowScope;

    fn contracts() -> Vec<(&'static str, Contract)> {
        [
            (
                "sales.customers",
                include_str!("../../examples/contracts/sales/customers.yaml"),
            ),
            (
                "sales.orders",
                include_str!("../../examples/contracts/sales/orders.yaml"),
            ),
        ]
        .into_iter()
        .map(|(table, text)| (table, parse(text, Path::new("x.yaml")).unwrap()))
        .collect()
    }

    fn request() -> AccessRequest {
        AccessRequest {
            id: "req-1".to_string(),
            principal: "alice".to_string(),
            tables: vec![TableName::parse("sales.customers").unwrap()],
            columns: Some(vec!["country".to_string()]),
            purpose: "customer_analytics".to_string(),
            justification: None,
            duration_days: 7,
            row_scope: None,
            created_at: Utc::now(),
            requester_groups: Vec::new(),
        }
    }

    fn scope(column: &str, values: &[&str]) -> Option<RowScope> {
        Some(RowScope {
            column: column.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
        })
    }

    /// Each rule, by the change to a request that it refuses, and the denial it gives: the first failing step
    /// decides, so every case changes one thing of a request that would be granted.
    #[test]
    fn each_step_refuses_with_its_own_denial() {
        type Change = fn(&mut AccessRequest, &mut bool);
        type Expected = fn(&Denial) -> bool;
        let cases: Vec<(&str, Change, Expected)> = vec![
            (
                "not eligible",
                |_, e| *e = false,
                |d| matches!(d, Denial::NotEligible),
            ),
            (
                "table without contract",
                |r, _| r.tables.push(TableName::parse("sales.nope").unwrap()),
                |d| matches!(d, Denial::NoContract { table } if table == "sales.nope"),
            ),
            (
                "no tables",
                |r, _| r.tables.clear(),
                |d| matches!(d, Denial::NoTables),
            ),
            (
                "blank purpose",
                |r, _| r.purpose = "  ".into(),
                |d| matches!(d, Denial::NoPurpose { acceptable: Some(a) } if a.contains("churn_analysis")),
            ),
            (
                "zero days",
                |r, _| r.duration_days = 0,
                |d| matches!(d, Denial::ZeroDuration { max_days: 365 }),
            ),
            (
                "prohibited purpose",
                |r, _| r.purpose = "resale".into(),
                |d| matches!(d, Denial::ProhibitedPurpose { prohibited, table, .. } if prohibited == "resale" && table == "sales.customers"),
            ),
            (
                "empty column list",
                |r, _| r.columns = Some(vec![]),
                |d| matches!(d, Denial::EmptyColumns),
            ),
            (
                "unknown column",
                |r, _| r.columns = Some(vec!["country".into(), "shoe_size".into()]),
                |d| matches!(d, Denial::UnknownColumns { unknown, .. } if unknown == &["shoe_size"]),
            ),
            (
                "a table gets no column",
                |r, _| r.tables.push(TableName::parse("sales.orders").unwrap()),
                |d| matches!(d, Denial::NoColumnOf { table, columns } if table == "sales.orders" && columns.contains(&"order_id".to_string())),
            ),
            (
                "row scope without values",
                |r, _| r.row_scope = scope("country", &[]),
                |d| matches!(d, Denial::EmptyRowScope { column } if column == "country"),
            ),
            (
                "row scope on a missing column",
                |r, _| r.row_scope = scope("planet", &["earth"]),
                |d| matches!(d, Denial::RowScopeNotAColumn { column, .. } if column == "planet"),
            ),
            (
                "row scope on personal data",
                |r, _| r.row_scope = scope("email", &["a@b.c"]),
                |d| matches!(d, Denial::RowScopeOnPersonalData { column, .. } if column == "sales.customers.email"),
            ),
        ];
        let owned = contracts();
        let refs: Vec<(&str, &Contract)> = owned.iter().map(|(t, c)| (*t, c)).collect();
        let purposes = Purposes::default();
        let evaluator = Evaluator {
            purposes: &purposes,
            max_days: 365,
        };
        // The unchanged request is granted, so each denial below is the change's doing.
        let base = evaluator.evaluate(&request(), &refs, true, Utc::now());
        assert!(matches!(base, Outcome::Granted { .. }), "{base:?}");
        for (name, change, expected) in cases {
            let mut req = request();
            let mut eligible = true;
            change(&mut req, &mut eligible);
            let denial = evaluator
                .decide(&req, &refs, eligible, Utc::now())
                .expect_err(name);
            assert!(expected(&denial), "{name}: got {denial:?}");
            // The outcome an agent sees is the denial's reason and what would be acceptable.
            let Outcome::Denied { reason, acceptable } =
                evaluator.evaluate(&req, &refs, eligible, Utc::now())
            else {
                panic!("{name}: not denied");
            };
            assert_eq!(reason, denial.reason(), "{name}");
            assert_eq!(acceptable, denial.acceptable(), "{name}");
            assert!(!reason.is_empty(), "{name}");
        }
    }

    #[test]
    fn conclusion_follows_purpose_then_personal_data() {
        let owned = contracts();
        let refs: Vec<(&str, &Contract)> = owned.iter().map(|(t, c)| (*t, c)).collect();
        let purposes = Purposes::default();
        let evaluator = Evaluator {
            purposes: &purposes,
            max_days: 365,
        };
        let cases: [(&str, Option<&[&str]>, &str); 3] = [
            ("customer_analytics", Some(&["country"]), "granted"),
            ("customer_analytics", Some(&["email"]), "counter_offer"),
            ("pricing_research", Some(&["email"]), "pending"),
        ];
        for (purpose, columns, kind) in cases {
            let mut req = request();
            req.purpose = purpose.to_string();
            req.columns = columns.map(|cs| cs.iter().map(|c| c.to_string()).collect());
            let out = evaluator.evaluate(&req, &refs, true, Utc::now());
            assert_eq!(out.kind(), kind, "{purpose} {columns:?}: {out:?}");
        }
    }
}

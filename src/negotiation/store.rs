//! The store seam of the negotiation domain: [`NegotiationStore`], which the flows in
//! [`super::service`] run over, and the types it speaks — [`StoredRequest`], [`Event`], [`StoreError`].
//!
//! The trait sits with its consumer; backends (`crate::store::SqliteStore`) implement it, so the domain does not
//! depend on a database crate. A backend's own errors travel boxed in [`StoreError`]'s `source`.

use std::path::PathBuf;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AccessRequest, Grant, Outcome, State, Usage};

/// A query counted on a grant by [`NegotiationStore::reserve_query`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// The grant's totals with this query counted (its reserved rows among them).
    pub usage: Usage,
    /// Under a `max_rows` quota, the rows this query may return, already counted; `None` without one.
    pub rows: Option<u64>,
}

/// A backend's own error (a database driver's), kept as the cause of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request as stored: the request, where its negotiation stands, and the last outcome given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRequest {
    /// The request as the agent made it.
    pub request: AccessRequest,
    /// Current negotiation state.
    pub state: State,
    /// The outcome returned to the agent, or the approver's counter-offer that replaced it.
    pub outcome: Outcome,
    /// When the state last changed.
    pub updated_at: DateTime<Utc>,
}

/// What an [`Event`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A request was submitted.
    Requested,
    /// A request's negotiation state changed.
    StateChanged,
    /// A grant was made.
    Granted,
    /// A grant was revoked.
    Revoked,
    /// The table a grant covers changed, or its contract did: what changed and what to do.
    ContractChange,
    /// The table breaches its contract's quality rules or freshness promise.
    Quality,
}

/// The subject under which a table's owners get notices: `table:<namespace>.<table>`.
pub fn table_subject(table: &str) -> String {
    format!("{TABLE_SUBJECT}{table}")
}

/// The prefix of [`table_subject`]s.
pub const TABLE_SUBJECT: &str = "table:";

impl EventKind {
    /// Stable name: `requested`, `state_changed`, `granted`, `revoked`, `contract_change`, `quality`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Requested => "requested",
            EventKind::StateChanged => "state_changed",
            EventKind::Granted => "granted",
            EventKind::Revoked => "revoked",
            EventKind::ContractChange => "contract_change",
            EventKind::Quality => "quality",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<EventKind, String> {
        [
            EventKind::Requested,
            EventKind::StateChanged,
            EventKind::Granted,
            EventKind::Revoked,
            EventKind::ContractChange,
            EventKind::Quality,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// One step in the history of a request or grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Request or grant id.
    pub subject_id: String,
    /// Position in the subject's history, from 1.
    pub seq: u64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// The state entered, for request events.
    pub state: Option<State>,
    /// Who did it (principal id, or `parley` for automatic decisions).
    pub actor: String,
    /// Why, in words.
    pub reason: String,
}

/// A store operation that failed: whose fault it is and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (path, permissions, disk).
    #[error(
        "cannot open the negotiation store {path}: {source}. Check that the data dir exists and is writable."
    )]
    Open {
        /// Database file.
        path: PathBuf,
        /// Cause.
        source: BoxError,
    },
    /// The schema could not be brought up to date.
    #[error(
        "cannot migrate the negotiation store {path}: {source}. The file may belong to a newer Parley or be damaged."
    )]
    Migrate {
        /// Database file.
        path: PathBuf,
        /// Cause.
        source: BoxError,
    },
    /// A statement failed; nothing of the operation was written.
    #[error("negotiation store failed while {context}: {source}")]
    Database {
        /// What the store was doing.
        context: &'static str,
        /// Cause.
        source: BoxError,
    },
    /// No request or grant with this id.
    #[error("{what} {id} not found")]
    NotFound {
        /// `request` or `grant`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A request or grant with this id already exists; ids are never reused.
    #[error("{what} {id} already exists")]
    Duplicate {
        /// `request` or `grant`.
        what: &'static str,
        /// The id.
        id: String,
    },
    /// The protocol does not allow this state change; nothing was written.
    #[error("request {id} is {from} and cannot become {to}")]
    InvalidTransition {
        /// Request id.
        id: String,
        /// Current state.
        from: State,
        /// State asked for.
        to: State,
    },
    /// The grant was revoked before; nothing was written.
    #[error("grant {id} was already revoked at {at}")]
    AlreadyRevoked {
        /// Grant id.
        id: String,
        /// When it was revoked.
        at: DateTime<Utc>,
    },
    /// The caller passed something that cannot be stored; a bug in the caller, nothing was written.
    #[error("cannot store {what}: {message}")]
    Invalid {
        /// What was being stored.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A stored row cannot be read back: the file was edited, damaged, or written by a newer Parley.
    #[error("stored {what} {id} is unreadable: {message}")]
    Corrupt {
        /// `request`, `grant` or `event`.
        what: &'static str,
        /// Its id.
        id: String,
        /// What is wrong.
        message: String,
    },
}

/// Persistence of negotiations and grants. Contract for every implementation:
///
/// - A method that returns `Ok` has made its write durable; one that returns `Err` has written nothing (each
///   write is one transaction).
/// - `update_state` and `revoke_grant` append their [`Event`] in the same transaction as the change.
/// - Lookups of a missing id return `Ok(None)` (`get_*`) or an empty list; changes to a missing id return
///   [`StoreError::NotFound`].
/// - Lists are ordered oldest first.
#[async_trait]
pub trait NegotiationStore: Send + Sync {
    /// Inserts a new request in `state` with the outcome given to the agent, and its `requested` event (actor:
    /// the requester). Fails with [`StoreError::Duplicate`] if the id exists.
    async fn save_request(
        &self,
        request: &AccessRequest,
        state: State,
        outcome: &Outcome,
    ) -> Result<(), StoreError>;

    /// Moves a request to `state`, recording `by` and `why`. Fails with [`StoreError::InvalidTransition`] when
    /// [`State::can_become`] forbids it (checked atomically with the write, so two racing decisions cannot both
    /// succeed from the same state).
    async fn update_state(
        &self,
        request_id: &str,
        state: State,
        by: &str,
        why: &str,
    ) -> Result<(), StoreError>;

    /// Replaces a pending (`requested`) request's outcome with an approver's counter-offer and moves it to
    /// `offered`, in one atomic step; fails with [`StoreError::InvalidTransition`] if the request is no longer
    /// pending (another approver decided it meanwhile).
    async fn counter_offer(
        &self,
        request_id: &str,
        outcome: &Outcome,
        by: &str,
        why: &str,
    ) -> Result<(), StoreError>;

    /// The request with this id.
    async fn get_request(&self, id: &str) -> Result<Option<StoredRequest>, StoreError>;

    /// Requests naming any of `tables` (`namespace.table`), optionally only those in `state`.
    async fn requests_for_tables(
        &self,
        tables: &[String],
        state: Option<State>,
    ) -> Result<Vec<StoredRequest>, StoreError>;

    /// All requests a principal made, oldest first.
    async fn requests_for_principal(
        &self,
        principal: &str,
    ) -> Result<Vec<StoredRequest>, StoreError>;

    /// Inserts a grant and its `granted` event. Fails with [`StoreError::Invalid`] when `terms_hash` is not the
    /// hash of `terms`, and [`StoreError::Duplicate`] if the id exists.
    async fn save_grant(&self, grant: &Grant) -> Result<(), StoreError>;

    /// All grants of a principal, live or not (see [`Grant::is_live`]).
    async fn grants_for_principal(&self, principal: &str) -> Result<Vec<Grant>, StoreError>;

    /// All grants covering `table` (`namespace.table`), live or not.
    async fn grants_for_table(&self, table: &str) -> Result<Vec<Grant>, StoreError>;

    /// The grant with this id.
    async fn get_grant(&self, id: &str) -> Result<Option<Grant>, StoreError>;

    /// Revokes a grant now, recording `by` and `why`. Once this returns, every later read of the grant shows it
    /// revoked. Fails with [`StoreError::AlreadyRevoked`] if it was.
    async fn revoke_grant(&self, id: &str, by: &str, why: &str) -> Result<(), StoreError>;

    /// Counts one query on a grant if its quotas allow it, and under a `max_rows` quota reserves the rows it may
    /// return (`want_rows`, or what is left), in one atomic step: `Some` with the totals and the rows reserved
    /// (`None` without a row quota) when counted, `None` when `max_queries` or `max_rows` is already used up.
    /// Concurrent callers never overshoot a quota.
    async fn reserve_query(
        &self,
        grant_id: &str,
        max_queries: Option<u64>,
        max_rows: Option<u64>,
        want_rows: u64,
    ) -> Result<Option<Reserved>, StoreError>;

    /// Settles a query [`NegotiationStore::reserve_query`] counted: `reserved` rows (0 without a row quota) give
    /// way to the `returned` rows (at most `reserved` under a quota; 0 when none left).
    async fn settle_rows(
        &self,
        grant_id: &str,
        reserved: u64,
        returned: u64,
    ) -> Result<Usage, StoreError>;

    /// The history of a request or grant, oldest first.
    async fn events(&self, subject_id: &str) -> Result<Vec<Event>, StoreError>;

    /// Adds a notice event (`contract_change` or `quality`) to a subject's history: a grant's (its holder's
    /// notices) or a table's, [`table_subject`] (its owners' notices). `actor` changed the table or its contract,
    /// or found it breaching; `reason` says what and what to do.
    async fn note(
        &self,
        subject_id: &str,
        kind: EventKind,
        actor: &str,
        reason: &str,
    ) -> Result<(), StoreError>;

    /// The table subjects ([`table_subject`]) that have notices.
    async fn table_subjects(&self) -> Result<Vec<String>, StoreError>;

    /// A counter that changes after every grant this process saves or revokes through the store, so callers may
    /// reuse a principal's grant list while it stands still; `None` when the store cannot tell (never cache).
    fn grant_generation(&self) -> Option<u64> {
        None
    }
}

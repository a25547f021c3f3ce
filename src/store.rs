//! Store: [`SqliteStore`], where access negotiations and grants live — the backend of the negotiation
//! domain's [`NegotiationStore`] seam (`crate::negotiation::store`, where its contract is written).
//!
//! The store keeps requests with their Dataspace Protocol [`State`] and outcome, grants with their metered
//! [`Usage`], and an append-only history of [`Event`]s saying who moved what and why. [`SqliteStore`] is the
//! default backend (a SQLite file in the data dir, via sqlx, with embedded migrations from `migrations/`); the
//! schema uses only SQL that also runs on PostgreSQL, so a Postgres backend can share it.
//!
//! Invariants: a write returns only once it is durable (WAL with `synchronous=FULL`); a state change or
//! revocation and its event are committed in one transaction, so the history never misses a transition; a
//! negotiation in a terminal state never changes state; a grant whose stored terms do not match its terms hash
//! is never returned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite};

use crate::catalog::TableName;
use crate::negotiation::store::{
    Event, EventKind, NegotiationStore, Reserved, StoreError, StoredRequest,
};
use crate::negotiation::{AccessRequest, Grant, GrantRecord, Outcome, State, Terms, Usage};

/// Migrations embedded at build time from `migrations/` (the same files serve PostgreSQL).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a writer waits for another writer before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// [`NegotiationStore`] on a SQLite file (WAL, `synchronous=FULL`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    /// Bumped after each committed grant or revocation (see [`NegotiationStore::grant_generation`]).
    grant_writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and applies pending migrations. The directory must
    /// exist.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        // `filename` rather than a `sqlite:` URL, so paths with `?`, `#` or `%` are taken literally.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL (not WAL's usual NORMAL): a commit is fsynced before it returns, so an acknowledged decision
            // or revocation survives a power cut.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // Servers starting at once on a new file would each turn on WAL and apply migration 1 (sqlx reads which
        // migrations are applied before it applies the rest), and all but one would fail: one opens at a time,
        // under a lock file beside the database, released once its migrations are in.
        let lock = open_lock(path).await.map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        let store = Self::migrate(pool, path.to_path_buf()).await;
        drop(lock);
        store
    }

    /// A private in-memory database (for tests of other modules); gone when the store is dropped.
    pub async fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let path = PathBuf::from(":memory:");
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source: Box::new(source),
            })?
            .foreign_keys(true);
        // One connection that is never recycled: an in-memory database lives only as long as a connection to it,
        // and a single connection also serializes writers, as the file's lock would.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None::<Duration>)
            .max_lifetime(None::<Duration>)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source: Box::new(source),
            })?;
        Self::migrate(pool, path).await
    }

    async fn migrate(pool: SqlitePool, path: PathBuf) -> Result<SqliteStore, StoreError> {
        if let Err(source) = MIGRATOR.run(&pool).await {
            pool.close().await;
            return Err(StoreError::Migrate {
                path,
                source: Box::new(source),
            });
        }
        Ok(SqliteStore {
            pool,
            path,
            grant_writes: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for in-flight operations and closes all connections (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// An exclusive lock on `<path>.open-lock`, held while a store opens and migrates (released when the file is
/// dropped).
async fn open_lock(path: &Path) -> std::io::Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".open-lock");
    let lock = PathBuf::from(name);
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Maps a sqlx error to [`StoreError::Database`] with what the store was doing.
fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database {
        context,
        source: Box::new(source),
    }
}

/// Like [`db`], but a unique-key violation means the id was taken.
fn insert_err(
    what: &'static str,
    id: &str,
    context: &'static str,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    let id = id.to_string();
    move |source| {
        let taken = matches!(&source, sqlx::Error::Database(e) if e.is_unique_violation());
        if taken {
            StoreError::Duplicate { what, id }
        } else {
            StoreError::Database {
                context,
                source: Box::new(source),
            }
        }
    }
}

/// Timestamps as stored: RFC 3339 UTC with nine fractional digits, so text order is time order and the value
/// round-trips exactly.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn parse_ts(text: &str, what: &'static str, id: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt {
            what,
            id: id.to_string(),
            message: format!("bad timestamp {text:?}: {e}"),
        })
}

fn to_i64(n: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid {
        what,
        message: format!("{n} does not fit a signed 64-bit counter"),
    })
}

fn from_i64(n: i64, what: &'static str, id: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt {
        what,
        id: id.to_string(),
        message: format!("negative counter {n}"),
    })
}

fn to_json<T: Serialize>(value: &T, what: &'static str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid {
        what,
        message: e.to_string(),
    })
}

fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
    id: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        id: id.to_string(),
        message: e.to_string(),
    })
}

fn parse_state(text: &str, what: &'static str, id: &str) -> Result<State, StoreError> {
    State::from_str(text).map_err(|message| StoreError::Corrupt {
        what,
        id: id.to_string(),
        message,
    })
}

/// One column of a row, with the failure attributed to reading.
fn col<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name).map_err(db("reading a stored row"))
}

/// Distinct entries, first occurrence first.
fn distinct<T: ToString>(items: &[T]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let item = item.to_string();
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Numbers the `?` placeholders of `sql` as `$1, $2, ...`, the form both SQLite and PostgreSQL accept, so every
/// statement of the store runs unchanged on either (statements here never hold a `?` inside a string literal).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// `?, ?, ?` for `n` parameters.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

const REQUEST_COLUMNS: &str = "id, state, request_json, outcome_json, updated_at";

const GRANT_COLUMNS: &str = "id, terms_json, terms_hash, contract_versions_json, approvers_json, request_id, \
                             principal, created_at, revoked_at, used_queries, used_rows";

fn request_from_row(row: &SqliteRow) -> Result<StoredRequest, StoreError> {
    let id: String = col(row, "id")?;
    Ok(StoredRequest {
        request: from_json(&col::<String>(row, "request_json")?, "request", &id)?,
        state: parse_state(&col::<String>(row, "state")?, "request", &id)?,
        outcome: from_json(&col::<String>(row, "outcome_json")?, "request", &id)?,
        updated_at: parse_ts(&col::<String>(row, "updated_at")?, "request", &id)?,
    })
}

fn grant_from_row(row: &SqliteRow) -> Result<Grant, StoreError> {
    let id: String = col(row, "id")?;
    let terms: Terms = from_json(&col::<String>(row, "terms_json")?, "grant", &id)?;
    let terms_hash: String = col(row, "terms_hash")?;
    let contract_versions: BTreeMap<String, String> =
        from_json(&col::<String>(row, "contract_versions_json")?, "grant", &id)?;
    let approvers: Vec<String> = from_json(&col::<String>(row, "approvers_json")?, "grant", &id)?;
    let revoked_at = match col::<Option<String>>(row, "revoked_at")? {
        Some(text) => Some(parse_ts(&text, "grant", &id)?),
        None => None,
    };
    let record = GrantRecord {
        request_id: col(row, "request_id")?,
        principal: col(row, "principal")?,
        created_at: parse_ts(&col::<String>(row, "created_at")?, "grant", &id)?,
        usage: Usage {
            queries: from_i64(col(row, "used_queries")?, "grant", &id)?,
            rows: from_i64(col(row, "used_rows")?, "grant", &id)?,
        },
        terms,
        terms_hash,
        contract_versions,
        approvers,
        revoked_at,
        id: id.clone(),
    };
    // The hash is what the agent acknowledged; terms that no longer match it must not be enforced.
    Grant::try_from(record).map_err(|message| StoreError::Corrupt {
        what: "grant",
        id,
        message,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<Event, StoreError> {
    let subject_id: String = col(row, "subject_id")?;
    let kind_text: String = col(row, "kind")?;
    let kind = EventKind::from_str(&kind_text).map_err(|message| StoreError::Corrupt {
        what: "event",
        id: subject_id.clone(),
        message,
    })?;
    let state = match col::<Option<String>>(row, "state")? {
        Some(text) => Some(parse_state(&text, "event", &subject_id)?),
        None => None,
    };
    Ok(Event {
        seq: from_i64(col(row, "seq")?, "event", &subject_id)?,
        at: parse_ts(&col::<String>(row, "occurred_at")?, "event", &subject_id)?,
        kind,
        state,
        actor: col(row, "actor")?,
        reason: col(row, "reason")?,
        subject_id,
    })
}

/// Appends an event to a subject's history inside the caller's transaction. `seq` is one past the subject's
/// last; inside a write transaction no other writer can interleave (SQLite holds the write lock; on PostgreSQL
/// a racing insert fails on the primary key instead of reusing a number).
/// Why a request did not move to `to` (nothing was changed): it is missing, or its state cannot move there. Rolls
/// the transaction back.
async fn refused_transition(
    mut tx: sqlx::Transaction<'_, Sqlite>,
    request_id: &str,
    to: State,
) -> StoreError {
    let current = sqlx::query_scalar::<Sqlite, String>(&numbered(
        "SELECT state FROM access_requests WHERE id = ?",
    ))
    .bind(request_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db("reading a request's state"));
    if let Err(e) = tx.rollback().await.map_err(db("abandoning a state change")) {
        return e;
    }
    match current {
        Err(e) => e,
        Ok(None) => StoreError::NotFound {
            what: "request",
            id: request_id.to_string(),
        },
        Ok(Some(text)) => match parse_state(&text, "request", request_id) {
            Ok(from) => StoreError::InvalidTransition {
                id: request_id.to_string(),
                from,
                to,
            },
            Err(e) => e,
        },
    }
}

async fn append_event(
    conn: &mut SqliteConnection,
    subject_id: &str,
    kind: EventKind,
    state: Option<State>,
    actor: &str,
    reason: &str,
    at: &str,
) -> Result<(), StoreError> {
    sqlx::query::<Sqlite>(&numbered("INSERT INTO negotiation_events (subject_id, seq, occurred_at, kind, state, actor, reason) \
         SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ? FROM negotiation_events WHERE subject_id = ?"))
    .bind(subject_id)
    .bind(at)
    .bind(kind.as_str())
    .bind(state.map(State::as_str))
    .bind(actor)
    .bind(reason)
    .bind(subject_id)
    .execute(&mut *conn)
    .await
    .map_err(db("appending a negotiation event"))?;
    Ok(())
}

// Every write transaction below starts with a write statement. SQLite then takes the write lock (waiting up to
// the busy timeout) before reading anything; a transaction that read first and wrote later could instead fail at
// once with SQLITE_BUSY when another writer committed in between.
#[async_trait]
impl NegotiationStore for SqliteStore {
    async fn save_request(
        &self,
        request: &AccessRequest,
        state: State,
        outcome: &Outcome,
    ) -> Result<(), StoreError> {
        let request_json = to_json(request, "request")?;
        let outcome_json = to_json(outcome, "outcome")?;
        let now = ts(Utc::now());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting to save a request"))?;
        sqlx::query::<Sqlite>(&numbered(
            "INSERT INTO access_requests \
             (id, principal, purpose, state, request_json, outcome_json, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&request.id)
        .bind(&request.principal)
        .bind(&request.purpose)
        .bind(state.as_str())
        .bind(&request_json)
        .bind(&outcome_json)
        .bind(ts(request.created_at))
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(insert_err("request", &request.id, "saving a request"))?;
        for table in distinct(&request.tables) {
            sqlx::query::<Sqlite>(&numbered(
                "INSERT INTO access_request_tables (request_id, table_name) VALUES (?, ?)",
            ))
            .bind(&request.id)
            .bind(table)
            .execute(&mut *tx)
            .await
            .map_err(db("saving a request's tables"))?;
        }
        let reason = format!(
            "access requested to {} for purpose {}; state {state}",
            TableName::join(&request.tables, ", "),
            request.purpose
        );
        append_event(
            &mut tx,
            &request.id,
            EventKind::Requested,
            Some(state),
            &request.principal,
            &reason,
            &now,
        )
        .await?;
        tx.commit().await.map_err(db("committing a request"))
    }

    async fn update_state(
        &self,
        request_id: &str,
        state: State,
        by: &str,
        why: &str,
    ) -> Result<(), StoreError> {
        let from: Vec<State> = State::ALL
            .into_iter()
            .filter(|s| s.can_become(state))
            .collect();
        let now = ts(Utc::now());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a state change"))?;
        // The allowed predecessors go into the UPDATE itself, so the check and the change are one atomic step.
        let changed = if from.is_empty() {
            0
        } else {
            let sql = numbered(&format!(
                "UPDATE access_requests SET state = ?, updated_at = ? WHERE id = ? AND state IN ({})",
                placeholders(from.len())
            ));
            let mut query = sqlx::query::<Sqlite>(&sql)
                .bind(state.as_str())
                .bind(&now)
                .bind(request_id);
            for s in &from {
                query = query.bind(s.as_str());
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(db("changing a request's state"))?
                .rows_affected()
        };
        if changed == 0 {
            // Nothing changed: tell a missing request from one whose state cannot move there.
            return Err(refused_transition(tx, request_id, state).await);
        }
        append_event(
            &mut tx,
            request_id,
            EventKind::StateChanged,
            Some(state),
            by,
            why,
            &now,
        )
        .await?;
        tx.commit().await.map_err(db("committing a state change"))
    }

    async fn counter_offer(
        &self,
        request_id: &str,
        outcome: &Outcome,
        by: &str,
        why: &str,
    ) -> Result<(), StoreError> {
        let outcome_json = to_json(outcome, "outcome")?;
        let now = ts(Utc::now());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a counter-offer"))?;
        let changed = sqlx::query::<Sqlite>(&numbered(
            "UPDATE access_requests SET state = ?, outcome_json = ?, updated_at = ? WHERE id = ? AND state = ?",
        ))
        .bind(State::Offered.as_str())
        .bind(&outcome_json)
        .bind(&now)
        .bind(request_id)
        .bind(State::Requested.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db("recording a counter-offer"))?
        .rows_affected();
        if changed == 0 {
            return Err(refused_transition(tx, request_id, State::Offered).await);
        }
        append_event(
            &mut tx,
            request_id,
            EventKind::StateChanged,
            Some(State::Offered),
            by,
            why,
            &now,
        )
        .await?;
        tx.commit().await.map_err(db("committing a counter-offer"))
    }

    async fn get_request(&self, id: &str) -> Result<Option<StoredRequest>, StoreError> {
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM access_requests WHERE id = ?");
        let row = sqlx::query::<Sqlite>(&numbered(&sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a request"))?;
        row.as_ref().map(request_from_row).transpose()
    }

    async fn requests_for_principal(
        &self,
        principal: &str,
    ) -> Result<Vec<StoredRequest>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE principal = ? ORDER BY created_at, id"
        );
        let rows = sqlx::query::<Sqlite>(&numbered(&sql))
            .bind(principal)
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing a principal's requests"))?;
        rows.iter().map(request_from_row).collect()
    }

    async fn requests_for_tables(
        &self,
        tables: &[String],
        state: Option<State>,
    ) -> Result<Vec<StoredRequest>, StoreError> {
        let tables = distinct(tables);
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE id IN \
             (SELECT request_id FROM access_request_tables WHERE table_name IN ({}))",
            placeholders(tables.len())
        );
        if state.is_some() {
            sql.push_str(" AND state = ?");
        }
        sql.push_str(" ORDER BY created_at, id");
        let sql = numbered(&sql);
        let mut query = sqlx::query::<Sqlite>(&sql);
        for table in &tables {
            query = query.bind(table.as_str());
        }
        if let Some(state) = state {
            query = query.bind(state.as_str());
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing requests for tables"))?;
        rows.iter().map(request_from_row).collect()
    }

    async fn save_grant(&self, grant: &Grant) -> Result<(), StoreError> {
        if grant.terms().hash() != grant.terms_hash() {
            return Err(StoreError::Invalid {
                what: "grant",
                message: format!(
                    "terms_hash of grant {} is not the hash of its terms",
                    grant.id()
                ),
            });
        }
        let terms_json = to_json(&grant.terms(), "grant terms")?;
        let versions_json = to_json(&grant.contract_versions(), "grant contract versions")?;
        let approvers_json = to_json(&grant.approvers(), "grant approvers")?;
        let used_queries = to_i64(grant.usage().queries, "grant usage")?;
        let used_rows = to_i64(grant.usage().rows, "grant usage")?;
        let now = ts(Utc::now());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting to save a grant"))?;
        sqlx::query::<Sqlite>(&numbered("INSERT INTO access_grants \
             (id, request_id, principal, purpose, terms_json, terms_hash, contract_versions_json, approvers_json, \
              created_at, expires_at, revoked_at, used_queries, used_rows) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
        .bind(grant.id())
        .bind(grant.request_id())
        .bind(grant.principal())
        .bind(&grant.terms().purpose)
        .bind(&terms_json)
        .bind(grant.terms_hash())
        .bind(&versions_json)
        .bind(&approvers_json)
        .bind(ts(grant.created_at()))
        .bind(ts(grant.terms().expires_at))
        .bind(grant.revoked_at().map(ts))
        .bind(used_queries)
        .bind(used_rows)
        .execute(&mut *tx)
        .await
        .map_err(insert_err("grant", grant.id(), "saving a grant"))?;
        for table in distinct(&grant.terms().tables) {
            sqlx::query::<Sqlite>(&numbered(
                "INSERT INTO access_grant_tables (grant_id, table_name) VALUES (?, ?)",
            ))
            .bind(grant.id())
            .bind(table)
            .execute(&mut *tx)
            .await
            .map_err(db("saving a grant's tables"))?;
        }
        let actor = if grant.approvers().is_empty() {
            "parley".to_string()
        } else {
            grant.approvers().join(", ")
        };
        let reason = format!(
            "granted {} to {} for purpose {} until {} (request {}, terms {})",
            TableName::join(&grant.terms().tables, ", "),
            grant.principal(),
            grant.terms().purpose,
            grant
                .terms()
                .expires_at
                .to_rfc3339_opts(SecondsFormat::Secs, true),
            grant.request_id(),
            grant.terms_hash()
        );
        append_event(
            &mut tx,
            grant.id(),
            EventKind::Granted,
            None,
            &actor,
            &reason,
            &now,
        )
        .await?;
        tx.commit().await.map_err(db("committing a grant"))?;
        self.grant_writes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    async fn grants_for_principal(&self, principal: &str) -> Result<Vec<Grant>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM access_grants WHERE principal = ? ORDER BY created_at, id"
        );
        let rows = sqlx::query::<Sqlite>(&numbered(&sql))
            .bind(principal)
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing a principal's grants"))?;
        rows.iter().map(grant_from_row).collect()
    }

    async fn grants_for_table(&self, table: &str) -> Result<Vec<Grant>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM access_grants WHERE id IN \
             (SELECT grant_id FROM access_grant_tables WHERE table_name = ?) ORDER BY created_at, id"
        );
        let rows = sqlx::query::<Sqlite>(&numbered(&sql))
            .bind(table)
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing a table's grants"))?;
        rows.iter().map(grant_from_row).collect()
    }

    async fn get_grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let sql = format!("SELECT {GRANT_COLUMNS} FROM access_grants WHERE id = ?");
        let row = sqlx::query::<Sqlite>(&numbered(&sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a grant"))?;
        row.as_ref().map(grant_from_row).transpose()
    }

    async fn revoke_grant(&self, id: &str, by: &str, why: &str) -> Result<(), StoreError> {
        let now = ts(Utc::now());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a revocation"))?;
        let changed = sqlx::query::<Sqlite>(&numbered(
            "UPDATE access_grants SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        ))
        .bind(&now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("revoking a grant"))?
        .rows_affected();
        if changed == 0 {
            let current: Option<Option<String>> = sqlx::query_scalar::<Sqlite, Option<String>>(
                &numbered("SELECT revoked_at FROM access_grants WHERE id = ?"),
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading a grant's revocation"))?;
            tx.rollback().await.map_err(db("abandoning a revocation"))?;
            return Err(match current {
                None => StoreError::NotFound {
                    what: "grant",
                    id: id.to_string(),
                },
                Some(Some(text)) => StoreError::AlreadyRevoked {
                    id: id.to_string(),
                    at: parse_ts(&text, "grant", id)?,
                },
                // Cannot happen after the UPDATE above matched nothing; reported rather than panicking.
                Some(None) => StoreError::Corrupt {
                    what: "grant",
                    id: id.to_string(),
                    message: "revocation matched no row although the grant is not revoked"
                        .to_string(),
                },
            });
        }
        append_event(&mut tx, id, EventKind::Revoked, None, by, why, &now).await?;
        tx.commit().await.map_err(db("committing a revocation"))?;
        self.grant_writes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    async fn reserve_query(
        &self,
        grant_id: &str,
        max_queries: Option<u64>,
        max_rows: Option<u64>,
        want_rows: u64,
    ) -> Result<Option<Reserved>, StoreError> {
        // Read the totals, then count on them only if they are still those totals (compare and swap): the check,
        // the count and the rows reserved are one atomic step, whatever ran in between.
        for _ in 0..64 {
            let rows = sqlx::query::<Sqlite>(&numbered(
                "SELECT used_queries, used_rows FROM access_grants WHERE id = ?",
            ))
            .bind(grant_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading a grant's usage"))?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let queries = from_i64(col(row, "used_queries")?, "grant", grant_id)?;
            let used = from_i64(col(row, "used_rows")?, "grant", grant_id)?;
            if max_queries.is_some_and(|m| queries >= m) || max_rows.is_some_and(|m| used >= m) {
                return Ok(None);
            }
            let take = max_rows.map(|m| want_rows.min(m - used));
            let counted = sqlx::query::<Sqlite>(&numbered(
                "UPDATE access_grants SET used_queries = used_queries + 1, used_rows = used_rows + ? \
                 WHERE id = ? AND used_queries = ? AND used_rows = ?",
            ))
            .bind(to_i64(take.unwrap_or(0), "usage")?)
            .bind(grant_id)
            .bind(to_i64(queries, "usage")?)
            .bind(to_i64(used, "usage")?)
            .execute(&self.pool)
            .await
            .map_err(db("reserving a query on a grant"))?;
            if counted.rows_affected() == 1 {
                return Ok(Some(Reserved {
                    usage: Usage {
                        queries: queries + 1,
                        rows: used + take.unwrap_or(0),
                    },
                    rows: take,
                }));
            }
        }
        Err(StoreError::Database {
            context: "reserving a query on a grant",
            source: "its usage kept changing under other queries; try again".into(),
        })
    }

    async fn settle_rows(
        &self,
        grant_id: &str,
        reserved: u64,
        returned: u64,
    ) -> Result<Usage, StoreError> {
        let (reserved, returned) = (to_i64(reserved, "usage")?, to_i64(returned, "usage")?);
        let totals = sqlx::query::<Sqlite>(&numbered(
            "UPDATE access_grants SET used_rows = MAX(used_rows - ? + ?, 0) WHERE id = ? \
             RETURNING used_queries, used_rows",
        ))
        .bind(reserved)
        .bind(returned)
        .bind(grant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("recording rows returned under a grant"))?;
        let Some(row) = totals.first() else {
            return Err(StoreError::NotFound {
                what: "grant",
                id: grant_id.to_string(),
            });
        };
        Ok(Usage {
            queries: from_i64(col(row, "used_queries")?, "grant", grant_id)?,
            rows: from_i64(col(row, "used_rows")?, "grant", grant_id)?,
        })
    }

    fn grant_generation(&self) -> Option<u64> {
        Some(self.grant_writes.load(std::sync::atomic::Ordering::Acquire))
    }

    async fn note(
        &self,
        subject_id: &str,
        kind: EventKind,
        actor: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db("noting a notice"))?;
        append_event(
            &mut conn,
            subject_id,
            kind,
            None,
            actor,
            reason,
            &ts(Utc::now()),
        )
        .await
    }

    async fn table_subjects(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query_scalar::<Sqlite, String>(
            "SELECT DISTINCT subject_id FROM negotiation_events WHERE subject_id LIKE 'table:%' ORDER BY subject_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading table notices"))?;
        Ok(rows)
    }

    async fn events(&self, subject_id: &str) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query::<Sqlite>(&numbered("SELECT subject_id, seq, occurred_at, kind, state, actor, reason FROM negotiation_events \
             WHERE subject_id = ? ORDER BY seq"))
        .bind(subject_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading negotiation events"))?;
        rows.iter().map(event_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeDelta;

    use super::*;
    use crate::negotiation::{Mask, RowScope};

    /// Servers started together on a data dir none has opened yet each open its store: all of them start (an
    /// outside test saw one in three die applying migration 1 a second time).
    #[tokio::test]
    async fn stores_opened_at_once_on_a_new_file_all_open() {
        for _ in 0..6 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let opened = futures::future::join_all((0..4).map(|_| SqliteStore::open(&path))).await;
            for store in opened {
                let store = store.unwrap();
                assert!(store.get_grant("grant-404").await.unwrap().is_none());
                store.close().await;
            }
        }
    }

    #[test]
    fn placeholders_are_numbered_for_sqlite_and_postgres_alike() {
        assert_eq!(
            numbered("UPDATE t SET a = ? WHERE id = ? AND (? IS NULL OR n < ?)"),
            "UPDATE t SET a = $1 WHERE id = $2 AND ($3 IS NULL OR n < $4)"
        );
        assert_eq!(
            numbered(&format!("SELECT 1 WHERE x IN ({})", placeholders(3))),
            "SELECT 1 WHERE x IN ($1, $2, $3)"
        );
        assert_eq!(numbered("SELECT 1"), "SELECT 1");
    }

    fn pending() -> Outcome {
        Outcome::Pending {
            approvers: vec!["sales-owner".to_string()],
            reason: "the purpose needs an owner's approval".to_string(),
            terms: terms(Utc::now() + TimeDelta::days(30)),
        }
    }

    fn request(id: &str, tables: &[&str]) -> AccessRequest {
        AccessRequest {
            id: id.to_string(),
            principal: "alice".to_string(),
            tables: tables
                .iter()
                .map(|t| TableName::parse(t).unwrap())
                .collect(),
            columns: None,
            purpose: "churn_analysis".to_string(),
            justification: Some("quarterly churn model".to_string()),
            duration_days: 30,
            row_scope: Some(RowScope {
                column: "country".to_string(),
                values: vec!["DE".to_string()],
            }),
            created_at: Utc::now(),
            requester_groups: Vec::new(),
        }
    }

    fn terms(expires_at: DateTime<Utc>) -> Terms {
        Terms {
            tables: vec![TableName::parse("sales.customers").unwrap()],
            columns: vec![
                "sales.customers.customer_id".to_string(),
                "sales.customers.email".to_string(),
            ],
            masks: BTreeMap::from([("sales.customers.email".to_string(), Mask::Hash)]),
            dropped: vec![],
            row_filter: None,
            purpose: "churn_analysis".to_string(),
            expires_at,
            max_rows: Some(1000),
            max_queries: None,
            prices: vec![],
        }
    }

    fn grant(request_id: &str, principal: &str, expires_at: DateTime<Utc>) -> Grant {
        Grant::new(
            request_id,
            principal,
            terms(expires_at),
            BTreeMap::from([(
                "sales.customers".to_string(),
                "urn:parley:demo:sales:customers@1.0.0".to_string(),
            )]),
            vec!["sales-owner".to_string()],
            Utc::now(),
        )
    }

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("parley.db"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn saved_request_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let req = request("req-1", &["sales.customers", "sales.orders"]);
        let outcome = pending();
        store
            .save_request(&req, State::Requested, &outcome)
            .await
            .unwrap();

        let stored = store.get_request("req-1").await.unwrap().unwrap();
        assert_eq!(stored.request, req);
        assert_eq!(stored.state, State::Requested);
        assert_eq!(stored.outcome, outcome);
        assert!(store.get_request("req-2").await.unwrap().is_none());

        let err = store
            .save_request(&req, State::Requested, &outcome)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Duplicate { .. }), "{err}");
    }

    #[tokio::test]
    async fn state_changes_are_recorded_with_who_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store
            .save_request(
                &request("req-1", &["sales.customers"]),
                State::Requested,
                &pending(),
            )
            .await
            .unwrap();
        store
            .update_state("req-1", State::Offered, "parley", "personal data masked")
            .await
            .unwrap();
        store
            .update_state("req-1", State::Accepted, "alice", "accepted terms abc")
            .await
            .unwrap();

        let err = store
            .update_state("req-1", State::Offered, "alice", "again")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::InvalidTransition {
                    from: State::Accepted,
                    to: State::Offered,
                    ..
                }
            ),
            "{err}"
        );
        store
            .update_state("req-1", State::Terminated, "alice", "withdrawn")
            .await
            .unwrap();
        let err = store
            .update_state("req-1", State::Agreed, "sales-owner", "too late")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidTransition { .. }), "{err}");
        let err = store
            .update_state("req-404", State::Offered, "parley", "x")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

        assert_eq!(
            store.get_request("req-1").await.unwrap().unwrap().state,
            State::Terminated
        );
        let events = store.events("req-1").await.unwrap();
        let summary: Vec<(u64, EventKind, Option<State>, &str, &str)> = events
            .iter()
            .map(|e| (e.seq, e.kind, e.state, e.actor.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            summary[1..],
            [
                (
                    2,
                    EventKind::StateChanged,
                    Some(State::Offered),
                    "parley",
                    "personal data masked"
                ),
                (
                    3,
                    EventKind::StateChanged,
                    Some(State::Accepted),
                    "alice",
                    "accepted terms abc"
                ),
                (
                    4,
                    EventKind::StateChanged,
                    Some(State::Terminated),
                    "alice",
                    "withdrawn"
                ),
            ]
        );
        assert_eq!(summary[0].0, 1);
        assert_eq!(summary[0].1, EventKind::Requested);
        assert_eq!(summary[0].3, "alice");
        assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[tokio::test]
    async fn requests_are_found_by_table_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        for (id, tables, state) in [
            ("req-1", &["sales.customers"][..], State::Requested),
            (
                "req-2",
                &["sales.orders", "sales.customers"][..],
                State::Offered,
            ),
            ("req-3", &["ops.shipments"][..], State::Requested),
        ] {
            store
                .save_request(&request(id, tables), state, &pending())
                .await
                .unwrap();
        }
        let ids =
            |found: Vec<StoredRequest>| found.into_iter().map(|r| r.request.id).collect::<Vec<_>>();

        let all = store
            .requests_for_tables(&["sales.customers".to_string()], None)
            .await
            .unwrap();
        assert_eq!(ids(all), ["req-1", "req-2"]);
        let pending = store
            .requests_for_tables(
                &["sales.customers".to_string(), "ops.shipments".to_string()],
                Some(State::Requested),
            )
            .await
            .unwrap();
        assert_eq!(ids(pending), ["req-1", "req-3"]);
        assert!(
            store
                .requests_for_tables(&[], None)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn grants_are_listed_revoked_once_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let now = Utc::now();
        let live = grant("req-1", "alice", now + TimeDelta::days(30));
        let expired = grant("req-2", "alice", now - TimeDelta::seconds(1));
        let other = grant("req-3", "bob", now + TimeDelta::days(1));
        let before = store.grant_generation().unwrap();
        for g in [&live, &expired, &other] {
            store.save_grant(g).await.unwrap();
        }
        let saved = store.grant_generation().unwrap();
        assert!(saved > before, "saving grants moves the generation");

        assert_eq!(store.get_grant(live.id()).await.unwrap().unwrap(), live);
        assert!(store.get_grant("grant-404").await.unwrap().is_none());
        let alices = store.grants_for_principal("alice").await.unwrap();
        assert_eq!(alices.len(), 2);
        assert_eq!(alices.iter().filter(|g| g.is_live(now)).count(), 1);
        assert_eq!(
            store
                .grants_for_table("sales.customers")
                .await
                .unwrap()
                .len(),
            3
        );
        assert!(
            store
                .grants_for_table("sales.orders")
                .await
                .unwrap()
                .is_empty()
        );

        store
            .revoke_grant(live.id(), "sales-owner", "purpose ended")
            .await
            .unwrap();
        assert!(
            store.grant_generation().unwrap() > saved,
            "a revocation moves the generation"
        );
        let revoked = store.get_grant(live.id()).await.unwrap().unwrap();
        assert!(revoked.revoked_at().is_some());
        assert!(!revoked.is_live(now));
        let err = store
            .revoke_grant(live.id(), "sales-owner", "again")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyRevoked { .. }), "{err}");
        let err = store
            .revoke_grant("grant-404", "sales-owner", "x")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

        let events = store.events(live.id()).await.unwrap();
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Granted, EventKind::Revoked]);
        assert_eq!(events[1].actor, "sales-owner");
        assert_eq!(events[1].reason, "purpose ended");

        // A grant whose terms no longer hash to the accepted terms hash cannot be made, not even by
        // deserializing one; and a stored row edited that way is refused when read back.
        let good = grant("req-4", "alice", now + TimeDelta::days(1));
        let mut json = serde_json::to_value(&good).unwrap();
        json["terms"]["masks"] = serde_json::json!({});
        let err = serde_json::from_value::<Grant>(json).unwrap_err();
        assert!(err.to_string().contains("terms hash"), "{err}");
        store.save_grant(&good).await.unwrap();
        sqlx::query("UPDATE access_grants SET terms_json = replace(terms_json, 'hash', 'redact') WHERE id = ?")
            .bind(good.id())
            .execute(&store.pool)
            .await
            .unwrap();
        let err = store.get_grant(good.id()).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_usage_increments_add_up_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir).await);
        let g = grant("req-1", "alice", Utc::now() + TimeDelta::days(1));
        store.save_grant(&g).await.unwrap();

        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20u64 {
            let store = Arc::clone(&store);
            let id = g.id().to_string();
            tasks.spawn(async move {
                let counted = store.reserve_query(&id, None, None, 100).await.unwrap();
                let counted = counted.expect("no quota: every query is counted");
                assert_eq!(counted.rows, None, "no row quota, nothing reserved");
                store.settle_rows(&id, 0, i).await.unwrap();
                counted.usage
            });
        }
        let mut seen_queries = Vec::new();
        while let Some(usage) = tasks.join_next().await {
            seen_queries.push(usage.unwrap().queries);
        }
        seen_queries.sort_unstable();
        // Each call saw its own total: no two increments were merged.
        assert_eq!(seen_queries, (1..=20).collect::<Vec<u64>>());
        let usage = store.get_grant(g.id()).await.unwrap().unwrap().usage();
        assert_eq!(
            usage,
            Usage {
                queries: 20,
                rows: (0..20).sum()
            }
        );

        let err = store.settle_rows("grant-404", 0, 1).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }

    /// A row quota is reserved before a query runs: concurrent queries share what is left and never together
    /// return more; rows a query did not return are given back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_row_reservations_never_overshoot_a_row_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir).await);
        let g = grant("req-r", "ana", Utc::now() + TimeDelta::days(1));
        store.save_grant(&g).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let (store, id) = (store.clone(), g.id().to_string());
            tasks.spawn(async move { store.reserve_query(&id, None, Some(50), 10).await.unwrap() });
        }
        let mut reserved = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Some(r) = r.unwrap() {
                reserved.push(r.rows.unwrap());
            }
        }
        assert_eq!(reserved.iter().sum::<u64>(), 50, "{reserved:?}");
        assert!(
            reserved.iter().all(|r| (1..=10).contains(r)),
            "{reserved:?}"
        );
        assert!(
            store
                .reserve_query(g.id(), None, Some(50), 10)
                .await
                .unwrap()
                .is_none()
        );
        // One query returned 4 of its 10 rows, another none: 16 rows come back.
        store.settle_rows(g.id(), 10, 4).await.unwrap();
        let usage = store.settle_rows(g.id(), 10, 0).await.unwrap();
        assert_eq!(usage.rows, 34);
        let next = store
            .reserve_query(g.id(), None, Some(50), 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.rows, Some(16));
        assert_eq!(next.usage.rows, 50);
    }

    #[tokio::test]
    async fn concurrent_reservations_never_overshoot_a_query_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(&dir).await);
        let grant = grant("req-q", "ana", Utc::now() + chrono::Duration::days(1));
        store.save_grant(&grant).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (store, id) = (store.clone(), grant.id().to_string());
            tasks.push(tokio::spawn(async move {
                store
                    .reserve_query(&id, Some(5), None, 1)
                    .await
                    .unwrap()
                    .is_some()
            }));
        }
        let mut counted = 0;
        for t in tasks {
            counted += t.await.unwrap() as usize;
        }
        assert_eq!(counted, 5);
        assert_eq!(store.settle_rows(grant.id(), 0, 7).await.unwrap().rows, 7);
        assert!(
            store
                .reserve_query(grant.id(), None, Some(7), 1)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .reserve_query(grant.id(), None, Some(8), 1)
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn pending_request_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let req = request("req-1", &["sales.orders"]);
        let outcome = pending();
        {
            let store = open(&dir).await;
            store
                .save_request(&req, State::Requested, &outcome)
                .await
                .unwrap();
            store.close().await;
        }
        let store = open(&dir).await;
        let stored = store.get_request("req-1").await.unwrap().unwrap();
        assert_eq!(stored.request, req);
        assert_eq!(stored.state, State::Requested);
        assert_eq!(stored.outcome, outcome);
        let pending = store
            .requests_for_tables(&["sales.orders".to_string()], Some(State::Requested))
            .await
            .unwrap();
        assert_eq!(pending.len(), 1);
        store
            .update_state("req-1", State::Finalized, "sales-owner", "approved")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn in_memory_store_works_for_other_modules_tests() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        store
            .save_request(
                &request("req-1", &["sales.orders"]),
                State::Requested,
                &pending(),
            )
            .await
            .unwrap();
        assert!(store.get_request("req-1").await.unwrap().is_some());
    }
}

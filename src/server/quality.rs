//! The quality monitor: a table's contract rules and freshness SLA ([`crate::quality`]) evaluated once per
//! snapshot and contract version, on a task of its own, when a tool first meets that snapshot (`describe_table`,
//! `get_contract`, `query`, a commit through `/iceberg`). The report becomes the table's `quality` policy facts
//! ([`Lakehouse::record_quality`](crate::catalog::Lakehouse::record_quality)); a breach is told once per snapshot
//! and breach to the holders of live grants and to the table's owners (their notices, their sessions), also across
//! restarts (the owners' notices in the store say what was told).
//!
//! Invariants: at most one evaluation per table runs at a time for a given snapshot and contract version; a report
//! of a snapshot superseded while it ran does not replace the newer one's; measured values (counts, the newest
//! timestamp, SQL results) are shown only to the table's owners — others see the verdicts the contract promises.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use super::ParleyServer;
use super::commits::tell;
use crate::catalog::TableName;
use crate::negotiation::store::{EventKind, table_subject};
use crate::quality::Report;

/// What a snapshot is judged by: its id and the contract version.
type Key = (Option<i64>, String);

/// Where an evaluation's report arrives.
type Pending = tokio::sync::watch::Receiver<Option<Arc<Report>>>;

/// A breach told: the table, its snapshot, what it breaches.
type Told = (TableName, Option<i64>, Vec<String>);

/// Most breaches remembered as told.
const MAX_TOLD: usize = 100_000;

/// Evaluations running and breaches told.
#[derive(Default)]
pub struct Monitor {
    running: Mutex<HashMap<TableName, (Key, Pending)>>,
    told: Mutex<HashSet<Told>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A table's quality as a tool shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QualityView {
    /// `pass`, `breach`, or `evaluating` (the current snapshot is being checked; `report` is then the previous
    /// snapshot's, if any).
    pub state: String,
    /// What is breached: failing rules by name, `freshness` when stale.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breaches: Vec<String>,
    /// The evaluation: each rule's verdict, the freshness promise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

impl QualityView {
    /// The summary form: only the rules that did not pass (and the freshness promise).
    pub fn summary(mut self) -> QualityView {
        if let Some(r) = &mut self.report {
            r.checks
                .retain(|c| c.status != crate::quality::Status::Pass);
        }
        self
    }
}

impl ParleyServer {
    /// The quality of `table` as loaded, by the contract in force: its report when this snapshot was already
    /// evaluated, else an evaluation started (or joined) and awaited at most `wait`. `None` when the contract has
    /// nothing to evaluate. `owner`: the caller owns the table, and sees measured values.
    pub(super) async fn quality_of(
        &self,
        name: &TableName,
        table: &iceberg::table::Table,
        wait: Duration,
        owner: bool,
    ) -> Option<QualityView> {
        let (report, latest) = self.evaluated(name, table, wait).await?;
        let now = self.app.clock.now();
        let shown = report.as_ref().or(latest.as_ref());
        let breaches = shown.map(|r| r.breaches(now)).unwrap_or_default();
        let state = match (&report, breaches.is_empty()) {
            (None, _) => "evaluating",
            (Some(_), true) => "pass",
            (Some(_), false) => "breach",
        };
        Some(QualityView {
            state: state.to_string(),
            breaches,
            report: shown.map(|r| if owner { (**r).clone() } else { r.redacted() }),
        })
    }

    /// A query met `table` at its snapshot: its quality is evaluated in the background if it was not yet, so the
    /// table's facts (what policies on quality decide by) follow it; the query does not wait, and nothing is
    /// rendered for it.
    pub(super) async fn note_snapshot(&self, name: &TableName, table: &iceberg::table::Table) {
        self.evaluated(name, table, Duration::ZERO).await;
    }

    /// `table`'s report for its snapshot under the contract in force — the cached one, or a new evaluation started
    /// (or joined) and awaited at most `wait` (`None` when it has not ended) — with the newest report made before
    /// it. A breach found in a finished report is told (freshness goes stale with time alone: told when seen).
    /// `None` when the contract has nothing to evaluate.
    async fn evaluated(
        &self,
        name: &TableName,
        table: &iceberg::table::Table,
        wait: Duration,
    ) -> Option<(Option<Arc<Report>>, Option<Arc<Report>>)> {
        let app = &self.app;
        let contract = app.lakehouse.contract(name)?;
        if !crate::quality::has_rules(&contract.contract) {
            return None;
        }
        let snapshot = table.metadata().current_snapshot_id();
        let latest = app.lakehouse.quality(name);
        let report = match latest.as_ref().filter(|r| {
            r.snapshot_id == snapshot && r.contract_version == contract.contract.version
        }) {
            Some(r) => Some(r.clone()),
            None => {
                let key: Key = (snapshot, contract.contract.version.clone());
                let mut rx = self.evaluate_in_background(name, table, key, contract);
                match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
                    Ok(Ok(r)) => r.clone(),
                    _ => None,
                }
            }
        };
        if let Some(r) = &report {
            announce(app, name, r).await;
        }
        Some((report, latest))
    }

    /// Starts evaluating `table` at its snapshot (unless the same evaluation runs): the report is recorded as the
    /// table's newest, and a breach told, when it ends.
    fn evaluate_in_background(
        &self,
        name: &TableName,
        table: &iceberg::table::Table,
        key: Key,
        contract: Arc<crate::contracts::LoadedContract>,
    ) -> Pending {
        let mut running = lock(&self.app.monitor.running);
        if let Some((k, rx)) = running.get(name)
            && *k == key
        {
            return rx.clone();
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        running.insert(name.clone(), (key.clone(), rx.clone()));
        drop(running);
        let app = self.app.clone();
        let name = name.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let report = Arc::new(
                crate::quality::evaluate(&contract.contract, &name, &table, &app.engine).await,
            );
            tracing::info!(
                table = %name,
                snapshot = ?report.snapshot_id,
                elapsed_ms = report.elapsed_ms,
                breaches = ?report.breaches(app.clock.now()),
                "quality evaluated"
            );
            let current = {
                let mut running = lock(&app.monitor.running);
                let current = running.get(&name).is_some_and(|(k, _)| *k == key);
                if current {
                    running.remove(&name);
                }
                current
            };
            if current {
                app.lakehouse.record_quality(&name, report.clone());
            }
            let _ = tx.send(Some(report.clone()));
            if current {
                announce(&app, &name, &report).await;
            }
        });
        rx
    }
}

/// Tells the consumers and owners of `table` what its snapshot breaches, once per snapshot and set of breaches.
async fn announce(app: &super::App, name: &TableName, report: &Report) {
    let breaches = report.breaches(app.clock.now());
    if breaches.is_empty() {
        return;
    }
    {
        let mut told = lock(&app.monitor.told);
        if told.len() >= MAX_TOLD {
            // Bounded: a breach still there may be told once more.
            told.clear();
        }
        if !told.insert((name.clone(), report.snapshot_id, breaches.clone())) {
            return;
        }
    }
    let reason = format!(
        "{name} breaches its contract (v{}) at snapshot {}: {}. Results may be incomplete or stale; \
         describe_table shows each rule's verdict, and the owners are told.",
        report.contract_version,
        report
            .snapshot_id
            .map_or("none".to_string(), |s| s.to_string()),
        breaches.join(", ")
    );
    // What was told before a restart is in the owners' notices: the same breach of the same snapshot is not
    // told again.
    if let Ok(events) = app.store.events(&table_subject(&name.to_string())).await
        && events
            .iter()
            .any(|e| e.kind == EventKind::Quality && e.reason == reason)
    {
        return;
    }
    tell(
        app,
        name,
        EventKind::Quality,
        "quality",
        "parley:quality",
        &reason,
        true,
    )
    .await;
}

//! `parley contract publish`: a new version of a table's contract, checked against the version in force, dated,
//! and announced to the table's consumers.
//!
//! A version whose changes are all compatible takes effect when given (now by default). One with breaking changes
//! (`compat::contract_changes`: a column removed, retyped, made never-null, reclassified) needs a new major version
//! and an effective date at least the contract's notice period away (`slaProperties: noticePeriod`, days;
//! `contracts::DEFAULT_NOTICE_DAYS` without one). Until that date the old version stays in force — its promises hold, so a
//! commit breaking them is still refused — and from it on the new one does. The version is written next to the
//! table's other contract files as `<table>@<version>.yaml` with its `effectiveFrom`; a serving Parley reloads it.
//! Every holder of a live grant on the table gets a `contract_change` notice (their `my_notices`) saying what
//! changes, when, and what to do; grants made under the old version are listed for the owner.
//!
//! Invariant: nothing is written when the version is refused.

use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};

use crate::compat::{Impact, SchemaChange, contract_changes, describe, major_version};
use crate::contracts::{ContractStore, EFFECTIVE_FROM, parse, table_of};
use crate::demo::DataDir;
use crate::negotiation::store::NegotiationStore;

/// What a publication did.
#[derive(Debug)]
pub struct Published {
    /// `namespace.table`.
    pub table: String,
    /// The version published.
    pub version: String,
    /// The version it replaces, if any.
    pub replaces: Option<String>,
    /// When it takes effect.
    pub effective: DateTime<Utc>,
    /// Where it was written.
    pub path: PathBuf,
    /// What it changes, column by column.
    pub changes: Vec<SchemaChange>,
    /// Live grants whose holders were told: (grant id, holder).
    pub told: Vec<(String, String)>,
    /// Live grants made under the replaced version: (grant id, holder).
    pub under_old: Vec<(String, String)>,
    /// The notice grant holders got.
    pub reason: String,
}

/// Publishes the contract in `file` into `dir` (see the module); `now` is the clock's reading. Grant holders are
/// told through the data dir's negotiation store, when it exists.
pub async fn publish(
    dir: &DataDir,
    file: &Path,
    effective: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Published, String> {
    let yaml = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let state = dir.root.join("state.db");
    let store = if state.exists() {
        Some(
            crate::store::SqliteStore::open(&state)
                .await
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let published = publish_text(
        &dir.contracts(),
        &yaml,
        file,
        effective,
        now,
        store.as_ref().map(|s| s as &dyn NegotiationStore),
        "parley contract publish",
    )
    .await;
    if let Some(store) = store {
        store.close().await;
    }
    published
}

/// Publishes the contract `yaml` (read from `source`, for messages) into the contracts folder `contracts`, on
/// behalf of `actor`; the holders of live grants on its table get a notice in `grants` (see the module).
pub async fn publish_text(
    contracts: &Path,
    yaml: &str,
    source: &Path,
    effective: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    grants: Option<&dyn NegotiationStore>,
    actor: &str,
) -> Result<Published, String> {
    let file = source;
    let new = parse(yaml, file).map_err(|e| e.to_string())?;
    let table = table_of(&new).ok_or_else(|| {
        format!(
            "{}: name the table the contract governs in schema[].physicalName (namespace.table)",
            file.display()
        )
    })?;
    let store = ContractStore::load(contracts);
    if store.versions(&table).iter().any(|v| {
        v.loaded()
            .is_some_and(|l| l.contract.version == new.version)
    }) {
        return Err(format!(
            "{table} already has a contract version {}: give the new one a new version",
            new.version
        ));
    }
    let old = store.get_at(&table, now);
    let changes = old
        .as_ref()
        .map(|o| contract_changes(&o.contract, &new))
        .unwrap_or_default();
    let breaking = changes.iter().any(|c| c.impact == Impact::Breaking);
    let effective = match (&old, breaking) {
        (Some(old), true) => {
            let (from, to) = (
                major_version(&old.contract.version),
                major_version(&new.version),
            );
            if !matches!((from, to), (Some(a), Some(b)) if b > a) {
                return Err(format!(
                    "breaking changes need a new major version: {} → {} does not raise it ({})",
                    old.contract.version,
                    new.version,
                    describe(&changes)
                ));
            }
            let days = old.contract.notice_days();
            let earliest = now + TimeDelta::days(days);
            match effective {
                Some(at) if at >= earliest => at,
                _ => {
                    return Err(format!(
                        "breaking changes ({}) take effect at least the contract's notice period ({days} days) \
                         after publication: give --effective {} or later",
                        describe(&changes),
                        earliest.format("%Y-%m-%dT%H:%M:%SZ")
                    ));
                }
            }
        }
        _ => effective.unwrap_or(now),
    };
    let dated = with_effective_from(yaml, effective)?;
    let (namespace, name) = table.rsplit_once('.').unwrap_or(("", table.as_str()));
    let folder = namespace
        .split('.')
        .filter(|p| !p.is_empty())
        .fold(contracts.to_path_buf(), |p, part| p.join(part));
    std::fs::create_dir_all(&folder)
        .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    let path = folder.join(format!("{name}@{}.yaml", new.version));
    // Parsed back as the server will read it, before it is written where the server reads it.
    parse(&dated, &path).map_err(|e| e.to_string())?;
    std::fs::write(&path, &dated).map_err(|e| format!("cannot write {}: {e}", path.display()))?;

    let mut told = Vec::new();
    let mut under_old = Vec::new();
    let what = if changes.is_empty() {
        "no column changes".to_string()
    } else {
        describe(&changes)
    };
    let reason = format!(
        "contract v{} of {table} takes effect {}{}: {what}. {}",
        new.version,
        effective.format("%Y-%m-%dT%H:%M:%SZ"),
        old.as_ref()
            .map(|o| format!(" (replacing v{})", o.contract.version))
            .unwrap_or_default(),
        if breaking {
            "Queries naming the changed columns may stop working then: adapt them before that date, and \
             read the new version with get_contract."
        } else {
            "Nothing you use changes in a breaking way."
        }
    );
    if let Some(grants_store) = grants {
        let grants = grants_store
            .grants_for_table(&table)
            .await
            .map_err(|e| e.to_string())?;
        for grant in grants.iter().filter(|g| g.is_live(now)) {
            grants_store
                .note(
                    grant.id(),
                    crate::negotiation::store::EventKind::ContractChange,
                    actor,
                    &reason,
                )
                .await
                .map_err(|e| e.to_string())?;
            told.push((grant.id().to_string(), grant.principal().to_string()));
            if let Some(old) = &old
                && grant.contract_versions().get(&table)
                    == Some(&format!("{}@{}", old.contract.id, old.contract.version))
            {
                under_old.push((grant.id().to_string(), grant.principal().to_string()));
            }
        }
    }
    Ok(Published {
        table,
        version: new.version.clone(),
        replaces: old.map(|o| o.contract.version.clone()),
        effective,
        path,
        changes,
        told,
        under_old,
        reason,
    })
}

/// The contract text with its `effectiveFrom` custom property set to `at`.
fn with_effective_from(yaml: &str, at: DateTime<Utc>) -> Result<String, String> {
    use serde_yaml_ng::{Mapping, Value};
    let mut doc: Value = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    let root = doc
        .as_mapping_mut()
        .ok_or_else(|| "a contract is a YAML mapping".to_string())?;
    let list = root
        .entry(Value::from("customProperties"))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    let Value::Sequence(items) = list else {
        return Err("customProperties must be a list".to_string());
    };
    items.retain(|item| item.get("property").and_then(Value::as_str) != Some(EFFECTIVE_FROM));
    let mut entry = Mapping::new();
    entry.insert(Value::from("property"), Value::from(EFFECTIVE_FROM));
    entry.insert(
        Value::from("value"),
        Value::from(at.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
    );
    items.push(Value::Mapping(entry));
    serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())
}

//! `parley contract publish`: a new version of a table's contract, checked against the version in force, dated,
//! and announced to the table's consumers.
//!
//! A version whose changes are all compatible takes effect when given (now by default). One with breaking changes
//! (`compat::contract_changes`: a column removed, retyped, made never-null, reclassified; or the notice period
//! shortened, a promise taken back) needs a new major version
//! and an effective date at least the contract's notice period away (`slaProperties: noticePeriod`, days;
//! `contracts::DEFAULT_NOTICE_DAYS` without one). Until that date the old version stays in force — its promises hold, so a
//! commit breaking them is still refused — and from it on the new one does. The version is written next to the
//! table's other contract files as `<table>@<version>.yaml` with its `effectiveFrom`; a serving Parley reloads it.
//! Every holder of a live grant on the table gets a `contract_change` notice (their `my_notices`) saying what
//! changes, when, and what to do; grants made under the old version are listed for the owner.
//!
//! Owners (`Publisher::Owner`) cannot change who owns the table (`team.name`); the operator can. A version names a
//! file only as letters, digits, `.`, `_`, `+`, `-`, and the table only as a table name is written.
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
        Publisher::Operator,
    )
    .await;
    if let Some(store) = store {
        store.close().await;
    }
    published
}

/// Who publishes a version: the server's operator (`parley contract publish`, who may also move the table to
/// other owners), or one of the table's owners through MCP (by principal id).
#[derive(Debug, Clone, Copy)]
pub enum Publisher<'a> {
    Operator,
    Owner(&'a str),
}

/// Publishes the contract `yaml` (read from `source`, for messages) into the contracts folder `contracts`, on
/// behalf of `by`; the holders of live grants on its table get a notice in `grants` (see the module).
pub async fn publish_text(
    contracts: &Path,
    yaml: &str,
    source: &Path,
    effective: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    grants: Option<&dyn NegotiationStore>,
    by: Publisher<'_>,
) -> Result<Published, String> {
    let (actor, operator) = match by {
        Publisher::Operator => ("parley contract publish", true),
        Publisher::Owner(owner) => (owner, false),
    };
    let file = source;
    let new = {
        let (text, file) = (yaml.to_string(), file.to_path_buf());
        off_runtime(move || parse(&text, &file).map_err(|e| e.to_string())).await?
    };
    let table = table_of(&new).ok_or_else(|| {
        format!(
            "{}: name the table the contract governs in schema[].physicalName (namespace.table)",
            file.display()
        )
    })?;
    // The file is named from the table and the version: each exactly as a table name and a version are written.
    match crate::catalog::TableName::parse(&table) {
        Ok(name) if name.to_string() == table => {}
        _ => {
            return Err(format!(
                "schema[].physicalName {table:?} is not a table name as Parley writes one (namespace.table, \
                 no surrounding spaces)"
            ));
        }
    }
    if let Some(why) = unfit_version(&new.version) {
        return Err(why);
    }
    let notice = new.notice_days();
    if !(0..=MAX_NOTICE_DAYS).contains(&notice) {
        return Err(format!(
            "slaProperties noticePeriod is {notice} days: give 0 to {MAX_NOTICE_DAYS} days"
        ));
    }
    // Every contract file is read (a catalog of thousands takes seconds): on a blocking thread, not the threads
    // answering MCP.
    let store = {
        let folder = contracts.to_path_buf();
        off_runtime(move || Ok(ContractStore::load(&folder))).await?
    };
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
    if let Some(old) = &old
        && old.contract.owner_group() != new.owner_group()
        && !operator
    {
        return Err(format!(
            "the table's owners (team.name) would change from {:?} to {:?}: ownership is moved by the server's \
             operator (`parley contract publish`), not through an owner's publication",
            old.contract.owner_group().unwrap_or(""),
            new.owner_group().unwrap_or("")
        ));
    }
    // A shorter notice period is a promise taken back: as breaking as a dropped column, so it cannot be used to
    // skip the notice a breaking change owes.
    let shortened = old
        .as_ref()
        .map(|o| o.contract.notice_days())
        .filter(|was| *was > notice);
    let breaking = changes.iter().any(|c| c.impact == Impact::Breaking) || shortened.is_some();
    let describe = |changes: &[SchemaChange]| {
        let mut what = describe(changes);
        if let Some(was) = shortened {
            if !what.is_empty() {
                what.push_str("; ");
            }
            what.push_str(&format!(
                "the notice period shortened from {was} to {notice} days"
            ));
        }
        what
    };
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
            let days = old.contract.notice_days().clamp(0, MAX_NOTICE_DAYS);
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
    let (namespace, name) = table.rsplit_once('.').unwrap_or(("", table.as_str()));
    let folder = namespace
        .split('.')
        .filter(|p| !p.is_empty())
        .fold(contracts.to_path_buf(), |p, part| p.join(part));
    let path = folder.join(format!("{name}@{}.yaml", new.version));
    // Parsed back as the server will read it, before anything is written where the server reads it.
    let dated = {
        let (text, path) = (yaml.to_string(), path.clone());
        off_runtime(move || {
            let dated = with_effective_from(&text, effective)?;
            parse(&dated, &path).map_err(|e| e.to_string())?;
            Ok(dated)
        })
        .await?
    };
    std::fs::create_dir_all(&folder)
        .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    std::fs::write(&path, &dated).map_err(|e| format!("cannot write {}: {e}", path.display()))?;

    let mut told = Vec::new();
    let mut under_old = Vec::new();
    let what = if changes.is_empty() && shortened.is_none() {
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

/// Runs `work` (parsing contracts, reading the contract folder: seconds for large ones) on a blocking thread,
/// not on the threads answering MCP.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("publishing failed: {e}"))?
}

/// The contract text (YAML or JSON, read as [`crate::contracts::parse`] reads it) as YAML with its
/// `effectiveFrom` custom property set to `at`.
fn with_effective_from(yaml: &str, at: DateTime<Utc>) -> Result<String, String> {
    use serde_json::Value;
    let mut doc = crate::contracts::yaml_value(yaml)?;
    let root = doc
        .as_object_mut()
        .ok_or_else(|| "a contract is a YAML mapping".to_string())?;
    let list = root
        .entry("customProperties")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(items) = list else {
        return Err("customProperties must be a list".to_string());
    };
    items.retain(|item| item.get("property").and_then(Value::as_str) != Some(EFFECTIVE_FROM));
    items.push(serde_json::json!({
        "property": EFFECTIVE_FROM,
        "value": at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }));
    serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())
}

/// Longest notice period a contract may promise (`slaProperties: noticePeriod`), in days.
pub const MAX_NOTICE_DAYS: i64 = 3660;

/// Why a version string cannot name a contract file (`<table>@<version>.yaml`), if it cannot: versions are
/// letters, digits, `.`, `_`, `+` and `-`, and do not start with a dot.
fn unfit_version(version: &str) -> Option<String> {
    let fits = !version.is_empty()
        && !version.starts_with('.')
        && version.len() <= 64
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    (!fits).then(|| {
        format!(
            "version {version:?} cannot name a contract file: use letters, digits, '.', '_', '+' and '-' (not \
             starting with '.'), at most 64 characters, e.g. 2.1.0"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: &str = include_str!("../examples/contracts/sales/orders.yaml");

    /// A contracts folder holding the demo's `sales.orders` contract (no notice period: the default applies).
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sales")).unwrap();
        std::fs::write(dir.path().join("sales/orders.yaml"), ORDERS).unwrap();
        dir
    }

    async fn publish_as_owner(dir: &Path, yaml: &str) -> Result<Published, String> {
        let now = Utc::now();
        publish_text(
            dir,
            yaml,
            Path::new("c.yaml"),
            None,
            now,
            None,
            Publisher::Owner("sales-owner"),
        )
        .await
    }

    fn with_notice(yaml: &str, version: &str, days: &str) -> String {
        yaml.replace("version: 1.2.0", &format!("version: {version}"))
            .replace(
                "slaProperties:\n",
                &format!(
                    "slaProperties:\n  - property: noticePeriod\n    value: {days}\n    unit: d\n"
                ),
            )
    }

    /// An outside test skipped the notice a breaking change owes by first publishing a compatible version with a
    /// notice period of 0 (or a negative one, or one so long the date arithmetic panicked).
    #[tokio::test]
    async fn the_notice_period_can_be_neither_shortened_at_once_nor_out_of_range() {
        let dir = folder();
        let e = publish_as_owner(dir.path(), &with_notice(ORDERS, "1.3.0", "0"))
            .await
            .unwrap_err();
        assert!(
            e.contains("breaking changes need a new major version"),
            "{e}"
        );
        assert!(
            e.contains("notice period shortened from 30 to 0 days"),
            "{e}"
        );
        let e = publish_as_owner(dir.path(), &with_notice(ORDERS, "2.0.0", "0"))
            .await
            .unwrap_err();
        assert!(
            e.contains("at least the contract's notice period (30 days)"),
            "{e}"
        );
        for days in ["-100000", "9223372036854775807", "3661"] {
            let e = publish_as_owner(dir.path(), &with_notice(ORDERS, "1.3.0", days))
                .await
                .unwrap_err();
            assert!(e.contains("give 0 to 3660 days"), "{days}: {e}");
        }
        // Longer is a promise kept: compatible, in force at once.
        let p = publish_as_owner(dir.path(), &with_notice(ORDERS, "1.3.0", "60"))
            .await
            .unwrap();
        assert_eq!(
            (p.version.as_str(), p.replaces.as_deref()),
            ("1.3.0", Some("1.2.0"))
        );
    }

    /// A file is named from the table and the version, each as written: nothing else reaches the path.
    #[tokio::test]
    async fn versions_and_table_names_that_cannot_name_a_file_are_refused() {
        let dir = folder();
        for version in [
            "../../policy/evil",
            "..",
            ".hidden",
            "1/../x",
            "/etc/x",
            "1.0 beta",
            "",
        ] {
            let yaml = ORDERS.replace("version: 1.2.0", &format!("version: {version:?}"));
            let e = publish_as_owner(dir.path(), &yaml).await.unwrap_err();
            assert!(
                e.contains("cannot name a contract file") || e.contains("ODCS"),
                "{version}: {e}"
            );
        }
        let spaced = ORDERS.replace("version: 1.2.0", "version: 1.3.0").replace(
            "physicalName: sales.orders",
            "physicalName: \" sales.orders\"",
        );
        assert_ne!(spaced, ORDERS.replace("version: 1.2.0", "version: 1.3.0"));
        let e = publish_as_owner(dir.path(), &spaced).await.unwrap_err();
        assert!(e.contains("not a table name as Parley writes one"), "{e}");
        let written: Vec<_> = walk(dir.path());
        assert_eq!(written, vec![dir.path().join("sales/orders.yaml")]);
    }

    /// Owners publish versions; who owns the table is the operator's to change.
    #[tokio::test]
    async fn an_owner_cannot_hand_the_table_to_another_team() {
        let dir = folder();
        let moved = ORDERS
            .replace("version: 1.2.0", "version: 1.3.0")
            .replace("  name: sales-owners", "  name: marketing");
        let e = publish_as_owner(dir.path(), &moved).await.unwrap_err();
        assert!(
            e.contains("ownership is moved by the server's operator"),
            "{e}"
        );
        let p = publish_text(
            dir.path(),
            &moved,
            Path::new("c.yaml"),
            None,
            Utc::now(),
            None,
            Publisher::Operator,
        )
        .await
        .unwrap();
        assert_eq!(p.version, "1.3.0");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
        found.sort();
        found
    }
}

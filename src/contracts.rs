//! Contracts: ODCS v3 data contracts (YAML), one per table, loaded from `<data dir>/contracts/<ns>/<table>.yaml`,
//! validated against the official ODCS JSON Schema compiled in from `schemas/`, and served to agents.
//!
//! The typed [`Contract`] holds the parts Parley acts on (classification, purposes, owner, approvers, price,
//! SLA); the YAML text is kept verbatim so agents and owners read exactly what was written.
//!
//! Invariant: a contract that does not validate is never served or used for a decision; the table then counts
//! as unclassified, which policies treat as containing PII.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::TableFacts;

/// The official ODCS v3.2.0 JSON Schema (see `schemas/README.md` for origin and licence).
const ODCS_SCHEMA: &str = include_str!("../schemas/odcs-3.2.0.schema.json");

/// Classifications that make a column personal or otherwise restricted data.
const PII_CLASSIFICATIONS: [&str; 3] = ["restricted", "pii", "sensitive"];

/// The classification of a column (or table) its contract does not classify; treated as personal data.
pub const UNCLASSIFIED: &str = "unclassified";

/// An ODCS v3 data contract: the parts Parley uses. Unknown-but-valid ODCS keys are kept in the YAML text.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Contract {
    /// ODCS version, e.g. `v3.2.0`.
    pub api_version: String,
    /// Always `DataContract`.
    pub kind: String,
    /// Contract id.
    pub id: String,
    /// Human name.
    #[serde(default)]
    pub name: Option<String>,
    /// Contract version.
    pub version: String,
    /// Lifecycle status (`active`, `deprecated`...).
    #[serde(default)]
    pub status: Option<String>,
    /// Business domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Data product this table belongs to.
    #[serde(default)]
    pub data_product: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Purpose, usage and limitations: the terms of use.
    #[serde(default)]
    pub description: Option<ContractDescription>,
    /// Tables (schema objects) and their columns.
    #[serde(default)]
    pub schema: Vec<SchemaObject>,
    /// Owning team.
    #[serde(default)]
    pub team: Option<Team>,
    /// Access roles and their approvers.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Price of the data.
    #[serde(default)]
    pub price: Option<Price>,
    /// Service levels (freshness, retention...).
    #[serde(default)]
    pub sla_properties: Vec<SlaProperty>,
    /// Extensions, e.g. `allowedPurposes`, `prohibitedPurposes`.
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
}

/// Terms of use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ContractDescription {
    /// Why the data exists.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Intended usage.
    #[serde(default)]
    pub usage: Option<String>,
    /// Limitations and prohibitions.
    #[serde(default)]
    pub limitations: Option<String>,
}

/// A table in the contract.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaObject {
    /// Logical name.
    pub name: String,
    /// Physical name, `namespace.table`.
    #[serde(default)]
    pub physical_name: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Columns.
    #[serde(default)]
    pub properties: Vec<Property>,
    /// Table-level quality rules (row count, custom SQL, rules over `arguments.properties`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<crate::quality::QualityRule>,
}

/// A column in the contract.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Property {
    /// Column name.
    pub name: String,
    /// ODCS logical type.
    #[serde(default)]
    pub logical_type: Option<String>,
    /// Physical type.
    #[serde(default)]
    pub physical_type: Option<String>,
    /// Whether nulls are forbidden.
    #[serde(default)]
    pub required: bool,
    /// Part of the primary key.
    #[serde(default)]
    pub primary_key: bool,
    /// Classification, e.g. public, internal, confidential, restricted.
    #[serde(default)]
    pub classification: Option<String>,
    /// Tags, e.g. `pii`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Quality rules on this column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<crate::quality::QualityRule>,
}

/// Owning team.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Team {
    /// Team name; Parley treats it as the owning group.
    #[serde(default)]
    pub name: Option<String>,
    /// Members.
    #[serde(default)]
    pub members: Vec<TeamMember>,
}

/// A team member.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TeamMember {
    /// User name or e-mail.
    pub username: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Role in the team, e.g. owner.
    #[serde(default)]
    pub role: Option<String>,
}

/// An access role and its approvers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    /// Role name.
    pub role: String,
    /// Access type (read, write).
    #[serde(default)]
    pub access: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// First-level approvers.
    #[serde(default)]
    pub first_level_approvers: Option<String>,
    /// Second-level approvers.
    #[serde(default)]
    pub second_level_approvers: Option<String>,
}

/// Price of the data.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Price {
    /// Amount per unit.
    #[serde(default)]
    pub price_amount: Option<f64>,
    /// Currency.
    #[serde(default)]
    pub price_currency: Option<String>,
    /// Unit, e.g. `1000 rows`.
    #[serde(default)]
    pub price_unit: Option<String>,
}

/// One service-level property.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SlaProperty {
    /// Property, e.g. freshness.
    pub property: String,
    /// Value.
    #[serde(default)]
    pub value: Value,
    /// Unit, e.g. d, h.
    #[serde(default)]
    pub unit: Option<String>,
    /// Element it applies to.
    #[serde(default)]
    pub element: Option<String>,
}

/// An extension key/value.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CustomProperty {
    /// Key.
    pub property: String,
    /// Value.
    pub value: Value,
}

/// A contract that could not be loaded: which file, which field, what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("cannot read contract {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("contract {path} is not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("contract {path} does not conform to ODCS v3.2.0: {}", problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

fn odcs_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value =
            serde_json::from_str(ODCS_SCHEMA).expect("embedded ODCS schema is JSON");
        jsonschema::validator_for(&schema).expect("embedded ODCS schema compiles")
    })
}

/// Validates a contract's YAML text against the ODCS schema and parses it. `path` names it in errors.
pub fn parse(yaml: &str, path: &Path) -> Result<Contract, ContractError> {
    let value: Value = serde_yaml_ng::from_str(yaml).map_err(|e| ContractError::Yaml {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let problems: Vec<String> = odcs_validator()
        .iter_errors(&value)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            format!("at {at}: {e}")
        })
        .collect();
    if !problems.is_empty() {
        return Err(ContractError::Invalid {
            path: path.to_path_buf(),
            problems,
        });
    }
    serde_json::from_value(value).map_err(|e| ContractError::Invalid {
        path: path.to_path_buf(),
        problems: vec![e.to_string()],
    })
}

/// A validated contract with its source.
#[derive(Debug, Clone)]
pub struct LoadedContract {
    /// The parsed contract.
    pub contract: Contract,
    /// The YAML exactly as written.
    pub yaml: String,
}

/// The SLA property by which a contract promises its consumers a stable schema: `schemaStability: stable`.
pub const SCHEMA_STABILITY: &str = "schemaStability";

impl Contract {
    /// Where the contract promises a stable schema — the SLA property `schemaStability` with value `stable`
    /// (`slaProperties: [{property: schemaStability, value: stable}]`) — as the clause a refusal names; `None`
    /// when it promises none. Under that promise, a change that breaks a column consumers use (drop, rename,
    /// narrowing, optional to required) does not land while they depend on it.
    pub fn stable_schema_clause(&self) -> Option<String> {
        self.sla_properties
            .iter()
            .find(|s| {
                s.property == SCHEMA_STABILITY
                    && s.value
                        .as_str()
                        .is_some_and(|v| v.eq_ignore_ascii_case("stable"))
            })
            .map(|_| {
                format!(
                    "slaProperties.{SCHEMA_STABILITY} = stable (contract {} v{})",
                    self.id, self.version
                )
            })
    }

    /// When this version takes effect: its [`EFFECTIVE_FROM`] custom property (RFC 3339, or a date meaning its
    /// midnight UTC).
    pub fn effective_from(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = self
            .custom_properties
            .iter()
            .find(|c| c.property == EFFECTIVE_FROM)?
            .value
            .as_str()?;
        parse_instant(text)
    }

    /// Days of notice consumers get before a breaking version takes effect: the SLA property [`NOTICE_PERIOD`]
    /// (in days; `unit: w` weeks), else [`DEFAULT_NOTICE_DAYS`].
    pub fn notice_days(&self) -> i64 {
        self.sla_properties
            .iter()
            .find(|s| s.property == NOTICE_PERIOD)
            .and_then(|s| {
                let n = s
                    .value
                    .as_i64()
                    .or_else(|| s.value.as_str()?.parse().ok())?;
                Some(match s.unit.as_deref() {
                    Some("w" | "week" | "weeks") => n * 7,
                    _ => n,
                })
            })
            .unwrap_or(DEFAULT_NOTICE_DAYS)
    }

    /// Values of a list-valued custom property, e.g. `allowedPurposes`.
    pub fn custom_list(&self, key: &str) -> Vec<String> {
        self.custom_properties
            .iter()
            .filter(|c| c.property == key)
            .flat_map(|c| match &c.value {
                Value::Array(items) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                Value::String(s) => vec![s.clone()],
                _ => vec![],
            })
            .collect()
    }

    /// Purposes the contract allows.
    pub fn allowed_purposes(&self) -> Vec<String> {
        self.custom_list("allowedPurposes")
    }

    /// Purposes the contract forbids.
    pub fn prohibited_purposes(&self) -> Vec<String> {
        self.custom_list("prohibitedPurposes")
    }

    /// The owning group: the team's name.
    pub fn owner_group(&self) -> Option<&str> {
        self.team.as_ref().and_then(|t| t.name.as_deref())
    }

    /// All columns of all schema objects.
    pub fn columns(&self) -> impl Iterator<Item = &Property> {
        self.schema.iter().flat_map(|s| s.properties.iter())
    }

    /// The contract's entry for `column`, if any.
    pub fn column(&self, column: &str) -> Option<&Property> {
        self.columns().find(|p| p.name == column)
    }
}

impl Property {
    /// Whether the column is personal or restricted data — or not classified at all: an owner who has not said
    /// what a column holds has not said it is not personal data.
    pub fn is_pii(&self) -> bool {
        self.tags.iter().any(|t| t.eq_ignore_ascii_case("pii"))
            || self.classification.as_deref().is_none_or(|c| {
                c.eq_ignore_ascii_case(UNCLASSIFIED)
                    || PII_CLASSIFICATIONS
                        .iter()
                        .any(|p| c.eq_ignore_ascii_case(p))
            })
    }
}

/// The `quality` fact of a table no quality report speaks for.
pub const UNCHECKED: &str = "unchecked";

/// Policy facts for a table: from its contract, or the restrictive defaults of an unclassified table.
pub fn table_facts(namespace: &str, name: &str, contract: Option<&Contract>) -> TableFacts {
    match contract {
        Some(c) => {
            let mut classifications: BTreeSet<String> = c
                .columns()
                .map(|p| {
                    p.classification
                        .clone()
                        .unwrap_or_else(|| UNCLASSIFIED.to_string())
                })
                .collect();
            // A contract that lists no columns classifies none: the table is unclassified, as without a contract.
            let listed = c.columns().next().is_some();
            if !listed {
                classifications.insert(UNCLASSIFIED.to_string());
            }
            TableFacts {
                namespace: namespace.to_string(),
                name: name.to_string(),
                owner: c.owner_group().unwrap_or("").to_string(),
                tags: c.tags.clone(),
                contains_pii: !listed || c.columns().any(Property::is_pii),
                classifications: classifications.into_iter().collect(),
                pii_columns: c
                    .columns()
                    .filter(|p| p.is_pii())
                    .map(|p| p.name.clone())
                    .collect(),
                quality: UNCHECKED.to_string(),
                quality_breaches: vec![],
            }
        }
        None => TableFacts {
            namespace: namespace.to_string(),
            name: name.to_string(),
            owner: String::new(),
            tags: vec![],
            contains_pii: true,
            classifications: vec![UNCLASSIFIED.to_string()],
            pii_columns: vec![],
            quality: UNCHECKED.to_string(),
            quality_breaches: vec![],
        },
    }
}

/// The custom property that dates a contract version: it is in force from this instant (RFC 3339) on, until a
/// later version's. A contract without it is in force from the start. `parley contract publish` writes it.
pub const EFFECTIVE_FROM: &str = "effectiveFrom";

/// The SLA property giving how many days ahead consumers are told of a breaking version (`unit: d`).
pub const NOTICE_PERIOD: &str = "noticePeriod";

/// The notice period when a contract names none.
pub const DEFAULT_NOTICE_DAYS: i64 = 30;

/// One version of a table's contract and when it takes effect.
#[derive(Debug, Clone)]
pub struct Version {
    /// In force from (None: always).
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// The contract.
    pub loaded: std::sync::Arc<LoadedContract>,
}

/// All contracts under a directory, keyed by `namespace.table`; a table may have several versions, each in force
/// from its [`EFFECTIVE_FROM`] date.
#[derive(Debug, Default)]
pub struct ContractStore {
    by_table: BTreeMap<String, Vec<Version>>,
    /// Contracts that failed to load, with the reason; reported, never used.
    pub rejected: Vec<String>,
}

impl ContractStore {
    /// Loads `<dir>/<namespace>/<table>.yaml` files. The table is the contract's first `schema[].physicalName`
    /// when set, else the file's place in the tree. Invalid contracts are logged and listed in `rejected`.
    pub fn load(dir: &Path) -> ContractStore {
        ContractStore::load_cached(dir, None)
    }

    /// [`ContractStore::load`], remembering validated contracts in `cache` (a file; see [`ValidatedCache`]): a
    /// file whose exact text was validated before is read back from its typed form instead of parsed and
    /// validated again. The cache is rewritten when this load validated anything new or dropped old texts.
    pub fn load_cached(dir: &Path, cache: Option<&Path>) -> ContractStore {
        let mut store = ContractStore::default();
        let mut files = Vec::new();
        collect_yaml(dir, &mut files);
        files.sort();
        let remembered = cache.map(ValidatedCache::read).unwrap_or_default();
        // Reading, parsing and validating are independent per file: spread over the cores (100,000 contracts took
        // ~8 s on one), then kept in file order, so which version wins does not depend on the threads. A thread that
        // panics leaves its tables unclassified, the restrictive default.
        let read = crate::parallel::filter_map_chunks(&files, 256, "loading contracts", |path| {
            Some(read_contract_cached(
                dir,
                path,
                &remembered,
                cache.is_some(),
            ))
        });
        // Remember what validated now, forget texts no file holds any more.
        let mut known = std::collections::HashSet::new();
        let mut new = Vec::new();
        let read: Vec<_> = read
            .into_iter()
            .map(|result| {
                result.map(|(key, contract, yaml, entry)| {
                    match entry {
                        Remembered::Known(digest) => _ = known.insert(digest),
                        Remembered::New(digest, Some(json)) => new.push((digest, json)),
                        Remembered::New(_, None) => {}
                    }
                    (key, contract, yaml)
                })
            })
            .collect();
        if let Some(path) = cache
            && (!new.is_empty() || known.len() != remembered.entries.len())
        {
            remembered.write(path, &known, &new);
        }
        for result in read {
            match result {
                Ok((key, contract, yaml)) => {
                    let from = contract.effective_from();
                    let versions = store.by_table.entry(key).or_default();
                    versions.push(Version {
                        from,
                        loaded: std::sync::Arc::new(LoadedContract { contract, yaml }),
                    });
                    // Undated first (the later file wins among them, as before), then by date.
                    versions.sort_by_key(|v| v.from);
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    store.rejected.push(e.to_string());
                }
            }
        }
        store
    }

    /// How many contracts loaded.
    pub fn len(&self) -> usize {
        self.by_table.len()
    }

    /// Whether no contract loaded.
    pub fn is_empty(&self) -> bool {
        self.by_table.is_empty()
    }

    /// The contract of `namespace.table` in force now (system clock).
    pub fn get(&self, qualified: &str) -> Option<std::sync::Arc<LoadedContract>> {
        self.get_at(qualified, chrono::Utc::now())
    }

    /// The contract of `namespace.table` in force at `now`: the latest version whose date has come.
    pub fn get_at(
        &self,
        qualified: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<std::sync::Arc<LoadedContract>> {
        self.by_table
            .get(qualified)?
            .iter()
            .rev()
            .find(|v| v.from.is_none_or(|from| from <= now))
            .map(|v| v.loaded.clone())
    }

    /// The tables whose contract versions differ between `self` and `other` (added, removed or edited).
    pub fn changed_tables(&self, other: &ContractStore) -> Vec<String> {
        let texts = |store: &ContractStore, table: &str| -> Vec<String> {
            store
                .versions(table)
                .iter()
                .map(|v| v.loaded.yaml.clone())
                .collect()
        };
        self.by_table
            .keys()
            .chain(other.by_table.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|t| texts(self, t) != texts(other, t))
            .cloned()
            .collect()
    }

    /// The tables that have a contract, `namespace.table`.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.by_table.keys().map(String::as_str)
    }

    /// Every version of `namespace.table`'s contract, oldest first.
    pub fn versions(&self, qualified: &str) -> &[Version] {
        self.by_table.get(qualified).map_or(&[], Vec::as_slice)
    }
}

/// An instant as RFC 3339, or a date (`2027-01-15`) meaning its midnight UTC.
pub fn parse_instant(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()?
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc())
        })
}

/// Reads and validates one contract file under `root` as the server does: the table it governs (its first
/// `schema[].physicalName`, else its place under `root`), the contract, and its text.
fn read_contract(root: &Path, path: &Path) -> Result<(String, Contract, String), ContractError> {
    let yaml = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let contract = parse(&yaml, path)?;
    let key = table_key(root, path, &contract);
    Ok((key, contract, yaml))
}

/// The table a contract file governs: its first `schema[].physicalName`, else its place under `root`.
fn table_key(root: &Path, path: &Path, contract: &Contract) -> String {
    table_of(contract).unwrap_or_else(|| table_key_from_path(root, path))
}

/// How a loaded contract stands in the [`ValidatedCache`].
enum Remembered {
    /// Its text was validated before (the digest of the text).
    Known([u8; 32]),
    /// Validated now: the digest and, when remembering, the typed form to remember.
    New([u8; 32], Option<String>),
}

/// [`read_contract`], reading a text validated before back from `cache`; with `remember`, a contract validated
/// now comes with its typed form to remember (one that cannot be written is simply not remembered).
fn read_contract_cached(
    root: &Path,
    path: &Path,
    cache: &ValidatedCache,
    remember: bool,
) -> Result<(String, Contract, String, Remembered), ContractError> {
    use sha2::Digest as _;
    let yaml = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let digest: [u8; 32] = sha2::Sha256::digest(yaml.as_bytes()).into();
    // A remembered form that no longer reads (a damaged cache) is validated again, as a new text is.
    if let Some(contract) = cache
        .get(&digest)
        .and_then(|json| serde_json::from_str::<Contract>(json).ok())
    {
        let key = table_key(root, path, &contract);
        return Ok((key, contract, yaml, Remembered::Known(digest)));
    }
    let contract = parse(&yaml, path)?;
    let json = remember
        .then(|| serde_json::to_string(&contract).ok())
        .flatten();
    let key = table_key(root, path, &contract);
    Ok((key, contract, yaml, Remembered::New(digest, json)))
}

/// Contracts validated before, by the SHA-256 of their exact text, in their typed form (JSON): reading one back
/// costs a fraction of parsing its YAML and validating it against the ODCS schema. Valid only for the same
/// schema and the same typed form — the file's first line names both (the ODCS schema's digest and that of
/// [`Contract`]'s own JSON Schema), and a file with another first line is ignored whole. A contract that failed
/// validation is never remembered (it is validated again on every load, and its message stays the server's own).
/// The file is only ever replaced whole (written aside, then renamed), so a reader sees one complete version.
#[derive(Default)]
struct ValidatedCache {
    /// The file's text.
    text: String,
    /// Where each remembered typed form is in `text`.
    entries: std::collections::HashMap<[u8; 32], Range<usize>>,
}

impl ValidatedCache {
    /// What the first line must say.
    fn header() -> &'static str {
        static HEADER: OnceLock<String> = OnceLock::new();
        HEADER.get_or_init(|| {
            use sha2::Digest as _;
            let typed = serde_json::to_string(&schemars::schema_for!(Contract)).unwrap_or_default();
            format!(
                "parley validated contracts 1 odcs:{} typed:{}",
                hex::encode(sha2::Sha256::digest(ODCS_SCHEMA.as_bytes())),
                hex::encode(sha2::Sha256::digest(typed.as_bytes()))
            )
        })
    }

    /// The cache at `path`; empty when absent, unreadable or written for another schema or typed form.
    fn read(path: &Path) -> ValidatedCache {
        let Ok(text) = std::fs::read_to_string(path) else {
            return ValidatedCache::default();
        };
        let mut entries = std::collections::HashMap::new();
        let mut lines = text.split_inclusive('\n');
        if lines.next().map(str::trim_end) != Some(ValidatedCache::header()) {
            return ValidatedCache::default();
        }
        let base = text.as_ptr() as usize;
        for line in lines {
            let line = line.trim_end_matches('\n');
            let Some((digest, json)) = line.split_once('\t') else {
                continue;
            };
            let mut key = [0u8; 32];
            if hex::decode_to_slice(digest, &mut key).is_ok() {
                let start = json.as_ptr() as usize - base;
                entries.insert(key, start..start + json.len());
            }
        }
        ValidatedCache { text, entries }
    }

    /// The typed form remembered for the text with `digest`.
    fn get(&self, digest: &[u8; 32]) -> Option<&str> {
        self.entries
            .get(digest)
            .and_then(|range| self.text.get(range.clone()))
    }

    /// Replaces the cache at `path` with the entries of this one in `keep`, and `new`; a failure is logged (the
    /// next load validates again).
    fn write(
        &self,
        path: &Path,
        keep: &std::collections::HashSet<[u8; 32]>,
        new: &[([u8; 32], String)],
    ) {
        use std::io::Write as _;
        let aside = path.with_extension(format!("tmp{}", std::process::id()));
        let written = (|| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut out = std::io::BufWriter::new(std::fs::File::create(&aside)?);
            writeln!(out, "{}", ValidatedCache::header())?;
            let kept = keep
                .iter()
                .filter_map(|digest| Some((digest, self.get(digest)?)));
            for (digest, json) in kept.chain(new.iter().map(|(d, json)| (d, json.as_str()))) {
                writeln!(out, "{}\t{json}", hex::encode(digest))?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&aside, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&aside);
            tracing::warn!(
                "cannot remember validated contracts in {}: {e} (the next start validates them again)",
                path.display()
            );
        }
    }
}

/// A contract file checked by [`validate`]: the table it would govern and the contract, or why the server would
/// refuse it.
#[derive(Debug)]
pub struct Validated {
    /// The file.
    pub path: PathBuf,
    /// `(table, contract)` when it loads; the server's own message when it does not.
    pub result: Result<(String, Contract), ContractError>,
}

/// Checks contract files before they are deployed, with the messages the server gives when it loads them: `path`
/// is a `.yaml` file or a directory laid out as `<data>/contracts` (`<namespace>/<table>.yaml`, searched
/// recursively). A missing path is one failed entry.
pub fn validate(path: &Path) -> Vec<Validated> {
    if path.is_dir() {
        let mut files = Vec::new();
        collect_yaml(path, &mut files);
        files.sort();
        files
            .into_iter()
            .map(|file| Validated {
                result: read_contract(path, &file).map(|(key, c, _)| (key, c)),
                path: file,
            })
            .collect()
    } else {
        let root = path.parent().unwrap_or(Path::new(""));
        vec![Validated {
            result: read_contract(root, path).map(|(key, c, _)| (key, c)),
            path: path.to_path_buf(),
        }]
    }
}

fn table_key_from_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path).with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    // `<table>@<version>.yaml`: a published version of `<table>`'s contract.
    if let Some(last) = parts.last_mut()
        && let Some((table, _version)) = last.split_once('@')
    {
        *last = table.to_string();
    }
    parts.join(".")
}

/// The table a contract names: its first `schema[].physicalName`.
pub fn table_of(contract: &Contract) -> Option<String> {
    contract.schema.iter().find_map(|s| s.physical_name.clone())
}

/// The `.yaml`/`.yml` files under `dir`, depth first with each directory's entries by name: in `Path` order, so
/// sorting the result is cheap.
pub(crate) fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<std::fs::DirEntry> = entries.flatten().collect();
    entries.sort_by_cached_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        // The entry's own type costs no system call; a symbolic link is followed, as before.
        let is_dir = match entry.file_type() {
            Ok(t) if !t.is_symlink() => t.is_dir(),
            _ => path.is_dir(),
        };
        if is_dir {
            collect_yaml(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_in_force_is_the_latest_whose_date_has_come() {
        let dir = tempfile::tempdir().unwrap();
        let sales = dir.path().join("sales");
        std::fs::create_dir_all(&sales).unwrap();
        let v1 = include_str!("../examples/contracts/sales/orders.yaml");
        std::fs::write(sales.join("orders.yaml"), v1).unwrap();
        let dated = |version: &str, from: &str| {
            v1.replace("version: 1.2.0", &format!("version: {version}"))
                .replace(
                    "customProperties:\n",
                    &format!(
                        "customProperties:\n  - property: effectiveFrom\n    value: \"{from}\"\n"
                    ),
                )
        };
        std::fs::write(
            sales.join("orders@2.0.0.yaml"),
            dated("2.0.0", "2027-03-01"),
        )
        .unwrap();
        std::fs::write(
            sales.join("orders@1.3.0.yaml"),
            dated("1.3.0", "2027-01-01T12:00:00Z"),
        )
        .unwrap();
        let store = ContractStore::load(dir.path());
        assert!(store.rejected.is_empty(), "{:?}", store.rejected);
        let at = |t: &str| {
            store
                .get_at("sales.orders", parse_instant(t).unwrap())
                .unwrap()
                .contract
                .version
                .clone()
        };
        assert_eq!(at("2026-12-31"), "1.2.0");
        assert_eq!(at("2027-01-01T12:00:00Z"), "1.3.0");
        assert_eq!(at("2027-02-28T23:59:59Z"), "1.3.0");
        assert_eq!(at("2027-03-01"), "2.0.0");
        let versions: Vec<&str> = store
            .versions("sales.orders")
            .iter()
            .map(|v| v.loaded.contract.version.as_str())
            .collect();
        assert_eq!(versions, ["1.2.0", "1.3.0", "2.0.0"]);
        assert_eq!(store.len(), 1, "versions of one table are one contract");
    }

    #[test]
    fn a_stable_schema_is_promised_by_the_sla_property() {
        let orders = parse(
            include_str!("../examples/contracts/sales/orders.yaml"),
            Path::new("orders.yaml"),
        )
        .unwrap();
        let clause = orders.stable_schema_clause().unwrap();
        assert!(
            clause.contains("slaProperties.schemaStability = stable"),
            "{clause}"
        );
        let products = parse(
            include_str!("../examples/contracts/sales/products.yaml"),
            Path::new("products.yaml"),
        )
        .unwrap();
        assert_eq!(products.stable_schema_clause(), None);
    }

    const CUSTOMERS: &str = include_str!("../examples/contracts/sales/customers.yaml");

    /// A store's contents, comparable: per table, each version's text and typed form.
    fn contents(store: &ContractStore) -> Vec<(String, Vec<(String, String)>)> {
        store
            .tables()
            .map(|t| {
                let versions = store
                    .versions(t)
                    .iter()
                    .map(|v| {
                        let typed = serde_json::to_string(&v.loaded.contract).unwrap();
                        (v.loaded.yaml.clone(), typed)
                    })
                    .collect();
                (t.to_string(), versions)
            })
            .collect()
    }

    #[test]
    fn validated_contracts_are_remembered_by_their_text_and_read_back_as_validated() {
        let dir = tempfile::tempdir().unwrap();
        let contracts = dir.path().join("contracts");
        for (name, text) in crate::demo::CONTRACTS {
            let path = contracts.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        // One governed by its place in the tree (no physicalName), one that does not validate.
        let (_, first) = crate::demo::CONTRACTS[0];
        let unnamed: String = first
            .lines()
            .filter(|l| !l.trim_start().starts_with("physicalName:"))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::create_dir_all(contracts.join("extra")).unwrap();
        std::fs::write(contracts.join("extra/unnamed.yaml"), &unnamed).unwrap();
        std::fs::write(
            contracts.join("extra/broken.yaml"),
            format!("{first}\nfavouriteColour: blue\n"),
        )
        .unwrap();
        let cache = dir.path().join("cache/validated");
        let plain = ContractStore::load(&contracts);
        assert_eq!(plain.rejected.len(), 1, "{:?}", plain.rejected);
        assert!(plain.get("extra.unnamed").is_some());

        // The first load validates and remembers; the second reads back; both load exactly what a plain load does.
        for round in 0..2 {
            let cached = ContractStore::load_cached(&contracts, Some(&cache));
            assert_eq!(contents(&cached), contents(&plain), "round {round}");
            assert_eq!(cached.rejected, plain.rejected, "round {round}");
        }
        let remembered = ValidatedCache::read(&cache);
        assert_eq!(
            remembered.entries.len(),
            crate::demo::CONTRACTS.len() + 1,
            "every valid text, never the invalid one"
        );

        // Read back, not validated again: a remembered typed form is what loads (the cache is trusted as the data
        // dir is) ...
        let text = std::fs::read_to_string(&cache).unwrap();
        let digest = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(unnamed.as_bytes()))
        };
        let (_, rest) = text.split_once(&format!("{digest}\t")).unwrap();
        let json = rest.lines().next().unwrap();
        let mut typed: serde_json::Value = serde_json::from_str(json).unwrap();
        typed["version"] = "9.9.9-remembered".into();
        std::fs::write(&cache, text.replace(json, &typed.to_string())).unwrap();
        let store = ContractStore::load_cached(&contracts, Some(&cache));
        assert_eq!(
            store.get("extra.unnamed").unwrap().contract.version,
            "9.9.9-remembered"
        );

        // ... but a file's new text is validated anew (here it no longer validates, and its old form is forgotten),
        std::fs::write(
            contracts.join("extra/unnamed.yaml"),
            format!("{unnamed}\nfavouriteColour: blue\n"),
        )
        .unwrap();
        let store = ContractStore::load_cached(&contracts, Some(&cache));
        assert!(store.get("extra.unnamed").is_none());
        assert_eq!(store.rejected.len(), 2);
        assert_eq!(
            ValidatedCache::read(&cache).entries.len(),
            crate::demo::CONTRACTS.len()
        );

        // a damaged entry is validated again, and a cache for another schema or typed form is ignored whole.
        let text = std::fs::read_to_string(&cache).unwrap();
        let damaged: String = text
            .lines()
            .map(|l| match l.split_once('\t') {
                Some((d, _)) => format!("{d}\t{{not json\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&cache, damaged).unwrap();
        let store = ContractStore::load_cached(&contracts, Some(&cache));
        assert_eq!(contents(&store).len(), contents(&plain).len() - 1);
        let text = std::fs::read_to_string(&cache).unwrap();
        std::fs::write(
            &cache,
            text.replacen(
                "parley validated contracts 1",
                "parley validated contracts 0",
                1,
            ),
        )
        .unwrap();
        assert!(ValidatedCache::read(&cache).entries.is_empty());
        let store = ContractStore::load_cached(&contracts, Some(&cache));
        assert_eq!(store.len(), plain.len() - 1);
        assert_eq!(
            ValidatedCache::read(&cache).entries.len(),
            crate::demo::CONTRACTS.len()
        );
    }

    #[test]
    fn every_demo_contract_validates_against_the_official_schema() {
        for (name, text) in crate::demo::CONTRACTS {
            let c = parse(text, Path::new(name)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.api_version, "v3.2.0");
            assert!(!c.allowed_purposes().is_empty() || name.contains("products"));
            assert!(c.columns().all(|p| p.classification.is_some()), "{name}");
        }
    }

    #[test]
    fn unknown_top_level_key_is_rejected_naming_it() {
        let text = format!("{CUSTOMERS}\nfavouriteColour: blue\n");
        let err = parse(&text, Path::new("c.yaml")).unwrap_err().to_string();
        assert!(err.contains("favouriteColour"), "{err}");
    }

    #[test]
    fn unknown_column_key_is_rejected_naming_it() {
        let text = CUSTOMERS.replacen(
            "primaryKey: true",
            "primaryKey: true\n        piiLevel: high",
            1,
        );
        let err = parse(&text, Path::new("c.yaml")).unwrap_err().to_string();
        assert!(err.contains("piiLevel"), "{err}");
    }

    #[test]
    fn missing_required_field_is_rejected_naming_it() {
        let text = CUSTOMERS.replace("id: urn:parley:demo:sales:customers\n", "");
        let err = parse(&text, Path::new("c.yaml")).unwrap_err().to_string();
        assert!(err.contains("\"id\""), "{err}");
    }

    #[test]
    fn pii_and_owner_come_from_the_contract() {
        let c = parse(CUSTOMERS, Path::new("c.yaml")).unwrap();
        let facts = table_facts("sales", "customers", Some(&c));
        assert!(facts.contains_pii);
        assert_eq!(facts.owner, "sales-owners");
        assert!(c.column("email").unwrap().is_pii());
        assert!(!c.column("country").unwrap().is_pii());
        assert!(table_facts("x", "y", None).contains_pii);
    }
}

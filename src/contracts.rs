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
use std::sync::{Arc, Mutex, OnceLock};

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

/// Most flow collections (`[...]`, `{...}`) a contract in YAML may open. The YAML scanner's time grows with its
/// tokens times the flow collections open around each, so a document of nested brackets took minutes of a core
/// (an outside test: 200 KB in 61 s); block-style contracts open a handful, and JSON ones are parsed as JSON.
pub const MAX_FLOW_COLLECTIONS: usize = 512;

/// The text as a JSON-like value: JSON through serde_json (linear, nesting limited), other YAML through the YAML
/// parser when it opens at most [`MAX_FLOW_COLLECTIONS`] flow collections.
pub(crate) fn yaml_value(yaml: &str) -> Result<Value, String> {
    let json = yaml
        .trim_start()
        .starts_with('{')
        .then(|| serde_json::from_str::<Value>(yaml));
    if let Some(Ok(value)) = json {
        return Ok(value);
    }
    let opened = yaml.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
    if opened > MAX_FLOW_COLLECTIONS {
        return Err(match json {
            // Meant as JSON: what is wrong with it is the useful answer.
            Some(Err(e)) => format!(
                "it is not valid JSON ({e}), and read as YAML it opens {opened} flow collections ([...] or \
                 {{...}}), more than the {MAX_FLOW_COLLECTIONS} read"
            ),
            _ => format!(
                "it opens {opened} flow collections ([...] or {{...}}); at most {MAX_FLOW_COLLECTIONS} are read. \
                 Write lists and objects in block style (one `- item` or `key: value` per line), or the whole \
                 contract as JSON"
            ),
        });
    }
    serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
}

/// Validates a contract's YAML text against the ODCS schema and parses it. `path` names it in errors.
pub fn parse(yaml: &str, path: &Path) -> Result<Contract, ContractError> {
    let value: Value = yaml_value(yaml).map_err(|message| ContractError::Yaml {
        path: path.to_path_buf(),
        message,
    })?;
    // A valid contract (the usual case) takes the validator's short-circuiting check; only an invalid one is
    // walked again for every problem, with its place.
    let validator = odcs_validator();
    let problems: Vec<String> = if validator.is_valid(&value) {
        Vec::new()
    } else {
        validator
            .iter_errors(&value)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_string() } else { at };
                format!("at {at}: {e}")
            })
            .collect()
    };
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
    /// The drift last found against a table schema (see [`LoadedContract::drift`]).
    drift: DriftMemo,
}

impl LoadedContract {
    pub fn new(contract: Contract, yaml: String) -> LoadedContract {
        LoadedContract {
            contract,
            yaml,
            drift: DriftMemo::default(),
        }
    }

    /// How `schema` departs from what the contract promises ([`crate::compat::contract_drift`]), remembered for
    /// the last schema asked about: every `list_tables` page asks it of each table it shows, and a table's schema
    /// changes far less often than it is listed.
    pub fn drift(
        &self,
        schema: &iceberg::spec::SchemaRef,
    ) -> Arc<Vec<crate::compat::SchemaChange>> {
        let mut memo = self
            .drift
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Held, so never freed and reused for another schema while remembered.
        if let Some((seen, drift)) = memo.as_ref()
            && Arc::ptr_eq(seen, schema)
        {
            return drift.clone();
        }
        let drift = Arc::new(crate::compat::contract_drift(&self.contract, schema));
        *memo = Some((schema.clone(), drift.clone()));
        drift
    }
}

/// A clone starts empty.
#[derive(Default)]
struct DriftMemo(
    Mutex<
        Option<(
            iceberg::spec::SchemaRef,
            Arc<Vec<crate::compat::SchemaChange>>,
        )>,
    >,
);

impl Clone for DriftMemo {
    fn clone(&self) -> DriftMemo {
        DriftMemo::default()
    }
}

impl std::fmt::Debug for DriftMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DriftMemo")
    }
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
                    Some("w" | "week" | "weeks") => n.saturating_mul(7),
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
    /// The SHA-256 of the contract's text.
    digest: [u8; 32],
    /// The contract, or how to read it when first asked for.
    slot: Arc<Slot>,
    /// Taken unvalidated, for the table its text names ([`presumed_key`]).
    presumed: bool,
}

impl Version {
    /// A version read and validated now (`Ok`), or remembered from an earlier load and read when first asked for.
    fn new(
        from: Option<chrono::DateTime<chrono::Utc>>,
        digest: [u8; 32],
        contract: Result<LoadedContract, Pending>,
    ) -> Version {
        let (ready, pending) = match contract {
            Ok(loaded) => (OnceLock::from(Some(Arc::new(loaded))), None),
            Err(pending) => (OnceLock::new(), Some(pending)),
        };
        let pending = Mutex::new(pending);
        let slot = Arc::new(Slot { ready, pending });
        Version {
            from,
            digest,
            slot,
            presumed: false,
        }
    }

    /// The contract. `None` only for a remembered file whose text changed since the load checked it: it then
    /// counts as refused until the next check of the contract files reads it again.
    pub fn loaded(&self) -> Option<Arc<LoadedContract>> {
        self.slot
            .ready
            .get_or_init(|| {
                let pending = self
                    .slot
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()?;
                pending.read(&self.digest).map(Arc::new)
            })
            .clone()
    }

    /// Whether the contract is still to be read (tests).
    #[cfg(test)]
    fn is_pending(&self) -> bool {
        self.slot.ready.get().is_none()
    }
}

/// A version's contract: read and validated, or still to be read from its [`Pending`] source.
#[derive(Debug)]
struct Slot {
    ready: OnceLock<Option<Arc<LoadedContract>>>,
    pending: Mutex<Option<Pending>>,
}

/// A contract file that an earlier load validated and that has not changed since (same size, modification and
/// change times, inode and device; see [`FileIndex`]): its text is read, and its remembered typed form parsed,
/// only when a call first needs the contract. The text read must still have the digest validated before;
/// otherwise the version is left unread (refused) until the next check of the files, which sees the change.
struct Pending {
    path: PathBuf,
    forms: Arc<RememberedForms>,
    /// For a file never validated (see [`presumed_key`]): the contracts folder and the table the load presumed it
    /// governs, undated. The contract read must govern exactly that table, undated, or it counts as refused.
    presumed: Option<(PathBuf, String)>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("path", &self.path).finish()
    }
}

impl Pending {
    fn read(&self, digest: &[u8; 32]) -> Option<LoadedContract> {
        use sha2::Digest as _;
        let yaml = match std::fs::read_to_string(&self.path) {
            Ok(yaml) => yaml,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", self.path.display());
                return None;
            }
        };
        if sha2::Sha256::digest(yaml.as_bytes()).as_slice() != digest {
            tracing::warn!(
                "{} changed since the contract files were checked; it is read again at the next check",
                self.path.display()
            );
            return None;
        }
        // The same text as validated before; a remembered form that no longer reads is validated again.
        let contract = match self
            .forms
            .get(digest)
            .and_then(|json| serde_json::from_str::<Contract>(&json).ok())
        {
            Some(contract) => contract,
            None => parse(&yaml, &self.path)
                .map_err(|e| tracing::warn!("{e}"))
                .ok()?,
        };
        if let Some((root, key)) = &self.presumed {
            let actual = table_key(root, &self.path, &contract);
            if actual != *key || contract.effective_from().is_some() {
                tracing::warn!(
                    "{} governs {actual}, not {key} as read from its text before validating it; it counts as \
                     refused until the contract files are read again",
                    self.path.display()
                );
                return None;
            }
        }
        Some(LoadedContract::new(contract, yaml))
    }
}

/// All contracts under a directory, keyed by `namespace.table`; a table may have several versions, each in force
/// from its [`EFFECTIVE_FROM`] date.
#[derive(Debug, Default)]
pub struct ContractStore {
    by_table: BTreeMap<String, Vec<Version>>,
    /// The state of the files when they were read (see [`FilesState`]).
    pub files: FilesState,
    /// Contracts that failed to load, with the reason; reported, never used.
    pub rejected: Vec<String>,
    /// How many files were taken unvalidated ([`ContractStore::load_presuming`]); validated when first needed.
    pub presumed: usize,
    /// Texts found invalid (or governing another table than their text seemed to name) when presumed before, read
    /// from beside the cache by a presuming load: validated at once instead of presumed again (see [`Refused`]).
    refused: Refused,
}

/// The digests of contract texts a presuming load must not presume: each was presumed once and turned out
/// invalid, or to govern another table than its text seemed to name. Without it, every start on a tree with one
/// invalid file presumed it again and validated the whole tree in the background again. Kept beside the
/// validated-contracts cache (`contract-refused`), under the same first line (the ODCS schema and typed form it
/// was judged by), the newest [`Refused::KEPT`].
#[derive(Debug, Default, Clone)]
struct Refused {
    newest_last: Vec<[u8; 32]>,
    set: std::collections::HashSet<[u8; 32]>,
}

impl Refused {
    const FILE: &str = "contract-refused";
    const KEPT: usize = 4096;

    fn path(cache: &Path) -> PathBuf {
        cache.with_file_name(Refused::FILE)
    }

    fn read(cache: &Path) -> Refused {
        let Ok(text) = std::fs::read_to_string(Refused::path(cache)) else {
            return Refused::default();
        };
        let mut lines = text.lines();
        if lines.next() != Some(ValidatedCache::header()) {
            return Refused::default();
        }
        let mut refused = Refused::default();
        refused.push(lines.filter_map(|l| {
            let mut d = [0u8; 32];
            hex::decode_to_slice(l, &mut d).ok().map(|_| d)
        }));
        refused
    }

    fn contains(&self, digest: &[u8; 32]) -> bool {
        self.set.contains(digest)
    }

    /// Adds the digests not held yet, newest last; whether any was new.
    fn push(&mut self, digests: impl IntoIterator<Item = [u8; 32]>) -> bool {
        let before = self.newest_last.len();
        for d in digests {
            if self.set.insert(d) {
                self.newest_last.push(d);
            }
        }
        self.newest_last.len() > before
    }

    /// Adds `digests` (newest last) and writes what is kept; nothing when none is new.
    fn add(mut self, cache: &Path, digests: impl IntoIterator<Item = [u8; 32]>) {
        if !self.push(digests) {
            return;
        }
        let drop = self.newest_last.len().saturating_sub(Refused::KEPT);
        self.newest_last.drain(..drop);
        crate::demo::remember(
            &Refused::path(cache),
            "the refused contract texts",
            "the next start presumes them again",
            |out| {
                use std::io::Write as _;
                writeln!(out, "{}", ValidatedCache::header())?;
                for d in &self.newest_last {
                    writeln!(out, "{}", hex::encode(d))?;
                }
                Ok(())
            },
        );
    }
}

impl ContractStore {
    /// Loads `<dir>/<namespace>/<table>.yaml` files. The table is the contract's first `schema[].physicalName`
    /// when set, else the file's place in the tree. Invalid contracts are logged and listed in `rejected`.
    pub fn load(dir: &Path) -> ContractStore {
        ContractStore::load_cached(dir, None)
    }

    /// [`ContractStore::load`], remembering validated contracts in `cache` (a file; see [`ValidatedCache`]): a
    /// file whose exact text was validated before is read back from its typed form instead of parsed and
    /// validated again. Beside it (`contract-files`, see [`FileIndex`]) each valid file's size, times, inode,
    /// digest, table and date are remembered: a file unchanged since is not read at all until a call needs its
    /// contract. Both are rewritten when this load found anything new or dropped anything old.
    pub fn load_cached(dir: &Path, cache: Option<&Path>) -> ContractStore {
        ContractStore::load_with(dir, cache, false)
    }

    /// [`ContractStore::load_cached`] for a server's first start on a contract tree: a file neither the cache
    /// vouches for nor validated before is not parsed and validated now (100,000 took 6-8 s) but taken for the
    /// table its text names ([`presumed_key`]), and validated when a call first needs it. Whatever it turns out
    /// to be — invalid, or governing another table — it then counts as refused (its table unclassified, the
    /// restrictive default), never as another contract. `presumed` counts such files: a load that validates
    /// (`load_cached`) should follow soon, to report refusals and remember the contracts for the next start.
    pub fn load_presuming(dir: &Path, cache: Option<&Path>) -> ContractStore {
        ContractStore::load_with(dir, cache, cache.is_some())
    }

    fn load_with(dir: &Path, cache: Option<&Path>, presume: bool) -> ContractStore {
        let mut store = ContractStore::default();
        let mut files = Vec::new();
        collect_yaml(dir, &mut files);
        files.sort();
        let remembered = cache.map(ValidatedCache::read).unwrap_or_default();
        let refused = cache
            .filter(|_| presume)
            .map(Refused::read)
            .unwrap_or_default();
        let remember = cache.is_some();
        let index_path = cache.map(|c| c.with_file_name(FileIndex::FILE));
        let index = index_path
            .as_deref()
            .map(|p| FileIndex::read(p, dir))
            .unwrap_or_default();
        let checked_at = FileIndex::now_ns();
        // Reading, parsing and validating are independent per file: spread over the cores (100,000 contracts took
        // ~8 s on one), then kept in file order, so which version wins does not depend on the threads. A thread that
        // panics leaves its tables unclassified, the restrictive default.
        let read = crate::parallel::filter_map_chunks(&files, 256, "loading contracts", |path| {
            // The file's state is taken before its text: a change in between is seen by the next check.
            let stamp = FileStamp::of(path);
            let presume = presume.then_some(&refused);
            let loaded = load_file(dir, path, stamp, &remembered, &index, remember, presume);
            Some(((path.clone(), stamp), loaded))
        });
        // Remember what validated now, forget texts no file holds any more.
        let mut known = std::collections::HashSet::new();
        let mut new = Vec::new();
        let mut entries = Vec::new();
        let mut unread = 0;
        let mut presumed = 0;
        let mut state = Vec::with_capacity(read.len());
        let read: Vec<_> = read
            .into_iter()
            .map(|(stamp, result)| {
                state.push(stamp);
                result.map(|file| {
                    match file.remembered {
                        Remembered::Known(digest) => _ = known.insert(digest),
                        Remembered::New(digest, Some(json)) => new.push((digest, json)),
                        Remembered::New(_, None) => {}
                    }
                    unread += usize::from(file.unread);
                    presumed += usize::from(file.presumed);
                    entries.extend(file.entry);
                    (file.key, file.version)
                })
            })
            .collect();
        // A cache without a readable list of its forms (written by an older build) is rewritten with one.
        let unlisted = cfg!(unix) && remembered.text.is_some();
        if let Some(path) = cache
            && (!new.is_empty() || known.len() != remembered.forms.entries.len() || unlisted)
        {
            remembered.write(path, &known, &new);
        }
        if let Some(path) = index_path
            && (unread != entries.len() || unread != index.entries.len())
        {
            FileIndex::write(&path, dir, checked_at, &entries);
        }
        store.files = FilesState(state);
        store.presumed = presumed;
        store.refused = refused;
        for result in read {
            match result {
                Ok((key, version)) => {
                    let versions = store.by_table.entry(key).or_default();
                    versions.push(version);
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

    /// Validates every version this store took unvalidated ([`ContractStore::load_presuming`]), on all cores —
    /// sharing the work with the calls that needed some meanwhile — and remembers the valid ones in `cache`, so
    /// that the validating load that follows reads them back instead of validating them again, and the refused
    /// ones beside it (see [`Refused`]), so that the next start validates them at once instead of presuming them
    /// again. Returns how many valid ones it remembered.
    pub fn remember_presumed(&self, cache: &Path) -> usize {
        let versions: Vec<&Version> = self
            .by_table
            .values()
            .flatten()
            .filter(|v| v.presumed)
            .collect();
        let judged =
            crate::parallel::filter_map_chunks(&versions, 64, "validating contracts", |v| {
                let json = v
                    .loaded()
                    .and_then(|l| serde_json::to_string(&l.contract).ok());
                Some((v.digest, json))
            });
        let (valid, refused): (Vec<_>, Vec<_>) =
            judged.into_iter().partition(|(_, json)| json.is_some());
        self.refused
            .clone()
            .add(cache, refused.into_iter().map(|(digest, _)| digest));
        let mut new: Vec<([u8; 32], String)> = valid
            .into_iter()
            .filter_map(|(digest, json)| Some((digest, json?)))
            .collect();
        new.sort_unstable_by_key(|(digest, _)| *digest);
        new.dedup_by_key(|(digest, _)| *digest);
        if !new.is_empty() {
            let remembered = ValidatedCache::read(cache);
            let keep = remembered.forms.entries.keys().copied().collect();
            remembered.write(cache, &keep, &new);
        }
        new.len()
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
            .find(|v| v.from.is_none_or(|from| from <= now))?
            // A version in force that can no longer be read leaves the table unclassified (the restrictive
            // default) until the next check of the files, never an older version in force.
            .loaded()
    }

    /// The tables whose contract versions differ between `self` and `other` (added, removed or edited).
    pub fn changed_tables(&self, other: &ContractStore) -> Vec<String> {
        let texts = |store: &ContractStore, table: &str| -> Vec<[u8; 32]> {
            store.versions(table).iter().map(|v| v.digest).collect()
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
    yaml: String,
    digest: [u8; 32],
    cache: &ValidatedCache,
    remember: bool,
) -> Result<(String, Contract, String, Remembered), ContractError> {
    // A remembered form that no longer reads (a damaged cache) is validated again, as a new text is.
    if let Some(contract) = cache
        .get(&digest)
        .and_then(|json| serde_json::from_str::<Contract>(&json).ok())
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

/// One contract file as [`ContractStore::load_cached`] found it.
struct LoadedFile {
    /// The table it governs.
    key: String,
    version: Version,
    remembered: Remembered,
    /// What to remember of the file for the next load (none for a file whose state could not be read).
    entry: Option<(String, FileEntry)>,
    /// Whether it was taken from the [`FileIndex`] unread.
    unread: bool,
    /// Whether it was taken unvalidated, for the table its text names ([`presumed_key`]).
    presumed: bool,
}

/// Loads one contract file: unread when the [`FileIndex`] vouches for it and its typed form is remembered, else
/// read (and validated unless its text was validated before, or `presume` lets [`presumed_key`] name its table).
fn load_file(
    root: &Path,
    path: &Path,
    stamp: Option<FileStamp>,
    cache: &ValidatedCache,
    index: &FileIndex,
    remember: bool,
    presume: Option<&Refused>,
) -> Result<LoadedFile, ContractError> {
    let relative = path
        .strip_prefix(root)
        .ok()
        .and_then(Path::to_str)
        // Only a load that remembers looks files up in the index or remembers them.
        .filter(|p| remember && !p.contains(['\t', '\n']))
        .map(str::to_string);
    if let (Some(stamp), Some(relative)) = (stamp, &relative)
        && let Some(entry) = index.vouches(relative, &stamp)
        && cache.forms.entries.contains_key(&entry.digest)
    {
        return Ok(LoadedFile {
            key: entry.key.clone(),
            version: Version::new(
                entry.from,
                entry.digest,
                Err(Pending {
                    path: path.to_path_buf(),
                    forms: cache.forms.clone(),
                    presumed: None,
                }),
            ),
            remembered: Remembered::Known(entry.digest),
            entry: Some((relative.clone(), entry.clone())),
            unread: true,
            presumed: false,
        });
    }
    use sha2::Digest as _;
    let yaml = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let digest: [u8; 32] = sha2::Sha256::digest(yaml.as_bytes()).into();
    if let Some(refused) = presume
        && !refused.contains(&digest)
        && !cache.forms.entries.contains_key(&digest)
        && let Some(key) = presumed_key(root, path, &yaml)
    {
        return Ok(LoadedFile {
            version: Version {
                presumed: true,
                ..Version::new(
                    None,
                    digest,
                    Err(Pending {
                        path: path.to_path_buf(),
                        forms: cache.forms.clone(),
                        presumed: Some((root.to_path_buf(), key.clone())),
                    }),
                )
            },
            key,
            remembered: Remembered::New(digest, None),
            entry: None,
            unread: false,
            presumed: true,
        });
    }
    let (key, contract, yaml, remembered) =
        read_contract_cached(root, path, yaml, digest, cache, remember)?;
    let digest = match &remembered {
        Remembered::Known(d) | Remembered::New(d, _) => *d,
    };
    let from = contract.effective_from();
    let entry = stamp
        .zip(relative)
        .filter(|_| !key.contains(['\t', '\n']))
        .map(|(stamp, relative)| {
            let entry = FileEntry {
                stamp,
                digest,
                key: key.clone(),
                from,
            };
            (relative, entry)
        });
    Ok(LoadedFile {
        key,
        version: Version::new(from, digest, Ok(LoadedContract::new(contract, yaml))),
        remembered,
        entry,
        unread: false,
        presumed: false,
    })
}

/// The state of every contract file under a folder, in path order: a check for edits compares two.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FilesState(Vec<(PathBuf, Option<FileStamp>)>);

impl FilesState {
    /// The files under `dir` as they are now.
    pub fn of(dir: &Path) -> FilesState {
        let mut files = Vec::new();
        collect_yaml(dir, &mut files);
        files.sort();
        FilesState(
            files
                .into_iter()
                .map(|path| {
                    let stamp = FileStamp::of(&path);
                    (path, stamp)
                })
                .collect(),
        )
    }
}

/// What tells a file's content changed without reading it: its size, modification and change times (the change
/// time cannot be set back from user space), inode and device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified_ns: i128,
    changed_ns: i128,
    inode: u64,
    device: u64,
}

impl FileStamp {
    /// The state of the file at `path` (links followed, as reading does); `None` where it cannot be told.
    #[cfg(unix)]
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(FileStamp {
            len: meta.size(),
            modified_ns: ns(meta.mtime(), meta.mtime_nsec()),
            changed_ns: ns(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            device: meta.dev(),
        })
    }

    /// Size and modification time only: enough to see edits, never enough for [`FileIndex`] to vouch.
    #[cfg(not(unix))]
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Some(FileStamp {
            len: meta.len(),
            modified_ns: modified.as_nanos() as i128,
            changed_ns: 0,
            inode: 0,
            device: 0,
        })
    }
}

/// A remembered contract file: its state when read, the digest of the text it then held, the table it governs
/// and the date its version takes effect.
#[derive(Debug, Clone)]
struct FileEntry {
    stamp: FileStamp,
    digest: [u8; 32],
    key: String,
    from: Option<chrono::DateTime<chrono::Utc>>,
}

/// The valid contract files of the last load (`<cache>/contract-files`), by path under the contracts folder: a
/// file in exactly the remembered state holds the remembered text, so a restart need not read 100,000 files
/// before it answers. A file modified within [`FileIndex::RACY_NS`] of the load that remembered it is never
/// vouched for (a later write in the same clock tick would keep its modification time). The first line names
/// the format and the contracts folder; another first line ignores the file whole. Trusted as the data dir is;
/// written aside and renamed.
#[derive(Default)]
struct FileIndex {
    /// When the load that wrote it began looking at the files, ns since the epoch.
    checked_ns: i128,
    entries: std::collections::HashMap<String, FileEntry>,
}

impl FileIndex {
    const FILE: &str = "contract-files";
    const RACY_NS: i128 = 2_000_000_000;

    fn now_ns() -> i128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128)
    }

    fn header(dir: &Path) -> String {
        format!("parley contract files 1 {}", dir.display())
    }

    /// The entry for `relative` when the file is in exactly its remembered state and was not written in the
    /// moments before it was remembered.
    fn vouches(&self, relative: &str, stamp: &FileStamp) -> Option<&FileEntry> {
        let entry = self.entries.get(relative)?;
        let settled = self.checked_ns - FileIndex::RACY_NS;
        (cfg!(unix)
            && entry.stamp == *stamp
            && stamp.modified_ns < settled
            && stamp.changed_ns < settled)
            .then_some(entry)
    }

    /// The index at `path` for the contracts under `dir`; empty when absent, unreadable or for another folder.
    fn read(path: &Path, dir: &Path) -> FileIndex {
        let Ok(text) = std::fs::read_to_string(path) else {
            return FileIndex::default();
        };
        let mut lines = text.lines();
        let Some((checked, header)) = lines.next().and_then(|l| l.split_once(' ')) else {
            return FileIndex::default();
        };
        let Ok(checked_ns) = checked.parse::<i128>() else {
            return FileIndex::default();
        };
        if header != FileIndex::header(dir) {
            return FileIndex::default();
        }
        let entries = lines
            .filter_map(|line| {
                let f: Vec<&str> = line.splitn(9, '\t').collect();
                let [
                    digest,
                    len,
                    modified,
                    changed,
                    inode,
                    device,
                    from,
                    key,
                    relative,
                ] = f[..]
                else {
                    return None;
                };
                let mut d = [0u8; 32];
                hex::decode_to_slice(digest, &mut d).ok()?;
                let from = match from {
                    "-" => None,
                    t => Some(chrono::DateTime::parse_from_rfc3339(t).ok()?.to_utc()),
                };
                let entry = FileEntry {
                    stamp: FileStamp {
                        len: len.parse().ok()?,
                        modified_ns: modified.parse().ok()?,
                        changed_ns: changed.parse().ok()?,
                        inode: inode.parse().ok()?,
                        device: device.parse().ok()?,
                    },
                    digest: d,
                    key: key.to_string(),
                    from,
                };
                Some((relative.to_string(), entry))
            })
            .collect();
        FileIndex {
            checked_ns,
            entries,
        }
    }

    /// Replaces the index at `path`; a failure is logged (the next load reads every file).
    fn write(path: &Path, dir: &Path, checked_ns: i128, entries: &[(String, FileEntry)]) {
        use std::io::Write as _;
        crate::demo::remember(
            path,
            "the contract files",
            "the next start reads them all",
            |out| {
                writeln!(out, "{checked_ns} {}", FileIndex::header(dir))?;
                for (relative, e) in entries {
                    let s = &e.stamp;
                    let from = e.from.map_or_else(|| "-".to_string(), |t| t.to_rfc3339());
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{from}\t{}\t{relative}",
                        hex::encode(e.digest),
                        s.len,
                        s.modified_ns,
                        s.changed_ns,
                        s.inode,
                        s.device,
                        e.key
                    )?;
                }
                Ok(())
            },
        );
    }
}

/// Contracts validated before, by the SHA-256 of their exact text, in their typed form (JSON): reading one back
/// costs a fraction of parsing its YAML and validating it against the ODCS schema. Valid only for the same
/// schema and the same typed form — the file's first line names both (the ODCS schema's digest and that of
/// [`Contract`]'s own JSON Schema), and a file with another first line is ignored whole. A contract that failed
/// validation is never remembered (it is validated again on every load, and its message stays the server's own).
/// The file is only ever replaced whole (written aside, then renamed), so a reader sees one complete version.
///
/// Layout: the first line, a line `<digest>\t<typed form>` per contract, then where each typed form is (a line
/// `<digest> <start> <length>` each, no tab) and a last line `positions <where that list starts> <entries>`. A
/// load reads the list and the forms only when they are needed (a restart on 100,000 contracts would otherwise
/// read 142 MB before its first answer); a file whose list does not read is scanned whole instead, and a form read
/// by its position must be on its digest's own line, else its contract is validated again.
#[derive(Default)]
struct ValidatedCache {
    /// The file's text, when it was read whole (a file without a readable list, or not on unix); else the forms
    /// are read from the file.
    text: Option<String>,
    /// The file, still open, and where each remembered typed form is in it (and in `text`).
    forms: Arc<RememberedForms>,
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
        let Ok(file) = std::fs::File::open(path) else {
            return ValidatedCache::default();
        };
        match ValidatedCache::positions(&file) {
            Some(Some(entries)) => ValidatedCache {
                text: None,
                forms: Arc::new(RememberedForms {
                    file: Some(file),
                    entries,
                }),
            },
            Some(None) => ValidatedCache::default(),
            None => ValidatedCache::scan(file),
        }
    }

    /// Where each typed form is, from the list at the end of `file`: `Some(None)` when the file is for another
    /// schema or typed form, `None` when the list cannot be read (the file is then scanned whole).
    #[cfg(unix)]
    fn positions(file: &std::fs::File) -> Option<Option<FormPositions>> {
        use std::os::unix::fs::FileExt as _;
        let read_at = |start: u64, len: usize| {
            let mut bytes = vec![0; len];
            file.read_exact_at(&mut bytes, start).ok().map(|()| bytes)
        };
        let size = file.metadata().ok()?.len();
        let header = ValidatedCache::header();
        let first = read_at(0, (header.len() + 1).min(size as usize))?;
        if first.strip_suffix(b"\n") != Some(header.as_bytes()) {
            return Some(None);
        }
        let tail_len = size.min(64);
        let tail = read_at(size - tail_len, tail_len as usize)?;
        let tail = std::str::from_utf8(tail.strip_suffix(b"\n")?).ok()?;
        let last = tail.rsplit('\n').next()?;
        let mut words = last.strip_prefix("positions ")?.split(' ');
        let list_at: u64 = words.next()?.parse().ok()?;
        let count: usize = words.next()?.parse().ok()?;
        let list_end = size - last.len() as u64 - 1;
        let body = (header.len() + 1) as u64;
        if words.next().is_some() || list_at < body || list_at > list_end {
            return None;
        }
        let list = read_at(list_at, (list_end - list_at) as usize)?;
        let list = std::str::from_utf8(&list).ok()?;
        // Room for what the list can hold (an entry's line is at least 69 bytes), whatever its last line claims.
        let mut entries = std::collections::HashMap::with_capacity(count.min(list.len() / 69));
        for line in list.lines() {
            let mut words = line.split(' ');
            let mut key = [0u8; 32];
            hex::decode_to_slice(words.next()?, &mut key).ok()?;
            let start: usize = words.next()?.parse().ok()?;
            let len: usize = words.next()?.parse().ok()?;
            if words.next().is_some()
                || (start as u64) < body
                || start.checked_add(len)? as u64 > list_at
            {
                return None;
            }
            entries.insert(key, start..start + len);
        }
        (entries.len() == count).then_some(Some(entries))
    }

    /// Elsewhere the file is read whole.
    #[cfg(not(unix))]
    fn positions(_: &std::fs::File) -> Option<Option<FormPositions>> {
        None
    }

    /// The cache read whole from `file`, each line taken for what it says.
    fn scan(mut file: std::fs::File) -> ValidatedCache {
        use std::io::{Read as _, Seek as _};
        let mut text = String::new();
        // From the start, wherever a handle sharing this one's offset left it.
        if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
            return ValidatedCache::default();
        }
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
        let file = Some(file);
        let forms = Arc::new(RememberedForms { file, entries });
        ValidatedCache {
            text: Some(text),
            forms,
        }
    }

    /// The typed form remembered for the text with `digest`.
    fn get(&self, digest: &[u8; 32]) -> Option<std::borrow::Cow<'_, str>> {
        match &self.text {
            Some(text) => {
                let range = self.forms.entries.get(digest)?;
                text.get(range.clone()).map(std::borrow::Cow::Borrowed)
            }
            None => self.forms.get(digest).map(std::borrow::Cow::Owned),
        }
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
        let then = "the next start validates them again";
        // The kept forms come from the text, read whole once when this cache was read by its list.
        let whole = match (&self.text, &self.forms.file) {
            (None, Some(file)) => file.try_clone().ok().map(ValidatedCache::scan),
            _ => None,
        };
        let this = whole.as_ref().unwrap_or(self);
        crate::demo::remember(path, "validated contracts", then, |out| {
            let header = ValidatedCache::header();
            writeln!(out, "{header}")?;
            let mut at = header.len() + 1;
            let mut positions = Vec::with_capacity(keep.len() + new.len());
            let kept = keep
                .iter()
                .filter_map(|digest| Some((digest, this.get(digest)?)));
            let new = new
                .iter()
                .map(|(d, json)| (d, std::borrow::Cow::Borrowed(json.as_str())));
            for (digest, json) in kept.chain(new) {
                let digest = hex::encode(digest);
                writeln!(out, "{digest}\t{json}")?;
                positions.push((digest.clone(), at + digest.len() + 1, json.len()));
                at += digest.len() + 1 + json.len() + 1;
            }
            for (digest, start, len) in &positions {
                writeln!(out, "{digest} {start} {len}")?;
            }
            writeln!(out, "positions {at} {}", positions.len())
        });
    }
}

/// Where each remembered typed form is in the cache file, by the digest of its contract's text.
type FormPositions = std::collections::HashMap<[u8; 32], Range<usize>>;

/// The typed forms of a [`ValidatedCache`] without its text (142 MB for 100,000 contracts): each is read from the
/// file when a pending version is first read, through the handle the cache was read from — a cache rewritten since
/// (renamed over it) leaves that handle on the text the positions were taken from.
#[derive(Default)]
struct RememberedForms {
    file: Option<std::fs::File>,
    entries: FormPositions,
}

impl RememberedForms {
    /// The typed form remembered for the text with `digest`; `None` when it cannot be read back. The whole line is
    /// read and must be the one written for `digest` (the digest, a tab, the form, a newline): positions that point
    /// elsewhere — a damaged list, two entries swapped — read as no form, and the contract is validated again.
    #[cfg(unix)]
    fn get(&self, digest: &[u8; 32]) -> Option<String> {
        use std::os::unix::fs::FileExt as _;
        let range = self.entries.get(digest)?;
        let prefix = format!("{}\t", hex::encode(digest));
        let start = range.start.checked_sub(prefix.len())?;
        let mut bytes = vec![0; prefix.len() + range.len() + 1];
        self.file
            .as_ref()?
            .read_exact_at(&mut bytes, start as u64)
            .ok()?;
        if !bytes.starts_with(prefix.as_bytes()) || bytes.pop() != Some(b'\n') {
            return None;
        }
        bytes.drain(..prefix.len());
        String::from_utf8(bytes).ok()
    }

    /// Elsewhere a pending version is validated again instead.
    #[cfg(not(unix))]
    fn get(&self, _: &[u8; 32]) -> Option<String> {
        None
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

/// The table a contract file's text names, read without parsing it: the first `physicalName` of the objects in
/// its top-level `schema` list, else its place under `root` — as [`table_key`] finds it once the file is parsed,
/// for the plain block style contracts are written in. `None` (the file is then validated at once) for a text
/// this does not read with confidence: another style for `schema`, a `physicalName` value that is not a plain
/// or simply quoted scalar, escapes, tabs, several documents — or one that may date its version
/// ([`EFFECTIVE_FROM`]), since a date decides which version is in force. A wrong guess is still caught:
/// [`Pending`] compares it with the parsed contract.
fn presumed_key(root: &Path, path: &Path, yaml: &str) -> Option<String> {
    if yaml.contains(['\\', '\t']) || yaml.contains(EFFECTIVE_FROM) {
        return None;
    }
    fn uncommented(text: &str) -> &str {
        text.find(" #").map_or(text, |i| &text[..i]).trim_end()
    }
    let mut in_schema = false;
    let mut seen_schema = false;
    // The column of the list's dashes, and of the keys of the object being read.
    let mut dash: Option<usize> = None;
    let mut keys = 0;
    for line in yaml.lines() {
        let content = line.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if line.starts_with("---") || line.starts_with("...") || line.starts_with('%') {
            return None;
        }
        let indent = line.len() - content.len();
        let item = content == "-" || content.starts_with("- ");
        if indent == 0 && !item {
            // A top-level key ends the schema list.
            if in_schema {
                break;
            }
            if uncommented(content) == "schema:" {
                in_schema = true;
                seen_schema = true;
            }
            continue;
        }
        if !in_schema {
            continue;
        }
        let key_line = if item {
            match dash {
                None => dash = Some(indent),
                Some(d) if d != indent => {
                    if indent < d {
                        return None;
                    }
                    // A dash deeper in: a nested list.
                    continue;
                }
                Some(_) => {}
            }
            let rest = content[1..].trim_start_matches(' ');
            keys = line.len() - rest.len();
            if rest.is_empty() {
                return None;
            }
            rest
        } else {
            match dash {
                Some(d) if indent > d && indent == keys => content,
                Some(d) if indent > d => continue,
                // Something other than a list under `schema`.
                _ => return None,
            }
        };
        if key_line.starts_with(['?', '<', '&', '!', '*', '{', '[', '"', '\'']) {
            return None;
        }
        if let Some(value) = key_line.strip_prefix("physicalName:") {
            let value = uncommented(value.trim_start_matches(' '));
            let unquoted = match value.chars().next() {
                Some(q @ ('\'' | '"')) => {
                    let inner = value.strip_prefix(q)?.strip_suffix(q)?;
                    if inner.contains(q) {
                        return None;
                    }
                    inner.to_string()
                }
                // A plain scalar (not null, which would leave the table to the file's place).
                Some(c)
                    if !"&*!|>[]{}@`%#,~".contains(c)
                        && !value.contains(": ")
                        && !value.eq_ignore_ascii_case("null") =>
                {
                    value.to_string()
                }
                _ => return None,
            };
            if unquoted.is_empty() {
                return None;
            }
            return Some(unquoted);
        }
    }
    // No `physicalName` read: the place in the tree decides, unless the text names one in a way not read above.
    if (!seen_schema && yaml.contains("schema")) || yaml.contains("physicalName") {
        return None;
    }
    Some(table_key_from_path(root, path))
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

    /// Nested brackets cost the YAML scanner their tokens times their depth: a document of them is refused before
    /// the scanner sees it, while the same contract written as JSON (its brackets read by serde_json) parses as it
    /// does in YAML.
    #[test]
    fn deeply_nested_flow_collections_are_refused_before_the_yaml_parser() {
        let n = 200_000;
        let bomb = format!("x: {}{}\n", "[".repeat(n), "]".repeat(n));
        let started = std::time::Instant::now();
        let e = parse(&bomb, Path::new("bomb.yaml"))
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{e}");
        assert!(
            e.contains("200000 flow collections") && e.contains("block style"),
            "{e}"
        );
        let deep_json = format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        let e = parse(&deep_json, Path::new("bomb.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not valid JSON (recursion limit exceeded")
                && e.contains("flow collections"),
            "{e}"
        );

        let yaml = include_str!("../examples/contracts/sales/customers.yaml");
        let value: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let json = serde_json::to_string_pretty(&value).unwrap();
        assert!(json.bytes().filter(|b| matches!(b, b'[' | b'{')).count() > 8);
        let (a, b) = (
            parse(yaml, Path::new("c.yaml")).unwrap(),
            parse(&json, Path::new("c.json")).unwrap(),
        );
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

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
        let versions: Vec<String> = store
            .versions("sales.orders")
            .iter()
            .map(|v| v.loaded().unwrap().contract.version.clone())
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
                        let typed = serde_json::to_string(&v.loaded().unwrap().contract).unwrap();
                        (v.loaded().unwrap().yaml.clone(), typed)
                    })
                    .collect();
                (t.to_string(), versions)
            })
            .collect()
    }

    /// The table read from a contract's text without parsing it is the one parsing finds, for the block style
    /// contracts are written in; any other style, or a text that may date its version, is left to validation.
    #[test]
    fn the_table_a_contract_names_is_read_from_its_text_only_when_that_is_certain() {
        let root = Path::new("/c");
        let path = Path::new("/c/ns/file.yaml");
        let head = "apiVersion: v3.1.0\nkind: DataContract\nid: x\n";
        let presumed = |body: &str| presumed_key(root, path, &format!("{head}{body}"));
        let named = |body: &str, table: &str| {
            assert_eq!(presumed(body).as_deref(), Some(table), "{body}");
        };
        named(
            "schema:\n  - name: t\n    physicalName: sales.orders\n",
            "sales.orders",
        );
        named(
            "schema:\n- name: t\n  physicalName: a.b # the table\n",
            "a.b",
        );
        named("schema:\n  - physicalName: 'q.t'\n    name: t\n", "q.t");
        named(
            "schema:\n  -   name: t\n      physicalName: \"d.t\"\n",
            "d.t",
        );
        // The first object that has one; a property's own physicalName is not the table's.
        named(
            "schema:\n  - name: a\n    properties:\n      - name: c\n        physicalName: col\n  - name: b\n    \
             physicalName: second.one\n",
            "second.one",
        );
        // No physicalName at all: the file's place in the tree.
        named(
            "schema:\n  - name: t\n    properties: []\ndescription: x\n",
            "ns.file",
        );
        named("description: nothing else\n", "ns.file");
        for body in [
            // Another style, or a value that is not a plain scalar.
            "schema: [{name: t, physicalName: a.b}]\n",
            "schema:\n  - {name: t, physicalName: a.b}\n",
            "\"schema\":\n  - name: t\n    physicalName: a.b\n",
            "schema:\n  - name: t\n    \"physicalName\": a.b\n",
            "schema:\n  - name: t\n    physicalName: *alias\n",
            "schema:\n  - name: t\n    physicalName: &a a.b\n",
            "schema:\n  - name: t\n    physicalName: |\n      a.b\n",
            "schema:\n  - name: t\n    physicalName:\n",
            "schema:\n  - name: t\n    physicalName: null\n",
            "schema:\n  - name: t\n    physicalName: ~\n",
            "schema:\n  - name: t\n    physicalName: 'it''s'\n",
            "schema:\n  - name: t\n    <<: *defaults\n",
            "schema:\n  - name: t\n    ? physicalName\n    : a.b\n",
            "schema:\n  name: t\n  physicalName: a.b\n",
            // Only a property names a physicalName: validated, as the rule above cannot see all of it.
            "schema:\n  - name: t\n    properties:\n      - name: c\n        physicalName: col\n",
            // Escapes, tabs, documents, a date.
            "schema:\n  - name: t\n    physicalName: \"a\\x2eb\"\n",
            "schema:\n  - name: t\n\tphysicalName: a.b\n",
            "---\nschema:\n  - name: t\n    physicalName: a.b\n",
            "schema:\n  - name: t\n    physicalName: a.b\ncustomProperties:\n  - property: effectiveFrom\n    \
             value: 2026-01-01T00:00:00Z\n",
        ] {
            assert_eq!(presumed(body), None, "{body}");
        }
    }

    /// A first start takes the contract files it never validated for the table their text names, and validates
    /// each when a call first needs it: it then governs exactly what a validating load finds; one that does not
    /// validate, or that governs another table than its text seemed to name, counts as refused (its table
    /// unclassified), never as another contract. The presuming load remembers nothing; the validating load
    /// that follows remembers all, and the next start presumes nothing.
    #[test]
    fn a_first_start_validates_contracts_when_first_needed_and_a_wrong_guess_counts_as_refused() {
        let (dir, contracts) = demo_tree();
        let (_, orders) = crate::demo::CONTRACTS
            .iter()
            .find(|(name, _)| name.ends_with("orders.yaml"))
            .unwrap();
        std::fs::create_dir_all(contracts.join("extra")).unwrap();
        // Does not validate (an unknown key), under a name of its own.
        std::fs::write(
            contracts.join("extra/broken.yaml"),
            format!(
                "{}\nfavouriteColour: blue\n",
                orders.replace("physicalName: sales.orders", "physicalName: extra.broken")
            ),
        )
        .unwrap();
        // A quoted description spanning lines, one of which reads like a physicalName: the text seems to name
        // `extra.decoy`, the contract governs `extra.real`.
        let fooled = orders.replace(
            "    physicalName: sales.orders\n",
            "    description: \"spans\n    physicalName: extra.decoy\n    lines\"\n    physicalName: extra.real\n",
        );
        assert_ne!(fooled, *orders);
        let fooled = fooled.replacen("    description: One row per order.\n", "", 1);
        std::fs::write(contracts.join("extra/fooled.yaml"), &fooled).unwrap();
        let plain = ContractStore::load(&contracts);
        assert_eq!(plain.rejected.len(), 1, "{:?}", plain.rejected);
        assert!(plain.get("extra.real").is_some(), "the decoy is valid YAML");
        assert!(plain.get("extra.decoy").is_none());

        let cache = dir.path().join("cache/validated");
        std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
        let first = ContractStore::load_presuming(&contracts, Some(&cache));
        assert_eq!(first.presumed, crate::demo::CONTRACTS.len() + 2);
        assert!(first.rejected.is_empty());
        for table in first.tables() {
            assert!(
                first.versions(table).iter().all(Version::is_pending),
                "{table}"
            );
        }
        // Valid contracts read as a validating load reads them.
        for table in plain.tables() {
            if table != "extra.real" {
                assert_eq!(
                    first.get(table).map(|c| c.yaml.clone()),
                    plain.get(table).map(|c| c.yaml.clone()),
                    "{table}"
                );
            }
        }
        // The invalid one and the wrong guess count as refused; the table the decoy really governs is, until the
        // next load, without its contract (unclassified).
        assert!(first.get("extra.broken").is_none());
        assert!(first.get("extra.decoy").is_none());
        assert!(first.get("extra.real").is_none());
        assert_eq!(
            std::fs::read_dir(cache.parent().unwrap()).unwrap().count(),
            0,
            "nothing remembered before validating"
        );

        // Validating what was presumed remembers the valid ones, and the load after reads them back.
        assert_eq!(
            first.remember_presumed(&cache),
            crate::demo::CONTRACTS.len()
        );
        assert_eq!(
            ValidatedCache::read(&cache).forms.entries.len(),
            crate::demo::CONTRACTS.len()
        );
        let full = ContractStore::load_cached(&contracts, Some(&cache));
        assert_eq!(contents(&full), contents(&plain));
        assert_eq!(full.rejected, plain.rejected);
        let next = ContractStore::load_presuming(&contracts, Some(&cache));
        assert_eq!(
            next.presumed, 0,
            "every valid file is vouched for; the invalid one is refused at once, not presumed again"
        );
        assert_eq!(next.rejected.len(), 1, "{:?}", next.rejected);
        assert!(
            next.rejected[0].contains("broken.yaml"),
            "{:?}",
            next.rejected
        );
        for table in plain.tables() {
            assert_eq!(
                next.get(table).map(|c| c.yaml.clone()),
                plain.get(table).map(|c| c.yaml.clone()),
                "{table}"
            );
        }
        assert!(next.get("extra.broken").is_none());
        // Mended, its new text is presumed (and valid) like any new text.
        let broken = std::fs::read_to_string(contracts.join("extra/broken.yaml")).unwrap();
        std::fs::write(
            contracts.join("extra/broken.yaml"),
            broken.replace("favouriteColour: blue\n", ""),
        )
        .unwrap();
        let mended = ContractStore::load_presuming(&contracts, Some(&cache));
        assert_eq!(mended.presumed, 1);
        assert!(mended.rejected.is_empty(), "{:?}", mended.rejected);
        assert!(mended.get("extra.broken").is_some());
        // Without a cache (a plain load) nothing is presumed.
        assert_eq!(ContractStore::load_presuming(&contracts, None).presumed, 0);
    }

    /// A temporary folder holding the demo's contracts in `contracts/`.
    fn demo_tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let contracts = dir.path().join("contracts");
        crate::demo::write_contracts(&contracts).unwrap();
        (dir, contracts)
    }

    /// Edits the typed form `cache` remembers for `text` to name another version.
    fn remember_version(cache: &Path, text: &str, version: &str) {
        let digest: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(text.as_bytes()).into()
        };
        let remembered = ValidatedCache::read(cache);
        let mut typed: serde_json::Value =
            serde_json::from_str(&remembered.get(&digest).unwrap()).unwrap();
        typed["version"] = version.into();
        let keep = remembered
            .forms
            .entries
            .keys()
            .filter(|d| **d != digest)
            .copied()
            .collect();
        remembered.write(cache, &keep, &[(digest, typed.to_string())]);
    }

    #[test]
    fn validated_contracts_are_remembered_by_their_text_and_read_back_as_validated() {
        let (dir, contracts) = demo_tree();
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
            remembered.forms.entries.len(),
            crate::demo::CONTRACTS.len() + 1,
            "every valid text, never the invalid one"
        );
        // The forms are found by the list at the end of the file, which is not read whole; a file whose list does
        // not read is scanned whole instead, and finds the same forms.
        #[cfg(unix)]
        assert!(remembered.text.is_none());
        let scanned = ValidatedCache::scan(std::fs::File::open(&cache).unwrap());
        assert!(scanned.text.is_some());
        assert_eq!(scanned.forms.entries, remembered.forms.entries);
        for digest in remembered.forms.entries.keys() {
            assert_eq!(remembered.get(digest), scanned.get(digest));
        }
        let text = std::fs::read_to_string(&cache).unwrap();
        let (body, last) = text.trim_end().rsplit_once('\n').unwrap();
        let count = remembered.forms.entries.len();
        let list_at = last
            .strip_prefix("positions ")
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        for broken in [
            format!("{body}\n"),
            format!("{body}\npositions {list_at} {}\n", count + 1),
            format!("{body}\npositions 3 {count}\n"),
            format!("{body}\npositions {} {count}\n", text.len() * 2),
        ] {
            std::fs::write(&cache, &broken).unwrap();
            let read = ValidatedCache::read(&cache);
            assert!(read.text.is_some(), "{broken:?} is scanned");
            assert_eq!(read.forms.entries, remembered.forms.entries);
        }
        // The next load rewrites a cache it had to scan, with a list.
        ContractStore::load_cached(&contracts, Some(&cache));
        #[cfg(unix)]
        assert!(ValidatedCache::read(&cache).text.is_none());
        let rewritten = ValidatedCache::read(&cache);
        assert_eq!(rewritten.forms.entries.len(), count);
        for digest in remembered.forms.entries.keys() {
            assert_eq!(rewritten.get(digest), remembered.get(digest));
        }
        // A list whose entries point at another entry's form (two swapped) reads neither: both are validated again.
        #[cfg(unix)]
        {
            let text = std::fs::read_to_string(&cache).unwrap();
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let listed: Vec<usize> = (0..lines.len())
                .filter(|&i| !lines[i].contains('\t') && lines[i].split(' ').count() == 3)
                .filter(|&i| lines[i].len() > 64 && lines[i].as_bytes()[64] == b' ')
                .collect();
            let (a, b) = (listed[0], listed[1]);
            let (da, pa) = lines[a].split_at(64);
            let (db, pb) = lines[b].split_at(64);
            let (da, pa, db, pb) = (
                da.to_string(),
                pa.to_string(),
                db.to_string(),
                pb.to_string(),
            );
            lines[a] = format!("{da}{pb}");
            lines[b] = format!("{db}{pa}");
            std::fs::write(&cache, lines.join("\n") + "\n").unwrap();
            let swapped = ValidatedCache::read(&cache);
            assert!(swapped.text.is_none(), "the list still reads");
            let unread: Vec<_> = remembered
                .forms
                .entries
                .keys()
                .filter(|d| swapped.get(d).is_none())
                .map(hex::encode)
                .collect();
            let mut expected = vec![da, db];
            let mut unread = unread;
            unread.sort();
            expected.sort();
            assert_eq!(unread, expected);
            let cached = ContractStore::load_cached(&contracts, Some(&cache));
            assert_eq!(contents(&cached), contents(&plain));
        }

        // Read back, not validated again: a remembered typed form is what loads (the cache is trusted as the data
        // dir is) ...
        remember_version(&cache, &unnamed, "9.9.9-remembered");
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
            ValidatedCache::read(&cache).forms.entries.len(),
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
        assert!(ValidatedCache::read(&cache).forms.entries.is_empty());
        let store = ContractStore::load_cached(&contracts, Some(&cache));
        assert_eq!(store.len(), plain.len() - 1);
        assert_eq!(
            ValidatedCache::read(&cache).forms.entries.len(),
            crate::demo::CONTRACTS.len()
        );
    }

    #[test]
    fn unchanged_contract_files_are_read_only_when_a_contract_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let contracts = dir.path().join("contracts");
        // Files last written an hour ago (a file written moments before a load is never vouched for).
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let write_aged = |path: &Path, text: &str| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap();
        };
        for (name, text) in crate::demo::CONTRACTS {
            write_aged(&contracts.join(name), text);
        }
        // A second version of the orders contract, in force since 2020.
        let orders = crate::demo::CONTRACTS[1].1;
        let in_force = orders.replace("version: 1.2.0", "version: 1.3.0").replace(
            "customProperties:\n",
            "customProperties:\n  - property: effectiveFrom\n    value: \"2020-01-01\"\n",
        );
        write_aged(&contracts.join("sales/orders@1.3.0.yaml"), &in_force);
        let files = crate::demo::CONTRACTS.len() + 1;
        // ... and whose change time (set by that write) has settled too.
        std::thread::sleep(std::time::Duration::from_nanos(
            FileIndex::RACY_NS as u64 + 100_000_000,
        ));
        let cache = dir.path().join("cache/validated");
        let index = dir.path().join("cache").join(FileIndex::FILE);
        let pending = |store: &ContractStore| -> Vec<bool> {
            let tables: Vec<String> = store.tables().map(str::to_string).collect();
            tables
                .iter()
                .flat_map(|t| store.versions(t).iter().map(Version::is_pending))
                .collect()
        };
        let plain = ContractStore::load(&contracts);

        // The first load reads every file; a restart reads none until a contract is asked for, and then loads
        // exactly what a plain load does.
        let first = ContractStore::load_cached(&contracts, Some(&cache));
        assert!(pending(&first).iter().all(|p| !p));
        let written = std::fs::read_to_string(&index).unwrap();
        let restart = ContractStore::load_cached(&contracts, Some(&cache));
        assert_eq!(pending(&restart).len(), files);
        assert!(pending(&restart).iter().all(|p| *p), "nothing read");
        assert_eq!(restart.len(), plain.len());
        assert!(restart.get("sales.orders").is_some());
        assert_eq!(
            pending(&restart).iter().filter(|p| !**p).count(),
            1,
            "only the contract asked for was read"
        );
        assert_eq!(contents(&restart), contents(&plain));
        assert_eq!(
            std::fs::read_to_string(&index).unwrap(),
            written,
            "nothing changed: the index is not rewritten"
        );

        // An edit that keeps the size and the modification time is seen by its change time: a version taken as
        // unchanged before the edit is refused when read (its text no longer has the digest validated), and the
        // next load reads the new text.
        let unread = ContractStore::load_cached(&contracts, Some(&cache));
        let (name, text) = crate::demo::CONTRACTS[0];
        let edited = text.replacen("version: 1.0.0", "version: 9.0.0", 1);
        assert_eq!(edited.len(), text.len());
        write_aged(&contracts.join(name), &edited);
        assert!(unread.get("sales.customers").is_none(), "fails closed");
        // A version in force that no longer reads leaves its table unclassified, not under the older version.
        write_aged(
            &contracts.join("sales/orders@1.3.0.yaml"),
            &in_force.replace("version: 1.3.0", "version: 1.3.1"),
        );
        assert!(unread.get("sales.orders").is_none(), "no older version");
        assert!(unread.get("sales.products").is_some());
        let reloaded = ContractStore::load_cached(&contracts, Some(&cache));
        assert_eq!(
            reloaded.get("sales.customers").unwrap().contract.version,
            "9.0.0"
        );
        // That load rewrote the remembered typed forms; a version still pending from before reads its own.
        let typed = |store: &ContractStore, table: &str| {
            serde_json::to_string(&store.get(table).unwrap().contract).unwrap()
        };
        assert!(unread.versions("ops.shipments")[0].is_pending());
        assert_eq!(
            typed(&unread, "ops.shipments"),
            typed(&plain, "ops.shipments")
        );
        assert_eq!(
            reloaded.get("sales.orders").unwrap().contract.version,
            "1.3.1"
        );
        assert_eq!(
            reloaded.changed_tables(&first),
            vec!["sales.customers".to_string(), "sales.orders".to_string()]
        );

        // A file written just now is read at every load until it has settled; a removed one is forgotten.
        std::fs::write(contracts.join(name), text).unwrap();
        std::fs::remove_file(contracts.join(crate::demo::CONTRACTS[2].0)).unwrap();
        for _ in 0..2 {
            let store = ContractStore::load_cached(&contracts, Some(&cache));
            let customers = store.versions("sales.customers");
            assert!(!customers[0].is_pending());
            assert_eq!(customers[0].loaded().unwrap().contract.version, "1.0.0");
            assert_eq!(store.len(), plain.len() - 1);
        }
        assert_eq!(FileIndex::read(&index, &contracts).entries.len(), files - 1);
        // An index for another folder is ignored whole.
        assert!(FileIndex::read(&index, dir.path()).entries.is_empty());
        // A pending version's typed form is the remembered one, read back from the cache file.
        remember_version(&cache, crate::demo::CONTRACTS[3].1, "9.9.9-remembered");
        let store = ContractStore::load_cached(&contracts, Some(&cache));
        assert!(store.versions("ops.shipments")[0].is_pending());
        assert_eq!(
            store.get("ops.shipments").unwrap().contract.version,
            "9.9.9-remembered"
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

//! Policy: the decision point. `authorize(principal, action, resource, context)` → [`Decision`] with a reason
//! and the ids of the policies that decided it.
//!
//! The embedded backend is Cedar (`cedar-policy`): policies and the user/group directory are files in the data
//! dir, validated against the schema compiled in from `policy.cedarschema` when loaded. Table entities are built
//! per request from what the catalog and the table's contract say (owner, tags, PII), so policies can speak of
//! them without listing tables.
//!
//! Invariant: `policy` does no I/O after loading, and a [`Decision`] can only be made here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde::Serialize;

use crate::identity::{Directory, Principal};

/// The Cedar schema every policy file is validated against.
pub const SCHEMA_TEXT: &str = include_str!("policy.cedarschema");

/// What a principal wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Learn that a table exists and see its metadata.
    Discover,
    /// Read a table's data contract.
    ReadContract,
    /// Run SQL over a table.
    Query,
    /// Ask for access to a table.
    RequestAccess,
    /// See pending access requests (owners).
    ReviewRequests,
    /// Approve or deny access requests (owners).
    DecideRequest,
    /// Read the audit records of a table (owners).
    ReadAudit,
    /// Administer Parley.
    Admin,
}

impl Action {
    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Discover => "discover",
            Action::ReadContract => "read_contract",
            Action::Query => "query",
            Action::RequestAccess => "request_access",
            Action::ReviewRequests => "review_requests",
            Action::DecideRequest => "decide_request",
            Action::ReadAudit => "read_audit",
            Action::Admin => "admin",
        }
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Action, String> {
        const ALL: [Action; 8] = [
            Action::Discover,
            Action::ReadContract,
            Action::Query,
            Action::RequestAccess,
            Action::ReviewRequests,
            Action::DecideRequest,
            Action::ReadAudit,
            Action::Admin,
        ];
        ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            format!(
                "unknown action {s:?}; expected one of {}",
                ALL.map(Action::as_str).join(", ")
            )
        })
    }
}

/// Facts about a table that policies may use; they come from the catalog and the table's contract.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TableFacts {
    /// Namespace, dot-joined for nested namespaces.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Group that owns the table (the contract's team name).
    pub owner: String,
    /// Tags from the contract.
    pub tags: Vec<String>,
    /// True when any column is PII (tagged `pii` or classified restricted).
    pub contains_pii: bool,
    /// Distinct column classifications (`unclassified` for columns the contract does not classify).
    pub classifications: Vec<String>,
    /// Columns that are personal data: tagged `pii`, classified restricted/pii/sensitive, or unclassified.
    pub pii_columns: Vec<String>,
    /// The contract's quality rules and freshness SLA on the newest evaluated snapshot: `unchecked` (nothing
    /// evaluated yet, or nothing to evaluate), `pass` or `breach`.
    pub quality: String,
    /// What that snapshot breaches: failing rules by name, and `freshness` when stale.
    pub quality_breaches: Vec<String>,
}

impl TableFacts {
    /// `namespace.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

/// What the action is on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// The whole lakehouse (listing).
    Lakehouse,
    /// One namespace.
    Namespace(String),
    /// One table.
    Table(TableFacts),
}

impl Resource {
    /// Display form for audit records and messages: `*`, `sales`, `sales.orders`.
    pub fn display(&self) -> String {
        match self {
            Resource::Lakehouse => "*".to_string(),
            Resource::Namespace(ns) => ns.clone(),
            Resource::Table(t) => t.qualified_name(),
        }
    }
}

/// Request context: what the caller said about why, and the grant an action runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct RequestContext {
    /// The purpose the agent stated, if any.
    pub purpose: Option<String>,
    /// The grant a `query` runs under (or would run under, when `request_access` checks what it may offer), as
    /// it applies to the one table decided on. Policies see it as `context.grant`.
    pub grant: Option<GrantContext>,
}

/// What a grant lets its holder see of one table, for policies (`context.grant`): a forbid still applies under a
/// grant, and may depend on these terms ("marketing reads customers only with personal data masked").
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct GrantContext {
    /// Grant id (empty while `request_access` checks terms not yet granted).
    pub id: String,
    /// The purpose the grant is bound to.
    pub purpose: String,
    /// Visible columns of the table, masked or not.
    pub columns: Vec<String>,
    /// Visible columns whose values are masked.
    pub masked_columns: Vec<String>,
    /// Visible columns in clear.
    pub unmasked_columns: Vec<String>,
    /// Whether a row filter narrows the table's rows.
    pub row_filter: bool,
}

/// The outcome of one authorization, with the reason. Only this module makes one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    allowed: bool,
    reason: String,
    policy_ids: Vec<String>,
}

impl Decision {
    /// Whether the action may proceed.
    pub fn allowed(&self) -> bool {
        self.allowed
    }
    /// A sentence saying why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
    /// The policies that decided it (empty when nothing permitted it).
    pub fn policy_ids(&self) -> &[String] {
        &self.policy_ids
    }
}

/// The policy decision point. Implementations must be pure given their loaded state: no I/O per decision.
pub trait PolicyBackend: Send + Sync {
    /// Decides whether `principal` may do `action` on `resource`.
    fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Decision;

    /// Identifies the policy in force: it changes whenever a decision could change (a reload), so callers may
    /// cache what they derive from decisions under it.
    fn version(&self) -> u64;

    /// Whether the policy's entities name `principal_id` (a user with its groups). A principal it does not know
    /// and whose token names no groups is denied everything a policy grants by group, which is worth saying.
    fn knows(&self, _principal_id: &str) -> bool {
        true
    }
}

/// A fresh [`PolicyBackend::version`] for each policy set built in this process.
fn next_policy_version() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A policy set that could not be loaded; names the file and, where known, the line.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Cedar-backed policy: a validated policy set plus the user/group directory.
pub struct CedarPolicy {
    schema: Schema,
    policies: PolicySet,
    /// Ancestors (transitively) of each group in `entities.json`.
    group_ancestors: HashMap<String, Vec<String>>,
    /// Direct groups of each user in the directory.
    groups: HashMap<String, Vec<String>>,
    authorizer: Authorizer,
    decisions: DecisionCache,
    version: u64,
}

const NS: &str = "Parley";

/// Decisions already made by this policy set. A decision depends only on the principal (id, groups,
/// attributes), the action, the resource's facts, the context and the policy set, so it is reused until the policy
/// is reloaded (a reload builds a new `CedarPolicy` with an empty cache). Discovery over thousands of tables then
/// costs a hash lookup per table instead of a Cedar evaluation.
struct DecisionCache {
    /// Keyed by a hash of the inputs; the full inputs are compared on a hit. Bounded (least recently used
    /// entries leave first).
    map: moka::sync::Cache<u64, Arc<Vec<(CachedRequest, Decision)>>>,
}

impl Default for DecisionCache {
    fn default() -> DecisionCache {
        DecisionCache {
            map: moka::sync::Cache::new(MAX_CACHED_DECISIONS),
        }
    }
}

#[derive(Clone)]
struct CachedRequest {
    principal: Principal,
    action: Action,
    resource: Resource,
    context: RequestContext,
}

/// Entries kept.
const MAX_CACHED_DECISIONS: u64 = 200_000;

impl DecisionCache {
    fn hash(
        principal: &Principal,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        principal.id.hash(&mut h);
        principal.groups.hash(&mut h);
        principal.attrs.hash(&mut h);
        action.hash(&mut h);
        resource.hash(&mut h);
        context.hash(&mut h);
        h.finish()
    }

    fn get(
        &self,
        key: u64,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Option<Decision> {
        self.map
            .get(&key)?
            .iter()
            .find(|(r, _)| {
                r.action == action
                    && r.principal == *principal
                    && r.resource == *resource
                    && r.context == *context
            })
            .map(|(_, d)| d.clone())
    }

    fn put(&self, key: u64, request: CachedRequest, decision: Decision) {
        // Requests whose hashes collide share an entry; a racing put may drop the other's decision, which is
        // only evaluated again.
        let mut list = self.map.get(&key).map(|l| (*l).clone()).unwrap_or_default();
        list.push((request, decision));
        self.map.insert(key, Arc::new(list));
    }
}

fn uid(kind: &str, id: &str) -> EntityUid {
    // Type names are compile-time constants of our schema, so parsing them cannot fail.
    let ty = EntityTypeName::from_str(&format!("{NS}::{kind}")).expect("valid Cedar type name");
    EntityUid::from_type_name_and_id(ty, EntityId::new(id))
}

/// 1-based line of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// First source offset a miette diagnostic points at.
fn first_offset(diag: &dyn miette::Diagnostic) -> Option<usize> {
    diag.labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset())
}

impl CedarPolicy {
    /// Loads `policy.cedar` and `entities.json` from `dir` and validates them against the schema.
    pub fn load(dir: &Path) -> Result<CedarPolicy, PolicyError> {
        let policy_path = dir.join("policy.cedar");
        let entities_path = dir.join("entities.json");
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let policy_text = read(&policy_path)?;
        let entities_text = read(&entities_path)?;
        Self::from_texts(&policy_text, &policy_path, &entities_text, &entities_path)
    }

    /// Builds a policy from texts; the paths are only used in error messages.
    pub fn from_texts(
        policy_text: &str,
        policy_path: &Path,
        entities_text: &str,
        entities_path: &Path,
    ) -> Result<CedarPolicy, PolicyError> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(SCHEMA_TEXT).map_err(|e| PolicyError::Invalid {
                path: PathBuf::from("src/policy.cedarschema"),
                line: first_offset(&e).map_or(0, |o| line_of(SCHEMA_TEXT, o)),
                message: e.to_string(),
            })?;
        let invalid = |path: &Path, text: &str, offset: Option<usize>, message: String| {
            PolicyError::Invalid {
                path: path.to_path_buf(),
                line: offset.map_or(1, |o| line_of(text, o)),
                message,
            }
        };
        let policies = PolicySet::from_str(policy_text).map_err(|e| {
            let detail = e
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            invalid(policy_path, policy_text, first_offset(&e), detail)
        })?;
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if let Some(err) = validation.validation_errors().next() {
            return Err(invalid(
                policy_path,
                policy_text,
                first_offset(err),
                format!("policy does not fit the Parley schema: {err}"),
            ));
        }
        let entities = Entities::from_json_str(entities_text, Some(&schema)).map_err(|e| {
            invalid(
                entities_path,
                entities_text,
                first_offset(&e),
                format!("invalid entities: {e}"),
            )
        })?;
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        let mut group_ancestors: HashMap<String, Vec<String>> = HashMap::new();
        for entity in entities.iter() {
            let id = entity.uid();
            if id.type_name().to_string() == format!("{NS}::Group") {
                // `into_inner` returns parents and ancestors together (the transitive closure).
                let ancestors = entity
                    .clone()
                    .into_inner()
                    .2
                    .into_iter()
                    .map(|p| p.id().unescaped().to_string())
                    .collect();
                group_ancestors.insert(id.id().unescaped().to_string(), ancestors);
            }
            if id.type_name().to_string() == format!("{NS}::User") {
                let parents = entity
                    .clone()
                    .into_inner()
                    .2
                    .into_iter()
                    .filter(|p| p.type_name().to_string() == format!("{NS}::Group"))
                    .map(|p| p.id().unescaped().to_string())
                    .collect();
                groups.insert(id.id().unescaped().to_string(), parents);
            }
        }
        Ok(CedarPolicy {
            schema,
            policies,
            group_ancestors,
            groups,
            authorizer: Authorizer::new(),
            decisions: DecisionCache::default(),
            version: next_policy_version(),
        })
    }

    /// The user and group entities plus the principal and resource of one request.
    fn entities_for(
        &self,
        principal: &Principal,
        resource: &Resource,
    ) -> Result<(Entities, EntityUid, EntityUid), String> {
        // Only the entities this request can touch: the principal with every group it is in — directly, through
        // the directory, or through group nesting — as direct parents, so no transitive closure over the whole
        // directory is computed per decision.
        let mut entities: Vec<Entity> = Vec::with_capacity(4);
        let principal_uid = uid("User", &principal.id);
        let mut groups: Vec<&str> = principal.groups.iter().map(String::as_str).collect();
        if let Some(known) = self.groups.get(&principal.id) {
            groups.extend(known.iter().map(String::as_str));
        }
        let mut parents: HashSet<EntityUid> = HashSet::new();
        for g in groups {
            parents.insert(uid("Group", g));
            for a in self.group_ancestors.get(g).into_iter().flatten() {
                parents.insert(uid("Group", a));
            }
        }
        entities.push(Entity::new_no_attrs(principal_uid.clone(), parents));

        let lakehouse = uid("Lakehouse", "lakehouse");
        entities.push(Entity::new_no_attrs(lakehouse.clone(), HashSet::new()));
        let resource_uid = match resource {
            Resource::Lakehouse => lakehouse,
            Resource::Namespace(ns) => namespace_entities(ns, lakehouse, &mut entities),
            Resource::Table(t) => {
                let ns_uid = namespace_entities(&t.namespace, lakehouse, &mut entities);
                let table_uid = uid("Table", &t.qualified_name());
                let set = |items: &[String]| {
                    RestrictedExpression::new_set(
                        items
                            .iter()
                            .map(|s| RestrictedExpression::new_string(s.clone())),
                    )
                };
                let attrs = HashMap::from([
                    (
                        "owner".to_string(),
                        RestrictedExpression::new_entity_uid(uid("Group", &t.owner)),
                    ),
                    ("tags".to_string(), set(&t.tags)),
                    (
                        "contains_pii".to_string(),
                        RestrictedExpression::new_bool(t.contains_pii),
                    ),
                    ("classifications".to_string(), set(&t.classifications)),
                    ("pii_columns".to_string(), set(&t.pii_columns)),
                    (
                        "quality".to_string(),
                        RestrictedExpression::new_string(t.quality.clone()),
                    ),
                    ("quality_breaches".to_string(), set(&t.quality_breaches)),
                ]);
                let entity = Entity::new(table_uid.clone(), attrs, HashSet::from([ns_uid]))
                    .map_err(|e| e.to_string())?;
                entities.push(entity);
                table_uid
            }
        };
        // Built here from typed facts, so they fit the schema by construction; the policies were validated
        // against it at load.
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        Ok((entities, principal_uid, resource_uid))
    }

    /// The `@id` annotation of a policy, or its generated id.
    fn policy_name(&self, id: &cedar_policy::PolicyId) -> String {
        self.policies
            .annotation(id, "id")
            .map(str::to_string)
            .unwrap_or_else(|| id.to_string())
    }
}

impl Directory for CedarPolicy {
    fn groups_of(&self, principal_id: &str) -> Vec<String> {
        self.groups.get(principal_id).cloned().unwrap_or_default()
    }
}

impl PolicyBackend for CedarPolicy {
    fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Decision {
        let key = DecisionCache::hash(principal, action, resource, context);
        if let Some(d) = self
            .decisions
            .get(key, principal, action, resource, context)
        {
            return d;
        }
        let decision = self.evaluate(principal, action, resource, context);
        self.decisions.put(
            key,
            CachedRequest {
                principal: principal.clone(),
                action,
                resource: resource.clone(),
                context: context.clone(),
            },
            decision.clone(),
        );
        decision
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn knows(&self, principal_id: &str) -> bool {
        self.groups.contains_key(principal_id)
    }
}

impl CedarPolicy {
    /// One Cedar evaluation, bypassing the decision cache (what a first decision costs; benchmarks use it).
    pub fn evaluate(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Decision {
        let deny_error = |why: String| Decision {
            allowed: false,
            reason: format!("policy evaluation failed, so the request is denied: {why}"),
            policy_ids: vec![],
        };
        let (entities, principal_uid, resource_uid) = match self.entities_for(principal, resource) {
            Ok(v) => v,
            Err(e) => return deny_error(e),
        };
        let action_uid = uid("Action", action.as_str());
        let mut ctx = BTreeMap::new();
        if let Some(p) = &context.purpose {
            ctx.insert(
                "purpose".to_string(),
                RestrictedExpression::new_string(p.clone()),
            );
        }
        if let Some(g) = &context.grant {
            let set = |items: &[String]| {
                RestrictedExpression::new_set(
                    items
                        .iter()
                        .map(|s| RestrictedExpression::new_string(s.clone())),
                )
            };
            ctx.insert(
                "grant".to_string(),
                RestrictedExpression::new_record([
                    (
                        "id".to_string(),
                        RestrictedExpression::new_string(g.id.clone()),
                    ),
                    (
                        "purpose".to_string(),
                        RestrictedExpression::new_string(g.purpose.clone()),
                    ),
                    ("columns".to_string(), set(&g.columns)),
                    ("masked_columns".to_string(), set(&g.masked_columns)),
                    ("unmasked_columns".to_string(), set(&g.unmasked_columns)),
                    (
                        "row_filter".to_string(),
                        RestrictedExpression::new_bool(g.row_filter),
                    ),
                ])
                .unwrap_or_else(|_| RestrictedExpression::new_bool(false)),
            );
        }
        let ctx = match Context::from_pairs(ctx) {
            Ok(c) => c,
            Err(e) => return deny_error(e.to_string()),
        };
        let request = match Request::new(
            principal_uid,
            action_uid,
            resource_uid,
            ctx,
            Some(&self.schema),
        ) {
            Ok(r) => r,
            Err(e) => return deny_error(e.to_string()),
        };
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        let mut ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| self.policy_name(id))
            .collect();
        ids.sort();
        let target = resource.display();
        match response.decision() {
            cedar_policy::Decision::Allow => Decision {
                allowed: true,
                reason: format!("permitted by {}", ids.join(", ")),
                policy_ids: ids,
            },
            cedar_policy::Decision::Deny if ids.is_empty() => Decision {
                allowed: false,
                reason: format!(
                    "no policy permits {} to {} {}",
                    principal.id,
                    action.as_str(),
                    target
                ),
                policy_ids: ids,
            },
            cedar_policy::Decision::Deny => Decision {
                allowed: false,
                reason: format!("forbidden by {}", ids.join(", ")),
                policy_ids: ids,
            },
        }
    }
}

/// Modification stamp of the policy files, to notice edits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp(Vec<Option<(std::time::SystemTime, u64)>>);

impl FileStamp {
    fn of(dir: &Path) -> FileStamp {
        FileStamp(
            ["policy.cedar", "entities.json"]
                .iter()
                .map(|f| {
                    std::fs::metadata(dir.join(f))
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())))
                })
                .collect(),
        )
    }
}

/// A Cedar policy that can be replaced while serving. Decisions always use the latest version that loaded and
/// validated; a reload that fails keeps the previous version (and says why), so requests are never dropped or
/// decided by a half-read file.
pub struct ReloadablePolicy {
    dir: PathBuf,
    current: std::sync::RwLock<Arc<CedarPolicy>>,
    stamp: std::sync::Mutex<FileStamp>,
}

impl ReloadablePolicy {
    /// Loads the policy in `dir`; fails if it does not load (start-up must not serve without a policy).
    pub fn load(dir: &Path) -> Result<ReloadablePolicy, PolicyError> {
        let stamp = FileStamp::of(dir);
        let policy = CedarPolicy::load(dir)?;
        Ok(ReloadablePolicy {
            dir: dir.to_path_buf(),
            current: std::sync::RwLock::new(Arc::new(policy)),
            stamp: std::sync::Mutex::new(stamp),
        })
    }

    /// The policy decisions use now.
    pub fn current(&self) -> Arc<CedarPolicy> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads from disk; on success the new policy applies to every later decision.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let stamp = FileStamp::of(&self.dir);
        let fresh = CedarPolicy::load(&self.dir);
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        let fresh = fresh?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// Reloads when the files changed since the last (attempted) load; `Ok(true)` when a new policy applies.
    pub fn reload_if_changed(&self) -> Result<bool, PolicyError> {
        let changed =
            FileStamp::of(&self.dir) != *self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if changed {
            self.reload()?;
        }
        Ok(changed)
    }
}

impl PolicyBackend for ReloadablePolicy {
    fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Decision {
        self.current()
            .authorize(principal, action, resource, context)
    }

    fn version(&self) -> u64 {
        self.current().version()
    }

    fn knows(&self, principal_id: &str) -> bool {
        self.current().knows(principal_id)
    }
}

impl Directory for ReloadablePolicy {
    fn groups_of(&self, principal_id: &str) -> Vec<String> {
        self.current().groups_of(principal_id)
    }
}

/// Pushes the entities of namespace `ns` (dot-joined) and its ancestors — `a.b.c` in `a.b` in `a` in the
/// lakehouse — and returns the uid of `ns` itself.
fn namespace_entities(ns: &str, lakehouse: EntityUid, entities: &mut Vec<Entity>) -> EntityUid {
    let levels: Vec<&str> = ns.split('.').collect();
    let mut parent = lakehouse;
    for depth in 1..=levels.len() {
        let here = uid("Namespace", &levels[..depth].join("."));
        entities.push(Entity::new_no_attrs(here.clone(), HashSet::from([parent])));
        parent = here;
    }
    parent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> CedarPolicy {
        CedarPolicy::from_texts(
            include_str!("../examples/policy/policy.cedar"),
            Path::new("policy.cedar"),
            include_str!("../examples/policy/entities.json"),
            Path::new("entities.json"),
        )
        .expect("demo policy loads")
    }

    fn table(ns: &str, name: &str, owner: &str, pii: bool) -> Resource {
        Resource::Table(TableFacts {
            namespace: ns.into(),
            name: name.into(),
            owner: owner.into(),
            tags: vec![],
            contains_pii: pii,
            classifications: vec!["internal".into()],
            pii_columns: if pii { vec!["email".into()] } else { vec![] },
            quality: "unchecked".into(),
            quality_breaches: vec![],
        })
    }

    /// Table-driven: (principal, action, resource) → allowed, and the deciding policy when one is expected.
    #[test]
    fn demo_policy_decisions() {
        let p = demo();
        let customers = table("sales", "customers", "sales-owners", true);
        let orders = table("sales", "orders", "sales-owners", false);
        let products = table("sales", "products", "sales-owners", false);
        let shipments = table("ops", "shipments", "ops-owners", false);
        let cases: Vec<(&str, Action, &Resource, bool, Option<&str>)> = vec![
            (
                "analyst",
                Action::Discover,
                &customers,
                true,
                Some("analysts-discover-all"),
            ),
            (
                "analyst",
                Action::ReadContract,
                &shipments,
                true,
                Some("analysts-discover-all"),
            ),
            (
                "analyst",
                Action::Query,
                &orders,
                true,
                Some("analysts-query-non-pii"),
            ),
            ("analyst", Action::Query, &customers, false, None),
            (
                "marketing-agent",
                Action::Discover,
                &orders,
                true,
                Some("marketing-discover-sales"),
            ),
            ("marketing-agent", Action::Discover, &shipments, false, None),
            (
                "marketing-agent",
                Action::Query,
                &products,
                true,
                Some("marketing-query-products-orders"),
            ),
            ("marketing-agent", Action::Query, &customers, false, None),
            (
                "sales-owner",
                Action::Query,
                &customers,
                true,
                Some("owners-own-their-tables"),
            ),
            (
                "sales-owner",
                Action::DecideRequest,
                &customers,
                true,
                Some("owners-own-their-tables"),
            ),
            ("ops-owner", Action::Query, &customers, false, None),
            ("ops-owner", Action::Query, &shipments, true, None),
            (
                "sales-owner",
                Action::ReviewRequests,
                &Resource::Lakehouse,
                true,
                Some("data-owners-review"),
            ),
            (
                "ops-owner",
                Action::ReadAudit,
                &shipments,
                true,
                Some("owners-own-their-tables"),
            ),
            ("analyst", Action::ReadAudit, &orders, false, None),
            (
                "analyst",
                Action::ReviewRequests,
                &Resource::Lakehouse,
                false,
                None,
            ),
            ("stranger", Action::Discover, &products, false, None),
            ("stranger", Action::Query, &products, false, None),
        ];
        for (who, action, resource, allowed, by) in cases {
            let principal = Principal::new(who, p.groups_of(who));
            let d = p.authorize(&principal, action, resource, &RequestContext::default());
            assert_eq!(
                d.allowed(),
                allowed,
                "{who} {action:?} {}: {}",
                resource.display(),
                d.reason()
            );
            if let Some(id) = by {
                assert!(d.policy_ids().iter().any(|x| x == id), "{who}: {d:?}");
            }
        }
    }

    /// Issue 11: a query under a grant is decided with the grant in the context, and a forbid wins over it.
    #[test]
    fn a_grant_is_decided_by_the_policy_and_never_outranks_a_forbid() {
        let p = demo();
        let customers = table("sales", "customers", "sales-owners", true);
        let grant = |masked: &[&str], clear: &[&str]| {
            let to = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            RequestContext {
                purpose: Some("churn_analysis".into()),
                grant: Some(GrantContext {
                    id: "g1".into(),
                    purpose: "churn_analysis".into(),
                    columns: to(&[masked, clear].concat()),
                    masked_columns: to(masked),
                    unmasked_columns: to(clear),
                    row_filter: false,
                }),
            }
        };
        let cases = [
            // (principal, context, allowed, deciding policy)
            (
                "analyst",
                grant(&["email"], &["country"]),
                true,
                "grants-are-honoured",
            ),
            (
                "analyst",
                grant(&[], &["email", "country"]),
                true,
                "grants-are-honoured",
            ),
            (
                "marketing-agent",
                grant(&["email"], &["country"]),
                true,
                "grants-are-honoured",
            ),
            (
                "marketing-agent",
                grant(&[], &["email", "country"]),
                false,
                "no-pii-for-marketing",
            ),
            (
                "marketing-agent",
                RequestContext::default(),
                false,
                "no-pii-for-marketing",
            ),
            (
                "stranger",
                grant(&["email"], &["country"]),
                true,
                "grants-are-honoured",
            ),
        ];
        for (who, context, allowed, by) in cases {
            let principal = Principal::new(who, p.groups_of(who));
            let d = p.authorize(&principal, Action::Query, &customers, &context);
            assert_eq!(d.allowed(), allowed, "{who} {context:?}: {}", d.reason());
            assert!(d.policy_ids().iter().any(|x| x == by), "{who}: {d:?}");
        }
        // Decisions are cached per full context: the same principal and table with another grant is decided anew.
        let m = Principal::new("marketing-agent", p.groups_of("marketing-agent"));
        assert!(
            p.authorize(&m, Action::Query, &customers, &grant(&["email"], &[]))
                .allowed()
        );
        assert!(
            !p.authorize(&m, Action::Query, &customers, &grant(&[], &["email"]))
                .allowed()
        );
    }

    #[test]
    fn a_nested_namespace_is_in_its_parents() {
        // With several catalogs the catalog is a table's first namespace level: a policy on it covers the lot.
        let p = CedarPolicy::from_texts(
            r#"permit (principal, action == Parley::Action::"discover", resource in Parley::Namespace::"lake");"#,
            Path::new("policy.cedar"),
            "[]",
            Path::new("entities.json"),
        )
        .unwrap();
        let who = Principal::new("a", vec![]);
        let discover = |resource: &Resource| {
            p.authorize(&who, Action::Discover, resource, &RequestContext::default())
                .allowed()
        };
        assert!(discover(&table("lake.sales", "orders", "o", false)));
        assert!(discover(&table("lake.sales.eu", "orders", "o", false)));
        assert!(discover(&Resource::Namespace("lake.sales".into())));
        assert!(!discover(&table("local.sales", "orders", "o", false)));
        // A namespace merely starting with the same letters is not inside it.
        assert!(!discover(&table("lakehouse.sales", "orders", "o", false)));
    }

    #[test]
    fn a_forbid_names_its_policy() {
        let p = demo();
        // A marketing principal who is also (wrongly) in the analysts group still may not query PII.
        let principal = Principal::new("m2", vec!["marketing".into(), "analysts".into()]);
        let d = p.authorize(
            &principal,
            Action::Query,
            &table("sales", "customers", "sales-owners", true),
            &RequestContext::default(),
        );
        assert!(!d.allowed());
        assert_eq!(d.policy_ids(), ["no-pii-for-marketing"]);
        assert!(d.reason().contains("forbidden by no-pii-for-marketing"));
    }

    #[test]
    fn reload_applies_new_policies_and_keeps_the_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("policy.cedar"),
            include_str!("../examples/policy/policy.cedar"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("entities.json"),
            include_str!("../examples/policy/entities.json"),
        )
        .unwrap();
        let p = ReloadablePolicy::load(dir.path()).unwrap();
        let analyst = Principal::new("analyst", p.groups_of("analyst"));
        let customers = table("sales", "customers", "sales-owners", true);
        let ctx = RequestContext::default();
        assert!(
            !p.authorize(&analyst, Action::Query, &customers, &ctx)
                .allowed()
        );
        assert!(!p.reload_if_changed().unwrap());

        let extra = "\n@id(\"analysts-query-everything\")\npermit(principal in Parley::Group::\"analysts\", action == Parley::Action::\"query\", resource);\n";
        let text = include_str!("../examples/policy/policy.cedar").to_string() + extra;
        std::fs::write(dir.path().join("policy.cedar"), &text).unwrap();
        p.reload().unwrap();
        let d = p.authorize(&analyst, Action::Query, &customers, &ctx);
        assert!(d.allowed());
        assert_eq!(d.policy_ids(), ["analysts-query-everything"]);

        std::fs::write(
            dir.path().join("policy.cedar"),
            "permit(principal,, action, resource);",
        )
        .unwrap();
        assert!(p.reload().is_err());
        assert!(
            p.authorize(&analyst, Action::Query, &customers, &ctx)
                .allowed(),
            "old policy kept"
        );
    }

    #[test]
    fn malformed_policy_names_file_and_line() {
        let text = "permit(principal, action, resource);\n\npermit(principal action, resource);\n";
        let Err(err) = CedarPolicy::from_texts(
            text,
            Path::new("/x/policy.cedar"),
            "[]",
            Path::new("e.json"),
        ) else {
            panic!("malformed policy accepted")
        };
        let msg = err.to_string();
        assert!(msg.starts_with("/x/policy.cedar:3:"), "{msg}");
    }

    #[test]
    fn policy_outside_schema_is_rejected() {
        let text = "permit(principal, action == Parley::Action::\"delete_everything\", resource);";
        let Err(err) =
            CedarPolicy::from_texts(text, Path::new("p.cedar"), "[]", Path::new("e.json"))
        else {
            panic!("policy with unknown action accepted")
        };
        assert!(err.to_string().contains("delete_everything"), "{err}");
    }
}

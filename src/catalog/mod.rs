//! Catalog: the lakehouse as Parley sees it — Iceberg tables listed and loaded through the `iceberg` crate's
//! `Catalog` trait, each paired with its data contract.
//!
//! The embedded backend is iceberg-rust's SQL catalog on SQLite with a local warehouse, laid out as pyiceberg's
//! `SqlCatalog` expects, so other engines read the same tables.
//!
//! Invariant: Parley reaches the catalog with its own configuration and credentials only; no agent token or
//! agent-supplied location ever reaches it.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iceberg::io::LocalFsStorageFactory;
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableIdent};
use iceberg_catalog_sql::{SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlCatalogBuilder};

use crate::contracts::{ContractStore, LoadedContract, table_facts};

pub mod authz;
pub mod commit;
pub mod federation;
pub mod open;
pub mod refresh;
pub mod storage;
use crate::policy::TableFacts;

/// A table name as agents write it: `namespace.table` (nested namespaces dot-joined).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Namespace levels.
    pub namespace: Vec<String>,
    /// Table.
    pub name: String,
}

impl TableName {
    /// Parses `ns.table` or `ns1.ns2.table`; a name without a namespace or with empty parts is rejected.
    pub fn parse(text: &str) -> Result<TableName, String> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let refused = || {
            format!(
                "{text:?} is not a table name: write it as namespace.table, e.g. sales.orders (list_tables shows them)"
            )
        };
        if parts.iter().any(|p| p.trim().is_empty()) {
            return Err(refused());
        }
        let Some((name, namespace)) = parts.split_last().filter(|(_, ns)| !ns.is_empty()) else {
            return Err(refused());
        };
        Ok(TableName {
            namespace: namespace.iter().map(|s| s.to_string()).collect(),
            name: name.to_string(),
        })
    }

    /// `tables` as text, each `namespace.table`, joined by `sep`.
    pub fn join(tables: &[TableName], sep: &str) -> String {
        tables
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// Dot-joined namespace.
    pub fn namespace_str(&self) -> String {
        self.namespace.join(".")
    }

    fn ident(&self) -> Result<TableIdent, CatalogError> {
        let ns = NamespaceIdent::from_vec(self.namespace.clone())
            .map_err(|e| CatalogError::Backend(e.to_string()))?;
        Ok(TableIdent::new(ns, self.name.clone()))
    }

    fn from_ident(ident: &TableIdent) -> TableName {
        TableName {
            namespace: ident.namespace().clone().inner(),
            name: ident.name().to_string(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace_str(), self.name)
    }
}

/// Stored and sent as its text, `namespace.table`, so terms that name tables hash as they always have.
impl serde::Serialize for TableName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TableName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TableName, D::Error> {
        let text = String::deserialize(d)?;
        TableName::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for TableName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TableName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A table, `namespace.table`."
        })
    }
}

impl PartialEq<str> for TableName {
    fn eq(&self, other: &str) -> bool {
        other.len() > self.name.len()
            && other.ends_with(self.name.as_str())
            && other[..other.len() - self.name.len()].strip_suffix('.')
                == Some(self.namespace_str().as_str())
    }
}

/// Failure to reach or read a catalog. Its text is what the agent is told (short, no response bodies or
/// headers); the full detail goes to the server's log when the error is made.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The table or namespace is gone (dropped after it was listed).
    #[error("the catalog no longer has this table")]
    NotFound,
    /// The catalog refuses Parley's own identity access to this object (HTTP 403).
    #[error(
        "the catalog denied access (403 Forbidden: {0}); the catalog's own permissions decide this, ask its \
         administrator"
    )]
    Denied(String),
    /// The catalog cannot be reached or refuses Parley's credentials.
    #[error("the catalog is unavailable ({0})")]
    Unavailable(String),
    #[error("catalog error: {0}")]
    Backend(String),
}

impl From<iceberg::Error> for CatalogError {
    fn from(e: iceberg::Error) -> Self {
        let error = classify(&e);
        tracing::warn!("catalog call failed: {e}");
        error
    }
}

/// The HTTP status of a REST catalog's answer that an error of iceberg-catalog-rest reports: it puts it in the
/// error's context as `status: 403 Forbidden` or `code: 401 Unauthorized`.
pub(crate) fn http_status(e: &iceberg::Error) -> Option<u16> {
    let text = e.to_string();
    ["status: ", "code: "].iter().find_map(|key| {
        text.split(key)
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|code| code.parse::<u16>().ok())
    })
}

/// Maps an error of the `iceberg` crate (SQL or REST catalog, storage) to what an agent may be told: the REST
/// spec's status codes become not found / denied / unavailable; bodies and headers stay in the log.
fn classify(e: &iceberg::Error) -> CatalogError {
    use iceberg::ErrorKind;
    match e.kind() {
        ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound => return CatalogError::NotFound,
        _ => {}
    }
    let text = e.to_string();
    let status = http_status(e);
    // A failure at the token endpoint (client credentials): the catalog never saw a request.
    if text.contains("operation: auth") {
        return CatalogError::Unavailable(format!(
            "its token endpoint refused Parley's client credentials{}: check `credential` (client_id:secret), \
             `scope` and `oauth2-server-uri` of the catalog in parley.toml",
            status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
        ));
    }
    // The REST spec's error model: `{"error": {"message": ..., "type": ..., "code": ...}}`.
    let message = text
        .split("\"message\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string);
    match status {
        Some(404) => CatalogError::NotFound,
        Some(403) => CatalogError::Denied(message.unwrap_or_else(|| "no reason given".to_string())),
        Some(401) => CatalogError::Unavailable(
            "it refused Parley's credentials (401 Unauthorized): check the catalog's `credential` or `token` in \
             parley.toml"
                .to_string(),
        ),
        Some(code) if code >= 500 => CatalogError::Unavailable(format!("it answered HTTP {code}")),
        Some(code) => CatalogError::Backend(format!(
            "HTTP {code}{}",
            message.map(|m| format!(": {m}")).unwrap_or_default()
        )),
        None if text.contains("error sending request") || text.contains("Connection refused") => {
            CatalogError::Unavailable("it cannot be reached".to_string())
        }
        None => CatalogError::Backend(e.message().to_string()),
    }
}

/// The lakehouse: an Iceberg catalog plus the contracts of its tables.
///
/// The table list and loaded tables are reused for `cache_ttl` (like Spark's `CachingCatalog` or Trino's
/// metadata cache): discovery on a catalog of thousands of tables then costs no catalog round trip, and a table's
/// new snapshot is seen at most `cache_ttl` after its commit.
pub struct Lakehouse {
    catalog: Arc<dyn Catalog>,
    /// The contracts in force; replaced whole by [`Lakehouse::reload_contracts`].
    contracts: std::sync::RwLock<Arc<ContractStore>>,
    /// Where the contracts are read from, when they can be reloaded; with the stamp of the files last read.
    contracts_dir: Option<(std::path::PathBuf, Mutex<crate::contracts::FilesState>)>,
    /// Bumped on every reload, so caches of what contracts decide (discovery) start over.
    contracts_version: std::sync::atomic::AtomicU64,
    /// The catalogs' own permission services, asked for every agent besides the policy.
    authz: authz::CatalogAuthz,
    /// Several catalogs under their names (see [`federation`]): one that fails to list hides no other.
    federated: bool,
    /// Catalogs the last listing could not reach, with why: their tables are unavailable, not missing.
    down: Arc<Mutex<HashMap<String, String>>>,
    cache_ttl: Duration,
    /// Each catalog's settings, for landing commits.
    members: Vec<crate::config::CatalogSettings>,
    /// The SQL catalogs among `members` listed in one query, each watched for changes.
    sql_listings: Arc<[SqlListing]>,
    /// Decides which contract version is in force.
    clock: crate::clock::Clock,
    names: Arc<NamesSlot>,
    /// A background refresh of `names` is running.
    refreshing: Arc<std::sync::atomic::AtomicBool>,
    /// Held while a listing with nothing to answer meanwhile runs (with a cache): calls that arrive then wait for
    /// it rather than list the catalog again (see [`Lakehouse::warm_up`]).
    first_listing: tokio::sync::Mutex<()>,
    /// How long the last listing took, in microseconds: the list is not refreshed more often than
    /// [`LISTING_COST_FACTOR`] times that, so background listing of a large catalog takes a bounded share of a core.
    listing_micros: Arc<std::sync::atomic::AtomicU64>,
    /// Loaded tables and when they were loaded; bounded (least recently used leave first).
    tables: moka::sync::Cache<TableName, (Instant, Table)>,
    /// Tables being reloaded in the background by [`Lakehouse::inspect_listed`].
    reloading: Arc<Mutex<std::collections::HashSet<TableName>>>,
    /// The newest quality report of each evaluated table (see [`crate::quality`]), for its policy facts.
    quality: Mutex<HashMap<TableName, Arc<crate::quality::Report>>>,
    /// When the contract files were last looked at for a reload, and how long that took.
    contracts_checked: Mutex<Option<(Instant, std::time::Duration)>>,
    /// A watch saw the contract files change since they were last looked at (see [`Lakehouse::watch_contracts`]).
    contracts_dirty: Arc<std::sync::atomic::AtomicBool>,
    /// Where validated contracts are remembered across restarts, if anywhere.
    contract_cache: Option<std::path::PathBuf>,
    /// Set once the contract files were first read (see [`Lakehouse::ensure_contracts`]).
    contracts_loaded: std::sync::OnceLock<()>,
}

/// The cached table list and when it was read.
type NamesSlot = Mutex<Option<(Instant, Arc<Vec<TableName>>)>>;

/// Most tables kept loaded.
const MAX_CACHED_TABLES: u64 = 4096;

/// Opens the embedded SQL catalog (SQLite) with its local warehouse.
pub async fn open_sql_catalog(
    catalog_db: &Path,
    warehouse: &Path,
    name: &str,
) -> Result<Arc<dyn Catalog>, CatalogError> {
    let catalog = SqlCatalogBuilder::default()
        .with_storage_factory(Arc::new(LocalFsStorageFactory))
        .load(
            name,
            HashMap::from([
                (
                    SQL_CATALOG_PROP_URI.to_string(),
                    format!("sqlite:{}?mode=rwc", catalog_db.display()),
                ),
                (
                    SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                    format!("file://{}", warehouse.display()),
                ),
            ]),
        )
        .await?;
    Ok(Arc::new(catalog))
}

/// The catalog names an embedded SQL catalog file holds tables under (its `iceberg_tables.catalog_name`), for
/// saying why a configured name finds nothing. Empty when the file cannot be read.
pub async fn sql_catalog_names(catalog_db: &Path) -> Vec<String> {
    use sqlx::Row as _;
    let Ok(options) = format!("sqlite:{}?mode=ro", catalog_db.display())
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
    else {
        return Vec::new();
    };
    let Ok(mut conn) = sqlx::ConnectOptions::connect(&options).await else {
        return Vec::new();
    };
    sqlx::query("SELECT DISTINCT catalog_name FROM iceberg_tables ORDER BY catalog_name")
        .fetch_all(&mut conn)
        .await
        .map(|rows| rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
        .unwrap_or_default()
}

impl Lakehouse {
    /// A lakehouse over `catalog` with the contracts in `contracts`.
    pub fn new(catalog: Arc<dyn Catalog>, contracts: ContractStore) -> Lakehouse {
        Lakehouse {
            catalog,
            contracts: std::sync::RwLock::new(Arc::new(contracts)),
            contracts_dir: None,
            contracts_version: std::sync::atomic::AtomicU64::new(0),
            authz: authz::CatalogAuthz::default(),
            federated: false,
            down: Default::default(),
            cache_ttl: Duration::ZERO,
            names: Arc::new(Mutex::new(None)),
            refreshing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            first_listing: tokio::sync::Mutex::new(()),
            listing_micros: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            tables: moka::sync::Cache::new(MAX_CACHED_TABLES),
            reloading: Arc::new(Mutex::new(std::collections::HashSet::new())),
            members: Vec::new(),
            sql_listings: Arc::from(Vec::new()),
            clock: crate::clock::Clock::system(),
            quality: Mutex::new(HashMap::new()),
            contract_cache: None,
            contracts_checked: Mutex::new(None),
            contracts_dirty: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            contracts_loaded: std::sync::OnceLock::new(),
        }
    }

    /// Records `report` as `table`'s newest quality report. When what the table breaches changes, the facts of
    /// cached discovery start over (as after a contract reload), so policies on quality see the new state.
    pub fn record_quality(&self, table: &TableName, report: Arc<crate::quality::Report>) {
        let now = self.clock.now();
        let before = self
            .quality
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(table.clone(), report.clone());
        if before.is_none_or(|b| b.breaches(now) != report.breaches(now)) {
            self.contracts_version
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// `table`'s newest quality report, if one was made.
    pub fn quality(&self, table: &TableName) -> Option<Arc<crate::quality::Report>> {
        self.quality
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(table)
            .cloned()
    }

    /// Reads the contracts from `dir` (`<dir>/<namespace>/<table>.yaml`), now and on [`Lakehouse::reload_contracts`].
    /// They are first read by [`Lakehouse::ensure_contracts`] — by the server on a thread of its own at start-up,
    /// so `initialize` does not wait for 100,000 files to be parsed and validated; a call that needs a contract
    /// before then waits for that first read (never answers from an empty set).
    pub fn with_contracts_dir(mut self, dir: &Path) -> Lakehouse {
        self.contracts_dir = Some((
            dir.to_path_buf(),
            Mutex::new(crate::contracts::FilesState::default()),
        ));
        self
    }

    /// Remembers validated contracts in the file `cache` across restarts (see [`ContractStore::load_cached`]).
    pub fn with_contract_cache(mut self, cache: &Path) -> Lakehouse {
        self.contract_cache = Some(cache.to_path_buf());
        self
    }

    /// Reads the contract files the first time it is called (every later call, and every reader meanwhile, waits
    /// for that read to finish); `Some((contracts loaded, refused))` for the call that read them. With a cache
    /// of validated contracts, files it does not know are taken for the table their text names and validated
    /// when first needed ([`ContractStore::load_presuming`]: a first start on 100,000 contracts answers in
    /// seconds instead of after validating them all); [`Lakehouse::validate_presumed_contracts`] then validates
    /// and remembers them all.
    pub fn ensure_contracts(&self) -> Option<(usize, usize)> {
        if self.contracts_ready() {
            return None;
        }
        // Waiting for the first read (or making it) on a runtime's worker: the worker's other tasks move to
        // another thread meanwhile (without this, two calls at start-up held both workers of a 2-core machine until
        // the contracts were read, and nothing else was answered).
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if on_worker {
            tokio::task::block_in_place(|| self.read_contracts_once())
        } else {
            self.read_contracts_once()
        }
    }

    /// Whether the contract files were read once ([`Lakehouse::ensure_contracts`] would not wait).
    pub fn contracts_ready(&self) -> bool {
        self.contracts_loaded.get().is_some()
    }

    /// [`Lakehouse::ensure_contracts`]'s work.
    fn read_contracts_once(&self) -> Option<(usize, usize)> {
        let mut first = None;
        self.contracts_loaded.get_or_init(|| {
            if let Some((dir, stamp)) = &self.contracts_dir {
                let mut store = ContractStore::load_presuming(dir, self.contract_cache.as_deref());
                if store.presumed > 0 {
                    tracing::info!(
                        presumed = store.presumed,
                        "contracts not validated before are validated when first needed, and all of them in \
                         the background"
                    );
                }
                // The state the load read the files in (each taken before its text): a later edit is seen.
                *stamp
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    std::mem::take(&mut store.files);
                first = Some((store.len(), store.rejected.len()));
                *self
                    .contracts
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(store);
                self.contracts_version
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        });
        first
    }

    /// The contract set in force, once first read.
    fn store(&self) -> std::sync::RwLockReadGuard<'_, Arc<ContractStore>> {
        self.ensure_contracts();
        self.contracts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Validates the contracts the first read took unvalidated where they are and remembers the valid ones (see
    /// [`ContractStore::remember_presumed`]), then reloads the contracts, which reads them back: refusals are
    /// named, and the next start finds every valid file remembered. `None` when nothing was presumed.
    pub fn validate_presumed_contracts(&self) -> Option<(usize, usize, Vec<TableName>)> {
        let cache = self.contract_cache.as_ref()?;
        let contracts = self.contracts();
        if contracts.presumed == 0 {
            return None;
        }
        contracts.remember_presumed(cache);
        drop(contracts);
        self.reload_contracts(true)
    }

    /// The contracts in force now (a snapshot: a reload replaces it whole).
    pub fn contracts(&self) -> Arc<ContractStore> {
        self.store().clone()
    }

    /// The folder contract files are read from, when they are read from one.
    pub fn contracts_dir(&self) -> Option<&Path> {
        self.contracts_dir.as_ref().map(|(d, _)| d.as_path())
    }

    /// Reloads the contracts when their files changed (or always, with `force`): a new set replaces the old one
    /// whole, so a call sees either. A contract that no longer loads is logged and its table counts as
    /// unclassified, exactly as at start-up. `Some((loaded, rejected, changed tables))` when a reload happened.
    pub fn reload_contracts(&self, force: bool) -> Option<(usize, usize, Vec<TableName>)> {
        // Before the first read there is nothing to reload: that read takes the files as they are then.
        self.contracts_loaded.get()?;
        let (dir, stamp) = self.contracts_dir.as_ref()?;
        // Looking at every file costs time on a large tree (100,000 files: ~0.3 s): a check not forced waits
        // 20 times the last one's duration, so polling takes at most a twentieth of a core; after a watch saw a
        // change, 5 times (a stream of edits then costs at most a fifth of a core, and is seen within seconds).
        let mut checked = self
            .contracts_checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let factor = if self.contracts_dirty() { 5 } else { 20 };
        if !force && checked.is_some_and(|(at, took)| at.elapsed() < took * factor) {
            return None;
        }
        // Cleared before looking: a change seen during the look marks the files again for the next check.
        self.contracts_dirty
            .store(false, std::sync::atomic::Ordering::Release);
        let started = Instant::now();
        let now = crate::contracts::FilesState::of(dir);
        *checked = Some((Instant::now(), started.elapsed()));
        drop(checked);
        {
            let mut last = stamp
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !force && *last == now {
                return None;
            }
            *last = now;
        }
        let mut store = ContractStore::load_cached(dir, self.contract_cache.as_deref());
        // `now` above is the state compared next time; the load's own copy is not kept.
        store.files = crate::contracts::FilesState::default();
        let (loaded, rejected) = (store.len(), store.rejected.len());
        let mut current = self
            .contracts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed_keys = current.changed_tables(&store);
        let changed = changed_keys
            .iter()
            .filter_map(|t| TableName::parse(t).ok())
            .collect();
        *current = Arc::new(store);
        drop(current);
        // Every table's contract texts are the same (a forced look at unchanged files, the validation after a first
        // start that found every presumed contract as presumed): what was decided from them stands.
        if !changed_keys.is_empty() {
            self.contracts_version
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Some((loaded, rejected, changed))
    }

    /// A watch saw the contract files change since [`Lakehouse::reload_contracts`] last looked at them.
    pub fn contracts_dirty(&self) -> bool {
        self.contracts_dirty
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Watches the contract tree (inotify on Linux, through `notify`): every change to it (not a read) marks the
    /// files for the next [`Lakehouse::reload_contracts`] and calls `changed`. The watch lasts as long as the
    /// returned watcher; `None` when there is no contract folder or it cannot be watched (the caller then polls).
    /// The files are marked once when the watch starts, so a change made before it is looked for too. A watch can
    /// miss changes (on a network file system; in a folder put in the watched one's place, which
    /// [`ContractsWatch::replaced`] tells): callers still look now and then.
    pub fn watch_contracts(&self, changed: impl Fn() + Send + 'static) -> Option<ContractsWatch> {
        use notify::Watcher as _;
        let dir = self.contracts_dir()?;
        // Taken before the watch starts: a folder put in its place meanwhile reads as replaced.
        let folder = file_id(dir);
        let dirty = self.contracts_dirty.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Parley's own reads of contract files (opened and read on demand) are no change; anything else,
                // an error or a lost-events notice included, may be.
                if let Ok(e) = &event
                    && matches!(e.kind, notify::EventKind::Access(_))
                {
                    return;
                }
                dirty.store(true, std::sync::atomic::Ordering::Release);
                changed();
            })
            .map_err(|e| {
                tracing::warn!("cannot watch the contract files, polling them instead: {e}")
            })
            .ok()?;
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::Recursive) {
            tracing::warn!(
                dir = %dir.display(),
                "cannot watch the contract files, polling them instead: {e}"
            );
            return None;
        }
        self.contracts_dirty
            .store(true, std::sync::atomic::Ordering::Release);
        Some(ContractsWatch {
            _watcher: watcher,
            folder,
            dir: dir.to_path_buf(),
        })
    }

    /// Asks the catalogs' own permission services (`[catalogs.authorization]`) besides Parley's policy.
    pub fn with_authz(mut self, authz: authz::CatalogAuthz) -> Lakehouse {
        self.authz = authz;
        self
    }

    /// Marks `catalog` as a [`federation::Federation`], whose catalogs are listed apart.
    pub fn with_federated(mut self, federated: bool) -> Lakehouse {
        self.federated = federated;
        self
    }

    /// The catalogs' permission services.
    pub fn authz(&self) -> &authz::CatalogAuthz {
        &self.authz
    }

    /// Changes with every contracts reload that changed a table's contract texts (and with quality verdicts).
    pub fn contracts_version(&self) -> u64 {
        // What is keyed on it is built from the contracts: never from the set before the first read.
        self.ensure_contracts();
        self.contracts_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reuses the table list and loaded tables for `ttl` (zero: ask the catalog every time).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Lakehouse {
        self.cache_ttl = ttl;
        self
    }

    /// How long a listed table list is answered without asking the catalog: zero without a cache, else the TTL or
    /// `LISTING_COST_FACTOR` × the last listing's duration, whichever is longer.
    fn names_fresh_for(&self) -> Duration {
        if self.cache_ttl.is_zero() {
            return Duration::ZERO;
        }
        let listing = Duration::from_micros(
            self.listing_micros
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        self.cache_ttl.max(listing * LISTING_COST_FACTOR)
    }

    /// Every table in the catalog, sorted, across nested namespaces. The same `Arc` comes back while the list is
    /// unchanged, so callers may key their own caches on it.
    ///
    /// With a cache, a list older than the TTL is still answered at once while one background task asks the
    /// catalog again (listing walks every namespace, which costs a SQL catalog a scan per namespace); the list is
    /// refreshed at most every `LISTING_COST_FACTOR` × the last listing's duration, so on a catalog whose listing
    /// takes 0.3 s a new table shows up within 6 s rather than the TTL. Without a cache, every call asks the catalog.
    pub async fn list_tables(&self) -> Result<Arc<Vec<TableName>>, CatalogError> {
        use std::sync::atomic::Ordering;
        let previous = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let fresh_for = self.names_fresh_for();
        match &previous {
            Some((at, names)) if at.elapsed() < fresh_for => return Ok(names.clone()),
            Some((_, names)) if !self.cache_ttl.is_zero() => {
                if !self.refreshing.swap(true, Ordering::AcqRel) {
                    let (catalog, slot, flag, cost, federated, before, down) = (
                        self.catalog.clone(),
                        self.names.clone(),
                        self.refreshing.clone(),
                        self.listing_micros.clone(),
                        self.federated,
                        names.clone(),
                        self.down.clone(),
                    );
                    let sql = self.sql_listings.clone();
                    tokio::spawn(async move {
                        match timed_list_all(
                            catalog.as_ref(),
                            &cost,
                            federated,
                            &sql,
                            Some(&before),
                            &down,
                        )
                        .await
                        {
                            Ok(fresh) => {
                                store_names(&slot, fresh);
                            }
                            Err(e) => tracing::warn!("refreshing the table list failed: {e}"),
                        }
                        flag.store(false, Ordering::Release);
                    });
                }
                return Ok(names.clone());
            }
            _ => {}
        }
        // With a cache, one listing at a time answers every call that has nothing to answer from (the first ones
        // after a start, while `warm_up`'s listing runs): a call that waited finds the list it waited for.
        let _listing = if self.cache_ttl.is_zero() {
            None
        } else {
            let held = self.first_listing.lock().await;
            let listed = self
                .names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some((_, names)) = listed {
                return Ok(names);
            }
            Some(held)
        };
        let before = previous.map(|(_, names)| names);
        let fresh = timed_list_all(
            self.catalog.as_ref(),
            &self.listing_micros,
            self.federated,
            &self.sql_listings,
            before.as_deref().map(|v| v.as_slice()),
            &self.down,
        )
        .await?;
        Ok(store_names(&self.names, fresh))
    }
}

impl Lakehouse {
    /// Lists the catalog, as the server starts (on a task of its own), so that the first call that needs the table
    /// list (the first `list_tables`) finds it listed, or joins the listing under way, instead of starting it then.
    /// Without a cache every call lists anyway, and nothing is done. A failure is logged; the next call lists again.
    pub async fn warm_up(&self) {
        if self.cache_ttl.is_zero() {
            return;
        }
        if let Err(e) = self.list_tables().await {
            tracing::warn!(
                "listing the catalog at start failed (the first call lists it again): {e}"
            );
        }
    }
}

/// Background listing may use at most 1/this of a core: see [`Lakehouse::list_tables`].
const LISTING_COST_FACTOR: u32 = 20;

/// [`list_all`], recording how long it took.
async fn timed_list_all(
    catalog: &dyn Catalog,
    cost: &std::sync::atomic::AtomicU64,
    federated: bool,
    sql: &[SqlListing],
    previous: Option<&[TableName]>,
    down: &Mutex<HashMap<String, String>>,
) -> Result<Vec<TableName>, CatalogError> {
    let started = Instant::now();
    let names = list_all(catalog, federated, sql, previous, down).await?;
    let took = started.elapsed();
    cost.store(
        took.as_micros() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    tracing::debug!(
        tables = names.len(),
        elapsed_ms = took.as_millis() as u64,
        "listed the catalogs"
    );
    Ok(names)
}

/// Stores a freshly listed table list, keeping the previous `Arc` when nothing changed.
fn store_names(slot: &NamesSlot, fresh: Vec<TableName>) -> Arc<Vec<TableName>> {
    let mut slot = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let names = match slot.take() {
        Some((_, old)) if *old == fresh => old,
        _ => Arc::new(fresh),
    };
    *slot = Some((Instant::now(), names.clone()));
    names
}

/// Every table of `catalog`, sorted, across nested namespaces. With several catalogs (`federated`), one that
/// cannot be listed does not hide the others: its tables keep their `previous` listing (or are absent if it never
/// answered) and the failure is logged.
async fn list_all(
    catalog: &dyn Catalog,
    federated: bool,
    sql: &[SqlListing],
    previous: Option<&[TableName]>,
    down: &Mutex<HashMap<String, String>>,
) -> Result<Vec<TableName>, CatalogError> {
    let mut out = Vec::new();
    let mut failed = HashMap::new();
    if federated {
        for member in catalog.list_namespaces(None).await? {
            let name = member.as_ref().first().cloned().unwrap_or_default();
            let listing = sql.iter().find(|l| l.name == name);
            match list_catalog(catalog, Some(member.clone()), listing).await {
                Ok(names) => out.extend(names),
                Err(e) => {
                    tracing::warn!(
                        catalog = %name,
                        "listing this catalog failed; the other catalogs are served, and its tables keep their \
                         last listing: {e}"
                    );
                    let why = match e {
                        CatalogError::Unavailable(why) => why,
                        other => other.to_string(),
                    };
                    failed.insert(name.clone(), why);
                    out.extend(
                        previous
                            .unwrap_or_default()
                            .iter()
                            .filter(|t| t.namespace.first() == Some(&name))
                            .cloned(),
                    );
                }
            }
        }
    } else {
        out = list_catalog(catalog, None, sql.first()).await?;
    }
    *down
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = failed;
    out.sort();
    out.dedup();
    Ok(out)
}

/// The tables of one catalog (`root`: its namespace in a federation, whose name then leads every table's
/// namespace): in one query when it is a SQL catalog with a `listing`, else — or when that query fails — namespace
/// by namespace.
async fn list_catalog(
    catalog: &dyn Catalog,
    root: Option<NamespaceIdent>,
    listing: Option<&SqlListing>,
) -> Result<Vec<TableName>, CatalogError> {
    if let Some(listing) = listing {
        match list_sql(listing).await {
            Ok(mut tables) => {
                if let Some(root) = &root {
                    for t in &mut tables {
                        t.namespace.splice(0..0, root.as_ref().iter().cloned());
                    }
                }
                return Ok(tables);
            }
            Err(why) => tracing::debug!(
                catalog = %listing.name,
                "listing in one query failed, namespace by namespace: {why}"
            ),
        }
    }
    list_under(catalog, root).await
}

/// A SQL catalog whose tables are listed with one query: its name and its database URL, and a connection kept
/// open to tell whether anything was committed to the database since its last listing.
#[derive(Debug, Clone)]
pub(crate) struct SqlListing {
    name: String,
    uri: String,
    watch: Arc<tokio::sync::Mutex<Option<Watched>>>,
}

/// A SQL catalog's last listing and the connection that made it, with SQLite's `data_version` when it did.
struct Watched {
    conn: sqlx::sqlite::SqliteConnection,
    data_version: i64,
    tables: Vec<TableName>,
    /// The database file the connection opened, and when: a file replaced since (a restore puts a new file where
    /// the old one was, which the open connection never sees) is opened anew, and any connection after
    /// [`WATCH_FOR`] in case a replacement cannot be told.
    file: Option<FileId>,
    opened: Instant,
}

/// A watch on the contract tree, from [`Lakehouse::watch_contracts`]; it ends when dropped.
pub struct ContractsWatch {
    _watcher: notify::RecommendedWatcher,
    /// The watched folder's identity when the watch began.
    folder: Option<FileId>,
    dir: std::path::PathBuf,
}

impl ContractsWatch {
    /// The watched folder was replaced or removed since the watch began (a restore, a deployment swapping folders):
    /// the watch sees nothing of the folder now at its path, so the caller watches anew.
    pub fn replaced(&self) -> bool {
        file_id(&self.dir) != self.folder
    }
}

/// How long one connection watches a SQL catalog before it is opened anew.
const WATCH_FOR: Duration = Duration::from_secs(60);

/// What tells one file from another at the same path.
type FileId = (u64, u64);

/// The identity of the file at `path` (device and inode), where the platform tells it.
fn file_id(path: &std::path::Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("data_version", &self.data_version)
            .field("tables", &self.tables.len())
            .finish()
    }
}

/// The SQL catalogs among `members` that name their database (the embedded one always does).
fn sql_listings(members: &[crate::config::CatalogSettings]) -> Vec<SqlListing> {
    members
        .iter()
        .filter(|m| m.kind == crate::config::CatalogKind::Sql)
        .filter_map(|m| {
            Some(SqlListing {
                name: m.name.clone(),
                uri: m
                    .properties
                    .get(iceberg_catalog_sql::SQL_CATALOG_PROP_URI)?
                    .clone(),
                watch: Arc::default(),
            })
        })
        .collect()
}

/// Every table of a SQL catalog in one read-only query of its `iceberg_tables` (views left out). iceberg-catalog-sql
/// lists namespace by namespace, and each of its calls scans that table: 17 s for 100,000 tables in 1,000
/// namespaces, where this takes a fraction of a second. Namespaces are stored dot-joined, as Iceberg's SQL
/// catalogs write them.
///
/// The connection stays open between listings: SQLite's `PRAGMA data_version` on it changes whenever any other
/// connection (of this process or another) commits to the database, so while it is unchanged the last listing is
/// still the catalog's and the query is not run again (it took 0.17 s of a core every few seconds on 100,000
/// tables). The version is read before the listing, so a commit between the two makes the next call list again.
async fn list_sql(listing: &SqlListing) -> Result<Vec<TableName>, String> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let mut watch = listing.watch.lock().await;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&listing.uri)
        .map_err(|e| e.to_string())?
        .read_only(true)
        .create_if_missing(false);
    let file = file_id(options.get_filename());
    let mut watched = match watch.take() {
        Some(w) if w.file == file && w.opened.elapsed() < WATCH_FOR => w,
        _ => Watched {
            conn: options.connect().await.map_err(|e| e.to_string())?,
            data_version: -1,
            tables: Vec::new(),
            file,
            opened: Instant::now(),
        },
    };
    // On an error the connection is dropped (`watch` stays empty): the next listing opens a new one.
    let version: i64 = sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(&mut watched.conn)
        .await
        .map_err(|e| e.to_string())?;
    if version != watched.data_version {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_namespace, table_name FROM iceberg_tables WHERE catalog_name = ? \
             AND (iceberg_type IS NULL OR iceberg_type = 'TABLE')",
        )
        .bind(&listing.name)
        .fetch_all(&mut watched.conn)
        .await
        .map_err(|e| e.to_string())?;
        watched.tables = rows
            .into_iter()
            .map(|(namespace, name)| TableName {
                namespace: namespace.split('.').map(str::to_string).collect(),
                name,
            })
            .collect();
        watched.data_version = version;
    }
    let tables = watched.tables.clone();
    *watch = Some(watched);
    Ok(tables)
}

/// The tables in and below `root` (the whole catalog for `None`).
async fn list_under(
    catalog: &dyn Catalog,
    root: Option<NamespaceIdent>,
) -> Result<Vec<TableName>, CatalogError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    if let Some(root) = &root {
        for t in catalog.list_tables(root).await? {
            out.push(TableName::from_ident(&t));
        }
    }
    let mut pending: Vec<Option<NamespaceIdent>> = vec![root];
    while let Some(parent) = pending.pop() {
        for ns in catalog.list_namespaces(parent.as_ref()).await? {
            if !seen.insert(ns.clone()) {
                continue;
            }
            for t in catalog.list_tables(&ns).await? {
                out.push(TableName::from_ident(&t));
            }
            pending.push(Some(ns));
        }
    }
    Ok(out)
}

impl Lakehouse {
    /// Whether the table exists.
    pub async fn exists(&self, table: &TableName) -> Result<bool, CatalogError> {
        if let Some(first) = table.namespace.first()
            && let Some(why) = self
                .down
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(first)
        {
            // Its catalog could not be listed: whether the table exists is unknown, so it is not "missing".
            return Err(CatalogError::Unavailable(format!(
                "catalog {first} could not be listed: {why}"
            )));
        }
        let fresh_for = self.names_fresh_for();
        if let Some((at, names)) = &*self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            && at.elapsed() < fresh_for
        {
            return Ok(names.binary_search(table).is_ok());
        }
        let ident = table.ident()?;
        if !self.catalog.namespace_exists(ident.namespace()).await? {
            return Ok(false);
        }
        Ok(self.catalog.table_exists(&ident).await?)
    }

    /// Policy facts of a table, or `None` when it does not exist.
    pub async fn facts(&self, table: &TableName) -> Result<Option<TableFacts>, CatalogError> {
        if !self.exists(table).await? {
            return Ok(None);
        }
        Ok(Some(self.facts_of_listed(table)))
    }

    /// Policy facts of a table known to exist (e.g. from [`Lakehouse::list_tables`]).
    pub fn facts_of_listed(&self, table: &TableName) -> TableFacts {
        self.facts_and_contract(table).0
    }

    /// [`Lakehouse::facts_of_listed`] with the contract in force they were taken from (one lookup: a reload in
    /// between cannot pair one version's facts with another's text).
    pub fn facts_and_contract(
        &self,
        table: &TableName,
    ) -> (TableFacts, Option<Arc<LoadedContract>>) {
        let contract = self.contract(table);
        let mut facts = table_facts(
            &table.namespace_str(),
            &table.name,
            contract.as_deref().map(|c| &c.contract),
        );
        // The quality of the newest evaluated snapshot, when it was judged by the contract in force.
        if let Some(c) = &contract
            && let Some(report) = self.quality(table)
            && report.contract_version == c.contract.version
        {
            let breaches = report.breaches(self.clock.now());
            facts.quality = if breaches.is_empty() {
                "pass"
            } else {
                "breach"
            }
            .to_string();
            facts.quality_breaches = breaches;
        }
        (facts, contract)
    }

    /// Applies `f` to each table's cached metadata in place (no clone), for listings: one lock for the page. Past
    /// the TTL a cached table is still used while one background task reloads it, so a page of `list_tables` never
    /// waits on the catalog for tables it has seen; tables not cached yet are loaded now, concurrently. `query` and
    /// `describe_table` use [`Lakehouse::load`], which never answers past the TTL.
    pub async fn inspect_listed<'t, R>(
        &self,
        tables: impl IntoIterator<Item = &'t TableName>,
        f: impl Fn(&Table) -> R,
    ) -> Vec<Result<R, CatalogError>> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for table in tables {
            match self.tables.get(table) {
                Some((at, t)) => {
                    if at.elapsed() >= self.cache_ttl {
                        self.reload_in_background(table);
                    }
                    out.push(Some(Ok(f(&t))));
                }
                None => {
                    missing.push((out.len(), table));
                    out.push(None);
                }
            }
        }
        let loaded =
            futures::future::join_all(missing.iter().map(|(_, table)| self.load(table))).await;
        for ((at, _), table) in missing.into_iter().zip(loaded) {
            out[at] = Some(table.map(|t| f(&t)));
        }
        // Every slot was filled: from the cache, or by its load above.
        out.into_iter().flatten().collect()
    }

    /// Reloads a cached table in a background task, one at a time per table. A table that no longer loads leaves
    /// the cache, so the next caller sees the catalog's error.
    fn reload_in_background(&self, table: &TableName) {
        if !self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(table.clone())
        {
            return;
        }
        let (catalog, tables, reloading, table) = (
            self.catalog.clone(),
            self.tables.clone(),
            self.reloading.clone(),
            table.clone(),
        );
        tokio::spawn(async move {
            let loaded = match table.ident() {
                Ok(ident) => catalog
                    .load_table(&ident)
                    .await
                    .map_err(CatalogError::from)
                    .and_then(read_current_schema),
                Err(e) => Err(e),
            };
            match loaded {
                Ok(t) => tables.insert(table.clone(), (Instant::now(), t)),
                Err(e) => {
                    tracing::warn!(%table, "reloading table metadata failed: {e}");
                    tables.invalidate(&table);
                }
            }
            reloading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&table);
        });
    }

    /// Loads the table's current metadata (reused for the cache TTL).
    pub async fn load(&self, table: &TableName) -> Result<Table, CatalogError> {
        if let Some((at, t)) = self.tables.get(table)
            && at.elapsed() < self.cache_ttl
        {
            return Ok(t);
        }
        let loaded = read_current_schema(self.catalog.load_table(&table.ident()?).await?)?;
        if !self.cache_ttl.is_zero() {
            self.tables
                .insert(table.clone(), (Instant::now(), loaded.clone()));
        }
        Ok(loaded)
    }

    /// The catalogs' settings (`open::effective`), for landing commits (see [`commit`]).
    pub fn with_members(mut self, members: Vec<crate::config::CatalogSettings>) -> Lakehouse {
        self.sql_listings = sql_listings(&members).into();
        self.members = members;
        self
    }

    /// The table's metadata exactly as its catalog holds it now (no cache, no reading adjustments): what a
    /// commit is staged on.
    pub async fn load_for_commit(&self, table: &TableName) -> Result<Table, CatalogError> {
        Ok(self.catalog.load_table(&table.ident()?).await?)
    }

    /// Lands `staged` as the next metadata of `table` (staged on `current`; see [`commit::land`]) and forgets
    /// the cached table. Returns the new metadata location.
    pub async fn land(
        &self,
        table: &TableName,
        current: &Table,
        staged: &iceberg::spec::TableMetadata,
        request: &commit::UpdateTableRequest,
    ) -> Result<String, commit::CommitError> {
        let (settings, ident) = if self.federated {
            let catalog = table.namespace.first().cloned().unwrap_or_default();
            let settings = self.members.iter().find(|m| m.name == catalog);
            let ident = TableIdent::new(
                NamespaceIdent::from_vec(table.namespace[1..].to_vec())
                    .map_err(|e| commit::CommitError::Failed(e.to_string()))?,
                table.name.clone(),
            );
            (settings, ident)
        } else {
            (
                self.members.first(),
                table
                    .ident()
                    .map_err(|e| commit::CommitError::Failed(e.to_string()))?,
            )
        };
        let settings = settings.ok_or_else(|| {
            commit::CommitError::Unsupported(format!("no catalog serves {table}"))
        })?;
        let landed = commit::land(settings, &ident, current, staged, request).await;
        self.tables.invalidate(table);
        landed
    }

    /// The table's contract in force now (the lakehouse's clock), if it has a valid one.
    pub fn contract(&self, table: &TableName) -> Option<Arc<LoadedContract>> {
        self.store().get_at(&table.to_string(), self.clock.now())
    }

    /// Every version of the table's contract, oldest first, with when each takes effect.
    pub fn contract_versions(&self, table: &TableName) -> Vec<crate::contracts::Version> {
        self.store().versions(&table.to_string()).to_vec()
    }

    /// The clock that decides which contract version is in force (a test's moved clock, see `clock`).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Lakehouse {
        self.clock = clock;
        self
    }
}

/// The table as its current state is read: its current snapshot under the table's current schema.
///
/// A schema change (rename, added column) makes a new current schema without a new snapshot, so the current
/// snapshot still names the schema it was written under; iceberg-rust 0.10 plans a scan with the snapshot's
/// schema while its DataFusion providers expose the current one, and a renamed or added column then "does not
/// exist". Iceberg's own rule (Java `TableScan`) reads the current snapshot with the current schema — files are
/// projected by field id, so renamed columns resolve and added ones read as null. Older snapshots keep theirs.
pub(crate) fn read_current_schema(table: Table) -> Result<Table, CatalogError> {
    let meta = table.metadata();
    let current_schema = meta.current_schema_id();
    let Some(snapshot) = meta.current_snapshot() else {
        return Ok(table);
    };
    if snapshot.schema_id().is_none_or(|id| id == current_schema) {
        return Ok(table);
    }
    let current_id = snapshot.snapshot_id();
    let internal = |e: &dyn fmt::Display| {
        CatalogError::Backend(format!("cannot read the table's metadata: {e}"))
    };
    let mut value = serde_json::to_value(meta).map_err(|e| internal(&e))?;
    if let Some(snapshots) = value.get_mut("snapshots").and_then(|s| s.as_array_mut()) {
        for s in snapshots {
            if s.get("snapshot-id").and_then(|v| v.as_i64()) == Some(current_id) {
                s["schema-id"] = serde_json::json!(current_schema);
            }
        }
    }
    let metadata: iceberg::spec::TableMetadata =
        serde_json::from_value(value).map_err(|e| internal(&e))?;
    let mut builder = Table::builder()
        .file_io(table.file_io().clone())
        .metadata(metadata)
        .identifier(table.identifier().clone())
        .readonly(true)
        .runtime(iceberg::Runtime::try_current()?);
    if let Some(location) = table.metadata_location() {
        builder = builder.metadata_location(location);
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema of one required long column `id`.
    fn id_schema() -> iceberg::spec::Schema {
        iceberg::spec::Schema::builder()
            .with_fields(vec![Arc::new(iceberg::spec::NestedField::required(
                1,
                "id",
                iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Long),
            ))])
            .build()
            .unwrap()
    }

    /// A watched contract tree is marked changed by writes, new files and new folders (and their files), never by
    /// reads; a reload after a change clears the mark and sees the change.
    #[tokio::test]
    async fn a_watched_contract_tree_is_marked_by_changes_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = open_sql_catalog(&dir.path().join("c.db"), &dir.path().join("w"), "t")
            .await
            .unwrap();
        let contracts = dir.path().join("contracts");
        std::fs::create_dir_all(contracts.join("ns")).unwrap();
        let file = contracts.join("ns/a.yaml");
        std::fs::write(&file, "not: a contract\n").unwrap();
        let lakehouse =
            Lakehouse::new(catalog, ContractStore::default()).with_contracts_dir(&contracts);
        lakehouse.ensure_contracts();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let watch = lakehouse
            .watch_contracts(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .expect("a local folder can be watched");
        // Marked once at the start, for changes made before the watch; a look clears the mark.
        assert!(lakehouse.contracts_dirty());
        assert!(
            lakehouse.reload_contracts(false).is_none(),
            "nothing changed"
        );
        assert!(!lakehouse.contracts_dirty());
        let marked = |what: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !lakehouse.contracts_dirty() {
                assert!(Instant::now() < deadline, "{what} was not seen");
                std::thread::sleep(Duration::from_millis(10));
            }
            // As the server does (~0.1 s): a look right after the last one would be put off.
            std::thread::sleep(Duration::from_millis(100));
        };

        // Reading the files (as calls do, on demand) is no change.
        for _ in 0..3 {
            std::fs::read(&file).unwrap();
            std::fs::read_dir(contracts.join("ns")).unwrap().count();
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(!lakehouse.contracts_dirty(), "a read marked the tree");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);

        std::fs::write(&file, "still: not a contract\n").unwrap();
        marked("an edit");
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) > 0);
        let (_, refused, _) = lakehouse
            .reload_contracts(false)
            .expect("the edit is reloaded");
        assert_eq!(refused, 1);
        assert!(!lakehouse.contracts_dirty());

        // A new namespace folder, and a file written into it after the folder was made.
        std::fs::create_dir(contracts.join("other")).unwrap();
        marked("a new folder");
        lakehouse.reload_contracts(true);
        std::thread::sleep(Duration::from_millis(100));
        lakehouse.reload_contracts(true);
        assert!(!lakehouse.contracts_dirty());
        std::fs::write(contracts.join("other/b.yaml"), "x: 1\n").unwrap();
        marked("a file in a new folder");
        let (_, refused, _) = lakehouse.reload_contracts(false).expect("reloaded");
        assert_eq!(refused, 2);

        // The folder replaced whole: the old watch says so, and a new one marks the tree.
        assert!(!watch.replaced());
        std::fs::rename(&contracts, dir.path().join("contracts.old")).unwrap();
        std::fs::create_dir_all(contracts.join("ns")).unwrap();
        std::fs::write(contracts.join("ns/a.yaml"), "new: tree\n").unwrap();
        assert!(watch.replaced());
        drop(watch);
        lakehouse.reload_contracts(true);
        assert!(!lakehouse.contracts_dirty());
        let watch = lakehouse.watch_contracts(|| {}).expect("watched again");
        assert!(!watch.replaced());
        assert!(lakehouse.contracts_dirty());
    }

    /// A first read with a cache of validated contracts takes the files it does not know unvalidated; validating
    /// them where they are and the reload after (which finds the same texts) leave the contracts version alone,
    /// so nothing decided from them starts over; an edit afterwards changes it.
    #[tokio::test]
    async fn a_first_start_validates_in_the_background_without_starting_over() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = open_sql_catalog(&dir.path().join("c.db"), &dir.path().join("w"), "t")
            .await
            .unwrap();
        let contracts = dir.path().join("contracts");
        crate::demo::write_contracts(&contracts).unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let lakehouse = Lakehouse::new(catalog, ContractStore::default())
            .with_contracts_dir(&contracts)
            .with_contract_cache(&dir.path().join("cache/validated-contracts"));
        lakehouse.ensure_contracts();
        let n = crate::demo::CONTRACTS.len();
        assert_eq!(lakehouse.contracts().presumed, n);
        // The usual look at the files finds nothing to do: only the validation reads them again.
        assert!(lakehouse.reload_contracts(false).is_none());
        let version = lakehouse.contracts_version();
        let (loaded, refused, changed) = lakehouse
            .validate_presumed_contracts()
            .expect("presumed contracts are validated");
        assert_eq!((loaded, refused, changed.len()), (n, 0, 0));
        assert_eq!(lakehouse.contracts().presumed, 0);
        assert_eq!(lakehouse.contracts_version(), version);
        assert!(lakehouse.validate_presumed_contracts().is_none());

        let orders = contracts.join("sales/orders.yaml");
        let text = std::fs::read_to_string(&orders).unwrap();
        std::fs::write(
            &orders,
            text.replacen("version: 1.2.0", "version: 1.2.1", 1),
        )
        .unwrap();
        let (_, _, changed) = lakehouse.reload_contracts(true).expect("forced");
        assert_eq!(changed.len(), 1);
        assert!(lakehouse.contracts_version() > version);
    }

    #[tokio::test]
    async fn a_catalog_that_cannot_be_listed_hides_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let local = open_sql_catalog(&dir.path().join("c.db"), &dir.path().join("w"), "t")
            .await
            .unwrap();
        let ns = NamespaceIdent::new("ns".to_string());
        local.create_namespace(&ns, HashMap::new()).await.unwrap();
        let schema = id_schema();
        local
            .create_table(
                &ns,
                iceberg::TableCreation::builder()
                    .name("a".to_string())
                    .schema(schema)
                    .build(),
            )
            .await
            .unwrap();
        // Nothing listens on port 1.
        let down = open::open_rest(&crate::config::CatalogSettings {
            name: "down".into(),
            kind: crate::config::CatalogKind::Rest,
            authorization: None,
            files_outside_location: None,
            properties: [("uri".to_string(), "http://127.0.0.1:1".to_string())].into(),
        })
        .await
        .unwrap();
        let federation = Arc::new(federation::Federation::new(vec![
            ("up".to_string(), local),
            ("down".to_string(), down),
        ]));
        let lakehouse =
            Lakehouse::new(federation.clone(), ContractStore::default()).with_federated(true);
        let names = lakehouse.list_tables().await.unwrap();
        assert_eq!(
            names.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["up.ns.a"]
        );
        // A table of the catalog that is down is unavailable, not missing; the others answer as usual.
        let err = lakehouse
            .exists(&TableName::parse("down.ns.x").unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CatalogError::Unavailable(why) if why.contains("catalog down")),
            "{err}"
        );
        assert!(
            lakehouse
                .exists(&TableName::parse("up.ns.a").unwrap())
                .await
                .unwrap()
        );
        // Not federated, the same failure is the listing's failure.
        let strict = Lakehouse::new(federation, ContractStore::default());
        assert!(strict.list_tables().await.is_err());
    }

    /// The one-query listing of a SQL catalog names exactly the tables iceberg-catalog-sql's namespace-by-namespace
    /// listing names — nested namespaces included — alone and federated.
    #[tokio::test]
    async fn a_sql_catalog_listed_in_one_query_lists_what_iceberg_lists() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let sql = open_sql_catalog(&db, &dir.path().join("w"), "t")
            .await
            .unwrap();
        for (levels, tables) in [
            (vec!["a"], vec!["x", "y"]),
            (vec!["a", "b"], vec!["z"]),
            (vec!["c"], vec![]),
            (vec!["d"], vec!["x"]),
        ] {
            let ns = NamespaceIdent::from_strs(levels).unwrap();
            sql.create_namespace(&ns, HashMap::new()).await.unwrap();
            for t in tables {
                sql.create_table(
                    &ns,
                    iceberg::TableCreation::builder()
                        .name(t.to_string())
                        .schema(id_schema())
                        .build(),
                )
                .await
                .unwrap();
            }
        }
        let settings = crate::config::CatalogSettings {
            name: "t".into(),
            kind: crate::config::CatalogKind::Sql,
            authorization: None,
            files_outside_location: None,
            properties: [(
                "uri".to_string(),
                format!("sqlite:{}?mode=rwc", db.display()),
            )]
            .into(),
        };
        let shown = |names: &[TableName]| {
            let mut v = names.iter().map(ToString::to_string).collect::<Vec<_>>();
            v.sort();
            v
        };
        let listing = &sql_listings(std::slice::from_ref(&settings))[0];
        let fast = shown(&list_sql(listing).await.unwrap());
        assert_eq!(fast, ["a.b.z", "a.x", "a.y", "d.x"]);
        assert_eq!(fast, shown(&list_under(sql.as_ref(), None).await.unwrap()));
        // Listed again on the watched connection: nothing committed, the same tables; then each kind of commit
        // (a table created, renamed, dropped; another process's connection) is seen by the next listing.
        assert_eq!(shown(&list_sql(listing).await.unwrap()), fast);
        let d = NamespaceIdent::from_strs(["d"]).unwrap();
        sql.create_table(
            &d,
            iceberg::TableCreation::builder()
                .name("new".to_string())
                .schema(id_schema())
                .build(),
        )
        .await
        .unwrap();
        assert_eq!(
            shown(&list_sql(listing).await.unwrap()),
            ["a.b.z", "a.x", "a.y", "d.new", "d.x"]
        );
        sql.rename_table(
            &iceberg::TableIdent::new(d.clone(), "new".into()),
            &iceberg::TableIdent::new(d.clone(), "renamed".into()),
        )
        .await
        .unwrap();
        assert_eq!(
            shown(&list_sql(listing).await.unwrap()),
            ["a.b.z", "a.x", "a.y", "d.renamed", "d.x"]
        );
        sql.drop_table(&iceberg::TableIdent::new(d.clone(), "renamed".into()))
            .await
            .unwrap();
        assert_eq!(shown(&list_sql(listing).await.unwrap()), fast);
        // A commit through a connection of its own, as another process's would be.
        {
            use sqlx::ConnectOptions;
            use std::str::FromStr;
            let mut other =
                sqlx::sqlite::SqliteConnectOptions::from_str(&settings.properties["uri"])
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
            for (from, to, expect) in [
                ("z", "zz", ["a.b.zz", "a.x", "a.y", "d.x"]),
                ("zz", "z", ["a.b.z", "a.x", "a.y", "d.x"]),
            ] {
                sqlx::query("UPDATE iceberg_tables SET table_name = ? WHERE table_name = ?")
                    .bind(to)
                    .bind(from)
                    .execute(&mut other)
                    .await
                    .unwrap();
                assert_eq!(shown(&list_sql(listing).await.unwrap()), expect);
            }
            // The file replaced by another (a restore): the next listing reads the new file, not the one the
            // watching connection still has open; then the original put back, read again.
            let (copy, original) = (dir.path().join("restored.db"), dir.path().join("orig.db"));
            for path in [&copy, &original] {
                sqlx::query("VACUUM INTO ?")
                    .bind(path.display().to_string())
                    .execute(&mut other)
                    .await
                    .unwrap();
            }
            let mut restored = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&copy)
                .connect()
                .await
                .unwrap();
            sqlx::query("DELETE FROM iceberg_tables WHERE table_name = 'x'")
                .execute(&mut restored)
                .await
                .unwrap();
            drop(restored);
            std::fs::rename(&copy, &db).unwrap();
            assert_eq!(shown(&list_sql(listing).await.unwrap()), ["a.b.z", "a.y"]);
            std::fs::rename(&original, &db).unwrap();
            assert_eq!(shown(&list_sql(listing).await.unwrap()), fast);
        }
        let lakehouse = Lakehouse::new(sql.clone(), ContractStore::default())
            .with_members(vec![settings.clone()]);
        assert_eq!(shown(&lakehouse.list_tables().await.unwrap()), fast);
        // Federated: the catalog's name is the first level.
        let federation = Arc::new(federation::Federation::new(vec![("t".to_string(), sql)]));
        let lakehouse = Lakehouse::new(federation, ContractStore::default())
            .with_federated(true)
            .with_members(vec![settings]);
        assert_eq!(
            shown(&lakehouse.list_tables().await.unwrap()),
            ["t.a.b.z", "t.a.x", "t.a.y", "t.d.x"]
        );
    }

    /// A catalog that counts its listings (top-level namespace walks) and makes each take 200 ms.
    #[derive(Debug)]
    struct SlowListings {
        inner: Arc<dyn Catalog>,
        listings: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Catalog for SlowListings {
        async fn list_namespaces(
            &self,
            parent: Option<&NamespaceIdent>,
        ) -> iceberg::Result<Vec<NamespaceIdent>> {
            if parent.is_none() {
                self.listings
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            self.inner.list_namespaces(parent).await
        }
        async fn create_namespace(
            &self,
            namespace: &NamespaceIdent,
            properties: HashMap<String, String>,
        ) -> iceberg::Result<iceberg::Namespace> {
            self.inner.create_namespace(namespace, properties).await
        }
        async fn get_namespace(
            &self,
            namespace: &NamespaceIdent,
        ) -> iceberg::Result<iceberg::Namespace> {
            self.inner.get_namespace(namespace).await
        }
        async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
            self.inner.namespace_exists(namespace).await
        }
        async fn update_namespace(
            &self,
            namespace: &NamespaceIdent,
            properties: HashMap<String, String>,
        ) -> iceberg::Result<()> {
            self.inner.update_namespace(namespace, properties).await
        }
        async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
            self.inner.drop_namespace(namespace).await
        }
        async fn list_tables(
            &self,
            namespace: &NamespaceIdent,
        ) -> iceberg::Result<Vec<iceberg::TableIdent>> {
            self.inner.list_tables(namespace).await
        }
        async fn create_table(
            &self,
            namespace: &NamespaceIdent,
            creation: iceberg::TableCreation,
        ) -> iceberg::Result<Table> {
            self.inner.create_table(namespace, creation).await
        }
        async fn load_table(&self, table: &iceberg::TableIdent) -> iceberg::Result<Table> {
            self.inner.load_table(table).await
        }
        async fn drop_table(&self, table: &iceberg::TableIdent) -> iceberg::Result<()> {
            self.inner.drop_table(table).await
        }
        async fn purge_table(&self, table: &iceberg::TableIdent) -> iceberg::Result<()> {
            self.inner.purge_table(table).await
        }
        async fn table_exists(&self, table: &iceberg::TableIdent) -> iceberg::Result<bool> {
            self.inner.table_exists(table).await
        }
        async fn rename_table(
            &self,
            src: &iceberg::TableIdent,
            dest: &iceberg::TableIdent,
        ) -> iceberg::Result<()> {
            self.inner.rename_table(src, dest).await
        }
        async fn register_table(
            &self,
            table: &iceberg::TableIdent,
            metadata_location: String,
        ) -> iceberg::Result<Table> {
            self.inner.register_table(table, metadata_location).await
        }
        async fn update_table(&self, commit: iceberg::TableCommit) -> iceberg::Result<Table> {
            self.inner.update_table(commit).await
        }
    }

    /// The listing a start begins is the one the first calls answer from: however many arrive while it runs, the
    /// catalog is listed once. Without a cache each call lists (and the start lists nothing).
    #[tokio::test]
    async fn calls_during_the_start_listing_wait_for_it_instead_of_listing_again() {
        let dir = tempfile::tempdir().unwrap();
        let sql = open_sql_catalog(&dir.path().join("c.db"), &dir.path().join("w"), "t")
            .await
            .unwrap();
        let ns = NamespaceIdent::new("ns".to_string());
        sql.create_namespace(&ns, HashMap::new()).await.unwrap();
        let creation = iceberg::TableCreation::builder()
            .name("a".to_string())
            .schema(id_schema())
            .build();
        sql.create_table(&ns, creation).await.unwrap();
        let catalog = Arc::new(SlowListings {
            inner: sql,
            listings: Default::default(),
        });
        let listings = || catalog.listings.load(std::sync::atomic::Ordering::SeqCst);
        let cached = Arc::new(
            Lakehouse::new(catalog.clone(), ContractStore::default())
                .with_cache_ttl(Duration::from_secs(3600)),
        );
        let start = cached.clone();
        let warming = tokio::spawn(async move { start.warm_up().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let lakehouse = cached.clone();
                tokio::spawn(async move { lakehouse.list_tables().await.unwrap().len() })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), 1);
        }
        warming.await.unwrap();
        assert_eq!(listings(), 1, "the calls listed the catalog again");

        let uncached = Lakehouse::new(catalog.clone(), ContractStore::default());
        uncached.warm_up().await;
        assert_eq!(listings(), 1, "nothing to warm without a cache");
        let (a, b) = tokio::join!(uncached.list_tables(), uncached.list_tables());
        assert_eq!((a.unwrap().len(), b.unwrap().len()), (1, 1));
        assert_eq!(listings(), 3);
    }

    #[tokio::test]
    async fn the_table_list_is_reused_for_the_ttl_only() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = open_sql_catalog(&dir.path().join("c.db"), &dir.path().join("w"), "t")
            .await
            .unwrap();
        let ns = NamespaceIdent::new("ns".to_string());
        catalog.create_namespace(&ns, HashMap::new()).await.unwrap();
        let create = |name: &str| {
            iceberg::TableCreation::builder()
                .name(name.to_string())
                .schema(id_schema())
                .build()
        };
        catalog.create_table(&ns, create("a")).await.unwrap();
        let cached = Lakehouse::new(catalog.clone(), ContractStore::default())
            .with_cache_ttl(Duration::from_secs(3600));
        let uncached = Lakehouse::new(catalog.clone(), ContractStore::default());
        let first = cached.list_tables().await.unwrap();
        assert_eq!(first.len(), 1);
        catalog.create_table(&ns, create("b")).await.unwrap();
        let b = TableName::parse("ns.b").unwrap();
        // Within the TTL the cached list (and existence answers) stay as they were...
        assert!(Arc::ptr_eq(&first, &cached.list_tables().await.unwrap()));
        assert!(!cached.exists(&b).await.unwrap());
        // ...while a lakehouse without a cache sees the new table at once.
        assert_eq!(uncached.list_tables().await.unwrap().len(), 2);
        assert!(uncached.exists(&b).await.unwrap());
        // An unchanged list keeps its identity across refreshes (callers key caches on it).
        let again = uncached.list_tables().await.unwrap();
        assert!(Arc::ptr_eq(&again, &uncached.list_tables().await.unwrap()));
        // Past the TTL the old list is answered while a background refresh runs; the new table then shows up.
        let short = Lakehouse::new(catalog.clone(), ContractStore::default())
            .with_cache_ttl(Duration::from_millis(1));
        assert_eq!(short.list_tables().await.unwrap().len(), 2);
        catalog.create_table(&ns, create("c")).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while short.list_tables().await.unwrap().len() != 3 {
            assert!(
                Instant::now() < deadline,
                "the table list was never refreshed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn listings_answer_stale_metadata_while_it_reloads() {
        use iceberg::transaction::{ApplyTransactionAction, Transaction};
        let dir = tempfile::tempdir().unwrap();
        let catalog = open_sql_catalog(&dir.path().join("c.db"), &dir.path().join("w"), "t")
            .await
            .unwrap();
        let ns = NamespaceIdent::new("ns".to_string());
        catalog.create_namespace(&ns, HashMap::new()).await.unwrap();
        let schema = id_schema();
        let creation = iceberg::TableCreation::builder()
            .name("a".to_string())
            .schema(schema)
            .build();
        let table = catalog.create_table(&ns, creation).await.unwrap();
        let lakehouse = Lakehouse::new(catalog.clone(), ContractStore::default())
            .with_cache_ttl(Duration::from_millis(500));
        let a = TableName::parse("ns.a").unwrap();
        let mark = |t: &Table| t.metadata().properties().get("mark").cloned();
        assert_eq!(
            lakehouse
                .inspect_listed([&a], mark)
                .await
                .remove(0)
                .unwrap(),
            None
        );
        let tx = Transaction::new(&table);
        let tx = tx
            .update_table_properties()
            .set("mark".to_string(), "1".to_string())
            .apply(tx)
            .unwrap();
        tx.commit(catalog.as_ref()).await.unwrap();
        // Within the TTL the cached metadata is answered; `load` agrees.
        assert_eq!(
            lakehouse
                .inspect_listed([&a], mark)
                .await
                .remove(0)
                .unwrap(),
            None
        );
        assert_eq!(mark(&lakehouse.load(&a).await.unwrap()), None);
        tokio::time::sleep(Duration::from_millis(550)).await;
        // Past it, the first listing still answers at once from the cache and starts a reload...
        assert_eq!(
            lakehouse
                .inspect_listed([&a], mark)
                .await
                .remove(0)
                .unwrap(),
            None
        );
        // ...which later listings see, while `load` never answers past the TTL.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lakehouse
            .inspect_listed([&a], mark)
            .await
            .remove(0)
            .unwrap()
            .is_none()
        {
            assert!(Instant::now() < deadline, "the table was never reloaded");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A table that no longer loads leaves the cache after its reload fails, so listings then see the error.
        catalog
            .drop_table(&TableIdent::new(ns.clone(), "a".to_string()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(550)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while lakehouse.inspect_listed([&a], mark).await.remove(0).is_ok() {
            assert!(Instant::now() < deadline, "a dropped table stayed cached");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn table_names_parse() {
        let t = TableName::parse("sales.orders").unwrap();
        assert_eq!(t.namespace, ["sales"]);
        assert_eq!(t.name, "orders");
        assert_eq!(TableName::parse("a.b.c").unwrap().namespace_str(), "a.b");
        for bad in ["orders", "", ".x", "sales.", "a..b"] {
            let err = TableName::parse(bad).unwrap_err();
            assert!(err.contains("namespace.table"), "{err}");
        }
    }
}

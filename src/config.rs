//! Configuration: one typed struct, loaded from `<data dir>/parley.toml` (or `--config`) and overridden by
//! `PARLEY_*` environment variables and command-line flags, in that order.
//!
//! Invariant: every field has a documented default, so no configuration at all gives the embedded demo
//! lakehouse with sensible limits.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything Parley can be told. Every field has a default (see [`Config::default`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Principal the local (stdio) caller acts as. Env: `PARLEY_PRINCIPAL`. Default: `analyst`.
    pub principal: String,
    /// Name of the embedded Iceberg SQL catalog (the `catalog_name` column of its SQLite file), used when no
    /// `[[catalogs]]` are configured. Default: `parley`.
    pub catalog_name: String,
    /// The catalogs Parley governs. None: the embedded SQL catalog in the data dir (the demo lakehouse). With
    /// one, agents name tables `namespace.table`; with several, `catalog.namespace.table`.
    pub catalogs: Vec<CatalogSettings>,
    /// Bounds applied to every `query` call.
    pub query: QueryLimits,
    /// Page size of `list_tables` when the caller gives none. Default: 50.
    pub list_page_size: usize,
    /// How long the table list and loaded table metadata are reused before the catalog is asked again, in
    /// milliseconds (0: ask on every call). Env: `PARLEY_CATALOG_CACHE_TTL_MS`. Default: 2000.
    pub catalog_cache_ttl_ms: u64,
    /// Watch the contract files for changes (inotify on Linux) instead of polling them every 2 s. Turn it off where
    /// a change raises no event (NFS and some other network or FUSE file systems): a watched tree is otherwise
    /// only looked at every 60 s. Env: `PARLEY_WATCH_CONTRACTS`. Default: true.
    pub watch_contracts: bool,
    /// How long `tools/list` waits to learn whether its caller owns a table (a policy decision per table with a
    /// contract for one who owns none: seconds on 100,000 tables) before answering without the owners' tools; the
    /// session is told when its list changes. In milliseconds. Env: `PARLEY_TOOLS_LIST_WAIT_MS`. Default: 250.
    pub tools_list_wait_ms: u64,
    /// The audit log.
    pub audit: AuditSettings,
    /// Bearer-token validation on streamable HTTP.
    pub auth: AuthSettings,
    /// What streamable HTTP serves at once.
    pub http: HttpLimits,
    /// Access negotiation.
    pub negotiation: NegotiationSettings,
    /// List each tool's output schema in `tools/list` (for clients that validate or generate types from it). Off by
    /// default: they are two thirds of the list's bytes, which every agent pays in context before its first call;
    /// structured results are returned either way. Default: false.
    pub output_schemas: bool,
}

/// One catalog Parley governs (`[[catalogs]]` in parley.toml).
///
/// Every key besides `name` and `type` is a catalog property, named as Iceberg's own clients name them so a
/// user copies them from a Spark or pyiceberg configuration: for `rest`, `uri`, `warehouse`, `credential`
/// (`client_id:client_secret`, OAuth2 client credentials), `token`, `scope`, `oauth2-server-uri`, `audience`,
/// `resource`, `prefix`, `header.<name>` and storage properties (`s3.*`, `client.*`); for `sql`, `uri` (a
/// `sqlite:` URL), `warehouse` and storage properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogSettings {
    /// The catalog's name: the first part of table names when several catalogs are configured.
    pub name: String,
    /// `rest` (an Iceberg REST catalog) or `sql` (an Iceberg SQL catalog on SQLite).
    #[serde(rename = "type")]
    pub kind: CatalogKind,
    /// The catalog's own permission service, asked for every agent action on its tables besides Parley's policy
    /// (`[catalogs.authorization]`). None: only Parley's service account's view of the catalog applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<CatalogAuthorization>,
    /// Read data files outside their table's location for this catalog's tables (tables migrated in place), over
    /// `query.files_outside_location`. None: that setting decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_outside_location: Option<bool>,
    /// Catalog properties.
    #[serde(flatten)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// A catalog's permission service (`[catalogs.authorization]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CatalogAuthorization {
    /// `lakekeeper`: Lakekeeper's `POST /management/v1/action/batch-check`, asked with Parley's own token.
    /// `token-exchange`: the catalog itself, asked with a token for the agent obtained by OAuth 2.0 Token
    /// Exchange (RFC 8693) of the agent's verified token (HTTP agents only).
    #[serde(rename = "type")]
    pub kind: AuthorizationKind,
    /// Lakekeeper: base URL of the management API, e.g. `https://lakekeeper.example.com/management` (requests go
    /// to `<management-uri>/v1/action/batch-check`).
    pub management_uri: Option<String>,
    /// Lakekeeper: the warehouse (a UUID) the catalog's `warehouse` names.
    pub warehouse_id: Option<String>,
    /// Token exchange: the token endpoint. Default: the catalog's `oauth2-server-uri`, else
    /// `<uri>/v1/oauth/tokens`.
    pub token_endpoint: Option<String>,
    /// Token exchange: the `audience` asked for (the catalog). Default: none.
    pub audience: Option<String>,
    /// How long an answer is reused, in milliseconds. Default: 5000.
    #[serde(default = "default_authorization_cache_ms")]
    pub cache_ms: u64,
    /// Lakekeeper: catalog user id of each Parley principal, e.g. `analyst = "oidc~4f2c..."`; a principal not
    /// listed is `oidc~<principal id>` (an HTTP agent's id is its token's subject, as Lakekeeper names OIDC users).
    #[serde(default)]
    pub identities: std::collections::BTreeMap<String, String>,
}

impl CatalogAuthorization {
    fn check(&self, catalog: &CatalogSettings) -> Result<(), String> {
        let missing = |key: &str| {
            format!(
                "catalog {:?}: [catalogs.authorization] of type {} needs `{key}`",
                catalog.name,
                match self.kind {
                    AuthorizationKind::Lakekeeper => "lakekeeper",
                    AuthorizationKind::TokenExchange => "token-exchange",
                }
            )
        };
        match self.kind {
            AuthorizationKind::Lakekeeper => {
                if self.management_uri.is_none() {
                    return Err(missing("management-uri"));
                }
                if self.warehouse_id.is_none() {
                    return Err(missing("warehouse-id"));
                }
            }
            AuthorizationKind::TokenExchange => {
                if catalog.kind != CatalogKind::Rest {
                    return Err(format!(
                        "catalog {:?}: token exchange asks the catalog itself, so it needs a rest catalog",
                        catalog.name
                    ));
                }
            }
        }
        Ok(())
    }
}

fn default_authorization_cache_ms() -> u64 {
    5000
}

/// Permission services Parley asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthorizationKind {
    /// Lakekeeper (OpenFGA or Cedar behind it).
    Lakekeeper,
    /// The catalog, with a token per agent from OAuth 2.0 Token Exchange.
    TokenExchange,
}

/// The kinds of catalog Parley reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    /// An Iceberg REST catalog (Lakekeeper, Polaris, Gravitino, Nessie, Unity, S3 Tables, ...).
    Rest,
    /// An Iceberg SQL catalog on SQLite (pyiceberg's `SqlCatalog`), like the embedded one.
    Sql,
}

impl CatalogSettings {
    /// Properties a catalog of this kind understands, exactly or by prefix; a key outside them is refused, so a
    /// typo (`credentials`) is said at start-up rather than ignored.
    fn check(&self) -> Result<(), String> {
        const REST: [&str; 10] = [
            "uri",
            "warehouse",
            "credential",
            "token",
            "scope",
            "oauth2-server-uri",
            "audience",
            "resource",
            "prefix",
            "disable-header-redaction",
        ];
        const REST_PREFIXES: [&str; 5] = ["header.", "s3.", "client.", "gcs.", "adls."];
        const SQL: [&str; 2] = ["uri", "warehouse"];
        const STORAGE_PREFIXES: [&str; 4] = ["s3.", "client.", "gcs.", "adls."];
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(format!(
                "catalog name {:?} must be non-empty ASCII letters, digits, '_' or '-' (it becomes the first part \
                 of table names)",
                self.name
            ));
        }
        let (known, prefixes): (&[&str], &[&str]) = match self.kind {
            CatalogKind::Rest => (&REST, &REST_PREFIXES),
            CatalogKind::Sql => (&SQL, &STORAGE_PREFIXES),
        };
        for key in self.properties.keys() {
            if !known.contains(&key.as_str()) && !prefixes.iter().any(|p| key.starts_with(p)) {
                let mut all: Vec<String> = known.iter().map(|k| k.to_string()).collect();
                all.extend(prefixes.iter().map(|p| format!("{p}*")));
                return Err(format!(
                    "catalog {:?}: unknown property {key:?}; a {} catalog takes {}",
                    self.name,
                    match self.kind {
                        CatalogKind::Rest => "rest",
                        CatalogKind::Sql => "sql",
                    },
                    all.join(", ")
                ));
            }
        }
        if let Some(authorization) = &self.authorization {
            authorization.check(self)?;
        }
        if self.kind == CatalogKind::Rest && !self.properties.contains_key("uri") {
            return Err(format!(
                "catalog {:?}: a rest catalog needs `uri`, the catalog's base URL (without /v1)",
                self.name
            ));
        }
        Ok(())
    }
}

/// Access-negotiation settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NegotiationSettings {
    /// What happens when a request ends pending and its requester is one of its approvers. Env:
    /// `PARLEY_SELF_APPROVAL`. Default: `elicit`.
    pub self_approval: SelfApproval,
}

impl Default for NegotiationSettings {
    fn default() -> Self {
        NegotiationSettings {
            self_approval: SelfApproval::Elicit,
        }
    }
}

/// Whether an approver may approve their own access request (separation of duties).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelfApproval {
    /// The requester is asked at once, through MCP elicitation when the client supports it, whether to approve
    /// their own request; without elicitation they may still call `decide_request`.
    Elicit,
    /// Never asked; the requester may approve their own request only with an explicit `decide_request` call.
    Explicit,
    /// Separation of duties: nobody decides their own request; another approver must.
    Forbidden,
}

impl std::str::FromStr for SelfApproval {
    type Err = String;
    fn from_str(s: &str) -> Result<SelfApproval, String> {
        match s.trim() {
            "elicit" => Ok(SelfApproval::Elicit),
            "explicit" => Ok(SelfApproval::Explicit),
            "forbidden" => Ok(SelfApproval::Forbidden),
            other => Err(format!(
                "unknown self-approval mode {other:?}; use elicit, explicit or forbidden"
            )),
        }
    }
}

/// Audit log settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Size at which the active audit file is rotated (the chain continues in the next file). Default: 64 MiB.
    pub rotate_bytes: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            rotate_bytes: 64 * 1024 * 1024,
        }
    }
}

/// How bearer tokens are validated on streamable HTTP (the MCP authorization spec's resource-server role).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The IdP's issuer URL: tokens must carry it as `iss`, and without `jwks_url`/`jwks_file` the keys come
    /// from `<issuer>/.well-known/openid-configuration`. Env: `PARLEY_AUTH_ISSUER`.
    pub issuer: Option<String>,
    /// URL of the IdP's JWKS, instead of discovery. Env: `PARLEY_AUTH_JWKS_URL`.
    pub jwks_url: Option<String>,
    /// A JWKS file, instead of fetching one.
    pub jwks_file: Option<std::path::PathBuf>,
    /// Audience tokens must be issued for (`aud`): this server's resource identifier. Env:
    /// `PARLEY_AUTH_AUDIENCE`. Default: `parley`.
    pub audience: String,
    /// Resource URL announced in the protected-resource metadata. Default: `http://<bound address>/mcp`.
    pub resource: Option<String>,
    /// Authorization servers announced in the metadata. Default: the issuer.
    pub authorization_servers: Vec<String>,
    /// Accepted signing algorithms. HMAC (HS*) is refused. Default: RS256, RS384, RS512, PS256, ES256, ES384,
    /// EdDSA.
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`/`nbf`, seconds. Default: 30.
    pub leeway_secs: u64,
    /// Claim holding the principal id. Default: `sub`.
    pub subject_claim: String,
    /// Claims (dotted paths) holding groups/roles, merged. Default: `groups`, `roles`, `realm_access.roles`.
    pub groups_claims: Vec<String>,
    /// Scopes every token must carry (from `scope` or `scp`). Default: none.
    pub required_scopes: Vec<String>,
    /// Least time between two key fetches triggered by an unknown `kid`, seconds. Default: 60.
    pub jwks_refresh_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            issuer: None,
            jwks_url: None,
            jwks_file: None,
            audience: "parley".to_string(),
            resource: None,
            authorization_servers: vec![],
            algorithms: [
                "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
            ]
            .map(str::to_string)
            .to_vec(),
            leeway_secs: 30,
            subject_claim: "sub".to_string(),
            groups_claims: ["groups", "roles", "realm_access.roles"]
                .map(str::to_string)
                .to_vec(),
            required_scopes: vec![],
            jwks_refresh_secs: 60,
        }
    }
}

/// What streamable HTTP serves at once (`[http]`). Each bound keeps one client from taking what others need.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Connections served at once; more wait in the listen queue. Env: `PARLEY_HTTP_MAX_CONNECTIONS`. Default:
    /// 512.
    pub max_connections: usize,
    /// Requests one principal has in flight at once (calls running, streams of server messages open); past it
    /// a request is answered 429. Raise it for one service principal that many agents share; keep it below
    /// `max_connections` so that principal cannot take every connection. Env:
    /// `PARLEY_HTTP_MAX_REQUESTS_PER_PRINCIPAL`. Default: a quarter of `max_connections`.
    pub max_requests_per_principal: Option<usize>,
    /// MCP sessions kept open in all (~0.5 MB each); past it the oldest is closed. Env:
    /// `PARLEY_HTTP_MAX_SESSIONS`. Default: 4096.
    pub max_sessions: usize,
    /// MCP sessions one principal keeps open; its oldest is closed when it opens another. Env:
    /// `PARLEY_HTTP_MAX_SESSIONS_PER_PRINCIPAL`. Default: 64.
    pub max_sessions_per_principal: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 512,
            max_requests_per_principal: None,
            max_sessions: 4096,
            max_sessions_per_principal: 64,
        }
    }
}

impl HttpLimits {
    /// Requests one principal may have in flight.
    pub fn requests_per_principal(&self) -> usize {
        self.max_requests_per_principal
            .unwrap_or(self.max_connections / 4)
            .max(1)
    }

    /// Refuses bounds that cannot work: zero, or a principal's share above the whole.
    pub fn check(&self) -> Result<(), String> {
        if self.max_connections == 0
            || self.max_sessions == 0
            || self.max_sessions_per_principal == 0
        {
            return Err("http.max_connections, http.max_sessions and http.max_sessions_per_principal must be at \
                        least 1"
                .to_string());
        }
        if self.max_requests_per_principal == Some(0) {
            return Err("http.max_requests_per_principal must be at least 1".to_string());
        }
        if self.requests_per_principal() > self.max_connections {
            return Err(format!(
                "http.max_requests_per_principal ({}) is above http.max_connections ({}): one principal could \
                 take every connection; lower it or raise max_connections",
                self.requests_per_principal(),
                self.max_connections
            ));
        }
        if self.max_sessions_per_principal > self.max_sessions {
            return Err(format!(
                "http.max_sessions_per_principal ({}) is above http.max_sessions ({})",
                self.max_sessions_per_principal, self.max_sessions
            ));
        }
        Ok(())
    }
}

/// Limits of the bounded query engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryLimits {
    /// Rows returned when the caller gives no `max_rows`. Env: `PARLEY_QUERY_DEFAULT_ROWS`. Default: 1000.
    pub default_rows: usize,
    /// Largest `max_rows` a caller may ask for. Env: `PARLEY_QUERY_MAX_ROWS`. Default: 10000.
    pub max_rows: usize,
    /// Largest reply a caller may ask for with `max_bytes`, in bytes: the rows appear twice in a reply (a table
    /// in its text for the model, JSON in its structured content), so each copy gets half. Env:
    /// `PARLEY_QUERY_MAX_RESULT_BYTES`. Default: 4 MiB.
    pub max_result_bytes: usize,
    /// The reply's byte budget when the caller gives no `max_bytes` (8 KiB is ~2,000 tokens of context). Env:
    /// `PARLEY_QUERY_DEFAULT_REPLY_BYTES`. Default: 8192.
    pub default_reply_bytes: usize,
    /// Wall-clock limit of one query in milliseconds. Env: `PARLEY_QUERY_TIMEOUT_MS`. Default: 30000.
    pub timeout_ms: u64,
    /// DataFusion memory pool in bytes (sorts, joins, aggregates), shared by all queries running at once: a query
    /// that finds it full fails with a clear error. Env: `PARLEY_QUERY_MEMORY_BYTES`. Default: 1 GiB.
    pub memory_bytes: usize,
    /// Let operators spill to a temporary directory when the pool is full. Env: `PARLEY_QUERY_SPILL`.
    /// Default: false (a query over budget fails with a clear error instead).
    pub spill_to_disk: bool,
    /// Read data files that lie outside their table's location (and its `write.data.path`). Parley reads files
    /// with its own storage access, so whoever can write a table's manifests could otherwise make it serve
    /// another table's files under this table's grants. Tables migrated in place (`add_files`, Hive migration)
    /// name such files. Env: `PARLEY_QUERY_FILES_OUTSIDE_LOCATION`. Default: false.
    pub files_outside_location: bool,
    /// Partitions DataFusion plans with. Env: `PARLEY_QUERY_PARTITIONS`. Default: number of cores.
    pub target_partitions: usize,
    /// Queries run at once; later ones wait their turn (within their time limit). Bounds the memory outside the
    /// pool (Parquet buffers in flight) and keeps the cores from thrashing. Env: `PARLEY_QUERY_MAX_CONCURRENT`.
    /// Default: twice the number of cores.
    pub max_concurrent: usize,
    /// Queries one caller (principal) may run at once, of `max_concurrent`; its next ones wait their turn within
    /// their time limit, so one agent's heavy queries cannot hold every slot while another's wait. Env:
    /// `PARLEY_QUERY_MAX_CONCURRENT_PER_CALLER`. Default (`None`): `max_concurrent` − 1, at least 1.
    pub max_concurrent_per_caller: Option<usize>,
    /// Longest SQL text accepted, in bytes. Default: 100000.
    pub max_sql_bytes: usize,
    /// Memory for key indexes, in bytes: per snapshot and column, which data files hold which values, built in
    /// the background after the first lookup by key (`column = constant`) so later lookups open only the files
    /// that may hold the key (8 bytes per distinct value per file; 0 turns them off). Env:
    /// `PARLEY_QUERY_KEY_INDEX_BYTES`. Default: 256 MiB.
    pub key_index_bytes: usize,
    /// Memory for query results, in bytes: a statement asked again by the same caller, on the same snapshots under
    /// the same grants and with the same caps, is answered the rows it was answered before without running again,
    /// when nothing in it depends on the time of the call (`now()`, `random()`) and it was read to its end (each
    /// result counted at three times its JSON; least recently used first out; 0 turns it off). Env:
    /// `PARLEY_QUERY_RESULT_CACHE_BYTES`. Default: 64 MiB.
    pub result_cache_bytes: usize,
    /// Memory for decoded columns, in bytes: a data file's columns, once a scan has read them, are loaded into
    /// memory in the background, and later scans that need only cached columns read memory instead of Parquet
    /// (data files never change; least recently used columns leave first; 0 turns it off). Env:
    /// `PARLEY_QUERY_CACHE_BYTES`. Default: an eighth of the memory this process may use (the machine's, or its
    /// cgroup's limit when lower), at least 256 MiB.
    pub cache_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            principal: "analyst".to_string(),
            catalog_name: "parley".to_string(),
            catalogs: Vec::new(),
            query: QueryLimits::default(),
            list_page_size: 50,
            catalog_cache_ttl_ms: 2000,
            watch_contracts: true,
            tools_list_wait_ms: 250,
            audit: AuditSettings::default(),
            auth: AuthSettings::default(),
            http: HttpLimits::default(),
            negotiation: NegotiationSettings::default(),
            output_schemas: false,
        }
    }
}

impl Default for QueryLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        QueryLimits {
            default_rows: 1000,
            max_rows: 10_000,
            max_result_bytes: 4 * 1024 * 1024,
            default_reply_bytes: 8192,
            timeout_ms: 30_000,
            memory_bytes: 1024 * 1024 * 1024,
            spill_to_disk: false,
            files_outside_location: false,
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            max_sql_bytes: 100_000,
            key_index_bytes: 256 * 1024 * 1024,
            result_cache_bytes: 64 << 20,
            cache_bytes: usable_memory().map_or(512 << 20, |bytes| (bytes / 8).max(256 << 20)),
            max_concurrent: 2 * cores,
            max_concurrent_per_caller: None,
        }
    }
}

/// The memory this process may use, in bytes: the machine's (`/proc/meminfo`), or its cgroup's limit when lower
/// (containers); `None` where neither can be read.
fn usable_memory() -> Option<usize> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })?;
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<usize>().ok())
    .min();
    Some(cgroup.map_or(machine, |limit| limit.min(machine)))
}

/// A configuration that could not be loaded: says which file or variable and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value {value:?} for environment variable {var}: {message}")]
    Env {
        var: &'static str,
        value: String,
        message: String,
    },
    #[error("invalid configuration (file and PARLEY_* variables together): {0}")]
    Invalid(String),
}

impl Config {
    /// Loads `file` when given, else `<data_dir>/parley.toml` when it exists, else defaults; then applies
    /// `PARLEY_*` environment overrides.
    pub fn load(data_dir: &Path, file: Option<&Path>) -> Result<Config, ConfigError> {
        let default_path = data_dir.join("parley.toml");
        let path = match file {
            Some(p) => Some(p.to_path_buf()),
            None if default_path.exists() => Some(default_path),
            None => None,
        };
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                config
                    .check_catalogs()
                    .map_err(|message| ConfigError::Parse {
                        path: path.clone(),
                        message,
                    })?;
                config
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        config.http.check().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Refuses catalogs that cannot work: unknown properties, a REST catalog without `uri`, two with one name.
    pub fn check_catalogs(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for catalog in &self.catalogs {
            catalog.check()?;
            if !names.insert(catalog.name.as_str()) {
                return Err(format!(
                    "two [[catalogs]] are named {:?}; names must be unique",
                    catalog.name
                ));
            }
        }
        Ok(())
    }

    /// Applies `PARLEY_*` overrides read through `get` (a function so tests need not touch the process env).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(
            var: &'static str,
            get: &impl Fn(&str) -> Option<String>,
            slot: &mut T,
        ) -> Result<(), ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            if let Some(v) = get(var) {
                *slot = v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                    var,
                    value: v.clone(),
                    message: e.to_string(),
                })?;
            }
            Ok(())
        }
        num(
            "PARLEY_CATALOG_CACHE_TTL_MS",
            &get,
            &mut self.catalog_cache_ttl_ms,
        )?;
        num("PARLEY_WATCH_CONTRACTS", &get, &mut self.watch_contracts)?;
        num(
            "PARLEY_TOOLS_LIST_WAIT_MS",
            &get,
            &mut self.tools_list_wait_ms,
        )?;
        if let Some(p) = get("PARLEY_PRINCIPAL") {
            self.principal = p;
        }
        if let Some(v) = get("PARLEY_AUTH_ISSUER") {
            self.auth.issuer = Some(v);
        }
        if let Some(v) = get("PARLEY_AUTH_JWKS_URL") {
            self.auth.jwks_url = Some(v);
        }
        if let Some(v) = get("PARLEY_AUTH_AUDIENCE") {
            self.auth.audience = v;
        }
        let h = &mut self.http;
        num("PARLEY_HTTP_MAX_CONNECTIONS", &get, &mut h.max_connections)?;
        if get("PARLEY_HTTP_MAX_REQUESTS_PER_PRINCIPAL").is_some() {
            let mut per_principal = 0;
            num(
                "PARLEY_HTTP_MAX_REQUESTS_PER_PRINCIPAL",
                &get,
                &mut per_principal,
            )?;
            h.max_requests_per_principal = Some(per_principal);
        }
        num("PARLEY_HTTP_MAX_SESSIONS", &get, &mut h.max_sessions)?;
        num(
            "PARLEY_HTTP_MAX_SESSIONS_PER_PRINCIPAL",
            &get,
            &mut h.max_sessions_per_principal,
        )?;
        let q = &mut self.query;
        num("PARLEY_QUERY_DEFAULT_ROWS", &get, &mut q.default_rows)?;
        num("PARLEY_QUERY_MAX_ROWS", &get, &mut q.max_rows)?;
        num(
            "PARLEY_QUERY_MAX_RESULT_BYTES",
            &get,
            &mut q.max_result_bytes,
        )?;
        num(
            "PARLEY_QUERY_DEFAULT_REPLY_BYTES",
            &get,
            &mut q.default_reply_bytes,
        )?;
        num("PARLEY_QUERY_TIMEOUT_MS", &get, &mut q.timeout_ms)?;
        num("PARLEY_QUERY_MEMORY_BYTES", &get, &mut q.memory_bytes)?;
        num("PARLEY_QUERY_KEY_INDEX_BYTES", &get, &mut q.key_index_bytes)?;
        num(
            "PARLEY_QUERY_RESULT_CACHE_BYTES",
            &get,
            &mut q.result_cache_bytes,
        )?;
        num("PARLEY_QUERY_SPILL", &get, &mut q.spill_to_disk)?;
        num(
            "PARLEY_QUERY_FILES_OUTSIDE_LOCATION",
            &get,
            &mut q.files_outside_location,
        )?;
        num("PARLEY_QUERY_PARTITIONS", &get, &mut q.target_partitions)?;
        num("PARLEY_QUERY_MAX_CONCURRENT", &get, &mut q.max_concurrent)?;
        if get("PARLEY_QUERY_MAX_CONCURRENT_PER_CALLER").is_some() {
            let mut per_caller = 0;
            num(
                "PARLEY_QUERY_MAX_CONCURRENT_PER_CALLER",
                &get,
                &mut per_caller,
            )?;
            q.max_concurrent_per_caller = Some(per_caller);
        }
        num(
            "PARLEY_SELF_APPROVAL",
            &get,
            &mut self.negotiation.self_approval,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_rejects_garbage() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "PARLEY_QUERY_TIMEOUT_MS" => Some("250".into()),
            "PARLEY_PRINCIPAL" => Some("ops-owner".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.query.timeout_ms, 250);
        assert_eq!(c.principal, "ops-owner");
        c.apply_env(|k| (k == "PARLEY_SELF_APPROVAL").then(|| "forbidden".to_string()))
            .unwrap();
        assert_eq!(c.negotiation.self_approval, SelfApproval::Forbidden);
        let err = c
            .apply_env(|k| (k == "PARLEY_SELF_APPROVAL").then(|| "sometimes".to_string()))
            .unwrap_err();
        assert!(
            err.to_string().contains("elicit, explicit or forbidden"),
            "{err}"
        );

        let err = c
            .apply_env(|k| (k == "PARLEY_QUERY_MAX_ROWS").then(|| "lots".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("PARLEY_QUERY_MAX_ROWS"), "{err}");
    }

    #[test]
    fn example_config_parses_to_the_defaults() {
        let example: Config = toml::from_str(include_str!("../examples/parley.toml")).unwrap();
        let default = Config::default();
        // Every key the example sets is the default (compared as TOML, field by field).
        assert_eq!(
            toml::to_string(&example.auth).unwrap(),
            toml::to_string(&default.auth).unwrap()
        );
        assert_eq!(example.audit.rotate_bytes, default.audit.rotate_bytes);
        assert_eq!(example.http, default.http);
        assert_eq!(
            example.query.result_cache_bytes,
            default.query.result_cache_bytes
        );
        assert_eq!(example.catalog_cache_ttl_ms, default.catalog_cache_ttl_ms);
        assert_eq!(example.list_page_size, default.list_page_size);
        assert_eq!(example.tools_list_wait_ms, default.tools_list_wait_ms);
        assert_eq!(example.output_schemas, default.output_schemas);
        assert_eq!(example.catalog_name, default.catalog_name);
        assert_eq!(example.catalogs, default.catalogs);
        assert_eq!(example.principal, default.principal);
        assert_eq!(example.query.max_rows, default.query.max_rows);
        assert_eq!(example.query.memory_bytes, default.query.memory_bytes);
        assert_eq!(
            example.query.max_result_bytes,
            default.query.max_result_bytes
        );
        assert_eq!(
            example.query.default_reply_bytes,
            default.query.default_reply_bytes
        );
        assert_eq!(
            example.negotiation.self_approval,
            default.negotiation.self_approval
        );
    }

    /// HTTP limits come from `[http]` and `PARLEY_HTTP_*`; a principal's share defaults to a quarter of the
    /// connections, and bounds that cannot work are refused, naming the setting.
    #[test]
    fn http_limits_are_read_and_checked() {
        let mut config: Config =
            toml::from_str("[http]\nmax_connections = 40\nmax_sessions_per_principal = 3\n")
                .unwrap();
        assert_eq!(config.http.requests_per_principal(), 10);
        assert_eq!(config.http.max_sessions_per_principal, 3);
        config.http.check().unwrap();
        let env =
            |k: &str| (k == "PARLEY_HTTP_MAX_REQUESTS_PER_PRINCIPAL").then(|| "25".to_string());
        config.apply_env(env).unwrap();
        assert_eq!(config.http.requests_per_principal(), 25);
        config.http.check().unwrap();
        let refused = |limits: HttpLimits| limits.check().unwrap_err();
        let e = refused(HttpLimits {
            max_requests_per_principal: Some(41),
            ..config.http
        });
        assert!(e.contains("max_requests_per_principal (41)"), "{e}");
        let e = refused(HttpLimits {
            max_sessions_per_principal: 5000,
            ..HttpLimits::default()
        });
        assert!(e.contains("max_sessions_per_principal"), "{e}");
        let e = refused(HttpLimits {
            max_connections: 0,
            ..HttpLimits::default()
        });
        assert!(e.contains("at least 1"), "{e}");
        assert!(toml::from_str::<Config>("[http]\nmax_conections = 4\n").is_err());
    }

    #[test]
    fn unknown_config_key_is_rejected() {
        let err = toml::from_str::<Config>("princpal = \"x\"").unwrap_err();
        assert!(err.to_string().contains("princpal"), "{err}");
    }

    #[test]
    fn catalogs_take_iceberg_property_names_and_refuse_typos() {
        let config: Config = toml::from_str(
            r#"
            [[catalogs]]
            name = "lake"
            type = "rest"
            uri = "http://127.0.0.1:8181"
            credential = "parley:secret"
            "header.X-Iceberg-Access-Delegation" = "vended-credentials"

            [[catalogs]]
            name = "local"
            type = "sql"
            files_outside_location = true
            "#,
        )
        .unwrap();
        config.check_catalogs().unwrap();
        assert_eq!(config.catalogs[0].kind, CatalogKind::Rest);
        assert_eq!(config.catalogs[0].authorization, None);
        assert_eq!(config.catalogs[0].files_outside_location, None);
        assert_eq!(config.catalogs[1].files_outside_location, Some(true));
        assert!(config.catalogs[1].properties.is_empty());
        assert_eq!(config.catalogs[0].properties["credential"], "parley:secret");
        assert_eq!(config.catalogs[1].kind, CatalogKind::Sql);

        let refused = |text: &str| {
            toml::from_str::<Config>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.check_catalogs())
                .unwrap_err()
        };
        let typo = refused(
            "[[catalogs]]\nname = \"l\"\ntype = \"rest\"\nuri = \"http://x\"\ncredentials = \"a:b\"",
        );
        assert!(
            typo.contains("unknown property \"credentials\"") && typo.contains("credential,"),
            "{typo}"
        );
        let no_uri = refused("[[catalogs]]\nname = \"l\"\ntype = \"rest\"");
        assert!(no_uri.contains("needs `uri`"), "{no_uri}");
        let twice = refused(
            "[[catalogs]]\nname = \"l\"\ntype = \"sql\"\n[[catalogs]]\nname = \"l\"\ntype = \"sql\"",
        );
        assert!(twice.contains("unique"), "{twice}");
        let dotted = refused("[[catalogs]]\nname = \"a.b\"\ntype = \"sql\"");
        assert!(dotted.contains("first part"), "{dotted}");
        let kind = refused("[[catalogs]]\nname = \"a\"\ntype = \"glue\"");
        assert!(kind.contains("glue"), "{kind}");

        // The catalog's permission service, a table of its own (not a catalog property).
        let config: Config = toml::from_str(
            r#"
            [[catalogs]]
            name = "lake"
            type = "rest"
            uri = "http://127.0.0.1:8181/catalog"
            [catalogs.authorization]
            type = "lakekeeper"
            management-uri = "http://127.0.0.1:8181/management"
            warehouse-id = "9f2a6c1e-0000-4000-8000-000000000001"
            [catalogs.authorization.identities]
            analyst = "oidc~a1b2"
            "#,
        )
        .unwrap();
        config.check_catalogs().unwrap();
        let authz = config.catalogs[0].authorization.as_ref().unwrap();
        assert_eq!(authz.kind, AuthorizationKind::Lakekeeper);
        assert_eq!(authz.cache_ms, 5000);
        assert_eq!(authz.identities["analyst"], "oidc~a1b2");
        assert!(!config.catalogs[0].properties.contains_key("authorization"));
        let typo = refused(
            "[[catalogs]]\nname = \"l\"\ntype = \"rest\"\nuri = \"http://x\"\n[catalogs.authorization]\ntype = \"lakekeeper\"\nmanagement-url = \"x\"\nwarehouse-id = \"w\"",
        );
        assert!(typo.contains("management-url"), "{typo}");
        let no_uri = refused(
            "[[catalogs]]\nname = \"l\"\ntype = \"rest\"\nuri = \"http://x\"\n[catalogs.authorization]\ntype = \"lakekeeper\"\nwarehouse-id = \"w\"",
        );
        assert!(no_uri.contains("needs `management-uri`"), "{no_uri}");
        let sql = refused(
            "[[catalogs]]\nname = \"l\"\ntype = \"sql\"\n[catalogs.authorization]\ntype = \"token-exchange\"",
        );
        assert!(sql.contains("needs a rest catalog"), "{sql}");
        let exchange: Config = toml::from_str(
            "[[catalogs]]\nname = \"l\"\ntype = \"rest\"\nuri = \"http://x\"\n[catalogs.authorization]\ntype = \"token-exchange\"\naudience = \"cat\"",
        )
        .unwrap();
        exchange.check_catalogs().unwrap();
        let a = exchange.catalogs[0].authorization.as_ref().unwrap();
        assert_eq!(a.kind, AuthorizationKind::TokenExchange);
        assert_eq!(a.audience.as_deref(), Some("cat"));
    }
}

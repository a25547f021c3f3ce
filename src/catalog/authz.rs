//! The catalog's own authorization, asked for every agent action besides Parley's policy: both must allow.
//!
//! Two kinds of permission service:
//! - Lakekeeper's `POST /management/v1/action/batch-check`, asked with Parley's own service token (never an
//!   agent's) for the agent's catalog user id — `oidc~<subject>` for an HTTP agent, or the id `identities` maps a
//!   principal to. One request covers a whole page of tables.
//! - The REST catalog itself, asked as the agent with a token from OAuth 2.0 Token Exchange (RFC 8693): the
//!   agent's verified token as `subject_token`, Parley as the authenticated client and actor, the catalog as
//!   audience; the exchanged token is kept per agent token until it expires. A table the catalog does not list
//!   for the agent is not theirs to see; one it will not load for them is not theirs to read.
//!
//! Answers are reused for a short, configured time in bounded caches.
//!
//! Invariant: fail closed. When the permission service cannot be asked, nothing of its catalog is shown or read,
//! and the agent is told the catalog's permission service is unavailable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{CatalogError, TableName};
use crate::config::{AuthorizationKind, CatalogAuthorization, CatalogSettings};
use crate::identity::{Principal, SubjectTokens};
use crate::query::Naming;

/// What the catalog is asked about a table (Lakekeeper's table actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatalogAction {
    /// The table may appear in listings.
    IncludeInList,
    /// Its metadata (schema, snapshots) may be read.
    GetMetadata,
    /// Its data may be read.
    ReadData,
}

impl CatalogAction {
    fn as_str(self) -> &'static str {
        match self {
            CatalogAction::IncludeInList => "include_in_list",
            CatalogAction::GetMetadata => "get_metadata",
            CatalogAction::ReadData => "read_data",
        }
    }
}

/// The permission services of the configured catalogs, by catalog.
#[derive(Default)]
pub struct CatalogAuthz {
    /// `(catalog name or None for the only catalog, service)`.
    members: Vec<(Option<String>, Service)>,
    /// Verified agent tokens, when a catalog exchanges them.
    subject_tokens: Option<Arc<SubjectTokens>>,
}

/// One catalog's permission service.
enum Service {
    Lakekeeper(Lakekeeper),
    TokenExchange(TokenExchange),
}

impl Service {
    fn cache_for(&self) -> Duration {
        match self {
            Service::Lakekeeper(l) => l.cache_for,
            Service::TokenExchange(t) => t.cache_for,
        }
    }

    async fn check(
        &self,
        principal: &Principal,
        tables: &[TableName],
        actions: &[CatalogAction],
    ) -> Result<Vec<bool>, CatalogError> {
        match self {
            Service::Lakekeeper(l) => l.check(principal, tables, actions).await,
            Service::TokenExchange(t) => t.check(principal, tables, actions).await,
        }
    }

    fn describe(&self, principal: &Principal) -> String {
        match self {
            Service::Lakekeeper(l) => {
                format!("(Lakekeeper batch-check) for {}", l.user_id(principal))
            }
            Service::TokenExchange(_) => {
                format!("(asked as {} with an exchanged token)", principal.id)
            }
        }
    }
}

impl CatalogAuthz {
    /// The permission services `catalogs` configure; `naming` says how table names carry the catalog.
    pub fn new(catalogs: &[CatalogSettings], naming: &Naming) -> CatalogAuthz {
        let needs_tokens = catalogs.iter().any(|c| {
            c.authorization
                .as_ref()
                .is_some_and(|a| a.kind == AuthorizationKind::TokenExchange)
        });
        let subject_tokens = needs_tokens.then(|| Arc::new(SubjectTokens::default()));
        let members = catalogs
            .iter()
            .filter_map(|c| {
                let settings = c.authorization.as_ref()?;
                let prefix = match naming {
                    Naming::Single(_) => None,
                    Naming::Federated(_) => Some(c.name.clone()),
                };
                let service = match (settings.kind, &subject_tokens) {
                    (AuthorizationKind::TokenExchange, Some(tokens)) => {
                        Service::TokenExchange(TokenExchange::new(c, settings, tokens.clone()))
                    }
                    _ => Service::Lakekeeper(Lakekeeper::new(c, settings)),
                };
                Some((prefix, service))
            })
            .collect();
        CatalogAuthz {
            members,
            subject_tokens,
        }
    }

    /// Where the HTTP layer keeps verified agent tokens for token exchange; `None` when no catalog needs them
    /// (then no token is kept at all).
    pub fn subject_tokens(&self) -> Option<Arc<SubjectTokens>> {
        self.subject_tokens.clone()
    }

    /// Whether any catalog has a permission service.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Changes every cache period, so caches of what the catalogs answered (discovery) start over then.
    pub fn epoch(&self) -> u64 {
        static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        let period = self
            .members
            .iter()
            .map(|(_, m)| m.cache_for())
            .min()
            .unwrap_or(Duration::MAX)
            .max(Duration::from_millis(1));
        (START.elapsed().as_millis() / period.as_millis()) as u64
    }

    /// For each table, whether the catalog allows `principal` every one of `actions` on it (tables of catalogs
    /// without a permission service: yes). An error when a permission service cannot be asked.
    pub async fn allowed(
        &self,
        principal: &Principal,
        tables: &[TableName],
        actions: &[CatalogAction],
    ) -> Result<Vec<bool>, CatalogError> {
        let mut out = vec![true; tables.len()];
        for (prefix, service) in &self.members {
            // The tables of this catalog, named as the catalog names them.
            let mine: Vec<(usize, TableName)> = tables
                .iter()
                .enumerate()
                .filter_map(|(i, t)| match prefix {
                    None => Some((i, t.clone())),
                    Some(p) if t.namespace.len() > 1 && &t.namespace[0] == p => Some((
                        i,
                        TableName {
                            namespace: t.namespace[1..].to_vec(),
                            name: t.name.clone(),
                        },
                    )),
                    Some(_) => None,
                })
                .collect();
            if mine.is_empty() {
                continue;
            }
            let names: Vec<TableName> = mine.iter().map(|(_, t)| t.clone()).collect();
            let answers = service.check(principal, &names, actions).await?;
            for ((i, _), allowed) in mine.iter().zip(answers) {
                out[*i] &= allowed;
            }
        }
        Ok(out)
    }

    /// What the audit record says about the catalog's part in a decision on `table`.
    pub fn describe(
        &self,
        principal: &Principal,
        table: &TableName,
        allowed: bool,
    ) -> Option<String> {
        let (prefix, service) = self.members.iter().find(|(p, _)| match p {
            None => true,
            Some(p) => table.namespace.first() == Some(p),
        })?;
        Some(format!(
            "catalog{} {} {}",
            prefix.as_ref().map(|p| format!(" {p}")).unwrap_or_default(),
            service.describe(principal),
            if allowed { "allows" } else { "refuses" },
        ))
    }
}

/// Lakekeeper's permission checks.
pub struct Lakekeeper {
    endpoint: String,
    warehouse_id: String,
    identities: std::collections::BTreeMap<String, String>,
    cache_for: Duration,
    token: ServiceToken,
    client: reqwest::Client,
    /// `(user id, table, action)` → allowed.
    answers: moka::sync::Cache<(String, TableName, CatalogAction), bool>,
}

/// Checks per batch-check request.
const BATCH: usize = 1000;

impl Lakekeeper {
    fn new(catalog: &CatalogSettings, settings: &CatalogAuthorization) -> Lakekeeper {
        let cache_for = Duration::from_millis(settings.cache_ms);
        Lakekeeper {
            endpoint: format!(
                "{}/v1/action/batch-check",
                settings
                    .management_uri
                    .as_deref()
                    .unwrap_or_default()
                    .trim_end_matches('/')
            ),
            warehouse_id: settings.warehouse_id.clone().unwrap_or_default(),
            identities: settings.identities.clone(),
            cache_for,
            token: ServiceToken::new(catalog),
            client: http_client(),
            answers: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_for.max(Duration::from_millis(1)))
                .build(),
        }
    }

    /// The catalog user id of `principal`.
    fn user_id(&self, principal: &Principal) -> String {
        self.identities
            .get(&principal.id)
            .cloned()
            .unwrap_or_else(|| format!("oidc~{}", principal.id))
    }

    async fn check(
        &self,
        principal: &Principal,
        tables: &[TableName],
        actions: &[CatalogAction],
    ) -> Result<Vec<bool>, CatalogError> {
        let user = self.user_id(principal);
        let mut known: HashMap<(usize, CatalogAction), bool> = HashMap::new();
        let mut ask: Vec<(usize, CatalogAction)> = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            for &a in actions {
                match (self.cache_for > Duration::ZERO)
                    .then(|| self.answers.get(&(user.clone(), t.clone(), a)))
                    .flatten()
                {
                    Some(v) => {
                        known.insert((i, a), v);
                    }
                    None => ask.push((i, a)),
                }
            }
        }
        for chunk in ask.chunks(BATCH) {
            let checks: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(n, (i, a))| {
                    json!({
                        "id": n.to_string(),
                        "identity": {"user": user},
                        "operation": {"table": {
                            "action": a.as_str(),
                            "namespace": tables[*i].namespace,
                            "table": tables[*i].name,
                            "warehouse-id": self.warehouse_id,
                        }},
                    })
                })
                .collect();
            let results = self.batch_check(checks).await?;
            for (n, (i, a)) in chunk.iter().enumerate() {
                // A check the answer does not mention is not allowed.
                let allowed = results.get(&n.to_string()).copied().unwrap_or(false);
                known.insert((*i, *a), allowed);
                if self.cache_for > Duration::ZERO {
                    self.answers
                        .insert((user.clone(), tables[*i].clone(), *a), allowed);
                }
            }
        }
        Ok((0..tables.len())
            .map(|i| actions.iter().all(|a| known.get(&(i, *a)) == Some(&true)))
            .collect())
    }

    async fn batch_check(&self, checks: Vec<Value>) -> Result<HashMap<String, bool>, CatalogError> {
        let unavailable = |why: String| {
            tracing::warn!(endpoint = %self.endpoint, "catalog permission check failed: {why}");
            CatalogError::Unavailable(
                "its permission service could not be asked, and Parley fails closed: nothing of this catalog is \
                 shown or read until it answers"
                    .to_string(),
            )
        };
        let token = self.token.get(&self.client).await.map_err(unavailable)?;
        let mut request = self
            .client
            .post(&self.endpoint)
            .json(&json!({"checks": checks, "error-on-not-found": false}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let results = body
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| unavailable("the answer has no `results`".to_string()))?;
        Ok(results
            .iter()
            .filter_map(|r| {
                let id = match r.get("id")? {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some((id, r.get("allowed")?.as_bool()?))
            })
            .collect())
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client builds")
}

/// The catalog's OAuth2 token endpoint, as Iceberg's REST clients find it: `oauth2-server-uri`, else
/// `<uri>/v1/oauth/tokens`.
fn token_endpoint(catalog: &CatalogSettings) -> String {
    let p = &catalog.properties;
    p.get("oauth2-server-uri").cloned().unwrap_or_else(|| {
        format!(
            "{}/v1/oauth/tokens",
            p.get("uri").map_or("", |u| u.trim_end_matches('/'))
        )
    })
}

/// Parley's client credentials at the catalog (`credential = "client_id:secret"`, or a bare secret).
fn client_credential(catalog: &CatalogSettings) -> Option<(String, String)> {
    let cred = catalog.properties.get("credential")?;
    let (id, secret) = cred.split_once(':').unwrap_or(("", cred));
    Some((id.to_string(), secret.to_string()))
}

/// Parley's own token for a catalog's services: the catalog's static `token`, or one obtained with its
/// `credential` (OAuth2 client credentials) at `oauth2-server-uri` (else `<uri>/v1/oauth/tokens`), kept until
/// shortly before it expires.
pub(crate) struct ServiceToken {
    token: Option<String>,
    client_credentials: Option<(String, String, String, Option<String>)>,
    current: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl ServiceToken {
    pub(crate) fn new(catalog: &CatalogSettings) -> ServiceToken {
        let p = &catalog.properties;
        let client_credentials = client_credential(catalog)
            .map(|(id, secret)| (token_endpoint(catalog), id, secret, p.get("scope").cloned()));
        ServiceToken {
            token: p.get("token").cloned(),
            client_credentials,
            current: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) async fn get(&self, client: &reqwest::Client) -> Result<Option<String>, String> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some((endpoint, id, secret, scope)) = &self.client_credentials else {
            return Ok(None);
        };
        let mut current = self.current.lock().await;
        if let Some((token, until)) = &*current
            && Instant::now() < *until
        {
            return Ok(Some(token.clone()));
        }
        let mut form = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", id.clone()),
            ("client_secret", secret.clone()),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope.clone()));
        }
        let response = client
            .post(endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("token endpoint {endpoint}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "token endpoint {endpoint} refused Parley's client credentials (HTTP {})",
                response.status()
            ));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("token endpoint {endpoint}: {e}"))?;
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("token endpoint {endpoint} sent no access_token"))?
            .to_string();
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(300);
        // Renewed a minute early (or at half its life when it is short).
        let margin = (lifetime / 2).min(60);
        *current = Some((
            token.clone(),
            Instant::now() + Duration::from_secs(lifetime - margin),
        ));
        Ok(Some(token))
    }
}

/// The REST catalog asked as the agent, with a token from OAuth 2.0 Token Exchange (RFC 8693).
struct TokenExchange {
    /// The catalog's settings without Parley's own credentials: an agent's catalog client gets only its token.
    agent_properties: HashMap<String, String>,
    name: String,
    endpoint: String,
    audience: Option<String>,
    scope: Option<String>,
    /// Parley's client credentials at the token endpoint (it is the client, and the actor).
    client: Option<(String, String)>,
    actor: ServiceToken,
    tokens: Arc<SubjectTokens>,
    cache_for: Duration,
    http: reqwest::Client,
    /// SHA-256 of the agent's token → the agent's catalog client and until when its token holds (`None`: the
    /// token endpoint refused to exchange it — the catalog does not know this agent).
    agents: moka::sync::Cache<[u8; 32], (AgentCatalog, Instant)>,
    /// `(principal, table, action)` → allowed.
    answers: moka::sync::Cache<(String, TableName, CatalogAction), bool>,
}

/// An agent's own client of the catalog (`None`: the catalog does not know the agent).
type AgentCatalog = Option<Arc<dyn iceberg::Catalog>>;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

impl TokenExchange {
    fn new(
        catalog: &CatalogSettings,
        settings: &CatalogAuthorization,
        tokens: Arc<SubjectTokens>,
    ) -> TokenExchange {
        let p = &catalog.properties;
        let endpoint = settings
            .token_endpoint
            .clone()
            .unwrap_or_else(|| token_endpoint(catalog));
        let client = client_credential(catalog);
        let agent_properties = p
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "credential"
                        | "token"
                        | "oauth2-server-uri"
                        | "scope"
                        | "audience"
                        | "resource"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let cache_for = Duration::from_millis(settings.cache_ms);
        TokenExchange {
            agent_properties,
            name: catalog.name.clone(),
            endpoint,
            audience: settings.audience.clone(),
            scope: p.get("scope").cloned(),
            client,
            actor: ServiceToken::new(catalog),
            tokens,
            cache_for,
            http: http_client(),
            agents: moka::sync::Cache::new(10_000),
            answers: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_for.max(Duration::from_millis(1)))
                .build(),
        }
    }

    /// The agent's catalog client, exchanging their token when there is none yet or it expired. `None` when the
    /// token endpoint refuses to exchange it.
    async fn agent_catalog(
        &self,
        subject: &crate::identity::SubjectToken,
    ) -> Result<AgentCatalog, CatalogError> {
        use sha2::Digest as _;
        let key: [u8; 32] = sha2::Sha256::digest(subject.expose().as_bytes()).into();
        if let Some((catalog, until)) = self.agents.get(&key)
            && Instant::now() < until
        {
            return Ok(catalog);
        }
        let unavailable = |why: String| {
            tracing::warn!(endpoint = %self.endpoint, "token exchange failed: {why}");
            CatalogError::Unavailable(
                "its token endpoint could not exchange your token, and Parley fails closed: nothing of this \
                 catalog is shown or read until it answers"
                    .to_string(),
            )
        };
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE.to_string()),
            ("subject_token", subject.expose().to_string()),
            ("subject_token_type", ACCESS_TOKEN.to_string()),
            ("requested_token_type", ACCESS_TOKEN.to_string()),
        ];
        if let Some(audience) = &self.audience {
            form.push(("audience", audience.clone()));
        }
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.clone()));
        }
        // Parley is the actor: its own token, obtained with its client credentials.
        if let Some(actor) = self.actor.get(&self.http).await.map_err(unavailable)? {
            form.push(("actor_token", actor));
            form.push(("actor_token_type", ACCESS_TOKEN.to_string()));
        }
        let mut request = self.http.post(&self.endpoint).form(&form);
        if let Some((id, secret)) = &self.client {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_client_error() {
            // RFC 8693 §2.2.2 / RFC 6749 §5.2: the subject token is not one the catalog accepts for anyone.
            let error = body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("?")
                .to_string();
            tracing::info!(
                catalog = %self.name,
                %error,
                "the token endpoint refused to exchange an agent's token; the catalog shows that agent nothing"
            );
            self.agents
                .insert(key, (None, Instant::now() + self.cache_for));
            return Ok(None);
        }
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| unavailable("the answer has no access_token".to_string()))?;
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(300);
        let mut props = self.agent_properties.clone();
        props.insert("token".to_string(), token.to_string());
        let settings = CatalogSettings {
            name: self.name.clone(),
            kind: crate::config::CatalogKind::Rest,
            authorization: None,
            files_outside_location: None,
            properties: props.into_iter().collect(),
        };
        let catalog = super::open::open_rest(&settings).await?;
        let until = Instant::now() + Duration::from_secs(lifetime - (lifetime / 2).min(60));
        self.agents.insert(key, (Some(catalog.clone()), until));
        Ok(Some(catalog))
    }

    async fn check(
        &self,
        principal: &Principal,
        tables: &[TableName],
        actions: &[CatalogAction],
    ) -> Result<Vec<bool>, CatalogError> {
        // A local (stdio) principal, or one that has not called over HTTP lately, has no token to exchange.
        let Some(subject) = self.tokens.get(&principal.id) else {
            return Ok(vec![false; tables.len()]);
        };
        let mut out = Vec::with_capacity(tables.len());
        let mut listed: HashMap<Vec<String>, std::collections::HashSet<String>> = HashMap::new();
        let mut catalog: Option<AgentCatalog> = None;
        for table in tables {
            let mut allowed = true;
            for &action in actions {
                let key = (principal.id.clone(), table.clone(), action);
                if self.cache_for > Duration::ZERO
                    && let Some(v) = self.answers.get(&key)
                {
                    allowed &= v;
                    continue;
                }
                if catalog.is_none() {
                    catalog = Some(self.agent_catalog(&subject).await?);
                }
                let Some(Some(agent)) = &catalog else {
                    allowed = false;
                    continue;
                };
                let ident = iceberg::TableIdent::new(
                    iceberg::NamespaceIdent::from_vec(table.namespace.clone())?,
                    table.name.clone(),
                );
                let v = match action {
                    CatalogAction::IncludeInList => {
                        if !listed.contains_key(&table.namespace) {
                            let names = match agent.list_tables(ident.namespace()).await {
                                Ok(found) => found.iter().map(|t| t.name().to_string()).collect(),
                                Err(e) => match CatalogError::from(e) {
                                    CatalogError::NotFound | CatalogError::Denied(_) => {
                                        Default::default()
                                    }
                                    other => return Err(other),
                                },
                            };
                            listed.insert(table.namespace.clone(), names);
                        }
                        listed[&table.namespace].contains(&table.name)
                    }
                    // The REST protocol has one permission for both: loading the table as the agent.
                    CatalogAction::GetMetadata | CatalogAction::ReadData => {
                        match agent.table_exists(&ident).await {
                            Ok(exists) => exists,
                            Err(e) => match CatalogError::from(e) {
                                CatalogError::NotFound | CatalogError::Denied(_) => false,
                                other => return Err(other),
                            },
                        }
                    }
                };
                if self.cache_for > Duration::ZERO {
                    self.answers.insert(key, v);
                }
                allowed &= v;
            }
            out.push(allowed);
        }
        Ok(out)
    }
}

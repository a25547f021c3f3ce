//! Identity: who is calling. Produces a [`Principal`] for every request.
//!
//! On stdio the caller is the principal configured for the local user (`--principal` / `PARLEY_PRINCIPAL`); the
//! groups come from the policy directory. On streamable HTTP every request carries a bearer JWT that
//! [`JwtValidator`] checks against the IdP's keys ([`KeySource`]: OIDC discovery, a JWKS URL or file, or the local
//! [`DevIssuer`]) and maps to a [`Principal`].
//!
//! Invariant: no agent token ever leaves this module (the HTTP layer hands it straight here); it is never
//! forwarded, stored or logged — only its subject and `jti` are.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

/// The caller of a tool: a user id, the groups it belongs to, and free attributes (claims).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// Stable identifier, e.g. `analyst` or an IdP subject.
    pub id: String,
    /// Groups the principal is a member of (direct memberships).
    pub groups: Vec<String>,
    /// Other attributes (e.g. token claims) for policies and audit.
    pub attrs: BTreeMap<String, String>,
}

impl Principal {
    /// A principal with the given id and groups and no other attributes.
    pub fn new(id: impl Into<String>, groups: Vec<String>) -> Principal {
        Principal {
            id: id.into(),
            groups,
            attrs: BTreeMap::new(),
        }
    }
}

/// Where groups of a principal come from when the transport only knows its id (stdio).
pub trait Directory: Send + Sync {
    /// Direct groups of `principal_id`; empty for an unknown principal.
    fn groups_of(&self, principal_id: &str) -> Vec<String>;
}

/// Resolves the principal of a request.
///
/// Contract: `resolve` never fails for a configured local principal; an unknown id yields a principal with no
/// groups, which the policy denies everything (it is not an error, so unknown callers learn nothing).
pub trait IdentitySource: Send + Sync {
    /// The principal behind one request.
    fn resolve(&self) -> Principal;
}

/// The local user of a stdio server: one configured principal, whose groups are looked up in the directory on
/// every call (so a policy reload that changes memberships applies at once).
pub struct LocalIdentity {
    principal_id: String,
    directory: Arc<dyn Directory>,
}

impl LocalIdentity {
    /// The configured principal, with groups from `directory`.
    pub fn new(principal_id: &str, directory: Arc<dyn Directory>) -> LocalIdentity {
        LocalIdentity {
            principal_id: principal_id.to_string(),
            directory,
        }
    }
}

impl IdentitySource for LocalIdentity {
    fn resolve(&self) -> Principal {
        Principal::new(
            self.principal_id.clone(),
            self.directory.groups_of(&self.principal_id),
        )
    }
}

/// Shared handle to the identity source chosen at start-up.
pub type Identity = Arc<dyn IdentitySource>;

// ---- tokens (streamable HTTP) -------------------------------------------------------------------------------

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::Digest as _;

use crate::config::AuthSettings;

/// Why a bearer token was not accepted. The messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token: send Authorization: Bearer <token>")]
    Missing,
    /// The token is malformed, forged, expired, or for someone else.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Valid, but without the scopes this server needs.
    #[error("the token lacks the required scope(s): {0}")]
    InsufficientScope(String),
    /// The signing keys could not be fetched, so no token can be checked now.
    #[error("cannot verify tokens right now: {0}")]
    Unavailable(String),
}

/// Where the IdP's public signing keys come from.
///
/// Contract: `fetch` returns the whole current key set or an error; it may do network or file I/O, and the
/// validator calls it rarely (at start, and at most once per refresh interval on an unknown `kid`).
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    /// The current key set.
    async fn fetch(&self) -> Result<JwkSet, AuthError>;
}

/// A key set fixed at start-up (the dev issuer, tests).
pub struct StaticKeys(pub JwkSet);

#[async_trait::async_trait]
impl KeySource for StaticKeys {
    async fn fetch(&self) -> Result<JwkSet, AuthError> {
        Ok(self.0.clone())
    }
}

/// A JWKS file on disk, re-read on every fetch.
pub struct FileKeys(pub PathBuf);

#[async_trait::async_trait]
impl KeySource for FileKeys {
    async fn fetch(&self) -> Result<JwkSet, AuthError> {
        let text = tokio::fs::read_to_string(&self.0)
            .await
            .map_err(|e| AuthError::Unavailable(format!("{}: {e}", self.0.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| AuthError::Unavailable(format!("{}: not a JWKS: {e}", self.0.display())))
    }
}

/// A JWKS fetched over HTTP(S): from a configured URL, or from the issuer's OIDC discovery document.
pub struct HttpKeys {
    client: reqwest::Client,
    jwks_url: Option<String>,
    issuer: Option<String>,
}

impl HttpKeys {
    /// Keys at `jwks_url`, or (when `None`) at the `jwks_uri` of `<issuer>/.well-known/openid-configuration`.
    pub fn new(jwks_url: Option<String>, issuer: Option<String>) -> HttpKeys {
        HttpKeys {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client builds"),
            jwks_url,
            issuer,
        }
    }

    async fn get_json(&self, url: &str) -> Result<Value, AuthError> {
        let unavailable = |e: reqwest::Error| AuthError::Unavailable(format!("{url}: {e}"));
        self.client
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(unavailable)?
            .json::<Value>()
            .await
            .map_err(unavailable)
    }
}

#[async_trait::async_trait]
impl KeySource for HttpKeys {
    async fn fetch(&self) -> Result<JwkSet, AuthError> {
        let url = match (&self.jwks_url, &self.issuer) {
            (Some(url), _) => url.clone(),
            (None, Some(issuer)) => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc = self.get_json(&discovery).await?;
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| AuthError::Unavailable(format!("{discovery} has no jwks_uri")))?
                    .to_string()
            }
            (None, None) => {
                return Err(AuthError::Unavailable(
                    "no jwks_url or issuer configured".to_string(),
                ));
            }
        };
        serde_json::from_value(self.get_json(&url).await?)
            .map_err(|e| AuthError::Unavailable(format!("{url}: not a JWKS: {e}")))
    }
}

/// A token that passed every check, and what it says.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who.
    pub principal: Principal,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// When the token stops being accepted (its `exp` plus the leeway), seconds since the Unix epoch.
    pub expires_at: i64,
}

struct KeyCache {
    keys: JwkSet,
    fetched_at: Option<Instant>,
}

/// Validates bearer JWTs: signature against the IdP's keys (refreshed on an unknown `kid`, rate-limited), an
/// algorithm allow-list (never `none`, never HMAC), `iss`, `aud`, `exp`/`nbf` with leeway, then maps claims to a
/// [`Principal`].
pub struct JwtValidator {
    settings: AuthSettings,
    algorithms: Vec<Algorithm>,
    source: Arc<dyn KeySource>,
    cache: tokio::sync::RwLock<KeyCache>,
    /// Held while refreshing so concurrent unknown-`kid` requests trigger one fetch.
    refresh: tokio::sync::Mutex<()>,
    /// Tokens already verified, by SHA-256, with when the result stops holding (see [`JwtValidator::validate`]).
    verified: moka::sync::Cache<[u8; 32], (Instant, Authenticated)>,
}

/// Longest a verified token is answered from memory before its signature is checked again.
const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// Verified tokens remembered (least recently used leave first).
const MAX_VERIFIED: u64 = 4096;

impl JwtValidator {
    /// A validator for `settings` over `source`. Fails on an unusable algorithm list.
    pub fn new(settings: AuthSettings, source: Arc<dyn KeySource>) -> Result<JwtValidator, String> {
        let mut algorithms = Vec::new();
        for name in &settings.algorithms {
            let alg =
                Algorithm::from_str(name).map_err(|_| format!("unknown JWT algorithm {name:?}"))?;
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(format!(
                    "{name} is a shared-secret algorithm; Parley only accepts tokens signed with the IdP's private key"
                ));
            }
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err("auth.algorithms is empty".to_string());
        }
        Ok(JwtValidator {
            settings,
            algorithms,
            source,
            cache: tokio::sync::RwLock::new(KeyCache {
                keys: JwkSet { keys: vec![] },
                fetched_at: None,
            }),
            refresh: tokio::sync::Mutex::new(()),
            verified: moka::sync::Cache::builder()
                .max_capacity(MAX_VERIFIED)
                .time_to_live(VERIFIED_FOR)
                .build(),
        })
    }

    /// The configured audience (this server's resource identifier).
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    fn find(keys: &JwkSet, kid: Option<&str>) -> Option<Jwk> {
        match kid {
            Some(kid) => keys.find(kid).cloned(),
            // Without a kid, only an unambiguous single key may be used.
            None if keys.keys.len() == 1 => keys.keys.first().cloned(),
            None => None,
        }
    }

    /// Fetches the key set unless one was fetched less than the refresh interval ago.
    async fn refresh_keys(&self) -> Result<(), AuthError> {
        let _one_at_a_time = self.refresh.lock().await;
        let min = Duration::from_secs(self.settings.jwks_refresh_secs);
        let recent = self
            .cache
            .read()
            .await
            .fetched_at
            .is_some_and(|t| t.elapsed() < min);
        if recent {
            return Ok(());
        }
        let keys = self.source.fetch().await?;
        tracing::info!(keys = keys.keys.len(), "fetched the IdP signing keys");
        *self.cache.write().await = KeyCache {
            keys,
            fetched_at: Some(Instant::now()),
        };
        // A key may have left the set: tokens it signed must be checked again.
        self.verified.invalidate_all();
        Ok(())
    }

    /// Checks a bearer token and returns who it names.
    ///
    /// A client sends the same token with every request, and checking its signature dominates the cost of
    /// authenticating one (an Ed25519 or RSA verification), so a token that passed is remembered, by its SHA-256,
    /// until it expires (`exp` plus the leeway, as the check itself allows) and for at most five minutes; a
    /// refresh of the key set forgets them all. Nothing else in the check depends on time, and failures are never
    /// remembered.
    pub async fn validate(&self, token: &str) -> Result<Authenticated, AuthError> {
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some((until, authenticated)) = self.verified.get(&digest)
            && Instant::now() < until
        {
            return Ok(authenticated);
        }
        let (authenticated, exp) = self.verify(token).await?;
        let left = exp
            .saturating_add(self.settings.leeway_secs as i64)
            .saturating_sub(chrono::Utc::now().timestamp());
        if left > 0 {
            let until = Instant::now() + VERIFIED_FOR.min(Duration::from_secs(left as u64));
            self.verified.insert(digest, (until, authenticated.clone()));
        }
        Ok(authenticated)
    }

    /// [`JwtValidator::validate`] without the memory of verified tokens; also returns the token's `exp`.
    async fn verify(&self, token: &str) -> Result<(Authenticated, i64), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token header: {e}")))?;
        // RFC 7515 §4.1.11: a recipient must refuse a token whose `crit` names extensions it does not process, and
        // Parley processes none.
        if let Some(crit) = &header.crit {
            return Err(AuthError::Invalid(format!(
                "the token's header marks extensions as critical ({}) that this server does not process",
                crit.join(", ")
            )));
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted (allowed: {})",
                header.alg,
                self.settings.algorithms.join(", ")
            )));
        }
        let kid = header.kid.as_deref();
        let mut jwk = Self::find(&self.cache.read().await.keys, kid);
        if jwk.is_none() {
            self.refresh_keys().await?;
            jwk = Self::find(&self.cache.read().await.keys, kid);
        }
        let jwk = jwk.ok_or_else(|| {
            AuthError::Invalid(format!(
                "unknown signing key {}",
                kid.map_or("(no kid)".to_string(), |k| format!("{k:?}"))
            ))
        })?;
        if let Some(key_alg) = jwk.common.key_algorithm
            && format!("{key_alg:?}") != format!("{:?}", header.alg)
        {
            return Err(AuthError::Invalid(
                "the token's algorithm does not match its key".to_string(),
            ));
        }
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| AuthError::Invalid(format!("unusable signing key: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.settings.audience]);
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        } else {
            validation.set_required_spec_claims(&["exp", "aud"]);
        }
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let subject = claim(&claims, &self.settings.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                AuthError::Invalid(format!(
                    "the token has no {} claim",
                    self.settings.subject_claim
                ))
            })?;
        let mut groups: Vec<String> = Vec::new();
        for path in &self.settings.groups_claims {
            for g in strings(claim(&claims, path)) {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        let mut scopes = strings(claims.get("scope"));
        scopes.extend(strings(claims.get("scp")));
        let missing: Vec<&String> = self
            .settings
            .required_scopes
            .iter()
            .filter(|s| !scopes.contains(s))
            .collect();
        if !missing.is_empty() {
            return Err(AuthError::InsufficientScope(
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ));
        }
        let mut principal = Principal::new(subject, groups);
        for key in ["iss", "jti", "azp", "client_id"] {
            if let Some(v) = claims.get(key).and_then(Value::as_str) {
                principal.attrs.insert(key.to_string(), v.to_string());
            }
        }
        tracing::debug!(sub = %principal.id, jti = ?principal.attrs.get("jti"), "token accepted");
        // `exp` is required and was checked; a fractional one counts by its whole seconds.
        let exp = claims
            .get("exp")
            .and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64)))
            .unwrap_or(0);
        let expires_at = exp.saturating_add(self.settings.leeway_secs as i64);
        Ok((
            Authenticated {
                principal,
                scopes,
                expires_at,
            },
            exp,
        ))
    }
}

/// A claim by dotted path, e.g. `realm_access.roles`.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

/// Strings of a claim: an array of strings, or one space- or comma-separated string.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        _ => vec![],
    }
}

/// Nobody: the identity of a request that carried no verified token. It belongs to no group, so every policy
/// denies it; the HTTP layer never lets such a request reach a tool.
pub struct Anonymous;

impl IdentitySource for Anonymous {
    fn resolve(&self) -> Principal {
        Principal::new("", vec![])
    }
}

// ---- the local dev issuer -----------------------------------------------------------------------------------

/// Issuer name of tokens minted by `parley token`.
pub const DEV_ISSUER: &str = "parley-dev";

/// A signing key kept in the data dir, for `parley token` and `serve --dev-issuer`. For local use only.
pub struct DevIssuer {
    encoding: jsonwebtoken::EncodingKey,
    jwk: Jwk,
    kid: String,
}

impl DevIssuer {
    /// Loads the Ed25519 key at `path`, creating it (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> anyhow::Result<DevIssuer> {
        use base64::Engine;
        use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        let signing = if path.exists() {
            let pem = std::fs::read_to_string(path)?;
            ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        } else {
            let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
            let pem = key
                .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("cannot encode the dev key: {e}"))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, pem.as_bytes())?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            key
        };
        let pem = signing
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("cannot encode the dev key: {e}"))?;
        let public = signing.verifying_key().to_bytes();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public);
        let kid = crate::audit::digest(&x)[..16].to_string();
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"
        }))?;
        Ok(DevIssuer {
            encoding: jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes())?,
            jwk,
            kid,
        })
    }

    /// The public key set that verifies this issuer's tokens.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// Mints a token for `principal` with `groups` and `scopes`, valid for `ttl`, for `audience`.
    pub fn mint(
        &self,
        principal: &str,
        groups: &[String],
        scopes: &[String],
        ttl: Duration,
        audience: &str,
    ) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let claims = serde_json::json!({
            "iss": DEV_ISSUER,
            "sub": principal,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs() as i64,
            "jti": uuid::Uuid::new_v4().to_string(),
            "groups": groups,
            "scope": scopes.join(" "),
        });
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }
}

/// Parses a duration like `90s`, `30m`, `1h`, `7d`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 1h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        "" => {
            return Err(format!(
                "{text:?} has no unit: write it as 90s, 30m, 1h or 7d"
            ));
        }
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 90s, 30m, 1h or 7d"
            ));
        }
    };
    if secs == 0 {
        return Err(format!(
            "{text:?} is no time at all: a token must live at least a second (e.g. 30m)"
        ));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AuthSettings {
        AuthSettings {
            issuer: Some(DEV_ISSUER.to_string()),
            audience: "parley-test".to_string(),
            ..AuthSettings::default()
        }
    }

    #[tokio::test]
    async fn dev_tokens_round_trip_and_map_claims() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::load_or_create(&dir.path().join("k.pem")).unwrap();
        let again = DevIssuer::load_or_create(&dir.path().join("k.pem")).unwrap();
        assert_eq!(issuer.kid, again.kid, "the key is kept");
        let v = JwtValidator::new(settings(), Arc::new(StaticKeys(issuer.jwks()))).unwrap();
        let token = issuer
            .mint(
                "ana",
                &["analysts".into()],
                &["parley".into()],
                Duration::from_secs(60),
                "parley-test",
            )
            .unwrap();
        let a = v.validate(&token).await.unwrap();
        assert_eq!(a.principal.id, "ana");
        assert_eq!(a.principal.groups, ["analysts"]);
        assert_eq!(a.scopes, ["parley"]);
        let other = issuer
            .mint("ana", &[], &[], Duration::from_secs(60), "someone-else")
            .unwrap();
        assert!(matches!(
            v.validate(&other).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn a_remembered_token_still_expires() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::load_or_create(&dir.path().join("k.pem")).unwrap();
        let v = JwtValidator::new(
            AuthSettings {
                leeway_secs: 0,
                ..settings()
            },
            Arc::new(StaticKeys(issuer.jwks())),
        )
        .unwrap();
        let token = issuer
            .mint("ana", &[], &[], Duration::from_secs(1), "parley-test")
            .unwrap();
        let first = v.validate(&token).await.unwrap();
        v.verified.run_pending_tasks();
        assert_eq!(v.verified.entry_count(), 1, "remembered");
        assert_eq!(v.validate(&token).await.unwrap().principal, first.principal);
        // One character changed in the signature: not the remembered token, and it fails its check.
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(v.validate(&forged).await.is_err());
        // Past `exp` (whole seconds, no leeway), the remembered result no longer holds.
        let exp = chrono::Utc::now().timestamp() + 1;
        while chrono::Utc::now().timestamp() <= exp {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match v.validate(&token).await {
            Err(AuthError::Invalid(message)) => assert!(message.contains("xpired"), "{message}"),
            other => panic!("expected the expired token to fail, got {other:?}"),
        }
    }

    #[test]
    fn claims_by_path_and_ttls() {
        let c = serde_json::json!({"realm_access": {"roles": ["a", "b"]}, "scope": "x y"});
        assert_eq!(strings(claim(&c, "realm_access.roles")), ["a", "b"]);
        assert_eq!(strings(claim(&c, "scope")), ["x", "y"]);
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("5").unwrap_err().contains("no unit"));
        assert!(parse_ttl("0s").unwrap_err().contains("at least a second"));
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert!(
            JwtValidator::new(
                AuthSettings {
                    algorithms: vec!["HS256".into()],
                    ..settings()
                },
                Arc::new(StaticKeys(JwkSet { keys: vec![] }))
            )
            .is_err()
        );
    }
}

/// The latest verified bearer token of each HTTP principal, kept only when a catalog authorizes per agent by
/// OAuth 2.0 Token Exchange (RFC 8693), which needs it as `subject_token`. It leaves the process only in such an
/// exchange, at the token endpoint the operator configured — never to the catalog itself, never in a log.
pub struct SubjectTokens {
    tokens: moka::sync::Cache<String, SubjectToken>,
}

/// A verified agent token; its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SubjectToken(String);

impl std::fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectToken(…)")
    }
}

impl SubjectToken {
    /// The token text, for the exchange request only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl Default for SubjectTokens {
    fn default() -> Self {
        SubjectTokens {
            // As long as a verified token is remembered by the validator: a principal who stopped calling is
            // forgotten.
            tokens: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
        }
    }
}

impl SubjectTokens {
    /// Remembers `token`, just verified, as `principal`'s.
    pub fn remember(&self, principal: &str, token: &str) {
        if self
            .tokens
            .get(principal)
            .is_none_or(|known| known.0 != token)
        {
            self.tokens
                .insert(principal.to_string(), SubjectToken(token.to_string()));
        }
    }

    /// `principal`'s latest verified token, if it called over HTTP lately.
    pub fn get(&self, principal: &str) -> Option<SubjectToken> {
        self.tokens.get(principal)
    }
}

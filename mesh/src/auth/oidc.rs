//! User tokens from an identity provider (Keycloak, Auth0, Dex, Google, Cognito…): RS256, ES256
//! or EdDSA JWTs verified against the provider's published keys (a JWKS).
//!
//! - Keys come from `SHAREMESH_OIDC_JWKS_URI` (`https://…`, `http://…`, or a file: `file:///…` or
//!   an absolute path), else from the issuer's `/.well-known/openid-configuration`. They are
//!   fetched at start, refreshed every `SHAREMESH_OIDC_REFRESH`, and again — at most once per
//!   `SHAREMESH_OIDC_REFETCH` — when a token names a key id the cache does not know (a rotation).
//!   A removed key stops verifying at the next refresh.
//! - A provider unreachable at start does not stop the service: it serves, answers every user
//!   token UNAUTHENTICATED ("signing keys not loaded yet"), logs the error and keeps retrying.
//! - Checked: the signature with the key of the token's `kid`, an asymmetric algorithm matching
//!   that key (an HS256 token is refused: algorithm confusion), `iss`, `aud` (when configured),
//!   `exp`, `nbf`, with `SHAREMESH_OIDC_LEEWAY` of clock skew.
//! - The subject comes from `SHAREMESH_OIDC_SUBJECT_CLAIM` (`sub`); the role from the provider's
//!   roles at `SHAREMESH_OIDC_ROLES_CLAIM` (a dotted path such as `realm_access.roles`; a string
//!   or an array of strings), mapped by `SHAREMESH_OIDC_ROLE_MAP` (`provider-role=sharemesh-role`,
//!   comma-separated); the strongest mapped role wins (admin, then host, then customer). A token
//!   with none of the mapped roles is refused. No provider role maps to `service`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use tonic::Status;

use super::{Caller, Role, unauthenticated};
use crate::config::{ConfigError, Env, EnvExt};

/// The provider's issuer URL (`https://sso.example.com/realms/sharemesh`); setting it switches
/// user tokens from the HS256 secret to the provider's keys.
pub const ENV_OIDC_ISSUER: &str = "SHAREMESH_OIDC_ISSUER";
/// Where the keys are (`https://…/certs`, `file:///etc/jwks.json`); unset: from the issuer's
/// discovery document.
pub const ENV_OIDC_JWKS_URI: &str = "SHAREMESH_OIDC_JWKS_URI";
/// Expected `aud` (the client id the provider issues tokens for); unset: not checked.
pub const ENV_OIDC_AUDIENCE: &str = "SHAREMESH_OIDC_AUDIENCE";
/// Dotted path of the roles claim (`roles`; Keycloak: `realm_access.roles`).
pub const ENV_OIDC_ROLES_CLAIM: &str = "SHAREMESH_OIDC_ROLES_CLAIM";
/// Provider role → sharemesh role (`customer=customer,host=host,admin=admin`).
pub const ENV_OIDC_ROLE_MAP: &str = "SHAREMESH_OIDC_ROLE_MAP";
/// Claim holding the user id (`sub`).
pub const ENV_OIDC_SUBJECT_CLAIM: &str = "SHAREMESH_OIDC_SUBJECT_CLAIM";
/// Clock skew allowed on `exp` and `nbf` (`30s`).
pub const ENV_OIDC_LEEWAY: &str = "SHAREMESH_OIDC_LEEWAY";
/// How often the keys are fetched again (`10m`).
pub const ENV_OIDC_REFRESH: &str = "SHAREMESH_OIDC_REFRESH";
/// Least time between two fetches triggered by unknown key ids (`10s`).
pub const ENV_OIDC_REFETCH: &str = "SHAREMESH_OIDC_REFETCH";

/// Settings of user tokens from an identity provider.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Expected `iss`.
    pub issuer: String,
    /// Where the keys are; `None`: the issuer's discovery document says.
    pub jwks_uri: Option<String>,
    /// Expected `aud`.
    pub audience: Option<String>,
    /// Dotted path of the roles claim.
    pub roles_claim: String,
    /// Provider role → sharemesh role.
    pub role_map: Vec<(String, Role)>,
    /// Claim holding the user id.
    pub subject_claim: String,
    /// Clock skew allowed.
    pub leeway: Duration,
    /// Scheduled refresh.
    pub refresh: Duration,
    /// Least time between two refreshes an unknown key id triggers.
    pub refetch: Duration,
}

impl OidcConfig {
    /// The settings, or `None` when [`ENV_OIDC_ISSUER`] is unset (HS256 user tokens).
    pub fn from_env(env: &impl Env) -> Result<Option<Self>, ConfigError> {
        let Some(issuer) = env.get(ENV_OIDC_ISSUER).filter(|s| !s.trim().is_empty()) else {
            for other in [ENV_OIDC_JWKS_URI, ENV_OIDC_AUDIENCE] {
                if env.get(other).is_some() {
                    return Err(ConfigError::invalid(
                        other,
                        "",
                        "is set but SHAREMESH_OIDC_ISSUER is not; set the issuer too",
                    ));
                }
            }
            return Ok(None);
        };
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err(ConfigError::invalid(
                ENV_OIDC_ISSUER,
                &issuer,
                "expected the provider's https:// issuer URL",
            ));
        }
        let jwks_uri = env.get(ENV_OIDC_JWKS_URI).filter(|s| !s.trim().is_empty());
        if let Some(uri) = &jwks_uri
            && !(uri.starts_with("https://") || uri.starts_with("http://") || uri.starts_with("file://") || uri.starts_with('/'))
        {
            return Err(ConfigError::invalid(
                ENV_OIDC_JWKS_URI,
                uri,
                "expected https://, http://, file:// or an absolute path",
            ));
        }
        let map = env.string_or(ENV_OIDC_ROLE_MAP, "customer=customer,host=host,admin=admin");
        let mut role_map = Vec::new();
        for pair in map.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (theirs, ours) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError::invalid(ENV_OIDC_ROLE_MAP, &map, "expected provider-role=sharemesh-role pairs"))?;
            let ours: Role = ours
                .trim()
                .parse()
                .map_err(|e: String| ConfigError::invalid(ENV_OIDC_ROLE_MAP, &map, e))?;
            if ours == Role::Service {
                return Err(ConfigError::invalid(
                    ENV_OIDC_ROLE_MAP,
                    &map,
                    "no provider role may map to service: that role belongs to calls between services",
                ));
            }
            role_map.push((theirs.trim().to_owned(), ours));
        }
        if role_map.is_empty() {
            return Err(ConfigError::invalid(ENV_OIDC_ROLE_MAP, &map, "maps no role"));
        }
        Ok(Some(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            jwks_uri,
            audience: env.get(ENV_OIDC_AUDIENCE).filter(|s| !s.trim().is_empty()),
            roles_claim: env.string_or(ENV_OIDC_ROLES_CLAIM, "roles"),
            role_map,
            subject_claim: env.string_or(ENV_OIDC_SUBJECT_CLAIM, "sub"),
            leeway: env.duration_or(ENV_OIDC_LEEWAY, Duration::from_secs(30))?,
            refresh: env
                .duration_or(ENV_OIDC_REFRESH, Duration::from_secs(600))?
                .max(Duration::from_secs(1)),
            refetch: env.duration_or(ENV_OIDC_REFETCH, Duration::from_secs(10))?,
        }))
    }

    /// The role of a token's claims: the strongest sharemesh role any of its provider roles maps
    /// to.
    pub fn role_of(&self, claims: &serde_json::Value) -> Result<Role, String> {
        let mut at = claims;
        for part in self.roles_claim.split('.') {
            at = at.get(part).ok_or_else(|| format!("the token has no {} claim", self.roles_claim))?;
        }
        let theirs: Vec<&str> = match at {
            serde_json::Value::String(s) => s.split_whitespace().collect(),
            serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str()).collect(),
            _ => return Err(format!("{} is neither a string nor a list of strings", self.roles_claim)),
        };
        [Role::Admin, Role::Host, Role::Customer]
            .into_iter()
            .find(|ours| self.role_map.iter().any(|(t, o)| o == ours && theirs.contains(&t.as_str())))
            .ok_or_else(|| format!("none of the token's roles {theirs:?} maps to a sharemesh role"))
    }
}

/// One verification key.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    alg: Algorithm,
}

/// The provider's keys, kept fresh.
#[derive(Clone)]
pub struct Keys {
    config: Arc<OidcConfig>,
    keys: Arc<RwLock<Option<HashMap<String, Key>>>>,
    last_fetch: Arc<Mutex<Option<Instant>>>,
}

impl Keys {
    /// Keys of `config`; inside a tokio runtime, fetches them now and refreshes them on schedule.
    pub fn start(config: OidcConfig) -> Self {
        let keys = Self {
            config: Arc::new(config),
            keys: Arc::new(RwLock::new(None)),
            last_fetch: Arc::new(Mutex::new(None)),
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let k = keys.clone();
            handle.spawn(async move { k.refresh_loop().await });
        }
        keys
    }

    async fn refresh_loop(self) {
        let mut failures = 0u32;
        loop {
            let wait = match self.refresh().await {
                Ok(n) => {
                    failures = 0;
                    tracing::debug!(keys = n, "identity provider keys loaded");
                    self.config.refresh
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, "cannot load the identity provider's keys; user tokens are refused until they load");
                    crate::events::backoff(Duration::from_millis(500), failures, Duration::from_secs(30)).min(self.config.refresh)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Fetches the keys now; returns how many are usable.
    pub async fn refresh(&self) -> Result<usize, String> {
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let uri = match &self.config.jwks_uri {
            Some(uri) => uri.clone(),
            None => discover(&self.config.issuer).await?,
        };
        let set: JwkSet = serde_json::from_slice(&fetch(&uri).await?).map_err(|e| format!("{uri} is not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => Algorithm::ES384,
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => {
                    tracing::warn!(%kid, "skipping a key of a kind sharemesh does not verify");
                    continue;
                }
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| format!("{a:?}").parse::<Algorithm>().ok())
                .unwrap_or(alg);
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, Key { key, alg });
                }
                Err(e) => tracing::warn!(%kid, error = %e, "skipping a key that does not load"),
            }
        }
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(keys);
        Ok(n)
    }

    fn lookup(&self, kid: &str) -> Result<Option<Key>, Status> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        match keys.as_ref() {
            None => Err(unauthenticated(
                "the identity provider's signing keys are not loaded yet; retry shortly",
            )),
            Some(map) => Ok(map.get(kid).cloned()),
        }
    }

    /// A key id the cache does not know: fetch again (at most once per refetch interval), then
    /// look once more. Blocks this request's thread for the fetch on a multi-thread runtime.
    fn refetch_for(&self, kid: &str) -> Result<Option<Key>, Status> {
        let due = self
            .last_fetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|at| at.elapsed() >= self.config.refetch);
        let multi_thread =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if due && multi_thread {
            let keys = self.clone();
            let fetched = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(keys.refresh()));
            if let Err(e) = fetched {
                tracing::warn!(error = %e, %kid, "refetching keys for an unknown key id failed");
            }
        }
        self.lookup(kid)
    }

    /// The caller of a provider's token.
    pub fn verify(&self, token: &str, header: &Header) -> Result<Caller, Status> {
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(unauthenticated(format!(
                "{:?} tokens are not accepted: user tokens come from the identity provider, signed with its published keys",
                header.alg
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| unauthenticated("the token names no key id (kid)"))?;
        let key = match self.lookup(kid)? {
            Some(key) => key,
            None => self
                .refetch_for(kid)?
                .ok_or_else(|| unauthenticated(format!("unknown signing key {kid:?}")))?,
        };
        if key.alg != header.alg {
            return Err(unauthenticated(format!("key {kid:?} signs {:?}, not {:?}", key.alg, header.alg)));
        }
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[self.config.issuer.as_str()]);
        match &self.config.audience {
            Some(aud) => validation.set_audience(&[aud.as_str()]),
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation).map_err(unauthenticated)?;
        let id = data
            .claims
            .get(&self.config.subject_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthenticated(format!("the token has no {} claim", self.config.subject_claim)))?
            .to_owned();
        let role = self.config.role_of(&data.claims).map_err(unauthenticated)?;
        Ok(Caller { id, role })
    }
}

/// The `jwks_uri` of the issuer's discovery document.
async fn discover(issuer: &str) -> Result<String, String> {
    let url = format!("{issuer}/.well-known/openid-configuration");
    let doc: serde_json::Value = serde_json::from_slice(&fetch(&url).await?).map_err(|e| format!("{url}: {e}"))?;
    doc.get("jwks_uri")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("{url} has no jwks_uri"))
}

/// The body of `uri`: an HTTP(S) GET (10 s, 2xx only) or a file.
async fn fetch(uri: &str) -> Result<Vec<u8>, String> {
    if let Some(path) = uri.strip_prefix("file://").or_else(|| uri.starts_with('/').then_some(uri)) {
        return tokio::fs::read(path).await.map_err(|e| format!("{path}: {e}"));
    }
    use http_body_util::BodyExt;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<bytes::Bytes>>(https);
    let req = http::Request::get(uri)
        .header("accept", "application/json")
        .body(http_body_util::Empty::new())
        .map_err(|e| format!("{uri}: {e}"))?;
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| format!("{uri}: no answer within 10s"))?
        .map_err(|e| format!("{uri}: {e}"))?;
    if !res.status().is_success() {
        return Err(format!("{uri}: HTTP {}", res.status()));
    }
    let body = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
        .await
        .map_err(|_| format!("{uri}: body not read within 10s"))?
        .map_err(|e| format!("{uri}: {e}"))?;
    Ok(body.to_bytes().to_vec())
}

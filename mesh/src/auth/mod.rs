//! Bearer-token identity, verified by every service.
//!
//! Two kinds of token, told apart by their issuer and signed with different keys:
//!
//! - **User tokens** (customer, host, admin): HS256 with `SHAREMESH_JWT_SECRET` (development,
//!   tests, `sharemesh token`), or — with `SHAREMESH_OIDC_ISSUER` set — RS256/ES256/EdDSA tokens
//!   of an identity provider, verified against its JWKS ([`oidc`]). A user token can never carry
//!   the `service` role.
//! - **Service tokens** (calls between services): HS256 with the separate service key
//!   (`SHAREMESH_SERVICE_SECRET`; derived from the JWT secret when unset in HS256 mode), issuer
//!   [`INTERNAL_ISSUER`], audience [`SERVICE_AUDIENCE`]. Only these carry the `service` role, and
//!   no user token — whatever its claims — can imitate one without that key.
//!
//! A [`Verifier`] checks the `authorization: Bearer <jwt>` metadata of each call and stores the
//! [`Caller`] in the request's extensions; handlers read it with [`Caller::from_request`].

pub mod accepted;
pub mod oidc;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tonic::{Request, Status};

use crate::config::{ConfigError, DEV_JWT_SECRET, ENV_JWT_ISSUER, ENV_JWT_SECRET, Env, EnvExt};

/// Issuer of service tokens.
pub const INTERNAL_ISSUER: &str = "sharemesh-internal";
/// Audience of service tokens.
pub const SERVICE_AUDIENCE: &str = "sharemesh-services";
/// Key of service tokens (at least 16 bytes). Required with `SHAREMESH_OIDC_ISSUER`; otherwise
/// derived from `SHAREMESH_JWT_SECRET` when unset.
pub const ENV_SERVICE_SECRET: &str = "SHAREMESH_SERVICE_SECRET";

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reserves listings and sees its own reservations, payments, messages and page.
    Customer,
    /// Lists things and confirms reservations of its own listings.
    Host,
    /// Sees and may change everything.
    Admin,
    /// Another sharemesh service (internal RPCs).
    Service,
}

impl Role {
    /// The lowercase name used in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Host => "host",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "customer" => Ok(Role::Customer),
            "host" => Ok(Role::Host),
            "admin" => Ok(Role::Admin),
            "service" => Ok(Role::Service),
            other => Err(format!("unknown role {other:?}: use customer, host, admin or service")),
        }
    }
}

/// The claims sharemesh puts in and expects of a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The caller's id.
    pub sub: String,
    /// The caller's role.
    pub role: Role,
    /// Issuer.
    pub iss: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// Audience ([`SERVICE_AUDIENCE`] on service tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Subject (user or service id).
    pub id: String,
    /// Role.
    pub role: Role,
}

impl Caller {
    /// The caller stored by the [`Verifier`]; UNAUTHENTICATED if the call carried no valid token.
    pub fn from_request<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))
    }

    /// PERMISSION_DENIED unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Status> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let want: Vec<_> = roles.iter().map(|r| r.as_str()).collect();
            Err(Status::permission_denied(format!(
                "role {} may not do this (needs {})",
                self.role,
                want.join(" or ")
            )))
        }
    }

    /// True for admins.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// How tokens are signed and verified.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 secret of user tokens (empty with OIDC).
    pub secret: String,
    /// Expected issuer of HS256 user tokens.
    pub issuer: String,
    /// Key of service tokens.
    pub service_secret: String,
    /// User tokens from an identity provider instead of the HS256 secret.
    pub oidc: Option<oidc::OidcConfig>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("service_secret", &"<redacted>")
            .field("oidc", &self.oidc)
            .finish()
    }
}

/// The service key derived from an HS256 user secret (HS256 mode without
/// `SHAREMESH_SERVICE_SECRET`): different bytes, so a user-token key is never a service key.
fn derive_service_secret(secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(b"sharemesh service identity v1");
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

impl AuthConfig {
    /// HS256 user tokens with `secret` and `issuer`; the service key derived from `secret`.
    pub fn hs256(secret: &str, issuer: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            issuer: issuer.to_owned(),
            service_secret: derive_service_secret(secret),
            oidc: None,
        }
    }

    /// Reads [`ENV_JWT_SECRET`] (default: a development secret), [`ENV_JWT_ISSUER`],
    /// [`ENV_SERVICE_SECRET`] and the `SHAREMESH_OIDC_*` settings ([`oidc::OidcConfig::from_env`]).
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let oidc = oidc::OidcConfig::from_env(env)?;
        let service_secret = env.get(ENV_SERVICE_SECRET).filter(|s| !s.is_empty());
        if let Some(s) = &service_secret
            && s.len() < 16
        {
            return Err(ConfigError::invalid(ENV_SERVICE_SECRET, "<redacted>", "must be at least 16 bytes"));
        }
        if let Some(oidc) = oidc {
            if env.get(ENV_JWT_SECRET).is_some_and(|s| !s.is_empty()) {
                return Err(ConfigError::invalid(
                    ENV_JWT_SECRET,
                    "<redacted>",
                    "is set together with SHAREMESH_OIDC_ISSUER: user tokens come either from the identity provider or from the HS256 secret; unset one",
                ));
            }
            let service_secret = service_secret.ok_or_else(|| {
                ConfigError::invalid(
                    ENV_SERVICE_SECRET,
                    "",
                    "is required with SHAREMESH_OIDC_ISSUER: it signs the calls between services (the same value for every service)",
                )
            })?;
            return Ok(Self {
                secret: String::new(),
                issuer: oidc.issuer.clone(),
                service_secret,
                oidc: Some(oidc),
            });
        }
        let secret = env.string_or(ENV_JWT_SECRET, DEV_JWT_SECRET);
        if secret.len() < 16 {
            return Err(ConfigError::invalid(ENV_JWT_SECRET, "<redacted>", "must be at least 16 bytes"));
        }
        let mut config = Self::hs256(&secret, &env.string_or(ENV_JWT_ISSUER, "sharemesh"));
        if let Some(s) = service_secret {
            config.service_secret = s;
        }
        Ok(config)
    }

    /// True when the built-in development secret is in use.
    pub fn is_dev_secret(&self) -> bool {
        self.oidc.is_none() && self.secret == DEV_JWT_SECRET
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// User tokens come from the identity provider.
    #[error("user tokens come from the identity provider (SHAREMESH_OIDC_ISSUER is set); only service tokens can be minted here")]
    Oidc,
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Mints tokens: service tokens for calls between services, and HS256 user tokens (the
/// `sharemesh token` command, tests) when no identity provider is configured.
#[derive(Clone)]
pub struct Minter {
    user: Option<(EncodingKey, String)>,
    service: EncodingKey,
}

impl Minter {
    /// A minter for `config`.
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            user: config
                .oidc
                .is_none()
                .then(|| (EncodingKey::from_secret(config.secret.as_bytes()), config.issuer.clone())),
            service: EncodingKey::from_secret(config.service_secret.as_bytes()),
        }
    }

    /// A signed token for `sub` with `role`, valid for `ttl`: a service token for
    /// [`Role::Service`], a user token otherwise.
    pub fn mint(&self, sub: &str, role: Role, ttl: Duration) -> Result<String, MintError> {
        let now = now_secs();
        let (key, iss, aud) = match (role, &self.user) {
            (Role::Service, _) => (&self.service, INTERNAL_ISSUER.to_owned(), Some(SERVICE_AUDIENCE.to_owned())),
            (_, Some((key, issuer))) => (key, issuer.clone(), None),
            (_, None) => return Err(MintError::Oidc),
        };
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            iss,
            iat: now,
            exp: now + ttl.as_secs(),
            aud,
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)?)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unauthenticated(reason: impl fmt::Display) -> Status {
    Status::unauthenticated(format!("invalid bearer token: {reason}"))
}

/// How user tokens are checked.
enum Users {
    /// HS256 with the shared secret.
    Hs256 { key: DecodingKey, validation: Box<Validation> },
    /// An identity provider's keys.
    Oidc(oidc::Keys),
}

/// Verifies bearer tokens; used as a tonic interceptor on every business service.
#[derive(Clone)]
pub struct Verifier {
    service_key: Arc<DecodingKey>,
    service_validation: Arc<Validation>,
    users: Arc<Users>,
    /// Tokens accepted recently: checked once, not on every call.
    accepted: Arc<accepted::Accepted>,
}

impl Verifier {
    /// A verifier for `config`. With OIDC it starts fetching the provider's keys in the
    /// background (inside a tokio runtime) and keeps them fresh.
    pub fn new(config: &AuthConfig) -> Self {
        let mut service_validation = Validation::new(Algorithm::HS256);
        service_validation.set_issuer(&[INTERNAL_ISSUER]);
        service_validation.set_audience(&[SERVICE_AUDIENCE]);
        service_validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        service_validation.leeway = 5;
        let users = match &config.oidc {
            Some(oidc) => Users::Oidc(oidc::Keys::start(oidc.clone())),
            None => {
                let mut validation = Validation::new(Algorithm::HS256);
                validation.set_issuer(&[config.issuer.as_str()]);
                validation.set_required_spec_claims(&["exp", "sub", "iss"]);
                validation.validate_aud = false;
                validation.leeway = 5;
                Users::Hs256 {
                    key: DecodingKey::from_secret(config.secret.as_bytes()),
                    validation: Box::new(validation),
                }
            }
        };
        Self {
            service_key: Arc::new(DecodingKey::from_secret(config.service_secret.as_bytes())),
            service_validation: Arc::new(service_validation),
            users: Arc::new(users),
            accepted: Arc::default(),
        }
    }

    /// The caller a token names, or UNAUTHENTICATED saying why not. A service token, or a user
    /// token under the HS256 secret, accepted in the last minute (and not expired since) is
    /// answered from memory ([`accepted`]); tokens of an identity provider are checked every time.
    pub fn verify(&self, token: &str) -> Result<Caller, Status> {
        if let Some(caller) = self.accepted.get(token) {
            return Ok(caller);
        }
        let (caller, exp) = self.check(token)?;
        // Only tokens checked against keys fixed for the life of the process: an identity
        // provider may withdraw its keys, and their tokens must fail at the next key refresh.
        if !matches!(self.users.as_ref(), Users::Oidc(_)) || caller.role == Role::Service {
            self.accepted.insert(token, &caller, exp);
        }
        Ok(caller)
    }

    /// The full check of [`Verifier::verify`]: the caller and the token's `exp`.
    fn check(&self, token: &str) -> Result<(Caller, u64), Status> {
        #[derive(Deserialize)]
        struct Unverified {
            #[serde(default)]
            iss: String,
            #[serde(default)]
            exp: u64,
        }
        let header = jsonwebtoken::decode_header(token).map_err(unauthenticated)?;
        // Read before the signature is checked; used only once it has been.
        let Unverified { iss: issuer, exp } = jsonwebtoken::dangerous::insecure_decode::<Unverified>(token)
            .map(|d| d.claims)
            .map_err(unauthenticated)?;
        if issuer == INTERNAL_ISSUER {
            if header.alg != Algorithm::HS256 {
                return Err(unauthenticated("service tokens are HS256"));
            }
            let data = jsonwebtoken::decode::<Claims>(token, &self.service_key, &self.service_validation).map_err(unauthenticated)?;
            if data.claims.role != Role::Service || data.claims.sub.is_empty() {
                return Err(unauthenticated("a service token names a service"));
            }
            let caller = Caller {
                id: data.claims.sub,
                role: Role::Service,
            };
            return Ok((caller, exp));
        }
        let caller = match self.users.as_ref() {
            Users::Hs256 { key, validation } => {
                let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(unauthenticated)?;
                Caller {
                    id: data.claims.sub,
                    role: data.claims.role,
                }
            }
            Users::Oidc(keys) => keys.verify(token, &header)?,
        };
        if caller.id.is_empty() {
            return Err(unauthenticated("empty subject"));
        }
        if caller.role == Role::Service {
            return Err(unauthenticated(
                "the service role belongs to calls between services, signed with the service key",
            ));
        }
        Ok((caller, exp))
    }

    /// Checks the `authorization` metadata and stores the [`Caller`] in the request.
    pub fn authenticate<T>(&self, mut req: Request<T>) -> Result<Request<T>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing bearer token: send `authorization: Bearer <jwt>`"))?;
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization metadata must be `Bearer <jwt>`"))?;
        let caller = self.verify(token.trim())?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

impl tonic::service::Interceptor for Verifier {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.authenticate(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig::hs256("a-test-secret-of-enough-length", "sharemesh")
    }

    fn request_with(token: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
        }
        req
    }

    #[test]
    fn minted_tokens_verify() {
        let token = Minter::new(&config())
            .mint("alice", Role::Host, Duration::from_secs(60))
            .expect("mint");
        let req = Verifier::new(&config()).authenticate(request_with(Some(&token))).expect("valid");
        let caller = Caller::from_request(&req).expect("caller");
        assert_eq!(
            caller,
            Caller {
                id: "alice".into(),
                role: Role::Host
            }
        );
        assert!(caller.require(&[Role::Host]).is_ok());
        assert_eq!(
            caller.require(&[Role::Customer]).expect_err("denied").code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn missing_wrong_and_expired_tokens_are_unauthenticated() {
        let verifier = Verifier::new(&config());
        let err = verifier.authenticate(request_with(None)).expect_err("missing");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);

        let other = AuthConfig::hs256("another-secret-of-enough-len", "sharemesh");
        let forged = Minter::new(&other)
            .mint("mallory", Role::Admin, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(
            verifier.authenticate(request_with(Some(&forged))).expect_err("forged").code(),
            tonic::Code::Unauthenticated
        );

        let key = EncodingKey::from_secret(config().secret.as_bytes());
        let old = Claims {
            sub: "bob".into(),
            role: Role::Customer,
            iss: "sharemesh".into(),
            iat: 1,
            exp: 2,
            aud: None,
        };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &old, &key).expect("encode");
        let err = verifier.authenticate(request_with(Some(&expired))).expect_err("expired");
        assert!(err.message().contains("Expired"), "{}", err.message());
    }

    #[test]
    fn user_tokens_cannot_be_service_tokens() {
        let verifier = Verifier::new(&config());
        // A service token minted with the service key verifies as a service.
        let svc = Minter::new(&config())
            .mint("reservation", Role::Service, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(verifier.verify(&svc).expect("service").role, Role::Service);
        // A user token claiming the service role, signed with the user secret, does not.
        let key = EncodingKey::from_secret(config().secret.as_bytes());
        let now = now_secs();
        let forged = |iss: &str, aud: Option<&str>| Claims {
            sub: "mallory".into(),
            role: Role::Service,
            iss: iss.into(),
            iat: now,
            exp: now + 60,
            aud: aud.map(str::to_owned),
        };
        for claims in [forged("sharemesh", None), forged(INTERNAL_ISSUER, Some(SERVICE_AUDIENCE))] {
            let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("encode");
            let err = verifier.verify(&token).expect_err("user key cannot make a service token");
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{}", err.message());
        }
        // The service key is not the user key.
        assert_ne!(config().service_secret, config().secret);
    }

    #[test]
    fn short_secret_is_refused() {
        let env = crate::config::MapEnv::from_pairs([(ENV_JWT_SECRET, "short")]);
        assert!(AuthConfig::from_env(&env).expect_err("short").to_string().contains(ENV_JWT_SECRET));
    }
}

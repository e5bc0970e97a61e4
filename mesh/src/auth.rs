//! Bearer-token identity: HS256 JWTs with a subject and a role, verified by every service.
//!
//! A [`Verifier`] checks the `authorization: Bearer <jwt>` metadata of each call and stores the
//! [`Caller`] in the request's extensions; handlers read it with [`Caller::from_request`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crate::config::{ConfigError, DEV_JWT_SECRET, ENV_JWT_ISSUER, ENV_JWT_SECRET, Env, EnvExt};

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

/// Secret and issuer of tokens.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 secret.
    pub secret: String,
    /// Expected issuer.
    pub issuer: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &"<redacted>")
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl AuthConfig {
    /// Reads [`ENV_JWT_SECRET`] (default: a development secret) and [`ENV_JWT_ISSUER`].
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let secret = env.string_or(ENV_JWT_SECRET, DEV_JWT_SECRET);
        if secret.len() < 16 {
            return Err(ConfigError::invalid(ENV_JWT_SECRET, "<redacted>", "must be at least 16 bytes"));
        }
        Ok(Self {
            secret,
            issuer: env.string_or(ENV_JWT_ISSUER, "sharemesh"),
        })
    }

    /// True when the built-in development secret is in use.
    pub fn is_dev_secret(&self) -> bool {
        self.secret == DEV_JWT_SECRET
    }
}

/// Mints tokens (the `sharemesh token` command and service-to-service calls).
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
    issuer: String,
}

impl Minter {
    /// A minter for `config`.
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            key: EncodingKey::from_secret(config.secret.as_bytes()),
            issuer: config.issuer.clone(),
        }
    }

    /// A signed token for `sub` with `role`, valid for `ttl`.
    pub fn mint(&self, sub: &str, role: Role, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let now = now_secs();
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            iss: self.issuer.clone(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies bearer tokens; used as a tonic interceptor on every business service.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// A verifier for `config`.
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.leeway = 5;
        Self {
            key: DecodingKey::from_secret(config.secret.as_bytes()),
            validation,
        }
    }

    /// The caller a token names, or UNAUTHENTICATED saying why not.
    pub fn verify(&self, token: &str) -> Result<Caller, Status> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| Status::unauthenticated(format!("invalid bearer token: {e}")))?;
        if data.claims.sub.is_empty() {
            return Err(Status::unauthenticated("invalid bearer token: empty subject"));
        }
        Ok(Caller {
            id: data.claims.sub,
            role: data.claims.role,
        })
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
        AuthConfig {
            secret: "a-test-secret-of-enough-length".into(),
            issuer: "sharemesh".into(),
        }
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

        let other = AuthConfig {
            secret: "another-secret-of-enough-len".into(),
            issuer: "sharemesh".into(),
        };
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
        };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &old, &key).expect("encode");
        let err = verifier.authenticate(request_with(Some(&expired))).expect_err("expired");
        assert!(err.message().contains("Expired"), "{}", err.message());
    }

    #[test]
    fn short_secret_is_refused() {
        let env = crate::config::MapEnv::from_pairs([(ENV_JWT_SECRET, "short")]);
        assert!(AuthConfig::from_env(&env).expect_err("short").to_string().contains(ENV_JWT_SECRET));
    }
}

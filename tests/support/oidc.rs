//! Tokens of a test identity provider: RS256 with the fixture key `rsa-1` (published in
//! `mesh/tests/fixtures/oidc/jwks-1.json`), shaped like Keycloak's (`realm_access.roles`).

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sharemesh_mesh::auth::Role;

/// The provider's issuer.
pub const ISSUER: &str = "https://sso.sharemesh.test/realms/sharemesh";
/// The audience its tokens are for.
pub const AUDIENCE: &str = "sharemesh-web";

/// A fixture file of the provider's keys.
pub fn fixture_path(name: &str) -> String {
    format!("{}/../mesh/tests/fixtures/oidc/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An RS256 token for `sub` whose realm roles map to `role` (`sharemesh-<role>`).
pub fn token(sub: &str, role: Role) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": now,
        "exp": now + Duration::from_secs(3600).as_secs() as i64,
        "realm_access": {"roles": [format!("sharemesh-{role}"), "offline_access"]},
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let key = std::fs::read(fixture_path("rsa-1.der")).expect("fixture key");
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_der(&key)).expect("sign")
}

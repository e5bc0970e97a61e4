//! User tokens from an identity provider: a local JWKS endpoint (plain HTTP, served by this
//! test) with two RSA keys and one EC key, rotated while the verifier runs.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sharemesh_mesh::auth::oidc::OidcConfig;
use sharemesh_mesh::auth::{AuthConfig, Minter, Role, Verifier};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/oidc");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

fn der(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}.der")).unwrap()
}

/// A JWKS (and discovery document) server whose key set the test swaps.
struct Provider {
    issuer: String,
    jwks: Arc<RwLock<String>>,
}

impl Provider {
    async fn start(jwks_file: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/realms/sharemesh", listener.local_addr().unwrap());
        let jwks = Arc::new(RwLock::new(fixture(jwks_file)));
        let (keys, iss) = (jwks.clone(), issuer.clone());
        let app = axum::Router::new()
            .route(
                "/realms/sharemesh/protocol/openid-connect/certs",
                axum::routing::get(move || {
                    let keys = keys.clone();
                    async move { keys.read().unwrap().clone() }
                }),
            )
            .route(
                "/realms/sharemesh/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let iss = iss.clone();
                    async move { json!({"issuer": iss, "jwks_uri": format!("{iss}/protocol/openid-connect/certs")}).to_string() }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { issuer, jwks }
    }

    fn publish(&self, jwks_file: &str) {
        *self.jwks.write().unwrap() = fixture(jwks_file);
    }

    fn config(&self, roles_claim: &str, role_map: &str) -> AuthConfig {
        AuthConfig {
            secret: String::new(),
            issuer: self.issuer.clone(),
            service_secret: "the-service-key-of-this-test".into(),
            oidc: Some(OidcConfig {
                issuer: self.issuer.clone(),
                // From the discovery document.
                jwks_uri: None,
                audience: Some("sharemesh-web".into()),
                roles_claim: roles_claim.into(),
                role_map: role_map
                    .split(',')
                    .map(|p| {
                        let (t, o) = p.split_once('=').unwrap();
                        (t.to_owned(), o.parse().unwrap())
                    })
                    .collect(),
                subject_claim: "sub".into(),
                leeway: Duration::from_secs(5),
                refresh: Duration::from_millis(300),
                refetch: Duration::ZERO,
            }),
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token signed with fixture key `key` (`rsa-1`, `ec-1`, …) naming `kid`.
fn sign(key: &str, kid: &str, claims: serde_json::Value) -> String {
    let (alg, encoding) = if key.starts_with("ec") {
        (Algorithm::ES256, EncodingKey::from_ec_der(&der(key)))
    } else {
        (Algorithm::RS256, EncodingKey::from_rsa_der(&der(key)))
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

fn claims(p: &Provider, sub: &str, roles: serde_json::Value) -> serde_json::Value {
    json!({"iss": p.issuer, "aud": "sharemesh-web", "sub": sub, "exp": now() + 300, "iat": now(), "realm_access": {"roles": roles}})
}

/// Waits until the verifier has loaded keys.
async fn loaded(verifier: &Verifier, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while verifier.verify(token).is_err_and(|e| e.message().contains("not loaded yet")) {
        assert!(Instant::now() < deadline, "keys never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_the_providers_keys_pass_and_rotation_needs_no_restart() {
    let p = Provider::start("jwks-1.json").await;
    let verifier = Verifier::new(&p.config("realm_access.roles", "customer=customer,host=host,admin=admin"));
    let t1 = sign("rsa-1", "rsa-1", claims(&p, "alice", json!(["customer", "offline_access"])));
    loaded(&verifier, &t1).await;
    let alice = verifier.verify(&t1).expect("RS256 of key 1");
    assert_eq!((alice.id.as_str(), alice.role), ("alice", Role::Customer));
    let ec = sign("ec-1", "ec-1", claims(&p, "host-1", json!(["host"])));
    assert_eq!(verifier.verify(&ec).expect("ES256").role, Role::Host);

    // Rotation: the provider adds key 2; a token of key 2 passes at once (the unknown kid
    // triggers a refetch) and key 1's still pass.
    p.publish("jwks-rotating.json");
    let t2 = sign("rsa-2", "rsa-2", claims(&p, "bob", json!(["admin", "customer"])));
    assert_eq!(verifier.verify(&t2).expect("new key").role, Role::Admin, "the strongest role wins");
    assert!(verifier.verify(&t1).is_ok(), "old key still published");

    // Key 1 removed: its tokens fail once the keys are refreshed.
    p.publish("jwks-2.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while verifier.verify(&t1).is_ok() {
        assert!(Instant::now() < deadline, "a removed key kept verifying");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = verifier.verify(&t1).expect_err("removed key");
    assert!(err.message().contains("unknown signing key"), "{}", err.message());
    assert!(verifier.verify(&t2).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_unauthenticated_with_a_reason() {
    let p = Provider::start("jwks-1.json").await;
    let config = p.config("realm_access.roles", "customer=customer,host=host,admin=admin");
    let verifier = Verifier::new(&config);
    let good = claims(&p, "alice", json!(["customer"]));
    loaded(&verifier, &sign("rsa-1", "rsa-1", good.clone())).await;
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(b"the-service-key-of-this-test")).unwrap()
    };
    let cases = [
        (
            "wrong audience",
            sign("rsa-1", "rsa-1", with("aud", json!("another-app"))),
            "InvalidAudience",
        ),
        (
            "wrong issuer",
            sign("rsa-1", "rsa-1", with("iss", json!("https://evil.example"))),
            "InvalidIssuer",
        ),
        (
            "expired",
            sign("rsa-1", "rsa-1", with("exp", json!(now() - 600))),
            "ExpiredSignature",
        ),
        (
            "not yet valid",
            sign("rsa-1", "rsa-1", with("nbf", json!(now() + 600))),
            "ImmatureSignature",
        ),
        (
            "unknown kid after refresh",
            sign("rsa-outsider", "rsa-outsider", good.clone()),
            "unknown signing key",
        ),
        (
            "signed by a key not in the JWKS",
            sign("rsa-outsider", "rsa-1", good.clone()),
            "InvalidSignature",
        ),
        ("HS256 when a JWKS is configured", hs256, "HS256 tokens are not accepted"),
        (
            "no mapped role",
            sign("rsa-1", "rsa-1", with("realm_access", json!({"roles": ["offline_access"]}))),
            "maps to a sharemesh role",
        ),
        (
            "the service role claimed by a user",
            sign("rsa-1", "rsa-1", with("realm_access", json!({"roles": ["service"]}))),
            "maps to a sharemesh role",
        ),
        ("no subject", sign("rsa-1", "rsa-1", with("sub", json!(""))), "no sub claim"),
    ];
    for (what, token, reason) in cases {
        let err = verifier.verify(&token).expect_err(what);
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{what}");
        assert!(err.message().contains(reason), "{what}: {}", err.message());
    }
    // A token naming the internal issuer is checked as a service token: the provider's keys
    // cannot make one.
    let internal = sign("rsa-1", "rsa-1", with("iss", json!(sharemesh_mesh::auth::INTERNAL_ISSUER)));
    assert!(verifier.verify(&internal).is_err());
    // Services still call each other with the service key.
    let svc = Minter::new(&config)
        .mint("reservation", Role::Service, Duration::from_secs(60))
        .unwrap();
    assert_eq!(verifier.verify(&svc).expect("service token").role, Role::Service);
    assert!(
        Minter::new(&config).mint("alice", Role::Customer, Duration::from_secs(60)).is_err(),
        "no user tokens minted with OIDC"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_come_from_a_flat_claim_too_and_an_absent_provider_is_retried() {
    let p = Provider::start("jwks-1.json").await;
    let verifier = Verifier::new(&p.config("roles", "app-admin=admin,app-host=host,app-user=customer"));
    let flat = json!({"iss": p.issuer, "aud": "sharemesh-web", "sub": "h", "exp": now() + 300, "roles": ["app-host", "app-user"]});
    let token = sign("rsa-1", "rsa-1", flat);
    loaded(&verifier, &token).await;
    assert_eq!(verifier.verify(&token).expect("flat roles").role, Role::Host);

    // A provider that is down at start: tokens are refused with the reason, not accepted.
    let mut config = p.config("roles", "app-user=customer");
    if let Some(o) = config.oidc.as_mut() {
        o.jwks_uri = Some("http://127.0.0.1:1/certs".into());
    }
    let down = Verifier::new(&config);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = down.verify(&token).expect_err("no keys");
    assert!(
        err.message().contains("not loaded yet") || err.message().contains("unknown signing key"),
        "{}",
        err.message()
    );
}

//! The services behind the edge: one resilient channel per context (deadline, retries of GET-mapped
//! methods, circuit breaker, load shedding), addressed by `SHAREMESH_<CONTEXT>_ADDR`.

use std::collections::HashMap;
use std::sync::Arc;

use sharemesh_mesh::client::{ClientPolicy, ResilientChannel, Upstream, connect};
use sharemesh_mesh::config::{ConfigError, Env, EnvExt};

use crate::routes::RouteTable;

/// Contexts the edge forwards to, with their default addresses (the `sharemesh dev` ports).
pub const CONTEXTS: [(&str, &str); 5] = [
    ("catalog", "http://127.0.0.1:50051"),
    ("reservation", "http://127.0.0.1:50052"),
    ("payment", "http://127.0.0.1:50053"),
    ("message", "http://127.0.0.1:50054"),
    ("view", "http://127.0.0.1:50055"),
];

/// `SHAREMESH_<CONTEXT>_ADDR`.
pub fn addr_var(context: &str) -> String {
    format!("SHAREMESH_{}_ADDR", context.to_ascii_uppercase())
}

/// The configured upstream address of every context.
pub fn addresses(env: &impl Env) -> Result<HashMap<String, String>, ConfigError> {
    let mut out = HashMap::new();
    for (context, default) in CONTEXTS {
        let var = addr_var(context);
        let uri = env.string_or(&var, default);
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(ConfigError::invalid(&var, &uri, "expected http://host:port"));
        }
        out.insert(context.to_owned(), uri);
    }
    Ok(out)
}

/// Channels to every context.
#[derive(Clone)]
pub struct Upstreams(Arc<HashMap<String, ResilientChannel>>);

impl Upstreams {
    /// Lazily connected channels to `addresses`; `table`'s idempotent methods may be retried.
    pub fn new(addresses: &HashMap<String, String>, table: &RouteTable, policy: ClientPolicy) -> Result<Self, tonic::transport::Error> {
        let idempotent: Arc<[String]> = table.idempotent_methods().into();
        let mut channels = HashMap::new();
        for (context, uri) in addresses {
            let upstream = Upstream {
                name: context.clone(),
                uri: uri.clone(),
                idempotent: idempotent.clone(),
                identity: None,
            };
            channels.insert(context.clone(), connect(upstream, policy)?.0);
        }
        Ok(Self(Arc::new(channels)))
    }

    /// The channel of `context`.
    pub fn get(&self, context: &str) -> Option<ResilientChannel> {
        self.0.get(context).cloned()
    }
}

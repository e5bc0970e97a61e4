//! The services behind the edge: one resilient channel per context (deadline, retries of GET-mapped
//! methods, circuit breaker, load shedding), at the addresses [`sharemesh_mesh::topology`] reads.

use std::collections::HashMap;
use std::sync::Arc;

use sharemesh_mesh::client::{ClientPolicy, ResilientChannel, Upstream, connect};
use sharemesh_mesh::config::{ConfigError, Env};
use sharemesh_mesh::topology::Context;

use crate::routes::RouteTable;

/// The configured address of every context the edge calls ([`Context::Edge`]'s row of the
/// topology), by name.
pub fn addresses(env: &impl Env) -> Result<HashMap<String, String>, ConfigError> {
    Context::Edge
        .node()
        .calls
        .iter()
        .map(|c| Ok((c.name().to_owned(), c.address(env)?)))
        .collect()
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

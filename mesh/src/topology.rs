//! The mesh's topology, written once: every context, its port, the contexts it calls over gRPC
//! and the streams it reads.
//!
//! `sharemesh serve` and `sharemesh dev`, the edge's and the reservation's clients, the
//! end-to-end tests and the bench read [`TABLE`]. The Helm chart, its schema generator and its
//! tests read the same facts from `helm/sharemesh/files/topology.json`, which
//! `sharemesh topology` writes from this table ([`json`]); a test fails when the two differ.

use crate::config::{ConfigError, Env, EnvExt};

/// A process of the mesh: a bounded context, or the edge in front of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    /// The public door: gRPC, gRPC-Web and REST/JSON for every public RPC.
    Edge,
    /// Listings and their availability.
    Catalog,
    /// Reservations: the booking saga.
    Reservation,
    /// Payments: approvals and refunds.
    Payment,
    /// Notifications to customers and hosts.
    Message,
    /// Read models: ListingView and MyPage.
    View,
}

/// What the mesh knows about one context.
#[derive(Debug)]
pub struct Node {
    /// The context.
    pub context: Context,
    /// Its name: the `serve` argument, the proto package (`sharemesh.<name>.v1`), the
    /// `SHAREMESH_<NAME>_ADDR` variable, the chart's component.
    pub name: &'static str,
    /// What it does, in one line.
    pub about: &'static str,
    /// Its port under `sharemesh dev`, and where the others look for it by default.
    pub port: u16,
    /// Whether it keeps data: a database, an outbox and its own stream (`SHAREMESH_<NAME>`).
    pub keeps_data: bool,
    /// The contexts it calls over gRPC, each at its `SHAREMESH_<NAME>_ADDR`.
    pub calls: &'static [Context],
    /// The contexts whose streams it consumes.
    pub consumes: &'static [Context],
}

use Context::{Catalog, Edge, Message, Payment, Reservation, View};

/// The topology, in port order (`sharemesh dev` gives the edge the first port). A row's index
/// is its context's discriminant.
pub const TABLE: [Node; 6] = [
    Node {
        context: Edge,
        name: "edge",
        about: "The public door: gRPC, gRPC-Web and REST/JSON for every public RPC.",
        port: 50050,
        keeps_data: false,
        calls: &[Catalog, Reservation, Payment, Message, View],
        consumes: &[],
    },
    Node {
        context: Catalog,
        name: "catalog",
        about: "Listings and their availability.",
        port: 50051,
        keeps_data: true,
        calls: &[],
        consumes: &[Reservation],
    },
    Node {
        context: Reservation,
        name: "reservation",
        about: "Reservations: the booking saga.",
        port: 50052,
        keeps_data: true,
        calls: &[Catalog, Payment],
        consumes: &[Payment],
    },
    Node {
        context: Payment,
        name: "payment",
        about: "Payments: approvals and refunds.",
        port: 50053,
        keeps_data: true,
        calls: &[],
        consumes: &[Reservation],
    },
    Node {
        context: Message,
        name: "message",
        about: "Notifications to customers and hosts.",
        port: 50054,
        keeps_data: true,
        calls: &[],
        consumes: &[Reservation, Catalog],
    },
    Node {
        context: View,
        name: "view",
        about: "Read models: ListingView and MyPage.",
        port: 50055,
        keeps_data: true,
        calls: &[],
        consumes: &[Catalog, Reservation, Payment],
    },
];

impl Context {
    /// Every context, in port order.
    pub fn all() -> impl Iterator<Item = Context> {
        TABLE.iter().map(|node| node.context)
    }

    /// The contexts that keep data (every one but the edge), in port order.
    pub fn keeping_data() -> impl Iterator<Item = Context> {
        Self::all().filter(|c| c.node().keeps_data)
    }

    /// The context named `name` (`catalog`).
    pub fn from_name(name: &str) -> Option<Context> {
        TABLE.iter().find(|node| node.name == name).map(|node| node.context)
    }

    /// Its row of [`TABLE`].
    pub fn node(self) -> &'static Node {
        &TABLE[self as usize]
    }

    /// Its name (`catalog`).
    pub fn name(self) -> &'static str {
        self.node().name
    }

    /// Its port when `sharemesh dev` starts at `first` (the edge's port): the table's ports,
    /// shifted.
    pub fn port_from(self, first: u16) -> u16 {
        first + (self.node().port - TABLE[0].port)
    }

    /// `SHAREMESH_<NAME>_ADDR`: where the contexts that call this one find it.
    pub fn addr_var(self) -> String {
        format!("SHAREMESH_{}_ADDR", self.name().to_ascii_uppercase())
    }

    /// `http://127.0.0.1:<port>`: where it is by default (under `sharemesh dev`).
    pub fn default_uri(self) -> String {
        format!("http://127.0.0.1:{}", self.node().port)
    }

    /// Its address as configured in `env` ([`Context::addr_var`], else
    /// [`Context::default_uri`]); an address that is not `http(s)://` is an error naming the
    /// variable.
    pub fn address(self, env: &impl Env) -> Result<String, ConfigError> {
        let var = self.addr_var();
        let uri = env.string_or(&var, &self.default_uri());
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(ConfigError::invalid(&var, &uri, "expected http://host:port"));
        }
        Ok(uri)
    }

    /// The variables that tell this context where the contexts it calls are: one
    /// `SHAREMESH_<NAME>_ADDR` per [`Node::calls`], with the address `uri_of` gives.
    pub fn upstream_env(self, mut uri_of: impl FnMut(Context) -> String) -> Vec<(String, String)> {
        self.node().calls.iter().map(|c| (c.addr_var(), uri_of(*c))).collect()
    }

    /// The stream it publishes to (`SHAREMESH_CATALOG`), if it keeps data.
    pub fn stream(self) -> Option<String> {
        self.node().keeps_data.then(|| crate::events::stream_name(self.name()))
    }
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every context, each after the ones it calls (else in port order): the order to start them
/// in when each should find its upstreams serving.
pub fn start_order() -> Vec<Context> {
    start_waves().concat()
}

/// The contexts in waves: the first calls nobody, each later one calls only contexts of earlier
/// waves (in port order within a wave). Starting a wave at once, after the previous one serves,
/// is the quickest start in which every context finds its upstreams.
pub fn start_waves() -> Vec<Vec<Context>> {
    let mut waves: Vec<Vec<Context>> = Vec::new();
    let mut started: Vec<Context> = Vec::new();
    while started.len() < TABLE.len() {
        let wave: Vec<Context> = Context::all()
            .filter(|c| !started.contains(c) && c.node().calls.iter().all(|up| started.contains(up)))
            .collect();
        assert!(!wave.is_empty(), "the contexts' calls have no cycle");
        started.extend(&wave);
        waves.push(wave);
    }
    waves
}

/// The table as the JSON the Helm chart reads (`helm/sharemesh/files/topology.json`): contexts
/// that keep data first (in port order), then the edge, the order the chart lists them in.
pub fn json() -> String {
    let names = |list: &[Context]| list.iter().map(|c| c.name()).collect::<Vec<_>>();
    let (data, rest): (Vec<&Node>, Vec<&Node>) = TABLE.iter().partition(|n| n.keeps_data);
    let contexts: Vec<serde_json::Value> = data
        .into_iter()
        .chain(rest)
        .map(|n| {
            serde_json::json!({
                "name": n.name,
                "port": n.port,
                "keepsData": n.keeps_data,
                "stream": n.context.stream(),
                "addrVar": n.context.addr_var(),
                "calls": names(n.calls),
                "consumes": names(n.consumes),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "comment": "Written by `sharemesh topology` (make topology) from mesh/src/topology.rs; do not edit: a test fails when they differ.",
        "contexts": contexts,
    });
    let mut text = serde_json::to_string_pretty(&doc).expect("JSON of plain values");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_sits_at_its_contexts_index_and_ports_follow_each_other() {
        for (i, node) in TABLE.iter().enumerate() {
            assert_eq!(node.context as usize, i, "{} is out of place", node.name);
            assert_eq!(
                node.port,
                TABLE[0].port + i as u16,
                "{}: ports are consecutive in table order",
                node.name
            );
            assert_eq!(Context::from_name(node.name), Some(node.context));
        }
    }

    #[test]
    fn calls_and_streams_name_contexts_that_serve_them() {
        for node in &TABLE {
            assert!(!node.calls.contains(&node.context), "{} calls itself", node.name);
            for source in node.consumes {
                assert!(source.node().keeps_data, "{} consumes {source}, which has no stream", node.name);
            }
            assert_eq!(node.keeps_data, node.context.stream().is_some());
        }
    }

    #[test]
    fn callees_start_first() {
        let order = start_order();
        assert_eq!(order.len(), TABLE.len());
        for (i, c) in order.iter().enumerate() {
            for up in c.node().calls {
                assert!(order[..i].contains(up), "{c} starts before {up}, which it calls");
            }
        }
        assert_eq!(order.last(), Some(&Edge));
    }

    #[test]
    fn addresses_come_from_the_variable_or_the_dev_port() {
        use crate::config::MapEnv;
        assert_eq!(Catalog.addr_var(), "SHAREMESH_CATALOG_ADDR");
        assert_eq!(Payment.address(&MapEnv::default()).expect("default"), "http://127.0.0.1:50053");
        let env = MapEnv::from_pairs([("SHAREMESH_PAYMENT_ADDR", "http://payment:50051")]);
        assert_eq!(Payment.address(&env).expect("set"), "http://payment:50051");
        let bad = MapEnv::from_pairs([("SHAREMESH_VIEW_ADDR", "view:50051")]);
        assert!(
            View.address(&bad)
                .expect_err("no scheme")
                .to_string()
                .starts_with("SHAREMESH_VIEW_ADDR")
        );
        assert_eq!(
            Reservation.upstream_env(|c| c.name().to_owned()),
            [
                ("SHAREMESH_CATALOG_ADDR".to_owned(), "catalog".to_owned()),
                ("SHAREMESH_PAYMENT_ADDR".to_owned(), "payment".to_owned())
            ]
        );
        assert_eq!(View.port_from(40000), 40005);
    }

    /// The chart's copy is this table: `make topology` rewrites it.
    #[test]
    fn the_charts_copy_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/sharemesh/files/topology.json");
        let copy = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            copy == json(),
            "{} differs from mesh/src/topology.rs: run `make topology` (sharemesh topology > helm/sharemesh/files/topology.json)",
            path.display()
        );
    }
}

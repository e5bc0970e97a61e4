//! The start-up every process shares ([`Process`]: `/metrics`, the gRPC server until shutdown,
//! then the drain) and what a service that keeps data adds ([`Runtime`]: database + migrations,
//! NATS + the outbox relay, event consumers).

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream;
use sea_orm_migration::MigratorTrait;
use tokio::task::JoinSet;

use crate::config::{DataConfig, MeshConfig};
use crate::events::inbox::{EventHandler, Inbox};
use crate::events::outbox::Relay;
use crate::server::{GrpcServer, Shutdown};
use crate::storage::Db;

/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database could not be opened or migrated.
    #[error("database {url}: {source}")]
    Database {
        /// The URL, without credentials.
        url: String,
        /// The cause.
        source: sea_orm::DbErr,
    },
    /// The NATS client could not be created.
    #[error("nats: {0}")]
    Nats(#[from] async_nats::ConnectError),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// A setting could not be used.
    #[error("config: {0}")]
    Config(String),
}

/// `url` with its credentials (`user:password@`) replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

/// What every process of the mesh starts with, the edge included: its settings, the stop
/// signal, the page-token key, `/metrics` and background tasks; it binds the gRPC address and
/// serves until shutdown, then drains. The edge runs on this alone; [`Runtime`] adds a database
/// and events.
pub struct Process {
    /// Settings.
    pub config: MeshConfig,
    /// The stop signal.
    pub shutdown: Shutdown,
    tasks: JoinSet<()>,
}

impl Process {
    /// Keys page tokens and starts the metrics endpoint.
    pub async fn start(config: MeshConfig, shutdown: Shutdown) -> Result<Self, RunError> {
        crate::page::set_key(&config.auth.service_secret);
        if let Some(addr) = config.metrics_addr {
            let s = shutdown.clone();
            let local = crate::telemetry::metrics::serve(addr, async move { s.wait().await })
                .await
                .map_err(|source| RunError::Bind { addr, source })?;
            tracing::info!(%local, "metrics on /metrics");
        }
        Ok(Self {
            config,
            shutdown,
            tasks: JoinSet::new(),
        })
    }

    /// Runs a background task until shutdown, recording its metrics in the caller's
    /// [`Scope`](crate::telemetry::metrics::Scope).
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(crate::telemetry::metrics::Scope::current().run(task));
    }

    /// Binds the configured gRPC address.
    pub async fn bind(&self) -> Result<GrpcServer, RunError> {
        let addr = self.config.grpc_addr;
        Ok(GrpcServer::bind_with(addr, self.config.reuse_port)
            .await
            .map_err(|source| RunError::Bind { addr, source })?
            .shutdown_config(self.config.shutdown)
            .context(&self.config.context))
    }

    /// Serves `server` until shutdown, then waits for background tasks to stop.
    pub async fn serve(mut self, server: GrpcServer) -> Result<(), RunError> {
        let addr = server.local_addr().map_err(|source| RunError::Bind {
            addr: self.config.grpc_addr,
            source,
        })?;
        tracing::info!(context = %self.config.context, %addr, "serving gRPC");
        let result = server.run(self.shutdown.clone()).await;
        self.shutdown.trigger();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.shutdown.grace, drain).await.is_err() {
            tracing::warn!("background tasks did not stop in time");
        }
        tracing::info!(context = %self.config.context, "stopped");
        Ok(result?)
    }
}

/// A started service that keeps data: a [`Process`] with its database, NATS and the outbox
/// relay; background tasks stop with the shutdown signal.
pub struct Runtime {
    /// The service's database.
    pub db: Db,
    /// JetStream context.
    pub js: jetstream::Context,
    data: DataConfig,
    process: Process,
}

impl Runtime {
    /// Starts the [`Process`], opens and migrates the database (`M`), connects to NATS (without
    /// waiting for it) and starts the outbox relay (and the purge of published outbox rows).
    pub async fn start<M: MigratorTrait + crate::storage::Tables>(mut config: MeshConfig, shutdown: Shutdown) -> Result<Self, RunError> {
        let data = config
            .data
            .take()
            .ok_or_else(|| RunError::Config(format!("{} keeps no data: it has no database to open", config.context)))?;
        let mut process = Process::start(config, shutdown).await?;
        let db_err = |source| RunError::Database {
            url: redact(&data.database_url),
            source,
        };
        let db = Db::connect_with(&data.database_url, data.db_pool).await.map_err(db_err)?;
        db.migrate::<M>().await.map_err(db_err)?;
        let context = process.config.context.clone();
        let client = crate::events::connect(&data.nats_url, &format!("sharemesh-{context}")).await?;
        let js = jetstream::new(client);
        let relay = Relay::new(db.clone(), js.clone(), &context, data.outbox_poll, data.streams);
        process.spawn(relay.run(process.shutdown.clone()));
        if let Some(retention) = data.outbox_retention {
            process.spawn(crate::events::outbox::purge_published_every(
                db.clone(),
                retention,
                process.shutdown.clone(),
            ));
        }
        Ok(Self { db, js, data, process })
    }

    /// Consumes the stream of `source_context` with `handler` through the inbox.
    pub fn consume(&mut self, source_context: &str, handler: Arc<dyn EventHandler>) {
        let context = &self.process.config.context;
        debug_assert!(
            crate::topology::Context::from_name(context).is_none_or(|c| c.node().consumes.iter().any(|s| s.name() == source_context)),
            "{context} consumes {source_context}: add it to mesh::topology::TABLE"
        );
        let inbox =
            Inbox::new(self.db.clone(), self.js.clone(), context, source_context, handler, self.data.inbox).with_streams(self.data.streams);
        self.process.spawn(inbox.run(self.process.shutdown.clone()));
    }

    /// Runs a background task until shutdown.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.process.spawn(task);
    }

    /// Binds the configured gRPC address.
    pub async fn bind(&self) -> Result<GrpcServer, RunError> {
        self.process.bind().await
    }

    /// Serves `server` until shutdown, then waits for background tasks to stop.
    pub async fn serve(self, server: GrpcServer) -> Result<(), RunError> {
        self.process.serve(server).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_credentials() {
        assert_eq!(super::redact("postgres://u:p@h:5432/db"), "postgres://***@h:5432/db");
        assert_eq!(super::redact("sqlite://./data/x.db"), "sqlite://./data/x.db");
    }
}

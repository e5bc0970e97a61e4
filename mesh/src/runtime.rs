//! The start-up every service shares: database + migrations, NATS + the outbox relay,
//! `/metrics`, event consumers, then the gRPC server until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream;
use sea_orm_migration::MigratorTrait;
use tokio::task::JoinSet;

use crate::config::MeshConfig;
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

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

/// A started service's shared parts; background tasks stop with the shutdown signal.
pub struct Runtime {
    /// Settings.
    pub config: MeshConfig,
    /// The service's database.
    pub db: Db,
    /// JetStream context.
    pub js: jetstream::Context,
    /// The stop signal.
    pub shutdown: Shutdown,
    tasks: JoinSet<()>,
}

impl Runtime {
    /// Opens and migrates the database (`M`), connects to NATS (without waiting for it) and
    /// starts the outbox relay and the metrics endpoint.
    pub async fn start<M: MigratorTrait>(config: MeshConfig, shutdown: Shutdown) -> Result<Self, RunError> {
        let db_err = |source| RunError::Database {
            url: redact(&config.database_url),
            source,
        };
        crate::page::set_key(&config.auth.service_secret);
        let db = Db::connect_with(&config.database_url, config.db_pool).await.map_err(db_err)?;
        db.migrate::<M>().await.map_err(db_err)?;
        let client = crate::events::connect(&config.nats_url, &format!("sharemesh-{}", config.context)).await?;
        let js = jetstream::new(client);
        let mut tasks = JoinSet::new();
        tasks.spawn(Relay::new(db.clone(), js.clone(), &config.context, config.outbox_poll, config.streams).run(shutdown.clone()));
        if let Some(addr) = config.metrics_addr {
            let s = shutdown.clone();
            let local = crate::telemetry::metrics::serve(addr, async move { s.wait().await })
                .await
                .map_err(|source| RunError::Bind { addr, source })?;
            tracing::info!(%local, "metrics on /metrics");
        }
        Ok(Self {
            config,
            db,
            js,
            shutdown,
            tasks,
        })
    }

    /// Consumes the stream of `source_context` with `handler` through the inbox.
    pub fn consume(&mut self, source_context: &str, handler: Arc<dyn EventHandler>) {
        let inbox = Inbox::new(
            self.db.clone(),
            self.js.clone(),
            &self.config.context,
            source_context,
            handler,
            self.config.inbox,
        )
        .with_streams(self.config.streams);
        self.tasks.spawn(inbox.run(self.shutdown.clone()));
    }

    /// Runs a background task until shutdown.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
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

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_credentials() {
        assert_eq!(super::redact("postgres://u:p@h:5432/db"), "postgres://***@h:5432/db");
        assert_eq!(super::redact("sqlite://./data/x.db"), "sqlite://./data/x.db");
    }
}

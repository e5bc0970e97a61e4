//! Server bootstrap: one way to run a sharemesh gRPC server.
//!
//! Every server gets gRPC health (per-service status), server reflection v1 and v1alpha, gRPC-Web
//! (HTTP/1.1), a span + metrics layer, INVALID_ARGUMENT for requests that do not decode
//! ([`crate::caller_errors`]), and graceful shutdown: on SIGTERM/SIGINT health turns
//! NOT_SERVING, the drain delay passes, the listener closes, in-flight calls finish (bounded by
//! the grace period), then `run` returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;

/// Shutdown timings.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownConfig {
    /// Time between health turning NOT_SERVING and the listener closing, so load balancers
    /// stop sending new calls first.
    pub drain_delay: Duration,
    /// Upper bound for in-flight calls to finish.
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            grace: Duration::from_secs(20),
        }
    }
}

/// A process-wide stop signal that any number of tasks can wait for.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that fires only when [`Shutdown::trigger`] is called.
    pub fn new() -> Self {
        Self {
            tx: watch::channel(false).0,
        }
    }

    /// A signal that also fires on SIGTERM or SIGINT.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining");
            s.trigger();
        });
        shutdown
    }

    /// Fires the signal.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// True once fired.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once fired.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A gRPC server being assembled: a bound listener, the services, their health names.
pub struct GrpcServer {
    listener: TcpListener,
    routes: Routes,
    names: Vec<&'static str>,
    descriptors: Vec<&'static [u8]>,
    shutdown: ShutdownConfig,
    fallback: Option<axum::Router>,
    context: Option<String>,
}

impl GrpcServer {
    /// Binds `addr` (port 0 picks a free port; see [`GrpcServer::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Self::bind_with(addr, false).await
    }

    /// Binds `addr`; with `reuse_port`, another process may bind the same port (`SO_REUSEPORT`),
    /// so a new instance can start before the old one drains and exits.
    pub async fn bind_with(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Self> {
        let listener = if reuse_port {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            #[cfg(unix)]
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            socket.listen(1024)?
        } else {
            TcpListener::bind(addr).await?
        };
        Ok(Self {
            listener,
            routes: Routes::default(),
            names: Vec::new(),
            descriptors: Vec::new(),
            shutdown: ShutdownConfig::default(),
            fallback: None,
            context: None,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Adds a service; its health status follows the server's.
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower_service::Service<http::Request<tonic::body::Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(svc);
        self
    }

    /// Registers an encoded `FileDescriptorSet` for server reflection.
    pub fn reflect(mut self, descriptor_set: &'static [u8]) -> Self {
        self.descriptors.push(descriptor_set);
        self
    }

    /// Serves every request no added service claims with `router` (the edge's REST routes and
    /// gRPC pass-through). Health, reflection and gRPC-Web still apply.
    pub fn fallback(mut self, router: axum::Router) -> Self {
        self.fallback = Some(router);
        self
    }

    /// Names the context this server serves (`catalog`): its spans are exported as
    /// `sharemesh-catalog`. Unset, the name comes from the first added service's package
    /// (`sharemesh.catalog.v1`), or is `edge` for a server with a fallback router.
    pub fn context(mut self, context: &str) -> Self {
        self.context = Some(context.to_owned());
        self
    }

    fn context_name(&self) -> Option<String> {
        if let Some(c) = &self.context {
            return Some(c.clone());
        }
        let from_package = self.names.iter().find_map(|n| {
            let mut parts = n.split('.');
            (parts.next() == Some("sharemesh"))
                .then(|| parts.next())
                .flatten()
                .map(str::to_owned)
        });
        from_package.or_else(|| self.fallback.is_some().then(|| "edge".to_owned()))
    }

    /// Sets the drain timings.
    pub fn shutdown_config(mut self, config: ShutdownConfig) -> Self {
        self.shutdown = config;
        self
    }

    /// Serves until `shutdown` fires, then drains (see the module docs).
    pub async fn run(self, shutdown: Shutdown) -> Result<(), tonic::transport::Error> {
        let telemetry = match self.context_name() {
            Some(context) => crate::telemetry::metrics::GrpcServerLayer::for_context(&context),
            None => crate::telemetry::metrics::GrpcServerLayer::default(),
        };
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in &self.names {
            reporter.set_service_status(*name, ServingStatus::Serving).await;
        }
        reporter.set_service_status("", ServingStatus::Serving).await;

        let mut reflection_v1 = tonic_reflection::server::Builder::configure();
        let mut reflection_v1alpha = tonic_reflection::server::Builder::configure();
        for set in &self.descriptors {
            reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
            reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
        }
        let reflection_v1 = reflection_v1
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| tracing::error!(error = %e, "reflection v1 unavailable"))
            .ok();
        let reflection_v1alpha = reflection_v1alpha
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| tracing::error!(error = %e, "reflection v1alpha unavailable"))
            .ok();

        let mut routes = self.routes.add_service(health);
        if let Some(r) = reflection_v1 {
            routes = routes.add_service(r);
        }
        if let Some(r) = reflection_v1alpha {
            routes = routes.add_service(r);
        }

        if let Some(fallback) = self.fallback {
            routes = Routes::from(routes.into_axum_router().fallback_service(fallback));
        }

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // TCP_NODELAY on every connection: without it a response's trailers wait for the peer's
        // delayed ACK (~40 ms per call under Nagle's algorithm).
        let incoming = tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(telemetry)
            .layer(crate::grpc_web::GrpcWebLayer)
            .layer(crate::caller_errors::CallerErrorsLayer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        tokio::pin!(server);

        tokio::select! {
            res = &mut server => return res,
            _ = shutdown.wait() => {}
        }
        for name in &self.names {
            reporter.set_service_status(*name, ServingStatus::NotServing).await;
        }
        reporter.set_service_status("", ServingStatus::NotServing).await;
        tokio::select! {
            res = &mut server => return res,
            _ = tokio::time::sleep(self.shutdown.drain_delay) => {}
        }
        let _ = stop_tx.send(());
        match tokio::time::timeout(self.shutdown.grace, &mut server).await {
            Ok(res) => res,
            Err(_) => {
                tracing::warn!(grace = ?self.shutdown.grace, "in-flight calls did not finish within the grace period; stopping");
                Ok(())
            }
        }
    }
}

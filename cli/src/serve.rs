//! `sharemesh serve <context>`: one service, configured by environment variables.

use sharemesh_mesh::config::ProcessEnv;
use sharemesh_mesh::server::Shutdown;

/// The services this binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Context {
    /// The public door: gRPC, gRPC-Web and REST/JSON for every public RPC.
    Edge,
    /// Listings and their availability.
    Catalog,
    /// Payments: approvals and refunds.
    Payment,
    /// Reservations: the booking saga.
    Reservation,
    /// Notifications to customers and hosts.
    Message,
    /// Read models: ListingView and MyPage.
    View,
}

impl Context {
    /// Every context, in port order (`dev` gives the edge the first port).
    pub(crate) const ALL: [Context; 6] = [
        Context::Edge,
        Context::Catalog,
        Context::Reservation,
        Context::Payment,
        Context::Message,
        Context::View,
    ];

    /// The context's name (`catalog`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Context::Edge => "edge",
            Context::Catalog => "catalog",
            Context::Reservation => "reservation",
            Context::Payment => "payment",
            Context::Message => "message",
            Context::View => "view",
        }
    }
}

/// Runs `context` with its configuration read from `env`, until `shutdown`.
pub(crate) async fn run_with(context: Context, env: &impl sharemesh_mesh::config::Env, shutdown: Shutdown) -> Result<(), String> {
    let auth = sharemesh_mesh::auth::AuthConfig::from_env(env).map_err(|e| e.to_string())?;
    if auth.is_dev_secret() {
        tracing::warn!(
            service = context.name(),
            "SHAREMESH_JWT_SECRET is not set: using the development secret"
        );
    }
    let result = match context {
        Context::Edge => {
            let config = sharemesh_edge::EdgeConfig::from_env(env).map_err(|e| e.to_string())?;
            sharemesh_edge::run(config, shutdown).await
        }
        Context::Catalog => {
            let config = sharemesh_catalog::CatalogConfig::from_env(env).map_err(|e| e.to_string())?;
            sharemesh_catalog::run(config, shutdown).await
        }
        Context::Payment => {
            let config = sharemesh_payment::PaymentConfig::from_env(env).map_err(|e| e.to_string())?;
            sharemesh_payment::run(config, shutdown).await
        }
        Context::Reservation => {
            let config = sharemesh_reservation::ReservationConfig::from_env(env).map_err(|e| e.to_string())?;
            sharemesh_reservation::run(config, shutdown).await
        }
        Context::Message => {
            let config = sharemesh_message::MessageConfig::from_env(env).map_err(|e| e.to_string())?;
            sharemesh_message::run(config, shutdown).await
        }
        Context::View => {
            let config = sharemesh_view::ViewConfig::from_env(env).map_err(|e| e.to_string())?;
            sharemesh_view::run(config, shutdown).await
        }
    };
    result.map_err(|e| format!("{}: {e}", context.name()))
}

/// `sharemesh serve <context>`.
pub(crate) async fn run(context: Context) -> Result<(), String> {
    sharemesh_mesh::telemetry::init(&format!("sharemesh-{}", context.name()), &ProcessEnv);
    run_with(context, &ProcessEnv, Shutdown::on_signals()).await
}

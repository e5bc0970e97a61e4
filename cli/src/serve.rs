//! `sharemesh serve <context>`: one service, configured by environment variables.

use sharemesh_mesh::config::ProcessEnv;
use sharemesh_mesh::server::Shutdown;

/// The services this binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Context {
    /// Listings and their availability.
    Catalog,
}

impl Context {
    /// Every context, in start order.
    pub(crate) const ALL: [Context; 1] = [Context::Catalog];

    /// The context's name (`catalog`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Context::Catalog => "catalog",
        }
    }
}

/// Runs `context` with its configuration read from `env`, until `shutdown`.
pub(crate) async fn run_with(context: Context, env: &impl sharemesh_mesh::config::Env, shutdown: Shutdown) -> Result<(), String> {
    match context {
        Context::Catalog => {
            let config = sharemesh_catalog::CatalogConfig::from_env(env).map_err(|e| e.to_string())?;
            if config.mesh.auth.is_dev_secret() {
                tracing::warn!("SHAREMESH_JWT_SECRET is not set: using the development secret");
            }
            sharemesh_catalog::run(config, shutdown).await.map_err(|e| format!("catalog: {e}"))
        }
    }
}

/// `sharemesh serve <context>`.
pub(crate) async fn run(context: Context) -> Result<(), String> {
    sharemesh_mesh::telemetry::init(&format!("sharemesh-{}", context.name()), &ProcessEnv);
    run_with(context, &ProcessEnv, Shutdown::on_signals()).await
}

//! `sharemesh serve <context>`: one service, configured by environment variables.

use sharemesh_mesh::config::ProcessEnv;
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::topology::Context;

/// The argument of `sharemesh serve`: a context of [`sharemesh_mesh::topology::TABLE`], with its
/// one-line description as help.
pub(crate) fn context_arg() -> impl clap::builder::TypedValueParser<Value = Context> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(Context::all().map(|c| PossibleValue::new(c.name()).help(c.node().about)))
        .map(|name| Context::from_name(&name).expect("clap admits only the table's names"))
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

/// `sharemesh serve <context>`. Refuses to start on the public development secret (unset
/// `SHAREMESH_JWT_SECRET`, or set to that value) unless `SHAREMESH_INSECURE_DEV_SECRET=true`:
/// anyone can read that secret in this repository and mint any token with it, `service` and
/// `admin` included. `sharemesh dev` is not affected.
pub(crate) async fn run(context: Context) -> Result<(), String> {
    refuse_public_secret(&ProcessEnv)?;
    sharemesh_mesh::telemetry::init(&format!("sharemesh-{}", context.name()), &ProcessEnv);
    run_with(context, &ProcessEnv, Shutdown::on_signals()).await
}

fn refuse_public_secret(env: &impl sharemesh_mesh::config::Env) -> Result<(), String> {
    use sharemesh_mesh::config::{ENV_INSECURE_DEV_SECRET, ENV_JWT_SECRET, EnvExt};
    let auth = sharemesh_mesh::auth::AuthConfig::from_env(env).map_err(|e| e.to_string())?;
    let allowed: bool = env.parse_or(ENV_INSECURE_DEV_SECRET, false).map_err(|e| e.to_string())?;
    if auth.is_dev_secret() && !allowed {
        return Err(format!(
            "{ENV_JWT_SECRET} is not set (or is the public development secret): set it to a secret of at least 16 bytes \
             (e.g. `openssl rand -base64 32`); only on a development machine, {ENV_INSECURE_DEV_SECRET}=true runs on the public one"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sharemesh_mesh::config::{DEV_JWT_SECRET, ENV_INSECURE_DEV_SECRET, ENV_JWT_SECRET, MapEnv};

    #[test]
    fn serve_refuses_the_public_secret_unless_told_otherwise() {
        let err = super::refuse_public_secret(&MapEnv::default()).expect_err("unset secret");
        assert!(err.starts_with(ENV_JWT_SECRET), "{err}");
        assert!(super::refuse_public_secret(&MapEnv::from_pairs([(ENV_JWT_SECRET, DEV_JWT_SECRET)])).is_err());
        assert!(super::refuse_public_secret(&MapEnv::from_pairs([(ENV_INSECURE_DEV_SECRET, "true")])).is_ok());
        assert!(super::refuse_public_secret(&MapEnv::from_pairs([(ENV_JWT_SECRET, "a-real-secret-of-32-bytes-or-so")])).is_ok());
    }
}

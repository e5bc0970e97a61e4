//! `sharemesh token`: mint a bearer token for local use.

use std::time::Duration;

use sharemesh_mesh::auth::{AuthConfig, Minter, Role};
use sharemesh_mesh::config::{ProcessEnv, parse_duration};

/// Arguments of `sharemesh token`.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// Subject: the user id (alice, bob, ...).
    #[arg(long)]
    sub: String,
    /// Role: customer, host or admin (or service: a token of the service key, for operators
    /// calling an internal RPC by hand).
    #[arg(long, default_value = "customer")]
    role: String,
    /// Lifetime, such as 30m, 24h.
    #[arg(long, default_value = "24h")]
    ttl: String,
}

/// Prints a signed token to stdout.
pub(crate) fn run(args: TokenArgs) -> Result<(), String> {
    if args.sub.trim().is_empty() {
        return Err("--sub must not be empty".into());
    }
    let role: Role = args.role.parse()?;
    let ttl: Duration = parse_duration(&args.ttl).map_err(|e| format!("--ttl: {e}"))?;
    let config = AuthConfig::from_env(&ProcessEnv).map_err(|e| e.to_string())?;
    let token = Minter::new(&config).mint(&args.sub, role, ttl).map_err(|e| e.to_string())?;
    #[allow(clippy::print_stdout)]
    {
        println!("{token}");
    }
    Ok(())
}

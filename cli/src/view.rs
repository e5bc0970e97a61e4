//! `sharemesh view ...`: operating the read models.

use sharemesh_mesh::config::{ENV_DATABASE_URL, ProcessEnv};

/// `sharemesh view` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ViewCommand {
    /// Replay the catalog, reservation and payment streams from the start into a fresh database,
    /// then stop. Point the view service's DATABASE_URL at it afterwards.
    Rebuild {
        /// The fresh database to fill (default: DATABASE_URL, else `<data dir>/view-rebuilt.db`).
        #[arg(long)]
        database_url: Option<String>,
    },
}

/// Runs a `sharemesh view` subcommand.
pub(crate) async fn run(command: ViewCommand) -> Result<(), String> {
    sharemesh_mesh::telemetry::init("sharemesh-view-rebuild", &ProcessEnv);
    match command {
        ViewCommand::Rebuild { database_url } => {
            let config = sharemesh_view::ViewConfig::from_env(&ProcessEnv).map_err(|e| e.to_string())?;
            let target = database_url
                .or_else(|| std::env::var(ENV_DATABASE_URL).ok().filter(|u| !u.is_empty()))
                .unwrap_or_else(|| format!("sqlite://{}/view-rebuilt.db?mode=rwc", config.mesh.data_dir.display()));
            let data = config.mesh.data.as_ref().ok_or("view keeps data, but its configuration has none")?;
            let report = sharemesh_view::rebuild::rebuild(&target, &data.nats_url).await?;
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "rebuilt {target}: {} events replayed ({} skipped), {} listing views, {} reservation views",
                    report.events, report.skipped, report.listing_views, report.reservation_views
                );
            }
            Ok(())
        }
    }
}

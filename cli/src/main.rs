//! `sharemesh`: the one binary of the mesh.
//!
//! - `sharemesh serve <context>` runs one service, configured by environment variables;
//! - `sharemesh dev` runs every service on its own port, with SQLite files and a nats-server
//!   under `./data`, and prints the ports;
//! - `sharemesh topology` prints the contexts, ports, calls and streams as the Helm chart reads
//!   them;
//! - `sharemesh view rebuild` replays the event streams into a fresh read-model database;
//! - `sharemesh token --sub alice --role host` mints a bearer token.
#![forbid(unsafe_code)]

mod dev;
mod serve;
mod token;
mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the services allocate and free small buffers on every
/// request across threads, where glibc's arenas showed up as ~10% of the CPU in profiles
/// (`malloc`, `_int_free`, `malloc_consolidate`; see bench/README.md "Where the time goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The sharemesh reservation marketplace.
#[derive(Parser)]
#[command(name = "sharemesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one service of the mesh.
    Serve {
        /// The bounded context to serve.
        #[arg(value_parser = serve::context_arg())]
        context: sharemesh_mesh::topology::Context,
    },
    /// Run every service locally, each on its own port, with a local nats-server.
    Dev(dev::DevArgs),
    /// Mint a bearer token (HS256, signed with SHAREMESH_JWT_SECRET).
    Token(token::TokenArgs),
    /// Print the mesh's topology (contexts, ports, calls, streams) as the JSON the Helm chart
    /// reads (helm/sharemesh/files/topology.json).
    Topology,
    /// Operate the view read models.
    View {
        #[command(subcommand)]
        command: view::ViewCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sharemesh: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { context } => serve::run(context).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Token(args) => token::run(args),
            Command::Topology => {
                #[allow(clippy::print_stdout)]
                {
                    print!("{}", sharemesh_mesh::topology::json());
                }
                Ok(())
            }
            Command::View { command } => view::run(command).await,
        }
    });
    sharemesh_mesh::telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sharemesh: {e}");
            ExitCode::FAILURE
        }
    }
}

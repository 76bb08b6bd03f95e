//! The `tally` binary: parse the command line and hand over to [`tally::cli`].

use clap::Parser;

/// mimalloc rather than the system allocator: server rendering allocates and frees many small values per page.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `.env` is for local runs; real environment variables win over it.
    let _ = dotenvy::dotenv();
    tally::ops::logs::init();

    let cli = tally::cli::Cli::parse();
    match tally::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! The `tally` command line: serve (the default), migrate, and account administration.

use clap::{Parser, Subcommand};

use crate::config::{parse_usage_limit, Config, UsageLimit};

/// Usage-based billing on Stripe Billing Meters.
#[derive(Parser, Debug)]
#[command(name = "tally", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; without a command, `serve`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the web app (migrating the database first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
}

/// `tally user …`
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create an account.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        /// Usage limit per billing period (`none` for unlimited); defaults to TALLY_DEFAULT_USAGE_LIMIT.
        #[arg(long, value_parser = parse_usage_limit)]
        limit: Option<UsageLimit>,
        /// Succeed without changes when the account already exists (for seeding scripts).
        #[arg(long)]
        if_missing: bool,
    },
}

/// Runs the command line; the process exit status is derived from the result.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => crate::server::serve(cli.config).await,
        Command::Migrate => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::migrate(&pool).await?;
            println!("database is up to date");
            Ok(())
        }
        Command::User(UserCommand::Create {
            email,
            password,
            limit,
            if_missing,
        }) => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::migrate(&pool).await?;
            if if_missing {
                if let Some(id) = crate::auth::users::find_id_by_email(&pool, &email).await? {
                    println!(
                        "account {} already exists ({id})",
                        email.trim().to_lowercase()
                    );
                    return Ok(());
                }
            }
            let limit = limit.unwrap_or(cli.config.default_usage_limit).0;
            let id = crate::auth::users::register(&pool, &email, &password, limit).await?;
            let limit = limit.map_or("no limit".to_owned(), |l| format!("limit {l} per period"));
            println!(
                "created account {} ({id}), {limit}",
                email.trim().to_lowercase()
            );
            Ok(())
        }
    }
}

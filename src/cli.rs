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
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(ApiKeyCommand),
    /// Stripe: sync state and customer links.
    #[command(subcommand)]
    Stripe(StripeCommand),
}

/// `tally stripe …`
#[derive(Subcommand, Debug)]
pub enum StripeCommand {
    /// Undelivered meter events by state, webhook events no user matched, meter error reports.
    Status,
    /// Link an account to an existing Stripe customer.
    Link {
        #[arg(long)]
        email: String,
        #[arg(long)]
        customer: String,
    },
}

/// `tally apikey …`
#[derive(Subcommand, Debug)]
pub enum ApiKeyCommand {
    /// Create a key for an account and print it (it is shown only this once).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// List an account's keys.
    List {
        #[arg(long)]
        email: String,
    },
    /// Revoke a key, by the prefix that `list` shows (e.g. tly_live_Ab12) or by id; it stops working at once.
    Revoke { key: String },
}

/// `tally user …`
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Change an account's usage limit (and the share of it at which warnings start).
    SetLimit {
        #[arg(long)]
        email: String,
        /// Tokens per billing period, or `none`.
        #[arg(long, value_parser = parse_usage_limit)]
        limit: UsageLimit,
        /// Percent of the limit from which record answers carry `warning: true` (1–100).
        #[arg(long, value_parser = clap::value_parser!(i16).range(1..=100))]
        warning_percent: Option<i16>,
    },
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
        Command::User(UserCommand::SetLimit { email, limit, warning_percent }) => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::migrate(&pool).await?;
            crate::auth::users::set_limit(&pool, &email, limit.0, warning_percent).await?;
            let shown = limit.0.map_or("no limit".to_owned(), |l| format!("limit {l} per period"));
            println!("{}: {shown}", email.trim().to_lowercase());
            Ok(())
        }
        Command::User(UserCommand::Create { email, password, limit, if_missing }) => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::migrate(&pool).await?;
            if if_missing {
                if let Some(id) = crate::auth::users::find_id_by_email(&pool, &email).await? {
                    println!("account {} already exists ({id})", email.trim().to_lowercase());
                    return Ok(());
                }
            }
            let limit = limit.unwrap_or(cli.config.default_usage_limit).0;
            let id = crate::auth::users::register(&pool, &email, &password, limit).await?;
            let limit = limit.map_or("no limit".to_owned(), |l| format!("limit {l} per period"));
            println!("created account {} ({id}), {limit}", email.trim().to_lowercase());
            Ok(())
        }
        Command::Stripe(command) => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::migrate(&pool).await?;
            stripe_command(&pool, command).await
        }
        Command::Apikey(command) => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::migrate(&pool).await?;
            api_key_command(&pool, command).await
        }
    }
}

async fn stripe_command(pool: &sqlx::PgPool, command: StripeCommand) -> anyhow::Result<()> {
    use crate::billing::status;

    match command {
        StripeCommand::Status => {
            let state = status::read(pool).await?;
            println!("meter events (outbox):");
            if state.outbox.is_empty() {
                println!("  none recorded yet");
            }
            for (outbox_status, count) in &state.outbox {
                let why = match outbox_status.as_str() {
                    "awaiting_customer" => "  (the user has no Stripe customer yet: `tally stripe link`)",
                    "pending" => "  (not yet sent to Stripe: delivery is not built yet, see issue #4)",
                    _ => "",
                };
                println!("  {outbox_status:<18} {count:>10}{why}");
            }
            println!("webhook events no user matched: {}", state.unmatched_events);
            for (id, kind, customer, received) in &state.latest_unmatched {
                let customer = customer.as_deref().unwrap_or("-");
                println!("  {id}  {kind}  customer {customer}  received {}", received.format("%Y-%m-%d %H:%M UTC"));
            }
            println!("meter error reports from Stripe: {}", state.meter_error_reports);
        }
        StripeCommand::Link { email, customer } => {
            status::link_customer(pool, &email, &customer).await?;
            println!("linked {} to {customer}", email.trim().to_lowercase());
        }
    }
    Ok(())
}

async fn api_key_command(pool: &sqlx::PgPool, command: ApiKeyCommand) -> anyhow::Result<()> {
    use crate::auth::{api_key, users};

    let user_of = |email: String| async move {
        users::find_id_by_email(pool, &email).await?.ok_or_else(|| anyhow::anyhow!("no account for {email}"))
    };
    match command {
        ApiKeyCommand::Create { email, name } => {
            let (info, secret) = api_key::create(pool, user_of(email).await?, &name).await?;
            eprintln!("created API key {:?} ({}); store it now, it is not shown again:", info.name, info.id);
            println!("{secret}");
        }
        ApiKeyCommand::List { email } => {
            for key in api_key::list(pool, user_of(email).await?).await? {
                let state = match (key.revoked_at, key.last_used_at) {
                    (Some(at), _) => format!("revoked {}", at.format("%Y-%m-%d %H:%M UTC")),
                    (None, Some(at)) => format!("last used {}", at.format("%Y-%m-%d %H:%M UTC")),
                    (None, None) => "never used".to_owned(),
                };
                println!(
                    "{}…  {}  {:?}  created {}  {state}",
                    key.display_prefix,
                    key.id,
                    key.name,
                    key.created_at.format("%Y-%m-%d")
                );
            }
        }
        ApiKeyCommand::Revoke { key } => {
            let id = match key.parse::<uuid::Uuid>() {
                Ok(id) => api_key::revoke_by_id(pool, id).await?,
                Err(_) => api_key::revoke_by_prefix(pool, key.trim_end_matches('…')).await?,
            };
            println!("revoked API key {id}");
        }
    }
    Ok(())
}

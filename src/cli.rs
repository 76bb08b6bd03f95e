//! The `tally` command line: serve (the default), migrate, and account administration.

use clap::{Parser, Subcommand};

use crate::auth::users::LimitChoice;
use crate::config::{parse_usage_limit, Config, UsageLimit};

/// `--limit` of `user set-limit`: a number, `none`, or `default`.
fn parse_limit_choice(raw: &str) -> Result<LimitChoice, crate::error::AppError> {
    if raw.trim().eq_ignore_ascii_case("default") {
        return Ok(LimitChoice::Default);
    }
    parse_usage_limit(raw).map(|limit| LimitChoice::Own(limit.0))
}

/// Usage-based billing on Stripe Billing Meters.
#[derive(Parser, Debug)]
#[command(name = "tally", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    /// Print what read commands find as JSON (`user show`, `apikey list`, `stripe status`, `stripe reconcile`).
    #[arg(long, global = true)]
    pub json: bool,
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
    /// Stripe: sync state, customer links, setup, reconciliation.
    #[command(subcommand)]
    Stripe(StripeCommand),
    /// Deliver recorded usage to Stripe's meter, and alert webhooks (the workers `serve` runs; any number may run).
    Worker {
        /// Deliver what is due, wait for retries, and exit when nothing is pending (or after --timeout-seconds).
        #[arg(long)]
        drain: bool,
        #[arg(long, default_value_t = 600)]
        timeout_seconds: u64,
    },
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
    /// Create (or find and check) a Stripe meter and metered price for each meter of the catalog (`meters.toml`),
    /// and keep each price for the meters and Checkout. Safe to run again.
    Setup {
        /// Name of the product the prices belong to.
        #[arg(long, default_value = "Tally usage")]
        product_name: String,
    },
    /// Compare the usage delivered per customer and billing period with Stripe's meter, and each metered invoice
    /// line with the usage delivered in its period; print both tables and exit 1 on any difference.
    Reconcile {
        /// Periods ending after this date (YYYY-MM-DD, UTC) or instant (RFC 3339); default 35 days ago.
        #[arg(long)]
        since: Option<String>,
    },
    /// Send failed meter events again (after fixing what Stripe refused them for).
    Retry,
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
    /// Show an account: id, limit, Stripe customer, usage events by delivery state.
    Show {
        #[arg(long)]
        email: String,
    },
    /// Change an account's usage limit on one meter (and the share of its limits at which warnings start).
    SetLimit {
        #[arg(long)]
        email: String,
        /// Units per billing period, `none` for unlimited, or `default` for the meter's default (`meters.toml`).
        #[arg(long, value_parser = parse_limit_choice)]
        limit: LimitChoice,
        /// The meter's event type; default: the primary meter (the first in `meters.toml`).
        #[arg(long)]
        event_type: Option<String>,
        /// Percent of the limit from which record answers carry `warning: true` (1–100).
        #[arg(long, value_parser = clap::value_parser!(i16).range(1..=100))]
        warning_percent: Option<i16>,
    },
    /// Create an account. The password is never an argument (argv is visible to every user of the machine and
    /// kept in shell histories): it is read from `TALLY_USER_PASSWORD`, from stdin with `--password-stdin`, or
    /// asked for at the terminal.
    Create {
        #[arg(long)]
        email: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// A limit of its own on the primary meter (`none` for unlimited); default: the meter's (`meters.toml`).
        #[arg(long, value_parser = parse_usage_limit)]
        limit: Option<UsageLimit>,
        /// Succeed without changes when the account already exists (for seeding scripts).
        #[arg(long)]
        if_missing: bool,
    },
}

/// Runs the command line; the process exit status is derived from the result.
pub async fn run(mut cli: Cli) -> anyhow::Result<()> {
    cli.config.load_meters()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => crate::server::serve(cli.config).await,
        Command::Migrate => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::migrate(&pool).await?;
            println!("database is up to date");
            Ok(())
        }
        Command::User(UserCommand::Show { email }) => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::require_schema(&pool).await?;
            let id = crate::auth::users::find_id_by_email(&pool, &email)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no account for {email}"))?;
            let customer =
                sqlx::query_scalar!("SELECT stripe_customer_id FROM users WHERE id = $1", id).fetch_one(&pool).await?;
            let limits = crate::auth::users::limits(&pool, &cli.config.meters, id).await?;
            // All time, within what PostgreSQL's timestamptz holds (chrono's MIN/MAX do not fit).
            let all_time = crate::usage::period::Period {
                kind: crate::usage::period::PeriodKind::Calendar,
                span: crate::usage::period::Span {
                    start: chrono::DateTime::UNIX_EPOCH,
                    end: chrono::Utc::now() + chrono::Duration::days(36_500),
                },
            };
            let sync = crate::billing::status::for_user(&pool, id, all_time).await?;
            if cli.json {
                let limits: Vec<_> = limits
                    .iter()
                    .map(|(event_type, limit, own)| serde_json::json!({"eventType": event_type, "limit": limit, "own": own}))
                    .collect();
                let account = serde_json::json!({
                    "id": id, "email": email.trim().to_lowercase(), "limits": limits, "stripeCustomer": customer,
                    "usageEvents": {"delivered": sync.delivered, "pending": sync.pending,
                                    "awaitingCustomer": sync.awaiting_customer, "failed": sync.failed, "expired": sync.expired},
                });
                println!("{account}");
                return Ok(());
            }
            println!("account {} ({id})", email.trim().to_lowercase());
            for (event_type, limit, own) in limits {
                let limit = limit.map_or("none".to_owned(), |l| l.to_string());
                let whose = if own { "its own" } else { "the meter's default" };
                println!("limit of {event_type}: {limit} ({whose})");
            }
            println!("stripe customer: {}", customer.as_deref().unwrap_or("none"));
            println!(
                "usage events: {} delivered, {} pending, {} awaiting a customer, {} failed, {} expired",
                sync.delivered, sync.pending, sync.awaiting_customer, sync.failed, sync.expired
            );
            Ok(())
        }
        Command::User(UserCommand::SetLimit { email, limit, event_type, warning_percent }) => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::require_schema(&pool).await?;
            let catalog = &cli.config.meters;
            let event_type = event_type.unwrap_or_else(|| catalog.primary().event_type.clone());
            if !catalog.contains(&event_type) {
                anyhow::bail!("no meter {event_type:?} in the catalog (metered: {})", catalog.event_types().join(", "));
            }
            crate::auth::users::set_limit(&pool, &email, &event_type, limit, warning_percent).await?;
            let shown = match limit {
                LimitChoice::Own(Some(l)) => format!("limit {l} per period"),
                LimitChoice::Own(None) => "no limit".to_owned(),
                LimitChoice::Default => {
                    let default = catalog.default_limit(&event_type);
                    format!("the meter's default ({})", default.map_or("no limit".to_owned(), |l| format!("{l}")))
                }
            };
            println!("{} on {event_type}: {shown}", email.trim().to_lowercase());
            Ok(())
        }
        Command::User(UserCommand::Create { email, password_stdin, limit, if_missing }) => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::require_schema(&pool).await?;
            if if_missing {
                if let Some(id) = crate::auth::users::find_id_by_email(&pool, &email).await? {
                    println!("account {} already exists ({id})", email.trim().to_lowercase());
                    return Ok(());
                }
            }
            let password = new_password(password_stdin)?;
            let primary = cli.config.meters.primary();
            let own: Vec<(String, Option<i64>)> =
                limit.map(|limit| (primary.event_type.clone(), limit.0)).into_iter().collect();
            let id = crate::auth::users::register(&pool, &email, &password, &own).await?;
            let limit = limit.map_or(primary.limit, |limit| limit.0);
            let limit = limit.map_or("no limit".to_owned(), |l| format!("limit {l} per period"));
            println!("created account {} ({id}), {limit} on {}", email.trim().to_lowercase(), primary.event_type);
            Ok(())
        }
        Command::Stripe(command) => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::require_schema(&pool).await?;
            stripe_command(&pool, &cli.config, command, cli.json).await
        }
        Command::Worker { drain, timeout_seconds } => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::migrate(&pool).await?;
            let worker = crate::billing::delivery::DeliveryWorker::from_config(pool.clone(), &cli.config)
                .ok_or_else(|| anyhow::anyhow!("STRIPE_SECRET_KEY is not set: there is nowhere to deliver to"))?;
            if !drain {
                // Alert webhooks too: several senders are safe (rows are claimed under a lease).
                let alerts = crate::usage::alert_webhooks::AlertWebhookWorker::new(
                    pool,
                    cli.config.alert_webhook_allow_private,
                    std::time::Duration::from_millis(cli.config.delivery.retry_base_ms),
                    std::time::Duration::from_millis(cli.config.delivery.poll_ms),
                );
                tokio::join!(worker.run(), alerts.run());
                return Ok(());
            }
            let (progress, pending) = worker.drain(std::time::Duration::from_secs(timeout_seconds)).await?;
            println!(
                "{} events batched into {} meter events; {} calls: {} delivered, {} retried, {} failed; {} expired; \
                 {} customers created; {pending} still pending",
                progress.batched,
                progress.deliveries,
                progress.calls,
                progress.delivered,
                progress.retried,
                progress.failed,
                progress.expired,
                progress.customers_created
            );
            if pending > 0 {
                anyhow::bail!("{pending} events are still pending after {timeout_seconds} s");
            }
            Ok(())
        }
        Command::Apikey(command) => {
            let pool = crate::db::connect(&cli.config).await?;
            crate::db::require_schema(&pool).await?;
            api_key_command(&pool, command, cli.json).await
        }
    }
}

async fn stripe_command(
    pool: &sqlx::PgPool,
    config: &Config,
    command: StripeCommand,
    json: bool,
) -> anyhow::Result<()> {
    use crate::billing::{setup, status};

    let stripe = || {
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap_or_default();
        crate::billing::stripe::StripeClient::from_config(http, config)
            .ok_or_else(|| anyhow::anyhow!("STRIPE_SECRET_KEY is not set"))
    };
    match command {
        StripeCommand::Status => {
            let state = status::read(pool).await?;
            if json {
                println!("{}", serde_json::to_string(&state)?);
                return Ok(());
            }
            println!("meter events (outbox):");
            if state.outbox.is_empty() {
                println!("  none recorded yet");
            }
            for (outbox_status, count) in &state.outbox {
                let why = match outbox_status.as_str() {
                    "awaiting_customer" => "  (the account has no Stripe customer yet: `tally stripe link`)".to_owned(),
                    "pending" if config.stripe_secret_key.is_none() => {
                        "  (not sent: STRIPE_SECRET_KEY is not set, so there is no Stripe to send to)".to_owned()
                    }
                    "pending" => "  (queued for the delivery worker; retries are listed below)".to_owned(),
                    "failed" => {
                        "  (refused by Stripe; reasons below; `tally stripe retry` sends them again)".to_owned()
                    }
                    "expired" => "  (older than the 35 days Stripe accepts; not sent)".to_owned(),
                    "uncertain" => {
                        "  (outcome unknown; settled from Stripe's meter summaries before any re-send)".to_owned()
                    }
                    _ => String::new(),
                };
                println!("  {outbox_status:<18} {count:>10}{why}");
            }
            for (reason, count) in &state.failures {
                println!("  failed: {count} events: {reason}");
            }
            for (identifier, attempts, error, next) in &state.retrying {
                println!(
                    "  retrying {identifier} after {attempts} attempts (next {}): {error}",
                    next.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            for (identifier, quantity, why, next) in &state.uncertain {
                let why = why.as_deref().unwrap_or("waiting for Stripe's meter summaries");
                println!(
                    "  uncertain {identifier} ({quantity} units; next look {}): {why}",
                    next.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            if !state.uncertain.is_empty() {
                println!(
                    "  what to do: nothing while Stripe answers; if one stays, compare its minute with the meter in \
                     Stripe's dashboard"
                );
            }
            for (customer, period_start, units, deliveries) in &state.late {
                println!(
                    "  late: {units} units of {customer}'s period from {} missed its invoice; billed on the next \
                     invoice ({deliveries} meter events)",
                    period_start.format("%Y-%m-%d %H:%M UTC")
                );
            }
            for line in &state.invoice_differences {
                println!(
                    "INVOICE DIFFERS: {} ({}) billed {} units for {}'s period {} – {}, Tally delivered {}: {}",
                    line.invoice,
                    line.invoice_status.as_deref().unwrap_or("-"),
                    line.invoiced,
                    line.customer,
                    line.period_start.format("%Y-%m-%d %H:%M"),
                    line.period_end.format("%Y-%m-%d %H:%M"),
                    line.delivered,
                    line.reason().unwrap_or_default()
                );
            }
            if !state.invoice_differences.is_empty() {
                println!("  what to do: `tally stripe reconcile` prints the whole comparison");
            }
            for (subscription, other, customer) in &state.duplicate_subscriptions {
                println!(
                    "FLAGGED: {customer} has two live subscriptions ({subscription} and {other}): every unit is billed \
                     by both. Cancel one in Stripe's dashboard, and refund what it billed."
                );
            }
            for (email, attempts, error, next) in &state.customer_failures {
                let next = next.map(|n| n.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default();
                let error = error.as_deref().unwrap_or("-");
                println!("  no Stripe customer yet for {email} after {attempts} attempts (next {next}): {error}");
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
        StripeCommand::Retry => {
            let spinner = progress_spinner("queueing failed meter events again");
            let (requeued, to_settle) =
                crate::billing::uncertain::retry_failed(pool, crate::clock::Clock::system().now()).await?;
            spinner.finish_and_clear();
            println!("{requeued} failed meter events queued for delivery again, under new identifiers");
            if to_settle > 0 {
                println!(
                    "{to_settle} had an attempt whose outcome is unknown: the worker settles them from Stripe's meter \
                     summaries first, and sends again only what Stripe did not count"
                );
            }
        }
        StripeCommand::Setup { product_name } => {
            let stripe = stripe()?;
            let verb = |created: bool| if created { "created" } else { "found" };
            let bar = progress_bar(config.meters.meters().len(), "meters set up");
            for meter in config.meters.meters() {
                let plan = setup::SetupPlan {
                    event_name: meter.event_type.clone(),
                    meter_display_name: meter.label.en.clone(),
                    product_name: product_name.clone(),
                    price: meter.price.clone(),
                    lookup_key: meter.lookup_key(),
                };
                let done = setup::setup(&stripe, &plan).await?;
                crate::billing::prices::save(pool, &meter.event_type, &done.price).await?;
                bar.inc(1);
                bar.suspend(|| {
                    println!(
                        "{}: meter {} ({}), price {} ({})",
                        meter.event_type,
                        done.meter_id,
                        verb(done.meter_created),
                        done.price.id,
                        verb(done.price_created)
                    )
                });
            }
            bar.finish_and_clear();
            println!("the meters bill with these prices; Checkout subscribes new customers to all of them");
        }
        StripeCommand::Reconcile { since } => {
            let since = match since {
                Some(raw) => parse_since(&raw)?,
                None => chrono::Utc::now() - chrono::Duration::days(35),
            };
            let bar = progress_bar(0, "billing periods compared with Stripe's meter");
            let lines = crate::billing::reconcile::meter(pool, &stripe()?, since, &|step| match step {
                crate::billing::reconcile::Progress::Total(total) => bar.set_length(total as u64),
                crate::billing::reconcile::Progress::Done => bar.inc(1),
            })
            .await?;
            bar.finish_and_clear();
            // Each priced meter's invoice lines against its event type's deliveries; before setup saved any price,
            // every metered line against the primary meter.
            let priced = crate::billing::prices::by_event_type(pool).await?;
            let meters: Vec<(&str, Option<&str>)> = if priced.is_empty() {
                vec![(config.meters.primary().event_type.as_str(), None)]
            } else {
                config
                    .meters
                    .meters()
                    .iter()
                    .filter_map(|m| Some((m.event_type.as_str(), Some(priced.get(&m.event_type)?.as_str()))))
                    .collect()
            };
            let mut checks = Vec::new();
            for (event_name, price) in meters {
                let filter = crate::billing::reconcile::InvoiceFilter {
                    since,
                    event_name: Some(event_name),
                    price,
                    invoice: None,
                };
                checks.extend(crate::billing::reconcile::invoices(pool, &filter).await?);
            }
            let differing = lines.iter().filter(|line| !line.matches()).count();
            let differing_lines = checks.iter().filter(|check| !check.matches()).count();
            if json {
                let report = serde_json::json!({
                    "periods": lines, "invoiceLines": checks,
                    "periodsDiffering": differing, "invoiceLinesDiffering": differing_lines,
                });
                println!("{report}");
            } else {
                print_reconciliation(&lines, &checks);
            }
            if differing + differing_lines > 0 {
                anyhow::bail!(
                    "{differing} periods and {differing_lines} invoice lines differ (Stripe aggregates asynchronously: \
                     recent deliveries may take a few minutes to show on the meter)"
                );
            }
        }
    }
    Ok(())
}

/// The two tables of `tally stripe reconcile`, with the reason under each differing row.
fn print_reconciliation(
    lines: &[crate::billing::reconcile::Reconciliation],
    checks: &[crate::billing::reconcile::InvoiceCheck],
) {
    println!("Stripe's meter against what Tally delivered, per billing period:");
    println!("customer                        event              period (UTC)                      tally      stripe  undelivered");
    for line in lines {
        let mark = if line.matches() { "" } else { "  DIFFERS" };
        let stripe = line.stripe.map_or_else(|| "?".to_owned(), |held| held.to_string());
        println!(
            "{:<31} {:<18} {} – {} {:>10} {:>11} {:>12}{mark}",
            line.customer,
            line.event_name,
            line.period_start.format("%Y-%m-%d %H:%M"),
            line.period_end.format("%Y-%m-%d %H:%M"),
            line.delivered,
            stripe,
            line.undelivered
        );
        if let Some(error) = &line.error {
            println!("    why: Stripe could not be asked (after retries): {error}");
        }
    }
    let differing = lines.iter().filter(|line| !line.matches()).count();
    println!("{} periods compared, {differing} differ", lines.len());
    println!();
    println!("Stripe's invoices against what Tally delivered in each invoiced period:");
    println!(
        "invoice                         status  customer                        period (UTC)                      \
         invoiced      tally  to next  uncertain  undelivered"
    );
    for check in checks {
        let mark = if check.matches() { "" } else { "  DIFFERS" };
        println!(
            "{:<31} {:<7} {:<31} {} – {} {:>8} {:>10} {:>8} {:>10} {:>12}{mark}",
            check.invoice,
            check.invoice_status.as_deref().unwrap_or("-"),
            check.customer,
            check.period_start.format("%Y-%m-%d %H:%M"),
            check.period_end.format("%Y-%m-%d %H:%M"),
            check.invoiced,
            check.delivered,
            check.moved_to_next,
            check.uncertain,
            check.undelivered
        );
        if let Some(reason) = check.reason() {
            println!("    why: {reason}");
        }
    }
    let differing_lines = checks.iter().filter(|check| !check.matches()).count();
    println!("{} invoice lines compared, {differing_lines} differ", checks.len());
}

/// A progress bar on stderr for `total` steps; drawn only on a terminal (scripts and CI see nothing of it).
fn progress_bar(total: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// A spinner on stderr for a step of unknown length (terminal only).
fn progress_spinner(what: &str) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(what.to_owned());
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}

/// The password of a new account: `TALLY_USER_PASSWORD`, else the first line of stdin with `--password-stdin`,
/// else asked for at the terminal (not echoed). Never an argument: argv is readable by every user of the machine.
fn new_password(from_stdin: bool) -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("TALLY_USER_PASSWORD") {
        return Ok(password);
    }
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    use std::io::IsTerminal;
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "no password: set TALLY_USER_PASSWORD, pass --password-stdin and pipe it in, or run at a terminal to be asked"
    );
    let password = rpassword::prompt_password("password for the new account: ")?;
    let again = rpassword::prompt_password("the same password again: ")?;
    anyhow::ensure!(password == again, "the two passwords differ; nothing was created");
    Ok(password)
}

/// `2026-11-01` (midnight UTC) or an RFC 3339 instant.
fn parse_since(raw: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| anyhow::anyhow!("--since takes YYYY-MM-DD or an RFC 3339 instant, not {raw:?}"))?;
    Ok(day.and_time(chrono::NaiveTime::MIN).and_utc())
}

async fn api_key_command(pool: &sqlx::PgPool, command: ApiKeyCommand, json: bool) -> anyhow::Result<()> {
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
            let keys = api_key::list(pool, user_of(email).await?).await?;
            if json {
                println!("{}", serde_json::to_string(&keys)?);
                return Ok(());
            }
            for key in keys {
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

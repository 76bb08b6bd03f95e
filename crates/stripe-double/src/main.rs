//! Runs the Stripe test double by hand: `stripe-double --port 12111 [--secret-key sk_test_…] [--meter NAME]`.
//! Point Tally at it with `STRIPE_API_BASE=http://127.0.0.1:12111 STRIPE_SECRET_KEY=<the key>`; inspect it with
//! `curl :12111/_double/state` and inject faults with `curl -d '{"rate_limit":5}' :12111/_double/faults`.

use clap::Parser;
use stripe_double::{serve, StripeDouble, DEFAULT_SECRET_KEY};

/// A Stripe API double for Tally's tests (billing meters, customers, products, prices) with fault knobs.
#[derive(Parser)]
#[command(name = "stripe-double")]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one; the address is printed either way).
    #[arg(long, default_value_t = 12111)]
    port: u16,
    /// The secret key requests must carry (`Authorization: Bearer …`).
    #[arg(long, env = "STRIPE_DOUBLE_SECRET_KEY", default_value = DEFAULT_SECRET_KEY)]
    secret_key: String,
    /// Create an active meter for this event name at start (repeatable).
    #[arg(long)]
    meter: Vec<String>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let double = StripeDouble::new(&args.secret_key);
    for event_name in &args.meter {
        double.add_meter(event_name);
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("stripe double listening on http://{}", listener.local_addr()?);
    serve(listener, double).await
}

//! Logging: `RUST_LOG` filters (default `info`), `TALLY_LOG_FORMAT=json` writes one JSON object per line for log
//! shippers (with the request span's fields: method, route, request id), anything else the readable format.

/// Installs the process's log subscriber. Called once, before the command line is read (it logs its errors).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_sessions=warn,sqlx=warn".into());
    let json = std::env::var("TALLY_LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}

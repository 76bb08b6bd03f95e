//! The axum application: leptos pages and server functions, sessions, and the guards in front of them.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use leptos::prelude::*;
use leptos_axum::{generate_route_list, AxumRouteListing, LeptosRoutes};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, SessionManagerLayer};
use tower_sessions_sqlx_store::PostgresStore;

use crate::app::{shell, App};
use crate::config::Config;
use crate::error::AppError;
use crate::state::AppState;

pub use crate::auth::session::SESSION_COOKIE;
pub use crate::error::MAX_BODY_BYTES;

/// The route list of the app. Build it once per process: generating it briefly suppresses resource loading
/// process-wide, which would stall a page being rendered at the same moment.
pub fn routes() -> Vec<AxumRouteListing> {
    generate_route_list(App)
}

/// The complete application router for `state`, with the routes from [`routes`].
pub fn router(state: AppState, routes: Vec<AxumRouteListing>) -> Router {
    let sessions = SessionManagerLayer::new(PostgresStore::new(state.pool.clone()))
        .with_name(SESSION_COOKIE)
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(state.config.secure_cookies())
        .with_expiry(Expiry::OnInactivity(time::Duration::days(crate::auth::session::IDLE_DAYS)));

    let metrics_on_public_router = state.config.metrics_addr.is_none();
    let router = Router::new()
        .merge(crate::ops::router(metrics_on_public_router))
        .merge(crate::billing::router())
        .merge(crate::usage::router())
        .route("/language/{locale}", axum::routing::get(choose_language))
        .route(crate::openapi::PATH, axum::routing::get(crate::openapi::serve))
        .route("/api/{*rest}", axum::routing::any(unknown_api_path))
        // The bundle, precompressed at build time (`scripts/build-site release`): `.br` or `.gz` when the browser
        // accepts it and the file exists, the plain file otherwise.
        .nest_service("/pkg", {
            let options = &state.leptos_options;
            // Content-hashed names never change their content: keep them for a year without asking again.
            // Without hashing (a build that does not name files by content) browsers must revalidate each time.
            // Only found files: a 404 kept for a year would outlive the deploy that caused it.
            let caching = HeaderValue::from_static(if options.hash_files {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            });
            let found_only = move |response: &Response<_>| response.status().is_success().then(|| caching.clone());
            tower::ServiceBuilder::new()
                .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, found_only))
                .service(
                    tower_http::services::ServeDir::new(format!("{}/{}", options.site_root, options.site_pkg_dir))
                        .precompressed_br()
                        .precompressed_gzip(),
                )
        })
        .leptos_routes_with_context(
            &state,
            routes,
            {
                let state = state.clone();
                move || {
                    state.provide_domains();
                    provide_context(crate::usage::period::RequestMemo::default());
                }
            },
            {
                let options = state.leptos_options.clone();
                move || shell(options.clone())
            },
        )
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(middleware::from_fn_with_state(state.clone(), crate::page_errors::guard))
        .layer(middleware::from_fn(crate::auth::session::renew_while_used))
        .layer(sessions)
        .layer(middleware::from_fn(crate::error::server_fn_error_status))
        .layer(middleware::from_fn_with_state(state.clone(), refuse_cross_site_writes))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        // A body that stops arriving ends its request (`connections.rs` bounds the head).
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(std::time::Duration::from_secs(
            state.config.body_read_timeout_secs,
        )))
        .layer(middleware::from_fn(body_too_large_as_json))
        // Pages, JSON and CSV compressed for clients that accept it (quality 4: a page is compressed on every
        // request, and brotli's default 11 costs milliseconds). Not the live stream (server-sent events must
        // reach the browser as they happen; the default predicate skips them), nor `/pkg`, which is sent
        // precompressed and already carries its encoding.
        .layer(
            tower_http::compression::CompressionLayer::new()
                .quality(tower_http::compression::CompressionLevel::Precise(4)),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_as_internal_error))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("same-origin")))
        // Pages set their own policy with the nonce of their inline scripts (`app::shell`); everything else (JSON,
        // CSV, assets, errors) may run nothing and be framed by nobody.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
        ))
        // Outermost, so they see every answer (the guards' refusals, 413s, panics) with its final status.
        .layer(middleware::from_fn(crate::ops::count_requests))
        .with_state(state);
    crate::ops::add_request_layers(router)
}

/// A request whose handler panicked gets the JSON 500 of any internal error instead of a dropped connection; the
/// panic message is logged (it names code, never request data).
fn panic_as_internal_error(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    AppError::internal(format_args!("a request handler panicked: {message}")).into_response()
}

/// Any `/api/…` path that is neither a server function nor a route: a JSON 404, not the HTML "page not found".
async fn unknown_api_path(method: Method, uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("there is no endpoint {method} {}", uri.path()))
}

/// Gives the body limit's 413 (a bare text answer from `tower-http`, or a server function's read error when a
/// chunked body runs past the limit) the JSON error shape of every other refusal.
async fn body_too_large_as_json(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return AppError::TooLarge(MAX_BODY_BYTES).into_response();
    }
    response
}

/// `GET /language/{en|ja}`: the language toggle without JavaScript. Stores the choice in the cookie `leptos_i18n`
/// reads (as its own toggle does) and goes back to the dashboard.
async fn choose_language(axum::extract::Path(locale): axum::extract::Path<String>) -> Response {
    if !matches!(locale.as_str(), "en" | "ja") {
        return AppError::Invalid(format!("unknown language {locale:?}; choose en or ja")).into_response();
    }
    let cookie = format!("i18n_pref_locale={locale}; Path=/; Max-Age=31536000; SameSite=Lax");
    ([(header::SET_COOKIE, cookie), (header::LOCATION, "/".to_owned())], axum::http::StatusCode::SEE_OTHER)
        .into_response()
}

/// Refuses state-changing requests that a browser marks as coming from another site. SameSite=Lax cookies already
/// keep the session off such requests; this also stops cross-site form posts to sign-up and log-in (login CSRF).
/// Requests without these headers (curl, services with API keys) are not browsers and pass.
async fn refuse_cross_site_writes(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if is_cross_site_write(request.method(), request.headers(), &state.config.public_url) {
        return AppError::Forbidden("cross-site request refused".into()).into_response();
    }
    next.run(request).await
}

/// Whether a browser sent this write from another site. Same-site means the `Origin` is the configured public URL's
/// origin (`TALLY_PUBLIC_URL`: what users reach, even behind a proxy that rewrites `Host`), or names the `Host` the
/// request was sent to (a server reached directly, as in development on `localhost`).
fn is_cross_site_write(method: &Method, headers: &axum::http::HeaderMap, public_url: &str) -> bool {
    if method.is_safe() {
        return false;
    }
    if headers.get("sec-fetch-site").is_some_and(|site| site == "cross-site") {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    // `Origin: null` (sandboxed frames, some redirects) or an unreadable header: not provably same-site.
    let Some(origin) = origin.to_str().ok().and_then(|o| url::Url::parse(o).ok()).filter(|o| o.has_host()) else {
        return true;
    };
    let public = url::Url::parse(public_url).ok().map(|url| url.origin());
    if public.is_some_and(|public| public == origin.origin()) {
        return false;
    }
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok());
    let origin_host = match (origin.host_str(), origin.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => return true,
    };
    !host.is_some_and(|host| origin_host.eq_ignore_ascii_case(host))
}

/// Reads the leptos settings: `Leptos.toml` in the working directory when present, then `LEPTOS_*` variables.
pub fn leptos_options() -> Result<LeptosOptions, leptos_config::errors::LeptosConfigError> {
    let file = std::path::Path::new("Leptos.toml");
    Ok(get_configuration(file.exists().then_some("Leptos.toml"))?.leptos_options)
}

/// With `hash-files` on, pages name the bundle by the hashes in `hash.txt` next to this binary, and Leptos panics on
/// every page without it: refuse to start instead, saying how to get one.
fn check_hash_file(options: &LeptosOptions) -> anyhow::Result<()> {
    if !options.hash_files {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let path = exe.parent().unwrap_or(std::path::Path::new(".")).join(options.hash_file.as_ref());
    anyhow::ensure!(
        path.exists(),
        "{} is missing: the bundle's file names (hash-files = true) are read from it. Build the site with \
         scripts/build-site (or cargo leptos build), which writes it next to the server binary, or serve without \
         a bundle with LEPTOS_HASH_FILES=false",
        path.display()
    );
    Ok(())
}

/// Connects, migrates and serves until Ctrl-C or SIGTERM, then shuts down gracefully: readiness turns false and
/// open live streams end (browsers reconnect elsewhere), no connection is accepted, in-flight requests and the
/// commits they wait for finish, and the workers end their current step (settling what they claimed), all within
/// `TALLY_SHUTDOWN_SECONDS`; then the process exits, whatever is left.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    crate::telemetry::handle();
    let leptos_options = leptos_options()?;
    check_hash_file(&leptos_options)?;
    let pool = crate::db::connect(&config).await?;
    crate::db::migrate(&pool).await?;
    crate::db::check_timezone(&pool, &config.billing_timezone).await?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let addr = leptos_options.site_addr;
    let worker = match crate::billing::delivery::DeliveryWorker::from_config(pool.clone(), &config) {
        Some(worker) if config.delivery.run_in_server => Some(tokio::spawn(worker.run_until(stopped.clone()))),
        Some(_) => None,
        None => {
            tracing::info!("STRIPE_SECRET_KEY is not set: usage is recorded and kept pending, not sent to Stripe");
            None
        }
    };
    let alerts = tokio::spawn(
        crate::usage::alert_webhooks::AlertWebhookWorker::new(
            pool.clone(),
            config.alert_webhook_allow_private,
            std::time::Duration::from_millis(config.delivery.retry_base_ms),
            std::time::Duration::from_millis(config.delivery.poll_ms),
        )
        .run_until(stopped.clone()),
    );
    let limits = crate::connections::ConnectionLimits::from_config(&config);
    let grace = std::time::Duration::from_secs(config.shutdown_seconds);
    let metrics_addr = config.metrics_addr;
    let state = AppState::new(leptos_options, pool.clone(), config);
    let live = state.usage.live.clone();
    let metrics = match metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!("metrics on http://{addr}/metrics");
            let app = crate::ops::metrics_router(state.clone());
            let mut stopped = stopped.clone();
            Some(tokio::spawn(async move {
                let until = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                axum::serve(listener, app).with_graceful_shutdown(until).await
            }))
        }
        None => None,
    };
    let app = router(state, routes());

    // Expired sessions are deleted in the background, every hour.
    let deletion = tokio::spawn(tower_sessions::session_store::ExpiredDeletion::continuously_delete_expired(
        PostgresStore::new(pool.clone()),
        tokio::time::Duration::from_secs(3600),
    ));
    // So are sign-in failures that no longer count.
    let pruning = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            every.tick().await;
            if let Err(err) = crate::auth::throttle::prune(&pool).await {
                tracing::warn!(error = %err, "could not prune old sign-in failures");
            }
        }
    });

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("Tally listening on http://{addr}");
    let signalled = std::sync::Arc::new(std::sync::OnceLock::new());
    let signal = {
        let signalled = signalled.clone();
        async move {
            shutdown_signal().await;
            let _ = signalled.set(tokio::time::Instant::now());
            live.shut_down();
            let _ = stop.send(true);
        }
    };
    crate::connections::serve(listener, app, limits, signal, grace).await?;
    let deadline = signalled.get().copied().unwrap_or_else(tokio::time::Instant::now) + grace;
    deletion.abort();
    pruning.abort();
    // The workers end their step; one that is still waiting on Stripe at the deadline is abandoned: its lease
    // expires and the identifier makes the retry count once.
    for (name, task) in [("delivery worker", worker), ("alert webhook worker", Some(alerts))] {
        let Some(mut task) = task else { continue };
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            tracing::warn!("{name} did not finish within TALLY_SHUTDOWN_SECONDS; stopped");
            task.abort();
        }
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_static(v))).collect()
    }

    const PUBLIC: &str = "https://tally.example";

    #[test]
    fn a_build_that_names_files_by_hash_needs_its_hash_file_to_start() {
        let exe_dir = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
        let name = format!("hash-{}.txt", uuid::Uuid::new_v4());
        let options = |hashed: bool| {
            LeptosOptions::builder().output_name("tally").hash_files(hashed).hash_file(name.clone().into()).build()
        };
        assert!(check_hash_file(&options(false)).is_ok(), "without hashing nothing is read");
        let err = check_hash_file(&options(true)).unwrap_err().to_string();
        assert!(err.contains(&name) && err.contains("scripts/build-site"), "{err}");
        std::fs::write(exe_dir.join(&name), "js: 1\nwasm: 2\ncss: 3\n").unwrap();
        let found = check_hash_file(&options(true));
        std::fs::remove_file(exe_dir.join(&name)).unwrap();
        assert!(found.is_ok());
    }

    #[test]
    fn same_origin_posts_pass() {
        let h = headers(&[("host", "127.0.0.1:3000"), ("origin", "http://127.0.0.1:3000")]);
        assert!(!is_cross_site_write(&Method::POST, &h, PUBLIC));
    }

    #[test]
    fn behind_a_proxy_that_rewrites_host_the_public_url_is_same_site() {
        let h = headers(&[("host", "10.0.0.7:3000"), ("origin", "https://tally.example")]);
        assert!(!is_cross_site_write(&Method::POST, &h, PUBLIC));
        let h = headers(&[("host", "10.0.0.7:3000"), ("origin", "https://tally.example.evil.test")]);
        assert!(is_cross_site_write(&Method::POST, &h, PUBLIC));
        let h = headers(&[("host", "10.0.0.7:3000"), ("origin", "http://tally.example")]);
        assert!(is_cross_site_write(&Method::POST, &h, PUBLIC), "another scheme is another origin");
    }

    #[test]
    fn cross_origin_posts_are_refused() {
        let h = headers(&[("host", "127.0.0.1:3000"), ("origin", "http://evil.example")]);
        assert!(is_cross_site_write(&Method::POST, &h, PUBLIC));
        let h = headers(&[("host", "127.0.0.1:3000"), ("sec-fetch-site", "cross-site")]);
        assert!(is_cross_site_write(&Method::POST, &h, PUBLIC));
        let h = headers(&[("host", "127.0.0.1:3000"), ("origin", "null")]);
        assert!(is_cross_site_write(&Method::POST, &h, PUBLIC));
    }

    #[test]
    fn reads_and_non_browser_clients_pass() {
        let h = headers(&[("host", "127.0.0.1:3000"), ("origin", "http://evil.example")]);
        assert!(!is_cross_site_write(&Method::GET, &h, PUBLIC));
        assert!(!is_cross_site_write(&Method::POST, &headers(&[("host", "127.0.0.1:3000")]), PUBLIC));
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_json_500() {
        use tower::ServiceExt;
        let app = Router::new()
            .route("/boom", axum::routing::get(|| async { panic!("boom") as &str }))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_as_internal_error));
        let request = Request::get("/boom").body(axum::body::Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers()[header::CONTENT_TYPE].as_bytes().starts_with(b"application/json"));
    }
}

//! The OpenAPI 3.1 description of the HTTP API services use, served at `/api/openapi.json`. It is derived from the
//! handlers' own annotations and the types they read and answer (`utoipa`), so a changed type changes the
//! description; `tests/integration/openapi.rs` calls every documented operation and checks it answers as described.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Where the description is served.
pub const PATH: &str = "/api/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally",
        description = "Usage-based billing on Stripe Billing Meters: record usage, ask the allowance left, export \
                       it, and receive Stripe's webhooks. Errors are `{error, code}` (with `message` in the \
                       caller's language for server functions) and store nothing."
    ),
    paths(
        crate::usage::record_usage,
        crate::usage::record_usage_batch,
        crate::ai::generate,
        crate::usage::allowance::allowance,
        crate::usage::history::export,
        crate::billing::webhook::receive,
    ),
    components(schemas(crate::error::WireError, crate::error::EventProblem)),
    modifiers(&Security)
)]
pub struct ApiDoc;

/// The two ways to call: an API key as a bearer token (services), or the session cookie (the app's pages).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("tly_live_…").build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(crate::auth::session::SESSION_COOKIE))),
        );
    }
}

/// The description, as served.
pub async fn serve() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

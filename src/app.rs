//! The HTML shell and the routes.

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, HashedStylesheet, MetaTags, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::{SsrMode, StaticSegment};

use crate::i18n::I18nContextProvider;
use crate::pages::{DashboardPage, LoginPage, SignupPage};

/// The document around the app, rendered on the server only.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    #[cfg(feature = "ssr")]
    set_content_security_policy();
    view! {
        <!DOCTYPE html>
        <html>
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" type="image/svg+xml" href="/favicon.svg" />
                <AutoReload options=options.clone() />
                <HashedStylesheet options=options.clone() id="leptos" />
                <HydrationScripts options islands=true />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

/// The page's Content-Security-Policy: scripts only from this origin or inline with this response's nonce (the
/// bundle's loader script carries it), WebAssembly allowed to compile, no plugins, no framing, and forms that go
/// only here or, through this server's redirect, to Stripe's Checkout and customer portal (browsers apply
/// `form-action` to a form's redirects too, so without them Subscribe and Manage billing would be blocked). Inline
/// `style` attributes (the meter's width) need `'unsafe-inline'` for styles only.
#[cfg(feature = "ssr")]
fn set_content_security_policy() {
    let (Some(nonce), Some(response)) = (leptos::nonce::use_nonce(), use_context::<leptos_axum::ResponseOptions>())
    else {
        return;
    };
    let policy = format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self' https://checkout.stripe.com https://billing.stripe.com; \
         frame-ancestors 'none'"
    );
    if let Ok(value) = axum::http::HeaderValue::from_str(&policy) {
        response.insert_header(axum::http::header::CONTENT_SECURITY_POLICY, value);
    }
}

/// The app: every page, rendered on the server; only `crate::islands` hydrate.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();

    view! {
        <Title text="Tally" />
        <I18nContextProvider>
        <Router>
            // `data-hydrated` turns "true" once the islands are hydrated (`islands::browser`).
            <main class="app" data-hydrated="false">
                // Async SSR: the page is sent once its data is loaded, so the numbers are in the HTML itself and a
                // signed-out visitor gets a real 302 to /login.
                <Routes fallback=NotFound>
                    <Route path=StaticSegment("") view=DashboardPage ssr=SsrMode::Async />
                    <Route path=StaticSegment("login") view=LoginPage ssr=SsrMode::Async />
                    <Route path=StaticSegment("signup") view=SignupPage ssr=SsrMode::Async />
                </Routes>
            </main>
        </Router>
        </I18nContextProvider>
    }
}

/// Any other path.
#[component]
fn NotFound() -> impl IntoView {
    let locale = crate::i18n::use_i18n().get_locale_untracked();
    view! { <p class="not-found">{crate::i18n::td!(locale, page_not_found)}</p> }
}

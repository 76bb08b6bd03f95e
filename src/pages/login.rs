//! `/login`.

use leptos::prelude::*;
use leptos_router::components::A;

use super::auth_form::AuthFields;
use crate::auth::Login;

/// The sign-in page.
#[component]
pub fn LoginPage() -> impl IntoView {
    let login = ServerAction::<Login>::new();
    view! {
        <section class="card auth">
            <h1>"Sign in to Tally"</h1>
            <ActionForm action=login attr:class="auth-form">
                <AuthFields
                    submit_label="Sign in"
                    password_autocomplete="current-password"
                    pending=login.pending()
                    error=Signal::derive(move || login.value().get().and_then(Result::err))
                />
            </ActionForm>
            <p class="auth__switch">"No account yet? " <A href="/signup">"Create one"</A></p>
        </section>
    }
}

//! `/login`.

use leptos::prelude::*;
use leptos_router::components::A;

use super::auth_form::AuthFields;
use crate::auth::Login;
use crate::i18n::{t, use_i18n};

/// The sign-in page.
#[component]
pub fn LoginPage() -> impl IntoView {
    let login = ServerAction::<Login>::new();
    let i18n = use_i18n();
    view! {
        <section class="card auth">
            <h1>{t!(i18n, sign_in_title)}</h1>
            <ActionForm action=login attr:class="auth-form">
                <AuthFields
                    submit_label=move || t!(i18n, sign_in)
                    password_autocomplete="current-password"
                    pending=login.pending()
                    error=Signal::derive(move || login.value().get().and_then(Result::err))
                />
            </ActionForm>
            <p class="auth__switch">{t!(i18n, no_account)} <A href="/signup">{t!(i18n, create_one)}</A></p>
        </section>
    }
}

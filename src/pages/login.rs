//! `/login`.

use leptos::prelude::*;
use leptos_router::components::A;

use super::auth_form::AuthFields;
use crate::auth::Login;
use crate::i18n::{td, use_i18n};

/// The sign-in page.
#[component]
pub fn LoginPage() -> impl IntoView {
    let login = ServerAction::<Login>::new();
    let locale = use_i18n().get_locale_untracked();
    view! {
        <section class="card auth">
            <h1>{td!(locale, sign_in_title)}</h1>
            <ActionForm action=login attr:class="auth-form">
                <AuthFields
                    submit_label=move || td!(locale, sign_in)
                    password_autocomplete="current-password"
                    pending=login.pending()
                    error=Signal::derive(move || login.value().get().and_then(Result::err))
                />
            </ActionForm>
            <p class="auth__switch">{td!(locale, no_account)} <A href="/signup">{td!(locale, create_one)}</A></p>
        </section>
    }
}

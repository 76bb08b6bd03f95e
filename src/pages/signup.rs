//! `/signup`.

use leptos::prelude::*;
use leptos_router::components::A;

use super::auth_form::AuthFields;
use crate::auth::Signup;
use crate::i18n::{td, use_i18n};

/// The account creation page.
#[component]
pub fn SignupPage() -> impl IntoView {
    let signup = ServerAction::<Signup>::new();
    let locale = use_i18n().get_locale_untracked();
    view! {
        <section class="card auth">
            <h1>{td!(locale, sign_up_title)}</h1>
            <ActionForm action=signup attr:class="auth-form">
                <AuthFields
                    submit_label=move || td!(locale, create_account)
                    password_autocomplete="new-password"
                    pending=signup.pending()
                    error=Signal::derive(move || signup.value().get().and_then(Result::err))
                />
            </ActionForm>
            <p class="auth__hint">
                {format!("Passwords need at least {} characters.", crate::auth::MIN_PASSWORD_LEN)}
            </p>
            <p class="auth__switch">{td!(locale, have_account)} <A href="/login">{td!(locale, sign_in)}</A></p>
        </section>
    }
}

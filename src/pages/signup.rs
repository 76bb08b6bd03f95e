//! `/signup`.

use leptos::prelude::*;
use leptos_router::components::A;

use super::auth_form::AuthFields;
use crate::auth::Signup;
use crate::i18n::{t, use_i18n};

/// The account creation page.
#[component]
pub fn SignupPage() -> impl IntoView {
    let signup = ServerAction::<Signup>::new();
    let i18n = use_i18n();
    view! {
        <section class="card auth">
            <h1>{t!(i18n, sign_up_title)}</h1>
            <ActionForm action=signup attr:class="auth-form">
                <AuthFields
                    submit_label=move || t!(i18n, create_account)
                    password_autocomplete="new-password"
                    pending=signup.pending()
                    error=Signal::derive(move || signup.value().get().and_then(Result::err))
                />
            </ActionForm>
            <p class="auth__hint">
                {format!("Passwords need at least {} characters.", crate::auth::MIN_PASSWORD_LEN)}
            </p>
            <p class="auth__switch">{t!(i18n, have_account)} <A href="/login">{t!(i18n, sign_in)}</A></p>
        </section>
    }
}

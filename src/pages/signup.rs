//! `/signup`.

use leptos::prelude::*;
use leptos_router::components::A;

use super::auth_form::AuthFields;
use crate::auth::Signup;

/// The account creation page.
#[component]
pub fn SignupPage() -> impl IntoView {
    let signup = ServerAction::<Signup>::new();
    view! {
        <section class="card auth">
            <h1>"Create your Tally account"</h1>
            <ActionForm action=signup attr:class="auth-form">
                <AuthFields
                    submit_label="Create account"
                    password_autocomplete="new-password"
                    pending=signup.pending()
                    error=Signal::derive(move || signup.value().get().and_then(Result::err))
                />
            </ActionForm>
            <p class="auth__hint">
                {format!("Passwords need at least {} characters.", crate::auth::MIN_PASSWORD_LEN)}
            </p>
            <p class="auth__switch">"Already have an account? " <A href="/login">"Sign in"</A></p>
        </section>
    }
}

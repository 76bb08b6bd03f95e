//! The email + password fields shared by the log-in and sign-up forms.

use leptos::prelude::*;

use crate::components::ErrorNotice;
use crate::error::AppError;
use crate::i18n::{td, use_i18n};

/// Email and password inputs, the submit button and the form's error. Placed inside an `ActionForm`, it also
/// works without JavaScript: the browser then posts the form itself and follows the server's redirect.
#[component]
pub fn AuthFields(
    /// The submit button's text.
    #[prop(into)]
    submit_label: ViewFn,
    /// `autocomplete` of the password field (`current-password` or `new-password`).
    password_autocomplete: &'static str,
    /// Whether the form is being submitted.
    #[prop(into)]
    pending: Signal<bool>,
    /// The last submission's error, if it failed.
    #[prop(into)]
    error: Signal<Option<AppError>>,
) -> impl IntoView {
    let locale = use_i18n().get_locale_untracked();
    view! {
        <label>
            {td!(locale, email)}
            <input type="email" name="email" required autocomplete="username" data-testid="email" />
        </label>
        <label>
            {td!(locale, password)}
            <input
                type="password"
                name="password"
                required
                minlength=crate::auth::MIN_PASSWORD_LEN
                autocomplete=password_autocomplete
                data-testid="password"
            />
        </label>
        <button type="submit" data-testid="submit" disabled=pending>
            {submit_label.run()}
        </button>
        {move || {
            error
                .get()
                .map(|err| {
                    view! {
                        <ErrorNotice err test_id="form-error" />
                    }
                })
        }}
    }
}

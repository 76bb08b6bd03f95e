//! How a page shows an error: in the reader's language, announced to screen readers.

use leptos::prelude::*;

use crate::error::AppError;
use crate::i18n::use_i18n;

/// `err` as a `role="alert"` paragraph, worded in the page's language (and re-worded when it switches).
#[component]
pub fn ErrorNotice(
    err: AppError,
    /// `data-testid` of the paragraph, for tests that look for this particular error.
    #[prop(optional)]
    test_id: Option<&'static str>,
) -> impl IntoView {
    let i18n = use_i18n();
    let code = err.code();
    view! {
        <p class="form-error" role="alert" data-testid=test_id data-code=code>
            {move || err.localized(i18n.get_locale())}
        </p>
    }
}

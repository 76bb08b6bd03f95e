//! How a page shows an error: in the reader's language, announced to screen readers.

use leptos::prelude::*;

use crate::error::AppError;
use crate::i18n::use_i18n;

/// `err` as a `role="alert"` paragraph, worded in the page's language.
#[component]
pub fn ErrorNotice(
    err: AppError,
    /// `data-testid` of the paragraph, for tests that look for this particular error.
    #[prop(optional)]
    test_id: Option<&'static str>,
) -> impl IntoView {
    let message = err.localized(use_i18n().get_locale_untracked());
    crate::islands::error_notice(Some(err.code().to_owned()), message, test_id)
}

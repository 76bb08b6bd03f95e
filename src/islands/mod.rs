//! The parts of Tally that run in the browser: islands of behaviour in server-rendered pages.
//!
//! Every page is rendered on the server (Leptos in islands mode: no hydration markers, no serialized resources),
//! translated and formatted there, and works as plain HTML with links and forms. Three islands add what HTML
//! cannot do: [`LiveUpdates`] keeps the dashboard current from the live stream (and its Refresh button),
//! [`AiPrompt`] shows an answer without leaving the page, and [`NewApiKey`] shows a new key's secret once.
//!
//! Each is a server component that renders its markup with its words already in the reader's language (in `data-`
//! attributes where the browser needs them later), and a `behaviour` that the bundle attaches to that markup with
//! web-sys. The browser runs no Leptos runtime, no serialization library and no translation table: Leptos's own
//! client islands cost ~130 kB gzip for these three (docs/performance.md), this costs a fraction. How the page
//! looks after an update is still the server's to say ([`regions`]: re-read the page, swap the `data-region`s).

mod ai_prompt;
mod live;
mod new_api_key;

#[cfg(feature = "hydrate")]
mod browser;
#[cfg(feature = "hydrate")]
mod dom;
#[cfg(feature = "hydrate")]
mod http;
#[cfg(feature = "hydrate")]
mod regions;

pub use ai_prompt::AiPrompt;
#[cfg(feature = "hydrate")]
pub use browser::start;
pub use live::LiveUpdates;
pub use new_api_key::NewApiKey;

use leptos::prelude::*;

/// An error as a `role="alert"` paragraph: the one markup the server's components (`components::ErrorNotice`) and
/// the islands show errors with. `code` is the error's machine-readable code, `message` its words.
pub fn error_notice(code: Option<String>, message: String, test_id: Option<&'static str>) -> impl IntoView {
    view! {
        <p class="form-error" role="alert" data-testid=test_id data-code=code>
            {message}
        </p>
    }
}

/// A message with `{name}` holes that an island fills in the browser: the server translates it with the holes as
/// its values, so the words and their order are the reader's language's.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_owned(), |text, (name, value)| text.replace(&format!("{{{name}}}"), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_puts_each_value_in_its_hole_in_any_order() {
        assert_eq!(fill("{b} then {a}", &[("a", "1"), ("b", "2")]), "2 then 1");
        assert_eq!(fill("no holes", &[("a", "1")]), "no holes");
    }
}

//! Creating an API key: its secret is shown once, on the page that made it.

use leptos::prelude::*;

/// The form that makes a key, rendered on the server in the reader's language. It posts to
/// `POST /api/keys/create`; in the browser ([`attach`]) the secret is then shown here once and the page's key table
/// (a region) is re-read. Without JavaScript the form still makes the key, but the page it returns to cannot show
/// the secret: `tally apikey create` is the way then.
#[component]
pub fn NewApiKey(
    /// The page's language (`"en"` or `"ja"`): the server words its errors in it.
    lang: &'static str,
    /// The name field's label and placeholder, the button's text, and the note above a new secret.
    name: String,
    placeholder: String,
    create: String,
    copy_now: String,
    /// What is shown when the server cannot be reached.
    unreachable: String,
) -> impl IntoView {
    view! {
        <form
            class="api-keys__create"
            method="post"
            action="/api/keys/create"
            data-island="new-api-key"
            data-lang=lang
            data-copy-now=copy_now
            data-unreachable=unreachable
        >
            <label>
                {name}
                <input type="text" name="name" required maxlength="100" placeholder=placeholder data-testid="key-name" />
            </label>
            <button type="submit" data-testid="key-create">{create}</button>
        </form>
        <div data-slot="new-api-key"></div>
    }
}

#[cfg(feature = "hydrate")]
pub use behaviour::attach;

#[cfg(feature = "hydrate")]
mod behaviour {
    use wasm_bindgen::JsCast;
    use web_sys::Element;

    use crate::islands::{dom, http, regions};

    /// Gives the key form `form` its behaviour.
    pub fn attach(form: Element) {
        dom::on_submit(&form, create);
    }

    async fn create(form: Element) {
        let form = &form;
        let (Some(name), Some(outcome)) = (
            dom::find(form, "input[name=name]").and_then(|i| i.dyn_into::<web_sys::HtmlInputElement>().ok()),
            form.next_element_sibling(),
        ) else {
            return;
        };
        let body = http::form_body("name", &name.value());
        let created =
            http::post("/api/keys/create", "application/x-www-form-urlencoded", &body, &dom::data(form, "lang")).await;
        let shown = match created {
            Ok(json) => {
                regions::refresh_soon();
                secret_view(&dom::data(form, "copy-now"), &http::string(&json, "secret").unwrap_or_default())
            }
            Err(failure) => failure.notice(form, None),
        };
        dom::show(&outcome, shown);
    }

    fn secret_view(note: &str, secret: &str) -> Option<Element> {
        let shown = dom::element("div", "api-keys__secret", None, "")?;
        let _ = shown.set_attribute("role", "status");
        let note = dom::element("p", "", None, note)?;
        let code = dom::element("code", "", Some("key-secret"), secret)?;
        shown.append_with_node_2(&note, &code).ok()?;
        Some(shown)
    }
}

//! The prompt box: asks the AI route and shows the answer without leaving the page.

use leptos::prelude::*;

/// The prompt form, rendered on the server in the reader's language. In the browser ([`attach`]) it posts to
/// `POST /api/ai/generate` and shows the answer and its tokens; the tokens are recorded as usage, which the live
/// stream then shows on the meter (the page's regions are also re-read, for when the stream is down).
#[component]
pub fn AiPrompt(
    /// The page's language (`"en"` or `"ja"`): the server words its errors in it.
    lang: &'static str,
    /// The field's label, and the button's text before and while asking.
    label: String,
    generate: String,
    thinking: String,
    /// The line under an answer, with `{total}`, `{prompt}`, `{completion}` and `{model}` holes.
    tokens_line: String,
    /// What is shown when the server cannot be reached.
    unreachable: String,
) -> impl IntoView {
    let idle_text = generate.clone();
    view! {
        <form
            class="ai-prompt"
            data-island="ai-prompt"
            data-lang=lang
            data-tokens-line=tokens_line
            data-unreachable=unreachable
        >
            <label for="ai-prompt-text">{label}</label>
            <textarea
                id="ai-prompt-text"
                name="prompt"
                rows="3"
                maxlength=crate::ai::MAX_PROMPT_CHARS
                data-testid="ai-prompt"
            ></textarea>
            <button type="submit" data-testid="ai-submit" data-idle-text=idle_text data-busy-text=thinking>
                {generate}
            </button>
            <div data-slot="outcome"></div>
        </form>
    }
}

#[cfg(feature = "hydrate")]
pub use behaviour::attach;

#[cfg(feature = "hydrate")]
mod behaviour {
    use wasm_bindgen::{JsCast, JsValue};
    use web_sys::Element;

    use crate::islands::{dom, fill, http, regions};

    /// Gives the prompt form `form` its behaviour.
    pub fn attach(form: Element) {
        dom::on_submit(&form, ask);
    }

    async fn ask(form: Element) {
        let form = &form;
        let (Some(prompt), Some(button), Some(outcome)) = (
            dom::find(form, "textarea").and_then(|t| t.dyn_into::<web_sys::HtmlTextAreaElement>().ok()),
            dom::find(form, "button"),
            dom::find(form, "[data-slot=outcome]"),
        ) else {
            return;
        };
        dom::busy(&button, true);
        let body = http::json_body("prompt", &prompt.value());
        let answer = http::post("/api/ai/generate", "application/json", &body, &dom::data(form, "lang")).await;
        let shown = match answer {
            Ok(json) => {
                regions::refresh_soon();
                answer_view(&json, &dom::data(form, "tokens-line"))
            }
            Err(failure) => failure.notice(form, Some("ai-error")),
        };
        dom::show(&outcome, shown);
        dom::busy(&button, false);
    }

    /// The answer in `json` (the route's `Generation`), its token counts put into `template`.
    fn answer_view(json: &JsValue, template: &str) -> Option<Element> {
        let count = |field| crate::format::thousands(http::integer(json, field).unwrap_or_default());
        let tokens = fill(
            template,
            &[
                ("total", &count("totalTokens")),
                ("prompt", &count("promptTokens")),
                ("completion", &count("completionTokens")),
                ("model", &http::string(json, "model").unwrap_or_default()),
            ],
        );
        let answer = dom::element("div", "ai-prompt__answer", Some("ai-answer"), "")?;
        let text = dom::element("p", "", None, &http::string(json, "text").unwrap_or_default())?;
        let tokens = dom::element("p", "ai-prompt__tokens", Some("ai-tokens"), &tokens)?;
        answer.append_with_node_2(&text, &tokens).ok()?;
        Some(answer)
    }
}

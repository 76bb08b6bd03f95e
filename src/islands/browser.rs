//! What every page does once its bundle has loaded: give each island its behaviour, and a few page-wide touches.

use wasm_bindgen::JsCast;
use web_sys::{Document, Element, Event};

use super::dom;

/// The bundle's entry point (`crate::hydrate`).
pub fn start() {
    let Some(document) = dom::document() else { return };
    for island in dom::all(&document, "[data-island]") {
        match island.get_attribute("data-island").as_deref() {
            Some("live") => super::live::attach(island),
            Some("ai-prompt") => super::ai_prompt::attach(island),
            Some("new-api-key") => super::new_api_key::attach(island),
            _ => {}
        }
    }
    forget_form_error_address();
    follow_chart_focus(&document);
    // End-to-end tests wait for this mark before they click: a click before the behaviours are attached would do
    // what the plain HTML does.
    if let Ok(Some(main)) = document.query_selector("main") {
        let _ = main.set_attribute("data-hydrated", "true");
    }
}

/// A refused form comes back to its page with the error in the address (`?__path=…&__err=…&__sig=…`, see
/// `page_errors.rs`); once the page shows it, the address goes back to the page's own, so a reload or a bookmark
/// does not show the error again.
fn forget_form_error_address() {
    let Some(window) = web_sys::window() else { return };
    let Ok(href) = window.location().href() else { return };
    let Ok(url) = web_sys::Url::new(&href) else { return };
    let params = url.search_params();
    if params.get("__err").is_none() {
        return;
    }
    for name in ["__path", "__err", "__sig"] {
        params.delete(name);
    }
    if let Ok(history) = window.history() {
        let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&url.href()));
    }
}

/// Hovering or focusing a bar of the usage chart names its day and value under the chart (the bar's own label,
/// which the server wrote). Listening on the document keeps working when a live update replaces the chart.
fn follow_chart_focus(document: &Document) {
    fn bar_label(event: &Event) -> Option<String> {
        let bar = event.target()?.dyn_into::<Element>().ok()?;
        bar.class_list().contains("history__bar").then(|| bar.get_attribute("aria-label")).flatten()
    }
    for (name, entering) in [("mouseover", true), ("focusin", true), ("mouseout", false), ("focusout", false)] {
        let page = document.clone();
        dom::on(document, name, move |event| {
            if let Some(label) = bar_label(&event) {
                if let Ok(Some(focus)) = page.query_selector("[data-testid=history-focus]") {
                    focus.set_text_content(Some(if entering { &label } else { "" }));
                }
            }
        });
    }
}

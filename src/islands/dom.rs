//! The few DOM operations the islands' behaviours are written with.

use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use web_sys::{Document, Element, Event, EventTarget};

pub fn document() -> Option<Document> {
    web_sys::window()?.document()
}

/// Every element under `root` that matches `selector`.
pub fn all(root: &Document, selector: &str) -> Vec<Element> {
    let Ok(found) = root.query_selector_all(selector) else { return Vec::new() };
    (0..found.length()).filter_map(|i| found.item(i)?.dyn_into::<Element>().ok()).collect()
}

/// The first element under `root` that matches `selector`.
pub fn find(root: &Element, selector: &str) -> Option<Element> {
    root.query_selector(selector).ok().flatten()
}

/// A `data-…` attribute of `element`, empty when missing.
pub fn data(element: &Element, name: &str) -> String {
    element.get_attribute(&format!("data-{name}")).unwrap_or_default()
}

/// Takes over `form`'s submission: instead of the plain post, `submit` runs with the form.
pub fn on_submit<F, Fut>(form: &Element, submit: F)
where
    F: Fn(Element) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let submitted = form.clone();
    on(form, "submit", move |event| {
        event.prevent_default();
        wasm_bindgen_futures::spawn_local(submit(submitted.clone()));
    });
}

/// Runs `handler` on every `name` event at `target`, for the page's whole life.
pub fn on(target: &EventTarget, name: &str, handler: impl FnMut(Event) + 'static) {
    let listener = Closure::<dyn FnMut(Event)>::new(handler);
    let _ = target.add_event_listener_with_callback(name, listener.as_ref().unchecked_ref());
    listener.forget();
}

/// A new `tag` element with `class` and text, and `data-testid` when given.
pub fn element(tag: &str, class: &str, test_id: Option<&str>, text: &str) -> Option<Element> {
    let element = document()?.create_element(tag).ok()?;
    if !class.is_empty() {
        element.set_class_name(class);
    }
    if let Some(test_id) = test_id {
        let _ = element.set_attribute("data-testid", test_id);
    }
    if !text.is_empty() {
        element.set_text_content(Some(text));
    }
    Some(element)
}

/// Replaces what `slot` holds with `content` (nothing when `None`).
pub fn show(slot: &Element, content: Option<Element>) {
    slot.set_inner_html("");
    if let Some(content) = content {
        let _ = slot.append_child(&content);
    }
}

/// The error paragraph `super::error_notice` renders on the server, built in the browser.
pub fn error(code: Option<&str>, message: &str, test_id: Option<&str>) -> Option<Element> {
    let paragraph = element("p", "form-error", test_id, message)?;
    let _ = paragraph.set_attribute("role", "alert");
    if let Some(code) = code {
        let _ = paragraph.set_attribute("data-code", code);
    }
    Some(paragraph)
}

/// Disables `button` and shows its `data-busy-text` while `busy`; restores its text after.
pub fn busy(button: &Element, busy: bool) {
    let text = if busy { data(button, "busy-text") } else { data(button, "idle-text") };
    let _ = if busy { button.set_attribute("disabled", "") } else { button.remove_attribute("disabled") };
    button.set_text_content(Some(&text));
}

/// Runs `task` once after `delay`.
pub fn later(delay: std::time::Duration, task: impl FnOnce() + 'static) {
    let Some(window) = web_sys::window() else { return };
    let callback = Closure::once_into_js(task);
    let millis = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
    let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(callback.unchecked_ref(), millis);
}

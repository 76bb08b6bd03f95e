//! Keeping a server-rendered page current from the browser: re-read the page and put its fresh `data-region`
//! parts in place of the old ones. The server stays the only place that formats and translates what the page
//! shows, so an update looks exactly like a reload, without reloading (what the reader typed, the scroll position
//! and the islands' state stay).

use std::cell::Cell;

use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Document, DomParser, Element, SupportedType};

/// The page could not be re-read (the network or the server failed); what it shows may be behind.
#[derive(Debug)]
pub struct RefreshFailed;

impl From<JsValue> for RefreshFailed {
    fn from(_: JsValue) -> Self {
        RefreshFailed
    }
}

thread_local! {
    /// Reads started, and the newest whose answer is on the page: an older answer that arrives late is dropped
    /// (within a period a total only grows, so the later read is the truer one).
    static STARTED: Cell<u64> = const { Cell::new(0) };
    static APPLIED: Cell<u64> = const { Cell::new(0) };
    /// Whether a [`refresh_soon`] read is running, and whether another was asked for meanwhile.
    static SOON: Cell<(bool, bool)> = const { Cell::new((false, false)) };
}

/// Re-reads the page at its current address and swaps in its regions.
pub async fn refresh() -> Result<(), RefreshFailed> {
    let number = STARTED.with(|started| {
        started.set(started.get() + 1);
        started.get()
    });
    let window = web_sys::window().ok_or(RefreshFailed)?;
    let href = window.location().href()?;
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(&href)).await?.dyn_into()?;
    if response.redirected() {
        // The session has ended (a signed-out dashboard sends the visitor to /login): go there, as a reload would.
        window.location().assign(&response.url())?;
        return Ok(());
    }
    if !response.ok() {
        return Err(RefreshFailed);
    }
    let html = JsFuture::from(response.text()?).await?.as_string().ok_or(RefreshFailed)?;
    if APPLIED.with(Cell::get) > number {
        return Ok(());
    }
    APPLIED.with(|applied| applied.set(number));
    swap(&window.document().ok_or(RefreshFailed)?, &html)
}

/// [`refresh`] in the background, coalesced: however many changes arrive while a read runs, one more read follows
/// it, not one per change.
pub fn refresh_soon() {
    let start = SOON.with(|soon| {
        let (running, _) = soon.get();
        soon.set((true, running));
        !running
    });
    if start {
        wasm_bindgen_futures::spawn_local(async {
            loop {
                // A failed read is retried by the next change; Refresh shows failures.
                let _ = refresh().await;
                let again = SOON.with(|soon| {
                    let (_, again) = soon.get();
                    soon.set((again, false));
                    again
                });
                if !again {
                    break;
                }
            }
        });
    }
}

/// Whether a live stream message (the shown meters' summaries, a JSON array) says something the page does not show
/// yet: another meter, or another total or period than a meter's `data-used` and `data-period`. Read with the
/// browser's own JSON parser; anything unreadable counts as a change.
pub fn differs_from_page(message: &JsValue) -> bool {
    let read = || -> Option<bool> {
        let meters = js_sys::JSON::parse(&message.as_string()?).ok()?.dyn_into::<js_sys::Array>().ok()?;
        let document = web_sys::window()?.document()?;
        if document.query_selector_all("[data-meter]").ok()?.length() != meters.length() {
            return Some(true);
        }
        for summary in meters.iter() {
            let field = |name: &str| js_sys::Reflect::get(&summary, &JsValue::from_str(name)).ok();
            let event_type = field("eventType")?.as_string()?;
            let used = field("used")?.as_f64()? as i64;
            let period = field("periodStart")?.as_string()?;
            let Some(meter) = document.query_selector(&format!("[data-meter=\"{event_type}\"]")).ok()? else {
                return Some(true);
            };
            let shown_used = meter.get_attribute("data-used")?.parse::<i64>().ok()?;
            let shown_period = meter.get_attribute("data-period")?;
            if used != shown_used || period != shown_period {
                return Some(true);
            }
        }
        Some(false)
    };
    read().unwrap_or(true)
}

/// Puts each region of `html` in place of the page's region of the same name.
fn swap(document: &Document, html: &str) -> Result<(), RefreshFailed> {
    let fresh = DomParser::new()?.parse_from_string(html, SupportedType::TextHtml)?;
    let regions = document.query_selector_all("[data-region]")?;
    for index in 0..regions.length() {
        let Some(region) = regions.item(index).and_then(|node| node.dyn_into::<Element>().ok()) else { continue };
        let Some(name) = region.get_attribute("data-region") else { continue };
        if let Some(new) = fresh.query_selector(&format!("[data-region=\"{name}\"]"))? {
            region.replace_with_with_node_1(&document.import_node_with_deep(&new, true)?)?;
        }
    }
    Ok(())
}

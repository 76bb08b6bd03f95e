//! The dashboard's live part: the stream that keeps it current, the Refresh button and the line that says when the
//! stream is down.

use leptos::prelude::*;

/// The live controls, rendered on the server in the reader's language. In the browser ([`attach`]) they follow the
/// signed-in user's usage stream and re-read the page's regions whenever the total changes or Refresh is pressed.
/// Without JavaScript the page is as current as its last load.
#[component]
pub fn LiveUpdates(
    /// The button's text, and its text while a refresh runs.
    refresh: String,
    refreshing: String,
    /// What the status line says while the stream is interrupted.
    interrupted: String,
    /// What is shown when a refresh fails (the numbers on the page may be behind).
    refresh_failed: String,
) -> impl IntoView {
    let idle_text = refresh.clone();
    view! {
        <div class="live" data-island="live" data-failed-text=refresh_failed>
            <button
                type="button"
                class="button-secondary"
                data-testid="refresh-usage"
                data-idle-text=idle_text
                data-busy-text=refreshing
            >
                {refresh}
            </button>
            <div data-slot="error"></div>
            // "connecting" until the stream answers (and always without JavaScript); then "live" or "interrupted".
            <p
                class="live-status"
                role="status"
                data-testid="live-status"
                data-state="connecting"
                data-interrupted-text=interrupted
            ></p>
        </div>
    }
}

#[cfg(feature = "hydrate")]
pub use behaviour::attach;

#[cfg(feature = "hydrate")]
mod behaviour {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;
    use web_sys::{Element, EventSource};

    use crate::islands::{dom, regions};

    /// Gives the live controls under `root` their behaviour.
    pub fn attach(root: Element) {
        let (Some(button), Some(error), Some(status)) = (
            dom::find(&root, "[data-testid=refresh-usage]"),
            dom::find(&root, "[data-slot=error]"),
            dom::find(&root, "[data-testid=live-status]"),
        ) else {
            return;
        };
        let failed_text = dom::data(&root, "failed-text");
        let clicked = button.clone();
        dom::on(&button, "click", move |_| {
            let (button, error, failed_text) = (clicked.clone(), error.clone(), failed_text.clone());
            wasm_bindgen_futures::spawn_local(async move {
                dom::busy(&button, true);
                let failed = regions::refresh().await.is_err();
                dom::show(&error, failed.then(|| dom::error(None, &failed_text, Some("usage-error"))).flatten());
                dom::busy(&button, false);
            });
        });
        follow(status);
    }

    /// Shows the stream's state on the status line: its `data-state`, and words only while interrupted.
    fn set_state(status: &Element, state: &str) {
        let _ = status.set_attribute("data-state", state);
        let text = if state == "interrupted" { dom::data(status, "interrupted-text") } else { String::new() };
        status.set_text_content(Some(&text));
    }

    const FIRST_RETRY: Duration = Duration::from_secs(1);
    const LAST_RETRY: Duration = Duration::from_secs(30);

    type Listener = Closure<dyn FnMut(web_sys::Event)>;
    /// The open source with its listeners (kept alive as long as it is) and the next re-open delay.
    struct Stream {
        source: Option<(EventSource, [Listener; 3])>,
        retry: Duration,
        status: Element,
    }
    type Shared = Rc<RefCell<Stream>>;

    /// Follows the usage stream (server-sent events). Each message is the user's current summary; when its total
    /// or period differs from what the page shows, the page's regions are re-read. The stream starts with the
    /// current total, so a reconnect misses nothing.
    ///
    /// `EventSource` retries by itself after a network error, but gives up for good when an answer is not a 200
    /// event stream (a 503 while the database is down, a proxy's 502): then the stream is opened again here, after
    /// 1 s, doubling up to 30 s.
    fn follow(status: Element) {
        open(Rc::new(RefCell::new(Stream { source: None, retry: FIRST_RETRY, status })));
    }

    fn open(stream: Shared) {
        let Ok(source) = EventSource::new(crate::usage::LIVE_PATH) else {
            reopen_later(stream);
            return;
        };
        let on_usage = {
            let stream = stream.clone();
            Listener::new(move |event: web_sys::Event| {
                if let Some(message) = event.dyn_ref::<web_sys::MessageEvent>() {
                    if regions::differs_from_page(&message.data()) {
                        regions::refresh_soon();
                    }
                }
                let mut stream = stream.borrow_mut();
                set_state(&stream.status, "live");
                stream.retry = FIRST_RETRY;
            })
        };
        let on_open = {
            let stream = stream.clone();
            Listener::new(move |_| set_state(&stream.borrow().status, "live"))
        };
        let on_error = {
            let stream = stream.clone();
            Listener::new(move |_| {
                set_state(&stream.borrow().status, "interrupted");
                let closed = stream
                    .borrow()
                    .source
                    .as_ref()
                    .is_some_and(|(source, _)| source.ready_state() == EventSource::CLOSED);
                if closed {
                    // The browser gave up on this source: drop it (and its listeners) from a fresh task, not
                    // from inside its own listener.
                    let stream = stream.clone();
                    dom::later(Duration::ZERO, move || reopen_later(stream));
                }
            })
        };
        for (name, listener) in [("usage", &on_usage), ("open", &on_open), ("error", &on_error)] {
            let _ = source.add_event_listener_with_callback(name, listener.as_ref().unchecked_ref());
        }
        stream.borrow_mut().source = Some((source, [on_usage, on_open, on_error]));
    }

    fn reopen_later(stream: Shared) {
        let delay = {
            let mut stream = stream.borrow_mut();
            if let Some((source, _listeners)) = stream.source.take() {
                source.close();
            }
            let delay = stream.retry;
            stream.retry = (delay * 2).min(LAST_RETRY);
            delay
        };
        dom::later(delay, move || open(stream));
    }
}

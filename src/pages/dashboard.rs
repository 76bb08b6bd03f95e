//! `/`: the signed-in user's dashboard with the UsageMeter.

use leptos::either::EitherOf3;
use leptos::prelude::*;

use crate::components::ErrorNotice;
use leptos_router::components::Redirect;

use crate::auth::Logout;
use crate::components::{AiPrompt, ApiKeys, BillingHistory, UsageAlerts, UsageHistoryCard, UsageMeter};
use crate::dashboard::{get_dashboard, DashboardData, Seed};
use crate::error::AppError;
use crate::i18n::{t, t_string, use_i18n, Locale};
use crate::usage::{get_usage_summary, UsageSummary};

/// The dashboard; visitors without a session are sent to `/login`.
///
/// The page reads everything it shows in one statement ([`get_dashboard`]); each card takes its first value from
/// that read (the [`Seed`] in context) and re-reads only its own part later. The cards are created here, next to
/// the session check rather than inside it: created inside the check's `Suspend`, they were created again whenever
/// it re-ran (server rendering did every query twice on some requests, and disposed resources were read).
#[component]
pub fn DashboardPage() -> impl IntoView {
    let data = Resource::new(|| (), |_| get_dashboard());
    provide_context(Seed(data));
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Ok(_) =>EitherOf3::A( ()),
                    Err(AppError::Unauthorized) => EitherOf3::B(view! { <Redirect path="/login" /> }),
                    Err(err) => EitherOf3::C(view! { <ErrorNotice err /> }),
                }
            })}
        </Suspense>
        <Dashboard data />
    }
}

#[component]
fn Dashboard(data: Resource<Result<DashboardData, AppError>>) -> impl IntoView {
    let email = move || Suspend::new(async move { data.await.ok().map(|data| data.user.email) });
    let logout = ServerAction::<Logout>::new();
    // Read again (after a failed first read) through the meter's own server function.
    let rereads = RwSignal::new(0_u32);
    let summary = Resource::new(
        move || rereads.get(),
        move |n| Seed::or_fetch(Some(Seed(data)), n == 0, |d| d.summary, get_usage_summary),
    );
    // The newest total from the live stream or a refresh (browser only); everything that shows usage follows it.
    let live = RwSignal::new(None::<UsageSummary>);
    // "Refresh" re-reads the total into `live`, like a stream message. (Not `Transition`'s `set_pending`: that
    // creates an isomorphic effect, which on the server ran on a tokio task after the request's reactive owner was
    // disposed and panicked about once per 7,500 dashboard renders, dropping the connection.)
    let refresh = Action::new(|_: &()| get_usage_summary());
    Effect::new(move |_| {
        if let Some(Ok(summary)) = refresh.value().get() {
            // A stream message may have overtaken the refresh's answer: within a period the total only grows.
            let stale = live.with_untracked(|latest| {
                latest.as_ref().is_some_and(|l| l.period_start == summary.period_start && l.used > summary.used)
            });
            if !stale {
                live.set(Some(summary));
            }
        }
    });
    let refreshing = refresh.pending();
    // After a failed first read there is no meter to update: read the resource again instead.
    let reread = move || {
        if summary.get_untracked().is_some_and(|read| read.is_err()) {
            rereads.update(|n| *n += 1);
        } else {
            refresh.dispatch(());
        }
    };
    let i18n = use_i18n();
    let switch_language = move |ev: leptos::ev::MouseEvent| {
        ev.prevent_default();
        i18n.set_locale(if i18n.get_locale() == Locale::en { Locale::ja } else { Locale::en });
    };
    let live_state = RwSignal::new(LiveState::Connecting);
    #[cfg(feature = "hydrate")]
    live_updates(live, live_state);
    view! {
        <header class="topbar">
            <span class="topbar__brand">"Tally"</span>
            <span class="topbar__user" data-testid="user-email">
                <Suspense fallback=|| ()>{email}</Suspense>
            </span>
            // A link, so that it also works without JavaScript (the server sets the cookie and sends you back);
            // with JavaScript the page switches in place.
            <a
                class="topbar__language"
                data-testid="language"
                href=move || format!("/language/{}", if i18n.get_locale() == Locale::en { "ja" } else { "en" })
                aria-label=move || t_string!(i18n, other_language_label)
                on:click=switch_language
            >
                {t!(i18n, other_language)}
            </a>
            <ActionForm action=logout attr:class="topbar__logout">
                <button type="submit" data-testid="logout">{t!(i18n, sign_out)}</button>
            </ActionForm>
        </header>
        <section class="card">
            <Transition fallback=move || view! { <p class="loading">{t!(i18n, loading)}</p> }>
                {move || Suspend::new(async move {
                    match summary.await {
                        Ok(summary) => EitherOf3::A(view! { <UsageCard summary live /> }),
                        Err(AppError::Unauthorized) => EitherOf3::B(view! { <Redirect path="/login" /> }),
                        Err(err) => EitherOf3::C(usage_error(err)),
                    }
                })}
            </Transition>
            <button
                class="button-secondary"
                data-testid="refresh-usage"
                disabled=refreshing
                on:click=move |_| reread()
            >
                {move || if refreshing.get() { t_string!(i18n, refreshing) } else { t_string!(i18n, refresh) }}
            </button>
            {move || refresh.value().get().and_then(Result::err).map(usage_error)}
            {live_status(live_state)}
        </section>
        <UsageAlerts live />
        <UsageHistoryCard live />
        <section class="card">
            <AiPrompt on_answer=move |_| reread() />
        </section>
        <BillingHistory />
        <ApiKeys />
    }
}

/// Why the usage could not be read (first read or a refresh).
fn usage_error(err: AppError) -> impl IntoView {
    view! { <ErrorNotice err test_id="usage-error" /> }
}

/// The meter, kept current by the live stream: it starts from the server-rendered summary and takes every newer
/// total the stream delivers (only changes after it was created, so a fresh refetch is never overwritten by an
/// older stream value).
#[component]
fn UsageCard(summary: UsageSummary, live: RwSignal<Option<UsageSummary>>) -> impl IntoView {
    let current = RwSignal::new(summary);
    Effect::watch(
        move || live.get(),
        move |latest, _, _| {
            if let Some(latest) = latest {
                current.set(latest.clone());
            }
        },
        false,
    );
    let used = Signal::derive(move || current.with(|s| s.used));
    let limit = Signal::derive(move || current.with(|s| s.limit));
    let i18n = use_i18n();
    let first = move || crate::i18n::day(i18n.get_locale(), &current.with(|s| s.period_first_day.clone()));
    let last = move || crate::i18n::day(i18n.get_locale(), &current.with(|s| s.period_last_day.clone()));
    let tz = move || current.with(|s| s.timezone.clone());
    view! {
        <UsageMeter used limit />
        <p class="usage-period" data-testid="usage-period">{t!(i18n, billing_period, first, last, tz)}</p>
    }
}

/// Whether the live stream is feeding the meter, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Only the browser's stream moves it on; the server renders the first state.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
enum LiveState {
    /// Before the stream's first answer (and always without JavaScript): nothing to say yet.
    Connecting,
    /// The stream is open: the numbers on the page are current.
    Live,
    /// The stream failed and is being re-opened: the numbers may be behind until it is back.
    Interrupted,
}

impl LiveState {
    fn as_str(self) -> &'static str {
        match self {
            LiveState::Connecting => "connecting",
            LiveState::Live => "live",
            LiveState::Interrupted => "interrupted",
        }
    }
}

/// Says so while live updates are interrupted: a meter that silently stopped moving would show a number that may
/// no longer be true.
fn live_status(state: RwSignal<LiveState>) -> impl IntoView {
    let i18n = use_i18n();
    view! {
        <p class="live-status" role="status" data-testid="live-status" data-state=move || state.get().as_str()>
            {move || (state.get() == LiveState::Interrupted).then(|| t_string!(i18n, live_interrupted))}
        </p>
    }
}

/// Opens the live usage stream (server-sent events) and writes each summary into `live`, and whether it is
/// connected into `state`. The stream starts with the current total, so a reconnect misses nothing.
///
/// `EventSource` retries by itself after a network error, but gives up for good when an answer is not a 200
/// event stream (a 503 while the database is down, a proxy's 502): then the stream is opened again here, after
/// 1 s, doubling up to 30 s.
#[cfg(feature = "hydrate")]
fn live_updates(live: RwSignal<Option<UsageSummary>>, state: RwSignal<LiveState>) {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;
    use web_sys::EventSource;

    const FIRST_RETRY: Duration = Duration::from_secs(1);
    const LAST_RETRY: Duration = Duration::from_secs(30);

    type Listener = Closure<dyn FnMut(web_sys::Event)>;
    /// The open source with its listeners (kept alive as long as it is), the next re-open delay, and whether the
    /// page is gone.
    struct Stream {
        source: Option<(EventSource, [Listener; 3])>,
        retry: Duration,
        ended: bool,
    }
    type Shared = Rc<RefCell<Stream>>;

    fn open(stream: Shared, live: RwSignal<Option<UsageSummary>>, state: RwSignal<LiveState>) {
        if stream.borrow().ended {
            return;
        }
        let Ok(source) = EventSource::new(crate::usage::LIVE_PATH) else {
            reopen_later(stream, live, state);
            return;
        };
        let on_usage = {
            let stream = stream.clone();
            Listener::new(move |event: web_sys::Event| {
                let data = event.dyn_ref::<web_sys::MessageEvent>().and_then(|message| message.data().as_string());
                if let Some(summary) = data.and_then(|text| serde_json::from_str(&text).ok()) {
                    live.set(Some(summary));
                    state.set(LiveState::Live);
                    stream.borrow_mut().retry = FIRST_RETRY;
                }
            })
        };
        let on_open = Listener::new(move |_| state.set(LiveState::Live));
        let on_error = {
            let stream = stream.clone();
            Listener::new(move |_| {
                state.set(LiveState::Interrupted);
                let closed = stream
                    .borrow()
                    .source
                    .as_ref()
                    .is_some_and(|(source, _)| source.ready_state() == EventSource::CLOSED);
                if closed {
                    // The browser gave up on this source: drop it (and its listeners) from a fresh task, not
                    // from inside its own listener.
                    let stream = stream.clone();
                    set_timeout(move || reopen_later(stream, live, state), Duration::ZERO);
                }
            })
        };
        for (name, listener) in [("usage", &on_usage), ("open", &on_open), ("error", &on_error)] {
            let _ = source.add_event_listener_with_callback(name, listener.as_ref().unchecked_ref());
        }
        stream.borrow_mut().source = Some((source, [on_usage, on_open, on_error]));
    }

    fn reopen_later(stream: Shared, live: RwSignal<Option<UsageSummary>>, state: RwSignal<LiveState>) {
        let delay = {
            let mut stream = stream.borrow_mut();
            if let Some((source, _listeners)) = stream.source.take() {
                source.close();
            }
            let delay = stream.retry;
            stream.retry = (delay * 2).min(LAST_RETRY);
            delay
        };
        set_timeout(move || open(stream, live, state), delay);
    }

    let stream = Rc::new(RefCell::new(Stream { source: None, retry: FIRST_RETRY, ended: false }));
    open(stream.clone(), live, state);
    let held = StoredValue::new_local(stream);
    on_cleanup(move || {
        let _ = held.try_with_value(|stream| {
            let mut stream = stream.borrow_mut();
            stream.ended = true;
            if let Some((source, _listeners)) = stream.source.take() {
                source.close();
            }
        });
    });
}

//! The user's subscription status and invoices.

use leptos::either::{Either, EitherOf3};
use leptos::prelude::*;

use crate::billing::{BillingOverview, MeterSync, OpenBillingPortal, StartCheckout};
use crate::components::ErrorNotice;
use crate::i18n::{td, td_string, use_i18n, Locale};

/// Subscription status and billing history: a region, so the live island's re-reads also bring the state of the
/// delivery to Stripe up to date.
#[component]
pub fn BillingHistory(overview: BillingOverview) -> impl IntoView {
    let locale = use_i18n().get_locale_untracked();
    view! {
        <section class="card billing" aria-labelledby="billing-title" data-testid="billing">
            <h2 id="billing-title">{td!(locale, billing_title)}</h2>
            <div data-region="billing"><Overview overview /></div>
        </section>
    }
}

#[component]
fn Overview(overview: BillingOverview) -> impl IntoView {
    let locale = use_i18n().get_locale_untracked();
    let subscription = match overview.subscription {
        Some(s) => {
            let alert = matches!(s.status.as_str(), "past_due" | "unpaid" | "incomplete");
            let line = move || {
                let mut line =
                    td_string!(locale, subscription_line, status = subscription_status(locale, &s.status)).to_string();
                if let (Some(start), Some(end)) = (s.current_period_start, s.current_period_end) {
                    let (first, last) = (crate::i18n::utc_day(locale, start), crate::i18n::utc_day(locale, end));
                    line += &td_string!(locale, subscription_period, first, last).to_string();
                }
                if s.cancel_at_period_end {
                    line += td_string!(locale, subscription_ends);
                }
                line
            };
            Either::Left(view! {
                <p class="billing__status" class:billing__status--alert=alert data-testid="subscription-status">
                    {line}
                </p>
            })
        }
        None => Either::Right(
            view! { <p class="muted" data-testid="subscription-status">{td!(locale, no_subscription)}</p> },
        ),
    };
    let duplicate = overview.duplicate_subscription.then(|| {
        view! {
            <p class="billing__status billing__status--alert" role="alert" data-testid="duplicate-subscription">
                {td!(locale, duplicate_subscription)}
            </p>
        }
    });
    let cycles = if overview.cycles.is_empty() {
        Either::Left(view! { <p class="muted">{td!(locale, no_invoices)}</p> })
    } else {
        Either::Right(view! {
            <table class="data-table" data-testid="billing-history">
                <thead>
                    <tr>
                        <th scope="col">{td!(locale, period)}</th>
                        <th scope="col">{td!(locale, amount)}</th>
                        <th scope="col">{td!(locale, status)}</th>
                    </tr>
                </thead>
                <tbody>
                    {overview
                        .cycles
                        .into_iter()
                        .map(|cycle| {
                            let failed = cycle.status != "paid";
                            view! {
                                <tr data-testid="billing-row" class:billing__row--failed=failed>
                                    <td>
                                        {move || {
                                            crate::i18n::day_range(locale, &cycle.first_day, &cycle.last_day)
                                        }}
                                    </td>
                                    <td class="billing__amount">
                                        {move || crate::i18n::money(locale, cycle.amount_paid, &cycle.currency)}
                                    </td>
                                    <td>
                                        {move || if failed { Either::Left(td!(locale, payment_failed)) } else { Either::Right(td!(locale, paid)) }}
                                    </td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        })
    };
    let subscribe = overview.can_subscribe.then(|| view! { <Subscribe /> });
    let manage = overview.can_manage.then(|| view! { <ManageBilling /> });
    view! {
        {subscription}
        {duplicate}
        {subscribe}
        {manage}
        <SyncState sync=overview.sync />
        {cycles}
    }
}

/// How much of the user's usage has reached Stripe, and why the rest has not.
#[component]
fn SyncState(sync: MeterSync) -> impl IntoView {
    let locale = use_i18n().get_locale_untracked();
    let count = move |n: i64| move || crate::i18n::events(locale, n);
    let pending = (sync.pending > 0).then(|| {
        let events = count(sync.pending);
        let line = match (&sync.last_retry_error, sync.stripe_configured) {
            (_, false) => EitherOf3::A(td!(locale, sync_pending_unconfigured, events)),
            (Some(error), true) => {
                let error = error.clone();
                EitherOf3::B(td!(locale, sync_pending_retrying, events, error = move || error.clone()))
            }
            (None, true) => EitherOf3::C(td!(locale, sync_pending, events)),
        };
        view! { <li data-sync="pending">{line}</li> }
    });
    let awaiting = (sync.awaiting_customer > 0).then(|| {
        let events = count(sync.awaiting_customer);
        view! { <li data-sync="awaiting">{td!(locale, sync_awaiting, events)}</li> }
    });
    let failed = (sync.failed > 0).then(|| {
        let events = count(sync.failed);
        let reason = sync.last_failure.clone().unwrap_or_default();
        view! { <li data-sync="failed">{td!(locale, sync_failed, events, reason = move || reason.clone())}</li> }
    });
    let expired = (sync.expired > 0).then(|| {
        let events = count(sync.expired);
        view! { <li data-sync="expired">{td!(locale, sync_expired, events)}</li> }
    });
    let reported = (sync.reported_by_stripe > 0).then(|| {
        let events = count(sync.reported_by_stripe);
        let reason = sync.last_report.clone().unwrap_or_default();
        view! { <li data-sync="reported">{td!(locale, sync_reported_error, events, reason = move || reason.clone())}</li> }
    });
    let delivered = count(sync.delivered);
    view! {
        <div class="billing__sync" data-testid="stripe-sync">
            <p>{td!(locale, sync_reported, events = delivered)}</p>
            <ul>{pending} {awaiting} {failed} {expired} {reported}</ul>
        </div>
    }
}

/// Opens Stripe Checkout (the server answers with a redirect; without JavaScript the form posts and follows it).
#[component]
fn Subscribe() -> impl IntoView {
    let checkout = ServerAction::<StartCheckout>::new();
    let locale = use_i18n().get_locale_untracked();
    view! {
        <ActionForm action=checkout attr:class="billing__subscribe">
            <button type="submit" data-testid="subscribe">
                {td!(locale, subscribe)}
            </button>
            {move || {
                checkout
                    .value()
                    .get()
                    .and_then(Result::err)
                    .map(|err| view! { <ErrorNotice err /> })
            }}
        </ActionForm>
    }
}

/// Opens Stripe's customer portal: a plain form, so it works without JavaScript too (the server answers with a
/// redirect to the portal, whose return link leads back here).
#[component]
fn ManageBilling() -> impl IntoView {
    let portal = ServerAction::<OpenBillingPortal>::new();
    let locale = use_i18n().get_locale_untracked();
    view! {
        <ActionForm action=portal attr:class="billing__manage">
            <button type="submit" class="button-secondary" data-testid="manage-billing">
                {td!(locale, manage_billing)}
            </button>
            {move || portal.value().get().and_then(Result::err).map(|err| view! { <ErrorNotice err /> })}
        </ActionForm>
    }
}

/// A Stripe subscription status in `locale` (Stripe's own word for statuses it may add later).
fn subscription_status(locale: Locale, status: &str) -> String {
    match status {
        "active" => td_string!(locale, subscription_active).to_string(),
        "trialing" => td_string!(locale, subscription_trialing).to_string(),
        "past_due" => td_string!(locale, subscription_past_due).to_string(),
        "canceled" => td_string!(locale, subscription_canceled).to_string(),
        "unpaid" => td_string!(locale, subscription_unpaid).to_string(),
        "incomplete" => td_string!(locale, subscription_incomplete).to_string(),
        "incomplete_expired" => td_string!(locale, subscription_incomplete_expired).to_string(),
        "paused" => td_string!(locale, subscription_paused).to_string(),
        other => other.replace('_', " "),
    }
}

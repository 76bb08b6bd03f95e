//! The user's subscription status and invoices.

use leptos::prelude::*;

use crate::billing::{format_money, get_billing_overview, BillingOverview, MeterSync, StartCheckout};
use crate::components::usage_meter::format_thousands;

/// Subscription status and billing history.
#[component]
pub fn BillingHistory() -> impl IntoView {
    let overview = Resource::new(|| (), |_| get_billing_overview());
    view! {
        <section class="card billing" aria-labelledby="billing-title" data-testid="billing">
            <h2 id="billing-title">"Billing"</h2>
            <Suspense fallback=|| view! { <p class="loading">"Loading billing…"</p> }>
                {move || Suspend::new(async move {
                    match overview.await {
                        Ok(overview) => view! { <Overview overview /> }.into_any(),
                        Err(err) => view! { <p class="form-error" role="alert">{err.to_string()}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

#[component]
fn Overview(overview: BillingOverview) -> impl IntoView {
    let subscription = match overview.subscription {
        Some(s) => {
            let period = match (s.current_period_start, s.current_period_end) {
                (Some(start), Some(end)) => {
                    format!(" · current period {} – {} (UTC)", start.format("%Y-%m-%d"), end.format("%Y-%m-%d"))
                }
                _ => String::new(),
            };
            let ending = if s.cancel_at_period_end { " · ends at period end" } else { "" };
            let alert = matches!(s.status.as_str(), "past_due" | "unpaid" | "incomplete");
            view! {
                <p class="billing__status" class:billing__status--alert=alert data-testid="subscription-status">
                    {format!("Subscription: {}{period}{ending}", s.status.replace('_', " "))}
                </p>
            }
            .into_any()
        }
        None => view! { <p class="muted" data-testid="subscription-status">"No subscription yet."</p> }.into_any(),
    };
    let cycles = if overview.cycles.is_empty() {
        view! { <p class="muted">"No invoices yet."</p> }.into_any()
    } else {
        view! {
            <table class="data-table" data-testid="billing-history">
                <thead>
                    <tr>
                        <th scope="col">"Period"</th>
                        <th scope="col">"Amount"</th>
                        <th scope="col">"Status"</th>
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
                                    <td>{format!("{} – {}", cycle.first_day, cycle.last_day)}</td>
                                    <td class="billing__amount">{format_money(cycle.amount_paid, &cycle.currency)}</td>
                                    <td>{if failed { "payment failed" } else { "paid" }}</td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        }
        .into_any()
    };
    let subscribe = overview.can_subscribe.then(|| view! { <Subscribe /> });
    view! {
        {subscription}
        {subscribe}
        <SyncState sync=overview.sync />
        {cycles}
    }
}

/// How much of the user's usage has reached Stripe, and why the rest has not.
#[component]
fn SyncState(sync: MeterSync) -> impl IntoView {
    let events = |n: i64| format!("{} event{}", format_thousands(n), if n == 1 { "" } else { "s" });
    let mut lines: Vec<(&'static str, String)> = Vec::new();
    if sync.pending > 0 {
        let why = if !sync.stripe_configured {
            " (Stripe is not configured on this server yet; they are kept and sent once it is)".to_owned()
        } else if let Some(error) = &sync.last_retry_error {
            format!(" (retrying; Stripe's last answer: {error})")
        } else {
            " (being sent)".to_owned()
        };
        lines.push(("pending", format!("{} waiting to be sent to Stripe{why}", events(sync.pending))));
    }
    if sync.awaiting_customer > 0 {
        let line = format!("{} waiting for your Stripe customer account to be set up", events(sync.awaiting_customer));
        lines.push(("awaiting", line));
    }
    if sync.failed > 0 {
        let reason = sync.last_failure.as_deref().unwrap_or("no reason given");
        lines.push(("failed", format!("{} refused by Stripe: {reason}", events(sync.failed))));
    }
    if sync.expired > 0 {
        let line = format!("{} older than the 35 days Stripe accepts, not sent", events(sync.expired));
        lines.push(("expired", line));
    }
    let summary = format!("Usage reported to Stripe: {}", events(sync.delivered));
    view! {
        <div class="billing__sync" data-testid="stripe-sync">
            <p>{summary}</p>
            <ul>
                {lines
                    .into_iter()
                    .map(|(kind, line)| view! { <li data-sync=kind>{line}</li> })
                    .collect_view()}
            </ul>
        </div>
    }
}

/// Opens Stripe Checkout (the server answers with a redirect; without JavaScript the form posts and follows it).
#[component]
fn Subscribe() -> impl IntoView {
    let checkout = ServerAction::<StartCheckout>::new();
    view! {
        <ActionForm action=checkout attr:class="billing__subscribe">
            <button type="submit" data-testid="subscribe" disabled=move || checkout.pending().get()>
                "Subscribe"
            </button>
            {move || {
                checkout
                    .value()
                    .get()
                    .and_then(Result::err)
                    .map(|err| view! { <p class="form-error" role="alert">{err.to_string()}</p> })
            }}
        </ActionForm>
    }
}

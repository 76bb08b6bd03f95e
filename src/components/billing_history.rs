//! The user's subscription status and invoices.

use leptos::prelude::*;

use crate::billing::{format_money, get_billing_overview, BillingOverview, StartCheckout};

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
        {cycles}
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

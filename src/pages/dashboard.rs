//! `/`: the signed-in user's dashboard with the UsageMeter.

use leptos::prelude::*;
use leptos_router::components::Redirect;

use crate::auth::{get_current_user, Logout};
use crate::components::{AiPrompt, ApiKeys, BillingHistory, UsageMeter};
use crate::error::AppError;
use crate::usage::{get_usage_summary, UsageSummary};

/// The dashboard; visitors without a session are sent to `/login`.
#[component]
pub fn DashboardPage() -> impl IntoView {
    let user = Resource::new(|| (), |_| get_current_user());
    view! {
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match user.await {
                    Ok(Some(user)) => view! { <Dashboard email=user.email /> }.into_any(),
                    Ok(None) | Err(AppError::Unauthorized) => view! { <Redirect path="/login" /> }.into_any(),
                    Err(err) => view! { <p class="form-error" role="alert">{err.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Dashboard(email: String) -> impl IntoView {
    let logout = ServerAction::<Logout>::new();
    let summary = Resource::new(|| (), |_| get_usage_summary());
    let (refreshing, set_refreshing) = signal(false);
    view! {
        <header class="topbar">
            <span class="topbar__brand">"Tally"</span>
            <span class="topbar__user" data-testid="user-email">{email}</span>
            <ActionForm action=logout attr:class="topbar__logout">
                <button type="submit" data-testid="logout">"Sign out"</button>
            </ActionForm>
        </header>
        <section class="card">
            <Transition
                fallback=|| view! { <p class="loading">"Loading usage…"</p> }
                set_pending=set_refreshing
            >
                {move || Suspend::new(async move {
                    match summary.await {
                        Ok(summary) => view! { <UsageCard summary /> }.into_any(),
                        Err(AppError::Unauthorized) => view! { <Redirect path="/login" /> }.into_any(),
                        Err(err) => {
                            view! { <p class="form-error" role="alert" data-testid="usage-error">{err.to_string()}</p> }
                                .into_any()
                        }
                    }
                })}
            </Transition>
            <button
                class="button-secondary"
                data-testid="refresh-usage"
                disabled=refreshing
                on:click=move |_| summary.refetch()
            >
                {move || if refreshing.get() { "Refreshing…" } else { "Refresh" }}
            </button>
        </section>
        <section class="card">
            <AiPrompt on_answer=move |_| summary.refetch() />
        </section>
        <BillingHistory />
        <ApiKeys />
    }
}

#[component]
fn UsageCard(summary: UsageSummary) -> impl IntoView {
    let period =
        format!("Billing period {} – {} ({})", summary.period_first_day, summary.period_last_day, summary.timezone);
    view! {
        <UsageMeter label="AI tokens this period" used=summary.used limit=summary.limit />
        <p class="usage-period" data-testid="usage-period">{period}</p>
    }
}

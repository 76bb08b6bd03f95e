//! The user's API keys: list, create (the secret is shown once), revoke.

use leptos::either::Either;
use leptos::prelude::*;

use crate::auth::{ApiKeyInfo, RevokeApiKey};
use crate::components::ErrorNotice;
use crate::i18n::{t, t_string, use_i18n};
use crate::islands::NewApiKey;

/// Manages the signed-in user's API keys. The form that makes one is an island (it shows the secret once); the
/// table is a region, re-read by the island after a key is made; revoking is a plain form.
#[component]
pub fn ApiKeys(
    keys: Vec<ApiKeyInfo>,
    /// The page's language (`"en"` or `"ja"`), and what to say when the server cannot be reached, for the island.
    lang: &'static str,
    unreachable: String,
) -> impl IntoView {
    let revoke = ServerAction::<RevokeApiKey>::new();
    let i18n = use_i18n();
    let table = if keys.is_empty() {
        Either::Left(view! { <p class="muted">{t!(i18n, no_keys)}</p> })
    } else {
        Either::Right(view! { <KeyTable keys revoke /> })
    };
    view! {
        <section class="card api-keys" aria-labelledby="api-keys-title">
            <h2 id="api-keys-title">{t!(i18n, api_keys_title)}</h2>
            <p class="muted">
                {t!(
                    i18n,
                    api_keys_hint,
                    header = || view! { <code>"Authorization: Bearer <key>"</code> },
                    endpoint = || view! { <code>"POST /api/usage/record"</code> }
                )}
            </p>
            <NewApiKey
                lang
                name=t_string!(i18n, name).to_string()
                placeholder=t_string!(i18n, key_name_placeholder).to_string()
                create=t_string!(i18n, create_key).to_string()
                copy_now=t_string!(i18n, copy_key_now).to_string()
                unreachable
            />
            {move || revoke.value().get().and_then(Result::err).map(|err| view! { <ErrorNotice err /> })}
            <div data-region="keys">{table}</div>
        </section>
    }
}

#[component]
fn KeyTable(keys: Vec<ApiKeyInfo>, revoke: ServerAction<RevokeApiKey>) -> impl IntoView {
    let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "—".into())
    };
    let i18n = use_i18n();
    view! {
        <table class="data-table api-keys__table" data-testid="key-table">
            <thead>
                <tr>
                    <th scope="col">{t!(i18n, name)}</th>
                    <th scope="col">{t!(i18n, key)}</th>
                    <th scope="col">{t!(i18n, created)}</th>
                    <th scope="col">{t!(i18n, last_used)}</th>
                    <th scope="col">
                        <span class="visually-hidden">{t!(i18n, actions)}</span>
                    </th>
                </tr>
            </thead>
            <tbody>
                {keys
                    .into_iter()
                    .map(|key| {
                        let revoked = key.revoked_at.is_some();
                        view! {
                            <tr data-testid="key-row" class:revoked=revoked>
                                <td>{key.name.clone()}</td>
                                <td>
                                    <code>{format!("{}…", key.display_prefix)}</code>
                                </td>
                                <td>
                                    {move || crate::i18n::utc_day(i18n.get_locale(), key.created_at)}
                                </td>
                                <td>{when(key.last_used_at)}</td>
                                <td>
                                    {if revoked {
                                        Either::Left(view! { <span class="muted">{t!(i18n, revoked)}</span> })
                                    } else {
                                        Either::Right(view! {
                                            <ActionForm action=revoke>
                                                <input type="hidden" name="id" value=key.id.to_string() />
                                                <button type="submit" class="button-danger" data-testid="key-revoke">
                                                    {t!(i18n, revoke)}
                                                </button>
                                            </ActionForm>
                                        })
                                    }}
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
}

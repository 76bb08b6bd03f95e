//! The user's API keys: list, create (the secret is shown once), revoke.

use leptos::either::Either;
use leptos::prelude::*;

use crate::auth::{ApiKeyInfo, RevokeApiKey};
use crate::components::ErrorNotice;
use crate::i18n::{td, td_string, use_i18n};
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
    let locale = use_i18n().get_locale_untracked();
    let table = if keys.is_empty() {
        Either::Left(view! { <p class="muted">{td!(locale, no_keys)}</p> })
    } else {
        Either::Right(view! { <KeyTable keys revoke /> })
    };
    view! {
        <section class="card api-keys" aria-labelledby="api-keys-title">
            <h2 id="api-keys-title">{td!(locale, api_keys_title)}</h2>
            <p class="muted">
                {td!(locale,
                    api_keys_hint,
                    header = || view! { <code>"Authorization: Bearer <key>"</code> },
                    endpoint = || view! { <code>"POST /api/usage/record"</code> }
                )}
            </p>
            <NewApiKey
                lang
                name=td_string!(locale, name).to_string()
                placeholder=td_string!(locale, key_name_placeholder).to_string()
                create=td_string!(locale, create_key).to_string()
                copy_now=td_string!(locale, copy_key_now).to_string()
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
    let locale = use_i18n().get_locale_untracked();
    view! {
        <table class="data-table api-keys__table" data-testid="key-table">
            <thead>
                <tr>
                    <th scope="col">{td!(locale, name)}</th>
                    <th scope="col">{td!(locale, key)}</th>
                    <th scope="col">{td!(locale, created)}</th>
                    <th scope="col">{td!(locale, last_used)}</th>
                    <th scope="col">
                        <span class="visually-hidden">{td!(locale, actions)}</span>
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
                                    {move || crate::i18n::utc_day(locale, key.created_at)}
                                </td>
                                <td>{when(key.last_used_at)}</td>
                                <td>
                                    {if revoked {
                                        Either::Left(view! { <span class="muted">{td!(locale, revoked)}</span> })
                                    } else {
                                        Either::Right(view! {
                                            <ActionForm action=revoke>
                                                <input type="hidden" name="id" value=key.id.to_string() />
                                                <button type="submit" class="button-danger" data-testid="key-revoke">
                                                    {td!(locale, revoke)}
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

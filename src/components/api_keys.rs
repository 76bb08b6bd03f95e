//! The user's API keys: list, create (the secret is shown once), revoke.

use leptos::either::{Either, EitherOf3};
use leptos::prelude::*;

use crate::auth::{list_api_keys, ApiKeyInfo, CreateApiKey, RevokeApiKey};
use crate::components::ErrorNotice;
use crate::i18n::{t, t_string, use_i18n};

/// Manages the signed-in user's API keys.
#[component]
pub fn ApiKeys() -> impl IntoView {
    let create = ServerAction::<CreateApiKey>::new();
    let revoke = ServerAction::<RevokeApiKey>::new();
    let seed = use_context::<crate::dashboard::Seed>();
    let keys = Resource::new(
        move || (create.version().get(), revoke.version().get()),
        move |versions| crate::dashboard::Seed::or_fetch(seed, versions == (0, 0), |d| d.api_keys, list_api_keys),
    );
    let i18n = use_i18n();

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
            <ActionForm action=create attr:class="api-keys__create">
                <label>
                    {t!(i18n, name)}
                    <input type="text" name="name" required maxlength="100" placeholder=move || t_string!(i18n, key_name_placeholder) data-testid="key-name" />
                </label>
                <button type="submit" data-testid="key-create">{t!(i18n, create_key)}</button>
            </ActionForm>
            {move || {
                create
                    .value()
                    .get()
                    .map(|result| match result {
                        Ok(created) => {
                            Either::Left(view! {
                                <div class="api-keys__secret" role="status">
                                    <p>{t!(i18n, copy_key_now)}</p>
                                    <code data-testid="key-secret">{created.secret}</code>
                                </div>
                            })
                        }
                        Err(err) => Either::Right(view! { <ErrorNotice err /> }),
                    })
            }}
            <Transition fallback=move || view! { <p class="loading">{t!(i18n, loading)}</p> }>
                {move || Suspend::new(async move {
                    match keys.await {
                        Ok(list) if list.is_empty() => EitherOf3::A(view! { <p class="muted">{t!(i18n, no_keys)}</p> }),
                        Ok(list) => EitherOf3::B(view! { <KeyTable keys=list revoke /> }),
                        Err(err) => EitherOf3::C(view! { <ErrorNotice err /> }),
                    }
                })}
            </Transition>
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

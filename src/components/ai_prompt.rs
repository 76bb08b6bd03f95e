//! A prompt box that calls the AI route; the caller refreshes the meter when an answer arrives.

use leptos::either::Either;
use leptos::prelude::*;

use crate::ai::Generate;
use crate::components::ErrorNotice;
use crate::i18n::{t, t_string, use_i18n};

/// Prompt box. `on_answer` runs after each successful generation (the dashboard re-reads the meter then).
#[component]
pub fn AiPrompt(#[prop(into)] on_answer: Callback<()>) -> impl IntoView {
    let generate = ServerAction::<Generate>::new();
    let prompt = RwSignal::new(String::new());
    let i18n = use_i18n();
    Effect::new(move |_| {
        if let Some(Ok(_)) = generate.value().get() {
            on_answer.run(());
        }
    });
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        generate.dispatch(Generate { prompt: prompt.get_untracked() });
    };
    view! {
        <form class="ai-prompt" on:submit=submit>
            <label for="ai-prompt-text">{t!(i18n, ai_label)}</label>
            <textarea
                id="ai-prompt-text"
                name="prompt"
                rows="3"
                maxlength=crate::ai::MAX_PROMPT_CHARS
                data-testid="ai-prompt"
                prop:value=move || prompt.get()
                on:input=move |ev| prompt.set(event_target_value(&ev))
            ></textarea>
            <button type="submit" data-testid="ai-submit" disabled=move || generate.pending().get()>
                {move || if generate.pending().get() { t_string!(i18n, thinking) } else { t_string!(i18n, generate) }}
            </button>
            {move || {
                generate
                    .value()
                    .get()
                    .map(|result| match result {
                        Ok(answer) => {
                            Either::Left(view! {
                                <div class="ai-prompt__answer" data-testid="ai-answer">
                                    <p>{answer.text}</p>
                                    <p class="ai-prompt__tokens" data-testid="ai-tokens">
                                        {t!(
                                            i18n,
                                            ai_tokens_line,
                                            total = crate::format::thousands(answer.total_tokens),
                                            prompt = crate::format::thousands(answer.prompt_tokens),
                                            completion = crate::format::thousands(answer.completion_tokens),
                                            model = answer.model.clone()
                                        )}
                                    </p>
                                </div>
                            })
                        }
                        Err(err) => {
                            Either::Right(view! {
                                <ErrorNotice err test_id="ai-error" />
                            })
                        }
                    })
            }}
        </form>
    }
}

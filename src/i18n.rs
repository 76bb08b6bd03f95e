//! English and Japanese, with `leptos_i18n`: translations are checked at compile time, the locale comes from the
//! `i18n_pref_locale` cookie (set by the language toggle) or else the browser's `Accept-Language`, on the server
//! as in the browser. Numbers, yen amounts and dates are formatted for the locale by the helpers below.

leptos_i18n::declare_locales! {
    path: leptos_i18n,
    // Messages with values as plain strings too (`td_string!`), for errors worded outside a view.
    interpolate_display,
    default: "en",
    locales: ["en", "ja"],
    en: {
        other_language: "日本語",
        other_language_label: "Switch to Japanese",
        sign_out: "Sign out",
        loading: "Loading…",
        refresh: "Refresh",
        refreshing: "Refreshing…",
        meter_label: "{{ label }} this period",
        no_limit: "no limit",
        limit_reached: "Limit reached: new usage is refused until the next period.",
        billing_period: "Billing period {{ first }} – {{ last }} ({{ tz }})",
        alerts_title: "Alerts",
        no_alerts: "No alerts this period. You are told at 80 %, 90 % and 100 % of each limit, and at the alerts you set below.",
        alert_notice: "{{ label }}: {{ threshold }} % of your limit reached: {{ used }} of {{ limit }} {{ unit }}, at {{ at }} ({{ tz }})",
        alert_rule_notice: "{{ label }} reached your alert at {{ amount }}: {{ used }}, at {{ at }} ({{ tz }})",
        alert_add_label: "Alert me when this period's usage reaches",
        alert_meter_label: "Meter",
        alert_unit_label: "In",
        alert_unit_units: "units",
        alert_unit_money: "money ({{ sign }})",
        alert_add: "Add alert",
        remove: "Remove",
        alert_url_label: "Also send alerts to this URL (signed webhook; leave empty for none)",
        save: "Save",
        signing_secret: "Signing secret (Standard Webhooks, HMAC-SHA256): ",
        history_title: "Daily usage",
        period: "Period",
        show: "Show",
        download_csv: "Download CSV",
        table: "Table",
        day: "Day",
        tokens: "Tokens",
        history_caption: "{{ first }} – {{ last }} ({{ tz }}): {{ total }} tokens in total",
        history_empty: "No usage in this period yet.",
        billing_title: "Billing",
        no_subscription: "No subscription yet.",
        no_invoices: "No invoices yet.",
        amount: "Amount",
        status: "Status",
        paid: "paid",
        payment_failed: "payment failed",
        subscribe: "Subscribe",
        manage_billing: "Manage billing",
        sync_reported: "Usage reported to Stripe: {{ events }}",
        sync_pending_unconfigured: "{{ events }} waiting to be sent to Stripe (Stripe is not configured on this server yet; they are kept and sent once it is)",
        sync_pending_retrying: "{{ events }} waiting to be sent to Stripe (retrying; Stripe's last answer: {{ error }})",
        sync_pending: "{{ events }} waiting to be sent to Stripe (being sent)",
        sync_awaiting: "{{ events }} waiting for your Stripe customer account to be set up",
        sync_failed: "{{ events }} refused by Stripe: {{ reason }}",
        sync_expired: "{{ events }} older than the 35 days Stripe accepts, not sent",
        sync_reported_error: "Stripe reported that it could not count {{ events }}: {{ reason }}",
        live_interrupted: "Live updates are interrupted; reconnecting. The numbers may be behind until then.",
        refresh_failed: "The usage could not be read again; the numbers shown may be behind. Try again in a moment.",
        meter_value_text: "{{ used }} of {{ limit }} {{ unit }} ({{ percent }}%)",
        meter_cost: "{{ cost }} so far",
        meter_forecast: "Forecast {{ cost }} by {{ day }}, if usage keeps this period's pace ({{ used }} {{ unit }})",
        meter_forecast_capped: "Forecast {{ cost }} by {{ day }}: at this period's pace your limit of {{ used }} {{ unit }} is reached before then",
        history_bar_label: "{{ day }}: {{ tokens }} tokens",
        period_range: "{{ first }} – {{ last }}",
        subscription_line: "Subscription: {{ status }}",
        subscription_period: " · current period {{ first }} – {{ last }} (UTC)",
        subscription_ends: " · ends at period end",
        subscription_active: "active",
        subscription_trialing: "trialing",
        subscription_past_due: "past due",
        subscription_canceled: "canceled",
        subscription_unpaid: "unpaid",
        subscription_incomplete: "incomplete",
        subscription_incomplete_expired: "incomplete, expired",
        subscription_paused: "paused",
        ai_tokens_line: "{{ total }} tokens ({{ prompt }} prompt + {{ completion }} completion) · {{ model }}",
        copy_key_now: "Copy this key now: it is not shown again.",
        actions: "Actions",
        revoked: "revoked",
        key_name_placeholder: "e.g. production",
        page_not_found: "Page not found.",
        error_sign_in: "please sign in",
        error_invalid_credentials: "email or password is incorrect",
        error_too_large: "the request body is larger than {{ kib }} KiB",
        error_invalid_events: "{{ count }} of the events are invalid; nothing was recorded",
        error_limit_exceeded: "usage limit reached: {{ remaining }} of {{ limit }} remain this period",
        error_too_many_attempts: "too many failed sign-in attempts; try again in {{ minutes }} minutes",
        error_internal: "something went wrong on our side; please try again",
        error_transport: "could not reach Tally: {{ detail }}",
        error_unreachable: "could not reach Tally; check the connection and try again",
        error_bad_request: "malformed request: {{ detail }}",
        problem_email_missing: "enter your email address",
        problem_email_too_long: "email must be at most {{ max }} characters",
        problem_email_invalid: "\"{{ email }}\" is not a valid email address",
        problem_password_too_short: "password must be at least {{ min }} characters",
        problem_password_too_long: "password must be at most {{ max }} characters",
        problem_account_exists: "an account for {{ email }} already exists",
        problem_prompt_missing: "write a prompt first",
        problem_prompt_characters: "the prompt must not contain control characters other than line breaks and tabs",
        problem_prompt_too_long: "a prompt may have at most {{ max }} characters",
        problem_key_name_length: "key name must be 1 to 100 characters, without control characters",
        problem_no_such_key: "no such API key",
        problem_url_invalid: "\"{{ url }}\" is not a URL",
        problem_url_not_web: "the alert URL must be an http:// or https:// address of at most 2,000 characters",
        problem_url_credentials: "the alert URL must not contain a user name or password",
        problem_url_private: "the alert URL must be a public address; {{ host }} is this machine or a private network",
        problem_period_malformed: "period \"{{ period }}\" is not a start time such as 2026-11-01T00:00:00+09:00",
        problem_period_unknown: "you have no billing period starting at {{ period }}; pick one from the list",
        problem_stripe_not_configured: "subscriptions are not available: Stripe is not configured",
        problem_no_stripe_customer: "there is no billing account to manage yet: it is made when your first usage is reported to Stripe, or when you subscribe",
        problem_alert_amount: "enter the alert's amount as a positive number, such as 50000 units or ¥1,500",
        problem_alert_no_price: "this meter has no price yet, so its alerts can only be set in units",
        problem_alert_too_many: "at most {{ max }} alerts can be set: remove one first",
        duplicate_subscription: "You have two live subscriptions: each bills every token. Cancel one in the billing portal or contact support.",
        problem_already_subscribed: "you already have a subscription; manage it instead of starting another (a second one would bill every token twice)",
        problem_exports_busy: "too many CSV exports are being downloaded right now; try again in a minute",
        problem_database_unavailable: "the database is not accepting writes right now; retry in a moment (with the same Idempotency-Key an event counts once)",
        api_keys_hint: "Services record usage by sending an API key as {{ header }} to {{ endpoint }}.",
        ai_label: "Ask the AI (its tokens are recorded as usage)",
        generate: "Generate",
        thinking: "Thinking…",
        api_keys_title: "API keys",
        name: "Name",
        key: "Key",
        created: "Created",
        last_used: "Last used",
        create_key: "Create key",
        revoke: "Revoke",
        no_keys: "No keys yet.",
        sign_in_title: "Sign in to Tally",
        sign_in: "Sign in",
        sign_up_title: "Create your Tally account",
        create_account: "Create account",
        email: "Email",
        password: "Password",
        no_account: "No account yet? ",
        create_one: "Create one",
        have_account: "Already have an account? ",
    },
    ja: {
        other_language: "English",
        other_language_label: "英語に切り替え",
        sign_out: "ログアウト",
        loading: "読み込み中…",
        refresh: "更新",
        refreshing: "更新中…",
        meter_label: "今期の{{ label }}",
        no_limit: "上限なし",
        limit_reached: "上限に達しました。次の期間まで新しい利用は受け付けられません。",
        billing_period: "請求期間 {{ first }} 〜 {{ last }}（{{ tz }}）",
        alerts_title: "アラート",
        no_alerts: "今期のアラートはありません。各上限の 80 %・90 %・100 % と、下で設定したアラートに達するとお知らせします。",
        alert_notice: "{{ label }}：上限の {{ threshold }} % に達しました：{{ limit }} {{ unit }}中 {{ used }}（{{ at }}、{{ tz }}）",
        alert_rule_notice: "{{ label }}が設定したアラート {{ amount }} に達しました：{{ used }}（{{ at }}、{{ tz }}）",
        alert_add_label: "今期の利用がこの値に達したら通知",
        alert_meter_label: "メーター",
        alert_unit_label: "単位",
        alert_unit_units: "単位数",
        alert_unit_money: "金額（{{ sign }}）",
        alert_add: "アラートを追加",
        remove: "削除",
        alert_url_label: "アラートをこの URL にも送信（署名付き Webhook。不要なら空欄）",
        save: "保存",
        signing_secret: "署名シークレット（Standard Webhooks、HMAC-SHA256）：",
        history_title: "日別の利用量",
        period: "期間",
        show: "表示",
        download_csv: "CSV をダウンロード",
        table: "表",
        day: "日付",
        tokens: "トークン",
        history_caption: "{{ first }} 〜 {{ last }}（{{ tz }}）：合計 {{ total }} トークン",
        history_empty: "この期間の利用はまだありません。",
        billing_title: "請求",
        no_subscription: "サブスクリプションはまだありません。",
        no_invoices: "請求書はまだありません。",
        amount: "金額",
        status: "状態",
        paid: "支払済み",
        payment_failed: "支払い失敗",
        subscribe: "購読する",
        manage_billing: "お支払いの管理",
        sync_reported: "Stripe に報告済みの利用：{{ events }}",
        sync_pending_unconfigured: "{{ events }} が Stripe への送信待ちです（このサーバーでは Stripe がまだ設定されていません。保存されており、設定後に送信されます）",
        sync_pending_retrying: "{{ events }} が Stripe への送信待ちです（再試行中。Stripe の最後の応答：{{ error }}）",
        sync_pending: "{{ events }} を Stripe に送信中です",
        sync_awaiting: "{{ events }} が Stripe の顧客アカウントの作成待ちです",
        sync_failed: "{{ events }} が Stripe に拒否されました：{{ reason }}",
        sync_expired: "{{ events }} は Stripe が受け付ける 35 日より古いため送信されていません",
        sync_reported_error: "Stripe は {{ events }} を集計できなかったと報告しました：{{ reason }}",
        live_interrupted: "リアルタイム更新が途切れています。再接続中のため、それまでの数値は最新でない可能性があります。",
        refresh_failed: "利用量を再読み込みできませんでした。表示中の数値は最新でない可能性があります。しばらくしてから再度お試しください。",
        meter_value_text: "{{ limit }} {{ unit }}のうち {{ used }}（{{ percent }}%）",
        meter_cost: "今期の料金 {{ cost }}",
        meter_forecast: "予測：{{ day }}までに {{ cost }}（今期のペースが続いた場合、{{ used }} {{ unit }}）",
        meter_forecast_capped: "予測：{{ day }}までに {{ cost }}（今期のペースでは期末より前に上限の {{ used }} {{ unit }}に達します）",
        history_bar_label: "{{ day }}：{{ tokens }} トークン",
        period_range: "{{ first }} 〜 {{ last }}",
        subscription_line: "サブスクリプション：{{ status }}",
        subscription_period: "・現在の期間 {{ first }} 〜 {{ last }}（UTC）",
        subscription_ends: "・期間の終わりに終了",
        subscription_active: "有効",
        subscription_trialing: "トライアル中",
        subscription_past_due: "支払い期限切れ",
        subscription_canceled: "解約済み",
        subscription_unpaid: "未払い",
        subscription_incomplete: "未完了",
        subscription_incomplete_expired: "未完了（期限切れ）",
        subscription_paused: "一時停止中",
        ai_tokens_line: "{{ total }} トークン（プロンプト {{ prompt }} + 応答 {{ completion }}）・{{ model }}",
        copy_key_now: "このキーを今すぐコピーしてください。二度と表示されません。",
        actions: "操作",
        revoked: "無効化済み",
        key_name_placeholder: "例：production",
        page_not_found: "ページが見つかりません。",
        error_sign_in: "ログインしてください",
        error_invalid_credentials: "メールアドレスまたはパスワードが正しくありません",
        error_too_large: "リクエストが大きすぎます（上限 {{ kib }} KiB）",
        error_invalid_events: "{{ count }} 件のイベントが不正なため、何も記録されませんでした",
        error_limit_exceeded: "使用量の上限に達しました：今期の残りは {{ limit }} のうち {{ remaining }} です",
        error_too_many_attempts: "ログインの失敗が多すぎます。{{ minutes }} 分後にもう一度お試しください",
        error_internal: "サーバー側で問題が発生しました。もう一度お試しください",
        error_transport: "Tally に接続できませんでした：{{ detail }}",
        error_unreachable: "Tally に接続できませんでした。接続を確認して、もう一度お試しください",
        error_bad_request: "リクエストの形式が正しくありません：{{ detail }}",
        problem_email_missing: "メールアドレスを入力してください",
        problem_email_too_long: "メールアドレスは {{ max }} 文字以内にしてください",
        problem_email_invalid: "「{{ email }}」は有効なメールアドレスではありません",
        problem_password_too_short: "パスワードは {{ min }} 文字以上にしてください",
        problem_password_too_long: "パスワードは {{ max }} 文字以内にしてください",
        problem_account_exists: "{{ email }} のアカウントは既に存在します",
        problem_prompt_missing: "先にプロンプトを入力してください",
        problem_prompt_characters: "プロンプトには改行とタブ以外の制御文字を含めないでください",
        problem_prompt_too_long: "プロンプトは {{ max }} 文字以内にしてください",
        problem_key_name_length: "キーの名前は制御文字を含まない 1〜100 文字にしてください",
        problem_no_such_key: "その API キーはありません",
        problem_url_invalid: "「{{ url }}」は URL ではありません",
        problem_url_not_web: "通知先 URL は 2,000 文字以内の http:// または https:// のアドレスにしてください",
        problem_url_credentials: "通知先 URL にユーザー名やパスワードを含めないでください",
        problem_url_private: "通知先 URL は公開アドレスにしてください（{{ host }} はこのマシンまたはプライベートネットワークです）",
        problem_period_malformed: "期間「{{ period }}」は 2026-11-01T00:00:00+09:00 のような開始日時ではありません",
        problem_period_unknown: "{{ period }} に始まる請求期間はありません。一覧から選んでください",
        problem_stripe_not_configured: "サブスクリプションは利用できません：Stripe が設定されていません",
        problem_no_stripe_customer: "管理できる請求アカウントがまだありません。最初の利用量が Stripe に報告されたとき、または申し込んだときに作成されます",
        problem_alert_amount: "アラートの値は正の数で入力してください（例：50000 単位、1,500 円）",
        problem_alert_no_price: "このメーターには料金がまだないため、アラートは単位数でのみ設定できます",
        problem_alert_too_many: "設定できるアラートは {{ max }} 件までです。先に 1 件削除してください",
        duplicate_subscription: "有効なサブスクリプションが 2 つあります。それぞれがすべてのトークンを請求します。どちらかを解約するか、サポートにご連絡ください。",
        problem_already_subscribed: "すでにサブスクリプションがあります。新たに申し込む代わりに既存のものを管理してください（2 つ目はすべてのトークンを二重に請求します）",
        problem_exports_busy: "現在ほかの CSV エクスポートが多数実行中です。1 分ほどしてからもう一度お試しください",
        problem_database_unavailable: "データベースが現在書き込みを受け付けていません。少し待ってから再試行してください（同じ Idempotency-Key のイベントは一度だけ数えられます）",
        api_keys_hint: "外部サービスは API キーを {{ header }} として {{ endpoint }} に送ると利用量を記録できます。",
        ai_label: "AI に質問（使用したトークンは利用量として記録されます）",
        generate: "生成",
        thinking: "考え中…",
        api_keys_title: "API キー",
        name: "名前",
        key: "キー",
        created: "作成日",
        last_used: "最終使用",
        create_key: "キーを作成",
        revoke: "無効化",
        no_keys: "キーはまだありません。",
        sign_in_title: "Tally にログイン",
        sign_in: "ログイン",
        sign_up_title: "Tally のアカウントを作成",
        create_account: "アカウントを作成",
        email: "メールアドレス",
        password: "パスワード",
        no_account: "アカウントをお持ちでない方は ",
        create_one: "こちらから作成",
        have_account: "アカウントをお持ちの方は ",
    },
}

pub use i18n::{td, td_string, use_i18n, I18nContextProvider, Locale};

/// The language `crate::format` formats for on a page in `locale`.
pub fn lang(locale: Locale) -> crate::format::Lang {
    match locale {
        Locale::ja => crate::format::Lang::Ja,
        Locale::en => crate::format::Lang::En,
    }
}

/// An amount in minor units of `currency`, as `locale` writes it ([`crate::format::money`]).
pub fn money(locale: Locale, amount_minor: i64, currency: &str) -> String {
    crate::format::money(lang(locale), amount_minor, currency)
}

/// A `YYYY-MM-DD` day as `locale` writes it ([`crate::format::day`]).
pub fn day(locale: Locale, iso_day: &str) -> String {
    crate::format::day(lang(locale), iso_day)
}

/// The UTC day of `at`, as [`day`] shows it.
pub fn utc_day(locale: Locale, at: chrono::DateTime<chrono::Utc>) -> String {
    day(locale, &at.format("%Y-%m-%d").to_string())
}

/// Two `YYYY-MM-DD` days as a range: `2026-11-01 – 2026-11-30` / `2026年11月1日 〜 2026年11月30日`.
pub fn day_range(locale: Locale, first: &str, last: &str) -> String {
    td_string!(locale, period_range, first = day(locale, first), last = day(locale, last)).to_string()
}

/// The language of a request outside a page (an error body of a server function): the `i18n_pref_locale` cookie,
/// else the best match for `Accept-Language` by leptos_i18n's own matching, read as leptos-use reads it for pages.
/// English when neither says.
#[cfg(feature = "ssr")]
pub fn request_locale(headers: &axum::http::HeaderMap) -> Locale {
    use leptos_i18n::Locale as _;
    let text = |name| headers.get(name).and_then(|value: &axum::http::HeaderValue| value.to_str().ok());
    let chosen = text(axum::http::header::COOKIE).and_then(|cookies| {
        cookies.split(';').find_map(|cookie| cookie.trim().strip_prefix("i18n_pref_locale=")?.parse::<Locale>().ok())
    });
    chosen.unwrap_or_else(|| {
        let accepted = text(axum::http::header::ACCEPT_LANGUAGE).unwrap_or_default();
        let tags: Vec<&str> = accepted.split(',').map(|tag| tag.split(';').next().unwrap_or_default().trim()).collect();
        Locale::find_locale(&tags)
    })
}

/// `n events` / `n 件`.
pub fn events(locale: Locale, n: i64) -> String {
    match locale {
        Locale::ja => format!("{} 件", crate::format::thousands(n)),
        Locale::en if n == 1 => "1 event".to_owned(),
        Locale::en => format!("{} events", crate::format::thousands(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yen_days_and_counts_follow_the_locale() {
        assert_eq!(money(Locale::ja, 1500, "jpy"), "1,500円");
        assert_eq!(money(Locale::en, 1500, "jpy"), "¥1,500");
        assert_eq!(money(Locale::ja, 190, "usd"), "$1.90");
        assert_eq!(day(Locale::ja, "2026-01-05"), "2026年1月5日");
        assert_eq!(day(Locale::en, "2026-01-05"), "2026-01-05");
        assert_eq!(events(Locale::en, 1), "1 event");
        assert_eq!(events(Locale::en, 1200), "1,200 events");
        assert_eq!(events(Locale::ja, 1200), "1,200 件");
        assert_eq!(day_range(Locale::en, "2026-11-01", "2026-11-30"), "2026-11-01 – 2026-11-30");
        assert_eq!(day_range(Locale::ja, "2026-11-01", "2026-11-30"), "2026年11月1日 〜 2026年11月30日");
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-05T23:30:00-02:00").unwrap().to_utc();
        assert_eq!(utc_day(Locale::ja, at), "2026年1月6日");
    }

    #[cfg(feature = "ssr")]
    #[test]
    fn a_requests_language_is_its_cookie_else_its_accept_language() {
        use axum::http::{header, HeaderMap, HeaderValue};
        let headers = |pairs: &[(header::HeaderName, &'static str)]| {
            pairs.iter().map(|(name, value)| (name.clone(), HeaderValue::from_static(value))).collect::<HeaderMap>()
        };
        assert_eq!(request_locale(&headers(&[])), Locale::en);
        assert_eq!(request_locale(&headers(&[(header::ACCEPT_LANGUAGE, "ja-JP,ja;q=0.9,en;q=0.8")])), Locale::ja);
        assert_eq!(request_locale(&headers(&[(header::ACCEPT_LANGUAGE, "fr-FR, en;q=0.5")])), Locale::en);
        let both = [(header::ACCEPT_LANGUAGE, "ja"), (header::COOKIE, "a=b; i18n_pref_locale=en")];
        assert_eq!(request_locale(&headers(&both)), Locale::en);
    }
}

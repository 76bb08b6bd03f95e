//! Numbers, money and days as people read them: the one owner of these rules, below the translations (`i18n.rs`
//! passes the page's language in) and every component. Integer arithmetic only: a billing number is never rounded
//! by a float.

/// The languages Tally formats for (the page locale, as `i18n.rs` maps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ja,
}

/// `1234567` → `"1,234,567"` (both languages group thousands with a comma).
pub fn thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value < 0 {
        out.push('-');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Currencies whose amounts have no minor unit (Stripe's zero-decimal list).
const ZERO_DECIMAL: &[&str] =
    &["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"];
/// Currencies with three decimals.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// Digits of `currency`'s minor unit: 0 for JPY, 3 for KWD, 2 for most.
fn decimals(currency: &str) -> u32 {
    if ZERO_DECIMAL.contains(&currency) {
        0
    } else if THREE_DECIMAL.contains(&currency) {
        3
    } else {
        2
    }
}

/// A positive whole number as a person types it: `50000`, `50,000` or `50_000`; `None` otherwise.
pub fn parse_count(text: &str) -> Option<i64> {
    let digits: String = text.trim().chars().filter(|c| !matches!(c, ',' | '_')).collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok().filter(|n| *n > 0)
}

/// A positive amount of `currency` as a person types it (`1,500`, `¥1500`, `1500円`, `12.50`, `$12.5`), in its
/// minor unit; `None` when it is not one, or has more decimals than the currency has (¥1.5 is not an amount).
pub fn parse_money(text: &str, currency: &str) -> Option<i64> {
    let currency = currency.to_ascii_lowercase();
    let places = decimals(&currency) as usize;
    let cleaned: String = text
        .trim()
        .trim_start_matches(['¥', '$', '€', '£', '￥'])
        .trim_end_matches('円')
        .trim()
        .chars()
        .filter(|c| !matches!(c, ',' | '_'))
        .collect();
    let (whole, fraction) = cleaned.split_once('.').unwrap_or((&cleaned, ""));
    if whole.is_empty() || fraction.len() > places || !whole.chars().chain(fraction.chars()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let scale = 10_i64.checked_pow(places as u32)?;
    let fraction: i64 = if fraction.is_empty() { 0 } else { format!("{fraction:0<places$}").parse().ok()? };
    whole.parse::<i64>().ok()?.checked_mul(scale)?.checked_add(fraction).filter(|n| *n > 0)
}

/// An amount in minor units of its currency: `190 usd` → `$1.90`, `1500 jpy` → `¥1,500` (`1,500円` in Japanese).
pub fn money(lang: Lang, amount_minor: i64, currency: &str) -> String {
    let currency = currency.to_ascii_lowercase();
    let decimals = decimals(&currency);
    let scale = 10_i64.pow(decimals);
    let whole = thousands(amount_minor.abs() / scale);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let number = if decimals == 0 {
        whole
    } else {
        format!("{whole}.{:0width$}", amount_minor.abs() % scale, width = decimals as usize)
    };
    match (lang, currency.as_str()) {
        (Lang::Ja, "jpy") => format!("{sign}{number}円"),
        (_, "jpy") => format!("{sign}¥{number}"),
        (_, "usd") => format!("{sign}${number}"),
        (_, "eur") => format!("{sign}€{number}"),
        (_, "gbp") => format!("{sign}£{number}"),
        (_, other) => format!("{sign}{number} {}", other.to_uppercase()),
    }
}

/// A `YYYY-MM-DD` day: unchanged in English (unambiguous), `2026年11月25日` in Japanese.
pub fn day(lang: Lang, iso_day: &str) -> String {
    let mut parts = iso_day.splitn(3, '-').map(|p| p.trim_start_matches('0'));
    match (lang, parts.next(), parts.next(), parts.next()) {
        (Lang::Ja, Some(year), Some(month), Some(day)) => format!("{year}年{month}月{day}日"),
        _ => iso_day.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped_with_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(-12_345), "-12,345");
        assert_eq!(thousands(i64::MIN), "-9,223,372,036,854,775,808");
    }

    #[test]
    fn money_is_formatted_by_its_currencys_minor_unit() {
        assert_eq!(money(Lang::En, 190, "usd"), "$1.90");
        assert_eq!(money(Lang::En, 123_456_789, "usd"), "$1,234,567.89");
        assert_eq!(money(Lang::En, 1_500, "jpy"), "¥1,500");
        assert_eq!(money(Lang::Ja, 1_500, "jpy"), "1,500円");
        assert_eq!(money(Lang::En, 5, "JPY"), "¥5");
        assert_eq!(money(Lang::En, 1_234, "kwd"), "1.234 KWD");
        assert_eq!(money(Lang::En, 7, "eur"), "€0.07");
        assert_eq!(money(Lang::En, -250, "gbp"), "-£2.50");
        assert_eq!(money(Lang::Ja, 100, "krw"), "100 KRW");
    }

    #[test]
    fn typed_amounts_are_read_in_the_currencys_minor_unit() {
        assert_eq!(parse_money("1,500", "jpy"), Some(1_500));
        assert_eq!(parse_money("¥1500", "jpy"), Some(1_500));
        assert_eq!(parse_money("1500円", "JPY"), Some(1_500));
        assert_eq!(parse_money("1.5", "jpy"), None, "the yen has no minor unit");
        assert_eq!(parse_money("12.5", "usd"), Some(1_250));
        assert_eq!(parse_money("$0.07", "usd"), Some(7));
        assert_eq!(parse_money("0", "usd"), None);
        assert_eq!(parse_money("-5", "usd"), None);
        assert_eq!(parse_money("ten", "usd"), None);
        assert_eq!(parse_money("99999999999999999999", "jpy"), None);
        assert_eq!(parse_count("50,000"), Some(50_000));
        assert_eq!(parse_count("0"), None);
        assert_eq!(parse_count("1.5"), None);
    }

    #[test]
    fn days_are_iso_in_english_and_written_out_in_japanese() {
        assert_eq!(day(Lang::En, "2026-11-05"), "2026-11-05");
        assert_eq!(day(Lang::Ja, "2026-11-05"), "2026年11月5日");
    }
}

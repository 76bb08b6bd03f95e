//! The UsageMeter: `used / limit` for the current period and a bar that turns red at 90 %.

use leptos::prelude::*;

use crate::i18n::{td, td_string, use_i18n};

/// The share of the limit at which the bar turns red, in percent.
pub const CRITICAL_PERCENT: i64 = 90;

/// How full the bar is: its width in hundredths of a percent (0..=10 000, capped at the full bar) and whether it is
/// in the critical (red) state. Integer arithmetic throughout, so 89.99 % is never rounded up into red.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterFill {
    pub basis_points: i64,
    pub critical: bool,
    /// The whole percent used, not capped: 120 past the limit, so the value text says what happened.
    pub percent: i64,
}

impl MeterFill {
    /// The fill for `used` of `limit`; `None` when there is no (positive) limit to fill.
    pub fn new(used: i64, limit: Option<i64>) -> Option<MeterFill> {
        let limit = limit.filter(|limit| *limit > 0)?;
        let used = i128::from(used.max(0));
        let limit = i128::from(limit);
        let basis_points = (used * 10_000 / limit).min(10_000) as i64;
        let critical = used * 100 >= limit * i128::from(CRITICAL_PERCENT);
        let percent = (used * 100 / limit).min(i128::from(i64::MAX)) as i64;
        Some(MeterFill { basis_points, critical, percent })
    }

    /// The CSS width, e.g. `"12.34%"`.
    pub fn css_width(&self) -> String {
        format!("{}.{:02}%", self.basis_points / 100, self.basis_points % 100)
    }
}

/// Shows `used / limit` with a progress bar; with no limit, only the number. Rendered on the server; the live
/// island re-reads it from there when the total changes.
#[component]
pub fn UsageMeter(
    /// Units used in the period.
    used: i64,
    /// The period's limit, `None` for unlimited.
    limit: Option<i64>,
) -> impl IntoView {
    let fill = MeterFill::new(used, limit);
    let locale = use_i18n().get_locale_untracked();
    let thousands = crate::format::thousands;
    let limit_text = limit.map(thousands).unwrap_or_else(|| td_string!(locale, no_limit).into());
    let label_id = "usage-meter-label";
    let reached = limit.is_some_and(|limit| limit > 0 && used >= limit);
    let bar = fill.zip(limit).map(|(fill, limit)| {
        let value_text = td_string!(
            locale,
            meter_value_text,
            used = thousands(used),
            limit = thousands(limit),
            percent = fill.percent
        )
        .to_string();
        view! {
            <div
                class="usage-meter__track"
                role="progressbar"
                aria-labelledby=label_id
                aria-valuemin="0"
                // Within [0, max] as ARIA requires; the value text says how far past it.
                aria-valuenow=used.clamp(0, limit.max(0)).to_string()
                aria-valuemax=limit.to_string()
                aria-valuetext=value_text
                data-testid="usage-bar"
            >
                <div
                    class="usage-meter__bar"
                    class:usage-meter__bar--critical=fill.critical
                    data-critical=fill.critical.to_string()
                    style=format!("width: {}", fill.css_width())
                ></div>
            </div>
        }
    });
    view! {
        <section class="usage-meter" data-testid="usage-meter" aria-labelledby=label_id>
            <h2 class="usage-meter__label" id=label_id>{td!(locale, meter_label)}</h2>
            <p class="usage-meter__numbers">
                <span class="usage-meter__used" data-testid="usage-used">{thousands(used)}</span>
                " / "
                <span class="usage-meter__limit" data-testid="usage-limit">{limit_text}</span>
            </p>
            {reached.then(|| view! {
                <p class="usage-meter__reached" role="status" data-testid="limit-reached">{td!(locale, limit_reached)}</p>
            })}
            {bar}
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_the_bar_is_full_and_the_percent_says_how_far() {
        let fill = MeterFill::new(1_200, Some(1_000)).unwrap();
        assert_eq!((fill.basis_points, fill.percent, fill.critical), (10_000, 120, true));
        assert_eq!(MeterFill::new(999, Some(1_000)).unwrap().percent, 99);
    }

    #[test]
    fn the_bar_turns_red_at_exactly_ninety_percent() {
        assert!(!MeterFill::new(89_999, Some(100_000)).unwrap().critical);
        assert!(MeterFill::new(90_000, Some(100_000)).unwrap().critical);
        // 8.99 of 10 is 89.9 %: integer maths must not round it into red.
        assert!(!MeterFill::new(899, Some(1_000)).unwrap().critical);
    }

    #[test]
    fn the_bar_is_capped_at_full_width() {
        let fill = MeterFill::new(250, Some(100)).unwrap();
        assert_eq!(fill.css_width(), "100.00%");
        assert!(fill.critical);
        assert_eq!(MeterFill::new(1_234, Some(10_000)).unwrap().css_width(), "12.34%");
    }

    #[test]
    fn no_limit_means_no_bar() {
        assert_eq!(MeterFill::new(5, None), None);
        assert_eq!(MeterFill::new(5, Some(0)), None);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let fill = MeterFill::new(i64::MAX, Some(i64::MAX)).unwrap();
        assert_eq!(fill.basis_points, 10_000);
    }
}

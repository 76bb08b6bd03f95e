//! How full a period's allowance is: the one rule the meter's bar, its red state and the allowance API share.

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

/// Whether `used` has reached a (positive) `limit`: new usage is refused until the next period.
pub fn limit_reached(used: i64, limit: Option<i64>) -> bool {
    limit.is_some_and(|limit| limit > 0 && used >= limit)
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

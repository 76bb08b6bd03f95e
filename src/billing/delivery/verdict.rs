//! What a meter event call's answer says about whether Stripe counted it.

use super::*;

/// What a meter event call's answer says about whether Stripe counted the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallVerdict {
    /// Counted: a 200 with Stripe's answer, or "an event already exists with this identifier".
    Counted,
    /// Refused before it was recorded (429, 409, 401, 403: nothing was counted); try again later.
    RefusedRetry,
    /// Refused for good (another 4xx): nothing was counted; the delivery fails with Stripe's message.
    RefusedFinal,
    /// Unknown (a timeout, a lost or garbled answer, a 5xx): Stripe may have counted it. Retried under the same
    /// identifier while that is safe, else settled from the meter event summaries.
    Unknown { retry: bool },
}

impl CallVerdict {
    /// The verdict on one call's result.
    pub fn of(result: &Result<(), StripeError>) -> CallVerdict {
        match result {
            Ok(()) => CallVerdict::Counted,
            Err(err) if err.is_duplicate_identifier() => CallVerdict::Counted,
            // Authentication and permission errors wait for the operator to fix the key instead of failing usage.
            Err(StripeError::Api { status: 401 | 403 | 409 | 429, .. }) => CallVerdict::RefusedRetry,
            // Stripe may have done the work behind a 5xx; `Stripe-Should-Retry: false` says not to call again.
            Err(StripeError::Api { status, should_retry, .. }) if *status >= 500 => {
                CallVerdict::Unknown { retry: *should_retry != Some(false) }
            }
            Err(err @ StripeError::Api { .. }) if err.is_retryable() => CallVerdict::RefusedRetry,
            Err(StripeError::Api { .. }) => CallVerdict::RefusedFinal,
            Err(StripeError::Network(_)) => CallVerdict::Unknown { retry: true },
            // A 2xx whose body is not Stripe's answer: something answered, perhaps after Stripe counted it.
            Err(StripeError::Decode(_)) => CallVerdict::Unknown { retry: false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_that_prove_nothing_was_counted_are_refusals() {
        let api = |status: u16, should_retry: Option<bool>, message: &str| {
            Err(StripeError::Api { status, kind: "x".into(), code: None, message: message.into(), should_retry })
        };
        assert_eq!(CallVerdict::of(&Ok(())), CallVerdict::Counted);
        assert_eq!(
            CallVerdict::of(&api(400, Some(false), "An event already exists with identifier x.")),
            CallVerdict::Counted
        );
        for status in [401, 403, 409, 429] {
            assert_eq!(CallVerdict::of(&api(status, None, "no")), CallVerdict::RefusedRetry, "{status}");
        }
        assert_eq!(CallVerdict::of(&api(400, None, "bad")), CallVerdict::RefusedFinal);
        assert_eq!(CallVerdict::of(&api(500, None, "oops")), CallVerdict::Unknown { retry: true });
        // Stripe may have counted it, and says not to call again: settled from the summaries, never failed.
        assert_eq!(CallVerdict::of(&api(503, Some(false), "oops")), CallVerdict::Unknown { retry: false });
        assert_eq!(CallVerdict::of(&Err(StripeError::Network("timeout".into()))), CallVerdict::Unknown { retry: true });
        // A 200 whose body is not Stripe's answer: something took the call.
        assert_eq!(
            CallVerdict::of(&Err(StripeError::Decode("HTTP 200, not JSON".into()))),
            CallVerdict::Unknown { retry: false }
        );
    }
}

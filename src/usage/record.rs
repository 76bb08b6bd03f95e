//! Recording usage: validation of what callers send, then the group-commit writer.

use chrono::{DateTime, Utc};
use serde_json::{Number, Value};

use super::writer::NewEvent;
use super::EventInput;

/// Largest quantity one event may carry (10^12 tokens is far beyond any single AI call).
pub const MAX_QUANTITY: i64 = 1_000_000_000_000;
/// Largest metadata object, serialized.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
/// Longest idempotency key (Stripe's limit for its own keys).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Most events in one batch request.
pub const MAX_BATCH_EVENTS: usize = 1_000;

/// Checks one event and turns it into a [`NewEvent`] stamped with its `occurredAt`, or `now` without one; the error
/// is a user-facing sentence. Whether the event's billing period can still be invoiced needs the database:
/// [`closed_periods`].
pub fn validate(input: EventInput, allowed_types: &[String], now: DateTime<Utc>) -> Result<NewEvent, String> {
    if !allowed_types.contains(&input.event_type) {
        let quoted = crate::error::excerpt(&input.event_type);
        return Err(format!("unknown event type \"{quoted}\" (accepted: {})", allowed_types.join(", ")));
    }
    let occurred_at = occurred_at(input.occurred_at.as_deref(), now)?;
    Ok(NewEvent {
        quantity: quantity(&input.quantity)?,
        metadata: metadata(input.metadata)?,
        idempotency_key: idempotency_key(input.idempotency_key)?,
        event_type: input.event_type,
        occurred_at,
    })
}

/// When the event happened: `raw` (RFC 3339, with an offset) inside Stripe's window, from 35 days ago (less the
/// margin a delivery needs) to [`MAX_AHEAD`] ahead; `now` without one.
pub fn occurred_at(raw: Option<&str>, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    use super::period::{DEADLINE_MARGIN, MAX_AHEAD, STRIPE_WINDOW};
    let Some(raw) = raw else { return Ok(now) };
    let at = DateTime::parse_from_rfc3339(raw).map(|at| at.to_utc()).map_err(|_| {
        let quoted = crate::error::excerpt(raw);
        format!("occurredAt must be an RFC 3339 time with an offset, such as 2026-12-06T09:30:00Z, not \"{quoted}\"")
    })?;
    if at > now + MAX_AHEAD {
        return Err(format!(
            "occurredAt {} is more than {} minutes ahead of the server's clock ({})",
            at.to_rfc3339(),
            MAX_AHEAD.num_minutes(),
            now.to_rfc3339()
        ));
    }
    if at < now - STRIPE_WINDOW + DEADLINE_MARGIN {
        return Err(format!(
            "occurredAt {} is older than the {} days Stripe's meter accepts events for",
            at.to_rfc3339(),
            STRIPE_WINDOW.num_days()
        ));
    }
    Ok(at)
}

/// The events among `events` (index in the request, when it happened) whose billing period can no longer be
/// invoiced at `now`: its end plus Stripe's finalization grace has passed (less the delivery margin). Recorded,
/// they would be counted but never billed. One statement for the caller's user and every distinct time.
pub async fn closed_periods(
    state: &super::UsageState,
    caller: crate::auth::caller::Caller,
    events: &[(usize, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> Result<Vec<crate::error::EventProblem>, crate::error::AppError> {
    use crate::auth::caller::Caller;
    let user_id = match caller {
        Caller::User(user_id) => user_id,
        Caller::ApiKey(hash) => crate::auth::api_key::owner(&state.pool, hash).await?,
    };
    let times: Vec<DateTime<Utc>> = events.iter().map(|(_, at)| *at).collect();
    let periods = sqlx::query!(
        r#"SELECT e.at AS "at!: DateTime<Utc>", b.period_end AS "period_end!: DateTime<Utc>"
           FROM unnest($2::timestamptz[]) AS e (at)
           CROSS JOIN LATERAL billing_period_at($1, e.at, $3, $4) AS b"#,
        user_id,
        &times as _,
        &state.clock.timezone,
        super::period::LIVE_STATUSES as _
    )
    .fetch_all(&state.pool)
    .await?;
    let grace = chrono::Duration::minutes(i64::from(state.config.delivery.invoice_grace_minutes));
    Ok(events
        .iter()
        .filter_map(|&(index, at)| {
            let end = periods.iter().find(|p| p.at == at)?.period_end;
            super::period::invoice_closed(end, grace, now).then(|| crate::error::EventProblem {
                index,
                error: format!(
                    "occurredAt {}: its billing period ended at {} and Stripe has finalized (or is finalizing) its \
                     invoice, so the usage could not be billed",
                    at.to_rfc3339(),
                    end.to_rfc3339()
                ),
            })
        })
        .collect())
}

/// A positive whole number up to [`MAX_QUANTITY`]. JSON numbers such as `1.5` or `1e3` are refused rather than
/// rounded: a billing system must not guess.
pub fn quantity(raw: &Number) -> Result<i64, String> {
    match raw.as_i64() {
        Some(q) if q <= 0 => Err(format!("quantity must be positive, not {q}")),
        Some(q) if q > MAX_QUANTITY => Err(format!("quantity must be at most {MAX_QUANTITY}, not {q}")),
        Some(q) => Ok(q),
        None if raw.is_u64() => Err(format!("quantity must be at most {MAX_QUANTITY}, not {raw}")),
        None => Err(format!("quantity must be a whole number, not {raw}")),
    }
}

/// A JSON object (or nothing) of at most [`MAX_METADATA_BYTES`].
pub fn metadata(raw: Option<Value>) -> Result<Value, String> {
    match raw {
        None | Some(Value::Null) => Ok(Value::Object(Default::default())),
        Some(value @ Value::Object(_)) => {
            if holds_nul(&value) {
                // PostgreSQL's jsonb cannot store U+0000; refused here instead of failing in the database.
                return Err("metadata must not contain the NUL character (\\u0000) in a key or value".into());
            }
            let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > MAX_METADATA_BYTES {
                Err(format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON, not {size}"))
            } else {
                Ok(value)
            }
        }
        Some(_) => Err("metadata must be a JSON object".into()),
    }
}

/// Whether a key or string anywhere in `value` holds U+0000.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields.iter().any(|(key, value)| key.contains('\0') || holds_nul(value)),
        _ => false,
    }
}

/// 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] printable ASCII characters, or none.
pub fn idempotency_key(raw: Option<String>) -> Result<Option<String>, String> {
    match raw {
        None => Ok(None),
        Some(key) if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN => {
            Err(format!("idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"))
        }
        Some(key) if !key.bytes().all(|b| b.is_ascii_graphic()) => {
            Err("idempotency key must be printable ASCII without spaces".into())
        }
        Some(key) => Ok(Some(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(json: &str) -> Number {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn quantities_must_be_positive_whole_and_sane() {
        assert_eq!(quantity(&n("1234")), Ok(1234));
        assert_eq!(quantity(&n("1000000000000")), Ok(MAX_QUANTITY));
        for bad in ["0", "-5", "1.5", "1e3", "1000000000001", "18446744073709551615", "1e300"] {
            assert!(quantity(&n(bad)).is_err(), "{bad} must be refused");
        }
        assert!(quantity(&n("1.5")).unwrap_err().contains("whole number"));
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        assert_eq!(metadata(None).unwrap(), serde_json::json!({}));
        assert!(metadata(Some(serde_json::json!({"model": "gpt"}))).is_ok());
        assert!(metadata(Some(serde_json::json!([1, 2]))).is_err());
        assert!(metadata(Some(serde_json::json!("text"))).is_err());
        let big = serde_json::json!({ "blob": "x".repeat(MAX_METADATA_BYTES) });
        assert!(metadata(Some(big)).unwrap_err().contains("at most"));
        for nul in [r#"{"a\u0000b": 1}"#, r#"{"a": "x\u0000"}"#, r#"{"a": [{"b": ["\u0000"]}]}"#] {
            let value: Value = serde_json::from_str(nul).unwrap();
            assert!(metadata(Some(value)).unwrap_err().contains("NUL"), "{nul}");
        }
    }

    #[test]
    fn an_unknown_event_type_is_quoted_short() {
        let input = EventInput {
            event_type: "x".repeat(100_000),
            quantity: n("1"),
            metadata: None,
            idempotency_key: None,
            occurred_at: None,
        };
        let err = validate(input, &["ai_token_consumed".into()], Utc::now()).unwrap_err();
        assert!(err.len() < 200, "{} bytes", err.len());
    }

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        assert_eq!(idempotency_key(Some("req_123".into())), Ok(Some("req_123".into())));
        assert!(idempotency_key(Some(String::new())).is_err());
        assert!(idempotency_key(Some("a b".into())).is_err());
        assert!(idempotency_key(Some("é".into())).is_err());
        assert!(idempotency_key(Some("k".repeat(256))).is_err());
    }

    #[test]
    fn unknown_event_types_are_refused_by_name() {
        let input = EventInput {
            event_type: "image_generated".into(),
            quantity: n("1"),
            metadata: None,
            idempotency_key: None,
            occurred_at: None,
        };
        let err = validate(input, &["ai_token_consumed".into()], Utc::now()).unwrap_err();
        assert!(err.contains("unknown event type \"image_generated\""), "{err}");
    }

    #[test]
    fn occurred_at_is_an_rfc_3339_time_inside_stripes_window() {
        let now: DateTime<Utc> = "2026-12-06T12:00:00Z".parse().unwrap();
        assert_eq!(occurred_at(None, now), Ok(now));
        let earlier = occurred_at(Some("2026-12-06T20:30:00+09:00"), now).unwrap();
        assert_eq!(earlier, "2026-12-06T11:30:00Z".parse::<DateTime<Utc>>().unwrap(), "offsets are kept");
        assert!(occurred_at(Some("2026-12-06T12:05:00Z"), now).is_ok(), "5 minutes ahead is clock drift");
        assert!(occurred_at(Some("2026-12-06T12:05:01Z"), now).unwrap_err().contains("ahead"));
        assert!(occurred_at(Some("2026-11-01T12:10:00Z"), now).is_ok(), "35 days less the margin");
        assert!(occurred_at(Some("2026-11-01T12:00:00Z"), now).unwrap_err().contains("35 days"));
        for malformed in ["2026-12-06", "2026-12-06T11:00:00", "yesterday", ""] {
            assert!(occurred_at(Some(malformed), now).unwrap_err().contains("RFC 3339"), "{malformed}");
        }
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        fn allowed() -> Vec<String> {
            vec!["ai_token_consumed".to_owned()]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

            /// Arbitrary request bodies: parsed and validated, or refused; what passes is always billable as is.
            #[test]
            fn arbitrary_bodies_pass_only_as_valid_events(body in proptest::collection::vec(any::<u8>(), 0..300)) {
                if let Ok(input) = serde_json::from_slice::<EventInput>(&body) {
                    if let Ok(event) = validate(input, &allowed(), Utc::now()) {
                        prop_assert!((1..=MAX_QUANTITY).contains(&event.quantity));
                        prop_assert!(event.metadata.is_object());
                    }
                }
            }

            /// Bodies shaped like events, with any number text as the quantity.
            #[test]
            fn any_quantity_text_is_accepted_only_as_a_whole_number_in_range(
                quantity in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), "-?[0-9]{1,30}(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?"],
                key in proptest::option::of(".{0,300}"),
            ) {
                let body = serde_json::json!({"eventType": "ai_token_consumed", "idempotencyKey": key}).to_string();
                let body = body.replacen('{', &format!("{{\"quantity\":{quantity},"), 1);
                let Ok(input) = serde_json::from_str::<EventInput>(&body) else { return Ok(()) };
                match validate(input, &allowed(), Utc::now()) {
                    Ok(event) => {
                        prop_assert_eq!(event.quantity.to_string(), quantity.trim_start_matches('+').to_owned());
                        prop_assert!((1..=MAX_QUANTITY).contains(&event.quantity));
                    }
                    Err(message) => prop_assert!(!message.is_empty()),
                }
            }
        }
    }
}

//! A Stripe test double: an HTTP server speaking Stripe's wire format for the endpoints Tally uses, with fault
//! knobs. The tests run it in-process; `stripe-double --port 12111` runs it by hand, and the end-to-end suite
//! drives it with Stripe's official Node SDK to check that it accepts exactly what a real client sends.
//!
//! What it models (see `../shared/stripe/FACTS.md`): form-encoded bodies with bracketed keys (encoded or not), a
//! required `Authorization: Bearer` key, Stripe's error JSON with `Stripe-Should-Retry`, `Idempotency-Key` replay
//! (same key and parameters → the saved answer, including a 500; other parameters → 400 `idempotency_error`),
//! meter events with `identifier` de-duplication ("An event already exists with identifier …") and the
//! timestamp window (35 days back, 5 minutes ahead), meter event summaries with minute-aligned windows, and
//! customers, meters, products and prices enough for `tally stripe setup`.
//!
//! Faults ([`Faults`]) apply to meter event calls: 429 and 500 answers, slow answers, connections dropped before
//! handling, and answers lost after the event was recorded. [`DoubleState`] reports what it holds, including
//! every time two calls for one customer and meter overlapped (Stripe allows one at a time).

mod api;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use server::serve;

/// The secret key the double accepts unless told otherwise.
pub const DEFAULT_SECRET_KEY: &str = "sk_test_tally_double";

/// Fault knobs for `POST /v1/billing/meter_events`. Counters apply to the next calls, one each; ratios to every
/// call (a storm); both may be set at once. Set them through [`StripeDouble::set_faults`] or
/// `POST /_double/faults` with this struct as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// The next N calls are answered 429 `rate_limit` (not saved under their Idempotency-Key).
    pub rate_limit: u32,
    /// The next N calls are answered 500 `api_error` without recording the event; like Stripe, the answer is
    /// saved under the call's Idempotency-Key.
    pub server_error: u32,
    /// The next N calls wait `slow_ms` before they are handled (a client that gives up first records nothing).
    pub slow: u32,
    /// The next N calls are handled (the event counts) and then wait `slow_ms` before answering: a client that
    /// gives up, or dies, in between never learns that the event counted.
    pub slow_answer: u32,
    pub slow_ms: u64,
    /// The next N calls have their connection closed before they are handled.
    pub drop_connection: u32,
    /// The next N calls are handled (the event counts) and then their connection is closed: the answer is lost.
    pub lose_response: u32,
    /// Share (0–1) of all calls answered 429.
    pub rate_limit_ratio: f64,
    /// Share (0–1) of all calls answered 500.
    pub server_error_ratio: f64,
    /// Share (0–1) of all calls whose answer is lost after the event was recorded.
    pub lose_response_ratio: f64,
    /// `POST /v1/customers` for these emails is answered 500 (and, as Stripe does, the answer is saved under the
    /// call's Idempotency-Key).
    pub customer_error_emails: Vec<String>,
    /// Calls per second accepted before answering 429 (Stripe: 1,000 live, 25 in test mode); 0 = no limit.
    pub calls_per_second: u32,
}

/// A snapshot of what the double holds, for assertions and for `GET /_double/state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DoubleState {
    /// Calls to `POST /v1/billing/meter_events`, whatever their answer.
    pub meter_event_calls: u64,
    /// Meter events accepted (each identifier at most once).
    pub accepted_events: u64,
    /// Calls refused because the identifier was already accepted.
    pub duplicate_identifiers: u64,
    /// Calls answered with an injected fault.
    pub injected_faults: u64,
    /// Times a meter event call started while another one for the same customer and meter was in flight.
    pub concurrent_calls_per_customer: u64,
    /// The most meter event calls received within one second (of the clock), whatever their answer.
    pub busiest_second_meter_event_calls: u32,
    /// Sum of accepted values per customer and event name.
    pub totals: BTreeMap<String, BTreeMap<String, i64>>,
    pub customers: u64,
    pub meters: u64,
    pub products: u64,
    pub prices: u64,
    /// Customer portal sessions created.
    #[serde(default)]
    pub portal_sessions: u64,
    /// Other API calls by `METHOD path`.
    pub calls: BTreeMap<String, u64>,
}

/// One accepted meter event.
#[derive(Debug, Clone, Serialize)]
pub struct AcceptedEvent {
    pub identifier: String,
    pub event_name: String,
    pub customer: String,
    pub value: i64,
    pub timestamp: i64,
    /// When the double accepted it (unix seconds, by its clock): whether it made an invoice finalized meanwhile.
    pub received_at: i64,
}

/// A running double's shared state; cheap to clone.
#[derive(Clone)]
pub struct StripeDouble {
    inner: Arc<Mutex<Inner>>,
}

/// An answer saved under an Idempotency-Key.
#[derive(Clone)]
struct Saved {
    fingerprint: String,
    status: u16,
    body: Value,
    should_retry: Option<bool>,
}

#[derive(Default)]
struct Inner {
    secret_key: String,
    faults: Faults,
    meters: Vec<Value>,
    customers: Vec<Value>,
    products: Vec<Value>,
    prices: Vec<Value>,
    events: Vec<AcceptedEvent>,
    /// identifier → when accepted (unix seconds); Stripe refuses repeats for at least 24 hours.
    identifiers: HashMap<String, i64>,
    idempotency: HashMap<String, Saved>,
    in_flight: HashMap<(String, String), u32>,
    /// Full v2 events by id (`GET /v2/core/events/{id}`), e.g. meter error reports.
    v2_events: HashMap<String, Value>,
    /// (unix second, meter event calls in it, replays included as Stripe's limiter counts them): the
    /// `calls_per_second` knob's window and the source of `busiest_second_meter_event_calls`.
    call_second: (i64, u32),
    state: DoubleState,
    next_id: u64,
    /// Random per double, so ids never repeat across restarts (a database may outlive a double).
    run_id: String,
    /// Stripe's clock: identifier memory, the timestamp window, invoices. Tests move it.
    clock: tally_clock::Clock,
}

impl Inner {
    fn count_call_in_second(&mut self, second: i64) {
        if self.call_second.0 != second {
            self.call_second = (second, 0);
        }
        self.call_second.1 += 1;
        self.state.busiest_second_meter_event_calls =
            self.state.busiest_second_meter_event_calls.max(self.call_second.1);
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}{:08}", self.run_id, self.next_id)
    }
}

impl StripeDouble {
    /// A double accepting `secret_key`, on the system clock.
    pub fn new(secret_key: &str) -> StripeDouble {
        StripeDouble::with_clock(secret_key, tally_clock::Clock::system())
    }

    /// A double on `clock` (share it with the app under test to move both through Stripe's time windows).
    pub fn with_clock(secret_key: &str, clock: tally_clock::Clock) -> StripeDouble {
        let mut bytes = [0_u8; 5];
        getrandom::fill(&mut bytes).unwrap_or_default();
        let run_id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let inner = Inner { secret_key: secret_key.to_owned(), run_id, clock, ..Inner::default() };
        StripeDouble { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not wedge the double; its state is plain data.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the fault knobs.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The fault knobs as they are now (counters go down as faults are injected).
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Creates an active SUM meter for `event_name` (as `POST /v1/billing/meters` would) and returns its id.
    pub fn add_meter(&self, event_name: &str) -> String {
        let mut inner = self.lock();
        api::insert_meter(&mut inner, event_name, event_name)
    }

    /// Deactivates a meter, as `POST /v1/billing/meters/{id}/deactivate` would.
    pub fn deactivate_meter(&self, meter_id: &str) {
        let mut inner = self.lock();
        let now = inner.clock.now().timestamp();
        if let Some(meter) = inner.meters.iter_mut().find(|m| m["id"] == meter_id) {
            meter["status"] = serde_json::json!("inactive");
            meter["status_transitions"]["deactivated_at"] = serde_json::json!(now);
        }
    }

    /// Files a meter error report about events Stripe could not count (as its asynchronous validation does) and
    /// returns the thin event notification Stripe would POST to a webhook endpoint; the full event is then served
    /// at `GET /v2/core/events/{id}`.
    pub fn add_meter_error_report(&self, meter_id: &str, identifiers: &[&str], code: &str, message: &str) -> Value {
        let mut inner = self.lock();
        let id = inner.new_id("evt_test");
        let now = inner.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let related = serde_json::json!({
            "id": meter_id, "type": "billing.meter", "url": format!("/v1/billing/meters/{meter_id}")
        });
        let samples: Vec<Value> = identifiers
            .iter()
            .map(|identifier| serde_json::json!({ "error_message": message, "request": { "identifier": identifier } }))
            .collect();
        let count = identifiers.len();
        let full = serde_json::json!({
            "id": id, "object": "v2.core.event", "type": "v1.billing.meter.error_report_triggered",
            "created": now, "livemode": false, "context": null, "related_object": related,
            "data": {
                "developer_message_summary": format!("There {} {count} invalid event{}",
                    if count == 1 { "is" } else { "are" }, if count == 1 { "" } else { "s" }),
                "reason": { "error_count": count, "error_types": [
                    { "code": code, "error_count": count, "sample_errors": samples }
                ] },
                "validation_start": now, "validation_end": now
            }
        });
        inner.v2_events.insert(id.clone(), full);
        serde_json::json!({
            "id": id, "object": "v2.core.event", "type": "v1.billing.meter.error_report_triggered",
            "livemode": false, "created": now, "related_object": related
        })
    }

    /// What the double holds now.
    pub fn state(&self) -> DoubleState {
        self.lock().state.clone()
    }

    /// Every accepted meter event, in arrival order.
    pub fn events(&self) -> Vec<AcceptedEvent> {
        self.lock().events.clone()
    }

    /// Accepts `secret_key` from now on (a rolled key: calls with the old one get 401 until the app has the new).
    pub fn set_secret_key(&self, secret_key: &str) {
        self.lock().secret_key = secret_key.to_owned();
    }

    /// The double's clock.
    pub fn clock(&self) -> tally_clock::Clock {
        self.lock().clock.clone()
    }

    /// What an invoice for `customer`'s subscription period `[start, end)` (unix seconds) bills on the `event_name`
    /// meter, as Stripe finalizes it at `end + grace_seconds`: the events stamped inside the period that Stripe had
    /// received by then. Usage that arrives later is still accepted (200) and shows in the summaries, but is on no
    /// invoice of that period.
    pub fn invoiced_quantity(&self, customer: &str, event_name: &str, start: i64, end: i64, grace_seconds: i64) -> i64 {
        self.lock()
            .events
            .iter()
            .filter(|e| e.customer == customer && e.event_name == event_name)
            .filter(|e| start <= e.timestamp && e.timestamp < end && e.received_at < end + grace_seconds)
            .map(|e| e.value)
            .sum()
    }

    /// The invoice Stripe would finalize for `customer`'s subscription period `[start, end)` (unix seconds) on
    /// `price_id`, in Stripe's shape (basil API): one metered line whose quantity is the period's sum on the
    /// price's meter ([`StripeDouble::invoiced_quantity`]) and whose amount is the quantity times the price's
    /// `unit_amount_decimal`, rounded once on the line to the nearest minor unit (halves up). `None` for an
    /// unknown price or one the double cannot price (not per-unit).
    pub fn invoice(&self, customer: &str, price_id: &str, start: i64, end: i64, grace_seconds: i64) -> Option<Value> {
        let (price, event_name) = {
            let inner = self.lock();
            let price = inner.prices.iter().find(|p| p["id"] == price_id)?.clone();
            let meter = price["recurring"]["meter"].as_str()?;
            let event_name = inner.meters.iter().find(|m| m["id"] == meter)?["event_name"].as_str()?.to_owned();
            (price, event_name)
        };
        let quantity = self.invoiced_quantity(customer, &event_name, start, end, grace_seconds).max(0);
        let amount = line_amount(quantity, price["unit_amount_decimal"].as_str()?)?;
        let line = serde_json::json!({
            "id": format!("il_{price_id}_{start}"), "object": "line_item", "amount": amount,
            "currency": price["currency"], "quantity": quantity, "livemode": false,
            "period": { "start": start, "end": end },
            "parent": {
                "type": "subscription_item_details",
                "subscription_item_details": { "proration": false, "subscription_item": null }
            },
            "pricing": {
                "type": "price_details",
                "price_details": { "price": price_id, "product": price["product"] },
                "unit_amount_decimal": price["unit_amount_decimal"]
            }
        });
        Some(serde_json::json!({
            "object": "invoice", "customer": customer, "currency": price["currency"], "status": "draft",
            "amount_due": amount, "subtotal": amount, "total": amount,
            "period_start": start, "period_end": end,
            "lines": { "object": "list", "data": [line], "has_more": false }
        }))
    }

    /// The sum of accepted values for `customer` and `event_name`.
    pub fn total(&self, customer: &str, event_name: &str) -> i64 {
        self.lock().state.totals.get(customer).and_then(|m| m.get(event_name)).copied().unwrap_or(0)
    }
}

/// The `v1` signature Stripe puts in a webhook's `Stripe-Signature` header for `payload` sent at `timestamp`:
/// HMAC-SHA256 of `"{timestamp}.{payload}"` with the endpoint's secret, hex-encoded. Tests send webhooks signed
/// with it, as Stripe would (`../shared/stripe/` has the vectors the product's verifier is tested against).
pub fn webhook_signature(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(payload);
    hex::encode(mac.finalize().into_bytes())
}

/// `quantity` × a decimal string of the minor unit (`"0.00005"`), rounded to the nearest minor unit, halves up: how
/// Stripe rounds a metered line ("rounded to the nearest whole cent", once per line). `None` for a malformed amount.
fn line_amount(quantity: i64, unit_amount_decimal: &str) -> Option<i64> {
    let (whole, fraction) = unit_amount_decimal.split_once('.').unwrap_or((unit_amount_decimal, ""));
    let digits = format!("{whole}{fraction}");
    let mantissa: i128 = digits.parse().ok()?;
    let scale = 10_i128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let exact_times_two = i128::from(quantity).checked_mul(mantissa)?.checked_mul(2)?;
    // round(x / scale) = floor((2x + scale) / (2 scale)) for x ≥ 0.
    i64::try_from((exact_times_two + scale) / (2 * scale)).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_are_rounded_to_the_nearest_minor_unit_halves_up() {
        assert_eq!(super::line_amount(85_600, "0.00005"), Some(4));
        assert_eq!(super::line_amount(10_000, "0.00005"), Some(1));
        assert_eq!(super::line_amount(9_999, "0.00005"), Some(0));
        assert_eq!(super::line_amount(7, "3"), Some(21));
        assert_eq!(super::line_amount(1, "x"), None);
    }
}

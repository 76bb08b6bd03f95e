//! Verification of Stripe's `Stripe-Signature` header (HMAC-SHA256), as every official SDK does it.
//!
//! The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=<hex>]`. The signed message is the timestamp, a `.`,
//! and the raw request body; the key is the endpoint secret's UTF-8 bytes (`whsec_` prefix included). Any `v1`
//! matching any configured secret is accepted (Stripe sends one per live secret while a secret is rolled);
//! `v0` and unknown schemes are ignored. Comparison is constant-time (`hmac`'s `verify_slice`).
//!
//! Timestamps more than the tolerance away from now are refused in **both** directions (as stripe-php and
//! async-stripe do; the node/python SDKs only refuse the past): a signature from the future means a clock is wrong.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a signature was refused; the message is what the webhook answers with (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    Missing,
    #[error("malformed Stripe-Signature header")]
    Malformed,
    #[error("no v1 signature in Stripe-Signature header")]
    NoV1,
    #[error("signature timestamp outside the tolerance")]
    Stale,
    #[error("no signature matches the payload")]
    Mismatch,
}

/// The parts of a `Stripe-Signature` header that matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    pub timestamp: i64,
    /// The `v1` signatures, as sent (hex).
    pub v1: Vec<String>,
}

/// Parses a header; elements without `=` or a missing/non-numeric `t` make it malformed.
pub fn parse(header: &str) -> Result<SignatureHeader, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for element in header.split(',') {
        let (key, value) = element.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match key {
            "t" => timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            "v1" => v1.push(value.to_owned()),
            _ => {} // v0 and schemes Stripe may add later
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        return Err(SignatureError::NoV1);
    }
    Ok(SignatureHeader { timestamp, v1 })
}

/// Checks `header` against `payload` with any of `secrets`, at time `now` (unix seconds). Returns the signed
/// timestamp.
pub fn verify(
    payload: &[u8],
    header: Option<&str>,
    secrets: &[String],
    now: i64,
    tolerance_seconds: i64,
) -> Result<i64, SignatureError> {
    let header = parse(header.filter(|h| !h.is_empty()).ok_or(SignatureError::Missing)?)?;
    // `abs_diff`: a header with t=-9223372036854775808 must not overflow the subtraction (found by the fuzz test).
    if now.abs_diff(header.timestamp) > tolerance_seconds.max(0).unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let signatures: Vec<Vec<u8>> = header.v1.iter().filter_map(|hex| hex::decode(hex).ok()).collect();
    for secret in secrets {
        for signature in &signatures {
            if mac(secret, header.timestamp, payload).verify_slice(signature).is_ok() {
                return Ok(header.timestamp);
            }
        }
    }
    Err(SignatureError::Mismatch)
}

/// The `v1` signature of `payload` at `timestamp`, as Stripe computes it (the unit tests' signer).
#[cfg(test)]
fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, payload).finalize().into_bytes())
}

fn mac(secret: &str, timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The vectors of `tests/fixtures/stripe/webhook-signature-test-vectors.json` (official SDK tests and computed ones).
    fn vectors() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stripe/webhook-signature-test-vectors.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("tests/fixtures/stripe test vectors")).unwrap()
    }

    fn vector(id: &str) -> Value {
        vectors()["stripe_signature_headers"].as_array().unwrap().iter().find(|v| v["id"] == id).unwrap().clone()
    }

    fn check(v: &Value, secrets: &[&str], now: i64) -> Result<i64, SignatureError> {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        verify(v["payload"].as_str().unwrap().as_bytes(), v["header"].as_str(), &secrets, now, 300)
    }

    #[test]
    fn raw_hmac_vectors_of_stripe_node() {
        for v in vectors()["raw_hmac_sha256_hex"].as_array().unwrap() {
            let mut mac = Hmac::<Sha256>::new_from_slice(v["key"].as_str().unwrap().as_bytes()).unwrap();
            mac.update(v["message"].as_str().unwrap().as_bytes());
            assert_eq!(hex::encode(mac.finalize().into_bytes()), v["expected_hex"].as_str().unwrap());
        }
    }

    #[test]
    fn valid_headers_from_the_vectors_verify() {
        for id in [
            "async-stripe-construct-event",
            "py-dummy",
            "py-dummy-extra-bad-v1",
            "node-event-payload",
            "thin-event-meter-error",
        ] {
            let v = vector(id);
            let secret = v["secret"].as_str().unwrap();
            let now = v["verify_at_unix_time"].as_i64().unwrap();
            assert_eq!(check(&v, &[secret], now), Ok(v["timestamp"].as_i64().unwrap()), "{id}");
        }
    }

    #[test]
    fn the_basil_invoice_fixture_verifies_byte_for_byte() {
        let v = vector("basil-invoice-fixture-file");
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stripe/event.invoice.payment_succeeded.basil.json");
        let payload = std::fs::read(path).unwrap();
        let secrets = vec!["whsec_test_secret".to_owned()];
        assert_eq!(verify(&payload, v["header"].as_str(), &secrets, 1_746_800_000, 300), Ok(1_746_800_000));
        let mut altered = payload.clone();
        altered.push(b'\n');
        assert_eq!(verify(&altered, v["header"].as_str(), &secrets, 1_746_800_000, 300), Err(SignatureError::Mismatch));
    }

    #[test]
    fn either_secret_verifies_during_rotation() {
        let v = vector("py-dummy-rotation");
        assert!(check(&v, &["whsec_test_secret"], 1_700_000_000).is_ok());
        assert!(check(&v, &["whsec_test_secret_rolled_key"], 1_700_000_000).is_ok());
        assert!(check(&v, &["whsec_other", "whsec_test_secret_rolled_key"], 1_700_000_000).is_ok());
        assert_eq!(check(&v, &["whsec_other"], 1_700_000_000), Err(SignatureError::Mismatch));
    }

    #[test]
    fn v0_only_is_refused() {
        assert_eq!(
            check(&vector("py-dummy-v0-only"), &["whsec_test_secret"], 1_700_000_000),
            Err(SignatureError::NoV1)
        );
    }

    #[test]
    fn the_tolerance_boundary_is_inclusive_both_ways() {
        let v = vector("py-dummy-tolerance-boundary");
        assert!(check(&v, &["whsec_test_secret"], 1_700_000_300).is_ok());
        assert_eq!(check(&v, &["whsec_test_secret"], 1_700_000_301), Err(SignatureError::Stale));
        assert!(check(&v, &["whsec_test_secret"], 1_699_999_700).is_ok());
        assert_eq!(
            check(&vector("py-dummy-future"), &["whsec_test_secret"], 1_699_999_000),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn the_secret_is_used_byte_exact() {
        let v = vector("py-dummy-wrong-secret-whitespace");
        let v = serde_json::json!({"payload": vector("py-dummy")["payload"], "header": v["header"]});
        assert_eq!(check(&v, &["whsec_test_secret "], 1_700_000_000), Err(SignatureError::Mismatch));
    }

    #[test]
    fn malformed_and_missing_headers() {
        let secrets = vec!["whsec_test_secret".to_owned()];
        for (header, expected) in [
            (None, SignatureError::Missing),
            (Some(""), SignatureError::Missing),
            (Some("bad_header"), SignatureError::Malformed),
            (Some("v1,t=1"), SignatureError::Malformed),
            (Some("t="), SignatureError::Malformed),
            (Some("t=1700000000"), SignatureError::NoV1),
            (Some("t=1700000000,v1=zz-not-hex"), SignatureError::Mismatch),
        ] {
            assert_eq!(verify(b"{}", header, &secrets, 1_700_000_000, 300), Err(expected), "{header:?}");
        }
    }

    #[test]
    fn the_docs_example_header_parses() {
        let example = &vectors()["parse_only_examples"][0];
        let parsed = parse(example["header"].as_str().unwrap()).unwrap();
        assert_eq!(parsed.timestamp, 1_492_774_577);
        assert_eq!(parsed.v1, vec![example["parsed"]["v1"][0].as_str().unwrap().to_owned()]);
    }

    #[test]
    fn sign_matches_the_computed_vectors() {
        let v = vector("py-dummy");
        assert_eq!(
            sign("whsec_test_secret", 1_700_000_000, v["payload"].as_str().unwrap().as_bytes()),
            v["expected_v1"]
        );
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        const SECRET: &str = "whsec_fuzz";

        /// The case that overflowed `now - t` before `abs_diff`.
        #[test]
        fn the_extreme_timestamps_are_stale_not_a_panic() {
            for t in [i64::MIN, i64::MAX] {
                let header = format!("t={t},v1=00");
                assert_eq!(verify(b"{}", Some(&header), &[SECRET.to_owned()], NOW, 300), Err(SignatureError::Stale));
            }
        }
        const NOW: i64 = 1_700_000_000;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

            /// Any header text at all: an answer, never a panic, and never an acceptance without the right MAC.
            #[test]
            fn arbitrary_headers_never_verify(header in ".{0,300}", payload in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = parse(&header);
                prop_assert!(verify(&payload, Some(&header), &[SECRET.to_owned()], NOW, 300).is_err());
            }

            /// Headers shaped like Stripe's, with extreme timestamps and junk signatures.
            #[test]
            fn well_shaped_headers_with_wrong_parts_are_refused(
                t in any::<i64>(),
                sigs in proptest::collection::vec("[0-9a-fA-F]{0,70}|.{0,20}", 0..4),
                extra in "(,[a-z0-9]{0,3}=[^,]{0,10}){0,3}",
            ) {
                let header = format!("t={t}{}{extra}", sigs.iter().map(|s| format!(",v1={s}")).collect::<String>());
                let refused = verify(b"{}", Some(&header), &[SECRET.to_owned()], NOW, 300).is_err();
                prop_assert!(refused);
            }

            /// A genuine signature verifies inside the tolerance and only there, whatever the payload bytes.
            #[test]
            fn genuine_signatures_verify_exactly_within_the_tolerance(
                payload in proptest::collection::vec(any::<u8>(), 0..500),
                skew in -1_000i64..1_000,
            ) {
                let t = NOW + skew;
                let header = format!("t={t},v1={}", sign(SECRET, t, &payload));
                let result = verify(&payload, Some(&header), &[SECRET.to_owned()], NOW, 300);
                prop_assert_eq!(result.is_ok(), skew.abs() <= 300, "{:?}", result);
                let mut tampered = payload.clone();
                tampered.push(b' ');
                prop_assert!(verify(&tampered, Some(&header), &[SECRET.to_owned()], NOW, 300).is_err());
            }
        }
    }
}

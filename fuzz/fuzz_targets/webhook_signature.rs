//! Standard Webhooks headers (`relais::ingest::signature`): the key, `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` as a sender (or an attacker) writes them.
//!
//! Beyond "no panic": a message signed with the key verifies whenever its timestamp is
//! within the tolerance of the clock, is refused as outside the tolerance otherwise
//! (checked with wide arithmetic, whatever the two values), and is refused as a
//! mismatch once its body, id or timestamp changes; arbitrary signature headers never
//! verify a message they were not computed for.
//!
//! Input: `secret 0x1F webhook-id 0x1F webhook-timestamp 0x1F webhook-signature 0x1F
//! body 0x1F now 0x1F timestamp to sign`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relais::ingest::signature::{SignatureError, WebhookSecret, TOLERANCE_SECS};
use relais_fuzz::Fields;

struct Input {
    secret: String,
    msg_id: String,
    timestamp: String,
    signatures: String,
    body: Vec<u8>,
    now: i64,
    ts: i64,
}

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fuzz_target!(|data: &[u8]| {
    let mut f = Fields::new(data);
    let input = Input {
        secret: f.text(),
        msg_id: f.text(),
        timestamp: f.text(),
        signatures: f.text(),
        body: f.bytes().to_vec(),
        now: f.i64(),
        ts: f.i64(),
    };
    // Any configured secret text: accepted or refused, never a panic.
    if let Ok(secret) = WebhookSecret::parse(&input.secret) {
        let _ = secret.sign(&input.msg_id, input.ts, &input.body);
    }
    let key = WebhookSecret::parse(KEY).expect("the reference key");

    // Headers as received: a valid signature is not something random bytes produce.
    let received = key.verify(
        Some(&input.msg_id),
        Some(&input.timestamp),
        Some(&input.signatures),
        &input.body,
        input.now,
    );
    if received.is_ok() {
        let ts: i64 = input.timestamp.trim().parse().expect("verified timestamp");
        let expected = key.sign(&input.msg_id, ts, &input.body);
        assert!(
            input.signatures.split_whitespace().any(|s| s == expected),
            "verified without the expected signature {expected}"
        );
    }

    // A genuinely signed message, at any clock.
    let sig = key.sign(&input.msg_id, input.ts, &input.body);
    let ts = input.ts.to_string();
    let within = (i128::from(input.now) - i128::from(input.ts)).abs() <= i128::from(TOLERANCE_SECS);
    let result = key.verify(
        Some(&input.msg_id),
        Some(&ts),
        Some(&sig),
        &input.body,
        input.now,
    );
    if within {
        assert_eq!(
            result,
            Ok(input.ts),
            "the verified timestamp is the signed one"
        );
        let mut other = input.body.clone();
        other.push(b'x');
        assert_eq!(
            key.verify(
                Some(&input.msg_id),
                Some(&ts),
                Some(&sig),
                &other,
                input.now
            ),
            Err(SignatureError::Mismatch)
        );
        let other_id = format!("{}x", input.msg_id);
        assert_eq!(
            key.verify(
                Some(&other_id),
                Some(&ts),
                Some(&sig),
                &input.body,
                input.now
            ),
            Err(SignatureError::Mismatch)
        );
    } else {
        assert_eq!(result, Err(SignatureError::OutsideTolerance));
    }
});

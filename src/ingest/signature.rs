//! Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}` with the base64 key after `whsec_`, sent as
//! `webhook-signature: v1,<base64> [v1,<base64> ...]`, timestamps within five minutes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Largest clock difference accepted between the sender's timestamp and ours.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// A decoded Standard Webhooks key.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The key is not `whsec_` + base64.
    #[error("the secret is not whsec_ followed by base64")]
    BadSecret,
    /// A `webhook-*` header is missing.
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    #[error("webhook-timestamp is not a Unix timestamp in seconds")]
    BadTimestamp,
    /// The timestamp is more than five minutes away from now.
    #[error("webhook-timestamp is more than five minutes away from the current time")]
    OutsideTolerance,
    /// No listed signature matches.
    #[error("no webhook-signature matches the payload")]
    Mismatch,
}

impl WebhookSecret {
    /// Decodes `whsec_<base64>` (a bare base64 key is accepted too).
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let b64 = text.strip_prefix("whsec_").unwrap_or(text);
        let key = STANDARD
            .decode(b64)
            .map_err(|_| SignatureError::BadSecret)?;
        if key.is_empty() {
            return Err(SignatureError::BadSecret);
        }
        Ok(Self(key))
    }

    /// The `v1,<base64>` signature of a message (for senders and tests).
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(msg_id, timestamp, body)))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    /// Verifies the three headers against the body at time `now` (Unix seconds).
    pub fn verify(
        &self,
        msg_id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let msg_id = msg_id.ok_or(SignatureError::MissingHeader("webhook-id"))?;
        let timestamp = timestamp.ok_or(SignatureError::MissingHeader("webhook-timestamp"))?;
        let signatures = signatures.ok_or(SignatureError::MissingHeader("webhook-signature"))?;
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        if now.abs_diff(ts) > TOLERANCE_SECS.unsigned_abs() {
            return Err(SignatureError::OutsideTolerance);
        }
        let expected = self.mac(msg_id, ts, body);
        let matched = signatures
            .split_whitespace()
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|s| STANDARD.decode(s).ok())
            .any(|sig| sig.ct_eq(&expected).into());
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vector from the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reference_vector_verifies() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TS, BODY), SIG);
        let sigs = format!("v1,bm90IGl0 {SIG}");
        secret
            .verify(Some(ID), Some(&TS.to_string()), Some(&sigs), BODY, TS + 10)
            .unwrap();
    }

    #[test]
    fn refusals() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let ts = TS.to_string();
        let v = |id, t: Option<&str>, s, body: &[u8], now| secret.verify(id, t, s, body, now);
        assert_eq!(
            v(Some(ID), Some(&ts), Some(SIG), b"{}", TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v(Some(ID), Some(&ts), Some(SIG), BODY, TS + 301),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            v(None, Some(&ts), Some(SIG), BODY, TS),
            Err(SignatureError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            v(Some(ID), Some("x"), Some(SIG), BODY, TS),
            Err(SignatureError::BadTimestamp)
        );
        assert!(WebhookSecret::parse("whsec_!!!").is_err());
    }

    #[test]
    fn extreme_timestamps_are_outside_the_tolerance() {
        // Found by the webhook_signature fuzz target: `now - ts` overflowed.
        let secret = WebhookSecret::parse(SECRET).unwrap();
        for (ts, now) in [(i64::MIN, TS), (i64::MAX, -TS), (i64::MIN, i64::MAX)] {
            assert_eq!(
                secret.verify(Some(ID), Some(&ts.to_string()), Some(SIG), BODY, now),
                Err(SignatureError::OutsideTolerance)
            );
        }
    }
}

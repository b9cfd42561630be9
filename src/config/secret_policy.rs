//! Which secrets relais refuses to run with: placeholders from examples, keys published
//! in documentation and test suites, and keys too short to resist guessing.
//!
//! The example configuration once shipped a working `Bearer change-me` and the public
//! Standard Webhooks test key: anyone could have posted to a relais started from it. A
//! relais given such a value refuses to start (and `check-config` fails) naming the key.

/// Fewest bytes of a webhook secret or an HS256 key.
pub const MIN_SECRET_BYTES: usize = 32;

/// Words that mark a value as a placeholder to be replaced (compared case-insensitively).
const PLACEHOLDER_MARKS: &[&str] = &[
    "change-me",
    "change_me",
    "changeme",
    "changethis",
    "change-this",
    "replace-me",
    "replace_me",
    "replaceme",
    "your-256-bit-secret",
    "your-secret",
    "<random",
    "...",
];

/// Secrets published in documentation, reference libraries or test suites (compared
/// exactly): the Standard Webhooks test key, Mercure's example key, jwt.io's default.
const KNOWN_PUBLIC: &[&str] = &[
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "!ChangeThisMercureHubJWTSecretKey!",
    "!ChangeMe!",
    "your-256-bit-secret",
];

/// Why a secret is refused (the message never contains the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakSecret {
    /// An example value left in place.
    #[error("is a placeholder from an example; set a random value (e.g. openssl rand -base64 48), preferably in the environment file")]
    Placeholder,
    /// A value published in documentation or test suites.
    #[error("is a publicly known test key; generate your own (e.g. openssl rand -base64 48)")]
    KnownPublic,
    /// Fewer than [`MIN_SECRET_BYTES`] bytes.
    #[error("is {0} bytes long; at least 32 bytes are required (e.g. openssl rand -base64 48)")]
    TooShort(usize),
}

/// Checks a secret given as text (an HS256 key, a Grist `secret`, the credential of an
/// `Authorization` value).
pub fn check_text(value: &str) -> Result<(), WeakSecret> {
    check_known(value)?;
    if value.len() < MIN_SECRET_BYTES {
        return Err(WeakSecret::TooShort(value.len()));
    }
    Ok(())
}

/// Checks an `Authorization` header value: its credential (after a scheme such as
/// `Bearer `, if any) must pass [`check_text`].
pub fn check_authorization(value: &str) -> Result<(), WeakSecret> {
    check_known(value)?;
    let credential = match value.split_once(' ') {
        Some((_scheme, rest)) => rest.trim(),
        None => value,
    };
    check_text(credential)
}

/// Checks a Standard Webhooks secret: the text for known values, the decoded key for
/// its length.
pub fn check_webhook_key(text: &str, decoded_len: usize) -> Result<(), WeakSecret> {
    check_known(text)?;
    if decoded_len < MIN_SECRET_BYTES {
        return Err(WeakSecret::TooShort(decoded_len));
    }
    Ok(())
}

fn check_known(value: &str) -> Result<(), WeakSecret> {
    let trimmed = value.trim();
    if KNOWN_PUBLIC.iter().any(|k| trimmed.ends_with(k)) {
        return Err(WeakSecret::KnownPublic);
    }
    let lower = trimmed.to_ascii_lowercase();
    if PLACEHOLDER_MARKS.iter().any(|m| lower.contains(m)) {
        return Err(WeakSecret::Placeholder);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_known_keys_are_refused() {
        assert_eq!(
            check_authorization("Bearer change-me"),
            Err(WeakSecret::Placeholder)
        );
        assert_eq!(
            check_authorization("Bearer CHANGE-ME-please-0123456789abcdefghijkl"),
            Err(WeakSecret::Placeholder)
        );
        assert_eq!(
            check_webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 24),
            Err(WeakSecret::KnownPublic)
        );
        assert_eq!(
            check_text("!ChangeThisMercureHubJWTSecretKey!"),
            Err(WeakSecret::KnownPublic)
        );
        assert_eq!(check_text("whsec_..."), Err(WeakSecret::Placeholder));
    }

    #[test]
    fn short_secrets_are_refused_and_long_random_ones_pass() {
        assert_eq!(check_text("short"), Err(WeakSecret::TooShort(5)));
        assert_eq!(
            check_authorization("Bearer 0123456789abcdef0123456789abcde"),
            Err(WeakSecret::TooShort(31))
        );
        check_authorization("Bearer 0123456789abcdef0123456789abcdef").unwrap();
        check_authorization("0123456789abcdef0123456789abcdef").unwrap();
        check_text("integration-test-secret-0123456789").unwrap();
        check_webhook_key("whsec_x", 32).unwrap();
        assert_eq!(
            check_webhook_key("whsec_x", 24),
            Err(WeakSecret::TooShort(24))
        );
    }

    #[test]
    fn the_message_never_holds_the_value() {
        for e in [
            WeakSecret::Placeholder,
            WeakSecret::KnownPublic,
            WeakSecret::TooShort(3),
        ] {
            assert!(!e.to_string().contains("change-me"));
        }
    }
}

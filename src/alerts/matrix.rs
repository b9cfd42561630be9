//! A minimal Matrix client-server API client: sends one `m.notice` to one room and tells
//! the sender what to do with the answer.
//!
//! `PUT {homeserver}/_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}` with
//! `Authorization: Bearer <token>` (the room ID percent-encoded, never parsed: room
//! version 12 IDs have no `:server` part). The homeserver remembers transaction IDs per
//! device, so repeating a send with the same txnId posts nothing new: retries are safe.
//!
//! The access token is only ever written into the `Authorization` header; it is not in
//! any URL, log line or error.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::message::Message;
use crate::config::{MatrixConfig, Secret};

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Longest `Retry-After` honoured; a longer one is treated as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `homeserver`, `access_token` or `room_id` is missing.
    #[error("matrix: homeserver, access_token and room_id must all be set")]
    NotConfigured,
    /// The HTTP client could not be created (TLS set-up).
    #[error("matrix: cannot create the HTTP client: {0}")]
    Http(String),
    /// The shared alert queue in Redis could not be set up.
    #[error("matrix: cannot set up the alert queue in Redis: {0}")]
    Queue(String),
}

/// What became of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Posted (or already posted under this txnId).
    Sent {
        /// The event ID the homeserver gave the message.
        event_id: String,
    },
    /// 429: try again after this delay (`Retry-After` header, else `retry_after_ms`).
    RateLimited {
        /// The homeserver's delay, when it gave one.
        retry_after: Option<Duration>,
    },
    /// Network error, timeout or 5xx: try again later with backoff.
    Transient {
        /// What happened, for the log.
        reason: String,
    },
    /// Refused for good (bad token, not in the room, expired account, bad request):
    /// retrying the same request cannot succeed.
    Rejected {
        /// HTTP status.
        status: u16,
        /// Matrix `errcode` (`M_UNKNOWN_TOKEN`, `M_FORBIDDEN`, ...), or empty.
        errcode: String,
        /// The homeserver's `error` text, shortened.
        error: String,
    },
}

impl SendOutcome {
    /// The `result` label of `relais_matrix_sends_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SendOutcome::Sent { .. } => "ok",
            SendOutcome::RateLimited { .. } => "rate_limited",
            SendOutcome::Transient { .. } => "error_retry",
            SendOutcome::Rejected { .. } => "rejected",
        }
    }
}

/// Sends notices to the configured room.
#[derive(Clone)]
pub struct MatrixClient {
    http: reqwest::Client,
    /// `{homeserver}/_matrix/client/v3/rooms/{encoded room}/send/m.room.message/`.
    send_base: String,
    token: Secret,
    room_id: String,
    homeserver: String,
}

impl MatrixClient {
    /// A client for `config` (homeserver, token and room must be set).
    pub fn new(config: &MatrixConfig) -> Result<Self, ClientError> {
        let (Some(homeserver), Some(token), Some(room_id)) = (
            config.homeserver.as_ref(),
            config.access_token.as_ref(),
            config.room_id.as_ref(),
        ) else {
            return Err(ClientError::NotConfigured);
        };
        let homeserver = homeserver.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .user_agent(concat!("relais/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Self {
            http,
            send_base: send_base(&homeserver, room_id),
            token: token.clone(),
            room_id: room_id.clone(),
            homeserver,
        })
    }

    /// The room alerts go to.
    pub fn room_id(&self) -> &str {
        &self.room_id
    }

    /// The homeserver base URL.
    pub fn homeserver(&self) -> &str {
        &self.homeserver
    }

    /// Sends `message` as an `m.notice` under transaction `txn_id` (URL-safe).
    pub async fn send_notice(&self, txn_id: &str, message: &Message) -> SendOutcome {
        let url = format!("{}{}", self.send_base, utf8_percent_encode(txn_id, SEGMENT));
        let body = notice_body(message);
        let response = self
            .http
            .put(url)
            .bearer_auth(self.token.expose())
            .json(&body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                return SendOutcome::Transient {
                    reason: describe_reqwest_error(&e),
                }
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match response.bytes().await {
            Ok(bytes) => classify(status, retry_after.as_deref(), &bytes),
            // The status is known: a 2xx whose body was cut still means sent (a retry
            // with the same txnId would say so), anything else is worth a retry.
            Err(e) if (200..300).contains(&status) => {
                tracing::debug!("matrix: reading a {status} answer failed: {e}");
                SendOutcome::Sent {
                    event_id: String::new(),
                }
            }
            Err(e) => SendOutcome::Transient {
                reason: format!(
                    "HTTP {status}, body unreadable: {}",
                    describe_reqwest_error(&e)
                ),
            },
        }
    }
}

/// `{homeserver}/_matrix/client/v3/rooms/{room}/send/m.room.message/` with the room ID
/// percent-encoded.
pub fn send_base(homeserver: &str, room_id: &str) -> String {
    format!(
        "{}/_matrix/client/v3/rooms/{}/send/m.room.message/",
        homeserver.trim_end_matches('/'),
        utf8_percent_encode(room_id, SEGMENT)
    )
}

/// The JSON content of a notice. `"m.mentions": {}` says it mentions no one: clients
/// then ignore the text when deciding whom to notify, so a record's comment holding
/// "@room" or a user ID pings nobody.
pub fn notice_body(message: &Message) -> Value {
    json!({
        "msgtype": "m.notice",
        "body": message.body,
        "format": "org.matrix.custom.html",
        "formatted_body": message.formatted_body,
        "m.mentions": {},
    })
}

/// Reads a homeserver answer: status, `Retry-After` header and JSON body.
pub fn classify(status: u16, retry_after_header: Option<&str>, body: &[u8]) -> SendOutcome {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |key: &str| {
        json.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match status {
        200..=299 => SendOutcome::Sent {
            event_id: text("event_id"),
        },
        429 => {
            let header = retry_after_header
                .and_then(|h| h.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body_ms = json
                .get("retry_after_ms")
                .and_then(Value::as_u64)
                .map(Duration::from_millis);
            SendOutcome::RateLimited {
                retry_after: header.or(body_ms).map(|d| d.min(MAX_RETRY_AFTER)),
            }
        }
        408 | 500..=599 => SendOutcome::Transient {
            reason: format!("HTTP {status} {}", short(&text("errcode"), &text("error"))),
        },
        _ => SendOutcome::Rejected {
            status,
            errcode: text("errcode"),
            error: shorten(&text("error"), 200),
        },
    }
}

/// What an operator should do about a rejection.
pub fn rejection_hint(status: u16, errcode: &str) -> &'static str {
    match errcode {
        "M_UNKNOWN_TOKEN" | "M_MISSING_TOKEN" => {
            "the access token is invalid, expired or logged out: log the bot in again and set matrix.access_token"
        }
        "ORG_MATRIX_EXPIRED_ACCOUNT" => {
            "the bot's account has expired (Tchap accounts must be renewed): renew it, then restart"
        }
        "M_FORBIDDEN" => {
            "the bot may not post in this room: invite it and make it join (POST /join/{roomId}), or give it the power level to post"
        }
        "M_NOT_FOUND" => "the room is unknown to this homeserver: check matrix.room_id",
        "M_TOO_LARGE" => "the message is too large for the homeserver",
        _ if status == 401 => "authentication refused: check matrix.access_token",
        _ if status == 403 => "forbidden: check that the bot is a member of the room",
        _ => "the homeserver refused the request",
    }
}

fn short(errcode: &str, error: &str) -> String {
    match (errcode.is_empty(), error.is_empty()) {
        (true, true) => String::new(),
        (false, true) => errcode.to_string(),
        (true, false) => shorten(error, 200),
        (false, false) => format!("{errcode}: {}", shorten(error, 200)),
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max).collect();
        s.push('…');
        s
    }
}

/// A reqwest error with its causes (`connection refused`, `timed out`), never headers.
fn describe_reqwest_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_percent_encoded() {
        assert_eq!(
            send_base("https://hs.example/", "!abc:hs.example"),
            "https://hs.example/_matrix/client/v3/rooms/%21abc%3Ahs.example/send/m.room.message/"
        );
        assert_eq!(
            send_base("http://127.0.0.1:1", "!6toh/DiI+x"),
            "http://127.0.0.1:1/_matrix/client/v3/rooms/%216toh%2FDiI%2Bx/send/m.room.message/"
        );
    }

    #[test]
    fn notice_body_has_both_forms() {
        let body = notice_body(&Message {
            body: "a < b".into(),
            formatted_body: "a &lt; b".into(),
        });
        assert_eq!(body["msgtype"], "m.notice");
        assert_eq!(body["format"], "org.matrix.custom.html");
        assert_eq!(body["body"], "a < b");
        assert_eq!(body["formatted_body"], "a &lt; b");
        assert_eq!(body["m.mentions"], json!({}), "mentions no one");
    }

    #[test]
    fn success_gives_the_event_id() {
        assert_eq!(
            classify(200, None, br#"{"event_id":"$e"}"#),
            SendOutcome::Sent {
                event_id: "$e".into()
            }
        );
    }

    #[test]
    fn rate_limits_prefer_the_header_then_the_body() {
        let body = br#"{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":2500}"#;
        assert_eq!(
            classify(429, Some("3"), body),
            SendOutcome::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            classify(429, None, body),
            SendOutcome::RateLimited {
                retry_after: Some(Duration::from_millis(2500))
            }
        );
        assert_eq!(
            classify(429, Some("soon"), b""),
            SendOutcome::RateLimited { retry_after: None }
        );
        assert_eq!(
            classify(429, Some("999999"), b""),
            SendOutcome::RateLimited {
                retry_after: Some(MAX_RETRY_AFTER)
            }
        );
    }

    #[test]
    fn server_errors_are_transient() {
        for status in [500, 502, 503, 504, 408] {
            assert!(matches!(
                classify(status, None, b"<html>bad gateway</html>"),
                SendOutcome::Transient { .. }
            ));
        }
    }

    #[test]
    fn auth_and_membership_errors_are_rejections() {
        let cases = [
            (401, "M_UNKNOWN_TOKEN"),
            (401, "M_MISSING_TOKEN"),
            (403, "M_FORBIDDEN"),
            (403, "ORG_MATRIX_EXPIRED_ACCOUNT"),
            (400, "M_BAD_JSON"),
        ];
        for (status, code) in cases {
            let body = format!(r#"{{"errcode":"{code}","error":"nope"}}"#);
            let outcome = classify(status, None, body.as_bytes());
            assert_eq!(
                outcome,
                SendOutcome::Rejected {
                    status,
                    errcode: code.into(),
                    error: "nope".into()
                }
            );
            assert_eq!(outcome.metric_label(), "rejected");
        }
        assert!(rejection_hint(403, "M_FORBIDDEN").contains("invite"));
        assert!(rejection_hint(401, "M_UNKNOWN_TOKEN").contains("access token"));
        assert!(rejection_hint(403, "ORG_MATRIX_EXPIRED_ACCOUNT").contains("expired"));
    }
}

//! JWT refusals, authorization of selectors and topics, malformed requests, CORS, the
//! operations endpoints and the CLI, against the real binary.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use relais::auth::{Claims, MercureClaim};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn claims(exp: Option<u64>, nbf: Option<u64>) -> Claims {
    Claims {
        sub: Some("t".into()),
        exp,
        nbf,
        iat: None,
        mercure: MercureClaim {
            subscribe: vec!["*".into()],
            publish: vec!["*".into()],
            payload: None,
        },
    }
}

async fn subscribe_status(relais: &Relais, query: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client().get(format!("{}?{}", relais.hub_url(), query));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = if status == 200 {
        String::new()
    } else {
        response.text().await.unwrap()
    };
    (status, body)
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401() {
    let relais = Relais::start(&[]);
    let expired = sign(&claims(Some(now() - 10), None));
    let not_yet = sign(&claims(Some(now() + 3600), Some(now() + 3600)));
    let none_alg = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(r#"{"mercure":{"subscribe":["*"]}}"#)
    );
    let good = token("a", &["*"], &["*"]);
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    parts[1] = b64(r#"{"sub":"mallory","mercure":{"subscribe":["*"],"publish":["*"]}}"#);
    let forged = parts.join(".");
    // HS512 with the right secret: the configured algorithm is HS256, so it is refused.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims(None, None),
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(None, None),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-of-some-length-1234"),
    )
    .unwrap();

    let cases = [
        ("no token", None, "token is required"),
        ("expired", Some(expired.as_str()), "expired"),
        ("nbf in the future", Some(not_yet.as_str()), "not valid yet"),
        ("alg none", Some(none_alg.as_str()), "algorithm"),
        ("wrong algorithm", Some(hs512.as_str()), "algorithm"),
        ("forged payload", Some(forged.as_str()), "signature"),
        ("other key", Some(other_key.as_str()), "signature"),
        ("garbage", Some("not.a.jwt"), "malformed"),
    ];
    for (what, tok, why) in cases {
        let (status, body) = subscribe_status(&relais, "topic=t", tok).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains(why), "{what}: {body}");
        // Publishing is refused the same way and publishes nothing.
        if let Some(t) = tok {
            let r = publish(&relais, t, &[("topic", "t"), ("data", "x")]).await;
            assert_eq!(r.status(), 401, "{what} (publish)");
        }
    }
    // A token without exp is accepted (as Mercure does).
    let no_exp = sign(&claims(None, None));
    assert_eq!(
        subscribe_status(&relais, "topic=t", Some(&no_exp)).await.0,
        200
    );
}

#[tokio::test]
async fn require_exp_refuses_tokens_without_exp() {
    let relais = Relais::start(&[("RELAIS_JWT__REQUIRE_EXP", "true")]);
    let no_exp = sign(&claims(None, None));
    let (status, body) = subscribe_status(&relais, "topic=t", Some(&no_exp)).await;
    assert_eq!(status, 401);
    assert!(body.contains("exp"), "{body}");
}

#[tokio::test]
async fn token_from_query_parameter_and_cookie() {
    let relais = Relais::start(&[]);
    let tok = token("a", &["*"], &["*"]);
    let by_query = client()
        .get(format!("{}?topic=t&authorization={tok}", relais.hub_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);
    let by_cookie = client()
        .get(format!("{}?topic=t", relais.hub_url()))
        .header("Cookie", format!("theme=dark; mercureAuthorization={tok}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);
    // The header wins: a bad header token is not rescued by a good cookie.
    let bad_header = client()
        .get(format!("{}?topic=t", relais.hub_url()))
        .bearer_auth("not.a.jwt")
        .header("Cookie", format!("mercureAuthorization={tok}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_header.status(), 401);
}

#[tokio::test]
async fn selectors_and_topics_outside_the_claims_get_403() {
    let relais = Relais::start(&[]);
    let limited = token("tech", &["audits/{token}"], &["audits/a1"]);
    assert_eq!(
        subscribe_status(&relais, "topic=audits%2Fa1", Some(&limited))
            .await
            .0,
        200
    );
    let (status, body) = subscribe_status(&relais, "topic=interventions", Some(&limited)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("interventions"));
    assert_eq!(
        subscribe_status(&relais, "topic=*", Some(&limited)).await.0,
        403
    );

    let watcher = token("w", &["*"], &[]);
    let mut sub = SseClient::connect(&relais, "topic=*", Some(&watcher), &[]).await;
    let r = publish(&relais, &limited, &[("topic", "audits/a2"), ("data", "x")]).await;
    assert_eq!(r.status(), 403);
    let r = publish(
        &relais,
        &limited,
        &[
            ("topic", "audits/a1"),
            ("topic", "audits/a2"),
            ("data", "x"),
        ],
    )
    .await;
    assert_eq!(r.status(), 403, "every topic must be covered");
    let r = publish(&relais, &watcher, &[("topic", "audits/a1"), ("data", "x")]).await;
    assert_eq!(r.status(), 403, "no publish claim");
    assert!(
        sub.events(1, QUIET).await.is_empty(),
        "nothing was published"
    );
}

#[tokio::test]
async fn anonymous_subscribers_only_when_allowed() {
    let closed = Relais::start(&[]);
    assert_eq!(subscribe_status(&closed, "topic=t", None).await.0, 401);
    let open = Relais::start(&[("RELAIS_HUB__ALLOW_ANONYMOUS", "true")]);
    assert_eq!(subscribe_status(&open, "topic=t", None).await.0, 200);
    // Anonymous publishing is never allowed.
    let r = client()
        .post(open.hub_url())
        .form(&[("topic", "t"), ("data", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn stream_closes_when_the_token_expires() {
    let relais = Relais::start(&[]);
    let short = sign(&claims(Some(now() + 2), None));
    let mut sub = SseClient::connect(&relais, "topic=t", Some(&short), &[]).await;
    assert_eq!(sub.status, 200);
    assert!(
        sub.closed_within(Duration::from_secs(8)).await,
        "stream must close at exp"
    );
}

#[tokio::test]
async fn malformed_requests_are_refused_and_change_nothing() {
    let relais = Relais::start(&[("RELAIS_SERVER__MAX_BODY_BYTES", "2048")]);
    let tok = token("a", &["*"], &["*"]);
    let mut watcher =
        SseClient::connect(&relais, "topic=*&lastEventID=earliest", Some(&tok), &[]).await;

    let (status, body) = subscribe_status(&relais, "", Some(&tok)).await;
    assert_eq!(status, 400);
    assert!(body.contains("\"field\":\"topic\""), "{body}");
    let (status, body) = subscribe_status(&relais, "topic=audits%2F%7Bunclosed", Some(&tok)).await;
    assert_eq!(status, 400, "{body}");

    type Case<'a> = (&'a [(&'a str, &'a str)], u16, &'a str);
    let cases: [Case; 5] = [
        (&[("data", "no topic")], 400, "topic"),
        (&[("topic", "t"), ("retry", "soon")], 400, "retry"),
        (&[("topic", "t"), ("id", "a\nb")], 400, "id"),
        (&[("topic", "t"), ("type", "a\rb")], 400, "type"),
        (&[("topic", "t"), ("id", "earliest")], 400, "id"),
    ];
    for (form, status, field) in cases {
        let r = publish(&relais, &tok, form).await;
        assert_eq!(r.status().as_u16(), status, "{form:?}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains(&format!("\"field\":\"{field}\"")),
            "{form:?}: {body}"
        );
    }
    let json = client()
        .post(relais.hub_url())
        .bearer_auth(&tok)
        .header("content-type", "application/json")
        .body(r#"{"topic":"t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 415);
    let big = "x".repeat(4096);
    let r = publish(&relais, &tok, &[("topic", "t"), ("data", big.as_str())]).await;
    assert_eq!(r.status(), 413);

    // A publisher ID reused for another update is refused (an identical retry is
    // answered 200 and publishes nothing), and the first event stays the only one.
    assert_eq!(
        publish(&relais, &tok, &[("topic", "t"), ("id", "same")])
            .await
            .status(),
        200
    );
    assert_eq!(
        publish(
            &relais,
            &tok,
            &[("topic", "t"), ("id", "same"), ("data", "other")]
        )
        .await
        .status(),
        409
    );
    let seen = watcher.events(3, QUIET).await;
    assert_eq!(
        seen.len(),
        1,
        "only the one valid publish went through: {seen:?}"
    );
    assert_eq!(
        client()
            .get(format!("{}/nope", relais.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn ops_endpoints_and_cors() {
    let relais = Relais::start(&[(
        "RELAIS_SERVER__CORS_ORIGINS",
        "[\"https://docs.getgrist.com\"]",
    )]);
    let c = client();
    assert_eq!(
        c.get(format!("{}/healthz", relais.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/readyz", relais.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let tok = token("a", &["*"], &["*"]);
    let mut sub = SseClient::connect(&relais, "topic=t", Some(&tok), &[]).await;
    publish_ok(&relais, &tok, "t", "x").await;
    sub.next_event(ARRIVE).await.unwrap();
    let metrics = common::metrics_text(&relais).await;
    for name in [
        "relais_subscribers_connected 1",
        "relais_events_out_total",
        "relais_delivery_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing in {metrics}");
    }

    let preflight = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, relais.hub_url())
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let ok = preflight("https://docs.getgrist.com").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://docs.getgrist.com"
    );
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

fn relais_cmd(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relais"));
    cmd.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("RELAIS_") {
            cmd.env_remove(key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn check_config_masks_secrets_and_names_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let ok = relais_cmd(
        &["check-config"],
        &[
            (
                "RELAIS_JWT__SECRET",
                "a-very-secret-value-123-0123456789abcdef",
            ),
            ("RELAIS_SERVER__STATE_DIR", state),
        ],
    );
    assert!(ok.status.success());
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("listen = \"127.0.0.1:8080\""), "{out}");
    assert!(!out.contains("a-very-secret-value"), "{out}");
    assert!(out.contains("********"));

    let bad = relais_cmd(
        &["check-config"],
        &[
            ("RELAIS_SERVER__LISTEN", "nowhere"),
            ("RELAIS_SERVER__STATE_DIR", state),
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("server.listen"));

    let file = dir.path().join("relais.toml");
    std::fs::write(&file, "[hub]\nhistory_size = \"many\"\n").unwrap();
    let bad = relais_cmd(
        &["check-config", "--config", file.to_str().unwrap()],
        &[("RELAIS_SERVER__STATE_DIR", state)],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("hub.history_size"), "{err}");

    std::fs::write(&file, "[hub]\nhistroy_size = 5\n").unwrap();
    let typo = relais_cmd(
        &["check-config", "--config", file.to_str().unwrap()],
        &[("RELAIS_SERVER__STATE_DIR", state)],
    );
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("histroy_size"));

    let missing = relais_cmd(&["check-config", "--config", "/nonexistent.toml"], &[]);
    assert!(!missing.status.success());
    let leak = relais_cmd(
        &["check-config"],
        &[
            ("RELAIS_JWT__SECRET", "short"),
            ("RELAIS_SERVER__STATE_DIR", state),
        ],
    );
    assert!(!leak.status.success());
    assert!(
        !String::from_utf8_lossy(&leak.stderr).contains("short\""),
        "no secret echoed"
    );
}

#[tokio::test]
async fn token_command_uses_the_generated_key_of_serve() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap().to_string();
    // No jwt.secret at all: serve generates a key, token reads the same one.
    let relais = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relais"));
        cmd.arg("serve");
        for (key, _) in std::env::vars() {
            if key.starts_with("RELAIS_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("RELAIS_SERVER__LISTEN", "127.0.0.1:0")
            .env("RELAIS_SERVER__STATE_DIR", &state)
            .stderr(std::process::Stdio::piped());
        KillOnDrop(cmd.spawn().unwrap())
    };
    let mut child = relais;
    let mut reader = std::io::BufReader::new(child.0.stderr.take().expect("piped stderr"));
    let mut base = String::new();
    let mut line = String::new();
    use std::io::BufRead;
    while reader.read_line(&mut line).unwrap() > 0 {
        if let Some(p) = line.find("listening on http://") {
            base = line[p + 13..].trim().to_string();
            break;
        }
        line.clear();
    }
    assert!(!base.is_empty());
    let out = relais_cmd(
        &[
            "token",
            "--sub",
            "alice",
            "--subscribe",
            "*",
            "--publish",
            "*",
            "--ttl",
            "1h",
        ],
        &[("RELAIS_SERVER__STATE_DIR", &state)],
    );
    assert!(out.status.success());
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = client()
        .get(format!("{base}/.well-known/mercure?topic=t"))
        .bearer_auth(&tok)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bad_ttl = relais_cmd(
        &["token", "--sub", "a", "--ttl", "forever"],
        &[("RELAIS_SERVER__STATE_DIR", &state)],
    );
    assert!(!bad_ttl.status.success());
    let bad_sel = relais_cmd(
        &["token", "--sub", "a", "--subscribe", "a/{b"],
        &[("RELAIS_SERVER__STATE_DIR", &state)],
    );
    assert!(!bad_sel.status.success());
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_documented_example_configuration_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/relais.toml");
    let out = relais_cmd(
        &["check-config", "--config", example],
        &[("RELAIS_SERVER__STATE_DIR", dir.path().to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // The example ships no usable credential: its sources are commented out.
    assert!(!text.contains("[sources."), "{text}");
    assert!(
        !text.contains("change-me") && !text.contains("whsec_"),
        "no credential: {text}"
    );
}

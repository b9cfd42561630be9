//! Mercure 1.0 and 0.x side by side on one relais, against the real binary: the
//! cross-generation delivery matrix, 1.0 token rules, each generation's token transports,
//! error forms and resume headers, and `relais token --format 1.0`.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// `k=v&k=v` with every value percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Status, `WWW-Authenticate` and JSON body of a refused subscription.
async fn refused(
    relais: &Relais,
    q: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, serde_json::Value) {
    let mut request = client()
        .get(format!("{}?{q}", relais.hub_url()))
        .timeout(Duration::from_secs(3));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    assert_ne!(status, 200, "{q} was accepted");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, challenge, body)
}

#[derive(Clone, Copy, Debug)]
enum Request {
    TopicExact,
    TopicTemplate,
    MatchExact,
    MatchPattern,
}

#[tokio::test]
async fn both_generations_deliver_to_each_other() {
    let relais = Relais::start(&[("RELAIS_HUB__ALLOW_ANONYMOUS", "true")]);
    let topic = |i: usize| format!("https://relais.test/m/{i}/item");
    // Publishers: a 0.x token granting a URI template, a 1.0 token granting a URL pattern.
    let publisher_v0 = token("pub0", &[], &["https://relais.test/m/{i}/item"]);
    let publisher_v1 = access_token(
        &relais,
        "pub1",
        &[],
        &[("https://relais.test/m/:i/item", true)],
    );

    struct Case {
        name: String,
        topic: String,
        private: bool,
        publisher_v1: bool,
        subscriber: SseClient,
    }
    let mut cases = Vec::new();
    let requests = [
        Request::TopicExact,
        Request::TopicTemplate,
        Request::MatchExact,
        Request::MatchPattern,
    ];
    for request in requests {
        for token_v1 in [false, true] {
            for publisher_v1 in [false, true] {
                for private in [false, true] {
                    let i = cases.len();
                    let t = topic(i);
                    let template = format!("https://relais.test/m/{i}/{{x}}");
                    let pattern = format!("https://relais.test/m/{i}/:x");
                    let q = match request {
                        Request::TopicExact => query(&[("topic", &t)]),
                        Request::TopicTemplate => query(&[("topic", &template)]),
                        Request::MatchExact => query(&[("match", &t)]),
                        Request::MatchPattern => query(&[("match_urlpattern", &pattern)]),
                    };
                    // The subscriber's grant, in its token's own kind. A template request
                    // is granted by the same template or `*`, a pattern request by the
                    // same pattern or `*`: a 1.0 token cannot hold a template, a 0.x
                    // token cannot hold a pattern.
                    let subscriber_token = match (token_v1, request) {
                        (false, Request::MatchPattern) => token("s", &["*"], &[]),
                        (false, _) => token("s", &[&template], &[]),
                        (true, Request::TopicTemplate) => {
                            access_token(&relais, "s", &[("*", false)], &[])
                        }
                        (true, _) => access_token(&relais, "s", &[(&pattern, true)], &[]),
                    };
                    let subscriber =
                        SseClient::connect(&relais, &q, Some(&subscriber_token), &[]).await;
                    let name = format!(
                        "{request:?} with a {} token, {} publisher, {}",
                        if token_v1 { "1.0" } else { "0.x" },
                        if publisher_v1 { "1.0" } else { "0.x" },
                        if private { "private" } else { "public" }
                    );
                    assert_eq!(subscriber.status, 200, "{name}");
                    cases.push(Case {
                        name,
                        topic: t,
                        private,
                        publisher_v1,
                        subscriber,
                    });
                }
            }
        }
    }
    // Anonymous subscribers of both generations, to everything: public updates only.
    let mut anonymous_v0 = SseClient::connect(&relais, "topic=*", None, &[]).await;
    let mut anonymous_v1 = SseClient::connect(&relais, "match=*", None, &[]).await;
    assert_eq!((anonymous_v0.status, anonymous_v1.status), (200, 200));

    let mut public_ids = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let publisher = if case.publisher_v1 {
            &publisher_v1
        } else {
            &publisher_v0
        };
        let data = format!("case {i}");
        let mut form = vec![("topic", case.topic.as_str()), ("data", data.as_str())];
        if case.private {
            form.push(("private", "on"));
        }
        let response = publish(&relais, publisher, &form).await;
        assert_eq!(response.status(), 200, "publish for {}", case.name);
        let id = response.text().await.unwrap();
        if !case.private {
            public_ids.push(id);
        }
    }
    for (i, case) in cases.iter_mut().enumerate() {
        let got = case.subscriber.events(1, ARRIVE).await;
        assert_eq!(got.len(), 1, "{} received nothing", case.name);
        assert_eq!(got[0].data, format!("case {i}"), "{}", case.name);
        assert!(
            case.subscriber.next_event(QUIET).await.is_none(),
            "{}: another case's update leaked",
            case.name
        );
    }
    for anonymous in [&mut anonymous_v0, &mut anonymous_v1] {
        let got = anonymous.events(public_ids.len() + 1, ARRIVE).await;
        let ids: Vec<String> = got.iter().map(|e| e.id.clone()).collect();
        assert_eq!(
            ids, public_ids,
            "anonymous subscribers get public updates only"
        );
    }
}

#[tokio::test]
async fn url_patterns_match_relais_own_topics() {
    let relais = Relais::start(&[("RELAIS_HUB__ALLOW_ANONYMOUS", "true")]);
    let publisher = access_token(&relais, "p", &[], &[("*", false)]);
    let mut audit = SseClient::connect(&relais, "match_urlpattern=audits/:token", None, &[]).await;
    let mut module = SseClient::connect(
        &relais,
        &query(&[("match_urlpattern", "audits/:token/modules/:id")]),
        None,
        &[],
    )
    .await;
    // A 1.0 exact matcher is exact: braces are not a template.
    let mut literal =
        SseClient::connect(&relais, &query(&[("match", "audits/{token}")]), None, &[]).await;
    publish_ok(&relais, &publisher, "audits/abc/modules/M050", "module").await;
    publish_ok(&relais, &publisher, "audits/abc", "audit").await;
    assert_eq!(
        audit
            .events(2, QUIET)
            .await
            .iter()
            .map(|e| e.data.as_str())
            .collect::<Vec<_>>(),
        ["audit"]
    );
    assert_eq!(
        module
            .events(2, QUIET)
            .await
            .iter()
            .map(|e| e.data.as_str())
            .collect::<Vec<_>>(),
        ["module"]
    );
    assert!(literal.next_event(QUIET).await.is_none());
}

#[tokio::test]
async fn access_tokens_are_checked_as_rfc_9068_says() {
    let relais = Relais::start(&[("RELAIS_JWT__ISSUERS", "[\"relais\"]")]);
    let good = access_token(&relais, "a", &[("*", false)], &[]);
    let ok = SseClient::connect(&relais, "match=x", Some(&good), &[]).await;
    assert_eq!(ok.status, 200);
    let hub = relais.hub_url();
    let sign = |typ: Option<&str>, payload: serde_json::Value| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.typ = typ.map(str::to_string);
        jsonwebtoken::encode(
            &header,
            &payload,
            &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let detail = json!([{"type": "https://mercure.rocks/authorization-detail", "actions": ["subscribe"], "topics": [{"match": "*"}]}]);
    let bad_detail = json!([
        {"type": "https://mercure.rocks/authorization-detail", "actions": ["subscribe"], "topics": [{"match": "*"}]},
        {"type": "https://mercure.rocks/authorization-detail", "actions": ["subscribe"], "topics": [{"match": "a", "match_type": "uritemplate"}]}
    ]);
    let cases = [
        (
            "no exp",
            sign(
                Some("at+jwt"),
                json!({"iss": "relais", "aud": hub, "authorization_details": detail}),
            ),
        ),
        (
            "expired",
            sign(
                Some("at+jwt"),
                json!({"iss": "relais", "aud": hub, "exp": 1000, "authorization_details": detail}),
            ),
        ),
        (
            "aud of another hub",
            sign(
                Some("at+jwt"),
                json!({"iss": "relais", "aud": "https://elsewhere/.well-known/mercure", "exp": exp, "authorization_details": detail}),
            ),
        ),
        (
            "no aud",
            sign(
                Some("at+jwt"),
                json!({"iss": "relais", "exp": exp, "authorization_details": detail}),
            ),
        ),
        (
            "unknown iss",
            sign(
                Some("at+jwt"),
                json!({"iss": "mallory", "aud": hub, "exp": exp, "authorization_details": detail}),
            ),
        ),
        (
            "typ JWT",
            sign(
                Some("JWT"),
                json!({"iss": "relais", "aud": hub, "exp": exp, "authorization_details": detail}),
            ),
        ),
        (
            "one bad detail",
            sign(
                Some("at+jwt"),
                json!({"iss": "relais", "aud": hub, "exp": exp, "authorization_details": bad_detail}),
            ),
        ),
    ];
    for (what, token) in &cases {
        let (status, challenge, body) = refused(&relais, "match=x", Some(token), &[]).await;
        assert_eq!(status, 401, "{what}");
        let challenge = challenge.unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        assert_eq!(body["error"], "invalid_token", "{what}");
        // The same token on a 0.x request: refused too, in the 0.x form.
        let (status, challenge, body) = refused(&relais, "topic=x", Some(token), &[]).await;
        assert_eq!(
            (status, challenge.as_deref()),
            (401, Some("Bearer realm=\"relais\"")),
            "{what}"
        );
        assert_eq!(body["error"], "unauthorized", "{what}");
    }
}

#[tokio::test]
async fn each_generation_answers_errors_in_its_own_form() {
    let relais = Relais::start(&[]);
    let v1_narrow = access_token(
        &relais,
        "a",
        &[("https://x/books/:id", true)],
        &[("https://x/books/:id", true)],
    );
    let v0_narrow = token("a", &["https://x/books/{id}"], &["https://x/books/{id}"]);

    // 1.0 requests: RFC 6750.
    let (status, challenge, body) = refused(&relais, "match=x", None, &[]).await;
    assert_eq!(
        (status, challenge.as_deref()),
        (401, Some("Bearer realm=\"relais\"")),
        "no token: bare challenge"
    );
    assert_eq!(body["error"], "unauthorized");
    for (q, field) in [
        ("match_regexp=x", "match_regexp"),
        ("match=a&topic=b", "topic"),
        (
            &query(&[("match_urlpattern", "https://x/:id(")])[..],
            "match_urlpattern",
        ),
        ("last_event_id=1", "match"),
    ] {
        let (status, challenge, body) = refused(&relais, q, Some(&v1_narrow), &[]).await;
        if q == "last_event_id=1" {
            // No selector at all and no match parameter: a 0.x request, 0.x answer.
            assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
            continue;
        }
        assert_eq!(status, 400, "{q}");
        assert!(
            challenge.unwrap().contains("error=\"invalid_request\""),
            "{q}"
        );
        assert_eq!(
            (body["error"].as_str(), body["field"].as_str()),
            (Some("invalid_request"), Some(field)),
            "{q}"
        );
    }
    let (status, challenge, body) = refused(
        &relais,
        &query(&[("match", "https://x/authors/1")]),
        Some(&v1_narrow),
        &[],
    )
    .await;
    assert_eq!(status, 403);
    assert!(challenge.unwrap().contains("error=\"insufficient_scope\""));
    assert_eq!(body["error"], "insufficient_scope");
    // A 0.x token on a 1.0 request is answered in the 1.0 form too.
    let (status, challenge, _) = refused(
        &relais,
        &query(&[("match", "https://x/authors/1")]),
        Some(&v0_narrow),
        &[],
    )
    .await;
    assert_eq!(status, 403);
    assert!(challenge.unwrap().contains("insufficient_scope"));

    // 0.x requests: today's answers.
    let (status, challenge, body) = refused(&relais, "topic=x", None, &[]).await;
    assert_eq!(
        (status, challenge.as_deref(), body["error"].as_str()),
        (401, Some("Bearer realm=\"relais\""), Some("unauthorized"))
    );
    let (status, challenge, body) = refused(
        &relais,
        &query(&[("topic", "https://x/authors/1")]),
        Some(&v1_narrow),
        &[],
    )
    .await;
    assert_eq!(
        (status, challenge, body["error"].as_str()),
        (403, None, Some("forbidden"))
    );
    let (status, challenge, body) =
        refused(&relais, "topic=audits/{x", Some(&v0_narrow), &[]).await;
    assert_eq!(
        (status, challenge, body["error"].as_str()),
        (400, None, Some("bad_request"))
    );

    // Publishing: the form follows the presented token.
    let response = publish(
        &relais,
        &v1_narrow,
        &[("topic", "https://x/authors/1"), ("data", "d")],
    )
    .await;
    assert_eq!(response.status(), 403);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    let response = publish(
        &relais,
        &v0_narrow,
        &[("topic", "https://x/authors/1"), ("data", "d")],
    )
    .await;
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("www-authenticate").is_none());
    let response = publish(
        &relais,
        &v1_narrow,
        &[("topic", "https://x/books/1"), ("retry", "soon")],
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_request"));
    // Both kinds of token publish within their grants.
    publish_ok(&relais, &v1_narrow, "https://x/books/1", "a").await;
    publish_ok(&relais, &v0_narrow, "https://x/books/2", "b").await;
}

#[tokio::test]
async fn each_generation_takes_its_token_transports() {
    let relais = Relais::start(&[]);
    let v1 = access_token(&relais, "a", &[("*", false)], &[]);
    let cookie_v1 = format!("__Secure-mercure_access_token={v1}");
    let cookie_v0 = format!("mercureAuthorization={v1}");
    let with_cookie = |c: &str| vec![("cookie".to_string(), c.to_string())];
    let connect = |q: String, headers: Vec<(String, String)>| {
        let relais = &relais;
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            SseClient::connect(relais, &q, None, &headers).await.status
        }
    };
    // 1.0: the 1.0 cookie; never the query string nor the 0.x cookie.
    assert_eq!(
        connect("match=x".into(), with_cookie(&cookie_v1)).await,
        200
    );
    assert_eq!(
        connect(format!("match=x&authorization={v1}"), vec![]).await,
        401
    );
    assert_eq!(
        connect(format!("match=x&access_token={v1}"), vec![]).await,
        401
    );
    assert_eq!(
        connect("match=x".into(), with_cookie(&cookie_v0)).await,
        401
    );
    // 0.x: the query string, the 0.x cookie, and the 1.0 cookie last.
    assert_eq!(
        connect(format!("topic=x&authorization={v1}"), vec![]).await,
        200
    );
    assert_eq!(
        connect("topic=x".into(), with_cookie(&cookie_v0)).await,
        200
    );
    assert_eq!(
        connect("topic=x".into(), with_cookie(&cookie_v1)).await,
        200
    );
}

/// A raw HTTP/1.1 request whose head carries `Content-Length: 0`: the lean path leaves it
/// to hyper and the router, so this reads the headers of the other serving path.
fn head_via_router(relais: &Relais, path_and_query: &str) -> String {
    let addr = relais.base.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    write!(
        socket,
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[tokio::test]
async fn resume_headers_follow_each_generation() {
    let relais = Relais::start(&[("RELAIS_HUB__ALLOW_ANONYMOUS", "true")]);
    let publisher = token("p", &[], &["*"]);
    let first = publish_ok(&relais, &publisher, "t", "1").await;
    publish_ok(&relais, &publisher, "t", "2").await;

    // 1.0: Mercure-Last-Event-ID whenever a resume was asked: the ID, or earliest.
    let mut resumed = SseClient::connect(
        &relais,
        &query(&[("match", "t"), ("last_event_id", &first)]),
        None,
        &[],
    )
    .await;
    assert_eq!(resumed.headers["mercure-last-event-id"], first.as_str());
    assert!(resumed.headers.get("last-event-id").is_none());
    assert_eq!(resumed.events(1, ARRIVE).await[0].data, "2");
    let by_header =
        SseClient::connect(&relais, "match=t", None, &[("last-event-id", &first)]).await;
    assert_eq!(by_header.headers["mercure-last-event-id"], first.as_str());
    let gap = SseClient::connect(&relais, "match=t&last_event_id=forgotten", None, &[]).await;
    assert_eq!(gap.headers["mercure-last-event-id"], "earliest");
    let live = SseClient::connect(&relais, "match=t", None, &[]).await;
    assert!(live.headers.get("mercure-last-event-id").is_none());

    // 0.x: Last-Event-ID: earliest after a gap only.
    let gap = SseClient::connect(&relais, "topic=t&lastEventID=forgotten", None, &[]).await;
    assert_eq!(gap.headers["last-event-id"], "earliest");
    assert!(gap.headers.get("mercure-last-event-id").is_none());
    let resumed = SseClient::connect(
        &relais,
        &query(&[("topic", "t"), ("lastEventID", &first)]),
        None,
        &[],
    )
    .await;
    assert!(resumed.headers.get("last-event-id").is_none());

    // The router's path sends the same headers as the lean path.
    let head = head_via_router(
        &relais,
        &format!(
            "/.well-known/mercure?{}",
            query(&[("match", "t"), ("last_event_id", &first)])
        ),
    );
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!(
            "mercure-last-event-id: {}",
            first.to_ascii_lowercase()
        )),
        "{head}"
    );
    let head = head_via_router(
        &relais,
        "/.well-known/mercure?topic=t&lastEventID=forgotten",
    );
    assert!(
        head.contains("last-event-id: earliest") && !head.contains("mercure-last-event-id"),
        "{head}"
    );
}

fn relais_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relais"));
    cmd.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("RELAIS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RELAIS_JWT__SECRET", TEST_SECRET);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn relais_token_mints_both_generations() {
    let relais = Relais::start(&[]);
    let hub = relais.hub_url();
    let out = relais_cli(
        &[
            "token",
            "--format",
            "1.0",
            "--sub",
            "tablet",
            "--subscribe-urlpattern",
            "audits/:token",
            "--publish",
            "audits/abc",
            "--aud",
            &hub,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v1 = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let header = jsonwebtoken::decode_header(&v1).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let mut stream =
        SseClient::connect(&relais, "match_urlpattern=audits/:token", Some(&v1), &[]).await;
    assert_eq!(stream.status, 200);
    publish_ok(&relais, &v1, "audits/abc", "from a 1.0 token").await;
    assert_eq!(stream.events(1, ARRIVE).await[0].data, "from a 1.0 token");

    // The hub's resource identifier comes from server.public_url when --aud is not given.
    let out = relais_cli(
        &["token", "--format", "1.0", "--sub", "x", "--subscribe", "*"],
        &[("RELAIS_SERVER__PUBLIC_URL", "https://relais.example")],
    );
    assert!(out.status.success());
    let payload = String::from_utf8(out.stdout).unwrap();
    let claims: serde_json::Value = {
        use base64::Engine;
        let part = payload.trim().split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["aud"], "https://relais.example/.well-known/mercure");
    assert_eq!(
        claims["authorization_details"][0]["type"],
        "https://mercure.rocks/authorization-detail"
    );
    assert!(claims["exp"].is_u64() && claims.get("mercure").is_none());

    // 0.x stays the default.
    let out = relais_cli(
        &["token", "--sub", "x", "--subscribe", "audits/{token}"],
        &[],
    );
    assert!(out.status.success());
    let v0 = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(
        jsonwebtoken::decode_header(&v0).unwrap().typ.as_deref(),
        Some("at+jwt")
    );
    assert_eq!(
        SseClient::connect(&relais, "topic=audits/{token}", Some(&v0), &[])
            .await
            .status,
        200
    );

    // Refusals say what to do.
    for (args, says) in [
        (
            vec![
                "token",
                "--format",
                "1.0",
                "--sub",
                "x",
                "--subscribe",
                "audits/{token}",
                "--aud",
                "a",
            ],
            "URI template",
        ),
        (
            vec!["token", "--sub", "x", "--subscribe-urlpattern", "audits/:t"],
            "--format 1.0",
        ),
        (
            vec!["token", "--format", "1.0", "--sub", "x", "--subscribe", "*"],
            "--aud",
        ),
        (
            vec![
                "token",
                "--format",
                "1.0",
                "--sub",
                "x",
                "--subscribe-urlpattern",
                "https://x/:id(",
                "--aud",
                "a",
            ],
            "URL pattern",
        ),
    ] {
        let out = relais_cli(&args, &[]);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_1_0_publisher_marks_private_by_the_field_alone() {
    let relais = Relais::start(&[("RELAIS_HUB__ALLOW_ANONYMOUS", "true")]);
    let v1 = access_token(&relais, "p1", &[], &[("*", false)]);
    let v0 = token("p0", &[], &["*"]);
    let mut anonymous = SseClient::connect(&relais, "match=t", None, &[]).await;
    for (publisher, data) in [(&v1, "1.0 private=off"), (&v0, "0.x private=off")] {
        let response = publish(
            &relais,
            publisher,
            &[("topic", "t"), ("data", data), ("private", "off")],
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    let got = anonymous.events(2, QUIET).await;
    assert_eq!(
        got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["0.x private=off"]
    );
    let response = publish(&relais, &v1, &[("topic", "t"), ("id", "#7")]).await;
    assert_eq!(response.status(), 400);
    publish_ok(&relais, &v0, "t", "0.x keeps accepting").await;
}

//! relais refuses to run with a placeholder, a published test key, or a webhook / HS256
//! secret under 32 bytes, naming the key and never echoing the value; the documented
//! example configuration ships no usable credential.

use std::process::Command;

fn relais(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relais"));
    cmd.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("RELAIS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RELAIS_SERVER__LISTEN", "127.0.0.1:0")
        .env("RELAIS_SERVER__STATE_DIR", state.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // `serve` must refuse at once; a timeout would mean it started.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("relais {args:?} kept running with {env:?}");
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/relais.toml");
const GOOD_WHSEC: &str = "whsec_cmVsYWlzLWluZ2VzdC1odWItdGVzdC1rZXktMzJieXQ=";

/// Both `serve` and `check-config` refuse, naming `key` and not echoing `value`.
fn refused(env: &[(&str, &str)], key: &str, value: &str) {
    for command in ["check-config", "serve"] {
        let out = relais(&[command, "--config", EXAMPLE], env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command} accepted {env:?}");
        assert!(err.contains(key), "{command}: {err}");
        assert!(!err.contains(value), "{command} echoed the secret: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(value));
    }
}

#[test]
fn placeholder_credentials_are_refused() {
    refused(
        &[
            ("RELAIS_SOURCES__CEREMA__KIND", "grist"),
            ("RELAIS_SOURCES__CEREMA__AUTHORIZATION", "Bearer change-me"),
        ],
        "sources.cerema.authorization",
        "change-me",
    );
    refused(
        &[("RELAIS_JWT__SECRET", "!ChangeThisMercureHubJWTSecretKey!")],
        "jwt.secret",
        "ChangeThis",
    );
}

#[test]
fn the_public_standard_webhooks_test_key_is_refused() {
    refused(
        &[
            ("RELAIS_SOURCES__DIAGPV__KIND", "hub"),
            (
                "RELAIS_SOURCES__DIAGPV__SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ],
        "sources.diagpv.secret",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    );
}

#[test]
fn short_secrets_are_refused() {
    // 31 bytes: one short of the minimum.
    refused(
        &[("RELAIS_JWT__SECRET", "abcdefghij0123456789ABCDEFGHIJK")],
        "jwt.secret",
        "abcdefghij0123456789",
    );
    refused(
        &[
            ("RELAIS_SOURCES__CEREMA__KIND", "grist"),
            ("RELAIS_SOURCES__CEREMA__SECRET", "legacy-secret"),
        ],
        "sources.cerema.secret",
        "legacy-secret",
    );
    refused(
        &[
            ("RELAIS_SOURCES__HUB__KIND", "hub"),
            // 24 bytes once decoded.
            (
                "RELAIS_SOURCES__HUB__SECRET",
                "whsec_c2hvcnQta2V5LW9mLTI0LWJ5dGVzLiEh",
            ),
        ],
        "sources.hub.secret",
        "c2hvcnQta2V5",
    );
    refused(
        &[
            ("RELAIS_SOURCES__CEREMA__KIND", "grist"),
            ("RELAIS_SOURCES__CEREMA__AUTHORIZATION", "Bearer hook-token"),
        ],
        "sources.cerema.authorization",
        "hook-token",
    );
}

#[test]
fn long_random_secrets_in_the_environment_pass_with_the_example_file() {
    let out = relais(
        &["check-config", "--config", EXAMPLE],
        &[
            (
                "RELAIS_JWT__SECRET",
                "k2V9xQ7pL0mN3bR8tY6wZ1aS4dF5gH7jK9lP0oI2uE",
            ),
            ("RELAIS_SOURCES__CEREMA__KIND", "grist"),
            (
                "RELAIS_SOURCES__CEREMA__AUTHORIZATION",
                "Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c",
            ),
            ("RELAIS_SOURCES__DIAGPV__KIND", "hub"),
            ("RELAIS_SOURCES__DIAGPV__SECRET", GOOD_WHSEC),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[sources.cerema]") && text.contains("[sources.diagpv]"));
    assert!(
        !text.contains("9f8e7d6c") && !text.contains("k2V9xQ"),
        "{text}"
    );
}

//! Smoke run of `relais-bench`: a few subscribers for a couple of seconds, `trickle` and
//! `burst`, with `--json`. It checks that the tool still works end to end against the
//! real relais binary (every subscriber gets every event exactly once) — never timings;
//! the full benchmark runs are documented in docs/performance.md and kept out of the
//! test suite.

use std::process::Command;

fn run_bench(workload: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_relais-bench"))
        .args([
            "--subscribers",
            "50",
            "--workload",
            workload,
            "--duration",
            "2s",
            "--json",
            "--quiet",
            "--relais-bin",
            env!("CARGO_BIN_EXE_relais"),
        ])
        .args(extra)
        .output()
        .expect("run relais-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "relais-bench failed: {stdout}\n{stderr}"
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn check(v: &serde_json::Value, workload: &str) {
    assert_eq!(v["workload"], workload, "{v}");
    assert_eq!(v["subscribers"], 50, "every subscriber connected: {v}");
    assert_eq!(v["lost"], 0, "no event lost: {v}");
    assert_eq!(v["duplicated"], 0, "no event duplicated: {v}");
    let events = v["events"].as_u64().expect("events");
    assert!(events > 0, "{v}");
    assert_eq!(v["deliveries"].as_u64(), Some(events * 50), "{v}");
    assert!(v["deliveries_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    for key in [
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_p999_ms",
        "latency_max_ms",
        "connect_per_sec",
        "rss_bytes",
        "rss_per_connection_bytes",
        "cpu_seconds_relais",
        "cpu_seconds_bench",
    ] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }
}

#[test]
fn trickle_delivers_every_event_once() {
    let v = run_bench("trickle", &["--rate", "50"]);
    check(&v, "trickle");
}

#[test]
fn burst_delivers_every_event_once() {
    let v = run_bench("burst", &[]);
    check(&v, "burst");
}

//! Smoke run of `relais-bench`: a few subscribers for a couple of seconds, `trickle`,
//! `burst` and `topics`, with `--json`, and `--peer bare` beside relais. It checks that
//! the tool still works end to end against the real relais binary (every subscriber gets
//! every event it is owed exactly once, the ratios are there, and `bare` wrote the same
//! bytes per delivery as relais) — never timings; the full benchmark runs are
//! documented in docs/performance.md and kept out of the test suite.

use std::path::PathBuf;
use std::process::Command;

/// The `relais` binary of this workspace's build (next to `relais-bench`): `cargo test`
/// at the workspace root builds it for relais's own integration tests.
fn relais_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_relais-bench"));
    let bin = bench.with_file_name("relais");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --bin relais`, or `cargo test` at the workspace root)",
        bin.display()
    );
    bin
}

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
        ])
        .arg("--relais-bin")
        .arg(relais_bin())
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
    check_owed(v, workload, |events| events * 50);
}

/// Checks one target's figures; `owed` gives the deliveries its events make.
fn check_owed(v: &serde_json::Value, workload: &str, owed: impl Fn(u64) -> u64) {
    assert_eq!(v["workload"], workload, "{v}");
    assert_eq!(v["subscribers"], 50, "every subscriber connected: {v}");
    assert_eq!(v["lost"], 0, "no event lost: {v}");
    assert_eq!(v["duplicated"], 0, "no event duplicated: {v}");
    let events = v["events"].as_u64().expect("events");
    assert!(events > 0, "{v}");
    assert_eq!(v["deliveries"].as_u64(), Some(owed(events)), "{v}");
    assert!(v["deliveries_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    for key in [
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_p999_ms",
        "latency_max_ms",
        "connect_per_sec",
        "rss_bytes",
        "rss_per_connection_bytes",
        "cpu_seconds_bench",
        "cpu_seconds_per_1000_deliveries",
        "bytes_per_delivery",
    ] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }
}

/// The peer wrote the same bytes per delivery as relais (within 2 %: the response head,
/// warm-up and heartbeats differ), so the ratios compare the same stream.
fn same_bytes(v: &serde_json::Value, peer: &str) {
    let ours = v["bytes_per_delivery"].as_f64().unwrap_or(0.0);
    let theirs = v["peers"][peer]["bytes_per_delivery"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(ours > 0.0, "{v}");
    assert!(
        (ours - theirs).abs() <= ours * 0.02,
        "relais wrote {ours} bytes per delivery, {peer} {theirs}: {v}"
    );
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

#[test]
fn concurrent_publishers_lose_and_repeat_nothing() {
    // Eight connections publishing batches at once: each event still reaches every
    // subscriber exactly once, whatever order the batches are committed in.
    let v = run_bench(
        "burst",
        &["--senders", "8", "--window", "8", "--batch", "20"],
    );
    check(&v, "burst");
    assert_eq!(v["senders"], 8, "{v}");
}

#[test]
fn burst_runs_beside_the_bare_peer_with_ratios() {
    let v = run_bench("burst", &["--peer", "bare"]);
    check(&v, "burst");
    assert!(v["cpu_seconds_relais"].is_number(), "{v}");
    let bare = &v["peers"]["bare"];
    check(bare, "burst");
    assert!(bare["cpu_seconds_bare"].is_number(), "{v}");
    for key in [
        "deliveries_per_sec",
        "latency_p50_ms",
        "latency_p99_ms",
        "rss_per_connection_bytes",
        "cpu_seconds_per_1000_deliveries",
    ] {
        assert!(bare["ratio"][key].is_number(), "ratio {key} missing: {v}");
    }
    same_bytes(&v, "bare");
}

#[test]
fn topics_deliver_each_event_to_its_topic_only() {
    // 50 subscribers on 20 topics: topics 0..9 have 3 subscribers, 10..19 have 2.
    let v = run_bench("topics", &["--topics", "20", "--peer", "bare"]);
    let owed = |events: u64| {
        let on = |k: u64| if k < 10 { 3 } else { 2 };
        (events / 20) * 50 + (0..events % 20).map(on).sum::<u64>()
    };
    check_owed(&v, "topics", owed);
    assert_eq!(v["topics"], 20, "{v}");
    check_owed(&v["peers"]["bare"], "topics", owed);
    same_bytes(&v, "bare");
}

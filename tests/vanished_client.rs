//! A tablet that vanishes without closing its connection (power cut, lost network) leaves
//! the audit's presence list: relais notices that its heartbeats are never acknowledged
//! (`server.write_timeout` as the TCP user timeout) and ends its stream.
//!
//! The tablet runs in a network namespace of its own, joined to relais by a veth pair, so
//! that its link can be cut without either side closing the connection. This needs root
//! and iproute2 (the suite runs as root in CI); elsewhere the test says why it cannot run,
//! and fails when `CI` is set.

mod common;

use common::{presence_of, technician, Relais, SseClient};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A network namespace with one end of a veth pair, removed on drop.
struct Island {
    name: String,
    host_if: String,
    child: Option<Child>,
}

impl Island {
    /// `10.213.{n}.1` on the host side, `10.213.{n}.2` inside the namespace.
    fn create(n: u8) -> Result<Island, String> {
        let pid = std::process::id();
        let name = format!("relais-vanish-{pid}");
        let host_if = format!("rvh{}", pid % 100_000);
        let ns_if = format!("rvn{}", pid % 100_000);
        let island = Island {
            name: name.clone(),
            host_if: host_if.clone(),
            child: None,
        };
        let host = format!("10.213.{n}.1/30");
        let guest = format!("10.213.{n}.2/30");
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &name],
            vec![
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
            ],
            vec!["addr", "add", &host, "dev", &host_if],
            vec!["link", "set", &host_if, "up"],
            vec!["-n", &name, "addr", "add", &guest, "dev", &ns_if],
            vec!["-n", &name, "link", "set", &ns_if, "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(&step)?;
        }
        Ok(island)
    }

    /// Cuts the link under the connection: nothing is closed, nothing gets through.
    fn cut(&mut self) {
        if let Some(child) = &self.child {
            // The tablet's process freezes too: it cannot answer anything either.
            let _ = Command::new("kill")
                .args(["-STOP", &child.id().to_string()])
                .status();
        }
        ip(&["link", "set", &self.host_if, "down"]).expect("cut the link");
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The next subscription event of `audits/{audit}` with this `active` value, within `wait`.
async fn presence(sse: &mut SseClient, audit: &str, active: bool, wait: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + wait;
    let topic = format!("audits/{audit}");
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = sse.next_event(left).await else {
            panic!("no subscription event for {topic} active={active} within {wait:?}");
        };
        let doc: Value = serde_json::from_str(&event.data).expect("JSON-LD");
        if doc["topic"] == topic.as_str() && doc["active"] == active {
            return doc;
        }
    }
}

#[tokio::test]
async fn a_tablet_that_vanishes_without_closing_leaves_the_presence_list() {
    let mut island = match Island::create(7) {
        Ok(island) => island,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED: cannot build a network namespace here ({why}); needs root and iproute2"
            );
            return;
        }
        Err(why) => panic!("cannot build a network namespace in CI: {why}"),
    };
    let relais = Relais::start(&[
        ("RELAIS_HUB__PERSIST", "false"),
        ("RELAIS_SERVER__LISTEN", "0.0.0.0:0"),
        ("RELAIS_SERVER__HEARTBEAT", "500ms"),
        ("RELAIS_SERVER__WRITE_TIMEOUT", "2s"),
    ]);
    let port = relais.base.rsplit(':').next().expect("port").to_string();

    // The office's board watches who is on audit V.
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("topic", &presence_of("V"))
        .finish();
    let mut board =
        SseClient::connect(&relais, &query, Some(&technician("Bureau", "V")), &[]).await;
    assert_eq!(board.status, 200);

    // Adrien's tablet, on the other side of the link.
    let url = format!("http://10.213.7.1:{port}/.well-known/mercure?topic=audits%2FV");
    let tablet = Command::new("ip")
        .args([
            "netns",
            "exec",
            &island.name,
            "curl",
            "-sN",
            "-o",
            "/dev/null",
        ])
        .arg("-H")
        .arg(format!(
            "Authorization: Bearer {}",
            technician("Adrien", "V")
        ))
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the tablet's client");
    island.child = Some(tablet);
    let arrived = presence(&mut board, "V", true, Duration::from_secs(10)).await;
    assert_eq!(arrived["payload"]["name"], "Adrien");

    // The tablet vanishes: no FIN, no RST, its link is simply gone.
    island.cut();
    let left = presence(&mut board, "V", false, Duration::from_secs(20)).await;
    assert_eq!(left["subscriber"], arrived["subscriber"]);
    assert_eq!(left["payload"]["name"], "Adrien");
}

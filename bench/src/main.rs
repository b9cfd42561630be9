//! `relais-bench`: the load tool of the performance targets (SPEC, Performance targets).
//!
//! It starts (or targets) a relais, opens N SSE subscribers, publishes a named workload,
//! and measures deliveries per second, end-to-end latency (HDR histogram), connect rate,
//! server memory per connection, CPU of the server and of itself, and lost or duplicated
//! events; with `--peer bare` (a minimal server of its own: the machine's limit) and
//! `--peer pushpin` it does the same against those in the same run and prints the ratio
//! relais/peer of every figure. Progress goes to stderr once a second; the table or
//! `--json` to stdout.

mod args;
mod bare;
mod frames;
mod http1;
mod latency;
mod procstat;
mod pushpin;
mod relais_proc;
mod report;
mod state;
mod storm;
mod subscribers;
mod wire;
mod workload;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use args::{Args, Ingest, Peer, Workload};
use http1::Http1;
use report::Figures;
use subscribers::{Endpoint, RequestFor, Shared, Subscribers};
use workload::{topic_of, Sender};

fn main() -> ExitCode {
    let args = Args::parse();
    if args.serve_bare {
        return serve_bare();
    }
    let nofile = procstat::raise_nofile();
    // Each subscriber needs one descriptor here and one in the server; keep some spare.
    if args.subscribers as u64 + 200 > nofile {
        eprintln!(
            "relais-bench: {} subscribers need more than the open-file limit of {nofile} \
             (the hard limit of this machine); use at most {}",
            args.subscribers,
            nofile.saturating_sub(200)
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relais-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relais-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `bare` peer's server process (see [`bare`]).
fn serve_bare() -> ExitCode {
    procstat::raise_nofile();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relais-bench bare: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bare::serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relais-bench bare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The request of subscriber `i`, given how a target spells a subscription to a topic
/// (`None`: every event).
fn requests(
    args: &Args,
    make: impl Fn(Option<&str>) -> Vec<u8> + Send + Sync + 'static,
) -> RequestFor {
    match args.topic_count() {
        Some(t) => Arc::new(move |i| make(Some(&topic_of(i as u64 % t)))),
        None => {
            let all = make(None);
            Arc::new(move |_| all.clone())
        }
    }
}

/// On Ctrl-C or SIGTERM: stop the servers this tool started, then exit.
fn spawn_interrupt_handler() {
    tokio::spawn(async {
        let ctrl_c = tokio::signal::ctrl_c();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
        eprintln!("relais-bench: interrupted; stopping the servers it started");
        procstat::terminate_children();
        std::process::exit(130);
    });
}

async fn run(args: Args) -> Result<(), String> {
    spawn_interrupt_handler();
    let ingest = match args.ingest {
        Ingest::Mercure => "mercure",
        Ingest::Grist => "grist",
    };
    if args.storm {
        return storm::run(&args).await;
    }
    if args.state_records > 0 {
        let mut target = relais_proc::RelaisTarget::start(&args)?;
        let figures = state::measure(
            target.addr,
            &format!("/hooks/grist/{}", args.source),
            &target.hook_auth,
            &target.subscribe_token,
            args.state_records,
            args.state_samples,
        )
        .await;
        target.stop();
        figures?.print();
        return Ok(());
    }
    let relais = {
        let mut target = relais_proc::RelaisTarget::start(&args)?;
        let topics = args.topic_count();
        let sender = match args.ingest {
            Ingest::Mercure => Sender::Mercure {
                http: Http1::new(target.addr),
                auth: format!("Bearer {}", target.publish_token),
                topics,
            },
            Ingest::Grist => Sender::Grist {
                http: Http1::new(target.addr),
                path: format!("/hooks/grist/{}", args.source),
                hook_auth: target.hook_auth.clone(),
                auth: format!("Bearer {}", target.publish_token),
                topics,
            },
        };
        let request = {
            let request = relais_proc::SubscribeRequest {
                addr: target.addr,
                token: target.subscribe_token.clone(),
            };
            requests(&args, move |t| request.build(t))
        };
        let endpoint = Endpoint {
            addr: target.addr,
            request,
        };
        let pid = target.pid;
        let pids: Pids = Arc::new(move || pid.map(|p| vec![p]).unwrap_or_default());
        let figures = measure(&args, "relais", endpoint, sender, pids).await;
        if figures.subscribers == 0 {
            let logs = target
                .logs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .join("\n");
            if !logs.is_empty() {
                eprintln!("relais's last log lines:\n{logs}");
            }
        }
        target.stop();
        figures
    };
    let mut peers: Vec<(&'static str, Figures)> = Vec::new();
    for peer in &args.peer {
        if peers.iter().any(|(n, _)| *n == peer.name()) {
            continue;
        }
        let figures = match peer {
            Peer::Bare => {
                let mut target = bare::BareTarget::start()?;
                let sender = Sender::Bare {
                    http: Http1::new(target.addr),
                    topics: args.topic_count(),
                    frames: frames::PeerFrames::new(args.ingest, &args.source),
                };
                let request = {
                    let build = bare::BareTarget::request_builder(target.addr);
                    requests(&args, build)
                };
                let endpoint = Endpoint {
                    addr: target.addr,
                    request,
                };
                let pid = target.pid;
                let pids: Pids = Arc::new(move || vec![pid]);
                let figures = measure(&args, "bare", endpoint, sender, pids).await;
                target.stop();
                figures
            }
            Peer::Pushpin => {
                let mut target = pushpin::PushpinTarget::start(&args).await?;
                let sender = Sender::Pushpin {
                    http: Http1::new(target.publish_addr),
                    channel: pushpin::CHANNEL.into(),
                    topics: args.topic_count(),
                    frames: frames::PeerFrames::new(args.ingest, &args.source),
                };
                let request = {
                    let addr = target.http_addr;
                    requests(&args, move |t| pushpin::subscribe_request(addr, t))
                };
                let endpoint = Endpoint {
                    addr: target.http_addr,
                    request,
                };
                let root = target.pid();
                // Pushpin's services are children of the runner: sample the whole tree.
                let pids: Pids = Arc::new(move || root.map(procstat::tree).unwrap_or_default());
                let figures = measure(&args, "pushpin", endpoint, sender, pids).await;
                target.stop();
                figures
            }
        };
        peers.push((peer.name(), figures));
    }
    let peer_refs: Vec<(&str, &Figures)> = peers.iter().map(|(n, f)| (*n, f)).collect();
    if args.json {
        println!("{}", report::json(&args, ingest, &relais, &peer_refs));
    } else {
        print!("{}", report::table(&args, ingest, &relais, &peer_refs));
        println!("{}", report::summary(&relais, &peer_refs));
    }
    Ok(())
}

/// The processes whose memory and CPU are the server's.
type Pids = Arc<dyn Fn() -> Vec<u32> + Send + Sync>;

/// Prints one progress line per second until cancelled; keeps the largest RSS seen.
fn spawn_progress(
    label: &'static str,
    args: &Args,
    shared: Arc<Shared>,
    pids: Pids,
    peak_rss: Arc<std::sync::atomic::AtomicU64>,
) -> tokio_util::sync::CancellationToken {
    let done = tokio_util::sync::CancellationToken::new();
    let stop = done.clone();
    let quiet = args.quiet;
    let n = args.subscribers;
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last_delivered = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let s = procstat::sample(&pids());
            peak_rss.fetch_max(s.rss_bytes, Ordering::Relaxed);
            let delivered = shared.delivered.load(Ordering::Relaxed);
            if !quiet {
                eprintln!(
                    "[{label} {:>5.1}s] connected {}/{n} sent {} delivered {} ({}/s) dup {} closed {} | server rss {:.1} MiB cpu {:.1}s",
                    start.elapsed().as_secs_f64(),
                    shared.connected.load(Ordering::Relaxed),
                    shared.sent.load(Ordering::Relaxed),
                    delivered,
                    delivered - last_delivered,
                    shared.duplicates.load(Ordering::Relaxed),
                    shared.closed.load(Ordering::Relaxed),
                    s.rss_bytes as f64 / 1048576.0,
                    s.cpu_seconds,
                );
            }
            last_delivered = delivered;
        }
    });
    done
}

/// Connects the subscribers, warms up, runs the workload, drains, and computes figures.
async fn measure(
    args: &Args,
    label: &'static str,
    endpoint: Endpoint,
    mut sender: Sender,
    pids: Pids,
) -> Figures {
    let mut f = Figures {
        workload: args.workload.name().into(),
        ..Figures::default()
    };
    let shared = Arc::new(Shared::new());
    let peak_rss = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = spawn_progress(label, args, shared.clone(), pids.clone(), peak_rss.clone());
    let before = procstat::sample(&pids());

    // Connect.
    let n = args.subscribers;
    let t0 = Instant::now();
    let subs = Subscribers::spawn(
        n,
        endpoint,
        args.source_ips,
        args.connect_concurrency,
        shared.clone(),
    );
    let connect_limit = Duration::from_secs(60) + Duration::from_millis(n as u64 * 5);
    loop {
        let done = shared.connected.load(Ordering::Relaxed)
            + shared.connect_errors.load(Ordering::Relaxed);
        if done >= n as u64 || t0.elapsed() > connect_limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = shared.connected.load(Ordering::Relaxed);
    f.connect_errors = shared.connect_errors.load(Ordering::Relaxed);
    f.connect_per_sec = connected as f64 / connect_secs.max(1e-9);
    if connected < n as u64 {
        let e = shared
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        f.note = Some(format!(
            "only {connected} of {n} subscribers connected: {}",
            e.unwrap_or_else(|| "timed out".into())
        ));
    }

    // Warm up: every stream must carry an event before measuring.
    let warm_start = Instant::now();
    let mut warmed = connected == 0;
    while !warmed && warm_start.elapsed() < Duration::from_secs(30) {
        if let Err(e) = sender.warm().await {
            f.note = Some(format!("warm-up publish failed: {e}"));
            break;
        }
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_millis(300) {
            if shared.warm_seen.load(Ordering::Relaxed) >= connected {
                warmed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let ready = shared.warm_seen.load(Ordering::Relaxed);
    if !warmed && f.note.is_none() {
        f.note = Some(format!(
            "only {ready} of {connected} subscribers received the warm-up event"
        ));
    }
    f.subscribers = ready;
    let after_connect = procstat::sample(&pids());

    // Workload.
    let cpu0 = (
        procstat::sample(&pids()).cpu_seconds,
        procstat::own().cpu_seconds,
    );
    let published = if ready > 0 {
        let mut senders = vec![sender];
        for _ in 1..args.senders {
            senders.push(senders[0].fresh());
        }
        workload::run(args, senders, &shared, ready).await
    } else {
        workload::Published::default()
    };
    if let Some(e) = &published.stopped_early {
        f.note = Some(format!("publishing stopped early: {e}"));
    }
    // Drain: wait for every subscriber to have every event, or for a quiet period.
    let expected = workload::expected_deliveries(published.events, ready, args.topic_count());
    if args.workload != Workload::Idle {
        workload::wait_delivered(&shared, expected, args.drain).await;
    }
    let end = procstat::sample(&pids());
    let cpu1 = (end.cpu_seconds, procstat::own().cpu_seconds);
    progress.cancel();
    let outcomes = subs.stop(&shared).await;

    f.events = published.events;
    f.deliveries = shared.delivered.load(Ordering::Relaxed);
    let last_rx = shared.last_rx_ns.load(Ordering::Relaxed);
    let span = last_rx.saturating_sub(published.first_send_ns) as f64 / 1e9;
    f.deliveries_per_sec = if span > 0.0 {
        f.deliveries as f64 / span
    } else {
        0.0
    };
    f.elapsed_secs = published.end_ns.saturating_sub(published.first_send_ns) as f64 / 1e9;
    if f.elapsed_secs > 0.0 {
        f.events_per_sec = f.events as f64 / f.elapsed_secs;
    }
    let p = latency::Percentiles::of(&shared.latencies.merged());
    (
        f.latency_p50_ms,
        f.latency_p99_ms,
        f.latency_p999_ms,
        f.latency_max_ms,
    ) = (p.p50, p.p99, p.p999, p.max);
    f.rss_bytes = peak_rss
        .load(Ordering::Relaxed)
        .max(end.rss_bytes)
        .max(after_connect.rss_bytes);
    let after = if args.workload == Workload::Idle {
        after_connect.rss_bytes.max(end.rss_bytes)
    } else {
        after_connect.rss_bytes
    };
    f.rss_per_connection_bytes = if ready > 0 {
        after.saturating_sub(before.rss_bytes) as f64 / ready as f64
    } else {
        0.0
    };
    f.cpu_seconds_server = cpu1.0 - cpu0.0;
    f.cpu_seconds_bench = cpu1.1 - cpu0.1;
    f.streams_closed = shared.closed.load(Ordering::Relaxed);
    f.streams_reopened = shared.retried.load(Ordering::Relaxed);
    if f.streams_closed > 0 {
        let e = shared
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        let closed = format!("{} streams ended early (first: {e})", f.streams_closed);
        f.note = Some(match f.note.take() {
            Some(n) => format!("{n}; {closed}"),
            None => closed,
        });
    }
    for o in &outcomes {
        if o.tracker.distinct > 0 || o.warmed {
            f.lost += match args.topic_count() {
                // Subscriber i is owed the events s with s ≡ i (mod T).
                Some(t) => {
                    let (total, r) = (published.events, o.index as u64 % t);
                    let owed = total / t + u64::from(r < total % t);
                    owed.saturating_sub(o.tracker.received(total))
                }
                None => o.tracker.missing(published.events),
            };
        }
        f.duplicated += o.tracker.duplicates;
    }
    if f.deliveries > 0 {
        f.cpu_seconds_per_1000_deliveries = f.cpu_seconds_server * 1000.0 / f.deliveries as f64;
        f.bytes_per_delivery =
            shared.stream_bytes.load(Ordering::Relaxed) as f64 / f.deliveries as f64;
    }
    f
}

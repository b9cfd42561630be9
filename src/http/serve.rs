//! Serving connections: the accept loop.
//!
//! An HTTP/1.1 subscription (`GET /.well-known/mercure`) that passes every check takes a
//! lean path: relais reads the request head itself, then writes the response head and the
//! stream's bytes straight to the socket ([`super::lean_stream`]; the body ends when the
//! connection closes, as HTTP/1.1 allows), one write per coalesced batch, from a runtime
//! of the streams' own (`StreamsRuntime`), so that answers to requests do not queue behind
//! the fan-out. A connection that is only a stream then costs its socket and a small task
//! of its own, not a general HTTP connection with its read and write buffers: this is
//! what lets one process hold tens of thousands of idle subscribers.
//!
//! Every other request, and every subscription that is refused (so every error answer),
//! goes to hyper and the axum router with the bytes already read replayed first, so both
//! paths answer exactly alike. Streams hyper serves get the same write timeout and
//! token expiry from a watchdog beside their body (`super::watchdog`), which closes the
//! connection through a [`ConnectionControl`] each request carries.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::head::{self, Head, SubscribeRequest};
use super::lean_stream::LeanStream;
use super::subscribe::prepare;
use super::watchdog::{ConnectionControl, Tracked};
use super::AppState;
use crate::config::ServerConfig;

/// Time in-flight requests get to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Least time between two "connection limit reached" log lines.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// What a connection over `server.max_connections` is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 30\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections, retry.\r\n";
/// What a client whose request head exceeds `server.max_head_bytes` is told.
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\ncontent-length: 47\r\nconnection: close\r\n\r\nrequest head larger than server.max_head_bytes\n";

/// Accepts connections until shutdown, then lets in-flight requests finish.
///
/// At most `server.max_connections` connections are open at once; beyond, a new
/// connection is answered 503 and closed, counted in `relais_connections_refused_total`
/// and logged (at most once every ten seconds).
pub async fn run(listener: TcpListener, router: Router, app: AppState) {
    let tracker = TaskTracker::new();
    let streams_runtime = StreamsRuntime::start();
    let streams_handle = streams_runtime.handle();
    // Shared, so that a connection's task holds a pointer to it, not a copy.
    let builder = Arc::new(hyper_builder(&app.config.server));
    let max = app.config.server.max_connections;
    let write_timeout = app.config.server.write_timeout;
    let slots = Arc::new(Semaphore::new(max));
    let mut refusals = RefusalLog::default();
    loop {
        let stream = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.refuse(stream, max);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // A peer that vanished without closing (a tablet that lost power or network)
        // never acknowledges the heartbeats: the kernel aborts the connection once sent
        // bytes stay unacknowledged this long, so its stream ends (and its presence with
        // it) instead of retransmitting for a quarter of an hour.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(write_timeout));
        let slot = Slot::new(slot);
        let conn = connection(stream, router.clone(), app.clone(), builder.clone());
        let streams = tracker.clone();
        let streams_handle = streams_handle.clone();
        tracker.spawn(async move {
            match conn.await {
                // A stream goes on in a task of its own, sized for the stream alone (not
                // for every step of reading and checking the request), on the streams'
                // runtime, and this one ends.
                Some(stream) => {
                    streams.spawn_on(stream.map(move |()| drop(slot)), &streams_handle);
                }
                None => drop(slot),
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: some requests did not finish within {DRAIN_TIMEOUT:?}");
    }
    drop(streams_runtime);
}

/// The runtime the lean streams run on, apart from the one that accepts connections and
/// answers requests.
///
/// Why two: a commit wakes every subscriber of its events, and the tasks it wakes queue
/// behind one another on their runtime. On one runtime, a webhook whose answer waited
/// for its group commit was queued behind the writes of every subscriber still to be
/// served for the events before it (about 50 ms at 10,000 subscribers on two cores), so
/// publishers that wait for their answers were held to a fraction of the rate the
/// fan-out keeps up with. Requests now queue only behind requests, and the operating
/// system shares the cores between the two runtimes' threads.
struct StreamsRuntime(Option<tokio::runtime::Runtime>);

impl StreamsRuntime {
    /// One worker thread per core, as the main runtime. If it cannot be started, streams
    /// run on the current runtime, as they did before.
    fn start() -> Self {
        match tokio::runtime::Builder::new_multi_thread()
            .thread_name("relais-streams")
            .enable_all()
            .build()
        {
            Ok(runtime) => Self(Some(runtime)),
            Err(e) => {
                tracing::warn!(
                    "cannot start the streams' runtime, streams share the main one: {e}"
                );
                Self(None)
            }
        }
    }

    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for StreamsRuntime {
    /// Stops its threads without blocking the caller, an async task (a runtime dropped
    /// the usual way would block, which tokio refuses there). The streams have ended, or
    /// been given up on after the drain timeout, by then.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// hyper's connection settings: a timer (without one its timeouts never fire), the
/// keep-alive wait bounding the next request head, the head size, HTTP/2 only if asked.
fn hyper_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.keepalive_timeout)
        .max_buf_size(server.max_head_bytes.max(8192));
    if server.http2 {
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(server.keepalive_timeout)
            .keep_alive_timeout(server.head_timeout)
            .max_header_list_size(server.max_head_bytes as u32);
        builder
    } else {
        builder.http1_only()
    }
}

/// A connection's place under `server.max_connections`, counted in
/// `relais_connections_open` until it is dropped with the connection.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        let open = metrics::gauge!("relais_connections_open");
        open.increment(1.0);
        Self {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// Counts connections refused at the cap and logs them without flooding the log.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn refuse(&mut self, stream: TcpStream, max: usize) {
        metrics::counter!("relais_connections_refused_total").increment(1);
        // Best effort: the socket is fresh, so the answer fits its send buffer.
        let _ = stream.try_write(REFUSED);
        drop(stream);
        self.unlogged += 1;
        if self.last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
            tracing::warn!(
                refused = self.unlogged,
                max_connections = max,
                "connection limit reached: new connections are refused (server.max_connections)"
            );
            self.last = Some(Instant::now());
            self.unlogged = 0;
        }
    }
}

/// One connection: the lean stream path when it applies (returned, to be run as a task
/// of its own), else hyper (served here).
async fn connection(
    mut stream: TcpStream,
    router: Router,
    app: AppState,
    builder: Arc<auto::Builder<TokioExecutor>>,
) -> Option<LeanStream> {
    let server = &app.config.server;
    let mut head = BytesMut::with_capacity(1024);
    // The large awaits of this task are boxed (the head read, `prepare`, hyper's
    // connection): a future is as large as its largest state, and a connection served
    // by hyper may live long. A stream leaves this task altogether (see `run`).
    let read = read_subscribe_head(&mut stream, &mut head, server.max_head_bytes);
    let request = match Box::pin(tokio::time::timeout(server.head_timeout, read)).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) if e.get_ref().is_some_and(|e| e.is::<HeadTooLarge>()) => {
            let _ = stream.write_all(HEAD_TOO_LARGE).await;
            let _ = stream.shutdown().await;
            return None;
        }
        // No complete head in time, or the client left: nothing to answer.
        Ok(Err(_)) | Err(_) => return None,
    };
    if let Some(request) = request {
        // Refused requests fall through: hyper and the router answer them like any other.
        let prepared = Box::pin(prepare(
            app.clone(),
            &request.headers,
            request.query.as_deref(),
        ))
        .await;
        if let Ok(prepared) = prepared {
            let cors = cors_headers(&app.config.server.cors_origins, &request.headers);
            return match LeanStream::new(stream, prepared, &cors) {
                Ok(stream) => Some(stream),
                Err(e) => {
                    tracing::warn!("cannot hand a stream to the streams' runtime: {e}");
                    None
                }
            };
        }
    }
    let io = TokioIo::new(Prefixed {
        prefix: head.freeze(),
        inner: stream,
    });
    // Streams served here close the connection through this handle when they stay
    // blocked (write timeout, token expiry): see `super::watchdog`.
    let control = ConnectionControl::new();
    let handle = control.clone();
    let service = hyper::service::service_fn(
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            let in_flight = handle.request_started();
            request.extensions_mut().insert(handle.clone());
            let response = router.clone().oneshot(request);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            }
        },
    );
    let mut conn = Box::pin(builder.serve_connection(io, service));
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("connection ended with an error: {e}");
            }
        }
        // Dropping the connection closes its socket and ends its streams.
        _ = control.closed() => {}
        // No request in flight for the keep-alive wait: over HTTP/1.1 hyper's own head
        // deadline usually comes first; over HTTP/2 a client that answers pings but
        // opens no stream is closed here (GOAWAY).
        _ = control.idle_for(server.keepalive_timeout) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(server.head_timeout, conn).await;
        }
        _ = app.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    None
}

/// The request head grew past `server.max_head_bytes` without ending.
#[derive(Debug, thiserror::Error)]
#[error("the request head is larger than server.max_head_bytes")]
struct HeadTooLarge;

/// Reads the request head into `buf`. `Some` for an HTTP/1.x `GET` of the hub path;
/// `None` for anything else (hyper takes over with what was read).
async fn read_subscribe_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max_head: usize,
) -> io::Result<Option<SubscribeRequest>> {
    loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match head::parse(buf) {
            Head::Subscribe(request) => return Ok(Some(request)),
            Head::Partial if buf.len() < max_head => continue,
            Head::Partial => return Err(io::Error::new(io::ErrorKind::InvalidData, HeadTooLarge)),
            _ => return Ok(None),
        }
    }
}

/// The CORS response headers for an allowed `Origin` (the same as the router's layer).
fn cors_headers(allowed: &[String], headers: &HeaderMap) -> String {
    let Some(origin) = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return String::new();
    };
    if !allowed.iter().any(|a| a == origin) {
        return String::new();
    }
    format!(
        "access-control-allow-origin: {origin}\r\naccess-control-allow-credentials: true\r\naccess-control-expose-headers: last-event-id, mercure-last-event-id\r\nvary: origin, access-control-request-method, access-control-request-headers\r\n"
    )
}

/// A connection whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
